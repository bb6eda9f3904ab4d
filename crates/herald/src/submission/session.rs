//! One SMTP submission session (RFC 5321, RFC 6409): the state machine from the greeting to QUIT.
//!
//! Commands are parsed by Stalwart's `smtp-proto` from complete CRLF lines read by [`Wire`]; they are
//! executed strictly in the order received and their replies are queued in that order, so pipelining
//! (RFC 2920) cannot reorder them. The final reply to a message is written only after the store's commit
//! (the same group commit as `POST /v1/messages`); the message is whole in memory before the commit is
//! asked for, so a slow client never holds a commit open.

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use base64::Engine as _;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN, Error as ParseError, Request};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};

use super::{
    Shared,
    message::{self, Envelope, SubmitErrorOrMessage},
    wire::{End, Line, LineFault, Wire, check_lines},
};
use crate::store::Accepted;

/// How a session ended.
pub enum Exit {
    /// QUIT, a closed connection, a timeout or too many errors: close the connection.
    Close,
    /// STARTTLS was answered `220`: the caller does the handshake and starts a new session over TLS.
    StartTls,
}

/// The state of one session (reset by STARTTLS, which starts a new one).
pub struct Session {
    peer: SocketAddr,
    tls: bool,
    greeted: bool,
    authenticated: bool,
    /// MAIL FROM was accepted: the transaction's envelope so far.
    envelope: Option<Envelope>,
    /// BDAT chunks received so far (the flag: whether they outgrew the size limit, always false as an
    /// oversized chunk closes the session).
    chunks: Option<(Vec<u8>, bool)>,
    errors: usize,
    /// The open transaction began without AUTH where AUTH is required: only recipients at the bounce domain
    /// are taken (issue 12; no open relay).
    restricted: bool,
    /// The open transaction's recipients are at the bounce domain (`Some(true)`) or elsewhere
    /// (`Some(false)`); the two never mix in one transaction.
    inbound: Option<bool>,
}

impl Session {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        Self {
            peer,
            tls,
            greeted: false,
            authenticated: false,
            envelope: None,
            chunks: None,
            errors: 0,
            restricted: false,
            inbound: None,
        }
    }

    fn reset(&mut self) {
        self.envelope = None;
        self.chunks = None;
        self.restricted = false;
        self.inbound = None;
    }

    /// AUTH is offered over TLS, and in clear text only to a client on this machine.
    fn may_authenticate(&self) -> bool {
        self.tls || self.peer.ip().is_loopback()
    }
}

/// Runs `session` over `wire` until it ends. `greet`: send the 220 greeting (not after STARTTLS).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    wire: &mut Wire<S>,
    session: &mut Session,
    greet: bool,
    stop: &mut watch::Receiver<bool>,
) -> Exit {
    if greet {
        wire.reply(&format!("220 {} ESMTP Herald", shared.hostname));
    }
    loop {
        let line = match wire.line(shared.settings.command_timeout, stop).await {
            Ok(line) => line,
            Err(end) => return ended(wire, end).await,
        };
        let refused = match line {
            Line::TooLong => {
                wire.reply("500 5.5.2 line too long: at most 1000 octets with CRLF");
                true
            }
            Line::BareLf => {
                wire.reply("500 5.5.2 command lines end with CRLF, not a bare LF");
                true
            }
            Line::Complete(line) => match command(shared, wire, session, &line, stop).await {
                Step::Continue => false,
                Step::Refused => true,
                Step::Exit(exit) => {
                    let _ = wire.flush().await;
                    return exit;
                }
            },
        };
        if refused {
            session.errors += 1;
            if session.errors >= shared.settings.max_errors {
                metrics::counter!("herald_smtp_sessions_closed_for_errors_total").increment(1);
                wire.reply("421 4.7.0 too many errors; closing the connection");
                let _ = wire.flush().await;
                return Exit::Close;
            }
        }
    }
}

/// Says goodbye where the protocol allows one (RFC 5321 §4.5.3.2: 421 on a timeout).
async fn ended<S: AsyncRead + AsyncWrite + Unpin>(wire: &mut Wire<S>, end: End) -> Exit {
    match end {
        End::Closed => {}
        End::Timeout => {
            wire.reply("421 4.4.2 timed out waiting for the client; closing the connection");
            let _ = wire.flush().await;
        }
        End::Stopping => {
            wire.reply("421 4.3.2 the server is shutting down; try again later");
            let _ = wire.flush().await;
        }
    }
    Exit::Close
}

