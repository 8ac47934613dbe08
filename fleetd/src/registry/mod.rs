//! The registry: everything fleet keeps in etcd, typed.
//!
//! Two layers:
//! - [`Kv`] is the storage seam: a handful of etcd v3 primitives (get, range,
//!   transactions comparing revisions, leases, watches from a revision). It has
//!   two implementations, [`EtcdKv`] over a real etcd and [`MemKv`] in memory,
//!   and one contract suite (`tests/tests/registry_contract.rs`) runs against
//!   both, so the fake is trusted only as far as it behaves like etcd.
//! - [`Registry`] is the typed layer every component uses (units, schedule,
//!   unit states, machines, leadership). It is written once, over any `Kv`, so
//!   the in-memory and etcd registries cannot drift apart: the only code that
//!   differs is the small primitive layer under it.
//!
//! Layout:
//! - `keys.rs`: the only file that spells out etcd keys (see `docs/etcd-keys.md`).
//! - `kv.rs`: the [`Kv`] trait and its request/response types.
//! - `etcd.rs`: [`EtcdKv`]. `mem.rs`: [`MemKv`], with revisions, lease TTLs on
//!   tokio time (so `time::pause` works), watch history and compaction.
//! - `units.rs`, `schedule.rs`, `states.rs`, `machines.rs`, `leader.rs`: the
//!   typed operations of [`Registry`], one concern per file.
//! - `cache.rs`: a watched, typed cache of a key prefix (list, then watch from
//!   the next revision; relist on compaction), read through cheap snapshots.
//! - `metered.rs` (daemon only): [`Metered`], the `Kv` decorator that
//!   records every request in the daemon's metrics.
//! - `invalid.rs`: what every reader does with a value fleet did not write
//!   (garbage, the wrong JSON, non-UTF-8 bytes): skip it, log it, count it.
//!
//! Why not one trait per concern implemented twice, as the original's
//! 24-method registry interface was? Because that is exactly where its fake and
//! its etcd implementation drifted apart. Components take a `Registry<K>` and
//! are generic over `K: Kv`; tests pick `MemKv`, the daemon `EtcdKv`.

pub(crate) mod cache;
pub(crate) mod etcd;
pub(crate) mod invalid;
pub(crate) mod keys;
pub(crate) mod kv;
pub(crate) mod leader;
pub(crate) mod machines;
pub(crate) mod mem;
#[cfg(feature = "daemon")]
mod metered;
pub(crate) mod schedule;
pub(crate) mod states;
pub(crate) mod units;

pub use cache::{CacheMode, CancellationToken, Reflector, Store, json_record};
pub use etcd::{ConnectError, EtcdConnectOptions, EtcdKv};
pub use invalid::counts as invalid_value_counts;
pub use keys::{Keys, ParsedKey, kind_of};
pub use kv::{
    Compare, Event, EventKind, KeyValue, Kv, LeaseId, Op, RangePage, RangeRequest, Txn,
    TxnResponse, WatchStream,
};
pub use leader::Fence;
pub use machines::merge_metadata;
pub use mem::MemKv;
#[cfg(feature = "daemon")]
pub use metered::Metered;
pub use schedule::ScheduleChange;

use std::fmt;

/// An etcd revision: the store's logical clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Revision(pub i64);

impl Revision {
    /// The revision after this one (where a watch resumes after a listing).
    pub fn next(self) -> Revision {
        Revision(self.0 + 1)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A value read together with the revision it was last modified at, which a
/// later conditional write can compare against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// `mod_revision` of its key.
    pub mod_revision: Revision,
}

/// A consistent listing: every item as of one store revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing<T> {
    /// The items, sorted by key.
    pub items: Vec<T>,
    /// The store revision the listing reflects; watch from `revision + 1`.
    pub revision: Revision,
}

