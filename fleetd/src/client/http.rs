//! [`HttpClient`]: the `/fleet/v1` API over HTTP/1.1.
//!
//! The client speaks to fleetd over a unix socket (`unix:///var/run/fleet.sock`,
//! the default, or the `file://` spelling), over TCP (`http://host:port`),
//! over TLS (`https://host:port`), or over any byte stream a caller can open
//! ([`HttpClient::over_stream`]), which is how an SSH channel carries it for
//! `fleetctl --tunnel`.
//!
//! Design choices:
//! - Connections are kept alive and reused (hyper's `client::conn::http1`
//!   handshake over the stream the connector opens, then kept in a small
//!   pool of idle connections, at most [`MAX_IDLE`]). fleetctl may send
//!   thousands of requests for one command (`start` of many units), several
//!   at once, and a new TCP connection, TLS handshake or SSH channel per
//!   request cost more than the request. A pooled connection the server has
//!   closed meanwhile (an idle timeout between two polls) is noticed: a
//!   request it could not carry is sent again once on a fresh connection
//!   when it was never written, or when it is a GET or PUT (both idempotent
//!   in this API).
//! - The timeout given at construction (fleetctl's `--request-timeout`)
//!   bounds getting a connection: the connect, the TLS handshake, the SSH
//!   channel of a tunnel. The answer itself is never cut short: the
//!   original's API client had no limit on a request, and a listing a
//!   loaded server takes long to page through must still succeed.
//! - Like the original Go client, every request carries `?alt=json`, listings
//!   follow `nextPageToken` until a page comes without one, and a 404 on
//!   `GET /units/<name>` or `GET /state/<name>` means "no such unit" (`None`).
//! - Error answers (`{"error":{"code","message"}}`) become [`Error::Refused`];
//!   anything that prevents an answer becomes [`Error::Transport`], which
//!   names the endpoint.
//! - TLS ([`TlsOptions`], fleetctl's `--ca-file`, `--cert-file`,
//!   `--key-file`): rustls with the ring provider. The server is checked
//!   against the CA file when one is given, else against the system's roots,
//!   as the Go client did; a client certificate is presented when a cert and
//!   key are given. The options matter only for `https://` endpoints: with
//!   `unix://` or `http://` they are ignored without a word, as in the
//!   original (the same flags also serve the etcd driver, so a warning would
//!   be noise). The PEM files are read when the client is built, and an
//!   unreadable or empty one is an error naming the file. Through a tunnel
//!   ([`HttpClient::over_stream_with_tls`]) TLS runs inside the channel.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::{Error, FleetApi, Refusal, Result};
use crate::pem::PemError;
use crate::schema::{ErrorBody, Machine, Page, PageItem, TargetState, Unit, UnitState};

/// The endpoint fleetctl uses when none is given.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/fleet.sock";

/// The API's path prefix.
const API_PREFIX: &str = "/fleet/v1";

/// The `Host` header sent over unix sockets, as the Go client did.
const UNIX_HOST: &str = "domain-sock";

/// The most pages a listing may take before the client gives up: a guard
/// against a server that never stops issuing tokens.
const MAX_PAGES: usize = 100_000;

/// The most idle connections a client keeps for reuse: as many as
/// fleetctl sends requests at once.
pub const MAX_IDLE: usize = 32;

/// One HTTP/1.1 connection's request side.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A byte stream an HTTP/1.1 conversation can run over.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A boxed stream, so [`HttpClient`] is one type whatever the transport.
type BoxStream = Box<dyn Stream>;

/// A future opening a stream.
type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send>>;

/// Opens a new stream to the server for each request.
type Connector = Arc<dyn Fn() -> ConnectFuture + Send + Sync>;

/// An endpoint fleetctl cannot use, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint {endpoint:?}: {reason}")]
pub struct InvalidEndpoint {
    /// The endpoint as given.
    pub endpoint: String,
    /// Why it is unusable.
    pub reason: String,
}

impl InvalidEndpoint {
    fn new(endpoint: &str, reason: impl Into<String>) -> Self {
        InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: reason.into(),
        }
    }
}

/// TLS settings for `https://` endpoints (fleetctl's `--ca-file`,
/// `--cert-file`, `--key-file`). The default trusts the system's roots and
/// presents no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) to present.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
}

