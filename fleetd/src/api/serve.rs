//! Serving the router: listeners (unix, TCP, socket activation) and an
//! HTTP/1.1 accept loop per listener with graceful shutdown.
//!
//! Design, after mini-redis's `server.rs`:
//! - one accept loop per listener, one task per connection, all on one
//!   [`TaskTracker`];
//! - a semaphore per listener caps its open connections
//!   ([`ServeOptions::max_connections`], [`MAX_CONNECTIONS`] by default,
//!   lowered at start if the open-files limit could not hold every listener
//!   at its cap plus the descriptors etcd, D-Bus and unit files need).
//!   At the cap the loop stops accepting: further connections wait in the
//!   kernel's backlog, holding no descriptor of ours, and are accepted as
//!   served ones close (beyond the backlog the kernel refuses them). They
//!   are not accepted-and-closed: a burst, or a restart that left requests
//!   queued, is then served late rather than failed. One cap per listener,
//!   not one shared, so a flood of the TCP port cannot lock local clients
//!   out of the unix socket. The cost: while a flood holds a listener's
//!   slots, a new client of that listener waits until the flood's
//!   connections time out (below);
//! - what one connection may hold is bounded in time: the request line and
//!   headers must arrive within [`ServeOptions::header_read_timeout`], which
//!   runs from the moment the connection is accepted or its previous answer
//!   is written, so it is also the idle keep-alive timeout (hyper closes the
//!   connection); the body must arrive within
//!   [`ServeOptions::body_read_timeout`] of the headers, or the request is
//!   answered 408 and the connection closed. Bodies are also bounded in
//!   size ([`super::BODY_LIMIT`], 413);
//! - a failed `accept` (e.g. out of file descriptors) is logged and retried
//!   after a back-off, and never ends the server;
//! - shutdown is two-staged: when `shutdown` completes, the accept loops stop
//!   (closing the listeners) and every connection is told to finish its
//!   in-flight request and close; connections still open after the drain
//!   deadline are dropped.
//!
//! Dropping the [`serve`] future drops every connection at once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, HeaderValue, SERVER};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Router};
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::retry;

/// How long in-flight requests may take to finish once shutdown begins.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Most connections served at once by one listener (the default of
/// [`ServeOptions::max_connections`]). fleetd's `LimitNOFILE` in the shipped
/// `fleet.service` leaves room for several listeners at this cap.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long a client may take to send a request's line and headers, and
/// how long a keep-alive connection may stay idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request's body once its headers
/// are in. Bodies are at most [`super::BODY_LIMIT`] (1 MiB): a client on any
/// working link sends one in far less.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How the API is served: what one client may take.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Bound on receiving a request's line and headers, counted from the
    /// accept or the end of the previous answer: a slowloris client
    /// dribbling headers, or one holding an idle connection, is cut after
    /// it.
    pub header_read_timeout: Duration,
    /// Bound on receiving a request's body after its headers: a client
    /// dribbling a body is answered 408 and cut after it.
    pub body_read_timeout: Duration,
    /// Connections one listener serves at once; beyond, new connections
    /// wait in the backlog. Per listener, so one flooded listener leaves the
    /// others usable.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish once shutdown
    /// begins.
    pub drain_deadline: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            drain_deadline: DRAIN_DEADLINE,
        }
    }
}

/// Descriptors left out of the connections' budget when the open-files
/// limit is low (see [`connection_cap`]): etcd and D-Bus connections, the
/// journal, unit files being written, the runtime's own.
const RESERVED_FDS: u64 = 256;

/// Where the API is served: a listening unix or TCP socket.
#[derive(Debug)]
pub enum Listener {
    /// A unix stream socket, e.g. `/var/run/fleet.sock`.
    Unix(UnixListener),
    /// A TCP socket.
    Tcp(TcpListener),
}

impl Listener {
    /// A printable address, for logs.
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix(l) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(PathBuf::from))
            {
                Some(path) => format!("unix:{}", path.display()),
                None => "unix:(unnamed)".to_owned(),
            },
            Listener::Tcp(l) => match l.local_addr() {
                Ok(addr) => format!("tcp:{addr}"),
                Err(_) => "tcp:(unknown)".to_owned(),
            },
        }
    }

    /// The TCP address, for a TCP listener (tests bind port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }

    /// Accept one connection.
    async fn accept(&self) -> io::Result<Box<dyn Connection>> {
        Ok(match self {
            Listener::Unix(l) => Box::new(l.accept().await?.0),
            Listener::Tcp(l) => {
                let (stream, _) = l.accept().await?;
                // Small request/answer exchanges: do not wait for Nagle.
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
        })
    }
}

/// An accepted connection of either kind.
trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

/// Listen on a unix socket at `path`, replacing a stale socket file left by
/// a previous run, with mode 0660 (owner and group may use the API).
///
/// Must be called within a tokio runtime.
pub fn bind_unix(path: impl AsRef<Path>) -> io::Result<Listener> {
    let path = path.as_ref();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(Listener::Unix(listener))
}

