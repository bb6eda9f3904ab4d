//! `/v1/inbound` (issue 12): mail received at the bounce domain that Herald could not read or match, kept
//! for a person to look at (never dropped): the list, one entry, and its bytes.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::format_rfc3339;
use crate::{
    app::{ApiError, AppState},
    store::InboundMail,
};

#[derive(Debug, Deserialize)]
pub struct InboundParams {
    limit: Option<String>,
    cursor: Option<String>,
}

fn summary(mail: &InboundMail) -> Value {
    json!({
        "id": mail.id,
        "received_at": format_rfc3339(mail.received_at),
        "peer": mail.peer,
        "mail_from": mail.mail_from,
        "rcpt_to": mail.rcpt_to,
        "reason": mail.reason,
        "detail": mail.detail,
        "message_id": mail.message_id,
        "size": mail.size,
    })
}

/// `GET /v1/inbound`: newest first, `limit` (1 to 1000, default 50) per page, `cursor` from `next_cursor`.
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<InboundParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let limit = super::page_limit(params.limit.as_deref(), 50, 1000)?;
    if let Some(cursor) = &params.cursor
        && uuid::Uuid::parse_str(cursor).is_err()
    {
        return Err(ApiError::invalid("cursor", "not a cursor from next_cursor"));
    }
    let page = state
        .service
        .store()
        .inbound(params.cursor.as_deref(), limit)
        .await?;
    Ok(Json(json!({
        "items": page.items.iter().map(summary).collect::<Vec<_>>(),
        "next_cursor": page.next,
    })))
}

async fn find(state: &AppState, id: &str) -> Result<InboundMail, ApiError> {
    state
        .service
        .store()
        .inbound_mail(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such inbound mail"))
}

/// `GET /v1/inbound/{id}`: one entry.
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(summary(&find(&state, &id).await?)))
}

/// `GET /v1/inbound/{id}/raw`: the bytes as received (up to `HERALD_BOUNCE_MAX_SIZE`), as `message/rfc822`
/// with `nosniff` and as an attachment, so a browser never renders what a stranger sent.
pub async fn raw(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mail = find(&state, &id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "message/rfc822"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"inbound.eml\"",
            ),
        ],
        mail.raw,
    )
        .into_response())
}
