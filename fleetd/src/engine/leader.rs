//! Leader election: which engine acts. The engine has its own lease (TTL = 5 ×
//! `engine_reconcile_interval` but at most ⅔ of `agent_ttl`, refreshed every
//! TTL/3; see "Failover" in the module doc), separate from the machine's
//! presence lease. A follower watches the leader key (a cache of
//! one key) and, whenever it is vacant (on its deletion and on every tick),
//! grants a lease and tries [`Registry::acquire_leadership`]; while a leader
//! holds the key followers send nothing, where the original had every
//! machine read the key every tick. A leader holds a [`Fence`] for its
//! term, and every schedule write is fenced by it, so a deposed leader can
//! never write again. A term ends when the lease cannot be refreshed within
//! its TTL, when [`Registry::is_leader`] says the key belongs to someone
//! else, or when a write comes back `NotLeader`; the term's
//! [`CancellationToken`] (a child of the loop's) stops its caches and any
//! pass in flight. On shutdown the leader releases the key and revokes the
//! lease, so another engine takes over at once.
//!
//! The term itself (its caches and passes) is `Engine::lead`'s, in
//! `mod.rs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Engine;
use crate::errors::error_chain;
use crate::registry::cache::{Reflector, Store};
use crate::registry::{self, Fence, Kv, LeaseId, ParsedKey};
use crate::retry;
use crate::schema::MachineId;

/// How long shutdown waits for each of releasing the leader key and
/// revoking the lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a leadership term ended.
#[derive(Debug)]
pub(super) enum TermEnd {
    /// The daemon is stopping: release leadership.
    Shutdown,
    /// Leadership is gone (why); try again next tick.
    Lost(&'static str),
}

impl<K: Kv> Engine<K> {
    /// The follower loop: watch the leader key; when it is vacant, take a
    /// lease and try to take the key. Followers send nothing to etcd while
    /// a leader holds the key (one watch each), so thousands of machines do
    /// not poll it every tick.
    pub(super) async fn compete(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let keys = self.registry.keys().clone();
        // A stale leader key (no lease, or no machine ID in it) reads as
        // vacant, so the followers compete and clear it.
        let (reflector, leader) = Reflector::new_kv(
            self.registry.kv().clone(),
            keys.leader(),
            move |kv| match keys.parse(&kv.key)? {
                ParsedKey::Leader => registry::leader::holder(kv),
                _ => None,
            },
        );
        let reflector = reflector.with_mode(self.config.cache);
        // The cache stops only after `follow` has returned (a leader must
        // release before the loop ends), hence its own token.
        let stop_cache = CancellationToken::new();
        let result = tokio::select! {
            () = reflector.run(stop_cache.clone()) => Ok(()),
            result = self.follow(&leader, cancel) => result,
        };
        stop_cache.cancel();
        result
    }

    /// Try to lead whenever the (cached) leader key is vacant, on its
    /// changes and on every tick.
    async fn follow(
        &self,
        leader: &Store<MachineId>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut changes = leader.subscribe();
        let mut tick = tokio::time::interval(self.config.reconcile_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut backoff = retry::ENGINE;
        let mut retry_at: Option<Instant> = None;
        let mut last_leader: Option<Arc<MachineId>> = None;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                () = async { tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)).await },
                    if retry_at.is_some() => retry_at = None,
                _ = changes.changed() => {}
                _ = tick.tick() => {}
            }
            if retry_at.is_some() || !leader.is_ready() {
                continue;
            }
            let holder = leader.snapshot().values().next().cloned();
            if holder != last_leader {
                match &holder {
                    Some(id) => info!(leader = %id, "engine leader"),
                    None => debug!("no engine leads"),
                }
                last_leader.clone_from(&holder);
            }
            if holder.is_some() {
                continue;
            }
            match self.attempt().await {
                Ok(Some(fence)) => {
                    backoff.reset();
                    match self.lead(&fence, cancel).await {
                        Err(e) => {
                            self.release(&fence).await;
                            return Err(e);
                        }
                        Ok(TermEnd::Shutdown) => {
                            self.release(&fence).await;
                            return Ok(());
                        }
                        Ok(TermEnd::Lost(why)) => {
                            warn!(reason = why, "engine leadership lost");
                            self.state.send_modify(|s| {
                                s.terms_lost += 1;
                                s.last_loss = Some(why.to_owned());
                            });
                            // The lease may still live: revoke it, so a
                            // leader key it holds (if still ours) goes too.
                            self.revoke(fence.lease).await;
                        }
                    }
                }
                Ok(None) => backoff.reset(),
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %error_chain(&e), ?delay, "cannot compete for engine leadership; retrying");
                    retry_at = Some(Instant::now() + delay);
                }
            }
        }
    }

    /// Grant a lease and try to take the leader key with it; the lease is
    /// revoked unless it won.
    async fn attempt(&self) -> registry::Result<Option<Fence>> {
        let lease = self.registry.grant_lease(self.config.lease_ttl()).await?;
        let won = self.registry.acquire_leadership(&self.machine, lease).await;
        if !matches!(won, Ok(Some(_))) {
            self.revoke(lease).await;
        }
        won
    }

    /// Keep the engine lease alive and check the leader key every TTL/3;
    /// returns why leadership is gone (or that the term ended).
    pub(super) async fn hold(&self, fence: &Fence, term: &CancellationToken) -> &'static str {
        let ttl = self.config.lease_ttl();
        let mut refreshed = Instant::now();
        loop {
            tokio::select! {
                () = term.cancelled() => return "term ended",
                () = tokio::time::sleep(ttl / 3) => {}
            }
            match self.registry.keep_alive(fence.lease).await {
                Ok(_) => refreshed = Instant::now(),
                Err(registry::Error::LeaseNotFound(_)) => return "engine lease expired",
                Err(e) => warn!(error = %error_chain(&e), "cannot refresh the engine lease"),
            }
            if refreshed.elapsed() >= ttl {
                return "engine lease not refreshed within its TTL";
            }
            match self.registry.is_leader(fence).await {
                Ok(true) => {}
                Ok(false) => return "the leader key belongs to another term",
                Err(e) => warn!(error = %error_chain(&e), "cannot check engine leadership"),
            }
        }
    }

    /// Give leadership up: delete the key, revoke the lease (best effort,
    /// each bounded by [`RELEASE_TIMEOUT`]).
    async fn release(&self, fence: &Fence) {
        match tokio::time::timeout(RELEASE_TIMEOUT, self.registry.release_leadership(fence)).await {
            Ok(Ok(())) => info!("engine leadership released"),
            Ok(Err(e)) => {
                warn!(error = %error_chain(&e), "cannot release engine leadership; it expires with the lease");
            }
            Err(_) => warn!("releasing engine leadership timed out; it expires with the lease"),
        }
        self.revoke(fence.lease).await;
    }

    /// Revoke the engine lease, best effort.
    async fn revoke(&self, lease: LeaseId) {
        match tokio::time::timeout(RELEASE_TIMEOUT, self.registry.revoke_lease(lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(error = %error_chain(&e), "cannot revoke the engine lease; it expires");
            }
            Err(_) => debug!("revoking the engine lease timed out; it expires"),
        }
    }
}
