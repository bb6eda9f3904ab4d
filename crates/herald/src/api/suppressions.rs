//! The suppression list over HTTP (issue 12): `/v1/suppressions` (list with cursor paging and search, add,
//! read and remove one address, CSV import and export), and the one-click unsubscribe links `/u/{token}`
//! (RFC 8058: a POST unsubscribes with no login and no CSRF token, the signed token being the authority; a
//! GET only shows a confirmation page, because link scanners fetch every URL in a message).

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body_or_error;
use crate::{
    app::{ApiError, AppState},
    service::{SuppressionError, Unsubscribed, format_rfc3339, parse_rfc3339},
    store::{NewSuppression, Suppression, SuppressionQuery, SuppressionReason},
};

pub mod csv;

impl From<SuppressionError> for ApiError {
    fn from(error: SuppressionError) -> Self {
        match error {
            SuppressionError::Invalid(e) => ApiError::invalid(&e.field, e.message),
            SuppressionError::Token(e) => {
                ApiError::new(StatusCode::NOT_FOUND, "invalid_link", e.to_string())
            }
            SuppressionError::UnknownMessage => ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_link",
                SuppressionError::UnknownMessage.to_string(),
            ),
            SuppressionError::Store(e) => e.into(),
        }
    }
}

/// An entry as the API shows it (and as `POST` takes it back).
pub fn suppression_json(s: &Suppression) -> Value {
    json!({
        "address": s.address,
        "scope": s.scope,
        "reason": s.reason,
        "source_message": s.source_message,
        "created_at": format_rfc3339(s.created_at),
        "expires_at": s.expires_at.map(format_rfc3339),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    q: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let limit = super::page_limit(params.limit.as_deref(), 100, 1000)?;
    if params.q.as_deref().is_some_and(|q| q.len() > 254) {
        return Err(ApiError::invalid("q", "longer than 254 characters"));
    }
    let page = state
        .service
        .suppressions(&SuppressionQuery {
            contains: params.q.filter(|q| !q.trim().is_empty()),
            limit,
            cursor: params.cursor,
        })
        .await?;
    Ok(Json(json!({
        "items": page.items.iter().map(suppression_json).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    })))
}

/// Reads one entry of a request (`POST`'s body, a CSV line): `address`, and optional `scope`, `reason`
/// (default `manual`), `expires_at` (RFC 3339), `source_message`. `field` prefixes the names in errors.
pub fn entry_from(
    address: Option<&str>,
    scope: Option<&str>,
    reason: Option<&str>,
    expires_at: Option<&str>,
    source_message: Option<&str>,
    field: &dyn Fn(&str) -> String,
) -> Result<NewSuppression, ApiError> {
    let address = address
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::invalid(&field("address"), "missing"))?;
    crate::service::check_address(address, &field("address")).map_err(ApiError::from)?;
    let scope = scope.map(str::trim).filter(|s| !s.is_empty());
    if let Some(scope) = scope {
        crate::service::check_scope(scope, &field("scope")).map_err(ApiError::from)?;
    }
    let reason = match reason.map(str::trim).filter(|r| !r.is_empty()) {
        None => SuppressionReason::Manual,
        Some(text) => text
            .parse()
            .map_err(|e: String| ApiError::invalid(&field("reason"), e))?,
    };
    let expires_at = expires_at
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(parse_rfc3339)
        .transpose()
        .map_err(|e| ApiError::invalid(&field("expires_at"), e))?;
    let source_message = source_message
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.len() > 64 || s.chars().any(|c| !c.is_ascii_alphanumeric() && c != '-') {
                Err(ApiError::invalid(
                    &field("source_message"),
                    "must be a message id",
                ))
            } else {
                Ok(s.to_owned())
            }
        })
        .transpose()?;
    Ok(NewSuppression {
        address: address.to_owned(),
        scope: scope.map(str::to_owned),
        reason,
        source_message,
        expires_at,
    })
}

pub async fn add(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body)?;
    let object: serde_json::Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(ApiError::invalid(
                "",
                "the request body must be a JSON object",
            ));
        }
        Err(e) => return Err(ApiError::invalid("", format!("invalid JSON: {e}"))),
    };
    let text = |name: &str| -> Result<Option<&str>, ApiError> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(name, "must be a string")),
        }
    };
    if let Some(unknown) = object.keys().find(|k| {
        !matches!(
            k.as_str(),
            "address" | "scope" | "reason" | "expires_at" | "source_message"
        )
    }) {
        return Err(ApiError::invalid(
            unknown,
            "unknown field (address, scope, reason, expires_at, source_message)",
        ));
    }
    let entry = entry_from(
        text("address")?,
        text("scope")?,
        text("reason")?,
        text("expires_at")?,
        text("source_message")?,
        &|name| name.to_owned(),
    )?;
    state
        .service
        .suppress(
            &entry.address,
            entry.scope.as_deref(),
            entry.reason,
            entry.source_message.as_deref(),
            entry.expires_at,
        )
        .await?;
    let stored = state.service.suppressions_of(&entry.address).await?;
    let scope = entry.scope.as_deref();
    let created = stored
        .iter()
        .find(|s| s.scope.as_deref() == scope)
        .map(suppression_json)
        .unwrap_or(Value::Null);
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(address): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entries = state.service.suppressions_of(&address).await?;
    if entries.is_empty() {
        return Err(not_suppressed(&address));
    }
    Ok(Json(json!({
        "items": entries.iter().map(suppression_json).collect::<Vec<_>>(),
    })))
}

