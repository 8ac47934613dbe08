//! Times the scheduler on a large cluster: one `decide` pass from an empty
//! schedule, then one on the converged schedule.
//!
//! ```sh
//! cargo run --release -p fleetd --example bench_engine [MACHINES] [UNITS]
//! ```
//!
//! Defaults: 10,000 machines and 100,000 units. Machines carry `region`,
//! `disk` and `role` metadata. Units: 50 global (half restricted by
//! metadata), about 10 % metadata-constrained, 5 % in conflict groups
//! (`Conflicts=grp<N>@*.service`), 3 % `MachineOf` sidecars, 1 % pinned with
//! `MachineID`, 1 % `Replaces`, 5 % inactive, the rest unconstrained.
//!
//! The engine exists only with feature `daemon` (the default); without it
//! this example only says so.

#[cfg(not(feature = "daemon"))]
fn main() {
    eprintln!("bench_engine needs fleetd's `daemon` feature (the engine)");
}

#[cfg(feature = "daemon")]
fn main() {
    bench::main();
}

#[cfg(feature = "daemon")]
mod bench {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Instant;

    use fleetd::engine::{
        CachedEntry, CachedUnit, ClusterView, MachineView, Overlay, Snapshots, UnitView,
        build_view, plan,
    };
    use fleetd::registry::{Keys, ScheduleChange};
    use fleetd::schema::{Capabilities, MachineId, MachineRecord, TargetState};
    use units::{Requirements, UnitHash, UnitName};

