//! A real etcd (Debian's `etcd-server`, 3.4) on free ports, with its data in a
//! temporary directory under `/dev/shm`.
//!
//! Startup follows testbed.md §1: a single member with
//! `--heartbeat-interval 10 --election-timeout 100` on tmpfs is healthy in
//! about 100 ms. Health is polled with a plain HTTP `GET /health`.
//!
//! etcd runs under a tiny `sh` guardian whose stdin is a pipe from this
//! process. When the guardian reads end-of-file (the [`Etcd`] was dropped, or
//! the test process died, even by SIGKILL or a panic in a static fixture) it
//! SIGKILLs etcd by PID and removes the directory. So no etcd outlives its
//! test, and [`shared`] can keep one etcd in a `static` for a whole test
//! binary. The guardian ignores SIGINT, so Ctrl-C on `cargo test` still ends
//! in a clean-up instead of an orphaned etcd.
//!
//! Outage tests use [`Etcd::stop`] (SIGTERM), [`Etcd::kill`] (SIGKILL) and
//! [`Etcd::restart`], which keep the data and the ports.
//!
//! [`EtcdCluster`] runs several members (peers on 127.0.0.1, clients also on
//! the extra listen addresses), each an [`Etcd`] with its own guardian, so
//! any one of them can be killed and brought back with its data while the
//! others keep quorum. [`EtcdCluster::leader`] asks each member's
//! maintenance status which one leads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};

use crate::util::{free_ports, require_tool, unique_name};

/// How long etcd may take to become healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

/// How long a graceful stop may take before SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Attempts with fresh ports when the chosen ones turn out to be taken.
const PORT_ATTEMPTS: usize = 5;

/// The guardian: starts etcd (`$1` with the remaining arguments), prints its
/// PID, then waits for a line (or EOF) on stdin; kills etcd; removes the
/// directory unless told `keep`.
const GUARDIAN: &str = r#"trap '' INT HUP
bin=$1; shift
"$bin" "$@" >>"$TB_ETCD_DIR/etcd.log" 2>&1 </dev/null &
pid=$!
echo "$pid"
read -r cmd
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
[ "$cmd" = keep ] || rm -rf "$TB_ETCD_DIR"
"#;

/// Raft timing of a single member: a heartbeat every 10 ms, an election
/// after 100 ms without one.
const SINGLE_TIMING: (&str, &str) = ("10", "100");

/// Raft timing of cluster members: a little slower than a single member's, so
/// a busy 2-core CI machine does not trigger elections at random, and still
/// a new leader within a few hundred milliseconds.
const CLUSTER_TIMING: (&str, &str) = ("20", "200");

/// How long [`EtcdCluster::leader`] waits for the members to agree on one.
const LEADER_WITHIN: Duration = Duration::from_secs(10);

/// Where etcd listens besides 127.0.0.1.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Extra addresses to serve clients on, e.g. a bridge IP that machines in
    /// network namespaces can reach. They must exist on the host.
    pub listen_ips: Vec<Ipv4Addr>,
}

/// TLS on etcd's client port (`--cert-file`, `--key-file`,
/// `--trusted-ca-file`, `--client-cert-auth`): clients must present a
/// certificate signed by the CA. PEM files, e.g. made with the `openssl` CLI.
/// Health is then probed on a plain-HTTP metrics port
/// (`--listen-metrics-urls`).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// The server certificate (with `IP:127.0.0.1` among its names).
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
    /// The CA client certificates must be signed by.
    pub trusted_ca_file: PathBuf,
}

/// A running (or stopped, restartable) etcd. Dropping it kills etcd and
/// removes its data.
#[derive(Debug)]
pub struct Etcd {
    /// The etcd binary.
    bin: PathBuf,
    /// Member name, unique per process.
    name: String,
    /// The client port, on every listen address.
    client_port: u16,
    /// The peer port, on 127.0.0.1.
    peer_port: u16,
    /// Extra client addresses.
    listen_ips: Vec<Ipv4Addr>,
    /// TLS on the client port, if any.
    tls: Option<EtcdTls>,
    /// The plain-HTTP metrics/health port (used with TLS only).
    metrics_port: u16,
    /// Holds `data/` and `etcd.log`; removed by the guardian.
    dir: PathBuf,
    /// The current etcd process and its guardian.
    running: Option<Running>,
    /// The cluster this member belongs to; `None` for a single member.
    membership: Option<Membership>,
}

/// What a member of a multi-member cluster needs to find its peers.
#[derive(Clone, Debug)]
struct Membership {
    /// `--initial-cluster`: every member's name and peer URL.
    initial_cluster: String,
    /// `--initial-cluster-token`, the same for all members.
    token: String,
}

