//! The `SystemdManager` contract: every case runs against `FakeManager` and against
//! `DbusManager` driving a real systemd in an nspawn machine (one machine per test binary,
//! see `Machine::shared`). The fake is only trusted because it passes the same cases.
//!
//! Each case uses its own unit names, so cases run in parallel on the shared machine.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use systemd::{
    DbusConfig, DbusManager, FakeManager, JobResult, SystemdManager, UnitFilter, UnitStateChange,
    UnitStatus,
};
use testbed::machine::Machine;
use tokio::sync::mpsc::Receiver;

const SLEEP: &str =
    "[Unit]\nDescription=contract test service\n\n[Service]\nExecStart=/bin/sleep 1000\n";
const FAILING: &str = "[Service]\nType=oneshot\nExecStart=/bin/false\n";
/// A oneshot whose start job never ends: the unit stays `activating` until it is stopped.
const HANGING: &str = "[Service]\nType=oneshot\nExecStart=/bin/sleep infinity\n";
/// A service whose stop job takes 3 s (`deactivating` meanwhile).
const SLOW_STOP: &str =
    "[Service]\nExecStart=/bin/sleep 1000\nExecStop=/bin/sleep 3\nTimeoutStopSec=60\n";
const WANTED: &str =
    "[Service]\nExecStart=/bin/sleep 1000\n\n[Install]\nWantedBy=multi-user.target\n";

fn unit(text: &str) -> units::UnitFile {
    text.parse().expect("contract unit files parse")
}

fn status(load: &str, active: &str, sub: &str) -> UnitStatus {
    UnitStatus::new(load, active, sub)
}

async fn state_of<M: SystemdManager>(m: &M, name: &str) -> anyhow::Result<UnitStatus> {
    let mut states = m.states(&[name.to_owned()]).await?;
    states
        .remove(name)
        .with_context(|| format!("states() has no entry for {name}"))
}

/// The next change of `name` accepted by `pred`, skipping others, within 10 s.
async fn next_change(
    rx: &mut Receiver<UnitStateChange>,
    name: &str,
    what: &str,
    pred: impl Fn(&Option<UnitStatus>) -> bool,
) -> anyhow::Result<Option<UnitStatus>> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(change) = rx.recv().await {
            if change.name == name && pred(&change.status) {
                return Some(change.status);
            }
            seen.push(change);
        }
        None
    })
    .await;
    match found {
        Ok(Some(status)) => Ok(status),
        Ok(None) => anyhow::bail!("subscription closed waiting for {what}; saw {seen:?}"),
        Err(_) => anyhow::bail!("no change to {what} within 10 s; saw {seen:?}"),
    }
}

/// Every change of `name` received within `window`.
async fn changes_within(
    rx: &mut Receiver<UnitStateChange>,
    name: &str,
    window: Duration,
) -> Vec<Option<UnitStatus>> {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(window, async {
        while let Some(change) = rx.recv().await {
            if change.name == name {
                seen.push(change.status);
            }
        }
    })
    .await;
    seen
}

struct FakeFixture {
    manager: FakeManager,
}

impl FakeFixture {
    async fn new() -> anyhow::Result<Self> {
        Ok(FakeFixture {
            manager: FakeManager::new(),
        })
    }

    fn manager(&self) -> &FakeManager {
        &self.manager
    }

    async fn is_enabled(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.manager.is_enabled(name))
    }
}

struct DbusFixture {
    machine: &'static Machine,
    manager: DbusManager,
}

impl DbusFixture {
    async fn new() -> anyhow::Result<Self> {
        let machine = Machine::shared()?;
        let manager = DbusManager::connect(DbusConfig {
            bus_address: Some(machine.bus_address()),
            user: false,
            units_dir: machine.root_path("/run/fleet/units"),
            units_dir_in_systemd: "/run/fleet/units".into(),
            job_timeout: Duration::from_secs(30),
        })
        .await
        .with_context(|| format!("cannot connect to machine {}", machine.name()))?;
        Ok(DbusFixture { machine, manager })
    }

    fn manager(&self) -> &DbusManager {
        &self.manager
    }

    async fn is_enabled(&self, name: &str) -> anyhow::Result<bool> {
        let out = self.machine.systemctl(&["is-enabled", name]).await?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(state == "enabled-runtime" || state == "enabled")
    }
}

/// Expands each case once per implementation: `fake::case` and `dbus::case`.
macro_rules! systemd_contract {
    ($(async fn $name:ident($fx:ident) $body:block)*) => {
        mod fake {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    let $fx = FakeFixture::new().await?;
                    $body
                }
            )*
        }
        mod dbus {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    let $fx = DbusFixture::new().await?;
                    $body
                }
            )*
        }
    };
}

