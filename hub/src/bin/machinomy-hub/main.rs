//! `machinomy-hub`: the daemon and its admin CLI.

mod cli;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match cli::execute(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line: the error and its causes, joined.
            eprintln!("machinomy-hub: {e:#}");
            ExitCode::FAILURE
        }
    }
}
