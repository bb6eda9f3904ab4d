//! The HTTP API: axum routes, bearer authentication, errors as JSON naming the field.

mod batches;
// Issue 13.
mod dkim;
mod error;
mod guard;
mod openapi;
mod templates;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, Request, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
pub use error::ApiError;
pub use guard::AllowedHosts;
pub(crate) use guard::{FailureThrottle, client_key, too_many_failures};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    dashboard,
    delivery::RelayBoard,
    service::{Service, SubmitError, format_rfc3339, join, parse_rfc3339},
    store::{Accepted, CancelOutcome, MessageStatus, MessageView, SearchQuery, StoreError},
};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub service: Service,
    /// SHA-256 of `HERALD_API_TOKEN`, when set.
    pub token_hashes: Arc<Vec<[u8; 32]>>,
    /// What the store said about tokens created with `herald token create`, for a moment.
    stored_tokens: Arc<StoredTokens>,
    /// Each relay's state, kept by the delivery engine, for the dashboard.
    pub relays: RelayBoard,
    /// No relay is configured: delivered mail is in the built-in capture inbox.
    pub capture_inbox: bool,
    /// Turns true when the server stops, so that live streams end and let it.
    pub stopping: Option<tokio::sync::watch::Receiver<bool>>,
    /// The `Host` values accepted in the open mode (empty: not checked, e.g. a router without a listener).
    pub hosts: Arc<AllowedHosts>,
    /// SHA-256 of `HERALD_METRICS_TOKEN`: then `/metrics` needs it as a bearer token.
    pub metrics_token_hash: Option<[u8; 32]>,
    /// Wrong bearer tokens on `/v1`, per client.
    pub(crate) bearer_failures: Arc<FailureThrottle>,
    /// Wrong tokens at the dashboard's sign-in, per client.
    pub(crate) sign_in_failures: Arc<FailureThrottle>,
}

/// Wrong tokens a client may present in [`FAILURE_WINDOW`] (at `/v1` and at sign-in, counted apart) before
/// it is refused with `429` until the oldest is that old: guessing a token is slow whatever its strength, and
/// one client's guessing never locks out another.
pub const MAX_TOKEN_FAILURES: usize = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// SHA-256 of a token, the form in which tokens are kept and compared.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// How long the API trusts what it learnt from the store about tokens. A token revoked with `herald token
/// revoke` stops working within this time on every node, and the first token created on a server that had
/// none closes the API within it; in exchange, an authenticated request costs no store read.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(2);

#[derive(Default)]
struct StoredTokens {
    /// Hashes found in the store, with when.
    valid: Mutex<HashMap<[u8; 32], Instant>>,
    /// Whether the store holds any token, with when that was asked.
    any: Mutex<Option<(bool, Instant)>>,
}

impl AppState {
    pub fn new(service: Service, api_token: Option<&str>) -> Self {
        let token_hashes = api_token
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .into_iter()
            .collect();
        Self {
            service,
            token_hashes: Arc::new(token_hashes),
            stored_tokens: Arc::default(),
            relays: RelayBoard::default(),
            capture_inbox: false,
            stopping: None,
            hosts: Arc::default(),
            metrics_token_hash: None,
            bearer_failures: Arc::new(FailureThrottle::new(MAX_TOKEN_FAILURES, FAILURE_WINDOW)),
            sign_in_failures: Arc::new(FailureThrottle::new(MAX_TOKEN_FAILURES, FAILURE_WINDOW)),
        }
    }

    /// Whether `hash` is the hash of a token in the store (`herald token create`).
    pub(crate) async fn is_stored_token(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let fresh = |at: &Instant| at.elapsed() < TOKEN_CACHE_TTL;
        if self
            .stored_tokens
            .valid
            .lock()
            .expect("not poisoned")
            .get(hash)
            .is_some_and(fresh)
        {
            return Ok(true);
        }
        // Unknown hashes are not remembered: the map holds real tokens only, so it cannot be grown by guessing.
        let found = self.service.store.token_hash_exists(hash).await?;
        let mut valid = self.stored_tokens.valid.lock().expect("not poisoned");
        valid.retain(|_, at| fresh(at));
        if found {
            valid.insert(*hash, Instant::now());
        }
        Ok(found)
    }

    /// Whether the store holds any token: then the API requires one even without `HERALD_API_TOKEN`.
    pub(crate) async fn any_stored_token(&self) -> Result<bool, StoreError> {
        if let Some((any, at)) = *self.stored_tokens.any.lock().expect("not poisoned")
            && at.elapsed() < TOKEN_CACHE_TTL
        {
            return Ok(any);
        }
        let any = !self.service.store.tokens().await?.is_empty();
        *self.stored_tokens.any.lock().expect("not poisoned") = Some((any, Instant::now()));
        Ok(any)
    }
}

