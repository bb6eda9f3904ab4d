//! Command-line interface: one module per subcommand (argument parsing and dispatch; `herald bench`'s
//! workloads are in `crate::bench`).

mod bench;
mod compose;
// Issue 13.
mod dkim;
mod send;
mod serve;
mod token;

use std::process::ExitCode;

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
    /// Run the service: HTTP API, dashboard and delivery workers.
    Serve(serve::ServeArgs),
    /// Compose one message request (JSON) into RFC 5322 bytes.
    Compose(compose::ComposeArgs),
    /// Compose and send one message through an SMTP relay, printing each recipient's result.
    Send(send::SendArgs),
    /// Measure Herald's hot paths.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Manage API tokens: create (printed once), list, revoke.
    Token(token::TokenArgs),
    /// Manage DKIM keys: generate (prints the DNS record), list, rotate, remove.
    Dkim(dkim::DkimArgs),
}

/// Runs one parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Compose(args) => compose::run(args),
        Command::Send(args) => send::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Token(args) => token::run(args),
        Command::Dkim(args) => dkim::run(args),
    }
}
