//! The commands, one module each, and what they share: the [`Ctx`] they run
//! in, finding and creating units, setting desired states, and waiting.
//!
//! Every command is `async fn run(args, ctx) -> anyhow::Result<Exit>`. Its
//! messages go through [`Ui`], worded as the original's; an `Err` is printed
//! once by `main` (with its causes, `{:#}`) and exits 1, so errors carry the
//! original's prefix as context (`Error creating units: ...`).
//!
//! Waiting (fleet-reference.md §8.2): the API is polled every 250 ms; each
//! `--block-attempts` attempt allows 2 s, and 0 means no limit. Bugs of the
//! original fixed here: `start --no-block` prints "Triggered unit X start"
//! once, and `destroy` waits for the units to disappear when blocking (the
//! original waited only with `--no-block`).
//!
//! Many units: the requests for the units of one command (looking them up,
//! creating them, setting their desired states, deleting them) are sent
//! [`IN_FLIGHT`] at a time, and their results, messages included, are
//! taken in argument order, so what is printed and the exit status are
//! those of one request after the other. A command naming a unit twice runs
//! one request at a time, as the second request depends on the first. The
//! waits read one listing per poll when they wait for many units
//! (`wait.rs`). `submit`, `load` and `start` of many units read them from
//! one listing when it is cheaper than a look-up each, create a missing
//! unit with its desired state in one PUT, and look no unit up twice
//! ([`create_units`]): `start --no-block` of new units is one PUT each.

pub mod cat;
pub mod completion;
pub mod destroy;
pub mod fd_forward;
pub mod journal;
pub mod list_machines;
pub mod list_unit_files;
pub mod list_units;
pub mod load;
mod remote;
pub mod restart;
pub mod ssh;
pub mod start;
pub mod status;
pub mod stop;
pub mod submit;
pub mod unload;
pub mod verify;
pub mod version;
mod wait;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::ops::ControlFlow;

use anyhow::{Context, anyhow};
use fleetd::client::FleetApi;
use fleetd::schema::{TargetState, Unit};
use futures_util::stream::{self, StreamExt};
use units::{UnitName, go_quote};

use crate::cli::{BlockArgs, Command, ListArgs, OutputFormat, ScheduleArgs};
use crate::connect::Remote;
use crate::render::{self, MachineIndex};
use crate::ui::Ui;
use crate::units_io::{self, LocalMatch};

pub use wait::Budget;

/// How a command ended, as the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0.
    Success,
    /// 1: the command failed (after printing why).
    Failure,
    /// 2: misuse, such as the deprecated `--sign`.
    Usage,
    /// The exit status of a command run on a machine (`status`, `journal`,
    /// `ssh`), passed through.
    Status(u8),
}

impl Exit {
    /// The exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Status(code) => code,
        }
    }

    /// A command's exit status as ours (statuses above 255 saturate).
    pub fn from_status(code: u32) -> Exit {
        match code {
            0 => Exit::Success,
            c => Exit::Status(u8::try_from(c).unwrap_or(u8::MAX)),
        }
    }
}

/// What a command runs with: the API, the output, and a cache of machines.
pub struct Ctx<'a, A> {
    /// The cluster.
    pub api: &'a A,
    /// Where messages go.
    pub ui: &'a mut Ui,
    /// How to reach machines over SSH (`status`, `journal`, `ssh`).
    pub remote: &'a Remote,
    /// Machines by ID, fetched once when first needed (the original's
    /// `cachedMachineState`); `None` until then.
    machines: Option<MachineIndex>,
}

impl<'a, A: FleetApi> Ctx<'a, A> {
    /// A context over `api` writing to `ui`, reaching machines as `remote`
    /// says.
    pub fn new(api: &'a A, ui: &'a mut Ui, remote: &'a Remote) -> Self {
        Ctx {
            api,
            ui,
            remote,
            machines: None,
        }
    }

