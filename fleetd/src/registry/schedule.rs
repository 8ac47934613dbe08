//! The schedule: which machine runs which unit.
//!
//! Two keys per placement, written together by the engine leader in one
//! fenced transaction: `schedule/<machine>/<unit>` (a [`ScheduledUnit`], what
//! the agent on that machine watches) and `targets/<unit>` (the machine ID,
//! for the API's `machineID`; absent for global units).
//!
//! [`Registry::apply_schedule`] turns the engine's changes into final key
//! writes and runs them in transactions of at most [`MAX_OPS_PER_TXN`]
//! operations (etcd's default limit is 128), each guarded by the leader
//! key's `create_revision`. A [`ScheduleChange::Remove`] deletes
//! `targets/<unit>` only if it still names that machine: the current targets
//! of the removed units are read first, in fenced read transactions, and the
//! changes are then applied in order to that view. Reading first is safe
//! because only the leader writes targets, and every write is fenced: if the
//! fence still holds when the write lands, nobody else has written a target
//! since we read it. A key touched by several changes is written once, with
//! its final value (etcd refuses a key written twice in one transaction).
//! Change sets larger than one transaction are not atomic: a deposed leader
//! may leave a prefix of its changes, which the next leader reconciles.
//!
//! Reads skip what fleet did not write (a value that does not decode, a key
//! of the wrong shape) as if it were absent; a placement written over such a
//! value replaces it.

use std::collections::HashMap;

use units::UnitName;

use super::keys::ParsedKey;
use super::kv::{Compare, KeyValue, Op, Txn};
use super::{
    Error, Fence, Kv, Listing, Registry, Result, Revision, decode_json, decode_str, encode_json,
    mismatch,
};
use crate::schema::{MachineId, ScheduledUnit};

/// The most operations [`Registry::apply_schedule`] puts in one transaction.
pub const MAX_OPS_PER_TXN: usize = 64;

/// One change to the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleChange {
    /// Put (create or update) `unit` in `machine`'s schedule. For a non-global
    /// unit this also sets `targets/<unit>` to `machine`.
    Put {
        /// The unit.
        unit: UnitName,
        /// The machine.
        machine: MachineId,
        /// What that machine's agent must do.
        entry: ScheduledUnit,
    },
    /// Remove `unit` from `machine`'s schedule (and `targets/<unit>` if it
    /// points at `machine`).
    Remove {
        /// The unit.
        unit: UnitName,
        /// The machine.
        machine: MachineId,
    },
}

/// Final writes in first-touched order, one per key.
#[derive(Default)]
struct Writes {
    /// `(key, value)`; `None` deletes.
    ops: Vec<(String, Option<Vec<u8>>)>,
    /// Index of each key in `ops`.
    index: HashMap<String, usize>,
}

impl Writes {
    fn set(&mut self, key: String, value: Option<Vec<u8>>) {
        match self.index.get(&key) {
            Some(&i) => self.ops[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.ops.len());
                self.ops.push((key, value));
            }
        }
    }
}

impl<K: Kv> Registry<K> {
    /// The machine a (non-global) unit is scheduled to.
    pub async fn target(&self, unit: &UnitName) -> Result<Option<MachineId>> {
        let (found, _) = self.kv.get(&self.keys.target(unit)).await?;
        Ok(found.and_then(|kv| self.valid(&kv, |kv| decode_str(&kv.key, &kv.value))))
    }

    /// Every non-global placement, sorted by unit name.
    pub async fn targets(&self) -> Result<Listing<(UnitName, MachineId)>> {
        let (kvs, revision) = self.kv.list(&self.keys.targets_prefix()).await?;
        // Keys are `targets/<unit>`, so key order is unit-name order.
        let items = kvs
            .iter()
            .filter_map(|kv| {
                self.valid(kv, |kv| match self.keys.parse(&kv.key) {
                    Some(ParsedKey::Target(unit)) => Ok((unit, decode_str(&kv.key, &kv.value)?)),
                    _ => Err(bad_key(kv)),
                })
            })
            .collect();
        Ok(Listing { items, revision })
    }

    /// One machine's schedule, sorted by unit name.
    pub async fn machine_schedule(
        &self,
        machine: &MachineId,
    ) -> Result<Listing<(UnitName, ScheduledUnit)>> {
        let (kvs, revision) = self.kv.list(&self.keys.schedule_of(machine)).await?;
        let items = kvs
            .iter()
            .filter_map(|kv| {
                self.valid(kv, |kv| match self.keys.parse(&kv.key) {
                    Some(ParsedKey::Scheduled { unit, .. }) => {
                        Ok((unit, decode_json(&kv.key, &kv.value)?))
                    }
                    _ => Err(bad_key(kv)),
                })
            })
            .collect();
        Ok(Listing { items, revision })
    }

