//! The single-message path (`POST /v1/messages`, `herald compose`): a request's fields, or a stored template
//! rendered with its data, become one composed message, stored in one commit; and what a composed message
//! is in stored form (raw segments, envelope recipients, the text indexed for search).

use std::sync::Arc;

use herald_mime::{ComposeOptions, Composed, Mailbox, Message};
use serde_json::{Map, Value};

use super::{
    Queueing, Service, SubmitError, invalid, parse_object,
    suppressions::{UnsubscribeField, check_no_own_unsubscribe_headers},
    template_data, template_name,
};
use crate::{
    request::{Files, MessageRequest, RequestError},
    store::{
        Accepted, MessageSource, NewMessage, NewRecipient, RawSegment, RecipientKind, SharedBlob,
        StoredTemplate,
    },
    templates::Rendered,
    text::search_text,
};

impl Service {
    /// Validates, composes and durably stores one message (`POST /v1/messages`). Returns after the commit.
    pub async fn submit(
        &self,
        body: &[u8],
        idempotency_header: Option<&str>,
    ) -> Result<Accepted, SubmitError> {
        let mut object = parse_object(body)?;
        let queueing = self.queueing_with_header(&mut object, idempotency_header)?;
        let asked = UnsubscribeField::take(&mut object)?;
        // The stored template is read first: its unsubscribe (issue 12) decides headers that go in before
        // the message is composed.
        let template = if object.contains_key("template") {
            Some(self.take_template(&mut object).await?)
        } else {
            None
        };
        // One-click unsubscribe (issue 12): the headers go into the composed bytes, so the id they name is
        // chosen first.
        let unsubscribe = self.unsubscribe_links(asked, template.as_ref()).await?;
        let mut chosen_id = None;
        if let Some(links) = &unsubscribe {
            if matches!(object.get("headers"), None | Some(Value::Null)) {
                object.insert("headers".into(), Value::Object(Map::new()));
            }
            let Some(Value::Object(headers)) = object.get_mut("headers") else {
                return Err(invalid(
                    "headers",
                    "must be an object of header names to strings",
                ));
            };
            check_no_own_unsubscribe_headers(headers.keys(), links)?;
            let (id, pairs) = links.for_new_message();
            headers.extend(pairs);
            chosen_id = Some(id.to_string());
        }
        // `compose` signs with the ring as read; read it again here when it is old (issue 13).
        self.dkim.refresh(&self.store).await;
        if let Some(template) = template {
            self.render_into(&mut object, template).await?;
        } else if object.contains_key("data") {
            return Err(invalid(
                "data",
                "data is for templates: give `template` (a stored template's name) too",
            ));
        } else {
            self.text_part_from_html(&mut object).await;
        }
        // An RSA signature takes about a millisecond (see README, Benchmarks): off the async workers.
        let message = if self.dkim.current().has_rsa() {
            let service = self.clone();
            tokio::task::spawn_blocking(move || service.compose(object))
                .await
                .map_err(|e| invalid("", format!("composing failed: {e}")))??
        } else {
            self.compose(object)?
        };
        // Attachments are stored once for every message that carries them, but one request still counts all
        // of its bytes.
        let size = message.request_bytes();
        if size > self.limits.request_bytes {
            return Err(SubmitError::OverBudget {
                limit: self.limits.request_bytes,
            });
        }
        if let Some(links) = &unsubscribe
            && message.recipients.len() != 1
        {
            // The link names the message, and the headers are the same bytes for every recipient: with
            // several, one person's click would unsubscribe them all.
            return Err(links.refusal(
                "unsubscribe",
                "needs a message per recipient (one address in to, no cc or bcc); send lists with /v1/batches",
            ));
        }
        let mut new = message.into_new(queueing);
        if let Some(id) = chosen_id {
            new.id = id;
        }
        new.unsubscribe_list = unsubscribe.map(|links| links.list);
        let mut accepted = self.store.accept(vec![new]).await?;
        Ok(accepted.remove(0))
    }

