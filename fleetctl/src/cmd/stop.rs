//! `fleetctl stop UNIT...`: stop units, leaving them loaded.

use std::ops::ControlFlow;

use fleetd::client::FleetApi;
use fleetd::schema::TargetState;

use super::{Ctx, Exit};
use crate::cli::UnitsArgs;
use crate::units_io;

/// Sets the desired state of launched units to loaded and waits for
/// `loaded`. An inactive (non-global) unit cannot be stopped; loaded ones
/// are skipped; unknown names are ignored, and when no name is known it
/// says so and exits 0, as the original did.
pub async fn run<A: FleetApi>(args: &UnitsArgs, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    let units = match super::known_units(ctx, &args.units).await? {
        ControlFlow::Break(exit) => return Ok(exit),
        ControlFlow::Continue(units) => units,
    };
    let mut stopping = Vec::new();
    for u in &units {
        if !units_io::is_global(u) {
            match u.current_state {
                Some(TargetState::Inactive) | None => {
                    ctx.ui.warn(format!(
                        "Unable to stop unit {} in state {}",
                        u.name,
                        TargetState::Inactive
                    ));
                    return Ok(Exit::Failure);
                }
                Some(TargetState::Loaded) => {
                    tracing::debug!(unit = %u.name, "unit already loaded, skipping");
                    continue;
                }
                Some(TargetState::Launched) => {}
            }
        }
        stopping.push(u);
    }
    super::change_and_report(
        ctx,
        &stopping,
        TargetState::Loaded,
        ("stop", "stopping", "stopped"),
        args.block,
    )
    .await
}
