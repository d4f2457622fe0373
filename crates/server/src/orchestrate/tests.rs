//! The journeys API through the router (`oneshot`, no socket), on a real store and a live
//! orchestrator: create, refuse bad files naming step and field, persons at a step, pause,
//! links that do not verify.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use serde_json::Value;
use throughline_store::{Catalog, Store};
use tower::ServiceExt;

use crate::{router, AppState, Config};

async fn call(state: &Arc<AppState>, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const JOURNEY: &str = r#"
name = "welcome"
trigger = { event = "Signed Up" }
[[steps]]
id = "rest"
type = "wait"
duration = "1d"
[[steps]]
id = "hook"
type = "webhook"
url = "http://127.0.0.1:9/x"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn journeys_over_http() {
    let dir = std::env::temp_dir().join(format!("tl-journeys-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let info = Catalog::create_project(&dir, "shop").unwrap();
    let state = AppState::new(
        Arc::new(Store::open(&dir, Default::default()).unwrap()),
        Config::default(),
    );
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.start_orchestrator())
        .await
        .unwrap()
        .unwrap();
    let bearer = format!("Bearer {}", info.api_key);
    let post = |path: &str, body: &str, ctype: &str| {
        Request::post(path)
            .header("authorization", &bearer)
            .header("content-type", ctype)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let get = |path: &str| {
        Request::get(path)
            .header("authorization", &bearer)
            .body(Body::empty())
            .unwrap()
    };

    let (s, v) = call(
        &state,
        post(
            "/api/v1/projects/shop/journeys",
            JOURNEY,
            "application/toml",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["steps"][0]["id"], "rest");
    let (s, v) = call(
        &state,
        post(
            "/api/v1/projects/shop/journeys",
            JOURNEY,
            "application/toml",
        ),
    )
    .await;
    assert_eq!(
        (s, v["problems"][0]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("name"))
    );
    let bad = JOURNEY.replace("duration = \"1d\"", "duration = \"soon\"");
    let (s, v) = call(
        &state,
        post(
            "/api/v1/projects/shop/journeys/validate",
            &bad,
            "application/toml",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        (
            v["problems"][0]["step"].as_str(),
            v["problems"][0]["field"].as_str()
        ),
        (Some("rest"), Some("duration"))
    );
    // Without the api key: 401.
    let (s, _) = call(
        &state,
        Request::get("/api/v1/projects/shop/journeys")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // A signup enters the journey; the person waits at the first step.
    let track = Request::post("/v1/track")
        .header("content-type", "application/json")
        .body(Body::from(format!(
            r#"{{"writeKey": "{}", "userId": "ann", "event": "Signed Up"}}"#,
            info.write_key
        )))
        .unwrap();
    assert_eq!(call(&state, track).await.0, StatusCode::OK);
    let mut waiting = Value::Null;
    for _ in 0..200 {
        let (_, v) = call(
            &state,
            get("/api/v1/projects/shop/journeys/welcome/persons?step=rest"),
        )
        .await;
        if v["persons"].as_array().is_some_and(|p| !p.is_empty()) {
            waiting = v;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(waiting["persons"][0]["person"], "ann", "{waiting}");
    assert_eq!(waiting["persons"][0]["state"], "waiting");
    let (_, v) = call(&state, get("/api/v1/projects/shop/journeys/welcome")).await;
    assert_eq!(
        (
            v["entered"].as_u64(),
            v["steps"][0]["persons_waiting"].as_u64()
        ),
        (Some(1), Some(1))
    );

    let (s, v) = call(
        &state,
        post(
            "/api/v1/projects/shop/journeys/welcome/pause",
            "",
            "application/json",
        ),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("paused")));
    let (s, _) = call(&state, get("/api/v1/projects/shop/journeys/nope")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // No test clock in the default config; forged tokens find nothing.
    let (s, _) = call(
        &state,
        Request::post("/api/v1/admin/clock")
            .header("content-type", "application/json")
            .body(Body::from("{\"advance\": \"1d\"}"))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    for path in [
        "/r/abc.def",
        "/o/abc.def.gif",
        "/u/abc.def",
        "/r/no-such-vanity",
    ] {
        let resp = router(state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let o = state.orchestrator.get().unwrap().clone();
    tokio::task::spawn_blocking(move || o.shutdown())
        .await
        .unwrap();
    state.store.close();
    let _ = std::fs::remove_dir_all(&dir);
}
