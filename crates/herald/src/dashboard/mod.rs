//! The web dashboard at `/`: server-rendered pages over the store, with a little plain JavaScript for live
//! updates and the template preview. Pages are minijinja templates and assets compiled into the binary: no
//! front-end build step, nothing to fetch at run time.
//!
//! Pages: overview (`/`, live over server-sent events from `/events`), the archive (`/messages`), a message
//! (`/messages/{id}`, its HTML in a sandboxed frame from `/messages/{id}/html`), templates with a live preview
//! (`/templates`), the capture inbox (`/inbox`), the DKIM records to publish (`/dkim`), the webhook endpoints
//! and their deliveries, managed there too (`/webhooks`), and the suppression list (`/suppressions`). Sign-in
//! and CSRF are in `session`.
//!
//! Like the API, it takes the application state from `app` and asks the service for everything it shows or
//! does; `serve` mounts it beside the API, and neither imports the other.

// Issue 13: the DKIM records page.
mod dkim;
// Issue 12.
mod live;
mod mail;
mod pages;
mod session;
mod webhooks;
// Issue 12: the suppression list page.
mod suppressions;

use std::sync::LazyLock;

use axum::{
    Router,
    extract::Path,
    http::{StatusCode, header},
    middleware,
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use minijinja::Environment;

use crate::{app::AppState, service::format_rfc3339, store::StoreError};

/// The dashboard's routes; every one but the sign-in form and the assets goes through [`session::guard`].
pub fn router(state: AppState) -> Router<AppState> {
    let guarded = Router::new()
        .route("/", get(pages::overview))
        .route("/events", get(live::events))
        .route("/messages", get(pages::messages))
        .route("/messages/{id}", get(pages::message))
        .route("/messages/{id}/html", get(pages::message_html))
        .route("/messages/{id}/raw", get(pages::message_raw))
        .route(
            "/messages/{id}/attachments/{index}",
            get(pages::message_attachment),
        )
        .route("/messages/{id}/cancel", post(pages::cancel))
        .route("/messages/{id}/resend", post(pages::resend))
        .route("/templates", get(pages::templates))
        .route(
            "/templates/{name}",
            get(pages::template_editor).post(pages::save_template),
        )
        .route("/templates/{name}/preview", post(pages::preview_template))
        .route("/inbox", get(pages::inbox))
        .route("/dkim", get(dkim::keys))
        .route("/webhooks", get(webhooks::endpoints).post(webhooks::create))
        .route("/webhooks/new", get(webhooks::new_form))
        .route(
            "/webhooks/{id}/edit",
            get(webhooks::edit_form).post(webhooks::save),
        )
        .route(
            "/webhooks/{id}/rotate",
            get(webhooks::rotate_confirm).post(webhooks::rotate),
        )
        .route(
            "/webhooks/{id}/delete",
            get(webhooks::delete_confirm).post(webhooks::delete),
        )
        .route("/webhooks/{id}/enable", post(webhooks::enable))
        .route("/webhooks/{id}/disable", post(webhooks::disable))
        .route(
            "/webhooks/{id}/deliveries/{delivery}/retry",
            post(webhooks::send_again),
        )
        .route("/suppressions", get(suppressions::list))
        .route("/logout", post(session::logout))
        .route_layer(middleware::from_fn_with_state(state, session::guard));
    Router::new()
        .merge(guarded)
        .route("/login", get(session::login_page).post(session::login))
        .route("/assets/{file}", get(asset))
}

/// Every page template, by name.
const VIEWS: &[(&str, &str)] = &[
    ("base.html", include_str!("views/base.html")),
    ("login.html", include_str!("views/login.html")),
    ("error.html", include_str!("views/error.html")),
    ("overview.html", include_str!("views/overview.html")),
    ("messages.html", include_str!("views/messages.html")),
    ("message.html", include_str!("views/message.html")),
    ("templates.html", include_str!("views/templates.html")),
    ("template.html", include_str!("views/template.html")),
    ("inbox.html", include_str!("views/inbox.html")),
    ("dkim.html", include_str!("views/dkim.html")),
    ("webhooks.html", include_str!("views/webhooks.html")),
    ("webhook_form.html", include_str!("views/webhook_form.html")),
    (
        "webhook_confirm.html",
        include_str!("views/webhook_confirm.html"),
    ),
    (
        "webhook_secret.html",
        include_str!("views/webhook_secret.html"),
    ),
    ("suppressions.html", include_str!("views/suppressions.html")),
];

/// The page templates, parsed once.
static PAGES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in VIEWS {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("dashboard template {name}: {e}"));
    }
    env.add_filter("time", |at: i64| {
        let text = format_rfc3339(at);
        // `2026-11-26T09:30:00.123Z` → `2026-11-26 09:30:00`: the seconds are enough to read.
        text.get(..19).unwrap_or(&text).replace('T', " ")
    });
    env.add_filter("rfc3339", format_rfc3339);
    env.add_filter("bytes", |n: u64| human_bytes(n));
    env.add_filter("count", |n: u64| thousands(n));
    env
});

/// `text` as one URL query value or path segment.
fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `1000003` → `1,000,003`: counts in the millions stay readable.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human_bytes(n: u64) -> String {
    match n {
        0..1_024 => format!("{n} B"),
        1_024..1_048_576 => format!("{:.1} KB", n as f64 / 1_024.0),
        _ => format!("{:.1} MB", n as f64 / 1_048_576.0),
    }
}

/// Renders page `name`; a template error is a bug of ours, reported as a 500 page.
pub fn render(name: &str, context: minijinja::Value) -> Result<String, PageError> {
    PAGES
        .get_template(name)
        .and_then(|t| t.render(context))
        .map_err(|e| {
            tracing::error!(error = %e, page = name, "dashboard page failed to render");
            PageError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "This page could not be rendered.",
            )
        })
}

/// A page that could not be shown, as an HTML page with the status and the reason.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, format!("{field}: {message}"))
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::InvalidQuery(message) => Self::new(StatusCode::BAD_REQUEST, message),
            other => {
                tracing::error!(
                    error = &other as &dyn std::error::Error,
                    "store error on a dashboard page"
                );
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The store could not answer; try again in a moment.",
                )
            }
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = PAGES
            .get_template("error.html")
            .and_then(|t| {
                t.render(minijinja::context! {
                    status => self.status.as_u16(),
                    reason => self.status.canonical_reason().unwrap_or("Error"),
                    message => self.message.clone(),
                })
            })
            .unwrap_or_else(|_| self.message.clone());
        (self.status, Html(body)).into_response()
    }
}

/// The stylesheet and script, compiled in. Cached for an hour; the file names are stable so a restart with
/// a new binary is picked up within that.
async fn asset(Path(file): Path<String>) -> Response {
    let (content_type, body): (&str, &'static str) = match file.as_str() {
        "app.css" => ("text/css; charset=utf-8", include_str!("assets/app.css")),
        "app.js" => (
            "text/javascript; charset=utf-8",
            include_str!("assets/app.js"),
        ),
        _ => return PageError::not_found("No such asset.").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_template_parses() {
        for (name, _) in VIEWS {
            assert!(PAGES.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_000_003), "1,000,003");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(77_323), "75.5 KB");
        assert_eq!(human_bytes(3 * 1_048_576), "3.0 MB");
    }
}
