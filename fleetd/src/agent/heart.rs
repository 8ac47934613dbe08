//! Machine presence: one lease per machine, the machine's record on it, kept
//! alive.
//!
//! The heart grants a lease with TTL `agent_ttl`, registers
//! `machines/<id>` on it and refreshes it every TTL/3. The publisher attaches
//! this machine's unit states to the same lease, so presence and states vanish
//! together when the machine does. It publishes the current lease on a
//! `watch` channel ([`Heart::leases`]) and flips `ready` once registered.
//!
//! What differs from the original:
//! - A restarted fleetd takes its record back at once (the record's token says
//!   it is the same installation), instead of retrying for up to `agent_ttl`
//!   while the old key expires. Another host with the same machine ID is
//!   refused, and that is fatal with a clear message rather than an endless
//!   retry loop.
//! - Losing the lease (etcd was unreachable for longer than the TTL) does not
//!   stop anything: units keep running, and the heart grants a new lease and
//!   registers again; the publisher republishes every state on it.
//! - Stopping the heart leaves the lease to expire (so a restarted fleetd can
//!   adopt everything); only [`HeartHandle::purge`], for a graceful shutdown,
//!   revokes it.

use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::error_chain;
use crate::registry::{self, Kv, LeaseId, Registry};
use crate::retry;
use crate::schema::{MachineId, MachineRecord};

/// Keeps this machine registered. Spawn [`Heart::run`]; take
/// [`Heart::leases`] and [`Heart::handle`] first.
pub struct Heart<K: Kv> {
    /// Where presence lives.
    registry: Registry<K>,
    /// What to register (the daemon fills in the token).
    record: MachineRecord,
    /// The lease TTL (`agent_ttl`).
    ttl: Duration,
    /// The current lease, `None` while unregistered; read by the publisher
    /// (to attach states) and by [`HeartHandle::purge`].
    lease: watch::Sender<Option<LeaseId>>,
    /// True while registered; the API serves only then.
    ready: watch::Sender<bool>,
}

/// How a keep-alive phase ended.
enum Beat {
    /// The lease is gone: register again.
    Lost,
    /// Shutdown.
    Cancelled,
}

impl<K: Kv> Heart<K> {
    /// A heart for `record` with leases of `ttl`, reporting registration on
    /// `ready`.
    pub fn new(
        registry: Registry<K>,
        record: MachineRecord,
        ttl: Duration,
        ready: watch::Sender<bool>,
    ) -> Self {
        Heart {
            registry,
            record,
            ttl,
            lease: watch::Sender::new(None),
            ready,
        }
    }

    /// The current lease; changes when the lease is replaced.
    pub fn leases(&self) -> watch::Receiver<Option<LeaseId>> {
        self.lease.subscribe()
    }

    /// A handle for the graceful-shutdown purge.
    pub fn handle(&self) -> HeartHandle<K> {
        HeartHandle {
            registry: self.registry.clone(),
            machine: self.record.id.clone(),
            lease: self.lease.subscribe(),
        }
    }

