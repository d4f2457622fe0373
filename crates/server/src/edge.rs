//! The HTTP edge: the accept loop and what keeps slow or many clients from holding the
//! server. A bound on open connections (past it new connections wait in the kernel's listen
//! backlog), a deadline for each request head (hyper's `header_read_timeout`, which also
//! closes keep-alive connections idle that long) and a deadline for each request body (408).
//!
//! Nothing here looks at what a request means; the router does.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use crate::{AppError, AppState};

/// The largest body any route accepts (a Segment batch). Bodies are read up to one byte
/// more than this, so a route with a smaller limit still sees that its limit is exceeded
/// and answers its own 413 stating it.
pub const BODY_BYTES_MAX: usize = throughline_collect::BATCH_BYTES_MAX;

/// Middleware: reads the whole request body within `http.body_read_timeout_ms`, else 408.
/// A client trickling a body then holds a connection for that long at most.
pub async fn read_body_in_time(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let deadline = Duration::from_millis(state.config.http.body_read_timeout_ms);
    let read = async {
        let mut body = body;
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                buf.extend_from_slice(&data);
            }
            // Past the bound: hand on what was read, which exceeds every route's limit.
            if buf.len() > BODY_BYTES_MAX {
                buf.truncate(BODY_BYTES_MAX + 1);
                break;
            }
        }
        Ok::<_, axum::Error>(buf)
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => AppError::new(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}"),
        )
        .into_response(),
        Err(_) => {
            let e = AppError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms",
                    deadline.as_millis()
                ),
            );
            state.metrics.reject(e.reason(), 1);
            e.into_response()
        }
    }
}

/// Accepts connections on `listener` and serves `app` on them until `shutdown` resolves,
/// then lets open connections finish their requests.
pub async fn run(
    listener: TcpListener,
    app: Router,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let http = &state.config.http;
    let slots = Arc::new(Semaphore::new(http.connections_max));
    let header_timeout = Duration::from_millis(http.header_read_timeout_ms);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // Every connection task holds a clone; when all are dropped the last one has finished.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut stop = stop_rx.clone();
    loop {
        // A free slot first, then a connection: past the bound new connections wait.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("slots never closed"),
            _ = stop.changed() => break,
        };
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait and go on, never exit.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        state.metrics.connections.fetch_add(1, Ordering::Relaxed);
        state
            .metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        let app = app.clone();
        let state = state.clone();
        let mut stop = stop_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let mut req = req.map(Body::new);
                // The peer address reaches handlers that record who did what (audit log).
                req.extensions_mut().insert(ConnectInfo(remote));
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.oneshot(req).await.into_response()) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let mut conn = pin!(builder.serve_connection(TokioIo::new(tcp), service));
            let mut stopping = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            if e.is_timeout() {
                                state.metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(peer = %remote, "request head not received in time");
                            }
                        }
                        break;
                    }
                    _ = stop.changed(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            state
                .metrics
                .connections_open
                .fetch_sub(1, Ordering::Relaxed);
            drop(slot);
            drop(done);
        });
    }
    drop(listener);
    drop(done_tx);
    let _ = done_rx.recv().await;
}
