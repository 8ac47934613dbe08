//! The registry contract: every test runs once against [`MemKv`] and once
//! against [`EtcdKv`] on a real etcd, so the in-memory store is trusted only
//! as far as it behaves like etcd.
//!
//! `registry_contract!` expands each listed test into `mem::<name>` and
//! `etcd::<name>`. Tests under `shared` use one etcd for the whole binary
//! (started on first use, cleaned up when the process exits), each under its
//! own key prefix; tests under `isolated` get a private etcd, because they
//! count revisions, compact (which is global) or take etcd down. A missing
//! etcd fails the etcd half with a message naming the package to install.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use fleetd::registry::{self, CancellationToken, Reflector};
use fleetd::registry::{
    Compare, Error, EtcdKv, Event, EventKind, Keys, Kv, LeaseId, MemKv, Op, ParsedKey, Registry,
    Revision, ScheduleChange, Txn, TxnResponse, WatchStream,
};
use fleetd::schema::{
    Capabilities, MachineId, MachineRecord, ScheduledUnit, TargetState, UnitRecord, UnitStateRecord,
};
use futures_util::StreamExt;
use testbed::etcd::{Etcd, shared as shared_etcd};
use units::{UnitHash, UnitName};

/// The bound on each request in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The bound on a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// How long to wait for something that should happen (lease expiry, an
/// event, recovery).
const EVENTUALLY: Duration = Duration::from_secs(10);

/// One backend under test, under a key prefix of its own.
struct Fx<K> {
    /// The store.
    kv: K,
    /// The typed registry over it, under `prefix`.
    reg: Registry<K>,
    /// This test's key prefix, ending in `/`.
    prefix: String,
    /// A private etcd, for isolated tests.
    etcd: Option<Etcd>,
}

impl<K: Kv> Fx<K> {
    fn new(kv: K, test: &str, etcd: Option<Etcd>) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "/tb/{test}-{}-{}/",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Fx {
            reg: Registry::new(kv.clone(), &format!("{prefix}fleet")),
            kv,
            prefix,
            etcd,
        }
    }

    /// A raw key under this test's prefix (outside the registry's layout).
    fn key(&self, name: &str) -> String {
        format!("{}raw/{name}", self.prefix)
    }

    /// The prefix of the raw keys.
    fn raw(&self) -> String {
        format!("{}raw/", self.prefix)
    }
}

/// What differs between the backends, for the tests that need it.
trait Backend: Kv {
    /// Discard history before `rev`.
    fn compact_history(fx: &Fx<Self>, rev: Revision) -> impl Future<Output = anyhow::Result<()>>;
    /// Take the store down (`true`) or bring it back (`false`).
    fn outage(fx: &mut Fx<Self>, down: bool) -> impl Future<Output = anyhow::Result<()>>;
    /// Put raw bytes, as `etcdctl put` would (no lease); `false` if the
    /// backend cannot hold such a key at all (`MemKv`'s keys are strings,
    /// so a key that is not UTF-8 cannot exist in it).
    fn put_raw(
        fx: &Fx<Self>,
        key: &[u8],
        value: &[u8],
    ) -> impl Future<Output = anyhow::Result<bool>>;
}

impl Backend for MemKv {
    async fn compact_history(fx: &Fx<Self>, rev: Revision) -> anyhow::Result<()> {
        Ok(fx.kv.compact(rev)?)
    }

    async fn outage(fx: &mut Fx<Self>, down: bool) -> anyhow::Result<()> {
        fx.kv.set_unavailable(down);
        Ok(())
    }

    async fn put_raw(fx: &Fx<Self>, key: &[u8], value: &[u8]) -> anyhow::Result<bool> {
        let Ok(key) = std::str::from_utf8(key) else {
            return Ok(false);
        };
        write(
            &fx.kv,
            vec![Op::Put {
                key: key.to_owned(),
                value: value.to_vec(),
                lease: None,
            }],
        )
        .await?;
        Ok(true)
    }
}

impl Backend for EtcdKv {
    async fn compact_history(fx: &Fx<Self>, rev: Revision) -> anyhow::Result<()> {
        Ok(fx.kv.compact(rev).await?)
    }

    async fn outage(fx: &mut Fx<Self>, down: bool) -> anyhow::Result<()> {
        let etcd = fx
            .etcd
            .as_mut()
            .context("outage tests need a private etcd")?;
        if down {
            etcd.kill().await
        } else {
            etcd.restart().await
        }
    }

    async fn put_raw(fx: &Fx<Self>, key: &[u8], value: &[u8]) -> anyhow::Result<bool> {
        fx.kv
            .client()
            .kv_client()
            .put(key.to_vec(), value.to_vec(), None)
            .await
            .context("etcd put of raw bytes")?;
        Ok(true)
    }
}

/// A decoder of every key of the layout, as a cache of the whole registry
/// would use: keys outside the layout, bad values and records that name
/// another unit or machine than their key are skipped.
fn whole_registry(keys: Keys) -> impl Fn(&str, &[u8]) -> Option<ParsedKey> + Send + Sync {
    move |key, value| {
        let text = || std::str::from_utf8(value).ok();
        let parsed = keys.parse(key)?;
        let valid = match &parsed {
            ParsedKey::Machine(id) => registry::json_record::<MachineRecord>(key, value)?.id == *id,
            ParsedKey::Metadata { .. } => text().is_some(),
            ParsedKey::Unit(name) => registry::json_record::<UnitRecord>(key, value)?.name == *name,
            ParsedKey::Target(_) => text()?.parse::<MachineId>().is_ok(),
            ParsedKey::Scheduled { .. } => {
                registry::json_record::<ScheduledUnit>(key, value).is_some()
            }
            ParsedKey::State { unit, machine } => {
                let record: UnitStateRecord = registry::json_record(key, value)?;
                record.name == *unit && record.machine_id == *machine
            }
            ParsedKey::Leader => text()?.parse::<MachineId>().is_ok(),
        };
        valid.then_some(parsed)
    }
}

#[test]
fn whole_registry_decodes_every_kind() {
    let keys = Keys::new("/r/");
    let decode = whole_registry(keys.clone());
    let m: MachineId = "m1".parse().expect("valid machine ID");
    assert_eq!(decode(&keys.leader(), b"m1"), Some(ParsedKey::Leader));
    assert_eq!(
        decode(&keys.metadata(&m, "role"), b"web"),
        Some(ParsedKey::Metadata {
            machine: m.clone(),
            key: "role".into(),
        })
    );
    assert_eq!(decode(&keys.machine(&m), b"{not json"), None);
    assert_eq!(decode("/elsewhere/x", b"m1"), None);
}

fn mem(test: &str) -> Fx<MemKv> {
    Fx::new(MemKv::new(), test, None)
}

async fn connect(etcd: &Etcd) -> anyhow::Result<EtcdKv> {
    Ok(EtcdKv::connect(&[etcd.endpoint()], REQUEST_TIMEOUT).await?)
}

async fn etcd_shared(test: &str) -> anyhow::Result<Fx<EtcdKv>> {
    let etcd = tokio::task::spawn_blocking(|| shared_etcd().map(Etcd::endpoint)).await??;
    let kv = EtcdKv::connect(&[etcd], REQUEST_TIMEOUT).await?;
    Ok(Fx::new(kv, test, None))
}

async fn etcd_private(test: &str) -> anyhow::Result<Fx<EtcdKv>> {
    let etcd = Etcd::start().await?;
    let kv = connect(&etcd).await?;
    Ok(Fx::new(kv, test, Some(etcd)))
}

/// Expand each test once per backend.
macro_rules! registry_contract {
    (shared: [$($shared:ident),* $(,)?], isolated: [$($isolated:ident),* $(,)?] $(,)?) => {
        mod mem {
            $(
                #[tokio::test]
                async fn $shared() -> anyhow::Result<()> {
                    super::run(super::$shared(super::mem(stringify!($shared)))).await
                }
            )*
            $(
                #[tokio::test]
                async fn $isolated() -> anyhow::Result<()> {
                    super::run(super::$isolated(super::mem(stringify!($isolated)))).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test]
                async fn $shared() -> anyhow::Result<()> {
                    let fx = super::etcd_shared(stringify!($shared)).await?;
                    super::run(super::$shared(fx)).await
                }
            )*
            $(
                #[tokio::test]
                async fn $isolated() -> anyhow::Result<()> {
                    let fx = super::etcd_private(stringify!($isolated)).await?;
                    super::run(super::$isolated(fx)).await
                }
            )*
        }
    };
}