    /// Registers, then keeps the lease alive until `cancel`, registering
    /// again whenever the lease is lost. Fails only when registration cannot
    /// succeed (another host holds the machine ID, or etcd refuses the
    /// request as invalid). Leaves the lease in place when cancelled.
    #[tracing::instrument(name = "heart", skip_all, fields(machine = %self.record.id))]
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let result = self.beat(&cancel).await;
        self.ready.send_replace(false);
        result
    }

    /// The register / keep-alive cycle.
    async fn beat(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        loop {
            let Some(lease) = self.register(cancel).await? else {
                return Ok(());
            };
            self.lease.send_replace(Some(lease));
            self.ready.send_replace(true);
            info!(lease = lease.0, "machine registered");
            match self.keep_alive(lease, cancel).await {
                Beat::Cancelled => return Ok(()),
                Beat::Lost => {
                    self.ready.send_replace(false);
                    self.lease.send_replace(None);
                    warn!(lease = lease.0, "machine lease lost; registering again");
                }
            }
        }
    }

    /// Grants a lease and registers on it, retrying transient failures with
    /// a capped backoff. `None` when cancelled.
    async fn register(&self, cancel: &CancellationToken) -> anyhow::Result<Option<LeaseId>> {
        let mut backoff = retry::heart_register(self.ttl);
        let mut lease = None;
        loop {
            let attempt = async {
                let granted = match lease {
                    Some(l) => l,
                    None => *lease.insert(self.registry.grant_lease(self.ttl).await?),
                };
                self.registry
                    .register_machine(&self.record, granted)
                    .await?;
                Ok::<_, registry::Error>(granted)
            };
            let error = tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                result = attempt => match result {
                    Ok(granted) => return Ok(Some(granted)),
                    Err(e) => e,
                },
            };
            match &error {
                // The lease expired while we were retrying: grant another.
                registry::Error::LeaseNotFound(_) => lease = None,
                e if e.is_transient() => {}
                _ => {
                    return Err(error)
                        .with_context(|| format!("cannot register machine {}", self.record.id));
                }
            }
            let delay = backoff.next_delay();
            warn!(error = %error_chain(&error), retry_in = ?delay, "machine registration failed");
            if !retry::sleep(delay, cancel).await {
                return Ok(None);
            }
        }
    }

    /// Refreshes `lease` every TTL/3 (retrying sooner after a failure) until
    /// it is lost or `cancel` fires.
    async fn keep_alive(&self, lease: LeaseId, cancel: &CancellationToken) -> Beat {
        let period = self.ttl / 3;
        let mut backoff = retry::heart_refresh(period);
        let mut next = Instant::now() + period;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Beat::Cancelled,
                () = sleep_until(next) => {}
            }
            let result = tokio::select! {
                () = cancel.cancelled() => return Beat::Cancelled,
                result = self.registry.keep_alive(lease) => result,
            };
            match result {
                Ok(_) => {
                    debug!(lease = lease.0, "lease refreshed");
                    backoff.reset();
                    next = Instant::now() + period;
                }
                Err(registry::Error::LeaseNotFound(_)) => return Beat::Lost,
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %error_chain(&e), retry_in = ?delay, "lease refresh failed");
                    next = Instant::now() + delay;
                }
            }
        }
    }
}

/// Removes this machine's presence on a graceful shutdown. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HeartHandle<K> {
    /// Where presence lives.
    registry: Registry<K>,
    /// This machine.
    machine: MachineId,
    /// The heart's current lease.
    lease: watch::Receiver<Option<LeaseId>>,
}

impl<K: Kv> HeartHandle<K> {
    /// The current lease, if registered.
    pub fn lease(&self) -> Option<LeaseId> {
        *self.lease.borrow()
    }

