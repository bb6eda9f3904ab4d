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
use browser::Browser;
use common::Backend;
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
