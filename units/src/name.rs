//! [`UnitName`]: validated unit names, templates and instances, and
//! fleetctl's name mangling.
//!
//! Validation follows fleet's `api.ValidateName` (itself modelled on
//! systemd's `unit_name_is_valid`), and the error messages are the
//! original's, because the API returns them verbatim as 400 bodies. The one
//! rule the original spelled out without a message (an `@` only in names of
//! the types that can be instantiated) gets a message of our own.
//!
//! The template/instance split follows fleet's `unit.NewUnitNameInfo`:
//! everything before the last `.` is the name, the part before the first `@`
//! is the prefix and the part after it is the instance.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::quote::{go_quote, go_quote_rune};

/// Longest valid unit name, in bytes (systemd's `UNIT_NAME_MAX`).
pub const UNIT_NAME_MAX: usize = 256;

/// Unit types (suffixes after the last dot) that a name may have.
const UNIT_TYPES: [&str; 13] = [
    "service",
    "socket",
    "busname",
    "target",
    "snapshot",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// Unit types that may be templates or instances (names containing `@`).
const INSTANTIABLE_TYPES: [&str; 5] = ["path", "service", "socket", "target", "timer"];

/// Suffixes the agent loads and fleetctl does not mangle.
const AGENT_SUFFIXES: [&str; 7] = [
    ".service",
    ".socket",
    ".timer",
    ".path",
    ".device",
    ".mount",
    ".automount",
];

/// Why a string is not a valid unit name. The first rule broken is reported,
/// in the order of the variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is the empty string.
    #[error("unit name cannot be empty")]
    Empty,
    /// The name is longer than [`UNIT_NAME_MAX`] bytes.
    #[error("unit name exceeds maximum length ({})", UNIT_NAME_MAX)]
    TooLong {
        /// Length of the rejected name, in bytes.
        len: usize,
    },
    /// The name has no `.` separating the type.
    #[error(r#"unit name must contain ".""#)]
    NoDot,
    /// The name ends with its last `.`, so the type is empty.
    #[error(r#"unit name cannot end in ".""#)]
    EndsInDot,
    /// The part after the last `.` is not a unit type.
    #[error("invalid unit type: {}", go_quote(.suffix))]
    InvalidType {
        /// The rejected type.
        suffix: String,
    },
    /// A character before the last `.` is outside `[A-Za-z0-9:_.@\-\\]`.
    #[error("invalid character {} in unit name", go_quote_rune(*.ch))]
    InvalidChar {
        /// The first rejected character.
        ch: char,
    },
    /// The name starts with `@`, so a template or instance has no prefix.
    #[error(r#"unit name cannot start in "@""#)]
    StartsWithAt,
    /// The name contains `@` but its type cannot be instantiated.
    #[error(
        "invalid unit name {}: only path, service, socket, target and timer units can be templates or instances",
        go_quote(.name)
    )]
    NotInstantiable {
        /// The rejected name.
        name: String,
    },
}

/// A valid unit name such as `web.service`, `web@.service` (a template) or
/// `web@1.service` (an instance of it).
///
/// Constructed only through [`FromStr`]/[`TryFrom`] (and serde, which
/// validates), so holding one proves the name passed fleet's rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UnitName(String);

