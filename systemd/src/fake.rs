//! [`FakeManager`]: an in-memory systemd for component tests.
//!
//! It models what the agent can observe through [`SystemdManager`]:
//! - the units directory (name → text), links and runtime enablement;
//! - systemd's in-memory unit definitions, which change only on [`SystemdManager::reload`]
//!   or when systemd loads a linked unit it has not seen yet (as the real one does on first
//!   reference);
//! - active and sub states, main PIDs, and the change stream.
//!
//! It runs nothing. Starting a service succeeds and leaves it `active`/`running`, except:
//! a service whose `ExecStart` program is `false` fails (`Type=oneshot`: the job fails; any
//! other type: the job is done and the unit ends up failed), and a `Type=oneshot` service
//! ends `inactive`/`dead` (`active`/`exited` with `RemainAfterExit=yes`). States jump to
//! their final value, with two exceptions that model slow and hanging units through `sleep`:
//! a `Type=oneshot` service whose `ExecStart` is `sleep N` stays `activating`/`start` for N
//! seconds (`sleep infinity`: until it is stopped, which leaves it `failed`, as systemd's kill
//! does), and a service whose `ExecStop` is `sleep N` stays `deactivating`/`stop` for N seconds.
//! Their jobs take that long (on tokio time, so paused-time tests can run them), and jobs merge
//! and replace each other per unit as systemd's `replace` mode does: a second start (stop) joins
//! the running start (stop) job; a stop replaces a start job, whose waiters get `canceled`; a
//! start replaces a stop job and runs once the unit is down.
//!
//! Failures are scripted with [`FakeManager::fail_next`] and [`FakeManager::fail_next_with`];
//! every call is recorded in [`FakeManager::calls`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::coalesce::{Coalescer, forward};
use crate::files::check_name;
use crate::{
    BusError, Error, JobResult, SUBSCRIBE_CAPACITY, SystemdManager, UnitFilter, UnitStateChange,
    UnitStatus,
};

/// The operations of [`FakeManager`] that can be scripted to fail, named after the systemd
/// calls (or file operations) they stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FakeMethod {
    /// Writing the unit file in `load`.
    WriteFile,
    LinkUnitFiles,
    EnableUnitFiles,
    DisableUnitFiles,
    ResetFailedUnit,
    /// Removing the unit file in `unload`.
    RemoveFile,
    Reload,
    StartUnit,
    StopUnit,
    ListUnitsByNames,
    /// Listing the units directory in `unit_files`.
    ListFiles,
    MainPid,
    Subscribe,
}

impl FakeMethod {
    fn name(self) -> &'static str {
        match self {
            FakeMethod::WriteFile => "write",
            FakeMethod::LinkUnitFiles => "LinkUnitFiles",
            FakeMethod::EnableUnitFiles => "EnableUnitFiles",
            FakeMethod::DisableUnitFiles => "DisableUnitFiles",
            FakeMethod::ResetFailedUnit => "ResetFailedUnit",
            FakeMethod::RemoveFile => "remove",
            FakeMethod::Reload => "Reload",
            FakeMethod::StartUnit => "StartUnit",
            FakeMethod::StopUnit => "StopUnit",
            FakeMethod::ListUnitsByNames => "ListUnitsByNames",
            FakeMethod::ListFiles => "list",
            FakeMethod::MainPid => "MainPID",
            FakeMethod::Subscribe => "Subscribe",
        }
    }
}

/// How a scripted call fails.
#[derive(Clone, Debug)]
pub enum FakeFailure {
    /// systemd refuses the call with this D-Bus error ([`Error::Method`]; for file
    /// operations, an [`Error::Io`]).
    Method(BusError),
    /// The bus is gone ([`Error::Unavailable`]).
    Unavailable,
    /// systemd does not answer in time ([`Error::Timeout`]).
    Timeout,
    /// `StartUnit`/`StopUnit` only: the job finishes with this result. `Failed` on a start
    /// also leaves the unit `failed`.
    Job(JobResult),
}

