//! The HTTP API under `/v1`, with `/healthz`, `/readyz`, `/metrics` and `/openapi.json`: axum routes, bearer
//! authentication, errors as JSON naming the field. It takes the application state from `app` and asks the
//! service for everything; `serve` mounts it beside the dashboard.

mod batches;
// Issue 13.
mod dkim;
mod inbound;
mod openapi;
// The suppression list and unsubscribe links (issue 12).
mod suppressions;
mod templates;
// Issue 12.
mod webhooks;

pub use self::suppressions::suppression_json;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, Request, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    app::{ApiError, AppState, client_key, prometheus, token_hash, too_many_failures},
    service::{check_search_text, format_rfc3339, parse_rfc3339},
    store::{
        Accepted, CancelOutcome, MessageStatus, MessageView, RecipientKind, RecipientStatus,
        SearchQuery,
    },
};

/// The API's routes (`serve` adds the layers every request passes, and the fallback).
pub fn router(state: AppState) -> Router<AppState> {
    // Install the metrics recorder before anything is counted.
    prometheus();
    let v1 = Router::new()
        .route("/messages", post(post_message).get(list_messages))
        .route("/messages/{id}", get(get_message))
        .route("/messages/{id}/raw", get(get_raw))
        .route("/messages/{id}/cancel", post(cancel_message))
        .route("/batches", post(batches::post_batch))
        .route("/templates", get(templates::list_templates))
        .route(
            "/templates/{name}",
            put(templates::put_template)
                .get(templates::get_template)
                .delete(templates::delete_template),
        )
        .route(
            "/templates/{name}/preview",
            post(templates::preview_template),
        )
        // Issue 13: DKIM keys.
        .route("/dkim", get(dkim::list_keys).post(dkim::generate_key))
        .route("/dkim/{domain}/rotate", post(dkim::rotate_key))
        .route("/dkim/{domain}/{selector}", delete(dkim::delete_key))
        // Issue 12: the suppression list.
        .route(
            "/suppressions",
            get(suppressions::list).post(suppressions::add),
        )
        .route("/suppressions/import", post(suppressions::import))
        .route("/suppressions/export", get(suppressions::export))
        .route(
            "/suppressions/{address}",
            get(suppressions::get_one).delete(suppressions::delete_one),
        )
        // Issue 12: received mail that could not be read or matched.
        .route("/inbound", get(inbound::list))
        .route("/inbound/{id}", get(inbound::get_one))
        .route("/inbound/{id}/raw", get(inbound::raw))
        // Issue 12: webhook endpoints.
        .route("/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/webhooks/{id}",
            get(webhooks::get_one)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route(
            "/webhooks/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route("/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route(
            "/webhooks/{id}/deliveries/{delivery}/retry",
            post(webhooks::retry),
        )
        .route_layer(middleware::from_fn_with_state(state, require_token));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        // One-click unsubscribe (issue 12): outside /v1, no bearer token; the signed token authorizes.
        .route(
            "/u/{token}",
            get(suppressions::unsubscribe_page).post(suppressions::unsubscribe_post),
        )
}

/// Bearer authentication on `/v1/*`. A request passes with `HERALD_API_TOKEN` or with any token made by
/// `herald token create` (stored as its SHA-256 only). Authentication is required as soon as either exists:
/// `HERALD_API_TOKEN` is set, or the store holds at least one token. With neither, the API is open, which
/// `herald serve` allows on a loopback address only. Tokens are compared by hash, so the comparison time says
/// nothing about the secret, and no token is ever logged or echoed. A client that presented
/// [`crate::app::MAX_TOKEN_FAILURES`] wrong tokens within [`crate::app::FAILURE_WINDOW`] gets `429` with
/// `Retry-After` on every token until then, right or wrong, so that a guess cannot be confirmed during the
/// pause.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(token_hash);
    let client = client_key(request.extensions());
    if presented.is_some()
        && let Some(wait) = state.bearer_failures.refused_for(client)
    {
        return too_many_failures(wait);
    }
    if let Some(hash) = &presented {
        if state.token_hashes.contains(hash) {
            return next.run(request).await;
        }
        match state.is_stored_token(hash).await {
            Ok(true) => return next.run(request).await,
            Ok(false) => {}
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    let required = !state.token_hashes.is_empty()
        || match state.any_stored_token().await {
            Ok(any) => any,
            Err(e) => return ApiError::from(e).into_response(),
        };
    if !required {
        return next.run(request).await;
    }
    match presented {
        Some(_) => {
            state.bearer_failures.record(client);
            tracing::info!(%client, "API request refused: the bearer token is not valid");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the bearer token is not valid",
            )
            .into_response()
        }
        None => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the API token as `Authorization: Bearer <token>`",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The `Idempotency-Key` header, if any.
fn idempotency_header(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::invalid("Idempotency-Key", "the header must be visible ASCII")
            })
        })
        .transpose()
}

fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if timed_out(&rejection) {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive within HERALD_HTTP_BODY_TIMEOUT",
            )
        } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is over the size limit",
            )
        } else {
            ApiError::new(rejection.status(), "bad_body", rejection.body_text())
        }
    })
}

/// Whether reading the body failed because the client was slower than `HERALD_HTTP_BODY_TIMEOUT`.
fn timed_out(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

async fn post_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body)?;
    let key = idempotency_header(&headers)?;
    let accepted = state.service.submit(&body, key).await?;
    let (status, replay) = match &accepted {
        Accepted::New { .. } => (StatusCode::ACCEPTED, false),
        Accepted::Existing { .. } => (StatusCode::ACCEPTED, true),
    };
    // Issue 12: which recipients were on the suppression list (a replay reads them from the message).
    let suppressed: Vec<String> = match &accepted {
        Accepted::New { suppressed, .. } => suppressed.clone(),
        Accepted::Existing { id, .. } => state
            .service
            .message(id)
            .await?
            .map(|view| {
                view.recipients
                    .into_iter()
                    .filter(|r| r.status == RecipientStatus::Suppressed)
                    .map(|r| r.address)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut response = (
        status,
        Json(json!({
            "id": accepted.id(),
            "status": accepted.status().as_str(),
            "suppressed": suppressed,
        })),
    )
        .into_response();
    if replay {
        // Tells a retrying client that this answer is the original one (as Stripe's API does).
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn view_json(view: MessageView) -> Value {
    let to: Vec<&str> = view
        .recipients
        .iter()
        .filter(|r| r.kind != RecipientKind::Bcc)
        .map(|r| r.address.as_str())
        .collect();
    json!({
        "id": view.id,
        "status": view.status,
        "created_at": format_rfc3339(view.created_at),
        "send_at": view.send_at.map(format_rfc3339),
        "from": view.from,
        "to": to,
        "subject": view.subject,
        "attempts": view.attempts,
        "batch_id": view.batch_id,
        "tags": view.tags,
        "metadata": view.metadata,
        "size": view.raw_size,
        "source": view.source,
        // Issue 12: the recipients found on the suppression list at accept (never sent to).
        "suppressed": view
            .recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Suppressed)
            .map(|r| r.address.as_str())
            .collect::<Vec<_>>(),
        "recipients": view.recipients.iter().map(|r| json!({
            "address": r.address,
            "kind": r.kind,
            "status": r.status,
            "smtp_code": r.smtp_code,
            "enhanced_status": r.enhanced_status,
            "smtp_reply": r.smtp_reply,
        })).collect::<Vec<_>>(),
        "events": view.events.iter().map(|e| json!({
            "at": format_rfc3339(e.at),
            "type": e.kind,
            "recipient": e.recipient,
            "detail": e.detail,
        })).collect::<Vec<_>>(),
    })
}

async fn get_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.service.message(&id).await? {
        Some(view) => Ok(Json(view_json(view))),
        None => Err(ApiError::not_found(&id)),
    }
}

async fn get_raw(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.service.raw(&id).await? {
        Some(bytes) => Ok(([(header::CONTENT_TYPE, "message/rfc822")], bytes).into_response()),
        None if state.service.message(&id).await?.is_some() => Err(ApiError::new(
            StatusCode::GONE,
            "pruned",
            "the raw body of this message was removed by the retention policy (HERALD_RETENTION)",
        )),
        None => Err(ApiError::not_found(&id)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    to: Option<String>,
    q: Option<String>,
    tag: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_messages(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    for (field, value) in [("q", &params.q), ("to", &params.to), ("tag", &params.tag)] {
        check_search_text(value.as_deref()).map_err(|message| ApiError {
            status: StatusCode::BAD_REQUEST,
            ..ApiError::invalid(field, message)
        })?;
    }
    let status = params
        .status
        .as_deref()
        .map(str::parse::<MessageStatus>)
        .transpose()
        .map_err(|e| ApiError::invalid("status", e))?;
    let time = |field: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(parse_rfc3339)
            .transpose()
            .map_err(|e| ApiError::invalid(field, e))
    };
    let limit = page_limit(params.limit.as_deref(), 50, 1000)?;
    let query = SearchQuery {
        status,
        to: params.to,
        text: params.q,
        tag: params.tag,
        since: time("since", &params.since)?,
        until: time("until", &params.until)?,
        limit,
        cursor: params.cursor,
    };
    let page = state.service.search(&query).await?;
    Ok(Json(json!({
        "items": page.items.iter().map(|m| json!({
            "id": m.id,
            "status": m.status,
            "created_at": format_rfc3339(m.created_at),
            "from": m.from,
            "subject": m.subject,
            "attempts": m.attempts,
            "to": m.to,
            "recipient_count": m.recipient_count,
        })).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    })))
}

async fn cancel_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.service.cancel(&id).await? {
        CancelOutcome::Cancelled => Ok(Json(json!({"id": id, "status": "cancelled"}))),
        CancelOutcome::NotCancellable(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!(
                "message {id} is {status}: only scheduled, queued or deferred messages can be cancelled"
            ),
        )),
        CancelOutcome::NotFound => Err(ApiError::not_found(&id)),
    }
}

async fn ready(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.service.ping().await?;
    Ok("ready")
}

/// `GET /metrics`: open, or with `HERALD_METRICS_TOKEN` only for that bearer token (compared by hash).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(expected) = &state.metrics_token_hash {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(token_hash);
        if presented.as_ref() != Some(expected) {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send HERALD_METRICS_TOKEN as `Authorization: Bearer <token>`",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(response);
        }
    }
    let counts = state.service.counts().await?;
    let mut text = prometheus().render();
    text.push_str(
        "# HELP herald_messages Messages in the store by status.\n# TYPE herald_messages gauge\n",
    );
    for status in MessageStatus::ALL {
        let n = counts.get(status).copied().unwrap_or(0);
        text.push_str(&format!("herald_messages{{status=\"{status}\"}} {n}\n"));
    }
    let lag = state.service.search_index_lag();
    text.push_str(&format!(
        "# HELP herald_search_index_pending Messages stored and not yet searchable (full-text index behind).\n\
         # TYPE herald_search_index_pending gauge\nherald_search_index_pending {}\n\
         # HELP herald_search_index_lag_seconds How long the oldest message not yet searchable has waited.\n\
         # TYPE herald_search_index_lag_seconds gauge\nherald_search_index_lag_seconds {:.3}\n",
        lag.pending,
        lag.oldest.as_secs_f64()
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// A list route's `limit` query parameter: `default` when absent, otherwise a whole number from 1 to `max`.
pub(crate) fn page_limit(text: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    match text {
        None => Ok(default),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                "limit",
                format!("must be a whole number from 1 to {max}"),
            )),
        },
    }
}
