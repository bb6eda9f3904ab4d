//! The suppression list and one-click unsubscribe over HTTP (issue 12), on SQLite and PostgreSQL, with a real
//! `herald serve` delivering to the herald-testkit relay: a suppressed recipient never reaches the relay while
//! the others do, `ignore_suppressions`, a 5.1.1 reply suppresses, CSV round trip and a bad line named, and
//! List-Unsubscribe links that unsubscribe on POST only, refuse forged tokens and are covered by DKIM; stored
//! templates that carry `unsubscribe` (the request's own or `null` winning); expired entries pruned.
#![allow(clippy::unwrap_used)]

mod app;
mod common;
mod dkim_check;

use app::{DEFAULTS, Options, TestApp, error_of, spawn_app};
use common::Backend;
use dkim_check::{Records, assert_both};
use herald_testkit::{Fault, ServerConfig, When};
use serde_json::{Value, json};

on_both_backends!(
    a_suppressed_recipient_never_reaches_the_relay_and_the_others_do,
    a_bad_mailbox_reply_puts_the_address_on_the_list,
    the_list_round_trips_through_csv_and_a_bad_line_is_named,
    one_click_unsubscribe_works_on_post_only_and_is_signed,
    unsubscribe_needs_a_public_url_and_one_recipient_per_message,
    a_template_with_unsubscribe_gives_its_messages_the_link,
    a_template_unsubscribe_is_checked_and_its_refusals_say_so,
    expired_entries_are_removed_by_the_housekeeping,
);

const SHOP: Options = Options {
    default_from: Some("Shop <shop@example.test>"),
    ..DEFAULTS
};

const PUBLIC: Options = Options {
    default_from: Some("Shop <shop@example.test>"),
    env: &[
        ("HERALD_PUBLIC_URL", "https://herald.example.test/"),
        ("HERALD_BOUNCE_DOMAIN", "bounces.example.test"),
    ],
    ..DEFAULTS
};

async fn post(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    let response = app
        .send(app.client.post(format!("{}{path}", app.base)).json(body))
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn accepted(app: &TestApp, body: Value) -> Value {
    let response = app.post_message(&body).await;
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 202, "{answer}");
    answer
}

fn relayed_recipients(app: &TestApp) -> Vec<String> {
    app.relay
        .transactions()
        .iter()
        .flat_map(|t| t.recipients.clone())
        .map(|r| r.trim_matches(['<', '>']).to_owned())
        .collect()
}

async fn a_suppressed_recipient_never_reaches_the_relay_and_the_others_do(backend: Backend) {
    let Some(app) = spawn_app(backend, SHOP).await else {
        return;
    };
    let (status, entry) = post(
        &app,
        "/v1/suppressions",
        &json!({"address": "Gone@Example.test", "reason": "complaint"}),
    )
    .await;
    assert_eq!(status, 201, "{entry}");
    assert_eq!(entry["address"], "gone@example.test");
    assert_eq!(entry["reason"], "complaint");
    assert_eq!(entry["scope"], Value::Null);

    let answer = accepted(
        &app,
        json!({"to": ["ann@example.test", "gone@example.test"], "subject": "Hi", "text": "hello"}),
    )
    .await;
    assert_eq!(answer["suppressed"], json!(["gone@example.test"]));
    let id = answer["id"].as_str().unwrap();
    let view = app.wait_for_status(id, "delivered").await;
    assert_eq!(view["suppressed"], json!(["gone@example.test"]));
    assert_eq!(view["recipients"][1]["status"], "suppressed");
    assert_eq!(relayed_recipients(&app), ["ann@example.test"]);

    // Every recipient suppressed: finished at once, failed, nothing sent.
    let answer = accepted(
        &app,
        json!({"to": "gone@example.test", "subject": "Hi", "text": "hello"}),
    )
    .await;
    assert_eq!(answer["status"], "failed");
    assert_eq!(answer["suppressed"], json!(["gone@example.test"]));

    // Must-deliver mail goes to everyone.
    let answer = accepted(
        &app,
        json!({"to": "gone@example.test", "subject": "Reset", "text": "your code", "ignore_suppressions": true}),
    )
    .await;
    assert_eq!(answer["suppressed"], json!([]));
    app.wait_for_status(answer["id"].as_str().unwrap(), "delivered")
        .await;
    assert_eq!(
        relayed_recipients(&app),
        ["ann@example.test", "gone@example.test"]
    );
    let (status, error) = error_of(
        app.post_message(&json!({"to": "a@example.test", "subject": "x", "text": "x", "ignore_suppressions": "yes"}))
            .await,
    )
    .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("ignore_suppressions"))
    );

    // A batch says which of its messages' recipients were suppressed.
    assert_eq!(
        app.put_template(
            "note",
            &json!({"subject": "Hi {{ name }}", "text": "Dear {{ name }}"})
        )
        .await
        .status()
        .as_u16(),
        200
    );
    let response = app
        .post_batch(&json!({"template": "note", "recipients": [
            {"to": "bob@example.test", "data": {"name": "Bob"}},
            {"to": "gone@example.test", "data": {"name": "Gone"}}]}))
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["suppressed"][0]["address"], "gone@example.test");
    assert_eq!(batch["suppressed"][0]["id"], batch["ids"][1]);
    app.wait_for_status(batch["ids"][0].as_str().unwrap(), "delivered")
        .await;
    assert!(!relayed_recipients(&app)[2..].contains(&"gone@example.test".to_owned()));
}

