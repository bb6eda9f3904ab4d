//! Relay-level failures — credentials refused, a certificate that does not verify, STARTTLS required but not
//! offered — pause the relay and show on its health, and the mail waits without spending attempts until
//! the relay works again or the maximum age passes. Against real servers over real sockets (aiosmtpd with
//! a wrong password, herald-testkit with an untrusted certificate or without STARTTLS), on both stores.
//! Also: a relay that echoes the AUTH line in its refusal never gets the credential into the archive.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use common::TestStore;
use herald::{
    delivery::{
        Engine, EngineOptions, RelayBoard, RelayProblem, RelaySnapshot, RelayState, SmtpTransport,
    },
    queue::RetryPolicy,
    store::{MessageView, NewMessage, Store},
};
use herald_smtp::{Client, Credentials, Pool, PoolConfig, RelayConfig, Security, Timeouts};
use herald_testkit::{
    Action, Fault, ServerConfig, TestPki, TestServer, When, python_with_aiosmtpd, require_peer,
};
use tokio::{sync::watch, task::JoinHandle};

fn message(id: &str) -> NewMessage {
    let body = format!(
        "From: shop@example.test\r\nTo: a@dest.example\r\nSubject: {id}\r\nMessage-ID: <{id}@example.test>\r\n\r\n{id}\r\n"
    );
    common::new_message(
        id,
        "shop@example.test",
        &["a@dest.example"],
        Bytes::from(body),
    )
}

struct Running {
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

    fn relay(&self) -> RelaySnapshot {
        self.board.snapshot().remove(0)
    }
}

/// Short pauses and polls, so that the retries happen within a test; see the default-settings test too.
fn quick() -> EngineOptions {
    EngineOptions {
        idle_poll: Duration::from_millis(20),
        relay_pause: Duration::from_millis(100),
        shutdown_grace: Duration::from_millis(300),
        ..Default::default()
    }
}

fn start(store: &Store, relay: RelayConfig, options: EngineOptions) -> Running {
    let pool = Pool::new(Client::new(relay).unwrap(), PoolConfig::default());
    let board = RelayBoard::default();
    let options = EngineOptions {
        board: board.clone(),
        ..options
    };
    let (stop, stopped) = watch::channel(false);
    let engine = Engine::new(store.clone(), SmtpTransport::new(pool, "relay"), options);
    Running {
        board,
        stop,
        engine: tokio::spawn(engine.run(stopped)),
    }
}