registry_contract! {
    shared: [
        kv_get_and_put,
        kv_range_pages_and_reads_in_the_past,
        kv_list_is_one_snapshot_across_pages,
        kv_txn_compares_including_missing_keys,
        kv_txn_refuses_what_etcd_refuses,
        kv_lease_expiry_deletes_keys_with_events,
        kv_keep_alive_extends_a_lease,
        kv_revoke_deletes_keys_with_events,
        kv_watch_replays_history_then_follows,
        units_put_get_list_delete,
        units_set_desired_state_conflicts,
        schedule_apply_and_read,
        schedule_refused_after_leadership_changes,
        schedule_chunks_large_change_sets,
        states_publish_list_and_vanish_with_lease,
        machines_register_take_over_and_refuse,
        machines_dynamic_metadata,
        leadership_acquire_release_and_expiry,
        leadership_takes_over_stale_keys,
        cache_follows_the_store,
        large_values_list_and_watch_beyond_the_message_limit,
        thousands_of_units_list_completely,
        invalid_values_are_skipped_by_every_read,
    ],
    isolated: [
        kv_revision_counts_writes_only,
        kv_compaction_fails_old_watches_and_reads,
        outage_is_unavailable_then_recovers,
    ],
}

/// Run one test body under the overall timeout.
async fn run(body: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .with_context(|| format!("the test did not finish within {TEST_TIMEOUT:?}"))?
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn put_op(key: &str, value: &str, lease: Option<LeaseId>) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        lease,
    }
}

async fn write<K: Kv>(kv: &K, ops: Vec<Op>) -> anyhow::Result<TxnResponse> {
    let resp = kv
        .txn(Txn {
            success: ops,
            ..Txn::default()
        })
        .await?;
    ensure!(resp.succeeded, "an unconditional transaction succeeds");
    Ok(resp)
}

async fn put<K: Kv>(kv: &K, key: &str, value: &str) -> anyhow::Result<Revision> {
    Ok(write(kv, vec![put_op(key, value, None)]).await?.revision)
}

async fn value_of<K: Kv>(kv: &K, key: &str) -> anyhow::Result<Option<String>> {
    let (found, _) = kv.get(key).await?;
    Ok(found.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// Read watch batches until `n` events have arrived.
async fn next_events(stream: &mut WatchStream, n: usize) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    while events.len() < n {
        let item = tokio::time::timeout(EVENTUALLY, stream.next())
            .await
            .with_context(|| format!("waiting for {n} watch events, got {events:?}"))?;
        match item {
            Some(Ok((batch, reached))) => {
                for e in &batch {
                    ensure!(
                        e.kv.mod_revision <= reached.0,
                        "a batch's revision covers its events"
                    );
                }
                events.extend(batch);
            }
            Some(Err(e)) => bail!("watch failed after {events:?}: {e}"),
            None => bail!("watch ended after {events:?}"),
        }
    }
    Ok(events)
}

/// The keys and kinds of events, for comparing.
fn summary(events: &[Event]) -> Vec<(EventKind, String)> {
    events.iter().map(|e| (e.kind, e.kv.key.clone())).collect()
}

/// Poll `f` until it returns true.
async fn eventually<F, Fut>(what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let last = match f().await {
            Ok(true) => return Ok(()),
            Ok(false) => "not yet".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out waiting for {what} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn machine(id: &str) -> MachineId {
    id.parse().expect("test machine IDs are valid")
}

fn unit_name(name: &str) -> UnitName {
    name.parse().expect("test unit names are valid")
}

fn unit(name: &str, state: TargetState) -> UnitRecord {
    UnitRecord {
        name: unit_name(name),
        desired_state: state,
        options: vec![units::UnitOption {
            section: "Service".into(),
            name: "ExecStart".into(),
            value: format!("/bin/echo {name}"),
        }],
    }
}

fn entry(global: bool) -> ScheduledUnit {
    ScheduledUnit {
        desired_state: TargetState::Launched,
        hash: UnitHash::from([7; 20]),
        global,
    }
}

fn place(u: &str, m: &str, global: bool) -> ScheduleChange {
    ScheduleChange::Put {
        unit: unit_name(u),
        machine: machine(m),
        entry: entry(global),
    }
}

fn unplace(u: &str, m: &str) -> ScheduleChange {
    ScheduleChange::Remove {
        unit: unit_name(u),
        machine: machine(m),
    }
}

fn machine_record(id: &str, ip: &str, token: &str) -> MachineRecord {
    MachineRecord {
        id: machine(id),
        public_ip: ip.into(),
        metadata: BTreeMap::from([("role".into(), "test".into())]),
        capabilities: Capabilities::default(),
        version: "test".into(),
        token: token.into(),
    }
}

fn state(u: &str, m: &str) -> UnitStateRecord {
    UnitStateRecord {
        name: unit_name(u),
        machine_id: machine(m),
        load_state: "loaded".into(),
        active_state: "active".into(),
        sub_state: "running".into(),
        unit_hash: UnitHash::from([1; 20]),
        job_state: TargetState::Launched,
    }
}

// ---------------------------------------------------------------------------
// Kv primitives
// ---------------------------------------------------------------------------

async fn kv_get_and_put<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let k = fx.key("a");
    let (missing, _) = fx.kv.get(&k).await?;
    ensure!(missing.is_none(), "a missing key reads as None");

    let r1 = put(&fx.kv, &k, "1").await?;
    let (found, at) = fx.kv.get(&k).await?;
    let found = found.context("the key exists after a put")?;
    ensure!(found.value == b"1");
    ensure!(
        found.create_revision == r1.0 && found.mod_revision == r1.0,
        "{found:?} at {r1}"
    );
    ensure!(found.lease.is_none());
    ensure!(at >= r1, "reads are at or after the write");

    let r2 = put(&fx.kv, &k, "2").await?;
    ensure!(r2 > r1);
    let (found, _) = fx.kv.get(&k).await?;
    let found = found.context("still there")?;
    ensure!(
        found.create_revision == r1.0,
        "an update keeps create_revision"
    );
    ensure!(found.mod_revision == r2.0, "an update moves mod_revision");
    Ok(())
}

async fn kv_revision_counts_writes_only<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let k = fx.key("a");
    let r1 = put(&fx.kv, &k, "1").await?;
    let read = fx
        .kv
        .txn(Txn {
            success: vec![Op::Get { key: k.clone() }],
            ..Txn::default()
        })
        .await?;
    ensure!(
        read.revision == r1,
        "a read-only transaction does not write"
    );
    let failed = fx
        .kv
        .txn(Txn {
            compares: vec![Compare::ModRevision(k.clone(), r1.0 + 100)],
            success: vec![put_op(&k, "x", None)],
            failure: vec![],
        })
        .await?;
    ensure!(
        !failed.succeeded && failed.revision == r1,
        "a failed compare does not write"
    );
    let nothing = write(
        &fx.kv,
        vec![Op::Delete {
            key: fx.key("missing"),
        }],
    )
    .await?;
    ensure!(
        nothing.revision == r1 && nothing.deleted == vec![0],
        "deleting nothing does not write"
    );
    let both = write(
        &fx.kv,
        vec![
            put_op(&fx.key("b"), "1", None),
            put_op(&fx.key("c"), "1", None),
        ],
    )
    .await?;
    ensure!(
        both.revision == r1.next(),
        "one transaction is one revision"
    );
    let (_, now) = fx.kv.get(&k).await?;
    ensure!(now == both.revision);
    Ok(())
}

async fn kv_range_pages_and_reads_in_the_past<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let ops = (0..25)
        .map(|i| put_op(&fx.key(&format!("k{i:02}")), "old", None))
        .collect();
    let r1 = write(&fx.kv, ops).await?.revision;
    put(&fx.kv, &format!("{}rawx", fx.prefix), "outside").await?;

    let first = fx.kv.range(&fx.raw(), None, 10, None).await?;
    ensure!(first.kvs.len() == 10 && first.more, "first page: {first:?}");
    ensure!(first.kvs[0].key == fx.key("k00"));

    // Change things after the first page: later pages at its revision must
    // not see them.
    put(&fx.kv, &fx.key("k15"), "new").await?;
    put(&fx.kv, &fx.key("k99"), "new").await?;

    let mut all = first.kvs.clone();
    let mut more = first.more;
    while more {
        let after = all.last().map(|kv| kv.key.clone());
        let page = fx
            .kv
            .range(&fx.raw(), after.as_deref(), 10, Some(first.revision))
            .await?;
        ensure!(
            page.revision == first.revision,
            "a page at a revision says so"
        );
        ensure!(page.kvs.len() <= 10);
        more = page.more;
        all.extend(page.kvs);
    }
    let keys: Vec<String> = all.iter().map(|kv| kv.key.clone()).collect();
    let want: Vec<String> = (0..25).map(|i| fx.key(&format!("k{i:02}"))).collect();
    ensure!(
        keys == want,
        "pages cover the range once, in order: {keys:?}"
    );
    ensure!(
        all.iter().all(|kv| kv.value == b"old"),
        "pages at a revision see that revision"
    );

    let past = fx
        .kv
        .range(&fx.raw(), Some(&fx.key("k14")), 1, Some(r1))
        .await?;
    ensure!(past.kvs.len() == 1 && past.kvs[0].value == b"old" && past.more);
    let now = fx
        .kv
        .range(&fx.raw(), Some(&fx.key("k14")), 1, None)
        .await?;
    ensure!(now.kvs[0].value == b"new", "the present sees the change");
    let tail = fx
        .kv
        .range(&fx.raw(), Some(&fx.key("k24")), 0, None)
        .await?;
    ensure!(
        tail.kvs.len() == 1 && tail.kvs[0].key == fx.key("k99") && !tail.more,
        "limit 0 is no limit: {tail:?}"
    );
    Ok(())
}

