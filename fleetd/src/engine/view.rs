//! From the engine's watched caches to a [`ClusterView`]: the decoders the
//! caches run once per changed key, and the pure function that assembles a
//! view from their snapshots.
//!
//! Parsing is done where it is cheapest: a unit's `[X-Fleet]` requirements
//! and content hash are computed by the units cache's decoder when the unit
//! changes, and shared (`Arc`) by every later view, so a pass never parses a
//! unit file.
//!
//! The view also replays the engine's own recent writes ([`Overlay`]): the
//! schedule cache learns of them only when their watch events arrive, and a
//! pass that ran on a schedule missing half of the previous pass's writes
//! could place a unit a second time.

use std::collections::BTreeMap;
use std::sync::Arc;

use units::{Requirements, UnitName};

use super::schedule::{ClusterView, Decision, MachineView, UnitView};
use crate::registry::cache::{self, Snapshot};
use crate::registry::{Keys, ParsedKey, Revision};
use crate::schema::{MachineId, MachineRecord, ScheduledUnit, UnitRecord};

/// A unit as the engine caches it: parsed once per change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedUnit {
    /// Its name (from the key).
    pub name: UnitName,
    /// What the scheduler needs of it.
    pub view: UnitView,
}

/// One schedule entry as the engine caches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedEntry {
    /// The machine whose schedule it is in.
    pub machine: MachineId,
    /// The unit.
    pub unit: UnitName,
    /// The entry.
    pub entry: ScheduledUnit,
}

/// One dynamic metadata key as the engine caches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedMetadata {
    /// The machine it belongs to.
    pub machine: MachineId,
    /// The metadata key.
    pub key: String,
    /// Its value; empty means "removed" (the original's tombstone).
    pub value: String,
}

/// Decodes `units/<name>`: the record, its hash and its requirements
/// (evaluated without the API's combination rules, so units stored by an
/// older fleet still schedule).
pub fn decode_unit(keys: Keys) -> impl Fn(&str, &[u8]) -> Option<CachedUnit> + Send + Sync {
    move |key, value| {
        let ParsedKey::Unit(name) = keys.parse(key)? else {
            return None;
        };
        let record: UnitRecord = cache::json_record(key, value)?;
        if record.name != name {
            // Not written by fleet (the API lists it nowhere either).
            return None;
        }
        let file = record.file();
        let requirements = Requirements::extract(&name, &file);
        Some(CachedUnit {
            view: UnitView {
                desired_state: record.desired_state,
                hash: file.hash(),
                requirements: Arc::new(requirements),
            },
            name,
        })
    }
}

/// Decodes `schedule/<machine>/<unit>`.
pub fn decode_entry(keys: Keys) -> impl Fn(&str, &[u8]) -> Option<CachedEntry> + Send + Sync {
    move |key, value| {
        let ParsedKey::Scheduled { machine, unit } = keys.parse(key)? else {
            return None;
        };
        Some(CachedEntry {
            machine,
            unit,
            entry: cache::json_record(key, value)?,
        })
    }
}

/// Decodes `machines/<id>`.
pub fn decode_machine(keys: Keys) -> impl Fn(&str, &[u8]) -> Option<MachineRecord> + Send + Sync {
    move |key, value| {
        let ParsedKey::Machine(id) = keys.parse(key)? else {
            return None;
        };
        let record: MachineRecord = cache::json_record(key, value)?;
        // The key names the machine; a record claiming another ID is bad.
        (record.id == id).then_some(record)
    }
}

/// Decodes `metadata/<machine>/<key>`.
pub fn decode_metadata(keys: Keys) -> impl Fn(&str, &[u8]) -> Option<CachedMetadata> + Send + Sync {
    move |key, value| {
        let ParsedKey::Metadata { machine, key } = keys.parse(key)? else {
            return None;
        };
        Some(CachedMetadata {
            machine,
            key,
            value: String::from_utf8(value.to_vec()).ok()?,
        })
    }
}

/// One consistent-enough read of the four caches.
#[derive(Clone, Debug)]
pub struct Snapshots {
    /// `units/`.
    pub units: Snapshot<CachedUnit>,
    /// `schedule/`.
    pub schedule: Snapshot<CachedEntry>,
    /// `machines/`.
    pub machines: Snapshot<MachineRecord>,
    /// `metadata/`.
    pub metadata: Snapshot<CachedMetadata>,
}

