//! Received bytes → a [`NewMessage`], changing as little as RFC 6409 allows.
//!
//! The envelope decides who gets the message (Bcc recipients are only in the envelope); the header section is
//! kept byte for byte except that `Bcc:` and Herald's control headers (`X-Herald-*`) are removed, and a
//! `Message-ID` and a `Date` are added when missing (RFC 6409 §8.2, §8.3). The body is never touched, so
//! the archive, `/raw` and the relay see what the client sent.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::structure::{Leaf, Structure};
use crate::{
    service::{Queueing, Service, SubmitError, search_text},
    store::{MessageSource, NewMessage, NewRecipient, RawSegment, RecipientKind},
};

/// Herald's control headers: read into the queueing fields, then removed.
const TAG: &str = "x-herald-tag";
const SEND_AT: &str = "x-herald-send-at";
const IDEMPOTENCY_KEY: &str = "x-herald-idempotency-key";
const METADATA: &str = "x-herald-metadata";
/// Issue 12: `true` sends to suppressed recipients too.
const IGNORE_SUPPRESSIONS: &str = "x-herald-ignore-suppressions";
const CONTROL_HEADERS: &str = "X-Herald-Tag, X-Herald-Send-At, X-Herald-Idempotency-Key, X-Herald-Metadata, \
     X-Herald-Ignore-Suppressions";

/// Why a received message is not stored; the session answers `554 5.6.0` with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("{header}: {message}")]
    ControlHeader { header: String, message: String },
    #[error("unknown control header {0} (Herald knows {CONTROL_HEADERS})")]
    UnknownControlHeader(String),
}

/// MAIL FROM and the accepted RCPT TOs of one transaction.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub sender: String,
    pub recipients: Vec<String>,
}

/// One header field as received: its name and all of its lines, CRLFs included.
struct Field<'a> {
    name: &'a str,
    raw: &'a [u8],
}

impl Field<'_> {
    /// The unfolded value (RFC 5322 §2.2.3), trimmed.
    fn value(&self) -> String {
        let raw = String::from_utf8_lossy(&self.raw[self.name.len() + 1..]);
        raw.replace("\r\n", "").trim().to_owned()
    }
}

/// Splits the header section off `bytes`: the fields and where the body (from the empty line) starts. A
/// message whose first line is not a header field has no header section.
fn fields(bytes: &[u8]) -> (Vec<Field<'_>>, usize) {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[at..]).map_or(bytes.len(), |i| at + i + 1);
        let line = &bytes[at..end];
        if line == b"\r\n" {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) && !fields.is_empty() {
            // A folded continuation: it belongs to the field before.
            let last = fields.last_mut().expect("not empty");
            let start = last.raw.as_ptr() as usize - bytes.as_ptr() as usize;
            last.raw = &bytes[start..end];
            at = end;
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            break;
        };
        // RFC 5322 §3.6.8: a field name is printable ASCII but colon, without spaces.
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
            break;
        }
        fields.push(Field {
            name: std::str::from_utf8(name).expect("ASCII"),
            raw: line,
        });
        at = end;
    }
    (fields, at)
}

