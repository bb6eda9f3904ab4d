//! DKIM signing (RFC 6376; Ed25519 per RFC 8463): keys per sender domain and selector, kept in the store, and
//! the `DKIM-Signature` every message gets when it is composed.
//!
//! Messages are signed at compose time, before they are stored, so the archived bytes are the signed bytes
//! that leave, on every attempt (DESIGN.md). Receivers since 2024 expect bulk and transactional mail to be
//! signed by the From domain (or a parent of it, for DMARC's relaxed alignment); a relay may add its own
//! signature, which does not replace ours.
//!
//! - [`keys`]: generating RSA-2048 and Ed25519 keys, and sealing private keys with `HERALD_SECRET_KEY`.
//! - [`record`]: the DNS TXT record to publish for a key.
//! - [`manage`]: generate, rotate, list and remove, for `herald dkim` and `/v1/dkim`.
//! - [`signer`]: the key ring a node signs with, and the signature itself (relaxed/relaxed, no `l=`).

pub mod body;
pub mod keys;
pub mod manage;
pub mod record;
pub mod signer;

use std::{fmt, str::FromStr};

pub use keys::{SecretKey, generate};
pub use record::{dns_name, dns_record};
pub use signer::{KEY_RING_TTL, KeyRing, SIGNED_HEADERS, SignedSegment, Signing};

use crate::store::Millis;

/// The signature algorithms Herald makes keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// `ed25519-sha256` (RFC 8463): small keys and signatures, fast to sign; not every receiver verifies it
    /// yet, so a domain may publish an RSA key beside it.
    Ed25519,
    /// `rsa-sha256` with a 2048-bit key: what every receiver verifies (RFC 8301 asks for at least 1024 bits).
    Rsa,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Rsa => "rsa",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = DkimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" => Ok(Algorithm::Ed25519),
            "rsa" | "rsa-2048" => Ok(Algorithm::Rsa),
            _ => Err(DkimError::Invalid {
                field: "algorithm",
                message: format!("{s:?} is not an algorithm: use ed25519 or rsa"),
            }),
        }
    }
}

/// A key as the store keeps it: the private half sealed (or, without `HERALD_SECRET_KEY`, as plain PKCS #8).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The signing domain (`d=`), lowercase ASCII (an IDN domain in its A-label form).
    pub domain: String,
    /// The selector (`s=`): the key's record is at `<selector>._domainkey.<domain>`.
    pub selector: String,
    pub algorithm: Algorithm,
    /// The `p=` of the DNS record: base64 of the SubjectPublicKeyInfo (RSA) or of the raw 32-byte key (Ed25519).
    pub public_key: String,
    /// PKCS #8 DER, sealed with `HERALD_SECRET_KEY` when `encrypted`.
    pub private_key: Vec<u8>,
    pub encrypted: bool,
    pub created_at: Millis,
    /// Set when a newer key of the domain took over (rotation): no longer used to sign, but its DNS record
    /// must stay published until mail signed with it has been delivered and checked.
    pub retired_at: Option<Millis>,
}

impl fmt::Debug for StoredKey {
    // The private key never reaches a log line, sealed or not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field("encrypted", &self.encrypted)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

impl StoredKey {
    /// Where the record goes: `<selector>._domainkey.<domain>`.
    pub fn dns_name(&self) -> String {
        dns_name(&self.selector, &self.domain)
    }

    /// The TXT record's text (`v=DKIM1; k=ed25519; p=…`).
    pub fn dns_record(&self) -> String {
        dns_record(self.algorithm, &self.public_key)
    }
}

/// What went wrong with a DKIM key or signature, in the operator's terms.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(
        "the DKIM key {domain}/{selector} is encrypted and HERALD_SECRET_KEY is not set: set it to the value the \
         key was created with"
    )]
    SecretMissing { domain: String, selector: String },
    #[error(
        "the DKIM key {domain}/{selector} cannot be decrypted: HERALD_SECRET_KEY differs from the one it was \
         created with, or the stored key was altered"
    )]
    Decrypt { domain: String, selector: String },
    #[error("the DKIM key {domain}/{selector} is not a valid {algorithm} key: {reason}")]
    BadKey {
        domain: String,
        selector: String,
        algorithm: Algorithm,
        reason: String,
    },
    #[error("HERALD_SECRET_KEY: {0}")]
    Secret(String),
    #[error("cannot generate a {algorithm} key: {reason}")]
    Generate {
        algorithm: Algorithm,
        reason: String,
    },
    #[error("cannot sign for {domain} with selector {selector}: {reason}")]
    Sign {
        domain: String,
        selector: String,
        reason: String,
    },
}

/// A signing domain as the store keys it: lowercase, its A-label form, no trailing dot. Refuses what cannot be
/// a DNS name, naming the field.
pub fn normalize_domain(domain: &str) -> Result<String, DkimError> {
    let trimmed = domain.trim().trim_end_matches('.');
    let ascii = idna::domain_to_ascii(trimmed).map_err(|_| DkimError::Invalid {
        field: "domain",
        message: format!("{domain:?} is not a domain name"),
    })?;
    let valid = !ascii.is_empty()
        && ascii.len() <= 253
        && ascii.contains('.')
        && ascii.split('.').all(valid_label);
    if !valid {
        return Err(DkimError::Invalid {
            field: "domain",
            message: format!("{domain:?} is not a domain name (like example.com)"),
        });
    }
    Ok(ascii)
}

/// A selector: one or more DNS labels (RFC 6376 §3.1), lowercase.
pub fn normalize_selector(selector: &str) -> Result<String, DkimError> {
    let lower = selector.trim().to_ascii_lowercase();
    let valid = !lower.is_empty() && lower.len() <= 63 && lower.split('.').all(valid_label);
    if !valid {
        return Err(DkimError::Invalid {
            field: "selector",
            message: format!(
                "{selector:?} is not a selector: use letters, digits and '-' (like herald2026)"
            ),
        });
    }
    Ok(lower)
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_selectors_are_normalized_or_refused_by_name() {
        assert_eq!(normalize_domain("Example.COM.").unwrap(), "example.com");
        assert_eq!(
            normalize_domain("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        let e = normalize_domain("no spaces.example")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("domain:"), "{e}");
        assert!(normalize_domain("localhost").is_err());
        assert_eq!(normalize_selector("Herald2026").unwrap(), "herald2026");
        let e = normalize_selector("a;b").unwrap_err().to_string();
        assert!(e.starts_with("selector:"), "{e}");
        assert!("RSA".parse::<Algorithm>().is_ok());
        assert!("dsa".parse::<Algorithm>().is_err());
    }
}
