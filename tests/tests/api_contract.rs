//! The API contract: golden requests against `fleetd::api`, served by
//! [`Server`] (`fleetd::api::testing::TestServer`, the API on a temporary unix
//! socket over a `RegistryClient`), run once over [`MemKv`]
//! and once over [`EtcdKv`] on a real etcd. Status codes, headers and bodies
//! are compared byte for byte with fleet-reference.md §4 (with the fixes of
//! §0), so the in-memory registry the unit tests use answers exactly as etcd
//! does, and the API's answers do not depend on the store.
//!
//! `api_contract!` expands each listed test into `mem::<name>` and
//! `etcd::<name>`. The etcd tests share one etcd for the binary (started on
//! first use, stopped when the process exits), each under its own key
//! prefix. A missing etcd fails the etcd half with a message naming what to
//! install.
//!
//! "Nothing stored changes" is checked by comparing every key under the
//! test's prefix, with its value and `mod_revision`, before and after.

use std::time::Duration;

use fleetd::api::testing::TestServer as Server;
use fleetd::api::{BODY_LIMIT, DISCOVERY, DISCOVERY_EXTENSIONS, PREFIXES, PageToken, UNAVAILABLE};
use fleetd::registry::{EtcdKv, Kv, MemKv};
use fleetd::schema::TargetState;
use testbed::etcd::{Etcd, shared as shared_etcd};

/// The bound on each etcd request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A client of the binary's shared etcd; panics, naming what is missing,
/// when there is none.
async fn etcd_kv() -> EtcdKv {
    let endpoint = tokio::task::spawn_blocking(|| shared_etcd().map(Etcd::endpoint))
        .await
        .expect("the etcd start-up task")
        .unwrap_or_else(|e| panic!("no etcd for the API contract: {e:#}"));
    EtcdKv::connect(&[endpoint], REQUEST_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the shared etcd: {e}"))
}

/// Expand each test once per backend.
macro_rules! api_contract {
    ($($name:ident),* $(,)?) => {
        mod mem {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::MemKv::new()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::etcd_kv().await).await;
                }
            )*
        }
    };
}

api_contract!(
    unavailable_until_ready,
    routing_errors,
    discovery_document,
    empty_listings_are_empty_objects,
    healthz_and_metrics,
    create_get_update_delete,
    put_replaces_content_and_defaults_to_inactive,
    put_refusals_change_nothing,
    put_values_are_stored_in_normal_form_or_refused,
    unknown_fields_are_ignored,
    current_state_follows_schedule_and_agent,
    unit_states_filters_and_lookup,
    machines_list_and_patch,
    machines_patch_refusals_change_nothing,
    pagination_at_the_default_limit,
    pagination_walks_every_listing,
    percent_encoded_unit_names,
);

const MACHINE_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const MACHINE_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const HELLO: &str = r#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"/bin/sleep 1000"}]}"#;
const HELLO_OPTIONS: &str =
    r#"[{"name":"ExecStart","section":"Service","value":"/bin/sleep 1000"}]"#;

// ---------------------------------------------------------------------------
// Serving, routing, readiness
// ---------------------------------------------------------------------------

async fn unavailable_until_ready<K: Kv>(kv: K) {
    let s = Server::start_with(kv, 100, false).await;
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

async fn routing_errors<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
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

/// The original's discovery document (coreos/fleet schema/v1.json), the
/// golden copy that `/discovery` must serve unchanged.
const ORIGINAL_DISCOVERY: &str = include_str!("../golden/fleet-v1-discovery.json");

/// `/discovery` serves the original's document: equal as JSON to the golden
/// copy, every method and schema of it present with the same `required`
/// flags; our additions are only in `/discovery/extensions`.
async fn discovery_document<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
    let original: serde_json::Value =
        serde_json::from_str(ORIGINAL_DISCOVERY).expect("the golden document is JSON");
    for prefix in PREFIXES {
        let r = s.get(&format!("{prefix}/discovery?alt=json")).await;
        assert_eq!(r.status, 200, "{r:?}");
        let served: serde_json::Value =
            serde_json::from_str(&r.body).expect("the discovery document is JSON");
        assert_eq!(
            served, original,
            "{prefix}/discovery differs from the original's"
        );
        let r = s.get(&format!("{prefix}/discovery/extensions")).await;
        r.expect_json(200, DISCOVERY_EXTENSIONS);
    }
    let doc: serde_json::Value = serde_json::from_str(DISCOVERY).expect("JSON");
    assert_eq!(doc["rootUrl"], "$ENDPOINT/");
    assert_eq!(doc["name"], "schema");
    for (name, schema) in original["schemas"].as_object().expect("schemas") {
        for (field, prop) in schema["properties"].as_object().expect("properties") {
            assert_eq!(
                doc["schemas"][name]["properties"][field]["required"], prop["required"],
                "{name}.{field}"
            );
        }
    }
    for (resource, methods) in original["resources"].as_object().expect("resources") {
        for (method, m) in methods["methods"].as_object().expect("methods") {
            assert_eq!(
                doc["resources"][resource]["methods"][method], *m,
                "{resource}.{method}"
            );
        }
    }
    let ext: serde_json::Value = serde_json::from_str(DISCOVERY_EXTENSIONS).expect("JSON");
    let patch = &ext["resources"]["Machines"]["methods"]["Patch"];
    assert_eq!(
        (patch["httpMethod"].as_str(), patch["path"].as_str()),
        (Some("PATCH"), Some("machines"))
    );
    assert!(
        doc["resources"]["Machines"]["methods"]
            .get("Patch")
            .is_none()
    );
    s.shutdown().await;
}

