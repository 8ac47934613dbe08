//! `fleetctl destroy UNIT...`: remove units from the cluster.

use std::ops::ControlFlow;

use fleetd::client::{FleetApi, Refusal};
use fleetd::schema::Unit;

use super::{Budget, Ctx, Exit, wait};
use crate::cli::BlockArgs;

/// Destroy one or more units in the cluster.
///
/// Completely remove one or more running or submitted units from the
/// cluster. fleet stops and unloads them first. Destroyed units are
/// impossible to start unless re-submitted.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// --no-block and --block-attempts.
    #[command(flatten)]
    pub block: BlockArgs,
    /// Unit names (or files, whose names are used).
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// Deletes each unit and, unless `--no-block`, waits until it is gone,
/// printing `Destroyed <name>`. Units that do not exist are ignored.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    let units = match super::known_units(ctx, &args.units).await? {
        ControlFlow::Break(exit) => return Ok(exit),
        ControlFlow::Continue(units) => units,
    };
    // The DELETEs go out together; their results are taken in order.
    let api = ctx.api;
    let delete = async |u: &Unit| api.destroy_unit(&u.name).await;
    let mut deleted = Vec::with_capacity(units.len());
    let limit = super::in_flight(units.iter().map(|u| u.name.as_str()));
    super::in_order(&units, limit, delete, |result| {
        deleted.push(result);
        Ok(())
    })
    .await?;
    let mut exit = Exit::Success;
    for (u, result) in units.iter().zip(deleted) {
        match result {
            Ok(()) => {}
            // Gone already (destroyed concurrently, or named twice).
            Err(err) if err.refusal() == Some(Refusal::NotFound) => continue,
            Err(err) => {
                ctx.ui.warn(format!("Error destroying units: {err}"));
                exit = Exit::Failure;
                continue;
            }
        }
        if !args.block.no_block {
            let errors = wait::destroyed(ctx, &u.name, Budget(args.block.block_attempts)).await?;
            if let Some(err) = errors.first() {
                ctx.ui.warn(format!("Error destroying units: {err}"));
                exit = Exit::Failure;
                continue;
            }
        }
        ctx.ui.say(format!("Destroyed {}", u.name))?;
    }
    Ok(exit)
}
