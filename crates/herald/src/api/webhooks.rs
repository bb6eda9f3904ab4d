//! `/v1/webhooks` (issue 12): endpoints, their recent deliveries, secret rotation, and "send again".
//!
//! The signing secret is in the answer of the create and the rotation only; every other answer leaves it out.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::body_or_error;
use crate::{
    app::{ApiError, AppState},
    events::{
        WebhookError,
        manage::{self, EndpointFields},
    },
};

/// Most deliveries one `GET …/deliveries` answers.
const MAX_DELIVERIES_PAGE: u32 = 200;

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        match error {
            WebhookError::Invalid { field, message } => ApiError::invalid(field, message),
            e @ (WebhookError::NotFound(_) | WebhookError::NoDelivery { .. }) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            WebhookError::Store(e) => e.into(),
            e @ (WebhookError::Sealed(_) | WebhookError::Secret(_)) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "webhook_secret",
                e.to_string(),
            ),
        }
    }
}

/// Reads a create or change body, each member checked for its type and named when wrong.
fn fields(body: Result<Bytes, BytesRejection>) -> Result<EndpointFields, ApiError> {
    let body = body_or_error(body)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("", format!("the body is not JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(ApiError::invalid("", "the body must be a JSON object"));
    };
    let mut fields = EndpointFields::default();
    for (key, value) in object {
        let wrong = |what: &str| ApiError::invalid(&key, format!("must be {what}"));
        match key.as_str() {
            "url" => fields.url = Some(value.as_str().ok_or_else(|| wrong("a string"))?.to_owned()),
            "description" => {
                fields.description =
                    Some(value.as_str().ok_or_else(|| wrong("a string"))?.to_owned());
            }
            "enabled" => {
                fields.enabled = Some(value.as_bool().ok_or_else(|| wrong("true or false"))?)
            }
            "events" => {
                let Value::Array(items) = value else {
                    return Err(wrong("an array of event types (empty: every type)"));
                };
                let mut events = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let Some(name) = item.as_str() else {
                        return Err(ApiError::invalid(
                            &format!("events[{i}]"),
                            "must be a string",
                        ));
                    };
                    events.push(name.to_owned());
                }
                fields.events = Some(events);
            }
            _ => {
                return Err(ApiError::invalid(
                    &key,
                    "unknown field (known: url, events, description, enabled)",
                ));
            }
        }
    }
    Ok(fields)
}

fn now(state: &AppState) -> crate::store::Millis {
    state.service.now()
}

fn with_secret(mut endpoint: Value, secret: String) -> Value {
    if let Some(object) = endpoint.as_object_mut() {
        object.insert("secret".into(), Value::String(secret));
    }
    endpoint
}

/// `GET /v1/webhooks`.
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let now = now(&state);
    let items: Vec<Value> = state
        .service
        .webhooks()
        .await?
        .iter()
        .map(|row| manage::endpoint_json(row, now))
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `POST /v1/webhooks`: 201 with the endpoint and its secret, shown this once.
pub async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let fields = fields(body)?;
    let (row, secret) = state.service.create_webhook(fields).await?;
    let endpoint = manage::endpoint_json(&row, now(&state));
    Ok((StatusCode::CREATED, Json(with_secret(endpoint, secret))))
}

/// `GET /v1/webhooks/{id}`.
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = state.service.webhook(&id).await?;
    Ok(Json(manage::endpoint_json(&row, now(&state))))
}

/// `PATCH /v1/webhooks/{id}`: the fields given change; `"enabled": true` also clears an automatic disable.
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let fields = fields(body)?;
    let row = state.service.update_webhook(&id, fields).await?;
    Ok(Json(manage::endpoint_json(&row, now(&state))))
}

/// `DELETE /v1/webhooks/{id}`: the endpoint and its deliveries.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.service.delete_webhook(&id).await?;
    Ok(Json(json!({ "deleted": true })))
}

/// `POST /v1/webhooks/{id}/rotate-secret`: a new secret (shown this once); the old one signs beside it for
/// 24 hours.
pub async fn rotate_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (row, secret) = state.service.rotate_webhook_secret(&id).await?;
    let endpoint = manage::endpoint_json(&row, now(&state));
    Ok(Json(with_secret(endpoint, secret)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesParams {
    limit: Option<String>,
}

/// `GET /v1/webhooks/{id}/deliveries?limit=N`: newest first.
pub async fn deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<DeliveriesParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let limit = super::page_limit(params.limit.as_deref(), 50, MAX_DELIVERIES_PAGE)?;
    let items: Vec<Value> = state
        .service
        .webhook_deliveries(&id, limit)
        .await?
        .iter()
        .map(manage::delivery_json)
        .collect();
    let mut answer = Map::new();
    answer.insert("items".into(), Value::Array(items));
    Ok(Json(Value::Object(answer)))
}

/// `POST /v1/webhooks/{id}/deliveries/{delivery}/retry`: "send again", now.
pub async fn retry(
    State(state): State<AppState>,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let delivery: i64 = delivery
        .parse()
        .map_err(|_| ApiError::invalid("delivery", "not a delivery id"))?;
    state.service.redeliver_webhook(&id, delivery).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "queued": true }))))
}
