//! Templates through the HTTP API: store, validate, preview, and messages made from them, checked against
//! what the relay receives. Every test runs on SQLite and on PostgreSQL.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod app;
mod common;

use app::{DEFAULTS, Options, error_of, spawn_app};
use base64::Engine as _;
use common::Backend;
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{Value, json};

const SHOP: Options = Options {
    default_from: Some("Shop <shop@example.test>"),
    ..DEFAULTS
};

async fn templates_are_stored_listed_read_and_deleted(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    let body = json!({"subject": "Hi {{ name }}", "text": "Hello {{ name }}"});
    let response = app.put_template("welcome", &body).await;
    assert_eq!(response.status().as_u16(), 200);
    let stored: Value = response.json().await.unwrap();
    assert_eq!(stored["name"], "welcome");
    assert_eq!(stored["text"], "Hello {{ name }}");
    assert!(stored["html"].is_null());
    assert!(stored["updated_at"].as_str().unwrap().ends_with('Z'));

    let replaced = json!({"subject": "Hi {{ name }}!", "html": "<p>{{ name }}</p>"});
    assert_eq!(
        app.put_template("welcome", &replaced)
            .await
            .status()
            .as_u16(),
        200
    );
    let read: Value = app.get_template("welcome").await.json().await.unwrap();
    assert_eq!(read["subject"], "Hi {{ name }}!");
    assert!(read["text"].is_null(), "a PUT replaces the whole template");
    let mut round_trip = read.clone();
    round_trip["subject"] = json!("Hello again, {{ name }}");
    assert_eq!(
        app.put_template("welcome", &round_trip)
            .await
            .status()
            .as_u16(),
        200,
        "what GET returns can be PUT back"
    );
    let (status, error) = error_of(app.put_template("other", &round_trip).await).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("name")));
    app.put_template("alpha", &body).await;
    let list: Value = app.list_templates().await.json().await.unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "welcome"]);
    assert_eq!(list["items"][1]["has_html"], true);

    let (status, error) = error_of(app.put_template("bad name!", &body).await).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("name")));
    let (status, error) =
        error_of(app.put_template("x", &json!({"text": "no subject"})).await).await;
    assert_eq!(
        (status, error["field"].as_str()),
        (422, Some("subject")),
        "{error}"
    );
    let (status, error) = error_of(
        app.put_template("x", &json!({"subject": "s", "txt": "typo"}))
            .await,
    )
    .await;
    assert_eq!(status, 422, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("txt"),
        "{error}"
    );
    let (status, error) = error_of(app.put_template("x", &json!({"subject": "s"})).await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (422, Some("template_empty"))
    );

    assert_eq!(app.delete_template("alpha").await.status().as_u16(), 200);
    let (status, error) = error_of(app.delete_template("alpha").await).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")));
    assert_eq!(app.get_template("alpha").await.status().as_u16(), 404);
    app.stop().await;
}

async fn a_syntax_error_is_422_with_line_and_column_and_stores_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    let body = json!({
        "subject": "fine",
        "html": "<html>\n<body>\n  <p>{{ order.total | }}</p>\n</body></html>",
    });
    let (status, error) = error_of(app.put_template("receipt", &body).await).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["code"], "template_syntax");
    assert_eq!(error["field"], "html");
    assert_eq!(error["template"], "receipt");
    assert_eq!(error["part"], "html");
    assert_eq!(error["line"], 3);
    assert_eq!(
        error["column"], 23,
        "the `}}` where a filter name should be: {error}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("template \"receipt\" (html), line 3, column 23: syntax error"),
        "{error}"
    );
    assert_eq!(app.get_template("receipt").await.status().as_u16(), 404);

    let (status, error) = error_of(
        app.put_template("s", &json!({"subject": "{% if x %}", "text": "t"}))
            .await,
    )
    .await;
    assert_eq!(
        (status, error["field"].as_str(), error["line"].as_u64()),
        (422, Some("subject"), Some(1))
    );
    app.stop().await;
}

