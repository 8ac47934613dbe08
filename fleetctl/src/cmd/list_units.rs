//! `fleetctl list-units`: the systemd state of units on their machines.

use anyhow::Context;
use fleetd::client::FleetApi;

use super::{Ctx, Exit};
use crate::cli::{ListArgs, OutputFormat};
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
    let fields = match render::parse_fields(&args.fields, render::LIST_UNITS_FIELDS) {
        Ok(f) => f,
        Err(err) => {
            ctx.ui.warn(err.to_string());
            return Ok(Exit::Failure);
        }
    };
    let states = ctx
        .api
        .unit_states()
        .await
        .context("Error retrieving list of units from repository")?;
    if args.list.output == OutputFormat::Json {
        return super::print_json(ctx.ui, &states);
    }
    let needs_machines =
        fields.contains(&"machine") && states.iter().any(|s| !s.machine_id.is_empty());
    let machines = if needs_machines {
        ctx.machines().await.clone()
    } else {
        MachineIndex::new()
    };
    let table = render::list_units(
        &fields,
        &states,
        &machines,
        args.list.full,
        !args.list.no_legend,
    );
    ctx.ui.print(&table)?;
    Ok(Exit::Success)
}