async fn empty_listings_are_empty_objects<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
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

async fn healthz_and_metrics<K: Kv>(kv: K) {
    // Registry requests are counted by the same wrapper the daemon uses.
    let s = Server::start_with(fleetd::registry::Metered::new(kv), 100, false).await;
    s.get("/healthz").await.expect_error(503, UNAVAILABLE);
    // /metrics answers before fleetd is ready, without reading the cluster.
    let r = s.get("/metrics").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(r.body.contains("\nfleet_ready 0\n"), "{}", r.body);
    assert!(!r.body.contains("fleet_units"), "{}", r.body);

    s.ready.send(true).expect("the server is running");
    s.get("/healthz").await.expect(200, "ok");
    let lease = s.machine(MACHINE_A, "10.0.0.1", &[]).await;
    s.put("/fleet/v1/units/hello.service", HELLO)
        .await
        .expect(201, "");
    s.put(
        "/fleet/v1/units/other.service",
        &HELLO.replace("launched", "loaded"),
    )
    .await
    .expect(201, "");
    s.state(
        "hello.service",
        MACHINE_A,
        lease,
        units::UnitHash::default(),
        TargetState::Launched,
    )
    .await;
    // A listing, so that the store has served a `list` (a scrape reads
    // nothing from it).
    assert_eq!(s.get("/fleet/v1/units").await.status, 200);
    let r = s.get("/metrics").await;
    assert_eq!(r.status, 200, "{r:?}");
    // The cluster gauges are the engine leader's, from its caches (see the
    // engine's tests and e2e_api); the API alone has none and reads none.
    for family in [
        "fleet_units",
        "fleet_unit_states",
        "fleet_machines",
        "fleet_cluster_scrape_success",
    ] {
        assert!(!r.body.contains(&format!("# TYPE {family} ")), "{}", r.body);
    }
    for line in [
        "\nfleet_ready 1\n",
        "# TYPE fleet_registry_requests_total counter\n",
        "\nfleet_registry_requests_total{op=\"txn\",result=\"ok\"} ",
        "# TYPE fleet_registry_request_duration_seconds histogram\n",
        "\nfleet_registry_request_duration_seconds_bucket{op=\"list\",le=\"+Inf\"} ",
        "\nfleet_build_info{version=",
        // The original's names for the same requests.
        "\nfleet_registry_operation_count_total{type=\"set\"} ",
        "\nfleet_registry_operation_count_total{type=\"get_all\"} ",
        "\nfleet_registry_operation_duration_second_bucket{ops=\"get_all\",le=\"+Inf\"} ",
    ] {
        assert!(r.body.contains(line), "{line:?} missing from\n{}", r.body);
    }
    // Every line is a comment or `name{labels} value`.
    for line in r.body.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
    s.send("POST", "/metrics", &[], "")
        .await
        .expect_error(405, "only GET supported against this resource");
    s.shutdown().await;
}

