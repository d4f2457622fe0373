//! The hosted one-question survey: `GET /s/{token}` shows the question (NPS 0-10, CSAT
//! 1-5 or CES 1-7, and a comment box) as a plain HTML form that works without JavaScript;
//! `POST /s/{token}` records the answer and thanks the person.
//!
//! The token (`throughline_token`, minted by `throughline survey link`) names the project,
//! the person and the survey. A forged, altered or unknown token gets 404 and nothing is
//! recorded; an expired one 410. The answer is a `Survey Responded` track event of the
//! token's person, parsed by `collect` like any Segment message and stored through the
//! project's writer: the thank-you page is sent only once it is durable. Its messageId is
//! made of the token's nonce, so the store's deduplication keeps one answer per token,
//! across retries, concurrent posts and crashes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;
use throughline_collect::percent_decode;
use throughline_model::format_ms;
use throughline_store::{now_ms, ProjectStore};
use throughline_token::{Claims, Secret, TokenError};

use crate::AppState;

/// A form post is a score and a comment.
const FORM_BYTES_MAX: usize = 16 * 1024;
/// Characters of a comment kept.
pub const COMMENT_CHARS_MAX: usize = 2000;
const EVENT: &str = "Survey Responded";

struct Survey {
    name: &'static str,
    low: i64,
    high: i64,
    question: &'static str,
    low_label: &'static str,
    high_label: &'static str,
}

fn survey_of(name: &str) -> Option<Survey> {
    Some(match name {
        "nps" => Survey {
            name: "nps",
            low: 0,
            high: 10,
            question: "How likely are you to recommend us to a friend or colleague?",
            low_label: "Not at all likely",
            high_label: "Extremely likely",
        },
        "csat" => Survey {
            name: "csat",
            low: 1,
            high: 5,
            question: "How satisfied are you with your experience?",
            low_label: "Very dissatisfied",
            high_label: "Very satisfied",
        },
        "ces" => Survey {
            name: "ces",
            low: 1,
            high: 7,
            question: "It was easy to get what I needed.",
            low_label: "Strongly disagree",
            high_label: "Strongly agree",
        },
        _ => return None,
    })
}

/// Why a token opens no survey, as the page says it.
enum Refusal {
    NotFound,
    Expired,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, title, text) = match self {
            Refusal::NotFound => (
                StatusCode::NOT_FOUND,
                "Survey not found",
                "This survey link is not valid.",
            ),
            Refusal::Expired => (
                StatusCode::GONE,
                "Survey closed",
                "This survey link has expired. Thank you all the same.",
            ),
        };
        (status, page(title, &format!("<p>{text}</p>"))).into_response()
    }
}

/// The project and claims of a genuine survey token.
fn open(state: &AppState, token: &str) -> Result<(Arc<ProjectStore>, Claims, Survey), Refusal> {
    let project = throughline_token::project_of(token).ok_or(Refusal::NotFound)?;
    let store = match state.store.project(&project) {
        Ok(s) => s,
        Err(_) => {
            let _ = state.store.reload_catalog();
            state
                .store
                .project(&project)
                .map_err(|_| Refusal::NotFound)?
        }
    };
    let secret = Secret::load(store.dir())
        .map_err(|e| {
            tracing::warn!(project = %project, error = %e, "survey token secret unreadable");
            Refusal::NotFound
        })?
        .ok_or(Refusal::NotFound)?;
    let claims = throughline_token::verify(&secret, token, now_ms()).map_err(|e| match e {
        TokenError::Expired => Refusal::Expired,
        _ => Refusal::NotFound,
    })?;
    if claims.kind != "survey" || claims.project != project {
        return Err(Refusal::NotFound);
    }
    let survey = claims
        .data
        .get("survey")
        .and_then(|s| survey_of(s))
        .ok_or(Refusal::NotFound)?;
    Ok((store, claims, survey))
}

fn message_id(claims: &Claims) -> String {
    format!("survey-{}", claims.nonce)
}

