//! `POST /v1/batches` end to end: one personalized message per recipient from one template, accepted in one
//! commit, the shared attachment stored once. Every test runs on SQLite and on PostgreSQL.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod app;
mod common;

use std::time::Instant;

use app::{DEFAULTS, Options, error_of, spawn_app};
use base64::Engine as _;
use common::Backend;
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{Value, json};

const SHOP: Options = Options {
    default_from: Some("Shop <shop@example.test>"),
    ..DEFAULTS
};

/// A 50 KB "invoice": incompressible bytes behind a PDF header, as a real PDF's streams are.
fn pdf(len: usize) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n".to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn put_invoice_template(app: &app::TestApp) {
    let template = json!({
        "subject": "Invoice {{ number }} for {{ name }}",
        "text": "Hello {{ name }},\n\nyour invoice {{ number }} over {{ amount }} is attached.\n",
        "html": "<html><head><style>p { color: #222 }</style></head><body><p>Hello {{ name }},</p>\
                 <p>your invoice <b>{{ number }}</b> over {{ amount }} is attached.</p></body></html>",
    });
    let response = app.put_template("invoice", &template).await;
    assert_eq!(response.status().as_u16(), 200);
}

fn recipient(i: usize) -> Value {
    json!({"to": format!("user{i}@example.test"),
           "data": {"name": format!("User {i}"), "number": format!("INV-{i:05}"), "amount": format!("{}.00 €", 10 + i % 90)}})
}

/// 10,000 recipients in one call, a 50 KB PDF shared by all: one 202, ten thousand messages, and the PDF
/// stored once (the store grows by far less than 10,000 × 50 KB). Scheduled in the future so this measures
/// accepting, not delivering.
async fn ten_thousand_recipients_in_one_call_store_the_pdf_once(backend: Backend) {
    let Some(app) = spawn_app(backend, SHOP).await else {
        return;
    };
    put_invoice_template(&app).await;
    const N: usize = 10_000;
    let invoice = pdf(50 * 1024);
    let body = json!({
        "template": "invoice",
        "recipients": (0..N).map(recipient).collect::<Vec<_>>(),
        "attachments": [{"filename": "invoice.pdf", "content_base64": b64(&invoice)}],
        "send_at": "2099-01-01T00:00:00Z",
        "tags": ["invoices"],
        "metadata": {"run": "2026-11"},
    });
    let body_bytes = serde_json::to_vec(&body).unwrap().len();
    let before = app.database_bytes().await;
    let start = Instant::now();
    let response = app.post_batch(&body).await;
    let elapsed = start.elapsed();
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    let ids = accepted["ids"].as_array().unwrap();
    assert_eq!(ids.len(), N);
    assert_eq!(accepted["status"], "scheduled");
    let unique: std::collections::HashSet<&str> = ids.iter().map(|i| i.as_str().unwrap()).collect();
    assert_eq!(unique.len(), N);
    let after = app.database_bytes().await;
    let growth = after.saturating_sub(before);
    eprintln!(
        "{backend:?}: POST /v1/batches with {N} recipients ({body_bytes} bytes of JSON, a {} byte PDF) took \
         {elapsed:?}; the store grew by {growth} bytes = {} bytes per message (the PDF alone would be {} \
         bytes each)",
        invoice.len(),
        growth / N as u64,
        invoice.len() * 4 / 3
    );
    assert!(
        growth < (N * invoice.len()) as u64 / 10,
        "the PDF is stored once: grew by {growth} bytes"
    );

    // Each message is its recipient's, with the one PDF.
    for i in [0, 17, N - 1] {
        let id = ids[i].as_str().unwrap();
        let raw = app.get_raw(id).await;
        let parsed = MessageParser::default().parse(&raw).unwrap();
        assert_eq!(
            parsed.subject(),
            Some(format!("Invoice INV-{i:05} for User {i}").as_str())
        );
        assert_eq!(
            parsed.to().unwrap().first().unwrap().address(),
            Some(format!("user{i}@example.test").as_str())
        );
        let attachment = parsed.attachments().next().unwrap();
        assert_eq!(attachment.attachment_name(), Some("invoice.pdf"));
        assert_eq!(attachment.contents(), invoice.as_slice());
        let view: Value = app.get_message(id).await.json().await.unwrap();
        assert_eq!(view["status"], "scheduled");
        assert_eq!(view["tags"], json!(["invoices"]));
        assert_eq!(view["batch_id"], accepted["batch_id"]);
    }
    app.stop().await;
}

