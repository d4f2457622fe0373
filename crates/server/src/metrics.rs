//! `GET /metrics`: the process's counters in Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use throughline_store::metrics::{Histogram, SECONDS_BUCKETS, SIZE_BUCKETS};

use crate::AppState;

#[derive(Debug)]
pub struct ServerMetrics {
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    pub batch_messages: Histogram,
    pub request_seconds: Histogram,
    /// Connections accepted, open now, and closed for not sending a request head in time.
    pub connections: AtomicU64,
    pub connections_open: AtomicU64,
    pub header_timeouts: AtomicU64,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics {
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: Mutex::new(BTreeMap::new()),
            batch_messages: Histogram::new(SIZE_BUCKETS),
            request_seconds: Histogram::new(SECONDS_BUCKETS),
            connections: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
        }
    }
}

impl ServerMetrics {
    pub fn reject(&self, reason: &'static str, n: u64) {
        *self
            .rejected
            .lock()
            .expect("metrics lock")
            .entry(reason)
            .or_default() += n;
    }
}

pub async fn render(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let m = &state.metrics;
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    counter(
        &mut out,
        "throughline_events_accepted_total",
        "Messages stored durably.",
        m.accepted.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "throughline_events_duplicate_total",
        "Messages acknowledged but not stored again (messageId already stored).",
        m.duplicates.load(Ordering::Relaxed),
    );
    let _ = writeln!(out, "# HELP throughline_events_rejected_total Messages or requests refused, by reason.\n# TYPE throughline_events_rejected_total counter");
    for (reason, n) in m.rejected.lock().expect("metrics lock").iter() {
        let _ = writeln!(
            out,
            "throughline_events_rejected_total{{reason=\"{reason}\"}} {n}"
        );
    }
    counter(
        &mut out,
        "throughline_http_connections_total",
        "Connections accepted.",
        m.connections.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP throughline_http_connections_open Connections open now (at most http.connections_max).\n# TYPE throughline_http_connections_open gauge\nthroughline_http_connections_open {}",
        m.connections_open.load(Ordering::Relaxed)
    );
    counter(
        &mut out,
        "throughline_http_header_timeouts_total",
        "Connections closed for not sending a request head within http.header_read_timeout_ms.",
        m.header_timeouts.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP throughline_rate_limit_buckets Write keys with a rate limit bucket held now (at most rate_limit.buckets_max).\n# TYPE throughline_rate_limit_buckets gauge\nthroughline_rate_limit_buckets {}",
        state.rate_limits.buckets()
    );
    let _ = writeln!(out, "# HELP throughline_batch_messages Messages per request.\n# TYPE throughline_batch_messages histogram");
    m.batch_messages
        .render(&mut out, "throughline_batch_messages", "");
    let _ = writeln!(out, "# HELP throughline_request_seconds Collection request latency, including the fsync.\n# TYPE throughline_request_seconds histogram");
    m.request_seconds
        .render(&mut out, "throughline_request_seconds", "");

    let projects = state.store.projects();
    let _ = writeln!(out, "# HELP throughline_fsync_seconds Log fsync latency per group commit.\n# TYPE throughline_fsync_seconds histogram");
    for p in &projects {
        p.metrics.fsync_seconds.render(
            &mut out,
            "throughline_fsync_seconds",
            &format!("project=\"{}\"", p.name()),
        );
    }
    let _ = writeln!(out, "# HELP throughline_group_commit_events Events per fsync.\n# TYPE throughline_group_commit_events histogram");
    for p in &projects {
        p.metrics.group_commit_events.render(
            &mut out,
            "throughline_group_commit_events",
            &format!("project=\"{}\"", p.name()),
        );
    }
    let _ = writeln!(out, "# HELP throughline_stored_events Events stored per project.\n# TYPE throughline_stored_events gauge");
    for p in &projects {
        let _ = writeln!(
            out,
            "throughline_stored_events{{project=\"{}\"}} {}",
            p.name(),
            p.stats().events
        );
    }
    let _ = writeln!(out, "# HELP throughline_flushes_total Log folds into segments.\n# TYPE throughline_flushes_total counter");
    for p in &projects {
        let _ = writeln!(
            out,
            "throughline_flushes_total{{project=\"{}\"}} {}",
            p.name(),
            p.metrics.flushes.load(Ordering::Relaxed)
        );
    }
    if let Some(ch) = &state.clickhouse {
        let projects = ch.projects();
        let statuses: Vec<_> = projects
            .iter()
            .map(|p| (p.name.clone(), p.status()))
            .collect();
        for (name, help, kind, value) in [
            (
                "throughline_clickhouse_durable_events",
                "Events durable in the local outbox (its end).",
                "gauge",
                0,
            ),
            (
                "throughline_clickhouse_forwarded_events",
                "Events ClickHouse acknowledged (the forwarder's cursor).",
                "gauge",
                1,
            ),
            (
                "throughline_clickhouse_backlog_bytes",
                "Outbox bytes not yet in ClickHouse; past the bound ingestion answers 503.",
                "gauge",
                2,
            ),
            (
                "throughline_clickhouse_failed_inserts_total",
                "INSERTs into ClickHouse that failed and were retried.",
                "counter",
                3,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (project, s) in &statuses {
                let v = [
                    s.durable_seq,
                    s.forwarded_seq,
                    s.backlog_bytes,
                    s.failed_inserts,
                ][value];
                let _ = writeln!(out, "{name}{{project=\"{project}\"}} {v}");
            }
        }
    }
    if let Some(cache) = throughline_query::cache::global() {
        let c = cache.stats();
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "throughline_query_cache_bytes",
            "Bytes of verified segment columns kept in memory for queries.",
            c.bytes as u64,
        );
        gauge(
            &mut out,
            "throughline_query_cache_bytes_max",
            "The column cache's budget ([query] column_cache_bytes).",
            c.bytes_max as u64,
        );
        counter(
            &mut out,
            "throughline_query_cache_hits_total",
            "Column reads answered from memory.",
            c.hits,
        );
        counter(
            &mut out,
            "throughline_query_cache_misses_total",
            "Column reads that went to the segment file (and were checksummed).",
            c.misses,
        );
    }
    let _ = writeln!(out, "# HELP throughline_wal_failures_total Group commits whose log write or fsync failed (a full disk), answered 503.\n# TYPE throughline_wal_failures_total counter");
    for p in &projects {
        let _ = writeln!(
            out,
            "throughline_wal_failures_total{{project=\"{}\"}} {}",
            p.name(),
            p.metrics.wal_failures.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP throughline_flush_failures_total Segment writes that failed and were retried (a full disk).\n# TYPE throughline_flush_failures_total counter");
    for p in &projects {
        let _ = writeln!(
            out,
            "throughline_flush_failures_total{{project=\"{}\"}} {}",
            p.name(),
            p.metrics.flush_failures.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP throughline_compactions_total Segment merges.\n# TYPE throughline_compactions_total counter");
    for p in &projects {
        let _ = writeln!(
            out,
            "throughline_compactions_total{{project=\"{}\"}} {}",
            p.name(),
            p.metrics.compactions.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP throughline_flush_seconds Time to write and publish one segment from the log (background).\n# TYPE throughline_flush_seconds histogram");
    for p in &projects {
        p.metrics.flush_seconds.render(
            &mut out,
            "throughline_flush_seconds",
            &format!("project=\"{}\"", p.name()),
        );
    }
    let _ = writeln!(out, "# HELP throughline_compaction_seconds Time of one segment merge (background).\n# TYPE throughline_compaction_seconds histogram");
    for p in &projects {
        p.metrics.compaction_seconds.render(
            &mut out,
            "throughline_compaction_seconds",
            &format!("project=\"{}\"", p.name()),
        );
    }
    if let Some(o) = state.orchestrator.get() {
        out.push_str(&crate::orchestrate::api::metrics(o));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