/// An in-memory systemd. Cheap to clone: clones share the same state.
#[derive(Clone, Default)]
pub struct FakeManager {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// The units directory.
    files: BTreeMap<String, String>,
    linked: BTreeSet<String>,
    enabled: BTreeSet<String>,
    /// systemd's loaded definitions (unit text), as of the last reload or first reference.
    defs: BTreeMap<String, String>,
    /// Units that are not inactive/dead.
    runtime: BTreeMap<String, Runtime>,
    reloads: u64,
    last_pid: u32,
    failures: Vec<(FakeMethod, Option<String>, FakeFailure)>,
    calls: Vec<(FakeMethod, Option<String>)>,
    subscribers: Vec<(UnitFilter, Arc<Coalescer<Option<UnitStatus>>>)>,
    /// Jobs that take time (see the module docs), at most one per unit as in systemd.
    jobs: BTreeMap<String, Job>,
    /// The transition each unit is in (`activating` or `deactivating` on a timer), by a
    /// number that tells a stale timer from the current one.
    timers: BTreeMap<String, u64>,
    /// The last timer number handed out.
    last_timer: u64,
}

/// A job that has not finished yet.
struct Job {
    /// What it does; a start that replaced a stop waits for the unit to be down.
    kind: JobKind,
    /// The callers waiting for its result.
    waiters: Vec<oneshot::Sender<JobResult>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JobKind {
    Start,
    Stop,
}

impl Job {
    fn finish(self, result: &JobResult) {
        for w in self.waiters {
            // A caller that stopped waiting is fine: the job ran anyway.
            let _ = w.send(result.clone());
        }
    }
}

/// How long a `sleep` in `ExecStart`/`ExecStop` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sleep {
    For(Duration),
    Forever,
}

/// What a start or stop call does next: answer now, or wait for the job.
enum Begun {
    Now(JobResult),
    Wait(oneshot::Receiver<JobResult>),
}

#[derive(Clone, Debug)]
struct Runtime {
    active: String,
    sub: String,
    main_pid: u32,
}

const UNITS_DIR: &str = "/run/fleet/units";

impl State {
    /// Records the call and returns the failure scripted for it, if any.
    fn enter(&mut self, method: FakeMethod, unit: Option<&str>) -> Option<FakeFailure> {
        self.calls.push((method, unit.map(str::to_owned)));
        let pos = self
            .failures
            .iter()
            .position(|(m, u, _)| *m == method && (u.is_none() || u.as_deref() == unit))?;
        Some(self.failures.remove(pos).2)
    }

    /// [`State::enter`] for a method that queues a job on `name`: a scripted
    /// job result is for the job to end with; any other scripted failure is
    /// the call's.
    fn enter_job(&mut self, method: FakeMethod, name: &str) -> Result<Option<JobResult>, Error> {
        match self.enter(method, Some(name)) {
            Some(FakeFailure::Job(result)) => Ok(Some(result)),
            Some(f) => Err(fail(method, Some(name), f)),
            None => Ok(None),
        }
    }

    /// systemd loads a linked unit on first reference, as the real one does.
    fn touch(&mut self, name: &str) {
        if !self.defs.contains_key(name)
            && self.linked.contains(name)
            && let Some(text) = self.files.get(name)
        {
            self.defs.insert(name.to_owned(), text.clone());
        }
    }

    fn status(&self, name: &str) -> UnitStatus {
        let load = if self.defs.contains_key(name) {
            "loaded"
        } else {
            "not-found"
        };
        match self.runtime.get(name) {
            Some(r) => UnitStatus::new(load, &r.active, &r.sub),
            None => UnitStatus::new(load, "inactive", "dead"),
        }
    }

    fn emit(&mut self, name: &str, status: Option<UnitStatus>) {
        self.subscribers.retain(|(_, q)| !q.is_closed());
        for (filter, queue) in &self.subscribers {
            if filter.matches(name) {
                queue.push(name.to_owned(), status.clone());
            }
        }
    }

    fn set_runtime(&mut self, name: &str, active: &str, sub: &str, main_pid: u32) {
        if active == "inactive" {
            self.runtime.remove(name);
        } else {
            self.runtime.insert(
                name.to_owned(),
                Runtime {
                    active: active.to_owned(),
                    sub: sub.to_owned(),
                    main_pid,
                },
            );
        }
        let status = self.status(name);
        self.emit(name, Some(status));
    }

