//! Publishes this machine's unit states (`states/<unit>/<machine>`).
//!
//! A handle/task split, as neon's heartbeater: the agent tells the task which
//! units it manages ([`PublisherHandle::set_units`]); the task owns everything
//! else. Inside, two loops run side by side:
//! - the **collector** follows systemd: it subscribes to state changes of the
//!   managed units (re-subscribing with backoff when the stream ends), re-reads
//!   their states in one `states` call when the managed set changes and on a
//!   periodic resync (the safety net for missed signals), and turns them into
//!   the records that should be in etcd. It never waits on etcd, so systemd's
//!   events are always consumed.
//! - the **writer** makes etcd hold those records: it writes only what
//!   differs from what it last wrote (deduplication), removes the states of
//!   units no longer managed, and on failure keeps the latest wanted records
//!   and retries with a capped backoff. The two meet in a `watch` channel, so
//!   while etcd is away newer records simply replace older ones.
//!
//! States are attached to the machine's lease (from the heart), so they need no
//! refresh and vanish with the machine. When the lease changes, everything is
//! written again on the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use systemd::{SystemdManager, UnitFilter, UnitStateChange, UnitStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use units::UnitName;

use super::error_chain;
use super::plan::Managed;
use crate::registry::{self, Kv, LeaseId, Registry};
use crate::retry;
use crate::schema::{MachineId, UnitStateRecord};

/// The publisher's settings.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// How often every managed unit's state is re-read from systemd, in case
    /// a change signal was missed. States live on the machine lease, so this
    /// is not a TTL refresh.
    pub resync_interval: Duration,
}

impl PublisherConfig {
    /// Resync every `agent_ttl / 2` (15 s by default).
    pub fn from_agent_ttl(agent_ttl: Duration) -> Self {
        PublisherConfig {
            resync_interval: (agent_ttl / 2).max(Duration::from_secs(1)),
        }
    }
}

/// The publisher has stopped (shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the unit-state publisher has stopped")]
pub struct PublisherGone;

/// A request to the publisher task.
enum Command {
    /// Replace the set of managed units; acknowledged once the task took it.
    SetUnits {
        /// Every unit the agent manages now.
        units: BTreeMap<UnitName, Managed>,
        /// Acknowledgement.
        done: oneshot::Sender<()>,
    },
    /// Describe the publisher's state.
    Snapshot {
        /// Where to send it.
        reply: oneshot::Sender<PublisherSnapshot>,
    },
}

/// Talks to the publisher task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PublisherHandle {
    /// Requests to the task.
    tx: mpsc::Sender<Command>,
}

impl PublisherHandle {
    /// Tells the publisher which units this machine runs now and how far the
    /// agent took each; states of units left out are removed.
    pub async fn set_units(&self, units: BTreeMap<UnitName, Managed>) -> Result<(), PublisherGone> {
        let (done, ack) = oneshot::channel();
        self.tx
            .send(Command::SetUnits { units, done })
            .await
            .map_err(|_| PublisherGone)?;
        ack.await.map_err(|_| PublisherGone)
    }

    /// The publisher's state, for debug dumps.
    pub async fn snapshot(&self) -> Result<PublisherSnapshot, PublisherGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Snapshot { reply })
            .await
            .map_err(|_| PublisherGone)?;
        rx.await.map_err(|_| PublisherGone)
    }
}

/// The publisher's state, for debug dumps (SIGUSR1).
#[derive(Clone, Debug, Serialize)]
pub struct PublisherSnapshot {
    /// Units managed by the agent.
    pub units: BTreeMap<UnitName, Managed>,
    /// The records that should be in etcd.
    pub records: BTreeMap<UnitName, UnitStateRecord>,
    /// Whether the systemd change stream is open.
    pub subscribed: bool,
    /// What the writer has achieved.
    pub writer: WriterStatus,
}

/// The writer's progress.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WriterStatus {
    /// The lease the states are written on.
    pub lease: Option<LeaseId>,
    /// How many records etcd holds as wanted.
    pub published: usize,
    /// Whether etcd holds exactly the wanted records.
    pub in_sync: bool,
    /// The last failure, cleared on success.
    pub last_error: Option<String>,
}

/// The publisher task. Create with [`Publisher::new`], spawn [`Publisher::run`].
pub struct Publisher<K: Kv, S: SystemdManager> {
    /// Where states go.
    registry: Registry<K>,
    /// Where states come from.
    systemd: Arc<S>,
    /// This machine.
    machine: MachineId,
    /// The machine lease, from the heart.
    leases: watch::Receiver<Option<LeaseId>>,
    /// Requests from handles.
    commands: mpsc::Receiver<Command>,
    /// Settings.
    config: PublisherConfig,
}

