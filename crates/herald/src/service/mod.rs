//! The service: the one path from a request to a composed, stored message (for the API, batches and, next,
//! SMTP submission), and the operations the faces ask of the store through it. The store itself is this
//! service's own: the faces never reach past it.
//!
//! Messages are composed once, at accept time (DESIGN.md): the bytes stored are the bytes sent on every
//! attempt, with the same Message-ID, and the archive shows exactly what left.
//!
//! This room holds the `Service`, its limits and errors, the queueing fields every submission shares, and
//! the small parsers and formatters the faces use too (RFC 3339 times, a stored message's bytes joined). The
//! paths are in their own rooms: `compose` (one message), `parts` (the attachments recent single-message
//! calls carried, encoded once), `batch` (one template, many recipients), `preview` (rendering without
//! storing), `archive` (reading and acting on stored messages), `stored_templates` (read, save after a
//! check, delete) and `access` (API tokens, dashboard sessions).

mod access;
mod archive;
mod batch;
mod compose;
mod parts;
// Issue 13: DKIM keys.
mod dkim;
mod preview;
mod stored_templates;
// SMTP submission (issue 11).
mod submitted;
// The suppression list and one-click unsubscribe (issue 12).
mod suppressions;
// Webhook endpoints (issue 12).
mod webhooks;

use bytes::Bytes;
use herald_mime::ComposeOptions;
use serde_json::{Map, Value};

pub use self::{
    archive::check_search_text,
    batch::BatchAccepted,
    compose::ComposedMessage,
    suppressions::{
        SuppressionError, UNSUBSCRIBE_PURPOSE, Unsubscribed, check_address, check_scope,
    },
};
// Moved to `text` (the templates use it too); re-exported so that `service::search_text` still works.
pub use crate::text::search_text;
use crate::{
    request::RequestError,
    store::{Millis, RawSegment, Store, StoreError},
    templates::{self, LoadError, Renderer, TemplateError},
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
    /// Most bytes one request may store: every message it makes, rendered and composed (a batch's shared
    /// attachments counted once). A small batch with a large template would otherwise multiply into
    /// gigabytes.
    pub request_bytes: usize,
    /// Render budget and sizes of templates.
    pub template: templates::Limits,
}

/// The default of [`Limits::request_bytes`] (`HERALD_REQUEST_BUDGET`): 256 MiB, room for a 10,000-message
/// batch of 25 KB messages, a tenth of what one 2.5 KB batch request could make without it.
pub const DEFAULT_REQUEST_BYTES: usize = 256 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            recipients: 1_000,
            tags: 32,
            tag_length: 128,
            metadata_bytes: 16 * 1024,
            idempotency_key_length: 255,
            batch_recipients: 10_000,
            request_bytes: DEFAULT_REQUEST_BYTES,
            template: templates::Limits::default(),
        }
    }
}

