//! The agent: makes this machine's systemd run what the schedule gives it, and
//! reports the outcome.
//!
//! Layout:
//! - `plan.rs`: the pure core, [`plan()`] (desired and observed units in,
//!   tasks out) and [`settle`] (what the agent has taken each unit to after a
//!   batch). Table-tested like fleet's `agent/reconcile_test.go`.
//! - `driver.rs`: runs a batch of [`Task`]s on a [`SystemdManager`] and
//!   reports each outcome; a failure stops only what depends on it.
//! - `publisher.rs`: [`Publisher`] and its [`PublisherHandle`]: unit states
//!   to etcd, deduplicated, following systemd's change stream.
//! - `heart.rs`: [`Heart`]: the machine's lease and presence record.
//!
//! How the pieces connect (the daemon wires them, see [`Agent::new`]):
//! ```text
//! Heart ──watch<Option<LeaseId>>──▶ Publisher ◀──PublisherHandle (mpsc+oneshot)── Agent
//!   └──watch<bool> ready──▶ API                 │                                  │
//!                                  systemd.subscribe()            schedule/<me>/ cache, systemd
//! ```
//!
//! Design choices, against the original agent:
//! - **One watch.** The engine writes a per-machine schedule
//!   (`schedule/<machine>/<unit>`, global units included) and the agent
//!   caches only its own prefix. It reads `units/<name>` only to load content
//!   whose hash it does not have locally, and if the unit's content has moved
//!   on from the schedule entry's hash it waits for the engine to update the
//!   entry. There are no cluster-wide reads.
//! - **Level-triggered.** A pass runs on every schedule change and on an
//!   interval (5 s, the safety net). Each pass observes afresh: the files in
//!   the units directory (hashed) and systemd's states of the units involved,
//!   in one call. Nothing is acted on while the schedule has not been listed,
//!   and a pass whose observations fail does nothing, so an etcd or D-Bus
//!   outage never stops a unit.
//! - **Restarts touch nothing.** A unit whose file has the right hash and
//!   that systemd reports as running is adopted, not restarted.

mod backoff;
pub mod driver;
pub mod heart;
pub mod plan;
pub mod publisher;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use systemd::SystemdManager;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use units::{UnitFile, UnitHash, UnitName};

use crate::registry::cache::{self, CacheMode, Reflector, Store};
use crate::registry::{Kv, ParsedKey, Registry, Revision};
use crate::schema::{MachineId, ScheduledUnit};

pub use driver::{Executed, Outcome, Report};
pub use heart::{Heart, HeartHandle};
pub use plan::{DesiredUnit, Managed, ObservedUnit, Task, plan, settle};
pub use publisher::{
    Publisher, PublisherConfig, PublisherGone, PublisherHandle, PublisherSnapshot,
};

/// How many times a purge tries to empty the units directory.
const PURGE_ATTEMPTS: usize = 3;

/// The agent's settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// How often to reconcile when the schedule does not change (fleet's
    /// agent: 5 s).
    pub reconcile_interval: Duration,
    /// How the schedule cache keeps up: `disable_watches` polls every
    /// `reconcile_interval` instead of watching.
    pub cache: CacheMode,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            reconcile_interval: Duration::from_secs(5),
            cache: CacheMode::Watch,
        }
    }
}

/// The agent's state, for debug dumps (SIGUSR1).
#[derive(Clone, Debug, Serialize)]
pub struct AgentSnapshot {
    /// This machine.
    pub machine: MachineId,
    /// The schedule revision the last pass saw; `None` before the first.
    pub schedule_revision: Option<Revision>,
    /// Passes run since start.
    pub passes: u64,
    /// What the agent has taken each unit to.
    pub managed: BTreeMap<UnitName, Managed>,
    /// Scheduled units left alone because their content could not be had
    /// (etcd unreachable, or the unit changed after it was scheduled).
    pub waiting_for_content: BTreeSet<UnitName>,
    /// The last batch that had something to do.
    pub last_batch: Option<Report>,
    /// The publisher's state; `None` if it has stopped.
    pub publisher: Option<PublisherSnapshot>,
}

