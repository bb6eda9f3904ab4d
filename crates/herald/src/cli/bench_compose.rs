//! `herald bench compose` (placeholder until it is built).

use std::process::ExitCode;

use anyhow::bail;

#[derive(Debug, clap::Args)]
pub struct BenchComposeArgs {}

pub fn run(_args: BenchComposeArgs) -> anyhow::Result<ExitCode> {
    bail!("`herald bench compose` is not yet available")
}
