//! `fleetctl completion SHELL`: shell completions, generated from the clap
//! definitions (so they never drift from the real flags).

use clap::CommandFactory;
use clap_complete::Shell;

use super::Exit;
use crate::cli::Cli;
use crate::ui::Ui;

/// Print a shell completion script.
///
/// Load it with, for example, `source <(fleetctl completion bash)`, or save
/// it where your shell looks for completions.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Prints the script on stdout.
pub fn run(args: &Args, ui: &mut Ui) -> anyhow::Result<Exit> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "fleetctl", &mut script);
    ui.print(&String::from_utf8_lossy(&script))?;
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::testing::capture;

    #[test]
    fn scripts_name_the_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let (mut ui, out, _) = capture();
            assert_eq!(run(&Args { shell }, &mut ui).unwrap(), Exit::Success);
            let text = out.text();
            assert!(text.contains("list-unit-files"), "{shell}: {text}");
            assert!(text.contains("block-attempts"), "{shell}");
        }
    }
}