    fn next_pid(&mut self) -> u32 {
        self.last_pid = self.last_pid.max(1000) + 1;
        self.last_pid
    }
}

fn fail(method: FakeMethod, unit: Option<&str>, failure: FakeFailure) -> Error {
    let unit = unit.map(str::to_owned);
    match failure {
        FakeFailure::Method(source) => match method {
            FakeMethod::WriteFile | FakeMethod::RemoveFile | FakeMethod::ListFiles => Error::Io {
                action: method.name(),
                path: PathBuf::from(UNITS_DIR).join(unit.unwrap_or_default()),
                source: std::io::Error::other(source),
            },
            _ => Error::Method {
                method: method.name(),
                unit,
                source,
            },
        },
        FakeFailure::Unavailable => Error::Unavailable {
            address: "the fake systemd".to_owned(),
            source: "injected failure".into(),
        },
        FakeFailure::Timeout | FakeFailure::Job(_) => Error::Timeout {
            method: method.name(),
            unit,
            after: std::time::Duration::ZERO,
        },
    }
}

fn no_such_unit(method: FakeMethod, name: &str, message: String) -> Error {
    Error::Method {
        method: method.name(),
        unit: Some(name.to_owned()),
        source: BusError::new(BusError::NO_SUCH_UNIT, message),
    }
}

/// The few `[Service]` settings the fake acts on.
struct ServiceModel {
    oneshot: bool,
    remain_after_exit: bool,
    fails: bool,
    /// `ExecStart=sleep …`: how long a oneshot's start takes.
    start_sleep: Option<Sleep>,
    /// `ExecStop=sleep …`: how long a stop takes.
    stop_sleep: Option<Sleep>,
}

/// The duration of a command line that is `sleep N` or `sleep infinity`.
fn sleep_of(command: &str) -> Option<Sleep> {
    let mut words = command
        .trim_start_matches(['-', '@', '+', '!', ':'])
        .split_whitespace();
    if words.next()?.rsplit('/').next()? != "sleep" {
        return None;
    }
    match words.next()? {
        "infinity" => Some(Sleep::Forever),
        n => n
            .trim_end_matches('s')
            .parse::<f64>()
            .ok()
            .filter(|secs| secs.is_finite() && *secs >= 0.0)
            .map(|secs| Sleep::For(Duration::from_secs_f64(secs))),
    }
}

impl ServiceModel {
    fn parse(text: &str) -> Self {
        let mut model = ServiceModel {
            oneshot: false,
            remain_after_exit: false,
            fails: false,
            start_sleep: None,
            stop_sleep: None,
        };
        let mut in_service = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if !in_service {
                continue;
            }
            let value = value.trim();
            match key.trim() {
                "Type" => model.oneshot = value == "oneshot",
                "RemainAfterExit" => {
                    model.remain_after_exit = matches!(value, "yes" | "true" | "1" | "on");
                }
                "ExecStop" => model.stop_sleep = sleep_of(value),
                "ExecStart" => {
                    model.start_sleep = sleep_of(value);
                    let program = value
                        .trim_start_matches(['-', '@', '+', '!', ':'])
                        .split_whitespace()
                        .next()
                        .unwrap_or_default();
                    model.fails |= program.rsplit('/').next() == Some("false");
                }
                _ => {}
            }
        }
        model
    }
}

impl FakeManager {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // No section below panics while holding the lock; recover the data if a test did.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next call of `method` (for `unit`, or for any unit when `None`) fails with a
    /// generic D-Bus error (`org.freedesktop.DBus.Error.Failed`).
    pub fn fail_next(&self, method: FakeMethod, unit: Option<&str>) {
        self.fail_next_with(
            method,
            unit,
            FakeFailure::Method(BusError::new(
                "org.freedesktop.DBus.Error.Failed",
                "injected failure",
            )),
        );
    }

    /// The next call of `method` (for `unit`, or any unit when `None`) fails as `failure`
    /// says. Scripted failures are used once each, in the order they were added.
    pub fn fail_next_with(&self, method: FakeMethod, unit: Option<&str>, failure: FakeFailure) {
        self.lock()
            .failures
            .push((method, unit.map(str::to_owned), failure));
    }

