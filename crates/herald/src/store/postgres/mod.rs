//! The store on PostgreSQL, for several `herald serve` nodes on one database.
//!
//! Nodes share nothing but the database: claims use `FOR UPDATE SKIP LOCKED` so two nodes never take the same
//! message, leases make a dead node's messages due again, and `NOTIFY herald_work` (sent in the accepting
//! transaction, so only after its commit) wakes idle nodes at once. Accepts are grouped into one transaction
//! per batch of waiting requests, as on SQLite.
//!
//! This file connects and holds what every concern shares; the concerns sit beside it, named as their SQLite
//! counterparts in `store/sqlite/`: `accept` (the batching task), `queue` (claim, record, cancel, leases),
//! `archive` (bodies, one message, timeline lines), `search`, `activity` (status counters and per-minute
//! activity), `templates`, `auth` (API tokens, dashboard sessions), `nodes` (heartbeats, dead nodes) and
//! `upkeep` (statistics and counter vacuum where autovacuum may be off).

mod accept;
mod activity;
mod archive;
mod auth;
// DKIM keys (issue 13).
mod dkim;
// Bounce and complaint intake (issue 12).
mod nodes;
mod queue;
mod reports;
mod search;
// The suppression list (issue 12).
mod suppressions;
mod templates;
mod upkeep;
// Webhooks (issue 12).
mod webhooks;

use std::{borrow::Cow, sync::Arc, time::Duration};

use sqlx::{
    PgPool, Postgres, SqlSafeStr as _, Transaction,
    migrate::{Migration, MigrationType, Migrator},
    postgres::{PgListener, PgPoolOptions},
};
use tokio::sync::mpsc;

use self::accept::{AcceptRequest, batch_accepts};
pub use self::upkeep::Upkeep;
use super::{Millis, StoreError, WorkSignal, rules::EventLine};
use crate::clock::Clock;

pub(super) const CHANNEL: &str = "herald_work";

pub(super) fn migrator() -> Migrator {
    let migration = |version, name, sql: &'static str| {
        Migration::new(
            version,
            Cow::Borrowed(name),
            MigrationType::Simple,
            sqlx::AssertSqlSafe(sql).into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        migration(
            1,
            "init",
            include_str!("../../../migrations/postgres/0001_init.sql"),
        ),
        migration(
            2,
            "dashboard",
            include_str!("../../../migrations/postgres/0002_dashboard.sql"),
        ),
        migration(
            3,
            "dashboard sessions",
            include_str!("../../../migrations/postgres/0003_dashboard_sessions.sql"),
        ),
        migration(
            4,
            "nodes",
            include_str!("../../../migrations/postgres/0004_nodes.sql"),
        ),
        migration(
            5,
            "lease index",
            include_str!("../../../migrations/postgres/0005_lease_index.sql"),
        ),
        // Issue 11, numbered after the issue as issue 13 does.
        migration(
            11,
            "message source",
            include_str!("../../../migrations/postgres/0011_message_source.sql"),
        ),
        // Issue 13; numbered after the issue so that migrations added meanwhile by other work do not collide.
        migration(
            13,
            "dkim keys",
            include_str!("../../../migrations/postgres/0013_dkim_keys.sql"),
        ),
        // Issue 12 (numbered 14: issues 11 and 13 took their numbers first).
        migration(
            14,
            "webhooks",
            include_str!("../../../migrations/postgres/0014_webhooks.sql"),
        ),
        // Issue 12, part B (suppression list, one-click unsubscribe); numbered as assigned to it.
        migration(
            15,
            "suppressions",
            include_str!("../../../migrations/postgres/0015_suppressions.sql"),
        ),
        // Issue 12, part C (bounce and complaint intake).
        migration(
            16,
            "inbound",
            include_str!("../../../migrations/postgres/0016_inbound.sql"),
        ),
        // Issue 12: one-click unsubscribe on stored templates.
        migration(
            18,
            "template unsubscribe",
            include_str!("../../../migrations/postgres/0018_template_unsubscribe.sql"),
        ),
        // Issue 12: the index the pruning of expired suppressions reads.
        migration(
            19,
            "suppression expiry",
            include_str!("../../../migrations/postgres/0019_suppression_expiry.sql"),
        ),
    ])
}

/// The PostgreSQL store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    accepts: mpsc::Sender<AcceptRequest>,
    clock: Arc<dyn Clock>,
    work: WorkSignal,
}

impl PgStore {
    /// Connects, applies migrations, starts the accept batcher and the LISTEN task.
    pub async fn open(url: &str, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            url: redact(url),
            source,
        };
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await
            .map_err(open_error)?;
        migrator().run(&pool).await?;
        let work = WorkSignal::default();
        let mut listener = PgListener::connect_with(&pool).await.map_err(open_error)?;
        listener.listen(CHANNEL).await.map_err(open_error)?;
        let signal = work.clone();
        tokio::spawn(async move {
            // Any node's accept (or a lease given back) wakes this node's engine. On a lost connection
            // PgListener reconnects by itself; the engine's idle poll covers the gap.
            loop {
                match listener.recv().await {
                    Ok(_) => signal.notify(),
                    Err(error) => {
                        tracing::warn!(%error, "LISTEN connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let (accepts, requests) = mpsc::channel(1_024);
        tokio::spawn(batch_accepts(pool.clone(), clock.clone(), requests));
        Ok(Self {
            pool,
            accepts,
            clock,
            work,
        })
    }

    pub fn work_signal(&self) -> &WorkSignal {
        &self.work
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Never show a password from the URL in an error.
pub(super) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Writes timeline lines (see `rules` for what each change writes), all at `now`, in one statement.
pub(super) async fn insert_events<'a>(
    tx: &mut Transaction<'_, Postgres>,
    now: Millis,
    events: impl IntoIterator<Item = (&'a str, EventLine<'a>)>,
) -> Result<(), sqlx::Error> {
    let (mut ids, mut ats, mut kinds, mut recipients, mut details) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (id, line) in events {
        ids.push(id);
        ats.push(now);
        kinds.push(line.kind);
        recipients.push(line.recipient);
        details.push(line.detail);
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO events (message_id, at, type, recipient, detail)
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])",
    )
    .bind(ids)
    .bind(ats)
    .bind(kinds)
    .bind(recipients)
    .bind(details)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
