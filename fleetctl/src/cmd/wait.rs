//! Waiting for the cluster: polling the API until units reach a fleet
//! state, until systemd reports them active, or until they are gone.
//!
//! All waits poll every [`POLL_INTERVAL`] and give up after the [`Budget`]:
//! [`ATTEMPT`] per `--block-attempts` attempt, no limit for 0. Units are
//! checked in argument order on each round, so what is printed is
//! deterministic. A failed poll (the API unreachable for a moment) is logged
//! and retried, as in the original.

use std::collections::HashMap;
use std::time::Duration;

use fleetd::client::FleetApi;
use fleetd::schema::{TargetState, Unit, UnitState};
use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;

use super::Ctx;
use crate::render;
use crate::units_io;

/// Pause between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Time one `--block-attempts` attempt allows.
pub const ATTEMPT: Duration = Duration::from_secs(2);

/// From how many units a wait draws a progress line (on a terminal only).
pub const PROGRESS_MIN_UNITS: usize = 5;

/// How long a wait may last: this many [`ATTEMPT`]s, or forever for 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget(pub u32);

impl Budget {
    /// When a wait starting at `start` gives up; `None` for no limit.
    fn deadline(self, start: Instant) -> Option<Instant> {
        (self.0 > 0).then(|| start + ATTEMPT * self.0)
    }
}

/// The answer of one check: `None` to keep waiting, `Some(Ok(()))` when the
/// unit made it, `Some(Err(msg))` when it never will.
type Check = anyhow::Result<Option<Result<(), String>>>;

/// From how many pending units a poll reads one listing instead of one
/// object per unit.
pub const LISTING_MIN: usize = 16;

/// The page size of fleet's listings (the original's and fleetd's), to
/// tell how many requests a listing takes.
const LISTING_PAGE: usize = 100;

/// What one poll read, by unit name: `Some(None)` for a unit that does not
/// exist, no entry for one that could not be read (logged; polled again).
type Snapshot<T> = HashMap<String, Option<T>>;

/// What a wait reads of the units it waits for: units or unit states, one
/// at a time or all at once.
trait Object: Sized {
    /// One unit's: `GET /<collection>/<name>`.
    async fn one<A: FleetApi>(api: &A, name: &str) -> fleetd::client::Result<Option<Self>>;
    /// Every unit's: the listing.
    async fn all<A: FleetApi>(api: &A) -> fleetd::client::Result<Vec<Self>>;
    /// The unit this is of.
    fn unit_name(&self) -> &str;
}

impl Object for Unit {
    async fn one<A: FleetApi>(api: &A, name: &str) -> fleetd::client::Result<Option<Self>> {
        api.unit(name).await
    }
    async fn all<A: FleetApi>(api: &A) -> fleetd::client::Result<Vec<Self>> {
        api.units().await
    }
    fn unit_name(&self) -> &str {
        &self.name
    }
}

impl Object for UnitState {
    async fn one<A: FleetApi>(api: &A, name: &str) -> fleetd::client::Result<Option<Self>> {
        api.unit_state(name).await
    }
    async fn all<A: FleetApi>(api: &A) -> fleetd::client::Result<Vec<Self>> {
        api.unit_states().await
    }
    fn unit_name(&self) -> &str {
        &self.name
    }
}

/// Reads the `pending` units: one listing when many are pending and the
/// last listing (`listed`: how many objects it held) was not more requests
/// than reading them one by one, else one request per unit,
/// [`super::IN_FLIGHT`] at a time.
async fn read<A: FleetApi, T: Object>(
    api: &A,
    pending: &[&str],
    listed: &mut Option<usize>,
) -> Snapshot<T> {
    let pages = listed.map_or(1, |n| n / LISTING_PAGE + 1);
    if pending.len() >= LISTING_MIN && pages <= pending.len() {
        return match T::all(api).await {
            Ok(items) => {
                *listed = Some(items.len());
                let mut snapshot: Snapshot<T> =
                    pending.iter().map(|n| ((*n).to_owned(), None)).collect();
                for item in items {
                    // The first object of a name wins (`unit_state`'s rule).
                    if let Some(slot @ None) = snapshot.get_mut(item.unit_name()) {
                        *slot = Some(item);
                    }
                }
                snapshot
            }
            Err(err) => {
                tracing::warn!(error = %err, "error listing units");
                Snapshot::new()
            }
        };
    }
    let fetches = pending
        .iter()
        .map(|name| async move { (*name, T::one(api, name).await) });
    let mut results = stream::iter(fetches).buffered(super::IN_FLIGHT);
    let mut snapshot = Snapshot::new();
    while let Some((name, result)) = results.next().await {
        match result {
            Ok(found) => {
                snapshot.insert(name.to_owned(), found);
            }
            Err(err) => {
                tracing::warn!(unit = %name, error = %err, "error retrieving unit from registry");
            }
        }
    }
    snapshot
}