systemd_contract! {
    async fn load_then_reload_makes_a_loaded_inactive_unit(fx) {
        let m = fx.manager();
        let name = "c-load.service";
        let file = unit(SLEEP);
        m.load(name, &file).await?;
        m.reload().await?;
        assert_eq!(state_of(m, name).await?, status("loaded", "inactive", "dead"));
        let files = m.unit_files().await?;
        assert_eq!(files.get(name), Some(&file.canonical()), "{files:?}");
        Ok(())
    }

    async fn load_replaces_the_file(fx) {
        let m = fx.manager();
        let name = "c-replace.service";
        m.load(name, &unit(SLEEP)).await?;
        let second = unit(FAILING);
        m.load(name, &second).await?;
        m.reload().await?;
        assert_eq!(m.unit_files().await?.get(name), Some(&second.canonical()));
        assert_eq!(m.start(name).await?, JobResult::Failed);
        Ok(())
    }

    async fn start_and_stop_report_jobs_and_states(fx) {
        let m = fx.manager();
        let name = "c-startstop.service";
        m.load(name, &unit(SLEEP)).await?;
        m.reload().await?;
        assert_eq!(m.start(name).await?, JobResult::Done);
        assert_eq!(state_of(m, name).await?, status("loaded", "active", "running"));
        assert!(m.main_pid(name).await? > 0, "a running service has a main PID");
        // Starting a running unit is a no-op job.
        assert_eq!(m.start(name).await?, JobResult::Done);
        assert_eq!(m.stop(name).await?, JobResult::Done);
        assert_eq!(state_of(m, name).await?, status("loaded", "inactive", "dead"));
        assert_eq!(m.main_pid(name).await?, 0);
        Ok(())
    }

    async fn unload_removes_the_file_and_the_unit(fx) {
        let m = fx.manager();
        let name = "c-unload.service";
        m.load(name, &unit(SLEEP)).await?;
        m.reload().await?;
        assert_eq!(state_of(m, name).await?.load_state, "loaded");
        m.unload(name).await?;
        assert!(!m.unit_files().await?.contains_key(name));
        m.reload().await?;
        assert_eq!(state_of(m, name).await?, UnitStatus::not_found());
        // Unloading again is harmless.
        m.unload(name).await?;
        Ok(())
    }

    async fn unload_does_not_stop_a_running_unit(fx) {
        let m = fx.manager();
        let name = "c-orphan.service";
        m.load(name, &unit(SLEEP)).await?;
        m.reload().await?;
        assert_eq!(m.start(name).await?, JobResult::Done);
        m.unload(name).await?;
        m.reload().await?;
        assert_eq!(state_of(m, name).await?, status("not-found", "active", "running"));
        assert_eq!(m.stop(name).await?, JobResult::Done);
        assert_eq!(state_of(m, name).await?, UnitStatus::not_found());
        Ok(())
    }

    async fn install_section_enables_the_unit(fx) {
        let m = fx.manager();
        let name = "c-wanted.service";
        m.load(name, &unit(WANTED)).await?;
        assert!(fx.is_enabled(name).await?, "{name} should be enabled-runtime");
        let plain = "c-notwanted.service";
        m.load(plain, &unit(SLEEP)).await?;
        assert!(!fx.is_enabled(plain).await?, "{plain} has no [Install]");
        m.unload(name).await?;
        m.reload().await?;
        assert!(!fx.is_enabled(name).await?, "{name} is disabled after unload");
        Ok(())
    }

    async fn a_failing_start_is_reported(fx) {
        let m = fx.manager();
        let name = "c-failing.service";
        m.load(name, &unit(FAILING)).await?;
        m.reload().await?;
        assert_eq!(m.start(name).await?, JobResult::Failed);
        assert_eq!(state_of(m, name).await?, status("loaded", "failed", "failed"));
        // unload resets the failure.
        m.unload(name).await?;
        m.reload().await?;
        assert_eq!(state_of(m, name).await?, UnitStatus::not_found());
        Ok(())
    }

    async fn unknown_units_cannot_be_started_or_stopped(fx) {
        let m = fx.manager();
        let err = m.start("c-nope.service").await.unwrap_err();
        assert!(err.is_no_such_unit() && !err.is_transient(), "{err:?}");
        let err = m.stop("c-nope.service").await.unwrap_err();
        assert!(err.is_no_such_unit(), "{err:?}");
        assert_eq!(m.main_pid("c-nope.service").await?, 0);
        Ok(())
    }

    async fn states_of_many_units_in_one_call(fx) {
        let m = fx.manager();
        let names: Vec<String> = (0..20).map(|i| format!("c-many-{i}.service")).collect();
        for name in &names {
            m.load(name, &unit(SLEEP)).await?;
        }
        m.reload().await?;
        m.start(&names[3]).await?;
        let mut asked = names.clone();
        asked.push("c-many-missing.service".to_owned());
        let states = m.states(&asked).await?;
        let expected: BTreeMap<String, UnitStatus> = asked
            .iter()
            .map(|n| {
                let s = match n.as_str() {
                    "c-many-missing.service" => UnitStatus::not_found(),
                    "c-many-3.service" => status("loaded", "active", "running"),
                    _ => status("loaded", "inactive", "dead"),
                };
                (n.clone(), s)
            })
            .collect();
        assert_eq!(states, expected);
        assert!(m.states(&[]).await?.is_empty());
        let files = m.unit_files().await?;
        assert!(names.iter().all(|n| files.contains_key(n)), "{:?}", files.keys());
        Ok(())
    }

    async fn a_hanging_start_is_replaced_by_a_stop(fx) {
        let m = fx.manager();
        let name = "c-hang.service";
        m.load(name, &unit(HANGING)).await?;
        m.reload().await?;
        let start = m.start(name);
        tokio::pin!(start);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut start).await.is_err(),
            "the start job of a oneshot that sleeps forever must not end"
        );
        assert_eq!(state_of(m, name).await?, status("loaded", "activating", "start"));
        // Other units' jobs go on meanwhile, on the same connection.
        let other = "c-hang-other.service";
        m.load(other, &unit(SLEEP)).await?;
        m.reload().await?;
        assert_eq!(m.start(other).await?, JobResult::Done);
        assert_eq!(m.stop(other).await?, JobResult::Done);
        // A stop replaces the start job, whose waiter learns it was canceled.
        let (started, stopped) = tokio::join!(start, m.stop(name));
        assert_eq!(started?, JobResult::Canceled);
        assert_eq!(stopped?, JobResult::Done);
        // systemd kills the oneshot's process: the unit failed (result "signal").
        assert_eq!(state_of(m, name).await?, status("loaded", "failed", "failed"));
        Ok(())
    }

    async fn a_dropped_wait_leaves_the_job_running_and_the_unit_stoppable(fx) {
        let m = fx.manager();
        let name = "c-hang-drop.service";
        m.load(name, &unit(HANGING)).await?;
        m.reload().await?;
        // Stop waiting: the job goes on in systemd.
        assert!(tokio::time::timeout(Duration::from_millis(500), m.start(name)).await.is_err());
        assert_eq!(state_of(m, name).await?.active_state, "activating");
        assert_eq!(m.stop(name).await?, JobResult::Done);
        assert_eq!(state_of(m, name).await?.active_state, "failed");
        Ok(())
    }

    async fn a_slow_stop_does_not_hold_up_other_jobs(fx) {
        let m = fx.manager();
        let slow = "c-slowstop.service";
        let other = "c-slowstop-other.service";
        m.load(slow, &unit(SLOW_STOP)).await?;
        m.load(other, &unit(SLEEP)).await?;
        m.reload().await?;
        assert_eq!(m.start(slow).await?, JobResult::Done);
        let stop = m.stop(slow);
        tokio::pin!(stop);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut stop).await.is_err(),
            "a stop whose ExecStop sleeps 3 s must not end at once"
        );
        assert_eq!(state_of(m, slow).await?.active_state, "deactivating");
        assert_eq!(m.start(other).await?, JobResult::Done);
        assert_eq!(m.stop(other).await?, JobResult::Done);
        // A second stop of the same unit joins the running job.
        let (first, second) = tokio::join!(stop, m.stop(slow));
        assert_eq!(first?, JobResult::Done);
        assert_eq!(second?, JobResult::Done);
        assert_eq!(state_of(m, slow).await?.active_state, "inactive");
        Ok(())
    }

    async fn a_start_during_a_slow_stop_runs_once_the_unit_stopped(fx) {
        let m = fx.manager();
        let name = "c-slowstop-restart.service";
        m.load(name, &unit(SLOW_STOP)).await?;
        m.reload().await?;
        assert_eq!(m.start(name).await?, JobResult::Done);
        let stop = m.stop(name);
        tokio::pin!(stop);
        assert!(tokio::time::timeout(Duration::from_millis(500), &mut stop).await.is_err());
        // The start replaces the stop job, and runs once the unit is down.
        let (stopped, started) = tokio::join!(stop, m.start(name));
        assert_eq!(stopped?, JobResult::Canceled);
        assert_eq!(started?, JobResult::Done);
        assert_eq!(state_of(m, name).await?, status("loaded", "active", "running"));
        Ok(())
    }

    async fn subscribe_reports_start_and_stop(fx) {
        let m = fx.manager();
        let name = "c-sub.service";
        let mut rx = m.subscribe(UnitFilter::names([name])).await?;
        let mut others = m.subscribe(UnitFilter::names(["c-sub-other.service"])).await?;
        m.load(name, &unit(SLEEP)).await?;
        m.reload().await?;
        m.start(name).await?;
        let active = next_change(&mut rx, name, "active", |s| {
            s.as_ref().is_some_and(|s| s.active_state == "active")
        })
        .await?;
        assert_eq!(active, Some(status("loaded", "active", "running")));
        // A daemon-reload re-creates every unit in systemd; a running unit must not look gone.
        m.reload().await?;
        let after_reload = changes_within(&mut rx, name, Duration::from_millis(700)).await;
        assert!(
            after_reload.iter().all(|s| s.as_ref() == active.as_ref()),
            "{after_reload:?}"
        );
        m.stop(name).await?;
        // systemd may also garbage-collect the stopped unit, which reads as `None`.
        let stopped = next_change(&mut rx, name, "inactive", |s| {
            s.as_ref().is_none_or(|s| s.active_state == "inactive")
        })
        .await?;
        if let Some(s) = stopped {
            assert_eq!(s, status("loaded", "inactive", "dead"));
        }
        assert!(others.try_recv().is_err(), "the filter lets other units through");
        Ok(())
    }
}