enum Step {
    Continue,
    /// A reply in the 5xx class (counted towards `HERALD_SMTP_MAX_ERRORS`).
    Refused,
    Exit(Exit),
}

/// Executes one command line.
async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    wire: &mut Wire<S>,
    session: &mut Session,
    line: &[u8],
    stop: &mut watch::Receiver<bool>,
) -> Step {
    let request = match Request::parse(&mut line.iter()) {
        Ok(request) => request,
        Err(error) => {
            wire.reply(&match error {
                ParseError::UnknownCommand => "500 5.5.1 unknown command".to_owned(),
                ParseError::InvalidSenderAddress => {
                    "553 5.1.7 the sender address is not valid".into()
                }
                ParseError::InvalidRecipientAddress => {
                    "553 5.1.3 the recipient address is not valid".into()
                }
                ParseError::SyntaxError { syntax } => format!("501 5.5.4 syntax: {syntax}"),
                ParseError::InvalidParameter { param } => {
                    format!("501 5.5.4 invalid parameter {param}")
                }
                ParseError::UnsupportedParameter { param } => {
                    format!("555 5.5.4 unsupported parameter {}", printable(&param))
                }
                _ => "500 5.5.2 syntax error".into(),
            });
            return Step::Refused;
        }
    };
    match request {
        Request::Ehlo { host } => {
            session.greeted = true;
            session.reset();
            ehlo(shared, wire, session, &host);
            Step::Continue
        }
        Request::Helo { .. } => {
            session.greeted = true;
            session.reset();
            wire.reply(&format!("250 {}", shared.hostname));
            Step::Continue
        }
        Request::Lhlo { .. } => {
            wire.reply("500 5.5.1 this is an SMTP server, not LMTP");
            Step::Refused
        }
        Request::StartTls => {
            if session.tls {
                wire.reply("503 5.5.1 TLS is already active");
                return Step::Refused;
            }
            if shared.tls.is_none() {
                wire.reply("502 5.5.1 STARTTLS is not configured here");
                return Step::Refused;
            }
            // RFC 3207 §5 (CVE-2011-0411): nothing sent before the handshake may count as sent after it.
            wire.discard_input();
            wire.reply("220 2.0.0 ready to start TLS");
            Step::Exit(Exit::StartTls)
        }
        Request::Auth {
            mechanism,
            initial_response,
        } => auth(shared, wire, session, mechanism, initial_response, stop).await,
        Request::Mail { from } => {
            if !session.greeted {
                wire.reply("503 5.5.1 send EHLO first");
                return Step::Refused;
            }
            if session.envelope.is_some() {
                wire.reply("503 5.5.1 a transaction is already open; send RSET first");
                return Step::Refused;
            }
            let restricted = !session.authenticated && shared.auth_required().await;
            // With a bounce domain, a client without AUTH may still hand over reports for it: the
            // recipients decide (RCPT below).
            if restricted && shared.bounce.is_none() {
                wire.reply(if session.may_authenticate() {
                    "530 5.7.0 authentication required: AUTH with an API token as the password"
                } else {
                    "530 5.7.0 authentication required: send STARTTLS, then AUTH with an API token"
                });
                return Step::Refused;
            }
            if from.size > shared.size_limit {
                wire.reply(&format!(
                    "552 5.3.4 the message is larger than this server takes ({} octets)",
                    shared.size_limit
                ));
                return Step::Refused;
            }
            let sender = from.address.trim();
            // RFC 3464 §2 / RFC 5321 §4.5.5: reports come from the null reverse path; with a bounce domain
            // the recipients decide whether it is allowed (RCPT below).
            let null_allowed = shared.bounce.is_some();
            if sender.is_empty() && !null_allowed {
                wire.reply(
                    "553 5.1.7 a submission needs a sender address (MAIL FROM:<you@example.com>)",
                );
                return Step::Refused;
            }
            if !sender.is_empty()
                && let Err(error) = herald_mime::Address::parse(sender)
            {
                wire.reply(&format!(
                    "553 5.1.7 the sender address is not valid: {}",
                    printable(&error.to_string())
                ));
                return Step::Refused;
            }
            session.envelope = Some(Envelope {
                sender: if sender.is_empty() {
                    String::new()
                } else {
                    ascii_address(sender)
                },
                recipients: Vec::new(),
            });
            session.restricted = restricted;
            session.inbound = None;
            wire.reply("250 2.1.0 sender ok");
            Step::Continue
        }
        Request::Rcpt { to } => {
            let Some(envelope) = session.envelope.as_mut() else {
                wire.reply("503 5.5.1 send MAIL FROM first");
                return Step::Refused;
            };
            let address = to.address.trim();
            if let Err(error) = herald_mime::Address::parse(address) {
                wire.reply(&format!(
                    "553 5.1.3 the recipient address is not valid: {}",
                    printable(&error.to_string())
                ));
                return Step::Refused;
            }
            let address = ascii_address(address);
            let inbound = shared
                .bounce
                .as_ref()
                .is_some_and(|bounce| bounce.verp.is_ours(&address));
            if !inbound {
                if session.restricted {
                    // Only the bounce domain takes mail without AUTH: anything else would be an open relay.
                    wire.reply(if session.may_authenticate() {
                        "530 5.7.0 authentication required: AUTH with an API token as the password"
                    } else {
                        "530 5.7.0 authentication required: send STARTTLS, then AUTH with an API token"
                    });
                    return Step::Refused;
                }
                if envelope.sender.is_empty() {
                    wire.reply(
                        "553 5.1.7 a submission needs a sender address (MAIL FROM:<you@example.com>)",
                    );
                    return Step::Refused;
                }
            }
            if session.inbound.is_some_and(|open| open != inbound) {
                // RFC 5321 §4.5.3.1.10: 452 lets the client send the others in a transaction of their own.
                wire.reply(
                    "452 4.5.3 mail for the bounce domain and other mail go in separate transactions",
                );
                return Step::Continue;
            }
            if envelope
                .recipients
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&address))
            {
                wire.reply("250 2.1.5 recipient ok (already given)");
                return Step::Continue;
            }
            if inbound
                && envelope.recipients.is_empty()
                && let Some(bounce) = &shared.bounce
                && !bounce.admit(session.peer.ip())
            {
                metrics::counter!("herald_inbound_rate_limited_total").increment(1);
                wire.reply("451 4.7.1 too many reports from this address; try again later");
                return Step::Continue;
            }
            let limit = shared.state.service.limits.recipients;
            if envelope.recipients.len() >= limit {
                // RFC 5321 §4.5.3.1.10: a 452 lets the client send the rest in another transaction.
                wire.reply(&format!(
                    "452 4.5.3 too many recipients: at most {limit} per message"
                ));
                return Step::Continue;
            }
            envelope.recipients.push(address);
            session.inbound = Some(inbound);
            wire.reply("250 2.1.5 recipient ok");
            Step::Continue
        }
        Request::Data => {
            if session.chunks.is_some() {
                wire.reply("503 5.5.1 BDAT was used for this message; finish it with BDAT LAST");
                return Step::Refused;
            }
            if !has_recipients(wire, session) {
                return Step::Refused;
            }
            wire.reply("354 end the message with <CRLF>.<CRLF>");
            let limit = match (&shared.bounce, session.inbound) {
                (Some(bounce), Some(true)) => bounce.max_size,
                _ => shared.size_limit,
            };
            let data = match wire.data(limit, shared.settings.data_timeout).await {
                Ok(data) => data,
                Err(end) => {
                    // A client that vanished mid-message: nothing of it is stored.
                    metrics::counter!("herald_smtp_messages_abandoned_total").increment(1);
                    return Step::Exit(ended(wire, end).await);
                }
            };
            let envelope = session.envelope.take().expect("checked above");
            if session.inbound == Some(true) {
                return finish_inbound(shared, wire, session, envelope, data.bytes, data.oversized)
                    .await;
            }
            finish(shared, wire, envelope, data.bytes, data.oversized).await
        }
        Request::Bdat {
            chunk_size,
            is_last,
        } => {
            if session
                .envelope
                .as_ref()
                .is_none_or(|e| e.recipients.is_empty())
            {
                // The chunk is read and dropped, so the next command is read where it starts.
                if let Err(end) = wire
                    .chunk(chunk_size, None, shared.settings.data_timeout)
                    .await
                {
                    return Step::Exit(ended(wire, end).await);
                }
                wire.reply("503 5.5.1 send MAIL FROM and RCPT TO first");
                return Step::Refused;
            }
            let (bytes, _) = session.chunks.get_or_insert_with(|| (Vec::new(), false));
            if bytes.len().saturating_add(chunk_size) > shared.size_limit {
                // Reading a chunk of any declared size just to drop it would let a client hold the
                // session for the whole data timeout: refuse and close (RFC 3030 §4: the state is lost).
                metrics::counter!("herald_smtp_messages_abandoned_total").increment(1);
                wire.reply(&format!(
                    "552 5.3.4 the message is larger than this server takes ({} octets); nothing was queued",
                    shared.size_limit
                ));
                return Step::Exit(Exit::Close);
            }
            if let Err(end) = wire
                .chunk(chunk_size, Some(bytes), shared.settings.data_timeout)
                .await
            {
                metrics::counter!("herald_smtp_messages_abandoned_total").increment(1);
                return Step::Exit(ended(wire, end).await);
            }
            if !is_last {
                wire.reply(&format!("250 2.0.0 {chunk_size} octets received"));
                return Step::Continue;
            }
            let (bytes, oversized) = session.chunks.take().expect("inserted above");
            let envelope = session.envelope.take().expect("checked above");
            if session.inbound == Some(true) {
                return finish_inbound(shared, wire, session, envelope, bytes, oversized).await;
            }
            finish(shared, wire, envelope, bytes, oversized).await
        }
        Request::Rset => {
            session.reset();
            wire.reply("250 2.0.0 reset");
            Step::Continue
        }
        Request::Noop { .. } => {
            wire.reply("250 2.0.0 ok");
            Step::Continue
        }
        Request::Quit => {
            wire.reply("221 2.0.0 bye");
            Step::Exit(Exit::Close)
        }
        Request::Help { .. } => {
            wire.reply(
                "214 2.0.0 Herald SMTP submission: EHLO, STARTTLS, AUTH PLAIN|LOGIN, MAIL, RCPT, DATA, BDAT, \
                 RSET, NOOP, VRFY, QUIT; the password is a Herald API token",
            );
            Step::Continue
        }
        Request::Vrfy { .. } => {
            // RFC 5321 §3.5.3: no verification, but the address will be tried.
            wire.reply("252 2.1.5 cannot verify, but will take the message and try to deliver it");
            Step::Continue
        }
        Request::Expn { .. }
        | Request::Etrn { .. }
        | Request::Atrn { .. }
        | Request::Burl { .. } => {
            wire.reply("502 5.5.1 command not implemented");
            Step::Refused
        }
    }
}

