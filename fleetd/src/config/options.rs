//! The table of options: the one place where an option is defined.
//!
//! Each entry of the [`options!`] invocation below gives an option's
//! config-file name (which is also the [`Config`] field it fills), the field's
//! type and doc, its default (as text, parsed like any user value), its
//! `--help` line and value name, and the parser that turns text into the
//! field. Each entry is one line of data: the parsers are named functions
//! (from `parse.rs`, or below the table when one option needs its own). From
//! it the macro derives:
//! - [`Opt`], [`Opt::ALL`] and [`Opt::name`] (hence the environment variable
//!   and the flag name, by rule);
//! - the [`Config`] struct and its [`Default`] (every default parsed once);
//! - [`Config::apply`], used for every source (file, environment, flag);
//! - [`Opt::def`], from which the command line and `--help` are built
//!   (`flags.rs`).
//!
//! Deprecated options have no field: they are listed at the end, accepted and
//! ignored with a warning.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::parse::{
    AGENT_TTL_RANGE, ENGINE_RECONCILE_INTERVAL_RANGE, ETCD_REQUEST_TIMEOUT_RANGE, non_empty,
    parse_bool, parse_duration_in, parse_etcd_servers, parse_listen, parse_metadata, parse_path,
    parse_seconds, parse_token_limit, parse_verbosity,
};
use super::{ListenAddr, Origin, ValueError};

/// Default `etcd_servers`.
pub const DEFAULT_ETCD_SERVERS: &str = "http://127.0.0.1:2379,http://127.0.0.1:4001";
/// Default `etcd_key_prefix`: the registry's own default layout.
pub const DEFAULT_ETCD_KEY_PREFIX: &str = crate::registry::keys::DEFAULT_PREFIX;
/// Default `units_directory`.
pub const DEFAULT_UNITS_DIRECTORY: &str = "/run/fleet/units/";
/// Default `listen`.
pub const DEFAULT_LISTEN: &str = "unix:/var/run/fleet.sock";
/// Default `machine_id_file`.
pub const DEFAULT_MACHINE_ID_FILE: &str = "/etc/machine-id";

/// What the command line and `--help` need to know about an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionDef {
    /// The `--help` line, without the default.
    pub help: &'static str,
    /// The placeholder in `--help` (`BOOL` makes a switch: `--x` is
    /// `--x=true`, a value must be attached with `=`).
    pub value_name: &'static str,
    /// The default as text (empty: unset).
    pub default: &'static str,
    /// What `--help` shows instead of [`OptionDef::default`], if anything.
    pub shown: Option<&'static str>,
    /// Deprecated: accepted, ignored, hidden from `--help`.
    pub deprecated: bool,
}

impl OptionDef {
    /// Whether the flag is a switch with an optional attached value.
    pub fn is_switch(&self) -> bool {
        self.value_name == "BOOL"
    }

    /// The default `--help` shows: [`OptionDef::shown`], else the default
    /// text unless it is empty or a switch's `false`.
    pub fn shown_default(&self) -> Option<&'static str> {
        let unset = self.default.is_empty() || self.is_switch() && self.default == "false";
        self.shown.or((!unset).then_some(self.default))
    }

    /// The `--help` line with its default, if any.
    pub fn help_line(&self) -> String {
        match self.shown_default() {
            Some(d) => format!("{} [default: {d}]", self.help),
            None => self.help.to_owned(),
        }
    }
}

/// What a parser gets besides the text: where it came from (for warnings) and
/// the warnings to add to.
pub(super) struct Ctx<'a> {
    pub(super) origin: &'a Origin,
    pub(super) warnings: &'a mut Vec<String>,
}

