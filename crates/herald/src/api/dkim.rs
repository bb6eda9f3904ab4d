//! `/v1/dkim` (issue 13): the DKIM keys, with the DNS records to publish; generate, rotate and remove.
//!
//! Only public halves leave: the private key is never in an answer. A change made here is used by this node
//! for the next message, and by the other nodes within `dkim::KEY_RING_TTL`.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body_or_error;
use crate::{
    app::{ApiError, AppState},
    dkim::{
        Algorithm, DkimError,
        manage::{self, ManageError},
    },
};

/// The body of `POST /v1/dkim` and `POST /v1/dkim/{domain}/rotate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    /// Only in `POST /v1/dkim`.
    #[serde(default)]
    domain: Option<String>,
    selector: String,
    #[serde(default)]
    algorithm: Option<String>,
}

impl From<ManageError> for ApiError {
    fn from(error: ManageError) -> Self {
        match error {
            ManageError::Invalid(DkimError::Invalid { field, message }) => {
                ApiError::invalid(field, message)
            }
            e @ (ManageError::Exists { .. } | ManageError::HasActive { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            ManageError::Store(e) => e.into(),
            ManageError::Invalid(e) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "dkim", e.to_string())
            }
        }
    }
}

fn parse(body: Result<Bytes, BytesRejection>) -> Result<KeyRequest, ApiError> {
    let body = body_or_error(body)?;
    serde_json::from_slice(&body).map_err(|e| {
        let message = e.to_string();
        let field = ["domain", "selector", "algorithm"]
            .into_iter()
            .find(|f| message.contains(&format!("`{f}`")))
            .unwrap_or("");
        ApiError::invalid(field, format!("invalid key request: {message}"))
    })
}

fn algorithm(request: &KeyRequest) -> Result<Algorithm, ApiError> {
    match request.algorithm.as_deref() {
        None => Ok(Algorithm::Rsa),
        Some(text) => text.parse().map_err(|e: DkimError| match e {
            DkimError::Invalid { field, message } => ApiError::invalid(field, message),
            other => ApiError::invalid("algorithm", other.to_string()),
        }),
    }
}

/// `GET /v1/dkim`: every key, its state and its DNS record.
pub async fn list_keys(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let keys = state.service.dkim_keys().await?;
    let items: Vec<Value> = keys
        .iter()
        .map(|k| manage::key_json(k, manage::is_active(k, &keys)))
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn create(
    state: &AppState,
    domain: &str,
    request: &KeyRequest,
    rotate: bool,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let algorithm = algorithm(request)?;
    let key = state
        .service
        .generate_dkim_key(domain, &request.selector, algorithm, rotate)
        .await?;
    Ok((StatusCode::CREATED, Json(manage::key_json(&key, true))))
}

/// `POST /v1/dkim`: the first key of a domain.
pub async fn generate_key(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = parse(body)?;
    let Some(domain) = request.domain.clone() else {
        return Err(ApiError::invalid("domain", "missing: the signing domain"));
    };
    create(&state, &domain, &request, false).await
}

/// `POST /v1/dkim/{domain}/rotate`: a new key under a new selector takes over; the old ones are retired.
pub async fn rotate_key(
    State(state): State<AppState>,
    Path(domain): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = parse(body)?;
    if request.domain.as_deref().is_some_and(|d| d != domain) {
        return Err(ApiError::invalid(
            "domain",
            "differs from the domain in the path; leave it out",
        ));
    }
    create(&state, &domain, &request, true).await
}

/// `DELETE /v1/dkim/{domain}/{selector}`.
pub async fn delete_key(
    State(state): State<AppState>,
    Path((domain, selector)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    if state.service.remove_dkim_key(&domain, &selector).await? {
        Ok(Json(json!({ "deleted": true })))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{domain} has no key with selector {selector}"),
        ))
    }
}
