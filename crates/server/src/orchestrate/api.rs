//! The journeys HTTP API (Bearer api key, like queries), and the views and operations the
//! CLI shares with it: journey summaries with per-step counts, the persons at a step,
//! backtests over the stored history, suppression-list imports.
//!
//! ```text
//! POST /api/v1/projects/{p}/journeys                  create (TOML or JSON body)
//! POST /api/v1/projects/{p}/journeys/validate         check only
//! GET  /api/v1/projects/{p}/journeys                  list with counts
//! GET  /api/v1/projects/{p}/journeys/{name}           steps, persons waiting, sends, caps, goals, holdout
//! GET  /api/v1/projects/{p}/journeys/{name}/persons   ?step=ID&limit=N
//! POST /api/v1/projects/{p}/journeys/{name}/{pause|resume|archive}
//! POST /api/v1/projects/{p}/journeys/backtest         {"journey": FILE, "from", "to"}
//! GET|POST /api/v1/projects/{p}/suppressions          list / import (CSV or JSON)
//! GET|POST /api/v1/admin/clock                        the test clock (config test_clock only)
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use throughline_model::{format_ms, EventType, Millis};
use throughline_orchestrate::backtest::{self, Item};
use throughline_orchestrate::journey::{self, JourneyFile, Problem, StepKind, Trigger};
use throughline_orchestrate::machine::{Facts, Input, Machine, Observed, Status};
use throughline_orchestrate::Policy;
use throughline_store::Snapshot;

use super::{Orchestrator, RuntimeError};
use crate::{AppError, AppState};

/// Journey and suppression bodies at most.
pub const BODY_BYTES_MAX: usize = 8 << 20;
/// Persons listed per request at most.
pub const PERSONS_MAX: usize = 10_000;
/// Suppression entries per import at most.
pub const SUPPRESSIONS_MAX: usize = 5_000_000;

fn invalid(problems: Vec<Problem>) -> Response {
    let msg = problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": format!("invalid journey: {msg}"), "problems": problems})),
    )
        .into_response()
}

fn runtime_error(e: RuntimeError) -> AppError {
    AppError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// On the ClickHouse backend events go to the outbox, never to the embedded store the
/// orchestrator reads, so journeys there would wait forever for triggers and backtests
/// would replay an empty history: refusing says so instead of answering nothing.
fn embedded_only(state: &AppState) -> Result<(), AppError> {
    match state.clickhouse {
        Some(_) => Err(AppError::new(
            StatusCode::NOT_IMPLEMENTED,
            "journeys run on the embedded store only: this server keeps its events in ClickHouse (--backend clickhouse), where the orchestrator would see no event",
        )),
        None => Ok(()),
    }
}

fn orchestrator(state: &AppState) -> Result<Arc<Orchestrator>, AppError> {
    embedded_only(state)?;
    state.orchestrator.get().cloned().ok_or_else(|| {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "journeys are disabled on this server (orchestrate.enabled = false)",
        )
    })
}

/// Reads a journey from a body: JSON when it starts with `{`, TOML otherwise.
pub fn parse_body(body: &[u8]) -> Result<JourneyFile, Vec<Problem>> {
    let text = std::str::from_utf8(body).map_err(|_| {
        vec![Problem {
            step: None,
            field: String::new(),
            error: "the body is not UTF-8".into(),
        }]
    })?;
    journey::parse_file(text)
}

