//! `fleetctl list-machines`: the live machines of the cluster.

use fleetd::client::FleetApi;

use super::{Ctx, Exit};
use crate::cli::{ListArgs, OutputFormat};
use crate::render;

/// Enumerate the current hosts in the cluster.
///
/// Lists all active machines within the cluster. Previously active machines
/// will not appear in this list.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// --full and --no-legend.
    #[command(flatten)]
    pub list: ListArgs,
    /// Columns to print for each Machine. Valid fields are
    /// "ip,machine,metadata"
    #[arg(long, default_value = render::LIST_MACHINES_DEFAULT)]
    pub fields: String,
}

/// Prints the table from `GET /machines`.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    let fields = match render::parse_fields(&args.fields, render::LIST_MACHINES_FIELDS) {
        Ok(f) => f,
        Err(err) => {
            ctx.ui.warn(err.to_string());
            return Ok(Exit::Failure);
        }
    };
    let machines = match ctx.api.machines().await {
        Ok(m) => m,
        Err(err) => {
            // The original's wording, hints included.
            let err = anyhow::Error::new(err);
            ctx.ui.warn(format!(
                "Error retrieving list of active machines from fleet API ({err:#})"
            ));
            ctx.ui.warn("Possible issues:");
            ctx.ui.warn("  etcd is unhealthy and/or lost quorum");
            ctx.ui
                .warn("  connection cannot be established to any etcd servers");
            return Ok(Exit::Failure);
        }
    };
    if args.list.output == OutputFormat::Json {
        return super::print_json(ctx.ui, &machines);
    }
    let table = render::list_machines(&fields, &machines, args.list.full, !args.list.no_legend);
    ctx.ui.print(&table)?;
    Ok(Exit::Success)
}
