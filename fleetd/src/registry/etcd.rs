//! [`EtcdKv`]: the [`Kv`] primitives over a real etcd, through the v3 gRPC API
//! (`etcd-client`).
//!
//! - Every call is bounded by the request timeout, enforced here with
//!   `tokio::time::timeout` on top of the channel's own per-request timeout,
//!   because a call can also wait for a connection that never comes: a
//!   partition surfaces as `Unavailable` instead of hanging. Watch streams
//!   are the exception: once created they run until they end with an error
//!   the consumer handles; HTTP/2 keep-alive pings (every 10 s while a stream
//!   is open, the server's minimum being 5 s) break a dead connection.
//! - **Sizes.** A value may be as large as etcd's `--max-request-bytes`
//!   (1.5 MiB by default), and a listing has no size limit at all, while
//!   gRPC clients refuse messages over 4 MiB by default. So responses are
//!   accepted up to [`MAX_MESSAGE`] (256 MiB, far beyond any single value
//!   etcd takes), and no response is allowed to grow with the store:
//!   - `list` reads in pages (a range with a limit, continuing after the
//!     last key), every page after the first at the first page's revision,
//!     so the result is one consistent snapshot. If a compaction overtakes
//!     it between pages it starts over (twice at most). Pages are sized by
//!     bytes: the first holds [`FIRST_PAGE`] keys, each later one as many as
//!     fit [`PAGE_BYTES`] at the largest key-value seen so far (at most
//!     [`MAX_PAGE`]); a page refused as too large is asked again at half
//!     the limit. Paging continues after the last key's raw bytes.
//!   - watches ask etcd to fragment large responses (`fragment`: etcd
//!     splits a response over `--max-request-bytes` into several), and the
//!     fragments of one response are put back together before they are
//!     delivered, so a batch never ends inside a revision.
//! - **Keys that are not UTF-8** cannot be ours (every key fleet writes is
//!   a string): they are left out of every result, logged and counted as
//!   data fleet did not write (see [`super::invalid`]).
//! - `keep_alive` opens a keep-alive stream for one refresh. `etcd-client`
//!   consumes the first answer itself (and reports a missing lease), so a
//!   second exchange on the same stream reads the granted TTL.
//! - Watches ask for progress notifications and request one every 10 s, so
//!   a quiet watch still reports the revision it has reached. A cancelled
//!   watch ends its stream with `Compacted` when etcd says the start revision
//!   is gone, `Unavailable` otherwise.
//!
//! - Several endpoints: etcd-client balances requests over all of them
//!   (tonic's power-of-two-choices balancer over lazily connected
//!   endpoints). A dead member does not leave the balancer: its endpoint
//!   reports ready, and each request routed to it fails at once when the
//!   connection is refused (about one request in three with one of three
//!   members down). So requests are retried on the others, within the
//!   request timeout: reads, lease grants, keep-alives and revokes on any
//!   transient failure (repeating them changes nothing that matters: a
//!   duplicate lease just expires), transactions and compactions only when
//!   the failure shows the request never left this process (tonic's
//!   `ConnectError`), since one that reached a member which then died may
//!   have been applied. A repeatable request still unanswered after half the
//!   timeout is abandoned and sent again: a follower holds a request while
//!   the leader it forwards to is dead, until an election is over. The first
//!   retry is immediate, the next ones wait 10 ms, doubling up to 200 ms.
//!   Watches are not retried here: a broken watch ends its stream and the
//!   cache starts another one.
//!
//! - TLS and authentication come from [`EtcdConnectOptions`] (fleet's
//!   `etcd_cafile`, `etcd_certfile`, `etcd_keyfile`, `etcd_username`,
//!   `etcd_password`) through [`EtcdKv::connect_with`]; TLS is rustls with
//!   ring, trusting only the given CA.
//! - **Through a caller's streams** ([`EtcdKv::connect_through`]): instead
//!   of dialling TCP, each connection to a member is a byte stream the
//!   caller opens to its host and port (fleetctl's `--tunnel`: an SSH
//!   `direct-tcpip` channel, fleet-reference.md §8.4); TLS for `https://`
//!   endpoints runs inside it. With several endpoints requests take turns
//!   over them, so the retries above reach another member.
//!
//! Error mapping: transport failures, timeouts and the gRPC codes etcd uses
//! for transient trouble (`Unavailable`, `DeadlineExceeded`, `Cancelled`,
//! `Aborted`, `Internal`, `Unknown`, `ResourceExhausted`) are `Unavailable`;
//! "required revision has been compacted" is `Compacted`; "requested lease
//! not found" is `LeaseNotFound`; everything else (too many operations, a
//! duplicate key in a transaction, a future revision) is `Rejected`.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client as ec;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Interval};
use tower::ServiceExt;

