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
//!
//! The driver does not run that list as one batch: [`operations`] cuts it into
//! one [`Operation`] per unit (its tasks in order, the reload as a barrier
//! between its loads and its starts), which run concurrently and may outlive
//! the pass that planned them (a start that never ends, a stop that takes
//! minutes). [`InFlight`] tracks them across passes, neon's `Sequence` way:
//! a unit whose operation still heads for what is desired gets no second one;
//! one whose desired state changed gets a new operation that supersedes the
//! old (whose result is then stale and dropped); and results change the
//! agent's bookkeeping ([`Managed`]) in one place, [`InFlight::finish`].

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

/// Where an operation takes a unit: what the agent records once it succeeded;
/// `None`: the unit is not to be there.
pub type Goal = Option<Managed>;

/// Where the schedule wants a unit.
pub fn goal_of(desired: Option<&DesiredUnit>) -> Goal {
    desired
        .filter(|d| d.state != TargetState::Inactive)
        .map(|d| Managed {
            hash: d.hash,
            job: d.state,
        })
}

/// One unit's tasks, run in order by one operation of the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The unit.
    pub unit: UnitName,
    /// Its tasks in batch order, without the reload ([`Operation::reload`]).
    pub tasks: Vec<Task>,
    /// Whether a daemon-reload must come between its loads and unloads and
    /// its stops and starts.
    pub reload: bool,
    /// Where it takes the unit; a unit whose operation in flight has the goal
    /// that is desired gets no second one.
    pub goal: Goal,
    /// What the agent records when every task succeeded.
    pub done: Option<Managed>,
    /// What it records when one failed (what was known before).
    pub failed: Option<Managed>,
}

/// The outcome of planning one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The operations to start, in unit order.
    pub operations: Vec<Operation>,
    /// What the agent has taken each unit to: settled afresh for units with
    /// nothing in flight, unchanged for the others (their operations say).
    pub managed: BTreeMap<UnitName, Managed>,
}

/// The operations that take `observed` to `desired`, given what the agent
/// recorded (`managed`, also in [`ObservedUnit::job`]) and where the
/// operations in flight take their units (`in_flight`).
///
/// - A unit whose operation in flight has the desired goal: nothing (it is
///   on its way), and its record is unchanged.
/// - A unit with an operation in flight towards another goal: a new operation
///   planned as if the old one had reached its goal (it got at least as far
///   as issuing its job), which supersedes the old one, even without tasks
///   (so the old one stops, e.g. an unload of a unit scheduled here again).
/// - Any other unit with tasks: an operation; without tasks: settled now.
pub fn operations(
    desired: &BTreeMap<UnitName, DesiredUnit>,
    observed: &BTreeMap<UnitName, ObservedUnit>,
    managed: &BTreeMap<UnitName, Managed>,
    in_flight: &BTreeMap<UnitName, Goal>,
) -> Planned {
    let names: BTreeSet<&UnitName> = desired
        .keys()
        .chain(observed.keys())
        .chain(in_flight.keys())
        .collect();
    let mut planned = Planned {
        operations: Vec::new(),
        managed: BTreeMap::new(),
    };
    for name in names {
        let d = desired.get(name);
        let goal = goal_of(d);
        let busy = in_flight.get(name);
        let keep = |planned: &mut Planned| {
            if let Some(m) = managed.get(name) {
                planned.managed.insert(name.clone(), *m);
            }
        };
        if busy == Some(&goal) {
            keep(&mut planned);
            continue;
        }
        let mut o = observed.get(name).cloned();
        if let (Some(o), Some(busy)) = (o.as_mut(), busy) {
            o.job = busy.map_or(TargetState::Inactive, |g| g.job);
        }
        let mut tasks = Vec::new();
        plan_unit(name, d, o.as_ref(), &mut tasks);
        let one_d: BTreeMap<UnitName, DesiredUnit> =
            d.map(|d| (name.clone(), d.clone())).into_iter().collect();
        let one_o: BTreeMap<UnitName, ObservedUnit> =
            o.map(|o| (name.clone(), o)).into_iter().collect();
        let done = settle(&one_d, &one_o, &tasks, &BTreeSet::new()).remove(name);
        if tasks.is_empty() && busy.is_none() {
            if let Some(m) = done {
                planned.managed.insert(name.clone(), m);
            }
            continue;
        }
        let failed = settle(&one_d, &one_o, &tasks, &BTreeSet::from([name.clone()])).remove(name);
        keep(&mut planned);
        planned.operations.push(Operation {
            unit: name.clone(),
            reload: tasks
                .iter()
                .any(|t| matches!(t, Task::Load { .. } | Task::Unload { .. })),
            tasks,
            goal,
            done,
            failed,
        });
    }
    planned
}

/// Orders the operations of one unit: each gets the next number, and only the
/// latest one's results count (neon's `Sequence`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Sequence(u64);

