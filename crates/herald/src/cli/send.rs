//! `herald send`: compose one message (from flags or a request file) and send it through a relay,
//! printing what the server said for every recipient. It replaces the classic
//! `MIMEMultipart` + `smtplib` script.
//!
//! Exit status: 0 when every recipient was accepted; 75 (EX_TEMPFAIL) when every failure is
//! transient, so a retry may succeed; 1 when anything failed permanently or the input is invalid.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, bail};
use herald_smtp::{BodySegment, Client, Delivery, Envelope, Status};

use herald::{
    relay::{PASSWORD_ENV, Relay},
    request::{Files, MessageRequest},
};

/// EX_TEMPFAIL from sysexits.h: try again later.
const EXIT_TEMPFAIL: u8 = 75;

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The relay: smtp://[user[:password]@]host[:port][?tls=opportunistic|none&pool=N&ca=FILE&timeout_s=N&plaintext_auth=loopback]
    /// or smtps://... for implicit TLS. The password may come from HERALD_RELAY_PASSWORD.
    #[arg(
        long,
        env = "HERALD_RELAY_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub relay: String,
    /// A message request in the compose format (JSON); attachment paths are relative to its directory.
    #[arg(long, value_name = "REQUEST.json", conflicts_with_all = ["from", "to", "cc", "bcc", "subject", "text", "html", "attach", "inline"])]
    pub request: Option<PathBuf>,
    /// Sender: "Name <addr>" or addr.
    #[arg(long, required_unless_present = "request")]
    pub from: Option<String>,
    /// Recipient (repeatable).
    #[arg(long, value_name = "ADDRESS")]
    pub to: Vec<String>,
    /// Copy recipient (repeatable).
    #[arg(long, value_name = "ADDRESS")]
    pub cc: Vec<String>,
    /// Blind copy recipient (repeatable; envelope only, never in a header).
    #[arg(long, value_name = "ADDRESS")]
    pub bcc: Vec<String>,
    /// The subject (any language; encoded as needed).
    #[arg(long)]
    pub subject: Option<String>,
    /// The plain-text body.
    #[arg(long)]
    pub text: Option<String>,
    /// A file with the HTML body.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// A file to attach (repeatable).
    #[arg(long, value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// An inline part the HTML shows as cid:NAME (repeatable).
    #[arg(long, value_name = "NAME=FILE")]
    pub inline: Vec<String>,
}

pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let relay = Relay::parse(&args.relay, std::env::var(PASSWORD_ENV).ok())?;
    let (request, base) = match &args.request {
        Some(path) => {
            let json =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let request = MessageRequest::from_json(&json)
                .with_context(|| format!("in {}", path.display()))?;
            (
                request,
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
            )
        }
        None => (request_from_flags(&args)?, PathBuf::from(".")),
    };
    // Validated before connecting: an invalid message is an error without a session.
    let message = request
        .into_message(Files::RelativeTo(&base))
        .context("invalid message")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let client = Client::new(relay.config.clone())?;
        let mut connection = client.connect().await?;
        // Composed once the relay's extensions are known: with 8BITMIME (RFC 6152) UTF-8 text goes out as
        // 8bit (smaller than quoted-printable, readable as is) with BODY=8BITMIME; without it, 7bit only.
        let composed = message.compose(&herald_mime::ComposeOptions {
            allow_8bit: connection.extensions().eight_bit_mime,
            ..Default::default()
        });
        let envelope = envelope_of(composed.envelope());
        let body: Vec<BodySegment> = composed
            .segments()
            .iter()
            .map(|s| BodySegment {
                bytes: s.bytes.clone(),
                dot_safe: s.dot_safe,
            })
            .collect();
        let delivery = connection.send(&envelope, &body).await;
        if delivery.is_ok() {
            connection.quit().await;
        }
        delivery.map(|delivery| (delivery, composed.message_id().to_owned()))
    });
    let address = relay.display_address();
    match result {
        Ok((delivery, message_id)) => Ok(report(&delivery, &message_id, &address)),
        Err(error) => {
            eprintln!("herald: sending to {address} failed: {error}");
            Ok(ExitCode::from(if error.is_transient() {
                EXIT_TEMPFAIL
            } else {
                1
            }))
        }
    }
}

/// The compose-format request the flags describe (so flags and `--request` share one validation).
fn request_from_flags(args: &SendArgs) -> anyhow::Result<MessageRequest> {
    let html = match &args.html {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --html {}", path.display()))?,
        ),
        None => None,
    };
    let mut attachments = Vec::new();
    for path in &args.attach {
        attachments.push(serde_json::json!({ "filename": file_name(path)?, "path": path }));
    }
    for spec in &args.inline {
        let Some((name, path)) = spec
            .split_once('=')
            .filter(|(name, path)| !name.is_empty() && !path.is_empty())
        else {
            bail!("--inline {spec:?}: expected NAME=FILE (the HTML refers to it as cid:NAME)");
        };
        let path = PathBuf::from(path);
        attachments.push(serde_json::json!({ "filename": file_name(&path)?, "path": path, "inline": true, "content_id": name }));
    }
    let request = serde_json::json!({
        "from": args.from,
        "to": args.to,
        "cc": args.cc,
        "bcc": args.bcc,
        "subject": args.subject,
        "text": args.text,
        "html": html,
        "attachments": attachments,
    });
    Ok(MessageRequest::from_json(&serde_json::to_vec(&request)?)?)
}

fn file_name(path: &Path) -> anyhow::Result<String> {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .with_context(|| format!("{} is not a file name", path.display()))
}

/// herald-mime's envelope in SMTP terms: ASCII (punycode) domains unless the local part needs
/// SMTPUTF8.
fn envelope_of(envelope: &herald_mime::Envelope) -> Envelope {
    let smtp =
        |address: &herald_mime::Address| address.to_ascii().unwrap_or_else(|_| address.to_string());
    let mut smtp_envelope =
        Envelope::new(smtp(&envelope.sender), envelope.recipients.iter().map(smtp));
    smtp_envelope.eight_bit = envelope.needs_8bitmime;
    smtp_envelope
}

/// One line per recipient: status, address, the server's reply. Returns the exit code.
fn report(delivery: &Delivery, message_id: &str, address: &str) -> ExitCode {
    println!("sent <{message_id}> via {address}");
    for outcome in &delivery.recipients {
        println!(
            "{:<9} {} {}",
            outcome.status.to_string(),
            outcome.address,
            outcome.reply
        );
    }
    if delivery.all_accepted() {
        return ExitCode::SUCCESS;
    }
    let failed = delivery
        .recipients
        .iter()
        .filter(|r| r.status != Status::Accepted)
        .count();
    eprintln!(
        "herald: {failed} of {} recipients not accepted",
        delivery.recipients.len()
    );
    let permanent = delivery
        .recipients
        .iter()
        .any(|r| r.status == Status::Permanent);
    ExitCode::from(if permanent { 1 } else { EXIT_TEMPFAIL })
}
