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

/// A value ending in `\` (from a last line without a newline, or from `\`
/// followed by spaces) reads back from the canonical text as a continuation
/// onto the next line. Parsing keeps the original's result and the
/// canonical text keeps the original's hash, so such a unit does not
/// round-trip. Its canonical text is not checked until the value
/// round-trips (trailing spaces, continuations) are fixed in `units/`.
pub fn continuation_gap(file: &UnitFile) -> bool {
    file.options().iter().any(|o| o.value.ends_with('\\'))
}
