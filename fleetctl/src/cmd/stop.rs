//! `fleetctl stop UNIT...`: stop units, leaving them loaded.

use anyhow::Context;
use fleetd::client::FleetApi;
use fleetd::schema::TargetState;

use super::{Ctx, Exit};
use crate::cli::BlockArgs;
use crate::units_io;

/// Instruct systemd to stop one or more units in the cluster.
///
/// Stop one or more units from running in the cluster, but allow them to
/// be started again in the future. For units which are not global, stop
/// operations are performed synchronously. Stop operations on global units
/// are always non-blocking.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// --no-block and --block-attempts.
    #[command(flatten)]
    pub block: BlockArgs,
    /// Unit names (or files, whose names are used).
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// Sets the desired state of launched units to loaded and waits for
/// `loaded`. An inactive (non-global) unit cannot be stopped; loaded ones
/// are skipped; unknown names are ignored.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    if let Some(exit) = super::require_units(ctx.ui, &args.units) {
        return Ok(exit);
    }
    let units = super::find_units(ctx, &args.units).await?;
    let mut stopping = Vec::new();
    for u in &units {
        let global = units_io::is_global(u);
        if !global {
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
        tracing::debug!(unit = %u.name, "setting target state to loaded");
        ctx.api
            .set_unit_target_state(&u.name, TargetState::Loaded)
            .await
            .with_context(|| format!("Error stopping unit {}", u.name))?;
        if global {
            ctx.ui
                .say(format!("Triggered global unit {} stop", u.name))?;
        } else {
            stopping.push(u.name.clone());
        }
    }
    if super::wait_or_trigger(ctx, &stopping, "stop", TargetState::Loaded, args.block).await? {
        ctx.ui.warn(format!(
            "Successfully stopped units {}.",
            super::go_list(&stopping)
        ));
        Ok(Exit::Success)
    } else {
        ctx.ui.warn(format!(
            "Failed to stop units {}. exit == 1.",
            super::go_list(&stopping)
        ));
        Ok(Exit::Failure)
    }
}
