//! Component tests: the agent, its publisher and its heart wired as the
//! daemon wires them, over [`MemKv`] and [`FakeManager`], on paused time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use systemd::{FakeManager, FakeMethod, SystemdManager};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use units::{UnitFile, UnitName, UnitOption};

use super::*;
use crate::registry::kv::{Op, Txn};
use crate::registry::{Kv, MemKv, Registry};
use crate::schema::{
    Capabilities, MachineRecord, ScheduledUnit, TargetState, UnitRecord, UnitStateRecord,
};

const TTL: Duration = Duration::from_secs(30);
const SLEEPER: &str = "/bin/sleep 1000";

/// `s` as a unit name (shared with the unit tests of the agent's files).
pub(super) fn name(s: &str) -> UnitName {
    s.parse().expect("test unit names are valid")
}

/// A service running `exec` and nothing else (shared like [`name`]).
pub(super) fn service(exec: &str) -> UnitFile {
    UnitFile::from_options(vec![UnitOption::new("Service", "ExecStart", exec)])
}

fn options(exec: &str) -> Vec<UnitOption> {
    vec![
        UnitOption::new("Unit", "Description", "test unit"),
        UnitOption::new("Service", "ExecStart", exec),
    ]
}

fn hash(exec: &str) -> units::UnitHash {
    UnitFile::from_options(options(exec)).hash()
}

/// A cluster of one machine: the store, the machine's systemd, and the
/// engine's side of things (written by hand).
struct Env {
    kv: MemKv,
    registry: Registry<MemKv>,
    fake: FakeManager,
    me: MachineId,
}

impl Env {
    fn new() -> Self {
        let kv = MemKv::new();
        Env {
            registry: Registry::new(kv.clone(), "/fleet/"),
            kv,
            fake: FakeManager::new(),
            me: "m1".parse().expect("valid machine ID"),
        }
    }

    /// Submits `unit` with `exec` and places it on this machine as `state`.
    async fn schedule(&self, unit: &str, state: TargetState, exec: &str) {
        self.registry
            .put_unit(&UnitRecord {
                name: name(unit),
                desired_state: state,
                options: options(exec),
            })
            .await
            .expect("put unit");
        self.put_entry(
            unit,
            &ScheduledUnit {
                desired_state: state,
                hash: hash(exec),
                global: false,
            },
        )
        .await;
    }

    /// Writes this machine's schedule entry for `unit` as the engine would.
    async fn put_entry(&self, unit: &str, entry: &ScheduledUnit) {
        let key = self.registry.keys().scheduled(&self.me, &name(unit));
        self.kv
            .txn(Txn {
                success: vec![Op::Put {
                    key,
                    value: serde_json::to_vec(entry).expect("entries serialize"),
                    lease: None,
                }],
                ..Txn::default()
            })
            .await
            .expect("put schedule entry");
    }

    async fn unschedule(&self, unit: &str) {
        let key = self.registry.keys().scheduled(&self.me, &name(unit));
        self.kv
            .txn(Txn {
                success: vec![Op::Delete { key }],
                ..Txn::default()
            })
            .await
            .expect("delete schedule entry");
    }

    /// This machine's published state of `unit`.
    async fn state(&self, unit: &str) -> Option<UnitStateRecord> {
        self.registry
            .unit_states_of(&name(unit))
            .await
            .ok()?
            .into_iter()
            .find(|s| s.machine_id == self.me)
    }

    fn active(&self, unit: &str) -> String {
        self.fake.status(unit).active_state
    }

    /// How many calls of `method` the fake has seen.
    fn count(&self, method: FakeMethod) -> usize {
        self.fake
            .calls()
            .iter()
            .filter(|(m, _)| *m == method)
            .count()
    }

    /// Starts fleetd's agent side on this machine.
    fn start(&self) -> Node {
        self.start_on(self.registry.clone())
    }

