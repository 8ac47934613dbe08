//! Unit states published by agents at `states/<unit>/<machine>`, attached to
//! the publishing machine's lease so they vanish with it.

use units::UnitName;

use super::kv::{KeyValue, Op, Txn};
use super::{Kv, LeaseId, Listing, Registry, Result, decode_json, encode_json};
use crate::schema::{MachineId, UnitStateRecord};

impl<K: Kv> Registry<K> {
    /// Publish (create or overwrite) one unit state under the machine's lease.
    pub async fn publish_state(&self, lease: LeaseId, state: &UnitStateRecord) -> Result<()> {
        let key = self.keys.state(&state.name, &state.machine_id);
        self.kv
            .txn(Txn {
                success: vec![Op::Put {
                    key,
                    value: encode_json(state),
                    lease: Some(lease),
                }],
                ..Txn::default()
            })
            .await?;
        Ok(())
    }

    /// Remove one machine's state for a unit.
    pub async fn remove_state(&self, unit: &UnitName, machine: &MachineId) -> Result<()> {
        self.kv
            .txn(Txn {
                success: vec![Op::Delete {
                    key: self.keys.state(unit, machine),
                }],
                ..Txn::default()
            })
            .await?;
        Ok(())
    }

    /// Every published state, sorted by (unit, machine).
    pub async fn unit_states(&self) -> Result<Listing<UnitStateRecord>> {
        let (kvs, revision) = self.kv.list(&self.keys.states_prefix()).await?;
        let mut items = decode_states(&kvs)?;
        // Key order is not (unit, machine) order: `-` and `.` sort before `/`.
        items
            .sort_by_cached_key(|s| (s.name.as_str().to_owned(), s.machine_id.as_str().to_owned()));
        Ok(Listing { items, revision })
    }

    /// The states of one unit, sorted by machine.
    pub async fn unit_states_of(&self, unit: &UnitName) -> Result<Vec<UnitStateRecord>> {
        let (kvs, _) = self.kv.list(&self.keys.states_of(unit)).await?;
        // Keys are `states/<unit>/<machine>`: key order is machine order.
        decode_states(&kvs)
    }
}

fn decode_states(kvs: &[KeyValue]) -> Result<Vec<UnitStateRecord>> {
    kvs.iter()
        .map(|kv| decode_json(&kv.key, &kv.value))
        .collect()
}
