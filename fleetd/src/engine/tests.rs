//! Component tests: engines over [`MemKv`] on paused time.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use units::{UnitName, UnitOption};

use super::*;
use crate::registry::{Kv, LeaseId, MemKv, Op, Registry, Txn};
use crate::schema::{Capabilities, MachineRecord, ScheduledUnit, TargetState, UnitRecord};

const PREFIX: &str = "/engine-test/";

fn mid(s: &str) -> MachineId {
    s.parse().expect("valid machine ID")
}

fn uname(s: &str) -> UnitName {
    s.parse().expect("valid unit name")
}

fn registry() -> Registry<MemKv> {
    Registry::new(MemKv::new(), PREFIX)
}

fn config(interval_secs: u64) -> EngineConfig {
    EngineConfig {
        reconcile_interval: Duration::from_secs(interval_secs),
        disabled: false,
        ..EngineConfig::default()
    }
}

/// Register machine `id` on a fresh lease of `ttl` (never kept alive).
async fn machine(r: &Registry<MemKv>, id: &str, ttl: Duration, md: &[(&str, &str)]) -> LeaseId {
    let lease = r.grant_lease(ttl).await.expect("lease");
    let record = MachineRecord {
        id: mid(id),
        public_ip: String::new(),
        metadata: md.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        capabilities: Capabilities::default(),
        version: String::new(),
        token: format!("token-{id}"),
    };
    r.register_machine(&record, lease).await.expect("register");
    lease
}

async fn unit(r: &Registry<MemKv>, name: &str, state: TargetState, xfleet: &[(&str, &str)]) {
    let mut options = vec![UnitOption::new("Service", "ExecStart", "/bin/true")];
    options.extend(
        xfleet
            .iter()
            .map(|(k, v)| UnitOption::new("X-Fleet", *k, *v)),
    );
    r.put_unit(&UnitRecord {
        name: uname(name),
        desired_state: state,
        options,
    })
    .await
    .expect("put unit");
}

/// The whole schedule: machine → unit → entry.
async fn schedule(r: &Registry<MemKv>) -> BTreeMap<String, BTreeMap<String, ScheduledUnit>> {
    let mut out: BTreeMap<String, BTreeMap<String, ScheduledUnit>> = BTreeMap::new();
    for (m, u, e) in r.schedule().await.expect("schedule").items {
        out.entry(m.to_string())
            .or_default()
            .insert(u.to_string(), e);
    }
    out
}

/// Where each unit is scheduled: unit → machines.
async fn placements(r: &Registry<MemKv>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (m, units) in schedule(r).await {
        for u in units.into_keys() {
            out.entry(u).or_default().push(m.clone());
        }
    }
    out
}

/// Poll `probe` (on paused time) until it returns `Ok`, for at most two
/// virtual minutes; fail with its last complaint.
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match probe().await {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn start(engine: &Engine<MemKv>) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(engine.clone().run(cancel.clone()));
    (cancel, handle)
}

async fn stop(cancel: CancellationToken, handle: JoinHandle<anyhow::Result<()>>) {
    cancel.cancel();
    handle
        .await
        .expect("the engine task does not panic")
        .expect("the engine stops cleanly");
}