    /// How many times `reload` succeeded.
    pub fn reload_count(&self) -> u64 {
        self.lock().reloads
    }

    pub fn is_linked(&self, name: &str) -> bool {
        self.lock().linked.contains(name)
    }

    pub fn is_enabled(&self, name: &str) -> bool {
        self.lock().enabled.contains(name)
    }

    /// The contents of `name` in the units directory.
    pub fn file(&self, name: &str) -> Option<String> {
        self.lock().files.get(name).cloned()
    }

    /// Puts a file in the units directory without linking it, as a previous run of the
    /// agent would have left it.
    pub fn put_file(&self, name: &str, contents: &str) {
        self.lock()
            .files
            .insert(name.to_owned(), contents.to_owned());
    }

    /// The unit's state as `states` would report it, without recording a call.
    pub fn status(&self, name: &str) -> UnitStatus {
        self.lock().status(name)
    }

    /// Every call so far, in order, with the unit it was for.
    pub fn calls(&self) -> Vec<(FakeMethod, Option<String>)> {
        self.lock().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Changes a unit's state from outside, as a crash or an administrator would, and
    /// notifies subscribers. `active == "inactive"` also clears the main PID.
    pub fn set_state(&self, name: &str, active: &str, sub: &str) {
        let mut state = self.lock();
        state.touch(name);
        let pid = match state.runtime.get(name) {
            Some(r) if r.main_pid != 0 => r.main_pid,
            _ if active == "active" && sub == "running" => state.next_pid(),
            _ => 0,
        };
        state.set_runtime(name, active, sub, pid);
    }
}

/// Jobs: the start and stop logic, and the timers of slow transitions.
impl FakeManager {
    fn begin_start(&self, name: &str) -> Result<Begun, Error> {
        let mut state = self.lock();
        let scripted = state.enter_job(FakeMethod::StartUnit, name)?;
        state.touch(name);
        if !state.defs.contains_key(name) {
            return Err(no_such_unit(
                FakeMethod::StartUnit,
                name,
                format!("Unit {name} not found."),
            ));
        }
        if let Some(result) = scripted {
            if result == JobResult::Failed {
                state.set_runtime(name, "failed", "failed", 0);
            }
            return Ok(Begun::Now(result));
        }
        let (tx, rx) = oneshot::channel();
        if let Some(job) = state.jobs.get_mut(name) {
            if job.kind == JobKind::Stop {
                // The start replaces the stop job and runs once the unit is down.
                let stop = std::mem::replace(
                    job,
                    Job {
                        kind: JobKind::Start,
                        waiters: Vec::new(),
                    },
                );
                stop.finish(&JobResult::Canceled);
            }
            // A start joins the running start job.
            if let Some(job) = state.jobs.get_mut(name) {
                job.waiters.push(tx);
            }
            return Ok(Begun::Wait(rx));
        }
        match self.run_start(&mut state, name) {
            Some(result) => Ok(Begun::Now(result)),
            None => {
                state.jobs.insert(
                    name.to_owned(),
                    Job {
                        kind: JobKind::Start,
                        waiters: vec![tx],
                    },
                );
                Ok(Begun::Wait(rx))
            }
        }
    }

    /// Starts a loaded unit that has no job; `None`: it is activating, and its start job
    /// ends when its timer fires.
    fn run_start(&self, state: &mut State, name: &str) -> Option<JobResult> {
        let text = state.defs.get(name).cloned().unwrap_or_default();
        if state
            .runtime
            .get(name)
            .is_some_and(|r| r.active == "active")
        {
            return Some(JobResult::Done);
        }
        if !name.ends_with(".service") {
            state.set_runtime(name, "active", "active", 0);
            return Some(JobResult::Done);
        }
        let model = ServiceModel::parse(&text);
        Some(match (model.fails, model.oneshot) {
            (true, true) => {
                state.set_runtime(name, "failed", "failed", 0);
                JobResult::Failed
            }
            (true, false) => {
                state.set_runtime(name, "failed", "failed", 0);
                JobResult::Done
            }
            (false, true) if model.start_sleep.is_some() => {
                let pid = state.next_pid();
                state.set_runtime(name, "activating", "start", pid);
                self.arm(state, name, model.start_sleep);
                return None;
            }
            (false, true) if model.remain_after_exit => {
                state.set_runtime(name, "active", "exited", 0);
                JobResult::Done
            }
            (false, true) => {
                // It ran and exited; subscribers see it end inactive.
                state.set_runtime(name, "inactive", "dead", 0);
                JobResult::Done
            }
            (false, false) => {
                let pid = state.next_pid();
                state.set_runtime(name, "active", "running", pid);
                JobResult::Done
            }
        })
    }

