//! The values that cross the store boundary.

use std::{fmt, str::FromStr};

use super::raw::RawSegment;

/// The store's one time unit, the same in both dialects; defined with the clock that tells it.
pub use crate::clock::Millis;

/// A stored value this code cannot read: where it is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable value {value:?} in {table}.{column}")]
pub struct Unreadable {
    pub table: &'static str,
    pub column: &'static str,
    pub value: String,
}

impl Unreadable {
    /// Parses the text of `table.column` as one of the store's enums.
    pub fn parse<T: FromStr>(
        table: &'static str,
        column: &'static str,
        text: &str,
    ) -> Result<T, Self> {
        text.parse().map_err(|_| Unreadable {
            table,
            column,
            value: text.to_owned(),
        })
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        /// As its text, the same as the column stores and the API shows.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?} (expected one of: {})",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum! {
    /// Where a message came from (`source` in the API).
    MessageSource {
        Api => "api",
        Smtp => "smtp",
    }
}

impl Default for MessageSource {
    /// Messages made by the HTTP API, the CLI and the dashboard.
    fn default() -> Self {
        MessageSource::Api
    }
}

string_enum! {
    /// Where a message is in its life. `Delivered`, `Failed` and `Cancelled` are final.
    MessageStatus {
        Scheduled => "scheduled",
        Queued => "queued",
        Sending => "sending",
        Deferred => "deferred",
        Delivered => "delivered",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

string_enum! {
    /// Where one recipient of a message is. A message's status is derived from its recipients'. `Suppressed`
    /// (issue 12) is set at accept for an address on the suppression list: it is never sent to.
    RecipientStatus {
        Pending => "pending",
        Deferred => "deferred",
        Delivered => "delivered",
        Failed => "failed",
        Cancelled => "cancelled",
        Suppressed => "suppressed",
        // Issue 12: a recipient the relay accepted, then reported back by an asynchronous DSN (bounced) or
        // a complaint (ARF) from its mailbox provider.
        Bounced => "bounced",
        Complained => "complained",
    }
}

string_enum! {
    /// Why an address is on the suppression list (issue 12).
    SuppressionReason {
        HardBounce => "hard_bounce",
        Complaint => "complaint",
        Unsubscribe => "unsubscribe",
        Manual => "manual",
    }
}

string_enum! {
    /// How a recipient was addressed; `bcc` is in the envelope but never in the headers.
    RecipientKind {
        To => "to",
        Cc => "cc",
        Bcc => "bcc",
    }
}

impl MessageStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MessageStatus::Delivered | MessageStatus::Failed | MessageStatus::Cancelled
        )
    }

    /// Whether `cancel` may still stop it: not yet being sent, not finished.
    pub fn is_cancellable(self) -> bool {
        matches!(
            self,
            MessageStatus::Scheduled | MessageStatus::Queued | MessageStatus::Deferred
        )
    }
}

impl RecipientStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RecipientStatus::Delivered
                | RecipientStatus::Failed
                | RecipientStatus::Cancelled
                | RecipientStatus::Suppressed
                | RecipientStatus::Bounced
                | RecipientStatus::Complained
        )
    }
}

/// One envelope recipient of a new message.
#[derive(Debug, Clone)]
pub struct NewRecipient {
    pub address: String,
    pub kind: RecipientKind,
}

/// A composed message ready to be stored: the bytes are final, every attempt sends exactly these.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: String,
    pub sender: String,
    pub subject: String,
    pub recipients: Vec<NewRecipient>,
    /// Text indexed for full-text search (the text body, or text made from the HTML).
    pub search_text: String,
    pub raw: Vec<RawSegment>,
    pub send_at: Option<Millis>,
    pub idempotency_key: Option<String>,
    pub batch_id: Option<String>,
    pub tags: Vec<String>,
    pub metadata: serde_json::Value,
    /// The HTTP API (and CLI, dashboard) or SMTP submission.
    pub source: MessageSource,
    /// `ignore_suppressions` (issue 12): sent to every recipient, suppressed or not (password resets and
    /// other mail the recipient asked for).
    pub ignore_suppressions: bool,
    /// The `unsubscribe.list` of the message: its List-Unsubscribe link suppresses the recipient for this
    /// list, and suppressions scoped to it apply to the message (as do those scoped to one of its tags).
    pub unsubscribe_list: Option<String>,
}

