//! `herald bench …`: the subcommands and their dispatch; the workloads are in `crate::bench`.

use std::process::ExitCode;

use clap::Subcommand;

use crate::bench;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Build standard notifications (../shared/bench) and print messages/s.
    Compose(bench::compose::ComposeArgs),
    /// Send standard notifications to an SMTP relay and print msg/s and client CPU µs/msg.
    Smtp(bench::smtp::SmtpArgs),
    /// Measure a running `herald serve` end to end: HTTP API → store → relay (see scripts/bench-e2e).
    E2e(bench::e2e::E2eArgs),
    /// Accept standard notifications durably from concurrent clients; print accepts/s and bytes stored.
    Store(bench::store::StoreArgs),
    /// Fill the queue and measure claim latency and resident memory at several lengths.
    Queue(bench::queue::QueueArgs),
    /// Fill an archive (1,000,000 messages by default) and time the dashboard's reads: p50 and p99.
    Queries(bench::queries::QueriesArgs),
    /// Measure a running `herald serve`'s SMTP submission: alerts/s and p99, idle sessions' memory, a
    /// connection burst (see scripts/bench-submission).
    Submission(bench::submission::SubmissionArgs),
    /// Webhooks (issue 12): events/s signed to a local receiver, state change → 2xx latency at a steady
    /// rate, and the accept hot path with and without the outbox trigger.
    Webhooks(bench::webhooks::WebhooksArgs),
    /// Accept throughput with 0 and with 1,000,000 suppressed addresses, side by side (issue 12).
    Suppressions(bench::suppressions::SuppressionsArgs),
}

/// Runs one bench.
pub fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Compose(args) => bench::compose::run(args),
        BenchCommand::Smtp(args) => bench::smtp::run(args),
        BenchCommand::E2e(args) => bench::e2e::run(args),
        BenchCommand::Store(args) => bench::store::run(args),
        BenchCommand::Queue(args) => bench::queue::run(args),
        BenchCommand::Queries(args) => bench::queries::run(args),
        BenchCommand::Submission(args) => bench::submission::run(args),
        BenchCommand::Webhooks(args) => bench::webhooks::run(args),
        BenchCommand::Suppressions(args) => bench::suppressions::run(args),
    }
}