/// A small batch delivered: each recipient gets their own message, byte for byte the archived one.
async fn each_recipient_gets_their_own_message(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    put_invoice_template(&app).await;
    // The same template with an inline logo, shared by the batch like the PDF.
    let mut template: Value = app.get_template("invoice").await.json().await.unwrap();
    template["html"] = json!(template["html"].as_str().unwrap().replace(
        "<body>",
        "<body><img src=\"cid:logo@shop.example\" alt=\"Shop\">"
    ));
    for field in ["name", "updated_at"] {
        template.as_object_mut().unwrap().remove(field);
    }
    assert_eq!(
        app.put_template("invoice", &template)
            .await
            .status()
            .as_u16(),
        200
    );
    let invoice = pdf(3_000);
    let logo = pdf(700);
    let body = json!({
        "template": "invoice",
        "from": "Billing <billing@example.test>",
        "reply_to": "help@example.test",
        "recipients": [recipient(0), recipient(1), {"to": ["Two <user2@example.test>", "cfo@example.test"], "data": recipient(2)["data"]}],
        "attachments": [
            {"filename": "invoice.pdf", "content_base64": b64(&invoice)},
            {"filename": "logo.png", "content_base64": b64(&logo), "inline": true, "content_id": "logo@shop.example"},
        ],
        "headers": {"X-Campaign": "nov"},
    });
    let response = app.post_batch(&body).await;
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    let batch_id = accepted["batch_id"].as_str().unwrap();
    assert!(!batch_id.is_empty());
    let ids: Vec<String> = accepted["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        app.wait_for_status(id, "delivered").await;
    }
    let received = app.relay.transactions();
    assert_eq!(received.len(), 3);
    for (i, id) in ids.iter().enumerate() {
        let raw = app.get_raw(id).await;
        let sent = received
            .iter()
            .find(|t| t.content == raw)
            .expect("the relay received exactly the archived bytes");
        let parsed = MessageParser::default().parse(&sent.content).unwrap();
        assert!(
            parsed
                .body_text(0)
                .unwrap()
                .contains(&format!("Hello User {i},")),
        );
        assert!(
            parsed
                .body_html(0)
                .unwrap()
                .contains("<p style=\"color: #222;\">")
        );
        assert_eq!(parsed.header_raw("X-Campaign").map(str::trim), Some("nov"));
        let pdf_part = parsed
            .attachments()
            .find(|a| a.attachment_name() == Some("invoice.pdf"))
            .unwrap();
        assert_eq!(pdf_part.contents(), invoice.as_slice());
        let logo_part = parsed
            .attachments()
            .find(|a| a.content_id() == Some("logo@shop.example"))
            .expect("the inline logo");
        assert_eq!(logo_part.contents(), logo.as_slice());
        assert_eq!(sent.mail_from, "billing@example.test");
    }
    let third = received
        .iter()
        .find(|t| t.recipients.len() == 2)
        .expect("the third message has two recipients");
    assert_eq!(third.recipients, ["user2@example.test", "cfo@example.test"]);
    app.stop().await;
}