async fn kv_list_is_one_snapshot_across_pages<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    // More than two of EtcdKv's 1000-key pages.
    let mut last = Revision(0);
    for chunk in 0..25 {
        let ops = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                put_op(&fx.key(&format!("k{n:04}")), &n.to_string(), None)
            })
            .collect();
        last = write(&fx.kv, ops).await?.revision;
    }
    let (kvs, revision) = fx.kv.list(&fx.raw()).await?;
    ensure!(revision >= last);
    ensure!(kvs.len() == 2500, "listed {}", kvs.len());
    for (n, kv) in kvs.iter().enumerate() {
        ensure!(kv.key == fx.key(&format!("k{n:04}")) && kv.value == n.to_string().as_bytes());
    }
    let (none, _) = fx.kv.list(&format!("{}nothing/", fx.prefix)).await?;
    ensure!(none.is_empty());
    Ok(())
}

async fn kv_txn_compares_including_missing_keys<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let missing = fx.key("missing");
    let k = fx.key("k");
    let check = |compares: Vec<Compare>| {
        let kv = fx.kv.clone();
        let k = k.clone();
        async move {
            let resp = kv
                .txn(Txn {
                    compares,
                    success: vec![],
                    failure: vec![Op::Get { key: k }],
                })
                .await?;
            anyhow::Ok(resp)
        }
    };
    ensure!(
        check(vec![Compare::CreateRevision(missing.clone(), 0)])
            .await?
            .succeeded,
        "create_revision of a missing key is 0"
    );
    ensure!(
        check(vec![Compare::ModRevision(missing.clone(), 0)])
            .await?
            .succeeded,
        "mod_revision of a missing key is 0"
    );
    ensure!(
        !check(vec![Compare::Value(missing.clone(), vec![])])
            .await?
            .succeeded,
        "a value compare on a missing key fails"
    );

    let r1 = put(&fx.kv, &k, "v1").await?;
    let r2 = put(&fx.kv, &k, "v2").await?;
    ensure!(
        check(vec![Compare::CreateRevision(k.clone(), r1.0)])
            .await?
            .succeeded
    );
    ensure!(
        check(vec![Compare::ModRevision(k.clone(), r2.0)])
            .await?
            .succeeded
    );
    ensure!(
        check(vec![Compare::Value(k.clone(), b"v2".to_vec())])
            .await?
            .succeeded
    );
    ensure!(
        check(vec![Compare::CreateRevision(k.clone(), 0)])
            .await
            .map(|r| !r.succeeded)?
    );
    let failed = check(vec![
        Compare::ModRevision(k.clone(), r1.0),
        Compare::Value(k.clone(), b"v2".to_vec()),
    ])
    .await?;
    ensure!(!failed.succeeded, "every compare must hold");
    let got = failed
        .gets
        .first()
        .cloned()
        .flatten()
        .context("the failure branch ran its get")?;
    ensure!(got.value == b"v2" && got.mod_revision == r2.0);

    // Gets see earlier writes of the same transaction; deletes count.
    for i in 0..3 {
        put(&fx.kv, &fx.key(&format!("d/{i}")), "x").await?;
    }
    let resp = write(
        &fx.kv,
        vec![
            put_op(&fx.key("fresh"), "new", None),
            Op::Get {
                key: fx.key("fresh"),
            },
            Op::Delete {
                key: missing.clone(),
            },
            Op::DeletePrefix {
                prefix: fx.key("d/"),
            },
            Op::Get { key: fx.key("d/1") },
        ],
    )
    .await?;
    let fresh = resp.gets[0]
        .clone()
        .context("a get after a put in one txn sees it")?;
    ensure!(fresh.value == b"new" && fresh.mod_revision == resp.revision.0);
    ensure!(
        resp.gets[1].is_none(),
        "a get after a delete in one txn sees it gone"
    );
    ensure!(
        resp.deleted == vec![0, 3],
        "deleted counts: {:?}",
        resp.deleted
    );
    Ok(())
}

async fn kv_txn_refuses_what_etcd_refuses<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let too_many: Vec<Op> = (0..129)
        .map(|i| put_op(&fx.key(&format!("k{i}")), "x", None))
        .collect();
    let err = write(&fx.kv, too_many)
        .await
        .err()
        .context("129 operations are refused")?;
    ensure!(
        matches!(err.downcast_ref::<Error>(), Some(Error::Rejected { .. })),
        "refused as invalid: {err:#}"
    );
    let max: Vec<Op> = (0..128)
        .map(|i| put_op(&fx.key(&format!("k{i}")), "x", None))
        .collect();
    write(&fx.kv, max)
        .await
        .context("128 operations are fine")?;

    let twice = vec![
        put_op(&fx.key("dup"), "1", None),
        put_op(&fx.key("dup"), "2", None),
    ];
    let err = write(&fx.kv, twice)
        .await
        .err()
        .context("a key put twice is refused")?;
    ensure!(
        matches!(err.downcast_ref::<Error>(), Some(Error::Rejected { .. })),
        "{err:#}"
    );
    let put_deleted = vec![
        Op::Delete { key: fx.key("dup") },
        put_op(&fx.key("dup"), "2", None),
    ];
    let err = write(&fx.kv, put_deleted)
        .await
        .err()
        .context("a key deleted and put is refused")?;
    ensure!(
        matches!(err.downcast_ref::<Error>(), Some(Error::Rejected { .. })),
        "{err:#}"
    );
    ensure!(
        value_of(&fx.kv, &fx.key("dup")).await?.is_none(),
        "refused transactions write nothing"
    );
    Ok(())
}

async fn kv_lease_expiry_deletes_keys_with_events<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let lease = fx.kv.grant(Duration::from_secs(1)).await?;
    let k = fx.key("leased");
    let r = write(
        &fx.kv,
        vec![
            put_op(&k, "x", Some(lease)),
            put_op(&fx.key("free"), "x", None),
        ],
    )
    .await?
    .revision;
    let (found, _) = fx.kv.get(&k).await?;
    ensure!(found.context("the leased key exists")?.lease == Some(lease));
    let mut watch = fx.kv.watch(&fx.raw(), r.next()).await?;

    let deleted = next_events(&mut watch, 1).await?;
    ensure!(
        summary(&deleted) == vec![(EventKind::Delete, k.clone())],
        "expiry is a delete event: {deleted:?}"
    );
    ensure!(deleted[0].kv.mod_revision > r.0 && deleted[0].kv.value.is_empty());
    ensure!(value_of(&fx.kv, &k).await?.is_none());
    ensure!(
        value_of(&fx.kv, &fx.key("free")).await?.is_some(),
        "keys without the lease stay"
    );
    ensure!(
        matches!(fx.kv.keep_alive(lease).await, Err(Error::LeaseNotFound(id)) if id == lease.0),
        "an expired lease cannot be kept alive"
    );
    let err = write(&fx.kv, vec![put_op(&k, "again", Some(lease))])
        .await
        .err()
        .context("a put on an expired lease fails")?;
    ensure!(
        matches!(err.downcast_ref::<Error>(), Some(Error::LeaseNotFound(id)) if *id == lease.0),
        "{err:#}"
    );
    Ok(())
}

