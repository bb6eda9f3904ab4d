//! The store on PostgreSQL, for several `herald serve` nodes on one database.
//!
//! Nodes share nothing but the database: claims use `FOR UPDATE SKIP LOCKED` so two nodes never take the same
//! message, leases make a dead node's messages due again, and `NOTIFY herald_work` (sent in the accepting
//! transaction, so only after its commit) wakes idle nodes at once. Accepts are grouped into one transaction
//! per batch of waiting requests, as on SQLite.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use sqlx::{
    Executor, PgPool, Postgres, QueryBuilder, Row, SqlSafeStr as _, Transaction,
    migrate::{Migration, MigrationType, Migrator},
    postgres::{PgListener, PgPoolOptions},
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Accepted, ActivityBucket, AttemptOutcome, CancelOutcome, ClaimedMessage, ClaimedRecipient,
    EVENT_INTERRUPTED, EVENT_STALE_OUTCOME, HeartbeatReport, Membership, MessageStatus,
    MessageSummary, MessageView, Millis, NewMessage, NodeInfo, RecipientResult, RecipientStatus,
    SUMMARY_RECIPIENTS, SearchPage, SearchQuery, SessionInfo, StoreError, StoredTemplate,
    TemplateSource, TokenInfo, WorkSignal,
    raw::{self, RawSegment, SharedBlob},
    rows,
    rows::counts_from,
    search::{activity_start, index_terms, parse_cursor, query_terms, tsquery},
    types::message_status_from,
};
use crate::clock::Clock;

// DKIM keys (issue 13), in their own file; a child module so it reaches the pool.
#[path = "postgres_dkim.rs"]
mod dkim;

const CHANNEL: &str = "herald_work";

/// Matches above which a search filter is common enough to walk the archive newest first (see `search`).
const SELECTIVE: i64 = 2_000;

/// A search filter whose matches can be counted on an index.
enum Filter<'a> {
    /// A tsquery literal of search terms.
    Words(&'a str),
    /// A recipient address.
    Address(&'a str),
}

/// Herald's tables whose statistics the upkeep keeps fresh (the counters apart: see `upkeep`).
const UPKEPT: &[&str] = &[
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
const UPKEEP_LOCK: i64 = 0x6865_7261_6c64_7570;

/// What one upkeep run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Upkeep {
    /// Tables analyzed.
    pub analyzed: Vec<String>,
}

/// Analyzes each of Herald's tables past its threshold, by the activity statistics PostgreSQL keeps whether
/// or not autovacuum runs (`track_counts`, on by default).
async fn refresh_statistics(conn: &mut sqlx::PgConnection) -> Result<Upkeep, StoreError> {
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

fn migrator() -> Migrator {
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
            include_str!("../../migrations/postgres/0001_init.sql"),
        ),
        migration(
            2,
            "dashboard",
            include_str!("../../migrations/postgres/0002_dashboard.sql"),
        ),
        migration(
            3,
            "dashboard sessions",
            include_str!("../../migrations/postgres/0003_dashboard_sessions.sql"),
        ),
        migration(
            4,
            "nodes",
            include_str!("../../migrations/postgres/0004_nodes.sql"),
        ),
        migration(
            5,
            "lease index",
            include_str!("../../migrations/postgres/0005_lease_index.sql"),
        ),
        // Issue 13; numbered after the issue so that migrations added meanwhile by other work do not collide.
        migration(
            13,
            "dkim keys",
            include_str!("../../migrations/postgres/0013_dkim_keys.sql"),
        ),
    ])
}

/// What recording an outcome does to its message row.
struct MessageUpdate<'a> {
    id: &'a str,
    status: MessageStatus,
    /// 1 when the outcome counts as an attempt.
    counts: i32,
    next_attempt_at: Option<Millis>,
    finished_at: Option<Millis>,
}

/// The PostgreSQL store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    accepts: mpsc::Sender<AcceptRequest>,
    clock: Arc<dyn Clock>,
    work: WorkSignal,
}

