//! SSH, as fleetctl uses it (fleet-reference.md §8.4): the `--tunnel` to a
//! bastion, and the remote commands of `status`, `journal` and `ssh`.
//!
//! - Authentication is through ssh-agent only (`SSH_AUTH_SOCK`), as in the
//!   original: every identity the agent holds is tried in turn.
//! - Host keys are checked against an OpenSSH-style known-hosts file
//!   (`~/.fleetctl/known_hosts` by default). An unknown host is asked about
//!   on stderr (`yes`/`y` on stdin records it); a changed key prints
//!   OpenSSH's "REMOTE HOST IDENTIFICATION HAS CHANGED" banner and fails.
//!   A host is known as soon as the file has a key of any algorithm for it:
//!   the handshake then asks for the recorded algorithms first (as OpenSSH
//!   does), and a server that offers a key of another algorithm only is a
//!   changed key too, never a first contact that would be trusted and
//!   recorded beside the old key. `--strict-host-key-checking=false` skips
//!   the check.
//! - A server may open an agent channel (`auth-agent@openssh.com`) only
//!   when fleetctl was asked to forward the agent (`--forward-agent`);
//!   otherwise it is refused, so a hostile or compromised host cannot use
//!   the local agent's keys.
//! - A [`Session`] to a machine behind the bastion is a second SSH handshake
//!   over a `direct-tcpip` channel of the bastion's session
//!   ([`Session::connect_via`]).
//!
//! The host-key prompt writes to the process's stderr and reads its stdin
//! directly rather than through [`crate::ui::Ui`]: it runs inside russh's
//! `Send` handler, and it is a conversation with the person at the terminal,
//! not command output.
//!
//! Design cost: `--ssh-timeout` bounds the TCP dial and the handshake, but
//! not the time a person takes to answer the host-key prompt (the
//! handshake's timer is paused by nothing, so the prompt happens after the
//! dial, inside a generous handshake deadline of its own).

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use russh::client::{self, Handle, Msg};
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg, ChannelStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// The terminal type of a remote PTY (the original's).
const TERM: &str = "xterm-256color";

/// The terminal modes of a remote PTY, the original's: echo on, 14400
/// baud both ways.
const TERMINAL_MODES: &[(russh::Pty, u32)] = &[
    (russh::Pty::ECHO, 1),
    (russh::Pty::TTY_OP_ISPEED, 14400),
    (russh::Pty::TTY_OP_OSPEED, 14400),
];

/// How long a person may take to answer the host-key prompt.
const PROMPT_TIMEOUT: Duration = Duration::from_secs(600);

/// What every SSH connection of one fleetctl run shares.
#[derive(Clone, Debug)]
pub struct SshConfig {
    /// The user to log in as (`--ssh-username`).
    pub user: String,
    /// Dial and handshake deadline (`--ssh-timeout`).
    pub timeout: Duration,
    /// The known-hosts file; `None` when host keys are not checked
    /// (`--strict-host-key-checking=false`).
    pub known_hosts: Option<PathBuf>,
    /// Whether to ask for agent forwarding on sessions (`--forward-agent`).
    pub forward_agent: bool,
}

/// Errors of the SSH handshake that the user must see as such.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The server's host key differs from the recorded one.
    #[error("host key mismatch for {host} (line {line} of {file})")]
    HostKeyChanged {
        /// `host` or `[host]:port`.
        host: String,
        /// The offending line of the known-hosts file.
        line: usize,
        /// The known-hosts file.
        file: String,
    },
    /// The user did not accept an unknown host key.
    #[error("host key verification failed for {0}")]
    HostKeyRejected(String),
    /// The known-hosts file could not be read or written.
    #[error("known hosts file {file}")]
    KnownHosts {
        /// The file.
        file: String,
        /// The cause.
        #[source]
        source: russh::keys::Error,
    },
    /// The SSH protocol failed.
    #[error(transparent)]
    Ssh(#[from] russh::Error),
}

/// The `russh` handler: checks the host key and serves forwarded agent
/// channels.
struct Client {
    /// The host as dialled, for the known-hosts record.
    host: String,
    /// The port as dialled.
    port: u16,
    /// The known-hosts file, or `None` to accept any key.
    known_hosts: Option<PathBuf>,
    /// `--forward-agent`: only then may the server open agent channels.
    forward_agent: bool,
}

