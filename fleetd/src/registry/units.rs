//! Units: content and desired state at `units/<name>`.

use units::UnitName;

use super::{Kv, Listing, Registry, Result, Revision, Versioned};
use crate::schema::{TargetState, UnitRecord};

impl<K: Kv> Registry<K> {
    /// One unit, with the revision to compare against when changing it.
    pub async fn unit(&self, name: &UnitName) -> Result<Option<Versioned<UnitRecord>>> {
        todo!("{name}")
    }

    /// Every unit, sorted by name.
    pub async fn units(&self) -> Result<Listing<UnitRecord>> {
        todo!()
    }

    /// Create a unit, or replace its content and desired state.
    pub async fn put_unit(&self, unit: &UnitRecord) -> Result<Revision> {
        todo!("{unit:?}")
    }

    /// Change only the desired state, if the unit is still at `expect`
    /// (`Conflict` otherwise, `NotFound` if it is gone).
    pub async fn set_desired_state(
        &self,
        name: &UnitName,
        state: TargetState,
        expect: Revision,
    ) -> Result<Revision> {
        todo!("{name} {state} {expect}")
    }

    /// Delete a unit; false if it did not exist. The engine then removes it
    /// from the schedule and the agents stop it.
    pub async fn delete_unit(&self, name: &UnitName) -> Result<bool> {
        todo!("{name}")
    }
}