/// One etcd process under its guardian.
#[derive(Debug)]
struct Running {
    /// etcd's PID.
    pid: u32,
    /// The guardian's stdin: a line or EOF ends etcd.
    control: ChildStdin,
    /// The guardian, reaped when it is done.
    guardian: Child,
}

/// A new data directory for one etcd member, in memory (`/dev/shm`) for
/// speed; dropping the member removes it.
fn data_dir() -> anyhow::Result<PathBuf> {
    Ok(tempfile::Builder::new()
        .prefix("tb-etcd.")
        .tempdir_in("/dev/shm")
        .context("cannot create a data directory for etcd under /dev/shm")?
        .keep())
}

impl Etcd {
    /// Start etcd on 127.0.0.1 only.
    pub async fn start() -> anyhow::Result<Etcd> {
        Etcd::start_with(EtcdOptions::default()).await
    }

    /// Start etcd, also serving clients on `options.listen_ips`.
    pub async fn start_with(options: EtcdOptions) -> anyhow::Result<Etcd> {
        tokio::task::spawn_blocking(move || Etcd::start_blocking(options))
            .await
            .context("the task starting etcd failed")?
    }

    /// Start etcd on 127.0.0.1 serving clients over TLS only (`https://`
    /// endpoints), requiring client certificates.
    pub async fn start_tls(tls: EtcdTls) -> anyhow::Result<Etcd> {
        tokio::task::spawn_blocking(move || {
            Etcd::start_blocking_tls(EtcdOptions::default(), Some(tls))
        })
        .await
        .context("the task starting etcd failed")?
    }

    /// Start etcd from synchronous code (blocks until it is healthy).
    pub fn start_blocking(options: EtcdOptions) -> anyhow::Result<Etcd> {
        Etcd::start_blocking_tls(options, None)
    }

