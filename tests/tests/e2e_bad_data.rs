//! End to end: data in etcd that fleet did not write, and listings larger
//! than a gRPC message, on a real cluster (two systemd machines running the
//! shipped fleet units, one real etcd).
//!
//! One cluster, two phases:
//! 1. While a unit runs, garbage is written with an etcd client into every
//!    directory of the layout (bad JSON, JSON of the wrong types, bytes that
//!    are not UTF-8, keys that are not UTF-8), and the engine leader key is
//!    overwritten as `etcdctl put` would (no lease), then with garbage. The
//!    unit keeps running (same main PID), every API listing answers 200
//!    with the valid entries, an engine leads again (on a lease) and still
//!    schedules a new unit, and `/metrics` counts the skipped values by
//!    kind.
//! 2. Six units of ~900 KiB (each within etcd's 1.5 MiB request limit,
//!    together beyond the 4 MiB a gRPC client takes by default) are stored:
//!    the API lists them (200), and after both fleetds restart (a fresh
//!    relist by every cache) the engine schedules them all and they run.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use fleetd::registry::{EtcdKv, Kv, Registry};
use fleetd::schema::{TargetState, UnitRecord};
use testbed::cluster::{Cluster, ClusterOptions, check};
use testbed::util::{require_tool, wait_until};

const PREFIX: &str = "/_coreos.com/fleet/";

const SLEEPER: &str = "[Unit]\nDescription=Sleeper\n\n[Service]\nExecStart=/bin/sleep 100000\n";

/// How long scheduling and starting a unit may take.
const CONVERGE: Duration = Duration::from_secs(60);