    /// The cluster's machines, fetched on first use. Best effort: if they
    /// cannot be listed, legends show bare machine IDs.
    pub async fn machines(&mut self) -> &MachineIndex {
        if self.machines.is_none() {
            let machines = match self.api.machines().await {
                Ok(ms) => render::index_machines(ms),
                Err(err) => {
                    tracing::debug!(error = %err, "cannot list machines for legends");
                    MachineIndex::new()
                }
            };
            self.machines = Some(machines);
        }
        self.machines.get_or_insert_with(MachineIndex::new)
    }
}

/// Runs a command that needs the cluster. The commands of
/// [`run_local`] and the help never get here.
pub async fn run<A: FleetApi>(
    command: Command,
    api: &A,
    ui: &mut Ui,
    remote: &Remote,
) -> anyhow::Result<Exit> {
    let mut ctx = Ctx::new(api, ui, remote);
    match command {
        Command::Cat(a) => cat::run(&a, &mut ctx).await,
        Command::Destroy(a) => destroy::run(&a, &mut ctx).await,
        Command::Journal(a) => journal::run(&a, &mut ctx).await,
        Command::ListMachines(a) => list_machines::run(&a, &mut ctx).await,
        Command::ListUnitFiles(a) => list_unit_files::run(&a, &mut ctx).await,
        Command::ListUnits(a) => list_units::run(&a, &mut ctx).await,
        Command::Load(a) => load::run(&a, &mut ctx).await,
        Command::Restart(a) => restart::run(&a, &mut ctx).await,
        Command::Ssh(a) => ssh::run(&a, &mut ctx).await,
        Command::Start(a) => start::run(&a, &mut ctx).await,
        Command::Status(a) => status::run(&a, &mut ctx).await,
        Command::Stop(a) => stop::run(&a, &mut ctx).await,
        Command::Submit(a) => submit::run(&a, &mut ctx).await,
        Command::Unload(a) => unload::run(&a, &mut ctx).await,
        Command::Completion(_) | Command::FdForward(_) | Command::Verify(_) | Command::Version => {
            run_local(command, ui).await
        }
    }
}

/// Runs a command that needs no cluster: `version`, `completion`,
/// `fd-forward` and `verify`.
pub async fn run_local(command: Command, ui: &mut Ui) -> anyhow::Result<Exit> {
    match command {
        Command::Completion(a) => completion::run(&a, ui),
        Command::FdForward(a) => fd_forward::run(&a).await,
        Command::Verify(_) => Ok(verify::run(ui)),
        _ => version::run(ui),
    }
}

/// Whether the command talks to the cluster.
pub fn needs_cluster(command: &Command) -> bool {
    !matches!(
        command,
        Command::Version | Command::Completion(_) | Command::FdForward(_) | Command::Verify(_)
    )
}

/// Refuses the deprecated `--sign`, as the original: a warning and exit 2.
pub fn check_sign(command: &Command, ui: &mut Ui) -> Option<Exit> {
    let sign = match command {
        Command::Submit(a) => a.submit.sign,
        Command::Load(a) => a.submit.sign,
        Command::Start(a) => a.submit.sign,
        _ => false,
    };
    sign.then(|| {
        ui.warn("WARNING: The signed/verified units feature is DEPRECATED and cannot be used.");
        Exit::Usage
    })
}

/// The units of the registry named by `args` (after mangling), in argument
/// order; names that do not exist are left out (Go's `findUnits`).
pub async fn find_units<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    args: &[String],
) -> anyhow::Result<Vec<Unit>> {
    let all = ctx.api.units().await?;
    let by_name: HashMap<&str, &Unit> = all.iter().map(|u| (u.name.as_str(), u)).collect();
    Ok(args
        .iter()
        .filter_map(|arg| {
            by_name
                .get(units_io::unit_name(arg).as_str())
                .map(|u| (*u).clone())
        })
        .collect())
}