/// Whether this token's answer is stored already (the person's survey events carry it).
fn answered(store: &ProjectStore, claims: &Claims) -> Result<bool, crate::AppError> {
    let snap = store.snapshot();
    let identity = snap.identity();
    let Some(person) = identity.find_person(&claims.person) else {
        return Ok(false);
    };
    let id = message_id(claims);
    let mut found = false;
    snap.for_each_event_where(
        |node, name| name == Some(EVENT) && identity.person_of(node) == person,
        |_, _, e| {
            found |= e.message_id == id;
            Ok(())
        },
    )?;
    Ok(found)
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
) -> Result<Response, Response> {
    let (store, claims, survey) = open(&state, &token).map_err(IntoResponse::into_response)?;
    let done = tokio::task::spawn_blocking(move || answered(&store, &claims).map(|d| (d, claims)))
        .await
        .map_err(|e| {
            crate::AppError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        })?
        .map_err(IntoResponse::into_response)?;
    let (done, claims) = done;
    if done {
        return Ok(thanks(true).into_response());
    }
    Ok(form(&claims, &survey, None).into_response())
}

pub async fn answer(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Response> {
    let (store, claims, survey) = open(&state, &token).map_err(IntoResponse::into_response)?;
    if body.len() > FORM_BYTES_MAX {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            page("Too long", "<p>That answer is too long.</p>"),
        )
            .into_response());
    }
    let (mut score, mut comment) = (None, None);
    for pair in String::from_utf8_lossy(&body).split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(k).as_str() {
            "score" => score = Some(percent_decode(v)),
            "comment" => comment = Some(percent_decode(v)),
            _ => {}
        }
    }
    let score = score.and_then(|s| s.trim().parse::<i64>().ok());
    let Some(score) = score.filter(|s| (survey.low..=survey.high).contains(s)) else {
        let msg = format!(
            "Please pick a score from {} to {}.",
            survey.low, survey.high
        );
        return Err((StatusCode::BAD_REQUEST, form(&claims, &survey, Some(&msg))).into_response());
    };
    let comment: Option<String> = comment
        .map(|c| c.trim().chars().take(COMMENT_CHARS_MAX).collect::<String>())
        .filter(|c| !c.is_empty());
    let now = now_ms();
    let mut properties = json!({
        "survey": survey.name,
        "score": score,
        "question": question(&claims, &survey),
        "channel": "hosted_page",
        "token": claims.nonce,
    });
    if let Some(c) = &comment {
        properties["comment"] = json!(c);
    }
    if let Some(s) = claims.data.get("stage") {
        properties["stage"] = json!(s);
    }
    let mut context =
        json!({"library": {"name": "throughline-survey", "version": env!("CARGO_PKG_VERSION")}});
    if let Some(ua) = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        context["userAgent"] = json!(ua);
    }
    let message = json!({
        "type": "track",
        "event": EVENT,
        "userId": claims.person,
        "messageId": message_id(&claims),
        "timestamp": format_ms(now),
        "properties": properties,
        "context": context,
    });
    let outcome =
        crate::ingest::append_one(&state, &store, &message, now, StatusCode::BAD_REQUEST).await?;
    Ok(thanks(outcome.duplicates() > 0).into_response())
}

fn question(claims: &Claims, survey: &Survey) -> String {
    claims
        .data
        .get("question")
        .cloned()
        .unwrap_or_else(|| survey.question.to_string())
}

fn thanks(already: bool) -> Html<String> {
    if already {
        page(
            "Already answered",
            "<p>You have already answered this survey. Thank you!</p>",
        )
    } else {
        page(
            "Thank you",
            "<p>Thank you! Your answer has been recorded.</p>",
        )
    }
}

