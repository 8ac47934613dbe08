//! The agent end to end on real parts: fleetd runs as a systemd service in
//! real systemd machines (with `Restart=always`, as shipped), against a real
//! etcd. Every claim about units is checked against the machine's own systemd
//! (`systemctl` inside the machine), and every claim about what fleet
//! published against etcd itself.
//!
//! Each scenario has its own cluster, so they run as parallel tests:
//! - the unit flow (load, start, stop, unload) with the right hash, an
//!   `[Install]` unit following its target, SIGHUP, SIGUSR1 and the watchdog;
//! - `kill -9` fleetd: systemd restarts it, the unit is adopted, not restarted;
//! - the machine cut from etcd for 60 s: the unit keeps running, its state is
//!   published again after healing;
//! - `systemctl stop fleet`: its units stop there and move elsewhere;
//! - a second host with the same machine ID is refused.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testbed::cluster::{Cluster, ClusterOptions, check};
use testbed::util::wait_until;

const HELLO: &str = "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100000\n";

/// Wanted by hello.service (enabled by fleet) and part of it, on the same
/// machine: it starts and stops with hello.service, never by itself.
const HELLO_INSTALL: &str = "[Unit]\nDescription=Hello's companion\nPartOf=hello.service\n\n\
[Service]\nExecStart=/bin/sleep 100000\n\n[Install]\nWantedBy=hello.service\n\n\
[X-Fleet]\nMachineOf=hello.service\n";

/// fleet's etcd key prefix (the cluster uses the default).
const PREFIX: &str = "/_coreos.com/fleet/";

/// systemd's (load, active, sub) states of a running unit.
const RUNNING: [&str; 3] = ["loaded", "active", "running"];
/// systemd's (load, active, sub) states of a loaded unit that is not running.
const STOPPED: [&str; 3] = ["loaded", "inactive", "dead"];

/// Writes unit files into a temporary directory; returns it and the paths.
fn unit_files(units: &[(&str, &str)]) -> anyhow::Result<(tempfile::TempDir, Vec<String>)> {
    let dir = tempfile::tempdir()?;
    let mut paths = Vec::new();
    for (name, text) in units {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        paths.push(path.to_string_lossy().into_owned());
    }
    Ok((dir, paths))
}

