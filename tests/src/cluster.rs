//! A fleet cluster on real parts: a real etcd on a bridge, and N systemd
//! machines (each in its own network namespace) running `fleetd` as a systemd
//! service with its API socket-activated, exactly as a host runs it with
//! `systemctl start fleet`.
//!
//! The binaries under test are the workspace's built `fleetd` and `fleetctl`
//! (`cargo build --workspace` first; `scripts/test.sh` does). They are copied
//! to a temporary directory bound read-only at `/opt/fleet` in every machine,
//! and a drop-in points the shipped `fleet.service` at them.
//!
//! Dropping the cluster stops every process it started, by PID: machines
//! first, then etcd, then the network.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::etcd::{Etcd, EtcdCluster, EtcdOptions, leader_of};
use crate::machine::{Machine, MachineSpec};
use crate::net::{Netns, Network};
use crate::util::{unique_name, wait_until};

/// The TCP port of each member's socket-activated API (each member has its
/// own network namespace, so they never collide).
pub const API_PORT: u16 = 49153;

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// How many machines.
    pub members: usize,
    /// `agent_ttl` for every fleetd.
    pub agent_ttl: String,
    /// `engine_reconcile_interval` (seconds) for every fleetd.
    pub reconcile_interval: f64,
    /// Extra lines for every fleet.conf.
    pub extra_conf: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            members: 1,
            agent_ttl: "5s".into(),
            reconcile_interval: 1.0,
            extra_conf: String::new(),
        }
    }
}

/// One machine of the cluster.
pub struct Member {
    /// The systemd machine running fleetd.
    pub machine: Machine,
    /// Its network namespace (cut/heal).
    pub netns: Netns,
}

impl Member {
    /// The member's IP on the bridge.
    pub fn ip(&self) -> String {
        self.netns.ip.to_string()
    }

    /// Its fleet API endpoint over TCP.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{API_PORT}", self.netns.ip)
    }

    /// `systemctl is-active UNIT` inside the machine, straight from its
    /// systemd (not through fleet).
    pub async fn is_active(&self, unit: &str) -> anyhow::Result<String> {
        let out = self.machine.systemctl(&["is-active", unit]).await?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// A running cluster. Fields drop in order: machines, etcd, network.
pub struct Cluster {
    /// The machines.
    pub members: Vec<Member>,
    /// The etcd every fleetd talks to (member 0 of a multi-member etcd,
    /// see [`Cluster::start_quorum`]).
    pub etcd: Etcd,
    /// The other members of a multi-member etcd (empty with a single one);
    /// reach every member through [`Cluster::etcd_member`].
    etcd_peers: Vec<Etcd>,
    /// The bridge and namespaces.
    pub net: Network,
    /// Copies of the binaries under test, bound into the machines.
    bin_dir: tempfile::TempDir,
    /// The options the cluster was built with.
    options: ClusterOptions,
}

/// Where cargo put the workspace's binaries: the directory above the test
/// executable's `deps/`.
pub fn target_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Tests run from deps/, examples (benchmarks) from examples/.
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    Ok(dir)
}

/// The path of a built workspace binary, failing with what to do when it is
/// missing.
pub fn built_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = target_bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build the workspace first (cargo build --workspace, or scripts/test.sh)",
            path.display()
        );
    }
    Ok(path)
}

/// The shipped systemd units and sample config (`fleetd/systemd/`).
fn shipped(name: &str) -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fleetd/systemd")
        .join(name);
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

