//! Table tests for every scheduling rule (after fleet's engine tests) and
//! properties: convergence, constraints hold, determinism, balance.

use std::sync::Arc;

use proptest::prelude::*;
use units::{Requirements, UnitHash, UnitName};

use super::*;
use crate::engine::constraints::{self, MachineRef, ResidentList};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn mid(s: &str) -> MachineId {
    s.parse().expect("valid machine ID")
}

fn uname(s: &str) -> UnitName {
    s.parse().expect("valid unit name")
}

fn hash(n: u8) -> UnitHash {
    UnitHash::from_bytes([n; 20])
}

/// A cluster under construction.
#[derive(Default)]
struct Cluster {
    view: ClusterView,
}

impl Cluster {
    fn machine(mut self, id: &str) -> Self {
        self.view.machines.insert(mid(id), MachineView::default());
        self
    }

    fn machine_md(mut self, id: &str, pairs: &[(&str, &str)]) -> Self {
        let metadata = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.view.machines.insert(mid(id), MachineView { metadata });
        self
    }

    fn unit(self, name: &str, state: TargetState) -> Self {
        self.unit_with(name, state, |_| {})
    }

    fn unit_with(
        mut self,
        name: &str,
        state: TargetState,
        f: impl FnOnce(&mut Requirements),
    ) -> Self {
        let mut reqs = Requirements::default();
        f(&mut reqs);
        self.view.units.insert(
            uname(name),
            UnitView {
                desired_state: state,
                hash: hash(1),
                requirements: Arc::new(reqs),
            },
        );
        self
    }

    /// Schedule `unit` on `machine` with the entry it should have (or a
    /// launched non-global entry if the unit is unknown).
    fn placed(self, unit: &str, machine: &str) -> Self {
        let entry = self.view.units.get(unit).map_or(
            ScheduledUnit {
                desired_state: TargetState::Launched,
                hash: hash(1),
                global: false,
            },
            |u| ScheduledUnit {
                desired_state: u.desired_state,
                hash: u.hash,
                global: u.requirements.global,
            },
        );
        self.entry(unit, machine, entry)
    }

    fn entry(mut self, unit: &str, machine: &str, entry: ScheduledUnit) -> Self {
        self.view
            .schedule
            .entry(mid(machine))
            .or_default()
            .insert(uname(unit), entry);
        self
    }
}

use TargetState::{Inactive, Launched, Loaded};

fn launched(global: bool) -> ScheduledUnit {
    ScheduledUnit {
        desired_state: Launched,
        hash: hash(1),
        global,
    }
}

/// A decision in compact form: `+unit@machine` or `-unit@machine`.
fn short(d: &Decision) -> String {
    match &d.change {
        ScheduleChange::Put { unit, machine, .. } => format!("+{unit}@{machine}"),
        ScheduleChange::Remove { unit, machine } => format!("-{unit}@{machine}"),
    }
}

fn shorts(ds: &[Decision]) -> Vec<String> {
    ds.iter().map(short).collect()
}

/// Decide, check the decisions converge and keep every constraint, and
/// return them in compact form.
fn run(c: &Cluster) -> Vec<String> {
    let ds = decide(&c.view);
    let mut after = c.view.clone();
    after.apply(&ds);
    assert_eq!(shorts(&decide(&after)), Vec::<String>::new(), "converges");
    check_invariants(&after);
    shorts(&ds)
}

