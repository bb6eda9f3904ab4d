//! Templates as an attacker with an ordinary API token would write them (issue 16), against a real `herald
//! serve` process: sources that overflowed the compiler's stack, HTML that overflowed css-inline's stack or
//! kept html2text busy for minutes, and a small batch that multiplied into a gigabyte. Each test checks that
//! the process stays up, that `/healthz` answers within 100 ms while the attack runs, that the request gets a
//! clear 4xx naming what is wrong, and that nothing is stored.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use herald::{
    clock::SystemClock,
    store::{Store, TemplateSource},
};
use serde_json::{Value, json};

/// One `herald serve` process on a SQLite file, capturing mail (no relay).
struct Node {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Node {
    async fn start(database_url: &str) -> Node {
        let addr = common::serve::free_addr();
        let mut command = common::serve::serve_command(addr, database_url);
        command.env("HERALD_FROM", "shop@example.com");
        Node {
            child: common::serve::spawn_ready(command, addr).await,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .request(method, self.url(path))
            .json(body)
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Asserts the process is still running.
    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "herald serve exited"
        );
    }

    async fn message_count(&self) -> usize {
        let (status, body) = self
            .send(reqwest::Method::GET, "/v1/messages?limit=1000", &json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().unwrap().len()
    }

    async fn template_names(&self) -> Vec<String> {
        let (status, body) = self
            .send(reqwest::Method::GET, "/v1/templates", &json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    }

    fn terminate(mut self) {
        common::serve::terminate(&mut self.child);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `/healthz` every 10 ms on its own connection while an attack runs; [`Self::stop`] returns the
/// slowest answer and how many there were.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Duration>>,
}

impl HealthWatch {
    async fn start(node: &Node) -> HealthWatch {
        let client = reqwest::Client::new();
        let url = node.url("/healthz");
        // Connected before the attack starts: what is measured is the answer, not the TCP handshake.
        assert!(client.get(&url).send().await.unwrap().status().is_success());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut answers = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answered = client.get(&url).send().await;
                assert!(
                    answered.is_ok_and(|r| r.status().is_success()),
                    "/healthz failed during the attack"
                );
                answers.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            answers
        });
        HealthWatch { stop, task }
    }

    /// Every answer within 100 ms, but for at most one in a hundred (at least one) that may take up to 1 s:
    /// this shared two-core machine runs at a load of 12-18, and there a single `/healthz` answer with no
    /// render running at all took 170 ms once. A worker blocked by a render (what this guards against) blocks
    /// for the render's whole duration: seconds, and every answer meanwhile.
    async fn stop(self) {
        let (slowest, _, count, over) = self.finish().await;
        assert!(
            over <= (count / 100).max(1) && slowest < Duration::from_secs(1),
            "/healthz: {over} of {count} answers over 100 ms, the slowest {slowest:?}"
        );
    }

    async fn finish(self) -> (Duration, Duration, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let mut answers = self.task.await.unwrap();
        assert!(!answers.is_empty(), "/healthz was polled during the attack");
        answers.sort();
        let slowest = *answers.last().unwrap();
        let p99 = answers[(answers.len() * 99 / 100).min(answers.len() - 1)];
        let count = answers.len();
        let over = answers
            .iter()
            .filter(|a| **a >= Duration::from_millis(100))
            .count();
        println!(
            "/healthz: {count} answers during the attack, {over} over 100 ms, p99 {p99:?}, the \
             slowest {slowest:?}"
        );
        (slowest, p99, count, over)
    }
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("herald.db").display())
}

/// Asserts a template error response names the template, the part and the code.
fn assert_template_error(status: u16, body: &Value, code: &str, template: &str, part: &str) {
    assert_eq!(status, 422, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert_eq!(error["template"], template, "{body}");
    assert_eq!(error["part"], part, "{body}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("template {template:?}")),
        "{message}"
    );
}

#[tokio::test]
async fn expression_chains_that_overflowed_the_stack_are_refused_at_put() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&sqlite_url(&dir)).await;
    let payloads = [
        format!("{{{{ {} }}}}", vec!["1"; 7000].join("+")),
        format!("{{{{ {}x }}}}", "not ".repeat(20_000)),
        format!("{{{{ 1{} }}}}", "|abs".repeat(10_000)),
    ];
    for text in payloads {
        let watch = HealthWatch::start(&node).await;
        let (status, body) = node
            .send(
                reqwest::Method::PUT,
                "/v1/templates/x",
                &json!({"subject": "s", "text": text}),
            )
            .await;
        watch.stop().await;
        assert_template_error(status, &body, "template_too_complex", "x", "text");
        assert_eq!(body["error"]["line"], 1, "{body}");
        node.assert_alive();
    }
    // The same chain in the subject is refused naming the subject.
    let (status, body) = node
        .send(
            reqwest::Method::PUT,
            "/v1/templates/x",
            &json!({"subject": format!("{{{{ 1{} }}}}", "|abs".repeat(10_000)), "text": "t"}),
        )
        .await;
    assert_template_error(status, &body, "template_too_complex", "x", "subject");
    assert!(node.template_names().await.is_empty(), "nothing stored");
    node.terminate();
}

