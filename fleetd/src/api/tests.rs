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
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, SERVER};
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::*;
use crate::registry::{MemKv, Registry};

/// An API server on a temporary unix socket.
struct Server {
    /// The registry the server works on, for seeding and inspection.
    registry: Registry<MemKv>,
    /// Keeps the readiness gate open.
    _ready: watch::Sender<bool>,
    /// The socket.
    sock: PathBuf,
    /// Ends the server.
    stop: Option<oneshot::Sender<()>>,
    /// The serving task.
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// Keeps the socket's directory.
    _dir: tempfile::TempDir,
}

/// One answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    /// Asserts the status and the exact body, and the headers every answer
    /// carries.
    #[track_caller]
    fn expect(&self, status: u16, body: &str) {
        assert_eq!(
            (self.status, self.body.as_str()),
            (status, body),
            "{self:?}"
        );
        assert_eq!(
            self.header(SERVER.as_str()),
            Some(format!("fleetd/{}", crate::VERSION).as_str())
        );
    }

    /// Asserts a JSON answer.
    #[track_caller]
    fn expect_json(&self, status: u16, body: &str) {
        self.expect(status, body);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
    }

    /// Asserts an error answer.
    #[track_caller]
    fn expect_error(&self, status: u16, message: &str) {
        let body = serde_json::json!({"error": {"code": status, "message": message}}).to_string();
        self.expect_json(status, &body);
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

const MACHINE_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const HELLO: &str = r#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"/bin/sleep 1000"}]}"#;

impl Server {
    /// A ready server with the default page size.
    async fn start() -> Self {
        Self::start_with(100, true).await
    }

    async fn start_with(token_limit: u16, ready: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let sock = dir.path().join("fleet.sock");
        let registry = Registry::new(MemKv::new(), "/fleet-test/");
        let (ready_tx, ready_rx) = watch::channel(ready);
        let app = router(
            RegistryClient::new(registry.clone()),
            ApiOptions {
                token_limit,
                ready: ready_rx,
            },
        );
        let listener = bind_unix(&sock).expect("bind the test socket");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(app, vec![listener], async move {
            let _ = stop_rx.await;
        }));
        Server {
            registry,
            _ready: ready_tx,
            sock,
            stop: Some(stop_tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Stop the server and wait for it.
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the server task").expect("serve");
        }
    }

    /// Send a request with these headers and body.
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let stream = UnixStream::connect(&self.sock).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "domain-sock");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("a request");
        let res = sender.send_request(req).await.expect("an answer");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).expect("a UTF-8 body"),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], "").await
    }

    async fn put(&self, path: &str, body: &str) -> Reply {
        self.send("PUT", path, &[("content-type", "application/json")], body)
            .await
    }

    async fn patch(&self, body: &str) -> Reply {
        self.send(
            "PATCH",
            "/fleet/v1/machines",
            &[("content-type", "application/json")],
            body,
        )
        .await
    }
}

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
    let s = Server::start().await;
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

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let listener = bind_unix(&sock).unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_with_deadline(
        slow_router(),
        vec![listener],
        async move {
            let _ = stop_rx.await;
        },
        Duration::from_secs(5),
    ));
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
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let listener = bind_unix(&sock).unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_with_deadline(
        slow_router(),
        vec![listener],
        async move {
            let _ = stop_rx.await;
        },
        Duration::from_millis(100),
    ));
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
