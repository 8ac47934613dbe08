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

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the config file is read from when `--config` is not given (and only
/// if it exists).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fleet/fleet.conf";

/// The prefix of the environment variables that set options.
pub const ENV_PREFIX: &str = "FLEET_";

// ---------------------------------------------------------------------------
// The options
// ---------------------------------------------------------------------------

/// Every option fleetd knows, by its config-file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Opt {
    /// `verbosity`
    Verbosity,
    /// `etcd_servers`
    EtcdServers,
    /// `etcd_request_timeout`
    EtcdRequestTimeout,
    /// `etcd_cafile`
    EtcdCafile,
    /// `etcd_certfile`
    EtcdCertfile,
    /// `etcd_keyfile`
    EtcdKeyfile,
    /// `etcd_username`
    EtcdUsername,
    /// `etcd_password`
    EtcdPassword,
    /// `etcd_key_prefix`
    EtcdKeyPrefix,
    /// `public_ip`
    PublicIp,
    /// `metadata`
    Metadata,
    /// `agent_ttl`
    AgentTtl,
    /// `engine_reconcile_interval`
    EngineReconcileInterval,
    /// `token_limit`
    TokenLimit,
    /// `disable_engine`
    DisableEngine,
    /// `disable_watches`
    DisableWatches,
    /// `enable_grpc`
    EnableGrpc,
    /// `units_directory`
    UnitsDirectory,
    /// `systemd_user`
    SystemdUser,
    /// `listen` (ours)
    Listen,
    /// `machine_id_file` (ours)
    MachineIdFile,
    /// `verify_units` (deprecated, ignored)
    VerifyUnits,
    /// `authorized_keys_file` (deprecated, ignored)
    AuthorizedKeysFile,
}

impl Opt {
    /// Every option, in the order of fleet-reference.md §7.
    pub const ALL: [Opt; 23] = [
        Opt::Verbosity,
        Opt::EtcdServers,
        Opt::EtcdRequestTimeout,
        Opt::EtcdCafile,
        Opt::EtcdCertfile,
        Opt::EtcdKeyfile,
        Opt::EtcdUsername,
        Opt::EtcdPassword,
        Opt::EtcdKeyPrefix,
        Opt::PublicIp,
        Opt::Metadata,
        Opt::AgentTtl,
        Opt::EngineReconcileInterval,
        Opt::TokenLimit,
        Opt::DisableEngine,
        Opt::DisableWatches,
        Opt::EnableGrpc,
        Opt::UnitsDirectory,
        Opt::SystemdUser,
        Opt::Listen,
        Opt::MachineIdFile,
        Opt::VerifyUnits,
        Opt::AuthorizedKeysFile,
    ];

    /// The name in the config file, e.g. `agent_ttl`.
    pub fn name(self) -> &'static str {
        match self {
            Opt::Verbosity => "verbosity",
            Opt::EtcdServers => "etcd_servers",
            Opt::EtcdRequestTimeout => "etcd_request_timeout",
            Opt::EtcdCafile => "etcd_cafile",
            Opt::EtcdCertfile => "etcd_certfile",
            Opt::EtcdKeyfile => "etcd_keyfile",
            Opt::EtcdUsername => "etcd_username",
            Opt::EtcdPassword => "etcd_password",
            Opt::EtcdKeyPrefix => "etcd_key_prefix",
            Opt::PublicIp => "public_ip",
            Opt::Metadata => "metadata",
            Opt::AgentTtl => "agent_ttl",
            Opt::EngineReconcileInterval => "engine_reconcile_interval",
            Opt::TokenLimit => "token_limit",
            Opt::DisableEngine => "disable_engine",
            Opt::DisableWatches => "disable_watches",
            Opt::EnableGrpc => "enable_grpc",
            Opt::UnitsDirectory => "units_directory",
            Opt::SystemdUser => "systemd_user",
            Opt::Listen => "listen",
            Opt::MachineIdFile => "machine_id_file",
            Opt::VerifyUnits => "verify_units",
            Opt::AuthorizedKeysFile => "authorized_keys_file",
        }
    }

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

impl fmt::Display for Opt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------
// Command line (clap)
// ---------------------------------------------------------------------------

/// fleetd's command line. Every option is also a flag; a flag overrides the
/// environment, which overrides the config file.
///
/// Boolean flags take an optional value, attached with `=`:
/// `--disable-engine` is `--disable-engine=true`.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Parser)]
#[command(
    name = "fleetd",
    about = "fleet daemon: systemd across a cluster",
    disable_version_flag = true
)]
pub struct Args {
    /// Config file (default /etc/fleet/fleet.conf if it exists). Must exist
    /// when given.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print the version and exit (handled by `main`).
    #[arg(long)]
    pub version: bool,
    /// Positional arguments: only `version` means anything (handled by
    /// `main`); anything else is refused, as the original did.
    #[arg(hide = true)]
    pub positional: Vec<String>,

    /// Logging: 0 is info, more is debug [default: 0].
    #[arg(long, value_name = "N")]
    pub verbosity: Option<String>,
    /// etcd endpoints, comma-separated [default: http://127.0.0.1:2379,http://127.0.0.1:4001].
    #[arg(long, value_name = "URLS")]
    pub etcd_servers: Option<String>,
    /// Per-request etcd timeout in seconds [default: 1.0].
    #[arg(long, value_name = "SECONDS")]
    pub etcd_request_timeout: Option<String>,
    /// CA certificate for TLS to etcd.
    #[arg(long, value_name = "PATH")]
    pub etcd_cafile: Option<String>,
    /// Client certificate for TLS to etcd.
    #[arg(long, value_name = "PATH")]
    pub etcd_certfile: Option<String>,
    /// Client key for TLS to etcd.
    #[arg(long, value_name = "PATH")]
    pub etcd_keyfile: Option<String>,
    /// etcd user name.
    #[arg(long, value_name = "USER")]
    pub etcd_username: Option<String>,
    /// etcd password.
    #[arg(long, value_name = "PASSWORD")]
    pub etcd_password: Option<String>,
    /// Key prefix of fleet's data in etcd [default: /_coreos.com/fleet/].
    #[arg(long, value_name = "PREFIX")]
    pub etcd_key_prefix: Option<String>,
    /// IP address published for this machine [default: auto-detected].
    #[arg(long, value_name = "IP")]
    pub public_ip: Option<String>,
    /// Machine metadata, `k=v,k2=v2`.
    #[arg(long, value_name = "PAIRS")]
    pub metadata: Option<String>,
    /// TTL of this machine's presence, as a Go duration [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub agent_ttl: Option<String>,
    /// Engine reconcile interval in seconds [default: 2.0].
    #[arg(long, value_name = "SECONDS")]
    pub engine_reconcile_interval: Option<String>,
    /// API page size [default: 100].
    #[arg(long, value_name = "N")]
    pub token_limit: Option<String>,
    /// Never run the engine on this machine.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disable_engine: Option<String>,
    /// Use no etcd watches, only timers.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disable_watches: Option<String>,
    /// Experimental gRPC mode of the original; not supported, ignored.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub enable_grpc: Option<String>,
    /// Where unit files are written [default: /run/fleet/units/].
    #[arg(long, value_name = "DIR")]
    pub units_directory: Option<String>,
    /// Drive the user manager (session bus) instead of the system manager.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub systemd_user: Option<String>,
    /// API listeners when not socket-activated: `unix:/path` or `host:port`,
    /// comma-separated [default: unix:/var/run/fleet.sock].
    #[arg(long, value_name = "ADDRS")]
    pub listen: Option<String>,
    /// File holding this machine's ID [default: /etc/machine-id].
    #[arg(long, value_name = "PATH")]
    pub machine_id_file: Option<String>,
    /// Deprecated and ignored.
    #[arg(long, value_name = "BOOL", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub verify_units: Option<String>,
    /// Deprecated and ignored.
    #[arg(long, value_name = "PATH", hide = true)]
    pub authorized_keys_file: Option<String>,
}

