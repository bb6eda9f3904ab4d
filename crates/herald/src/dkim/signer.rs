//! The key ring a node signs with, and the signature itself.
//!
//! Every message whose From domain (or a parent of it) has an active key is signed relaxed/relaxed
//! (RFC 6376 §3.4: survives the header refolding and trailing-space changes relays make), `h=` as in
//! [`SIGNED_HEADERS`], the body hash over the whole body (no `l=`, which would let anyone append content).
//! The ring is read from the store and kept for [`KEY_RING_TTL`], so a key generated or rotated with
//! `herald dkim` is used by every running node within that time, with no store read per message.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mail_auth::{
    common::{
        crypto::{DkimKey, SigningKey as _},
        headers::{HeaderWriter as _, Writable, Writer},
    },
    dkim::{Canonicalization, DkimSigner, Done, Signature, canonicalize::CanonicalHeaders},
};

use super::{
    DkimError, StoredKey,
    body::{CanonicalSegment, RelaxedBody},
    keys::SecretKey,
};

/// One stored segment of a message to sign: its bytes and, for a shared segment, its canonical form made
/// once ([`crate::store::SharedBlob::canonical`]), which the body hash then takes instead of rewriting them.
#[derive(Debug, Clone, Copy)]
pub struct SignedSegment<'a> {
    pub bytes: &'a [u8],
    pub canonical: Option<&'a CanonicalSegment>,
}

impl<'a> From<&'a [u8]> for SignedSegment<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            canonical: None,
        }
    }
}
use crate::store::{Store, StoreError};

/// The header fields signed (RFC 6376 §5.4), in this order. From is listed twice: the second, absent
/// instance over-signs it (§8.15), so a second From added in transit breaks the signature instead of being
/// shown to the reader. Listed fields a message does not have are signed as absent, so they cannot be added
/// later either (Cc, Reply-To, List-Unsubscribe on a message without them).
pub const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// How long a node trusts the key ring it read: a rotation reaches every node within this time.
pub const KEY_RING_TTL: Duration = Duration::from_secs(5);

/// One domain's active key, ready to sign.
struct ActiveKey {
    selector: String,
    signer: DkimSigner<DkimKey, Done>,
    /// The same RSA key for ring, which signs in under half the CPU time the `rsa` crate under mail-auth
    /// takes (assembly Montgomery multiplication; README, Benchmarks). mail-auth's key still signs what the
    /// fast path does not take.
    rsa: Option<ring::rsa::KeyPair>,
}

/// The active key of every signing domain: the newest key of the domain that is not retired.
#[derive(Default)]
pub struct KeyRing {
    by_domain: HashMap<String, ActiveKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_map();
        for (domain, key) in &self.by_domain {
            list.entry(domain, &key.selector);
        }
        list.finish()
    }
}

