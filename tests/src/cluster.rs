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

use crate::etcd::{Etcd, EtcdOptions};
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
    /// The etcd every fleetd talks to.
    pub etcd: Etcd,
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
    if dir.ends_with("deps") {
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
        let bin_dir = tempfile::Builder::new()
            .prefix("fleet-bin-")
            .tempdir()
            .context("cannot create a directory for the binaries")?;
        for name in ["fleetd", "fleetctl"] {
            std::fs::copy(built_binary(name)?, bin_dir.path().join(name))
                .with_context(|| format!("cannot copy {name}"))?;
        }

        let mut net = Network::new()?;
        let etcd = Etcd::start_with(EtcdOptions {
            listen_ips: vec![net.host_ip()],
        })
        .await?;

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
            etcd = self.etcd.endpoint_on(self.net.host_ip()),
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
        let m = &self.members[i].machine;
        let out = m.systemctl(&["daemon-reload"]).await?;
        check(&out, "systemctl daemon-reload")?;
        let out = m
            .systemctl(&["start", "fleet.socket", "fleet-tcp.socket", "fleet.service"])
            .await?;
        if !out.status.success() {
            let journal = m
                .exec(&["journalctl", "-u", "fleet", "--no-pager", "-n", "50"])
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            bail!(
                "cannot start fleet in {}: {}\n{journal}",
                m.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `systemctl stop fleet` in member `i`.
    pub async fn stop_fleet(&self, i: usize) -> anyhow::Result<()> {
        let out = self.members[i]
            .machine
            .systemctl(&["stop", "fleet.service"])
            .await?;
        check(&out, "systemctl stop fleet")
    }

    /// The journal of fleet in member `i` (for failure messages).
    pub async fn fleet_journal(&self, i: usize) -> String {
        self.members[i]
            .machine
            .exec(&["journalctl", "-u", "fleet", "--no-pager", "-n", "200"])
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
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
                Ok(String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr))
            },
            |text| text.lines().filter(|l| !l.trim().is_empty()).count() == n,
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
        let out = self
            .fleetctl(&[
                "list-units",
                "--no-legend",
                "--full",
                "--fields",
                "unit,active,machine",
            ])
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

    /// The member whose machine ID is `id`.
    pub fn member_by_id(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.machine.machine_id() == id)
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
