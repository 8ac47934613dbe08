//! SSH on real parts, for fleetctl's `--tunnel`, `status`, `journal` and
//! `ssh`: a real `ssh-agent` started by the test, keys made at test time
//! with `ssh-keygen`, and Debian's OpenSSH `sshd` running as a systemd unit
//! inside a test machine (the machines boot the host's `/usr`, so the host's
//! `openssh-server` package provides the binary; `scripts/setup.sh`
//! installs it).
//!
//! Inside a machine everything lives under [`SSH_DIR`] (the machine's root
//! is volatile): the host key, `authorized_keys` for root, and an
//! `sshd_config` that allows root by key only, without PAM, and puts
//! `/opt/fleet` (the built fleetctl) first on the PATH of sessions, so a
//! tunnel's `fleetctl fd-forward` finds it under its plain name.
//!
//! The agent is stopped by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};

use crate::machine::Machine;
use crate::util::{require_tool, wait_until};

/// Where a machine's sshd keeps its files.
pub const SSH_DIR: &str = "/etc/fleet-test-ssh";

/// The systemd unit running sshd in a machine.
pub const SSHD_UNIT: &str = "fleet-test-sshd.service";

/// The sshd binary (the host's, seen through the machine's `/usr`).
const SSHD: &str = "/usr/sbin/sshd";

/// An ed25519 key pair made by `ssh-keygen`.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// The private key file (mode 0600).
    pub private: PathBuf,
    /// The public key line (`ssh-ed25519 AAAA... comment`).
    pub public: String,
}

impl KeyPair {
    /// Makes a new key pair at `dir/name` (and `dir/name.pub`).
    ///
    /// # Errors
    ///
    /// `ssh-keygen` missing or failing.
    pub fn generate(dir: &Path, name: &str) -> anyhow::Result<KeyPair> {
        Self::generate_of_type(dir, name, "ed25519")
    }

