//! Data in etcd that fleet did not write: counted, logged, skipped.
//!
//! Anyone with etcd access can put anything under our prefix (`etcdctl put`
//! of garbage, JSON of the wrong shape, bytes that are not UTF-8, a leader
//! key without a lease). Every reader of the registry treats such a value the
//! same way: it leaves it out, as if the key did not exist, and calls
//! [`skipped`], which logs it and counts it by the kind of key. One bad value
//! therefore never fails a listing, never hides the valid values beside it,
//! and never stops a loop.
//!
//! The counts are process-wide (like the daemon's other metrics) because the
//! readers are spread over every component, and `metrics.rs` renders them as
//! `fleet_registry_invalid_values_total{kind}`. The registry is also built
//! without the daemon (fleetctl), so the counters live here rather than in
//! the daemon's metrics module.
//!
//! Logging: the first time a (key, revision) is skipped it is logged at
//! `warn` with the reason; later sightings of the same value (the API lists
//! on every request, a cache relists) are logged at `debug`, so a value left
//! in etcd for days does not flood the journal. Every sighting is counted.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use tracing::{debug, warn};

/// How many (key, revision) pairs are remembered as already warned about
/// before the memory is cleared (and each is warned about once more).
const REMEMBERED: usize = 4096;

/// Skipped values by kind of key.
static COUNTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// (key, revision) pairs already logged at `warn`.
static WARNED: Mutex<Option<HashSet<(String, i64)>>> = Mutex::new(None);

/// Record that the value at `key` (of kind `kind`, see
/// [`super::keys::kind_of`]), last modified at `revision`, was skipped
/// because of `why`.
pub fn skipped(kind: &'static str, key: &str, revision: i64, why: &dyn fmt::Display) {
    *COUNTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(kind)
        .or_default() += 1;
    let first = {
        let mut warned = WARNED.lock().unwrap_or_else(PoisonError::into_inner);
        let set = warned.get_or_insert_with(HashSet::new);
        if set.len() >= REMEMBERED {
            set.clear();
        }
        set.insert((key.to_owned(), revision))
    };
    if first {
        warn!(kind, key, revision, reason = %why, "skipping a value in etcd that fleet did not write");
    } else {
        debug!(kind, key, revision, reason = %why, "skipping a value in etcd that fleet did not write");
    }
}

/// How many values have been skipped so far, by kind of key.
pub fn counts() -> BTreeMap<&'static str, u64> {
    COUNTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind() {
        let before = counts().get("test-kind").copied().unwrap_or(0);
        skipped("test-kind", "/p/x", 3, &"bad");
        skipped("test-kind", "/p/x", 3, &"bad");
        assert_eq!(counts().get("test-kind").copied(), Some(before + 2));
    }
}