/// How `stop`, `unload` and `destroy` begin: the units of the registry
/// named by `names` ([`find_units`]). Breaks with exit 0 after `No units
/// given` when there are no names, or after `Units not found in registry`
/// when none of them exists, as the original did.
pub async fn known_units<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    names: &[String],
) -> anyhow::Result<ControlFlow<Exit, Vec<Unit>>> {
    if let Some(exit) = require_units(ctx.ui, names) {
        return Ok(ControlFlow::Break(exit));
    }
    let units = find_units(ctx, names).await?;
    if units.is_empty() {
        ctx.ui.warn("Units not found in registry");
        return Ok(ControlFlow::Break(Exit::Success));
    }
    Ok(ControlFlow::Continue(units))
}

/// How many requests for the units of one command are in flight at once.
pub const IN_FLIGHT: usize = 16;

/// How many of the requests for `names` may be in flight at once:
/// [`IN_FLIGHT`], or one when a name repeats (the second request for it
/// depends on what the first did).
fn in_flight<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> usize {
    let mut seen = HashSet::new();
    if names
        .into_iter()
        .all(|n| seen.insert(n.as_ref().to_owned()))
    {
        IN_FLIGHT
    } else {
        1
    }
}

/// Runs `work` on each item, `limit` at a time, and hands the results to
/// `each` in item order. Stops at the first error `each` returns (the
/// requests already in flight are still answered, and ignored).
async fn in_order<I, T, R, W, F, E>(
    items: I,
    limit: usize,
    work: W,
    mut each: E,
) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    W: FnMut(T) -> F,
    F: Future<Output = R>,
    E: FnMut(R) -> anyhow::Result<()>,
{
    let mut results = stream::iter(items).map(work).buffered(limit.max(1));
    while let Some(result) = results.next().await {
        each(result)?;
    }
    Ok(())
}

/// Sets the desired state of each named unit that is not already there and
/// returns those units (as they were before), in order (Go's
/// `setTargetStateOfUnits`). Stops at the first error. A unit in `known`
/// is not looked up again: one [`Known::Created`] with its desired state
/// already set needs no request at all.
pub async fn set_target_states<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    names: &[String],
    state: TargetState,
    known: &KnownUnits,
) -> anyhow::Result<Vec<Unit>> {
    let api = ctx.api;
    let mut triggered = Vec::new();
    let set = async |name: &String| -> anyhow::Result<Option<Unit>> {
        let unit = match known.get(name) {
            Some(Known::Created(unit)) => {
                tracing::debug!(unit = %name, %state, "unit created in desired state");
                return Ok(Some(unit.clone()));
            }
            Some(Known::Found(unit)) => unit.clone(),
            None => api
                .unit(name)
                .await
                .with_context(|| format!("error retrieving unit {name} from registry"))?
                .ok_or_else(|| anyhow!("unable to find unit {name}"))?,
        };
        if unit.desired_state == Some(state) {
            tracing::debug!(unit = %name, %state, "unit already in desired state, skipping");
            return Ok(None);
        }
        tracing::debug!(unit = %name, %state, "setting unit target state");
        api.set_unit_target_state(name, state).await?;
        Ok(Some(unit))
    };
    in_order(names, in_flight(names), set, |result| {
        triggered.extend(result?);
        Ok(())
    })
    .await?;
    Ok(triggered)
}

/// The command a unit is being created for; it decides which desired states
/// `--replace` may overwrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateFor {
    /// `submit`: only inactive units.
    Submit,
    /// `load`: inactive or loaded units.
    Load,
    /// `start`: any unit.
    Start,
}

impl CreateFor {
    /// The desired state the command sets after creating the units (none
    /// for `submit`: they stay inactive).
    fn target(self) -> Option<TargetState> {
        match self {
            CreateFor::Submit => None,
            CreateFor::Load => Some(TargetState::Loaded),
            CreateFor::Start => Some(TargetState::Launched),
        }
    }

