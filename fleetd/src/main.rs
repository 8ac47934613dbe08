//! `fleetd`: parse the command line, read the config, set up logging, take
//! the API listeners, and hand over to [`fleetd::daemon::main`].

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
    let config = match config::load(args.clone(), |k| std::env::var(k).ok()) {
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
    // Debug builds keep large futures on the stack; 8 MiB per worker leaves
    // ample headroom over tokio's 2 MiB default.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleetd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP reads the same sources again.
    let reload = move || Ok(config::load(args.clone(), |k| std::env::var(k).ok())?);
    match runtime.block_on(daemon::main(config, reload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
