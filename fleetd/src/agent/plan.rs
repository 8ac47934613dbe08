//! The agent's pure core: from what this machine should run and what it runs
//! now, the systemd tasks that close the gap.
//!
//! This is fleet's `calculateTasksForUnits` (`agent/reconcile.go`) with two of
//! its bugs fixed:
//! - **Adoption.** The original's "current" job state came only from an
//!   in-memory cache, so after a fleetd restart every unit counted as inactive
//!   and was loaded and started again. Here the observed side comes from the
//!   units directory (the hash of the file there) and systemd's real state; the
//!   agent's memory of what it did ([`ObservedUnit::job`]) only refines that.
//!   A unit whose file has the right hash and that systemd reports as running
//!   is adopted as it is: a restart touches nothing.
//! - **Content we do not have.** A unit whose content must be (re)loaded but
//!   whose text is not available ([`DesiredUnit::file`] is `None`) is left as
//!   it is for this round, rather than being unloaded.
//!
//! What the agent's memory is still needed for: a unit the agent started that
//! has since exited or failed is *not* started again on every pass (which
//! would turn every `Type=oneshot` unit into a loop); systemd's `Restart=`
//! owns that, as in the original. And a unit desired `loaded` that something
//! else started (a dependency of another unit, an administrator) is not
//! stopped unless the agent itself took it to `launched` or does not know.
//!
//! Tasks come out in fleet's order: every unload, every load, one reload (only
//! if there was a load or an unload), every stop, every start; units in name
//! order within each kind.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use units::{UnitFile, UnitHash, UnitName};

use crate::schema::TargetState;

/// What this machine's schedule asks for one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredUnit {
    /// `loaded` or `launched`; `inactive` is treated as "not desired".
    pub state: TargetState,
    /// The content hash the unit must run.
    pub hash: UnitHash,
    /// The content whose hash is `hash`, when the agent has it. Needed only
    /// when the unit must be (re)loaded; `None` then means "skip this unit
    /// this round".
    pub file: Option<UnitFile>,
}

/// What this machine runs now for one unit whose file is in the units
/// directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedUnit {
    /// Hash of the file in the units directory; `None` if it does not parse
    /// (it is then replaced or unloaded).
    pub hash: Option<UnitHash>,
    /// How far the agent has taken the unit (`loaded` or `launched`) as far as
    /// this process knows; `inactive` when it does not know (after a restart).
    pub job: TargetState,
    /// systemd's LoadState (`loaded`, `not-found`, …), if known.
    pub load_state: Option<String>,
    /// systemd's ActiveState (`active`, `inactive`, `failed`, …), if known.
    pub active_state: Option<String>,
}

/// One systemd operation of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum Task {
    /// Stop the unit, then disable it and remove its file (fleet's
    /// `UnloadUnit`: the file is kept when the stop fails).
    Unload {
        /// The unit.
        name: UnitName,
    },
    /// Write the file into the units directory and link (and enable) it
    /// (fleet's `LoadUnit`, the STYLE guide's `WriteFile`).
    Load {
        /// The unit.
        name: UnitName,
        /// Its content.
        #[serde(skip)]
        file: UnitFile,
    },
    /// One daemon-reload for the batch's loads and unloads.
    Reload,
    /// Stop the unit, keeping it loaded.
    Stop {
        /// The unit.
        name: UnitName,
    },
    /// Start the unit.
    Start {
        /// The unit.
        name: UnitName,
    },
}

impl Task {
    /// The unit the task is about; `None` for the batch's reload.
    pub fn unit(&self) -> Option<&UnitName> {
        match self {
            Task::Unload { name }
            | Task::Load { name, .. }
            | Task::Stop { name }
            | Task::Start { name } => Some(name),
            Task::Reload => None,
        }
    }

    /// Position in a batch: unloads, loads, reload, stops, starts.
    fn rank(&self) -> u8 {
        match self {
            Task::Unload { .. } => 0,
            Task::Load { .. } => 1,
            Task::Reload => 2,
            Task::Stop { .. } => 3,
            Task::Start { .. } => 4,
        }
    }