async fn a_bad_mailbox_reply_puts_the_address_on_the_list(backend: Backend) {
    let options = Options {
        relay: Some(|| {
            ServerConfig::default()
                .fault(Fault::reply(
                    When::RcptTo(Some("nobody@example.test".into())),
                    "550 5.1.1 no such user",
                ))
                .fault(Fault::reply(
                    When::RcptTo(Some("policy@example.test".into())),
                    "550 5.7.1 refused by policy",
                ))
        }),
        ..SHOP
    };
    let Some(app) = spawn_app(backend, options).await else {
        return;
    };
    let answer = accepted(
        &app,
        json!({"to": ["nobody@example.test", "policy@example.test", "ann@example.test"],
               "subject": "Hi", "text": "hello"}),
    )
    .await;
    let id = answer["id"].as_str().unwrap();
    let view = app.wait_for_status(id, "delivered").await;
    assert_eq!(view["recipients"][0]["status"], "failed");
    let listed: Value = app
        .get("/v1/suppressions/nobody@example.test")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["reason"], "hard_bounce", "{listed}");
    assert_eq!(listed["items"][0]["source_message"], id);
    assert!(
        view["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "suppressed" && e["recipient"] == "nobody@example.test"),
        "{view:#}"
    );
    assert_eq!(
        app.get("/v1/suppressions/policy@example.test")
            .await
            .status()
            .as_u16(),
        404,
        "5.7.1 is policy, not a bad mailbox"
    );
    // The next message to that address is not attempted.
    let next = accepted(
        &app,
        json!({"to": "nobody@example.test", "subject": "Again", "text": "hello"}),
    )
    .await;
    assert_eq!(next["status"], "failed");
    assert_eq!(next["suppressed"], json!(["nobody@example.test"]));
}

