//! `POST /api/v1/projects/{project}/query/{kind}`: the query engine over HTTP, with the
//! project's api key as a Bearer token. The body is the same request the CLI builds.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::Value;
use throughline_query::source::{Remote, Source};
use throughline_query::QueryError;

use crate::{AppError, AppState};

/// Query bodies are small JSON documents.
const QUERY_BODY_BYTES_MAX: usize = 64 * 1024;

/// `GET /api/v1/projects/{project}/persons/{id}`: a person's profile and timeline, by any
/// of their ids.
pub async fn person(
    State(state): State<Arc<AppState>>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let store = authorize(&state, &project, &headers)?;
    let remote = remote(&state, &project);
    let answer = tokio::task::spawn_blocking(move || {
        let rules = throughline_query::sessions::project_rules(store.dir()).map_err(query_error)?;
        let found = with_source(&store, remote.as_ref(), |snap| {
            throughline_query::profile::run(snap, &rules, &id, 100)
        });
        match found {
            Ok(Some(p)) => Ok(serde_json::to_value(p).expect("profiles serialize")),
            Ok(None) => Err(AppError::new(
                StatusCode::NOT_FOUND,
                format!("no person with id {id:?}"),
            )),
            Err(e) => Err(query_error(e)),
        }
    })
    .await
    .map_err(|e| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query failed: {e}"),
        )
    })??;
    Ok(Json(answer))
}

/// `DELETE /api/v1/projects/{project}/persons/{id}`: GDPR erasure of a person (every event
/// and id, and what journeys hold of them), recorded in the audit log with the caller's
/// address. On ClickHouse the project's forwarder runs it in outbox order and writes the
/// audit entry itself (crates/clickhouse/src/erase.rs), with the same answer.
pub async fn delete_person(
    State(state): State<Arc<AppState>>,
    Path((project, id)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Result<Json<Value>, AppError> {
    let store = authorize(&state, &project, request.headers())?;
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or("unknown".to_string(), |c| c.0.to_string());
    let data = state.store.dir().to_path_buf();
    if let Some(ch) = state.clickhouse.clone() {
        return tokio::task::spawn_blocking(move || {
            match ch.project(&project)?.erase(&id, &format!("http {peer}"))? {
                Some(erased) => Ok(Json(serde_json::json!({"erased_events": erased, "id": id}))),
                None => Err(AppError::new(
                    StatusCode::NOT_FOUND,
                    format!("no person with id {id:?}"),
                )),
            }
        })
        .await
        .map_err(|e| {
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("erasure failed: {e}"),
            )
        })?;
    }
    let orchestrator = state.orchestrator.get().cloned();
    tokio::task::spawn_blocking(move || {
        if store.snapshot().identity().find_person(&id).is_none() {
            return Err(AppError::new(
                StatusCode::NOT_FOUND,
                format!("no person with id {id:?}"),
            ));
        }
        // The store, and the orchestrator's journal, snapshot and audience exports.
        let erased = match &orchestrator {
            Some(o) => o.erase_person(&store, &id),
            None => crate::orchestrate::erase_offline(&store, &id),
        }
        .map_err(|e| match e {
            crate::orchestrate::RuntimeError::Store(e) => AppError::from(e),
            other => AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("erasure failed: {other}"),
            ),
        })?;
        let entry = throughline_store::audit::AuditEntry::new(
            "person.delete",
            Some(&project),
            &format!("http {peer}"),
            format!(
                "{}: {erased} events erased",
                throughline_store::audit::erased_id(&id)
            ),
        );
        throughline_store::audit::append(&data, &entry)?;
        Ok(Json(serde_json::json!({"erased_events": erased, "id": id})))
    })
    .await
    .map_err(|e| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("erasure failed: {e}"),
        )
    })?
}

/// The project's store if the Bearer api key opens it.
pub(crate) fn authorize(
    state: &AppState,
    project: &str,
    headers: &HeaderMap,
) -> Result<std::sync::Arc<throughline_store::ProjectStore>, AppError> {
    let key = bearer(headers)?;
    let (info, store) = state
        .store
        .by_api_key(key)
        .ok_or_else(|| AppError::new(StatusCode::UNAUTHORIZED, "unknown api key"))?;
    // A key opens its own project only; say so without revealing whether others exist.
    if info.name != project {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            format!("this api key is not for project {project:?}"),
        ));
    }
    Ok(store)
}

/// Where a project's queries read: ClickHouse on a ClickHouse-backed server, else `None`
/// (the embedded store).
fn remote(state: &AppState, project: &str) -> Option<throughline_clickhouse::source::Source> {
    state.clickhouse.as_ref().map(|ch| ch.source(project))
}

/// Runs `f` over the project's events: the embedded snapshot, or ClickHouse.
fn with_source<T>(
    store: &throughline_store::ProjectStore,
    remote: Option<&throughline_clickhouse::source::Source>,
    f: impl FnOnce(&Source) -> T,
) -> T {
    match remote {
        Some(r) => f(&Source::Remote(&Remote::new(r))),
        None => f(&Source::Store(&store.snapshot())),
    }
}

/// The api key of an `Authorization: Bearer <api key>` header.
fn bearer(headers: &HeaderMap) -> Result<&str, AppError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            AppError::new(
                StatusCode::UNAUTHORIZED,
                "missing api key: send `Authorization: Bearer <api key>`",
            )
        })
}