    /// A short verb for logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Task::Unload { .. } => "unload",
            Task::Load { .. } => "load",
            Task::Reload => "reload",
            Task::Stop { .. } => "stop",
            Task::Start { .. } => "start",
        }
    }
}

/// What the agent has taken one unit to, after a batch: published as the
/// unit's `jobState`, and fed back as [`ObservedUnit::job`] on the next pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Managed {
    /// Hash of the content loaded.
    pub hash: UnitHash,
    /// `loaded` or `launched`.
    pub job: TargetState,
}

/// Whether systemd's ActiveState means the unit runs (or is on its way).
pub fn is_active(active_state: Option<&str>) -> bool {
    matches!(
        active_state,
        Some("active" | "activating" | "reloading" | "refreshing")
    )
}

/// The tasks that take `observed` to `desired`, in batch order.
pub fn plan(
    desired: &BTreeMap<UnitName, DesiredUnit>,
    observed: &BTreeMap<UnitName, ObservedUnit>,
) -> Vec<Task> {
    let names: BTreeSet<&UnitName> = desired.keys().chain(observed.keys()).collect();
    let mut tasks = Vec::new();
    for name in names {
        plan_unit(name, desired.get(name), observed.get(name), &mut tasks);
    }
    if tasks
        .iter()
        .any(|t| matches!(t, Task::Load { .. } | Task::Unload { .. }))
    {
        tasks.push(Task::Reload);
    }
    // Stable: units stay in name order within each kind.
    tasks.sort_by_key(Task::rank);
    tasks
}

/// The tasks for one unit, in the order they must run.
fn plan_unit(
    name: &UnitName,
    desired: Option<&DesiredUnit>,
    observed: Option<&ObservedUnit>,
    tasks: &mut Vec<Task>,
) {
    let desired = desired.filter(|d| d.state != TargetState::Inactive);
    let Some(d) = desired else {
        if observed.is_some() {
            tasks.push(Task::Unload { name: name.clone() });
        }
        return;
    };
    let same_content = observed.filter(|o| o.hash == Some(d.hash));
    match same_content {
        // Right content, and systemd knows the unit: adopt it, or move it
        // between loaded and launched.
        Some(o) if o.load_state.as_deref() != Some("not-found") => {
            let active = is_active(o.active_state.as_deref());
            match d.state {
                TargetState::Launched if !active && o.job != TargetState::Launched => {
                    tasks.push(Task::Start { name: name.clone() });
                }
                TargetState::Loaded if active && o.job != TargetState::Loaded => {
                    tasks.push(Task::Stop { name: name.clone() });
                }
                _ => {}
            }
        }
        // No file, other content, or a file systemd has no link for: load it,
        // if we have the content.
        _ => {
            let Some(file) = &d.file else {
                return;
            };
            if observed.is_some() && same_content.is_none() {
                tasks.push(Task::Unload { name: name.clone() });
            }
            tasks.push(Task::Load {
                name: name.clone(),
                file: file.clone(),
            });
            if d.state == TargetState::Launched {
                tasks.push(Task::Start { name: name.clone() });
            }
        }
    }
}

