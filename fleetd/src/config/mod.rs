//! fleetd's configuration: the config file, `FLEET_*` environment variables
//! and command-line flags, merged into one validated [`Config`].
//!
//! The split follows ripgrep's `LowArgs`/`HiArgs`:
//! - the low layer collects what the user typed, as raw strings, each with the
//!   [`Origin`] it came from (file, environment variable or flag); a later
//!   source replaces an earlier one option by option (file < environment <
//!   flag, as in the original, which had no flags);
//! - [`Config::from_raw`] then turns every raw string into a typed field once.
//!   A bad value is an error that names the option, the value, where it came
//!   from and what is wrong (`invalid value "abc" for agent_ttl in flag
//!   --agent-ttl: not a duration ...`); every [`ConfigError`] carries its
//!   cause in its message (none has a `source()`), so `{}` prints it all.
//!   Nothing is re-validated later.
//!
//! Every option of the original (fleet-reference.md §7) keeps its name,
//! meaning and default; two are ours: `listen` (API listeners when fleetd is
//! not socket-activated) and `machine_id_file` (so tests need not own
//! `/etc/machine-id`). The deprecated `verify_units` and
//! `authorized_keys_file` are accepted and ignored with a warning, as are
//! unknown keys in the file. Warnings are returned in [`Config::warnings`] for
//! the caller to log: this module does no logging and no I/O beyond reading
//! the config file.
//!
//! The environment is passed in as a function so tests never touch the
//! process environment.
//!
//! # Layout: one table
//!
//! Every option is defined once, in the table of `options.rs`: its name
//! (also the [`Config`] field it fills, side by side with the field's type
//! and doc), its default as text, its `--help` line and its parser. The
//! [`Opt`] enum, the [`Config`] struct and its defaults, the parsing of a
//! value from any source, the environment variable (`FLEET_` + upper-case
//! name), the flag (`--` + name with dashes) and the `--help` text are all
//! derived from that table, so adding an option means adding one entry.
//! The rest of the module is generic: `file.rs` reads fleet.conf,
//! `flags.rs` builds the command line, `parse.rs` holds the value parsers,
//! and this file merges the sources and validates.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

mod file;
mod flags;
mod options;
mod parse;
#[cfg(test)]
mod tests;

pub use flags::{Args, normalize_go_flags};
use options::Ctx;
pub use options::{
    Config, DEFAULT_ETCD_KEY_PREFIX, DEFAULT_ETCD_SERVERS, DEFAULT_LISTEN, DEFAULT_MACHINE_ID_FILE,
    DEFAULT_UNITS_DIRECTORY, Opt, OptionDef,
};
pub use parse::{
    AGENT_TTL_RANGE, ENGINE_RECONCILE_INTERVAL_RANGE, ETCD_REQUEST_TIMEOUT_RANGE, ValueError,
    parse_etcd_servers, parse_go_duration, parse_listen, parse_metadata,
};

/// Where the config file is read from when `--config` is not given (and only
/// if it exists).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fleet/fleet.conf";

/// The prefix of the environment variables that set options.
pub const ENV_PREFIX: &str = "FLEET_";

/// Names derived from the config-file name by rule.
impl Opt {
    /// The option with this config-file name.
    pub fn from_name(name: &str) -> Option<Opt> {
        Opt::ALL.into_iter().find(|o| o.name() == name)
    }

    /// The environment variable, e.g. `FLEET_AGENT_TTL`.
    pub fn env_var(self) -> String {
        format!("{ENV_PREFIX}{}", self.name().to_ascii_uppercase())
    }

    /// The command-line flag, e.g. `--agent-ttl`.
    pub fn flag(self) -> String {
        format!("--{}", self.name().replace('_', "-"))
    }

    /// Accepted for compatibility and ignored.
    pub fn is_deprecated(self) -> bool {
        matches!(self, Opt::VerifyUnits | Opt::AuthorizedKeysFile)
    }
}

// ---------------------------------------------------------------------------
// Low layer: raw values with their origin
// ---------------------------------------------------------------------------

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The config file, and the line the value is on when it could be found
    /// (the INI parser does not report lines; see [`key_lines`]).
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line of the winning `key=value`.
        line: Option<usize>,
    },
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (its name, e.g. `--agent-ttl`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::File {
                path,
                line: Some(line),
            } => write!(f, "{}:{line}", path.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One option's value as the user typed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawValue {
    /// The text, with the file's surrounding quotes removed.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
}

/// What the user typed, before validation: for each option set anywhere, the
/// value of the highest-precedence source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawConfig {
    /// The winning raw value of each option that was set.
    pub values: BTreeMap<Opt, RawValue>,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    /// Warnings found while collecting (unknown keys, ignored sections).
    pub warnings: Vec<String>,
}