impl Cluster {
    /// Builds the network, starts etcd on the bridge, boots the machines in
    /// parallel and starts fleet on each.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Cluster> {
        Cluster::start_with_etcd(options, 1).await
    }

    /// [`Cluster::start`] with a 3-member etcd on the bridge: every
    /// fleet.conf lists all three endpoints in `etcd_servers`. Kill and
    /// restart members with [`Cluster::etcd_member`]; find the leader with
    /// [`Cluster::etcd_leader`].
    pub async fn start_quorum(options: ClusterOptions) -> anyhow::Result<Cluster> {
        Cluster::start_with_etcd(options, 3).await
    }

    async fn start_with_etcd(options: ClusterOptions, etcd_size: usize) -> anyhow::Result<Cluster> {
        let bin_dir = tempfile::Builder::new()
            .prefix("fleet-bin-")
            .tempdir()
            .context("cannot create a directory for the binaries")?;
        for name in ["fleetd", "fleetctl"] {
            std::fs::copy(built_binary(name)?, bin_dir.path().join(name))
                .with_context(|| format!("cannot copy {name}"))?;
        }

        let mut net = Network::new()?;
        let etcd_options = EtcdOptions {
            listen_ips: vec![net.host_ip()],
        };
        let (etcd, etcd_peers) = if etcd_size > 1 {
            let mut members = EtcdCluster::start(etcd_size, etcd_options).await?.members;
            let first = members.remove(0);
            (first, members)
        } else {
            (Etcd::start_with(etcd_options).await?, Vec::new())
        };

        let mut boots = Vec::new();
        let mut namespaces = Vec::new();
        for i in 0..options.members {
            let netns = net.add_host(&unique_name(&format!("m{i}")))?;
            let mut spec = MachineSpec::new(unique_name(&format!("fleet-m{i}")));
            spec.netns = Some(netns.path());
            spec.binds_ro
                .push((bin_dir.path().to_path_buf(), PathBuf::from("/opt/fleet")));
            namespaces.push(netns);
            boots.push(tokio::spawn(Machine::boot(spec)));
        }
        let mut members = Vec::new();
        let mut first_error = None;
        for (boot, netns) in boots.into_iter().zip(namespaces) {
            match boot.await {
                Ok(Ok(machine)) => members.push(Member { machine, netns }),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(anyhow::anyhow!("boot task failed: {e}"));
                }
            }
        }
        let cluster = Cluster {
            members,
            etcd,
            etcd_peers,
            net,
            bin_dir,
            options,
        };
        if let Some(e) = first_error {
            return Err(e.context("a machine did not boot"));
        }
        for i in 0..cluster.members.len() {
            cluster.install_fleet(i)?;
            cluster.start_fleet(i).await?;
        }
        cluster.wait_for_machines(cluster.members.len()).await?;
        Ok(cluster)
    }

    /// Writes the shipped units, a drop-in pointing at the binary under test,
    /// and fleet.conf into member `i`.
    fn install_fleet(&self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i].machine;
        let ip = self.members[i].ip();
        m.write_file(
            "/etc/systemd/system/fleet.service",
            shipped("fleet.service")?,
        )?;
        m.write_file("/etc/systemd/system/fleet.socket", shipped("fleet.socket")?)?;
        let tcp = shipped("fleet-tcp.socket.example")?
            .lines()
            .map(|l| {
                if l.starts_with("ListenStream=") {
                    format!("ListenStream={API_PORT}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        m.write_file("/etc/systemd/system/fleet-tcp.socket", tcp + "\n")?;
        m.write_file(
            "/etc/systemd/system/fleet.service.d/10-test.conf",
            "[Service]\nExecStart=\nExecStart=/opt/fleet/fleetd\nEnvironment=RUST_LOG=fleetd=debug\n",
        )?;
        let conf = format!(
            "etcd_servers={etcd}\npublic_ip={ip}\nmetadata=hostname={host},index={i}\nagent_ttl={ttl}\nengine_reconcile_interval={interval}\n{extra}\n",
            etcd = self.etcd_endpoints_for_machines().join(","),
            host = m.name(),
            ttl = self.options.agent_ttl,
            interval = self.options.reconcile_interval,
            extra = self.options.extra_conf,
        );
        m.write_file("/etc/fleet/fleet.conf", conf)?;
        Ok(())
    }

    /// `systemctl start fleet.socket fleet-tcp.socket fleet.service` in member `i`.
    pub async fn start_fleet(&self, i: usize) -> anyhow::Result<()> {
        self.systemctl_ok(i, &["daemon-reload"], "systemctl daemon-reload")
            .await?;
        self.members[i]
            .machine
            .systemctl_or_journal(
                "start",
                &["fleet.socket", "fleet-tcp.socket", "fleet.service"],
                "fleet",
                50,
            )
            .await
    }

    /// `systemctl <args>` in member `i`, failing as [`check`] does, with
    /// `what`.
    async fn systemctl_ok(&self, i: usize, args: &[&str], what: &str) -> anyhow::Result<()> {
        let out = self.members[i].machine.systemctl(args).await?;
        check(&out, what)
    }

    /// `systemctl stop fleet` in member `i`.
    pub async fn stop_fleet(&self, i: usize) -> anyhow::Result<()> {
        self.systemctl_ok(i, &["stop", "fleet.service"], "systemctl stop fleet")
            .await
    }

    /// The journal of fleet in member `i` (for failure messages).
    pub async fn fleet_journal(&self, i: usize) -> String {
        self.members[i].machine.journal("fleet", 200).await
    }

    /// Every message fleet logged in member `i` (`journalctl -u fleet -o
    /// cat`), for tests that look for a log line.
    pub async fn fleet_messages(&self, i: usize) -> anyhow::Result<String> {
        let out = self.members[i]
            .machine
            .exec(&["journalctl", "-u", "fleet", "--no-pager", "-o", "cat"])
            .await?;
        check(&out, "journalctl -u fleet")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the host's `fleetctl` against member 0's TCP API.
    pub async fn fleetctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.fleetctl_via(0, args).await
    }

    /// Runs the host's `fleetctl` against member `i`'s TCP API.
    pub async fn fleetctl_via(&self, i: usize, args: &[&str]) -> anyhow::Result<Output> {
        let endpoint = self.members[i].endpoint();
        tokio::process::Command::new(self.bin_dir.path().join("fleetctl"))
            .arg("--endpoint")
            .arg(&endpoint)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("cannot run fleetctl")
    }

    /// Waits until `fleetctl list-machines` shows `n` machines.
    pub async fn wait_for_machines(&self, n: usize) -> anyhow::Result<()> {
        let result = wait_until(
            &format!("{n} machines in list-machines"),
            Duration::from_secs(30),
            || async {
                let out = self
                    .fleetctl(&["list-machines", "--no-legend", "--full"])
                    .await?;
                Ok((
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned()
                        + &String::from_utf8_lossy(&out.stderr),
                ))
            },
            // An error (503 until fleetd is registered) is no machine list.
            |(ok, text)| *ok && text.lines().filter(|l| !l.trim().is_empty()).count() == n,
        )
        .await;
        if let Err(e) = result {
            bail!(
                "{e:#}\nfleet journal of member 0:\n{}",
                self.fleet_journal(0).await
            );
        }
        Ok(())
    }

    /// Parses `fleetctl list-units --no-legend --full --fields unit,active,machine`
    /// into (unit, active state, machine ID) rows.
    pub async fn list_units(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        self.list_units_via(0).await
    }

    /// The member whose machine ID is `id`.
    pub fn member_by_id(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.machine.machine_id() == id)
    }

    /// Boots one more machine (with machine ID `machine_id`, or a fresh one)
    /// in its own namespace and installs fleet in it, without starting it.
    /// Returns its index.
    pub async fn add_member(&mut self, machine_id: Option<&str>) -> anyhow::Result<usize> {
        let i = self.members.len();
        let netns = self.net.add_host(&unique_name(&format!("m{i}")))?;
        let mut spec = MachineSpec::new(unique_name(&format!("fleet-m{i}")));
        if let Some(id) = machine_id {
            id.clone_into(&mut spec.machine_id);
        }
        spec.netns = Some(netns.path());
        spec.binds_ro.push((
            self.bin_dir.path().to_path_buf(),
            PathBuf::from("/opt/fleet"),
        ));
        let machine = Machine::boot(spec).await?;
        self.members.push(Member { machine, netns });
        self.install_fleet(i)?;
        Ok(i)
    }

    /// Starts fleet in member `i` without waiting for it to be ready
    /// (`systemctl start --no-block`), for a fleetd expected to fail.
    pub async fn start_fleet_no_block(&self, i: usize) -> anyhow::Result<()> {
        self.systemctl_ok(i, &["daemon-reload"], "systemctl daemon-reload")
            .await?;
        self.systemctl_ok(
            i,
            &[
                "start",
                "--no-block",
                "fleet.socket",
                "fleet-tcp.socket",
                "fleet.service",
            ],
            "systemctl start --no-block fleet",
        )
        .await
    }

    /// `systemctl kill -s KILL fleet.service` in member `i`: fleetd dies
    /// without a purge, and systemd restarts it (`Restart=always`).
    pub async fn kill_fleet(&self, i: usize) -> anyhow::Result<()> {
        self.systemctl_ok(
            i,
            &["kill", "-s", "KILL", "fleet.service"],
            "systemctl kill -s KILL fleet",
        )
        .await
    }

    /// `systemctl show -p PROPERTY --value UNIT` in member `i`.
    pub async fn show(&self, i: usize, unit: &str, property: &str) -> anyhow::Result<String> {
        let out = self.members[i]
            .machine
            .systemctl(&["show", "-p", property, "--value", unit])
            .await?;
        check(&out, &format!("systemctl show -p {property} {unit}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The main PID of `unit` in member `i` as its systemd reports it (0:
    /// not running).
    pub async fn main_pid(&self, i: usize, unit: &str) -> anyhow::Result<u32> {
        let text = self.show(i, unit, "MainPID").await?;
        text.parse()
            .with_context(|| format!("MainPID of {unit} is not a number: {text:?}"))
    }

    /// How many etcd members the cluster runs.
    pub fn etcd_size(&self) -> usize {
        1 + self.etcd_peers.len()
    }

    /// etcd member `k` (0 is [`Cluster::etcd`]), to kill and restart.
    ///
    /// # Panics
    /// When `k` is not below [`Cluster::etcd_size`].
    pub fn etcd_member(&mut self, k: usize) -> &mut Etcd {
        match k {
            0 => &mut self.etcd,
            k => &mut self.etcd_peers[k - 1],
        }
    }

    /// Every etcd member's endpoint on the bridge, as fleet.conf lists them.
    pub fn etcd_endpoints_for_machines(&self) -> Vec<String> {
        let ip = self.net.host_ip();
        std::iter::once(&self.etcd)
            .chain(&self.etcd_peers)
            .map(|m| m.endpoint_on(ip))
            .collect()
    }

    /// Every etcd member's endpoint on 127.0.0.1, for clients on the host.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        std::iter::once(&self.etcd)
            .chain(&self.etcd_peers)
            .map(Etcd::endpoint)
            .collect()
    }

    /// The index of the etcd member that leads (see
    /// [`crate::etcd::leader_of`]).
    pub async fn etcd_leader(&self) -> anyhow::Result<usize> {
        let members: Vec<&Etcd> = std::iter::once(&self.etcd)
            .chain(&self.etcd_peers)
            .collect();
        leader_of(&members).await
    }

    /// Cuts member `i` off the network (nftables in its namespace).
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        self.members[i].netns.cut()
    }

    /// Undoes [`Self::cut`].
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        self.members[i].netns.heal()
    }
}

/// Fails with the command's output when it did not succeed.
pub fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Writes unit files (name, contents) into a fresh temporary directory, for
/// `fleetctl submit/start DIR/NAME`. Keep the directory alive while fleetctl
/// may read it (instances of a template written there find it beside them).
pub fn unit_files(units: &[(&str, &str)]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("fleet-units-")
        .tempdir()
        .context("cannot create a directory for unit files")?;
    for (name, contents) in units {
        let path = dir.path().join(name);
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

impl Member {
    /// Which of `units` this machine's systemd reports `active` (one
    /// `systemctl is-active` for all of them, straight from its systemd).
    pub async fn active_units(&self, units: &[&str]) -> anyhow::Result<Vec<String>> {
        if units.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["is-active"];
        args.extend_from_slice(units);
        let out = self.machine.systemctl(&args).await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let states: Vec<&str> = stdout.lines().map(str::trim).collect();
        if states.len() != units.len() {
            bail!(
                "systemctl is-active in {} answered {} lines for {} units: {stdout:?} {}",
                self.machine.name(),
                states.len(),
                units.len(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(units
            .iter()
            .zip(states)
            .filter(|(_, state)| *state == "active")
            .map(|(unit, _)| (*unit).to_owned())
            .collect())
    }

    /// The main PID of `unit` as this machine's systemd reports it (0: not
    /// running); a unit restarted or moved away and back gets another.
    pub async fn unit_main_pid(&self, unit: &str) -> anyhow::Result<u32> {
        let out = self
            .machine
            .systemctl(&["show", "-p", "MainPID", "--value", unit])
            .await?;
        check(&out, &format!("systemctl show -p MainPID {unit}"))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        text.parse()
            .with_context(|| format!("MainPID of {unit} is not a number: {text:?}"))
    }
}

impl Cluster {
    /// For each member (by index), which of `units` its systemd runs.
    pub async fn active_by_member(&self, units: &[&str]) -> anyhow::Result<Vec<Vec<String>>> {
        let mut out = Vec::with_capacity(self.members.len());
        for m in &self.members {
            out.push(m.active_units(units).await?);
        }
        Ok(out)
    }

    /// `fleetctl start --no-block` through member 0 of a unit file per name
    /// in `names`, each with content `text`.
    pub async fn start_units_no_block(&self, names: &[&str], text: &str) -> anyhow::Result<()> {
        self.start_units_with(&["start", "--no-block"], names, text)
            .await
    }

    /// `fleetctl start` through member 0 of a unit file per name in `names`,
    /// each with content `text`: returns once fleet reports them launched.
    pub async fn start_units(&self, names: &[&str], text: &str) -> anyhow::Result<()> {
        self.start_units_with(&["start"], names, text).await
    }

    /// `fleetctl <args>` through member 0 followed by a unit file per name in
    /// `names`, each with content `text`, written to a fresh directory.
    async fn start_units_with(
        &self,
        args: &[&str],
        names: &[&str],
        text: &str,
    ) -> anyhow::Result<()> {
        let files: Vec<(&str, &str)> = names.iter().map(|n| (*n, text)).collect();
        let dir = unit_files(&files)?;
        let out = self.fleetctl_files(0, args, dir.path(), names).await?;
        check(&out, &format!("fleetctl {} {names:?}", args.join(" ")))
    }

    /// Runs `fleetctl` through member `via` with `args` followed by
    /// `dir/NAME` for each of `names`.
    pub async fn fleetctl_files(
        &self,
        via: usize,
        args: &[&str],
        dir: &Path,
        names: &[&str],
    ) -> anyhow::Result<Output> {
        let paths: Vec<String> = names
            .iter()
            .map(|n| dir.join(n).to_string_lossy().into_owned())
            .collect();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(paths.iter().map(String::as_str));
        self.fleetctl_via(via, &all).await
    }

    /// [`Self::list_units`] through member `via`.
    pub async fn list_units_via(
        &self,
        via: usize,
    ) -> anyhow::Result<Vec<(String, String, String)>> {
        let out = self
            .fleetctl_via(
                via,
                &[
                    "list-units",
                    "--no-legend",
                    "--full",
                    "--fields",
                    "unit,active,machine",
                ],
            )
            .await?;
        check(&out, "fleetctl list-units")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let unit = f.next()?.to_owned();
                let active = f.next()?.to_owned();
                let machine = f
                    .next()
                    .unwrap_or("")
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                Some((unit, active, machine))
            })
            .collect())
    }

    /// The machine IDs `fleetctl list-machines` shows through member `via`.
    pub async fn machine_ids_via(&self, via: usize) -> anyhow::Result<Vec<String>> {
        let out = self
            .fleetctl_via(via, &["list-machines", "--no-legend", "--full"])
            .await?;
        check(&out, "fleetctl list-machines")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect())
    }

    /// The machine ID in the engine leader key, read from etcd (`None`
    /// while no engine leads).
    pub async fn engine_leader(&self) -> anyhow::Result<Option<String>> {
        let kv = fleetd::registry::EtcdKv::connect(&[self.etcd.endpoint()], Duration::from_secs(5))
            .await
            .context("cannot connect to the cluster's etcd")?;
        let registry = fleetd::registry::Registry::new(kv, fleetd::config::DEFAULT_ETCD_KEY_PREFIX);
        let leader = registry
            .leader()
            .await
            .context("cannot read the engine leader key")?;
        Ok(leader.map(|id| id.as_str().to_owned()))
    }

    /// The index of the member whose machine ID is `id`.
    pub fn member_index(&self, id: &str) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.machine.machine_id() == id)
    }

    /// Stops fleet in member `i` for good: `fleet.service` and both API
    /// sockets, so no connection activates it again. fleetd purges on the
    /// way out (its units stop, its machine leaves the cluster).
    pub async fn stop_fleet_and_sockets(&self, i: usize) -> anyhow::Result<()> {
        self.systemctl_ok(
            i,
            &["stop", "fleet.socket", "fleet-tcp.socket", "fleet.service"],
            "systemctl stop fleet and its sockets",
        )
        .await
    }

    /// Kills fleetd in member `i` with SIGKILL (no purge: its units keep
    /// running, its leases expire) and keeps it down: the pending restart
    /// (`RestartSec=5s`) and the sockets are stopped.
    pub async fn crash_fleet(&self, i: usize) -> anyhow::Result<()> {
        self.kill_fleet(i).await?;
        self.stop_fleet_and_sockets(i).await
    }

    /// Reboots member `i` as a power cut would: its machine is killed (every
    /// process, fleetd and units alike, dies at once; its volatile
    /// filesystem is lost), then a machine with the same name, machine ID
    /// and network namespace boots, fleet is installed again and started
    /// without waiting (`systemctl start --no-block`): until the dead
    /// machine's lease expires its ID is still registered, fleetd exits and
    /// systemd restarts it (`Restart=always`). Wait for the machine in
    /// `list-machines` (e.g. [`Self::machine_ids_via`]).
    pub async fn reboot_member(&mut self, i: usize) -> anyhow::Result<()> {
        let old = self.members.remove(i);
        let spec = old.machine.spec().clone();
        let netns = old.netns;
        old.machine.kill().await;
        // On failure the member stays out of `members`: the cluster is
        // broken and the caller fails.
        let machine = Machine::boot(spec)
            .await
            .with_context(|| format!("member {i} did not boot again"))?;
        self.members.insert(i, Member { machine, netns });
        self.install_fleet(i)?;
        self.start_fleet_no_block(i).await
    }
}