impl<K: Kv, S: SystemdManager> Publisher<K, S> {
    /// A publisher for `machine`'s unit states, on the lease `leases` carries.
    pub fn new(
        registry: Registry<K>,
        systemd: Arc<S>,
        machine: MachineId,
        leases: watch::Receiver<Option<LeaseId>>,
        config: PublisherConfig,
    ) -> (Self, PublisherHandle) {
        let (tx, commands) = mpsc::channel(16);
        let publisher = Publisher {
            registry,
            systemd,
            machine,
            leases,
            commands,
            config,
        };
        (publisher, PublisherHandle { tx })
    }

    /// Runs until `cancel`. States stay in etcd (on the lease) when it
    /// stops; a purge removes them. Never fails: etcd and systemd outages
    /// are retried.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let span = info_span!("publisher", machine = %self.machine);
        let (records_tx, records_rx) = watch::channel(BTreeMap::new());
        let (status_tx, status_rx) = watch::channel(WriterStatus::default());
        let collector = Collector {
            systemd: self.systemd,
            machine: self.machine.clone(),
            commands: self.commands,
            config: self.config,
            units: BTreeMap::new(),
            statuses: BTreeMap::new(),
            watched: Arc::new(RwLock::new(BTreeSet::new())),
            changes: None,
            records: records_tx,
            writer_status: status_rx,
        };
        let writer = Writer {
            registry: self.registry,
            machine: self.machine,
            leases: self.leases,
            records: records_rx,
            status: status_tx,
            published: BTreeMap::new(),
            lease: None,
        };
        async { tokio::join!(collector.run(cancel.clone()), writer.run(cancel)) }
            .instrument(span)
            .await;
        Ok(())
    }
}

/// Follows systemd and computes the wanted records.
struct Collector<S> {
    /// Where states come from.
    systemd: Arc<S>,
    /// This machine.
    machine: MachineId,
    /// Requests from handles.
    commands: mpsc::Receiver<Command>,
    /// Settings.
    config: PublisherConfig,
    /// The managed units.
    units: BTreeMap<UnitName, Managed>,
    /// systemd's latest word on each managed unit.
    statuses: BTreeMap<UnitName, UnitStatus>,
    /// The names the change stream reports, shared with its filter.
    watched: Arc<RwLock<BTreeSet<String>>>,
    /// The change stream, `None` until (re)subscribed.
    changes: Option<mpsc::Receiver<UnitStateChange>>,
    /// The records etcd should hold, to the writer.
    records: watch::Sender<BTreeMap<UnitName, UnitStateRecord>>,
    /// The writer's progress, for snapshots.
    writer_status: watch::Receiver<WriterStatus>,
}

