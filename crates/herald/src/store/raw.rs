//! The stored form of a composed message: a list of segments, some owned by the message, some shared.
//!
//! A personalized batch sends the same 50 KB PDF to every recipient. Storing it per message would cost 50 KB
//! each; instead the shared part is written once to `blobs` and the message keeps a 33-byte reference. The
//! framing keeps each segment's `dot_safe` flag, so the SMTP writer can skip scanning base64 bodies.
//!
//! Frame: one tag byte, then either `len: u32 LE` + bytes (literal), or a 32-byte SHA-256 (shared), or
//! `len: u32 LE` + `stored_len: u32 LE` + an LZ4 block of `stored_len` bytes that decompresses to the `len`
//! bytes of a literal (compressed literal; SQLite writes these, see [`encode_compact`]). A build before the
//! compressed tag cannot read a store written after it.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::StoreError;
use crate::dkim::body::CanonicalSegment;

const TAG_LITERAL: u8 = 0;
const TAG_SHARED: u8 = 1;
const TAG_COMPRESSED: u8 = 4;
/// Literals shorter than this are stored as they are: too little to gain.
const COMPRESS_MIN: usize = 512;
const FLAG_DOT_SAFE: u8 = 2;

/// A part whose bytes are shared by many messages, identified by the SHA-256 of its bytes.
pub struct SharedBlob {
    pub hash: [u8; 32],
    pub bytes: Bytes,
    /// The bytes in DKIM's relaxed body canonical form (issue 13), made the first time a message carrying
    /// them is signed, for every later one: a batch's messages and the calls the attachment cache serves
    /// share this `Arc`. Kept beside the bytes, not stored: it is a pure function of them.
    canonical: OnceLock<Option<CanonicalSegment>>,
}

impl SharedBlob {
    /// Hashes the bytes once; every message that uses this blob refers to the same `Arc`.
    pub fn new(bytes: Bytes) -> Arc<Self> {
        let hash = Sha256::digest(&bytes).into();
        Self::stored(hash, bytes)
    }

    /// A blob read back from the store under its `hash`.
    pub fn stored(hash: [u8; 32], bytes: Bytes) -> Arc<Self> {
        Arc::new(Self {
            hash,
            bytes,
            canonical: OnceLock::new(),
        })
    }

    /// The canonical form for the DKIM body hash, where one is worth keeping (see [`CanonicalSegment::of`]).
    pub fn canonical(&self) -> Option<&CanonicalSegment> {
        self.canonical
            .get_or_init(|| CanonicalSegment::of(&self.bytes))
            .as_ref()
    }
}

impl PartialEq for SharedBlob {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.bytes == other.bytes
    }
}

impl Eq for SharedBlob {}

impl std::fmt::Debug for SharedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBlob")
            .field("hash", &self.hash)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// One piece of a stored message, in wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSegment {
    /// Bytes that belong to this message only (headers, personalized bodies, boundaries).
    Literal { bytes: Bytes, dot_safe: bool },
    /// Bytes stored once in `blobs` and referenced by hash.
    Shared {
        blob: Arc<SharedBlob>,
        dot_safe: bool,
    },
}

impl RawSegment {
    pub fn bytes(&self) -> &Bytes {
        match self {
            RawSegment::Literal { bytes, .. } => bytes,
            RawSegment::Shared { blob, .. } => &blob.bytes,
        }
    }

    pub fn dot_safe(&self) -> bool {
        match self {
            RawSegment::Literal { dot_safe, .. } | RawSegment::Shared { dot_safe, .. } => *dot_safe,
        }
    }
}

/// Total size on the wire (before dot-stuffing) of a segment list.
pub fn wire_size(segments: &[RawSegment]) -> usize {
    segments.iter().map(|s| s.bytes().len()).sum()
}

/// Writes segments in the stored framing.
pub fn encode(segments: &[RawSegment]) -> Vec<u8> {
    frame(segments, false)
}

/// [`encode`], with every literal of [`COMPRESS_MIN`] bytes or more stored LZ4-compressed when that saves
/// an eighth or more. The standard notification's literals (headers, and the text and HTML parts in base64)
/// go from 8.6 to 5.0 KB, which is one overflow page less per message in SQLite, for 8 µs.
pub fn encode_compact(segments: &[RawSegment]) -> Vec<u8> {
    frame(segments, true)
}

