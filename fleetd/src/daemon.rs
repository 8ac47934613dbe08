//! The one place that wires fleetd together.
//!
//! [`main`] takes the API listeners (socket activation, else the `listen`
//! option) for the life of the process, turns signals into requests and runs
//! *generations* of components. A generation builds the etcd client, the
//! systemd manager and the registry, then spawns the heart, the publisher,
//! the agent, the engine and the API server (on duplicates of the
//! listeners), each with its own span, under one cancellation token. [`run`]
//! is one generation that ends with a shutdown future (for tests).
//!
//! Signals: SIGHUP reads the config again; if it loads, the generation stops
//! *without* purging and a new one starts with it (the units keep running
//! and are adopted, the machine re-registers under its token, the sockets
//! are never closed); if it does not, the error is logged and nothing
//! changes. SIGUSR1 logs the agent's, the publisher's and the engine's state
//! as one JSON line. With `WatchdogSec=` set, `WATCHDOG=1` is sent at half
//! the interval.
//!
//! Startup: `READY=1` is sent once a generation is initialised (config
//! loaded, listeners taken, systemd connected, components spawned), not once
//! the machine is registered: registering waits for etcd for as long as it
//! takes, and systemd would otherwise kill fleetd after its start timeout.
//! `STATUS=` says what fleetd waits for. The API answers 503 until the
//! machine is registered, and the agent and the engine are only spawned
//! then: fleetd never starts, stops or writes a unit before its machine ID is
//! its own (another host with the same ID is refused first).
//!
//! Shutdown (SIGTERM/SIGINT) is ordered, as fleet's is: the API stops
//! accepting first; the loops are cancelled; then, if fleetd is stopped for
//! good, the purge: the agent stops and unloads this machine's units and the
//! heart revokes the machine lease (presence and unit states go with it);
//! the engine released its leadership when it was cancelled. Whether it is
//! stopped for good is asked of systemd ([`Departure`]): the job systemd runs
//! on fleetd's own unit tells `systemctl restart` (an upgrade; no purge, the
//! next fleetd adopts the units) from `systemctl stop` or a shutdown (purge).
//! A fleetd that never registered its machine purges nothing: it never took
//! charge of any unit. A loop that fails for good cancels everything
//! *without* purging and makes fleetd exit non-zero, so systemd restarts it
//! and the running units are adopted, not restarted.

use std::future::Future;
use std::io::Read;
use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use systemd::{DbusConfig, DbusManager, ProcessUnit, SystemdManager};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::agent::{Agent, AgentConfig, Heart, HeartHandle, Publisher, PublisherConfig};
use crate::api::{self, ApiOptions, Listener};
use crate::client::RegistryClient;
use crate::config::{Config, ListenAddr};
use crate::engine::{Engine, EngineConfig, EngineSnapshot};
use crate::registry::cache::CacheMode;
use crate::registry::etcd::EtcdConnectOptions;
use crate::registry::{EtcdKv, Kv, Registry};
use crate::schema::{Capabilities, MachineId, MachineRecord};

/// How long the purge and the final drain may take before fleetd exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

/// How long to wait for systemd to say how it is stopping fleetd.
const DEPARTURE_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets up logging: `RUST_LOG` if set, else info (debug when `verbosity > 0`),
/// on stderr without timestamps (journald adds them).
pub fn init_logging(verbosity: u8) {
    let default = if verbosity > 0 { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_ansi(false)
        .init();
}

/// What the signal handler asks of the running daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    /// SIGTERM/SIGINT: stop, purge, exit 0.
    Shutdown,
    /// SIGHUP: read the config again and restart the components with it,
    /// keeping the API listeners.
    Reload,
    /// SIGUSR1: log every component's state as JSON.
    Dump,
}

/// How one generation of components ended.
enum Ended {
    /// Shut down and purged.
    Shutdown,
    /// Stopped (no purge) to start again with this config.
    Reload(Box<Config>),
}

