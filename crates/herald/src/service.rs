//! The service core: turns a validated API request into a composed, stored message.
//!
//! Messages are composed once, at accept time (DESIGN.md): the bytes stored are the bytes sent on every
//! attempt, with the same Message-ID, and the archive shows exactly what left.

use std::sync::Arc;

use bytes::Bytes;
use herald_mime::{ComposeOptions, Composed, Mailbox, Message};
use serde_json::{Map, Value};

use crate::{
    request::{Files, MessageRequest, RequestError},
    store::{
        Accepted, Millis, NewMessage, NewRecipient, RawSegment, RecipientKind, SharedBlob, Store,
        StoreError,
    },
};

/// Limits on what one client request may ask for (DESIGN.md invariant 5).
#[derive(Debug, Clone)]
pub struct Limits {
    pub recipients: usize,
    pub tags: usize,
    pub tag_length: usize,
    pub metadata_bytes: usize,
    pub idempotency_key_length: usize,
    pub batch_recipients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            recipients: 1_000,
            tags: 32,
            tag_length: 128,
            metadata_bytes: 16 * 1024,
            idempotency_key_length: 255,
            batch_recipients: 10_000,
        }
    }
}

/// Why a submission was refused, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(RequestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<RequestError> for SubmitError {
    fn from(e: RequestError) -> Self {
        SubmitError::Invalid(e)
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SubmitError {
    SubmitError::Invalid(RequestError {
        field: field.into(),
        message: message.into(),
    })
}

/// What the API layer needs to accept mail.
#[derive(Debug, Clone)]
pub struct Service {
    pub store: Store,
    pub default_from: Option<String>,
    pub message_id_domain: Option<String>,
    pub limits: Limits,
}

/// The fields of `POST /v1/messages` that are about queueing, not about the message's content.
#[derive(Debug, Default)]
pub struct Queueing {
    pub send_at: Option<Millis>,
    pub idempotency_key: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Value,
}

impl Service {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            default_from: None,
            message_id_domain: None,
            limits: Limits::default(),
        }
    }

    /// Validates, composes and durably stores one message (`POST /v1/messages`). Returns after the commit.
    pub async fn submit(
        &self,
        body: &[u8],
        idempotency_header: Option<&str>,
    ) -> Result<Accepted, SubmitError> {
        let mut object = parse_object(body)?;
        let mut queueing = self.take_queueing(&mut object)?;
        if let Some(key) = idempotency_header {
            if queueing
                .idempotency_key
                .as_deref()
                .is_some_and(|k| k != key)
            {
                return Err(invalid(
                    "idempotency_key",
                    "differs from the Idempotency-Key header; send one or make them equal",
                ));
            }
            queueing.idempotency_key = Some(self.check_key(key)?);
        }
        if object.contains_key("template") || object.contains_key("data") {
            return Err(invalid(
                "template",
                "stored templates are not available in this version yet",
            ));
        }
        let message = self.compose(object)?;
        let mut accepted = self.store.accept(vec![message.into_new(queueing)]).await?;
        Ok(accepted.remove(0))
    }

    /// Splits off and checks the queueing fields, leaving the message fields in `object`.
    pub fn take_queueing(&self, object: &mut Map<String, Value>) -> Result<Queueing, SubmitError> {
        let mut queueing = Queueing {
            metadata: Value::Object(Map::new()),
            ..Default::default()
        };
        if let Some(value) = object.remove("send_at").filter(|v| !v.is_null()) {
            let text = value
                .as_str()
                .ok_or_else(|| invalid("send_at", "must be an RFC 3339 time string"))?;
            queueing.send_at = Some(parse_rfc3339(text).map_err(|e| invalid("send_at", e))?);
        }
        if let Some(value) = object.remove("idempotency_key").filter(|v| !v.is_null()) {
            let key = value
                .as_str()
                .ok_or_else(|| invalid("idempotency_key", "must be a string"))?;
            queueing.idempotency_key = Some(self.check_key(key)?);
        }
        if let Some(value) = object.remove("tags").filter(|v| !v.is_null()) {
            let tags = value
                .as_array()
                .ok_or_else(|| invalid("tags", "must be an array of strings"))?;
            if tags.len() > self.limits.tags {
                return Err(invalid(
                    "tags",
                    format!("at most {} tags", self.limits.tags),
                ));
            }
            for (i, tag) in tags.iter().enumerate() {
                let tag = tag
                    .as_str()
                    .ok_or_else(|| invalid(format!("tags[{i}]"), "must be a string"))?;
                if tag.is_empty()
                    || tag.chars().count() > self.limits.tag_length
                    || tag.chars().any(char::is_control)
                {
                    return Err(invalid(
                        format!("tags[{i}]"),
                        format!(
                            "must be 1 to {} characters, no control characters",
                            self.limits.tag_length
                        ),
                    ));
                }
                queueing.tags.push(tag.to_owned());
            }
        }
        if let Some(value) = object.remove("metadata").filter(|v| !v.is_null()) {
            if !value.is_object() {
                return Err(invalid("metadata", "must be an object"));
            }
            if value.to_string().len() > self.limits.metadata_bytes {
                return Err(invalid(
                    "metadata",
                    format!("larger than {} bytes", self.limits.metadata_bytes),
                ));
            }
            queueing.metadata = value;
        }
        Ok(queueing)
    }

    fn check_key(&self, key: &str) -> Result<String, SubmitError> {
        if key.is_empty()
            || key.len() > self.limits.idempotency_key_length
            || key.chars().any(char::is_control)
        {
            return Err(invalid(
                "idempotency_key",
                format!(
                    "must be 1 to {} bytes, no control characters",
                    self.limits.idempotency_key_length
                ),
            ));
        }
        Ok(key.to_owned())
    }

    /// Composes the message fields of a request (the `herald compose` JSON) into stored form.
    pub fn compose(&self, mut object: Map<String, Value>) -> Result<ComposedMessage, SubmitError> {
        if !object.contains_key("from") {
            match &self.default_from {
                Some(from) => {
                    object.insert("from".into(), Value::String(from.clone()));
                }
                None => {
                    return Err(invalid(
                        "from",
                        "missing (and no HERALD_FROM default is configured)",
                    ));
                }
            }
        }
        let request: MessageRequest = serde_json::from_value(Value::Object(object))
            .map_err(|e| invalid("", format!("invalid request: {e}")))?;
        let kinds = recipient_kinds(&request)?;
        if kinds.len() > self.limits.recipients {
            return Err(invalid(
                "to",
                format!("at most {} recipients per message", self.limits.recipients),
            ));
        }
        let search_text = search_text(request.text.as_deref(), request.html.as_deref());
        let subject = request.subject.clone().unwrap_or_default();
        let message = request.into_message(Files::Forbidden)?;
        Ok(ComposedMessage::new(
            &message,
            subject,
            kinds,
            search_text,
            self.compose_options(),
            &[],
        ))
    }

    pub fn compose_options(&self) -> ComposeOptions {
        ComposeOptions {
            allow_8bit: false,
            message_id_domain: self.message_id_domain.clone(),
        }
    }
}

