//! Runs a batch of [`Task`]s on a [`SystemdManager`].
//!
//! Unlike the original, whose batch stopped at the first error, a failure only
//! stops what depends on it: the later tasks of the same unit (no start after
//! a failed load, no unload after a failed stop), and, when the batch's reload
//! fails, the starts of the units loaded in it (systemd does not know them
//! yet). Every other unit's tasks still run. Each failure is logged here, once,
//! and recorded in the [`Report`], which the agent uses for its bookkeeping.

use std::collections::BTreeSet;

use serde::Serialize;
use systemd::{JobResult, SystemdManager};
use tracing::{Instrument, info, info_span, warn};
use units::UnitName;

use super::error_chain;
use super::plan::Task;

/// What became of one task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// It succeeded; for a start, `job` is how systemd's job ended (a unit
    /// that fails to start is systemd's business, reported in its state).
    Done {
        /// The job result of a start or stop.
        #[serde(skip_serializing_if = "Option::is_none")]
        job: Option<JobResult>,
    },
    /// It failed.
    Failed {
        /// The error, with its causes.
        error: String,
    },
    /// It was not attempted because something it depends on failed.
    Skipped,
}

/// One task and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct Executed {
    /// The task.
    #[serde(flatten)]
    pub task: Task,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What a batch did, task by task, in order.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Every task of the batch.
    pub executed: Vec<Executed>,
}

impl Report {
    /// Units with a task that failed or was skipped.
    pub fn failed_units(&self) -> BTreeSet<UnitName> {
        self.executed
            .iter()
            .filter(|e| !matches!(e.outcome, Outcome::Done { .. }))
            .filter_map(|e| e.task.unit().cloned())
            .collect()
    }

    /// Number of tasks that did not succeed.
    pub fn failures(&self) -> usize {
        self.executed
            .iter()
            .filter(|e| !matches!(e.outcome, Outcome::Done { .. }))
            .count()
    }
}

/// Runs `tasks` one at a time, in order (as [`super::plan::plan`] sorted them).
pub async fn execute<S: SystemdManager>(systemd: &S, tasks: Vec<Task>) -> Report {
    let mut report = Report::default();
    // Units whose later tasks must not run.
    let mut broken: BTreeSet<UnitName> = BTreeSet::new();
    // Units loaded in this batch, which systemd sees only after the reload.
    let mut loaded: BTreeSet<UnitName> = BTreeSet::new();
    for task in tasks {
        if task.unit().is_some_and(|u| broken.contains(u)) {
            report.executed.push(Executed {
                task,
                outcome: Outcome::Skipped,
            });
            continue;
        }
        let span = match task.unit() {
            Some(unit) => info_span!("task", %unit, task = task.verb()),
            None => info_span!("task", task = task.verb()),
        };
        let outcome = run(systemd, &task).instrument(span).await;
        if let Outcome::Failed { .. } = outcome {
            match task.unit() {
                Some(unit) => {
                    broken.insert(unit.clone());
                }
                // Without the reload, the units loaded in this batch cannot
                // be started.
                None => broken.append(&mut loaded),
            }
        } else if let Task::Load { name, .. } = &task {
            loaded.insert(name.clone());
        }
        report.executed.push(Executed { task, outcome });
    }
    crate::metrics::agent_tasks(&report);
    report
}

/// Runs one task, logging what it did or why it failed.
async fn run<S: SystemdManager>(systemd: &S, task: &Task) -> Outcome {
    let result = match task {
        Task::Unload { name } => unload(systemd, name).await,
        Task::Load { name, file } => systemd
            .load(name.as_str(), file)
            .await
            .map(|()| None)
            .map_err(|e| error_chain(&e)),
        Task::Reload => systemd
            .reload()
            .await
            .map(|()| None)
            .map_err(|e| error_chain(&e)),
        Task::Stop { name } => match systemd.stop(name.as_str()).await {
            Ok(JobResult::Done) => Ok(Some(JobResult::Done)),
            // A unit systemd does not know is not running.
            Err(e) if e.is_no_such_unit() => Ok(None),
            Ok(other) => Err(format!("stop job ended {other}")),
            Err(e) => Err(error_chain(&e)),
        },
        Task::Start { name } => match systemd.start(name.as_str()).await {
            Ok(JobResult::Done) => Ok(Some(JobResult::Done)),
            Ok(other) => {
                warn!(result = %other, "start job did not succeed");
                Ok(Some(other))
            }
            Err(e) => Err(error_chain(&e)),
        },
    };
    match result {
        Ok(job) => {
            info!("done");
            Outcome::Done { job }
        }
        Err(error) => {
            warn!(%error, "failed");
            Outcome::Failed { error }
        }
    }
}