/// How an option's text becomes its field.
enum Parser<T> {
    /// The text alone decides.
    Text(fn(&str) -> Result<T, ValueError>),
    /// The parser may also add warnings (naming the origin).
    Warns(fn(&str, &mut Ctx<'_>) -> Result<T, ValueError>),
}

use Parser::{Text, Warns};

impl<T> Parser<T> {
    fn parse(&self, v: &str, ctx: &mut Ctx<'_>) -> Result<T, ValueError> {
        match self {
            Text(parse) => parse(v),
            Warns(parse) => parse(v, ctx),
        }
    }
}

macro_rules! options {
    (
        $(
            $(#[doc = $doc:literal])*
            $name:ident : $ty:ty = $variant:ident(
                $default:expr, $value_name:literal, $parse:expr, $help:literal
                $(, shown $shown:literal)? $(,)?
            )
        )*
        ;
        deprecated {
            $( $dname:ident = $dvariant:ident($dvalue_name:literal) )*
        }
    ) => {
        /// Every option fleetd knows, by its config-file name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Opt {
            $( #[doc = concat!("`", stringify!($name), "`")] $variant, )*
            $( #[doc = concat!("`", stringify!($dname), "` (deprecated, ignored)")] $dvariant, )*
        }

        impl Opt {
            /// Every option, in the order of fleet-reference.md §7 (ours
            /// and the deprecated ones last).
            pub const ALL: [Opt; [$(stringify!($name)),* , $(stringify!($dname)),*].len()] =
                [$(Opt::$variant,)* $(Opt::$dvariant,)*];

            /// The name in the config file, e.g. `agent_ttl`.
            pub fn name(self) -> &'static str {
                match self {
                    $( Opt::$variant => stringify!($name), )*
                    $( Opt::$dvariant => stringify!($dname), )*
                }
            }

            /// The option's definition.
            pub fn def(self) -> &'static OptionDef {
                match self {
                    $( Opt::$variant => &OptionDef {
                        help: $help,
                        value_name: $value_name,
                        default: $default,
                        shown: options!(@shown $($shown)?),
                        deprecated: false,
                    }, )*
                    $( Opt::$dvariant => &OptionDef {
                        help: "Deprecated and ignored",
                        value_name: $dvalue_name,
                        default: "",
                        shown: None,
                        deprecated: true,
                    }, )*
                }
            }
        }

        /// fleetd's validated configuration.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
            /// The config file that was read, if any (for SIGHUP reloads and
            /// logs).
            pub config_file: Option<PathBuf>,
            /// Non-fatal problems (deprecated or unknown options, skipped
            /// metadata pairs), for the caller to log once the logger is up.
            pub warnings: Vec<String>,
        }

        impl Config {
            /// Every field at its type's zero, before the defaults apply.
            fn zero() -> Config {
                Config {
                    $( $name: <$ty>::default(), )*
                    config_file: None,
                    warnings: Vec::new(),
                }
            }

            /// Parses `v` as `opt` into its field.
            pub(super) fn apply(
                &mut self,
                opt: Opt,
                v: &str,
                ctx: &mut Ctx<'_>,
            ) -> Result<(), ValueError> {
                match opt {
                    $( Opt::$variant => {
                        let parser: Parser<$ty> = $parse;
                        self.$name = parser.parse(v, ctx)?;
                    } )*
                    $( Opt::$dvariant => ctx.warnings.push(format!(
                        "{opt} (in {}) is deprecated and ignored",
                        ctx.origin
                    )), )*
                }
                Ok(())
            }
        }
    };
    (@shown) => { None };
    (@shown $shown:literal) => { Some($shown) };
}

// One entry per option: `name: FieldType = Variant(default, value name in
// --help, parser, --help line[, shown "what --help shows as the default"])`.
options! {
    /// `verbosity`: 0 logs at info, anything above at debug.
    verbosity: u8 = Verbosity("0", "N", Text(parse_verbosity), "Logging: 0 is info, more is debug")
    /// `etcd_servers`: the etcd endpoints the client connects to.
    etcd_servers: Vec<String> = EtcdServers(DEFAULT_ETCD_SERVERS, "URLS", Text(parse_etcd_servers), "etcd endpoints, comma-separated")
    /// `etcd_request_timeout`: how long one etcd request may take.
    etcd_request_timeout: Duration = EtcdRequestTimeout("1.0", "SECONDS", Text(etcd_request_timeout), "Per-request etcd timeout in seconds")
    /// `etcd_cafile`: CA certificate for TLS to etcd (none: system roots or
    /// plain HTTP, depending on the endpoints' scheme).
    etcd_cafile: Option<PathBuf> = EtcdCafile("", "PATH", Text(optional_path), "CA certificate for TLS to etcd")
    /// `etcd_certfile`: client certificate for TLS to etcd.
    etcd_certfile: Option<PathBuf> = EtcdCertfile("", "PATH", Text(optional_path), "Client certificate for TLS to etcd")
    /// `etcd_keyfile`: client key for TLS to etcd.
    etcd_keyfile: Option<PathBuf> = EtcdKeyfile("", "PATH", Text(optional_path), "Client key for TLS to etcd")
    /// `etcd_username`: etcd authentication, if any.
    etcd_username: Option<String> = EtcdUsername("", "USER", Text(optional_string), "etcd user name")
    /// `etcd_password`: goes with `etcd_username`.
    etcd_password: Option<String> = EtcdPassword("", "PASSWORD", Text(optional_string), "etcd password")
    /// `etcd_key_prefix`: where fleet's keys live in etcd.
    etcd_key_prefix: String = EtcdKeyPrefix(DEFAULT_ETCD_KEY_PREFIX, "PREFIX", Text(any_string), "Key prefix of fleet's data in etcd")
    /// `public_ip`: the address published for this machine (none:
    /// auto-detect). Taken as given, as the original did: an IP, a host
    /// name, anything `fleetctl ssh` can dial.
    public_ip: Option<String> = PublicIp("", "IP", Text(optional_string), "IP address published for this machine", shown "auto-detected")
    /// `metadata`: this machine's config metadata, matched by
    /// `MachineMetadata=` (dynamic metadata from the API is merged over it).
    metadata: BTreeMap<String, String> = Metadata("", "PAIRS", Warns(metadata), "Machine metadata, `k=v,k2=v2`")
    /// `agent_ttl`: lifetime of the machine's presence without a heartbeat;
    /// also the TTL of its unit states.
    agent_ttl: Duration = AgentTtl("30s", "DURATION", Text(agent_ttl), "TTL of this machine's presence, as a Go duration")
    /// `engine_reconcile_interval`: the engine's tick; its leadership lease
    /// lives 5 times as long, but at most ⅔ of `agent_ttl`.
    engine_reconcile_interval: Duration = EngineReconcileInterval("2.0", "SECONDS", Text(engine_reconcile_interval), "Engine reconcile interval in seconds")
    /// `token_limit`: the API's page size.
    token_limit: u16 = TokenLimit("100", "N", Text(parse_token_limit), "API page size")
    /// `disable_engine`: this machine never leads the engine.
    disable_engine: bool = DisableEngine("false", "BOOL", Text(parse_bool), "Never run the engine on this machine")
    /// `disable_watches`: rely on timers only, no etcd watches.
    disable_watches: bool = DisableWatches("false", "BOOL", Text(parse_bool), "Use no etcd watches, only timers")
    /// `enable_grpc`: accepted for compatibility; the gRPC mode is not
    /// implemented, so this only produces a warning when set.
    enable_grpc: bool = EnableGrpc("false", "BOOL", Warns(enable_grpc), "Experimental gRPC mode of the original; not supported, ignored")
    /// `units_directory`: where the agent writes unit files.
    units_directory: PathBuf = UnitsDirectory(DEFAULT_UNITS_DIRECTORY, "DIR", Text(parse_path), "Where unit files are written")
    /// `systemd_user`: drive the user manager over the session bus.
    systemd_user: bool = SystemdUser("false", "BOOL", Text(parse_bool), "Drive the user manager (session bus) instead of the system manager")
    /// `listen` (ours): API listeners when not socket-activated (ignored
    /// when `LISTEN_FDS` hands us sockets).
    listen: Vec<ListenAddr> = Listen(DEFAULT_LISTEN, "ADDRS", Text(parse_listen), "API listeners when not socket-activated: `unix:/path` or `host:port`, comma-separated")
    /// `machine_id_file` (ours): where this machine's ID is read from.
    machine_id_file: PathBuf = MachineIdFile(DEFAULT_MACHINE_ID_FILE, "PATH", Text(parse_path), "File holding this machine's ID")
    // Accepted for compatibility, ignored with a warning, hidden from --help.
    ;
    deprecated {
        verify_units = VerifyUnits("BOOL")
        authorized_keys_file = AuthorizedKeysFile("PATH")
    }
}

/// An optional path: empty (after trimming) is unset.
fn optional_path(v: &str) -> Result<Option<PathBuf>, ValueError> {
    Ok(non_empty(v).map(PathBuf::from))
}

/// An optional string: empty (after trimming) is unset.
fn optional_string(v: &str) -> Result<Option<String>, ValueError> {
    Ok(non_empty(v).map(str::to_owned))
}

/// Any string, as given.
fn any_string(v: &str) -> Result<String, ValueError> {
    Ok(v.to_owned())
}

/// `etcd_request_timeout`: seconds in [`ETCD_REQUEST_TIMEOUT_RANGE`].
fn etcd_request_timeout(v: &str) -> Result<Duration, ValueError> {
    parse_seconds(v, ETCD_REQUEST_TIMEOUT_RANGE)
}

/// `engine_reconcile_interval`: seconds in
/// [`ENGINE_RECONCILE_INTERVAL_RANGE`].
fn engine_reconcile_interval(v: &str) -> Result<Duration, ValueError> {
    parse_seconds(v, ENGINE_RECONCILE_INTERVAL_RANGE)
}

/// `agent_ttl`: a Go duration in [`AGENT_TTL_RANGE`].
fn agent_ttl(v: &str) -> Result<Duration, ValueError> {
    parse_duration_in(v, AGENT_TTL_RANGE)
}

/// `metadata`: the pairs that parse; each one skipped is a warning.
fn metadata(v: &str, ctx: &mut Ctx<'_>) -> Result<BTreeMap<String, String>, ValueError> {
    let (metadata, skipped) = parse_metadata(v);
    let origin = ctx.origin;
    ctx.warnings.extend(
        skipped
            .into_iter()
            .map(|pair| format!("metadata pair {pair:?} in {origin} skipped: not key=value")),
    );
    Ok(metadata)
}

/// `enable_grpc`: a boolean, with a warning when it is on (we do not
/// support the mode).
fn enable_grpc(v: &str, ctx: &mut Ctx<'_>) -> Result<bool, ValueError> {
    let on = parse_bool(v)?;
    if on {
        ctx.warnings.push(format!(
            "enable_grpc (in {}) is not supported and is ignored",
            ctx.origin
        ));
    }
    Ok(on)
}

impl Default for Config {
    /// Every option at the default of its table entry.
    fn default() -> Self {
        let mut c = Config::zero();
        let origin = Origin::Env(String::new());
        let mut warnings = Vec::new();
        for opt in Opt::ALL {
            let mut ctx = Ctx {
                origin: &origin,
                warnings: &mut warnings,
            };
            let default = opt.def().default;
            if !opt.def().deprecated {
                // The defaults are constants, checked by the tests
                // (`defaults_match_the_reference`): a bad one is a bug.
                c.apply(opt, default, &mut ctx)
                    .expect("a built-in default parses");
            }
        }
        c
    }
}

impl fmt::Display for Opt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