/// fleetd's main: listeners, signals, then generations of components: the
/// first with `config`, and after each SIGHUP one with the config `reload`
/// returns (a config that does not load is logged and the running
/// generation kept). The API listeners live as long as the process.
pub async fn main(
    config: Config,
    reload: impl Fn() -> anyhow::Result<Config> + Sync,
) -> anyhow::Result<()> {
    let listeners = Listeners::take(listeners(&config).await?)?;
    let (control_tx, mut control) = mpsc::unbounded_channel();
    let signals = signal_task(control_tx)?;
    let watchdog = watchdog_task();
    let registered = AtomicBool::new(false);
    let mut config = config;
    let result = loop {
        let generation = match listeners.for_generation() {
            Ok(l) => l,
            Err(e) => break Err(e),
        };
        match run_generation(
            config.clone(),
            generation,
            &mut control,
            &reload,
            &registered,
        )
        .await
        {
            Ok(Ended::Shutdown) => break Ok(()),
            Ok(Ended::Reload(new)) => {
                if new.listen != config.listen {
                    warn!(
                        "the listen option changed; the API keeps its current sockets until fleet restarts"
                    );
                }
                config = *new;
                info!(config_file = ?config.config_file, "starting the components with the reloaded configuration");
            }
            Err(e) => break Err(e),
        }
    };
    signals.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    result
}

/// The API listeners: those systemd passed (`LISTEN_FDS`), else our own from
/// the `listen` option.
async fn listeners(config: &Config) -> anyhow::Result<Vec<Listener>> {
    let activated = api::from_listen_fds().context("cannot take the activated sockets")?;
    if !activated.is_empty() {
        for l in &activated {
            info!(listener = %l.describe(), "serving the API on an activated socket");
        }
        return Ok(activated);
    }
    let mut out = Vec::new();
    for addr in &config.listen {
        let listener = match addr {
            ListenAddr::Unix(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                api::bind_unix(path).with_context(|| format!("cannot listen on {addr}"))?
            }
            ListenAddr::Tcp { host, port } => api::bind_tcp((host.as_str(), *port))
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        };
        info!(listener = %listener.describe(), "serving the API");
        out.push(listener);
    }
    Ok(out)
}

/// The API sockets, held for the life of the process: each generation of
/// components serves duplicates of them, so a reload never closes a socket
/// (connections arriving meanwhile wait in the backlog).
struct Listeners(Vec<StdListener>);

/// A listening socket outside the runtime (a duplicate is registered with
/// the reactor per generation).
enum StdListener {
    /// A unix stream socket.
    Unix(std::os::unix::net::UnixListener),
    /// A TCP socket.
    Tcp(std::net::TcpListener),
}

impl Listeners {
    /// Takes the listeners out of the runtime.
    fn take(listeners: Vec<Listener>) -> anyhow::Result<Self> {
        listeners
            .into_iter()
            .map(|l| {
                Ok(match l {
                    Listener::Unix(l) => StdListener::Unix(l.into_std()?),
                    Listener::Tcp(l) => StdListener::Tcp(l.into_std()?),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map(Listeners)
            .context("cannot take over the API sockets")
    }

    /// Duplicates of every socket, registered with the runtime.
    fn for_generation(&self) -> anyhow::Result<Vec<Listener>> {
        self.0
            .iter()
            .map(|l| {
                Ok(match l {
                    StdListener::Unix(l) => {
                        Listener::Unix(tokio::net::UnixListener::from_std(l.try_clone()?)?)
                    }
                    StdListener::Tcp(l) => {
                        Listener::Tcp(tokio::net::TcpListener::from_std(l.try_clone()?)?)
                    }
                })
            })
            .collect::<std::io::Result<Vec<_>>>()
            .context("cannot duplicate the API sockets")
    }
}

/// Turns signals into [`Control`] requests: SIGTERM and SIGINT shut down,
/// SIGHUP reloads, SIGUSR1 dumps the state.
fn signal_task(
    control: mpsc::UnboundedSender<Control>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    Ok(tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); Control::Shutdown }
                _ = int.recv() => { info!("SIGINT: shutting down"); Control::Shutdown }
                _ = hup.recv() => { info!("SIGHUP: reloading the configuration"); Control::Reload }
                _ = usr1.recv() => Control::Dump,
            };
            if control.send(request).is_err() || request == Control::Shutdown {
                return;
            }
        }
    }))
}

