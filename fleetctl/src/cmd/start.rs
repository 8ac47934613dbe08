//! `fleetctl start UNIT...`: start units, submitting and loading them first
//! if needed.

use anyhow::Context;
use fleetd::client::FleetApi;
use fleetd::schema::TargetState;

use super::{Budget, CreateFor, Ctx, Exit, wait};
use crate::cli::{BlockArgs, SubmitArgs};
use crate::units_io;

/// Instruct systemd to start one or more units in the cluster, first
/// submitting and loading if necessary.
///
/// For units which are not global, start operations are performed
/// synchronously: fleetctl blocks until the units are launched and systemd
/// reports them active. Start operations on global units are always
/// non-blocking.
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

/// Submits, sets the desired state to launched, waits for `launched` and
/// then for systemd's `active` (each wait with its own budget).
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    if let Some(exit) = super::require_units(ctx.ui, &args.units) {
        return Ok(exit);
    }
    let budget = Budget(args.block.block_attempts);
    super::create_units(
        ctx,
        &args.units,
        args.submit.replace,
        CreateFor::Start,
        budget,
    )
    .await
    .context("Error creating units")?;
    let names: Vec<String> = args.units.iter().map(|a| units_io::unit_name(a)).collect();
    let triggered = super::set_target_states(ctx, &names, TargetState::Launched)
        .await
        .context("Error starting units")?;
    let starting = super::split_global(ctx.ui, &triggered, "start")?;
    if !super::wait_or_trigger(ctx, &starting, "start", TargetState::Launched, args.block).await? {
        ctx.ui.warn("Error waiting for unit states, exit status: 1");
        return Ok(Exit::Failure);
    }
    if args.block.no_block {
        return Ok(Exit::Success);
    }
    let errors = wait::systemd_active(ctx, &starting, budget).await?;
    if !errors.is_empty() {
        for err in &errors {
            ctx.ui.warn(format!("Error waiting for units: {err}"));
        }
        ctx.ui
            .warn("Error waiting for systemd unit states, exit status: 1");
        return Ok(Exit::Failure);
    }
    Ok(Exit::Success)
}
