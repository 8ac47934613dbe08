//! fleetctl end to end on real parts (fleet-reference.md §8, §9's
//! functional tests): the built fleetctl on the host drives a cluster of
//! real systemd machines running fleetd; SSH goes to Debian's OpenSSH sshd
//! inside the machines, authenticated by a real ssh-agent holding a key made
//! at test time.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use testbed::cluster::{Cluster, ClusterOptions, built_binary};
use testbed::ssh::{KeyPair, SshAgent, restart_sshd, start_sshd};
use testbed::util::wait_until;
use tokio::io::AsyncWriteExt;

/// What one fleetctl run printed.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The host's fleetctl with its own HOME (so `~/.fleetctl/known_hosts` is
/// the test's), no inherited `FLEETCTL_*`, and the test's agent.
struct Fleetctl {
    /// The built binary.
    bin: PathBuf,
    /// `$HOME` of every run.
    home: tempfile::TempDir,
    /// `SSH_AUTH_SOCK` of every run, if any.
    agent: Option<PathBuf>,
}

impl Fleetctl {
    fn new(agent: Option<&Path>) -> anyhow::Result<Fleetctl> {
        Ok(Fleetctl {
            bin: built_binary("fleetctl")?,
            home: tempfile::tempdir()?,
            agent: agent.map(Path::to_path_buf),
        })
    }

    /// Runs fleetctl with `args`, `env` and `stdin`.
    async fn run_with(&self, env: &[(&str, &str)], stdin: &str, args: &[&str]) -> Run {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .env("HOME", self.home.path())
            .env("RUST_LOG", "warn")
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("FLEETCTL_") {
                cmd.env_remove(k);
            }
        }
        if let Some(sock) = &self.agent {
            cmd.env("SSH_AUTH_SOCK", sock);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("fleetctl starts");
        let mut input = child.stdin.take().expect("piped stdin");
        // fleetctl may exit without reading it all.
        let _ = input.write_all(stdin.as_bytes()).await;
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("fleetctl {args:?} finished within 180 s"))
            .expect("fleetctl ran");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs fleetctl with `args` and no input.
    async fn run(&self, args: &[&str]) -> Run {
        self.run_with(&[], "", args).await
    }

    /// Runs fleetctl against `endpoint`; fails the test unless it exits 0.
    async fn ok(&self, endpoint: &str, args: &[&str]) -> Run {
        let ep = format!("--endpoint={endpoint}");
        let all: Vec<&str> = std::iter::once(ep.as_str())
            .chain(args.iter().copied())
            .collect();
        let r = self.run(&all).await;
        assert_eq!(r.code, 0, "fleetctl {all:?}: {r:?}");
        r
    }
}

/// A unit that runs until stopped.
fn service(description: &str) -> String {
    format!("[Unit]\nDescription={description}\n\n[Service]\nExecStart=/bin/sleep 100000\n")
}

/// Writes `name` with `text` into `dir`; returns its path.
fn write_unit(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("unit file written");
    path.to_string_lossy().into_owned()
}

