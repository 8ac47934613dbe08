//! The engine: decides which machine runs which unit. Every fleetd runs one;
//! only the elected leader acts.
//!
//! Layout:
//! - [`constraints`]: can a unit run on a machine (`[X-Fleet]`), pure.
//! - [`schedule`]: [`decide`] — from a [`ClusterView`] to schedule changes,
//!   pure and synchronous.
//! - [`view`]: the caches' decoders and the assembly of a view from their
//!   snapshots.
//! - this file: the loop — leadership, caches, passes, writes.
//!
//! **Leadership.** The engine has its own lease (TTL = 5 ×
//! `engine_reconcile_interval`, refreshed every TTL/3), separate from the
//! machine's presence lease. A follower watches the leader key (a cache of
//! one key) and, whenever it is vacant (on its deletion and on every tick),
//! grants a lease and tries [`Registry::acquire_leadership`]; while a leader
//! holds the key followers send nothing, where the original had every
//! machine read the key every tick. A leader holds a [`Fence`] for its
//! term, and every schedule write is fenced by it, so a deposed leader can
//! never write again. A term ends when the lease cannot be refreshed within
//! its TTL, when [`Registry::is_leader`] says the key belongs to someone
//! else, or when a write comes back `NotLeader`; the term's
//! [`CancellationToken`] (a child of the loop's) stops its caches and any
//! pass in flight. On shutdown the leader releases the key and revokes the
//! lease, so another engine takes over at once.
//!
//! **Passes.** While leading, four watched caches (`units/`, `schedule/`,
//! `machines/`, `metadata/`) are listed once per term and then followed.
//! A pass runs when one of them changes (bursts coalesce: a pass sees the
//! latest snapshot) and on every interval tick (level-triggered safety net).
//! A pass whose inputs are exactly those of the previous clean pass is
//! skipped: [`decide`] is a pure function, so it would decide nothing again.
//! Scheduling runs on the blocking pool (a full pass over 100,000 units takes
//! a good fraction of a second and must not stall the daemon's other tasks).
//! Decisions are written with [`Registry::apply_schedule`] and logged at
//! info with their reason once written; transient write failures back off
//! exponentially (capped).

pub mod constraints;
pub mod schedule;
pub mod view;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};
use units::UnitName;

pub use schedule::{
    Blocked, ClusterView, Decision, MachineView, Plan, Reason, UnitView, decide, plan,
};
use view::{Overlay, Snapshots};

use crate::config::Config;
use crate::errors::error_chain;
use crate::registry::cache::{CacheMode, Reflector, Store};
use crate::registry::{self, Fence, Kv, LeaseId, ParsedKey, Registry, Revision, ScheduleChange};
use crate::retry;
use crate::schema::{MachineId, MachineRecord};

/// How long shutdown waits for each of releasing the leader key and
/// revoking the lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The engine's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// `engine_reconcile_interval`: the tick of passes and leadership
    /// attempts; the lease lives 5 times as long.
    pub reconcile_interval: Duration,
    /// `disable_engine`: never lead (the loop only waits for shutdown).
    pub disabled: bool,
    /// How the engine's caches keep up: `disable_watches` polls every
    /// `reconcile_interval` instead of watching.
    pub cache: CacheMode,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            reconcile_interval: Duration::from_secs(2),
            disabled: false,
            cache: CacheMode::Watch,
        }
    }
}

impl EngineConfig {
    /// The engine's settings from fleetd's config.
    pub fn from_config(config: &Config) -> Self {
        EngineConfig {
            reconcile_interval: config.engine_reconcile_interval,
            disabled: config.disable_engine,
            cache: CacheMode::from_disable_watches(
                config.disable_watches,
                config.engine_reconcile_interval,
            ),
        }
    }

    /// TTL of the leadership lease: 5 × the interval. This is the only
    /// place that rule is written.
    pub fn lease_ttl(&self) -> Duration {
        self.reconcile_interval.saturating_mul(5)
    }
}

