//! Unit states published by agents at `states/<unit>/<machine>`, attached to
//! the publishing machine's lease so they vanish with it.

use units::UnitName;

use super::{Kv, LeaseId, Listing, Registry, Result};
use crate::schema::{MachineId, UnitStateRecord};

impl<K: Kv> Registry<K> {
    /// Publish (create or overwrite) one unit state under the machine's lease.
    pub async fn publish_state(&self, lease: LeaseId, state: &UnitStateRecord) -> Result<()> {
        todo!("{lease:?} {state:?}")
    }

    /// Remove one machine's state for a unit.
    pub async fn remove_state(&self, unit: &UnitName, machine: &MachineId) -> Result<()> {
        todo!("{unit} {machine}")
    }

    /// Every published state, sorted by (unit, machine).
    pub async fn unit_states(&self) -> Result<Listing<UnitStateRecord>> {
        todo!()
    }

    /// The states of one unit, sorted by machine.
    pub async fn unit_states_of(&self, unit: &UnitName) -> Result<Vec<UnitStateRecord>> {
        todo!("{unit}")
    }
}