/// The EHLO reply with the extensions this session may use.
fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    wire: &mut Wire<S>,
    session: &Session,
    host: &str,
) {
    let mut lines = vec![
        format!("{} greets {}", shared.hostname, printable(host)),
        "PIPELINING".to_owned(),
        format!("SIZE {}", shared.size_limit),
        "8BITMIME".to_owned(),
        "SMTPUTF8".to_owned(),
        "ENHANCEDSTATUSCODES".to_owned(),
        "CHUNKING".to_owned(),
    ];
    if shared.tls.is_some() && !session.tls {
        lines.push("STARTTLS".to_owned());
    }
    if session.may_authenticate() {
        lines.push("AUTH PLAIN LOGIN".to_owned());
    }
    lines.push("HELP".to_owned());
    let last = lines.len() - 1;
    for (i, line) in lines.iter().enumerate() {
        wire.reply(&format!("250{}{line}", if i == last { ' ' } else { '-' }));
    }
}

fn has_recipients<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    session: &Session,
) -> bool {
    match &session.envelope {
        None => {
            wire.reply("503 5.5.1 send MAIL FROM first");
            false
        }
        Some(envelope) if envelope.recipients.is_empty() => {
            wire.reply("554 5.5.1 no valid recipients");
            false
        }
        Some(_) => true,
    }
}