/// What the agent has taken each unit to after running `tasks`, of which
/// the units in `failed` had a task fail or skipped.
///
/// - A desired unit whose tasks all succeeded (or that needed none) and whose
///   content is now the desired one is at its desired state.
/// - A unit with a failed task, or a desired one left alone for want of
///   content, keeps what was known of it (nothing, after a restart).
/// - Anything else (unloaded, or not there at all) is not managed.
pub fn settle(
    desired: &BTreeMap<UnitName, DesiredUnit>,
    observed: &BTreeMap<UnitName, ObservedUnit>,
    tasks: &[Task],
    failed: &BTreeSet<UnitName>,
) -> BTreeMap<UnitName, Managed> {
    let loaded: BTreeSet<&UnitName> = tasks
        .iter()
        .filter_map(|t| match t {
            Task::Load { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    let names: BTreeSet<&UnitName> = desired.keys().chain(observed.keys()).collect();
    let mut managed = BTreeMap::new();
    for name in names {
        let d = desired
            .get(name)
            .filter(|d| d.state != TargetState::Inactive);
        let o = observed.get(name);
        let known = || {
            o.and_then(|o| match (o.hash, o.job) {
                (_, TargetState::Inactive) | (None, _) => None,
                (Some(hash), job) => Some(Managed { hash, job }),
            })
        };
        let entry = if failed.contains(name) {
            known()
        } else if let Some(d) = d {
            let has_content = loaded.contains(name)
                || o.is_some_and(|o| {
                    o.hash == Some(d.hash) && o.load_state.as_deref() != Some("not-found")
                });
            if has_content {
                Some(Managed {
                    hash: d.hash,
                    job: d.state,
                })
            } else {
                known()
            }
        } else {
            None
        };
        if let Some(entry) = entry {
            managed.insert(name.clone(), entry);
        }
    }
    managed
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetState::{Inactive, Launched, Loaded};

    fn name(s: &str) -> UnitName {
        s.parse().expect("test unit names are valid")
    }

    fn file(exec: &str) -> UnitFile {
        UnitFile::from_options(vec![units::UnitOption::new("Service", "ExecStart", exec)])
    }

    fn hash(exec: &str) -> UnitHash {
        file(exec).hash()
    }

    fn want(state: TargetState, exec: &str) -> DesiredUnit {
        DesiredUnit {
            state,
            hash: hash(exec),
            file: Some(file(exec)),
        }
    }

    fn have(exec: &str, job: TargetState, active: &str) -> ObservedUnit {
        ObservedUnit {
            hash: Some(hash(exec)),
            job,
            load_state: Some("loaded".to_owned()),
            active_state: Some(active.to_owned()),
        }
    }

    fn load(n: &str, exec: &str) -> Task {
        Task::Load {
            name: name(n),
            file: file(exec),
        }
    }
    fn unload(n: &str) -> Task {
        Task::Unload { name: name(n) }
    }
    fn start(n: &str) -> Task {
        Task::Start { name: name(n) }
    }
    fn stop(n: &str) -> Task {
        Task::Stop { name: name(n) }
    }

    fn one<T>(n: &str, v: T) -> BTreeMap<UnitName, T> {
        BTreeMap::from([(name(n), v)])
    }

    fn none<T>() -> BTreeMap<UnitName, T> {
        BTreeMap::new()
    }

    /// One table row: what it checks, desired, observed, expected tasks.
    type Case = (
        &'static str,
        BTreeMap<UnitName, DesiredUnit>,
        BTreeMap<UnitName, ObservedUnit>,
        Vec<Task>,
    );

    /// The cases of fleet's `agent/reconcile_test.go`
    /// (`TestCalculateTasksForUnits`), plus ours for adoption and missing
    /// content.
    #[test]
    fn table() {
        let a = "foo.service";
        let cases: Vec<Case> = vec![
            ("nothing to do", none(), none(), vec![]),
            (
                "load a new unit",
                one(a, want(Loaded, "/x")),
                none(),
                vec![load(a, "/x"), Task::Reload],
            ),
            (
                "load and start a new unit",
                one(a, want(Launched, "/x")),
                none(),
                vec![load(a, "/x"), Task::Reload, start(a)],
            ),
            (
                "unload a loaded unit",
                none(),
                one(a, have("/x", Loaded, "inactive")),
                vec![unload(a), Task::Reload],
            ),
            (
                "unload a launched unit",
                none(),
                one(a, have("/x", Launched, "active")),
                vec![unload(a), Task::Reload],
            ),
            (
                "unload a unit desired inactive",
                one(a, want(Inactive, "/x")),
                one(a, have("/x", Loaded, "inactive")),
                vec![unload(a), Task::Reload],
            ),
            (
                "loaded stays loaded",
                one(a, want(Loaded, "/x")),
                one(a, have("/x", Loaded, "inactive")),
                vec![],
            ),
            (
                "loaded to launched",
                one(a, want(Launched, "/x")),
                one(a, have("/x", Loaded, "inactive")),
                vec![start(a)],
            ),
            (
                "launched to loaded",
                one(a, want(Loaded, "/x")),
                one(a, have("/x", Launched, "active")),
                vec![stop(a)],
            ),
            (
                "launched stays launched",
                one(a, want(Launched, "/x")),
                one(a, have("/x", Launched, "active")),
                vec![],
            ),
            (
                "content changed while launched",
                one(a, want(Launched, "/y")),
                one(a, have("/x", Launched, "active")),
                vec![unload(a), load(a, "/y"), Task::Reload, start(a)],
            ),
            (
                "content changed while loaded",
                one(a, want(Loaded, "/y")),
                one(a, have("/x", Loaded, "inactive")),
                vec![unload(a), load(a, "/y"), Task::Reload],
            ),
            (
                "file that does not parse is replaced",
                one(a, want(Loaded, "/y")),
                one(
                    a,
                    ObservedUnit {
                        hash: None,
                        ..have("/x", Loaded, "inactive")
                    },
                ),
                vec![unload(a), load(a, "/y"), Task::Reload],
            ),
            (
                "file there but not linked is loaded again",
                one(a, want(Launched, "/x")),
                one(
                    a,
                    ObservedUnit {
                        load_state: Some("not-found".to_owned()),
                        ..have("/x", Inactive, "inactive")
                    },
                ),
                vec![load(a, "/x"), Task::Reload, start(a)],
            ),
            // Adoption after a restart: the job is unknown, systemd decides.
            (
                "restart: running unit adopted",
                one(a, want(Launched, "/x")),
                one(a, have("/x", Inactive, "active")),
                vec![],
            ),
            (
                "restart: activating unit adopted",
                one(a, want(Launched, "/x")),
                one(a, have("/x", Inactive, "activating")),
                vec![],
            ),
            (
                "restart: loaded unit adopted",
                one(a, want(Loaded, "/x")),
                one(a, have("/x", Inactive, "inactive")),
                vec![],
            ),
            (
                "restart: stopped unit started",
                one(a, want(Launched, "/x")),
                one(a, have("/x", Inactive, "inactive")),
                vec![start(a)],
            ),
            (
                "restart: failed unit started",
                one(a, want(Launched, "/x")),
                one(a, have("/x", Inactive, "failed")),
                vec![start(a)],
            ),
            (
                "restart: running unit desired loaded is stopped",
                one(a, want(Loaded, "/x")),
                one(a, have("/x", Inactive, "active")),
                vec![stop(a)],
            ),
            // What the agent did is remembered.
            (
                "launched unit that exited is left to systemd",
                one(a, want(Launched, "/x")),
                one(a, have("/x", Launched, "inactive")),
                vec![],
            ),
            (
                "launched unit that failed is left to systemd",
                one(a, want(Launched, "/x")),
                one(a, have("/x", Launched, "failed")),
                vec![],
            ),
            (
                "loaded unit started by someone else is left running",
                one(a, want(Loaded, "/x")),
                one(a, have("/x", Loaded, "active")),
                vec![],
            ),
            // Content not available: leave the unit alone.
            (
                "new unit without content is skipped",
                one(
                    a,
                    DesiredUnit {
                        file: None,
                        ..want(Launched, "/x")
                    },
                ),
                none(),
                vec![],
            ),
            (
                "changed unit without content keeps running",
                one(
                    a,
                    DesiredUnit {
                        file: None,
                        ..want(Launched, "/y")
                    },
                ),
                one(a, have("/x", Launched, "active")),
                vec![],
            ),
            (
                "no content needed when the file is right",
                one(
                    a,
                    DesiredUnit {
                        file: None,
                        ..want(Launched, "/x")
                    },
                ),
                one(a, have("/x", Loaded, "inactive")),
                vec![start(a)],
            ),
        ];
        for (what, desired, observed, expected) in cases {
            assert_eq!(plan(&desired, &observed), expected, "{what}");
        }
    }

    #[test]
    fn batch_order_and_a_single_reload() {
        let desired = BTreeMap::from([
            (name("a.service"), want(Launched, "/a")),
            (name("b.service"), want(Loaded, "/b2")),
            (name("c.service"), want(Loaded, "/c")),
            (name("d.service"), want(Launched, "/d")),
        ]);
        let observed = BTreeMap::from([
            (name("b.service"), have("/b1", Launched, "active")),
            (name("c.service"), have("/c", Launched, "active")),
            (name("d.service"), have("/d", Loaded, "inactive")),
            (name("e.service"), have("/e", Launched, "active")),
        ]);
        assert_eq!(
            plan(&desired, &observed),
            vec![
                unload("b.service"),
                unload("e.service"),
                load("a.service", "/a"),
                load("b.service", "/b2"),
                Task::Reload,
                stop("c.service"),
                start("a.service"),
                start("d.service"),
            ]
        );
    }

    #[test]
    fn no_reload_without_load_or_unload() {
        let desired = BTreeMap::from([
            (name("a.service"), want(Launched, "/a")),
            (name("b.service"), want(Loaded, "/b")),
        ]);
        let observed = BTreeMap::from([
            (name("a.service"), have("/a", Loaded, "inactive")),
            (name("b.service"), have("/b", Launched, "active")),
        ]);
        assert_eq!(
            plan(&desired, &observed),
            vec![stop("b.service"), start("a.service")]
        );
    }

    #[test]
    fn settle_records_what_was_done() {
        let desired = BTreeMap::from([
            (name("a.service"), want(Launched, "/a")),
            (name("b.service"), want(Launched, "/b")),
            (
                name("c.service"),
                DesiredUnit {
                    file: None,
                    ..want(Launched, "/c2")
                },
            ),
        ]);
        let observed = BTreeMap::from([
            (name("b.service"), have("/b", Inactive, "active")),
            (name("c.service"), have("/c1", Launched, "active")),
            (name("d.service"), have("/d", Launched, "active")),
            (name("e.service"), have("/e", Loaded, "inactive")),
        ]);
        let tasks = plan(&desired, &observed);
        // e's unload failed: it stays as it was.
        let failed = BTreeSet::from([name("e.service")]);
        let managed = settle(&desired, &observed, &tasks, &failed);
        assert_eq!(
            managed,
            BTreeMap::from([
                (
                    name("a.service"),
                    Managed {
                        hash: hash("/a"),
                        job: Launched
                    }
                ),
                // Adopted.
                (
                    name("b.service"),
                    Managed {
                        hash: hash("/b"),
                        job: Launched
                    }
                ),
                // Content unavailable: still the old one.
                (
                    name("c.service"),
                    Managed {
                        hash: hash("/c1"),
                        job: Launched
                    }
                ),
                (
                    name("e.service"),
                    Managed {
                        hash: hash("/e"),
                        job: Loaded
                    }
                ),
            ])
        );
        // A failed load leaves a new unit unmanaged.
        let failed = BTreeSet::from([name("a.service")]);
        assert!(!settle(&desired, &observed, &tasks, &failed).contains_key(&name("a.service")));
    }

    /// Applies `tasks` as a well-behaved systemd would, then what the agent
    /// records with [`settle`], giving the next pass's observed state.
    fn apply(
        desired: &BTreeMap<UnitName, DesiredUnit>,
        observed: &BTreeMap<UnitName, ObservedUnit>,
        tasks: &[Task],
    ) -> BTreeMap<UnitName, ObservedUnit> {
        let mut next = observed.clone();
        for task in tasks {
            match task {
                Task::Unload { name } => {
                    next.remove(name);
                }
                Task::Load { name, file } => {
                    next.insert(
                        name.clone(),
                        ObservedUnit {
                            hash: Some(file.hash()),
                            job: observed.get(name).map_or(Inactive, |o| o.job),
                            load_state: Some("loaded".to_owned()),
                            active_state: Some("inactive".to_owned()),
                        },
                    );
                }
                Task::Reload => {}
                Task::Stop { name } => {
                    let o = next.get_mut(name).expect("stop only for a present unit");
                    o.active_state = Some("inactive".to_owned());
                }
                Task::Start { name } => {
                    let o = next.get_mut(name).expect("start only for a present unit");
                    o.active_state = Some("active".to_owned());
                }
            }
        }
        let managed = settle(desired, observed, tasks, &BTreeSet::new());
        for (name, o) in &mut next {
            o.job = managed.get(name).map_or(Inactive, |m| m.job);
        }
        next
    }

    fn all_desired() -> Vec<Option<DesiredUnit>> {
        let mut out = vec![None];
        for state in [Inactive, Loaded, Launched] {
            for exec in ["/x", "/y"] {
                out.push(Some(want(state, exec)));
                out.push(Some(DesiredUnit {
                    file: None,
                    ..want(state, exec)
                }));
            }
        }
        out
    }

    fn all_observed() -> Vec<Option<ObservedUnit>> {
        let mut out = vec![None];
        for h in [None, Some(hash("/x")), Some(hash("/y"))] {
            for job in [Inactive, Loaded, Launched] {
                for load_state in [None, Some("loaded"), Some("not-found")] {
                    for active in [
                        None,
                        Some("active"),
                        Some("activating"),
                        Some("inactive"),
                        Some("failed"),
                        Some("deactivating"),
                    ] {
                        out.push(Some(ObservedUnit {
                            hash: h,
                            job,
                            load_state: load_state.map(str::to_owned),
                            active_state: active.map(str::to_owned),
                        }));
                    }
                }
            }
        }
        out
    }

    /// Every combination for one unit: applying the plan and planning again
    /// yields nothing, and the unit ends where it should.
    #[test]
    fn converges_in_one_pass() {
        let n = name("u.service");
        for d in all_desired() {
            for o in all_observed() {
                let desired: BTreeMap<_, _> =
                    d.clone().map(|d| (n.clone(), d)).into_iter().collect();
                let observed: BTreeMap<_, _> =
                    o.clone().map(|o| (n.clone(), o)).into_iter().collect();
                let tasks = plan(&desired, &observed);
                let next = apply(&desired, &observed, &tasks);
                let again = plan(&desired, &next);
                assert!(
                    again.is_empty(),
                    "desired {d:?}\nobserved {o:?}\nfirst {tasks:?}\nthen {again:?}"
                );
                // Where it ends (a unit without content may be left alone).
                match d.as_ref().filter(|d| d.state != Inactive) {
                    None => assert!(next.is_empty(), "not desired but {next:?}"),
                    Some(d) if d.file.is_some() => {
                        let got = next.get(&n).expect("a desired unit with content is there");
                        assert_eq!(got.hash, Some(d.hash), "desired {d:?} observed {o:?}");
                        assert_eq!(got.job, d.state, "desired {d:?} observed {o:?}");
                    }
                    Some(_) => {}
                }
            }
        }
    }

    /// A restart (no memory of jobs) over units already where they should be
    /// plans nothing.
    #[test]
    fn restart_touches_nothing() {
        let desired = BTreeMap::from([
            (
                name("a.service"),
                DesiredUnit {
                    file: None,
                    ..want(Launched, "/a")
                },
            ),
            (
                name("b.service"),
                DesiredUnit {
                    file: None,
                    ..want(Loaded, "/b")
                },
            ),
        ]);
        let observed = BTreeMap::from([
            (name("a.service"), have("/a", Inactive, "active")),
            (name("b.service"), have("/b", Inactive, "inactive")),
        ]);
        assert_eq!(plan(&desired, &observed), vec![]);
        let managed = settle(&desired, &observed, &[], &BTreeSet::new());
        assert_eq!(managed[&name("a.service")].job, Launched);
        assert_eq!(managed[&name("b.service")].job, Loaded);
    }

    #[test]
    fn active_states() {
        for s in ["active", "activating", "reloading", "refreshing"] {
            assert!(is_active(Some(s)), "{s}");
        }
        for s in ["inactive", "failed", "deactivating", "maintenance"] {
            assert!(!is_active(Some(s)), "{s}");
        }
        assert!(!is_active(None));
    }
}
