//! fleetd's metrics, served at `GET /metrics` in the Prometheus text format
//! (version 0.0.4).
//!
//! The few metrics fleetd keeps are process-wide statics, so that each
//! component records with a single call and nothing has to be threaded
//! through constructors:
//!
//! - the engine: [`engine_pass`] (how long each reconcile pass took to
//!   decide, how many units it could not place) and [`engine_applied`] (the
//!   decisions written, by kind);
//! - the registry: every [`Kv`] request, counted and timed by op and result,
//!   through the [`Metered`] wrapper the daemon puts around its store; and
//!   `fleet_registry_invalid_values_total{kind}`, the values in etcd that
//!   fleet did not write and skipped, by kind of key (counted by
//!   [`crate::registry::invalid`], which fleetctl's build has too);
//! - the agent: [`agent_tasks`], each task of a batch by kind and outcome.
//!
//! Gauges of cluster state (units by desired and current state, unit states
//! by systemd active state, machines) are not kept here: the API computes
//! them from the registry at scrape time and renders them with [`Gauges`].
//!
//! Why hand-written: five families of counters and histograms whose labels
//! are all static strings need a mutex-guarded map and a text renderer,
//! about what a metrics crate would cost to wire up. A std `Mutex` is fine:
//! nothing is awaited while it is held, and each section is a map lookup.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::agent::{Outcome, Report};
use crate::engine::Decision;
use crate::registry::{
    KeyValue, Kv, LeaseId, RangePage, Result, Revision, ScheduleChange, Txn, TxnResponse,
    WatchStream,
};

