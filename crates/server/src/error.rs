//! The one place where errors become HTTP statuses and JSON bodies.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use throughline_store::StoreError;

/// An HTTP error: a status and a `{"error": ..., "field": ...}` body.
#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub error: String,
    pub field: Option<&'static str>,
}

impl AppError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> AppError {
        AppError {
            status,
            error: error.into(),
            field: None,
        }
    }

    pub fn field(mut self, field: Option<&'static str>) -> AppError {
        self.field = field;
        self
    }

    /// The metrics label of this error.
    pub fn reason(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "auth",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => self.field.unwrap_or("invalid"),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> AppError {
        let status = if e.is_transient() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        AppError::new(status, e.to_string())
    }
}

impl From<throughline_clickhouse::ClickHouseError> for AppError {
    fn from(e: throughline_clickhouse::ClickHouseError) -> AppError {
        let status = if e.is_transient() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        AppError::new(status, e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.error});
        if let Some(f) = self.field {
            body["field"] = json!(f);
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        // SDKs retry 429 and 5xx; tell them when.
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}