/// Listen on a TCP address.
pub async fn bind_tcp(addr: impl ToSocketAddrs) -> io::Result<Listener> {
    Ok(Listener::Tcp(TcpListener::bind(addr).await?))
}

/// Set once the socket-activation descriptors have been taken, so that no
/// descriptor is ever owned twice.
static LISTEN_FDS_TAKEN: AtomicBool = AtomicBool::new(false);

/// The listeners systemd passed by socket activation (`LISTEN_PID` equal to
/// our PID, `LISTEN_FDS` descriptors from fd 3), as unix or TCP listeners
/// according to each socket's address family. Empty when fleetd was not
/// socket-activated, and on every call after the first.
///
/// Must be called within a tokio runtime.
pub fn from_listen_fds() -> io::Result<Vec<Listener>> {
    let fds = sd_notify::listen_fds()?;
    if fds.len() == 0 || LISTEN_FDS_TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    fds.map(|fd| listener_from_fd(take_fd(fd))).collect()
}

/// Takes ownership of an inherited socket-activation descriptor.
///
/// `unsafe_code` is denied in the workspace; this is the one place that
/// needs it, because turning a raw descriptor into an owned one cannot be
/// checked by the compiler. It is sound because:
/// - `fd` comes from `sd_notify::listen_fds`, which yields only descriptors
///   3..3+`LISTEN_FDS` and only when `LISTEN_PID` is our PID: descriptors the
///   service manager opened for this very process;
/// - nothing else in fleetd refers to those descriptors, and
///   [`LISTEN_FDS_TAKEN`] makes sure they are taken at most once, so exactly
///   one `OwnedFd` owns (and eventually closes) each.
#[allow(unsafe_code)]
fn take_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: see above: `fd` is open, was handed to this process by the
    // service manager, and is owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Wraps an inherited listening socket: unix if its address is a unix one,
/// TCP otherwise (the address family is read with `getsockname`).
fn listener_from_fd(fd: OwnedFd) -> io::Result<Listener> {
    let unix = std::os::unix::net::UnixListener::from(fd);
    if unix.local_addr().is_ok() {
        unix.set_nonblocking(true)?;
        return Ok(Listener::Unix(UnixListener::from_std(unix)?));
    }
    let tcp = std::net::TcpListener::from(OwnedFd::from(unix));
    tcp.local_addr().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket-activation descriptor is neither a unix nor an internet socket: {e}"),
        )
    })?;
    tcp.set_nonblocking(true)?;
    Ok(Listener::Tcp(TcpListener::from_std(tcp)?))
}

/// Serve `router` on every listener until `shutdown` completes, then let
/// in-flight requests finish for up to [`DRAIN_DEADLINE`], with the default
/// [`ServeOptions`].
pub async fn serve(
    router: Router,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    serve_with(router, listeners, shutdown, ServeOptions::default()).await
}

/// [`serve`] with another drain deadline.
pub async fn serve_with_deadline(
    router: Router,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
) -> io::Result<()> {
    let opts = ServeOptions {
        drain_deadline: drain,
        ..ServeOptions::default()
    };
    serve_with(router, listeners, shutdown, opts).await
}

/// [`serve`] with other limits.
pub async fn serve_with(
    router: Router,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send,
    opts: ServeOptions,
) -> io::Result<()> {
    let drain = opts.drain_deadline;
    let soft_limit = open_files_soft_limit();
    let max_connections = connection_cap(opts.max_connections, listeners.len(), soft_limit);
    if max_connections < opts.max_connections {
        tracing::warn!(
            open_files_limit = soft_limit,
            max_connections,
            "the open-files limit is low: fewer connections per listener, so that they cannot use up fleetd's descriptors (raise LimitNOFILE)"
        );
    }
    let router = router.layer(middleware::from_fn_with_state(
        opts.body_read_timeout,
        body_deadline,
    ));
    // Cancelled after the drain deadline, or when this future is dropped:
    // connections are dropped.
    let abort = CancellationToken::new();
    let _abort_on_drop = abort.clone().drop_guard();
    // Cancelled when shutdown begins: stop accepting, finish and close.
    let graceful = abort.child_token();
    let tracker = TaskTracker::new();

    for listener in listeners {
        tracing::info!(listener = %listener.describe(), max_connections, "serving the fleet API");
        tracker.spawn(accept_loop(
            listener,
            Conn {
                router: router.clone(),
                header_read_timeout: opts.header_read_timeout,
                graceful: graceful.clone(),
                abort: abort.clone(),
            },
            tracker.clone(),
            Arc::new(Semaphore::new(max_connections)),
        ));
    }

    shutdown.await;
    graceful.cancel();
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(deadline = ?drain, "API requests still running at the shutdown deadline; dropping them");
        abort.cancel();
        tracker.wait().await;
    }
    Ok(())
}

