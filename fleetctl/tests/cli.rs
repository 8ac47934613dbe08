//! Runs the built `fleetctl` against a fake `/fleet/v1` server (see
//! `fake/mod.rs`) on a unix socket or TCP, and checks its output bytes and
//! exit statuses.

mod fake;

use std::path::Path;
use std::process::Output;

use fake::{M1, Server};
use fleetd::schema::TargetState;
use units::UnitFile;

const HELLO: &str = "[Unit]\nDescription=Hello World\n\n[Service]\n# a comment\nExecStart=/bin/sh -c \"while true; do echo hi; sleep 1; done\"\n";

/// What one run printed.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs fleetctl in `dir` with `env` and `args`, with no FLEETCTL_*
/// variables inherited.
async fn fleetctl_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    cmd.current_dir(dir).args(args).env("RUST_LOG", "off");
    for (k, _) in std::env::vars() {
        if k.starts_with("FLEETCTL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("fleetctl finished within 60s")
        .expect("fleetctl ran");
    out.into()
}

/// Runs fleetctl against `server` (through `--endpoint`) in `dir`.
async fn fleetctl(server: &Server, dir: &Path, args: &[&str]) -> Run {
    let endpoint = format!("--endpoint={}", server.endpoint);
    let all: Vec<&str> = std::iter::once(endpoint.as_str())
        .chain(args.iter().copied())
        .collect();
    fleetctl_env(dir, &[], &all).await
}

fn hash7(text: &str) -> String {
    UnitFile::parse(text).unwrap().hash().short()
}

fn canonical(text: &str) -> String {
    UnitFile::parse(text).unwrap().canonical()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_lifecycle_over_unix_socket() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "hello.service", HELLO);
    let h = hash7(HELLO);

    let r = fleetctl(&server, d, &["submit", "hello.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "Unit hello.service inactive\n", ""),
        "{r:?}"
    );
    // Same content again: skipped silently.
    let r = fleetctl(&server, d, &["submit", "hello"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", ""),
        "{r:?}"
    );

    let r = fleetctl(&server, d, &["list-unit-files"]).await;
    assert_eq!(
        r.stdout,
        format!(
            "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\nhello.service\t{h}\tinactive\tinactive\t-\n"
        ),
        "{r:?}"
    );

    let r = fleetctl(&server, d, &["start", "hello.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (
            0,
            "Unit hello.service launched on 113f16a7.../10.0.0.1\n",
            ""
        ),
        "{r:?}"
    );
    // Already launched: nothing to do.
    let r = fleetctl(&server, d, &["start", "hello.service"]).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");

    let r = fleetctl(&server, d, &["list-units"]).await;
    assert_eq!(
        r.stdout,
        "UNIT\t\tMACHINE\t\t\tACTIVE\tSUB\nhello.service\t113f16a7.../10.0.0.1\tactive\trunning\n",
        "{r:?}"
    );
    let r = fleetctl(
        &server,
        d,
        &[
            "list-units",
            "--full",
            "--no-legend",
            "--fields=unit,hash,load",
        ],
    )
    .await;
    let full_hash = UnitFile::parse(HELLO).unwrap().hash().to_string();
    assert_eq!(
        r.stdout,
        format!("hello.service\t{full_hash}\tloaded\n"),
        "{r:?}"
    );
    let r = fleetctl(
        &server,
        d,
        &["list-unit-files", "--fields=unit,desc,target", "--full"],
    )
    .await;
    assert_eq!(
        r.stdout,
        format!("UNIT\t\tDESC\t\tTARGET\nhello.service\tHello World\t{M1}/10.0.0.1\n"),
        "{r:?}"
    );

    let r = fleetctl(&server, d, &["cat", "hello"]).await;
    assert_eq!((r.code, r.stdout.clone()), (0, canonical(HELLO)), "{r:?}");

    let r = fleetctl(&server, d, &["stop", "hello.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (
            0,
            "Unit hello.service loaded on 113f16a7.../10.0.0.1\n",
            "Successfully stopped units [hello.service].\n"
        ),
        "{r:?}"
    );
    // Loaded units are skipped.
    let r = fleetctl(&server, d, &["stop", "hello.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", "Successfully stopped units [].\n"),
        "{r:?}"
    );

    let r = fleetctl(&server, d, &["unload", "hello.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (
            0,
            "Unit hello.service inactive\n",
            "Successfully unloaded units [hello.service].\n"
        ),
        "{r:?}"
    );
    let r = fleetctl(&server, d, &["stop", "hello.service"]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Unable to stop unit hello.service in state inactive\n"),
        "{r:?}"
    );

    let r = fleetctl(&server, d, &["destroy", "hello.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "Destroyed hello.service\n", ""),
        "{r:?}"
    );
    let r = fleetctl(&server, d, &["list-unit-files"]).await;
    assert_eq!(r.stdout, "UNIT\tHASH\tDSTATE\tSTATE\tTARGET\n", "{r:?}");
    let r = fleetctl(&server, d, &["destroy", "hello.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", "Units not found in registry\n"),
        "{r:?}"
    );

    // Every request asked for JSON.
    let requests = server.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| r.contains("alt=json")),
        "{requests:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_and_no_block() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for n in ["a", "b", "c"] {
        write(
            d,
            &format!("{n}.service"),
            &format!("[Service]\nExecStart=/bin/{n}\n"),
        );
    }
    let r = fleetctl(&server, d, &["load", "a.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (
            0,
            "Unit a.service inactive\nUnit a.service loaded on 113f16a7.../10.0.0.1\n"
        ),
        "{r:?}"
    );
    // --no-block prints the trigger once (the original printed it twice).
    let r = fleetctl(&server, d, &["start", "--no-block", "b.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (
            0,
            "Unit b.service inactive\nTriggered unit b.service start\n"
        ),
        "{r:?}"
    );
    assert_eq!(server.desired("b.service"), Some(TargetState::Launched));
    let r = fleetctl(&server, d, &["load", "--no-block", "c"]).await;
    assert_eq!(
        r.stdout, "Unit c.service inactive\nTriggered unit c.service load\n",
        "{r:?}"
    );
    let r = fleetctl(&server, d, &["stop", "--no-block", "b.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (
            0,
            "Triggered unit b.service stop\n",
            "Successfully stopped units [b.service].\n"
        ),
        "{r:?}"
    );
    let r = fleetctl(
        &server,
        d,
        &["unload", "--no-block", "b.service", "a.service"],
    )
    .await;
    // In argument order.
    assert_eq!(
        r.stdout, "Triggered unit b.service unload\nTriggered unit a.service unload\n",
        "{r:?}"
    );

    // No arguments.
    for cmd in ["submit", "load", "start", "stop", "unload", "destroy"] {
        let r = fleetctl(&server, d, &[cmd]).await;
        assert_eq!(
            (r.code, r.stderr.as_str()),
            (0, "No units given\n"),
            "{cmd}: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_units() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n";
    write(d, "g.service", text);
    // A global unit has no current state: the original printed a blank.
    let r = fleetctl(&server, d, &["submit", "g.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Unit g.service \n"),
        "{r:?}"
    );
    let r = fleetctl(&server, d, &["start", "g.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Triggered global unit g.service start\n"),
        "{r:?}"
    );
    let r = fleetctl(
        &server,
        d,
        &["list-unit-files", "--fields=unit,global,state,target"],
    )
    .await;
    assert_eq!(
        r.stdout, "UNIT\t\tGLOBAL\tSTATE\tTARGET\ng.service\ttrue\t-\tglobal\n",
        "{r:?}"
    );
    let r = fleetctl(&server, d, &["list-units"]).await;
    assert_eq!(
        r.stdout,
        "UNIT\t\tMACHINE\t\t\tACTIVE\tSUB\n\
         g.service\t113f16a7.../10.0.0.1\tactive\trunning\n\
         g.service\t2aa3c0d8...\t\tactive\trunning\n",
        "{r:?}"
    );
    let r = fleetctl(&server, d, &["stop", "g.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (
            0,
            "Triggered global unit g.service stop\n",
            "Successfully stopped units [].\n"
        ),
        "{r:?}"
    );
    let r = fleetctl(&server, d, &["unload", "g.service"]).await;
    assert_eq!(
        r.stdout, "Triggered global unit g.service unload\n",
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_time_out_and_fail() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "stuck.service", "[Service]\nExecStart=/bin/true\n");
    write(d, "failing.service", "[Service]\nExecStart=/bin/false\n");
    let started = std::time::Instant::now();
    let r = fleetctl(
        &server,
        d,
        &["start", "--block-attempts=1", "stuck.service"],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        "Error waiting for units: timed out waiting for unit stuck.service to report state launched\n\
         Error waiting for unit states, exit status: 1\n",
        "{r:?}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1500),
        "one attempt is about 2s"
    );

    let r = fleetctl(&server, d, &["start", "failing.service"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains("Unit failing.service launched on 113f16a7.../10.0.0.1\n"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("Error waiting for units: unit failing.service failed to start: systemd reports loaded/failed/failed"),
        "{r:?}"
    );
    assert!(
        r.stderr
            .ends_with("Error waiting for systemd unit states, exit status: 1\n"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_and_differing_local_files() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v1 = "[Service]\nExecStart=/bin/v1\n";
    let v2 = "[Service]\nExecStart=/bin/v2\n";
    let v3 = "[Service]\nExecStart=/bin/v3\n";
    write(d, "app.service", v1);
    assert_eq!(
        fleetctl(&server, d, &["submit", "app.service"]).await.code,
        0
    );

    write(d, "app.service", v2);
    let r = fleetctl(&server, d, &["submit", "app.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (
            0,
            "",
            "WARNING: Unit app.service in registry differs from local unit file app.service. Add --replace to override.\n"
        ),
        "{r:?}"
    );
    assert_eq!(
        fleetctl(&server, d, &["cat", "app"]).await.stdout,
        canonical(v1)
    );

    let r = fleetctl(&server, d, &["submit", "--replace", "app.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "Unit app.service inactive\n", ""),
        "{r:?}"
    );
    assert_eq!(
        fleetctl(&server, d, &["cat", "app"]).await.stdout,
        canonical(v2)
    );
    let r = fleetctl(&server, d, &["submit", "--replace", "app.service"]).await;
    assert_eq!(
        r.stdout, "Found same Unit(app.service) in Registry, nothing to do\n",
        "{r:?}"
    );

    // A launched unit cannot be replaced by submit, only by start.
    assert_eq!(fleetctl(&server, d, &["start", "app"]).await.code, 0);
    write(d, "app.service", v3);
    let r = fleetctl(&server, d, &["submit", "--replace", "app.service"]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            0,
            "Warning: can not replace Unit(app.service) in state 'launched', use the appropriate command\n"
        ),
        "{r:?}"
    );
    assert_eq!(
        fleetctl(&server, d, &["cat", "app"]).await.stdout,
        canonical(v2)
    );
    let r = fleetctl(&server, d, &["start", "--replace", "app.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (
            0,
            "Unit app.service inactive\nUnit app.service launched on 113f16a7.../10.0.0.1\n"
        ),
        "{r:?}"
    );
    assert_eq!(
        fleetctl(&server, d, &["cat", "app"]).await.stdout,
        canonical(v3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("units")).unwrap();
    let tmpl = "[Service]\nExecStart=/bin/echo %i\n";
    write(&d.join("units"), "web@.service", tmpl);

    // The instance's file does not exist: the template next to it is used.
    let r = fleetctl(&server, d, &["start", "units/web@1.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (
            0,
            "Unit web@1.service inactive\nUnit web@1.service launched on 113f16a7.../10.0.0.1\n"
        ),
        "{r:?}"
    );
    assert_eq!(
        fleetctl(&server, d, &["cat", "web@1"]).await.stdout,
        canonical(tmpl)
    );

    // With the template in the registry, it wins over a different local one.
    let r = fleetctl(&server, d, &["submit", "units/web@.service"]).await;
    assert_eq!(r.stdout, "Unit web@.service inactive\n", "{r:?}");
    write(
        &d.join("units"),
        "web@.service",
        "[Service]\nExecStart=/bin/other\n",
    );
    let r = fleetctl(&server, d, &["submit", "units/web@2.service"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stderr,
        "WARNING: Unit web@.service in registry differs from local template unit file units/web@2.service. Add --replace to override.\n"
    );
    assert_eq!(
        fleetctl(&server, d, &["cat", "web@2.service"]).await.stdout,
        canonical(tmpl)
    );

    // Templates cannot be started; the API says why.
    let r = fleetctl(&server, d, &["start", "web@.service"]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "Error starting units: cannot activate template \"web@.service\" (HTTP 400)\n"
        ),
        "{r:?}"
    );

    // Neither the unit nor a template anywhere.
    let r = fleetctl(&server, d, &["start", "nope@1.service"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        "Error creating units: failed getting Unit(nope@1.service) from template: \
         unable to find template Unit(nope@.service) in Registry or on filesystem\n"
    );
    let r = fleetctl(&server, d, &["submit", "nope"]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "Error creating units: unable to find Unit(nope.service) in Registry or on filesystem\n"
        ),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_file_problems() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "odd.service",
        "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nBogus=1\n",
    );
    let r = fleetctl(&server, d, &["submit", "odd.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (
            0,
            "Unit odd.service inactive\n",
            "WARNING: Unit odd.service: unrecognized requirement in [X-Fleet] section: \"Bogus\"\n"
        ),
        "{r:?}"
    );

    write(
        d,
        "bad.service",
        "[Service]\nExecStart=/bin/true\nnot an option\n",
    );
    let r = fleetctl(&server, d, &["submit", "bad.service"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.starts_with(
            "Error creating units: failed getting Unit(bad.service) from file: line 3: "
        ),
        "{r:?}"
    );

    write(
        d,
        "pinned.service",
        "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nMachineID=abc\nGlobal=true\n",
    );
    let r = fleetctl(&server, d, &["submit", "pinned.service"]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "Error creating units: MachineID cannot be used with Global\n"
        ),
        "{r:?}"
    );
    assert!(server.desired("pinned.service").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_and_format() {
    let server = Server::tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = ["e", "c", "a", "d", "b"];
    for n in names {
        write(
            d,
            &format!("{n}.service"),
            &format!("[Service]\nExecStart=/bin/{n}\n"),
        );
    }
    let args: Vec<String> = names.iter().map(|n| format!("{n}.service")).collect();
    let mut submit = vec!["submit"];
    submit.extend(args.iter().map(String::as_str));
    assert_eq!(fleetctl(&server, d, &submit).await.code, 0);

    // Five units over three pages, sorted.
    let r = fleetctl(
        &server,
        d,
        &["list-unit-files", "--no-legend", "--fields=unit"],
    )
    .await;
    assert_eq!(
        r.stdout, "a.service\nb.service\nc.service\nd.service\ne.service\n",
        "{r:?}"
    );
    let requests = server.requests();
    assert!(
        requests.contains(&"GET /fleet/v1/units?alt=json&nextPageToken=p2%3D%3D".to_owned()),
        "{requests:#?}"
    );

    let r = fleetctl(&server, d, &["list-machines"]).await;
    assert_eq!(
        r.stdout,
        "MACHINE\t\tIP\t\tMETADATA\n113f16a7...\t10.0.0.1\tregion=us-east,role=web\n2aa3c0d8...\t-\t\t-\n",
        "{r:?}"
    );
    let r = fleetctl(
        &server,
        d,
        &["list-machines", "-l", "--no-legend", "--fields=machine,ip"],
    )
    .await;
    assert_eq!(
        r.stdout,
        format!("{M1}\t10.0.0.1\n{}\t-\n", fake::M2),
        "{r:?}"
    );

    let r = fleetctl(&server, d, &["list-machines", "--fields=machine,bogus"]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Invalid key in output format: \"bogus\"\n"),
        "{r:?}"
    );
    let r = fleetctl(&server, d, &["list-units", "--fields="]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Must define output format\n"),
        "{r:?}"
    );
    let r = fleetctl(&server, d, &["list-unit-files", "--fields=unit,tmachine"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stderr,
        "WARNING: The \"tmachine\" field is deprecated. Use \"target\" instead\n"
    );
    assert!(r.stdout.starts_with("UNIT\t\tTMACHINE\n"), "{r:?}");

    // Empty listings still print the legend.
    let r = fleetctl(&server, d, &["list-units"]).await;
    assert_eq!(r.stdout, "UNIT\tMACHINE\tACTIVE\tSUB\n", "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_waits_until_gone() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "slowdelete.service", "[Service]\nExecStart=/bin/true\n");
    write(d, "slowdelete2.service", "[Service]\nExecStart=/bin/true\n");
    assert_eq!(
        fleetctl(&server, d, &["submit", "slowdelete", "slowdelete2"])
            .await
            .code,
        0
    );
    let before = server.requests().len();
    let r = fleetctl(&server, d, &["destroy", "slowdelete.service"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Destroyed slowdelete.service\n"),
        "{r:?}"
    );
    let polls = server.requests()[before..]
        .iter()
        .filter(|r| r.starts_with("GET /fleet/v1/units/slowdelete.service"))
        .count();
    assert_eq!(polls, 4, "polled until the unit was gone");
    let before = server.requests().len();
    let r = fleetctl(
        &server,
        d,
        &["destroy", "--no-block", "slowdelete2.service"],
    )
    .await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Destroyed slowdelete2.service\n"),
        "{r:?}"
    );
    assert!(
        !server.requests()[before..]
            .iter()
            .any(|r| r.starts_with("GET /fleet/v1/units/slowdelete2.service")),
        "--no-block does not poll"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_errors() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = fleetctl(&server, d, &["cat", "nope"]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Unit nope.service not found\n"),
        "{r:?}"
    );
    let r = fleetctl(&server, d, &["cat"]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "One unit file must be provided\n"),
        "{r:?}"
    );
    let r = fleetctl(&server, d, &["cat", "a", "b"]).await;
    assert_eq!(r.code, 1, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_from_environment() {
    let server = Server::tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = fleetctl_env(
        d,
        &[("FLEETCTL_ENDPOINT", &server.endpoint)],
        &["list-machines", "--no-legend", "--fields=ip"],
    )
    .await;
    assert_eq!((r.code, r.stdout.as_str()), (0, "10.0.0.1\n-\n"), "{r:?}");
    // The flag wins over the environment.
    let r = fleetctl_env(
        d,
        &[("FLEETCTL_ENDPOINT", "unix:///nonexistent/fleet.sock")],
        &[
            "--endpoint",
            &server.endpoint,
            "list-machines",
            "--no-legend",
            "--fields=ip",
        ],
    )
    .await;
    assert_eq!((r.code, r.stdout.as_str()), (0, "10.0.0.1\n-\n"), "{r:?}");
    // An empty variable counts as unset.
    let r = fleetctl_env(
        d,
        &[
            ("FLEETCTL_ENDPOINT", ""),
            ("FLEETCTL_DRIVER", "etcd"),
            ("FLEETCTL_TUNNEL", "127.0.0.1:1"),
        ],
        &["list-units"],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.starts_with(
            "Unable to initialize client: failed initializing SSH client to 127.0.0.1:1: "
        ),
        "{r:?}"
    );
    let r = fleetctl_env(
        d,
        &[("FLEETCTL_ENDPOINT", ""), ("FLEETCTL_DRIVER", "zookeeper")],
        &["list-units"],
    )
    .await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "Unable to initialize client: unrecognized driver \"zookeeper\"\n"
        ),
        "{r:?}"
    );
}

/// A variable with a value its flag does not take is refused, naming the
/// variable (the original silently used the flag's zero value), unless the
/// flag is given; FLEETCTL_HELP prints the help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_variables_are_named() {
    let server = Server::tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bad = [("FLEETCTL_STRICT_HOST_KEY_CHECKING", "yes")];
    let r = fleetctl_env(d, &bad, &["list-machines"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (
            2,
            "",
            "error: invalid value \"yes\" for --strict-host-key-checking in environment \
             variable FLEETCTL_STRICT_HOST_KEY_CHECKING: invalid boolean value \"yes\"\n"
        ),
        "{r:?}"
    );
    let endpoint = format!("--endpoint={}", server.endpoint);
    let r = fleetctl_env(
        d,
        &bad,
        &[
            &endpoint,
            "--strict-host-key-checking=false",
            "list-machines",
            "--no-legend",
            "--fields=ip",
        ],
    )
    .await;
    assert_eq!((r.code, r.stdout.as_str()), (0, "10.0.0.1\n-\n"), "{r:?}");
    let r = fleetctl_env(d, &[("FLEETCTL_REQUEST_TIMEOUT", "3s")], &["list-units"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("FLEETCTL_REQUEST_TIMEOUT"), "{r:?}");
    let r = fleetctl_env(d, &[("FLEETCTL_HELP", "1")], &["list-units"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("GLOBAL OPTIONS"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sock = format!("unix://{}/missing.sock", d.display());
    let r = fleetctl_env(d, &[], &["--endpoint", &sock, "list-units"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.starts_with(&format!(
            "Error retrieving list of units from repository: cannot reach fleet at {sock}: "
        )),
        "{r:?}"
    );
    assert_eq!(r.stderr.lines().count(), 1, "printed once: {r:?}");

    // list-machines words it as the original, with its hints.
    let r = fleetctl_env(d, &[], &["--endpoint", &sock, "list-machines"]).await;
    assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{r:?}");
    let (first, hints) = r.stderr.split_once('\n').unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "Error retrieving list of active machines from fleet API (cannot reach fleet at {sock}: "
        )) && first.ends_with(')'),
        "{r:?}"
    );
    assert_eq!(
        hints,
        "Possible issues:\n  etcd is unhealthy and/or lost quorum\n  \
         connection cannot be established to any etcd servers\n",
        "{r:?}"
    );

    // A TCP port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ep = format!("http://127.0.0.1:{port}");
    let r = fleetctl_env(d, &[], &["--endpoint", &ep, "start", "x.service"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("cannot reach fleet at {ep}")),
        "{r:?}"
    );

    // The missing slash of unix://var/... is caught before dialling.
    let r = fleetctl_env(
        d,
        &[],
        &["--endpoint=unix://var/run/fleet.sock", "list-units"],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.starts_with(
            "Unable to initialize client: invalid endpoint \"unix://var/run/fleet.sock\": \
             unable to connect to host \"var\" with scheme \"unix\""
        ),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_help_and_flag_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let want = format!("fleetctl version {}\n", fleetd::VERSION);
    for args in [
        &["version"][..],
        &["--version"],
        &["-v"],
        &["list-units", "--version"],
    ] {
        let r = fleetctl_env(d, &[], args).await;
        assert_eq!(
            (r.code, r.stdout.clone()),
            (0, want.clone()),
            "{args:?}: {r:?}"
        );
    }
    for args in [&[][..], &["help"], &["--help"], &["-h"]] {
        let r = fleetctl_env(d, &[], args).await;
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(
            r.stdout.contains("VERSION:") && r.stdout.contains(fleetd::VERSION),
            "{args:?}: {r:?}"
        );
    }
    let r = fleetctl_env(d, &[], &["--bogus", "list-units"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    let r = fleetctl_env(d, &[], &["list-units", "--block-attempts=3"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    let r = fleetctl_env(d, &[], &["frobnicate"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    let r = fleetctl_env(d, &[], &["submit", "--sign", "x.service"]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            2,
            "WARNING: The signed/verified units feature is DEPRECATED and cannot be used.\n"
        ),
        "{r:?}"
    );
    let r = fleetctl_env(d, &[], &["verify", "x.service"]).await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            2,
            "WARNING: The signed/verified units feature is DEPRECATED and cannot be used.\n"
        ),
        "{r:?}"
    );
    // A tunnel host nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tunnel = format!("--tunnel=127.0.0.1:{port}");
    let r = fleetctl_env(d, &[], &[&tunnel, "list-units"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.starts_with(&format!(
            "Unable to initialize client: failed initializing SSH client to 127.0.0.1:{port}: cannot dial 127.0.0.1:{port}: "
        )),
        "{r:?}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let r = fleetctl_env(d, &[], &["completion", shell]).await;
        assert_eq!(r.code, 0, "{shell}: {r:?}");
        assert!(r.stdout.contains("list-machines"), "{shell}: {r:?}");
    }
    let r = fleetctl_env(d, &[], &["completion", "tcsh"]).await;
    assert_eq!(r.code, 2, "{r:?}");
}

/// A `Description` continued with a backslash keeps its newline, and the
/// table breaks the line there as Go's tabwriter does (the goldens are
/// derived in render.rs's tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiline_descriptions_align_as_go() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "a-rather-long-name.service",
        "[Unit]\nDescription=Hello \\\n    World\n\n[Service]\nExecStart=/bin/true\n",
    );
    write(
        d,
        "b.service",
        "[Unit]\nDescription=Bye\n\n[Service]\nExecStart=/bin/true\n",
    );
    let r = fleetctl(
        &server,
        d,
        &["submit", "a-rather-long-name.service", "b.service"],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");

    // [UNIT, DESC] [a-rather..., "Hello \"] ["    World"] [b.service, Bye]:
    // the one-cell line splits column 0 into two blocks (32 and 16 wide).
    let r = fleetctl(&server, d, &["list-unit-files", "--fields=unit,desc"]).await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (
            0,
            "UNIT\t\t\t\tDESC\na-rather-long-name.service\tHello \\\n    World\nb.service\tBye\n",
            ""
        ),
        "{r:?}"
    );
    // With DSTATE after it every line has a column-0 cell (one block, 32
    // wide), while column 1 has two one-line blocks, DESC and Bye.
    let r = fleetctl(
        &server,
        d,
        &["list-unit-files", "--fields=unit,desc,dstate"],
    )
    .await;
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (
            0,
            "UNIT\t\t\t\tDESC\tDSTATE\n\
             a-rather-long-name.service\tHello \\\n\
             \x20   World\t\t\tinactive\n\
             b.service\t\t\tBye\tinactive\n",
            ""
        ),
        "{r:?}"
    );
}

/// Asserts a run's exit code, stdout and stderr at once.
fn expect(r: &Run, code: i32, stdout: &str, stderr: &str) {
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (code, stdout, stderr),
        "{r:?}"
    );
}

/// `stop`, `unload`, `restart` and `status` on units the registry does not
/// have or that are not running, worded and exiting as the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_commands_on_missing_and_inactive_units() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // As destroy: nothing known is not an error.
    for cmd in ["stop", "unload"] {
        let r = fleetctl(&server, d, &[cmd, "nope.service"]).await;
        expect(&r, 0, "", "Units not found in registry\n");
    }
    // status with no units has nothing to do.
    let r = fleetctl(&server, d, &["status"]).await;
    expect(&r, 0, "", "");

    write(d, "x.service", "[Service]\nExecStart=/bin/true\n");
    write(d, "y.service", "[Service]\nExecStart=/bin/true\n");
    assert_eq!(fleetctl(&server, d, &["submit", "x.service"]).await.code, 0);
    assert_eq!(fleetctl(&server, d, &["start", "y.service"]).await.code, 0);

    // restart reports an inactive unit and goes on with the next.
    let r = fleetctl(&server, d, &["restart", "x.service"]).await;
    expect(
        &r,
        0,
        "",
        "Unable to restart unit x.service in state inactive\n",
    );
    let before = server.requests().len();
    let r = fleetctl(&server, d, &["restart", "x.service", "y.service"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .starts_with("Unable to restart unit x.service in state inactive\n"),
        "{r:?}"
    );
    let puts: Vec<_> = server.requests()[before..]
        .iter()
        .filter(|q| q.starts_with("PUT /fleet/v1/units/"))
        .cloned()
        .collect();
    assert!(
        puts.iter()
            .all(|q| q.starts_with("PUT /fleet/v1/units/y.service"))
            && puts.len() == 2,
        "y.service stopped and started again: {puts:#?}"
    );

    let r = fleetctl(&server, d, &["status", "x.service"]).await;
    expect(&r, 1, "", "Unit x.service does not appear to be loaded.\n");
    let r = fleetctl(&server, d, &["journal", "x.service"]).await;
    expect(&r, 1, "", "Unit x.service does not appear to be running.\n");

    write(
        d,
        "g.service",
        "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n",
    );
    assert_eq!(fleetctl(&server, d, &["start", "g.service"]).await.code, 0);
    let r = fleetctl(&server, d, &["journal", "g.service"]).await;
    expect(
        &r,
        1,
        "",
        "Unable to retrieve journal of global unit g.service.\n",
    );
    let r = fleetctl(&server, d, &["status", "g.service"]).await;
    expect(
        &r,
        1,
        "",
        "Unable to determine status of global unit g.service.\n",
    );
}

/// `ssh`'s lookup errors, as the original words them. None of these gets
/// as far as connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_lookup_messages() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A unit whose name is also a prefix of M1's ID.
    write(d, "113f.service", "[Service]\nExecStart=/bin/true\n");
    write(d, "idle.service", "[Service]\nExecStart=/bin/true\n");
    write(
        d,
        "g.service",
        "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n",
    );
    assert_eq!(
        fleetctl(&server, d, &["start", "113f.service"]).await.code,
        0
    );
    assert_eq!(
        fleetctl(&server, d, &["submit", "idle.service", "g.service"])
            .await
            .code,
        0
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["ssh", "113f"],
            "Unable to proceed: ambiguous argument, both machine and unit found for `113f`.\n\
             Please use flag `-m` or `-u` to refine the search\n",
        ),
        (
            &["ssh"],
            "Unable to proceed: one machine or unit must be provided\n",
        ),
        (
            &["ssh", "zzz"],
            "Unable to proceed: could not find matching unit or machine\n",
        ),
        (
            &["ssh", "--machine=zzz"],
            "Unable to proceed: machine does not exist\n",
        ),
        (
            &["ssh", "--machine=2aa"],
            "Could not determine address of machine.\n",
        ),
        (
            &["ssh", "--unit=nope"],
            "Unable to proceed: unit does not exist\n",
        ),
        (
            &["ssh", "--unit=g.service"],
            "Unable to proceed: global units unsupported\n",
        ),
        (
            &["ssh", "--unit=idle"],
            "Could not determine address of machine.\n",
        ),
        (
            &["ssh", "--machine=1", "--unit=idle"],
            "Both machine and unit flags provided, please specify only one.\n",
        ),
    ];
    for (args, stderr) in cases {
        let r = fleetctl(&server, d, args).await;
        expect(&r, 1, "", stderr);
    }
}

/// Runs `fleetctl --request-timeout=0.5 <driver> list-machines` against a
/// TCP server that accepts connections, holds them open and never sends a
/// byte (endpoint `<scheme>://<addr>`); checks that it fails well within
/// 5 s saying `says`.
async fn fails_against_a_silent_server(scheme: &str, driver: &str, says: &str) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("--endpoint={scheme}://{addr}");
    let started = std::time::Instant::now();
    let args = [driver, &endpoint, "--request-timeout=0.5", "list-machines"];
    let r = fleetctl_env(dir.path(), &[], &args).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(says), "{r:?}");
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "{took:?} {r:?}");
}

/// `--request-timeout` (3 s by default) bounds connecting, not the answer:
/// a listing the server takes longer than that to answer still succeeds,
/// as with the original's API client, which had no limit on a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_listings_outlast_the_request_timeout() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    server.stall_next_listing(std::time::Duration::from_millis(3500));
    let r = fleetctl(&server, dir.path(), &["list-machines", "--no-legend"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("113f16a7...\t10.0.0.1\t"), "{r:?}");
}

/// A server that never gets as far as a connection (here: a TLS handshake
/// nobody answers) still fails within the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_is_bounded_by_the_request_timeout() {
    fails_against_a_silent_server("https", "--driver=API", "not connected within 0.5s").await;
}

/// With the etcd driver `--request-timeout` bounds each etcd request, as
/// in the original: an "etcd" that accepts connections and never answers
/// fails the command within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_requests_are_bounded_by_the_request_timeout() {
    fails_against_a_silent_server("http", "--driver=etcd", "deadline has elapsed").await;
}

/// Writes `n` unit files `<prefix>-NNN.service` into `dir` and returns
/// their names, in order.
fn many_units(dir: &Path, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}-{i:03}.service");
            write(
                dir,
                &name,
                &format!("[Service]\nExecStart=/bin/sleep {i}\n"),
            );
            name
        })
        .collect()
}

/// The lines each unit of `names` prints, `line(name)`, in order.
fn lines_of(names: &[String], line: impl Fn(&str) -> String) -> String {
    names.iter().map(|n| line(n) + "\n").collect()
}

/// The arguments `cmd` followed by `names`.
fn command_line(cmd: &[&str], names: &[String]) -> Vec<String> {
    cmd.iter()
        .map(|s| (*s).to_owned())
        .chain(names.iter().cloned())
        .collect()
}

/// [`fleetctl`] with owned arguments.
async fn fleetctl_args(server: &Server, dir: &Path, args: &[String]) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fleetctl(server, dir, &args).await
}

/// Many units are created, started, stopped and destroyed with several
/// requests in flight (at most 16) on a few kept connections, and print
/// exactly what one request after the other printed: every line in
/// argument order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_units_go_out_together_and_print_in_order() {
    let server = Server::tcp().await;
    server.hold_requests(std::time::Duration::from_millis(5));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = many_units(d, "many", 300);
    let with = |cmd: &[&str]| command_line(cmd, &names);
    let run = async |args: Vec<String>| fleetctl_args(&server, d, &args).await;

    let started = std::time::Instant::now();
    let r = run(with(&["start", "--no-block"])).await;
    let took = started.elapsed();
    let created = lines_of(&names, |n| format!("Unit {n} inactive"));
    let triggered = lines_of(&names, |n| format!("Triggered unit {n} start"));
    expect(&r, 0, &(created + &triggered), "");
    for n in &names {
        assert_eq!(server.desired(n), Some(TargetState::Launched), "{n}");
    }
    let (max, connections) = (server.max_in_flight(), server.connections());
    assert!((2..=16).contains(&max), "{max} requests in flight at most");
    assert!(connections <= 32, "{connections} connections");
    // One request at a time, 5 ms each, would take over 7 s.
    assert!(took < std::time::Duration::from_secs(6), "took {took:?}");

    let r = run(with(&["stop", "--no-block"])).await;
    let stopped = format!("Successfully stopped units [{}].\n", names.join(" "));
    let triggered = lines_of(&names, |n| format!("Triggered unit {n} stop"));
    expect(&r, 0, &triggered, &stopped);
    let r = run(with(&["destroy"])).await;
    expect(&r, 0, &lines_of(&names, |n| format!("Destroyed {n}")), "");
    assert!(server.max_in_flight() <= 16, "{}", server.max_in_flight());
}

/// `start --no-block` of many new units sends one PUT per unit (options and
/// desired state together) after one listing of the registry, and no
/// look-ups or waits; of submitted units, one PUT each after the listing.
/// The output is the same as before: `Unit <n> inactive` for each created
/// unit, then `Triggered unit <n> start`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_of_many_units_sends_one_put_per_unit() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = many_units(d, "few", 100);
    let args = command_line;
    let run = async |args: Vec<String>| fleetctl_args(&server, d, &args).await;
    // 100 units in the end: a listing of 51 pages (the fake's pages hold
    // 2, and a full last page still carries a token), fewer than the 70
    // look-ups of the second start.
    let (new, old) = names.split_at(30);
    let sent_for = async |args: Vec<String>| {
        let before = server.requests().len();
        let r = run(args).await;
        (r, server.requests()[before..].to_vec())
    };

    let (r, sent) = sent_for(args(&["start", "--no-block"], new)).await;
    let created = lines_of(new, |n| format!("Unit {n} inactive"));
    let triggered = lines_of(new, |n| format!("Triggered unit {n} start"));
    expect(&r, 0, &(created + &triggered), "");
    let puts = sent.iter().filter(|q| q.starts_with("PUT ")).count();
    assert_eq!(puts, new.len(), "{sent:#?}");
    // The registry was empty: its listing is one page.
    assert_eq!(sent.len(), new.len() + 1, "{sent:#?}");
    for n in new {
        assert_eq!(server.desired(n), Some(TargetState::Launched), "{n}");
    }

    let r = run(args(&["submit"], old)).await;
    expect(&r, 0, &lines_of(old, |n| format!("Unit {n} inactive")), "");
    let (r, sent) = sent_for(args(&["start", "--no-block"], old)).await;
    expect(
        &r,
        0,
        &lines_of(old, |n| format!("Triggered unit {n} start")),
        "",
    );
    let puts = sent.iter().filter(|q| q.starts_with("PUT ")).count();
    assert_eq!(puts, old.len(), "{sent:#?}");
    assert!(
        !sent.iter().any(|q| q.starts_with("GET /fleet/v1/units/")),
        "no look-ups: {sent:#?}"
    );
    assert_eq!(sent.len(), old.len() + 51, "{sent:#?}");
}

/// The units of a blocking start that take a while, and the lines it prints
/// for them (their order within one poll is the arguments').
fn lazy_start(d: &Path) -> (Vec<String>, Vec<String>) {
    let names = many_units(d, "lazy", 20);
    let mut lines: Vec<String> = names.iter().map(|n| format!("Unit {n} inactive")).collect();
    lines.extend(
        names
            .iter()
            .map(|n| format!("Unit {n} launched on 113f16a7.../10.0.0.1")),
    );
    lines.sort();
    (names, lines)
}

/// Without a terminal on stdout, a blocking start of many units that takes
/// a while prints its lines and not a byte of progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_progress_without_a_terminal() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let (names, want) = lazy_start(dir.path());
    let mut args = vec!["start"];
    args.extend(names.iter().map(String::as_str));
    let r = fleetctl(&server, dir.path(), &args).await;
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{r:?}");
    let mut got: Vec<&str> = r.stdout.lines().collect();
    got.sort_unstable();
    assert_eq!(got, want, "{r:?}");
    assert!(
        !r.stdout.contains(['\r', '\x1b']) && !r.stderr.contains(['\r', '\x1b']),
        "{r:?}"
    );
}

