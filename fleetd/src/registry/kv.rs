//! The storage seam: the etcd v3 primitives fleet uses, and nothing more.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;

use super::{Result, Revision};

/// An etcd lease ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct LeaseId(pub i64);

/// A stored key and its value, with etcd's bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, prefix included.
    pub key: String,
    /// The raw value (empty for a delete event).
    pub value: Vec<u8>,
    /// Revision at which the key was created (0: does not exist).
    pub create_revision: i64,
    /// Revision of the last change to the key.
    pub mod_revision: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// What a range read asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeRequest<'a> {
    /// Only keys under this prefix.
    pub prefix: &'a str,
    /// Only keys sorting strictly after this one (`None`: from the start).
    pub after: Option<&'a str>,
    /// At most this many keys (0: no limit).
    pub limit: usize,
    /// At this revision (`None`: the current one).
    pub at: Option<Revision>,
}

/// One page of a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangePage {
    /// Keys in ascending order.
    pub kvs: Vec<KeyValue>,
    /// More keys follow this page.
    pub more: bool,
    /// The store revision the page was read at.
    pub revision: Revision,
}

/// A transaction guard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's `create_revision` equals this (0: the key does not exist).
    CreateRevision(String, i64),
    /// The key's `mod_revision` equals this (0: the key does not exist).
    ModRevision(String, i64),
    /// The key exists and its value equals this.
    Value(String, Vec<u8>),
}

/// A transaction operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set a key, optionally attached to a lease.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Lease to attach the key to.
        lease: Option<LeaseId>,
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: String,
    },
    /// Delete every key under a prefix.
    DeletePrefix {
        /// The prefix.
        prefix: String,
    },
    /// Read one key (its result lands in [`TxnResponse::gets`]).
    Get {
        /// The key.
        key: String,
    },
}

/// `if all compares hold { success } else { failure }`, atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// All must hold for `success` to run.
    pub compares: Vec<Compare>,
    /// Run when every compare holds.
    pub success: Vec<Op>,
    /// Run otherwise.
    pub failure: Vec<Op>,
}

/// The outcome of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (and `success` ran).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: Revision,
    /// Results of the `Get` ops of the branch that ran, in order.
    pub gets: Vec<Option<KeyValue>>,
    /// For each `Delete`/`DeletePrefix` op of the branch that ran, in order,
    /// how many keys it deleted.
    pub deleted: Vec<i64>,
}

/// Whether a watch event is a put or a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or changed.
    Put,
    /// The key was deleted (explicitly or by lease expiry).
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete, the value is empty and
    /// `mod_revision` is the revision of the delete.
    pub kv: KeyValue,
}

/// A stream of watch batches. Each item is the events of one or more
/// revisions, in revision order, with the revision the watcher has reached
/// (progress notifications yield an empty batch with a newer revision).
/// A compaction ends the stream with [`super::Error::Compacted`]; the
/// consumer relists.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<(Vec<Event>, Revision)>> + Send>>;

/// The etcd v3 primitives fleet uses.
///
/// Every key passed in is a full key (the typed [`super::Registry`] adds the
/// prefix). Implementations must be cheap to clone and safe to share.
pub trait Kv: Clone + Send + Sync + 'static {
    /// Read one key at the current revision.
    fn get(&self, key: &str) -> impl Future<Output = Result<(Option<KeyValue>, Revision)>> + Send;

    /// Read one page of keys, as `req` asks.
    fn read_range(&self, req: RangeRequest<'_>) -> impl Future<Output = Result<RangePage>> + Send;

    /// Read up to `limit` keys under `prefix` that sort strictly after
    /// `after` (or from the start), at revision `at` (or the current one):
    /// [`Kv::read_range`] with its request spelled out.
    fn range<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
        at: Option<Revision>,
    ) -> impl Future<Output = Result<RangePage>> + Send + 'a {
        self.read_range(RangeRequest {
            prefix,
            after,
            limit,
            at,
        })
    }

    /// Every key under `prefix`, consistently as of one revision (read in
    /// pages by the implementation).
    fn list(&self, prefix: &str) -> impl Future<Output = Result<(Vec<KeyValue>, Revision)>> + Send;

    /// Run a transaction.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnResponse>> + Send;

    /// Grant a lease with this TTL.
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<LeaseId>> + Send;

    /// Refresh a lease once; `Err(LeaseNotFound)` if it is gone. Returns the
    /// TTL granted by the refresh.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<Duration>> + Send;

    /// Revoke a lease, deleting its keys. Revoking a missing lease is not an
    /// error.
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send;

    /// Watch every key under `prefix`, starting at revision `from`
    /// (inclusive). Events older than the compaction point fail with
    /// `Compacted`.
    fn watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> impl Future<Output = Result<WatchStream>> + Send;
}
