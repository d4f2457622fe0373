//! CORS for the collection API (`/v1/*`) only, so browser SDKs (analytics.js and the like)
//! can post events cross-origin to projects that allow their page's origin.
//!
//! A preflight carries no write key, so it cannot say which project it is for: it is
//! answered for an origin that some project allows. The actual request then carries the
//! key, and its answer allows the origin only if that project does; a request from an
//! origin the project does not list is refused (403), so a write key copied into another
//! site's pages does not work from browsers there. Requests without `Origin` (server SDKs)
//! are not affected. The query API (`/api/v1/...`) never gets CORS headers: it is for the
//! dashboard, which is served from the same origin.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use throughline_store::ProjectInfo;

use crate::AppState;

/// How long browsers may cache a preflight answer (Chromium caps it at 2 hours).
const PREFLIGHT_MAX_AGE_S: u32 = 600;
/// The longest `Access-Control-Request-Headers` echoed back.
const REQUEST_HEADERS_BYTES_MAX: usize = 1024;

/// The request's `Origin`, when it has a usable one.
pub fn origin(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| !o.is_empty() && *o != "null")
}

/// `OPTIONS /v1/*`: the preflight of a browser's cross-origin POST.
pub async fn preflight(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin(&headers) else {
        return resp;
    };
    let allowed = state
        .store
        .with_catalog(|c| c.projects.iter().any(|p| p.allows_origin(origin)));
    if !allowed {
        return resp;
    }
    allow(h, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    // The SDKs send Authorization, Content-Type, Content-Encoding and their own headers
    // (RudderStack's AnonymousId): echo what the browser asks for, when it is a header list.
    let asked = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| v.len() <= REQUEST_HEADERS_BYTES_MAX)
        .filter(|v| {
            v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(b))
        })
        .cloned()
        .unwrap_or(HeaderValue::from_static(
            "Authorization, Content-Type, Content-Encoding",
        ));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(PREFLIGHT_MAX_AGE_S),
    );
    resp
}

/// Adds the CORS headers of an actual request's answer when `project` allows `origin`.
pub fn decorate(resp: &mut Response, project: &ProjectInfo, origin: &str) {
    if project.allows_origin(origin) {
        allow(resp.headers_mut(), origin);
    }
}

fn allow(h: &mut HeaderMap, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        // So a browser SDK can read when to retry a 429 or 503.
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After"),
        );
    }
}
