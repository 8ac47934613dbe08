//! Runs [`Operation`]s on a [`SystemdManager`]: one per unit, concurrently.
//!
//! Each operation runs its unit's tasks in order (unload, load, the reload
//! barrier, stop, start). A failure stops only what depends on it: the later
//! tasks of the same unit (no start after a failed load, no unload after a
//! failed stop), and, when the reload fails, the start of a unit loaded just
//! before it (systemd does not know it yet). Every other unit goes on. Each
//! failure is logged here, once, and recorded in the operation's [`Executed`]
//! list, which the agent folds into its bookkeeping.
//!
//! Why concurrently, and how far:
//! - **Bounded.** At most [`MAX_CONCURRENT`] operations talk to systemd at
//!   once (a semaphore). systemd serves D-Bus calls one at a time, so more
//!   than a few in flight only queue up in PID 1, and the agent's own state
//!   reads (and the publisher's) would wait behind them; a few in flight let
//!   our side (file writes, bookkeeping) overlap with systemd's. 8 keeps the
//!   queue short and still starts 50 units several times faster than one at a
//!   time (BENCHMARKS.md).
//! - **Slow jobs give their permit back.** A start or stop job that has not
//!   ended after [`JOB_PATIENCE`] keeps being waited for without its permit:
//!   the bound paces a burst of fast jobs, and N slow units (a oneshot that
//!   never exits, a stop that takes minutes) do not hold up the rest.
//! - **One reload for many loads.** The daemon-reload is a barrier between an
//!   operation's loads and its starts. [`Reloads`] coalesces: it reloads once
//!   no operation is still writing files (or [`RELOAD_PATIENCE`] after the
//!   first request, so a slow unload never holds up a reload), and every
//!   operation waits for a reload that began after its own files were in
//!   place.
//! - **Cancellable waits.** An operation waits for a job, a permit or a
//!   reload only until its token is cancelled (superseded by a newer
//!   operation for the unit, or shutdown); what it asked of systemd goes on
//!   there (a stop replaces a hanging start job). D-Bus calls and file writes
//!   are never cut in the middle.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use systemd::{JobResult, SystemdManager};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use units::UnitName;

use super::error_chain;
use super::plan::{Operation, Task};
use crate::metrics::TaskOutcome;

/// How many operations talk to systemd at once.
pub const MAX_CONCURRENT: usize = 8;

/// How long a start or stop job holds its permit before it counts as slow
/// and is waited for without one.
pub const JOB_PATIENCE: Duration = Duration::from_secs(2);

/// How long a reload waits for operations still writing their files.
pub const RELOAD_PATIENCE: Duration = Duration::from_secs(1);

/// What became of one task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// It succeeded; for a start, `job` is how systemd's job ended (a unit
    /// that fails to start is systemd's business, reported in its state).
    Done {
        /// The job result of a start or stop.
        #[serde(skip_serializing_if = "Option::is_none")]
        job: Option<JobResult>,
    },
    /// It failed.
    Failed {
        /// The error, with its causes.
        error: String,
    },
    /// It was not attempted because something it depends on failed.
    Skipped,
}

/// One task and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct Executed {
    /// The task.
    #[serde(flatten)]
    pub task: Task,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What a batch did, task by task, in order.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Every task of the batch.
    pub executed: Vec<Executed>,
}

impl Report {
    /// Units with a task that failed or was skipped.
    pub fn failed_units(&self) -> BTreeSet<UnitName> {
        self.executed
            .iter()
            .filter(|e| !matches!(e.outcome, Outcome::Done { .. }))
            .filter_map(|e| e.task.unit().cloned())
            .collect()
    }

    /// Number of tasks that did not succeed.
    pub fn failures(&self) -> usize {
        self.executed
            .iter()
            .filter(|e| !matches!(e.outcome, Outcome::Done { .. }))
            .count()
    }
}

/// What an operation's waits give up on: a newer operation for the unit, or
/// shutdown.
const GAVE_UP: &str = "stopped waiting: superseded by a newer change, or shutting down";

/// What operations share: systemd, the bound and the reload barrier. Cheap to
/// clone.
pub struct Runner<S> {
    /// The local systemd.
    systemd: Arc<S>,
    /// Bounds the operations talking to systemd at once.
    permits: Arc<Semaphore>,
    /// The reload barrier.
    reloads: Arc<Reloads>,
}