/// Runs fleetctl against member 0; fails with its output and the journals of
/// every member when it does not succeed.
async fn fleetctl_ok(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let out = cluster.fleetctl(args).await?;
    if !out.status.success() {
        let mut journals = String::new();
        for i in 0..cluster.members.len() {
            journals.push_str(&format!(
                "\n--- fleet journal of member {i}:\n{}",
                cluster.fleet_journal(i).await
            ));
        }
        bail!(
            "fleetctl {args:?} failed ({}):\n{}{}{journals}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `systemctl show` of (LoadState, ActiveState, SubState) in member `i`.
async fn systemd_state(cluster: &Cluster, i: usize, unit: &str) -> anyhow::Result<[String; 3]> {
    Ok([
        cluster.show(i, unit, "LoadState").await?,
        cluster.show(i, unit, "ActiveState").await?,
        cluster.show(i, unit, "SubState").await?,
    ])
}

/// Waits until systemd in member `i` reports `unit` as (load, active, sub).
async fn wait_systemd(
    cluster: &Cluster,
    i: usize,
    unit: &str,
    want: [&str; 3],
) -> anyhow::Result<()> {
    wait_until(
        &format!("{unit} {want:?} in member {i}'s systemd"),
        Duration::from_secs(30),
        || systemd_state(cluster, i, unit),
        |s| s.iter().zip(want).all(|(a, b)| a == b),
    )
    .await
    .map(|_| ())
}

/// The rows of `fleetctl list-units --full` with `fields`, split on
/// whitespace.
async fn list_units(cluster: &Cluster, fields: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let out = fleetctl_ok(
        cluster,
        &["list-units", "--no-legend", "--full", "--fields", fields],
    )
    .await?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        // The machine column is `ID/IP`; keep the ID.
        .map(|l| {
            l.split_whitespace()
                .map(|f| f.split('/').next().unwrap_or(f).to_owned())
                .collect()
        })
        .collect())
}

/// Waits until list-units (with `fields`, unit first) shows `row` for its
/// unit.
async fn wait_listed(cluster: &Cluster, fields: &str, row: &[&str]) -> anyhow::Result<()> {
    wait_until(
        &format!("list-units --fields {fields} to show {row:?}"),
        Duration::from_secs(30),
        || list_units(cluster, fields),
        |rows| {
            rows.iter()
                .any(|r| r.iter().map(String::as_str).eq(row.iter().copied()))
        },
    )
    .await
    .map(|_| ())
}

/// An etcd client for the cluster's etcd.
async fn etcd(cluster: &Cluster) -> anyhow::Result<etcd_client::Client> {
    etcd_client::Client::connect([cluster.etcd.endpoint()], None)
        .await
        .context("cannot connect to the cluster's etcd")
}

/// A key's value and lease, if it exists.
async fn get(
    client: &etcd_client::Client,
    key: &str,
) -> anyhow::Result<Option<(serde_json::Value, i64)>> {
    // Clients are cheap handles over one channel.
    let resp = client.clone().get(format!("{PREFIX}{key}"), None).await?;
    let Some(kv) = resp.kvs().first() else {
        return Ok(None);
    };
    let value = serde_json::from_slice(kv.value()).unwrap_or(serde_json::Value::Null);
    Ok(Some((value, kv.lease())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_flow_install_reload_and_dump() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let me = cluster.members[0].machine.machine_id().to_owned();

    // A watchdog, as a host would set it: fleetd must ping it.
    cluster.members[0].machine.write_file(
        "/etc/systemd/system/fleet.service.d/20-watchdog.conf",
        "[Service]\nWatchdogSec=2s\n",
    )?;
    check(
        &cluster.members[0]
            .machine
            .systemctl(&["daemon-reload"])
            .await?,
        "daemon-reload",
    )?;
    check(
        &cluster.members[0]
            .machine
            .systemctl(&["restart", "fleet.service"])
            .await?,
        "systemctl restart fleet",
    )?;
    cluster.wait_for_machines(1).await?;

    // load: written, linked, loaded but not started; the hash is the content's.
    let (_dir, paths) = unit_files(&[
        ("hello.service", HELLO),
        ("hello-install.service", HELLO_INSTALL),
    ])?;
    let hash = HELLO.parse::<units::UnitFile>()?.hash().to_string();
    fleetctl_ok(&cluster, &["load", &paths[0]]).await?;
    let fields = "unit,hash,load,active,sub,machine";
    wait_listed(
        &cluster,
        fields,
        &["hello.service", &hash, "loaded", "inactive", "dead", &me],
    )
    .await?;
    wait_systemd(&cluster, 0, "hello.service", STOPPED).await?;
    let unit_file = cluster.members[0]
        .machine
        .root_path("/run/fleet/units/hello.service");
    assert!(unit_file.exists(), "{} missing", unit_file.display());

    // start → active/running, in fleet and in systemd.
    fleetctl_ok(&cluster, &["start", "hello.service"]).await?;
    wait_systemd(&cluster, 0, "hello.service", RUNNING).await?;
    wait_listed(
        &cluster,
        fields,
        &["hello.service", &hash, "loaded", "active", "running", &me],
    )
    .await?;

    // stop → inactive, still loaded.
    fleetctl_ok(&cluster, &["stop", "hello.service"]).await?;
    wait_systemd(&cluster, 0, "hello.service", STOPPED).await?;
    wait_listed(
        &cluster,
        fields,
        &["hello.service", &hash, "loaded", "inactive", "dead", &me],
    )
    .await?;
    assert!(unit_file.exists(), "a stopped unit stays loaded");

    // unload → the file and the unit are gone from the machine.
    fleetctl_ok(&cluster, &["unload", "hello.service"]).await?;
    wait_until(
        "hello.service's unit file removed",
        Duration::from_secs(30),
        || async { Ok(unit_file.exists()) },
        |exists| !exists,
    )
    .await?;
    wait_until(
        "systemd to forget hello.service",
        Duration::from_secs(30),
        || cluster.show(0, "hello.service", "LoadState"),
        |s| s == "not-found",
    )
    .await?;
    wait_until(
        "list-units without hello.service",
        Duration::from_secs(30),
        || list_units(&cluster, "unit"),
        |rows| !rows.iter().any(|r| r[0] == "hello.service"),
    )
    .await?;

    // [Install] WantedBy=hello.service: enabled when loaded, and started and
    // stopped by systemd together with hello.service, never by fleet.
    fleetctl_ok(&cluster, &["load", &paths[0], &paths[1]]).await?;
    wait_systemd(&cluster, 0, "hello-install.service", STOPPED).await?;
    let enabled = cluster.members[0]
        .machine
        .systemctl(&["is-enabled", "hello-install.service"])
        .await?;
    let enabled = String::from_utf8_lossy(&enabled.stdout).trim().to_owned();
    assert!(
        enabled.starts_with("enabled"),
        "hello-install.service is {enabled:?}, not enabled"
    );
    fleetctl_ok(&cluster, &["start", "hello.service"]).await?;
    wait_systemd(&cluster, 0, "hello.service", RUNNING).await?;
    wait_systemd(&cluster, 0, "hello-install.service", RUNNING).await?;
    wait_listed(
        &cluster,
        "unit,active",
        &["hello-install.service", "active"],
    )
    .await?;
    fleetctl_ok(&cluster, &["stop", "hello.service"]).await?;
    wait_systemd(&cluster, 0, "hello-install.service", STOPPED).await?;
    fleetctl_ok(&cluster, &["start", "hello.service"]).await?;
    wait_systemd(&cluster, 0, "hello-install.service", RUNNING).await?;

    // SIGHUP: the new config applies (new metadata), the process, the
    // sockets and the units stay.
    let fleetd = cluster.main_pid(0, "fleet.service").await?;
    let hello = cluster.main_pid(0, "hello.service").await?;
    let conf_path = cluster.members[0]
        .machine
        .root_path("/etc/fleet/fleet.conf");
    let conf = std::fs::read_to_string(&conf_path)?;
    let conf = conf.replace("metadata=", "metadata=reloaded=yes,");
    std::fs::write(&conf_path, conf)?;
    check(
        &cluster.members[0]
            .machine
            .systemctl(&["reload", "fleet.service"])
            .await?,
        "systemctl reload fleet",
    )?;
    wait_until(
        "list-machines to show the reloaded metadata",
        Duration::from_secs(30),
        || async {
            let out = cluster
                .fleetctl(&["list-machines", "--no-legend", "--full"])
                .await?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        },
        |text| text.contains("reloaded=yes"),
    )
    .await?;
    assert_eq!(
        cluster.main_pid(0, "fleet.service").await?,
        fleetd,
        "SIGHUP restarted fleetd"
    );
    assert_eq!(
        cluster.main_pid(0, "hello.service").await?,
        hello,
        "SIGHUP restarted hello.service"
    );
    assert_eq!(
        cluster.show(0, "fleet.service", "ActiveState").await?,
        "active"
    );
    // The unix socket still answers inside the machine.
    let out = cluster.members[0]
        .machine
        .exec(&["/opt/fleet/fleetctl", "list-units", "--no-legend"])
        .await?;
    check(
        &out,
        "fleetctl list-units over /var/run/fleet.sock after SIGHUP",
    )?;

    // SIGUSR1: one JSON line with the agent's, publisher's and engine's state.
    check(
        &cluster.members[0]
            .machine
            .systemctl(&["kill", "-s", "USR1", "fleet.service"])
            .await?,
        "systemctl kill -s USR1 fleet",
    )?;
    let line = wait_until(
        "a state dump in the journal",
        Duration::from_secs(20),
        || async {
            Ok(cluster
                .fleet_messages(0)
                .await?
                .lines()
                .find(|l| l.contains("SIGUSR1: state dump"))
                .map(str::to_owned))
        },
        Option::is_some,
    )
    .await?
    .unwrap_or_default();
    let json = line
        .split_once("state=")
        .map(|(_, j)| j)
        .with_context(|| format!("no state= in {line:?}"))?;
    let dump: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("dump is not JSON: {json}"))?;
    assert_eq!(dump["agent"]["machine"], serde_json::json!(me), "{dump:#}");
    assert!(
        dump["agent"]["managed"].get("hello.service").is_some(),
        "the agent's dump lacks hello.service: {dump:#}"
    );
    assert!(dump["agent"]["publisher"].is_object(), "{dump:#}");
    assert!(dump["engine"]["leader"].is_boolean(), "{dump:#}");

    // The watchdog has been fed all along: fleetd was never restarted.
    let fed = cluster
        .show(0, "fleet.service", "WatchdogTimestampMonotonic")
        .await?;
    assert!(fed != "0" && !fed.is_empty(), "no watchdog ping: {fed:?}");
    assert_eq!(cluster.show(0, "fleet.service", "NRestarts").await?, "0");
    assert_eq!(cluster.main_pid(0, "fleet.service").await?, fleetd);

    // systemctl stop fleet: a clean exit.
    cluster.stop_fleet(0).await?;
    assert_eq!(cluster.show(0, "fleet.service", "Result").await?, "success");
    Ok(())
}

/// A one-member cluster running hello.service, started through fleetctl,
/// and what the agent tests watch of it.
struct RunningHello {
    cluster: Cluster,
    /// Member 0's machine ID.
    me: String,
    /// Holds hello.service's unit file.
    _dir: tempfile::TempDir,
    /// hello.service's main PID.
    hello: u32,
    /// fleetd's PID.
    fleetd: u32,
    /// A client of the cluster's etcd.
    etcd: etcd_client::Client,
    /// The key of hello.service's state under [`PREFIX`].
    state_key: String,
}

async fn running_hello() -> anyhow::Result<RunningHello> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let me = cluster.members[0].machine.machine_id().to_owned();
    let (dir, paths) = unit_files(&[("hello.service", HELLO)])?;
    fleetctl_ok(&cluster, &["start", &paths[0]]).await?;
    wait_systemd(&cluster, 0, "hello.service", RUNNING).await?;
    Ok(RunningHello {
        hello: cluster.main_pid(0, "hello.service").await?,
        fleetd: cluster.main_pid(0, "fleet.service").await?,
        etcd: etcd(&cluster).await?,
        state_key: format!("states/hello.service/{me}"),
        me,
        _dir: dir,
        cluster,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_adopts_the_running_unit() -> anyhow::Result<()> {
    let RunningHello {
        cluster,
        me,
        _dir,
        hello,
        fleetd,
        etcd,
        state_key,
    } = running_hello().await?;
    let (_, old_lease) = wait_until(
        "hello.service's state in etcd",
        Duration::from_secs(30),
        || get(&etcd, &state_key),
        |s| {
            s.as_ref()
                .is_some_and(|(v, _)| v["activeState"] == "active")
        },
    )
    .await?
    .context("checked by wait_until")?;

    cluster.kill_fleet(0).await?;
    let killed = Instant::now();
    // As soon as the new process exists (systemd waits RestartSec=5s).
    let restarted = wait_until(
        "systemd to restart fleetd",
        Duration::from_secs(60),
        || cluster.main_pid(0, "fleet.service"),
        |pid| *pid != 0 && *pid != fleetd,
    )
    .await?;
    let since = Instant::now();
    wait_until(
        "hello.service's state published again by the new fleetd",
        Duration::from_secs(30),
        || async {
            let machine = get(&etcd, &format!("machines/{me}")).await?;
            let state = get(&etcd, &state_key).await?;
            Ok((machine, state))
        },
        |(machine, state)| match (machine, state) {
            (Some((_, lease)), Some((v, state_lease))) => {
                *lease != old_lease && state_lease == lease && v["activeState"] == "active"
            }
            _ => false,
        },
    )
    .await?;
    let republished = since.elapsed();
    println!(
        "fleetd restarted (pid {fleetd} -> {restarted}) {:?} after the kill; hello.service reported launched again {republished:?} after the restart",
        since.duration_since(killed)
    );
    assert!(
        republished < Duration::from_secs(10),
        "took {republished:?} to report the unit again"
    );
    assert_eq!(
        cluster.main_pid(0, "hello.service").await?,
        hello,
        "hello.service was restarted:\n{}",
        cluster.fleet_journal(0).await
    );
    assert_eq!(cluster.show(0, "hello.service", "NRestarts").await?, "0");
    wait_listed(
        &cluster,
        "unit,active,machine",
        &["hello.service", "active", &me],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_cut_from_etcd_stops_nothing() -> anyhow::Result<()> {
    // One member: nothing can be rescheduled, so only the agent is tested.
    let RunningHello {
        cluster,
        me,
        _dir,
        hello,
        fleetd,
        etcd,
        state_key,
    } = running_hello().await?;

    cluster.cut(0)?;
    let cut_at = Instant::now();
    // The machine's lease (agent_ttl 5 s) expires: etcd drops its presence
    // and its unit states.
    wait_until(
        "the cut machine's unit state to expire in etcd",
        Duration::from_secs(30),
        || get(&etcd, &state_key),
        Option::is_none,
    )
    .await?;
    while cut_at.elapsed() < Duration::from_secs(60) {
        let pid = cluster.main_pid(0, "hello.service").await?;
        assert_eq!(
            pid,
            hello,
            "hello.service changed during the cut (after {:?})",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    cluster.heal(0)?;
    let healed = Instant::now();

    wait_until(
        "hello.service's state published again after healing",
        Duration::from_secs(60),
        || get(&etcd, &state_key),
        |s| {
            s.as_ref()
                .is_some_and(|(v, _)| v["activeState"] == "active")
        },
    )
    .await?;
    println!("state published again {:?} after healing", healed.elapsed());
    wait_listed(
        &cluster,
        "unit,active,machine",
        &["hello.service", "active", &me],
    )
    .await?;
    // Give a wrong decision after the heal (the engine seeing no machine) a
    // chance to act before the last check.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        cluster.main_pid(0, "hello.service").await?,
        hello,
        "hello.service was restarted after healing:\n{}",
        cluster.fleet_journal(0).await
    );
    assert_eq!(
        cluster.main_pid(0, "fleet.service").await?,
        fleetd,
        "fleetd was restarted during the cut:\n{}",
        cluster.fleet_journal(0).await
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_fleet_moves_its_units_elsewhere() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        members: 2,
        ..ClusterOptions::default()
    })
    .await?;
    let (_dir, paths) = unit_files(&[("hello.service", HELLO)])?;
    fleetctl_ok(&cluster, &["start", &paths[0]]).await?;
    let rows = list_units(&cluster, "unit,active,machine").await?;
    let first = rows
        .iter()
        .find(|r| r[0] == "hello.service")
        .and_then(|r| r.get(2))
        .with_context(|| format!("hello.service not placed: {rows:?}"))?
        .clone();
    let (from, to) = if cluster.members[0].machine.machine_id() == first {
        (0, 1)
    } else {
        (1, 0)
    };
    let other = cluster.members[to].machine.machine_id().to_owned();
    wait_systemd(&cluster, from, "hello.service", RUNNING).await?;

    cluster.stop_fleet(from).await?;
    assert_eq!(
        cluster.show(from, "fleet.service", "Result").await?,
        "success"
    );
    // Stopped and unloaded there.
    let state = systemd_state(&cluster, from, "hello.service").await?;
    assert_ne!(
        state[1], "active",
        "hello.service still runs on the stopped machine"
    );
    assert!(
        !cluster.members[from]
            .machine
            .root_path("/run/fleet/units/hello.service")
            .exists(),
        "hello.service's file left on the stopped machine"
    );
    // Its presence is gone at once (not after the TTL), through the other
    // member's API.
    let out = cluster
        .fleetctl_via(to, &["list-machines", "--no-legend", "--full"])
        .await?;
    check(&out, "fleetctl list-machines")?;
    let machines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        machines.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "list-machines after stopping fleet: {machines}"
    );
    assert!(machines.contains(&other), "{machines}");
    // The engine places the unit on the other machine.
    wait_systemd(&cluster, to, "hello.service", RUNNING).await?;
    wait_until(
        "list-units to show hello.service on the other machine",
        Duration::from_secs(30),
        || cluster.list_units_via(to),
        |rows| {
            rows.iter().any(|(unit, active, machine)| {
                unit == "hello.service" && active == "active" && machine.starts_with(other.as_str())
            })
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_with_the_same_machine_id_is_refused() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let id = cluster.members[0].machine.machine_id().to_owned();
    let first_ip = cluster.members[0].ip();
    let etcd = etcd(&cluster).await?;
    let (record, lease) = get(&etcd, &format!("machines/{id}"))
        .await?
        .context("member 0 is not registered")?;
    // Units scheduled to that machine ID: one running, one only loaded.
    let (_dir, paths) = unit_files(&[("hello.service", HELLO), ("loaded.service", HELLO)])?;
    fleetctl_ok(&cluster, &["start", &paths[0]]).await?;
    fleetctl_ok(&cluster, &["load", &paths[1]]).await?;
    wait_systemd(&cluster, 0, "hello.service", RUNNING).await?;
    wait_systemd(&cluster, 0, "loaded.service", STOPPED).await?;
    let hello = cluster.main_pid(0, "hello.service").await?;

    let twin = cluster.add_member(Some(&id)).await?;
    cluster.start_fleet_no_block(twin).await?;
    // Refused twice: the twin's fleetd exits, systemd starts it again
    // (Restart=always) and it is refused again, touching nothing each time.
    let refused = wait_until(
        "the twin's fleetd to refuse the machine ID twice",
        Duration::from_secs(60),
        || cluster.fleet_messages(twin),
        |text| {
            text.matches("is already registered by another host")
                .count()
                >= 2
        },
    )
    .await?;
    let line = refused
        .lines()
        .find(|l| l.contains("is already registered by another host"))
        .unwrap_or_default();
    assert!(
        line.contains(&id),
        "the error does not name the machine ID: {line}"
    );
    println!("twin's journal: {line}");

    // Still one machine, the first, untouched.
    let out = fleetctl_ok(&cluster, &["list-machines", "--no-legend", "--full"]).await?;
    let rows: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(rows.len(), 1, "list-machines: {out}");
    assert!(
        rows[0].contains(&id) && rows[0].contains(&first_ip),
        "{out}"
    );
    let (now, now_lease) = get(&etcd, &format!("machines/{id}"))
        .await?
        .context("member 0's record disappeared")?;
    assert_eq!(now["Token"], record["Token"], "the record was taken over");
    assert_eq!(now_lease, lease, "the record moved to another lease");
    // The twin's fleetd exits with an error, each time.
    assert!(
        refused.contains("status=1/FAILURE"),
        "the twin's fleetd did not exit with an error:\n{refused}"
    );
    // It wrote, loaded and started nothing.
    let units_dir = cluster.members[twin].machine.root_path("/run/fleet/units");
    let written: Vec<String> = match std::fs::read_dir(&units_dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    assert!(
        written.is_empty(),
        "the twin wrote {written:?} to its units directory:\n{refused}"
    );
    for unit in ["hello.service", "loaded.service"] {
        assert_eq!(
            systemd_state(&cluster, twin, unit).await?,
            ["not-found", "inactive", "dead"],
            "the twin's systemd has {unit}:\n{refused}"
        );
    }
    // The first host's units are untouched.
    assert_eq!(cluster.main_pid(0, "hello.service").await?, hello);
    assert_eq!(
        systemd_state(&cluster, 0, "loaded.service").await?,
        ["loaded", "inactive", "dead"]
    );
    Ok(())
}

/// A `systemd --user` manager with its session bus (testbed.md §2c): run in a
/// private mount namespace with its own `/run/systemd`, in its own cgroup.
/// Dropping it stops it by PID and removes its cgroups and directory.
struct UserManager {
    /// `systemd --user` (the shell and `unshare` exec into it).
    child: std::process::Child,
    /// XDG_RUNTIME_DIR, HOME and the units directory live here.
    dir: tempfile::TempDir,
    /// Its cgroup in each hierarchy.
    cgroups: Vec<std::path::PathBuf>,
}

impl UserManager {
    async fn start() -> anyhow::Result<UserManager> {
        testbed::util::require_root()?;
        testbed::util::require_tool("unshare")?;
        let dir = tempfile::Builder::new().prefix("fleet-user-").tempdir()?;
        for sub in ["run", "config", "home", "units"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        std::fs::set_permissions(
            dir.path().join("run"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let name = testbed::util::unique_name("user");
        let cgroups: Vec<std::path::PathBuf> = ["systemd", "unified"]
            .iter()
            .map(|h| {
                std::path::Path::new("/sys/fs/cgroup")
                    .join(h)
                    .join("tb")
                    .join(&name)
            })
            .filter(|p| {
                p.parent()
                    .and_then(|t| t.parent())
                    .is_some_and(std::path::Path::is_dir)
            })
            .collect();
        let enter: String = cgroups
            .iter()
            .map(|c| {
                format!(
                    "mkdir -p {0} && echo $$ > {0}/cgroup.procs && ",
                    c.display()
                )
            })
            .collect();
        let script = format!(
            "{enter}exec unshare --mount --propagation private sh -c \
             'mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && exec /usr/lib/systemd/systemd --user'"
        );
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("XDG_RUNTIME_DIR", dir.path().join("run"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("HOME", dir.path().join("home"))
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start systemd --user")?;
        let manager = UserManager {
            child,
            dir,
            cgroups,
        };
        let bus = manager.dir.path().join("run/bus");
        wait_until(
            "the user manager's session bus",
            Duration::from_secs(20),
            || async { Ok(bus.exists()) },
            |up| *up,
        )
        .await?;
        Ok(manager)
    }

    fn bus_address(&self) -> String {
        format!("unix:path={}", self.dir.path().join("run/bus").display())
    }

    fn units_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("units")
    }

    /// `GetUnitFileState` over the session bus.
    async fn unit_file_state(&self, unit: &str) -> anyhow::Result<String> {
        let out = tokio::process::Command::new("busctl")
            .arg(format!("--address={}", self.bus_address()))
            .args([
                "call",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "GetUnitFileState",
                "s",
                unit,
            ])
            .output()
            .await
            .context("cannot run busctl")?;
        check(&out, "busctl GetUnitFileState")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process};
        let pid = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw);
        if let Some(pid) = pid {
            let _ = kill_process(pid, Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for cgroup in &self.cgroups {
            // Whatever is left in it, then the (now empty) tree, deepest first.
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "for p in $(find {0} -name cgroup.procs -exec cat {{}} + 2>/dev/null); do kill -KILL $p; done; \
                     sleep 0.2; find {0} -depth -type d -exec rmdir {{}} + 2>/dev/null; true",
                    cgroup.display()
                ))
                .status();
        }
    }
}

/// `systemd_user = true`: the same manager code drives the user manager on
/// its session bus: load (linked and, with `[Install]`, enabled), start with
/// the job awaited, states, stop, unload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_manager_runs_units_on_the_session_bus() -> anyhow::Result<()> {
    use systemd::{DbusConfig, DbusManager, JobResult, SystemdManager};
    let user = UserManager::start().await?;
    let manager = DbusManager::connect(DbusConfig {
        bus_address: Some(user.bus_address()),
        user: true,
        units_dir: user.units_dir(),
        units_dir_in_systemd: user.units_dir(),
        job_timeout: Duration::from_secs(30),
    })
    .await
    .context("cannot connect to the user manager")?;
    let name = "fleet-user-hello.service";
    let text = "[Service]\nExecStart=/bin/sleep 100000\n\n[Install]\nWantedBy=default.target\n";
    manager.load(name, &text.parse()?).await?;
    manager.reload().await?;
    let state = user.unit_file_state(name).await?;
    assert!(state.contains("enabled"), "{name} is {state}, not enabled");
    let states = manager.states(&[name.to_owned()]).await?;
    assert_eq!(states[name].load_state, "loaded", "{states:?}");
    assert_eq!(manager.start(name).await?, JobResult::Done);
    let states = manager.states(&[name.to_owned()]).await?;
    assert_eq!(
        (
            states[name].active_state.as_str(),
            states[name].sub_state.as_str()
        ),
        ("active", "running"),
        "{states:?}"
    );
    assert_ne!(manager.main_pid(name).await?, 0);
    assert_eq!(manager.stop(name).await?, JobResult::Done);
    manager.unload(name).await?;
    manager.reload().await?;
    assert!(
        !user.units_dir().join(name).exists(),
        "unit file left behind"
    );
    let states = manager.states(&[name.to_owned()]).await?;
    assert_eq!(states[name].load_state, "not-found", "{states:?}");
    Ok(())
}
