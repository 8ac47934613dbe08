//! Wire types: the JSON objects of the `/fleet/v1` API and the records fleet
//! keeps in etcd.
//!
//! The API objects reproduce the original fleet wire format byte for byte:
//! every field is omitted when empty, and fields are declared in alphabetical
//! order because serde writes them in declaration order and the original
//! emitted them sorted. The etcd records are our own (the key layout is ours,
//! see `docs/etcd-keys.md`), except [`MachineRecord`], which keeps the Go field
//! names of the original `MachineState` so the value reads the same to anyone
//! who inspects etcd.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use units::{UnitFile, UnitHash, UnitName};

pub mod request;

/// A unit's desired or current state, as fleet (not systemd) sees it.
///
/// `Display`/`FromStr` and serde use exactly the wire strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    /// Known to fleet but not scheduled.
    Inactive,
    /// Scheduled and linked into systemd, not started.
    Loaded,
    /// Started.
    Launched,
}

impl TargetState {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Inactive => "inactive",
            TargetState::Loaded => "loaded",
            TargetState::Launched => "launched",
        }
    }
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a string that is not one of `inactive`, `loaded`, `launched`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid state {0:?}: must be one of inactive, loaded, launched")]
pub struct InvalidTargetState(pub String);

impl FromStr for TargetState {
    type Err = InvalidTargetState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "inactive" => Ok(TargetState::Inactive),
            "loaded" => Ok(TargetState::Loaded),
            "launched" => Ok(TargetState::Launched),
            other => Err(InvalidTargetState(other.to_owned())),
        }
    }
}

/// A machine's ID, normally the 32 hex characters of `/etc/machine-id`.
///
/// Any non-empty string without `/` or whitespace is accepted, because the API
/// lets clients name machines in metadata paths and the original did not check.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineId(String);

/// The error for an unusable machine ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid machine ID {0:?}: must be non-empty, without '/' or whitespace")]
pub struct InvalidMachineId(pub String);

impl MachineId {
    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 8 characters, as fleet shows machines in tables.
    pub fn short(&self) -> &str {
        self.0.get(..8).unwrap_or(&self.0)
    }
}

impl FromStr for MachineId {
    type Err = InvalidMachineId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl TryFrom<String> for MachineId {
    type Error = InvalidMachineId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.is_empty() || s.contains('/') || s.chars().any(char::is_whitespace) {
            return Err(InvalidMachineId(s));
        }
        Ok(MachineId(s))
    }
}

impl From<MachineId> for String {
    fn from(id: MachineId) -> String {
        id.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------
// API objects (/fleet/v1)
// ---------------------------------------------------------------------------

/// One option of a unit on the wire: `{"name","section","value"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitOption {
    /// Option name, e.g. `ExecStart`.
    pub name: String,
    /// Section name without brackets, e.g. `Service`.
    pub section: String,
    /// The value, exactly as stored.
    pub value: String,
}

impl From<units::UnitOption> for UnitOption {
    fn from(o: units::UnitOption) -> Self {
        UnitOption {
            name: o.name,
            section: o.section,
            value: o.value,
        }
    }
}

impl From<UnitOption> for units::UnitOption {
    fn from(o: UnitOption) -> Self {
        units::UnitOption {
            section: o.section,
            name: o.name,
            value: o.value,
        }
    }
}

/// The API's `Unit` object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// Where the unit is now, derived from the schedule and the agent's report.
    #[serde(
        rename = "currentState",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub current_state: Option<TargetState>,
    /// What the user asked for.
    #[serde(
        rename = "desiredState",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub desired_state: Option<TargetState>,
    /// The machine the engine chose; empty for global and unscheduled units.
    #[serde(
        rename = "machineID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    /// The unit name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The unit's options in submission order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<UnitOption>,
}

