//! Errors in the caller's terms: what failed, at which protocol stage, whether trying again later
//! can help (`is_transient()` / `is_permanent()`), and whether the relay itself is unusable right now
//! (`relay_fault()`), so the delivery engine never matches variants or strings.
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

/// Why a relay (not one message) is unusable right now: every message sent to it now would fail the same
/// way, so a caller pauses the relay instead of spending its messages' attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayFault {
    /// Connection refused or timed out, 421, a broken TLS handshake, a session that breaks before MAIL
    /// FROM: usually passes by itself.
    Unreachable,
    /// The relay refused the credentials (535, 454), offers no usable mechanism, or the connection is not
    /// encrypted enough to send them: needs a person.
    Authentication,
    /// The relay's certificate did not verify, or the trust roots could not be loaded: needs a person (or
    /// an attacker is in the way).
    Certificate,
    /// TLS is required but the relay does not offer STARTTLS or refuses it (or it was stripped on the way).
    StartTls,
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

    /// Whether this failure is the relay's rather than the message's, and which kind. Refused credentials,
    /// an untrusted certificate and a missing STARTTLS fail every message the same way: failing them all
    /// permanently after one try (as a per-message 5xx would) loses the queue to one configuration mistake.
    /// `None` for failures tied to the message or its transaction (MAIL FROM refused, too big, lost during
    /// DATA …).
    pub fn relay_fault(&self) -> Option<RelayFault> {
        match self {
            Error::AuthFailed { .. }
            | Error::AuthUnsupported { .. }
            | Error::AuthWithoutTls { .. } => Some(RelayFault::Authentication),
            Error::CertificateVerification { .. } | Error::TlsConfig(_) => {
                Some(RelayFault::Certificate)
            }
            Error::StartTlsUnavailable { .. }
            | Error::Rejected {
                stage: Stage::StartTls,
                ..
            } => Some(RelayFault::StartTls),
            Error::Connect { .. } | Error::Tls { .. } => Some(RelayFault::Unreachable),
            // RFC 5321 §3.8: 421 is the server closing the session, whatever the command.
            Error::Rejected { reply, .. } if reply.code == 421 => Some(RelayFault::Unreachable),
            Error::Rejected {
                stage: Stage::Greeting | Stage::Ehlo,
                reply,
            } if !reply.is_permanent() => Some(RelayFault::Unreachable),
            Error::Timeout {
                stage: Stage::Connect | Stage::Greeting | Stage::Ehlo | Stage::TlsHandshake,
            }
            | Error::ConnectionLost {
                stage: Stage::Greeting | Stage::Ehlo | Stage::StartTls | Stage::TlsHandshake,
                ..
            } => Some(RelayFault::Unreachable),
            _ => None,
        }
    }

    /// True when the relay, not the message, is at fault ([`Self::relay_fault`]): the caller waits for the
    /// relay and keeps the message's attempts, whatever the reply code (a 535 is permanent for the
    /// credentials, not for the mail).
    pub fn pauses_relay(&self) -> bool {
        self.relay_fault().is_some()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(stage: Stage, code: u16) -> Error {
        Error::Rejected {
            stage,
            reply: Reply::new(code, None, "no"),
        }
    }

    fn refused_connect() -> Error {
        Error::Connect {
            host: "relay.example".into(),
            port: 25,
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        }
    }

    #[test]
    fn configuration_mistakes_are_the_relays_fault_whatever_the_code() {
        let auth = Error::AuthFailed {
            reply: Reply::new(535, None, "bad credentials"),
        };
        assert!(auth.is_permanent(), "535 is permanent for the credentials");
        assert_eq!(auth.relay_fault(), Some(RelayFault::Authentication));
        assert!(auth.pauses_relay());
        let cases = [
            (
                Error::AuthUnsupported {
                    host: "h".into(),
                    offered: "GSSAPI".into(),
                },
                RelayFault::Authentication,
            ),
            (
                Error::AuthWithoutTls { host: "h".into() },
                RelayFault::Authentication,
            ),
            (
                Error::CertificateVerification {
                    host: "h".into(),
                    reason: "unknown issuer".into(),
                },
                RelayFault::Certificate,
            ),
            (Error::TlsConfig("no roots".into()), RelayFault::Certificate),
            (
                Error::StartTlsUnavailable { host: "h".into() },
                RelayFault::StartTls,
            ),
            (rejected(Stage::StartTls, 454), RelayFault::StartTls),
        ];
        for (error, fault) in cases {
            assert_eq!(error.relay_fault(), Some(fault), "{error}");
        }
    }

    #[test]
    fn a_relay_that_is_down_is_unreachable() {
        let cases = [
            refused_connect(),
            Error::Tls {
                host: "h".into(),
                reason: "reset".into(),
            },
            rejected(Stage::Greeting, 421),
            rejected(Stage::MailFrom, 421),
            rejected(Stage::Greeting, 450),
            rejected(Stage::Ehlo, 451),
            Error::Timeout {
                stage: Stage::Connect,
            },
            Error::Timeout {
                stage: Stage::TlsHandshake,
            },
            Error::ConnectionLost {
                stage: Stage::Greeting,
                outcome_unknown: false,
            },
            Error::ConnectionLost {
                stage: Stage::StartTls,
                outcome_unknown: false,
            },
        ];
        for error in cases {
            assert_eq!(
                error.relay_fault(),
                Some(RelayFault::Unreachable),
                "{error}"
            );
            assert!(error.pauses_relay(), "{error}");
        }
    }

    #[test]
    fn failures_of_the_message_or_its_transaction_are_not_the_relays() {
        let cases = [
            rejected(Stage::MailFrom, 550),
            rejected(Stage::MailFrom, 451),
            rejected(Stage::Greeting, 554),
            rejected(Stage::DataEnd, 552),
            Error::MessageTooBig {
                size: 20,
                limit: 10,
            },
            Error::ExtensionRequired {
                extension: "SMTPUTF8",
            },
            Error::InvalidEnvelope("no recipients".into()),
            Error::Timeout {
                stage: Stage::DataEnd,
            },
            Error::ConnectionLost {
                stage: Stage::DataBlock,
                outcome_unknown: false,
            },
            Error::Protocol {
                stage: Stage::RcptTo,
                detail: "garbage".into(),
            },
        ];
        for error in cases {
            assert_eq!(error.relay_fault(), None, "{error}");
            assert!(!error.pauses_relay(), "{error}");
        }
    }
}