impl Args {
    /// Whether the user asked for the version (`--version`, or the positional
    /// `version` of the original).
    pub fn wants_version(&self) -> bool {
        self.version || self.positional.iter().any(|a| a == "version")
    }

    /// The raw value of an option's flag, if given.
    pub fn flag_value(&self, opt: Opt) -> Option<&str> {
        let v = match opt {
            Opt::Verbosity => &self.verbosity,
            Opt::EtcdServers => &self.etcd_servers,
            Opt::EtcdRequestTimeout => &self.etcd_request_timeout,
            Opt::EtcdCafile => &self.etcd_cafile,
            Opt::EtcdCertfile => &self.etcd_certfile,
            Opt::EtcdKeyfile => &self.etcd_keyfile,
            Opt::EtcdUsername => &self.etcd_username,
            Opt::EtcdPassword => &self.etcd_password,
            Opt::EtcdKeyPrefix => &self.etcd_key_prefix,
            Opt::PublicIp => &self.public_ip,
            Opt::Metadata => &self.metadata,
            Opt::AgentTtl => &self.agent_ttl,
            Opt::EngineReconcileInterval => &self.engine_reconcile_interval,
            Opt::TokenLimit => &self.token_limit,
            Opt::DisableEngine => &self.disable_engine,
            Opt::DisableWatches => &self.disable_watches,
            Opt::EnableGrpc => &self.enable_grpc,
            Opt::UnitsDirectory => &self.units_directory,
            Opt::SystemdUser => &self.systemd_user,
            Opt::Listen => &self.listen,
            Opt::MachineIdFile => &self.machine_id_file,
            Opt::VerifyUnits => &self.verify_units,
            Opt::AuthorizedKeysFile => &self.authorized_keys_file,
        };
        v.as_deref()
    }
}

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

    /// Reads the options of a config file's text (`path` is for messages).
    /// Options are top level; a later line overrides an earlier one.
    pub fn read_file_text(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let opts = ini::ParseOption {
            // Quotes are stripped below, only around the whole value: the
            // parser's own quote handling also drops quotes in the middle.
            enabled_quote: false,
            // Backslashes are literal (paths, passwords).
            enabled_escape: false,
            ..ini::ParseOption::default()
        };
        let parsed =
            ini::Ini::load_from_str_opt(text, opts).map_err(|cause| ConfigError::ParseFile {
                path: path.to_path_buf(),
                cause,
            })?;
        let lines = key_lines(text);
        for (section, props) in &parsed {
            if let Some(section) = section {
                if !props.is_empty() {
                    self.warnings.push(format!(
                        "section [{section}] in {} ignored: fleet options are top level",
                        path.display()
                    ));
                }
                continue;
            }
            for (key, value) in props {
                match Opt::from_name(key) {
                    Some(opt) => self.set(
                        opt,
                        unquote(value).to_owned(),
                        Origin::File {
                            path: path.to_path_buf(),
                            line: lines.get(key).copied(),
                        },
                    ),
                    None => self.warnings.push(format!(
                        "unknown option {key:?} in {} ignored",
                        path.display()
                    )),
                }
            }
        }
        Ok(())
    }

    fn set(&mut self, opt: Opt, value: String, origin: Origin) {
        self.values.insert(opt, RawValue { value, origin });
    }
}

/// The 1-based line of the last top-level `key=value` (or `key: value`) of
/// each key in a config file's text: the line whose value wins, as a later
/// line overrides an earlier one. Lines inside a `[section]` are not
/// counted, nor comments.
fn key_lines(text: &str) -> BTreeMap<&str, usize> {
    let mut lines = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            // Every option after the first section header is in a section.
            break;
        }
        if line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(end) = line.find(['=', ':']) {
            lines.insert(line[..end].trim(), i + 1);
        }
    }
    lines
}

/// Strips one pair of matching quotes around the whole value.
fn unquote(value: &str) -> &str {
    let value = value.trim();
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return &value[1..value.len() - 1];
        }
    }
    value
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

/// fleetd's validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `verbosity`: 0 logs at info, anything above at debug.
    pub verbosity: u8,
    /// `etcd_servers`: the etcd endpoints the client connects to.
    pub etcd_servers: Vec<String>,
    /// `etcd_request_timeout`: how long one etcd request may take.
    pub etcd_request_timeout: Duration,
    /// `etcd_cafile`: CA certificate for TLS to etcd (none: system roots or
    /// plain HTTP, depending on the endpoints' scheme).
    pub etcd_cafile: Option<PathBuf>,
    /// `etcd_certfile`: client certificate for TLS to etcd.
    pub etcd_certfile: Option<PathBuf>,
    /// `etcd_keyfile`: client key for TLS to etcd.
    pub etcd_keyfile: Option<PathBuf>,
    /// `etcd_username`: etcd authentication, if any.
    pub etcd_username: Option<String>,
    /// `etcd_password`: goes with `etcd_username`.
    pub etcd_password: Option<String>,
    /// `etcd_key_prefix`: where fleet's keys live in etcd.
    pub etcd_key_prefix: String,
    /// `public_ip`: the IP published for this machine (none: auto-detect).
    pub public_ip: Option<IpAddr>,
    /// `metadata`: this machine's config metadata, matched by
    /// `MachineMetadata=` (dynamic metadata from the API is merged over it).
    pub metadata: BTreeMap<String, String>,
    /// `agent_ttl`: lifetime of the machine's presence without a heartbeat;
    /// also the TTL of its unit states.
    pub agent_ttl: Duration,
    /// `engine_reconcile_interval`: the engine's tick; its leadership lease
    /// lives 5 times as long.
    pub engine_reconcile_interval: Duration,
    /// `token_limit`: the API's page size.
    pub token_limit: u16,
    /// `disable_engine`: this machine never leads the engine.
    pub disable_engine: bool,
    /// `disable_watches`: rely on timers only, no etcd watches.
    pub disable_watches: bool,
    /// `enable_grpc`: accepted for compatibility; the gRPC mode is not
    /// implemented, so this only produces a warning when set.
    pub enable_grpc: bool,
    /// `units_directory`: where the agent writes unit files.
    pub units_directory: PathBuf,
    /// `systemd_user`: drive the user manager over the session bus.
    pub systemd_user: bool,
    /// `listen`: API listeners when not socket-activated (ignored when
    /// `LISTEN_FDS` hands us sockets).
    pub listen: Vec<ListenAddr>,
    /// `machine_id_file`: where this machine's ID is read from.
    pub machine_id_file: PathBuf,
    /// The config file that was read, if any (for SIGHUP reloads and logs).
    pub config_file: Option<PathBuf>,
    /// Non-fatal problems (deprecated or unknown options, skipped metadata
    /// pairs), for the caller to log once the logger is up.
    pub warnings: Vec<String>,
}

