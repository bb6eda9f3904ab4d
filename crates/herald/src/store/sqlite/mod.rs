//! The embedded store on SQLite: WAL, one writer task doing group commit, one syncer making it durable.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync. So all writes go through one task
//! that owns the write connection: it takes every request waiting in its channel, applies them in ONE
//! transaction and commits once; the [`syncer`] thread then syncs the WAL, once for every group committed
//! meanwhile, and only then answers each caller. Under load, thousands of accepts share one fsync (group
//! commit, DESIGN.md invariant 1), and the writer applies the next group while the last one syncs; alone, a
//! request commits and syncs at once. Reads use a separate pool, which WAL lets run beside the writer.
//!
//! This file opens the database and holds what every concern shares; the concerns sit beside it, named as
//! their PostgreSQL counterparts in `store/postgres/`: [`writer`] (the group-commit thread), `accept`,
//! `queue` (claim, record, cancel, leases), `archive` (bodies, one message, timeline lines), `search`,
//! `activity` (status counters and per-minute activity), `templates`, `auth` (API tokens, dashboard
//! sessions) and `nodes` (the file lock, recovery at start).

mod accept;
mod activity;
mod archive;
mod auth;
// DKIM keys (issue 13).
mod dkim;
mod indexer;
// Bounce and complaint intake (issue 12).
mod nodes;
mod profile;
mod queue;
mod raw_db;
mod reports;
mod search;
// The suppression list (issue 12).
mod suppressions;
mod syncer;
mod templates;
// Webhooks (issue 12).
mod webhooks;
mod writer;

pub use self::{
    indexer::IndexLag,
    profile::{WriterPhase, WriterProfile},
    raw_db::SqliteError,
    syncer::SyncProfile,
};

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use sqlx::{
    Connection, Row, SqlSafeStr as _, SqliteConnection,
    migrate::{Migration, MigrationType, Migrator},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};
use tokio::sync::{mpsc, oneshot};