/// The engine's state, for debug dumps (SIGUSR1) and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineSnapshot {
    /// Whether this engine leads right now.
    pub leader: bool,
    /// Leadership terms won since start.
    pub terms: u64,
    /// Leadership terms lost (not counting shutdown).
    pub terms_lost: u64,
    /// Why the last term was lost.
    pub last_loss: Option<String>,
    /// Passes run (skipped passes not counted).
    pub passes: u64,
    /// The last pass, if any.
    pub last_pass: Option<PassReport>,
}

/// What one pass did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PassReport {
    /// Decisions written.
    pub decisions: usize,
    /// Units that should run but have no machine.
    pub unschedulable: usize,
    /// How long building the view and deciding took, in milliseconds.
    pub millis: u64,
    /// Whether the decisions were written (or there were none).
    pub applied: bool,
}

/// The engine. Cheap to clone: spawn [`Engine::run`] on one clone and keep
/// another for [`Engine::snapshot`].
pub struct Engine<K: Kv> {
    /// Where everything lives.
    registry: Registry<K>,
    /// This machine, written in the leader key.
    machine: MachineId,
    /// Settings.
    config: EngineConfig,
    /// The latest state, written by the running loop.
    state: Arc<watch::Sender<EngineSnapshot>>,
}

impl<K: Kv> Clone for Engine<K> {
    fn clone(&self) -> Self {
        Engine {
            registry: self.registry.clone(),
            machine: self.machine.clone(),
            config: self.config.clone(),
            state: Arc::clone(&self.state),
        }
    }
}

/// How a leadership term ended.
#[derive(Debug)]
enum TermEnd {
    /// The daemon is stopping: release leadership.
    Shutdown,
    /// Leadership is gone (why); try again next tick.
    Lost(&'static str),
}

/// The four caches of a term.
struct Stores {
    /// `units/`.
    units: Store<view::CachedUnit>,
    /// `schedule/`.
    schedule: Store<view::CachedEntry>,
    /// `machines/`.
    machines: Store<MachineRecord>,
    /// `metadata/`.
    metadata: Store<view::CachedMetadata>,
}

impl Stores {
    fn is_ready(&self) -> bool {
        self.units.is_ready()
            && self.schedule.is_ready()
            && self.machines.is_ready()
            && self.metadata.is_ready()
    }

    fn revisions(&self) -> [Revision; 4] {
        [
            self.units.revision(),
            self.schedule.revision(),
            self.machines.revision(),
            self.metadata.revision(),
        ]
    }

    fn snapshots(&self) -> Snapshots {
        Snapshots {
            units: self.units.snapshot(),
            schedule: self.schedule.snapshot(),
            machines: self.machines.snapshot(),
            metadata: self.metadata.snapshot(),
        }
    }
}

impl<K: Kv> Engine<K> {
    /// The engine of `machine` (the ID it writes in the leader key).
    pub fn new(registry: Registry<K>, machine: MachineId, config: EngineConfig) -> Self {
        Engine {
            registry,
            machine,
            config,
            state: Arc::new(watch::Sender::new(EngineSnapshot::default())),
        }
    }

    /// The current state.
    pub fn snapshot(&self) -> EngineSnapshot {
        self.state.borrow().clone()
    }

    /// A receiver that changes with the state.
    pub fn subscribe(&self) -> watch::Receiver<EngineSnapshot> {
        self.state.subscribe()
    }

    /// Compete for leadership and schedule while leading, until `cancel`.
    /// Registry failures are retried with back-off; on shutdown the leader
    /// releases leadership. Returns `Err` only if scheduling itself failed
    /// (a bug: a panic in the scheduler).
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let span = info_span!("engine", machine = %self.machine);
        async move {
            if self.config.disabled {
                info!("engine disabled (disable_engine)");
                cancel.cancelled().await;
                return Ok(());
            }
            self.compete(&cancel).await
        }
        .instrument(span)
        .await
    }

    /// The follower loop: watch the leader key; when it is vacant, take a
    /// lease and try to take the key. Followers send nothing to etcd while
    /// a leader holds the key (one watch each), so thousands of machines do
    /// not poll it every tick.
    async fn compete(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let keys = self.registry.keys().clone();
        // A stale leader key (no lease, or no machine ID in it) reads as
        // vacant, so the followers compete and clear it.
        let (reflector, leader) = Reflector::new_kv(
            self.registry.kv().clone(),
            keys.leader(),
            move |kv| match keys.parse(&kv.key)? {
                ParsedKey::Leader => registry::leader::holder(kv),
                _ => None,
            },
        );
        let reflector = reflector.with_mode(self.config.cache);
        // The cache stops only after `follow` has returned (a leader must
        // release before the loop ends), hence its own token.
        let stop_cache = CancellationToken::new();
        let result = tokio::select! {
            () = reflector.run(stop_cache.clone()) => Ok(()),
            result = self.follow(&leader, cancel) => result,
        };
        stop_cache.cancel();
        result
    }

