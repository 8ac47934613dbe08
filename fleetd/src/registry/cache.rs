//! A watched, typed cache of one key prefix (a "reflector", after kube-rs).
//!
//! A [`Reflector`] lists the prefix, then watches it from the next revision
//! and applies every event to a map of key → decoded value. Readers hold a
//! [`Store`]: cheap to clone, it hands out `Arc` snapshots of the whole map
//! and a [`watch::Receiver<Revision>`](tokio::sync::watch::Receiver) that
//! changes whenever the map does (bursts coalesce: a reader woken late sees
//! only the latest revision). Loops read the cache, never etcd, so no loop
//! lists the keyspace on a tick.
//!
//! - **Decoding** is the caller's function of (key, value), or of the whole
//!   [`KeyValue`] with [`Reflector::new_kv`] (to look at the lease). A value
//!   it cannot decode is data fleet did not write: it is left out of the map
//!   (the key is removed if it was there), logged and counted by kind of key
//!   (see [`super::invalid`]), never fatal: one bad record must not blind
//!   the engine to the others. [`json`] is a ready-made
//!   decoder.
//! - **Snapshots** are copy-on-write: a batch of events is applied with
//!   `Arc::make_mut`, which copies the map only while some reader still holds
//!   the previous snapshot. A relist builds a fresh map and swaps it in at
//!   once, so a reader never sees a half-applied state.
//! - **Failures**: when the watch fails or ends (etcd unreachable, a lost
//!   connection), the reflector backs off (100 ms doubling to 5 s, reset once
//!   events flow again) and resumes watching from the revision after the last
//!   one it applied: etcd replays what it missed, so nothing is relisted.
//!   Only when that history is gone (`Compacted`, which is also how
//!   [`MemKv`](super::MemKv) cuts off a watcher that fell behind) does it
//!   relist and swap.
//! - **Polling** ([`CacheMode::Poll`], fleet's `disable_watches`): no watch
//!   at all; the prefix is listed every interval and the snapshot swapped
//!   (and readers woken) only when the listing differs from the last one
//!   (another set of keys or another `mod_revision` on one), so an idle
//!   cluster wakes nobody. A failed listing is retried after the back-off
//!   (never longer than the interval). Changes show up within one interval.
//!
//! ```no_run
//! use fleetd::registry::{self, CancellationToken, MemKv, Reflector, Registry};
//! use fleetd::schema::UnitRecord;
//!
//! # async fn example() {
//! let registry = Registry::new(MemKv::new(), "/_coreos.com/fleet/");
//! let (reflector, units) = Reflector::new(
//!     registry.kv().clone(),
//!     registry.keys().units_prefix(),
//!     registry::json_record::<UnitRecord>,
//! );
//! let cancel = CancellationToken::new();
//! tokio::spawn(reflector.run(cancel.clone()));
//!
//! units.wait_ready().await;
//! let mut changed = units.subscribe();
//! loop {
//!     let snapshot = units.snapshot();
//!     for (key, unit) in snapshot.iter() {
//!         println!("{key}: {:?}", unit.desired_state);
//!     }
//!     tokio::select! {
//!         _ = changed.changed() => {}
//!         () = cancel.cancelled() => break,
//!     }
//! }
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
/// The token [`Reflector::run`] stops on, re-exported so callers need not
/// depend on tokio-util themselves.
pub use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::invalid;
use super::keys::kind_of;
use super::kv::{Event, EventKind, KeyValue, Kv};
use super::{Error, Revision};
use crate::retry::{self, Backoff};

/// A consistent view of the cache: full key → decoded value.
pub type Snapshot<T> = Arc<BTreeMap<String, Arc<T>>>;

/// A decoder: stored key-value → value, `None` to skip a bad one.
type DecodeFn<T> = Arc<dyn Fn(&KeyValue) -> Option<T> + Send + Sync>;

/// What the reflector and its stores share.
struct Shared<T> {
    /// The current snapshot and the revision it reflects. A blocking mutex:
    /// it is held only to clone or swap an `Arc`, or to apply one batch.
    current: Mutex<(Snapshot<T>, Revision)>,
    /// The revision of the last change (0 until the first listing), for
    /// readers to wait on.
    changed: watch::Sender<Revision>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, (Snapshot<T>, Revision)> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A reader of a [`Reflector`]'s cache. Cheap to clone.
pub struct Store<T> {
    /// The cache.
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store {
            shared: self.shared.clone(),
        }
    }
}