/// The lines of `list-unit-files --no-legend --fields=unit,dstate,state`.
async fn unit_files(ctl: &Fleetctl, ep: &str) -> Vec<String> {
    let r = ctl
        .ok(
            ep,
            &[
                "list-unit-files",
                "--no-legend",
                "--fields=unit,dstate,state",
            ],
        )
        .await;
    r.stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// `<name> <states>` for each of `names`: a listing's expected lines.
fn each(names: &[&str], states: &str) -> Vec<String> {
    names.iter().map(|n| format!("{n} {states}")).collect()
}

/// Waits until `list-units --no-legend --fields=unit,active` (normalized to
/// `unit active` lines) equals `want`.
async fn wait_list_units(ctl: &Fleetctl, ep: &str, want: &[String]) -> anyhow::Result<()> {
    wait_until(
        &format!("list-units showing {want:?}"),
        Duration::from_secs(30),
        || async {
            let r = ctl
                .run(&[
                    &format!("--endpoint={ep}"),
                    "list-units",
                    "--no-legend",
                    "--fields=unit,active",
                ])
                .await;
            Ok(r.stdout
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>())
        },
        |lines| lines.as_slice() == want,
    )
    .await?;
    Ok(())
}

/// `systemctl show -p MainPID --value UNIT` on the member running it.
async fn main_pid(cluster: &Cluster, unit: &str) -> anyhow::Result<String> {
    let rows = cluster.list_units().await?;
    let row = rows
        .iter()
        .find(|r| r.0 == unit)
        .ok_or_else(|| anyhow::anyhow!("{unit} not in list-units: {rows:?}"))?;
    let member = cluster
        .member_by_id(&row.2)
        .ok_or_else(|| anyhow::anyhow!("{unit} on unknown machine {}", row.2))?;
    let out = member
        .machine
        .systemctl(&["show", "-p", "MainPID", "--value", unit])
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_commands_lists_help_and_drivers() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        members: 3,
        ..ClusterOptions::default()
    })
    .await?;
    let ctl = Fleetctl::new(None)?;
    let ep = cluster.members[0].endpoint();
    let ep = ep.as_str();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let names = ["a.service", "b.service", "c.service"];
    let paths: Vec<String> = names
        .iter()
        .map(|n| write_unit(d, n, &service(n)))
        .collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();

    // submit / load / start, then their reverses, with the listings after each.
    let r = ctl.ok(ep, &[&["submit"][..], &paths].concat()).await;
    assert_eq!(
        r.stdout,
        "Unit a.service inactive\nUnit b.service inactive\nUnit c.service inactive\n"
    );
    assert_eq!(
        unit_files(&ctl, ep).await,
        each(&names, "inactive inactive")
    );
    wait_list_units(&ctl, ep, &[]).await?;

    let r = ctl.ok(ep, &[&["load"][..], &names].concat()).await;
    assert_eq!(r.stdout.matches(" loaded on ").count(), 3, "{r:?}");
    assert_eq!(unit_files(&ctl, ep).await, each(&names, "loaded loaded"));
    wait_list_units(&ctl, ep, &each(&names, "inactive")).await?;

    let r = ctl.ok(ep, &[&["start"][..], &names].concat()).await;
    assert_eq!(r.stdout.matches(" launched on ").count(), 3, "{r:?}");
    assert_eq!(
        unit_files(&ctl, ep).await,
        each(&names, "launched launched")
    );
    wait_list_units(&ctl, ep, &each(&names, "active")).await?;

    // restart: each unit runs again, as a new process.
    let before = main_pid(&cluster, "a.service").await?;
    let r = ctl.ok(ep, &[&["restart"][..], &names].concat()).await;
    assert!(
        r.stderr
            .contains("Successfully restarted units [a.service b.service c.service]."),
        "{r:?}"
    );
    wait_list_units(&ctl, ep, &each(&names, "active")).await?;
    let after = main_pid(&cluster, "a.service").await?;
    assert_ne!(before, after, "restart gave a.service a new process");

    let r = ctl.ok(ep, &[&["stop"][..], &names].concat()).await;
    assert!(
        r.stderr
            .contains("Successfully stopped units [a.service b.service c.service]."),
        "{r:?}"
    );
    assert_eq!(unit_files(&ctl, ep).await, each(&names, "loaded loaded"));
    wait_list_units(&ctl, ep, &each(&names, "inactive")).await?;

    let r = ctl.ok(ep, &[&["unload"][..], &names].concat()).await;
    assert!(r.stderr.contains("Successfully unloaded units"), "{r:?}");
    assert_eq!(
        unit_files(&ctl, ep).await,
        each(&names, "inactive inactive")
    );
    wait_list_units(&ctl, ep, &[]).await?;

    let r = ctl.ok(ep, &[&["destroy"][..], &names].concat()).await;
    assert_eq!(
        r.stdout,
        "Destroyed a.service\nDestroyed b.service\nDestroyed c.service\n"
    );
    assert!(unit_files(&ctl, ep).await.is_empty());

    // --replace with changed content; cat prints the canonical text.
    let v1 = "[Unit]\nDescription=v1\n\n[Service]\n# comment\nExecStart=/bin/sleep 100000\n";
    let v2 = "[Unit]\nDescription=v2\n[Service]\nExecStart=/bin/sleep 200000\n";
    let r_path = write_unit(d, "r.service", v1);
    ctl.ok(ep, &["start", &r_path]).await;
    let r = ctl.ok(ep, &["cat", "r.service"]).await;
    assert_eq!(r.stdout, units::UnitFile::parse(v1)?.canonical());
    write_unit(d, "r.service", v2);
    let r = ctl.ok(ep, &["start", &r_path]).await;
    assert!(
        !r.stdout.contains("launched"),
        "no --replace: unchanged: {r:?}"
    );
    let r = ctl.ok(ep, &["cat", "r.service"]).await;
    assert_eq!(r.stdout, units::UnitFile::parse(v1)?.canonical());
    ctl.ok(ep, &["start", "--replace", &r_path]).await;
    let r = ctl.ok(ep, &["cat", "r.service"]).await;
    assert_eq!(r.stdout, units::UnitFile::parse(v2)?.canonical());
    wait_until(
        "r.service running the new ExecStart",
        Duration::from_secs(30),
        || async {
            let rows = cluster.list_units().await?;
            let Some(row) = rows.iter().find(|r| r.0 == "r.service") else {
                return Ok(String::new());
            };
            let Some(m) = cluster.member_by_id(&row.2) else {
                return Ok(String::new());
            };
            let out = m
                .machine
                .systemctl(&["show", "-p", "ExecStart", "--value", "r.service"])
                .await?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        },
        |s| s.contains("200000"),
    )
    .await?;
    ctl.ok(ep, &["destroy", "r.service"]).await;

    // 20 units, submitted out of order, are listed in order.
    let many: Vec<String> = (0..20)
        .rev()
        .map(|i| write_unit(d, &format!("order-{i:02}.service"), &service("order")))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    ctl.ok(ep, &[&["submit"][..], &many].concat()).await;
    let r = ctl
        .ok(ep, &["list-unit-files", "--no-legend", "--fields=unit"])
        .await;
    let want: String = (0..20).map(|i| format!("order-{i:02}.service\n")).collect();
    assert_eq!(r.stdout, want);

    // --output json.
    let r = ctl.ok(ep, &["list-machines", "--output=json"]).await;
    let machines: serde_json::Value = serde_json::from_str(&r.stdout)?;
    assert_eq!(machines.as_array().map(Vec::len), Some(3), "{r:?}");
    let r = ctl.ok(ep, &["list-unit-files", "-o", "json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&r.stdout)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(20), "{r:?}");

    // The etcd driver sees and changes the same registry.
    let etcd = cluster.etcd.endpoint_on(cluster.net.host_ip());
    let etcd_args = |rest: &[&str]| -> Vec<String> {
        ["--driver=etcd".to_owned(), format!("--endpoint={etcd}")]
            .into_iter()
            .chain(rest.iter().map(|s| (*s).to_owned()))
            .collect()
    };
    let args = etcd_args(&["list-unit-files", "--no-legend", "--fields=unit"]);
    let r = ctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!((r.code, r.stdout.as_str()), (0, want.as_str()), "{r:?}");
    let args = etcd_args(&["list-machines", "--no-legend", "--full"]);
    let r = ctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let api = ctl
        .ok(ep, &["list-machines", "--no-legend", "--full"])
        .await;
    assert_eq!((r.code, &r.stdout), (0, &api.stdout), "{r:?}");
    let e_path = write_unit(d, "etcd.service", &service("etcd driver"));
    let args = etcd_args(&["start", &e_path]);
    let r = ctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Unit etcd.service launched on "), "{r:?}");
    wait_until(
        "etcd.service active through the API",
        Duration::from_secs(30),
        || cluster.list_units(),
        |rows| {
            rows.iter()
                .any(|r| r.0 == "etcd.service" && r.1 == "active")
        },
    )
    .await?;

    // FLEETCTL_ENDPOINT instead of --endpoint.
    let r = ctl
        .run_with(
            &[("FLEETCTL_ENDPOINT", ep)],
            "",
            &["list-machines", "--no-legend"],
        )
        .await;
    assert_eq!((r.code, r.stdout.lines().count()), (0, 3), "{r:?}");

    // version and every form of help.
    let version = format!("fleetctl version {}\n", fleetd::VERSION);
    for args in [&["version"][..], &["--version"], &["-v"]] {
        let r = ctl.run(args).await;
        assert_eq!((r.code, &r.stdout), (0, &version), "{args:?}: {r:?}");
    }
    for args in [&[][..], &["help"], &["--help"], &["-h"], &["--h"]] {
        let r = ctl.run(args).await;
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        for part in [
            "NAME:",
            "USAGE:",
            "VERSION:",
            fleetd::VERSION,
            "list-unit-files",
        ] {
            assert!(r.stdout.contains(part), "{args:?} lacks {part}: {r:?}");
        }
    }
    for args in [
        &["help", "start"][..],
        &["start", "--help"],
        &["start", "-h"],
    ] {
        let r = ctl.run(args).await;
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(r.stdout.contains("--block-attempts"), "{args:?}: {r:?}");
    }
    Ok(())
}

/// Writes a known-hosts file naming each (ip, host key).
fn write_known_hosts(path: &Path, hosts: &[(String, &KeyPair)]) -> anyhow::Result<()> {
    let text: String = hosts
        .iter()
        .map(|(ip, key)| format!("{ip} {}\n", key.public_key()))
        .collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_tunnel_status_journal_and_known_hosts() -> anyhow::Result<()> {
    let SshCluster {
        cluster,
        keys,
        agent: _agent,
        host_keys,
        ctl,
    } = SshCluster::start(2).await?;
    let ep = cluster.members[0].endpoint();
    let ep = ep.as_str();
    let (ip0, ip1) = (cluster.members[0].ip(), cluster.members[1].ip());
    let m1_id = cluster.members[1].machine.machine_id().to_owned();

    // A unit pinned to member 1, so the tunnel (member 0) hops to it.
    let dir = tempfile::tempdir()?;
    let hello = format!(
        "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sh -c 'echo hello-from-fleet; exec sleep 100000'\n\n[X-Fleet]\nMachineID={m1_id}\n"
    );
    let hello_path = write_unit(dir.path(), "hello.service", &hello);
    ctl.ok(ep, &["start", &hello_path]).await;

    // Known hosts: first contact asks, "yes" records the key.
    let known_hosts = ctl.home.path().join(".fleetctl/known_hosts");
    let epf = format!("--endpoint={ep}");
    let ssh_m1 = [
        epf.as_str(),
        "--ssh-username=root",
        "ssh",
        &m1_id,
        "echo",
        "foo",
    ];
    let r = ctl.run_with(&[], "yes\n", &ssh_m1).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, "foo\n"), "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "The authenticity of host '{ip1}' can't be established."
        )),
        "{r:?}"
    );
    assert!(
        r.stderr
            .contains("Are you sure you want to continue connecting (yes/no)?"),
        "{r:?}"
    );
    assert!(r.stderr.contains("Warning: Permanently added"), "{r:?}");
    let recorded = std::fs::read_to_string(&known_hosts)?;
    assert_eq!(
        recorded,
        format!("{ip1} {}\n", host_keys[1].public_key()),
        "known_hosts"
    );
    let mode = std::fs::metadata(known_hosts.parent().unwrap_or(Path::new("/")))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "~/.fleetctl mode");

    // Accepted from then on, without asking.
    let r = ctl.run(&ssh_m1).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, "foo\n"), "{r:?}");
    assert!(!r.stderr.contains("authenticity"), "{r:?}");

    // Answering no refuses, and records nothing.
    let other = ctl.home.path().join("other_known_hosts");
    let kh = format!("--known-hosts-file={}", other.display());
    let r = ctl
        .run_with(
            &[],
            "no\n",
            &[&epf, "--ssh-username=root", &kh, "ssh", &m1_id, "true"],
        )
        .await;
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("host key verification failed"), "{r:?}");
    assert!(!other.exists() || std::fs::read_to_string(&other)?.is_empty());

    // A changed host key is refused with the banner...
    let new_key = KeyPair::generate(keys.path(), "host1-new")?;
    testbed::ssh::install_host_key(&cluster.members[1].machine, &new_key)?;
    restart_sshd(&cluster.members[1].machine, &ip1).await?;
    let r = ctl.run(&ssh_m1).await;
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{r:?}"
    );
    assert!(r.stdout.is_empty(), "{r:?}");
    // ...unless checking is off.
    let r = ctl
        .run(&[
            &epf,
            "--ssh-username=root",
            "--strict-host-key-checking=false",
            "ssh",
            &m1_id,
            "echo",
            "foo",
        ])
        .await;
    assert_eq!((r.code, r.stdout.as_str()), (0, "foo\n"), "{r:?}");
    write_known_hosts(
        &known_hosts,
        &[(ip0.clone(), &host_keys[0]), (ip1.clone(), &new_key)],
    )?;

    // Through the tunnel (default unix endpoint: fd-forward on member 0),
    // status, journal and ssh reach member 1 with a nested handshake.
    let tunnel = format!("--tunnel={ip0}");
    let via = |rest: &[&'static str]| -> Vec<String> {
        [tunnel.clone(), "--ssh-username=root".to_owned()]
            .into_iter()
            .chain(rest.iter().map(|s| (*s).to_owned()))
            .collect()
    };
    let run_via = |rest: &'static [&'static str]| {
        let args = via(rest);
        let ctl = &ctl;
        async move {
            ctl.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .await
        }
    };
    let r = run_via(&["list-machines", "--no-legend"]).await;
    assert_eq!((r.code, r.stdout.lines().count()), (0, 2), "{r:?}");
    let r = run_via(&["status", "hello.service"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("hello.service") && r.stdout.contains("active (running)"),
        "{r:?}"
    );
    let r = run_via(&["journal", "--lines=50", "hello.service"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("hello-from-fleet"), "{r:?}");
    let r = run_via(&["ssh", "hello.service", "echo", "foo"]).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, "foo\n"), "{r:?}");
    // The remote exit status is passed through.
    let r = run_via(&["ssh", "hello.service", "exit", "3"]).await;
    assert_eq!(r.code, 3, "{r:?}");
    // A TCP endpoint through the tunnel: direct-tcpip.
    let ep1 = format!("--endpoint={}", cluster.members[1].endpoint());
    let r = ctl
        .run(&[
            &tunnel,
            "--ssh-username=root",
            &ep1,
            "list-machines",
            "--no-legend",
        ])
        .await;
    assert_eq!((r.code, r.stdout.lines().count()), (0, 2), "{r:?}");

    // Inside the machine that runs the unit, status runs systemctl locally.
    let out = cluster.members[1]
        .machine
        .exec(&["/opt/fleet/fleetctl", "status", "hello.service"])
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("active (running)"),
        "local status: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Starting 1 + 10 units through the tunnel.
    let one = write_unit(dir.path(), "tun-one.service", &service("one"));
    let args = via(&["start"]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push(&one);
    let r = ctl.run(&args).await;
    assert_eq!(r.code, 0, "{r:?}");
    let ten: Vec<String> = (0..10)
        .map(|i| write_unit(dir.path(), &format!("tun-{i}.service"), &service("ten")))
        .collect();
    let args = via(&["start"]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(ten.iter().map(String::as_str));
    let r = ctl.run(&args).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.matches(" launched on ").count(), 10, "{r:?}");
    wait_until(
        "11 tun-* units active",
        Duration::from_secs(30),
        || cluster.list_units(),
        |rows| {
            rows.iter()
                .filter(|r| r.0.starts_with("tun-") && r.1 == "active")
                .count()
                == 11
        },
    )
    .await?;
    Ok(())
}

