//! The value parsers: one per kind of option value, each refusing what the
//! option cannot take with a [`ValueError`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::ListenAddr;

/// Why a value was refused. The option, value and origin are in the
/// enclosing [`super::ConfigError::InvalidValue`].
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

pub(super) fn non_empty(v: &str) -> Option<&str> {
    let v = v.trim();
    (!v.is_empty()).then_some(v)
}

/// `verbosity`: 0..=255.
pub(super) fn parse_verbosity(v: &str) -> Result<u8, ValueError> {
    v.trim().parse().map_err(|_| ValueError::Integer {
        min: 0,
        max: u8::MAX.into(),
    })
}

/// `token_limit`: 1..=65535.
pub(super) fn parse_token_limit(v: &str) -> Result<u16, ValueError> {
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
pub(super) fn parse_seconds(v: &str, range: (Duration, Duration)) -> Result<Duration, ValueError> {
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
pub(super) fn parse_duration_in(
    v: &str,
    range: (Duration, Duration),
) -> Result<Duration, ValueError> {
    let d = parse_go_duration(v.trim()).map_err(ValueError::Duration)?;
    if d < range.0 || d > range.1 {
        return Err(ValueError::DurationRange { range });
    }
    Ok(d)
}

/// A duration as a Go duration string, for messages: the largest unit that
/// divides it (`10ms`, `1s`, `24h`), else seconds with a fraction.
pub(super) fn go_duration(d: Duration) -> String {
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
pub(super) fn parse_bool(v: &str) -> Result<bool, ValueError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "y" | "on" => Ok(true),
        "0" | "f" | "false" | "no" | "n" | "off" => Ok(false),
        _ => Err(ValueError::Bool),
    }
}

pub(super) fn parse_path(v: &str) -> Result<PathBuf, ValueError> {
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

pub(super) fn parse_listen_addr(s: &str) -> Result<ListenAddr, ValueError> {
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
