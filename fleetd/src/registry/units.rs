//! Units: content and desired state at `units/<name>`.
//!
//! A value that is not a unit record for its key (garbage, the wrong JSON, a
//! record naming another unit) is skipped as if absent: left out of
//! listings, `None` for a get, `NotFound` for a change of desired state.
//! Creating the unit again replaces it.

use units::UnitName;

use super::keys::ParsedKey;
use super::kv::{Compare, KeyValue, Op, Txn};
use super::{
    Error, Kv, Listing, Registry, Result, Revision, Versioned, decode_json, encode_json, mismatch,
};
use crate::schema::{TargetState, UnitRecord};

impl<K: Kv> Registry<K> {
    /// One unit, with the revision to compare against when changing it.
    pub async fn unit(&self, name: &UnitName) -> Result<Option<Versioned<UnitRecord>>> {
        let key = self.keys.unit(name);
        let (found, _) = self.kv.get(&key).await?;
        Ok(found.and_then(|kv| {
            Some(Versioned {
                value: self.unit_record(&kv)?,
                mod_revision: Revision(kv.mod_revision),
            })
        }))
    }

    /// The unit record stored in `kv`, if it is one (see the module docs).
    fn unit_record(&self, kv: &KeyValue) -> Option<UnitRecord> {
        self.valid(kv, |kv| {
            let record: UnitRecord = decode_json(&kv.key, &kv.value)?;
            match self.keys.parse(&kv.key) {
                Some(ParsedKey::Unit(name)) if name == record.name => Ok(record),
                Some(ParsedKey::Unit(_)) => Err(mismatch(&kv.key, "the record names another unit")),
                _ => Err(mismatch(&kv.key, "not a unit key")),
            }
        })
    }

    /// Every unit, sorted by name.
    pub async fn units(&self) -> Result<Listing<UnitRecord>> {
        let (kvs, revision) = self.kv.list(&self.keys.units_prefix()).await?;
        // Keys are `units/<name>`, so key order is name order.
        let items = kvs.iter().filter_map(|kv| self.unit_record(kv)).collect();
        Ok(Listing { items, revision })
    }

    /// Create a unit, or replace its content and desired state.
    pub async fn put_unit(&self, unit: &UnitRecord) -> Result<Revision> {
        let key = self.keys.unit(&unit.name);
        let value = encode_json(unit);
        let resp = self
            .kv
            .txn(Txn {
                success: vec![Op::Put {
                    key,
                    value,
                    lease: None,
                }],
                ..Txn::default()
            })
            .await?;
        Ok(resp.revision)
    }

    /// Change only the desired state, if the unit is still at `expect`
    /// (`Conflict` otherwise, `NotFound` if it is gone).
    pub async fn set_desired_state(
        &self,
        name: &UnitName,
        state: TargetState,
        expect: Revision,
    ) -> Result<Revision> {
        let key = self.keys.unit(name);
        let not_found = || Error::NotFound {
            what: format!("unit {:?}", name.to_string()),
        };
        let (found, _) = self.kv.get(&key).await?;
        let current = found.ok_or_else(not_found)?;
        if current.mod_revision != expect.0 {
            return Err(Error::Conflict { key });
        }
        let mut record = self.unit_record(&current).ok_or_else(not_found)?;
        record.desired_state = state;
        let value = encode_json(&record);
        let resp = self
            .kv
            .txn(Txn {
                compares: vec![Compare::ModRevision(key.clone(), expect.0)],
                success: vec![Op::Put {
                    key: key.clone(),
                    value,
                    lease: None,
                }],
                failure: vec![Op::Get { key: key.clone() }],
            })
            .await?;
        if resp.succeeded {
            return Ok(resp.revision);
        }
        match resp.gets.first() {
            Some(Some(_)) => Err(Error::Conflict { key }),
            _ => Err(not_found()),
        }
    }

    /// Delete a unit; false if it did not exist. The engine then removes it
    /// from the schedule and the agents stop it.
    pub async fn delete_unit(&self, name: &UnitName) -> Result<bool> {
        let resp = self
            .kv
            .txn(Txn {
                success: vec![Op::Delete {
                    key: self.keys.unit(name),
                }],
                ..Txn::default()
            })
            .await?;
        Ok(resp.deleted.first().is_some_and(|&n| n > 0))
    }
}