/// The keys recorded for `host:port` in `file` (none if the file does not
/// exist), with their lines.
fn recorded_keys(file: &Path, host: &str, port: u16) -> Result<Vec<(usize, PublicKey)>, SshError> {
    if !file.exists() {
        return Ok(Vec::new());
    }
    russh::keys::known_hosts::known_host_keys_path(host, port, file).map_err(|source| {
        SshError::KnownHosts {
            file: file.display().to_string(),
            source,
        }
    })
}

/// Whether a host-key algorithm of the negotiation signs with a key like
/// `key` (all RSA signature hashes use the same RSA key).
fn same_key_type(algorithm: &russh::keys::Algorithm, key: &PublicKey) -> bool {
    match algorithm {
        russh::keys::Algorithm::Rsa { .. } => key.algorithm().is_rsa(),
        other => *other == key.algorithm(),
    }
}

/// The host-key algorithms to offer: those of the recorded keys first, so a
/// server holding several host keys proves the one we know (OpenSSH orders
/// them the same way).
fn preferred_host_key_algorithms(recorded: &[(usize, PublicKey)]) -> Vec<russh::keys::Algorithm> {
    let all = russh::Preferred::default().key.into_owned();
    let (mut known, others): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|a| recorded.iter().any(|(_, k)| same_key_type(a, k)));
    known.extend(others);
    known
}

/// The line to blame when `key` matches none of the `recorded` keys: the
/// first of the same algorithm (a changed key), else the first for the host
/// (a key of another algorithm).
fn offending_line(recorded: &[(usize, PublicKey)], key: &PublicKey) -> Option<usize> {
    recorded
        .iter()
        .find(|(_, k)| k.algorithm() == key.algorithm())
        .or_else(|| recorded.first())
        .map(|(line, _)| *line)
}

/// `host` on port 22, `[host]:port` otherwise: how known-hosts names it.
fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The MD5 fingerprint of a key as `aa:bb:...`, as the original showed it.
fn md5_fingerprint(key: &PublicKey) -> String {
    let blob = key.to_bytes().unwrap_or_default();
    let digest = md5::compute(blob);
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// OpenSSH's banner for a changed host key.
fn mismatch_banner(key: &PublicKey, file: &Path, line: usize) -> String {
    format!(
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
         @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
         @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
         IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
         Someone could be eavesdropping on you right now (man-in-the-middle attack)!\n\
         It is also possible that the {algo} host key has just been changed.\n\
         The fingerprint for the {algo} key sent by the remote host is\n\
         {fp}.\n\
         Please contact your system administrator.\n\
         Add correct host key in {file} to get rid of this message.\n\
         Offending key in {file}:{line}\n",
        algo = key.algorithm(),
        fp = md5_fingerprint(key),
        file = file.display(),
    )
}

/// Asks on stderr whether to trust `name`'s key; reads the answer from
/// stdin. Anything but `yes`/`y` (including end of input) is a no.
fn ask_trust(name: &str, key: &PublicKey) -> bool {
    let mut err = io::stderr();
    // The prompt is best effort: without a stderr the answer still decides.
    let _ = write!(
        err,
        "The authenticity of host '{name}' can't be established.\n\
         {} key fingerprint is {}.\n\
         Are you sure you want to continue connecting (yes/no)? ",
        key.algorithm(),
        md5_fingerprint(key)
    );
    let _ = err.flush();
    let mut answer = String::new();
    if io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim(), "yes" | "y")
}