/// The API's `UnitState` object: what systemd reports for a unit on a machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    /// Hash of the unit content the agent loaded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// The reporting machine.
    #[serde(
        rename = "machineID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    /// The unit name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// systemd's ActiveState.
    #[serde(
        rename = "systemdActiveState",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub systemd_active_state: String,
    /// systemd's LoadState.
    #[serde(
        rename = "systemdLoadState",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub systemd_load_state: String,
    /// systemd's SubState.
    #[serde(
        rename = "systemdSubState",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub systemd_sub_state: String,
}

/// The API's `Machine` object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// The machine ID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Config metadata merged with dynamic metadata set through the API.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The machine's public IP.
    #[serde(
        rename = "primaryIP",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub primary_ip: String,
}

/// One page of a listing: `{"units":[...]}`, `{"states":[...]}` or
/// `{"machines":[...]}`, with `nextPageToken` when the page is full.
///
/// Both fields are omitted when empty. The items' field name and the field
/// order (the original's: the token before units and states, after machines)
/// come from the item type's [`PageItem`]; unknown fields are ignored and a
/// repeated one is refused, as serde's derive does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// Present when the page is full.
    pub next_page_token: Option<String>,
    /// The items of this page.
    pub items: Vec<T>,
}

/// A page of units.
pub type UnitPage = Page<Unit>;
/// A page of unit states.
pub type UnitStatePage = Page<UnitState>;
/// A page of machines.
pub type MachinePage = Page<Machine>;

/// What a [`Page`] of this type looks like on the wire.
pub trait PageItem {
    /// The JSON field holding the items.
    const FIELD: &'static str;
    /// Whether `nextPageToken` is written before the items.
    const TOKEN_FIRST: bool;
}

impl PageItem for Unit {
    const FIELD: &'static str = "units";
    const TOKEN_FIRST: bool = true;
}

impl PageItem for UnitState {
    const FIELD: &'static str = "states";
    const TOKEN_FIRST: bool = true;
}

impl PageItem for Machine {
    const FIELD: &'static str = "machines";
    const TOKEN_FIRST: bool = false;
}

/// The JSON field of a page's token.
const NEXT_PAGE_TOKEN: &str = "nextPageToken";

impl<T> Default for Page<T> {
    fn default() -> Self {
        Page {
            next_page_token: None,
            items: Vec::new(),
        }
    }
}

/// A page of `items`, followed by the page whose token is given, if any (the
/// shape of the API's `PageToken::slice`).
impl<T> From<(Vec<T>, Option<String>)> for Page<T> {
    fn from((items, next_page_token): (Vec<T>, Option<String>)) -> Self {
        Page {
            next_page_token,
            items,
        }
    }
}

impl<T: PageItem + Serialize> Serialize for Page<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let fields =
            usize::from(self.next_page_token.is_some()) + usize::from(!self.items.is_empty());
        let mut out = serializer.serialize_struct("Page", fields)?;
        let token = self.next_page_token.as_ref();
        if let (true, Some(token)) = (T::TOKEN_FIRST, token) {
            out.serialize_field(NEXT_PAGE_TOKEN, token)?;
        }
        if !self.items.is_empty() {
            out.serialize_field(T::FIELD, &self.items)?;
        }
        if let (false, Some(token)) = (T::TOKEN_FIRST, token) {
            out.serialize_field(NEXT_PAGE_TOKEN, token)?;
        }
        out.end()
    }
}

impl<'de, T: PageItem + Deserialize<'de>> Deserialize<'de> for Page<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, Visitor};

        /// Reads the fields of a `Page<T>`.
        struct PageVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: PageItem + Deserialize<'de>> Visitor<'de> for PageVisitor<T> {
            type Value = Page<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a page of {}", T::FIELD)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Page<T>, A::Error> {
                let mut token: Option<Option<String>> = None;
                let mut items: Option<Vec<T>> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == NEXT_PAGE_TOKEN {
                        if token.is_some() {
                            return Err(A::Error::duplicate_field(NEXT_PAGE_TOKEN));
                        }
                        token = Some(map.next_value()?);
                    } else if key == T::FIELD {
                        if items.is_some() {
                            return Err(A::Error::duplicate_field(T::FIELD));
                        }
                        items = Some(map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Page {
                    next_page_token: token.flatten(),
                    items: items.unwrap_or_default(),
                })
            }
        }

        deserializer.deserialize_map(PageVisitor(std::marker::PhantomData))
    }
}