/// Default `etcd_servers`.
pub const DEFAULT_ETCD_SERVERS: &str = "http://127.0.0.1:2379,http://127.0.0.1:4001";
/// Default `etcd_key_prefix`.
pub const DEFAULT_ETCD_KEY_PREFIX: &str = "/_coreos.com/fleet/";
/// Default `units_directory`.
pub const DEFAULT_UNITS_DIRECTORY: &str = "/run/fleet/units/";
/// Default `listen`.
pub const DEFAULT_LISTEN: &str = "unix:/var/run/fleet.sock";
/// Default `machine_id_file`.
pub const DEFAULT_MACHINE_ID_FILE: &str = "/etc/machine-id";

impl Default for Config {
    fn default() -> Self {
        Config {
            verbosity: 0,
            etcd_servers: DEFAULT_ETCD_SERVERS.split(',').map(str::to_owned).collect(),
            etcd_request_timeout: Duration::from_secs(1),
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            etcd_username: None,
            etcd_password: None,
            etcd_key_prefix: DEFAULT_ETCD_KEY_PREFIX.to_owned(),
            public_ip: None,
            metadata: BTreeMap::new(),
            agent_ttl: Duration::from_secs(30),
            engine_reconcile_interval: Duration::from_secs(2),
            token_limit: 100,
            disable_engine: false,
            disable_watches: false,
            enable_grpc: false,
            units_directory: PathBuf::from(DEFAULT_UNITS_DIRECTORY),
            systemd_user: false,
            listen: vec![ListenAddr::Unix(PathBuf::from("/var/run/fleet.sock"))],
            machine_id_file: PathBuf::from(DEFAULT_MACHINE_ID_FILE),
            config_file: None,
            warnings: Vec::new(),
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
            let bad = |reason: ValueError| ConfigError::InvalidValue {
                option: opt,
                value: raw.value.clone(),
                origin: raw.origin.clone(),
                reason,
            };
            let v = raw.value.as_str();
            match opt {
                Opt::Verbosity => c.verbosity = parse_verbosity(v).map_err(bad)?,
                Opt::EtcdServers => c.etcd_servers = parse_etcd_servers(v).map_err(bad)?,
                Opt::EtcdRequestTimeout => {
                    c.etcd_request_timeout =
                        parse_seconds(v, ETCD_REQUEST_TIMEOUT_RANGE).map_err(bad)?;
                }
                Opt::EtcdCafile => c.etcd_cafile = non_empty(v).map(PathBuf::from),
                Opt::EtcdCertfile => c.etcd_certfile = non_empty(v).map(PathBuf::from),
                Opt::EtcdKeyfile => c.etcd_keyfile = non_empty(v).map(PathBuf::from),
                Opt::EtcdUsername => c.etcd_username = non_empty(v).map(str::to_owned),
                Opt::EtcdPassword => c.etcd_password = non_empty(v).map(str::to_owned),
                Opt::EtcdKeyPrefix => c.etcd_key_prefix = v.to_owned(),
                Opt::PublicIp => c.public_ip = parse_ip(v).map_err(bad)?,
                Opt::Metadata => {
                    let (metadata, skipped) = parse_metadata(v);
                    c.metadata = metadata;
                    warnings.extend(skipped.into_iter().map(|pair| {
                        format!(
                            "metadata pair {pair:?} in {} skipped: not key=value",
                            raw.origin
                        )
                    }));
                }
                Opt::AgentTtl => {
                    c.agent_ttl = parse_duration_in(v, AGENT_TTL_RANGE).map_err(bad)?;
                }
                Opt::EngineReconcileInterval => {
                    c.engine_reconcile_interval =
                        parse_seconds(v, ENGINE_RECONCILE_INTERVAL_RANGE).map_err(bad)?;
                }
                Opt::TokenLimit => c.token_limit = parse_token_limit(v).map_err(bad)?,
                Opt::DisableEngine => c.disable_engine = parse_bool(v).map_err(bad)?,
                Opt::DisableWatches => c.disable_watches = parse_bool(v).map_err(bad)?,
                Opt::EnableGrpc => {
                    c.enable_grpc = parse_bool(v).map_err(bad)?;
                    if c.enable_grpc {
                        warnings.push(format!(
                            "enable_grpc (in {}) is not supported and is ignored",
                            raw.origin
                        ));
                    }
                }
                Opt::UnitsDirectory => c.units_directory = parse_path(v).map_err(bad)?,
                Opt::SystemdUser => c.systemd_user = parse_bool(v).map_err(bad)?,
                Opt::Listen => c.listen = parse_listen(v).map_err(bad)?,
                Opt::MachineIdFile => c.machine_id_file = parse_path(v).map_err(bad)?,
                Opt::VerifyUnits | Opt::AuthorizedKeysFile => warnings.push(format!(
                    "{opt} (in {}) is deprecated and ignored",
                    raw.origin
                )),
            }
        }
        c.warnings = warnings;
        Ok(c)
    }

    /// TTL of the engine leadership lease: 5 × `engine_reconcile_interval`.
    pub fn engine_lease_ttl(&self) -> Duration {
        self.engine_reconcile_interval.saturating_mul(5)
    }
}

// ---------------------------------------------------------------------------
// Value parsers
// ---------------------------------------------------------------------------