/// Sends `WATCHDOG=1` at half the interval systemd asked for
/// (`WatchdogSec=`, passed as `WATCHDOG_USEC`), for the life of the process.
/// The pings come from the runtime itself, so a wedged runtime stops them
/// and systemd restarts fleetd. `None` when no watchdog is set.
fn watchdog_task() -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let period = (interval / 2).max(Duration::from_millis(100));
    info!(?interval, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                warn!("cannot ping the systemd watchdog: {e}");
            }
        }
    }))
}

/// Runs fleetd until `shutdown` completes (then purges and returns `Ok`) or a
/// component fails for good (then returns the error without purging). One
/// generation, no reloads: what tests run in-process.
pub async fn run(
    config: Config,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (tx, mut control) = mpsc::unbounded_channel();
    let forward = async move {
        shutdown.await;
        // The receiver outlives this future (both end with the select).
        let _ = tx.send(Control::Shutdown);
        std::future::pending::<()>().await;
    };
    let no_reload = || anyhow::bail!("reloading is not supported here");
    let registered = AtomicBool::new(false);
    tokio::select! {
        result = run_generation(config, listeners, &mut control, &no_reload, &registered) => result.map(|_| ()),
        () = forward => Ok(()),
    }
}

/// The settings of each component, all derived from the config here and
/// nowhere else.
#[derive(Clone, Debug)]
struct Settings {
    /// The systemd connection: system or user manager, the units directory.
    systemd: DbusConfig,
    /// How to reach etcd: request timeout, TLS files, credentials.
    etcd: EtcdConnectOptions,
    /// The agent: its cache polls instead of watching with `disable_watches`.
    agent: AgentConfig,
    /// The publisher of unit states, paced by `agent_ttl`.
    publisher: PublisherConfig,
    /// The engine: interval, `disable_engine`, cache mode.
    engine: EngineConfig,
    /// The API's page size (its readiness signal is made per generation).
    token_limit: u16,
}

impl Settings {
    fn from_config(config: &Config) -> Settings {
        Settings {
            systemd: DbusConfig {
                bus_address: None,
                user: config.systemd_user,
                units_dir: config.units_directory.clone(),
                units_dir_in_systemd: config.units_directory.clone(),
                ..DbusConfig::default()
            },
            etcd: EtcdConnectOptions {
                ca_file: config.etcd_cafile.clone(),
                cert_file: config.etcd_certfile.clone(),
                key_file: config.etcd_keyfile.clone(),
                username: config.etcd_username.clone(),
                password: config.etcd_password.clone(),
                ..EtcdConnectOptions::new(config.etcd_request_timeout)
            },
            agent: AgentConfig {
                // disable_watches: poll the schedule every reconcile interval.
                cache: CacheMode::from_disable_watches(
                    config.disable_watches,
                    AgentConfig::default().reconcile_interval,
                ),
                ..AgentConfig::default()
            },
            publisher: PublisherConfig::from_agent_ttl(config.agent_ttl),
            engine: EngineConfig::from_config(config),
            token_limit: config.token_limit,
        }
    }
}

