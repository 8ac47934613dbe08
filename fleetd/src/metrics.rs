//! fleetd's metrics, served at `GET /metrics` in the Prometheus text format
//! (version 0.0.4).
//!
//! This module is a leaf: it knows no other fleetd module. Recorders take
//! plain labels (static strings or the small enums below), and each caller
//! maps its own events to them: the engine its passes and decisions, the
//! agent its tasks, the registry's `Metered` decorator
//! (`registry/metered.rs`) its requests. The metrics are process-wide
//! statics, so that each component records with a single call and nothing
//! has to be threaded through constructors.
//!
//! Ours:
//!
//! - the engine: `fleet_engine_reconcile_duration_seconds` and
//!   `fleet_engine_unschedulable_units` ([`engine_pass`], per pass run),
//!   `fleet_engine_decisions_total{decision}` (the decisions written, by
//!   kind: `schedule`, `unschedule`, through [`engine_tasks`]);
//! - the registry: `fleet_registry_requests_total{op,result}` and
//!   `fleet_registry_request_duration_seconds{op}`, every store request by
//!   op ([`RegistryOp`]) and result; `fleet_registry_invalid_values_total{kind}`,
//!   the values in etcd that fleet did not write and skipped, by kind of key
//!   (counted by the registry, which fleetctl's build has too, and passed to
//!   [`render`]);
//! - the agent: `fleet_agent_tasks_total{task,outcome}` ([`agent_task`]);
//! - the cluster gauges `fleet_units{desired_state,current_state}`,
//!   `fleet_unit_states{active_state}`, `fleet_machines` and
//!   `fleet_cluster_scrape_success`, rendered by [`Gauges::cluster`] from a
//!   [`ClusterGauges`] the API asks for at scrape time. Only the engine
//!   leader has them: it computes them from the watched caches it holds
//!   for its term (plus one of `states/`), so a scrape reads nothing from
//!   etcd. Other fleetds export none of the four; the leader exports
//!   `fleet_cluster_scrape_success 0` (and no other cluster gauge) until
//!   its caches are listed. `current_state` is derived as the API derives
//!   it, with the leader's schedule standing in for `targets/`.
//!
//! The original's (coreos/fleet v1.0 `metrics` package), so that existing
//! dashboards keep working; same names, types, label names, values and
//! help texts, fed from the closest events we have:
//!
//! | metric | fed by |
//! |---|---|
//! | `fleet_engine_leader_start_time` (gauge) | [`engine_leader_started`]: the Unix time (seconds) this fleetd last became the engine leader; 0 until then. The original *added* the time at each term (a sum after two terms); we set it. It is not reset when leadership is lost, as in the original. |
//! | `fleet_engine_reconcile_count_total`, `fleet_engine_reconcile_duration_second` (histogram, the Go client's default buckets) | [`engine_round`]: every round of the leader, including those skipped because nothing changed (the original reconciled on every tick, so the rate keeps its meaning; it also counted each round twice, we count once) |
//! | `fleet_engine_reconcile_failure_count_total{type}` | [`engine_reconcile_failures`]: `machine_away` per unit unscheduled because its machine left, `run` per unit unscheduled because its machine can no longer run it, `schedule` per unit that found no machine in a pass (templates excluded) |
//! | `fleet_engine_task_count_total{type}`, `fleet_engine_task_failure_count_total{type}` | [`engine_tasks`]: each decision the leader tries to write, `attemptscheduleunit` (a schedule entry put) or `unscheduleunit` (removed); failures when the write fails |
//! | `fleet_registry_operation_count_total{type}`, `fleet_registry_operation_failed_count_total{type}`, `fleet_registry_operation_duration_second{ops}` (histogram, default buckets) | [`registry_request`]: `get` for a point read, `get_all` for a range or a listing, `set` for a transaction (every write is one); lease requests and watches have no counterpart and are not counted under these names |
//!
//! The original defined the registry families and the reconcile histogram
//! but never registered them, so its `/metrics` never showed them; we
//! export them anyway.
//!
//! Why hand-written: a few families of counters and histograms whose labels
//! are all static strings need a mutex-guarded map and a text renderer,
//! about what a metrics crate would cost to wire up. A std `Mutex` is fine:
//! nothing is awaited while it is held, and each section is a map lookup.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The media type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of our latency buckets: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The Go client's default buckets, which the original's histograms used.
const GO_DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A registry request, as [`registry_request`] records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryOp {
    /// A point read.
    Get,
    /// One page of a range read.
    Range,
    /// A whole listing.
    List,
    /// A transaction.
    Txn,
    /// A lease grant.
    Grant,
    /// A lease refresh.
    KeepAlive,
    /// A lease revocation.
    Revoke,
    /// A watch opened.
    Watch,
}