/// One journey as lists show it, with per-step counts.
pub fn describe(m: &Machine, name: &str, definition: bool) -> Option<Value> {
    let (js, j) = m.journey(name)?;
    let at = m.at_steps(name).unwrap_or(&[]);
    let st = &js.stats;
    let rate = |n: u64, k: u64| {
        if n > 0 {
            json!(k as f64 / n as f64)
        } else {
            Value::Null
        }
    };
    let treatment = st.entered.saturating_sub(st.holdout_entered);
    let treatment_conv = st.converted.saturating_sub(st.holdout_converted);
    let steps: Vec<Value> = j
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let x = &st.steps[i];
            let kind = js.file.steps[i]
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("");
            let mut v = json!({
                "id": s.id, "type": kind, "persons_waiting": at.get(i).copied().unwrap_or(0),
                "reached": x.reached, "goal_exits": x.goal_exits,
            });
            if matches!(s.kind, StepKind::Action { .. }) {
                for (k, n) in [
                    ("sends", x.sends),
                    ("delivered", x.delivered),
                    ("failed", x.failed),
                    ("retries", x.retries),
                    ("capped", x.capped),
                    ("suppressed", x.suppressed),
                    ("quiet_delayed", x.quiet_delayed),
                ] {
                    v[k] = json!(n);
                }
            }
            if !x.variants.is_empty() {
                v["variants"] = json!(x.variants);
            }
            v
        })
        .collect();
    let active: u64 = at.iter().sum();
    let watching = m.persons_at(name, None, usize::MAX).len();
    let trigger = match &j.trigger {
        Trigger::Event(e) => json!({"event": e.label}),
        Trigger::Audience(_) => json!({"audience": js.file.trigger.audience}),
    };
    let mut v = json!({
        "name": j.name,
        "status": js.status.as_str(),
        "priority": j.priority,
        "created": format_ms(js.created),
        "trigger": trigger,
        "reentry": js.file.reentry.clone().unwrap_or_else(|| "once".into()),
        "goal": j.goal.as_ref().map(|g| g.label.clone()),
        "entered": st.entered,
        "active": active,
        "watching_goal": watching,
        "refused_by_limits": st.refused,
        "completed": st.completed,
        "converted": st.converted,
        "conversion": {
            "treatment": {"persons": treatment, "converted": treatment_conv, "rate": rate(treatment, treatment_conv)},
            "holdout": {"persons": st.holdout_entered, "converted": st.holdout_converted, "rate": rate(st.holdout_entered, st.holdout_converted)},
        },
        "sends": st.steps.iter().map(|s| s.sends).sum::<u64>(),
        "capped": st.steps.iter().map(|s| s.capped).sum::<u64>(),
        "suppressed": st.steps.iter().map(|s| s.suppressed).sum::<u64>(),
        "quiet_delayed": st.steps.iter().map(|s| s.quiet_delayed).sum::<u64>(),
        "steps": steps,
    });
    if definition {
        v["definition"] = serde_json::to_value(&js.file).expect("a journey file serializes");
    }
    Some(v)
}

pub fn list(m: &Machine) -> Value {
    let journeys: Vec<Value> = m
        .journeys()
        .filter_map(|(s, _)| describe(m, &s.file.name, false))
        .collect();
    json!({"journeys": journeys, "persons_in_journeys": m.instance_count(), "sends_in_flight": m.in_flight_count(), "suppressed": m.suppressed().len()})
}

/// The persons at a step (`None`: past the last step, watching for the goal).
pub fn persons(m: &Machine, name: &str, step: Option<&str>, limit: usize) -> Result<Value, String> {
    let (_, j) = m
        .journey(name)
        .ok_or_else(|| format!("no journey named {name:?}"))?;
    let idx = match step {
        None | Some("end") => None,
        Some(s) => Some(
            j.step_index(s)
                .ok_or_else(|| format!("journey {name:?} has no step {s:?}"))? as u16,
        ),
    };
    let rows: Vec<Value> = m
        .persons_at(name, idx, limit.min(PERSONS_MAX))
        .into_iter()
        .map(|i| {
            json!({"person": i.person, "entry": i.entry, "entered": format_ms(i.entered), "since": format_ms(i.since),
                   "state": i.at.label(), "due": i.at.due().map(format_ms), "holdout": i.holdout})
        })
        .collect();
    Ok(json!({"journey": name, "step": step.unwrap_or("end"), "persons": rows}))
}

