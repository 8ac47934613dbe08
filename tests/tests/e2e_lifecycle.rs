//! fleetd's own lifecycle on real parts: fleetd runs from the shipped
//! `fleet.service` in real systemd machines, against a real etcd, and every
//! claim about a unit is checked against the machine's own systemd (its main
//! PID and `ActiveEnterTimestampMonotonic`: a unit stopped or restarted, here
//! or elsewhere, gets new ones).
//!
//! - `systemctl restart fleet`, a binary upgrade and a restart, a plain
//!   `kill -TERM`, SIGSEGV, SIGABRT and a real OOM kill: the new fleetd adopts
//!   the running unit (same PID, not restarted, not moved). Then a system
//!   shutdown (the machine powered off cleanly) hands it to the other
//!   machine at once. One two-machine cluster serves them all, in turn.
//!   (`kill -9` and `systemctl stop fleet` have their own tests in
//!   e2e_agent.rs.)
//! - fleetd (re)started while its machine is cut from etcd, for longer than
//!   systemd's start timeout: never killed by systemd, stops nothing, joins
//!   when etcd is back; `systemctl stop fleet` during such an outage (the
//!   machine never registered) stops nothing either.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testbed::cluster::{Cluster, ClusterOptions, check};
use testbed::util::wait_until;

const HELLO: &str = "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100000\n";

/// What identifies one run of a unit: its main PID and when it last became
/// active.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Run {
    pid: u32,
    active_since: String,
}

async fn run_of(cluster: &Cluster, i: usize, unit: &str) -> anyhow::Result<Run> {
    Ok(Run {
        pid: cluster.main_pid(i, unit).await?,
        active_since: cluster
            .show(i, unit, "ActiveEnterTimestampMonotonic")
            .await?,
    })
}

/// Waits until a fleetd other than `old` runs in member `i`, is active
/// (READY=1) and its machine is registered again (list-machines through it
/// shows it); returns the new PID.
async fn wait_new_fleetd(cluster: &Cluster, i: usize, old: u32) -> anyhow::Result<u32> {
    let me = cluster.members[i].machine.machine_id().to_owned();
    let pid = wait_until(
        &format!("a new, active fleetd in member {i}"),
        Duration::from_secs(60),
        || async {
            let pid = cluster.main_pid(i, "fleet.service").await?;
            let state = cluster.show(i, "fleet.service", "ActiveState").await?;
            Ok((pid, state))
        },
        |(pid, state)| *pid != 0 && *pid != old && state == "active",
    )
    .await?
    .0;
    wait_until(
        &format!("member {i} registered again"),
        Duration::from_secs(30),
        || async { cluster.machine_ids_via(i).await.or_else(|_| Ok(Vec::new())) },
        |ids| ids.contains(&me),
    )
    .await?;
    Ok(pid)
}