/// One generation of components: builds and spawns them with `config`, then
/// serves `control` until a shutdown ([`Ended::Shutdown`], with a purge
/// unless systemd is restarting fleetd or the machine never registered, see
/// [`Departure`]), a reload with a config that loads (stop without purging,
/// [`Ended::Reload`]), or a component failing for good (`Err`, no purge). A
/// closed `control` means shutdown. `registered` is set once any generation
/// of this process has registered the machine.
async fn run_generation(
    config: Config,
    listeners: Vec<Listener>,
    control: &mut mpsc::UnboundedReceiver<Control>,
    reload: &(dyn Fn() -> anyhow::Result<Config> + Sync),
    registered: &AtomicBool,
) -> anyhow::Result<Ended> {
    let settings = Settings::from_config(&config);
    let machine = read_machine_id(&config.machine_id_file)?;
    let public_ip = config
        .public_ip
        .clone()
        .or_else(|| detect_public_ip().map(|ip| ip.to_string()));
    let token = machine_token(&config.units_directory)?;
    info!(machine = %machine, public_ip = ?public_ip, version = crate::VERSION, "starting fleetd");

    std::fs::create_dir_all(&config.units_directory).with_context(|| {
        format!(
            "cannot create units_directory {}",
            config.units_directory.display()
        )
    })?;
    let systemd = Arc::new(
        DbusManager::connect(settings.systemd)
            .await
            .context("cannot connect to systemd over D-Bus")?,
    );
    let kv = EtcdKv::connect_with(&config.etcd_servers, &settings.etcd)
        .await
        .context("cannot set up the etcd client")?;
    let registry = Registry::new(crate::registry::Metered::new(kv), &config.etcd_key_prefix);

    let record = MachineRecord {
        id: machine.clone(),
        public_ip: public_ip.unwrap_or_default(),
        metadata: config.metadata.clone(),
        capabilities: Capabilities {
            disable_engine: config.disable_engine,
            grpc: false,
        },
        version: crate::VERSION.to_owned(),
        token,
    };
    let side = MachineAgent::new(
        registry.clone(),
        systemd.clone(),
        record,
        config.agent_ttl,
        settings.agent,
        settings.publisher,
    );
    let (presence, agent, ready_rx) = (side.presence(), side.agent(), side.ready());
    let engine = Engine::new(registry.clone(), machine.clone(), settings.engine);
    let engine_state = engine.subscribe();
    let router = api::router_with_cluster(
        RegistryClient::new(registry.clone()),
        ApiOptions {
            token_limit: settings.token_limit,
            ready: ready_rx.clone(),
        },
        engine.cluster_source(),
    );

    let loops = CancellationToken::new();
    let api_stop = CancellationToken::new();
    let mut tasks: Tasks = JoinSet::new();
    {
        let stop = api_stop.clone();
        tasks.spawn(
            async move {
                let r = api::serve(router, listeners, stop.cancelled_owned()).await;
                ("api", r.context("the API server failed"))
            }
            .instrument(info_span!("api")),
        );
    }
    side.spawn(&mut tasks, &loops);
    // The engine acts for this machine ID, as the agent does: only once it
    // is ours.
    let (c, r) = (loops.clone(), ready_rx.clone());
    tasks.spawn(async move {
        (
            "engine",
            once_registered(r, &c, engine.run(c.clone())).await,
        )
    });
    let registered_now = ready_rx.clone();
    let (mut ready, c) = (ready_rx, loops.clone());
    let waiting = format!(
        "waiting for etcd ({}) to register machine {machine}",
        config.etcd_servers.join(",")
    );
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&waiting),
    ]);
    let status = async {
        let mut was = false;
        loop {
            tokio::select! {
                biased;
                () = c.cancelled() => return,
                changed = ready.changed() => if changed.is_err() { return },
            }
            let now = *ready.borrow_and_update();
            if now && !was {
                registered.store(true, Ordering::Release);
                info!("registered; fleetd is ready");
                notify(&[sd_notify::NotifyState::Status(&format!(
                    "registered as machine {machine}"
                ))]);
            } else if !now && was {
                notify(&[sd_notify::NotifyState::Status(&format!(
                    "lost the machine lease; {waiting}"
                ))]);
            }
            was = now;
        }
    };
    tokio::pin!(status);
    // The status future ends only with the generation; never poll it again.
    let mut status_done = false;

    let failure = loop {
        let request = tokio::select! {
            () = &mut status, if !status_done => { status_done = true; continue }
            request = control.recv() => request.unwrap_or(Control::Shutdown),
            Some(joined) = tasks.join_next() => break Some(match joined {
                Ok((name, Ok(()))) => anyhow::anyhow!("the {name} loop stopped unexpectedly"),
                Ok((name, Err(e))) => e.context(format!("the {name} loop failed")),
                Err(e) => anyhow::anyhow!("a task panicked: {e}"),
            }),
        };
        match request {
            Control::Shutdown => break None,
            Control::Dump => dump(&config, &agent, &engine_state).await,
            Control::Reload => match reload() {
                Ok(new) => {
                    notify_reloading();
                    stop(&api_stop, &loops, tasks).await;
                    return Ok(Ended::Reload(Box::new(new)));
                }
                Err(e) => error!("cannot reload the configuration; keeping the current one: {e:#}"),
            },
        }
    };

    if let Some(e) = failure {
        stop(&api_stop, &loops, tasks).await;
        // No purge: the units keep running and a restarted fleetd adopts them.
        return Err(e);
    }
    // Asked while everything still runs (systemd's job on fleetd's unit
    // lasts until the process exits).
    let departure = if registered.load(Ordering::Acquire) || *registered_now.borrow() {
        departure(&systemd).await
    } else {
        Departure::Stay("the machine was never registered, so fleetd took charge of no unit".into())
    };
    stop(&api_stop, &loops, tasks).await;
    let reason = match departure {
        Departure::Stay(reason) => {
            notify(&[
                sd_notify::NotifyState::Stopping,
                sd_notify::NotifyState::Status("stopping; the units keep running"),
            ]);
            info!(%reason, "leaving this machine's units running");
            info!("fleetd stopped");
            return Ok(Ended::Shutdown);
        }
        Departure::Purge(reason) => reason,
    };
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping; handing this machine's units over"),
    ]);
    info!(%reason, "purging this machine's units and presence");
    let purge = async {
        if let Err(e) = agent.purge().await {
            error!("purging units failed: {e:#}");
        }
        if let Err(e) = presence.purge().await {
            error!("removing this machine's presence failed: {e:#}");
        }
    };
    if tokio::time::timeout(SHUTDOWN_DEADLINE, purge)
        .await
        .is_err()
    {
        warn!("the purge did not finish within {SHUTDOWN_DEADLINE:?}");
    }
    info!("fleetd stopped");
    Ok(Ended::Shutdown)
}

