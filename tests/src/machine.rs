//! Real systemd machines: `systemd-nspawn` booting the host's own `/usr` (testbed.md §2a,
//! variant A). Each machine is a real system manager on a real system bus, at about 0.6 s
//! per boot.
//!
//! How a machine is started, and why:
//! - A small `sh` wrapper moves itself into `/sys/fs/cgroup/{systemd,unified}/tb/NAME`
//!   before starting nspawn, so every machine has its own cgroup subtree (started from a
//!   shared cgroup, machines trample each other's units). It then moves itself back out so
//!   it does not pin the subtree.
//! - `--register=no --keep-unit --console=passive`: there is no host systemd or machined.
//! - The machine ID is bind-mounted read-only (no first boot, no preset-all) and
//!   `systemd-machine-id-commit.service` is masked, so the machine boots to `running`.
//! - A host directory is bound at `/run/dbus`, which gives the system bus a stable host path.
//! - The wrapper's stdin is a pipe from the test process. When it closes (the [`Machine`] is
//!   dropped, or the test process exits or crashes), the wrapper kills the machine by PID
//!   and removes its cgroups and nspawn's propagation directory. So even the shared machine of
//!   [`Machine::shared`], which is never dropped, is removed when the test binary ends.
//! - nspawn runs in its own session and the wrapper in its own process group, so a Ctrl-C
//!   on the terminal reaches only the test process, and cleanup still happens.
//!
//! Processes are only ever signalled by PID. Names (`tb-<pid>-<n>` from
//! [`crate::util::unique_name`]) are unique per test process.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};

use crate::util::{STATE_DIR, require_root, require_tool, unique_name};

/// What to boot.
#[derive(Clone, Debug)]
pub struct MachineSpec {
    /// Machine and host name: letters, digits and `-`, at most 64 characters, unique among
    /// running machines (use [`unique_name`]).
    pub name: String,
    /// The machine ID (32 lowercase hex digits, not all zero); fleet uses it as its own ID.
    pub machine_id: String,
    /// A network namespace to run in (`Netns::path()`); `None`: a private network with only
    /// `lo`.
    pub netns: Option<PathBuf>,
    /// Host paths bound read-only into the machine: (host, inside).
    pub binds_ro: Vec<(PathBuf, PathBuf)>,
    /// Host paths bound read-write into the machine: (host, inside).
    pub binds_rw: Vec<(PathBuf, PathBuf)>,
}

impl MachineSpec {
    /// A spec with a fresh machine ID, no network and no binds.
    pub fn new(name: impl Into<String>) -> Self {
        MachineSpec {
            name: name.into(),
            machine_id: fresh_machine_id(),
            netns: None,
            binds_ro: Vec::new(),
            binds_rw: Vec::new(),
        }
    }
}

fn fresh_machine_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:08x}{:08x}{:016x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or(1)
    )
}

/// A booted machine. Dropping it stops the machine (SIGTERM to nspawn, SIGKILL after 5 s)
/// and removes everything it created on the host.
pub struct Machine {
    spec: MachineSpec,
    /// `/tmp/fleet-tb/m/NAME`: the bus directory, machine-id file and nspawn's log.
    dir: PathBuf,
    nspawn: i32,
    leader: i32,
    cgroups: Vec<PathBuf>,
    /// The wrapper shell; `None` once reaped.
    wrapper: Option<Child>,
    /// Closing this tells the wrapper to kill the machine.
    watchdog: Option<ChildStdin>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("name", &self.spec.name)
            .field("nspawn", &self.nspawn)
            .field("leader", &self.leader)
            .finish_non_exhaustive()
    }
}

/// The wrapper. Arguments after `$0` are nspawn's; the environment carries the rest.
const WRAPPER: &str = r#"
set -u
trap '' INT HUP
# Asynchronous lists get /dev/null as stdin; keep the pipe from the test process on fd 3.
exec 3<&0
for d in $TB_CGROUPS; do
  mkdir -p "$d" && echo $$ > "$d/cgroup.procs" || { echo "cannot enter cgroup $d" >&2; exit 97; }
