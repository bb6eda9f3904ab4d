//! `/webhooks` (issue 12): each webhook endpoint with its recent deliveries (status, latency, response
//! excerpt, error), flagged when disabled, with "send again" on each delivery; and the endpoints managed from
//! here as through `/v1/webhooks`: created, changed, enabled or disabled, their secret rotated, deleted.
//!
//! Every field goes through the same checks as the API's (`events::manage`, by way of the service); a bad one
//! shows the form again with the field named and what was typed kept. The signing secret is shown once, in
//! the answer to the POST that made it (never in a URL, where it would end up in the history, in logs and in
//! `Referer`), with `Cache-Control: no-store` so the browser keeps no copy of that page.

use axum::{
    Extension, Form,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse as _, Redirect, Response},
};
use minijinja::context;
use serde_json::Value;

use super::{
    PageError,
    pages::{self, Notice, v},
    render,
    session::{CsrfForm, Viewer},
};
use crate::{
    app::AppState,
    events::{
        WebhookError,
        manage::{self, EndpointFields},
    },
    store::{WebhookRow, webhooks::EVENT_TYPES},
};

/// Deliveries shown per endpoint.
const RECENT: u32 = 10;

impl From<WebhookError> for PageError {
    fn from(error: WebhookError) -> Self {
        match error {
            WebhookError::Store(e) => e.into(),
            e @ (WebhookError::NotFound(_) | WebhookError::NoDelivery { .. }) => {
                PageError::not_found(e.to_string())
            }
            WebhookError::Invalid { field, message } => PageError::bad_request(field, message),
            e => PageError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// The context every webhook page shares.
fn base(viewer: &Viewer, state: &AppState) -> minijinja::Value {
    pages::base("webhooks", viewer, state)
}

fn notice_text(notice: Option<&str>) -> Option<&'static str> {
    match notice? {
        "queued" => Some("The delivery is queued to be sent again now."),
        "saved" => Some("Endpoint saved."),
        "deleted" => Some("Endpoint deleted, with its deliveries."),
        _ => None,
    }
}

/// `GET /webhooks`: every endpoint and its newest deliveries. Never a secret.
pub async fn endpoints(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(notice): Query<Notice>,
) -> Result<Html<String>, PageError> {
    let now = state.service.now();
    let mut items: Vec<Value> = Vec::new();
    for row in state.service.webhooks().await? {
        let mut endpoint = manage::endpoint_json(&row, now);
        let deliveries: Vec<Value> = state
            .service
            .webhook_deliveries(&row.id, RECENT)
            .await?
            .iter()
            .map(manage::delivery_json)
            .collect();
        endpoint["deliveries"] = Value::Array(deliveries);
        items.push(endpoint);
    }
    render(
        "webhooks.html",
        context! {
            items => v(&items),
            notice => notice_text(notice.notice.as_deref()),
            ..base(&viewer, &state)
        },
    )
    .map(Html)
}

/// What the endpoint form holds, as typed: shown again when a field is refused.
#[derive(Debug, Default)]
struct Draft {
    csrf: Option<String>,
    url: String,
    events: Vec<String>,
    description: String,
    enabled: bool,
}

impl Draft {
    /// Reads the posted form. Repeated `events` fields are the ticked boxes (none: every type); `enabled` is
    /// there when its box is ticked. Other fields are ignored, as a browser's form may carry more.
    fn read(pairs: Vec<(String, String)>) -> Draft {
        let mut draft = Draft::default();
        for (key, value) in pairs {
            match key.as_str() {
                "csrf" => draft.csrf = Some(value),
                "url" => draft.url = value,
                "events" => draft.events.push(value),
                "description" => draft.description = value,
                "enabled" => draft.enabled = true,
                _ => {}
            }
        }
        draft
    }

    fn of(row: &WebhookRow) -> Draft {
        Draft {
            csrf: None,
            url: row.url.clone(),
            events: row.events.clone(),
            description: row.description.clone(),
            enabled: row.enabled,
        }
    }
}

/// The create or edit form; `error` is `(field, message)` of a refused field.
fn form_page(
    state: &AppState,
    viewer: &Viewer,
    endpoint: Option<&WebhookRow>,
    draft: &Draft,
    error: Option<(&str, &str)>,
) -> Result<String, PageError> {
    render(
        "webhook_form.html",
        context! {
            id => endpoint.map(|row| row.id.clone()),
            url => draft.url.clone(),
            events => EVENT_TYPES
                .iter()
                .map(|name| context! { name => *name, checked => draft.events.iter().any(|e| e == name) })
                .collect::<Vec<_>>(),
            description => draft.description.clone(),
            enabled => draft.enabled,
            max_description => manage::MAX_DESCRIPTION,
            error_field => error.map(|(field, _)| field.to_owned()),
            error => error.map(|(field, message)| format!("{field}: {message}")),
            ..base(viewer, state)
        },
    )
}

/// A refused field shows the form again (422); any other failure is an error page.
fn refused(
    state: &AppState,
    viewer: &Viewer,
    endpoint: Option<&WebhookRow>,
    draft: &Draft,
    error: WebhookError,
) -> Result<Response, PageError> {
    match error {
        WebhookError::Invalid { field, message } => {
            let html = form_page(state, viewer, endpoint, draft, Some((field, &message)))?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(html)).into_response())
        }
        other => Err(other.into()),
    }
}

/// A page with a secret on it: never stored by the browser, never sent on as `Referer`.
fn secret_page(html: String) -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(html),
    )
        .into_response()
}

