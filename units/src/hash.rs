//! [`UnitHash`]: the content address of a unit body.
//!
//! fleet stores every unit body under the SHA-1 of its canonical text
//! ([`UnitFile::canonical`](crate::UnitFile::canonical)) and shows the hash
//! as 40 lowercase hex characters (7 in short listings). The hex string is
//! the default serde form (the API's `hash` field, unit-state records); the
//! etcd job object of the original stored it as a JSON array of 20 numbers,
//! which [`hash_array`](crate::hash_array) provides for `#[serde(with)]`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::quote::go_quote;

/// Number of hex characters fleetctl shows when `--full` is not given.
const SHORT_LEN: usize = 7;

/// SHA-1 of a unit's canonical text.
///
/// `Display` and serde use 40 lowercase hex characters; `FromStr` accepts 40
/// hex characters in either case.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnitHash([u8; 20]);

/// A string that is not 40 hexadecimal characters was given as a unit hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid unit hash {}: expected 40 hexadecimal characters", go_quote(.input))]
pub struct HashError {
    /// The rejected text, so the message can quote it.
    pub input: String,
}

impl UnitHash {
    /// Wraps raw SHA-1 bytes.
    pub const fn from_bytes(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }

    /// The raw SHA-1 bytes.
    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The first 7 hex characters, as fleetctl prints without `--full`.
    pub fn short(&self) -> String {
        let mut full = self.to_string();
        full.truncate(SHORT_LEN);
        full
    }

    /// Whether this is the all-zero hash, which fleet uses for "no hash".
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 20]
    }

    /// SHA-1 of `data`.
    pub(crate) fn digest(data: &[u8]) -> Self {
        use sha1::{Digest, Sha1};
        Self(Sha1::digest(data).into())
    }
}

impl fmt::Display for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnitHash({self})")
    }
}

impl FromStr for UnitHash {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || HashError {
            input: s.to_owned(),
        };
        let hex = s.as_bytes();
        if hex.len() != 40 {
            return Err(err());
        }
        let mut bytes = [0u8; 20];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            let hi = hex_value(pair[0]).ok_or_else(err)?;
            let lo = hex_value(pair[1]).ok_or_else(err)?;
            *byte = (hi << 4) | lo;
        }
        Ok(Self(bytes))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl From<[u8; 20]> for UnitHash {
    fn from(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }
}

impl Serialize for UnitHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UnitHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde adapter writing a [`UnitHash`] as an array of 20 numbers, the form
/// of the original's etcd job object (`{"Name":..,"UnitHash":[20 numbers]}`).
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct JobObject {
///     #[serde(rename = "UnitHash", with = "units::hash_array")]
///     unit_hash: units::UnitHash,
/// }
/// ```
pub mod array {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::UnitHash;

    /// Writes the hash as 20 numbers.
    pub fn serialize<S: Serializer>(hash: &UnitHash, serializer: S) -> Result<S::Ok, S::Error> {
        hash.as_bytes().serialize(serializer)
    }

    /// Reads the hash from 20 numbers.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<UnitHash, D::Error> {
        <[u8; 20]>::deserialize(deserializer).map(UnitHash::from_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA1: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";

    #[test]
    fn digest_display_and_parse() {
        let h = UnitHash::digest(b"");
        assert_eq!(h.to_string(), EMPTY_SHA1);
        assert_eq!(h.short(), "da39a3e");
        assert_eq!(EMPTY_SHA1.parse::<UnitHash>(), Ok(h));
        assert_eq!(EMPTY_SHA1.to_uppercase().parse::<UnitHash>(), Ok(h));
        assert_eq!(format!("{h:?}"), format!("UnitHash({EMPTY_SHA1})"));
        assert!(!h.is_zero());
        assert!(UnitHash::default().is_zero());
        assert_eq!(UnitHash::from_bytes(*h.as_bytes()), h);
    }

    #[test]
    fn rejects_bad_hex() {
        for bad in [
            "",
            "abc",
            &EMPTY_SHA1[1..],
            &format!("{EMPTY_SHA1}0"),
            &EMPTY_SHA1.replace('d', "g"),
        ] {
            let err = bad.parse::<UnitHash>().unwrap_err();
            assert_eq!(err.input, bad);
        }
        assert_eq!(
            "xyz".parse::<UnitHash>().unwrap_err().to_string(),
            r#"invalid unit hash "xyz": expected 40 hexadecimal characters"#
        );
        // Multi-byte input of the right byte length must not panic.
        assert!("é".repeat(20).parse::<UnitHash>().is_err());
    }

    #[test]
    fn serde_forms() {
        let h = UnitHash::digest(b"");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{EMPTY_SHA1}\""));
        assert_eq!(serde_json::from_str::<UnitHash>(&json).unwrap(), h);
        assert!(serde_json::from_str::<UnitHash>("\"nope\"").is_err());

        #[derive(Serialize, Deserialize)]
        struct Job {
            #[serde(rename = "UnitHash", with = "array")]
            hash: UnitHash,
        }
        let json = serde_json::to_string(&Job { hash: h }).unwrap();
        assert_eq!(
            json,
            r#"{"UnitHash":[218,57,163,238,94,107,75,13,50,85,191,239,149,96,24,144,175,216,7,9]}"#
        );
        assert_eq!(serde_json::from_str::<Job>(&json).unwrap().hash, h);
    }
}
