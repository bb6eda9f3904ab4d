//! Messages that arrive as finished bytes (SMTP submission, issue 11, `crate::submission`): signed when a
//! DKIM key covers their From domain (issue 13), then stored as they are, through the same group commit as
//! the API's messages.

use bytes::Bytes;

use super::{Service, SubmitError, join};
use crate::store::{Accepted, NewMessage, RawSegment};

impl Service {
    /// Signs `message` (its control headers already removed) when a key covers its From domain, then stores
    /// it durably, in one commit grouped with the concurrent callers' (the API's included); returns after the
    /// commit. An idempotency key seen before answers [`Accepted::Existing`].
    pub async fn accept_submitted(&self, message: NewMessage) -> Result<Accepted, SubmitError> {
        self.dkim.refresh(&self.store).await;
        let ring = self.dkim.current();
        let message = if ring.is_empty() {
            message
        } else if ring.has_rsa() {
            // An RSA signature takes about a millisecond: off the async workers, as for the API's messages.
            tokio::task::spawn_blocking(move || sign_submitted(&ring, message))
                .await
                .map_err(|e| {
                    SubmitError::Signing(crate::dkim::DkimError::Sign {
                        domain: String::new(),
                        selector: String::new(),
                        reason: format!("the signing thread failed: {e}"),
                    })
                })??
        } else {
            sign_submitted(&ring, message)?
        };
        let mut accepted = self.store.accept(vec![message]).await?;
        accepted
            .pop()
            .ok_or(SubmitError::Store(crate::store::StoreError::Closed))
    }
}

/// Puts a `DKIM-Signature` in front of the submitted bytes when `ring` has a key for the From domain (the
/// header's, not the envelope's: DMARC aligns with the header). The bytes after it are kept as received.
fn sign_submitted(
    ring: &crate::dkim::KeyRing,
    mut message: NewMessage,
) -> Result<NewMessage, crate::dkim::DkimError> {
    let whole = join(&message.raw);
    let Some(domain) = from_domain(&whole) else {
        return Ok(message);
    };
    if let Some(header) = ring.sign(&domain, &whole)? {
        message.raw.insert(
            0,
            RawSegment::Literal {
                bytes: Bytes::from(header),
                dot_safe: true,
            },
        );
    }
    Ok(message)
}

/// The ASCII (IDNA) domain of the first From address, lowercased.
fn from_domain(message: &[u8]) -> Option<String> {
    let headers = mail_parser::MessageParser::default().parse_headers(message)?;
    let address = headers.from()?.first()?.address()?.to_owned();
    let (_, domain) = address.rsplit_once('@')?;
    idna::domain_to_ascii(domain).ok()
}
