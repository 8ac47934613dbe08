//! Hostile or mistaken input at the edges, on the built binaries and real
//! peers:
//!
//! - a config value that would panic or misbehave at run time stops the
//!   built fleetd at start, naming the option, its source and the accepted
//!   range, before it creates anything (no units directory, no socket);
//! - fleetctl refuses an agent channel that an SSH server opens without
//!   `--forward-agent` (a hostile server made with russh: OpenSSH's sshd
//!   never opens one unasked);
//! - fleetd started from the shipped units runs with the shipped
//!   `LimitNOFILE`, and a flood of its TCP API socket far beyond the
//!   connection limit costs it at most the limit in descriptors: fleetctl
//!   over the unix socket inside the machine is answered meanwhile, the
//!   machine stays registered, and once the flood is gone fleetctl over TCP
//!   is answered again;
//! - a host key of another algorithm than the one in known_hosts is a
//!   changed key (OpenSSH's sshd on a loopback port, offering only an RSA or
//!   ECDSA key while an ed25519 key is recorded), and known_hosts is left as
//!   it was; a recorded RSA key is asked for first when the server has both.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use testbed::cluster::{API_PORT, Cluster, ClusterOptions, built_binary, check};
use testbed::ssh::{KeyPair, LocalSshd, SshAgent};
use tokio::sync::mpsc;

