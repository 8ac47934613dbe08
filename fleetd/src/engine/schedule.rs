//! The scheduler: from a snapshot of the cluster to the schedule changes
//! that make it right. Pure, synchronous, no I/O.
//!
//! [`decide`] takes a [`ClusterView`] (live machines with their merged
//! metadata, units with their desired state, hash and `[X-Fleet]`
//! requirements, and the current per-machine schedule) and returns the
//! [`Decision`]s that bring the schedule in line, each with a [`Reason`]. It
//! follows the original's reconcile pass (fleet-reference.md §5.2–5.4),
//! adapted to per-machine schedules:
//!
//! 1. **Entries that cannot stay, whatever else runs there**: the unit was
//!    destroyed, is inactive, is a template, changed between global and not,
//!    or its machine went away or no longer satisfies `MachineID` /
//!    `MachineMetadata`. A non-global unit placed twice keeps its first
//!    machine. Surviving entries whose desired state or hash changed are
//!    updated in place.
//! 2. **Global units** get an entry on every machine whose metadata matches
//!    and where nothing conflicts; entries where that stopped being true go.
//!    Global units yield to non-global ones, as the original's agents did.
//! 3. **Placed non-global units**, in name order, must still be allowed by
//!    their machine's other residents: `MachineOf` peers present, no
//!    conflict (the first of two conflicting units in name order moves), not
//!    replaced by a resident (`Replaces`: the replaced unit moves, the
//!    replacing unit stays, §5.3). Removing a unit also removes the units that
//!    follow it (`MachineOf`) from that machine: they move with their peer.
//! 4. **Unplaced units** (not inactive, not global) go to the least-loaded
//!    machine that can run them; load is the number of entries on the
//!    machine, global instances and this pass's decisions included; ties go
//!    to the smaller machine ID. Peers are placed before their followers.
//!    Placing a unit next to units it replaces pushes those away (they are
//!    placed again, elsewhere).
//! 5. Machines that lost a unit in steps 3–4 are offered to the global units
//!    again, and followers of global units that found no machine retry.
//!
//! The result is the difference between the schedule read and the schedule
//! computed, so a unit removed and put back in one pass produces nothing.
//! Removals come first, then puts, each sorted by (unit, machine). Applying
//! the decisions and deciding again yields nothing (convergence), except
//! for cycles of `Replaces` (A replaces B replaces C replaces A), where a
//! unit pushed away once in a pass is not pushed away again in that pass.
//!
//! **Scale** (10,000 machines × 100,000 units; `examples/bench_engine.rs`):
//! machines and units become dense indices once per pass, and each machine's
//! entries a small sorted vector. Machines are grouped by distinct
//! `MachineMetadata` requirement ("classes", at most [`MAX_CLASSES`] kept):
//! membership answers the metadata check without string comparisons, and
//! during placement each class keeps an ordered `(load, machine)` index, so
//! an unconstrained or metadata-constrained unit is placed in O(log machines)
//! unless constraints reject the first candidates (only then does the walk go
//! on). `MachineID` and `MachineOf` units look their few candidates up
//! directly. Each machine keeps the short lists of its residents that have
//! `Conflicts` or `Replaces`, so the reverse checks touch only those. A unit
//! that found no machine is retried only when something that could free one
//! happened (a unit it follows was placed, a unit was pushed away).
//!
//! Deviations from the original, all so that one pass converges: a replaced
//! unit is moved with constraint checks (not to any least-loaded machine),
//! and never placed next to a unit that replaces it; a unit never pushes away
//! a unit it needs there (its `MachineOf` peer, directly or through other
//! peers); `Replaces` never involves global units; templates are never
//! scheduled.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use units::{Requirements, UnitHash, UnitName};

use super::constraints::{self, MachineRef, Refusal, Residents};
use crate::registry::ScheduleChange;
use crate::schema::{MachineId, ScheduledUnit, TargetState};

/// Machine metadata, config metadata merged with dynamic metadata.
pub type Metadata = BTreeMap<String, String>;

/// A live machine as the scheduler sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineView {
    /// Config metadata with dynamic metadata laid over it; what
    /// `MachineMetadata` is matched against.
    pub metadata: Metadata,
}

/// A unit as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitView {
    /// What the user asked for; `inactive` units are not scheduled.
    pub desired_state: TargetState,
    /// The content hash agents must run; a change is propagated to the
    /// unit's entries.
    pub hash: UnitHash,
    /// The `[X-Fleet]` options, parsed once when the unit changed.
    pub requirements: Arc<Requirements>,
}

/// Everything [`decide`] looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Live machines by ID.
    pub machines: BTreeMap<MachineId, MachineView>,
    /// Every unit by name.
    pub units: BTreeMap<UnitName, UnitView>,
    /// The current schedule: per machine (live or not), unit → entry.
    pub schedule: BTreeMap<MachineId, BTreeMap<UnitName, ScheduledUnit>>,
}

