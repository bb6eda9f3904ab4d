//! The per-relay pool: hard cap, reuse without NOOP, reconnection, limits.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{message, relay};
use herald_smtp::{Client, Envelope, Pool, PoolConfig, Status};
use herald_testkit::{Action, Fault, ServerConfig, TestServer, When};

fn pool(server: &TestServer, max_connections: usize) -> Pool {
    Pool::new(
        Client::new(relay(server)).unwrap(),
        PoolConfig {
            max_connections,
            ..PoolConfig::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_is_never_exceeded() {
    let server = TestServer::capture().await;
    let pool = pool(&server, 3);
    let body = Arc::new(message("cap"));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (pool, body) = (pool.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            pool.send_raw(
                &Envelope::new("a@sender.test", [format!("r{i}@rcpt.test")]),
                &body,
            )
            .await
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap().unwrap().all_accepted());
    }
    assert_eq!(server.transactions().len(), 40);
    assert!(
        server.peak_connections() <= 3,
        "server saw {} connections at once",
        server.peak_connections()
    );
    let stats = pool.stats();
    assert!(stats.peak_open <= 3 && stats.opened <= 3, "{stats:?}");
    assert!(stats.reused >= 37, "{stats:?}");
}

#[tokio::test]
async fn sessions_are_reused_without_noop() {
    let server = TestServer::capture().await;
    let pool = pool(&server, 1);
    for i in 0..5 {
        pool.send_raw(
            &Envelope::new("a@sender.test", ["b@rcpt.test"]),
            &message(&format!("m{i}")),
        )
        .await
        .unwrap();
    }
    assert_eq!(server.connections(), 1);
    assert_eq!(server.transactions().len(), 5);
    assert!(
        !server
            .commands()
            .iter()
            .any(|(_, line)| line.eq_ignore_ascii_case("NOOP"))
    );
    assert_eq!(pool.stats().reused, 4);
}

#[tokio::test]
async fn a_failed_session_is_replaced_by_a_fresh_one() {
    let config =
        ServerConfig::default().fault(Fault::new(When::DataEnd, Action::Drop).on_transaction(0));
    let server = TestServer::start(config).await;
    let pool = pool(&server, 1);
    let envelope = Envelope::new("a@sender.test", ["b@rcpt.test"]);
    let error = pool
        .send_raw(&envelope, &message("first"))
        .await
        .unwrap_err();
    assert!(error.outcome_unknown());
    assert!(
        pool.send_raw(&envelope, &message("second"))
            .await
            .unwrap()
            .all_accepted()
    );
    assert_eq!(server.connections(), 2);
    assert_eq!(server.transactions().last().unwrap().connection, 1);
}

#[tokio::test]
async fn a_session_that_died_while_idle_is_retried_once_on_a_fresh_one() {
    // The server drops the pooled session when the second transaction starts, before
    // acknowledging anything: the pool must retry on a new session, transparently.
    let config = ServerConfig::default().fault(
        Fault::new(When::MailFrom, Action::Drop)
            .on_connection(0)
            .on_transaction(1),
    );
    let server = TestServer::start(config).await;
    let pool = pool(&server, 1);
    let envelope = Envelope::new("a@sender.test", ["b@rcpt.test"]);
    pool.send_raw(&envelope, &message("first")).await.unwrap();
    let delivery = pool.send_raw(&envelope, &message("second")).await.unwrap();
    assert!(delivery.all_accepted());
    assert_eq!(server.connections(), 2);
    assert_eq!(server.transactions().len(), 2);
}

#[tokio::test]
async fn a_pool_whose_relay_went_away_reports_a_transient_error() {
    let server = TestServer::capture().await;
    let pool = pool(&server, 1);
    let envelope = Envelope::new("a@sender.test", ["b@rcpt.test"]);
    pool.send_raw(&envelope, &message("first")).await.unwrap();
    drop(server);
    // The idle session is dead and nothing listens any more: a transient error, not a hang.
    let error = pool
        .send_raw(&envelope, &message("second"))
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(pool.stats().open, 0);
}

#[tokio::test]
async fn all_recipients_refused_then_the_pooled_session_is_reused() {
    let config = ServerConfig::default()
        .fault(Fault::reply(When::RcptTo(None), "550 5.1.1 Unknown").on_transaction(0));
    let server = TestServer::start(config).await;
    let pool = pool(&server, 1);
    let delivery = pool
        .send_raw(
            &Envelope::new("a@sender.test", ["x@rcpt.test"]),
            &message("a"),
        )
        .await
        .unwrap();
    assert_eq!(delivery.recipients[0].status, Status::Permanent);
    assert!(
        pool.send_raw(
            &Envelope::new("a@sender.test", ["y@rcpt.test"]),
            &message("b")
        )
        .await
        .unwrap()
        .all_accepted()
    );
    assert_eq!(server.connections(), 1);
    assert!(server.commands().iter().any(|(_, line)| line == "RSET"));
}

#[tokio::test]
async fn sessions_are_closed_after_the_message_limit() {
    let server = TestServer::capture().await;
    let pool = Pool::new(
        Client::new(relay(&server)).unwrap(),
        PoolConfig {
            max_connections: 1,
            max_messages_per_connection: 2,
            ..PoolConfig::default()
        },
    );
    for i in 0..5 {
        pool.send_raw(
            &Envelope::new("a@sender.test", ["b@rcpt.test"]),
            &message(&format!("m{i}")),
        )
        .await
        .unwrap();
    }
    assert_eq!(server.connections(), 3);
    assert_eq!(
        server
            .commands()
            .iter()
            .filter(|(_, line)| line == "QUIT")
            .count(),
        2
    );
    pool.close().await;
    assert_eq!(pool.stats().open, 0);
    server
        .wait_until("every session is closed", |s| s.open_connections() == 0)
        .await;
}

#[tokio::test]
async fn expired_sessions_are_not_reused() {
    let server = TestServer::capture().await;
    let envelope = Envelope::new("a@sender.test", ["b@rcpt.test"]);
    for limits in [
        PoolConfig {
            max_connections: 1,
            idle_timeout: Duration::ZERO,
            ..PoolConfig::default()
        },
        PoolConfig {
            max_connections: 1,
            max_lifetime: Duration::ZERO,
            ..PoolConfig::default()
        },
    ] {
        let pool = Pool::new(Client::new(relay(&server)).unwrap(), limits);
        for i in 0..3 {
            pool.send_raw(&envelope, &message(&format!("m{i}")))
                .await
                .unwrap();
        }
        let stats = pool.stats();
        assert_eq!((stats.opened, stats.reused), (3, 0), "{limits:?}");
    }
    assert_eq!(server.connections(), 6);
}

#[tokio::test]
async fn close_expired_quits_idle_sessions_past_their_time() {
    let server = TestServer::capture().await;
    let envelope = Envelope::new("a@sender.test", ["b@rcpt.test"]);
    let fresh = pool(&server, 2);
    fresh.send_raw(&envelope, &message("kept")).await.unwrap();
    fresh.close_expired().await;
    assert_eq!(fresh.stats().open, 1);

    let stale = Pool::new(
        Client::new(relay(&server)).unwrap(),
        PoolConfig {
            idle_timeout: Duration::ZERO,
            ..PoolConfig::default()
        },
    );
    stale
        .send_raw(&envelope, &message("expired"))
        .await
        .unwrap();
    stale.close_expired().await;
    assert_eq!(stale.stats().open, 0);
    assert_eq!(
        server
            .commands()
            .iter()
            .filter(|(_, line)| line == "QUIT")
            .count(),
        1
    );
}

/// Sends `count` messages at once through `pool`; every one must be accepted.
async fn send_all(pool: &Pool, count: usize, tag: &str) {
    let body = Arc::new(message(tag));
    let mut tasks = Vec::new();
    for i in 0..count {
        let (pool, body) = (pool.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            pool.send_raw(
                &Envelope::new("a@sender.test", [format!("r{i}@rcpt.test")]),
                &body,
            )
            .await
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap().unwrap().all_accepted());
    }
}

/// The cap follows a herald node's share of a cluster-wide `pool=`: lowered while every session is busy,
/// nothing in flight fails and the relay soon sees no more than the new cap; raised, it is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_can_be_lowered_and_raised_while_sessions_are_busy() {
    // Every final reply takes 200 ms: sessions stay busy long enough to count them.
    let server = TestServer::start(ServerConfig::default().fault(Fault::new(
        When::DataEnd,
        Action::Delay(Duration::from_millis(200), "250 2.0.0 Ok".into()),
    )))
    .await;
    let pool = pool(&server, 4);
    let busy = {
        let pool = pool.clone();
        tokio::spawn(async move { send_all(&pool, 8, "busy").await })
    };
    server
        .wait_until("four sessions busy", |s| s.open_connections() == 4)
        .await;
    pool.set_max_connections(1);
    assert_eq!(pool.max_connections(), 1);
    // In flight at the change: all of them finish, and the sessions beyond the cap close as they do.
    busy.await.unwrap();
    server
        .wait_until("sessions beyond the cap closed", |s| {
            s.open_connections() <= 1
        })
        .await;
    let peak_before = server.peak_connections();
    let mut most_open = 0;
    let sending = {
        let pool = pool.clone();
        tokio::spawn(async move { send_all(&pool, 6, "one").await })
    };
    let started = std::time::Instant::now();
    while !sending.is_finished() {
        most_open = most_open.max(server.open_connections());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sending.await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(6 * 200),
        "one session at a time: six 200 ms replies in a row"
    );
    assert_eq!(most_open, 1, "one session open at most under a cap of 1");
    assert_eq!(server.peak_connections(), peak_before);

    pool.set_max_connections(3);
    let started = std::time::Instant::now();
    send_all(&pool, 6, "three").await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(5 * 200),
        "three sessions at once after raising the cap: {elapsed:?}"
    );
    assert!(pool.stats().open <= 3, "{:?}", pool.stats());
    assert_eq!(server.transactions().len(), 20);
}
