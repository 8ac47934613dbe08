//! [`Requirements`]: the `[X-Fleet]` scheduling options of a unit, typed,
//! and the combination rules the API and fleetctl enforce.
//!
//! Evaluation follows fleet's `job` package:
//!
//! 1. Every `[X-Fleet]` value is split into several values when it starts
//!    *and* ends with `"`: quotes toggle, and spaces outside quotes separate
//!    values (`"a=b" "c=d"` gives `a=b`, `c=d`). Otherwise it is one value.
//! 2. In every resulting value the specifiers `%n` (full name), `%N` (name
//!    without type), `%p` (prefix) and `%i` (instance) are replaced, in that
//!    order, from the unit's name.
//! 3. Repeated lines add up. Deprecated spellings count as the modern option,
//!    their values first: `X-ConditionMachineID` (and the legacy
//!    `X-ConditionMachineBootID`) for `MachineID`, `X-ConditionMachineOf` for
//!    `MachineOf`, `X-ConditionMachineMetadata` for `MachineMetadata`,
//!    `X-Conflicts` for `Conflicts`.
//!
//! Other keys are collected in [`Requirements::unrecognized`]; fleetctl warns
//! about them and submits anyway.
//!
//! One deliberate difference: fleet's API validated the combination rules
//! without substituting specifiers (it built the job without its name). We
//! substitute first, so a `MachineOf=%p.socket` is checked against the
//! conflicts as the scheduler will see it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::file::{ParseError, UnitFile, UnitOption};
use crate::glob::glob_match;
use crate::name::UnitName;
use crate::quote::go_quote;

/// The section holding fleet's scheduling options.
pub const X_FLEET_SECTION: &str = "X-Fleet";

const MACHINE_ID: &str = "MachineID";
const X_MACHINE_ID: &str = "X-ConditionMachineID";
const X_MACHINE_BOOT_ID: &str = "X-ConditionMachineBootID";
const MACHINE_OF: &str = "MachineOf";
const X_MACHINE_OF: &str = "X-ConditionMachineOf";
const MACHINE_METADATA: &str = "MachineMetadata";
const X_MACHINE_METADATA: &str = "X-ConditionMachineMetadata";
const CONFLICTS: &str = "Conflicts";
const X_CONFLICTS: &str = "X-Conflicts";
const GLOBAL: &str = "Global";
const REPLACES: &str = "Replaces";

/// Every `[X-Fleet]` key fleet understands, deprecated spellings included.
const KNOWN_KEYS: [&str; 11] = [
    MACHINE_ID,
    X_MACHINE_ID,
    X_MACHINE_BOOT_ID,
    MACHINE_OF,
    X_MACHINE_OF,
    MACHINE_METADATA,
    X_MACHINE_METADATA,
    CONFLICTS,
    X_CONFLICTS,
    GLOBAL,
    REPLACES,
];

/// Length of the short machine ID that `MachineID` may also give.
const SHORT_MACHINE_ID_LEN: usize = 8;

/// A unit's `[X-Fleet]` options, evaluated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// `MachineID`: the unit must run on this machine, given as the full ID
    /// or its first 8 characters. Only the first value counts; the
    /// deprecated spellings are used only when the modern one is absent.
    pub machine_id: Option<String>,
    /// `MachineOf`: exact names of units (no globs) that must already be
    /// scheduled on a machine before this unit may go there.
    pub machine_of: Vec<String>,
    /// `MachineMetadata`: required machine metadata. Values of one key are
    /// alternatives (OR); different keys must all match (AND). Values
    /// without exactly one `=` between a non-empty key and value are dropped.
    pub metadata: BTreeMap<String, Vec<String>>,
    /// `Conflicts`: globs of unit names this unit refuses to share a machine
    /// with (checked both ways by the scheduler). Each value is split on
    /// whitespace.
    pub conflicts: Vec<String>,
    /// `Global`: run on every machine that matches [`Requirements::metadata`]
    /// and has no conflict. The last value decides; `true`, `yes`, `1`,
    /// `on` and `t` in any case are true.
    pub global: bool,
    /// `Replaces`: globs of units to push off this unit's machine, one per
    /// value (not split on whitespace).
    pub replaces: Vec<String>,
    /// `[X-Fleet]` keys fleet does not know, in order of first appearance,
    /// so fleetctl can warn about them.
    pub unrecognized: Vec<String>,
}