impl<T> fmt::Debug for Store<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (snapshot, revision) = self.snapshot_at();
        f.debug_struct("Store")
            .field("revision", &revision)
            .field("entries", &snapshot.len())
            .finish()
    }
}

impl<T> Store<T> {
    /// The current contents (cheap: one `Arc` clone).
    pub fn snapshot(&self) -> Snapshot<T> {
        self.shared.lock().0.clone()
    }

    /// The current contents with the store revision they reflect.
    pub fn snapshot_at(&self) -> (Snapshot<T>, Revision) {
        let current = self.shared.lock();
        (current.0.clone(), current.1)
    }

    /// One entry by full key.
    pub fn get(&self, key: &str) -> Option<Arc<T>> {
        self.shared.lock().0.get(key).cloned()
    }

    /// The revision of the last change applied (0 before the first listing).
    pub fn revision(&self) -> Revision {
        *self.shared.changed.borrow()
    }

    /// Whether the first listing has been loaded.
    pub fn is_ready(&self) -> bool {
        self.revision().0 > 0
    }

    /// Wait until the first listing has been loaded. Waits forever if the
    /// reflector never runs.
    pub async fn wait_ready(&self) {
        let mut rx = self.shared.changed.subscribe();
        // The sender lives in `shared`, which we hold: this cannot fail.
        let _ = rx.wait_for(|r| r.0 > 0).await;
    }

    /// A receiver that changes whenever the contents do. Marked changed at
    /// once if the store is already ready, so a loop can start with
    /// `changed().await`.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        let mut rx = self.shared.changed.subscribe();
        if self.is_ready() {
            rx.mark_changed();
        }
        rx
    }
}

/// How a [`Reflector`] keeps its cache up to date.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// List once, then follow an etcd watch (the default).
    #[default]
    Watch,
    /// Relist every interval, no watch (fleet's `disable_watches`).
    Poll(Duration),
}

impl CacheMode {
    /// `Poll(interval)` when `disable_watches`, else `Watch`.
    pub fn from_disable_watches(disable_watches: bool, interval: Duration) -> Self {
        if disable_watches {
            CacheMode::Poll(interval)
        } else {
            CacheMode::Watch
        }
    }
}

/// Feeds one [`Store`] from a key prefix: list, then watch; see the module
/// docs. Run it with [`Reflector::run`].
pub struct Reflector<K, T> {
    /// Where the data lives.
    kv: K,
    /// The prefix cached.
    prefix: String,
    /// Turns raw values into cached ones.
    decode: DecodeFn<T>,
    /// The cache the stores read.
    shared: Arc<Shared<T>>,
    /// Watch or poll.
    mode: CacheMode,
}

impl<K, T> fmt::Debug for Reflector<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reflector")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How the watch phase ended.
enum WatchEnd {
    /// Cancelled: stop.
    Cancelled,
    /// History is gone: relist.
    Compacted,
    /// Anything else: back off and resume from where we are.
    Failed,
}