/// Why a value was refused. The option, value and origin are in the
/// enclosing [`ConfigError::InvalidValue`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// Not a non-negative integer in range.
    #[error("not an integer between {min} and {max}")]
    Integer {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// Not a number of seconds in range.
    #[error(
        "not a number of seconds between {} and {} (e.g. 2 or 0.5)",
        range.0.as_secs_f64(),
        range.1.as_secs_f64()
    )]
    Seconds {
        /// The accepted range, inclusive.
        range: (Duration, Duration),
    },
    /// Not a Go duration.
    #[error("{0}")]
    Duration(String),
    /// A duration outside the accepted range.
    #[error("must be between {} and {}", go_duration(range.0), go_duration(range.1))]
    DurationRange {
        /// The accepted range, inclusive.
        range: (Duration, Duration),
    },
    /// Not a boolean.
    #[error("not a boolean (true/false, 1/0, yes/no, on/off, t/f)")]
    Bool,
    /// Not an IP address.
    #[error("not an IP address")]
    Ip,
    /// An empty value where one is required.
    #[error("must not be empty")]
    Empty,
    /// No etcd endpoint left after splitting.
    #[error("no etcd server given")]
    NoEtcdServers,
    /// A bad `listen` entry.
    #[error("bad listen address {0:?}: expected unix:/path or host:port")]
    Listen(String),
}

fn non_empty(v: &str) -> Option<&str> {
    let v = v.trim();
    (!v.is_empty()).then_some(v)
}

/// `verbosity`: 0..=255.
fn parse_verbosity(v: &str) -> Result<u8, ValueError> {
    v.trim().parse().map_err(|_| ValueError::Integer {
        min: 0,
        max: u8::MAX.into(),
    })
}

/// `token_limit`: 1..=65535.
fn parse_token_limit(v: &str) -> Result<u16, ValueError> {
    let err = ValueError::Integer {
        min: 1,
        max: u16::MAX.into(),
    };
    match v.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(err),
        Ok(n) => Ok(n),
    }
}

/// `etcd_request_timeout`: 10 ms to 5 min. Below, every request times out
/// before etcd can answer; above, a dead etcd stalls every loop for longer
/// than any lease (`agent_ttl`) lives.
pub const ETCD_REQUEST_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(300));

/// `engine_reconcile_interval`: 10 ms to 1 h. The interval feeds
/// `tokio::time::interval` (which panics on zero) and the leadership lease
/// (5 × the interval), so a value that rounds to zero or overflows an
/// `Instant` must never get that far; an hour already leaves a lost leader
/// unnoticed for five.
pub const ENGINE_RECONCILE_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(3600));

/// `agent_ttl`: 1 s to 24 h. etcd leases are whole seconds, the heart beats
/// every TTL/3 and the publisher every TTL/2, and a dead machine is noticed
/// only after one TTL.
pub const AGENT_TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));

/// A number of seconds (Go's `strconv.ParseFloat`) within `range`: NaN,
/// infinities, negative values, values that round to less than the minimum
/// (`1e-10`) and huge ones are all refused.
fn parse_seconds(v: &str, range: (Duration, Duration)) -> Result<Duration, ValueError> {
    let bad = ValueError::Seconds { range };
    let secs: f64 = v.trim().parse().map_err(|_| bad.clone())?;
    if !secs.is_finite() {
        return Err(bad);
    }
    let d = Duration::try_from_secs_f64(secs).map_err(|_| bad.clone())?;
    if d < range.0 || d > range.1 {
        return Err(bad);
    }
    Ok(d)
}

/// A Go duration within `range`.
fn parse_duration_in(v: &str, range: (Duration, Duration)) -> Result<Duration, ValueError> {
    let d = parse_go_duration(v.trim()).map_err(ValueError::Duration)?;
    if d < range.0 || d > range.1 {
        return Err(ValueError::DurationRange { range });
    }
    Ok(d)
}

/// A duration as a Go duration string, for messages: the largest unit that
/// divides it (`10ms`, `1s`, `24h`), else seconds with a fraction.
fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    for (unit, per) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if nanos != 0 && nanos.is_multiple_of(per) {
            return format!("{}{unit}", nanos / per);
        }
    }
    format!("{nanos}ns")
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers, each with an
/// optional fraction and a unit (`ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`),
/// e.g. `30s`, `1m30s`, `1.5h`, `500ms`; `0` alone is allowed. Negative
/// durations are refused (no option wants one).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("not a duration (e.g. 30s, 1m30s, 500ms): {s:?}");
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err("must not be negative".to_owned());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration {s:?}")),
            other => return Err(format!("unknown unit {other:?} in duration {s:?}")),
        };
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut value = int.checked_mul(nanos_per).ok_or_else(bad)?;
        // The fraction, digit by digit, truncated like Go.
        let mut scale = nanos_per;
        for d in frac.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            value += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(value).ok_or_else(bad)?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad())?;
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, nanos))
}

/// A boolean. The original used Go's `strconv.ParseBool` (`1 t T TRUE true
/// True 0 f F FALSE false False`); we accept those in any case, plus
/// `yes/no/on/off`.
fn parse_bool(v: &str) -> Result<bool, ValueError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "y" | "on" => Ok(true),
        "0" | "f" | "false" | "no" | "n" | "off" => Ok(false),
        _ => Err(ValueError::Bool),
    }
}

fn parse_ip(v: &str) -> Result<Option<IpAddr>, ValueError> {
    match non_empty(v) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| ValueError::Ip),
    }
}

fn parse_path(v: &str) -> Result<PathBuf, ValueError> {
    non_empty(v).map(PathBuf::from).ok_or(ValueError::Empty)
}

/// `etcd_servers`: split on commas; each item loses leading ` ["` and
/// trailing ` "]` characters, so a JSON-ish list works too. Empty items are
/// dropped; at least one must remain.
pub fn parse_etcd_servers(v: &str) -> Result<Vec<String>, ValueError> {
    let servers: Vec<String> = v
        .split(',')
        .map(|s| {
            s.trim_start_matches([' ', '[', '"'])
                .trim_end_matches([' ', '"', ']'])
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        return Err(ValueError::NoEtcdServers);
    }
    Ok(servers)
}

/// `metadata`: `k=v,k2=v2`, spaces around keys and values trimmed, a later
/// duplicate wins. Pairs without `=` or with an empty key are skipped and
/// returned as the second element (empty items, e.g. a trailing comma, are
/// dropped silently).
pub fn parse_metadata(v: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut map = BTreeMap::new();
    let mut skipped = Vec::new();
    for pair in v.split(',') {
        if pair.trim().is_empty() {
            continue;
        }
        match pair.split_once('=') {
            Some((k, val)) if !k.trim().is_empty() => {
                map.insert(k.trim().to_owned(), val.trim().to_owned());
            }
            _ => skipped.push(pair.trim().to_owned()),
        }
    }
    (map, skipped)
}

/// `listen`: comma-separated `unix:/path` or `host:port` (an empty value
/// means no listener of our own: socket activation only).
pub fn parse_listen(v: &str) -> Result<Vec<ListenAddr>, ValueError> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_listen_addr)
        .collect()
}

