//! Making DKIM keys, and keeping their private half sealed at rest.
//!
//! With `HERALD_SECRET_KEY` set, a private key is stored sealed with ChaCha20-Poly1305 under a key derived
//! from it (HKDF-SHA256), the domain and selector bound in as associated data so a sealed key cannot be
//! moved to another row. That protects the keys in a database dump, a backup or a replica; it does not
//! protect them from whoever can read the process's environment or memory, or the configuration file the
//! secret is in. Without the secret, keys are stored as plain PKCS #8, as safe as the database is.

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use ring::{
    aead::{self, Aad, LessSafeKey, Nonce, UnboundKey},
    hkdf,
    rand::{SecureRandom as _, SystemRandom},
};
use rsa::{pkcs8::EncodePrivateKey as _, pkcs8::EncodePublicKey as _};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{Algorithm, DkimError, StoredKey};
use crate::store::Millis;

/// Sealed keys start with this, so a future format can be told apart.
const SEALED_V1: u8 = 1;
const NONCE_LEN: usize = 12;
/// HKDF's `info`: a key derived for DKIM keys is useless for anything else `HERALD_SECRET_KEY` may key later.
const HKDF_INFO: &[u8] = b"herald dkim private key v1";

/// The key that seals private DKIM keys, derived from `HERALD_SECRET_KEY`.
#[derive(Clone)]
pub struct SecretKey {
    key: [u8; 32],
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

/// HKDF output length for a ChaCha20-Poly1305 key.
struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

impl SecretKey {
    /// Derives the sealing key from the configured secret. A short secret is refused: it would be guessable
    /// from a stolen database.
    pub fn from_secret(secret: &str) -> Result<Self, DkimError> {
        Self::derive(secret, HKDF_INFO)
    }

    /// The key that seals webhook signing secrets (issue 12), from the same `HERALD_SECRET_KEY`: derived with
    /// its own `info`, so neither kind of sealed value opens with the other's key.
    pub fn for_webhooks(secret: &str) -> Result<Self, DkimError> {
        Self::derive(secret, b"herald webhook signing secret v1")
    }

    fn derive(secret: &str, info: &[u8]) -> Result<Self, DkimError> {
        if secret.trim().len() < 16 {
            return Err(DkimError::Secret(
                "must be at least 16 characters (use 32 random bytes, e.g. `openssl rand -base64 32`)"
                    .into(),
            ));
        }
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"herald");
        let prk = salt.extract(secret.trim().as_bytes());
        let info = [info];
        let okm = prk
            .expand(&info, KeyLen)
            .map_err(|_| DkimError::Secret("cannot derive a key".into()))?;
        let mut key = [0u8; 32];
        okm.fill(&mut key)
            .map_err(|_| DkimError::Secret("cannot derive a key".into()))?;
        Ok(Self { key })
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&aead::CHACHA20_POLY1305, &self.key).expect("a 32-byte key"),
        )
    }

    /// `1 ‖ nonce ‖ ciphertext ‖ tag`, bound to `domain` and `selector`.
    fn seal(&self, domain: &str, selector: &str, plain: &[u8]) -> Result<Vec<u8>, DkimError> {
        self.seal_bound(&associated_data(domain, selector), plain)
    }

    /// Seals `plain` bound to `context` (associated data: opening needs the same context, so a sealed value
    /// moved to another row does not open).
    pub fn seal_bound(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, DkimError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| DkimError::Secret("no randomness from the operating system".into()))?;
        let mut sealed = plain.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut sealed,
            )
            .map_err(|_| DkimError::Secret("sealing failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn open(&self, domain: &str, selector: &str, sealed: &[u8]) -> Result<Vec<u8>, DkimError> {
        self.open_bound(&associated_data(domain, selector), sealed)
            .ok_or_else(|| DkimError::Decrypt {
                domain: domain.to_owned(),
                selector: selector.to_owned(),
            })
    }

    /// Opens what [`Self::seal_bound`] sealed with the same `context`; `None` when it does not open (another
    /// secret, another context, or changed bytes).
    pub fn open_bound(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEALED_V1 {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).ok()?;
        let mut buffer = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::from(context), &mut buffer)
            .ok()?;
        Some(plain.to_vec())
    }
}

