//! Can a unit run on a machine? The `[X-Fleet]` checks, pure.
//!
//! This is the original's `AgentState.AbleToRun`, moved out of the agent so
//! the engine does not import it (fleet-reference.md §3.5, §5). A machine is
//! described by its ID, its merged metadata (config metadata with dynamic
//! metadata laid over it) and the units placed on it *in the pass being
//! computed* ([`Residents`]), so decisions already taken in a pass count.
//!
//! The checks, in the order [`able_to_run`] applies them (the first refusal
//! is reported):
//! 1. `MachineID`: the full ID or its first 8 characters;
//! 2. `MachineMetadata`: OR within a key, AND across keys;
//! 3. `MachineOf`: every named peer is placed on the machine;
//! 4. `Conflicts`, both ways: one of the unit's globs matches a resident, or
//!    a resident's glob matches the unit;
//! 5. `Replaces`, reversed: a resident replaces the unit. The original let
//!    the scheduler put a replaced unit back next to the unit that replaces
//!    it (and then pushed it away again on the next pass); refusing the
//!    machine makes the schedule converge.
//!
//! A unit never conflicts with, nor is replaced by, itself. `Replaces` is
//! ignored between two units that replace each other (as in the original),
//! when either unit is global, and towards a unit's own `MachineOf` peer (see
//! [`replaces`]).

use std::fmt;

use units::Requirements;

use crate::schema::MachineId;

/// The units placed on one machine, as a check sees them.
///
/// `schedule.rs` implements it over its working schedule; tests use
/// `ResidentList`. The two filtered iterators exist so an implementation
/// can keep short lists of the (few) residents that have `Conflicts` or
/// `Replaces`; the defaults filter [`Residents::iter`].
pub trait Residents {
    /// Whether `unit` is placed on the machine.
    fn contains(&self, unit: &str) -> bool;

    /// Every resident with its requirements.
    fn iter(&self) -> impl Iterator<Item = (&str, &Requirements)>;

    /// The residents that have `Conflicts` globs.
    fn with_conflicts(&self) -> impl Iterator<Item = (&str, &Requirements)> {
        self.iter().filter(|(_, r)| !r.conflicts.is_empty())
    }

    /// The residents that have `Replaces` globs.
    fn with_replaces(&self) -> impl Iterator<Item = (&str, &Requirements)> {
        self.iter().filter(|(_, r)| !r.replaces.is_empty())
    }
}

/// A plain list of residents, for tests.
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub struct ResidentList<'a>(pub Vec<(&'a str, &'a Requirements)>);

#[cfg(test)]
impl Residents for ResidentList<'_> {
    fn contains(&self, unit: &str) -> bool {
        self.0.iter().any(|(name, _)| *name == unit)
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Requirements)> {
        self.0.iter().copied()
    }
}

/// The machine a check is about.
#[derive(Clone, Copy, Debug)]
pub struct MachineRef<'a> {
    /// Its ID.
    pub id: &'a MachineId,
    /// Config metadata merged with dynamic metadata.
    pub metadata: &'a std::collections::BTreeMap<String, String>,
}

/// Why a unit cannot run on a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `MachineID` names another machine.
    MachineId {
        /// The required ID (full or short).
        required: String,
    },
    /// The machine's metadata does not satisfy `MachineMetadata`.
    Metadata {
        /// The first required key with no matching value.
        key: String,
    },
    /// A `MachineOf` peer is not placed on the machine.
    PeerMissing {
        /// The peer.
        peer: String,
    },
    /// A resident conflicts with the unit (either direction).
    Conflict {
        /// The resident.
        with: String,
    },
    /// A resident's `Replaces` matches the unit.
    ReplacedBy {
        /// The resident.
        by: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::MachineId { required } => write!(f, "unit requires machine {required}"),
            Refusal::Metadata { key } => {
                write!(
                    f,
                    "machine metadata does not satisfy MachineMetadata for {key:?}"
                )
            }
            Refusal::PeerMissing { peer } => {
                write!(f, "required peer {peer} is not scheduled on the machine")
            }
            Refusal::Conflict { with } => write!(f, "conflicts with {with} on the machine"),
            Refusal::ReplacedBy { by } => write!(f, "replaced by {by} on the machine"),
        }
    }
}