impl<S> Clone for Runner<S> {
    fn clone(&self) -> Self {
        Runner {
            systemd: Arc::clone(&self.systemd),
            permits: Arc::clone(&self.permits),
            reloads: Arc::clone(&self.reloads),
        }
    }
}

impl<S: SystemdManager> Runner<S> {
    /// A runner with its own bound and reload barrier.
    pub fn new(systemd: Arc<S>) -> Self {
        Runner {
            systemd,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT)),
            reloads: Arc::new(Reloads::default()),
        }
    }

    /// Registers `op` with the reload barrier; call before spawning
    /// [`Runner::run`], so that a reload waits for the files of every
    /// operation planned with it.
    pub fn prepare(&self, op: &Operation) -> Option<Preparing> {
        op.reload.then(|| self.reloads.enter())
    }

    /// Runs `op` once `after` (the operation it supersedes) has ended, until
    /// its tasks are done or `cancel`. `progress` is called once its content
    /// is in place and it is about to issue its stop or start job.
    pub async fn run(
        self,
        op: Operation,
        preparing: Option<Preparing>,
        after: Option<CancellationToken>,
        cancel: CancellationToken,
        progress: impl FnOnce() + Send,
    ) -> Vec<Executed> {
        let span = info_span!("operation", unit = %op.unit);
        self.run_inner(op, preparing, after, cancel, progress)
            .instrument(span)
            .await
    }

    async fn run_inner(
        self,
        op: Operation,
        mut preparing: Option<Preparing>,
        after: Option<CancellationToken>,
        cancel: CancellationToken,
        progress: impl FnOnce() + Send,
    ) -> Vec<Executed> {
        let mut executed = Vec::with_capacity(op.tasks.len() + 1);
        let mut step = Step {
            runner: &self,
            permit: None,
            cancel: &cancel,
        };
        let mut broken = false;
        if let Some(after) = after {
            tokio::select! {
                () = after.cancelled() => {}
                () = cancel.cancelled() => broken = true,
            }
        }
        let mut loaded = false;
        let mut progress = Some(progress);
        for task in op.tasks {
            let job = matches!(task, Task::Stop { .. } | Task::Start { .. });
            if job && let Some(preparing) = preparing.take() {
                // The barrier: the files are in place (or failed); wait for a
                // reload that began after that.
                step.permit = None;
                let outcome = match self.reloads.reload(preparing, &self.systemd, &cancel).await {
                    Some(Ok(())) => Outcome::Done { job: None },
                    Some(Err(error)) => Outcome::Failed { error },
                    None => Outcome::Failed {
                        error: GAVE_UP.to_owned(),
                    },
                };
                if matches!(outcome, Outcome::Failed { .. }) && loaded {
                    broken = true;
                }
                executed.push(Executed {
                    task: Task::Reload,
                    outcome,
                });
            }
            if broken {
                executed.push(Executed {
                    task,
                    outcome: Outcome::Skipped,
                });
                continue;
            }
            if job && let Some(progress) = progress.take() {
                progress();
            }
            let outcome = step
                .run(&task)
                .instrument(info_span!("task", task = task.verb()))
                .await;
            match outcome {
                Outcome::Failed { .. } => broken = true,
                _ if matches!(task, Task::Load { .. }) => loaded = true,
                _ => {}
            }
            executed.push(Executed { task, outcome });
        }
        if let Some(preparing) = preparing.take() {
            // Only loads and unloads: they still need their reload.
            step.permit = None;
            let outcome = match self.reloads.reload(preparing, &self.systemd, &cancel).await {
                Some(Ok(())) => Outcome::Done { job: None },
                Some(Err(error)) => Outcome::Failed { error },
                None => Outcome::Failed {
                    error: GAVE_UP.to_owned(),
                },
            };
            executed.push(Executed {
                task: Task::Reload,
                outcome,
            });
        }
        record_tasks(executed.iter().filter(|e| !matches!(e.task, Task::Reload)));
        executed
    }
}

