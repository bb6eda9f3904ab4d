//! Test SMTP servers for Herald's tests (a dev-dependency only; never shipped).
//!
//! [`TestServer`] is both the capture server and the scripted fault server: it listens on
//! 127.0.0.1 port 0, speaks enough ESMTP for a client (EHLO/HELO, PIPELINING, SIZE, 8BITMIME,
//! SMTPUTF8, STARTTLS, AUTH PLAIN/LOGIN/XOAUTH2, CHUNKING/BDAT, ENHANCEDSTATUSCODES, DSN), and records
//! every transaction (envelope, exact content bytes as received and unstuffed) and every raw read
//! of client bytes, so a test can tell which commands arrived in one write. A script of
//! [`Fault`]s makes it answer any code at any stage, per connection, per transaction and per
//! recipient, drop the connection, or stall.
//!
//! [`TestPki`] makes a CA and server certificates with rcgen for the TLS tests.

// Test servers, used only by tests: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod pki;
mod server;

pub use pki::TestPki;
pub use server::{Action, ClientRead, Fault, ServerConfig, TestServer, Transaction, When};

/// Finds an external test peer. `Ok(Some)` when present; `Ok(None)` (after printing why) when
/// absent and `HERALD_REQUIRE_PEERS` is unset, so the test can return early; a panic when absent
/// and `HERALD_REQUIRE_PEERS` is set (CI).
pub fn require_peer<T>(name: &str, found: Option<T>, how_to_get: &str) -> Option<T> {
    match found {
        Some(found) => Some(found),
        None if std::env::var_os("HERALD_REQUIRE_PEERS").is_some() => {
            panic!("test peer {name} is missing and HERALD_REQUIRE_PEERS is set: {how_to_get}")
        }
        None => {
            eprintln!(
                "SKIPPED: test peer {name} is missing ({how_to_get}); set HERALD_REQUIRE_PEERS=1 to fail instead"
            );
            None
        }
    }
}

/// Postfix's `smtp-sink`: `$HERALD_SMTP_SINK`, else found on PATH (or /usr/sbin).
pub fn smtp_sink_path() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("HERALD_SMTP_SINK").filter(|p| !p.is_empty()) {
        let path = std::path::PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("smtp-sink"))
        .find(|candidate| candidate.is_file())
}

/// A Python interpreter that can import `aiosmtpd`: `$HERALD_PYTHON`, else `python3`.
pub fn python_with_aiosmtpd() -> Option<std::path::PathBuf> {
    let python: std::path::PathBuf = std::env::var_os("HERALD_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
        .into();
    let ok = std::process::Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    ok.then_some(python)
}
