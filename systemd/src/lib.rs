//! fleet's client for the local systemd: write unit files, link and enable them, reload,
//! start and stop units, read their states and follow their changes.
//!
//! The agent codes against the [`SystemdManager`] trait. [`DbusManager`] talks to the real
//! systemd over D-Bus (the system bus, or the session bus for `systemd_user`), and
//! [`FakeManager`] (feature `fake`) is an in-memory model of the same behaviour for component
//! tests. Both pass the same contract suite (`tests/tests/systemd_contract.rs`), which is what
//! makes the fake trustworthy.
//!
//! Unlike fleet's Go agent, which polls `ListUnitsByNames` every second, [`SystemdManager::subscribe`]
//! turns systemd's signals into a coalescing stream of [`UnitStateChange`]s. Exact states are
//! always read uncached, because cached D-Bus properties lag behind `JobRemoved`.
//!
//! Layout:
//! - `lib.rs`: the trait, the value types ([`UnitStatus`], [`UnitStateChange`], [`JobResult`],
//!   [`UnitFilter`]) and the [`Error`] classification.
//! - `dbus.rs`: [`DbusManager`] and [`DbusConfig`]; proxies come from `zbus_systemd`, signals are
//!   drained by background tasks so that no zbus stream ever stalls the connection.
//! - `files.rs`: the units directory: atomic writes, listing, removal.
//! - `coalesce.rs`: the latest-wins queue between signal draining and a bounded consumer.
//! - `fake.rs`: [`FakeManager`], behind the `fake` feature.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod coalesce;
mod dbus;
#[cfg(feature = "fake")]
mod fake;
mod files;

pub use dbus::{DbusConfig, DbusManager, ProcessUnit};
#[cfg(feature = "fake")]
pub use fake::{FakeFailure, FakeManager, FakeMethod};

/// The three state strings systemd reports for a unit, exactly as systemd spells them
/// (`loaded`/`not-found`/…, `active`/`inactive`/`failed`/…, `running`/`dead`/…).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct UnitStatus {
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
}

impl UnitStatus {
    pub fn new(load: &str, active: &str, sub: &str) -> Self {
        UnitStatus {
            load_state: load.to_owned(),
            active_state: active.to_owned(),
            sub_state: sub.to_owned(),
        }
    }

    /// What systemd reports for a name it has no unit file for: `not-found`/`inactive`/`dead`.
    pub fn not_found() -> Self {
        UnitStatus::new("not-found", "inactive", "dead")
    }
}

impl fmt::Display for UnitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.load_state, self.active_state, self.sub_state
        )
    }
}

/// A unit's state changed. Changes are coalesced per unit: a slow consumer sees the latest
/// state, not every intermediate one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UnitStateChange {
    pub name: String,
    /// `None`: systemd dropped the unit from memory (it was unloaded, or garbage-collected
    /// because it is inactive and unreferenced). Call [`SystemdManager::states`] when the exact
    /// values are needed; for a unit whose file is still linked that reports it as
    /// `loaded`/`inactive`/`dead`.
    pub status: Option<UnitStatus>,
}

/// The result of a start or stop job, as systemd's `JobRemoved` signal reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum JobResult {
    Done,
    Canceled,
    Timeout,
    Failed,
    Dependency,
    Skipped,
    /// A result string this crate does not know (systemd may add some).
    Other(String),
}

impl JobResult {
    /// Parses systemd's result string (`done`, `canceled`, …).
    pub fn parse(s: &str) -> Self {
        match s {
            "done" => JobResult::Done,
            "canceled" => JobResult::Canceled,
            "timeout" => JobResult::Timeout,
            "failed" => JobResult::Failed,
            "dependency" => JobResult::Dependency,
            "skipped" => JobResult::Skipped,
            other => JobResult::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            JobResult::Done => "done",
            JobResult::Canceled => "canceled",
            JobResult::Timeout => "timeout",
            JobResult::Failed => "failed",
            JobResult::Dependency => "dependency",
            JobResult::Skipped => "skipped",
            JobResult::Other(s) => s,
        }
    }
}

impl fmt::Display for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which units a [`SystemdManager::subscribe`] stream reports. Cheap to clone.
///
/// The D-Bus manager re-reads a unit's state for every relevant signal, so passing only the
/// agent's own units keeps the cost proportional to them rather than to every unit on the host.
#[derive(Clone)]
pub struct UnitFilter(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl UnitFilter {
    /// Every unit.
    pub fn all() -> Self {
        UnitFilter(Arc::new(|_| true))
    }

    /// Units for which `f` returns true. `f` is called from the signal-draining task for every
    /// unit signal, so it must be fast and must not block for long (a short `Mutex` or `RwLock`
    /// read over the agent's unit set is fine).
    pub fn new(f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        UnitFilter(Arc::new(f))
    }

    /// Exactly these names.
    pub fn names<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let set: std::collections::BTreeSet<String> = names.into_iter().map(Into::into).collect();
        UnitFilter(Arc::new(move |n| set.contains(n)))
    }

    pub fn matches(&self, name: &str) -> bool {
        (self.0)(name)
    }
}

impl fmt::Debug for UnitFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnitFilter(..)")
    }
}

/// A D-Bus error as systemd returned it: the error name
/// (`org.freedesktop.systemd1.NoSuchUnit`, …) and its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {message}")]
pub struct BusError {
    pub name: String,
    pub message: String,
}

