//! `fleetctl submit UNIT...`: upload units without scheduling them.

use anyhow::Context;
use fleetd::client::FleetApi;

use super::{Budget, CreateFor, Ctx, Exit};
use crate::cli::SubmitArgs;

/// Upload one or more units to the cluster without starting them.
///
/// Useful for validating units before they are started.
///
/// This operation is idempotent; if a named unit already exists in the
/// cluster, it will not be resubmitted (unless --replace is given and the
/// local file differs).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// --replace and --sign.
    #[command(flatten)]
    pub submit: SubmitArgs,
    /// Unit files or names.
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// Creates the missing units (desired state inactive) and waits, without
/// limit, until each reports its state.
pub async fn run<A: FleetApi>(args: &Args, ctx: &mut Ctx<'_, A>) -> anyhow::Result<Exit> {
    if let Some(exit) = super::require_units(ctx.ui, &args.units) {
        return Ok(exit);
    }
    super::create_units(
        ctx,
        &args.units,
        args.submit.replace,
        CreateFor::Submit,
        Budget(0),
    )
    .await
    .context("Error creating units")?;
    Ok(Exit::Success)
}
