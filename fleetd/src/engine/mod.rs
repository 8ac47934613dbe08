//! The engine: decides which machine runs which unit. Every fleetd runs one;
//! only the elected leader acts.
//!
//! Layout:
//! - [`constraints`]: can a unit run on a machine (`[X-Fleet]`), pure.
//! - [`schedule`]: [`decide`] — from a [`ClusterView`] to schedule changes,
//!   pure and synchronous.
//! - [`view`]: the caches' decoders and the assembly of a view from their
//!   snapshots.
//! - `gauges.rs`: the cluster-wide gauges of `/metrics`, from the
//!   leader's caches.
//! - [`leader`]: leader election — the follower loop, the leadership
//!   lease, release on shutdown.
//! - this file: a leadership term — caches, passes, writes.
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
//! exponentially (capped). A fifth cache, of `states/`, is kept for the
//! term only for the cluster gauges of `/metrics` (`gauges.rs`); passes
//! neither read it nor wake on it.
//!
//! **Failover.** When the leader's machine is lost (cut off, powered down),
//! its presence expires within `agent_ttl` and its units must move, but only
//! a leader moves them. In the original the leadership lease lived 5 ×
//! `engine_reconcile_interval` (fleet-reference.md §5.1: 10 s by default),
//! renewed every tick, so nothing moved until 8–10 s after the loss plus up
//! to a tick, whatever `agent_ttl` was (3 s in its functional tests). Here
//! the lease lives 5 × the interval but at most ⅔ of this machine's
//! `agent_ttl` ([`EngineConfig::lease_ttl`] says why ⅔; at the defaults it
//! is still 10 s), so it has expired by the time the presence does. A
//! follower then acts at once: it watches the leader key and competes as
//! soon as the expiry deletes it (no tick awaited); its term lists its caches
//! afresh, so machines that expired while no one led are already absent; and
//! the first pass runs as soon as the last cache is listed (on real
//! machines, a takeover after the lost machine's presence had expired wrote
//! its decisions 20–60 ms after it, BENCHMARKS.md). A lost leader's units thus run elsewhere within
//! `agent_ttl` plus a pass, as any lost machine's. The bound is each
//! machine's own, since `agent_ttl` is per-fleetd config: a leader with a
//! longer `agent_ttl` holds a longer lease, as its presence outlives it
//! longer. The price is a keep-alive every TTL/3, from the leader alone.
//! With `disable_watches` the caches poll instead of watching, so the
//! follower sees the vacancy, and the new leader the expired presence, each
//! up to one interval late.
//!
//! **Metrics.** Each round (a pass, or one skipped as unchanged), the
//! decisions tried and written, and why units were moved or left unplaced
//! are mapped here to [`crate::metrics`]' plain labels.

pub(crate) mod constraints;
mod gauges;
mod leader;
pub(crate) mod schedule;
pub(crate) mod view;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};
use units::UnitName;

use leader::TermEnd;
pub use schedule::{
    Blocked, ClusterView, Decision, MachineView, Plan, Reason, UnitView, decide, plan,
};
pub use view::{CachedEntry, CachedUnit, Overlay, Snapshots, build_view, decode_unit};

use crate::config::Config;
use crate::errors::error_chain;
use crate::metrics::{self, EngineTask, ReconcileFailure};
use crate::registry::cache::{CacheMode, Reflector, Store};
use crate::registry::{self, Fence, Kv, Registry, Revision, ScheduleChange};
use crate::retry;
use crate::schema::{MachineId, MachineRecord};

/// The engine's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// `engine_reconcile_interval`: the tick of passes and leadership
    /// attempts; the lease lives 5 times as long, unless that is more than
    /// ⅔ of `agent_ttl`.
    pub reconcile_interval: Duration,
    /// `agent_ttl`: how long this machine's presence outlives it. The
    /// leadership lease is kept shorter ([`Self::lease_ttl`]), so when the
    /// leader's machine is lost another engine leads by the time its
    /// presence expires.
    pub agent_ttl: Duration,
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
            agent_ttl: Duration::from_secs(30),
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
            agent_ttl: config.agent_ttl,
            disabled: config.disable_engine,
            cache: CacheMode::from_disable_watches(
                config.disable_watches,
                config.engine_reconcile_interval,
            ),
        }
    }

    /// TTL of the leadership lease: 5 × the interval (the original's rule),
    /// but at most ⅔ of `agent_ttl`. The heart refreshes the machine's
    /// presence every `agent_ttl`/3, so a lost machine's presence expires
    /// between ⅔ and all of `agent_ttl` after the loss: a lease of at most ⅔
    /// has expired by then whatever the phase of either refresh, and a new
    /// leader is in place when the lost leader's presence goes. This is the
    /// only place that rule is written.
    pub fn lease_ttl(&self) -> Duration {
        self.reconcile_interval
            .saturating_mul(5)
            .min(self.agent_ttl.saturating_mul(2) / 3)
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
    /// The caches of the term in progress, for the cluster gauges.
    term: gauges::TermCaches,
}