    fn machine_id(i: usize) -> MachineId {
        // 32 hex characters, like /etc/machine-id, spread over the key space.
        let x = (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        format!("{x:032x}")
            .parse()
            .expect("hex is a valid machine ID")
    }

    fn name(s: String) -> UnitName {
        s.parse().expect("generated unit names are valid")
    }

    /// The four caches' contents for `view`, keyed as in etcd.
    fn snapshots_of(view: &ClusterView) -> Snapshots {
        let keys = Keys::default();
        let units = view
            .units
            .iter()
            .map(|(name, u)| {
                let cached = CachedUnit {
                    name: name.clone(),
                    view: u.clone(),
                };
                (keys.unit(name), Arc::new(cached))
            })
            .collect();
        let schedule = view
            .schedule
            .iter()
            .flat_map(|(machine, entries)| {
                entries.iter().map(|(unit, entry)| {
                    let cached = CachedEntry {
                        machine: machine.clone(),
                        unit: unit.clone(),
                        entry: entry.clone(),
                    };
                    (keys.scheduled(machine, unit), Arc::new(cached))
                })
            })
            .collect();
        let machines = view
            .machines
            .iter()
            .map(|(id, m)| {
                let record = MachineRecord {
                    id: id.clone(),
                    public_ip: String::new(),
                    metadata: m.metadata.clone(),
                    capabilities: Capabilities::default(),
                    version: String::new(),
                    token: String::new(),
                };
                (keys.machine(id), Arc::new(record))
            })
            .collect();
        Snapshots {
            units: Arc::new(units),
            schedule: Arc::new(schedule),
            machines: Arc::new(machines),
            metadata: Arc::new(BTreeMap::new()),
        }
    }

    pub fn main() {
        let mut args = std::env::args().skip(1);
        let machines: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
        let units: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);

        let t = Instant::now();
        let mut view = ClusterView::default();
        let regions = ["us-east", "us-west", "eu"];
        let roles = ["web", "db", "cache", "batch"];
        for i in 0..machines {
            let metadata = BTreeMap::from([
                ("region".to_owned(), regions[i % 3].to_owned()),
                (
                    "disk".to_owned(),
                    if i % 5 == 0 { "ssd" } else { "hdd" }.to_owned(),
                ),
                ("role".to_owned(), roles[i % 4].to_owned()),
            ]);
            view.machines
                .insert(machine_id(i), MachineView { metadata });
        }
        let mut counts = BTreeMap::<&str, usize>::new();
        for i in 0..units {
            let mut r = Requirements::default();
            let (kind, unit) = match i % 100 {
                _ if i < 50 => {
                    r.global = true;
                    if i % 2 == 0 {
                        r.metadata
                            .insert("role".into(), vec!["web".into(), "cache".into()]);
                    }
                    ("global", format!("global-{i}.service"))
                }
                0..=9 => {
                    r.metadata
                        .insert("region".into(), vec![regions[i % 3].into()]);
                    if i % 2 == 0 {
                        r.metadata.insert("disk".into(), vec!["ssd".into()]);
                    }
                    ("metadata", format!("meta-{i}.service"))
                }
                10..=14 => {
                    let group = i % 50;
                    r.conflicts = vec![format!("grp{group}@*.service")];
                    ("conflicts", format!("grp{group}@{i}.service"))
                }
                15..=17 => {
                    // Follows an unconstrained unit of the same hundred.
                    r.machine_of =
                        vec![format!("app-{}.service", i - i % 100 + 30 + (i % 100 - 15))];
                    ("machine_of", format!("sidecar-{i}.service"))
                }
                18 => {
                    r.machine_id = Some(machine_id(i % machines).short().to_owned());
                    ("machine_id", format!("pinned-{i}.service"))
                }
                19 => {
                    r.replaces = vec![format!("app-{}.service", i - i % 100 + 40)];
                    ("replaces", format!("new-{i}.service"))
                }
                20..=24 => ("inactive", format!("app-{i}.service")),
                _ => ("plain", format!("app-{i}.service")),
            };
            *counts.entry(kind).or_default() += 1;
            let desired_state = match kind {
                "inactive" => TargetState::Inactive,
                _ if i % 7 == 0 => TargetState::Loaded,
                _ => TargetState::Launched,
            };
            view.units.insert(
                name(unit),
                UnitView {
                    desired_state,
                    hash: UnitHash::from_bytes([(i % 251) as u8; 20]),
                    requirements: Arc::new(r),
                },
            );
        }
        println!("cluster: {machines} machines, {units} units {counts:?}");
        println!("built the view in {:.1?}", t.elapsed());

        let t = Instant::now();
        let first = plan(&view);
        let elapsed = t.elapsed();
        let puts = first
            .decisions
            .iter()
            .filter(|d| matches!(d.change, ScheduleChange::Put { .. }))
            .count();
        println!(
            "decide from an empty schedule: {elapsed:.1?} ({puts} puts, {} unschedulable)",
            first.unschedulable.len()
        );

        let t = Instant::now();
        view.apply(&first.decisions);
        let entries: usize = view.schedule.values().map(BTreeMap::len).sum();
        println!("applied {entries} entries in {:.1?}", t.elapsed());

        let t = Instant::now();
        let second = plan(&view);
        println!(
            "decide on the converged schedule: {:.1?} ({} decisions)",
            t.elapsed(),
            second.decisions.len()
        );
        assert!(second.decisions.is_empty(), "the schedule converges");

        // What the engine does per pass: assemble the view from its caches'
        // snapshots (simulated here), then decide.
        let snapshots = snapshots_of(&view);
        let t = Instant::now();
        let rebuilt = build_view(&snapshots, &Overlay::default());
        let built = t.elapsed();
        assert_eq!(rebuilt, view, "the caches hold the same cluster");
        let t = Instant::now();
        let fourth = plan(&rebuilt);
        println!(
            "engine pass on the converged schedule: view from caches {built:.1?} + decide {:.1?} ({} decisions)",
            t.elapsed(),
            fourth.decisions.len()
        );

        // A machine dies: its units move.
        let gone = machine_id(machines / 2);
        view.machines.remove(&gone);
        let lost = view.load(&gone);
        let t = Instant::now();
        let third = plan(&view);
        println!(
            "decide after losing a machine with {lost} entries: {:.1?} ({} decisions)",
            t.elapsed(),
            third.decisions.len()
        );
    }
}