    fn may_replace(self, desired: Option<TargetState>) -> bool {
        match self {
            CreateFor::Start => true,
            CreateFor::Load => matches!(desired, Some(TargetState::Inactive | TargetState::Loaded)),
            CreateFor::Submit => desired == Some(TargetState::Inactive),
        }
    }
}

/// What [`create_units`] learnt of a unit, so that setting its desired
/// state needs no second look-up.
#[derive(Debug, Clone)]
pub enum Known {
    /// Found in the registry and left as it was: the unit as read.
    Found(Unit),
    /// Created by this command with the command's desired state in the
    /// same request: the unit as it was before (inactive).
    Created(Unit),
}

/// What [`create_units`] learnt, by unit name.
pub type KnownUnits = HashMap<String, Known>;

/// What became of one argument's unit in [`create_units`].
enum Made {
    /// It exists and was left alone.
    Kept(Unit),
    /// It did not exist and was created (with the command's desired state,
    /// see [`create_units`]); it is in the registry, inactive, as soon as
    /// the request returned.
    Created(Unit),
    /// It was created or replaced as inactive, to be waited for.
    Submitted(String),
}

/// Makes sure every argument's unit exists in the registry (Go's
/// `lazyCreateUnits`): existing units are kept (or replaced with
/// `replace`, when the local file differs and the command allows it),
/// missing ones are created from their file or template. Then prints `Unit
/// <name> <state>` for each created unit, waiting for a replaced one to
/// report `inactive`. Returns what it learnt of the units, for
/// [`set_target_states`].
///
/// Fewer requests than the original, same outcome: the units are read from
/// one listing when that is cheaper than a look-up each
/// ([`FleetApi::units_within`]); a missing unit is created with the
/// command's desired state in one PUT (as the original's two PUTs leave it;
/// not a template, which cannot be activated, so its error stays the
/// original's); and a created unit is not waited for, as it is in the
/// registry, inactive, once its PUT returned. When a name repeats, each
/// unit is looked up and created as in the original, one after the other.
///
/// # Errors
///
/// The first unit that cannot be found, read, validated or created; or,
/// after all were created, `One or more errors creating units` when some
/// did not report in time (each reported on stderr).
pub async fn create_units<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    args: &[String],
    replace: bool,
    command: CreateFor,
    budget: Budget,
) -> anyhow::Result<KnownUnits> {
    let api = ctx.api;
    let limit = in_flight(args.iter().map(|a| units_io::unit_name(a)));
    let fast = limit > 1;
    let listed = if fast {
        list_units(api, args.len()).await
    } else {
        None
    };
    let listed = listed.as_ref();
    let mut made = Vec::new();
    // Each unit's messages are recorded and printed in argument order.
    let create = async |arg: &String| {
        let (mut ui, recording) = Ui::recording();
        let arg = units_io::append_default_type(arg);
        let name = units_io::unit_name(&arg);
        let result: anyhow::Result<Made> = async {
            let existing = match listed {
                Some(all) => all.get(&name).cloned(),
                None => api
                    .unit(&name)
                    .await
                    .with_context(|| format!("error retrieving Unit({name}) from Registry"))?,
            };
            if let Some(unit) = existing.as_ref()
                && !should_create(&mut ui, &arg, &name, unit, replace, command)?
            {
                return Ok(Made::Kept(unit.clone()));
            }
            let file = units_io::unit_file_for(api, &arg, replace, &mut ui).await?;
            let fresh = fast && existing.is_none();
            let template = name.parse::<UnitName>().is_ok_and(|n| n.is_template());
            let desired = command.target().filter(|_| fresh && !template);
            let unit = create_unit(api, &mut ui, &name, &file, desired).await?;
            if fresh && (desired.is_some() || command.target().is_none()) {
                Ok(Made::Created(unit))
            } else {
                Ok(Made::Submitted(name))
            }
        }
        .await;
        (recording, result)
    };
    let ui = &mut *ctx.ui;
    in_order(args, limit, create, |(recording, result)| {
        ui.replay(&recording)?;
        made.push(result?);
        Ok(())
    })
    .await?;
    let mut known = KnownUnits::new();
    let mut submitted = Vec::new();
    for m in made {
        match m {
            Made::Kept(unit) => {
                known.insert(unit.name.clone(), Known::Found(unit));
            }
            Made::Created(mut unit) => {
                let current = if units_io::is_global(&unit) {
                    String::new()
                } else {
                    TargetState::Inactive.to_string()
                };
                ctx.ui.say(wait::arrival(&unit.name, &current))?;
                unit.desired_state = Some(TargetState::Inactive);
                known.insert(unit.name.clone(), Known::Created(unit));
            }
            Made::Submitted(name) => submitted.push(name),
        }
    }
    if !fast {
        known.clear();
    }
    let errors = wait::unit_states(ctx, &submitted, TargetState::Inactive, budget).await?;
    for err in &errors {
        ctx.ui
            .warn(format!("Error waiting on unit creation: {err}"));
    }
    if errors.is_empty() {
        Ok(known)
    } else {
        Err(anyhow!("One or more errors creating units"))
    }
}