    fn begin_stop(&self, name: &str) -> Result<Begun, Error> {
        let mut state = self.lock();
        let scripted = state.enter_job(FakeMethod::StopUnit, name)?;
        state.touch(name);
        if !state.defs.contains_key(name) && !state.runtime.contains_key(name) {
            return Err(no_such_unit(
                FakeMethod::StopUnit,
                name,
                format!("Unit {name} not loaded."),
            ));
        }
        if let Some(result) = scripted {
            return Ok(Begun::Now(result));
        }
        let (tx, rx) = oneshot::channel();
        let deactivating = state
            .runtime
            .get(name)
            .is_some_and(|r| r.active == "deactivating");
        if let Some(job) = state.jobs.remove(name) {
            if job.kind == JobKind::Stop || deactivating {
                // A stop joins the running stop; a start queued behind a stop is replaced
                // and the stop goes on.
                let waiters = match job.kind {
                    JobKind::Stop => job.waiters,
                    JobKind::Start => {
                        job.finish(&JobResult::Canceled);
                        Vec::new()
                    }
                };
                let mut job = Job {
                    kind: JobKind::Stop,
                    waiters,
                };
                job.waiters.push(tx);
                state.jobs.insert(name.to_owned(), job);
                return Ok(Begun::Wait(rx));
            }
            // The stop replaces a start job: the process is killed, the unit failed.
            job.finish(&JobResult::Canceled);
            state.timers.remove(name);
            state.set_runtime(name, "failed", "failed", 0);
            return Ok(Begun::Now(JobResult::Done));
        }
        let running = state
            .runtime
            .get(name)
            .is_some_and(|r| r.active != "failed");
        if !running {
            return Ok(Begun::Now(JobResult::Done));
        }
        let text = state.defs.get(name).cloned().unwrap_or_default();
        let stop_sleep = ServiceModel::parse(&text).stop_sleep;
        if stop_sleep.is_none() || !name.ends_with(".service") {
            state.set_runtime(name, "inactive", "dead", 0);
            return Ok(Begun::Now(JobResult::Done));
        }
        let pid = state.runtime.get(name).map_or(0, |r| r.main_pid);
        state.set_runtime(name, "deactivating", "stop", pid);
        state.jobs.insert(
            name.to_owned(),
            Job {
                kind: JobKind::Stop,
                waiters: vec![tx],
            },
        );
        self.arm(&mut state, name, stop_sleep);
        Ok(Begun::Wait(rx))
    }

    /// Ends the unit's current transition after `sleep` (never, for `sleep infinity`).
    fn arm(&self, state: &mut State, name: &str, sleep: Option<Sleep>) {
        state.last_timer += 1;
        let id = state.last_timer;
        state.timers.insert(name.to_owned(), id);
        let Some(Sleep::For(after)) = sleep else {
            return;
        };
        let fake = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            fake.transition_ended(&name, id);
        });
    }

    /// A slow start or stop is over: the unit reaches its state and its job ends (a start
    /// that waited for the unit to be down runs now).
    fn transition_ended(&self, name: &str, id: u64) {
        let mut state = self.lock();
        if state.timers.get(name) != Some(&id) {
            return;
        }
        state.timers.remove(name);
        let active = state
            .runtime
            .get(name)
            .map(|r| r.active.clone())
            .unwrap_or_default();
        if active == "activating" {
            // The oneshot's command exited successfully.
            let text = state.defs.get(name).cloned().unwrap_or_default();
            if ServiceModel::parse(&text).remain_after_exit {
                state.set_runtime(name, "active", "exited", 0);
            } else {
                state.set_runtime(name, "inactive", "dead", 0);
            }
        } else if active == "deactivating" {
            state.set_runtime(name, "inactive", "dead", 0);
        }
        let Some(job) = state.jobs.remove(name) else {
            return;
        };
        match job.kind {
            JobKind::Stop => job.finish(&JobResult::Done),
            JobKind::Start if active == "activating" => job.finish(&JobResult::Done),
            JobKind::Start => match self.run_start(&mut state, name) {
                Some(result) => job.finish(&result),
                None => {
                    state.jobs.insert(name.to_owned(), job);
                }
            },
        }
    }
}

