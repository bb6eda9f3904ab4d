//! The dashboard over HTTP: pages, the message's sandboxed HTML, actions, sign-in and CSRF, the live stream.
//! (The same pages in a real browser are in `dashboard_browser.rs`.) Every test runs on SQLite and PostgreSQL.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod app;
mod common;

use std::time::{Duration, Instant};

use app::{DEFAULTS, Options, TestApp, spawn_app};
use base64::Engine as _;
use common::Backend;
use herald_testkit::{Fault, ServerConfig, When};
use serde_json::{Value, json};

const CAPTURE: Options = Options {
    capture_inbox: true,
    ..DEFAULTS
};

const TOKEN: &str = "dashboard-secret-token-123";

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn page(app: &TestApp, path: &str) -> (u16, String) {
    let response = browser()
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The CSRF token a page's forms carry.
fn csrf_of(html: &str) -> String {
    let start = html
        .find("name=\"csrf-token\" content=\"")
        .expect("csrf meta")
        + 27;
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

/// The `herald_csrf` cookie an open dashboard sets.
fn cookie_of(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// A form posted as the browser would, with the viewer's cookie.
async fn submit(
    client: &reqwest::Client,
    url: &str,
    cookie: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    client
        .post(url)
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

fn rich_message(subject: &str) -> Value {
    let png =
        base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nnot really a png");
    json!({
        "from": "Shop <shop@example.test>",
        "to": ["ana@example.test", "bo@example.test"],
        "subject": subject,
        "text": "Your order 1042 has shipped.",
        "html": "<h1>Shipped</h1><img src=\"cid:logo@shop\" alt=\"logo\"><img src=\"https://tracker.example/pixel.png\"><script>document.title='pwned'</script>",
        "tags": ["orders", "shipping"],
        "attachments": [
            {"filename": "logo.png", "content_type": "image/png", "content_base64": png, "inline": true, "content_id": "logo@shop"},
            {"filename": "Rechnung März.txt", "content_type": "text/plain", "content_base64": base64::engine::general_purpose::STANDARD.encode("invoice")}
        ]
    })
}

async fn post(app: &TestApp, body: &Value) -> String {
    let response = app.post_message(body).await;
    assert_eq!(
        response.status().as_u16(),
        202,
        "{}",
        response.text().await.unwrap()
    );
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn pages_show_the_archive_a_message_and_its_parts(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    let id = post(&app, &rich_message("Order 1042 shipped")).await;
    app.wait_for_status(&id, "delivered").await;

    let (status, overview) = page(&app, "/").await;
    assert_eq!(status, 200);
    assert!(
        overview.contains("data-status=\"delivered\">1<"),
        "{overview}"
    );
    assert!(overview.contains("id=\"overview-data\""));

    let (status, list) = page(&app, "/messages?q=shipped").await;
    assert_eq!(status, 200);
    assert!(list.contains(&format!("/messages/{id}")), "{list}");
    assert!(list.contains("ana@example.test, bo@example.test"));
    let (_, none) = page(&app, "/messages?q=nothinglikethis").await;
    assert!(none.contains("No message matches"));
    let (_, by_tag) = page(&app, "/messages?tag=shipping&status=delivered").await;
    assert!(by_tag.contains(&format!("/messages/{id}")));
    let (_, other_tag) = page(&app, "/messages?tag=newsletter").await;
    assert!(!other_tag.contains(&format!("/messages/{id}")));

    let (status, detail) = page(&app, &format!("/messages/{id}")).await;
    assert_eq!(status, 200);
    for expected in [
        "Order 1042 shipped",
        "ana@example.test",
        "250",
        "sandbox=\"\"",
        "Your order 1042 has shipped.",
        "Rechnung März.txt",
        "Message-ID",
        "<strong>queued</strong>",
        "<dt>Source</dt><dd>HTTP API</dd>",
    ] {
        assert!(detail.contains(expected), "detail lacks {expected:?}");
    }
    assert!(
        detail.contains("id=\"resend\""),
        "a delivered message can be resent"
    );
    assert!(
        !detail.contains("id=\"cancel\""),
        "a delivered message cannot be cancelled"
    );

    // The HTML is served under a policy that runs no script and fetches nothing remote, with the inline
    // image pointing at its part, which is served by that URL.
    let response = browser()
        .get(format!("{}/messages/{id}/html", app.base))
        .send()
        .await
        .unwrap();
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.starts_with("sandbox;") && policy.contains("img-src 'self' data:;"),
        "{policy}"
    );
    let html = response.text().await.unwrap();
    assert!(html.contains("src=\"attachments/0\""), "{html}");
    let image = browser()
        .get(format!("{}/messages/{id}/attachments/0", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(image.headers()["content-type"], "image/png");
    assert_eq!(
        image.bytes().await.unwrap().as_ref(),
        b"\x89PNG\r\n\x1a\nnot really a png"
    );
    let allowed = browser()
        .get(format!("{}/messages/{id}/html?images=1", app.base))
        .send()
        .await
        .unwrap();
    assert!(
        allowed.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("img-src 'self' data: https: http:")
    );

    // Attachments download with their names in any language; the .eml is the exact bytes sent.
    let attachment = browser()
        .get(format!("{}/messages/{id}/attachments/1", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(attachment.status().as_u16(), 200);
    assert!(
        attachment.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("filename*=UTF-8''Rechnung%20M%C3%A4rz.txt")
    );
    assert_eq!(attachment.bytes().await.unwrap().as_ref(), b"invoice");
    let eml = browser()
        .get(format!("{}/messages/{id}/raw", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(eml.headers()["content-type"], "message/rfc822");
    assert_eq!(eml.bytes().await.unwrap(), app.get_raw(&id).await);
    let raw = app.get_raw(&id).await;
    assert!(
        app.relay.transactions().iter().any(|t| t.content == raw),
        "the archive's bytes are the bytes the relay received"
    );

    // Unknown things are 404 pages, bad filters 400 pages naming the field.
    assert_eq!(page(&app, "/messages/nope").await.0, 404);
    assert_eq!(
        page(&app, &format!("/messages/{id}/attachments/9")).await.0,
        404
    );
    let (status, bad) = page(&app, "/messages?status=lost").await;
    assert_eq!(status, 400);
    assert!(bad.contains("status:") && bad.contains("lost"), "{bad}");
    let (status, bad) = page(&app, "/messages?since=yesterday").await;
    assert_eq!(status, 400);
    assert!(bad.contains("since:"), "{bad}");
    app.stop().await;
}

async fn cancel_and_resend_from_the_dashboard(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    let mut scheduled = rich_message("Later");
    scheduled["send_at"] = json!("2099-01-01T00:00:00Z");
    let id = post(&app, &scheduled).await;
    let client = browser();
    let first = client
        .get(format!("{}/messages/{id}", app.base))
        .send()
        .await
        .unwrap();
    let cookie = cookie_of(&first, "herald_csrf").expect("an open dashboard sets a CSRF cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let html = first.text().await.unwrap();
    assert!(html.contains("id=\"cancel\""));
    let csrf = csrf_of(&html);

    // Without the token, or from another site, nothing happens.
    let refused = submit(
        &client,
        &format!("{}/messages/{id}/cancel", app.base),
        &cookie,
        &[("csrf", "forged")],
    )
    .await;
    assert_eq!(refused.status().as_u16(), 403);
    let cross = client
        .post(format!("{}/messages/{id}/cancel", app.base))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status().as_u16(), 403);
    assert_eq!(
        app.wait_for_status(&id, "scheduled").await["status"],
        "scheduled"
    );

    let cancelled = submit(
        &client,
        &format!("{}/messages/{id}/cancel", app.base),
        &cookie,
        &[("csrf", csrf.as_str())],
    )
    .await;
    assert_eq!(cancelled.status().as_u16(), 303);
    app.wait_for_status(&id, "cancelled").await;
    let again = submit(
        &client,
        &format!("{}/messages/{id}/cancel", app.base),
        &cookie,
        &[("csrf", csrf.as_str())],
    )
    .await;
    assert_eq!(again.status().as_u16(), 409);

    // Resend: a new message with the same bytes, delivered, linked both ways.
    let resent = submit(
        &client,
        &format!("{}/messages/{id}/resend", app.base),
        &cookie,
        &[("csrf", csrf.as_str())],
    )
    .await;
    assert_eq!(resent.status().as_u16(), 303);
    let location = resent.headers()["location"].to_str().unwrap().to_owned();
    let new_id = location
        .strip_prefix("/messages/")
        .and_then(|l| l.split('?').next())
        .unwrap()
        .to_owned();
    assert_ne!(new_id, id);
    let view = app.wait_for_status(&new_id, "delivered").await;
    assert_eq!(view["metadata"]["resent_from"], id.as_str());
    assert_eq!(app.get_raw(&new_id).await, app.get_raw(&id).await);
    let old: Value = app.get_message(&id).await.json().await.unwrap();
    assert!(
        old["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "resent" && e["detail"].as_str().unwrap().contains(&new_id)),
        "{old:#}"
    );
    app.stop().await;
}

async fn sign_in_is_required_when_a_token_is_set(backend: Backend) {
    let Some(app) = spawn_app(
        backend,
        Options {
            api_token: Some(TOKEN),
            ..DEFAULTS
        },
    )
    .await
    else {
        return;
    };
    let client = browser();
    for path in ["/", "/messages", "/templates", "/inbox", "/messages/x/raw"] {
        let response = client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 303, "{path}");
        assert!(
            response.headers()["location"]
                .to_str()
                .unwrap()
                .starts_with("/login?next=")
        );
    }
    let events = client
        .get(format!("{}/events", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 401);

    let wrong = client
        .post(format!("{}/login", app.base))
        .form(&[("token", "guess"), ("next", "/messages")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("That token is not valid")
    );

    let signed_in = client
        .post(format!("{}/login", app.base))
        .form(&[("token", TOKEN), ("next", "//evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status().as_u16(), 303);
    assert_eq!(signed_in.headers()["location"], "/", "never sent off-site");
    let set = cookie_of(&signed_in, "herald_session").unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    let session = set.split(';').next().unwrap().to_owned();
    let secret = session.split_once('=').unwrap().1;
    // The store keeps only a hash of the cookie's secret.
    if backend == Backend::Sqlite {
        let db = std::fs::read(app.dir.path().join("herald.db")).unwrap();
        let wal = std::fs::read(app.dir.path().join("herald.db-wal")).unwrap_or_default();
        for bytes in [db, wal] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }

    let overview = client
        .get(format!("{}/", app.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status().as_u16(), 200);
    let html = overview.text().await.unwrap();
    assert!(html.contains("Sign out"));
    let csrf = csrf_of(&html);

    let out = submit(
        &client,
        &format!("{}/logout", app.base),
        &session,
        &[("csrf", csrf.as_str())],
    )
    .await;
    assert_eq!(out.status().as_u16(), 303);
    let after = client
        .get(format!("{}/", app.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        after.status().as_u16(),
        303,
        "the session ended on the server"
    );
    app.stop().await;
}

async fn the_template_editor_previews_drafts_and_saves(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    let client = browser();
    let editor = client
        .get(format!("{}/templates/welcome", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(editor.status().as_u16(), 200);
    let cookie = cookie_of(&editor, "herald_csrf").unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let csrf = csrf_of(&editor.text().await.unwrap());

    let preview = |draft: Value, token: &str| {
        client
            .post(format!("{}/templates/welcome/preview", app.base))
            .header("cookie", &cookie)
            .header("x-csrf-token", token)
            .json(&draft)
            .send()
    };
    let ok = preview(
        json!({"subject": "Hi {{ name }}", "html": "<style>p{color:red}</style><p>{{ name }} & co</p>", "data": "{\"name\": \"<Ana>\"}"}),
        &csrf,
    )
    .await
    .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["subject"], "Hi <Ana>");
    assert!(
        body["html"].as_str().unwrap().contains("&lt;Ana&gt;"),
        "{body}"
    );
    assert!(
        body["html"]
            .as_str()
            .unwrap()
            .contains("style=\"color: red"),
        "CSS inlined: {body}"
    );
    assert!(
        body["text"].as_str().unwrap().contains("<Ana> & co"),
        "{body}"
    );

    let broken = preview(
        json!({"subject": "x", "text": "line one\n{% if %}\n", "data": "{}"}),
        &csrf,
    )
    .await
    .unwrap();
    assert_eq!(broken.status().as_u16(), 422);
    let error: Value = broken.json().await.unwrap();
    assert_eq!(error["error"]["part"], "text");
    assert_eq!(error["error"]["line"], 2);

    let bad_data = preview(json!({"subject": "x", "text": "y", "data": "{nope"}), &csrf)
        .await
        .unwrap();
    assert_eq!(bad_data.status().as_u16(), 422);
    let error: Value = bad_data.json().await.unwrap();
    assert_eq!(error["error"]["field"], "data");
    let forged = preview(json!({"subject": "x", "text": "y"}), "forged")
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);

    // Saving: an error shows the editor again at its line; a good template is stored.
    let refused = client
        .post(format!("{}/templates/welcome", app.base))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("subject", "Hi"),
            ("text", "a\r\n{{ oops(\r\n"),
            ("html", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    assert!(refused.text().await.unwrap().contains("text, line 2"));
    assert_eq!(app.get_template("welcome").await.status().as_u16(), 404);
    let saved = client
        .post(format!("{}/templates/welcome", app.base))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("subject", "Hi {{ name }}"),
            ("text", "Hello\r\n{{ name }}\r\n"),
            ("html", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status().as_u16(), 303);
    let stored: Value = app.get_template("welcome").await.json().await.unwrap();
    assert_eq!(stored["text"], "Hello\n{{ name }}\n");
    assert!(stored["html"].is_null());
    let (_, list) = page(&app, "/templates").await;
    assert!(list.contains("/templates/welcome"));
    let (status, bad_name) = page(&app, "/templates?new=bad%20name%21").await;
    assert_eq!(status, 400);
    assert!(bad_name.contains("name:"));
    app.stop().await;
}

async fn the_template_editor_edits_the_unsubscribe_list(backend: Backend) {
    let Some(mut app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    let client = browser();
    let open = |app: &TestApp| client.get(format!("{}/templates/news", app.base)).send();
    let editor = open(&app).await.unwrap();
    let cookie = cookie_of(&editor, "herald_csrf").unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let html = editor.text().await.unwrap();
    let csrf = csrf_of(&html);
    assert!(
        html.contains("name=\"unsubscribe_list\" value=\"\""),
        "{html}"
    );
    assert!(html.contains("needs HERALD_PUBLIC_URL"), "{html}");
    let save = |app: &TestApp, list: &str| {
        client
            .post(format!("{}/templates/news", app.base))
            .header("cookie", &cookie)
            .form(&[
                ("csrf", csrf.as_str()),
                ("subject", "News"),
                ("text", "Hi {{ name }}"),
                ("html", ""),
                ("unsubscribe_list", list),
            ])
            .send()
    };
    // Without HERALD_PUBLIC_URL the list is refused at its field, and nothing is stored.
    let refused = save(&app, "newsletter").await.unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let html = refused.text().await.unwrap();
    assert!(
        html.contains("id=\"unsubscribe-error\"") && html.contains("HERALD_PUBLIC_URL"),
        "{html}"
    );
    assert!(
        html.contains("value=\"newsletter\""),
        "what was typed stays: {html}"
    );
    assert_eq!(app.get_template("news").await.status().as_u16(), 404);

    app.restart(Options {
        env: &[("HERALD_PUBLIC_URL", "https://herald.example.test")],
        ..DEFAULTS
    })
    .await;
    // The CSRF cookie and token are the browser's own (double submit), so they stay valid.
    assert_eq!(
        save(&app, " <b>news</b> ").await.unwrap().status().as_u16(),
        303
    );
    let stored: Value = app.get_template("news").await.json().await.unwrap();
    assert_eq!(stored["unsubscribe"], json!({"list": "<b>news</b>"}));
    let html = open(&app).await.unwrap().text().await.unwrap();
    assert!(
        html.contains("name=\"unsubscribe_list\" value=\"&lt;b&gt;news&lt;&#x2f;b&gt;\""),
        "shown escaped: {html}"
    );
    assert!(!html.contains("needs HERALD_PUBLIC_URL"), "{html}");
    // A bad name is refused at the field and the stored one stays.
    let refused = save(&app, "news\u{7}").await.unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("no control characters")
    );
    let stored: Value = app.get_template("news").await.json().await.unwrap();
    assert_eq!(stored["unsubscribe"], json!({"list": "<b>news</b>"}));
    // Emptied: none.
    assert_eq!(save(&app, "").await.unwrap().status().as_u16(), 303);
    let stored: Value = app.get_template("news").await.json().await.unwrap();
    assert_eq!(stored["unsubscribe"], Value::Null);
    app.stop().await;
}

async fn the_capture_inbox_lists_and_shows_captured_mail(backend: Backend) {
    let Some(app) = spawn_app(backend, CAPTURE).await else {
        return;
    };
    let id = post(&app, &rich_message("Captured hello")).await;
    app.wait_for_status(&id, "delivered").await;
    let (status, inbox) = page(&app, "/inbox").await;
    assert_eq!(status, 200);
    assert!(inbox.contains("Captured hello"));
    assert!(
        inbox.contains(&format!("/messages/{id}/html")),
        "the newest is open in the reading pane"
    );
    let (_, searched) = page(&app, "/inbox?q=nothinglikethis").await;
    assert!(searched.contains("No captured mail matches"));
    let (_, overview) = page(&app, "/").await;
    assert!(overview.contains("capture inbox"));
    app.stop().await;
}

/// The overview's stream shows a delivery within a second of it being recorded.
async fn the_live_stream_reflects_a_delivery_within_a_second(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    let mut stream = browser()
        .get(format!("{}/events", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let mut next_overview = async || -> Value {
        loop {
            if let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                if let Some(data) = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .filter(|_| event.contains("event: overview"))
                {
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(15), stream.chunk())
                .await
                .expect("an event within 15 s")
                .unwrap()
                .expect("the stream stays open");
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    let delivered = |snapshot: &Value| {
        snapshot["counts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["status"] == "delivered")
            .unwrap()["count"]
            .as_u64()
            .unwrap()
    };
    let first = next_overview().await;
    assert_eq!(delivered(&first), 0);
    let id = post(
        &app,
        &json!({"from": "a@example.test", "to": "b@example.test", "subject": "live", "text": "x"}),
    )
    .await;
    app.wait_for_status(&id, "delivered").await;
    let seen = Instant::now();
    loop {
        let snapshot = next_overview().await;
        if delivered(&snapshot) == 1 {
            break;
        }
    }
    let lag = seen.elapsed();
    println!("overview showed the delivery {lag:?} after the API did");
    assert!(lag < Duration::from_secs(1), "took {lag:?}");
    app.stop().await;
}

/// A relay that turns a recipient away shows on the overview: its error, with when, and the counts.
async fn the_overview_shows_a_relays_last_error(backend: Backend) {
    let options = Options {
        relay: Some(|| {
            ServerConfig::default().fault(Fault::reply(
                When::RcptTo(Some("nobody@example.test".into())),
                "550 5.1.1 no such mailbox here",
            ))
        }),
        ..DEFAULTS
    };
    let Some(app) = spawn_app(backend, options).await else {
        return;
    };
    let id = post(
        &app,
        &json!({"from": "a@example.test", "to": ["ok@example.test", "nobody@example.test"], "subject": "s", "text": "x"}),
    )
    .await;
    app.wait_for_status(&id, "delivered").await;
    let (status, overview) = page(&app, "/").await;
    assert_eq!(status, 200);
    let relays = &overview[overview.find("id=\"relays\"").unwrap()..];
    assert!(
        relays.contains("550 5.1.1 no such mailbox here"),
        "{relays}"
    );
    assert!(
        relays.contains("<td>1</td><td>0</td><td>1</td>"),
        "one recipient delivered, none deferred, one failed: {relays}"
    );
    app.stop().await;
}

/// Text as the dashboard's templates escape it (minijinja's HTML escaping).
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;")
        .replace('/', "&#x2f;")
}

/// The signing secret a secret page shows in its read-only field.
fn secret_of(html: &str) -> String {
    let field = "id=\"webhook-secret\" class=\"secret\" value=\"";
    let start = html
        .find(field)
        .unwrap_or_else(|| panic!("no secret field: {html}"))
        + field.len();
    let secret = html[start..start + html[start..].find('"').unwrap()].to_owned();
    // Base64 has `/` and `+`; the page escapes the `/`.
    let secret = secret.replace("&#x2f;", "/");
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    secret
}

/// Whether `page` shows `secret` in any form: whole, its key alone, or escaped.
fn shows_secret(page: &str, secret: &str) -> bool {
    let key = secret.strip_prefix("whsec_").unwrap();
    [
        secret.to_owned(),
        escaped(secret),
        key.to_owned(),
        escaped(key),
    ]
    .iter()
    .any(|form| page.contains(form.as_str()))
}

/// Signs in with the API token as the login form does; answers the session cookie (`name=value`).
async fn sign_in(app: &TestApp, client: &reqwest::Client) -> String {
    let signed_in = client
        .post(format!("{}/login", app.base))
        .form(&[("token", TOKEN), ("next", "/webhooks")])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status().as_u16(), 303);
    let set = cookie_of(&signed_in, "herald_session").unwrap();
    set.split(';').next().unwrap().to_owned()
}

async fn signed_in_page(client: &reqwest::Client, session: &str, url: &str) -> (u16, String) {
    let response = client
        .get(url)
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn api_webhooks(app: &TestApp) -> Vec<Value> {
    let answer: Value = app.get("/v1/webhooks").await.json().await.unwrap();
    answer["items"].as_array().unwrap().clone()
}

/// Webhook endpoints managed from the dashboard, signed in, over plain HTTP: every change needs the session
/// and the CSRF token; a refused field shows the form again naming it with what was typed kept (the API's
/// checks); the secret is shown once, on the POST's own answer, never on the list or in a redirect.
async fn webhook_endpoints_are_managed_from_the_dashboard(backend: Backend) {
    let Some(mut app) = spawn_app(
        backend,
        Options {
            api_token: Some(TOKEN),
            env: &[("HERALD_WEBHOOK_ALLOW_PRIVATE", "1")],
            ..DEFAULTS
        },
    )
    .await
    else {
        return;
    };
    app.token = Some(TOKEN.into());
    let client = browser();
    let base = app.base.clone();
    let good = [
        ("url", "http://127.0.0.1:9/orders"),
        ("events", "message.failed"),
        ("events", "message.delivered"),
        ("description", "Orders team"),
        ("enabled", "on"),
    ];

    // Without a session: sent to sign in, or refused; nothing is created.
    let (status, _) = page(&app, "/webhooks/new").await;
    assert_eq!(status, 303);
    let anonymous = client
        .post(format!("{base}/webhooks"))
        .form(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    let session = sign_in(&app, &client).await;
    let form = client
        .get(format!("{base}/webhooks/new"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 200);
    let html = form.text().await.unwrap();
    let csrf = csrf_of(&html);
    // The defaults: enabled, no type ticked (every type).
    assert!(
        html.contains("name=\"enabled\" value=\"on\" checked"),
        "{html}"
    );
    assert!(!html.contains("name=\"events\" value=\"message.failed\" checked"));
    let with_csrf = |token: &str, fields: &[(&'static str, &'static str)]| {
        let mut form: Vec<(String, String)> = vec![("csrf".into(), token.into())];
        form.extend(fields.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        form
    };

    // The CSRF token missing, wrong, or the request from another site: refused, nothing created.
    let missing = client
        .post(format!("{base}/webhooks"))
        .header("cookie", &session)
        .form(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 403);
    assert!(missing.text().await.unwrap().contains("security token"));
    let forged = client
        .post(format!("{base}/webhooks"))
        .header("cookie", &session)
        .form(&with_csrf("forged", &good))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    let cross = client
        .post(format!("{base}/webhooks"))
        .header("cookie", &session)
        .header("origin", "https://evil.example")
        .form(&with_csrf(&csrf, &good))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status().as_u16(), 403);
    assert_eq!(api_webhooks(&app).await, Vec::<Value>::new());

    // A bad URL: the form again, the field named, what was typed kept.
    let bad = client
        .post(format!("{base}/webhooks"))
        .header("cookie", &session)
        .form(&with_csrf(
            &csrf,
            &[
                ("url", "ftp://hooks.example.test/in"),
                ("events", "message.failed"),
                ("description", "Orders <b>team</b>"),
            ],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 422);
    let html = bad.text().await.unwrap();
    let error = &html[html.find("id=\"webhook-error\"").expect("an error")..];
    let error = &error[..error.find("</p>").unwrap()];
    assert!(
        error.contains("url: scheme") && error.contains("only http and https"),
        "{error}"
    );
    assert!(
        html.contains(&format!(
            "value=\"{}\"",
            escaped("ftp://hooks.example.test/in")
        )),
        "{html}"
    );
    assert!(html.contains(&format!("value=\"{}\"", escaped("Orders <b>team</b>"))));
    assert!(!html.contains("<b>team</b>"), "the description is escaped");
    assert!(html.contains("name=\"events\" value=\"message.failed\" checked"));
    assert!(!html.contains("name=\"events\" value=\"message.delivered\" checked"));
    assert!(
        !html.contains("name=\"enabled\" value=\"on\" checked"),
        "unticked stays unticked"
    );
    assert!(html.contains("aria-invalid=\"true\""));
    // The API's other checks, named the same way.
    for (fields, expected) in [
        (&[("url", "")][..], "url: missing"),
        (
            &[
                ("url", "http://127.0.0.1:9/x"),
                ("events", "message.opened"),
            ][..],
            "events: events[0]: unknown event type",
        ),
    ] {
        let refused = client
            .post(format!("{base}/webhooks"))
            .header("cookie", &session)
            .form(&with_csrf(&csrf, fields))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 422, "{expected}");
        let html = refused.text().await.unwrap();
        assert!(html.contains(&escaped(expected)), "{expected}: {html}");
    }
    assert_eq!(api_webhooks(&app).await, Vec::<Value>::new());

    // Created: the secret on this answer only, which no cache keeps.
    let created = client
        .post(format!("{base}/webhooks"))
        .header("cookie", &session)
        .form(&with_csrf(&csrf, &good))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 200);
    assert_eq!(created.headers()["cache-control"], "no-store");
    let html = created.text().await.unwrap();
    assert!(html.contains("it will not be shown again"), "{html}");
    let secret = secret_of(&html);
    let hooks = api_webhooks(&app).await;
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    let id = hook["id"].as_str().unwrap().to_owned();
    assert_eq!(hook["url"], "http://127.0.0.1:9/orders");
    assert_eq!(
        hook["events"],
        json!(["message.failed", "message.delivered"])
    );
    assert_eq!(hook["description"], "Orders team");
    assert_eq!(hook["enabled"], true);
    assert!(html.contains(&id));

    // Never again: not on the list, not on the edit form.
    for path in ["/webhooks".to_owned(), format!("/webhooks/{id}/edit")] {
        let (status, html) = signed_in_page(&client, &session, &format!("{base}{path}")).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            html.contains(&escaped("http://127.0.0.1:9/orders")),
            "{path}: {html}"
        );
        assert!(!shows_secret(&html, &secret), "{path} shows the secret");
    }

    // Edit: the same checks; a refused field keeps the edits; a good change is saved.
    let long = "x".repeat(1_001);
    let refused = client
        .post(format!("{base}/webhooks/{id}/edit"))
        .header("cookie", &session)
        .form(&[
            ("csrf", csrf.as_str()),
            ("url", "http://127.0.0.1:9/renamed"),
            ("description", long.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let html = refused.text().await.unwrap();
    assert!(
        html.contains("description: longer than 1000 characters"),
        "{html}"
    );
    assert!(html.contains(&escaped("http://127.0.0.1:9/renamed")));
    assert_eq!(api_webhooks(&app).await[0]["description"], "Orders team");
    let no_csrf = client
        .post(format!("{base}/webhooks/{id}/edit"))
        .header("cookie", &session)
        .form(&[("url", "http://127.0.0.1:9/renamed")])
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status().as_u16(), 403);
    let saved = client
        .post(format!("{base}/webhooks/{id}/edit"))
        .header("cookie", &session)
        .form(&[
            ("csrf", csrf.as_str()),
            ("url", "http://127.0.0.1:9/renamed"),
            ("description", "Changed"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status().as_u16(), 303);
    assert_eq!(saved.headers()["location"], "/webhooks?notice=saved");
    let hook = &api_webhooks(&app).await[0];
    assert_eq!(hook["url"], "http://127.0.0.1:9/renamed");
    assert_eq!(hook["all_events"], true, "no box ticked: every type");
    assert_eq!(hook["description"], "Changed");
    assert_eq!(hook["enabled"], false);

    // Rotate: asked first; refused without the token; the new secret once, the old one still signing.
    let (status, confirm) =
        signed_in_page(&client, &session, &format!("{base}/webhooks/{id}/rotate")).await;
    assert_eq!(status, 200);
    assert!(confirm.contains("24 hours") && confirm.contains("id=\"confirm-rotate\""));
    let no_csrf = client
        .post(format!("{base}/webhooks/{id}/rotate"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert!(no_csrf.status().is_client_error(), "{}", no_csrf.status());
    assert_eq!(
        api_webhooks(&app).await[0]["previous_secret_valid_until"],
        Value::Null
    );
    let rotated = client
        .post(format!("{base}/webhooks/{id}/rotate"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status().as_u16(), 200);
    assert_eq!(rotated.headers()["cache-control"], "no-store");
    let html = rotated.text().await.unwrap();
    let new_secret = secret_of(&html);
    assert_ne!(new_secret, secret);
    assert!(html.contains("it will not be shown again") && html.contains("24 hours"));
    assert!(api_webhooks(&app).await[0]["previous_secret_valid_until"].is_string());
    let (_, list) = signed_in_page(&client, &session, &format!("{base}/webhooks")).await;
    assert!(!shows_secret(&list, &new_secret) && !shows_secret(&list, &secret));

    // Delete: asked first; refused without the token; then gone, with a notice.
    let (status, confirm) =
        signed_in_page(&client, &session, &format!("{base}/webhooks/{id}/delete")).await;
    assert_eq!(status, 200);
    assert!(confirm.contains("id=\"confirm-delete\""));
    let no_csrf = client
        .post(format!("{base}/webhooks/{id}/delete"))
        .header("cookie", &session)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status().as_u16(), 403);
    assert_eq!(api_webhooks(&app).await.len(), 1);
    let deleted = client
        .post(format!("{base}/webhooks/{id}/delete"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 303);
    assert_eq!(deleted.headers()["location"], "/webhooks?notice=deleted");
    assert_eq!(
        app.get(&format!("/v1/webhooks/{id}"))
            .await
            .status()
            .as_u16(),
        404
    );
    let (_, list) = signed_in_page(
        &client,
        &session,
        &format!("{base}/webhooks?notice=deleted"),
    )
    .await;
    assert!(
        list.contains("Endpoint deleted") && list.contains("id=\"no-webhooks\""),
        "{list}"
    );
    app.stop().await;
}

on_both_backends!(
    webhook_endpoints_are_managed_from_the_dashboard,
    the_overview_shows_a_relays_last_error,
    pages_show_the_archive_a_message_and_its_parts,
    cancel_and_resend_from_the_dashboard,
    sign_in_is_required_when_a_token_is_set,
    the_template_editor_previews_drafts_and_saves,
    the_template_editor_edits_the_unsubscribe_list,
    the_capture_inbox_lists_and_shows_captured_mail,
    the_live_stream_reflects_a_delivery_within_a_second,
);
