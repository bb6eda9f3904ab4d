//! Webhooks in the store (issue 12), once for both dialects: the values crossing the boundary, the rows read
//! into them, and the timeline kinds that are webhook events.
//!
//! The outbox is `webhook_deliveries`, one row per endpoint and event, written by a trigger on `events`
//! (migrations `0014_webhooks.sql`): every state change already writes its timeline line in its own
//! transaction, so the delivery row commits or vanishes with the change it reports. A row is claimed under a
//! lease like a message: `next_attempt_at` is its due time, then its lease expiry while a node sends it.

use sqlx::{ColumnIndex, Decode, Type};

use super::{Millis, Unreadable, rows::HeraldRow};

/// Every webhook event type, in the order the API documents them.
pub const EVENT_TYPES: &[&str] = &[
    "message.accepted",
    "message.delivered",
    "message.deferred",
    "message.failed",
    "message.bounced",
    "message.complained",
    "message.cancelled",
    "recipient.suppressed",
];

/// The webhook event a timeline line is, if any: the rule the migrations' trigger applies in SQL (checked
/// against them by the test below). `per_recipient`: the line names a recipient.
pub fn event_type(kind: &str, per_recipient: bool) -> Option<&'static str> {
    Some(match (kind, per_recipient) {
        ("queued" | "scheduled", false) => "message.accepted",
        ("cancelled", false) => "message.cancelled",
        ("delivered", true) => "message.delivered",
        ("deferred", true) => "message.deferred",
        ("failed", true) => "message.failed",
        ("bounced", true) => "message.bounced",
        ("complained", true) => "message.complained",
        ("suppressed", true) => "recipient.suppressed",
        _ => return None,
    })
}

/// The `events` column's form of a filter: `,a,b,` (so SQL finds `,a,` in it), or `''` for every type.
pub fn events_column(filter: &[String]) -> String {
    if filter.is_empty() {
        String::new()
    } else {
        format!(",{},", filter.join(","))
    }
}

fn events_from_column(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A webhook endpoint as stored. The secrets are the signing keys' bytes, sealed when `sealed`.
#[derive(Clone)]
pub struct WebhookRow {
    pub id: String,
    pub url: String,
    /// Empty: every event type.
    pub events: Vec<String>,
    pub description: String,
    pub enabled: bool,
    pub secret: Vec<u8>,
    pub sealed: bool,
    pub previous_secret: Option<Vec<u8>>,
    pub previous_until: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub failing_since: Option<Millis>,
    pub disabled_reason: Option<String>,
}

impl std::fmt::Debug for WebhookRow {
    // The signing keys stay out of logs, even sealed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRow")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("enabled", &self.enabled)
            .field("failing_since", &self.failing_since)
            .finish_non_exhaustive()
    }
}

/// The columns [`webhook`] reads, in its order (PostgreSQL casts its booleans to bigint).
pub(super) const WEBHOOK_COLUMNS: &str = "id, url, events, description, enabled, secret, sealed, previous_secret, \
     previous_until, created_at, updated_at, failing_since, disabled_reason";

/// A row of [`WEBHOOK_COLUMNS`].
pub(super) fn webhook<R: HeraldRow>(row: &R) -> WebhookRow
where
    usize: ColumnIndex<R>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
{
    WebhookRow {
        id: row.text(0),
        url: row.text(1),
        events: events_from_column(&row.text(2)),
        description: row.text(3),
        enabled: row.int(4) != 0,
        secret: row.get(5),
        sealed: row.int(6) != 0,
        previous_secret: row.get(7),
        previous_until: row.opt_int(8),
        created_at: row.int(9),
        updated_at: row.int(10),
        failing_since: row.opt_int(11),
        disabled_reason: row.opt_text(12),
    }
}

/// What a change to an endpoint sets (`None`: leave as it is).
#[derive(Debug, Clone, Default)]
pub struct WebhookChange {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    /// Enabling also clears the failure record, so that an endpoint put back is not disabled again at once.
    pub enabled: Option<bool>,
}

