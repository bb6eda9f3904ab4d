//! Attachments that separate `POST /v1/messages` calls share: an application sends the same logo and often
//! the same PDF with every notification. Each attachment is encoded into one shared segment (the store keeps
//! it once, by the SHA-256 of its bytes, as it keeps a batch's), and the segments of recent attachments are
//! kept here, so that a call carrying one seen before is neither decoded nor encoded again.
//!
//! A part's encoded segment is a pure function of its request fields (file name, content type, inline,
//! Content-ID, the base64 text), so the cache is keyed by the SHA-256 of those: a hit gives the very bytes
//! composing would have written. A collision-resistant key matters here: a weak one could put another
//! client's file into a message.

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

/// Recently seen attachments: request key → the encoded part and its blob, least recently used evicted.
#[derive(Debug, Default)]
pub struct PartCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    parts: HashMap<[u8; 32], Entry>,
    bytes: usize,
    tick: u64,
}

#[derive(Debug)]
struct Entry {
    part: EncodedPart,
    blob: Arc<SharedBlob>,
    used: u64,
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
        if let Some(hit) = self.get(&key) {
            return Ok(hit);
        }
        let (part, blob) = encoded(attachment.to_part(i, files)?.encode());
        self.put(key, &part, &blob);
        Ok((part, blob))
    }

    fn get(&self, key: &[u8; 32]) -> Option<(EncodedPart, Arc<SharedBlob>)> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.parts.get_mut(key)?;
        entry.used = tick;
        Some((entry.part.clone(), entry.blob.clone()))
    }

    fn put(&self, key: [u8; 32], part: &EncodedPart, blob: &Arc<SharedBlob>) {
        let size = blob.bytes.len();
        if size > MAX_BYTES {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.parts.contains_key(&key) {
            return;
        }
        while !inner.parts.is_empty()
            && (inner.parts.len() >= MAX_PARTS || inner.bytes + size > MAX_BYTES)
        {
            // A linear scan: at most MAX_PARTS entries, and only when a new part arrives.
            let oldest = inner
                .parts
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k);
            if let Some(removed) = oldest.and_then(|k| inner.parts.remove(&k)) {
                inner.bytes -= removed.blob.bytes.len();
            }
        }
        inner.tick += 1;
        let used = inner.tick;
        inner.bytes += size;
        inner.parts.insert(
            key,
            Entry {
                part: part.clone(),
                blob: blob.clone(),
                used,
            },
        );
    }

    /// How many parts are kept now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|i| i.parts.len()).unwrap_or(0)
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
