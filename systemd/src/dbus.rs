//! [`DbusManager`]: the real systemd, over D-Bus with zbus.
//!
//! Proxies are `zbus_systemd`'s generated `ManagerProxy` and `ServiceProxy`, always built
//! with property caching off: cached properties lag behind `JobRemoved` (testbed.md, zbus
//! pitfall 2), and a caching proxy also keeps a `PropertiesChanged` stream of its own.
//!
//! Background tasks, all owned by the current connection:
//! - the job dispatcher drains `JobRemoved` for the whole connection and hands each result
//!   to the `start`/`stop` call waiting for that job path. It is subscribed before the first
//!   call, and remembers recent results nobody waited for yet, so a job that finishes before
//!   its `StartUnit` reply is processed is not missed.
//! - each `subscribe` runs a drain task (systemd's signals, in one ordered stream → a
//!   latest-wins queue; it never awaits anything but that stream, because an undrained zbus
//!   stream stalls the connection, pitfall 1), a resolver task (re-reads changed units with one
//!   `ListUnitsByNames` per batch) and a forwarding task (the bounded channel to the consumer).
//!
//! Two systemd quirks shape the subscription:
//! - every daemon-reload frees and re-creates all units and sends `UnitRemoved` for each
//!   (but no `UnitNew` afterwards). Removals between `Reloading(true)` and `Reloading(false)`
//!   are therefore re-read instead of reported as gone; that needs the signals in bus order.
//! - reading a unit that is not loaded loads it, announces it with `UnitNew`, and garbage
//!   collection removes it again. So `UnitRemoved` is reported as gone without re-reading, and
//!   `UnitNew` is ignored; otherwise re-reading would keep such a unit cycling forever.
//!
//! When the connection is lost, calls fail with [`Error::Unavailable`] and the next call
//! reconnects; subscription channels close and must be re-created by the consumer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy};

use crate::coalesce::{Coalescer, forward};
use crate::files::{self, blocking};
use crate::{
    BusError, Error, JobResult, SUBSCRIBE_CAPACITY, SystemdManager, UnitFilter, UnitStateChange,
    UnitStatus,
};

/// Where systemd is and where fleet keeps its unit files.
#[derive(Clone, Debug)]
pub struct DbusConfig {
    /// A D-Bus address such as `unix:path=/run/dbus/system_bus_socket`. `None`: the system
    /// bus (`DBUS_SYSTEM_BUS_ADDRESS`, else `/run/dbus/system_bus_socket`), or the session bus
    /// when `user` is set.
    pub bus_address: Option<String>,
    /// Talk to the user manager on the session bus (fleet's `systemd_user`).
    pub user: bool,
    /// Where this process writes unit files.
    pub units_dir: PathBuf,
    /// The same directory as the systemd being driven sees it; it differs from `units_dir`
    /// only when the files are written from outside that systemd's mount namespace (tests
    /// write through `/proc/<pid>/root`).
    pub units_dir_in_systemd: PathBuf,
    /// The longest wait for one D-Bus call, and for a start or stop job to finish.
    pub job_timeout: Duration,
}

impl Default for DbusConfig {
    /// fleet's defaults: the system bus and `/run/fleet/units`. The job timeout is a little
    /// over systemd's default start timeout of 90 s.
    fn default() -> Self {
        DbusConfig {
            bus_address: None,
            user: false,
            units_dir: PathBuf::from("/run/fleet/units"),
            units_dir_in_systemd: PathBuf::from("/run/fleet/units"),
            job_timeout: Duration::from_secs(100),
        }
    }
}

impl DbusConfig {
    fn address_label(&self) -> String {
        match (&self.bus_address, self.user) {
            (Some(a), _) => a.clone(),
            (None, false) => "the system bus".to_owned(),
            (None, true) => "the session bus".to_owned(),
        }
    }
}

/// The real systemd over D-Bus. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct DbusManager {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: DbusConfig,
    address: String,
    /// The current connection; replaced when it is found dead.
    bus: tokio::sync::Mutex<Option<Arc<Bus>>>,
}

