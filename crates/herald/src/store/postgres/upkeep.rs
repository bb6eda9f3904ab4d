//! Upkeep on PostgreSQL: the counters vacuumed and the tables analyzed as they grow (see `PgStore::upkeep`).

use super::PgStore;
use crate::store::StoreError;

/// Herald's tables whose statistics the upkeep keeps fresh (the counters apart: see `upkeep`).
pub(super) const UPKEPT: &[&str] = &[
    "messages",
    "recipients",
    "events",
    "message_tags",
    "blobs",
    "blob_refs",
    "templates",
    "api_tokens",
    "dashboard_sessions",
];

/// Changed rows, as a fraction of the table, after which the upkeep analyzes it (autovacuum's default).
pub const ANALYZE_FRACTION: f64 = 0.1;

/// Tables smaller than this (in 8 KB pages) are not analyzed: see `PgStore::upkeep`.
pub const ANALYZE_MIN_PAGES: i64 = 10;

/// Session advisory lock key of the upkeep, so that one node at a time does it ("herald-upkeep").
pub(super) const UPKEEP_LOCK: i64 = 0x6865_7261_6c64_7570;

/// What one upkeep run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Upkeep {
    /// Tables analyzed.
    pub analyzed: Vec<String>,
}

/// Analyzes each of Herald's tables past its threshold, by the activity statistics PostgreSQL keeps whether
/// or not autovacuum runs (`track_counts`, on by default).
pub(super) async fn refresh_statistics(
    conn: &mut sqlx::PgConnection,
) -> Result<Upkeep, StoreError> {
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT s.relname::text
         FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
         WHERE s.schemaname = current_schema() AND s.relname = ANY($1)
           AND s.n_mod_since_analyze > 50 + $2 * GREATEST(c.reltuples, 0)
           AND pg_relation_size(s.relid) >= $3 * current_setting('block_size')::bigint",
    )
    .bind(UPKEPT)
    .bind(ANALYZE_FRACTION)
    .bind(ANALYZE_MIN_PAGES)
    .fetch_all(&mut *conn)
    .await?;
    let mut done = Upkeep::default();
    for table in due {
        // Only names from UPKEPT reach the statement (they cannot be bound as parameters).
        let Some(table) = UPKEPT.iter().find(|t| **t == table) else {
            continue;
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
            .execute(&mut *conn)
            .await?;
        done.analyzed.push((*table).to_owned());
    }
    Ok(done)
}

impl PgStore {
    /// Store upkeep, every minute, for installations where autovacuum is off (as on this project's test
    /// machine, and some managed setups) or lags behind a busy queue.
    ///
    /// - The counters (`status_counts`, `activity`) are vacuumed every time: every accept, claim and record
    ///   updates them, and unvacuumed, their 16 rows grew to 78 MB after a million messages (24 ms to read).
    /// - Every other table is analyzed once it has changed by [`ANALYZE_FRACTION`] of its rows (plus 50)
    ///   since its last ANALYZE (autovacuum's default threshold), but never while it is smaller than
    ///   [`ANALYZE_MIN_PAGES`]. Without statistics an archive page took 275 ms instead of 1.5 ms.
    ///
    /// Why not smaller: statistics saying a table is tiny make PostgreSQL plan sequential scans, and a
    /// connection keeps the generic plan of a prepared statement until the table's statistics change. That
    /// is what stalled delivery when Herald analyzed its empty tables at start (3a7de8c): captured with
    /// EXPLAIN (ANALYZE, BUFFERS), the record statements of a connection prepared on 10 rows still ran
    /// `Seq Scan on recipients ... Rows Removed by Filter: 20009` once the table held 20,000. A table never
    /// analyzed is planned as at least 10 pages, where index scans win; from 10 pages on, the planner picks
    /// the index for a key lookup, and each ANALYZE as the table grows replaces the connections' plans.
    ///
    /// ANALYZE takes a lock that does not block reads or writes, and samples a bounded number of rows, so
    /// delivery goes on meanwhile. One node at a time does it (a session advisory lock); the others skip it
    /// that minute. Dead rows of the archive are left to VACUUM run by the operator or autovacuum: vacuuming
    /// a million-row table is heavy I/O that Herald does not start on its own.
    pub async fn upkeep(&self) -> Result<Upkeep, StoreError> {
        sqlx::query("VACUUM status_counts, activity")
            .execute(&self.pool)
            .await?;
        let mut conn = self.pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(UPKEEP_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if !locked {
            return Ok(Upkeep::default());
        }
        let done = refresh_statistics(&mut conn).await;
        // Unlocked even when the work failed; a connection that cannot unlock is dropped with its session.
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(UPKEEP_LOCK)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            conn.detach();
        }
        done
    }
}