/// Builds the message to store from what the client sent in DATA or BDAT (dot-unstuffed, lines checked).
pub fn new_message(
    bytes: Vec<u8>,
    envelope: &Envelope,
    service: &Service,
    hostname: &str,
) -> Result<NewMessage, SubmitErrorOrMessage> {
    let (fields, body_start) = fields(&bytes);
    let mut headers = Vec::with_capacity(body_start + 128);
    let mut control = Map::new();
    let mut tags = Vec::new();
    let (mut has_message_id, mut has_date) = (false, false);
    for field in &fields {
        let name = field.name.to_ascii_lowercase();
        match name.as_str() {
            "bcc" => continue,
            TAG => {
                tags.push(Value::String(field.value()));
                continue;
            }
            SEND_AT => {
                control.insert("send_at".into(), Value::String(field.value()));
                continue;
            }
            IDEMPOTENCY_KEY => {
                control.insert("idempotency_key".into(), Value::String(field.value()));
                continue;
            }
            IGNORE_SUPPRESSIONS => {
                // `true` or `false`, as the API's `ignore_suppressions` (issue 12).
                let value = match field.value().trim().to_ascii_lowercase().as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => Value::String(field.value()),
                };
                control.insert("ignore_suppressions".into(), value);
                continue;
            }
            METADATA => {
                let value = serde_json::from_str::<Value>(&field.value()).map_err(|e| {
                    MessageError::ControlHeader {
                        header: "X-Herald-Metadata".into(),
                        message: format!("not JSON: {e}"),
                    }
                })?;
                control.insert("metadata".into(), value);
                continue;
            }
            other if other.starts_with("x-herald-") => {
                return Err(MessageError::UnknownControlHeader(field.name.to_owned()).into());
            }
            "message-id" => has_message_id = true,
            "date" => has_date = true,
            _ => {}
        }
        headers.extend_from_slice(field.raw);
    }
    if !tags.is_empty() {
        control.insert("tags".into(), Value::Array(tags));
    }
    // The same checks as the API's fields, reported under the header's name.
    let queueing: Queueing = service.take_queueing(&mut control).map_err(|e| match e {
        SubmitError::Invalid(e) => SubmitErrorOrMessage::Message(MessageError::ControlHeader {
            header: header_of(&e.field),
            message: e.message,
        }),
        other => SubmitErrorOrMessage::Submit(other),
    })?;

    // RFC 6409 §8: the submission server adds what the client left out, before the client's fields.
    let mut added = Vec::new();
    if !has_message_id {
        let domain = service
            .message_id_domain
            .clone()
            .or_else(|| envelope.sender.rsplit_once('@').map(|(_, d)| d.to_owned()))
            .unwrap_or_else(|| hostname.to_owned());
        added.extend_from_slice(
            format!("Message-ID: <{}@{domain}>\r\n", uuid::Uuid::now_v7()).as_bytes(),
        );
    }
    if !has_date {
        let now = time::OffsetDateTime::now_utc();
        let date = now
            .format(&time::format_description::well_known::Rfc2822)
            .expect("a current date formats");
        added.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    let whole = if added.is_empty() && headers.len() == body_start {
        // Nothing removed, nothing added (the common case: a client that writes its own Message-ID and
        // Date): the received bytes are the message, without a copy.
        drop(fields);
        bytes
    } else {
        let mut head = added;
        head.extend_from_slice(&headers);
        if fields.is_empty() && !head.is_empty() && !bytes[body_start..].starts_with(b"\r\n") {
            // Only a body was sent: the added fields need the empty line that ends a header section.
            head.extend_from_slice(b"\r\n");
        }
        let mut whole = Vec::with_capacity(head.len() + bytes.len() - body_start);
        whole.extend_from_slice(&head);
        whole.extend_from_slice(&bytes[body_start..]);
        whole
    };
    let structure = Structure::of(&whole);
    let parsed = structure.headers.as_ref();
    let subject = parsed
        .and_then(|m| m.subject())
        .unwrap_or_default()
        .to_owned();
    let (text, html) = structure.text(&whole);
    let search = search_text(text.as_deref(), html.as_deref());
    let listed = |list: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        list.map(|a| {
            a.iter()
                .filter_map(|addr| addr.address())
                .map(str::to_lowercase)
                .collect()
        })
        .unwrap_or_default()
    };
    let to = listed(parsed.and_then(|m| m.to()));
    let cc = listed(parsed.and_then(|m| m.cc()));
    let recipients = envelope
        .recipients
        .iter()
        .map(|address| {
            let lower = address.to_lowercase();
            let kind = if to.contains(&lower) {
                RecipientKind::To
            } else if cc.contains(&lower) {
                RecipientKind::Cc
            } else {
                // In the envelope and in no header: a blind copy.
                RecipientKind::Bcc
            };
            NewRecipient {
                address: address.clone(),
                kind,
            }
        })
        .collect();
    let shared = shareable_ranges(&structure.leaves, &whole);
    drop(structure);
    let raw = stored_segments(Bytes::from(whole), &shared, service);
    Ok(NewMessage {
        source: MessageSource::Smtp,
        id: uuid::Uuid::now_v7().to_string(),
        sender: envelope.sender.clone(),
        subject,
        recipients,
        search_text: search,
        raw,
        send_at: queueing.send_at,
        idempotency_key: queueing.idempotency_key,
        batch_id: None,
        tags: queueing.tags,
        metadata: queueing.metadata,
        ignore_suppressions: queueing.ignore_suppressions,
        unsubscribe_list: None,
    })
}

