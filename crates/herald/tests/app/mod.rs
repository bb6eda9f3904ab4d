//! `spawn_app()` for the template, batch and token tests (zero-to-production shape, as in `tests/api.rs`): a
//! real `herald serve` in process on port 0 with a fresh database, delivering to the herald-testkit capture
//! server, and one helper per endpoint. Include with `mod common; mod app;`.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use herald::{config::Config, serve};
use herald_testkit::{ServerConfig, TestServer};
use serde_json::Value;

use crate::common::{self, Backend};

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub relay: TestServer,
    pub backend: Backend,
    /// The store's URL, for the CLI (`herald token`) and for measuring the database.
    pub database_url: String,
    /// Sent as `Authorization: Bearer` by every helper when set.
    pub token: Option<String>,
    server: Option<serve::Server>,
    pub dir: tempfile::TempDir,
}

#[derive(Clone, Copy)]
pub struct Options {
    pub api_token: Option<&'static str>,
    pub default_from: Option<&'static str>,
    /// `HERALD_BODY_LIMIT`, when a test needs a small one.
    pub body_limit: Option<usize>,
    /// The capture relay's configuration (faults, stalls), when not `ServerConfig::default()`.
    pub relay: Option<fn() -> ServerConfig>,
    /// More settings, e.g. `&[("HERALD_CONCURRENCY", "1")]`.
    pub env: &'static [(&'static str, &'static str)],
    /// No `HERALD_RELAY_URL`: mail goes to the built-in capture inbox instead of the test relay.
    pub capture_inbox: bool,
}

pub const DEFAULTS: Options = Options {
    api_token: None,
    default_from: None,
    body_limit: None,
    relay: None,
    env: &[],
    capture_inbox: false,
};

/// Starts a server on `backend`, or `None` when that backend is not available here (PostgreSQL without
/// `HERALD_TEST_POSTGRES_URL`).
pub async fn spawn_app(backend: Backend, options: Options) -> Option<TestApp> {
    let dir = tempfile::tempdir().unwrap();
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("herald.db").display()),
        Backend::Postgres => common::fresh_postgres_database().await?,
    };
    let relay = TestServer::start(options.relay.map_or_else(ServerConfig::default, |f| f())).await;
    let server = start_server(&options, &database_url, relay.port()).await;
    Some(TestApp {
        base: format!("http://{}", server.addr),
        client: reqwest::Client::new(),
        relay,
        backend,
        database_url,
        token: None,
        server: Some(server),
        dir,
    })
}

/// `herald serve` on `database_url` with `options`, delivering to the relay on `relay_port`.
async fn start_server(options: &Options, database_url: &str, relay_port: u16) -> serve::Server {
    let mut values: HashMap<String, String> = HashMap::from([
        ("HERALD_LISTEN".into(), "127.0.0.1:0".into()),
        ("HERALD_DATABASE_URL".into(), database_url.to_owned()),
    ]);
    if !options.capture_inbox {
        values.insert(
            "HERALD_RELAY_URL".into(),
            format!("smtp://127.0.0.1:{relay_port}?tls=none"),
        );
    }
    if let Some(token) = options.api_token {
        values.insert("HERALD_API_TOKEN".into(), token.into());
    }
    if let Some(from) = options.default_from {
        values.insert("HERALD_FROM".into(), from.into());
    }
    if let Some(limit) = options.body_limit {
        values.insert("HERALD_BODY_LIMIT".into(), limit.to_string());
    }
    for (name, value) in options.env {
        values.insert((*name).into(), (*value).into());
    }
    serve::start(Config::from_values(&values).unwrap())
        .await
        .unwrap()
}

impl TestApp {
    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Response {
        self.authorize(request).send().await.unwrap()
    }

    pub async fn put_template(&self, name: &str, body: &Value) -> reqwest::Response {
        self.send(
            self.client
                .put(format!("{}/v1/templates/{name}", self.base))
                .json(body),
        )
        .await
    }

    pub async fn get_template(&self, name: &str) -> reqwest::Response {
        self.send(
            self.client
                .get(format!("{}/v1/templates/{name}", self.base)),
        )
        .await
    }

    pub async fn list_templates(&self) -> reqwest::Response {
        self.send(self.client.get(format!("{}/v1/templates", self.base)))
            .await
    }

    pub async fn delete_template(&self, name: &str) -> reqwest::Response {
        self.send(
            self.client
                .delete(format!("{}/v1/templates/{name}", self.base)),
        )
        .await
    }

    pub async fn preview(&self, name: &str, body: &Value) -> reqwest::Response {
        self.send(
            self.client
                .post(format!("{}/v1/templates/{name}/preview", self.base))
                .json(body),
        )
        .await
    }

    pub async fn post_message(&self, body: &Value) -> reqwest::Response {
        self.send(
            self.client
                .post(format!("{}/v1/messages", self.base))
                .json(body),
        )
        .await
    }

    pub async fn post_batch(&self, body: &Value) -> reqwest::Response {
        self.send(
            self.client
                .post(format!("{}/v1/batches", self.base))
                .json(body),
        )
        .await
    }

    pub async fn get_message(&self, id: &str) -> reqwest::Response {
        self.send(self.client.get(format!("{}/v1/messages/{id}", self.base)))
            .await
    }

    pub async fn get_raw(&self, id: &str) -> Vec<u8> {
        let response = self
            .send(
                self.client
                    .get(format!("{}/v1/messages/{id}/raw", self.base)),
            )
            .await;
        assert_eq!(response.status().as_u16(), 200);
        response.bytes().await.unwrap().to_vec()
    }

    pub async fn list_messages(&self, query: &str) -> Value {
        self.send(
            self.client
                .get(format!("{}/v1/messages?{query}", self.base)),
        )
        .await
        .json()
        .await
        .unwrap()
    }

    pub async fn cancel(&self, id: &str) -> reqwest::Response {
        self.send(
            self.client
                .post(format!("{}/v1/messages/{id}/cancel", self.base)),
        )
        .await
    }

    /// Any path of the server (`/healthz`, `/v1/messages?status=lost` …), as a raw response.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    /// Polls the message until its status is `status` (deadline 20 s).
    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let start = Instant::now();
        loop {
            let view: Value = self.get_message(id).await.json().await.unwrap();
            if view["status"] == status {
                return view;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{id} never became {status}: {view:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Bytes the database takes on disk (SQLite: the file and its WAL) or in PostgreSQL.
    pub async fn database_bytes(&self) -> u64 {
        match self.backend {
            Backend::Sqlite => ["herald.db", "herald.db-wal"]
                .iter()
                .filter_map(|f| std::fs::metadata(self.dir.path().join(f)).ok())
                .map(|m| m.len())
                .sum(),
            Backend::Postgres => {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&self.database_url)
                    .await
                    .unwrap();
                let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                size as u64
            }
        }
    }

    pub async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
    }

    /// Stops the server and starts another on the same database and relay with `options` (a new port:
    /// `base` follows). What `herald serve` does at start (its first housekeeping) runs again.
    pub async fn restart(&mut self, options: Options) {
        self.server.take().unwrap().shutdown().await.unwrap();
        let server = start_server(&options, &self.database_url, self.relay.port()).await;
        self.base = format!("http://{}", server.addr);
        self.server = Some(server);
    }
}

/// The status and the `error` object of an error response.
pub async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error"].clone())
}

/// Runs each named `async fn(Backend)` on SQLite and on PostgreSQL, as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::Backend::Sqlite).await })+
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::Backend::Postgres).await })+
        }
    };
}
