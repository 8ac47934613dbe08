//! Machine presence (`machines/<id>`, on the machine's lease) and dynamic
//! metadata (`metadata/<id>/<key>`, no lease: it survives restarts).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Kv, LeaseId, Listing, Registry, Result, Revision};
use crate::schema::{MachineId, MachineRecord};

impl<K: Kv> Registry<K> {
    /// Grant the machine's lease (one per machine; its presence and unit
    /// states hang off it).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        todo!("{ttl:?}")
    }

    /// Refresh a lease; `Err(LeaseNotFound)` once it has expired.
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        todo!("{lease:?}")
    }

    /// Revoke a lease and everything attached to it.
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        todo!("{lease:?}")
    }

    /// Register the machine under `lease`: create `machines/<id>`, or take it
    /// over at once when the existing record carries the same token (a
    /// restarted fleetd on the same host), moving the key to `lease` and then
    /// revoking the previous lease (its unit states are republished by the new
    /// agent). `Err(MachineIdInUse)` when a record with another token holds it.
    pub async fn register_machine(&self, record: &MachineRecord, lease: LeaseId) -> Result<Revision> {
        todo!("{record:?} {lease:?}")
    }

    /// Overwrite this machine's record (e.g. a new IP), keeping it on `lease`.
    pub async fn update_machine(&self, record: &MachineRecord, lease: LeaseId) -> Result<Revision> {
        todo!("{record:?} {lease:?}")
    }

    /// Remove the machine's presence record.
    pub async fn remove_machine(&self, id: &MachineId) -> Result<()> {
        todo!("{id}")
    }

    /// One machine's record.
    pub async fn machine(&self, id: &MachineId) -> Result<Option<MachineRecord>> {
        todo!("{id}")
    }

    /// Every live machine, sorted by ID (config metadata only; see
    /// [`Registry::dynamic_metadata`]).
    pub async fn machines(&self) -> Result<Listing<MachineRecord>> {
        todo!()
    }

    /// Set one dynamic metadata key of a machine (the machine need not exist).
    pub async fn set_metadata(&self, id: &MachineId, key: &str, value: &str) -> Result<()> {
        todo!("{id} {key} {value}")
    }

    /// Remove one dynamic metadata key.
    pub async fn remove_metadata(&self, id: &MachineId, key: &str) -> Result<()> {
        todo!("{id} {key}")
    }

    /// All dynamic metadata, by machine.
    pub async fn dynamic_metadata(&self) -> Result<BTreeMap<MachineId, BTreeMap<String, String>>> {
        todo!()
    }
}
