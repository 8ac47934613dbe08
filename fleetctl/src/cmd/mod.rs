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

pub mod cat;
pub mod destroy;
pub mod list_machines;
pub mod list_unit_files;
pub mod list_units;
pub mod load;
pub mod start;
pub mod stop;
pub mod submit;
pub mod unload;
pub mod version;
mod wait;

use std::collections::HashMap;

use anyhow::{Context, anyhow};
use fleetd::client::FleetApi;
use fleetd::schema::{TargetState, Unit};
use units::UnitName;

use crate::cli::Command;
use crate::render::{self, MachineIndex, go_quote};
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
}

impl Exit {
    /// The exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
        }
    }
}

/// What a command runs with: the API, the output, and a cache of machines.
pub struct Ctx<'a, A> {
    /// The cluster.
    pub api: &'a A,
    /// Where messages go.
    pub ui: &'a mut Ui,
    /// Machines by ID, fetched once when first needed (the original's
    /// `cachedMachineState`); `None` until then.
    machines: Option<MachineIndex>,
}

impl<'a, A: FleetApi> Ctx<'a, A> {
    /// A context over `api` writing to `ui`.
    pub fn new(api: &'a A, ui: &'a mut Ui) -> Self {
        Ctx {
            api,
            ui,
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

/// Runs a command that needs the cluster. `version` and the help never get
/// here.
pub async fn run<A: FleetApi>(command: Command, api: &A, ui: &mut Ui) -> anyhow::Result<Exit> {
    let mut ctx = Ctx::new(api, ui);
    match command {
        Command::Cat(a) => cat::run(&a, &mut ctx).await,
        Command::Destroy(a) => destroy::run(&a, &mut ctx).await,
        Command::ListMachines(a) => list_machines::run(&a, &mut ctx).await,
        Command::ListUnitFiles(a) => list_unit_files::run(&a, &mut ctx).await,
        Command::ListUnits(a) => list_units::run(&a, &mut ctx).await,
        Command::Load(a) => load::run(&a, &mut ctx).await,
        Command::Start(a) => start::run(&a, &mut ctx).await,
        Command::Stop(a) => stop::run(&a, &mut ctx).await,
        Command::Submit(a) => submit::run(&a, &mut ctx).await,
        Command::Unload(a) => unload::run(&a, &mut ctx).await,
        Command::Version => version::run(ctx.ui),
    }
}

/// Whether the command talks to the cluster (everything but `version`).
pub fn needs_cluster(command: &Command) -> bool {
    !matches!(command, Command::Version)
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

/// Sets the desired state of each named unit that is not already there and
/// returns those units (as they were before), in order (Go's
/// `setTargetStateOfUnits`). Stops at the first error.
pub async fn set_target_states<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    names: &[String],
    state: TargetState,
) -> anyhow::Result<Vec<Unit>> {
    let mut triggered = Vec::new();
    for name in names {
        let unit = ctx
            .api
            .unit(name)
            .await
            .with_context(|| format!("error retrieving unit {name} from registry"))?
            .ok_or_else(|| anyhow!("unable to find unit {name}"))?;
        if unit.desired_state == Some(state) {
            tracing::debug!(unit = %name, %state, "unit already in desired state, skipping");
            continue;
        }
        tracing::debug!(unit = %name, %state, "setting unit target state");
        ctx.api.set_unit_target_state(name, state).await?;
        triggered.push(unit);
    }
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
    fn may_replace(self, desired: Option<TargetState>) -> bool {
        match self {
            CreateFor::Start => true,
            CreateFor::Load => matches!(desired, Some(TargetState::Inactive | TargetState::Loaded)),
            CreateFor::Submit => desired == Some(TargetState::Inactive),
        }
    }
}

/// Makes sure every argument's unit exists in the registry (Go's
/// `lazyCreateUnits`): existing units are kept (or replaced with
/// `replace`, when the local file differs and the command allows it),
/// missing ones are created from their file or template. Then waits for each
/// created unit to report `inactive`, printing `Unit <name> <state>`.
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
) -> anyhow::Result<()> {
    let mut created = Vec::new();
    for arg in args {
        let arg = units_io::append_default_type(arg);
        let name = units_io::unit_name(&arg);
        if !should_create(ctx, &arg, &name, replace, command).await? {
            continue;
        }
        let file = units_io::unit_file_for(ctx.api, &arg, replace, ctx.ui).await?;
        create_unit(ctx, &name, &file).await?;
        created.push(name);
    }
    let errors = wait::unit_states(ctx, &created, TargetState::Inactive, budget).await?;
    for err in &errors {
        ctx.ui
            .warn(format!("Error waiting on unit creation: {err}"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("One or more errors creating units"))
    }
}

/// Go's `checkUnitCreation`: whether `arg`'s unit must be (re)created.
async fn should_create<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    arg: &str,
    name: &str,
    replace: bool,
    command: CreateFor,
) -> anyhow::Result<bool> {
    let existing = ctx
        .api
        .unit(name)
        .await
        .with_context(|| format!("error retrieving Unit({name}) from Registry"))?;
    let Some(unit) = existing else {
        return Ok(true);
    };
    let matched = match units_io::compare_local(arg, &unit, replace, ctx.ui) {
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
            ctx.ui.warn(format!(
                "Warning: can not replace Unit({name}) in state '{state}', use the appropriate command"
            ));
        }
        (true, LocalMatch::Same) => {
            ctx.ui.say(format!(
                "Found same Unit({name}) in Registry, nothing to do"
            ))?;
        }
        _ => tracing::debug!(unit = %name, "unit found in registry, no need to recreate it"),
    }
    Ok(false)
}

/// Validates and submits one unit (Go's `createUnit`): the name and the
/// `[X-Fleet]` combinations must be valid; unknown `[X-Fleet]` keys only
/// warn.
async fn create_unit<A: FleetApi>(
    ctx: &mut Ctx<'_, A>,
    name: &str,
    file: &units::UnitFile,
) -> anyhow::Result<()> {
    let unit_name: UnitName = name.parse()?;
    let requirements = units::validate_options(&unit_name, file)?;
    for key in &requirements.unrecognized {
        ctx.ui.warn(format!(
            "WARNING: Unit {name}: unrecognized requirement in [X-Fleet] section: {}",
            go_quote(key)
        ));
    }
    let unit = Unit {
        name: name.to_owned(),
        options: units_io::options_of(file),
        ..Unit::default()
    };
    ctx.api
        .create_unit(&unit)
        .await
        .with_context(|| format!("failed creating unit {name}"))?;
    tracing::debug!(unit = %name, "created unit in registry");
    Ok(())
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
    block: crate::cli::BlockArgs,
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
