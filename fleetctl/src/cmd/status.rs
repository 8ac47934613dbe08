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
/// them; stops at the first non-zero status. With no units there is
/// nothing to do and it exits 0 silently, as the original did.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    for (i, arg) in args.units.iter().enumerate() {
        let name = units_io::unit_name(arg);
        let Some(machine) = unit_machine(ctx, &name, Purpose::Status).await? else {
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

/// Which command looks a unit's machine up; the original worded its
/// refusals differently for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `fleetctl status`.
    Status,
    /// `fleetctl journal`.
    Journal,
}

impl Purpose {
    /// The message for a unit that cannot be looked up.
    fn retrieve_error(self, name: &str) -> String {
        match self {
            Purpose::Status => "Error retrieving unit".to_owned(),
            Purpose::Journal => format!("Error retrieving unit {name}"),
        }
    }

    /// The refusal of a global unit.
    fn global(self, name: &str) -> String {
        match self {
            Purpose::Status => format!("Unable to determine status of global unit {name}."),
            Purpose::Journal => format!("Unable to retrieve journal of global unit {name}."),
        }
    }

    /// The refusal of a unit that is not scheduled anywhere.
    fn inactive(self, name: &str) -> String {
        match self {
            Purpose::Status => format!("Unit {name} does not appear to be loaded."),
            Purpose::Journal => format!("Unit {name} does not appear to be running."),
        }
    }
}

/// The machine a unit runs on, or `None` after saying why there is none:
/// no such unit, a global unit (fixed for status: the original printed
/// nothing and exited 0), or a unit not loaded anywhere.
pub async fn unit_machine<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    name: &str,
    purpose: Purpose,
) -> anyhow::Result<Option<String>> {
    let unit = ctx
        .api
        .unit(name)
        .await
        .map_err(|e| anyhow::Error::new(e).context(purpose.retrieve_error(name)))?;
    let Some(unit) = unit else {
        ctx.ui.warn(format!("Unit {name} does not exist."));
        return Ok(None);
    };
    if units_io::is_global(&unit) {
        ctx.ui.warn(purpose.global(name));
        return Ok(None);
    }
    if matches!(unit.current_state, Some(TargetState::Inactive) | None)
        || unit.machine_id.is_empty()
    {
        ctx.ui.warn(purpose.inactive(name));
        return Ok(None);
    }
    Ok(Some(unit.machine_id))
}
