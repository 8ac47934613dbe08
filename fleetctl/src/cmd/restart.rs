//! `fleetctl restart UNIT...`: stop and start units again.

use fleetd::client::FleetApi;
use fleetd::schema::TargetState;

use super::{Budget, Ctx, Exit, start, wait};
use crate::units_io;

/// Instruct systemd to restart one or more units in the cluster.
///
/// A launched unit is stopped (its desired state set to loaded, waiting for
/// it) and started again; a loaded unit is started. fleetctl then waits until
/// systemd reports each unit active. Global units cannot be restarted this
/// way: restart them on each machine (`fleetctl ssh`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Wait until the units have reached their state, performing up to N
    /// attempts (of 2 seconds each) before giving up. A value of 0 indicates
    /// no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub block_attempts: u32,
    /// Unit names.
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// Restarts each unit in turn (the original's order), skipping inactive
/// ones with a message, then waits for systemd. Fixed from the original: the stop step waits for `loaded`, not
/// `launched`.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    if let Some(exit) = super::require_units(ctx.ui, &args.units) {
        return Ok(exit);
    }
    let budget = Budget(args.block_attempts);
    let units = super::find_units(ctx, &args.units).await?;
    let mut restarted = Vec::new();
    for u in &units {
        if units_io::is_global(u) {
            ctx.ui.warn(format!(
                "Unable to restart global unit {}: restart it on each machine",
                u.name
            ));
            return Ok(Exit::Failure);
        }
        let name = [u.name.clone()];
        match u.current_state {
            Some(TargetState::Launched) => {
                ctx.api
                    .set_unit_target_state(&u.name, TargetState::Loaded)
                    .await?;
                if !waited(ctx, &name, TargetState::Loaded, budget).await? {
                    return Ok(Exit::Failure);
                }
            }
            Some(TargetState::Loaded) => {
                tracing::debug!(unit = %u.name, "unit loaded, starting it");
            }
            Some(TargetState::Inactive) | None => {
                // As in the original, an inactive unit is reported and
                // skipped, and does not change the exit status.
                ctx.ui.warn(format!(
                    "Unable to restart unit {} in state {}",
                    u.name,
                    TargetState::Inactive
                ));
                continue;
            }
        }
        ctx.api
            .set_unit_target_state(&u.name, TargetState::Launched)
            .await?;
        if !waited(ctx, &name, TargetState::Launched, budget).await? {
            return Ok(Exit::Failure);
        }
        restarted.push(u.name.clone());
    }
    let exit = start::wait_active(ctx, &restarted, budget).await?;
    if exit == Exit::Success && !restarted.is_empty() {
        ctx.ui.warn(format!(
            "Successfully restarted units {}.",
            super::go_list(&restarted)
        ));
    }
    Ok(exit)
}

/// Waits for `state`, reporting a timeout; whether the units made it.
async fn waited<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    names: &[String],
    state: TargetState,
    budget: Budget,
) -> anyhow::Result<bool> {
    let errors = wait::unit_states(ctx, names, state, budget).await?;
    for err in &errors {
        ctx.ui.warn(format!("Error waiting for units: {err}"));
    }
    Ok(errors.is_empty())
}
