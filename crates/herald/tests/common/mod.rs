//! Shared test helpers: a fresh store per test, on SQLite (a real file) or PostgreSQL (a fresh database).
#![allow(dead_code)]

pub mod serve;

use std::sync::Arc;

use bytes::Bytes;
use herald::{
    clock::{Clock, ManualClock, SystemClock},
    store::{
        NewMessage, NewRecipient, RawSegment, RecipientKind, SqliteOptions, SqliteStore, Store,
    },
};

/// A stored message with these bytes, To: each recipient, subject = id; override fields with `..`.
pub fn new_message(id: &str, sender: &str, recipients: &[&str], raw: Bytes) -> NewMessage {
    NewMessage {
        source: Default::default(),
        id: id.into(),
        sender: sender.into(),
        subject: id.into(),
        recipients: recipients
            .iter()
            .map(|a| NewRecipient {
                address: (*a).into(),
                kind: RecipientKind::To,
            })
            .collect(),
        search_text: String::new(),
        raw: vec![RawSegment::Literal {
            bytes: raw,
            dot_safe: false,
        }],
        send_at: None,
        idempotency_key: None,
        batch_id: None,
        tags: vec![],
        metadata: serde_json::json!({}),
        ignore_suppressions: false,
        unsubscribe_list: None,
    }
}

pub const T0: i64 = 1_790_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestStore {
    pub store: Store,
    pub clock: ManualClock,
    pub backend: Backend,
    /// SQLite: the database file's folder (removed on drop).
    pub dir: tempfile::TempDir,
    /// PostgreSQL: the URL of this test's own database.
    pub pg_url: Option<String>,
}

/// The server PostgreSQL tests create their databases on, from `HERALD_TEST_POSTGRES_URL`
/// (e.g. `postgres://postgres@127.0.0.1:5432/postgres`). Unset: PostgreSQL tests skip, saying so, unless
/// `HERALD_REQUIRE_PEERS` is set (as in CI), where they fail instead.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("HERALD_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("HERALD_REQUIRE_PEERS").is_none(),
                "HERALD_TEST_POSTGRES_URL is not set but HERALD_REQUIRE_PEERS is: PostgreSQL tests must run"
            );
            eprintln!(
                "skipping: HERALD_TEST_POSTGRES_URL is not set (no PostgreSQL to test against)"
            );
            None
        }
    }
}

/// Creates an empty database for one test and returns its URL.
pub async fn fresh_postgres_database() -> Option<String> {
    use sqlx::{Connection, Executor};
    let admin = postgres_admin_url()?;
    let name = format!("herald_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to HERALD_TEST_POSTGRES_URL");
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&admin).expect("HERALD_TEST_POSTGRES_URL is a URL");
    url.set_path(&name);
    Some(url.to_string())
}

/// A fresh store on `backend` with a manual clock at T0, or `None` when that backend is not available here.
pub async fn open(backend: Backend) -> Option<TestStore> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let (store, pg_url) = match backend {
        Backend::Sqlite => {
            let options = SqliteOptions::new(dir.path().join("herald.db"));
            (
                Store::Sqlite(SqliteStore::open(options, shared).await.unwrap()),
                None,
            )
        }
        Backend::Postgres => {
            let url = fresh_postgres_database().await?;
            (Store::open(&url, shared).await.unwrap(), Some(url))
        }
    };
    Some(TestStore {
        store,
        clock,
        backend,
        dir,
        pg_url,
    })
}

/// A fresh store on the real clock.
pub async fn open_realtime(backend: Backend) -> Option<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let store = match backend {
        Backend::Sqlite => Store::Sqlite(
            SqliteStore::open(
                SqliteOptions::new(dir.path().join("herald.db")),
                Arc::new(SystemClock),
            )
            .await
            .unwrap(),
        ),
        Backend::Postgres => Store::open(&fresh_postgres_database().await?, Arc::new(SystemClock))
            .await
            .unwrap(),
    };
    Some((store, dir))
}

/// Runs each named `async fn(TestStore)` on SQLite and on PostgreSQL, as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let t = $crate::common::open($crate::common::Backend::Sqlite).await.unwrap();
                    super::$name(t).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(t) = $crate::common::open($crate::common::Backend::Postgres).await {
                        super::$name(t).await;
                    }
                }
            )+
        }
    };
}

/// Bytes no database compresses away, so that a size check sees every copy.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