/// Checks the received message, stores it durably and answers: `250` only after the commit.
async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    wire: &mut Wire<S>,
    envelope: Envelope,
    mut bytes: Vec<u8>,
    oversized: bool,
) -> Step {
    if oversized {
        wire.reply(&format!(
            "552 5.3.4 the message is larger than this server takes ({} octets); nothing was queued",
            shared.size_limit
        ));
        return Step::Refused;
    }
    // BDAT content need not end with a line end; DATA's always does.
    if !bytes.is_empty() && !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    match check_lines(&bytes) {
        Ok(()) => {}
        Err(LineFault::Bare { line }) => {
            wire.reply(&format!(
                "550 5.6.0 bare CR or LF in line {line}: lines end with CRLF; nothing was queued"
            ));
            return Step::Refused;
        }
        Err(LineFault::TooLong { line }) => {
            wire.reply(&format!(
                "500 5.5.2 line {line} is longer than 1000 octets with CRLF (RFC 5321 §4.5.3.1.6); nothing was queued"
            ));
            return Step::Refused;
        }
    }
    let message =
        match message::new_message(bytes, &envelope, &shared.state.service, &shared.hostname) {
            Ok(message) => message,
            Err(SubmitErrorOrMessage::Message(error)) => {
                wire.reply(&format!(
                    "554 5.6.0 {}; nothing was queued",
                    printable(&error.to_string())
                ));
                return Step::Refused;
            }
            Err(SubmitErrorOrMessage::Submit(error)) => {
                tracing::warn!(%error, "an SMTP submission could not be checked");
                wire.reply("451 4.3.0 the message could not be queued; try again later");
                return Step::Continue;
            }
        };
    match shared.state.service.accept_submitted(message).await {
        Ok(accepted) => {
            metrics::counter!("herald_smtp_messages_accepted_total").increment(1);
            match accepted {
                Accepted::Existing { id, .. } => wire.reply(&format!(
                    "250 2.0.0 already queued as {id} (same X-Herald-Idempotency-Key)"
                )),
                accepted => wire.reply(&format!("250 2.0.0 queued as {}", accepted.id())),
            }
            Step::Continue
        }
        Err(error) => {
            tracing::warn!(%error, "storing an SMTP submission failed");
            wire.reply("451 4.3.0 the message could not be queued; try again later");
            Step::Continue
        }
    }
}