impl<K: Kv, T: Send + Sync + 'static> Reflector<K, T> {
    /// A reflector of every key under `prefix`, decoded by `decode`, and the
    /// first reader of its cache.
    pub fn new(
        kv: K,
        prefix: impl Into<String>,
        decode: impl Fn(&str, &[u8]) -> Option<T> + Send + Sync + 'static,
    ) -> (Self, Store<T>) {
        Reflector::new_kv(kv, prefix, move |kv: &KeyValue| decode(&kv.key, &kv.value))
    }

    /// [`Reflector::new`] with a decoder of the whole stored key-value (its
    /// lease and revisions too), e.g. to treat a leader key without a lease
    /// as stale.
    pub fn new_kv(
        kv: K,
        prefix: impl Into<String>,
        decode: impl Fn(&KeyValue) -> Option<T> + Send + Sync + 'static,
    ) -> (Self, Store<T>) {
        let (changed, _) = watch::channel(Revision(0));
        let shared = Arc::new(Shared {
            current: Mutex::new((Arc::new(BTreeMap::new()), Revision(0))),
            changed,
        });
        let reflector = Reflector {
            kv,
            prefix: prefix.into(),
            decode: Arc::new(decode),
            shared: shared.clone(),
            mode: CacheMode::Watch,
        };
        (reflector, Store { shared })
    }

    /// Keep up in `mode` instead of watching.
    #[must_use]
    pub fn with_mode(mut self, mode: CacheMode) -> Self {
        self.mode = mode;
        self
    }

    /// Relist every `interval` instead of watching (see the module docs).
    #[must_use]
    pub fn polling(self, interval: Duration) -> Self {
        self.with_mode(CacheMode::Poll(interval))
    }

    /// Another reader of the cache.
    pub fn store(&self) -> Store<T> {
        Store {
            shared: self.shared.clone(),
        }
    }

    /// Keep the cache up to date until `cancel` fires. Every failure is
    /// retried (with back-off), so this returns only when cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        if let CacheMode::Poll(interval) = self.mode {
            return self.poll(interval, cancel).await;
        }
        let mut backoff = retry::CACHE;
        // The revision up to which the cache is complete; `None`: relist.
        let mut position: Option<Revision> = None;
        loop {
            let from = match position {
                Some(p) => p.next(),
                None => {
                    let listed = tokio::select! {
                        () = cancel.cancelled() => return,
                        listed = self.kv.list(&self.prefix) => listed,
                    };
                    match listed {
                        Ok((kvs, revision)) => {
                            self.replace(&kvs, revision);
                            debug!(prefix = %self.prefix, %revision, entries = kvs.len(), "cache listed");
                            position = Some(revision);
                            revision.next()
                        }
                        Err(error) => {
                            warn!(prefix = %self.prefix, %error, "cache cannot list; retrying");
                            if !backoff.wait(&cancel).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            match self
                .follow(from, &mut position, &mut backoff, &cancel)
                .await
            {
                WatchEnd::Cancelled => return,
                WatchEnd::Compacted => position = None,
                WatchEnd::Failed => {}
            }
            if !backoff.wait(&cancel).await {
                return;
            }
        }
    }

    /// The polling mode: list every `interval`, swapping only on a change.
    async fn poll(self, interval: Duration, cancel: CancellationToken) {
        let interval = interval.max(Duration::from_millis(1));
        let mut backoff = retry::CACHE;
        // (key, mod_revision) of the last listing swapped in.
        let mut last: Option<Vec<(String, i64)>> = None;
        loop {
            let listed = tokio::select! {
                () = cancel.cancelled() => return,
                listed = self.kv.list(&self.prefix) => listed,
            };
            let delay = match listed {
                Ok((kvs, revision)) => {
                    backoff.reset();
                    let seen: Vec<(String, i64)> = kvs
                        .iter()
                        .map(|kv| (kv.key.clone(), kv.mod_revision))
                        .collect();
                    if last.as_ref() != Some(&seen) {
                        self.replace(&kvs, revision);
                        debug!(prefix = %self.prefix, %revision, entries = kvs.len(), "cache polled a change");
                        last = Some(seen);
                    }
                    interval
                }
                Err(error) => {
                    warn!(prefix = %self.prefix, %error, "cache cannot list; retrying");
                    backoff.next_delay().min(interval)
                }
            };
            if !retry::sleep(delay, &cancel).await {
                return;
            }
        }
    }

    /// Watch from `from`, applying batches and advancing `position`, until
    /// the watch ends.
    async fn follow(
        &self,
        from: Revision,
        position: &mut Option<Revision>,
        backoff: &mut Backoff,
        cancel: &CancellationToken,
    ) -> WatchEnd {
        let opened = tokio::select! {
            () = cancel.cancelled() => return WatchEnd::Cancelled,
            opened = self.kv.watch(&self.prefix, from) => opened,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(error) => return self.ended(error),
        };
        loop {
            let item = tokio::select! {
                () = cancel.cancelled() => return WatchEnd::Cancelled,
                item = stream.next() => item,
            };
            match item {
                Some(Ok((events, reached))) => {
                    let applied = position.unwrap_or_default();
                    self.apply(events, applied, reached);
                    *position = Some(reached.max(applied));
                    backoff.reset();
                }
                Some(Err(error)) => return self.ended(error),
                None => {
                    warn!(prefix = %self.prefix, "cache watch ended; resuming");
                    return WatchEnd::Failed;
                }
            }
        }
    }

    fn ended(&self, error: Error) -> WatchEnd {
        if let Error::Compacted { .. } = error {
            info!(prefix = %self.prefix, %error, "cache fell behind compaction; relisting");
            WatchEnd::Compacted
        } else {
            warn!(prefix = %self.prefix, %error, "cache watch failed; resuming");
            WatchEnd::Failed
        }
    }

    fn decode(&self, kv: &KeyValue) -> Option<Arc<T>> {
        let decoded = (self.decode)(kv);
        if decoded.is_none() {
            invalid::skipped(
                kind_of(&kv.key),
                &kv.key,
                kv.mod_revision,
                &format_args!("the cache of {} cannot decode it", self.prefix),
            );
        }
        decoded.map(Arc::new)
    }

    /// Swap in a fresh listing.
    fn replace(&self, kvs: &[KeyValue], revision: Revision) {
        let map: BTreeMap<String, Arc<T>> = kvs
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), self.decode(kv)?)))
            .collect();
        *self.shared.lock() = (Arc::new(map), revision);
        self.shared.changed.send_replace(revision);
    }

    /// Apply one watch batch (skipping events at or before `applied`, already
    /// in the cache), publishing if anything changed.
    fn apply(&self, events: Vec<Event>, applied: Revision, reached: Revision) {
        let events: Vec<Event> = events
            .into_iter()
            .filter(|e| e.kv.mod_revision > applied.0)
            .collect();
        if events.is_empty() {
            return;
        }
        // Decode before taking the lock.
        let decoded: Vec<(String, Option<Arc<T>>)> = events
            .into_iter()
            .map(|e| {
                let value = match e.kind {
                    EventKind::Put => self.decode(&e.kv),
                    EventKind::Delete => None,
                };
                (e.kv.key, value)
            })
            .collect();
        let revision = {
            let mut current = self.shared.lock();
            let map = Arc::make_mut(&mut current.0);
            for (key, value) in decoded {
                match value {
                    Some(v) => map.insert(key, v),
                    None => map.remove(&key),
                };
            }
            current.1 = reached;
            reached
        };
        self.shared.changed.send_replace(revision);
    }
}

