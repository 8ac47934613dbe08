//! Engine leadership on its own lease at `engine/leader`.
//!
//! The leader key holds the leader's machine ID. Its `create_revision`
//! identifies one leadership term: the [`Fence`]. Every schedule write is a
//! transaction that compares the leader key's `create_revision` with the fence,
//! so a deposed leader (its lease expired, someone else created the key) can
//! never write a schedule again.

use super::{Kv, LeaseId, Registry, Result};
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
    pub async fn acquire_leadership(&self, me: &MachineId, lease: LeaseId) -> Result<Option<Fence>> {
        todo!("{me} {lease:?}")
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<MachineId>> {
        todo!()
    }

    /// Whether `fence` still holds.
    pub async fn is_leader(&self, fence: &Fence) -> Result<bool> {
        todo!("{fence:?}")
    }

    /// Give leadership up (delete the key if this term still holds it).
    pub async fn release_leadership(&self, fence: &Fence) -> Result<()> {
        todo!("{fence:?}")
    }
}
