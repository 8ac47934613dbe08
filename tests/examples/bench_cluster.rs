//! Benchmark: a whole simulated cluster in one process, from submission
//! through the API until every unit runs and its state is published.
//!
//! `BENCH_MACHINES` machines (default 100) each run fleetd's own agent side
//! ([`MachineAgent`]: the heart with its own lease, the publisher and the
//! agent, which watches only its own schedule), as the daemon wires it, over
//! an in-memory [`FakeManager`] each. Two of the machines also run an engine
//! (one leads). Everything talks to one real etcd through one shared client
//! (gRPC multiplexes the leases, keep-alives and watches over it). fleetd's
//! API router is served on a TCP port, and `BENCH_UNITS` units (default
//! 1,000) are submitted through it by 32 concurrent clients (`PUT
//! /fleet/v1/units/<name>` with `desiredState` `launched`).
//!
//! Printed, in order:
//! - API PUT latency p50/p99/max (each request on a new connection, as
//!   fleetctl does);
//! - time from the last submission until every unit has a target machine,
//!   and placements per second since the first submission;
//! - time from the last submission until every unit is `active` and its
//!   state published in etcd;
//! - a full listing of units and unit states through the API (pages of 100);
//! - etcd requests (gRPC messages by method) and writes (revisions) per
//!   machine per minute over an idle window of `BENCH_IDLE_SECS` (default
//!   30), and etcd's database size;
//! - the process RSS: before the machines, with the idle machines (per
//!   machine), and with the units running (the engines' share cannot be told
//!   apart from the agents' in one process);
//! - the time until the units of a crashed machine run elsewhere and are
//!   reported (the machine's tasks are aborted, so its lease expires after
//!   `BENCH_AGENT_TTL` seconds, default 5), first for a machine without an
//!   engine, then for the machine that leads the engine (its engine is
//!   aborted too, so the leader lease expires after 5 engine intervals).
//!
//! Machines start all at once, or `BENCH_START_BATCH` at a time, each batch
//! once the one before has registered.
//!
//! ```text
//! cargo run --release -p fleet-tests --example bench_cluster
//! BENCH_MACHINES=1000 BENCH_UNITS=10000 cargo run --release -p fleet-tests --example bench_cluster
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use fleetd::agent::{AgentConfig, PublisherConfig};
use fleetd::api::{self, ApiOptions};
use fleetd::client::{FleetApi, HttpClient, RegistryClient};
use fleetd::daemon::{MachineAgent, Tasks};
use fleetd::engine::{Engine, EngineConfig, EngineSnapshot};
use fleetd::registry::CancellationToken;
use fleetd::registry::{EtcdKv, Kv, Registry};
use fleetd::schema::{Capabilities, MachineId, MachineRecord, TargetState, Unit};
use systemd::FakeManager;
use testbed::bench::{self, machine_id};
use testbed::etcd::Etcd;
use tokio::sync::watch;
use units::{UnitFile, UnitName};

/// Concurrent API clients submitting units.
const CLIENTS: usize = 32;

/// Where the simulated cluster keeps its keys.
const PREFIX: &str = "/bench/";

/// The resident set size of process `pid` ("self" for this one), in MiB.
fn rss_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Raises the open-file limit to its hard maximum (thousands of machines
/// hold timers and channels, and the API clients open sockets).
fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    if let Err(e) = setrlimit(Resource::Nofile, limit) {
        eprintln!("cannot raise the open-file limit: {e}");
    }
}

/// One simulated machine.
struct Machine {
    /// Its ID.
    id: MachineId,
    /// Its heart, publisher and agent tasks; dropping them is a crash.
    tasks: Tasks,
    /// Its engine, on the machines that run one.
    engine: Option<(
        tokio::task::JoinHandle<anyhow::Result<()>>,
        watch::Receiver<EngineSnapshot>,
    )>,
}

/// etcd's counters from its `/metrics` endpoint: gRPC messages received by
/// method, and the MVCC counters and database size.
#[derive(Clone, Debug, Default)]
struct EtcdCounters {
    /// `grpc_server_msg_received_total` by `grpc_method`.
    received: BTreeMap<String, f64>,
    /// `etcd_debugging_mvcc_*_total` by operation (put, range, txn, delete).
    mvcc: BTreeMap<String, f64>,
    /// `etcd_mvcc_db_total_size_in_bytes` (or the debugging name of 3.4).
    db_bytes: f64,
}