/// Ids from a suppression list: a CSV with a header naming any of `person_id`, `id`,
/// `user_id(s)`, `email(s)`, `anonymous_id(s)` (several ids in a cell split on `;`, as the
/// fatigue audience export writes them), or one id per line without a header.
pub fn suppression_ids(text: &str) -> Result<Vec<String>, String> {
    let known = [
        "person_id",
        "id",
        "user_id",
        "user_ids",
        "userid",
        "email",
        "emails",
        "anonymous_id",
        "anonymous_ids",
    ];
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows = reader.records();
    let Some(first) = rows.next() else {
        return Ok(Vec::new());
    };
    let first = first.map_err(|e| format!("line 1: {e}"))?;
    let header: Vec<String> = first
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let cols: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| known.contains(&h.as_str()))
        .map(|(i, _)| i)
        .collect();
    let mut ids = Vec::new();
    let push = |cell: &str, ids: &mut Vec<String>| {
        for id in cell.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            ids.push(id.to_string());
        }
    };
    if cols.is_empty() {
        for cell in first.iter() {
            push(cell, &mut ids);
        }
    }
    for (n, r) in rows.enumerate() {
        let r = r.map_err(|e| format!("line {}: {e}", n + 2))?;
        if cols.is_empty() {
            for cell in r.iter() {
                push(cell, &mut ids);
            }
        } else {
            for &c in &cols {
                if let Some(cell) = r.get(c) {
                    push(cell, &mut ids);
                }
            }
        }
        if ids.len() > SUPPRESSIONS_MAX {
            return Err(format!("more than {SUPPRESSIONS_MAX} ids"));
        }
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// A journey over the stored history from `from` to `to`.
pub fn backtest(
    snap: &Snapshot,
    file: &JourneyFile,
    policy: &Policy,
    suppressed: Vec<String>,
    from: Millis,
    to: Millis,
) -> Result<backtest::Report, String> {
    let j = journey::compile(file).map_err(|p| {
        p.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let matchers: Vec<throughline_query::StepMatcher> = j.matchers().into_iter().cloned().collect();
    let paths = matchers.iter().any(|m| m.needs_path());
    let suppress_on = policy.suppress_on.clone();
    let keys = j.trait_keys();
    let identity = snap.identity();
    let mut items: Vec<(Millis, u32, Item)> = Vec::new();
    snap.for_each_event_where(
        |_, name| match name {
            None => true,
            Some(n) => {
                paths
                    || suppress_on.iter().any(|s| s == n)
                    || matchers.iter().any(|m| m.matches(Some(n), None))
            }
        },
        |seq, node, e| {
            if e.timestamp >= to {
                return Ok(());
            }
            let person = identity.canonical_id(identity.person_of(node)).to_string();
            let mut traits = serde_json::Map::new();
            let mut keep = |k: &str, v: &Value| {
                if k == "email" || k == "timezone" || keys.contains(k) {
                    traits.insert(k.to_string(), v.clone());
                }
            };
            if let Some(Value::String(tz)) = e.context.get("timezone") {
                keep("timezone", &json!(tz));
            }
            if let Some(Value::Object(t)) = e.context.get("traits") {
                for (k, v) in t {
                    keep(k, v);
                }
            }
            if e.event_type == EventType::Identify {
                for (k, v) in &e.traits {
                    keep(k, v);
                }
            }
            if let Some(em) = &e.email {
                traits.entry("email").or_insert(json!(em));
            }
            let wanted = e.event_type != EventType::Identify
                && (e
                    .event
                    .as_deref()
                    .is_some_and(|n| suppress_on.iter().any(|s| s == n))
                    || matchers.iter().any(|m| {
                        m.matches_event(
                            e.event_type.code(),
                            e.event.as_deref(),
                            e.page_path.as_deref(),
                        )
                    }));
            if !traits.is_empty() {
                items.push((
                    e.timestamp,
                    seq,
                    Item::Traits {
                        person: person.clone(),
                        at: e.timestamp,
                        facts: Facts {
                            ids: Vec::new(),
                            traits,
                        },
                    },
                ));
            }
            if wanted {
                let ts = e.timestamp;
                items.push((
                    ts,
                    seq,
                    Item::Event(Box::new(Observed {
                        person,
                        facts: Facts::default(),
                        event: e,
                    })),
                ));
            }
            Ok(())
        },
    )
    .map_err(|e| e.to_string())?;
    items.sort_by_key(|(t, seq, i)| (*t, matches!(i, Item::Event(_)), *seq));
    backtest::run(
        file,
        policy,
        suppressed,
        items.into_iter().map(|x| x.2),
        from,
        to,
    )
    .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- handlers

fn authorize(
    state: &AppState,
    project: &str,
    headers: &HeaderMap,
) -> Result<Arc<throughline_store::ProjectStore>, AppError> {
    crate::query::authorize(state, project, headers)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    authorize(&state, &project, &headers)?;
    if body.len() > BODY_BYTES_MAX {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a journey file is at most {BODY_BYTES_MAX} bytes"),
        ));
    }
    let o = orchestrator(&state)?;
    blocking(move || {
        let file = match parse_body(&body) {
            Ok(f) => f,
            Err(p) => return Ok(invalid(p)),
        };
        let rt = o.project(&project).map_err(runtime_error)?;
        if let Err(p) = rt.with_machine(|m| m.check_create(&file)) {
            return Ok(invalid(p));
        }
        let name = file.name.clone();
        register_assets(&rt, &file);
        o.submit(
            &rt,
            vec![Input::Create {
                file: Box::new(file),
            }],
        )
        .map_err(runtime_error)?;
        let v = rt
            .with_machine(|m| describe(m, &name, true))
            .unwrap_or(Value::Null);
        Ok((StatusCode::CREATED, Json(v)).into_response())
    })
    .await?
}

/// Each send of the journey is an asset of the registry (`journey/step/variant`, the
/// `utm_content` of its links), so the asset scorecards name it; existing ids are kept.
pub fn register_assets(rt: &super::ProjectRuntime, file: &JourneyFile) {
    let Ok(j) = journey::compile(file) else {
        return;
    };
    let dir = rt.store.dir();
    let mut reg = throughline_query::assets::Registry::load(dir).unwrap_or_default();
    let mut added = throughline_query::assets::Registry::default();
    for s in &j.steps {
        let StepKind::Action { action, .. } = &s.kind else {
            continue;
        };
        let kind = if action.channel == "email" {
            "email"
        } else {
            "other"
        };
        for v in action.variant_names() {
            let id = format!("{}/{}/{v}", j.name, s.id);
            if reg.assets.iter().any(|a| a.id == id) {
                continue;
            }
            added.assets.push(throughline_query::assets::Asset {
                id,
                kind: kind.into(),
                name: Some(format!("{} · {} · {v}", j.name, s.id)),
                campaign: Some(j.name.clone()),
                ..Default::default()
            });
        }
    }
    if added.assets.is_empty() {
        return;
    }
    if reg.merge(added).is_ok() {
        if let Err(e) = reg.save(dir) {
            tracing::warn!(error = %e, "could not register the journey's sends as assets");
        }
    }
}

pub async fn validate(
    State(state): State<Arc<AppState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    authorize(&state, &project, &headers)?;
    if body.len() > BODY_BYTES_MAX {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a journey file is at most {BODY_BYTES_MAX} bytes"),
        ));
    }
    Ok(
        match parse_body(&body).and_then(|f| journey::compile(&f).map(|j| (f, j))) {
            Ok((f, j)) => {
                Json(json!({"valid": true, "name": j.name, "steps": journey::outline(&f)}))
                    .into_response()
            }
            Err(p) => invalid(p),
        },
    )
}