/// MIME leaf parts at least this large are stored as shared segments: an application that submits the same
/// invoice PDF or logo with every message then stores it once (content-addressed, as the API path does),
/// and the store writes kilobytes, not the whole message, per submission. Smaller parts are not worth a
/// hash and a blob reference.
const SHARED_PART_MIN: usize = 4 * 1024;

/// The byte ranges of `whole` worth storing once by content: the bodies of large leaf parts, each from the
/// start of a line to the end of its last complete line (segments begin at a line start and end with CRLF,
/// the contract of the SMTP writer), in order and disjoint.
pub(super) fn shareable_ranges(leaves: &[Leaf], whole: &[u8]) -> Vec<(usize, usize)> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for leaf in leaves {
        let start = leaf.body;
        // The CRLF before a boundary delimiter belongs to the delimiter, so the body's last line end may be
        // just past the leaf's end.
        let limit = leaf.end.saturating_add(2).min(whole.len());
        if start == 0 || start >= limit || whole[start - 1] != b'\n' {
            continue;
        }
        let Some(last_line_end) = memchr::memmem::rfind(&whole[start..limit], b"\r\n") else {
            continue;
        };
        let end = start + last_line_end + 2;
        let after_previous = ranges.last().is_none_or(|&(_, previous)| start >= previous);
        if end - start >= SHARED_PART_MIN && after_previous {
            ranges.push((start, end));
        }
    }
    ranges
}

/// `whole` as stored segments: the `shared` ranges as content-addressed blobs, the rest as literals; each
/// marked dot-safe when no line in it starts with `.`, so that delivery sends it without scanning.
fn stored_segments(whole: Bytes, shared: &[(usize, usize)], service: &Service) -> Vec<RawSegment> {
    let mut segments = Vec::with_capacity(2 * shared.len() + 1);
    let literal = |bytes: Bytes| RawSegment::Literal {
        dot_safe: dot_safe(&bytes),
        bytes,
    };
    let mut at = 0;
    for &(start, end) in shared {
        if start > at {
            segments.push(literal(whole.slice(at..start)));
        }
        let bytes = whole.slice(start..end);
        segments.push(RawSegment::Shared {
            dot_safe: dot_safe(&bytes),
            blob: service.shared_segment(bytes),
        });
        at = end;
    }
    if at < whole.len() || segments.is_empty() {
        segments.push(literal(whole.slice(at..)));
    }
    segments
}

/// Whether `lines` (starting at a line start, CRLF line ends: the session refused bare CR and LF) can be
/// sent untouched: no line starts with `.` (the one thing DATA's dot-stuffing changes), and ASCII only,
/// because delivery looks for 8-bit content (BODY=8BITMIME) only in the segments that are not dot-safe.
fn dot_safe(lines: &[u8]) -> bool {
    lines.is_ascii()
        && lines.first() != Some(&b'.')
        && memchr::memmem::find(lines, b"\n.").is_none()
}

/// The control header a queueing field came from (`tags[2]` → `X-Herald-Tag`).
fn header_of(field: &str) -> String {
    match field.split('[').next().unwrap_or(field) {
        "tags" => "X-Herald-Tag",
        "send_at" => "X-Herald-Send-At",
        "idempotency_key" => "X-Herald-Idempotency-Key",
        "metadata" => "X-Herald-Metadata",
        "ignore_suppressions" => "X-Herald-Ignore-Suppressions",
        _ => "X-Herald-*",
    }
    .to_owned()
}

/// A refusal of the content ([`MessageError`]) or of the service (a store failure).
#[derive(Debug)]
pub enum SubmitErrorOrMessage {
    Message(MessageError),
    Submit(SubmitError),
}

