//! The delivery engine against herald-testkit's scripted SMTP server over real sockets, on both stores:
//! retries after 4xx, permanent failures with the reply kept, per-recipient outcomes, a relay that is down
//! and comes back, and a connection dropped after the data. Retry delays pass on the injected clock.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestStore;
use herald::{
    delivery::{Engine, EngineOptions, SmtpTransport},
    store::{MessageView, NewMessage, Store},
};
use herald_smtp::{Client, Pool, PoolConfig, RelayConfig, Security};
use herald_testkit::{Action, Fault, ServerConfig, TestServer, When};
use tokio::{sync::watch, task::JoinHandle};

const BODY: &[u8] = b"From: shop@example.test\r\nTo: a@example.test\r\nSubject: hi\r\nMessage-ID: <m1@example.test>\r\n\r\n.leading dot\r\nhello\r\n";

fn message(recipients: &[&str]) -> NewMessage {
    NewMessage {
        subject: "hi".into(),
        ..common::new_message(
            "m1",
            "shop@example.test",
            recipients,
            Bytes::from_static(BODY),
        )
    }
}

struct Running {
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

fn start(store: &Store, server: &TestServer) -> Running {
    let mut relay = RelayConfig::new("127.0.0.1", server.port());
    relay.security = Security::None;
    let pool = Pool::new(Client::new(relay).unwrap(), PoolConfig::default());
    let options = EngineOptions {
        idle_poll: Duration::from_millis(20),
        relay_pause: Duration::from_millis(50),
        ..Default::default()
    };
    let engine = Engine::new(
        store.clone(),
        SmtpTransport::new(pool, "test relay"),
        options,
    );
    let (stop, stopped) = watch::channel(false);
    Running {
        stop,
        engine: tokio::spawn(engine.run(stopped)),
    }
}

/// Polls the message until `done` holds (or fails after a deadline, showing the last state).
async fn wait_for(store: &Store, what: &str, done: impl Fn(&MessageView) -> bool) -> MessageView {
    let start = Instant::now();
    loop {
        let view = store.message("m1").await.unwrap().expect("message exists");
        if done(&view) {
            return view;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting until {what}: {view:#?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn statuses(view: &MessageView) -> Vec<&str> {
    view.recipients.iter().map(|r| r.status.as_str()).collect()
}

async fn transient_reply_is_retried_then_delivered(t: TestStore) {
    let server = TestServer::start(
        ServerConfig::default()
            .fault(Fault::reply(When::RcptTo(None), "451 4.3.0 try later").on_transaction(0)),
    )
    .await;
    let running = start(&t.store, &server);
    t.store
        .accept(vec![message(&["a@example.test"])])
        .await
        .unwrap();
    let view = wait_for(&t.store, "deferred", |v| v.status == "deferred").await;
    assert_eq!(view.recipients[0].smtp_code, Some(451));
    // Not retried before the schedule says so (the first delay is 30 s on the injected clock).
    t.clock.advance(Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        t.store.message("m1").await.unwrap().unwrap().status,
        "deferred"
    );
    t.clock.advance(Duration::from_secs(20));
    let view = wait_for(&t.store, "delivered", |v| v.status == "delivered").await;
    assert_eq!(view.attempts, 2);
    let delivered: Vec<_> = server
        .transactions()
        .into_iter()
        .filter(|tx| !tx.content.is_empty())
        .collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0].content, BODY,
        "the stored bytes arrive exactly (dot-stuffing undone by the server)"
    );
    running.stop().await;
}

async fn permanent_reply_fails_and_keeps_the_reply(t: TestStore) {
    let server = TestServer::start(
        ServerConfig::default().fault(Fault::reply(When::RcptTo(None), "550 5.1.1 no such user")),
    )
    .await;
    let running = start(&t.store, &server);
    t.store
        .accept(vec![message(&["nobody@example.test"])])
        .await
        .unwrap();
    let view = wait_for(&t.store, "failed", |v| v.status == "failed").await;
    assert_eq!(view.recipients[0].smtp_code, Some(550));
    assert_eq!(view.recipients[0].enhanced_status.as_deref(), Some("5.1.1"));
    assert!(
        view.recipients[0]
            .smtp_reply
            .as_deref()
            .unwrap()
            .contains("no such user")
    );
    assert_eq!(view.attempts, 1);
    running.stop().await;
}

async fn mixed_recipients_get_their_own_outcomes(t: TestStore) {
    let server = TestServer::start(
        ServerConfig::default()
            .fault(Fault::reply(
                When::RcptTo(Some("bad@example.test".into())),
                "550 5.1.1 unknown",
            ))
            .fault(
                Fault::reply(
                    When::RcptTo(Some("later@example.test".into())),
                    "450 4.2.1 busy",
                )
                .on_transaction(0),
            ),
    )
    .await;
    let running = start(&t.store, &server);
    t.store
        .accept(vec![message(&[
            "ok@example.test",
            "later@example.test",
            "bad@example.test",
        ])])
        .await
        .unwrap();
    let view = wait_for(&t.store, "first attempt recorded", |v| v.attempts == 1).await;
    assert_eq!(statuses(&view), ["delivered", "deferred", "failed"]);
    assert_eq!(view.status, "deferred");
    t.clock.advance(Duration::from_secs(40));
    let view = wait_for(&t.store, "second attempt recorded", |v| v.attempts == 2).await;
    assert_eq!(statuses(&view), ["delivered", "delivered", "failed"]);
    assert_eq!(
        view.status, "delivered",
        "finished, and it reached some recipients"
    );
    let transactions = server.transactions();
    assert_eq!(
        transactions.last().unwrap().recipients,
        ["later@example.test"],
        "only the deferred one is resent"
    );
    running.stop().await;
}

async fn relay_down_then_up_delivers_without_burning_attempts(t: TestStore) {
    let server = TestServer::start(
        ServerConfig::default()
            .fault(Fault::reply(When::Greeting, "421 4.3.2 down for maintenance").on_connection(0))
            .fault(Fault::new(When::Greeting, Action::Drop).on_connection(1)),
    )
    .await;
    let running = start(&t.store, &server);
    t.store
        .accept(vec![message(&["a@example.test"])])
        .await
        .unwrap();
    // The relay pause is short; let the injected clock tick past it while waiting.
    let start = Instant::now();
    let view = loop {
        let view = t.store.message("m1").await.unwrap().unwrap();
        if view.status == "delivered" {
            break view;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not delivered: {view:#?}"
        );
        t.clock.advance(Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        view.attempts, 1,
        "the relay's outages did not count as attempts of the message"
    );
    assert!(server.connections() >= 3);
    assert!(
        view.events
            .iter()
            .any(|e| e.detail.as_deref().is_some_and(|d| d.contains("421")))
    );
    running.stop().await;
}

async fn connection_dropped_after_data_is_retried(t: TestStore) {
    let server = TestServer::start(
        ServerConfig::default().fault(Fault::new(When::DataEnd, Action::Drop).on_transaction(0)),
    )
    .await;
    let running = start(&t.store, &server);
    t.store
        .accept(vec![message(&["a@example.test"])])
        .await
        .unwrap();
    let view = wait_for(&t.store, "deferred", |v| v.status == "deferred").await;
    assert!(
        view.recipients[0]
            .smtp_reply
            .as_deref()
            .unwrap()
            .contains("outcome unknown"),
        "{view:#?}"
    );
    t.clock.advance(Duration::from_secs(40));
    let view = wait_for(&t.store, "delivered", |v| v.status == "delivered").await;
    assert_eq!(view.attempts, 2);
    running.stop().await;
}

on_both_stores!(
    transient_reply_is_retried_then_delivered,
    permanent_reply_fails_and_keeps_the_reply,
    mixed_recipients_get_their_own_outcomes,
    relay_down_then_up_delivers_without_burning_attempts,
    connection_dropped_after_data_is_retried,
);
