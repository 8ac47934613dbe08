//! `fleetctl list-unit-files`: the units in the registry.

use anyhow::Context;
use fleetd::client::FleetApi;
use fleetd::schema::Unit;

use super::{Ctx, Exit, Table};
use crate::cli::ListArgs;
use crate::render::{self, MachineIndex};
use crate::units_io;

/// List the units that exist in the cluster.
///
/// Lists all unit files that exist in the cluster (whether or not they are
/// loaded onto a machine).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// --full and --no-legend.
    #[command(flatten)]
    pub list: ListArgs,
    /// Columns to print for each Unit file. Valid fields are
    /// "desc,dstate,global,hash,state,target,tmachine,unit"
    #[arg(long, default_value = render::LIST_UNIT_FILES_DEFAULT)]
    pub fields: String,
}

/// Prints the table from `GET /units`.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    let valid = render::LIST_UNIT_FILES_FIELDS;
    super::listing(ctx, &args.list, &args.fields, valid, fetch, draw).await
}

/// `GET /units`, after a warning about a deprecated column.
async fn fetch<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    fields: &[&str],
) -> anyhow::Result<Result<Vec<Unit>, Exit>> {
    if fields.contains(&"tmachine") {
        ctx.ui
            .warn(r#"WARNING: The "tmachine" field is deprecated. Use "target" instead"#);
    }
    let units = ctx.api.units().await;
    Ok(Ok(units.context(super::UNITS_ERROR)?))
}

/// The table, with machine legends if a column shows them.
async fn draw<A: FleetApi>(ctx: &mut Ctx<'_, A>, table: &Table<'_>, units: &[Unit]) -> String {
    let facts: Vec<_> = units.iter().map(units_io::facts).collect();
    let needs_machines = table
        .fields
        .iter()
        .any(|f| matches!(*f, "target" | "tmachine"))
        && units.iter().any(|u| !u.machine_id.is_empty());
    let machines = if needs_machines {
        ctx.machines().await.clone()
    } else {
        MachineIndex::new()
    };
    render::list_unit_files(
        &table.fields,
        units,
        &facts,
        &machines,
        table.full,
        table.legend,
    )
}
