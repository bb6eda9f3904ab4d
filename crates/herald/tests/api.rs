//! The HTTP API end to end: a real `herald serve` (in process, port 0, a fresh database) delivering to the
//! herald-testkit capture server over real sockets. Every test runs on SQLite and on PostgreSQL.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod app;
mod common;

use app::{DEFAULTS, Options, error_of, spawn_app};
use common::Backend;
use serde_json::{Value, json};

fn simple(to: Value) -> Value {
    json!({"from": "Shop <shop@example.test>", "to": to, "subject": "Your order 📦", "text": "Hello\nthere", "html": "<p>Hello</p>"})
}

async fn a_message_is_stored_then_delivered_with_the_exact_bytes(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    let response = app
        .post_message(&simple(json!(["a@example.test", "Bob <b@example.test>"])))
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["status"], "queued");
    let id = accepted["id"].as_str().unwrap();
    let view = app.wait_for_status(id, "delivered").await;
    assert_eq!(view["subject"], "Your order 📦");
    assert_eq!(view["source"], "api");
    assert_eq!(view["recipients"].as_array().unwrap().len(), 2);
    assert_eq!(view["recipients"][0]["smtp_code"], 250);
    assert!(view["created_at"].as_str().unwrap().ends_with('Z'));
    let raw = app.get(&format!("/v1/messages/{id}/raw")).await;
    assert_eq!(raw.headers()["content-type"], "message/rfc822");
    let raw = raw.bytes().await.unwrap();
    let received = app.relay.transactions();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].content,
        raw.as_ref(),
        "the archive holds exactly what the relay received"
    );
    assert_eq!(received[0].recipients, ["a@example.test", "b@example.test"]);
    app.stop().await;
}

async fn bad_input_names_the_field_and_queues_nothing(backend: Backend) {
    let Some(app) = spawn_app(
        backend,
        Options {
            body_limit: Some(2_000),
            ..DEFAULTS
        },
    )
    .await
    else {
        return;
    };
    let (status, error) = error_of(
        app.post_message(&simple(json!(["a@example.test", "nobody"])))
            .await,
    )
    .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("to[1]")),
        "{error}"
    );
    assert!(error["message"].as_str().unwrap().contains('@'));

    let mut no_from = simple(json!("a@example.test"));
    no_from.as_object_mut().unwrap().remove("from");
    let (status, error) = error_of(app.post_message(&no_from).await).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("from")));

    let (status, error) = error_of(app.post_message(&json!({"from": "a@example.test", "to": "b@example.test", "text": "x", "send_at": "tomorrow"})).await).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("send_at")));

    let injected = json!({"from": "a@example.test", "to": "b@example.test", "subject": "hi\r\nBcc: victim@example.test", "text": "x"});
    let (status, _) = error_of(app.post_message(&injected).await).await;
    assert_eq!(status, 422, "header injection is refused");

    let response = app
        .client
        .post(format!("{}/v1/messages", app.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("invalid_request"))
    );

    let big = json!({"from": "a@example.test", "to": "b@example.test", "text": "x".repeat(5_000)});
    let (status, error) = error_of(app.post_message(&big).await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("body_too_large"))
    );

    // No body at all (issue 10: it used to be accepted and sent empty), or only an empty one.
    for no_body in [
        json!({"from": "a@example.test", "to": "b@example.test", "subject": "hi"}),
        json!({"from": "a@example.test", "to": "b@example.test", "text": "", "html": ""}),
    ] {
        let (status, error) = error_of(app.post_message(&no_body).await).await;
        assert_eq!(
            (status, error["field"].as_str()),
            (422, Some("text")),
            "{error}"
        );
        let message = error["message"].as_str().unwrap();
        for field in ["`text`", "`html`", "`template`"] {
            assert!(message.contains(field), "{message}");
        }
    }
    // A batch's body is its template: without one it is refused naming the field.
    let (status, error) = error_of(
        app.post_batch(
            &json!({"from": "a@example.test", "recipients": [{"to": "b@example.test"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("template")),
        "{error}"
    );

    let page: Value = app.list_messages("").await;
    assert!(
        page["items"].as_array().unwrap().is_empty(),
        "nothing was queued: {page}"
    );
    // Attachments alone are a body ("the report is attached").
    let attachment_only = json!({"from": "a@example.test", "to": "b@example.test", "subject": "report",
        "attachments": [{"filename": "report.csv", "content_base64": "YSxiCjEsMgo="}]});
    assert_eq!(app.post_message(&attachment_only).await.status(), 202);
    app.stop().await;
}

async fn idempotency_key_returns_the_same_message(backend: Backend) {
    let Some(app) = spawn_app(
        backend,
        Options {
            default_from: Some("Shop <shop@example.test>"),
            ..DEFAULTS
        },
    )
    .await
    else {
        return;
    };
    let body = json!({"to": "a@example.test", "subject": "once", "text": "only once"});
    let post = |key: &'static str| {
        app.client
            .post(format!("{}/v1/messages", app.base))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first: Value = post("order-1").await.unwrap().json().await.unwrap();
    let again = post("order-1").await.unwrap();
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    let mut in_body = body.clone();
    in_body["idempotency_key"] = json!("order-1");
    let third: Value = app.post_message(&in_body).await.json().await.unwrap();
    assert_eq!(first["id"], third["id"]);
    app.wait_for_status(first["id"].as_str().unwrap(), "delivered")
        .await;
    let page: Value = app.list_messages("").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.relay.transactions().len(), 1, "sent once");
    app.stop().await;
}

async fn scheduled_messages_can_be_cancelled_once(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    let mut body = simple(json!("a@example.test"));
    body["send_at"] = json!("2099-01-01T00:00:00Z");
    let accepted: Value = app.post_message(&body).await.json().await.unwrap();
    assert_eq!(accepted["status"], "scheduled");
    let id = accepted["id"].as_str().unwrap();
    let view: Value = app.get_message(id).await.json().await.unwrap();
    assert_eq!(view["send_at"], "2099-01-01T00:00:00Z");
    assert_eq!(app.cancel(id).await.status().as_u16(), 200);
    let (status, error) = error_of(app.cancel(id).await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (409, Some("not_cancellable"))
    );
    let (status, _) = error_of(app.cancel("no-such-id").await).await;
    assert_eq!(status, 404);
    let view: Value = app.get_message(id).await.json().await.unwrap();
    assert_eq!(view["status"], "cancelled");
    assert!(app.relay.transactions().is_empty());
    app.stop().await;
}

async fn search_filters_and_pages(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    let mut ids = Vec::new();
    for n in 0..7 {
        let mut body = simple(json!(format!("user{n}@example.test")));
        body["subject"] = json!(if n == 3 {
            "Password reset for José"
        } else {
            "Weekly digest"
        });
        let accepted: Value = app.post_message(&body).await.json().await.unwrap();
        ids.push(accepted["id"].as_str().unwrap().to_owned());
    }
    let hit: Value = app.list_messages("q=jose").await;
    assert_eq!(hit["items"].as_array().unwrap().len(), 1);
    assert_eq!(hit["items"][0]["id"], ids[3].as_str());
    let to: Value = app.list_messages("to=user5@example.test").await;
    assert_eq!(to["items"][0]["id"], ids[5].as_str());
    let mut seen = Vec::new();
    let mut query = "limit=3".to_owned();
    loop {
        let page: Value = app.list_messages(&query).await;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=3&cursor={cursor}"),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each once");
    let (status, error) = error_of(app.get("/v1/messages?status=lost").await).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("status")));
    let (status, error) = error_of(app.get("/v1/messages?limit=0").await).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("limit")));
    app.stop().await;
}