/// TLS settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} {}", .path.display())]
    Read {
        /// Which file: "CA file", "certificate file", "key file".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A PEM file holds nothing of the kind wanted.
    #[error("{what} {} holds no {wanted}", .path.display())]
    Empty {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for.
        wanted: &'static str,
    },
    /// Only one of the certificate and the key was given.
    #[error("a client certificate needs both a cert file and a key file")]
    HalfPair,
    /// The endpoint's host can't be checked against a certificate.
    #[error("cannot check a TLS certificate for host {host:?}: {reason}")]
    ServerName {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the settings (a key not matching the certificate...).
    #[error("bad TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The endpoint is unusable.
    #[error(transparent)]
    Endpoint(#[from] InvalidEndpoint),
    /// The TLS settings are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Reads the PEM file at `path` whole. A file without any PEM block holds
/// no `wanted` (rustls would find none in it either).
fn read_pem(
    what: &'static str,
    wanted: &'static str,
    path: &Path,
) -> std::result::Result<Vec<u8>, TlsError> {
    crate::pem::read_pem(path).map_err(|e| match e {
        PemError::Read(source) => TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        },
        PemError::NoPem => TlsError::Empty {
            what,
            path: path.to_owned(),
            wanted,
        },
    })
}

/// Every certificate in the PEM file at `path`, at least one.
fn read_certs(
    what: &'static str,
    path: &Path,
) -> std::result::Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(what, "PEM certificate", path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read {
            what,
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            wanted: "PEM certificate",
        });
    }
    Ok(certs)
}

/// The rustls client configuration for `opts`.
///
/// # Errors
///
/// [`TlsError`] for an unreadable or empty PEM file, a certificate without
/// a key (or the reverse), or a key rustls refuses.
pub fn tls_config(opts: &TlsOptions) -> std::result::Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let mut roots = RootCertStore::empty();
    match &opts.ca_file {
        Some(path) => {
            for cert in read_certs("CA file", path)? {
                roots.add(cert)?;
            }
        }
        None => {
            // Unreadable entries of the system store are skipped, as Go's
            // loader does; an empty store fails at the handshake with
            // "unknown issuer".
            let native = rustls_native_certs::load_native_certs();
            for err in &native.errors {
                tracing::debug!(%err, "skipping a system root certificate");
            }
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder = builder.with_root_certificates(roots);
    let config = match (&opts.cert_file, &opts.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let certs = read_certs("certificate file", cert)?;
            let pem = read_pem("key file", "PEM private key", key)?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
                rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
                    what: "key file",
                    path: key.to_owned(),
                    wanted: "PEM private key",
                },
                e => TlsError::Read {
                    what: "key file",
                    path: key.to_owned(),
                    source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                },
            })?;
            builder.with_client_auth_cert(certs, key)?
        }
        _ => return Err(TlsError::HalfPair),
    };
    Ok(config)
}

/// Where an endpoint URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket at this path.
    Unix(String),
    /// A TCP address: host (without IPv6 brackets) and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
}

/// Where `endpoint` points, for a caller that opens the streams itself
/// (fleetctl's `--tunnel`: an `fd-forward` command for a unix socket, a
/// `direct-tcpip` channel for TCP) and then uses [`HttpClient::over_stream`].
///
/// # Errors
///
/// As [`HttpClient::new`] for an unusable `endpoint`.
pub fn endpoint_target(endpoint: &str) -> std::result::Result<Target, InvalidEndpoint> {
    Endpoint::parse(endpoint).map(|e| e.target)
}

/// A parsed endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// Where to connect.
    target: Target,
    /// The `Host` header value.
    host_header: String,
    /// Path prefix before `/fleet/v1` (empty or starting with `/`, never
    /// ending with `/`).
    base_path: String,
    /// Whether the conversation runs over TLS (`https://`).
    tls: bool,
}

impl Endpoint {
    /// Parses `unix:///path`, `file:///path` or
    /// `http[s]://host[:port][/prefix]`.
    fn parse(endpoint: &str) -> std::result::Result<Endpoint, InvalidEndpoint> {
        let Some((scheme, rest)) = endpoint.split_once("://") else {
            return Err(InvalidEndpoint::new(endpoint, "URL scheme undefined"));
        };
        // Drop any query or fragment: they mean nothing here.
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        match scheme.to_ascii_lowercase().as_str() {
            "unix" | "file" => {
                if !authority.is_empty() {
                    // "unix://var/run/fleet.sock" parses with host "var".
                    return Err(InvalidEndpoint::new(
                        endpoint,
                        format!(
                            "unable to connect to host {authority:?} with scheme {scheme:?} \
                             (a socket path needs three slashes, as in {DEFAULT_ENDPOINT})"
                        ),
                    ));
                }
                let path = units::decode_hex_escapes(path, b'%').ok_or_else(|| {
                    InvalidEndpoint::new(endpoint, "bad percent-encoding in path")
                })?;
                if path.is_empty() || path == "/" {
                    return Err(InvalidEndpoint::new(endpoint, "no socket path"));
                }
                Ok(Endpoint {
                    target: Target::Unix(path),
                    host_header: UNIX_HOST.to_owned(),
                    base_path: String::new(),
                    tls: false,
                })
            }
            scheme @ ("http" | "https") => {
                let tls = scheme == "https";
                if authority.is_empty() {
                    return Err(InvalidEndpoint::new(endpoint, "no host"));
                }
                if authority.contains('@') {
                    return Err(InvalidEndpoint::new(
                        endpoint,
                        "user information is not supported",
                    ));
                }
                let default_port = if tls { 443 } else { 80 };
                let (host, port) = split_host_port(authority, default_port)
                    .ok_or_else(|| InvalidEndpoint::new(endpoint, "bad host or port"))?;
                Ok(Endpoint {
                    target: Target::Tcp {
                        host: host.to_owned(),
                        port,
                    },
                    host_header: authority.to_owned(),
                    base_path: path.trim_end_matches('/').to_owned(),
                    tls,
                })
            }
            other => Err(InvalidEndpoint::new(
                endpoint,
                format!("unsupported URL scheme {other:?}; use unix://, http:// or https://"),
            )),
        }
    }
}

