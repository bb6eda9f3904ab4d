//! What receivers' filters think of Herald's output (issue 13): SpamAssassin (Debian's, run locally with `-L`:
//! no network rules, no DNS) scores the standard notification, a template message, a small alert and an
//! HTML-only message, each sent through the API with the default configuration and a DKIM key, below 1.0; the
//! reports are printed so CI shows them. The headers the big providers expect of transactional mail are checked too: Message-ID on the
//! sender's domain, Date, MIME-Version, a Subject, a text part, and the DKIM signature.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod app;
mod common;

use std::{path::PathBuf, process::Command};

use app::{DEFAULTS, Options, TestApp, spawn_app};
use base64::Engine as _;
use common::Backend;
use mail_parser::MessageParser;
use serde_json::{Value, json};

const SHOP: Options = Options {
    default_from: Some("Example Shop <noreply@shop.example>"),
    ..DEFAULTS
};

/// `shared/bench/fixtures`, looked up from this crate upwards (beside the repository, as the benches do).
fn fixtures() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let candidate = dir.join("shared/bench/fixtures");
        if candidate.join("notification.json").exists() {
            return candidate;
        }
        assert!(
            dir.pop(),
            "shared/bench/fixtures not found above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

/// SpamAssassin's score and report for `message`, or `None` when it is not installed here (and
/// `HERALD_REQUIRE_PEERS` is unset).
fn spamassassin(message: &[u8]) -> Option<(f64, String)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("message.eml");
    std::fs::write(&path, message).unwrap();
    let out = match Command::new("spamassassin")
        .args(["-L", "-t"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            if std::env::var_os("HERALD_REQUIRE_PEERS").is_some() {
                panic!("cannot run spamassassin (scripts/setup-test-deps installs it): {e}");
            }
            println!(
                "skipped: cannot run spamassassin ({e}); set HERALD_REQUIRE_PEERS to make this a failure"
            );
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find(|l| l.starts_with("X-Spam-Status:"))
        .unwrap_or_else(|| {
            panic!(
                "no X-Spam-Status in spamassassin's output:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = status
        .split("score=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {status}"));
    let report = text
        .split("Content analysis details:")
        .nth(1)
        .map(|r| {
            format!(
                "Content analysis details:{}",
                r.split("\n\n\n").next().unwrap_or(r)
            )
        })
        .unwrap_or_default();
    Some((score, report))
}

async fn send(app: &TestApp, body: Value) -> Vec<u8> {
    let response = app.post_message(&body).await;
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    app.get_raw(accepted["id"].as_str().unwrap()).await
}

fn check_headers(name: &str, raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap();
    assert!(
        head.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
        "{name}: not signed first:\n{head}"
    );
    let message = MessageParser::default().parse(raw).unwrap();
    let id = message
        .message_id()
        .unwrap_or_else(|| panic!("{name}: no Message-ID"));
    assert!(
        id.ends_with("@shop.example"),
        "{name}: Message-ID {id} is not on the sender's domain"
    );
    assert!(message.date().is_some(), "{name}: no Date");
    assert!(
        head.contains("\r\nMIME-Version: 1.0\r\n"),
        "{name}: no MIME-Version"
    );
    assert!(
        !message.subject().unwrap_or_default().trim().is_empty(),
        "{name}: empty Subject"
    );
    assert!(
        message.body_text(0).is_some_and(|t| !t.trim().is_empty()),
        "{name}: no text part"
    );
}

/// The store does not change the bytes: SQLite only, which is what a user gets by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_kinds_of_mail_score_below_one() {
    let Some(app) = spawn_app(Backend::Sqlite, SHOP).await else {
        return;
    };
    let response = app
        .send(app.client.post(format!("{}/v1/dkim", app.base)).json(
            &json!({"domain": "shop.example", "selector": "hygiene", "algorithm": "ed25519"}),
        ))
        .await;
    assert_eq!(response.status().as_u16(), 201);

    // The standard notification of the benches: text and HTML, an inline logo, a PDF invoice.
    let dir = fixtures();
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let meta: Value = serde_json::from_slice(&read("notification.json")).unwrap();
    let personalise = |text: String| {
        text.replace("{{name}}", "王小明 #7")
            .replace("{{order_no}}", "ORD-100000007")
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let notification = send(
        &app,
        json!({
            "from": format!("{} <{}>", meta["from_name"].as_str().unwrap(), meta["from_addr"].as_str().unwrap()),
            "to": "王小明 <customer7@example.test>",
            "subject": meta["subject_template"].as_str().unwrap().replace("{{order_no}}", "ORD-100000007"),
            "text": personalise(String::from_utf8(read("body.txt")).unwrap()),
            "html": personalise(String::from_utf8(read("body.html")).unwrap()),
            "attachments": [
                {"filename": "logo.png", "content_type": "image/png", "content_base64": b64.encode(read("logo.png")),
                 "inline": true, "content_id": meta["inline_image_cid"].as_str().unwrap()},
                {"filename": meta["attachment_filename"].as_str().unwrap(), "content_type": "application/pdf",
                 "content_base64": b64.encode(read("invoice.pdf"))},
            ],
        }),
    )
    .await;

    // A template message: the text part is made from the HTML, CSS inlined.
    let template = json!({
        "subject": "Your password was changed, {{ name }}",
        "html": "<html><head><style>p { color: #222; font-family: sans-serif } .small { font-size: 12px }</style></head>\
                 <body><p>Hello {{ name }},</p><p>the password of your account was changed on {{ when }}.</p>\
                 <p>If this was not you, <a href=\"https://shop.example/security\">secure your account</a>.</p>\
                 <p class=\"small\">Example Shop, 1 Market Street, Springfield</p></body></html>",
    });
    assert_eq!(
        app.put_template("password-changed", &template)
            .await
            .status()
            .as_u16(),
        200
    );
    let templated = send(
        &app,
        json!({"to": "Ann Lee <ann@example.test>", "template": "password-changed", "data": {"name": "Ann", "when": "3 December 2026, 14:05 UTC"}}),
    )
    .await;

    // A small alert: one line of text.
    let alert = send(
        &app,
        json!({"from": "Example Shop Alerts <alerts@shop.example>", "to": "ops@example.test", "subject": "Disk 91% full on db-1", "text": "Disk usage on db-1 reached 91% at 14:05 UTC.\n"}),
    )
    .await;

    // HTML alone through /v1/messages (no template): it gets the text part made from its HTML, as a template
    // does; SpamAssassin's MIME_HTML_ONLY fired on it before.
    let html_only = send(
        &app,
        json!({"to": "Ann Lee <ann@example.test>", "subject": "Your order ORD-1 has shipped",
               "html": "<p>Hello Ann,</p><p>your order ORD-1 has shipped and arrives on Friday.</p>\
                        <p><a href=\"https://shop.example/orders/1\">Track your parcel</a></p>"}),
    )
    .await;
    let html_only_text = String::from_utf8_lossy(&html_only);
    assert!(
        html_only_text.contains("Content-Type: multipart/alternative")
            && html_only_text.contains("Content-Type: text/plain"),
        "HTML-only message without a text part:\n{html_only_text}"
    );

    let mut scores = Vec::new();
    for (name, raw) in [
        ("standard notification", &notification),
        ("template message", &templated),
        ("small alert", &alert),
        ("HTML-only API message", &html_only),
    ] {
        check_headers(name, raw);
        let Some((score, report)) = spamassassin(raw) else {
            app.stop().await;
            return;
        };
        println!(
            "== SpamAssassin on the {name} ({} bytes): score {score}\n{report}",
            raw.len()
        );
        assert!(
            !report.contains("MIME_HTML_ONLY"),
            "{name} is HTML-only to SpamAssassin"
        );
        scores.push((name, score));
    }
    for (name, score) in scores {
        assert!(score < 1.0, "SpamAssassin scores the {name} {score}");
    }
    app.stop().await;
}