/// One connection to the bus and what runs on it.
struct Bus {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
    jobs: Arc<Jobs>,
    /// Cleared when the connection is found broken.
    alive: Arc<AtomicBool>,
    address: String,
    timeout: Duration,
    dispatcher: tokio::task::AbortHandle,
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

const SYSTEMD: &str = "org.freedesktop.systemd1";
const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
/// How many finished jobs nobody waited for are remembered for a late waiter.
const FINISHED_JOBS: usize = 512;

impl DbusManager {
    /// Connects and subscribes to systemd's signals. Failing to connect is an
    /// [`Error::Unavailable`].
    pub async fn connect(cfg: DbusConfig) -> Result<Self, Error> {
        let address = cfg.address_label();
        let bus = Bus::connect(&cfg, &address).await?;
        Ok(DbusManager {
            shared: Arc::new(Shared {
                cfg,
                address,
                bus: tokio::sync::Mutex::new(Some(Arc::new(bus))),
            }),
        })
    }

    pub fn config(&self) -> &DbusConfig {
        &self.shared.cfg
    }

    /// The manager's `SystemState` (`starting`, `running`, `degraded`, …).
    pub async fn system_state(&self) -> Result<String, Error> {
        let bus = self.bus().await?;
        bus.manager
            .system_state()
            .await
            .map_err(|e| bus.classify("SystemState", None, e))
    }

    /// The live connection, reconnecting if the previous one broke.
    async fn bus(&self) -> Result<Arc<Bus>, Error> {
        let mut guard = self.shared.bus.lock().await;
        if let Some(bus) = guard.as_ref()
            && bus.alive.load(Ordering::Acquire)
        {
            return Ok(bus.clone());
        }
        *guard = None;
        debug!(address = %self.shared.address, "reconnecting to systemd");
        let bus = Arc::new(Bus::connect(&self.shared.cfg, &self.shared.address).await?);
        *guard = Some(bus.clone());
        Ok(bus)
    }

    fn path_in_systemd(&self, name: &str) -> Result<String, Error> {
        let path = self.shared.cfg.units_dir_in_systemd.join(name);
        path.into_os_string()
            .into_string()
            .map_err(|_| Error::InvalidName {
                name: name.to_owned(),
            })
    }

    async fn job(&self, method: &'static str, name: &str) -> Result<JobResult, Error> {
        let bus = self.bus().await?;
        let call = if method == "StartUnit" {
            bus.manager
                .start_unit(name.to_owned(), "replace".to_owned())
                .await
        } else {
            bus.manager
                .stop_unit(name.to_owned(), "replace".to_owned())
                .await
        };
        let job = call.map_err(|e| bus.classify(method, Some(name), e))?;
        let job = job.as_str().to_owned();
        let rx = match bus.jobs.wait(&job) {
            Wait::Finished(result) => return Ok(JobResult::parse(&result)),
            Wait::Closed => return Err(bus.lost(method, Some(name))),
            Wait::Pending(rx) => rx,
        };
        // Whether this wait ends, times out or is dropped by the caller, nothing is left
        // waiting for the job.
        let mut waiting = Waiting {
            jobs: &bus.jobs,
            job: &job,
            rx: Some(rx),
        };
        let rx = waiting
            .rx
            .as_mut()
            .expect("the receiver was just put there");
        match tokio::time::timeout(bus.timeout, rx).await {
            Ok(Ok(result)) => Ok(JobResult::parse(&result)),
            Ok(Err(_)) => Err(bus.lost(method, Some(name))),
            Err(_) => {
                drop(waiting);
                Err(Error::Timeout {
                    method,
                    unit: Some(name.to_owned()),
                    after: bus.timeout,
                })
            }
        }
    }
}

/// The unit a process belongs to, and what systemd is doing with it: how a daemon run by
/// systemd tells a restart of itself from a stop ([`DbusManager::unit_of_process`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessUnit {
    /// The unit's name (`fleet.service`, or a scope such as `session-1.scope`).
    pub unit: String,
    /// The service's main PID; `None` for a unit that is not a service.
    pub main_pid: Option<u32>,
    /// The type of the job the unit has (`stop`, `restart`, `start`, …); `None` without one.
    pub job_type: Option<String>,
    /// The service's `Restart=` setting; `None` for a unit that is not a service.
    pub restart: Option<String>,
}

