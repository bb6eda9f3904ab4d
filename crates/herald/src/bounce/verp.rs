//! VERP return paths (issue 12): the envelope sender of each delivery is `bounces+<token>@<bounce domain>`,
//! so that the bounce a remote server sends back says by its very address which message (and, for a message
//! with one recipient, which recipient) it is about, whatever the bounce's body says or fails to say.
//!
//! The token is `base32(message id ‖ recipient ‖ tag)`: the message's 16-byte UUID, a 2-byte recipient
//! (`0` = the whole message, `k` = the recipient at position `k − 1`) and the first 10 bytes of an
//! HMAC-SHA256 over both, so that nobody can make a token for a message they did not send (80 bits: a forger
//! needs about 2⁷⁹ tries per message, each one an SMTP transaction). Lower-case base32 (RFC 4648 alphabet,
//! no padding) because mail systems are free to fold the case of a local part. 28 bytes → 45 characters:
//! `bounces+` and the token are 53 octets, under RFC 5321 §4.5.3.1.1's 64.
//!
//! One token per transaction: a message with several recipients is sent in one transaction (as before), with
//! the whole-message token; its bounces name their recipient in the DSN's `Final-Recipient` (RFC 3464 §2.3.2
//! makes it required), and that is how the intake finds the recipient. A token per recipient would cost one
//! transaction per recipient (the body sent once for each); see README "Bounces and complaints".

use hmac::{KeyInit as _, Mac as _};
use sha2::Sha256;

/// The local part's fixed prefix: `bounces+TOKEN`.
pub const BOUNCE_PREFIX: &str = "bounces+";
/// The local part's prefix of a `List-Unsubscribe` mailto address: `unsub+TOKEN`.
pub const UNSUBSCRIBE_PREFIX: &str = "unsub+";

const TAG_LEN: usize = 10;
const TOKEN_BYTES: usize = 16 + 2 + TAG_LEN;
/// Characters of a token: 28 bytes in base32.
pub const TOKEN_CHARS: usize = (TOKEN_BYTES * 8).div_ceil(5);

/// What a VERP token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerpTarget {
    /// The message's id as the store and the API spell it (a hyphenated UUID).
    pub message_id: String,
    /// The recipient's position, or `None` when the token names the whole message.
    pub position: Option<u32>,
}

/// Makes and checks VERP addresses for one bounce domain with one key.
#[derive(Clone)]
pub struct Verp {
    domain: String,
    key: [u8; 32],
}

