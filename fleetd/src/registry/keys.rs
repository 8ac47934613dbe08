//! The etcd key layout: the only file that spells out keys.
//!
//! Everything lives under one prefix (`etcd_key_prefix`, default
//! `/_coreos.com/fleet/`), normalised to end in exactly one `/`. Relative to it
//! (see `docs/etcd-keys.md` for values, leases and writers):
//!
//! | key | value |
//! |---|---|
//! | `machines/<machine>` | [`MachineRecord`](crate::schema::MachineRecord) JSON, on the machine's lease |
//! | `metadata/<machine>/<key>` | dynamic metadata value, plain string, no lease |
//! | `units/<unit>` | [`UnitRecord`](crate::schema::UnitRecord) JSON |
//! | `targets/<unit>` | machine ID a non-global unit is scheduled to |
//! | `schedule/<machine>/<unit>` | [`ScheduledUnit`](crate::schema::ScheduledUnit) JSON |
//! | `states/<unit>/<machine>` | [`UnitStateRecord`](crate::schema::UnitStateRecord) JSON, on the publisher's lease |
//! | `engine/leader` | leader's machine ID, on the leader's engine lease |
//!
//! Neither unit names nor machine IDs contain `/`, so every key splits
//! unambiguously; a metadata key may (it is the rest of the key). Note that
//! keys sort as strings, which is not always the order of their parts (`-`
//! and `.` sort before `/`): listings that promise an order by parts sort
//! explicitly.

use std::str::FromStr;

use units::UnitName;

use crate::schema::MachineId;

/// The default key prefix, as in the original fleet.
pub const DEFAULT_PREFIX: &str = "/_coreos.com/fleet/";

/// Builds and parses the keys under one prefix. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// The prefix, ending in exactly one `/`.
    prefix: String,
}

/// A key of ours, with its typed parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedKey {
    /// `machines/<machine>`: a machine's presence.
    Machine(MachineId),
    /// `metadata/<machine>/<key>`: one dynamic metadata key.
    Metadata {
        /// The machine.
        machine: MachineId,
        /// The metadata key (may be empty or contain `/`).
        key: String,
    },
    /// `units/<unit>`: a unit's content and desired state.
    Unit(UnitName),
    /// `targets/<unit>`: where a non-global unit is scheduled.
    Target(UnitName),
    /// `schedule/<machine>/<unit>`: one entry of a machine's schedule.
    Scheduled {
        /// The machine whose agent runs it.
        machine: MachineId,
        /// The unit.
        unit: UnitName,
    },
    /// `states/<unit>/<machine>`: a unit's state as published by a machine.
    State {
        /// The unit.
        unit: UnitName,
        /// The publishing machine.
        machine: MachineId,
    },
    /// `engine/leader`: the engine leader.
    Leader,
}

