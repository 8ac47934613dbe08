//! `fleetctl unload UNIT...`: unschedule units.

use anyhow::Context;
use fleetd::client::FleetApi;
use fleetd::schema::TargetState;

use super::{Ctx, Exit};
use crate::cli::BlockArgs;
use crate::units_io;

/// Unschedule one or more units in the cluster.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// --no-block and --block-attempts.
    #[command(flatten)]
    pub block: BlockArgs,
    /// Unit names (or files, whose names are used).
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// Sets the desired state to inactive and waits for `inactive`. Units
/// already inactive are skipped; unknown names are ignored.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    if let Some(exit) = super::require_units(ctx.ui, &args.units) {
        return Ok(exit);
    }
    let units = super::find_units(ctx, &args.units).await?;
    let mut waiting = Vec::new();
    for u in &units {
        let global = units_io::is_global(u);
        if !global && matches!(u.current_state, Some(TargetState::Inactive) | None) {
            tracing::debug!(unit = %u.name, "unit already inactive, skipping");
            continue;
        }
        tracing::debug!(unit = %u.name, "setting target state to inactive");
        ctx.api
            .set_unit_target_state(&u.name, TargetState::Inactive)
            .await
            .with_context(|| format!("Error unloading unit {}", u.name))?;
        if global {
            ctx.ui
                .say(format!("Triggered global unit {} unload", u.name))?;
        } else {
            waiting.push(u.name.clone());
        }
    }
    if super::wait_or_trigger(ctx, &waiting, "unload", TargetState::Inactive, args.block).await? {
        ctx.ui.warn(format!(
            "Successfully unloaded units {}.",
            super::go_list(&waiting)
        ));
        Ok(Exit::Success)
    } else {
        ctx.ui.warn(format!(
            "Failed to unload units {}. exit == 1.",
            super::go_list(&waiting)
        ));
        Ok(Exit::Failure)
    }
}