    fn start_blocking_tls(options: EtcdOptions, tls: Option<EtcdTls>) -> anyhow::Result<Etcd> {
        let bin = require_tool("etcd")?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let ports = free_ports(3)?;
            let dir = data_dir()?;
            let mut etcd = Etcd {
                bin: bin.clone(),
                name: unique_name("tb-etcd"),
                client_port: ports[0],
                peer_port: ports[1],
                listen_ips: options.listen_ips.clone(),
                tls: tls.clone(),
                metrics_port: ports[2],
                dir,
                running: None,
                membership: None,
            };
            match etcd.launch() {
                Ok(()) => return Ok(etcd),
                Err(Launch::PortTaken(log)) => last = Some(log),
                Err(Launch::Failed(e)) => return Err(e),
            }
        }
        bail!(
            "etcd could not bind free ports in {PORT_ATTEMPTS} attempts; last log:\n{}",
            last.unwrap_or_default()
        )
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS): the endpoint for
    /// clients on the host.
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    /// The endpoint on one of the extra listen addresses.
    pub fn endpoint_on(&self, ip: Ipv4Addr) -> String {
        format!("{}://{ip}:{}", self.scheme(), self.client_port)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Where `GET /health` is answered over plain HTTP.
    fn health_port(&self) -> u16 {
        if self.tls.is_some() {
            self.metrics_port
        } else {
            self.client_port
        }
    }

    /// The endpoint machines should use: the first extra listen address, or
    /// loopback when there is none.
    pub fn client_url_for_machines(&self) -> String {
        match self.listen_ips.first() {
            Some(ip) => self.endpoint_on(*ip),
            None => self.endpoint(),
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// etcd's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.pid)
    }

    /// The directory holding etcd's data and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stop etcd gracefully (SIGTERM; SIGKILL after 10 s), keeping its data
    /// and ports for [`Etcd::restart`].
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.halt(Signal::TERM).await
    }

    /// Kill etcd (SIGKILL), keeping its data and ports for [`Etcd::restart`].
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.halt(Signal::KILL).await
    }

    /// Start etcd again on the same ports and data (stopping it first if it
    /// runs), and wait until it is healthy.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.running.is_some() {
            self.stop().await?;
        }
        let mut etcd = std::mem::replace(self, self.placeholder());
        let etcd = tokio::task::spawn_blocking(move || {
            let result = etcd.launch();
            (etcd, result)
        })
        .await
        .context("the task restarting etcd failed")?;
        *self = etcd.0;
        match etcd.1 {
            Ok(()) => Ok(()),
            Err(Launch::PortTaken(log)) => {
                bail!("etcd cannot get its ports back after a restart:\n{log}")
            }
            Err(Launch::Failed(e)) => Err(e),
        }
    }

    /// A stand-in while the real value is on a blocking thread.
    fn placeholder(&self) -> Etcd {
        Etcd {
            bin: self.bin.clone(),
            name: self.name.clone(),
            client_port: self.client_port,
            peer_port: self.peer_port,
            listen_ips: Vec::new(),
            tls: self.tls.clone(),
            metrics_port: self.metrics_port,
            dir: PathBuf::new(),
            running: None,
            membership: self.membership.clone(),
        }
    }

    async fn halt(&mut self, signal: Signal) -> anyhow::Result<()> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        let pid = running.pid;
        signal_pid(pid, signal)?;
        let deadline = Instant::now() + STOP_WITHIN;
        while is_alive(pid) {
            if Instant::now() >= deadline {
                signal_pid(pid, Signal::KILL)?;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::task::spawn_blocking(move || running.finish(true))
            .await
            .context("the task reaping etcd's guardian failed")
    }

    fn args(&self) -> Vec<String> {
        let mut client_urls = vec![self.endpoint()];
        client_urls.extend(self.listen_ips.iter().map(|ip| self.endpoint_on(*ip)));
        let client_urls = client_urls.join(",");
        let peer = self.peer_url();
        let (initial_cluster, token, timing) = match &self.membership {
            Some(m) => (m.initial_cluster.clone(), m.token.clone(), CLUSTER_TIMING),
            None => (
                format!("{}={peer}", self.name),
                self.name.clone(),
                SINGLE_TIMING,
            ),
        };
        let mut args: Vec<String> = vec![
            "--name".into(),
            self.name.clone(),
            "--data-dir".into(),
            self.dir.join("data").display().to_string(),
            "--listen-client-urls".into(),
            client_urls.clone(),
            "--advertise-client-urls".into(),
            client_urls,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer,
            "--initial-cluster".into(),
            initial_cluster,
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            token,
        ];
        args.extend(
            [
                "--heartbeat-interval",
                timing.0,
                "--election-timeout",
                timing.1,
                "--log-level",
                "warn",
                "--logger",
                "zap",
            ]
            .map(String::from),
        );
        if let Some(tls) = &self.tls {
            args.extend([
                "--cert-file".into(),
                tls.cert_file.display().to_string(),
                "--key-file".into(),
                tls.key_file.display().to_string(),
                "--trusted-ca-file".into(),
                tls.trusted_ca_file.display().to_string(),
                "--client-cert-auth".into(),
                "--listen-metrics-urls".into(),
                format!("http://127.0.0.1:{}", self.metrics_port),
            ]);
        }
        args
    }

    /// The peer URL, on 127.0.0.1.
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Start etcd under its guardian and wait until it is healthy.
    fn launch(&mut self) -> Result<(), Launch> {
        let running = self.spawn()?;
        self.wait_healthy(running)
    }

    /// Start etcd under its guardian.
    fn spawn(&self) -> Result<Running, Launch> {
        let mut guardian = Command::new("sh")
            .arg("-c")
            .arg(GUARDIAN)
            .arg("sh")
            .arg(&self.bin)
            .args(self.args())
            .env("TB_ETCD_DIR", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run sh to start etcd")
            .map_err(Launch::Failed)?;
        let (Some(control), Some(stdout)) = (guardian.stdin.take(), guardian.stdout.take()) else {
            return Err(Launch::Failed(anyhow::anyhow!(
                "the guardian's pipes are missing"
            )));
        };
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let pid = read.ok().and_then(|_| line.trim().parse::<u32>().ok());
        let Some(pid) = pid else {
            drop(control);
            let _ = guardian.wait();
            return Err(Launch::Failed(anyhow::anyhow!(
                "the guardian did not report etcd's PID (got {line:?})"
            )));
        };
        Ok(Running {
            pid,
            control,
            guardian,
        })
    }

    /// Wait until the etcd of `running` is healthy, then keep it; or end it
    /// (removing the directory) and say why it failed.
    fn wait_healthy(&mut self, running: Running) -> Result<(), Launch> {
        let pid = running.pid;
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            if healthy(self.health_port()) {
                self.running = Some(running);
                return Ok(());
            }
            let dead = !is_alive(pid);
            if dead || Instant::now() >= deadline {
                let log = self.log_tail();
                // EOF: the guardian kills etcd if needed and removes the directory.
                running.finish(false);
                if dead && log.contains("address already in use") {
                    return Err(Launch::PortTaken(log));
                }
                let what = if dead {
                    "exited"
                } else {
                    "did not become healthy"
                };
                return Err(Launch::Failed(anyhow::anyhow!(
                    "etcd {what} (client port {}, peer port {}); its log:\n{log}",
                    self.client_port,
                    self.peer_port
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The end of etcd's log, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = signal_pid(running.pid, Signal::KILL);
            running.finish(false);
        } else if !self.dir.as_os_str().is_empty() {
            // Stopped: its guardian is gone and kept the directory.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Running {
    /// Tell the guardian to end (keeping the directory or not) and reap it.
    fn finish(mut self, keep: bool) {
        if keep {
            let _ = self.control.write_all(b"keep\n");
        }
        drop(self.control);
        let _ = self.guardian.wait();
    }
}

/// Why a launch failed.
enum Launch {
    /// etcd could not bind its ports: try others. Carries its log.
    PortTaken(String),
    /// Anything else.
    Failed(anyhow::Error),
}

fn signal_pid(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).context("PIDs fit in i32")?;
    let pid = Pid::from_raw(raw).context("etcd's PID is positive")?;
    match kill_process(pid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot signal etcd (PID {raw})")),
    }
}

/// Whether `pid` runs (a zombie, not yet reaped by the guardian, does not).
fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// `GET /health` on 127.0.0.1 answers `"health":"true"`.
fn healthy(port: u16) -> bool {
    healthy_on(Ipv4Addr::LOCALHOST, port)
}

/// `GET /health` on `ip` answers `"health":"true"`.
fn healthy_on(ip: Ipv4Addr, port: u16) -> bool {
    let probe = || -> std::io::Result<bool> {
        let addr = (ip, port).into();
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.contains("\"health\":\"true\""))
    };
    probe().unwrap_or(false)
}

/// One etcd for the whole test binary, started on first use. It is never
/// dropped: its guardian cleans up when the process exits. Tests sharing it
/// must use their own key prefixes and must not compact (compaction is
/// global); start a private [`Etcd`] for that.
pub fn shared() -> anyhow::Result<&'static Etcd> {
    static SHARED: OnceLock<Result<Etcd, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| Etcd::start_blocking(EtcdOptions::default()).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("the shared etcd did not start: {e}"))
}

/// A multi-member etcd cluster: each member an [`Etcd`] on its own free
/// ports and data directory. Dropping it kills every member and removes the
/// data.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, in a fixed order (indexes stay valid across kills and
    /// restarts).
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Start `size` members, also serving clients on `options.listen_ips`,
    /// and wait until every one is healthy (which needs a leader).
    pub async fn start(size: usize, options: EtcdOptions) -> anyhow::Result<EtcdCluster> {
        tokio::task::spawn_blocking(move || EtcdCluster::start_blocking(size, &options))
            .await
            .context("the task starting the etcd cluster failed")?
    }

    fn start_blocking(size: usize, options: &EtcdOptions) -> anyhow::Result<EtcdCluster> {
        if size == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let bin = require_tool("etcd")?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let token = unique_name("tb-etcd-cluster");
            let mut members = Vec::with_capacity(size);
            for i in 0..size {
                let ports = free_ports(3)?;
                let dir = data_dir()?;
                members.push(Etcd {
                    bin: bin.clone(),
                    name: format!("{token}-{i}"),
                    client_port: ports[0],
                    peer_port: ports[1],
                    listen_ips: options.listen_ips.clone(),
                    tls: None,
                    metrics_port: ports[2],
                    dir,
                    running: None,
                    membership: None,
                });
            }
            let initial_cluster = members
                .iter()
                .map(|m| format!("{}={}", m.name, m.peer_url()))
                .collect::<Vec<_>>()
                .join(",");
            for m in &mut members {
                m.membership = Some(Membership {
                    initial_cluster: initial_cluster.clone(),
                    token: token.clone(),
                });
            }
            // All members first: none is healthy before a quorum runs.
            let mut spawned = Vec::with_capacity(size);
            for m in &members {
                match m.spawn() {
                    Ok(running) => spawned.push(running),
                    Err(Launch::PortTaken(log)) => bail!("etcd failed to start: {log}"),
                    Err(Launch::Failed(e)) => return Err(e),
                }
            }
            let mut outcome = Ok(());
            for (m, running) in members.iter_mut().zip(spawned) {
                if outcome.is_ok() {
                    outcome = m.wait_healthy(running);
                } else {
                    running.finish(false);
                }
            }
            match outcome {
                Ok(()) => return Ok(EtcdCluster { members }),
                Err(Launch::PortTaken(log)) => last = Some(log),
                Err(Launch::Failed(e)) => return Err(e),
            }
        }
        bail!(
            "the etcd cluster could not bind free ports in {PORT_ATTEMPTS} attempts; last log:\n{}",
            last.unwrap_or_default()
        )
    }

    /// Every member's client endpoint on 127.0.0.1.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    /// Every member's client endpoint on `ip` (one of the extra listen
    /// addresses).
    pub fn endpoints_on(&self, ip: Ipv4Addr) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint_on(ip)).collect()
    }

    /// The index of the member that leads, as the running members report
    /// it; waits up to 10 s for them to have one.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        leader_of(&self.members.iter().collect::<Vec<_>>()).await
    }
}

