//! `/v1/templates`: store, read, list, delete and preview templates.

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
    service::{SubmitError, format_rfc3339},
    store::{StoredTemplate, TemplateSource},
    templates,
};

/// The body of `PUT /v1/templates/{name}`. What `GET` returns may be sent back as it is: `name` (if given,
/// it must be the one in the path) and `updated_at` are accepted and not stored from the body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // Accepted so a GET can be PUT back; the store sets the time.
    updated_at: Option<Value>,
    subject: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    html: Option<String>,
    /// `{"list": "newsletter"}` (issue 12): the messages made from this template get one-click unsubscribe
    /// for that list unless their request says otherwise; `null` or absent: none.
    #[serde(default)]
    unsubscribe: Option<Value>,
}

/// The body of `POST /v1/templates/{name}/preview`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    #[serde(default)]
    data: Option<Value>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    templates::check_name(name).map_err(|e| ApiError::invalid("name", e))
}

fn template_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no template named {name:?}"),
    )
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        // serde names the field in its message (`missing field `subject``, `unknown field `txt``).
        let message = e.to_string();
        let field = ["subject", "text", "html", "data", "unsubscribe"]
            .into_iter()
            .find(|f| message.contains(&format!("`{f}`")))
            .unwrap_or("");
        ApiError::invalid(field, format!("invalid template request: {message}"))
    })
}

/// A template's `unsubscribe`, as a message request writes it: `{"list": …}`, or `null`.
fn unsubscribe_json(stored: &StoredTemplate) -> Value {
    stored
        .unsubscribe_list
        .as_ref()
        .map_or(Value::Null, |list| json!({"list": list}))
}

fn template_json(stored: &StoredTemplate) -> Value {
    json!({
        "name": stored.source.name,
        "subject": stored.source.subject,
        "text": stored.source.text,
        "html": stored.source.html,
        "unsubscribe": unsubscribe_json(stored),
        "updated_at": format_rfc3339(stored.updated_at),
    })
}

/// `PUT /v1/templates/{name}`: compiles every part (a syntax error is a 422 naming part, line and column)
/// and makes a trial render on the render threads (a template whose output is too large, too deep or too
/// slow with any data is a 422 naming the part), then stores the template, replacing one of the same name.
pub async fn put_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    let body: TemplateBody = parse(&body_or_error(body)?)?;
    if body.name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::invalid(
            "name",
            format!(
                "the body names another template than the path ({name:?}); rename by PUT to the new name and DELETE the old one"
            ),
        ));
    }
    let unsubscribe = state.service.template_unsubscribe(body.unsubscribe)?;
    let source = TemplateSource {
        name: name.clone(),
        subject: body.subject,
        text: body.text,
        html: body.html,
    };
    match state
        .service
        .save_template(&source, unsubscribe.as_deref())
        .await
    {
        Ok(()) => {}
        Err(templates::LoadError::Template(e)) => {
            let field = e.part().map_or("text", |p| p.as_str());
            return Err(ApiError::template(field, &e));
        }
        Err(e) => return Err(SubmitError::from_load(e, "data").into()),
    }
    let stored = state
        .service
        .template(&name)
        .await?
        .ok_or_else(|| template_not_found(&name))?;
    Ok(Json(template_json(&stored)))
}

pub async fn get_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.service.template(&name).await? {
        Some(stored) => Ok(Json(template_json(&stored))),
        None => Err(template_not_found(&name)),
    }
}

/// `GET /v1/templates`: every template's name, subject, unsubscribe and time of change, by name (a short list: the
/// sources are fetched one at a time).
pub async fn list_templates(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = state.service.templates().await?;
    Ok(Json(json!({
        "items": all.iter().map(|t| json!({
            "name": t.source.name,
            "subject": t.source.subject,
            "has_text": t.source.text.is_some(),
            "has_html": t.source.html.is_some(),
            "unsubscribe": unsubscribe_json(t),
            "updated_at": format_rfc3339(t.updated_at),
        })).collect::<Vec<_>>(),
    })))
}

pub async fn delete_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.service.delete_template(&name).await? {
        Ok(Json(json!({"name": name, "deleted": true})))
    } else {
        Err(template_not_found(&name))
    }
}

/// `POST /v1/templates/{name}/preview`: exactly the subject, text and HTML a message made from this template
/// with this data would carry (CSS inlined, text made from the HTML when the template has none).
pub async fn preview_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    let body = body_or_error(body)?;
    let body: PreviewBody = if body.is_empty() {
        PreviewBody { data: None }
    } else {
        parse(&body)?
    };
    let data = match body.data {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(ApiError::invalid(
                "data",
                "must be an object of template variables",
            ));
        }
    };
    match state.service.render(&name, &data, "data").await {
        Ok(rendered) => Ok(Json(json!({
            "subject": rendered.subject,
            "text": rendered.text,
            "html": rendered.html,
        }))),
        Err(SubmitError::UnknownTemplate(name)) => Err(template_not_found(&name)),
        Err(e) => Err(e.into()),
    }
}