use super::keys::kind_of;
use super::kv::{
    Compare, Event, EventKind, KeyValue, Kv, LeaseId, Op, RangePage, RangeRequest, Txn,
    TxnResponse, WatchStream,
};
use super::{Cause, Error, Result, Revision, invalid};
use crate::retry;

/// The largest gRPC message accepted from etcd. One value is at most etcd's
/// `--max-request-bytes` (1.5 MiB by default; etcd advises against more
/// than 10 MiB), and every response here is a page or a watch fragment
/// sized near [`PAGE_BYTES`] or that limit, so 256 MiB leaves a margin of
/// more than 25 times the largest sensible setting. Memory is allocated per
/// message received, not up front.
pub const MAX_MESSAGE: usize = 256 << 20;

/// The bytes (keys and values) a listing page aims at.
pub const PAGE_BYTES: usize = 4 << 20;

/// Keys in the first page of a listing, before any size is known: small,
/// so that a store of maximal values still answers it quickly.
pub const FIRST_PAGE: usize = 16;

/// The most keys in one listing page.
pub const MAX_PAGE: usize = 1000;

/// How often a watch asks for a progress notification.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// HTTP/2 keep-alive ping interval while a stream is open (etcd refuses
/// pings more often than every 5 s).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How to reach etcd: the request bound, TLS files and credentials (fleet's
/// `etcd_request_timeout`, `etcd_cafile`, `etcd_certfile`, `etcd_keyfile`,
/// `etcd_username`, `etcd_password`). See [`EtcdKv::connect_with`].
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConnectOptions {
    /// The bound on every request and on connecting.
    pub request_timeout: Duration,
    /// PEM CA certificate(s) to verify etcd's server certificate with.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (goes with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
    /// User name for etcd authentication.
    pub username: Option<String>,
    /// Password for etcd authentication (goes with `username`).
    pub password: Option<String>,
}

impl EtcdConnectOptions {
    /// Only a request timeout: plain HTTP, no authentication.
    pub fn new(request_timeout: Duration) -> Self {
        EtcdConnectOptions {
            request_timeout,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
        }
    }