impl BusError {
    pub const NO_SUCH_UNIT: &'static str = "org.freedesktop.systemd1.NoSuchUnit";

    pub fn new(name: &str, message: impl Into<String>) -> Self {
        BusError {
            name: name.to_owned(),
            message: message.into(),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors from a [`SystemdManager`]. Use [`Error::is_transient`] to decide whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting failed, or the bus connection was lost. The next call reconnects.
    #[error("systemd bus at {address} is unavailable")]
    Unavailable {
        address: String,
        #[source]
        source: BoxError,
    },
    /// systemd did not answer a call, or a job did not finish, in time.
    #[error("{method}{} timed out after {after:?}", for_unit(.unit.as_deref()))]
    Timeout {
        method: &'static str,
        unit: Option<String>,
        after: Duration,
    },
    /// Reading or writing the units directory failed.
    #[error("cannot {action} {}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// systemd refused a method call.
    #[error("systemd {method}{} failed", for_unit(.unit.as_deref()))]
    Method {
        method: &'static str,
        unit: Option<String>,
        #[source]
        source: BusError,
    },
    /// The name cannot be a file in the units directory.
    #[error("invalid unit name {name:?}")]
    InvalidName { name: String },
}

fn for_unit(unit: Option<&str>) -> String {
    unit.map_or_else(String::new, |u| format!(" for {u}"))
}

impl Error {
    /// Worth retrying after a backoff: the bus is gone or systemd is slow.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout { .. })
    }

    /// systemd does not know the unit (`org.freedesktop.systemd1.NoSuchUnit`), e.g. stopping a
    /// unit that is not loaded.
    pub fn is_no_such_unit(&self) -> bool {
        matches!(self, Error::Method { source, .. } if source.name == BusError::NO_SUCH_UNIT)
    }
}

/// What fleet's agent needs from systemd. See the crate docs; both implementations pass the
/// same contract suite.
///
/// Methods are `fn … -> impl Future + Send` rather than `async fn` so that callers can
/// `tokio::spawn` them from generic code.
pub trait SystemdManager: Send + Sync + 'static {
    /// Writes `file`'s canonical text to `<units_dir>/<name>` (mode 0644, atomically),
    /// links it (`LinkUnitFiles([path], runtime, force)`) and, if it has an `[Install]`
    /// section, enables it the same way. If linking or enabling fails, the file is removed
    /// again and the error returned. Does not reload systemd: call [`Self::reload`] once per
    /// batch.
    fn load(
        &self,
        name: &str,
        file: &units::UnitFile,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// `DisableUnitFiles([name], runtime)`, `ResetFailedUnit` (a unit systemd does not know is
    /// fine) and removes the file. Does not stop the unit and does not reload systemd.
    fn unload(&self, name: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// daemon-reload; call it once per batch of loads and unloads.
    fn reload(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// `StartUnit(name, "replace")` and wait for the job's result.
    ///
    /// Jobs of different units run concurrently, and waiting for many at once never stalls
    /// the connection. Jobs of one unit follow systemd's `replace` mode: a start while a
    /// start job runs joins it; a start while a stop job runs replaces it (the stop's waiters
    /// get [`JobResult::Canceled`]) and runs once the unit is down. A job may take as long as
    /// the unit says (a `Type=oneshot` whose command never exits: forever); the wait ends
    /// with [`Error::Timeout`] after the manager's job timeout, or when the job is replaced.
    /// Dropping the future only stops waiting: the job goes on in systemd.
    fn start(&self, name: &str) -> impl Future<Output = Result<JobResult, Error>> + Send;

    /// `StopUnit(name, "replace")` and wait for the job's result. A unit systemd does not
    /// know fails with an error for which [`Error::is_no_such_unit`] is true. A stop while a
    /// stop job runs joins it; a stop while a start job runs replaces it (the start's waiters
    /// get [`JobResult::Canceled`]). Waiting is as for [`Self::start`].
    fn stop(&self, name: &str) -> impl Future<Output = Result<JobResult, Error>> + Send;

    /// The states of `names` in one `ListUnitsByNames` call. Every name gets an entry; names
    /// systemd has no unit for are `not-found`/`inactive`/`dead`, as systemd reports them.
    fn states(
        &self,
        names: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, UnitStatus>, Error>> + Send;

    /// The files currently in the units directory (name → contents), skipping temporary
    /// files. Used by the agent to adopt what a previous run loaded.
    fn unit_files(&self) -> impl Future<Output = Result<BTreeMap<String, String>, Error>> + Send;

    /// The main PID of a service, 0 if it has none (not running, not a service, unknown).
    fn main_pid(&self, name: &str) -> impl Future<Output = Result<u32, Error>> + Send;

    /// Starts following the units `filter` accepts. The receiver yields a change whenever a
    /// unit's load, active or sub state changes, or systemd drops the unit. Changes are
    /// coalesced per unit when the consumer lags, so the bus is never blocked. The channel
    /// closes when the connection to systemd is lost; subscribe again to resume (and re-read
    /// [`Self::states`], since changes may have been missed).
    fn subscribe(
        &self,
        filter: UnitFilter,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::Receiver<UnitStateChange>, Error>> + Send;
}

/// Capacity of the channel returned by [`SystemdManager::subscribe`]; beyond it changes wait,
/// coalesced, in the manager.
pub const SUBSCRIBE_CAPACITY: usize = 256;