async fn kv_keep_alive_extends_a_lease<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let lease = fx.kv.grant(Duration::from_secs(2)).await?;
    let k = fx.key("kept");
    write(&fx.kv, vec![put_op(&k, "x", Some(lease))]).await?;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ttl = fx.kv.keep_alive(lease).await?;
        ensure!(
            ttl == Duration::from_secs(2),
            "keep-alive grants the TTL again: {ttl:?}"
        );
    }
    ensure!(
        value_of(&fx.kv, &k).await?.is_some(),
        "kept alive past its TTL"
    );
    fx.kv.revoke(lease).await?;
    Ok(())
}

async fn kv_revoke_deletes_keys_with_events<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let lease = fx.kv.grant(Duration::from_secs(30)).await?;
    let r = write(
        &fx.kv,
        vec![
            put_op(&fx.key("a"), "x", Some(lease)),
            put_op(&fx.key("b"), "x", Some(lease)),
            put_op(&fx.key("c"), "x", None),
        ],
    )
    .await?
    .revision;
    // Moving a key to no lease detaches it.
    let moved = put(&fx.kv, &fx.key("b"), "y").await?;
    ensure!(moved > r);
    let mut watch = fx.kv.watch(&fx.raw(), moved.next()).await?;
    fx.kv.revoke(lease).await?;
    let events = next_events(&mut watch, 1).await?;
    ensure!(
        summary(&events) == vec![(EventKind::Delete, fx.key("a"))],
        "{events:?}"
    );
    ensure!(value_of(&fx.kv, &fx.key("a")).await?.is_none());
    ensure!(value_of(&fx.kv, &fx.key("b")).await?.as_deref() == Some("y"));
    ensure!(value_of(&fx.kv, &fx.key("c")).await?.is_some());
    fx.kv
        .revoke(lease)
        .await
        .context("revoking a missing lease is fine")?;
    ensure!(matches!(
        fx.kv.keep_alive(lease).await,
        Err(Error::LeaseNotFound(_))
    ));
    Ok(())
}

async fn kv_watch_replays_history_then_follows<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let (a, b, c) = (fx.key("a"), fx.key("b"), fx.key("c"));
    put(&fx.kv, &a, "1").await?;
    let r2 = put(&fx.kv, &b, "1").await?;
    let r3 = write(&fx.kv, vec![Op::Delete { key: a.clone() }])
        .await?
        .revision;
    let mut watch = fx.kv.watch(&fx.raw(), r2).await?;
    let past = next_events(&mut watch, 2).await?;
    ensure!(
        summary(&past) == vec![(EventKind::Put, b.clone()), (EventKind::Delete, a.clone())],
        "history from r2: {past:?}"
    );
    ensure!(past[0].kv.mod_revision == r2.0 && past[1].kv.mod_revision == r3.0);
    ensure!(past[0].kv.value == b"1" && past[0].kv.create_revision == r2.0);

    // A sibling prefix is not ours.
    put(&fx.kv, &format!("{}rawx/a", fx.prefix), "1").await?;
    let r4 = put(&fx.kv, &c, "1").await?;
    let live = next_events(&mut watch, 1).await?;
    ensure!(
        summary(&live) == vec![(EventKind::Put, c.clone())],
        "live: {live:?}"
    );
    ensure!(live[0].kv.mod_revision == r4.0);
    Ok(())
}

async fn kv_compaction_fails_old_watches_and_reads<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let k = fx.key("k");
    let r1 = put(&fx.kv, &k, "1").await?;
    put(&fx.kv, &k, "2").await?;
    let r3 = put(&fx.kv, &k, "3").await?;
    K::compact_history(&fx, r3).await?;

    // etcd may refuse at once or end the stream right away.
    let outcome: Result<(), Error> = match fx.kv.watch(&fx.raw(), r1).await {
        Err(e) => Err(e),
        Ok(mut stream) => match tokio::time::timeout(EVENTUALLY, stream.next()).await? {
            Some(Err(e)) => Err(e),
            other => bail!("a watch from a compacted revision must fail, got {other:?}"),
        },
    };
    ensure!(
        matches!(outcome, Err(Error::Compacted { requested, compact_revision }) if requested == r1.0 && compact_revision == r3.0),
        "{outcome:?}"
    );
    let read = fx.kv.range(&fx.raw(), None, 0, Some(r1)).await;
    ensure!(
        matches!(read, Err(Error::Compacted { .. })),
        "reading a compacted revision: {read:?}"
    );

    let mut watch = fx.kv.watch(&fx.raw(), r3).await?;
    let events = next_events(&mut watch, 1).await?;
    ensure!(
        events[0].kv.mod_revision == r3.0 && events[0].kv.value == b"3",
        "the compaction revision itself stays"
    );
    let (kvs, _) = fx.kv.list(&fx.raw()).await?;
    ensure!(kvs.len() == 1 && kvs[0].value == b"3");
    Ok(())
}

async fn outage_is_unavailable_then_recovers<K: Backend>(mut fx: Fx<K>) -> anyhow::Result<()> {
    let k = fx.key("k");
    let r = put(&fx.kv, &k, "1").await?;
    let (reflector, store) =
        Reflector::new(fx.kv.clone(), fx.raw(), registry::json_record::<String>);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(reflector.run(cancel.clone()));
    store.wait_ready().await;
    let mut watch = fx.kv.watch(&fx.raw(), r.next()).await?;

    K::outage(&mut fx, true).await?;
    let started = tokio::time::Instant::now();
    let read = fx.kv.get(&k).await;
    ensure!(
        matches!(read, Err(Error::Unavailable { .. })),
        "reads fail during an outage: {read:?}"
    );
    ensure!(
        started.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(2),
        "within the request timeout"
    );
    let ended = tokio::time::timeout(EVENTUALLY, watch.next()).await?;
    ensure!(
        matches!(ended, Some(Err(_)) | None),
        "an open watch ends: {ended:?}"
    );

    K::outage(&mut fx, false).await?;
    let value = serde_json::to_string("2")?;
    eventually("writes to work again", || async {
        anyhow::Ok(put(&fx.kv, &k, &value).await.is_ok())
    })
    .await?;
    eventually("the cache to catch up", || async {
        anyhow::Ok(store.get(&k).is_some_and(|v| *v == "2"))
    })
    .await?;
    cancel.cancel();
    task.await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Typed operations
// ---------------------------------------------------------------------------

async fn units_put_get_list_delete<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let reg = &fx.reg;
    ensure!(reg.unit(&unit_name("a.service")).await?.is_none());
    ensure!(reg.units().await?.items.is_empty());
    let names = ["b.service", "a@1.service", "a-b.service", "a\\x2d.service"];
    let mut last = Revision(0);
    for n in names {
        last = reg.put_unit(&unit(n, TargetState::Launched)).await?;
    }
    let listing = reg.units().await?;
    ensure!(listing.revision >= last);
    let mut want: Vec<&str> = names.to_vec();
    want.sort_unstable();
    let got: Vec<&str> = listing.items.iter().map(|u| u.name.as_str()).collect();
    ensure!(got == want, "sorted by name: {got:?}");

    let a = reg
        .unit(&unit_name("a@1.service"))
        .await?
        .context("a@1 exists")?;
    ensure!(a.value == unit("a@1.service", TargetState::Launched));
    let replaced = reg
        .put_unit(&unit("a@1.service", TargetState::Loaded))
        .await?;
    let a = reg
        .unit(&unit_name("a@1.service"))
        .await?
        .context("still exists")?;
    ensure!(a.value.desired_state == TargetState::Loaded && a.mod_revision == replaced);

    ensure!(reg.delete_unit(&unit_name("a@1.service")).await?);
    ensure!(
        !reg.delete_unit(&unit_name("a@1.service")).await?,
        "deleting twice reports false"
    );
    ensure!(reg.unit(&unit_name("a@1.service")).await?.is_none());
    ensure!(reg.units().await?.items.len() == 3);
    Ok(())
}

