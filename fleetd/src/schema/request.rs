//! The request bodies of `/fleet/v1`, decoded and checked: the JSON of
//! `PUT /units/<name>` and of `PATCH /machines`.
//!
//! These are pure functions of the bytes a client sent, kept out of the HTTP
//! handlers (and out of the `daemon` feature) so that the fuzz targets in
//! `fuzz/` run exactly the code the API runs. The handlers only add the
//! transport checks (Content-Type, body size) and map [`BodyError`] to a 400.
//!
//! Decoding follows Go's `encoding/json` as the original used it: field names
//! match exactly, else ignoring case (with Go's folding of `K` and `ſ`);
//! `null` is the same as absent; a field that names nothing is ignored, as
//! the original's API documentation promises, so that a client may send
//! back a unit it got or add fields of its own. A known field with a value
//! of the wrong type is refused, naming the field.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use units::go_quote;

use super::{MachineId, TargetState, UnitOption};

/// A request body the API refuses; `Display` is the 400 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// A `PUT /units/<name>` body is not JSON or has a known field with a
    /// value of the wrong type.
    #[error("unable to decode body: {0}")]
    UnitDecode(String),
    /// The body names another unit than the URL.
    #[error(
        "name in URL {} differs from unit name in request body {}",
        go_quote(.url),
        go_quote(.body)
    )]
    NameMismatch {
        /// The name in the URL.
        url: String,
        /// The name in the body.
        body: String,
    },
    /// A `PATCH /machines` body is not JSON or has a known field with a
    /// value of the wrong type (the original sent the decoder's message
    /// alone).
    #[error("{0}")]
    PatchDecode(String),
    /// An operation's `op` is not `add`, `replace` or `remove`.
    #[error("invalid op: expect add, remove, or replace")]
    InvalidOp,
    /// An operation's `path` is not `/<machine>/metadata/<key>`.
    #[error("machine metadata path invalid")]
    InvalidPath,
    /// An `add` or `replace` without a non-empty value.
    #[error("invalid value: add and replace require a value")]
    MissingValue,
}

// ---------------------------------------------------------------------------
// Go's field matching, unknown fields ignored
// ---------------------------------------------------------------------------

/// The fields of a unit in a `PUT` body: those the original's `schema.Unit`
/// has (`currentState` and `machineID` are read-only: type-checked, as Go
/// checked them, then ignored).
const UNIT_FIELDS: &[&str] = &[
    "name",
    "desiredState",
    "options",
    "currentState",
    "machineID",
];
/// The fields of a unit option.
const OPTION_FIELDS: &[&str] = &["name", "section", "value"];
/// The fields of a `PATCH /machines` operation.
const OP_FIELDS: &[&str] = &["op", "path", "value"];
/// The fields of an operation's value.
const VALUE_FIELDS: &[&str] = &["value"];

/// Matches the keys of a JSON object to `fields` as Go's decoder did
/// (exactly, else [`go_fold_eq`]) and renames them to the canonical
/// spelling; `null` becomes `{}` (Go left the zero value). A key that names
/// no field is dropped, as Go dropped it; when two keys name one field the
/// later wins, as in Go. Other values are left for the typed decoder to
/// refuse.
fn go_fields(value: Value, fields: &[&'static str]) -> Value {
    match value {
        Value::Null => Value::Object(Map::new()),
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, v) in map {
                let field = fields
                    .iter()
                    .find(|f| **f == key)
                    .or_else(|| fields.iter().find(|f| go_fold_eq(f, &key)));
                if let Some(field) = field {
                    out.insert((*field).to_owned(), v);
                }
            }
            Value::Object(out)
        }
        other => other,
    }
}

/// Whether `key` names the ASCII `field` under Go's case folding of JSON
/// keys: ASCII letters in any case, plus the two non-ASCII letters that
/// fold to ASCII ones (KELVIN SIGN to `k`, LATIN SMALL LETTER LONG S to
/// `s`).
fn go_fold_eq(field: &str, key: &str) -> bool {
    let mut key = key.chars().map(|c| match c {
        '\u{212A}' => 'k',
        '\u{17F}' => 's',
        c => c,
    });
    field
        .chars()
        .all(|f| key.next().is_some_and(|k| f.eq_ignore_ascii_case(&k)))
        && key.next().is_none()
}