/// Hands a report for the bounce domain to the intake (issue 12) and answers: `250` once it was applied or
/// kept (either is committed), `451` when the store failed (the sending MTA tries again).
async fn finish_inbound<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    wire: &mut Wire<S>,
    session: &mut Session,
    envelope: Envelope,
    mut bytes: Vec<u8>,
    oversized: bool,
) -> Step {
    session.inbound = None;
    session.restricted = false;
    let Some(bounce) = &shared.bounce else {
        wire.reply("451 4.3.0 the bounce intake is not configured; try again later");
        return Step::Continue;
    };
    let truncated = oversized || bytes.len() > bounce.max_size;
    bytes.truncate(bounce.max_size);
    let received = crate::bounce::intake::Received {
        peer: session.peer.to_string(),
        mail_from: envelope.sender,
        rcpt_to: envelope.recipients,
        bytes,
        truncated,
    };
    match bounce.receive(&shared.state.service, received).await {
        Ok(crate::bounce::intake::Outcome::Applied { recipients }) => {
            wire.reply(&format!(
                "250 2.0.0 report applied to {recipients} recipient(s)"
            ));
        }
        Ok(crate::bounce::intake::Outcome::Kept { id, .. }) => {
            wire.reply(&format!("250 2.0.0 kept for inspection as {id}"));
        }
        Err(error) => {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "storing a received report failed"
            );
            wire.reply("451 4.3.0 the report could not be stored; try again later");
        }
    }
    Step::Continue
}