async fn units_set_desired_state_conflicts<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let reg = &fx.reg;
    let name = unit_name("web.service");
    reg.put_unit(&unit("web.service", TargetState::Inactive))
        .await?;
    let v1 = reg.unit(&name).await?.context("exists")?;
    let r2 = reg
        .set_desired_state(&name, TargetState::Launched, v1.mod_revision)
        .await?;
    let v2 = reg.unit(&name).await?.context("exists")?;
    ensure!(v2.mod_revision == r2 && v2.value.desired_state == TargetState::Launched);
    ensure!(
        v2.value.options == v1.value.options,
        "only the state changes"
    );

    let stale = reg
        .set_desired_state(&name, TargetState::Loaded, v1.mod_revision)
        .await;
    ensure!(
        matches!(stale, Err(Error::Conflict { .. })),
        "a stale revision conflicts: {stale:?}"
    );
    ensure!(
        reg.unit(&name)
            .await?
            .context("exists")?
            .value
            .desired_state
            == TargetState::Launched
    );

    reg.delete_unit(&name).await?;
    let gone = reg
        .set_desired_state(&name, TargetState::Loaded, v2.mod_revision)
        .await;
    ensure!(
        matches!(gone, Err(Error::NotFound { .. })),
        "a deleted unit is not found: {gone:?}"
    );
    Ok(())
}

async fn schedule_apply_and_read<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let reg = &fx.reg;
    let lease = reg.grant_lease(Duration::from_secs(30)).await?;
    let fence = reg
        .acquire_leadership(&machine("m1"), lease)
        .await?
        .context("the first candidate leads")?;

    reg.apply_schedule(
        &fence,
        &[
            place("u1.service", "m1", false),
            place("g.service", "m1", true),
            place("g.service", "m-1", true),
            place("u2.service", "m-1", false),
            place("u3.service", "m", false),
        ],
    )
    .await?;
    ensure!(reg.target(&unit_name("u1.service")).await? == Some(machine("m1")));
    ensure!(
        reg.target(&unit_name("g.service")).await?.is_none(),
        "global units have no target"
    );
    let targets = reg.targets().await?.items;
    ensure!(
        targets
            == vec![
                (unit_name("u1.service"), machine("m1")),
                (unit_name("u2.service"), machine("m-1")),
                (unit_name("u3.service"), machine("m")),
            ],
        "{targets:?}"
    );
    let m1 = reg.machine_schedule(&machine("m1")).await?.items;
    ensure!(
        m1 == vec![
            (unit_name("g.service"), entry(true)),
            (unit_name("u1.service"), entry(false))
        ],
        "{m1:?}"
    );
    let all: Vec<(String, String)> = reg
        .schedule()
        .await?
        .items
        .into_iter()
        .map(|(m, u, _)| (m.to_string(), u.to_string()))
        .collect();
    let want: Vec<(String, String)> = [
        ("m", "u3.service"),
        ("m-1", "g.service"),
        ("m-1", "u2.service"),
        ("m1", "g.service"),
        ("m1", "u1.service"),
    ]
    .map(|(m, u)| (m.to_owned(), u.to_owned()))
    .to_vec();
    ensure!(all == want, "sorted by (machine, unit): {all:?}");

    // A removal from a machine the target does not name keeps the target.
    reg.apply_schedule(&fence, &[unplace("u1.service", "m-1")])
        .await?;
    ensure!(reg.target(&unit_name("u1.service")).await? == Some(machine("m1")));
    // A move in one go; a put and removal of the same unit leave nothing.
    reg.apply_schedule(
        &fence,
        &[
            unplace("u2.service", "m-1"),
            place("u2.service", "m1", false),
            place("u4.service", "m1", false),
            unplace("u4.service", "m1"),
        ],
    )
    .await?;
    ensure!(reg.target(&unit_name("u2.service")).await? == Some(machine("m1")));
    ensure!(reg.target(&unit_name("u4.service")).await?.is_none());
    let m1: Vec<String> = reg
        .machine_schedule(&machine("m1"))
        .await?
        .items
        .into_iter()
        .map(|(u, _)| u.to_string())
        .collect();
    ensure!(m1 == ["g.service", "u1.service", "u2.service"], "{m1:?}");
    let m_1: Vec<String> = reg
        .machine_schedule(&machine("m-1"))
        .await?
        .items
        .into_iter()
        .map(|(u, _)| u.to_string())
        .collect();
    ensure!(m_1 == ["g.service"], "{m_1:?}");
    // Removing from the target machine clears the target.
    reg.apply_schedule(&fence, &[unplace("u1.service", "m1")])
        .await?;
    ensure!(reg.target(&unit_name("u1.service")).await?.is_none());
    reg.revoke_lease(lease).await?;
    Ok(())
}

async fn schedule_refused_after_leadership_changes<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let reg = &fx.reg;
    let l1 = reg.grant_lease(Duration::from_secs(30)).await?;
    let old = reg
        .acquire_leadership(&machine("m1"), l1)
        .await?
        .context("m1 leads")?;
    reg.apply_schedule(&old, &[place("a.service", "m1", false)])
        .await?;

    // m1's lease goes; m2 takes over.
    reg.revoke_lease(l1).await?;
    let l2 = reg.grant_lease(Duration::from_secs(30)).await?;
    let new = reg
        .acquire_leadership(&machine("m2"), l2)
        .await?
        .context("m2 leads")?;
    ensure!(new.create_revision > old.create_revision);

    let refused = reg
        .apply_schedule(&old, &[place("b.service", "m1", false)])
        .await;
    ensure!(
        matches!(refused, Err(Error::NotLeader)),
        "a deposed leader is refused: {refused:?}"
    );
    let refused = reg.apply_schedule(&old, &[]).await;
    ensure!(
        matches!(refused, Err(Error::NotLeader)),
        "even with nothing to write: {refused:?}"
    );
    let refused = reg
        .apply_schedule(&old, &[unplace("a.service", "m1")])
        .await;
    ensure!(
        matches!(refused, Err(Error::NotLeader)),
        "removals too: {refused:?}"
    );
    ensure!(
        reg.target(&unit_name("b.service")).await?.is_none(),
        "nothing was written"
    );
    ensure!(
        reg.target(&unit_name("a.service")).await? == Some(machine("m1")),
        "nothing was removed"
    );
    ensure!(!reg.is_leader(&old).await? && reg.is_leader(&new).await?);

    reg.apply_schedule(
        &new,
        &[unplace("a.service", "m1"), place("a.service", "m2", false)],
    )
    .await?;
    ensure!(reg.target(&unit_name("a.service")).await? == Some(machine("m2")));
    reg.revoke_lease(l2).await?;
    Ok(())
}

async fn schedule_chunks_large_change_sets<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let reg = &fx.reg;
    let lease = reg.grant_lease(Duration::from_secs(30)).await?;
    let fence = reg
        .acquire_leadership(&machine("m1"), lease)
        .await?
        .context("m1 leads")?;
    // 150 placements are 300 writes: more than etcd takes in one transaction.
    let puts: Vec<ScheduleChange> = (0..150)
        .map(|i| place(&format!("u{i:03}.service"), "m1", false))
        .collect();
    reg.apply_schedule(&fence, &puts).await?;
    ensure!(reg.machine_schedule(&machine("m1")).await?.items.len() == 150);
    ensure!(reg.targets().await?.items.len() == 150);
    let removes: Vec<ScheduleChange> = (0..150)
        .map(|i| unplace(&format!("u{i:03}.service"), "m1"))
        .collect();
    reg.apply_schedule(&fence, &removes).await?;
    ensure!(reg.schedule().await?.items.is_empty());
    ensure!(reg.targets().await?.items.is_empty());
    reg.revoke_lease(lease).await?;
    Ok(())
}

async fn states_publish_list_and_vanish_with_lease<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let reg = &fx.reg;
    let short = reg.grant_lease(Duration::from_secs(1)).await?;
    let long = reg.grant_lease(Duration::from_secs(30)).await?;
    reg.publish_state(short, &state("u1.service", "m1")).await?;
    reg.publish_state(long, &state("u1.service", "m2")).await?;
    reg.publish_state(short, &state("u1-x.service", "m1"))
        .await?;
    reg.publish_state(short, &state("u2.service", "m1")).await?;
    let listed: Vec<(String, String)> = reg
        .unit_states()
        .await?
        .items
        .iter()
        .map(|s| (s.name.to_string(), s.machine_id.to_string()))
        .collect();
    let want: Vec<(String, String)> = [
        ("u1-x.service", "m1"),
        ("u1.service", "m1"),
        ("u1.service", "m2"),
        ("u2.service", "m1"),
    ]
    .map(|(u, m)| (u.to_owned(), m.to_owned()))
    .to_vec();
    ensure!(listed == want, "sorted by (unit, machine): {listed:?}");
    ensure!(
        reg.unit_states_of(&unit_name("u1.service")).await?
            == vec![state("u1.service", "m1"), state("u1.service", "m2")]
    );

    reg.remove_state(&unit_name("u2.service"), &machine("m1"))
        .await?;
    ensure!(
        reg.unit_states_of(&unit_name("u2.service"))
            .await?
            .is_empty()
    );
    let published = reg
        .publish_state(LeaseId(0x7fff_0000_0000_0001), &state("u3.service", "m1"))
        .await;
    ensure!(
        matches!(published, Err(Error::LeaseNotFound(_))),
        "publishing on a missing lease: {published:?}"
    );

    eventually("m1's states to vanish with its lease", || async {
        anyhow::Ok(reg.unit_states().await?.items.len() == 1)
    })
    .await?;
    ensure!(reg.unit_states().await?.items == vec![state("u1.service", "m2")]);
    reg.revoke_lease(long).await?;
    Ok(())
}

