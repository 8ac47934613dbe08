//! The command line: global flags (§8.1 of the reference) and one argument
//! struct per command, declared with clap's derive API.
//!
//! Compatibility with the original (Go, cobra/pflag):
//! - Every global flag falls back to `FLEETCTL_<FLAG>` (upper case, `-` →
//!   `_`) when it is not on the command line; an empty variable counts as
//!   unset. Global flags may come before or after the command.
//! - Boolean flags take Go's forms: `--debug`, `--debug=true`,
//!   `--strict-host-key-checking=false` (and `1`, `t`, `F`, `FALSE`, ...).
//! - The one-letter long flags `--l` and `--h` exist; `-l` and `-h` work too
//!   (the original rejected `-l`).
//! - Unambiguous command prefixes work (`fleetctl list-m`).
//! - Deliberate difference: a flag error exits 2 with clap's message; the
//!   original printed the usage and exited 0.

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::cmd;

/// Default API endpoint.
pub const DEFAULT_ENDPOINT: &str = fleetd::client::http::DEFAULT_ENDPOINT;

/// The help page: the original's sections (name, usage, version, commands,
/// options).
const HELP_TEMPLATE: &str = "\
NAME:
\t{name} - {about}

USAGE:
\t{usage}

VERSION:
\t{version}

{all-args}{after-help}";

/// fleetctl's command line.
#[derive(Debug, Parser)]
#[command(
    name = "fleetctl",
    version = fleetd::VERSION,
    about = "fleetctl is a command-line interface to fleet, the cluster-wide CoreOS init system.",
    help_template = HELP_TEMPLATE,
    disable_help_flag = true,
    disable_version_flag = true,
    infer_subcommands = true,
    subcommand_value_name = "COMMAND",
    subcommand_help_heading = "COMMANDS",
    next_help_heading = "GLOBAL OPTIONS"
)]
pub struct Cli {
    /// Global flags.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command; none prints the help.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Parses a Go boolean (`strconv.ParseBool`): `1 t T TRUE true True` and
/// `0 f F FALSE false False`.
pub fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean value {s:?}")),
    }
}

/// A Go-style boolean flag, as the original's `flag` package reads one:
/// `--x` alone is true, `--x=BOOL` takes Go's spellings ([`go_bool`]), and a
/// following word is never taken as its value. Written in a derive as
/// `#[arg(long, go_flag = DEFAULT)]`; a `false` default is not shown in the
/// help, a `true` one is.
pub trait GoFlag {
    /// Makes this argument a Go-style boolean flag defaulting to `default`.
    #[must_use]
    fn go_flag(self, default: bool) -> Self;
}

impl GoFlag for clap::Arg {
    fn go_flag(self, default: bool) -> Self {
        self.value_name("BOOL")
            .num_args(0..=1)
            .require_equals(true)
            .default_value(if default { "true" } else { "false" })
            .default_missing_value("true")
            .value_parser(go_bool)
            .action(ArgAction::Set)
            .hide_default_value(!default)
    }
}

/// Parses a duration in seconds (a non-negative decimal number).
pub fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("invalid number of seconds {s:?}")),
    }
}

/// Flags that apply to every command. They are all accepted; the ones for
/// SSH, TLS and the etcd driver are not used yet.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Location of the fleet API if --driver=API. Alternatively, if
    /// --driver=etcd, location of the etcd API.
    #[arg(long, global = true, env = "FLEETCTL_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_name = "URL")]
    pub endpoint: String,

    /// Adapter used to execute fleetctl commands. Options include "API" and
    /// "etcd".
    #[arg(long, global = true, env = "FLEETCTL_DRIVER", default_value = "API")]
    pub driver: String,

    /// Establish an SSH tunnel through the provided address for
    /// communication with fleet and etcd.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_TUNNEL",
        default_value = "",
        hide_default_value = true
    )]
    pub tunnel: String,

    /// Username to use when connecting to CoreOS instance.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_SSH_USERNAME",
        default_value = "core"
    )]
    pub ssh_username: String,

    /// Amount of time in seconds to allow for SSH connection initialization
    /// before failing.
    #[arg(long, global = true, env = "FLEETCTL_SSH_TIMEOUT", default_value = "10.0", value_parser = seconds)]
    pub ssh_timeout: f64,

    /// Amount of time in seconds to allow a single request before
    /// considering it failed (0: no limit).
    #[arg(long, global = true, env = "FLEETCTL_REQUEST_TIMEOUT", default_value = "3.0", value_parser = seconds)]
    pub request_timeout: f64,

    /// Verify host keys presented by remote machines before initiating SSH
    /// connections.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_STRICT_HOST_KEY_CHECKING",
        go_flag = true
    )]
    pub strict_host_key_checking: bool,

    /// File used to store remote machine fingerprints. Ignored if strict
    /// host key checking is disabled.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_KNOWN_HOSTS_FILE",
        default_value = "~/.fleetctl/known_hosts",
        value_name = "FILE"
    )]
    pub known_hosts_file: String,

    /// Keyspace for fleet data in etcd (development use only!)
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_ETCD_KEY_PREFIX",
        default_value = "/_coreos.com/fleet/"
    )]
    pub etcd_key_prefix: String,

    /// Location of TLS CA file used to secure communication with the fleet
    /// API or etcd.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_CA_FILE",
        default_value = "",
        hide_default_value = true,
        alias = "etcd-cafile",
        value_name = "FILE"
    )]
    pub ca_file: String,

    /// Location of TLS cert file used to secure communication with the
    /// fleet API or etcd.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_CERT_FILE",
        default_value = "",
        hide_default_value = true,
        alias = "etcd-certfile",
        value_name = "FILE"
    )]
    pub cert_file: String,

    /// Location of TLS key file used to secure communication with the fleet
    /// API or etcd.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_KEY_FILE",
        default_value = "",
        hide_default_value = true,
        alias = "etcd-keyfile",
        value_name = "FILE"
    )]
    pub key_file: String,

    /// DEPRECATED: do not use this flag.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_EXPERIMENTAL_API",
        hide = true,
        go_flag = true
    )]
    pub experimental_api: bool,

    /// Print out more debug information to stderr.
    #[arg(long, global = true, env = "FLEETCTL_DEBUG", go_flag = false)]
    pub debug: bool,

    /// Print the version and exit.
    #[arg(long, global = true, env = "FLEETCTL_VERSION", go_flag = false)]
    pub version: bool,

    /// The fleetctl to run on the --tunnel host for `fd-forward` (it must
    /// be on that host's PATH under this name, or be a full path).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_REMOTE_FLEETCTL",
        default_value = "fleetctl",
        hide = true
    )]
    pub remote_fleetctl: String,

    /// Print usage information and exit.
    #[arg(short = 'h', long = "help", alias = "h", global = true, action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// The commands. Each one's help is the doc comment of its `Args`, or of