/// Why a submission was refused, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(RequestError),
    /// A template could not be rendered with the data given; `field` is where that data came from (`data`,
    /// `recipients[17].data`).
    #[error("{field}: {error}")]
    Template { field: String, error: TemplateError },
    /// The template named in `template` does not exist.
    #[error("no template named {0:?}")]
    UnknownTemplate(String),
    /// The messages the request makes would be larger, together, than [`Limits::request_bytes`].
    #[error(
        "the messages this request makes come to more than {limit} bytes (HERALD_REQUEST_BUDGET); send \
         fewer recipients per batch or smaller content"
    )]
    OverBudget { limit: usize },
    /// The template renderer is saturated; nothing was stored.
    #[error("{0}")]
    Busy(templates::PoolError),
    /// DKIM signing failed (issue 13); nothing was stored.
    #[error(transparent)]
    Signing(#[from] crate::dkim::DkimError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SubmitError {
    pub fn from_load(error: LoadError<StoreError>, field: impl Into<String>) -> Self {
        match error {
            LoadError::NotFound(name) => SubmitError::UnknownTemplate(name),
            LoadError::Template(error) => SubmitError::Template {
                field: field.into(),
                error,
            },
            LoadError::Store(e) => SubmitError::Store(e),
            LoadError::Busy(e) => SubmitError::Busy(e),
        }
    }
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

/// What the faces (API, dashboard, CLI) ask for: accepting mail and the operations on what was accepted.
/// The store is private: every use of it by a face is a named operation here.
#[derive(Debug, Clone)]
pub struct Service {
    store: Store,
    pub default_from: Option<String>,
    pub message_id_domain: Option<String>,
    pub limits: Limits,
    /// The threads every template compile and render runs on (never the async workers).
    renderer: Renderer,
    /// Attachments seen recently by `POST /v1/messages`, encoded (shared by the clones of the service).
    parts: std::sync::Arc<parts::PartCache>,
    /// DKIM keys every composed message is signed with (issue 13; see `dkim::signer`).
    pub dkim: crate::dkim::Signing,
    /// The key of link tokens (issue 12), loaded on first use (see `suppressions`).
    link_tokens: std::sync::Arc<tokio::sync::OnceCell<crate::link_tokens::LinkTokens>>,
    /// `HERALD_PUBLIC_URL`: where unsubscribe links point (issue 12).
    pub public_url: Option<String>,
    /// `HERALD_BOUNCE_DOMAIN`: with it, List-Unsubscribe also offers `mailto:unsub+TOKEN@` that domain.
    pub bounce_domain: Option<String>,
    /// Webhook endpoints (issue 12): the SSRF rule and the key that seals their secrets.
    pub webhooks: crate::events::manage::Management,
    /// Tells this node's webhook dispatcher that an endpoint changed.
    pub webhooks_changed: crate::events::dispatch::EndpointsChanged,
}

/// The fields of `POST /v1/messages` that are about queueing, not about the message's content.
#[derive(Debug, Default, Clone)]
pub struct Queueing {
    pub send_at: Option<Millis>,
    pub idempotency_key: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Value,
    /// `ignore_suppressions` (issue 12): send to suppressed recipients too (password resets and the like).
    pub ignore_suppressions: bool,
}

impl Service {
    /// The blob for a large segment of a submitted message: the same `Arc` as an earlier submission's with the
    /// same bytes while it is recent (see [`parts::PartCache::segment`]).
    pub fn shared_segment(&self, bytes: bytes::Bytes) -> std::sync::Arc<crate::store::SharedBlob> {
        self.parts.segment(bytes)
    }

    /// The store the service writes to (the bounce intake applies its reports there).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn new(store: Store) -> Self {
        Self {
            store,
            default_from: None,
            message_id_domain: None,
            limits: Limits::default(),
            renderer: Renderer::default(),
            parts: Default::default(),
            dkim: crate::dkim::Signing::default(),
            link_tokens: Default::default(),
            public_url: None,
            bounce_domain: None,
            webhooks: Default::default(),
            webhooks_changed: Default::default(),
        }
    }

    /// Splits off and checks the queueing fields, leaving the message fields in `object`.
    /// [`Self::take_queueing`], with the `Idempotency-Key` header as the key (it must agree with a key in
    /// the body, if both are given).
    fn queueing_with_header(
        &self,
        object: &mut Map<String, Value>,
        idempotency_header: Option<&str>,
    ) -> Result<Queueing, SubmitError> {
        let mut queueing = self.take_queueing(object)?;
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
        Ok(queueing)
    }

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
        if let Some(value) = object
            .remove("ignore_suppressions")
            .filter(|v| !v.is_null())
        {
            queueing.ignore_suppressions = value
                .as_bool()
                .ok_or_else(|| invalid("ignore_suppressions", "must be true or false"))?;
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

    /// Wakes the delivery engine now rather than at its next poll, after queueing mail by a path that does
    /// not tell it (the dashboard's resend).
    pub fn wake_delivery(&self) {
        self.store.work_signal().notify();
    }

    /// Whether the store answers (`/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    pub fn compose_options(&self) -> ComposeOptions {
        ComposeOptions {
            allow_8bit: false,
            message_id_domain: self.message_id_domain.clone(),
        }
    }
}

/// The `template` field: a stored template's name.
fn template_name(value: Option<Value>) -> Result<String, SubmitError> {
    match value {
        Some(Value::String(name)) => {
            templates::check_name(&name).map_err(|e| invalid("template", e))?;
            Ok(name)
        }
        Some(_) => Err(invalid("template", "must be a template name (a string)")),
        None => Err(invalid(
            "template",
            "missing: the name of a stored template",
        )),
    }
}

/// The `data` of a template: a JSON object (absent means `{}`).
fn template_data(value: Option<Value>, field: &str) -> Result<Value, SubmitError> {
    match value {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(invalid(field, "must be an object of template variables")),
    }
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
}