/// What a terminal shows in the end of `raw` (stdout through a pty): each
/// progress line drawn (`\r\x1b[K` and text up to the next `\r\x1b[K`) is
/// dropped. A progress line left on the screen, or glued to a real line,
/// stays in the text.
fn without_progress(raw: &str) -> String {
    const ERASE: &str = "\r\x1b[K";
    let raw = raw.replace("\r\n", "\n");
    let mut shown = String::new();
    let mut rest = raw.as_str();
    while let Some(i) = rest.find(ERASE) {
        shown.push_str(&rest[..i]);
        rest = &rest[i + ERASE.len()..];
        if let Some(j) = rest.find(ERASE)
            && !rest[..j].contains('\n')
        {
            rest = &rest[j..];
        }
    }
    shown.push_str(rest);
    shown
}

/// On a terminal (a pty through `script`), a blocking start of many units
/// that takes a while draws a progress line with counts, and erases it
/// before each line and at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_on_a_terminal_is_drawn_and_erased() {
    let server = Server::unix().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (names, want) = lazy_start(d);
    let command = format!(
        "{} --endpoint={} start {}",
        env!("CARGO_BIN_EXE_fleetctl"),
        server.endpoint,
        names.join(" ")
    );
    let mut cmd = tokio::process::Command::new("script");
    cmd.current_dir(d)
        .args(["-qec", &command, "/dev/null"])
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("script finished within 60s")
        .expect("script ran");
    let r = Run::from(out);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("\r\x1b[Klaunched 0/20"),
        "a progress line with counts: {r:?}"
    );
    let shown = without_progress(&r.stdout);
    let mut got: Vec<&str> = shown.lines().collect();
    got.sort_unstable();
    assert_eq!(got, want, "{shown:?}");
}
