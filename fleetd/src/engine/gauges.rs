//! The cluster-wide gauges of `/metrics`, from the leader's caches.
//!
//! While it leads, the engine keeps its term's caches here (with one more
//! watched cache, of `states/`, which the passes do not use), and the API
//! asks for the gauges at scrape time through [`Engine::cluster_source`]: a
//! scrape reads nothing from etcd, and a fleetd that does not lead has no
//! gauges to export. See [`crate::metrics`] for what is exported.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use units::UnitName;

use super::Engine;
use super::view::{CachedEntry, CachedUnit};
use crate::client::registry::current_state;
use crate::metrics::{ClusterGauges, ClusterReading, ClusterSource};
use crate::registry::cache::{self, Store};
use crate::registry::{Keys, Kv, ParsedKey};
use crate::schema::{MachineId, MachineRecord, TargetState, UnitStateRecord};

/// The caches of the term in progress, if any. A std `Mutex`: it is held
/// only to clone the stores.
pub(super) type TermCaches = Arc<Mutex<Option<Caches>>>;

/// What the gauges are computed from.
#[derive(Clone)]
pub(super) struct Caches {
    /// `units/`.
    pub units: Store<CachedUnit>,
    /// `schedule/` (standing in for `targets/`).
    pub schedule: Store<CachedEntry>,
    /// `machines/`.
    pub machines: Store<MachineRecord>,
    /// `states/`.
    pub states: Store<UnitStateRecord>,
}

/// Decodes `states/<unit>/<machine>`; a record naming another unit or
/// machine than its key is skipped, as the registry's readers skip it.
pub(super) fn decode_state(
    keys: Keys,
) -> impl Fn(&str, &[u8]) -> Option<UnitStateRecord> + Send + Sync {
    move |key, value| {
        let ParsedKey::State { unit, machine } = keys.parse(key)? else {
            return None;
        };
        let record: UnitStateRecord = cache::json_record(key, value)?;
        (record.name == unit && record.machine_id == machine).then_some(record)
    }
}

impl<K: Kv> Engine<K> {
    /// Where the API reads the cluster gauges: from this engine's caches
    /// while it leads.
    pub fn cluster_source(&self) -> ClusterSource {
        let term = Arc::clone(&self.term);
        Arc::new(move || {
            let caches = term.lock().unwrap_or_else(PoisonError::into_inner).clone();
            match caches {
                None => ClusterReading::Absent,
                Some(c) => c.reading(),
            }
        })
    }
}

impl Caches {
    /// The gauges, once every cache is listed.
    fn reading(&self) -> ClusterReading {
        if !(self.units.is_ready()
            && self.schedule.is_ready()
            && self.machines.is_ready()
            && self.states.is_ready())
        {
            return ClusterReading::Pending;
        }
        let schedule = self.schedule.snapshot();
        let targets: HashMap<&UnitName, &MachineId> = schedule
            .values()
            .filter(|e| !e.entry.global)
            .map(|e| (&e.unit, &e.machine))
            .collect();
        let states = self.states.snapshot();
        let by_unit: HashMap<(&UnitName, &MachineId), &UnitStateRecord> = states
            .values()
            .map(|s| ((&s.name, &s.machine_id), s.as_ref()))
            .collect();
        let mut units: BTreeMap<(String, String), u64> = BTreeMap::new();
        for unit in self.units.snapshot().values() {
            let current = if unit.view.requirements.global {
                TargetState::Inactive
            } else {
                let target = targets.get(&unit.name).copied();
                let state = target.and_then(|m| by_unit.get(&(&unit.name, m)).copied());
                current_state(|| unit.view.hash, target, state)
            };
            *units
                .entry((unit.view.desired_state.to_string(), current.to_string()))
                .or_default() += 1;
        }
        let mut unit_states: BTreeMap<String, u64> = BTreeMap::new();
        for state in states.values() {
            *unit_states.entry(state.active_state.clone()).or_default() += 1;
        }
        ClusterReading::Ready(ClusterGauges {
            units,
            unit_states,
            machines: self.machines.snapshot().len() as u64,
        })
    }
}
