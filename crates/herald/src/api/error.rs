//! One error shape for the whole API: `{"error": {"code", "message", "field"}}`.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        (self.status, Json(body)).into_response()
    }
}
