//! VERP return paths (issue 12): the envelope sender of each delivery is `bounces+<token>@<bounce domain>`,
//! so that the bounce a remote server sends back says by its very address which message (and, for a message
//! with one recipient, which recipient) it is about, whatever the bounce's body says or fails to say.
//!
//! The token is a link token (`link_tokens`, purpose `verp`) over the message's 16-byte UUID and a 2-byte
//! recipient (`0` = the whole message, `k` = the recipient at position `k − 1`): lower-case base32 (mail
//! systems may fold the case of a local part) of the payload and a 16-byte HMAC-SHA256 tag, so nobody can
//! make a token for a message they did not send. 34 bytes → 55 characters: `bounces+` and the token are 63
//! octets, under RFC 5321 §4.5.3.1.1's 64.
//!
//! One token per transaction: a message with several recipients is sent in one transaction (as before), with
//! the whole-message token; its bounces name their recipient in the DSN's `Final-Recipient` (RFC 3464 §2.3.2
//! makes it required), and that is how the intake finds the recipient. A token per recipient would cost one
//! transaction per recipient (the body sent once for each); see README "Bounces and complaints".

use crate::link_tokens::LinkTokens;

/// The local part's fixed prefix: `bounces+TOKEN`.
pub const BOUNCE_PREFIX: &str = "bounces+";
/// The local part's prefix of a `List-Unsubscribe` mailto address: `unsub+TOKEN`.
pub const UNSUBSCRIBE_PREFIX: &str = "unsub+";

/// The link-token purpose of VERP tokens: an unsubscribe token is no return path, nor the reverse.
pub const VERP_PURPOSE: &str = "verp";
const PAYLOAD_BYTES: usize = 16 + 2;
/// Characters of a token: the payload and the link token's tag in base32.
pub const TOKEN_CHARS: usize = ((PAYLOAD_BYTES + crate::link_tokens::TAG_LEN) * 8).div_ceil(5);

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
    tokens: LinkTokens,
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
    /// `domain` is compared without regard to case; `tokens` is the installation's link-token key (the
    /// purpose keeps VERP tokens apart from its other tokens).
    pub fn new(domain: &str, tokens: LinkTokens) -> Self {
        Self {
            domain: domain.trim().trim_end_matches('.').to_ascii_lowercase(),
            tokens,
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
        let mut payload = [0u8; PAYLOAD_BYTES];
        payload[..16].copy_from_slice(id.as_bytes());
        payload[16..].copy_from_slice(&slot.to_be_bytes());
        Some(self.tokens.sign(VERP_PURPOSE, &payload))
    }

    /// What a token names, if its tag is right. Case-insensitive. A wrong tag (forged, or made with another
    /// key) is `None`, checked in constant time.
    pub fn verify(&self, token: &str) -> Option<VerpTarget> {
        if token.len() != TOKEN_CHARS {
            return None;
        }
        let bytes = self.tokens.verify(VERP_PURPOSE, token).ok()?;
        if bytes.len() != PAYLOAD_BYTES {
            return None;
        }
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
}

/// `text` without `prefix` (ASCII case ignored).
pub fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

    fn verp() -> Verp {
        Verp::new("Bounce.Example", LinkTokens::from_key(&[7u8; 32]).unwrap())
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
        let other_key = Verp::new("bounce.example", LinkTokens::from_key(&[8u8; 32]).unwrap());
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
}