impl client::Handler for Client {
    type Error = SshError;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, SshError> {
        let Some(file) = &self.known_hosts else {
            return Ok(true);
        };
        // fleet records plain host keys; a certificate is checked by the key
        // it certifies.
        let owned;
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(cert) => {
                owned = PublicKey::new(cert.public_key().clone(), "");
                &owned
            }
        };
        let name = known_hosts_name(&self.host, self.port);
        let known_hosts_error = |source| SshError::KnownHosts {
            file: file.display().to_string(),
            source,
        };
        let recorded = recorded_keys(file, &self.host, self.port)?;
        if recorded.iter().any(|(_, k)| k.key_data() == key.key_data()) {
            return Ok(true);
        }
        // Known by a key of this or another algorithm: a changed key.
        if let Some(line) = offending_line(&recorded, key) {
            eprint!("{}", mismatch_banner(key, file, line));
            return Err(SshError::HostKeyChanged {
                host: name,
                line,
                file: file.display().to_string(),
            });
        }
        let (host, key_owned, file_owned) = (name.clone(), key.clone(), file.clone());
        let trusted = tokio::task::spawn_blocking(move || ask_trust(&host, &key_owned))
            .await
            .unwrap_or(false);
        if !trusted {
            return Err(SshError::HostKeyRejected(name));
        }
        if let Some(dir) = file_owned.parent() {
            create_private_dir(dir).map_err(|e| known_hosts_error(e.into()))?;
        }
        append_known_host(&file_owned, &name, key).map_err(known_hosts_error)?;
        eprintln!(
            "Warning: Permanently added '{name}' ({}) to the list of known hosts.",
            key.algorithm()
        );
        Ok(true)
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), SshError> {
        if !self.forward_agent {
            tracing::warn!(
                host = %self.host,
                "refused an agent channel the server opened without --forward-agent"
            );
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let Some(sock) = std::env::var_os("SSH_AUTH_SOCK") else {
            return Ok(()); // dropping `reply` rejects the channel
        };
        reply.accept().await;
        tokio::spawn(async move {
            match tokio::net::UnixStream::connect(&sock).await {
                Ok(mut agent) => {
                    let mut stream = channel.into_stream();
                    if let Err(err) = tokio::io::copy_bidirectional(&mut agent, &mut stream).await {
                        tracing::debug!(%err, "forwarded agent channel ended");
                    }
                }
                Err(err) => tracing::warn!(%err, "cannot reach ssh-agent for a forwarded channel"),
            }
        });
        Ok(())
    }
}

