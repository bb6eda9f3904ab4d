//! `herald compose`: one message request (JSON) in, RFC 5322 bytes out.
//!
//! The same request JSON as the HTTP API's `POST /v1/messages`, so a request
//! can be tried out here before it is sent anywhere.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use herald_mime::ComposeOptions;

use herald::request::{Files, MessageRequest};

#[derive(Debug, clap::Args)]
pub struct ComposeArgs {
    /// The request JSON file (`-` reads standard input).
    pub request: PathBuf,
    /// Also write the message to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The transport has 8BITMIME: UTF-8 text may go out as 8bit.
    #[arg(long = "8bit")]
    pub eight_bit: bool,
    /// Domain for the Message-ID (default: the sender's domain).
    #[arg(long)]
    pub message_id_domain: Option<String>,
}

pub fn run(args: ComposeArgs) -> anyhow::Result<ExitCode> {
    let stdin = args.request.as_os_str() == "-";
    let json = if stdin {
        let mut v = Vec::new();
        std::io::stdin()
            .read_to_end(&mut v)
            .context("reading the request from standard input")?;
        v
    } else {
        std::fs::read(&args.request)
            .with_context(|| format!("reading {}", args.request.display()))?
    };
    // Relative attachment paths resolve against the request file's directory
    // (against the current directory for standard input).
    let dir = if stdin {
        Path::new(".")
    } else {
        args.request.parent().unwrap_or(Path::new("."))
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let message = MessageRequest::from_json(&json)?.into_message(Files::RelativeTo(dir))?;
    let composed = message.compose(&ComposeOptions {
        allow_8bit: args.eight_bit,
        message_id_domain: args.message_id_domain,
    });
    let mut stdout = std::io::stdout().lock();
    for segment in composed.segments() {
        stdout.write_all(&segment.bytes)?;
    }
    stdout.flush()?;
    if let Some(out) = &args.out {
        std::fs::write(out, composed.to_vec())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