    /// Revokes the lease, which deletes the machine's record and every unit
    /// state attached to it. Call after the heart has stopped (otherwise it
    /// registers again).
    pub async fn purge(&self) -> Result<(), registry::Error> {
        match self.lease() {
            Some(lease) => {
                self.registry.revoke_lease(lease).await?;
                info!(machine = %self.machine, lease = lease.0, "machine presence removed");
            }
            None => debug!(machine = %self.machine, "not registered; no presence to remove"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemKv;
    use crate::schema::Capabilities;

    const TTL: Duration = Duration::from_secs(30);

    fn record(id: &str, token: &str) -> MachineRecord {
        MachineRecord {
            id: id.parse().expect("valid test machine ID"),
            public_ip: "10.0.0.1".into(),
            metadata: Default::default(),
            capabilities: Capabilities::default(),
            version: crate::VERSION.into(),
            token: token.into(),
        }
    }

    struct Running {
        registry: Registry<MemKv>,
        leases: watch::Receiver<Option<LeaseId>>,
        ready: watch::Receiver<bool>,
        handle: HeartHandle<MemKv>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    fn start(registry: &Registry<MemKv>, rec: MachineRecord) -> Running {
        let (ready_tx, ready) = watch::channel(false);
        let heart = Heart::new(registry.clone(), rec, TTL, ready_tx);
        let leases = heart.leases();
        let handle = heart.handle();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(heart.run(cancel.clone()));
        Running {
            registry: registry.clone(),
            leases,
            ready,
            handle,
            cancel,
            task,
        }
    }

    async fn registered(r: &mut Running) -> LeaseId {
        r.ready.wait_for(|&ready| ready).await.expect("heart alive");
        r.leases.borrow_and_update().expect("ready implies a lease")
    }

    /// Waits until the heart of `machine` is registered again, on a lease
    /// other than `old`, and checks that its record is back.
    async fn registered_again(r: &mut Running, machine: &str, old: LeaseId) {
        r.leases
            .wait_for(|l| l.is_some_and(|l| l != old))
            .await
            .unwrap();
        r.ready.wait_for(|&ready| ready).await.unwrap();
        assert!(r.registry.machine(&id(machine)).await.unwrap().is_some());
    }

    fn id(s: &str) -> MachineId {
        s.parse().expect("valid test machine ID")
    }

    #[tokio::test(start_paused = true)]
    async fn registers_and_stays_alive_across_many_ttls() {
        let registry = Registry::new(MemKv::new(), "/fleet/");
        let mut r = start(&registry, record("m1", "t"));
        let lease = registered(&mut r).await;
        tokio::time::sleep(TTL * 10).await;
        assert!(r.registry.machine(&id("m1")).await.unwrap().is_some());
        assert_eq!(*r.leases.borrow(), Some(lease), "same lease all along");
        r.cancel.cancel();
        r.task.await.unwrap().unwrap();
        assert!(!*r.ready.borrow());
        // Stopping leaves presence in place (a restart adopts it).
        assert!(registry.machine(&id("m1")).await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_fleetd_takes_its_record_back_at_once() {
        let registry = Registry::new(MemKv::new(), "/fleet/");
        let mut first = start(&registry, record("m1", "t"));
        let old = registered(&mut first).await;
        first.cancel.cancel();
        first.task.await.unwrap().unwrap();

        let mut second = start(&registry, record("m1", "t"));
        let new = registered(&mut second).await;
        assert_ne!(old, new);
        // The previous run's lease (and the states on it) is revoked at once.
        assert!(matches!(
            registry.keep_alive(old).await,
            Err(registry::Error::LeaseNotFound(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn another_host_with_the_same_id_is_fatal() {
        let registry = Registry::new(MemKv::new(), "/fleet/");
        let mut first = start(&registry, record("m1", "host-a"));
        registered(&mut first).await;
        let second = start(&registry, record("m1", "host-b"));
        let err = second.task.await.unwrap().unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "cannot register machine m1: machine ID m1 is already registered by another host"
        );
        assert!(!*second.ready.borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_is_replaced_and_announced() {
        let registry = Registry::new(MemKv::new(), "/fleet/");
        let mut r = start(&registry, record("m1", "t"));
        let lease = registered(&mut r).await;
        registry.revoke_lease(lease).await.unwrap();
        assert!(registry.machine(&id("m1")).await.unwrap().is_none());
        registered_again(&mut r, "m1", lease).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_longer_than_the_ttl_ends_in_a_new_registration() {
        let kv = MemKv::new();
        let registry = Registry::new(kv.clone(), "/fleet/");
        let mut r = start(&registry, record("m1", "t"));
        let lease = registered(&mut r).await;
        kv.set_unavailable(true);
        tokio::time::sleep(TTL * 2).await;
        kv.set_unavailable(false);
        registered_again(&mut r, "m1", lease).await;
    }

    #[tokio::test(start_paused = true)]
    async fn registration_waits_for_etcd() {
        let kv = MemKv::new();
        let registry = Registry::new(kv.clone(), "/fleet/");
        kv.set_unavailable(true);
        let mut r = start(&registry, record("m1", "t"));
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(!*r.ready.borrow());
        kv.set_unavailable(false);
        registered(&mut r).await;
    }

    #[tokio::test(start_paused = true)]
    async fn purge_removes_presence() {
        let registry = Registry::new(MemKv::new(), "/fleet/");
        let mut r = start(&registry, record("m1", "t"));
        registered(&mut r).await;
        r.cancel.cancel();
        r.task.await.unwrap().unwrap();
        r.handle.purge().await.unwrap();
        assert!(registry.machine(&id("m1")).await.unwrap().is_none());
    }
}
