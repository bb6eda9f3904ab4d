//! Attachments that separate `POST /v1/messages` calls share: an application sends the same logo and often
//! the same PDF with every notification. Each attachment is encoded into one shared segment (the store keeps
//! it once, by the SHA-256 of its bytes, as it keeps a batch's), and the segments of recent attachments are
//! kept here, so that a call carrying one seen before is neither decoded nor encoded again.
//!
//! A part's encoded segment is a pure function of its request fields (file name, content type, inline,
//! Content-ID, the base64 text), so the cache is keyed by the SHA-256 of those: a hit gives the very bytes
//! composing would have written. A collision-resistant key matters here: a weak one could put another
//! client's file into a message.
//!
//! SMTP submission brings the encoded bytes themselves; their blobs are kept here too, by the BLAKE3 of the
//! bytes, so that a segment seen before is not hashed with SHA-256 again and keeps its DKIM canonical form.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use herald_mime::EncodedPart;

use crate::{
    request::{AttachmentRequest, Files, RequestError},
    store::SharedBlob,
};

/// At most this many parts are kept …
const MAX_PARTS: usize = 64;
/// … and at most this many bytes of encoded segments (a part larger than this is encoded every time).
const MAX_BYTES: usize = 32 * 1024 * 1024;

/// Recently seen attachments: request key → the encoded part and its blob; and recently submitted shared
/// segments (SMTP submission): content key → the blob. Least recently used evicted.
#[derive(Debug, Default)]
pub struct PartCache {
    parts: Mutex<Recent<(EncodedPart, Arc<SharedBlob>)>>,
    segments: Mutex<Recent<Arc<SharedBlob>>>,
}

impl PartCache {
    /// Attachment `i` as a shared, encoded part, and the blob the store keeps it as; from the cache when the
    /// same attachment was seen recently. Errors name the attachment's fields as [`AttachmentRequest::to_part`]
    /// does.
    pub fn encode(
        &self,
        i: usize,
        attachment: &AttachmentRequest,
        files: &Files<'_>,
    ) -> Result<(EncodedPart, Arc<SharedBlob>), RequestError> {
        let Some(key) = key(attachment) else {
            // A file path (the CLI): its bytes are not in the request, so nothing identifies it before reading.
            return Ok(encoded(attachment.to_part(i, files)?.encode()));
        };
        if let Some(hit) = lock(&self.parts).get(&key) {
            return Ok(hit);
        }
        let (part, blob) = encoded(attachment.to_part(i, files)?.encode());
        let size = blob.bytes.len();
        lock(&self.parts).put(key, (part.clone(), blob.clone()), size);
        Ok((part, blob))
    }

    /// The blob of a segment a submitted message carries (an attachment's encoded body): the one kept from
    /// an earlier submission with the same bytes when there is one, so that its SHA-256 address and its DKIM
    /// canonical form are not computed again. Keyed by the BLAKE3 of the bytes (collision-resistant, and
    /// about five times cheaper than the SHA-256 it saves).
    pub fn segment(&self, bytes: bytes::Bytes) -> Arc<SharedBlob> {
        let key = *blake3::hash(&bytes).as_bytes();
        if let Some(hit) = lock(&self.segments).get(&key) {
            return hit;
        }
        let blob = SharedBlob::new(bytes);
        lock(&self.segments).put(key, blob.clone(), blob.bytes.len());
        blob
    }

    /// How many parts are kept now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.parts).entries.len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// At most [`MAX_PARTS`] values and [`MAX_BYTES`] of the bytes they stand for, by key.
#[derive(Debug)]
struct Recent<V> {
    entries: HashMap<[u8; 32], (V, u64, usize)>,
    bytes: usize,
    tick: u64,
}

impl<V> std::default::Default for Recent<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            tick: 0,
        }
    }
}

impl<V: Clone> Recent<V> {
    fn get(&mut self, key: &[u8; 32]) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        let (value, used, _) = self.entries.get_mut(key)?;
        *used = tick;
        Some(value.clone())
    }

    fn put(&mut self, key: [u8; 32], value: V, size: usize) {
        if size > MAX_BYTES || self.entries.contains_key(&key) {
            return;
        }
        while !self.entries.is_empty()
            && (self.entries.len() >= MAX_PARTS || self.bytes + size > MAX_BYTES)
        {
            // A linear scan: at most MAX_PARTS entries, and only when a new one arrives.
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used, _))| *used)
                .map(|(k, _)| *k);
            if let Some((_, _, removed)) = oldest.and_then(|k| self.entries.remove(&k)) {
                self.bytes -= removed;
            }
        }
        self.tick += 1;
        self.bytes += size;
        self.entries.insert(key, (value, self.tick, size));
    }
}

