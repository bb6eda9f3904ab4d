//! Helpers shared by herald-smtp's integration tests (zero-to-production's `helpers.rs` shape).
#![allow(dead_code)]

use std::time::Duration;

use herald_smtp::{Client, Connection, RelayConfig, Security, Timeouts};
use herald_testkit::TestServer;

/// A plain-SMTP relay configuration for a test server, with short timeouts.
pub fn relay(server: &TestServer) -> RelayConfig {
    let mut config = RelayConfig::new("127.0.0.1", server.port());
    config.security = Security::None;
    config.timeouts = Timeouts::all(Duration::from_secs(5));
    config
}

pub async fn connect(config: RelayConfig) -> Connection {
    Client::new(config)
        .expect("client")
        .connect()
        .await
        .expect("connect")
}

/// A small message with the given subject.
pub fn message(subject: &str) -> Vec<u8> {
    format!("From: a@sender.test\r\nTo: b@rcpt.test\r\nSubject: {subject}\r\n\r\nHello.\r\n")
        .into_bytes()
}

/// Index of the read on `connection` whose bytes contain `needle`.
pub fn reads_containing(server: &TestServer, needle: &str) -> Vec<Vec<u8>> {
    server
        .reads()
        .into_iter()
        .filter(|read| {
            read.bytes
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        })
        .map(|read| read.bytes)
        .collect()
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
