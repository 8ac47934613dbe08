//! `fleetctl list-machines`: the live machines of the cluster.

use fleetd::client::FleetApi;
use fleetd::schema::Machine;

use super::{Ctx, Exit, Table};
use crate::cli::ListArgs;
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
    let valid = render::LIST_MACHINES_FIELDS;
    super::listing(ctx, &args.list, &args.fields, valid, fetch, draw).await
}

/// `GET /machines`; a failure is reported in the original's words, hints
/// included, and fails the command.
async fn fetch<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    _: &[&str],
) -> anyhow::Result<Result<Vec<Machine>, Exit>> {
    match ctx.api.machines().await {
        Ok(machines) => Ok(Ok(machines)),
        Err(err) => {
            let err = anyhow::Error::new(err);
            ctx.ui.warn(format!(
                "Error retrieving list of active machines from fleet API ({err:#})"
            ));
            ctx.ui.warn("Possible issues:");
            ctx.ui.warn("  etcd is unhealthy and/or lost quorum");
            ctx.ui
                .warn("  connection cannot be established to any etcd servers");
            Ok(Err(Exit::Failure))
        }
    }
}

/// The table (no request needed).
async fn draw<A: FleetApi>(_: &mut Ctx<'_, A>, table: &Table<'_>, machines: &[Machine]) -> String {
    render::list_machines(&table.fields, machines, table.full, table.legend)
}