async fn the_list_round_trips_through_csv_and_a_bad_line_is_named(backend: Backend) {
    let Some(app) = spawn_app(backend, SHOP).await else {
        return;
    };
    let csv = "address,scope,reason,expires_at\r\n\
               a@example.test,,hard_bounce,\r\n\
               \"\"\"b,quoted\"\"@example.test\",newsletter,unsubscribe,2031-01-02T03:04:05Z\r\n\
               C@Example.test,,manual,\r\n";
    let import = |body: &'static str| {
        app.send(
            app.client
                .post(format!("{}/v1/suppressions/import", app.base))
                .header("content-type", "text/csv")
                .body(body),
        )
    };
    let response = import(csv).await;
    assert_eq!(
        response.status().as_u16(),
        200,
        "{}",
        response.text().await.unwrap()
    );
    assert_eq!(
        response.json::<Value>().await.unwrap()["imported"],
        json!(3)
    );
    let export = app.get("/v1/suppressions/export").await;
    assert_eq!(export.status().as_u16(), 200);
    assert!(
        export.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let exported = export.text().await.unwrap();
    let lines: Vec<&str> = exported.lines().collect();
    assert_eq!(
        lines[0],
        "address,scope,reason,expires_at,source_message,created_at"
    );
    assert_eq!(lines.len(), 4, "{exported}");
    assert!(
        lines[1].starts_with(
            "\"\"\"b,quoted\"\"@example.test\",newsletter,unsubscribe,2031-01-02T03:04:05Z,,"
        ),
        "{exported}"
    );
    assert!(
        lines[2].starts_with("a@example.test,,hard_bounce,,,"),
        "{exported}"
    );
    assert!(
        lines[3].starts_with("c@example.test,,manual,,,"),
        "{exported}"
    );

    // Imported back into a fresh list, the export is the same list.
    for address in [
        "a@example.test",
        "c@example.test",
        "\"b,quoted\"@example.test",
    ] {
        let deleted = app
            .send(
                app.client
                    .delete(format!("{}/v1/suppressions/{address}", app.base)),
            )
            .await;
        assert_eq!(deleted.status().as_u16(), 200, "{address}");
    }
    let listed: Value = app.get("/v1/suppressions").await.json().await.unwrap();
    assert_eq!(listed["items"], json!([]));
    let response = app
        .send(
            app.client
                .post(format!("{}/v1/suppressions/import", app.base))
                .header("content-type", "text/csv; charset=utf-8")
                .body(exported.clone()),
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let again = app
        .get("/v1/suppressions/export")
        .await
        .text()
        .await
        .unwrap();
    let without_created = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_owned())
            .collect()
    };
    assert_eq!(without_created(&again), without_created(&exported));

    // A bad line: named, and nothing of the file stored.
    let (status, error) = error_of(
        import("address,reason\nfresh@example.test,manual\nnot an address,manual\n").await,
    )
    .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("line 3")),
        "{error}"
    );
    assert!(
        error["message"].as_str().unwrap().starts_with("address:"),
        "{error}"
    );
    let (status, error) =
        error_of(import("address,reason\nfresh@example.test,sometimes\n").await).await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("line 2")),
        "{error}"
    );
    assert_eq!(
        app.get("/v1/suppressions/fresh@example.test")
            .await
            .status()
            .as_u16(),
        404
    );

    // Paging and search.
    let page: Value = app
        .get("/v1/suppressions?limit=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: Value = app
        .get(&format!("/v1/suppressions?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_cursor"], Value::Null);
    let found: Value = app
        .get("/v1/suppressions?q=QUOTED")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
    // The dashboard's page searches the same list.
    let page = app.get("/suppressions?q=quoted").await;
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("b,quoted") && page.contains("newsletter"),
        "{page}"
    );
    assert!(!page.contains("a@example.test"), "{page}");
    let (status, error) = error_of(app.get("/v1/suppressions?cursor=zzz").await).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("cursor")));
}