/// The registry's units by name, from one listing, when there are enough
/// `wanted` units for that to pay and the listing takes no more requests
/// than looking each up would; `None` otherwise (and when the listing
/// fails: the look-ups then report the error).
async fn list_units<A: FleetApi>(api: &A, wanted: usize) -> Option<HashMap<String, Unit>> {
    if wanted < wait::LISTING_MIN {
        return None;
    }
    match api.units_within(wanted).await {
        Ok(units) => units.map(|all| all.into_iter().map(|u| (u.name.clone(), u)).collect()),
        Err(err) => {
            tracing::debug!(error = %err, "cannot list units, looking each up");
            None
        }
    }
}

/// Go's `checkUnitCreation`: whether `arg`'s unit, found in the registry
/// as `unit`, must be replaced.
fn should_create(
    ui: &mut Ui,
    arg: &str,
    name: &str,
    unit: &Unit,
    replace: bool,
    command: CreateFor,
) -> anyhow::Result<bool> {
    let matched = match units_io::compare_local(arg, unit, replace, ui) {
        Ok(m) => m,
        // Without --replace a local file we cannot read only loses the
        // comparison (and its warning); with it, we cannot tell what to do.
        Err(err) if replace => return Err(err),
        Err(err) => {
            tracing::debug!(error = %format!("{err:#}"), "cannot compare with the local file");
            LocalMatch::NoLocalFile
        }
    };
    match (replace, matched) {
        (true, LocalMatch::Different) => {
            if command.may_replace(unit.desired_state) {
                return Ok(true);
            }
            let state = unit
                .desired_state
                .map(|s| s.to_string())
                .unwrap_or_default();
            ui.warn(format!(
                "Warning: can not replace Unit({name}) in state '{state}', use the appropriate command"
            ));
        }
        (true, LocalMatch::Same) => {
            ui.say(format!(
                "Found same Unit({name}) in Registry, nothing to do"
            ))?;
        }
        _ => tracing::debug!(unit = %name, "unit found in registry, no need to recreate it"),
    }
    Ok(false)
}

/// Validates and submits one unit (Go's `createUnit`) with the desired
/// state `desired` (none: inactive), and returns it: the name and the
/// `[X-Fleet]` combinations must be valid; unknown `[X-Fleet]` keys only
/// warn.
async fn create_unit<A: FleetApi>(
    api: &A,
    ui: &mut Ui,
    name: &str,
    file: &units::UnitFile,
    desired: Option<TargetState>,
) -> anyhow::Result<Unit> {
    let unit_name: UnitName = name.parse()?;
    let requirements = units::validate_options(&unit_name, file)?;
    for key in &requirements.unrecognized {
        ui.warn(format!(
            "WARNING: Unit {name}: unrecognized requirement in [X-Fleet] section: {}",
            go_quote(key)
        ));
    }
    let unit = Unit {
        name: name.to_owned(),
        options: units_io::options_of(file),
        desired_state: desired,
        ..Unit::default()
    };
    api.create_unit(&unit)
        .await
        .with_context(|| format!("failed creating unit {name}"))?;
    tracing::debug!(unit = %name, ?desired, "created unit in registry");
    Ok(unit)
}

