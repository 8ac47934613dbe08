//! The schedule: which machine runs which unit.
//!
//! Two keys per placement, written together by the engine leader in one
//! fenced transaction: `schedule/<machine>/<unit>` (a [`ScheduledUnit`], what
//! the agent on that machine watches) and `targets/<unit>` (the machine ID,
//! for the API's `machineID`; absent for global units).

use units::UnitName;

use super::{Fence, Kv, Listing, Registry, Result, Revision};
use crate::schema::{MachineId, ScheduledUnit};

/// One change to the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleChange {
    /// Put (create or update) `unit` in `machine`'s schedule. For a non-global
    /// unit this also sets `targets/<unit>` to `machine`.
    Put {
        /// The unit.
        unit: UnitName,
        /// The machine.
        machine: MachineId,
        /// What that machine's agent must do.
        entry: ScheduledUnit,
    },
    /// Remove `unit` from `machine`'s schedule (and `targets/<unit>` if it
    /// points at `machine`).
    Remove {
        /// The unit.
        unit: UnitName,
        /// The machine.
        machine: MachineId,
    },
}

impl<K: Kv> Registry<K> {
    /// The machine a (non-global) unit is scheduled to.
    pub async fn target(&self, unit: &UnitName) -> Result<Option<MachineId>> {
        todo!("{unit}")
    }

    /// Every non-global placement, sorted by unit name.
    pub async fn targets(&self) -> Result<Listing<(UnitName, MachineId)>> {
        todo!()
    }

    /// One machine's schedule, sorted by unit name.
    pub async fn machine_schedule(
        &self,
        machine: &MachineId,
    ) -> Result<Listing<(UnitName, ScheduledUnit)>> {
        todo!("{machine}")
    }

    /// The whole schedule (every machine), sorted by (machine, unit).
    pub async fn schedule(&self) -> Result<Listing<(MachineId, UnitName, ScheduledUnit)>> {
        todo!()
    }

    /// Apply the engine's changes, fenced by its leadership: each transaction
    /// holds only while `fence` is still the leader key, otherwise
    /// `Err(NotLeader)` and nothing (more) is written. Large change sets are
    /// split into transactions within etcd's per-transaction op limit.
    pub async fn apply_schedule(&self, fence: &Fence, changes: &[ScheduleChange]) -> Result<Revision> {
        todo!("{fence:?} {changes:?}")
    }
}