/// Applies [`go_fields`] to the object under `key` of `object`, if present.
fn go_fields_of(object: &mut Value, key: &str, fields: &[&'static str]) {
    if let Some(inner) = object.get_mut(key) {
        *inner = go_fields(inner.take(), fields);
    }
}

/// Applies `f` to every element of the array under `key`, if it is one.
fn each_of(object: &mut Value, key: &str, f: impl Fn(Value) -> Value) {
    if let Some(Value::Array(items)) = object.get_mut(key) {
        for item in items.iter_mut() {
            *item = f(item.take());
        }
    }
}

/// Decodes a typed value from a JSON value whose keys are canonical; a
/// value of the wrong type is refused naming where it is:
/// `field "options[0].value": invalid type: ...`.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("field {}: {inner}", go_quote(&path))
        }
    })
}

// ---------------------------------------------------------------------------
// PUT /units/<name>
// ---------------------------------------------------------------------------

/// What a `PUT /units/<name>` asks for, after steps 2 and 3 of
/// fleet-reference.md §4.4. The name is not validated yet and the options
/// are as sent: [`crate::client::RegistryClient::put_unit`] does the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRequest {
    /// The unit, always the one in the URL (a body naming another is
    /// refused).
    pub name: String,
    /// The desired state, if the body gave one.
    pub desired_state: Option<TargetState>,
    /// The unit's content in the order sent; empty when the body has none.
    pub options: Vec<UnitOption>,
}

/// Decodes the body of `PUT /units/<url_name>`: JSON syntax, then field
/// names, then types, then the name in the body against the URL's.
pub fn decode_put(url_name: &str, body: &[u8]) -> Result<PutRequest, BodyError> {
    let body = decode_put_body(body).map_err(BodyError::UnitDecode)?;
    let name = body
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| url_name.to_owned());
    if name != url_name {
        return Err(BodyError::NameMismatch {
            url: url_name.to_owned(),
            body: name,
        });
    }
    let options = body
        .options
        .unwrap_or_default()
        .into_iter()
        .map(UnitOption::from)
        .collect();
    Ok(PutRequest {
        name,
        desired_state: body.desired_state,
        options,
    })
}

/// Decodes a `PUT /units/<name>` body: JSON syntax, then field names, then
/// types.
fn decode_put_body(body: &[u8]) -> Result<PutBody, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut unit = go_fields(value, UNIT_FIELDS);
    each_of(&mut unit, "options", |o| go_fields(o, OPTION_FIELDS));
    typed(unit)
}

/// The body of `PUT /units/<name>`, decoded by [`decode_put_body`]: field
/// names match in any case, as Go's decoder matched them; the read-only
/// fields of a unit (`currentState`, `machineID`), which the original's
/// clients may send back, and any other field are ignored; `null` is the
/// same as absent.
#[derive(Debug, Deserialize)]
struct PutBody {
    /// The unit name; empty means the one in the URL.
    #[serde(default)]
    name: Option<String>,
    /// The desired state; empty means none. Anything but the three states is
    /// refused (the original stored it and broke the unit).
    #[serde(default, rename = "desiredState", deserialize_with = "desired_state")]
    desired_state: Option<TargetState>,
    /// The unit's content.
    #[serde(default)]
    options: Option<Vec<PutOption>>,
    /// Read-only; decoded only so that a value of the wrong type is refused.
    #[serde(default, rename = "currentState")]
    _current_state: Option<String>,
    /// Read-only; decoded only so that a value of the wrong type is refused.
    #[serde(default, rename = "machineID")]
    _machine_id: Option<String>,
}

/// One option in a [`PutBody`].
#[derive(Debug, Deserialize)]
struct PutOption {
    /// Option name.
    #[serde(default)]
    name: Option<String>,
    /// Section name.
    #[serde(default)]
    section: Option<String>,
    /// Option value.
    #[serde(default)]
    value: Option<String>,
}

impl From<PutOption> for UnitOption {
    fn from(o: PutOption) -> Self {
        UnitOption {
            name: o.name.unwrap_or_default(),
            section: o.section.unwrap_or_default(),
            value: o.value.unwrap_or_default(),
        }
    }
}

/// `desiredState`: absent, `null` or `""` is none; otherwise one of the
/// three states.
fn desired_state<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TargetState>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

// ---------------------------------------------------------------------------
// PATCH /machines
// ---------------------------------------------------------------------------

/// A validated metadata operation of a `PATCH /machines` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataChange {
    /// `add` or `replace`: set the machine's key to the (non-empty) value.
    Set(MachineId, String, String),
    /// `remove`: remove the machine's key.
    Remove(MachineId, String),
}

/// Decodes and checks a `PATCH /machines` body: every operation is
/// validated (in the original's order: op, path, value) before any is
/// applied, so one bad operation refuses the whole body.
pub fn decode_patch(body: &[u8]) -> Result<Vec<MetadataChange>, BodyError> {
    decode_patch_body(body)
        .map_err(BodyError::PatchDecode)?
        .into_iter()
        .map(validate_op)
        .collect()
}