/// Relative directory names, kept together so the layout reads in one place.
mod dir {
    pub const MACHINES: &str = "machines/";
    pub const METADATA: &str = "metadata/";
    pub const UNITS: &str = "units/";
    pub const TARGETS: &str = "targets/";
    pub const SCHEDULE: &str = "schedule/";
    pub const STATES: &str = "states/";
    pub const LEADER: &str = "engine/leader";
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// Keys under `prefix`; trailing slashes are normalised to exactly one
    /// (`/a/b`, `/a/b/` and `/a/b//` are the same prefix; `""` is `/`).
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.trim_end_matches('/').to_owned();
        prefix.push('/');
        Keys { prefix }
    }

    /// The prefix, ending in `/`. Every key of ours starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn join(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for p in parts {
            key.push_str(p);
        }
        key
    }

    /// `machines/`: every machine's presence.
    pub fn machines_prefix(&self) -> String {
        self.join(&[dir::MACHINES])
    }

    /// `machines/<machine>`.
    pub fn machine(&self, machine: &MachineId) -> String {
        self.join(&[dir::MACHINES, machine.as_str()])
    }

    /// `metadata/`: every machine's dynamic metadata.
    pub fn metadata_prefix(&self) -> String {
        self.join(&[dir::METADATA])
    }

    /// `metadata/<machine>/`: one machine's dynamic metadata.
    pub fn metadata_of(&self, machine: &MachineId) -> String {
        self.join(&[dir::METADATA, machine.as_str(), "/"])
    }

    /// `metadata/<machine>/<key>`.
    pub fn metadata(&self, machine: &MachineId, key: &str) -> String {
        self.join(&[dir::METADATA, machine.as_str(), "/", key])
    }

    /// `units/`: every unit.
    pub fn units_prefix(&self) -> String {
        self.join(&[dir::UNITS])
    }

    /// `units/<unit>`.
    pub fn unit(&self, unit: &UnitName) -> String {
        self.join(&[dir::UNITS, unit.as_str()])
    }

    /// `targets/`: every non-global placement.
    pub fn targets_prefix(&self) -> String {
        self.join(&[dir::TARGETS])
    }

    /// `targets/<unit>`.
    pub fn target(&self, unit: &UnitName) -> String {
        self.join(&[dir::TARGETS, unit.as_str()])
    }

    /// `schedule/`: every machine's schedule.
    pub fn schedule_prefix(&self) -> String {
        self.join(&[dir::SCHEDULE])
    }

    /// `schedule/<machine>/`: what one agent watches.
    pub fn schedule_of(&self, machine: &MachineId) -> String {
        self.join(&[dir::SCHEDULE, machine.as_str(), "/"])
    }

    /// `schedule/<machine>/<unit>`.
    pub fn scheduled(&self, machine: &MachineId, unit: &UnitName) -> String {
        self.join(&[dir::SCHEDULE, machine.as_str(), "/", unit.as_str()])
    }

    /// `states/`: every published unit state.
    pub fn states_prefix(&self) -> String {
        self.join(&[dir::STATES])
    }

    /// `states/<unit>/`: one unit's states, one per machine.
    pub fn states_of(&self, unit: &UnitName) -> String {
        self.join(&[dir::STATES, unit.as_str(), "/"])
    }

    /// `states/<unit>/<machine>`.
    pub fn state(&self, unit: &UnitName, machine: &MachineId) -> String {
        self.join(&[dir::STATES, unit.as_str(), "/", machine.as_str()])
    }

    /// `engine/leader`.
    pub fn leader(&self) -> String {
        self.join(&[dir::LEADER])
    }

    /// The kind of a full key under our prefix (see [`kind_of`]); `other`
    /// outside the prefix or the layout.
    pub fn kind(&self, key: &str) -> &'static str {
        let Some(rel) = key.strip_prefix(self.prefix.as_str()) else {
            return "other";
        };
        let mut segments = rel.split('/');
        let first = segments.next().unwrap_or_default();
        dir_kind(first, segments.next()).unwrap_or("other")
    }

    /// What a full key is, or `None` if it is not one of ours (outside the
    /// prefix, an unknown directory, or a unit name or machine ID that does not
    /// parse).
    pub fn parse(&self, key: &str) -> Option<ParsedKey> {
        let rel = key.strip_prefix(self.prefix.as_str())?;
        if rel == dir::LEADER {
            return Some(ParsedKey::Leader);
        }
        if let Some(id) = rel.strip_prefix(dir::MACHINES) {
            return Some(ParsedKey::Machine(id.parse().ok()?));
        }
        if let Some(rest) = rel.strip_prefix(dir::METADATA) {
            let (machine, key) = rest.split_once('/')?;
            return Some(ParsedKey::Metadata {
                machine: machine.parse().ok()?,
                key: key.to_owned(),
            });
        }
        if let Some(name) = rel.strip_prefix(dir::UNITS) {
            return Some(ParsedKey::Unit(unit_name(name)?));
        }
        if let Some(name) = rel.strip_prefix(dir::TARGETS) {
            return Some(ParsedKey::Target(unit_name(name)?));
        }
        if let Some(rest) = rel.strip_prefix(dir::SCHEDULE) {
            let (machine, unit) = rest.split_once('/')?;
            return Some(ParsedKey::Scheduled {
                machine: machine.parse().ok()?,
                unit: unit_name(unit)?,
            });
        }
        if let Some(rest) = rel.strip_prefix(dir::STATES) {
            let (unit, machine) = rest.split_once('/')?;
            return Some(ParsedKey::State {
                unit: unit_name(unit)?,
                machine: machine.parse().ok()?,
            });
        }
        None
    }
}

/// The kind of a key, as the `kind` label of
/// `fleet_registry_invalid_values_total` names it: `machine`, `metadata`,
/// `unit`, `target`, `schedule`, `state`, `leader`, or `other` for a key
/// outside the layout. Use [`Keys::kind`] where the prefix is known.
///
/// Without the prefix, the kind is that of the first path segment naming one
/// of our directories, which is right for any prefix that does not itself
/// contain such a segment (the default `/_coreos.com/fleet/` does not). The
/// caches and the etcd driver use this: they see a key, not a layout.
pub fn kind_of(key: &str) -> &'static str {
    let mut segments = key.split('/').peekable();
    while let Some(segment) = segments.next() {
        if let Some(kind) = dir_kind(segment, segments.peek().copied()) {
            return kind;
        }
    }
    "other"
}