impl From<MessageError> for SubmitErrorOrMessage {
    fn from(e: MessageError) -> Self {
        SubmitErrorOrMessage::Message(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::join;

    async fn service() -> (Service, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let store = crate::store::Store::open(&url, std::sync::Arc::new(crate::clock::SystemClock))
            .await
            .unwrap();
        (Service::new(store), dir)
    }

    fn envelope() -> Envelope {
        Envelope {
            sender: "app@example.com".into(),
            recipients: vec![
                "a@example.com".into(),
                "C@example.com".into(),
                "hidden@example.com".into(),
            ],
        }
    }

    /// A multipart submission with a large base64 attachment: the attachment body is one shared segment
    /// (stored once by content), the rest literal, and the segments join to the submitted bytes.
    #[tokio::test]
    async fn a_large_attachment_is_stored_as_a_shared_segment_and_the_bytes_are_unchanged() {
        let (service, _dir) = service().await;
        let base64: String = (0..200).map(|i| format!("{:076}\r\n", i)).collect();
        let text = "Hello\r\n.starts with a dot\r\n";
        let sent = format!(
            "From: app@example.com\r\nTo: a@example.com\r\nMessage-ID: <m2@example.com>\r\n\
             Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
             Content-Type: text/plain\r\n\r\n{text}--b1\r\nContent-Type: application/pdf\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{base64}--b1--\r\n"
        );
        let message = new_message(sent.clone().into_bytes(), &envelope(), &service, "h").unwrap();
        assert_eq!(join(&message.raw), sent.as_bytes());
        let shared: Vec<&RawSegment> = message
            .raw
            .iter()
            .filter(|s| matches!(s, RawSegment::Shared { .. }))
            .collect();
        assert_eq!(shared.len(), 1, "{:?}", message.raw);
        assert_eq!(shared[0].bytes(), base64.as_bytes());
        assert!(shared[0].dot_safe());
        // The literal holding the text part has a line starting with a dot: it must be stuffed.
        assert!(!message.raw[0].dot_safe());
        assert!(message.raw.last().unwrap().dot_safe());
        // Delivery looks for 8-bit content only in segments that are not dot-safe.
        assert!(!dot_safe("Grüße\r\n".as_bytes()));
        assert!(!dot_safe(b"a\r\n.b\r\n"));
        assert!(dot_safe(b"a\r\nb.\r\n"));
    }

    #[tokio::test]
    async fn bcc_and_control_headers_go_the_rest_stays_byte_for_byte() {
        let (service, _dir) = service().await;
        let sent = b"From: App <app@example.com>\r\nTo: a@example.com\r\nCc: c@example.com\r\n\
            Bcc: hidden@example.com\r\nSubject: =?utf-8?b?5L2g5aW9?=\r\nX-Herald-Tag: billing\r\n\
            X-Herald-Tag: eu\r\nX-Herald-Metadata: {\"order\":\r\n 42}\r\nMessage-ID: <m1@example.com>\r\n\
            Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\nBody\r\n.. kept\r\n"
            .to_vec();
        let message = new_message(sent, &envelope(), &service, "herald.test").unwrap();
        let bytes = join(&message.raw);
        assert_eq!(
            &bytes[..],
            &b"From: App <app@example.com>\r\nTo: a@example.com\r\nCc: c@example.com\r\n\
            Subject: =?utf-8?b?5L2g5aW9?=\r\nMessage-ID: <m1@example.com>\r\n\
            Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\nBody\r\n.. kept\r\n"[..]
        );
        assert_eq!(message.subject, "你好");
        assert_eq!(message.tags, ["billing", "eu"]);
        assert_eq!(message.metadata, serde_json::json!({"order": 42}));
        let kinds: Vec<_> = message.recipients.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [RecipientKind::To, RecipientKind::Cc, RecipientKind::Bcc]
        );
    }

    #[tokio::test]
    async fn a_missing_message_id_and_date_are_added_in_front() {
        let (service, _dir) = service().await;
        let message = new_message(
            b"Subject: hi\r\n\r\nx\r\n".to_vec(),
            &envelope(),
            &service,
            "herald.test",
        )
        .unwrap();
        let text = String::from_utf8(join(&message.raw).to_vec()).unwrap();
        assert!(text.starts_with("Message-ID: <"), "{text}");
        assert!(text.contains("@example.com>\r\nDate: "), "{text}");
        assert!(text.ends_with("\r\nSubject: hi\r\n\r\nx\r\n"), "{text}");
    }

    #[tokio::test]
    async fn bad_control_headers_are_named() {
        let (service, _dir) = service().await;
        for (header, named) in [
            ("X-Herald-Send-At: tomorrow", "X-Herald-Send-At"),
            ("X-Herald-Metadata: [1]", "X-Herald-Metadata"),
            ("X-Herald-Metadata: {", "X-Herald-Metadata"),
            ("X-Herald-Priority: high", "X-Herald-Priority"),
        ] {
            let sent = format!("Subject: s\r\n{header}\r\n\r\nx\r\n").into_bytes();
            let Err(SubmitErrorOrMessage::Message(error)) =
                new_message(sent, &envelope(), &service, "h")
            else {
                panic!("{header} was accepted");
            };
            assert!(error.to_string().contains(named), "{header}: {error}");
        }
    }
}