impl KeyRing {
    /// The ring of `keys` (as the store lists them), unsealing private keys with `secret`.
    pub fn from_stored(keys: &[StoredKey], secret: Option<&SecretKey>) -> Result<Self, DkimError> {
        let mut newest: HashMap<&str, &StoredKey> = HashMap::new();
        for key in keys.iter().filter(|k| k.retired_at.is_none()) {
            let slot = newest.entry(key.domain.as_str()).or_insert(key);
            if (key.created_at, &key.selector) > (slot.created_at, &slot.selector) {
                *slot = key;
            }
        }
        let mut by_domain = HashMap::with_capacity(newest.len());
        for (domain, key) in newest {
            let der = super::keys::private_der(key, secret)?;
            let rsa = match key.algorithm {
                super::Algorithm::Rsa => Some(ring::rsa::KeyPair::from_pkcs8(&der).map_err(
                    |e| DkimError::BadKey {
                        domain: key.domain.clone(),
                        selector: key.selector.clone(),
                        algorithm: key.algorithm,
                        reason: e.to_string(),
                    },
                )?),
                super::Algorithm::Ed25519 => None,
            };
            let signer = DkimSigner::from_key(super::keys::signing_key_from_der(key, der)?)
                .domain(domain)
                .selector(key.selector.as_str())
                .headers(SIGNED_HEADERS);
            by_domain.insert(
                domain.to_owned(),
                ActiveKey {
                    selector: key.selector.clone(),
                    signer,
                    rsa,
                },
            );
        }
        Ok(Self { by_domain })
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// Some active key is RSA: a signature costs about a millisecond, work for a blocking thread.
    pub fn has_rsa(&self) -> bool {
        self.by_domain
            .values()
            .any(|key| matches!(key.signer.key, DkimKey::Rsa(_)))
    }

    /// The signing domain and selector mail from `from_domain` is signed with: the domain's own key, or the
    /// nearest parent's (`alerts.example.com` signed by `example.com` aligns under DMARC's relaxed mode).
    pub fn selector_for(&self, from_domain: &str) -> Option<(&str, &str)> {
        self.lookup(from_domain)
            .map(|(domain, key)| (domain, key.selector.as_str()))
    }

    fn lookup(&self, from_domain: &str) -> Option<(&str, &ActiveKey)> {
        if self.by_domain.is_empty() {
            return None;
        }
        let lower = from_domain.trim_end_matches('.').to_ascii_lowercase();
        let mut candidate = lower.as_str();
        loop {
            if let Some((domain, key)) = self.by_domain.get_key_value(candidate) {
                return Some((domain.as_str(), key));
            }
            candidate = candidate.split_once('.')?.1;
        }
    }

    /// The `DKIM-Signature` header (folded, ending in CRLF) for `message` from `from_domain` (ASCII form),
    /// or `None` when no key covers the domain.
    pub fn sign(&self, from_domain: &str, message: &[u8]) -> Result<Option<Vec<u8>>, DkimError> {
        self.sign_segments(from_domain, &[message.into()])
    }

    /// As [`KeyRing::sign`], for a message stored as `segments` (headers first), which are hashed where they
    /// are: a shared attachment is never copied to be signed.
    pub fn sign_segments(
        &self,
        from_domain: &str,
        segments: &[SignedSegment<'_>],
    ) -> Result<Option<Vec<u8>>, DkimError> {
        let Some((domain, key)) = self.lookup(from_domain) else {
            return Ok(None);
        };
        let failed = |reason: String| DkimError::Sign {
            domain: domain.to_owned(),
            selector: key.selector.clone(),
            reason,
        };
        let signature = match sign_fast(key, segments) {
            Some(signature) => signature.map_err(failed)?,
            // What the fast path does not take (bare CR or LF, a header block across segments) mail-auth
            // signs from one buffer, as it reads it.
            None => key
                .signer
                .sign(
                    &segments
                        .iter()
                        .map(|s| s.bytes)
                        .collect::<Vec<_>>()
                        .concat(),
                )
                .map_err(|e| failed(e.to_string()))?,
        };
        let mut header = signature.to_header().into_bytes();
        if !header.ends_with(b"\r\n") {
            header.extend_from_slice(b"\r\n");
        }
        Ok(Some(header))
    }
}

/// Signs `segments` with `signer`, the body hash computed by [`RelaxedBody`] over the segments where they
/// are, and the rest with mail-auth's own parts (header selection and canonicalization as its signer does
/// them, the signature tag list, the key). `None` when the message is not one this path takes: its header
/// block does not end in the first segment, has a line that is not a field, or the message has a bare CR or
/// LF.
fn sign_fast(key: &ActiveKey, segments: &[SignedSegment<'_>]) -> Option<Result<Signature, String>> {
    let template = &key.signer.template;
    if template.cb != Canonicalization::Relaxed || template.l != 0 || template.x != 0 {
        return None;
    }
    let (first, rest) = segments.split_first()?;
    let first = first.bytes;
    let body_start = memchr::memmem::find(first, b"\r\n\r\n")? + 4;
    let mut body = RelaxedBody::new();
    body.update(&first[body_start..]).ok()?;
    for segment in rest {
        body.update_canonical(segment.bytes, segment.canonical)
            .ok()?;
    }
    let body_hash = body.finish().ok()?;

    // As mail-auth's `Signature::canonicalize`: every instance of a listed field, signed bottom-up, then the
    // listed fields the message lacks (signed as absent, §5.4).
    let mut headers = Vec::with_capacity(template.h.len());
    let mut found = vec![false; template.h.len()];
    let mut signed = Vec::with_capacity(template.h.len() + 2);
    for (name, value) in header_fields(&first[..body_start])? {
        if let Some(pos) = template
            .h
            .iter()
            .position(|listed| name.eq_ignore_ascii_case(listed.as_bytes()))
        {
            headers.push((name, value));
            found[pos] = true;
            signed.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    if signed.is_empty() {
        return Some(Err(mail_auth::Error::NoHeadersFound.to_string()));
    }
    signed.reverse();
    signed.extend(
        template
            .h
            .iter()
            .zip(&found)
            .filter(|(_, found)| !**found)
            .map(|(listed, _)| listed.clone()),
    );

    let mut signature = template.clone();
    signature.bh = body_hash.to_vec();
    signature.t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    signature.h = signed;
    let signable = Signable {
        headers: template.ch.canonical_headers(headers),
        signature: &signature,
    };
    let signed = match &key.rsa {
        Some(rsa) => {
            let mut data = Vec::with_capacity(1024);
            signable.write(&mut data);
            let mut b = vec![0; rsa.public().modulus_len()];
            rsa.sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                &data,
                &mut b,
            )
            .map(|()| b)
            .map_err(|e| e.to_string())
        }
        None => key.signer.key.sign(signable).map_err(|e| e.to_string()),
    };
    Some(signed.map(|b| {
        signature.b = b;
        signature
    }))
}

/// The fields of a header block that ends in its empty line, as `(name, value)` with the value's folding and
/// final CRLF kept (how mail-auth's signer reads them); `None` when a line is not a field or a line end is
/// not CRLF.
fn header_fields(block: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut fields = Vec::with_capacity(16);
    let mut start = 0;
    // The block ends in CRLF CRLF: the last line is the empty one.
    let end = block.len() - 2;
    while start < end {
        let colon = start + memchr::memchr2(b':', b'\n', &block[start..end])?;
        if block[colon] != b':' || colon == start {
            return None;
        }
        // The field goes on while the next line starts with whitespace (folding, RFC 5322 §2.2.3).
        let mut line_end = colon;
        loop {
            let lf = line_end + memchr::memchr(b'\n', &block[line_end..])?;
            if block[lf - 1] != b'\r' || memchr::memchr(b'\r', &block[line_end..lf - 1]).is_some() {
                return None;
            }
            line_end = lf + 1;
            if !matches!(block.get(line_end), Some(b' ' | b'\t')) {
                break;
            }
        }
        fields.push((&block[start..colon], &block[colon + 1..line_end]));
        start = line_end;
    }
    Some(fields)
}

/// What the signature covers (RFC 6376 §3.7): the canonical signed header fields, then the
/// `DKIM-Signature` itself with an empty `b=`, unterminated.
struct Signable<'a> {
    headers: CanonicalHeaders<'a>,
    signature: &'a Signature,
}

impl Writable for Signable<'_> {
    fn write(self, writer: &mut impl Writer) {
        self.headers.write(writer);
        self.signature.write(writer, false);
    }
}

/// Why the key ring could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] DkimError),
}

/// A node's signing state: the secret that unseals keys and the key ring last read from the store. Cheap to
/// clone; every clone shares the ring.
#[derive(Clone, Default)]
pub struct Signing {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    secret: Option<SecretKey>,
    ring: Mutex<(Arc<KeyRing>, Option<Instant>)>,
    /// Held while one request reloads the ring; the others sign with the ring they have meanwhile.
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signing")
            .field("secret", &self.inner.secret.is_some())
            .field("ring", &self.current())
            .finish()
    }
}

