//! [`MemKv`]: an in-memory store that behaves like etcd v3 where fleet looks.
//!
//! It keeps what etcd keeps, in miniature: one global revision counter bumped
//! once per write transaction (never by reads, failed compares or deletes of
//! missing keys), per-key `create_revision`/`mod_revision`/lease, leases with
//! TTLs, an event history for watches that start in the past, and a compaction
//! point below which history is gone.
//!
//! Design choices and their costs:
//! - **Time** is tokio time ([`tokio::time::Instant`]), so tests can
//!   `time::pause()` and `advance()` through lease expiry. Expiry is checked
//!   lazily at the start of every operation and by a sweeper task (spawned on
//!   the first grant, exits when no lease is left) that sleeps until the next
//!   deadline, so watchers see the delete events of an expired lease without
//!   anyone calling in. TTLs are rounded up to whole seconds, at least 1 s,
//!   as etcd does; expiry is exact (etcd may be up to ~0.5 s late).
//! - **Reads in the past**: `range(.., at: Some(rev))` works for any revision
//!   between the compaction point and now, by undoing the history after `rev`
//!   on a copy of the current keys. It costs O(events since `rev`); fine for
//!   tests. Older revisions fail with `Compacted`, future ones are `Rejected`.
//! - **History** is kept until [`MemKv::compact`], and at most
//!   [`MemKv::with_history_limit`] events (default 100 000): beyond that the
//!   oldest revisions are compacted automatically, as an etcd with
//!   auto-compaction would.
//! - **Watches** never block writers: each watcher has a bounded buffer
//!   (default 1024 batches, see [`MemKv::with_watch_buffer`]) filled under the
//!   store lock with `try_send`. One slot is always kept free; when a slow
//!   consumer lets the buffer fill up, that slot carries a final
//!   `Err(Compacted)` and the stream ends, exactly as etcd cancels a watcher
//!   that fell behind compaction. The consumer relists, as it must anyway.
//!   Progress notifications are not sent (every change is delivered at once).
//! - **Transactions** are validated like etcd's: at most 128 operations per
//!   branch, no key put twice in a branch or put inside a deleted range
//!   (`Rejected`), a put on a missing lease fails the whole transaction with
//!   `LeaseNotFound`, gets see the writes made earlier in the same branch.
//! - **Outages** are simulated with [`MemKv::fail_next`] (the next `n`
//!   operations fail) and [`MemKv::set_unavailable`] (every operation fails
//!   and every open watch ends with `Unavailable`, as a lost connection does).
//!   Leases keep expiring meanwhile, as they would on the real server.
//!
//! The state sits behind one `std::sync::Mutex`: no operation awaits while
//! holding it, so a blocking mutex is both correct and cheapest.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::kv::{
    Compare, Event, EventKind, KeyValue, Kv, LeaseId, Op, RangePage, RangeRequest, Txn,
    TxnResponse, WatchStream,
};
use super::{Cause, Error, Result, Revision};

/// etcd's default `--max-txn-ops`: the most operations one branch of a
/// transaction may hold.
pub const MAX_TXN_OPS: usize = 128;

/// Default per-watcher buffer, in batches.
const DEFAULT_WATCH_BUFFER: usize = 1024;

/// Default number of history events kept before auto-compaction.
const DEFAULT_HISTORY_LIMIT: usize = 100_000;

/// The in-memory store. Cheap to clone; clones share the same data.
#[derive(Clone)]
pub struct MemKv {
    /// The store, shared by every clone and (weakly) by the lease sweeper.
    shared: Arc<Shared>,
}

/// What the clones share.
struct Shared {
    /// Everything, behind a blocking mutex never held across an await.
    state: Mutex<State>,
    /// Wakes the lease sweeper when a lease appears whose deadline may be
    /// earlier than the one it sleeps towards.
    sweeper_wake: Notify,
}

/// The store proper.
struct State {
    /// The current revision (1 for an empty store, as in etcd).
    revision: i64,
    /// The oldest revision still readable and watchable (0: never compacted).
    compact_revision: i64,
    /// The live keys.
    data: BTreeMap<String, Stored>,
    /// The live leases, by ID.
    leases: HashMap<i64, Lease>,
    /// The ID the next grant gets.
    next_lease: i64,
    /// Every event since the compaction point, oldest first, with the key's
    /// previous value so past revisions can be reconstructed.
    history: VecDeque<HistoryEntry>,
    /// How many history events to keep before compacting automatically.
    history_limit: usize,
    /// Open watches.
    watchers: Vec<Watcher>,
    /// Per-watcher buffer size, in batches (one more slot is reserved for the
    /// final error).
    watch_buffer: usize,
    /// Operations left to fail (see [`MemKv::fail_next`]).
    fail_next: u32,
    /// Every operation fails while set (see [`MemKv::set_unavailable`]).
    unavailable: bool,
    /// A sweeper task is alive (it clears this when it exits).
    sweeper_running: bool,
}

