//! `fleetctl load UNIT...`: schedule units, submitting them first if needed.

use anyhow::Context;
use fleetd::client::FleetApi;
use fleetd::schema::TargetState;

use super::{Budget, CreateFor, Ctx, Exit};
use crate::cli::{BlockArgs, SubmitArgs};
use crate::units_io;

/// Schedule one or more units in the cluster, first submitting them if
/// necessary.
///
/// For units which are not global, load operations are performed
/// synchronously: fleetctl blocks until the units are loaded. Load
/// operations on global units are always non-blocking.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// --no-block and --block-attempts.
    #[command(flatten)]
    pub block: BlockArgs,
    /// --replace and --sign.
    #[command(flatten)]
    pub submit: SubmitArgs,
    /// Unit files or names.
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// Submits, sets the desired state to loaded and waits for `loaded`.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    if let Some(exit) = super::require_units(ctx.ui, &args.units) {
        return Ok(exit);
    }
    super::create_units(
        ctx,
        &args.units,
        args.submit.replace,
        CreateFor::Load,
        Budget(args.block.block_attempts),
    )
    .await
    .context("Error creating units")?;
    let names: Vec<String> = args.units.iter().map(|a| units_io::unit_name(a)).collect();
    let triggered = super::set_target_states(ctx, &names, TargetState::Loaded)
        .await
        .context("Error loading units")?;
    let loading = super::split_global(ctx.ui, &triggered, "load")?;
    if !super::wait_or_trigger(ctx, &loading, "load", TargetState::Loaded, args.block).await? {
        ctx.ui.warn("Error waiting for unit states, exit status: 1");
        return Ok(Exit::Failure);
    }
    Ok(Exit::Success)
}