impl Signing {
    pub fn new(secret: Option<SecretKey>) -> Self {
        Self {
            inner: Arc::new(Inner {
                secret,
                ..Default::default()
            }),
        }
    }

    /// The key that seals private keys (`HERALD_SECRET_KEY`), if configured.
    pub fn secret(&self) -> Option<&SecretKey> {
        self.inner.secret.as_ref()
    }

    /// The ring as last read (empty before the first read).
    pub fn current(&self) -> Arc<KeyRing> {
        self.inner.ring.lock().expect("not poisoned").0.clone()
    }

    /// Reads the ring from the store now. `herald serve` does this at start, so that a key it cannot unseal
    /// stops it with the reason instead of mail going out unsigned.
    pub async fn load(&self, store: &Store) -> Result<Arc<KeyRing>, KeyRingError> {
        let keys = store.dkim_keys().await?;
        let ring = Arc::new(KeyRing::from_stored(&keys, self.secret())?);
        *self.inner.ring.lock().expect("not poisoned") = (ring.clone(), Some(Instant::now()));
        Ok(ring)
    }

    /// The ring, read again from the store when older than [`KEY_RING_TTL`]. A failed read keeps the ring
    /// there was (logged): a database hiccup does not make mail go out unsigned.
    pub async fn refresh(&self, store: &Store) -> Arc<KeyRing> {
        let (ring, loaded_at) = self.inner.ring.lock().expect("not poisoned").clone();
        if loaded_at.is_some_and(|at| at.elapsed() < KEY_RING_TTL) {
            return ring;
        }
        let Ok(_gate) = self.inner.reloading.try_lock() else {
            return ring;
        };
        match self.load(store).await {
            Ok(ring) => ring,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the DKIM keys; signing with the keys read before");
                // Try again after a TTL, not on every request.
                self.inner.ring.lock().expect("not poisoned").1 = Some(Instant::now());
                ring
            }
        }
    }

    /// Forgets when the ring was read, so the next request reads it (after a change made through this node).
    pub fn invalidate(&self) {
        self.inner.ring.lock().expect("not poisoned").1 = None;
    }
}