impl UnitName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Byte index of the last `.`; validation guarantees there is one.
    fn dot(&self) -> usize {
        self.0.rfind('.').unwrap_or(self.0.len())
    }

    /// Byte index of the first `@` before the type, if any.
    fn at(&self) -> Option<usize> {
        self.without_suffix().find('@')
    }

    /// The name without `.type`, e.g. `foo@bar` for `foo@bar.service`
    /// (the `%N` specifier).
    pub fn without_suffix(&self) -> &str {
        &self.0[..self.dot()]
    }

    /// The unit type after the last dot, e.g. `service`.
    pub fn suffix(&self) -> &str {
        self.0.get(self.dot() + 1..).unwrap_or_default()
    }

    /// The part before the first `@`, or the whole name without its type
    /// when there is no `@` (the `%p` specifier): `foo` for
    /// `foo@bar.service`, `foo@.service` and `foo.service`.
    pub fn prefix(&self) -> &str {
        let name = self.without_suffix();
        self.at().map_or(name, |at| &name[..at])
    }

    /// The instance, i.e. the part between the first `@` and the type (the
    /// `%i` specifier): `bar` for `foo@bar.service`. `None` for templates and
    /// for names without `@`; never `Some("")`.
    pub fn instance(&self) -> Option<&str> {
        let at = self.at()?;
        Some(&self.without_suffix()[at + 1..]).filter(|i| !i.is_empty())
    }

    /// Whether this is a template such as `foo@.service`.
    pub fn is_template(&self) -> bool {
        self.at().is_some() && self.instance().is_none()
    }

    /// Whether this is an instance such as `foo@bar.service`.
    pub fn is_instance(&self) -> bool {
        self.instance().is_some()
    }

    /// The template this name belongs to: `foo@.service` for
    /// `foo@bar.service` and for `foo@.service` itself; `None` for names
    /// without `@`.
    pub fn template(&self) -> Option<UnitName> {
        self.at()?;
        // The prefix is non-empty (no leading `@`), made of valid
        // characters, and the type allows `@`, so the template is valid.
        Some(UnitName(format!("{}@.{}", self.prefix(), self.suffix())))
    }

    /// Checks `name` against fleet's rules (see [`NameError`]).
    pub fn validate(name: &str) -> Result<(), NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > UNIT_NAME_MAX {
            return Err(NameError::TooLong { len: name.len() });
        }
        let Some(dot) = name.rfind('.') else {
            return Err(NameError::NoDot);
        };
        let (stem, suffix) = (&name[..dot], &name[dot + 1..]);
        if suffix.is_empty() {
            return Err(NameError::EndsInDot);
        }
        if !UNIT_TYPES.contains(&suffix) {
            return Err(NameError::InvalidType {
                suffix: suffix.to_owned(),
            });
        }
        if let Some(ch) = stem
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(c)))
        {
            return Err(NameError::InvalidChar { ch });
        }
        if name.starts_with('@') {
            return Err(NameError::StartsWithAt);
        }
        if stem.contains('@') && !INSTANTIABLE_TYPES.contains(&suffix) {
            return Err(NameError::NotInstantiable {
                name: name.to_owned(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UnitName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::validate(s)?;
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for UnitName {
    type Error = NameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::validate(&s)?;
        Ok(Self(s))
    }
}

impl TryFrom<&str> for UnitName {
    type Error = NameError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<UnitName> for String {
    fn from(name: UnitName) -> Self {
        name.0
    }
}

impl AsRef<str> for UnitName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for UnitName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for UnitName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for UnitName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Whether `name` ends in one of the seven suffixes the agent loads and
/// fleetctl leaves alone: `.service .socket .timer .path .device .mount
/// .automount`.
pub fn is_agent_suffix(name: &str) -> bool {
    AGENT_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// fleetctl's mangling of a command-line argument into a unit name: take the
/// last `/`-separated element (Go `path.Base`) and append `.service` unless
/// it ends in one of the [`is_agent_suffix`] suffixes. So `foo` and
/// `units/foo` become `foo.service`, and `foo.target` becomes
/// `foo.target.service`. The result is not validated.
pub fn mangle_name(arg: &str) -> String {
    append_default_type(go_path_base(arg))
}

/// `name` with `.service` appended unless it ends in one of the
/// [`is_agent_suffix`] suffixes (Go's `maybeAppendDefaultUnitType`); the
/// whole text is kept, slashes included.
pub fn append_default_type(name: &str) -> String {
    if is_agent_suffix(name) {
        name.to_owned()
    } else {
        format!("{name}.service")
    }
}

/// Go's `path.Base`: the last element of a slash-separated path.
fn go_path_base(path: &str) -> &str {
    if path.is_empty() {
        return ".";
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    trimmed.rfind('/').map_or(trimmed, |i| &trimmed[i + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> UnitName {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should be valid: {e}"))
    }

    fn err(s: &str) -> String {
        match s.parse::<UnitName>() {
            Ok(_) => panic!("{s:?} should be invalid"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepts_valid_names() {
        for n in [
            "foo.service",
            "a.socket",
            "foo.busname",
            "foo.target",
            "foo.snapshot",
            "dev-sda.device",
            "mnt.mount",
            "mnt.automount",
            "swapfile.swap",
            "t.timer",
            "p.path",
            "user.slice",
            "session-1.scope",
            "foo@.service",
            "foo@bar.service",
            "foo@bar@baz.socket",
            "foo@x.target",
            "foo@x.timer",
            "foo@x.path",
            r"with\x2dbackslash:colon_under-dash.service",
            "a.b.c.service",
            ".service",
            "Z9.service",
        ] {
            assert_eq!(name(n).as_str(), n);
        }
        let longest = format!("{}.service", "a".repeat(UNIT_NAME_MAX - ".service".len()));
        assert_eq!(name(&longest).as_str().len(), UNIT_NAME_MAX);
    }

    #[test]
    fn rejects_with_the_original_messages() {
        assert_eq!(err(""), "unit name cannot be empty");
        let too_long = format!(
            "{}.service",
            "a".repeat(UNIT_NAME_MAX + 1 - ".service".len())
        );
        assert_eq!(err(&too_long), "unit name exceeds maximum length (256)");
        assert_eq!(
            too_long.parse::<UnitName>(),
            Err(NameError::TooLong { len: 257 })
        );
        assert_eq!(err("foo"), r#"unit name must contain ".""#);
        assert_eq!(err("foo."), r#"unit name cannot end in ".""#);
        assert_eq!(err("foo.serv"), r#"invalid unit type: "serv""#);
        assert_eq!(err("foo.Service"), r#"invalid unit type: "Service""#);
        assert_eq!(err("foo.ser vice"), r#"invalid unit type: "ser vice""#);
        assert_eq!(err("foo/bar.service"), "invalid character '/' in unit name");
        assert_eq!(err("foo bar.service"), "invalid character ' ' in unit name");
        assert_eq!(err("fé.service"), "invalid character 'é' in unit name");
        assert_eq!(err("a\tb.service"), r"invalid character '\t' in unit name");
        assert_eq!(err("@foo.service"), r#"unit name cannot start in "@""#);
        assert_eq!(err("@.service"), r#"unit name cannot start in "@""#);
        assert_eq!(
            err("foo@bar.mount"),
            r#"invalid unit name "foo@bar.mount": only path, service, socket, target and timer units can be templates or instances"#
        );
        assert!(matches!(
            "foo@.device".parse::<UnitName>(),
            Err(NameError::NotInstantiable { .. })
        ));
        // The first broken rule wins: a bad type before a bad character.
        assert_eq!(err("foo/bar.nope"), r#"invalid unit type: "nope""#);
        // Only the part before the last dot is checked for characters.
        assert_eq!(err("a/b"), r#"unit name must contain ".""#);
    }

    #[test]
    fn conversions() {
        let n = UnitName::try_from(String::from("foo.service")).unwrap();
        assert_eq!(n, "foo.service");
        assert_eq!(UnitName::try_from("foo.service").unwrap(), n);
        assert_eq!(n.to_string(), "foo.service");
        assert_eq!(String::from(n.clone()), "foo.service");
        assert!(UnitName::try_from("nope").is_err());
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, r#""foo.service""#);
        assert_eq!(serde_json::from_str::<UnitName>(&json).unwrap(), n);
        let bad = serde_json::from_str::<UnitName>(r#""foo""#).unwrap_err();
        assert!(bad.to_string().contains(r#"unit name must contain ".""#));
        let mut map = std::collections::BTreeMap::new();
        map.insert(n, 1);
        assert_eq!(map.get("foo.service"), Some(&1));
    }

    #[test]
    fn plain_names() {
        let n = name("foo.service");
        assert!(!n.is_template());
        assert!(!n.is_instance());
        assert_eq!(n.prefix(), "foo");
        assert_eq!(n.instance(), None);
        assert_eq!(n.template(), None);
        assert_eq!(n.suffix(), "service");
        assert_eq!(n.without_suffix(), "foo");

        let dotted = name("a.b.socket");
        assert_eq!(dotted.prefix(), "a.b");
        assert_eq!(dotted.suffix(), "socket");
        assert_eq!(dotted.without_suffix(), "a.b");
    }

    #[test]
    fn templates_and_instances() {
        let t = name("foo@.service");
        assert!(t.is_template());
        assert!(!t.is_instance());
        assert_eq!(t.prefix(), "foo");
        assert_eq!(t.instance(), None);
        assert_eq!(t.template(), Some(t.clone()));
        assert_eq!(t.without_suffix(), "foo@");

        let i = name("foo@bar.service");
        assert!(!i.is_template());
        assert!(i.is_instance());
        assert_eq!(i.prefix(), "foo");
        assert_eq!(i.instance(), Some("bar"));
        assert_eq!(i.template(), Some(t));
        assert_eq!(i.suffix(), "service");
        assert_eq!(i.without_suffix(), "foo@bar");

        // Everything after the first `@` is the instance.
        let nested = name("foo@bar@baz.socket");
        assert_eq!(nested.prefix(), "foo");
        assert_eq!(nested.instance(), Some("bar@baz"));
        assert_eq!(nested.template(), Some(name("foo@.socket")));

        // Dots before the type belong to the instance.
        let dotted = name("web@10.0.0.1.service");
        assert_eq!(dotted.instance(), Some("10.0.0.1"));
        assert_eq!(dotted.template(), Some(name("web@.service")));
    }

    #[test]
    fn agent_suffixes() {
        for n in [
            "a.service",
            "a.socket",
            "a.timer",
            "a.path",
            "a.device",
            "a.mount",
            "a.automount",
        ] {
            assert!(is_agent_suffix(n), "{n}");
        }
        for n in [
            "a.target",
            "a.slice",
            "a.scope",
            "a",
            "a.service~",
            "service",
        ] {
            assert!(!is_agent_suffix(n), "{n}");
        }
    }

    #[test]
    fn mangling() {
        assert_eq!(mangle_name("foo"), "foo.service");
        assert_eq!(mangle_name("foo.service"), "foo.service");
        assert_eq!(mangle_name("foo.socket"), "foo.socket");
        assert_eq!(mangle_name("foo.automount"), "foo.automount");
        assert_eq!(mangle_name("foo.target"), "foo.target.service");
        assert_eq!(mangle_name("foo@.service"), "foo@.service");
        assert_eq!(mangle_name("foo@1"), "foo@1.service");
        assert_eq!(mangle_name("units/foo.service"), "foo.service");
        assert_eq!(mangle_name("/abs/path/foo"), "foo.service");
        assert_eq!(mangle_name("dir/foo.timer/"), "foo.timer");
        assert_eq!(mangle_name(""), "..service");
        assert_eq!(mangle_name("///"), "/.service");
    }
}
