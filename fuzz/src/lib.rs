//! Helpers shared by the fuzz targets in `fuzz_targets/`.

use units::{UnitFile, UnitOption};

/// The options in the order the canonical text writes them: sections in
/// order of first appearance, options in their order within a section.
pub fn grouped(options: &[UnitOption]) -> Vec<UnitOption> {
    let mut sections: Vec<&str> = Vec::new();
    for o in options {
        if !sections.contains(&o.section.as_str()) {
            sections.push(&o.section);
        }
    }
    sections
        .iter()
        .flat_map(|s| options.iter().filter(move |o| o.section == *s))
        .cloned()
        .collect()
}

/// Parses `file`'s canonical text again and checks that it is a fixed
/// point: it parses, to the same text and the same hash. `what` names the
/// text in a failure. Returns the file parsed again.
pub fn reparse_canonical(file: &UnitFile, what: &str) -> UnitFile {
    let canonical = file.canonical();
    let again = UnitFile::parse(&canonical)
        .unwrap_or_else(|e| panic!("{what} {canonical:?} does not parse: {e}"));
    assert_eq!(
        again.canonical(),
        canonical,
        "{what} {canonical:?} parses to other content"
    );
    assert_eq!(again.hash(), file.hash());
    again
}