fn frame(segments: &[RawSegment], compact: bool) -> Vec<u8> {
    let framed: usize = segments
        .iter()
        .map(|s| match s {
            RawSegment::Literal { bytes, .. } => 5 + bytes.len(),
            RawSegment::Shared { .. } => 33,
        })
        .sum();
    let mut out = BytesMut::with_capacity(if compact { framed / 2 + 64 } else { framed });
    for segment in segments {
        let flag = if segment.dot_safe() { FLAG_DOT_SAFE } else { 0 };
        match segment {
            RawSegment::Literal { bytes, .. } => {
                let compressed = (compact && bytes.len() >= COMPRESS_MIN)
                    .then(|| lz4_flex::block::compress(bytes))
                    .filter(|c| c.len() + 4 <= bytes.len() - bytes.len() / 8);
                match compressed {
                    Some(compressed) => {
                        out.put_u8(TAG_COMPRESSED | flag);
                        out.put_u32_le(bytes.len() as u32);
                        out.put_u32_le(compressed.len() as u32);
                        out.put_slice(&compressed);
                    }
                    None => {
                        out.put_u8(TAG_LITERAL | flag);
                        out.put_u32_le(bytes.len() as u32);
                        out.put_slice(bytes);
                    }
                }
            }
            RawSegment::Shared { blob, .. } => {
                out.put_u8(TAG_SHARED | flag);
                out.put_slice(&blob.hash);
            }
        }
    }
    out.to_vec()
}

/// The shared hashes a framed message refers to, in order.
pub fn shared_hashes(framed: &[u8]) -> Result<Vec<[u8; 32]>, String> {
    let mut hashes = Vec::new();
    walk(framed, |piece| {
        if let Piece::Shared(hash, _) = piece {
            hashes.push(hash);
        }
    })?;
    Ok(hashes)
}

/// A stored body as segments: fetches the shared parts it refers to with `fetch_blobs` (the store's
/// query), then decodes; a framing that does not read back is [`StoreError::CorruptBody`] naming message `id`.
pub async fn resolve<F, Fut>(
    id: &str,
    framed: Vec<u8>,
    fetch_blobs: F,
) -> Result<Vec<RawSegment>, StoreError>
where
    F: FnOnce(std::collections::HashSet<[u8; 32]>) -> Fut,
    Fut: std::future::Future<Output = Result<HashMap<[u8; 32], Arc<SharedBlob>>, StoreError>>,
{
    let corrupt = |reason| StoreError::CorruptBody {
        id: id.to_owned(),
        reason,
    };
    let hashes = shared_hashes(&framed).map_err(corrupt)?;
    let blobs = fetch_blobs(hashes.into_iter().collect()).await?;
    decode(&Bytes::from(framed), &blobs).map_err(corrupt)
}

/// Reads the stored framing back, resolving shared segments through `blobs` (hash → bytes).
pub fn decode(
    framed: &Bytes,
    blobs: &HashMap<[u8; 32], Arc<SharedBlob>>,
) -> Result<Vec<RawSegment>, String> {
    let mut segments = Vec::new();
    let mut missing = None;
    let mut broken = None;
    walk(framed, |piece| match piece {
        Piece::Literal(range, dot_safe) => segments.push(RawSegment::Literal {
            bytes: framed.slice(range),
            dot_safe,
        }),
        Piece::Compressed(range, len, dot_safe) => match decompress(&framed[range], len) {
            Ok(bytes) => segments.push(RawSegment::Literal {
                bytes: Bytes::from(bytes),
                dot_safe,
            }),
            Err(reason) => broken = Some(reason),
        },
        Piece::Shared(hash, dot_safe) => match blobs.get(&hash) {
            Some(blob) => segments.push(RawSegment::Shared {
                blob: blob.clone(),
                dot_safe,
            }),
            None => missing = Some(hash),
        },
    })?;
    if let Some(reason) = broken {
        return Err(reason);
    }
    match missing {
        Some(hash) => Err(format!("shared part {} is missing", hex(&hash))),
        None => Ok(segments),
    }
}

