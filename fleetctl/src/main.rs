//! fleetctl: the command-line client of fleet.
//!
//! Layout:
//! - `cli`: the command line (clap derive): global flags with their
//!   `FLEETCTL_*` fallbacks, and each command's arguments.
//! - `connect`: the client the global flags ask for (API, tunnelled API, or
//!   etcd).
//! - `ssh`: SSH over ssh-agent with known-hosts checking, for `--tunnel`,
//!   `status`, `journal` and `ssh`.
//! - `cmd`: one module per command, plus what they share (creating units,
//!   setting desired states, waiting).
//! - `units_io`: unit files on disk, name mangling, template lookup.
//! - `render`: pure table rendering, byte-compatible with the original.
//! - `ui`: the messages printed on stdout and stderr.
//!
//! `main` parses, runs, prints an error once (with its causes) and maps the
//! outcome to the exit status, as ripgrep's does.

mod cli;
mod cmd;
mod connect;
mod render;
mod ssh;
mod ui;
mod units_io;

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use anyhow::Context;
use clap::error::ErrorKind;

use crate::cli::{Cli, Command};
use crate::cmd::Exit;
use crate::connect::Client;
use crate::ui::Ui;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The original took `-v` as the first argument for the version.
    if args.get(1).is_some_and(|a| a == "-v") {
        args[1] = "version".into();
    }
    let cli = match cli::parse(&args, |var| std::env::var_os(var)) {
        Ok(cli) => cli,
        Err(cli::ArgsError::Clap(err)) => return usage_error(&err),
        Err(err @ cli::ArgsError::Env { .. }) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.global.debug);
    let mut ui = Ui::stdio();
    match run(cli, &mut ui) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            ui.warn(format!("{err:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Runs the parsed command line.
fn run(cli: Cli, ui: &mut Ui) -> anyhow::Result<Exit> {
    let command = match cli.command {
        _ if cli.global.version => Command::Version,
        Some(command) => command,
        None => {
            ui.print(&cli::command().render_help().to_string())?;
            return Ok(Exit::Success);
        }
    };
    if let Some(exit) = cmd::check_sign(&command, ui) {
        return Ok(exit);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        if !cmd::needs_cluster(&command) {
            return cmd::run_local(command, ui).await;
        }
        let (client, remote) = connect::client(&cli.global, ui)
            .await
            .context("Unable to initialize client")?;
        match client {
            Client::Http(api) => cmd::run(command, &api, ui, &remote).await,
            Client::Etcd(api) => cmd::run(command, &*api, ui, &remote).await,
        }
    });
    // Reading stdin (ssh, fd-forward) blocks a thread that never returns
    // while stdin stays open; don't wait for it.
    runtime.shutdown_background();
    result
}

/// Prints a command-line error (or the help and version clap prints as
/// errors) and returns its status: 0 for help, 2 for misuse.
fn usage_error(err: &clap::Error) -> ExitCode {
    // `fleetctl` alone prints the help and succeeds.
    let code = match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
        _ => 2,
    };
    // Nothing more to do if the terminal is gone.
    let _ = err.print();
    ExitCode::from(code)
}

/// Sends library log events to stderr: warnings, and with `--debug` the
/// debug events too.
fn init_logging(debug: bool) {
    let level = if debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Whether the failure is a closed stdout, which is not worth a message.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