/// Polls until `done` holds for message `id`, moving the store's clock on by `tick` each time (so mail
/// deferred for a pause comes due again); fails after a deadline, showing the message.
async fn wait_for(
    t: &TestStore,
    id: &str,
    tick: Duration,
    what: &str,
    done: impl Fn(&MessageView) -> bool,
) -> MessageView {
    let start = Instant::now();
    loop {
        let view = t.store.message(id).await.unwrap().expect("message exists");
        if done(&view) {
            return view;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting until {what}: {view:#?}"
        );
        t.clock.advance(tick);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn timeline(view: &MessageView) -> String {
    view.events
        .iter()
        .filter_map(|e| e.detail.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kills the peer process when the test ends, however it ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const AIOSMTPD_SERVER: &str = r#"
import sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
import ssl

cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

class Handler:
    async def handle_DATA(self, server, session, envelope):
        print("MESSAGE", envelope.mail_from, flush=True)
        return "250 2.0.0 OK"

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"alice" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)

context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=context,
                        require_starttls=True, authenticator=authenticator, auth_require_tls=True)
controller.start()
print("READY", flush=True)
sys.stdin.read()
controller.stop()
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn refused_credentials_pause_the_relay_until_the_maximum_age(t: TestStore) {
    let Some(python) = require_peer(
        "aiosmtpd",
        python_with_aiosmtpd(),
        "run scripts/setup-test-deps and set HERALD_PYTHON=.venv/bin/python",
    ) else {
        return;
    };
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, script) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("server.py"),
    );
    std::fs::write(&cert, &pki.server_cert_pem).unwrap();
    std::fs::write(&key, &pki.server_key_pem).unwrap();
    std::fs::write(&script, AIOSMTPD_SERVER).unwrap();
    let port = free_port();
    let mut child = Command::new(&python)
        .arg(&script)
        .args([
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            &port.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aiosmtpd");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _server = Peer(child);
    assert_eq!(lines.next().unwrap().unwrap(), "READY");

    let mut relay = RelayConfig::new("127.0.0.1", port);
    relay.security = Security::StartTlsRequired;
    relay.extra_roots = vec![pki.ca_der.clone()];
    relay.timeouts = Timeouts::all(Duration::from_secs(10));
    relay.credentials = Some(Credentials::password("alice", "not the password"));
    let running = start(
        &t.store,
        relay,
        EngineOptions {
            retry: RetryPolicy {
                max_age: Duration::from_secs(600),
                ..RetryPolicy::default()
            },
            ..quick()
        },
    );
    t.store
        .accept(vec![message("a1"), message("a2"), message("a3")])
        .await
        .unwrap();
    for id in ["a1", "a2", "a3"] {
        let view = wait_for(
            &t,
            id,
            Duration::from_millis(50),
            "it waits for the relay",
            |v| {
                v.status == "deferred"
                    && v.events
                        .iter()
                        .any(|e| e.detail.as_deref().is_some_and(|d| d.contains("535")))
            },
        )
        .await;
        assert_eq!(
            view.attempts, 0,
            "a refused login is not the message's attempt: {view:#?}"
        );
        assert_eq!(view.recipients[0].status, "deferred");
    }
    let relay = running.relay();
    assert_ne!(relay.state, RelayState::Ok, "{relay:?}");
    assert_eq!(relay.problem, Some(RelayProblem::Authentication));
    assert!(
        relay.last_error.as_deref().unwrap().contains("535"),
        "{relay:?}"
    );
    assert_eq!(relay.failed, 0, "nothing failed: {relay:?}");
    // Still refused: the mail keeps waiting (several pauses pass) until the maximum age, then fails.
    let view = wait_for(
        &t,
        "a1",
        Duration::from_secs(30),
        "it gives up at the maximum age",
        |v| v.status == "failed",
    )
    .await;
    assert_eq!(view.attempts, 0, "{view:#?}");
    assert!(
        timeline(&view).contains("maximum age"),
        "{}",
        timeline(&view)
    );
    running.stop().await;
}

async fn an_untrusted_certificate_pauses_the_relay_on_the_default_settings(t: TestStore) {
    let pki = TestPki::new();
    let server = TestServer::start(ServerConfig {
        starttls: Some(pki.untrusted_server_config()),
        ..ServerConfig::default()
    })
    .await;
    let mut relay = RelayConfig::new("127.0.0.1", server.port());
    relay.security = Security::StartTlsRequired;
    relay.extra_roots = vec![pki.ca_der.clone()];
    let running = start(&t.store, relay, EngineOptions::default());
    t.store.accept(vec![message("c1")]).await.unwrap();
    let view = wait_for(&t, "c1", Duration::ZERO, "it waits for the relay", |v| {
        v.status == "deferred"
    })
    .await;
    assert_eq!(view.attempts, 0, "{view:#?}");
    assert!(
        timeline(&view).contains("certificate"),
        "{}",
        timeline(&view)
    );
    let relay = running.relay();
    assert_eq!(relay.state, RelayState::Paused, "{relay:?}");
    assert_eq!(relay.problem, Some(RelayProblem::Certificate));
    let left = relay.paused_until.unwrap() - herald::clock::Clock::now(&herald::clock::SystemClock);
    assert!(
        (3_000..=5_000).contains(&left),
        "the default pause is 5 s: {left} ms left"
    );
    // Paused means left alone: no new connection while the pause lasts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.connections(), 1);
    assert!(
        !server.commands().iter().any(|(_, c)| c.starts_with("MAIL")),
        "nothing is sent over a session whose certificate failed"
    );
    running.stop().await;
}

async fn missing_starttls_pauses_the_relay_and_nothing_goes_in_plaintext(t: TestStore) {
    // A server without STARTTLS (or a path that strips it from the EHLO reply).
    let server = TestServer::capture().await;
    let mut relay = RelayConfig::new("127.0.0.1", server.port());
    relay.security = Security::StartTlsRequired;
    let running = start(&t.store, relay, quick());
    t.store.accept(vec![message("t1")]).await.unwrap();
    let view = wait_for(&t, "t1", Duration::ZERO, "it waits for the relay", |v| {
        v.status == "deferred"
    })
    .await;
    assert_eq!(view.attempts, 0);
    assert_eq!(running.relay().problem, Some(RelayProblem::StartTls));
    // Retried with growing pauses (100, 200, 400, 800 ms …), not every 100 ms. The pauses are on the
    // store's clock: it is advanced in 100 ms steps, and after each step the test gives the delivery loop
    // up to 200 ms of real time to connect, so that a loaded machine cannot make a due retry look missing.
    let mut seen = server.connections();
    let mut connected_at = Vec::new();
    for step in 1..=16u64 {
        t.clock.advance(Duration::from_millis(100));
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline && server.connections() == seen {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let now = server.connections();
        if now > seen {
            connected_at.push(step * 100);
            seen = now;
        }
    }
    let retries = connected_at.len();
    assert!(
        (2..=6).contains(&retries),
        "retried, with pauses that grow: {retries} retries in 1.6 s of the clock, at {connected_at:?} ms"
    );
    let gaps: Vec<u64> = connected_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0]),
        "the pauses grow: retries at {connected_at:?} ms"
    );
    assert!(
        !server.commands().iter().any(|(_, c)| c.starts_with("MAIL")),
        "no mail without the required TLS"
    );
    assert!(server.transactions().is_empty());
    let view = t.store.message("t1").await.unwrap().unwrap();
    assert_eq!((view.status.as_str(), view.attempts), ("deferred", 0));
    running.stop().await;
}

/// Plaintext AUTH on loopback against the test server, as `alice` with `password`.
fn auth_relay(server: &TestServer, password: &str) -> RelayConfig {
    let mut relay = RelayConfig::new("127.0.0.1", server.port());
    relay.security = Security::None;
    relay.allow_plaintext_auth_on_loopback = true;
    relay.credentials = Some(Credentials::password("alice", password));
    relay
}

async fn a_relay_that_takes_the_credentials_again_delivers_the_waiting_mail(t: TestStore) {
    // The first session's login is refused (say, the password was rotated at the provider first).
    let server = TestServer::start(
        ServerConfig {
            auth: Some(("alice".into(), "s3cret".into())),
            ..ServerConfig::default()
        }
        .fault(
            Fault::reply(When::Auth, "535 5.7.8 Authentication credentials invalid")
                .on_connection(0),
        ),
    )
    .await;
    let running = start(&t.store, auth_relay(&server, "s3cret"), quick());
    t.store.accept(vec![message("b1")]).await.unwrap();
    let view = wait_for(&t, "b1", Duration::from_millis(50), "delivered", |v| {
        v.status == "delivered"
    })
    .await;
    assert_eq!(
        view.attempts, 1,
        "only the transaction that ran counts: {view:#?}"
    );
    assert!(timeline(&view).contains("535"), "{}", timeline(&view));
    assert_eq!(server.transactions().len(), 1);
    let relay = running.relay();
    assert_eq!(
        (relay.state, relay.problem),
        (RelayState::Ok, None),
        "{relay:?}"
    );
    running.stop().await;
}

async fn echoed_credentials_never_reach_the_archive(t: TestStore) {
    let password = "correct horse battery";
    let server = TestServer::start(
        ServerConfig {
            auth: Some(("alice".into(), "something else".into())),
            ..ServerConfig::default()
        }
        .fault(Fault::new(
            When::Auth,
            Action::Echo("535 5.7.8 refused: ".into()),
        )),
    )
    .await;
    let running = start(&t.store, auth_relay(&server, password), quick());
    t.store.accept(vec![message("e1")]).await.unwrap();
    let view = wait_for(&t, "e1", Duration::ZERO, "deferred", |v| {
        v.status == "deferred"
    })
    .await;
    let plain = STANDARD.encode(format!("\0alice\0{password}"));
    let echoed = server
        .commands()
        .into_iter()
        .find(|(_, c)| c.starts_with("AUTH PLAIN"))
        .expect("the relay was sent AUTH PLAIN");
    assert!(echoed.1.ends_with(&plain), "{echoed:?}");
    let archived = serde_json::to_string(&view).unwrap();
    let board = format!("{:?}", running.relay());
    for shown in [&archived, &board] {
        assert!(
            !shown.contains(&plain),
            "the AUTH PLAIN response leaked: {shown}"
        );
        assert!(!shown.contains(password), "the password leaked: {shown}");
        assert!(shown.contains("refused: AUTH PLAIN <redacted>"), "{shown}");
    }
    running.stop().await;
}

on_both_stores!(
    refused_credentials_pause_the_relay_until_the_maximum_age,
    an_untrusted_certificate_pauses_the_relay_on_the_default_settings,
    missing_starttls_pauses_the_relay_and_nothing_goes_in_plaintext,
    a_relay_that_takes_the_credentials_again_delivers_the_waiting_mail,
    echoed_credentials_never_reach_the_archive,
);