/// the variant where two commands share their arguments.
#[derive(Debug, Subcommand)]
pub enum Command {
    Cat(cmd::cat::Args),
    /// Generate shell completions (bash, zsh, fish, elvish, powershell)
    Completion(cmd::completion::Args),
    Destroy(cmd::destroy::Args),
    #[command(hide = true)]
    FdForward(cmd::fd_forward::Args),
    Journal(cmd::journal::Args),
    ListMachines(cmd::list_machines::Args),
    ListUnitFiles(cmd::list_unit_files::Args),
    ListUnits(cmd::list_units::Args),
    /// Schedule one or more units in the cluster, first submitting them if
    /// necessary.
    ///
    /// For units which are not global, load operations are performed
    /// synchronously: fleetctl blocks until the units are loaded. Load
    /// operations on global units are always non-blocking.
    Load(ScheduleArgs),
    Restart(cmd::restart::Args),
    Ssh(cmd::ssh::Args),
    /// Instruct systemd to start one or more units in the cluster, first
    /// submitting and loading if necessary.
    ///
    /// For units which are not global, start operations are performed
    /// synchronously: fleetctl blocks until the units are launched and
    /// systemd reports them active. Start operations on global units are
    /// always non-blocking.
    Start(ScheduleArgs),
    Status(cmd::status::Args),
    /// Instruct systemd to stop one or more units in the cluster.
    ///
    /// Stop one or more units from running in the cluster, but allow them
    /// to be started again in the future. For units which are not global,
    /// stop operations are performed synchronously. Stop operations on
    /// global units are always non-blocking.
    Stop(UnitsArgs),
    Submit(cmd::submit::Args),
    /// Unschedule one or more units in the cluster.
    Unload(UnitsArgs),
    /// DEPRECATED - No longer works
    #[command(hide = true)]
    Verify(cmd::verify::Args),
    /// Print the version and exit
    Version,
}

/// The arguments of `load` and `start`: submit if needed, then schedule.
#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// --no-block and --block-attempts.
    #[command(flatten)]
    pub block: BlockArgs,
    /// --replace and --sign.
    #[command(flatten)]
    pub submit: SubmitArgs,
    /// Unit files or names.
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// The arguments of `stop` and `unload`: change existing units.
#[derive(Debug, clap::Args)]
pub struct UnitsArgs {
    /// --no-block and --block-attempts.
    #[command(flatten)]
    pub block: BlockArgs,
    /// Unit names (or files, whose names are used).
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// How the listings print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// The original's tab-aligned table.
    Table,
    /// The API objects as a JSON array (`--fields`, `--full` and
    /// `--no-legend` do not apply).
    Json,
}

/// `--no-block` and `--block-attempts`, shared by the commands that wait.
#[derive(Debug, Clone, Copy, Args)]
pub struct BlockArgs {
    /// Do not wait until the units have reached their state before exiting.
    /// Always the case for global units.
    #[arg(long, go_flag = false)]
    pub no_block: bool,

    /// Wait until the units have reached their state, performing up to N
    /// attempts (of 2 seconds each) before giving up. A value of 0 indicates
    /// no limit. Does not apply to global units.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub block_attempts: u32,
}

/// `--replace` and the deprecated `--sign`, shared by the commands that
/// submit units.
#[derive(Debug, Clone, Copy, Args)]
pub struct SubmitArgs {
    /// Replace the old units in the cluster with new versions.
    #[arg(long, go_flag = false)]
    pub replace: bool,