/// Fields that the original's objects do not have are ignored, as its API
/// documentation promises ("all other Unit fields will be ignored"), at the
/// top level and inside options and metadata operations; the known ones
/// match in any case, as Go's decoder matched them, and a known field with
/// a value of the wrong type is refused, naming the field.
async fn unknown_fields_are_ignored<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
    s.machine(MACHINE_A, "10.0.0.1", &[("role", "web")]).await;
    let u = "/fleet/v1/units/hello.service";
    s.put(
        u,
        r#"{"desiredState":"launched","bogus":1,"labels":{"team":"x"},"options":[{"section":"Service","name":"ExecStart","value":"/bin/true","comment":"x","order":3}]}"#,
    )
    .await
    .expect(201, "");
    let stored_options = r#"[{"name":"ExecStart","section":"Service","value":"/bin/true"}]"#;
    s.get(u).await.expect_json(
        200,
        &format!(
            r#"{{"currentState":"inactive","desiredState":"launched","name":"hello.service","options":{stored_options}}}"#
        ),
    );
    // A unit as GOT, with the read-only fields and additions, PUT back.
    let got: serde_json::Value = serde_json::from_str(&s.get(u).await.body).expect("a JSON unit");
    let mut back = got.clone();
    back["desiredState"] = "loaded".into();
    back["machineID"] = "elsewhere".into();
    back["currentState"] = "launched".into();
    back["x-client"] = serde_json::json!({"version": 2});
    s.put(u, &back.to_string()).await.expect(204, "");
    let unit: serde_json::Value = serde_json::from_str(&s.get(u).await.body).expect("a JSON unit");
    assert_eq!(unit["desiredState"], "loaded");
    assert_eq!(unit["options"], got["options"]);
    assert!(unit.get("machineID").is_none(), "{unit}");
    assert!(unit.get("x-client").is_none(), "{unit}");
    s.patch(&format!(
        r#"[{{"op":"add","path":"/{MACHINE_A}/metadata/k","value":{{"value":"v","ttl":5}},"from":"x"}}]"#
    ))
    .await
    .expect(204, "");
    let machines: serde_json::Value =
        serde_json::from_str(&s.get("/fleet/v1/machines").await.body).expect("JSON machines");
    assert_eq!(machines["machines"][0]["metadata"]["k"], "v", "{machines}");

    // Known fields with the wrong type are refused, naming the field, and
    // change nothing.
    let before = (
        s.stored().await,
        s.get("/fleet/v1/units").await.body,
        s.get("/fleet/v1/machines").await.body,
    );
    for (body, message) in [
        (
            r#"{"desiredState":1,"bogus":1}"#,
            r#"unable to decode body: field "desiredState": invalid type: integer `1`, expected a string"#,
        ),
        (
            r#"{"desiredState":"loaded","machineID":7}"#,
            r#"unable to decode body: field "machineID": invalid type: integer `7`, expected a string"#,
        ),
        (
            r#"{"OPTIONS":[{"section":"Service","name":"ExecStart","value":true}]}"#,
            r#"unable to decode body: field "options[0].value": invalid type: boolean `true`, expected a string"#,
        ),
    ] {
        s.put(u, body).await.expect_error(400, message);
    }
    s.patch(&format!(
        r#"[{{"op":"add","path":"/{MACHINE_A}/metadata/k","value":{{"value":5}}}}]"#
    ))
    .await
    .expect_error(
        400,
        r#"field "[0].value.value": invalid type: integer `5`, expected a string"#,
    );
    let after = (
        s.stored().await,
        s.get("/fleet/v1/units").await.body,
        s.get("/fleet/v1/machines").await.body,
    );
    assert_eq!(after, before, "a refused request changed what is stored");

    // Known fields in any case, Go's folding included (KELVIN SIGN for k,
    // LONG S for s); the read-only ones are accepted and ignored.
    s.put(
        u,
        "{\"NAME\":\"hello.service\",\"DE\u{17F}IREDSTATE\":\"inactive\",\"currentstate\":\"launched\",\"MachineId\":\"x\"}",
    )
    .await
    .expect(204, "");
    let unit: serde_json::Value = serde_json::from_str(&s.get(u).await.body).expect("a JSON unit");
    assert_eq!(unit["desiredState"], "inactive");
    s.shutdown().await;
}

// ---------------------------------------------------------------------------
// Units
// ---------------------------------------------------------------------------

async fn create_get_update_delete<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
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

async fn put_replaces_content_and_defaults_to_inactive<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
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

