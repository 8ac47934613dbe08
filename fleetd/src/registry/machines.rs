//! Machine presence (`machines/<id>`, on the machine's lease) and dynamic
//! metadata (`metadata/<id>/<key>`, no lease: it survives restarts).
//!
//! Registration compares the record's token, a random value that identifies
//! one fleetd installation on one host: a restarted fleetd presents the same
//! token and takes its record over at once (no waiting for the old lease to
//! expire); another host that happens to have the same machine ID presents
//! another token and is refused. Every write is a transaction on the key's
//! `mod_revision` (0 when absent), retried a few times when it races.
//!
//! A value that is not a machine record for its key (garbage, the wrong
//! JSON, a record naming another machine) is skipped by every read as if
//! absent, and registration takes such a key over like a vacant one: it
//! carries no token, so no fleetd owns it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::keys::ParsedKey;
use super::kv::{Compare, KeyValue, Op, Txn};
use super::{
    Error, Kv, LeaseId, Listing, Registry, Result, Revision, decode_json, encode_json, mismatch,
};
use crate::schema::{MachineId, MachineRecord};

/// Lays one dynamic metadata key (set through the API) over a machine's
/// metadata (from its config): the value replaces the config's, and an
/// empty value, the API's tombstone for a removed key, hides it.
pub fn merge_metadata(metadata: &mut BTreeMap<String, String>, key: &str, value: &str) {
    if value.is_empty() {
        metadata.remove(key);
    } else {
        metadata.insert(key.to_owned(), value.to_owned());
    }
}

/// How often a registration retries after losing a race on the key.
const REGISTER_ATTEMPTS: usize = 5;