async fn etcd_counters(port: u16) -> anyhow::Result<EtcdCounters> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    let mut out = EtcdCounters::default();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if let Some(labels) = key.strip_prefix("grpc_server_msg_received_total{") {
            if let Some(method) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("grpc_method=\""))
                .and_then(|m| m.strip_suffix('"'))
            {
                *out.received.entry(method.to_owned()).or_default() += value;
            }
        } else if let Some(op) = key
            .strip_prefix("etcd_debugging_mvcc_")
            .and_then(|k| k.strip_suffix("_total"))
        {
            if matches!(op, "put" | "range" | "txn" | "delete") {
                out.mvcc.insert(op.to_owned(), value);
            }
        } else if key == "etcd_mvcc_db_total_size_in_bytes"
            || key == "etcd_debugging_mvcc_db_total_size_in_bytes"
        {
            out.db_bytes = value;
        }
    }
    Ok(out)
}

/// The store's current revision (one point read).
async fn revision(registry: &Registry<EtcdKv>) -> anyhow::Result<i64> {
    let (_, rev) = registry
        .kv()
        .get(&format!("{PREFIX}bench-revision"))
        .await?;
    Ok(rev.0)
}

/// The units with an `active` state published, and how many have a target.
async fn progress(registry: &Registry<EtcdKv>) -> anyhow::Result<(usize, usize)> {
    let targets = registry.targets().await?.items.len();
    let active: BTreeSet<UnitName> = registry
        .unit_states()
        .await?
        .items
        .into_iter()
        .filter(|s| s.active_state == "active")
        .map(|s| s.name)
        .collect();
    Ok((targets, active.len()))
}