/// A bad recipient names itself (`recipients[17].to`, `recipients[5].data`) and queues nothing at all.
async fn a_bad_recipient_is_named_and_nothing_is_queued(backend: Backend) {
    let Some(app) = spawn_app(backend, SHOP).await else {
        return;
    };
    put_invoice_template(&app).await;
    let mut recipients: Vec<Value> = (0..20).map(recipient).collect();
    recipients[17]["to"] = json!("not an address");
    let (status, error) = error_of(
        app.post_batch(&json!({"template": "invoice", "recipients": recipients}))
            .await,
    )
    .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("recipients[17].to")),
        "{error}"
    );

    let mut recipients: Vec<Value> = (0..20).map(recipient).collect();
    recipients[5]["data"]
        .as_object_mut()
        .unwrap()
        .remove("amount");
    recipients[9]["data"]
        .as_object_mut()
        .unwrap()
        .remove("amount");
    let (status, error) = error_of(
        app.post_batch(&json!({"template": "invoice", "recipients": recipients}))
            .await,
    )
    .await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["field"], "recipients[5].data", "the first bad one");
    assert_eq!(error["template"], "invoice");
    assert_eq!(error["part"], "text");
    assert_eq!(
        (error["line"].as_u64(), error["column"].as_u64()),
        (Some(3), Some(35))
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("`amount` is undefined"),
        "{error}"
    );

    for (body, field) in [
        (
            json!({"template": "invoice", "recipients": []}),
            "recipients",
        ),
        (json!({"template": "invoice"}), "recipients"),
        (
            json!({"template": "nope", "recipients": [recipient(0)]}),
            "template",
        ),
        (json!({"recipients": [recipient(0)]}), "template"),
        (
            json!({"template": "invoice", "recipients": [{"data": {}}]}),
            "recipients[0].to",
        ),
        (
            json!({"template": "invoice", "recipients": [{"to": "a@example.test", "cc": "b@example.test"}]}),
            "recipients[0].cc",
        ),
        (
            json!({"template": "invoice", "recipients": [recipient(0)], "subject": "x"}),
            "subject",
        ),
        (
            json!({"template": "invoice", "recipients": [recipient(0)], "attachments": [{"filename": "a.pdf", "content_base64": "!!"}]}),
            "attachments[0].content_base64",
        ),
        (
            json!({"template": "invoice", "recipients": [recipient(0)], "from": "nobody"}),
            "from",
        ),
    ] {
        let (status, error) = error_of(app.post_batch(&body).await).await;
        assert_eq!(
            (status, error["field"].as_str()),
            (422, Some(field)),
            "{body}: {error}"
        );
    }
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({"to": format!("u{i}@example.test")}))
        .collect();
    let (status, error) = error_of(
        app.post_batch(&json!({"template": "invoice", "recipients": too_many}))
            .await,
    )
    .await;
    assert_eq!((status, error["field"].as_str()), (422, Some("recipients")));

    let page = app.list_messages("").await;
    assert!(
        page["items"].as_array().unwrap().is_empty(),
        "nothing queued: {page}"
    );
    app.stop().await;
}

/// The same idempotency key returns the same batch and queues nothing new.
async fn a_repeated_batch_returns_the_same_ids(backend: Backend) {
    let Some(app) = spawn_app(backend, SHOP).await else {
        return;
    };
    put_invoice_template(&app).await;
    let body = json!({"template": "invoice", "recipients": (0..5).map(recipient).collect::<Vec<_>>(),
                      "send_at": "2099-01-01T00:00:00Z"});
    let post = || {
        app.send(
            app.client
                .post(format!("{}/v1/batches", app.base))
                .header("Idempotency-Key", "november-invoices")
                .json(&body),
        )
    };
    let first = post().await;
    assert_eq!(first.status().as_u16(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = post().await;
    assert_eq!(again.status().as_u16(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["ids"], again["ids"]);
    assert_eq!(first["batch_id"], again["batch_id"]);
    let page = app.list_messages("limit=100").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    // A message-level key is a different namespace: it does not collide with the batch's.
    let single = app
        .post_message(&json!({"to": "a@example.test", "subject": "s", "text": "t", "idempotency_key": "november-invoices"}))
        .await;
    let single: Value = single.json().await.unwrap();
    assert!(!first["ids"].as_array().unwrap().contains(&single["id"]));
    app.stop().await;
}

on_both_backends!(
    ten_thousand_recipients_in_one_call_store_the_pdf_once,
    each_recipient_gets_their_own_message,
    a_bad_recipient_is_named_and_nothing_is_queued,
    a_repeated_batch_returns_the_same_ids,
);