async fn machines_register_take_over_and_refuse<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let reg = &fx.reg;
    let l1 = reg.grant_lease(Duration::from_secs(30)).await?;
    reg.register_machine(&machine_record("m1", "10.0.0.1", "token-a"), l1)
        .await?;
    reg.publish_state(l1, &state("u.service", "m1")).await?;
    ensure!(
        reg.machine(&machine("m1")).await? == Some(machine_record("m1", "10.0.0.1", "token-a"))
    );

    // The same fleetd restarted: same token, new lease, takes over at once.
    let l2 = reg.grant_lease(Duration::from_secs(30)).await?;
    reg.register_machine(&machine_record("m1", "10.0.0.2", "token-a"), l2)
        .await?;
    ensure!(
        reg.machine(&machine("m1"))
            .await?
            .context("registered")?
            .public_ip
            == "10.0.0.2"
    );
    ensure!(
        matches!(reg.keep_alive(l1).await, Err(Error::LeaseNotFound(_))),
        "the old lease is revoked"
    );
    ensure!(
        reg.unit_states().await?.items.is_empty(),
        "with the old lease's states"
    );
    ensure!(
        reg.machine(&machine("m1")).await?.is_some(),
        "the record moved to the new lease"
    );

    // Another host with the same machine ID is refused.
    let l3 = reg.grant_lease(Duration::from_secs(30)).await?;
    let refused = reg
        .register_machine(&machine_record("m1", "10.0.0.9", "token-b"), l3)
        .await;
    ensure!(
        matches!(&refused, Err(Error::MachineIdInUse { machine }) if machine == "m1"),
        "{refused:?}"
    );
    let refused = reg
        .update_machine(&machine_record("m1", "10.0.0.9", "token-b"), l3)
        .await;
    ensure!(
        matches!(refused, Err(Error::MachineIdInUse { .. })),
        "{refused:?}"
    );
    reg.update_machine(&machine_record("m1", "10.0.0.3", "token-a"), l2)
        .await?;
    reg.register_machine(&machine_record("m0", "10.0.0.4", "token-c"), l3)
        .await?;
    let ids: Vec<String> = reg
        .machines()
        .await?
        .items
        .iter()
        .map(|m| format!("{}@{}", m.id, m.public_ip))
        .collect();
    ensure!(ids == ["m0@10.0.0.4", "m1@10.0.0.3"], "{ids:?}");

    reg.remove_machine(&machine("m1")).await?;
    ensure!(reg.machine(&machine("m1")).await?.is_none());
    reg.register_machine(&machine_record("m1", "10.0.0.9", "token-b"), l3)
        .await
        .context("a free ID can be taken")?;
    reg.revoke_lease(l2).await?;
    reg.revoke_lease(l3).await?;
    eventually("presence to go with the lease", || async {
        anyhow::Ok(reg.machines().await?.items.is_empty())
    })
    .await?;
    Ok(())
}

async fn machines_dynamic_metadata<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let reg = &fx.reg;
    ensure!(reg.dynamic_metadata().await?.is_empty());
    reg.set_metadata(&machine("m1"), "role", "web").await?;
    reg.set_metadata(&machine("m1"), "zone", "a").await?;
    reg.set_metadata(&machine("m2"), "role", "db").await?;
    reg.set_metadata(&machine("m1"), "role", "api").await?;
    reg.remove_metadata(&machine("m1"), "zone").await?;
    reg.remove_metadata(&machine("m3"), "nothing")
        .await
        .context("removing a missing key is fine")?;
    let all = reg.dynamic_metadata().await?;
    let want = BTreeMap::from([
        (
            machine("m1"),
            BTreeMap::from([("role".to_owned(), "api".to_owned())]),
        ),
        (
            machine("m2"),
            BTreeMap::from([("role".to_owned(), "db".to_owned())]),
        ),
    ]);
    ensure!(all == want, "{all:?}");
    Ok(())
}

async fn leadership_acquire_release_and_expiry<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let reg = &fx.reg;
    ensure!(reg.leader().await?.is_none());
    let la = reg.grant_lease(Duration::from_secs(30)).await?;
    let fa = reg
        .acquire_leadership(&machine("m1"), la)
        .await?
        .context("a free key is taken")?;
    ensure!(fa.lease == la);
    let again = reg
        .acquire_leadership(&machine("m1"), la)
        .await?
        .context("still the leader")?;
    ensure!(again == fa, "the same term: {again:?} vs {fa:?}");

    let lb = reg.grant_lease(Duration::from_secs(1)).await?;
    ensure!(
        reg.acquire_leadership(&machine("m2"), lb).await?.is_none(),
        "a second candidate waits"
    );
    ensure!(
        reg.acquire_leadership(&machine("m1"), lb).await?.is_none(),
        "so does this machine on another lease"
    );
    ensure!(reg.leader().await? == Some(machine("m1")));
    ensure!(reg.is_leader(&fa).await?);

    reg.release_leadership(&fa).await?;
    ensure!(reg.leader().await?.is_none() && !reg.is_leader(&fa).await?);
    let fb = reg
        .acquire_leadership(&machine("m2"), lb)
        .await?
        .context("m2 leads after the release")?;
    reg.release_leadership(&fa)
        .await
        .context("releasing an old term is harmless")?;
    ensure!(
        reg.leader().await? == Some(machine("m2")),
        "an old term's release leaves the new leader"
    );

    // m2 stops keeping its lease alive.
    eventually("m2's leadership to expire", || async {
        anyhow::Ok(reg.leader().await?.is_none())
    })
    .await?;
    ensure!(!reg.is_leader(&fb).await?);
    let fa2 = reg
        .acquire_leadership(&machine("m1"), la)
        .await?
        .context("m1 leads after expiry")?;
    ensure!(fa2.create_revision > fb.create_revision, "a new term");
    reg.revoke_lease(la).await?;
    Ok(())
}

async fn cache_follows_the_store<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let a = fx.key("a");
    put(&fx.kv, &a, "\"1\"").await?;
    put(&fx.kv, &fx.key("bad"), "not json").await?;
    let (reflector, store) =
        Reflector::new(fx.kv.clone(), fx.raw(), registry::json_record::<String>);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(reflector.run(cancel.clone()));
    tokio::time::timeout(EVENTUALLY, store.wait_ready()).await?;
    ensure!(
        store.snapshot().len() == 1 && store.get(&a).is_some_and(|v| *v == "1"),
        "bad values are skipped"
    );

    let lease = fx.kv.grant(Duration::from_secs(1)).await?;
    write(
        &fx.kv,
        vec![put_op(&fx.key("leased"), "\"x\"", Some(lease))],
    )
    .await?;
    put(&fx.kv, &a, "\"2\"").await?;
    let r = put(&fx.kv, &fx.key("b"), "\"3\"").await?;
    let mut changed = store.subscribe();
    tokio::time::timeout(EVENTUALLY, changed.wait_for(|rev| *rev >= r)).await??;
    let snapshot = store.snapshot();
    let got: Vec<(String, String)> = snapshot
        .iter()
        .map(|(k, v)| (k.clone(), (**v).clone()))
        .collect();
    let want: Vec<(String, String)> = vec![
        (a.clone(), "2".into()),
        (fx.key("b"), "3".into()),
        (fx.key("leased"), "x".into()),
    ];
    ensure!(got == want, "{got:?}");
    eventually("the leased key to leave the cache", || async {
        anyhow::Ok(store.get(&fx.key("leased")).is_none())
    })
    .await?;
    ensure!(snapshot.len() == 3, "an old snapshot does not change");
    cancel.cancel();
    task.await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Listings of any size