#[tokio::test]
async fn html_that_crashed_css_inlining_or_stalled_the_text_part_is_refused_at_put() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&sqlite_url(&dir)).await;
    for html in [
        "<style>p{color:red}</style>{{ (\"<div>\" * 3000)|safe }}",
        "{{ (\"<div>\" * 300000)|safe }}",
    ] {
        let watch = HealthWatch::start(&node).await;
        let (status, body) = node
            .send(
                reqwest::Method::PUT,
                "/v1/templates/bomb",
                &json!({"subject": "s", "text": "t", "html": html}),
            )
            .await;
        watch.stop().await;
        assert_template_error(status, &body, "template_html_too_deep", "bomb", "html");
        node.assert_alive();
    }
    // The dashboard's preview of an unsaved draft goes through the same checks (no token: local mode).
    let editor = node
        .client
        .get(node.url("/templates/bomb"))
        .send()
        .await
        .unwrap();
    let cookie = editor
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("herald_csrf="))
        .and_then(|v| v.split(';').next())
        .expect("an open dashboard sets a CSRF cookie")
        .to_owned();
    let page = editor.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the editor carries a CSRF token");
    let watch = HealthWatch::start(&node).await;
    let response = node
        .client
        .post(node.url("/templates/bomb/preview"))
        .header("cookie", &cookie)
        .header("x-csrf-token", csrf)
        .json(&json!({
            "subject": "s",
            "html": "<style>p{color:red}</style>{{ (\"<div>\" * 3000)|safe }}",
        }))
        .send()
        .await
        .unwrap();
    watch.stop().await;
    assert_eq!(response.status().as_u16(), 422);
    let body: Value = response.json().await.unwrap();
    // The editor's own error shape: message, template, part, line.
    assert_eq!(
        (&body["error"]["template"], &body["error"]["part"]),
        (&json!("bomb"), &json!("html")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nests elements more than 256 deep"),
        "{body}"
    );
    node.assert_alive();
    assert!(node.template_names().await.is_empty(), "nothing stored");
    node.terminate();
}