pub async fn run(
    State(state): State<Arc<AppState>>,
    Path((project, kind)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let store = authorize(&state, &project, &headers)?;
    let remote = remote(&state, &project);
    if body.len() > QUERY_BODY_BYTES_MAX {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a query body is at most 64 KB",
        ));
    }
    let kind_for_task = kind.clone();
    let caps = state.config.orchestrate.fatigue_caps();
    // Queries are CPU work: keep them off the async workers that answer ingestion.
    let answer = tokio::task::spawn_blocking(move || -> Result<Value, AppError> {
        with_source(&store, remote.as_ref(), |snap| {
        let rules = throughline_query::sessions::project_rules(store.dir()).map_err(query_error)?;
        let registry = || throughline_query::assets::Registry::load(store.dir()).map_err(query_error);
        use throughline_query as q;
        match kind_for_task.as_str() {
            "funnel" => to_json(q::funnel::run(snap, &rules, &parse(&body)?)),
            "trends" => to_json(q::trends::run(snap, &rules, &parse(&body)?)),
            "retention" => to_json(q::retention::run(snap, &rules, &parse(&body)?)),
            "paths" => to_json(q::paths::run(snap, &rules, &parse(&body)?)),
            "sessions" => to_json(q::sessions::run(snap, &rules, &parse(&body)?)),
            "assets" => to_json(q::assets::run(snap, &rules, &registry()?, &parse(&body)?)),
            "attribution" => {
                let spend = q::spend::Spend::load(store.dir()).map_err(query_error)?;
                to_json(q::attribution::run(
                    snap,
                    &rules,
                    &registry()?,
                    &spend,
                    &parse(&body)?,
                ))
            }
            "emotion" => {
                let stages = q::stages::Stages::load(store.dir()).map_err(query_error)?;
                to_json(q::emotion::run(snap, &rules, &registry()?, &stages, &parse(&body)?))
            }
            "fatigue" => {
                let mut req = parse(&body)?;
                q::fatigue::fill_from_orchestration(&mut req, &caps, "the server's [orchestrate] caps")
                    .map_err(query_error)?;
                to_json(q::fatigue::run(snap, &rules, &req))
            }
            "audit" => to_json(q::audit::run(snap, &rules, &registry()?, &parse(&body)?)),
            other => Err(AppError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown query kind {other:?}: use funnel, trends, retention, sessions, paths, assets, attribution, emotion, fatigue or audit"
                ),
            )),
        }
        })
    })
    .await
    .map_err(|e| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query failed: {e}"),
        )
    })??;
    Ok(Json(answer))
}

/// `GET /api/v1/projects/{project}/events/recent?limit=N`: the newest events, for the
/// dashboard's live feed.
pub async fn recent(
    State(state): State<Arc<AppState>>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let store = authorize(&state, &project, &headers)?;
    let remote = remote(&state, &project);
    let mut req = throughline_query::recent::RecentRequest::default();
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("limit", n)) => {
                req.limit = Some(n.parse().map_err(|_| {
                    AppError::new(
                        StatusCode::BAD_REQUEST,
                        format!("limit {n:?} is not a number"),
                    )
                    .field(Some("limit"))
                })?)
            }
            _ => {
                return Err(AppError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {pair:?}: only `limit` is read"),
                ))
            }
        }
    }
    let answer = tokio::task::spawn_blocking(move || {
        to_json(with_source(&store, remote.as_ref(), |src| {
            throughline_query::recent::run(src, &req)
        }))
    })
    .await
    .map_err(|e| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query failed: {e}"),
        )
    })??;
    Ok(Json(answer))
}

/// `GET /api/v1/projects/{project}/catalog`: the event names, campaigns and channels.
pub async fn catalog(
    State(state): State<Arc<AppState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let store = authorize(&state, &project, &headers)?;
    let remote = remote(&state, &project);
    let answer = tokio::task::spawn_blocking(move || {
        let rules = throughline_query::sessions::project_rules(store.dir()).map_err(query_error)?;
        to_json(with_source(&store, remote.as_ref(), |src| {
            throughline_query::recent::catalog(src, &rules)
        }))
    })
    .await
    .map_err(|e| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query failed: {e}"),
        )
    })??;
    Ok(Json(answer))
}

/// `GET /api/v1/whoami`: the project the Bearer api key opens, so a client signing in
/// with a key alone learns where it may go.
pub async fn whoami(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let key = bearer(&headers)?;
    let (info, _) = state
        .store
        .by_api_key(key)
        .ok_or_else(|| AppError::new(StatusCode::UNAUTHORIZED, "unknown api key"))?;
    Ok(Json(serde_json::json!({ "project": info.name })))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(body)
        .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, format!("invalid query: {e}")))
}

fn to_json<T: serde::Serialize>(r: Result<T, QueryError>) -> Result<Value, AppError> {
    r.map(|v| serde_json::to_value(v).expect("answers serialize"))
        .map_err(query_error)
}

fn query_error(e: QueryError) -> AppError {
    match e {
        QueryError::Invalid(msg) => AppError::new(StatusCode::BAD_REQUEST, msg),
        QueryError::Store(e) => e.into(),
        QueryError::Backend(msg) => AppError::new(StatusCode::SERVICE_UNAVAILABLE, msg),
    }
}