    /// [`Env::start`] with the agent side reaching the store through
    /// `registry` (a wrapper over this store).
    fn start_on<K: Kv>(&self, registry: Registry<K>) -> Node<K> {
        let systemd = Arc::new(self.fake.clone());
        let record = MachineRecord {
            id: self.me.clone(),
            public_ip: "10.0.0.1".into(),
            metadata: BTreeMap::new(),
            capabilities: Capabilities::default(),
            version: crate::VERSION.into(),
            token: "token-m1".into(),
        };
        let (ready_tx, ready) = watch::channel(false);
        let heart = Heart::new(registry.clone(), record, TTL, ready_tx);
        let (publisher, handle) = Publisher::new(
            registry.clone(),
            systemd.clone(),
            self.me.clone(),
            heart.leases(),
            PublisherConfig::from_agent_ttl(TTL),
        );
        let agent = Agent::new(
            registry,
            systemd,
            self.me.clone(),
            AgentConfig::default(),
            handle,
        );
        let presence = heart.handle();
        let cancel = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(heart.run(cancel.clone())),
            tokio::spawn(publisher.run(cancel.clone())),
            tokio::spawn(agent.clone().run(cancel.clone())),
        ];
        Node {
            agent,
            presence,
            cancel,
            tasks,
            ready,
        }
    }
}

/// One running fleetd (agent side).
struct Node<K: Kv = MemKv> {
    agent: Agent<K, FakeManager>,
    presence: HeartHandle<K>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    ready: watch::Receiver<bool>,
}

impl<K: Kv> Node<K> {
    /// Stops the loops without purging, as a crash or an upgrade would.
    async fn stop(self) -> (Agent<K, FakeManager>, HeartHandle<K>) {
        self.cancel.cancel();
        for task in self.tasks {
            task.await.expect("no task panics").expect("no task fails");
        }
        (self.agent, self.presence)
    }
}

