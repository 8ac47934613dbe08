//! The configuration's tests: every option from every source, every error
//! message and every accepted range.

use std::collections::HashMap;
use std::error::Error as _;
use std::ffi::OsString;
use std::time::Duration;

use clap::Parser as _;

use super::file::key_lines;
use super::parse::parse_bool;
use super::*;

/// The leadership lease TTL the engine derives from `c` (the engine owns
/// that rule).
fn engine_lease_ttl(c: &Config) -> Duration {
    crate::engine::EngineConfig::from_config(c).lease_ttl()
}

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
    assert_eq!(engine_lease_ttl(&c), Duration::from_secs(10));
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
            published(c).as_deref() == Some("10.0.0.7")
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
                && engine_lease_ttl(c) == Duration::from_millis(2500)
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
    let c =
        load_from(&args(&[]), no_env, Path::new("/nonexistent/x.conf")).expect("no file is fine");
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
    assert_eq!(published(&c).as_deref(), Some("10.1.2.3"));
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
    let lines =
        key_lines("# c\n; c\nagent_ttl=1s\n verbosity : 2\nagent_ttl = 2s\n[s]\nmetadata=a=b\n");
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
        ["metadata pair \"broken\" in environment variable FLEET_METADATA skipped: not key=value"]
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

/// The `public_ip` a config publishes, as text.
fn published(c: &Config) -> Option<String> {
    c.public_ip.as_ref().map(ToString::to_string)
}

/// `public_ip` is published as given, as the original did (a plain string
/// option, never checked): host names, partial or scoped addresses too.
#[test]
fn public_ip_is_taken_as_given() {
    for value in [
        "10.0.0.7",
        "10.0.0",
        "node1.example.com",
        "fe80::1%eth0",
        "2001:db8::1",
        "not an address",
    ] {
        let c = load_env("FLEET_PUBLIC_IP", value).expect(value);
        assert_eq!(published(&c).as_deref(), Some(value));
        let c = load_flags(&[&format!("--public-ip={value}")]).expect(value);
        assert_eq!(published(&c).as_deref(), Some(value));
    }
    // Surrounding blanks go, as with every option; blank is unset.
    let c = load_env("FLEET_PUBLIC_IP", " 10.0.0.7 ").expect("blanks");
    assert_eq!(published(&c).as_deref(), Some("10.0.0.7"));
    let c = load_env("FLEET_PUBLIC_IP", "  ").expect("blank");
    assert_eq!(c.public_ip, None);
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
    let a = Args::try_parse_from(normalize_go_flags(["fleetd", "-config", "/x"])).expect("parses");
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
