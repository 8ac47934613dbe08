//! A latest-wins queue keyed by unit name, between a producer that must never block (the
//! task draining zbus signal streams; an undrained stream stalls the whole connection) and a
//! consumer behind a bounded channel. While the consumer lags, repeated changes of one unit
//! collapse into the newest.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::{Notify, mpsc};

use crate::{UnitStateChange, UnitStatus};

pub(crate) struct Coalescer<T> {
    inner: Mutex<Inner<T>>,
    notify: Notify,
}

struct Inner<T> {
    pending: BTreeMap<String, T>,
    closed: bool,
}

impl<T> Coalescer<T> {
    pub(crate) fn new() -> Self {
        Coalescer {
            inner: Mutex::new(Inner {
                pending: BTreeMap::new(),
                closed: false,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // The sections below never panic while holding the lock; recover the data if one did.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `value` for `name`, replacing anything still pending for it. Never blocks.
    pub(crate) fn push(&self, name: String, value: T) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        inner.pending.insert(name, value);
        drop(inner);
        self.notify.notify_one();
    }

    /// No more pushes; [`Self::next_batch`] drains what is pending and then returns `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits for pending values and takes all of them.
    pub(crate) async fn next_batch(&self) -> Option<BTreeMap<String, T>> {
        loop {
            {
                let mut inner = self.lock();
                if !inner.pending.is_empty() {
                    return Some(std::mem::take(&mut inner.pending));
                }
                if inner.closed {
                    return None;
                }
            }
            // `notify_one` stores a permit when nobody waits, so a push between the check
            // above and this await is not lost.
            self.notify.notified().await;
        }
    }
}

/// Sends the queue's changes to `tx` until either side closes. Consecutive identical states
/// of a unit are sent once (the memory for that grows with the number of unit names seen).
pub(crate) async fn forward(
    queue: std::sync::Arc<Coalescer<Option<UnitStatus>>>,
    tx: mpsc::Sender<UnitStateChange>,
) {
    let mut last: BTreeMap<String, Option<UnitStatus>> = BTreeMap::new();
    loop {
        let batch = tokio::select! {
            batch = queue.next_batch() => batch,
            () = tx.closed() => None,
        };
        let Some(batch) = batch else { break };
        for (name, status) in batch {
            if last.get(&name) == Some(&status) {
                continue;
            }
            last.insert(name.clone(), status.clone());
            if tx.send(UnitStateChange { name, status }).await.is_err() {
                queue.close();
                return;
            }
        }
    }
    queue.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn latest_wins_while_the_consumer_lags() {
        let q = Arc::new(Coalescer::new());
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(forward(q.clone(), tx));
        q.push(
            "a".into(),
            Some(UnitStatus::new("loaded", "activating", "start")),
        );
        q.push(
            "a".into(),
            Some(UnitStatus::new("loaded", "active", "running")),
        );
        q.push("b".into(), None);
        let first = rx.recv().await.unwrap();
        assert_eq!(first.name, "a");
        assert_eq!(first.status.unwrap().active_state, "active");
        assert_eq!(rx.recv().await.unwrap().name, "b");
        // Duplicate state is not re-sent; a new one is.
        q.push(
            "a".into(),
            Some(UnitStatus::new("loaded", "active", "running")),
        );
        q.push(
            "a".into(),
            Some(UnitStatus::new("loaded", "inactive", "dead")),
        );
        let next = rx.recv().await.unwrap();
        assert_eq!(next.status.unwrap().active_state, "inactive");
        q.close();
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_receiver_closes_the_queue() {
        let q = Arc::new(Coalescer::<Option<UnitStatus>>::new());
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(forward(q.clone(), tx));
        drop(rx);
        task.await.unwrap();
        assert!(q.is_closed());
    }
}
