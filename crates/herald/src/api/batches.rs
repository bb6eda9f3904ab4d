//! `POST /v1/batches`: one personalized message per recipient from one template, accepted in one commit.

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{body_or_error, idempotency_header};
use crate::app::{ApiError, AppState};

pub async fn post_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body)?;
    let key = idempotency_header(&headers)?;
    let accepted = state.service.submit_batch(&body, key).await?;
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({
            "batch_id": accepted.batch_id,
            "status": accepted.status.as_str(),
            "ids": accepted.ids,
            // Issue 12: recipients on the suppression list, by message (a replay lists none).
            "suppressed": accepted.suppressed.iter().map(|(id, address)| json!({"id": id, "address": address})).collect::<Vec<_>>(),
        })),
    )
        .into_response();
    if accepted.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}
