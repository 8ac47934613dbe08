//! `fleetctl list-units`: the systemd state of units on their machines.

use anyhow::Context;
use fleetd::client::FleetApi;
use fleetd::schema::UnitState;

use super::{Ctx, Exit, Table};
use crate::cli::ListArgs;
use crate::render::{self, MachineIndex};

/// List the current state of units in the cluster.
///
/// Lists the state of all units in the cluster loaded onto a machine, one
/// row per unit and machine.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// --full and --no-legend.
    #[command(flatten)]
    pub list: ListArgs,
    /// Columns to print for each Unit. Valid fields are
    /// "active,hash,load,machine,sub,unit"
    #[arg(long, default_value = render::LIST_UNITS_DEFAULT)]
    pub fields: String,
}

/// Prints the table from `GET /state`.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    let valid = render::LIST_UNITS_FIELDS;
    super::listing(ctx, &args.list, &args.fields, valid, fetch, draw).await
}

/// `GET /state`.
async fn fetch<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    _: &[&str],
) -> anyhow::Result<Result<Vec<UnitState>, Exit>> {
    let states = ctx.api.unit_states().await;
    Ok(Ok(states.context(super::UNITS_ERROR)?))
}

/// The table, with machine legends if a column shows them.
async fn draw<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    table: &Table<'_>,
    states: &[UnitState],
) -> String {
    let needs_machines =
        table.fields.contains(&"machine") && states.iter().any(|s| !s.machine_id.is_empty());
    let machines = if needs_machines {
        ctx.machines().await.clone()
    } else {
        MachineIndex::new()
    };
    render::list_units(&table.fields, states, &machines, table.full, table.legend)
}
