//! Arbitrary request bodies through the functions the API's handlers call:
//! [`request::decode_put`] for `PUT /fleet/v1/units/<name>` (then the name
//! and option checks of `RegistryClient::put_unit`) and
//! [`request::decode_patch`] for `PATCH /fleet/v1/machines`. The input's
//! first line is the URL's unit name, the rest the body.
//!
//! Invariants: nothing panics; an accepted PUT is for the URL's unit, and
//! when its name and options pass the checks that precede storing it, its
//! canonical text parses back to the same content and hash; an accepted
//! PATCH has only valid machine IDs, keys and (for a set) a value; a
//! refusal has a message.

#![no_main]

use fleet_fuzz::reparse_canonical;
use fleetd::schema::request::{self, MetadataChange};
use libfuzzer_sys::fuzz_target;
use units::{UnitFile, UnitName, validate_options};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let url_name = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();

    match request::decode_put(&url_name, body) {
        Ok(put) => {
            assert_eq!(put.name, url_name);
            check_unit(&put.name, put.options);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    match request::decode_patch(body) {
        Ok(changes) => {
            for change in changes {
                let (machine, key) = match &change {
                    MetadataChange::Set(machine, key, value) => {
                        assert!(!value.is_empty());
                        (machine, key)
                    }
                    MetadataChange::Remove(machine, key) => (machine, key),
                };
                let id = machine.as_str();
                assert!(!id.is_empty() && !id.contains('/'));
                assert_eq!(id.parse().ok().as_ref(), Some(machine));
                assert!(!key.is_empty());
                assert!(
                    key.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                );
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});

/// The checks `RegistryClient::put_unit` makes before it stores a new unit
/// (the name, then the options), and what an accepted unit must satisfy.
fn check_unit(name: &str, options: Vec<fleetd::schema::UnitOption>) {
    let Ok(name) = name.parse::<UnitName>() else {
        return;
    };
    let file = UnitFile::from_options(options.into_iter().map(units::UnitOption::from).collect());
    if validate_options(&name, &file).is_err() {
        return;
    }
    reparse_canonical(&file, "accepted unit's text");
}
