//! The durable store: messages, recipients, events and shared blobs.
//!
//! Everything Herald accepts lives here before the API answers (DESIGN.md invariant 1), and the queue lives here
//! too: in memory there are only bounded batches (invariant 6). [`SqliteStore`] is the embedded default;
//! PostgreSQL (for several nodes) implements the same operations with its own migrations.

mod postgres;
pub mod raw;
mod reports;
mod rows;
pub mod rules;
mod search;
mod sqlite;
mod template_sources;
mod types;
pub mod webhooks;

use std::{collections::HashMap, sync::Arc, time::Duration};

pub use postgres::{PgStore, Upkeep};
pub use raw::{RawSegment, SharedBlob};
pub use reports::*;
pub use rules::{EVENT_INTERRUPTED, EVENT_STALE_OUTCOME, message_status_from};
pub use search::{fold, index_terms, query_terms};
pub use sqlite::{
    IndexLag, SqliteError, SqliteOptions, SqliteStore, SyncProfile, WriterPhase, WriterProfile,
};
use tokio::sync::Notify;
pub use types::*;
pub use webhooks::{
    ClaimedDelivery, DeliveryNext, DeliveryOutcome, DeliveryView, EventRecord, WebhookChange,
    WebhookRow,
};

use crate::clock::Clock;

/// Tells the delivery engine that new work may be due: after an accept in this process, or (PostgreSQL) a
/// `NOTIFY` from any node. A wake-up with nothing to do costs one empty claim.
#[derive(Debug, Clone, Default)]
pub struct WorkSignal(Arc<Notify>);

impl WorkSignal {
    pub fn notify(&self) {
        self.0.notify_one();
    }

    pub async fn notified(&self) {
        self.0.notified().await;
    }
}

/// The store Herald runs on, chosen by `HERALD_DATABASE_URL`.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Calls the same method on whichever store this is.
macro_rules! delegate {
    ($(pub async fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)+) => {
        $(
            pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                match self {
                    Store::Sqlite(store) => store.$name($($arg),*).await,
                    Store::Postgres(store) => store.$name($($arg),*).await,
                }
            }
        )+
    };
}