/// Splits units into global ones (whose names are returned after printing
/// `Triggered global unit <name> <verb>`) and the others, whose names are
/// returned for waiting.
pub fn split_global(ui: &mut Ui, units: &[Unit], verb: &str) -> anyhow::Result<Vec<String>> {
    let mut waiting = Vec::new();
    for u in units {
        if units_io::is_global(u) {
            ui.say(format!("Triggered global unit {} {verb}", u.name))?;
        } else {
            waiting.push(u.name.clone());
        }
    }
    Ok(waiting)
}

/// Go's `tryWaitForUnitStates`: with `--no-block` prints `Triggered unit
/// <name> <verb>` for each unit; otherwise waits for `state`, printing each
/// arrival, and reports each timeout as `Error waiting for units: ...`.
/// Returns whether every unit made it.
pub async fn wait_or_trigger<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    names: &[String],
    verb: &str,
    state: TargetState,
    block: BlockArgs,
) -> anyhow::Result<bool> {
    if block.no_block {
        for name in names {
            ctx.ui.say(format!("Triggered unit {name} {verb}"))?;
        }
        return Ok(true);
    }
    let errors = wait::unit_states(ctx, names, state, Budget(block.block_attempts)).await?;
    for err in &errors {
        ctx.ui.warn(format!("Error waiting for units: {err}"));
    }
    Ok(errors.is_empty())
}

/// Renders `[a b]` as Go's `%v` of a string slice.
pub fn go_list(names: &[String]) -> String {
    format!("[{}]", names.join(" "))
}

/// Checks that there are units to act on; `No units given` (exit 0)
/// otherwise.
pub fn require_units(ui: &mut Ui, units: &[String]) -> Option<Exit> {
    if units.is_empty() {
        ui.warn("No units given");
        Some(Exit::Success)
    } else {
        None
    }
}

/// What `load` and `start` share: submit the units if needed, set their
/// desired state (`verb`: "load" or "start"), print the global ones and wait
/// for the others. Breaks with the exit status when the command is over
/// early (no units, or a failed wait); otherwise continues with the names
/// waited for.
pub async fn schedule<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    args: &ScheduleArgs,
    command: CreateFor,
    state: TargetState,
    verb: &str,
) -> anyhow::Result<ControlFlow<Exit, Vec<String>>> {
    if let Some(exit) = require_units(ctx.ui, &args.units) {
        return Ok(ControlFlow::Break(exit));
    }
    let known = create_units(
        ctx,
        &args.units,
        args.submit.replace,
        command,
        Budget(args.block.block_attempts),
    )
    .await
    .context("Error creating units")?;
    let names: Vec<String> = args.units.iter().map(|a| units_io::unit_name(a)).collect();
    let triggered = set_target_states(ctx, &names, state, &known)
        .await
        .with_context(|| format!("Error {verb}ing units"))?;
    let waiting = split_global(ctx.ui, &triggered, verb)?;
    if !wait_or_trigger(ctx, &waiting, verb, state, args.block).await? {
        ctx.ui.warn("Error waiting for unit states, exit status: 1");
        return Ok(ControlFlow::Break(Exit::Failure));
    }
    Ok(ControlFlow::Continue(waiting))
}

