//! The embedded store on SQLite: WAL, `synchronous=FULL`, one writer task doing group commit.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync. So all writes go through one task
//! that owns the write connection: it takes every request waiting in its channel, applies them in ONE
//! transaction, commits once, and only then answers each caller. Under load, thousands of accepts share one
//! fsync (group commit, DESIGN.md invariant 1); alone, a request commits at once. Reads use a separate pool,
//! which WAL lets run beside the writer.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use sqlx::{
    Connection, QueryBuilder, Row, SqlSafeStr as _, Sqlite, SqliteConnection,
    migrate::{Migration, MigrationType, Migrator},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Accepted, ActivityBucket, AttemptOutcome, CancelOutcome, ClaimedMessage, ClaimedRecipient,
    EVENT_INTERRUPTED, EVENT_STALE_OUTCOME, HeartbeatReport, Membership, MessageStatus,
    MessageSummary, MessageView, Millis, NewMessage, NodeInfo, RecipientStatus, SUMMARY_RECIPIENTS,
    SearchPage, SearchQuery, SessionInfo, StoreError, StoredTemplate, TemplateSource, TokenInfo,
    WorkSignal,
    raw::{self, RawSegment, SharedBlob},
    rows::{self, counts_from},
    search::{activity_start, fts5_query, index_terms, parse_cursor, query_terms},
    types::message_status_from,
};
use crate::clock::Clock;

// DKIM keys (issue 13).
mod dkim;
mod raw_db;

use raw_db::{DbResult, RawDb, Value};

/// How the SQLite store is opened.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    /// Most messages applied in one group commit; more wait for the next one.
    pub max_group: usize,
    /// Readers beside the writer.
    pub read_connections: u32,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_group: 4_096,
            read_connections: 4,
        }
    }

    /// Parses `sqlite://PATH` (or `sqlite:PATH`) into options with defaults.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| format!("not a sqlite URL: {url:?} (expected sqlite://PATH)"))?;
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(format!("sqlite URL {url:?} names no file"));
        }
        Ok(Self::new(path))
    }
}

/// The SQLite store. Cheap to clone; all clones share the writer task and the read pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    reader: SqlitePool,
    writer: mpsc::Sender<WriteOp>,
    clock: Arc<dyn Clock>,
    work: WorkSignal,
    /// Whether every message's created_at is at least that of every message inserted before it, so that
    /// rowid order is creation order (see `search`). Cleared, for good, the first time the clock goes back.
    created_in_order: Arc<AtomicBool>,
}

/// One request to the writer task.
enum WriteOp {
    /// One statement with owned parameters, for the rare writes (templates, tokens): rows changed.
    Execute {
        sql: &'static str,
        params: Vec<Param>,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Accept {
        messages: Vec<NewMessage>,
        reply: oneshot::Sender<Result<Vec<Accepted>, String>>,
    },
    Claim {
        owner: String,
        lease: Duration,
        limit: u32,
        reply: oneshot::Sender<Result<Vec<Claimed>, String>>,
    },
    Record {
        owner: String,
        outcomes: Vec<AttemptOutcome>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Cancel {
        id: String,
        reply: oneshot::Sender<Result<CancelOutcome, String>>,
    },
    Release {
        owner: String,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Renew {
        owner: String,
        lease: Duration,
        ids: Vec<String>,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Takes back every `sending` message (the previous owner of the file died).
    Recover {
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Prune {
        finished_before: Millis,
        reply: oneshot::Sender<Result<u64, String>>,
    },
}

/// An owned statement parameter (for [`WriteOp::Execute`]).
#[derive(Debug, Clone)]
pub(super) enum Param {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Param {
    fn value(&self) -> Value<'_> {
        match self {
            Param::Null => Value::Null,
            Param::Int(v) => Value::Int(*v),
            Param::Text(v) => Value::Text(v),
            Param::Blob(v) => Value::Blob(v),
        }
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(v.to_owned())
    }
}

impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Self {
        v.map_or(Param::Null, Into::into)
    }
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}

/// A claimed row before its shared blobs are resolved (outside the writer, by the caller's task).
struct Claimed {
    id: String,
    sender: String,
    created_at: Millis,
    attempts: u32,
    raw: Option<Vec<u8>>,
    recipients: Vec<ClaimedRecipient>,
}

fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a commit is on disk when it returns, so a 202 survives power loss (invariant 1).
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(false)
        .pragma("temp_store", "memory")
        .pragma("cache_size", "-16384")
}

/// The migrations, embedded in the binary so one file is all an install needs.
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
            include_str!("../../../migrations/sqlite/0001_init.sql"),
        ),
        migration(
            2,
            "dashboard",
            include_str!("../../../migrations/sqlite/0002_dashboard.sql"),
        ),
        migration(
            3,
            "dashboard sessions",
            include_str!("../../../migrations/sqlite/0003_dashboard_sessions.sql"),
        ),
        migration(
            4,
            "nodes",
            include_str!("../../../migrations/sqlite/0004_nodes.sql"),
        ),
        // Issue 13; numbered after the issue so that migrations added meanwhile by other work do not collide.
        migration(
            13,
            "dkim keys",
            include_str!("../../../migrations/sqlite/0013_dkim_keys.sql"),
        ),
    ])
}