/// Polls `check` (on paused time) until it holds, or fails after 2 minutes.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn launched(env: &Env, unit: &str) {
    eventually(&format!("{unit} launched and published"), async || {
        env.active(unit) == "active"
            && env
                .state(unit)
                .await
                .is_some_and(|s| s.job_state == TargetState::Launched && s.active_state == "active")
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_unit_is_loaded_started_and_published() {
    let env = Env::new();
    let node = env.start();
    env.schedule("hello.service", TargetState::Launched, SLEEPER)
        .await;
    launched(&env, "hello.service").await;

    let state = env.state("hello.service").await.expect("published");
    assert_eq!(state.unit_hash, hash(SLEEPER));
    assert_eq!(state.load_state, "loaded");
    assert_eq!(state.sub_state, "running");
    assert!(env.fake.is_linked("hello.service"));
    assert_eq!(env.count(FakeMethod::StartUnit), 1);
    assert_eq!(env.fake.reload_count(), 1);
    assert!(*node.ready.borrow());

    let snapshot = node.agent.snapshot().await;
    assert_eq!(
        snapshot.managed[&name("hello.service")].job,
        TargetState::Launched
    );
    assert!(snapshot.publisher.is_some());
    serde_json::to_string(&snapshot).expect("snapshots serialize");
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn desired_loaded_stops_the_unit() {
    let env = Env::new();
    let node = env.start();
    env.schedule("hello.service", TargetState::Launched, SLEEPER)
        .await;
    launched(&env, "hello.service").await;

    env.schedule("hello.service", TargetState::Loaded, SLEEPER)
        .await;
    eventually("stopped, still loaded, published as loaded", async || {
        env.active("hello.service") == "inactive"
            && env
                .state("hello.service")
                .await
                .is_some_and(|s| s.job_state == TargetState::Loaded && s.active_state == "inactive")
    })
    .await;
    assert!(env.fake.is_linked("hello.service"));
    assert!(env.fake.file("hello.service").is_some());
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_unit_removed_from_the_schedule_is_stopped_unloaded_and_its_state_removed() {
    let env = Env::new();
    let node = env.start();
    env.schedule("a.service", TargetState::Launched, SLEEPER)
        .await;
    env.schedule("b.service", TargetState::Launched, SLEEPER)
        .await;
    launched(&env, "a.service").await;
    launched(&env, "b.service").await;

    env.unschedule("a.service").await;
    eventually("a unloaded and its state gone", async || {
        env.fake.file("a.service").is_none() && env.state("a.service").await.is_none()
    })
    .await;
    assert_eq!(env.active("a.service"), "inactive");
    assert!(!env.fake.is_linked("a.service"));
    // The other unit is untouched.
    assert_eq!(env.active("b.service"), "active");
    assert!(env.state("b.service").await.is_some());
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn new_content_replaces_the_old_and_restarts_the_unit() {
    let env = Env::new();
    let node = env.start();
    env.schedule("a.service", TargetState::Launched, SLEEPER)
        .await;
    launched(&env, "a.service").await;

    env.schedule("a.service", TargetState::Launched, "/bin/sleep 2000")
        .await;
    eventually("new content running", async || {
        env.state("a.service")
            .await
            .is_some_and(|s| s.unit_hash == hash("/bin/sleep 2000") && s.active_state == "active")
    })
    .await;
    let text = env.fake.file("a.service").expect("file present");
    assert!(text.contains("/bin/sleep 2000"), "{text}");
    assert_eq!(env.count(FakeMethod::StartUnit), 2);
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_schedule_entry_ahead_of_the_unit_waits_for_the_engine() {
    let env = Env::new();
    let node = env.start();
    env.registry
        .put_unit(&UnitRecord {
            name: name("a.service"),
            desired_state: TargetState::Launched,
            options: options(SLEEPER),
        })
        .await
        .expect("put unit");
    // The engine placed other content than what `units/` holds.
    env.put_entry(
        "a.service",
        &ScheduledUnit {
            desired_state: TargetState::Launched,
            hash: hash("/bin/other"),
            global: false,
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(env.fake.file("a.service"), None);
    let snapshot = node.agent.snapshot().await;
    assert!(snapshot.waiting_for_content.contains(&name("a.service")));

    // The engine catches up.
    env.schedule("a.service", TargetState::Launched, SLEEPER)
        .await;
    launched(&env, "a.service").await;
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_fleetd_adopts_running_units_without_touching_them() {
    let env = Env::new();
    let node = env.start();
    env.schedule("a.service", TargetState::Launched, SLEEPER)
        .await;
    env.schedule("b.service", TargetState::Loaded, SLEEPER)
        .await;
    launched(&env, "a.service").await;
    eventually("b loaded", async || {
        env.state("b.service")
            .await
            .is_some_and(|s| s.job_state == TargetState::Loaded)
    })
    .await;
    let pid = env.fake.main_pid("a.service").await.expect("main pid");
    node.stop().await;
    env.fake.clear_calls();

    let node = env.start();
    // States come back on the new lease, then a few passes run.
    launched(&env, "a.service").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let touched: Vec<_> = env
        .fake
        .calls()
        .into_iter()
        .filter(|(m, _)| {
            matches!(
                m,
                FakeMethod::StartUnit
                    | FakeMethod::StopUnit
                    | FakeMethod::WriteFile
                    | FakeMethod::LinkUnitFiles
                    | FakeMethod::DisableUnitFiles
                    | FakeMethod::Reload
            )
        })
        .collect();
    assert_eq!(touched, vec![], "a restart must not touch units");
    assert_eq!(env.fake.main_pid("a.service").await.expect("main pid"), pid);
    assert_eq!(
        env.state("b.service").await.map(|s| s.job_state),
        Some(TargetState::Loaded)
    );
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_etcd_outage_stops_nothing_and_the_agent_resumes_after_it() {
    let env = Env::new();
    let node = env.start();
    env.schedule("a.service", TargetState::Launched, SLEEPER)
        .await;
    launched(&env, "a.service").await;

    env.kv.set_unavailable(true);
    // Long enough for the machine lease (and the states on it) to expire.
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(env.active("a.service"), "active");
    assert_eq!(env.count(FakeMethod::StopUnit), 0);
    assert_eq!(env.count(FakeMethod::DisableUnitFiles), 0);
    env.kv.set_unavailable(false);

    // Presence and states come back on a new lease; new work is picked up.
    launched(&env, "a.service").await;
    env.schedule("b.service", TargetState::Launched, SLEEPER)
        .await;
    launched(&env, "b.service").await;
    assert_eq!(env.count(FakeMethod::StopUnit), 0);
    assert_eq!(env.count(FakeMethod::StartUnit), 2);
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn nothing_is_touched_before_the_schedule_is_listed() {
    let env = Env::new();
    // A unit left running by a previous fleetd, and etcd down at start.
    env.fake.put_file(
        "a.service",
        &UnitFile::from_options(options(SLEEPER)).canonical(),
    );
    env.fake.set_state("a.service", "active", "running");
    env.kv.set_unavailable(true);
    let node = env.start();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(env.active("a.service"), "active");
    assert_eq!(env.count(FakeMethod::StopUnit), 0);
    assert!(env.fake.file("a.service").is_some());
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_unit_that_exits_or_crashes_is_reported_not_restarted() {
    let env = Env::new();
    let node = env.start();
    env.registry
        .put_unit(&UnitRecord {
            name: name("once.service"),
            desired_state: TargetState::Launched,
            options: vec![
                UnitOption::new("Service", "Type", "oneshot"),
                UnitOption::new("Service", "ExecStart", "/bin/true"),
            ],
        })
        .await
        .expect("put unit");
    env.put_entry(
        "once.service",
        &ScheduledUnit {
            desired_state: TargetState::Launched,
            hash: UnitFile::from_options(vec![
                UnitOption::new("Service", "Type", "oneshot"),
                UnitOption::new("Service", "ExecStart", "/bin/true"),
            ])
            .hash(),
            global: false,
        },
    )
    .await;
    env.schedule("crash.service", TargetState::Launched, SLEEPER)
        .await;
    launched(&env, "crash.service").await;
    eventually("oneshot published", async || {
        env.state("once.service")
            .await
            .is_some_and(|s| s.job_state == TargetState::Launched)
    })
    .await;

    env.fake.set_state("crash.service", "failed", "failed");
    eventually("crash published", async || {
        env.state("crash.service")
            .await
            .is_some_and(|s| s.active_state == "failed")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    // One start each: systemd's Restart= decides, not the agent.
    assert_eq!(env.count(FakeMethod::StartUnit), 2);
    assert_eq!(env.active("crash.service"), "failed");
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn states_are_written_only_when_they_change() {
    let env = Env::new();
    let node = env.start();
    env.schedule("a.service", TargetState::Launched, SLEEPER)
        .await;
    launched(&env, "a.service").await;
    // Let the dust settle, then watch the store for a few resyncs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = env.kv.revision();
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(env.kv.revision(), before, "idle agent writes nothing");
    node.stop().await;
}

/// A [`Kv`] that counts the requests made to the store under it, by
/// operation (the daemon's `Metered` counts into the process-wide metrics,
/// which tests running side by side share).
#[derive(Clone)]
struct Counting<K> {
    /// The store.
    inner: K,
    /// Requests so far, by operation.
    counts: Arc<std::sync::Mutex<BTreeMap<&'static str, usize>>>,
}

impl<K> Counting<K> {
    fn new(inner: K) -> Self {
        Counting {
            inner,
            counts: Arc::default(),
        }
    }

    fn record(&self, op: &'static str) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry(op).or_default() += 1;
    }

    /// The counts so far, starting again from zero.
    fn take(&self) -> BTreeMap<&'static str, usize> {
        std::mem::take(
            &mut *self
                .counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl<K: Kv> Kv for Counting<K> {
    async fn get(
        &self,
        key: &str,
    ) -> crate::registry::Result<(Option<crate::registry::kv::KeyValue>, Revision)> {
        self.record("get");
        self.inner.get(key).await
    }

    async fn read_range(
        &self,
        req: crate::registry::kv::RangeRequest<'_>,
    ) -> crate::registry::Result<crate::registry::kv::RangePage> {
        self.record("range");
        self.inner.read_range(req).await
    }

    async fn list(
        &self,
        prefix: &str,
    ) -> crate::registry::Result<(Vec<crate::registry::kv::KeyValue>, Revision)> {
        self.record("list");
        self.inner.list(prefix).await
    }

    async fn txn(&self, txn: Txn) -> crate::registry::Result<crate::registry::kv::TxnResponse> {
        self.record("txn");
        self.inner.txn(txn).await
    }

    async fn grant(&self, ttl: Duration) -> crate::registry::Result<crate::registry::LeaseId> {
        self.record("grant");
        self.inner.grant(ttl).await
    }

    async fn keep_alive(
        &self,
        lease: crate::registry::LeaseId,
    ) -> crate::registry::Result<Duration> {
        self.record("keep_alive");
        self.inner.keep_alive(lease).await
    }

    async fn revoke(&self, lease: crate::registry::LeaseId) -> crate::registry::Result<()> {
        self.record("revoke");
        self.inner.revoke(lease).await
    }

    async fn watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> crate::registry::Result<crate::registry::kv::WatchStream> {
        self.record("watch");
        self.inner.watch(prefix, from).await
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_machine_only_keeps_its_lease_alive() {
    let env = Env::new();
    let counting = Counting::new(env.kv.clone());
    let node = env.start_on(Registry::new(counting.clone(), "/fleet/"));
    let units: Vec<String> = (0..3).map(|i| format!("u{i}.service")).collect();
    for unit in &units {
        env.schedule(unit, TargetState::Launched, SLEEPER).await;
    }
    for unit in &units {
        launched(&env, unit).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    counting.take();
    // Many agent passes (every 5 s), publisher resyncs (every TTL/2) and
    // heartbeats (every TTL/3).
    tokio::time::sleep(TTL * 4).await;
    let mut counts = counting.take();
    let keep_alives = counts.remove("keep_alive").unwrap_or_default();
    assert!(
        counts.is_empty(),
        "an idle machine made requests besides keep-alives: {counts:?}"
    );
    assert!(
        (11..=13).contains(&keep_alives),
        "one keep-alive every TTL/3, got {keep_alives} in 4 TTLs"
    );
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_unit_file_changed_by_someone_else_is_put_back_by_the_safety_net() {
    let env = Env::new();
    let node = env.start();
    env.schedule("a.service", TargetState::Launched, SLEEPER)
        .await;
    launched(&env, "a.service").await;
    let scheduled = env
        .fake
        .file("a.service")
        .expect("the agent wrote the file");
    // A few idle passes (each reads the file), then an edit behind the
    // agent's back, with nothing in etcd changing.
    tokio::time::sleep(Duration::from_secs(12)).await;
    env.fake
        .put_file("a.service", "[Service]\nExecStart=/bin/sleep 2000\n");
    let starts = env.count(FakeMethod::StartUnit);
    // The next safety-net pass (every 5 s) puts the scheduled content back
    // and starts the unit from it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(env.fake.file("a.service"), Some(scheduled));
    assert!(
        env.count(FakeMethod::StartUnit) > starts,
        "restarted with it"
    );
    launched(&env, "a.service").await;
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_unit_does_not_hold_back_the_others() {
    let env = Env::new();
    env.fake
        .fail_next(FakeMethod::LinkUnitFiles, Some("a.service"));
    let node = env.start();
    env.schedule("a.service", TargetState::Launched, SLEEPER)
        .await;
    env.schedule("b.service", TargetState::Launched, SLEEPER)
        .await;
    launched(&env, "b.service").await;
    // a is retried on a later pass.
    launched(&env, "a.service").await;
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn purge_stops_and_unloads_everything_and_removes_presence() {
    let env = Env::new();
    let node = env.start();
    env.schedule("a.service", TargetState::Launched, SLEEPER)
        .await;
    env.schedule("b.service", TargetState::Loaded, SLEEPER)
        .await;
    launched(&env, "a.service").await;
    eventually("b published", async || {
        env.state("b.service").await.is_some()
    })
    .await;

    let (agent, presence) = node.stop().await;
    agent.purge().await.expect("purge");
    presence.purge().await.expect("presence purge");
    assert_eq!(env.fake.file("a.service"), None);
    assert_eq!(env.fake.file("b.service"), None);
    assert_eq!(env.active("a.service"), "inactive");
    assert_eq!(env.state("a.service").await, None);
    assert_eq!(env.state("b.service").await, None);
    assert_eq!(env.registry.machine(&env.me).await.expect("readable"), None);
}

/// A `Type=oneshot` whose start never ends.
fn hanging() -> Vec<UnitOption> {
    vec![
        UnitOption::new("Service", "Type", "oneshot"),
        UnitOption::new("Service", "ExecStart", "/bin/sleep infinity"),
    ]
}

/// A service whose stop takes 300 s.
fn slow_stop() -> Vec<UnitOption> {
    vec![
        UnitOption::new("Service", "ExecStart", SLEEPER),
        UnitOption::new("Service", "ExecStop", "/bin/sleep 300"),
        UnitOption::new("Service", "TimeoutStopSec", "600"),
    ]
}

impl Env {
    /// Submits `unit` with `options` and places it on this machine as `state`.
    async fn schedule_options(&self, unit: &str, state: TargetState, options: Vec<UnitOption>) {
        let hash = UnitFile::from_options(options.clone()).hash();
        self.registry
            .put_unit(&UnitRecord {
                name: name(unit),
                desired_state: state,
                options,
            })
            .await
            .expect("put unit");
        self.put_entry(
            unit,
            &ScheduledUnit {
                desired_state: state,
                hash,
                global: false,
            },
        )
        .await;
    }

    /// Whether this machine's published state of `unit` has `job` and `active`.
    async fn published(&self, unit: &str, job: TargetState, active: &str) -> bool {
        self.state(unit)
            .await
            .is_some_and(|s| s.job_state == job && s.active_state == active)
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_start_or_a_slow_stop_does_not_hold_up_the_other_units() {
    let env = Env::new();
    let node = env.start();
    env.schedule_options("hang.service", TargetState::Launched, hanging())
        .await;
    env.schedule_options("slow.service", TargetState::Launched, slow_stop())
        .await;
    env.schedule("b.service", TargetState::Launched, SLEEPER)
        .await;
    launched(&env, "slow.service").await;
    launched(&env, "b.service").await;
    eventually("the hanging start published as activating", async || {
        env.published("hang.service", TargetState::Launched, "activating")
            .await
    })
    .await;

    // The slow unit is unscheduled: its stop takes 300 s.
    env.unschedule("slow.service").await;
    eventually("slow.service stopping", async || {
        env.active("slow.service") == "deactivating"
    })
    .await;

    // Meanwhile other units start and stop.
    let began = Instant::now();
    for unit in ["c.service", "d.service", "e.service"] {
        env.schedule(unit, TargetState::Launched, SLEEPER).await;
    }
    env.schedule("b.service", TargetState::Loaded, SLEEPER)
        .await;
    for unit in ["c.service", "d.service", "e.service"] {
        launched(&env, unit).await;
    }
    eventually("b stopped and published as loaded", async || {
        env.active("b.service") == "inactive"
            && env
                .published("b.service", TargetState::Loaded, "inactive")
                .await
    })
    .await;
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "the other units waited {:?}",
        began.elapsed()
    );
    assert_eq!(env.active("slow.service"), "deactivating");
    assert_eq!(env.active("hang.service"), "activating");
    // One start each: no second job for a unit with one in flight.
    let starts = |unit: &str| {
        env.fake
            .calls()
            .iter()
            .filter(|(m, u)| *m == FakeMethod::StartUnit && u.as_deref() == Some(unit))
            .count()
    };
    assert_eq!(starts("hang.service"), 1);
    let snapshot = node.agent.snapshot().await;
    assert!(
        snapshot.in_flight.units.contains_key(&name("hang.service")),
        "{:?}",
        snapshot.in_flight
    );

    // The hanging oneshot can still be stopped: the stop replaces its start
    // job (systemd kills it: failed) ...
    env.schedule_options("hang.service", TargetState::Loaded, hanging())
        .await;
    eventually("the hanging unit stopped", async || {
        env.active("hang.service") == "failed"
            && env
                .published("hang.service", TargetState::Loaded, "failed")
                .await
    })
    .await;
    // ... and destroyed.
    env.unschedule("hang.service").await;
    eventually("the hanging unit unloaded and its state gone", async || {
        env.fake.file("hang.service").is_none() && env.state("hang.service").await.is_none()
    })
    .await;
    assert_eq!(starts("hang.service"), 1);

    // The slow stop ends in its own time, and the unit is unloaded.
    tokio::time::sleep(Duration::from_secs(300)).await;
    eventually("slow.service unloaded", async || {
        env.fake.file("slow.service").is_none() && env.state("slow.service").await.is_none()
    })
    .await;
    for unit in ["c.service", "d.service", "e.service"] {
        assert_eq!(env.active(unit), "active");
    }
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn purge_is_not_held_up_by_a_unit_that_will_not_stop() {
    let env = Env::new();
    let node = env.start();
    let stuck = vec![
        UnitOption::new("Service", "ExecStart", SLEEPER),
        UnitOption::new("Service", "ExecStop", "/bin/sleep infinity"),
    ];
    env.schedule_options("stuck.service", TargetState::Launched, stuck)
        .await;
    for unit in ["a.service", "b.service"] {
        env.schedule(unit, TargetState::Launched, SLEEPER).await;
    }
    for unit in ["stuck.service", "a.service", "b.service"] {
        launched(&env, unit).await;
    }
    let (agent, presence) = node.stop().await;
    let began = Instant::now();
    let err = agent
        .purge()
        .await
        .expect_err("stuck.service does not stop");
    assert!(
        began.elapsed() <= PURGE_DEADLINE + Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    assert!(err.to_string().contains("stuck.service"), "{err:#}");
    presence.purge().await.expect("presence purge");
    for unit in ["a.service", "b.service"] {
        assert_eq!(env.fake.file(unit), None);
        assert_eq!(env.active(unit), "inactive");
        assert_eq!(env.state(unit).await, None);
    }
    assert_eq!(env.active("stuck.service"), "deactivating");
    assert_eq!(env.registry.machine(&env.me).await.expect("readable"), None);
}