impl RegistryOp {
    /// Our `op` label.
    fn label(self) -> &'static str {
        match self {
            RegistryOp::Get => "get",
            RegistryOp::Range => "range",
            RegistryOp::List => "list",
            RegistryOp::Txn => "txn",
            RegistryOp::Grant => "grant",
            RegistryOp::KeepAlive => "keep_alive",
            RegistryOp::Revoke => "revoke",
            RegistryOp::Watch => "watch",
        }
    }

    /// The original's operation (`get`, `get_all`, `set`), if it had one.
    fn original(self) -> Option<&'static str> {
        match self {
            RegistryOp::Get => Some("get"),
            RegistryOp::Range | RegistryOp::List => Some("get_all"),
            RegistryOp::Txn => Some("set"),
            RegistryOp::Grant | RegistryOp::KeepAlive | RegistryOp::Revoke | RegistryOp::Watch => {
                None
            }
        }
    }
}

/// What became of an agent task, as [`agent_task`] records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskOutcome {
    /// It succeeded.
    Done,
    /// It failed.
    Failed,
    /// It was not attempted.
    Skipped,
}

impl TaskOutcome {
    fn label(self) -> &'static str {
        match self {
            TaskOutcome::Done => "done",
            TaskOutcome::Failed => "failed",
            TaskOutcome::Skipped => "skipped",
        }
    }
}

/// A kind of engine decision, as [`engine_tasks`] records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineTask {
    /// A unit scheduled to a machine.
    Schedule,
    /// A unit unscheduled from a machine.
    Unschedule,
}

impl EngineTask {
    /// Our `decision` label.
    fn label(self) -> &'static str {
        match self {
            EngineTask::Schedule => "schedule",
            EngineTask::Unschedule => "unschedule",
        }
    }

    /// The original's task `type` (its task type, lowercased).
    fn original(self) -> &'static str {
        match self {
            EngineTask::Schedule => "attemptscheduleunit",
            EngineTask::Unschedule => "unscheduleunit",
        }
    }
}

/// Why a unit was moved or could not be placed, in the original's terms
/// (`fleet_engine_reconcile_failure_count_total{type}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileFailure {
    /// Its machine left the cluster (`machine_away`).
    MachineAway,
    /// Its machine can no longer run it (`run`).
    Run,
    /// No machine could take it (`schedule`).
    Schedule,
}

impl ReconcileFailure {
    fn label(self) -> &'static str {
        match self {
            ReconcileFailure::MachineAway => "machine_away",
            ReconcileFailure::Run => "run",
            ReconcileFailure::Schedule => "schedule",
        }
    }
}