/// Records each task in the metrics, by verb and outcome.
fn record_tasks<'a>(executed: impl IntoIterator<Item = &'a Executed>) {
    for e in executed {
        let outcome = match e.outcome {
            Outcome::Done { .. } => TaskOutcome::Done,
            Outcome::Failed { .. } => TaskOutcome::Failed,
            Outcome::Skipped => TaskOutcome::Skipped,
        };
        crate::metrics::agent_task(e.task.verb(), outcome);
    }
}

/// Runs `ops` concurrently (bounded) until they end or `cancel`: the purge's
/// way, and the tests'. The report lists each operation's tasks in turn.
pub async fn run_all<S: SystemdManager>(
    runner: &Runner<S>,
    ops: Vec<Operation>,
    cancel: CancellationToken,
) -> Report {
    let mut set = JoinSet::new();
    let mut preparing: Vec<Option<Preparing>> = ops.iter().map(|op| runner.prepare(op)).collect();
    for (i, (op, prep)) in ops.into_iter().zip(preparing.drain(..)).enumerate() {
        let runner = runner.clone();
        let cancel = cancel.clone();
        set.spawn(async move { (i, runner.run(op, prep, None, cancel, || {}).await) });
    }
    let mut results = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            Err(e) => warn!(error = %e, "an operation panicked"),
        }
    }
    results.sort_by_key(|(i, _)| *i);
    Report {
        executed: results.into_iter().flat_map(|(_, e)| e).collect(),
    }
}

/// One operation's hold on the bound, and its cancellation.
struct Step<'a, S> {
    /// The runner.
    runner: &'a Runner<S>,
    /// The permit, while the operation talks to systemd.
    permit: Option<OwnedSemaphorePermit>,
    /// Ends the operation's waits.
    cancel: &'a CancellationToken,
}

impl<S: SystemdManager> Step<'_, S> {
    /// Takes a permit unless it holds one; false if cancelled first.
    async fn permit(&mut self) -> bool {
        if self.permit.is_some() {
            return true;
        }
        tokio::select! {
            permit = Arc::clone(&self.runner.permits).acquire_owned() => {
                // The semaphore is never closed.
                self.permit = permit.ok();
                true
            }
            () = self.cancel.cancelled() => false,
        }
    }

    /// Waits for a job: with the permit for [`JOB_PATIENCE`], then without;
    /// `None` if cancelled first.
    async fn job<T>(&mut self, job: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(job);
        tokio::select! {
            result = &mut job => return Some(result),
            () = tokio::time::sleep(JOB_PATIENCE) => {
                debug!("slow job: waiting for it without a permit");
                self.permit = None;
            }
            () = self.cancel.cancelled() => return None,
        }
        tokio::select! {
            result = job => Some(result),
            () = self.cancel.cancelled() => None,
        }
    }

    /// Runs one task, logging what it did or why it failed.
    async fn run(&mut self, task: &Task) -> Outcome {
        let result = if self.permit().await {
            self.run_task(task).await
        } else {
            Err(GAVE_UP.to_owned())
        };
        match result {
            Ok(job) => {
                info!("done");
                Outcome::Done { job }
            }
            Err(error) => {
                warn!(%error, "failed");
                Outcome::Failed { error }
            }
        }
    }

    async fn run_task(&mut self, task: &Task) -> Result<Option<JobResult>, String> {
        let systemd = Arc::clone(&self.runner.systemd);
        match task {
            Task::Unload { name } => self.unload(name).await,
            Task::Load { name, file } => systemd
                .load(name.as_str(), file)
                .await
                .map(|()| None)
                .map_err(|e| error_chain(&e)),
            // Operations hand the reload to `Reloads`.
            Task::Reload => Ok(None),
            Task::Stop { name } => match self.job(systemd.stop(name.as_str())).await {
                None => Err(GAVE_UP.to_owned()),
                Some(Ok(JobResult::Done)) => Ok(Some(JobResult::Done)),
                // A unit systemd does not know is not running.
                Some(Err(e)) if e.is_no_such_unit() => Ok(None),
                Some(Ok(other)) => Err(format!("stop job ended {other}")),
                Some(Err(e)) => Err(error_chain(&e)),
            },
            Task::Start { name } => match self.job(systemd.start(name.as_str())).await {
                None => Err(GAVE_UP.to_owned()),
                Some(Ok(JobResult::Done)) => Ok(Some(JobResult::Done)),
                Some(Ok(other)) => {
                    warn!(result = %other, "start job did not succeed");
                    Ok(Some(other))
                }
                Some(Err(e)) => Err(error_chain(&e)),
            },
        }
    }

    /// Stops the unit and, only once it is stopped, disables it and removes
    /// its file (so a unit that would not stop keeps its file and is retried).
    async fn unload(&mut self, name: &UnitName) -> Result<Option<JobResult>, String> {
        let systemd = Arc::clone(&self.runner.systemd);
        match self.job(systemd.stop(name.as_str())).await {
            None => return Err(GAVE_UP.to_owned()),
            Some(Ok(JobResult::Done)) => {}
            Some(Err(e)) if e.is_no_such_unit() => {}
            Some(Ok(other)) => {
                return Err(format!("stop job ended {other}; keeping the unit loaded"));
            }
            Some(Err(e)) => return Err(format!("stopping before unload: {}", error_chain(&e))),
        }
        if !self.permit().await {
            return Err(GAVE_UP.to_owned());
        }
        systemd
            .unload(name.as_str())
            .await
            .map(|()| None)
            .map_err(|e| error_chain(&e))
    }
}