/// Registry errors, classified so loops can decide to back off or give up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be reached or did not answer in time.
    #[error("etcd unavailable while {op}")]
    Unavailable {
        /// What we were doing.
        op: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A conditional write lost a race: the key changed since it was read.
    #[error("conflict on {key}: it changed since it was read")]
    Conflict {
        /// The contended key.
        key: String,
    },
    /// The thing does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was missing, e.g. `unit "a.service"`.
        what: String,
    },
    /// Another fleetd holds this machine ID (same ID, different installation).
    #[error("machine ID {machine} is already registered by another host")]
    MachineIdInUse {
        /// The contested machine ID.
        machine: String,
    },
    /// This engine is no longer the leader; its writes were refused.
    #[error("not the engine leader any more")]
    NotLeader,
    /// A watch asked for history that has been compacted away.
    #[error("revision {requested} has been compacted (oldest available {compact_revision})")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The oldest revision still available.
        compact_revision: i64,
    },
    /// A lease does not exist (expired or revoked).
    #[error("lease {0} not found")]
    LeaseNotFound(i64),
    /// The store refused a request as invalid (too many operations in one
    /// transaction, a key written twice in one, a future revision): a bug on
    /// our side, not worth retrying.
    #[error("etcd refused the request while {op}")]
    Rejected {
        /// What we were doing.
        op: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored value could not be decoded.
    #[error("cannot decode {key}")]
    Decode {
        /// The key whose value is bad.
        key: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Worth retrying after a back-off.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Conflict { .. })
    }
}

/// A message-only cause of an [`Error`], for failures no library types.
#[derive(Debug)]
pub(crate) struct Cause(pub(crate) String);

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Cause {}

/// Registry result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Decode a JSON record stored at `key`.
fn decode_json<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| Error::Decode {
        key: key.to_owned(),
        source: Box::new(e),
    })
}

/// Decode a plain-string value stored at `key` (a machine ID, say).
fn decode_str<T>(key: &str, value: &[u8]) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let decode = |source: Box<dyn std::error::Error + Send + Sync>| Error::Decode {
        key: key.to_owned(),
        source,
    };
    let s = std::str::from_utf8(value).map_err(|e| decode(Box::new(e)))?;
    s.parse().map_err(|e: T::Err| decode(Box::new(e)))
}

/// A `Decode` error for a value whose content does not fit its key (a
/// record naming another unit or machine than its key does, a key of the
/// wrong shape).
fn mismatch(key: &str, why: &'static str) -> Error {
    Error::Decode {
        key: key.to_owned(),
        source: why.into(),
    }
}

/// Encode a record as JSON.
fn encode_json<T: serde::Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record)
        .expect("registry records serialize: plain fields and string-keyed maps only")
}

/// The typed registry over a storage backend. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Registry<K> {
    /// The storage backend.
    kv: K,
    /// Key builder for our prefix.
    keys: Keys,
}

impl<K: Kv> Registry<K> {
    /// A registry under `prefix` (e.g. `/_coreos.com/fleet/`; a trailing slash
    /// makes no difference).
    pub fn new(kv: K, prefix: &str) -> Self {
        Registry {
            kv,
            keys: Keys::new(prefix),
        }
    }

    /// The storage backend, for watches and caches.
    pub fn kv(&self) -> &K {
        &self.kv
    }

    /// The key builder.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// `decode(kv)`, or `None` when the value is not one fleet wrote: it is
    /// then skipped as if absent, logged and counted by kind of key (see
    /// [`invalid`]). Every read of the registry decodes through this, so one
    /// bad value never fails a read of the good ones.
    fn valid<T>(&self, kv: &KeyValue, decode: impl FnOnce(&KeyValue) -> Result<T>) -> Option<T> {
        match decode(kv) {
            Ok(value) => Some(value),
            Err(error) => {
                let why = match std::error::Error::source(&error) {
                    Some(cause) => cause.to_string(),
                    None => error.to_string(),
                };
                invalid::skipped(self.keys.kind(&kv.key), &kv.key, kv.mod_revision, &why);
                None
            }
        }
    }
}
