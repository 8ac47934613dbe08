//! Arbitrary strings as unit names. A name that parses displays as itself,
//! survives serde, and its parts (suffix, prefix, instance, template) fit
//! together; one that does not is refused by every constructor alike.
//! fleetctl's mangling never panics and always yields a suffix it keeps.

#![no_main]

use libfuzzer_sys::fuzz_target;
use units::{UNIT_NAME_MAX, UnitName, is_agent_suffix, mangle_name};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    let mangled = mangle_name(s);
    assert!(
        is_agent_suffix(&mangled),
        "mangle_name({s:?}) = {mangled:?}"
    );
    assert!(!mangled.contains('/') || mangled == "/.service");

    let json = serde_json::to_string(s).expect("strings serialize");
    let parsed = s.parse::<UnitName>();
    assert_eq!(UnitName::validate(s).is_ok(), parsed.is_ok());
    assert_eq!(UnitName::try_from(s.to_owned()).ok(), parsed.clone().ok());
    assert_eq!(
        serde_json::from_str::<UnitName>(&json).ok(),
        parsed.clone().ok()
    );
    let name = match parsed {
        Ok(name) => name,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };

    assert_eq!(name.to_string(), s);
    assert_eq!(name.as_str(), s);
    assert_eq!(String::from(name.clone()), s);
    assert!(!s.is_empty() && s.len() <= UNIT_NAME_MAX);
    assert_eq!(serde_json::to_string(&name).expect("names serialize"), json);

    // name = <without_suffix>.<suffix>; without_suffix = <prefix>[@<instance>]
    let (stem, suffix) = (name.without_suffix(), name.suffix());
    assert_eq!(format!("{stem}.{suffix}"), s);
    assert!(!suffix.is_empty() && !suffix.contains('.'));
    let prefix = name.prefix();
    // Only `.service` and the like (accepted, as the original did, though
    // systemd refuses them) have an empty prefix.
    assert!(
        !prefix.is_empty() || stem.is_empty(),
        "{s:?} has an empty prefix"
    );
    assert!(stem.starts_with(prefix));
    match name.instance() {
        Some(instance) => {
            assert!(!instance.is_empty());
            assert_eq!(format!("{prefix}@{instance}"), stem);
        }
        None => assert!(stem == prefix || stem == format!("{prefix}@")),
    }
    let has_at = stem.contains('@');
    assert_eq!(name.is_template() || name.is_instance(), has_at);
    assert!(!(name.is_template() && name.is_instance()));
    assert_eq!(mangle_name(s) == s, is_agent_suffix(s));

    match name.template() {
        Some(template) => {
            assert!(has_at);
            // The template is itself a valid name, and its own template.
            let reparsed: UnitName = template
                .as_str()
                .parse()
                .unwrap_or_else(|e| panic!("template {template} of {s:?} is invalid: {e}"));
            assert_eq!(reparsed, template);
            assert!(template.is_template());
            assert_eq!(template.template().as_ref(), Some(&template));
            assert_eq!(template.prefix(), prefix);
            assert_eq!(template.suffix(), suffix);
            if name.is_template() {
                assert_eq!(template, name);
            }
        }
        None => assert!(!has_at),
    }
});