/// `GET /webhooks/new`: the form for a new endpoint (enabled, every event type).
pub async fn new_form(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Html<String>, PageError> {
    let draft = Draft {
        enabled: true,
        ..Draft::default()
    };
    form_page(&state, &viewer, None, &draft, None).map(Html)
}

/// `POST /webhooks`: creates the endpoint and shows its secret, this once.
pub async fn create(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let draft = Draft::read(pairs);
    viewer.verify(draft.csrf.as_deref())?;
    let fields = EndpointFields {
        // An empty box is a missing URL, as a body without `url` is to the API.
        url: (!draft.url.is_empty()).then(|| draft.url.clone()),
        events: Some(draft.events.clone()),
        description: Some(draft.description.clone()),
        enabled: Some(draft.enabled),
    };
    let (row, secret) = match state.service.create_webhook(fields).await {
        Ok(created) => created,
        Err(error) => return refused(&state, &viewer, None, &draft, error),
    };
    let html = render(
        "webhook_secret.html",
        context! {
            endpoint => v(&manage::endpoint_json(&row, state.service.now())),
            secret => secret,
            rotated => false,
            ..base(&viewer, &state)
        },
    )?;
    Ok(secret_page(html))
}

/// `GET /webhooks/{id}/edit`: the form with the endpoint's fields.
pub async fn edit_form(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let row = state.service.webhook(&id).await?;
    form_page(&state, &viewer, Some(&row), &Draft::of(&row), None).map(Html)
}

/// `POST /webhooks/{id}/edit`: changes the endpoint. The URL is checked again only when it changed (its host
/// is resolved then), and `enabled` is passed only when it changed, because setting it also clears an
/// automatic disable and the failure clock, as `PATCH` with `enabled` does.
pub async fn save(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let draft = Draft::read(pairs);
    viewer.verify(draft.csrf.as_deref())?;
    let row = state.service.webhook(&id).await?;
    let fields = EndpointFields {
        url: (draft.url != row.url).then(|| draft.url.clone()),
        events: Some(draft.events.clone()),
        description: Some(draft.description.clone()),
        enabled: (draft.enabled != row.enabled).then_some(draft.enabled),
    };
    match state.service.update_webhook(&id, fields).await {
        Ok(_) => Ok(Redirect::to("/webhooks?notice=saved").into_response()),
        Err(error) => refused(&state, &viewer, Some(&row), &draft, error),
    }
}

/// The confirmation step of a rotation or a deletion.
async fn confirm(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
    action: &str,
) -> Result<Html<String>, PageError> {
    let row = state.service.webhook(id).await?;
    render(
        "webhook_confirm.html",
        context! {
            endpoint => v(&manage::endpoint_json(&row, state.service.now())),
            action => action,
            overlap_hours => manage::ROTATION_OVERLAP.as_secs() / 3600,
            ..base(viewer, state)
        },
    )
    .map(Html)
}

/// `GET /webhooks/{id}/rotate`: asks before rotating.
pub async fn rotate_confirm(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    confirm(&state, &viewer, &id, "rotate").await
}

/// `POST /webhooks/{id}/rotate`: a new secret, shown this once; the old one keeps signing beside it for
/// [`manage::ROTATION_OVERLAP`].
pub async fn rotate(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    viewer.verify(form.csrf.as_deref())?;
    let (row, secret) = state.service.rotate_webhook_secret(&id).await?;
    let html = render(
        "webhook_secret.html",
        context! {
            endpoint => v(&manage::endpoint_json(&row, state.service.now())),
            secret => secret,
            rotated => true,
            overlap_hours => manage::ROTATION_OVERLAP.as_secs() / 3600,
            ..base(&viewer, &state)
        },
    )?;
    Ok(secret_page(html))
}

/// `GET /webhooks/{id}/delete`: asks before deleting.
pub async fn delete_confirm(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    confirm(&state, &viewer, &id, "delete").await
}

/// `POST /webhooks/{id}/delete`: the endpoint and its deliveries.
pub async fn delete(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    viewer.verify(form.csrf.as_deref())?;
    state.service.delete_webhook(&id).await?;
    Ok(Redirect::to("/webhooks?notice=deleted").into_response())
}

/// `POST /webhooks/{id}/deliveries/{delivery}/retry`: "send again".
pub async fn send_again(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((id, delivery)): Path<(String, i64)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    viewer.verify(form.csrf.as_deref())?;
    state.service.redeliver_webhook(&id, delivery).await?;
    Ok(Redirect::to("/webhooks?notice=queued").into_response())
}

async fn set_enabled(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
    form: &CsrfForm,
    enabled: bool,
) -> Result<Response, PageError> {
    viewer.verify(form.csrf.as_deref())?;
    let fields = EndpointFields {
        enabled: Some(enabled),
        ..Default::default()
    };
    state.service.update_webhook(id, fields).await?;
    Ok(Redirect::to("/webhooks").into_response())
}

/// `POST /webhooks/{id}/enable`: also clears an automatic disable.
pub async fn enable(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    set_enabled(&state, &viewer, &id, &form, true).await
}

/// `POST /webhooks/{id}/disable`.
pub async fn disable(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    set_enabled(&state, &viewer, &id, &form, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_reads_ticked_boxes_and_keeps_what_was_typed() {
        let pairs = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        let draft = Draft::read(pairs(&[
            ("csrf", "t"),
            ("url", " ftp://x "),
            ("events", "message.failed"),
            ("events", "message.delivered"),
            ("description", "<b>ours</b>"),
            ("submit", ""),
        ]));
        assert_eq!(draft.csrf.as_deref(), Some("t"));
        assert_eq!(draft.url, " ftp://x ");
        assert_eq!(draft.events, ["message.failed", "message.delivered"]);
        assert_eq!(draft.description, "<b>ours</b>");
        assert!(!draft.enabled, "an unticked box is not sent");
        assert!(Draft::read(pairs(&[("enabled", "on")])).enabled);
        assert_eq!(Draft::read(Vec::new()).csrf, None);
    }
}