/// A proxy of type `P` for the object at `path` without a property cache:
/// each property is read from systemd when asked, as these objects are
/// looked at once and their values change under us.
async fn uncached<P>(conn: &zbus::Connection, path: zbus::OwnedObjectPath) -> zbus::Result<P>
where
    P: From<zbus::Proxy<'static>> + zbus::proxy::Defaults,
{
    zbus::proxy::Builder::<P>::new(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

impl DbusManager {
    /// The unit process `pid` belongs to (`GetUnitByPID`), with its pending job and, for a
    /// service, its main PID and `Restart=`.
    pub async fn unit_of_process(&self, pid: u32) -> Result<ProcessUnit, Error> {
        use zbus_systemd::systemd1::{JobProxy, UnitProxy};
        let bus = self.bus().await?;
        let path = bus
            .manager
            .get_unit_by_pid(pid)
            .await
            .map_err(|e| bus.classify("GetUnitByPID", None, e))?;
        let unit = uncached::<UnitProxy>(&bus.conn, path.clone())
            .await
            .map_err(|e| bus.classify("GetUnitByPID", None, e))?;
        let name = unit.id().await.map_err(|e| bus.classify("Id", None, e))?;
        let (job_id, job_path) = unit
            .job()
            .await
            .map_err(|e| bus.classify("Job", Some(&name), e))?;
        let job_type = if job_id == 0 {
            None
        } else {
            let job = async {
                uncached::<JobProxy>(&bus.conn, job_path)
                    .await?
                    .job_type()
                    .await
            }
            .await;
            match job {
                Ok(t) => Some(t),
                // The job finished between the two calls.
                Err(e) => match bus.classify("JobType", Some(&name), e) {
                    Error::Method { .. } => None,
                    e => return Err(e),
                },
            }
        };
        let service = async {
            let proxy = uncached::<ServiceProxy>(&bus.conn, path).await?;
            Ok::<_, zbus::Error>((proxy.main_pid().await?, proxy.restart().await?))
        }
        .await;
        let (main_pid, restart) = match service {
            Ok((pid, restart)) => (Some(pid), Some(restart)),
            // Not a service: no such interface on the unit's object.
            Err(e) => match bus.classify("MainPID", Some(&name), e) {
                Error::Method { .. } => (None, None),
                e => return Err(e),
            },
        };
        Ok(ProcessUnit {
            unit: name,
            main_pid,
            job_type,
            restart,
        })
    }
}

impl Bus {
    async fn connect(cfg: &DbusConfig, address: &str) -> Result<Bus, Error> {
        let unavailable = |source: zbus::Error| Error::Unavailable {
            address: address.to_owned(),
            source: source.into(),
        };
        let builder = match (&cfg.bus_address, cfg.user) {
            (Some(a), _) => zbus::connection::Builder::address(a.as_str()),
            (None, false) => zbus::connection::Builder::system(),
            (None, true) => zbus::connection::Builder::session(),
        };
        let conn = tokio::time::timeout(
            cfg.job_timeout,
            builder.method_timeout(cfg.job_timeout).build(),
        )
        .await
        .map_err(|_| Error::Timeout {
            method: "connect",
            unit: None,
            after: cfg.job_timeout,
        })?
        .map_err(unavailable)?;
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(unavailable)?;
        let alive = Arc::new(AtomicBool::new(true));
        let jobs = Arc::new(Jobs::default());
        // Listen before subscribing and before any job exists, so no JobRemoved is missed.
        let job_stream = manager.receive_job_removed().await.map_err(unavailable)?;
        let dispatcher = tokio::spawn(dispatch_jobs(job_stream, jobs.clone(), alive.clone()));
        let bus = Bus {
            conn,
            manager,
            jobs,
            alive,
            address: address.to_owned(),
            timeout: cfg.job_timeout,
            dispatcher: dispatcher.abort_handle(),
        };
        // systemd sends unit and job signals to the bus only while somebody is subscribed.
        if let Err(e) = bus.manager.subscribe().await {
            let e = bus.classify("Subscribe", None, e);
            let already = matches!(&e, Error::Method { source, .. }
                if source.name == "org.freedesktop.systemd1.AlreadySubscribed");
            if !already {
                return Err(e);
            }
        }
        Ok(bus)
    }

    /// Turns a zbus error into ours; a broken connection marks this bus dead.
    fn classify(&self, method: &'static str, unit: Option<&str>, e: zbus::Error) -> Error {
        let unit = unit.map(str::to_owned);
        let timeout = |unit| Error::Timeout {
            method,
            unit,
            after: self.timeout,
        };
        let bus_error = match e {
            zbus::Error::MethodError(name, message, _) => {
                BusError::new(name.as_str(), message.unwrap_or_default())
            }
            zbus::Error::FDO(e) => {
                use zbus::DBusError;
                BusError::new(e.name().as_str(), e.description().unwrap_or_default())
            }
            zbus::Error::InputOutput(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                return timeout(unit);
            }
            zbus::Error::InputOutput(_)
            | zbus::Error::Connection(..)
            | zbus::Error::Handshake(_) => {
                self.alive.store(false, Ordering::Release);
                return Error::Unavailable {
                    address: self.address.clone(),
                    source: e.into(),
                };
            }
            other => BusError::new("org.zbus.Error", other.to_string()),
        };
        match bus_error.name.as_str() {
            "org.freedesktop.DBus.Error.NoReply" | "org.freedesktop.DBus.Error.Timeout" => {
                timeout(unit)
            }
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner"
            | "org.freedesktop.DBus.Error.Disconnected" => {
                self.alive.store(false, Ordering::Release);
                Error::Unavailable {
                    address: self.address.clone(),
                    source: bus_error.into(),
                }
            }
            _ => Error::Method {
                method,
                unit,
                source: bus_error,
            },
        }
    }

    /// The connection closed while waiting for something.
    fn lost(&self, method: &'static str, unit: Option<&str>) -> Error {
        self.alive.store(false, Ordering::Release);
        let what = match unit {
            Some(u) => format!("connection closed while waiting for {method} of {u}"),
            None => format!("connection closed while waiting for {method}"),
        };
        Error::Unavailable {
            address: self.address.clone(),
            source: what.into(),
        }
    }
}

/// Routes `JobRemoved` results to the calls waiting for them.
#[derive(Default)]
struct Jobs {
    inner: Mutex<JobsInner>,
}

#[derive(Default)]
struct JobsInner {
    waiters: HashMap<String, Vec<oneshot::Sender<String>>>,
    /// Recent results nobody waited for: (job path, result), oldest first.
    finished: VecDeque<(String, String)>,
    closed: bool,
}

/// A caller waiting for a job; dropping it (the caller stopped waiting, or gave up)
/// unregisters the waiter, so a job that never ends leaves nothing behind.
struct Waiting<'a> {
    jobs: &'a Jobs,
    job: &'a str,
    rx: Option<oneshot::Receiver<String>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.jobs.forget(self.job);
    }
}