/// The index in `members` of the one that leads: the member whose own ID is
/// the leader its maintenance status names. Stopped members are skipped;
/// waits up to 10 s for an elected leader that runs.
pub async fn leader_of(members: &[&Etcd]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + LEADER_WITHIN;
    let mut last = String::from("no member runs");
    loop {
        for (i, m) in members.iter().enumerate() {
            if m.pid().is_none() {
                continue;
            }
            match member_status(&m.endpoint()).await {
                Ok((id, leader)) if id == leader => return Ok(i),
                Ok((id, leader)) => last = format!("member {i} ({id:x}) follows {leader:x}"),
                Err(e) => last = format!("member {i}: {e:#}"),
            }
        }
        if Instant::now() >= deadline {
            bail!("the etcd members have no leader after {LEADER_WITHIN:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (own member ID, leader's member ID) from the maintenance status of the
/// member at `endpoint`.
async fn member_status(endpoint: &str) -> anyhow::Result<(u64, u64)> {
    let bound = Duration::from_secs(1);
    let ask = async {
        let options = etcd_client::ConnectOptions::new()
            .with_timeout(bound)
            .with_connect_timeout(bound);
        let mut client = etcd_client::Client::connect([endpoint], Some(options)).await?;
        client.status().await
    };
    let status = tokio::time::timeout(bound, ask)
        .await
        .with_context(|| format!("no status from {endpoint} within {bound:?}"))?
        .with_context(|| format!("cannot read the status of {endpoint}"))?;
    let id = status
        .header()
        .map(etcd_client::ResponseHeader::member_id)
        .with_context(|| format!("the status of {endpoint} has no header"))?;
    Ok((id, status.leader()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_restarts_and_cleans_up() -> anyhow::Result<()> {
        let mut etcd = Etcd::start().await?;
        let dir = etcd.dir().to_path_buf();
        let pid = etcd.pid().context("etcd runs")?;
        assert!(healthy(etcd.port()));
        etcd.kill().await?;
        assert!(!is_alive(pid));
        assert!(!healthy(etcd.port()));
        assert!(dir.join("data").exists(), "a kill keeps the data");
        etcd.restart().await?;
        assert!(healthy(etcd.port()));
        let pid = etcd.pid().context("etcd runs again")?;
        drop(etcd);
        assert!(!is_alive(pid), "drop kills etcd");
        assert!(!dir.exists(), "drop removes the data");
        Ok(())
    }

    #[tokio::test]
    async fn serves_extra_listen_addresses() -> anyhow::Result<()> {
        let extra = Ipv4Addr::new(127, 0, 0, 2);
        let etcd = Etcd::start_with(EtcdOptions {
            listen_ips: vec![extra],
        })
        .await?;
        assert!(healthy_on(extra, etcd.port()));
        assert_eq!(
            etcd.client_url_for_machines(),
            format!("http://127.0.0.2:{}", etcd.port())
        );
        assert_eq!(etcd.endpoint_on(extra), etcd.client_url_for_machines());
        Ok(())
    }

    #[tokio::test]
    async fn a_cluster_elects_again_and_takes_a_member_back() -> anyhow::Result<()> {
        let mut cluster = EtcdCluster::start(3, EtcdOptions::default()).await?;
        let leader = cluster.leader().await?;
        let dir = cluster.members[leader].dir().to_path_buf();
        cluster.members[leader].kill().await?;
        let next = cluster.leader().await?;
        assert_ne!(next, leader, "a killed member cannot lead");
        cluster.members[leader].restart().await?;
        assert!(dir.join("data").exists(), "the member keeps its data");
        assert!(healthy(cluster.members[leader].port()));
        let pids: Vec<u32> = cluster.members.iter().filter_map(Etcd::pid).collect();
        assert_eq!(pids.len(), 3);
        drop(cluster);
        assert!(
            pids.iter().all(|p| !is_alive(*p)),
            "drop kills every member"
        );
        assert!(!dir.exists(), "drop removes the data");
        Ok(())
    }
}
