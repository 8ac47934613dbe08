//! Slow and hanging units on a real systemd machine do not hold up the other
//! units of that machine: the agent runs systemd jobs concurrently, bounded,
//! and a job that takes long is waited for without holding up the rest.
//!
//! On one machine, with the shipped `fleet.service`:
//! - more hanging `Type=oneshot` units (`ExecStart=/bin/sleep infinity`, their
//!   start jobs never end) than the agent runs operations at once;
//! - a unit whose stop takes five minutes (`ExecStop=/bin/sleep 300`), being
//!   stopped;
//! - beside them, ordinary units started afterwards must become active at
//!   once, and a hanging unit, once destroyed, is stopped (the stop replaces
//!   its start job) while the others still hang.

use std::time::Duration;

use anyhow::bail;
use testbed::cluster::{Cluster, ClusterOptions, check, unit_files};
use testbed::util::wait_until;

/// More than the agent's bound on operations in flight (8).
const HANGING: usize = 10;

const HANG: &str = "[Unit]\nDescription=A oneshot that never exits\n\n[Service]\nType=oneshot\nExecStart=/bin/sleep infinity\nTimeoutStartSec=infinity\n";
const SLOW_STOP: &str = "[Unit]\nDescription=A unit whose stop takes minutes\n\n[Service]\nExecStart=/bin/sleep 100000\nExecStop=/bin/sleep 300\nTimeoutStopSec=600\n";
const WEB: &str = "[Unit]\nDescription=Web %i\n\n[Service]\nExecStart=/bin/sleep 100000\n";

async fn states(cluster: &Cluster, units: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(units.len());
    for u in units {
        out.push(cluster.show(0, u, "ActiveState").await?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_and_slow_units_do_not_hold_up_the_others() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        members: 1,
        ..ClusterOptions::default()
    })
    .await?;

    let hang_names: Vec<String> = (1..=HANGING).map(|i| format!("hang{i}.service")).collect();
    let mut files: Vec<(&str, &str)> = hang_names.iter().map(|n| (n.as_str(), HANG)).collect();
    files.push(("slowstop.service", SLOW_STOP));
    files.push(("web@.service", WEB));
    let dir = unit_files(&files)?;

    // The unit whose stop is slow: running first.
    check(
        &cluster
            .fleetctl_files(0, &["start"], dir.path(), &["slowstop.service"])
            .await?,
        "fleetctl start slowstop.service",
    )?;
    wait_until(
        "slowstop.service active",
        Duration::from_secs(30),
        || cluster.show(0, "slowstop.service", "ActiveState"),
        |s| s == "active",
    )
    .await?;

    // The hanging oneshots: their start jobs never end.
    let hang_refs: Vec<&str> = hang_names.iter().map(String::as_str).collect();
    check(
        &cluster
            .fleetctl_files(0, &["start", "--no-block"], dir.path(), &hang_refs)
            .await?,
        "fleetctl start --no-block hang*.service",
    )?;
    wait_until(
        "every hanging oneshot activating in systemd",
        Duration::from_secs(60),
        || states(&cluster, &hang_names),
        |s| s.iter().all(|s| s == "activating"),
    )
    .await?;

    // The slow stop begins.
    check(
        &cluster
            .fleetctl(&["stop", "--no-block", "slowstop.service"])
            .await?,
        "fleetctl stop --no-block slowstop.service",
    )?;
    wait_until(
        "slowstop.service deactivating",
        Duration::from_secs(30),
        || cluster.show(0, "slowstop.service", "ActiveState"),
        |s| s == "deactivating",
    )
    .await?;

    // Ordinary units started now run at once, beside all of that.
    let webs = ["web@1.service", "web@2.service", "web@3.service"];
    let paths: Vec<String> = webs
        .iter()
        .map(|w| dir.path().join(w).to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["start", "--no-block"];
    args.extend(paths.iter().map(String::as_str));
    check(&cluster.fleetctl(&args).await?, "fleetctl start web@{1..3}")?;
    wait_until(
        "web@{1..3} active in systemd while 10 oneshots hang and a stop takes minutes",
        Duration::from_secs(30),
        || cluster.members[0].active_units(&webs),
        |a| a.len() == webs.len(),
    )
    .await?;
    // fleet reports them too.
    wait_until(
        "list-units to show web@{1..3} active",
        Duration::from_secs(30),
        || cluster.list_units(),
        |rows| {
            webs.iter()
                .all(|w| rows.iter().any(|(u, a, _)| u == w && a == "active"))
        },
    )
    .await?;

    // The slow ones are still what they were: nothing killed them to make
    // room.
    let still = states(&cluster, &hang_names).await?;
    if still.iter().any(|s| s != "activating") {
        bail!("a hanging oneshot changed state on its own: {still:?}");
    }
    let slow = cluster.show(0, "slowstop.service", "ActiveState").await?;
    if slow != "deactivating" {
        bail!("slowstop.service is {slow}, expected its stop still running");
    }

    // Destroying one hanging unit stops it (its stop replaces the start job
    // that never ends), while the others keep hanging.
    check(
        &cluster.fleetctl(&["destroy", "hang1.service"]).await?,
        "fleetctl destroy hang1.service",
    )?;
    wait_until(
        "hang1.service stopped after destroy",
        Duration::from_secs(30),
        || cluster.show(0, "hang1.service", "ActiveState"),
        |s| s == "inactive" || s == "failed",
    )
    .await?;
    let rest = states(&cluster, &hang_names[1..]).await?;
    if rest.iter().any(|s| s != "activating") {
        bail!("destroying hang1 disturbed the other hanging units: {rest:?}");
    }

    // And yet another ordinary unit still starts at once.
    let web4 = dir.path().join("web@4.service");
    check(
        &cluster
            .fleetctl(&["start", "--no-block", &web4.to_string_lossy()])
            .await?,
        "fleetctl start web@4",
    )?;
    wait_until(
        "web@4.service active",
        Duration::from_secs(30),
        || cluster.members[0].active_units(&["web@4.service"]),
        |a| a.len() == 1,
    )
    .await?;
    Ok(())
}
