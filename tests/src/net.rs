//! A private L2 network for a test: one bridge on the host with `10.213.X.1/24`, and one
//! `ip netns` per machine joined to it by a veth pair (testbed.md §4).
//!
//! `X` is allocated across concurrently running test processes with an exclusive `flock` on
//! `/tmp/fleet-tb/net-X.lock`, held for as long as the [`Network`] lives. Every interface and
//! namespace name carries `X` (`tbbrX`, `tbXvI`, `tbX-NAME`), so whoever takes the lock next
//! can remove what a crashed process left behind.
//!
//! The namespaces have no default route and the host does not forward, so nothing leaves the
//! bridge subnet. [`Netns::cut`] drops all traffic inside a namespace with an nftables table;
//! [`Netns::heal`] deletes it. (The kernel has no netem, so there is no latency or loss
//! injection.)

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::util::{STATE_DIR, require_root, require_tool, run};

/// Candidate third octets. 7 is left to testbed.md's `tb.sh`.
const FIRST: u32 = 20;
const COUNT: u32 = 220;

/// A bridge plus the namespaces added to it. Dropping it removes all of them.
#[derive(Debug)]
pub struct Network {
    index: u8,
    bridge: String,
    hosts: Vec<Host>,
    /// Held for the network's lifetime; the kernel releases it if the process dies.
    _lock: File,
}

#[derive(Debug)]
struct Host {
    netns: Netns,
    veth: String,
}

/// A network namespace on the bridge. Plain data: cloning it creates nothing, and dropping it
/// removes nothing (the [`Network`] owns the namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    pub name: String,
    pub ip: Ipv4Addr,
}

impl Network {
    /// Takes a free `10.213.X.0/24` and creates its bridge.
    pub fn new() -> anyhow::Result<Network> {
        require_root()?;
        require_tool("ip")?;
        std::fs::create_dir_all(STATE_DIR).with_context(|| format!("cannot create {STATE_DIR}"))?;
        let start = std::process::id() % COUNT;
        for k in 0..COUNT {
            let x = u8::try_from(FIRST + (start + k) % COUNT).context("octet below 240")?;
            let path = format!("{STATE_DIR}/net-{x}.lock");
            let file = File::create(&path).with_context(|| format!("cannot create {path}"))?;
            if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_err()
            {
                continue;
            }
            let net = Network {
                index: x,
                bridge: format!("tbbr{x}"),
                hosts: Vec::new(),
                _lock: file,
            };
            net.remove_leftovers();
            let cidr = format!("{}/24", net.host_ip());
            let created = run("ip", &["link", "add", &net.bridge, "type", "bridge"])
                .and_then(|_| run("ip", &["addr", "add", &cidr, "dev", &net.bridge]))
                .and_then(|_| run("ip", &["link", "set", &net.bridge, "up"]));
            return created.map(|_| net);
        }
        bail!(
            "all test networks 10.213.{FIRST}-{}.0/24 are in use",
            FIRST + COUNT - 1
        )
    }

    /// The `X` in `10.213.X.0/24`.
    pub fn index(&self) -> u8 {
        self.index
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The host's address on the bridge, `10.213.X.1`: serve etcd here for the machines.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.index, 1)
    }

    /// Creates namespace `tbX-NAME` with `eth0` at `10.213.X.(10+i)/24` (`i` counts from 1)
    /// on the bridge, and `lo` up.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<Netns> {
        let i = self.hosts.len() + 1;
        let last = u8::try_from(10 + i)
            .ok()
            .filter(|o| *o < 255)
            .context("at most 244 hosts per network")?;
        let netns = Netns {
            name: format!("tb{}-{name}", self.index),
            ip: Ipv4Addr::new(10, 213, self.index, last),
        };
        let veth = format!("tb{}v{i}", self.index);
        // Recorded first, so a failure half-way is still cleaned up on drop.
        self.hosts.push(Host {
            netns: netns.clone(),
            veth: veth.clone(),
        });
        let ns = netns.name.as_str();
        let cidr = format!("{}/24", netns.ip);
        run("ip", &["netns", "add", ns])?;
        run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        run("ip", &["link", "set", &veth, "master", &self.bridge, "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        run("ip", &["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        Ok(netns)
    }

    /// Removes the namespaces, veths and the bridge. Idempotent; errors are ignored because
    /// something may already be gone.
    pub fn teardown(&mut self) {
        for host in self.hosts.drain(..) {
            // Deleting the namespace destroys its end of the veth pair, and with it ours.
            let _ = run("ip", &["netns", "del", &host.netns.name]);
            let _ = run("ip", &["link", "del", &host.veth]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }

    /// Removes what a crashed process left with this network's `X`; we hold its lock, so the
    /// owner is gone.
    fn remove_leftovers(&self) {
        let ns_prefix = format!("tb{}-", self.index);
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&ns_prefix) {
                    let _ = run("ip", &["netns", "del", &name]);
                }
            }
        }
        let veth_prefix = format!("tb{}v", self.index);
        if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&veth_prefix) || name == self.bridge {
                    let _ = run("ip", &["link", "del", &name]);
                }
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

const CUT_RULES: &str = "\
table inet tbcut
delete table inet tbcut
table inet tbcut {
  chain in  { type filter hook input  priority 0; policy drop; iif lo accept; }
  chain out { type filter hook output priority 0; policy drop; oif lo accept; }
}
";

impl Netns {
    /// `/run/netns/NAME`, for `systemd-nspawn --network-namespace-path=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Drops every packet in and out of the namespace except on `lo`. Idempotent.
    pub fn cut(&self) -> anyhow::Result<()> {
        require_tool("nft")?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run ip netns exec nft")?;
        child
            .stdin
            .take()
            .context("nft stdin is piped")?
            .write_all(CUT_RULES.as_bytes())
            .context("cannot write the nft rules")?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "cannot cut {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Removes the table [`Self::cut`] added. Idempotent.
    pub fn heal(&self) -> anyhow::Result<()> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "nft", "delete", "table", "inet", "tbcut",
            ])
            .output()
            .context("cannot run ip netns exec nft")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !stderr.contains("No such file or directory") {
            bail!("cannot heal {}: {}", self.name, stderr.trim());
        }
        Ok(())
    }

    /// Runs a command inside the namespace (host filesystem, namespace network).
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .with_context(|| format!("cannot run {args:?} in {}", self.name))
    }
}
