//! The Segment HTTP Tracking API: authenticate, bound, parse, store durably, answer.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::json;
use throughline_collect::{Batch, Rejection, BATCH_BYTES_MAX, MESSAGE_BYTES_MAX};
use throughline_model::EventType;
use throughline_store::{now_ms, AppendOutcome, ProjectInfo};

use crate::{cors, AppError, AppState};

/// Until the dashboard lands, `/` says what this server is and where to send events.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Which message type a path takes; `None` for a batch.
fn endpoint_kind(path: &str) -> Option<EventType> {
    match path.rsplit('/').next().unwrap_or_default() {
        "track" | "t" => Some(EventType::Track),
        "identify" | "i" => Some(EventType::Identify),
        "page" | "p" => Some(EventType::Page),
        "screen" | "s" => Some(EventType::Screen),
        "group" | "g" => Some(EventType::Group),
        "alias" | "a" => Some(EventType::Alias),
        _ => None,
    }
}

pub async fn collect(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut project = None;
    let result = match state.inflight.try_acquire() {
        Ok(_permit) => handle(&state, uri.path(), &headers, body, &mut project).await,
        Err(_) => Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight; retry later",
        )),
    };
    state
        .metrics
        .request_seconds
        .observe(started.elapsed().as_secs_f64());
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            state.metrics.reject(e.reason(), 1);
            e.into_response()
        }
    };
    if let (Some(p), Some(origin)) = (&project, cors::origin(&headers)) {
        cors::decorate(&mut resp, p, origin);
    }
    resp
}

/// Once a request's project is known: its page origin must be one the project allows (when
/// it lists any), and its write key must be within its request rate.
fn admit(
    state: &AppState,
    info: &ProjectInfo,
    headers: &HeaderMap,
    now: Instant,
) -> Result<(), AppError> {
    if let Some(origin) = cors::origin(headers) {
        if !info.cors_origins.is_empty() && !info.allows_origin(origin) {
            return Err(AppError::new(
                StatusCode::FORBIDDEN,
                format!("origin {origin} may not send events to this project (see `throughline projects set-cors`)"),
            )
            .field(Some("Origin")));
        }
    }
    state
        .rate_limits
        .request(&info.name, now)
        .map_err(|l| AppError::rate_limited(&info.name, &l))
}

async fn handle(
    state: &AppState,
    path: &str,
    headers: &HeaderMap,
    body: Body,
    resolved: &mut Option<ProjectInfo>,
) -> Result<Response, AppError> {
    // A Basic header is checked before reading the body, so unauthenticated or rate-limited
    // bodies cost nothing.
    let header_key = basic_user(headers);
    let project = match &header_key {
        Some(key) => {
            let (info, store) = state.store.by_write_key(key).ok_or_else(unknown_key)?;
            *resolved = Some(info.clone());
            admit(state, &info, headers, Instant::now())?;
            Some((info, store))
        }
        None => None,
    };
    let kind = endpoint_kind(path);
    let limit = if kind.is_some() {
        MESSAGE_BYTES_MAX
    } else {
        BATCH_BYTES_MAX
    };
    let too_large = || {
        AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body exceeds the limit of {} KB for {}",
                limit / 1024,
                if kind.is_some() {
                    "one message"
                } else {
                    "a batch"
                }
            ),
        )
    };
    // Compressed bodies are bounded before and after inflating: a small gzip bomb must not
    // expand past the same limit.
    let raw = to_bytes(body, limit).await.map_err(|_| too_large())?;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let inflated;
    let bytes: &[u8] = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                AppError::new(StatusCode::BAD_REQUEST, format!("invalid gzip body: {e}"))
            })?;
        if out.len() > limit {
            return Err(too_large());
        }
        inflated = out;
        &inflated
    } else {
        &raw
    };

    let received_at = now_ms();
    let batch = {
        let mut ids = state.id_generator();
        match kind {
            Some(k) => Batch::parse_single(bytes, k, received_at, &mut ids),
            None => Batch::parse(bytes, received_at, &mut ids),
        }
    }
    .map_err(|r| AppError::new(StatusCode::BAD_REQUEST, r.error).field(r.field))?;
    let (info, store) = match project {
        Some(p) => p,
        None => {
            let key = batch.write_key.as_deref().ok_or_else(|| {
                AppError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing write key: send it as the HTTP Basic user name or as `writeKey`",
                )
            })?;
            let (info, store) = state.store.by_write_key(key).ok_or_else(unknown_key)?;
            *resolved = Some(info.clone());
            admit(state, &info, headers, Instant::now())?;
            (info, store)
        }
    };

    let total = batch.messages.len();
    state
        .rate_limits
        .events(&info.name, total, Instant::now())
        .map_err(|l| AppError::rate_limited(&info.name, &l))?;
    // The log records are built here, on the request's thread, from the body's own bytes.
    // Stored records run about a fifth longer than the messages they come from.
    let mut events = store.new_batch(total, bytes.len() / 4 * 5);
    let mut rejected = Vec::new();
    for (index, m) in batch.messages.into_iter().enumerate() {
        let stored = m.and_then(|e| {
            events.push(&e).map_err(|err| Rejection {
                error: err.to_string(),
                field: None,
            })
        });
        if let Err(r) = stored {
            rejected.push((index, r));
        }
    }
    state.metrics.batch_messages.observe(total as f64);
    if kind.is_some() {
        if let Some((_, r)) = rejected.pop() {
            return Err(AppError::new(StatusCode::BAD_REQUEST, r.error).field(r.field));
        }
    }
    for (_, r) in &rejected {
        state.metrics.reject(r.field.unwrap_or("invalid"), 1);
    }
    // Rejections are rare: re-read the body once, only when there are some.
    let parsed_again: Option<serde_json::Value> = (!rejected.is_empty())
        .then(|| serde_json::from_slice(bytes).ok())
        .flatten();
    let rejected_json: Vec<_> = rejected
        .iter()
        .map(|(index, r)| {
            json!({"index": index, "messageId": message_id_at(parsed_again.as_ref(), *index),
                   "error": r.error, "field": r.field})
        })
        .collect();

    let outcome = if events.is_empty() {
        AppendOutcome::default()
    } else {
        submit(state, &store, events).await?
    };
    let m = &state.metrics;
    m.accepted
        .fetch_add(outcome.stored() as u64, Ordering::Relaxed);
    m.duplicates
        .fetch_add(outcome.duplicates() as u64, Ordering::Relaxed);
    let mut body = json!({
        "success": true,
        "accepted": outcome.stored(),
        "duplicates": outcome.duplicates(),
    });
    if !rejected_json.is_empty() {
        body["rejected"] = json!(rejected_json);
    }
    Ok((StatusCode::OK, Json(body)).into_response())
}