/// The token of the `https` link in a message's List-Unsubscribe header (unfolded).
fn unsubscribe_header(raw: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(raw);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    let value = head
        .lines()
        .find_map(|l| l.strip_prefix("List-Unsubscribe: "))
        .unwrap_or_else(|| panic!("no List-Unsubscribe in\n{head}"))
        .to_owned();
    assert!(
        head.lines()
            .any(|l| l == "List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{head}"
    );
    let token = value
        .split("https://herald.example.test/u/")
        .nth(1)
        .and_then(|rest| rest.split('>').next())
        .unwrap()
        .to_owned();
    (value, token)
}

async fn one_click_unsubscribe_works_on_post_only_and_is_signed(backend: Backend) {
    let Some(app) = spawn_app(backend, PUBLIC).await else {
        return;
    };
    let (status, key) = post(
        &app,
        "/v1/dkim",
        &json!({"domain": "example.test", "selector": "ed1", "algorithm": "ed25519"}),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let answer = accepted(
        &app,
        json!({"to": "ann@example.test", "subject": "News", "text": "this week",
               "tags": ["weekly"], "unsubscribe": {"list": "newsletter"}}),
    )
    .await;
    let id = answer["id"].as_str().unwrap().to_owned();
    let raw = app.get_raw(&id).await;
    let (value, token) = unsubscribe_header(&raw);
    assert_eq!(
        value,
        format!(
            "<https://herald.example.test/u/{token}>, <mailto:unsub+{token}@bounces.example.test>"
        )
    );
    assert!(
        format!("unsub+{token}").len() <= 64,
        "fits an email local part"
    );
    let listed: Value = app.get("/v1/dkim").await.json().await.unwrap();
    let records = Records::from_keys(listed["items"].as_array().unwrap());
    assert_both(&records, &[("unsubscribe".to_owned(), raw.clone())], true).await;
    let signed = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let h = signed
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .replace([' ', '\r', '\n', '\t'], "");
    assert!(h.split(':').any(|f| f == "list-unsubscribe"), "{h}");
    assert!(h.split(':').any(|f| f == "list-unsubscribe-post"), "{h}");

    // GET only shows the page (link scanners fetch every URL): nothing is suppressed.
    let page = app.get(&format!("/u/{token}")).await;
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("<form method=\"post\""), "{page}");
    assert!(
        page.contains("ann@example.test") && page.contains("newsletter"),
        "{page}"
    );
    assert_eq!(
        app.get("/v1/suppressions/ann@example.test")
            .await
            .status()
            .as_u16(),
        404
    );

    // A forged or altered token is refused and changes nothing.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).unwrap();
    let refused = app
        .client
        .post(format!("{}/u/{forged}", app.base))
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 404);
    assert_eq!(
        app.get("/v1/suppressions/ann@example.test")
            .await
            .status()
            .as_u16(),
        404
    );

    // The mail client's one-click POST: no login, no CSRF token; 200 and no page.
    let done = app
        .client
        .post(format!("{}/u/{token}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status().as_u16(), 200);
    assert_eq!(done.text().await.unwrap(), "");
    let listed: Value = app
        .get("/v1/suppressions/ann@example.test")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["reason"], "unsubscribe");
    assert_eq!(listed["items"][0]["scope"], "newsletter");
    assert_eq!(listed["items"][0]["source_message"], id.as_str());

    // The list's next mail to her is suppressed; other mail is not.
    let next = accepted(
        &app,
        json!({"to": "ann@example.test", "subject": "News", "text": "next week",
               "unsubscribe": {"list": "newsletter"}}),
    )
    .await;
    assert_eq!(next["suppressed"], json!(["ann@example.test"]));
    let receipt = accepted(
        &app,
        json!({"to": "ann@example.test", "subject": "Receipt", "text": "thanks"}),
    )
    .await;
    assert_eq!(receipt["suppressed"], json!([]));

    // A batch: one link per message, each naming its own recipient.
    assert_eq!(
        app.put_template(
            "digest",
            &json!({"subject": "Digest", "text": "Hi {{ name }}"})
        )
        .await
        .status()
        .as_u16(),
        200
    );
    let response = app
        .post_batch(
            &json!({"template": "digest", "unsubscribe": {"list": "digest"}, "recipients": [
            {"to": "bob@example.test", "data": {"name": "Bob"}},
            {"to": "cid@example.test", "data": {"name": "Cid"}}]}),
        )
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let batch: Value = response.json().await.unwrap();
    let (_, bob_token) = unsubscribe_header(&app.get_raw(batch["ids"][0].as_str().unwrap()).await);
    let (_, cid_token) = unsubscribe_header(&app.get_raw(batch["ids"][1].as_str().unwrap()).await);
    assert_ne!(bob_token, cid_token);
    // Herald's own page posts with from=page and gets a page back.
    let done = app
        .client
        .post(format!("{}/u/{cid_token}", app.base))
        .form(&[("List-Unsubscribe", "One-Click"), ("from", "page")])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status().as_u16(), 200);
    assert!(done.text().await.unwrap().contains("unsubscribed"));
    assert_eq!(
        app.get("/v1/suppressions/cid@example.test")
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        app.get("/v1/suppressions/bob@example.test")
            .await
            .status()
            .as_u16(),
        404
    );
}

async fn unsubscribe_needs_a_public_url_and_one_recipient_per_message(backend: Backend) {
    let Some(app) = spawn_app(backend, SHOP).await else {
        return;
    };
    let (status, error) = error_of(
        app.post_message(&json!({"to": "a@example.test", "subject": "x", "text": "x",
                                  "unsubscribe": {"list": "news"}}))
            .await,
    )
    .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("unsubscribe"))
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("HERALD_PUBLIC_URL")
    );
    app.stop().await;

    let Some(app) = spawn_app(backend, PUBLIC).await else {
        return;
    };
    for (body, field) in [
        (
            json!({"to": ["a@example.test", "b@example.test"], "subject": "x", "text": "x",
                   "unsubscribe": {"list": "news"}}),
            "unsubscribe",
        ),
        (
            json!({"to": "a@example.test", "subject": "x", "text": "x", "unsubscribe": {}}),
            "unsubscribe.list",
        ),
        (
            json!({"to": "a@example.test", "subject": "x", "text": "x", "unsubscribe": {"list": "news"},
                   "headers": {"List-Unsubscribe": "<https://elsewhere.example/>"}}),
            "headers.List-Unsubscribe",
        ),
    ] {
        let (status, error) = error_of(app.post_message(&body).await).await;
        assert_eq!(
            (status, error["field"].as_str()),
            (422, Some(field)),
            "{error}"
        );
    }
    assert_eq!(
        app.list_messages("").await["items"],
        json!([]),
        "nothing stored"
    );
}

