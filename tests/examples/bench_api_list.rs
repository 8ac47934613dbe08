//! Benchmark: listing many units through the API, as `fleetctl
//! list-unit-files` does (every page, 100 units each, following
//! `nextPageToken`).
//!
//! A real etcd is filled with `BENCH_UNITS` units (default 100,000), half of
//! them scheduled with a published state; fleetd's API router is served
//! in-process over that etcd on a unix socket, and the HTTP client lists all
//! units and all unit states. Prints the time of each full listing.
//!
//! ```text
//! cargo run --release -p fleet-tests --example bench_api_list
//! BENCH_UNITS=10000 cargo run --release -p fleet-tests --example bench_api_list
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use fleetd::api::testing::TestServer;
use fleetd::client::{FleetApi, HttpClient};
use fleetd::registry::ScheduleChange;
use fleetd::schema::{MachineId, ScheduledUnit, TargetState, UnitRecord, UnitStateRecord};
use testbed::bench;
use units::{UnitFile, UnitName};

fn unit_text(i: usize) -> String {
    format!("[Unit]\nDescription=bench {i}\n\n[Service]\nExecStart=/bin/sleep {i}\n")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = bench::env_usize("BENCH_UNITS", 100_000);
    let (_etcd, registry) = bench::registry().await?;

    // Fill: units, a schedule for half of them, and their states.
    let started = Instant::now();
    let machine: MachineId = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0".parse()?;
    let fence = {
        let lease = registry.grant_lease(Duration::from_secs(600)).await?;
        registry
            .acquire_leadership(&machine, lease)
            .await?
            .context("no leadership")?
    };
    let state_lease = registry.grant_lease(Duration::from_secs(600)).await?;
    let mut tasks = tokio::task::JoinSet::new();
    let workers = 16;
    for w in 0..workers {
        let registry = registry.clone();
        let fence = fence.clone();
        let machine = machine.clone();
        tasks.spawn(async move {
            let mut changes = Vec::new();
            for i in (w..n).step_by(workers) {
                let name: UnitName = format!("bench-{i:06}.service").parse()?;
                let file = UnitFile::parse(&unit_text(i))?;
                let record = UnitRecord {
                    name: name.clone(),
                    desired_state: TargetState::Launched,
                    options: file.options().to_vec(),
                };
                registry.put_unit(&record).await?;
                if i % 2 == 0 {
                    changes.push(ScheduleChange::Put {
                        unit: name.clone(),
                        machine: machine.clone(),
                        entry: ScheduledUnit {
                            desired_state: TargetState::Launched,
                            hash: file.hash(),
                            global: false,
                        },
                    });
                    registry
                        .publish_state(
                            state_lease,
                            &UnitStateRecord {
                                name,
                                machine_id: machine.clone(),
                                load_state: "loaded".into(),
                                active_state: "active".into(),
                                sub_state: "running".into(),
                                unit_hash: file.hash(),
                                job_state: TargetState::Launched,
                            },
                        )
                        .await?;
                }
            }
            registry.apply_schedule(&fence, &changes).await?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    println!(
        "filled {n} units ({} scheduled) in {:.1?}",
        n / 2,
        started.elapsed()
    );

    // Serve the API in-process on a unix socket.
    let server = TestServer::over(registry.clone(), 100, true).await;
    let client = HttpClient::new(&server.endpoint(), Duration::from_secs(600))?;

    for round in 1..=2 {
        let t = Instant::now();
        let units = client.units().await?;
        let units_time = t.elapsed();
        let t = Instant::now();
        let states = client.unit_states().await?;
        let states_time = t.elapsed();
        println!(
            "round {round}: listed {} units in {units_time:.2?} ({} pages); {} states in {states_time:.2?}",
            units.len(),
            units.len().div_ceil(100),
            states.len()
        );
    }
    server.shutdown().await;
    Ok(())
}
