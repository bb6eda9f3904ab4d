//! A relay's `pool=`, `rate=` and `domain_concurrency=` are totals for the whole cluster: the engine splits
//! them by the live-node count it is given (`EngineOptions::live_nodes`, fed by the heartbeat in `herald
//! serve`) and re-splits when the count changes, without dropping work in flight. Here the count is fed by
//! hand and a herald-testkit relay over real sockets measures what arrives. The limits do not depend on
//! the store, so these run on SQLite only.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::{
    delivery::{Engine, EngineOptions, RelayBoard, RelayLimits, Route, Routes, SmtpTransport},
    store::{NewMessage, Store},
};
use herald_smtp::{Client, Pool, PoolConfig, RelayConfig, Security};
use herald_testkit::{Action, Fault, ServerConfig, TestServer, When};
use tokio::{sync::watch, task::JoinHandle};

fn message(id: &str, to: &str) -> NewMessage {
    let body = format!(
        "From: shop@example.test\r\nTo: {to}\r\nSubject: {id}\r\nMessage-ID: <{id}@example.test>\r\n\r\n{id}\r\n"
    );
    common::new_message(id, "shop@example.test", &[to], Bytes::from(body))
}

async fn accept(store: &Store, prefix: &str, count: usize, to: &str) {
    let messages = (0..count)
        .map(|i| message(&format!("{prefix}{i:04}"), to))
        .collect();
    store.accept(messages).await.unwrap();
}

fn relay(server: &TestServer, connections: usize, limits: RelayLimits) -> Routes<SmtpTransport> {
    let mut config = RelayConfig::new("127.0.0.1", server.port());
    config.security = Security::None;
    let pool = Pool::new(
        Client::new(config).unwrap(),
        PoolConfig {
            max_connections: connections,
            ..PoolConfig::default()
        },
    );
    Routes::single(Route::new(
        "cluster relay",
        SmtpTransport::new(pool, "cluster relay"),
        limits,
    ))
}

struct Running {
    nodes: watch::Sender<u32>,
    board: RelayBoard,
    stop: watch::Sender<bool>,
    engine: JoinHandle<Result<(), herald::store::StoreError>>,
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.engine)
            .await
            .expect("engine stops")
            .unwrap()
            .unwrap();
    }
}

fn start(store: &Store, routes: Routes<SmtpTransport>, nodes: u32) -> Running {
    let (nodes_tx, live_nodes) = watch::channel(nodes);
    let board = RelayBoard::default();
    let options = EngineOptions {
        idle_poll: Duration::from_millis(20),
        shutdown_grace: Duration::from_millis(500),
        board: board.clone(),
        live_nodes,
        ..Default::default()
    };
    let (stop, stopped) = watch::channel(false);
    let engine = Engine::with_routes(store.clone(), routes, options);
    Running {
        nodes: nodes_tx,
        board,
        stop,
        engine: tokio::spawn(engine.run(stopped)),
    }
}