/// `curl -sS` from the host: the status code and the body.
async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let out = tokio::process::Command::new(require_tool("curl")?)
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", url])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("cannot run curl")?;
    check(&out, &format!("curl {url}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text
        .rsplit_once('\n')
        .with_context(|| format!("curl {url}: no status in {text:?}"))?;
    let code = code
        .trim()
        .parse()
        .with_context(|| format!("curl {url}: status {code:?}"))?;
    Ok((code, body.to_owned()))
}

/// The unit names an API `GET /fleet/v1/units` lists (one page).
async fn api_units(endpoint: &str) -> anyhow::Result<Vec<String>> {
    let (code, body) = get(&format!("{endpoint}/fleet/v1/units")).await?;
    ensure!(code == 200, "GET /fleet/v1/units answered {code}: {body}");
    let doc: serde_json::Value = serde_json::from_str(&body).context("units page is not JSON")?;
    ensure!(
        doc.get("nextPageToken").is_none(),
        "more than one page: {:.200}",
        body
    );
    Ok(doc["units"]
        .as_array()
        .map(|units| {
            units
                .iter()
                .filter_map(|u| u["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// `fleet_registry_invalid_values_total` by kind, summed over the members.
async fn invalid_counts(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut counts = BTreeMap::new();
    for m in &cluster.members {
        let (code, text) = get(&format!("{}/metrics", m.endpoint())).await?;
        ensure!(code == 200, "GET /metrics answered {code}");
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("fleet_registry_invalid_values_total{kind=\"")
            else {
                continue;
            };
            let Some((kind, value)) = rest.split_once("\"} ") else {
                continue;
            };
            let value: f64 = value.trim().parse().unwrap_or(0.0);
            *counts.entry(kind.to_owned()).or_default() += value;
        }
    }
    Ok(counts)
}

/// Put raw bytes under a key of raw bytes, as `etcdctl put` would.
async fn put_raw(kv: &EtcdKv, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
    kv.client()
        .kv_client()
        .put(key.to_vec(), value.to_vec(), None)
        .await
        .with_context(|| format!("etcd put {}", String::from_utf8_lossy(key)))?;
    Ok(())
}

/// Waits until every one of `units` is active in some member's systemd.
async fn wait_running(cluster: &Cluster, units: &[&str]) -> anyhow::Result<Vec<Vec<String>>> {
    wait_until(
        &format!("{} units active in systemd", units.len()),
        CONVERGE,
        || cluster.active_by_member(units),
        |by_member| by_member.iter().map(Vec::len).sum::<usize>() == units.len(),
    )
    .await
}

/// A unit of about `kib` KiB: a sleeper with `kib` padding lines of 1000
/// characters in an `[X-Pad]` section, which systemd ignores.
fn big_unit(name: &str, kib: usize) -> anyhow::Result<UnitRecord> {
    let mut options = units::UnitFile::parse(SLEEPER)
        .context("the sleeper unit parses")?
        .options()
        .to_vec();
    options.extend((0..kib).map(|i| units::UnitOption {
        section: "X-Pad".into(),
        name: format!("Pad{i}"),
        value: "x".repeat(1000),
    }));
    Ok(UnitRecord {
        name: name.parse().context("test unit names are valid")?,
        desired_state: TargetState::Launched,
        options,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_values_and_huge_listings_stop_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        members: 2,
        ..ClusterOptions::default()
    })
    .await?;
    let result = scenario(&cluster).await;
    if result.is_err() {
        for i in 0..cluster.members.len() {
            eprintln!(
                "--- journal of member {i} ---\n{}",
                cluster.fleet_journal(i).await
            );
        }
    }
    result
}

async fn scenario(cluster: &Cluster) -> anyhow::Result<()> {
    let kv = EtcdKv::connect(&[cluster.etcd.endpoint()], Duration::from_secs(5)).await?;
    let endpoint = cluster.members[0].endpoint();

    // --- Phase 1: garbage beside a running unit ---------------------------
    cluster
        .start_units_no_block(&["hello.service"], SLEEPER)
        .await?;
    let placed = wait_running(cluster, &["hello.service"]).await?;
    let host = placed
        .iter()
        .position(|units| !units.is_empty())
        .context("hello.service runs nowhere")?;
    let host_id = cluster.members[host].machine.machine_id().to_owned();
    let pid = cluster.members[host].unit_main_pid("hello.service").await?;
    ensure!(pid > 0, "hello.service has no main PID");
    let before = invalid_counts(cluster).await?;

    let p = PREFIX;
    let mut bad: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (
            format!("{p}units/garbage.service").into(),
            b"{not json".to_vec(),
        ),
        (
            format!("{p}units/types.service").into(),
            br#"{"name":5,"desiredState":[],"options":{}}"#.to_vec(),
        ),
        (
            format!("{p}units/bytes.service").into(),
            b"\xff\xfe".to_vec(),
        ),
        (format!("{p}machines/bogus").into(), b"{\"ID\":17}".to_vec()),
        (format!("{p}machines/junk").into(), b"junk".to_vec()),
        (
            format!("{p}metadata/{host_id}/bytes").into(),
            b"\xc3\x28".to_vec(),
        ),
        (format!("{p}targets/ghost.service").into(), b"\xff".to_vec()),
        (
            format!("{p}schedule/{host_id}/ghost.service").into(),
            br#"{"desiredState":"exploded"}"#.to_vec(),
        ),
        (format!("{p}schedule/{host_id}/junk").into(), b"[]".to_vec()),
        (
            format!("{p}states/hello.service/bogus").into(),
            b"garbage".to_vec(),
        ),
    ];
    let mut non_utf8_key = format!("{p}units/").into_bytes();
    non_utf8_key.extend_from_slice(b"\x80.service");
    bad.push((non_utf8_key, b"{}".to_vec()));
    for (key, value) in &bad {
        put_raw(&kv, key, value).await?;
    }

    // The leader key overwritten without a lease, then with garbage: an
    // engine must lead again, on a lease.
    let leader_key = format!("{p}engine/leader");
    for value in [&b"bogus-machine"[..], b"{garbage"] {
        put_raw(&kv, leader_key.as_bytes(), value).await?;
        let leader = wait_until(
            "an engine to lead again, on a lease",
            CONVERGE,
            || async { Ok(kv.get(&leader_key).await?.0) },
            |found| {
                found.as_ref().is_some_and(|kv| {
                    kv.lease.is_some()
                        && cluster
                            .member_index(&String::from_utf8_lossy(&kv.value))
                            .is_some()
                })
            },
        )
        .await?;
        ensure!(leader.is_some());
    }

    // The engine still schedules: a new unit runs.
    cluster
        .start_units_no_block(&["after.service"], SLEEPER)
        .await?;
    wait_running(cluster, &["hello.service", "after.service"]).await?;

    // The running unit was never stopped or restarted.
    ensure!(
        cluster.members[host].unit_main_pid("hello.service").await? == pid,
        "hello.service was restarted"
    );
    // Every listing answers 200 with the valid entries.
    let mut listed = api_units(&endpoint).await?;
    listed.sort();
    ensure!(
        listed == ["after.service", "hello.service"],
        "API units: {listed:?}"
    );
    for path in ["/fleet/v1/machines", "/fleet/v1/state"] {
        let (code, body) = get(&format!("{endpoint}{path}")).await?;
        ensure!(code == 200, "GET {path} answered {code}: {body}");
    }
    let machines = cluster.machine_ids_via(1).await?;
    ensure!(machines.len() == 2, "list-machines: {machines:?}");
    let rows = cluster.list_units_via(1).await?;
    ensure!(
        rows.iter()
            .any(|(u, active, m)| u == "hello.service" && active == "active" && *m == host_id),
        "list-units: {rows:?}"
    );

    // The skipped values were counted, by kind.
    let after = invalid_counts(cluster).await?;
    for kind in [
        "unit", "machine", "metadata", "target", "schedule", "state", "leader",
    ] {
        let (was, now) = (
            before.get(kind).copied().unwrap_or(0.0),
            after.get(kind).copied().unwrap_or(0.0),
        );
        ensure!(now > was, "{kind}: counted {was} then {now} ({after:?})");
    }

    // --- Phase 2: listings beyond a gRPC message --------------------------
    let registry = Registry::new(kv.clone(), PREFIX);
    let big: Vec<String> = (0..6).map(|i| format!("big{i}.service")).collect();
    for name in &big {
        registry.put_unit(&big_unit(name, 900)?).await?;
    }
    let listed = api_units(&endpoint).await?;
    for name in &big {
        ensure!(listed.contains(name), "{name} not listed: {listed:?}");
    }
    // A fresh start of every fleetd: each cache lists everything anew.
    for m in &cluster.members {
        let out = m.machine.systemctl(&["restart", "fleet.service"]).await?;
        check(&out, "systemctl restart fleet.service")?;
    }
    let mut all: Vec<&str> = big.iter().map(String::as_str).collect();
    all.extend(["hello.service", "after.service"]);
    wait_running(cluster, &all).await?;
    let listed = api_units(&endpoint).await?;
    if listed.len() != all.len() {
        bail!("after the restart the API lists {listed:?}");
    }
    Ok(())
}
