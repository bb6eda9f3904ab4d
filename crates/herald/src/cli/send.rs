//! `herald send` (placeholder until it is built).

use std::process::ExitCode;

use anyhow::bail;

#[derive(Debug, clap::Args)]
pub struct SendArgs {}

pub fn run(_args: SendArgs) -> anyhow::Result<ExitCode> {
    bail!("`herald send` is not yet available")
}