/// A TCP forwarder for a machine: listens on the machine's own loopback
/// (`argv[1]` is the port) and copies each connection to `argv[2]:argv[3]`.
const FORWARDER: &str = r#"
import asyncio, sys
listen_port, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
async def pump(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
async def serve(reader, writer):
    up_reader, up_writer = await asyncio.open_connection(host, port)
    await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", listen_port)
    await server.serve_forever()
asyncio.run(main())
"#;

/// `--tunnel` with `--driver=etcd` (fleet-reference.md §8.4): the etcd
/// traffic goes through a `direct-tcpip` channel from the bastion. The
/// endpoint, `127.0.0.1:<port>`, is etcd only on the bastion's loopback
/// (a forwarder there), so only traffic through the tunnel reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_driver_through_the_tunnel() -> anyhow::Result<()> {
    // Held to the end: dropping it stops the agent.
    let ssh = SshCluster::start(1).await?;
    ssh.know_all_hosts()?;
    let member = &ssh.cluster.members[0];
    let ctl = &ssh.ctl;

    // A port free on the host; the machine's network namespace is its own.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let etcd = ssh.cluster.etcd_endpoints_for_machines()[0].clone();
    let (etcd_host, etcd_port) = etcd
        .trim_start_matches("http://")
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("etcd endpoint {etcd} has no port"))?;
    let out = member
        .machine
        .exec(&[
            "systemd-run",
            "--unit=tb-etcd-forward",
            "--",
            "/usr/bin/python3",
            "-c",
            FORWARDER,
            &port,
            etcd_host,
            etcd_port,
        ])
        .await?;
    testbed::cluster::check(&out, "systemd-run the etcd forwarder")?;
    let probe = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
    wait_until(
        "the forwarder listens in the machine",
        Duration::from_secs(20),
        || async {
            Ok(member
                .machine
                .exec(&["bash", "-c", &probe])
                .await?
                .status
                .success())
        },
        |listening| *listening,
    )
    .await?;

    let endpoint = format!("--endpoint=http://127.0.0.1:{port}");
    // From the host, nothing answers there.
    let r = ctl
        .run(&[
            "--driver=etcd",
            &endpoint,
            "--request-timeout=1",
            "list-machines",
        ])
        .await;
    assert_ne!(r.code, 0, "etcd answered on the host's own loopback: {r:?}");
    // Through the tunnel etcd answers, reads and writes.
    let tunnel = format!("--tunnel={}", member.ip());
    let via = |rest: &[&str]| -> Vec<String> {
        [
            tunnel.as_str(),
            "--ssh-username=root",
            "--driver=etcd",
            endpoint.as_str(),
        ]
        .iter()
        .chain(rest)
        .map(|s| (*s).to_owned())
        .collect()
    };
    let run_via = |rest: &[&str]| {
        let args = via(rest);
        async move {
            ctl.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .await
        }
    };
    let r = run_via(&["list-machines", "--no-legend", "--full"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with(member.machine.machine_id()),
        "list-machines through the tunnel: {r:?}"
    );
    let dir = tempfile::tempdir()?;
    let unit = write_unit(dir.path(), "tunneled.service", &service("tunneled"));
    let r = run_via(&["submit", &unit]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let r = run_via(&["list-unit-files", "--no-legend"]).await;
    assert!(
        r.code == 0 && r.stdout.starts_with("tunneled.service"),
        "{r:?}"
    );
    Ok(())
}

/// A tmux server of its own (socket in a temporary directory), killed on
/// drop through that socket.
struct Tmux {
    /// The server's socket (`tmux -S`).
    sock: PathBuf,
    /// Holds the socket and the config file.
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// A server whose panes stay after their command exits, so the screen
    /// and the exit status can be read; fails clearly without tmux.
    fn new() -> anyhow::Result<Tmux> {
        let found = std::process::Command::new("tmux")
            .arg("-V")
            .output()
            .map_err(|e| anyhow::anyhow!("tmux is needed (scripts/setup.sh installs it): {e}"))?;
        anyhow::ensure!(found.status.success(), "tmux -V failed: {found:?}");
        let dir = tempfile::tempdir()?;
        Ok(Tmux {
            sock: dir.path().join("tmux.sock"),
            _dir: dir,
        })
    }

    /// Runs `tmux -S <sock> -f <conf> <args>`; fails unless it exits 0.
    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let conf = self.sock.with_file_name("tmux.conf");
        std::fs::write(
            &conf,
            "set -g remain-on-exit on\nset -g history-limit 5000\n",
        )?;
        let out = tokio::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .arg("-f")
            .arg(&conf)
            .args(args)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `command` (a shell command line) in a new 160x40 session `t`.
    async fn start(&self, command: &str) -> anyhow::Result<()> {
        self.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "160",
            "-y",
            "40",
            command,
        ])
        .await
        .map(drop)
    }

    /// The pane's screen and scrollback as text.
    async fn screen(&self) -> anyhow::Result<String> {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "t"])
            .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `env -i` and only what fleetctl needs, to start a command line with.