/// An operation in flight, as the agent tracks it.
#[derive(Clone, Debug, Serialize)]
pub struct Current {
    /// Its number: results carrying another one are stale.
    pub seq: Sequence,
    /// Where it takes the unit.
    pub goal: Goal,
    /// What to record when it succeeds.
    #[serde(skip)]
    pub done: Option<Managed>,
    /// What to record when it fails.
    #[serde(skip)]
    pub failed: Option<Managed>,
    /// Its tasks, for debug dumps.
    pub tasks: Vec<&'static str>,
}

/// The operations in flight, at most one current per unit.
#[derive(Clone, Debug, Default, Serialize)]
pub struct InFlight {
    /// The current operation of each unit that has one.
    pub units: BTreeMap<UnitName, Current>,
    /// The last sequence number handed out.
    last: Sequence,
}

impl InFlight {
    /// Where each unit's operation in flight takes it, for [`operations`].
    pub fn goals(&self) -> BTreeMap<UnitName, Goal> {
        self.units
            .iter()
            .map(|(name, c)| (name.clone(), c.goal))
            .collect()
    }

    /// Records `op` as its unit's current operation: its number, and the
    /// number of the operation it supersedes, if any.
    pub fn begin(&mut self, op: &Operation) -> (Sequence, Option<Sequence>) {
        self.last.0 += 1;
        let seq = self.last;
        let old = self.units.insert(
            op.unit.clone(),
            Current {
                seq,
                goal: op.goal,
                done: op.done,
                failed: op.failed,
                tasks: op.tasks.iter().map(Task::verb).collect(),
            },
        );
        (seq, old.map(|c| c.seq))
    }

    /// The operation `seq` of `unit` has its content in place and is issuing
    /// its job: the unit is recorded at the goal (as the original agent did
    /// once it had asked systemd). False (nothing changed) if stale.
    pub fn progress(
        &self,
        managed: &mut BTreeMap<UnitName, Managed>,
        unit: &UnitName,
        seq: Sequence,
    ) -> bool {
        let Some(current) = self.units.get(unit).filter(|c| c.seq == seq) else {
            return false;
        };
        if let Some(m) = current.done {
            managed.insert(unit.clone(), m);
        }
        true
    }

    /// The operation `seq` of `unit` ended (`ok`: every task succeeded): it is
    /// no longer in flight, and the unit is recorded where it got. False
    /// (nothing changed) if a newer operation superseded it.
    pub fn finish(
        &mut self,
        managed: &mut BTreeMap<UnitName, Managed>,
        unit: &UnitName,
        seq: Sequence,
        ok: bool,
    ) -> bool {
        let Some(current) = self.units.remove(unit) else {
            return false;
        };
        if current.seq != seq {
            // Stale: put the newer one back.
            self.units.insert(unit.clone(), current);
            return false;
        }
        match if ok { current.done } else { current.failed } {
            Some(m) => managed.insert(unit.clone(), m),
            None => managed.remove(unit),
        };
        true
    }
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
    use crate::agent::tests::{name, service as file};
    use TargetState::{Inactive, Launched, Loaded};

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

    fn managed(exec: &str, job: TargetState) -> Managed {
        Managed {
            hash: hash(exec),
            job,
        }
    }

    /// One row: what it checks, desired, observed, recorded, in flight;
    /// expected operations as (tasks, superseding?) and the records after.
    type OpCase = (
        &'static str,
        BTreeMap<UnitName, DesiredUnit>,
        BTreeMap<UnitName, ObservedUnit>,
        BTreeMap<UnitName, Managed>,
        BTreeMap<UnitName, Goal>,
        Vec<Vec<Task>>,
        BTreeMap<UnitName, Managed>,
    );