/// A delivery a node claimed: it holds the lease until its outcome is recorded or the lease runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub webhook_id: String,
    pub event_id: i64,
    pub event_type: String,
    /// Counting this one.
    pub attempts: u32,
    pub created_at: Millis,
}

/// The columns a claim returns, in [`claimed`]'s order.
pub(super) const CLAIM_RETURNING: &str =
    "id, webhook_id, event_id, event_type, attempts, created_at";

pub(super) fn claimed<R: HeraldRow>(row: &R) -> ClaimedDelivery
where
    usize: ColumnIndex<R>,
{
    ClaimedDelivery {
        id: row.int(0),
        webhook_id: row.text(1),
        event_id: row.int(2),
        event_type: row.text(3),
        attempts: row.int(4) as u32,
        created_at: row.int(5),
    }
}

/// What a payload is made of: the timeline line and its message (and recipient, for a recipient's line).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub event_id: i64,
    pub message_id: String,
    pub at: Millis,
    pub kind: String,
    pub recipient: Option<String>,
    /// The server's reply, for a recipient's line.
    pub detail: Option<String>,
    pub sender: String,
    pub subject: String,
    /// JSON, as stored.
    pub tags: String,
    pub metadata: String,
    /// The recipient row's code and enhanced status, and the status they belong to.
    pub smtp_code: Option<i64>,
    pub enhanced_status: Option<String>,
    pub recipient_status: Option<String>,
}

/// The query of one event's record (`?1`/`$1`: the event id); a recipient's line joins its row by address.
macro_rules! event_record_sql {
    ($p:literal) => {
        concat!(
            "SELECT e.id, e.message_id, e.at, e.type, e.recipient, e.detail, m.sender, m.subject, m.tags, ",
            "m.metadata, r.smtp_code, r.enhanced_status, r.status ",
            "FROM events e JOIN messages m ON m.id = e.message_id ",
            "LEFT JOIN recipients r ON r.message_id = e.message_id AND r.address = e.recipient ",
            "WHERE e.id = ",
            $p,
            " LIMIT 1"
        )
    };
}
pub(super) use event_record_sql;

