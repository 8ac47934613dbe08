//! [`Metered`]: a [`Kv`] decorator that records every request to the store
//! under it in the daemon's metrics ([`crate::metrics::registry_request`]).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::kv::{KeyValue, Kv, LeaseId, RangePage, RangeRequest, Txn, TxnResponse, WatchStream};
use super::{Result, Revision};
use crate::metrics::{self, RegistryOp};

/// A [`Kv`] that counts and times every request to the store under it, by
/// operation (`get`, `range`, `list`, `txn`, `grant`, `keep_alive`,
/// `revoke`, `watch`) and result. The events a watch delivers are not
/// requests and are not counted.
#[derive(Clone, Debug)]
pub struct Metered<K> {
    /// The store.
    inner: K,
}

impl<K: Kv> Metered<K> {
    /// Meters `inner`.
    pub fn new(inner: K) -> Self {
        Metered { inner }
    }

    /// The store under the meter.
    pub fn inner(&self) -> &K {
        &self.inner
    }
}

/// Runs one request, recording it.
///
/// The request's future is boxed by the caller: a pointer instead of the
/// store's (large, in debug builds) request future keeps the wrapper from
/// growing every caller's future, and the allocation is nothing next to a
/// network round trip.
async fn metered<T>(
    op: RegistryOp,
    request: Pin<Box<dyn Future<Output = Result<T>> + Send + '_>>,
) -> Result<T> {
    let started = Instant::now();
    let result = request.await;
    metrics::registry_request(op, result.is_ok(), started.elapsed());
    result
}

impl<K: Kv> Kv for Metered<K> {
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)> {
        metered(RegistryOp::Get, Box::pin(self.inner.get(key))).await
    }

    async fn read_range(&self, req: RangeRequest<'_>) -> Result<RangePage> {
        metered(RegistryOp::Range, Box::pin(self.inner.read_range(req))).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        metered(RegistryOp::List, Box::pin(self.inner.list(prefix))).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        metered(RegistryOp::Txn, Box::pin(self.inner.txn(txn))).await
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        metered(RegistryOp::Grant, Box::pin(self.inner.grant(ttl))).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        metered(
            RegistryOp::KeepAlive,
            Box::pin(self.inner.keep_alive(lease)),
        )
        .await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        metered(RegistryOp::Revoke, Box::pin(self.inner.revoke(lease))).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        metered(RegistryOp::Watch, Box::pin(self.inner.watch(prefix, from))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemKv;

    #[tokio::test]
    async fn metered_store_counts_requests_by_op_and_result() {
        let kv = Metered::new(MemKv::new());
        kv.get("/metrics-test/a").await.unwrap();
        kv.inner().fail_next(1);
        assert!(kv.list("/metrics-test/").await.is_err());
        let text = metrics::render(&Default::default());
        for line in [
            "fleet_registry_requests_total{op=\"get\",result=\"ok\"} ",
            "fleet_registry_requests_total{op=\"list\",result=\"error\"} ",
            "fleet_registry_request_duration_seconds_count{op=\"get\"} ",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
