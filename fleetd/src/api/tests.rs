//! Golden tests of the API: the router served on a temporary unix socket
//! over a `MemKv` registry, spoken to with a plain hyper HTTP/1.1 client.
//! Status codes, headers and bodies are compared byte for byte with
//! fleet-reference.md §4.

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
use crate::registry::{LeaseId, MemKv, Registry, ScheduleChange};
use crate::schema::{
    Capabilities, MachineId, MachineRecord, ScheduledUnit, TargetState, UnitRecord, UnitStateRecord,
};

/// An API server on a temporary unix socket.
struct Server {
    /// The registry the server works on, for seeding and inspection.
    registry: Registry<MemKv>,
    /// Opens the readiness gate.
    ready: watch::Sender<bool>,
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
const MACHINE_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const HELLO: &str = r#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"/bin/sleep 1000"}]}"#;
const HELLO_OPTIONS: &str =
    r#"[{"name":"ExecStart","section":"Service","value":"/bin/sleep 1000"}]"#;

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
            ready: ready_tx,
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

    /// The store's revision: unchanged means nothing was written.
    fn revision(&self) -> i64 {
        self.registry.kv().revision().0
    }

    /// Register a machine with config metadata.
    async fn machine(&self, id: &str, ip: &str, metadata: &[(&str, &str)]) -> LeaseId {
        let lease = self
            .registry
            .grant_lease(Duration::from_secs(3600))
            .await
            .unwrap();
        let record = MachineRecord {
            id: id.parse().unwrap(),
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
            .unwrap();
        lease
    }

    /// Store a unit directly.
    async fn unit(
        &self,
        name: &str,
        desired: TargetState,
        options: &[(&str, &str, &str)],
    ) -> UnitRecord {
        let record = UnitRecord {
            name: name.parse().unwrap(),
            desired_state: desired,
            options: options
                .iter()
                .map(|(s, n, v)| units::UnitOption::new(*s, *n, *v))
                .collect(),
        };
        self.registry.put_unit(&record).await.unwrap();
        record
    }

    /// Schedule `unit` to `machine` as the engine would.
    async fn schedule(&self, unit: &UnitRecord, machine: &str, lease: LeaseId) {
        let me: MachineId = machine.parse().unwrap();
        let Some(fence) = self.registry.acquire_leadership(&me, lease).await.unwrap() else {
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
            .unwrap();
    }

    /// Publish a unit state as an agent would.
    async fn state(
        &self,
        unit: &str,
        machine: &str,
        lease: LeaseId,
        hash: units::UnitHash,
        job: TargetState,
    ) {
        let record = UnitStateRecord {
            name: unit.parse().unwrap(),
            machine_id: machine.parse().unwrap(),
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            unit_hash: hash,
            job_state: job,
        };
        self.registry.publish_state(lease, &record).await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// Serving, routing, readiness
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unavailable_until_ready() {
    let s = Server::start_with(100, false).await;
    for path in [
        "/fleet/v1/units",
        "/fleet/v1/machines",
        "/",
        "/nope",
        "/healthz",
        "/fleet/v1/discovery",
    ] {
        s.get(path)
            .await
            .expect_error(503, "fleet server unable to communicate with etcd");
    }
    s.put("/fleet/v1/units/a.service", HELLO)
        .await
        .expect_error(503, "fleet server unable to communicate with etcd");
    s.ready.send(true).unwrap();
    s.get("/fleet/v1/units").await.expect_json(200, "{}");
    s.get("/healthz").await.expect(200, "ok");
    s.ready.send(false).unwrap();
    s.get("/fleet/v1/units")
        .await
        .expect_error(503, UNAVAILABLE);
    s.shutdown().await;
}

#[tokio::test]
async fn routing_errors() {
    let s = Server::start().await;
    s.get("/").await.expect_error(405, "");
    s.send("POST", "/", &[], "").await.expect_error(405, "");
    s.get("/fleet/v1").await.expect_error(405, "");
    s.get("/v1-alpha").await.expect_error(405, "");
    for path in [
        "/fleet/v1/",
        "/fleet/v1/units/",
        "/fleet/v1/units/a.service/x",
        "/fleet/v1/machines/x",
        "/fleet/v1/state/",
        "/fleet/v1/discovery/x",
        "/fleet/v2/units",
        "/metrics-not-here",
    ] {
        s.get(path).await.expect_error(404, "");
    }
    let only_get = "only GET supported against this resource";
    s.send("POST", "/fleet/v1/units", &[], "")
        .await
        .expect_error(405, only_get);
    s.send("DELETE", "/fleet/v1/state", &[], "")
        .await
        .expect_error(405, only_get);
    s.send("PUT", "/fleet/v1/state/a.service", &[], "")
        .await
        .expect_error(405, only_get);
    s.send("POST", "/healthz", &[], "")
        .await
        .expect_error(405, only_get);
    s.send("POST", "/fleet/v1/units/a.service", &[], "")
        .await
        .expect_error(
            405,
            "only GET, PUT and DELETE supported against this resource",
        );
    s.send("PATCH", "/fleet/v1/units/a.service", &[], "")
        .await
        .expect_error(
            405,
            "only GET, PUT and DELETE supported against this resource",
        );
    s.send("PUT", "/fleet/v1/machines", &[], "")
        .await
        .expect_error(405, "only GET and PATCH supported against this resource");
    s.send("POST", "/fleet/v1/discovery", &[], "")
        .await
        .expect_error(400, "only HTTP GET supported against this resource");
    s.shutdown().await;
}

#[tokio::test]
async fn discovery_document() {
    let s = Server::start().await;
    for prefix in PREFIXES {
        let r = s.get(&format!("{prefix}/discovery?alt=json")).await;
        r.expect_json(200, DISCOVERY);
    }
    let doc: serde_json::Value =
        serde_json::from_str(DISCOVERY).expect("the discovery document is JSON");
    assert_eq!(doc["rootUrl"], "$ENDPOINT/");
    assert_eq!(doc["servicePath"], "fleet/v1/");
    for schema in [
        "Unit",
        "UnitOption",
        "UnitPage",
        "UnitState",
        "UnitStatePage",
        "Machine",
        "MachinePage",
    ] {
        assert_eq!(doc["schemas"][schema]["id"], schema);
    }
    for (resource, method, verb, path) in [
        ("Machines", "List", "GET", "machines"),
        ("Machines", "Patch", "PATCH", "machines"),
        ("Units", "List", "GET", "units"),
        ("Units", "Get", "GET", "units/{unitName}"),
        ("Units", "Set", "PUT", "units/{unitName}"),
        ("Units", "Delete", "DELETE", "units/{unitName}"),
        ("UnitState", "List", "GET", "state"),
        ("UnitState", "Get", "GET", "state/{unitName}"),
    ] {
        let m = &doc["resources"][resource]["methods"][method];
        assert_eq!(
            (m["httpMethod"].as_str(), m["path"].as_str()),
            (Some(verb), Some(path))
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn empty_listings_are_empty_objects() {
    let s = Server::start().await;
    for prefix in PREFIXES {
        for resource in ["units", "machines", "state"] {
            s.get(&format!("{prefix}/{resource}?alt=json"))
                .await
                .expect_json(200, "{}");
        }
    }
    s.get("/healthz").await.expect(200, "ok");
    s.shutdown().await;
}

// ---------------------------------------------------------------------------
// Units
// ---------------------------------------------------------------------------

#[tokio::test]
async fn create_get_update_delete() {
    let s = Server::start().await;
    let r = s.put("/fleet/v1/units/hello.service", HELLO).await;
    r.expect(201, "");
    let expected = format!(
        r#"{{"currentState":"inactive","desiredState":"launched","name":"hello.service","options":{HELLO_OPTIONS}}}"#
    );
    s.get("/fleet/v1/units/hello.service")
        .await
        .expect_json(200, &expected);
    s.get("/v1-alpha/units/hello.service")
        .await
        .expect_json(200, &expected);
    s.get("/fleet/v1/units?alt=json")
        .await
        .expect_json(200, &format!(r#"{{"units":[{expected}]}}"#));

    // Desired state only.
    s.put(
        "/fleet/v1/units/hello.service",
        r#"{"desiredState":"loaded"}"#,
    )
    .await
    .expect(204, "");
    // The same content with a desired state is an update too.
    let same = HELLO.replace("launched", "inactive");
    s.put("/fleet/v1/units/hello.service", &same)
        .await
        .expect(204, "");
    let unit: serde_json::Value =
        serde_json::from_str(&s.get("/fleet/v1/units/hello.service").await.body).unwrap();
    assert_eq!(unit["desiredState"], "inactive");

    s.send("DELETE", "/fleet/v1/units/hello.service", &[], "")
        .await
        .expect(204, "");
    s.send("DELETE", "/fleet/v1/units/hello.service", &[], "")
        .await
        .expect_error(404, "unit does not exist");
    s.get("/fleet/v1/units/hello.service")
        .await
        .expect_error(404, "unit does not exist");
    s.get("/fleet/v1/units/not-a-name")
        .await
        .expect_error(404, "unit does not exist");
    s.get("/fleet/v1/units").await.expect_json(200, "{}");
    s.shutdown().await;
}

#[tokio::test]
async fn put_replaces_content_and_defaults_to_inactive() {
    let s = Server::start().await;
    s.put("/fleet/v1/units/hello.service", HELLO)
        .await
        .expect(201, "");
    let other = r#"{"options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#;
    s.put("/fleet/v1/units/hello.service", other)
        .await
        .expect(201, "");
    s.get("/fleet/v1/units/hello.service").await.expect_json(
        200,
        r#"{"currentState":"inactive","desiredState":"inactive","name":"hello.service","options":[{"name":"ExecStart","section":"Service","value":"/bin/true"}]}"#,
    );
    // Same content, no desired state: nothing to do.
    s.put("/fleet/v1/units/hello.service", other)
        .await
        .expect_error(409, "must provide DesiredState to update existing unit");
    // The body may carry the (same) name, unknown fields and nulls.
    s.put(
        "/fleet/v1/units/hello.service",
        r#"{"name":"hello.service","desiredState":"launched","currentState":"inactive","machineID":"x","options":null}"#,
    )
    .await
    .expect(204, "");
    s.shutdown().await;
}

#[tokio::test]
async fn put_refusals_change_nothing() {
    let s = Server::start().await;
    s.put("/fleet/v1/units/hello.service", HELLO)
        .await
        .expect(201, "");
    s.put(
        "/fleet/v1/units/tmpl@.service",
        r#"{"options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#,
    )
    .await
    .expect(201, "");
    let before = (s.revision(), s.get("/fleet/v1/units").await.body);

    let u = "/fleet/v1/units/hello.service";
    // 415
    s.send("PUT", u, &[], HELLO)
        .await
        .expect_error(415, "expected 1 Content-Type, got 0");
    s.send("PUT", u, &[("content-type", "text/plain")], HELLO)
        .await
        .expect_error(415, "only acceptable Content-Type is application/json");
    s.send(
        "PUT",
        u,
        &[
            ("content-type", "application/json"),
            ("content-type", "application/json"),
        ],
        HELLO,
    )
    .await
    .expect_error(415, "expected 1 Content-Type, got 2");
    // A media-type parameter is fine (and this is a valid update).
    // 400: decoding
    s.put(u, "{").await.expect_error(
        400,
        "unable to decode body: EOF while parsing an object at line 1 column 1",
    );
    s.put(u, r#"{"desiredState":"bogus"}"#).await.expect_error(
        400,
        r#"unable to decode body: invalid state "bogus": must be one of inactive, loaded, launched at line 1 column 24"#,
    );
    s.put(u, r#"{"options":"x"}"#).await.expect_error(
        400,
        r#"unable to decode body: invalid type: string "x", expected a sequence at line 1 column 14"#,
    );
    // 400: names
    s.put(u, r#"{"name":"other.service","desiredState":"loaded"}"#)
        .await
        .expect_error(
            400,
            r#"name in URL "hello.service" differs from unit name in request body "other.service""#,
        );
    s.put("/fleet/v1/units/hello", r#"{"desiredState":"loaded"}"#)
        .await
        .expect_error(400, r#"unit name must contain ".""#);
    s.put("/fleet/v1/units/hello.bogus", HELLO)
        .await
        .expect_error(400, r#"invalid unit type: "bogus""#);
    s.put("/fleet/v1/units/@x.service", HELLO)
        .await
        .expect_error(400, r#"unit name cannot start in "@""#);
    // 409
    s.put(
        "/fleet/v1/units/new.service",
        r#"{"desiredState":"launched"}"#,
    )
    .await
    .expect_error(409, "unit does not exist and options field empty");
    s.put(
        "/fleet/v1/units/new.service",
        r#"{"desiredState":"launched","options":[]}"#,
    )
    .await
    .expect_error(409, "unit does not exist and options field empty");
    s.put(u, "{}")
        .await
        .expect_error(409, "must provide DesiredState to update existing unit");
    // 400: option combinations, on create and on replace
    let bad = r#"{"options":[{"section":"X-Fleet","name":"MachineID","value":"abc"},{"section":"X-Fleet","name":"Global","value":"true"}]}"#;
    s.put("/fleet/v1/units/new.service", bad)
        .await
        .expect_error(400, "MachineID cannot be used with Global");
    s.put(u, bad)
        .await
        .expect_error(400, "MachineID cannot be used with Global");
    let peers = r#"{"options":[{"section":"X-Fleet","name":"MachineOf","value":"db.service"},{"section":"X-Fleet","name":"Conflicts","value":"db*"}]}"#;
    s.put("/fleet/v1/units/new.service", peers)
        .await
        .expect_error(
            400,
            r#"unresolvable requirements: peer "db.service" matches conflict "db*""#,
        );
    let long = format!(
        r#"{{"options":[{{"section":"Service","name":"ExecStart","value":"{}"}}]}}"#,
        "x".repeat(3000)
    );
    let r = s.put("/fleet/v1/units/new.service", &long).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("line too long"), "{r:?}");
    // 400: templates cannot be activated, on create or update
    for state in ["loaded", "launched"] {
        s.put(
            "/fleet/v1/units/tmpl@.service",
            &format!(r#"{{"desiredState":"{state}"}}"#),
        )
        .await
        .expect_error(400, r#"cannot activate template "tmpl@.service""#);
        s.put(
            "/fleet/v1/units/new@.service",
            &format!(r#"{{"desiredState":"{state}","options":[{{"section":"Service","name":"ExecStart","value":"/bin/true"}}]}}"#),
        )
        .await
        .expect_error(400, r#"cannot activate template "new@.service""#);
    }
    // 413
    let huge = format!(
        r#"{{"desiredState":"loaded","name":"{}"}}"#,
        "x".repeat(BODY_LIMIT)
    );
    s.put(u, &huge)
        .await
        .expect_error(413, &format!("request body larger than {BODY_LIMIT} bytes"));

    assert_eq!((s.revision(), s.get("/fleet/v1/units").await.body), before);

    // A template may be set inactive, and parameters on the media type are fine.
    s.send(
        "PUT",
        "/fleet/v1/units/tmpl@.service",
        &[("content-type", "application/json; charset=utf-8")],
        r#"{"desiredState":"inactive"}"#,
    )
    .await
    .expect(204, "");
    s.shutdown().await;
}

#[tokio::test]
async fn current_state_follows_schedule_and_agent() {
    let s = Server::start().await;
    let lease = s.machine(MACHINE_A, "10.0.0.1", &[]).await;
    let opts = [("Service", "ExecStart", "/bin/sleep 1")];
    let a = s.unit("a.service", TargetState::Launched, &opts).await;
    let b = s.unit("b.service", TargetState::Launched, &opts).await;
    let c = s.unit("c.service", TargetState::Loaded, &opts).await;
    s.unit(
        "g.service",
        TargetState::Launched,
        &[
            ("Service", "ExecStart", "/bin/true"),
            ("X-Fleet", "Global", "true"),
        ],
    )
    .await;
    s.unit("d.service", TargetState::Inactive, &opts).await;
    s.schedule(&a, MACHINE_A, lease).await;
    s.schedule(&b, MACHINE_A, lease).await;
    s.schedule(&c, MACHINE_A, lease).await;
    // a: reported launched with its current content.
    s.state(
        "a.service",
        MACHINE_A,
        lease,
        a.hash(),
        TargetState::Launched,
    )
    .await;
    // b: reported launched, but for older content: at most loaded.
    s.state(
        "b.service",
        MACHINE_A,
        lease,
        units::UnitHash::from_bytes([7; 20]),
        TargetState::Launched,
    )
    .await;
    // c: scheduled, nothing reported yet: inactive.
    // g: global, reported on a machine.
    s.state(
        "g.service",
        MACHINE_A,
        lease,
        units::UnitHash::default(),
        TargetState::Launched,
    )
    .await;

    let opt = r#"[{"name":"ExecStart","section":"Service","value":"/bin/sleep 1"}]"#;
    let ua = format!(
        r#"{{"currentState":"launched","desiredState":"launched","machineID":"{MACHINE_A}","name":"a.service","options":{opt}}}"#
    );
    let ub = format!(
        r#"{{"currentState":"loaded","desiredState":"launched","machineID":"{MACHINE_A}","name":"b.service","options":{opt}}}"#
    );
    let uc = format!(
        r#"{{"currentState":"inactive","desiredState":"loaded","machineID":"{MACHINE_A}","name":"c.service","options":{opt}}}"#
    );
    let ud = format!(
        r#"{{"currentState":"inactive","desiredState":"inactive","name":"d.service","options":{opt}}}"#
    );
    let gopts = r#"[{"name":"ExecStart","section":"Service","value":"/bin/true"},{"name":"Global","section":"X-Fleet","value":"true"}]"#;
    let ug_list = format!(
        r#"{{"currentState":"inactive","desiredState":"launched","name":"g.service","options":{gopts}}}"#
    );
    let ug_one = format!(r#"{{"desiredState":"launched","name":"g.service","options":{gopts}}}"#);

    s.get("/fleet/v1/units/a.service")
        .await
        .expect_json(200, &ua);
    s.get("/fleet/v1/units/b.service")
        .await
        .expect_json(200, &ub);
    s.get("/fleet/v1/units/c.service")
        .await
        .expect_json(200, &uc);
    s.get("/fleet/v1/units/d.service")
        .await
        .expect_json(200, &ud);
    s.get("/fleet/v1/units/g.service")
        .await
        .expect_json(200, &ug_one);
    s.get("/fleet/v1/units").await.expect_json(
        200,
        &format!(r#"{{"units":[{ua},{ub},{uc},{ud},{ug_list}]}}"#),
    );
    s.shutdown().await;
}

// ---------------------------------------------------------------------------
// Unit states
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unit_states_filters_and_lookup() {
    let s = Server::start().await;
    let la = s.machine(MACHINE_A, "10.0.0.1", &[]).await;
    let lb = s.machine(MACHINE_B, "10.0.0.2", &[]).await;
    let h = units::UnitHash::from_bytes([0xab; 20]);
    s.state("b.service", MACHINE_B, lb, h, TargetState::Launched)
        .await;
    s.state("a.service", MACHINE_B, lb, h, TargetState::Launched)
        .await;
    s.state("a.service", MACHINE_A, la, h, TargetState::Loaded)
        .await;
    let hex = "ab".repeat(20);
    let st = |unit: &str, m: &str| {
        format!(
            r#"{{"hash":"{hex}","machineID":"{m}","name":"{unit}","systemdActiveState":"active","systemdLoadState":"loaded","systemdSubState":"running"}}"#
        )
    };
    let (aa, ab, bb) = (
        st("a.service", MACHINE_A),
        st("a.service", MACHINE_B),
        st("b.service", MACHINE_B),
    );
    s.get("/fleet/v1/state")
        .await
        .expect_json(200, &format!(r#"{{"states":[{aa},{ab},{bb}]}}"#));
    s.get(&format!("/fleet/v1/state?machineID={MACHINE_B}"))
        .await
        .expect_json(200, &format!(r#"{{"states":[{ab},{bb}]}}"#));
    s.get("/fleet/v1/state?unitName=a.service")
        .await
        .expect_json(200, &format!(r#"{{"states":[{aa},{ab}]}}"#));
    // The first value of each filter counts; an empty one does not filter.
    s.get(&format!(
        "/fleet/v1/state?unitName=a.service&unitName=b.service&machineID={MACHINE_B}"
    ))
    .await
    .expect_json(200, &format!(r#"{{"states":[{ab}]}}"#));
    s.get("/fleet/v1/state?unitName=&machineID=")
        .await
        .expect_json(200, &format!(r#"{{"states":[{aa},{ab},{bb}]}}"#));
    s.get("/fleet/v1/state?unitName=nope.service")
        .await
        .expect_json(200, "{}");
    s.get("/fleet/v1/state?unitName=bad")
        .await
        .expect_json(200, "{}");
    s.get("/fleet/v1/state/a.service")
        .await
        .expect_json(200, &aa);
    s.get("/fleet/v1/state/b.service")
        .await
        .expect_json(200, &bb);
    s.get("/fleet/v1/state/c.service")
        .await
        .expect_error(404, "unit state does not exist");
    s.get("/fleet/v1/state/bad")
        .await
        .expect_error(404, "unit state does not exist");
    s.shutdown().await;
}

// ---------------------------------------------------------------------------
// Machines
// ---------------------------------------------------------------------------

#[tokio::test]
async fn machines_list_and_patch() {
    let s = Server::start().await;
    s.machine(MACHINE_B, "", &[]).await;
    s.machine(MACHINE_A, "10.0.0.1", &[("region", "us"), ("role", "web")])
        .await;
    s.get("/fleet/v1/machines").await.expect_json(
        200,
        &format!(
            r#"{{"machines":[{{"id":"{MACHINE_A}","metadata":{{"region":"us","role":"web"}},"primaryIP":"10.0.0.1"}},{{"id":"{MACHINE_B}"}}]}}"#
        ),
    );

    let ops = format!(
        r#"[{{"op":"add","path":"/{MACHINE_A}/metadata/disk","value":{{"value":"ssd"}}}},
            {{"op":"replace","path":"/{MACHINE_A}/metadata/role","value":{{"value":"db"}}}},
            {{"op":"remove","path":"/{MACHINE_A}/metadata/region"}},
            {{"op":"add","path":"/{MACHINE_B}/metadata/x.y-z_1","value":{{"value":"1"}}}},
            {{"op":"add","path":"/ghost/metadata/k","value":{{"value":"v"}}}}]"#
    );
    let r = s.patch(&ops).await;
    r.expect_json(204, "");
    s.get("/fleet/v1/machines").await.expect_json(
        200,
        &format!(
            r#"{{"machines":[{{"id":"{MACHINE_A}","metadata":{{"disk":"ssd","role":"db"}},"primaryIP":"10.0.0.1"}},{{"id":"{MACHINE_B}","metadata":{{"x.y-z_1":"1"}}}}]}}"#
        ),
    );
    // Remove what was added: the key is gone.
    s.patch(&format!(
        r#"[{{"op":"remove","path":"/{MACHINE_B}/metadata/x.y-z_1"}}]"#
    ))
    .await
    .expect_json(204, "");
    let r = s.get("/fleet/v1/machines").await;
    assert!(
        r.body.ends_with(&format!(r#"{{"id":"{MACHINE_B}"}}]}}"#)),
        "{r:?}"
    );
    // Go's decoder matched field names in any case.
    s.patch(&format!(
        r#"[{{"op":"add","Path":"/{MACHINE_B}/metadata/k","Value":{{"Value":"v"}}}}]"#
    ))
    .await
    .expect_json(204, "");
    s.patch("[]").await.expect_json(204, "");
    s.shutdown().await;
}

#[tokio::test]
async fn machines_patch_refusals_change_nothing() {
    let s = Server::start().await;
    s.machine(MACHINE_A, "10.0.0.1", &[("role", "web")]).await;
    let before = (s.revision(), s.get("/fleet/v1/machines").await.body);
    let good =
        format!(r#"{{"op":"add","path":"/{MACHINE_A}/metadata/ok","value":{{"value":"1"}}}}"#);
    for (op, message) in [
        (
            format!(r#"{{"op":"move","path":"/{MACHINE_A}/metadata/k","value":{{"value":"v"}}}}"#),
            "invalid op: expect add, remove, or replace",
        ),
        (
            format!(r#"{{"path":"/{MACHINE_A}/metadata/k","value":{{"value":"v"}}}}"#),
            "invalid op: expect add, remove, or replace",
        ),
        (
            format!(r#"{{"op":"add","path":"/{MACHINE_A}/meta/k","value":{{"value":"v"}}}}"#),
            "machine metadata path invalid",
        ),
        (
            format!(r#"{{"op":"add","path":"/{MACHINE_A}/metadata/k/l","value":{{"value":"v"}}}}"#),
            "machine metadata path invalid",
        ),
        (
            r#"{"op":"remove"}"#.to_owned(),
            "machine metadata path invalid",
        ),
        (
            format!(r#"{{"op":"add","path":"/{MACHINE_A}/metadata/k"}}"#),
            "invalid value: add and replace require a value",
        ),
        (
            format!(
                r#"{{"op":"replace","path":"/{MACHINE_A}/metadata/k","value":{{"value":""}}}}"#
            ),
            "invalid value: add and replace require a value",
        ),
    ] {
        // The valid op first: nothing is applied unless all are valid.
        s.patch(&format!("[{good},{op}]"))
            .await
            .expect_error(400, message);
    }
    // The upstream doc's bare value is refused.
    let r = s
        .patch(&format!(
            r#"[{{"op":"add","path":"/{MACHINE_A}/metadata/k","value":"v"}}]"#
        ))
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("invalid type: string"), "{r:?}");
    s.patch("[")
        .await
        .expect_error(400, "EOF while parsing a list at line 1 column 1");
    s.patch("{}").await.expect_error(
        400,
        "invalid type: map, expected a sequence at line 1 column 0",
    );
    assert_eq!(
        (s.revision(), s.get("/fleet/v1/machines").await.body),
        before
    );
    s.shutdown().await;
}

// ---------------------------------------------------------------------------
// Pagination
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pagination_at_the_default_limit() {
    let s = Server::start().await;
    for i in 0..100 {
        s.unit(
            &format!("u{i:03}.service"),
            TargetState::Inactive,
            &[("Service", "ExecStart", "/bin/true")],
        )
        .await;
    }
    let first: schema_page::Units =
        serde_json::from_str(&s.get("/fleet/v1/units").await.body).unwrap();
    assert_eq!(first.units.len(), 100);
    assert_eq!(first.units[0].name, "u000.service");
    assert_eq!(first.next_page_token.as_deref(), Some("ZAACAA=="));
    s.get("/fleet/v1/units?nextPageToken=ZAACAA==&alt=json")
        .await
        .expect_json(200, "{}");
    s.get("/fleet/v1/units?nextPageToken=ZAACAA%3D%3D")
        .await
        .expect_json(200, "{}");

    for resource in ["units", "machines", "state"] {
        let path = format!("/fleet/v1/{resource}");
        s.get(&format!("{path}?nextPageToken=EwBMLg=="))
            .await
            .expect_error(400, "token limit must be 100");
        s.get(&format!("{path}?nextPageToken=ZAAAAA=="))
            .await
            .expect_error(400, "token page must be greater than zero");
        s.get(&format!(
            "{path}?nextPageToken=ZAACAA==&nextPageToken=ZAACAA=="
        ))
        .await
        .expect_error(400, "too many values for page token");
        s.get(&format!("{path}?nextPageToken=*"))
            .await
            .expect_error(400, "illegal base64 data at input byte 0");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn pagination_walks_every_listing() {
    let s = Server::start_with(2, true).await;
    let la = s.machine(MACHINE_A, "", &[]).await;
    let lb = s.machine(MACHINE_B, "", &[]).await;
    for name in ["a.service", "b.service", "c.service", "d.service"] {
        s.unit(
            name,
            TargetState::Inactive,
            &[("Service", "ExecStart", "/bin/true")],
        )
        .await;
        s.state(
            name,
            MACHINE_A,
            la,
            units::UnitHash::default(),
            TargetState::Loaded,
        )
        .await;
    }
    s.state(
        "a.service",
        MACHINE_B,
        lb,
        units::UnitHash::default(),
        TargetState::Loaded,
    )
    .await;

    let page1 = PageToken { limit: 2, page: 2 }.encode();
    let page2 = PageToken { limit: 2, page: 3 }.encode();
    assert_eq!((page1.as_str(), page2.as_str()), ("AgACAA==", "AgADAA=="));
    let names = |body: &str, key: &str| -> (Vec<String>, Option<String>) {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let items = v[key].as_array().cloned().unwrap_or_default();
        let names = items
            .iter()
            .map(|i| {
                format!(
                    "{}{}",
                    i["name"].as_str().or(i["id"].as_str()).unwrap(),
                    i["machineID"]
                        .as_str()
                        .map(|m| format!("@{}", &m[..1]))
                        .unwrap_or_default()
                )
            })
            .collect();
        (names, v["nextPageToken"].as_str().map(str::to_owned))
    };

    // Units: 4 in pages of 2: the second page is full, so a third, empty one follows.
    let r = s.get("/fleet/v1/units").await;
    assert_eq!(
        names(&r.body, "units"),
        (
            vec!["a.service".into(), "b.service".into()],
            Some(page1.clone())
        )
    );
    let r = s
        .get(&format!("/fleet/v1/units?nextPageToken={page1}"))
        .await;
    assert_eq!(
        names(&r.body, "units"),
        (
            vec!["c.service".into(), "d.service".into()],
            Some(page2.clone())
        )
    );
    s.get(&format!("/fleet/v1/units?nextPageToken={page2}"))
        .await
        .expect_json(200, "{}");
    s.get("/fleet/v1/units?nextPageToken=ZAACAA==")
        .await
        .expect_error(400, "token limit must be 2");

    // States: 5; the last page is partial and has no token.
    let r = s
        .get(&format!("/fleet/v1/state?nextPageToken={page2}"))
        .await;
    assert_eq!(names(&r.body, "states"), (vec!["d.service@a".into()], None));
    let r = s.get("/fleet/v1/state").await;
    assert_eq!(
        names(&r.body, "states"),
        (
            vec!["a.service@a".into(), "a.service@b".into()],
            Some(page1.clone())
        )
    );

    // Machines: exactly one full page, then `{}`.
    let r = s.get("/fleet/v1/machines").await;
    assert_eq!(
        names(&r.body, "machines"),
        (
            vec![MACHINE_A.into(), MACHINE_B.into()],
            Some(page1.clone())
        )
    );
    s.get(&format!("/fleet/v1/machines?nextPageToken={page1}"))
        .await
        .expect_json(200, "{}");
    s.shutdown().await;
}

/// Typed pages for the tests.
mod schema_page {
    pub use crate::schema::UnitPage as Units;
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

#[tokio::test]
async fn percent_encoded_unit_names() {
    let s = Server::start().await;
    s.put("/fleet/v1/units/web%401.service", HELLO)
        .await
        .expect(201, "");
    let r = s.get("/fleet/v1/units/web@1.service").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(r#""name":"web@1.service""#), "{r:?}");
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