impl<S: SystemdManager> Collector<S> {
    async fn run(mut self, cancel: CancellationToken) {
        let mut resync = tokio::time::interval(self.config.resync_interval);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is immediate; the initial read happens on subscribe.
        resync.tick().await;
        let mut subscribe_backoff = retry::PUBLISHER;
        let mut subscribe_at = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                Some(command) = self.commands.recv() => self.command(command).await,
                change = recv(&mut self.changes), if self.changes.is_some() => match change {
                    Some(change) => self.changed(change).await,
                    None => {
                        warn!("systemd change stream ended; subscribing again");
                        self.changes = None;
                        subscribe_at = Instant::now() + subscribe_backoff.next_delay();
                    }
                },
                () = sleep_until(subscribe_at), if self.changes.is_none() => {
                    match self.subscribe().await {
                        Ok(()) => subscribe_backoff.reset(),
                        Err(error) => {
                            let delay = subscribe_backoff.next_delay();
                            warn!(%error, retry_in = ?delay, "cannot follow systemd unit changes");
                            subscribe_at = Instant::now() + delay;
                        }
                    }
                    // Changes may have been missed meanwhile.
                    self.reread(self.units.keys().cloned().collect()).await;
                }
                _ = resync.tick() => {
                    debug!(units = self.units.len(), "resync");
                    self.reread(self.units.keys().cloned().collect()).await;
                }
            }
            self.publish();
        }
    }

    /// Handles a request.
    async fn command(&mut self, command: Command) {
        match command {
            Command::SetUnits { units, done } => {
                self.set_units(units).await;
                let _ = done.send(());
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(PublisherSnapshot {
                    units: self.units.clone(),
                    records: self.records.borrow().clone(),
                    subscribed: self.changes.is_some(),
                    writer: self.writer_status.borrow().clone(),
                });
            }
        }
    }

    /// Takes a new managed set; reads the states of new or changed units.
    async fn set_units(&mut self, units: BTreeMap<UnitName, Managed>) {
        if units == self.units {
            return;
        }
        let changed: Vec<UnitName> = units
            .iter()
            .filter(|(name, m)| self.units.get(*name) != Some(*m))
            .map(|(name, _)| name.clone())
            .collect();
        self.statuses.retain(|name, _| units.contains_key(name));
        {
            // Short section, no await: the filter runs on systemd's signal path.
            let mut watched = self
                .watched
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *watched = units.keys().map(ToString::to_string).collect();
        }
        self.units = units;
        self.reread(changed).await;
    }

    /// Takes one change, and whatever else is already queued, in one go.
    async fn changed(&mut self, first: UnitStateChange) {
        let mut stale = Vec::new();
        let mut next = Some(first);
        while let Some(change) = next {
            match change.name.parse::<UnitName>() {
                Ok(name) if self.units.contains_key(&name) => match change.status {
                    Some(status) => {
                        self.statuses.insert(name, status);
                    }
                    // systemd dropped the unit from memory: ask what it is now.
                    None => stale.push(name),
                },
                _ => {}
            }
            next = self.changes.as_mut().and_then(|rx| rx.try_recv().ok());
        }
        if !stale.is_empty() {
            self.reread(stale).await;
        }
    }

    /// Opens the change stream for the managed units.
    async fn subscribe(&mut self) -> Result<(), String> {
        let watched = Arc::clone(&self.watched);
        let filter = UnitFilter::new(move |name| {
            watched
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(name)
        });
        let rx = self
            .systemd
            .subscribe(filter)
            .await
            .map_err(|e| error_chain(&e))?;
        self.changes = Some(rx);
        info!("following systemd unit changes");
        Ok(())
    }

    /// Reads the states of `names` in one call; on failure the previous
    /// states stand until the next resync.
    async fn reread(&mut self, names: Vec<UnitName>) {
        if names.is_empty() {
            return;
        }
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        match self.systemd.states(&names).await {
            Ok(states) => {
                for (name, status) in states {
                    if let Ok(name) = name.parse::<UnitName>()
                        && self.units.contains_key(&name)
                    {
                        self.statuses.insert(name, status);
                    }
                }
            }
            Err(e) => warn!(error = %error_chain(&e), "cannot read unit states"),
        }
    }

    /// Hands the writer the records etcd should hold now, if they changed.
    fn publish(&self) {
        let records: BTreeMap<UnitName, UnitStateRecord> = self
            .units
            .iter()
            .filter_map(|(name, managed)| {
                let status = self.statuses.get(name)?;
                Some((
                    name.clone(),
                    UnitStateRecord {
                        name: name.clone(),
                        machine_id: self.machine.clone(),
                        load_state: status.load_state.clone(),
                        active_state: status.active_state.clone(),
                        sub_state: status.sub_state.clone(),
                        unit_hash: managed.hash,
                        job_state: managed.job,
                    },
                ))
            })
            .collect();
        self.records.send_if_modified(|current| {
            if *current == records {
                false
            } else {
                *current = records;
                true
            }
        });
    }
}

/// The next change, or `None` once the stream has ended.
async fn recv(changes: &mut Option<mpsc::Receiver<UnitStateChange>>) -> Option<UnitStateChange> {
    match changes {
        Some(rx) => rx.recv().await,
        None => None,
    }
}

/// Makes etcd hold the collector's records.
struct Writer<K: Kv> {
    /// Where states go.
    registry: Registry<K>,
    /// This machine.
    machine: MachineId,
    /// The machine lease.
    leases: watch::Receiver<Option<LeaseId>>,
    /// The wanted records.
    records: watch::Receiver<BTreeMap<UnitName, UnitStateRecord>>,
    /// Progress, for snapshots.
    status: watch::Sender<WriterStatus>,
    /// What etcd holds, as far as this writer knows, on `lease`.
    published: BTreeMap<UnitName, UnitStateRecord>,
    /// The lease `published` is on.
    lease: Option<LeaseId>,
}