/// Appends `name key` to the known-hosts file (creating it), starting a new
/// line if the file does not end with one.
fn append_known_host(file: &Path, name: &str, key: &PublicKey) -> Result<(), russh::keys::Error> {
    let mut text = std::fs::read_to_string(file).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{name} {}\n", key.to_openssh()?));
    std::fs::write(file, text)?;
    Ok(())
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Splits `host[:port]` (or `[v6]:port`), defaulting the port; a bare
/// IPv6 address (`::1`, no brackets) is the host alone.
///
/// # Errors
///
/// No host, a port that is not a number, or text after `]` that is not a
/// port.
pub fn split_host_port(addr: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    if !addr.starts_with('[') && addr.matches(':').count() > 1 {
        return Ok((addr.to_owned(), default_port));
    }
    let (host, port) = fleetd::client::split_host_port(addr, default_port)
        .ok_or_else(|| anyhow!("bad address {addr:?}: expected host, host:port or [v6]:port"))?;
    Ok((host.to_owned(), port))
}

/// An authenticated SSH connection.
pub struct Session {
    /// The russh connection.
    handle: Handle<Client>,
    /// `host:port` as dialled, for messages.
    addr: String,
    /// Whether sessions ask for agent forwarding.
    forward_agent: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// How a remote (or local) command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus(pub u32);

impl Session {
    /// Dials `host:port` over TCP, checks its host key and authenticates.
    ///
    /// # Errors
    ///
    /// No agent, a dial or handshake failure, a host key refused, or no
    /// identity accepted.
    pub async fn connect(config: &SshConfig, host: &str, port: u16) -> anyhow::Result<Session> {
        let addr = format!("{host}:{port}");
        let tcp =
            tokio::time::timeout(config.timeout, tokio::net::TcpStream::connect((host, port)))
                .await
                .map_err(|_| anyhow!("timed out dialing {addr}"))?
                .with_context(|| format!("cannot dial {addr}"))?;
        // Best effort: Nagle only slows small interactive writes.
        let _ = tcp.set_nodelay(true);
        Self::handshake(config, host, port, tcp).await
    }

    /// Reaches `host:port` through this session (a `direct-tcpip` channel)
    /// and runs a second SSH handshake over it, with the same user and agent
    /// keys.
    ///
    /// # Errors
    ///
    /// As [`Session::connect`], or the bastion refusing the forward.
    pub async fn connect_via(
        &self,
        config: &SshConfig,
        host: &str,
        port: u16,
    ) -> anyhow::Result<Session> {
        let stream = tokio::time::timeout(config.timeout, self.direct_tcpip(host, port))
            .await
            .map_err(|_| {
                anyhow!(
                    "timed out forwarding to {host}:{port} through {}",
                    self.addr
                )
            })?
            .with_context(|| format!("cannot reach {host}:{port} through {}", self.addr))?;
        Self::handshake(config, host, port, stream).await
    }

    async fn handshake<S>(
        config: &SshConfig,
        host: &str,
        port: u16,
        stream: S,
    ) -> anyhow::Result<Session>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let addr = format!("{host}:{port}");
        let mut agent = connect_agent().await?;
        let identities = agent
            .request_identities()
            .await
            .context("cannot list the ssh-agent's identities")?;
        let recorded = match &config.known_hosts {
            Some(file) => recorded_keys(file, host, port)?,
            None => Vec::new(),
        };
        let handler = Client {
            host: host.to_owned(),
            port,
            known_hosts: config.known_hosts.clone(),
            forward_agent: config.forward_agent,
        };
        let ssh_config = Arc::new(client::Config {
            inactivity_timeout: None,
            preferred: russh::Preferred {
                key: preferred_host_key_algorithms(&recorded).into(),
                ..russh::Preferred::default()
            },
            ..client::Config::default()
        });
        // The handshake includes the host-key prompt, which waits for a
        // person; the dial itself was bounded by --ssh-timeout.
        let deadline = config.timeout.max(PROMPT_TIMEOUT);
        let mut handle = tokio::time::timeout(
            deadline,
            client::connect_stream(ssh_config, stream, handler),
        )
        .await
        .map_err(|_| anyhow!("timed out in the SSH handshake with {addr}"))?
        .map_err(|e| handshake_error(e, &addr))?;
        let rsa_hash = handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        let mut authenticated = false;
        for identity in identities {
            let key = identity.public_key().into_owned();
            let hash = if key.algorithm().is_rsa() {
                rsa_hash.or(Some(HashAlg::Sha256))
            } else {
                None
            };
            match handle
                .authenticate_publickey_with(config.user.clone(), key, hash, &mut agent)
                .await
            {
                Ok(result) if result.success() => {
                    authenticated = true;
                    break;
                }
                Ok(_) => {}
                Err(err) => tracing::debug!(?err, "agent identity failed"),
            }
        }
        if !authenticated {
            bail!(
                "ssh: unable to authenticate to {addr} as {}: no ssh-agent identity was accepted",
                config.user
            );
        }
        Ok(Session {
            handle,
            addr,
            forward_agent: config.forward_agent,
        })
    }

    /// A `direct-tcpip` channel to `host:port` from the remote end.
    ///
    /// # Errors
    ///
    /// The server refusing the channel.
    pub async fn direct_tcpip(&self, host: &str, port: u16) -> io::Result<ChannelStream<Msg>> {
        let channel = self
            .handle
            .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
            .await
            .map_err(io::Error::other)?;
        Ok(channel.into_stream())
    }

    /// Runs `command` on the remote host and returns its stdin/stdout as a
    /// stream (how `--tunnel` reaches a unix socket: `fleetctl fd-forward`).
    ///
    /// # Errors
    ///
    /// The server refusing the session or the command.
    pub async fn exec_stream(&self, command: &str) -> io::Result<ChannelStream<Msg>> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(io::Error::other)?;
        channel
            .exec(true, command)
            .await
            .map_err(io::Error::other)?;
        Ok(channel.into_stream())
    }

    /// Runs `command` remotely (or, with `None`, an interactive shell), with
    /// this process's stdin, stdout and stderr; returns the remote exit
    /// status.
    ///
    /// As the original's sessions: whenever stdin is a terminal, for a
    /// command as for a shell, the remote side gets a PTY
    /// ([`TERM`], the local terminal's size, [`TERMINAL_MODES`]) and the
    /// local terminal is in raw mode until the session ends, so `top`,
    /// editors and password prompts (`journal --sudo`) work. The terminal
    /// is restored however the session ends: normally, on an error, or on
    /// SIGTERM, SIGHUP or SIGINT sent to fleetctl ([`watch_signals`]). A
    /// change of the local window's size is not passed on, as the original
    /// did not. Without a terminal on stdin there is no PTY.
    ///
    /// # Errors
    ///
    /// The channel failing, the terminal refusing raw mode, or the
    /// connection closing without an exit status.
    pub async fn run(&self, command: Option<&str>) -> anyhow::Result<ExitStatus> {
        let mut channel = self
            .handle
            .channel_open_session()
            .await
            .with_context(|| format!("cannot open a session on {}", self.addr))?;
        if self.forward_agent {
            channel.agent_forward(false).await?;
        }
        let raw = if io::stdin().is_terminal() {
            // Signals are watched before the terminal goes raw, so none can
            // end fleetctl with the terminal left raw.
            watch_signals().context("cannot catch signals")?;
            let raw = RawMode::enter().context("cannot put the terminal in raw mode")?;
            let (cols, rows) = terminal_size();
            channel
                .request_pty(false, TERM, cols, rows, 0, 0, TERMINAL_MODES)
                .await?;
            Some(raw)
        } else {
            None
        };
        match command {
            Some(cmd) => channel.exec(true, cmd).await?,
            None => channel.request_shell(true).await?,
        }
        // stdin → channel, until stdin ends.
        let writer = channel.make_writer();
        let pump = tokio::spawn(async move {
            let mut writer = writer;
            let mut stdin = tokio::io::stdin();
            // A remote that stops reading is not an error of ours.
            let _ = tokio::io::copy(&mut stdin, &mut writer).await;
            let _ = writer.shutdown().await;
        });
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        let mut status = None;
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    stdout.write_all(&data).await?;
                    stdout.flush().await?;
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    stderr.write_all(&data).await?;
                    stderr.flush().await?;
                }
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    tracing::debug!(?signal_name, "remote command killed by a signal");
                    status.get_or_insert(255);
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        pump.abort();
        drop(raw);
        status.map(ExitStatus).ok_or_else(|| {
            anyhow!(
                "ssh: {} closed the session without an exit status",
                self.addr
            )
        })
    }
}

