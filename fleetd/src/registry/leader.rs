//! Engine leadership on its own lease at `engine/leader`.
//!
//! The leader key holds the leader's machine ID. Its `create_revision`
//! identifies one leadership term: the [`Fence`]. Every schedule write is a
//! transaction that compares the leader key's `create_revision` with the fence,
//! so a deposed leader (its lease expired, someone else created the key) can
//! never write a schedule again.
//!
//! A machine that finds the key holding its own ID on another lease (a
//! previous fleetd on this host, whose engine lease has not expired yet) is
//! not the leader: taking the key over would keep its `create_revision` and so
//! keep the old term's fence valid. It waits for that lease to expire.
//!
//! **Stale leader keys.** A leader key fleet wrote always has a lease and
//! holds a machine ID. One without a lease (`etcdctl put` with no
//! `--lease`, which also detaches the lease of a key fleet wrote) would
//! never expire, and one holding something that is not a machine ID names
//! nobody: either would block every engine forever. Such a key is *stale*
//! ([`holder`] answers `None` for it): [`Registry::acquire_leadership`]
//! deletes it in a transaction comparing its `mod_revision` (so a key that
//! changed meanwhile, such as a real leader's, is left alone) and then
//! competes as for a vacant key. Deleting rather than overwriting gives the
//! next term a new `create_revision`: an engine whose key was overwritten in
//! place keeps a fence matching the old `create_revision` (its schedule
//! writes still pass until the delete, while no other engine leads), and
//! [`Registry::is_leader`] tells it its term is over because the key left
//! its lease, so even a lone engine steps down and takes the key anew.

use super::kv::{Compare, KeyValue, Op, Txn};
use super::{Kv, LeaseId, Registry, Result, invalid, keys};
use crate::schema::MachineId;

/// How often [`Registry::acquire_leadership`] clears a stale key and tries
/// again within one call.
const STALE_ATTEMPTS: usize = 2;

/// The machine that holds the leader key `kv`, or `None` when the key is
/// stale (see the module docs). Pure: a cache decoding with it counts what
/// it skips itself.
#[cfg(feature = "daemon")]
pub fn holder(kv: &KeyValue) -> Option<MachineId> {
    stale(kv).ok()
}

/// [`holder`], logging and counting a stale key as a value fleet did not
/// write.
fn checked_holder(kv: &KeyValue) -> Option<MachineId> {
    match stale(kv) {
        Ok(id) => Some(id),
        Err(why) => {
            invalid::skipped(keys::kind_of(&kv.key), &kv.key, kv.mod_revision, &why);
            None
        }
    }
}

/// The holder of a leader key fleet could have written, or why it is stale.
fn stale(kv: &KeyValue) -> std::result::Result<MachineId, String> {
    let text = std::str::from_utf8(&kv.value)
        .map_err(|e| format!("the leader key does not hold a machine ID: {e}"))?;
    let id: MachineId = text
        .parse()
        .map_err(|e| format!("the leader key does not hold a machine ID: {e}"))?;
    if kv.lease.is_none() {
        return Err(format!(
            "the leader key names {id} but has no lease, so it would never expire"
        ));
    }
    Ok(id)
}

/// Proof of one leadership term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The leader key.
    pub key: String,
    /// `create_revision` of the leader key in this term.
    pub create_revision: i64,
    /// The leader's lease.
    pub lease: LeaseId,
}

impl<K: Kv> Registry<K> {
    /// Try to become leader: create the leader key on `lease` if it is free.
    /// `Some(fence)` if this machine is (now, or still, on this lease) the
    /// leader, `None` if another machine leads.
    pub async fn acquire_leadership(
        &self,
        me: &MachineId,
        lease: LeaseId,
    ) -> Result<Option<Fence>> {
        let key = self.keys.leader();
        for _ in 0..STALE_ATTEMPTS {
            let resp = self
                .kv
                .txn(Txn {
                    compares: vec![Compare::CreateRevision(key.clone(), 0)],
                    success: vec![Op::Put {
                        key: key.clone(),
                        value: me.as_str().as_bytes().to_vec(),
                        lease: Some(lease),
                    }],
                    failure: vec![Op::Get { key: key.clone() }],
                })
                .await?;
            if resp.succeeded {
                // The put created the key at the transaction's revision.
                return Ok(Some(Fence {
                    key,
                    create_revision: resp.revision.0,
                    lease,
                }));
            }
            let Some(current) = resp.gets.into_iter().flatten().next() else {
                // Deleted in between: compete again.
                continue;
            };
            if checked_holder(&current).is_some() {
                let ours = current.value == me.as_str().as_bytes() && current.lease == Some(lease);
                return Ok(ours.then_some(Fence {
                    key,
                    create_revision: current.create_revision,
                    lease,
                }));
            }
            // Stale: clear it unless it changed since we read it.
            self.kv
                .txn(Txn {
                    compares: vec![Compare::ModRevision(key.clone(), current.mod_revision)],
                    success: vec![Op::Delete { key: key.clone() }],
                    failure: Vec::new(),
                })
                .await?;
            tracing::warn!(key = %key, revision = current.mod_revision, "cleared a stale engine leader key");
        }
        Ok(None)
    }

    /// The current leader, if any (`None` for a stale key, see the module
    /// docs).
    pub async fn leader(&self) -> Result<Option<MachineId>> {
        let (found, _) = self.kv.get(&self.keys.leader()).await?;
        Ok(found.as_ref().and_then(checked_holder))
    }

    /// Whether `fence` still holds: the key is still the one this term
    /// created, and still on this term's lease (a key overwritten in place,
    /// e.g. by `etcdctl put`, keeps its `create_revision` but not its lease:
    /// the term is over, and the key is stale for every engine).
    pub async fn is_leader(&self, fence: &Fence) -> Result<bool> {
        let (found, _) = self.kv.get(&fence.key).await?;
        Ok(found.is_some_and(|kv| {
            kv.create_revision == fence.create_revision && kv.lease == Some(fence.lease)
        }))
    }

    /// Give leadership up (delete the key if this term still holds it).
    pub async fn release_leadership(&self, fence: &Fence) -> Result<()> {
        self.kv
            .txn(Txn {
                compares: vec![Compare::CreateRevision(
                    fence.key.clone(),
                    fence.create_revision,
                )],
                success: vec![Op::Delete {
                    key: fence.key.clone(),
                }],
                failure: Vec::new(),
            })
            .await?;
        Ok(())
    }
}