    /// Whether any TLS file is set.
    pub fn uses_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

impl fmt::Debug for EtcdConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConnectOptions")
            .field("request_timeout", &self.request_timeout)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why [`EtcdKv::connect_with`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A TLS file could not be read or holds no PEM data.
    #[error("cannot use the etcd {what} {}: {reason}", path.display())]
    Tls {
        /// Which file: "CA file", "certificate file", "key file".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The options do not fit together (a certificate without its key...).
    #[error("invalid etcd connection options: {0}")]
    Options(String),
    /// Connecting (or authenticating) failed.
    #[error(transparent)]
    Registry(#[from] Error),
}

/// Read one PEM file for TLS, naming it in the error.
fn read_pem(what: &'static str, path: &Path) -> std::result::Result<Vec<u8>, ConnectError> {
    crate::pem::read_pem(path).map_err(|e| ConnectError::Tls {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The TLS configuration the options ask for, if any.
fn tls_options(
    options: &EtcdConnectOptions,
) -> std::result::Result<Option<ec::TlsOptions>, ConnectError> {
    if !options.uses_tls() {
        return Ok(None);
    }
    let mut tls = ec::TlsOptions::new();
    if let Some(ca) = &options.ca_file {
        tls = tls.ca_certificate(ec::Certificate::from_pem(read_pem("CA file", ca)?));
    }
    match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => {
            let cert = read_pem("certificate file", cert)?;
            let key = read_pem("key file", key)?;
            tls = tls.identity(ec::Identity::from_pem(cert, key));
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(ConnectError::Options(
                "an etcd client certificate needs its key file".to_owned(),
            ));
        }
        (None, Some(_)) => {
            return Err(ConnectError::Options(
                "an etcd client key needs its certificate file".to_owned(),
            ));
        }
    }
    Ok(Some(tls))
}

/// A password needs a user name.
fn check_credentials(options: &EtcdConnectOptions) -> std::result::Result<(), ConnectError> {
    if options.password.is_some() && options.username.is_none() {
        return Err(ConnectError::Options(
            "an etcd password was given without a user name".to_owned(),
        ));
    }
    Ok(())
}

/// etcd-client's options for `options`: the timeouts, keep-alive, TLS and
/// credentials.
fn connect_options(
    options: &EtcdConnectOptions,
    tls: Option<ec::TlsOptions>,
) -> ec::ConnectOptions {
    let timeout = options.request_timeout;
    let mut connect = ec::ConnectOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(timeout)
        .with_keep_alive(KEEP_ALIVE_INTERVAL, timeout);
    if let Some(tls) = tls {
        connect = connect.with_tls(tls);
    }
    if let Some(user) = &options.username {
        connect = connect.with_user(user.clone(), options.password.clone().unwrap_or_default());
    }
    connect
}

/// A lazily connected gRPC channel to the etcd member at `url` whose
/// connections are streams `dial` opens to the URL's host and port, with
/// the settings etcd-client gives its own channels (see
/// [`connect_options`]).
fn dialled_channel<D, F, S>(
    url: &str,
    options: &EtcdConnectOptions,
    tls: Option<&ec::TlsOptions>,
    dial: D,
) -> std::result::Result<tonic::transport::Channel, ConnectError>
where
    D: Fn(String, u16) -> F + Send + Sync + 'static,
    F: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let bad = |reason: String| ConnectError::Options(format!("etcd endpoint {url:?}: {reason}"));
    let uri: hyper::Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("not an http:// or https:// URL".to_owned())),
    };
    let host = uri
        .host()
        .ok_or_else(|| bad("no host".to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let timeout = options.request_timeout;
    let mut endpoint = tonic::transport::Endpoint::from(uri)
        .timeout(timeout)
        .connect_timeout(timeout)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(timeout)
        .keep_alive_while_idle(true);
    match (https, tls) {
        (true, tls) => {
            // Without a CA file nothing can verify the server: every
            // request fails, as through etcd-client's own channels.
            endpoint = endpoint
                .tls_config(tls.cloned().unwrap_or_default())
                .map_err(|e| bad(format!("{e}")))?;
        }
        (false, Some(_)) => {
            return Err(bad(
                "TLS files are given, but the URL is not https://".to_owned()
            ));
        }
        (false, None) => {}
    }
    let connector = tower::service_fn(move |_: hyper::Uri| {
        let opened = dial(host.clone(), port);
        async move { opened.await.map(TokioIo::new) }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// One channel over several, each request going to the next in turn.
fn in_turn(channels: Vec<tonic::transport::Channel>) -> ec::Channel {
    let channels = Arc::new(channels);
    let next = Arc::new(AtomicUsize::new(0));
    let service = tower::service_fn(move |req| {
        let i = next.fetch_add(1, Ordering::Relaxed) % channels.len();
        let channel = channels[i].clone();
        async move {
            channel
                .oneshot(req)
                .await
                .map_err(|e| Box::new(e) as tower::BoxError)
        }
    });
    ec::Channel::Custom(tower::util::BoxCloneSyncService::new(service))
}

/// The store over a real etcd. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct EtcdKv {
    /// The gRPC client; cloned per call, which is cheap (it shares the channel).
    client: ec::Client,
    /// The bound on every request.
    timeout: Duration,
}

impl fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdKv")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// gRPC status codes (as numbers: tonic is not a direct dependency).
mod code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const ABORTED: i32 = 10;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;

    /// The codes etcd uses for transient trouble.
    pub const TRANSIENT: [i32; 7] = [
        CANCELLED,
        UNKNOWN,
        DEADLINE_EXCEEDED,
        RESOURCE_EXHAUSTED,
        ABORTED,
        INTERNAL,
        UNAVAILABLE,
    ];
}

/// Classify an etcd-client error. `Compacted` and `LeaseNotFound` come out
/// with placeholder numbers; callers that know better fill them in.
fn map_err(op: String, e: ec::Error) -> Error {
    match &e {
        ec::Error::GRpcStatus(status) => {
            let c = i32::from(status.code());
            let msg = status.message();
            if c == code::OUT_OF_RANGE && msg.contains("compacted") {
                return Error::Compacted {
                    requested: 0,
                    compact_revision: 0,
                };
            }
            if c == code::NOT_FOUND && msg.contains("lease not found") {
                return Error::LeaseNotFound(0);
            }
            if code::TRANSIENT.contains(&c) {
                Error::Unavailable {
                    op,
                    source: Box::new(e),
                }
            } else {
                Error::Rejected {
                    op,
                    source: Box::new(e),
                }
            }
        }
        ec::Error::LeaseKeepAliveError(msg) if msg.contains("lease not found") => {
            Error::LeaseNotFound(0)
        }
        ec::Error::TransportError(_)
        | ec::Error::IoError(_)
        | ec::Error::WatchError(_)
        | ec::Error::LeaseKeepAliveError(_)
        | ec::Error::EndpointError(_)
        | ec::Error::Internal(_) => Error::Unavailable {
            op,
            source: Box::new(e),
        },
        _ => Error::Rejected {
            op,
            source: Box::new(e),
        },
    }
}

/// Which failed requests [`EtcdKv::call_retrying`] repeats.
#[derive(Clone, Copy, Debug)]
enum Retry {
    /// Any transient failure: repeating the request has the effect of one
    /// success (reads, keep-alives, revokes, grants).
    Transient,
    /// Only a failure to connect: the request never reached etcd, while one
    /// that did may have been applied (transactions).
    Unsent,
}

/// Whether `e` is a failure to connect to a member, so the request was never
/// sent (tonic puts its `ConnectError` in the status' source chain).
fn never_sent(e: &ec::Error) -> bool {
    let ec::Error::GRpcStatus(status) = e else {
        return false;
    };
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        if c.is::<tonic::ConnectError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether [`map_err`] makes `e` an `Unavailable`.
fn transient(e: &ec::Error) -> bool {
    match e {
        ec::Error::GRpcStatus(status) => code::TRANSIENT.contains(&i32::from(status.code())),
        ec::Error::LeaseKeepAliveError(msg) => !msg.contains("lease not found"),
        ec::Error::TransportError(_)
        | ec::Error::IoError(_)
        | ec::Error::WatchError(_)
        | ec::Error::EndpointError(_)
        | ec::Error::Internal(_) => true,
        _ => false,
    }
}

/// Fill in the lease a `LeaseNotFound` is about.
fn with_lease(e: Error, lease: i64) -> Error {
    match e {
        Error::LeaseNotFound(_) => Error::LeaseNotFound(lease),
        e => e,
    }
}

/// Fill in the revision a `Compacted` is about.
fn with_requested(e: Error, requested: i64) -> Error {
    match e {
        Error::Compacted {
            compact_revision, ..
        } => Error::Compacted {
            requested,
            compact_revision,
        },
        e => e,
    }
}

/// Our form of a stored key-value; `None` (logged and counted) for a key
/// that is not UTF-8, which fleet never writes.
fn convert_kv(kv: &ec::KeyValue) -> Option<KeyValue> {
    let key = match std::str::from_utf8(kv.key()) {
        Ok(key) => key.to_owned(),
        Err(e) => {
            let shown = String::from_utf8_lossy(kv.key());
            invalid::skipped(
                kind_of(&shown),
                &shown,
                kv.mod_revision(),
                &format_args!("the key is not UTF-8: {e}"),
            );
            return None;
        }
    };
    Some(KeyValue {
        key,
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    })
}

/// Whether a request failed because its response was too large to accept
/// (over [`MAX_MESSAGE`] here, or over what etcd will send).
fn too_large(e: &ec::Error) -> bool {
    match e {
        ec::Error::GRpcStatus(status) => {
            let c = i32::from(status.code());
            c == code::RESOURCE_EXHAUSTED
                || (c == code::OUT_OF_RANGE
                    && status.message().contains("message length too large"))
        }
        _ => false,
    }
}

/// One page of a range read, with what paging needs beyond [`RangePage`].
struct RawPage {
    /// The page, keys that are not UTF-8 left out.
    page: RangePage,
    /// The raw bytes of the last key read (whether kept or not), to
    /// continue after.
    last: Option<Vec<u8>>,
    /// The largest key plus value in the page, in bytes.
    largest: usize,
}

/// The key right after `key` in etcd's order (`key` + `\0`).
fn after_key(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// The end of the range of keys starting with `prefix` (`\0`, meaning "no
/// end", for the empty prefix), as etcd's `WithPrefix` computes it.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    for i in (0..prefix.len()).rev() {
        if prefix[i] < 0xff {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            return end;
        }
    }
    vec![0]
}

/// The first key of the range of keys starting with `prefix` (etcd refuses
/// an empty key, so the empty prefix starts at `\0`).
fn prefix_start(prefix: &str) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    }
}

fn header_revision(h: Option<&ec::ResponseHeader>) -> i64 {
    h.map_or(0, ec::ResponseHeader::revision)
}

impl EtcdKv {
    /// Connect to etcd at `endpoints` (e.g. `http://127.0.0.1:2379`) without
    /// TLS or authentication: [`EtcdKv::connect_with`] with only the
    /// request timeout set.
    pub async fn connect(endpoints: &[String], request_timeout: Duration) -> Result<Self> {
        let options = EtcdConnectOptions::new(request_timeout);
        let client = EtcdKv::open(endpoints, &options, None).await?;
        Ok(EtcdKv::from_client(client, request_timeout))
    }

    /// Connect to etcd at `endpoints` with `options`. Every request, and the
    /// connection itself, is bounded by `options.request_timeout`.
    ///
    /// - **TLS**: a CA file or a client certificate turns TLS on; the
    ///   endpoints must then be `https://`. The CA file is the only trust
    ///   root (without one, an `https://` endpoint cannot be verified and
    ///   every request fails). A client certificate needs its key and the
    ///   other way round. The files are read here: one that cannot be read
    ///   or holds no PEM block is a [`ConnectError::Tls`] naming it.
    /// - **Authentication**: with a user name, the client authenticates
    ///   (here, so wrong credentials fail at once) and sends the token with
    ///   every request, refreshing it when etcd says it expired.
    ///
    /// Without authentication the connection is made lazily: an
    /// unreachable etcd shows up as `Unavailable` on the first operation.
    pub async fn connect_with(
        endpoints: &[String],
        options: &EtcdConnectOptions,
    ) -> std::result::Result<Self, ConnectError> {
        let tls = tls_options(options)?;
        check_credentials(options)?;
        let client = EtcdKv::open(endpoints, options, tls).await?;
        Ok(EtcdKv::from_client(client, options.request_timeout))
    }

    /// As [`EtcdKv::connect_with`], but every connection to a member is a
    /// stream `dial(host, port)` opens (see the module docs) instead of a
    /// TCP connection; TLS, when the options ask for it, runs inside. The
    /// connections are made lazily, as without authentication in
    /// [`EtcdKv::connect_with`]; opening one is bounded by the request
    /// timeout.
    ///
    /// # Errors
    ///
    /// As [`EtcdKv::connect_with`]; also an endpoint that is not an
    /// `http://` or `https://` URL, TLS files with an `http://` endpoint,
    /// or no endpoint at all.
    pub async fn connect_through<D, F, S>(
        endpoints: &[String],
        options: &EtcdConnectOptions,
        dial: D,
    ) -> std::result::Result<Self, ConnectError>
    where
        D: Fn(String, u16) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let tls = tls_options(options)?;
        check_credentials(options)?;
        let mut channels = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            channels.push(dialled_channel(url, options, tls.as_ref(), dial.clone())?);
        }
        let channel = match channels.len() {
            0 => return Err(ConnectError::Options("no etcd endpoint given".to_owned())),
            1 => ec::Channel::Tonic(channels.remove(0)),
            _ => in_turn(channels),
        };
        let connect = connect_options(options, None);
        let op = || format!("connecting to etcd at {}", endpoints.join(","));
        let client = match tokio::time::timeout(
            options.request_timeout,
            ec::Client::from_channel(channel, Some(connect)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(map_err(op(), e).into()),
            Err(elapsed) => {
                return Err(Error::Unavailable {
                    op: op(),
                    source: Box::new(elapsed),
                }
                .into());
            }
        };
        Ok(EtcdKv::from_client(client, options.request_timeout))
    }

    /// Build the client under the timeout.
    async fn open(
        endpoints: &[String],
        options: &EtcdConnectOptions,
        tls: Option<ec::TlsOptions>,
    ) -> Result<ec::Client> {
        let connect = connect_options(options, tls);
        let op = || format!("connecting to etcd at {}", endpoints.join(","));
        match tokio::time::timeout(
            options.request_timeout,
            ec::Client::connect(endpoints, Some(connect)),
        )
        .await
        {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(map_err(op(), e)),
            Err(elapsed) => Err(Error::Unavailable {
                op: op(),
                source: Box::new(elapsed),
            }),
        }
    }

    /// Wrap an existing client; every request is bounded by `request_timeout`.
    pub fn from_client(client: ec::Client, request_timeout: Duration) -> Self {
        EtcdKv {
            client,
            timeout: request_timeout,
        }
    }

    /// The underlying client, for what the [`Kv`] seam does not cover.
    pub fn client(&self) -> &ec::Client {
        &self.client
    }

    /// A KV client accepting responses up to [`MAX_MESSAGE`].
    fn kv_client(&self) -> ec::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// A watch client accepting responses up to [`MAX_MESSAGE`].
    fn watch_client(&self) -> ec::WatchClient {
        self.client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// Read up to `limit` keys from `start` to the end of `prefix`, at `at`
    /// (or the current revision); `Ok(None)` if the response would be too
    /// large to accept, so the caller can ask for fewer keys.
    async fn range_raw(
        &self,
        prefix: &str,
        start: Vec<u8>,
        limit: usize,
        at: Option<Revision>,
    ) -> Result<Option<RawPage>> {
        let mut options = ec::GetOptions::new()
            .with_range(prefix_end(prefix.as_bytes()))
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        if let Some(at) = at {
            options = options.with_revision(at.0);
        }
        let kv = self.kv_client();
        let resp = self
            .call_retrying(
                || format!("reading {prefix}"),
                Retry::Transient,
                || {
                    let (mut kv, start, options) = (kv.clone(), start.clone(), options.clone());
                    async move {
                        match kv.get(start, Some(options)).await {
                            Ok(resp) => Ok(Some(resp)),
                            // Too large is no failure: the caller asks for fewer keys.
                            Err(e) if too_large(&e) => Ok(None),
                            Err(e) => Err(e),
                        }
                    }
                },
            )
            .await
            .map_err(|e| with_requested(e, at.map_or(0, |r| r.0)))?;
        let Some(resp) = resp else {
            return Ok(None);
        };
        let revision = match at {
            Some(r) if r.0 > 0 => r,
            _ => Revision(header_revision(resp.header())),
        };
        let largest = resp
            .kvs()
            .iter()
            .map(|kv| kv.key().len() + kv.value().len())
            .max()
            .unwrap_or(0);
        Ok(Some(RawPage {
            last: resp.kvs().last().map(|kv| kv.key().to_vec()),
            largest,
            page: RangePage {
                kvs: resp.kvs().iter().filter_map(convert_kv).collect(),
                more: resp.more(),
                revision,
            },
        }))
    }

    /// [`EtcdKv::range_raw`], halving `limit` while the response is too
    /// large (down to one key, which always fits: see [`MAX_MESSAGE`]).
    async fn range_fitting(
        &self,
        prefix: &str,
        start: &[u8],
        mut limit: usize,
        at: Option<Revision>,
    ) -> Result<RawPage> {
        loop {
            if let Some(page) = self.range_raw(prefix, start.to_vec(), limit, at).await? {
                return Ok(page);
            }
            if limit <= 1 {
                return Err(Error::Rejected {
                    op: format!("reading {prefix}"),
                    source: Box::new(Cause(format!(
                        "one key-value is larger than the {MAX_MESSAGE} bytes accepted from etcd"
                    ))),
                });
            }
            limit /= 2;
            tracing::debug!(
                prefix,
                limit,
                "range response too large; asking for fewer keys"
            );
        }
    }

    /// One listing attempt: every page at the first page's revision.
    async fn list_once(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let first = self
            .range_fitting(prefix, &prefix_start(prefix), FIRST_PAGE, None)
            .await?;
        let revision = first.page.revision;
        let mut largest = first.largest;
        let mut all = first.page.kvs;
        let mut more = first.page.more;
        let mut last = first.last;
        while more {
            let Some(after) = last.take() else {
                break;
            };
            // As many keys as fit the page budget at the largest size seen.
            let fit = (PAGE_BYTES / largest.max(1)).clamp(1, MAX_PAGE);
            let page = self
                .range_fitting(prefix, &after_key(&after), fit, Some(revision))
                .await?;
            largest = largest.max(page.largest);
            all.extend(page.page.kvs);
            more = page.page.more;
            last = page.last;
        }
        Ok((all, revision))
    }

    /// Compact etcd's history before `rev` (physically, so it has happened
    /// when this returns). It affects the whole keyspace, not a prefix.
    pub async fn compact(&self, rev: Revision) -> Result<()> {
        let kv = self.client.kv_client();
        let options = ec::CompactionOptions::new().with_physical();
        self.call_retrying(
            || format!("compacting to {rev}"),
            Retry::Unsent,
            || {
                let (mut kv, options) = (kv.clone(), options.clone());
                async move { kv.compact(rev.0, Some(options)).await }
            },
        )
        .await
        .map(drop)
    }

    /// Run a request made by `attempt` until it succeeds, fails for good
    /// (per `retry`) or the request timeout is up, pausing a little between
    /// attempts; classify the last failure.
    async fn call_retrying<T, F>(
        &self,
        op: impl Fn() -> String,
        retry: Retry,
        mut attempt: impl FnMut() -> F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T, ec::Error>>,
    {
        let deadline = Instant::now() + self.timeout;
        // A request a member accepted but cannot answer (a follower waiting
        // for a leader that was just killed) is abandoned halfway, when it
        // may be repeated, so the repetition still has time.
        let attempt_bound = match retry {
            Retry::Transient => self.timeout / 2,
            Retry::Unsent => self.timeout,
        };
        let mut backoff = retry::ETCD_REQUEST;
        loop {
            let until = deadline.min(Instant::now() + attempt_bound);
            let e = match tokio::time::timeout_at(until, attempt()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(elapsed)
                    if Instant::now() >= deadline || !matches!(retry, Retry::Transient) =>
                {
                    return Err(Error::Unavailable {
                        op: op(),
                        source: Box::new(elapsed),
                    });
                }
                Err(_) => {
                    tracing::debug!(op = %op(), "etcd request unanswered; retrying");
                    continue;
                }
            };
            let again = match retry {
                Retry::Unsent => never_sent(&e),
                Retry::Transient => transient(&e),
            };
            let delay = backoff.next_delay();
            if !again || Instant::now() + delay >= deadline {
                return Err(map_err(op(), e));
            }
            tracing::debug!(op = %op(), error = %e, "etcd request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Run one request under the timeout, classifying its failure.
    async fn call<T>(
        &self,
        op: impl FnOnce() -> String,
        fut: impl Future<Output = Result<T, ec::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_err(op(), e)),
            Err(elapsed) => Err(Error::Unavailable {
                op: op(),
                source: Box::new(elapsed),
            }),
        }
    }
}

fn convert_compare(c: Compare) -> ec::Compare {
    match c {
        Compare::CreateRevision(key, rev) => {
            ec::Compare::create_revision(key, ec::CompareOp::Equal, rev)
        }
        Compare::ModRevision(key, rev) => ec::Compare::mod_revision(key, ec::CompareOp::Equal, rev),
        Compare::Value(key, value) => ec::Compare::value(key, ec::CompareOp::Equal, value),
    }
}

fn convert_op(op: Op) -> ec::TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let options = lease.map(|l| ec::PutOptions::new().with_lease(l.0));
            ec::TxnOp::put(key, value, options)
        }
        Op::Delete { key } => ec::TxnOp::delete(key, None),
        Op::DeletePrefix { prefix } => {
            let end = prefix_end(prefix.as_bytes());
            ec::TxnOp::delete(
                prefix_start(&prefix),
                Some(ec::DeleteOptions::new().with_range(end)),
            )
        }
        Op::Get { key } => ec::TxnOp::get(key, None),
    }
}

impl Kv for EtcdKv {
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)> {
        let kv = self.kv_client();
        let resp = self
            .call_retrying(
                || format!("reading {key}"),
                Retry::Transient,
                || {
                    let mut kv = kv.clone();
                    async move { kv.get(key, None).await }
                },
            )
            .await?;
        let found = resp.kvs().first().and_then(convert_kv);
        Ok((found, Revision(header_revision(resp.header()))))
    }

    async fn read_range(&self, req: RangeRequest<'_>) -> Result<RangePage> {
        let (prefix, limit) = (req.prefix, req.limit);
        let start = match req.after {
            Some(a) => after_key(a.as_bytes()),
            None => prefix_start(prefix),
        };
        // `limit` 0 means "no limit" to etcd: one response for everything,
        // which may not fit; `list` pages instead.
        match self.range_raw(prefix, start, limit, req.at).await? {
            Some(raw) => Ok(raw.page),
            None => Err(Error::Rejected {
                op: format!("reading {prefix}"),
                source: Box::new(Cause(format!(
                    "the response to a range of {limit} keys is larger than the {MAX_MESSAGE} bytes accepted from etcd"
                ))),
            }),
        }
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.list_once(prefix).await {
                Err(Error::Compacted { .. }) if attempt < 3 => {
                    tracing::debug!(prefix, "listing overtaken by a compaction; starting over");
                }
                result => return result,
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let lease = txn
            .success
            .iter()
            .chain(&txn.failure)
            .find_map(|op| match op {
                Op::Put { lease: Some(l), .. } => Some(l.0),
                _ => None,
            })
            .unwrap_or(0);
        let request = ec::Txn::new()
            .when(
                txn.compares
                    .into_iter()
                    .map(convert_compare)
                    .collect::<Vec<_>>(),
            )
            .and_then(txn.success.into_iter().map(convert_op).collect::<Vec<_>>())
            .or_else(txn.failure.into_iter().map(convert_op).collect::<Vec<_>>());
        let kv = self.kv_client();
        let resp = self
            .call_retrying(
                || "running a transaction".to_owned(),
                Retry::Unsent,
                || {
                    let (mut kv, request) = (kv.clone(), request.clone());
                    async move { kv.txn(request).await }
                },
            )
            .await
            .map_err(|e| with_lease(e, lease))?;
        let mut gets = Vec::new();
        let mut deleted = Vec::new();
        for r in resp.op_responses() {
            match r {
                ec::TxnOpResponse::Get(g) => gets.push(g.kvs().first().and_then(convert_kv)),
                ec::TxnOpResponse::Delete(d) => deleted.push(d.deleted()),
                ec::TxnOpResponse::Put(_) | ec::TxnOpResponse::Txn(_) => {}
            }
        }
        Ok(TxnResponse {
            succeeded: resp.succeeded(),
            revision: Revision(header_revision(resp.header())),
            gets,
            deleted,
        })
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs.max(1)).unwrap_or(i64::MAX);
        let lease = self.client.lease_client();
        let resp = self
            .call_retrying(
                || format!("granting a lease of {secs} s"),
                Retry::Transient,
                || {
                    let mut lease = lease.clone();
                    async move { lease.grant(secs, None).await }
                },
            )
            .await?;
        if !resp.error().is_empty() {
            return Err(Error::Rejected {
                op: format!("granting a lease of {secs} s"),
                source: Box::new(Cause(resp.error().to_owned())),
            });
        }
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let client = self.client.lease_client();
        // A fresh stream per attempt, so a retry reaches another member.
        let exchange = || {
            let mut client = client.clone();
            async move {
                let (mut keeper, mut stream) = client.keep_alive(lease.0).await?;
                keeper.keep_alive().await?;
                stream.message().await
            }
        };
        let resp = self
            .call_retrying(
                || format!("keeping lease {} alive", lease.0),
                Retry::Transient,
                exchange,
            )
            .await
            .map_err(|e| with_lease(e, lease.0))?;
        match resp {
            Some(r) if r.ttl() > 0 => Ok(Duration::from_secs(r.ttl().unsigned_abs())),
            Some(_) => Err(Error::LeaseNotFound(lease.0)),
            None => Err(Error::Unavailable {
                op: format!("keeping lease {} alive", lease.0),
                source: Box::new(Cause("keep-alive stream closed".into())),
            }),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        let client = self.client.lease_client();
        match self
            .call_retrying(
                || format!("revoking lease {}", lease.0),
                Retry::Transient,
                || {
                    let mut client = client.clone();
                    async move { client.revoke(lease.0).await }
                },
            )
            .await
        {
            Ok(_) | Err(Error::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let op = format!("watching {prefix}");
        let options = ec::WatchOptions::new()
            .with_range(prefix_end(prefix.as_bytes()))
            .with_start_revision(from.0)
            .with_progress_notify()
            .with_fragment();
        let mut client = self.watch_client();
        let mut stream = self
            .call(
                || op.clone(),
                client.watch(prefix_start(prefix), Some(options)),
            )
            .await?;
        // The first answer says whether the watch was created.
        match self.call(|| op.clone(), stream.message()).await? {
            Some(resp) if resp.canceled() => return Err(canceled(&op, from.0, &resp)),
            Some(_) => {}
            None => {
                return Err(Error::Unavailable {
                    op,
                    source: Box::new(Cause(
                        "watch stream closed before the watch was created".into(),
                    )),
                });
            }
        }
        let (requests, responses) = stream.split();
        let state = Watching {
            op,
            requests,
            responses,
            progress: tokio::time::interval_at(
                Instant::now() + PROGRESS_INTERVAL,
                PROGRESS_INTERVAL,
            ),
            next: from.0.max(1),
            done: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            Watching::step,
        )))
    }
}

/// The error for a watch etcd cancelled.
fn canceled(op: &str, requested: i64, resp: &ec::WatchResponse) -> Error {
    if resp.compact_revision() != 0 {
        Error::Compacted {
            requested,
            compact_revision: resp.compact_revision(),
        }
    } else {
        Error::Unavailable {
            op: op.to_owned(),
            source: Box::new(Cause(format!("watch cancelled: {}", resp.cancel_reason()))),
        }
    }
}

/// An open etcd watch, turned into a [`WatchStream`] by `unfold`.
struct Watching {
    /// What we are doing, for errors.
    op: String,
    /// The request side, to ask for progress (and to keep the stream open).
    requests: ec::WatchRequestSender,
    /// The responses.
    responses: ec::WatchResponseStream,
    /// When to ask for the next progress notification.
    progress: Interval,
    /// The next revision we expect (all before it have been delivered).
    next: i64,
    /// The stream has ended with an error; yield nothing more.
    done: bool,
}

/// The events of one watch response (or of the fragments of one), and the
/// revision of its last event.
#[derive(Default)]
struct Batch {
    /// The events, keys that are not UTF-8 left out.
    events: Vec<Event>,
    /// `mod_revision` of the last event received, kept or not.
    last: Option<i64>,
}

impl Batch {
    /// Add the events of one response (or fragment).
    fn extend(&mut self, resp: &ec::WatchResponse) {
        for e in resp.events() {
            let Some(kv) = e.kv() else { continue };
            self.last = Some(kv.mod_revision());
            let kind = match e.event_type() {
                ec::EventType::Put => EventKind::Put,
                ec::EventType::Delete => EventKind::Delete,
            };
            if let Some(kv) = convert_kv(kv) {
                self.events.push(Event { kind, kv });
            }
        }
    }
}

impl Watching {
    async fn step(mut self) -> Option<(Result<(Vec<Event>, Revision)>, Self)> {
        if self.done {
            return None;
        }
        // Fragments of one response, gathered until its last one.
        let mut batch = Batch::default();
        loop {
            tokio::select! {
                msg = self.responses.message() => {
                    let item = match msg {
                        Ok(Some(resp)) if resp.canceled() => {
                            self.done = true;
                            Err(canceled(&self.op, self.next, &resp))
                        }
                        Ok(Some(resp)) => {
                            batch.extend(&resp);
                            if resp.0.fragment {
                                continue;
                            }
                            // For events, the last one's revision is what has
                            // surely been delivered (a batch's header may be
                            // ahead of events still to come); for a progress
                            // notification, its header.
                            let reached = batch
                                .last
                                .unwrap_or_else(|| header_revision(resp.header()))
                                .max(self.next - 1);
                            self.next = reached + 1;
                            Ok((std::mem::take(&mut batch.events), Revision(reached)))
                        }
                        Ok(None) => {
                            self.done = true;
                            Err(Error::Unavailable {
                                op: self.op.clone(),
                                source: Box::new(Cause("watch stream ended".into())),
                            })
                        }
                        Err(e) => {
                            self.done = true;
                            Err(with_requested(map_err(self.op.clone(), e), self.next))
                        }
                    };
                    return Some((item, self));
                }
                _ = self.progress.tick() => {
                    // Best effort: a failure here shows up on the response side.
                    let _ = self.requests.request_progress().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(prefix_start(""), vec![0]);
    }
}