// ---------------------------------------------------------------------------

/// A unit whose record is about `kib` KiB: `kib` lines of 1000 characters
/// in an `[X-Pad]` section (systemd ignores `X-` sections).
fn big_unit(name: &str, kib: usize) -> UnitRecord {
    let mut record = unit(name, TargetState::Launched);
    record.options.extend((0..kib).map(|i| units::UnitOption {
        section: "X-Pad".into(),
        name: format!("Pad{i}"),
        value: "x".repeat(1000),
    }));
    record
}

async fn large_values_list_and_watch_beyond_the_message_limit<K: Backend>(
    fx: Fx<K>,
) -> anyhow::Result<()> {
    // Six units of ~900 KiB: each within etcd's 1.5 MiB request limit,
    // together more than a gRPC client accepts by default (4 MiB).
    let reg = &fx.reg;
    let (_, start) = fx.kv.get(&fx.key("nothing")).await?;
    let names: Vec<String> = (0..6).map(|i| format!("big{i}.service")).collect();
    let mut want = Vec::new();
    for n in &names {
        let record = big_unit(n, 900);
        reg.put_unit(&record).await?;
        want.push(record);
    }
    let listing = reg.units().await?;
    ensure!(
        listing.items == want,
        "the listing holds every unit, whole: {} of {}",
        listing.items.len(),
        want.len()
    );

    // A watch replaying them in one catch-up batch of ~5.4 MiB.
    let mut stream = fx
        .kv
        .watch(&reg.keys().units_prefix(), start.next())
        .await?;
    let events = next_events(&mut stream, names.len()).await?;
    ensure!(
        events
            .iter()
            .all(|e| e.kind == EventKind::Put && e.kv.value.len() > 900_000),
        "every big value arrives whole"
    );
    drop(stream);

    // A catch-up batch larger than etcd's limit (a 1 MiB value, then a
    // transaction of two 700 KiB values) comes in fragments, split by etcd
    // inside the transaction's revision: it must be delivered whole.
    let small = fx.key("small");
    let r_small = write(&fx.kv, vec![put_op(&small, &"s".repeat(1 << 20), None)])
        .await?
        .revision;
    let pair = [fx.key("pair1"), fx.key("pair2")];
    let r_pair = write(
        &fx.kv,
        pair.iter()
            .map(|k| put_op(k, &"p".repeat(700 << 10), None))
            .collect(),
    )
    .await?
    .revision;
    let mut stream = fx.kv.watch(&fx.raw(), r_small).await?;
    let mut seen = 0;
    while seen < 3 {
        let item = tokio::time::timeout(EVENTUALLY, stream.next())
            .await
            .context("waiting for the fragmented batch")?;
        let (batch, _) = match item {
            Some(Ok(batch)) => batch,
            Some(Err(e)) => bail!("watch failed: {e}"),
            None => bail!("watch ended"),
        };
        let of_pair = batch
            .iter()
            .filter(|e| e.kv.mod_revision == r_pair.0)
            .count();
        ensure!(
            of_pair == 0 || of_pair == 2,
            "a batch holds {of_pair} of the 2 events of one revision"
        );
        seen += batch.len();
    }
    drop(stream);

    // A cache lists them (the engine's relist) and follows a change.
    let (reflector, store) = Reflector::new(
        fx.kv.clone(),
        reg.keys().units_prefix(),
        registry::json_record::<UnitRecord>,
    );
    let cancel = CancellationToken::new();
    let task = tokio::spawn(reflector.run(cancel.clone()));
    tokio::time::timeout(EVENTUALLY, store.wait_ready())
        .await
        .context("the cache of big units never listed")?;
    ensure!(store.snapshot().len() == names.len());
    let r = reg.put_unit(&big_unit("big9.service", 1200)).await?;
    let mut changed = store.subscribe();
    tokio::time::timeout(EVENTUALLY, changed.wait_for(|rev| *rev >= r)).await??;
    ensure!(store.snapshot().len() == names.len() + 1);
    cancel.cancel();
    task.await?;
    Ok(())
}

async fn thousands_of_units_list_completely<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    // 3000 units of ~4 KiB: ~12 MiB in all, three times the default limit
    // on one gRPC message.
    let reg = &fx.reg;
    let n = 3000;
    let records: Vec<UnitRecord> = (0..n)
        .map(|i| big_unit(&format!("u{i:05}.service"), 4))
        .collect();
    let ops: Vec<Op> = records
        .iter()
        .map(|r| Op::Put {
            key: reg.keys().unit(&r.name),
            value: serde_json::to_vec(r).expect("unit records serialize"),
            lease: None,
        })
        .collect();
    for chunk in ops.chunks(64) {
        write(&fx.kv, chunk.to_vec()).await?;
    }
    let listing = reg.units().await?;
    ensure!(
        listing.items.len() == n,
        "listed {} of {n}",
        listing.items.len()
    );
    ensure!(listing.items == records, "every unit, in order, whole");
    let (kvs, revision) = fx.kv.list(&reg.keys().units_prefix()).await?;
    ensure!(kvs.len() == n && revision >= listing.revision);
    Ok(())
}

// ---------------------------------------------------------------------------
// Data fleet did not write
// ---------------------------------------------------------------------------

/// How many invalid values the process has counted, by kind.
fn invalid_counts() -> BTreeMap<&'static str, u64> {
    fleetd::registry::invalid_value_counts()
}