    /// DEPRECATED - this option cannot be used
    #[arg(long, go_flag = false)]
    pub sign: bool,
}

/// `--full`, `--no-legend` and `--fields`, shared by the listings.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Do not ellipsize fields on output
    #[arg(long, short = 'l', alias = "l", go_flag = false)]
    pub full: bool,

    /// Do not print a legend (column headers)
    #[arg(long, go_flag = false)]
    pub no_legend: bool,

    /// Output format: "table" or "json"
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: OutputFormat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("fleetctl").chain(args.iter().copied()))
    }

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    // These tests read FLEETCTL_* defaults; none of them sets the
    // environment, and the test process is not run with those variables.

    #[test]
    fn defaults() {
        let cli = parse(&["list-units"]).unwrap();
        assert_eq!(cli.global.endpoint, "unix:///var/run/fleet.sock");
        assert_eq!(cli.global.driver, "API");
        assert!((cli.global.request_timeout - 3.0).abs() < f64::EPSILON);
        assert!(cli.global.strict_host_key_checking);
        assert!(cli.global.experimental_api);
        assert!(!cli.global.debug);
        match cli.command {
            Some(Command::ListUnits(a)) => {
                assert_eq!(a.fields, "unit,machine,active,sub");
                assert!(!a.list.full && !a.list.no_legend);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn global_flags_anywhere_and_go_booleans() {
        let cli = parse(&[
            "--endpoint=http://1.2.3.4:80",
            "start",
            "--debug",
            "x",
            "--strict-host-key-checking=false",
        ])
        .unwrap();
        assert_eq!(cli.global.endpoint, "http://1.2.3.4:80");
        assert!(cli.global.debug);
        assert!(!cli.global.strict_host_key_checking);
        match cli.command {
            Some(Command::Start(a)) => assert_eq!(a.units, ["x"]),
            other => panic!("unexpected {other:?}"),
        }
        // A bare boolean flag does not swallow the next argument.
        let cli = parse(&["--debug", "list-units"]).unwrap();
        assert!(cli.global.debug);
        assert!(matches!(cli.command, Some(Command::ListUnits(_))));
        let cli = parse(&["--debug=F", "version"]).unwrap();
        assert!(!cli.global.debug);
        assert!(parse(&["--debug=maybe", "version"]).is_err());
    }

    #[test]
    fn block_and_replace_flags() {
        let cli = parse(&[
            "load",
            "--no-block",
            "--block-attempts=3",
            "--replace",
            "a",
            "b",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Load(a)) => {
                assert!(a.block.no_block);
                assert_eq!(a.block.block_attempts, 3);
                assert!(a.submit.replace);
                assert_eq!(a.units, ["a", "b"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = parse(&["destroy", "--block-attempts", "7", "a"]).unwrap();
        match cli.command {
            Some(Command::Destroy(a)) => assert_eq!(a.block.block_attempts, 7),
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse(&["stop", "--block-attempts=-1", "a"]).is_err());
        assert!(
            parse(&["stop", "--replace", "a"]).is_err(),
            "stop has no --replace"
        );
    }

    #[test]
    fn list_flags_and_one_letter_aliases() {
        for args in [
            &["list-units", "--full"][..],
            &["list-units", "--l"],
            &["list-units", "-l"],
            &["list-units", "--full=true"],
        ] {
            match parse(args).unwrap().command {
                Some(Command::ListUnits(a)) => assert!(a.list.full, "{args:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
        let cli = parse(&["list-unit-files", "--no-legend", "--fields=unit,tmachine"]).unwrap();
        match cli.command {
            Some(Command::ListUnitFiles(a)) => {
                assert!(a.list.no_legend);
                assert_eq!(a.fields, "unit,tmachine");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn prefixes_and_help() {
        assert!(matches!(
            parse(&["list-m"]).unwrap().command,
            Some(Command::ListMachines(_))
        ));
        assert!(parse(&["list-unit"]).is_err(), "ambiguous prefix");
        for args in [&["--help"][..], &["-h"], &["--h"], &["start", "--help"]] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{args:?}");
        }
        let help = Cli::command().render_help().to_string();
        assert!(help.contains(fleetd::VERSION), "{help}");
        assert!(help.contains("list-unit-files"), "{help}");
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(parse(&["--bogus", "list-units"]).is_err());
        assert!(parse(&["list-units", "--bogus"]).is_err());
        assert!(parse(&["--request-timeout=-1", "list-units"]).is_err());
        assert!(
            parse(&["cat"]).is_ok(),
            "cat checks its argument count itself"
        );
    }

    #[test]
    fn deprecated_tls_aliases() {
        let cli = parse(&[
            "--etcd-cafile=/ca",
            "--etcd-certfile=/c",
            "--etcd-keyfile=/k",
            "version",
        ])
        .unwrap();
        assert_eq!(cli.global.ca_file, "/ca");
        assert_eq!(cli.global.cert_file, "/c");
        assert_eq!(cli.global.key_file, "/k");
    }
}
