//! Standard Webhooks signatures (<https://www.standardwebhooks.com>, "Signature scheme"): the receiver gets
//! `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`, a space-separated list of
//! `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per key that is valid now (two during the
//! 24 hours after a rotation), so that its published libraries verify Herald's requests unchanged.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{KeyInit as _, Mac as _};
use sha2::Sha256;

/// Secrets are shown as `whsec_` and the base64 of the key's bytes, as the specification's libraries take
/// them.
pub const SECRET_PREFIX: &str = "whsec_";

/// Bytes of a new signing key (the specification asks for 24 to 64).
pub const KEY_LEN: usize = 32;

/// One `v1,` signature of `body` under `key`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one signature per key, space-separated.
pub fn signature_header(keys: &[&[u8]], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| signature(key, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The secret as shown once to its owner.
pub fn secret_text(key: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_specifications_example() {
        // The example of the Standard Webhooks reference libraries' tests.
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn every_key_signs_in_the_header() {
        let header = signature_header(
            &[b"old key 0123456789abcdef", b"new key 0123456789abcdef"],
            "evt_1",
            5,
            b"{}",
        );
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
        assert_eq!(secret_text(&[0xff; 3]), "whsec_////");
    }
}
