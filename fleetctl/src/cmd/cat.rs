//! `fleetctl cat UNIT`: print a unit's contents.

use fleetd::client::FleetApi;

use super::{Ctx, Exit};
use crate::units_io;

/// Output the contents of a submitted unit.
///
/// Outputs the unit file that is currently loaded in the cluster, in its
/// canonical form (comments dropped, options grouped by section). Useful to
/// verify the correct version of a unit is running.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The unit (exactly one).
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// Prints the canonical text, with no extra newline.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    let [arg] = args.units.as_slice() else {
        ctx.ui.warn("One unit file must be provided");
        return Ok(Exit::Failure);
    };
    let name = units_io::unit_name(arg);
    let unit = match ctx.api.unit(&name).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            ctx.ui.warn(format!("Unit {name} not found"));
            return Ok(Exit::Failure);
        }
        Err(err) => {
            return Err(anyhow::Error::new(err).context(format!("Error retrieving Unit {name}")));
        }
    };
    ctx.ui.print(&units_io::file_of(&unit).canonical())?;
    Ok(Exit::Success)
}