/// The components' tasks, each returning its name and how it ended.
pub type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// One machine's agent side, wired as the daemon runs it: the heart
/// (presence on one lease of `agent_ttl`), the publisher of unit states (on
/// that lease) and the agent (following only this machine's schedule). The
/// daemon builds one per generation; the cluster simulator
/// (`tests/examples/bench_cluster.rs`) builds thousands in one process over
/// a fake systemd, so both run the same wiring.
pub struct MachineAgent<K: Kv, S: SystemdManager> {
    /// Keeps the machine registered.
    heart: Heart<K>,
    /// Reports the units' states.
    publisher: Publisher<K, S>,
    /// Drives systemd to follow the schedule.
    agent: Agent<K, S>,
    /// True while the machine is registered: gates the agent (and, in the
    /// daemon, the engine and the API).
    ready: watch::Receiver<bool>,
}

impl<K: Kv, S: SystemdManager> MachineAgent<K, S> {
    /// The agent side of the machine `record` describes, driving `systemd`.
    pub fn new(
        registry: Registry<K>,
        systemd: Arc<S>,
        record: MachineRecord,
        agent_ttl: Duration,
        agent: AgentConfig,
        publisher: PublisherConfig,
    ) -> Self {
        let machine = record.id.clone();
        let (ready_tx, ready) = watch::channel(false);
        let heart = Heart::new(registry.clone(), record, agent_ttl, ready_tx);
        let (publisher, publisher_handle) = Publisher::new(
            registry.clone(),
            systemd.clone(),
            machine.clone(),
            heart.leases(),
            publisher,
        );
        let agent = Agent::new(registry, systemd, machine, agent, publisher_handle);
        MachineAgent {
            heart,
            publisher,
            agent,
            ready,
        }
    }

    /// The agent, for the purge and state dumps.
    pub fn agent(&self) -> Agent<K, S> {
        self.agent.clone()
    }

    /// The heart's handle, for the purge of the machine's presence.
    pub fn presence(&self) -> HeartHandle<K> {
        self.heart.handle()
    }

    /// Whether the machine is registered.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Spawns the heart, the publisher and the agent on `tasks` until
    /// `cancel`; the agent only once the machine is registered (it acts for
    /// this machine ID only once the ID is ours).
    pub fn spawn(self, tasks: &mut Tasks, cancel: &CancellationToken) {
        let MachineAgent {
            heart,
            publisher,
            agent,
            ready,
        } = self;
        let c = cancel.clone();
        tasks.spawn(async move { ("heart", heart.run(c).await) });
        let c = cancel.clone();
        tasks.spawn(async move { ("publisher", publisher.run(c).await) });
        let c = cancel.clone();
        tasks.spawn(async move {
            (
                "agent",
                once_registered(ready, &c, agent.run(c.clone())).await,
            )
        });
    }
}