/// Messages the relay received during `window`, after letting `settle` pass first.
async fn received_during(server: &TestServer, settle: Duration, window: Duration) -> usize {
    tokio::time::sleep(settle).await;
    let before = server.transactions().len();
    tokio::time::sleep(window).await;
    server.transactions().len() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_follows_the_live_node_count() {
    let t = common::open(common::Backend::Sqlite).await.unwrap();
    let server = TestServer::capture().await;
    let limits = RelayLimits {
        rate: Some(40.0),
        ..Default::default()
    };
    accept(&t.store, "r", 400, "a@dest.example").await;
    let running = start(&t.store, relay(&server, 4, limits), 1);
    let settle = Duration::from_millis(300);
    // Alone: the whole 40/s.
    let alone = received_during(&server, settle, Duration::from_secs(1)).await;
    // Four nodes: 10/s each.
    running.nodes.send(4).unwrap();
    let quarter = received_during(&server, settle, Duration::from_secs(2)).await;
    // Two nodes (two of the four died): 20/s.
    running.nodes.send(2).unwrap();
    let half = received_during(&server, settle, Duration::from_secs(1)).await;
    eprintln!("alone {alone}/1 s, a quarter {quarter}/2 s, a half {half}/1 s");
    assert!((34..=46).contains(&alone), "alone: {alone} in 1 s at 40/s");
    assert!(
        (16..=24).contains(&quarter),
        "four nodes: {quarter} in 2 s at 10/s"
    );
    assert!(
        (16..=24).contains(&half),
        "two nodes: {half} in 1 s at 20/s"
    );
    let relay = &running.board.snapshot()[0];
    assert_eq!(relay.live_nodes, 2);
    assert_eq!(relay.max_sessions, 2, "a half of pool=4");
    running.stop().await;
}

/// The most sessions the relay had open at once while sampling for `window`.
async fn most_open_during(server: &TestServer, window: Duration) -> usize {
    let end = Instant::now() + window;
    let mut most = 0;
    while Instant::now() < end {
        most = most.max(server.open_connections());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_count_follows_the_live_node_count() {
    let t = common::open(common::Backend::Sqlite).await.unwrap();
    // Every final reply takes 100 ms, so sessions in use stay open and are counted by the relay.
    let server = TestServer::start(ServerConfig::default().fault(Fault::new(
        When::DataEnd,
        Action::Delay(Duration::from_millis(100), "250 2.0.0 Ok".into()),
    )))
    .await;
    let limits = RelayLimits {
        batch: 1,
        ..Default::default()
    };
    accept(&t.store, "s", 600, "a@dest.example").await;
    let running = start(&t.store, relay(&server, 6, limits), 1);
    server
        .wait_until("six sessions at once", |s| s.open_connections() == 6)
        .await;
    // Three nodes: two sessions each. The batches in flight finish (100 ms), then no more than two.
    running.nodes.send(3).unwrap();
    server
        .wait_until("down to two sessions", |s| s.open_connections() <= 2)
        .await;
    let delivered_at_change = server.transactions().len();
    let three = most_open_during(&server, Duration::from_millis(800)).await;
    assert_eq!(three, 2, "pool=6 over three nodes");
    assert!(
        server.transactions().len() > delivered_at_change + 8,
        "two sessions keep delivering"
    );
    let relay = &running.board.snapshot()[0];
    assert_eq!((relay.live_nodes, relay.max_sessions), (3, 2));
    // One node died: three sessions each.
    running.nodes.send(2).unwrap();
    let two = most_open_during(&server, Duration::from_millis(800)).await;
    assert_eq!(two, 3, "pool=6 over two nodes");
    // More nodes than the total: each still keeps one session.
    running.nodes.send(8).unwrap();
    server
        .wait_until("down to one session", |s| s.open_connections() <= 1)
        .await;
    let eight = most_open_during(&server, Duration::from_millis(500)).await;
    assert_eq!(eight, 1);
    running.stop().await;
    // Nothing in flight was lost to the changes: every transaction the relay saw was recorded delivered.
    let seen = server.transactions().len();
    let mut delivered = 0;
    for i in 0..600 {
        let view = t.store.message(&format!("s{i:04}")).await.unwrap().unwrap();
        if view.status == "delivered" {
            delivered += 1;
            assert_eq!(view.attempts, 1);
        }
    }
    assert_eq!(delivered, seen, "every message the relay took was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domain_cap_is_split_too() {
    let t = common::open(common::Backend::Sqlite).await.unwrap();
    let server = TestServer::start(ServerConfig::default().fault(Fault::new(
        When::DataEnd,
        Action::Delay(Duration::from_millis(100), "250 2.0.0 Ok".into()),
    )))
    .await;
    let limits = RelayLimits {
        domain_concurrency: Some(4),
        batch: 1,
        ..Default::default()
    };
    accept(&t.store, "d", 200, "a@dest.example").await;
    // Two nodes from the start: the pool share is 4, the domain share 2.
    let running = start(&t.store, relay(&server, 8, limits), 2);
    server
        .wait_until("mail flows", |s| s.transactions().len() >= 4)
        .await;
    let two = most_open_during(&server, Duration::from_millis(600)).await;
    assert_eq!(two, 2, "domain_concurrency=4 over two nodes");
    running.nodes.send(1).unwrap();
    let alone = most_open_during(&server, Duration::from_millis(600)).await;
    assert_eq!(alone, 4, "alone: the whole domain_concurrency");
    running.stop().await;
}