async fn the_token_guards_the_api(backend: Backend) {
    let Some(app) = spawn_app(
        backend,
        Options {
            api_token: Some("s3cret-token"),
            ..DEFAULTS
        },
    )
    .await
    else {
        return;
    };
    let url = format!("{}/v1/messages", app.base);
    let body = simple(json!("a@example.test"));
    let none = app.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let wrong = app
        .client
        .post(&url)
        .bearer_auth("guess")
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(wrong).await;
    assert_eq!(status, 401);
    assert!(
        !error.to_string().contains("s3cret"),
        "errors never echo credentials"
    );
    let right = app
        .client
        .post(&url)
        .bearer_auth("s3cret-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status().as_u16(), 202);
    assert_eq!(
        app.get("/healthz").await.status().as_u16(),
        200,
        "probes need no token"
    );
    app.stop().await;
}

async fn every_documented_route_exists_and_probes_answer(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    assert_eq!(app.get("/healthz").await.text().await.unwrap(), "ok");
    assert_eq!(app.get("/readyz").await.text().await.unwrap(), "ready");
    let accepted: Value = app
        .post_message(&simple(json!("a@example.test")))
        .await
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap();
    app.wait_for_status(id, "delivered").await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("herald_messages{status=\"delivered\"} 1"),
        "{metrics}"
    );
    let dashboard = app.get("/").await.text().await.unwrap();
    assert!(
        dashboard.contains("<title>Overview · Herald</title>"),
        "{dashboard}"
    );
    assert!(
        dashboard.contains("data-status=\"delivered\">1<"),
        "{dashboard}"
    );

    let document: Value = app.get("/openapi.json").await.json().await.unwrap();
    let paths = document["paths"].as_object().unwrap();
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let url = format!(
                "{}{}",
                app.base,
                path.replace("{id}", id).replace("{name}", "welcome")
            );
            let request = match method.as_str() {
                "get" => app.client.get(&url),
                "post" => app.client.post(&url).json(&json!({})),
                "put" => app.client.put(&url).json(&json!({})),
                "patch" => app.client.patch(&url).json(&json!({})),
                "delete" => app.client.delete(&url),
                other => panic!("unexpected method {other} in the document"),
            };
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert!(
                !body.contains("\"no_route\"") && status != 405,
                "{method} {path} is documented but not routed"
            );
        }
    }
    let (status, error) = error_of(app.get("/v1/nothing-here").await).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("no_route")));
    app.stop().await;
}

on_both_backends!(
    a_message_is_stored_then_delivered_with_the_exact_bytes,
    bad_input_names_the_field_and_queues_nothing,
    idempotency_key_returns_the_same_message,
    scheduled_messages_can_be_cancelled_once,
    search_filters_and_pages,
    the_token_guards_the_api,
    every_documented_route_exists_and_probes_answer,
);
