//! `fleetctl unload UNIT...`: unschedule units.

use fleetd::client::FleetApi;
use fleetd::schema::TargetState;

use super::{Ctx, Exit};
use crate::cli::UnitsArgs;
use crate::units_io;

/// Sets the desired state to inactive and waits for `inactive`. Units
/// already inactive are skipped; unknown names are ignored, and when no
/// name is known it says so and exits 0, as the original did.
pub async fn run<A: FleetApi>(args: &UnitsArgs, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    if let Some(exit) = super::require_units(ctx.ui, &args.units) {
        return Ok(exit);
    }
    let units = super::find_units(ctx, &args.units).await?;
    if units.is_empty() {
        ctx.ui.warn("Units not found in registry");
        return Ok(Exit::Success);
    }
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
