//! [`RegistryClient`]: the [`FleetApi`] worked straight on the registry.
//!
//! This is what the API server serves (as the original's `api/mux.go` is
//! built on its `client.RegistryClient`) and what `fleetctl --driver=etcd`
//! uses, so both see the same rules and the same error codes and messages:
//! a refusal is an [`Error::Refused`] carrying the [`Refusal`](super::Refusal)
//! and message the `/fleet/v1` API answers with (fleet-reference.md §4.4), and a registry
//! failure is an [`Error::Registry`], which the API turns into a 500.
//!
//! # `currentState`
//!
//! fleet shows, for each unit, how far the agent on its target machine has
//! taken it. In our layout (docs/etcd-keys.md) that is derived as follows:
//!
//! - a global unit: `GET /units/<name>` shows neither `currentState` nor
//!   `machineID`, the unit listing shows `currentState: "inactive"` (as the
//!   original did: a global unit has no single target);
//! - no `targets/<unit>`, or no `states/<unit>/<target>` record: `inactive`;
//! - otherwise the record's `jobState` (`loaded` or `launched`), **except**
//!   that a record for other content than the unit's current content (its
//!   `unitHash` differs from the unit's hash, after a replace) counts as at
//!   most `loaded`: the new content is not running yet, so a `fleetctl start
//!   --replace` keeps waiting until the agent reports the new content
//!   launched. An all-zero record hash means "unknown" and is not compared.
//!
//! # Cost
//!
//! Listing units takes three range reads (`units/`, `targets/`, `states/`),
//! joined in memory; a single unit takes three point reads. Nothing reads per
//! unit in a loop.

use std::collections::{BTreeMap, HashMap};

use units::{Requirements, UnitFile, UnitName, go_quote};

use super::{Error, FleetApi, Refusal, Result};
use crate::registry::{self, Kv, Registry};
use crate::schema::{
    Machine, MachineId, MachineRecord, TargetState, Unit, UnitOption, UnitRecord, UnitState,
    UnitStateRecord,
};

/// 404 body for a unit that is not in the registry.
pub const UNIT_NOT_FOUND: &str = "unit does not exist";

/// 409 body for a PUT creating a unit without content.
pub const NO_OPTIONS: &str = "unit does not exist and options field empty";

/// 409 body for a PUT on an existing unit that changes nothing.
pub const NO_DESIRED_STATE: &str = "must provide DesiredState to update existing unit";

/// How often [`RegistryClient::put_unit`] starts over when the unit changed
/// between its read and its conditional write.
const PUT_ATTEMPTS: usize = 5;

/// What a successful [`RegistryClient::put_unit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The unit was created, or its content replaced (HTTP 201).
    Created,
    /// Only the desired state of an existing unit was written (HTTP 204).
    Updated,
}

/// The fleet API over a [`Registry`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RegistryClient<K> {
    /// Where everything is read and written.
    registry: Registry<K>,
}

/// Whether a stored unit is global. Stored units passed validation when they
/// were created, so the combination rules are not checked again.
fn is_global(record: &UnitRecord, file: &UnitFile) -> bool {
    Requirements::extract(&record.name, file).global
}

/// The `currentState` of a non-global unit (see the module doc).
pub(crate) fn current_state(
    record_hash: impl FnOnce() -> units::UnitHash,
    target: Option<&MachineId>,
    state: Option<&UnitStateRecord>,
) -> TargetState {
    let (Some(target), Some(state)) = (target, state) else {
        return TargetState::Inactive;
    };
    if state.machine_id != *target {
        return TargetState::Inactive;
    }
    if !state.unit_hash.is_zero() && state.unit_hash != record_hash() {
        return state.job_state.min(TargetState::Loaded);
    }
    state.job_state
}

/// The API object of a stored unit. `current` is `None` for a global unit
/// read on its own (no `currentState` at all).
fn to_api_unit(
    record: UnitRecord,
    current: Option<TargetState>,
    machine: Option<&MachineId>,
) -> Unit {
    Unit {
        current_state: current,
        desired_state: Some(record.desired_state),
        machine_id: machine.map(ToString::to_string).unwrap_or_default(),
        name: record.name.into(),
        options: record.options.into_iter().map(UnitOption::from).collect(),
    }
}