/// Decodes a `PATCH /machines` body, as [`decode_put_body`].
fn decode_patch_body(body: &[u8]) -> Result<Vec<MetadataOp>, String> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if let Value::Array(ops) = &mut value {
        for op in ops.iter_mut() {
            let mut canonical = go_fields(op.take(), OP_FIELDS);
            if canonical.get("value").is_some_and(Value::is_object) {
                go_fields_of(&mut canonical, "value", VALUE_FIELDS);
            }
            *op = canonical;
        }
    }
    typed(value)
}

/// One operation of a `PATCH /machines` body:
/// `{"op":"add","path":"/<machine>/metadata/<key>","value":{"value":"v"}}`.
///
/// Decoded by [`decode_patch_body`]: field names match in any case, as Go's
/// decoder matched the original's untagged fields; unknown fields are
/// ignored; `null` is the same as absent.
#[derive(Debug, Deserialize)]
struct MetadataOp {
    /// `add`, `replace` or `remove`.
    #[serde(default)]
    op: Option<String>,
    /// `/<machineID>/metadata/<key>`.
    #[serde(default)]
    path: Option<String>,
    /// The value, an object wrapping a string.
    #[serde(default)]
    value: Option<MetadataValue>,
}

/// The `value` object of a [`MetadataOp`].
#[derive(Debug, Deserialize)]
struct MetadataValue {
    /// The metadata value.
    #[serde(default)]
    value: Option<String>,
}

/// Splits `/<machine>/metadata/<key>` as the original's
/// `^/([^/]+)/metadata/([A-Za-z0-9_.-]+$)` did (the machine must also be a
/// valid machine ID, i.e. without whitespace).
fn parse_metadata_path(path: &str) -> Option<(MachineId, String)> {
    let rest = path.strip_prefix('/')?;
    let (machine, rest) = rest.split_once('/')?;
    let key = rest.strip_prefix("metadata/")?;
    let key_ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !key_ok {
        return None;
    }
    Some((machine.parse().ok()?, key.to_owned()))
}

/// Checks one operation, in the original's order: op, path, value.
fn validate_op(op: MetadataOp) -> Result<MetadataChange, BodyError> {
    let kind = op.op.unwrap_or_default();
    if !matches!(kind.as_str(), "add" | "replace" | "remove") {
        return Err(BodyError::InvalidOp);
    }
    let Some((machine, key)) = op.path.as_deref().and_then(parse_metadata_path) else {
        return Err(BodyError::InvalidPath);
    };
    if kind == "remove" {
        return Ok(MetadataChange::Remove(machine, key));
    }
    match op.value.and_then(|v| v.value).filter(|v| !v.is_empty()) {
        Some(value) => Ok(MetadataChange::Set(machine, key, value)),
        None => Err(BodyError::MissingValue),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_fold_as_in_go_and_unknown_ones_are_dropped() {
        assert!(go_fold_eq("desiredState", "DESIREDSTATE"));
        assert!(go_fold_eq("desiredState", "de\u{17F}iredState"));
        assert!(go_fold_eq("k", "\u{212A}"));
        assert!(!go_fold_eq("name", "names"));
        assert!(!go_fold_eq("name", "nam"));
        assert!(!go_fold_eq("name", "n\u{e1}me"));
        let put = decode_put(
            "a.service",
            br#"{"Options":[{"NAME":"ExecStart","section":"Service","value":"/bin/true","x":[]}],"extra":{"y":1}}"#,
        )
        .unwrap();
        assert_eq!(
            put.options,
            vec![UnitOption {
                name: "ExecStart".into(),
                section: "Service".into(),
                value: "/bin/true".into(),
            }]
        );
        let err = decode_put("a.service", br#"{"name":1,"extra":1}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unable to decode body: field "name": invalid type: integer `1`, expected a string"#
        );
    }

    #[test]
    fn metadata_paths() {
        let (m, k) = parse_metadata_path("/abc/metadata/role.x-1_y").unwrap();
        assert_eq!((m.as_str(), k.as_str()), ("abc", "role.x-1_y"));
        for bad in [
            "abc/metadata/k",
            "/abc/metadata/",
            "/abc/metadata/a/b",
            "//metadata/k",
            "/abc/meta/k",
            "/abc/metadata/k!",
            "/a b/metadata/k",
        ] {
            assert!(parse_metadata_path(bad).is_none(), "{bad}");
        }
    }
}
