//! Attachments and inline parts, raw or encoded once for a whole batch.

use std::fmt;

use bytes::Bytes;

use crate::{
    Segment,
    encode::{self, TransferEncoding},
    error::ComposeError,
    header::{self, Fold},
};

/// A file carried by a message: an attachment, or an inline part (an image
/// the HTML shows through `cid:`).
///
/// Building one validates everything that ends up in its headers (content
/// type, file name, Content-ID), so writing it cannot fail later.
#[derive(Clone, PartialEq, Eq)]
pub struct Part {
    pub(crate) meta: PartMeta,
    pub(crate) data: Bytes,
}

/// Everything about a part except its bytes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PartMeta {
    pub media_type: String,
    pub params: Vec<(String, String)>,
    pub filename: Option<String>,
    pub content_id: Option<String>,
    pub inline: bool,
}

impl Part {
    /// An attachment (`Content-Disposition: attachment`) with a file name in
    /// any language. `content_type` is `type/subtype`, optionally followed
    /// by `; param=value` pairs.
    pub fn attachment(
        filename: &str,
        content_type: &str,
        data: impl Into<Bytes>,
    ) -> Result<Part, ComposeError> {
        let (media_type, params) = parse_content_type(content_type)?;
        Ok(Part {
            meta: PartMeta {
                media_type,
                params,
                filename: Some(check_filename(filename)?),
                content_id: None,
                inline: false,
            },
            data: data.into(),
        })
    }

    /// An inline part (`Content-Disposition: inline`) that HTML refers to as
    /// `cid:<content_id>`. Angle brackets around the id are optional.
    pub fn inline(
        content_id: &str,
        content_type: &str,
        data: impl Into<Bytes>,
    ) -> Result<Part, ComposeError> {
        let (media_type, params) = parse_content_type(content_type)?;
        Ok(Part {
            meta: PartMeta {
                media_type,
                params,
                filename: None,
                content_id: Some(check_content_id(content_id)?),
                inline: true,
            },
            data: data.into(),
        })
    }

    /// Sets (or replaces) the file name, e.g. for an inline image.
    pub fn with_filename(mut self, filename: &str) -> Result<Part, ComposeError> {
        self.meta.filename = Some(check_filename(filename)?);
        Ok(self)
    }

    /// Sets a Content-ID on an attachment (or replaces an inline part's).
    pub fn with_content_id(mut self, content_id: &str) -> Result<Part, ComposeError> {
        self.meta.content_id = Some(check_content_id(content_id)?);
        Ok(self)
    }

    /// The raw (decoded) bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The file name, if any.
    pub fn filename(&self) -> Option<&str> {
        self.meta.filename.as_deref()
    }

    /// The Content-ID without angle brackets, if any.
    pub fn content_id(&self) -> Option<&str> {
        self.meta.content_id.as_deref()
    }

    /// `type/subtype`.
    pub fn media_type(&self) -> &str {
        &self.meta.media_type
    }

    /// Whether the part is inline (shown in the HTML) or an attachment.
    pub fn is_inline(&self) -> bool {
        self.meta.inline
    }

    /// Encodes the part once, headers and body, into one shared segment.
    ///
    /// This is how a batch shares an attachment or an inline image: every
    /// message built with the returned [`EncodedPart`] refers to the same
    /// reference-counted bytes, so the part is neither encoded nor copied
    /// again, and the SMTP writer sends those bytes as they are. The
    /// segment holds no boundary (boundaries belong to each message), so it
    /// fits in any message's tree.
    pub fn encode(&self) -> EncodedPart {
        let mut out = Vec::with_capacity(encode::base64_mime_len(self.data.len()) + 512);
        let encoding = write_part(&self.meta, &self.data, &mut out);
        EncodedPart {
            meta: self.meta.clone(),
            encoding,
            segment: Segment {
                bytes: Bytes::from(out),
                // Parts are never written 7bit/8bit with a leading dot (see
                // `write_part`), and QP and base64 never start a line with '.'.
                dot_safe: true,
            },
        }
    }
}

impl fmt::Debug for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Part")
            .field("media_type", &self.meta.media_type)
            .field("filename", &self.meta.filename)
            .field("content_id", &self.meta.content_id)
            .field("inline", &self.meta.inline)
            .field("len", &self.data.len())
            .finish()
    }
}

/// A part encoded once (headers and body), cheap to clone and to put into
/// any number of messages. See [`Part::encode`].
#[derive(Clone)]
pub struct EncodedPart {
    pub(crate) meta: PartMeta,
    pub(crate) encoding: TransferEncoding,
    pub(crate) segment: Segment,
}

impl EncodedPart {
    /// The encoded entity: part headers, blank line, body, final CRLF.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The transfer encoding chosen.
    pub fn encoding(&self) -> TransferEncoding {
        self.encoding
    }

    /// The Content-ID without angle brackets, if any.
    pub fn content_id(&self) -> Option<&str> {
        self.meta.content_id.as_deref()
    }

    /// Whether the part is inline.
    pub fn is_inline(&self) -> bool {
        self.meta.inline
    }
}

impl fmt::Debug for EncodedPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedPart")
            .field("media_type", &self.meta.media_type)
            .field("filename", &self.meta.filename)
            .field("encoding", &self.encoding)
            .field("len", &self.segment.bytes.len())
            .finish()
    }
}