/// Stops a generation: the API stops accepting, the loops are cancelled and
/// drained under [`SHUTDOWN_DEADLINE`]. Units are left as they are.
async fn stop(api_stop: &CancellationToken, loops: &CancellationToken, mut tasks: Tasks) {
    api_stop.cancel();
    loops.cancel();
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((name, Err(e))) => warn!(component = name, "stopped with an error: {e:#}"),
                Ok(_) => {}
                Err(e) => warn!("a task panicked while stopping: {e}"),
            }
        }
    };
    if tokio::time::timeout(SHUTDOWN_DEADLINE, drain)
        .await
        .is_err()
    {
        warn!("components did not stop within {SHUTDOWN_DEADLINE:?}");
    }
}

/// Tells systemd a reload is under way (`READY=1` follows once the new
/// generation is initialised).
fn notify_reloading() {
    let mut states = vec![sd_notify::NotifyState::Reloading];
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}

/// Everything a state dump holds (SIGUSR1).
#[derive(Serialize)]
struct Dump<'a> {
    /// The config file in use.
    config_file: Option<&'a Path>,
    /// The agent, with its publisher.
    agent: crate::agent::AgentSnapshot,
    /// The engine.
    engine: EngineSnapshot,
}

/// Logs the agent's (with its publisher's) and the engine's state as one
/// line of JSON.
async fn dump<K: crate::registry::Kv, S: systemd::SystemdManager>(
    config: &Config,
    agent: &Agent<K, S>,
    engine: &watch::Receiver<EngineSnapshot>,
) {
    let engine = engine.borrow().clone();
    let state = Dump {
        config_file: config.config_file.as_deref(),
        agent: agent.snapshot().await,
        engine,
    };
    match serde_json::to_string(&state) {
        Ok(json) => info!(target: "fleetd::dump", state = %json, "SIGUSR1: state dump"),
        Err(e) => warn!("cannot serialize the state dump: {e}"),
    }
}

/// Sends `states` to systemd's notification socket. Never fails the daemon
/// (outside systemd there is nobody to tell).
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("cannot notify systemd: {e}");
    }
}

/// What a SIGTERM or SIGINT means for this machine's units.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Departure {
    /// fleetd comes back (systemd restarts it): leave the units running for
    /// the next fleetd to adopt, and the machine lease to be taken back (by
    /// the token) or to expire.
    Stay(String),
    /// fleetd is stopped for good: stop and unload the units and remove the
    /// machine's presence, so the engine places them elsewhere at once.
    Purge(String),
}

/// Asks systemd how it is stopping this process (see [`departure_of`]). When
/// systemd cannot be asked, purges, as the original always did.
async fn departure(systemd: &DbusManager) -> Departure {
    let pid = std::process::id();
    match tokio::time::timeout(DEPARTURE_QUERY_TIMEOUT, systemd.unit_of_process(pid)).await {
        Ok(Ok(unit)) => departure_of(&unit, pid),
        Ok(Err(e)) => Departure::Purge(format!(
            "cannot ask systemd how it is stopping fleetd: {}",
            crate::agent::error_chain(&e)
        )),
        Err(_) => Departure::Purge(format!(
            "systemd did not say within {DEPARTURE_QUERY_TIMEOUT:?} how it is stopping fleetd"
        )),
    }
}

