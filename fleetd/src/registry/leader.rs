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

use super::kv::{Compare, Op, Txn};
use super::{Kv, LeaseId, Registry, Result, decode_str};
use crate::schema::MachineId;

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
        Ok(resp.gets.into_iter().flatten().next().and_then(|holder| {
            (holder.value == me.as_str().as_bytes() && holder.lease == Some(lease)).then_some(
                Fence {
                    key,
                    create_revision: holder.create_revision,
                    lease,
                },
            )
        }))
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<MachineId>> {
        let (found, _) = self.kv.get(&self.keys.leader()).await?;
        found.map(|kv| decode_str(&kv.key, &kv.value)).transpose()
    }

    /// Whether `fence` still holds.
    pub async fn is_leader(&self, fence: &Fence) -> Result<bool> {
        let (found, _) = self.kv.get(&fence.key).await?;
        Ok(found.is_some_and(|kv| kv.create_revision == fence.create_revision))
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