/// Every entry of the schedule is allowed.
fn check_invariants(view: &ClusterView) {
    let unit_of = |name: &UnitName| view.units.get(name).expect("scheduled units exist");
    for (machine, entries) in &view.schedule {
        let m = view
            .machines
            .get(machine)
            .expect("scheduled machines exist");
        let residents: Vec<(&str, &Requirements)> = entries
            .keys()
            .map(|n| (n.as_str(), &*unit_of(n).requirements))
            .collect();
        let residents = ResidentList(residents);
        for (name, entry) in entries {
            let unit = unit_of(name);
            assert_ne!(unit.desired_state, Inactive, "{name} is active");
            assert_eq!(entry.desired_state, unit.desired_state, "{name} state");
            assert_eq!(entry.hash, unit.hash, "{name} hash");
            assert_eq!(entry.global, unit.requirements.global, "{name} global flag");
            let machine_ref = MachineRef {
                id: machine,
                metadata: &m.metadata,
            };
            let verdict = constraints::able_to_run(
                name.as_str(),
                &unit.requirements,
                machine_ref,
                &residents,
            );
            assert_eq!(verdict, Ok(()), "{name} may run on {machine}");
        }
    }
    for (name, unit) in &view.units {
        if !unit.requirements.global {
            let n = view
                .schedule
                .values()
                .filter(|e| e.contains_key(name))
                .count();
            assert!(n <= 1, "{name} placed {n} times");
        }
    }
}

// ---------------------------------------------------------------------------
// Table tests
// ---------------------------------------------------------------------------

#[test]
fn nothing_to_do_on_an_empty_cluster() {
    assert!(decide(&ClusterView::default()).is_empty());
    let c = Cluster::default().unit("a.service", Launched);
    let p = plan(&c.view);
    assert!(p.decisions.is_empty());
    assert_eq!(p.unschedulable.get("a.service"), Some(&Blocked::NoMachines));
}

#[test]
fn schedules_to_the_least_loaded_machine() {
    let c = Cluster::default()
        .machine("m1")
        .machine("m2")
        .unit("a.service", Launched)
        .unit("b.service", Launched)
        .unit("c.service", Loaded)
        .placed("a.service", "m1");
    assert_eq!(run(&c), ["+b.service@m2", "+c.service@m1"]);
    let ds = decide(&c.view);
    assert_eq!(ds[0].reason, Reason::Placed { load: 0 });
    assert_eq!(
        ds[0].reason.to_string(),
        "least-loaded eligible machine (0 units)"
    );
    let ScheduleChange::Put { entry, .. } = &ds[1].change else {
        panic!("a put");
    };
    assert_eq!(
        *entry,
        ScheduledUnit {
            desired_state: Loaded,
            hash: hash(1),
            global: false
        }
    );
}

#[test]
fn ties_break_by_machine_id() {
    let c = Cluster::default()
        .machine("m2")
        .machine("m10")
        .machine("m1")
        .unit("a.service", Launched);
    assert_eq!(run(&c), ["+a.service@m1"]);
}

#[test]
fn inactive_units_are_not_scheduled_and_are_unscheduled() {
    let c = Cluster::default()
        .machine("m1")
        .unit("a.service", Inactive)
        .unit("b.service", Inactive)
        .entry("b.service", "m1", launched(false));
    assert_eq!(run(&c), ["-b.service@m1"]);
    assert_eq!(decide(&c.view)[0].reason, Reason::Inactive);
    assert_eq!(Reason::Inactive.to_string(), "target state inactive");
}

#[test]
fn destroyed_units_are_unscheduled() {
    let c = Cluster::default()
        .machine("m1")
        .entry("gone.service", "m1", launched(false));
    let ds = decide(&c.view);
    assert_eq!(shorts(&ds), ["-gone.service@m1"]);
    assert_eq!(ds[0].reason, Reason::UnitDeleted);
}

#[test]
fn a_lost_machine_loses_its_units_which_move_in_the_same_pass() {
    let c = Cluster::default()
        .machine("m2")
        .unit("a.service", Launched)
        .unit("b.service", Launched)
        .placed("a.service", "m1")
        .placed("b.service", "m1");
    assert_eq!(
        run(&c),
        [
            "-a.service@m1",
            "-b.service@m1",
            "+a.service@m2",
            "+b.service@m2"
        ]
    );
    let ds = decide(&c.view);
    assert_eq!(ds[0].reason, Reason::MachineGone);
    assert_eq!(ds[0].reason.to_string(), "target machine went away");
}