impl ClusterView {
    /// Apply decisions to the schedule, as the registry would.
    pub fn apply(&mut self, decisions: &[Decision]) {
        for d in decisions {
            match &d.change {
                ScheduleChange::Put {
                    unit,
                    machine,
                    entry,
                } => {
                    self.schedule
                        .entry(machine.clone())
                        .or_default()
                        .insert(unit.clone(), entry.clone());
                }
                ScheduleChange::Remove { unit, machine } => {
                    if let Some(entries) = self.schedule.get_mut(machine) {
                        entries.remove(unit);
                        if entries.is_empty() {
                            self.schedule.remove(machine);
                        }
                    }
                }
            }
        }
    }

    /// The number of schedule entries on `machine`.
    pub fn load(&self, machine: &MachineId) -> usize {
        self.schedule.get(machine).map_or(0, BTreeMap::len)
    }
}

/// Why a decision was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The unit no longer exists.
    UnitDeleted,
    /// Its desired state is `inactive`.
    Inactive,
    /// The machine is no longer in the cluster.
    MachineGone,
    /// Templates are never scheduled.
    Template,
    /// The unit became global (`true`) or stopped being global (`false`).
    GlobalChanged {
        /// Whether the unit is global now.
        now_global: bool,
    },
    /// A non-global unit was scheduled on several machines; it keeps `kept`.
    Duplicate {
        /// The machine the unit stays on.
        kept: MachineId,
    },
    /// The machine cannot run the unit (any more).
    CannotRun(Refusal),
    /// The entry's desired state or content changed.
    Updated {
        /// The desired state before, if it changed.
        from: Option<TargetState>,
        /// The desired state now.
        to: TargetState,
        /// Whether the content hash changed.
        content: bool,
    },
    /// Placed on the least-loaded eligible machine.
    Placed {
        /// The machine's load before the placement.
        load: u32,
    },
    /// A global unit's instance on an eligible machine.
    Global,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::UnitDeleted => f.write_str("unit was destroyed"),
            Reason::Inactive => f.write_str("target state inactive"),
            Reason::MachineGone => f.write_str("target machine went away"),
            Reason::Template => f.write_str("templates cannot be scheduled"),
            Reason::GlobalChanged { now_global: true } => f.write_str("unit became global"),
            Reason::GlobalChanged { now_global: false } => f.write_str("unit is no longer global"),
            Reason::Duplicate { kept } => write!(f, "unit is also scheduled on {kept}"),
            Reason::CannotRun(refusal) => write!(f, "machine unable to run unit: {refusal}"),
            Reason::Updated { from, to, content } => {
                if let Some(from) = from {
                    write!(f, "desired state {from} -> {to}")?;
                    if *content {
                        f.write_str(", ")?;
                    }
                }
                if *content {
                    f.write_str("content changed")?;
                }
                Ok(())
            }
            Reason::Placed { load } => {
                write!(f, "least-loaded eligible machine ({load} units)")
            }
            Reason::Global => f.write_str("global unit: machine eligible"),
        }
    }
}

/// One schedule change and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What to write.
    pub change: ScheduleChange,
    /// Why, for the log.
    pub reason: Reason,
}

impl Decision {
    /// The unit the decision is about.
    pub fn unit(&self) -> &UnitName {
        match &self.change {
            ScheduleChange::Put { unit, .. } | ScheduleChange::Remove { unit, .. } => unit,
        }
    }

    /// The machine the decision is about.
    pub fn machine(&self) -> &MachineId {
        match &self.change {
            ScheduleChange::Put { machine, .. } | ScheduleChange::Remove { machine, .. } => machine,
        }
    }
}

/// Why a unit that should run has no machine after a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// It is a template.
    Template,
    /// No machine is in the cluster.
    NoMachines,
    /// No machine satisfies `MachineID` / `MachineMetadata`, or no machine
    /// holds every `MachineOf` peer.
    NoCandidate,
    /// A `MachineOf` peer is not scheduled anywhere (or is part of a cycle).
    PeerNotScheduled {
        /// The peer.
        peer: String,
    },
    /// Every candidate refused; the first refusal.
    Refused {
        /// The first candidate tried.
        machine: MachineId,
        /// Why it refused.
        refusal: Refusal,
    },
    /// Every candidate would have pushed away a unit already pushed away in
    /// this pass (a cycle of `Replaces`), or one the unit needs there.
    ReplaceCycle,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::Template => f.write_str("templates cannot be scheduled"),
            Blocked::NoMachines => f.write_str("no machines in the cluster"),
            Blocked::NoCandidate => {
                f.write_str("no machine satisfies MachineID, MachineMetadata and MachineOf")
            }
            Blocked::PeerNotScheduled { peer } => {
                write!(f, "required peer {peer} is not scheduled")
            }
            Blocked::Refused { machine, refusal } => {
                write!(f, "no eligible machine (e.g. {machine}: {refusal})")
            }
            Blocked::ReplaceCycle => f.write_str("cycle of Replaces"),
        }
    }
}

/// A pass's full outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The changes to apply, removals first.
    pub decisions: Vec<Decision>,
    /// Units that should run but found no machine, by name.
    pub unschedulable: BTreeMap<UnitName, Blocked>,
}

