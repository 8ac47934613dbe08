//! `fleetctl verify`: deprecated, as in the original.

use super::Exit;
use crate::ui::Ui;

/// DEPRECATED - No longer works.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ignored.
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// Warns and exits 2.
pub fn run(ui: &mut Ui) -> Exit {
    ui.warn("WARNING: The signed/verified units feature is DEPRECATED and cannot be used.");
    Exit::Usage
}