#[test]
fn a_new_machine_does_not_move_units_that_are_fine() {
    let c = Cluster::default()
        .machine("m1")
        .machine("m2")
        .unit("a.service", Launched)
        .unit("b.service", Launched)
        .placed("a.service", "m1")
        .placed("b.service", "m1");
    assert!(run(&c).is_empty());
}

#[test]
fn desired_state_and_content_changes_update_the_entry() {
    let mut c = Cluster::default()
        .machine("m1")
        .unit("a.service", Loaded)
        .unit("b.service", Launched)
        .entry("a.service", "m1", launched(false))
        .entry("b.service", "m1", launched(false));
    c.view.units.get_mut("b.service").expect("b").hash = hash(2);
    let ds = decide(&c.view);
    assert_eq!(shorts(&ds), ["+a.service@m1", "+b.service@m1"]);
    assert_eq!(
        ds[0].reason,
        Reason::Updated {
            from: Some(Launched),
            to: Loaded,
            content: false
        }
    );
    assert_eq!(ds[0].reason.to_string(), "desired state launched -> loaded");
    assert_eq!(
        ds[1].reason,
        Reason::Updated {
            from: None,
            to: Launched,
            content: true
        }
    );
    assert_eq!(ds[1].reason.to_string(), "content changed");
    run(&c);
}

#[test]
fn metadata_restricts_machines_or_within_and_across_keys() {
    let c = Cluster::default()
        .machine_md("m1", &[("region", "us-east"), ("disk", "hdd")])
        .machine_md("m2", &[("region", "us-west"), ("disk", "ssd")])
        .machine_md("m3", &[("region", "eu"), ("disk", "ssd")])
        .unit_with("a.service", Launched, |r| {
            r.metadata
                .insert("region".into(), vec!["us-east".into(), "us-west".into()]);
            r.metadata.insert("disk".into(), vec!["ssd".into()]);
        })
        .unit_with("b.service", Launched, |r| {
            r.metadata.insert("region".into(), vec!["mars".into()]);
        });
    assert_eq!(run(&c), ["+a.service@m2"]);
    assert_eq!(
        plan(&c.view).unschedulable.get("b.service"),
        Some(&Blocked::NoCandidate)
    );
}

#[test]
fn a_unit_moves_when_its_machine_no_longer_matches() {
    let c = Cluster::default()
        .machine_md("m1", &[("role", "db")])
        .machine_md("m2", &[("role", "web")])
        .unit_with("a.service", Launched, |r| {
            r.metadata.insert("role".into(), vec!["web".into()]);
        })
        .placed("a.service", "m1");
    assert_eq!(run(&c), ["-a.service@m1", "+a.service@m2"]);
    assert_eq!(
        decide(&c.view)[0].reason.to_string(),
        "machine unable to run unit: machine metadata does not satisfy MachineMetadata for \"role\""
    );
}

#[test]
fn machine_id_full_or_short() {
    let full = "0123456789abcdef0123456789abcdef";
    let c = Cluster::default()
        .machine("aaaaaaaa")
        .machine(full)
        .unit_with("a.service", Launched, |r| r.machine_id = Some(full.into()))
        .unit_with("b.service", Launched, |r| {
            r.machine_id = Some("01234567".into());
        })
        .unit_with("c.service", Launched, |r| {
            r.machine_id = Some("nope".into());
        });
    assert_eq!(
        run(&c),
        [format!("+a.service@{full}"), format!("+b.service@{full}")]
    );
    assert_eq!(
        plan(&c.view).unschedulable.get("c.service"),
        Some(&Blocked::NoCandidate)
    );
}

#[test]
fn machine_of_followers_go_with_their_peer_even_when_named_first() {
    let c = Cluster::default()
        .machine("m1")
        .machine("m2")
        .machine("m3")
        .unit("z.service", Launched)
        .unit_with("a.service", Launched, |r| {
            r.machine_of = vec!["z.service".into()];
        })
        .unit_with("b.service", Launched, |r| {
            r.machine_of = vec!["a.service".into(), "z.service".into()];
        });
    assert_eq!(run(&c), ["+a.service@m1", "+b.service@m1", "+z.service@m1"]);
}