/// The reload barrier: coalesces the reloads that operations ask for.
#[derive(Default)]
pub struct Reloads {
    /// Who is where.
    state: Mutex<ReloadState>,
    /// Wakes waiters when a reload ends or an operation is done preparing.
    changed: Notify,
}

/// The barrier's bookkeeping; a std mutex, never held across an await.
#[derive(Default)]
struct ReloadState {
    /// Operations still writing their files.
    preparing: usize,
    /// When the oldest request not yet served by a started reload came.
    requested: Option<Instant>,
    /// Whether a reload is running.
    running: bool,
    /// Reloads started so far (the number of the latest).
    started: u64,
    /// The number of the latest reload that ended.
    finished: u64,
    /// Why it failed, if it did.
    failure: Option<String>,
}

/// An operation registered with [`Reloads`] that has not asked for its
/// reload yet; dropping it unregisters it.
pub struct Preparing {
    /// The barrier.
    reloads: Arc<Reloads>,
}

impl Drop for Preparing {
    fn drop(&mut self) {
        let mut state = self.reloads.lock();
        state.preparing = state.preparing.saturating_sub(1);
        drop(state);
        self.reloads.changed.notify_waiters();
    }
}

impl Reloads {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadState> {
        // No section below panics while holding the lock; recover the data if one did.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers an operation that will ask for a reload.
    fn enter(self: &Arc<Self>) -> Preparing {
        self.lock().preparing += 1;
        Preparing {
            reloads: Arc::clone(self),
        }
    }

    /// The operation's files are in place: waits for a reload that began
    /// after now and returns how it went; `None` if cancelled first.
    async fn reload<S: SystemdManager>(
        self: &Arc<Self>,
        preparing: Preparing,
        systemd: &Arc<S>,
        cancel: &CancellationToken,
    ) -> Option<Result<(), String>> {
        let ticket = {
            let mut state = self.lock();
            state.requested.get_or_insert_with(Instant::now);
            state.started + 1
        };
        // Unregisters from `preparing` and wakes the others.
        drop(preparing);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = {
                let mut state = self.lock();
                if state.finished >= ticket {
                    return Some(state.failure.clone().map_or(Ok(()), Err));
                }
                let due = state
                    .requested
                    .is_some_and(|at| state.preparing == 0 || at.elapsed() >= RELOAD_PATIENCE);
                if !state.running && due {
                    state.running = true;
                    state.started += 1;
                    state.requested = None;
                    // Its own task: a waiter that gives up does not cut it short.
                    tokio::spawn(Arc::clone(self).run_reload(state.started, Arc::clone(systemd)));
                }
                state.requested.map(|at| at + RELOAD_PATIENCE)
            };
            tokio::select! {
                () = &mut changed => {}
                () = sleep_until(deadline) => {}
                () = cancel.cancelled() => return None,
            }
        }
    }