/// A unit's `[X-Fleet]` options cannot be satisfied together. The messages
/// are the original's, which the API returns as 400 bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequirementsError {
    /// The canonical text of the options does not parse back (a line of 2048
    /// bytes or more, a name with a newline, ...).
    #[error(transparent)]
    Unparsable(#[from] ParseError),
    /// The canonical text parses back, but to other content: an option's
    /// section, name or value holds what the text cannot carry (a newline,
    /// surrounding whitespace, a trailing `\`, ...). Accepting it would give
    /// the unit a hash that its own text, as the agent writes and re-reads
    /// it, does not have.
    #[error(
        "option {} in section {} does not read back from the unit file text",
        go_quote(.name),
        go_quote(.section)
    )]
    NotRoundTrip {
        /// Section of the first option that reads back differently.
        section: String,
        /// Its name.
        name: String,
    },
    /// A `MachineOf` peer matches a `Conflicts` glob.
    #[error(
        "unresolvable requirements: peer {} matches conflict {}",
        go_quote(.peer),
        go_quote(.conflict)
    )]
    PeerMatchesConflict {
        /// The `MachineOf` unit.
        peer: String,
        /// The `Conflicts` glob matching it.
        conflict: String,
    },
    /// A `MachineOf` peer matches a `Replaces` glob.
    #[error(
        "unresolvable requirements: peer {} matches replace {}",
        go_quote(.peer),
        go_quote(.replace)
    )]
    PeerMatchesReplace {
        /// The `MachineOf` unit.
        peer: String,
        /// The `Replaces` glob matching it.
        replace: String,
    },
    /// `MachineID` together with `MachineOf`.
    #[error("MachineID cannot be used with Peers")]
    MachineIdWithPeers,
    /// `MachineID` together with `Conflicts`.
    #[error("MachineID cannot be used with Conflicts")]
    MachineIdWithConflicts,
    /// `MachineID` together with a true `Global`.
    #[error("MachineID cannot be used with Global")]
    MachineIdWithGlobal,
    /// `MachineID` together with `Replaces`.
    #[error("MachineID cannot be used with Replaces")]
    MachineIdWithReplaces,
    /// A true `Global` together with `MachineOf`.
    #[error("Global cannot be used with Peers")]
    GlobalWithPeers,
    /// A true `Global` together with `Replaces`.
    #[error("Global cannot be used with Replaces")]
    GlobalWithReplaces,
    /// `Conflicts` together with `Replaces`.
    #[error("Conflicts cannot be used with Replaces")]
    ConflictsWithReplaces,
}

impl Requirements {
    /// Evaluates the `[X-Fleet]` section of `file` for the unit `name` and
    /// checks the combination rules (see [`Requirements::validate`]).
    pub fn from_unit(name: &UnitName, file: &UnitFile) -> Result<Requirements, RequirementsError> {
        let requirements = Self::extract(name, file);
        requirements.validate()?;
        Ok(requirements)
    }

    /// Evaluates the `[X-Fleet]` section of `file` for the unit `name`
    /// without checking the combination rules, e.g. for units already
    /// stored by an older fleet.
    pub fn extract(name: &UnitName, file: &UnitFile) -> Requirements {
        let raw = RawRequirements::new(name, file);

        let machine_id = [MACHINE_ID, X_MACHINE_ID, X_MACHINE_BOOT_ID]
            .into_iter()
            .find_map(|key| raw.get(key).first().cloned());

        let machine_of = raw.concat(&[X_MACHINE_OF, MACHINE_OF]).cloned().collect();

        let mut metadata: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pair in raw.concat(&[X_MACHINE_METADATA, MACHINE_METADATA]) {
            let mut parts = pair.split('=');
            let (Some(key), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if key.is_empty() || value.is_empty() {
                continue;
            }
            let values = metadata.entry(key.to_owned()).or_default();
            if !values.iter().any(|v| v == value) {
                values.push(value.to_owned());
            }
        }

        let conflicts = raw
            .concat(&[X_CONFLICTS, CONFLICTS])
            .flat_map(|v| v.split_whitespace())
            .map(str::to_owned)
            .collect();

        let global = raw.get(GLOBAL).last().is_some_and(|v| is_truthy(v));

        let replaces = raw.get(REPLACES).to_vec();

        let unrecognized = raw
            .keys
            .iter()
            .map(|(key, _)| key)
            .filter(|key| !KNOWN_KEYS.contains(&key.as_str()))
            .cloned()
            .collect();

        Requirements {
            machine_id,
            machine_of,
            metadata,
            conflicts,
            global,
            replaces,
            unrecognized,
        }
    }

    /// Checks the combination rules, reporting the first broken one in this
    /// order: a `MachineOf` peer matched by a `Conflicts` or `Replaces` glob;
    /// `MachineID` with `MachineOf`, `Conflicts`, `Global` or `Replaces`;
    /// `Global` with `MachineOf` or `Replaces`; `Conflicts` with `Replaces`.
    pub fn validate(&self) -> Result<(), RequirementsError> {
        let peers = dedup(&self.machine_of);
        let conflicts = dedup(&self.conflicts);
        let replaces = dedup(&self.replaces);
        for peer in &peers {
            if let Some(conflict) = conflicts.iter().find(|c| glob_match(c, peer)) {
                return Err(RequirementsError::PeerMatchesConflict {
                    peer: (*peer).to_owned(),
                    conflict: (*conflict).to_owned(),
                });
            }
            if let Some(replace) = replaces.iter().find(|r| glob_match(r, peer)) {
                return Err(RequirementsError::PeerMatchesReplace {
                    peer: (*peer).to_owned(),
                    replace: (*replace).to_owned(),
                });
            }
        }
        let has_peers = !peers.is_empty();
        let has_conflicts = !conflicts.is_empty();
        let has_replaces = !replaces.is_empty();
        let has_machine = self.machine_id.is_some();
        let global = self.global;
        use RequirementsError as E;
        match () {
            () if has_machine && has_peers => Err(E::MachineIdWithPeers),
            () if has_machine && has_conflicts => Err(E::MachineIdWithConflicts),
            () if has_machine && global => Err(E::MachineIdWithGlobal),
            () if has_machine && has_replaces => Err(E::MachineIdWithReplaces),
            () if global && has_peers => Err(E::GlobalWithPeers),
            () if global && has_replaces => Err(E::GlobalWithReplaces),
            () if has_conflicts && has_replaces => Err(E::ConflictsWithReplaces),
            () => Ok(()),
        }
    }

    /// fleetctl's warning for each unrecognized key, as the original words
    /// it: `unrecognized requirement in [X-Fleet] section: "Foo"`.
    pub fn unrecognized_warnings(&self) -> impl Iterator<Item = String> + '_ {
        self.unrecognized.iter().map(|key| {
            format!(
                "unrecognized requirement in [X-Fleet] section: {}",
                go_quote(key)
            )
        })
    }