impl Store {
    /// Opens `sqlite://PATH` or `postgres://…`, applying migrations.
    pub async fn open(url: &str, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PgStore::open(url, clock).await?))
        } else if url.starts_with("sqlite:") {
            let options = SqliteOptions::from_url(url).map_err(StoreError::InvalidUrl)?;
            Ok(Store::Sqlite(SqliteStore::open(options, clock).await?))
        } else {
            Err(StoreError::InvalidUrl(format!(
                "unsupported database URL (expected sqlite://PATH or postgres://user@host:port/db): {}",
                url.split('@').next_back().unwrap_or(url)
            )))
        }
    }

    delegate! {
        pub async fn claim(&self, owner: &str, lease: Duration, limit: u32) -> Result<Vec<ClaimedMessage>, StoreError>;
        pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError>;
        pub async fn release_leases(&self, owner: &str) -> Result<u64, StoreError>;
        pub async fn renew_leases(&self, owner: &str, lease: Duration, ids: &[String]) -> Result<u64, StoreError>;
        pub async fn join(&self, node: &NodeInfo) -> Result<Membership, StoreError>;
        pub async fn heartbeat(&self, node: &NodeInfo, lease: Duration) -> Result<HeartbeatReport, StoreError>;
        pub async fn leave(&self, node: &NodeInfo) -> Result<(), StoreError>;
        pub async fn prune_raw(&self, finished_before: Millis) -> Result<u64, StoreError>;
        pub async fn raw(&self, id: &str) -> Result<Option<Vec<RawSegment>>, StoreError>;
        pub async fn message(&self, id: &str) -> Result<Option<MessageView>, StoreError>;
        pub async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError>;
        pub async fn counts(&self) -> Result<HashMap<MessageStatus, u64>, StoreError>;
        pub async fn activity(&self, since: Millis, bucket_ms: i64) -> Result<Vec<ActivityBucket>, StoreError>;
        pub async fn prune_activity(&self, before: Millis) -> Result<u64, StoreError>;
        pub async fn append_event(&self, id: &str, kind: &str, detail: Option<String>) -> Result<bool, StoreError>;
        pub async fn next_due(&self) -> Result<Option<Millis>, StoreError>;
        pub async fn ping(&self) -> Result<(), StoreError>;
        pub async fn put_template(&self, template: &TemplateSource, unsubscribe_list: Option<&str>) -> Result<(), StoreError>;
        pub async fn template(&self, name: &str) -> Result<Option<StoredTemplate>, StoreError>;
        pub async fn templates(&self) -> Result<Vec<StoredTemplate>, StoreError>;
        pub async fn delete_template(&self, name: &str) -> Result<bool, StoreError>;
        pub async fn create_token(&self, name: &str, hash: &[u8; 32]) -> Result<bool, StoreError>;
        pub async fn token_hash_exists(&self, hash: &[u8; 32]) -> Result<bool, StoreError>;
        pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError>;
        pub async fn revoke_token(&self, name: &str) -> Result<bool, StoreError>;
        pub async fn create_session(&self, hash: &[u8; 32], token_hash: &[u8; 32], expires_at: Millis) -> Result<(), StoreError>;
        pub async fn session(&self, hash: &[u8; 32]) -> Result<Option<SessionInfo>, StoreError>;
        pub async fn delete_session(&self, hash: &[u8; 32]) -> Result<bool, StoreError>;
        // DKIM keys (issue 13): store/sqlite/dkim.rs, store/postgres/dkim.rs.
        pub async fn put_dkim_key(&self, key: &crate::dkim::StoredKey) -> Result<bool, StoreError>;
        pub async fn dkim_keys(&self) -> Result<Vec<crate::dkim::StoredKey>, StoreError>;
        pub async fn retire_dkim_keys(&self, domain: &str, keep: &str, at: Millis) -> Result<u64, StoreError>;
        pub async fn delete_dkim_key(&self, domain: &str, selector: &str) -> Result<bool, StoreError>;
        // The suppression list (issue 12): store/sqlite/suppressions.rs, store/postgres/suppressions.rs.
        pub async fn suppress(&self, entries: Vec<NewSuppression>) -> Result<u64, StoreError>;
        pub async fn suppressions_of(&self, address: &str) -> Result<Vec<Suppression>, StoreError>;
        pub async fn suppressions(&self, query: &SuppressionQuery) -> Result<SuppressionPage, StoreError>;
        pub async fn delete_suppression(&self, address: &str, scope: Option<&str>) -> Result<u64, StoreError>;
        pub async fn prune_expired_suppressions(&self, now: Millis) -> Result<u64, StoreError>;
        pub async fn store_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;
        pub async fn unsubscribe_target(&self, id: &str) -> Result<Option<(String, Option<String>)>, StoreError>;
        // Bounce and complaint intake (issue 12): store/sqlite/reports.rs, store/postgres/reports.rs.
        pub async fn apply_report(&self, update: &ReportUpdate) -> Result<ReportApplied, StoreError>;
        pub async fn keep_inbound(&self, mail: &InboundMail) -> Result<(), StoreError>;
        pub async fn inbound(&self, before: Option<&str>, limit: u32) -> Result<InboundPage, StoreError>;
        pub async fn inbound_mail(&self, id: &str) -> Result<Option<InboundMail>, StoreError>;
        pub async fn prune_inbound(&self, received_before: Millis) -> Result<u64, StoreError>;
        // Webhooks (issue 12): store/sqlite/webhooks.rs, store/postgres/webhooks.rs.
        pub async fn create_webhook(&self, row: &WebhookRow) -> Result<(), StoreError>;
        pub async fn webhooks(&self) -> Result<Vec<WebhookRow>, StoreError>;
        pub async fn webhook(&self, id: &str) -> Result<Option<WebhookRow>, StoreError>;
        pub async fn update_webhook(&self, id: &str, change: &WebhookChange, now: Millis) -> Result<bool, StoreError>;
        pub async fn rotate_webhook_secret(&self, id: &str, secret: &[u8], previous: &[u8], sealed: bool, until: Millis, now: Millis) -> Result<bool, StoreError>;
        pub async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError>;
        pub async fn claim_webhook_deliveries(&self, webhook_id: &str, owner: &str, lease: Duration, limit: u32) -> Result<Vec<ClaimedDelivery>, StoreError>;
        pub async fn record_webhook_deliveries(&self, owner: &str, outcomes: Vec<DeliveryOutcome>, disable_after: Duration) -> Result<Vec<String>, StoreError>;
        pub async fn webhook_event(&self, event_id: i64) -> Result<Option<EventRecord>, StoreError>;
        pub async fn webhook_deliveries(&self, webhook_id: &str, limit: u32) -> Result<Vec<DeliveryView>, StoreError>;
        pub async fn next_webhook_due(&self, webhook_id: &str) -> Result<Option<Millis>, StoreError>;
        pub async fn redeliver_webhook(&self, webhook_id: &str, delivery_id: i64, now: Millis) -> Result<bool, StoreError>;
    }

    /// Stores messages durably (see [`SqliteStore::accept`]); counts what was new for `/metrics`.
    pub async fn accept(&self, messages: Vec<NewMessage>) -> Result<Vec<Accepted>, StoreError> {
        let accepted = match self {
            Store::Sqlite(store) => store.accept(messages).await?,
            Store::Postgres(store) => store.accept(messages).await?,
        };
        let new = accepted
            .iter()
            .filter(|a| matches!(a, Accepted::New { .. }))
            .count();
        metrics::counter!("herald_messages_accepted_total").increment(new as u64);
        metrics::counter!("herald_idempotent_replays_total")
            .increment((accepted.len() - new) as u64);
        Ok(accepted)
    }

    /// Records attempt outcomes; counts attempts and per-recipient results for `/metrics`.
    pub async fn record(
        &self,
        owner: &str,
        outcomes: Vec<AttemptOutcome>,
    ) -> Result<(), StoreError> {
        let attempts = outcomes.iter().filter(|o| o.counts_attempt).count();
        let mut by_status: HashMap<RecipientStatus, u64> = HashMap::new();
        for result in outcomes.iter().flat_map(|o| &o.recipients) {
            *by_status.entry(result.status).or_default() += 1;
        }
        match self {
            Store::Sqlite(store) => store.record(owner, outcomes).await?,
            Store::Postgres(store) => store.record(owner, outcomes).await?,
        }
        metrics::counter!("herald_delivery_attempts_total").increment(attempts as u64);
        for (status, n) in by_status {
            metrics::counter!("herald_recipient_results_total", "status" => status.as_str())
                .increment(n);
        }
        Ok(())
    }

    /// Store upkeep `herald serve` runs every minute: on PostgreSQL, the counters vacuumed and the tables'
    /// planner statistics refreshed as they grow, where autovacuum may be off (see [`PgStore::upkeep`]); SQLite
    /// needs none.
    pub async fn maintain(&self) -> Result<Upkeep, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(Upkeep::default()),
            Store::Postgres(store) => store.upkeep().await,
        }
    }

    /// How far full-text search is behind the stored messages. SQLite indexes beside the accept commit (see
    /// `store/sqlite/indexer.rs`); PostgreSQL writes each message's `tsvector` in its accept transaction, so
    /// nothing is ever pending there.
    pub fn search_index_lag(&self) -> IndexLag {
        match self {
            Store::Sqlite(store) => store.search_index_lag(),
            Store::Postgres(_) => IndexLag::default(),
        }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        match self {
            Store::Sqlite(store) => store.clock(),
            Store::Postgres(store) => store.clock(),
        }
    }

    pub fn work_signal(&self) -> &WorkSignal {
        match self {
            Store::Sqlite(store) => store.work_signal(),
            Store::Postgres(store) => store.work_signal(),
        }
    }
}