#[test]
fn followers_move_when_their_peer_moves() {
    let c = Cluster::default()
        .machine("m2")
        .unit("p.service", Launched)
        .unit_with("f.service", Launched, |r| {
            r.machine_of = vec!["p.service".into()];
        })
        .placed("p.service", "m1")
        .placed("f.service", "m1");
    assert_eq!(
        run(&c),
        [
            "-f.service@m1",
            "-p.service@m1",
            "+f.service@m2",
            "+p.service@m2"
        ]
    );
}

#[test]
fn followers_leave_when_their_peer_is_unscheduled() {
    let c = Cluster::default()
        .machine("m1")
        .unit("p.service", Inactive)
        .unit_with("f.service", Launched, |r| {
            r.machine_of = vec!["p.service".into()];
        })
        .placed("p.service", "m1")
        .placed("f.service", "m1");
    assert_eq!(run(&c), ["-f.service@m1", "-p.service@m1"]);
    let p = plan(&c.view);
    assert_eq!(
        p.decisions[0].reason,
        Reason::CannotRun(Refusal::PeerMissing {
            peer: "p.service".into()
        })
    );
    assert_eq!(
        p.unschedulable.get("f.service"),
        Some(&Blocked::PeerNotScheduled {
            peer: "p.service".into()
        })
    );
}

#[test]
fn units_naming_each_other_in_machine_of_are_never_scheduled() {
    let c = Cluster::default()
        .machine("m1")
        .unit_with("a.service", Launched, |r| {
            r.machine_of = vec!["b.service".into()];
        })
        .unit_with("b.service", Launched, |r| {
            r.machine_of = vec!["a.service".into()];
        });
    let p = plan(&c.view);
    assert!(p.decisions.is_empty());
    assert_eq!(p.unschedulable.len(), 2);
}

#[test]
fn conflicts_are_checked_both_ways_with_globs() {
    let c = Cluster::default()
        .machine("m1")
        .machine("m2")
        .machine("m3")
        .unit_with("web@1.service", Launched, |r| {
            r.conflicts = vec!["web@*.service".into()];
        })
        .unit_with("web@2.service", Launched, |r| {
            r.conflicts = vec!["web@*.service".into()];
        })
        // No Conflicts of its own: refused by the residents' globs.
        .unit("web@3.service", Launched)
        .unit("web@4.service", Launched)
        .placed("web@3.service", "m1")
        .placed("web@4.service", "m2");
    // m3 is empty and least loaded: web@1 goes there; web@2 would conflict
    // everywhere (web@3, web@4 match its glob; web@1's glob matches it).
    assert_eq!(run(&c), ["+web@1.service@m3"]);
    let p = plan(&c.view);
    assert!(matches!(
        p.unschedulable.get("web@2.service"),
        Some(Blocked::Refused { .. })
    ));
}

#[test]
fn of_two_conflicting_placed_units_the_first_by_name_moves() {
    let c = Cluster::default()
        .machine("m1")
        .machine("m2")
        .unit_with("a.service", Launched, |r| {
            r.conflicts = vec!["b.service".into()];
        })
        .unit("b.service", Launched)
        .placed("a.service", "m1")
        .placed("b.service", "m1");
    assert_eq!(run(&c), ["-a.service@m1", "+a.service@m2"]);
    assert_eq!(
        decide(&c.view)[0].reason.to_string(),
        "machine unable to run unit: conflicts with b.service on the machine"
    );
}

#[test]
fn replaces_pushes_the_replaced_unit_away_and_the_replacer_stays() {
    // Already together (e.g. placed by an older engine): old moves.
    let c = Cluster::default()
        .machine("m1")
        .machine("m2")
        .unit("old.service", Launched)
        .unit_with("new.service", Launched, |r| {
            r.replaces = vec!["old.service".into()];
        })
        .placed("old.service", "m1")
        .placed("new.service", "m1");
    assert_eq!(run(&c), ["-old.service@m1", "+old.service@m2"]);
    assert_eq!(
        decide(&c.view)[0].reason.to_string(),
        "machine unable to run unit: replaced by new.service on the machine"
    );
}

