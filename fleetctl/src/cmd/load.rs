//! `fleetctl load UNIT...`: schedule units, submitting them first if needed.

use std::ops::ControlFlow;

use fleetd::client::FleetApi;
use fleetd::schema::TargetState;

use super::{CreateFor, Ctx, Exit};
use crate::cli::ScheduleArgs;

/// Submits, sets the desired state to loaded and waits for `loaded`.
pub async fn run<A: FleetApi>(args: &ScheduleArgs, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    match super::schedule(ctx, args, CreateFor::Load, TargetState::Loaded, "load").await? {
        ControlFlow::Break(exit) => Ok(exit),
        ControlFlow::Continue(_) => Ok(Exit::Success),
    }
}
