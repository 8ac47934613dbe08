//! Self-test of the harness: a machine boots to a running systemd, commands run inside it,
//! networks connect machines to the host, cuts and heals work, and teardown leaves nothing
//! behind.

use std::time::Duration;

use testbed::machine::{Machine, MachineSpec};
use testbed::net::Network;
use testbed::util::unique_name;

fn leftovers(name: &str) -> Vec<String> {
    let mut left = Vec::new();
    for h in ["systemd", "unified"] {
        let p = format!("/sys/fs/cgroup/{h}/tb/{name}");
        if std::path::Path::new(&p).exists() {
            left.push(p);
        }
    }
    let p = format!("/run/systemd/nspawn/propagate/{name}");
    if std::path::Path::new(&p).exists() {
        left.push(p);
    }
    left
}

#[tokio::test]
async fn machine_boots_runs_commands_and_goes_away() -> anyhow::Result<()> {
    let machine = Machine::boot(MachineSpec::new(unique_name("tb"))).await?;
    let name = machine.name().to_owned();
    let nspawn = machine.nspawn_pid();

    let out = machine.systemctl(&["is-system-running"]).await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "running");
    let out = machine.exec(&["cat", "/etc/machine-id"]).await?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        machine.machine_id()
    );

    machine.write_file("/run/tb-probe/hello", "hi")?;
    let out = machine.exec(&["cat", "/run/tb-probe/hello"]).await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi");

    machine.shutdown().await;
    assert!(
        !std::path::Path::new(&format!("/proc/{nspawn}")).exists(),
        "nspawn still running"
    );
    assert_eq!(leftovers(&name), Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn machines_on_a_network_reach_the_host_until_cut() -> anyhow::Result<()> {
    let mut net = Network::new()?;
    let ns = net.add_host("m1")?;
    let bridge = net.bridge().to_owned();
    let mut spec = MachineSpec::new(unique_name("tb"));
    spec.netns = Some(ns.path());
    let machine = Machine::boot(spec).await?;
    let name = machine.name().to_owned();

    // A listener on the bridge address; connections complete in its backlog unaccepted.
    let port = testbed::util::free_port()?;
    let _listener = std::net::TcpListener::bind((net.host_ip(), port))?;
    let target = format!("/dev/tcp/{}/{port}", net.host_ip());
    async fn reachable(m: &Machine, target: &str) -> anyhow::Result<bool> {
        let script = format!("exec 3<>{target}");
        let out = m.exec(&["timeout", "2", "bash", "-c", &script]).await?;
        Ok(out.status.success())
    }

    let out = machine
        .exec(&["ip", "-4", "-o", "addr", "show", "eth0"])
        .await?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&ns.ip.to_string()),
        "{out:?}"
    );
    assert!(
        reachable(&machine, &target).await?,
        "host unreachable before the cut"
    );
    ns.cut()?;
    ns.cut()?;
    assert!(
        !reachable(&machine, &target).await?,
        "host reachable during the cut"
    );
    ns.heal()?;
    ns.heal()?;
    testbed::util::wait_for(
        "the host to be reachable again",
        Duration::from_secs(5),
        || {
            let (machine, target) = (&machine, &target);
            async move { Ok(reachable(machine, target).await?.then_some(())) }
        },
    )
    .await?;

    machine.kill().await;
    drop(net);
    assert_eq!(leftovers(&name), Vec::<String>::new());
    assert!(!std::path::Path::new(&ns.path()).exists(), "netns left");
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists(),
        "bridge left"
    );
    Ok(())
}
