//! `fleetctl version` (also `--version` and `-v`).

use super::Exit;
use crate::ui::Ui;

/// Prints `fleetctl version <v>`.
pub fn run(ui: &mut Ui) -> anyhow::Result<Exit> {
    ui.say(format!("fleetctl version {}", fleetd::VERSION))?;
    Ok(Exit::Success)
}