enum Wait {
    Finished(String),
    Pending(oneshot::Receiver<String>),
    Closed,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, JobsInner> {
        // No section below panics while holding the lock; recover the data if one did.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait(&self, job: &str) -> Wait {
        let mut inner = self.lock();
        if let Some((_, result)) = inner.finished.iter().rev().find(|(j, _)| j == job) {
            return Wait::Finished(result.clone());
        }
        if inner.closed {
            return Wait::Closed;
        }
        let (tx, rx) = oneshot::channel();
        inner.waiters.entry(job.to_owned()).or_default().push(tx);
        Wait::Pending(rx)
    }

    fn forget(&self, job: &str) {
        let mut inner = self.lock();
        if let Some(waiters) = inner.waiters.get_mut(job) {
            waiters.retain(|w| !w.is_closed());
            if waiters.is_empty() {
                inner.waiters.remove(job);
            }
        }
    }

    fn finish(&self, job: String, result: String) {
        let mut inner = self.lock();
        match inner.waiters.remove(&job) {
            Some(waiters) => {
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
            None => {
                if inner.finished.len() >= FINISHED_JOBS {
                    inner.finished.pop_front();
                }
                inner.finished.push_back((job, result));
            }
        }
    }

    fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        // Dropping the senders wakes every waiter with an error.
        inner.waiters.clear();
    }
}

