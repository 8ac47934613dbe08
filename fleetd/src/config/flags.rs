//! The command line: `--config`, `--version`, and one flag per option of the
//! table (`--agent-ttl` for `agent_ttl`), built with clap's builder from
//! [`Opt::def`], so `--help` lists exactly the options the table holds.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

use super::Opt;

/// The argument id of an option's flag: its config-file name.
fn id(opt: Opt) -> &'static str {
    opt.name()
}

/// fleetd's command line. Every option is also a flag; a flag overrides the
/// environment, which overrides the config file.
///
/// Boolean flags take an optional value, attached with `=`:
/// `--disable-engine` is `--disable-engine=true`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// Config file (default /etc/fleet/fleet.conf if it exists). Must exist
    /// when given.
    pub config: Option<PathBuf>,
    /// Print the version and exit (handled by `main`).
    pub version: bool,
    /// Positional arguments: only `version` means anything (handled by
    /// `main`); anything else is refused, as the original did.
    pub positional: Vec<String>,
    /// The raw value of each option given as a flag.
    pub flags: BTreeMap<Opt, String>,
}

impl Args {
    /// Whether the user asked for the version (`--version`, or the positional
    /// `version` of the original).
    pub fn wants_version(&self) -> bool {
        self.version || self.positional.iter().any(|a| a == "version")
    }

    /// The raw value of an option's flag, if given.
    pub fn flag_value(&self, opt: Opt) -> Option<&str> {
        self.flags.get(&opt).map(String::as_str)
    }
}

/// One option's flag, from its table entry.
fn option_arg(opt: Opt) -> Arg {
    let def = opt.def();
    let arg = Arg::new(id(opt))
        .long(opt.flag().trim_start_matches('-').to_owned())
        .value_name(def.value_name)
        .help(def.help_line())
        .hide(def.deprecated);
    if def.is_switch() {
        arg.num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
    } else {
        arg
    }
}

impl clap::CommandFactory for Args {
    fn command() -> Command {
        let cmd = Command::new("fleetd")
            .about("fleet daemon: systemd across a cluster")
            .long_about(
                "fleetd's command line. Every option is also a flag; a flag overrides the \
                 environment, which overrides the config file.\n\n\
                 Boolean flags take an optional value, attached with `=`: \
                 `--disable-engine` is `--disable-engine=true`.",
            )
            .disable_version_flag(true)
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_name("PATH")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("Config file (default /etc/fleet/fleet.conf if it exists). Must exist when given"),
            )
            .arg(
                Arg::new("version")
                    .long("version")
                    .action(ArgAction::SetTrue)
                    .help("Print the version and exit (handled by `main`)"),
            )
            .arg(
                Arg::new("positional")
                    .action(ArgAction::Append)
                    .hide(true),
            );
        Opt::ALL
            .into_iter()
            .fold(cmd, |cmd, opt| cmd.arg(option_arg(opt)))
    }

    fn command_for_update() -> Command {
        Self::command()
    }
}

impl clap::FromArgMatches for Args {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Args::default();
        args.update_from_arg_matches(m)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(path) = m.get_one::<PathBuf>("config") {
            self.config = Some(path.clone());
        }
        self.version |= m.get_flag("version");
        if let Some(p) = m.get_many::<String>("positional") {
            self.positional.extend(p.cloned());
        }
        for opt in Opt::ALL {
            if let Some(v) = m.get_one::<String>(id(opt)) {
                self.flags.insert(opt, v.clone());
            }
        }
        Ok(())
    }
}

impl clap::Parser for Args {}

/// Rewrites the original's single-dash long flags (`-config PATH`,
/// `-version`, `-agent-ttl=10s`) to the double-dash form clap parses, so
/// existing unit files and scripts keep working. `argv[0]`, single-letter
/// flags (`-h`) and everything after `--` are left alone.
pub fn normalize_go_flags<I>(args: I) -> Vec<OsString>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut out = Vec::new();
    let mut rest_positional = false;
    for (i, arg) in args.into_iter().enumerate() {
        let arg: OsString = arg.into();
        if i == 0 || rest_positional {
            out.push(arg);
            continue;
        }
        let rewritten = arg.to_str().and_then(|s| {
            if s == "--" {
                rest_positional = true;
                return None;
            }
            let name = s.strip_prefix('-')?;
            let first = name.chars().next()?;
            let bare = name.split('=').next().unwrap_or(name);
            (first.is_ascii_alphabetic() && bare.len() > 1).then(|| OsString::from(format!("-{s}")))
        });
        out.push(rewritten.unwrap_or(arg));
    }
    out
}