impl SystemdManager for FakeManager {
    async fn load(&self, name: &str, file: &units::UnitFile) -> Result<(), Error> {
        check_name(name)?;
        let text = file.canonical();
        let install = file.has_section("Install");
        let mut state = self.lock();
        let unit = Some(name);
        if let Some(f) = state.enter(FakeMethod::WriteFile, unit) {
            return Err(fail(FakeMethod::WriteFile, unit, f));
        }
        state.files.insert(name.to_owned(), text);
        if let Some(f) = state.enter(FakeMethod::LinkUnitFiles, unit) {
            state.files.remove(name);
            return Err(fail(FakeMethod::LinkUnitFiles, unit, f));
        }
        state.linked.insert(name.to_owned());
        if install {
            if let Some(f) = state.enter(FakeMethod::EnableUnitFiles, unit) {
                state.files.remove(name);
                state.linked.remove(name);
                return Err(fail(FakeMethod::EnableUnitFiles, unit, f));
            }
            state.enabled.insert(name.to_owned());
        }
        Ok(())
    }

    async fn unload(&self, name: &str) -> Result<(), Error> {
        check_name(name)?;
        let mut state = self.lock();
        let unit = Some(name);
        if let Some(f) = state.enter(FakeMethod::DisableUnitFiles, unit) {
            return Err(fail(FakeMethod::DisableUnitFiles, unit, f));
        }
        state.enabled.remove(name);
        state.linked.remove(name);
        if let Some(f) = state.enter(FakeMethod::ResetFailedUnit, unit) {
            return Err(fail(FakeMethod::ResetFailedUnit, unit, f));
        }
        if state
            .runtime
            .get(name)
            .is_some_and(|r| r.active == "failed")
        {
            state.set_runtime(name, "inactive", "dead", 0);
        }
        if let Some(f) = state.enter(FakeMethod::RemoveFile, unit) {
            return Err(fail(FakeMethod::RemoveFile, unit, f));
        }
        state.files.remove(name);
        Ok(())
    }

