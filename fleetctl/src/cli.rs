//! The command line: global flags (§8.1 of the reference) and one argument
//! struct per command, declared with clap's derive API.
//!
//! Compatibility with the original (Go, cobra/pflag):
//! - Every global flag falls back to `FLEETCTL_<FLAG>` (upper case, `-` →
//!   `_`) when it is not on the command line, deprecated spellings too
//!   (`FLEETCTL_ETCD_CAFILE` sets `--ca-file`); an empty variable counts as
//!   unset ([`parse`], [`ENV_FLAGS`]). Global flags may come before or
//!   after the command.
//! - Boolean flags take Go's forms: `--debug`, `--debug=true`,
//!   `--strict-host-key-checking=false` (and `1`, `t`, `F`, `FALSE`, ...).
//! - The one-letter long flags `--l` and `--h` exist; `-l` and `-h` work too
//!   (the original rejected `-l`).
//! - Unambiguous command prefixes work (`fleetctl list-m`).
//! - Deliberate difference: a flag error exits 2 with clap's message; the
//!   original printed the usage and exited 0.

use std::ffi::{OsStr, OsString};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::cmd;

/// Default API endpoint.
pub const DEFAULT_ENDPOINT: &str = fleetd::client::DEFAULT_ENDPOINT;

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

/// How a `FLEETCTL_*` value is checked before it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvKind {
    /// Any text (paths, URLs, names).
    Text,
    /// A Go boolean ([`go_bool`]).
    Bool,
    /// Seconds ([`seconds`]).
    Seconds,
    /// A Go boolean that, when true, asks for the help.
    Help,
}

/// A global flag that `FLEETCTL_<FLAG>` may set.
#[derive(Debug)]
pub struct EnvFlag {
    /// The flag's name, as the original spelt it (`etcd-cafile`).
    pub flag: &'static str,
    /// The argument it sets (its clap id, a field of [`GlobalArgs`]).
    id: &'static str,
    /// How its value is checked.
    kind: EnvKind,
}

impl EnvFlag {
    /// `FLEETCTL_` and the flag's name in upper case, `-` → `_`, as the
    /// original derived it.
    pub fn var(&self) -> String {
        format!("FLEETCTL_{}", self.flag.to_uppercase().replace('-', "_"))
    }
}

/// Every global flag with its variable, sorted by flag name: the original
/// visited its flags in that order and let a later one win, so of two
/// variables for one flag `FLEETCTL_ETCD_CAFILE` beats `FLEETCTL_CA_FILE`,
/// `FLEETCTL_ETCD_CERTFILE` beats `FLEETCTL_CERT_FILE`, and
/// `FLEETCTL_KEY_FILE` beats `FLEETCTL_ETCD_KEYFILE`.
pub const ENV_FLAGS: &[EnvFlag] = &[
    env_flag("ca-file", "ca_file", EnvKind::Text),
    env_flag("cert-file", "cert_file", EnvKind::Text),
    env_flag("debug", "debug", EnvKind::Bool),
    env_flag("driver", "driver", EnvKind::Text),
    env_flag("endpoint", "endpoint", EnvKind::Text),
    env_flag("etcd-cafile", "ca_file", EnvKind::Text),
    env_flag("etcd-certfile", "cert_file", EnvKind::Text),
    env_flag("etcd-key-prefix", "etcd_key_prefix", EnvKind::Text),
    env_flag("etcd-keyfile", "key_file", EnvKind::Text),
    env_flag("experimental-api", "experimental_api", EnvKind::Bool),
    env_flag("h", "help", EnvKind::Help),
    env_flag("help", "help", EnvKind::Help),
    env_flag("key-file", "key_file", EnvKind::Text),
    env_flag("known-hosts-file", "known_hosts_file", EnvKind::Text),
    env_flag("remote-fleetctl", "remote_fleetctl", EnvKind::Text),
    env_flag("request-timeout", "request_timeout", EnvKind::Seconds),
    env_flag("ssh-timeout", "ssh_timeout", EnvKind::Seconds),
    env_flag("ssh-username", "ssh_username", EnvKind::Text),
    env_flag(
        "strict-host-key-checking",
        "strict_host_key_checking",
        EnvKind::Bool,
    ),
    env_flag("tunnel", "tunnel", EnvKind::Text),
    env_flag("version", "version", EnvKind::Bool),
];

const fn env_flag(flag: &'static str, id: &'static str, kind: EnvKind) -> EnvFlag {
    EnvFlag { flag, id, kind }
}

/// Why the command line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A flag error, or the help or version clap prints as an error.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// A `FLEETCTL_*` variable with a value its flag does not take (worded
    /// as fleetd words a bad `FLEET_*` variable).
    #[error("invalid value {value:?} for --{flag} in environment variable {var}: {reason}")]
    Env {
        /// The variable.
        var: String,
        /// The flag it stands for, as the original spelt it.
        flag: &'static str,
        /// Its value.
        value: OsString,
        /// What is wrong with the value.
        reason: String,
    },
}

