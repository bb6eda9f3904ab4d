//! The dashboard in a real headless Chromium (see `tests/browser`): what a person sees, end to end. Mail goes
//! in through the API; the tests then use the pages as a person would. Screenshots of every page land in
//! `target/screenshots/`.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod app;
mod browser;
mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use app::{DEFAULTS, Options, TestApp, spawn_app};
use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post as on_post};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use browser::Browser;
use common::Backend;
use hmac::{KeyInit as _, Mac as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn post(app: &TestApp, body: &Value) -> String {
    let response = app.post_message(body).await;
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// Fails on console errors other than the HTTP statuses the test provoked on purpose (`/login - … 401`):
/// Chromium logs every 4xx answer to a script or form as an error.
async fn assert_no_other_console_errors(browser: &Browser, expected: &[(&str, u16)]) {
    let unexpected: Vec<String> = browser
        .console_errors()
        .await
        .into_iter()
        .filter(|line| {
            !expected.iter().any(|(path, status)| {
                line.contains(&format!("{path} - "))
                    && line.contains(&format!("status of {status}"))
            })
        })
        .collect();
    assert!(unexpected.is_empty(), "console errors: {unexpected:#?}");
}

/// The number the overview shows for `status`.
async fn shown_count(browser: &Browser, status: &str) -> Option<u64> {
    browser
        .eval(&format!(
            "const n = document.querySelector('.n[data-status=\"{status}\"]'); return n ? Number(n.textContent.replace(/,/g, '')) : null;"
        ))
        .await
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_a_delivery_within_a_second_without_reloading() {
    let Some(app) = spawn_app(Backend::Sqlite, DEFAULTS).await else {
        return;
    };
    let Some(browser) = Browser::open(&app.base).await else {
        return;
    };
    browser.goto("/").await;
    browser.wait_for_text("#live-state", "live").await;
    assert_eq!(shown_count(&browser, "delivered").await, Some(0));
    // The page marks itself, so a reload (which would clear the mark) cannot pass for a live update.
    browser
        .eval("window.herald_no_reload = true; return null;")
        .await;

    let id = post(
        &app,
        &json!({"from": "shop@example.test", "to": "ana@example.test", "subject": "live", "text": "x"}),
    )
    .await;
    app.wait_for_status(&id, "delivered").await;
    let delivered_at = Instant::now();
    browser
        .wait_until(
            "the overview to show 1 delivered",
            async || match shown_count(&browser, "delivered").await {
                Some(1) => Ok(()),
                other => Err(format!("delivered shows {other:?}")),
            },
        )
        .await;
    let lag = delivered_at.elapsed();
    println!("the overview showed the delivery {lag:?} after the API reported it");
    assert!(lag < Duration::from_secs(1), "took {lag:?}");
    assert_eq!(
        browser
            .eval("return window.herald_no_reload === true;")
            .await,
        json!(true),
        "the page was not reloaded"
    );
    // The chart drew the delivery: a bar of the delivered kind in the last hour.
    browser
        .wait_until("a delivered bar in the chart", async || {
            let bars = browser
                .eval("return document.querySelectorAll('#chart rect.delivered').length;")
                .await;
            if bars.as_u64() > Some(0) {
                Ok(())
            } else {
                Err("no delivered bar yet".into())
            }
        })
        .await;
    browser.wait_for_text("#relays", "127.0.0.1").await;
    browser.screenshot("overview").await;
    browser.assert_no_console_errors().await;
}

/// A TCP listener that records the first line of every HTTP request it gets: stands in for a tracking
/// server, to see what a message's HTML manages to fetch.
async fn beacon() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(Mutex::new(Vec::new()));
    let seen = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let n = socket.read(&mut buffer).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buffer[..n]);
                seen.lock()
                    .unwrap()
                    .push(request.lines().next().unwrap_or_default().to_owned());
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    (port, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_open_a_message_and_read_its_html_in_a_sandbox() {
    let Some(app) = spawn_app(Backend::Sqlite, DEFAULTS).await else {
        return;
    };
    let Some(browser) = Browser::open(&app.base).await else {
        return;
    };
    let (port, hits) = beacon().await;
    let html = format!(
        "<h1 id=\"headline\">Your parcel is on its way</h1>\
         <img id=\"remote\" src=\"http://127.0.0.1:{port}/remote-image.png\" alt=\"tracking\">\
         <script>new Image().src = 'http://127.0.0.1:{port}/script-ran'; document.write('<p id=pwned>pwned</p>');</script>"
    );
    for n in 0..3 {
        post(&app, &json!({"from": "shop@example.test", "to": format!("other{n}@example.test"), "subject": format!("Newsletter {n}"), "text": "news"})).await;
    }
    let id = post(
        &app,
        &json!({"from": "Shop <shop@example.test>", "to": "ana@example.test", "subject": "Parcel 7731 dispatched",
                "text": "Your parcel 7731 is on its way.", "html": html, "tags": ["parcels"]}),
    )
    .await;
    app.wait_for_status(&id, "delivered").await;

    browser.goto("/messages").await;
    browser.fill("#q", "parcel 7731").await;
    browser.click("form[role=search] button[type=submit]").await;
    browser
        .wait_for_text("#messages tbody", "Parcel 7731 dispatched")
        .await;
    let rows = browser.find_all("#messages tbody tr[data-id]").await;
    assert_eq!(rows.len(), 1, "the search finds exactly the one message");
    browser.screenshot("messages").await;
    browser
        .click(&format!("#messages tr[data-id=\"{id}\"] a"))
        .await;
    browser
        .wait_for_text("#subject", "Parcel 7731 dispatched")
        .await;
    browser.wait_for_text("#recipients", "250").await;
    browser.wait_for_text("#timeline", "delivered").await;

    // The HTML shows in its frame; its script never runs and its remote image is not fetched.
    let sandbox = browser
        .eval("return document.getElementById('preview').getAttribute('sandbox');")
        .await;
    assert_eq!(
        sandbox,
        json!(""),
        "the frame is sandboxed with no permissions"
    );
    browser.enter_frame("#preview").await;
    browser
        .wait_for_text("#headline", "Your parcel is on its way")
        .await;
    assert!(
        browser.find("#pwned").await.is_none(),
        "the message's script ran"
    );
    browser.leave_frame().await;
    browser.screenshot("message").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // let any (wrong) fetch reach the beacon
    assert!(
        hits.lock().unwrap().is_empty(),
        "the message's HTML fetched {:?}",
        hits.lock().unwrap()
    );

    // Remote images load when asked; scripts still never run.
    browser.click("#load-images").await;
    browser
        .wait_until("the remote image to be fetched", async || {
            let hits = hits.lock().unwrap().clone();
            if hits.iter().any(|h| h.contains("/remote-image.png")) {
                Ok(hits)
            } else {
                Err(format!("beacon saw {hits:?}"))
            }
        })
        .await;
    assert!(
        !hits
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.contains("script-ran")),
        "the message's script ran"
    );

    // The tabs work from the keyboard: arrow keys move between them.
    browser
        .wait_for("#tab-html")
        .await
        .send_keys("\u{E014}") // WebDriver's ArrowRight
        .await
        .unwrap();
    browser
        .wait_until("the Text tab to be selected by the arrow key", async || {
            let selected = browser
                .eval("return [document.activeElement.id, document.getElementById('panel-text').hidden];")
                .await;
            if selected == json!(["tab-text", false]) {
                Ok(())
            } else {
                Err(format!("focus and hidden: {selected}"))
            }
        })
        .await;
    // The text part, the headers and the raw download are one click away.
    browser.click("#tab-text").await;
    browser
        .wait_for_text("#text-body", "Your parcel 7731 is on its way.")
        .await;
    browser.click("#tab-headers").await;
    browser.wait_for_text("#headers", "Message-ID").await;
    browser.assert_no_console_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_a_template_and_watch_the_preview_follow() {
    let Some(app) = spawn_app(Backend::Sqlite, DEFAULTS).await else {
        return;
    };
    let Some(browser) = Browser::open(&app.base).await else {
        return;
    };
    browser.goto("/templates").await;
    browser.fill("#new-name", "welcome").await;
    browser.click("form button[type=submit]").await;
    browser.wait_for_text("#preview-subject", "Hello Ana").await;

    browser
        .fill("#data", r#"{"name": "Bo", "items": ["tea", "cake"]}"#)
        .await;
    browser.wait_for_text("#preview-subject", "Hello Bo").await;
    browser
        .fill(
            "#html",
            "<style>li { color: #c00 }</style><p>Hi {{ name }}</p><ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul>",
        )
        .await;
    browser.enter_frame("#preview-html").await;
    browser.wait_for_text("ul", "cake").await;
    let style = browser
        .eval("return document.querySelector('li').getAttribute('style');")
        .await;
    assert!(
        style.as_str().unwrap_or_default().contains("color"),
        "CSS is inlined as in the sent message: {style}"
    );
    browser.leave_frame().await;
    browser.wait_for_text("#preview-text", "cake").await;

    // A mistake shows where it is, and the preview recovers when it is fixed.
    browser.fill("#text", "Hello {{ name }}\n{% if %}\n").await;
    browser
        .wait_for_text("#template-error", "text, line 2")
        .await;
    // The offending line is shown under the message.
    browser
        .wait_for_text("#template-error .snippet", "2 | {% if %}")
        .await;
    let marked = browser
        .eval("return document.getElementById('text').getAttribute('aria-invalid');")
        .await;
    assert_eq!(marked, json!("true"), "the text field is marked invalid");
    browser
        .fill(
            "#text",
            "Hello {{ name }}, your order: {{ items|join(', ') }}\n",
        )
        .await;
    browser
        .wait_for_text("#preview-text", "your order: tea, cake")
        .await;
    let error_hidden = browser
        .eval("return document.getElementById('template-error').hidden;")
        .await;
    assert_eq!(error_hidden, json!(true));
    browser.screenshot("template-editor").await;

    browser.click("#save").await;
    browser.wait_for_text("#notice", "Template saved").await;
    let stored: Value = app.get_template("welcome").await.json().await.unwrap();
    assert_eq!(stored["subject"], "Hello {{ name }}");
    assert!(
        stored["html"]
            .as_str()
            .unwrap()
            .contains("{% for i in items %}")
    );
    assert_eq!(
        stored["text"],
        "Hello {{ name }}, your order: {{ items|join(', ') }}\n"
    );
    browser.goto("/templates").await;
    browser.wait_for_text("#templates", "welcome").await;
    browser.screenshot("templates").await;
    assert_no_other_console_errors(&browser, &[("/templates/welcome/preview", 422)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_scheduled_message_from_its_page() {
    let Some(app) = spawn_app(Backend::Sqlite, DEFAULTS).await else {
        return;
    };
    let Some(browser) = Browser::open(&app.base).await else {
        return;
    };
    let id = post(
        &app,
        &json!({"from": "shop@example.test", "to": "ana@example.test", "subject": "Reminder", "text": "later",
                "send_at": "2099-01-01T09:00:00Z"}),
    )
    .await;
    browser.goto("/messages?status=scheduled").await;
    browser.wait_for_text("#messages", "Reminder").await;
    browser.goto(&format!("/messages/{id}")).await;
    browser.wait_for_text("#status", "scheduled").await;
    browser.click("#cancel").await;
    browser.wait_for_text("#notice", "cancelled").await;
    browser.wait_for_text("#status", "cancelled").await;
    assert!(
        browser.find("#cancel").await.is_none(),
        "a cancelled message offers no cancel"
    );
    let view: Value = app.get_message(&id).await.json().await.unwrap();
    assert_eq!(view["status"], "cancelled");
    browser.assert_no_console_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_then_use_the_capture_inbox() {
    let options = Options {
        api_token: Some("browser-test-token-0123456789"),
        capture_inbox: true,
        ..DEFAULTS
    };
    let Some(mut app) = spawn_app(Backend::Sqlite, options).await else {
        return;
    };
    app.token = Some("browser-test-token-0123456789".into());
    let Some(browser) = Browser::open(&app.base).await else {
        return;
    };
    // A 1×1 PNG, named twice from the HTML: served once from its part's URL, which must work signed in.
    let pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let id = post(
        &app,
        &json!({"from": "shop@example.test", "to": "ana@example.test", "subject": "Welcome aboard",
                "html": "<h1 id=\"hello\">Welcome, Ana</h1><img id=\"logo\" src=\"cid:logo\"><img src=\"cid:logo\">",
                "attachments": [{"filename": "logo.png", "content_type": "image/png", "inline": true,
                                 "content_id": "logo", "content_base64": pixel}]}),
    )
    .await;
    app.wait_for_status(&id, "delivered").await;

    browser.goto("/inbox").await;
    browser.wait_for("#token").await;
    assert!(browser.current_url().await.contains("/login?next="));
    browser.fill("#token", "wrong").await;
    browser.click("form button[type=submit]").await;
    browser.wait_for_text("#login-error", "not valid").await;
    browser
        .fill("#token", "browser-test-token-0123456789")
        .await;
    browser.click("form button[type=submit]").await;
    browser.wait_for_text("#inbox-list", "Welcome aboard").await;
    assert!(browser.current_url().await.ends_with("/inbox"));
    let cookie_visible = browser.eval("return document.cookie;").await;
    assert!(
        !cookie_visible
            .as_str()
            .unwrap_or_default()
            .contains("herald_session"),
        "the session cookie is HttpOnly"
    );
    browser.enter_frame("#reading iframe").await;
    browser.wait_for_text("#hello", "Welcome, Ana").await;
    browser
        .wait_until("the inline image to load in the frame", async || {
            let width = browser
                .eval("return document.getElementById('logo').naturalWidth;")
                .await;
            if width == json!(1) {
                Ok(())
            } else {
                let fetched = browser
                    .eval("return JSON.stringify(performance.getEntriesByType('resource').map(e => [e.name, e.responseStatus]));")
                    .await;
                Err(format!("naturalWidth is {width}; fetched {fetched}"))
            }
        })
        .await;
    browser.leave_frame().await;
    browser.screenshot("inbox").await;

    browser.click(".signout button").await;
    browser.wait_for("#token").await;
    browser.goto("/").await;
    browser.wait_for("#token").await;
    assert_no_other_console_errors(&browser, &[("/login", 401)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_fit_a_phone_window() {
    let Some(app) = spawn_app(Backend::Sqlite, DEFAULTS).await else {
        return;
    };
    let id = post(
        &app,
        &json!({"from": "a-rather-long-sender-address@shop.example.test", "to": "ana@example.test",
                "subject": "A subject long enough to wrap on a small screen, as real subjects do", "text": "x", "html": "<p>x</p>"}),
    )
    .await;
    app.wait_for_status(&id, "delivered").await;
    let Some(browser) = Browser::open_narrow(&app.base).await else {
        return;
    };
    for (path, name) in [
        ("/".to_owned(), "overview-narrow"),
        ("/messages".to_owned(), "messages-narrow"),
        (format!("/messages/{id}"), "message-narrow"),
        ("/templates/welcome".to_owned(), "template-narrow"),
        ("/webhooks/new".to_owned(), "webhook-new-narrow"),
    ] {
        browser.goto(&path).await;
        browser.wait_for("main h1").await;
        let width = browser
            .eval("return document.documentElement.scrollWidth;")
            .await;
        assert!(
            width.as_u64().unwrap() <= 390,
            "{path} is {width} px wide in a 390 px window"
        );
        browser.screenshot(name).await;
    }
    browser.assert_no_console_errors().await;
}

/// One request a webhook receiver got: the Standard Webhooks headers and the body.
#[derive(Debug, Clone)]
struct Hook {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// A webhook receiver on a loopback port: records every POST, answers 200.
async fn hook_receiver() -> (String, Arc<Mutex<Vec<Hook>>>) {
    let got: Arc<Mutex<Vec<Hook>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            on_post(
                async |State(got): State<Arc<Mutex<Vec<Hook>>>>,
                       headers: HeaderMap,
                       body: Bytes| {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default()
                    };
                    got.lock().unwrap().push(Hook {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body: String::from_utf8(body.to_vec()).unwrap(),
                    });
                    "thanks"
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// Polls until the receiver has `n` requests (deadline 10 s).
async fn hooks_received(got: &Mutex<Vec<Hook>>, n: usize) -> Vec<Hook> {
    let start = Instant::now();
    loop {
        let hooks = got.lock().unwrap().clone();
        if hooks.len() >= n {
            return hooks;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} webhook requests, expected {n}: {hooks:#?}",
            hooks.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether one of the request's `v1,` signatures is the HMAC-SHA256 of `{id}.{timestamp}.{body}` under the
/// key of `secret` (`whsec_` + base64), as the Standard Webhooks specification says; computed here, not by
/// Herald's code.
fn signed_by(secret: &str, hook: &Hook) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", hook.id, hook.timestamp, hook.body).as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    hook.signature.split(' ').any(|s| s == expected)
}

/// The secret the page shows once.
async fn shown_secret(browser: &Browser) -> String {
    browser.wait_for("#webhook-secret").await;
    let secret = browser
        .eval("return document.getElementById('webhook-secret').value;")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    secret
}

/// A webhook endpoint managed in the browser: added (a bad URL first, refused by name with the typing kept),
/// its secret read off the page verifies the delivery a real receiver gets; rotated, the next delivery is
/// signed by the new secret (and, for 24 hours, the old); deleted. The secret shows on no other page and in
/// no URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manage_a_webhook_endpoint_and_verify_its_signatures() {
    let options = Options {
        env: &[("HERALD_WEBHOOK_ALLOW_PRIVATE", "1")],
        ..DEFAULTS
    };
    let Some(app) = spawn_app(Backend::Sqlite, options).await else {
        return;
    };
    let Some(browser) = Browser::open(&app.base).await else {
        return;
    };
    let (url, got) = hook_receiver().await;

    browser.goto("/webhooks").await;
    browser.wait_for("#no-webhooks").await;
    browser.click("#new-webhook").await;
    browser.wait_for("#webhook-form").await;
    browser.fill("#url", "ftp://hooks.example.test/in").await;
    browser.fill("#description", "Order updates").await;
    browser
        .click("input[name=events][value=\"message.delivered\"]")
        .await;
    browser.click("#save-webhook").await;
    browser.wait_for_text("#webhook-error", "url: scheme").await;
    let kept = browser
        .eval("return [document.getElementById('description').value, document.querySelector('input[name=events][value=\"message.delivered\"]').checked, document.getElementById('url').getAttribute('aria-invalid')];")
        .await;
    assert_eq!(kept, json!(["Order updates", true, "true"]));
    browser.fill("#url", &url).await;
    browser.screenshot("webhook-new").await;
    browser.click("#save-webhook").await;
    let secret = shown_secret(&browser).await;
    browser
        .wait_for_text("#secret-card", "it will not be shown again")
        .await;
    assert!(!browser.current_url().await.contains(&secret[6..12]));
    browser.click("#copy-secret").await;
    browser
        .wait_until("the copy button to answer", async || {
            let label = browser.text("#copy-secret").await;
            if label == "Copied" || label.starts_with("Selected") {
                Ok(())
            } else {
                Err(format!("the button says {label:?}"))
            }
        })
        .await;
    browser.screenshot("webhook-secret").await;

    let hooks = app.get("/v1/webhooks").await.json::<Value>().await.unwrap();
    let hook = &hooks["items"][0];
    assert_eq!(hook["url"], url.as_str());
    assert_eq!(hook["events"], json!(["message.delivered"]));
    assert_eq!(hook["description"], "Order updates");
    let id = hook["id"].as_str().unwrap().to_owned();

    // The secret verifies what the receiver gets.
    let message = post(
        &app,
        &json!({"from": "shop@example.test", "to": "ana@example.test", "subject": "Shipped", "text": "x"}),
    )
    .await;
    let first = hooks_received(&got, 1).await;
    assert_eq!(first.len(), 1, "only message.delivered was ticked");
    let event: Value = serde_json::from_str(&first[0].body).unwrap();
    assert_eq!(event["type"], "message.delivered");
    assert_eq!(event["data"]["message_id"], message.as_str());
    assert!(signed_by(&secret, &first[0]), "{first:#?}");
    let mut altered = first[0].clone();
    altered.body.push(' ');
    assert!(
        !signed_by(&secret, &altered),
        "a changed body does not verify"
    );

    // The list shows the delivery, never the secret.
    browser.click("#done").await;
    browser
        .wait_for_text(&format!("#webhook-{id} .deliveries"), "message.delivered")
        .await;
    let html = browser
        .eval("return document.documentElement.outerHTML;")
        .await;
    assert!(!html.as_str().unwrap().contains(&secret[6..]));
    browser.screenshot("webhooks").await;

    // Rotate, confirmed: the new secret signs the next delivery, the old one still does beside it.
    browser.click(&format!("#webhook-{id} a.rotate")).await;
    browser.wait_for_text("#confirm", "24 hours").await;
    browser.click("#confirm-rotate").await;
    let rotated = shown_secret(&browser).await;
    assert_ne!(rotated, secret);
    browser.wait_for_text("#secret-card", "24 hours").await;
    post(
        &app,
        &json!({"from": "shop@example.test", "to": "bo@example.test", "subject": "Shipped", "text": "x"}),
    )
    .await;
    let second = hooks_received(&got, 2).await[1].clone();
    assert!(signed_by(&rotated, &second), "{second:#?}");
    assert!(
        signed_by(&secret, &second),
        "the old secret signs for 24 hours"
    );
    assert_eq!(second.signature.split(' ').count(), 2);

    // Delete, confirmed: gone from the page and the API.
    browser.click("#done").await;
    browser.click(&format!("#webhook-{id} a.delete")).await;
    browser.wait_for_text("#confirm", "cannot be undone").await;
    browser.click("#confirm-delete").await;
    browser.wait_for_text("#notice", "Endpoint deleted").await;
    browser.wait_for("#no-webhooks").await;
    let hooks = app.get("/v1/webhooks").await.json::<Value>().await.unwrap();
    assert_eq!(hooks["items"], json!([]));
    assert_no_other_console_errors(&browser, &[("/webhooks", 422)]).await;
}