fn clean_env(ctl: &Fleetctl, agent: &SshAgent) -> String {
    format!(
        "env -i HOME={home} PATH=/usr/bin:/bin TERM=screen SSH_AUTH_SOCK={sock} RUST_LOG=warn",
        home = ctl.home.path().display(),
        sock = agent.sock.display(),
    )
}

/// Machines running fleetd and sshd, an agent holding a client key that
/// each sshd lets in as root, and a fleetctl using that agent.
struct SshCluster {
    /// The cluster.
    cluster: Cluster,
    /// Holds the keys; free for the test's own files.
    keys: tempfile::TempDir,
    /// The agent, held until the test ends.
    agent: SshAgent,
    /// Each member's sshd host key.
    host_keys: Vec<KeyPair>,
    /// fleetctl with the agent (and no known hosts yet).
    ctl: Fleetctl,
}

impl SshCluster {
    async fn start(members: usize) -> anyhow::Result<SshCluster> {
        let cluster = Cluster::start(ClusterOptions {
            members,
            ..ClusterOptions::default()
        })
        .await?;
        let keys = tempfile::tempdir()?;
        let agent = SshAgent::start()?;
        let client_key = KeyPair::generate(keys.path(), "client")?;
        agent.add(&client_key)?;
        let mut host_keys = Vec::new();
        for (i, m) in cluster.members.iter().enumerate() {
            let key = KeyPair::generate(keys.path(), &format!("host{i}"))?;
            start_sshd(&m.machine, &m.ip(), &key, &[&client_key]).await?;
            host_keys.push(key);
        }
        let ctl = Fleetctl::new(Some(&agent.sock))?;
        Ok(SshCluster {
            cluster,
            keys,
            agent,
            host_keys,
            ctl,
        })
    }

