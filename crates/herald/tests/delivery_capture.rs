//! The delivery engine with the built-in capture inbox, on a real SQLite file.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, open_realtime};
use herald::{
    delivery::{CaptureTransport, Engine, EngineOptions},
    store::{MessageStatus, NewMessage, RecipientKind},
};
use tokio::sync::watch;

fn message(n: usize) -> NewMessage {
    let customer = format!("c{n}@example.test");
    let raw = Bytes::from_static(b"Subject: x\r\n\r\nhi\r\n");
    let mut message = common::new_message(
        &format!("m{n:06}"),
        "shop@example.test",
        &[&customer, "audit@example.test"],
        raw,
    );
    message.subject = format!("Order {n}");
    message.recipients[1].kind = RecipientKind::Bcc;
    message
}

async fn wait_until(what: &str, deadline: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn capture_inbox_delivers_everything_and_shuts_down_cleanly(backend: Backend) {
    let Some((store, _dir)) = open_realtime(backend).await else {
        return;
    };
    let options = EngineOptions {
        concurrency: 16,
        ..Default::default()
    };
    let engine = Engine::new(store.clone(), CaptureTransport, options);
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(engine.run(stopped));

    for chunk in (0..500).collect::<Vec<_>>().chunks(50) {
        store
            .accept(chunk.iter().map(|n| message(*n)).collect())
            .await
            .unwrap();
    }
    wait_until(
        "all 500 are delivered",
        Duration::from_secs(20),
        async || store.counts().await.unwrap().get(&MessageStatus::Delivered) == Some(&500),
    )
    .await;
    let view = store.message("m000042").await.unwrap().unwrap();
    assert_eq!(view.attempts, 1);
    assert!(
        view.recipients
            .iter()
            .all(|r| r.status == "delivered" && r.smtp_code == Some(250))
    );
    let kinds: Vec<_> = view.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds[0], "queued");
    assert!(
        kinds.contains(&"sending") && kinds.contains(&"attempt_delivered"),
        "{kinds:?}"
    );

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("engine stops")
        .unwrap()
        .unwrap();
}

async fn a_new_message_is_picked_up_at_once_without_polling_delay(backend: Backend) {
    let Some((store, _dir)) = open_realtime(backend).await else {
        return;
    };
    // A long idle poll: only the waker can make delivery fast.
    let options = EngineOptions {
        idle_poll: Duration::from_secs(30),
        ..Default::default()
    };
    let engine = Engine::new(store.clone(), CaptureTransport, options);
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(engine.run(stopped));
    tokio::time::sleep(Duration::from_millis(50)).await; // let the engine go idle first
    let start = Instant::now();
    store.accept(vec![message(1)]).await.unwrap();
    wait_until("delivered", Duration::from_secs(5), async || {
        store.message("m000001").await.unwrap().unwrap().status == "delivered"
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
}

macro_rules! on_both {
    ($($name:ident),+) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Sqlite).await })+
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Postgres).await })+
        }
    };
}

on_both!(
    capture_inbox_delivers_everything_and_shuts_down_cleanly,
    a_new_message_is_picked_up_at_once_without_polling_delay
);