/// The agent. Cheap to clone: spawn [`Agent::run`] on one clone and keep
/// another for [`Agent::purge`] and [`Agent::snapshot`].
pub struct Agent<K: Kv, S: SystemdManager> {
    /// Where the schedule and unit contents are.
    registry: Registry<K>,
    /// The local systemd.
    systemd: Arc<S>,
    /// This machine: whose schedule to follow.
    machine: MachineId,
    /// Settings.
    config: AgentConfig,
    /// Where unit states go.
    publisher: PublisherHandle,
    /// The latest state, written by the running loop after each pass.
    state: Arc<watch::Sender<AgentSnapshot>>,
}

impl<K: Kv, S: SystemdManager> Clone for Agent<K, S> {
    fn clone(&self) -> Self {
        Agent {
            registry: self.registry.clone(),
            systemd: Arc::clone(&self.systemd),
            machine: self.machine.clone(),
            config: self.config.clone(),
            publisher: self.publisher.clone(),
            state: Arc::clone(&self.state),
        }
    }
}

impl<K: Kv, S: SystemdManager> Agent<K, S> {
    /// An agent for `machine`, driving `systemd` (which owns the units
    /// directory) and reporting through `publisher`.
    ///
    /// The daemon wires it like this:
    /// ```text
    /// let (ready_tx, ready_rx) = watch::channel(false);          // ready_rx gates the API
    /// let heart = Heart::new(registry.clone(), record, agent_ttl, ready_tx);
    /// let (publisher, handle) = Publisher::new(registry.clone(), systemd.clone(), id.clone(),
    ///     heart.leases(), PublisherConfig::from_agent_ttl(agent_ttl));
    /// let agent = Agent::new(registry, systemd, id, AgentConfig::default(), handle);
    /// let presence = heart.handle();
    /// spawn(heart.run(cancel)); spawn(publisher.run(cancel)); spawn(agent.clone().run(cancel));
    /// // SIGTERM: cancel, then agent.purge(), then presence.purge().
    /// ```
    pub fn new(
        registry: Registry<K>,
        systemd: Arc<S>,
        machine: MachineId,
        config: AgentConfig,
        publisher: PublisherHandle,
    ) -> Self {
        let state = watch::Sender::new(AgentSnapshot {
            machine: machine.clone(),
            schedule_revision: None,
            passes: 0,
            managed: BTreeMap::new(),
            waiting_for_content: BTreeSet::new(),
            last_batch: None,
            publisher: None,
        });
        Agent {
            registry,
            systemd,
            machine,
            config,
            publisher,
            state: Arc::new(state),
        }
    }