/// A dropped receiver ends the subscription's tasks, and the connection stays usable.
#[tokio::test]
async fn dbus_dropped_subscription_does_not_stall_the_connection() -> anyhow::Result<()> {
    let fx = DbusFixture::new().await?;
    let m = fx.manager();
    let name = "c-stall.service";
    m.load(name, &unit(SLEEP)).await?;
    m.reload().await?;
    // Never read: the manager must coalesce instead of blocking the bus.
    let _unread = m.subscribe(UnitFilter::all()).await?;
    let dropped = m.subscribe(UnitFilter::all()).await?;
    drop(dropped);
    for _ in 0..15 {
        assert_eq!(m.start(name).await?, JobResult::Done);
        assert_eq!(m.stop(name).await?, JobResult::Done);
    }
    Ok(())
}

/// Hidden temporaries in the units directory are not unit files.
#[tokio::test]
async fn dbus_unit_files_skip_temporaries() -> anyhow::Result<()> {
    let fx = DbusFixture::new().await?;
    fx.machine
        .write_file("/run/fleet/units/.c-tmp.service.tmp-1-1", "junk")?;
    let files = fx.manager().unit_files().await?;
    assert!(files.keys().all(|k| !k.starts_with('.')), "{files:?}");
    Ok(())
}

/// When the bus goes away, calls fail as transient, subscriptions close, and the next call
/// reconnects. Uses a machine of its own: restarting its bus would disturb the other cases.
#[tokio::test]
async fn dbus_reconnects_after_the_bus_restarts() -> anyhow::Result<()> {
    use testbed::machine::MachineSpec;
    let machine = Machine::boot(MachineSpec::new(testbed::util::unique_name("tb"))).await?;
    let m = DbusManager::connect(DbusConfig {
        bus_address: Some(machine.bus_address()),
        user: false,
        units_dir: machine.root_path("/run/fleet/units"),
        units_dir_in_systemd: "/run/fleet/units".into(),
        job_timeout: Duration::from_secs(30),
    })
    .await?;
    let mut rx = m.subscribe(UnitFilter::all()).await?;
    let out = machine.systemctl(&["restart", "dbus.service"]).await?;
    assert!(out.status.success(), "{out:?}");
    // The subscription ends (after any changes already queued).
    tokio::time::timeout(Duration::from_secs(10), async {
        while rx.recv().await.is_some() {}
    })
    .await
    .context("the subscription did not close when the bus went away")?;
    let name = "c-reconnect.service";
    let states =
        testbed::util::wait_for("a call to succeed again", Duration::from_secs(10), || {
            let m = &m;
            async move {
                match m.states(&[name.to_owned()]).await {
                    Ok(states) => Ok(Some(states)),
                    Err(e) if e.is_transient() => Err(e.into()),
                    Err(e) => Err(anyhow::anyhow!("not transient: {e:?}")),
                }
            }
        })
        .await?;
    assert_eq!(states[name], UnitStatus::not_found());
    m.load(name, &unit(SLEEP)).await?;
    m.reload().await?;
    let mut rx = m.subscribe(UnitFilter::names([name])).await?;
    assert_eq!(m.start(name).await?, JobResult::Done);
    next_change(&mut rx, name, "active", |s| {
        s.as_ref().is_some_and(|s| s.active_state == "active")
    })
    .await?;
    machine.kill().await;
    Ok(())
}