/// Lifecycle actions on a member's fleetd: restarts, upgrades, signals, an
/// OOM kill and a power-off.
impl Cluster {
    /// `systemctl restart fleet.service` in member `i`, as an upgrade does.
    pub async fn restart_fleet(&self, i: usize) -> anyhow::Result<()> {
        self.systemctl_ok(i, &["restart", "fleet.service"], "systemctl restart fleet")
            .await
    }

    /// Replaces the fleetd binary every member runs (`/opt/fleet/fleetd`) by
    /// a different file, as a package upgrade does: a copy with `marker`
    /// appended (an ELF file runs with trailing bytes), renamed over the old
    /// one. Running fleetds keep the old file until they are restarted.
    /// Returns the new file's size, to tell which binary a process runs.
    pub fn upgrade_fleetd(&self, marker: &str) -> anyhow::Result<u64> {
        let path = self.bin_dir.path().join("fleetd");
        let staged = self.bin_dir.path().join(".fleetd.new");
        std::fs::copy(&path, &staged).with_context(|| format!("cannot copy {}", path.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&staged)
            .with_context(|| format!("cannot open {}", staged.display()))?;
        std::io::Write::write_all(&mut file, marker.as_bytes())
            .with_context(|| format!("cannot write {}", staged.display()))?;
        drop(file);
        std::fs::rename(&staged, &path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(std::fs::metadata(&path)?.len())
    }

    /// `systemctl kill -s SIGNAL --kill-whom=main fleet.service` in member
    /// `i`: a signal with no job on fleet.service (as a plain `kill` sends).
    pub async fn signal_fleet(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        self.systemctl_ok(
            i,
            &["kill", "-s", signal, "--kill-whom=main", "fleet.service"],
            &format!("systemctl kill -s {signal} fleet"),
        )
        .await
    }

    /// fleetd's PID in member `i` as the host sees it (the machine has its
    /// own PID namespace), from fleet.service's cgroup.
    pub fn fleetd_host_pid(&self, i: usize) -> anyhow::Result<u32> {
        let leader = self.members[i].machine.leader_pid();
        let cgroups = std::fs::read_to_string(format!("/proc/{leader}/cgroup"))
            .with_context(|| format!("cannot read the cgroups of PID {leader}"))?;
        let init = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .with_context(|| format!("PID {leader} has no unified cgroup: {cgroups}"))?;
        // The machine's init runs in <payload>/init.scope.
        let payload = init.strip_suffix("/init.scope").unwrap_or(init);
        let procs =
            format!("/sys/fs/cgroup/unified{payload}/system.slice/fleet.service/cgroup.procs");
        let text =
            std::fs::read_to_string(&procs).with_context(|| format!("cannot read {procs}"))?;
        let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        match pids.as_slice() {
            [pid] => Ok(*pid),
            _ => bail!("fleet.service in member {i} has processes {pids:?}, not one"),
        }
    }

    /// Has the kernel OOM-kill fleetd in member `i`: moves it into a memory
    /// cgroup (v1, a child of the test process's own) limited to 64 KiB
    /// above what it is charged there (nothing, as charges stay behind),
    /// then makes it allocate: a 400 KB unit submitted through its API. The
    /// machine's own systemd cannot set `MemoryMax=` here (its memory
    /// hierarchy is read-only and cgroup2 has no memory controller), hence
    /// the host's cgroup. Returns once the process is gone; the cgroup is
    /// removed and the unit destroyed.
    pub async fn oom_kill_fleet(&self, i: usize) -> anyhow::Result<()> {
        let pid = self.fleetd_host_pid(i)?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .context("cannot read the test process's cgroups")?;
        let parent = own
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then(|| path.to_owned())
            })
            .context("the test process has no memory cgroup (cgroup v1 memory controller)")?;
        let dir =
            PathBuf::from(format!("/sys/fs/cgroup/memory{parent}")).join(unique_name("fleet-oom"));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let result = async {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("cannot move PID {pid} into {}", dir.display()))?;
            let usage: u64 = std::fs::read_to_string(dir.join("memory.usage_in_bytes"))?
                .trim()
                .parse()
                .context("bad memory.usage_in_bytes")?;
            std::fs::write(
                dir.join("memory.limit_in_bytes"),
                (usage + 65536).to_string(),
            )
            .context("cannot set memory.limit_in_bytes")?;
            let mut text = String::from("[Unit]\n");
            for n in 0..400 {
                text.push_str(&format!("X-Padding{n}={}\n", "x".repeat(1000)));
            }
            text.push_str("[Service]\nExecStart=/bin/sleep 100000\n");
            let units = unit_files(&[("fleet-oom-ballast.service", &text)])?;
            let ballast = units.path().join("fleet-oom-ballast.service");
            let ballast = ballast.to_string_lossy();
            wait_until(
                &format!("the kernel to OOM-kill fleetd (host PID {pid})"),
                Duration::from_secs(30),
                || async {
                    let _ = self.fleetctl_via(i, &["submit", &ballast]).await;
                    Ok(Path::new(&format!("/proc/{pid}")).exists())
                },
                |alive| !alive,
            )
            .await?;
            let kills = std::fs::read_to_string(dir.join("memory.oom_control"))?;
            if !kills
                .lines()
                .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0")
            {
                bail!("fleetd died, but not by the OOM killer: {kills}");
            }
            Ok(())
        }
        .await;
        // Empty once the process is gone.
        let removed = wait_until(
            "the OOM cgroup to empty",
            Duration::from_secs(10),
            || async { Ok(std::fs::remove_dir(&dir).is_ok()) },
            |gone| *gone,
        )
        .await;
        result.and(removed.map(|_| ()))
    }

    /// The start timeout systemd applies to fleet.service in member `i`
    /// (`TimeoutStartUSec`).
    pub async fn fleet_start_timeout(&self, i: usize) -> anyhow::Result<Duration> {
        let out = self.members[i]
            .machine
            .exec(&[
                "busctl",
                "get-property",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1/unit/fleet_2eservice",
                "org.freedesktop.systemd1.Service",
                "TimeoutStartUSec",
            ])
            .await?;
        check(&out, "busctl get-property TimeoutStartUSec")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let usec: u64 = text
            .trim()
            .strip_prefix("t ")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("TimeoutStartUSec is not a number: {text:?}"))?;
        Ok(Duration::from_micros(usec))
    }

    /// Powers member `i` off cleanly, as a system shutdown does (its systemd
    /// stops every unit, fleet.service included, then the machine exits),
    /// and removes it from [`Self::members`] (later members move down).
    pub async fn power_off_member(&mut self, i: usize) {
        let member = self.members.remove(i);
        member.machine.shutdown().await;
    }
}