async fn dispatch_jobs(
    mut stream: zbus_systemd::systemd1::JobRemovedStream,
    jobs: Arc<Jobs>,
    alive: Arc<AtomicBool>,
) {
    while let Some(signal) = stream.next().await {
        match signal.args() {
            Ok(args) => jobs.finish(args.job.as_str().to_owned(), args.result),
            Err(e) => warn!(error = %e, "undecodable JobRemoved signal"),
        }
    }
    debug!("JobRemoved stream ended: connection to systemd lost");
    alive.store(false, Ordering::Release);
    jobs.close();
}

/// Why a unit needs attention in a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    /// Its state may have changed: read it.
    Changed,
    /// systemd dropped it.
    Removed,
}

/// The unit name in a unit object path: systemd escapes every byte that is not
/// `[A-Za-z0-9]` as `_xx`.
fn unit_name_from_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATH_PREFIX)?.strip_prefix('/')?;
    units::decode_hex_escapes(label, b'_')
}

/// Does this `PropertiesChanged` message touch a unit's load, active or sub state?
fn touches_unit_state(msg: &zbus::Message) -> bool {
    type Body<'a> = (&'a str, HashMap<&'a str, zbus::Variant<'a>>, Vec<&'a str>);
    let body = msg.body();
    let Ok((iface, changed, invalidated)) = body.deserialize::<Body<'_>>() else {
        return false;
    };
    let relevant = |p: &str| matches!(p, "LoadState" | "ActiveState" | "SubState");
    iface == UNIT_IFACE
        && (changed.keys().any(|p| relevant(p)) || invalidated.iter().any(|p| relevant(p)))
}

/// What one systemd signal means for a subscription, if anything.
fn classify_signal(msg: zbus::Message, reloading: &mut bool) -> Option<(String, Signal)> {
    use zbus_systemd::systemd1::{JobRemoved, Reloading, UnitRemoved};
    let header = msg.header();
    match header.member()?.as_str() {
        "PropertiesChanged" => {
            let name = header
                .path()
                .and_then(|p| unit_name_from_path(p.as_str()))?;
            touches_unit_state(&msg).then_some((name, Signal::Changed))
        }
        "UnitRemoved" => {
            let args = UnitRemoved::from_message(msg.clone())?;
            let id = args.args().ok()?.id;
            // A daemon-reload frees and re-creates every unit, announcing each as removed
            // (and not as new again). Only a removal outside a reload is real.
            let signal = if *reloading {
                Signal::Changed
            } else {
                Signal::Removed
            };
            Some((id, signal))
        }
        "JobRemoved" => {
            let args = JobRemoved::from_message(msg.clone())?;
            Some((args.args().ok()?.unit, Signal::Changed))
        }
        "Reloading" => {
            let args = Reloading::from_message(msg.clone())?;
            *reloading = args.args().ok()?.active;
            None
        }
        _ => None,
    }
}

/// Drains systemd's signals into `queue` until the stream ends (connection lost) or the
/// consumer goes away. Awaits nothing else, so the stream never backs up. One stream for all
/// signals keeps them in bus order, which matters around a reload.
async fn drain_signals(
    mut signals: zbus::MessageStream,
    filter: UnitFilter,
    queue: Arc<Coalescer<Signal>>,
    consumer: mpsc::Sender<UnitStateChange>,
) {
    let mut reloading = false;
    loop {
        tokio::select! {
            msg = signals.next() => match msg {
                Some(Ok(msg)) => {
                    if let Some((name, signal)) = classify_signal(msg, &mut reloading)
                        && filter.matches(&name)
                    {
                        queue.push(name, signal);
                    }
                }
                Some(Err(e)) => debug!(error = %e, "bad message from systemd"),
                None => break,
            },
            () = consumer.closed() => break,
        }
    }
    queue.close();
}

