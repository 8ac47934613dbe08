//! The agent: makes this machine's systemd run what the schedule gives it, and
//! reports the outcome.
//!
//! Layout:
//! - `plan.rs`: the pure core, [`plan()`] (desired and observed units in,
//!   tasks out) and [`settle`] (what the agent has taken each unit to after a
//!   batch). Table-tested like fleet's `agent/reconcile_test.go`.
//! - `driver.rs`: runs [`Operation`]s (one unit's tasks each) on a
//!   [`SystemdManager`], concurrently and bounded, with the daemon-reload as a
//!   barrier; a failure stops only what depends on it.
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
//!   the units directory (read every time, parsed and hashed only when their
//!   text changed) and systemd's states of the units involved, in one call. Nothing is acted on while the schedule has not been listed,
//!   and a pass whose observations fail does nothing, so an etcd or D-Bus
//!   outage never stops a unit.
//! - **Restarts touch nothing.** A unit whose file has the right hash and
//!   that systemd reports as running is adopted, not restarted.
//! - **No unit holds up another.** A pass plans and spawns operations and does
//!   not wait for them: a oneshot whose start never ends, or a stop that takes
//!   minutes, is waited for in its own operation while later passes serve the
//!   other units. Operations in flight are tracked across passes
//!   ([`InFlight`]): a unit gets no second operation while one heads where
//!   the schedule wants it, and a changed desire supersedes the operation in
//!   flight (a stop replaces a hanging start in systemd). Results come back
//!   over a channel and are folded into the bookkeeping in one place, stale
//!   ones dropped.

pub(crate) mod driver;
pub(crate) mod heart;
pub(crate) mod plan;
pub(crate) mod publisher;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use systemd::SystemdManager;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};
use units::{UnitFile, UnitHash, UnitName};

use crate::registry::cache::{self, CacheMode, Reflector, Store};
use crate::registry::{Kv, ParsedKey, Registry, Revision};
use crate::schema::{MachineId, ScheduledUnit};

pub use driver::{Executed, Outcome, Report, Runner};
pub use heart::{Heart, HeartHandle};
pub use plan::{
    DesiredUnit, Goal, InFlight, Managed, ObservedUnit, Operation, Sequence, Task, operations,
    plan, settle,
};
pub use publisher::{
    Publisher, PublisherConfig, PublisherGone, PublisherHandle, PublisherSnapshot,
};

/// How many times a purge tries to empty the units directory.
const PURGE_ATTEMPTS: usize = 3;

