//! Webhooks (issue 12) end to end: real `herald serve` processes on SQLite files and PostgreSQL, a real HTTP
//! receiver in the test (axum on a loopback port), signatures verified by the published `standardwebhooks`
//! Python library (scripts/webhook_verify.py).
//!
//! Every test sets `HERALD_WEBHOOK_ALLOW_PRIVATE=1` (the receiver is on loopback) except the SSRF ones, which
//! are about the refusal; the signature and retry tests run with no other webhook setting (the defaults).

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    process::Child,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use common::Backend;
use serde_json::{Value, json};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    at: Instant,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// What the receiver answers on a path, in order; when the list is used up, 200.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Waits this long before answering 200.
    Slow(Duration),
    Redirect(&'static str),
}

#[derive(Default)]
struct Receiving {
    got: Mutex<Vec<Got>>,
    plan: Mutex<HashMap<String, VecDeque<Reply>>>,
    /// A path answered with this status forever.
    always: Mutex<HashMap<String, u16>>,
    /// Each request waits this long before its answer (the crash test slows deliveries down).
    delay: Mutex<Duration>,
}

struct Receiver {
    addr: SocketAddr,
    state: Arc<Receiving>,
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(Receiving::default());
        let app = Router::new()
            .route("/{path}", post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    fn plan(&self, path: &str, replies: &[Reply]) {
        self.state
            .plan
            .lock()
            .unwrap()
            .insert(path.into(), replies.iter().cloned().collect());
    }

    fn got(&self, path: &str) -> Vec<Got> {
        let got = self.state.got.lock().unwrap();
        got.iter().filter(|g| g.path == path).cloned().collect()
    }

    /// Polls until `path` got at least `n` requests (deadline `within`).
    async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Got> {
        let start = Instant::now();
        loop {
            let got = self.got(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < within,
                "{path} got {} requests within {within:?}, expected {n}: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn hook(
    State(state): State<Arc<Receiving>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    state.got.lock().unwrap().push(Got {
        path: path.clone(),
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: String::from_utf8(body.to_vec()).unwrap(),
        at: Instant::now(),
    });
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = state.always.lock().unwrap().get(&path) {
        return (StatusCode::from_u16(*status).unwrap(), "always this").into_response();
    }
    let next = state
        .plan
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(VecDeque::pop_front);
    match next {
        None => (StatusCode::OK, "thanks").into_response(),
        Some(Reply::Status(code)) => {
            (StatusCode::from_u16(code).unwrap(), "planned failure").into_response()
        }
        Some(Reply::Slow(wait)) => {
            tokio::time::sleep(wait).await;
            (StatusCode::OK, "late").into_response()
        }
        Some(Reply::Redirect(to)) => {
            (StatusCode::FOUND, [("location", to)], "moved").into_response()
        }
    }
}

/// One `herald serve`, killed when dropped.
struct Node {
    child: Child,
    base: String,
    client: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database for one test: a SQLite file in a fresh directory, or a fresh PostgreSQL database (`None`:
/// PostgreSQL is not available here, the test skips).
async fn database(backend: Backend) -> Option<(String, Option<tempfile::TempDir>)> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("herald.db").display());
            Some((url, Some(dir)))
        }
        Backend::Postgres => Some((common::fresh_postgres_database().await?, None)),
    }
}

impl Node {
    async fn start(database_url: &str, env: &[(&str, &str)]) -> Node {
        let addr = common::serve::free_addr();
        let mut command = common::serve::serve_command(addr, database_url);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = common::serve::spawn_ready(command, addr).await;
        Node {
            child,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _dir: None,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn create_webhook(&self, body: Value) -> Value {
        let (status, answer) = self
            .call(reqwest::Method::POST, "/v1/webhooks", Some(body))
            .await;
        assert_eq!(status, 201, "{answer}");
        answer
    }

    async fn send(&self, to: &str) -> String {
        let (status, answer) = self
            .call(
                reqwest::Method::POST,
                "/v1/messages",
                Some(json!({
                    "from": "shop@example.test", "to": [to], "subject": "Your order",
                    "text": "Hello", "tags": ["orders"], "metadata": {"order": 42}
                })),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        answer["id"].as_str().unwrap().to_owned()
    }

    async fn deliveries(&self, webhook: &str) -> Vec<Value> {
        let (status, answer) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/webhooks/{webhook}/deliveries?limit=200"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        answer["items"].as_array().unwrap().clone()
    }

    /// Polls the endpoint's deliveries until `done` holds for them (deadline `within`).
    async fn wait_deliveries(
        &self,
        webhook: &str,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let deliveries = self.deliveries(webhook).await;
            if done(&deliveries) {
                return deliveries;
            }
            assert!(
                start.elapsed() < within,
                "deliveries not as expected within {within:?}: {deliveries:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Verifies requests with the `standardwebhooks` library; `None` when that Python is not here (skip).
async fn verify(secret: &str, requests: &[Got]) -> Option<Result<(), String>> {
    let python = herald_testkit::require_peer(
        "python with standardwebhooks",
        {
            let python = std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into());
            let ok = std::process::Command::new(&python)
                .args(["-c", "import standardwebhooks"])
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(python)
        },
        "run scripts/setup-test-deps and set HERALD_PYTHON=.venv/bin/python",
    )?;
    let job = json!({
        "secret": secret,
        "requests": requests.iter().map(|g| json!({
            "headers": {
                "webhook-id": g.id, "webhook-timestamp": g.timestamp, "webhook-signature": g.signature
            },
            "body": g.body,
        })).collect::<Vec<_>>(),
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/webhook_verify.py"
    );
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = std::process::Command::new(python)
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(job.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    Some(if output.status.success() {
        Ok(())
    } else {
        Err(text)
    })
}

const PRIVATE_OK: (&str, &str) = ("HERALD_WEBHOOK_ALLOW_PRIVATE", "1");

/// On the defaults (no webhook setting but the loopback permission): a message's accepted and delivered
/// events arrive signed, verified by `standardwebhooks`, with the payload's fields; a changed byte fails.
async fn signed_events_on_defaults(backend: Backend) {
    let Some((url, dir)) = database(backend).await else {
        return;
    };
    let receiver = Receiver::start().await;
    let mut node = Node::start(&url, &[PRIVATE_OK]).await;
    node._dir = dir;
    let created = node
        .create_webhook(json!({"url": receiver.url("all"), "description": "everything"}))
        .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    assert_eq!(created["all_events"], true);
    // The secret is shown once: never again.
    let (_, listed) = node.call(reqwest::Method::GET, "/v1/webhooks", None).await;
    assert!(!listed.to_string().contains(&secret[6..]), "{listed}");
    assert!(listed["items"][0].get("secret").is_none());

    let id = node.send("ann@example.test").await;
    let got = receiver.wait_for("all", 2, Duration::from_secs(10)).await;
    let mut types: Vec<String> = got
        .iter()
        .map(|g| g.json()["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(types, ["message.accepted", "message.delivered"]);
    for g in &got {
        let payload = g.json();
        assert_eq!(payload["id"], g.id.as_str());
        assert_eq!(payload["data"]["message_id"], id.as_str());
        assert_eq!(payload["data"]["tags"], json!(["orders"]));
        assert_eq!(payload["data"]["metadata"], json!({"order": 42}));
        assert!(g.signature.starts_with("v1,"), "{}", g.signature);
        assert_eq!(g.signature.split(' ').count(), 1);
    }
    let delivered = got
        .iter()
        .map(Got::json)
        .find(|p| p["type"] == "message.delivered")
        .unwrap();
    assert_eq!(delivered["data"]["recipient"], "ann@example.test");
    assert_eq!(delivered["data"]["smtp_code"], 250);
    let Some(verified) = verify(&secret, &got).await else {
        return;
    };
    verified.unwrap();
    let mut tampered = got[0].clone();
    tampered.body = tampered
        .body
        .replacen("ann@", "bob@", 1)
        .replacen("orders", "0rders", 1);
    assert!(verify(&secret, &[tampered]).await.unwrap().is_err());
    let deliveries = node
        .wait_deliveries(
            created["id"].as_str().unwrap(),
            Duration::from_secs(5),
            |d| d.len() == 2 && d.iter().all(|d| d["status"] == "delivered"),
        )
        .await;
    assert!(
        deliveries
            .iter()
            .all(|d| d["response_status"] == 200 && d["response_excerpt"] == "thanks")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_events_verify_on_defaults_sqlite() {
    signed_events_on_defaults(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_events_verify_on_defaults_postgres() {
    signed_events_on_defaults(Backend::Postgres).await;
}

/// On the default schedule: a 500 is retried after 5 s (±10 %), with the same `webhook-id` and body.
async fn retried_after_a_500(backend: Backend) {
    let Some((url, _dir)) = database(backend).await else {
        return;
    };
    let receiver = Receiver::start().await;
    receiver.plan("flaky", &[Reply::Status(500)]);
    let node = Node::start(&url, &[PRIVATE_OK]).await;
    let created = node
        .create_webhook(json!({"url": receiver.url("flaky"), "events": ["message.accepted"]}))
        .await;
    node.send("ann@example.test").await;
    let got = receiver.wait_for("flaky", 2, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, got[1].id);
    assert_eq!(got[0].body, got[1].body);
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(4_400) && gap < Duration::from_millis(6_500),
        "retried after {gap:?}, expected 5 s ± 10 %"
    );
    let deliveries = node
        .wait_deliveries(
            created["id"].as_str().unwrap(),
            Duration::from_secs(5),
            |d| d.len() == 1 && d[0]["status"] == "delivered",
        )
        .await;
    assert_eq!(deliveries[0]["attempts"], 2);
    assert_eq!(deliveries[0]["event_id"], got[0].id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_is_retried_with_the_same_id_sqlite() {
    retried_after_a_500(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_is_retried_with_the_same_id_postgres() {
    retried_after_a_500(Backend::Postgres).await;
}

/// The filter: an endpoint for failures only hears of the failure; one for deliveries only of those.
#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_gets_only_the_types_it_asked_for() {
    let (url, _dir) = database(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::start().await;
    let node = Node::start(&url, &[PRIVATE_OK]).await;
    node.create_webhook(json!({"url": receiver.url("delivered"), "events": ["message.delivered"]}))
        .await;
    node.create_webhook(json!({"url": receiver.url("cancelled"), "events": ["message.cancelled", "message.failed"]}))
        .await;
    let (status, scheduled) = node
        .call(
            reqwest::Method::POST,
            "/v1/messages",
            Some(
                json!({"from": "shop@example.test", "to": ["cy@example.test"], "subject": "Later",
                        "text": "x", "send_at": "2099-01-01T00:00:00Z"}),
            ),
        )
        .await;
    assert_eq!(status, 202);
    let scheduled = scheduled["id"].as_str().unwrap();
    let (status, _) = node
        .call(
            reqwest::Method::POST,
            &format!("/v1/messages/{scheduled}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    node.send("ann@example.test").await;
    let delivered = receiver
        .wait_for("delivered", 1, Duration::from_secs(10))
        .await;
    let cancelled = receiver
        .wait_for("cancelled", 1, Duration::from_secs(10))
        .await;
    // Long enough for anything else to have arrived: the engine claims within a second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(receiver.got("delivered").len(), 1, "{delivered:?}");
    assert_eq!(receiver.got("cancelled").len(), 1, "{cancelled:?}");
    assert_eq!(delivered[0].json()["type"], "message.delivered");
    assert_eq!(cancelled[0].json()["type"], "message.cancelled");
    assert_eq!(cancelled[0].json()["data"]["message_id"], scheduled);
    // A filter naming an unknown type is refused, naming the field.
    let (status, answer) = node
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({"url": receiver.url("x"), "events": ["message.opened"]})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["field"], "events");
}

/// A request slower than `HERALD_WEBHOOK_TIMEOUT` is given up and retried; a redirect is not followed.
#[tokio::test(flavor = "multi_thread")]
async fn timeouts_are_retried_and_redirects_not_followed() {
    let (url, _dir) = database(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::start().await;
    receiver.plan("slow", &[Reply::Slow(Duration::from_secs(4))]);
    receiver.plan("moved", &[Reply::Redirect("/target"); 100]);
    let node = Node::start(
        &url,
        &[
            PRIVATE_OK,
            ("HERALD_WEBHOOK_TIMEOUT", "1s"),
            ("HERALD_WEBHOOK_RETRY", "1s"),
        ],
    )
    .await;
    let slow = node
        .create_webhook(json!({"url": receiver.url("slow"), "events": ["message.accepted"]}))
        .await;
    let moved = node
        .create_webhook(json!({"url": receiver.url("moved"), "events": ["message.accepted"]}))
        .await;
    node.send("ann@example.test").await;
    let got = receiver.wait_for("slow", 2, Duration::from_secs(10)).await;
    assert_eq!(got[0].id, got[1].id);
    let deliveries = node
        .wait_deliveries(slow["id"].as_str().unwrap(), Duration::from_secs(5), |d| {
            d.len() == 1 && d[0]["status"] == "delivered"
        })
        .await;
    assert_eq!(deliveries[0]["attempts"], 2);
    // The redirect: recorded as a failure naming it, retried, and the target never asked.
    let moved_deliveries = node
        .wait_deliveries(moved["id"].as_str().unwrap(), Duration::from_secs(5), |d| {
            d.len() == 1 && d[0]["attempts"].as_u64() >= Some(1) && !d[0]["error"].is_null()
        })
        .await;
    let error = moved_deliveries[0]["error"].as_str().unwrap();
    assert!(error.contains("redirects are not followed"), "{error}");
    assert_eq!(moved_deliveries[0]["response_status"], 302);
    assert!(receiver.got("target").is_empty());
}

/// The SSRF guard: without `HERALD_WEBHOOK_ALLOW_PRIVATE`, loopback, private, link-local and metadata
/// addresses are refused at creation (naming `url`), and at connection time too: a stored endpoint whose
/// name resolves to loopback now (as after DNS rebinding) gets nothing.
#[tokio::test(flavor = "multi_thread")]
async fn private_addresses_are_refused_at_creation_and_at_connection() {
    let (url, _dir) = database(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::start().await;
    let node = Node::start(&url, &[]).await;
    for target in [
        receiver.url("x"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.8/hook".to_owned(),
        "http://[fd00::1]/hook".to_owned(),
        "http://[::ffff:127.0.0.1]/hook".to_owned(),
        format!("http://localhost:{}/x", receiver.addr.port()),
    ] {
        let (status, answer) = node
            .call(
                reqwest::Method::POST,
                "/v1/webhooks",
                Some(json!({"url": target})),
            )
            .await;
        assert_eq!(status, 422, "{target}: {answer}");
        assert_eq!(answer["error"]["field"], "url", "{answer}");
    }
    let (status, answer) = node
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({"url": "ftp://example.com/"})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["field"].clone()),
        (422, json!("url"))
    );
    // Endpoints that got past creation (written to the store directly, as a name that resolved elsewhere
    // then): the connection is refused, by name and by literal.
    let db_path = url.strip_prefix("sqlite://").unwrap();
    let mut db =
        <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("sqlite://{db_path}"))
            .await
            .unwrap();
    for (id, target) in [
        (
            "wh_rebound",
            format!("http://localhost:{}/rebound", receiver.addr.port()),
        ),
        ("wh_literal", receiver.url("literal")),
    ] {
        sqlx::query(
            "INSERT INTO webhooks (id, url, events, description, enabled, secret, sealed, created_at, updated_at)
             VALUES (?1, ?2, '', '', 1, x'00112233445566778899aabbccddeeff', 0, 0, 0)",
        )
        .bind(id)
        .bind(target)
        .execute(&mut db)
        .await
        .unwrap();
    }
    // The dispatcher reads the endpoints every second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    node.send("ann@example.test").await;
    for (id, expected) in [
        ("wh_rebound", "resolves only to"),
        ("wh_literal", "refused: 127.0.0.1"),
    ] {
        let deliveries = node
            .wait_deliveries(id, Duration::from_secs(10), |d| {
                !d.is_empty() && d.iter().all(|d| !d["error"].is_null())
            })
            .await;
        let error = deliveries[0]["error"].as_str().unwrap();
        assert!(error.contains(expected), "{id}: {error}");
    }
    assert!(receiver.got("rebound").is_empty());
    assert!(receiver.got("literal").is_empty());
}

/// An endpoint that fails every delivery for `HERALD_WEBHOOK_DISABLE_AFTER` is disabled, flagged in the
/// API; enabling it again clears the flag and its waiting deliveries go out.
async fn failing_endpoint_is_disabled(backend: Backend) {
    let Some((url, _dir)) = database(backend).await else {
        return;
    };
    let receiver = Receiver::start().await;
    receiver
        .state
        .always
        .lock()
        .unwrap()
        .insert("down".into(), 503);
    let node = Node::start(
        &url,
        &[
            PRIVATE_OK,
            ("HERALD_WEBHOOK_RETRY", "300ms"),
            ("HERALD_WEBHOOK_DISABLE_AFTER", "2s"),
        ],
    )
    .await;
    let created = node
        .create_webhook(json!({"url": receiver.url("down"), "events": ["message.accepted"]}))
        .await;
    let id = created["id"].as_str().unwrap();
    node.send("ann@example.test").await;
    let start = Instant::now();
    let endpoint = loop {
        let (_, endpoint) = node
            .call(reqwest::Method::GET, &format!("/v1/webhooks/{id}"), None)
            .await;
        if endpoint["enabled"] == false {
            break endpoint;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not disabled: {endpoint}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "disabled too early"
    );
    let reason = endpoint["disabled_reason"].as_str().unwrap();
    assert!(reason.starts_with("disabled automatically"), "{reason}");
    assert!(!endpoint["failing_since"].is_null());
    let tries = receiver.got("down").len();
    assert!(tries >= 3, "{tries}");
    // Disabled: no more attempts.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(receiver.got("down").len(), tries);
    receiver.state.always.lock().unwrap().clear();
    let (status, endpoint) = node
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{endpoint}");
    assert_eq!(endpoint["disabled_reason"], Value::Null);
    node.wait_deliveries(id, Duration::from_secs(10), |d| {
        d.len() == 1 && d[0]["status"] == "delivered"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_endpoint_is_disabled_sqlite() {
    failing_endpoint_is_disabled(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_endpoint_is_disabled_postgres() {
    failing_endpoint_is_disabled(Backend::Postgres).await;
}

/// After a rotation both secrets verify every request (two `v1,` signatures), for 24 hours; "send again"
/// repeats a delivery with its `webhook-id`. Sealed with `HERALD_SECRET_KEY`: the stored secret is not the
/// key.
#[tokio::test(flavor = "multi_thread")]
async fn rotation_signs_with_both_secrets_and_send_again_repeats_the_id() {
    let (url, _dir) = database(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::start().await;
    let node = Node::start(
        &url,
        &[
            PRIVATE_OK,
            ("HERALD_SECRET_KEY", "a test secret of some length"),
        ],
    )
    .await;
    let created = node
        .create_webhook(json!({"url": receiver.url("rot"), "events": ["message.accepted"]}))
        .await;
    let id = created["id"].as_str().unwrap();
    let old = created["secret"].as_str().unwrap().to_owned();
    let (status, rotated) = node
        .call(
            reqwest::Method::POST,
            &format!("/v1/webhooks/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    assert!(!rotated["previous_secret_valid_until"].is_null());
    node.send("ann@example.test").await;
    let got = receiver.wait_for("rot", 1, Duration::from_secs(10)).await;
    assert_eq!(
        got[0].signature.split(' ').count(),
        2,
        "{}",
        got[0].signature
    );
    if let Some(result) = verify(&old, &got).await {
        result.unwrap();
        verify(&new, &got).await.unwrap().unwrap();
        verify("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &got)
            .await
            .unwrap()
            .unwrap_err();
    }
    // The stored secret is sealed: its bytes are not the key.
    let db_path = url.strip_prefix("sqlite://").unwrap();
    let mut db =
        <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("sqlite://{db_path}"))
            .await
            .unwrap();
    let (secret, sealed): (Vec<u8>, i64) =
        sqlx::query_as("SELECT secret, sealed FROM webhooks WHERE id = ?1")
            .bind(id)
            .fetch_one(&mut db)
            .await
            .unwrap();
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(&new[6..])
        .unwrap();
    assert_eq!(sealed, 1);
    assert!(!secret.windows(key.len()).any(|w| w == key.as_slice()));
    // Send again.
    let deliveries = node
        .wait_deliveries(id, Duration::from_secs(5), |d| {
            d.len() == 1 && d[0]["status"] == "delivered"
        })
        .await;
    let delivery = deliveries[0]["id"].as_i64().unwrap();
    let (status, answer) = node
        .call(
            reqwest::Method::POST,
            &format!("/v1/webhooks/{id}/deliveries/{delivery}/retry"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let again = receiver.wait_for("rot", 2, Duration::from_secs(10)).await;
    assert_eq!(again[1].id, again[0].id);
    let (status, _) = node
        .call(
            reqwest::Method::POST,
            &format!("/v1/webhooks/{id}/deliveries/999999/retry"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = node
        .call(reqwest::Method::DELETE, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = node
        .call(reqwest::Method::GET, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(status, 404);
}

/// Sends `count` messages with 32 clients; answers their ids.
async fn send_many(node: &Node, count: usize) -> HashSet<String> {
    let node_base = node.base.clone();
    let client = node.client.clone();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, base, next) = (client.clone(), node_base.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                let response = client
                    .post(format!("{base}/v1/messages"))
                    .json(
                        &json!({"from": "shop@example.test", "to": ["ann@example.test"],
                                  "subject": "Hi", "text": "x"}),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                let answer: Value = response.json().await.unwrap();
                ids.push(answer["id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Two PostgreSQL nodes share one endpoint's outbox: every event arrives, and none twice (with no crash,
/// a duplicate could only come from two nodes sending one event at once).
#[tokio::test(flavor = "multi_thread")]
async fn two_postgres_nodes_never_send_the_same_event() {
    let Some(url) = common::fresh_postgres_database().await else {
        return;
    };
    let receiver = Receiver::start().await;
    let first = Node::start(&url, &[PRIVATE_OK]).await;
    let second = Node::start(&url, &[PRIVATE_OK]).await;
    first
        .create_webhook(json!({"url": receiver.url("pair"), "events": ["message.accepted", "message.delivered"]}))
        .await;
    // Both nodes have read the endpoint (every second) before the events start.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let count = 1_000;
    let (a, b) = tokio::join!(send_many(&first, count / 2), send_many(&second, count / 2));
    let messages: HashSet<String> = a.union(&b).cloned().collect();
    assert_eq!(messages.len(), count);
    let got = receiver
        .wait_for("pair", 2 * count, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.got("pair").len().max(got.len());
    let all = receiver.got("pair");
    let ids: HashSet<&str> = all.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids.len(), 2 * count, "distinct events");
    assert_eq!(got, 2 * count, "requests: {} duplicates", got - ids.len());
    for g in &all {
        assert!(messages.contains(g.json()["data"]["message_id"].as_str().unwrap()));
    }
}

/// SIGKILL during the delivery of 10,000 events (on the defaults, SQLite): after the restart every event
/// arrives, none is invented, and the duplicates are at most the requests in flight at the kill
/// (HERALD_WEBHOOK_CONCURRENCY: an answered request holds its slot until its outcome is committed), each with
/// the same `webhook-id` and body.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_delivery_loses_no_event() {
    let count: usize = std::env::var("HERALD_WEBHOOK_CRASH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (url, _dir) = database(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::start().await;
    // Slow enough that the kill lands mid-delivery.
    *receiver.state.delay.lock().unwrap() = Duration::from_millis(5);
    let mut node = Node::start(&url, &[PRIVATE_OK]).await;
    node.create_webhook(json!({"url": receiver.url("crash"), "events": ["message.accepted"]}))
        .await;
    let started = Instant::now();
    let messages = send_many(&node, count).await;
    let accepted_in = started.elapsed();
    let before = receiver
        .wait_for("crash", count / 4, Duration::from_secs(120))
        .await
        .len();
    let _ = node.child.kill();
    let _ = node.child.wait();
    assert!(
        before < count,
        "all {count} were delivered before the kill; nothing tested"
    );
    let at_kill = receiver.got("crash").len();
    let restarted = Node::start(&url, &[PRIVATE_OK]).await;
    let start = Instant::now();
    loop {
        let ids: HashSet<String> = receiver.got("crash").into_iter().map(|g| g.id).collect();
        if ids.len() >= count {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "only {} of {count} events after the restart",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // On SQLite the restart takes back what the killed process was sending at once; let anything still
    // arriving arrive.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    drop(restarted);
    let all = receiver.got("crash");
    let mut by_id: HashMap<&str, Vec<&Got>> = HashMap::new();
    for g in &all {
        by_id.entry(g.id.as_str()).or_default().push(g);
    }
    assert_eq!(by_id.len(), count, "lost or invented events");
    for g in &all {
        assert!(
            messages.contains(g.json()["data"]["message_id"].as_str().unwrap()),
            "invented: {g:?}"
        );
    }
    let duplicates: Vec<&Vec<&Got>> = by_id.values().filter(|v| v.len() > 1).collect();
    for copies in &duplicates {
        assert!(
            copies
                .iter()
                .all(|c| c.body == copies[0].body && c.id == copies[0].id)
        );
    }
    eprintln!(
        "webhook crash run: {count} events (accepted in {accepted_in:?}), {at_kill} requests before the kill, \
         {} requests in all, {} duplicated events (bound: 16 in flight)",
        all.len(),
        duplicates.len()
    );
    assert!(duplicates.len() <= 16, "{} duplicates", duplicates.len());
}

/// The dashboard page lists each endpoint with its deliveries (status, HTTP status, latency, response
/// excerpt), flags a disabled one, and its "send again" button sends the event again with its id.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_deliveries_and_sends_again() {
    let (url, _dir) = database(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::start().await;
    let node = Node::start(&url, &[PRIVATE_OK]).await;
    let created = node
        .create_webhook(json!({"url": receiver.url("dash"), "events": ["message.accepted"]}))
        .await;
    let id = created["id"].as_str().unwrap();
    node.send("ann@example.test").await;
    let got = receiver.wait_for("dash", 1, Duration::from_secs(10)).await;
    let deliveries = node
        .wait_deliveries(id, Duration::from_secs(5), |d| {
            d.len() == 1 && d[0]["status"] == "delivered"
        })
        .await;
    let page = node
        .client
        .get(format!("{}/webhooks", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    // The open dashboard's CSRF cookie, sent back with each form as the browser would.
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("herald_csrf="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = page.text().await.unwrap();
    // The URL as the page escapes it.
    assert!(
        page.contains(&receiver.url("dash").replace('/', "&#x2f;")),
        "{page}"
    );
    assert!(page.contains(&got[0].id), "{page}");
    assert!(page.contains("data-status=\"delivered\""), "{page}");
    assert!(page.contains("thanks") && page.contains(" ms"), "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let delivery = deliveries[0]["id"].as_i64().unwrap();
    let sent = no_redirects
        .post(format!(
            "{}/webhooks/{id}/deliveries/{delivery}/retry",
            node.base
        ))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert!(sent.status().is_redirection(), "{}", sent.status());
    let again = receiver.wait_for("dash", 2, Duration::from_secs(10)).await;
    assert_eq!(again[1].id, again[0].id);
    // Without the CSRF token: refused, nothing sent.
    let forged = no_redirects
        .post(format!("{}/webhooks/{id}/disable", node.base))
        .header("cookie", &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert!(forged.status().is_client_error(), "{}", forged.status());
    let disabled = no_redirects
        .post(format!("{}/webhooks/{id}/disable", node.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert!(disabled.status().is_redirection());
    let page = node
        .client
        .get(format!("{}/webhooks", node.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("data-enabled=\"false\"") && page.contains(">disabled<"),
        "{page}"
    );
}