pub async fn list_journeys(
    State(state): State<Arc<AppState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    authorize(&state, &project, &headers)?;
    let o = orchestrator(&state)?;
    let rt = o.project(&project).map_err(runtime_error)?;
    Ok(Json(rt.with_machine(list)))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    Path((project, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    authorize(&state, &project, &headers)?;
    let o = orchestrator(&state)?;
    let rt = o.project(&project).map_err(runtime_error)?;
    rt.with_machine(|m| describe(m, &name, true))
        .map(Json)
        .ok_or_else(|| AppError::new(StatusCode::NOT_FOUND, format!("no journey named {name:?}")))
}

pub async fn persons_at(
    State(state): State<Arc<AppState>>,
    Path((project, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    authorize(&state, &project, &headers)?;
    let (mut step, mut limit) = (None, 100usize);
    for kv in q.as_deref().unwrap_or("").split('&') {
        match kv.split_once('=') {
            Some(("step", v)) => step = Some(throughline_collect::percent_decode(v)),
            Some(("limit", v)) => {
                limit = v
                    .parse()
                    .map_err(|_| AppError::new(StatusCode::BAD_REQUEST, "limit must be a number"))?
            }
            _ => {}
        }
    }
    let o = orchestrator(&state)?;
    let rt = o.project(&project).map_err(runtime_error)?;
    rt.with_machine(|m| persons(m, &name, step.as_deref(), limit))
        .map(Json)
        .map_err(|e| AppError::new(StatusCode::NOT_FOUND, e))
}

pub async fn set_status(
    State(state): State<Arc<AppState>>,
    Path((project, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    authorize(&state, &project, &headers)?;
    let status = match action.as_str() {
        "pause" => Status::Paused,
        "resume" => Status::Active,
        "archive" => Status::Archived,
        other => {
            return Err(AppError::new(
                StatusCode::NOT_FOUND,
                format!("no journey action {other:?}: use pause, resume or archive"),
            ))
        }
    };
    let o = orchestrator(&state)?;
    let rt = o.project(&project).map_err(runtime_error)?;
    let current = rt.with_machine(|m| m.journey(&name).map(|(s, _)| s.status));
    match current {
        None => {
            return Err(AppError::new(
                StatusCode::NOT_FOUND,
                format!("no journey named {name:?}"),
            ))
        }
        Some(Status::Archived) if status != Status::Archived => {
            return Err(AppError::new(
                StatusCode::CONFLICT,
                format!("journey {name:?} is archived"),
            ))
        }
        _ => {}
    }
    let rt2 = rt.clone();
    let n2 = name.clone();
    blocking(move || {
        o.submit(
            &rt2,
            vec![Input::SetStatus {
                journey: n2,
                status,
            }],
        )
    })
    .await?
    .map_err(runtime_error)?;
    Ok(Json(
        rt.with_machine(|m| describe(m, &name, false))
            .unwrap_or(Value::Null),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BacktestRequest {
    /// The journey file: a JSON object, or TOML/JSON text.
    pub journey: Value,
    pub from: String,
    pub to: String,
}

pub async fn run_backtest(
    State(state): State<Arc<AppState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let store = authorize(&state, &project, &headers)?;
    embedded_only(&state)?;
    let req: BacktestRequest = serde_json::from_slice(&body)
        .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, format!("invalid request: {e}")))?;
    let file = match &req.journey {
        Value::String(text) => journey::parse_file(text),
        v => journey::from_value(v.clone()),
    };
    let file = match file.and_then(|f| journey::compile(&f).map(|_| f)) {
        Ok(f) => f,
        Err(p) => return Ok(invalid(p)),
    };
    let bound = |t: &str| {
        throughline_query::parse_time_bound(t)
            .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, e.to_string()))
    };
    let (from, to) = (bound(&req.from)?, bound(&req.to)?);
    let policy = state.config.orchestrate.policy();
    let suppressed: Vec<String> = match state.orchestrator.get() {
        Some(o) => o
            .project(&project)
            .map(|rt| rt.with_machine(|m| m.suppressed().keys().cloned().collect()))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let r =
        blocking(move || backtest(&store.snapshot(), &file, &policy, suppressed, from, to)).await?;
    r.map(|r| Json(r).into_response())
        .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, e))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuppressJson {
    ids: Vec<String>,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn suppress(
    State(state): State<Arc<AppState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    authorize(&state, &project, &headers)?;
    if body.len() > BODY_BYTES_MAX * 16 {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a suppression list is at most 128 MB",
        ));
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let (ids, reason) = if json_body {
        let s: SuppressJson = serde_json::from_slice(&body)
            .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
        (s.ids, s.reason.unwrap_or_else(|| "suppression list".into()))
    } else {
        let text = String::from_utf8_lossy(&body);
        (
            suppression_ids(&text).map_err(|e| AppError::new(StatusCode::BAD_REQUEST, e))?,
            "suppression list".into(),
        )
    };
    let o = orchestrator(&state)?;
    let rt = o.project(&project).map_err(runtime_error)?;
    let n = ids.len();
    let rt2 = rt.clone();
    blocking(move || o.submit(&rt2, vec![Input::Suppress { ids, reason }]))
        .await?
        .map_err(runtime_error)?;
    Ok(Json(
        json!({"imported": n, "suppressed": rt.with_machine(|m| m.suppressed().len())}),
    ))
}

pub async fn suppressions(
    State(state): State<Arc<AppState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    authorize(&state, &project, &headers)?;
    let o = orchestrator(&state)?;
    let rt = o.project(&project).map_err(runtime_error)?;
    Ok(Json(rt.with_machine(suppression_list)))
}

pub fn suppression_list(m: &Machine) -> Value {
    let mut by_reason: HashMap<&str, u64> = HashMap::new();
    let mut rows: Vec<(&String, &throughline_orchestrate::machine::Suppression)> =
        m.suppressed().iter().collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    for (_, s) in &rows {
        *by_reason.entry(s.reason.as_str()).or_default() += 1;
    }
    let shown: Vec<Value> = rows
        .iter()
        .take(1000)
        .map(|(id, s)| json!({"id": id, "reason": s.reason, "since": format_ms(s.since)}))
        .collect();
    json!({"suppressed": rows.len(), "by_reason": by_reason, "ids": shown, "omitted": rows.len().saturating_sub(1000)})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockRequest {
    #[serde(default)]
    now: Option<String>,
    #[serde(default)]
    advance: Option<String>,
}

pub async fn clock(
    State(state): State<Arc<AppState>>,
    body: Option<Json<ClockRequest>>,
) -> Result<Json<Value>, AppError> {
    let o = orchestrator(&state)?;
    if !o.clock.is_test() {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "no test clock: set orchestrate.test_clock = true",
        ));
    }
    if let Some(Json(req)) = body {
        let target = match (req.now, req.advance) {
            (Some(t), None) => throughline_query::parse_time_bound(&t)
                .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, e.to_string()))?,
            (None, Some(d)) => {
                o.clock.now()
                    + throughline_query::parse_duration(&d)
                        .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, e.to_string()))?
            }
            _ => {
                return Err(AppError::new(
                    StatusCode::BAD_REQUEST,
                    "give `now` (a time) or `advance` (a duration)",
                ))
            }
        };
        o.clock
            .set(target)
            .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, e))?;
    }
    Ok(Json(
        json!({"now": format_ms(o.clock.now()), "test_clock": true}),
    ))
}

