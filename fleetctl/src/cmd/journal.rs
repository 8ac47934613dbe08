//! `fleetctl journal UNIT`: the unit's journal on its machine.

use fleetd::client::FleetApi;

use super::{Ctx, Exit, remote, status};
use crate::cli::GoFlag as _;
use crate::units_io;

/// Print the journal of a unit in the cluster to stdout.
///
/// Runs `journalctl` on the machine the unit is scheduled to, locally or
/// over SSH (through --tunnel when given).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of recent log lines to return.
    #[arg(long, default_value_t = 10)]
    pub lines: u32,
    /// Continuously print new entries as they are appended to the journal.
    #[arg(long, short = 'f', alias = "f", go_flag = false)]
    pub follow: bool,
    /// Output mode. This will be passed unaltered to journalctl on the remote
    /// host, and hence supports the same modes.
    #[arg(long, default_value = "short")]
    pub output: String,
    /// Execute journal command with sudo.
    #[arg(long, go_flag = false)]
    pub sudo: bool,
    /// Connect to remote hosts over SSH using this TCP port.
    #[arg(long, default_value_t = 22)]
    pub ssh_port: u16,
    /// The unit (exactly one).
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// The journalctl command line, as the original built it: `[sudo]
/// journalctl --unit <u> --no-pager -n <lines> --output <mode> [-f]`. A
/// plain `sudo` (no `-n`) may ask for a password: when stdin is a terminal
/// the remote command runs on a PTY (see [`crate::ssh::Session::run`]), so
/// the prompt reaches the user.
pub fn journal_command(args: &Args, name: &str) -> (String, Vec<String>) {
    let mut cmd: Vec<String> = vec![
        "journalctl".into(),
        "--unit".into(),
        name.into(),
        "--no-pager".into(),
        "-n".into(),
        args.lines.to_string(),
        "--output".into(),
        args.output.clone(),
    ];
    if args.sudo {
        cmd.insert(0, "sudo".to_owned());
    }
    if args.follow {
        cmd.push("-f".into());
    }
    let program = cmd.remove(0);
    (program, cmd)
}

/// Runs journalctl for the unit on its machine.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    let [arg] = args.units.as_slice() else {
        ctx.ui.warn("One unit file must be provided.");
        return Ok(Exit::Failure);
    };
    let name = units_io::unit_name(arg);
    let Some(machine) = status::unit_machine(ctx, &name, status::Purpose::Journal).await? else {
        return Ok(Exit::Failure);
    };
    let (program, cmd_args) = journal_command(args, &name);
    remote::run_on_machine(ctx, &machine, args.ssh_port, &program, &cmd_args).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Args {
        match Cli::try_parse_from(std::iter::once("fleetctl").chain(args.iter().copied()))
            .unwrap()
            .command
        {
            Some(Command::Journal(a)) => a,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn command_lines() {
        let a = parse(&["journal", "x"]);
        let (p, rest) = journal_command(&a, "x.service");
        assert_eq!(p, "journalctl");
        assert_eq!(
            rest,
            [
                "--unit",
                "x.service",
                "--no-pager",
                "-n",
                "10",
                "--output",
                "short"
            ]
        );
        let a = parse(&["journal", "--sudo", "--lines=3", "-f", "--output=cat", "x"]);
        let (p, rest) = journal_command(&a, "x.service");
        assert_eq!(p, "sudo");
        assert_eq!(
            rest,
            [
                "journalctl",
                "--unit",
                "x.service",
                "--no-pager",
                "-n",
                "3",
                "--output",
                "cat",
                "-f"
            ]
        );
        assert!(parse(&["journal", "--f", "x"]).follow);
    }
}
