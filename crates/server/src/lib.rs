//! The server: configuration, the HTTP router and the process's metrics.
//!
//! `router(state)` is the whole HTTP surface, testable without a socket; `serve` binds it
//! (through `edge`, which bounds connections and slow clients) and shuts down gracefully,
//! letting the store's writers answer everything queued.

mod config;
mod cors;
mod edge;
mod error;
mod ingest;
mod metrics;
pub mod orchestrate;
mod query;
mod ratelimit;
mod survey;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use throughline_collect::IdGen;
use throughline_store::Store;
use tokio::sync::Semaphore;

pub use config::{Config, ConfigError, RateLimitConfig, RateLimitOverride};
pub use error::AppError;
pub use metrics::ServerMetrics;
pub use ui::CONTENT_SECURITY_POLICY;

/// What every handler shares.
pub struct AppState {
    pub store: Arc<Store>,
    /// With `--backend clickhouse`: events go to its outbox and queries read ClickHouse;
    /// the store still holds the catalog, keys and per-project files.
    pub clickhouse: Option<Arc<throughline_clickhouse::Backend>>,
    pub metrics: ServerMetrics,
    pub config: Config,
    /// Seeds per-request id generators: `ids_base + n` is unique per request, so requests
    /// parse in parallel without sharing a generator.
    ids_base: u64,
    ids_next: std::sync::atomic::AtomicU64,
    /// Requests being handled at once; beyond it the server answers 503 instead of queueing.
    inflight: Semaphore,
    /// The journeys' runtime, once started (by `serve`, or a test).
    pub orchestrator: std::sync::OnceLock<Arc<orchestrate::Orchestrator>>,
    /// Per write key token buckets of the collection API.
    rate_limits: ratelimit::RateLimiter,
}

impl AppState {
    pub fn new(store: Arc<Store>, config: Config) -> Arc<AppState> {
        AppState::with_backend(store, config, None)
    }

    /// The state of a server whose events live in ClickHouse (`clickhouse`) or, without
    /// it, in the embedded store.
    pub fn with_backend(
        store: Arc<Store>,
        config: Config,
        clickhouse: Option<Arc<throughline_clickhouse::Backend>>,
    ) -> Arc<AppState> {
        Arc::new(AppState {
            store,
            clickhouse,
            metrics: ServerMetrics::default(),
            inflight: Semaphore::new(config.http.inflight_requests_max),
            rate_limits: ratelimit::RateLimiter::new(config.rate_limit.clone()),
            config,
            ids_base: throughline_store::random_seed(),
            ids_next: std::sync::atomic::AtomicU64::new(0),
            orchestrator: std::sync::OnceLock::new(),
        })
    }

    /// Starts the journeys' runtime over this state's store (once). Not on the ClickHouse
    /// backend: the store it reads would hold none of the events (the journeys API says so).
    pub fn start_orchestrator(&self) -> Result<(), orchestrate::RuntimeError> {
        if self.config.orchestrate.enabled
            && self.clickhouse.is_none()
            && self.orchestrator.get().is_none()
        {
            let o = orchestrate::Orchestrator::start(
                self.store.clone(),
                self.config.orchestrate.clone(),
            )?;
            let _ = self.orchestrator.set(o);
        }
        Ok(())
    }
}

impl AppState {
    /// An id generator for one request's messages that arrive without a messageId.
    pub fn id_generator(&self) -> IdGen {
        let n = self
            .ids_next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        IdGen::new(self.ids_base.wrapping_add(n))
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new()
        .route("/health", get(ingest::health))
        .route("/metrics", get(metrics::render));
    // Segment's paths, and the one-letter forms analytics.js posts to.
    for (long, short) in [
        ("track", "t"),
        ("identify", "i"),
        ("page", "p"),
        ("screen", "s"),
        ("group", "g"),
        ("alias", "a"),
        ("batch", "b"),
    ] {
        r = r
            .route(
                &format!("/v1/{long}"),
                post(ingest::collect).options(cors::preflight),
            )
            .route(
                &format!("/v1/{short}"),
                post(ingest::collect).options(cors::preflight),
            );
    }
    r.route("/v1/import", post(ingest::collect).options(cors::preflight))
        .route("/", get(ui::index))
        .route("/ui/{*path}", get(ui::file))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/whoami", get(query::whoami))
        .route(
            "/api/v1/projects/{project}/events/recent",
            get(query::recent),
        )
        .route("/api/v1/projects/{project}/catalog", get(query::catalog))
        .route("/api/v1/projects/{project}/query/{kind}", post(query::run))
        .route(
            "/api/v1/projects/{project}/persons/{id}",
            get(query::person).delete(query::delete_person),
        )
        .route("/s/{token}", get(survey::show).post(survey::answer))
        .merge(journey_routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::read_body_in_time,
        ))
        .with_state(state)
}

/// Journeys, tracked links, opens, unsubscribes and the test clock (`orchestrate`).
fn journey_routes() -> Router<Arc<AppState>> {
    use orchestrate::{api, links};
    Router::new()
        .route(
            "/api/v1/projects/{project}/journeys",
            get(api::list_journeys).post(api::create),
        )
        .route(
            "/api/v1/projects/{project}/journeys/validate",
            post(api::validate),
        )
        .route(
            "/api/v1/projects/{project}/journeys/backtest",
            post(api::run_backtest),
        )
        .route("/api/v1/projects/{project}/journeys/{name}", get(api::show))
        .route(
            "/api/v1/projects/{project}/journeys/{name}/persons",
            get(api::persons_at),
        )
        .route(
            "/api/v1/projects/{project}/journeys/{name}/{action}",
            post(api::set_status),
        )
        .route(
            "/api/v1/projects/{project}/suppressions",
            get(api::suppressions).post(api::suppress),
        )
        .route("/api/v1/admin/clock", get(api::clock).post(api::clock))
        .route("/r/{token}", get(links::click))
        .route("/o/{file}", get(links::pixel))
        .route(
            "/u/{token}",
            get(links::unsubscribe_get).post(links::unsubscribe_post),
        )
}

/// The OpenAPI 3.1 document of every endpoint, kept beside the router it describes.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::new(
        axum::http::StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

/// Binds `listen` and serves until SIGINT or SIGTERM, then closes the store.
pub async fn serve(state: Arc<AppState>, listen: SocketAddr) -> std::io::Result<()> {
    // A server answers many queries over the same immutable segments: keep their verified
    // columns in memory between queries.
    if state.config.query.column_cache_bytes > 0 {
        throughline_query::cache::configure(state.config.query.column_cache_bytes);
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    {
        let st = state.clone();
        tokio::task::spawn_blocking(move || st.start_orchestrator())
            .await
            .map_err(std::io::Error::other)?
            .map_err(|e| std::io::Error::other(format!("journeys: {e}")))?;
    }
    tracing::info!(addr = %listener.local_addr()?, "accepting events");
    let app = router(state.clone());
    edge::run(listener, app, state.clone(), shutdown_signal()).await;
    let store = state.store.clone();
    let clickhouse = state.clickhouse.clone();
    let orchestrator = state.orchestrator.get().cloned();
    tokio::task::spawn_blocking(move || {
        if let Some(o) = orchestrator {
            o.shutdown();
        }
        if let Some(ch) = clickhouse {
            ch.close();
        }
        store.close()
    })
    .await
    .ok();
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// The socket address to bind, e.g. for `--listen`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not HOST:PORT with an IP host, e.g. 127.0.0.1:8080"))
}

#[cfg(test)]
mod tests;