    /// Whether any `Conflicts` glob matches `other_unit`. The scheduler
    /// checks both directions itself.
    pub fn conflicts_with(&self, other_unit: &str) -> bool {
        self.conflicts.iter().any(|c| glob_match(c, other_unit))
    }

    /// Whether any `Replaces` glob matches `other_unit`.
    pub fn replaces_unit(&self, other_unit: &str) -> bool {
        self.replaces.iter().any(|r| glob_match(r, other_unit))
    }

    /// Whether the machine `machine_id` satisfies `MachineID`: the required
    /// value equals the full ID or its first 8 characters. True when there is
    /// no `MachineID`.
    pub fn matches_machine_id(&self, machine_id: &str) -> bool {
        let Some(required) = &self.machine_id else {
            return true;
        };
        let full = machine_id.as_bytes();
        let short = &full[..full.len().min(SHORT_MACHINE_ID_LEN)];
        required.as_bytes() == full || required.as_bytes() == short
    }

    /// Whether a machine with `metadata` satisfies `MachineMetadata`: for
    /// every required key the machine has that key with one of the required
    /// values (exact string equality). True when nothing is required.
    pub fn matches_metadata(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.metadata.iter().all(|(key, values)| {
            metadata
                .get(key)
                .is_some_and(|have| values.iter().any(|v| v == have))
        })
    }
}

/// Checks a unit's options as fleet's API does before creating a unit (and
/// fleetctl before submitting): the canonical text must parse back, and the
/// `[X-Fleet]` options must pass [`Requirements::validate`]. The error's
/// `Display` is the 400 message.
pub fn validate_options(
    name: &UnitName,
    file: &UnitFile,
) -> Result<Requirements, RequirementsError> {
    let reparsed = UnitFile::parse(&file.canonical())?;
    if reparsed.hash() != file.hash() {
        let lost = first_lost_option(file, &reparsed);
        return Err(RequirementsError::NotRoundTrip {
            section: lost.map(|o| o.section.clone()).unwrap_or_default(),
            name: lost.map(|o| o.name.clone()).unwrap_or_default(),
        });
    }
    Requirements::from_unit(name, file)
}

/// The first option of `file`, in canonical order (grouped by section),
/// that `reparsed` (its canonical text, parsed) does not have in its place.
fn first_lost_option<'a>(file: &'a UnitFile, reparsed: &UnitFile) -> Option<&'a UnitOption> {
    let mut sections: Vec<&str> = Vec::new();
    for o in file.options() {
        if !sections.contains(&o.section.as_str()) {
            sections.push(&o.section);
        }
    }
    let grouped = sections
        .iter()
        .flat_map(|s| file.options().iter().filter(move |o| o.section == *s));
    let mut back = reparsed.options().iter();
    let mut last = None;
    for option in grouped {
        if back.next() != Some(option) {
            return Some(option);
        }
        last = Some(option);
    }
    last
}

