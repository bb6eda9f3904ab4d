//! Webhooks (issue 12): endpoints that are told what happened to each message, signed per the Standard
//! Webhooks specification, from a durable outbox.
//!
//! - The outbox is the store's `webhook_deliveries`, filled by a trigger on the timeline (`events`) in the
//!   transaction of each state change (see `store::webhooks`): an event is neither lost nor invented by a
//!   crash, and every kind of change that writes a timeline line is covered.
//! - [`dispatch`] claims due deliveries per endpoint under a lease, sends them (at least once, the same
//!   `webhook-id` on every attempt), and records the outcome: retry with backoff, give up after the maximum
//!   age, disable an endpoint that fails for too long.
//! - [`sign`] makes the `webhook-signature` header; [`guard`] keeps endpoints off private addresses (SSRF),
//!   at creation and at every connection; [`manage`] creates, changes and rotates endpoints.

pub mod dispatch;
pub mod guard;
pub mod manage;
pub mod sign;

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    queue::RetryPolicy,
    service::format_rfc3339,
    store::{EventRecord, StoreError},
};

/// `HERALD_WEBHOOK_RETRY`'s default: the delays after the 1st, 2nd … failed attempt, the last repeating.
pub const DEFAULT_RETRY: &str = "5s,30s,2m,10m,1h,6h";
/// `HERALD_WEBHOOK_MAX_AGE`'s default: a delivery still failing this long after its event is given up.
pub const DEFAULT_MAX_AGE: &str = "3d";
/// `HERALD_WEBHOOK_DISABLE_AFTER`'s default: an endpoint whose every delivery failed for this long is
/// disabled (it would only pile up retries).
pub const DEFAULT_DISABLE_AFTER: Duration = Duration::from_secs(3 * 24 * 3600);
/// `HERALD_WEBHOOK_TIMEOUT`'s default: the whole request, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// `HERALD_WEBHOOK_CONCURRENCY`'s default: requests in flight to one endpoint from one node.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// How webhooks are delivered (`HERALD_WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HERALD_WEBHOOK_ALLOW_PRIVATE=1`: endpoints may be on loopback and private networks (tests, or an
    /// endpoint on the same host on purpose).
    pub allow_private: bool,
    pub timeout: Duration,
    pub concurrency: usize,
    pub disable_after: Duration,
    pub retry: RetryPolicy,
    /// How long a claimed delivery stays with a node that does not record its outcome (crash): longer than
    /// a request may take, so a live node never loses a delivery it is sending.
    pub lease: Duration,
    /// How often an idle endpoint looks for due deliveries, and how often the list of endpoints is read.
    pub poll: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            allow_private: false,
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            disable_after: DEFAULT_DISABLE_AFTER,
            retry: retry_policy(DEFAULT_RETRY, DEFAULT_MAX_AGE)
                .expect("the default schedule parses"),
            lease: Duration::from_secs(60),
            poll: Duration::from_millis(100),
        }
    }
}

impl Settings {
    /// The lease for a timeout: room for the request and for recording its outcome.
    pub fn lease_for(timeout: Duration) -> Duration {
        (timeout * 3).max(Duration::from_secs(30))
    }
}

/// A retry schedule in the `HERALD_RETRY` form, errors naming the webhook keys.
pub fn retry_policy(schedule: &str, max_age: &str) -> Result<RetryPolicy, String> {
    RetryPolicy::parse(schedule, max_age).map_err(|e| {
        e.replace("HERALD_RETRY", "HERALD_WEBHOOK_RETRY")
            .replace("HERALD_MAX_AGE", "HERALD_WEBHOOK_MAX_AGE")
    })
}

/// What went wrong with a webhook request, in the API's terms.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("no webhook endpoint {0}")]
    NotFound(String),
    #[error("no delivery {delivery} for webhook endpoint {webhook}, or it is being sent right now")]
    NoDelivery { webhook: String, delivery: i64 },
    /// The stored secret does not open with `HERALD_SECRET_KEY` (changed or missing).
    #[error(
        "the signing secret of webhook {0} cannot be unsealed: is HERALD_SECRET_KEY the one it was sealed with?"
    )]
    Sealed(String),
    #[error("{0}")]
    Secret(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The id receivers de-duplicate by (`webhook-id` and the payload's `id`): the timeline line's, the same on
/// every attempt and every node.
pub fn event_id(event_id: i64) -> String {
    format!("evt_{event_id}")
}

/// The JSON body sent for an event (Standard Webhooks' `type`, `timestamp`, `data`, with the event's `id`).
///
/// `reply` is the reply this event reports; `smtp_code` and `enhanced_status` come from the recipient's row,
/// so they are given only while that row still holds this event's outcome (a `deferred` recipient that was
/// delivered since has the 250 of its delivery, which would be wrong on the `message.deferred` event).
pub fn payload(event_type: &str, record: &EventRecord) -> Value {
    let json_or = |text: &str, empty: Value| serde_json::from_str(text).unwrap_or(empty);
    let current =
        record.recipient.is_some() && record.recipient_status.as_deref() == Some(&record.kind);
    let timestamp = format_rfc3339(record.at);
    json!({
        "id": event_id(record.event_id),
        "type": event_type,
        "timestamp": timestamp,
        "data": {
            "message_id": record.message_id,
            "recipient": record.recipient,
            "from": record.sender,
            "subject": record.subject,
            "tags": json_or(&record.tags, json!([])),
            "metadata": json_or(&record.metadata, json!({})),
            "smtp_code": if current { json!(record.smtp_code) } else { Value::Null },
            "enhanced_status": if current { json!(record.enhanced_status) } else { Value::Null },
            "reply": if record.recipient.is_some() { json!(record.detail) } else { Value::Null },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, recipient_status: &str) -> EventRecord {
        EventRecord {
            event_id: 42,
            message_id: "m1".into(),
            at: 1_700_000_000_000,
            kind: kind.into(),
            recipient: Some("ann@example.test".into()),
            detail: Some("4.2.0 mailbox busy".into()),
            sender: "shop@example.test".into(),
            subject: "Hello".into(),
            tags: r#"["welcome"]"#.into(),
            metadata: r#"{"user":7}"#.into(),
            smtp_code: Some(250),
            enhanced_status: Some("2.0.0".into()),
            recipient_status: Some(recipient_status.into()),
        }
    }

    #[test]
    fn a_payload_gives_the_code_only_while_it_is_the_events() {
        let now = payload("message.deferred", &record("deferred", "deferred"));
        assert_eq!(now["id"], "evt_42");
        assert_eq!(now["type"], "message.deferred");
        assert!(
            now["timestamp"]
                .as_str()
                .unwrap()
                .starts_with("2023-11-14T22:13:20")
        );
        assert_eq!(now["data"]["tags"], json!(["welcome"]));
        assert_eq!(now["data"]["metadata"]["user"], 7);
        assert_eq!(now["data"]["smtp_code"], 250);
        assert_eq!(now["data"]["reply"], "4.2.0 mailbox busy");
        let later = payload("message.deferred", &record("deferred", "delivered"));
        assert_eq!(later["data"]["smtp_code"], Value::Null);
        assert_eq!(later["data"]["reply"], "4.2.0 mailbox busy");
    }

    #[test]
    fn retry_errors_name_the_webhook_keys() {
        let error = retry_policy("5s,x", "3d").unwrap_err();
        assert!(error.starts_with("HERALD_WEBHOOK_RETRY"), "{error}");
        assert!(
            retry_policy("5s", "forever")
                .unwrap_err()
                .starts_with("HERALD_WEBHOOK_MAX_AGE")
        );
    }
}
