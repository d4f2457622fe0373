//! The ClickHouse backend: events, the identity mapping and profiles kept in ClickHouse
//! (one server, or a cluster of shards), with the durability point kept local.
//!
//! ```text
//! HTTP ingest ─► outbox (local WAL, fsynced: the 200) ─► forwarder ─► ClickHouse
//!                   │  dedupe by message hash                │  identity graph in
//!                   │  bounded backlog, then 503             │  outbox order; INSERT,
//!                   └─ CURSOR: what ClickHouse acknowledged ◄┘  then advance the cursor
//! queries ─► source (rows sorted by person, time, arrival) ─► Throughline's kernels
//! ```
//!
//! Exactly once by construction: the cursor advances only after an INSERT succeeded, and a
//! record replayed after a crash or a lost answer becomes the very same row (same `seq`,
//! same person, same everything), which `ReplacingMergeTree` folds and every read
//! deduplicates by `seq`. What this crate never does: interpret events beyond what the
//! embedded store does, or decide what an analysis means (crates/query does).

pub mod client;
pub mod dedupe;
pub mod erase;
pub mod fold;
pub mod forward;
pub mod migrate;
pub mod outbox;
pub mod rowbinary;
pub mod schema;
pub mod source;
pub mod sql;

use std::path::{Path, PathBuf};

pub use client::Client;
pub use forward::{Backend, BackendOptions, EraseStep, Project};
pub use schema::Target;

#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    #[error("ClickHouse at {url} is unreachable: {error}")]
    Transport { url: String, error: String },
    #[error("ClickHouse at {url} answered {status}: {message}")]
    Server {
        url: String,
        status: u16,
        code: u32,
        message: String,
    },
    #[error("unexpected answer from ClickHouse: {0}")]
    Decode(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is corrupt: {why}", file.display())]
    Corrupt { file: PathBuf, why: String },
    #[error("{backlog_bytes} bytes wait to reach ClickHouse (the bound); retry later")]
    Backlog { backlog_bytes: u64 },
    #[error("the write queue is full; retry later")]
    Overloaded,
    #[error("the outbox is shutting down")]
    Closed,
    #[error("the erasure did not finish within {waited_ms} ms (ClickHouse is slow or away); it goes on, and asking again answers 404 once it is done")]
    ErasureRunning { waited_ms: u64 },
    #[error("the outbox log could not be made durable: {0}")]
    WalFailed(String),
    #[error(transparent)]
    Store(#[from] throughline_store::StoreError),
}

impl ClickHouseError {
    pub fn io(path: &Path, source: std::io::Error) -> ClickHouseError {
        ClickHouseError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether retrying later can succeed: HTTP 503 with Retry-After, not 500.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClickHouseError::Backlog { .. }
                | ClickHouseError::Overloaded
                | ClickHouseError::Closed
                | ClickHouseError::ErasureRunning { .. }
                | ClickHouseError::WalFailed(_)
                | ClickHouseError::Transport { .. }
        )
    }
}