done
setsid systemd-nspawn "$@" </dev/null 3<&- >>"$TB_LOG" 2>&1 &
P=$!
for b in $TB_CGROUPS_BACK; do echo $$ > "$b/cgroup.procs" 2>/dev/null; done
echo "$P"
exec >>"$TB_LOG" 2>&1
# Watchdog: when the test process closes our stdin, kill the machine's init (the whole
# container dies with it), then nspawn if it is still there.
( read -r _
  kill -KILL $(cat /proc/$P/task/*/children 2>/dev/null) 2>/dev/null || kill -TERM $P 2>/dev/null
  sleep 3; kill -KILL $P 2>/dev/null ) <&3 &
W=$!
wait $P
kill $W 2>/dev/null
rm -rf "/run/systemd/nspawn/propagate/$TB_NAME"
i=0
while [ $i -lt 50 ]; do
  left=
  for d in $TB_CGROUPS; do
    [ -d "$d" ] || continue
    left=1
    for p in $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  [ -z "$left" ] && break
  i=$((i+1)); sleep 0.1
done
# The test process removes the directory itself (after reading the log if boot failed);
# if it is gone, nobody else will.
kill -0 $PPID 2>/dev/null || rm -rf "$TB_DIR"
"#;

impl Machine {
    /// Boots a machine and waits until its manager reports `running` or `degraded`.
    pub async fn boot(spec: MachineSpec) -> anyhow::Result<Machine> {
        require_root()?;
        for tool in ["systemd-nspawn", "busctl", "nsenter", "setsid"] {
            require_tool(tool)?;
        }
        check_machine_name(&spec.name)?;
        check_machine_id(&spec.machine_id)?;
        sweep_stale();

        let dir = PathBuf::from(STATE_DIR).join("m").join(&spec.name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove stale {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir.join("dbus"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(dir.join("machine-id"), format!("{}\n", spec.machine_id))?;
        let log = dir.join("log");

        let (cgroups, back) = cgroup_dirs(&spec.name)?;
        let mut args: Vec<String> = vec![
            "-D".into(),
            "/".into(),
            "--volatile=yes".into(),
            "-M".into(),
            spec.name.clone(),
            format!("--hostname={}", spec.name),
            "-b".into(),
            "--register=no".into(),
            "--keep-unit".into(),
            "--console=passive".into(),
            format!("--bind={}:/run/dbus", dir.join("dbus").display()),
            format!(
                "--bind-ro={}:/etc/machine-id",
                dir.join("machine-id").display()
            ),
        ];
        match &spec.netns {
            Some(ns) => args.push(format!("--network-namespace-path={}", ns.display())),
            None => args.push("--private-network".into()),
        }
        for (host, inside) in &spec.binds_ro {
            args.push(format!("--bind-ro={}:{}", host.display(), inside.display()));
        }
        for (host, inside) in &spec.binds_rw {
            args.push(format!("--bind={}:{}", host.display(), inside.display()));
        }
        args.push("systemd.mask=systemd-machine-id-commit.service".into());

        let join = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("fleet-tb-machine")
            .args(&args)
            .env("TB_NAME", &spec.name)
            .env("TB_LOG", &log)
            .env("TB_DIR", &dir)
            .env("TB_CGROUPS", join(&cgroups))
            .env("TB_CGROUPS_BACK", join(&back))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("cannot start the machine wrapper (sh)")?;
        let watchdog = wrapper.stdin.take();
        let mut line = String::new();
        let read = wrapper
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        let nspawn: i32 = match (read, line.trim().parse()) {
            (Some(Ok(_)), Ok(pid)) => pid,
            _ => {
                let out = wrapper.wait_with_output()?;
                bail!(
                    "machine {} did not start ({}): {}",
                    spec.name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        };
        std::fs::write(
            dir.join("owner"),
            format!("{} {nspawn}\n", std::process::id()),
        )?;
        let mut machine = Machine {
            spec,
            dir,
            nspawn,
            leader: 0,
            cgroups,
            wrapper: Some(wrapper),
            watchdog,
        };
        machine.wait_booted().await?;
        Ok(machine)
    }

    /// One machine per test process, booted on first use and shared by all tests in it;
    /// give each test its own unit names. It is never dropped: it goes away when the test
    /// binary exits (see the module docs). Safe to call from any runtime or thread.
    pub fn shared() -> anyhow::Result<&'static Machine> {
        static SHARED: OnceLock<Result<Machine, String>> = OnceLock::new();
        let booted = SHARED.get_or_init(|| {
            // Boot on a thread of its own: the caller may be inside a runtime, and nothing of
            // the machine may depend on a runtime that ends with one test.
            std::thread::spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot build a runtime: {e}"))?;
                rt.block_on(Machine::boot(MachineSpec::new(unique_name("tb"))))
                    .map_err(|e| format!("{e:#}"))
            })
            .join()
            .unwrap_or_else(|_| Err("booting the shared machine panicked".to_owned()))
        });
        booted
            .as_ref()
            .map_err(|e| anyhow::anyhow!("cannot boot the shared test machine: {e}"))
    }

    async fn wait_booted(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let socket = self.dir.join("dbus/system_bus_socket");
        let mut last = String::from("bus socket not there yet");
        loop {
            if let Some(wrapper) = self.wrapper.as_mut()
                && let Some(status) = wrapper.try_wait()?
            {
                self.wrapper = None;
                bail!(
                    "machine {} exited during boot ({status}); nspawn log:\n{}",
                    self.spec.name,
                    self.log_tail(40)
                );
            }
            if socket.exists() {
                let out = tokio::process::Command::new("busctl")
                    .args([
                        &format!("--address={}", self.bus_address()),
                        "get-property",
                        "org.freedesktop.systemd1",
                        "/org/freedesktop/systemd1",
                        "org.freedesktop.systemd1.Manager",
                        "SystemState",
                    ])
                    .output()
                    .await?;
                last = if out.status.success() {
                    String::from_utf8_lossy(&out.stdout).trim().to_owned()
                } else {
                    String::from_utf8_lossy(&out.stderr).trim().to_owned()
                };
                if last.contains("\"running\"") || last.contains("\"degraded\"") {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "machine {} did not finish booting in 90 s (last SystemState: {last}); nspawn log:\n{}",
                    self.spec.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let children = children_of(self.nspawn);
        match children.as_slice() {
            [leader] => self.leader = *leader,
            other => bail!(
                "machine {}: expected nspawn (pid {}) to have exactly one child, found {other:?}",
                self.spec.name,
                self.nspawn
            ),
        }
        if last.contains("degraded") {
            let failed = self
                .systemctl(&["--failed", "--no-legend", "--plain"])
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            tracing::warn!(machine = %self.spec.name, failed = %failed.trim(), "machine booted degraded");
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &MachineSpec {
        &self.spec
    }

    pub fn machine_id(&self) -> &str {
        &self.spec.machine_id
    }

    /// `unix:path=…/system_bus_socket`: the machine's system bus, from the host.
    pub fn bus_address(&self) -> String {
        format!(
            "unix:path={}",
            self.dir.join("dbus/system_bus_socket").display()
        )
    }

    /// The machine's PID 1 (as seen from the host).
    pub fn leader_pid(&self) -> u32 {
        self.leader.unsigned_abs()
    }

    pub fn nspawn_pid(&self) -> u32 {
        self.nspawn.unsigned_abs()
    }

    /// A path inside the machine as the host can reach it: `/proc/<leader>/root/<p>`.
    pub fn root_path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        let relative = p.strip_prefix("/").unwrap_or(p);
        PathBuf::from(format!("/proc/{}/root", self.leader)).join(relative)
    }

    /// Writes a file inside the machine, creating its directories.
    pub fn write_file(
        &self,
        path_in_machine: impl AsRef<Path>,
        contents: impl AsRef<[u8]>,
    ) -> anyhow::Result<()> {
        let path = self.root_path(path_in_machine);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Runs a command inside the machine (all its namespaces) and returns its output,
    /// whatever its exit status.
    pub async fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        let leader = self.leader.to_string();
        tokio::process::Command::new("nsenter")
            .args(["-t", &leader, "-a", "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {args:?} in {}", self.spec.name))
    }

    /// `systemctl ARGS` inside the machine.
    pub async fn systemctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        self.exec(&all).await
    }

    /// The last `lines` lines of `unit`'s journal inside the machine, empty
    /// when it cannot be read (for failure messages).
    pub async fn journal(&self, unit: &str, lines: u32) -> String {
        let lines = lines.to_string();
        self.exec(&["journalctl", "-u", unit, "--no-pager", "-n", &lines])
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// `systemctl <verb> <units>`, failing with systemctl's complaint and the
    /// last `lines` lines of `journal_unit`'s journal: `cannot <verb>
    /// <journal_unit> in <machine>: ...`.
    pub async fn systemctl_or_journal(
        &self,
        verb: &str,
        units: &[&str],
        journal_unit: &str,
        lines: u32,
    ) -> anyhow::Result<()> {
        let mut args = vec![verb];
        args.extend_from_slice(units);
        let out = self.systemctl(&args).await?;
        if !out.status.success() {
            let journal = self.journal(journal_unit, lines).await;
            bail!(
                "cannot {verb} {journal_unit} in {}: {}\n{journal}",
                self.spec.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Stops the machine cleanly (systemd shuts down) and removes its host state.
    pub async fn shutdown(mut self) {
        tokio::task::spawn_blocking(move || self.stop(Duration::from_secs(10)))
            .await
            .ok();
    }

    /// Pulls the plug: kills the machine's init, which takes the whole container with it.
    pub async fn kill(mut self) {
        let _ = kill_process(pid(self.leader), Signal::KILL);
        tokio::task::spawn_blocking(move || self.stop(Duration::from_secs(5)))
            .await
            .ok();
    }

    /// SIGTERM to nspawn (a clean shutdown of the machine), SIGKILL after `grace`, then the
    /// host cleanup. Idempotent.
    fn stop(&mut self, grace: Duration) {
        if let Some(mut wrapper) = self.wrapper.take() {
            let _ = kill_process(pid(self.nspawn), Signal::TERM);
            if !wait_child(&mut wrapper, grace) {
                if self.leader != 0 {
                    let _ = kill_process(pid(self.leader), Signal::KILL);
                }
                let _ = kill_process(pid(self.nspawn), Signal::KILL);
                // Closing stdin also tells the wrapper to kill what is left.
                self.watchdog = None;
                if !wait_child(&mut wrapper, Duration::from_secs(5)) {
                    let _ = wrapper.kill();
                    let _ = wrapper.wait();
                }
            }
        }
        self.watchdog = None;
        // The wrapper does this too; repeat in case it was killed before it got there.
        let _ = std::fs::remove_dir_all(
            Path::new("/run/systemd/nspawn/propagate").join(&self.spec.name),
        );
        remove_cgroups(&self.cgroups);
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn pid(p: i32) -> Pid {
    // Only called with PIDs read from nspawn or /proc, which are positive; 1 would be
    // a bug, so fall back to an impossible PID rather than signalling init.
    Pid::from_raw(p)
        .filter(|p| !p.is_init())
        .unwrap_or_else(|| Pid::from_raw(i32::MAX).expect("i32::MAX is a non-zero PID"))
}

/// Waits up to `timeout` for `child` to exit; true if it did (and was reaped).
fn wait_child(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn check_machine_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        bail!("invalid machine name {name:?}: use letters, digits and '-', at most 64");
    }
    Ok(())
}

fn check_machine_id(id: &str) -> anyhow::Result<()> {
    let ok = id.len() == 32
        && id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
        && id.chars().any(|c| c != '0');
    if !ok {
        bail!("invalid machine ID {id:?}: need 32 lowercase hex digits, not all zero");
    }
    Ok(())
}

/// The cgroup directories for machine `name` (`…/tb/NAME` in each hierarchy the host's
/// systemd would use), and the cgroups this process is in, to return to.
fn cgroup_dirs(name: &str) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let own =
        std::fs::read_to_string("/proc/self/cgroup").context("cannot read /proc/self/cgroup")?;
    let own_path = |controller: &str| {
        own.lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, c, p) = (parts.next()?, parts.next()?, parts.next()?);
                (c == controller).then(|| p.trim_start_matches('/').to_owned())
            })
            .unwrap_or_default()
    };
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies: Vec<(PathBuf, &str)> = if root.join("unified").is_dir() {
        // Hybrid: the named systemd v1 hierarchy plus cgroup2 under unified/.
        vec![
            (root.join("systemd"), "name=systemd"),
            (root.join("unified"), ""),
        ]
    } else if root.join("cgroup.controllers").exists() {
        vec![(root.to_owned(), "")]
    } else {
        vec![(root.join("systemd"), "name=systemd")]
    };
    let mut dirs = Vec::new();
    let mut back = Vec::new();
    for (mount, controller) in hierarchies {
        if !mount.is_dir() {
            bail!("cgroup hierarchy {} is not mounted", mount.display());
        }
        dirs.push(mount.join("tb").join(name));
        back.push(mount.join(own_path(controller)));
    }
    Ok((dirs, back))
}

fn remove_cgroups(dirs: &[PathBuf]) {
    for dir in dirs {
        // Deepest first; failures mean processes are left, which the wrapper handles.
        let mut all = Vec::new();
        collect_dirs(dir, &mut all);
        for d in all.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_owned());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

/// The PIDs whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may contain spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(parent) {
            out.push(p);
        }
    }
    out
}

/// Removes machines whose test process died without cleaning up (the wrapper normally
/// does it; this covers a wrapper that was killed too). Only machines recorded under
/// `/tmp/fleet-tb/m/` whose owner process is gone are touched, and nspawn is signalled
/// only if its command line still names the machine.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(Path::new(STATE_DIR).join("m")) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(owner) = std::fs::read_to_string(dir.join("owner")) else {
            continue;
        };
        let mut fields = owner.split_whitespace().map(str::parse::<i32>);
        let (Some(Ok(test_pid)), Some(Ok(nspawn))) = (fields.next(), fields.next()) else {
            continue;
        };
        if Path::new(&format!("/proc/{test_pid}")).exists() {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{nspawn}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_ours = args.first().is_some_and(|a| a.ends_with(b"systemd-nspawn"))
            && args
                .windows(2)
                .any(|w| w[0] == b"-M" && w[1] == name.as_bytes());
        if is_ours {
            for child in children_of(nspawn) {
                let _ = kill_process(pid(child), Signal::KILL);
            }
            let _ = kill_process(pid(nspawn), Signal::KILL);
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = std::fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(&name));
        if let Ok((cgroups, _)) = cgroup_dirs(&name) {
            remove_cgroups(&cgroups);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