async fn put_refusals_change_nothing<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
    s.put("/fleet/v1/units/hello.service", HELLO)
        .await
        .expect(201, "");
    s.put(
        "/fleet/v1/units/tmpl@.service",
        r#"{"options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#,
    )
    .await
    .expect(201, "");
    let before = (s.stored().await, s.get("/fleet/v1/units").await.body);

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
        r#"unable to decode body: field "desiredState": invalid state "bogus": must be one of inactive, loaded, launched"#,
    );
    s.put(u, r#"{"options":"x"}"#).await.expect_error(
        400,
        r#"unable to decode body: field "options": invalid type: string "x", expected a sequence"#,
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

    assert_eq!(
        (s.stored().await, s.get("/fleet/v1/units").await.body),
        before
    );

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

/// The body of a PUT creating a unit with these `(section, name, value)`
/// options.
fn options_body(options: &[(&str, &str, &str)]) -> String {
    let options: Vec<_> = options
        .iter()
        .map(|(section, name, value)| {
            serde_json::json!({"section": section, "name": name, "value": value})
        })
        .collect();
    serde_json::json!({ "options": options }).to_string()
}

async fn put_values_are_stored_in_normal_form_or_refused<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
    let u = "/fleet/v1/units/spaced.service";
    // Values a unit file cannot give verbatim are stored as the parser reads
    // them back from the canonical text, so that the agent's copy hashes the
    // same: trimmed, continuations kept.
    s.put(
        u,
        &options_body(&[
            ("Service", "ExecStart", "/bin/sleep 1000 "),
            ("Service", " ExecStop ", "\t/bin/kill \\\n  -9 \\\n   "),
            ("Unit", "Description", "\u{a0}spaced\r"),
        ]),
    )
    .await
    .expect(201, "");
    let stored = r#"[{"name":"ExecStart","section":"Service","value":"/bin/sleep 1000"},{"name":"ExecStop","section":"Service","value":"/bin/kill \\\n  -9 \\\n"},{"name":"Description","section":"Unit","value":"spaced"}]"#;
    s.get(u).await.expect_json(
        200,
        &format!(
            r#"{{"currentState":"inactive","desiredState":"inactive","name":"spaced.service","options":{stored}}}"#
        ),
    );
    let record = s
        .registry
        .unit(&"spaced.service".parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .value;
    let on_disk = units::UnitFile::parse(&record.file().canonical()).unwrap();
    assert_eq!(on_disk.hash(), record.hash());
    // The same content with other whitespace is the same unit.
    s.put(
        u,
        &options_body(&[
            ("Service", "ExecStart", " /bin/sleep 1000"),
            ("Service", "ExecStop", "/bin/kill \\\n  -9 \\\n"),
            ("Unit", "Description", "spaced"),
        ]),
    )
    .await
    .expect_error(409, "must provide DesiredState to update existing unit");

    // What cannot be written as unit-file lines is refused, on create and on
    // replace, naming unit, section and option, and changes nothing.
    let before = (s.stored().await, s.get("/fleet/v1/units").await.body);
    let cases: [(&str, &str, &str, &str); 8] = [
        (
            "Service",
            "ExecStart",
            "/bin/true\n[Install]\nWantedBy=multi-user.target",
            "value contains a line break not preceded by a backslash",
        ),
        (
            "Service",
            "ExecStart",
            "/bin/true\n",
            "value contains a line break not preceded by a backslash",
        ),
        (
            "Service",
            "ExecStart",
            "/bin/sleep\u{0}1",
            r"value contains control character '\x00'",
        ),
        (
            "Service",
            "ExecStart",
            "/bin/a\rb",
            r"value contains control character '\r'",
        ),
        (
            "Service",
            "ExecStart",
            "/bin/sh -c \\ ",
            "value ends in a backslash, which would join it to the next line",
        ),
        (
            "Service",
            "#ExecStart",
            "/bin/true",
            "option name starts with '#', so the line would not read as an option",
        ),
        (
            "Service",
            "Exec=Start",
            "/bin/true",
            r#"option name contains "=""#,
        ),
        (
            "Ser]vice",
            "ExecStart",
            "/bin/true",
            r#"section name contains "]""#,
        ),
    ];
    for (section, name, value, problem) in cases {
        let body = options_body(&[(section, name, value)]);
        for unit in ["spaced.service", "new.service"] {
            let message = format!(
                "unit {}: option {} in section {}: {problem}",
                serde_json::to_string(unit).unwrap(),
                serde_json::to_string(name).unwrap(),
                serde_json::to_string(section).unwrap(),
            );
            s.put(&format!("/fleet/v1/units/{unit}"), &body)
                .await
                .expect_error(400, &message);
        }
    }
    assert_eq!(
        (s.stored().await, s.get("/fleet/v1/units").await.body),
        before
    );
    s.shutdown().await;
}

async fn current_state_follows_schedule_and_agent<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
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

async fn unit_states_filters_and_lookup<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
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

async fn machines_list_and_patch<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
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

async fn machines_patch_refusals_change_nothing<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
    s.machine(MACHINE_A, "10.0.0.1", &[("role", "web")]).await;
    let before = (s.stored().await, s.get("/fleet/v1/machines").await.body);
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
    s.patch("{}")
        .await
        .expect_error(400, "invalid type: map, expected a sequence");
    assert_eq!(
        (s.stored().await, s.get("/fleet/v1/machines").await.body),
        before
    );
    s.shutdown().await;
}