type AcceptRequest = (
    Vec<NewMessage>,
    oneshot::Sender<Result<Vec<Accepted>, String>>,
);

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

    pub async fn accept(&self, messages: Vec<NewMessage>) -> Result<Vec<Accepted>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.accepts
            .send((messages, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(|e| StoreError::Database(sqlx::Error::Protocol(e)))
    }

    pub async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        // SKIP LOCKED: rows another node is claiming right now are passed over, not waited for.
        // A due message still `sending` is one whose node stopped renewing its lease (it died before the
        // others saw its heartbeat age): its attempt is recorded as interrupted, like a released one.
        let rows = sqlx::query(
            "UPDATE messages m SET status = 'sending', lease_owner = $1, next_attempt_at = $2
             FROM (SELECT id, status, lease_owner FROM messages
                   WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $3
                   ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) due
             WHERE m.id = due.id
             RETURNING m.id, m.sender, m.created_at, m.attempts, m.raw, due.status = 'sending', due.lease_owner",
        )
        .bind(owner)
        .bind(now + lease.as_millis() as Millis)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let mut recipients: HashMap<String, Vec<ClaimedRecipient>> = HashMap::new();
        for row in sqlx::query(
            "SELECT message_id, position, address FROM recipients
             WHERE message_id = ANY($1) AND status IN ('pending', 'deferred') ORDER BY message_id, position",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        {
            recipients
                .entry(row.get(0))
                .or_default()
                .push(ClaimedRecipient { position: row.get::<i32, _>(1) as u32, address: row.get(2) });
        }
        let taken_over: Vec<(&str, String)> = rows
            .iter()
            .filter(|row| row.get::<Option<bool>, _>(5) == Some(true))
            .map(|row| {
                let owner: Option<String> = row.get(6);
                (
                    row.get::<&str, _>(0),
                    format!(
                        "interrupted: the lease of node {} ran out; not counted as an attempt",
                        owner.as_deref().unwrap_or("unknown")
                    ),
                )
            })
            .collect();
        insert_events(
            &mut tx,
            taken_over
                .iter()
                .map(|(id, detail)| (*id, now, EVENT_INTERRUPTED, None, Some(detail.as_str())))
                .chain(
                    ids.iter()
                        .map(|id| (id.as_str(), now, "sending", None, None)),
                ),
        )
        .await?;
        tx.commit().await?;

        let mut wanted = HashSet::new();
        for row in &rows {
            if let Some(framed) = row.get::<Option<&[u8]>, _>(4) {
                let id: String = row.get(0);
                wanted.extend(
                    raw::shared_hashes(framed)
                        .map_err(|reason| StoreError::Corrupt { id, reason })?,
                );
            }
        }
        let blobs = self.blobs(wanted).await?;
        rows.into_iter()
            .map(|row| {
                let id: String = row.get(0);
                let framed: Option<Vec<u8>> = row.get(4);
                let framed = framed.ok_or_else(|| StoreError::Corrupt {
                    id: id.clone(),
                    reason: "raw body was pruned".into(),
                })?;
                let raw = raw::decode(&Bytes::from(framed), &blobs).map_err(|reason| {
                    StoreError::Corrupt {
                        id: id.clone(),
                        reason,
                    }
                })?;
                Ok(ClaimedMessage {
                    recipients: recipients.remove(&id).unwrap_or_default(),
                    id,
                    sender: row.get(1),
                    created_at: row.get(2),
                    attempts: row.get::<i32, _>(3) as u32,
                    raw,
                })
            })
            .collect()
    }

    async fn blobs(
        &self,
        hashes: HashSet<[u8; 32]>,
    ) -> Result<HashMap<[u8; 32], Arc<SharedBlob>>, StoreError> {
        if hashes.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
        let mut found = HashMap::new();
        for row in sqlx::query("SELECT hash, bytes FROM blobs WHERE hash = ANY($1)")
            .bind(&keys)
            .fetch_all(&self.pool)
            .await?
        {
            let hash: Vec<u8> = row.get(0);
            if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                let bytes: Vec<u8> = row.get(1);
                found.insert(
                    hash,
                    Arc::new(SharedBlob {
                        hash,
                        bytes: Bytes::from(bytes),
                    }),
                );
            }
        }
        Ok(found)
    }

    /// Records attempt outcomes in one transaction of a fixed number of statements, however many outcomes
    /// there are: the time between the relay's final 250 and this commit is the only window in which a node
    /// dying makes a message go out twice, so it is kept short (a statement per message made it grow with the
    /// batch). Only the lease holder records (see the SQLite store); a node that lost the lease gets a
    /// `stale_outcome` event instead.
    pub async fn record(
        &self,
        owner: &str,
        outcomes: Vec<AttemptOutcome>,
    ) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let ids: Vec<&str> = outcomes.iter().map(|o| o.id.as_str()).collect();
        // FOR UPDATE, in id order: a heartbeat releasing this node's leases cannot slip in between the check
        // and the update, and two recorders lock in the same order.
        let held: HashSet<String> = sqlx::query(
            "SELECT id FROM messages WHERE id = ANY($1) AND lease_owner = $2 AND status = 'sending'
             ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|row| row.get(0))
        .collect();
        let (owned, stale): (Vec<&AttemptOutcome>, Vec<&AttemptOutcome>) =
            outcomes.iter().partition(|o| held.contains(&o.id));
        let stale_details: Vec<(&str, String)> = stale
            .iter()
            .map(|o| {
                (
                    o.id.as_str(),
                    format!(
                        "from {owner}, which no longer held the lease (not applied): {}",
                        o.detail
                    ),
                )
            })
            .collect();
        insert_events(
            &mut tx,
            stale_details
                .iter()
                .map(|(id, detail)| (*id, now, EVENT_STALE_OUTCOME, None, Some(detail.as_str()))),
        )
        .await?;
        if owned.is_empty() {
            tx.commit().await?;
            return Ok(());
        }

        let results: Vec<(&str, &RecipientResult)> = owned
            .iter()
            .flat_map(|o| o.recipients.iter().map(move |r| (o.id.as_str(), r)))
            .collect();
        sqlx::query(
            "UPDATE recipients r SET status = u.status, smtp_code = u.code, enhanced_status = u.enhanced,
             reply = u.reply
             FROM UNNEST($1::text[], $2::int[], $3::text[], $4::int[], $5::text[], $6::text[])
                  AS u(id, position, status, code, enhanced, reply)
             WHERE r.message_id = u.id AND r.position = u.position
               AND r.status NOT IN ('delivered', 'failed', 'cancelled')",
        )
        .bind(results.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(results.iter().map(|(_, r)| r.position as i32).collect::<Vec<_>>())
        .bind(results.iter().map(|(_, r)| r.status.as_str()).collect::<Vec<_>>())
        .bind(results.iter().map(|(_, r)| r.smtp_code.map(i32::from)).collect::<Vec<_>>())
        .bind(results.iter().map(|(_, r)| r.enhanced_status.as_deref()).collect::<Vec<_>>())
        .bind(results.iter().map(|(_, r)| r.reply.as_deref()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        insert_events(
            &mut tx,
            results.iter().map(|(id, r)| {
                (
                    *id,
                    now,
                    r.status.as_str(),
                    Some(r.address.as_str()),
                    r.reply.as_deref(),
                )
            }),
        )
        .await?;

        let owned_ids: Vec<&str> = owned.iter().map(|o| o.id.as_str()).collect();
        let mut statuses: HashMap<String, Vec<RecipientStatus>> = HashMap::new();
        for row in
            sqlx::query("SELECT message_id, status FROM recipients WHERE message_id = ANY($1)")
                .bind(&owned_ids)
                .fetch_all(&mut *tx)
                .await?
        {
            if let Ok(status) = RecipientStatus::from_str(row.get::<&str, _>(1)) {
                statuses.entry(row.get(0)).or_default().push(status);
            }
        }
        let mut gave_up: Vec<&str> = Vec::new();
        let mut updates: Vec<MessageUpdate<'_>> = Vec::with_capacity(owned.len());
        for outcome in &owned {
            let recipients = statuses.get(&outcome.id).map_or(&[][..], Vec::as_slice);
            let mut status = message_status_from(recipients);
            // Deferred recipients with no retry time left: the message gave up on them.
            if matches!(status, MessageStatus::Deferred | MessageStatus::Queued)
                && outcome.retry_at.is_none()
            {
                gave_up.push(outcome.id.as_str());
                status = if recipients.contains(&RecipientStatus::Delivered) {
                    MessageStatus::Delivered
                } else {
                    MessageStatus::Failed
                };
            }
            let next_attempt_at = if status.is_final() {
                None
            } else {
                outcome.retry_at.or(Some(now))
            };
            updates.push(MessageUpdate {
                id: outcome.id.as_str(),
                status,
                counts: i32::from(outcome.counts_attempt),
                next_attempt_at,
                finished_at: status.is_final().then_some(now),
            });
        }
        if !gave_up.is_empty() {
            sqlx::query(
                "UPDATE recipients SET status = 'failed'
                 WHERE message_id = ANY($1) AND status IN ('pending', 'deferred')",
            )
            .bind(&gave_up)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE messages m SET status = u.status, attempts = m.attempts + u.counts,
             next_attempt_at = u.next_attempt_at, lease_owner = NULL, finished_at = u.finished_at
             FROM UNNEST($1::text[], $2::text[], $3::int[], $4::bigint[], $5::bigint[])
                  AS u(id, status, counts, next_attempt_at, finished_at)
             WHERE m.id = u.id AND m.lease_owner = $6",
        )
        .bind(updates.iter().map(|u| u.id).collect::<Vec<_>>())
        .bind(
            updates
                .iter()
                .map(|u| u.status.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(updates.iter().map(|u| u.counts).collect::<Vec<_>>())
        .bind(
            updates
                .iter()
                .map(|u| u.next_attempt_at)
                .collect::<Vec<_>>(),
        )
        .bind(updates.iter().map(|u| u.finished_at).collect::<Vec<_>>())
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        let kinds: Vec<String> = updates
            .iter()
            .map(|u| format!("attempt_{}", u.status))
            .collect();
        insert_events(
            &mut tx,
            owned.iter().zip(&kinds).map(|(outcome, kind)| {
                (
                    outcome.id.as_str(),
                    now,
                    kind.as_str(),
                    None,
                    Some(outcome.detail.as_str()),
                )
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE messages SET status = 'cancelled', next_attempt_at = NULL, finished_at = $1
             WHERE id = $2 AND status IN ('scheduled', 'queued', 'deferred')",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let outcome = if done == 1 {
            sqlx::query(
                "UPDATE recipients SET status = 'cancelled' WHERE message_id = $1 AND status IN ('pending', 'deferred')",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            insert_events(&mut tx, [(id, now, "cancelled", None, None)]).await?;
            CancelOutcome::Cancelled
        } else {
            match sqlx::query("SELECT status FROM messages WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
            {
                None => CancelOutcome::NotFound,
                Some(row) => CancelOutcome::NotCancellable(
                    MessageStatus::from_str(row.get::<&str, _>(0))
                        .unwrap_or(MessageStatus::Sending),
                ),
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    pub async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let released = sqlx::query(
            "UPDATE messages SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,
             lease_owner = NULL, next_attempt_at = $1 WHERE lease_owner = $2 AND status = 'sending'",
        )
        .bind(self.clock.now())
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if released > 0 {
            tx.execute(sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL))
                .await?;
        }
        tx.commit().await?;
        Ok(released)
    }

    /// Extends the leases `owner` still holds on `ids` to `lease` from now, in one statement (see the SQLite
    /// store).
    pub async fn renew_leases(
        &self,
        owner: &str,
        lease: Duration,
        ids: &[String],
    ) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let until = self.clock.now() + lease.as_millis() as Millis;
        Ok(sqlx::query(
            "UPDATE messages SET next_attempt_at = $1
             WHERE id = ANY($3) AND lease_owner = $2 AND status = 'sending'",
        )
        .bind(until)
        .bind(owner)
        .bind(ids)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Writes the node's row with `now` as its heartbeat (inserted on the first beat).
    async fn beat(&self, node: &NodeInfo, now: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO nodes (id, host, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
        )
        .bind(&node.id)
        .bind(&node.host)
        .bind(i64::from(node.pid))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Registers the node: its heartbeat row, renewed by [`PgStore::heartbeat`].
    pub async fn join(&self, node: &NodeInfo) -> Result<Membership, StoreError> {
        let now = self.clock.now();
        self.beat(node, now).await?;
        Ok(Membership {
            _lock: None,
            recovered: 0,
        })
    }

    /// Renews this node's row, then looks for dead nodes: a row older than one lease is a node that stopped
    /// renewing (its leases have run out too, or are about to). Its `sending` messages become due now with an
    /// interrupted attempt (not counted), its row goes, and idle nodes are woken. Answers how many are live.
    pub async fn heartbeat(
        &self,
        node: &NodeInfo,
        lease: Duration,
    ) -> Result<HeartbeatReport, StoreError> {
        let now = self.clock.now();
        // Its own statement, committed before the sweep: two nodes sweeping at once never wait on each other's
        // fresh rows (which could deadlock two nodes that were both late).
        self.beat(node, now).await?;
        let cutoff = now - lease.as_millis() as Millis;
        let mut tx = self.pool.begin().await?;
        let dead_nodes: Vec<String> =
            sqlx::query("DELETE FROM nodes WHERE heartbeat_at < $1 AND id <> $2 RETURNING id")
                .bind(cutoff)
                .bind(&node.id)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|row| row.get(0))
                .collect();
        let mut released = 0;
        if !dead_nodes.is_empty() {
            let rows = sqlx::query(
                "UPDATE messages m SET status = CASE WHEN m.attempts > 0 THEN 'deferred' ELSE 'queued' END,
                 lease_owner = NULL, next_attempt_at = $1
                 FROM (SELECT id, lease_owner FROM messages WHERE lease_owner = ANY($2) AND status = 'sending'
                       FOR UPDATE) old
                 WHERE m.id = old.id
                 RETURNING m.id, old.lease_owner",
            )
            .bind(now)
            .bind(&dead_nodes)
            .fetch_all(&mut *tx)
            .await?;
            released = rows.len() as u64;
            let interrupted: Vec<(String, String)> = rows
                .into_iter()
                .map(|row| {
                    let owner: String = row.get(1);
                    (
                        row.get(0),
                        format!(
                            "interrupted: node {owner} stopped renewing its leases; due again now, not counted \
                             as an attempt"
                        ),
                    )
                })
                .collect();
            insert_events(
                &mut tx,
                interrupted.iter().map(|(id, detail)| {
                    (
                        id.as_str(),
                        now,
                        EVENT_INTERRUPTED,
                        None,
                        Some(detail.as_str()),
                    )
                }),
            )
            .await?;
            if released > 0 {
                tx.execute(sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL))
                    .await?;
            }
        }
        // The limits' split counts a node only while it beats: one that has missed two heartbeats (every third
        // of a lease) is left out, so the others take its share within two beats of a crash, while its leases
        // are released only once a whole lease has passed (above). A live node's beat is never that late.
        let silent = now - (lease.as_millis() * 2 / 3) as Millis;
        let live: i64 = sqlx::query("SELECT count(*) FROM nodes WHERE heartbeat_at >= $1")
            .bind(silent)
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        tx.commit().await?;
        Ok(HeartbeatReport {
            live_nodes: live.clamp(1, i64::from(u32::MAX)) as u32,
            dead_nodes,
            released,
        })
    }

    /// Removes the node's row (graceful shutdown, after its leases were given back).
    pub async fn leave(&self, node: &NodeInfo) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(&node.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn prune_raw(&self, finished_before: Millis) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, raw FROM messages WHERE raw IS NOT NULL AND finished_at IS NOT NULL AND finished_at < $1
             FOR UPDATE",
        )
        .bind(finished_before)
        .fetch_all(&mut *tx)
        .await?;
        let mut released: HashMap<[u8; 32], i64> = HashMap::new();
        for row in &rows {
            for hash in raw::shared_hashes(row.get::<&[u8], _>(1)).unwrap_or_default() {
                *released.entry(hash).or_default() += 1;
            }
        }
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        sqlx::query("UPDATE messages SET raw = NULL WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        for (hash, count) in released {
            sqlx::query("UPDATE blob_refs SET refs = refs - $1 WHERE hash = $2")
                .bind(count)
                .bind(&hash[..])
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM blobs WHERE hash IN (SELECT hash FROM blob_refs WHERE refs <= 0)")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM blob_refs WHERE refs <= 0")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    pub async fn raw(&self, id: &str) -> Result<Option<Vec<RawSegment>>, StoreError> {
        let row = sqlx::query("SELECT raw FROM messages WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(framed) = row.and_then(|r| r.get::<Option<Vec<u8>>, _>(0)) else {
            return Ok(None);
        };
        raw::resolve(id, framed, |hashes| self.blobs(hashes))
            .await
            .map(Some)
    }

    pub async fn message(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
        // One snapshot for the message, its recipients and its events (REPEATABLE READ: a commit between the
        // reads could otherwise show a queued message whose recipients are delivered).
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        // The columns rows::message_view reads, in its order.
        let Some(row) = sqlx::query(
            "SELECT id, status, created_at, send_at, sender, subject, attempts::bigint, batch_id, tags, metadata, raw_size
             FROM messages WHERE id = $1",
        )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let recipients = sqlx::query(
            "SELECT address, kind, status, smtp_code::bigint, enhanced_status, reply FROM recipients
             WHERE message_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let events = sqlx::query(
            "SELECT at, type, recipient, detail FROM events WHERE message_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        Ok(Some(rows::message_view(
            &row,
            recipients.iter().map(rows::recipient).collect(),
            events.iter().map(rows::event).collect(),
        )))
    }

    /// Searches the archive, newest first, with keyset pagination. With a tag, one tag's rows of
    /// `message_tags` are walked newest first (its primary key holds created_at for that).
    pub async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let limit = query.limit.clamp(1, 1_000);
        // A tsquery literal of Herald's own terms (see store::search), every term quoted.
        let text = query
            .text
            .as_deref()
            .map(query_terms)
            .filter(|terms| !terms.is_empty())
            .map(|terms| tsquery(&terms));
        // Walking `messages_created` newest first and filtering finds a page of a common word or a busy
        // address at once, but reads the whole archive for a rare one (a word in 0.01% of 1M messages: 315
        // ms), and sorting every message of a busy address is as slow (50,000 messages: 459 ms). So rare words
        // drive the query (their matches, at most SELECTIVE, are sorted), and a busy address is probed per
        // message instead of gathered.
        let rare_text = match (&text, &query.tag) {
            (Some(text), None) => !self.is_common(Filter::Words(text)).await?,
            _ => false,
        };
        let busy_to = match &query.to {
            Some(to) => self.is_common(Filter::Address(to)).await?,
            None => false,
        };
        let mut sql = QueryBuilder::<Postgres>::new("");
        if let (true, Some(text)) = (rare_text, &text) {
            // MATERIALIZED: the planner may not fold the matches back into a walk of the whole archive.
            sql.push("WITH hits AS MATERIALIZED (SELECT id FROM messages WHERE search @@ ")
                .push_bind(text.clone())
                .push("::tsquery) ");
        }
        sql.push("SELECT m.id, m.status, m.created_at, m.sender, m.subject, m.attempts::bigint ");
        let (created_at, id) = if let Some(tag) = &query.tag {
            sql.push("FROM message_tags t JOIN messages m ON m.id = t.message_id WHERE t.tag = ")
                .push_bind(tag.clone());
            ("t.created_at", "t.message_id")
        } else if rare_text {
            sql.push("FROM hits h JOIN messages m ON m.id = h.id WHERE TRUE");
            ("m.created_at", "m.id")
        } else {
            sql.push("FROM messages m WHERE TRUE");
            ("m.created_at", "m.id")
        };
        if let Some(status) = query.status {
            sql.push(" AND m.status = ").push_bind(status.as_str());
        }
        if let Some(to) = &query.to {
            if busy_to {
                sql.push(" AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.address = ")
                    .push_bind(to.clone())
                    .push(")");
            } else {
                sql.push(" AND m.id IN (SELECT message_id FROM recipients WHERE address = ")
                    .push_bind(to.clone())
                    .push(")");
            }
        }
        if let (false, Some(text)) = (rare_text, text) {
            sql.push(" AND m.search @@ ")
                .push_bind(text)
                .push("::tsquery");
        }
        if let Some(since) = query.since {
            sql.push(format!(" AND {created_at} >= ")).push_bind(since);
        }
        if let Some(until) = query.until {
            sql.push(format!(" AND {created_at} < ")).push_bind(until);
        }
        if let Some(cursor) = &query.cursor {
            let (at, cursor_id) = parse_cursor(cursor)?;
            sql.push(format!(" AND ({created_at}, {id}) < ("))
                .push_bind(at)
                .push(", ")
                .push_bind(cursor_id)
                .push(")");
        }
        sql.push(format!(" ORDER BY {created_at} DESC, {id} DESC LIMIT "))
            .push_bind(i64::from(limit) + 1);
        // Not a prepared statement: after five runs PostgreSQL may keep a generic plan made without the
        // values, and for a busy address that plan took 0.5 s where the planned-for-the-value one takes 5 ms.
        let rows = sql.build().persistent(false).fetch_all(&self.pool).await?;
        let mut page = rows::page(rows.iter().map(rows::summary).collect(), limit);
        self.attach_recipients(&mut page.items).await?;
        Ok(page)
    }

    /// Whether `filter` matches more than [`SELECTIVE`] messages, counted on its index and stopping there.
    async fn is_common(&self, filter: Filter<'_>) -> Result<bool, StoreError> {
        let (sql, value) = match filter {
            Filter::Words(words) => (
                "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE search @@ $1::tsquery LIMIT $2) s",
                words,
            ),
            Filter::Address(address) => (
                "SELECT COUNT(*) FROM (SELECT 1 FROM recipients WHERE address = $1 LIMIT $2) s",
                address,
            ),
        };
        let n: i64 = sqlx::query_scalar(sql)
            .bind(value)
            .bind(SELECTIVE + 1)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > SELECTIVE)
    }

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

    /// Fills each row's first recipients and recipient count: one query for the page.
    async fn attach_recipients(&self, items: &mut [MessageSummary]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = items.iter().map(|m| m.id.as_str()).collect();
        let rows = sqlx::query(
            "SELECT r.message_id, r.position::bigint, r.address,
                    (SELECT COUNT(*) FROM recipients c WHERE c.message_id = r.message_id)
             FROM recipients r WHERE r.message_id = ANY($1) AND r.position < $2",
        )
        .bind(&ids)
        .bind(SUMMARY_RECIPIENTS as i32)
        .fetch_all(&self.pool)
        .await?;
        rows::attach_recipients(items, &rows);
        Ok(())
    }

    /// Messages per status: the sum of the 16 shards the triggers keep.
    pub async fn counts(&self) -> Result<HashMap<MessageStatus, u64>, StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(scheduled), 0)::bigint, COALESCE(SUM(queued), 0)::bigint,
                    COALESCE(SUM(sending), 0)::bigint, COALESCE(SUM(deferred), 0)::bigint,
                    COALESCE(SUM(delivered), 0)::bigint, COALESCE(SUM(failed), 0)::bigint,
                    COALESCE(SUM(cancelled), 0)::bigint
             FROM status_counts",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(counts_from(|i| row.get::<i64, _>(i)))
    }

    /// Activity per bucket (see `SqliteStore::activity`), summed over the shards.
    pub async fn activity(
        &self,
        since: Millis,
        bucket_ms: i64,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        let from = activity_start(since, bucket_ms)?;
        let rows = sqlx::query(
            "SELECT minute / $1 * $1 AS start, SUM(accepted)::bigint, SUM(delivered)::bigint,
                    SUM(failed)::bigint, SUM(deferred)::bigint
             FROM activity WHERE minute >= $2 GROUP BY start ORDER BY start",
        )
        .bind(bucket_ms)
        .bind(from)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rows::activity).collect())
    }

    pub async fn prune_activity(&self, before: Millis) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM activity WHERE minute < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    pub async fn append_event(
        &self,
        id: &str,
        kind: &str,
        detail: Option<String>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO events (message_id, at, type, recipient, detail)
             SELECT $1, $2, $3, NULL, $4 WHERE EXISTS (SELECT 1 FROM messages WHERE id = $1)",
        )
        .bind(id)
        .bind(self.clock.now())
        .bind(kind)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        Ok(sqlx::query(
            "SELECT MIN(next_attempt_at) FROM messages WHERE next_attempt_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?
        .get(0))
    }

    pub async fn put_template(&self, template: &TemplateSource) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO templates (name, subject, text, html, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET subject = EXCLUDED.subject, text = EXCLUDED.text,
             html = EXCLUDED.html, updated_at = EXCLUDED.updated_at",
        )
        .bind(&template.name)
        .bind(&template.subject)
        .bind(&template.text)
        .bind(&template.html)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn template(&self, name: &str) -> Result<Option<StoredTemplate>, StoreError> {
        let row = sqlx::query(
            "SELECT name, subject, text, html, updated_at FROM templates WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(rows::template))
    }

    pub async fn templates(&self) -> Result<Vec<StoredTemplate>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, subject, text, html, updated_at FROM templates ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rows::template).collect())
    }

    pub async fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM templates WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn create_token(&self, name: &str, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO api_tokens (id, name, token_hash, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(name)
        .bind(&hash[..])
        .bind(self.clock.now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn token_hash_exists(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM api_tokens WHERE token_hash = $1")
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query("SELECT name, created_at FROM api_tokens ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| TokenInfo {
                name: r.get(0),
                created_at: r.get(1),
            })
            .collect())
    }

    pub async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM api_tokens WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Stores a dashboard session (by the SHA-256 of its secret) and drops expired ones.
    pub async fn create_session(
        &self,
        hash: &[u8; 32],
        token_hash: &[u8; 32],
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at < $1")
            .bind(self.clock.now())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO dashboard_sessions (hash, token_hash, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(&hash[..])
        .bind(&token_hash[..])
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The token hash and expiry of a live session.
    pub async fn session(&self, hash: &[u8; 32]) -> Result<Option<SessionInfo>, StoreError> {
        let row = sqlx::query(
            "SELECT token_hash, expires_at FROM dashboard_sessions WHERE hash = $1 AND expires_at > $2",
        )
        .bind(&hash[..])
        .bind(self.clock.now())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| rows::session_info(r.get(0), r.get(1))))
    }

    pub async fn delete_session(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM dashboard_sessions WHERE hash = $1")
            .bind(&hash[..])
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Never show a password from the URL in an error.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

async fn insert_events<'a>(
    tx: &mut Transaction<'_, Postgres>,
    events: impl IntoIterator<Item = (&'a str, Millis, &'a str, Option<&'a str>, Option<&'a str>)>,
) -> Result<(), sqlx::Error> {
    let (mut ids, mut ats, mut kinds, mut recipients, mut details) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (id, at, kind, recipient, detail) in events {
        ids.push(id);
        ats.push(at);
        kinds.push(kind);
        recipients.push(recipient);
        details.push(detail);
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

/// Group commit for accepts: every request waiting when a transaction starts joins it.
async fn batch_accepts(
    pool: PgPool,
    clock: Arc<dyn Clock>,
    mut requests: mpsc::Receiver<AcceptRequest>,
) {
    while let Some(first) = requests.recv().await {
        let mut group = vec![first];
        let mut weight = group[0].0.len();
        while weight < 4_096 {
            match requests.try_recv() {
                Ok(more) => {
                    weight += more.0.len();
                    group.push(more);
                }
                Err(_) => break,
            }
        }
        let all: Vec<&NewMessage> = group.iter().flat_map(|(messages, _)| messages).collect();
        match accept_group(&pool, clock.now(), &all).await {
            Ok(results) => {
                let mut results = results.into_iter();
                for (messages, reply) in group {
                    let _ = reply.send(Ok(results.by_ref().take(messages.len()).collect()));
                }
            }
            Err(error) => {
                let message = error.to_string();
                tracing::error!(error = %message, "accept transaction failed; nothing of the group was stored");
                for (_, reply) in group {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// One array per column, for a multi-row INSERT through UNNEST.
#[derive(Default)]
struct MessageColumns<'a> {
    ids: Vec<&'a str>,
    statuses: Vec<&'static str>,
    senders: Vec<&'a str>,
    subjects: Vec<&'a str>,
    send_ats: Vec<Option<Millis>>,
    dues: Vec<Millis>,
    keys: Vec<Option<&'a str>>,
    batches: Vec<Option<&'a str>>,
    tags: Vec<String>,
    metadata: Vec<String>,
    raws: Vec<Vec<u8>>,
    sizes: Vec<i64>,
    documents: Vec<String>,
}

async fn accept_group(
    pool: &PgPool,
    now: Millis,
    messages: &[&NewMessage],
) -> Result<Vec<Accepted>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let status_of = |m: &NewMessage| match m.send_at {
        Some(at) if at > now => MessageStatus::Scheduled,
        _ => MessageStatus::Queued,
    };
    let mut blob_refs: HashMap<[u8; 32], (&SharedBlob, i64)> = HashMap::new();
    for m in messages {
        for segment in &m.raw {
            if let RawSegment::Shared { blob, .. } = segment {
                blob_refs.entry(blob.hash).or_insert((blob, 0)).1 += 1;
            }
        }
    }
    // Messages first: ON CONFLICT on the idempotency key tells which are new, even against another node's
    // concurrent accept of the same key.
    let mut c = MessageColumns::default();
    for m in messages {
        c.ids.push(&m.id);
        c.statuses.push(status_of(m).as_str());
        c.senders.push(&m.sender);
        c.subjects.push(&m.subject);
        c.send_ats.push(m.send_at);
        c.dues.push(m.send_at.unwrap_or(now).max(now));
        c.keys.push(m.idempotency_key.as_deref());
        c.batches.push(m.batch_id.as_deref());
        c.tags
            .push(serde_json::to_string(&m.tags).unwrap_or_else(|_| "[]".into()));
        c.metadata.push(m.metadata.to_string());
        c.raws.push(raw::encode(&m.raw));
        c.sizes.push(raw::wire_size(&m.raw) as i64);
        let addresses: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
        let document = format!(
            "{} {} {} {}",
            m.subject,
            m.sender,
            addresses.join(" "),
            m.search_text
        );
        c.documents.push(index_terms(&document));
    }
    let inserted: HashSet<String> = sqlx::query(
        "INSERT INTO messages (id, status, sender, subject, created_at, send_at, next_attempt_at, idempotency_key,
                               batch_id, tags, metadata, raw, raw_size, search)
         SELECT id, status, sender, subject, $7, send_at, due, key, batch, tags, metadata, raw, size,
                array_to_tsvector(string_to_array(doc, ' '))
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $8::text[],
                     $9::text[], $10::text[], $11::text[], $12::bytea[], $13::bigint[], $14::text[])
              AS t(id, status, sender, subject, send_at, due, key, batch, tags, metadata, raw, size, doc)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING id",
    )
    .bind(&c.ids)
    .bind(&c.statuses)
    .bind(&c.senders)
    .bind(&c.subjects)
    .bind(&c.send_ats)
    .bind(&c.dues)
    .bind(now)
    .bind(&c.keys)
    .bind(&c.batches)
    .bind(&c.tags)
    .bind(&c.metadata)
    .bind(&c.raws)
    .bind(&c.sizes)
    .bind(&c.documents)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| r.get(0))
    .collect();

    let fresh: Vec<&NewMessage> = messages
        .iter()
        .copied()
        .filter(|m| inserted.contains(&m.id))
        .collect();
    let repeated_keys: Vec<&str> = messages
        .iter()
        .filter(|m| !inserted.contains(&m.id))
        .filter_map(|m| m.idempotency_key.as_deref())
        .collect();
    let mut existing: HashMap<String, (String, MessageStatus)> = HashMap::new();
    if !repeated_keys.is_empty() {
        for row in sqlx::query(
            "SELECT idempotency_key, id, status FROM messages WHERE idempotency_key = ANY($1)",
        )
        .bind(&repeated_keys)
        .fetch_all(&mut *tx)
        .await?
        {
            let status =
                MessageStatus::from_str(row.get::<&str, _>(2)).unwrap_or(MessageStatus::Queued);
            existing.insert(row.get(0), (row.get(1), status));
        }
    }

    // Shared blobs of the messages actually stored.
    let mut stored_refs: HashMap<[u8; 32], i64> = HashMap::new();
    for m in &fresh {
        for segment in &m.raw {
            if let RawSegment::Shared { blob, .. } = segment {
                *stored_refs.entry(blob.hash).or_default() += 1;
            }
        }
    }
    for (hash, refs) in &stored_refs {
        let (blob, _) = blob_refs[hash];
        sqlx::query(
            "INSERT INTO blobs (hash, bytes, created_at) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
        )
        .bind(&hash[..])
        .bind(&blob.bytes[..])
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO blob_refs (hash, refs) VALUES ($1, $2)
             ON CONFLICT (hash) DO UPDATE SET refs = blob_refs.refs + EXCLUDED.refs",
        )
        .bind(&hash[..])
        .bind(*refs)
        .execute(&mut *tx)
        .await?;
    }

    let (mut ids, mut positions, mut addresses, mut kinds) = (vec![], vec![], vec![], vec![]);
    for m in &fresh {
        for (i, r) in m.recipients.iter().enumerate() {
            ids.push(m.id.as_str());
            positions.push(i as i32);
            addresses.push(r.address.as_str());
            kinds.push(r.kind.as_str());
        }
    }
    sqlx::query(
        "INSERT INTO recipients (message_id, position, address, kind, status)
         SELECT id, pos, address, kind, 'pending' FROM UNNEST($1::text[], $2::int[], $3::text[], $4::text[])
              AS t(id, pos, address, kind)",
    )
    .bind(&ids)
    .bind(&positions)
    .bind(&addresses)
    .bind(&kinds)
    .execute(&mut *tx)
    .await?;
    let (mut tagged, mut tags) = (vec![], vec![]);
    for m in &fresh {
        for tag in m.tags.iter().collect::<HashSet<_>>() {
            tagged.push(m.id.as_str());
            tags.push(tag.as_str());
        }
    }
    if !tags.is_empty() {
        sqlx::query(
            "INSERT INTO message_tags (tag, created_at, message_id)
             SELECT tag, $3, id FROM UNNEST($1::text[], $2::text[]) AS t(id, tag)",
        )
        .bind(&tagged)
        .bind(&tags)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    insert_events(
        &mut tx,
        fresh
            .iter()
            .map(|m| (m.id.as_str(), now, status_of(m).as_str(), None, None)),
    )
    .await?;
    if !fresh.is_empty() {
        // Delivered with the commit: idle nodes wake only for work they can see.
        tx.execute(sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL))
            .await?;
    }
    tx.commit().await?;

    Ok(messages
        .iter()
        .map(|m| {
            if inserted.contains(&m.id) {
                Accepted::New {
                    id: m.id.clone(),
                    status: status_of(m),
                }
            } else {
                let key = m.idempotency_key.as_deref().unwrap_or_default();
                let (id, status) = existing
                    .get(key)
                    .cloned()
                    .unwrap_or((m.id.clone(), MessageStatus::Queued));
                Accepted::Existing { id, status }
            }
        })
        .collect())
}