/// The whole HTTP surface of `herald serve`.
pub fn router(state: AppState, body_limit: usize) -> Router {
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
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .nest("/v1", v1)
        .merge(dashboard::router(state.clone()))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::open_mode_guard,
        ))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// The process-wide Prometheus recorder (installed once; every server in the process shares it).
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(
                    "herald_http_request_duration_seconds".into(),
                ),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test binary, an embedding application): then the
        // metrics go there and this handle renders what it has.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Counts every request by route pattern (never the raw path: ids would make unbounded label values),
/// method and status, and times it. Every label has a bounded set of values: a method that is not a standard
/// one is counted as `other`, or each junk method a client invents would add series to `/metrics` forever.
async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let start = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("herald_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("herald_http_request_duration_seconds", "route" => route, "method" => method)
        .record(start.elapsed().as_secs_f64());
    response
}

/// The `method` label of a request: one of the standard methods, or `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Bearer authentication on `/v1/*`. A request passes with `HERALD_API_TOKEN` or with any token made by
/// `herald token create` (stored as its SHA-256 only). Authentication is required as soon as either exists:
/// `HERALD_API_TOKEN` is set, or the store holds at least one token. With neither, the API is open, which
/// `herald serve` allows on a loopback address only. Tokens are compared by hash, so the comparison time says
/// nothing about the secret, and no token is ever logged or echoed. A client that presented
/// [`MAX_TOKEN_FAILURES`] wrong tokens within [`FAILURE_WINDOW`] gets `429` with `Retry-After` on every
/// token until then, right or wrong, so that a guess cannot be confirmed during the pause.
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

/// Refuses control characters (NUL included) in a search value: no stored text contains them, and the
/// database would reject them as an error of its own rather than the caller's.
pub(crate) fn check_search_text(value: Option<&str>) -> Result<(), String> {
    match value.and_then(|v| v.chars().find(|c| c.is_control())) {
        Some(c) => Err(format!("control character {c:?} not allowed")),
        None => Ok(()),
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Invalid(e) => ApiError::invalid(&e.field, e.message),
            SubmitError::Template { field, error } => ApiError::template(&field, &error),
            SubmitError::UnknownTemplate(name) => ApiError {
                code: "unknown_template",
                ..ApiError::invalid(
                    "template",
                    format!("no template named {name:?} (store it with PUT /v1/templates/{name})"),
                )
            },
            SubmitError::OverBudget { limit } => {
                let mut error = ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_budget",
                    SubmitError::OverBudget { limit }.to_string(),
                );
                error.details.insert("limit".into(), limit.into());
                error
            }
            SubmitError::Busy(e) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "renderer_busy",
                e.to_string(),
            ),
            SubmitError::Store(e) => e.into(),
            // Issue 13: a stored key that cannot sign is the operator's problem, not the client's.
            SubmitError::Signing(e) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "dkim_signing",
                e.to_string(),
            ),
        }
    }
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
    let mut response = (
        status,
        Json(json!({"id": accepted.id(), "status": accepted.status().as_str()})),
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
        .filter(|r| r.kind != "bcc")
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
    match state.service.store.message(&id).await? {
        Some(view) => Ok(Json(view_json(view))),
        None => Err(ApiError::not_found(&id)),
    }
}

async fn get_raw(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.service.store.raw(&id).await? {
        Some(segments) => {
            Ok(([(header::CONTENT_TYPE, "message/rfc822")], join(&segments)).into_response())
        }
        None if state.service.store.message(&id).await?.is_some() => Err(ApiError::new(
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
    let limit = match params.limit.as_deref() {
        None => 50,
        Some(text) => match text.parse::<u32>() {
            Ok(n @ 1..=1000) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    "must be a whole number from 1 to 1000",
                ));
            }
        },
    };
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
    let page = state.service.store.search(&query).await?;
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
    match state.service.store.cancel(&id).await? {
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
    state.service.store.ping().await?;
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
    let counts = state.service.store.counts().await?;
    let mut text = prometheus().render();
    text.push_str(
        "# HELP herald_messages Messages in the store by status.\n# TYPE herald_messages gauge\n",
    );
    for status in MessageStatus::ALL {
        let n = counts.get(status).copied().unwrap_or(0);
        text.push_str(&format!("herald_messages{{status=\"{status}\"}} {n}\n"));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::InvalidQuery(message) => ApiError::invalid("cursor", message),
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store could not complete the request; retry later",
                )
            }
        }
    }
}