// ---------------------------------------------------------------------------
// Pagination
// ---------------------------------------------------------------------------

async fn pagination_at_the_default_limit<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
    for i in 0..100 {
        s.unit(
            &format!("u{i:03}.service"),
            TargetState::Inactive,
            &[("Service", "ExecStart", "/bin/true")],
        )
        .await;
    }
    let first: fleetd::schema::UnitPage =
        serde_json::from_str(&s.get("/fleet/v1/units").await.body).unwrap();
    assert_eq!(first.items.len(), 100);
    assert_eq!(first.items[0].name, "u000.service");
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

async fn pagination_walks_every_listing<K: Kv>(kv: K) {
    let s = Server::start_with(kv, 2, true).await;
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

async fn percent_encoded_unit_names<K: Kv>(kv: K) {
    let s = Server::start(kv).await;
    s.put("/fleet/v1/units/web%401.service", HELLO)
        .await
        .expect(201, "");
    let r = s.get("/fleet/v1/units/web@1.service").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(r#""name":"web@1.service""#), "{r:?}");
    s.shutdown().await;
}

// ---------------------------------------------------------------------------
// Option values, as a property (in memory only: it sends hundreds of units)
// ---------------------------------------------------------------------------

/// Over the API, a unit is created exactly when [`units::validate_options`]
/// accepts its options, and refused with that check's message otherwise,
/// storing nothing. What is created is stored in normal form: the unit file
/// an agent writes from it parses back to the same options and the stored
/// hash, so no accepted value can make the agent restart the unit.
mod values_property {
    use std::sync::atomic::{AtomicU32, Ordering};

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use units::{UnitFile, UnitName, UnitOption};

    use super::{MemKv, Server, options_body};

    /// Values mixing whitespace, line breaks with and without backslashes,
    /// control characters and the characters unit files give meaning to.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => r"[ \t\n\r\\a-z/#;=\[\]\x00\x1b\xa0]{0,12}",
            2 => r"[ \t]{0,2}([a-z/ ]{0,5}\\\n){0,3}[a-z \t]{0,5}[\\ ]{0,2}",
            1 => Just("/bin/sleep 1000 ".to_owned()),
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => Just("ExecStart".to_owned()),
            1 => r"[ a-z#;=\[\t\n]{0,6}",
        ]
    }

    #[test]
    fn api_accepts_exactly_the_values_that_read_back() {
        static N: AtomicU32 = AtomicU32::new(0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let s = rt.block_on(Server::start(MemKv::new()));
        let mut runner = TestRunner::new(Config::with_cases(300));
        let result = runner.run(&(name(), value()), |(name, value)| {
            rt.block_on(async {
                let unit = format!("v{}.service", N.fetch_add(1, Ordering::Relaxed));
                let unit_name: UnitName = unit.parse().unwrap();
                let sent = vec![UnitOption::new("Service", name.as_str(), value.as_str())];
                let verdict = units::validate_options(&unit_name, &UnitFile::from_options(sent));
                let r = s
                    .put(
                        &format!("/fleet/v1/units/{unit}"),
                        &options_body(&[("Service", &name, &value)]),
                    )
                    .await;
                let record = s.registry.unit(&unit_name).await.unwrap();
                match verdict {
                    Ok(_) => {
                        prop_assert_eq!(r.status, 201, "{:?} {:?}: {:?}", name, value, r);
                        let record = record.expect("a created unit is stored").value;
                        let got: serde_json::Value = serde_json::from_str(
                            &s.get(&format!("/fleet/v1/units/{unit}")).await.body,
                        )
                        .unwrap();
                        let got: Vec<UnitOption> =
                            serde_json::from_value(got["options"].clone()).unwrap();
                        prop_assert_eq!(&got, &record.options, "GET returns what is stored");
                        let on_disk = UnitFile::parse(&record.file().canonical())
                            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
                        prop_assert_eq!(on_disk.options(), record.options.as_slice());
                        prop_assert_eq!(on_disk.hash(), record.hash());
                    }
                    Err(e) => {
                        let message =
                            serde_json::json!({"error": {"code": 400, "message": e.to_string()}});
                        prop_assert_eq!(r.status, 400, "{:?} {:?}: {:?}", name, value, r);
                        prop_assert_eq!(r.body, message.to_string());
                        prop_assert!(
                            e.to_string()
                                .starts_with(&format!("unit \"{unit}\": option ")),
                            "{}",
                            e
                        );
                        prop_assert!(record.is_none(), "a refused unit is not stored");
                    }
                }
                Ok(())
            })
        });
        rt.block_on(s.shutdown());
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}
