//! Arbitrary text through [`UnitFile::parse`]. What parses has a canonical
//! text that is a fixed point: it parses again, to the same options (grouped
//! by section, as the canonical text writes them), the same text and the
//! same hash. What does not parse names a line of the input.

#![no_main]

use fleet_fuzz::{grouped, reparse_canonical};
use libfuzzer_sys::fuzz_target;
use units::{UnitFile, UnitHash};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match UnitFile::parse(text) {
        Ok(file) => file,
        Err(e) => {
            let lines = text.split('\n').count();
            assert!(
                (1..=lines).contains(&e.line),
                "error {e} names line {} of {lines}",
                e.line
            );
            let _ = e.to_string();
            return;
        }
    };
    let again = reparse_canonical(&file, "canonical text");
    let canonical = file.canonical();
    assert_eq!(
        again.options(),
        grouped(file.options()).as_slice(),
        "canonical text {canonical:?} parses to other options"
    );
    assert_eq!(file.to_string(), canonical);

    // The hash's hex form and the file's serde form (the option list) round-trip.
    let hash = file.hash();
    assert_eq!(hash.to_string().parse::<UnitHash>().ok(), Some(hash));
    assert!(hash.to_string().starts_with(&hash.short()));
    let json = serde_json::to_string(&file).expect("options always serialize");
    let back: UnitFile = serde_json::from_str(&json).expect("serialized options deserialize");
    assert_eq!(back, file);
});
