//! Benchmark: one real systemd machine running fleetd (as in `e2e_agent`),
//! 1,000 units started through fleetctl.
//!
//! Prints:
//! - how long `fleetctl start --no-block` of all of them takes (creating
//!   the units and setting them launched through the API), then how long
//!   until systemd runs all of them, and until fleet reports all of them
//!   active (list-units);
//! - fleetd's CPU time during that, and over 60 s of idleness afterwards
//!   (utime + stime from `/proc/<pid>/stat` inside the machine).
//!
//! Run (as root, with etcd and systemd-nspawn installed; the binaries of the
//! same profile must be built: the example uses the `fleetd` and `fleetctl`
//! next to it, so a `--release` run uses release binaries):
//! ```text
//! cargo build -p fleetd -p fleetctl && cargo run -p fleet-tests --example bench_agent
//! cargo build --release -p fleetd -p fleetctl && cargo run --release -p fleet-tests --example bench_agent
//! ```
//! `BENCH_UNITS` and `BENCH_IDLE_SECS` change the unit count and the idle
//! period.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testbed::cluster::{Cluster, ClusterOptions, check};
use testbed::util::wait_until;

/// A unit file for unit `i`.
fn unit(i: usize) -> String {
    format!("[Unit]\nDescription=bench {i}\n\n[Service]\nExecStart=/bin/sleep 1000000\n")
}

/// fleetd's CPU time so far (utime + stime), read inside the machine.
async fn fleetd_cpu(cluster: &Cluster, ticks_per_second: f64) -> anyhow::Result<Duration> {
    let pid = cluster.main_pid(0, "fleet.service").await?;
    let out = cluster.members[0]
        .machine
        .exec(&["cat", &format!("/proc/{pid}/stat")])
        .await?;
    check(&out, "cat /proc/<fleetd>/stat")?;
    let stat = String::from_utf8_lossy(&out.stdout).into_owned();
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("bad stat: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        let v: u64 = fields
            .get(i)
            .with_context(|| format!("short stat: {stat}"))?
            .parse()
            .with_context(|| format!("bad stat: {stat}"))?;
        // Tick counts stay far below 2^52.
        #[allow(clippy::cast_precision_loss)]
        Ok(v as f64)
    };
    // `rest` starts at field 3 (state), so utime (14) is index 11.
    let ticks = tick(11)? + tick(12)?;
    Ok(Duration::from_secs_f64(ticks / ticks_per_second))
}

/// How many `bench-*` units systemd in member 0 runs.
async fn running(cluster: &Cluster) -> anyhow::Result<usize> {
    let out = cluster.members[0]
        .machine
        .systemctl(&[
            "list-units",
            "--no-legend",
            "--plain",
            "--state=running",
            "bench-*",
        ])
        .await?;
    check(&out, "systemctl list-units")?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// How many `bench-*` units fleet reports active.
async fn reported(cluster: &Cluster) -> anyhow::Result<usize> {
    Ok(cluster
        .list_units()
        .await?
        .iter()
        .filter(|(unit, active, _)| unit.starts_with("bench-") && active == "active")
        .count())
}

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n = usize::try_from(env_number("BENCH_UNITS", 1000)?)?;
    let idle = Duration::from_secs(env_number("BENCH_IDLE_SECS", 60)?);
    // fleet's defaults, so the idle figure is the production one.
    let cluster = Cluster::start(ClusterOptions {
        members: 1,
        agent_ttl: "30s".into(),
        reconcile_interval: 2.0,
        extra_conf: String::new(),
    })
    .await?;
    let out = cluster.members[0]
        .machine
        .exec(&["getconf", "CLK_TCK"])
        .await?;
    check(&out, "getconf CLK_TCK")?;
    let ticks: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("bad CLK_TCK")?;

    let dir = tempfile::tempdir()?;
    let mut paths = Vec::new();
    for i in 0..n {
        let path = dir.path().join(format!("bench-{i:04}.service"));
        std::fs::write(&path, unit(i))?;
        paths.push(path.to_string_lossy().into_owned());
    }
    let mut args = vec!["start", "--no-block"];
    args.extend(paths.iter().map(String::as_str));

    let cpu_before = fleetd_cpu(&cluster, ticks).await?;
    let started = Instant::now();
    let out = cluster.fleetctl(&args).await?;
    if !out.status.success() {
        bail!(
            "fleetctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.fleet_journal(0).await
        );
    }
    let submitted = started.elapsed();
    wait_until(
        &format!("{n} bench units running in systemd"),
        Duration::from_secs(900),
        || running(&cluster),
        |c| *c == n,
    )
    .await?;
    let all_running = started.elapsed();
    wait_until(
        &format!("{n} bench units reported active by fleet"),
        Duration::from_secs(900),
        || reported(&cluster),
        |c| *c == n,
    )
    .await?;
    let all_reported = started.elapsed();
    let cpu_loaded = fleetd_cpu(&cluster, ticks).await?;

    // Let the last writes settle, then measure idleness.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_before = fleetd_cpu(&cluster, ticks).await?;
    let idle_started = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_after = fleetd_cpu(&cluster, ticks).await?;
    let idle_wall = idle_started.elapsed();
    let idle_cpu = idle_after.saturating_sub(idle_before);
    let still = running(&cluster).await?;

    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("bench_agent: {n} units on one machine, fleetd {profile} build");
    println!("  fleetctl start --no-block (create + launch through the API): {submitted:.2?}");
    println!("  all running in systemd:                                    {all_running:.2?}");
    println!("  all reported active by fleet (list-units):                 {all_reported:.2?}");
    println!(
        "  fleetd CPU time from submit to all reported:               {:.2?}",
        cpu_loaded.saturating_sub(cpu_before)
    );
    println!(
        "  fleetd CPU time over {idle_wall:.1?} idle:                       {idle_cpu:.3?} ({:.2} % of one core)",
        idle_cpu.as_secs_f64() / idle_wall.as_secs_f64() * 100.0
    );
    if still != n {
        bail!("only {still} of {n} units still running after the idle period");
    }
    Ok(())
}
