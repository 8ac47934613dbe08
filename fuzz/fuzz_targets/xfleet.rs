//! The `[X-Fleet]` options of arbitrary units. The input's first line is the
//! unit's name (an invalid one is replaced by an instance name, so that `%p`
//! and `%i` still substitute), the rest its text; text that does not start
//! with a section header is read as the `[X-Fleet]` section.
//!
//! Invariants: evaluating never panics; `from_unit` and `validate_options`
//! agree with `extract` + `validate`; the typed options keep their
//! documented shape (metadata pairs split into non-empty parts, conflicts
//! split on whitespace, unknown keys once each); the evaluation survives
//! serde and the unit's canonical text; each requirement is met by the
//! machine or unit it names.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use units::{Requirements, UnitFile, UnitName, X_FLEET_SECTION, glob_match, validate_options};

/// Every `[X-Fleet]` key fleet knows, deprecated spellings included.
const KNOWN_KEYS: [&str; 11] = [
    "MachineID",
    "X-ConditionMachineID",
    "X-ConditionMachineBootID",
    "MachineOf",
    "X-ConditionMachineOf",
    "MachineMetadata",
    "X-ConditionMachineMetadata",
    "Conflicts",
    "X-Conflicts",
    "Global",
    "Replaces",
];

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (first, rest) = input.split_once('\n').unwrap_or((input, ""));
    let name: UnitName = first
        .parse()
        .unwrap_or_else(|_| "fuzz@instance.service".parse().expect("a valid name"));
    let text = if rest.trim_start().starts_with('[') {
        rest.to_owned()
    } else {
        format!("[{X_FLEET_SECTION}]\n{rest}")
    };
    let Ok(file) = UnitFile::parse(&text) else {
        return;
    };

    let reqs = Requirements::extract(&name, &file);
    let validated = reqs.validate();
    assert_eq!(
        Requirements::from_unit(&name, &file),
        validated.clone().map(|()| reqs.clone())
    );
    if let Ok(checked) = validate_options(&name, &file) {
        assert_eq!(checked, reqs);
    }
    if let Err(e) = &validated {
        let _ = e.to_string();
    }

    // The shape of each option.
    for (key, values) in &reqs.metadata {
        assert!(
            !key.is_empty() && !key.contains('='),
            "metadata key {key:?}"
        );
        assert!(!values.is_empty());
        for (i, v) in values.iter().enumerate() {
            assert!(!v.is_empty() && !v.contains('='), "metadata value {v:?}");
            assert!(!values[..i].contains(v), "metadata value {v:?} twice");
        }
    }
    for c in &reqs.conflicts {
        assert!(
            !c.is_empty() && !c.contains(char::is_whitespace),
            "conflict {c:?}"
        );
    }
    for (i, key) in reqs.unrecognized.iter().enumerate() {
        assert!(!KNOWN_KEYS.contains(&key.as_str()), "{key:?} is known");
        assert!(!reqs.unrecognized[..i].contains(key), "{key:?} twice");
    }
    assert_eq!(
        reqs.unrecognized_warnings().count(),
        reqs.unrecognized.len()
    );

    // Serde and the canonical text give the same evaluation.
    let json = serde_json::to_string(&reqs).expect("requirements serialize");
    let back: Requirements = serde_json::from_str(&json).expect("requirements deserialize");
    assert_eq!(back, reqs);
    let reparsed = UnitFile::parse(&file.canonical())
        .unwrap_or_else(|e| panic!("canonical text does not parse: {e}"));
    assert_eq!(Requirements::extract(&name, &reparsed), reqs);

    // Each requirement is met by what it names.
    if let Some(id) = &reqs.machine_id {
        assert!(reqs.matches_machine_id(id));
        if id.len() == 8 {
            assert!(reqs.matches_machine_id(&format!("{id}0123456789abcdef01234567")));
        }
    }
    let machine: BTreeMap<String, String> = reqs
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v[0].clone()))
        .collect();
    assert!(reqs.matches_metadata(&machine));
    assert_eq!(
        reqs.matches_metadata(&BTreeMap::new()),
        reqs.metadata.is_empty()
    );
    let literal = |p: &str| !p.contains(['*', '?', '[', '\\']);
    for c in reqs.conflicts.iter().filter(|c| literal(c)) {
        assert!(
            reqs.conflicts_with(c),
            "conflict {c:?} does not match itself"
        );
    }
    for r in reqs.replaces.iter().filter(|r| literal(r)) {
        assert!(reqs.replaces_unit(r), "replace {r:?} does not match itself");
    }

    // Globs from the input against names from the input never panic.
    for pattern in reqs.conflicts.iter().chain(&reqs.replaces) {
        for subject in reqs.machine_of.iter().chain([&name.to_string()]) {
            let _ = glob_match(pattern, subject);
            let _ = glob_match(subject, pattern);
        }
    }
});