/// fleetctl's command line, its global flags' help naming their
/// `FLEETCTL_*` variables.
pub fn command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        let vars: Vec<String> = ENV_FLAGS
            .iter()
            .filter(|f| f.id == arg.get_id().as_str() && f.kind != EnvKind::Help)
            .map(EnvFlag::var)
            .collect();
        if vars.is_empty() {
            return arg;
        }
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        arg.help(format!("{help} [env: {}]", vars.join(", ")))
    })
}

/// Whether the argument `id` was given on the command line, before or
/// after the command.
fn on_command_line(matches: &ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(ValueSource::CommandLine)
        || matches
            .subcommand()
            .is_some_and(|(_, sub)| on_command_line(sub, id))
}

/// Checks a variable's value for its flag; the error names what is wrong.
fn check_env_value(kind: EnvKind, value: &OsStr) -> Result<(), String> {
    if kind == EnvKind::Text {
        return Ok(());
    }
    let text = value
        .to_str()
        .ok_or_else(|| format!("invalid value {value:?}"))?;
    match kind {
        EnvKind::Text => Ok(()),
        EnvKind::Bool | EnvKind::Help => go_bool(text).map(drop),
        EnvKind::Seconds => seconds(text).map(drop),
    }
}

/// Parses `args` (the program name first), taking each global flag that is
/// not on the command line from its `FLEETCTL_*` variable (read through
/// `env`) when that is set and not empty.
///
/// The variables' values are given to clap as flags ahead of `args`, so
/// they are read exactly as flags are. `FLEETCTL_HELP` (or `FLEETCTL_H`)
/// true prints the general help.
///
/// # Errors
///
/// A flag error (or the help), or a variable whose value its flag does not
/// take. The original ignored such a value and left the flag at its zero
/// value: a mistyped `FLEETCTL_STRICT_HOST_KEY_CHECKING=yes` turned host
/// key checking off. We refuse it, naming the variable.
pub fn parse(args: &[OsString], env: impl Fn(&str) -> Option<OsString>) -> Result<Cli, ArgsError> {
    let matches = command().try_get_matches_from(args)?;
    // The value of each argument to take from the environment (a later
    // variable for the same argument wins, as in the original).
    let mut from_env: Vec<(&EnvFlag, OsString)> = Vec::new();
    for flag in ENV_FLAGS {
        if flag.kind == EnvKind::Help || !on_command_line(&matches, flag.id) {
            let Some(value) = env(&flag.var()).filter(|v| !v.is_empty()) else {
                continue;
            };
            if let Err(reason) = check_env_value(flag.kind, &value) {
                return Err(ArgsError::Env {
                    var: flag.var(),
                    flag: flag.flag,
                    value,
                    reason,
                });
            }
            from_env.retain(|(f, _)| f.id != flag.id);
            from_env.push((flag, value));
        }
    }
    if from_env.is_empty() {
        return Ok(Cli::from_arg_matches(&matches)?);
    }
    let mut with_env: Vec<OsString> = args.iter().take(1).cloned().collect();
    for (flag, value) in from_env {
        if flag.kind == EnvKind::Help {
            if value.to_str().and_then(|v| go_bool(v).ok()) == Some(true) {
                with_env.push("--help".into());
            }
            continue;
        }
        let mut arg = OsString::from(format!("--{}=", flag.id.replace('_', "-")));
        arg.push(value);
        with_env.push(arg);
    }
    with_env.extend(args.iter().skip(1).cloned());
    let matches = command().try_get_matches_from(with_env)?;
    Ok(Cli::from_arg_matches(&matches)?)
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
    #[arg(long, global = true, default_value = DEFAULT_ENDPOINT, value_name = "URL")]
    pub endpoint: String,

    /// Adapter used to execute fleetctl commands. Options include "API" and
    /// "etcd".
    #[arg(long, global = true, default_value = "API")]
    pub driver: String,

    /// Establish an SSH tunnel through the provided address for
    /// communication with fleet and etcd.
    #[arg(long, global = true, default_value = "", hide_default_value = true)]
    pub tunnel: String,

    /// Username to use when connecting to CoreOS instance.
    #[arg(long, global = true, default_value = "core")]
    pub ssh_username: String,

    /// Amount of time in seconds to allow for SSH connection initialization
    /// before failing.
    #[arg(long, global = true, default_value = "10.0", value_parser = seconds)]
    pub ssh_timeout: f64,

    /// Amount of time in seconds to allow a single request before
    /// considering it failed (0: no limit).
    #[arg(long, global = true, default_value = "3.0", value_parser = seconds)]
    pub request_timeout: f64,

    /// Verify host keys presented by remote machines before initiating SSH
    /// connections.
    #[arg(long, global = true, go_flag = true)]
    pub strict_host_key_checking: bool,

    /// File used to store remote machine fingerprints. Ignored if strict
    /// host key checking is disabled.
    #[arg(
        long,
        global = true,
        default_value = "~/.fleetctl/known_hosts",
        value_name = "FILE"
    )]
    pub known_hosts_file: String,

    /// Keyspace for fleet data in etcd (development use only!)
    #[arg(long, global = true, default_value = "/_coreos.com/fleet/")]
    pub etcd_key_prefix: String,

    /// Location of TLS CA file used to secure communication with the fleet
    /// API or etcd.
    #[arg(
        long,
        global = true,
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
        default_value = "",
        hide_default_value = true,
        alias = "etcd-keyfile",
        value_name = "FILE"
    )]
    pub key_file: String,

    /// DEPRECATED: do not use this flag.
    #[arg(long, global = true, hide = true, go_flag = true)]
    pub experimental_api: bool,

    /// Print out more debug information to stderr.
    #[arg(long, global = true, go_flag = false)]
    pub debug: bool,

    /// Print the version and exit.
    #[arg(long, global = true, go_flag = false)]
    pub version: bool,

    /// The fleetctl to run on the --tunnel host for `fd-forward` (it must
    /// be on that host's PATH under this name, or be a full path).
    #[arg(long, global = true, default_value = "fleetctl", hide = true)]
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

    // `parse` above ignores the environment (clap reads no variable);
    // `parse_env` below gives its own.

    fn parse_env(env: &[(&str, &str)], args: &[&str]) -> Result<Cli, ArgsError> {
        let args: Vec<OsString> = std::iter::once("fleetctl")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        super::parse(&args, |var| {
            env.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn every_global_flag_has_its_variable() {
        let cmd = command();
        for arg in cmd.get_arguments().filter(|a| a.is_global_set()) {
            let id = arg.get_id().as_str();
            assert!(ENV_FLAGS.iter().any(|f| f.id == id), "{id} has no variable");
        }
        for flag in ENV_FLAGS {
            assert!(
                cmd.get_arguments().any(|a| a.get_id() == flag.id),
                "{flag:?} sets no argument"
            );
        }
        let names: Vec<&str> = ENV_FLAGS.iter().map(|f| f.flag).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "the original's order");
        let var = |flag: &str| ENV_FLAGS.iter().find(|f| f.flag == flag).map(EnvFlag::var);
        assert_eq!(var("ca-file").as_deref(), Some("FLEETCTL_CA_FILE"));
        assert_eq!(var("etcd-cafile").as_deref(), Some("FLEETCTL_ETCD_CAFILE"));
        assert_eq!(
            var("strict-host-key-checking").as_deref(),
            Some("FLEETCTL_STRICT_HOST_KEY_CHECKING")
        );
        let help = command().render_help().to_string();
        assert!(
            help.contains("[env: FLEETCTL_CA_FILE, FLEETCTL_ETCD_CAFILE]"),
            "{help}"
        );
    }

    #[test]
    fn variables_fill_in_flags_not_given() {
        let env = [
            ("FLEETCTL_ENDPOINT", "http://env:1"),
            ("FLEETCTL_DRIVER", "etcd"),
            ("FLEETCTL_TUNNEL", "bastion"),
            ("FLEETCTL_SSH_USERNAME", "admin"),
            ("FLEETCTL_SSH_TIMEOUT", "2.5"),
            ("FLEETCTL_REQUEST_TIMEOUT", "0"),
            ("FLEETCTL_STRICT_HOST_KEY_CHECKING", "F"),
            ("FLEETCTL_KNOWN_HOSTS_FILE", "/kh"),
            ("FLEETCTL_ETCD_KEY_PREFIX", "/p/"),
            ("FLEETCTL_EXPERIMENTAL_API", "0"),
            ("FLEETCTL_DEBUG", "TRUE"),
            ("FLEETCTL_REMOTE_FLEETCTL", "/opt/fleetctl"),
            ("FLEETCTL_ETCD_CAFILE", "/ca"),
            ("FLEETCTL_ETCD_CERTFILE", "/c"),
            ("FLEETCTL_ETCD_KEYFILE", "/k"),
        ];
        let g = parse_env(&env, &["list-units"]).unwrap().global;
        assert_eq!(
            (g.endpoint.as_str(), g.driver.as_str(), g.tunnel.as_str()),
            ("http://env:1", "etcd", "bastion")
        );
        assert_eq!(g.ssh_username, "admin");
        assert!((g.ssh_timeout - 2.5).abs() < f64::EPSILON);
        assert!(g.request_timeout.abs() < f64::EPSILON);
        assert!(!g.strict_host_key_checking && !g.experimental_api && g.debug);
        assert_eq!(
            (g.known_hosts_file.as_str(), g.etcd_key_prefix.as_str()),
            ("/kh", "/p/")
        );
        assert_eq!(g.remote_fleetctl, "/opt/fleetctl");
        assert_eq!(
            (
                g.ca_file.as_str(),
                g.cert_file.as_str(),
                g.key_file.as_str()
            ),
            ("/ca", "/c", "/k")
        );
        let cli = parse_env(&[("FLEETCTL_VERSION", "t")], &["list-units"]).unwrap();
        assert!(cli.global.version);
    }

    #[test]
    fn flags_beat_variables() {
        let env = [
            ("FLEETCTL_ENDPOINT", "http://env:1"),
            ("FLEETCTL_DEBUG", "true"),
            ("FLEETCTL_CA_FILE", "/env-ca"),
            ("FLEETCTL_ETCD_KEYFILE", "/env-key"),
        ];
        for args in [
            &["--endpoint=http://flag:2", "--debug=false", "list-units"][..],
            &["list-units", "--endpoint", "http://flag:2", "--debug=f"],
        ] {
            let g = parse_env(&env, args).unwrap().global;
            assert_eq!(g.endpoint, "http://flag:2", "{args:?}");
            assert!(!g.debug, "{args:?}");
            assert_eq!(g.ca_file, "/env-ca", "{args:?}");
        }
        // Either spelling of a flag beats both variables of it.
        let g = parse_env(
            &env,
            &["--etcd-cafile=/flag-ca", "--key-file=/k", "version"],
        )
        .unwrap()
        .global;
        assert_eq!(
            (g.ca_file.as_str(), g.key_file.as_str()),
            ("/flag-ca", "/k")
        );
    }

    #[test]
    fn two_variables_for_one_flag_as_the_original() {
        let env = [
            ("FLEETCTL_CA_FILE", "/ca"),
            ("FLEETCTL_ETCD_CAFILE", "/etcd-ca"),
            ("FLEETCTL_CERT_FILE", "/cert"),
            ("FLEETCTL_ETCD_CERTFILE", "/etcd-cert"),
            ("FLEETCTL_KEY_FILE", "/key"),
            ("FLEETCTL_ETCD_KEYFILE", "/etcd-key"),
        ];
        let g = parse_env(&env, &["version"]).unwrap().global;
        assert_eq!(
            (
                g.ca_file.as_str(),
                g.cert_file.as_str(),
                g.key_file.as_str()
            ),
            ("/etcd-ca", "/etcd-cert", "/key")
        );
        let g = parse_env(&env[..1], &["version"]).unwrap().global;
        assert_eq!(g.ca_file, "/ca");
    }

    #[test]
    fn empty_and_bad_variables() {
        let g = parse_env(
            &[("FLEETCTL_ENDPOINT", ""), ("FLEETCTL_DEBUG", "")],
            &["list-units"],
        )
        .unwrap()
        .global;
        assert_eq!(g.endpoint, DEFAULT_ENDPOINT);
        assert!(!g.debug);
        for value in ["1", "t", "T", "TRUE", "true", "True"] {
            let g = parse_env(&[("FLEETCTL_DEBUG", value)], &["version"]).unwrap();
            assert!(g.global.debug, "{value}");
        }
        for value in ["0", "f", "F", "FALSE", "false", "False"] {
            let g = parse_env(
                &[("FLEETCTL_STRICT_HOST_KEY_CHECKING", value)],
                &["version"],
            );
            assert!(!g.unwrap().global.strict_host_key_checking, "{value}");
        }
        let err = parse_env(
            &[("FLEETCTL_STRICT_HOST_KEY_CHECKING", "yes")],
            &["version"],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"yes\" for --strict-host-key-checking in environment variable \
             FLEETCTL_STRICT_HOST_KEY_CHECKING: invalid boolean value \"yes\""
        );
        let err = parse_env(&[("FLEETCTL_SSH_TIMEOUT", "soon")], &["version"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"soon\" for --ssh-timeout in environment variable \
             FLEETCTL_SSH_TIMEOUT: invalid number of seconds \"soon\""
        );
        // A bad variable whose flag is given does not matter.
        assert!(parse_env(&[("FLEETCTL_DEBUG", "maybe")], &["--debug", "version"]).is_ok());
    }

    #[test]
    fn help_from_the_environment() {
        for var in ["FLEETCTL_HELP", "FLEETCTL_H"] {
            match parse_env(&[(var, "true")], &["list-units"]) {
                Err(ArgsError::Clap(e)) => {
                    assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{var}");
                }
                other => panic!("{var}: {other:?}"),
            }
            assert!(parse_env(&[(var, "false")], &["list-units"]).is_ok());
        }
    }

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
