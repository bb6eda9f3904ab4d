//! The `herald` binary: one command line for every part of the service.

mod bench;
mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: allocating and freeing (request bodies, messages, SQLite's pages)
/// was about a tenth of the server's CPU on the standard notification end to end (perf, 2026-12-04).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