/// Stops the unit and, only once it is stopped, disables it and removes its
/// file (so a unit that would not stop keeps its file and is retried).
async fn unload<S: SystemdManager>(
    systemd: &S,
    name: &UnitName,
) -> Result<Option<JobResult>, String> {
    match systemd.stop(name.as_str()).await {
        Ok(JobResult::Done) => {}
        Err(e) if e.is_no_such_unit() => {}
        Ok(other) => return Err(format!("stop job ended {other}; keeping the unit loaded")),
        Err(e) => return Err(format!("stopping before unload: {}", error_chain(&e))),
    }
    systemd
        .unload(name.as_str())
        .await
        .map(|()| None)
        .map_err(|e| error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use systemd::{FakeFailure, FakeManager, FakeMethod};
    use units::UnitFile;

    fn name(s: &str) -> UnitName {
        s.parse().expect("test unit names are valid")
    }

    fn file(exec: &str) -> UnitFile {
        UnitFile::from_options(vec![units::UnitOption::new("Service", "ExecStart", exec)])
    }

    fn load(n: &str) -> Task {
        Task::Load {
            name: name(n),
            file: file("/bin/sleep 1000"),
        }
    }

    fn outcomes(report: &Report) -> Vec<(&'static str, Option<String>, &'static str)> {
        report
            .executed
            .iter()
            .map(|e| {
                let o = match e.outcome {
                    Outcome::Done { .. } => "done",
                    Outcome::Failed { .. } => "failed",
                    Outcome::Skipped => "skipped",
                };
                (e.task.verb(), e.task.unit().map(ToString::to_string), o)
            })
            .collect()
    }

    #[tokio::test]
    async fn loads_reloads_and_starts() {
        let fake = FakeManager::new();
        let tasks = vec![
            load("a.service"),
            Task::Reload,
            Task::Start {
                name: name("a.service"),
            },
        ];
        let report = execute(&fake, tasks).await;
        assert_eq!(report.failures(), 0);
        assert_eq!(fake.reload_count(), 1);
        assert_eq!(fake.status("a.service").active_state, "active");
    }

    #[tokio::test]
    async fn a_failed_load_skips_only_that_units_start() {
        let fake = FakeManager::new();
        fake.fail_next(FakeMethod::LinkUnitFiles, Some("a.service"));
        let tasks = vec![
            load("a.service"),
            load("b.service"),
            Task::Reload,
            Task::Start {
                name: name("a.service"),
            },
            Task::Start {
                name: name("b.service"),
            },
        ];
        let report = execute(&fake, tasks).await;
        assert_eq!(
            outcomes(&report),
            vec![
                ("load", Some("a.service".into()), "failed"),
                ("load", Some("b.service".into()), "done"),
                ("reload", None, "done"),
                ("start", Some("a.service".into()), "skipped"),
                ("start", Some("b.service".into()), "done"),
            ]
        );
        assert_eq!(report.failed_units(), BTreeSet::from([name("a.service")]));
        assert_eq!(fake.status("b.service").active_state, "active");
    }

    #[tokio::test]
    async fn a_failed_reload_skips_the_starts_of_new_units() {
        let fake = FakeManager::new();
        execute(&fake, vec![load("old.service"), Task::Reload]).await;
        fake.fail_next_with(FakeMethod::Reload, None, FakeFailure::Unavailable);
        let tasks = vec![
            load("new.service"),
            Task::Reload,
            Task::Start {
                name: name("new.service"),
            },
            Task::Start {
                name: name("old.service"),
            },
        ];
        let report = execute(&fake, tasks).await;
        assert_eq!(
            outcomes(&report),
            vec![
                ("load", Some("new.service".into()), "done"),
                ("reload", None, "failed"),
                ("start", Some("new.service".into()), "skipped"),
                ("start", Some("old.service".into()), "done"),
            ]
        );
    }

    #[tokio::test]
    async fn unload_stops_first_and_keeps_the_file_if_the_stop_fails() {
        let fake = FakeManager::new();
        execute(
            &fake,
            vec![
                load("a.service"),
                Task::Reload,
                Task::Start {
                    name: name("a.service"),
                },
            ],
        )
        .await;
        fake.fail_next_with(
            FakeMethod::StopUnit,
            Some("a.service"),
            FakeFailure::Timeout,
        );
        let report = execute(
            &fake,
            vec![
                Task::Unload {
                    name: name("a.service"),
                },
                Task::Reload,
            ],
        )
        .await;
        assert_eq!(report.failures(), 1);
        assert!(fake.file("a.service").is_some());
        assert_eq!(fake.status("a.service").active_state, "active");

        let report = execute(
            &fake,
            vec![
                Task::Unload {
                    name: name("a.service"),
                },
                Task::Reload,
            ],
        )
        .await;
        assert_eq!(report.failures(), 0);
        assert!(fake.file("a.service").is_none());
        assert_eq!(fake.status("a.service").active_state, "inactive");
    }

    #[tokio::test]
    async fn unloading_a_unit_systemd_does_not_know_is_fine() {
        let fake = FakeManager::new();
        fake.put_file("a.service", "[Service]\nExecStart=/bin/true\n");
        let report = execute(
            &fake,
            vec![
                Task::Unload {
                    name: name("a.service"),
                },
                Task::Reload,
            ],
        )
        .await;
        assert_eq!(report.failures(), 0, "{report:?}");
        assert!(fake.file("a.service").is_none());
    }

    #[tokio::test]
    async fn a_unit_that_fails_to_start_is_done_with_its_job_result() {
        let fake = FakeManager::new();
        let tasks = vec![
            Task::Load {
                name: name("bad.service"),
                file: UnitFile::from_options(vec![
                    units::UnitOption::new("Service", "Type", "oneshot"),
                    units::UnitOption::new("Service", "ExecStart", "/bin/false"),
                ]),
            },
            Task::Reload,
            Task::Start {
                name: name("bad.service"),
            },
        ];
        let report = execute(&fake, tasks).await;
        assert_eq!(report.failures(), 0);
        assert_eq!(
            report.executed[2].outcome,
            Outcome::Done {
                job: Some(JobResult::Failed)
            }
        );
    }
}
