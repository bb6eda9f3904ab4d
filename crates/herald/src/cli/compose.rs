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
    /// Sign with the DKIM key of the From domain kept in HERALD_DATABASE_URL's store (`herald dkim`), as
    /// `herald serve` would; unsigned when the domain has none.
    #[arg(long)]
    pub sign: bool,
    /// With --sign: a TOML file with the same keys as the environment variables (database_url, secret_key).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
        message_id_domain: args.message_id_domain.clone(),
    });
    // Issue 13: the signature goes first, over the message as composed.
    let signature = if args.sign {
        sign(&args, &message, &composed.to_vec())?
    } else {
        None
    };
    let mut stdout = std::io::stdout().lock();
    if let Some(header) = &signature {
        stdout.write_all(header)?;
    }
    for segment in composed.segments() {
        stdout.write_all(&segment.bytes)?;
    }
    stdout.flush()?;
    if let Some(out) = &args.out {
        let mut bytes = signature.unwrap_or_default();
        bytes.extend_from_slice(&composed.to_vec());
        std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The `DKIM-Signature` header for `bytes`, with the keys in the configured store.
fn sign(
    args: &ComposeArgs,
    message: &herald_mime::Message,
    bytes: &[u8],
) -> anyhow::Result<Option<Vec<u8>>> {
    let config = herald::config::Config::load(args.config.as_deref())?;
    let signing = herald::dkim::Signing::new(config.dkim_secret()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ring = runtime.block_on(async {
        let store = herald::store::Store::open(
            &config.database_url,
            std::sync::Arc::new(herald::clock::SystemClock),
        )
        .await
        .with_context(|| {
            format!(
                "opening the store at {}",
                herald::config::redact_url(&config.database_url)
            )
        })?;
        anyhow::Ok(signing.load(&store).await?)
    })?;
    Ok(ring.sign(message.from().address().ascii_domain(), bytes)?)
}
