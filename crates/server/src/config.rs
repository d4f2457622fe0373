//! `--config FILE.toml`: every setting has a default, so the file holds only changes.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use throughline_identity::IdentityConfig;
use throughline_store::ProjectOptions;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub rate_limit: RateLimitConfig,
    pub store: StoreConfig,
    pub identity: IdentitySettings,
    pub clickhouse: ClickHouseConfig,
    pub query: QuerySettings,
    pub orchestrate: crate::orchestrate::OrchestrateConfig,
}

/// `[clickhouse]`: the outbox and forwarder of `--backend clickhouse`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// Bytes durable locally but not yet in ClickHouse; beyond it ingestion answers 503.
    pub backlog_bytes_max: u64,
    /// Events per INSERT.
    pub batch_events_max: usize,
    /// Longest pause between two attempts of a failed INSERT.
    pub retry_ms_max: u64,
    /// Outbox log file size before a new one starts.
    pub log_file_bytes_max: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        let d = throughline_clickhouse::BackendOptions::default();
        ClickHouseConfig {
            backlog_bytes_max: d.outbox.backlog_bytes_max,
            batch_events_max: d.batch_events_max,
            retry_ms_max: d.retry_ms_max,
            log_file_bytes_max: d.outbox.log_file_bytes_max,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySettings {
    /// Memory for verified segment columns kept between queries (0 turns the cache off).
    pub column_cache_bytes: usize,
}

impl Default for QuerySettings {
    fn default() -> Self {
        QuerySettings {
            column_cache_bytes: 1 << 30,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub inflight_requests_max: usize,
    /// Open connections at once; past it new connections wait in the listen backlog.
    pub connections_max: usize,
    /// A connection that has not sent a whole request head within this time (from the
    /// connection's start, or from the end of its previous request) is closed.
    pub header_read_timeout_ms: u64,
    /// A request body not received in full within this time gets 408.
    pub body_read_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            inflight_requests_max: 4096,
            connections_max: 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
        }
    }
}

/// Token buckets per project write key on the collection API (`/v1/*`). A rate of 0 turns
/// that limit off. The defaults sit above what one server ingests on the reference machine
/// (BENCHMARKS.md: about 800 requests/s, 80k events/s), so they stop a runaway client
/// without slowing honest ones; lower them per project for fairness between projects.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_second: f64,
    pub requests_burst: f64,
    pub events_per_second: f64,
    pub events_burst: f64,
    /// Buckets kept at once; idle (full) buckets are evicted first.
    pub buckets_max: usize,
    /// Per-project overrides, by project name.
    pub projects: BTreeMap<String, RateLimitOverride>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            requests_per_second: 2_000.0,
            requests_burst: 4_000.0,
            events_per_second: 200_000.0,
            events_burst: 400_000.0,
            buckets_max: 10_000,
            projects: BTreeMap::new(),
        }
    }
}

/// A project's own limits; what it leaves out comes from `[rate_limit]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitOverride {
    pub requests_per_second: Option<f64>,
    pub requests_burst: Option<f64>,
    pub events_per_second: Option<f64>,
    pub events_burst: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub flush_bytes: usize,
    pub frozen_tables_max: usize,
    pub queue_requests_max: usize,
    pub group_events_max: usize,
    pub compact_segments_min: usize,
    pub compact_rows_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let d = ProjectOptions::default();
        StoreConfig {
            flush_bytes: d.flush_bytes,
            frozen_tables_max: d.frozen_tables_max,
            queue_requests_max: d.queue_requests_max,
            group_events_max: d.group_events_max,
            compact_segments_min: d.compact_segments_min,
            compact_rows_max: d.compact_rows_max,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySettings {
    /// Replaces the built-in list of ids that never merge.
    pub junk_ids: Option<Vec<String>>,
    pub anonymous_ids_per_person_max: usize,
    pub emails_per_person_max: usize,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        let d = IdentityConfig::default();
        IdentitySettings {
            junk_ids: None,
            anonymous_ids_per_person_max: d.anonymous_ids_per_person_max,
            emails_per_person_max: d.emails_per_person_max,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("invalid config {path}: {why}")]
    Invalid { path: String, why: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        config.validate().map_err(|why| ConfigError::Invalid {
            path: path.display().to_string(),
            why,
        })?;
        Ok(config)
    }

    /// Settings that parse but cannot work.
    pub fn validate(&self) -> Result<(), String> {
        let h = &self.http;
        if h.connections_max == 0 || h.inflight_requests_max == 0 {
            return Err(
                "http.connections_max and http.inflight_requests_max must be at least 1".into(),
            );
        }
        if h.header_read_timeout_ms == 0 || h.body_read_timeout_ms == 0 {
            return Err("http timeouts must be at least 1 ms".into());
        }
        let r = &self.rate_limit;
        let mut rates = vec![(
            "rate_limit".to_string(),
            [
                r.requests_per_second,
                r.requests_burst,
                r.events_per_second,
                r.events_burst,
            ],
        )];
        for (name, o) in &r.projects {
            rates.push((
                format!("rate_limit.projects.{name}"),
                [
                    o.requests_per_second.unwrap_or(0.0),
                    o.requests_burst.unwrap_or(1.0),
                    o.events_per_second.unwrap_or(0.0),
                    o.events_burst.unwrap_or(1.0),
                ],
            ));
        }
        for (section, [rps, rb, eps, eb]) in rates {
            if [rps, eps].iter().any(|v| !v.is_finite() || *v < 0.0)
                || [rb, eb].iter().any(|v| !v.is_finite() || *v < 1.0)
            {
                return Err(format!(
                    "{section}: rates must be >= 0 (0 turns a limit off) and bursts >= 1"
                ));
            }
        }
        if r.buckets_max == 0 {
            return Err("rate_limit.buckets_max must be at least 1".into());
        }
        Ok(())
    }

    /// The ClickHouse backend's options these settings describe.
    pub fn clickhouse_options(&self) -> throughline_clickhouse::BackendOptions {
        let d = throughline_clickhouse::BackendOptions::default();
        let store = self.project_options();
        throughline_clickhouse::BackendOptions {
            outbox: throughline_clickhouse::outbox::OutboxOptions {
                queue_requests_max: store.queue_requests_max,
                group_events_max: store.group_events_max,
                backlog_bytes_max: self.clickhouse.backlog_bytes_max,
                log_file_bytes_max: self.clickhouse.log_file_bytes_max,
            },
            batch_events_max: self.clickhouse.batch_events_max.max(1),
            retry_ms_max: self.clickhouse.retry_ms_max.max(1),
            identity: store.identity,
            ..d
        }
    }

    /// The store options these settings describe.
    pub fn project_options(&self) -> ProjectOptions {
        let mut identity = IdentityConfig::default();
        if let Some(junk) = &self.identity.junk_ids {
            identity.junk_ids = junk.clone();
        }
        identity.anonymous_ids_per_person_max = self.identity.anonymous_ids_per_person_max;
        identity.emails_per_person_max = self.identity.emails_per_person_max;
        ProjectOptions {
            flush_bytes: self.store.flush_bytes,
            frozen_tables_max: self.store.frozen_tables_max,
            queue_requests_max: self.store.queue_requests_max,
            group_events_max: self.store.group_events_max,
            compact_segments_min: self.store.compact_segments_min,
            compact_rows_max: self.store.compact_rows_max,
            identity,
        }
    }
}