fn parse_listen_addr(s: &str) -> Result<ListenAddr, ValueError> {
    let bad = || ValueError::Listen(s.to_owned());
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(bad());
        }
        return Ok(ListenAddr::Unix(PathBuf::from(path)));
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or_else(bad)?,
        // An unbracketed IPv6 literal is ambiguous (`::1:80`).
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(ListenAddr::Tcp {
        host: host.to_owned(),
        port,
    })
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::error::Error as _;

    use clap::Parser as _;

    use super::*;

    /// The message, which must be the whole story: no `source()` (the
    /// cause is in the message, never both).
    fn chain(e: &ConfigError) -> String {
        assert!(e.source().is_none(), "{e:?} has a source");
        e.to_string()
    }

    fn args(flags: &[&str]) -> Args {
        let mut v = vec!["fleetd"];
        v.extend_from_slice(flags);
        Args::try_parse_from(v).expect("test flags parse")
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// A temp dir with a config file holding `text`.
    fn conf(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fleet.conf");
        std::fs::write(&path, text).expect("write conf");
        (dir, path)
    }

    /// Loads with no default file.
    fn load_t(a: &Args, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        load_from(a, env, Path::new("/nonexistent/fleet.conf"))
    }

    fn load_file(text: &str) -> Result<Config, ConfigError> {
        let (_dir, path) = conf(text);
        let a = args(&["--config", path.to_str().expect("utf-8 path")]);
        load_t(&a, no_env)
    }

    fn load_env(var: &str, value: &str) -> Result<Config, ConfigError> {
        load_t(&args(&[]), env_of(&[(var, value)]))
    }

    fn load_flags(flags: &[&str]) -> Result<Config, ConfigError> {
        load_t(&args(flags), no_env)
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = load_flags(&[]).expect("defaults load");
        assert_eq!(c.verbosity, 0);
        assert_eq!(
            c.etcd_servers,
            ["http://127.0.0.1:2379", "http://127.0.0.1:4001"]
        );
        assert_eq!(c.etcd_request_timeout, Duration::from_secs(1));
        assert_eq!(
            (
                c.etcd_cafile.clone(),
                c.etcd_certfile.clone(),
                c.etcd_keyfile.clone()
            ),
            (None, None, None)
        );
        assert_eq!(
            (c.etcd_username.clone(), c.etcd_password.clone()),
            (None, None)
        );
        assert_eq!(c.etcd_key_prefix, "/_coreos.com/fleet/");
        assert_eq!(c.public_ip, None);
        assert!(c.metadata.is_empty());
        assert_eq!(c.agent_ttl, Duration::from_secs(30));
        assert_eq!(c.engine_reconcile_interval, Duration::from_secs(2));
        assert_eq!(c.engine_lease_ttl(), Duration::from_secs(10));
        assert_eq!(c.token_limit, 100);
        assert!(!c.disable_engine && !c.disable_watches && !c.enable_grpc && !c.systemd_user);
        assert_eq!(c.units_directory, PathBuf::from("/run/fleet/units/"));
        assert_eq!(c.listen, [ListenAddr::Unix("/var/run/fleet.sock".into())]);
        assert_eq!(c.machine_id_file, PathBuf::from("/etc/machine-id"));
        assert_eq!(c.config_file, None);
        assert!(c.warnings.is_empty());
        assert_eq!(c, Config::default());
    }

    /// Every option set through each of the three sources gives the same
    /// typed value.
    #[test]
    fn every_option_from_every_source() {
        type Check = fn(&Config) -> bool;
        let cases: &[(Opt, &str, Check)] = &[
            (Opt::Verbosity, "2", |c| c.verbosity == 2),
            (Opt::EtcdServers, "http://a:2379,http://b:2379", |c| {
                c.etcd_servers == ["http://a:2379", "http://b:2379"]
            }),
            (Opt::EtcdRequestTimeout, "2.5", |c| {
                c.etcd_request_timeout == Duration::from_millis(2500)
            }),
            (Opt::EtcdCafile, "/ca.pem", |c| {
                c.etcd_cafile == Some("/ca.pem".into())
            }),
            (Opt::EtcdCertfile, "/cert.pem", |c| {
                c.etcd_certfile == Some("/cert.pem".into())
            }),
            (Opt::EtcdKeyfile, "/key.pem", |c| {
                c.etcd_keyfile == Some("/key.pem".into())
            }),
            (Opt::EtcdUsername, "root", |c| {
                c.etcd_username.as_deref() == Some("root")
            }),
            (Opt::EtcdPassword, "s3cret", |c| {
                c.etcd_password.as_deref() == Some("s3cret")
            }),
            (Opt::EtcdKeyPrefix, "/other/", |c| {
                c.etcd_key_prefix == "/other/"
            }),
            (Opt::PublicIp, "10.0.0.7", |c| {
                c.public_ip == Some("10.0.0.7".parse().expect("ip"))
            }),
            (Opt::Metadata, "region=us-east,role=web", |c| {
                c.metadata
                    == BTreeMap::from([
                        ("region".into(), "us-east".into()),
                        ("role".into(), "web".into()),
                    ])
            }),
            (Opt::AgentTtl, "1m30s", |c| {
                c.agent_ttl == Duration::from_secs(90)
            }),
            (Opt::EngineReconcileInterval, "0.5", |c| {
                c.engine_reconcile_interval == Duration::from_millis(500)
                    && c.engine_lease_ttl() == Duration::from_millis(2500)
            }),
            (Opt::TokenLimit, "25", |c| c.token_limit == 25),
            (Opt::DisableEngine, "true", |c| c.disable_engine),
            (Opt::DisableWatches, "1", |c| c.disable_watches),
            (Opt::EnableGrpc, "yes", |c| {
                c.enable_grpc && c.warnings.iter().any(|w| w.contains("enable_grpc"))
            }),
            (Opt::UnitsDirectory, "/tmp/units", |c| {
                c.units_directory == Path::new("/tmp/units")
            }),
            (Opt::SystemdUser, "t", |c| c.systemd_user),
            (Opt::Listen, "unix:/run/f.sock,127.0.0.1:8080", |c| {
                c.listen
                    == [
                        ListenAddr::Unix("/run/f.sock".into()),
                        ListenAddr::Tcp {
                            host: "127.0.0.1".into(),
                            port: 8080,
                        },
                    ]
            }),
            (Opt::MachineIdFile, "/tmp/mid", |c| {
                c.machine_id_file == Path::new("/tmp/mid")
            }),
            (Opt::VerifyUnits, "true", |c| {
                c.warnings
                    .iter()
                    .any(|w| w.contains("verify_units") && w.contains("deprecated"))
            }),
            (Opt::AuthorizedKeysFile, "/root/.ssh/authorized_keys", |c| {
                c.warnings
                    .iter()
                    .any(|w| w.contains("authorized_keys_file") && w.contains("deprecated"))
            }),
        ];
        assert_eq!(cases.len(), Opt::ALL.len(), "one case per option");
        for (opt, value, check) in cases {
            let from_file = load_file(&format!("{}={value}\n", opt.name())).expect("file loads");
            assert!(check(&from_file), "{opt} from file: {from_file:?}");
            let from_env = load_env(&opt.env_var(), value).expect("env loads");
            assert!(check(&from_env), "{opt} from env: {from_env:?}");
            let flag = format!("{}={value}", opt.flag());
            let from_flag = load_flags(&[flag.as_str()]).expect("flag loads");
            assert!(check(&from_flag), "{opt} from flag: {from_flag:?}");
        }
    }

    #[test]
    fn names_env_vars_and_flags() {
        assert_eq!(Opt::AgentTtl.env_var(), "FLEET_AGENT_TTL");
        assert_eq!(Opt::EtcdServers.flag(), "--etcd-servers");
        assert_eq!(
            Opt::from_name("engine_reconcile_interval"),
            Some(Opt::EngineReconcileInterval)
        );
        assert_eq!(Opt::from_name("nope"), None);
        for opt in Opt::ALL {
            assert_eq!(Opt::from_name(opt.name()), Some(opt));
        }
    }

    #[test]
    fn env_overrides_file_and_flag_overrides_both() {
        let (_dir, path) = conf("agent_ttl=10s\nverbosity=1\ntoken_limit=7\n");
        let p = path.to_str().expect("utf-8 path");
        let env = env_of(&[("FLEET_AGENT_TTL", "20s"), ("FLEET_VERBOSITY", "2")]);
        let c = load_t(&args(&["--config", p, "--agent-ttl", "40s"]), env).expect("loads");
        assert_eq!(c.agent_ttl, Duration::from_secs(40), "flag wins");
        assert_eq!(c.verbosity, 2, "env beats file");
        assert_eq!(c.token_limit, 7, "file beats default");
        assert_eq!(c.config_file.as_deref(), Some(path.as_path()));
    }

    #[test]
    fn a_bad_value_in_a_lower_source_is_ignored_when_overridden() {
        let (_dir, path) = conf("agent_ttl=garbage\n");
        let p = path.to_str().expect("utf-8 path");
        let c = load_t(
            &args(&["--config", p]),
            env_of(&[("FLEET_AGENT_TTL", "5s")]),
        )
        .expect("env overrides");
        assert_eq!(c.agent_ttl, Duration::from_secs(5));
    }

    #[test]
    fn the_default_file_is_read_only_if_it_exists() {
        let (_dir, path) = conf("metadata=a=b\n");
        let c = load_from(&args(&[]), no_env, &path).expect("default file loads");
        assert_eq!(c.metadata.get("a").map(String::as_str), Some("b"));
        assert_eq!(c.config_file.as_deref(), Some(path.as_path()));
        let c = load_from(&args(&[]), no_env, Path::new("/nonexistent/x.conf"))
            .expect("no file is fine");
        assert_eq!(c.config_file, None);
    }

    #[test]
    fn an_explicit_config_must_exist_and_not_be_a_directory() {
        let e = load_flags(&["--config", "/nonexistent/fleet.conf"]).expect_err("missing file");
        assert!(matches!(e, ConfigError::ReadFile { .. }));
        assert!(
            chain(&e).starts_with("cannot read config file /nonexistent/fleet.conf: "),
            "{}",
            chain(&e)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_str().expect("utf-8 path");
        let e = load_flags(&["--config", d]).expect_err("directory");
        assert_eq!(chain(&e), format!("config file {d} is a directory"));
    }

    #[test]
    fn file_syntax_quotes_comments_unknown_keys_and_sections() {
        let c = load_file(
            "# comment\n; another\n\nmetadata = \"region=us-east, role = web\"\npublic_ip='10.1.2.3'\n\
             etcd_servers=[\"http://a:2379\",\"http://b:2379\"]\nbogus=1\nagent_ttl=5s\nagent_ttl=6s\n\
             [section]\nverbosity=3\n",
        )
        .expect("loads");
        assert_eq!(
            c.metadata,
            BTreeMap::from([
                ("region".into(), "us-east".into()),
                ("role".into(), "web".into())
            ])
        );
        assert_eq!(c.public_ip, Some("10.1.2.3".parse().expect("ip")));
        assert_eq!(c.etcd_servers, ["http://a:2379", "http://b:2379"]);
        assert_eq!(c.agent_ttl, Duration::from_secs(6), "a later line wins");
        assert_eq!(c.verbosity, 0, "options inside a section are ignored");
        assert!(
            c.warnings
                .iter()
                .any(|w| w.starts_with("unknown option \"bogus\" in ")),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.starts_with("section [section] in ")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn a_malformed_file_is_an_error_with_its_path() {
        let (_dir, path) = conf("[unclosed\nverbosity=1\n");
        let p = path.to_str().expect("utf-8 path");
        let e = load_t(&args(&["--config", p]), no_env).expect_err("malformed");
        assert!(matches!(e, ConfigError::ParseFile { .. }));
        assert!(
            chain(&e).starts_with(&format!("cannot parse config file {p}: ")),
            "{}",
            chain(&e)
        );
    }

    #[test]
    fn error_messages_name_option_value_and_source() {
        let (_dir, path) = conf("agent_ttl=abc\n");
        let p = path.to_str().expect("utf-8 path");
        let e = load_t(&args(&["--config", p]), no_env).expect_err("bad ttl");
        assert_eq!(
            chain(&e),
            format!(
                "invalid value \"abc\" for agent_ttl in {p}:1: not a duration (e.g. 30s, 1m30s, 500ms): \"abc\""
            )
        );
        let e = load_env("FLEET_AGENT_TTL", "abc").expect_err("bad ttl");
        assert_eq!(
            chain(&e),
            "invalid value \"abc\" for agent_ttl in environment variable FLEET_AGENT_TTL: \
             not a duration (e.g. 30s, 1m30s, 500ms): \"abc\""
        );
        let e = load_flags(&["--agent-ttl", "abc"]).expect_err("bad ttl");
        assert_eq!(
            chain(&e),
            "invalid value \"abc\" for agent_ttl in flag --agent-ttl: \
             not a duration (e.g. 30s, 1m30s, 500ms): \"abc\""
        );
        let ConfigError::InvalidValue { option, origin, .. } = e else {
            panic!("expected InvalidValue, got {e:?}");
        };
        assert_eq!(option, Opt::AgentTtl);
        assert_eq!(origin, Origin::Flag("--agent-ttl".into()));
    }

    const ETCD_SECS: &str = "not a number of seconds between 0.01 and 300 (e.g. 2 or 0.5)";
    const ENGINE_SECS: &str = "not a number of seconds between 0.01 and 3600 (e.g. 2 or 0.5)";

    /// Every value of a numeric or duration option that would panic or
    /// misbehave at run time (zero intervals, sub-nanosecond or negative
    /// seconds, NaN, infinities, `Instant` overflows) is refused at load
    /// time, from each of the three sources, naming the option, the source
    /// (with the file's line) and the accepted range.
    #[test]
    fn out_of_range_values_are_refused_from_every_source() {
        const TTL: &str = "must be between 1s and 24h";
        const INT: &str = "not an integer between 1 and 65535";
        let cases: &[(Opt, &str, &str)] = &[
            (Opt::EngineReconcileInterval, "0", ENGINE_SECS),
            (Opt::EngineReconcileInterval, "0.0", ENGINE_SECS),
            (Opt::EngineReconcileInterval, "1e-10", ENGINE_SECS),
            (Opt::EngineReconcileInterval, "0.001", ENGINE_SECS),
            (Opt::EngineReconcileInterval, "-2", ENGINE_SECS),
            (Opt::EngineReconcileInterval, "-0", ENGINE_SECS),
            (Opt::EngineReconcileInterval, "NaN", ENGINE_SECS),
            (Opt::EngineReconcileInterval, "nan", ENGINE_SECS),
            (Opt::EngineReconcileInterval, "inf", ENGINE_SECS),
            (Opt::EngineReconcileInterval, "-inf", ENGINE_SECS),
            (Opt::EngineReconcileInterval, "3600.5", ENGINE_SECS),
            (Opt::EngineReconcileInterval, "1e300", ENGINE_SECS),
            (
                Opt::EngineReconcileInterval,
                "18446744073709551616",
                ENGINE_SECS,
            ),
            (Opt::EtcdRequestTimeout, "0", ETCD_SECS),
            (Opt::EtcdRequestTimeout, "1e-10", ETCD_SECS),
            (Opt::EtcdRequestTimeout, "0.009", ETCD_SECS),
            (Opt::EtcdRequestTimeout, "-1", ETCD_SECS),
            (Opt::EtcdRequestTimeout, "NaN", ETCD_SECS),
            (Opt::EtcdRequestTimeout, "infinity", ETCD_SECS),
            (Opt::EtcdRequestTimeout, "301", ETCD_SECS),
            (Opt::EtcdRequestTimeout, "1e20", ETCD_SECS),
            (Opt::AgentTtl, "0", TTL),
            (Opt::AgentTtl, "0s", TTL),
            (Opt::AgentTtl, "1ns", TTL),
            (Opt::AgentTtl, "999ms", TTL),
            (Opt::AgentTtl, "24h0m0.001s", TTL),
            (Opt::AgentTtl, "2562047h", TTL),
            (Opt::AgentTtl, "-1s", "must not be negative"),
            (Opt::TokenLimit, "0", INT),
            (Opt::TokenLimit, "-1", INT),
            (Opt::TokenLimit, "65536", INT),
            (Opt::TokenLimit, "1e3", INT),
            (Opt::Verbosity, "256", "not an integer between 0 and 255"),
        ];
        for (opt, value, reason) in cases {
            let text = format!("# fleet\nverbosity=0\n{}={value}\n", opt.name());
            let (_dir, path) = conf(&text);
            let p = path.to_str().expect("utf-8 path");
            let e = load_t(&args(&["--config", p]), no_env).expect_err(value);
            assert_eq!(
                chain(&e),
                format!("invalid value {value:?} for {opt} in {p}:3: {reason}"),
                "{opt}={value} in a file"
            );
            let e = load_env(&opt.env_var(), value).expect_err(value);
            assert_eq!(
                chain(&e),
                format!(
                    "invalid value {value:?} for {opt} in environment variable {}: {reason}",
                    opt.env_var()
                ),
                "{opt}={value} in the environment"
            );
            let flag = format!("{}={value}", opt.flag());
            let e = load_flags(&[flag.as_str()]).expect_err(value);
            assert_eq!(
                chain(&e),
                format!(
                    "invalid value {value:?} for {opt} in flag {}: {reason}",
                    opt.flag()
                ),
                "{flag}"
            );
        }
    }

    /// The ends of each range are accepted.
    #[test]
    fn range_ends_are_accepted() {
        let c = load_flags(&[
            "--engine-reconcile-interval=0.01",
            "--etcd-request-timeout=300",
            "--agent-ttl=24h",
            "--token-limit=1",
        ])
        .expect("lower/upper ends load");
        assert_eq!(c.engine_reconcile_interval, Duration::from_millis(10));
        assert_eq!(c.etcd_request_timeout, Duration::from_secs(300));
        assert_eq!(c.agent_ttl, Duration::from_secs(24 * 3600));
        let c = load_flags(&[
            "--engine-reconcile-interval=3600",
            "--etcd-request-timeout=0.01",
            "--agent-ttl=1s",
        ])
        .expect("other ends load");
        assert_eq!(c.engine_reconcile_interval, Duration::from_secs(3600));
        assert_eq!(c.etcd_request_timeout, Duration::from_millis(10));
        assert_eq!(c.agent_ttl, Duration::from_secs(1));
    }

    #[test]
    fn file_lines_are_those_of_the_winning_top_level_key() {
        let lines = key_lines(
            "# c\n; c\nagent_ttl=1s\n verbosity : 2\nagent_ttl = 2s\n[s]\nmetadata=a=b\n",
        );
        assert_eq!(lines, BTreeMap::from([("agent_ttl", 5), ("verbosity", 4)]));
    }

    /// Every kind of bad value, with its full message.
    #[test]
    fn every_invalid_value_message() {
        let cases: &[(&str, &str, &str)] = &[
            ("--verbosity", "-1", "not an integer between 0 and 255"),
            ("--verbosity", "256", "not an integer between 0 and 255"),
            ("--verbosity", "x", "not an integer between 0 and 255"),
            ("--etcd-servers", " , ", "no etcd server given"),
            ("--etcd-servers", "[\"\"]", "no etcd server given"),
            ("--etcd-request-timeout", "0", ETCD_SECS),
            ("--etcd-request-timeout", "-1", ETCD_SECS),
            ("--etcd-request-timeout", "inf", ETCD_SECS),
            ("--etcd-request-timeout", "1s", ETCD_SECS),
            ("--public-ip", "10.0.0", "not an IP address"),
            ("--agent-ttl", "30", "missing unit in duration \"30\""),
            (
                "--agent-ttl",
                "30x",
                "unknown unit \"x\" in duration \"30x\"",
            ),
            ("--agent-ttl", "-5s", "must not be negative"),
            ("--agent-ttl", "0", "must be between 1s and 24h"),
            ("--agent-ttl", "0s", "must be between 1s and 24h"),
            (
                "--agent-ttl",
                "",
                "not a duration (e.g. 30s, 1m30s, 500ms): \"\"",
            ),
            ("--engine-reconcile-interval", "0", ENGINE_SECS),
            ("--engine-reconcile-interval", "two", ENGINE_SECS),
            ("--token-limit", "0", "not an integer between 1 and 65535"),
            (
                "--token-limit",
                "65536",
                "not an integer between 1 and 65535",
            ),
            (
                "--disable-engine",
                "maybe",
                "not a boolean (true/false, 1/0, yes/no, on/off, t/f)",
            ),
            (
                "--disable-watches",
                "2",
                "not a boolean (true/false, 1/0, yes/no, on/off, t/f)",
            ),
            (
                "--enable-grpc",
                "",
                "not a boolean (true/false, 1/0, yes/no, on/off, t/f)",
            ),
            (
                "--systemd-user",
                "nope",
                "not a boolean (true/false, 1/0, yes/no, on/off, t/f)",
            ),
            ("--units-directory", " ", "must not be empty"),
            ("--machine-id-file", "", "must not be empty"),
            (
                "--listen",
                "unix:",
                "bad listen address \"unix:\": expected unix:/path or host:port",
            ),
            (
                "--listen",
                "localhost",
                "bad listen address \"localhost\": expected unix:/path or host:port",
            ),
            (
                "--listen",
                "host:99999",
                "bad listen address \"host:99999\": expected unix:/path or host:port",
            ),
            (
                "--listen",
                "::1:80",
                "bad listen address \"::1:80\": expected unix:/path or host:port",
            ),
            (
                "--listen",
                ":80",
                "bad listen address \":80\": expected unix:/path or host:port",
            ),
        ];
        for (flag, value, reason) in cases {
            let arg = format!("{flag}={value}");
            let e = load_flags(&[arg.as_str()]).expect_err(&arg);
            let option = flag.trim_start_matches('-').replace('-', "_");
            assert_eq!(
                chain(&e),
                format!("invalid value {value:?} for {option} in flag {flag}: {reason}"),
                "{arg}"
            );
        }
    }

    #[test]
    fn go_durations() {
        let ok: &[(&str, Duration)] = &[
            ("30s", Duration::from_secs(30)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("2h", Duration::from_secs(7200)),
            ("1.5h", Duration::from_secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("+10s", Duration::from_secs(10)),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("3µs", Duration::from_micros(3)),
            ("3μs", Duration::from_micros(3)),
            ("0", Duration::ZERO),
            ("1.0000000001s", Duration::from_secs(1)),
        ];
        for (s, d) in ok {
            assert_eq!(parse_go_duration(s).as_ref(), Ok(d), "{s}");
        }
        for s in [
            "",
            "s",
            "1",
            "1x",
            "1s2",
            ".s",
            "-1s",
            "1 s",
            "99999999999999999999h",
        ] {
            assert!(parse_go_duration(s).is_err(), "{s} must be refused");
        }
    }

    #[test]
    fn booleans() {
        for t in ["1", "t", "T", "TRUE", "true", "True", "yes", "on", "Y"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False", "no", "off", "N"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        assert_eq!(parse_bool("2"), Err(ValueError::Bool));
    }

    #[test]
    fn bool_flags_take_an_optional_attached_value() {
        assert!(
            load_flags(&["--disable-engine"])
                .expect("bare flag")
                .disable_engine
        );
        assert!(
            !load_flags(&["--disable-engine=false"])
                .expect("=false")
                .disable_engine
        );
        let env = env_of(&[("FLEET_DISABLE_ENGINE", "true")]);
        assert!(
            !load_t(&args(&["--disable-engine=0"]), env)
                .expect("flag wins")
                .disable_engine
        );
    }

    #[test]
    fn etcd_servers_strip_brackets_and_quotes() {
        let s = |v: &str| parse_etcd_servers(v).expect("servers");
        assert_eq!(s("http://a:2379"), ["http://a:2379"]);
        assert_eq!(
            s("[\"http://a:2379\",\"http://b:2379\"]"),
            ["http://a:2379", "http://b:2379"]
        );
        assert_eq!(
            s(" [\"http://a:2379\", \"http://b:2379\"] "),
            ["http://a:2379", "http://b:2379"]
        );
        assert_eq!(
            s("http://a:2379,,http://b:2379,"),
            ["http://a:2379", "http://b:2379"]
        );
    }

    #[test]
    fn metadata_rules() {
        let (m, skipped) =
            parse_metadata(" region = us-east ,bad, =novalue,role=web,region=eu,empty=, ,x=a=b");
        assert_eq!(
            m,
            BTreeMap::from([
                ("empty".into(), String::new()),
                ("region".into(), "eu".into()),
                ("role".into(), "web".into()),
                ("x".into(), "a=b".into()),
            ])
        );
        assert_eq!(skipped, ["bad", "=novalue"]);
        assert_eq!(parse_metadata(""), (BTreeMap::new(), vec![]));
        let c = load_env("FLEET_METADATA", "ok=1,broken").expect("skips, no error");
        assert_eq!(c.metadata.len(), 1);
        assert_eq!(
            c.warnings,
            [
                "metadata pair \"broken\" in environment variable FLEET_METADATA skipped: not key=value"
            ]
        );
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen(""), Ok(vec![]), "socket activation only");
        let l = parse_listen("unix:/a.sock, [::1]:49153 ,localhost:80,0.0.0.0:1").expect("parses");
        assert_eq!(
            l.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["unix:/a.sock", "[::1]:49153", "localhost:80", "0.0.0.0:1"]
        );
        assert_eq!(
            l[1],
            ListenAddr::Tcp {
                host: "::1".into(),
                port: 49153
            }
        );
    }

    #[test]
    fn empty_optional_values_mean_unset() {
        let c = load_env("FLEET_PUBLIC_IP", "").expect("empty ip");
        assert_eq!(c.public_ip, None);
        let c = load_env("FLEET_ETCD_CAFILE", "").expect("empty cafile");
        assert_eq!(c.etcd_cafile, None);
    }

    #[test]
    fn positional_arguments() {
        assert!(args(&["version"]).wants_version());
        assert!(args(&["--version"]).wants_version());
        assert!(!args(&[]).wants_version());
        let e = load_flags(&["extra"]).expect_err("positional");
        assert_eq!(e.to_string(), "takes no arguments (got \"extra\")");
    }

    #[test]
    fn go_style_single_dash_flags() {
        let v = normalize_go_flags([
            "fleetd",
            "-config",
            "/x",
            "-version",
            "-h",
            "--agent-ttl=1s",
            "-metadata=a=b",
            "--",
            "-x",
        ]);
        assert_eq!(
            v,
            [
                "fleetd",
                "--config",
                "/x",
                "--version",
                "-h",
                "--agent-ttl=1s",
                "--metadata=a=b",
                "--",
                "-x"
            ]
            .map(OsString::from)
        );
        let a =
            Args::try_parse_from(normalize_go_flags(["fleetd", "-config", "/x"])).expect("parses");
        assert_eq!(a.config, Some(PathBuf::from("/x")));
    }

    #[test]
    fn every_option_has_a_flag() {
        use clap::CommandFactory as _;
        let cmd = Args::command();
        for opt in Opt::ALL {
            let long = opt.flag();
            assert!(
                cmd.get_arguments()
                    .any(|a| a.get_long() == long.strip_prefix("--")),
                "{opt} has no flag {long}"
            );
        }
        cmd.debug_assert();
    }
}