#[tokio::test]
async fn a_slow_text_part_runs_off_the_async_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&sqlite_url(&dir)).await;
    // Close to the output limit and allowed by every check: the trial render's text-from-HTML takes
    // seconds (in a debug build), on a render thread.
    let html = "{{ (\"<p>word word</p>\" * 120000)|safe }}";
    // More at once than there are render threads: the extra ones wait or are refused, no thread is added.
    let watch = HealthWatch::start(&node).await;
    let started = Instant::now();
    let puts = (0..4).map(|i| {
        let node = &node;
        async move {
            node.send(
                reqwest::Method::PUT,
                &format!("/v1/templates/slow{i}"),
                &json!({"subject": "s", "html": html}),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(puts).await;
    let took = started.elapsed();
    watch.stop().await;
    for (i, (status, body)) in answers.iter().enumerate() {
        match status {
            200 => {}
            422 => assert_template_error(
                *status,
                body,
                "template_timeout",
                &format!("slow{i}"),
                "text",
            ),
            503 => assert_eq!(body["error"]["code"], "renderer_busy", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        took < Duration::from_secs(6),
        "each caller waits at most the render's budget (twice: compile, then the trial render), took {took:?}"
    );
    node.assert_alive();
    node.terminate();
}

#[tokio::test]
async fn a_stored_bomb_is_a_422_at_send_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    {
        // Stored before the checks existed: written to the store directly, not through PUT.
        let store = Store::open(&url, Arc::new(SystemClock)).await.unwrap();
        for (name, text, html) in [
            (
                "css",
                None,
                Some("<style>p{color:red}</style>{{ (\"<div>\" * 3000)|safe }}"),
            ),
            (
                "chain",
                Some(format!("{{{{ {} }}}}", vec!["1"; 7000].join("+"))),
                None,
            ),
        ] {
            store
                .put_template(
                    &TemplateSource {
                        name: name.into(),
                        subject: "s".into(),
                        text,
                        html: html.map(str::to_owned),
                    },
                    None,
                )
                .await
                .unwrap();
        }
    }
    for round in 0..2 {
        let mut node = Node::start(&url).await;
        // Accepted at PUT (its trial render has no data), deep only with this data.
        let (status, body) = node
            .send(
                reqwest::Method::PUT,
                "/v1/templates/by-data",
                &json!({"subject": "s", "html": "<style>p{color:red}</style>{{ body|safe }}"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let deep = "<div>".repeat(3000);
        let watch = HealthWatch::start(&node).await;
        for (template, data, code, part) in [
            ("css", json!({}), "template_html_too_deep", "html"),
            ("chain", json!({}), "template_too_complex", "text"),
            (
                "by-data",
                json!({"body": deep}),
                "template_html_too_deep",
                "html",
            ),
        ] {
            let (status, body) = node
                .send(
                    reqwest::Method::POST,
                    "/v1/messages",
                    &json!({"to": "a@example.com", "template": template, "data": data}),
                )
                .await;
            assert_template_error(status, &body, code, template, part);
            assert_eq!(body["error"]["field"], "data", "round {round}: {body}");
            let (status, body) = node
                .send(
                    reqwest::Method::POST,
                    "/v1/batches",
                    &json!({"template": template, "recipients": [
                        {"to": "a@example.com", "data": data},
                        {"to": "b@example.com", "data": data},
                    ]}),
                )
                .await;
            assert_template_error(status, &body, code, template, part);
            let (status, body) = node
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/templates/{template}/preview"),
                    &json!({"data": data}),
                )
                .await;
            assert_template_error(status, &body, code, template, part);
        }
        watch.stop().await;
        node.assert_alive();
        assert_eq!(
            node.message_count().await,
            0,
            "round {round}: nothing stored"
        );
        node.terminate();
    }
}

#[tokio::test]
async fn a_small_batch_that_multiplies_into_a_gigabyte_is_refused_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    // The default budget, as a user gets it.
    let mut node = Node::start(&sqlite_url(&dir)).await;
    let (status, body) = node
        .send(
            reqwest::Method::PUT,
            "/v1/templates/big",
            &json!({
                "subject": "s",
                "text": "{{ 'x' * 2000000 }}",
                "html": "{{ 'y' * 2000000 }}",
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let recipients: Vec<Value> = (0..100)
        .map(|i| json!({"to": format!("r{i}@example.com")}))
        .collect();
    let request = json!({"template": "big", "recipients": recipients});
    assert!(request.to_string().len() < 4096, "a small request");
    let watch = HealthWatch::start(&node).await;
    let (status, body) = node
        .send(reqwest::Method::POST, "/v1/batches", &request)
        .await;
    watch.stop().await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "request_budget", "{body}");
    assert_eq!(body["error"]["limit"], 256 * 1024 * 1024, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HERALD_REQUEST_BUDGET"),
        "{body}"
    );
    node.assert_alive();
    assert_eq!(node.message_count().await, 0, "nothing stored");
    // A batch within the budget still goes through.
    let (status, body) = node
        .send(
            reqwest::Method::POST,
            "/v1/batches",
            &json!({"template": "big", "recipients": [{"to": "a@example.com"}]}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(node.message_count().await, 1);
    node.terminate();
}