impl std::fmt::Debug for Verp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key signs return paths: never printed.
        f.debug_struct("Verp")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl Verp {
    /// `domain` is compared without regard to case; `key` should come from the link-token key (it is
    /// derived per purpose below, so one key serves several token kinds).
    pub fn new(domain: &str, key: [u8; 32]) -> Self {
        Self {
            domain: domain.trim().trim_end_matches('.').to_ascii_lowercase(),
            key,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether `address` is at the bounce domain (where mail is taken without AUTH).
    pub fn is_ours(&self, address: &str) -> bool {
        address.rsplit_once('@').is_some_and(|(_, domain)| {
            domain
                .trim_end_matches('.')
                .eq_ignore_ascii_case(&self.domain)
        })
    }

    /// The envelope sender for a delivery of `message_id` to the recipients at `positions`: one recipient
    /// gets its own token, several share the whole-message token. `None` when the id is not a UUID (never
    /// for stored messages; such a message keeps its own sender).
    pub fn return_path(&self, message_id: &str, positions: &[u32]) -> Option<String> {
        let position = match positions {
            [one] => Some(*one),
            _ => None,
        };
        let token = self.token(message_id, position)?;
        Some(format!("{BOUNCE_PREFIX}{token}@{}", self.domain))
    }

    /// The token alone (the part after `bounces+`).
    pub fn token(&self, message_id: &str, position: Option<u32>) -> Option<String> {
        let id = uuid::Uuid::parse_str(message_id).ok()?;
        // A position past u16 (more recipients than any limit allows) falls back to the message's token.
        let slot = position
            .and_then(|p| u16::try_from(p).ok())
            .and_then(|p| p.checked_add(1))
            .unwrap_or(0);
        let mut bytes = [0u8; TOKEN_BYTES];
        bytes[..16].copy_from_slice(id.as_bytes());
        bytes[16..18].copy_from_slice(&slot.to_be_bytes());
        let tag = self.tag(&bytes[..18]);
        bytes[18..].copy_from_slice(&tag);
        Some(base32_encode(&bytes))
    }

    /// What a token names, if its tag is right. Case-insensitive. A wrong tag (forged, or made with another
    /// key) is `None`, checked in constant time.
    pub fn verify(&self, token: &str) -> Option<VerpTarget> {
        let bytes = base32_decode(token)?;
        if bytes.len() != TOKEN_BYTES {
            return None;
        }
        let mut mac = self.mac();
        mac.update(&bytes[..18]);
        mac.verify_truncated_left(&bytes[18..]).ok()?;
        let id = uuid::Uuid::from_slice(&bytes[..16]).ok()?;
        let slot = u16::from_be_bytes([bytes[16], bytes[17]]);
        Some(VerpTarget {
            message_id: id.hyphenated().to_string(),
            position: slot.checked_sub(1).map(u32::from),
        })
    }

    /// The token of a bounce address `bounces+TOKEN@<bounce domain>`, checked; `None` for any other address.
    pub fn target_of(&self, address: &str) -> Option<VerpTarget> {
        let address = address.trim().trim_start_matches('<').trim_end_matches('>');
        if !self.is_ours(address) {
            return None;
        }
        let (local, _) = address.rsplit_once('@')?;
        let token = strip_prefix_ignore_case(local, BOUNCE_PREFIX)?;
        self.verify(token)
    }

    fn mac(&self) -> hmac::Hmac<Sha256> {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        // Domain separation: the same key signs other kinds of tokens.
        mac.update(b"herald verp v1\0");
        mac
    }

    fn tag(&self, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac();
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

/// `text` without `prefix` (ASCII case ignored).
pub fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity((bytes.len() * 8).div_ceil(5));
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
    if text.len() > 2 * TOKEN_CHARS {
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
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

    fn verp() -> Verp {
        Verp::new("Bounce.Example", [7u8; 32])
    }

    #[test]
    fn a_return_path_fits_the_local_part_limit_and_names_its_recipient() {
        let verp = verp();
        let one = verp.return_path(ID, &[3]).unwrap();
        let (local, domain) = one.rsplit_once('@').unwrap();
        assert_eq!(domain, "bounce.example");
        assert!(local.len() <= 64, "{} octets: {local}", local.len());
        assert_eq!(local.len(), BOUNCE_PREFIX.len() + TOKEN_CHARS);
        assert_eq!(
            verp.target_of(&one),
            Some(VerpTarget {
                message_id: ID.into(),
                position: Some(3)
            })
        );
        let many = verp.return_path(ID, &[0, 1]).unwrap();
        assert_eq!(verp.target_of(&many).unwrap().position, None);
        // Case folded on the way back still verifies.
        assert!(verp.target_of(&one.to_ascii_uppercase()).is_some());
        assert!(verp.target_of(&format!("<{one}>")).is_some());
    }

    #[test]
    fn a_forged_or_foreign_token_is_refused() {
        let verp = verp();
        let token = verp.token(ID, Some(0)).unwrap();
        // Every single-character change is caught.
        for i in 0..token.len() {
            let mut forged = token.clone().into_bytes();
            forged[i] = if forged[i] == b'a' { b'b' } else { b'a' };
            let forged = String::from_utf8(forged).unwrap();
            assert_eq!(verp.verify(&forged), None, "position {i}");
        }
        let other_key = Verp::new("bounce.example", [8u8; 32]);
        assert_eq!(other_key.verify(&token), None);
        assert_eq!(verp.verify("not-base32!"), None);
        assert_eq!(verp.verify(""), None);
        // Another domain's address, or another prefix, is not ours.
        assert_eq!(
            verp.target_of(&format!("bounces+{token}@elsewhere.example")),
            None
        );
        assert_eq!(verp.target_of(&format!("x+{token}@bounce.example")), None);
        assert_eq!(verp.return_path("not-a-uuid", &[0]), None);
    }

    #[test]
    fn base32_round_trips() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base32_decode(&base32_encode(&bytes)).unwrap(), bytes);
        }
    }
}
