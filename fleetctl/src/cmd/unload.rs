//! `fleetctl unload UNIT...`: unschedule units.

use std::ops::ControlFlow;

use fleetd::client::FleetApi;
use fleetd::schema::TargetState;

use super::{Ctx, Exit};
use crate::cli::UnitsArgs;
use crate::units_io;

/// Sets the desired state to inactive and waits for `inactive`. Units
/// already inactive are skipped; unknown names are ignored, and when no
/// name is known it says so and exits 0, as the original did.
pub async fn run<A: FleetApi>(args: &UnitsArgs, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    let units = match super::known_units(ctx, &args.units).await? {
        ControlFlow::Break(exit) => return Ok(exit),
        ControlFlow::Continue(units) => units,
    };
    let unloading: Vec<_> = units
        .iter()
        .filter(|u| {
            let skip = !units_io::is_global(u)
                && matches!(u.current_state, Some(TargetState::Inactive) | None);
            if skip {
                tracing::debug!(unit = %u.name, "unit already inactive, skipping");
            }
            !skip
        })
        .collect();
    super::change_and_report(
        ctx,
        &unloading,
        TargetState::Inactive,
        ("unload", "unloading", "unloaded"),
        args.block,
    )
    .await
}