/// Connects to the agent named by `SSH_AUTH_SOCK`.
async fn connect_agent() -> anyhow::Result<AgentClient<tokio::net::UnixStream>> {
    let Some(sock) = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) else {
        bail!(
            "SSH_AUTH_SOCK environment variable is not set. Verify ssh-agent is running. \
             fleetctl authenticates through ssh-agent only."
        );
    };
    AgentClient::connect_uds(&sock).await.with_context(|| {
        format!(
            "cannot connect to ssh-agent at {}",
            Path::new(&sock).display()
        )
    })
}

/// Turns a handshake failure into a message; host-key failures keep their
/// own wording.
fn handshake_error(err: SshError, addr: &str) -> anyhow::Error {
    match err {
        e @ (SshError::HostKeyChanged { .. } | SshError::HostKeyRejected(_)) => anyhow!(e),
        e => anyhow!(e).context(format!("SSH handshake with {addr} failed")),
    }
}

/// The size (columns, rows) of the terminal on stdin, as the original
/// took it, or 80x24.
fn terminal_size() -> (u32, u32) {
    rustix::termios::tcgetwinsize(rustix::stdio::stdin())
        .map(|w| (u32::from(w.ws_col), u32::from(w.ws_row)))
        .ok()
        .filter(|(c, r)| *c > 0 && *r > 0)
        .unwrap_or((80, 24))
}

/// The terminal's modes from before a session made it raw, while it is:
/// for [`watch_signals`] to restore.
static SAVED_MODES: Mutex<Option<rustix::termios::Termios>> = Mutex::new(None);

/// Sets the terminal on stdin to `modes`; this can only fail if the
/// terminal is gone, when there is nothing to restore.
fn set_modes(modes: &rustix::termios::Termios) {
    let _ = rustix::termios::tcsetattr(
        rustix::stdio::stdin(),
        rustix::termios::OptionalActions::Now,
        modes,
    );
}