    /// Writes fleetctl's known-hosts file with every member's host key.
    fn know_all_hosts(&self) -> anyhow::Result<()> {
        let hosts: Vec<_> = self
            .cluster
            .members
            .iter()
            .zip(&self.host_keys)
            .map(|(m, key)| (m.ip(), key))
            .collect();
        write_known_hosts(&self.ctl.home.path().join(".fleetctl/known_hosts"), &hosts)
    }
}

/// `fleetctl ssh <machine>` without a command on a real terminal (a tmux
/// pane): a remote shell that runs what is typed and ends with `exit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_ssh_in_a_terminal() -> anyhow::Result<()> {
    let tmux = Tmux::new()?;
    let ssh = SshCluster::start(1).await?;
    ssh.know_all_hosts()?;
    let SshCluster {
        cluster,
        keys,
        agent,
        ctl,
        ..
    } = ssh;
    let m = &cluster.members[0];
    let out = m.machine.exec(&["hostname"]).await?;
    let hostname = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    anyhow::ensure!(!hostname.is_empty(), "the machine has no hostname: {out:?}");

    // A clean environment: only what fleetctl needs. Its exit status goes
    // to a file (tmux's own report of it is racy).
    let status_file = keys.path().join("fleetctl-status");
    let command = format!(
        "{env} sh -c '{bin} --endpoint={ep} --ssh-username=root ssh {id}; echo $? > {status}'",
        env = clean_env(&ctl, &agent),
        status = status_file.display(),
        bin = ctl.bin.display(),
        ep = m.endpoint(),
        id = m.machine.machine_id(),
    );
    tmux.start(&command).await?;
    // The remote shell's prompt (root's: ending in '#').
    wait_until(
        "the remote shell's prompt",
        Duration::from_secs(60),
        || tmux.screen(),
        |s| s.lines().any(|l| l.trim_end().ends_with('#')),
    )
    .await?;
    tmux.run(&["send-keys", "-t", "t", "-l", "echo hi-from-$(hostname)"])
        .await?;
    tmux.run(&["send-keys", "-t", "t", "Enter"]).await?;
    let want = format!("hi-from-{hostname}");
    wait_until(
        &format!("{want} on the terminal"),
        Duration::from_secs(30),
        || tmux.screen(),
        |s| s.lines().any(|l| l.trim_end() == want),
    )
    .await?;
    tmux.run(&["send-keys", "-t", "t", "-l", "exit"]).await?;
    tmux.run(&["send-keys", "-t", "t", "Enter"]).await?;
    // fleetctl ends with the shell, exit status 0 (the screen is kept in
    // the observation for a failure's message).
    wait_until(
        "fleetctl to exit 0 after `exit`",
        Duration::from_secs(30),
        || async {
            let status = std::fs::read_to_string(&status_file).unwrap_or_default();
            Ok((status, tmux.screen().await?))
        },
        |(status, _)| status == "0\n",
    )
    .await?;
    Ok(())
}