/// The schedule changes that bring `view` in line; see the module docs.
pub fn decide(view: &ClusterView) -> Vec<Decision> {
    plan(view).decisions
}

/// [`decide`], plus the units left unschedulable and why.
pub fn plan(view: &ClusterView) -> Plan {
    let mut pass = Pass::new(view);
    pass.load_schedule();
    pass.check_standalone();
    // Step 2 sees every machine as it is after step 1.
    pass.dirty.clear();
    pass.reconcile_globals(None);
    pass.check_residents();
    pass.place_pending();
    // Machines that lost units may now take global instances, which may in
    // turn let blocked followers of global units in. Bounded: each round only
    // adds global instances and places blocked units.
    for _ in 0..4 {
        let dirty = std::mem::take(&mut pass.dirty);
        if dirty.is_empty() || !pass.reconcile_globals(Some(&dirty)) {
            break;
        }
        pass.retry_blocked_followers();
    }
    pass.finish()
}

/// A machine index (dense, in machine-ID order).
type M = u32;
/// A unit index (dense, in unit-name order).
type U = u32;

/// At most this many per-class load indexes are kept; further classes are
/// scanned (every index must be updated when a member's load changes).
const MAX_CLASSES: usize = 256;

/// FNV-1a, for the pass's maps keyed by names and small integers: several
/// times faster than the default SipHash on these short keys, which matters
/// at 10^5–10^6 lookups per pass. Its lack of flood resistance is acceptable:
/// the keys are unit names and machine IDs that already passed the API, and
/// a client able to submit units can load the engine anyway.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// A hash map with [`Fnv`].
type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<Fnv>>;

/// A machine's entries: a vector sorted by unit, cheaper than a tree for the
/// few dozen units a machine holds (built in order, no node allocations).
#[derive(Default)]
struct Entries(Vec<(U, ScheduledUnit)>);

impl Entries {
    fn find(&self, u: U) -> Result<usize, usize> {
        self.0.binary_search_by_key(&u, |(x, _)| *x)
    }

    fn get(&self, u: &U) -> Option<&ScheduledUnit> {
        self.find(*u).ok().map(|i| &self.0[i].1)
    }

    fn contains_key(&self, u: &U) -> bool {
        self.find(*u).is_ok()
    }

    /// Insert or replace; the previous entry.
    fn insert(&mut self, u: U, entry: ScheduledUnit) -> Option<ScheduledUnit> {
        match self.find(u) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, entry)),
            Err(i) => {
                self.0.insert(i, (u, entry));
                None
            }
        }
    }

    fn remove(&mut self, u: &U) -> Option<ScheduledUnit> {
        self.find(*u).ok().map(|i| self.0.remove(i).1)
    }

    fn keys(&self) -> impl Iterator<Item = &U> {
        self.0.iter().map(|(u, _)| u)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// One machine's working state.
#[derive(Default)]
struct MachineState {
    /// The units scheduled on it, with their entries.
    entries: Entries,
    /// Residents with `Conflicts` globs (for the reverse check).
    conflicters: Vec<U>,
    /// Non-global residents with `Replaces` globs.
    replacers: Vec<U>,
}

/// The machines satisfying one `MachineMetadata` requirement.
struct Class {
    /// The members, in machine order.
    members: Vec<M>,
    /// Membership by machine index.
    member: Vec<bool>,
    /// `(load, machine)` of every member, once [`Pass::indexed`]: placement
    /// walks it from the least-loaded member.
    index: BTreeSet<(u32, M)>,
}

/// The working state of one pass.
struct Pass<'v> {
    /// The input.
    view: &'v ClusterView,
    /// Machine IDs by index.
    machine_ids: Vec<&'v MachineId>,
    /// Machine metadata by index.
    machine_meta: Vec<&'v Metadata>,
    /// Index of each machine ID.
    machine_ix: HashMap<&'v str, M>,
    /// Machines by full ID and by 8-character short ID, for `MachineID`.
    by_id_or_short: HashMap<&'v str, Vec<M>>,
    /// Unit names by index.
    unit_names: Vec<&'v UnitName>,
    /// Units by index.
    unit_views: Vec<&'v UnitView>,
    /// Whether each unit is a template (never scheduled).
    templates: Vec<bool>,
    /// Index of each unit name.
    unit_ix: HashMap<&'v str, U>,
    /// For each unit name, the units naming it in `MachineOf`.
    followers: HashMap<&'v str, Vec<U>>,
    /// The working schedule per machine.
    machines: Vec<MachineState>,
    /// The machines each unit is scheduled on (sorted).
    placed: Vec<Vec<M>>,
    /// Entries per machine.
    loads: Vec<u32>,
    /// Per-class load indexes; class 0 is every machine.
    classes: Vec<Class>,
    /// Class of each `MachineMetadata` requirement seen so far.
    class_of: HashMap<&'v BTreeMap<String, Vec<String>>, usize>,
    /// The classes each machine belongs to.
    machine_classes: Vec<Vec<usize>>,
    /// Whether the class indexes are maintained. Off until placement starts,
    /// so the many load changes of steps 1–3 (every global instance) cost
    /// nothing; then built once.
    indexed: bool,
    /// Units pushed away (`Replaces`) in this pass: never pushed away again,
    /// so cycles of `Replaces` end.
    evicted: Vec<bool>,
    /// Non-global units waiting for a machine (step 4).
    pending: BTreeSet<U>,
    /// Why each unplaced unit is blocked.
    blocked: BTreeMap<U, Blocked>,
    /// Each (unit, machine) entry changed in this pass: its entry before the
    /// pass, and the last reason it changed.
    changed: HashMap<(U, M), (Option<ScheduledUnit>, Reason)>,
    /// Machines that lost a non-global unit since the last global pass.
    dirty: BTreeSet<M>,
    /// Removals of entries whose unit or machine is unknown.
    orphans: Vec<Decision>,
}

