//! Relays and their limits, against herald-testkit servers over real sockets, on both stores: the sender's
//! domain picks the relay, a relay that is down pauses only itself, the message rate and the per-domain
//! session cap hold, and a pipelined batch keeps every recipient's own outcome.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestStore;
use herald::{
    delivery::{Engine, EngineOptions, RelayLimits, Route, Routes, SmtpTransport},
    store::{MessageView, NewMessage, Store},
};
use herald_smtp::{Client, Pool, PoolConfig, RelayConfig, Security};
use herald_testkit::{Action, Fault, ServerConfig, TestServer, When};
use tokio::{sync::watch, task::JoinHandle};

fn message(id: &str, sender: &str, recipients: &[&str]) -> NewMessage {
    let body = format!(
        "From: {sender}\r\nTo: {}\r\nSubject: {id}\r\nMessage-ID: <{id}@example.test>\r\n\r\n.dot\r\n{id}\r\n",
        recipients.join(", ")
    );
    common::new_message(id, sender, recipients, Bytes::from(body))
}

fn relay(
    server: &TestServer,
    name: &str,
    connections: usize,
    limits: RelayLimits,
) -> Route<SmtpTransport> {
    let mut config = RelayConfig::new("127.0.0.1", server.port());
    config.security = Security::None;
    let pool = Pool::new(
        Client::new(config).unwrap(),
        PoolConfig {
            max_connections: connections,
            ..PoolConfig::default()
        },
    );
    Route::new(name, SmtpTransport::new(pool, name), limits)
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

fn options() -> EngineOptions {
    EngineOptions {
        idle_poll: Duration::from_millis(20),
        relay_pause: Duration::from_secs(60),
        shutdown_grace: Duration::from_millis(300),
        ..Default::default()
    }
}

fn start(store: &Store, routes: Routes<SmtpTransport>, options: EngineOptions) -> Running {
    let (stop, stopped) = watch::channel(false);
    let engine = Engine::with_routes(store.clone(), routes, options);
    Running {
        stop,
        engine: tokio::spawn(engine.run(stopped)),
    }
}

/// Polls until every listed message satisfies `done` (fails after a deadline, showing the first laggard).
async fn wait_all(
    store: &Store,
    ids: &[String],
    what: &str,
    done: impl Fn(&MessageView) -> bool,
) -> Vec<MessageView> {
    let start = Instant::now();
    loop {
        let mut views = Vec::new();
        for id in ids {
            views.push(store.message(id).await.unwrap().expect("message exists"));
        }
        match views.iter().find(|v| !done(v)) {
            None => return views,
            Some(laggard) => assert!(
                start.elapsed() < Duration::from_secs(15),
                "timed out waiting until {what}: {laggard:#?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

async fn the_sender_domain_picks_the_relay(t: TestStore) {
    let shop = TestServer::capture().await;
    let other = TestServer::capture().await;
    let routes = Routes::new(
        vec![
            relay(&other, "default", 2, RelayLimits::default()),
            relay(&shop, "shop", 2, RelayLimits::default())
                .for_domains(["shop.example", "*.shop.example"]),
        ],
        0,
    )
    .unwrap();
    let running = start(&t.store, routes, options());
    let messages = [
        ("m1", "orders@shop.example"),
        ("m2", "news@other.example"),
        ("m3", "Billing@SHOP.example"),
        ("m4", "alerts@eu.shop.example"),
        ("m5", "someone@notshop.example"),
    ];
    t.store
        .accept(
            messages
                .iter()
                .map(|(id, sender)| message(id, sender, &["rcpt@dest.example"]))
                .collect(),
        )
        .await
        .unwrap();
    let all: Vec<String> = messages.iter().map(|(id, _)| id.to_string()).collect();
    wait_all(&t.store, &all, "delivered", |v| v.status == "delivered").await;
    let mut via_shop: Vec<String> = shop
        .transactions()
        .into_iter()
        .map(|t| t.mail_from)
        .collect();
    let mut via_default: Vec<String> = other
        .transactions()
        .into_iter()
        .map(|t| t.mail_from)
        .collect();
    via_shop.sort();
    via_default.sort();
    assert_eq!(
        via_shop,
        [
            "Billing@SHOP.example",
            "alerts@eu.shop.example",
            "orders@shop.example"
        ]
    );
    assert_eq!(
        via_default,
        ["news@other.example", "someone@notshop.example"]
    );
    running.stop().await;
}

async fn a_paused_relay_does_not_hold_up_another_relays_mail(t: TestStore) {
    // The shop relay answers 421 to every connection; the default relay works.
    let down = TestServer::start(ServerConfig::default().fault(Fault::reply(
        When::Greeting,
        "421 4.3.2 down for maintenance",
    )))
    .await;
    let up = TestServer::capture().await;
    let routes = Routes::new(
        vec![
            relay(&up, "default", 2, RelayLimits::default()),
            relay(&down, "shop", 1, RelayLimits::default()).for_domains(["shop.example"]),
        ],
        0,
    )
    .unwrap();
    // Few slots: mail for the paused relay must not sit in them.
    let running = start(
        &t.store,
        routes,
        EngineOptions {
            concurrency: 4,
            ..options()
        },
    );
    let shop_ids = ids("s", 12);
    let other_ids = ids("o", 8);
    t.store
        .accept(
            shop_ids
                .iter()
                .map(|id| message(id, "orders@shop.example", &["a@dest.example"]))
                .collect(),
        )
        .await
        .unwrap();
    t.store
        .accept(
            other_ids
                .iter()
                .map(|id| message(id, "news@other.example", &["b@dest.example"]))
                .collect(),
        )
        .await
        .unwrap();
    wait_all(&t.store, &other_ids, "the other relay delivered", |v| {
        v.status == "delivered"
    })
    .await;
    let views = wait_all(&t.store, &shop_ids, "the shop mail waits", |v| {
        v.status == "deferred"
    })
    .await;
    for view in &views {
        assert_eq!(
            view.attempts, 0,
            "waiting for a relay is not an attempt: {view:#?}"
        );
    }
    assert!(
        views.iter().any(|v| v
            .events
            .iter()
            .any(|e| e.detail.as_deref().is_some_and(|d| d.contains("421")))),
        "the 421 is on the timeline"
    );
    assert!(
        views.iter().any(|v| v
            .events
            .iter()
            .any(|e| e.detail.as_deref().is_some_and(|d| d.contains("paused")))),
        "later mail waited for the pause without a connection"
    );
    assert!(
        down.connections() <= 2,
        "a paused relay is left alone (a fresh session is tried once after a dead one): {} connections",
        down.connections()
    );
    assert_eq!(up.transactions().len(), 8);
    running.stop().await;
}

async fn the_message_rate_is_respected(t: TestStore) {
    let server = TestServer::capture().await;
    let limits = RelayLimits {
        rate: Some(20.0),
        burst: Some(2),
        ..Default::default()
    };
    let routes = Routes::single(relay(&server, "limited", 4, limits));
    let all = ids("r", 42);
    t.store
        .accept(
            all.iter()
                .map(|id| message(id, "shop@example.test", &["a@dest.example"]))
                .collect(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let running = start(&t.store, routes, options());
    server
        .wait_until("a burst arrived", |s| s.transactions().len() >= 2)
        .await;
    let after_burst = Instant::now();
    // The rest at 20 per second: 40 more take 2 s. Over any window the count stays within burst + rate × time.
    let mut checked = 0;
    while server.transactions().len() < 42 {
        let seen = server.transactions().len();
        let allowed = 2.0 + 20.0 * started.elapsed().as_secs_f64() + 1.0;
        assert!(
            (seen as f64) <= allowed,
            "{seen} messages after {:?}",
            started.elapsed()
        );
        checked += 1;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "too slow: {seen} after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = after_burst.elapsed();
    assert!(checked > 10);
    assert!(
        elapsed >= Duration::from_millis(1_900),
        "40 messages after the burst at 20/s take 2 s, took {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(6),
        "the limit is a ceiling, not a crawl: {elapsed:?}"
    );
    wait_all(&t.store, &all, "delivered", |v| v.status == "delivered").await;
    running.stop().await;
}

async fn the_domain_session_cap_is_never_exceeded(t: TestStore) {
    // Every transaction stalls after its content: the sessions in use stay open, so the count is exact.
    let server =
        TestServer::start(ServerConfig::default().fault(Fault::new(When::DataEnd, Action::Stall)))
            .await;
    let limits = RelayLimits {
        domain_concurrency: Some(2),
        batch: 1,
        ..Default::default()
    };
    let routes = Routes::single(relay(&server, "capped", 8, limits));
    let a = ids("a", 6);
    let b = ids("b", 6);
    let mut messages: Vec<NewMessage> = a
        .iter()
        .map(|id| message(id, "shop@example.test", &["x@a.example"]))
        .collect();
    messages.extend(
        b.iter()
            .map(|id| message(id, "shop@example.test", &["y@B.example"])),
    );
    t.store.accept(messages).await.unwrap();
    let running = start(&t.store, routes, options());
    let mail_froms = |s: &TestServer| {
        s.commands()
            .iter()
            .filter(|(_, c)| c.starts_with("MAIL FROM"))
            .count()
    };
    server
        .wait_until("two sessions per domain", |s| mail_froms(s) >= 4)
        .await;
    // Settle: nothing more may start while the four stall (eight sessions would be allowed by the pool).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mail_froms(&server), 4);
    assert_eq!(server.open_connections(), 4);
    let rcpts: Vec<String> = server
        .commands()
        .into_iter()
        .filter(|(_, c)| c.starts_with("RCPT TO"))
        .map(|(_, c)| c.to_ascii_lowercase())
        .collect();
    assert_eq!(
        rcpts.iter().filter(|c| c.contains("@a.example")).count(),
        2,
        "{rcpts:?}"
    );
    assert_eq!(
        rcpts.iter().filter(|c| c.contains("@b.example")).count(),
        2,
        "{rcpts:?}"
    );
    running.stop().await;
}

async fn the_domain_cap_holds_under_load(t: TestStore) {
    let server = TestServer::capture().await;
    let limits = RelayLimits {
        domain_concurrency: Some(1),
        batch: 1,
        ..Default::default()
    };
    let routes = Routes::single(relay(&server, "capped", 8, limits));
    let all = ids("m", 40);
    t.store
        .accept(
            all.iter()
                .enumerate()
                .map(|(i, id)| {
                    let to = if i % 2 == 0 {
                        "x@a.example"
                    } else {
                        "y@b.example"
                    };
                    message(id, "shop@example.test", &[to])
                })
                .collect(),
        )
        .await
        .unwrap();
    let running = start(&t.store, routes, options());
    wait_all(&t.store, &all, "delivered", |v| v.status == "delivered").await;
    assert!(
        server.peak_connections() <= 2,
        "one session per domain, two domains: peak {}",
        server.peak_connections()
    );
    running.stop().await;
}

async fn a_pipelined_batch_keeps_each_recipients_outcome(t: TestStore) {
    let server = TestServer::start(
        ServerConfig::default()
            .fault(Fault::reply(
                When::RcptTo(Some("later@dest.example".into())),
                "451 4.3.0 try later",
            ))
            .fault(Fault::reply(
                When::RcptTo(Some("bad@dest.example".into())),
                "550 5.1.1 no such user",
            ))
            .fault(Fault::reply(When::DataEnd, "452 4.3.1 out of storage").on_transaction(3)),
    )
    .await;
    let recipients: [&[&str]; 6] = [
        &["ok0@dest.example"],
        &["ok1@dest.example", "later@dest.example", "bad@dest.example"],
        &["bad@dest.example"],
        &["ok3@dest.example", "ok3b@dest.example"],
        &["later@dest.example"],
        &["ok5@dest.example", "bad@dest.example"],
    ];
    let all = ids("p", recipients.len());
    t.store
        .accept(
            all.iter()
                .zip(recipients)
                .map(|(id, to)| message(id, "shop@example.test", to))
                .collect(),
        )
        .await
        .unwrap();
    // One session, all six messages waiting: they go as one pipelined batch.
    let routes = Routes::single(relay(&server, "batched", 1, RelayLimits::default()));
    let running = start(&t.store, routes, options());
    let views = wait_all(&t.store, &all, "first attempt recorded", |v| {
        v.attempts == 1 && v.recipients.iter().all(|r| r.status != "pending")
    })
    .await;
    let statuses: Vec<Vec<(String, String, Option<u16>)>> = views
        .iter()
        .map(|v| {
            v.recipients
                .iter()
                .map(|r| (r.address.clone(), r.status.to_string(), r.smtp_code))
                .collect()
        })
        .collect();
    let expect = |list: &[(&str, &str, u16)]| -> Vec<(String, String, Option<u16>)> {
        list.iter()
            .map(|(a, s, c)| (a.to_string(), s.to_string(), Some(*c)))
            .collect()
    };
    assert_eq!(
        statuses[0],
        expect(&[("ok0@dest.example", "delivered", 250)])
    );
    assert_eq!(
        statuses[1],
        expect(&[
            ("ok1@dest.example", "delivered", 250),
            ("later@dest.example", "deferred", 451),
            ("bad@dest.example", "failed", 550)
        ])
    );
    assert_eq!(statuses[2], expect(&[("bad@dest.example", "failed", 550)]));
    // The server's fourth transaction (p3) is refused after its content: both its recipients wait.
    assert_eq!(
        statuses[3],
        expect(&[
            ("ok3@dest.example", "deferred", 452),
            ("ok3b@dest.example", "deferred", 452)
        ])
    );
    assert_eq!(
        statuses[4],
        expect(&[("later@dest.example", "deferred", 451)])
    );
    assert_eq!(
        statuses[5],
        expect(&[
            ("ok5@dest.example", "delivered", 250),
            ("bad@dest.example", "failed", 550)
        ])
    );
    assert_eq!(views[2].status, "failed");
    assert_eq!(views[0].status, "delivered");
    assert_eq!(server.connections(), 1, "one session for the whole batch");
    assert!(
        server.reads().iter().any(|read| {
            let marker = b"p000\r\n.\r\nMAIL FROM:";
            read.bytes.windows(marker.len()).any(|w| w == marker)
        }),
        "a message's end of data went out with the next message's commands (cross-message pipelining): {:?}",
        server
            .reads()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.bytes).into_owned())
            .collect::<Vec<_>>()
    );
    running.stop().await;
}

on_both_stores!(
    the_sender_domain_picks_the_relay,
    a_paused_relay_does_not_hold_up_another_relays_mail,
    the_message_rate_is_respected,
    the_domain_session_cap_is_never_exceeded,
    the_domain_cap_holds_under_load,
    a_pipelined_batch_keeps_each_recipients_outcome,
);