/// One live key.
#[derive(Clone)]
struct Stored {
    /// The value.
    value: Vec<u8>,
    /// Revision of the put that created it.
    create_revision: i64,
    /// Revision of its last put.
    mod_revision: i64,
    /// The lease it is attached to.
    lease: Option<LeaseId>,
}

/// One live lease.
struct Lease {
    /// The granted TTL (whole seconds).
    ttl: Duration,
    /// When it expires unless kept alive.
    deadline: Instant,
    /// The keys attached to it, deleted when it goes.
    keys: BTreeSet<String>,
}

/// One recorded change.
struct HistoryEntry {
    /// The event as watchers see it.
    event: Event,
    /// The key before the change (`None`: it did not exist).
    prev: Option<KeyValue>,
}

/// One open watch.
struct Watcher {
    /// Keys it sees.
    prefix: String,
    /// The first revision it wants (earlier events are not sent).
    from: i64,
    /// Its buffer; dropping the sender ends the stream.
    tx: mpsc::Sender<Result<(Vec<Event>, Revision)>>,
}

/// The cause carried by `Unavailable` errors that [`MemKv`] simulates.
#[derive(Debug)]
struct SimulatedOutage;

impl fmt::Display for SimulatedOutage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("simulated outage of the in-memory store")
    }
}

impl std::error::Error for SimulatedOutage {}

fn rejected(op: &str, why: impl Into<String>) -> Error {
    Error::Rejected {
        op: op.to_owned(),
        source: Box::new(Cause(why.into())),
    }
}

fn outage(op: &str) -> Error {
    Error::Unavailable {
        op: op.to_owned(),
        source: Box::new(SimulatedOutage),
    }
}

impl Default for MemKv {
    fn default() -> Self {
        MemKv::new()
    }
}

impl fmt::Debug for MemKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("MemKv")
            .field("revision", &st.revision)
            .field("keys", &st.data.len())
            .field("leases", &st.leases.len())
            .field("watchers", &st.watchers.len())
            .finish()
    }
}

