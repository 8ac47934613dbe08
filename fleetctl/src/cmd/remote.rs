//! Running a command on a unit's machine, for `status` and `journal`
//! (Go's `runCommand`): locally when that machine is this one (its ID equals
//! `/etc/machine-id`), otherwise over SSH to the machine's public IP,
//! through the tunnel when there is one. The command's exit status is
//! passed through.

use std::path::Path;

use anyhow::{Context, anyhow};
use fleetd::client::FleetApi;
use units::go_quote;

use super::{Ctx, Exit};
use crate::connect::Remote;
use crate::ssh::{ExitStatus, Session};

/// The file naming this machine.
const MACHINE_ID_FILE: &str = "/etc/machine-id";

/// Whether `id` is this machine's ID.
pub fn is_local_machine(id: &str, machine_id_file: &Path) -> bool {
    std::fs::read_to_string(machine_id_file).is_ok_and(|local| local.trim() == id && !id.is_empty())
}

/// `program "arg" "arg"`: the remote command line, each argument quoted as
/// Go's `%q`, as the original sent it.
pub fn command_line(program: &str, args: &[String]) -> String {
    let mut line = program.to_owned();
    for a in args {
        line.push(' ');
        line.push_str(&go_quote(a));
    }
    line
}

/// An SSH session to `host:port`, through the tunnel when there is one.
///
/// # Errors
///
/// The connection failing.
pub async fn connect(remote: &Remote, host: &str, port: u16) -> anyhow::Result<Session> {
    match &remote.tunnel {
        Some(tunnel) => tunnel.connect_via(&remote.ssh, host, port).await,
        None => Session::connect(&remote.ssh, host, port).await,
    }
}

/// Runs `program args` on machine `machine_id` and returns its exit status
/// as ours.
///
/// # Errors
///
/// The command cannot be started, or the machine cannot be reached.
pub async fn run_on_machine<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    machine_id: &str,
    ssh_port: u16,
    program: &str,
    args: &[String],
) -> anyhow::Result<Exit> {
    if is_local_machine(machine_id, Path::new(MACHINE_ID_FILE)) {
        let status = tokio::process::Command::new(program)
            .args(args)
            .status()
            .await
            .with_context(|| format!("Error running local command {program}"))?;
        return Ok(Exit::from_status(
            status
                .code()
                .map_or(255, |c| u32::try_from(c).unwrap_or(255)),
        ));
    }
    let ip = ctx
        .machines()
        .await
        .get(machine_id)
        .map(|m| m.primary_ip.clone())
        .filter(|ip| !ip.is_empty())
        .ok_or_else(|| anyhow!("Error getting machine IP: machine {machine_id} not found"))?;
    let session = connect(ctx.remote, &ip, ssh_port)
        .await
        .with_context(|| format!("Error running remote command on {ip}"))?;
    let ExitStatus(code) = session
        .run(Some(&command_line(program, args)))
        .await
        .context("Error running remote command")?;
    Ok(Exit::from_status(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_command_lines() {
        assert_eq!(
            command_line(
                "systemctl",
                &["status".into(), "-l".into(), "x.service".into()]
            ),
            r#"systemctl "status" "-l" "x.service""#
        );
        assert_eq!(command_line("true", &[]), "true");
    }

    #[test]
    fn local_machine() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("machine-id");
        std::fs::write(&file, "abc\n").unwrap();
        assert!(is_local_machine("abc", &file));
        assert!(!is_local_machine("abd", &file));
        assert!(!is_local_machine("", &file));
        assert!(!is_local_machine("abc", &dir.path().join("none")));
    }
}
