//! How to reach one relay: address, transport security, credentials, timeouts.

use std::{path::PathBuf, time::Duration};

use rustls::pki_types::CertificateDer;

use crate::auth::{Credentials, Mechanism};

/// Transport security towards the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Security {
    /// Plain connection upgraded with STARTTLS; fail if the server does not offer it (the default:
    /// submission on port 587).
    #[default]
    StartTlsRequired,
    /// STARTTLS when the server offers it, plain otherwise. When STARTTLS is used the certificate is
    /// still verified.
    StartTlsOpportunistic,
    /// Never encrypt (local relays, tests).
    None,
    /// TLS from the first byte (port 465, RFC 8314).
    ImplicitTls,
}

/// Timeouts per RFC 5321 §4.5.3.2, plus connect and the commands the RFC does not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (and the TLS handshake).
    pub connect: Duration,
    /// The 220 greeting (RFC: 5 minutes).
    pub greeting: Duration,
    /// EHLO, STARTTLS, AUTH, RSET, QUIT.
    pub command: Duration,
    /// MAIL FROM reply (RFC: 5 minutes).
    pub mail: Duration,
    /// Each RCPT TO reply (RFC: 5 minutes).
    pub rcpt: Duration,
    /// DATA's 354 reply (RFC: 2 minutes).
    pub data_init: Duration,
    /// Each write of message content (RFC: 3 minutes per data block).
    pub data_block: Duration,
    /// The reply to the end of the content (RFC: 10 minutes).
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        const MINUTE: Duration = Duration::from_secs(60);
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: 5 * MINUTE,
            command: 5 * MINUTE,
            mail: 5 * MINUTE,
            rcpt: 5 * MINUTE,
            data_init: 2 * MINUTE,
            data_block: 3 * MINUTE,
            data_end: 10 * MINUTE,
        }
    }
}

impl Timeouts {
    /// The same limit for every wait (`timeout_s` in a relay URL, and tests).
    pub fn all(limit: Duration) -> Self {
        Timeouts {
            connect: limit,
            greeting: limit,
            command: limit,
            mail: limit,
            rcpt: limit,
            data_init: limit,
            data_block: limit,
            data_end: limit,
        }
    }
}

/// Everything needed to open sessions to one relay. Build a [`crate::Client`] from it once (that
/// loads the trust roots) and share the client.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Credentials for AUTH; none means no AUTH.
    pub credentials: Option<Credentials>,
    /// Force one mechanism instead of choosing from what the server offers.
    pub auth_mechanism: Option<Mechanism>,
    /// Allow AUTH over an unencrypted connection when the peer is a loopback address (local test
    /// relays). Never allowed for other peers.
    pub allow_plaintext_auth_on_loopback: bool,
    /// A PEM file with extra trusted CA certificates, added to the system roots.
    pub extra_ca_file: Option<PathBuf>,
    /// Extra trusted CA certificates given directly (tests).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// The name to verify the certificate against, when it differs from `host`.
    pub tls_server_name: Option<String>,
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    pub timeouts: Timeouts,
    /// Use BDAT (RFC 3030) when the server offers CHUNKING: with PIPELINING the whole transaction
    /// goes out in one write and the content is not dot-stuffed. Off by default: DATA is what every
    /// server handles, and batches already cost one round trip per message with DATA; BDAT is only
    /// tested against herald-testkit here (neither smtp-sink nor aiosmtpd offers it).
    pub use_chunking: bool,
}

impl RelayConfig {
    /// Defaults: STARTTLS required, no AUTH, RFC timeouts, EHLO name `localhost`, DATA (not BDAT).
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        RelayConfig {
            host: host.into(),
            port,
            security: Security::default(),
            credentials: None,
            auth_mechanism: None,
            allow_plaintext_auth_on_loopback: false,
            extra_ca_file: None,
            extra_roots: Vec::new(),
            tls_server_name: None,
            helo_name: "localhost".to_string(),
            timeouts: Timeouts::default(),
            use_chunking: false,
        }
    }
}
