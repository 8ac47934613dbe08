//! Benchmark: listing 100,000 units of 4 KiB (about 400 MiB, a hundred
//! times the 4 MiB a gRPC client takes in one message) through a real etcd.
//!
//! A real etcd is filled with `BENCH_UNITS` units (default 100,000) of
//! about `BENCH_KIB` KiB each (default 4), in transactions of 64 puts. Then,
//! twice each, it times:
//! - `EtcdKv::list` of `units/` (pages sized by bytes, all at one revision);
//! - `Registry::units` (the same, decoded: what the API and fleetctl read);
//! - a cache's first listing (`Reflector` with the engine's unit decoder,
//!   until its store is ready: what a new engine leader waits for);
//! - the API's `GET /fleet/v1/units`, every page (100 units each), served
//!   in-process over that etcd on a unix socket.
//!
//! ```text
//! cargo run --release -p fleet-tests --example bench_list_big
//! BENCH_UNITS=10000 BENCH_KIB=64 cargo run --release -p fleet-tests --example bench_list_big
//! ```

use std::time::{Duration, Instant};

use fleetd::api::testing::TestServer;
use fleetd::client::{FleetApi, HttpClient};
use fleetd::registry::{CancellationToken, Kv, Op, Reflector, Txn};
use fleetd::schema::{TargetState, UnitRecord};
use testbed::bench;
use units::{UnitFile, UnitName, UnitOption};

/// One unit of about `kib` KiB.
fn record(i: usize, kib: usize) -> anyhow::Result<UnitRecord> {
    let name: UnitName = format!("bench-{i:06}.service").parse()?;
    let text = format!("[Unit]\nDescription=bench {i}\n\n[Service]\nExecStart=/bin/sleep {i}\n");
    let mut options = UnitFile::parse(&text)?.options().to_vec();
    // Each padding option is about 1 KiB of JSON.
    options.extend((0..kib.saturating_sub(1)).map(|j| UnitOption {
        section: "X-Pad".into(),
        name: format!("Pad{j}"),
        value: "x".repeat(980),
    }));
    Ok(UnitRecord {
        name,
        desired_state: TargetState::Launched,
        options,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = bench::env_usize("BENCH_UNITS", 100_000);
    let kib = bench::env_usize("BENCH_KIB", 4);
    let (_etcd, registry) = bench::registry().await?;
    let kv = registry.kv().clone();
    let keys = registry.keys().clone();

    // Fill, 8 writers, 64 puts per transaction.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let workers = 8;
    for w in 0..workers {
        let kv = kv.clone();
        let keys = keys.clone();
        tasks.spawn(async move {
            let mut bytes = 0usize;
            let mine: Vec<usize> = (w..n).step_by(workers).collect();
            for chunk in mine.chunks(64) {
                let mut success = Vec::with_capacity(chunk.len());
                for &i in chunk {
                    let r = record(i, kib)?;
                    let value = serde_json::to_vec(&r)?;
                    bytes += value.len();
                    success.push(Op::Put {
                        key: keys.unit(&r.name),
                        value,
                        lease: None,
                    });
                }
                kv.txn(Txn {
                    success,
                    ..Txn::default()
                })
                .await?;
            }
            anyhow::Ok(bytes)
        });
    }
    let mut bytes = 0;
    while let Some(r) = tasks.join_next().await {
        bytes += r??;
    }
    let mib = bytes as f64 / f64::from(1 << 20);
    println!(
        "filled {n} units of ~{kib} KiB ({mib:.0} MiB of values) in {:.1?}",
        started.elapsed()
    );

    // The API over the same registry, in-process.
    let server = TestServer::over(registry.clone(), 100, true).await;
    let client = HttpClient::new(&server.endpoint(), Duration::from_secs(600))?;

    for round in 1..=2 {
        let t = Instant::now();
        let (kvs, _) = kv.list(&keys.units_prefix()).await?;
        let took = t.elapsed();
        println!(
            "round {round}: EtcdKv::list      {:>7} keys in {took:>9.2?} ({:.0} MiB/s)",
            kvs.len(),
            mib / took.as_secs_f64()
        );
        drop(kvs);

        let t = Instant::now();
        let units = registry.units().await?;
        let took = t.elapsed();
        println!(
            "round {round}: Registry::units   {:>7} units in {took:>8.2?}",
            units.items.len()
        );
        drop(units);

        let t = Instant::now();
        let (reflector, store) = Reflector::new(
            kv.clone(),
            keys.units_prefix(),
            fleetd::engine::decode_unit(keys.clone()),
        );
        let cancel = CancellationToken::new();
        let cache = tokio::spawn(reflector.run(cancel.clone()));
        store.wait_ready().await;
        let took = t.elapsed();
        println!(
            "round {round}: cache first list  {:>7} units in {took:>8.2?}",
            store.snapshot().len()
        );
        cancel.cancel();
        cache.await?;

        let t = Instant::now();
        let listed = client.units().await?;
        let took = t.elapsed();
        println!(
            "round {round}: API list (pages of 100) {} units in {took:.2?}",
            listed.len()
        );
    }
    server.shutdown().await;
    Ok(())
}