/// The error body: `{"error":{"code":N,"message":"..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The HTTP status code.
    pub code: u16,
    /// A human-readable message, possibly empty.
    pub message: String,
}

// ---------------------------------------------------------------------------
// etcd records (our layout; see docs/etcd-keys.md)
// ---------------------------------------------------------------------------

/// A unit as stored at `units/<name>`: its content and desired state.
///
/// The options are stored (not the canonical text), in the parser's normal
/// form (`units::UnitFile::from_options` gives it, and the API refuses what
/// has none), so that the unit file an agent writes from them reads back to
/// exactly these options; the hash is always derived from them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// The unit name.
    pub name: UnitName,
    /// What the user asked for.
    #[serde(rename = "desiredState")]
    pub desired_state: TargetState,
    /// The content in submission order.
    pub options: Vec<units::UnitOption>,
}

impl UnitRecord {
    /// The unit file made of the stored options.
    pub fn file(&self) -> UnitFile {
        UnitFile::from_options(self.options.clone())
    }

    /// The content hash.
    pub fn hash(&self) -> UnitHash {
        self.file().hash()
    }
}

/// One unit in one machine's schedule (`schedule/<machine>/<unit>`): what the
/// agent on that machine must make true. Written only by the engine leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledUnit {
    /// `loaded` or `launched` (never `inactive`: an inactive unit has no entry).
    #[serde(rename = "desiredState")]
    pub desired_state: TargetState,
    /// The content hash the agent must run; it fetches `units/<name>` when its
    /// own copy differs.
    pub hash: UnitHash,
    /// True for a global unit's per-machine instance.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub global: bool,
}

/// What an agent reports for one unit (`states/<unit>/<machine>`), kept alive
/// by the machine's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStateRecord {
    /// The unit.
    pub name: UnitName,
    /// The reporting machine.
    #[serde(rename = "machineID")]
    pub machine_id: MachineId,
    /// systemd's LoadState.
    #[serde(rename = "loadState")]
    pub load_state: String,
    /// systemd's ActiveState.
    #[serde(rename = "activeState")]
    pub active_state: String,
    /// systemd's SubState.
    #[serde(rename = "subState")]
    pub sub_state: String,
    /// Hash of the content the agent loaded.
    #[serde(rename = "unitHash")]
    pub unit_hash: UnitHash,
    /// How far the agent has taken the unit: `loaded` or `launched`. This is
    /// the `currentState` the API shows for the unit on its target machine.
    #[serde(rename = "jobState")]
    pub job_state: TargetState,
}

impl From<&UnitStateRecord> for UnitState {
    fn from(r: &UnitStateRecord) -> Self {
        UnitState {
            hash: r.unit_hash.to_string(),
            machine_id: r.machine_id.to_string(),
            name: r.name.to_string(),
            systemd_active_state: r.active_state.clone(),
            systemd_load_state: r.load_state.clone(),
            systemd_sub_state: r.sub_state.clone(),
        }
    }
}

/// Capabilities a machine announces, with the original's key names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `disable_engine` is set: this machine never leads.
    #[serde(rename = "DISABLE_ENGINE", default)]
    pub disable_engine: bool,
    /// Always false: the experimental gRPC mode is not implemented.
    #[serde(rename = "GRPC", default)]
    pub grpc: bool,
}