    /// The whole schedule (every machine), sorted by (machine, unit).
    pub async fn schedule(&self) -> Result<Listing<(MachineId, UnitName, ScheduledUnit)>> {
        let (kvs, revision) = self.kv.list(&self.keys.schedule_prefix()).await?;
        let mut items: Vec<_> = kvs
            .iter()
            .filter_map(|kv| {
                self.valid(kv, |kv| match self.keys.parse(&kv.key) {
                    Some(ParsedKey::Scheduled { machine, unit }) => {
                        Ok((machine, unit, decode_json(&kv.key, &kv.value)?))
                    }
                    _ => Err(bad_key(kv)),
                })
            })
            .collect();
        // Key order is not (machine, unit) order: `-` and `.` sort before `/`.
        items.sort_by_cached_key(|(m, u, _)| (m.as_str().to_owned(), u.as_str().to_owned()));
        Ok(Listing { items, revision })
    }

    /// Apply the engine's changes, fenced by its leadership: each transaction
    /// holds only while `fence` is still the leader key, otherwise
    /// `Err(NotLeader)` and nothing (more) is written. Large change sets are
    /// split into transactions within etcd's per-transaction op limit.
    pub async fn apply_schedule(
        &self,
        fence: &Fence,
        changes: &[ScheduleChange],
    ) -> Result<Revision> {
        let targets = self.current_targets(fence, changes).await?;
        let writes = self.plan_writes(changes, targets);
        if writes.ops.is_empty() {
            // Nothing to write: still answer whether we lead.
            return self.fenced(fence, Vec::new()).await.map(|r| r.revision);
        }
        let mut revision = Revision::default();
        for chunk in writes.ops.chunks(MAX_OPS_PER_TXN) {
            let ops = chunk
                .iter()
                .map(|(key, value)| match value {
                    Some(v) => Op::Put {
                        key: key.clone(),
                        value: v.clone(),
                        lease: None,
                    },
                    None => Op::Delete { key: key.clone() },
                })
                .collect();
            revision = self.fenced(fence, ops).await?.revision;
        }
        Ok(revision)
    }

    /// The current `targets/<unit>` of every unit a `Remove` touches, read in
    /// fenced transactions.
    async fn current_targets(
        &self,
        fence: &Fence,
        changes: &[ScheduleChange],
    ) -> Result<HashMap<String, Option<Vec<u8>>>> {
        let mut keys: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                ScheduleChange::Remove { unit, .. } => Some(self.keys.target(unit)),
                ScheduleChange::Put { .. } => None,
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut targets = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_OPS_PER_TXN) {
            let gets = chunk
                .iter()
                .map(|key| Op::Get { key: key.clone() })
                .collect();
            let resp = self.fenced(fence, gets).await?;
            for (key, found) in chunk.iter().zip(resp.gets) {
                targets.insert(key.clone(), found.map(|kv| kv.value));
            }
        }
        Ok(targets)
    }

    /// Apply `changes` in order to the current targets, yielding one final
    /// write per key.
    fn plan_writes(
        &self,
        changes: &[ScheduleChange],
        mut targets: HashMap<String, Option<Vec<u8>>>,
    ) -> Writes {
        let mut writes = Writes::default();
        for change in changes {
            match change {
                ScheduleChange::Put {
                    unit,
                    machine,
                    entry,
                } => {
                    writes.set(self.keys.scheduled(machine, unit), Some(encode_json(entry)));
                    if !entry.global {
                        let key = self.keys.target(unit);
                        let value = machine.as_str().as_bytes().to_vec();
                        targets.insert(key.clone(), Some(value.clone()));
                        writes.set(key, Some(value));
                    }
                }
                ScheduleChange::Remove { unit, machine } => {
                    writes.set(self.keys.scheduled(machine, unit), None);
                    let key = self.keys.target(unit);
                    let points_here = targets
                        .get(&key)
                        .is_some_and(|t| t.as_deref() == Some(machine.as_str().as_bytes()));
                    if points_here {
                        targets.insert(key.clone(), None);
                        writes.set(key, None);
                    }
                }
            }
        }
        writes
    }

    /// Run `ops` only if `fence` still holds; `NotLeader` otherwise.
    async fn fenced(&self, fence: &Fence, ops: Vec<Op>) -> Result<super::TxnResponse> {
        let resp = self
            .kv
            .txn(Txn {
                compares: vec![Compare::CreateRevision(
                    fence.key.clone(),
                    fence.create_revision,
                )],
                success: ops,
                failure: Vec::new(),
            })
            .await?;
        if resp.succeeded {
            Ok(resp)
        } else {
            Err(Error::NotLeader)
        }
    }
}

/// A key under one of our directories that is not shaped like its siblings.
fn bad_key(kv: &KeyValue) -> Error {
    mismatch(&kv.key, "unexpected key in the registry layout")
}