/// AUTH PLAIN (RFC 4616) and LOGIN: the password is an API token, the user name is free.
async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    wire: &mut Wire<S>,
    session: &mut Session,
    mechanism: u64,
    initial: Cow<'_, str>,
    stop: &mut watch::Receiver<bool>,
) -> Step {
    if session.authenticated {
        wire.reply("503 5.5.1 already authenticated");
        return Step::Refused;
    }
    if session.envelope.is_some() {
        wire.reply("503 5.5.1 AUTH is not allowed during a transaction");
        return Step::Refused;
    }
    if !session.may_authenticate() {
        // RFC 4954 §4: no password in clear text over the network.
        wire.reply("538 5.7.11 encryption required: send STARTTLS first");
        return Step::Refused;
    }
    let client = super::client_of(session.peer);
    if let Some(wait) = shared.failures.refused_for(client) {
        wire.reply(&format!(
            "454 4.7.0 too many failed authentications from this address; retry in {} s",
            wait.as_secs().max(1)
        ));
        return Step::Continue;
    }
    let initial = initial.trim();
    let password = if mechanism == AUTH_PLAIN {
        let response = if initial.is_empty() {
            wire.reply("334 ");
            match read_response(shared, wire, stop).await {
                Ok(Some(response)) => response,
                Ok(None) => return cancelled(wire),
                Err(step) => return step,
            }
        } else {
            initial.to_owned()
        };
        // authzid NUL authcid NUL password
        match decode(&response).map(|plain| {
            plain
                .splitn(3, |&b| b == 0)
                .nth(2)
                .map(|p| String::from_utf8_lossy(p).into_owned())
        }) {
            Some(Some(password)) => password,
            _ => {
                wire.reply("501 5.5.2 AUTH PLAIN: not base64 of authzid NUL user NUL password");
                return Step::Refused;
            }
        }
    } else if mechanism == AUTH_LOGIN {
        if initial.is_empty() {
            wire.reply("334 VXNlcm5hbWU6");
            match read_response(shared, wire, stop).await {
                Ok(Some(_user)) => {}
                Ok(None) => return cancelled(wire),
                Err(step) => return step,
            }
        }
        wire.reply("334 UGFzc3dvcmQ6");
        let response = match read_response(shared, wire, stop).await {
            Ok(Some(response)) => response,
            Ok(None) => return cancelled(wire),
            Err(step) => return step,
        };
        match decode(&response) {
            Some(password) => String::from_utf8_lossy(&password).into_owned(),
            None => {
                wire.reply("501 5.5.2 AUTH LOGIN: the password is not base64");
                return Step::Refused;
            }
        }
    } else {
        wire.reply("504 5.5.4 unsupported mechanism: use AUTH PLAIN or AUTH LOGIN");
        return Step::Refused;
    };
    match shared.password_ok(&password).await {
        Ok(true) => {
            session.authenticated = true;
            wire.reply("235 2.7.0 authenticated");
            Step::Continue
        }
        Ok(false) => {
            shared.failures.record(client);
            tracing::info!(peer = %session.peer, "SMTP AUTH refused: the password is not a valid API token");
            wire.reply("535 5.7.8 authentication failed: the password must be a Herald API token");
            Step::Refused
        }
        Err(error) => {
            tracing::warn!(%error, "checking an SMTP password against the stored tokens failed");
            wire.reply("454 4.7.0 temporary authentication failure; try again later");
            Step::Continue
        }
    }
}

/// A line of an AUTH exchange: `None` when the client cancels with `*` (RFC 4954 §4).
async fn read_response<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    wire: &mut Wire<S>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<String>, Step> {
    match wire.line(shared.settings.command_timeout, stop).await {
        Ok(Line::Complete(line)) => {
            let text = String::from_utf8_lossy(&line).trim().to_owned();
            Ok((text != "*").then_some(text))
        }
        Ok(Line::TooLong | Line::BareLf) => {
            wire.reply(
                "500 5.5.2 the AUTH response is not a line of at most 1000 octets with CRLF",
            );
            Err(Step::Refused)
        }
        Err(end) => Err(Step::Exit(ended(wire, end).await)),
    }
}

fn cancelled<S: AsyncRead + AsyncWrite + Unpin>(wire: &mut Wire<S>) -> Step {
    wire.reply("501 5.0.0 authentication cancelled");
    Step::Refused
}

fn decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// An address for RCPT TO at delivery: punycode domains where the local part allows, as the API stores them.
fn ascii_address(address: &str) -> String {
    herald_mime::Address::parse(address)
        .ok()
        .and_then(|a| a.to_ascii().ok())
        .unwrap_or_else(|| address.to_owned())
}

/// Client text echoed in a reply: printable ASCII only, so a reply cannot be split or forged.
fn printable(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}