impl<K: Kv> Writer<K> {
    async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = retry::PUBLISHER;
        loop {
            let lease = *self.leases.borrow_and_update();
            if lease != self.lease {
                // Keys on the old lease are gone (or going): write all again.
                self.published.clear();
                self.lease = lease;
            }
            let wanted = self.records.borrow_and_update().clone();
            let result = self.sync(&wanted).await;
            let in_sync = result.is_ok() && self.lease.is_some();
            let last_error = result.as_ref().err().map(|e| error_chain(e));
            self.status.send_replace(WriterStatus {
                lease: self.lease,
                published: self.published.len(),
                in_sync,
                last_error,
            });
            match result {
                Ok(()) => {
                    backoff.reset();
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        changed = self.records.changed() => if changed.is_err() { return },
                        changed = self.leases.changed() => if changed.is_err() { return },
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %error_chain(&e), retry_in = ?delay, "cannot publish unit states");
                    // A new lease is worth trying at once; new records wait
                    // for the backoff (they replace the old ones meanwhile).
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                        changed = self.leases.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }

    /// Writes what differs between `wanted` and what was published; stops at
    /// the first failure, keeping what got through.
    async fn sync(&mut self, wanted: &BTreeMap<UnitName, UnitStateRecord>) -> registry::Result<()> {
        let Some(lease) = self.lease else {
            // Not registered: nothing can be attached yet.
            return Ok(());
        };
        for (name, record) in wanted {
            if self.published.get(name) == Some(record) {
                continue;
            }
            self.registry.publish_state(lease, record).await?;
            debug!(unit = %name, job = %record.job_state, active = %record.active_state, "state published");
            self.published.insert(name.clone(), record.clone());
        }
        let gone: Vec<UnitName> = self
            .published
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            self.registry.remove_state(&name, &self.machine).await?;
            debug!(unit = %name, "state removed");
            self.published.remove(&name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tests::{name, service};
    use crate::registry::MemKv;
    use crate::schema::TargetState;
    use systemd::FakeManager;
    use units::UnitFile;

    fn file() -> UnitFile {
        service("/bin/sleep 1000")
    }

    async fn published(registry: &Registry<MemKv>, unit: &str) -> Option<UnitStateRecord> {
        registry
            .unit_states_of(&name(unit))
            .await
            .ok()?
            .into_iter()
            .next()
    }

    #[tokio::test(start_paused = true)]
    async fn follows_systemd_through_an_etcd_outage_and_publishes_the_latest() {
        let kv = MemKv::new();
        let registry = Registry::new(kv.clone(), "/fleet/");
        let fake = FakeManager::new();
        fake.load("a.service", &file()).await.unwrap();
        fake.reload().await.unwrap();
        fake.start("a.service").await.unwrap();
        // A lease long enough to outlive the test (no heart here).
        let lease = registry
            .grant_lease(Duration::from_secs(86_400))
            .await
            .unwrap();
        let (_lease_tx, leases) = watch::channel(Some(lease));
        let machine: MachineId = "m1".parse().unwrap();
        let (publisher, handle) = Publisher::new(
            registry.clone(),
            Arc::new(fake.clone()),
            machine,
            leases,
            PublisherConfig::from_agent_ttl(Duration::from_secs(30)),
        );
        let cancel = CancellationToken::new();
        let task = tokio::spawn(publisher.run(cancel.clone()));
        let managed = Managed {
            hash: file().hash(),
            job: TargetState::Launched,
        };
        handle
            .set_units(BTreeMap::from([(name("a.service"), managed)]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let state = published(&registry, "a.service").await.expect("published");
        assert_eq!(
            (state.active_state.as_str(), state.job_state),
            ("active", TargetState::Launched)
        );

        kv.set_unavailable(true);
        fake.set_state("a.service", "failed", "failed");
        tokio::time::sleep(Duration::from_secs(5)).await;
        fake.set_state("a.service", "activating", "auto-restart");
        tokio::time::sleep(Duration::from_secs(5)).await;
        // The collector kept up with systemd while etcd was away.
        let snapshot = handle.snapshot().await.unwrap();
        assert_eq!(
            snapshot.records[&name("a.service")].active_state,
            "activating"
        );
        assert!(!snapshot.writer.in_sync);
        assert!(snapshot.writer.last_error.is_some());

        kv.set_unavailable(false);
        tokio::time::sleep(Duration::from_secs(31)).await;
        let state = published(&registry, "a.service").await.expect("published");
        assert_eq!(
            (state.active_state.as_str(), state.sub_state.as_str()),
            ("activating", "auto-restart")
        );
        assert!(handle.snapshot().await.unwrap().writer.in_sync);

        // Unmanaged: the state goes.
        handle.set_units(BTreeMap::new()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(published(&registry, "a.service").await, None);

        cancel.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(handle.snapshot().await.unwrap_err(), PublisherGone);
    }
}