#[test]
fn a_new_replacing_unit_lands_where_least_loaded_and_evicts() {
    // m1 holds old (load 1) but m2 is busier: new goes to m1 and old moves
    // to the least-loaded machine that can run it.
    let c = Cluster::default()
        .machine("m1")
        .machine("m2")
        .machine("m3")
        .unit("old.service", Launched)
        .unit("x.service", Launched)
        .unit("y.service", Launched)
        .unit("z.service", Launched)
        .unit_with("new.service", Launched, |r| {
            r.replaces = vec!["old*".into()];
        })
        .placed("old.service", "m1")
        .placed("x.service", "m2")
        .placed("y.service", "m2")
        .placed("z.service", "m3");
    assert_eq!(
        run(&c),
        ["-old.service@m1", "+new.service@m1", "+old.service@m3"]
    );
}

#[test]
fn a_replaced_unit_is_not_placed_next_to_its_replacer() {
    let c = Cluster::default()
        .machine("m1")
        .machine("m2")
        .unit("old.service", Launched)
        .unit("x.service", Launched)
        .unit_with("new.service", Launched, |r| {
            r.replaces = vec!["old.service".into()];
        })
        .placed("new.service", "m1")
        .placed("x.service", "m2");
    // Tie on load 1: m1 would win, but new.service replaces old there.
    assert_eq!(run(&c), ["+old.service@m2"]);
}

#[test]
fn mutual_replaces_is_ignored() {
    let c = Cluster::default()
        .machine("m1")
        .unit_with("a.service", Launched, |r| {
            r.replaces = vec!["b.service".into()];
        })
        .unit_with("b.service", Launched, |r| {
            r.replaces = vec!["a.service".into()];
        })
        .placed("a.service", "m1")
        .placed("b.service", "m1");
    assert!(run(&c).is_empty());
}

#[test]
fn global_units_run_on_every_eligible_machine() {
    let c = Cluster::default()
        .machine_md("m1", &[("role", "web")])
        .machine_md("m2", &[("role", "web")])
        .machine_md("m3", &[("role", "db")])
        .machine_md("m4", &[("role", "web")])
        .unit_with("g.service", Launched, |r| {
            r.global = true;
            r.metadata.insert("role".into(), vec!["web".into()]);
            r.conflicts = vec!["x.service".into()];
        })
        .unit("x.service", Launched)
        .placed("x.service", "m4");
    assert_eq!(run(&c), ["+g.service@m1", "+g.service@m2"]);
    let ds = decide(&c.view);
    assert_eq!(ds[0].reason, Reason::Global);
    let ScheduleChange::Put { entry, .. } = &ds[0].change else {
        panic!("a put");
    };
    assert!(entry.global);
}

#[test]
fn global_units_count_towards_load() {
    let c = Cluster::default()
        .machine_md("m1", &[("g", "yes")])
        .machine("m2")
        .unit_with("g.service", Launched, |r| {
            r.global = true;
            r.metadata.insert("g".into(), vec!["yes".into()]);
        })
        .unit("a.service", Launched);
    assert_eq!(run(&c), ["+a.service@m2", "+g.service@m1"]);
}

#[test]
fn global_instances_follow_machines_and_metadata() {
    let c = Cluster::default()
        .machine_md("m1", &[("role", "web")])
        .machine_md("m2", &[("role", "db")])
        .machine_md("m3", &[("role", "web")])
        .unit_with("g.service", Launched, |r| {
            r.global = true;
            r.metadata.insert("role".into(), vec!["web".into()]);
        })
        .placed("g.service", "m1")
        .placed("g.service", "m2")
        .placed("g.service", "gone");
    assert_eq!(
        run(&c),
        ["-g.service@gone", "-g.service@m2", "+g.service@m3"]
    );
}