impl RawConfig {
    /// Collects the file, then the environment, then the flags, each
    /// overriding the previous one. `default_file` is read only if it exists;
    /// a file named by `--config` must exist and be a regular file.
    pub fn collect(
        args: &Args,
        env: impl Fn(&str) -> Option<String>,
        default_file: &Path,
    ) -> Result<RawConfig, ConfigError> {
        if let Some(arg) = args.positional.iter().find(|a| *a != "version") {
            return Err(ConfigError::UnexpectedArgument { arg: arg.clone() });
        }
        let mut raw = RawConfig::default();
        let file = match &args.config {
            Some(path) => {
                let meta = std::fs::metadata(path).map_err(|cause| ConfigError::ReadFile {
                    path: path.clone(),
                    cause,
                })?;
                if meta.is_dir() {
                    return Err(ConfigError::FileIsDirectory { path: path.clone() });
                }
                Some(path.clone())
            }
            None => default_file.is_file().then(|| default_file.to_path_buf()),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|cause| ConfigError::ReadFile {
                path: path.clone(),
                cause,
            })?;
            raw.read_file_text(&path, &text)?;
            raw.file = Some(path);
        }
        for opt in Opt::ALL {
            let var = opt.env_var();
            if let Some(value) = env(&var) {
                raw.set(opt, value, Origin::Env(var));
            }
        }
        for opt in Opt::ALL {
            if let Some(value) = args.flag_value(opt) {
                raw.set(opt, value.to_owned(), Origin::Flag(opt.flag()));
            }
        }
        Ok(raw)
    }

    pub(super) fn set(&mut self, opt: Opt, value: String, origin: Origin) {
        self.values.insert(opt, RawValue { value, origin });
    }
}

// ---------------------------------------------------------------------------
// High layer: the validated config
// ---------------------------------------------------------------------------

/// An API listen address (`listen`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// `unix:/path`: a unix socket.
    Unix(PathBuf),
    /// `host:port`: TCP. The host may be a name; IPv6 literals are bracketed
    /// in the text (`[::1]:8080`) and stored without brackets.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            ListenAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Reads the config: the file (`--config`, else `/etc/fleet/fleet.conf` if it
/// exists), then `FLEET_*` variables looked up with `env`, then the flags.
///
/// In the daemon: `load(args, |k| std::env::var(k).ok())`.
pub fn load(args: Args, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    load_from(&args, env, Path::new(DEFAULT_CONFIG_PATH))
}

/// [`load`] with another default file path (tests).
pub fn load_from(
    args: &Args,
    env: impl Fn(&str) -> Option<String>,
    default_file: &Path,
) -> Result<Config, ConfigError> {
    Config::from_raw(RawConfig::collect(args, env, default_file)?)
}

impl Config {
    /// Validates raw values into a config; options not set keep their
    /// defaults.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let RawConfig {
            values,
            file,
            mut warnings,
        } = raw;
        let mut c = Config {
            config_file: file,
            ..Config::default()
        };
        for (&opt, raw) in &values {
            let mut ctx = Ctx {
                origin: &raw.origin,
                warnings: &mut warnings,
            };
            c.apply(opt, &raw.value, &mut ctx)
                .map_err(|reason| ConfigError::InvalidValue {
                    option: opt,
                    value: raw.value.clone(),
                    origin: raw.origin.clone(),
                    reason,
                })?;
        }
        c.warnings = warnings;
        Ok(c)
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read (for `--config`: also when it does
    /// not exist).
    #[error("cannot read config file {}: {cause}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// `--config` names a directory.
    #[error("config file {} is a directory", path.display())]
    FileIsDirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The config file is not valid INI.
    #[error("cannot parse config file {}: {cause}", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's complaint (with line and column).
        cause: ini::ParseError,
    },
    /// An option has a bad value.
    #[error("invalid value {value:?} for {option} in {origin}: {reason}")]
    InvalidValue {
        /// The option.
        option: Opt,
        /// The value as given.
        value: String,
        /// Where it came from.
        origin: Origin,
        /// What is wrong with it.
        reason: ValueError,
    },
    /// A positional argument other than `version`.
    #[error("takes no arguments (got {arg:?})")]
    UnexpectedArgument {
        /// The first offending argument.
        arg: String,
    },
}