impl MemKv {
    /// An empty store at revision 1.
    pub fn new() -> Self {
        MemKv {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    revision: 1,
                    compact_revision: 0,
                    data: BTreeMap::new(),
                    leases: HashMap::new(),
                    next_lease: 0x6d65_6d00_0000_0001,
                    history: VecDeque::new(),
                    history_limit: DEFAULT_HISTORY_LIMIT,
                    watchers: Vec::new(),
                    watch_buffer: DEFAULT_WATCH_BUFFER,
                    fail_next: 0,
                    unavailable: false,
                    sweeper_running: false,
                }),
                sweeper_wake: Notify::new(),
            }),
        }
    }

    /// Give watches opened from now on a buffer of `batches` (at least 1)
    /// before they overflow and end with `Compacted`.
    pub fn with_watch_buffer(self, batches: usize) -> Self {
        self.lock().watch_buffer = batches.max(1);
        self
    }

    /// Keep at most `events` history events (at least 1) before compacting
    /// the oldest revisions automatically.
    pub fn with_history_limit(self, events: usize) -> Self {
        let mut st = self.lock();
        st.history_limit = events.max(1);
        st.trim_history();
        drop(st);
        self
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        Revision(self.lock().revision)
    }

    /// Discard history before `rev`, as etcd's compaction does: reads at and
    /// watches from earlier revisions fail with `Compacted` from now on.
    /// Compacting to a future revision is `Rejected`.
    pub fn compact(&self, rev: Revision) -> Result<()> {
        let mut st = self.lock();
        if rev.0 > st.revision {
            return Err(rejected(
                "compacting",
                format!("revision {rev} is in the future (current {})", st.revision),
            ));
        }
        st.compact_to(rev.0);
        Ok(())
    }

    /// Make the next `n` operations fail with `Unavailable`.
    pub fn fail_next(&self, n: u32) {
        self.lock().fail_next = n;
    }

    /// Start (`true`) or end (`false`) a simulated outage. Starting one ends
    /// every open watch with `Unavailable`; operations fail until it ends.
    pub fn set_unavailable(&self, unavailable: bool) {
        let mut st = self.lock();
        st.unavailable = unavailable;
        if unavailable {
            for w in std::mem::take(&mut st.watchers) {
                // One slot is always free for this (see `notify_watchers`).
                let _ =
                    w.tx.try_send(Err(outage(&format!("watching {}", w.prefix))));
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Lock for operation `op`: fail it if an outage is simulated, then
    /// expire what is due.
    fn begin(&self, op: &str) -> Result<MutexGuard<'_, State>> {
        let mut st = self.lock();
        if st.unavailable {
            return Err(outage(op));
        }
        if st.fail_next > 0 {
            st.fail_next -= 1;
            return Err(outage(op));
        }
        st.expire(Instant::now());
        Ok(st)
    }

    /// Make sure a sweeper will expire leases on time.
    fn ensure_sweeper(&self, st: &mut State) {
        if st.sweeper_running {
            self.shared.sweeper_wake.notify_one();
            return;
        }
        st.sweeper_running = true;
        tokio::spawn(sweep(Arc::downgrade(&self.shared)));
    }
}

/// The lease sweeper: sleeps until the next lease deadline (or a wake-up),
/// expires what is due, and exits when no lease is left or the store is gone.
async fn sweep(shared: Weak<Shared>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let deadline = {
            let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.expire(Instant::now());
            match st.leases.values().map(|l| l.deadline).min() {
                Some(d) => d,
                None => {
                    st.sweeper_running = false;
                    return;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = shared.sweeper_wake.notified() => {}
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// when there is none (the prefix is empty or all `0xff`).
fn prefix_end(prefix: &str) -> Option<String> {
    // Keys are strings; the successor of the prefix in string order is the
    // prefix with its last character incremented (skipping surrogates).
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let next = (c as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The keys under `prefix` as a range bound pair.
fn prefix_range(prefix: &str) -> (Bound<String>, Bound<String>) {
    let start = Bound::Included(prefix.to_owned());
    let end = prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded);
    (start, end)
}

fn ttl_of(ttl: Duration) -> Duration {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

impl State {
    fn kv(key: &str, s: &Stored) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: s.value.clone(),
            create_revision: s.create_revision,
            mod_revision: s.mod_revision,
            lease: s.lease,
        }
    }

    /// Revoke every lease whose deadline has passed, oldest deadline first.
    fn expire(&mut self, now: Instant) {
        let mut due: Vec<(Instant, i64)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, l)| (l.deadline, *id))
            .collect();
        due.sort_unstable();
        for (_, id) in due {
            self.revoke(id);
        }
    }

    /// Remove a lease and delete its keys in one revision.
    fn revoke(&mut self, id: i64) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        let mut w = Write::new(self);
        for key in &lease.keys {
            w.delete(key);
        }
        w.commit();
        true
    }

    /// Drop history before `rev` and refuse older reads and watches.
    fn compact_to(&mut self, rev: i64) {
        if rev <= self.compact_revision {
            return;
        }
        self.compact_revision = rev;
        while self
            .history
            .front()
            .is_some_and(|h| h.event.kv.mod_revision < rev)
        {
            self.history.pop_front();
        }
    }

    /// Compact whole revisions away until the history fits its limit.
    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            let Some(oldest) = self.history.front().map(|h| h.event.kv.mod_revision) else {
                return;
            };
            self.compact_to(oldest + 1);
        }
    }

    /// The keys under `prefix` as they were at `at` (or now).
    fn view(
        &self,
        op: &str,
        prefix: &str,
        at: Option<Revision>,
    ) -> Result<BTreeMap<String, KeyValue>> {
        let mut view: BTreeMap<String, KeyValue> = self
            .data
            .range::<String, _>(prefix_range(prefix))
            .map(|(k, s)| (k.clone(), State::kv(k, s)))
            .collect();
        let Some(at) = at.map(|r| r.0).filter(|&r| r > 0 && r != self.revision) else {
            return Ok(view);
        };
        if at > self.revision {
            return Err(rejected(
                op,
                format!(
                    "revision {at} is a future revision (current {})",
                    self.revision
                ),
            ));
        }
        if at < self.compact_revision {
            return Err(Error::Compacted {
                requested: at,
                compact_revision: self.compact_revision,
            });
        }
        for h in self.history.iter().rev() {
            if h.event.kv.mod_revision <= at {
                break;
            }
            if !h.event.kv.key.starts_with(prefix) {
                continue;
            }
            match &h.prev {
                Some(prev) => view.insert(prev.key.clone(), prev.clone()),
                None => view.remove(&h.event.kv.key),
            };
        }
        Ok(view)
    }

    fn compare(&self, c: &Compare) -> bool {
        match c {
            Compare::CreateRevision(key, rev) => {
                self.data.get(key).map_or(0, |s| s.create_revision) == *rev
            }
            Compare::ModRevision(key, rev) => {
                self.data.get(key).map_or(0, |s| s.mod_revision) == *rev
            }
            Compare::Value(key, value) => self.data.get(key).is_some_and(|s| s.value == *value),
        }
    }

    /// Deliver one revision's events to every interested watcher, ending the
    /// streams of watchers whose buffer is full or whose consumer is gone.
    fn notify_watchers(&mut self, events: &[Event], rev: i64) {
        self.watchers.retain(|w| {
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| e.kv.mod_revision >= w.from && e.kv.key.starts_with(&w.prefix))
                .cloned()
                .collect();
            if mine.is_empty() {
                return !w.tx.is_closed();
            }
            if w.tx.capacity() <= 1 {
                // Keep the last slot for this: the consumer must relist.
                let _ = w.tx.try_send(Err(Error::Compacted {
                    requested: rev,
                    compact_revision: rev + 1,
                }));
                return false;
            }
            w.tx.try_send(Ok((mine, Revision(rev)))).is_ok()
        });
    }
}