    /// Try to lead whenever the (cached) leader key is vacant, on its
    /// changes and on every tick.
    async fn follow(
        &self,
        leader: &Store<MachineId>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut changes = leader.subscribe();
        let mut tick = tokio::time::interval(self.config.reconcile_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut backoff = retry::ENGINE;
        let mut retry_at: Option<Instant> = None;
        let mut last_leader: Option<Arc<MachineId>> = None;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                () = async { tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)).await },
                    if retry_at.is_some() => retry_at = None,
                _ = changes.changed() => {}
                _ = tick.tick() => {}
            }
            if retry_at.is_some() || !leader.is_ready() {
                continue;
            }
            let holder = leader.snapshot().values().next().cloned();
            if holder != last_leader {
                match &holder {
                    Some(id) => info!(leader = %id, "engine leader"),
                    None => debug!("no engine leads"),
                }
                last_leader.clone_from(&holder);
            }
            if holder.is_some() {
                continue;
            }
            match self.attempt().await {
                Ok(Some(fence)) => {
                    backoff.reset();
                    match self.lead(&fence, cancel).await {
                        Err(e) => {
                            self.release(&fence).await;
                            return Err(e);
                        }
                        Ok(TermEnd::Shutdown) => {
                            self.release(&fence).await;
                            return Ok(());
                        }
                        Ok(TermEnd::Lost(why)) => {
                            warn!(reason = why, "engine leadership lost");
                            self.state.send_modify(|s| {
                                s.terms_lost += 1;
                                s.last_loss = Some(why.to_owned());
                            });
                            // The lease may still live: revoke it, so a
                            // leader key it holds (if still ours) goes too.
                            self.revoke(fence.lease).await;
                        }
                    }
                }
                Ok(None) => backoff.reset(),
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %error_chain(&e), ?delay, "cannot compete for engine leadership; retrying");
                    retry_at = Some(Instant::now() + delay);
                }
            }
        }
    }

    /// Grant a lease and try to take the leader key with it; the lease is
    /// revoked unless it won.
    async fn attempt(&self) -> registry::Result<Option<Fence>> {
        let lease = self.registry.grant_lease(self.config.lease_ttl()).await?;
        let won = self.registry.acquire_leadership(&self.machine, lease).await;
        if !matches!(won, Ok(Some(_))) {
            self.revoke(lease).await;
        }
        won
    }

    /// One leadership term: caches, keep-alive and passes, until leadership
    /// is lost or the daemon stops.
    async fn lead(&self, fence: &Fence, cancel: &CancellationToken) -> anyhow::Result<TermEnd> {
        let term = cancel.child_token();
        self.state.send_modify(|s| {
            s.leader = true;
            s.terms += 1;
        });
        info!(term = fence.create_revision, "engine leadership acquired");
        let keys = self.registry.keys().clone();
        let (units_r, units) = self.cache(keys.units_prefix(), view::decode_unit(keys.clone()));
        let (schedule_r, schedule) =
            self.cache(keys.schedule_prefix(), view::decode_entry(keys.clone()));
        let (machines_r, machines) =
            self.cache(keys.machines_prefix(), view::decode_machine(keys.clone()));
        let (metadata_r, metadata) =
            self.cache(keys.metadata_prefix(), view::decode_metadata(keys.clone()));
        let stores = Stores {
            units,
            schedule,
            machines,
            metadata,
        };
        let caches = async {
            tokio::join!(
                units_r.run(term.clone()),
                schedule_r.run(term.clone()),
                machines_r.run(term.clone()),
                metadata_r.run(term.clone()),
            );
        };
        let end = tokio::select! {
            why = self.hold(fence, &term) => Ok(TermEnd::Lost(why)),
            end = self.reconcile(fence, &stores, &term) => end,
            () = caches => Ok(TermEnd::Lost("caches stopped")),
        };
        term.cancel();
        self.state.send_modify(|s| s.leader = false);
        if cancel.is_cancelled() {
            return Ok(TermEnd::Shutdown);
        }
        end
    }

    /// A cache of `prefix` kept up in the engine's mode, and its first reader.
    fn cache<T: Send + Sync + 'static>(
        &self,
        prefix: String,
        decode: impl Fn(&str, &[u8]) -> Option<T> + Send + Sync + 'static,
    ) -> (Reflector<K, T>, Store<T>) {
        let (reflector, store) = Reflector::new(self.registry.kv().clone(), prefix, decode);
        (reflector.with_mode(self.config.cache), store)
    }

    /// Keep the engine lease alive and check the leader key every TTL/3;
    /// returns why leadership is gone (or that the term ended).
    async fn hold(&self, fence: &Fence, term: &CancellationToken) -> &'static str {
        let ttl = self.config.lease_ttl();
        let mut refreshed = Instant::now();
        loop {
            tokio::select! {
                () = term.cancelled() => return "term ended",
                () = tokio::time::sleep(ttl / 3) => {}
            }
            match self.registry.keep_alive(fence.lease).await {
                Ok(_) => refreshed = Instant::now(),
                Err(registry::Error::LeaseNotFound(_)) => return "engine lease expired",
                Err(e) => warn!(error = %error_chain(&e), "cannot refresh the engine lease"),
            }
            if refreshed.elapsed() >= ttl {
                return "engine lease not refreshed within its TTL";
            }
            match self.registry.is_leader(fence).await {
                Ok(true) => {}
                Ok(false) => return "the leader key belongs to another term",
                Err(e) => warn!(error = %error_chain(&e), "cannot check engine leadership"),
            }
        }
    }

    /// Passes, on cache changes and ticks, until the term ends.
    async fn reconcile(
        &self,
        fence: &Fence,
        stores: &Stores,
        term: &CancellationToken,
    ) -> anyhow::Result<TermEnd> {
        let interval = self.config.reconcile_interval;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut changes = [
            stores.units.subscribe(),
            stores.schedule.subscribe(),
            stores.machines.subscribe(),
            stores.metadata.subscribe(),
        ];
        let mut overlay = Overlay::default();
        // The inputs of the last pass that had nothing (left) to do.
        let mut clean: Option<([Revision; 4], usize)> = None;
        let mut backoff = retry::ENGINE;
        let mut retry_at: Option<Instant> = None;
        let mut unschedulable: BTreeMap<UnitName, Blocked> = BTreeMap::new();
        let mut passes: u64 = 0;
        loop {
            let [units, schedule, machines, metadata] = &mut changes;
            tokio::select! {
                biased;
                () = term.cancelled() => return Ok(TermEnd::Shutdown),
                () = async { tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)).await },
                    if retry_at.is_some() => retry_at = None,
                _ = units.changed() => {}
                _ = schedule.changed() => {}
                _ = machines.changed() => {}
                _ = metadata.changed() => {}
                _ = tick.tick() => {}
            }
            if retry_at.is_some() {
                continue;
            }
            if !stores.is_ready() {
                debug!("caches not listed yet");
                continue;
            }
            overlay.trim(stores.schedule.revision());
            let inputs = (stores.revisions(), overlay.len());
            if clean == Some(inputs) {
                debug!("nothing changed since the last pass");
                continue;
            }
            passes += 1;
            let span = info_span!("reconcile", pass = passes);
            let outcome = self
                .pass(fence, stores, &overlay, &mut unschedulable)
                .instrument(span)
                .await?;
            match outcome {
                PassOutcome::Clean => {
                    backoff.reset();
                    clean = Some(inputs);
                }
                PassOutcome::Applied(revision, decisions) => {
                    backoff.reset();
                    overlay.push(revision, decisions);
                    clean = None;
                }
                PassOutcome::Deposed => {
                    return Ok(TermEnd::Lost("a write was refused: not the leader"));
                }
                PassOutcome::Failed => {
                    let delay = backoff.next_delay();
                    retry_at = Some(Instant::now() + delay);
                    clean = None;
                }
            }
        }
    }

    /// One pass: view, decisions, writes.
    async fn pass(
        &self,
        fence: &Fence,
        stores: &Stores,
        overlay: &Overlay,
        unschedulable: &mut BTreeMap<UnitName, Blocked>,
    ) -> anyhow::Result<PassOutcome> {
        let interval = self.config.reconcile_interval;
        let snapshots = stores.snapshots();
        let pending = overlay.clone();
        let started = Instant::now();
        let plan = tokio::task::spawn_blocking(move || {
            let view = view::build_view(&snapshots, &pending);
            schedule::plan(&view)
        })
        .await
        .map_err(|e| anyhow::anyhow!("the scheduler failed: {e}"))?;
        let took = started.elapsed();
        crate::metrics::engine_pass(took, plan.unschedulable.len());
        if took > interval {
            warn!(
                ?took,
                ?interval,
                "reconcile pass slower than the engine interval"
            );
        }
        for (unit, why) in &plan.unschedulable {
            if unschedulable.get(unit) != Some(why) {
                info!(unit = %unit, reason = %why, "unit cannot be scheduled");
            }
        }
        *unschedulable = plan.unschedulable;
        let mut report = PassReport {
            decisions: plan.decisions.len(),
            unschedulable: unschedulable.len(),
            millis: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            applied: true,
        };
        let outcome = if plan.decisions.is_empty() {
            debug!(?took, "nothing to change");
            PassOutcome::Clean
        } else {
            let changes: Vec<ScheduleChange> =
                plan.decisions.iter().map(|d| d.change.clone()).collect();
            match self.registry.apply_schedule(fence, &changes).await {
                Ok(revision) => {
                    crate::metrics::engine_applied(&plan.decisions);
                    for d in &plan.decisions {
                        let (unit, machine, reason) = (d.unit(), d.machine(), &d.reason);
                        match d.change {
                            ScheduleChange::Put { .. } => {
                                info!(unit = %unit, machine = %machine, reason = %reason, "scheduled");
                            }
                            ScheduleChange::Remove { .. } => {
                                info!(unit = %unit, machine = %machine, reason = %reason, "unscheduled");
                            }
                        }
                    }
                    info!(decisions = plan.decisions.len(), %revision, ?took, "schedule updated");
                    PassOutcome::Applied(revision, plan.decisions)
                }
                Err(registry::Error::NotLeader) => {
                    report.applied = false;
                    PassOutcome::Deposed
                }
                Err(e) => {
                    report.applied = false;
                    warn!(error = %error_chain(&e), decisions = plan.decisions.len(), "cannot write the schedule; retrying");
                    PassOutcome::Failed
                }
            }
        };
        self.state.send_modify(|s| {
            s.passes += 1;
            s.last_pass = Some(report);
        });
        Ok(outcome)
    }

    /// Give leadership up: delete the key, revoke the lease (best effort,
    /// each bounded by [`RELEASE_TIMEOUT`]).
    async fn release(&self, fence: &Fence) {
        match tokio::time::timeout(RELEASE_TIMEOUT, self.registry.release_leadership(fence)).await {
            Ok(Ok(())) => info!("engine leadership released"),
            Ok(Err(e)) => {
                warn!(error = %error_chain(&e), "cannot release engine leadership; it expires with the lease");
            }
            Err(_) => warn!("releasing engine leadership timed out; it expires with the lease"),
        }
        self.revoke(fence.lease).await;
    }

    /// Revoke the engine lease, best effort.
    async fn revoke(&self, lease: LeaseId) {
        match tokio::time::timeout(RELEASE_TIMEOUT, self.registry.revoke_lease(lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(error = %error_chain(&e), "cannot revoke the engine lease; it expires");
            }
            Err(_) => debug!("revoking the engine lease timed out; it expires"),
        }
    }
}

/// What a pass achieved.
enum PassOutcome {
    /// Nothing to change.
    Clean,
    /// Decisions written, the last at this revision.
    Applied(Revision, Vec<Decision>),
    /// A write was refused: another engine leads.
    Deposed,
    /// A write failed; retry after a back-off.
    Failed,
}

#[cfg(test)]
mod tests;
