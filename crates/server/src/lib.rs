//! The server: configuration, the HTTP router and the process's metrics.
//!
//! `router(state)` is the whole HTTP surface, testable without a socket; `serve` binds it
//! and shuts down gracefully, letting the store's writers answer everything queued.

mod config;
mod error;
mod ingest;
mod metrics;
mod query;
mod survey;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use throughline_collect::IdGen;
use throughline_store::Store;
use tokio::sync::Semaphore;

pub use config::{Config, ConfigError};
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
            config,
            ids_base: throughline_store::random_seed(),
            ids_next: std::sync::atomic::AtomicU64::new(0),
        })
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
            .route(&format!("/v1/{long}"), post(ingest::collect))
            .route(&format!("/v1/{short}"), post(ingest::collect));
    }
    r.route("/v1/import", post(ingest::collect))
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
        .fallback(not_found)
        .with_state(state)
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
    tracing::info!(addr = %listener.local_addr()?, "accepting events");
    let app = router(state.clone());
    // The peer address reaches handlers that record who did what (the audit log).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    let store = state.store.clone();
    let clickhouse = state.clickhouse.clone();
    tokio::task::spawn_blocking(move || {
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