/// What one run of a built binary printed.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `bin` with `args` and `env` (and nothing inherited that starts with
/// `FLEET`), bounded by 60 s.
async fn run(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Run> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("FLEET") || k == "SSH_AUTH_SOCK" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .with_context(|| format!("{} {args:?} did not finish within 60 s", bin.display()))?
        .with_context(|| format!("cannot run {}", bin.display()))?;
    Ok(Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Every numeric or duration option with a value that would panic
/// (`tokio::time::interval(0)`, `Duration::from_secs_f64` of NaN, an
/// `Instant` overflow) or make fleetd useless, from a file, the
/// environment and a flag: fleetd exits 1 at once with the option, the
/// source and the range, and touches nothing.
#[tokio::test]
async fn a_bad_config_value_stops_fleetd_before_it_touches_anything() -> anyhow::Result<()> {
    let fleetd = built_binary("fleetd")?;
    let dir = tempfile::tempdir()?;
    let units = dir.path().join("units");
    let sock = dir.path().join("api.sock");
    let machine_id = dir.path().join("machine-id");
    std::fs::write(&machine_id, "0123456789abcdef0123456789abcdef\n")?;
    let conf = dir.path().join("fleet.conf");
    let base = format!(
        "etcd_servers=http://127.0.0.1:1\nunits_directory={}\nlisten=unix:{}\nmachine_id_file={}\n",
        units.display(),
        sock.display(),
        machine_id.display()
    );
    let interval = "not a number of seconds between 0.01 and 3600 (e.g. 2 or 0.5)";
    let timeout = "not a number of seconds between 0.01 and 300 (e.g. 2 or 0.5)";
    let ttl = "must be between 1s and 24h";
    let tokens = "not an integer between 1 and 65535";
    let cases: &[(&str, &str, &str)] = &[
        ("engine_reconcile_interval", "0", interval),
        ("engine_reconcile_interval", "1e-10", interval),
        ("engine_reconcile_interval", "-1", interval),
        ("engine_reconcile_interval", "NaN", interval),
        ("engine_reconcile_interval", "inf", interval),
        ("engine_reconcile_interval", "1e300", interval),
        ("agent_ttl", "0", ttl),
        ("agent_ttl", "1ns", ttl),
        ("agent_ttl", "2562047h", ttl),
        ("etcd_request_timeout", "0", timeout),
        ("etcd_request_timeout", "1e-10", timeout),
        ("etcd_request_timeout", "1e20", timeout),
        ("token_limit", "0", tokens),
    ];
    let conf_arg = format!("--config={}", conf.display());
    for (option, value, reason) in cases {
        // In the file, on line 5 (after the four base lines).
        std::fs::write(&conf, format!("{base}{option}={value}\n"))?;
        let r = run(&fleetd, &[&conf_arg], &[]).await?;
        let want = format!(
            "fleetd: invalid value {value:?} for {option} in {}:5: {reason}\n",
            conf.display()
        );
        assert_eq!(
            (r.code, r.stderr.as_str()),
            (Some(1), want.as_str()),
            "{r:?}"
        );

        // In the environment, and as a flag, over a good file.
        std::fs::write(&conf, &base)?;
        let var = format!("FLEET_{}", option.to_ascii_uppercase());
        let r = run(&fleetd, &[&conf_arg], &[(&var, value)]).await?;
        let want = format!(
            "fleetd: invalid value {value:?} for {option} in environment variable {var}: {reason}\n"
        );
        assert_eq!(
            (r.code, r.stderr.as_str()),
            (Some(1), want.as_str()),
            "{r:?}"
        );
        let flag = format!("--{}", option.replace('_', "-"));
        let r = run(&fleetd, &[&conf_arg, &format!("{flag}={value}")], &[]).await?;
        let want =
            format!("fleetd: invalid value {value:?} for {option} in flag {flag}: {reason}\n");
        assert_eq!(
            (r.code, r.stderr.as_str()),
            (Some(1), want.as_str()),
            "{r:?}"
        );

        assert_eq!(r.stdout, "", "{r:?}");
        assert!(
            !units.exists(),
            "{option}={value}: the units directory was created"
        );
        assert!(
            !sock.exists(),
            "{option}={value}: the API socket was created"
        );
    }
    Ok(())
}

/// The built fleetctl, with its own HOME and the test's agent.
struct Fleetctl {
    /// The binary.
    bin: PathBuf,
    /// `$HOME` of every run.
    home: tempfile::TempDir,
    /// The agent (with one key), for `SSH_AUTH_SOCK`.
    agent: SshAgent,
    /// Holds the client key.
    _keys: tempfile::TempDir,
}

impl Fleetctl {
    fn new() -> anyhow::Result<Fleetctl> {
        let keys = tempfile::tempdir()?;
        let agent = SshAgent::start()?;
        agent.add(&KeyPair::generate(keys.path(), "client")?)?;
        Ok(Fleetctl {
            bin: built_binary("fleetctl")?,
            home: tempfile::tempdir()?,
            agent,
            _keys: keys,
        })
    }

    /// `fleetctl --tunnel 127.0.0.1:port ... list-machines`, with `extra`
    /// flags first.
    async fn tunnel(&self, port: u16, extra: &[&str]) -> anyhow::Result<Run> {
        let tunnel = format!("--tunnel=127.0.0.1:{port}");
        let mut args = vec![tunnel.as_str(), "--ssh-username=root", "--ssh-timeout=10"];
        args.extend_from_slice(extra);
        args.push("list-machines");
        let home = self.home.path().to_str().context("utf-8 home")?;
        let sock = self.agent.sock.to_str().context("utf-8 agent socket")?;
        run(
            &self.bin,
            &args,
            &[
                ("HOME", home),
                ("SSH_AUTH_SOCK", sock),
                ("RUST_LOG", "warn"),
            ],
        )
        .await
    }
}

/// An SSH server that lets anyone in and, as soon as a session channel is
/// opened, opens an agent channel back to the client, reporting whether the
/// client accepted it.
#[derive(Clone)]
struct HostileServer {
    /// Where the outcome of each agent channel open goes.
    outcomes: mpsc::UnboundedSender<Result<(), String>>,
}

impl russh::server::Handler for HostileServer {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<russh::server::Auth, Self::Error> {
        Ok(russh::server::Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _channel: russh::Channel<russh::server::Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let handle = session.handle();
        let outcomes = self.outcomes.clone();
        // Not awaited here: the answer comes through this session's loop.
        tokio::spawn(async move {
            let outcome = handle
                .channel_open_agent()
                .await
                .map(drop)
                .map_err(|e| e.to_string());
            let _ = outcomes.send(outcome);
        });
        Ok(())
    }
}

/// fleetctl without `--forward-agent` refuses the agent channel a server
/// opens towards it, so the server never reaches the local agent.
#[tokio::test]
async fn fleetctl_refuses_agent_channels_it_did_not_ask_for() -> anyhow::Result<()> {
    let ctl = Fleetctl::new()?;
    let keys = tempfile::tempdir()?;
    let host_key = KeyPair::generate(keys.path(), "hostile")?;
    let config = Arc::new(russh::server::Config {
        keys: vec![russh::keys::load_secret_key(&host_key.private, None)?],
        ..russh::server::Config::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (tx, mut outcomes) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = HostileServer {
                outcomes: tx.clone(),
            };
            let config = config.clone();
            tokio::spawn(async move {
                if let Ok(session) = russh::server::run_stream(config, stream, handler).await {
                    let _ = session.await;
                }
            });
        }
    });
    let client = {
        let home = ctl.home.path().to_owned();
        let bin = ctl.bin.clone();
        let sock = ctl.agent.sock.clone();
        tokio::spawn(async move {
            let tunnel = format!("--tunnel=127.0.0.1:{port}");
            let mut cmd = tokio::process::Command::new(bin);
            cmd.args([
                tunnel.as_str(),
                "--ssh-username=root",
                "--strict-host-key-checking=false",
                "list-machines",
            ])
            .env("HOME", home)
            .env("SSH_AUTH_SOCK", sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
            // The server answers nothing else: fleetctl is stopped below.
            let _ = cmd.status().await;
        })
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), outcomes.recv())
        .await
        .context("fleetctl opened no session on the hostile server within 30 s")?
        .context("the hostile server stopped")?;
    client.abort();
    server.abort();
    let refusal = outcome.expect_err("the agent channel must be refused");
    assert!(
        refusal.contains("Prohibited") || refusal.contains("prohibited"),
        "{refusal}"
    );
    Ok(())
}

/// known_hosts records an ed25519 key for the host; sshd offers only an RSA
/// (then only an ECDSA) key: that is a changed key, refused with the banner
/// and the mismatch error naming the line, and known_hosts is unchanged. With
/// the RSA key recorded and sshd holding both, the RSA key is negotiated and
/// accepted.
#[tokio::test]
async fn a_host_key_of_another_algorithm_is_a_mismatch() -> anyhow::Result<()> {
    let ctl = Fleetctl::new()?;
    let keys = tempfile::tempdir()?;
    let recorded = KeyPair::generate(keys.path(), "recorded-ed25519")?;
    let kh_dir = ctl.home.path().join(".fleetctl");
    std::fs::create_dir_all(&kh_dir)?;
    let known_hosts = kh_dir.join("known_hosts");
    for key_type in ["rsa", "ecdsa"] {
        let offered =
            KeyPair::generate_of_type(keys.path(), &format!("host-{key_type}"), key_type)?;
        let sshd = LocalSshd::start(&[&offered], &[]).await?;
        let name = format!("[127.0.0.1]:{}", sshd.port);
        let text = format!("{name} {}\n", recorded.public_key());
        std::fs::write(&known_hosts, &text)?;
        let r = ctl.tunnel(sshd.port, &[]).await?;
        assert_ne!(r.code, Some(0), "{key_type}: {r:?}");
        assert!(
            r.stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
            "{key_type}: {r:?}"
        );
        assert!(
            r.stderr.contains(&format!(
                "host key mismatch for {name} (line 1 of {})",
                known_hosts.display()
            )),
            "{key_type}: {r:?}"
        );
        assert!(!r.stderr.contains("Permanently added"), "{key_type}: {r:?}");
        assert_eq!(
            std::fs::read_to_string(&known_hosts)?,
            text,
            "{key_type}: known_hosts changed"
        );
    }

    // Both keys on the server, the RSA one recorded: it is the one asked
    // for, so the host is recognised (fleetctl fails later, at the login
    // this sshd does not allow, or at the fleet API that is not there).
    let ed25519 = KeyPair::generate(keys.path(), "host-both-ed25519")?;
    let rsa = KeyPair::generate_of_type(keys.path(), "host-both-rsa", "rsa")?;
    let sshd = LocalSshd::start(&[&ed25519, &rsa], &[]).await?;
    let text = format!("[127.0.0.1]:{} {}\n", sshd.port, rsa.public_key());
    std::fs::write(&known_hosts, &text)?;
    let r = ctl.tunnel(sshd.port, &[]).await?;
    assert!(!r.stderr.contains("mismatch"), "{r:?}");
    assert!(!r.stderr.contains("authenticity"), "{r:?}");
    assert_eq!(std::fs::read_to_string(&known_hosts)?, text);
    Ok(())
}

/// The shipped `LimitNOFILE=` of fleet.service.
const SHIPPED_NOFILE: u64 = 8192;

/// fleetd's connection limit per listener (`api::MAX_CONNECTIONS`).
const CONNECTION_LIMIT: usize = fleetd::api::MAX_CONNECTIONS;

/// Connections of the flood: well beyond the limit.
const FLOOD: usize = CONNECTION_LIMIT + 500;

/// Runs `script` with `sh -c` in member 0, failing on a non-zero exit.
async fn sh(cluster: &Cluster, script: &str) -> anyhow::Result<String> {
    let out = cluster.members[0]
        .machine
        .exec(&["sh", "-c", script])
        .await?;
    check(&out, script)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_costs_fleetd_at_most_the_limit() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let pid = sh(&cluster, "systemctl show -p MainPID --value fleet.service").await?;
    let limits = sh(&cluster, &format!("cat /proc/{pid}/limits")).await?;
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(nofile, Some(SHIPPED_NOFILE), "fleetd's limits:\n{limits}");
    let fds = async || -> anyhow::Result<usize> {
        Ok(sh(&cluster, &format!("ls /proc/{pid}/fd | wc -l"))
            .await?
            .parse()?)
    };
    let before = fds().await?;

    let addr = format!("{}:{API_PORT}", cluster.members[0].ip());
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(stream) => flood.push(stream),
            Err(e) => bail!("flood connection {i} to {addr}: {e}"),
        }
    }
    // Let fleetd accept all it will.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = fds().await?;
    eprintln!("fleetd descriptors: {before} before, {during} under a flood of {FLOOD} connections");
    assert!(
        during <= before + CONNECTION_LIMIT,
        "fleetd holds {during} descriptors under a flood of {FLOOD} connections (before: {before}, limit {CONNECTION_LIMIT})"
    );

    // The unix socket has its own limit: fleetctl inside the machine is
    // answered, and the machine is still registered.
    let out = cluster.members[0]
        .machine
        .exec(&["/opt/fleet/fleetctl", "list-machines", "--no-legend"])
        .await?;
    if let Err(e) = check(
        &out,
        "fleetctl list-machines over the unix socket during the flood",
    ) {
        bail!("{e:#}\njournal:\n{}", cluster.fleet_journal(0).await);
    }
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "{out:?}"
    );

    drop(flood);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        cluster.fleetctl(&["list-machines", "--no-legend"]),
    )
    .await
    .context("fleetctl over TCP after the flood within 60 s")??;
    check(&out, "fleetctl list-machines over TCP after the flood")?;
    Ok(())
}
