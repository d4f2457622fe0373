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
    /// Seconds for `Retry-After` on 429 and 503 (1 unless said otherwise).
    pub retry_after_s: u64,
    /// More members of the JSON body (e.g. which rate limit was hit).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// The metrics label, when the status alone does not say it.
    pub reason: Option<&'static str>,
}

impl AppError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> AppError {
        AppError {
            status,
            error: error.into(),
            field: None,
            retry_after_s: 1,
            extra: serde_json::Map::new(),
            reason: None,
        }
    }

    /// 429 for a write key over one of its rate limits.
    pub fn rate_limited(project: &str, l: &crate::ratelimit::Limited) -> AppError {
        let mut e = AppError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "rate limit exceeded: project {project:?} may send {} {} (bursts of {}); retry after {} s",
                l.rate_per_second,
                l.limit.replace('_', " "),
                l.burst,
                l.retry_after_s
            ),
        );
        e.retry_after_s = l.retry_after_s;
        e.reason = Some(match l.limit {
            "requests_per_second" => "rate_limit_requests",
            _ => "rate_limit_events",
        });
        e.extra.insert("limit".into(), json!(l.limit));
        e.extra
            .insert("rate_per_second".into(), json!(l.rate_per_second));
        e.extra.insert("burst".into(), json!(l.burst));
        e.extra
            .insert("retry_after_s".into(), json!(l.retry_after_s));
        e
    }

    pub fn field(mut self, field: Option<&'static str>) -> AppError {
        self.field = field;
        self
    }

    /// The metrics label of this error.
    pub fn reason(&self) -> &'static str {
        if let Some(r) = self.reason {
            return r;
        }
        match self.status {
            StatusCode::REQUEST_TIMEOUT => "body_timeout",
            StatusCode::FORBIDDEN => "origin",
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
        for (k, v) in self.extra {
            body[k] = v;
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        // SDKs retry 429 and 5xx; tell them when.
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(self.retry_after_s),
            );
        }
        // A client too slow to send its body is not worth keeping the connection for.
        if self.status == StatusCode::REQUEST_TIMEOUT {
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}
