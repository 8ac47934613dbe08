//! `fleetd`: parse the command line, read the config, set up logging, take
//! the API listeners, and hand over to [`fleetd::daemon::run`].

use std::process::ExitCode;

use clap::Parser;
use fleetd::config::{self, Args};
use fleetd::daemon;

fn main() -> ExitCode {
    let args = Args::parse_from(config::normalize_go_flags(std::env::args_os()));
    if args.wants_version() {
        println!("fleetd version {}", fleetd::VERSION);
        return ExitCode::SUCCESS;
    }
    if !args.positional.is_empty() {
        eprintln!("fleetd: takes no arguments");
        return ExitCode::FAILURE;
    }
    let config = match config::load(args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleetd: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    daemon::init_logging(config.verbosity);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleetd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::main(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
