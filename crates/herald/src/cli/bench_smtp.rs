//! `herald bench smtp` (placeholder until it is built).

use std::process::ExitCode;

use anyhow::bail;

#[derive(Debug, clap::Args)]
pub struct BenchSmtpArgs {}

pub fn run(_args: BenchSmtpArgs) -> anyhow::Result<ExitCode> {
    bail!("`herald bench smtp` is not yet available")
}