#[test]
fn an_inactive_global_unit_leaves_every_machine() {
    let c = Cluster::default()
        .machine("m1")
        .machine("m2")
        .unit_with("g.service", Inactive, |r| r.global = true)
        .entry("g.service", "m1", launched(true))
        .entry("g.service", "m2", launched(true));
    assert_eq!(run(&c), ["-g.service@m1", "-g.service@m2"]);
}

#[test]
fn global_units_yield_to_a_conflicting_non_global_unit() {
    let c = Cluster::default()
        .machine("m1")
        .unit_with("g.service", Launched, |r| {
            r.global = true;
            r.conflicts = vec!["a.service".into()];
        })
        .unit("a.service", Launched)
        .placed("g.service", "m1")
        .placed("a.service", "m1");
    assert_eq!(run(&c), ["-g.service@m1"]);
}

#[test]
fn a_global_unit_returns_when_the_conflicting_unit_moves_away() {
    // a.service conflicts with b.service and leaves m1 in step 3: m1 can
    // take the global instance in the same pass.
    let c = Cluster::default()
        .machine("m1")
        .machine("m2")
        .unit_with("a.service", Launched, |r| {
            r.conflicts = vec!["b.service".into()];
        })
        .unit("b.service", Launched)
        .unit_with("g.service", Launched, |r| {
            r.global = true;
            r.conflicts = vec!["a.service".into()];
        })
        .placed("a.service", "m1")
        .placed("b.service", "m1")
        .placed("g.service", "m2");
    // a.service cannot go to m2 either (g.service's instance refuses it):
    // existing placements are kept, so it waits.
    assert_eq!(run(&c), ["-a.service@m1", "+g.service@m1"]);
    assert!(matches!(
        plan(&c.view).unschedulable.get("a.service"),
        Some(Blocked::Refused { .. })
    ));
}

#[test]
fn switching_between_global_and_not_replaces_the_entries() {
    let c = Cluster::default()
        .machine("m1")
        .machine("m2")
        .unit_with("g.service", Launched, |r| r.global = true)
        .unit("n.service", Launched)
        .entry("g.service", "m1", launched(false))
        .entry("n.service", "m1", launched(true))
        .entry("n.service", "m2", launched(true));
    assert_eq!(
        run(&c),
        // Removed and put back on m1 in one pass: one put each.
        [
            "-n.service@m2",
            "+g.service@m1",
            "+g.service@m2",
            "+n.service@m1"
        ]
    );
    let ds = decide(&c.view);
    assert_eq!(ds[0].reason, Reason::GlobalChanged { now_global: false });
}

#[test]
fn a_unit_placed_twice_keeps_its_first_machine() {
    let c = Cluster::default()
        .machine("m1")
        .machine("m2")
        .unit("a.service", Launched)
        .placed("a.service", "m1")
        .placed("a.service", "m2");
    assert_eq!(run(&c), ["-a.service@m2"]);
    assert_eq!(
        decide(&c.view)[0].reason.to_string(),
        "unit is also scheduled on m1"
    );
}

#[test]
fn templates_are_never_scheduled() {
    let c = Cluster::default()
        .machine("m1")
        .unit("web@.service", Launched)
        .placed("web@.service", "m1");
    assert_eq!(run(&c), ["-web@.service@m1"]);
    assert_eq!(
        plan(&c.view).unschedulable.get("web@.service"),
        Some(&Blocked::Template)
    );
}

#[test]
fn removals_come_before_puts() {
    let c = Cluster::default()
        .machine("m2")
        .unit("a.service", Launched)
        .unit("z.service", Launched)
        .placed("z.service", "m1");
    assert_eq!(run(&c), ["-z.service@m1", "+a.service@m2", "+z.service@m2"]);
}

