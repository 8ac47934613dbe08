//! Small helpers shared by the harness and the tests: required tools, root, free ports,
//! unique names and waiting with a deadline.
//!
//! Missing prerequisites are errors, never skips: a test that cannot run must fail and say
//! what to install.

use std::fmt::Debug;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where the harness keeps lock files and per-machine directories.
pub const STATE_DIR: &str = "/tmp/fleet-tb";

/// The apt package that provides `tool`, for error messages.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "systemd-nspawn" => "systemd-container",
        "etcd" => "etcd-server",
        "etcdctl" => "etcd-client",
        "nft" => "nftables",
        "ip" | "bridge" => "iproute2",
        "nsenter" | "setsid" => "util-linux",
        "busctl" | "systemctl" => "systemd",
        _ => "?",
    }
}

/// The path of `name` on `PATH` (plus the sbin directories), or an error naming the tool and
/// the package to install.
pub fn require_tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} is missing: run ./scripts/setup.sh (apt package {})",
        package_of(name)
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fails unless the process runs as root (machines, namespaces and cgroups need it).
pub fn require_root() -> anyhow::Result<()> {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        bail!(
            "these tests need root (they boot systemd-nspawn machines and create network namespaces): run them as root, as CI does"
        )
    }
}

/// Ports handed out by this process, so two calls never return the same port.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A TCP port on 127.0.0.1 that was free when asked. See [`free_ports`].
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct TCP ports that were free when asked.
///
/// They come from below the kernel's ephemeral range (32768 and up here), so outgoing
/// connections of other processes do not grab them in the meantime. Every candidate is checked
/// by binding it on 0.0.0.0, and a port is never handed out twice by one
/// process. Between processes the starting point depends on the pid, which keeps collisions
/// unlikely; callers that start a server should still retry on "address in use".
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let mut handed = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let seed = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(u32::try_from(handed.len()).unwrap_or(0) * 13);
    let mut out = Vec::with_capacity(n);
    // Hold the listeners until all ports are chosen so they are distinct.
    let mut held = Vec::new();
    for i in 0..SPAN {
        if out.len() == n {
            break;
        }
        let port = u16::try_from(LOW + (seed.wrapping_add(i * 37)) % SPAN)
            .context("port arithmetic stays below 32000")?;
        if handed.contains(&port) || out.contains(&port) {
            continue;
        }
        // 0.0.0.0 conflicts with a listener on any local address, loopback or bridge.
        let Ok(listener) = TcpListener::bind(("0.0.0.0", port)) else {
            continue;
        };
        held.push(listener);
        out.push(port);
    }
    if out.len() < n {
        bail!("cannot find {n} free TCP ports in {LOW}..{}", LOW + SPAN);
    }
    handed.extend(&out);
    Ok(out)
}

/// `prefix-<pid>-<n>`: unique among concurrently running test processes and within this
/// one. With a prefix of up to 3 characters the result fits an interface name (15).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` every 100 ms until it returns `Ok(Some(_))`, or fails after `timeout` naming
/// `what` and the last error `f` returned (errors count as "not yet").
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::from("no value yet"),
            Err(e) => format!("error: {e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last poll: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `observe` every 100 ms until `done` accepts what it returned, and returns that. On
/// timeout the error names `what` and shows the last observation (or the last error).
pub async fn wait_until<O, F, Fut>(
    what: &str,
    timeout: Duration,
    mut observe: F,
    done: impl Fn(&O) -> bool,
) -> anyhow::Result<O>
where
    O: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<O>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match observe().await {
            Ok(o) if done(&o) => return Ok(o),
            Ok(o) => format!("{o:?}"),
            Err(e) => format!("error: {e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last observed: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a command to completion and fails with its stderr if it exits non-zero.
pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let ports = free_ports(5).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 5);
        assert!(!ports.contains(&free_port().unwrap()));
        TcpListener::bind(("127.0.0.1", ports[0])).unwrap();
    }

    #[test]
    fn names_are_short_and_unique() {
        let a = unique_name("tb");
        let b = unique_name("tb");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
    }

    #[test]
    fn missing_tools_name_the_package() {
        let err = require_tool("systemd-nspawn-does-not-exist").unwrap_err();
        assert!(err.to_string().contains("is missing"), "{err}");
        require_tool("sh").unwrap();
    }

    #[tokio::test]
    async fn waiting_reports_the_last_observation() {
        let mut n = 0;
        let err = wait_until(
            "n to reach 100",
            Duration::from_millis(250),
            || {
                n += 1;
                let v = n;
                async move { Ok(v) }
            },
            |v| *v >= 100,
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("n to reach 100") && msg.contains("last observed: "),
            "{msg}"
        );
        let v = wait_for("the value", Duration::from_secs(1), || async {
            Ok(Some(7))
        })
        .await
        .unwrap();
        assert_eq!(v, 7);
    }
}