/// A machine's presence record at `machines/<id>`, attached to its lease.
/// Field names are those of the original `MachineState`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// The machine ID.
    #[serde(rename = "ID")]
    pub id: MachineId,
    /// The public IP, possibly empty.
    #[serde(rename = "PublicIP", default)]
    pub public_ip: String,
    /// Metadata from the config (dynamic metadata lives under its own keys).
    #[serde(rename = "Metadata", default)]
    pub metadata: BTreeMap<String, String>,
    /// What this fleetd can do.
    #[serde(rename = "Capabilities", default)]
    pub capabilities: Capabilities,
    /// fleetd's version.
    #[serde(rename = "Version", default)]
    pub version: String,
    /// A random token that identifies one fleetd installation on one host. A
    /// restarted fleetd presents the same token and takes its record back at
    /// once; another host with the same machine ID presents another token and
    /// is refused.
    #[serde(rename = "Token", default)]
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_pages_are_empty_objects() {
        assert_eq!(serde_json::to_string(&UnitPage::default()).unwrap(), "{}");
        assert_eq!(
            serde_json::to_string(&UnitStatePage::default()).unwrap(),
            "{}"
        );
        assert_eq!(
            serde_json::to_string(&MachinePage::default()).unwrap(),
            "{}"
        );
    }

    #[test]
    fn pages_keep_the_original_field_order_and_read_back() {
        let machine = Machine {
            id: "m".into(),
            ..Machine::default()
        };
        let machines = MachinePage::from((vec![machine], Some("T".into())));
        let json = serde_json::to_string(&machines).unwrap();
        assert_eq!(json, r#"{"machines":[{"id":"m"}],"nextPageToken":"T"}"#);
        assert_eq!(
            serde_json::from_str::<MachinePage>(&json).unwrap(),
            machines
        );
        let states = UnitStatePage::from((Vec::new(), Some("T".into())));
        assert_eq!(
            serde_json::to_string(&states).unwrap(),
            r#"{"nextPageToken":"T"}"#
        );
        let units: UnitPage =
            serde_json::from_str(r#"{"other":[1],"units":[{"name":"a"}],"nextPageToken":null}"#)
                .unwrap();
        assert_eq!((units.items.len(), units.next_page_token), (1, None));
        assert!(serde_json::from_str::<UnitPage>(r#"{"units":[],"units":[]}"#).is_err());
    }

    #[test]
    fn unit_fields_are_alphabetical_and_omitted_when_empty() {
        let u = Unit {
            current_state: Some(TargetState::Launched),
            desired_state: Some(TargetState::Launched),
            machine_id: "abc".into(),
            name: "hello.service".into(),
            options: vec![UnitOption {
                name: "ExecStart".into(),
                section: "Service".into(),
                value: "/bin/true".into(),
            }],
        };
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"currentState":"launched","desiredState":"launched","machineID":"abc","name":"hello.service","options":[{"name":"ExecStart","section":"Service","value":"/bin/true"}]}"#
        );
        let bare = Unit {
            name: "x.service".into(),
            ..Unit::default()
        };
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"name":"x.service"}"#
        );
    }

    #[test]
    fn target_state_round_trips_and_rejects_garbage() {
        for s in ["inactive", "loaded", "launched"] {
            assert_eq!(s.parse::<TargetState>().unwrap().to_string(), s);
        }
        assert!("bogus".parse::<TargetState>().is_err());
        assert!(serde_json::from_str::<Unit>(r#"{"desiredState":"bogus"}"#).is_err());
    }

    #[test]
    fn machine_record_uses_go_field_names() {
        let m = MachineRecord {
            id: "m1".parse().unwrap(),
            public_ip: "10.0.0.1".into(),
            metadata: BTreeMap::from([("role".into(), "web".into())]),
            capabilities: Capabilities::default(),
            version: "0.1.0".into(),
            token: "t".into(),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"ID":"m1","PublicIP":"10.0.0.1","Metadata":{"role":"web"},"Capabilities":{"DISABLE_ENGINE":false,"GRPC":false},"Version":"0.1.0","Token":"t"}"#
        );
    }

    #[test]
    fn machine_ids_are_checked() {
        assert!("".parse::<MachineId>().is_err());
        assert!("a/b".parse::<MachineId>().is_err());
        assert_eq!(
            "0123456789abcdef".parse::<MachineId>().unwrap().short(),
            "01234567"
        );
        assert_eq!("abc".parse::<MachineId>().unwrap().short(), "abc");
    }
}
