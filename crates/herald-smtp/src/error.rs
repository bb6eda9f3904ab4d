//! Errors in the caller's terms: what failed, at which protocol stage, and whether trying again later
//! can help (`is_transient()` / `is_permanent()`), so the delivery engine never matches strings.
//!
//! An [`Error`] applies to every recipient of the message that was being sent: per-recipient refusals
//! are not errors but [`crate::RecipientOutcome`]s. No variant ever carries a credential: AUTH
//! commands are never formatted into an error, only the server's reply to them.

use std::{fmt, io};

use crate::reply::Reply;

/// The protocol stage at which something happened, for errors and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// TCP connect (including name resolution).
    Connect,
    /// Waiting for the server's 220 greeting.
    Greeting,
    /// EHLO (or the HELO fallback).
    Ehlo,
    /// The STARTTLS command and its reply.
    StartTls,
    /// The TLS handshake (implicit TLS or after STARTTLS).
    TlsHandshake,
    /// AUTH and its challenges.
    Auth,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO.
    RcptTo,
    /// The DATA command (waiting for 354) or, with CHUNKING, the BDAT command.
    Data,
    /// Sending the message content.
    DataBlock,
    /// Waiting for the reply to the end of the message content (the final reply).
    DataEnd,
    /// RSET.
    Rset,
    /// QUIT.
    Quit,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::TlsHandshake => "TLS handshake",
            Stage::Auth => "AUTH",
            Stage::MailFrom => "MAIL FROM",
            Stage::RcptTo => "RCPT TO",
            Stage::Data => "DATA",
            Stage::DataBlock => "message content",
            Stage::DataEnd => "end of data",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        })
    }
}