/// What `stop` and `unload` share once they have chosen their units: set
/// `state` on each (`verb`, `verbing` and `done` name the action in
/// messages: "stop", "stopping", "stopped"), print the global ones, wait for the others and report
/// `Successfully <done> units [...]` or the failure on stderr.
pub async fn change_and_report<'u, A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    units: &[&'u Unit],
    state: TargetState,
    (verb, verbing, done): (&str, &str, &str),
    block: BlockArgs,
) -> anyhow::Result<Exit> {
    let api = ctx.api;
    let mut waiting = Vec::new();
    let set = |u: &'u Unit| async move {
        tracing::debug!(unit = %u.name, %state, "setting target state");
        (u, api.set_unit_target_state(&u.name, state).await)
    };
    let limit = in_flight(units.iter().map(|u| u.name.as_str()));
    let ui = &mut *ctx.ui;
    in_order(units.iter().copied(), limit, set, |(u, result)| {
        result.with_context(|| format!("Error {verbing} unit {}", u.name))?;
        if units_io::is_global(u) {
            ui.say(format!("Triggered global unit {} {verb}", u.name))?;
        } else {
            waiting.push(u.name.clone());
        }
        Ok(())
    })
    .await?;
    if wait_or_trigger(ctx, &waiting, verb, state, block).await? {
        ctx.ui
            .warn(format!("Successfully {done} units {}.", go_list(&waiting)));
        Ok(Exit::Success)
    } else {
        ctx.ui.warn(format!(
            "Failed to {verb} units {}. exit == 1.",
            go_list(&waiting)
        ));
        Ok(Exit::Failure)
    }
}

/// Prints `items` as a pretty JSON array (the listings' `--output json`).
fn print_json<T: serde::Serialize>(ui: &mut Ui, items: &[T]) -> anyhow::Result<Exit> {
    let mut text = serde_json::to_string_pretty(items).context("cannot encode JSON")?;
    text.push('\n');
    ui.print(&text)?;
    Ok(Exit::Success)
}

/// What `list-units` and `list-unit-files` say when the units cannot be
/// listed.
const UNITS_ERROR: &str = "Error retrieving list of units from repository";

/// How a listing's table is drawn: its checked `--fields`, `--full` and
/// whether the legend (header row) is printed (not `--no-legend`).
pub struct Table<'f> {
    /// The columns, in the order given.
    pub fields: Vec<&'f str>,
    /// `--full`: IDs and descriptions are not shortened.
    pub full: bool,
    /// Not `--no-legend`: the header row is printed.
    pub legend: bool,
}

/// What the `list-*` commands share around their own request and table:
/// check `--fields` against the command's `valid` columns (a bad value is
/// reported and fails the command), `fetch` the items (it may end the
/// command with its own status instead), then print them as JSON for
/// `--output json`, else as the table `draw` renders.
pub async fn listing<'c, A, T, F, D>(
    ctx: &mut Ctx<'c, A>,
    list: &ListArgs,
    fields: &str,
    valid: &[&str],
    fetch: F,
    draw: D,
) -> anyhow::Result<Exit>
where
    A: FleetApi,
    T: serde::Serialize,
    F: AsyncFnOnce(&mut Ctx<'c, A>, &[&str]) -> anyhow::Result<Result<Vec<T>, Exit>>,
    D: AsyncFnOnce(&mut Ctx<'c, A>, &Table<'_>, &[T]) -> String,
{
    let fields = match render::parse_fields(fields, valid) {
        Ok(f) => f,
        Err(err) => {
            ctx.ui.warn(err.to_string());
            return Ok(Exit::Failure);
        }
    };
    let items = match fetch(ctx, &fields).await? {
        Ok(items) => items,
        Err(exit) => return Ok(exit),
    };
    if list.output == OutputFormat::Json {
        return print_json(ctx.ui, &items);
    }
    let table = Table {
        fields,
        full: list.full,
        legend: !list.no_legend,
    };
    let text = draw(ctx, &table, &items).await;
    ctx.ui.print(&text)?;
    Ok(Exit::Success)
}