impl<K: Kv> Clone for Engine<K> {
    fn clone(&self) -> Self {
        Engine {
            registry: self.registry.clone(),
            machine: self.machine.clone(),
            config: self.config.clone(),
            state: Arc::clone(&self.state),
            term: Arc::clone(&self.term),
        }
    }
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
            term: gauges::TermCaches::default(),
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

    /// Publishes (or, with `None`, withdraws) the caches of a term for the
    /// cluster gauges.
    fn set_term_caches(&self, caches: Option<gauges::Caches>) {
        *self
            .term
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = caches;
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
        metrics::engine_leader_started(SystemTime::now());
        let keys = self.registry.keys().clone();
        let (units_r, units) = self.cache(keys.units_prefix(), view::decode_unit(keys.clone()));
        let (schedule_r, schedule) =
            self.cache(keys.schedule_prefix(), view::decode_entry(keys.clone()));
        let (machines_r, machines) =
            self.cache(keys.machines_prefix(), view::decode_machine(keys.clone()));
        let (metadata_r, metadata) =
            self.cache(keys.metadata_prefix(), view::decode_metadata(keys.clone()));
        // Not an input of the passes: only for the cluster gauges.
        let (states_r, states) =
            self.cache(keys.states_prefix(), gauges::decode_state(keys.clone()));
        let stores = Stores {
            units,
            schedule,
            machines,
            metadata,
        };
        self.set_term_caches(Some(gauges::Caches {
            units: stores.units.clone(),
            schedule: stores.schedule.clone(),
            machines: stores.machines.clone(),
            states,
        }));
        let caches = async {
            tokio::join!(
                units_r.run(term.clone()),
                schedule_r.run(term.clone()),
                machines_r.run(term.clone()),
                metadata_r.run(term.clone()),
                states_r.run(term.clone()),
            );
        };
        let end = tokio::select! {
            why = self.hold(fence, &term) => Ok(TermEnd::Lost(why)),
            end = self.reconcile(fence, &stores, &term) => end,
            () = caches => Ok(TermEnd::Lost("caches stopped")),
        };
        term.cancel();
        self.set_term_caches(None);
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
            let round = Instant::now();
            overlay.trim(stores.schedule.revision());
            let inputs = (stores.revisions(), overlay.len());
            if clean == Some(inputs) {
                debug!("nothing changed since the last pass");
                metrics::engine_round(round.elapsed());
                continue;
            }
            passes += 1;
            let span = info_span!("reconcile", pass = passes);
            let outcome = self
                .pass(fence, stores, &overlay, &mut unschedulable)
                .instrument(span)
                .await?;
            metrics::engine_round(round.elapsed());
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
        metrics::engine_pass(took, plan.unschedulable.len());
        record_failures(&plan);
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
                    record_tasks(&plan.decisions, true);
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
                    record_tasks(&plan.decisions, false);
                    report.applied = false;
                    PassOutcome::Deposed
                }
                Err(e) => {
                    record_tasks(&plan.decisions, false);
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
}

/// Records, in the original's terms, why units are moved or left unplaced
/// by this plan.
fn record_failures(plan: &Plan) {
    let (mut away, mut run) = (0, 0);
    for d in &plan.decisions {
        match d.reason {
            Reason::MachineGone => away += 1,
            Reason::CannotRun(_) => run += 1,
            _ => {}
        }
    }
    let unplaced = plan
        .unschedulable
        .values()
        .filter(|b| !matches!(b, Blocked::Template))
        .count();
    metrics::engine_reconcile_failures(ReconcileFailure::MachineAway, away);
    metrics::engine_reconcile_failures(ReconcileFailure::Run, run);
    metrics::engine_reconcile_failures(ReconcileFailure::Schedule, unplaced as u64);
}

/// Records the decisions of a write, by kind, and whether it succeeded.
fn record_tasks(decisions: &[Decision], written: bool) {
    let put = decisions
        .iter()
        .filter(|d| matches!(d.change, ScheduleChange::Put { .. }))
        .count() as u64;
    let removed = decisions.len() as u64 - put;
    metrics::engine_tasks(EngineTask::Schedule, put, written);
    metrics::engine_tasks(EngineTask::Unschedule, removed, written);
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
