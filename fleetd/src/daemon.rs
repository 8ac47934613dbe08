//! The one place that wires fleetd together.
//!
//! [`main`] takes the API listeners (socket activation, else the `listen`
//! option), turns signals into a shutdown future and calls [`run`]. [`run`]
//! builds the etcd client, the systemd manager and the registry, then spawns
//! the heart, the publisher, the agent, the engine and the API server, each
//! with its own span, under one cancellation token.
//!
//! Shutdown (SIGTERM/SIGINT) is ordered, as fleet's is: the API stops
//! accepting first; the loops are cancelled; then the purge: the agent stops
//! and unloads this machine's units and the heart revokes the machine lease
//! (presence and unit states go with it); the engine released its leadership
//! when it was cancelled. A loop that fails for good cancels everything
//! *without* purging and makes fleetd exit non-zero, so systemd restarts it
//! and the running units are adopted, not restarted.

use std::future::Future;
use std::io::Read;
use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use systemd::{DbusConfig, DbusManager};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::agent::{Agent, AgentConfig, Heart, Publisher, PublisherConfig};
use crate::api::{self, ApiOptions, Listener};
use crate::client::RegistryClient;
use crate::config::{Config, ListenAddr};
use crate::engine::{Engine, EngineConfig};
use crate::registry::{EtcdKv, Registry};
use crate::schema::{Capabilities, MachineId, MachineRecord};

/// How long the purge and the final drain may take before fleetd exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

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

/// fleetd's main: listeners, signals, then [`run`].
pub async fn main(config: Config) -> anyhow::Result<()> {
    let listeners = listeners(&config).await?;
    let shutdown = CancellationToken::new();
    let signals = signal_task(shutdown.clone())?;
    let result = run(config, listeners, shutdown.cancelled_owned()).await;
    signals.abort();
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

/// SIGTERM and SIGINT cancel `shutdown`. SIGHUP and SIGUSR1 are logged.
fn signal_task(shutdown: CancellationToken) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => {
                    warn!("SIGHUP: reloading the configuration in place is not supported yet; restart fleet to apply changes");
                }
            }
        }
        shutdown.cancel();
    }))
}

/// Runs fleetd until `shutdown` completes (then purges and returns `Ok`) or a
/// component fails for good (then returns the error without purging).
pub async fn run(
    config: Config,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let machine = read_machine_id(&config.machine_id_file)?;
    let public_ip = config.public_ip.or_else(detect_public_ip);
    let token = machine_token(&config.units_directory)?;
    info!(machine = %machine, public_ip = ?public_ip, version = crate::VERSION, "starting fleetd");

    std::fs::create_dir_all(&config.units_directory).with_context(|| {
        format!(
            "cannot create units_directory {}",
            config.units_directory.display()
        )
    })?;
    let systemd = Arc::new(
        DbusManager::connect(DbusConfig {
            bus_address: None,
            user: config.systemd_user,
            units_dir: config.units_directory.clone(),
            units_dir_in_systemd: config.units_directory.clone(),
            ..DbusConfig::default()
        })
        .await
        .context("cannot connect to systemd over D-Bus")?,
    );
    let kv = EtcdKv::connect(&config.etcd_servers, config.etcd_request_timeout)
        .await
        .context("cannot set up the etcd client")?;
    let registry = Registry::new(kv, &config.etcd_key_prefix);

    let record = MachineRecord {
        id: machine.clone(),
        public_ip: public_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        metadata: config.metadata.clone(),
        capabilities: Capabilities {
            disable_engine: config.disable_engine,
            grpc: false,
        },
        version: crate::VERSION.to_owned(),
        token,
    };
    let (ready_tx, ready_rx) = watch::channel(false);
    let heart = Heart::new(registry.clone(), record, config.agent_ttl, ready_tx);
    let presence = heart.handle();
    let (publisher, publisher_handle) = Publisher::new(
        registry.clone(),
        systemd.clone(),
        machine.clone(),
        heart.leases(),
        PublisherConfig::from_agent_ttl(config.agent_ttl),
    );
    let agent = Agent::new(
        registry.clone(),
        systemd.clone(),
        machine.clone(),
        AgentConfig::default(),
        publisher_handle,
    );
    let engine = Engine::new(
        registry.clone(),
        machine.clone(),
        EngineConfig::from_config(&config),
    );
    let router = api::router(
        RegistryClient::new(registry.clone()),
        ApiOptions {
            token_limit: config.token_limit,
            ready: ready_rx.clone(),
        },
    );

    let loops = CancellationToken::new();
    let api_stop = CancellationToken::new();
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
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
    let c = loops.clone();
    tasks.spawn(async move { ("heart", heart.run(c).await) });
    let c = loops.clone();
    tasks.spawn(async move { ("publisher", publisher.run(c).await) });
    let c = loops.clone();
    let a = agent.clone();
    tasks.spawn(async move { ("agent", a.run(c).await) });
    let c = loops.clone();
    tasks.spawn(async move { ("engine", engine.run(c).await) });
    tasks.spawn(notify_ready(ready_rx, loops.clone()));

    tokio::pin!(shutdown);
    let failure = tokio::select! {
        () = &mut shutdown => None,
        Some(joined) = tasks.join_next() => Some(match joined {
            Ok((name, Ok(()))) => anyhow::anyhow!("the {name} loop stopped unexpectedly"),
            Ok((name, Err(e))) => e.context(format!("the {name} loop failed")),
            Err(e) => anyhow::anyhow!("a task panicked: {e}"),
        }),
    };

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
    if let Some(e) = failure {
        // No purge: the units keep running and a restarted fleetd adopts them.
        return Err(e);
    }
    info!("purging this machine's units and presence");
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
    Ok(())
}

/// Tells systemd `READY=1` once the machine is registered. Never fails the
/// daemon (outside systemd there is nobody to tell).
async fn notify_ready(
    mut ready: watch::Receiver<bool>,
    cancel: CancellationToken,
) -> (&'static str, anyhow::Result<()>) {
    tokio::select! {
        r = ready.wait_for(|r| *r) => {
            if r.is_ok() {
                if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                    warn!("cannot notify systemd: {e}");
                }
                info!("registered; fleetd is ready");
            }
        }
        () = cancel.cancelled() => {}
    }
    // Stay alive until shutdown, so finishing is not mistaken for a failure.
    cancel.cancelled().await;
    ("notify", Ok(()))
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