/// The media type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the latency buckets: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A family of counters with `N` labels whose values are static strings.
struct CounterVec<const N: usize> {
    /// Metric name.
    name: &'static str,
    /// `# HELP` text.
    help: &'static str,
    /// Label names.
    labels: [&'static str; N],
    /// Value of each label set seen so far.
    values: Mutex<BTreeMap<[&'static str; N], u64>>,
}

impl<const N: usize> CounterVec<N> {
    const fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        CounterVec {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `n` to the counter of `labels`.
    fn add(&self, labels: [&'static str; N], n: u64) {
        let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        *values.entry(labels).or_default() += n;
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        for (labels, value) in values.iter() {
            sample(out, self.name, &pairs(&self.labels, labels), *value as f64);
        }
    }
}

/// One histogram's buckets, sum and count.
#[derive(Default)]
struct HistogramData {
    /// Observations at most each bound of [`LATENCY_BUCKETS`] (not
    /// cumulative; summed when rendered).
    buckets: [u64; LATENCY_BUCKETS.len()],
    /// Sum of the observations, in seconds.
    sum: f64,
    /// Number of observations.
    count: u64,
}

/// A family of latency histograms with `N` static-string labels.
struct HistogramVec<const N: usize> {
    /// Metric name.
    name: &'static str,
    /// `# HELP` text.
    help: &'static str,
    /// Label names.
    labels: [&'static str; N],
    /// Data of each label set seen so far.
    values: Mutex<BTreeMap<[&'static str; N], HistogramData>>,
}

impl<const N: usize> HistogramVec<N> {
    const fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        HistogramVec {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one observation for `labels`.
    fn observe(&self, labels: [&'static str; N], took: Duration) {
        let secs = took.as_secs_f64();
        let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        let data = values.entry(labels).or_default();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            data.buckets[i] += 1;
        }
        data.sum += secs;
        data.count += 1;
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = format!("{}_bucket", self.name);
        for (labels, data) in values.iter() {
            let base = pairs(&self.labels, labels);
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BUCKETS.iter().zip(data.buckets) {
                cumulative += n;
                let mut with_le = base.clone();
                with_le.push(("le", bound.to_string()));
                sample(out, &bucket, &with_le, cumulative as f64);
            }
            let mut inf = base.clone();
            inf.push(("le", "+Inf".to_owned()));
            sample(out, &bucket, &inf, data.count as f64);
            sample(out, &format!("{}_sum", self.name), &base, data.sum);
            sample(
                out,
                &format!("{}_count", self.name),
                &base,
                data.count as f64,
            );
        }
    }
}

/// A gauge without labels.
struct Gauge {
    /// Metric name.
    name: &'static str,
    /// `# HELP` text.
    help: &'static str,
    /// The value; `None` until first set (and then not rendered).
    value: Mutex<Option<f64>>,
}

impl Gauge {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Gauge {
            name,
            help,
            value: Mutex::new(None),
        }
    }

    fn set(&self, v: f64) {
        *self.value.lock().unwrap_or_else(PoisonError::into_inner) = Some(v);
    }

    fn render(&self, out: &mut String) {
        if let Some(v) = *self.value.lock().unwrap_or_else(PoisonError::into_inner) {
            header(out, self.name, self.help, "gauge");
            sample(out, self.name, &[], v);
        }
    }
}

static ENGINE_PASS: HistogramVec<0> = HistogramVec::new(
    "fleet_engine_reconcile_duration_seconds",
    "Time the engine took to build its view and decide, per reconcile pass.",
    [],
);
static ENGINE_UNSCHEDULABLE: Gauge = Gauge::new(
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
);
static AGENT_TASKS: CounterVec<2> = CounterVec::new(
    "fleet_agent_tasks_total",
    "Tasks the agent ran on systemd, by task and outcome.",
    ["task", "outcome"],
);

/// Records an engine reconcile pass: how long it took to decide, and how
/// many units it could not place.
pub fn engine_pass(took: Duration, unschedulable: usize) {
    ENGINE_PASS.observe([], took);
    ENGINE_UNSCHEDULABLE.set(unschedulable as f64);
}

/// Records decisions the engine wrote, by kind: a unit scheduled to a
/// machine, or unscheduled from one.
pub fn engine_applied(decisions: &[Decision]) {
    let (mut put, mut removed) = (0, 0);
    for d in decisions {
        if matches!(d.change, ScheduleChange::Put { .. }) {
            put += 1;
        } else {
            removed += 1;
        }
    }
    if put > 0 {
        ENGINE_DECISIONS.add(["schedule"], put);
    }
    if removed > 0 {
        ENGINE_DECISIONS.add(["unschedule"], removed);
    }
}

/// Records the tasks of an agent batch: each task's verb (`load`, `start`,
/// …) and outcome (`done`, `failed`, `skipped`).
pub fn agent_tasks(report: &Report) {
    for executed in &report.executed {
        let outcome = match executed.outcome {
            Outcome::Done { .. } => "done",
            Outcome::Failed { .. } => "failed",
            Outcome::Skipped => "skipped",
        };
        AGENT_TASKS.add([executed.task.verb(), outcome], 1);
    }
}

/// Records one registry request.
fn registry_request(op: &'static str, ok: bool, took: Duration) {
    REGISTRY_REQUESTS.add([op, if ok { "ok" } else { "error" }], 1);
    REGISTRY_LATENCY.observe([op], took);
}

/// Every metric recorded so far, in the Prometheus text format, after the
/// build info.
pub fn render() -> String {
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
    render_invalid_values(&mut out);
    AGENT_TASKS.render(&mut out);
    out
}

/// `fleet_registry_invalid_values_total`, from the registry's counts.
fn render_invalid_values(out: &mut String) {
    const NAME: &str = "fleet_registry_invalid_values_total";
    header(
        out,
        NAME,
        "Values in etcd that fleet did not write (undecodable, of the wrong shape, non-UTF-8 keys, stale leader keys), skipped by readers, by kind of key.",
        "counter",
    );
    for (kind, n) in crate::registry::invalid::counts() {
        sample(out, NAME, &[("kind", kind.to_owned())], n as f64);
    }
}

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

/// Label names zipped with their values.
fn pairs<const N: usize>(
    names: &[&'static str; N],
    values: &[&'static str; N],
) -> Vec<(&'static str, String)> {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| (*n, (*v).to_owned()))
        .collect()
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

/// A [`Kv`] that counts and times every request to the store under it, by
/// operation (`get`, `range`, `list`, `txn`, `grant`, `keep_alive`,
/// `revoke`, `watch`) and result. The events a watch delivers are not
/// requests and are not counted.
#[derive(Clone, Debug)]
pub struct Metered<K> {
    /// The store.
    inner: K,
}

impl<K: Kv> Metered<K> {
    /// Meters `inner`.
    pub fn new(inner: K) -> Self {
        Metered { inner }
    }

    /// The store under the meter.
    pub fn inner(&self) -> &K {
        &self.inner
    }
}

/// Runs one request, recording it.
///
/// The request's future is boxed by the caller: a pointer instead of the
/// store's (large, in debug builds) request future keeps the wrapper from
/// growing every caller's future, and the allocation is nothing next to a
/// network round trip.
async fn metered<T>(
    op: &'static str,
    request: Pin<Box<dyn Future<Output = Result<T>> + Send + '_>>,
) -> Result<T> {
    let started = Instant::now();
    let result = request.await;
    registry_request(op, result.is_ok(), started.elapsed());
    result
}

impl<K: Kv> Kv for Metered<K> {
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)> {
        metered("get", Box::pin(self.inner.get(key))).await
    }

    async fn range(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        at: Option<Revision>,
    ) -> Result<RangePage> {
        metered(
            "range",
            Box::pin(self.inner.range(prefix, after, limit, at)),
        )
        .await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        metered("list", Box::pin(self.inner.list(prefix))).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        metered("txn", Box::pin(self.inner.txn(txn))).await
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        metered("grant", Box::pin(self.inner.grant(ttl))).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        metered("keep_alive", Box::pin(self.inner.keep_alive(lease))).await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        metered("revoke", Box::pin(self.inner.revoke(lease))).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        metered("watch", Box::pin(self.inner.watch(prefix, from))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Executed, Task};
    use crate::registry::MemKv;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h: HistogramVec<1> = HistogramVec::new("t_seconds", "Test.", ["op"]);
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
        crate::registry::invalid::skipped("unit", "/metrics-test/units/x", 1, &"garbage");
        let text = render();
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

    #[tokio::test]
    async fn metered_store_counts_requests_by_op_and_result() {
        let kv = Metered::new(MemKv::new());
        kv.get("/metrics-test/a").await.unwrap();
        kv.inner().fail_next(1);
        assert!(kv.list("/metrics-test/").await.is_err());
        let text = render();
        for line in [
            "fleet_registry_requests_total{op=\"get\",result=\"ok\"} ",
            "fleet_registry_requests_total{op=\"list\",result=\"error\"} ",
            "fleet_registry_request_duration_seconds_count{op=\"get\"} ",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn engine_and_agent_metrics_render() {
        engine_pass(Duration::from_millis(3), 2);
        let (unit, machine): (units::UnitName, crate::schema::MachineId) =
            ("m.service".parse().unwrap(), "m1".parse().unwrap());
        let put = Decision {
            change: ScheduleChange::Put {
                unit: unit.clone(),
                machine: machine.clone(),
                entry: crate::schema::ScheduledUnit {
                    desired_state: crate::schema::TargetState::Launched,
                    hash: units::UnitHash::default(),
                    global: false,
                },
            },
            reason: crate::engine::Reason::Inactive,
        };
        let removed = Decision {
            change: ScheduleChange::Remove { unit, machine },
            reason: crate::engine::Reason::Inactive,
        };
        engine_applied(&[put.clone(), put, removed]);
        let unit: units::UnitName = "m.service".parse().unwrap();
        let report = Report {
            executed: vec![
                Executed {
                    task: Task::Start { name: unit.clone() },
                    outcome: Outcome::Done { job: None },
                },
                Executed {
                    task: Task::Reload,
                    outcome: Outcome::Failed { error: "x".into() },
                },
                Executed {
                    task: Task::Stop { name: unit },
                    outcome: Outcome::Skipped,
                },
            ],
        };
        agent_tasks(&report);
        let text = render();
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
}