/// A node's place among the nodes serving a database, from [`Store::join`] until it is dropped.
///
/// On SQLite it holds the exclusive lock on `<database>.lock`: one serving process per file, so a second
/// `herald serve` on the same file refuses to start instead of racing the first one's leases. (Other commands,
/// such as `herald token`, open the database without it.) On PostgreSQL nodes share the database and the
/// membership is the node's heartbeat row.
#[derive(Debug)]
pub struct Membership {
    /// Held for the node's life; the OS releases it when the process dies, however it dies.
    _lock: Option<std::fs::File>,
    /// Messages found `sending` at start on SQLite: the previous process died delivering them. They are due
    /// again now, their attempt recorded as interrupted.
    pub recovered: u64,
}

/// What went wrong in the store, in the caller's terms. A variant's message says what failed; the cause it
/// wraps is its `source()`, so a chain printer (`{:#}` at the top, `error = &e as &dyn Error` in logs) shows
/// each cause once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {url}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot open the database {url} for writing")]
    OpenWriter {
        url: String,
        #[source]
        source: SqliteError,
    },
    #[error("cannot start the store's thread for {url}")]
    Thread {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Shared, because one failed group commit answers every caller in the group with it.
    #[error("database error")]
    Database(#[source] Arc<sqlx::Error>),
    #[error("SQLite write failed")]
    Sqlite(#[source] SqliteError),
    /// The SQLite WAL could not be synced: the write may not survive a crash, so it is not reported done.
    #[error("syncing the database to the disk failed (restart herald)")]
    Sync(#[source] Arc<std::io::Error>),
    /// A row holds a value this code cannot read (a status it does not know, say): refused rather than
    /// guessed at.
    #[error(transparent)]
    Corrupt(Unreadable),
    #[error("stored message {id} is corrupt: {reason}")]
    CorruptBody { id: String, reason: String },
    #[error("the store is shutting down")]
    Closed,
    #[error("invalid search: {0}")]
    InvalidQuery(String),
    #[error("{0}")]
    InvalidUrl(String),
    #[error(
        "another herald serve ({holder}) is serving the SQLite database {path}: one process per SQLite file \
         (stop it first, or use PostgreSQL for several nodes)"
    )]
    Locked { path: String, holder: String },
    #[error("cannot use the lock file {path}")]
    LockFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Database(Arc::new(error))
    }
}

impl From<Unreadable> for StoreError {
    fn from(error: Unreadable) -> Self {
        StoreError::Corrupt(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of an error and its sources, top first, as a chain printer shows them.
    fn chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
        std::iter::successors(Some(error), |e| e.source())
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn each_cause_is_printed_once_in_the_chain() {
        let written = StoreError::Sqlite(SqliteError {
            code: 5,
            message: "database is locked".into(),
        });
        assert_eq!(
            chain(&written),
            ["SQLite write failed", "sqlite error 5: database is locked"]
        );
        let read = StoreError::from(sqlx::Error::Protocol("connection reset".into()));
        let levels = chain(&read);
        assert_eq!(levels.len(), 2, "{levels:?}");
        assert_eq!(levels[0], "database error");
        assert!(levels[1].ends_with("connection reset"), "{levels:?}");
        let corrupt = StoreError::from(Unreadable {
            table: "messages",
            column: "status",
            value: "bounced".into(),
        });
        assert_eq!(
            chain(&corrupt),
            [r#"unreadable value "bounced" in messages.status"#]
        );
    }
}