/// The residents of one machine in the working schedule.
struct Here<'p, 'v> {
    /// The pass.
    pass: &'p Pass<'v>,
    /// The machine.
    m: M,
}

impl Residents for Here<'_, '_> {
    fn contains(&self, unit: &str) -> bool {
        self.pass
            .unit_ix
            .get(unit)
            .is_some_and(|u| self.pass.machines[self.m as usize].entries.contains_key(u))
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Requirements)> {
        self.pass.machines[self.m as usize]
            .entries
            .keys()
            .map(|&u| self.pass.named_reqs(u))
    }

    fn with_conflicts(&self) -> impl Iterator<Item = (&str, &Requirements)> {
        self.pass.machines[self.m as usize]
            .conflicters
            .iter()
            .map(|&u| self.pass.named_reqs(u))
    }

    fn with_replaces(&self) -> impl Iterator<Item = (&str, &Requirements)> {
        self.pass.machines[self.m as usize]
            .replacers
            .iter()
            .map(|&u| self.pass.named_reqs(u))
    }
}

fn ix(i: usize) -> u32 {
    u32::try_from(i).expect("fewer than 2^32 machines and units")
}

/// Each name's index in the order given.
fn positions<'v>(names: impl Iterator<Item = &'v str>) -> HashMap<&'v str, u32> {
    names.enumerate().map(|(i, name)| (name, ix(i))).collect()
}

impl<'v> Pass<'v> {
    fn new(view: &'v ClusterView) -> Self {
        let machine_ids: Vec<&MachineId> = view.machines.keys().collect();
        let machine_meta = view.machines.values().map(|m| &m.metadata).collect();
        let machine_ix = positions(machine_ids.iter().map(|id| id.as_str()));
        let mut by_id_or_short: HashMap<&str, Vec<M>> = HashMap::default();
        for (i, id) in machine_ids.iter().enumerate() {
            by_id_or_short.entry(id.as_str()).or_default().push(ix(i));
            if id.short() != id.as_str() {
                by_id_or_short.entry(id.short()).or_default().push(ix(i));
            }
        }
        let unit_names: Vec<&UnitName> = view.units.keys().collect();
        let unit_views: Vec<&UnitView> = view.units.values().collect();
        let templates = unit_names.iter().map(|n| n.is_template()).collect();
        let unit_ix = positions(unit_names.iter().map(|n| n.as_str()));
        let mut followers: HashMap<&str, Vec<U>> = HashMap::default();
        for (i, u) in unit_views.iter().enumerate() {
            for peer in &u.requirements.machine_of {
                followers.entry(peer.as_str()).or_default().push(ix(i));
            }
        }
        let n_machines = machine_ids.len();
        let n_units = unit_names.len();
        let all = Class {
            members: (0..n_machines).map(ix).collect(),
            member: vec![true; n_machines],
            index: BTreeSet::new(),
        };
        Pass {
            view,
            machine_ids,
            machine_meta,
            machine_ix,
            by_id_or_short,
            unit_names,
            templates,
            unit_views,
            unit_ix,
            followers,
            machines: (0..n_machines).map(|_| MachineState::default()).collect(),
            placed: vec![Vec::new(); n_units],
            loads: vec![0; n_machines],
            classes: vec![all],
            class_of: HashMap::default(),
            machine_classes: vec![vec![0]; n_machines],
            indexed: false,
            evicted: vec![false; n_units],
            pending: BTreeSet::new(),
            blocked: BTreeMap::new(),
            changed: HashMap::default(),
            dirty: BTreeSet::new(),
            orphans: Vec::new(),
        }
    }

    // -- accessors ----------------------------------------------------------