/// The API object of a machine: its config metadata, overlaid with the
/// dynamic metadata set through the API, where an empty value hides the key.
fn to_api_machine(record: MachineRecord, dynamic: Option<&BTreeMap<String, String>>) -> Machine {
    let mut metadata = record.metadata;
    for (key, value) in dynamic.into_iter().flatten() {
        registry::merge_metadata(&mut metadata, key, value);
    }
    Machine {
        id: record.id.into(),
        metadata,
        primary_ip: record.public_ip,
    }
}

impl<K: Kv> RegistryClient<K> {
    /// A client over `registry`.
    pub fn new(registry: Registry<K>) -> Self {
        RegistryClient { registry }
    }

    /// The registry underneath.
    pub fn registry(&self) -> &Registry<K> {
        &self.registry
    }

    /// Create, replace or change the desired state of a unit, as
    /// `PUT /fleet/v1/units/<name>` does (fleet-reference.md §4.4, steps 4 to
    /// 8, with the original's bugs fixed). Everything is checked before
    /// anything is written, so a refused request changes nothing:
    ///
    /// - an invalid `name` → 400 with the name rule's message;
    /// - the unit does not exist: no `options` → 409 [`NO_OPTIONS`]; options
    ///   breaking the `[X-Fleet]` rules → 400 with their message; a template
    ///   with a desired state other than `inactive` → 400 `cannot activate
    ///   template "<name>"`; otherwise created with the desired state
    ///   (default `inactive`) → [`PutOutcome::Created`];
    /// - it exists and `options` with other content were sent: the same
    ///   checks, then replaced (desired state again defaulting to `inactive`,
    ///   as the original) → [`PutOutcome::Created`];
    /// - otherwise no desired state → 409 [`NO_DESIRED_STATE`]; a template
    ///   made active → 400; else the desired state is written →
    ///   [`PutOutcome::Updated`].
    ///
    /// The desired-state write is conditional on the unit not having changed
    /// since it was read; when it has, the decision is taken again.
    pub async fn put_unit(
        &self,
        name: &str,
        desired: Option<TargetState>,
        options: Vec<UnitOption>,
    ) -> Result<PutOutcome> {
        let name: UnitName = name
            .parse()
            .map_err(|e: units::NameError| Error::refused(Refusal::BadRequest, e.to_string()))?;
        let file =
            UnitFile::from_options(options.into_iter().map(units::UnitOption::from).collect());
        let activates_template =
            || name.is_template() && desired.is_some_and(|s| s != TargetState::Inactive);

        for _ in 0..PUT_ATTEMPTS {
            // The unit as it stands, unless this request creates or replaces it.
            let kept = match self.registry.unit(&name).await? {
                None if file.options().is_empty() => {
                    return Err(Error::refused(Refusal::Conflict, NO_OPTIONS));
                }
                Some(current)
                    if file.options().is_empty() || current.value.hash() == file.hash() =>
                {
                    Some(current)
                }
                _ => None,
            };
            let Some(current) = kept else {
                units::validate_options(&name, &file)
                    .map_err(|e| Error::refused(Refusal::BadRequest, e.to_string()))?;
                if activates_template() {
                    return Err(template_error(&name));
                }
                let record = UnitRecord {
                    name: name.clone(),
                    desired_state: desired.unwrap_or(TargetState::Inactive),
                    options: file.options().to_vec(),
                };
                self.registry.put_unit(&record).await?;
                return Ok(PutOutcome::Created);
            };
            let Some(state) = desired else {
                return Err(Error::refused(Refusal::Conflict, NO_DESIRED_STATE));
            };
            if activates_template() {
                return Err(template_error(&name));
            }
            match self
                .registry
                .set_desired_state(&name, state, current.mod_revision)
                .await
            {
                Ok(_) => return Ok(PutOutcome::Updated),
                // The unit changed or vanished since we read it: decide again.
                Err(registry::Error::Conflict { .. } | registry::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(registry::Error::Conflict {
            key: self.registry.keys().unit(&name),
        }
        .into())
    }

    /// Unit states sorted by (unit, machine), only those of `unit` and of
    /// `machine` when given (the filters of `GET /state`). With a unit, only
    /// that unit's states are read.
    pub async fn unit_states_matching(
        &self,
        unit: Option<&str>,
        machine: Option<&str>,
    ) -> Result<Vec<UnitState>> {
        let records = match unit {
            Some(unit) => match unit.parse::<UnitName>() {
                Ok(unit) => self.registry.unit_states_of(&unit).await?,
                // An invalid name has no states.
                Err(_) => return Ok(Vec::new()),
            },
            None => self.registry.unit_states().await?.items,
        };
        let mut states: Vec<UnitState> = records
            .iter()
            .filter(|s| machine.is_none_or(|m| s.machine_id.as_str() == m))
            .map(UnitState::from)
            .collect();
        states.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
        Ok(states)
    }

    /// Set one dynamic metadata key of a machine (`PATCH /machines` `add`
    /// and `replace`). The machine need not exist, as in the original.
    pub async fn set_machine_metadata(
        &self,
        machine: &MachineId,
        key: &str,
        value: &str,
    ) -> Result<()> {
        Ok(self.registry.set_metadata(machine, key, value).await?)
    }

    /// Remove one metadata key of a machine (`PATCH /machines` `remove`).
    ///
    /// As in the original, this stores an empty value, a tombstone that also
    /// hides a key of the same name from the machine's config metadata (a
    /// plain delete could not); merged views drop empty values.
    pub async fn delete_machine_metadata(&self, machine: &MachineId, key: &str) -> Result<()> {
        Ok(self.registry.set_metadata(machine, key, "").await?)
    }
}

/// 400 for activating a template.
fn template_error(name: &UnitName) -> Error {
    Error::refused(
        Refusal::BadRequest,
        format!("cannot activate template {}", go_quote(name.as_str())),
    )
}

impl<K: Kv> FleetApi for RegistryClient<K> {
    async fn machines(&self) -> Result<Vec<Machine>> {
        let machines = self.registry.machines().await?;
        let dynamic = self.registry.dynamic_metadata().await?;
        Ok(machines
            .items
            .into_iter()
            .map(|m| {
                let extra = dynamic.get(&m.id);
                to_api_machine(m, extra)
            })
            .collect())
    }

    async fn unit(&self, name: &str) -> Result<Option<Unit>> {
        // An invalid name cannot be stored: it does not exist.
        let Ok(name) = name.parse::<UnitName>() else {
            return Ok(None);
        };
        let Some(record) = self.registry.unit(&name).await?.map(|v| v.value) else {
            return Ok(None);
        };
        let file = record.file();
        if is_global(&record, &file) {
            return Ok(Some(to_api_unit(record, None, None)));
        }
        let target = self.registry.target(&name).await?;
        let state = match &target {
            Some(machine) => self
                .registry
                .unit_states_of(&name)
                .await?
                .into_iter()
                .find(|s| s.machine_id == *machine),
            None => None,
        };
        let current = current_state(|| file.hash(), target.as_ref(), state.as_ref());
        Ok(Some(to_api_unit(record, Some(current), target.as_ref())))
    }

    async fn units(&self) -> Result<Vec<Unit>> {
        let units = self.registry.units().await?;
        let targets: HashMap<UnitName, MachineId> =
            self.registry.targets().await?.items.into_iter().collect();
        let states = self.registry.unit_states().await?.items;
        let states: HashMap<(&UnitName, &MachineId), &UnitStateRecord> = states
            .iter()
            .map(|s| ((&s.name, &s.machine_id), s))
            .collect();

        let mut out: Vec<Unit> = units
            .items
            .into_iter()
            .map(|record| {
                let file = record.file();
                if is_global(&record, &file) {
                    return to_api_unit(record, Some(TargetState::Inactive), None);
                }
                let target = targets.get(&record.name);
                let state = target.and_then(|m| states.get(&(&record.name, m)).copied());
                let current = current_state(|| file.hash(), target, state);
                to_api_unit(record, Some(current), target)
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn unit_states(&self) -> Result<Vec<UnitState>> {
        self.unit_states_matching(None, None).await
    }

    async fn unit_state(&self, name: &str) -> Result<Option<UnitState>> {
        let Ok(name) = name.parse::<UnitName>() else {
            return Ok(None);
        };
        let states = self.registry.unit_states_of(&name).await?;
        Ok(states.first().map(UnitState::from))
    }

    async fn create_unit(&self, unit: &Unit) -> Result<()> {
        self.put_unit(&unit.name, unit.desired_state, unit.options.clone())
            .await
            .map(drop)
    }

    async fn set_unit_target_state(&self, name: &str, state: TargetState) -> Result<()> {
        self.put_unit(name, Some(state), Vec::new()).await.map(drop)
    }

    async fn destroy_unit(&self, name: &str) -> Result<()> {
        let Ok(name) = name.parse::<UnitName>() else {
            return Err(Error::refused(Refusal::NotFound, UNIT_NOT_FOUND));
        };
        if self.registry.delete_unit(&name).await? {
            Ok(())
        } else {
            Err(Error::refused(Refusal::NotFound, UNIT_NOT_FOUND))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct-registry client refuses what the API refuses, with the same
    /// codes and messages (fleetctl --driver=etcd).
    #[tokio::test]
    async fn refusals_match_the_api() {
        let client = RegistryClient::new(Registry::new(crate::registry::MemKv::new(), "/t/"));
        let api = |e: Error| match e {
            Error::Refused { refusal, message } => (refusal.status(), message),
            other => panic!("not an API error: {other}"),
        };
        let opt = UnitOption {
            name: "ExecStart".into(),
            section: "Service".into(),
            value: "/bin/true".into(),
        };
        assert_eq!(
            api(client
                .set_unit_target_state("a.service", TargetState::Launched)
                .await
                .unwrap_err()),
            (409, NO_OPTIONS.to_owned())
        );
        assert_eq!(
            api(client.destroy_unit("a.service").await.unwrap_err()),
            (404, UNIT_NOT_FOUND.to_owned())
        );
        assert_eq!(
            api(client.destroy_unit("bad").await.unwrap_err()),
            (404, UNIT_NOT_FOUND.to_owned())
        );
        let template = Unit {
            name: "t@.service".into(),
            desired_state: Some(TargetState::Launched),
            options: vec![opt.clone()],
            ..Unit::default()
        };
        assert_eq!(
            api(client.create_unit(&template).await.unwrap_err()),
            (400, r#"cannot activate template "t@.service""#.to_owned())
        );
        let bad_name = Unit {
            name: "a".into(),
            options: vec![opt.clone()],
            ..Unit::default()
        };
        assert_eq!(
            api(client.create_unit(&bad_name).await.unwrap_err()),
            (400, r#"unit name must contain ".""#.to_owned())
        );
        let unit = Unit {
            name: "a.service".into(),
            options: vec![opt],
            ..Unit::default()
        };
        client.create_unit(&unit).await.unwrap();
        client
            .set_unit_target_state("a.service", TargetState::Loaded)
            .await
            .unwrap();
        let got = client.unit("a.service").await.unwrap().unwrap();
        assert_eq!(got.desired_state, Some(TargetState::Loaded));
        assert_eq!(got.current_state, Some(TargetState::Inactive));
        assert_eq!(client.units().await.unwrap(), vec![got]);
        assert_eq!(client.unit("bad").await.unwrap(), None);
        assert_eq!(client.unit_state("a.service").await.unwrap(), None);
        client.destroy_unit("a.service").await.unwrap();
        assert_eq!(client.unit("a.service").await.unwrap(), None);
    }
}