/// Reads the exact state of the units in each batch and hands it on to `out`.
async fn resolve_states(
    bus: Arc<Bus>,
    queue: Arc<Coalescer<Signal>>,
    out: Arc<Coalescer<Option<UnitStatus>>>,
) {
    while let Some(batch) = queue.next_batch().await {
        if out.is_closed() {
            break;
        }
        let changed: Vec<String> = batch
            .iter()
            .filter(|(_, s)| **s == Signal::Changed)
            .map(|(n, _)| n.clone())
            .collect();
        let mut states = BTreeMap::new();
        if !changed.is_empty() {
            match bus.states(&changed).await {
                Ok(s) => states = s,
                Err(e) if e.is_transient() => {
                    debug!(error = %e, "subscription ends: systemd unreachable");
                    break;
                }
                // Handled here: the changes are dropped and the next signal retries.
                Err(e) => warn!(error = %e, "cannot read unit states for a subscription"),
            }
        }
        for (name, signal) in batch {
            match signal {
                Signal::Removed => out.push(name, None),
                Signal::Changed => {
                    if let Some(status) = states.remove(&name) {
                        out.push(name, Some(status));
                    }
                }
            }
        }
    }
    queue.close();
    out.close();
}

impl Bus {
    /// One `ListUnitsByNames` call; every name gets an entry.
    async fn states(&self, names: &[String]) -> Result<BTreeMap<String, UnitStatus>, Error> {
        let bus = self;
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let rows = bus
            .manager
            .list_units_by_names(names.to_vec())
            .await
            .map_err(|e| bus.classify("ListUnitsByNames", None, e))?;
        let status = |r: &(String, String, String, String, String, _, _, _, _, _)| UnitStatus {
            load_state: r.2.clone(),
            active_state: r.3.clone(),
            sub_state: r.4.clone(),
        };
        let mut out = BTreeMap::new();
        if rows.len() == names.len() {
            // systemd answers in request order. Matching by position also covers aliases,
            // which systemd reports under the unit's main name.
            for (name, row) in names.iter().zip(&rows) {
                out.insert(name.clone(), status(row));
            }
        } else {
            // Some names were skipped as invalid; match the rest by name.
            for row in &rows {
                if names.contains(&row.0) {
                    out.insert(row.0.clone(), status(row));
                }
            }
            for name in names {
                out.entry(name.clone())
                    .or_insert_with(UnitStatus::not_found);
            }
        }
        Ok(out)
    }
}