/// A family of samples of type `V` with `N` labels whose values are static
/// strings.
struct Family<V, const N: usize> {
    /// Metric name.
    name: &'static str,
    /// `# HELP` text.
    help: &'static str,
    /// Label names.
    labels: [&'static str; N],
    /// Value of each label set seen so far.
    values: Mutex<BTreeMap<[&'static str; N], V>>,
}

impl<V, const N: usize> Family<V, N> {
    const fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Family {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs `f` on the value of `labels`, made by `init` if new.
    fn update(&self, labels: [&'static str; N], init: impl FnOnce() -> V, f: impl FnOnce(&mut V)) {
        let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        f(values.entry(labels).or_insert_with(init));
    }

    /// The header, then `each` for every label set with its label pairs.
    fn render(
        &self,
        out: &mut String,
        kind: &str,
        mut each: impl FnMut(&mut String, Vec<(&'static str, String)>, &V),
    ) {
        header(out, self.name, self.help, kind);
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        for (labels, value) in values.iter() {
            let pairs = self
                .labels
                .iter()
                .zip(labels)
                .map(|(n, v)| (*n, (*v).to_owned()))
                .collect();
            each(out, pairs, value);
        }
    }
}

/// A family of counters.
struct CounterVec<const N: usize>(Family<u64, N>);

impl<const N: usize> CounterVec<N> {
    const fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        CounterVec(Family::new(name, help, labels))
    }

    /// Adds `n` to the counter of `labels`.
    fn add(&self, labels: [&'static str; N], n: u64) {
        self.0.update(labels, || 0, |v| *v += n);
    }

    fn render(&self, out: &mut String) {
        let name = self.0.name;
        self.0.render(out, "counter", |out, pairs, v| {
            sample(out, name, &pairs, *v as f64);
        });
    }
}

/// One histogram's buckets, sum and count.
struct HistogramData {
    /// Observations at most each bound (not cumulative; summed when
    /// rendered).
    buckets: Vec<u64>,
    /// Sum of the observations, in seconds.
    sum: f64,
    /// Number of observations.
    count: u64,
}

/// A family of latency histograms.
struct HistogramVec<const N: usize> {
    /// The samples.
    family: Family<HistogramData, N>,
    /// Upper bounds of the buckets, in seconds.
    bounds: &'static [f64],
}

impl<const N: usize> HistogramVec<N> {
    const fn new(
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
        bounds: &'static [f64],
    ) -> Self {
        HistogramVec {
            family: Family::new(name, help, labels),
            bounds,
        }
    }

    /// Records one observation for `labels`.
    fn observe(&self, labels: [&'static str; N], took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = self.bounds.iter().position(|b| secs <= *b);
        let init = || HistogramData {
            buckets: vec![0; self.bounds.len()],
            sum: 0.0,
            count: 0,
        };
        self.family.update(labels, init, |data| {
            if let Some(i) = bucket {
                data.buckets[i] += 1;
            }
            data.sum += secs;
            data.count += 1;
        });
    }

    fn render(&self, out: &mut String) {
        let name = self.family.name;
        let bucket = format!("{name}_bucket");
        self.family.render(out, "histogram", |out, base, data| {
            let mut cumulative = 0;
            for (bound, n) in self.bounds.iter().zip(&data.buckets) {
                cumulative += n;
                let mut with_le = base.clone();
                with_le.push(("le", bound.to_string()));
                sample(out, &bucket, &with_le, cumulative as f64);
            }
            let mut inf = base.clone();
            inf.push(("le", "+Inf".to_owned()));
            sample(out, &bucket, &inf, data.count as f64);
            sample(out, &format!("{name}_sum"), &base, data.sum);
            sample(out, &format!("{name}_count"), &base, data.count as f64);
        });
    }
}

/// A gauge or counter without labels.
struct Scalar {
    /// Metric name.
    name: &'static str,
    /// `# HELP` text.
    help: &'static str,
    /// `gauge` or `counter`.
    kind: &'static str,
    /// The value; `None` until first set (and then not rendered).
    value: Mutex<Option<f64>>,
}

impl Scalar {
    /// A gauge, not rendered until set.
    const fn gauge(name: &'static str, help: &'static str) -> Self {
        Scalar {
            name,
            help,
            kind: "gauge",
            value: Mutex::new(None),
        }
    }

    /// A gauge or counter rendered as 0 until changed (as the Go client
    /// renders a registered metric without labels).
    const fn zero(name: &'static str, help: &'static str, kind: &'static str) -> Self {
        Scalar {
            name,
            help,
            kind,
            value: Mutex::new(Some(0.0)),
        }
    }

    fn set(&self, v: f64) {
        *self.value.lock().unwrap_or_else(PoisonError::into_inner) = Some(v);
    }

    fn add(&self, n: f64) {
        let mut value = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        *value = Some(value.unwrap_or_default() + n);
    }

    fn render(&self, out: &mut String) {
        if let Some(v) = *self.value.lock().unwrap_or_else(PoisonError::into_inner) {
            header(out, self.name, self.help, self.kind);
            sample(out, self.name, &[], v);
        }
    }
}

static ENGINE_PASS: HistogramVec<0> = HistogramVec::new(
    "fleet_engine_reconcile_duration_seconds",
    "Time the engine took to build its view and decide, per reconcile pass.",
    [],
    &LATENCY_BUCKETS,
);
static ENGINE_UNSCHEDULABLE: Scalar = Scalar::gauge(
    "fleet_engine_unschedulable_units",
    "Units the engine could not place at its last reconcile pass.",
);
static ENGINE_DECISIONS: CounterVec<1> = CounterVec::new(
    "fleet_engine_decisions_total",
    "Schedule decisions the engine wrote, by kind.",
    ["decision"],
);
static REGISTRY_REQUESTS: CounterVec<2> = CounterVec::new(
    "fleet_registry_requests_total",
    "Requests to the registry's store (etcd), by operation and result.",
    ["op", "result"],
);
static REGISTRY_LATENCY: HistogramVec<1> = HistogramVec::new(
    "fleet_registry_request_duration_seconds",
    "Latency of requests to the registry's store (etcd), by operation.",
    ["op"],
    &LATENCY_BUCKETS,
);
static AGENT_TASKS: CounterVec<2> = CounterVec::new(
    "fleet_agent_tasks_total",
    "Tasks the agent ran on systemd, by task and outcome.",
    ["task", "outcome"],
);

// The original's families: names, help texts and labels as it had them.
static ORIG_LEADER_START: Scalar = Scalar::zero(
    "fleet_engine_leader_start_time",
    "Start time of becoming an engine leader since epoch in seconds.",
    "gauge",
);
static ORIG_TASKS: CounterVec<1> = CounterVec::new(
    "fleet_engine_task_count_total",
    "Counter of engine schedule tasks.",
    ["type"],
);
static ORIG_TASK_FAILURES: CounterVec<1> = CounterVec::new(
    "fleet_engine_task_failure_count_total",
    "Counter of engine schedule task failures.",
    ["type"],
);
static ORIG_RECONCILES: Scalar = Scalar::zero(
    "fleet_engine_reconcile_count_total",
    "Counter of reconcile rounds.",
    "counter",
);
static ORIG_RECONCILE_DURATION: HistogramVec<0> = HistogramVec::new(
    "fleet_engine_reconcile_duration_second",
    "Histogram of time (in seconds) each schedule round takes.",
    [],
    &GO_DEFAULT_BUCKETS,
);
static ORIG_RECONCILE_FAILURES: CounterVec<1> = CounterVec::new(
    "fleet_engine_reconcile_failure_count_total",
    "Counter of scheduling failures.",
    ["type"],
);
static ORIG_REGISTRY_OPS: CounterVec<1> = CounterVec::new(
    "fleet_registry_operation_count_total",
    "Counter of registry operations.",
    ["type"],
);
static ORIG_REGISTRY_DURATION: HistogramVec<1> = HistogramVec::new(
    "fleet_registry_operation_duration_second",
    "Histogram of time (in seconds) each schedule round takes.",
    ["ops"],
    &GO_DEFAULT_BUCKETS,
);
static ORIG_REGISTRY_FAILURES: CounterVec<1> = CounterVec::new(
    "fleet_registry_operation_failed_count_total",
    "Counter of failed registry operations.",
    ["type"],
);

/// Records an engine reconcile pass that ran: how long it took to decide,
/// and how many units it could not place.
pub fn engine_pass(took: Duration, unschedulable: usize) {
    ENGINE_PASS.observe([], took);
    ENGINE_UNSCHEDULABLE.set(unschedulable as f64);
}

/// Records a round of the engine leader (a pass run, or skipped because
/// nothing changed), and how long it took.
pub fn engine_round(took: Duration) {
    ORIG_RECONCILES.add(1.0);
    ORIG_RECONCILE_DURATION.observe([], took);
}

/// Records `n` units moved or left unplaced for `why`.
pub fn engine_reconcile_failures(why: ReconcileFailure, n: u64) {
    if n > 0 {
        ORIG_RECONCILE_FAILURES.add([why.label()], n);
    }
}

/// Records `n` decisions of kind `task` the engine tried to write, and
/// whether the write succeeded.
pub fn engine_tasks(task: EngineTask, n: u64, written: bool) {
    if n == 0 {
        return;
    }
    ORIG_TASKS.add([task.original()], n);
    if written {
        ENGINE_DECISIONS.add([task.label()], n);
    } else {
        ORIG_TASK_FAILURES.add([task.original()], n);
    }
}

/// Records that this fleetd became the engine leader at `at`.
pub fn engine_leader_started(at: SystemTime) {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    ORIG_LEADER_START.set(secs as f64);
}

/// Records one agent task: its verb (`load`, `start`, …) and outcome.
pub fn agent_task(verb: &'static str, outcome: TaskOutcome) {
    AGENT_TASKS.add([verb, outcome.label()], 1);
}

/// Records one registry request.
pub fn registry_request(op: RegistryOp, ok: bool, took: Duration) {
    REGISTRY_REQUESTS.add([op.label(), if ok { "ok" } else { "error" }], 1);
    REGISTRY_LATENCY.observe([op.label()], took);
    if let Some(orig) = op.original() {
        if ok {
            ORIG_REGISTRY_OPS.add([orig], 1);
            ORIG_REGISTRY_DURATION.observe([orig], took);
        } else {
            ORIG_REGISTRY_FAILURES.add([orig], 1);
        }
    }
}

/// Every metric recorded so far, in the Prometheus text format, after the
/// build info; `invalid_values` are the registry's skipped values by kind
/// of key (`fleet_registry_invalid_values_total`).
pub fn render(invalid_values: &BTreeMap<&'static str, u64>) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "fleet_build_info",
        "The fleetd version, as a label.",
        "gauge",
    );
    sample(
        &mut out,
        "fleet_build_info",
        &[("version", crate::VERSION.to_owned())],
        1.0,
    );
    ENGINE_PASS.render(&mut out);
    ENGINE_UNSCHEDULABLE.render(&mut out);
    ENGINE_DECISIONS.render(&mut out);
    REGISTRY_REQUESTS.render(&mut out);
    REGISTRY_LATENCY.render(&mut out);
    render_invalid_values(&mut out, invalid_values);
    AGENT_TASKS.render(&mut out);
    ORIG_LEADER_START.render(&mut out);
    ORIG_TASKS.render(&mut out);
    ORIG_TASK_FAILURES.render(&mut out);
    ORIG_RECONCILES.render(&mut out);
    ORIG_RECONCILE_DURATION.render(&mut out);
    ORIG_RECONCILE_FAILURES.render(&mut out);
    ORIG_REGISTRY_OPS.render(&mut out);
    ORIG_REGISTRY_DURATION.render(&mut out);
    ORIG_REGISTRY_FAILURES.render(&mut out);
    out
}

/// `fleet_registry_invalid_values_total`.
fn render_invalid_values(out: &mut String, counts: &BTreeMap<&'static str, u64>) {
    const NAME: &str = "fleet_registry_invalid_values_total";
    header(
        out,
        NAME,
        "Values in etcd that fleet did not write (undecodable, of the wrong shape, non-UTF-8 keys, stale leader keys), skipped by readers, by kind of key.",
        "counter",
    );
    for (kind, n) in counts {
        sample(out, NAME, &[("kind", (*kind).to_owned())], *n as f64);
    }
}

/// The cluster-wide gauges, as the engine leader computes them from its
/// caches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterGauges {
    /// Units by (desired state, current state).
    pub units: BTreeMap<(String, String), u64>,
    /// Unit states reported by the agents, by systemd active state.
    pub unit_states: BTreeMap<String, u64>,
    /// Machines registered.
    pub machines: u64,
}

/// What this fleetd knows of the cluster-wide gauges at scrape time.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterReading {
    /// Nothing: it does not lead the engine.
    Absent,
    /// It leads, but its caches are not listed yet.
    Pending,
    /// The gauges.
    Ready(ClusterGauges),
}

/// Where the API gets the cluster gauges at scrape time.
pub type ClusterSource = std::sync::Arc<dyn Fn() -> ClusterReading + Send + Sync>;

/// Gauges computed at scrape time, rendered after [`render`]'s metrics.
#[derive(Default)]
pub struct Gauges {
    /// The rendered families.
    out: String,
}

impl Gauges {
    /// Adds a gauge family: one sample per label set.
    pub fn family(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&'static str],
        samples: impl IntoIterator<Item = (Vec<String>, f64)>,
    ) {
        header(&mut self.out, name, help, "gauge");
        for (values, v) in samples {
            let pairs: Vec<_> = labels.iter().copied().zip(values).collect();
            sample(&mut self.out, name, &pairs, v);
        }
    }

    /// Adds the cluster gauges, when this fleetd has them (see the module
    /// doc): `fleet_units`, `fleet_unit_states`, `fleet_machines` and
    /// `fleet_cluster_scrape_success`.
    pub fn cluster(&mut self, reading: ClusterReading) {
        let ok = match reading {
            ClusterReading::Absent => return,
            ClusterReading::Pending => false,
            ClusterReading::Ready(_) => true,
        };
        if let ClusterReading::Ready(g) = reading {
            self.family(
                "fleet_units",
                "Units in the cluster, by desired and current state.",
                &["desired_state", "current_state"],
                g.units
                    .into_iter()
                    .map(|((d, c), n)| (vec![d, c], n as f64)),
            );
            self.family(
                "fleet_unit_states",
                "Unit states reported by the machines' agents, by systemd active state.",
                &["active_state"],
                g.unit_states.into_iter().map(|(a, n)| (vec![a], n as f64)),
            );
            self.family(
                "fleet_machines",
                "Machines registered in the cluster.",
                &[],
                [(Vec::new(), g.machines as f64)],
            );
        }
        self.family(
            "fleet_cluster_scrape_success",
            "Whether the cluster gauges could be computed (the engine leader's caches are listed).",
            &[],
            [(Vec::new(), if ok { 1.0 } else { 0.0 })],
        );
    }

    /// The rendered text.
    pub fn into_text(self) -> String {
        self.out
    }
}

/// `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line: `name{a="x",b="y"} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, String)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h: HistogramVec<1> = HistogramVec::new("t_seconds", "Test.", ["op"], &LATENCY_BUCKETS);
        h.observe(["a"], Duration::from_micros(100));
        h.observe(["a"], Duration::from_millis(20));
        h.observe(["a"], Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.starts_with("# HELP t_seconds Test.\n# TYPE t_seconds histogram\n"));
        for line in [
            "t_seconds_bucket{op=\"a\",le=\"0.0005\"} 1\n",
            "t_seconds_bucket{op=\"a\",le=\"0.01\"} 1\n",
            "t_seconds_bucket{op=\"a\",le=\"0.025\"} 2\n",
            "t_seconds_bucket{op=\"a\",le=\"10\"} 2\n",
            "t_seconds_bucket{op=\"a\",le=\"+Inf\"} 3\n",
            "t_seconds_count{op=\"a\"} 3\n",
        ] {
            assert!(out.contains(line), "{line:?} missing from\n{out}");
        }
    }

    #[test]
    fn invalid_values_render_by_kind() {
        let text = render(&BTreeMap::from([("unit", 1)]));
        assert!(
            text.contains("fleet_registry_invalid_values_total{kind=\"unit\"} "),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut g = Gauges::default();
        g.family("t", "Test.", &["x"], [(vec!["a\"b\\c\nd".to_owned()], 2.0)]);
        assert!(
            g.into_text().ends_with("t{x=\"a\\\"b\\\\c\\nd\"} 2\n"),
            "escaped"
        );
    }

    #[test]
    fn engine_and_agent_metrics_render() {
        engine_pass(Duration::from_millis(3), 2);
        engine_tasks(EngineTask::Schedule, 2, true);
        engine_tasks(EngineTask::Unschedule, 1, true);
        agent_task("start", TaskOutcome::Done);
        agent_task("reload", TaskOutcome::Failed);
        agent_task("stop", TaskOutcome::Skipped);
        let text = render(&BTreeMap::new());
        for line in [
            "fleet_build_info{version=",
            "fleet_engine_reconcile_duration_seconds_bucket{le=\"0.005\"} ",
            "fleet_engine_unschedulable_units ",
            "fleet_engine_decisions_total{decision=\"schedule\"} ",
            "fleet_engine_decisions_total{decision=\"unschedule\"} ",
            "fleet_agent_tasks_total{task=\"start\",outcome=\"done\"} ",
            "fleet_agent_tasks_total{task=\"reload\",outcome=\"failed\"} ",
            "fleet_agent_tasks_total{task=\"stop\",outcome=\"skipped\"} ",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    /// The original's families, with its names, types, help texts, label
    /// names and values, fed by our recorders.
    #[test]
    fn original_metric_names_render() {
        engine_leader_started(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        engine_round(Duration::from_millis(30));
        engine_reconcile_failures(ReconcileFailure::MachineAway, 1);
        engine_reconcile_failures(ReconcileFailure::Run, 1);
        engine_reconcile_failures(ReconcileFailure::Schedule, 2);
        engine_tasks(EngineTask::Schedule, 1, true);
        engine_tasks(EngineTask::Unschedule, 1, false);
        registry_request(RegistryOp::Get, true, Duration::from_millis(1));
        registry_request(RegistryOp::List, true, Duration::from_millis(1));
        registry_request(RegistryOp::Range, false, Duration::from_millis(1));
        registry_request(RegistryOp::Txn, true, Duration::from_millis(1));
        registry_request(RegistryOp::Grant, true, Duration::from_millis(1));
        let text = render(&BTreeMap::new());
        for line in [
            "# HELP fleet_engine_leader_start_time Start time of becoming an engine leader since epoch in seconds.\n# TYPE fleet_engine_leader_start_time gauge\nfleet_engine_leader_start_time 1700000000\n",
            "# HELP fleet_engine_reconcile_count_total Counter of reconcile rounds.\n# TYPE fleet_engine_reconcile_count_total counter\nfleet_engine_reconcile_count_total ",
            "# HELP fleet_engine_reconcile_duration_second Histogram of time (in seconds) each schedule round takes.\n# TYPE fleet_engine_reconcile_duration_second histogram\n",
            "\nfleet_engine_reconcile_duration_second_bucket{le=\"0.05\"} ",
            "\nfleet_engine_reconcile_duration_second_bucket{le=\"5\"} ",
            "\nfleet_engine_reconcile_duration_second_count ",
            "# HELP fleet_engine_reconcile_failure_count_total Counter of scheduling failures.\n# TYPE fleet_engine_reconcile_failure_count_total counter\n",
            "\nfleet_engine_reconcile_failure_count_total{type=\"machine_away\"} ",
            "\nfleet_engine_reconcile_failure_count_total{type=\"run\"} ",
            "\nfleet_engine_reconcile_failure_count_total{type=\"schedule\"} ",
            "# HELP fleet_engine_task_count_total Counter of engine schedule tasks.\n# TYPE fleet_engine_task_count_total counter\n",
            "\nfleet_engine_task_count_total{type=\"attemptscheduleunit\"} ",
            "\nfleet_engine_task_count_total{type=\"unscheduleunit\"} ",
            "# HELP fleet_engine_task_failure_count_total Counter of engine schedule task failures.\n# TYPE fleet_engine_task_failure_count_total counter\n",
            "\nfleet_engine_task_failure_count_total{type=\"unscheduleunit\"} ",
            "# HELP fleet_registry_operation_count_total Counter of registry operations.\n# TYPE fleet_registry_operation_count_total counter\n",
            "\nfleet_registry_operation_count_total{type=\"get\"} ",
            "\nfleet_registry_operation_count_total{type=\"get_all\"} ",
            "\nfleet_registry_operation_count_total{type=\"set\"} ",
            "# HELP fleet_registry_operation_failed_count_total Counter of failed registry operations.\n# TYPE fleet_registry_operation_failed_count_total counter\n",
            "\nfleet_registry_operation_failed_count_total{type=\"get_all\"} ",
            "# HELP fleet_registry_operation_duration_second Histogram of time (in seconds) each schedule round takes.\n# TYPE fleet_registry_operation_duration_second histogram\n",
            "\nfleet_registry_operation_duration_second_bucket{ops=\"get\",le=\"0.005\"} ",
            "\nfleet_registry_operation_duration_second_count{ops=\"set\"} ",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        // Lease requests have no counterpart in the original's operations.
        for name in ["grant", "keep_alive", "revoke", "watch"] {
            assert!(!text.contains(&format!("{{type=\"{name}\"}}")), "{text}");
        }
    }

    #[test]
    fn cluster_gauges_render_only_where_known() {
        let mut g = Gauges::default();
        g.cluster(ClusterReading::Absent);
        assert_eq!(g.into_text(), "");
        let mut g = Gauges::default();
        g.cluster(ClusterReading::Pending);
        let text = g.into_text();
        assert!(
            text.ends_with("\nfleet_cluster_scrape_success 0\n"),
            "{text}"
        );
        assert!(!text.contains("fleet_units"), "{text}");
        let mut g = Gauges::default();
        g.cluster(ClusterReading::Ready(ClusterGauges {
            units: BTreeMap::from([(("launched".to_owned(), "inactive".to_owned()), 2)]),
            unit_states: BTreeMap::from([("active".to_owned(), 1)]),
            machines: 3,
        }));
        let text = g.into_text();
        for line in [
            "\nfleet_units{desired_state=\"launched\",current_state=\"inactive\"} 2\n",
            "\nfleet_unit_states{active_state=\"active\"} 1\n",
            "\nfleet_machines 3\n",
            "\nfleet_cluster_scrape_success 1\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
