//! Helpers shared by the fuzz targets in `fuzz_targets/`.

use units::UnitOption;

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
