//! Units: content and desired state at `units/<name>`.

use units::UnitName;

use super::kv::{Compare, Op, Txn};
use super::{Error, Kv, Listing, Registry, Result, Revision, Versioned, decode_json, encode_json};
use crate::schema::{TargetState, UnitRecord};

impl<K: Kv> Registry<K> {
    /// One unit, with the revision to compare against when changing it.
    pub async fn unit(&self, name: &UnitName) -> Result<Option<Versioned<UnitRecord>>> {
        let key = self.keys.unit(name);
        let (found, _) = self.kv.get(&key).await?;
        found
            .map(|kv| {
                Ok(Versioned {
                    value: decode_json(&kv.key, &kv.value)?,
                    mod_revision: Revision(kv.mod_revision),
                })
            })
            .transpose()
    }

    /// Every unit, sorted by name.
    pub async fn units(&self) -> Result<Listing<UnitRecord>> {
        let (kvs, revision) = self.kv.list(&self.keys.units_prefix()).await?;
        // Keys are `units/<name>`, so key order is name order.
        let items = kvs
            .iter()
            .map(|kv| decode_json::<UnitRecord>(&kv.key, &kv.value))
            .collect::<Result<Vec<_>>>()?;
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
        let mut record: UnitRecord = decode_json(&key, &current.value)?;
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
