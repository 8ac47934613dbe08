//! Unit states published by agents at `states/<unit>/<machine>`, attached to
//! the publishing machine's lease so they vanish with it.
//!
//! A value that is not a state record for its key (garbage, the wrong JSON,
//! a record naming another unit or machine) is skipped as if absent.

use units::UnitName;

use super::keys::ParsedKey;
use super::kv::{KeyValue, Op, Txn};
use super::{Kv, LeaseId, Listing, Registry, Result, decode_json, encode_json, mismatch};
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
        let mut items = self.decode_states(&kvs);
        // Key order is not (unit, machine) order: `-` and `.` sort before `/`.
        items
            .sort_by_cached_key(|s| (s.name.as_str().to_owned(), s.machine_id.as_str().to_owned()));
        Ok(Listing { items, revision })
    }

    /// The states of one unit, sorted by machine.
    pub async fn unit_states_of(&self, unit: &UnitName) -> Result<Vec<UnitStateRecord>> {
        let (kvs, _) = self.kv.list(&self.keys.states_of(unit)).await?;
        // Keys are `states/<unit>/<machine>`: key order is machine order.
        Ok(self.decode_states(&kvs))
    }

    /// The valid state records among `kvs` (see the module docs).
    fn decode_states(&self, kvs: &[KeyValue]) -> Vec<UnitStateRecord> {
        kvs.iter()
            .filter_map(|kv| {
                self.valid(kv, |kv| {
                    let record: UnitStateRecord = decode_json(&kv.key, &kv.value)?;
                    match self.keys.parse(&kv.key) {
                        Some(ParsedKey::State { unit, machine })
                            if unit == record.name && machine == record.machine_id =>
                        {
                            Ok(record)
                        }
                        Some(ParsedKey::State { .. }) => Err(mismatch(
                            &kv.key,
                            "the record names another unit or machine",
                        )),
                        _ => Err(mismatch(&kv.key, "not a unit state key")),
                    }
                })
            })
            .collect()
    }
}