use self::{
    accept::CreatedOrder,
    indexer::{IndexQueue, index_loop, unindexed},
    raw_db::{RawDb, Value},
    syncer::{Committed, sync_loop, wal_path},
    writer::{IndexBook, WAL_SIZE_LIMIT, WriteOp, WriteResult, Writer, checkpoint_loop},
};
use super::{Millis, StoreError, WorkSignal};
use crate::clock::Clock;

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
            max_group: super::rules::MAX_GROUP,
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
    /// Messages stored and not yet in the full-text index (see `indexer`).
    index: Arc<IndexQueue>,
    profile: Arc<WriterProfile>,
    sync_profile: Arc<SyncProfile>,
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
        // Issue 11, numbered after the issue as issue 13 does.
        migration(
            11,
            "message source",
            include_str!("../../../migrations/sqlite/0011_message_source.sql"),
        ),
        // Issue 13; numbered after the issue so that migrations added meanwhile by other work do not collide.
        migration(
            13,
            "dkim keys",
            include_str!("../../../migrations/sqlite/0013_dkim_keys.sql"),
        ),
        // Issue 12 (numbered 14: issues 11 and 13 took their numbers first).
        migration(
            14,
            "webhooks",
            include_str!("../../../migrations/sqlite/0014_webhooks.sql"),
        ),
        // Issue 12, part B (suppression list, one-click unsubscribe); numbered as assigned to it.
        migration(
            15,
            "suppressions",
            include_str!("../../../migrations/sqlite/0015_suppressions.sql"),
        ),
        // Issue 12, part C (bounce and complaint intake).
        migration(
            16,
            "inbound",
            include_str!("../../../migrations/sqlite/0016_inbound.sql"),
        ),
        // Issue 14: the full-text index filled beside the accept commit.
        migration(
            17,
            "background index",
            include_str!("../../../migrations/sqlite/0017_background_index.sql"),
        ),
        // Issue 12: one-click unsubscribe on stored templates.
        migration(
            18,
            "template unsubscribe",
            include_str!("../../../migrations/sqlite/0018_template_unsubscribe.sql"),
        ),
        // Issue 12: the index the pruning of expired suppressions reads.
        migration(
            19,
            "suppression expiry",
            include_str!("../../../migrations/sqlite/0019_suppression_expiry.sql"),
        ),
        migration(
            20,
            "message bodies",
            include_str!("../../../migrations/sqlite/0020_message_bodies.sql"),
        ),
        migration(
            21,
            "claims and outcomes count their own status changes",
            include_str!("../../../migrations/sqlite/0021_writer_counted.sql"),
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
        let (indexed_through, recovered) = unindexed(&mut write_conn).await?;
        if !recovered.is_empty() {
            tracing::info!(
                messages = recovered.len(),
                "indexing messages stored before the last stop and not yet searchable"
            );
        }
        let index = Arc::new(IndexQueue::default());
        let profile = Arc::new(WriterProfile::default());
        index.push(recovered);
        let reader = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .connect_with(connect.read_only(true))
            .await
            .map_err(|source| StoreError::Open {
                url: options.path.display().to_string(),
                source,
            })?;
        drop(write_conn);
        let open_error = |source| StoreError::OpenWriter {
            url: options.path.display().to_string(),
            source,
        };
        let db = RawDb::open(&options.path).map_err(open_error)?;
        // The writer commits without syncing (NORMAL); the syncer thread syncs the WAL for many commits at
        // once before their callers hear "stored" (see `syncer`), which is the durability of FULL for every
        // answered write. Checkpoints are not the writer's job: moving WAL pages into the database (and its
        // fsync) ran on the writer's critical path for about a seventh of its time; the checkpointer thread
        // does it beside it.
        for pragma in [
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
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
        let (durable, committed) = std::sync::mpsc::channel::<Committed>();
        let sync_profile = Arc::new(SyncProfile::default());
        let task = Writer {
            db,
            clock: clock.clone(),
            max_group: options.max_group.max(1),
            written,
            durable,
            order: CreatedOrder {
                latest: latest_created,
                in_order: created_in_order.clone(),
            },
            index: IndexBook {
                queue: index.clone(),
                indexed_through,
                fresh: Vec::new(),
            },
            profile: profile.clone(),
        };
        let spawn_error = |source| StoreError::Thread {
            url: options.path.display().to_string(),
            source,
        };
        std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn(move || task.run(ops))
            .map_err(spawn_error)?;
        let (wal, synced) = (wal_path(&options.path), sync_profile.clone());
        std::thread::Builder::new()
            .name("herald-store-sync".into())
            .spawn(move || sync_loop(wal, committed, synced))
            .map_err(spawn_error)?;
        std::thread::Builder::new()
            .name("herald-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, written_rx))
            .map_err(spawn_error)?;
        let (queue, weak_writer) = (index.clone(), writer.downgrade());
        std::thread::Builder::new()
            .name("herald-indexer".into())
            .spawn(move || index_loop(queue, weak_writer))
            .map_err(spawn_error)?;
        Ok(Self {
            path: options.path.clone(),
            reader,
            writer,
            clock,
            work: WorkSignal::default(),
            created_in_order,
            index,
            profile,
            sync_profile,
        })
    }

    async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<WriteResult<T>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::from)
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

    /// Where the writer thread's time went since the store opened (for `herald bench store`).
    pub fn writer_profile(&self) -> &WriterProfile {
        &self.profile
    }

    /// How many syncs made how many group commits durable, and their time (for `herald bench store`).
    pub fn sync_profile(&self) -> &SyncProfile {
        &self.sync_profile
    }

    /// How far the full-text index is behind the stored messages.
    pub fn search_index_lag(&self) -> IndexLag {
        self.index.lag()
    }

    pub fn work_signal(&self) -> &WorkSignal {
        &self.work
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::raw::{self, RawSegment};

    /// A store made before migration 0020 kept each body in `messages.raw`: opening it moves the bodies to
    /// `message_bodies`, where reading, claiming and pruning find them.
    #[tokio::test]
    async fn bodies_stored_before_migration_20_are_moved_and_still_read_claimed_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let connect = connect_options(&path);
        {
            let mut conn = SqliteConnection::connect_with(&connect).await.unwrap();
            let all = migrator();
            let before =
                Migrator::with_migrations(all.iter().filter(|m| m.version < 20).cloned().collect());
            before.run(&mut conn).await.unwrap();
            let body = raw::encode(&[RawSegment::Literal {
                dot_safe: true,
                bytes: bytes::Bytes::from_static(b"Subject: old\r\n\r\nkept\r\n"),
            }]);
            for (id, finished) in [("queued-1", None), ("done-1", Some(1_i64))] {
                sqlx::query(
                    "INSERT INTO messages (id, status, sender, subject, created_at, next_attempt_at, raw, raw_size,
                     finished_at) VALUES (?1, ?2, 'a@example.com', 'old', 1, ?3, ?4, 24, ?5)",
                )
                .bind(id)
                .bind(if finished.is_some() { "delivered" } else { "queued" })
                .bind(if finished.is_some() { None } else { Some(1_i64) })
                .bind(&body)
                .bind(finished)
                .execute(&mut conn)
                .await
                .unwrap();
            }
        }
        let store = SqliteStore::open(
            SqliteOptions::new(path.clone()),
            Arc::new(crate::clock::SystemClock),
        )
        .await
        .unwrap();
        for id in ["queued-1", "done-1"] {
            let raw = store.raw(id).await.unwrap().expect("moved");
            assert_eq!(
                crate::service::join(&raw),
                &b"Subject: old\r\n\r\nkept\r\n"[..]
            );
        }
        let claimed = store
            .claim("node", std::time::Duration::from_secs(60), 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, "queued-1");
        assert_eq!(
            crate::service::join(&claimed[0].raw),
            &b"Subject: old\r\n\r\nkept\r\n"[..]
        );
        assert_eq!(store.prune_raw(10).await.unwrap(), 1);
        assert!(store.raw("done-1").await.unwrap().is_none());
        assert!(store.raw("queued-1").await.unwrap().is_some());
    }
}
