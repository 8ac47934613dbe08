//! End to end: option values that are not in the parser's normal form keep
//! their unit running. fleetd runs as a systemd service in a real systemd
//! machine against a real etcd; units are created over real HTTP with
//! values a unit file could not give verbatim: a trailing space, a leading
//! space, and a backslash-newline continuation.
//!
//! Each unit must run and keep its `MainPID` over several agent passes (the
//! agent's safety-net pass is every 5 s): a unit whose file on disk hashes
//! differently from its stored content is unloaded and started again on every
//! pass. The API must return the options as etcd stores them, the file on
//! disk must read back to them, and the published hash must be theirs. A
//! value that cannot be written as a unit-file line is refused with a 400
//! naming unit, section and option, and changes nothing stored.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fleetd::registry::{EtcdKv, Kv};
use fleetd::schema::UnitRecord;
use testbed::cluster::{API_PORT, Cluster, ClusterOptions, check};
use testbed::http::Reply;
use testbed::util::wait_until;
use units::{UnitFile, UnitOption};

/// The bound on one HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// fleet's etcd key prefix (the cluster uses the default).
const PREFIX: &str = "/_coreos.com/fleet/";

/// How long the units must keep their main PIDs: three agent passes and a
/// margin.
const STEADY: Duration = Duration::from_secs(17);

/// One unit under test: its name, the `ExecStart=` value sent, the value the
/// API must store and return (the parser's normal form), and the command
/// line systemd must run.
struct Case {
    name: &'static str,
    sent: &'static str,
    stored: &'static str,
    argv: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        name: "trailing.service",
        sent: "/bin/sleep 1000 ",
        stored: "/bin/sleep 1000",
        argv: "argv[]=/bin/sleep 1000 ",
    },
    Case {
        name: "leading.service",
        sent: " /bin/sleep 1001",
        stored: "/bin/sleep 1001",
        argv: "argv[]=/bin/sleep 1001 ",
    },
    Case {
        name: "continued.service",
        sent: "/bin/sleep \\\n  1002",
        stored: "/bin/sleep \\\n  1002",
        argv: "argv[]=/bin/sleep 1002 ",
    },
];

/// One request with a JSON body on a fresh TCP connection to `addr`.
async fn http(addr: &str, method: &str, path: &str, body: String) -> anyhow::Result<Reply> {
    let json = [("content-type", "application/json")];
    testbed::http::request(addr, method, path, &json, body.into_bytes(), HTTP_TIMEOUT).await
}

/// `PUT /fleet/v1/units/<name>` launching a unit with one `ExecStart=`.
async fn put_exec_start(addr: &str, name: &str, value: &str) -> anyhow::Result<Reply> {
    let body = serde_json::json!({
        "desiredState": "launched",
        "options": [{"section": "Service", "name": "ExecStart", "value": value}],
    });
    http(
        addr,
        "PUT",
        &format!("/fleet/v1/units/{name}"),
        body.to_string(),
    )
    .await
}

/// The options `GET /fleet/v1/units/<name>` returns.
async fn api_options(addr: &str, name: &str) -> anyhow::Result<Vec<UnitOption>> {
    let r = http(
        addr,
        "GET",
        &format!("/fleet/v1/units/{name}"),
        String::new(),
    )
    .await?;
    ensure!(r.status == 200, "GET unit {name}: {r:?}");
    let unit: serde_json::Value = serde_json::from_str(&r.body)?;
    Ok(serde_json::from_value(unit["options"].clone())?)
}

/// The record etcd holds for `name`.
async fn stored_record(etcd: &EtcdKv, name: &str) -> anyhow::Result<UnitRecord> {
    let (kv, _) = etcd.get(&format!("{PREFIX}units/{name}")).await?;
    let kv = kv.with_context(|| format!("no record of {name} in etcd"))?;
    Ok(serde_json::from_slice(&kv.value)?)
}

/// Every key under the fleet prefix with its value and revision, minus the
/// ones that change by themselves (unit states, machine presence, leader).
async fn units_in_etcd(etcd: &EtcdKv) -> anyhow::Result<Vec<String>> {
    let (kvs, _) = etcd.list(&format!("{PREFIX}units/")).await?;
    Ok(kvs
        .into_iter()
        .map(|kv| {
            format!(
                "{} @{} {}",
                kv.key,
                kv.mod_revision,
                String::from_utf8_lossy(&kv.value)
            )
        })
        .collect())
}