fn unknown_key() -> AppError {
    AppError::new(StatusCode::UNAUTHORIZED, "unknown write key")
}

/// The user name of an HTTP Basic header: where every Segment SDK puts the write key.
fn basic_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next().unwrap_or_default();
    (!user.is_empty()).then(|| user.to_string())
}

/// The messageId of a rejected batch message, for the client's report (best effort: the
/// message may be too broken to have one).
fn message_id_at(body: Option<&serde_json::Value>, index: usize) -> serde_json::Value {
    body.and_then(|v| v.get("batch"))
        .and_then(|b| b.get(index))
        .and_then(|m| m.get("messageId"))
        .cloned()
        .unwrap_or_default()
}

/// Stores one track message the server writes itself (a survey answer, a link click)
/// through the project's writer, answering once it is durable. A message the rules refuse
/// answers `refused` with the rule's message.
pub(crate) async fn append_one(
    state: &AppState,
    store: &throughline_store::ProjectStore,
    message: &serde_json::Value,
    received_at: i64,
    refused: StatusCode,
) -> Result<AppendOutcome, Response> {
    let bytes = serde_json::to_vec(message).expect("a message serializes");
    let mut ids = state.id_generator();
    let batch = Batch::parse_single(&bytes, EventType::Track, received_at, &mut ids)
        .map_err(|r| AppError::new(refused, r.error).into_response())?;
    let mut events = store.new_batch(batch.messages.len(), bytes.len());
    for m in batch.messages {
        let e = m.map_err(|r| AppError::new(refused, r.error).into_response())?;
        events
            .push(&e)
            .map_err(|e| AppError::from(e).into_response())?;
    }
    submit(state, store, events)
        .await
        .map_err(IntoResponse::into_response)
}

/// Makes `events` durable where this server keeps events: the ClickHouse backend's local
/// outbox (forwarded in the background) or the project's own store. Answers once they are.
async fn submit(
    state: &AppState,
    store: &throughline_store::ProjectStore,
    events: throughline_store::EventBatch,
) -> Result<AppendOutcome, AppError> {
    fn closed(what: &str) -> AppError {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} is shutting down"),
        )
    }
    if let Some(ch) = &state.clickhouse {
        let project = ch.project(store.name())?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        project.submit(
            throughline_clickhouse::outbox::Record::of_batch(&events),
            move |r| {
                let _ = tx.send(r);
            },
        )?;
        Ok(rx.await.map_err(|_| closed("the outbox"))??)
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.submit(events, move |r| {
            let _ = tx.send(r);
        })?;
        Ok(rx.await.map_err(|_| closed("the store"))??)
    }
}
