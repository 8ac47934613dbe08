//! An in-process API server for tests: the [`router`] over a
//! [`RegistryClient`] on any [`Kv`], served on a temporary unix socket and
//! spoken to with a plain hyper HTTP/1.1 client.
//!
//! fleetd's own unit tests (`api/tests.rs`), the API contract suite
//! (`tests/tests/api_contract.rs`) and the listing benches
//! (`tests/examples/`) all serve the API through it. It is built
//! for `cfg(test)` and with the `test-support` feature only, so the daemon
//! never carries it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HOST, SERVER};
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{ApiOptions, bind_unix, router, serve};
use crate::client::RegistryClient;
use crate::registry::{Kv, LeaseId, Registry, ScheduleChange};
use crate::schema::{
    Capabilities, MachineId, MachineRecord, ScheduledUnit, TargetState, UnitRecord, UnitStateRecord,
};

/// An API server on a temporary unix socket.
pub struct TestServer<K> {
    /// The registry the server works on, for seeding and inspection.
    pub registry: Registry<K>,
    /// The registry's key prefix, unique in the process (and across
    /// processes, by the pid): everything the test stores is under it, so
    /// tests may share one store.
    pub prefix: String,
    /// Opens and closes the readiness gate.
    pub ready: watch::Sender<bool>,
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
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, which must be UTF-8.
    pub body: String,
}

impl Reply {
    /// Asserts the status and the exact body, and the headers every answer
    /// carries.
    #[track_caller]
    pub fn expect(&self, status: u16, body: &str) {
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
    pub fn expect_json(&self, status: u16, body: &str) {
        self.expect(status, body);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
    }

    /// Asserts an error answer.
    #[track_caller]
    pub fn expect_error(&self, status: u16, message: &str) {
        let body = serde_json::json!({"error": {"code": status, "message": message}}).to_string();
        self.expect_json(status, &body);
    }

    /// The value of header `name`, if it is there and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl<K: Kv> TestServer<K> {
    /// A ready server over `kv` with the default page size.
    pub async fn start(kv: K) -> Self {
        Self::start_with(kv, 100, true).await
    }

    /// A server over `kv` with page size `token_limit` and the readiness
    /// gate open if `ready`, under a key prefix of its own.
    pub async fn start_with(kv: K, token_limit: u16, ready: bool) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "/fleet-test-{}-{}/",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Self::over(Registry::new(kv, &prefix), token_limit, ready).await
    }

    /// A server over `registry` (whose keys may be filled already), with
    /// page size `token_limit` and the readiness gate open if `ready`.
    pub async fn over(registry: Registry<K>, token_limit: u16, ready: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let sock = dir.path().join("fleet.sock");
        let prefix = registry.keys().prefix().to_owned();
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
        TestServer {
            registry,
            prefix,
            ready: ready_tx,
            sock,
            stop: Some(stop_tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// The server's endpoint for an API client (`unix://<socket>`).
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// Stop the server and wait for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the server task").expect("serve");
        }
    }

    /// Send a request with these headers and body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
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

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], "").await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &str) -> Reply {
        self.send("PUT", path, &[("content-type", "application/json")], body)
            .await
    }

    /// `PATCH /fleet/v1/machines` with a JSON body.
    pub async fn patch(&self, body: &str) -> Reply {
        self.send(
            "PATCH",
            "/fleet/v1/machines",
            &[("content-type", "application/json")],
            body,
        )
        .await
    }

    /// Every key stored under the test's prefix, with its value and
    /// `mod_revision`: unchanged means nothing was written (the store's own
    /// revision may be shared with other tests on the same store).
    pub async fn stored(&self) -> Vec<(String, Vec<u8>, i64)> {
        let (kvs, _) = self
            .registry
            .kv()
            .list(&self.prefix)
            .await
            .expect("list the test's keys");
        kvs.into_iter()
            .map(|kv| (kv.key, kv.value, kv.mod_revision))
            .collect()
    }

    /// Register machine `id` at `ip` with config `metadata`, on a lease of
    /// its own (an hour).
    pub async fn machine(&self, id: &str, ip: &str, metadata: &[(&str, &str)]) -> LeaseId {
        let lease = self
            .registry
            .grant_lease(Duration::from_secs(3600))
            .await
            .expect("a lease");
        let record = MachineRecord {
            id: id.parse().expect("a machine ID"),
            public_ip: ip.to_owned(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            capabilities: Capabilities::default(),
            version: crate::VERSION.to_owned(),
            token: format!("token-{id}"),
        };
        self.registry
            .register_machine(&record, lease)
            .await
            .expect("register the machine");
        lease
    }

    /// Store a unit directly, with these `(section, name, value)` options.
    pub async fn unit(
        &self,
        name: &str,
        desired: TargetState,
        options: &[(&str, &str, &str)],
    ) -> UnitRecord {
        let record = UnitRecord {
            name: name.parse().expect("a unit name"),
            desired_state: desired,
            options: options
                .iter()
                .map(|(s, n, v)| units::UnitOption::new(*s, *n, *v))
                .collect(),
        };
        self.registry
            .put_unit(&record)
            .await
            .expect("store the unit");
        record
    }

    /// Schedule `unit` to `machine` as the engine would, leading on `lease`.
    pub async fn schedule(&self, unit: &UnitRecord, machine: &str, lease: LeaseId) {
        let me: MachineId = machine.parse().expect("a machine ID");
        let Some(fence) = self
            .registry
            .acquire_leadership(&me, lease)
            .await
            .expect("campaign")
        else {
            panic!("the test machine must lead");
        };
        let change = ScheduleChange::Put {
            unit: unit.name.clone(),
            machine: me,
            entry: ScheduledUnit {
                desired_state: TargetState::Launched,
                hash: unit.hash(),
                global: false,
            },
        };
        self.registry
            .apply_schedule(&fence, &[change])
            .await
            .expect("apply the schedule");
    }

    /// Publish a unit state as an agent would.
    pub async fn state(
        &self,
        unit: &str,
        machine: &str,
        lease: LeaseId,
        hash: units::UnitHash,
        job: TargetState,
    ) {
        let record = UnitStateRecord {
            name: unit.parse().expect("a unit name"),
            machine_id: machine.parse().expect("a machine ID"),
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            unit_hash: hash,
            job_state: job,
        };
        self.registry
            .publish_state(lease, &record)
            .await
            .expect("publish the state");
    }
}
