//! End to end: the fleet API as a host serves it. fleetd runs as a systemd
//! service in a real systemd machine, started with `systemctl start
//! fleet.socket fleet.service` (plus the TCP socket) from the shipped units,
//! so the API is socket-activated. Checked here:
//!
//! - fleetctl reaches the API over the unix socket inside the machine (mode
//!   0660) and over TCP from the host; curl gets the discovery document and
//!   the metrics;
//! - bad input over real HTTP (malformed JSON, wrong content type, unknown
//!   fields, names that break the rules, a body over the limit, bad page
//!   tokens, an invalid state) is answered with the right status and message,
//!   and changes nothing stored (API listings and raw etcd keys compared);
//! - `systemctl restart fleet.service` keeps the sockets, and a stream of
//!   requests from the host during the restart loses none: every request
//!   gets an HTTP answer. A 503 is an answer (fleetd answers 503 until it is
//!   registered again, by design) and is retried; no connection may be
//!   refused, reset or left unanswered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fleetd::registry::{EtcdKv, Kv};
use testbed::cluster::{API_PORT, Cluster, ClusterOptions, check};
use testbed::http::Reply;
use testbed::util::{require_tool, wait_until};

const HELLO: &str = "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100000\n";

/// The bound on one HTTP exchange. Generous: during a restart a request
/// waits in the socket's backlog until the new fleetd accepts it.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// A refused PUT: what it tries, path, headers, body, and the expected
/// status and start of the message.
type BadPut<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    Vec<u8>,
    u16,
    &'a str,
);

/// One request on a fresh TCP connection to `addr`.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<Reply> {
    testbed::http::request(addr, method, path, headers, body, HTTP_TIMEOUT).await
}

/// The message of an error body.
fn message(reply: &Reply) -> String {
    serde_json::from_str::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("<not an error body: {:?}>", reply.body))
}

/// Everything a bad request could have changed: the API's listings and the
/// raw `units/` keys in etcd with their revisions.
async fn stored(addr: &str, etcd: &EtcdKv) -> anyhow::Result<Vec<String>> {
    let mut all = Vec::new();
    for path in ["/fleet/v1/units", "/fleet/v1/machines"] {
        let r = http(addr, "GET", path, &[], Vec::new()).await?;
        ensure!(r.status == 200, "GET {path}: {r:?}");
        all.push(r.body);
    }
    let (kvs, _) = etcd.list("/_coreos.com/fleet/units/").await?;
    ensure!(!kvs.is_empty(), "no unit stored in etcd");
    all.extend(kvs.into_iter().map(|kv| {
        format!(
            "{} @{} {}",
            kv.key,
            kv.mod_revision,
            String::from_utf8_lossy(&kv.value)
        )
    }));
    Ok(all)
}

/// Runs `curl -sS` from the host, returning the answer's head and body.
async fn curl(url: &str) -> anyhow::Result<(String, String)> {
    let out = tokio::process::Command::new(require_tool("curl")?)
        .args(["-sS", "--max-time", "30", "-D", "-", url])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("cannot run curl")?;
    check(&out, &format!("curl {url}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("curl {url}: no header block in {text:?}"))?;
    Ok((head.to_ascii_lowercase(), body.to_owned()))
}

/// The value of the sample `name` (without labels) in a metrics text.
fn sample(text: &str, name: &str) -> anyhow::Result<f64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("no sample {name} in\n{text}"))?;
    line.trim()
        .parse()
        .with_context(|| format!("{name}: bad value {line:?}"))
}

/// What the request stream saw.
#[derive(Debug, Default)]
struct StreamStats {
    /// Requests answered 200.
    ok: usize,
    /// Requests answered 503 (fleetd not registered yet), then retried.
    unavailable: usize,
    /// Requests with no HTTP answer, or another status: lost.
    lost: Vec<String>,
    /// The slowest answer.
    slowest: Duration,
}