/// Decides from fleetd's own unit (the one process `pid` belongs to) what a
/// SIGTERM/SIGINT means:
/// - not the main process of a service (run from a terminal, in a scope):
///   purge, as the original did on Ctrl-C;
/// - a `restart` or `try-restart` job (`systemctl restart`, upgrades):
///   stay;
/// - a `stop` job (`systemctl stop`, shutdown, isolate): purge;
/// - no job (a plain `kill -TERM`, `systemctl kill`) or another job (a
///   failed start): stay if `Restart=` brings fleetd back after a clean
///   exit (`always`, `on-success`, as shipped), else purge.
fn departure_of(unit: &ProcessUnit, pid: u32) -> Departure {
    if unit.main_pid != Some(pid) {
        return Departure::Purge(format!(
            "fleetd is not the main process of a systemd service (it runs in {})",
            unit.unit
        ));
    }
    match unit.job_type.as_deref() {
        Some(job @ ("restart" | "try-restart")) => {
            Departure::Stay(format!("systemd is restarting {} (a {job} job)", unit.unit))
        }
        Some("stop") => Departure::Purge(format!("systemd is stopping {}", unit.unit)),
        job => {
            let restart = unit.restart.as_deref().unwrap_or("no");
            let job = job.map_or_else(|| "no job".to_owned(), |j| format!("a {j} job"));
            if matches!(restart, "always" | "on-success") {
                Departure::Stay(format!(
                    "{} has {job} and Restart={restart}: systemd starts fleetd again",
                    unit.unit
                ))
            } else {
                Departure::Purge(format!(
                    "{} has {job} and Restart={restart}: fleetd does not come back",
                    unit.unit
                ))
            }
        }
    }
}

/// Runs `component` once the machine is registered (`ready` turns true);
/// `Ok` without running it if `cancel` fires first.
async fn once_registered(
    mut ready: watch::Receiver<bool>,
    cancel: &CancellationToken,
    component: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let registered = tokio::select! {
        r = ready.wait_for(|r| *r) => r.is_ok(),
        () = cancel.cancelled() => return Ok(()),
    };
    if !registered {
        // The heart is gone; its own result says why.
        cancel.cancelled().await;
        return Ok(());
    }
    component.await
}

/// Reads this machine's ID (trimmed) from `path`.
pub fn read_machine_id(path: &Path) -> anyhow::Result<MachineId> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the machine ID from {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("bad machine ID in {}", path.display()))
}