/// After `what` in member `i`: `unit` still runs there as `run` (never
/// stopped, restarted or moved), fleet reports it there, and the other
/// members do not run it.
async fn assert_adopted(
    cluster: &Cluster,
    i: usize,
    unit: &str,
    run: &Run,
    what: &str,
) -> anyhow::Result<()> {
    let me = cluster.members[i].machine.machine_id().to_owned();
    wait_until(
        &format!("list-units to show {unit} active on member {i} after {what}"),
        Duration::from_secs(30),
        || cluster.list_units_via(i),
        |rows| {
            rows.iter()
                .any(|(u, a, m)| u == unit && a == "active" && *m == me)
        },
    )
    .await?;
    // Leave a wrong decision (a purge, the engine moving the unit) time to
    // show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = run_of(cluster, i, unit).await?;
    if now != *run {
        bail!(
            "{unit} was stopped or restarted by {what}: {run:?} -> {now:?}\n{}",
            cluster.fleet_journal(i).await
        );
    }
    for (j, running) in cluster.active_by_member(&[unit]).await?.iter().enumerate() {
        if j != i && !running.is_empty() {
            bail!("{unit} also runs on member {j} after {what}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_upgrades_and_crashes_adopt_the_running_unit_and_a_shutdown_hands_it_over()
-> anyhow::Result<()> {
    // agent_ttl 30 s: a machine that leaves sooner was purged, not expired.
    let mut cluster = Cluster::start(ClusterOptions {
        members: 2,
        agent_ttl: "30s".into(),
        ..ClusterOptions::default()
    })
    .await?;
    cluster.start_units(&["hello.service"], HELLO).await?;
    let (placed, i) = wait_until(
        "hello.service running somewhere",
        Duration::from_secs(30),
        || async {
            let rows = cluster.list_units().await?;
            let machine = rows
                .iter()
                .find(|(u, a, _)| u == "hello.service" && a == "active")
                .map(|(_, _, m)| m.clone());
            Ok(machine.and_then(|m| cluster.member_index(&m).map(|i| (m, i))))
        },
        Option::is_some,
    )
    .await?
    .context("checked by wait_until")?;
    let run = run_of(&cluster, i, "hello.service").await?;
    assert_ne!(run.pid, 0);
    println!("hello.service runs on member {i} ({placed}) as {run:?}");

    // systemctl restart fleet.
    let mut fleetd = cluster.main_pid(i, "fleet.service").await?;
    cluster.restart_fleet(i).await?;
    fleetd = wait_new_fleetd(&cluster, i, fleetd).await?;
    assert_adopted(
        &cluster,
        i,
        "hello.service",
        &run,
        "systemctl restart fleet",
    )
    .await?;
    let text = cluster.fleet_messages(i).await?;
    assert!(
        text.contains("systemd is restarting fleet.service (a restart job)"),
        "the journal does not say why the units stay:\n{text}"
    );

    // A binary upgrade, then a restart: the new binary runs and adopts.
    let size = cluster.upgrade_fleetd("\nupgraded\n")?;
    cluster.restart_fleet(i).await?;
    fleetd = wait_new_fleetd(&cluster, i, fleetd).await?;
    let exe = cluster.members[i]
        .machine
        .exec(&["stat", "-L", "-c", "%s", &format!("/proc/{fleetd}/exe")])
        .await?;
    check(&exe, "stat /proc/PID/exe")?;
    assert_eq!(
        String::from_utf8_lossy(&exe.stdout).trim(),
        size.to_string(),
        "the restarted fleetd does not run the upgraded binary"
    );
    assert_adopted(
        &cluster,
        i,
        "hello.service",
        &run,
        "an upgrade and a restart",
    )
    .await?;

    // A plain SIGTERM (no job): Restart=always brings fleetd back.
    cluster.signal_fleet(i, "TERM").await?;
    fleetd = wait_new_fleetd(&cluster, i, fleetd).await?;
    assert_adopted(&cluster, i, "hello.service", &run, "kill -TERM").await?;

    // Crashes.
    for signal in ["SEGV", "ABRT"] {
        cluster.signal_fleet(i, signal).await?;
        // Rust's runtime catches SIGSEGV (to report stack overflows): a
        // signal that is not a fault only resets the handler, so it takes a
        // second one, as a real fault would fault again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cluster.main_pid(i, "fleet.service").await? == fleetd {
            cluster.signal_fleet(i, signal).await?;
        }
        fleetd = wait_new_fleetd(&cluster, i, fleetd).await?;
        assert_adopted(&cluster, i, "hello.service", &run, &format!("SIG{signal}")).await?;
    }

    // A real OOM kill by the kernel.
    cluster.oom_kill_fleet(i).await?;
    fleetd = wait_new_fleetd(&cluster, i, fleetd).await?;
    assert_adopted(&cluster, i, "hello.service", &run, "an OOM kill").await?;
    println!("fleetd is now PID {fleetd} in member {i}");
    // The ballast, if its submission got through before the kill.
    let _ = cluster
        .fleetctl_via(i, &["destroy", "fleet-oom-ballast.service"])
        .await?;

    // A system shutdown: fleetd purges, so the machine leaves and the unit
    // moves at once, well before the 30 s lease would expire.
    let other = 1 - i;
    let other_id = cluster.members[other].machine.machine_id().to_owned();
    let before = Instant::now();
    cluster.power_off_member(i).await;
    let other = cluster
        .member_index(&other_id)
        .context("the other member is gone")?;
    wait_until(
        "hello.service running on the other machine",
        Duration::from_secs(60),
        || async {
            let rows = cluster.list_units_via(other).await?;
            Ok(rows
                .iter()
                .any(|(u, a, m)| u == "hello.service" && a == "active" && *m == other_id))
        },
        |moved| *moved,
    )
    .await?;
    let ids = cluster.machine_ids_via(other).await?;
    let took = before.elapsed();
    println!("after the power-off, hello.service ran on the other machine within {took:?}");
    assert_eq!(ids, vec![other_id], "list-machines after the power-off");
    assert!(
        took < Duration::from_secs(20),
        "the powered-off machine was not purged: it took {took:?} (the lease's 30 s?)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetd_started_during_an_etcd_outage_waits_without_stopping_anything() -> anyhow::Result<()>
{
    // One member: nothing can be moved, only this machine's fleetd is tested.
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let me = cluster.members[0].machine.machine_id().to_owned();
    cluster.start_units(&["hello.service"], HELLO).await?;
    wait_until(
        "hello.service active",
        Duration::from_secs(30),
        || cluster.list_units(),
        |rows| {
            rows.iter()
                .any(|(u, a, m)| u == "hello.service" && a == "active" && *m == me)
        },
    )
    .await?;
    let run = run_of(&cluster, 0, "hello.service").await?;
    let timeout = cluster.fleet_start_timeout(0).await?;
    assert!(
        timeout > Duration::ZERO && timeout < Duration::from_secs(600),
        "unexpected TimeoutStartUSec {timeout:?}"
    );

    // Restarted while cut from etcd: ready at once, and waiting.
    let old = cluster.main_pid(0, "fleet.service").await?;
    cluster.cut(0)?;
    check(
        &cluster.members[0]
            .machine
            .systemctl(&["restart", "--no-block", "fleet.service"])
            .await?,
        "systemctl restart --no-block fleet",
    )?;
    let restarted = Instant::now();
    let fleetd = wait_until(
        "the new fleetd active (READY=1) while etcd is unreachable",
        Duration::from_secs(30),
        || async {
            let pid = cluster.main_pid(0, "fleet.service").await?;
            let state = cluster.show(0, "fleet.service", "ActiveState").await?;
            Ok((pid, state))
        },
        |(pid, state)| *pid != 0 && *pid != old && state == "active",
    )
    .await?
    .0;
    let status = cluster.show(0, "fleet.service", "StatusText").await?;
    assert!(
        status.starts_with("waiting for etcd"),
        "STATUS= does not say what fleetd waits for: {status:?}"
    );
    // Past the start timeout, with a margin.
    let until = timeout + Duration::from_secs(15);
    while restarted.elapsed() < until {
        let now = run_of(&cluster, 0, "hello.service").await?;
        assert_eq!(
            now,
            run,
            "hello.service changed {:?} into the outage:\n{}",
            restarted.elapsed(),
            cluster.fleet_journal(0).await
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(
        cluster.show(0, "fleet.service", "ActiveState").await?,
        "active"
    );
    assert_eq!(
        cluster.main_pid(0, "fleet.service").await?,
        fleetd,
        "systemd killed or restarted fleetd during the outage:\n{}",
        cluster.fleet_journal(0).await
    );
    assert_eq!(cluster.show(0, "fleet.service", "NRestarts").await?, "0");

    // etcd back: the same fleetd joins and adopts the unit.
    cluster.heal(0)?;
    cluster.wait_for_machines(1).await?;
    assert_adopted(&cluster, 0, "hello.service", &run, "an outage at start").await?;
    assert_eq!(cluster.main_pid(0, "fleet.service").await?, fleetd);
    let status = cluster.show(0, "fleet.service", "StatusText").await?;
    assert_eq!(status, format!("registered as machine {me}"));

    // systemctl stop fleet before the machine ever registered (cut again,
    // restarted): that fleetd took charge of nothing and stops nothing.
    cluster.cut(0)?;
    cluster.restart_fleet(0).await?;
    let status = cluster.show(0, "fleet.service", "StatusText").await?;
    assert!(status.starts_with("waiting for etcd"), "{status:?}");
    cluster.stop_fleet(0).await?;
    assert_eq!(cluster.show(0, "fleet.service", "Result").await?, "success");
    assert_eq!(
        run_of(&cluster, 0, "hello.service").await?,
        run,
        "stopping a fleetd that never registered stopped hello.service:\n{}",
        cluster.fleet_journal(0).await
    );
    assert!(
        cluster.members[0]
            .machine
            .root_path("/run/fleet/units/hello.service")
            .exists(),
        "stopping a fleetd that never registered unloaded hello.service"
    );
    cluster.heal(0)?;
    cluster.start_fleet(0).await?;
    cluster.wait_for_machines(1).await?;
    assert_adopted(&cluster, 0, "hello.service", &run, "a stop and start").await?;
    Ok(())
}