/// Posts the one-click unsubscribe of `token` as a mail client does.
async fn one_click(app: &TestApp, token: &str) {
    let done = app
        .client
        .post(format!("{}/u/{token}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status().as_u16(), 200);
}

/// The scopes `address` is suppressed for, each with the message that put it there.
async fn entries_of(app: &TestApp, address: &str) -> Vec<(Value, Value)> {
    let response = app.get(&format!("/v1/suppressions/{address}")).await;
    if response.status().as_u16() == 404 {
        return Vec::new();
    }
    let listed: Value = response.json().await.unwrap();
    listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["scope"].clone(), e["source_message"].clone()))
        .collect()
}

fn has_list_unsubscribe(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    head.lines().any(|l| l.starts_with("list-unsubscribe"))
}

async fn a_template_with_unsubscribe_gives_its_messages_the_link(backend: Backend) {
    let Some(app) = spawn_app(backend, PUBLIC).await else {
        return;
    };
    let news = json!({"subject": "News for {{ name }}", "text": "Hi {{ name }}",
                      "unsubscribe": {"list": "newsletter"}});
    let response = app.put_template("news", &news).await;
    assert_eq!(response.status().as_u16(), 200);
    let stored: Value = response.json().await.unwrap();
    assert_eq!(stored["unsubscribe"], json!({"list": "newsletter"}));
    // What GET returns can be PUT back, unsubscribe included.
    let got: Value = app.get_template("news").await.json().await.unwrap();
    assert_eq!(got["unsubscribe"], json!({"list": "newsletter"}));
    assert_eq!(app.put_template("news", &got).await.status().as_u16(), 200);
    let listed: Value = app.list_templates().await.json().await.unwrap();
    assert_eq!(
        listed["items"][0]["unsubscribe"],
        json!({"list": "newsletter"})
    );
    // The OpenAPI document describes every field the template resources answer with.
    let document: Value = app.get("/openapi.json").await.json().await.unwrap();
    let schemas = &document["components"]["schemas"];
    let items = &document["paths"]["/v1/templates"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"]["properties"]["items"]["items"]["properties"];
    for (fields, described) in [
        (&got, &schemas["Template"]["properties"]),
        (&got, &schemas["TemplateRequest"]["properties"]),
        (&listed["items"][0], items),
    ] {
        for field in fields.as_object().unwrap().keys() {
            assert!(
                described.get(field).is_some(),
                "{field} undocumented in {described}"
            );
        }
    }

    // A message from the template carries the link, and the link unsubscribes from the template's list.
    let answer = accepted(
        &app,
        json!({"to": "ann@example.test", "template": "news", "data": {"name": "Ann"}}),
    )
    .await;
    let id = answer["id"].as_str().unwrap().to_owned();
    let raw = app.get_raw(&id).await;
    assert!(String::from_utf8_lossy(&raw).contains("Subject: News for Ann"));
    let (value, token) = unsubscribe_header(&raw);
    assert!(value.ends_with(&format!("<mailto:unsub+{token}@bounces.example.test>")));
    assert!(entries_of(&app, "ann@example.test").await.is_empty());
    one_click(&app, &token).await;
    assert_eq!(
        entries_of(&app, "ann@example.test").await,
        [(json!("newsletter"), json!(id))]
    );
    // The template's list is the message's scope at accept: her next one is suppressed, a receipt is not.
    let next = accepted(
        &app,
        json!({"to": "ann@example.test", "template": "news", "data": {"name": "Ann"}}),
    )
    .await;
    assert_eq!(next["suppressed"], json!(["ann@example.test"]));
    let receipt = accepted(
        &app,
        json!({"to": "ann@example.test", "subject": "Receipt", "text": "thanks"}),
    )
    .await;
    assert_eq!(receipt["suppressed"], json!([]));

    // The request's own unsubscribe wins over the template's.
    let answer = accepted(
        &app,
        json!({"to": "bob@example.test", "template": "news", "data": {"name": "Bob"},
               "unsubscribe": {"list": "offers"}}),
    )
    .await;
    let bob_id = answer["id"].as_str().unwrap().to_owned();
    let (_, token) = unsubscribe_header(&app.get_raw(&bob_id).await);
    one_click(&app, &token).await;
    assert_eq!(
        entries_of(&app, "bob@example.test").await,
        [(json!("offers"), json!(bob_id))]
    );

    // `"unsubscribe": null` sends one without the link: no headers, and several recipients are fine.
    let answer = accepted(
        &app,
        json!({"to": ["cid@example.test", "dan@example.test"], "template": "news",
               "data": {"name": "all"}, "unsubscribe": null}),
    )
    .await;
    let raw = app.get_raw(answer["id"].as_str().unwrap()).await;
    assert!(
        !has_list_unsubscribe(&raw),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    app.wait_for_status(answer["id"].as_str().unwrap(), "delivered")
        .await;

    // A batch from the template: one link per message, each for its own recipient and the template's list.
    let response = app
        .post_batch(&json!({"template": "news", "recipients": [
            {"to": "eve@example.test", "data": {"name": "Eve"}},
            {"to": "fay@example.test", "data": {"name": "Fay"}}]}))
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let batch: Value = response.json().await.unwrap();
    let fay_id = batch["ids"][1].as_str().unwrap().to_owned();
    let (_, eve_token) = unsubscribe_header(&app.get_raw(batch["ids"][0].as_str().unwrap()).await);
    let (_, fay_token) = unsubscribe_header(&app.get_raw(&fay_id).await);
    assert_ne!(eve_token, fay_token);
    one_click(&app, &fay_token).await;
    assert_eq!(
        entries_of(&app, "fay@example.test").await,
        [(json!("newsletter"), json!(fay_id))]
    );
    assert!(entries_of(&app, "eve@example.test").await.is_empty());
    // A batch that says null: none.
    let response = app
        .post_batch(
            &json!({"template": "news", "unsubscribe": null, "recipients": [
            {"to": "gus@example.test", "data": {"name": "Gus"}}]}),
        )
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let batch: Value = response.json().await.unwrap();
    assert!(!has_list_unsubscribe(
        &app.get_raw(batch["ids"][0].as_str().unwrap()).await
    ));

    // Stored again without unsubscribe: its messages have no link.
    let response = app
        .put_template(
            "news",
            &json!({"subject": "News for {{ name }}", "text": "Hi {{ name }}"}),
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let stored: Value = response.json().await.unwrap();
    assert_eq!(stored["unsubscribe"], Value::Null);
    let answer = accepted(
        &app,
        json!({"to": "hal@example.test", "template": "news", "data": {"name": "Hal"}}),
    )
    .await;
    assert!(!has_list_unsubscribe(
        &app.get_raw(answer["id"].as_str().unwrap()).await
    ));
}

async fn a_template_unsubscribe_is_checked_and_its_refusals_say_so(backend: Backend) {
    let Some(mut app) = spawn_app(backend, SHOP).await else {
        return;
    };
    let news =
        json!({"subject": "News", "text": "Hi {{ name }}", "unsubscribe": {"list": "newsletter"}});
    // Without HERALD_PUBLIC_URL every message from it would be refused: so is the template.
    let (status, error) = error_of(app.put_template("news", &news).await).await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("unsubscribe")),
        "{error}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("HERALD_PUBLIC_URL"),
        "{error}"
    );
    assert_eq!(app.get_template("news").await.status().as_u16(), 404);

    app.restart(PUBLIC).await;
    for (unsubscribe, field) in [
        (json!("newsletter"), "unsubscribe"),
        (json!({}), "unsubscribe.list"),
        (json!({"list": 7}), "unsubscribe.list"),
        (json!({"list": ""}), "unsubscribe.list"),
        (json!({"list": "news", "scope": "x"}), "unsubscribe.scope"),
    ] {
        let (status, error) = error_of(
            app.put_template(
                "news",
                &json!({"subject": "News", "text": "x", "unsubscribe": unsubscribe}),
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, error["field"].as_str()),
            (422, Some(field)),
            "{unsubscribe}: {error}"
        );
    }
    assert_eq!(app.get_template("news").await.status().as_u16(), 404);
    assert_eq!(app.put_template("news", &news).await.status().as_u16(), 200);

    // The single-recipient rule and the own-header rule hold for the template's unsubscribe, and the refusal
    // says where the unsubscribe comes from and how to send without it.
    let data = json!({"name": "x"});
    for (body, field) in [
        (
            json!({"to": ["a@example.test", "b@example.test"], "template": "news", "data": data}),
            "unsubscribe",
        ),
        (
            json!({"to": "a@example.test", "cc": "b@example.test", "template": "news", "data": data}),
            "unsubscribe",
        ),
        (
            json!({"to": "a@example.test", "template": "news", "data": data,
                   "headers": {"List-Unsubscribe": "<https://elsewhere.example/>"}}),
            "headers.List-Unsubscribe",
        ),
    ] {
        let (status, error) = error_of(app.post_message(&body).await).await;
        assert_eq!(
            (status, error["field"].as_str()),
            (422, Some(field)),
            "{error}"
        );
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("template \"news\"") && message.contains("\"unsubscribe\": null"),
            "{message}"
        );
    }
    let (status, error) = error_of(
        app.post_batch(&json!({"template": "news", "recipients": [
            {"to": ["a@example.test", "b@example.test"], "data": data}]}))
            .await,
    )
    .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("recipients[0].to")),
        "{error}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("template \"news\"")
    );
    // The request's own `unsubscribe` is refused without the template being named.
    let (status, error) = error_of(
        app.post_message(
            &json!({"to": ["a@example.test", "b@example.test"], "template": "news",
                                  "data": data, "unsubscribe": {"list": "other"}}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("unsubscribe"))
    );
    assert!(
        !error["message"].as_str().unwrap().contains("template"),
        "{error}"
    );
    assert_eq!(
        app.list_messages("").await["items"],
        json!([]),
        "nothing stored"
    );

    // A server without HERALD_PUBLIC_URL refuses the stored template's messages, naming it; null sends.
    app.restart(SHOP).await;
    let (status, error) = error_of(
        app.post_message(&json!({"to": "a@example.test", "template": "news", "data": data}))
            .await,
    )
    .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("unsubscribe"))
    );
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("HERALD_PUBLIC_URL") && message.contains("template \"news\""),
        "{message}"
    );
    let (status, error) = error_of(
        app.post_batch(
            &json!({"template": "news", "recipients": [{"to": "a@example.test", "data": data}]}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("unsubscribe")),
        "{error}"
    );
    let answer = accepted(
        &app,
        json!({"to": "a@example.test", "template": "news", "data": data, "unsubscribe": null}),
    )
    .await;
    assert!(!has_list_unsubscribe(
        &app.get_raw(answer["id"].as_str().unwrap()).await
    ));
}

