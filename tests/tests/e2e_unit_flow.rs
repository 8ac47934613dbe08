//! End to end on real parts: fleetd runs as a systemd service in real systemd
//! machines; fleetctl on the host starts, stops and destroys a unit through
//! the TCP API; every claim is checked against the machine's own systemd over
//! its D-Bus, not through fleet.

use std::time::Duration;

use systemd::{DbusConfig, DbusManager, SystemdManager};
use testbed::cluster::{Cluster, ClusterOptions, check};
use testbed::util::wait_until;

const HELLO: &str = "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100000\n";

/// systemd's (load, active, sub) for a unit, asked over the machine's bus.
async fn systemd_state(bus: &str, unit: &str) -> anyhow::Result<(String, String, String)> {
    let manager = DbusManager::connect(DbusConfig {
        bus_address: Some(bus.to_owned()),
        user: false,
        units_dir: "/nonexistent".into(),
        units_dir_in_systemd: "/nonexistent".into(),
        job_timeout: Duration::from_secs(10),
    })
    .await?;
    let states = manager.states(&[unit.to_owned()]).await?;
    let s = states
        .get(unit)
        .ok_or_else(|| anyhow::anyhow!("systemd did not report {unit}"))?;
    Ok((
        s.load_state.clone(),
        s.active_state.clone(),
        s.sub_state.clone(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_destroy_through_fleetctl() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        members: 2,
        ..ClusterOptions::default()
    })
    .await?;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hello.service");
    std::fs::write(&path, HELLO)?;
    let path = path.to_string_lossy().into_owned();

    // start returns once the unit is launched.
    let out = cluster.fleetctl(&["start", &path]).await?;
    if !out.status.success() {
        anyhow::bail!(
            "fleetctl start failed: {}\n{}\njournal m0:\n{}\njournal m1:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            cluster.fleet_journal(0).await,
            cluster.fleet_journal(1).await
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Unit hello.service launched on "),
        "unexpected start output: {stdout}"
    );

    // list-units shows it active on one machine; that machine's systemd agrees.
    let rows = cluster.list_units().await?;
    let row = rows
        .iter()
        .find(|r| r.0 == "hello.service")
        .ok_or_else(|| anyhow::anyhow!("list-units does not show hello.service: {rows:?}"))?;
    assert_eq!(row.1, "active", "list-units: {rows:?}");
    let member = cluster
        .member_by_id(&row.2)
        .ok_or_else(|| anyhow::anyhow!("unit placed on unknown machine {}", row.2))?;
    let bus = member.machine.bus_address();
    let state = systemd_state(&bus, "hello.service").await?;
    assert_eq!(state, ("loaded".into(), "active".into(), "running".into()));
    let unit_file = member.machine.root_path("/run/fleet/units/hello.service");
    assert!(unit_file.exists(), "{} missing", unit_file.display());
    // The other machine does not run it.
    let other = cluster
        .members
        .iter()
        .find(|m| m.machine.machine_id() != row.2)
        .ok_or_else(|| anyhow::anyhow!("no second member"))?;
    assert_ne!(other.is_active("hello.service").await?, "active");

    // Inside a machine, fleetctl reaches the API over the default unix socket.
    let out = cluster.members[1]
        .machine
        .exec(&["/opt/fleet/fleetctl", "list-units", "--no-legend"])
        .await?;
    check(&out, "fleetctl list-units over /var/run/fleet.sock")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.starts_with("hello.service\t") && listed.contains("active"),
        "list-units over the unix socket: {listed:?}"
    );

    // stop: systemd reports it inactive, fleet keeps it loaded.
    let out = cluster.fleetctl(&["stop", "hello.service"]).await?;
    check(&out, "fleetctl stop")?;
    wait_until(
        "hello.service inactive in systemd",
        Duration::from_secs(20),
        || systemd_state(&bus, "hello.service"),
        |s| s.1 == "inactive",
    )
    .await?;
    assert!(unit_file.exists(), "a stopped unit stays loaded");

    // destroy: gone from fleet, from systemd and from disk.
    let out = cluster.fleetctl(&["destroy", "hello.service"]).await?;
    check(&out, "fleetctl destroy")?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("Destroyed hello.service"));
    wait_until(
        "hello.service's unit file removed",
        Duration::from_secs(20),
        || async { Ok(unit_file.exists()) },
        |exists| !exists,
    )
    .await?;
    let out = cluster
        .fleetctl(&["list-unit-files", "--no-legend"])
        .await?;
    check(&out, "fleetctl list-unit-files")?;
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("hello.service"),
        "destroyed unit still listed"
    );
    Ok(())
}
