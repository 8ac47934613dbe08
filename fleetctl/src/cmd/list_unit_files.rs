//! `fleetctl list-unit-files`: the units in the registry.

use anyhow::Context;
use fleetd::client::FleetApi;

use super::{Ctx, Exit};
use crate::cli::{ListArgs, OutputFormat};
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
    let fields = match render::parse_fields(&args.fields, render::LIST_UNIT_FILES_FIELDS) {
        Ok(f) => f,
        Err(err) => {
            ctx.ui.warn(err.to_string());
            return Ok(Exit::Failure);
        }
    };
    if fields.contains(&"tmachine") {
        ctx.ui
            .warn(r#"WARNING: The "tmachine" field is deprecated. Use "target" instead"#);
    }
    let units = ctx
        .api
        .units()
        .await
        .context("Error retrieving list of units from repository")?;
    if args.list.output == OutputFormat::Json {
        return super::print_json(ctx.ui, &units);
    }
    let facts: Vec<_> = units.iter().map(units_io::facts).collect();
    let needs_machines = fields.iter().any(|f| matches!(*f, "target" | "tmachine"))
        && units.iter().any(|u| !u.machine_id.is_empty());
    let machines = if needs_machines {
        ctx.machines().await.clone()
    } else {
        MachineIndex::new()
    };
    let table = render::list_unit_files(
        &fields,
        &units,
        &facts,
        &machines,
        args.list.full,
        !args.list.no_legend,
    );
    ctx.ui.print(&table)?;
    Ok(Exit::Success)
}
