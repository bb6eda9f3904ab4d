//! The `herald` binary: one command line for every part of the service.

mod bench;
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            // The whole cause chain once, at the top (STYLE.md: errors).
            eprintln!("herald: {error:#}");
            ExitCode::FAILURE
        }
    }
}