pub(super) fn event_record<R: HeraldRow>(row: &R) -> EventRecord
where
    usize: ColumnIndex<R>,
{
    EventRecord {
        event_id: row.int(0),
        message_id: row.text(1),
        at: row.int(2),
        kind: row.text(3),
        recipient: row.opt_text(4),
        detail: row.opt_text(5),
        sender: row.text(6),
        subject: row.text(7),
        tags: row.text(8),
        metadata: row.text(9),
        smtp_code: row.opt_int(10),
        enhanced_status: row.opt_text(11),
        recipient_status: row.opt_text(12),
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome {
    pub id: i64,
    pub webhook_id: String,
    pub attempted_at: Millis,
    pub response_status: Option<u16>,
    pub latency_ms: i64,
    /// The start of the response body (bounded), for the dashboard.
    pub response_excerpt: Option<String>,
    /// Why it failed (timeout, refused address, status), `None` on success.
    pub error: Option<String>,
    pub next: DeliveryNext,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryNext {
    Delivered,
    RetryAt(Millis),
    /// Past the maximum age: failed for good.
    GiveUp,
}

impl DeliveryOutcome {
    pub(super) fn status(&self) -> &'static str {
        match self.next {
            DeliveryNext::Delivered => "delivered",
            DeliveryNext::RetryAt(_) => "pending",
            DeliveryNext::GiveUp => "failed",
        }
    }

    pub(super) fn next_attempt_at(&self) -> Option<Millis> {
        match self.next {
            DeliveryNext::RetryAt(at) => Some(at),
            _ => None,
        }
    }

    pub(super) fn delivered_at(&self) -> Option<Millis> {
        matches!(self.next, DeliveryNext::Delivered).then_some(self.attempted_at)
    }
}

/// The reason written on an endpoint disabled for failing (the dashboard and the API show it).
pub fn disabled_reason(failing_since: Millis) -> String {
    format!(
        "disabled automatically: every delivery failed since {}",
        crate::service::format_rfc3339(failing_since)
    )
}

/// One delivery as the API and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryView {
    pub id: i64,
    pub event_id: i64,
    pub event_type: String,
    pub status: String,
    pub attempts: u32,
    pub created_at: Millis,
    pub next_attempt_at: Option<Millis>,
    pub last_attempt_at: Option<Millis>,
    pub response_status: Option<i64>,
    pub latency_ms: Option<i64>,
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
    pub delivered_at: Option<Millis>,
}

pub(super) const DELIVERY_COLUMNS: &str = "id, event_id, event_type, status, attempts, created_at, next_attempt_at, \
     last_attempt_at, response_status, latency_ms, response_excerpt, error, delivered_at";

pub(super) fn delivery<R: HeraldRow>(row: &R) -> DeliveryView
where
    usize: ColumnIndex<R>,
{
    DeliveryView {
        id: row.int(0),
        event_id: row.int(1),
        event_type: row.text(2),
        status: row.text(3),
        attempts: row.int(4) as u32,
        created_at: row.int(5),
        next_attempt_at: row.opt_int(6),
        last_attempt_at: row.opt_int(7),
        response_status: row.opt_int(8),
        latency_ms: row.opt_int(9),
        response_excerpt: row.opt_text(10),
        error: row.opt_text(11),
        delivered_at: row.opt_int(12),
    }
}

/// A delivery row's status is one of these.
pub fn check_status(text: &str) -> Result<(), Unreadable> {
    match text {
        "pending" | "delivered" | "failed" => Ok(()),
        _ => Err(Unreadable {
            table: "webhook_deliveries",
            column: "status",
            value: text.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(kind, per recipient, type)` of each `WHEN … THEN` line of a migration's CASE.
    fn case_lines(sql: &str) -> Vec<(String, bool, String)> {
        let mut found = Vec::new();
        for line in sql
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("WHEN "))
        {
            let per_recipient = line.contains("IS NOT NULL");
            let ty = line.rsplit("THEN '").next().unwrap().trim_end_matches('\'');
            let kinds = line.split(" THEN ").next().unwrap();
            let kinds = kinds.rsplit(" type ").next().unwrap_or(kinds);
            let kinds = kinds.rsplit(" kind ").next().unwrap_or(kinds);
            for kind in kinds.split('\'').skip(1).step_by(2) {
                found.push((kind.to_owned(), per_recipient, ty.to_owned()));
            }
        }
        found
    }

    #[test]
    fn both_triggers_map_the_timeline_as_the_rust_rule_does() {
        for sql in [
            include_str!("../../migrations/sqlite/0014_webhooks.sql"),
            include_str!("../../migrations/postgres/0014_webhooks.sql"),
        ] {
            let lines = case_lines(sql);
            assert_eq!(lines.len(), 9, "{lines:?}");
            let mut types: Vec<&str> = Vec::new();
            for (kind, per_recipient, ty) in &lines {
                assert_eq!(
                    event_type(kind, *per_recipient),
                    Some(ty.as_str()),
                    "{kind}"
                );
                assert_eq!(event_type(kind, !per_recipient), None, "{kind}");
                if !types.contains(&ty.as_str()) {
                    types.push(ty);
                }
            }
            types.sort_unstable();
            let mut all = EVENT_TYPES.to_vec();
            all.sort_unstable();
            assert_eq!(types, all);
        }
        assert_eq!(event_type("sending", false), None);
        assert_eq!(event_type("attempt_delivered", false), None);
    }

    #[test]
    fn a_filter_column_round_trips() {
        assert_eq!(events_column(&[]), "");
        let filter = vec!["message.failed".to_owned(), "message.bounced".to_owned()];
        assert_eq!(events_column(&filter), ",message.failed,message.bounced,");
        assert_eq!(events_from_column(&events_column(&filter)), filter);
    }
}
