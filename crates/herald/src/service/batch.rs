//! The batch path (`POST /v1/batches`): one template, one personalized message per recipient, rendered and
//! composed on the render threads a chunk at a time, all stored in one commit. Shared attachments are
//! encoded once and stored once; the request's byte budget counts them once.

use std::{
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use herald_mime::{ComposeOptions, EncodedPart, Mailbox};
use serde_json::{Map, Value};

use super::{
    Queueing, Service, SubmitError,
    compose::{ComposedMessage, recipient_kinds},
    invalid, parse_object,
    suppressions::{UnsubscribeField, UnsubscribeLinks, check_no_own_unsubscribe_headers},
    template_data, template_name,
};
use crate::{
    request::{AttachmentRequest, Files, MessageRequest, OneOrMany, RequestError},
    store::{Accepted, NewMessage, SharedBlob},
    templates::{self, LoadError, RenderError, TemplateSet},
};

impl Service {
    /// Validates, renders, composes and durably stores one message per recipient of a batch
    /// (`POST /v1/batches`), all in one commit. Shared attachments are encoded once and stored once.
    pub async fn submit_batch(
        &self,
        body: &[u8],
        idempotency_header: Option<&str>,
    ) -> Result<BatchAccepted, SubmitError> {
        let mut object = parse_object(body)?;
        let queueing = self.queueing_with_header(&mut object, idempotency_header)?;
        let asked = UnsubscribeField::take(&mut object)?;
        let batch = BatchRequest::take(&mut object, self)?;
        let stored = self
            .store
            .template(&batch.template)
            .await?
            .ok_or_else(|| SubmitError::UnknownTemplate(batch.template.clone()))?;
        // The request's `unsubscribe` when given (null: none), else the template's (issue 12).
        let unsubscribe = self.unsubscribe_links(asked, Some(&stored)).await?;
        if let Some(links) = &unsubscribe {
            check_no_own_unsubscribe_headers(
                batch.common.headers.iter().map(|(name, _)| name),
                links,
            )?;
        }
        let BatchRequest {
            template: _,
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

        let set = TemplateSet::from_root(stored.source, self.limits.template.clone());
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
            unsubscribe,
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
            suppressed: accepted
                .iter()
                .flat_map(|a| {
                    a.suppressed()
                        .iter()
                        .map(|address| (a.id().to_owned(), address.clone()))
                })
                .collect(),
            replayed,
        })
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
    /// `(message id, address)` of each recipient on the suppression list (issue 12).
    pub suppressed: Vec<(String, String)>,
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
                 send_at, idempotency_key, tags, metadata, ignore_suppressions, unsubscribe)",
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
    /// The DKIM keys the batch's messages are signed with, read once for the batch (issue 13).
    keys: Arc<crate::dkim::KeyRing>,
    recipient_limit: usize,
    /// [`Limits::request_bytes`], and the bytes the batch's messages have taken of it so far.
    budget: usize,
    spent: AtomicUsize,
    /// `unsubscribe` (issue 12): each message gets its own link, naming it.
    unsubscribe: Option<UnsubscribeLinks>,
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
    let mut headers = shared.common.headers.clone();
    let link_id = shared.unsubscribe.as_ref().map(|links| {
        let (id, pairs) = links.for_new_message();
        headers.extend(pairs);
        id
    });
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
        headers,
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
    if let Some(links) = &shared.unsubscribe
        && kinds.len() != 1
    {
        // The link names the message: each recipient needs their own (see `submit`).
        return Err(BatchFailure::Invalid(Box::new(links.refusal(
            format!("recipients[{i}].to"),
            "one address per recipient with `unsubscribe` (each gets their own link)",
        ))));
    }
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
    if let (Some(id), Some(links)) = (link_id, &shared.unsubscribe) {
        new.id = id.to_string();
        new.unsubscribe_list = Some(links.list.clone());
    }
    Ok(new)
}
