//! Command-line interface: one module per subcommand.

mod bench_compose;
mod bench_e2e;
mod bench_queries;
mod bench_smtp;
mod bench_store;
mod compose;
// Issue 13.
mod dkim;
mod fixtures;
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
    Bench(BenchCommand),
    /// Manage API tokens: create (printed once), list, revoke.
    Token(token::TokenArgs),
    /// Manage DKIM keys: generate (prints the DNS record), list, rotate, remove.
    Dkim(dkim::DkimArgs),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Build standard notifications (../shared/bench) and print messages/s.
    Compose(bench_compose::BenchComposeArgs),
    /// Send standard notifications to an SMTP relay and print msg/s and client CPU µs/msg.
    Smtp(bench_smtp::BenchSmtpArgs),
    /// Measure a running `herald serve` end to end: HTTP API → store → relay (see scripts/bench-e2e).
    E2e(bench_e2e::BenchE2eArgs),
    /// Accept standard notifications durably from concurrent clients; print accepts/s and bytes stored.
    Store(bench_store::BenchStoreArgs),
    /// Fill the queue and measure claim latency and resident memory at several lengths.
    Queue(bench_store::BenchQueueArgs),
    /// Fill an archive (1,000,000 messages by default) and time the dashboard's reads: p50 and p99.
    Queries(bench_queries::BenchQueriesArgs),
}

/// Runs one parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Compose(args) => compose::run(args),
        Command::Send(args) => send::run(args),
        Command::Bench(BenchCommand::Compose(args)) => bench_compose::run(args),
        Command::Bench(BenchCommand::Smtp(args)) => bench_smtp::run(args),
        Command::Bench(BenchCommand::E2e(args)) => bench_e2e::run(args),
        Command::Bench(BenchCommand::Store(args)) => bench_store::run_store(args),
        Command::Bench(BenchCommand::Queue(args)) => bench_store::run_queue(args),
        Command::Bench(BenchCommand::Queries(args)) => bench_queries::run(args),
        Command::Token(args) => token::run(args),
        Command::Dkim(args) => dkim::run(args),
    }
}