/// The kind of a directory segment (`engine` only when followed by
/// `leader`).
fn dir_kind(segment: &str, next: Option<&str>) -> Option<&'static str> {
    Some(match segment {
        "machines" => "machine",
        "metadata" => "metadata",
        "units" => "unit",
        "targets" => "target",
        "schedule" => "schedule",
        "states" => "state",
        "engine" if next.is_some_and(|n| n.starts_with("leader")) => "leader",
        _ => return None,
    })
}

/// A unit name from a key part; never one containing `/` (it would make the
/// key ambiguous).
fn unit_name(s: &str) -> Option<UnitName> {
    if s.contains('/') {
        return None;
    }
    UnitName::from_str(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> MachineId {
        s.parse().expect("test machine ID is valid")
    }

    fn u(s: &str) -> UnitName {
        s.parse().expect("test unit name is valid")
    }

    #[test]
    fn prefix_is_normalised_to_one_slash() {
        assert_eq!(Keys::new("/a/b").prefix(), "/a/b/");
        assert_eq!(Keys::new("/a/b/").prefix(), "/a/b/");
        assert_eq!(Keys::new("/a/b///").prefix(), "/a/b/");
        assert_eq!(Keys::new("").prefix(), "/");
        assert_eq!(Keys::default().prefix(), DEFAULT_PREFIX);
    }

    #[test]
    fn keys_are_spelled_as_documented() {
        let k = Keys::new("/p");
        assert_eq!(k.machine(&m("m1")), "/p/machines/m1");
        assert_eq!(k.metadata(&m("m1"), "role"), "/p/metadata/m1/role");
        assert_eq!(k.metadata_of(&m("m1")), "/p/metadata/m1/");
        assert_eq!(k.unit(&u("a@1.service")), "/p/units/a@1.service");
        assert_eq!(k.target(&u("a.service")), "/p/targets/a.service");
        assert_eq!(
            k.scheduled(&m("m1"), &u("a.service")),
            "/p/schedule/m1/a.service"
        );
        assert_eq!(k.schedule_of(&m("m1")), "/p/schedule/m1/");
        assert_eq!(k.state(&u("a.service"), &m("m1")), "/p/states/a.service/m1");
        assert_eq!(k.states_of(&u("a.service")), "/p/states/a.service/");
        assert_eq!(k.leader(), "/p/engine/leader");
    }

    #[test]
    fn parse_inverts_every_builder() {
        let k = Keys::new("/p/");
        let (mid, unit) = (m("m1"), u("a@x\\x2dy.service"));
        let cases = [
            (k.machine(&mid), ParsedKey::Machine(mid.clone())),
            (
                k.metadata(&mid, "a/b"),
                ParsedKey::Metadata {
                    machine: mid.clone(),
                    key: "a/b".into(),
                },
            ),
            (k.unit(&unit), ParsedKey::Unit(unit.clone())),
            (k.target(&unit), ParsedKey::Target(unit.clone())),
            (
                k.scheduled(&mid, &unit),
                ParsedKey::Scheduled {
                    machine: mid.clone(),
                    unit: unit.clone(),
                },
            ),
            (
                k.state(&unit, &mid),
                ParsedKey::State {
                    unit: unit.clone(),
                    machine: mid.clone(),
                },
            ),
            (k.leader(), ParsedKey::Leader),
        ];
        for (key, want) in cases {
            assert_eq!(k.parse(&key), Some(want), "{key}");
        }
    }

    #[test]
    fn kinds_name_the_directory() {
        let k = Keys::new("/p/");
        let unit = u("a.service");
        for (key, kind) in [
            (k.machine(&m("m1")), "machine"),
            (k.metadata(&m("m1"), "units/x"), "metadata"),
            (k.unit(&unit), "unit"),
            (k.target(&unit), "target"),
            (k.scheduled(&m("units"), &unit), "schedule"),
            (k.state(&unit, &m("m1")), "state"),
            (k.leader(), "leader"),
            ("/p/engine/other".to_owned(), "other"),
            ("/p/junk".to_owned(), "other"),
        ] {
            assert_eq!(k.kind(&key), kind, "{key}");
            assert_eq!(kind_of(&key), kind, "{key}");
        }
        assert_eq!(k.kind("/q/units/a.service"), "other");
        assert_eq!(kind_of("/_coreos.com/fleet/units/\u{fffd}"), "unit");
    }

    #[test]
    fn parse_rejects_foreign_keys() {
        let k = Keys::new("/p/");
        for key in [
            "/q/units/a.service",
            "/p/unknown/x",
            "/p/machines/",
            "/p/schedule/m1",
            "/p/schedule/m1/",
            "/p/states/a.service/",
            "/p/states/a.service/m1/extra",
            "/p/engine/leader/x",
            "/p/units/",
        ] {
            assert_eq!(k.parse(key), None, "{key}");
        }
    }
}