/// The blob of an encoded part: the same allocation, so that composing finds it by identity.
fn encoded(part: EncodedPart) -> (EncodedPart, Arc<SharedBlob>) {
    let blob = SharedBlob::new(part.segment().bytes.clone());
    (part, blob)
}

/// The BLAKE3 hash of every field the encoded part depends on, each length-prefixed so that no two requests
/// frame alike; `None` for a part read from a file. BLAKE3 rather than SHA-256: as collision-resistant, and
/// 8.7 instead of 41.6 µs for the standard notification's 80 KB of base64 on this machine (`cargo run
/// --release -p herald --example key_hash_cost`), once per call. (Stored blobs keep their SHA-256 address.)
fn key(a: &AttachmentRequest) -> Option<[u8; 32]> {
    let (Some(base64), None) = (&a.content_base64, &a.path) else {
        return None;
    };
    let mut hash = blake3::Hasher::new();
    let mut field = |bytes: Option<&[u8]>| match bytes {
        Some(bytes) => {
            hash.update(&[1]);
            hash.update(&(bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        }
        None => {
            hash.update(&[0]);
        }
    };
    field(Some(a.filename.as_bytes()));
    field(a.content_type.as_deref().map(str::as_bytes));
    field(Some(&[u8::from(a.inline)]));
    field(a.content_id.as_deref().map(str::as_bytes));
    field(Some(base64.as_bytes()));
    Some(*hash.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(filename: &str, base64: &str) -> AttachmentRequest {
        AttachmentRequest {
            filename: filename.into(),
            content_type: None,
            content_base64: Some(base64.into()),
            path: None,
            inline: false,
            content_id: None,
        }
    }

    #[test]
    fn a_part_seen_before_is_the_same_allocation_and_any_difference_is_a_new_part() {
        let cache = PartCache::default();
        let a = attachment("a.pdf", "JVBERi0xLjQ=");
        let (first, blob) = cache.encode(0, &a, &Files::Forbidden).unwrap();
        let (again, blob_again) = cache.encode(3, &a, &Files::Forbidden).unwrap();
        assert!(Arc::ptr_eq(&blob, &blob_again));
        assert_eq!(
            first.segment().bytes.as_ptr(),
            again.segment().bytes.as_ptr()
        );
        // What composing would have written for it.
        let fresh = a.to_part(0, &Files::Forbidden).unwrap().encode();
        assert_eq!(fresh.segment().bytes, first.segment().bytes);

        let renamed = attachment("b.pdf", "JVBERi0xLjQ=");
        let (other, _) = cache.encode(0, &renamed, &Files::Forbidden).unwrap();
        assert_ne!(other.segment().bytes, first.segment().bytes);
        let mut inline = a.clone();
        inline.inline = true;
        inline.content_id = Some("a@x".into());
        let (inline_part, _) = cache.encode(0, &inline, &Files::Forbidden).unwrap();
        assert!(inline_part.is_inline());
        assert_eq!(cache.len(), 3);

        let bad = cache
            .encode(2, &attachment("c.pdf", "not base64!"), &Files::Forbidden)
            .unwrap_err();
        assert_eq!(bad.field, "attachments[2].content_base64");
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_submitted_segment_seen_before_is_the_same_blob() {
        let cache = PartCache::default();
        let a = cache.segment(bytes::Bytes::from_static(b"QUJD\r\n"));
        let again = cache.segment(bytes::Bytes::from(b"QUJD\r\n".to_vec()));
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(a.hash, *SharedBlob::new(a.bytes.clone()).hash.as_ref());
        let other = cache.segment(bytes::Bytes::from_static(b"QUJE\r\n"));
        assert!(!Arc::ptr_eq(&a, &other));
        assert_ne!(a.hash, other.hash);
    }

    #[test]
    fn the_cache_stays_within_its_bounds() {
        use base64::Engine as _;
        let cache = PartCache::default();
        for n in 0..(MAX_PARTS + 10) {
            let text = base64::engine::general_purpose::STANDARD.encode(format!("file {n}"));
            cache
                .encode(0, &attachment("f.bin", &text), &Files::Forbidden)
                .unwrap();
        }
        assert_eq!(cache.len(), MAX_PARTS);
        // The most recently used survive: the last one added is still a hit.
        let last =
            base64::engine::general_purpose::STANDARD.encode(format!("file {}", MAX_PARTS + 9));
        let (_, a) = cache
            .encode(0, &attachment("f.bin", &last), &Files::Forbidden)
            .unwrap();
        let (_, b) = cache
            .encode(0, &attachment("f.bin", &last), &Files::Forbidden)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }
}