/// `MachineID`: the machine's full ID or its 8-character short ID.
pub fn check_machine_id(reqs: &Requirements, machine: &MachineId) -> Result<(), Refusal> {
    if reqs.matches_machine_id(machine.as_str()) {
        return Ok(());
    }
    Err(Refusal::MachineId {
        required: reqs.machine_id.clone().unwrap_or_default(),
    })
}

/// `MachineMetadata`: every required key has one of its required values.
pub fn check_metadata(
    reqs: &Requirements,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<(), Refusal> {
    match reqs
        .metadata
        .iter()
        .find(|(key, values)| !metadata.get(*key).is_some_and(|have| values.contains(have)))
    {
        None => Ok(()),
        Some((key, _)) => Err(Refusal::Metadata { key: key.clone() }),
    }
}

/// `MachineOf`: every peer is a resident.
pub fn check_peers(reqs: &Requirements, residents: &impl Residents) -> Result<(), Refusal> {
    match reqs
        .machine_of
        .iter()
        .find(|peer| !residents.contains(peer))
    {
        None => Ok(()),
        Some(peer) => Err(Refusal::PeerMissing { peer: peer.clone() }),
    }
}

/// Whether a `Conflicts` glob of `reqs` matches `name`. Each glob's literal
/// prefix is compared first: most globs (`web@*.service`) reject most names
/// at their first bytes, without running the matcher.
pub fn conflicts_with(reqs: &Requirements, name: &str) -> bool {
    reqs.conflicts.iter().any(|glob| {
        let literal = glob
            .find(['*', '?', '[', '\\'])
            .map_or(glob.as_str(), |end| &glob[..end]);
        name.starts_with(literal) && units::glob_match(glob, name)
    })
}

/// `Conflicts`, both ways, against every resident but the unit itself.
pub fn check_conflicts(
    unit: &str,
    reqs: &Requirements,
    residents: &impl Residents,
) -> Result<(), Refusal> {
    if !reqs.conflicts.is_empty()
        && let Some((other, _)) = residents
            .iter()
            .find(|(other, _)| *other != unit && conflicts_with(reqs, other))
    {
        return Err(Refusal::Conflict {
            with: other.to_owned(),
        });
    }
    match residents
        .with_conflicts()
        .find(|(other, theirs)| *other != unit && conflicts_with(theirs, unit))
    {
        None => Ok(()),
        Some((other, _)) => Err(Refusal::Conflict {
            with: other.to_owned(),
        }),
    }
}

/// Whether `a` replaces `b`. Ignored, so false: a mutual relation (as in
/// the original), a relation involving a global unit (global units were
/// never "scheduled" in the original, so `Replaces` never saw them), and a
/// unit replacing its own `MachineOf` peer (a combination the API refuses).
pub fn replaces(a: &str, a_reqs: &Requirements, b: &str, b_reqs: &Requirements) -> bool {
    a != b
        && !a_reqs.global
        && !b_reqs.global
        && a_reqs.replaces_unit(b)
        && !b_reqs.replaces_unit(a)
        && !a_reqs.machine_of.iter().any(|peer| peer == b)
}

/// Reversed `Replaces`: no resident replaces the unit.
pub fn check_not_replaced(
    unit: &str,
    reqs: &Requirements,
    residents: &impl Residents,
) -> Result<(), Refusal> {
    match residents
        .with_replaces()
        .find(|(other, theirs)| replaces(other, theirs, unit, reqs))
    {
        None => Ok(()),
        Some((by, _)) => Err(Refusal::ReplacedBy { by: by.to_owned() }),
    }
}

/// The checks that depend only on the machine itself (`MachineID`,
/// `MachineMetadata`), not on what else runs there.
pub fn machine_fits(reqs: &Requirements, machine: MachineRef<'_>) -> Result<(), Refusal> {
    check_machine_id(reqs, machine.id)?;
    check_metadata(reqs, machine.metadata)
}

/// The checks that depend on the residents (`MachineOf`, `Conflicts`,
/// reversed `Replaces`).
pub fn residents_allow(
    unit: &str,
    reqs: &Requirements,
    residents: &impl Residents,
) -> Result<(), Refusal> {
    check_peers(reqs, residents)?;
    check_conflicts(unit, reqs, residents)?;
    check_not_replaced(unit, reqs, residents)
}

/// Whether `unit` may run on `machine` next to `residents` (which may
/// include the unit itself); the first refusal otherwise.
pub fn able_to_run(
    unit: &str,
    reqs: &Requirements,
    machine: MachineRef<'_>,
    residents: &impl Residents,
) -> Result<(), Refusal> {
    machine_fits(reqs, machine)?;
    residents_allow(unit, reqs, residents)
}

/// The residents that `unit` replaces (and that do not replace it back):
/// placing the unit there pushes them away.
pub fn replaced_residents<'r>(
    unit: &str,
    reqs: &Requirements,
    residents: &'r impl Residents,
) -> Vec<&'r str> {
    if reqs.replaces.is_empty() {
        return Vec::new();
    }
    residents
        .iter()
        .filter(|(other, theirs)| replaces(unit, reqs, other, theirs))
        .map(|(other, _)| other)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn reqs(f: impl FnOnce(&mut Requirements)) -> Requirements {
        let mut r = Requirements::default();
        f(&mut r);
        r
    }

    fn id(s: &str) -> MachineId {
        s.parse().expect("valid machine ID")
    }

    fn md(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const FULL: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn machine_id_full_or_short() {
        let m = id(FULL);
        assert_eq!(check_machine_id(&Requirements::default(), &m), Ok(()));
        assert_eq!(
            check_machine_id(&reqs(|r| r.machine_id = Some(FULL.into())), &m),
            Ok(())
        );
        assert_eq!(
            check_machine_id(&reqs(|r| r.machine_id = Some("01234567".into())), &m),
            Ok(())
        );
        assert_eq!(
            check_machine_id(&reqs(|r| r.machine_id = Some("0123456".into())), &m),
            Err(Refusal::MachineId {
                required: "0123456".into()
            })
        );
        assert_eq!(
            check_machine_id(&reqs(|r| r.machine_id = Some("other".into())), &m),
            Err(Refusal::MachineId {
                required: "other".into()
            })
        );
    }

    #[test]
    fn metadata_or_within_and_across_keys() {
        let r = reqs(|r| {
            r.metadata
                .insert("region".into(), vec!["us-east".into(), "us-west".into()]);
            r.metadata.insert("disk".into(), vec!["ssd".into()]);
        });
        assert_eq!(
            check_metadata(&r, &md(&[("region", "us-west"), ("disk", "ssd")])),
            Ok(())
        );
        assert_eq!(
            check_metadata(
                &r,
                &md(&[("region", "us-east"), ("disk", "ssd"), ("x", "y")])
            ),
            Ok(())
        );
        assert_eq!(
            check_metadata(&r, &md(&[("region", "eu"), ("disk", "ssd")])),
            Err(Refusal::Metadata {
                key: "region".into()
            })
        );
        assert_eq!(
            check_metadata(&r, &md(&[("region", "us-east")])),
            Err(Refusal::Metadata { key: "disk".into() })
        );
        assert_eq!(check_metadata(&Requirements::default(), &md(&[])), Ok(()));
    }

    #[test]
    fn peers_must_all_be_here() {
        let none = Requirements::default();
        let r = reqs(|r| r.machine_of = vec!["a.service".into(), "b.service".into()]);
        let both = ResidentList(vec![("a.service", &none), ("b.service", &none)]);
        let one = ResidentList(vec![("a.service", &none)]);
        assert_eq!(check_peers(&r, &both), Ok(()));
        assert_eq!(
            check_peers(&r, &one),
            Err(Refusal::PeerMissing {
                peer: "b.service".into()
            })
        );
        // No globs in MachineOf.
        let glob = reqs(|r| r.machine_of = vec!["a.*".into()]);
        assert!(check_peers(&glob, &both).is_err());
    }

    #[test]
    fn conflicts_both_ways_with_globs_never_with_itself() {
        let none = Requirements::default();
        let web = reqs(|r| r.conflicts = vec!["web@*.service".into()]);
        // Forward: the unit's glob matches a resident.
        let residents = ResidentList(vec![("web@1.service", &none)]);
        assert_eq!(
            check_conflicts("web@2.service", &web, &residents),
            Err(Refusal::Conflict {
                with: "web@1.service".into()
            })
        );
        // Reverse: a resident's glob matches the unit.
        let residents = ResidentList(vec![("web@1.service", &web)]);
        assert_eq!(
            check_conflicts("web@2.service", &none, &residents),
            Err(Refusal::Conflict {
                with: "web@1.service".into()
            })
        );
        // Itself is no conflict.
        let residents = ResidentList(vec![("web@1.service", &web)]);
        assert_eq!(check_conflicts("web@1.service", &web, &residents), Ok(()));
        // No match.
        assert_eq!(check_conflicts("db.service", &none, &residents), Ok(()));
    }

    #[test]
    fn the_prefix_filter_agrees_with_the_matcher() {
        let globs = [
            "web@*.service",
            "web@1.service",
            "*.service",
            "w?b.service",
            "[a-w]eb.service",
            "web\\*.service",
            "web*",
            "[",
            "",
        ];
        let names = [
            "web@1.service",
            "web@.service",
            "web*.service",
            "wab.service",
            "db.service",
            "",
        ];
        for glob in globs {
            let r = reqs(|r| r.conflicts = vec![glob.into()]);
            for name in names {
                assert_eq!(
                    conflicts_with(&r, name),
                    r.conflicts_with(name),
                    "{glob:?} vs {name:?}"
                );
            }
        }
    }

    #[test]
    fn replaces_is_reversed_and_mutual_is_ignored() {
        let none = Requirements::default();
        let r_new = reqs(|r| r.replaces = vec!["old.service".into()]);
        let r_old_mutual = reqs(|r| r.replaces = vec!["new.service".into()]);
        let here = ResidentList(vec![("new.service", &r_new)]);
        assert_eq!(
            check_not_replaced("old.service", &none, &here),
            Err(Refusal::ReplacedBy {
                by: "new.service".into()
            })
        );
        assert_eq!(
            check_not_replaced("old.service", &r_old_mutual, &here),
            Ok(())
        );
        // The replacing unit itself may go next to what it replaces.
        let old_here = ResidentList(vec![("old.service", &none)]);
        assert_eq!(check_not_replaced("new.service", &r_new, &old_here), Ok(()));
        assert_eq!(
            replaced_residents("new.service", &r_new, &old_here),
            ["old.service"]
        );
        let mutual_here = ResidentList(vec![("old.service", &r_old_mutual)]);
        assert!(replaced_residents("new.service", &r_new, &mutual_here).is_empty());
    }

    #[test]
    fn able_to_run_reports_the_first_refusal() {
        let m = id(FULL);
        let meta = md(&[("role", "web")]);
        let machine = MachineRef {
            id: &m,
            metadata: &meta,
        };
        let none = Requirements::default();
        let r = reqs(|r| {
            r.machine_id = Some("elsewhere".into());
            r.metadata.insert("role".into(), vec!["db".into()]);
        });
        let empty = ResidentList::default();
        assert_eq!(
            able_to_run("u.service", &r, machine, &empty),
            Err(Refusal::MachineId {
                required: "elsewhere".into()
            })
        );
        let r = reqs(|r| {
            r.metadata.insert("role".into(), vec!["db".into()]);
            r.machine_of = vec!["p.service".into()];
        });
        assert_eq!(
            able_to_run("u.service", &r, machine, &empty),
            Err(Refusal::Metadata { key: "role".into() })
        );
        let r = reqs(|r| {
            r.machine_of = vec!["p.service".into()];
            r.conflicts = vec!["x.service".into()];
        });
        let here = ResidentList(vec![("x.service", &none)]);
        assert_eq!(
            able_to_run("u.service", &r, machine, &here),
            Err(Refusal::PeerMissing {
                peer: "p.service".into()
            })
        );
        let here = ResidentList(vec![("x.service", &none), ("p.service", &none)]);
        assert_eq!(
            able_to_run("u.service", &r, machine, &here),
            Err(Refusal::Conflict {
                with: "x.service".into()
            })
        );
        assert_eq!(able_to_run("u.service", &none, machine, &here), Ok(()));
    }

    #[test]
    fn refusals_read_well() {
        assert_eq!(
            Refusal::Conflict {
                with: "a.service".into()
            }
            .to_string(),
            "conflicts with a.service on the machine"
        );
        assert_eq!(
            Refusal::PeerMissing {
                peer: "p.service".into()
            }
            .to_string(),
            "required peer p.service is not scheduled on the machine"
        );
        assert_eq!(
            Refusal::MachineId {
                required: "abc".into()
            }
            .to_string(),
            "unit requires machine abc"
        );
    }
}