/// The modes saved by a [`RawMode`]; a poisoned lock still holds them.
fn saved_modes() -> std::sync::MutexGuard<'static, Option<rustix::termios::Termios>> {
    SAVED_MODES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The terminal on stdin in raw mode; restored on drop.
struct RawMode;

impl RawMode {
    /// Puts the terminal on stdin in raw mode.
    fn enter() -> io::Result<RawMode> {
        let stdin = rustix::stdio::stdin();
        let saved = rustix::termios::tcgetattr(stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        *saved_modes() = Some(saved);
        let guard = RawMode;
        // On an error the guard puts back what may have been changed.
        rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw)?;
        Ok(guard)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(modes) = saved_modes().take() {
            set_modes(&modes);
        }
    }
}

/// From the first session on a terminal to the end of the process, turns
/// SIGTERM, SIGHUP and SIGINT into an exit with the shell's status for the
/// signal (143, 129, 130), restoring the terminal first if a session has it
/// raw. Outside a session that is what the signal would have done anyway;
/// in one, it keeps the terminal from being left raw. (In raw mode Ctrl-C
/// is a byte for the remote side, so SIGINT comes only from `kill`.)
fn watch_signals() -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    static WATCHING: Mutex<bool> = Mutex::new(false);
    let mut watching = WATCHING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *watching {
        return Ok(());
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = term.recv() => 143,
            _ = hup.recv() => 129,
            _ = int.recv() => 130,
        };
        if let Some(modes) = saved_modes().take() {
            set_modes(&modes);
        }
        std::process::exit(code);
    });
    *watching = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("a", 22).unwrap(), ("a".into(), 22));
        assert_eq!(split_host_port("a:2222", 22).unwrap(), ("a".into(), 2222));
        assert_eq!(split_host_port("[::1]:5", 22).unwrap(), ("::1".into(), 5));
        assert_eq!(split_host_port("[::1]", 22).unwrap(), ("::1".into(), 22));
        assert!(split_host_port("a:x", 22).is_err());
        assert!(split_host_port(":22", 22).is_err());
        assert!(split_host_port("[::1]x", 22).is_err());
        assert_eq!(
            split_host_port("fe80::1", 22).unwrap(),
            ("fe80::1".into(), 22)
        );
    }

    #[test]
    fn known_hosts_names() {
        assert_eq!(known_hosts_name("10.0.0.1", 22), "10.0.0.1");
        assert_eq!(known_hosts_name("10.0.0.1", 2222), "[10.0.0.1]:2222");
    }

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAykIpTO6sbkr+/YPPtpZEvHEcSwxdjbBBEyIDGtRnX2";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBA47hW9fFXLSFKvHRzBSvrq7VesZyJ//Ztq9qDVMVUCwM3icS3OWZx5SlX8yMzEagDDIu1uYODkRnNDDbSZXOLo=";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).unwrap()
    }

    /// The recorded algorithm is asked for first; nothing is dropped.
    #[test]
    fn recorded_algorithms_come_first() {
        let default = russh::Preferred::default().key.into_owned();
        assert_eq!(preferred_host_key_algorithms(&[]), default);
        let ecdsa = preferred_host_key_algorithms(&[(3, key(ECDSA))]);
        assert_eq!(ecdsa[0], key(ECDSA).algorithm(), "{ecdsa:?}");
        assert_eq!(ecdsa.len(), default.len());
        assert!(default.iter().all(|a| ecdsa.contains(a)));
    }

    /// A key of another algorithm than the recorded one is blamed on the
    /// host's line, like a changed key; none recorded is a first contact.
    #[test]
    fn offending_lines() {
        let recorded = [(2, key(ED25519))];
        assert_eq!(offending_line(&recorded, &key(ECDSA)), Some(2));
        assert_eq!(offending_line(&[], &key(ECDSA)), None);
        let both = [(1, key(ED25519)), (4, key(ECDSA))];
        assert_eq!(offending_line(&both, &key(ECDSA)), Some(4));
    }

    #[test]
    fn private_dir_mode() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/.fleetctl");
        create_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