/// Polls the units of `names` until `check` returns `Some(done)` for each,
/// or the budget runs out. Each round reads the pending units ([`read`])
/// and checks them in argument order; `check` gets what was read of the
/// unit (`None` when it could not be read). Returns the error messages:
/// each unit that failed or timed out (`timeout(name)`). On a terminal,
/// draws `<label><done>/<total>` while it waits for many units.
async fn poll<'c, A, T, C, M>(
    ctx: &mut Ctx<'c, A>,
    names: &[String],
    budget: Budget,
    label: &str,
    mut check: C,
    timeout: M,
) -> anyhow::Result<Vec<String>>
where
    A: FleetApi,
    T: Object,
    C: AsyncFnMut(&mut Ctx<'c, A>, &str, Option<Option<T>>) -> Check,
    M: Fn(&str) -> String,
{
    let deadline = budget.deadline(Instant::now());
    let mut pending: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut errors = Vec::new();
    let mut listed = None;
    loop {
        let mut snapshot = read::<A, T>(ctx.api, &pending, &mut listed).await;
        let mut still = Vec::new();
        for name in pending {
            match check(ctx, name, snapshot.remove(name)).await? {
                Some(Ok(())) => {}
                Some(Err(msg)) => errors.push(msg),
                None => still.push(name),
            }
        }
        pending = still;
        if pending.is_empty() {
            ctx.ui.clear_progress();
            return Ok(errors);
        }
        if deadline.is_some_and(|d| Instant::now() + POLL_INTERVAL > d) {
            ctx.ui.clear_progress();
            errors.extend(pending.iter().map(|n| timeout(n)));
            return Ok(errors);
        }
        if names.len() >= PROGRESS_MIN_UNITS {
            let done = names.len() - pending.len();
            ctx.ui.progress(&format!("{label}{done}/{}", names.len()));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until each unit's fleet state is `want` (its desired state for a
/// global unit, which has no current state), printing `Unit <name>
/// <current state>[ on <machine>]` as each arrives (Go's
/// `waitForUnitStates`). Returns the timeouts as messages.
pub async fn unit_states<'c, A: FleetApi>(
    ctx: &mut Ctx<'c, A>,
    names: &[String],
    want: TargetState,
    budget: Budget,
) -> anyhow::Result<Vec<String>> {
    let check = async |ctx: &mut Ctx<'c, A>, name: &str, found: Option<Option<Unit>>| {
        has_state(ctx, name, found, want).await
    };
    let timeout = |name: &str| format!("timed out waiting for unit {name} to report state {want}");
    poll(ctx, names, budget, &format!("{want} "), check, timeout).await
}

/// Whether unit `name` (as read: `found`) has reached fleet state `want`;
/// printed when it has.
async fn has_state<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    name: &str,
    found: Option<Option<Unit>>,
    want: TargetState,
) -> Check {
    let Some(found) = found else {
        return Ok(None);
    };
    let Some(unit) = found else {
        tracing::warn!(unit = %name, "unit not found");
        return Ok(None);
    };
    let global = units_io::is_global(&unit);
    let state = if global {
        unit.desired_state
    } else {
        unit.current_state
    };
    if state != Some(want) {
        tracing::debug!(unit = %name, ?state, %want, "waiting for unit state");
        return Ok(None);
    }
    // A global unit has no current state of its own: `GET /units/<name>`
    // shows none, the listing shows `inactive`; printed as the former.
    let current = match unit.current_state {
        Some(s) if !global => s.to_string(),
        _ => String::new(),
    };
    let mut msg = arrival(name, &current);
    if !unit.machine_id.is_empty() {
        let machines = ctx.machines().await;
        if machines.contains_key(&unit.machine_id) {
            msg = format!(
                "{msg} on {}",
                render::machine_legend(&unit.machine_id, machines, false)
            );
        }
    }
    ctx.ui.say(msg)?;
    Ok(Some(Ok(())))
}

/// What a wait prints when unit `name` has arrived in its state, `current`
/// (blank for a global unit), before the machine it is on.
pub fn arrival(name: &str, current: &str) -> String {
    format!("Unit {name} {current}")
}

/// Waits until systemd reports each unit `loaded` and `active` (through
/// `GET /state/<name>`, or the `GET /state` listing for many units). A unit
/// systemd reports `failed` will not get there by waiting and is reported at
/// once. `label` starts the progress line.
pub async fn systemd_active<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    names: &[String],
    budget: Budget,
    label: &str,
) -> anyhow::Result<Vec<String>> {
    let timeout = |name: &str| format!("timed out waiting for unit {name} to report active state");
    poll(ctx, names, budget, label, is_active, timeout).await
}

/// Whether systemd reports unit `name` (its state as read: `found`) active,
/// or failed.
async fn is_active<A: FleetApi>(
    _: &mut Ctx<'_, A>,
    name: &str,
    found: Option<Option<UnitState>>,
) -> Check {
    let Some(Some(state)) = found else {
        return Ok(None);
    };
    if state.systemd_load_state == "loaded" && state.systemd_active_state == "active" {
        return Ok(Some(Ok(())));
    }
    if state.systemd_active_state == "failed" {
        return Ok(Some(Err(format!(
            "unit {name} failed to start: systemd reports {}/{}/{}",
            state.systemd_load_state, state.systemd_active_state, state.systemd_sub_state
        ))));
    }
    Ok(None)
}

/// Waits until unit `name` is gone from the registry.
pub async fn destroyed<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    name: &str,
    budget: Budget,
) -> anyhow::Result<Vec<String>> {
    let timeout = |name: &str| format!("timed out waiting for unit {name} to be destroyed");
    poll(ctx, &[name.to_owned()], budget, "", is_gone, timeout).await
}

/// Whether unit `name` (as read: `found`) is gone from the registry.
async fn is_gone<A: FleetApi>(_: &mut Ctx<'_, A>, _: &str, found: Option<Option<Unit>>) -> Check {
    match found {
        Some(None) => Ok(Some(Ok(()))),
        Some(Some(_)) | None => Ok(None),
    }
}