/// The leader key holds machine `id`.
async fn leader_is(r: &Registry<MemKv>, id: &str) -> Result<(), String> {
    match r.leader().await {
        Ok(Some(holder)) if holder == mid(id) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// The machines that hold units hold `want` units each (by machine ID).
async fn loads_are(r: &Registry<MemKv>, want: &[usize]) -> Result<(), String> {
    let s = schedule(r).await;
    let loads: Vec<usize> = s.values().map(BTreeMap::len).collect();
    if loads == want {
        Ok(())
    } else {
        Err(format!("{s:?}"))
    }
}

async fn placed_on(r: &Registry<MemKv>, want: &[(&str, &[&str])]) -> Result<(), String> {
    let got = placements(r).await;
    let want: BTreeMap<String, Vec<String>> = want
        .iter()
        .map(|(u, ms)| {
            (
                (*u).to_owned(),
                ms.iter().map(|m| (*m).to_owned()).collect(),
            )
        })
        .collect();
    if got == want {
        Ok(())
    } else {
        Err(format!("{got:?}"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_unit_gets_scheduled_and_follows_its_desired_state() {
    let r = registry();
    machine(&r, "m1", Duration::from_secs(3600), &[]).await;
    machine(&r, "m2", Duration::from_secs(3600), &[("role", "web")]).await;
    let engine = Engine::new(r.clone(), mid("m1"), config(1));
    let (cancel, handle) = start(&engine);

    unit(&r, "a.service", TargetState::Launched, &[]).await;
    unit(
        &r,
        "web.service",
        TargetState::Loaded,
        &[("MachineMetadata", "role=web")],
    )
    .await;
    unit(&r, "idle.service", TargetState::Inactive, &[]).await;
    eventually("a and web to be scheduled", || {
        placed_on(&r, &[("a.service", &["m1"]), ("web.service", &["m2"])])
    })
    .await;
    assert_eq!(
        r.target(&uname("a.service")).await.expect("target"),
        Some(mid("m1"))
    );
    let snapshot = engine.snapshot();
    assert!(snapshot.leader);
    assert_eq!(snapshot.terms, 1);

    // Desired state and destruction propagate.
    let current = r
        .unit(&uname("a.service"))
        .await
        .expect("read")
        .expect("exists");
    r.set_desired_state(
        &uname("a.service"),
        TargetState::Loaded,
        current.mod_revision,
    )
    .await
    .expect("set state");
    r.delete_unit(&uname("web.service")).await.expect("delete");
    eventually("a loaded, web gone", || async {
        let s = schedule(&r).await;
        let a = s
            .get("m1")
            .and_then(|u| u.get("a.service"))
            .map(|e| e.desired_state);
        if a == Some(TargetState::Loaded) && !s.contains_key("m2") {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    stop(cancel, handle).await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_machine_loses_its_units_which_move() {
    let r = registry();
    // m1's presence is never refreshed: it expires after 20 s.
    machine(&r, "m1", Duration::from_secs(20), &[]).await;
    machine(&r, "m2", Duration::from_secs(3600), &[]).await;
    unit(&r, "a.service", TargetState::Launched, &[]).await;
    unit(
        &r,
        "g.service",
        TargetState::Launched,
        &[("Global", "true")],
    )
    .await;
    let engine = Engine::new(r.clone(), mid("m2"), config(1));
    let (cancel, handle) = start(&engine);
    eventually("a on m1, g everywhere", || {
        placed_on(&r, &[("a.service", &["m1"]), ("g.service", &["m1", "m2"])])
    })
    .await;
    let placed_at = Instant::now();
    eventually("a to move to m2 once m1 expires", || {
        placed_on(&r, &[("a.service", &["m2"]), ("g.service", &["m2"])])
    })
    .await;
    assert!(
        placed_at.elapsed() >= Duration::from_secs(15),
        "moved only after m1's lease expired ({:?})",
        placed_at.elapsed()
    );
    stop(cancel, handle).await;
}

#[test]
fn the_lease_lives_five_intervals_but_at_most_two_thirds_of_agent_ttl() {
    let ttl = |interval: u64, agent_ttl: u64| {
        EngineConfig {
            agent_ttl: Duration::from_secs(agent_ttl),
            ..config(interval)
        }
        .lease_ttl()
    };
    assert_eq!(ttl(2, 30), Duration::from_secs(10), "the defaults");
    assert_eq!(ttl(2, 6), Duration::from_secs(4));
    assert_eq!(ttl(1, 9), Duration::from_secs(5));
    assert_eq!(ttl(1, 3600), Duration::from_secs(5));
}

/// The leader's machine is lost: its presence and its engine stop at once,
/// without releasing anything (a network cut, a power loss). Its units run
/// elsewhere within `agent_ttl` + 1 s, though 5 × the interval (10 s) is
/// longer than `agent_ttl`: the other engine leads by the time the lost
/// machine's presence expires, and its first pass moves them.
#[tokio::test(start_paused = true)]
async fn a_lost_leaders_units_move_within_agent_ttl() {
    const AGENT_TTL: Duration = Duration::from_secs(5);
    let r = registry();
    let cfg = EngineConfig {
        agent_ttl: AGENT_TTL,
        ..config(2)
    };
    // m1's presence, refreshed (as its heart would) until the loss.
    let presence = machine(&r, "m1", AGENT_TTL, &[]).await;
    let heart = tokio::spawn({
        let r = r.clone();
        async move {
            loop {
                tokio::time::sleep(AGENT_TTL / 3).await;
                r.keep_alive(presence).await.expect("m1's presence");
            }
        }
    });
    machine(&r, "m2", Duration::from_secs(3600), &[]).await;
    let e1 = Engine::new(r.clone(), mid("m1"), cfg.clone());
    let (_c1, h1) = start(&e1);
    eventually("m1 to lead", || leader_is(&r, "m1")).await;
    let e2 = Engine::new(r.clone(), mid("m2"), cfg);
    let (c2, h2) = start(&e2);
    for i in 0..4 {
        unit(&r, &format!("u{i}.service"), TargetState::Launched, &[]).await;
    }
    eventually("two units on each machine", || loads_are(&r, &[2, 2])).await;
    // Let the leases run a while, so the loss falls at some phase of them.
    tokio::time::sleep(Duration::from_millis(12_345)).await;

    let lost = Instant::now();
    heart.abort();
    h1.abort();
    eventually("every unit on m2", || async {
        let s = schedule(&r).await;
        match s.get("m2") {
            Some(units) if units.len() == 4 && s.len() == 1 => Ok(()),
            _ => Err(format!("{s:?}")),
        }
    })
    .await;
    let took = lost.elapsed();
    assert!(
        took <= AGENT_TTL + Duration::from_secs(1),
        "the lost leader's units moved after {took:?}"
    );
    assert!(e2.snapshot().leader);
    stop(c2, h2).await;
}

#[tokio::test(start_paused = true)]
async fn of_two_engines_only_one_leads() {
    let r = registry();
    machine(&r, "m1", Duration::from_secs(3600), &[]).await;
    machine(&r, "m2", Duration::from_secs(3600), &[]).await;
    let e1 = Engine::new(r.clone(), mid("m1"), config(1));
    let e2 = Engine::new(r.clone(), mid("m2"), config(1));
    let (c1, h1) = start(&e1);
    let (c2, h2) = start(&e2);
    for i in 0..10 {
        unit(&r, &format!("u{i}.service"), TargetState::Launched, &[]).await;
    }
    eventually("ten units spread over two machines", || {
        loads_are(&r, &[5, 5])
    })
    .await;
    // Let both run a while longer: still exactly one leader, never changed.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (s1, s2) = (e1.snapshot(), e2.snapshot());
    assert!(s1.leader ^ s2.leader, "exactly one leads: {s1:?} {s2:?}");
    assert_eq!(s1.terms + s2.terms, 1, "one term in all");
    let leader = r.leader().await.expect("leader").expect("someone leads");
    assert_eq!(leader, if s1.leader { mid("m1") } else { mid("m2") });

    // The leader stops: the other takes over and keeps scheduling.
    let (first, second) = if s1.leader {
        ((c1, h1), (&e2, c2, h2))
    } else {
        ((c2, h2), (&e1, c1, h1))
    };
    stop(first.0, first.1).await;
    let (other, c, h) = second;
    eventually("the other engine to lead", || async {
        if other.snapshot().leader {
            Ok(())
        } else {
            Err(format!("{:?}", other.snapshot()))
        }
    })
    .await;
    unit(&r, "late.service", TargetState::Launched, &[]).await;
    eventually("late.service scheduled by the new leader", || async {
        if placements(&r).await.contains_key("late.service") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    stop(c, h).await;
}

#[tokio::test(start_paused = true)]
async fn a_deposed_leader_is_refused_and_stops_acting() {
    let r = registry();
    machine(&r, "m1", Duration::from_secs(3600), &[]).await;
    // A long interval: the leadership check runs every 50 s / 3, so the
    // refused write is what tells this engine it was deposed.
    let engine = Engine::new(r.clone(), mid("m1"), config(10));
    let (cancel, handle) = start(&engine);
    unit(&r, "a.service", TargetState::Launched, &[]).await;
    eventually("a scheduled", || placed_on(&r, &[("a.service", &["m1"])])).await;

    // Someone else takes the leader key (as if our lease had expired).
    r.kv()
        .txn(Txn {
            success: vec![Op::Delete {
                key: r.keys().leader(),
            }],
            ..Txn::default()
        })
        .await
        .expect("delete the leader key");
    let lease = r
        .grant_lease(Duration::from_secs(3600))
        .await
        .expect("lease");
    let usurper = r
        .acquire_leadership(&mid("m9"), lease)
        .await
        .expect("acquire")
        .expect("the key was free");
    unit(&r, "b.service", TargetState::Launched, &[]).await;
    eventually("the engine to notice", || async {
        let s = engine.snapshot();
        if !s.leader && s.terms_lost == 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert_eq!(
        engine.snapshot().last_loss.as_deref(),
        Some("a write was refused: not the leader")
    );
    // It does not act any more: b stays unscheduled, and it does not lead
    // again while the usurper holds the key.
    tokio::time::sleep(Duration::from_secs(60)).await;
    placed_on(&r, &[("a.service", &["m1"])])
        .await
        .expect("b not scheduled");
    assert!(!engine.snapshot().leader);
    assert!(r.is_leader(&usurper).await.expect("check"));
    stop(cancel, handle).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_leadership_and_a_follower_takes_over() {
    let r = registry();
    machine(&r, "m1", Duration::from_secs(3600), &[]).await;
    let e1 = Engine::new(r.clone(), mid("m1"), config(2));
    let (c1, h1) = start(&e1);
    eventually("m1 to lead", || leader_is(&r, "m1")).await;
    let e2 = Engine::new(r.clone(), mid("m2"), config(2));
    let (c2, h2) = start(&e2);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!e2.snapshot().leader);

    let stopped = Instant::now();
    stop(c1, h1).await;
    assert_ne!(
        r.leader().await.expect("leader"),
        Some(mid("m1")),
        "released"
    );
    eventually("m2 to lead", || async {
        if e2.snapshot().leader {
            Ok(())
        } else {
            Err(format!("{:?}", e2.snapshot()))
        }
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "no wait for the 10 s lease to expire ({:?})",
        stopped.elapsed()
    );
    stop(c2, h2).await;
    assert_eq!(r.leader().await.expect("leader"), None);
}

#[tokio::test(start_paused = true)]
async fn a_disabled_engine_never_leads() {
    let r = registry();
    machine(&r, "m1", Duration::from_secs(3600), &[]).await;
    unit(&r, "a.service", TargetState::Launched, &[]).await;
    let engine = Engine::new(
        r.clone(),
        mid("m1"),
        EngineConfig {
            disabled: true,
            ..config(1)
        },
    );
    let (cancel, handle) = start(&engine);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(r.leader().await.expect("leader"), None);
    assert!(placements(&r).await.is_empty());
    stop(cancel, handle).await;
}

#[tokio::test(start_paused = true)]
async fn etcd_outages_are_ridden_out() {
    let kv = MemKv::new();
    let r = Registry::new(kv.clone(), PREFIX);
    machine(&r, "m1", Duration::from_secs(3600), &[]).await;
    let engine = Engine::new(r.clone(), mid("m1"), config(1));
    let (cancel, handle) = start(&engine);
    eventually("m1 to lead", || async {
        if engine.snapshot().leader {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    // A short outage (shorter than the 5 s lease): writes fail, then work.
    kv.set_unavailable(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    kv.set_unavailable(false);
    unit(&r, "a.service", TargetState::Launched, &[]).await;
    eventually("a scheduled after the outage", || {
        placed_on(&r, &[("a.service", &["m1"])])
    })
    .await;

    // A long outage: the lease expires, leadership is lost, then won again.
    kv.set_unavailable(true);
    tokio::time::sleep(Duration::from_secs(20)).await;
    kv.set_unavailable(false);
    unit(&r, "b.service", TargetState::Launched, &[]).await;
    eventually("b scheduled by a new term", || {
        placed_on(&r, &[("a.service", &["m1"]), ("b.service", &["m1"])])
    })
    .await;
    let s = engine.snapshot();
    assert!(s.leader);
    assert!(s.terms >= 2, "{s:?}");
    stop(cancel, handle).await;
}

#[tokio::test(start_paused = true)]
async fn a_pass_with_unchanged_inputs_is_skipped() {
    let r = registry();
    machine(&r, "m1", Duration::from_secs(3600), &[]).await;
    unit(&r, "a.service", TargetState::Launched, &[]).await;
    let engine = Engine::new(r.clone(), mid("m1"), config(1));
    let (cancel, handle) = start(&engine);
    eventually("a scheduled", || placed_on(&r, &[("a.service", &["m1"])])).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = engine.snapshot().passes;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        engine.snapshot().passes,
        before,
        "ticks with nothing new run no pass"
    );
    unit(&r, "b.service", TargetState::Launched, &[]).await;
    eventually("b scheduled", || {
        placed_on(&r, &[("a.service", &["m1"]), ("b.service", &["m1"])])
    })
    .await;
    assert!(engine.snapshot().passes > before);
    stop(cancel, handle).await;
}

/// The leader computes the cluster gauges from its caches (units by desired
/// and current state, unit states, machines); a follower has none.
#[tokio::test(start_paused = true)]
async fn the_leader_has_the_cluster_gauges_and_a_follower_none() {
    use crate::metrics::{ClusterGauges, ClusterReading};
    let r = registry();
    let lease = machine(&r, "m1", Duration::from_secs(3600), &[]).await;
    let e1 = Engine::new(r.clone(), mid("m1"), config(1));
    let e2 = Engine::new(r.clone(), mid("m2"), config(1));
    assert_eq!((e1.cluster_source())(), ClusterReading::Absent);
    let (c1, h1) = start(&e1);
    eventually("m1 to lead", || async {
        if e1.snapshot().leader {
            Ok(())
        } else {
            Err(format!("{:?}", e1.snapshot()))
        }
    })
    .await;
    let (c2, h2) = start(&e2);
    unit(&r, "run.service", TargetState::Launched, &[]).await;
    unit(&r, "idle.service", TargetState::Inactive, &[]).await;
    eventually("run.service scheduled", || async {
        placed_on(&r, &[("run.service", &["m1"])]).await
    })
    .await;
    let hash = r
        .unit(&uname("run.service"))
        .await
        .expect("read")
        .expect("the unit")
        .value
        .file()
        .hash();
    r.publish_state(
        lease,
        &crate::schema::UnitStateRecord {
            name: uname("run.service"),
            machine_id: mid("m1"),
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            unit_hash: hash,
            job_state: TargetState::Launched,
        },
    )
    .await
    .expect("publish");
    let want = ClusterReading::Ready(ClusterGauges {
        units: BTreeMap::from([
            (("inactive".to_owned(), "inactive".to_owned()), 1),
            (("launched".to_owned(), "launched".to_owned()), 1),
        ]),
        unit_states: BTreeMap::from([("active".to_owned(), 1)]),
        machines: 1,
    });
    let source = e1.cluster_source();
    eventually("the leader's gauges", || async {
        let got = source();
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    assert_eq!((e2.cluster_source())(), ClusterReading::Absent);
    stop(c2, h2).await;
    stop(c1, h1).await;
    assert_eq!(source(), ClusterReading::Absent, "the term is over");
}