async fn invalid_values_are_skipped_by_every_read<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let reg = &fx.reg;
    let keys = reg.keys().clone();
    let before = invalid_counts();
    let (m1, m2) = (machine("m1"), machine("m2"));
    let good = unit_name("good.service");

    // What fleet writes.
    reg.put_unit(&unit("good.service", TargetState::Launched))
        .await?;
    let lease = reg.grant_lease(Duration::from_secs(30)).await?;
    reg.register_machine(&machine_record("m1", "10.0.0.1", "t1"), lease)
        .await?;
    reg.publish_state(lease, &state("good.service", "m1"))
        .await?;
    reg.set_metadata(&m1, "role", "web").await?;
    let fence = reg
        .acquire_leadership(&m1, lease)
        .await?
        .context("the leader key is free")?;
    reg.apply_schedule(&fence, &[place("good.service", "m1", false)])
        .await?;

    // What someone else wrote, beside it: garbage, JSON of the wrong
    // types, bytes that are not UTF-8, records that contradict their key.
    let p = keys.prefix();
    let other_unit = serde_json::to_vec(&unit("good.service", TargetState::Inactive))?;
    let other_state = serde_json::to_vec(&state("good.service", "m1"))?;
    let bad: Vec<(String, &[u8])> = vec![
        (format!("{p}units/garbage.service"), b"{not json"),
        (
            format!("{p}units/types.service"),
            br#"{"name":5,"desiredState":[],"options":{}}"#,
        ),
        (format!("{p}units/bytes.service"), b"\xff\xfe\x00"),
        (format!("{p}units/other.service"), &other_unit),
        (format!("{p}units/not-a-unit-name"), b"{}"),
        (format!("{p}machines/m2"), b"{\"ID\":17}"),
        (
            format!("{p}machines/m3"),
            br#"{"ID":"m1","PublicIP":"1.2.3.4"}"#,
        ),
        (format!("{p}states/good.service/m2"), b"garbage"),
        (format!("{p}states/good.service/m3"), &other_state),
        (
            format!("{p}schedule/m1/bad.service"),
            br#"{"desiredState":"exploded"}"#,
        ),
        (format!("{p}schedule/m1/junk"), b"[]"),
        (format!("{p}targets/bad.service"), b"\xff"),
        (format!("{p}targets/spaces.service"), b"not a machine id"),
        (format!("{p}metadata/m1/bytes"), b"\xc3\x28"),
        (format!("{p}metadata/junk"), b"x"),
    ];
    for (key, value) in &bad {
        ensure!(K::put_raw(&fx, key.as_bytes(), value).await?);
    }
    // Keys that are not UTF-8 (etcd only), one at the end of a listing's
    // first page (16 keys) and a valid key sorting between its bytes and
    // its lossy rendering, which paging must not skip.
    let mut raw_key = format!("{p}units/").into_bytes();
    raw_key.extend_from_slice(b"\x80.service");
    let raw_units = K::put_raw(&fx, &raw_key, b"{}").await?;
    let mut raw_machine = format!("{p}machines/").into_bytes();
    raw_machine.extend_from_slice(b"m\xff");
    K::put_raw(&fx, &raw_machine, b"{}").await?;
    let paging = fx.raw();
    let mut want_paged = Vec::new();
    for i in 0..15 {
        let k = format!("{paging}a{i:02}");
        put(&fx.kv, &k, "v").await?;
        want_paged.push(k);
    }
    let mut after_bytes = format!("{paging}a14").into_bytes();
    after_bytes.push(0x80);
    K::put_raw(&fx, &after_bytes, b"v").await?;
    for k in [format!("{paging}a14\u{e9}"), format!("{paging}a15")] {
        put(&fx.kv, &k, "v").await?;
        want_paged.push(k);
    }
    want_paged.sort();

    // Every read sees exactly what fleet wrote.
    let units = reg.units().await?.items;
    ensure!(
        units.len() == 1 && units[0].name == good,
        "units: {:?}",
        units.iter().map(|u| u.name.to_string()).collect::<Vec<_>>()
    );
    ensure!(reg.unit(&good).await?.is_some());
    for name in [
        "garbage.service",
        "types.service",
        "bytes.service",
        "other.service",
    ] {
        ensure!(
            reg.unit(&unit_name(name)).await?.is_none(),
            "{name} reads as absent"
        );
    }
    let garbage = unit_name("garbage.service");
    let (stored, _) = fx.kv.get(&keys.unit(&garbage)).await?;
    let at = Revision(stored.context("the garbage unit is stored")?.mod_revision);
    let err = reg
        .set_desired_state(&garbage, TargetState::Loaded, at)
        .await;
    ensure!(
        matches!(err, Err(Error::NotFound { .. })),
        "changing a garbage unit: {err:?}"
    );
    let machines = reg.machines().await?.items;
    ensure!(
        machines.len() == 1 && machines[0].id == m1,
        "machines: {machines:?}"
    );
    ensure!(reg.machine(&m2).await?.is_none());
    let states = reg.unit_states().await?.items;
    ensure!(
        states == vec![state("good.service", "m1")],
        "states: {states:?}"
    );
    ensure!(reg.unit_states_of(&good).await? == vec![state("good.service", "m1")]);
    let schedule = reg.schedule().await?.items;
    ensure!(
        schedule == vec![(m1.clone(), good.clone(), entry(false))],
        "schedule: {schedule:?}"
    );
    ensure!(reg.machine_schedule(&m1).await?.items == vec![(good.clone(), entry(false))]);
    ensure!(reg.targets().await?.items == vec![(good.clone(), m1.clone())]);
    ensure!(reg.target(&unit_name("bad.service")).await?.is_none());
    let metadata = reg.dynamic_metadata().await?;
    ensure!(
        metadata.len() == 1
            && metadata[&m1] == BTreeMap::from([("role".to_owned(), "web".to_owned())]),
        "metadata: {metadata:?}"
    );
    let (paged, _) = fx.kv.list(&paging).await?;
    let paged: Vec<String> = paged.into_iter().map(|kv| kv.key).collect();
    ensure!(
        paged == want_paged,
        "paging past a non-UTF-8 key: {paged:?}"
    );

    // A cache of the whole registry (the engine's and agents' view) too.
    let (reflector, store) =
        Reflector::new(fx.kv.clone(), keys.prefix(), whole_registry(keys.clone()));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(reflector.run(cancel.clone()));
    tokio::time::timeout(EVENTUALLY, store.wait_ready()).await?;
    let cached: Vec<String> = store.snapshot().keys().cloned().collect();
    let want_cached = vec![
        keys.leader(),
        keys.machine(&m1),
        keys.metadata(&m1, "role"),
        keys.scheduled(&m1, &good),
        keys.state(&good, &m1),
        keys.target(&good),
        keys.unit(&good),
    ];
    let mut want_sorted = want_cached.clone();
    want_sorted.sort();
    ensure!(cached == want_sorted, "cached: {cached:?}");
    // A bad value arriving by watch is skipped too, the good one kept.
    let r = write(
        &fx.kv,
        vec![put_op(&keys.unit(&unit_name("late.service")), "{", None)],
    )
    .await?
    .revision;
    let mut changed = store.subscribe();
    tokio::time::timeout(EVENTUALLY, changed.wait_for(|rev| *rev >= r)).await??;
    ensure!(store.snapshot().len() == want_cached.len());
    cancel.cancel();
    task.await?;

    // A machine key holding garbage belongs to nobody: registration takes it.
    let lease2 = reg.grant_lease(Duration::from_secs(30)).await?;
    reg.register_machine(&machine_record("m2", "10.0.0.2", "t2"), lease2)
        .await
        .context("registering over a garbage machine record")?;
    ensure!(reg.machine(&m2).await?.is_some_and(|r| r.token == "t2"));

    // Everything skipped was counted, by kind.
    let after = invalid_counts();
    let grew = |kind: &str, n: u64| {
        let was = before.get(kind).copied().unwrap_or(0);
        let now = after.get(kind).copied().unwrap_or(0);
        now >= was + n
    };
    for (kind, n) in [
        ("unit", 5),
        ("machine", 2),
        ("state", 2),
        ("schedule", 2),
        ("target", 2),
        ("metadata", 2),
    ] {
        ensure!(
            grew(kind, n),
            "{kind}: counted {:?} → {:?}",
            before.get(kind),
            after.get(kind)
        );
    }
    ensure!(
        !raw_units || grew("unit", 6),
        "a non-UTF-8 key is counted: {before:?} → {after:?}"
    );
    reg.revoke_lease(lease).await?;
    reg.revoke_lease(lease2).await?;
    Ok(())
}

async fn leadership_takes_over_stale_keys<K: Backend>(fx: Fx<K>) -> anyhow::Result<()> {
    let reg = &fx.reg;
    let leader_key = reg.keys().leader();
    let before = invalid_counts().get("leader").copied().unwrap_or(0);
    let lease = reg.grant_lease(Duration::from_secs(30)).await?;

    // `etcdctl put` of a plausible machine ID without a lease, of garbage,
    // of bytes that are not UTF-8: never a leader, always taken over.
    for value in [&b"m9"[..], b"{\"leader\":true}", b"\xff\xfe"] {
        ensure!(K::put_raw(&fx, leader_key.as_bytes(), value).await?);
        ensure!(reg.leader().await?.is_none(), "{value:?} names no leader");
        let fence = reg
            .acquire_leadership(&machine("m1"), lease)
            .await?
            .with_context(|| format!("a stale leader key {value:?} is taken over"))?;
        ensure!(reg.leader().await? == Some(machine("m1")));
        ensure!(reg.is_leader(&fence).await?);
        reg.release_leadership(&fence).await?;
    }

    // Garbage on a live lease is stale too.
    let other = reg.grant_lease(Duration::from_secs(30)).await?;
    write(&fx.kv, vec![put_op(&leader_key, "not an id!", Some(other))]).await?;
    let f = reg
        .acquire_leadership(&machine("m1"), lease)
        .await?
        .context("garbage on a lease is taken over")?;
    reg.release_leadership(&f).await?;

    // A real term overwritten in place without a lease: the old fence
    // still matches the key until it is cleared; the next term is a new
    // one and the old fence fails.
    let fa = reg
        .acquire_leadership(&machine("m1"), lease)
        .await?
        .context("m1 leads")?;
    put(&fx.kv, &leader_key, "m1").await?;
    ensure!(
        !reg.is_leader(&fa).await?,
        "a term whose key left its lease is over"
    );
    let lb = reg.grant_lease(Duration::from_secs(30)).await?;
    let fb = reg
        .acquire_leadership(&machine("m2"), lb)
        .await?
        .context("m2 takes over the lease-less key")?;
    ensure!(fb.create_revision > fa.create_revision, "a new term");
    ensure!(!reg.is_leader(&fa).await?, "the old term is over");
    let refused = reg
        .apply_schedule(&fa, &[place("x.service", "m1", false)])
        .await;
    ensure!(matches!(refused, Err(Error::NotLeader)), "{refused:?}");

    // A healthy leader is never taken over.
    ensure!(
        reg.acquire_leadership(&machine("m1"), lease)
            .await?
            .is_none()
    );
    ensure!(reg.leader().await? == Some(machine("m2")));

    let after = invalid_counts().get("leader").copied().unwrap_or(0);
    ensure!(
        after >= before + 5,
        "stale leader keys counted: {before} → {after}"
    );
    for l in [lease, other, lb] {
        reg.revoke_lease(l).await?;
    }
    Ok(())
}