#[test]
fn many_unconstrained_units_spread_evenly() {
    let mut c = Cluster::default();
    for m in 0..7 {
        c = c.machine(&format!("m{m}"));
    }
    for u in 0..100 {
        c = c.unit(&format!("u{u:03}.service"), Launched);
    }
    run(&c);
    let mut after = c.view.clone();
    after.apply(&decide(&c.view));
    let loads: Vec<usize> = after.machines.keys().map(|m| after.load(m)).collect();
    assert_eq!(loads.iter().sum::<usize>(), 100);
    assert!(loads.iter().max().expect("machines") - loads.iter().min().expect("machines") <= 1);
}

#[test]
fn many_metadata_classes_beyond_the_index_cap_still_work() {
    let mut c = Cluster::default();
    for m in 0..10 {
        c = c.machine_md(&format!("m{m}"), &[("k", &format!("{}", m % 5))]);
    }
    for u in 0..(MAX_CLASSES + 20) {
        // Every unit has its own requirement (a distinct second value).
        c = c.unit_with(&format!("u{u:04}.service"), Launched, |r| {
            r.metadata
                .insert("k".into(), vec![format!("{}", u % 5), format!("v{u}")]);
        });
    }
    let p = plan(&c.view);
    assert_eq!(p.decisions.len(), MAX_CLASSES + 20);
    assert!(p.unschedulable.is_empty());
    run(&c);
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

const MACHINES: [&str; 6] = ["m0", "m1", "m2", "m3", "m4", "m5"];
const UNIT_COUNT: usize = 10;

fn unit_name(i: usize) -> String {
    format!("u{i}.service")
}

fn arb_requirements(i: usize) -> impl Strategy<Value = Requirements> {
    let others = || proptest::sample::select((0..UNIT_COUNT).collect::<Vec<_>>());
    (
        proptest::option::weighted(0.1, proptest::sample::select(MACHINES.to_vec())),
        proptest::collection::vec(others(), 0..=1),
        proptest::collection::btree_map(
            prop_oneof![Just("role".to_owned()), Just("disk".to_owned())],
            proptest::collection::vec(
                prop_oneof![Just("a".to_owned()), Just("b".to_owned())],
                1..=2,
            ),
            0..=1,
        ),
        proptest::collection::vec(
            prop_oneof![
                others().prop_map(unit_name),
                Just("u*.service".to_owned()),
                Just("u1*.service".to_owned())
            ],
            0..=1,
        ),
        proptest::bool::weighted(0.15),
        // Replaces only points to later units: no cycles.
        proptest::collection::vec(((i + 1)..=UNIT_COUNT).prop_map(unit_name), 0..=1),
    )
        .prop_map(
            move |(machine_id, peers, metadata, conflicts, global, replaces)| Requirements {
                machine_id: machine_id.map(str::to_owned),
                machine_of: peers
                    .into_iter()
                    .filter(|&p| p != i)
                    .map(unit_name)
                    .collect(),
                metadata,
                conflicts: if global { Vec::new() } else { conflicts },
                global,
                replaces: if global { Vec::new() } else { replaces },
                unrecognized: Vec::new(),
            },
        )
}

fn arb_view() -> impl Strategy<Value = ClusterView> {
    let machines = proptest::collection::btree_map(
        proptest::sample::select(MACHINES.to_vec()),
        proptest::collection::btree_map(
            prop_oneof![Just("role".to_owned()), Just("disk".to_owned())],
            prop_oneof![Just("a".to_owned()), Just("b".to_owned())],
            0..=2,
        ),
        0..=5,
    );
    let units: Vec<_> = (0..UNIT_COUNT)
        .map(|i| {
            (
                proptest::option::weighted(0.9, arb_requirements(i)),
                prop_oneof![Just(Inactive), Just(Loaded), Just(Launched)],
                0u8..2,
            )
        })
        .collect();
    let entries = proptest::collection::vec(
        (
            proptest::sample::select(MACHINES.to_vec()),
            0..UNIT_COUNT + 1,
            prop_oneof![Just(Loaded), Just(Launched)],
            any::<bool>(),
        ),
        0..12,
    );
    (machines, units, entries).prop_map(|(machines, units, entries)| {
        let mut view = ClusterView::default();
        for (id, metadata) in machines {
            view.machines.insert(mid(id), MachineView { metadata });
        }
        for (i, (reqs, state, h)) in units.into_iter().enumerate() {
            if let Some(reqs) = reqs {
                view.units.insert(
                    uname(&unit_name(i)),
                    UnitView {
                        desired_state: state,
                        hash: hash(h),
                        requirements: Arc::new(reqs),
                    },
                );
            }
        }
        for (machine, unit, state, global) in entries {
            view.schedule.entry(mid(machine)).or_default().insert(
                uname(&unit_name(unit)),
                ScheduledUnit {
                    desired_state: state,
                    hash: hash(0),
                    global,
                },
            );
        }
        view
    })
}

proptest! {
    // No regression files: the cases are cheap, run many.
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn decisions_converge_and_keep_every_constraint(view in arb_view()) {
        let p = plan(&view);
        let mut after = view.clone();
        after.apply(&p.decisions);
        let again = decide(&after);
        prop_assert!(again.is_empty(), "not converged: {:?}\nthen {:?}", shorts(&p.decisions), shorts(&again));
        check_invariants(&after);
        // Every unit that should run is placed or explained.
        for (name, unit) in &after.units {
            let wants = unit.desired_state != Inactive && !unit.requirements.global;
            let placed = after.schedule.values().any(|e| e.contains_key(name));
            prop_assert_eq!(wants && !placed, p.unschedulable.contains_key(name), "{}", name);
        }
        // Every global unit is on every machine that can take it.
        for (name, unit) in &after.units {
            if !unit.requirements.global || unit.desired_state == Inactive {
                continue;
            }
            for (id, m) in &after.machines {
                let entries = after.schedule.get(id).cloned().unwrap_or_default();
                if entries.contains_key(name) {
                    continue;
                }
                let residents = ResidentList(
                    entries.keys().map(|n| (n.as_str(), &*after.units[n].requirements)).collect(),
                );
                let machine = MachineRef { id, metadata: &m.metadata };
                prop_assert!(
                    constraints::able_to_run(name.as_str(), &unit.requirements, machine, &residents).is_err(),
                    "{} could run on {}", name, id
                );
            }
        }
    }

    #[test]
    fn a_new_machine_moves_nothing(
        view in arb_view(),
        metadata in proptest::collection::btree_map(
            prop_oneof![Just("role".to_owned()), Just("disk".to_owned())],
            prop_oneof![Just("a".to_owned()), Just("b".to_owned())],
            0..=2,
        ),
    ) {
        let mut view = view;
        let first = decide(&view);
        view.apply(&first);
        let new = mid("new");
        view.machines.insert(new.clone(), MachineView { metadata });
        for d in decide(&view) {
            prop_assert!(
                matches!(d.change, ScheduleChange::Put { .. }) && *d.machine() == new,
                "{}", short(&d)
            );
        }
    }

    #[test]
    fn decisions_are_deterministic(view in arb_view()) {
        prop_assert_eq!(decide(&view), decide(&view.clone()));
    }

    #[test]
    fn unconstrained_units_are_balanced(machines in 1usize..12, units in 0usize..80, placed in 0usize..3) {
        let mut c = Cluster::default();
        for m in 0..machines {
            c = c.machine(&format!("m{m:02}"));
        }
        for u in 0..units {
            c = c.unit(&format!("u{u:03}.service"), Launched);
        }
        // A few global instances count towards load too.
        for g in 0..placed {
            c = c.unit_with(&format!("g{g}.service"), Launched, |r| r.global = true);
        }
        let mut after = c.view.clone();
        after.apply(&decide(&c.view));
        let loads: Vec<usize> = after.machines.keys().map(|m| after.load(m)).collect();
        let max = loads.iter().max().copied().unwrap_or(0);
        let min = loads.iter().min().copied().unwrap_or(0);
        prop_assert!(max - min <= 1, "loads {:?}", loads);
        prop_assert_eq!(loads.iter().sum::<usize>(), units + placed * machines);
    }
}