    /// Runs reload number `number` and tells the waiters.
    async fn run_reload<S: SystemdManager>(self: Arc<Self>, number: u64, systemd: Arc<S>) {
        let outcome = match systemd.reload().await {
            Ok(()) => {
                info!("reloaded systemd");
                Outcome::Done { job: None }
            }
            Err(e) => {
                let error = error_chain(&e);
                warn!(%error, "daemon-reload failed");
                Outcome::Failed { error }
            }
        };
        let failure = match &outcome {
            Outcome::Failed { error } => Some(error.clone()),
            _ => None,
        };
        record_tasks([&Executed {
            task: Task::Reload,
            outcome,
        }]);
        let mut state = self.lock();
        state.running = false;
        state.finished = number;
        state.failure = failure;
        drop(state);
        self.changed.notify_waiters();
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tests::{name, service as file};
    use std::collections::BTreeMap;
    use systemd::{FakeFailure, FakeManager, FakeMethod};
    use units::UnitFile;

    fn load(n: &str) -> Task {
        Task::Load {
            name: name(n),
            file: file("/bin/sleep 1000"),
        }
    }

    /// A oneshot whose start never ends.
    fn hanging() -> UnitFile {
        UnitFile::from_options(vec![
            units::UnitOption::new("Service", "Type", "oneshot"),
            units::UnitOption::new("Service", "ExecStart", "/bin/sleep infinity"),
        ])
    }

    /// A service whose stop takes 300 s.
    fn slow_stop() -> UnitFile {
        UnitFile::from_options(vec![
            units::UnitOption::new("Service", "ExecStart", "/bin/sleep 1000"),
            units::UnitOption::new("Service", "ExecStop", "/bin/sleep 300"),
        ])
    }

    fn start(n: &str) -> Task {
        Task::Start { name: name(n) }
    }

    /// One unit's operation (the bookkeeping fields do not matter here).
    fn op(unit: &str, tasks: Vec<Task>) -> Operation {
        Operation {
            unit: name(unit),
            reload: tasks
                .iter()
                .any(|t| matches!(t, Task::Load { .. } | Task::Unload { .. })),
            tasks,
            goal: None,
            done: None,
            failed: None,
        }
    }

    /// Cuts a batch (as `plan` orders it) into one operation per unit and
    /// runs them all.
    async fn execute(fake: &FakeManager, tasks: Vec<Task>) -> Report {
        let mut by_unit: BTreeMap<UnitName, Vec<Task>> = BTreeMap::new();
        for task in tasks {
            if let Some(unit) = task.unit().cloned() {
                by_unit.entry(unit).or_default().push(task);
            }
        }
        let ops = by_unit
            .into_iter()
            .map(|(unit, tasks)| op(unit.as_str(), tasks))
            .collect();
        let runner = Runner::new(Arc::new(fake.clone()));
        run_all(&runner, ops, CancellationToken::new()).await
    }

    fn outcomes(report: &Report) -> Vec<(&'static str, Option<String>, &'static str)> {
        report
            .executed
            .iter()
            .map(|e| {
                let o = match e.outcome {
                    Outcome::Done { .. } => "done",
                    Outcome::Failed { .. } => "failed",
                    Outcome::Skipped => "skipped",
                };
                (e.task.verb(), e.task.unit().map(ToString::to_string), o)
            })
            .collect()
    }

    #[tokio::test]
    async fn loads_reloads_and_starts() {
        let fake = FakeManager::new();
        let tasks = vec![
            load("a.service"),
            load("b.service"),
            Task::Reload,
            start("a.service"),
            start("b.service"),
        ];
        let report = execute(&fake, tasks).await;
        assert_eq!(report.failures(), 0);
        // The loads of one batch share one reload.
        assert_eq!(fake.reload_count(), 1);
        assert_eq!(fake.status("a.service").active_state, "active");
        assert_eq!(fake.status("b.service").active_state, "active");
    }

    #[tokio::test]
    async fn a_failed_load_skips_only_that_units_start() {
        let fake = FakeManager::new();
        fake.fail_next(FakeMethod::LinkUnitFiles, Some("a.service"));
        let tasks = vec![
            load("a.service"),
            load("b.service"),
            Task::Reload,
            start("a.service"),
            start("b.service"),
        ];
        let report = execute(&fake, tasks).await;
        assert_eq!(
            outcomes(&report),
            vec![
                ("load", Some("a.service".into()), "failed"),
                ("reload", None, "done"),
                ("start", Some("a.service".into()), "skipped"),
                ("load", Some("b.service".into()), "done"),
                ("reload", None, "done"),
                ("start", Some("b.service".into()), "done"),
            ]
        );
        assert_eq!(report.failed_units(), BTreeSet::from([name("a.service")]));
        assert_eq!(fake.status("b.service").active_state, "active");
    }

    #[tokio::test]
    async fn a_failed_reload_skips_the_starts_of_new_units() {
        let fake = FakeManager::new();
        execute(&fake, vec![load("old.service"), Task::Reload]).await;
        fake.fail_next_with(FakeMethod::Reload, None, FakeFailure::Unavailable);
        let tasks = vec![
            load("new.service"),
            Task::Reload,
            start("new.service"),
            start("old.service"),
        ];
        let report = execute(&fake, tasks).await;
        assert_eq!(
            outcomes(&report),
            vec![
                ("load", Some("new.service".into()), "done"),
                ("reload", None, "failed"),
                ("start", Some("new.service".into()), "skipped"),
                ("start", Some("old.service".into()), "done"),
            ]
        );
    }

    #[tokio::test]
    async fn unload_stops_first_and_keeps_the_file_if_the_stop_fails() {
        let fake = FakeManager::new();
        execute(
            &fake,
            vec![load("a.service"), Task::Reload, start("a.service")],
        )
        .await;
        fake.fail_next_with(
            FakeMethod::StopUnit,
            Some("a.service"),
            FakeFailure::Timeout,
        );
        let unload = || {
            vec![
                Task::Unload {
                    name: name("a.service"),
                },
                Task::Reload,
            ]
        };
        let report = execute(&fake, unload()).await;
        assert_eq!(report.failures(), 1);
        assert!(fake.file("a.service").is_some());
        assert_eq!(fake.status("a.service").active_state, "active");

        let report = execute(&fake, unload()).await;
        assert_eq!(report.failures(), 0);
        assert!(fake.file("a.service").is_none());
        assert_eq!(fake.status("a.service").active_state, "inactive");
    }

    #[tokio::test]
    async fn unloading_a_unit_systemd_does_not_know_is_fine() {
        let fake = FakeManager::new();
        fake.put_file("a.service", "[Service]\nExecStart=/bin/true\n");
        let report = execute(
            &fake,
            vec![
                Task::Unload {
                    name: name("a.service"),
                },
                Task::Reload,
            ],
        )
        .await;
        assert_eq!(report.failures(), 0, "{report:?}");
        assert!(fake.file("a.service").is_none());
    }

    #[tokio::test]
    async fn a_unit_that_fails_to_start_is_done_with_its_job_result() {
        let fake = FakeManager::new();
        let tasks = vec![
            Task::Load {
                name: name("bad.service"),
                file: UnitFile::from_options(vec![
                    units::UnitOption::new("Service", "Type", "oneshot"),
                    units::UnitOption::new("Service", "ExecStart", "/bin/false"),
                ]),
            },
            Task::Reload,
            start("bad.service"),
        ];
        let report = execute(&fake, tasks).await;
        assert_eq!(report.failures(), 0);
        assert_eq!(
            report.executed[2].outcome,
            Outcome::Done {
                job: Some(JobResult::Failed)
            }
        );
    }

    /// More hanging starts than permits: the other units are still started
    /// (the hanging ones give their permits back), and the hanging ones end
    /// only when cancelled.
    #[tokio::test(start_paused = true)]
    async fn hanging_starts_do_not_hold_up_other_units() {
        let fake = FakeManager::new();
        let runner = Runner::new(Arc::new(fake.clone()));
        let cancel = CancellationToken::new();
        let mut hung = JoinSet::new();
        for i in 0..=MAX_CONCURRENT {
            let unit = format!("hang-{i}.service");
            let op = op(
                &unit,
                vec![
                    Task::Load {
                        name: name(&unit),
                        file: hanging(),
                    },
                    start(&unit),
                ],
            );
            let prep = runner.prepare(&op);
            hung.spawn(runner.clone().run(op, prep, None, cancel.clone(), || {}));
        }
        let others: Vec<Operation> = (0..20)
            .map(|i| {
                let unit = format!("other-{i}.service");
                op(&unit, vec![load(&unit), start(&unit)])
            })
            .collect();
        let report = tokio::time::timeout(
            Duration::from_secs(60),
            run_all(&runner, others, CancellationToken::new()),
        )
        .await
        .expect("other units are not held up by hanging starts");
        assert_eq!(report.failures(), 0, "{report:?}");
        for i in 0..20 {
            assert_eq!(
                fake.status(&format!("other-{i}.service")).active_state,
                "active"
            );
        }
        assert_eq!(fake.status("hang-0.service").active_state, "activating");
        assert_eq!(hung.len(), MAX_CONCURRENT + 1);
        cancel.cancel();
        while let Some(executed) = hung.join_next().await {
            let executed = executed.expect("no operation panics");
            assert!(
                matches!(&executed.last().expect("tasks ran").outcome, Outcome::Failed { error } if error == GAVE_UP),
                "{executed:?}"
            );
        }
        // The jobs go on in systemd; only the waits ended.
        assert_eq!(fake.status("hang-0.service").active_state, "activating");
    }

    /// A stop supersedes a hanging start: the old operation stops waiting,
    /// the new one runs after it, and systemd replaces the job.
    #[tokio::test(start_paused = true)]
    async fn a_stop_supersedes_a_hanging_start() {
        let fake = FakeManager::new();
        let runner = Runner::new(Arc::new(fake.clone()));
        let unit = "hang.service";
        let first = op(
            unit,
            vec![
                Task::Load {
                    name: name(unit),
                    file: hanging(),
                },
                start(unit),
            ],
        );
        let (old_stop, old_ended) = (CancellationToken::new(), CancellationToken::new());
        let prep = runner.prepare(&first);
        let old = tokio::spawn({
            let (runner, old_stop, old_ended) =
                (runner.clone(), old_stop.clone(), old_ended.clone());
            async move {
                let _ended = old_ended.drop_guard();
                runner.run(first, prep, None, old_stop, || {}).await
            }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(fake.status(unit).active_state, "activating");
        old_stop.cancel();
        let second = op(unit, vec![Task::Stop { name: name(unit) }]);
        let executed = runner
            .clone()
            .run(
                second,
                None,
                Some(old_ended),
                CancellationToken::new(),
                || {},
            )
            .await;
        assert_eq!(
            executed.iter().map(|e| &e.outcome).collect::<Vec<_>>(),
            vec![&Outcome::Done {
                job: Some(JobResult::Done)
            }]
        );
        let old = old.await.expect("no operation panics");
        assert!(
            matches!(&old[2].outcome, Outcome::Failed { error } if error == GAVE_UP),
            "{old:?}"
        );
        assert_eq!(fake.status(unit).active_state, "failed");
    }

    /// A unit whose stop takes minutes is unloaded in its own time; the loads
    /// planned with it get their reload and start meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_slow_unload_does_not_hold_up_the_reload_of_others() {
        let fake = FakeManager::new();
        fake.load("slow.service", &slow_stop()).await.expect("load");
        fake.reload().await.expect("reload");
        fake.start("slow.service").await.expect("start");
        let runner = Runner::new(Arc::new(fake.clone()));
        let slow = op(
            "slow.service",
            vec![Task::Unload {
                name: name("slow.service"),
            }],
        );
        let fast = op("a.service", vec![load("a.service"), start("a.service")]);
        let (slow_prep, fast_prep) = (runner.prepare(&slow), runner.prepare(&fast));
        let began = Instant::now();
        let slow = tokio::spawn(runner.clone().run(
            slow,
            slow_prep,
            None,
            CancellationToken::new(),
            || {},
        ));
        let executed = runner
            .clone()
            .run(fast, fast_prep, None, CancellationToken::new(), || {})
            .await;
        assert!(
            executed
                .iter()
                .all(|e| matches!(e.outcome, Outcome::Done { .. })),
            "{executed:?}"
        );
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "took {:?}",
            began.elapsed()
        );
        assert_eq!(fake.status("a.service").active_state, "active");
        assert_eq!(fake.status("slow.service").active_state, "deactivating");
        let executed = slow.await.expect("no operation panics");
        assert!(
            executed
                .iter()
                .all(|e| matches!(e.outcome, Outcome::Done { .. })),
            "{executed:?}"
        );
        assert!(began.elapsed() >= Duration::from_secs(300));
        assert!(fake.file("slow.service").is_none());
        assert_eq!(fake.reload_count(), 3);
    }
}
