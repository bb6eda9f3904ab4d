//! Sending the outbox: one loop per enabled endpoint on every node.
//!
//! A loop claims its endpoint's due deliveries under a lease (as many as it has free request slots, the
//! per-endpoint concurrency cap), sends each one signed, and hands the outcome to a recorder that writes the
//! outcomes waiting in one transaction. No transaction is held across a request (DESIGN.md invariant 2); a
//! node that dies loses its leases and the deliveries are sent again by whichever node claims them next, with
//! the same `webhook-id`: duplicates only for requests that were in flight. A slow endpoint holds up only its
//! own loop.
//!
//! The supervisor reads the endpoints every second (and at once when this node changes one) and starts,
//! updates or stops the loops.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch},
    task::JoinHandle,
};

use super::{Settings, guard, manage::Management, payload, sign};
use crate::store::{ClaimedDelivery, DeliveryNext, DeliveryOutcome, Millis, Store, WebhookRow};

/// How much of a response body is kept for the dashboard.
pub const EXCERPT_BYTES: usize = 512;
/// Most outcomes written in one transaction.
const RECORD_BATCH: usize = 512;

/// An endpoint ready to be sent to: its URL parsed and its keys unsealed.
#[derive(Clone)]
struct Endpoint {
    id: String,
    url: reqwest::Url,
    keys: Vec<Vec<u8>>,
    /// What it was built from, to tell a change.
    version: (Millis, Option<Millis>),
}

/// Wakes the supervisor when this node changed an endpoint, so a new endpoint starts at once.
#[derive(Debug, Clone, Default)]
pub struct EndpointsChanged(Arc<Notify>);

impl EndpointsChanged {
    pub fn notify(&self) {
        self.0.notify_one();
    }
}