/// The engine's writes that its schedule cache may not show yet.
///
/// Each applied batch is kept with the store revision of its last
/// transaction and dropped once the schedule cache has reached it. Replaying
/// a batch the cache already shows changes nothing (a put of the same entry,
/// a removal of an absent one), and only the leader writes the schedule, so
/// keeping a batch longer than needed is harmless.
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    /// Applied batches, oldest first (shared: a pass works on a copy).
    batches: Vec<(Revision, Arc<Vec<Decision>>)>,
}

impl Overlay {
    /// Remember a batch applied at `revision`.
    pub fn push(&mut self, revision: Revision, decisions: Vec<Decision>) {
        if !decisions.is_empty() {
            self.batches.push((revision, Arc::new(decisions)));
        }
    }

    /// Forget the batches the schedule cache (at `cache_revision`) shows.
    pub fn trim(&mut self, cache_revision: Revision) {
        self.batches.retain(|(rev, _)| *rev > cache_revision);
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The number of pending batches.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Replay the pending batches on `view`, oldest first.
    pub fn replay(&self, view: &mut ClusterView) {
        for (_, decisions) in &self.batches {
            view.apply(decisions);
        }
    }
}

/// Assemble the scheduler's input from the caches, with the overlay replayed.
/// Machine metadata is the record's (config) metadata with the dynamic keys
/// laid over it; an empty dynamic value removes the key.
pub fn build_view(snapshots: &Snapshots, overlay: &Overlay) -> ClusterView {
    let mut machines: BTreeMap<MachineId, MachineView> = snapshots
        .machines
        .values()
        .map(|record| {
            (
                record.id.clone(),
                MachineView {
                    metadata: record.metadata.clone(),
                },
            )
        })
        .collect();
    for m in snapshots.metadata.values() {
        if let Some(machine) = machines.get_mut(&m.machine) {
            crate::registry::merge_metadata(&mut machine.metadata, &m.key, &m.value);
        }
    }
    let units = snapshots
        .units
        .values()
        .map(|u| (u.name.clone(), u.view.clone()))
        .collect();
    let mut schedule: BTreeMap<MachineId, BTreeMap<UnitName, ScheduledUnit>> = BTreeMap::new();
    // Keys sort by machine then unit within a machine's prefix, so each
    // machine's entries arrive together and mostly in order.
    let mut current: Option<(&MachineId, BTreeMap<UnitName, ScheduledUnit>)> = None;
    for e in snapshots.schedule.values() {
        match &mut current {
            Some((machine, entries)) if *machine == &e.machine => {
                entries.insert(e.unit.clone(), e.entry.clone());
            }
            _ => {
                if let Some((machine, entries)) = current.take() {
                    schedule.entry(machine.clone()).or_default().extend(entries);
                }
                current = Some((
                    &e.machine,
                    BTreeMap::from([(e.unit.clone(), e.entry.clone())]),
                ));
            }
        }
    }
    if let Some((machine, entries)) = current {
        schedule.entry(machine.clone()).or_default().extend(entries);
    }
    let mut view = ClusterView {
        machines,
        units,
        schedule,
    };
    overlay.replay(&mut view);
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::schedule::Reason;
    use crate::registry::ScheduleChange;
    use crate::registry::cache::Snapshot;
    use crate::schema::{Capabilities, TargetState};

    fn snap<T>(items: Vec<(String, T)>) -> Snapshot<T> {
        Arc::new(items.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
    }

    fn mid(s: &str) -> MachineId {
        s.parse().expect("valid machine ID")
    }

    fn uname(s: &str) -> UnitName {
        s.parse().expect("valid unit name")
    }

    fn record(id: &str, md: &[(&str, &str)]) -> MachineRecord {
        MachineRecord {
            id: mid(id),
            public_ip: String::new(),
            metadata: md.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            capabilities: Capabilities::default(),
            version: String::new(),
            token: String::new(),
        }
    }

    fn entry(global: bool) -> ScheduledUnit {
        ScheduledUnit {
            desired_state: TargetState::Launched,
            hash: units::UnitHash::default(),
            global,
        }
    }

    #[test]
    fn decoders_parse_once_and_check_keys() {
        let keys = Keys::new("/f/");
        let name = uname("web.service");
        let record = UnitRecord {
            name: name.clone(),
            desired_state: TargetState::Launched,
            options: vec![
                units::UnitOption::new("Service", "ExecStart", "/bin/true"),
                units::UnitOption::new("X-Fleet", "Conflicts", "web*"),
            ],
        };
        let json = serde_json::to_vec(&record).expect("serializes");
        let unit = decode_unit(keys.clone())(&keys.unit(&name), &json).expect("decodes");
        assert_eq!(unit.name, name);
        assert_eq!(unit.view.hash, record.hash());
        assert_eq!(unit.view.requirements.conflicts, ["web*"]);
        assert!(decode_unit(keys.clone())(&keys.machine(&mid("m1")), &json).is_none());
        assert!(decode_unit(keys.clone())(&keys.unit(&name), b"{").is_none());

        let m = record_json("m1");
        assert!(decode_machine(keys.clone())(&keys.machine(&mid("m1")), &m).is_some());
        assert!(
            decode_machine(keys.clone())(&keys.machine(&mid("m2")), &m).is_none(),
            "the record names another machine"
        );
        let md = decode_metadata(keys.clone())(&keys.metadata(&mid("m1"), "role"), b"web")
            .expect("decodes");
        assert_eq!((md.key.as_str(), md.value.as_str()), ("role", "web"));
        let e = serde_json::to_vec(&entry(true)).expect("serializes");
        let decoded =
            decode_entry(keys.clone())(&keys.scheduled(&mid("m1"), &name), &e).expect("decodes");
        assert_eq!(decoded.entry, entry(true));
    }

    fn record_json(id: &str) -> Vec<u8> {
        serde_json::to_vec(&record(id, &[])).expect("serializes")
    }

    #[test]
    fn builds_the_view_with_merged_metadata_and_the_overlay() {
        let snapshots = Snapshots {
            units: snap(vec![]),
            schedule: snap(vec![
                (
                    "s/m1/a".into(),
                    CachedEntry {
                        machine: mid("m1"),
                        unit: uname("a.service"),
                        entry: entry(false),
                    },
                ),
                (
                    "s/m2/b".into(),
                    CachedEntry {
                        machine: mid("m2"),
                        unit: uname("b.service"),
                        entry: entry(false),
                    },
                ),
            ]),
            machines: snap(vec![
                (
                    "m/m1".into(),
                    record("m1", &[("role", "web"), ("disk", "ssd")]),
                ),
                ("m/m2".into(), record("m2", &[])),
            ]),
            metadata: snap(vec![
                (
                    "md/m1/role".into(),
                    CachedMetadata {
                        machine: mid("m1"),
                        key: "role".into(),
                        value: "db".into(),
                    },
                ),
                (
                    "md/m1/disk".into(),
                    CachedMetadata {
                        machine: mid("m1"),
                        key: "disk".into(),
                        value: String::new(),
                    },
                ),
                (
                    "md/m3/x".into(),
                    CachedMetadata {
                        machine: mid("m3"),
                        key: "x".into(),
                        value: "y".into(),
                    },
                ),
            ]),
        };
        let mut overlay = Overlay::default();
        overlay.push(
            Revision(10),
            vec![Decision {
                change: ScheduleChange::Remove {
                    unit: uname("a.service"),
                    machine: mid("m1"),
                },
                reason: Reason::Inactive,
            }],
        );
        let view = build_view(&snapshots, &overlay);
        assert_eq!(
            view.machines[&mid("m1")].metadata,
            BTreeMap::from([("role".into(), "db".into())])
        );
        assert!(
            !view.machines.contains_key(&mid("m3")),
            "metadata alone is no machine"
        );
        assert_eq!(view.load(&mid("m1")), 0, "the overlay removed a.service");
        assert_eq!(view.load(&mid("m2")), 1);
        overlay.trim(Revision(9));
        assert_eq!(overlay.len(), 1);
        overlay.trim(Revision(10));
        assert!(overlay.is_empty());
        assert_eq!(build_view(&snapshots, &overlay).load(&mid("m1")), 1);
    }
}