/// Waits until every unit in `moved` has an `active` state published by a
/// machine other than `victim`; returns how long that took since `since`.
async fn wait_moved(
    registry: &Registry<EtcdKv>,
    moved: &[UnitName],
    victim: &MachineId,
    since: Instant,
) -> anyhow::Result<Duration> {
    loop {
        let mut all = true;
        for unit in moved {
            let states = registry.unit_states_of(unit).await?;
            if !states
                .iter()
                .any(|s| s.machine_id != *victim && s.active_state == "active")
            {
                all = false;
                break;
            }
        }
        if all {
            return Ok(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("the units of {victim} did not run elsewhere within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Crashes machine `victim` (its tasks, and its engine if any, are
/// aborted: nothing is released) and prints how long until its units run
/// elsewhere and are reported.
async fn crash(
    registry: &Registry<EtcdKv>,
    cluster: &mut BTreeMap<MachineId, Machine>,
    victim: &MachineId,
    what: &str,
) -> anyhow::Result<()> {
    let moved: Vec<UnitName> = registry
        .targets()
        .await?
        .items
        .into_iter()
        .filter(|(_, m)| m == victim)
        .map(|(u, _)| u)
        .collect();
    let mut machine = cluster
        .remove(victim)
        .with_context(|| format!("no machine {victim}"))?;
    let t = Instant::now();
    machine.tasks.abort_all();
    if let Some((engine, _)) = machine.engine.take() {
        engine.abort();
    }
    let took = wait_moved(registry, &moved, victim, t).await?;
    println!(
        "{what}: its {} units run elsewhere and are reported {took:.2?} after the crash",
        moved.len()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // The engine's and the agent's futures are large in debug builds: give
    // the worker threads room.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 << 20)
        .build()?
        .block_on(simulate())
}

#[allow(clippy::too_many_lines, clippy::cast_precision_loss)] // one scenario, read top to bottom; figures are printed as floats
async fn simulate() -> anyhow::Result<()> {
    let machines = bench::env_usize("BENCH_MACHINES", 100).max(3);
    let n = bench::env_usize("BENCH_UNITS", 1_000);
    let idle_secs = bench::env_usize("BENCH_IDLE_SECS", 30);
    let agent_ttl = Duration::from_secs(bench::env_usize("BENCH_AGENT_TTL", 5) as u64);
    let start_batch = bench::env_usize("BENCH_START_BATCH", usize::MAX).max(1);
    raise_nofile();
    println!("cluster simulator: {machines} machines, {n} units, agent_ttl {agent_ttl:?}");

    let etcd = Etcd::start().await?;
    let etcd_pid = etcd
        .pid()
        .map_or_else(|| "self".to_owned(), |p| p.to_string());
    let kv = EtcdKv::connect(&[etcd.endpoint()], Duration::from_secs(30)).await?;
    let registry = Registry::new(kv, PREFIX);

    // The API, as the daemon serves it.
    let listener = api::bind_tcp(("127.0.0.1", 0)).await?;
    let addr = listener.tcp_addr().context("a TCP listener")?;
    let (_ready_tx, ready) = watch::channel(true);
    let router = api::router(
        RegistryClient::new(registry.clone()),
        ApiOptions {
            token_limit: 100,
            ready,
        },
    );
    let api_stop = CancellationToken::new();
    let server = tokio::spawn(api::serve(
        router,
        vec![listener],
        api_stop.clone().cancelled_owned(),
    ));
    let endpoint = format!("http://{addr}");

    // The machines.
    let rss_base = rss_mib("self");
    let t = Instant::now();
    let mut cluster = BTreeMap::new();
    let mut ready = Vec::new();
    for i in 0..machines {
        let id = machine_id(i);
        let record = MachineRecord {
            id: id.clone(),
            public_ip: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            metadata: BTreeMap::new(),
            capabilities: Capabilities::default(),
            version: fleetd::VERSION.to_owned(),
            token: format!("bench-{i}"),
        };
        let side = MachineAgent::new(
            registry.clone(),
            Arc::new(FakeManager::new()),
            record,
            agent_ttl,
            AgentConfig::default(),
            PublisherConfig::from_agent_ttl(agent_ttl),
        );
        ready.push(side.ready());
        let mut tasks = Tasks::new();
        side.spawn(&mut tasks, &CancellationToken::new());
        cluster.insert(
            id.clone(),
            Machine {
                id,
                tasks,
                engine: None,
            },
        );
        if ready.len() >= start_batch {
            // A booting cluster does not start every machine at once.
            for r in &mut ready {
                r.wait_for(|r| *r).await?;
            }
            ready.clear();
        }
    }
    for r in &mut ready {
        r.wait_for(|r| *r).await?;
    }
    drop(ready);
    println!("{machines} machines registered in {:.2?}", t.elapsed());
    // Let the agents' first passes and watches settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_machines = rss_mib("self");
    println!(
        "RSS: {rss_base:.0} MiB before the machines, {rss_machines:.0} MiB with them idle ({:.1} KiB per machine)",
        (rss_machines - rss_base) * 1024.0 / machines as f64
    );

    // Two engines, on machines 0 and 1.
    for i in 0..2 {
        let id = machine_id(i);
        let engine = Engine::new(registry.clone(), id.clone(), EngineConfig::default());
        let state = engine.subscribe();
        let handle = tokio::spawn(engine.run(CancellationToken::new()));
        if let Some(m) = cluster.get_mut(&id) {
            m.engine = Some((handle, state));
        }
    }

    // Submission through the API by 32 clients.
    let texts: Vec<String> = (0..n)
        .map(|i| {
            format!("[Unit]\nDescription=sim {i}\n\n[Service]\nExecStart=/bin/sleep infinity\n")
        })
        .collect();
    let texts = Arc::new(texts);
    let next = Arc::new(AtomicUsize::new(0));
    let first = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (texts, next) = (texts.clone(), next.clone());
        let client = HttpClient::new(&endpoint, Duration::from_secs(30))?;
        clients.spawn(async move {
            let (mut latencies, mut failures) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(text) = texts.get(i) else { break };
                let file = UnitFile::parse(text)?;
                let unit = Unit {
                    name: format!("sim-{i:07}.service"),
                    desired_state: Some(TargetState::Launched),
                    options: file.options().iter().cloned().map(Into::into).collect(),
                    ..Unit::default()
                };
                let mut attempt = 0;
                loop {
                    let t = Instant::now();
                    match client.create_unit(&unit).await {
                        Ok(()) => {
                            latencies.push(t.elapsed());
                            break;
                        }
                        // Counted and retried, as a user would.
                        Err(e) if attempt < 5 => {
                            attempt += 1;
                            failures.push(format!("{e:#}"));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            anyhow::Ok((latencies, failures))
        });
    }
    let mut latencies = Vec::with_capacity(n);
    let mut failures = Vec::new();
    while let Some(r) = clients.join_next().await {
        let (l, f) = r??;
        latencies.extend(l);
        failures.extend(f);
    }
    if let Some(first_failure) = failures.first() {
        println!(
            "{} PUTs failed and were retried; the first: {first_failure}",
            failures.len()
        );
    }
    let last = Instant::now();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "submitted {n} units in {:.2?} with {CLIENTS} clients: PUT p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        last - first,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );

    // Convergence.
    let mut scheduled_at = None;
    loop {
        let (targets, active) = progress(&registry).await?;
        if targets == n && scheduled_at.is_none() {
            scheduled_at = Some(Instant::now());
        }
        if active == n {
            break;
        }
        if last.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("after 30 minutes: {targets} of {n} units scheduled, {active} active");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reported = last.elapsed();
    let scheduled_at = scheduled_at.unwrap_or_else(Instant::now);
    println!(
        "all {n} units scheduled {:.2?} after the last submission ({:.0} placements/s since the first)",
        scheduled_at.saturating_duration_since(last),
        n as f64 / (scheduled_at - first).as_secs_f64()
    );
    println!(
        "all {n} units launched and their states published {reported:.2?} after the last submission"
    );
    let rss_units = rss_mib("self");
    println!(
        "RSS with the units running: {rss_units:.0} MiB ({:.0} MiB more than with idle machines); etcd RSS {:.0} MiB",
        rss_units - rss_machines,
        rss_mib(&etcd_pid)
    );

    // Full listings through the API.
    let client = HttpClient::new(&endpoint, Duration::from_secs(30))?;
    let t = Instant::now();
    let listed = client.units().await?.len();
    let units_time = t.elapsed();
    let t = Instant::now();
    let states = client.unit_states().await?.len();
    println!(
        "listed {listed} units in {units_time:.2?} and {states} unit states in {:.2?} through the API",
        t.elapsed()
    );

    // Idle cost.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (before, rev_before) = (
        etcd_counters(etcd.port()).await?,
        revision(&registry).await?,
    );
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_secs as u64)).await;
    let (after, rev_after) = (
        etcd_counters(etcd.port()).await?,
        revision(&registry).await?,
    );
    let per = |delta: f64| delta / machines as f64 / (t.elapsed().as_secs_f64() / 60.0);
    let mut requests: Vec<String> = after
        .received
        .iter()
        .map(|(m, v)| (m, v - before.received.get(m).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .map(|(m, d)| format!("{m} {:.2}", per(d)))
        .collect();
    requests.sort();
    let mvcc: Vec<String> = after
        .mvcc
        .iter()
        .map(|(op, v)| {
            format!(
                "{op} {:.3}",
                per(v - before.mvcc.get(op).copied().unwrap_or(0.0))
            )
        })
        .collect();
    println!(
        "idle over {:.0?}, per machine per minute: etcd requests {{{}}}; writes (revisions) {:.3}; mvcc {{{}}}",
        t.elapsed(),
        requests.join(", "),
        per((rev_after - rev_before) as f64),
        mvcc.join(", ")
    );
    println!(
        "etcd database: {:.1} MiB",
        after.db_bytes / (1024.0 * 1024.0)
    );

    // Losing a machine that runs no engine, then the engine leader's.
    let targets = registry.targets().await?.items;
    let victim = targets
        .iter()
        .map(|(_, m)| m)
        .find(|m| cluster.get(*m).is_some_and(|c| c.engine.is_none()))
        .context("no machine without an engine holds units")?
        .clone();
    crash(
        &registry,
        &mut cluster,
        &victim,
        &format!("lost machine {victim}"),
    )
    .await?;
    let leader = cluster
        .values()
        .find(|m| m.engine.as_ref().is_some_and(|(_, s)| s.borrow().leader))
        .map(|m| m.id.clone())
        .context("no engine leads")?;
    crash(
        &registry,
        &mut cluster,
        &leader,
        &format!("lost machine {leader}, the engine leader"),
    )
    .await?;

    api_stop.cancel();
    let _ = server.await;
    for (_, mut m) in cluster {
        m.tasks.abort_all();
        if let Some((engine, _)) = m.engine {
            engine.abort();
        }
    }
    Ok(())
}
