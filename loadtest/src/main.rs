//! `herald-load` binary: parses the command line, runs the scenario on a
//! multi-threaded runtime, prints the table, writes the files, and exits
//! non-zero when the run found a problem.

use clap::Parser;
use herald_loadtest::cli::{Cli, Command};
use herald_loadtest::{run, sys, write_outputs};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    sys::raise_nofile_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // The floor server may be pinned to fewer threads, like a node.
    if let Command::Floor(a) = &cli.cmd
        && let Some(n) = a.worker_threads
    {
        builder.worker_threads(n.max(1));
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Idle(a) = &cli.cmd
        && a.worker
    {
        return match rt.block_on(herald_loadtest::idle::worker(a.clone())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: worker: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Floor(a) = &cli.cmd {
        return match rt.block_on(herald_loadtest::floor::serve(a.clone())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: floor: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Abuse(a) = &cli.cmd {
        return herald_loadtest::abuse::main(rt, a.clone());
    }
    let common = cli.cmd.common().clone();
    let report = match rt.block_on(run(cli.cmd)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    let written = write_outputs(&report, &common);
    herald_loadtest::conclude(rt, written, &report.problems)
}