/// Splits `host[:port]` (or `[v6][:port]`), defaulting the port to
/// `default_port`; `None` for no host, a bad port or a bare IPv6 address.
pub fn split_host_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            Some(_) => return None,
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None | Some("") => default_port,
        Some(p) => p.parse().ok()?,
    };
    Some((host, port))
}

/// Percent-encodes `s` for use in a URL, keeping the unreserved characters
/// and those in `keep`.
fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Characters a path segment may carry unescaped (RFC 3986 `pchar` minus
/// the unreserved set), so `foo@bar.service` stays readable.
const PATH_SEGMENT_KEEP: &[u8] = b"!$&'()*+,;=:@";

/// The `/fleet/v1` API over HTTP/1.1. See the module docs.
#[derive(Clone)]
pub struct HttpClient {
    /// Opens a fresh stream when no idle connection is at hand.
    connect: Connector,
    /// Idle connections kept alive for the next requests (shared by the
    /// clones). A std mutex: held only to push or pop, never across an
    /// await.
    idle: Arc<std::sync::Mutex<Vec<Sender>>>,
    /// The endpoint as the user gave it, for error messages.
    endpoint: String,
    /// `Host` header value.
    host_header: String,
    /// Path prefix before `/fleet/v1`.
    base_path: String,
    /// Deadline for getting a connection (connect, TLS handshake, tunnel
    /// channel); the answer has none.
    connect_timeout: Duration,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("endpoint", &self.endpoint)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client for `endpoint`: `unix:///path` (or `file:///path`) for a unix
    /// socket, `http://host[:port][/prefix]` for TCP,
    /// `https://host[:port][/prefix]` for TLS trusting the system's roots.
    /// Only one endpoint: the caller splits comma-separated lists.
    /// `connect_timeout` bounds getting each request's connection (see the
    /// module docs). Nothing is dialled until the first request.
    ///
    /// # Errors
    ///
    /// [`InvalidEndpoint`] for a URL without a scheme, with an unsupported
    /// scheme, or a unix URL with a host part (`unix://var/run/fleet.sock`,
    /// missing a slash).
    pub fn new(
        endpoint: &str,
        connect_timeout: Duration,
    ) -> std::result::Result<Self, InvalidEndpoint> {
        Self::with_tls(endpoint, connect_timeout, &TlsOptions::default()).map_err(|e| match e {
            BuildError::Endpoint(e) => e,
            // Without files only rustls itself can object.
            BuildError::Tls(e) => InvalidEndpoint::new(endpoint, e.to_string()),
        })
    }

    /// As [`HttpClient::new`], with the TLS settings of `tls` for an
    /// `https://` endpoint (ignored for the others; see the module docs).
    ///
    /// # Errors
    ///
    /// [`BuildError::Endpoint`] as [`HttpClient::new`];
    /// [`BuildError::Tls`] when an `https://` endpoint's TLS settings are
    /// unusable ([`tls_config`]).
    pub fn with_tls(
        endpoint: &str,
        connect_timeout: Duration,
        tls: &TlsOptions,
    ) -> std::result::Result<Self, BuildError> {
        let parsed = Endpoint::parse(endpoint)?;
        let connect: Connector = match parsed.target.clone() {
            Target::Unix(path) => Arc::new(move || {
                let path = path.clone();
                Box::pin(async move {
                    let s = tokio::net::UnixStream::connect(&path).await?;
                    Ok(Box::new(s) as BoxStream)
                })
            }),
            Target::Tcp { host, port } => Arc::new(move || {
                let host = host.clone();
                Box::pin(async move {
                    let s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                    // Requests are small and answered at once; don't wait
                    // for Nagle.
                    s.set_nodelay(true)?;
                    Ok(Box::new(s) as BoxStream)
                })
            }),
        };
        let connect = secure(connect, &parsed, tls)?;
        Ok(Self::from_parts(endpoint, parsed, connect, connect_timeout))
    }

    /// A client that reaches the server through streams opened by `connect`
    /// (one per request), for instance SSH channels for `--tunnel`.
    /// `endpoint` is still parsed for the `Host` header, the path prefix and
    /// error messages, but is never dialled.
    ///
    /// # Errors
    ///
    /// As [`HttpClient::new`] for an unusable `endpoint`.
    pub fn over_stream<F, Fut, S>(
        endpoint: &str,
        connect: F,
        connect_timeout: Duration,
    ) -> std::result::Result<Self, InvalidEndpoint>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::over_stream_with_tls(endpoint, connect, connect_timeout, &TlsOptions::default())
            .map_err(|e| match e {
                BuildError::Endpoint(e) => e,
                BuildError::Tls(e) => InvalidEndpoint::new(endpoint, e.to_string()),
            })
    }

    /// As [`HttpClient::over_stream`]; for an `https://` endpoint TLS with
    /// the settings of `tls` runs inside each stream.
    ///
    /// # Errors
    ///
    /// As [`HttpClient::with_tls`].
    pub fn over_stream_with_tls<F, Fut, S>(
        endpoint: &str,
        connect: F,
        connect_timeout: Duration,
        tls: &TlsOptions,
    ) -> std::result::Result<Self, BuildError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let parsed = Endpoint::parse(endpoint)?;
        let connect: Connector = Arc::new(move || {
            let fut = connect();
            Box::pin(async move { Ok(Box::new(fut.await?) as BoxStream) })
        });
        let connect = secure(connect, &parsed, tls)?;
        Ok(Self::from_parts(endpoint, parsed, connect, connect_timeout))
    }

    fn from_parts(
        endpoint: &str,
        parsed: Endpoint,
        connect: Connector,
        connect_timeout: Duration,
    ) -> Self {
        HttpClient {
            connect,
            idle: Arc::default(),
            endpoint: endpoint.to_owned(),
            host_header: parsed.host_header,
            base_path: parsed.base_path,
            connect_timeout,
        }
    }

    /// The endpoint as given at construction.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The request target for `path` (below `/fleet/v1`) with `?alt=json`
    /// and the extra query pairs.
    fn uri(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut uri = format!("{}{API_PREFIX}{path}?alt=json", self.base_path);
        for (k, v) in query {
            uri.push('&');
            uri.push_str(&percent_encode(k, b""));
            uri.push('=');
            uri.push_str(&percent_encode(v, b""));
        }
        uri
    }

    /// The request target for one unit below `collection` (`/units`, `/state`).
    fn unit_uri(&self, collection: &str, name: &str) -> String {
        self.uri(
            &format!("{collection}/{}", percent_encode(name, PATH_SEGMENT_KEEP)),
            &[],
        )
    }

    fn transport_error(
        &self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Transport {
            endpoint: self.endpoint.clone(),
            source: source.into(),
        }
    }

    /// A connection to the server: the stream (with TLS, if any) and the
    /// HTTP/1.1 handshake, under the connect timeout.
    async fn connection(&self) -> Result<Sender> {
        let open = async {
            let stream = (self.connect)()
                .await
                .map_err(|e| self.transport_error(e))?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                    .await
                    .map_err(|e| self.transport_error(e))?;
            // The connection task ends when `sender` is dropped or the server
            // closes; its errors surface through `send_request` as well.
            tokio::spawn(async move {
                if let Err(err) = conn.await {
                    tracing::debug!(%err, "fleet API connection ended with an error");
                }
            });
            Ok(sender)
        };
        match tokio::time::timeout(self.connect_timeout, open).await {
            Ok(result) => result,
            Err(_) => Err(self.transport_error(TimedOut(self.connect_timeout))),
        }
    }

    /// An idle connection still open and ready, if the pool has one.
    fn idle_connection(&self) -> Option<Sender> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(sender) = idle.pop() {
            if sender.is_ready() && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Puts a connection whose answer was read whole back in the pool.
    fn keep(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    /// Sends one request and reads the whole answer, on an idle connection
    /// when there is one (see the module docs for when it is sent again on a
    /// fresh one). Only getting a connection is bounded in time.
    async fn send(
        &self,
        method: Method,
        uri: String,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let json = body.is_some();
        let body = Bytes::from(body.unwrap_or_default());
        let build = || {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(uri.as_str())
                .header(HOST, self.host_header.as_str());
            if json {
                req = req.header(CONTENT_TYPE, "application/json");
            }
            // The body is a cheap `Bytes` clone.
            req.body(Full::new(body.clone()))
                .map_err(|e| Error::Protocol(format!("cannot build request {method} {uri}: {e}")))
        };
        let req = build()?;
        tracing::debug!(%method, %uri, endpoint = %self.endpoint, "fleet API request");
        let (resp, sender) = match self.idle_connection() {
            Some(mut sender) => {
                let again = if method == Method::GET || method == Method::PUT {
                    Some(build()?)
                } else {
                    None
                };
                match sender.try_send_request(req).await {
                    Ok(resp) => (resp, sender),
                    Err(mut err) => {
                        let Some(req) = err.take_message().or(again) else {
                            return Err(self.transport_error(err.into_error()));
                        };
                        tracing::debug!(error = %err.error(), "kept connection failed, sending again");
                        self.send_fresh(req).await?
                    }
                }
            }
            None => self.send_fresh(req).await?,
        };
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.transport_error(e))?
            .to_bytes();
        self.keep(sender);
        tracing::debug!(%status, bytes = body.len(), "fleet API response");
        Ok((status, body))
    }

    /// Sends `req` on a new connection.
    async fn send_fresh(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(hyper::Response<hyper::body::Incoming>, Sender)> {
        let mut sender = self.connection().await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.transport_error(e))?;
        Ok((resp, sender))
    }

    /// GETs `uri` and decodes a 2xx answer; `Ok(None)` on 404 when
    /// `not_found_is_none`.
    async fn get_json<T: DeserializeOwned>(
        &self,
        uri: String,
        not_found_is_none: bool,
    ) -> Result<Option<T>> {
        let (status, body) = self.send(Method::GET, uri.clone(), None).await?;
        if not_found_is_none && Refusal::from_status(status.as_u16()) == Refusal::NotFound {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        decode(&uri, &body).map(Some)
    }

    /// GETs every page of a listing, following `nextPageToken`.
    async fn get_pages<T>(&self, path: &str) -> Result<Vec<T>>
    where
        T: PageItem + DeserializeOwned,
    {
        self.get_pages_within(path, MAX_PAGES)
            .await?
            .ok_or_else(|| Error::Protocol(format!("{path}: more than {MAX_PAGES} pages")))
    }

    /// GETs every page of a listing, as [`HttpClient::get_pages`], unless
    /// the listing has more than `max_pages` pages: then `None`.
    async fn get_pages_within<T>(&self, path: &str, max_pages: usize) -> Result<Option<Vec<T>>>
    where
        T: PageItem + DeserializeOwned,
    {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..max_pages {
            let query: Vec<(&str, &str)> = match &token {
                Some(t) => vec![("nextPageToken", t.as_str())],
                None => Vec::new(),
            };
            let page: Page<T> = self
                .get_json(self.uri(path, &query), false)
                .await?
                .ok_or_else(|| Error::Protocol(format!("no page for {path}")))?;
            let Page {
                next_page_token: next,
                items: mut page_items,
            } = page;
            items.append(&mut page_items);
            match next {
                Some(next) if !next.is_empty() => {
                    if token.as_deref() == Some(next.as_str()) {
                        return Err(Error::Protocol(format!(
                            "{path}: the server repeated page token {next:?}"
                        )));
                    }
                    token = Some(next);
                }
                _ => return Ok(Some(items)),
            }
        }
        Ok(None)
    }

    /// PUTs `unit` to `/units/<name>`; any 2xx is success.
    async fn put_unit(&self, name: &str, unit: &Unit) -> Result<()> {
        let body = serde_json::to_vec(unit)
            .map_err(|e| Error::Protocol(format!("cannot encode unit {name}: {e}")))?;
        let (status, resp) = self
            .send(Method::PUT, self.unit_uri("/units", name), Some(body))
            .await?;
        if !status.is_success() {
            return Err(api_error(status, &resp));
        }
        Ok(())
    }
}

/// `connect` with a TLS handshake on each stream for an `https://`
/// endpoint; `connect` itself for the others.
fn secure(
    connect: Connector,
    parsed: &Endpoint,
    opts: &TlsOptions,
) -> std::result::Result<Connector, TlsError> {
    let host = match &parsed.target {
        Target::Tcp { host, .. } if parsed.tls => host.clone(),
        _ => return Ok(connect),
    };
    let tls = TlsConnector::from(Arc::new(tls_config(opts)?));
    // A host name, or an address checked against the certificate's IP SANs.
    let name = ServerName::try_from(host.clone()).map_err(|e| TlsError::ServerName {
        host: host.clone(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(move || {
        let (fut, tls, name) = (connect(), tls.clone(), name.clone());
        Box::pin(async move {
            let stream = tls.connect(name, fut.await?).await?;
            Ok(Box::new(stream) as BoxStream)
        })
    }))
}

/// The error of a request that got no connection in time.
#[derive(Debug, thiserror::Error)]
#[error("not connected within {}", humanize(*.0))]
struct TimedOut(Duration);

fn humanize(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Turns an error answer into [`Error::Refused`], reading the fleet error body
/// when there is one and the raw text otherwise.
fn api_error(status: StatusCode, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => Error::refused(Refusal::from_status(e.error.code), e.error.message),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let mut message: String = text.trim().chars().take(512).collect();
            if message.is_empty() {
                message = status.canonical_reason().unwrap_or_default().to_owned();
            }
            Error::refused(Refusal::from_status(status.as_u16()), message)
        }
    }
}

/// Decodes a JSON answer; an empty body counts as `{}`.
fn decode<T: DeserializeOwned>(uri: &str, body: &[u8]) -> Result<T> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| Error::Protocol(format!("cannot decode the answer to GET {uri}: {e}")))
}

