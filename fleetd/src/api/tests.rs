//! Tests of serving the API: listeners, graceful shutdown, and registry
//! failures (which only `MemKv` can inject), over a plain hyper HTTP/1.1
//! client.
//!
//! The golden requests of every endpoint are in the contract suite
//! (`tests/tests/api_contract.rs`), which runs them over `MemKv` and over a
//! real etcd.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::testing::TestServer;
use super::*;
use crate::registry::{MemKv, Registry};

const MACHINE_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const HELLO: &str = r#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"/bin/sleep 1000"}]}"#;

// ---------------------------------------------------------------------------
// Listeners and shutdown
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unix_socket_is_replaced_and_group_accessible() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let first = bind_unix(&path).unwrap();
    drop(first);
    // The stale socket file is still there; binding again replaces it.
    assert!(path.exists());
    let second = bind_unix(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    assert!(second.describe().ends_with("api.sock"));
    // A regular file is not removed.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(bind_unix(&file).is_err());
    assert!(file.exists());
}

#[tokio::test]
async fn serves_tcp_and_shuts_down_gracefully() {
    let registry = Registry::new(MemKv::new(), "/t/");
    let (_ready_tx, ready_rx) = watch::channel(true);
    let app = router(
        RegistryClient::new(registry),
        ApiOptions {
            token_limit: 100,
            ready: ready_rx,
        },
    );
    let listener = bind_tcp("127.0.0.1:0").await.unwrap();
    let addr = listener.tcp_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(app, vec![listener], async move {
        let _ = stop_rx.await;
    }));

    // An idle keep-alive connection must not hold the shutdown up.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("/fleet/v1/units")
        .header(HOST, "x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get(CONTENT_TYPE).unwrap(), "application/json");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "{}");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("shutdown within the deadline")
        .unwrap()
        .unwrap();
    // The idle connection was closed by the server.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn no_socket_activation_without_listen_pid() {
    // The test process was not socket-activated (LISTEN_PID is not ours).
    assert!(from_listen_fds().unwrap().is_empty());
}

#[tokio::test]
async fn registry_failures_are_500s_without_details() {
    let s = TestServer::start(MemKv::new()).await;
    s.put("/fleet/v1/units/hello.service", HELLO)
        .await
        .expect(201, "");
    for path in [
        "/fleet/v1/units",
        "/fleet/v1/units/hello.service",
        "/fleet/v1/machines",
        "/fleet/v1/state",
    ] {
        s.registry.kv().fail_next(1);
        s.get(path).await.expect_error(500, "");
    }
    s.registry.kv().fail_next(1);
    s.put(
        "/fleet/v1/units/hello.service",
        r#"{"desiredState":"loaded"}"#,
    )
    .await
    .expect_error(500, "");
    s.registry.kv().fail_next(1);
    s.send("DELETE", "/fleet/v1/units/hello.service", &[], "")
        .await
        .expect_error(500, "");
    s.registry.kv().fail_next(1);
    s.patch(&format!(
        r#"[{{"op":"add","path":"/{MACHINE_A}/metadata/k","value":{{"value":"v"}}}}]"#
    ))
    .await
    .expect_error(500, "");
    // And the server carries on.
    s.get("/fleet/v1/units/hello.service")
        .await
        .expect(200, &s.get("/fleet/v1/units/hello.service").await.body);
    s.shutdown().await;
}

/// A router with slow handlers, to watch the drain.
fn slow_router() -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        )
        .route("/stuck", get(std::future::pending::<()>))
}