/// A stand-in for `sudo` on the remote PATH: like sudo it refuses `-n`
/// when a password is needed and asks for the password on the terminal,
/// which must exist; the password is `fleet-secret`.
const FAKE_SUDO: &str = r#"#!/bin/sh
if [ "$1" = "-n" ]; then echo "sudo: a password is required" >&2; exit 1; fi
if ! (: < /dev/tty) 2>/dev/null; then
  echo "sudo: a terminal is required to read the password" >&2; exit 1
fi
exec 3<>/dev/tty
printf '[sudo] password for %s: ' "$(id -un)" >&3
stty -echo <&3; read -r pw <&3; stty echo <&3; printf '\n' >&3
[ "$pw" = "fleet-secret" ] || { echo "sudo: incorrect password" >&3; exit 1; }
exec 3>&-
exec "$@"
"#;

/// The contents of `dir/name`, or "" while it does not exist.
fn read_or_empty(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// `ssh MACHINE CMD`, `status` and `journal --sudo` get a remote PTY when
/// fleetctl's stdin is a terminal (a tmux pane), as the original's did:
/// the PTY has the pane's size and echo on, sudo's password prompt works
/// through it, and the local terminal's modes are back as they were when
/// fleetctl ends, normally or by SIGTERM. Without a terminal there is no
/// PTY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_commands_get_a_pty_on_a_terminal() -> anyhow::Result<()> {
    let tmux = Tmux::new()?;
    let ssh = SshCluster::start(1).await?;
    ssh.know_all_hosts()?;
    let SshCluster {
        cluster,
        keys: _keys,
        agent,
        ctl,
        ..
    } = ssh;
    let m = &cluster.members[0];
    // The fake sudo, first on the PATH of SSH sessions.
    let bin_dir = format!("{}/bin", testbed::ssh::SSH_DIR);
    m.machine.write_file(format!("{bin_dir}/sudo"), FAKE_SUDO)?;
    std::fs::set_permissions(
        m.machine.root_path(format!("{bin_dir}/sudo")),
        std::fs::Permissions::from_mode(0o755),
    )?;
    let config = m
        .machine
        .root_path(format!("{}/sshd_config", testbed::ssh::SSH_DIR));
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        text.replace("SetEnv PATH=", &format!("SetEnv PATH={bin_dir}:")),
    )?;
    restart_sshd(&m.machine, &m.ip()).await?;

    let ep = m.endpoint();
    let id = m.machine.machine_id().to_owned();
    let units = tempfile::tempdir()?;
    let hello = write_unit(
        units.path(),
        "hello.service",
        "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sh -c 'echo hello-from-fleet; exec sleep 100000'\n",
    );
    ctl.ok(&ep, &["start", &hello]).await;

    // Without a terminal: no PTY, and sudo cannot ask.
    let epf = format!("--endpoint={ep}");
    let base = [epf.as_str(), "--ssh-username=root"];
    let with = |rest: &[&str]| -> Vec<String> {
        base.iter()
            .chain(rest)
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
    };
    let args = with(&["ssh", &id, "tty"]);
    let r = ctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!((r.code, r.stdout.as_str()), (1, "not a tty\n"), "{r:?}");
    let args = with(&["journal", "--sudo", "hello.service"]);
    let r = ctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("a terminal is required"), "{r:?}");

    // On a terminal: each step writes what it saw to a file of `work`.
    let work = tempfile::tempdir()?;
    let w = work.path().display();
    let fleetctl = format!(
        "{bin} --endpoint={ep} --ssh-username=root",
        bin = ctl.bin.display()
    );
    let script = format!(
        "cd {w}\n\
         stty -g > before\n\
         {fleetctl} ssh {id} 'tty; stty size; stty -a | tr \" ;\" \"\\n\\n\" | grep -x -e echo -e -echo' \
           > ssh.out 2> ssh.err; echo $? > ssh.status\n\
         stty -g > after-ssh\n\
         {fleetctl} status hello.service > status.out 2> status.err; echo $? > status.status\n\
         {fleetctl} journal --sudo --lines=50 hello.service > journal.out 2> journal.err; \
           echo $? > journal.status\n\
         stty -g > after-journal\n\
         sh -c 'echo $$ > fleetctl.pid; exec {fleetctl} ssh {id} \"echo ready; sleep 1000\"' \
           > signal.out 2> signal.err; echo $? > signal.status\n\
         stty -g > after-signal\n"
    );
    std::fs::write(work.path().join("script.sh"), script)?;
    let command = format!("{env} sh {w}/script.sh", env = clean_env(&ctl, &agent));
    tmux.start(&command).await?;
    let wait_file = |name: &'static str, want: &'static str| {
        let dir = work.path().to_path_buf();
        let tmux = &tmux;
        async move {
            wait_until(
                &format!("{name} to contain {want:?}"),
                Duration::from_secs(60),
                || async { Ok((read_or_empty(&dir, name), tmux.screen().await?)) },
                |(text, _)| text.contains(want),
            )
            .await
        }
    };
    wait_file("ssh.status", "\n").await?;
    let out = read_or_empty(work.path(), "ssh.out").replace('\r', "");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        read_or_empty(work.path(), "ssh.status"),
        "0\n",
        "ssh: {out}{}",
        read_or_empty(work.path(), "ssh.err")
    );
    assert!(
        lines.first().is_some_and(|l| l.starts_with("/dev/pts/")),
        "{out}"
    );
    // `stty size` is rows and columns: the pane's (the status line takes
    // a row of the window).
    let size = tmux
        .run(&["display", "-p", "-t", "t", "#{pane_height} #{pane_width}"])
        .await?;
    assert_eq!(lines.get(1..), Some(&[size.trim(), "echo"][..]), "{out}");
    // sudo's prompt comes through the PTY; the password typed in the pane
    // goes back through it, unechoed.
    wait_file("journal.out", "[sudo] password for root: ").await?;
    tmux.run(&["send-keys", "-t", "t", "-l", "fleet-secret"])
        .await?;
    tmux.run(&["send-keys", "-t", "t", "Enter"]).await?;
    wait_file("journal.status", "\n").await?;
    let journal = read_or_empty(work.path(), "journal.out");
    assert_eq!(
        read_or_empty(work.path(), "journal.status"),
        "0\n",
        "journal: {journal}{}",
        read_or_empty(work.path(), "journal.err")
    );
    assert!(journal.contains("hello-from-fleet"), "{journal}");
    assert!(!journal.contains("fleet-secret"), "{journal}");
    let status = read_or_empty(work.path(), "status.out");
    assert_eq!(
        read_or_empty(work.path(), "status.status"),
        "0\n",
        "{status}"
    );
    assert!(status.contains("active (running)"), "{status}");
    // SIGTERM during a session: fleetctl ends and the terminal is restored.
    wait_file("signal.out", "ready").await?;
    let pid: i32 = read_or_empty(work.path(), "fleetctl.pid").trim().parse()?;
    let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| anyhow::anyhow!("pid 0"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    wait_file("signal.status", "\n").await?;
    // The shell's status for SIGTERM, as if it had killed fleetctl.
    assert_eq!(read_or_empty(work.path(), "signal.status"), "143\n");
    wait_file("after-signal", "\n").await?;
    let before = read_or_empty(work.path(), "before");
    for after in ["after-ssh", "after-journal", "after-signal"] {
        assert_eq!(
            read_or_empty(work.path(), after),
            before,
            "terminal modes {after}"
        );
    }
    Ok(())
}