/// A message composed and ready to store.
pub struct ComposedMessage {
    pub composed: Composed,
    pub subject: String,
    pub recipients: Vec<NewRecipient>,
    pub search_text: String,
    pub raw: Vec<RawSegment>,
}

impl ComposedMessage {
    /// Composes `message`; segments that are the bytes of one of `shared` are stored as shared blobs.
    pub fn new(
        message: &Message,
        subject: String,
        kinds: Vec<(String, RecipientKind)>,
        search_text: String,
        options: ComposeOptions,
        shared: &[Arc<SharedBlob>],
    ) -> Self {
        let composed = message.compose(&options);
        let raw = composed
            .segments()
            .iter()
            .map(|segment| {
                // Identity, not equality: a shared part is the very same allocation in every message.
                match shared.iter().find(|blob| {
                    blob.bytes.as_ptr() == segment.bytes.as_ptr()
                        && blob.bytes.len() == segment.bytes.len()
                }) {
                    Some(blob) => RawSegment::Shared {
                        blob: blob.clone(),
                        dot_safe: segment.dot_safe,
                    },
                    None => RawSegment::Literal {
                        bytes: segment.bytes.clone(),
                        dot_safe: segment.dot_safe,
                    },
                }
            })
            .collect();
        let envelope = composed.envelope();
        // RCPT TO in ASCII (punycode domains) whenever the local part allows, so relays without SMTPUTF8
        // take IDN recipients too.
        let ascii = |a: &herald_mime::Address| a.to_ascii().unwrap_or_else(|_| a.to_string());
        let recipients = envelope
            .recipients
            .iter()
            .map(|address| {
                let text = address.to_string();
                let kind = kinds
                    .iter()
                    .find(|(a, _)| *a == text)
                    .map_or(RecipientKind::To, |(_, k)| *k);
                NewRecipient {
                    address: ascii(address),
                    kind,
                }
            })
            .collect();
        Self {
            subject,
            recipients,
            search_text,
            raw,
            composed,
        }
    }