fn associated_data(domain: &str, selector: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(domain.len() + selector.len() + 1);
    aad.extend_from_slice(domain.as_bytes());
    aad.push(0);
    aad.extend_from_slice(selector.as_bytes());
    aad
}

/// Makes a new key for `domain` and `selector` (already normalized), sealed with `secret` when given.
/// RSA-2048 generation takes a fraction of a second to a few seconds: run it off the async workers.
pub fn generate(
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    secret: Option<&SecretKey>,
    now: Millis,
) -> Result<StoredKey, DkimError> {
    let failed = |reason: String| DkimError::Generate { algorithm, reason };
    let (private_der, public_key) = match algorithm {
        Algorithm::Ed25519 => {
            let der = Ed25519Key::generate_pkcs8().map_err(|e| failed(e.to_string()))?;
            let key = Ed25519Key::from_pkcs8_der(&der).map_err(|e| failed(e.to_string()))?;
            (der, key.public_key())
        }
        Algorithm::Rsa => {
            let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| failed(e.to_string()))?;
            let der = private
                .to_pkcs8_der()
                .map_err(|e| failed(e.to_string()))?
                .as_bytes()
                .to_vec();
            // SubjectPublicKeyInfo, the form every verifier reads (opendkim, dkimpy, the big providers).
            let public = rsa::RsaPublicKey::from(&private)
                .to_public_key_der()
                .map_err(|e| failed(e.to_string()))?
                .as_bytes()
                .to_vec();
            (der, public)
        }
    };
    use base64::Engine as _;
    let (private_key, encrypted) = match secret {
        Some(secret) => (secret.seal(domain, selector, &private_der)?, true),
        None => (private_der, false),
    };
    Ok(StoredKey {
        domain: domain.to_owned(),
        selector: selector.to_owned(),
        algorithm,
        public_key: base64::engine::general_purpose::STANDARD.encode(public_key),
        private_key,
        encrypted,
        created_at: now,
        retired_at: None,
    })
}

/// The signing key of a stored key, unsealed with `secret` if it is sealed.
pub fn signing_key(stored: &StoredKey, secret: Option<&SecretKey>) -> Result<DkimKey, DkimError> {
    let der = if stored.encrypted {
        let secret = secret.ok_or_else(|| DkimError::SecretMissing {
            domain: stored.domain.clone(),
            selector: stored.selector.clone(),
        })?;
        secret.open(&stored.domain, &stored.selector, &stored.private_key)?
    } else {
        stored.private_key.clone()
    };
    let bad = |reason: String| DkimError::BadKey {
        domain: stored.domain.clone(),
        selector: stored.selector.clone(),
        algorithm: stored.algorithm,
        reason,
    };
    Ok(match stored.algorithm {
        Algorithm::Ed25519 => {
            DkimKey::Ed25519(Ed25519Key::from_pkcs8_der(&der).map_err(|e| bad(e.to_string()))?)
        }
        Algorithm::Rsa => DkimKey::Rsa(
            RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)))
                .map_err(|e| bad(e.to_string()))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_the_same_secret_and_row() {
        let secret = SecretKey::from_secret("correct horse battery staple").unwrap();
        let key = generate("example.com", "s1", Algorithm::Ed25519, Some(&secret), 0).unwrap();
        assert!(key.encrypted);
        assert!(signing_key(&key, Some(&secret)).is_ok());
        assert!(matches!(
            signing_key(&key, None),
            Err(DkimError::SecretMissing { .. })
        ));
        let other = SecretKey::from_secret("another secret of some length").unwrap();
        assert!(matches!(
            signing_key(&key, Some(&other)),
            Err(DkimError::Decrypt { .. })
        ));
        // The same sealed bytes under another selector: the associated data no longer matches.
        let moved = StoredKey {
            selector: "s2".into(),
            ..key.clone()
        };
        assert!(matches!(
            signing_key(&moved, Some(&secret)),
            Err(DkimError::Decrypt { .. })
        ));
        assert!(SecretKey::from_secret("short").is_err());
        let plain = generate("example.com", "s1", Algorithm::Ed25519, None, 0).unwrap();
        assert!(!plain.encrypted);
        assert!(signing_key(&plain, None).is_ok());
    }
}