impl SystemdManager for DbusManager {
    async fn load(&self, name: &str, file: &units::UnitFile) -> Result<(), Error> {
        files::check_name(name)?;
        let text = file.canonical();
        let install = file.has_section("Install");
        let path = self.path_in_systemd(name)?;
        let dir = self.shared.cfg.units_dir.clone();
        let owned = name.to_owned();
        blocking(move || files::write_atomic(&dir, &owned, &text)).await?;

        let linked = async {
            let bus = self.bus().await?;
            bus.manager
                .link_unit_files(vec![path.clone()], true, true)
                .await
                .map_err(|e| bus.classify("LinkUnitFiles", Some(name), e))?;
            if install {
                let enabled = bus
                    .manager
                    .enable_unit_files(vec![path], true, true)
                    .await
                    .map_err(|e| bus.classify("EnableUnitFiles", Some(name), e));
                if let Err(e) = enabled {
                    // Best effort: do not leave a link to the file we are about to remove.
                    let _ = bus
                        .manager
                        .disable_unit_files(vec![name.to_owned()], true)
                        .await;
                    return Err(e);
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = linked {
            let dir = self.shared.cfg.units_dir.clone();
            let owned = name.to_owned();
            if let Err(cleanup) = blocking(move || files::remove(&dir, &owned)).await {
                warn!(unit = name, error = %cleanup, "cannot remove the unit file of a failed load");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn unload(&self, name: &str) -> Result<(), Error> {
        files::check_name(name)?;
        let bus = self.bus().await?;
        if let Err(e) = bus
            .manager
            .disable_unit_files(vec![name.to_owned()], true)
            .await
        {
            let e = bus.classify("DisableUnitFiles", Some(name), e);
            let gone = matches!(&e, Error::Method { source, .. }
                if source.name == BusError::NO_SUCH_UNIT
                    || source.name == "org.freedesktop.DBus.Error.FileNotFound");
            if !gone {
                return Err(e);
            }
        }
        if let Err(e) = bus.manager.reset_failed_unit(name.to_owned()).await {
            let e = bus.classify("ResetFailedUnit", Some(name), e);
            if !e.is_no_such_unit() {
                return Err(e);
            }
        }
        let dir = self.shared.cfg.units_dir.clone();
        let owned = name.to_owned();
        blocking(move || files::remove(&dir, &owned)).await
    }

    async fn reload(&self) -> Result<(), Error> {
        let bus = self.bus().await?;
        bus.manager
            .reload()
            .await
            .map_err(|e| bus.classify("Reload", None, e))
    }

    async fn start(&self, name: &str) -> Result<JobResult, Error> {
        self.job("StartUnit", name).await
    }

    async fn stop(&self, name: &str) -> Result<JobResult, Error> {
        self.job("StopUnit", name).await
    }

    async fn states(&self, names: &[String]) -> Result<BTreeMap<String, UnitStatus>, Error> {
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let bus = self.bus().await?;
        bus.states(names).await
    }

    async fn unit_files(&self) -> Result<BTreeMap<String, String>, Error> {
        let dir = self.shared.cfg.units_dir.clone();
        blocking(move || files::list(&dir)).await
    }

    async fn main_pid(&self, name: &str) -> Result<u32, Error> {
        if !name.ends_with(".service") {
            return Ok(0);
        }
        let bus = self.bus().await?;
        let path = match bus.manager.get_unit(name.to_owned()).await {
            Ok(path) => path,
            Err(e) => {
                let e = bus.classify("GetUnit", Some(name), e);
                return if e.is_no_such_unit() { Ok(0) } else { Err(e) };
            }
        };
        let pid = async {
            uncached::<ServiceProxy>(&bus.conn, path)
                .await?
                .main_pid()
                .await
        }
        .await;
        match pid {
            Ok(pid) => Ok(pid),
            Err(e) => match bus.classify("MainPID", Some(name), e) {
                // The unit was garbage-collected between the two calls.
                Error::Method { source, .. }
                    if source
                        .name
                        .starts_with("org.freedesktop.DBus.Error.Unknown") =>
                {
                    Ok(0)
                }
                e => Err(e),
            },
        }
    }

    async fn subscribe(
        &self,
        filter: UnitFilter,
    ) -> Result<mpsc::Receiver<UnitStateChange>, Error> {
        let bus = self.bus().await?;
        let classify = |e| bus.classify("Subscribe", None, e);
        // Every signal systemd sends: unit PropertiesChanged, UnitRemoved, JobRemoved and
        // Reloading, in one ordered stream.
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(SYSTEMD)
            .build()
            .map_err(classify)?;
        let stream = zbus::MessageStream::for_match_rule(rule, &bus.conn, NonZeroUsize::new(1024))
            .await
            .map_err(classify)?;

        let (tx, rx) = mpsc::channel(SUBSCRIBE_CAPACITY);
        let signals = Arc::new(Coalescer::new());
        let states = Arc::new(Coalescer::new());
        tokio::spawn(drain_signals(stream, filter, signals.clone(), tx.clone()));
        tokio::spawn(resolve_states(bus.clone(), signals, states.clone()));
        tokio::spawn(forward(states, tx));
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_unescape() {
        let name = |p: &str| unit_name_from_path(p);
        assert_eq!(
            name("/org/freedesktop/systemd1/unit/hello_2eservice").as_deref(),
            Some("hello.service")
        );
        assert_eq!(
            name("/org/freedesktop/systemd1/unit/a_2db_40x_2eservice").as_deref(),
            Some("a-b@x.service")
        );
        assert_eq!(name("/org/freedesktop/systemd1/unit/bad_2"), None);
        assert_eq!(name("/org/freedesktop/systemd1/job/12"), None);
    }

    #[test]
    fn job_results_are_routed_to_waiters_or_remembered() {
        let jobs = Jobs::default();
        jobs.finish("/job/1".into(), "done".into());
        assert!(matches!(jobs.wait("/job/1"), Wait::Finished(r) if r == "done"));
        let Wait::Pending(mut rx) = jobs.wait("/job/2") else {
            panic!("job 2 has not finished")
        };
        jobs.finish("/job/2".into(), "failed".into());
        assert_eq!(rx.try_recv().unwrap(), "failed");
        let Wait::Pending(mut rx) = jobs.wait("/job/3") else {
            panic!("job 3 has not finished")
        };
        jobs.close();
        assert!(rx.try_recv().is_err());
        assert!(matches!(jobs.wait("/job/4"), Wait::Closed));
    }
}