    #[test]
    fn operations_table() {
        let a = "foo.service";
        let hanging = || have("/x", Inactive, "activating");
        let cases: Vec<OpCase> = vec![
            (
                "a new unit: one operation, nothing recorded yet",
                one(a, want(Launched, "/x")),
                none(),
                none(),
                none(),
                vec![vec![load(a, "/x"), start(a)]],
                none(),
            ),
            (
                "its operation in flight: no second one",
                one(a, want(Launched, "/x")),
                one(a, hanging()),
                none(),
                one(a, Some(managed("/x", Launched))),
                vec![],
                none(),
            ),
            (
                "in flight and already recorded: the record stays",
                one(a, want(Launched, "/x")),
                one(a, hanging()),
                one(a, managed("/x", Launched)),
                one(a, Some(managed("/x", Launched))),
                vec![],
                one(a, managed("/x", Launched)),
            ),
            (
                "a hanging start, now desired loaded: a stop supersedes it",
                one(a, want(Loaded, "/x")),
                one(a, hanging()),
                none(),
                one(a, Some(managed("/x", Launched))),
                vec![vec![stop(a)]],
                none(),
            ),
            (
                "a hanging start, now unscheduled: an unload supersedes it",
                none(),
                one(a, hanging()),
                one(a, managed("/x", Launched)),
                one(a, Some(managed("/x", Launched))),
                vec![vec![unload(a)]],
                one(a, managed("/x", Launched)),
            ),
            (
                "a slow unload, scheduled here again: superseded without tasks",
                one(a, want(Loaded, "/x")),
                one(a, have("/x", Inactive, "deactivating")),
                one(a, managed("/x", Loaded)),
                one(a, None),
                vec![vec![]],
                one(a, managed("/x", Loaded)),
            ),
            (
                "a slow stop, launched again: a start supersedes it",
                one(a, want(Launched, "/x")),
                one(a, have("/x", Launched, "deactivating")),
                one(a, managed("/x", Launched)),
                one(a, Some(managed("/x", Loaded))),
                vec![vec![start(a)]],
                one(a, managed("/x", Launched)),
            ),
            (
                "nothing in flight, nothing to do: settled (adopted)",
                one(a, want(Launched, "/x")),
                one(a, have("/x", Inactive, "active")),
                none(),
                none(),
                vec![],
                one(a, managed("/x", Launched)),
            ),
        ];
        for (what, desired, observed, recorded, in_flight, expected, after) in cases {
            let planned = operations(&desired, &observed, &recorded, &in_flight);
            let got: Vec<Vec<Task>> = planned.operations.iter().map(|o| o.tasks.clone()).collect();
            assert_eq!(got, expected, "{what}");
            assert_eq!(planned.managed, after, "{what}");
            for op in &planned.operations {
                assert_eq!(op.goal, goal_of(desired.get(&op.unit)), "{what}");
                assert_eq!(
                    op.reload,
                    op.tasks
                        .iter()
                        .any(|t| matches!(t, Task::Load { .. } | Task::Unload { .. })),
                    "{what}"
                );
            }
        }
    }

    /// Without anything in flight, the operations hold exactly `plan`'s
    /// tasks (less the reload), unit by unit, and settle as it does.
    #[test]
    fn operations_cut_the_plan_by_unit() {
        let n = name("u.service");
        for d in all_desired() {
            for o in all_observed() {
                let desired: BTreeMap<_, _> =
                    d.clone().map(|d| (n.clone(), d)).into_iter().collect();
                let observed: BTreeMap<_, _> =
                    o.clone().map(|o| (n.clone(), o)).into_iter().collect();
                let tasks = plan(&desired, &observed);
                let planned = operations(&desired, &observed, &BTreeMap::new(), &BTreeMap::new());
                let cut: Vec<Task> = planned
                    .operations
                    .iter()
                    .flat_map(|o| o.tasks.clone())
                    .collect();
                let without_reload: Vec<Task> = tasks
                    .iter()
                    .filter(|t| **t != Task::Reload)
                    .cloned()
                    .collect();
                assert_eq!(cut, without_reload, "desired {d:?} observed {o:?}");
                let settled = settle(&desired, &observed, &tasks, &BTreeSet::new());
                match planned.operations.first() {
                    Some(op) => assert_eq!(op.done, settled.get(&n).copied()),
                    None => assert_eq!(planned.managed, settled),
                }
            }
        }
    }

    #[test]
    fn in_flight_keeps_the_latest_operation_and_drops_stale_results() {
        let a = name("a.service");
        let op = |tasks: Vec<Task>, goal: Goal, done: Option<Managed>| Operation {
            unit: a.clone(),
            reload: false,
            tasks,
            goal,
            done,
            failed: None,
        };
        let mut in_flight = InFlight::default();
        let mut managed = BTreeMap::new();
        let launched = Some(managed_of("/x", Launched));
        let (first, superseded) =
            in_flight.begin(&op(vec![start("a.service")], launched, launched));
        assert_eq!(superseded, None);
        assert_eq!(in_flight.goals(), BTreeMap::from([(a.clone(), launched)]));
        // Content in place, job issued: recorded at the goal.
        assert!(in_flight.progress(&mut managed, &a, first));
        assert_eq!(managed.get(&a).copied(), launched);

        let loaded = Some(managed_of("/x", Loaded));
        let (second, superseded) = in_flight.begin(&op(vec![stop("a.service")], loaded, loaded));
        assert_eq!(superseded, Some(first));
        assert!(second > first);
        // The old operation's result is stale.
        assert!(!in_flight.progress(&mut managed, &a, first));
        assert!(!in_flight.finish(&mut managed, &a, first, true));
        assert_eq!(managed.get(&a).copied(), launched);
        assert_eq!(in_flight.goals(), BTreeMap::from([(a.clone(), loaded)]));
        // The current one counts, once.
        assert!(in_flight.finish(&mut managed, &a, second, true));
        assert_eq!(managed.get(&a).copied(), loaded);
        assert!(in_flight.goals().is_empty());
        assert!(!in_flight.finish(&mut managed, &a, second, true));

        // A failed operation records what it says for failure.
        let (third, _) = in_flight.begin(&op(vec![unload("a.service")], None, None));
        assert!(in_flight.finish(&mut managed, &a, third, false));
        assert_eq!(managed.get(&a).copied(), None);
    }

    fn managed_of(exec: &str, job: TargetState) -> Managed {
        managed(exec, job)
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
