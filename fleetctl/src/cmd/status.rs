//! `fleetctl status UNIT...`: `systemctl status` on each unit's machine.

use fleetd::client::FleetApi;
use fleetd::schema::TargetState;

use super::{Ctx, Exit, remote};
use crate::units_io;

/// Output the status of one or more units in the cluster.
///
/// Runs `systemctl status -l` for each unit on the machine it is scheduled
/// to, locally or over SSH (through --tunnel when given), and passes the
/// exit status through.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Connect to remote hosts over SSH using this TCP port.
    #[arg(long, default_value_t = 22)]
    pub ssh_port: u16,
    /// Unit names.
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// Runs `systemctl status -l <unit>` for each unit, a blank line between
/// them; stops at the first non-zero status.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    if args.units.is_empty() {
        ctx.ui.warn("One or more units must be provided");
        return Ok(Exit::Failure);
    }
    for (i, arg) in args.units.iter().enumerate() {
        let name = units_io::unit_name(arg);
        let Some(machine) = unit_machine(ctx, &name, "status").await? else {
            return Ok(Exit::Failure);
        };
        // A blank line between units, as between systemctl's own.
        if i != 0 {
            ctx.ui.say("")?;
        }
        let exit = remote::run_on_machine(
            ctx,
            &machine,
            args.ssh_port,
            "systemctl",
            &["status".into(), "-l".into(), name],
        )
        .await?;
        if exit != Exit::Success {
            return Ok(exit);
        }
    }
    Ok(Exit::Success)
}

/// The machine a unit runs on, or `None` after saying why there is none:
/// no such unit, a global unit (fixed: the original printed nothing and
/// exited 0), or a unit not loaded anywhere.
pub async fn unit_machine<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    name: &str,
    what: &str,
) -> anyhow::Result<Option<String>> {
    let unit = ctx
        .api
        .unit(name)
        .await
        .map_err(|e| anyhow::Error::new(e).context(format!("Error retrieving unit {name}")))?;
    let Some(unit) = unit else {
        ctx.ui.warn(format!("Unit {name} does not exist."));
        return Ok(None);
    };
    if units_io::is_global(&unit) {
        ctx.ui.warn(format!(
            "Unable to get {what} for global unit {name}. Check on a machine-by-machine basis."
        ));
        return Ok(None);
    }
    if matches!(unit.current_state, Some(TargetState::Inactive) | None)
        || unit.machine_id.is_empty()
    {
        ctx.ui
            .warn(format!("Unit {name} does not appear to be loaded."));
        return Ok(None);
    }
    Ok(Some(unit.machine_id))
}