async fn html_is_escaped_while_subject_and_text_are_not(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    app.put_template(
        "t",
        &json!({"subject": "News for {{ who }}", "text": "Dear {{ who }},\n", "html": "<p>Dear {{ who }}</p>"}),
    )
    .await;
    let preview: Value = app
        .preview(
            "t",
            &json!({"data": {"who": "Tom & \"Jerry\" <tj@example.test>"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        preview["subject"],
        "News for Tom & \"Jerry\" <tj@example.test>"
    );
    assert_eq!(preview["text"], "Dear Tom & \"Jerry\" <tj@example.test>,\n");
    assert_eq!(
        preview["html"],
        "<p>Dear Tom &amp; &quot;Jerry&quot; &lt;tj@example.test&gt;</p>"
    );
    app.stop().await;
}

async fn an_undefined_variable_is_an_error_naming_it(backend: Backend) {
    let Some(app) = spawn_app(backend, SHOP).await else {
        return;
    };
    app.put_template(
        "order",
        &json!({"subject": "Order {{ order.id }}", "text": "Hi {{ user.first_name }},\nyour order {{ order.id }} shipped.\n"}),
    )
    .await;
    let (status, error) = error_of(
        app.preview("order", &json!({"data": {"order": {"id": 7}, "user": {}}}))
            .await,
    )
    .await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["code"], "template_error");
    assert_eq!(error["field"], "data");
    assert_eq!(
        (error["part"].as_str(), error["line"].as_u64()),
        (Some("text"), Some(1))
    );
    assert_eq!(error["column"], 7, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("`user.first_name` is undefined"),
        "{error}"
    );

    // The same through POST /v1/messages: a 422 naming the variable, and nothing queued.
    let (status, error) = error_of(
        app.post_message(&json!({"to": "a@example.test", "template": "order", "data": {"user": {"first_name": "Ana"}}}))
            .await,
    )
    .await;
    assert_eq!((status, error["field"].as_str()), (422, Some("data")));
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("`order` is undefined"),
        "{error}"
    );
    let page = app.list_messages("").await;
    assert!(page["items"].as_array().unwrap().is_empty(), "{page}");

    let (status, error) = error_of(app.preview("nothing", &json!({"data": {}})).await).await;
    assert_eq!(status, 404, "{error}");
    let (status, error) = error_of(
        app.post_message(&json!({"to": "a@example.test", "template": "nothing"}))
            .await,
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str(), error["field"].as_str()),
        (422, Some("unknown_template"), Some("template"))
    );
    let (status, error) = error_of(
        app.post_message(&json!({"to": "a@example.test", "template": "order", "subject": "x"}))
            .await,
    )
    .await;
    assert_eq!((status, error["field"].as_str()), (422, Some("subject")));
    let (status, error) = error_of(
        app.post_message(&json!({"to": "a@example.test", "subject": "x", "text": "y", "data": {}}))
            .await,
    )
    .await;
    assert_eq!((status, error["field"].as_str()), (422, Some("data")));
    let (status, error) = error_of(
        app.post_message(&json!({"to": "a@example.test", "template": "order", "data": [1]}))
            .await,
    )
    .await;
    assert_eq!((status, error["field"].as_str()), (422, Some("data")));
    app.stop().await;
}

/// A layout with a `<style>` block and a footer include: the HTML comes out with the CSS inlined, and the
/// text part is made from it.
async fn layouts_includes_css_inlining_and_text_from_html(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    let layout = json!({
        "subject": "(layout)",
        "html": "<!doctype html><html><head><style>\n  .btn { background: #0a66c2; color: #fff }\n  p { margin: 0 0 12px }\n  @media (max-width: 600px) { p { font-size: 18px } }\n</style></head>\n<body>{% block content %}{% endblock %}\n{% include \"footer\" %}</body></html>",
        "text": "{% block content %}{% endblock %}\n--\n{% include \"footer\" %}",
    });
    assert_eq!(
        app.put_template("layout", &layout).await.status().as_u16(),
        200
    );
    let footer = json!({"subject": "(footer)", "html": "<p class=\"small\">{{ company }} · <a href=\"https://shop.example/unsubscribe\">Unsubscribe</a></p>", "text": "{{ company }}"});
    assert_eq!(
        app.put_template("footer", &footer).await.status().as_u16(),
        200
    );
    let welcome = json!({
        "subject": "Welcome, {{ name }}",
        "html": "{% extends \"layout\" %}{% block content %}<h1>Welcome, {{ name }}</h1><p>Your account is ready.</p><p><a class=\"btn\" href=\"{{ url }}\">Sign in</a></p>{% endblock %}",
    });
    assert_eq!(
        app.put_template("welcome", &welcome)
            .await
            .status()
            .as_u16(),
        200
    );

    let data = json!({"data": {"name": "Ana", "url": "https://shop.example/login", "company": "Shop & Co"}});
    let preview: Value = app.preview("welcome", &data).await.json().await.unwrap();
    let html = preview["html"].as_str().unwrap();
    assert!(
        html.contains("<p style=\"margin: 0 0 12px;\">Your account is ready.</p>"),
        "{html}"
    );
    assert!(
        html.contains("class=\"btn\" href=\"https://shop.example/login\" style=\"background: #0a66c2;color: #fff;\"")
            || html.contains("style=\"background: #0a66c2; color: #fff;\""),
        "{html}"
    );
    assert!(
        html.contains("@media (max-width: 600px)"),
        "media queries stay in <style>: {html}"
    );
    assert!(
        html.contains("Shop &amp; Co"),
        "the include renders with the same data: {html}"
    );
    let text = preview["text"].as_str().unwrap();
    assert!(text.contains("Welcome, Ana"), "{text}");
    assert!(text.contains("Your account is ready."), "{text}");
    assert!(text.contains("https://shop.example/login"), "{text}");
    assert!(text.contains("Shop & Co"), "{text}");
    assert!(!text.contains("&amp;") && !text.contains('<'), "{text}");

    // A template that includes one that does not exist fails naming it, at render time.
    app.put_template(
        "broken",
        &json!({"subject": "s", "text": "a\n{% include \"nowhere\" %}"}),
    )
    .await;
    let (status, error) = error_of(app.preview("broken", &json!({})).await).await;
    assert_eq!(status, 422);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no template named \"nowhere\""),
        "{error}"
    );
    assert_eq!(error["line"], 2);
    app.stop().await;
}

