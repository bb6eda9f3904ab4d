//! One error shape for every JSON answer, the API's and the dashboard's scripts' alike:
//! `{"error": {"code", "message", "field"}}`, with how the service's and the store's errors map onto it.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};

use crate::{service::SubmitError, store::StoreError, templates::TemplateError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// More members of the error object (a template error's `template`, `part`, `line`, `column`); boxed so
    /// that `Result<_, ApiError>` stays small on the common path.
    pub details: Box<Map<String, Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            details: Box::default(),
        }
    }

    /// 422 for a field whose value is wrong; 400 when the request as a whole is unreadable (no field).
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        if field.is_empty() {
            Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
        } else {
            Self {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_field",
                message: message.into(),
                field: Some(field.to_owned()),
                details: Box::default(),
            }
        }
    }

    pub fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no message with id {id:?}"),
        )
    }

    /// 422 for a template that cannot be stored or rendered, saying where it went wrong: besides `code`,
    /// `message` and `field` (`data`, `recipients[17].data`, or the part for a syntax error), the error
    /// object has `template`, `part`, `line` and `column` (1-based) whenever they are known.
    pub fn template(field: &str, error: &TemplateError) -> Self {
        let mut details = Map::new();
        if let Some(template) = error.template() {
            details.insert("template".into(), json!(template));
        }
        if let Some(location) = error.location() {
            details.insert("line".into(), json!(location.line));
            details.insert("column".into(), json!(location.column));
        }
        if let Some(part) = error.part() {
            details.insert("part".into(), json!(part.as_str()));
        }
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: error.code(),
            message: error.to_string(),
            field: Some(field.to_owned()),
            details: Box::new(details),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = *self.details;
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        error.insert("field".into(), json!(self.field));
        (self.status, Json(json!({ "error": error }))).into_response()
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

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::InvalidQuery(message) => ApiError::invalid("cursor", message),
            other => {
                tracing::error!(error = &other as &dyn std::error::Error, "store error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store could not complete the request; retry later",
                )
            }
        }
    }
}
