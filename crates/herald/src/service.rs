//! The service core: turns a validated API request into a composed, stored message.
//!
//! Messages are composed once, at accept time (DESIGN.md): the bytes stored are the bytes sent on every
//! attempt, with the same Message-ID, and the archive shows exactly what left.

use std::{
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use herald_mime::{ComposeOptions, Composed, EncodedPart, Mailbox, Message};
use serde_json::{Map, Value};

use crate::{
    request::{AttachmentRequest, Files, MessageRequest, OneOrMany, RequestError},
    store::{
        Accepted, Millis, NewMessage, NewRecipient, RawSegment, RecipientKind, SharedBlob, Store,
        StoreError,
    },
    templates::{self, LoadError, RenderError, Rendered, Renderer, TemplateError, TemplateSet},
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
    pub fn from_load(error: LoadError, field: impl Into<String>) -> Self {
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

/// What the API layer needs to accept mail.
#[derive(Debug, Clone)]
pub struct Service {
    pub store: Store,
    pub default_from: Option<String>,
    pub message_id_domain: Option<String>,
    pub limits: Limits,
    /// The threads every template compile and render runs on (never the async workers).
    pub renderer: Renderer,
    /// DKIM keys every composed message is signed with (issue 13; see `dkim::signer`).
    pub dkim: crate::dkim::Signing,
}

/// The fields of `POST /v1/messages` that are about queueing, not about the message's content.
#[derive(Debug, Default, Clone)]
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
            renderer: Renderer::default(),
            dkim: crate::dkim::Signing::default(),
        }
    }

    /// Validates, composes and durably stores one message (`POST /v1/messages`). Returns after the commit.
    pub async fn submit(
        &self,
        body: &[u8],
        idempotency_header: Option<&str>,
    ) -> Result<Accepted, SubmitError> {
        let mut object = parse_object(body)?;
        let queueing = self.queueing_with_header(&mut object, idempotency_header)?;
        // `compose` signs with the ring as read; read it again here when it is old (issue 13).
        self.dkim.refresh(&self.store).await;
        if object.contains_key("template") {
            self.render_into(&mut object).await?;
        } else if object.contains_key("data") {
            return Err(invalid(
                "data",
                "data is for templates: give `template` (a stored template's name) too",
            ));
        }
        let message = self.compose(object)?;
        let size = message.stored_bytes();
        if size > self.limits.request_bytes {
            return Err(SubmitError::OverBudget {
                limit: self.limits.request_bytes,
            });
        }
        let mut accepted = self.store.accept(vec![message.into_new(queueing)]).await?;
        Ok(accepted.remove(0))
    }

    /// Replaces `template` + `data` in a message request by the rendered `subject`, `text` and `html`.
    async fn render_into(&self, object: &mut Map<String, Value>) -> Result<(), SubmitError> {
        for field in ["subject", "text", "html"] {
            if object.contains_key(field) {
                return Err(invalid(
                    field,
                    "give either `template` and `data`, or subject/text/html, not both",
                ));
            }
        }
        let name = template_name(object.remove("template"))?;
        let data = template_data(object.remove("data"), "data")?;
        let rendered = self.render(&name, &data, "data").await?;
        insert_rendered(object, rendered);
        Ok(())
    }

    /// Renders the stored template `name` with `data` (fetching the templates it extends or includes). Errors
    /// in the data are reported on `field`.
    pub async fn render(
        &self,
        name: &str,
        data: &Value,
        field: &str,
    ) -> Result<Rendered, SubmitError> {
        let set = TemplateSet::load(&self.store, name, self.limits.template.clone())
            .await
            .map_err(|e| SubmitError::from_load(e, field))?;
        templates::render_loading(&mut Arc::new(set), &self.renderer, &self.store, data)
            .await
            .map_err(|e| SubmitError::from_load(e, field))
    }

    /// Queues a new message with the same bytes and recipients as message `id` (the dashboard's "resend"),
    /// linked both ways: the new one's metadata has `resent_from`, and each timeline says what happened.
    /// `None` when there is no such message or its body was pruned by retention.
    pub async fn resend(&self, id: &str) -> Result<Option<String>, StoreError> {
        let Some(view) = self.store.message(id).await? else {
            return Ok(None);
        };
        let Some(raw) = self.store.raw(id).await? else {
            return Ok(None);
        };
        let bytes = join(&raw);
        // The archive indexes the text body; the stored bytes are the only copy of it.
        let search_text = mail_parser::MessageParser::default()
            .parse(&bytes[..])
            .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
            .unwrap_or_default();
        let recipients = view
            .recipients
            .iter()
            .map(|r| NewRecipient {
                address: r.address.clone(),
                kind: r.kind.parse().unwrap_or(RecipientKind::To),
            })
            .collect();
        let mut metadata = view.metadata.clone();
        if let Value::Object(map) = &mut metadata {
            map.insert("resent_from".into(), Value::String(id.to_owned()));
        }
        let tags = view
            .tags
            .as_array()
            .map(|tags| {
                tags.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let message = NewMessage {
            id: uuid::Uuid::now_v7().to_string(),
            sender: view.from,
            subject: view.subject,
            recipients,
            search_text,
            raw,
            send_at: None,
            idempotency_key: None,
            batch_id: None,
            tags,
            metadata,
        };
        let accepted = self.store.accept(vec![message]).await?;
        let new_id = accepted
            .first()
            .map(|a| a.id().to_owned())
            .ok_or(StoreError::Closed)?;
        self.store
            .append_event(id, "resent", Some(format!("resent as {new_id}")))
            .await?;
        self.store
            .append_event(&new_id, "resent_from", Some(format!("a resend of {id}")))
            .await?;
        Ok(Some(new_id))
    }

    /// Validates, renders, composes and durably stores one message per recipient of a batch
    /// (`POST /v1/batches`), all in one commit. Shared attachments are encoded once and stored once.
    pub async fn submit_batch(
        &self,
        body: &[u8],
        idempotency_header: Option<&str>,
    ) -> Result<BatchAccepted, SubmitError> {
        let mut object = parse_object(body)?;
        let queueing = self.queueing_with_header(&mut object, idempotency_header)?;
        let batch = BatchRequest::take(&mut object, self)?;
        let BatchRequest {
            template,
            common,
            attachments,
            recipients,
        } = batch;

        // Encoded once: every message refers to the same bytes, and the store keeps them once (by hash).
        let mut encoded = Vec::with_capacity(attachments.len());
        let mut blobs = Vec::with_capacity(attachments.len());
        for (i, attachment) in attachments.iter().enumerate() {
            let part = attachment.to_part(i, &Files::Forbidden)?.encode();
            blobs.push(SharedBlob::new(part.segment().bytes.clone()));
            encoded.push(part);
        }

        let set = TemplateSet::load(&self.store, &template, self.limits.template.clone())
            .await
            .map_err(|e| SubmitError::from_load(e, "recipients[0].data"))?;
        // The first recipient renders on its own first, which fetches what the template extends or includes.
        let mut set = Arc::new(set);
        templates::render_loading(&mut set, &self.renderer, &self.store, &recipients[0].data)
            .await
            .map_err(|e| SubmitError::from_load(e, "recipients[0].data"))?;

        let batch_id = uuid::Uuid::now_v7().to_string();
        // Shared parts are stored once, so they count once.
        let shared_bytes = blobs.iter().map(|b| b.bytes.len()).sum();
        let shared = Arc::new(BatchShared {
            common,
            encoded,
            blobs,
            queueing,
            batch_id: batch_id.clone(),
            options: self.compose_options(),
            keys: self.dkim.refresh(&self.store).await,
            recipient_limit: self.limits.recipients,
            budget: self.limits.request_bytes,
            spent: AtomicUsize::new(shared_bytes),
        });
        if shared_bytes > self.limits.request_bytes {
            return Err(SubmitError::OverBudget {
                limit: self.limits.request_bytes,
            });
        }
        let recipients = Arc::new(recipients);
        let messages = loop {
            match self.compose_batch(&set, &shared, &recipients).await {
                Ok(messages) => break messages,
                Err(BatchFailure::Missing(names)) => {
                    set = Arc::new(
                        set.extended(&self.store, &names)
                            .await
                            .map_err(|e| SubmitError::from_load(e, "recipients[0].data"))?,
                    );
                    shared.spent.store(shared_bytes, Ordering::Relaxed);
                }
                Err(BatchFailure::Invalid(e)) => return Err(*e),
            }
        };
        let accepted = self.store.accept(messages).await?;
        let replayed = accepted
            .iter()
            .all(|a| matches!(a, Accepted::Existing { .. }));
        // A replayed key answers with the batch it made the first time.
        let batch_id = match (replayed, accepted.first()) {
            (true, Some(first)) => self
                .store
                .message(first.id())
                .await?
                .and_then(|view| view.batch_id)
                .unwrap_or(batch_id),
            _ => batch_id,
        };
        Ok(BatchAccepted {
            batch_id,
            status: accepted
                .first()
                .map_or(crate::store::MessageStatus::Queued, Accepted::status),
            ids: accepted.iter().map(|a| a.id().to_owned()).collect(),
            replayed,
        })
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
        let mut composed = ComposedMessage::new(
            &message,
            subject,
            kinds,
            search_text,
            self.compose_options(),
            &[],
        );
        composed.sign(&self.dkim.current(), &message)?;
        Ok(composed)
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
    /// Puts a `DKIM-Signature` first when `keys` has a key for the From domain (issue 13). The signature
    /// covers the bytes as stored, so every attempt sends what was signed.
    pub fn sign(
        &mut self,
        keys: &crate::dkim::KeyRing,
        message: &Message,
    ) -> Result<(), crate::dkim::DkimError> {
        let domain = message.from().address().ascii_domain();
        if keys.selector_for(domain).is_none() {
            return Ok(());
        }
        // mail-auth reads one buffer: a message of one segment is signed in place, one with shared parts
        // is joined for the signer (the stored segments stay shared).
        let joined;
        let bytes: &[u8] = match self.raw.as_slice() {
            [only] => only.bytes(),
            segments => {
                joined = join(segments);
                &joined
            }
        };
        if let Some(header) = keys.sign(domain, bytes)? {
            self.raw.insert(
                0,
                RawSegment::Literal {
                    bytes: Bytes::from(header),
                    dot_safe: true,
                },
            );
        }
        Ok(())
    }

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

    /// The bytes storing this message takes, shared blobs not counted (they are stored once per batch).
    pub fn stored_bytes(&self) -> usize {
        self.raw
            .iter()
            .map(|segment| match segment {
                RawSegment::Literal { bytes, .. } => bytes.len(),
                RawSegment::Shared { .. } => 0,
            })
            .sum::<usize>()
            + self.search_text.len()
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

/// The answer to a batch: one id per recipient, in the order given.
#[derive(Debug, Clone)]
pub struct BatchAccepted {
    pub batch_id: String,
    pub ids: Vec<String>,
    /// `queued`, or `scheduled` with `send_at`.
    pub status: crate::store::MessageStatus,
    /// The idempotency key was seen before: nothing new was queued.
    pub replayed: bool,
}

/// One recipient of a batch.
#[derive(Debug)]
struct BatchRecipient {
    to: OneOrMany,
    data: Value,
}

/// What every message of a batch has in common.
#[derive(Debug)]
struct CommonFields {
    from: String,
    reply_to: OneOrMany,
    headers: Vec<(String, Value)>,
}

/// `POST /v1/batches`, checked field by field so that every error names its field (`recipients[17].to`).
struct BatchRequest {
    template: String,
    common: CommonFields,
    attachments: Vec<AttachmentRequest>,
    recipients: Vec<BatchRecipient>,
}

impl BatchRequest {
    fn take(object: &mut Map<String, Value>, service: &Service) -> Result<Self, SubmitError> {
        let template = template_name(object.remove("template"))?;
        let from = match object.remove("from").filter(|v| !v.is_null()) {
            Some(Value::String(from)) => from,
            Some(_) => return Err(invalid("from", "must be a string")),
            None => service.default_from.clone().ok_or_else(|| {
                invalid("from", "missing (and no HERALD_FROM default is configured)")
            })?,
        };
        Mailbox::parse(&from).map_err(|e| invalid("from", e.to_string()))?;
        let reply_to: OneOrMany = match object.remove("reply_to") {
            Some(v) => serde_json::from_value(v)
                .map_err(|_| invalid("reply_to", "must be an address or an array of addresses"))?,
            None => OneOrMany::None,
        };
        let headers = match object.remove("headers").filter(|v| !v.is_null()) {
            Some(Value::Object(map)) => map.into_iter().collect(),
            Some(_) => {
                return Err(invalid(
                    "headers",
                    "must be an object of header names to strings",
                ));
            }
            None => Vec::new(),
        };
        let attachments: Vec<AttachmentRequest> = match object.remove("attachments") {
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    serde_json::from_value(item)
                        .map_err(|e| invalid(format!("attachments[{i}]"), e.to_string()))
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => return Err(invalid("attachments", "must be an array")),
        };
        let items = match object.remove("recipients") {
            Some(Value::Array(items)) => items,
            Some(_) => return Err(invalid("recipients", "must be an array of {to, data}")),
            None => return Err(invalid("recipients", "missing: an array of {to, data}")),
        };
        if items.is_empty() || items.len() > service.limits.batch_recipients {
            return Err(invalid(
                "recipients",
                format!(
                    "must hold 1 to {} recipients (split larger sends into several batches)",
                    service.limits.batch_recipients
                ),
            ));
        }
        let mut recipients = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let Value::Object(mut fields) = item else {
                return Err(invalid(
                    format!("recipients[{i}]"),
                    "must be an object {to, data}",
                ));
            };
            let to = match fields.remove("to") {
                Some(v @ (Value::String(_) | Value::Array(_))) => serde_json::from_value(v)
                    .map_err(|_| {
                        invalid(
                            format!("recipients[{i}].to"),
                            "must be an address or an array of addresses",
                        )
                    })?,
                Some(_) => {
                    return Err(invalid(
                        format!("recipients[{i}].to"),
                        "must be an address or an array of addresses",
                    ));
                }
                None => return Err(invalid(format!("recipients[{i}].to"), "missing")),
            };
            let data = template_data(fields.remove("data"), &format!("recipients[{i}].data"))?;
            if let Some(unknown) = fields.keys().next() {
                return Err(invalid(
                    format!("recipients[{i}].{unknown}"),
                    "unknown field (a recipient has `to` and `data`)",
                ));
            }
            recipients.push(BatchRecipient { to, data });
        }
        if let Some(unknown) = object.keys().next() {
            return Err(invalid(
                unknown.as_str(),
                "unknown field for a batch (template, from, reply_to, headers, recipients, attachments, \
                 send_at, idempotency_key, tags, metadata)",
            ));
        }
        Ok(Self {
            template,
            common: CommonFields {
                from,
                reply_to,
                headers,
            },
            attachments,
            recipients,
        })
    }
}

/// What the composing threads of one batch share.
struct BatchShared {
    common: CommonFields,
    encoded: Vec<EncodedPart>,
    blobs: Vec<Arc<SharedBlob>>,
    queueing: Queueing,
    batch_id: String,
    options: ComposeOptions,
    /// The DKIM keys the batch's messages are signed with, read once for the batch.
    keys: Arc<crate::dkim::KeyRing>,
    recipient_limit: usize,
    /// [`Limits::request_bytes`], and the bytes the batch's messages have taken of it so far.
    budget: usize,
    spent: AtomicUsize,
}

enum BatchFailure {
    /// Rendering needs templates not loaded yet.
    Missing(Vec<String>),
    /// Boxed: the error is the rare path, and a small `Result` keeps the per-message path lean.
    Invalid(Box<SubmitError>),
}

/// Recipients rendered and composed by one job on a render thread: small enough that a batch shares the
/// threads with other requests' renders, large enough that handing jobs over costs nothing measurable.
const BATCH_CHUNK: usize = 64;

impl Service {
    /// Renders and composes every message of a batch on the render threads, a chunk of recipients per job,
    /// as many jobs at once as there are threads. The first failure in recipient order wins, so the error
    /// names the lowest bad index.
    async fn compose_batch(
        &self,
        set: &Arc<TemplateSet>,
        shared: &Arc<BatchShared>,
        recipients: &Arc<Vec<BatchRecipient>>,
    ) -> Result<Vec<NewMessage>, BatchFailure> {
        use futures_util::StreamExt as _;
        let chunks: Vec<Range<usize>> = (0..recipients.len())
            .step_by(BATCH_CHUNK)
            .map(|start| start..(start + BATCH_CHUNK).min(recipients.len()))
            .collect();
        // Each render has its own wall-time budget inside the job; the wait for a whole chunk is their sum.
        let chunk_budget = self.limits.template.render_time * BATCH_CHUNK as u32;
        let results: Vec<Result<Vec<NewMessage>, (usize, BatchFailure)>> =
            futures_util::stream::iter(chunks)
                .map(|range| {
                    let (set, shared, recipients) =
                        (set.clone(), shared.clone(), recipients.clone());
                    let first = range.start;
                    let renderer = self.renderer.clone();
                    let template = set.name().to_owned();
                    async move {
                        renderer
                            .run(chunk_budget, move || {
                                let composed = range
                                    .map(|i| {
                                        compose_one(&set, &shared, i, &recipients[i])
                                            .map_err(|e| (i, e))
                                    })
                                    .collect::<Result<Vec<_>, _>>();
                                // Over budget in another chunk: these messages will not be stored, and
                                // freeing hundreds of megabytes belongs on this thread, not on an async
                                // worker.
                                if composed.is_ok()
                                    && shared.spent.load(Ordering::Relaxed) > shared.budget
                                {
                                    drop(composed);
                                    return Err((
                                        first,
                                        BatchFailure::Invalid(Box::new(SubmitError::OverBudget {
                                            limit: shared.budget,
                                        })),
                                    ));
                                }
                                composed
                            })
                            .await
                            .unwrap_or_else(|e| {
                                let failure = match LoadError::from_pool(e, &template) {
                                    LoadError::Busy(e) => SubmitError::Busy(e),
                                    other => SubmitError::from_load(
                                        other,
                                        format!("recipients[{first}].data"),
                                    ),
                                };
                                Err((first, BatchFailure::Invalid(Box::new(failure))))
                            })
                    }
                })
                .buffered(self.renderer.threads())
                .collect()
                .await;
        let mut messages = Vec::with_capacity(recipients.len());
        let mut first_error: Option<(usize, BatchFailure)> = None;
        for result in results {
            match result {
                Ok(mut part) => messages.append(&mut part),
                Err((i, e)) => {
                    // A missing template outranks any error: rendering again after loading it may change it.
                    let replace = match (&first_error, &e) {
                        (None, _) => true,
                        (Some((_, BatchFailure::Missing(_))), _) => false,
                        (Some(_), BatchFailure::Missing(_)) => true,
                        (Some((j, _)), _) => i < *j,
                    };
                    if replace {
                        first_error = Some((i, e));
                    }
                }
            }
        }
        match first_error {
            Some((_, e)) => Err(e),
            None => Ok(messages),
        }
    }
}

fn compose_one(
    set: &TemplateSet,
    shared: &BatchShared,
    i: usize,
    recipient: &BatchRecipient,
) -> Result<NewMessage, BatchFailure> {
    let data_field = || format!("recipients[{i}].data");
    let over_budget = || {
        BatchFailure::Invalid(Box::new(SubmitError::OverBudget {
            limit: shared.budget,
        }))
    };
    // Another thread already went over: stop rendering at once.
    if shared.spent.load(Ordering::Relaxed) > shared.budget {
        return Err(over_budget());
    }
    let rendered = set.render(&recipient.data).map_err(|e| match e {
        RenderError::Missing(names) => BatchFailure::Missing(names),
        RenderError::Template(error) => BatchFailure::Invalid(Box::new(SubmitError::Template {
            field: data_field(),
            error,
        })),
    })?;
    let request = MessageRequest {
        from: shared.common.from.clone(),
        to: recipient.to.clone(),
        cc: OneOrMany::None,
        bcc: OneOrMany::None,
        reply_to: shared.common.reply_to.clone(),
        subject: Some(rendered.subject),
        text: Some(rendered.text),
        html: rendered.html,
        attachments: Vec::new(),
        headers: shared.common.headers.clone(),
    };
    // Errors about this recipient's fields name them; errors about shared fields keep their own names.
    let locate = |e: RequestError| {
        let field = if e.field == "to" || e.field.starts_with("to[") {
            format!("recipients[{i}].{}", e.field)
        } else if matches!(e.field.as_str(), "subject" | "text") {
            return SubmitError::Invalid(RequestError {
                field: data_field(),
                message: format!("rendered {}: {}", e.field, e.message),
            });
        } else if e.field == "html" {
            "attachments".to_owned()
        } else {
            e.field
        };
        SubmitError::Invalid(RequestError {
            field,
            message: e.message,
        })
    };
    let kinds =
        recipient_kinds(&request).map_err(|e| BatchFailure::Invalid(Box::new(locate(e))))?;
    if kinds.len() > shared.recipient_limit {
        return Err(BatchFailure::Invalid(Box::new(invalid(
            format!("recipients[{i}].to"),
            format!("at most {} addresses per message", shared.recipient_limit),
        ))));
    }
    let search = request.text.clone().unwrap_or_default();
    let subject = request.subject.clone().unwrap_or_default();
    let message = request
        .into_message_with(Files::Forbidden, &shared.encoded)
        .map_err(|e| BatchFailure::Invalid(Box::new(locate(e))))?;
    let mut composed = ComposedMessage::new(
        &message,
        subject,
        kinds,
        search,
        shared.options.clone(),
        &shared.blobs,
    );
    composed
        .sign(&shared.keys, &message)
        .map_err(|e| BatchFailure::Invalid(Box::new(e.into())))?;
    let size = composed.stored_bytes();
    if shared.spent.fetch_add(size, Ordering::Relaxed) + size > shared.budget {
        return Err(over_budget());
    }
    let mut queueing = shared.queueing.clone();
    // One key per message, derived from the batch's: a retried batch finds every message it made. The unit
    // separator cannot occur in a client's key (control characters are refused), so no message-level key
    // collides with it.
    queueing.idempotency_key = queueing
        .idempotency_key
        .map(|key| format!("{key}\u{1f}{i}"));
    let mut new = composed.into_new(queueing);
    new.batch_id = Some(shared.batch_id.clone());
    Ok(new)
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

/// Puts a rendered template into a message request as its subject, text and html.
fn insert_rendered(object: &mut Map<String, Value>, rendered: Rendered) {
    object.insert("subject".into(), Value::String(rendered.subject));
    object.insert("text".into(), Value::String(rendered.text));
    if let Some(html) = rendered.html {
        object.insert("html".into(), Value::String(html));
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
