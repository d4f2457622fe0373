//! Router tests without a socket (`tower::ServiceExt::oneshot`), on a real store in a
//! temporary directory.

use std::io::Write;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use base64::Engine;
use serde_json::{json, Value};
use throughline_store::{Catalog, Store};
use tower::ServiceExt;

use crate::{router, AppState, Config};

struct Fixture {
    dir: std::path::PathBuf,
    state: Arc<AppState>,
    key: String,
    /// The api key as issued: the catalog keeps only its hash.
    api_key: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.state.store.close();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(tag: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("tl-server-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let info = Catalog::create_project(&dir, "shop").unwrap();
    let store = Store::open(&dir, Default::default()).unwrap();
    Fixture {
        dir,
        state: AppState::new(Arc::new(store), Config::default()),
        key: info.write_key,
        api_key: info.api_key,
    }
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

async fn post(
    f: &Fixture,
    path: &str,
    body: Vec<u8>,
    auth: Option<&str>,
    gzip: bool,
) -> (StatusCode, Value) {
    let mut req = Request::post(path).header("content-type", "application/json");
    if let Some(a) = auth {
        req = req.header("authorization", basic(a));
    }
    if gzip {
        req = req.header("content-encoding", "gzip");
    }
    let resp = router(f.state.clone())
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn stored_ids(f: &Fixture) -> Vec<String> {
    let p = f.state.store.project("shop").unwrap();
    let mut ids = Vec::new();
    p.snapshot()
        .for_each_event(|e, _| {
            ids.push(e.message_id);
            Ok(())
        })
        .unwrap();
    ids.sort();
    ids
}

#[tokio::test]
async fn every_validation_rule_answers_with_status_and_field() {
    let f = fixture("rules");
    let k = Some(f.key.as_str());
    type Case<'a> = (&'a str, Value, Option<&'a str>, StatusCode, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "/v1/track",
            json!({"event": "x"}),
            k,
            StatusCode::BAD_REQUEST,
            Some("userId"),
        ),
        (
            "/v1/track",
            json!({"userId": "u"}),
            k,
            StatusCode::BAD_REQUEST,
            Some("event"),
        ),
        (
            "/v1/alias",
            json!({"userId": "u"}),
            k,
            StatusCode::BAD_REQUEST,
            Some("previousId"),
        ),
        (
            "/v1/page",
            json!({"userId": "u", "timestamp": "later"}),
            k,
            StatusCode::BAD_REQUEST,
            Some("timestamp"),
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": "x"}),
            Some("wk_nope"),
            StatusCode::UNAUTHORIZED,
            None,
        ),
        (
            "/v1/track",
            json!({"userId": "u", "event": "x"}),
            None,
            StatusCode::UNAUTHORIZED,
            None,
        ),
    ];
    for (path, body, auth, status, field) in cases {
        let (s, v) = post(&f, path, body.to_string().into_bytes(), auth, false).await;
        assert_eq!(s, status, "{path} {body}: {v}");
        assert_eq!(v["field"].as_str(), field, "{path} {body}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (s, v) = post(&f, "/v1/track", b"{oops".to_vec(), k, false).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("JSON"));
    assert!(stored_ids(&f).is_empty());
}

#[tokio::test]
async fn a_batch_stores_good_messages_and_lists_bad_ones() {
    let f = fixture("batch");
    let body = json!({"writeKey": f.key, "batch": [
        {"type": "track", "userId": "u", "event": "ok1", "messageId": "a"},
        {"type": "track", "userId": "u", "messageId": "bad"},
        {"type": "page", "anonymousId": "d", "messageId": "b"},
        {"type": "track", "userId": "u", "event": "ok1", "messageId": "a"}
    ]});
    let (s, v) = post(&f, "/v1/batch", body.to_string().into_bytes(), None, false).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["duplicates"], 1);
    assert_eq!(v["rejected"][0]["index"], 1);
    assert_eq!(v["rejected"][0]["messageId"], "bad");
    assert_eq!(v["rejected"][0]["field"], "event");
    assert_eq!(stored_ids(&f), ["a", "b"]);
}

#[tokio::test]
async fn gzip_bodies_and_size_limits() {
    let f = fixture("gzip");
    let body =
        json!({"batch": [{"type": "identify", "userId": "u", "messageId": "g1"}]}).to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body.as_bytes()).unwrap();
    let (s, v) = post(&f, "/v1/batch", gz.finish().unwrap(), Some(&f.key), true).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let big = json!({"userId": "u", "event": "x", "properties": {"p": "x".repeat(33 * 1024)}});
    let (s, v) = post(
        &f,
        "/v1/track",
        big.to_string().into_bytes(),
        Some(&f.key),
        false,
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(v["error"].as_str().unwrap().contains("32 KB"), "{v}");

    let huge: Vec<Value> = (0..20)
        .map(|i| json!({"type": "track", "userId": "u", "event": "x", "messageId": i, "properties": {"p": "y".repeat(30 * 1024)}}))
        .collect();
    let (s, v) = post(
        &f,
        "/v1/batch",
        json!({"batch": huge}).to_string().into_bytes(),
        Some(&f.key),
        false,
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(v["error"].as_str().unwrap().contains("500 KB"), "{v}");

    // A gzip bomb inflating past the limit is refused, not buffered.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 4 << 20]).unwrap();
    let (s, _) = post(&f, "/v1/batch", gz.finish().unwrap(), Some(&f.key), true).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(stored_ids(&f), ["g1"]);
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let f = fixture("metrics");
    let body =
        json!({"batch": [{"type": "track", "userId": "u", "event": "e"}, {"type": "track"}]});
    post(
        &f,
        "/v1/batch",
        body.to_string().into_bytes(),
        Some(&f.key),
        false,
    )
    .await;
    let resp = router(f.state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8(to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    assert!(
        text.contains("throughline_events_accepted_total 1"),
        "{text}"
    );
    assert!(
        text.contains("throughline_events_rejected_total{reason=\"userId\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("throughline_fsync_seconds_count{project=\"shop\"} 1"),
        "{text}"
    );
}

async fn query(
    f: &Fixture,
    project: &str,
    kind: &str,
    key: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = Request::post(format!("/api/v1/projects/{project}/query/{kind}"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = router(f.state.clone())
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_query_api_answers_only_with_the_projects_api_key() {
    let f = fixture("query");
    let other = Catalog::create_project(&f.dir, "other").unwrap();
    f.state.store.reload_catalog().unwrap();
    let api_key = f.api_key.clone();
    let body = json!({"batch": [
        {"type": "track", "anonymousId": "d1", "event": "Viewed", "timestamp": "2026-09-01T10:00:00Z"},
        {"type": "identify", "anonymousId": "d1", "userId": "u1", "timestamp": "2026-09-01T10:01:00Z"},
        {"type": "track", "userId": "u1", "event": "Bought", "timestamp": "2026-09-01T11:00:00Z"},
        {"type": "track", "anonymousId": "d2", "event": "Viewed", "timestamp": "2026-09-01T10:00:00Z"}
    ]});
    post(
        &f,
        "/v1/batch",
        body.to_string().into_bytes(),
        Some(&f.key),
        false,
    )
    .await;
    let funnel = json!({"steps": ["Viewed", "Bought"], "window": "1d"});

    let (s, v) = query(&f, "shop", "funnel", Some(&api_key), funnel.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The anonymous view stitched to u1 counts with the purchase: one person converts.
    assert_eq!(v["steps"][0]["persons"], 2);
    assert_eq!(v["steps"][1]["persons"], 1);

    assert_eq!(
        query(&f, "shop", "funnel", None, funnel.clone()).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        query(&f, "shop", "funnel", Some("tl_wrong"), funnel.clone())
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        query(&f, "shop", "funnel", Some(&other.api_key), funnel.clone())
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // The write key is public and opens nothing.
    assert_eq!(
        query(&f, "shop", "funnel", Some(&f.key), funnel.clone())
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    let (s, v) = query(
        &f,
        "shop",
        "funnel",
        Some(&api_key),
        json!({"steps": ["Viewed"], "window": "0d"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap().contains("greater than zero"),
        "{v}"
    );
    let (s, _) = query(
        &f,
        "shop",
        "funnel",
        Some(&api_key),
        json!({"steps": ["Viewed"], "bogus": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = query(
        &f,
        "shop",
        "trends",
        Some(&api_key),
        json!({"events": ["Viewed"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["totals"][0]["persons"], 2);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let f = fixture("openapi");
    let resp = router(f.state.clone())
        .oneshot(
            Request::get("/api/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value =
        serde_json::from_slice(&to_bytes(resp.into_body(), 1 << 20).await.unwrap()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/health",
        "/metrics",
        "/v1/track",
        "/v1/identify",
        "/v1/page",
        "/v1/screen",
        "/v1/group",
        "/v1/alias",
        "/v1/batch",
        "/s/{token}",
    ] {
        assert!(paths.contains_key(p), "{p} undocumented");
    }
    for kind in [
        "funnel",
        "trends",
        "retention",
        "sessions",
        "paths",
        "assets",
        "attribution",
        "emotion",
        "fatigue",
        "audit",
    ] {
        assert!(
            paths.contains_key(&format!("/api/v1/projects/{{project}}/query/{kind}")),
            "{kind} undocumented"
        );
    }
    for p in [
        "/api/v1/projects/{project}/journeys",
        "/api/v1/projects/{project}/journeys/{name}",
        "/api/v1/projects/{project}/journeys/{name}/persons",
        "/api/v1/projects/{project}/journeys/backtest",
        "/api/v1/projects/{project}/suppressions",
        "/r/{token}",
        "/o/{token}.gif",
        "/u/{token}",
    ] {
        assert!(paths.contains_key(p), "{p} undocumented");
    }
    // Every $ref points at a schema that exists.
    let text = doc.to_string();
    for part in text.split("#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "dangling $ref {name}"
        );
    }
}

#[tokio::test]
async fn breakdowns_and_sessions_reconcile_with_totals() {
    let f = fixture("reconcile");
    let api_key = f.api_key.clone();
    let mut batch = Vec::new();
    for (i, (source, medium)) in [
        ("google", "cpc"),
        ("newsletter", "email"),
        ("", ""),
        ("google", "cpc"),
    ]
    .iter()
    .enumerate()
    {
        let url = if source.is_empty() {
            "https://shop.example/".to_string()
        } else {
            format!("https://shop.example/?utm_source={source}&utm_medium={medium}")
        };
        let anon = format!("d{i}");
        batch.push(json!({"type": "page", "anonymousId": anon, "timestamp": format!("2026-09-0{}T10:00:00Z", i + 1),
                          "context": {"page": {"url": url, "path": "/"}}}));
        batch.push(json!({"type": "track", "anonymousId": anon, "event": "Viewed", "timestamp": format!("2026-09-0{}T10:01:00Z", i + 1)}));
        if i % 2 == 0 {
            batch.push(json!({"type": "track", "anonymousId": anon, "event": "Bought", "timestamp": format!("2026-09-0{}T10:05:00Z", i + 1)}));
        }
    }
    post(
        &f,
        "/v1/batch",
        json!({"batch": batch}).to_string().into_bytes(),
        Some(&f.key),
        false,
    )
    .await;
    let (s, v) = query(
        &f,
        "shop",
        "funnel",
        Some(&api_key),
        json!({"steps": ["Viewed", "Bought"], "by": "channel"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for k in 0..2 {
        let sum: u64 = v["breakdown"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["steps"][k]["persons"].as_u64().unwrap())
            .sum();
        assert_eq!(
            sum,
            v["steps"][k]["persons"].as_u64().unwrap(),
            "step {k}: {v}"
        );
    }
    let paid = v["breakdown"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["value"] == "Paid Search")
        .unwrap();
    assert_eq!(paid["steps"][0]["persons"], 2);
    let (s, v) = query(
        &f,
        "shop",
        "sessions",
        Some(&api_key),
        json!({"by": "channel"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let sum: u64 = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sessions"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, v["total"]["sessions"].as_u64().unwrap());
    assert_eq!(v["total"]["sessions"], 4);
}

async fn get(f: &Fixture, path: &str, headers: &[(&str, &str)]) -> axum::response::Response {
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    router(f.state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

/// The dashboard is served from the binary: its page and modules with their content
/// types, the strict policy, and a 304 for a file the browser already has.
#[tokio::test]
async fn the_dashboard_is_served_with_types_a_strict_policy_and_etags() {
    let f = fixture("ui");
    let page = get(&f, "/", &[]).await;
    assert_eq!(page.status(), StatusCode::OK);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["content-security-policy"], crate::CONTENT_SECURITY_POLICY);
    assert!(crate::CONTENT_SECURITY_POLICY.contains("script-src 'self';"));
    assert!(!crate::CONTENT_SECURITY_POLICY.contains("unsafe"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    let body = to_bytes(page.into_body(), 1 << 20).await.unwrap();
    let html = String::from_utf8_lossy(&body);
    assert!(html.contains("/ui/app.js"), "{html}");
    assert!(!html.contains("<script>"), "no inline script: {html}");

    for (path, ty) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/views/funnel.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        (
            "/ui/vendor/echarts.min.js",
            "text/javascript; charset=utf-8",
        ),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let r = get(&f, path, &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], ty, "{path}");
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        let again = get(&f, path, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
    assert_eq!(
        get(&f, "/ui/nope.js", &[]).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&f, "/ui/../Cargo.toml", &[]).await.status(),
        StatusCode::NOT_FOUND
    );
}

async fn json_of(resp: axum::response::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// `whoami` names the key's project; the newest events and the catalog answer with
/// that key only, newest first and bounded.
#[tokio::test]
async fn whoami_recent_events_and_the_catalog_answer_with_the_api_key() {
    let f = fixture("recent");
    let api_key = f.api_key.clone();
    let bearer = format!("Bearer {api_key}");
    let body = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "Viewed", "timestamp": "2026-09-01T10:00:00Z"},
        {"type": "page", "userId": "u2", "name": "Home", "timestamp": "2026-09-01T12:00:00Z",
         "context": {"page": {"url": "https://x.example/?utm_source=news", "path": "/"}}},
        {"type": "track", "userId": "u1", "event": "Bought", "timestamp": "2026-09-01T11:00:00Z"}
    ]});
    post(
        &f,
        "/v1/batch",
        body.to_string().into_bytes(),
        Some(&f.key),
        false,
    )
    .await;

    let (s, v) = json_of(get(&f, "/api/v1/whoami", &[("authorization", &bearer)]).await).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"project": "shop"})));
    let (s, v) =
        json_of(get(&f, "/api/v1/whoami", &[("authorization", "Bearer tl_nope")]).await).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(
        get(&f, "/api/v1/whoami", &[]).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let recent = "/api/v1/projects/shop/events/recent?limit=2";
    let (s, v) = json_of(get(&f, recent, &[("authorization", &bearer)]).await).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["total_events"], 3);
    let names: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Home", "Bought"], "newest first: {v}");
    assert_eq!(v["events"][0]["utm_source"], "news");
    assert_eq!(v["events"][0]["person_id"], "u2");
    assert_eq!(
        get(&f, recent, &[]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    for bad in ["limit=0", "limit=100000", "limit=x", "offset=3"] {
        let path = format!("/api/v1/projects/shop/events/recent?{bad}");
        let (s, v) = json_of(get(&f, &path, &[("authorization", &bearer)]).await).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }

    let (s, v) = json_of(
        get(
            &f,
            "/api/v1/projects/shop/catalog",
            &[("authorization", &bearer)],
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["names"], json!(["Bought", "Home", "Viewed"]));
    assert_eq!(v["campaigns"], json!([]));
    assert_eq!(v["truncated"], false);
    let channels = v["channels"].as_array().unwrap();
    for c in [
        "Paid Search",
        "Organic Search",
        "Direct",
        "Email",
        "Unassigned",
    ] {
        assert!(channels.contains(&json!(c)), "{c} in {v}");
    }
}

fn fixture_with(tag: &str, config: Config) -> Fixture {
    let mut f = fixture(tag);
    f.state = AppState::new(f.state.store.clone(), config);
    f
}

#[tokio::test]
async fn a_write_key_over_its_request_rate_gets_429_with_retry_after_and_the_limit() {
    let mut config = Config::default();
    config.rate_limit.requests_per_second = 0.5;
    config.rate_limit.requests_burst = 2.0;
    let f = fixture_with("ratelimit", config);
    let msg = |id: &str| {
        serde_json::to_vec(&json!({"userId": "u", "event": "E", "messageId": id})).unwrap()
    };
    for id in ["a", "b"] {
        let (s, _) = post(&f, "/v1/track", msg(id), Some(&f.key), false).await;
        assert_eq!(s, StatusCode::OK);
    }
    let req = Request::post("/v1/track")
        .header("authorization", basic(&f.key))
        .body(Body::from(msg("c")))
        .unwrap();
    let resp = router(f.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        resp.headers()["retry-after"],
        "2",
        "one token in 2 s at 0.5/s"
    );
    let body: Value =
        serde_json::from_slice(&to_bytes(resp.into_body(), 1 << 16).await.unwrap()).unwrap();
    assert_eq!(body["limit"], "requests_per_second");
    assert_eq!(body["burst"], 2.0);
    assert_eq!(stored_ids(&f).len(), 2, "the refused message is not stored");
}

#[tokio::test]
async fn cors_preflight_answers_only_for_allowed_origins_and_never_on_the_query_api() {
    let f = fixture("cors");
    Catalog::set_cors_origins(&f.dir, "shop", &["https://shop.example".into()]).unwrap();
    let preflight = |path: &str, origin: &str| {
        Request::options(path)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .body(Body::empty())
            .unwrap()
    };
    let app = router(f.state.clone());
    let ok = app
        .clone()
        .oneshot(preflight("/v1/batch", "https://shop.example"))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(
        ok.headers()["access-control-allow-headers"],
        "authorization, content-type"
    );
    let other = app
        .clone()
        .oneshot(preflight("/v1/batch", "https://evil.example"))
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let api = app
        .clone()
        .oneshot(preflight(
            "/api/v1/projects/shop/query/funnel",
            "https://shop.example",
        ))
        .await
        .unwrap();
    assert!(api.headers().get("access-control-allow-origin").is_none());

    let track = |origin: &str| {
        Request::post("/v1/track")
            .header("authorization", basic(&f.key))
            .header("origin", origin)
            .body(Body::from(r#"{"userId":"u","event":"E"}"#))
            .unwrap()
    };
    let resp = app
        .clone()
        .oneshot(track("https://shop.example"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let resp = app.oneshot(track("https://evil.example")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert_eq!(stored_ids(&f).len(), 1);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let mut config = Config::default();
    config.http.body_read_timeout_ms = 200;
    let f = fixture_with("bodytimeout", config);
    let req = Request::post("/v1/track")
        .header("authorization", basic(&f.key))
        .body(Body::new(Stalled(false)))
        .unwrap();
    let resp = router(f.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(resp.headers()["connection"], "close");
}

/// A request body that sends one chunk and then nothing, as a slow client does.
struct Stalled(bool);

impl axum::body::HttpBody for Stalled {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if self.0 {
            return std::task::Poll::Pending;
        }
        self.0 = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(
            axum::body::Bytes::from_static(b"{\"userId\":"),
        ))))
    }
}