/// The main PID of each case's unit (0: not running).
async fn main_pids(cluster: &Cluster) -> anyhow::Result<BTreeMap<&'static str, u32>> {
    let mut pids = BTreeMap::new();
    for case in &CASES {
        pids.insert(case.name, cluster.main_pid(0, case.name).await?);
    }
    Ok(pids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnormal_values_run_without_restarts() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let member = &cluster.members[0];
    let addr = format!("{}:{API_PORT}", member.ip());
    let etcd = EtcdKv::connect(
        &[cluster.etcd.endpoint_on(cluster.net.host_ip())],
        Duration::from_secs(5),
    )
    .await?;

    for case in &CASES {
        let r = put_exec_start(&addr, case.name, case.sent).await?;
        ensure!(r.status == 201, "PUT {}: {r:?}", case.name);
    }

    // Every unit runs.
    let names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    let started = wait_until(
        "every unit running with a main PID",
        Duration::from_secs(60),
        || main_pids(&cluster),
        |pids| pids.values().all(|&pid| pid != 0),
    )
    .await;
    let first = match started {
        Ok(pids) => pids,
        Err(e) => bail!("{e:#}\njournal:\n{}", cluster.fleet_journal(0).await),
    };

    // ... and keeps running the same process over several agent passes.
    let since = Instant::now();
    while since.elapsed() < STEADY {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = main_pids(&cluster).await?;
        if now != first {
            bail!(
                "a unit was restarted {:?} after it started: main PIDs {first:?}, now {now:?}\njournal:\n{}",
                since.elapsed(),
                cluster.fleet_journal(0).await
            );
        }
    }
    let active = member.active_units(&names).await?;
    assert_eq!(active, names, "units active after {STEADY:?}");

    for case in &CASES {
        // The API returns exactly what etcd stores: the normal form.
        let record = stored_record(&etcd, case.name).await?;
        let expected = vec![UnitOption::new("Service", "ExecStart", case.stored)];
        assert_eq!(record.options, expected, "{} as stored in etcd", case.name);
        assert_eq!(
            api_options(&addr, case.name).await?,
            record.options,
            "{} from the API",
            case.name
        );

        // The file the agent wrote reads back to the stored content.
        let path = format!("/run/fleet/units/{}", case.name);
        let out = member.machine.exec(&["cat", &path]).await?;
        check(&out, &format!("cat {path}"))?;
        let on_disk = UnitFile::parse(&String::from_utf8(out.stdout)?)?;
        assert_eq!(on_disk.options(), record.options.as_slice(), "{path}");
        assert_eq!(on_disk.hash(), record.hash(), "hash of {path}");

        // The published state carries that hash.
        let r = http(
            &addr,
            "GET",
            &format!("/fleet/v1/state/{}", case.name),
            String::new(),
        )
        .await?;
        ensure!(r.status == 200, "GET state of {}: {r:?}", case.name);
        let state: serde_json::Value = serde_json::from_str(&r.body)?;
        assert_eq!(
            state["hash"].as_str(),
            Some(record.hash().to_string().as_str()),
            "published hash of {}",
            case.name
        );

        // systemd runs the command line the value means.
        let exec = cluster.show(0, case.name, "ExecStart").await?;
        assert!(
            exec.contains(case.argv),
            "{}: ExecStart {exec:?} lacks {:?}",
            case.name,
            case.argv
        );
    }
    // The hash is the original's for this content: SHA-1 of the canonical
    // text (`printf '[Service]\nExecStart=/bin/sleep 1000\n' | sha1sum`).
    assert_eq!(
        stored_record(&etcd, "trailing.service")
            .await?
            .hash()
            .to_string(),
        "2d432f4a06608c1a8b2848b66c836793a1d48ce6",
    );

    // A value that cannot be a unit-file line is refused and changes nothing.
    let before = units_in_etcd(&etcd).await?;
    for (name, value, problem) in [
        (
            "trailing.service",
            "/bin/sleep 1000\n[Install]\nWantedBy=multi-user.target",
            "a line break not preceded by a backslash",
        ),
        ("new.service", "/bin/sleep\u{0}1000", "control character"),
    ] {
        let r = put_exec_start(&addr, name, value).await?;
        assert_eq!(r.status, 400, "PUT {name} {value:?}: {r:?}");
        let body: serde_json::Value = serde_json::from_str(&r.body)?;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        let named = format!("unit \"{name}\": option \"ExecStart\" in section \"Service\": ");
        assert!(message.starts_with(&named), "{r:?}");
        assert!(message.contains(problem), "{r:?} lacks {problem:?}");
    }
    assert_eq!(units_in_etcd(&etcd).await?, before, "units in etcd");
    assert_eq!(
        main_pids(&cluster).await?,
        first,
        "main PIDs after refusals"
    );
    Ok(())
}
