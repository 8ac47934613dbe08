//! Waiting for the cluster: polling the API until units reach a fleet
//! state, until systemd reports them active, or until they are gone.
//!
//! All waits poll every [`POLL_INTERVAL`] and give up after the [`Budget`]:
//! [`ATTEMPT`] per `--block-attempts` attempt, no limit for 0. Units are
//! checked in argument order on each round, so what is printed is
//! deterministic. A failed poll (the API unreachable for a moment) is logged
//! and retried, as in the original.

use std::time::Duration;

use fleetd::client::FleetApi;
use fleetd::schema::{TargetState, Unit};
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

/// Polls `check` for every name until it returns `Some(done)`, or the budget
/// runs out. `check` returns `Ok(None)` to keep waiting, `Ok(Some(Ok(())))`
/// when the unit made it and `Ok(Some(Err(msg)))` when it never will.
/// Returns the error messages: each unit that failed or timed out
/// (`timeout(name)`).
async fn poll<'c, A, C, T>(
    ctx: &mut Ctx<'c, A>,
    names: &[String],
    budget: Budget,
    mut check: C,
    timeout: T,
) -> anyhow::Result<Vec<String>>
where
    A: FleetApi,
    C: AsyncFnMut(&mut Ctx<'c, A>, &str) -> Check,
    T: Fn(&str) -> String,
{
    let deadline = budget.deadline(Instant::now());
    let mut pending: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut errors = Vec::new();
    loop {
        let mut still = Vec::new();
        for name in pending {
            match check(ctx, name).await? {
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
            ctx.ui.progress(&format!(
                "Waiting for {} of {} units...",
                pending.len(),
                names.len()
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `GET /units/<name>`: whether the unit exists, or `None` when the request
/// failed (logged; the wait polls again).
async fn fetch_unit<A: FleetApi>(api: &A, name: &str) -> Option<Option<Unit>> {
    match api.unit(name).await {
        Ok(found) => Some(found),
        Err(err) => {
            tracing::warn!(unit = %name, error = %err, "error retrieving unit from registry");
            None
        }
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
    let check = async |ctx: &mut Ctx<'c, A>, name: &str| has_state(ctx, name, want).await;
    let timeout = |name: &str| format!("timed out waiting for unit {name} to report state {want}");
    poll(ctx, names, budget, check, timeout).await
}

/// Whether unit `name` has reached fleet state `want`; printed when it has.
async fn has_state<A: FleetApi>(ctx: &mut Ctx<'_, A>, name: &str, want: TargetState) -> Check {
    let Some(found) = fetch_unit(ctx.api, name).await else {
        return Ok(None);
    };
    let Some(unit) = found else {
        tracing::warn!(unit = %name, "unit not found");
        return Ok(None);
    };
    let state = if units_io::is_global(&unit) {
        unit.desired_state
    } else {
        unit.current_state
    };
    if state != Some(want) {
        tracing::debug!(unit = %name, ?state, %want, "waiting for unit state");
        return Ok(None);
    }
    let current = unit
        .current_state
        .map(|s| s.to_string())
        .unwrap_or_default();
    let mut msg = format!("Unit {name} {current}");
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

/// Waits until systemd reports each unit `loaded` and `active` (through
/// `GET /state/<name>`). A unit systemd reports `failed` will not get there
/// by waiting and is reported at once.
pub async fn systemd_active<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    names: &[String],
    budget: Budget,
) -> anyhow::Result<Vec<String>> {
    let timeout = |name: &str| format!("timed out waiting for unit {name} to report active state");
    poll(ctx, names, budget, is_active, timeout).await
}

/// Whether systemd reports unit `name` active, or failed.
async fn is_active<A: FleetApi>(ctx: &mut Ctx<'_, A>, name: &str) -> Check {
    let state = match ctx.api.unit_state(name).await {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(None),
        Err(err) => {
            tracing::warn!(unit = %name, error = %err, "error retrieving unit state");
            return Ok(None);
        }
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
    poll(ctx, &[name.to_owned()], budget, is_gone, timeout).await
}

/// Whether unit `name` is gone from the registry.
async fn is_gone<A: FleetApi>(ctx: &mut Ctx<'_, A>, name: &str) -> Check {
    match fetch_unit(ctx.api, name).await {
        Some(None) => Ok(Some(Ok(()))),
        Some(Some(_)) | None => Ok(None),
    }
}