    /// Makes a new key pair of another type (`ssh-keygen -t`: `rsa`,
    /// `ecdsa`, `ed25519`) at `dir/name`.
    ///
    /// # Errors
    ///
    /// `ssh-keygen` missing or failing.
    pub fn generate_of_type(dir: &Path, name: &str, key_type: &str) -> anyhow::Result<KeyPair> {
        require_tool("ssh-keygen")?;
        let private = dir.join(name);
        // ssh-keygen asks before overwriting; start clean.
        let _ = std::fs::remove_file(&private);
        let _ = std::fs::remove_file(private.with_extension("pub"));
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", key_type, "-N", "", "-C", name, "-f"])
            .arg(&private)
            .stdin(Stdio::null())
            .output()
            .context("cannot run ssh-keygen")?;
        if !out.status.success() {
            bail!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let public = std::fs::read_to_string(dir.join(format!("{name}.pub")))
            .context("cannot read the public key")?
            .trim()
            .to_owned();
        Ok(KeyPair { private, public })
    }

    /// The public key without its comment (`ssh-ed25519 AAAA...`), as a
    /// known-hosts line carries it.
    pub fn public_key(&self) -> String {
        self.public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A running `ssh-agent` on a socket of its own. Stopped by PID on drop.
pub struct SshAgent {
    /// The agent (`ssh-agent -D`: it stays in the foreground, so this is
    /// its PID).
    child: Child,
    /// Holds the socket.
    _dir: tempfile::TempDir,
    /// The socket, for `SSH_AUTH_SOCK`.
    pub sock: PathBuf,
}

impl SshAgent {
    /// Starts an agent and waits for its socket.
    ///
    /// # Errors
    ///
    /// `ssh-agent` missing, or its socket not appearing within 10 s.
    pub fn start() -> anyhow::Result<SshAgent> {
        require_tool("ssh-agent")?;
        let dir = tempfile::Builder::new()
            .prefix("fleet-agent-")
            .tempdir()
            .context("cannot create the agent's directory")?;
        let sock = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start ssh-agent")?;
        let mut agent = SshAgent {
            child,
            _dir: dir,
            sock,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent.sock.exists() {
            if let Ok(Some(status)) = agent.child.try_wait() {
                bail!("ssh-agent exited at start ({status})");
            }
            if Instant::now() > deadline {
                bail!("ssh-agent's socket {} did not appear", agent.sock.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    /// Adds a private key to the agent (`ssh-add`).
    ///
    /// # Errors
    ///
    /// `ssh-add` missing or failing.
    pub fn add(&self, key: &KeyPair) -> anyhow::Result<()> {
        require_tool("ssh-add")?;
        let out = Command::new("ssh-add")
            .arg(&key.private)
            .env("SSH_AUTH_SOCK", &self.sock)
            .stdin(Stdio::null())
            .output()
            .context("cannot run ssh-add")?;
        if !out.status.success() {
            bail!("ssh-add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        if let Some(pid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

/// The sshd configuration of a test machine.
fn sshd_config() -> String {
    format!(
        "Port 22\n\
         HostKey {SSH_DIR}/ssh_host_ed25519_key\n\
         AuthorizedKeysFile {SSH_DIR}/authorized_keys\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         StrictModes no\n\
         AllowAgentForwarding yes\n\
         AllowTcpForwarding yes\n\
         PidFile none\n\
         SetEnv PATH=/opt/fleet:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    )
}

/// Writes `host_key` as the machine's sshd host key (mode 0600, as sshd
/// demands).
///
/// # Errors
///
/// The files cannot be written.
pub fn install_host_key(machine: &Machine, host_key: &KeyPair) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let private = std::fs::read(&host_key.private).context("cannot read the host key")?;
    let path = format!("{SSH_DIR}/ssh_host_ed25519_key");
    machine.write_file(&path, private)?;
    std::fs::set_permissions(
        machine.root_path(&path),
        std::fs::Permissions::from_mode(0o600),
    )
    .context("cannot chmod the host key")?;
    machine.write_file(format!("{path}.pub"), format!("{}\n", host_key.public))?;
    Ok(())
}

/// Starts sshd in `machine` (reachable at `ip`) with `host_key`, letting
/// root in with any of `authorized` public keys, and waits until it accepts
/// TCP connections.
///
/// # Errors
///
/// sshd missing (install openssh-server: scripts/setup.sh), or not starting.
pub async fn start_sshd(
    machine: &Machine,
    ip: &str,
    host_key: &KeyPair,
    authorized: &[&KeyPair],
) -> anyhow::Result<()> {
    if !Path::new(SSHD).is_file() {
        bail!("{SSHD} is missing: install openssh-server (scripts/setup.sh does)");
    }
    install_host_key(machine, host_key)?;
    let keys: String = authorized
        .iter()
        .map(|k| format!("{}\n", k.public))
        .collect();
    machine.write_file(format!("{SSH_DIR}/authorized_keys"), keys)?;
    machine.write_file(format!("{SSH_DIR}/sshd_config"), sshd_config())?;
    // sshd's privilege-separation user; the volatile /etc only has the
    // users of systemd's sysusers.d.
    let passwd = machine.root_path("/etc/passwd");
    let users = std::fs::read_to_string(&passwd).context("cannot read the machine's passwd")?;
    if !users.lines().any(|l| l.starts_with("sshd:")) {
        let line = "sshd:x:74:65534::/run/sshd:/usr/sbin/nologin\n";
        let sep = if users.ends_with('\n') || users.is_empty() {
            ""
        } else {
            "\n"
        };
        std::fs::write(&passwd, format!("{users}{sep}{line}"))
            .context("cannot add the sshd user")?;
    }
    unlock_root(machine)?;
    machine.write_file(
        format!("/etc/systemd/system/{SSHD_UNIT}"),
        format!(
            "[Unit]\nDescription=OpenSSH server for fleet tests\n\n\
             [Service]\nExecStart={SSHD} -D -e -f {SSH_DIR}/sshd_config\n\
             RuntimeDirectory=sshd\nRuntimeDirectoryMode=0755\n"
        ),
    )?;
    let out = machine.systemctl(&["daemon-reload"]).await?;
    crate::cluster::check(&out, "systemctl daemon-reload")?;
    restart_sshd(machine, ip).await
}

/// Makes root's password field `*` (no password, but not locked): without
/// PAM, sshd refuses even key logins to a locked (`!...`) account, and the
/// machine's sysusers create root locked.
fn unlock_root(machine: &Machine) -> anyhow::Result<()> {
    let shadow = machine.root_path("/etc/shadow");
    let Ok(text) = std::fs::read_to_string(&shadow) else {
        return Ok(()); // no shadow file: nothing is locked
    };
    let fixed: String = text
        .lines()
        .map(|l| {
            let mut fields: Vec<&str> = l.split(':').collect();
            if fields.first() == Some(&"root") && fields.len() > 1 && fields[1].starts_with('!') {
                fields[1] = "*";
            }
            format!("{}\n", fields.join(":"))
        })
        .collect();
    std::fs::write(&shadow, fixed).context("cannot unlock root in the machine's shadow")
}

/// Restarts sshd in `machine` (after a new host key) and waits until it
/// accepts TCP connections at `ip:22`.
///
/// # Errors
///
/// sshd not starting.
pub async fn restart_sshd(machine: &Machine, ip: &str) -> anyhow::Result<()> {
    machine
        .systemctl_or_journal("restart", &[SSHD_UNIT], SSHD_UNIT, 30)
        .await?;
    let addr = format!("{ip}:22");
    wait_until(
        &format!("sshd listening on {addr}"),
        Duration::from_secs(20),
        || async {
            Ok(tokio::net::TcpStream::connect(&addr)
                .await
                .err()
                .map(|e| e.to_string()))
        },
        Option::is_none,
    )
    .await?;
    Ok(())
}

/// Debian's OpenSSH sshd running on the host itself, on a loopback port,
/// for checks that end in the handshake (host keys) and need no machine.
/// Stopped by PID on drop.
pub struct LocalSshd {
    /// `sshd -D`: stays in the foreground, so this is its PID.
    child: Child,
    /// The port on 127.0.0.1.
    pub port: u16,
    /// Holds the config and the keys.
    _dir: tempfile::TempDir,
}

impl LocalSshd {
    /// Starts sshd on `127.0.0.1` with exactly `host_keys` (so it offers
    /// only their algorithms), letting root in with `authorized`, and waits
    /// until it accepts TCP connections.
    ///
    /// # Errors
    ///
    /// sshd missing (install openssh-server: scripts/setup.sh), or not
    /// starting within 10 s.
    pub async fn start(host_keys: &[&KeyPair], authorized: &[&KeyPair]) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        if !Path::new(SSHD).is_file() {
            bail!("{SSHD} is missing: install openssh-server (scripts/setup.sh does)");
        }
        let dir = tempfile::Builder::new()
            .prefix("fleet-sshd-")
            .tempdir()
            .context("cannot create sshd's directory")?;
        let mut config = String::new();
        for (i, key) in host_keys.iter().enumerate() {
            let path = dir.path().join(format!("host_key_{i}"));
            std::fs::copy(&key.private, &path).context("cannot copy a host key")?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            config.push_str(&format!("HostKey {}\n", path.display()));
        }
        let keys: String = authorized
            .iter()
            .map(|k| format!("{}\n", k.public))
            .collect();
        std::fs::write(dir.path().join("authorized_keys"), keys)?;
        // sshd's privilege-separation directory, which the package's unit
        // would create.
        std::fs::create_dir_all("/run/sshd").context("cannot create /run/sshd")?;
        let port = crate::util::free_port()?;
        config.push_str(&format!(
            "ListenAddress 127.0.0.1\nPort {port}\nAuthorizedKeysFile {}\n\
             PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPidFile none\n",
            dir.path().join("authorized_keys").display()
        ));
        let config_path = dir.path().join("sshd_config");
        std::fs::write(&config_path, config)?;
        let log_path = dir.path().join("sshd.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start sshd")?;
        let mut sshd = LocalSshd {
            child,
            port,
            _dir: dir,
        };
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("sshd on {addr} exited at start ({status}): {log}");
            }
            if Instant::now() > deadline {
                bail!("sshd did not listen on {addr} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(sshd)
    }
}

impl Drop for LocalSshd {
    fn drop(&mut self) {
        if let Some(pid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let _ = self.child.wait();
    }
}