/// Validate one branch of a transaction as etcd does.
fn check_branch(ops: &[Op]) -> Result<(), String> {
    if ops.len() > MAX_TXN_OPS {
        return Err(format!(
            "too many operations in txn request ({} > {MAX_TXN_OPS})",
            ops.len()
        ));
    }
    let mut puts = BTreeSet::new();
    let mut deleted: Vec<(&str, bool)> = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, .. } => {
                if !puts.insert(key.as_str()) {
                    return Err(format!("duplicate key {key:?} given in txn request"));
                }
            }
            Op::Delete { key } => deleted.push((key, false)),
            Op::DeletePrefix { prefix } => deleted.push((prefix, true)),
            Op::Get { .. } => {}
        }
    }
    for key in puts {
        let hit = deleted.iter().any(|&(d, is_prefix)| {
            if is_prefix {
                key.starts_with(d)
            } else {
                key == d
            }
        });
        if hit {
            return Err(format!("duplicate key {key:?} given in txn request"));
        }
    }
    Ok(())
}

/// One write transaction in progress: every change gets the same revision,
/// which is committed only if something changed.
struct Write<'a> {
    /// The store.
    st: &'a mut State,
    /// The revision the changes get.
    rev: i64,
    /// The changes so far, in order.
    events: Vec<HistoryEntry>,
}

impl<'a> Write<'a> {
    fn new(st: &'a mut State) -> Self {
        let rev = st.revision + 1;
        Write {
            st,
            rev,
            events: Vec::new(),
        }
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) {
        let prev = self.st.data.get(key).map(|s| State::kv(key, s));
        if let Some(l) = prev
            .as_ref()
            .and_then(|p| p.lease)
            .and_then(|old| self.st.leases.get_mut(&old.0))
        {
            l.keys.remove(key);
        }
        if let Some(l) = lease.and_then(|new| self.st.leases.get_mut(&new.0)) {
            l.keys.insert(key.to_owned());
        }
        let stored = Stored {
            value,
            create_revision: prev.as_ref().map_or(self.rev, |p| p.create_revision),
            mod_revision: self.rev,
            lease,
        };
        let event = Event {
            kind: EventKind::Put,
            kv: State::kv(key, &stored),
        };
        self.st.data.insert(key.to_owned(), stored);
        self.events.push(HistoryEntry { event, prev });
    }