/// A decoder for JSON values, whatever the key.
pub fn json_record<T: DeserializeOwned>(_key: &str, value: &[u8]) -> Option<T> {
    serde_json::from_slice(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::kv::{Op, Txn};
    use crate::registry::{MemKv, Result};

    fn text(_key: &str, value: &[u8]) -> Option<String> {
        let s = std::str::from_utf8(value).ok()?;
        (s != "bad").then(|| s.to_owned())
    }

    async fn put(kv: &MemKv, key: &str, value: &str) -> Result<Revision> {
        let resp = kv
            .txn(Txn {
                success: vec![Op::Put {
                    key: key.into(),
                    value: value.into(),
                    lease: None,
                }],
                ..Txn::default()
            })
            .await?;
        Ok(resp.revision)
    }

    async fn delete(kv: &MemKv, key: &str) -> Result<Revision> {
        let resp = kv
            .txn(Txn {
                success: vec![Op::Delete { key: key.into() }],
                ..Txn::default()
            })
            .await?;
        Ok(resp.revision)
    }

    fn contents(store: &Store<String>) -> Vec<(String, String)> {
        store
            .snapshot()
            .iter()
            .map(|(k, v)| (k.clone(), (**v).clone()))
            .collect()
    }

    /// Wait (on paused time) until the store reaches `rev`.
    async fn reach(store: &Store<String>, rev: Revision) {
        let mut rx = store.subscribe();
        tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|r| *r >= rev))
            .await
            .expect("the cache catches up within a minute")
            .expect("the store is alive");
    }

    fn start(kv: &MemKv) -> (Store<String>, CancellationToken) {
        let (reflector, store) = Reflector::new(kv.clone(), "/c/", text);
        let cancel = CancellationToken::new();
        tokio::spawn(reflector.run(cancel.clone()));
        (store, cancel)
    }

    #[tokio::test(start_paused = true)]
    async fn lists_then_applies_events() -> Result<()> {
        let kv = MemKv::new();
        put(&kv, "/c/a", "1").await?;
        put(&kv, "/other/x", "1").await?;
        let (store, cancel) = start(&kv);
        store.wait_ready().await;
        assert_eq!(contents(&store), vec![("/c/a".into(), "1".into())]);

        let old = store.snapshot();
        put(&kv, "/c/b", "2").await?;
        put(&kv, "/c/a", "bad").await?;
        delete(&kv, "/c/b").await?;
        let rev = put(&kv, "/c/c", "3").await?;
        reach(&store, rev).await;
        assert_eq!(
            contents(&store),
            vec![("/c/c".into(), "3".into())],
            "bad values are dropped"
        );
        assert_eq!(old.len(), 1, "an old snapshot does not change");
        assert_eq!(store.revision(), rev);
        cancel.cancel();
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn relists_after_falling_behind() -> Result<()> {
        let kv = MemKv::new().with_watch_buffer(1);
        let (store, cancel) = start(&kv);
        store.wait_ready().await;
        // Write faster than the reflector reads: its watch overflows and
        // ends with Compacted; it must relist and converge.
        let mut rev = Revision(0);
        for i in 0..50 {
            rev = put(&kv, &format!("/c/k{i:02}"), &i.to_string()).await?;
        }
        kv.compact(rev)?;
        reach(&store, rev).await;
        assert_eq!(store.snapshot().len(), 50);
        cancel.cancel();
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn recovers_from_an_outage() -> Result<()> {
        let kv = MemKv::new();
        kv.fail_next(3);
        let (store, cancel) = start(&kv);
        store.wait_ready().await;
        put(&kv, "/c/a", "1").await?;
        kv.set_unavailable(true);
        tokio::time::sleep(Duration::from_secs(30)).await;
        kv.set_unavailable(false);
        let rev = put(&kv, "/c/b", "2").await?;
        reach(&store, rev).await;
        assert_eq!(
            contents(&store),
            vec![("/c/a".into(), "1".into()), ("/c/b".into(), "2".into())]
        );
        cancel.cancel();
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn polling_follows_changes_and_wakes_only_on_change() -> Result<()> {
        let kv = MemKv::new();
        put(&kv, "/c/a", "1").await?;
        let interval = Duration::from_secs(5);
        let (reflector, store) = Reflector::new(kv.clone(), "/c/", text);
        let reflector = reflector.polling(interval);
        let cancel = CancellationToken::new();
        tokio::spawn(reflector.run(cancel.clone()));
        store.wait_ready().await;
        assert_eq!(contents(&store), vec![("/c/a".into(), "1".into())]);

        // Nothing changes under the prefix (a write elsewhere moves the
        // store's revision): several polls, no wake-up, same snapshot.
        let mut rx = store.subscribe();
        rx.borrow_and_update();
        let before = store.snapshot();
        put(&kv, "/other/x", "1").await?;
        tokio::time::sleep(interval * 4).await;
        assert!(
            !rx.has_changed().expect("the store is alive"),
            "no change, no wake-up"
        );
        assert!(
            Arc::ptr_eq(&before, &store.snapshot()),
            "the snapshot is kept"
        );

        // A put, an overwrite and a delete each show up within an interval.
        let rev = put(&kv, "/c/b", "2").await?;
        reach(&store, rev).await;
        put(&kv, "/c/a", "3").await?;
        let rev = delete(&kv, "/c/b").await?;
        reach(&store, rev).await;
        assert_eq!(contents(&store), vec![("/c/a".into(), "3".into())]);

        // An outage is survived.
        kv.set_unavailable(true);
        tokio::time::sleep(interval * 3).await;
        kv.set_unavailable(false);
        let rev = put(&kv, "/c/c", "4").await?;
        reach(&store, rev).await;
        assert_eq!(store.snapshot().len(), 2);
        cancel.cancel();
        Ok(())
    }
}