/// The webhook sender of one node.
pub struct Dispatcher {
    store: Store,
    settings: Settings,
    management: Management,
    owner: String,
    client: reqwest::Client,
    changed: EndpointsChanged,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        settings: Settings,
        management: Management,
        owner: String,
        changed: EndpointsChanged,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            // A proxy from the environment would make the requests from elsewhere, past the guard.
            .no_proxy()
            .dns_resolver(guard::resolver(settings.allow_private))
            .pool_max_idle_per_host(settings.concurrency)
            .user_agent(concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            store,
            settings,
            management,
            owner,
            client,
            changed,
        })
    }

    /// Runs until `stop` turns true; then the loops finish the requests in flight and record them.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let shared = Arc::new(self);
        let mut loops: HashMap<String, (watch::Sender<Option<Endpoint>>, JoinHandle<()>)> =
            HashMap::new();
        let mut warned_sealed: Vec<String> = Vec::new();
        loop {
            if *stop.borrow() {
                break;
            }
            match shared.store.webhooks().await {
                Ok(rows) => {
                    let now = shared.store.clock().now();
                    let mut wanted: HashMap<String, Endpoint> = HashMap::new();
                    for row in rows.iter().filter(|r| r.enabled) {
                        match shared.endpoint(row, now) {
                            Ok(endpoint) => {
                                wanted.insert(row.id.clone(), endpoint);
                            }
                            Err(error) => {
                                if !warned_sealed.contains(&row.id) {
                                    tracing::error!(webhook = %row.id, %error, "webhook endpoint not served");
                                    warned_sealed.push(row.id.clone());
                                }
                            }
                        }
                    }
                    loops.retain(|id, (sender, task)| {
                        if task.is_finished() {
                            return false;
                        }
                        match wanted.remove(id) {
                            Some(endpoint) => {
                                sender.send_if_modified(|current| {
                                    let modified = current
                                        .as_ref()
                                        .is_none_or(|c| c.version != endpoint.version);
                                    if modified {
                                        *current = Some(endpoint);
                                    }
                                    modified
                                });
                                true
                            }
                            None => {
                                // Disabled or deleted: the loop ends after its requests in flight.
                                let _ = sender.send(None);
                                false
                            }
                        }
                    });
                    for (id, endpoint) in wanted {
                        let (sender, receiver) = watch::channel(Some(endpoint));
                        let task =
                            tokio::spawn(shared.clone().endpoint_loop(receiver, stop.clone()));
                        loops.insert(id, (sender, task));
                    }
                }
                Err(error) => tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "reading the webhook endpoints failed; will retry"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(shared.settings.poll * 10) => {}
                _ = shared.changed.0.notified() => {}
                _ = stop.changed() => {}
            }
        }
        for (_, (_, task)) in loops {
            let _ = task.await;
        }
    }

    fn endpoint(&self, row: &WebhookRow, now: Millis) -> Result<Endpoint, super::WebhookError> {
        let url = reqwest::Url::parse(&row.url).map_err(|e| super::WebhookError::Invalid {
            field: "url",
            message: e.to_string(),
        })?;
        let keys = self.management.signing_keys(row, now)?;
        let rotation = row.previous_until.filter(|until| *until > now);
        Ok(Endpoint {
            id: row.id.clone(),
            url,
            keys,
            version: (row.updated_at, rotation),
        })
    }

    async fn endpoint_loop(
        self: Arc<Self>,
        mut endpoint: watch::Receiver<Option<Endpoint>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(first) = endpoint.borrow().clone() else {
            return;
        };
        let id = first.id.clone();
        let cap = self.settings.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(cap));
        let (outcomes, to_record) = mpsc::unbounded_channel();
        // Set by the recorder when it disabled the endpoint: no more claims, before the supervisor sees it.
        let disabled = Arc::new(AtomicBool::new(false));
        let recorder = tokio::spawn(self.clone().record_loop(to_record, disabled.clone()));
        let mut full = false;
        loop {
            if *stop.borrow() || disabled.load(Ordering::Relaxed) {
                break;
            }
            let Some(current) = endpoint.borrow_and_update().clone() else {
                break;
            };
            // A slot free before claiming: a claimed delivery never waits for one while its lease runs.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let free = 1 + slots.available_permits();
            let now = self.store.clock().now();
            // While the last claim was full there is more; otherwise look (a read) before claiming (a write).
            let due = if full {
                true
            } else {
                match self.store.next_webhook_due(&id).await {
                    Ok(next) => next.is_some_and(|at| at <= now),
                    Err(error) => {
                        tracing::warn!(webhook = %id, error = &error as &dyn std::error::Error, "webhook queue read failed");
                        false
                    }
                }
            };
            let claimed = if due {
                match self
                    .store
                    .claim_webhook_deliveries(&id, &self.owner, self.settings.lease, free as u32)
                    .await
                {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        tracing::warn!(webhook = %id, error = &error as &dyn std::error::Error, "webhook claim failed");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            full = claimed.len() == free;
            if claimed.is_empty() {
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.poll) => {}
                    _ = endpoint.changed() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let mut permit = Some(permit);
            for delivery in claimed {
                let slot = match permit.take() {
                    Some(slot) => slot,
                    None => match slots.clone().acquire_owned().await {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                };
                let this = self.clone();
                let target = current.clone();
                let outcomes = outcomes.clone();
                tokio::spawn(async move {
                    let outcome = this.send(&target, &delivery).await;
                    // The slot stays taken until the outcome is committed: a crash can then repeat at most
                    // `concurrency` answered requests per endpoint (sent, answered, not yet recorded).
                    let _ = outcomes.send((outcome, slot));
                });
            }
        }
        // Every request in flight finishes (bounded by the request timeout) and is recorded.
        let _ = slots.acquire_many(cap as u32).await;
        drop(outcomes);
        let _ = recorder.await;
    }

    async fn record_loop(
        self: Arc<Self>,
        mut outcomes: mpsc::UnboundedReceiver<(DeliveryOutcome, OwnedSemaphorePermit)>,
        disabled: Arc<AtomicBool>,
    ) {
        while let Some(first) = outcomes.recv().await {
            let mut batch = vec![first];
            while batch.len() < RECORD_BATCH {
                match outcomes.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            let count = batch.len();
            let (batch, slots): (Vec<DeliveryOutcome>, Vec<OwnedSemaphorePermit>) =
                batch.into_iter().unzip();
            match self
                .store
                .record_webhook_deliveries(&self.owner, batch, self.settings.disable_after)
                .await
            {
                Ok(disabled_now) => {
                    for id in disabled_now {
                        disabled.store(true, Ordering::Relaxed);
                        tracing::warn!(
                            webhook = %id,
                            disable_after = ?self.settings.disable_after,
                            "webhook endpoint disabled: every delivery failed for HERALD_WEBHOOK_DISABLE_AFTER"
                        );
                    }
                }
                // Not recorded: the leases run out and the deliveries are sent again (same webhook-id).
                Err(error) => tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    outcomes = count,
                    "recording webhook deliveries failed; they will be sent again"
                ),
            }
            drop(slots);
        }
    }

    /// One attempt; never fails, its failure is the outcome.
    async fn send(&self, endpoint: &Endpoint, delivery: &ClaimedDelivery) -> DeliveryOutcome {
        let started = Instant::now();
        let attempted_at = self.store.clock().now();
        let result = self.attempt(endpoint, delivery).await;
        let latency_ms = started.elapsed().as_millis() as i64;
        let (response_status, response_excerpt, error) = match result {
            Ok(Response {
                status,
                excerpt,
                error,
            }) => (Some(status), excerpt, error),
            Err(error) => (None, None, Some(error)),
        };
        let next = match &error {
            None => DeliveryNext::Delivered,
            Some(_) => {
                let now = self.store.clock().now();
                match self.settings.retry.next_attempt(
                    delivery.attempts,
                    delivery.created_at,
                    now,
                    &mut rand::rng(),
                ) {
                    Some(at) => DeliveryNext::RetryAt(at),
                    None => DeliveryNext::GiveUp,
                }
            }
        };
        metrics::counter!("herald_webhook_attempts_total", "result" => if error.is_none() { "delivered" } else { "failed" })
            .increment(1);
        DeliveryOutcome {
            id: delivery.id,
            webhook_id: delivery.webhook_id.clone(),
            attempted_at,
            response_status,
            latency_ms,
            response_excerpt,
            error,
            next,
        }
    }

    async fn attempt(
        &self,
        endpoint: &Endpoint,
        delivery: &ClaimedDelivery,
    ) -> Result<Response, String> {
        let record = match self.store.webhook_event(delivery.event_id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err("the event is no longer in the store".into()),
            Err(error) => return Err(format!("reading the event failed: {error}")),
        };
        let body = serde_json::to_vec(&payload(&delivery.event_type, &record))
            .expect("a JSON value serializes");
        if let Some(ip) = guard::forbidden_literal(&endpoint.url, self.settings.allow_private) {
            return Err(format!(
                "refused: {ip} is a loopback, private, link-local or reserved address"
            ));
        }
        let id = super::event_id(delivery.event_id);
        let timestamp = self.store.clock().now() / 1_000;
        let keys: Vec<&[u8]> = endpoint.keys.iter().map(Vec::as_slice).collect();
        let signature = sign::signature_header(&keys, &id, timestamp, &body);
        let response = self
            .client
            .post(endpoint.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| describe(&e, self.settings.timeout))?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(200).collect::<String>());
        let excerpt = excerpt(response).await;
        let error = if status.is_success() {
            None
        } else if status.is_redirection() {
            Some(format!(
                "HTTP {} (redirects are not followed{})",
                status.as_u16(),
                location.map(|l| format!("; to {l}")).unwrap_or_default()
            ))
        } else {
            Some(format!("HTTP {}", status.as_u16()))
        };
        Ok(Response {
            status: status.as_u16(),
            excerpt,
            error,
        })
    }
}

struct Response {
    status: u16,
    excerpt: Option<String>,
    error: Option<String>,
}

/// The start of a response body, as text; reading stops at [`EXCERPT_BYTES`] (a large or endless body costs
/// nothing more) and when the request's timeout ends it.
async fn excerpt(mut response: reqwest::Response) -> Option<String> {
    let mut bytes = Vec::new();
    while bytes.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(EXCERPT_BYTES);
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// A request error and its causes, once each.
fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timed out after {timeout:?}");
    }
    let mut text = if error.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
