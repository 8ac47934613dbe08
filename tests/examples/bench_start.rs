//! Benchmark: fleetctl's own cost of `fleetctl start --no-block` of many new
//! units, without machines or systemd.
//!
//! fleetd's API router is served in-process over a real etcd on a unix
//! socket (no engine, no agent: nothing else loads etcd), and the built
//! `fleetctl` starts `BENCH_UNITS` new units (default 1,000) from files in
//! a temporary directory, `BENCH_RUNS` times (default 3), each run with
//! units of its own. Prints each run's time with the load average. The
//! requests fleetctl sends are one listing of the registry (one page per
//! 100 units already there) and one PUT per unit; fleetctl's test
//! `start_of_many_units_sends_one_put_per_unit` counts them.
//!
//! ```text
//! cargo build -p fleetctl && cargo run -p fleet-tests --example bench_start
//! cargo build --release -p fleetctl && cargo run --release -p fleet-tests --example bench_start
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use fleetd::api::testing::TestServer;
use fleetd::client::{FleetApi, HttpClient};
use fleetd::schema::TargetState;
use testbed::bench;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = bench::env_usize("BENCH_UNITS", 1_000);
    let runs = bench::env_usize("BENCH_RUNS", 3);
    let fleetctl = testbed::cluster::built_binary("fleetctl")?;
    let (_etcd, registry) = bench::registry().await?;
    let server = TestServer::over(registry, 100, true).await;
    let endpoint = format!("--endpoint={}", server.endpoint());
    let client = HttpClient::new(&server.endpoint(), Duration::from_secs(60))?;
    println!("fleetctl {}", fleetctl.display());

    for run in 1..=runs {
        let dir = tempfile::tempdir()?;
        let names: Vec<String> = (0..n)
            .map(|i| {
                let name = format!("start-{run}-{i:05}.service");
                let text = format!("[Service]\nExecStart=/bin/sleep {i}\n");
                std::fs::write(dir.path().join(&name), text).map(|()| name)
            })
            .collect::<Result<_, _>>()?;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let started = Instant::now();
        let out = tokio::process::Command::new(&fleetctl)
            .current_dir(dir.path())
            .env("RUST_LOG", "off")
            .arg(&endpoint)
            .args(["start", "--no-block"])
            .args(&names)
            .output()
            .await
            .context("cannot run fleetctl")?;
        let took = started.elapsed();
        anyhow::ensure!(
            out.status.success(),
            "fleetctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let launched = client
            .units()
            .await?
            .iter()
            .filter(|u| u.name.starts_with(&format!("start-{run}-")))
            .filter(|u| u.desired_state == Some(TargetState::Launched))
            .count();
        anyhow::ensure!(launched == n, "{launched} of {n} units launched");
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!(
            "run {run}: start --no-block of {n} new units in {took:.2?} (load average before: {})",
            load.join(" ")
        );
    }
    server.shutdown().await;
    Ok(())
}
