//! What the benches in `tests/examples/` share: their `BENCH_*` settings and
//! a registry on a fresh etcd.

use std::time::Duration;

use fleetd::registry::{EtcdKv, Registry};
use fleetd::schema::MachineId;

use crate::etcd::Etcd;

/// The bound on each etcd request of a bench: generous, a bench loads etcd
/// on purpose.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The number in environment variable `name`, or `default` when it is unset
/// or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The ID of simulated machine `i`: distinct, valid, stable across runs.
#[must_use]
pub fn machine_id(i: usize) -> MachineId {
    format!("{i:08x}{:024x}", i * 7919)
        .parse()
        .expect("32 hex digits make a valid machine ID")
}

/// A new etcd and a registry on it under `/bench/`. The etcd stops when the
/// returned [`Etcd`] is dropped.
///
/// # Errors
///
/// etcd not starting, or not answering.
pub async fn registry() -> anyhow::Result<(Etcd, Registry<EtcdKv>)> {
    let etcd = Etcd::start().await?;
    let kv = EtcdKv::connect(&[etcd.endpoint()], REQUEST_TIMEOUT).await?;
    Ok((etcd, Registry::new(kv, "/bench/")))
}