    /// Gives a message of HTML alone the text part made from its HTML, as a template without a text part gets
    /// (issue 13): filters score HTML-only mail as spam-like (SpamAssassin's `MIME_HTML_ONLY`), and a reader
    /// without HTML sees nothing. html2text recurses per nesting level, so it runs on a render thread (big
    /// stacks, never an HTTP worker) and only on HTML that nests no deeper than templates may; otherwise, or
    /// when the render threads are busy, the message stays HTML-only, as it was accepted before.
    async fn text_part_from_html(&self, object: &mut Map<String, Value>) {
        if object.contains_key("text") {
            return;
        }
        let Some(Value::String(html)) = object.get("html") else {
            return;
        };
        let limit = self.limits.template.html_depth;
        if html.trim().is_empty() || crate::templates::nesting_depth(html, limit) > limit {
            return;
        }
        let html = html.clone();
        let made = self
            .renderer
            .run(self.limits.template.render_time, move || {
                crate::templates::text_from_html(&html)
            })
            .await;
        match made {
            Ok(text)
                if !text.trim().is_empty() && text.len() <= self.limits.template.output_bytes =>
            {
                object.insert("text".into(), Value::String(text));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "no text part made from the HTML; the message stays HTML-only");
            }
        }
    }

    /// Takes `template` out of a message request and reads that stored template.
    async fn take_template(
        &self,
        object: &mut Map<String, Value>,
    ) -> Result<StoredTemplate, SubmitError> {
        for field in ["subject", "text", "html"] {
            if object.contains_key(field) {
                return Err(invalid(
                    field,
                    "give either `template` and `data`, or subject/text/html, not both",
                ));
            }
        }
        let name = template_name(object.remove("template"))?;
        self.store
            .template(&name)
            .await?
            .ok_or(SubmitError::UnknownTemplate(name))
    }

    /// Replaces `data` in a message request, and the template it was read with, by the rendered `subject`,
    /// `text` and `html`.
    async fn render_into(
        &self,
        object: &mut Map<String, Value>,
        template: StoredTemplate,
    ) -> Result<(), SubmitError> {
        let data = template_data(object.remove("data"), "data")?;
        let rendered = self.render_stored(template.source, &data, "data").await?;
        insert_rendered(object, rendered);
        Ok(())
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
        // Every attachment becomes a shared part: stored once however many messages carry it, and encoded
        // once while it stays in the cache of recent parts.
        let mut blobs = Vec::with_capacity(request.attachments.len());
        let message = request.into_message_encoding(Files::Forbidden, &mut |i, attachment| {
            let (part, blob) = self.parts.encode(i, attachment, &Files::Forbidden)?;
            blobs.push(blob);
            Ok(part)
        })?;
        let mut composed = ComposedMessage::new(
            &message,
            subject,
            kinds,
            search_text,
            self.compose_options(),
            &blobs,
        );
        composed.sign(&self.dkim.current(), &message)?;
        Ok(composed)
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
        // Hashed where the segments are: a shared attachment is not copied to be signed.
        let segments: Vec<crate::dkim::SignedSegment<'_>> = self
            .raw
            .iter()
            .map(|s| crate::dkim::SignedSegment {
                bytes: &s.bytes()[..],
                canonical: match s {
                    RawSegment::Shared { blob, .. } => blob.canonical(),
                    RawSegment::Literal { .. } => None,
                },
            })
            .collect();
        if let Some(header) = keys.sign_segments(domain, &segments)? {
            self.raw.insert(
                0,
                RawSegment::Literal {
                    bytes: bytes::Bytes::from(header),
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

    /// The bytes storing this message takes, shared blobs not counted (they are stored once).
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

    /// Every byte of this message, shared parts included: what one request is charged.
    pub fn request_bytes(&self) -> usize {
        self.raw.iter().map(|s| s.bytes().len()).sum::<usize>() + self.search_text.len()
    }

    pub fn into_new(self, queueing: Queueing) -> NewMessage {
        let sender = self
            .composed
            .envelope()
            .sender
            .to_ascii()
            .unwrap_or_else(|_| self.composed.envelope().sender.to_string());
        NewMessage {
            source: MessageSource::Api,
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
            ignore_suppressions: queueing.ignore_suppressions,
            unsubscribe_list: None,
        }
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
pub(super) fn recipient_kinds(
    request: &MessageRequest,
) -> Result<Vec<(String, RecipientKind)>, RequestError> {
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
