//! `GET /webhooks` (issue 12): each webhook endpoint with its recent deliveries (status, latency, response
//! excerpt, error), flagged when disabled, with "send again" on each delivery and enable/disable. Endpoints
//! are created and rotated through `/v1/webhooks`, where the secret is shown once.

use axum::{
    Extension, Form,
    extract::{Path, State},
    http::StatusCode,
    response::{Html, IntoResponse as _, Redirect, Response},
};
use minijinja::context;
use serde_json::Value;

use super::{
    PageError, render,
    session::{CsrfForm, Viewer},
};
use crate::{
    app::AppState,
    events::{
        WebhookError,
        manage::{self, EndpointFields},
    },
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

pub async fn endpoints(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
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
            items => minijinja::Value::from(minijinja::value::Serde(&items)),
            page => "webhooks",
            csrf => viewer.csrf.clone(),
            signed_in => viewer.signed_in,
            capture_inbox => state.capture_inbox,
        },
    )
    .map(Html)
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

/// `POST /webhooks/{id}/enable` and `/disable`.
pub async fn set_enabled(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    viewer.verify(form.csrf.as_deref())?;
    let enabled = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => return Err(PageError::not_found("no such action")),
    };
    let fields = EndpointFields {
        enabled: Some(enabled),
        ..Default::default()
    };
    state.service.update_webhook(&id, fields).await?;
    Ok(Redirect::to("/webhooks").into_response())
}