/// `[X-Fleet]` values per key, split and substituted, keys in order of
/// first appearance.
struct RawRequirements {
    /// Each key with all its values, in order.
    keys: Vec<(String, Vec<String>)>,
}

impl RawRequirements {
    fn new(name: &UnitName, file: &UnitFile) -> Self {
        let mut keys: Vec<(String, Vec<String>)> = Vec::new();
        for opt in file
            .options()
            .iter()
            .filter(|o| o.section == X_FLEET_SECTION)
        {
            let values = split_multivalue(&opt.value)
                .into_iter()
                .map(|v| substitute_specifiers(&v, name));
            match keys.iter_mut().find(|(key, _)| *key == opt.name) {
                Some((_, existing)) => existing.extend(values),
                None => keys.push((opt.name.clone(), values.collect())),
            }
        }
        Self { keys }
    }

    fn get(&self, key: &str) -> &[String] {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map_or(&[], |(_, values)| values.as_slice())
    }

    /// Values of `keys`, one key after the other.
    fn concat<'a>(&'a self, keys: &'a [&'a str]) -> impl Iterator<Item = &'a String> + 'a {
        keys.iter().flat_map(|key| self.get(key))
    }
}

/// fleet's `parseMultivalueLine`: a value that starts and ends with `"` is
/// split on spaces outside quotes, and the quotes are dropped; any other
/// value is returned whole.
fn split_multivalue(value: &str) -> Vec<String> {
    if !(value.starts_with('"') && value.ends_with('"')) {
        return vec![value.to_owned()];
    }
    let mut values = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => values.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    values.push(current);
    values
}

/// fleet's `unitPrintf`: replaces `%n`, `%N`, `%p`, `%i`, one after the
/// other, like consecutive Go `strings.Replace` calls.
fn substitute_specifiers(value: &str, name: &UnitName) -> String {
    value
        .replace("%n", name.as_str())
        .replace("%N", name.without_suffix())
        .replace("%p", name.prefix())
        .replace("%i", name.instance().unwrap_or_default())
}

/// fleet's `isTruthyValue`.
fn is_truthy(value: &str) -> bool {
    matches!(
        value.to_lowercase().as_str(),
        "true" | "yes" | "1" | "on" | "t"
    )
}

