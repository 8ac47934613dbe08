//! `fleetctl ssh {MACHINE|UNIT} [COMMAND...]`: a shell or a command on a
//! machine of the cluster, found by machine-ID prefix or by unit.

use anyhow::{anyhow, bail};
use fleetd::client::FleetApi;

use super::{Ctx, Exit, remote};
use crate::cli::go_bool;
use crate::ssh::ExitStatus;
use crate::units_io;

/// Open interactive shell on a machine in the cluster.
///
/// Open an interactive shell on a specific machine in the cluster, or on the
/// machine where the specified unit is located. The machine may be given by
/// a unique prefix of its ID. With a command, run it there instead (its
/// arguments joined by spaces) and exit with its status.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Open SSH connection to the machine with this ID (prefix).
    #[arg(long)]
    pub machine: Option<String>,
    /// Open SSH connection to the machine hosting this unit.
    #[arg(long)]
    pub unit: Option<String>,
    /// Forward local ssh-agent to target machine.
    #[arg(
        long, short = 'A', alias = "A", value_name = "BOOL", num_args = 0..=1,
        require_equals = true, default_value = "false", default_missing_value = "true",
        value_parser = go_bool, hide_default_value = true
    )]
    pub forward_agent: bool,
    /// Connect to remote hosts over SSH using this TCP port.
    #[arg(long, default_value_t = 22)]
    pub ssh_port: u16,
    /// The machine or unit (unless --machine or --unit), then the command.
    #[arg(
        value_name = "MACHINE|UNIT] [COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

/// Finds the machine's address, connects and runs the command or a shell.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    let mut rest = args.args.clone();
    // The original's lookups: an error is "Unable to proceed: <why>", and a
    // match without an address "Could not determine address of machine.".
    let found = match (&args.machine, &args.unit) {
        (Some(_), Some(_)) => {
            ctx.ui
                .warn("Both machine and unit flags provided, please specify only one.");
            return Ok(Exit::Failure);
        }
        (Some(m), None) => machine_address(ctx, m).await,
        (None, Some(u)) => unit_address(ctx, u).await.map(Option::unwrap_or_default),
        (None, None) if rest.is_empty() => Err(anyhow!("one machine or unit must be provided")),
        (None, None) => {
            let target = rest.remove(0);
            lookup(ctx, &target).await
        }
    };
    let addr = match found {
        Ok(addr) if addr.is_empty() => {
            ctx.ui.warn("Could not determine address of machine.");
            return Ok(Exit::Failure);
        }
        Ok(addr) => addr,
        Err(err) => {
            ctx.ui.warn(format!("Unable to proceed: {err:#}"));
            return Ok(Exit::Failure);
        }
    };
    // `fleetctl ssh m -- ls -l`: what follows `--` is the command.
    if let Some(i) = rest.iter().position(|a| a == "--") {
        rest.drain(..=i);
    }
    let mut remote = ctx.remote.clone();
    remote.ssh.forward_agent = args.forward_agent;
    let session = remote::connect(&remote, &addr, args.ssh_port).await?;
    let command = (!rest.is_empty()).then(|| rest.join(" "));
    let ExitStatus(code) = session.run(command.as_deref()).await?;
    Ok(Exit::from_status(code))
}

/// Looks `target` up as a machine-ID prefix and as a unit, ignoring why
/// either lookup failed; both matching is ambiguous.
async fn lookup<A: FleetApi>(ctx: &mut Ctx<'_, A>, target: &str) -> anyhow::Result<String> {
    let machine = machine_address(ctx, target).await.ok();
    let unit = unit_address(ctx, target).await.ok().flatten();
    match (machine, unit) {
        (Some(_), Some(_)) => bail!(
            "ambiguous argument, both machine and unit found for `{target}`.\n\
             Please use flag `-m` or `-u` to refine the search"
        ),
        (Some(addr), None) | (None, Some(addr)) => Ok(addr),
        (None, None) => bail!("could not find matching unit or machine"),
    }
}

/// The public IP (empty when it has none) of the one machine whose ID
/// starts with `prefix`.
async fn machine_address<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    prefix: &str,
) -> anyhow::Result<String> {
    let machines = ctx.machines().await;
    let mut matching = machines.values().filter(|m| m.id.starts_with(prefix));
    let Some(first) = matching.next() else {
        bail!("machine does not exist");
    };
    if matching.next().is_some() {
        bail!("found more than one machine");
    }
    Ok(first.primary_ip.clone())
}

/// The public IP of the machine a unit is scheduled to; `None` when it is
/// not scheduled or its machine has no IP.
async fn unit_address<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let name = units_io::unit_name(name);
    let Some(unit) = ctx.api.unit(&name).await? else {
        bail!("unit does not exist");
    };
    if units_io::is_global(&unit) {
        return Err(anyhow!("global units unsupported"));
    }
    if unit.machine_id.is_empty() {
        return Ok(None);
    }
    let id = unit.machine_id;
    Ok(ctx
        .machines()
        .await
        .get(&id)
        .map(|m| m.primary_ip.clone())
        .filter(|ip| !ip.is_empty()))
}