    /// Delete one key; whether it existed.
    fn delete(&mut self, key: &str) -> bool {
        let Some(old) = self.st.data.remove(key) else {
            return false;
        };
        if let Some(l) = old.lease.and_then(|id| self.st.leases.get_mut(&id.0)) {
            l.keys.remove(key);
        }
        let event = Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_owned(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: self.rev,
                lease: None,
            },
        };
        self.events.push(HistoryEntry {
            event,
            prev: Some(State::kv(key, &old)),
        });
        true
    }

    fn delete_prefix(&mut self, prefix: &str) -> i64 {
        let keys: Vec<String> = self
            .st
            .data
            .range::<String, _>(prefix_range(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.delete(k);
        }
        i64::try_from(keys.len()).unwrap_or(i64::MAX)
    }

    /// Record the changes (if any) at the new revision and tell watchers.
    fn commit(self) {
        if self.events.is_empty() {
            return;
        }
        let rev = self.rev;
        self.st.revision = rev;
        let events: Vec<Event> = self.events.iter().map(|h| h.event.clone()).collect();
        self.st.history.extend(self.events);
        self.st.trim_history();
        self.st.notify_watchers(&events, rev);
    }
}

impl Kv for MemKv {
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)> {
        let st = self.begin(&format!("reading {key}"))?;
        Ok((
            st.data.get(key).map(|s| State::kv(key, s)),
            Revision(st.revision),
        ))
    }

    async fn read_range(&self, req: RangeRequest<'_>) -> Result<RangePage> {
        let (prefix, at) = (req.prefix, req.at);
        let op = format!("reading {prefix}");
        let st = self.begin(&op)?;
        let view = st.view(&op, prefix, at)?;
        let start = req
            .after
            .map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit
        };
        let mut iter = view
            .range::<String, _>((start, Bound::Unbounded))
            .map(|(_, kv)| kv.clone());
        let kvs: Vec<KeyValue> = iter.by_ref().take(limit).collect();
        let more = iter.next().is_some();
        let revision = at.filter(|r| r.0 > 0).unwrap_or(Revision(st.revision));
        Ok(RangePage {
            kvs,
            more,
            revision,
        })
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let op = format!("listing {prefix}");
        let st = self.begin(&op)?;
        let view = st.view(&op, prefix, None)?;
        Ok((view.into_values().collect(), Revision(st.revision)))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let op = "running a transaction";
        let mut st = self.begin(op)?;
        if txn.compares.len() > MAX_TXN_OPS {
            return Err(rejected(op, "too many compares in txn request"));
        }
        check_branch(&txn.success).map_err(|e| rejected(op, e))?;
        check_branch(&txn.failure).map_err(|e| rejected(op, e))?;
        let succeeded = txn.compares.iter().all(|c| st.compare(c));
        let ops = if succeeded { txn.success } else { txn.failure };
        for o in &ops {
            if let Op::Put { lease: Some(l), .. } = o
                && !st.leases.contains_key(&l.0)
            {
                return Err(Error::LeaseNotFound(l.0));
            }
        }
        let mut gets = Vec::new();
        let mut deleted = Vec::new();
        let mut w = Write::new(&mut st);
        for o in ops {
            match o {
                Op::Put { key, value, lease } => w.put(&key, value, lease),
                Op::Delete { key } => deleted.push(i64::from(w.delete(&key))),
                Op::DeletePrefix { prefix } => deleted.push(w.delete_prefix(&prefix)),
                Op::Get { key } => gets.push(w.st.data.get(&key).map(|s| State::kv(&key, s))),
            }
        }
        w.commit();
        Ok(TxnResponse {
            succeeded,
            revision: Revision(st.revision),
            gets,
            deleted,
        })
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let mut st = self.begin("granting a lease")?;
        let id = st.next_lease;
        st.next_lease += 1;
        let ttl = ttl_of(ttl);
        st.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        self.ensure_sweeper(&mut st);
        Ok(LeaseId(id))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let mut st = self.begin(&format!("keeping lease {} alive", lease.0))?;
        let l = st
            .leases
            .get_mut(&lease.0)
            .ok_or(Error::LeaseNotFound(lease.0))?;
        l.deadline = Instant::now() + l.ttl;
        Ok(l.ttl)
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        let mut st = self.begin(&format!("revoking lease {}", lease.0))?;
        st.revoke(lease.0);
        Ok(())
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let mut st = self.begin(&format!("watching {prefix}"))?;
        let from = if from.0 <= 0 { st.revision + 1 } else { from.0 };
        if from < st.compact_revision {
            return Err(Error::Compacted {
                requested: from,
                compact_revision: st.compact_revision,
            });
        }
        let (tx, rx) = mpsc::channel(st.watch_buffer + 1);
        let past: Vec<Event> = st
            .history
            .iter()
            .filter(|h| h.event.kv.mod_revision >= from && h.event.kv.key.starts_with(prefix))
            .map(|h| h.event.clone())
            .collect();
        if !past.is_empty() {
            // The channel is new and has at least two slots.
            let _ = tx.try_send(Ok((past, Revision(st.revision))));
        }
        st.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            from,
            tx,
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    async fn write(kv: &MemKv, ops: Vec<Op>) -> TxnResponse {
        kv.txn(Txn {
            success: ops,
            ..Txn::default()
        })
        .await
        .expect("txn succeeds")
    }

    #[test]
    fn prefix_end_is_the_successor() {
        assert_eq!(prefix_end("/a/").as_deref(), Some("/a0"));
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
    }

    #[tokio::test]
    async fn reads_in_the_past_undo_history() {
        let kv = MemKv::new();
        let r1 = write(&kv, vec![put("/p/a", "1"), put("/p/b", "1")])
            .await
            .revision;
        write(
            &kv,
            vec![
                put("/p/a", "2"),
                Op::Delete { key: "/p/b".into() },
                put("/p/c", "1"),
            ],
        )
        .await;
        let page = kv.range("/p/", None, 0, Some(r1)).await.expect("range");
        let got: Vec<(&str, &[u8])> = page
            .kvs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
            .collect();
        assert_eq!(got, vec![("/p/a", &b"1"[..]), ("/p/b", &b"1"[..])]);
        assert_eq!(page.revision, r1);
        kv.compact(kv.revision()).expect("compact");
        assert!(matches!(
            kv.range("/p/", None, 0, Some(r1)).await,
            Err(Error::Compacted { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_on_tokio_time() {
        let kv = MemKv::new();
        let lease = kv.grant(Duration::from_millis(1500)).await.expect("grant");
        write(
            &kv,
            vec![Op::Put {
                key: "/l/k".into(),
                value: b"v".to_vec(),
                lease: Some(lease),
            }],
        )
        .await;
        let mut watch = kv.watch("/l/", kv.revision().next()).await.expect("watch");
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert!(
            kv.get("/l/k").await.expect("get").0.is_some(),
            "TTL rounds up to 2 s"
        );
        // The sweeper delivers the delete without anyone calling in.
        let (events, _) = watch.next().await.expect("an event").expect("not an error");
        assert_eq!(events[0].kind, EventKind::Delete);
        assert!(matches!(
            kv.keep_alive(lease).await,
            Err(Error::LeaseNotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_slow_watcher_is_cut_off_with_compacted() {
        let kv = MemKv::new().with_watch_buffer(2);
        let mut watch = kv.watch("/w/", Revision(0)).await.expect("watch");
        for i in 0..5 {
            write(&kv, vec![put("/w/k", &i.to_string())]).await;
        }
        assert!(matches!(watch.next().await, Some(Ok(_))));
        assert!(matches!(watch.next().await, Some(Ok(_))));
        assert!(matches!(
            watch.next().await,
            Some(Err(Error::Compacted { .. }))
        ));
        assert!(watch.next().await.is_none());
    }

    #[tokio::test]
    async fn outages_fail_operations_and_end_watches() {
        let kv = MemKv::new();
        let mut watch = kv.watch("/o/", Revision(0)).await.expect("watch");
        kv.fail_next(1);
        assert!(matches!(
            kv.get("/o/a").await,
            Err(Error::Unavailable { .. })
        ));
        assert!(kv.get("/o/a").await.is_ok());
        kv.set_unavailable(true);
        assert!(matches!(
            watch.next().await,
            Some(Err(Error::Unavailable { .. }))
        ));
        assert!(watch.next().await.is_none());
        assert!(matches!(
            kv.list("/o/").await,
            Err(Error::Unavailable { .. })
        ));
        kv.set_unavailable(false);
        assert!(kv.list("/o/").await.is_ok());
    }

    #[tokio::test]
    async fn history_limit_compacts_automatically() {
        let kv = MemKv::new().with_history_limit(3);
        for i in 0..5 {
            write(&kv, vec![put("/h/k", &i.to_string())]).await;
        }
        assert!(matches!(
            kv.watch("/h/", Revision(2)).await,
            Err(Error::Compacted { .. })
        ));
        assert!(kv.watch("/h/", Revision(4)).await.is_ok());
    }
}
