//! The durable store: messages, recipients, events and shared blobs.
//!
//! Everything Herald accepts lives here before the API answers (DESIGN.md invariant 1), and the queue lives here
//! too: in memory there are only bounded batches (invariant 6). [`SqliteStore`] is the embedded default;
//! PostgreSQL (for several nodes) implements the same operations with its own migrations.

pub mod raw;
mod sqlite;
mod types;

pub use raw::{RawSegment, SharedBlob};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use types::*;

/// What went wrong in the store, in the caller's terms.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored message {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("the store is shutting down")]
    Closed,
    #[error("invalid search: {0}")]
    InvalidQuery(String),
}