/// What `accept` did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored now, with this status (queued or scheduled; failed when every recipient was suppressed), and
    /// the recipient addresses found on the suppression list (never sent to).
    New {
        id: String,
        status: MessageStatus,
        suppressed: Vec<String>,
    },
    /// The idempotency key was seen before: nothing new was queued; this is the message it made.
    Existing { id: String, status: MessageStatus },
}

impl Accepted {
    pub fn id(&self) -> &str {
        match self {
            Accepted::New { id, .. } | Accepted::Existing { id, .. } => id,
        }
    }

    pub fn status(&self) -> MessageStatus {
        match self {
            Accepted::New { status, .. } | Accepted::Existing { status, .. } => *status,
        }
    }

    /// The recipients suppressed at accept; empty for [`Accepted::Existing`] (the message resource tells).
    pub fn suppressed(&self) -> &[String] {
        match self {
            Accepted::New { suppressed, .. } => suppressed,
            Accepted::Existing { .. } => &[],
        }
    }
}

/// A message taken from the queue by one worker, under a lease.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    pub id: String,
    pub sender: String,
    pub created_at: Millis,
    /// Attempts before this one.
    pub attempts: u32,
    /// Only the recipients still to be tried (pending or deferred); delivered and failed ones are never resent.
    pub recipients: Vec<ClaimedRecipient>,
    pub raw: Vec<RawSegment>,
}

#[derive(Debug, Clone)]
pub struct ClaimedRecipient {
    pub position: u32,
    pub address: String,
}

/// The server's answer for one recipient (or the reason there was none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientResult {
    pub position: u32,
    /// For the timeline; the position is what identifies the row.
    pub address: String,
    pub status: RecipientStatus,
    pub smtp_code: Option<u16>,
    pub enhanced_status: Option<String>,
    pub reply: Option<String>,
}

/// The end of one delivery attempt of a claimed message.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub id: String,
    pub recipients: Vec<RecipientResult>,
    /// When to try the deferred recipients again; `None` when none is deferred or the message gave up.
    pub retry_at: Option<Millis>,
    /// A line for the timeline (`delivered to 2 of 3 recipients`, the relay's error …).
    pub detail: String,
    /// Whether this counts as an attempt of the message. A relay found down does not: the message waits for
    /// the relay instead of burning its retries.
    pub counts_attempt: bool,
}

/// One line of a message's timeline. Its kind stays text: besides the store's own kinds (see `rules`), callers
/// add theirs (`resent`, through `append_event`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    pub at: Millis,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecipientView {
    pub address: String,
    pub kind: RecipientKind,
    pub status: RecipientStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enhanced_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_reply: Option<String>,
}

/// Everything the API shows about one message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MessageView {
    pub id: String,
    pub status: MessageStatus,
    pub created_at: Millis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_at: Option<Millis>,
    pub from: String,
    pub subject: String,
    pub attempts: u32,
    pub batch_id: Option<String>,
    pub tags: serde_json::Value,
    pub metadata: serde_json::Value,
    pub raw_size: u64,
    /// `api` or `smtp` ([`MessageSource`]).
    pub source: String,
    pub recipients: Vec<RecipientView>,
    pub events: Vec<Event>,
}

/// One row of a search result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageSummary {
    pub id: String,
    pub status: MessageStatus,
    pub created_at: Millis,
    pub from: String,
    pub subject: String,
    pub attempts: u32,
    /// The first 3 recipient addresses, by position (to, cc and bcc alike).
    pub to: Vec<String>,
    pub recipient_count: u32,
}

