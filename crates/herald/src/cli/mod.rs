//! Command-line interface: one module per subcommand.

use std::process::ExitCode;

use anyhow::bail;
use clap::{Parser, Subcommand};

/// Herald: a real-time email notification service.
///
/// Composes correct MIME mail, queues it durably and delivers it over SMTP.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: HTTP API, dashboard and delivery workers (not yet available).
    Serve,
    /// Manage API tokens (not yet available).
    Token,
}

/// Runs one parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve => bail!(
            "`herald serve` is not yet available: the store, queue and HTTP API are still being built \
             (use `herald compose` and `herald send` meanwhile)"
        ),
        Command::Token => bail!("`herald token` is not yet available: it arrives with `herald serve`"),
    }
}
