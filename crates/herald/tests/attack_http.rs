//! Attacks on the HTTP surface, each against a real `herald serve` process (as `crash.rs` starts them): junk
//! methods that used to grow `/metrics` without bound, slow and half-sent requests, too many connections, a
//! shutdown held by slow clients, an open redirect at sign-in, cross-site requests and DNS rebinding in the
//! open mode, the `cid:` bomb in the dashboard, token guessing, trust headers and control characters in a
//! search. For each: the process stays up, `/healthz` answers within 100 ms while the attack runs, the attack
//! gets a clear 4xx (or its connection is closed by a timeout), and nothing is stored.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    process::{Child, Command},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// One `herald serve` process on a fresh SQLite file, delivering to its capture inbox (no relay).
struct Node {
    child: std::sync::Mutex<Child>,
    addr: SocketAddr,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(env: &[(&str, &str)]) -> Node {
        Self::start_with_fd_limit(env, None).await
    }

    /// With `fd_limit`, the process runs under `ulimit -n fd_limit`.
    async fn start_with_fd_limit(env: &[(&str, &str)], fd_limit: Option<u32>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let addr = common::serve::free_addr();
        let database_url = format!("sqlite://{}", dir.path().join("herald.db").display());
        let mut command = match fd_limit {
            None => common::serve::serve_command(addr, &database_url),
            Some(limit) => {
                // `exec` keeps the PID, so SIGTERM and kill reach herald itself.
                let mut command = Command::new("sh");
                command.args([
                    "-c",
                    &format!("ulimit -n {limit} && exec \"$0\" serve"),
                    env!("CARGO_BIN_EXE_herald"),
                ]);
                common::serve::with_serve_env(&mut command, addr, &database_url);
                command
            }
        };
        for (key, value) in env {
            command.env(key, value);
        }
        Node {
            child: std::sync::Mutex::new(common::serve::spawn_ready(command, addr).await),
            addr,
            base: format!("http://{addr}"),
            // No pooled connections: each request is a new one, as an attacker's would be, and none is left
            // open to count against a connection cap.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Posts a message (202), then polls it until it is delivered (10 s at most); returns its id.
    async fn post_and_wait_delivered(&self, message: &Value) -> String {
        let response = self
            .client
            .post(self.url("/v1/messages"))
            .json(message)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let start = Instant::now();
        loop {
            let view: Value = self
                .client
                .get(self.url(&format!("/v1/messages/{id}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if view["status"] == "delivered" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "not delivered: {view}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        id
    }

    /// `/healthz` on a new connection answers `ok` within 100 ms (the median of three probes, each on its own
    /// connection, each answered within 5 s: one sample on this 2-core machine is noise), and the process is
    /// still running.
    async fn assert_healthy(&self) {
        assert!(
            self.child.lock().unwrap().try_wait().unwrap().is_none(),
            "herald serve exited"
        );
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut took = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            let response = tokio::time::timeout(
                Duration::from_secs(5),
                client.get(self.url("/healthz")).send(),
            )
            .await
            .expect("/healthz answers")
            .unwrap();
            took.push(start.elapsed());
            assert_eq!(response.status(), 200);
        }
        took.sort();
        assert!(
            took[1] < Duration::from_millis(100),
            "/healthz took {took:?} during the attack (median over 100 ms)"
        );
    }

    /// How many messages the store holds, through the API.
    async fn stored_messages(&self, token: Option<&str>) -> usize {
        let mut request = self.client.get(self.url("/v1/messages?limit=1000"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let body: Value = request.send().await.unwrap().json().await.unwrap();
        body["items"].as_array().expect("items").len()
    }

    fn terminate(&self) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.lock().unwrap();
        let start = Instant::now();
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = child.wait().unwrap();
        (status, start.elapsed())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Reads until the server closes the connection (or `limit` passes): what it sent, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return (received, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

fn status_of(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A connection from another loopback address (all of 127.0.0.0/8 is this machine), which the server sees as
/// another client.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn junk_methods_do_not_grow_metrics_and_metrics_can_need_a_token() {
    let node = Node::start(&[]).await;
    for _ in 0..20 {
        node.client.get(node.url("/healthz")).send().await.unwrap();
    }
    let before = node
        .client
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut refused = 0;
    for n in 0..300 {
        let method = reqwest::Method::from_bytes(format!("JUNK{n}").as_bytes()).unwrap();
        let status = node
            .client
            .request(method, node.url(&format!("/x{n}")))
            .send()
            .await
            .unwrap()
            .status();
        refused += usize::from(status.is_client_error());
        if n % 100 == 0 {
            node.assert_healthy().await;
        }
    }
    assert_eq!(refused, 300, "every junk request gets a 4xx");
    let after = node
        .client
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!after.contains("JUNK"), "a junk method became a label");
    assert!(after.contains("method=\"other\""), "{after}");
    // A few new series (the `other` method, the fallback's status) but nothing per request.
    assert!(
        after.len() < before.len() + 8 * 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    node.assert_healthy().await;

    let node = Node::start(&[("HERALD_METRICS_TOKEN", "metrics-secret")]).await;
    let get = |token: Option<&str>| {
        let mut request = node.client.get(node.url("/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let open = get(None).await.unwrap();
    assert_eq!(open.status(), 401);
    assert_eq!(open.headers()["www-authenticate"], "Bearer");
    assert_eq!(get(Some("wrong")).await.unwrap().status(), 401);
    let allowed = get(Some("metrics-secret")).await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert!(allowed.text().await.unwrap().contains("herald_messages"));
}

#[tokio::test]
async fn half_sent_requests_are_closed_by_the_timeouts_and_store_nothing() {
    let node = Node::start(&[
        ("HERALD_HTTP_HEADER_TIMEOUT", "700ms"),
        ("HERALD_HTTP_BODY_TIMEOUT", "1s"),
    ])
    .await;
    // 200 requests that never finish their headers (slowloris), then more bytes now and then.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(node.addr).await.unwrap();
        stream
            .write_all(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    node.assert_healthy().await;
    // A body promised at 1,000 bytes, of which 10 arrive.
    let mut half_body = TcpStream::connect(node.addr).await.unwrap();
    half_body
        .write_all(
            format!(
                "POST /v1/messages HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: 1000\r\n\r\n{{\"from\": \"",
                node.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    for stream in &mut slow[..20] {
        let _ = stream.write_all(b"a").await;
    }
    node.assert_healthy().await;
    for stream in &mut slow {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(closed, "a half-sent request's connection stayed open");
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the header timeout took {:?}",
        started.elapsed()
    );
    let (response, closed) = read_until_closed(&mut half_body, Duration::from_secs(5)).await;
    assert!(closed, "a half-sent body's connection stayed open");
    assert_eq!(
        status_of(&response),
        Some(408),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert!(String::from_utf8_lossy(&response).contains("body_timeout"));
    node.assert_healthy().await;
    assert_eq!(node.stored_messages(None).await, 0, "nothing is stored");
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_the_server_recovers() {
    let node = Node::start(&[
        ("HERALD_HTTP_MAX_CONNECTIONS", "20"),
        ("HERALD_HTTP_HEADER_TIMEOUT", "1s"),
    ])
    .await;
    // The readiness probe's connection is closed, but the server frees its place only once it has read the
    // close: let it, or the 20th idle connection would be the refused one and a place free again later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(node.addr).await.unwrap());
    }
    // The server has accepted them all (a request on each would be served); one more is refused at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(node.addr).await.unwrap();
    let (response, closed) = read_until_closed(&mut extra, Duration::from_secs(2)).await;
    assert!(closed);
    assert_eq!(
        status_of(&response),
        Some(503),
        "{}",
        String::from_utf8_lossy(&response)
    );
    // The idle sockets are closed by the header timeout, which frees their places.
    for stream in &mut idle {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(closed, "an idle connection stayed open");
    }
    let start = Instant::now();
    loop {
        let response = reqwest::Client::new()
            .get(node.url("/healthz"))
            .send()
            .await;
        if response.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the server did not recover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.assert_healthy().await;
}

#[tokio::test]
async fn slow_clients_do_not_hold_shutdown_beyond_the_grace_period() {
    let node = Node::start(&[("HERALD_HTTP_SHUTDOWN_GRACE", "1s")]).await;
    // Two requests that are half sent, and one whose body never comes: none finishes before the default
    // header timeout, so only the grace period ends them.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(node.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        streams.push(stream);
    }
    let mut body = TcpStream::connect(node.addr).await.unwrap();
    body.write_all(
        format!(
            "POST /v1/messages HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{",
            node.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    streams.push(body);
    node.assert_healthy().await;
    let (status, took) = node.terminate();
    assert!(
        status.success(),
        "herald serve exits 0 on SIGTERM: {status}"
    );
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} with slow clients connected"
    );
}

/// The defaults are what the README says, and a half-sent request is closed after the default header
/// timeout (10 s) by a server started without any HTTP setting.
#[tokio::test]
async fn default_limits_are_the_documented_ones_and_apply() {
    let config = herald::config::Config::from_values(&HashMap::new()).unwrap();
    assert_eq!(config.http.header_timeout, Duration::from_secs(10));
    assert_eq!(config.http.body_timeout, Duration::from_secs(60));
    assert_eq!(config.http.shutdown_grace, Duration::from_secs(10));
    assert!(config.http.max_connections <= 1024 && config.http.max_connections >= 16);
    assert_eq!(config.metrics_token, None);
    assert_eq!(config.public_url, None);
    let readme = include_str!("../../../README.md");
    for row in [
        "| `HERALD_HTTP_HEADER_TIMEOUT` |",
        "| `HERALD_HTTP_BODY_TIMEOUT` |",
        "| `HERALD_HTTP_MAX_CONNECTIONS` |",
        "| `HERALD_HTTP_SHUTDOWN_GRACE` |",
    ] {
        assert!(readme.contains(row), "README lacks {row}");
    }
    let default_of = |row: &str| {
        let line = readme.lines().find(|l| l.starts_with(row)).unwrap();
        line.rsplit('|').nth(1).unwrap().trim().to_owned()
    };
    assert_eq!(default_of("| `HERALD_HTTP_HEADER_TIMEOUT` |"), "`10s`");
    assert_eq!(default_of("| `HERALD_HTTP_BODY_TIMEOUT` |"), "`60s`");
    assert_eq!(default_of("| `HERALD_HTTP_SHUTDOWN_GRACE` |"), "`10s`");
    assert!(default_of("| `HERALD_HTTP_MAX_CONNECTIONS` |").starts_with("`1024`"));

    let node = Node::start(&[]).await;
    let mut stream = TcpStream::connect(node.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    node.assert_healthy().await;
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert!(closed, "the half-sent request stayed open 20 s");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(14),
        "closed after {took:?}, not the default 10 s"
    );
    node.assert_healthy().await;
}

#[tokio::test]
async fn sign_in_redirects_only_to_this_server_and_never_fails_on_bad_input() {
    let node = Node::start(&[("HERALD_API_TOKEN", "admin-token")]).await;
    let client = client_from("127.0.0.1");
    for next in [
        "/%09/evil.example",
        "/%01",
        "/%00",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
        "/%0a/evil.example",
    ] {
        let page = client
            .get(node.url(&format!("/login?next={next}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "GET /login?next={next}");
        let page = page.text().await.unwrap();
        assert!(
            !page.contains("evil.example"),
            "next={next} kept in the form"
        );
        let signed_in = client
            .post(node.url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token=admin-token&next={next}"))
            .send()
            .await
            .unwrap();
        assert!(
            signed_in.status().is_redirection(),
            "POST /login next={next}: {}",
            signed_in.status()
        );
        assert_eq!(signed_in.headers()["location"], "/", "next={next}");
        node.assert_healthy().await;
    }
    let kept = client
        .post(node.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=admin-token&next=%2Fmessages%3Fq%3Dx")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["location"], "/messages?q=x");
}

#[tokio::test]
async fn the_open_mode_refuses_other_sites_and_other_hosts() {
    let node = Node::start(&[]).await;
    let message =
        json!({"from": "a@example.test", "to": "b@example.test", "subject": "s", "text": "t"});
    let post = |content_type: &'static str, extra: &'static [(&'static str, &'static str)]| {
        let mut request = node
            .client
            .post(node.url("/v1/messages"))
            .header("content-type", content_type)
            .body(message.to_string());
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        request.send()
    };
    // (Content-Type, more headers, the status expected, the field it names)
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        u16,
        &'static str,
    );
    let cases: [Case; 5] = [
        ("text/plain", &[], 415, "Content-Type"),
        (
            "application/x-www-form-urlencoded",
            &[],
            415,
            "Content-Type",
        ),
        (
            "application/json",
            &[("origin", "https://evil.example")],
            403,
            "Origin",
        ),
        (
            "application/json",
            &[("sec-fetch-site", "cross-site")],
            403,
            "Sec-Fetch-Site",
        ),
        ("text/plain", &[("origin", "null")], 403, "Origin"),
    ];
    for (content_type, extra, status, field) in cases {
        let response = post(content_type, extra).await.unwrap();
        assert_eq!(response.status(), status, "{content_type} {extra:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["field"], field, "{error}");
        node.assert_healthy().await;
    }
    assert_eq!(node.stored_messages(None).await, 0, "nothing is stored");
    // This machine's programs (no Origin) and the dashboard's own origin pass.
    assert_eq!(post("application/json", &[]).await.unwrap().status(), 202);
    let same = node
        .client
        .post(node.url("/v1/messages"))
        .header("content-type", "application/json")
        .header("origin", format!("http://localhost:{}", node.addr.port()))
        .body(message.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 202);

    // DNS rebinding: a page of evil.example that resolves to 127.0.0.1 sends `Host: evil.example:PORT`.
    let port = node.addr.port();
    for path in ["/", "/v1/messages", "/healthz", "/messages", "/metrics"] {
        let mut stream = TcpStream::connect(node.addr).await.unwrap();
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let (response, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(
            status_of(&response),
            Some(421),
            "{path}: {}",
            String::from_utf8_lossy(&response)
        );
        assert!(String::from_utf8_lossy(&response).contains("\"field\":\"Host\""));
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let mut stream = TcpStream::connect(node.addr).await.unwrap();
        stream
            .write_all(
                format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let (response, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(status_of(&response), Some(200), "Host: {host}");
    }
    node.assert_healthy().await;

    // HERALD_PUBLIC_URL's host is accepted too.
    let public = Node::start(&[("HERALD_PUBLIC_URL", "https://herald.example.com")]).await;
    let mut stream = TcpStream::connect(public.addr).await.unwrap();
    stream
        .write_all(
            b"GET /healthz HTTP/1.1\r\nHost: herald.example.com\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let (response, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status_of(&response), Some(200));
}

/// A 277 KB message: a 200 KB image referenced 500 times from its HTML.
fn cid_bomb() -> Value {
    let image: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    json!({
        "from": "a@example.test", "to": "b@example.test", "subject": "cid bomb", "text": "t",
        "html": "<img src=\"cid:logo\">".repeat(500),
        "attachments": [{"filename": "logo.png", "content_type": "image/png", "inline": true, "content_id": "logo",
                          "content_base64": base64::engine::general_purpose::STANDARD.encode(&image)}],
    })
}

#[tokio::test]
async fn the_dashboard_sends_an_inline_image_once_however_often_it_is_named() {
    let node = Node::start(&[]).await;
    let id = node.post_and_wait_delivered(&cid_bomb()).await;

    let html = node
        .client
        .get(node.url(&format!("/messages/{id}/html")))
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), 200);
    let policy = html.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("img-src 'self' data:;"), "{policy}");
    let html = html.text().await.unwrap();
    assert!(html.len() < 20_000, "the preview is {} bytes", html.len());
    assert_eq!(html.matches("src=\"attachments/0\"").count(), 500);
    node.assert_healthy().await;

    let image = node
        .client
        .get(node.url(&format!("/messages/{id}/attachments/0")))
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/png");
    assert_eq!(image.bytes().await.unwrap().len(), 200_000);

    // The inbox opens the newest message by itself: the page stays small too.
    let inbox = node.client.get(node.url("/inbox")).send().await.unwrap();
    assert_eq!(inbox.status(), 200);
    let inbox = inbox.text().await.unwrap();
    assert!(inbox.contains(&format!("/messages/{id}/html")));
    assert!(
        inbox.len() < 100_000,
        "the inbox page is {} bytes",
        inbox.len()
    );
    node.assert_healthy().await;
}

#[tokio::test]
async fn wrong_tokens_are_throttled_per_client() {
    let node = Node::start(&[("HERALD_API_TOKEN", "admin-token")]).await;
    let attacker = client_from("127.0.0.2");
    let admin = client_from("127.0.0.1");
    for n in 0..20 {
        let response = attacker
            .get(node.url("/v1/messages"))
            .bearer_auth(format!("guess-{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let refused = attacker
        .get(node.url("/v1/messages"))
        .bearer_auth("guess-21")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    // Even the right token is refused from that client until then: a guess cannot be confirmed.
    let right = attacker
        .get(node.url("/v1/messages"))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 429);
    // Another client is not locked out.
    let ok = admin
        .get(node.url("/v1/messages"))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    node.assert_healthy().await;

    // Sign-in: 20 wrong tokens from one address close the form to it, not to the admin.
    let sign_in = |client: &reqwest::Client, token: &str| {
        client
            .post(node.url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
    };
    for n in 0..20 {
        assert_eq!(
            sign_in(&attacker, &format!("guess-{n}"))
                .await
                .unwrap()
                .status(),
            401
        );
    }
    let refused = sign_in(&attacker, "guess-21").await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let admin_in = sign_in(&admin, "admin-token").await.unwrap();
    assert!(admin_in.status().is_redirection(), "{}", admin_in.status());
    assert!(
        admin_in.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("herald_session=")
    );
    node.assert_healthy().await;
}

#[tokio::test]
async fn trust_headers_are_refused_custom_headers_keep_their_order_and_control_characters_in_q_are_named()
 {
    let node = Node::start(&[]).await;
    for name in [
        "Authentication-Results",
        "ARC-Seal",
        "DKIM-Signature",
        "Received-SPF",
    ] {
        let response = node
            .client
            .post(node.url("/v1/messages"))
            .json(&json!({"from": "a@example.test", "to": "b@example.test", "subject": "s", "text": "t",
                          "headers": Value::Object([(name.to_owned(), json!("mx.example.test; dkim=pass"))].into_iter().collect())}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{name}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["field"], format!("headers.{name}"));
    }
    assert_eq!(node.stored_messages(None).await, 0, "nothing is stored");

    let body = r#"{"from": "a@example.test", "to": "b@example.test", "subject": "s", "text": "t",
                   "headers": {"X-Zulu": "1", "X-Alpha": "2", "X-Mike": "3"}}"#;
    let response = node
        .client
        .post(node.url("/v1/messages"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let raw = node
        .client
        .get(node.url(&format!("/v1/messages/{id}/raw")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = |name: &str| {
        raw.find(name)
            .unwrap_or_else(|| panic!("{name} missing in {raw}"))
    };
    assert!(
        at("X-Zulu: 1") < at("X-Alpha: 2") && at("X-Alpha: 2") < at("X-Mike: 3"),
        "{raw}"
    );

    for (path, field) in [
        ("/v1/messages?q=a%00b", "q"),
        ("/v1/messages?to=%01", "to"),
        ("/v1/messages?tag=x%00", "tag"),
    ] {
        let response = node.client.get(node.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["field"], field, "{path}");
        node.assert_healthy().await;
    }
    for path in ["/messages?q=a%00b", "/inbox?q=%00"] {
        let response = node.client.get(node.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains("q: control character")
        );
    }
    node.assert_healthy().await;
}

/// Signed in, the preview frame (sandboxed, so sent no cookie) fetches inline parts by signed URLs: each works
/// for its own part only, and a forged or moved signature gets nothing.
#[tokio::test]
async fn inline_part_urls_are_signed_for_their_part_when_a_token_is_needed() {
    let node = Node::start(&[("HERALD_API_TOKEN", "admin-token")]).await;
    let client = client_from("127.0.0.1");
    let response = client
        .post(node.url("/v1/messages"))
        .bearer_auth("admin-token")
        .json(&cid_bomb())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let signed_in = client
        .post(node.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=admin-token")
        .send()
        .await
        .unwrap();
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = client
        .get(node.url(&format!("/messages/{id}/html")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let start = html
        .find("src=\"attachments/0?s=")
        .expect("a signed part URL");
    let url = &html[start + 5..];
    let url = &url[..url.find('"').unwrap()];
    assert!(html.len() < 100_000, "the preview is {} bytes", html.len());
    let get = |path: String| {
        client
            .get(node.url(&format!("/messages/{id}/{path}")))
            .send()
    };
    let image = get(url.to_owned()).await.unwrap();
    assert_eq!(
        image.status(),
        200,
        "the signed URL works without the cookie"
    );
    assert_eq!(image.bytes().await.unwrap().len(), 200_000);
    let (path, query) = url.split_once('?').unwrap();
    let other_part = get(format!("attachments/1?{query}")).await.unwrap();
    assert_ne!(other_part.status(), 200, "a signature is for one part");
    let mut forged = url.to_owned();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    assert_ne!(
        get(forged).await.unwrap().status(),
        200,
        "a forged signature"
    );
    assert_ne!(
        get(path.to_owned()).await.unwrap().status(),
        200,
        "no signature, no cookie"
    );
    node.assert_healthy().await;
}

/// A message with a 5 MB HTML part and a 3 MB text part: the preview frame refuses the HTML (413) and the
/// pages show at most 1 MB of the text, so opening the inbox or the message stays cheap.
#[tokio::test]
async fn large_bodies_are_not_sent_whole_to_the_dashboard() {
    let node = Node::start(&[]).await;
    let line = "All work and no play makes a long newsletter.\n";
    let text = line.repeat(3_000_000 / line.len());
    let html = format!("<p>{}</p>", "<b>bold</b> ".repeat(5_000_000 / 12));
    let response = node
        .client
        .post(node.url("/v1/messages"))
        .json(&json!({"from": "a@example.test", "to": "b@example.test", "subject": "big", "text": text, "html": html}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let preview = node
        .client
        .get(node.url(&format!("/messages/{id}/html")))
        .send()
        .await
        .unwrap();
    assert_eq!(preview.status(), 413);
    assert!(preview.text().await.unwrap().contains("download the .eml"));
    let page = node
        .client
        .get(node.url(&format!("/messages/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("id=\"text-truncated\""));
    assert!(
        page.len() < 1_200_000,
        "the message page is {} bytes",
        page.len()
    );
    node.assert_healthy().await;
}

/// Under `ulimit -n 128` the default cap is 64 connections: 150 idle sockets cannot take the descriptors the
/// store and the engine need. Those over the cap get a 503 at once (so does `/healthz` while the cap is
/// full: an answer, not a hang), and once the idle ones time out the server serves and delivers as before.
#[tokio::test]
async fn idle_sockets_cannot_exhaust_file_descriptors() {
    let node = Node::start_with_fd_limit(&[("HERALD_HTTP_HEADER_TIMEOUT", "3s")], Some(128)).await;
    let mut sockets = Vec::new();
    for _ in 0..150 {
        sockets.push(TcpStream::connect(node.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = 0;
    for socket in &mut sockets {
        let mut byte = [0u8; 1];
        // An accepted idle socket says nothing; a refused one has its 503 waiting.
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(5), socket.peek(&mut byte)).await
            && n > 0
        {
            let (response, closed) = read_until_closed(socket, Duration::from_secs(1)).await;
            assert!(closed);
            assert_eq!(status_of(&response), Some(503));
            refused += 1;
        }
    }
    assert!(
        (150 - 64..=150 - 60).contains(&refused),
        "{refused} of 150 connections refused with a cap of 64"
    );
    let start = Instant::now();
    let mut probe = TcpStream::connect(node.addr).await.unwrap();
    probe
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", node.addr).as_bytes())
        .await
        .unwrap();
    let (response, _) = read_until_closed(&mut probe, Duration::from_secs(2)).await;
    assert_eq!(
        status_of(&response),
        Some(503),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "/healthz hung for {:?}",
        start.elapsed()
    );

    for socket in &mut sockets {
        let (_, closed) = read_until_closed(socket, Duration::from_secs(5)).await;
        assert!(closed, "an idle socket stayed open past the header timeout");
    }
    node.assert_healthy().await;
    node.post_and_wait_delivered(
        &json!({"from": "a@example.test", "to": "b@example.test", "subject": "after", "text": "t"}),
    )
    .await;
}