impl<K: Kv> Registry<K> {
    /// Grant the machine's lease (one per machine; its presence and unit
    /// states hang off it).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.kv.grant(ttl).await
    }

    /// Refresh a lease; `Err(LeaseNotFound)` once it has expired.
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        self.kv.keep_alive(lease).await
    }

    /// Revoke a lease and everything attached to it.
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.kv.revoke(lease).await
    }

    /// Register the machine under `lease`: create `machines/<id>`, or take it
    /// over at once when the existing record carries the same token (a
    /// restarted fleetd on the same host), moving the key to `lease` and then
    /// revoking the previous lease (its unit states are republished by the new
    /// agent). `Err(MachineIdInUse)` when a record with another token holds it.
    pub async fn register_machine(
        &self,
        record: &MachineRecord,
        lease: LeaseId,
    ) -> Result<Revision> {
        let (revision, previous) = self.write_machine(record, lease).await?;
        if let Some(old) = previous.and_then(|kv| kv.lease).filter(|&old| old != lease) {
            self.kv.revoke(old).await?;
        }
        Ok(revision)
    }

    /// Overwrite this machine's record (e.g. a new IP), keeping it on `lease`.
    /// `Err(MachineIdInUse)` if another host has taken the ID meanwhile.
    pub async fn update_machine(&self, record: &MachineRecord, lease: LeaseId) -> Result<Revision> {
        self.write_machine(record, lease)
            .await
            .map(|(revision, _)| revision)
    }

    /// Put `record` on `lease` unless a record with another token holds the
    /// key; the revision written and the record replaced.
    async fn write_machine(
        &self,
        record: &MachineRecord,
        lease: LeaseId,
    ) -> Result<(Revision, Option<KeyValue>)> {
        let key = self.keys.machine(&record.id);
        let value = encode_json(record);
        for _ in 0..REGISTER_ATTEMPTS {
            let (current, _) = self.kv.get(&key).await?;
            // A record fleet did not write carries no token: take it over.
            if let Some(kv) = &current
                && let Some(existing) = self.machine_record(kv)
                && existing.token != record.token
            {
                return Err(Error::MachineIdInUse {
                    machine: record.id.to_string(),
                });
            }
            let expect = current.as_ref().map_or(0, |kv| kv.mod_revision);
            let resp = self
                .kv
                .txn(Txn {
                    compares: vec![Compare::ModRevision(key.clone(), expect)],
                    success: vec![Op::Put {
                        key: key.clone(),
                        value: value.clone(),
                        lease: Some(lease),
                    }],
                    failure: Vec::new(),
                })
                .await?;
            if resp.succeeded {
                return Ok((resp.revision, current));
            }
        }
        Err(Error::Conflict { key })
    }

    /// Remove the machine's presence record.
    pub async fn remove_machine(&self, id: &MachineId) -> Result<()> {
        self.delete_key(self.keys.machine(id)).await
    }

    /// One machine's record.
    pub async fn machine(&self, id: &MachineId) -> Result<Option<MachineRecord>> {
        let (found, _) = self.kv.get(&self.keys.machine(id)).await?;
        Ok(found.and_then(|kv| self.machine_record(&kv)))
    }

    /// The machine record stored in `kv`, if it is one (see the module docs).
    fn machine_record(&self, kv: &KeyValue) -> Option<MachineRecord> {
        self.valid(kv, |kv| {
            let record: MachineRecord = decode_json(&kv.key, &kv.value)?;
            match self.keys.parse(&kv.key) {
                Some(ParsedKey::Machine(id)) if id == record.id => Ok(record),
                Some(ParsedKey::Machine(_)) => {
                    Err(mismatch(&kv.key, "the record names another machine"))
                }
                _ => Err(mismatch(&kv.key, "not a machine key")),
            }
        })
    }

    /// Every live machine, sorted by ID (config metadata only; see
    /// [`Registry::dynamic_metadata`]).
    pub async fn machines(&self) -> Result<Listing<MachineRecord>> {
        let (kvs, revision) = self.kv.list(&self.keys.machines_prefix()).await?;
        // Keys are `machines/<id>`: key order is ID order.
        let items = kvs
            .iter()
            .filter_map(|kv| self.machine_record(kv))
            .collect();
        Ok(Listing { items, revision })
    }

    /// Set one dynamic metadata key of a machine (the machine need not exist).
    pub async fn set_metadata(&self, id: &MachineId, key: &str, value: &str) -> Result<()> {
        self.kv
            .txn(Txn {
                success: vec![Op::Put {
                    key: self.keys.metadata(id, key),
                    value: value.as_bytes().to_vec(),
                    lease: None,
                }],
                ..Txn::default()
            })
            .await?;
        Ok(())
    }

    /// Remove one dynamic metadata key.
    pub async fn remove_metadata(&self, id: &MachineId, key: &str) -> Result<()> {
        self.delete_key(self.keys.metadata(id, key)).await
    }

    /// All dynamic metadata, by machine.
    pub async fn dynamic_metadata(&self) -> Result<BTreeMap<MachineId, BTreeMap<String, String>>> {
        let (kvs, _) = self.kv.list(&self.keys.metadata_prefix()).await?;
        let mut all: BTreeMap<MachineId, BTreeMap<String, String>> = BTreeMap::new();
        for kv in kvs {
            let decoded = self.valid(&kv, |kv| {
                let Some(ParsedKey::Metadata { machine, key }) = self.keys.parse(&kv.key) else {
                    return Err(mismatch(&kv.key, "unexpected key in the registry layout"));
                };
                let value = std::str::from_utf8(&kv.value).map_err(|e| Error::Decode {
                    key: kv.key.clone(),
                    source: Box::new(e),
                })?;
                Ok((machine, key, value.to_owned()))
            });
            if let Some((machine, key, value)) = decoded {
                all.entry(machine).or_default().insert(key, value);
            }
        }
        Ok(all)
    }

    /// Delete one key (no error if it is absent).
    async fn delete_key(&self, key: String) -> Result<()> {
        self.kv
            .txn(Txn {
                success: vec![Op::Delete { key }],
                ..Txn::default()
            })
            .await?;
        Ok(())
    }
}