fn not_suppressed(address: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{address:?} is not on the suppression list"),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    scope: Option<String>,
}

/// `DELETE /v1/suppressions/{address}`: every entry of the address; `?scope=news` only that one, `?scope=`
/// only the unscoped one.
pub async fn delete_one(
    State(state): State<AppState>,
    Path(address): Path<String>,
    params: Result<Query<DeleteParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let deleted = state
        .service
        .delete_suppression(&address, params.scope.as_deref())
        .await?;
    if deleted == 0 {
        return Err(not_suppressed(&address));
    }
    Ok(Json(json!({"deleted": deleted})))
}

/// `POST /v1/suppressions/import`: a CSV body (see [`csv`]); every line is checked before any is stored.
pub async fn import(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body_or_error(body)?;
    let entries = csv::read(&body)?;
    let imported = state.service.suppress_many(entries).await?;
    Ok(Json(json!({"imported": imported})))
}

/// `GET /v1/suppressions/export`: the whole list as CSV, read a page at a time.
pub async fn export(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut out = String::from(csv::HEADER);
    out.push_str("\r\n");
    let mut cursor = None;
    loop {
        let page = state
            .service
            .suppressions(&SuppressionQuery {
                contains: None,
                limit: 1_000,
                cursor,
            })
            .await?;
        for entry in &page.items {
            csv::write_line(&mut out, entry);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"suppressions.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}

/// `POST /u/{token}`: one-click unsubscribe (RFC 8058 §3.2). The mail client posts
/// `List-Unsubscribe=One-Click`; Herald's own confirmation page posts the same with `from=page`, and only
/// then gets a page back. Otherwise the answer is a bare `200`.
pub async fn unsubscribe_post(
    State(state): State<AppState>,
    Path(token): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let from_page = body
        .ok()
        .is_some_and(|b| b.windows(9).any(|w| w == b"from=page"));
    match state.service.unsubscribe(&token).await {
        Ok(done) if from_page => Html(page(&unsubscribed_text(&done), None)).into_response(),
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => link_error(e),
    }
}

/// `GET /u/{token}`: a page that names what would be unsubscribed and offers the button. Never acts.
pub async fn unsubscribe_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    match state.service.unsubscribe_preview(&token).await {
        Ok(target) => {
            let what = match &target.list {
                Some(list) => format!(
                    "Stop mail of the list “{}” to {}?",
                    escape(list),
                    escape(&target.address)
                ),
                None => format!("Stop this mail to {}?", escape(&target.address)),
            };
            Html(page(&what, Some(&token))).into_response()
        }
        Err(e) => link_error(e),
    }
}

fn unsubscribed_text(done: &Unsubscribed) -> String {
    match &done.list {
        Some(list) => format!(
            "{} is unsubscribed from “{}”.",
            escape(&done.address),
            escape(list)
        ),
        None => format!("{} is unsubscribed.", escape(&done.address)),
    }
}

fn link_error(error: SuppressionError) -> Response {
    match error {
        SuppressionError::Store(e) => ApiError::from(e).into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            Html(page("This unsubscribe link is not valid.", None)),
        )
            .into_response(),
    }
}

/// The small page of `/u/{token}`: no script, no outside resource, the button a plain form POST.
fn page(text: &str, token: Option<&str>) -> String {
    let form = token.map_or_else(String::new, |token| {
        format!(
            "<form method=\"post\" action=\"/u/{}\"><input type=\"hidden\" name=\"List-Unsubscribe\" \
             value=\"One-Click\"><input type=\"hidden\" name=\"from\" value=\"page\">\
             <button type=\"submit\">Unsubscribe</button></form>",
            escape(token)
        )
    });
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><meta name=\"robots\" content=\"noindex\"><title>Unsubscribe</title>\
         <style>body{{font:16px system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}\
         button{{font:inherit;padding:.5rem 1.25rem}}</style></head><body><p>{text}</p>{form}</body></html>"
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