    async fn reload(&self) -> Result<(), Error> {
        let mut state = self.lock();
        if let Some(f) = state.enter(FakeMethod::Reload, None) {
            return Err(fail(FakeMethod::Reload, None, f));
        }
        state.reloads += 1;
        let names: BTreeSet<String> = state
            .defs
            .keys()
            .chain(state.linked.iter())
            .cloned()
            .collect();
        for name in names {
            let before = state.status(&name);
            match state
                .files
                .get(&name)
                .filter(|_| state.linked.contains(&name))
            {
                Some(text) => {
                    let text = text.clone();
                    state.defs.insert(name.clone(), text);
                }
                None => {
                    state.defs.remove(&name);
                }
            }
            let after = state.status(&name);
            if after.load_state == "not-found" && !state.runtime.contains_key(&name) {
                // systemd drops a unit with no file that is not running.
                state.emit(&name, None);
            } else if before != after {
                state.emit(&name, Some(after));
            }
        }
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<JobResult, Error> {
        match self.begin_start(name)? {
            Begun::Now(result) => Ok(result),
            // A job is only dropped unfinished by another job replacing it.
            Begun::Wait(rx) => Ok(rx.await.unwrap_or(JobResult::Canceled)),
        }
    }

    async fn stop(&self, name: &str) -> Result<JobResult, Error> {
        match self.begin_stop(name)? {
            Begun::Now(result) => Ok(result),
            Begun::Wait(rx) => Ok(rx.await.unwrap_or(JobResult::Canceled)),
        }
    }

    async fn states(&self, names: &[String]) -> Result<BTreeMap<String, UnitStatus>, Error> {
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut state = self.lock();
        if let Some(f) = state.enter(FakeMethod::ListUnitsByNames, None) {
            return Err(fail(FakeMethod::ListUnitsByNames, None, f));
        }
        Ok(names
            .iter()
            .map(|name| {
                state.touch(name);
                (name.clone(), state.status(name))
            })
            .collect())
    }

    async fn unit_files(&self) -> Result<BTreeMap<String, String>, Error> {
        let mut state = self.lock();
        if let Some(f) = state.enter(FakeMethod::ListFiles, None) {
            return Err(fail(FakeMethod::ListFiles, None, f));
        }
        Ok(state.files.clone())
    }

    async fn main_pid(&self, name: &str) -> Result<u32, Error> {
        let mut state = self.lock();
        if let Some(f) = state.enter(FakeMethod::MainPid, Some(name)) {
            return Err(fail(FakeMethod::MainPid, Some(name), f));
        }
        Ok(state.runtime.get(name).map_or(0, |r| r.main_pid))
    }

    async fn subscribe(
        &self,
        filter: UnitFilter,
    ) -> Result<mpsc::Receiver<UnitStateChange>, Error> {
        let queue = Arc::new(Coalescer::new());
        {
            let mut state = self.lock();
            if let Some(f) = state.enter(FakeMethod::Subscribe, None) {
                return Err(fail(FakeMethod::Subscribe, None, f));
            }
            state.subscribers.push((filter, queue.clone()));
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBE_CAPACITY);
        tokio::spawn(forward(queue, tx));
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(text: &str) -> units::UnitFile {
        text.parse().expect("test unit files parse")
    }

    const SLEEP: &str = "[Service]\nExecStart=/bin/sleep 1000\n";

    #[tokio::test]
    async fn scripted_failures_are_used_once_and_roll_back_the_load() {
        let fake = FakeManager::new();
        fake.fail_next(FakeMethod::LinkUnitFiles, Some("a.service"));
        let err = fake.load("a.service", &unit(SLEEP)).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Method {
                    method: "LinkUnitFiles",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.is_transient());
        assert_eq!(fake.file("a.service"), None);
        fake.load("a.service", &unit(SLEEP)).await.unwrap();
        assert!(fake.is_linked("a.service"));

        fake.fail_next_with(FakeMethod::Reload, None, FakeFailure::Unavailable);
        assert!(fake.reload().await.unwrap_err().is_transient());
        fake.reload().await.unwrap();
        assert_eq!(fake.reload_count(), 1);

        fake.fail_next_with(
            FakeMethod::StartUnit,
            Some("a.service"),
            FakeFailure::Job(JobResult::Timeout),
        );
        assert_eq!(fake.start("a.service").await.unwrap(), JobResult::Timeout);
        assert_eq!(fake.start("a.service").await.unwrap(), JobResult::Done);
        assert!(fake.main_pid("a.service").await.unwrap() > 0);
    }

    #[tokio::test]
    async fn enable_failure_removes_the_file() {
        let fake = FakeManager::new();
        fake.fail_next(FakeMethod::EnableUnitFiles, None);
        let text = "[Service]\nExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\n";
        fake.load("b.service", &unit(text)).await.unwrap_err();
        assert_eq!(fake.file("b.service"), None);
        assert!(!fake.is_linked("b.service"));
        fake.load("b.service", &unit(text)).await.unwrap();
        assert!(fake.is_enabled("b.service"));
    }

    #[tokio::test]
    async fn external_changes_reach_subscribers() {
        let fake = FakeManager::new();
        let mut rx = fake
            .subscribe(UnitFilter::names(["c.service"]))
            .await
            .unwrap();
        fake.load("c.service", &unit(SLEEP)).await.unwrap();
        fake.set_state("other.service", "failed", "failed");
        fake.set_state("c.service", "failed", "failed");
        let change = rx.recv().await.unwrap();
        assert_eq!(change.name, "c.service");
        assert_eq!(change.status.unwrap().active_state, "failed");
        let calls = fake.calls();
        assert_eq!(calls[0], (FakeMethod::Subscribe, None));
    }
}
