//! Benchmark: the engine scheduling a large cluster through a real etcd.
//!
//! `BENCH_MACHINES` machines (default 1,000) register their presence, each on
//! its own lease, as fleetd's heart does; `BENCH_UNITS` units (default
//! 10,000) are created with desired state `launched`; then one engine (the
//! real loop: leadership, watched cache, decide, fenced writes) runs
//! in-process and the time until every unit has a target machine is printed,
//! and then the time to move the units of a machine that disappears.
//! No systemd is involved: this measures the engine and etcd.
//!
//! ```text
//! cargo run --release -p fleet-tests --example bench_schedule
//! BENCH_MACHINES=10000 BENCH_UNITS=100000 cargo run --release -p fleet-tests --example bench_schedule
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleetd::engine::{Engine, EngineConfig};
use fleetd::registry::CancellationToken;
use fleetd::schema::{Capabilities, MachineId, MachineRecord, TargetState, UnitRecord};
use testbed::bench::{self, machine_id};
use testbed::util::wait_until;
use units::{UnitFile, UnitName};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let machines = bench::env_usize("BENCH_MACHINES", 1_000);
    let n = bench::env_usize("BENCH_UNITS", 10_000);
    let (_etcd, registry) = bench::registry().await?;

    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let workers = 16;
    for w in 0..workers {
        let registry = registry.clone();
        tasks.spawn(async move {
            let mut leases = BTreeMap::new();
            for i in (w..machines).step_by(workers) {
                let lease = registry.grant_lease(Duration::from_secs(3600)).await?;
                let record = MachineRecord {
                    id: machine_id(i),
                    public_ip: String::new(),
                    metadata: BTreeMap::from([("rack".to_owned(), format!("r{}", i % 10))]),
                    capabilities: Capabilities::default(),
                    version: fleetd::VERSION.to_owned(),
                    token: format!("bench-{i}"),
                };
                registry.register_machine(&record, lease).await?;
                leases.insert(i, lease);
            }
            for i in (w..n).step_by(workers) {
                let name: UnitName = format!("app-{i:06}.service").parse()?;
                let text = if i % 10 == 0 {
                    // Some units carry constraints.
                    format!(
                        "[Service]\nExecStart=/bin/sleep {i}\n\n[X-Fleet]\nMachineMetadata=rack=r{}\n",
                        i % 10
                    )
                } else {
                    format!("[Service]\nExecStart=/bin/sleep {i}\n")
                };
                let file = UnitFile::parse(&text)?;
                registry
                    .put_unit(&UnitRecord {
                        name,
                        desired_state: TargetState::Launched,
                        options: file.options().to_vec(),
                    })
                    .await?;
            }
            anyhow::Ok(leases)
        });
    }
    let mut leases = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        leases.extend(r??);
    }
    println!(
        "registered {machines} machines and created {n} units in {:.1?}",
        t.elapsed()
    );

    let cancel = CancellationToken::new();
    let engine = Engine::new(
        registry.clone(),
        machine_id(0),
        EngineConfig {
            reconcile_interval: Duration::from_secs(2),
            ..EngineConfig::default()
        },
    );
    let t = Instant::now();
    let engine_task = tokio::spawn(engine.run(cancel.clone()));
    wait_until(
        &format!("all {n} units scheduled"),
        Duration::from_secs(600),
        || async { Ok(registry.targets().await?.items.len()) },
        |placed| *placed == n,
    )
    .await?;
    println!(
        "all {n} units scheduled {:.2?} after the engine started",
        t.elapsed()
    );

    // Lose a machine that holds units: its lease is revoked (as on expiry).
    let targets = registry.targets().await?.items;
    let victim = targets[0].1.clone();
    let moved: Vec<UnitName> = targets
        .iter()
        .filter(|(_, m)| *m == victim)
        .map(|(u, _)| u.clone())
        .collect();
    let index = (0..machines)
        .find(|i| machine_id(*i) == victim)
        .ok_or_else(|| anyhow::anyhow!("unknown machine {victim}"))?;
    let t = Instant::now();
    registry.revoke_lease(leases[&index]).await?;
    wait_until(
        "the units of the lost machine to move",
        Duration::from_secs(120),
        || async {
            let now: BTreeMap<UnitName, MachineId> =
                registry.targets().await?.items.into_iter().collect();
            // How many of them are not yet on another machine.
            Ok(moved
                .iter()
                .filter(|u| now.get(*u).is_none_or(|m| *m == victim))
                .count())
        },
        |left| *left == 0,
    )
    .await?;
    println!(
        "{} units of a lost machine rescheduled {:.2?} after its lease ended",
        moved.len(),
        t.elapsed()
    );
    cancel.cancel();
    let _ = engine_task.await;
    Ok(())
}