/// Distinct values in order of first appearance.
fn dedup(values: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::with_capacity(values.len());
    for v in values {
        if !out.contains(&v.as_str()) {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> UnitName {
        s.parse().unwrap()
    }

    fn reqs(unit: &str, text: &str) -> Requirements {
        Requirements::extract(&name(unit), &UnitFile::parse(text).unwrap())
    }

    fn x_fleet(unit: &str, lines: &str) -> Result<Requirements, RequirementsError> {
        let file = UnitFile::parse(&format!("[X-Fleet]\n{lines}\n")).unwrap();
        validate_options(&name(unit), &file)
    }

    fn x_fleet_err(lines: &str) -> String {
        match x_fleet("echo.service", lines) {
            Ok(r) => panic!("{lines:?} should be rejected, got {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn metadata(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, vs)| {
                (
                    (*k).to_owned(),
                    vs.iter().map(|v| (*v).to_owned()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn multivalue_splitting() {
        assert_eq!(split_multivalue("plain value"), ["plain value"]);
        assert_eq!(split_multivalue(r#""a=b" "c=d""#), ["a=b", "c=d"]);
        assert_eq!(split_multivalue(r#""a b" "c""#), ["a b", "c"]);
        assert_eq!(split_multivalue(r#""a"  "b""#), ["a", "", "b"]);
        assert_eq!(split_multivalue(r#""a" b "c""#), ["a", "b", "c"]);
        assert_eq!(split_multivalue(r#""only one""#), ["only one"]);
        assert_eq!(split_multivalue(r#"""#), [""]);
        assert_eq!(split_multivalue(r#""a" "b"#), [r#""a" "b"#]);
        assert_eq!(split_multivalue(r#"a" "b""#), [r#"a" "b""#]);
        // Only spaces separate, not tabs.
        assert_eq!(split_multivalue("\"a\"\t\"b\""), ["a\tb"]);
    }

    #[test]
    fn empty_and_missing_section() {
        assert_eq!(reqs("foo.service", ""), Requirements::default());
        assert_eq!(
            reqs("foo.service", "[Unit]\nDescription=Timmy\n"),
            Requirements::default()
        );
        assert_eq!(reqs("foo.service", "[X-Fleet]\n"), Requirements::default());
        // Options of other sections are not requirements.
        assert_eq!(
            reqs("foo.service", "[Service]\nGlobal=true\nConflicts=*\n"),
            Requirements::default()
        );
    }

    #[test]
    fn machine_id() {
        let id = |text: &str| reqs("echo.service", &format!("[X-Fleet]\n{text}")).machine_id;
        assert_eq!(id(""), None);
        assert_eq!(id("MachineID=123"), Some("123".into()));
        // First value wins.
        assert_eq!(id(r#"MachineID="123" "456""#), Some("123".into()));
        assert_eq!(id("MachineID=123\nMachineID=456"), Some("123".into()));
        // Deprecated spellings only when the modern one is absent.
        assert_eq!(
            id(r#"X-ConditionMachineID="123" "456""#),
            Some("123".into())
        );
        assert_eq!(
            id("X-ConditionMachineID=456\nMachineID=123"),
            Some("123".into())
        );
        assert_eq!(
            id("MachineID=123\nX-ConditionMachineID=456"),
            Some("123".into())
        );
        assert_eq!(id("X-ConditionMachineBootID=123"), Some("123".into()));
        assert_eq!(
            id("X-ConditionMachineBootID=123\nX-ConditionMachineID=456"),
            Some("456".into())
        );
        assert_eq!(
            id("X-ConditionMachineBootID=123\nMachineID=456"),
            Some("456".into())
        );
        assert_eq!(id("MachineID="), Some(String::new()));
    }

    #[test]
    fn machine_id_matching() {
        let full = "113f16a7e5a84bc49c5a5d06b0b0bb9c";
        let with = |id: &str| Requirements {
            machine_id: Some(id.into()),
            ..Requirements::default()
        };
        assert!(Requirements::default().matches_machine_id(full));
        assert!(with(full).matches_machine_id(full));
        assert!(with("113f16a7").matches_machine_id(full));
        assert!(!with("113f16a").matches_machine_id(full));
        assert!(!with("113f16a7e").matches_machine_id(full));
        assert!(!with("other").matches_machine_id(full));
        assert!(with("short").matches_machine_id("short"));
        assert!(!with("").matches_machine_id(full));
        assert!(!with("é").matches_machine_id("aaaaaaaé"));
    }

    #[test]
    fn peers() {
        let r = reqs(
            "echo.service",
            "[X-Fleet]\nMachineOf=\"foo.service\" \"bar.service\"\nX-ConditionMachineOf=old.service\nMachineOf=baz.service",
        );
        assert_eq!(
            r.machine_of,
            ["old.service", "foo.service", "bar.service", "baz.service"]
        );
        assert!(r.unrecognized.is_empty());
    }

    #[test]
    fn metadata_parsing() {
        let md = |text: &str| reqs("echo.service", &format!("[X-Fleet]\n{text}")).metadata;
        assert_eq!(md(""), metadata(&[]));
        assert_eq!(
            md("MachineMetadata=foo=bar"),
            metadata(&[("foo", &["bar"])])
        );
        assert_eq!(
            md(r#"MachineMetadata="foo=bar" "foo=baz""#),
            metadata(&[("foo", &["bar", "baz"])])
        );
        assert_eq!(
            md(
                "MachineMetadata=foo=bar\nMachineMetadata=foo=baz\nMachineMetadata=foo=asdf\nMachineMetadata=foo=bar"
            ),
            metadata(&[("foo", &["bar", "baz", "asdf"])])
        );
        assert_eq!(
            md(r#"MachineMetadata="region=us-east" "disk=ssd""#),
            metadata(&[("region", &["us-east"]), ("disk", &["ssd"])])
        );
        assert_eq!(
            md("X-ConditionMachineMetadata=foo=bar"),
            metadata(&[("foo", &["bar"])])
        );
        // Bad pairs are dropped.
        assert_eq!(md("MachineMetadata=foo="), metadata(&[]));
        assert_eq!(md("MachineMetadata==asdf"), metadata(&[]));
        assert_eq!(md("MachineMetadata=foo=asdf=WHAT"), metadata(&[]));
        assert_eq!(md("MachineMetadata=foo"), metadata(&[]));
        assert_eq!(
            md("MachineMetadata=region!=us-east"),
            metadata(&[("region!", &["us-east"])])
        );
        assert_eq!(
            md(
                "MachineMetadata=ignored=\nMachineMetadata=oh=yeah\nMachineMetadata=whynot=zoidberg\nX-ConditionMachineMetadata=oh=no\nX-ConditionMachineMetadata=\"one=abc\" \"two=def\""
            ),
            metadata(&[
                ("oh", &["no", "yeah"]),
                ("whynot", &["zoidberg"]),
                ("one", &["abc"]),
                ("two", &["def"])
            ])
        );
    }

    #[test]
    fn metadata_matching() {
        let r = reqs(
            "echo.service",
            "[X-Fleet]\nMachineMetadata=region=us-east\nMachineMetadata=region=us-west\nMachineMetadata=disk=ssd",
        );
        let machine = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        assert!(r.matches_metadata(&machine(&[("region", "us-east"), ("disk", "ssd")])));
        assert!(r.matches_metadata(&machine(&[
            ("region", "us-west"),
            ("disk", "ssd"),
            ("x", "y")
        ])));
        assert!(!r.matches_metadata(&machine(&[("region", "us-east")])));
        assert!(!r.matches_metadata(&machine(&[("region", "eu"), ("disk", "ssd")])));
        assert!(!r.matches_metadata(&machine(&[("region", "US-EAST"), ("disk", "ssd")])));
        assert!(!r.matches_metadata(&machine(&[])));
        assert!(Requirements::default().matches_metadata(&machine(&[])));
    }

    #[test]
    fn conflicts_and_replaces() {
        let r = reqs(
            "echo.service",
            "[X-Fleet]\nX-Conflicts=old*\nConflicts=foo* bar.service\nConflicts=\"baz@*.service\" \"qux\"\nReplaces=a b*\nReplaces=\"c\" \"d*\"",
        );
        assert_eq!(
            r.conflicts,
            ["old*", "foo*", "bar.service", "baz@*.service", "qux"]
        );
        assert_eq!(r.replaces, ["a b*", "c", "d*"]);
        assert!(r.conflicts_with("foo.service"));
        assert!(r.conflicts_with("bar.service"));
        assert!(r.conflicts_with("baz@1.service"));
        assert!(r.conflicts_with("old.service"));
        assert!(!r.conflicts_with("echo2.service"));
        assert!(r.replaces_unit("c"));
        assert!(r.replaces_unit("d.service"));
        assert!(r.replaces_unit("a bcd"));
        assert!(!r.replaces_unit("a"));
        assert!(!Requirements::default().conflicts_with("anything"));
        assert!(!Requirements::default().replaces_unit("anything"));
    }

    #[test]
    fn global() {
        let g = |text: &str| reqs("echo.service", text).global;
        assert!(!g(""));
        assert!(!g("[Service]\nExecStart=/bin/true"));
        assert!(!g("[X-Fleet]\nMachineOf=bar"));
        assert!(!g("[Service]\nGlobal=true"));
        assert!(!g("[X-Fleet]\nGlobal=false"));
        assert!(!g("[X-Fleet]\nGlobal=what"));
        assert!(!g("[X-Fleet]\nX-Global=true"));
        assert!(!g("[X-Fleet]\nX-ConditionGlobal=true"));
        for truthy in [
            "true", "True", "TRUE", "yes", "YES", "1", "on", "On", "t", "T",
        ] {
            assert!(g(&format!("[X-Fleet]\nGlobal={truthy}")), "{truthy}");
        }
        assert!(!g("[X-Fleet]\nGlobal=true\nGlobal=false"));
        assert!(g("[X-Fleet]\nGlobal=false\nGlobal=true"));
        assert!(!g("[X-Fleet]\nGlobal=\"true\" \"no\""));
    }

    #[test]
    fn unrecognized_keys() {
        let r = reqs(
            "echo.service",
            "[X-Fleet]\nX-ConditionConflicts=asdf\nMachineID=a\nX-Peers=one\nMachineof=x\nX-Peers=two\nglobal=true\nX-ConditionMetadata=foo=foo",
        );
        assert_eq!(
            r.unrecognized,
            [
                "X-ConditionConflicts",
                "X-Peers",
                "Machineof",
                "global",
                "X-ConditionMetadata"
            ]
        );
        let known = reqs(
            "echo.service",
            "[X-Fleet]\nMachineID=asdf\nX-ConditionMachineID=1\nX-ConditionMachineBootID=w\nX-ConditionMachineOf=a\nMachineOf=j\nX-Conflicts=b\nConflicts=f\nX-ConditionMachineMetadata=up=down\nMachineMetadata=true=false\nGlobal=true\nReplaces=x",
        );
        assert!(known.unrecognized.is_empty());
        assert_eq!(
            r.unrecognized_warnings().next().as_deref(),
            Some(r#"unrecognized requirement in [X-Fleet] section: "X-ConditionConflicts""#)
        );
    }

    #[test]
    fn specifiers() {
        let text = "[X-Fleet]\nMachineOf=%n\nMachineOf=%N\nMachineOf=%p\nMachineOf=%i\nMachineOf=something\nConflicts=%p-*.service\nMachineMetadata=hostname=%i\nReplaces=\"%p@%i.socket\" \"%%n\"";
        let plain = reqs("test.service", text);
        assert_eq!(
            plain.machine_of,
            ["test.service", "test", "test", "", "something"]
        );
        assert_eq!(plain.conflicts, ["test-*.service"]);
        assert_eq!(plain.metadata, metadata(&[]));
        assert_eq!(plain.replaces, ["test@.socket", "%test.service"]);

        let instance = reqs("ssh@2.service", text);
        assert_eq!(
            instance.machine_of,
            ["ssh@2.service", "ssh@2", "ssh", "2", "something"]
        );
        assert_eq!(instance.conflicts, ["ssh-*.service"]);
        assert_eq!(instance.metadata, metadata(&[("hostname", &["2"])]));
        assert_eq!(instance.replaces, ["ssh@2.socket", "%ssh@2.service"]);

        let template = reqs("ssh@.service", text);
        assert_eq!(
            template.machine_of,
            ["ssh@.service", "ssh@", "ssh", "", "something"]
        );

        // Replacements happen one specifier after the other, like Go: a `%`
        // left before a substituted name can form a new specifier.
        // "%%n" -> "%p.service" -> "p.service".
        assert_eq!(
            substitute_specifiers("%%n", &name("p.service")),
            "p.service"
        );
        // "%%N" -> "%p" -> "p".
        assert_eq!(substitute_specifiers("%%N", &name("p.service")), "p");
        let tricky = name("pa@i.service");
        // "%%N" -> "%pa@i" -> "paa@i".
        assert_eq!(substitute_specifiers("%%N", &tricky), "paa@i");
        // Each specifier is replaced in one pass: "x%%p" -> "x%pa".
        assert_eq!(substitute_specifiers("x%%p", &tricky), "x%pa");
    }

    #[test]
    fn valid_combinations() {
        for lines in [
            "",
            "MachineID=abc",
            "MachineID=abc\nMachineMetadata=a=b",
            "MachineOf=a.service\nConflicts=b*",
            "MachineOf=a.service\nReplaces=b*",
            "Global=true\nConflicts=b*",
            "Global=true\nMachineMetadata=a=b",
            "Global=false\nMachineOf=a.service\nReplaces=b*",
            "Conflicts=a*\nMachineMetadata=a=b",
            "Unknown=whatever\nMachineID=abc",
        ] {
            x_fleet("echo.service", lines).unwrap_or_else(|e| panic!("{lines:?}: {e}"));
        }
        let r = x_fleet("web@1.service", "MachineMetadata=role=%i\nConflicts=web@*").unwrap();
        assert_eq!(r.metadata, metadata(&[("role", &["1"])]));
    }

    #[test]
    fn combination_errors() {
        assert_eq!(
            x_fleet_err("MachineID=a\nMachineOf=b.service"),
            "MachineID cannot be used with Peers"
        );
        assert_eq!(
            x_fleet_err("X-ConditionMachineID=a\nX-ConditionMachineOf=b.service"),
            "MachineID cannot be used with Peers"
        );
        assert_eq!(
            x_fleet_err("MachineID=a\nConflicts=b*"),
            "MachineID cannot be used with Conflicts"
        );
        assert_eq!(
            x_fleet_err("MachineID=a\nX-Conflicts=b*"),
            "MachineID cannot be used with Conflicts"
        );
        assert_eq!(
            x_fleet_err("MachineID=a\nGlobal=yes"),
            "MachineID cannot be used with Global"
        );
        assert_eq!(
            x_fleet_err("MachineID=a\nReplaces=b*"),
            "MachineID cannot be used with Replaces"
        );
        assert_eq!(
            x_fleet_err("Global=true\nMachineOf=b.service"),
            "Global cannot be used with Peers"
        );
        assert_eq!(
            x_fleet_err("Global=true\nReplaces=b*"),
            "Global cannot be used with Replaces"
        );
        assert_eq!(
            x_fleet_err("Conflicts=a*\nReplaces=b*"),
            "Conflicts cannot be used with Replaces"
        );
        // Order of precedence when several rules are broken.
        assert_eq!(
            x_fleet_err("MachineID=a\nGlobal=1\nConflicts=c\nMachineOf=p"),
            "MachineID cannot be used with Peers"
        );
        assert_eq!(
            x_fleet_err("MachineID=a\nGlobal=1\nReplaces=r\nConflicts=c"),
            "MachineID cannot be used with Conflicts"
        );
        assert_eq!(
            x_fleet_err("Global=1\nReplaces=r\nConflicts=c"),
            "Global cannot be used with Replaces"
        );
        assert_eq!(
            x_fleet("echo.service", "MachineID=a\nMachineOf=b"),
            Err(RequirementsError::MachineIdWithPeers)
        );
        // An empty MachineID still counts as given.
        assert_eq!(
            x_fleet_err("MachineID=\nConflicts=b*"),
            "MachineID cannot be used with Conflicts"
        );
        // An empty Conflicts has no globs.
        x_fleet("echo.service", "MachineID=a\nConflicts=").unwrap();
    }

    #[test]
    fn unresolvable_peers() {
        assert_eq!(
            x_fleet_err("MachineOf=a.service\nConflicts=b*\nConflicts=a*"),
            r#"unresolvable requirements: peer "a.service" matches conflict "a*""#
        );
        assert_eq!(
            x_fleet_err("MachineOf=a.service\nReplaces=a.service"),
            r#"unresolvable requirements: peer "a.service" matches replace "a.service""#
        );
        // Checked before the MachineID rules.
        assert_eq!(
            x_fleet(
                "echo.service",
                "MachineID=m\nMachineOf=x.service\nConflicts=x.*"
            ),
            Err(RequirementsError::PeerMatchesConflict {
                peer: "x.service".into(),
                conflict: "x.*".into()
            })
        );
        // Specifiers are substituted before the check.
        assert_eq!(
            x_fleet("web@1.service", "MachineOf=%p.socket\nConflicts=web.*")
                .unwrap_err()
                .to_string(),
            r#"unresolvable requirements: peer "web.socket" matches conflict "web.*""#
        );
        // A malformed glob matches nothing.
        x_fleet("echo.service", "MachineOf=a.service\nConflicts=[").unwrap();
    }

    #[test]
    fn canonical_text_must_parse_back() {
        let too_long = UnitFile::from_options(vec![crate::UnitOption::new(
            "Service",
            "ExecStart",
            "x".repeat(LINE_VALUE),
        )]);
        let err = validate_options(&name("a.service"), &too_long).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: line too long (2048 bytes or more)"
        );
        assert!(matches!(err, RequirementsError::Unparsable(_)));
        let broken =
            UnitFile::from_options(vec![crate::UnitOption::new("Service", "Exec\nStart", "x")]);
        assert!(matches!(
            validate_options(&name("a.service"), &broken),
            Err(RequirementsError::Unparsable(_))
        ));
        // Without the re-parse check, from_unit accepts it.
        assert!(Requirements::from_unit(&name("a.service"), &too_long).is_ok());
    }

    /// Found by the `api_body` fuzz target (`fuzz/corpus/api_body/
    /// put-name-newline`): options whose canonical text parses, but to other
    /// content, were accepted, so the agent's re-read unit file never had
    /// the scheduled hash.
    #[test]
    fn canonical_text_must_read_back_as_sent() {
        let unit = |options: &[(&str, &str, &str)]| {
            UnitFile::from_options(
                options
                    .iter()
                    .map(|(s, n, v)| crate::UnitOption::new(*s, *n, *v))
                    .collect(),
            )
        };
        for (options, lost) in [
            (&[("S", "\n\\nx", "")][..], ("S", "\n\\nx")),
            (&[("S", "A", "ok"), ("S", "B", "x\n\nC=y")], ("S", "B")),
            (&[("S", " A", "x")], ("S", " A")),
            (&[("S", "#A", "x")], ("S", "#A")),
            (&[("S", "A", "x "), ("T", "B", "y")], ("S", "A")),
            (&[("S", "A", "x\\")], ("S", "A")),
        ] {
            let Err(err) = validate_options(&name("a.service"), &unit(options)) else {
                panic!("{options:?} should be refused");
            };
            assert_eq!(
                err,
                RequirementsError::NotRoundTrip {
                    section: lost.0.into(),
                    name: lost.1.into()
                },
                "{options:?}"
            );
        }
        assert_eq!(
            validate_options(&name("a.service"), &unit(&[("S", "B", "x\n\nC=y")]))
                .unwrap_err()
                .to_string(),
            r#"option "B" in section "S" does not read back from the unit file text"#
        );
        // Options that read back as sent are accepted, continuations included.
        validate_options(
            &name("a.service"),
            &unit(&[
                ("S", "A", "one \\\ntwo"),
                ("T", "B", "x \\\n"),
                ("S", "C", ""),
            ]),
        )
        .unwrap();
    }

    /// A value making its `ExecStart=` line exactly 2048 bytes long.
    const LINE_VALUE: usize = crate::file::LINE_MAX - "ExecStart=".len();
}