/// Start a GET on its own connection, returning once the request is sent.
async fn start_get(sock: &std::path::Path, path: &str) -> JoinHandle<Result<u16, hyper::Error>> {
    let stream = UnixStream::connect(sock).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(HOST, "x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender.send_request(req);
    let handle = tokio::spawn(async move { res.await.map(|r| r.status().as_u16()) });
    // Let the server read the request.
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle
}

/// [`slow_router`] on `s.sock` in the returned directory, draining for up
/// to `deadline` once the returned sender fires.
fn serve_slow(
    deadline: Duration,
) -> (
    tempfile::TempDir,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let listener = bind_unix(dir.path().join("s.sock")).unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_with_deadline(
        slow_router(),
        vec![listener],
        async move {
            let _ = stop_rx.await;
        },
        deadline,
    ));
    (dir, stop_tx, server)
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let (dir, stop_tx, server) = serve_slow(Duration::from_secs(5));
    let sock = dir.path().join("s.sock");
    let slow = start_get(&sock, "/slow").await;
    stop_tx.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_drops_requests_past_the_deadline() {
    let (dir, stop_tx, server) = serve_slow(Duration::from_millis(100));
    let sock = dir.path().join("s.sock");
    let stuck = start_get(&sock, "/stuck").await;
    let started = std::time::Instant::now();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    // The client sees the connection closed without an answer.
    assert!(stuck.await.unwrap().is_err());
}

// ---------------------------------------------------------------------------
// What one client may take: read timeouts and connections per listener, on
// real unix and TCP sockets
// ---------------------------------------------------------------------------

/// An accepted or dialled connection of either kind.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

/// Where a [`LimitedServer`] listens.
#[derive(Clone, Debug)]
enum Addr {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

impl Addr {
    async fn connect(&self) -> Box<dyn Stream> {
        match self {
            Addr::Unix(path) => Box::new(UnixStream::connect(path).await.expect("unix connect")),
            Addr::Tcp(addr) => Box::new(
                tokio::net::TcpStream::connect(addr)
                    .await
                    .expect("tcp connect"),
            ),
        }
    }
}

/// The API over `MemKv` on a unix and a TCP listener, with short limits.
struct LimitedServer {
    unix: Addr,
    tcp: Addr,
    opts: ServeOptions,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _ready: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl LimitedServer {
    async fn start(opts: ServeOptions) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let sock = dir.path().join("fleet.sock");
        let (ready_tx, ready_rx) = watch::channel(true);
        let app = router(
            RegistryClient::new(Registry::new(MemKv::new(), "/fleet-test/")),
            ApiOptions {
                token_limit: 100,
                ready: ready_rx,
            },
        );
        let unix = bind_unix(&sock).expect("bind the unix socket");
        let tcp = bind_tcp("127.0.0.1:0").await.expect("bind TCP");
        let tcp_addr = tcp.tcp_addr().expect("a TCP address");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(
            app,
            vec![unix, tcp],
            async move {
                let _ = stop_rx.await;
            },
            opts.clone(),
        ));
        LimitedServer {
            unix: Addr::Unix(sock),
            tcp: Addr::Tcp(tcp_addr),
            opts,
            stop: Some(stop_tx),
            task: Some(task),
            _ready: ready_tx,
            _dir: dir,
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("shutdown within 10 s")
                .expect("the server task")
                .expect("serve");
        }
    }
}

/// Short limits: the behaviour is the defaults', scaled down.
fn short_limits() -> ServeOptions {
    ServeOptions {
        header_read_timeout: Duration::from_millis(400),
        body_read_timeout: Duration::from_millis(400),
        max_connections: 4,
        drain_deadline: Duration::from_secs(1),
    }
}

/// Bound for anything that should happen "soon": generous, so a loaded
/// machine does not fail the tests; nothing here measures speed.
const SOON: Duration = Duration::from_secs(10);

/// A normal client: one GET on a new connection, answered 200.
async fn normal_get(addr: &Addr) {
    let stream = addr.connect().await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get("/fleet/v1/units")
        .header(HOST, "x")
        .body(Full::new(Bytes::new()))
        .expect("a request");
    let res = tokio::time::timeout(SOON, sender.send_request(req))
        .await
        .unwrap_or_else(|_| panic!("a normal client on {addr:?} is answered"))
        .expect("an answer");
    assert_eq!(res.status(), 200, "{addr:?}");
}

/// Reads until the server closes the connection (EOF or reset); returns
/// what it sent.
async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `first`, then `drip` every 100 ms until the write fails;
/// returns the read half's view: what the server sent before closing, and
/// how long after connecting it closed.
async fn slowloris(addr: &Addr, first: &str, drip: &'static str) -> (String, Duration) {
    use tokio::io::AsyncWriteExt as _;
    // Before the connection: the server's timers start later.
    let started = std::time::Instant::now();
    let stream = addr.connect().await;
    let (mut rd, mut wr) = tokio::io::split(stream);
    wr.write_all(first.as_bytes()).await.expect("first bytes");
    let dripping = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(drip.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let got = tokio::time::timeout(SOON, read_until_closed(&mut rd))
        .await
        .unwrap_or_else(|_| panic!("the slowloris client on {addr:?} is cut"));
    let elapsed = started.elapsed();
    dripping.abort();
    (got, elapsed)
}

#[tokio::test]
async fn slowloris_headers_are_cut_after_the_header_timeout() {
    let s = LimitedServer::start(short_limits()).await;
    for addr in [&s.unix, &s.tcp] {
        let offender = slowloris(
            addr,
            "GET /fleet/v1/units HTTP/1.1\r\nHost: x\r\n",
            "X-Drip: 1\r\n",
        );
        let normal = async {
            // Served while the offender dribbles, on both listeners.
            tokio::time::sleep(Duration::from_millis(100)).await;
            normal_get(&s.unix).await;
            normal_get(&s.tcp).await;
        };
        let ((got, elapsed), ()) = tokio::join!(offender, normal);
        assert!(
            elapsed >= s.opts.header_read_timeout,
            "{addr:?}: cut after {elapsed:?}, before the header timeout"
        );
        assert!(!got.contains("200 OK"), "{addr:?}: {got}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn slowloris_bodies_are_answered_408_and_cut() {
    let s = LimitedServer::start(short_limits()).await;
    for addr in [&s.unix, &s.tcp] {
        let offender = slowloris(
            addr,
            "PUT /fleet/v1/units/hello.service HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
            " ",
        );
        let normal = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            normal_get(&s.unix).await;
            normal_get(&s.tcp).await;
        };
        let ((got, elapsed), ()) = tokio::join!(offender, normal);
        assert!(
            elapsed >= s.opts.body_read_timeout,
            "{addr:?}: cut after {elapsed:?}, before the body timeout"
        );
        assert!(
            got.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{addr:?}: {got}"
        );
        let lower = got.to_ascii_lowercase();
        assert!(
            lower.contains("\r\nconnection: close\r\n"),
            "{addr:?}: {got}"
        );
        assert!(
            lower.contains(&format!("\r\nserver: fleetd/{}\r\n", crate::VERSION)),
            "{addr:?}: {got}"
        );
        assert!(
            got.ends_with(
                r#"{"error":{"code":408,"message":"request body not received within 400ms"}}"#
            ),
            "{addr:?}: {got}"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_header_timeout() {
    let s = LimitedServer::start(short_limits()).await;
    for addr in [&s.unix, &s.tcp] {
        // Idle from the start: nothing sent.
        let started = std::time::Instant::now();
        let mut silent = addr.connect().await;
        let got = tokio::time::timeout(SOON, read_until_closed(&mut silent))
            .await
            .unwrap_or_else(|_| panic!("a silent connection on {addr:?} is closed"));
        assert!(started.elapsed() >= s.opts.header_read_timeout);
        assert_eq!(got, "", "{addr:?}");

        // Idle after an answer: the keep-alive connection is closed.
        let stream = addr.connect().await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let conn = tokio::spawn(conn);
        let req = Request::get("/fleet/v1/units")
            .header(HOST, "x")
            .body(Full::new(Bytes::new()))
            .expect("a request");
        // Before the request: the server's idle timer starts after it.
        let asked = std::time::Instant::now();
        let res = sender.send_request(req).await.expect("an answer");
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.expect("the body");
        tokio::time::timeout(SOON, conn)
            .await
            .unwrap_or_else(|_| panic!("an idle keep-alive connection on {addr:?} is closed"))
            .expect("the connection task")
            .expect("a clean close");
        assert!(asked.elapsed() >= s.opts.header_read_timeout);
        normal_get(addr).await;
    }
    s.shutdown().await;
}

/// Connections to local port `port` that a process accepted: in
/// `/proc/net/tcp`, sockets with that local port, established, and with an
/// inode (a connection still in the listen backlog has none: no descriptor
/// refers to it yet).
fn accepted_connections(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 9 && f[1].ends_with(&local) && f[3] == "01" && f[9] != "0"
        })
        .count()
}

/// A served client that asks again and again over its keep-alive
/// connection to the TCP listener.
struct KeptClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeptClient {
    async fn connect(addr: &Addr) -> Self {
        let stream = addr.connect().await;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut kept = KeptClient { sender };
        kept.ask().await;
        kept
    }

    async fn ask(&mut self) {
        let req = Request::get("/fleet/v1/machines")
            .header(HOST, "x")
            .body(Full::new(Bytes::new()))
            .expect("a request");
        let res = tokio::time::timeout(SOON, self.sender.send_request(req))
            .await
            .expect("the kept client is answered")
            .expect("an answer on the kept connection");
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.expect("the body");
    }
}

/// Opens `n` connections to `addr` that send nothing, and gives the server
/// time to accept all it will.
async fn flood(addr: &Addr, n: usize) -> Vec<Box<dyn Stream>> {
    let mut flood = Vec::new();
    for _ in 0..n {
        flood.push(addr.connect().await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    flood
}

const FLOOD: usize = 64;

/// A flood of the TCP listener far beyond its limit: the server holds at
/// most the limit of descriptors for it (the rest wait in the backlog), a
/// client served before the flood keeps being answered, the unix listener
/// (its own limit) serves as usual, and once the flood is gone a new TCP
/// client is served. The header timeout is long here, so nothing of the
/// flood is cut during the test: whatever is answered is answered beside
/// it.
#[tokio::test]
async fn a_connection_flood_takes_at_most_the_limit() {
    let s = LimitedServer::start(ServeOptions {
        header_read_timeout: Duration::from_secs(60),
        ..short_limits()
    })
    .await;
    let limit = s.opts.max_connections;
    let mut kept = KeptClient::connect(&s.tcp).await;

    let Addr::Tcp(addr) = s.tcp else {
        unreachable!("the TCP address")
    };
    let flood = flood(&s.tcp, FLOOD).await;
    // The kept client and the flood's first ones hold the limit; the rest
    // wait in the backlog, holding no descriptor of the server's.
    let accepted = accepted_connections(addr.port());
    assert!(
        (1..=limit).contains(&accepted),
        "{accepted} connections accepted of {FLOOD}, with a limit of {limit}"
    );
    for _ in 0..5 {
        kept.ask().await;
        normal_get(&s.unix).await;
    }
    drop(flood);
    normal_get(&s.tcp).await;
    kept.ask().await;
    s.shutdown().await;
}

/// The flood connections the server accepted are cut after the header
/// timeout like any idle connection, which frees their slots for the
/// connections queued behind them.
#[tokio::test]
async fn flood_connections_are_cut_after_the_header_timeout() {
    let s = LimitedServer::start(short_limits()).await;
    let limit = s.opts.max_connections;
    let started = std::time::Instant::now();
    let mut flood = flood(&s.tcp, FLOOD).await;
    // The first ones in were accepted (the backlog is served in order);
    // the rest follow as slots free up.
    for (i, conn) in flood.iter_mut().take(2 * limit).enumerate() {
        let got = tokio::time::timeout(SOON, read_until_closed(conn))
            .await
            .unwrap_or_else(|_| panic!("flood connection {i} is cut"));
        assert_eq!(got, "");
    }
    assert!(started.elapsed() >= 2 * s.opts.header_read_timeout);
    normal_get(&s.unix).await;
    drop(flood);
    normal_get(&s.tcp).await;
    s.shutdown().await;
}

/// `/metrics` takes the cluster gauges from its source (the engine
/// leader's caches in the daemon) and sends no request to the store: with
/// every store request failing, the gauges are still there.
#[tokio::test]
async fn metrics_scrape_reads_nothing_from_the_store() {
    use crate::metrics::{ClusterGauges, ClusterReading};
    let kv = MemKv::new();
    let registry = Registry::new(kv.clone(), "/t/");
    let (_ready_tx, ready_rx) = watch::channel(true);
    let gauges = ClusterGauges {
        units: [(("launched".to_owned(), "launched".to_owned()), 2)].into(),
        unit_states: [("active".to_owned(), 2)].into(),
        machines: 1,
    };
    let app = router_with_cluster(
        RegistryClient::new(registry),
        ApiOptions {
            token_limit: 100,
            ready: ready_rx,
        },
        std::sync::Arc::new(move || ClusterReading::Ready(gauges.clone())),
    );
    let listener = bind_tcp("127.0.0.1:0").await.unwrap();
    let addr = listener.tcp_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(app, vec![listener], async move {
        let _ = stop_rx.await;
    }));
    kv.set_unavailable(true);
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/metrics")
        .header(HOST, "x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    for line in [
        "\nfleet_units{desired_state=\"launched\",current_state=\"launched\"} 2\n",
        "\nfleet_unit_states{active_state=\"active\"} 2\n",
        "\nfleet_machines 1\n",
        "\nfleet_cluster_scrape_success 1\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    drop(sender);
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