/// Every entry's address and scope (one page: the tests' lists are short).
async fn listed_entries(app: &TestApp) -> Vec<(String, Value)> {
    let page: Value = app.get("/v1/suppressions").await.json().await.unwrap();
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_owned(),
                e["scope"].clone(),
            )
        })
        .collect()
}

async fn expired_entries_are_removed_by_the_housekeeping(backend: Backend) {
    let Some(mut app) = spawn_app(backend, SHOP).await else {
        return;
    };
    for entry in [
        json!({"address": "lapsed@example.test", "expires_at": "2020-01-01T00:00:00Z"}),
        json!({"address": "lapsed@example.test", "scope": "newsletter"}),
        json!({"address": "later@example.test", "expires_at": "2999-01-01T00:00:00Z"}),
        json!({"address": "forever@example.test", "reason": "complaint"}),
    ] {
        let (status, body) = post(&app, "/v1/suppressions", &entry).await;
        assert_eq!(status, 201, "{body}");
    }
    // Expired, it no longer applies, but it is still listed until the housekeeping runs.
    assert_eq!(listed_entries(&app).await.len(), 4);
    let answer = accepted(
        &app,
        json!({"to": "lapsed@example.test", "subject": "Hi", "text": "hello"}),
    )
    .await;
    assert_eq!(answer["suppressed"], json!([]));

    // The housekeeping runs at start (then hourly).
    app.restart(SHOP).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let left = loop {
        let left = listed_entries(&app).await;
        if left.len() < 4 || std::time::Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        left,
        [
            ("forever@example.test".to_owned(), Value::Null),
            ("lapsed@example.test".to_owned(), json!("newsletter")),
            ("later@example.test".to_owned(), Value::Null),
        ]
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let expired: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_suppressions_expired_total "))
        .unwrap_or_else(|| panic!("no herald_suppressions_expired_total in\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    // The recorder is the process's: other tests' servers may have counted too.
    assert!(expired >= 1, "{metrics}");
}