fn form(claims: &Claims, survey: &Survey, error: Option<&str>) -> Html<String> {
    let mut options = String::new();
    for s in survey.low..=survey.high {
        options.push_str(&format!(
            "<label class=opt><input type=radio name=score value={s} required><span>{s}</span></label>"
        ));
    }
    let error = error.map_or(String::new(), |e| {
        format!("<p class=error role=alert>{}</p>", escape(e))
    });
    let body = format!(
        "<form method=post>{error}<fieldset><legend>{q}</legend><div class=scale>{options}</div>\
         <div class=ends><span>{lo}</span><span>{hi}</span></div></fieldset>\
         <p><label for=comment>Anything you would like to add? (optional)</label><br>\
         <textarea id=comment name=comment rows=4 maxlength={max}></textarea></p>\
         <p><button type=submit>Send</button></p></form>",
        q = escape(&question(claims, survey)),
        lo = escape(survey.low_label),
        hi = escape(survey.high_label),
        max = COMMENT_CHARS_MAX,
    );
    page("A quick question", &body)
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=en><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <meta name=robots content=noindex><title>{t}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a}}\
         fieldset{{border:0;padding:0}}legend{{font-weight:600;margin-bottom:.75rem}}\
         .scale{{display:flex;flex-wrap:wrap;gap:.25rem}}.opt input{{position:absolute;opacity:0}}\
         .opt span{{display:inline-block;min-width:2.5rem;padding:.5rem 0;text-align:center;border:1px solid #555;border-radius:4px}}\
         .opt input:checked+span{{background:#1a4d8f;color:#fff}}.opt input:focus+span{{outline:3px solid #f2a900}}\
         .ends{{display:flex;justify-content:space-between;font-size:.875rem;color:#444}}\
         textarea{{width:100%}}button{{font:inherit;padding:.5rem 1.5rem}}.error{{color:#a00000}}</style>\
         <h1>{t}</h1>{body}</html>",
        t = escape(title),
    ))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use axum::body::{to_bytes, Body};
    use axum::http::{Request, StatusCode};
    use throughline_store::{Catalog, Store};
    use tower::ServiceExt;

    use crate::{router, AppState, Config};

    async fn call(state: &std::sync::Arc<AppState>, req: Request<Body>) -> (StatusCode, String) {
        let resp = router(state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn post(token: &str, form: &str) -> Request<Body> {
        Request::post(format!("/s/{token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(form.to_string()))
            .unwrap()
    }

    fn answers(state: &AppState) -> Vec<throughline_model::Event> {
        let mut out = Vec::new();
        let p = state.store.project("shop").unwrap();
        p.snapshot()
            .for_each_event(|e, _| {
                out.push(e);
                Ok(())
            })
            .unwrap();
        out
    }

    /// A forged or altered token records nothing; a genuine one records one answer, once.
    #[tokio::test]
    async fn only_genuine_tokens_record_and_only_once() {
        let dir = std::env::temp_dir().join(format!("tl-survey-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Catalog::create_project(&dir, "shop").unwrap();
        let store = Store::open(&dir, Default::default()).unwrap();
        let state = AppState::new(std::sync::Arc::new(store), Config::default());
        let pdir = dir.join("projects").join("shop");
        let secret = throughline_token::Secret::load_or_create(&pdir).unwrap();
        let mut claims = throughline_token::Claims::new("survey", "shop", "ann", 0);
        claims.data.insert("survey".into(), "csat".into());
        let token = throughline_token::sign(&secret, &claims).unwrap();
        let mut wrong_kind = claims.clone();
        wrong_kind.kind = "unsubscribe".into();
        let other_secret = throughline_token::Secret::from_bytes([9; 32]);
        let forged = [
            throughline_token::sign(&other_secret, &claims).unwrap(),
            throughline_token::sign(&secret, &wrong_kind).unwrap(),
            format!("{token}A"),
            token.replacen('e', "f", 1),
        ];
        for f in &forged {
            let (s, _) = call(&state, post(f, "score=5")).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{f}");
            let (s, _) = call(
                &state,
                Request::get(format!("/s/{f}")).body(Body::empty()).unwrap(),
            )
            .await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{f}");
        }
        assert!(answers(&state).is_empty());
        let (s, page) = call(
            &state,
            Request::get(format!("/s/{token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(page.matches("type=radio").count(), 5);
        let (s, page) = call(&state, post(&token, "score=4&comment=Fine+%26+fast")).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let (s, page) = call(&state, post(&token, "score=1")).await;
        assert_eq!(s, StatusCode::OK);
        assert!(page.contains("already answered"), "{page}");
        let stored = answers(&state);
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].user_id.as_deref(), Some("ann"));
        assert_eq!(stored[0].properties["score"], 4);
        assert_eq!(stored[0].properties["comment"], "Fine & fast");
        state.store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