    fn reqs(&self, u: U) -> &'v Requirements {
        &self.unit_views[u as usize].requirements
    }

    fn named_reqs(&self, u: U) -> (&'v str, &'v Requirements) {
        (self.unit_names[u as usize].as_str(), self.reqs(u))
    }

    fn unit(&self, u: U) -> &'v UnitView {
        self.unit_views[u as usize]
    }

    fn is_global(&self, u: U) -> bool {
        self.reqs(u).global
    }

    fn machine_ref(&self, m: M) -> MachineRef<'v> {
        MachineRef {
            id: self.machine_ids[m as usize],
            metadata: self.machine_meta[m as usize],
        }
    }

    fn here(&self, m: M) -> Here<'_, 'v> {
        Here { pass: self, m }
    }

    /// Whether the unit should be running somewhere at all.
    fn wants_placement(&self, u: U) -> bool {
        self.unit(u).desired_state != TargetState::Inactive && !self.templates[u as usize]
    }

    /// The entry the unit should have.
    fn entry_for(&self, u: U) -> ScheduledUnit {
        let unit = self.unit(u);
        ScheduledUnit {
            desired_state: unit.desired_state,
            hash: unit.hash,
            global: unit.requirements.global,
        }
    }

    // -- mutations ----------------------------------------------------------

    fn set_load(&mut self, m: M, load: u32) {
        let old = self.loads[m as usize];
        if self.indexed {
            for &c in &self.machine_classes[m as usize] {
                let index = &mut self.classes[c].index;
                index.remove(&(old, m));
                index.insert((load, m));
            }
        }
        self.loads[m as usize] = load;
    }

    /// Build the class indexes from the current loads and keep them up to
    /// date from now on.
    fn index_loads(&mut self) {
        if self.indexed {
            return;
        }
        for class in &mut self.classes {
            class.index = class
                .members
                .iter()
                .map(|&m| (self.loads[m as usize], m))
                .collect();
        }
        self.indexed = true;
    }

    /// Insert or update an entry.
    fn put(&mut self, u: U, m: M, entry: ScheduledUnit, reason: Reason) {
        let reqs = self.reqs(u);
        let global = reqs.global;
        let state = &mut self.machines[m as usize];
        let before = state.entries.insert(u, entry);
        if before.is_none() {
            if !reqs.conflicts.is_empty() {
                state.conflicters.push(u);
            }
            if !reqs.replaces.is_empty() && !global {
                state.replacers.push(u);
            }
            let placed = &mut self.placed[u as usize];
            if let Err(pos) = placed.binary_search(&m) {
                placed.insert(pos, m);
            }
            self.set_load(m, self.loads[m as usize] + 1);
            // A global unit following this one (`MachineOf`, which the API
            // refuses for global units but older data may have) may now fit.
            let name = self.unit_names[u as usize].as_str();
            if let Some(followers) = self.followers.get(name)
                && followers.iter().any(|&f| self.is_global(f))
            {
                self.dirty.insert(m);
            }
        }
        self.record(u, m, before, reason);
    }

    /// Remember a change of the (u, m) entry: the entry it had before the
    /// pass (on its first change) and the latest reason.
    fn record(&mut self, u: U, m: M, before: Option<ScheduledUnit>, reason: Reason) {
        self.changed
            .entry((u, m))
            .and_modify(|c| c.1 = reason.clone())
            .or_insert((before, reason));
    }

    /// Remove an entry, and with it the entries on the same machine of the
    /// units that follow it (`MachineOf`). Removed non-global units that
    /// should run are queued for placement.
    fn remove(&mut self, u: U, m: M, reason: Reason) {
        let mut work = vec![(u, reason)];
        while let Some((u, reason)) = work.pop() {
            let state = &mut self.machines[m as usize];
            let Some(before) = state.entries.remove(&u) else {
                continue;
            };
            state.conflicters.retain(|&x| x != u);
            state.replacers.retain(|&x| x != u);
            self.placed[u as usize].retain(|&x| x != m);
            self.set_load(m, self.loads[m as usize] - 1);
            self.record(u, m, Some(before), reason);
            if !self.is_global(u) {
                self.dirty.insert(m);
                if self.wants_placement(u) && self.placed[u as usize].is_empty() {
                    self.pending.insert(u);
                }
            }
            let name = self.unit_names[u as usize].as_str();
            if let Some(followers) = self.followers.get(name) {
                for &f in followers {
                    if self.machines[m as usize].entries.contains_key(&f) {
                        let refusal = Refusal::PeerMissing {
                            peer: name.to_owned(),
                        };
                        work.push((f, Reason::CannotRun(refusal)));
                    }
                }
            }
        }
    }

    // -- step 0: read the schedule -------------------------------------------

    fn load_schedule(&mut self) {
        let view = self.view;
        for (machine, entries) in &view.schedule {
            let m = self.machine_ix.get(machine.as_str()).copied();
            for (unit, entry) in entries {
                let u = self.unit_ix.get(unit.as_str()).copied();
                let (Some(m), Some(u)) = (m, u) else {
                    let reason = if m.is_none() {
                        Reason::MachineGone
                    } else {
                        Reason::UnitDeleted
                    };
                    self.orphans.push(Decision {
                        change: ScheduleChange::Remove {
                            unit: unit.clone(),
                            machine: machine.clone(),
                        },
                        reason,
                    });
                    continue;
                };
                let reqs = self.reqs(u);
                let state = &mut self.machines[m as usize];
                state.entries.insert(u, entry.clone());
                if !reqs.conflicts.is_empty() {
                    state.conflicters.push(u);
                }
                if !reqs.replaces.is_empty() && !reqs.global {
                    state.replacers.push(u);
                }
                self.placed[u as usize].push(m);
            }
        }
        for placed in &mut self.placed {
            placed.sort_unstable();
        }
        self.loads = self.machines.iter().map(|s| ix(s.entries.len())).collect();
    }

    // -- step 1: entries that cannot stay whatever the residents -------------

    fn check_standalone(&mut self) {
        for u in 0..ix(self.unit_names.len()) {
            if self.placed[u as usize].is_empty() {
                continue;
            }
            let unit = self.unit(u);
            let reqs = self.reqs(u);
            // Removing (u, m) takes m out of placed[u]; nothing else here
            // changes placed[u].
            let mut i = 0;
            while let Some(&m) = self.placed[u as usize].get(i) {
                i += 1;
                let Some(entry) = self.machines[m as usize].entries.get(&u).cloned() else {
                    continue;
                };
                let reason = if unit.desired_state == TargetState::Inactive {
                    Some(Reason::Inactive)
                } else if self.templates[u as usize] {
                    Some(Reason::Template)
                } else if entry.global != reqs.global {
                    Some(Reason::GlobalChanged {
                        now_global: reqs.global,
                    })
                } else {
                    self.fits(reqs, m).err().map(Reason::CannotRun)
                };
                if let Some(reason) = reason {
                    self.remove(u, m, reason);
                    i -= 1;
                    continue;
                }
                let want = self.entry_for(u);
                if entry != want {
                    let reason = Reason::Updated {
                        from: (entry.desired_state != want.desired_state)
                            .then_some(entry.desired_state),
                        to: want.desired_state,
                        content: entry.hash != want.hash,
                    };
                    self.put(u, m, want, reason);
                }
            }
            if !reqs.global && self.placed[u as usize].len() > 1 {
                let placed = self.placed[u as usize].clone();
                let kept = self.machine_ids[placed[0] as usize].clone();
                for &m in &placed[1..] {
                    self.remove(u, m, Reason::Duplicate { kept: kept.clone() });
                }
            }
        }
    }

    // -- step 2 (and 5): global units ----------------------------------------

    /// Reconcile every global unit on `only` machines (all if `None`).
    /// Returns whether an instance was added.
    fn reconcile_globals(&mut self, only: Option<&BTreeSet<M>>) -> bool {
        let globals: Vec<U> = (0..ix(self.unit_names.len()))
            .filter(|&u| self.is_global(u) && self.wants_placement(u))
            .collect();
        let mut added = false;
        for g in globals {
            let (name, reqs) = self.named_reqs(g);
            let fits =
                |pass: &Self, m: M| constraints::machine_fits(reqs, pass.machine_ref(m)).is_ok();
            // The machines satisfying MachineID/MachineMetadata (step 1 has
            // removed the instances elsewhere), from the class index when
            // there is one.
            let candidates: Vec<M> = match only {
                Some(set) => set.iter().copied().filter(|&m| fits(self, m)).collect(),
                None => match self.class(&reqs.metadata) {
                    Some(c) if reqs.machine_id.is_none() => self.classes[c].members.clone(),
                    _ => (0..ix(self.machine_ids.len()))
                        .filter(|&m| fits(self, m))
                        .collect(),
                },
            };
            for m in candidates {
                let has = self.machines[m as usize].entries.contains_key(&g);
                match (has, constraints::residents_allow(name, reqs, &self.here(m))) {
                    (true, Err(refusal)) => self.remove(g, m, Reason::CannotRun(refusal)),
                    (false, Ok(())) => {
                        self.put(g, m, self.entry_for(g), Reason::Global);
                        added = true;
                    }
                    _ => {}
                }
            }
        }
        added
    }

    // -- step 3: placed non-global units against their residents -------------

    fn check_residents(&mut self) {
        for u in 0..ix(self.unit_names.len()) {
            if self.is_global(u) {
                continue;
            }
            let Some(&m) = self.placed[u as usize].first() else {
                continue;
            };
            let (name, reqs) = self.named_reqs(u);
            if let Err(refusal) = constraints::residents_allow(name, reqs, &self.here(m)) {
                self.remove(u, m, Reason::CannotRun(refusal));
            }
        }
    }

    // -- step 4: placement ---------------------------------------------------

    /// Place every unplaced non-global unit that should run.
    fn place_pending(&mut self) {
        self.index_loads();
        for u in 0..ix(self.unit_names.len()) {
            if !self.is_global(u) && self.placed[u as usize].is_empty() {
                if self.wants_placement(u) {
                    self.pending.insert(u);
                } else if self.unit(u).desired_state != TargetState::Inactive {
                    self.blocked.insert(u, Blocked::Template);
                }
            }
        }
        self.drain_pending();
    }

    /// Place the pending units, peers before their followers.
    fn drain_pending(&mut self) {
        while let Some(&first) = self.pending.first() {
            // Peers first: follow pending peers (stopping at a cycle).
            let mut u = first;
            let mut chain = vec![u];
            while let Some(peer) = self
                .reqs(u)
                .machine_of
                .iter()
                .filter_map(|p| self.unit_ix.get(p.as_str()).copied())
                .find(|p| self.pending.contains(p) && !chain.contains(p))
            {
                chain.push(peer);
                u = peer;
            }
            self.pending.remove(&u);
            if self.placed[u as usize].is_empty() {
                self.place(u);
            }
        }
    }

    /// Retry blocked units that follow a global unit.
    fn retry_blocked_followers(&mut self) {
        let retry: Vec<U> = self
            .blocked
            .keys()
            .copied()
            .filter(|&u| {
                self.reqs(u).machine_of.iter().any(|p| {
                    self.unit_ix
                        .get(p.as_str())
                        .is_some_and(|&pu| self.is_global(pu))
                })
            })
            .collect();
        self.pending.extend(retry);
        self.drain_pending();
    }

    /// Find a machine for `u` and put it there, pushing away the units it
    /// replaces; record why if there is none.
    fn place(&mut self, u: U) {
        self.blocked.remove(&u);
        if self.machine_ids.is_empty() {
            self.blocked.insert(u, Blocked::NoMachines);
            return;
        }
        let reqs = self.reqs(u);
        let mut first_refusal = None;
        let mut cycle = false;
        let chosen = match self.direct_candidates(u) {
            Err(blocked) => {
                self.blocked.insert(u, blocked);
                return;
            }
            Ok(Some(candidates)) => candidates
                .into_iter()
                .find(|&m| self.accepts(u, m, &mut first_refusal, &mut cycle)),
            Ok(None) => {
                let class = self.class(&reqs.metadata);
                match class {
                    Some(c) => self.classes[c]
                        .index
                        .iter()
                        .map(|&(_, m)| m)
                        .find(|&m| self.accepts(u, m, &mut first_refusal, &mut cycle)),
                    None => {
                        let mut candidates: Vec<(u32, M)> = (0..ix(self.machine_ids.len()))
                            .filter(|&m| {
                                constraints::check_metadata(reqs, self.machine_meta[m as usize])
                                    .is_ok()
                            })
                            .map(|m| (self.loads[m as usize], m))
                            .collect();
                        candidates.sort_unstable();
                        candidates
                            .into_iter()
                            .map(|(_, m)| m)
                            .find(|&m| self.accepts(u, m, &mut first_refusal, &mut cycle))
                    }
                }
            }
        };
        let Some(m) = chosen else {
            let blocked = match first_refusal {
                Some((m, refusal)) => Blocked::Refused {
                    machine: self.machine_ids[m as usize].clone(),
                    refusal,
                },
                None if cycle => Blocked::ReplaceCycle,
                None => Blocked::NoCandidate,
            };
            self.blocked.insert(u, blocked);
            return;
        };
        let (name, _) = self.named_reqs(u);
        let evict: Vec<U> = constraints::replaced_residents(name, reqs, &self.here(m))
            .into_iter()
            .filter_map(|n| self.unit_ix.get(n).copied())
            .collect();
        let load = self.loads[m as usize];
        self.put(u, m, self.entry_for(u), Reason::Placed { load });
        // Followers that found no machine may follow it here.
        if let Some(followers) = self.followers.get(name) {
            for &f in followers {
                if self.blocked.remove(&f).is_some() {
                    self.pending.insert(f);
                }
            }
        }
        if evict.is_empty() {
            return;
        }
        for x in evict {
            self.evicted[x as usize] = true;
            let refusal = Refusal::ReplacedBy {
                by: name.to_owned(),
            };
            self.remove(x, m, Reason::CannotRun(refusal));
        }
        // Units refused by what just left may fit now (rare: evictions are
        // bounded by one per unit and pass).
        let retry: Vec<U> = self
            .blocked
            .iter()
            .filter(|(_, b)| matches!(b, Blocked::Refused { .. } | Blocked::ReplaceCycle))
            .map(|(&u, _)| u)
            .collect();
        for u in retry {
            self.blocked.remove(&u);
            self.pending.insert(u);
        }
    }

    /// The few candidates of a `MachineID` or `MachineOf` unit, in
    /// (load, machine) order; `None` for other units.
    fn direct_candidates(&self, u: U) -> Result<Option<Vec<M>>, Blocked> {
        let reqs = self.reqs(u);
        let mut candidates: Vec<M> = if let Some(id) = &reqs.machine_id {
            let mut c = self
                .by_id_or_short
                .get(id.as_str())
                .cloned()
                .unwrap_or_default();
            c.sort_unstable();
            c.dedup();
            c
        } else if let Some((first, rest)) = reqs.machine_of.split_first() {
            let peer_machines = |peer: &String| -> Result<&Vec<M>, Blocked> {
                let not_scheduled = || Blocked::PeerNotScheduled { peer: peer.clone() };
                let &p = self.unit_ix.get(peer.as_str()).ok_or_else(not_scheduled)?;
                let placed = &self.placed[p as usize];
                if placed.is_empty() {
                    return Err(not_scheduled());
                }
                Ok(placed)
            };
            let mut c = peer_machines(first)?.clone();
            for peer in rest {
                let others = peer_machines(peer)?;
                c.retain(|m| others.binary_search(m).is_ok());
            }
            c
        } else {
            return Ok(None);
        };
        candidates.sort_by_key(|&m| (self.loads[m as usize], m));
        Ok(Some(candidates))
    }

    /// Whether `u` may go on `m` now, remembering the first refusal.
    fn accepts(
        &self,
        u: U,
        m: M,
        first_refusal: &mut Option<(M, Refusal)>,
        cycle: &mut bool,
    ) -> bool {
        let (name, reqs) = self.named_reqs(u);
        let here = self.here(m);
        if let Err(refusal) = constraints::able_to_run(name, reqs, self.machine_ref(m), &here) {
            first_refusal.get_or_insert((m, refusal));
            return false;
        }
        let evict: Vec<U> = constraints::replaced_residents(name, reqs, &here)
            .into_iter()
            .filter_map(|n| self.unit_ix.get(n).copied())
            .collect();
        // Never push away a unit already pushed away in this pass, nor one
        // the unit itself needs there (through a chain of `MachineOf`).
        if evict.iter().any(|&x| self.evicted[x as usize]) || self.needs_any(u, m, &evict) {
            *cycle = true;
            return false;
        }
        true
    }

    /// Whether removing `evict` from `m` would take away a unit that `u`
    /// (were it placed there) follows, directly or through other followers.
    fn needs_any(&self, u: U, m: M, evict: &[U]) -> bool {
        let mut stack = evict.to_vec();
        let mut seen = stack.clone();
        while let Some(x) = stack.pop() {
            let Some(followers) = self.followers.get(self.unit_names[x as usize].as_str()) else {
                continue;
            };
            for &f in followers {
                if f == u {
                    return true;
                }
                if self.machines[m as usize].entries.contains_key(&f) && !seen.contains(&f) {
                    seen.push(f);
                    stack.push(f);
                }
            }
        }
        false
    }

    /// `MachineID` and `MachineMetadata` on `m`, answered from the class
    /// membership when there is one (no string comparisons).
    fn fits(&mut self, reqs: &'v Requirements, m: M) -> Result<(), Refusal> {
        if reqs.machine_id.is_none()
            && let Some(c) = self.class(&reqs.metadata)
            && self.classes[c].member[m as usize]
        {
            return Ok(());
        }
        constraints::machine_fits(reqs, self.machine_ref(m))
    }

    /// The load index of the machines satisfying `metadata`, created on
    /// first use; `None` past [`MAX_CLASSES`].
    fn class(&mut self, metadata: &'v BTreeMap<String, Vec<String>>) -> Option<usize> {
        if metadata.is_empty() {
            return Some(0);
        }
        if let Some(&c) = self.class_of.get(metadata) {
            return Some(c);
        }
        if self.classes.len() >= MAX_CLASSES {
            return None;
        }
        let c = self.classes.len();
        let probe = Requirements {
            metadata: metadata.clone(),
            ..Requirements::default()
        };
        let member: Vec<bool> = self
            .machine_meta
            .iter()
            .map(|meta| constraints::check_metadata(&probe, meta).is_ok())
            .collect();
        let mut members = Vec::new();
        for (m, classes) in self.machine_classes.iter_mut().enumerate() {
            if member[m] {
                members.push(ix(m));
                classes.push(c);
            }
        }
        let index = if self.indexed {
            members
                .iter()
                .map(|&m| (self.loads[m as usize], m))
                .collect()
        } else {
            BTreeSet::new()
        };
        self.classes.push(Class {
            members,
            member,
            index,
        });
        self.class_of.insert(metadata, c);
        Some(c)
    }

    // -- output ---------------------------------------------------------------

    fn finish(self) -> Plan {
        let mut removes = Vec::new();
        let mut puts = Vec::new();
        let mut changed = self.changed;
        // Sort the keys only: the values are large.
        let mut keys: Vec<(U, M)> = changed.keys().copied().collect();
        keys.sort_unstable();
        for (u, m) in keys {
            let Some((before, reason)) = changed.remove(&(u, m)) else {
                continue;
            };
            let unit = self.unit_names[u as usize];
            let machine = self.machine_ids[m as usize];
            let after = self.machines[m as usize].entries.get(&u);
            if before.as_ref() == after {
                continue;
            }
            match after {
                Some(entry) => puts.push(Decision {
                    change: ScheduleChange::Put {
                        unit: unit.clone(),
                        machine: machine.clone(),
                        entry: entry.clone(),
                    },
                    reason,
                }),
                None => removes.push(Decision {
                    change: ScheduleChange::Remove {
                        unit: unit.clone(),
                        machine: machine.clone(),
                    },
                    reason,
                }),
            }
        }
        let mut decisions = self.orphans;
        decisions.extend(removes);
        decisions.sort_by(|a, b| (a.unit(), a.machine()).cmp(&(b.unit(), b.machine())));
        decisions.extend(puts);
        let unschedulable = self
            .blocked
            .into_iter()
            .filter(|(u, _)| self.placed[*u as usize].is_empty())
            .map(|(u, b)| (self.unit_names[u as usize].clone(), b))
            .collect();
        Plan {
            decisions,
            unschedulable,
        }
    }
}

#[cfg(test)]
mod tests;
