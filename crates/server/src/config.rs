//! `--config FILE.toml`: every setting has a default, so the file holds only changes.

use std::path::Path;

use serde::Deserialize;
use throughline_identity::IdentityConfig;
use throughline_store::ProjectOptions;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub identity: IdentitySettings,
    pub clickhouse: ClickHouseConfig,
    pub query: QuerySettings,
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
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            inflight_requests_max: 4096,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub flush_bytes: usize,
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
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
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
            queue_requests_max: self.store.queue_requests_max,
            group_events_max: self.store.group_events_max,
            compact_segments_min: self.store.compact_segments_min,
            compact_rows_max: self.store.compact_rows_max,
            identity,
        }
    }
}