/// The token that tells this fleetd installation apart from another host
/// with the same machine ID: kept next to the units directory (under `/run`,
/// so it lives as long as the boot), created on first use.
fn machine_token(units_directory: &Path) -> anyhow::Result<String> {
    let dir: PathBuf = units_directory
        .parent()
        .map_or_else(|| PathBuf::from("/run/fleet"), Path::to_path_buf);
    let path = dir.join("machine-token");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let t = text.trim();
        if !t.is_empty() {
            return Ok(t.to_owned());
        }
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(&path, &token).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// The source address this host uses towards its default gateway: the first
/// address of the default route's interface, as fleet auto-detects it. No
/// packet is sent (a UDP `connect` only picks a route).
fn detect_public_ip() -> Option<IpAddr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let gateway = routes.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 2 && f[1] == "00000000" {
            u32::from_str_radix(f[2], 16).ok()
        } else {
            None
        }
    })?;
    let gateway = std::net::Ipv4Addr::from(gateway.swap_bytes());
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect((gateway, 9)).ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(IpAddr::V4(ip)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every component's settings follow the config options they come from.
    #[test]
    fn settings_follow_the_config() {
        let config = Config {
            systemd_user: true,
            units_directory: PathBuf::from("/tmp/units"),
            etcd_request_timeout: Duration::from_millis(1500),
            etcd_cafile: Some(PathBuf::from("/ca.pem")),
            etcd_username: Some("root".to_owned()),
            etcd_password: Some("pw".to_owned()),
            agent_ttl: Duration::from_secs(40),
            engine_reconcile_interval: Duration::from_secs(3),
            disable_engine: true,
            disable_watches: true,
            token_limit: 7,
            ..Config::default()
        };
        let s = Settings::from_config(&config);
        assert!(s.systemd.user);
        assert_eq!(s.systemd.units_dir, PathBuf::from("/tmp/units"));
        assert_eq!(s.systemd.units_dir_in_systemd, PathBuf::from("/tmp/units"));
        assert_eq!(s.etcd.request_timeout, Duration::from_millis(1500));
        assert_eq!(s.etcd.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(s.etcd.cert_file, None);
        assert_eq!(s.etcd.username.as_deref(), Some("root"));
        assert_eq!(s.etcd.password.as_deref(), Some("pw"));
        assert_eq!(
            s.agent.cache,
            CacheMode::Poll(AgentConfig::default().reconcile_interval)
        );
        assert_eq!(s.publisher.resync_interval, Duration::from_secs(20));
        assert_eq!(s.engine.reconcile_interval, Duration::from_secs(3));
        assert!(s.engine.disabled);
        assert_eq!(s.engine.cache, CacheMode::Poll(Duration::from_secs(3)));
        assert_eq!(s.token_limit, 7);

        let s = Settings::from_config(&Config::default());
        assert!(!s.systemd.user);
        assert_eq!(s.agent.cache, CacheMode::Watch);
        assert_eq!(s.engine.cache, CacheMode::Watch);
    }

    fn unit(main_pid: Option<u32>, job: Option<&str>, restart: Option<&str>) -> ProcessUnit {
        ProcessUnit {
            unit: "fleet.service".into(),
            main_pid,
            job_type: job.map(str::to_owned),
            restart: restart.map(str::to_owned),
        }
    }

    /// The agent and the engine run only once the machine is registered,
    /// and not at all if fleetd stops first.
    #[tokio::test(start_paused = true)]
    async fn components_wait_for_registration() {
        let (ready_tx, ready) = watch::channel(false);
        let cancel = CancellationToken::new();
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                once_registered(ready, &cancel, async move {
                    r.store(true, Ordering::SeqCst);
                    Ok(())
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!ran.load(Ordering::SeqCst), "ran before registration");
        ready_tx.send_replace(true);
        task.await.expect("no panic").expect("component result");
        assert!(ran.load(Ordering::SeqCst));

        let (_ready_tx, ready) = watch::channel(false);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let result = once_registered(ready, &cancel, async {
            panic!("ran although fleetd stopped before registering")
        })
        .await;
        assert!(result.is_ok());
    }

    /// What each way of stopping fleetd means for the units.
    #[test]
    fn departure_follows_the_job_systemd_runs_on_fleetds_unit() {
        let stays = |u: &ProcessUnit| matches!(departure_of(u, 7), Departure::Stay(_));
        let always = Some("always");
        // systemctl restart / try-restart, upgrades.
        assert!(stays(&unit(Some(7), Some("restart"), always)));
        assert!(stays(&unit(Some(7), Some("try-restart"), always)));
        // systemctl stop, shutdown.
        assert!(!stays(&unit(Some(7), Some("stop"), always)));
        // kill -TERM: systemd starts it again only with a restarting policy.
        assert!(stays(&unit(Some(7), None, always)));
        assert!(stays(&unit(Some(7), None, Some("on-success"))));
        assert!(!stays(&unit(Some(7), None, Some("no"))));
        assert!(!stays(&unit(Some(7), None, Some("on-failure"))));
        // A start job failing (start timeout) under Restart=always.
        assert!(stays(&unit(Some(7), Some("start"), always)));
        // Not the service's main process (a terminal's scope, a child).
        assert!(!stays(&unit(None, None, None)));
        assert!(!stays(&unit(Some(8), Some("restart"), always)));
    }

    /// A reload stops one generation's API and starts the next on the same
    /// sockets: a socket taken once keeps accepting through generations.
    #[tokio::test]
    async fn listeners_outlive_generations() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("api.sock");
        let held = Listeners::take(vec![
            api::bind_tcp(("127.0.0.1", 0)).await?,
            api::bind_unix(&path)?,
        ])?;
        let first = held.for_generation()?;
        let addr = first[0].tcp_addr().context("a TCP listener")?;
        drop(first);
        // Between generations, connections wait in the backlog.
        let early = tokio::net::TcpStream::connect(addr).await?;
        let second = held.for_generation()?;
        let (Listener::Tcp(tcp), Listener::Unix(unix)) = (&second[0], &second[1]) else {
            anyhow::bail!("listeners changed kind: {second:?}");
        };
        let (accepted, _) = tcp.accept().await?;
        assert_eq!(accepted.peer_addr()?, early.local_addr()?);
        let _client = tokio::net::UnixStream::connect(&path).await?;
        unix.accept().await?;
        Ok(())
    }
}