/// A compressed literal back, checked to be exactly the `len` bytes its frame says.
fn decompress(compressed: &[u8], len: usize) -> Result<Vec<u8>, String> {
    // LZ4 expands at most 255 times: a length beyond that is a corrupt frame, not an allocation to make.
    if len > compressed.len().saturating_mul(255).saturating_add(16) {
        return Err(format!(
            "compressed segment claims {len} bytes from {}",
            compressed.len()
        ));
    }
    let bytes = lz4_flex::block::decompress(compressed, len)
        .map_err(|e| format!("compressed segment does not decompress: {e}"))?;
    if bytes.len() != len {
        return Err(format!(
            "compressed segment gave {} bytes, not {len}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// The stored bytes with the shared parts left out: enough to read a message's text (shared parts are
/// attachments' encoded bodies), without fetching any blob.
pub fn literal_bytes(framed: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(framed.len());
    let mut broken = None;
    walk(framed, |piece| match piece {
        Piece::Literal(range, _) => out.extend_from_slice(&framed[range]),
        Piece::Compressed(range, len, _) => match decompress(&framed[range], len) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(reason) => broken = Some(reason),
        },
        Piece::Shared(..) => {}
    })?;
    match broken {
        Some(reason) => Err(reason),
        None => Ok(out),
    }
}

enum Piece {
    Literal(std::ops::Range<usize>, bool),
    /// The stored bytes, and the length of the literal they decompress to.
    Compressed(std::ops::Range<usize>, usize, bool),
    Shared([u8; 32], bool),
}

fn walk(framed: &[u8], mut visit: impl FnMut(Piece)) -> Result<(), String> {
    let mut at = 0;
    while at < framed.len() {
        let tag = framed[at];
        let dot_safe = tag & FLAG_DOT_SAFE != 0;
        at += 1;
        match tag & !FLAG_DOT_SAFE {
            TAG_LITERAL => {
                let len_bytes: [u8; 4] = framed
                    .get(at..at + 4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or("truncated segment length")?;
                let len = u32::from_le_bytes(len_bytes) as usize;
                at += 4;
                if at + len > framed.len() {
                    return Err("truncated segment".into());
                }
                visit(Piece::Literal(at..at + len, dot_safe));
                at += len;
            }
            TAG_COMPRESSED => {
                let lengths = framed
                    .get(at..at + 8)
                    .ok_or("truncated compressed lengths")?;
                let len = u32::from_le_bytes(lengths[..4].try_into().expect("4 bytes")) as usize;
                let stored = u32::from_le_bytes(lengths[4..].try_into().expect("4 bytes")) as usize;
                at += 8;
                if at + stored > framed.len() {
                    return Err("truncated compressed segment".into());
                }
                visit(Piece::Compressed(at..at + stored, len, dot_safe));
                at += stored;
            }
            TAG_SHARED => {
                let hash: [u8; 32] = framed
                    .get(at..at + 32)
                    .and_then(|s| s.try_into().ok())
                    .ok_or("truncated shared reference")?;
                at += 32;
                visit(Piece::Shared(hash, dot_safe));
            }
            other => return Err(format!("unknown segment tag {other}")),
        }
    }
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips_literals_and_shared_parts() {
        let blob = SharedBlob::new(Bytes::from_static(b"QUJD\r\n"));
        let segments = vec![
            RawSegment::Literal {
                bytes: Bytes::from_static(b"Subject: hi\r\n\r\n"),
                dot_safe: false,
            },
            RawSegment::Shared {
                blob: blob.clone(),
                dot_safe: true,
            },
            RawSegment::Literal {
                bytes: Bytes::new(),
                dot_safe: true,
            },
        ];
        let framed = Bytes::from(encode(&segments));
        assert_eq!(shared_hashes(&framed).unwrap(), vec![blob.hash]);
        let blobs = HashMap::from([(blob.hash, blob.clone())]);
        assert_eq!(decode(&framed, &blobs).unwrap(), segments);
        assert!(
            decode(&framed, &HashMap::new())
                .unwrap_err()
                .contains("missing")
        );
        assert!(decode(&framed.slice(..framed.len() - 3), &blobs).is_err());
    }

    #[test]
    fn compact_framing_compresses_large_literals_and_reads_back_the_same_segments() {
        let blob = SharedBlob::new(Bytes::from_static(b"QUJD\r\n"));
        let text: String = (0..200)
            .map(|i| format!("line {i} of a text part\r\n"))
            .collect();
        let random: Vec<u8> = (0..4000_u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let segments = vec![
            RawSegment::Literal {
                bytes: Bytes::from(text.clone()),
                dot_safe: true,
            },
            RawSegment::Shared {
                blob: blob.clone(),
                dot_safe: true,
            },
            // Incompressible, and small: both kept as they are.
            RawSegment::Literal {
                bytes: Bytes::from(random.clone()),
                dot_safe: false,
            },
            RawSegment::Literal {
                bytes: Bytes::from_static(b"--b--\r\n"),
                dot_safe: true,
            },
        ];
        let framed = Bytes::from(encode_compact(&segments));
        assert!(
            framed.len() < text.len() / 2 + random.len() + 100,
            "{}",
            framed.len()
        );
        assert_eq!(framed[0], TAG_COMPRESSED | FLAG_DOT_SAFE);
        let blobs = HashMap::from([(blob.hash, blob.clone())]);
        assert_eq!(decode(&framed, &blobs).unwrap(), segments);
        assert_eq!(shared_hashes(&framed).unwrap(), vec![blob.hash]);
        let literal = literal_bytes(&framed).unwrap();
        assert_eq!(literal.len(), text.len() + random.len() + 7);
        assert!(literal.starts_with(text.as_bytes()));
        // A damaged frame is an error naming the segment, never a panic or a huge allocation.
        let mut damaged = framed.to_vec();
        damaged[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            decode(&Bytes::from(damaged), &blobs)
                .unwrap_err()
                .contains("claims")
        );
        let mut damaged = framed.to_vec();
        damaged[20] ^= 0xFF;
        let _ = decode(&Bytes::from(damaged.clone()), &blobs);
        assert!(decode(&Bytes::from(damaged[..30].to_vec()), &blobs).is_err());
    }
}