/// Counts for `/metrics`: persons in journeys, sends in flight, deliveries and records.
pub fn metrics(o: &Orchestrator) -> String {
    use std::sync::atomic::Ordering;
    let mut out = String::new();
    out.push_str(
        "# TYPE throughline_journey_persons gauge\n# TYPE throughline_deliveries_total counter\n",
    );
    for rt in o.projects() {
        let (persons, in_flight) = rt.with_machine(|m| (m.instance_count(), m.in_flight_count()));
        let p = &rt.name;
        let s = &rt.stats;
        out.push_str(&format!(
            "throughline_journey_persons{{project=\"{p}\"}} {persons}\n"
        ));
        out.push_str(&format!(
            "throughline_sends_in_flight{{project=\"{p}\"}} {in_flight}\n"
        ));
        out.push_str(&format!(
            "throughline_deliveries_total{{project=\"{p}\"}} {}\n",
            s.deliveries.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "throughline_deliveries_ok_total{{project=\"{p}\"}} {}\n",
            s.delivered.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "throughline_delivery_failures_total{{project=\"{p}\"}} {}\n",
            s.failed_attempts.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "throughline_journey_records_total{{project=\"{p}\"}} {}\n",
            s.records_written.load(Ordering::Relaxed)
        ));
    }
    out
}