impl FleetApi for HttpClient {
    async fn machines(&self) -> Result<Vec<Machine>> {
        self.get_pages("/machines").await
    }

    async fn unit(&self, name: &str) -> Result<Option<Unit>> {
        self.get_json(self.unit_uri("/units", name), true).await
    }

    async fn units(&self) -> Result<Vec<Unit>> {
        self.get_pages("/units").await
    }

    async fn units_within(&self, max_requests: usize) -> Result<Option<Vec<Unit>>> {
        self.get_pages_within("/units", max_requests).await
    }

    async fn unit_states(&self) -> Result<Vec<UnitState>> {
        self.get_pages("/state").await
    }

    async fn unit_state(&self, name: &str) -> Result<Option<UnitState>> {
        self.get_json(self.unit_uri("/state", name), true).await
    }

    async fn create_unit(&self, unit: &Unit) -> Result<()> {
        self.put_unit(&unit.name, unit).await
    }

    async fn set_unit_target_state(&self, name: &str, state: TargetState) -> Result<()> {
        let unit = Unit {
            name: name.to_owned(),
            desired_state: Some(state),
            ..Unit::default()
        };
        self.put_unit(name, &unit).await
    }

    async fn destroy_unit(&self, name: &str) -> Result<()> {
        let (status, body) = self
            .send(Method::DELETE, self.unit_uri("/units", name), None)
            .await?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn endpoint_targets() {
        assert_eq!(
            endpoint_target("unix:///var/run/fleet.sock").unwrap(),
            Target::Unix("/var/run/fleet.sock".into())
        );
        assert_eq!(
            endpoint_target("http://10.0.0.1:49153/x").unwrap(),
            Target::Tcp {
                host: "10.0.0.1".into(),
                port: 49153
            }
        );
        assert!(endpoint_target("unix://var/run/fleet.sock").is_err());
    }

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("unix:///var/run/fleet.sock").unwrap();
        assert_eq!(e.target, Target::Unix("/var/run/fleet.sock".into()));
        assert_eq!(e.host_header, "domain-sock");
        let e = Endpoint::parse("file:///tmp/a%20b.sock").unwrap();
        assert_eq!(e.target, Target::Unix("/tmp/a b.sock".into()));
        let e = Endpoint::parse("http://10.0.0.1:54728").unwrap();
        assert_eq!(
            e.target,
            Target::Tcp {
                host: "10.0.0.1".into(),
                port: 54728
            }
        );
        assert_eq!(e.host_header, "10.0.0.1:54728");
        assert_eq!(e.base_path, "");
        let e = Endpoint::parse("http://example.com/prefix/").unwrap();
        assert_eq!(
            e.target,
            Target::Tcp {
                host: "example.com".into(),
                port: 80
            }
        );
        assert_eq!(e.base_path, "/prefix");
        let e = Endpoint::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            e.target,
            Target::Tcp {
                host: "::1".into(),
                port: 8080
            }
        );
    }

    #[test]
    fn https_endpoints_parse() {
        let e = Endpoint::parse("https://fleet.example.com/p").unwrap();
        assert!(e.tls);
        assert_eq!(
            e.target,
            Target::Tcp {
                host: "fleet.example.com".into(),
                port: 443
            }
        );
        assert_eq!(e.base_path, "/p");
        assert!(!Endpoint::parse("http://a:1").unwrap().tls);
        assert!(HttpClient::new("https://127.0.0.1:49153", Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn tls_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not PEM\n").unwrap();
        let opts = |ca: &Path| TlsOptions {
            ca_file: Some(ca.to_owned()),
            ..TlsOptions::default()
        };
        let err = tls_config(&opts(&missing)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot read CA file {}", missing.display())
        );
        let err = tls_config(&opts(&empty)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("CA file {} holds no PEM certificate", empty.display())
        );
        let half = TlsOptions {
            cert_file: Some(empty.clone()),
            ..TlsOptions::default()
        };
        assert!(matches!(tls_config(&half), Err(TlsError::HalfPair)));
        // Ignored for plain endpoints; read (and refused) for https.
        assert!(
            HttpClient::with_tls("http://a:1", Duration::from_secs(1), &opts(&missing)).is_ok()
        );
        assert!(matches!(
            HttpClient::with_tls("https://a:1", Duration::from_secs(1), &opts(&missing)),
            Err(BuildError::Tls(TlsError::Read { .. }))
        ));
    }

    #[test]
    fn bad_endpoints_are_explained() {
        let err = Endpoint::parse("unix://var/run/fleet.sock").unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"unable to connect to host "var" with scheme "unix""#),
            "{err}"
        );
        assert!(
            Endpoint::parse("127.0.0.1:80")
                .unwrap_err()
                .to_string()
                .contains("URL scheme undefined")
        );
        assert!(Endpoint::parse("http://h:notaport").is_err());
        assert!(Endpoint::parse("http://").is_err());
        assert!(Endpoint::parse("unix://").is_err());
        assert!(Endpoint::parse("ftp://x").is_err());
    }

    #[test]
    fn names_and_tokens_are_escaped() {
        let c = HttpClient::new("unix:///x.sock", Duration::from_secs(1)).unwrap();
        assert_eq!(
            c.unit_uri("/units", "foo@bar.service"),
            "/fleet/v1/units/foo@bar.service?alt=json"
        );
        assert_eq!(
            c.unit_uri("/units", r"a\x2d.service"),
            "/fleet/v1/units/a%5Cx2d.service?alt=json"
        );
        assert_eq!(
            c.uri("/units", &[("nextPageToken", "ZAACAA==")]),
            "/fleet/v1/units?alt=json&nextPageToken=ZAACAA%3D%3D"
        );
    }

    /// A scripted server: answers each request on a fresh connection with
    /// the next canned response and records the request heads and bodies.
    async fn serve(responses: Vec<String>) -> (tempfile::TempDir, String, Arc<Mutex<Vec<String>>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            for resp in responses {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then as much body as Content-Length says.
                loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(str::to_owned)
                            })
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        if buf.len() >= end + 4 + len || n == 0 {
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                seen2
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).to_string());
                s.write_all(resp.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            }
        });
        let endpoint = format!("unix://{}", path.display());
        (dir, endpoint, seen)
    }

    fn json(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn listings_follow_page_tokens() {
        let (_dir, ep, seen) = serve(vec![
            json(
                "200 OK",
                r#"{"nextPageToken":"ZAACAA==","units":[{"name":"a.service"}]}"#,
            ),
            json(
                "200 OK",
                r#"{"units":[{"name":"b.service","desiredState":"launched"}]}"#,
            ),
        ])
        .await;
        let c = HttpClient::new(&ep, Duration::from_secs(5)).unwrap();
        let units = c.units().await.unwrap();
        let names: Vec<_> = units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["a.service", "b.service"]);
        let seen = seen.lock().unwrap();
        assert!(
            seen[0].starts_with("GET /fleet/v1/units?alt=json HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(seen[0].contains("host: domain-sock\r\n"), "{}", seen[0]);
        assert!(
            seen[1].starts_with(
                "GET /fleet/v1/units?alt=json&nextPageToken=ZAACAA%3D%3D HTTP/1.1\r\n"
            ),
            "{}",
            seen[1]
        );
    }

    /// A bounded listing reads every page when there are few enough, and
    /// gives up after the bound otherwise.
    #[tokio::test]
    async fn bounded_listings_stop_at_their_bound() {
        let first = r#"{"nextPageToken":"p2","units":[{"name":"a.service"}]}"#;
        let last = r#"{"units":[{"name":"b.service"}]}"#;
        let (_dir, ep, seen) = serve(vec![
            json("200 OK", first),
            json("200 OK", first),
            json("200 OK", last),
        ])
        .await;
        let c = HttpClient::new(&ep, Duration::from_secs(5)).unwrap();
        assert!(c.units_within(1).await.unwrap().is_none());
        assert_eq!(seen.lock().unwrap().len(), 1, "one page read");
        let units = c.units_within(2).await.unwrap().unwrap();
        let names: Vec<_> = units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["a.service", "b.service"]);
    }

    #[tokio::test]
    async fn empty_page_and_missing_unit() {
        let (_dir, ep, _seen) = serve(vec![
            json("200 OK", "{}"),
            json(
                "404 Not Found",
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
            json(
                "404 Not Found",
                r#"{"error":{"code":404,"message":"unit state does not exist"}}"#,
            ),
        ])
        .await;
        let c = HttpClient::new(&ep, Duration::from_secs(5)).unwrap();
        assert!(c.machines().await.unwrap().is_empty());
        assert!(c.unit("nope.service").await.unwrap().is_none());
        assert!(c.unit_state("nope.service").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn puts_json_and_decodes_errors() {
        let (_dir, ep, seen) = serve(vec![
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_owned(),
            json(
                "400 Bad Request",
                r#"{"error":{"code":400,"message":"cannot activate template \"foo@.service\""}}"#,
            ),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
        ])
        .await;
        let c = HttpClient::new(&ep, Duration::from_secs(5)).unwrap();
        c.set_unit_target_state("a.service", TargetState::Launched)
            .await
            .unwrap();
        let err = c
            .set_unit_target_state("foo@.service", TargetState::Launched)
            .await
            .unwrap_err();
        match err {
            Error::Refused { refusal, message } => {
                assert_eq!(refusal.status(), 400);
                assert_eq!(message, r#"cannot activate template "foo@.service""#);
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = c.destroy_unit("gone.service").await.unwrap_err();
        assert_eq!(err.status(), Some(404));
        assert_eq!(err.refusal(), Some(Refusal::NotFound));
        let seen = seen.lock().unwrap();
        assert!(seen[0].starts_with("PUT /fleet/v1/units/a.service?alt=json HTTP/1.1\r\n"));
        assert!(
            seen[0].contains("content-type: application/json\r\n"),
            "{}",
            seen[0]
        );
        assert!(
            seen[0].ends_with(r#"{"desiredState":"launched","name":"a.service"}"#),
            "{}",
            seen[0]
        );
        assert!(seen[2].starts_with("DELETE /fleet/v1/units/gone.service?alt=json HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ep = format!("unix://{}/missing.sock", dir.path().display());
        let c = HttpClient::new(&ep, Duration::from_secs(5)).unwrap();
        let err = c.units().await.unwrap_err();
        assert!(matches!(err, Error::Transport { .. }));
        assert!(err.to_string().contains(&ep), "{err}");
    }

    #[tokio::test]
    async fn slow_answers_are_awaited() {
        // The answer comes well after the timeout: only connecting is bounded.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(600)).await;
            let page = json("200 OK", r#"{"machines":[{"id":"m1"}]}"#);
            s.write_all(page.as_bytes()).await.unwrap();
        });
        let c = HttpClient::new(
            &format!("unix://{}", path.display()),
            Duration::from_millis(100),
        )
        .unwrap();
        assert_eq!(c.machines().await.unwrap()[0].id, "m1");
    }

    #[tokio::test]
    async fn connecting_is_bounded() {
        // A stream that never opens (a tunnel channel nobody answers)...
        let c = HttpClient::over_stream(
            "unix:///var/run/fleet.sock",
            std::future::pending::<io::Result<tokio::io::DuplexStream>>,
            Duration::from_millis(200),
        )
        .unwrap();
        let err = c.units().await.unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("not connected within 0.2s"), "{chain}");
        // ...and a TLS handshake a silent server never completes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let c = HttpClient::new(&format!("https://{addr}"), Duration::from_millis(200)).unwrap();
        let started = std::time::Instant::now();
        let err = c.machines().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("not connected within 0.2s"), "{chain}");
    }

    #[tokio::test]
    async fn over_stream_uses_the_connector() {
        let (client_side, mut server_side) = tokio::io::duplex(64 * 1024);
        let slot = Arc::new(Mutex::new(Some(client_side)));
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let n = server_side.read(&mut buf).await.unwrap();
            assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("GET /fleet/v1/machines?alt=json")
            );
            server_side
                .write_all(
                    json(
                        "200 OK",
                        r#"{"machines":[{"id":"m1","primaryIP":"10.0.0.1"}]}"#,
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
        });
        let c = HttpClient::over_stream(
            "unix:///var/run/fleet.sock",
            move || {
                let s = slot.lock().unwrap().take();
                async move { s.ok_or_else(|| io::Error::other("used twice")) }
            },
            Duration::from_secs(5),
        )
        .unwrap();
        let machines = c.machines().await.unwrap();
        assert_eq!(machines[0].primary_ip, "10.0.0.1");
    }
}
