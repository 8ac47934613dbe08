//! `fleetctl start UNIT...`: start units, submitting and loading them first
//! if needed.

use std::ops::ControlFlow;

use fleetd::client::FleetApi;
use fleetd::schema::TargetState;

use super::{Budget, CreateFor, Ctx, Exit, wait};
use crate::cli::ScheduleArgs;

/// Submits, sets the desired state to launched, waits for `launched` and
/// then for systemd's `active` (each wait with its own budget).
pub async fn run<A: FleetApi>(args: &ScheduleArgs, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    let starting =
        match super::schedule(ctx, args, CreateFor::Start, TargetState::Launched, "start").await? {
            ControlFlow::Break(exit) => return Ok(exit),
            ControlFlow::Continue(names) => names,
        };
    if args.block.no_block {
        return Ok(Exit::Success);
    }
    wait_active(ctx, &starting, Budget(args.block.block_attempts)).await
}

/// Waits until systemd reports every unit active (all of them launched
/// already); reports the failures.
pub async fn wait_active<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    names: &[String],
    budget: Budget,
) -> anyhow::Result<Exit> {
    let n = names.len();
    let label = format!("{} {n}/{n}, active ", TargetState::Launched);
    let errors = wait::systemd_active(ctx, names, budget, &label).await?;
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