/// The soft `RLIMIT_NOFILE` of this process (`None` if unlimited or
/// unreadable), from `/proc/self/limits`: the workspace has no unsafe code
/// for `getrlimit`.
fn open_files_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Connections per listener: `configured`, lowered so that `listeners`
/// listeners at their cap still leave [`RESERVED_FDS`] descriptors under
/// the open-files limit, so a flood never takes the descriptors etcd, D-Bus
/// and unit files need. At least 1.
fn connection_cap(configured: usize, listeners: usize, soft_limit: Option<u64>) -> usize {
    let Some(limit) = soft_limit else {
        return configured.max(1);
    };
    let n = u64::try_from(listeners.max(1)).unwrap_or(u64::MAX);
    let budget = limit.saturating_sub(RESERVED_FDS.saturating_add(n)) / n;
    configured
        .min(usize::try_from(budget).unwrap_or(usize::MAX))
        .max(1)
}

/// What serving one connection needs.
#[derive(Clone)]
struct Conn {
    /// The API, with the body deadline around it.
    router: Router,
    /// See [`ServeOptions::header_read_timeout`].
    header_read_timeout: Duration,
    /// Cancelled when shutdown begins: finish the request and close.
    graceful: CancellationToken,
    /// Cancelled at the drain deadline: drop the connection.
    abort: CancellationToken,
}

/// Accept connections on one listener until shutdown begins, at most as
/// many at once as `permits` allows.
async fn accept_loop(
    listener: Listener,
    conn: Conn,
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
) {
    let graceful = conn.graceful.clone();
    let mut backoff = retry::API_ACCEPT;
    loop {
        let permit = tokio::select! {
            () = graceful.cancelled() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            () = graceful.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(listener = %listener.describe(), %error, backoff = ?delay, "accept failed");
                    if !retry::sleep(delay, &graceful).await {
                        return;
                    }
                    continue;
                }
            },
        };
        backoff.reset();
        let conn = conn.clone();
        tracker.spawn(async move {
            serve_connection(stream, conn).await;
            drop(permit);
        });
    }
}

/// Serve one connection: requests until the client closes it or a read
/// times out, or, once `graceful` is cancelled, until the request in flight
/// is answered; dropped when `abort` is cancelled.
async fn serve_connection(stream: Box<dyn Connection>, c: Conn) {
    let Conn {
        router,
        header_read_timeout,
        graceful,
        abort,
    } = c;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = graceful.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                () = abort.cancelled() => return,
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "API connection ended with an error");
    }
}

/// Bounds the time the request's body may take to arrive: past
/// `timeout` after the headers, reading it fails, and the answer (whatever
/// the handler made of the failure) becomes a 408 that closes the
/// connection, so the client cannot go on dribbling.
async fn body_deadline(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let timed_out = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            timed_out: timed_out.clone(),
        })
    });
    let res = next.run(req).await;
    if !timed_out.load(Ordering::SeqCst) {
        return res;
    }
    tracing::debug!(
        ?timeout,
        "request body not received in time; closing the connection"
    );
    let server = res.headers().get(SERVER).cloned();
    let mut res =
        super::ApiError::request_timeout(format!("request body not received within {timeout:?}"))
            .into_response();
    res.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    if let Some(server) = server {
        res.headers_mut().insert(SERVER, server);
    }
    res
}

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    /// The body as received.
    inner: Body,
    /// When reading gives up.
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// The bound, for the error message.
    timeout: Duration,
    /// Set when the deadline hit, for [`body_deadline`] to answer 408.
    timed_out: Arc<AtomicBool>,
}

/// The error of a body read past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
struct BodyTimeout(Duration);

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::SeqCst);
            return Poll::Ready(Some(Err(BodyTimeout(this.timeout).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_under_the_open_files_limit() {
        // systemd's default soft limit: one listener gets what is left.
        assert_eq!(connection_cap(1024, 1, Some(1024)), 1024 - 256 - 1);
        assert_eq!(connection_cap(1024, 2, Some(1024)), (1024 - 256 - 2) / 2);
        // The shipped LimitNOFILE=8192: the cap stands, up to 7 listeners.
        assert_eq!(connection_cap(1024, 2, Some(8192)), 1024);
        assert_eq!(connection_cap(1024, 7, Some(8192)), 1024);
        assert_eq!(connection_cap(1024, 1, None), 1024);
        assert_eq!(connection_cap(1024, 1, Some(10)), 1);
        assert_eq!(connection_cap(0, 1, None), 1);
        assert!(open_files_soft_limit().is_some_and(|n| n > 0));
    }

    #[tokio::test]
    async fn inherited_descriptors_are_typed_by_address_family() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = listener_from_fd(OwnedFd::from(tcp)).unwrap();
        assert_eq!(listener.tcp_addr(), Some(addr));

        let dir = tempfile::tempdir().unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.path().join("a.sock")).unwrap();
        let listener = listener_from_fd(OwnedFd::from(unix)).unwrap();
        assert!(matches!(listener, Listener::Unix(_)), "{listener:?}");
        assert!(listener.describe().ends_with("a.sock"));
    }
}