/// How many recipient addresses a search row carries (`MessageSummary::to`).
pub const SUMMARY_RECIPIENTS: usize = 3;

/// Filters for the archive; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub status: Option<MessageStatus>,
    /// Exact recipient address.
    pub to: Option<String>,
    /// Full-text words over subject, addresses and text body.
    pub text: Option<String>,
    /// Exact tag (one of the message's `tags`).
    pub tag: Option<String>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    pub limit: u32,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    pub items: Vec<MessageSummary>,
    pub next_cursor: Option<String>,
}

/// What happened in one span of time (`Store::activity`): messages accepted, and messages that became
/// delivered, failed or deferred. Counted in real (wall-clock) time as the changes were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ActivityBucket {
    /// Start of the span, Unix milliseconds, a multiple of the bucket width.
    pub start: Millis,
    pub accepted: u64,
    pub delivered: u64,
    pub failed: u64,
    pub deferred: u64,
}

/// The granularity activity is kept at: a bucket width must be a multiple of it.
pub const ACTIVITY_MINUTE: i64 = 60_000;

/// How long per-minute activity is kept (pruned by the hourly housekeeping).
pub const ACTIVITY_RETENTION: std::time::Duration = std::time::Duration::from_secs(8 * 24 * 3_600);

/// What `cancel` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    /// Too late: already sending or finished; carries the status it has.
    NotCancellable(MessageStatus),
    NotFound,
}

pub use crate::templates::TemplateSource;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTemplate {
    pub source: TemplateSource,
    pub updated_at: Millis,
    /// The unsubscribe list of the messages made from this template (issue 12): each gets the one-click
    /// List-Unsubscribe headers for it, unless its request gives its own `unsubscribe` or turns it off.
    pub unsubscribe_list: Option<String>,
}

/// An API token's public side: the secret itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub created_at: Millis,
}

/// A dashboard session: which token it was opened with (its hash) and until when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub token_hash: [u8; 32],
    pub expires_at: Millis,
}

/// A `herald serve` process delivering from the database, as its heartbeat row names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name in leases (`lease_owner`).
    pub id: String,
    pub host: String,
    pub pid: u32,
}

/// What one heartbeat saw (see [`super::Store::heartbeat`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatReport {
    /// Nodes whose heartbeat is younger than one lease, this one included.
    pub live_nodes: u32,
    /// Nodes found dead (heartbeat older than one lease) and removed by this heartbeat.
    pub dead_nodes: Vec<String>,
    /// Messages those nodes were delivering, due again now (their attempt recorded as interrupted).
    pub released: u64,
}

/// An entry of the suppression list (issue 12): mail to `address` (within `scope`, if any) is not sent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Suppression {
    /// Lowercased ([`super::rules::suppression_address`]).
    pub address: String,
    /// A tag or unsubscribe list; `None`: every message.
    pub scope: Option<String>,
    pub reason: SuppressionReason,
    /// The message whose outcome (bounce, complaint, unsubscribe link) added it.
    pub source_message: Option<String>,
    pub created_at: Millis,
    /// From then on it no longer applies; `None`: never expires.
    pub expires_at: Option<Millis>,
}

/// A page of the suppression list, ordered by address and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionPage {
    pub items: Vec<Suppression>,
    /// Give it as `cursor` for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// Which part of the suppression list to read.
#[derive(Debug, Clone, Default)]
pub struct SuppressionQuery {
    /// Addresses containing this text (case-insensitive).
    pub contains: Option<String>,
    pub limit: u32,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// An entry to put on the suppression list ([`super::Store::suppress`]). An entry already there for the same
/// address and scope takes the new reason and source, and keeps the later expiry (none beats any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSuppression {
    /// As given; the store keeps it in [`super::rules::suppression_address`] form.
    pub address: String,
    pub scope: Option<String>,
    pub reason: SuppressionReason,
    /// The message it comes from: its timeline gets a `suppressed` line in the same transaction.
    pub source_message: Option<String>,
    pub expires_at: Option<Millis>,
}