/// How long a purge waits for units to stop. The daemon allows the purge and
/// the removal of the machine's presence 60 s; a unit whose stop takes longer
/// keeps stopping in systemd (its file stays, and the error names it), and
/// the presence is still removed in time.
const PURGE_DEADLINE: Duration = Duration::from_secs(30);

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
    /// The tasks of the last operation that ended.
    pub last_batch: Option<Report>,
    /// The operations in flight.
    pub in_flight: InFlight,
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
            in_flight: InFlight::default(),
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
                    Some((unit, cache::json_record::<ScheduledUnit>(key, value)?))
                }
                _ => None,
            },
        );
        let reflector = reflector.with_mode(self.config.cache);
        async move {
            let reconcile = self.reconcile_loop(schedule, cancel.clone());
            tokio::pin!(reconcile);
            tokio::select! {
                // Cancelled: the loop is ending too, once its operations have.
                () = reflector.run(cancel.clone()) => reconcile.await,
                result = &mut reconcile => result,
            }
        }
        .instrument(span)
        .await
    }

    /// Reconciles on schedule changes and on the interval, and folds in the
    /// results of the operations it spawned. Returns once they have ended.
    async fn reconcile_loop(
        &self,
        schedule: Store<(UnitName, ScheduledUnit)>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut changes = schedule.subscribe();
        let mut tick = tokio::time::interval(self.config.reconcile_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let runner = Runner::new(Arc::clone(&self.systemd));
        // Unbounded, yet bounded by the units: each operation sends at most
        // two events, and the loop drains them between passes.
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let ops = TaskTracker::new();
        let ops_cancel = cancel.child_token();
        let mut book = Book::default();
        let mut parsed = ParsedFiles::default();
        let mut passes = 0;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                Some(event) = events.recv() => {
                    let mut last = book.fold(event);
                    while let Ok(event) = events.try_recv() {
                        last = book.fold(event).or(last);
                    }
                    self.publish(&book, last).await;
                    continue;
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The reflector is gone; `run` is returning.
                        break;
                    }
                }
                _ = tick.tick() => {}
            }
            if !schedule.is_ready() {
                debug!("schedule not listed yet; leaving units as they are");
                continue;
            }
            let started = Instant::now();
            let Some(pass) = self.observe(&schedule, &book.managed, &mut parsed).await else {
                continue;
            };
            passes += 1;
            let planned = operations(
                &pass.desired,
                &pass.observed,
                &book.managed,
                &book.in_flight.goals(),
            );
            book.managed = planned.managed;
            if planned.operations.is_empty() {
                debug!(revision = %pass.revision, units = pass.desired.len(), in_flight = book.in_flight.units.len(), "nothing to do");
            } else {
                info!(revision = %pass.revision, operations = planned.operations.len(), in_flight = book.in_flight.units.len(), "reconciling");
            }
            for op in planned.operations {
                book.spawn(op, &runner, &ops, &ops_cancel, &events_tx);
            }
            self.state.send_modify(|s| {
                s.schedule_revision = Some(pass.revision);
                s.passes = passes;
                s.waiting_for_content = pass.waiting;
            });
            self.publish(&book, None).await;
            let elapsed = started.elapsed();
            if elapsed > self.config.reconcile_interval {
                warn!(?elapsed, interval = ?self.config.reconcile_interval, "reconcile slower than its interval");
            }
        }
        // Stop waiting in every operation (what they asked of systemd goes
        // on there) and let them end, so nothing races the purge.
        ops_cancel.cancel();
        ops.close();
        ops.wait().await;
        Ok(())
    }

    /// Hands the bookkeeping to the publisher and the debug state.
    async fn publish(&self, book: &Book, last: Option<Report>) {
        if let Err(PublisherGone) = self.publisher.set_units(book.managed.clone()).await {
            debug!("publisher stopped; states not updated");
        }
        self.state.send_modify(|s| {
            s.managed.clone_from(&book.managed);
            s.in_flight.clone_from(&book.in_flight);
            if last.is_some() {
                s.last_batch = last;
            }
        });
    }

    /// Observes one pass's input. `None` when systemd could not be observed
    /// (nothing is done this round).
    async fn observe(
        &self,
        schedule: &Store<(UnitName, ScheduledUnit)>,
        managed: &BTreeMap<UnitName, Managed>,
        parsed: &mut ParsedFiles,
    ) -> Option<Pass> {
        let (snapshot, revision) = schedule.snapshot_at();
        let entries: BTreeMap<UnitName, ScheduledUnit> = snapshot
            .values()
            .map(|entry| (entry.0.clone(), entry.1.clone()))
            .collect();

        let files = match self.systemd.unit_files().await {
            Ok(files) => parsed.parse(files),
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
        Some(Pass {
            revision,
            desired,
            observed,
            waiting,
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
            let deadline = Instant::now() + PURGE_DEADLINE;
            let mut remaining = BTreeSet::new();
            for attempt in 0..=PURGE_ATTEMPTS {
                let files = self
                    .systemd
                    .unit_files()
                    .await
                    .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
                let names: BTreeSet<UnitName> = parse_files(&files).into_keys().collect();
                seen.extend(names.iter().cloned());
                remaining.clone_from(&names);
                if names.is_empty() || attempt == PURGE_ATTEMPTS || Instant::now() >= deadline {
                    break;
                }
                info!(units = names.len(), "purging units");
                // Every unit at once (bounded): one that will not stop holds
                // up nobody, and the purge ends by its deadline.
                let ops = names
                    .iter()
                    .map(|name| Operation {
                        unit: name.clone(),
                        tasks: vec![Task::Unload { name: name.clone() }],
                        reload: true,
                        goal: None,
                        done: None,
                        failed: None,
                    })
                    .collect();
                let cancel = CancellationToken::new();
                let runner = Runner::new(Arc::clone(&self.systemd));
                let run = driver::run_all(&runner, ops, cancel.clone());
                tokio::pin!(run);
                tokio::select! {
                    _ = &mut run => {}
                    () = tokio::time::sleep_until(deadline) => {
                        warn!(deadline = ?PURGE_DEADLINE, "units still stopping at the purge deadline; leaving them to systemd");
                        cancel.cancel();
                        run.await;
                    }
                }
            }
            let mut state_errors = 0;
            for name in &seen {
                if let Err(e) = self.registry.remove_state(name, &self.machine).await {
                    state_errors += 1;
                    debug!(unit = %name, error = %error_chain(&e), "cannot remove unit state");
                }
            }
            self.state.send_modify(|s| {
                s.managed.clear();
                s.in_flight = InFlight::default();
            });
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

/// What one pass observed.
struct Pass {
    /// The schedule revision it worked from.
    revision: Revision,
    /// What the schedule wants.
    desired: BTreeMap<UnitName, DesiredUnit>,
    /// What the units directory and systemd hold.
    observed: BTreeMap<UnitName, ObservedUnit>,
    /// Scheduled units left alone for want of content.
    waiting: BTreeSet<UnitName>,
}

/// What an operation tells the loop.
enum Event {
    /// Its content is in place and it is issuing its job.
    Progress {
        /// The unit.
        unit: UnitName,
        /// Which operation.
        seq: Sequence,
    },
    /// It ended.
    Finished {
        /// The unit.
        unit: UnitName,
        /// Which operation.
        seq: Sequence,
        /// Its tasks and their outcomes.
        executed: Vec<Executed>,
    },
}

/// The reconcile loop's bookkeeping; only the loop touches it.
#[derive(Default)]
struct Book {
    /// What the agent has taken each unit to.
    managed: BTreeMap<UnitName, Managed>,
    /// The operations in flight.
    in_flight: InFlight,
    /// Per unit with an operation in flight: the token that ends its waits,
    /// and the one cancelled when it has ended (what a superseding operation
    /// waits for).
    tokens: BTreeMap<UnitName, (CancellationToken, CancellationToken)>,
}

impl Book {
    /// Starts `op`, superseding the unit's operation in flight if any.
    fn spawn<S: SystemdManager>(
        &mut self,
        op: Operation,
        runner: &Runner<S>,
        ops: &TaskTracker,
        cancel: &CancellationToken,
        events: &mpsc::UnboundedSender<Event>,
    ) {
        let (seq, superseded) = self.in_flight.begin(&op);
        let after = self.tokens.remove(&op.unit).map(|(stop, ended)| {
            stop.cancel();
            ended
        });
        if let Some(old) = superseded {
            info!(unit = %op.unit, ?old, "the desired state changed; superseding the operation in flight");
        }
        let stop = cancel.child_token();
        let ended = CancellationToken::new();
        self.tokens
            .insert(op.unit.clone(), (stop.clone(), ended.clone()));
        let preparing = runner.prepare(&op);
        let runner = runner.clone();
        let events = events.clone();
        ops.spawn(async move {
            let _ended = ended.drop_guard();
            let unit = op.unit.clone();
            let progress = {
                let (events, unit) = (events.clone(), unit.clone());
                // The loop outlives its operations; a failed send only means
                // it is gone.
                move || drop(events.send(Event::Progress { unit, seq }))
            };
            let executed = runner.run(op, preparing, after, stop, progress).await;
            drop(events.send(Event::Finished {
                unit,
                seq,
                executed,
            }));
        });
    }

    /// Folds one event into the bookkeeping; the report of an operation that
    /// ended.
    fn fold(&mut self, event: Event) -> Option<Report> {
        match event {
            Event::Progress { unit, seq } => {
                self.in_flight.progress(&mut self.managed, &unit, seq);
                None
            }
            Event::Finished {
                unit,
                seq,
                executed,
            } => {
                let report = Report { executed };
                let ok = report.failed_units().is_empty();
                if self.in_flight.finish(&mut self.managed, &unit, seq, ok) {
                    self.tokens.remove(&unit);
                } else {
                    debug!(%unit, ?seq, "dropping the result of a superseded operation");
                }
                Some(report)
            }
        }
    }
}

/// A file of the units directory, parsed and hashed: `None` when it does not
/// parse (it will be replaced or unloaded).
type ParsedFile = Option<(UnitFile, UnitHash)>;

/// The units directory by unit name, each file parsed and hashed. Files whose
/// names are not unit names are not ours and are left alone.
fn parse_files(files: &BTreeMap<String, String>) -> BTreeMap<UnitName, ParsedFile> {
    files
        .iter()
        .filter_map(|(name, text)| parse_file(name, text))
        .collect()
}

/// One file of the units directory; `None` when its name is not a unit name.
fn parse_file(name: &str, text: &str) -> Option<(UnitName, ParsedFile)> {
    let Ok(unit) = name.parse::<UnitName>() else {
        warn!(file = %name, "ignoring a file in the units directory that is not a unit name");
        return None;
    };
    let file = match UnitFile::parse(text) {
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
}

/// The units directory as the last pass parsed it, so that an idle pass does
/// not parse and hash every file again.
///
/// Keyed by the file's whole text, not by its metadata: every pass still
/// reads every file, so a file that someone else changed (even within the
/// same second and to the same size) is parsed and hashed afresh and the
/// agent puts the scheduled content back, as without the cache. Comparing
/// the text is a byte comparison, far cheaper than parsing and hashing it.
#[derive(Default)]
struct ParsedFiles {
    /// By file name: the text last read, and what it parsed to (`None`: the
    /// name is not a unit name).
    seen: BTreeMap<String, (String, Option<(UnitName, ParsedFile)>)>,
}

impl ParsedFiles {
    /// [`parse_files`] of `files`, parsing only the files whose text changed
    /// since the last call; forgets the files that are gone.
    fn parse(&mut self, files: BTreeMap<String, String>) -> BTreeMap<UnitName, ParsedFile> {
        let mut last = std::mem::take(&mut self.seen);
        for (name, text) in files {
            let parsed = match last.remove(&name) {
                Some((seen, parsed)) if seen == text => parsed,
                _ => parse_file(&name, &text),
            };
            self.seen.insert(name, (text, parsed));
        }
        self.seen
            .values()
            .filter_map(|(_, parsed)| parsed.clone())
            .collect()
    }
}

pub(crate) use crate::errors::error_chain;

#[cfg(test)]
mod tests;