    pub fn into_new(self, queueing: Queueing) -> NewMessage {
        let sender = self
            .composed
            .envelope()
            .sender
            .to_ascii()
            .unwrap_or_else(|_| self.composed.envelope().sender.to_string());
        NewMessage {
            id: uuid::Uuid::now_v7().to_string(),
            sender,
            subject: self.subject,
            recipients: self.recipients,
            search_text: self.search_text,
            raw: self.raw,
            send_at: queueing.send_at,
            idempotency_key: queueing.idempotency_key,
            batch_id: None,
            tags: queueing.tags,
            metadata: queueing.metadata,
        }
    }
}

/// Each address of to/cc/bcc with how it was addressed (first mention wins).
fn recipient_kinds(request: &MessageRequest) -> Result<Vec<(String, RecipientKind)>, RequestError> {
    let mut kinds: Vec<(String, RecipientKind)> = Vec::new();
    for (field, list, kind) in [
        ("to", &request.to, RecipientKind::To),
        ("cc", &request.cc, RecipientKind::Cc),
        ("bcc", &request.bcc, RecipientKind::Bcc),
    ] {
        for (i, text) in list.items().into_iter().enumerate() {
            let mailbox = Mailbox::parse(text).map_err(|e| RequestError {
                field: if list.is_many() {
                    format!("{field}[{i}]")
                } else {
                    field.to_owned()
                },
                message: e.to_string(),
            })?;
            let address = mailbox.address().to_string();
            if !kinds.iter().any(|(a, _)| *a == address) {
                kinds.push((address, kind));
            }
        }
    }
    if kinds.is_empty() {
        return Err(RequestError {
            field: "to".into(),
            message: "at least one recipient (to, cc or bcc) is required".into(),
        });
    }
    Ok(kinds)
}

/// The text indexed for search: the text part, or the HTML with its tags removed.
pub fn search_text(text: Option<&str>, html: Option<&str>) -> String {
    if let Some(text) = text {
        return text.to_owned();
    }
    let Some(html) = html else {
        return String::new();
    };
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, SubmitError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("", "the request body must be a JSON object")),
        Err(e) => Err(invalid("", format!("invalid JSON: {e}"))),
    }
}

/// Parses an RFC 3339 time (`2026-11-26T09:30:00Z`, `…+01:00`) into Unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Result<Millis, String> {
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time like 2026-11-26T09:30:00Z: {e}"))?;
    Ok((parsed.unix_timestamp_nanos() / 1_000_000) as Millis)
}

/// Formats Unix milliseconds as RFC 3339 UTC (`2026-11-26T09:30:00.123Z`).
pub fn format_rfc3339(at: Millis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Bytes of a stored message, joined (for `/raw`).
pub fn join(segments: &[RawSegment]) -> Bytes {
    let mut out = Vec::with_capacity(crate::store::raw::wire_size(segments));
    for segment in segments {
        out.extend_from_slice(segment.bytes());
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_names_bad_input() {
        let at = parse_rfc3339("2026-11-26T09:30:00Z").unwrap();
        assert_eq!(format_rfc3339(at), "2026-11-26T09:30:00Z");
        assert_eq!(parse_rfc3339("2026-11-26T10:30:00+01:00").unwrap(), at);
        assert!(parse_rfc3339("tomorrow").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn search_text_falls_back_to_html_without_tags() {
        assert_eq!(
            search_text(None, Some("<p>Hello <b>you</b></p>"))
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["Hello", "you"]
        );
        assert_eq!(search_text(Some("plain"), Some("<p>x</p>")), "plain");
    }
}