    /// Follows this machine's schedule until `cancel`: caches
    /// `schedule/<machine>/` (one watch) and reconciles on every change and
    /// every `reconcile_interval`. Units are left running when it stops.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let span = info_span!("agent", machine = %self.machine);
        let keys = self.registry.keys().clone();
        let me = self.machine.clone();
        let (reflector, schedule) = Reflector::new(
            self.registry.kv().clone(),
            keys.schedule_of(&me),
            move |key, value| match keys.parse(key)? {
                ParsedKey::Scheduled { machine, unit } if machine == me => {
                    Some((unit, cache::json::<ScheduledUnit>(key, value)?))
                }
                _ => None,
            },
        );
        let reflector = reflector.with_mode(self.config.cache);
        async move {
            tokio::select! {
                () = reflector.run(cancel.clone()) => Ok(()),
                result = self.reconcile_loop(schedule, cancel.clone()) => result,
            }
        }
        .instrument(span)
        .await
    }

    /// Reconciles on schedule changes and on the interval.
    async fn reconcile_loop(
        &self,
        schedule: Store<(UnitName, ScheduledUnit)>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut changes = schedule.subscribe();
        let mut tick = tokio::time::interval(self.config.reconcile_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut managed = BTreeMap::new();
        let mut passes = 0;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The reflector is gone; `run` is returning.
                        return Ok(());
                    }
                }
                _ = tick.tick() => {}
            }
            if !schedule.is_ready() {
                debug!("schedule not listed yet; leaving units as they are");
                continue;
            }
            let started = Instant::now();
            let Some(pass) = self.pass(&schedule, &managed).await else {
                continue;
            };
            passes += 1;
            managed.clone_from(&pass.managed);
            if let Err(PublisherGone) = self.publisher.set_units(pass.managed.clone()).await {
                debug!("publisher stopped; states not updated");
            }
            self.state.send_modify(|s| {
                s.schedule_revision = Some(pass.revision);
                s.passes = passes;
                s.managed = pass.managed;
                s.waiting_for_content = pass.waiting;
                if pass.report.is_some() {
                    s.last_batch = pass.report;
                }
            });
            let elapsed = started.elapsed();
            if elapsed > self.config.reconcile_interval {
                warn!(?elapsed, interval = ?self.config.reconcile_interval, "reconcile slower than its interval");
            }
        }
    }

    /// One reconcile pass. `None` when systemd could not be observed (nothing
    /// was done).
    async fn pass(
        &self,
        schedule: &Store<(UnitName, ScheduledUnit)>,
        managed: &BTreeMap<UnitName, Managed>,
    ) -> Option<Pass> {
        let (snapshot, revision) = schedule.snapshot_at();
        let entries: BTreeMap<UnitName, ScheduledUnit> = snapshot
            .values()
            .map(|entry| (entry.0.clone(), entry.1.clone()))
            .collect();

        let files = match self.systemd.unit_files().await {
            Ok(files) => parse_files(files),
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot list the units directory; doing nothing this round");
                return None;
            }
        };
        let names: Vec<String> = files
            .keys()
            .chain(entries.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(ToString::to_string)
            .collect();
        let mut states = match self.systemd.states(&names).await {
            Ok(states) => states,
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot read unit states; doing nothing this round");
                return None;
            }
        };

        let mut desired = BTreeMap::new();
        let mut waiting = BTreeSet::new();
        for (name, entry) in &entries {
            let local = files
                .get(name)
                .and_then(Option::as_ref)
                .filter(|(_, hash)| *hash == entry.hash);
            let file = match local {
                Some((file, _)) => Some(file.clone()),
                None => self.fetch(name, entry).await,
            };
            if file.is_none() {
                waiting.insert(name.clone());
            }
            desired.insert(
                name.clone(),
                DesiredUnit {
                    state: entry.desired_state,
                    hash: entry.hash,
                    file,
                },
            );
        }
        let observed: BTreeMap<UnitName, ObservedUnit> = files
            .iter()
            .map(|(name, file)| {
                let status = states.remove(name.as_str());
                let observed = ObservedUnit {
                    hash: file.as_ref().map(|(_, hash)| *hash),
                    job: managed
                        .get(name)
                        .map_or(crate::schema::TargetState::Inactive, |m| m.job),
                    load_state: status.as_ref().map(|s| s.load_state.clone()),
                    active_state: status.map(|s| s.active_state),
                };
                (name.clone(), observed)
            })
            .collect();

        let tasks = plan(&desired, &observed);
        let report = if tasks.is_empty() {
            debug!(%revision, units = desired.len(), "nothing to do");
            None
        } else {
            info!(%revision, tasks = tasks.len(), "reconciling");
            Some(driver::execute(&*self.systemd, tasks.clone()).await)
        };
        let failed = report
            .as_ref()
            .map(Report::failed_units)
            .unwrap_or_default();
        Some(Pass {
            revision,
            managed: settle(&desired, &observed, &tasks, &failed),
            waiting,
            report,
        })
    }

    /// The content of `name` at the schedule entry's hash, from the registry;
    /// `None` (logged) when it cannot be had this round.
    async fn fetch(&self, name: &UnitName, entry: &ScheduledUnit) -> Option<UnitFile> {
        match self.registry.unit(name).await {
            Ok(Some(unit)) => {
                let file = unit.value.file();
                if file.hash() == entry.hash {
                    Some(file)
                } else {
                    info!(unit = %name, scheduled = %entry.hash.short(), current = %file.hash().short(),
                        "unit content differs from its schedule entry; waiting for the engine");
                    None
                }
            }
            Ok(None) => {
                info!(unit = %name, "scheduled unit no longer exists; waiting for the engine");
                None
            }
            Err(e) => {
                warn!(unit = %name, error = %error_chain(&e), "cannot fetch unit content; will retry");
                None
            }
        }
    }

    /// Graceful shutdown (SIGTERM), once `run` has returned (a pass in
    /// flight is not interrupted, and must not race the purge): stops and
    /// unloads every unit in the units directory (trying a few times until
    /// it is empty) and removes their published states, as the original's
    /// purge did. So stopping fleetd stops its units, and the engine places
    /// them elsewhere.
    pub async fn purge(&self) -> anyhow::Result<()> {
        let span = info_span!("agent", machine = %self.machine);
        async {
            let mut seen: BTreeSet<UnitName> =
                self.state.borrow().managed.keys().cloned().collect();
            let mut remaining = BTreeSet::new();
            for _ in 0..PURGE_ATTEMPTS {
                let files = self
                    .systemd
                    .unit_files()
                    .await
                    .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
                let names: BTreeSet<UnitName> = parse_files(files).into_keys().collect();
                if names.is_empty() {
                    remaining.clear();
                    break;
                }
                info!(units = names.len(), "purging units");
                let mut tasks: Vec<Task> = names
                    .iter()
                    .map(|name| Task::Unload { name: name.clone() })
                    .collect();
                tasks.push(Task::Reload);
                driver::execute(&*self.systemd, tasks).await;
                seen.extend(names.iter().cloned());
                remaining = names;
            }
            let mut state_errors = 0;
            for name in &seen {
                if let Err(e) = self.registry.remove_state(name, &self.machine).await {
                    state_errors += 1;
                    debug!(unit = %name, error = %error_chain(&e), "cannot remove unit state");
                }
            }
            self.state.send_modify(|s| s.managed.clear());
            if !remaining.is_empty() {
                let list: Vec<String> = remaining.iter().map(ToString::to_string).collect();
                anyhow::bail!("units still loaded after purging: {}", list.join(", "));
            }
            if state_errors > 0 {
                // They are on the machine lease; revoking it removes them too.
                warn!(
                    failed = state_errors,
                    "some unit states could not be removed"
                );
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// The agent's state, for debug dumps.
    pub async fn snapshot(&self) -> AgentSnapshot {
        let mut snapshot = self.state.borrow().clone();
        snapshot.publisher = self.publisher.snapshot().await.ok();
        snapshot
    }
}

/// What one pass found and did.
struct Pass {
    /// The schedule revision it worked from.
    revision: Revision,
    /// What the agent has taken each unit to.
    managed: BTreeMap<UnitName, Managed>,
    /// Scheduled units left alone for want of content.
    waiting: BTreeSet<UnitName>,
    /// The batch, if there was one.
    report: Option<Report>,
}

/// The units directory by unit name, each file parsed and hashed (`None`: it
/// does not parse, and will be replaced or unloaded). Files whose names are
/// not unit names are not ours and are left alone.
fn parse_files(
    files: BTreeMap<String, String>,
) -> BTreeMap<UnitName, Option<(UnitFile, UnitHash)>> {
    files
        .into_iter()
        .filter_map(|(name, text)| {
            let Ok(unit) = name.parse::<UnitName>() else {
                warn!(file = %name, "ignoring a file in the units directory that is not a unit name");
                return None;
            };
            let file = match UnitFile::parse(&text) {
                Ok(file) => {
                    let hash = file.hash();
                    Some((file, hash))
                }
                Err(e) => {
                    warn!(unit = %name, error = %e, "unit file in the units directory does not parse");
                    None
                }
            };
            Some((unit, file))
        })
        .collect()
}

/// An error and its causes on one line (`a: b: c`), for log fields and
/// reports.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