impl SqliteStore {
    /// Opens (creating if needed) the database, applies migrations and starts the writer task.
    pub async fn open(options: SqliteOptions, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                url: options.path.display().to_string(),
                source: sqlx::Error::Io(e),
            })?;
        }
        let connect = connect_options(&options.path);
        let mut write_conn = SqliteConnection::connect_with(&connect)
            .await
            .map_err(|source| StoreError::Open {
                url: options.path.display().to_string(),
                source,
            })?;
        migrator().run(&mut write_conn).await?;
        let out_of_order: i64 =
            sqlx::query("SELECT value FROM store_facts WHERE name = 'created_out_of_order'")
                .fetch_optional(&mut write_conn)
                .await?
                .map_or(0, |row| row.get(0));
        let latest_created: Millis =
            sqlx::query("SELECT COALESCE(MAX(created_at), 0) FROM messages")
                .fetch_one(&mut write_conn)
                .await?
                .get(0);
        let created_in_order = Arc::new(AtomicBool::new(out_of_order == 0));
        let reader = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .connect_with(connect.read_only(true))
            .await
            .map_err(|source| StoreError::Open {
                url: options.path.display().to_string(),
                source,
            })?;
        drop(write_conn);
        let open_error = |e: raw_db::DbError| StoreError::Open {
            url: options.path.display().to_string(),
            source: sqlx::Error::Protocol(e.to_string()),
        };
        let db = RawDb::open(&options.path).map_err(open_error)?;
        // Same durability as the sqlx connections (see connect_options). Checkpoints are not the writer's
        // job: moving WAL pages into the database (and its fsync) ran on the writer's critical path for about
        // a seventh of its time; the checkpointer thread does it beside it.
        for pragma in [
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = FULL",
            "PRAGMA cache_size = -16384",
            "PRAGMA wal_autocheckpoint = 0",
        ] {
            db.exec(pragma).map_err(open_error)?;
        }
        let size_limit = format!("PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}");
        db.exec(&size_limit).map_err(open_error)?;
        let checkpointer = RawDb::open(&options.path).map_err(open_error)?;
        checkpointer
            .exec("PRAGMA synchronous = FULL")
            .map_err(open_error)?;
        checkpointer.exec(&size_limit).map_err(open_error)?;
        let (written, written_rx) = std::sync::mpsc::channel::<()>();
        let (writer, ops) = mpsc::channel(1_024);
        let task = Writer {
            db,
            clock: clock.clone(),
            max_group: options.max_group.max(1),
            written,
            order: CreatedOrder {
                latest: latest_created,
                in_order: created_in_order.clone(),
            },
        };
        let spawn_error = |e| StoreError::Open {
            url: options.path.display().to_string(),
            source: sqlx::Error::Io(e),
        };
        std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn(move || task.run(ops))
            .map_err(spawn_error)?;
        std::thread::Builder::new()
            .name("herald-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, written_rx))
            .map_err(spawn_error)?;
        Ok(Self {
            path: options.path.clone(),
            reader,
            writer,
            clock,
            work: WorkSignal::default(),
            created_in_order,
        })
    }

    async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, String>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(|e| StoreError::Database(sqlx::Error::Protocol(e)))
    }

    /// Stores messages durably; returns when they are committed. Messages whose idempotency key was seen
    /// before are not stored again: their entry says which message the key made.
    pub async fn accept(&self, messages: Vec<NewMessage>) -> Result<Vec<Accepted>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let accepted = self
            .call(|reply| WriteOp::Accept { messages, reply })
            .await?;
        // Same process, same database: the engine hears of new work with no polling delay.
        self.work.notify();
        Ok(accepted)
    }

    /// Takes up to `limit` due messages for `owner` under a lease of `lease`. A message whose lease expires
    /// before its outcome is recorded becomes due again (its worker is presumed dead).
    pub async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        let claimed = self
            .call(|reply| WriteOp::Claim {
                owner: owner.to_owned(),
                lease,
                limit,
                reply,
            })
            .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        // Resolve shared parts once per batch, outside the writer: a batch of 500 messages sharing one PDF reads
        // it once and every message holds the same bytes.
        let mut wanted = HashSet::new();
        for message in &claimed {
            if let Some(framed) = &message.raw {
                let hashes = raw::shared_hashes(framed).map_err(|reason| StoreError::Corrupt {
                    id: message.id.clone(),
                    reason,
                })?;
                wanted.extend(hashes);
            }
        }
        let blobs = self.blobs(wanted).await?;
        claimed
            .into_iter()
            .map(|c| {
                let raw = match c.raw {
                    Some(framed) => {
                        raw::decode(&Bytes::from(framed), &blobs).map_err(|reason| {
                            StoreError::Corrupt {
                                id: c.id.clone(),
                                reason,
                            }
                        })?
                    }
                    None => {
                        return Err(StoreError::Corrupt {
                            id: c.id,
                            reason: "raw body was pruned".into(),
                        });
                    }
                };
                Ok(ClaimedMessage {
                    id: c.id,
                    sender: c.sender,
                    created_at: c.created_at,
                    attempts: c.attempts,
                    recipients: c.recipients,
                    raw,
                })
            })
            .collect()
    }

    async fn blobs(
        &self,
        hashes: HashSet<[u8; 32]>,
    ) -> Result<HashMap<[u8; 32], Arc<SharedBlob>>, StoreError> {
        let mut found = HashMap::new();
        for hash in hashes {
            let row = sqlx::query("SELECT bytes FROM blobs WHERE hash = ?")
                .bind(&hash[..])
                .fetch_optional(&self.reader)
                .await?;
            if let Some(row) = row {
                let bytes: Vec<u8> = row.get(0);
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

    /// Records the end of attempts: recipient results, timeline events, the message's new status and, for
    /// deferred recipients, when to retry. Applied in one commit with whatever else is waiting.
    pub async fn record(
        &self,
        owner: &str,
        outcomes: Vec<AttemptOutcome>,
    ) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        self.call(|reply| WriteOp::Record {
            owner: owner.to_owned(),
            outcomes,
            reply,
        })
        .await
    }

    /// Cancels a message that has not been sent yet (scheduled, queued or deferred).
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        self.call(|reply| WriteOp::Cancel {
            id: id.to_owned(),
            reply,
        })
        .await
    }

    /// Gives back every lease `owner` holds (graceful shutdown): those messages are due again at once.
    pub async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        self.call(|reply| WriteOp::Release {
            owner: owner.to_owned(),
            reply,
        })
        .await
    }

    /// Extends the leases `owner` still holds on `ids` to `lease` from now, in one commit; answers how many it
    /// still held (a message recorded meanwhile, or taken over after a lost lease, is left alone).
    pub async fn renew_leases(
        &self,
        owner: &str,
        lease: Duration,
        ids: &[String],
    ) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.call(|reply| WriteOp::Renew {
            owner: owner.to_owned(),
            lease,
            ids: ids.to_vec(),
            reply,
        })
        .await
    }

    /// Makes this process the one serving the file: takes the exclusive lock on `<database>.lock` (refusing if
    /// another process holds it), then takes back every message left `sending`. Holding the lock proves their
    /// owner is gone, so there is no reason to wait for their leases to run out.
    pub async fn join(&self, node: &NodeInfo) -> Result<Membership, StoreError> {
        let lock = lock_database(&self.path, node)?;
        let recovered = self.call(|reply| WriteOp::Recover { reply }).await?;
        Ok(Membership {
            _lock: Some(lock),
            recovered,
        })
    }

    /// One process serves a SQLite file: it is the only live node, and no other node's leases need
    /// releasing.
    pub async fn heartbeat(
        &self,
        _node: &NodeInfo,
        _lease: Duration,
    ) -> Result<HeartbeatReport, StoreError> {
        Ok(HeartbeatReport {
            live_nodes: 1,
            ..HeartbeatReport::default()
        })
    }

    /// Nothing to do: the lock goes with the [`Membership`].
    pub async fn leave(&self, _node: &NodeInfo) -> Result<(), StoreError> {
        Ok(())
    }

    /// Drops the raw bodies of messages finished before `finished_before` (status and events are kept), and
    /// the shared blobs no longer referenced. Returns how many bodies were pruned.
    pub async fn prune_raw(&self, finished_before: Millis) -> Result<u64, StoreError> {
        self.call(|reply| WriteOp::Prune {
            finished_before,
            reply,
        })
        .await
    }

    /// The exact bytes of a message as segments (shared parts resolved), or `None` if unknown or pruned.
    pub async fn raw(&self, id: &str) -> Result<Option<Vec<RawSegment>>, StoreError> {
        let row = sqlx::query("SELECT raw FROM messages WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        let Some(framed) = row.and_then(|r| r.get::<Option<Vec<u8>>, _>(0)) else {
            return Ok(None);
        };
        raw::resolve(id, framed, |hashes| self.blobs(hashes))
            .await
            .map(Some)
    }

    /// One message with its recipients and timeline.
    pub async fn message(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
        // One read transaction: the message, its recipients and its events from the same snapshot (a commit
        // between two reads could otherwise show a queued message whose recipients are delivered).
        let mut tx = self.reader.begin().await?;
        // The columns rows::message_view reads, in its order.
        let Some(row) = sqlx::query(
            "SELECT id, status, created_at, send_at, sender, subject, attempts, batch_id, tags, metadata, raw_size
             FROM messages WHERE id = ?",
        )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let recipients = sqlx::query(
            "SELECT address, kind, status, smtp_code, enhanced_status, reply FROM recipients
             WHERE message_id = ? ORDER BY position",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let events = sqlx::query(
            "SELECT at, type, recipient, detail FROM events WHERE message_id = ? ORDER BY id",
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

    /// Searches the archive, newest first, with keyset pagination (stable and fast at any depth).
    ///
    /// Three plans, one result: with words, FTS5 yields matches in descending rowid order and the first page
    /// stops after `limit + 1` of them (while rowid order is creation order: see `search_text`); with a tag,
    /// one tag's rows of `message_tags` are walked newest first; otherwise the `messages_created` index is.
    pub async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let limit = query.limit.clamp(1, 1_000);
        let want = i64::from(limit) + 1;
        let cursor = query.cursor.as_deref().map(parse_cursor).transpose()?;
        let text = query
            .text
            .as_deref()
            .map(query_terms)
            .filter(|terms| !terms.is_empty())
            .map(|terms| fts5_query(&terms));
        let busy = match &query.to {
            Some(to) => self.is_busy_address(to).await?,
            None => false,
        };
        let mut items = match text {
            Some(text) if self.created_in_order.load(Ordering::Relaxed) => {
                self.search_text(query, &text, cursor.as_ref(), want, busy)
                    .await?
            }
            text => {
                let mut sql = QueryBuilder::<Sqlite>::new(format!("SELECT {SUMMARY_COLUMNS} "));
                let order = if let Some(tag) = &query.tag {
                    // message_tags holds created_at so that this walks its primary key newest first.
                    sql.push(
                        "FROM message_tags t JOIN messages m ON m.id = t.message_id WHERE t.tag = ",
                    )
                    .push_bind(tag.clone());
                    push_time_filters(
                        &mut sql,
                        query,
                        cursor.as_ref(),
                        "t.created_at",
                        "t.message_id",
                    );
                    " ORDER BY t.created_at DESC, t.message_id DESC LIMIT "
                } else {
                    sql.push("FROM messages m WHERE 1 = 1");
                    push_time_filters(&mut sql, query, cursor.as_ref(), "m.created_at", "m.id");
                    " ORDER BY m.created_at DESC, m.id DESC LIMIT "
                };
                push_filters(&mut sql, query, busy);
                if let Some(text) = text {
                    sql.push(
                        " AND m.rowid IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ",
                    )
                    .push_bind(text)
                    .push(")");
                }
                sql.push(order).push_bind(want);
                let rows = sql.build().fetch_all(&self.reader).await?;
                rows.iter().map(rows::summary).collect()
            }
        };
        items.truncate(want as usize);
        let mut page = rows::page(items, limit);
        self.attach_recipients(&mut page.items).await?;
        Ok(page)
    }

    /// Whether `address` has more than [`BUSY_ADDRESS`] messages (counted on the index, stopping there).
    async fn is_busy_address(&self, address: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM recipients WHERE address = ? LIMIT ?)",
        )
        .bind(address)
        .bind(BUSY_ADDRESS + 1)
        .fetch_one(&self.reader)
        .await?;
        Ok(n > BUSY_ADDRESS)
    }

    /// Full-text search for a database whose rowid order is creation order (created_at never decreases as
    /// rowids grow; `CreatedOrder` keeps watch). Ordering a common word's matches by created_at would read
    /// every match (a million for a word in every message); FTS5 instead yields them by descending rowid,
    /// newest first, and the query stops after `want` rows that pass the other filters. Those are the newest
    /// matches except for ties: messages created in the same millisecond as the last row and not yet read,
    /// which a second query fetches (bounded to the rowids stored in that millisecond, one or two group
    /// commits) before sorting by (created_at, id).
    /// Time bounds and the cursor become rowid bounds too, so a later page does not re-read earlier ones.
    async fn search_text(
        &self,
        query: &SearchQuery,
        text: &str,
        cursor: Option<&(Millis, String)>,
        want: i64,
        busy: bool,
    ) -> Result<Vec<MessageSummary>, StoreError> {
        let build = |extra: &dyn Fn(&mut QueryBuilder<Sqlite>)| {
            let mut sql = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {SUMMARY_COLUMNS}, m.rowid FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid
                 WHERE messages_fts MATCH "
            ));
            sql.push_bind(text.to_owned());
            // Rowid bounds (exact while rowid order is creation order); the exact filters follow.
            if let Some((at, _)) = cursor {
                sql.push(
                    " AND messages_fts.rowid <= (SELECT MAX(rowid) FROM messages WHERE created_at =
                      (SELECT MAX(created_at) FROM messages WHERE created_at <= ",
                )
                .push_bind(*at)
                .push("))");
            }
            if let Some(until) = query.until {
                sql.push(
                    " AND messages_fts.rowid <= (SELECT MAX(rowid) FROM messages WHERE created_at =
                      (SELECT MAX(created_at) FROM messages WHERE created_at < ",
                )
                .push_bind(until)
                .push("))");
            }
            if let Some(since) = query.since {
                sql.push(
                    " AND messages_fts.rowid >= (SELECT MIN(rowid) FROM messages WHERE created_at =
                      (SELECT MIN(created_at) FROM messages WHERE created_at >= ",
                )
                .push_bind(since)
                .push("))");
            }
            push_time_filters(&mut sql, query, cursor, "m.created_at", "m.id");
            push_filters(&mut sql, query, busy);
            if let Some(tag) = &query.tag {
                sql.push(" AND EXISTS (SELECT 1 FROM message_tags t WHERE t.tag = ")
                    .push_bind(tag.clone())
                    .push(" AND t.created_at = m.created_at AND t.message_id = m.id)");
            }
            extra(&mut sql);
            sql
        };
        let mut sql = build(&|sql| {
            sql.push(" ORDER BY messages_fts.rowid DESC LIMIT ")
                .push_bind(want);
        });
        let rows = sql.build().fetch_all(&self.reader).await?;
        let mut items: Vec<MessageSummary> = rows.iter().map(rows::summary).collect();
        if rows.len() as i64 == want {
            let last = &rows[rows.len() - 1];
            let (last_at, last_rowid): (Millis, i64) = (last.get(2), last.get(6));
            // `+m.created_at`: not through messages_created, which would probe FTS5 once per message of that
            // millisecond (measured ~40 µs each); FTS5 walks just that rowid range of its doclist instead.
            let mut ties = build(&|sql| {
                sql.push(" AND +m.created_at = ")
                    .push_bind(last_at)
                    .push(" AND messages_fts.rowid < ")
                    .push_bind(last_rowid)
                    .push(
                        " AND messages_fts.rowid >= (SELECT MIN(rowid) FROM messages WHERE created_at = ",
                    )
                    .push_bind(last_at)
                    .push(") ORDER BY messages_fts.rowid DESC");
            });
            let more = ties.build().fetch_all(&self.reader).await?;
            items.extend(more.iter().map(rows::summary));
        }
        items.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(items)
    }

    /// Fills each row's first recipients and recipient count: one query for the page.
    async fn attach_recipients(&self, items: &mut [MessageSummary]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let ids = serde_json::to_string(&items.iter().map(|m| &m.id).collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".into());
        let rows = sqlx::query(
            "SELECT r.message_id, r.position, r.address,
                    (SELECT COUNT(*) FROM recipients c WHERE c.message_id = r.message_id)
             FROM recipients r WHERE r.message_id IN (SELECT value FROM json_each(?1)) AND r.position < ?2",
        )
        .bind(ids)
        .bind(SUMMARY_RECIPIENTS as i64)
        .fetch_all(&self.reader)
        .await?;
        rows::attach_recipients(items, &rows);
        Ok(())
    }

    /// Messages per status, from the counters the triggers keep (one row: as fast at a million as at ten).
    pub async fn counts(&self) -> Result<HashMap<MessageStatus, u64>, StoreError> {
        let row = sqlx::query(
            "SELECT scheduled, queued, sending, deferred, delivered, failed, cancelled
             FROM status_counts WHERE shard = 0",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(counts_from(|i| row.get::<i64, _>(i)))
    }

    /// Messages accepted, delivered, failed and deferred per `bucket_ms` (a multiple of a minute), for the
    /// buckets from the one holding `since` on that have any; ascending.
    pub async fn activity(
        &self,
        since: Millis,
        bucket_ms: i64,
    ) -> Result<Vec<ActivityBucket>, StoreError> {
        let from = activity_start(since, bucket_ms)?;
        let rows = sqlx::query(
            "SELECT minute / ?1 * ?1 AS start, SUM(accepted), SUM(delivered), SUM(failed), SUM(deferred)
             FROM activity WHERE minute >= ?2 GROUP BY start ORDER BY start",
        )
            .bind(bucket_ms)
            .bind(from)
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.iter().map(rows::activity).collect())
    }

    /// Drops per-minute activity older than `before`; returns the minutes dropped.
    pub async fn prune_activity(&self, before: Millis) -> Result<u64, StoreError> {
        self.execute(
            "DELETE FROM activity WHERE minute < ?1",
            vec![before.into()],
        )
        .await
    }

    /// Adds a line to a message's timeline, at the store's clock; `false` when there is no such message.
    pub async fn append_event(
        &self,
        id: &str,
        kind: &str,
        detail: Option<String>,
    ) -> Result<bool, StoreError> {
        let added = self
            .execute(
                "INSERT INTO events (message_id, at, type, recipient, detail)
                 SELECT ?1, ?2, ?3, NULL, ?4 WHERE EXISTS (SELECT 1 FROM messages WHERE id = ?1)",
                vec![
                    id.into(),
                    self.clock.now().into(),
                    kind.into(),
                    detail.map_or(Param::Null, Param::Text),
                ],
            )
            .await?;
        Ok(added > 0)
    }

    /// The earliest time any live message is due, so an idle worker can sleep exactly until then.
    pub async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        Ok(sqlx::query(
            "SELECT MIN(next_attempt_at) FROM messages WHERE next_attempt_at IS NOT NULL",
        )
        .fetch_one(&self.reader)
        .await?
        .get(0))
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    /// Runs one write statement through the writer (group commit like everything else): rows changed.
    async fn execute(&self, sql: &'static str, params: Vec<Param>) -> Result<u64, StoreError> {
        self.call(|reply| WriteOp::Execute { sql, params, reply })
            .await
    }

    pub async fn put_template(&self, template: &TemplateSource) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO templates (name, subject, text, html, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (name) DO UPDATE SET subject = excluded.subject, text = excluded.text,
             html = excluded.html, updated_at = excluded.updated_at",
            vec![
                template.name.as_str().into(),
                template.subject.as_str().into(),
                template.text.as_deref().into(),
                template.html.as_deref().into(),
                self.clock.now().into(),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn template(&self, name: &str) -> Result<Option<StoredTemplate>, StoreError> {
        let row = sqlx::query(
            "SELECT name, subject, text, html, updated_at FROM templates WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.as_ref().map(rows::template))
    }

    pub async fn templates(&self) -> Result<Vec<StoredTemplate>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, subject, text, html, updated_at FROM templates ORDER BY name",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.iter().map(rows::template).collect())
    }

    pub async fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .execute("DELETE FROM templates WHERE name = ?1", vec![name.into()])
            .await?
            > 0)
    }

    /// Stores a token's hash under a unique name; `false` when the name is taken.
    pub async fn create_token(&self, name: &str, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        let params = vec![
            id.as_str().into(),
            name.into(),
            Param::Blob(hash.to_vec()),
            self.clock.now().into(),
        ];
        let created = self
            .execute(
                "INSERT INTO api_tokens (id, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
                params,
            )
            .await?;
        Ok(created > 0)
    }

    pub async fn token_hash_exists(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 FROM api_tokens WHERE token_hash = ?")
            .bind(&hash[..])
            .fetch_optional(&self.reader)
            .await?
            .is_some())
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query("SELECT name, created_at FROM api_tokens ORDER BY name")
            .fetch_all(&self.reader)
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
        Ok(self
            .execute("DELETE FROM api_tokens WHERE name = ?1", vec![name.into()])
            .await?
            > 0)
    }

    /// Stores a dashboard session (by the SHA-256 of its secret) and drops expired ones.
    pub async fn create_session(
        &self,
        hash: &[u8; 32],
        token_hash: &[u8; 32],
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM dashboard_sessions WHERE expires_at < ?1",
            vec![self.clock.now().into()],
        )
        .await?;
        self.execute(
            "INSERT INTO dashboard_sessions (hash, token_hash, expires_at) VALUES (?1, ?2, ?3)",
            vec![
                Param::Blob(hash.to_vec()),
                Param::Blob(token_hash.to_vec()),
                expires_at.into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// The token hash and expiry of a live session.
    pub async fn session(&self, hash: &[u8; 32]) -> Result<Option<SessionInfo>, StoreError> {
        let row = sqlx::query(
            "SELECT token_hash, expires_at FROM dashboard_sessions WHERE hash = ? AND expires_at > ?",
        )
        .bind(&hash[..])
        .bind(self.clock.now())
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.and_then(|r| rows::session_info(r.get(0), r.get(1))))
    }

    pub async fn delete_session(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self
            .execute(
                "DELETE FROM dashboard_sessions WHERE hash = ?1",
                vec![Param::Blob(hash.to_vec())],
            )
            .await?
            > 0)
    }

    pub fn work_signal(&self) -> &WorkSignal {
        &self.work
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

/// The columns `rows::summary` reads, from `messages m`.
const SUMMARY_COLUMNS: &str = "m.id, m.status, m.created_at, m.sender, m.subject, m.attempts";

/// The status and recipient filters, on `messages m`.
/// Status and recipient filters. A recipient's messages are gathered by the address index and sorted, unless
/// the address is `busy` (a shared mailbox in a large share of the archive: sorting its 50,000 messages took
/// 330 ms at 1M); then the archive is walked newest first and each message's few recipient rows are probed,
/// which finds a page after a few thousand rows at most.
fn push_filters(sql: &mut QueryBuilder<Sqlite>, query: &SearchQuery, busy: bool) {
    if let Some(status) = query.status {
        sql.push(" AND m.status = ").push_bind(status.as_str());
    }
    if let Some(to) = &query.to {
        if busy {
            sql.push(" AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.address = ")
                .push_bind(to.clone())
                .push(")");
        } else {
            sql.push(" AND m.id IN (SELECT message_id FROM recipients WHERE address = ")
                .push_bind(to.clone())
                .push(")");
        }
    }
}

/// Messages to one address above which [`push_filters`] walks the archive instead of sorting them all.
const BUSY_ADDRESS: i64 = 2_000;

/// since / until / cursor on the given created_at and id columns.
fn push_time_filters(
    sql: &mut QueryBuilder<Sqlite>,
    query: &SearchQuery,
    cursor: Option<&(Millis, String)>,
    created_at: &str,
    id: &str,
) {
    if let Some(since) = query.since {
        sql.push(format!(" AND {created_at} >= ")).push_bind(since);
    }
    if let Some(until) = query.until {
        sql.push(format!(" AND {created_at} < ")).push_bind(until);
    }
    if let Some((at, cursor_id)) = cursor {
        // A row value, which SQLite turns into a range of the (created_at, id) index: the equivalent
        // `created_at < ? OR (created_at = ? AND id < ?)` was a scan from the newest row down (33 ms half
        // way through a million messages).
        sql.push(format!(" AND ({created_at}, {id}) < ("))
            .push_bind(*at)
            .push(", ")
            .push_bind(cursor_id.clone())
            .push(")");
    }
}

/// WAL frames (pages of 4 KB) past which the checkpointer makes the WAL start over: about 64 MB.
const WAL_RESTART_FRAMES: i64 = 16_384;
/// What a WAL file is cut back to when it starts over (`journal_size_limit`).
pub(crate) const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Copies committed WAL pages into the database file, beside the writer. PASSIVE never blocks the writer or
/// readers, but it alone does not bound the WAL: SQLite starts the WAL over only when a write begins while
/// every frame is already copied, which under sustained writes never happens (a million accepts left a
/// 17 GB WAL beside a 1.7 GB database). So past [`WAL_RESTART_FRAMES`] a RESTART checkpoint copies the rest
/// while holding off the next write for that moment (little is left after the PASSIVE one), and the next
/// write starts the WAL over, cut back to [`WAL_SIZE_LIMIT`]. Ends when the writer ends (its sender drops).
fn checkpoint_loop(mut db: RawDb, written: std::sync::mpsc::Receiver<()>) {
    while written.recv().is_ok() {
        // Let commits accumulate: one checkpoint per 100 ms at most.
        std::thread::sleep(Duration::from_millis(100));
        while written.try_recv().is_ok() {}
        let result = wal_frames_after_passive_checkpoint(&mut db).and_then(|frames| {
            if frames > WAL_RESTART_FRAMES {
                db.exec("PRAGMA wal_checkpoint(RESTART)")
            } else {
                Ok(())
            }
        });
        if let Err(error) = result {
            tracing::warn!(%error, "WAL checkpoint failed; will retry");
        }
    }
    // Last one, so a clean shutdown leaves a small WAL.
    let _ = db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
}

/// Runs a PASSIVE checkpoint; answers how many frames the WAL holds.
fn wal_frames_after_passive_checkpoint(db: &mut RawDb) -> Result<i64, raw_db::DbError> {
    let mut stmt = db.stmt("PRAGMA wal_checkpoint(PASSIVE)")?;
    // One row: busy, frames in the WAL, frames copied.
    Ok(if stmt.step()? { stmt.int(1) } else { 0 })
}

/// The thread that owns the write connection.
struct Writer {
    db: RawDb,
    /// Tells the checkpointer that commits happened (it checkpoints at most every 100 ms).
    written: std::sync::mpsc::Sender<()>,
    clock: Arc<dyn Clock>,
    max_group: usize,
    order: CreatedOrder,
}

/// The writer's watch on creation order: the latest created_at stored, and the flag `search` reads.
struct CreatedOrder {
    latest: Millis,
    in_order: Arc<AtomicBool>,
}

impl CreatedOrder {
    /// Called before storing a message created at `now`: a clock that went back breaks the order for good,
    /// recorded in the same transaction (and at once in memory, so no search relies on it from now on).
    fn check(&mut self, db: &mut RawDb, now: Millis) -> DbResult<()> {
        if now < self.latest && self.in_order.load(Ordering::Relaxed) {
            self.in_order.store(false, Ordering::Relaxed);
            db.stmt("UPDATE store_facts SET value = 1 WHERE name = 'created_out_of_order'")?
                .execute()?;
        }
        self.latest = self.latest.max(now);
        Ok(())
    }
}

impl Writer {
    fn run(mut self, mut ops: mpsc::Receiver<WriteOp>) {
        while let Some(first) = ops.blocking_recv() {
            // Group commit: everything already waiting joins this transaction, up to the bound.
            let mut weight = first.weight();
            let mut group = vec![first];
            while weight < self.max_group {
                match ops.try_recv() {
                    Ok(op) => {
                        weight += op.weight();
                        group.push(op);
                    }
                    Err(_) => break,
                }
            }
            self.apply(group);
            let _ = self.written.send(());
        }
    }

    fn apply(&mut self, group: Vec<WriteOp>) {
        let now = self.clock.now();
        let mut answers = Vec::with_capacity(group.len());
        let result = (|| {
            self.db.exec("BEGIN IMMEDIATE")?;
            for op in &group {
                answers.push(apply_one(&mut self.db, &mut self.order, op, now)?);
            }
            self.db.exec("COMMIT")
        })();
        match result {
            Ok(()) => {
                for (op, answer) in group.into_iter().zip(answers) {
                    op.answer(Ok(answer));
                }
            }
            Err(error) => {
                // Nothing of the group was committed: every caller hears the error, none is told "stored".
                let _ = self.db.exec("ROLLBACK");
                let message = error.to_string();
                tracing::error!(error = %message, ops = group.len(), "store write failed; group rolled back");
                for op in group {
                    op.answer(Err(message.clone()));
                }
            }
        }
    }
}

/// What one op produced inside the transaction, handed to its caller after the commit.
enum Answer {
    Accepted(Vec<Accepted>),
    Claimed(Vec<Claimed>),
    Unit,
    Cancel(CancelOutcome),
    Count(u64),
}

impl WriteOp {
    fn weight(&self) -> usize {
        match self {
            WriteOp::Accept { messages, .. } => messages.len(),
            WriteOp::Record { outcomes, .. } => outcomes.len(),
            _ => 1,
        }
    }

    fn answer(self, result: Result<Answer, String>) {
        // A caller that went away (request timed out) just doesn't hear the answer; the write stands.
        match (self, result) {
            (WriteOp::Accept { reply, .. }, Ok(Answer::Accepted(v))) => drop(reply.send(Ok(v))),
            (WriteOp::Execute { reply, .. }, Ok(Answer::Count(n))) => drop(reply.send(Ok(n))),
            (WriteOp::Execute { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (WriteOp::Claim { reply, .. }, Ok(Answer::Claimed(v))) => drop(reply.send(Ok(v))),
            (WriteOp::Record { reply, .. }, Ok(Answer::Unit)) => drop(reply.send(Ok(()))),
            (WriteOp::Cancel { reply, .. }, Ok(Answer::Cancel(v))) => drop(reply.send(Ok(v))),
            (
                WriteOp::Release { reply, .. }
                | WriteOp::Prune { reply, .. }
                | WriteOp::Renew { reply, .. }
                | WriteOp::Recover { reply },
                Ok(Answer::Count(n)),
            ) => drop(reply.send(Ok(n))),
            (WriteOp::Accept { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (WriteOp::Claim { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (WriteOp::Record { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (WriteOp::Cancel { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (
                WriteOp::Release { reply, .. }
                | WriteOp::Prune { reply, .. }
                | WriteOp::Renew { reply, .. }
                | WriteOp::Recover { reply },
                Err(e),
            ) => drop(reply.send(Err(e))),
            (_, Ok(_)) => unreachable!("each op yields its own answer kind"),
        }
    }
}

fn apply_one(
    db: &mut RawDb,
    order: &mut CreatedOrder,
    op: &WriteOp,
    now: Millis,
) -> DbResult<Answer> {
    Ok(match op {
        WriteOp::Execute { sql, params, .. } => {
            Answer::Count(db.stmt(sql)?.bind(params.iter().map(Param::value))?.execute()?)
        }
        WriteOp::Accept { messages, .. } => Answer::Accepted(accept(db, order, messages, now)?),
        WriteOp::Claim { owner, lease, limit, .. } => {
            Answer::Claimed(claim(db, owner, now, now + lease.as_millis() as Millis, *limit)?)
        }
        WriteOp::Record { owner, outcomes, .. } => {
            record(db, owner, outcomes, now)?;
            Answer::Unit
        }
        WriteOp::Cancel { id, .. } => Answer::Cancel(cancel(db, id, now)?),
        WriteOp::Release { owner, .. } => Answer::Count(
            db.stmt(
                "UPDATE messages SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,
                 lease_owner = NULL, next_attempt_at = ?1 WHERE lease_owner = ?2 AND status = 'sending'",
            )?
            .bind([now.into(), owner.into()])?
            .execute()?,
        ),
        WriteOp::Prune { finished_before, .. } => Answer::Count(prune(db, *finished_before)?),
        WriteOp::Renew { owner, lease, ids, .. } => {
            let ids = serde_json::to_string(ids).expect("a list of strings is JSON");
            Answer::Count(
                db.stmt(
                    "UPDATE messages SET next_attempt_at = ?1
                     WHERE id IN (SELECT value FROM json_each(?3)) AND lease_owner = ?2 AND status = 'sending'",
                )?
                .bind([
                    (now + lease.as_millis() as Millis).into(),
                    owner.into(),
                    Value::Text(&ids),
                ])?
                .execute()?,
            )
        }
        WriteOp::Recover { .. } => Answer::Count(recover(db, now)?),
    })
}

fn event(
    db: &mut RawDb,
    id: &str,
    now: Millis,
    kind: &str,
    recipient: Option<&str>,
    detail: Option<&str>,
) -> DbResult<()> {
    db.stmt(
        "INSERT INTO events (message_id, at, type, recipient, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .bind([
        id.into(),
        now.into(),
        kind.into(),
        recipient.into(),
        detail.into(),
    ])?
    .execute()?;
    Ok(())
}

fn accept(
    db: &mut RawDb,
    order: &mut CreatedOrder,
    messages: &[NewMessage],
    now: Millis,
) -> DbResult<Vec<Accepted>> {
    let mut results = Vec::with_capacity(messages.len());
    // Shared parts used by the messages stored now, with how many use each (one write per blob per op).
    let mut blob_refs: HashMap<[u8; 32], (&SharedBlob, i64)> = HashMap::new();
    // Keys made earlier in this same group (not yet visible to a SELECT of other rows' keys).
    let mut made_here: HashMap<&str, (String, MessageStatus)> = HashMap::new();
    for message in messages {
        if let Some(key) = message.idempotency_key.as_deref() {
            // Idempotency: a key seen before returns the message it made; nothing new is queued.
            let existing = made_here.get(key).cloned().map_or_else(
                || -> DbResult<Option<(String, MessageStatus)>> {
                    let mut q =
                        db.stmt("SELECT id, status FROM messages WHERE idempotency_key = ?1")?;
                    q.bind([key.into()])?;
                    Ok(if q.step()? {
                        Some((
                            q.text(0),
                            MessageStatus::from_str(&q.text(1)).unwrap_or(MessageStatus::Queued),
                        ))
                    } else {
                        None
                    })
                },
                |found| Ok(Some(found)),
            )?;
            if let Some((id, status)) = existing {
                results.push(Accepted::Existing { id, status });
                continue;
            }
        }
        let status = match message.send_at {
            Some(at) if at > now => MessageStatus::Scheduled,
            _ => MessageStatus::Queued,
        };
        if let Some(key) = message.idempotency_key.as_deref() {
            made_here.insert(key, (message.id.clone(), status));
        }
        order.check(db, now)?;

        for segment in &message.raw {
            if let RawSegment::Shared { blob, .. } = segment {
                blob_refs.entry(blob.hash).or_insert((blob, 0)).1 += 1;
            }
        }
        let framed = raw::encode(&message.raw);
        let tags = serde_json::to_string(&message.tags).unwrap_or_else(|_| "[]".into());
        let metadata = message.metadata.to_string();
        db.stmt(
            "INSERT INTO messages (id, status, sender, subject, created_at, send_at, next_attempt_at, attempts,
             idempotency_key, batch_id, tags, metadata, raw, raw_size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?
        .bind([
            Value::Text(&message.id),
            status.as_str().into(),
            Value::Text(&message.sender),
            Value::Text(&message.subject),
            now.into(),
            message.send_at.into(),
            message.send_at.unwrap_or(now).max(now).into(),
            message.idempotency_key.as_deref().into(),
            message.batch_id.as_deref().into(),
            Value::Text(&tags),
            Value::Text(&metadata),
            Value::Blob(&framed),
            (raw::wire_size(&message.raw) as i64).into(),
        ])?
        .execute()?;
        let rowid = db.last_insert_rowid();

        let mut addresses = message.sender.clone();
        for recipient in &message.recipients {
            addresses.push(' ');
            addresses.push_str(&recipient.address);
        }
        db.stmt(
            "INSERT INTO messages_fts (rowid, subject, addresses, body) VALUES (?1, ?2, ?3, ?4)",
        )?
        // Herald's own terms (see store::search), which unicode61 then only splits at the spaces.
        .bind([
            rowid.into(),
            Value::Text(&index_terms(&message.subject)),
            Value::Text(&index_terms(&addresses)),
            Value::Text(&index_terms(&message.search_text)),
        ])?
        .execute()?;
        for (position, recipient) in message.recipients.iter().enumerate() {
            db.stmt(
                "INSERT INTO recipients (message_id, position, address, kind, status) VALUES (?1, ?2, ?3, ?4, 'pending')",
            )?
            .bind([
                Value::Text(&message.id),
                (position as i64).into(),
                Value::Text(&recipient.address),
                recipient.kind.as_str().into(),
            ])?
            .execute()?;
        }
        for tag in &message.tags {
            // OR IGNORE: a tag listed twice is one row.
            db.stmt(
                "INSERT OR IGNORE INTO message_tags (tag, created_at, message_id) VALUES (?1, ?2, ?3)",
            )?
            .bind([Value::Text(tag), now.into(), Value::Text(&message.id)])?
            .execute()?;
        }
        event(db, &message.id, now, status.as_str(), None, None)?;
        results.push(Accepted::New {
            id: message.id.clone(),
            status,
        });
    }
    // What the INSERT trigger on PostgreSQL counts, once per group here (see migrations/sqlite/0002).
    let new = |wanted: MessageStatus| {
        results
            .iter()
            .filter(|a| matches!(a, Accepted::New { status, .. } if *status == wanted))
            .count() as i64
    };
    let (queued, scheduled) = (new(MessageStatus::Queued), new(MessageStatus::Scheduled));
    if queued + scheduled > 0 {
        db.stmt("UPDATE status_counts SET queued = queued + ?1, scheduled = scheduled + ?2 WHERE shard = 0")?
            .bind([queued.into(), scheduled.into()])?
            .execute()?;
        db.stmt(
            "INSERT INTO activity (minute, shard, accepted)
             VALUES (CAST(unixepoch('subsec') * 1000 AS INTEGER) / 60000 * 60000, 0, ?1)
             ON CONFLICT (minute, shard) DO UPDATE SET accepted = accepted + excluded.accepted",
        )?
        .bind([(queued + scheduled).into()])?
        .execute()?;
    }
    for (hash, (blob, refs)) in blob_refs {
        // Stored once; `blob_refs` counts the bodies that use it, so pruning knows when it is unused.
        db.stmt("INSERT INTO blobs (hash, bytes, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (hash) DO NOTHING")?
            .bind([Value::Blob(&hash), Value::Blob(&blob.bytes), now.into()])?
            .execute()?;
        db.stmt(
            "INSERT INTO blob_refs (hash, refs) VALUES (?1, ?2) ON CONFLICT (hash) DO UPDATE SET refs = refs + excluded.refs",
        )?
        .bind([Value::Blob(&hash), refs.into()])?
        .execute()?;
    }
    Ok(results)
}

/// Takes the exclusive lock beside the database and writes who holds it (for the next one's error message).
fn lock_database(path: &Path, node: &NodeInfo) -> Result<std::fs::File, StoreError> {
    use std::io::{Read as _, Seek as _, Write as _};
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let lock_error = |source| StoreError::LockFile {
        path: lock_path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StoreError::Locked {
                path: path.display().to_string(),
                holder: if holder.is_empty() {
                    "unknown process".into()
                } else {
                    holder.to_owned()
                },
            });
        }
        Err(std::fs::TryLockError::Error(error)) => return Err(lock_error(error)),
    }
    let holder = format!("pid {} on {}, node {}", node.pid, node.host, node.id);
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(holder.as_bytes()))
        .map_err(lock_error)?;
    Ok(file)
}

/// Every `sending` message becomes due now, with an interrupted attempt on its timeline that does not count
/// (attempts unchanged). Only called by the process holding the database's lock, so their owners are dead.
fn recover(db: &mut RawDb, now: Millis) -> DbResult<u64> {
    let mut interrupted = Vec::new();
    {
        let mut q = db.stmt(
            "SELECT id, lease_owner FROM messages WHERE lease_owner IS NOT NULL AND status = 'sending'",
        )?;
        while q.step()? {
            interrupted.push((q.text(0), q.text(1)));
        }
    }
    for (id, owner) in &interrupted {
        db.stmt(
            "UPDATE messages SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,
             lease_owner = NULL, next_attempt_at = ?1 WHERE id = ?2",
        )?
        .bind([now.into(), Value::Text(id)])?
        .execute()?;
        let detail = format!(
            "interrupted: node {owner} stopped while delivering it; due again now, not counted as an attempt"
        );
        event(db, id, now, EVENT_INTERRUPTED, None, Some(&detail))?;
    }
    Ok(interrupted.len() as u64)
}

fn claim(
    db: &mut RawDb,
    owner: &str,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> DbResult<Vec<Claimed>> {
    // Due = next_attempt_at passed: queued, deferred, scheduled whose time came, or sending with an expired
    // lease (its worker died). The partial index makes this a range scan whatever the queue length.
    let mut claimed = Vec::new();
    {
        let mut q = db.stmt(
            "UPDATE messages SET status = 'sending', lease_owner = ?1, next_attempt_at = ?2
             WHERE rowid IN (SELECT rowid FROM messages WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ?3
                             ORDER BY next_attempt_at LIMIT ?4)
             RETURNING id, sender, created_at, attempts, raw",
        )?;
        q.bind([
            owner.into(),
            lease_until.into(),
            now.into(),
            i64::from(limit).into(),
        ])?;
        while q.step()? {
            claimed.push(Claimed {
                id: q.text(0),
                sender: q.text(1),
                created_at: q.int(2),
                attempts: q.int(3) as u32,
                raw: (!q.is_null(4)).then(|| q.bytes(4).to_vec()),
                recipients: Vec::new(),
            });
        }
    }
    for message in &mut claimed {
        {
            let mut q = db.stmt(
                "SELECT position, address FROM recipients
                 WHERE message_id = ?1 AND status IN ('pending', 'deferred') ORDER BY position",
            )?;
            q.bind([Value::Text(&message.id)])?;
            while q.step()? {
                message.recipients.push(ClaimedRecipient {
                    position: q.int(0) as u32,
                    address: q.text(1),
                });
            }
        }
        event(db, &message.id, now, "sending", None, None)?;
    }
    Ok(claimed)
}

fn record(db: &mut RawDb, owner: &str, outcomes: &[AttemptOutcome], now: Millis) -> DbResult<()> {
    for outcome in outcomes {
        let id = outcome.id.as_str();
        // Only the lease holder records: a node that lost the lease (taken over, or released as dead) would
        // otherwise overwrite what the new owner is doing. Its report stays visible on the timeline.
        let holds_lease = db
            .stmt(
                "SELECT 1 FROM messages WHERE id = ?1 AND lease_owner = ?2 AND status = 'sending'",
            )?
            .bind([id.into(), owner.into()])?
            .step()?;
        if !holds_lease {
            let detail = format!(
                "from {owner}, which no longer held the lease (not applied): {}",
                outcome.detail
            );
            event(db, id, now, EVENT_STALE_OUTCOME, None, Some(&detail))?;
            continue;
        }
        for r in &outcome.recipients {
            db.stmt(
                "UPDATE recipients SET status = ?1, smtp_code = ?2, enhanced_status = ?3, reply = ?4
                 WHERE message_id = ?5 AND position = ?6 AND status NOT IN ('delivered', 'failed', 'cancelled')",
            )?
            .bind([
                r.status.as_str().into(),
                r.smtp_code.map(i64::from).into(),
                r.enhanced_status.as_deref().into(),
                r.reply.as_deref().into(),
                id.into(),
                i64::from(r.position).into(),
            ])?
            .execute()?;
            let position = r.position.to_string();
            event(
                db,
                id,
                now,
                r.status.as_str(),
                Some(&position),
                r.reply.as_deref(),
            )?;
        }
        let mut statuses = Vec::new();
        {
            let mut q = db.stmt("SELECT status FROM recipients WHERE message_id = ?1")?;
            q.bind([id.into()])?;
            while q.step()? {
                if let Ok(status) = RecipientStatus::from_str(&q.text(0)) {
                    statuses.push(status);
                }
            }
        }
        let mut status = message_status_from(&statuses);
        // Deferred recipients with no retry time left: the message gave up on them.
        if matches!(status, MessageStatus::Deferred | MessageStatus::Queued)
            && outcome.retry_at.is_none()
        {
            db.stmt(
                "UPDATE recipients SET status = 'failed' WHERE message_id = ?1 AND status IN ('pending', 'deferred')",
            )?
            .bind([id.into()])?
            .execute()?;
            status = if statuses.contains(&RecipientStatus::Delivered) {
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
        let finished_at = status.is_final().then_some(now);
        db.stmt(
            "UPDATE messages SET status = ?1, attempts = attempts + ?6, next_attempt_at = ?2, lease_owner = NULL,
             finished_at = ?3 WHERE id = ?4 AND lease_owner = ?5",
        )?
        .bind([
            status.as_str().into(),
            next_attempt_at.into(),
            finished_at.into(),
            id.into(),
            owner.into(),
            i64::from(outcome.counts_attempt).into(),
        ])?
        .execute()?;
        let kind = format!("attempt_{status}");
        event(db, id, now, &kind, None, Some(&outcome.detail))?;
    }
    Ok(())
}

fn cancel(db: &mut RawDb, id: &str, now: Millis) -> DbResult<CancelOutcome> {
    let done = db
        .stmt(
            "UPDATE messages SET status = 'cancelled', next_attempt_at = NULL, finished_at = ?1
             WHERE id = ?2 AND status IN ('scheduled', 'queued', 'deferred')",
        )?
        .bind([now.into(), id.into()])?
        .execute()?;
    if done == 1 {
        db.stmt("UPDATE recipients SET status = 'cancelled' WHERE message_id = ?1 AND status IN ('pending', 'deferred')")?
            .bind([id.into()])?
            .execute()?;
        event(db, id, now, "cancelled", None, None)?;
        return Ok(CancelOutcome::Cancelled);
    }
    let mut q = db.stmt("SELECT status FROM messages WHERE id = ?1")?;
    q.bind([id.into()])?;
    Ok(if q.step()? {
        CancelOutcome::NotCancellable(
            MessageStatus::from_str(&q.text(0)).unwrap_or(MessageStatus::Sending),
        )
    } else {
        CancelOutcome::NotFound
    })
}

fn prune(db: &mut RawDb, finished_before: Millis) -> DbResult<u64> {
    let mut pruned = Vec::new();
    {
        let mut q = db.stmt(
            "SELECT id, raw FROM messages WHERE raw IS NOT NULL AND finished_at IS NOT NULL AND finished_at < ?1",
        )?;
        q.bind([finished_before.into()])?;
        while q.step()? {
            // A corrupt frame cannot hold a valid reference; pruning it releases nothing rather than failing.
            pruned.push((
                q.text(0),
                raw::shared_hashes(q.bytes(1)).unwrap_or_default(),
            ));
        }
    }
    for (id, hashes) in &pruned {
        db.stmt("UPDATE messages SET raw = NULL WHERE id = ?1")?
            .bind([Value::Text(id)])?
            .execute()?;
        for hash in hashes {
            db.stmt("UPDATE blob_refs SET refs = refs - 1 WHERE hash = ?1")?
                .bind([Value::Blob(hash)])?
                .execute()?;
        }
    }
    db.stmt("DELETE FROM blobs WHERE hash IN (SELECT hash FROM blob_refs WHERE refs <= 0)")?
        .execute()?;
    db.stmt("DELETE FROM blob_refs WHERE refs <= 0")?
        .execute()?;
    Ok(pruned.len() as u64)
}
