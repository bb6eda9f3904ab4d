//! Signed link tokens (issue 12): short, unforgeable references Herald puts in URLs and addresses it hands
//! out (the one-click unsubscribe link and its `mailto:`; VERP return paths), checked by Herald alone.
//!
//! A token is `base32(payload ‖ tag)`, lowercase, no padding, where `tag` is the first 16 bytes of
//! HMAC-SHA256 over the purpose and the payload under a 32-byte key: 128 bits is past any guessing, and the
//! purpose keeps a token made for one use (an unsubscribe) from being accepted for another (a bounce).
//! Base32 because tokens travel in email local parts too, which some servers fold to one case, and a
//! 16-byte payload (a message id) then fits the 64-octet local part with room for a prefix
//! (`unsub+` + 52 characters). The payload is signed, not encrypted: callers put ids in it, not secrets.
//!
//! The key is derived from `HERALD_SECRET_KEY` when set (HKDF-SHA256, its own `info`), otherwise made once
//! at random and kept in the store (`store_secrets`), so tokens survive restarts and every PostgreSQL node
//! checks the others' tokens.

use ring::{
    hkdf, hmac,
    rand::{SecureRandom as _, SystemRandom},
};
use subtle::ConstantTimeEq as _;

/// Bytes of the HMAC kept in a token.
pub const TAG_LEN: usize = 16;

/// HKDF's `info`: a key derived for link tokens is useless for anything else `HERALD_SECRET_KEY` keys.
const HKDF_INFO: &[u8] = b"herald link tokens v1";

/// The name of the stored key in `store_secrets` (used when `HERALD_SECRET_KEY` is not set).
pub const STORED_KEY_NAME: &str = "link_tokens_v1";

/// Why a token was refused. Deliberately says nothing about which byte was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkTokenError {
    #[error("the link token is malformed")]
    Malformed,
    #[error(
        "the link token's signature does not match (forged, altered, or made for another purpose)"
    )]
    BadSignature,
    #[error("cannot make a key for link tokens: {0}")]
    Key(String),
}

/// Signs and checks link tokens with one key. Cheap to clone.
#[derive(Clone)]
pub struct LinkTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for LinkTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkTokens(***)")
    }
}

struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

impl LinkTokens {
    /// From 32 key bytes (the stored random key).
    pub fn from_key(key: &[u8]) -> Result<Self, LinkTokenError> {
        if key.len() != 32 {
            return Err(LinkTokenError::Key(format!(
                "the stored key has {} bytes, not 32",
                key.len()
            )));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        })
    }

    /// Derived from `HERALD_SECRET_KEY` (as given; the DKIM sealing key is derived with another `info`).
    pub fn from_secret(secret: &str) -> Result<Self, LinkTokenError> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"herald");
        let prk = salt.extract(secret.trim().as_bytes());
        let okm = prk
            .expand(&[HKDF_INFO], KeyLen)
            .map_err(|_| LinkTokenError::Key("HKDF failed".into()))?;
        let mut key = [0u8; 32];
        okm.fill(&mut key)
            .map_err(|_| LinkTokenError::Key("HKDF failed".into()))?;
        Self::from_key(&key)
    }

    /// 32 random bytes for [`Self::from_key`], to be stored.
    pub fn random_key() -> Result<[u8; 32], LinkTokenError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| LinkTokenError::Key("no randomness from the operating system".into()))?;
        Ok(key)
    }

    fn tag(&self, purpose: &str, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut context = hmac::Context::with_key(&self.key);
        // Length-prefixed, so (purpose, payload) pairs cannot run into each other.
        context.update(&(purpose.len() as u32).to_be_bytes());
        context.update(purpose.as_bytes());
        context.update(payload);
        let full = context.sign();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }

    /// A token for `payload`, valid only for `purpose`: lowercase base32, URL- and local-part-safe.
    pub fn sign(&self, purpose: &str, payload: &[u8]) -> String {
        let mut bytes = payload.to_vec();
        bytes.extend_from_slice(&self.tag(purpose, payload));
        base32_encode(&bytes)
    }

    /// The payload of a token made by [`Self::sign`] for `purpose` (either case accepted); the tag is
    /// compared in constant time.
    pub fn verify(&self, purpose: &str, token: &str) -> Result<Vec<u8>, LinkTokenError> {
        let bytes = base32_decode(token).ok_or(LinkTokenError::Malformed)?;
        if bytes.len() < TAG_LEN {
            return Err(LinkTokenError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        if bool::from(self.tag(purpose, payload).ct_eq(tag)) {
            Ok(payload.to_vec())
        } else {
            Err(LinkTokenError::BadSignature)
        }
    }
}

/// RFC 4648 base32 alphabet, lowercase.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(text: &str) -> Option<Vec<u8>> {
    // Bounded: nothing Herald signs is near this, and a client-controlled string must not cost more.
    if text.is_empty() || text.len() > 1_024 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = match c.to_ascii_lowercase() {
            c @ b'a'..=b'z' => c - b'a',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero padding (else two texts would decode to the same bytes).
    (buffer == 0 && bits < 5).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> LinkTokens {
        LinkTokens::from_key(&[7u8; 32]).unwrap()
    }

    #[test]
    fn a_token_round_trips_in_either_case_and_only_for_its_purpose() {
        let payload = b"0123456789abcdef";
        let token = tokens().sign("unsubscribe", payload);
        assert_eq!(token.len(), 52);
        assert!(token.bytes().all(|c| ALPHABET.contains(&c)));
        assert_eq!(tokens().verify("unsubscribe", &token).unwrap(), payload);
        assert_eq!(
            tokens()
                .verify("unsubscribe", &token.to_ascii_uppercase())
                .unwrap(),
            payload
        );
        assert_eq!(
            tokens().verify("verp", &token),
            Err(LinkTokenError::BadSignature)
        );
    }

    #[test]
    fn altered_or_foreign_tokens_are_refused() {
        let token = tokens().sign("unsubscribe", b"message-1");
        let mut altered = token.clone().into_bytes();
        altered[0] = if altered[0] == b'a' { b'b' } else { b'a' };
        let altered = String::from_utf8(altered).unwrap();
        assert!(tokens().verify("unsubscribe", &altered).is_err());
        let other = LinkTokens::from_key(&[8u8; 32]).unwrap();
        assert_eq!(
            other.verify("unsubscribe", &token),
            Err(LinkTokenError::BadSignature)
        );
        for bad in ["", "!!!!", "abc", &"a".repeat(2_000)] {
            assert!(tokens().verify("unsubscribe", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_secret_derives_the_same_key_every_time() {
        let a = LinkTokens::from_secret("a long enough secret value").unwrap();
        let b = LinkTokens::from_secret("a long enough secret value").unwrap();
        assert_eq!(a.verify("p", &b.sign("p", b"x")).unwrap(), b"x");
    }

    #[test]
    fn base32_round_trips_every_length() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            let text = base32_encode(&bytes);
            if n > 0 {
                assert_eq!(base32_decode(&text).unwrap(), bytes);
            }
        }
    }
}
