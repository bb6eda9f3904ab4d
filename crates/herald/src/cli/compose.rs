//! `herald compose` (placeholder until it is built).

use std::process::ExitCode;

use anyhow::bail;

#[derive(Debug, clap::Args)]
pub struct ComposeArgs {}

pub fn run(_args: ComposeArgs) -> anyhow::Result<ExitCode> {
    bail!("`herald compose` is not yet available")
}