/// Writes a part's headers, a blank line and its encoded body.
///
/// Attachments are bytes that must arrive unchanged, so they are never
/// line-ending normalized: 7bit only when the data is already canonical
/// ASCII with no line starting with `.`, else quoted-printable in binary
/// mode (every CR/LF escaped) or base64, whichever is smaller.
pub(crate) fn write_part(meta: &PartMeta, data: &[u8], out: &mut Vec<u8>) -> TransferEncoding {
    // A 4 KiB probe decides most files without reading them twice:
    // compressed data shows its escape ratio at once, and a high byte or a
    // bare CR/LF rules 7bit out, leaving QP (abandoned as soon as it grows
    // past base64's size) or base64. Only files that still look like
    // canonical ASCII text are scanned to the end.
    const PROBE: usize = 4096;
    let probe = encode::scan(&data[..data.len().min(PROBE)], true);
    let s = if data.len() > PROBE && !probe.high && !probe.unsafe_ctl {
        encode::scan(data, true)
    } else {
        probe
    };
    let scanned = data.len().min(if s.high || s.unsafe_ctl {
        PROBE
    } else {
        data.len()
    });
    let literal = !s.high && !s.unsafe_ctl && !s.risky_line && !s.dot_line && s.max_line <= 998;
    let b64 = encode::base64_mime_len(data.len());
    let escapes = s.qp_escapes.min(scanned) * (data.len() / scanned.max(1));
    let qp_est = data.len() + 2 * escapes + 3 * (data.len() / 75);
    let mut enc = if literal {
        TransferEncoding::SevenBit
    } else if qp_est < b64 - b64 / 32 {
        TransferEncoding::QuotedPrintable
    } else {
        TransferEncoding::Base64
    };
    let start = out.len();
    loop {
        write_part_headers(meta, enc, out);
        match enc {
            TransferEncoding::SevenBit | TransferEncoding::EightBit => {
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            TransferEncoding::QuotedPrintable => {
                let body_start = out.len();
                if !encode::quoted_printable(data, false, b64, out) {
                    debug_assert_eq!(out.len(), body_start);
                    out.truncate(start);
                    enc = TransferEncoding::Base64;
                    continue;
                }
                out.extend_from_slice(b"\r\n");
            }
            TransferEncoding::Base64 => {
                encode::base64_mime(data, out);
                if data.is_empty() {
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        return enc;
    }
}

fn write_part_headers(meta: &PartMeta, enc: TransferEncoding, out: &mut Vec<u8>) {
    let mut f = Fold::start(out, "Content-Type");
    f.token(false, meta.media_type.as_bytes());
    for (k, v) in &meta.params {
        header::param(&mut f, k, v, false);
    }
    if let Some(name) = &meta.filename {
        header::param(&mut f, "name", name, true);
    }
    f.finish();
    let mut f = Fold::start(out, "Content-Disposition");
    f.token(
        false,
        if meta.inline {
            b"inline"
        } else {
            b"attachment"
        },
    );
    if let Some(name) = &meta.filename {
        header::param(&mut f, "filename", name, false);
    }
    f.finish();
    if let Some(id) = &meta.content_id {
        out.extend_from_slice(b"Content-ID: <");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b">\r\n");
    }
    if enc != TransferEncoding::SevenBit {
        out.extend_from_slice(b"Content-Transfer-Encoding: ");
        out.extend_from_slice(enc.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// RFC 2045 §5.1 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// Parses `type/subtype; a=b; c="d"` into a lower-cased media type and
/// parameters.
pub(crate) fn parse_content_type(
    ct: &str,
) -> Result<(String, Vec<(String, String)>), ComposeError> {
    let bad = |why: &'static str| ComposeError::InvalidContentType {
        value: ct.to_owned(),
        reason: why,
    };
    if ct.contains(|c: char| c.is_control() && c != '\t') {
        return Err(bad("control characters are not allowed"));
    }
    let mut pieces = ct.split(';');
    let mt = pieces.next().unwrap_or("").trim();
    let (ty, sub) = mt
        .split_once('/')
        .ok_or_else(|| bad("expected type/subtype"))?;
    if !is_token(ty) || !is_token(sub) {
        return Err(bad("type and subtype must be RFC 2045 tokens"));
    }
    let media_type = mt.to_ascii_lowercase();
    if media_type.starts_with("multipart/") || media_type == "message/rfc822" {
        return Err(bad("composite types are built by Herald, not given"));
    }
    let mut params = Vec::new();
    for p in pieces {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| bad("parameter without '='"))?;
        let (k, v) = (k.trim(), v.trim());
        if !is_token(k) {
            return Err(bad("parameter name must be a token"));
        }
        let v = match v.strip_prefix('"') {
            Some(q) => q
                .strip_suffix('"')
                .ok_or_else(|| bad("unterminated quoted value"))?,
            None => v,
        };
        let k = k.to_ascii_lowercase();
        if k == "name" || k == "boundary" {
            return Err(bad("name and boundary are written by Herald"));
        }
        params.push((k, v.to_owned()));
    }
    Ok((media_type, params))
}

fn check_filename(name: &str) -> Result<String, ComposeError> {
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(ComposeError::ControlCharacter {
            field: "filename".into(),
            ch: c,
        });
    }
    if name.trim().is_empty() {
        return Err(ComposeError::EmptyFilename);
    }
    Ok(name.to_owned())
}

/// A Content-ID is an `msg-id` (RFC 2045 §7, RFC 5322 §3.6.4): printable
/// ASCII without spaces, angle brackets or quotes.
pub(crate) fn check_content_id(id: &str) -> Result<String, ComposeError> {
    let id = id.trim();
    let id = id
        .strip_prefix('<')
        .and_then(|i| i.strip_suffix('>'))
        .unwrap_or(id);
    let ok = !id.is_empty()
        && id.len() <= 250
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>\"\\()[],;:".contains(&b));
    if ok {
        Ok(id.to_owned())
    } else {
        Err(ComposeError::InvalidContentId(id.to_owned()))
    }
}