/// The preview is exactly what goes out: a message made from the template, decoded from the bytes the relay
/// received, has the preview's subject, text and html.
async fn the_preview_is_what_the_relay_receives(backend: Backend) {
    let Some(app) = spawn_app(backend, SHOP).await else {
        return;
    };
    let template = json!({
        "subject": "Receipt {{ number }} — {{ total }} €",
        "html": "<html><head><style>td { padding: 4px } .total { font-weight: bold }</style></head><body>\
                 <img src=\"cid:logo@shop.example\" alt=\"Shop\"><h1>Thanks, {{ name }}!</h1><table>\
                 {% for line in lines %}<tr><td>{{ line.item }}</td><td>{{ line.price }}</td></tr>{% endfor %}\
                 <tr><td class=\"total\">Total</td><td class=\"total\">{{ total }} €</td></tr></table>\
                 <p>Questions? Reply to this mail — we read every one. Ünïcödé ✓</p></body></html>",
    });
    assert_eq!(
        app.put_template("receipt", &template)
            .await
            .status()
            .as_u16(),
        200
    );
    let data = json!({"name": "Zoë <Z>", "number": "R-1001", "total": "15.00",
                      "lines": [{"item": "Widget × 2", "price": "10.00"}, {"item": "Gadget", "price": "5.00"}]});
    let preview: Value = app
        .preview("receipt", &json!({"data": data}))
        .await
        .json()
        .await
        .unwrap();
    let logo =
        base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nnot really a png");
    let response = app
        .post_message(&json!({
            "to": "Zoë <zoe@example.test>",
            "template": "receipt",
            "data": data,
            "attachments": [{"filename": "logo.png", "content_base64": logo, "inline": true, "content_id": "logo@shop.example"}],
            "tags": ["receipt"],
        }))
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = app.wait_for_status(&id, "delivered").await;
    assert_eq!(view["subject"], preview["subject"]);
    let received = app.relay.transactions();
    assert_eq!(received.len(), 1);
    assert_eq!(
        app.get_raw(&id).await,
        received[0].content,
        "the archive is what left"
    );

    let parsed = MessageParser::default()
        .parse(&received[0].content)
        .expect("the relay received a parseable message");
    assert_eq!(parsed.subject(), preview["subject"].as_str());
    let crlf = |s: &str| s.replace("\r\n", "\n");
    assert_eq!(
        crlf(&parsed.body_html(0).unwrap()),
        preview["html"].as_str().unwrap(),
        "the HTML part is the preview's html"
    );
    assert_eq!(
        crlf(&parsed.body_text(0).unwrap()).trim_end(),
        preview["text"].as_str().unwrap().trim_end(),
        "the text part is the preview's text"
    );
    let inline = parsed.attachments().next().expect("the inline logo");
    assert_eq!(inline.content_id(), Some("logo@shop.example"));
    assert!(preview["html"].as_str().unwrap().contains("Zoë &lt;Z&gt;"));
    assert!(!preview["html"].as_str().unwrap().contains("<style"));
    assert!(preview["text"].as_str().unwrap().contains("Widget × 2"));
    app.stop().await;
}

on_both_backends!(
    templates_are_stored_listed_read_and_deleted,
    a_syntax_error_is_422_with_line_and_column_and_stores_nothing,
    html_is_escaped_while_subject_and_text_are_not,
    an_undefined_variable_is_an_error_naming_it,
    layouts_includes_css_inlining_and_text_from_html,
    the_preview_is_what_the_relay_receives,
);