/// Sends `GET /fleet/v1/units` on fresh connections, one after another,
/// until `stop` is set (or a bound of 5000 requests or 180 s), counting
/// 200s in `ok` as it goes.
async fn request_stream(addr: String, stop: Arc<AtomicBool>, ok: Arc<AtomicUsize>) -> StreamStats {
    let mut stats = StreamStats::default();
    let started = Instant::now();
    for _ in 0..5000 {
        if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(180) {
            break;
        }
        let sent = Instant::now();
        let result = http(&addr, "GET", "/fleet/v1/units", &[], Vec::new()).await;
        stats.slowest = stats.slowest.max(sent.elapsed());
        match result {
            Ok(r) if r.status == 200 => {
                stats.ok += 1;
                ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) if r.status == 503 => {
                stats.unavailable += 1;
                // Paces the retries while fleetd registers.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(r) => stats.lost.push(format!("status {}: {}", r.status, r.body)),
            Err(e) => stats.lost.push(format!("{e:#}")),
        }
    }
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_served_by_systemd() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let member = &cluster.members[0];
    let machine = &member.machine;
    let addr = format!("{}:{API_PORT}", member.ip());

    // --- Reaching the API ------------------------------------------------
    // Inside the machine, over the default unix socket, created 0660.
    let out = machine
        .exec(&["stat", "-c", "%a %F", "/var/run/fleet.sock"])
        .await?;
    check(&out, "stat /var/run/fleet.sock")?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "660 socket",
        "the API socket's mode and type"
    );
    let out = machine
        .exec(&[
            "/opt/fleet/fleetctl",
            "list-machines",
            "--no-legend",
            "--full",
        ])
        .await?;
    if let Err(e) = check(&out, "fleetctl list-machines over /var/run/fleet.sock") {
        bail!("{e:#}\njournal:\n{}", cluster.fleet_journal(0).await);
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.starts_with(machine.machine_id()),
        "list-machines over the unix socket: {listed:?}"
    );
    // From the host, over TCP.
    let dir = tempfile::tempdir()?;
    let unit_path = dir.path().join("hello.service");
    std::fs::write(&unit_path, HELLO)?;
    let out = cluster
        .fleetctl(&["submit", &unit_path.to_string_lossy()])
        .await?;
    check(&out, "fleetctl submit over TCP")?;
    let out = cluster
        .fleetctl(&["list-unit-files", "--no-legend"])
        .await?;
    check(&out, "fleetctl list-unit-files over TCP")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.starts_with("hello.service"),
        "list-unit-files over TCP: {listed:?}"
    );

    // curl: the discovery document and the metrics.
    let endpoint = member.endpoint();
    let (head, body) = curl(&format!("{endpoint}/fleet/v1/discovery")).await?;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("server: fleetd/"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let doc: serde_json::Value = serde_json::from_str(&body).context("discovery is not JSON")?;
    assert_eq!(doc["servicePath"], "fleet/v1/", "{body}");
    let (head, _) = curl(&format!("{endpoint}/metrics")).await?;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    // The only member leads the engine, so it has the cluster gauges, from
    // its caches (which see the submitted unit within moments).
    let needles = [
        "\nfleet_ready 1\n",
        "\nfleet_machines 1\n",
        "\nfleet_units{desired_state=\"inactive\",current_state=\"inactive\"} 1\n",
        "\nfleet_cluster_scrape_success 1\n",
        "\nfleet_registry_requests_total{op=\"txn\",result=\"ok\"} ",
        "\nfleet_registry_request_duration_seconds_bucket{op=\"grant\",le=\"+Inf\"} ",
        "\nfleet_engine_reconcile_duration_seconds_count ",
        // The original's names.
        "\nfleet_engine_reconcile_count_total ",
        "\nfleet_engine_reconcile_duration_second_count ",
        "\nfleet_registry_operation_count_total{type=\"set\"} ",
        "\nfleet_registry_operation_count_total{type=\"get_all\"} ",
        "\nfleet_registry_operation_duration_second_bucket{ops=\"set\",le=\"+Inf\"} ",
    ];
    let metrics = wait_until(
        "the metrics of the engine leader",
        Duration::from_secs(30),
        || async { Ok(curl(&format!("{endpoint}/metrics")).await?.1) },
        |m: &String| needles.iter().all(|n| m.contains(n)),
    )
    .await?;
    let leader_since = sample(&metrics, "fleet_engine_leader_start_time")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    assert!(
        leader_since > now - 3600.0 && leader_since <= now + 60.0,
        "fleet_engine_leader_start_time {leader_since} is not a recent Unix time (now {now})"
    );
    // The leader reconciles every interval (1 s here), changed or not.
    let rounds = sample(&metrics, "fleet_engine_reconcile_count_total")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, later) = curl(&format!("{endpoint}/metrics")).await?;
    let more = sample(&later, "fleet_engine_reconcile_count_total")?;
    assert!(more > rounds, "reconcile rounds {rounds} then {more}");
    let (head, health) = curl(&format!("{endpoint}/healthz")).await?;
    assert!(
        head.starts_with("http/1.1 200") && health == "ok",
        "{head}\n{health}"
    );

    // --- Bad input changes nothing -----------------------------------------
    let etcd = EtcdKv::connect(
        &[cluster.etcd.endpoint_on(cluster.net.host_ip())],
        Duration::from_secs(5),
    )
    .await?;
    let before = stored(&addr, &etcd).await?;
    let json = [("content-type", "application/json")];
    let unit = "/fleet/v1/units/hello.service";
    let huge = format!(
        r#"{{"desiredState":"launched","name":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let cases: Vec<BadPut> = vec![
        (
            "malformed JSON",
            unit,
            &json,
            br#"{"desiredState":"#.to_vec(),
            400,
            "unable to decode body: EOF while parsing a value",
        ),
        (
            "wrong content type",
            unit,
            &[("content-type", "text/plain")],
            br#"{"desiredState":"launched"}"#.to_vec(),
            415,
            "only acceptable Content-Type is application/json",
        ),
        (
            "no content type",
            unit,
            &[],
            br#"{"desiredState":"launched"}"#.to_vec(),
            415,
            "expected 1 Content-Type, got 0",
        ),
        (
            "known field of the wrong type (an unknown one is ignored)",
            unit,
            &json,
            br#"{"desiredState":"launched","replicas":3,"options":{"a":1}}"#.to_vec(),
            400,
            r#"unable to decode body: field "options": invalid type: map"#,
        ),
        (
            "invalid desired state",
            unit,
            &json,
            br#"{"desiredState":"running"}"#.to_vec(),
            400,
            r#"unable to decode body: field "desiredState": invalid state "running""#,
        ),
        (
            "name without a type",
            "/fleet/v1/units/hello",
            &json,
            br#"{"desiredState":"launched"}"#.to_vec(),
            400,
            r#"unit name must contain ".""#,
        ),
        (
            "name with a bad type",
            "/fleet/v1/units/hello.bogus",
            &json,
            br#"{"options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#
                .to_vec(),
            400,
            r#"invalid unit type: "bogus""#,
        ),
        (
            "name differing from the URL",
            unit,
            &json,
            br#"{"name":"other.service","desiredState":"launched"}"#.to_vec(),
            400,
            r#"name in URL "hello.service" differs from unit name in request body "other.service""#,
        ),
        (
            "huge body",
            unit,
            &json,
            huge.into_bytes(),
            413,
            "request body larger than 1048576 bytes",
        ),
    ];
    for (what, path, headers, body, status, expected) in cases {
        let r = http(&addr, "PUT", path, headers, body)
            .await
            .with_context(|| format!("{what}: no answer"))?;
        let got = message(&r);
        assert!(
            r.status == status && got.starts_with(expected),
            "{what}: expected {status} {expected:?}, got {} {got:?}",
            r.status
        );
    }
    for (what, method, path, body, expected) in [
        (
            "malformed PATCH",
            "PATCH",
            "/fleet/v1/machines",
            "[{",
            "EOF while parsing",
        ),
        (
            "PATCH with a value of the wrong type (an unknown field is ignored)",
            "PATCH",
            "/fleet/v1/machines",
            r#"[{"op":"add","path":"/x/metadata/k","value":{"value":5},"from":"y"}]"#,
            r#"field "[0].value.value": invalid type: integer"#,
        ),
        (
            "undecodable page token",
            "GET",
            "/fleet/v1/units?nextPageToken=*",
            "",
            "illegal base64 data at input byte 0",
        ),
        (
            "page token for another page size",
            "GET",
            "/fleet/v1/units?nextPageToken=EwBMLg==",
            "",
            "token limit must be 100",
        ),
        (
            "page zero",
            "GET",
            "/fleet/v1/state?nextPageToken=ZAAAAA==",
            "",
            "token page must be greater than zero",
        ),
    ] {
        let r = http(&addr, method, path, &json, body.as_bytes().to_vec())
            .await
            .with_context(|| format!("{what}: no answer"))?;
        let got = message(&r);
        assert!(
            r.status == 400 && got.starts_with(expected),
            "{what}: expected 400 {expected:?}, got {} {got:?}",
            r.status
        );
    }
    let after = stored(&addr, &etcd).await?;
    assert_eq!(after, before, "a refused request changed what is stored");

    // --- Restarting fleet.service loses no request -----------------------
    // A launched unit makes the stop slower (fleetd stops accepting, then
    // unloads the unit): requests made meanwhile wait in the socket's
    // backlog.
    let out = cluster.fleetctl(&["start", "hello.service"]).await?;
    check(&out, "fleetctl start hello.service")?;
    let socket_since = cluster
        .show(0, "fleet.socket", "ActiveEnterTimestampMonotonic")
        .await?;
    let tcp_since = cluster
        .show(0, "fleet-tcp.socket", "ActiveEnterTimestampMonotonic")
        .await?;
    let pid_before = cluster.main_pid(0, "fleet.service").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let stream = tokio::spawn(request_stream(addr.clone(), stop.clone(), ok.clone()));
    let counted = |n: usize| {
        let ok = ok.clone();
        async move {
            wait_until(
                &format!("{n} answered requests"),
                Duration::from_secs(60),
                || async { Ok(ok.load(Ordering::SeqCst)) },
                |got| *got >= n,
            )
            .await
        }
    };
    counted(20).await?;
    let restart_started = Instant::now();
    let out = machine.systemctl(&["restart", "fleet.service"]).await?;
    let restart_took = restart_started.elapsed();
    check(&out, "systemctl restart fleet.service")?;
    let after_restart = ok.load(Ordering::SeqCst);
    counted(after_restart + 20).await?;
    stop.store(true, Ordering::SeqCst);
    let stats = stream.await.context("the request stream panicked")?;
    println!(
        "restart of fleet.service took {restart_took:?}; requests during the run: {} answered 200, {} answered 503 (retried), {} lost; slowest answer {:?}",
        stats.ok,
        stats.unavailable,
        stats.lost.len(),
        stats.slowest
    );
    if !stats.lost.is_empty() {
        bail!(
            "{} requests lost during the restart: {:?}\njournal:\n{}",
            stats.lost.len(),
            stats.lost,
            cluster.fleet_journal(0).await
        );
    }
    let pid_after = cluster.main_pid(0, "fleet.service").await?;
    ensure!(
        pid_after != 0 && pid_after != pid_before,
        "fleet.service was not restarted: MainPID {pid_before} then {pid_after}"
    );
    for (unit, since) in [
        ("fleet.socket", socket_since),
        ("fleet-tcp.socket", tcp_since),
    ] {
        assert_eq!(member.is_active(unit).await?, "active", "{unit}");
        assert_eq!(
            cluster
                .show(0, unit, "ActiveEnterTimestampMonotonic")
                .await?,
            since,
            "{unit} was restarted with fleet.service"
        );
    }
    // The restarted fleetd still has the unit and serves the unix socket.
    let out = machine
        .exec(&["/opt/fleet/fleetctl", "list-unit-files", "--no-legend"])
        .await?;
    check(
        &out,
        "fleetctl list-unit-files over the unix socket after the restart",
    )?;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello.service"));
    Ok(())
}