/// Everything that can make a connection or a whole transaction fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be made (refused, unreachable, name not resolved).
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed for a reason other than the certificate (protocol, alert, reset).
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    /// The server's certificate did not verify (unknown issuer, wrong name, expired …).
    #[error("TLS certificate verification of {host} failed: {reason}")]
    CertificateVerification { host: String, reason: String },
    /// The TLS client configuration could not be built (unreadable CA file, no trust roots).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// TLS is required but the server does not offer STARTTLS.
    #[error("{host} does not offer STARTTLS and the relay configuration requires TLS")]
    StartTlsUnavailable { host: String },
    /// Credentials are configured but the connection is not encrypted (and plaintext AUTH on
    /// loopback was not explicitly allowed), so they were not sent.
    #[error("refusing to send credentials to {host} without TLS")]
    AuthWithoutTls { host: String },
    /// The server offers none of the mechanisms Herald can use with these credentials.
    #[error("{host} offers no usable AUTH mechanism (offered: {offered})")]
    AuthUnsupported { host: String, offered: String },
    /// The server refused the credentials (535 is permanent: fix the credentials; 454 is transient).
    #[error("authentication failed: {reply}")]
    AuthFailed { reply: Reply },
    /// No reply (or no progress writing) within the configured time for this stage.
    #[error("timed out at {stage}")]
    Timeout { stage: Stage },
    /// The server closed the connection (or it broke). When `outcome_unknown` is true the whole
    /// message had been sent and the final reply was lost: the message may have been accepted.
    #[error("connection lost at {stage}{}", if *outcome_unknown { " (outcome unknown: the message was sent, the reply was lost)" } else { "" })]
    ConnectionLost { stage: Stage, outcome_unknown: bool },
    /// The server refused at a stage that applies to the whole message (greeting, EHLO, MAIL FROM,
    /// or any 421 "closing connection").
    #[error("{stage} refused: {reply}")]
    Rejected { stage: Stage, reply: Reply },
    /// The message is larger than the server's announced SIZE limit; nothing was sent.
    #[error("message of {size} bytes exceeds the server's SIZE limit of {limit} bytes")]
    MessageTooBig { size: u64, limit: u64 },
    /// The message needs an extension the server does not offer (SMTPUTF8, 8BITMIME).
    #[error("the message needs {extension}, which the server does not offer")]
    ExtensionRequired { extension: &'static str },
    /// An address cannot be put in an SMTP command (contains CR, LF, '<' or '>'), or there are no
    /// recipients.
    #[error("invalid envelope: {0}")]
    InvalidEnvelope(String),
    /// The server broke the protocol (malformed or unexpected reply).
    #[error("protocol error at {stage}: {detail}")]
    Protocol { stage: Stage, detail: String },
    /// Any other I/O failure at a stage.
    #[error("I/O error at {stage}: {source}")]
    Io {
        stage: Stage,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True when trying again later can succeed: network trouble, timeouts, 4xx replies.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::Tls { .. }
            | Error::Timeout { .. }
            | Error::ConnectionLost { .. }
            | Error::Io { .. } => true,
            Error::AuthFailed { reply } | Error::Rejected { reply, .. } => !reply.is_permanent(),
            // A malformed reply is more likely a broken connection or middlebox than a fixed
            // property of the server; retrying is the safer answer.
            Error::Protocol { .. } => true,
            Error::CertificateVerification { .. }
            | Error::TlsConfig(_)
            | Error::StartTlsUnavailable { .. }
            | Error::AuthWithoutTls { .. }
            | Error::AuthUnsupported { .. }
            | Error::MessageTooBig { .. }
            | Error::ExtensionRequired { .. }
            | Error::InvalidEnvelope(_) => false,
        }
    }

    /// True when retrying the same message against the same relay cannot succeed.
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }

    /// The server's reply that caused the error, if there was one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Error::AuthFailed { reply } | Error::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// The stage at which the error happened, when it is tied to one.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            Error::Connect { .. } => Some(Stage::Connect),
            Error::Tls { .. } | Error::CertificateVerification { .. } => Some(Stage::TlsHandshake),
            Error::StartTlsUnavailable { .. } => Some(Stage::StartTls),
            Error::AuthWithoutTls { .. }
            | Error::AuthUnsupported { .. }
            | Error::AuthFailed { .. } => Some(Stage::Auth),
            Error::Timeout { stage }
            | Error::ConnectionLost { stage, .. }
            | Error::Rejected { stage, .. }
            | Error::Protocol { stage, .. }
            | Error::Io { stage, .. } => Some(*stage),
            _ => None,
        }
    }

    /// True when the message may have been accepted although no final reply was read: the whole
    /// content was sent and then the connection broke or the final reply timed out. The delivery
    /// engine retries (at-least-once), and the receiver can deduplicate by Message-ID.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost {
                outcome_unknown: true,
                ..
            } | Error::Timeout {
                stage: Stage::DataEnd
            }
        )
    }

    /// A copy of this error for another message that failed the same way (`io::Error` is not
    /// `Clone`; its kind and text are kept).
    pub(crate) fn duplicate(&self) -> Error {
        let io = |source: &io::Error| io::Error::new(source.kind(), source.to_string());
        match self {
            Error::Connect { host, port, source } => Error::Connect {
                host: host.clone(),
                port: *port,
                source: io(source),
            },
            Error::Tls { host, reason } => Error::Tls {
                host: host.clone(),
                reason: reason.clone(),
            },
            Error::CertificateVerification { host, reason } => Error::CertificateVerification {
                host: host.clone(),
                reason: reason.clone(),
            },
            Error::TlsConfig(reason) => Error::TlsConfig(reason.clone()),
            Error::StartTlsUnavailable { host } => {
                Error::StartTlsUnavailable { host: host.clone() }
            }
            Error::AuthWithoutTls { host } => Error::AuthWithoutTls { host: host.clone() },
            Error::AuthUnsupported { host, offered } => Error::AuthUnsupported {
                host: host.clone(),
                offered: offered.clone(),
            },
            Error::AuthFailed { reply } => Error::AuthFailed {
                reply: reply.clone(),
            },
            Error::Timeout { stage } => Error::Timeout { stage: *stage },
            Error::ConnectionLost {
                stage,
                outcome_unknown,
            } => Error::ConnectionLost {
                stage: *stage,
                outcome_unknown: *outcome_unknown,
            },
            Error::Rejected { stage, reply } => Error::Rejected {
                stage: *stage,
                reply: reply.clone(),
            },
            Error::MessageTooBig { size, limit } => Error::MessageTooBig {
                size: *size,
                limit: *limit,
            },
            Error::ExtensionRequired { extension } => Error::ExtensionRequired { extension },
            Error::InvalidEnvelope(reason) => Error::InvalidEnvelope(reason.clone()),
            Error::Protocol { stage, detail } => Error::Protocol {
                stage: *stage,
                detail: detail.clone(),
            },
            Error::Io { stage, source } => Error::Io {
                stage: *stage,
                source: io(source),
            },
        }
    }
}
