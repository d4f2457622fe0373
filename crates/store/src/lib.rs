//! The embedded store: a data directory holding many projects, each with a write-ahead log
//! feeding immutable columnar segments sorted by (person, timestamp).
//!
//! ```text
//! DIR/LOCK                      held (flock) by the one process that writes DIR
//! DIR/catalog.json              projects and their keys (api keys as SHA-256)
//! DIR/audit.jsonl               who created, re-keyed or erased what, when, from where
//! DIR/projects/NAME/wal/        numbered, checksummed logs: what is acknowledged
//! DIR/projects/NAME/segments/   immutable sorted column files
//! DIR/projects/NAME/MANIFEST    which segments and identity snapshot are live, and
//!                               the first log file not yet folded into segments
//! ```
//!
//! What "acknowledged" promises: [`ProjectStore::append`] reports success only after the
//! events' log records are fsynced, so they survive `kill -9` and power loss; a message id
//! the project already stored is reported as a duplicate and not stored again, before and
//! after a crash, because deduplication state is rebuilt from what is on disk. The store
//! never interprets events beyond ids, time and name: channels, sessions and funnels live
//! in the query layer.

pub mod audit;
mod bloom;
mod catalog;
mod fsutil;
mod lock;
pub mod metrics;
mod project;
mod segment;
mod wal;

#[cfg(test)]
mod testutil;

use std::path::{Path, PathBuf};

pub use catalog::{api_key_hash, now_ms, random_seed, Catalog, IssuedKeys, ProjectInfo};
pub use lock::DirLock;
pub use project::{
    AppendOutcome, Encoded, LogRow, ProjectOptions, ProjectStore, Snapshot, StoreStats,
};
pub use segment::{ColumnReader, Segment, NO_VALUE};
pub use store::Store;

mod store;

/// Deduplication key of a message id: 128 bits, so collisions stay out of reach at any
/// realistic event count.
pub fn message_hash(message_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(message_id.as_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is corrupt: {why}", file.display())]
    Corrupt { file: PathBuf, why: String },
    #[error("data directory {} is in use by process {holder} (a running `throughline serve`?); stop it first", dir.display())]
    Locked { dir: PathBuf, holder: String },
    #[error("no project named {0:?}")]
    NoProject(String),
    #[error("a project named {0:?} already exists")]
    ProjectExists(String),
    #[error("invalid project name {0:?}: use 1-64 characters a-z, 0-9, '-' or '_'")]
    BadProjectName(String),
    #[error("the write queue is full; retry later")]
    Overloaded,
    #[error("the store is shutting down")]
    Closed,
    #[error("the log could not be made durable: {0}")]
    WalFailed(String),
}

impl StoreError {
    pub fn io(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether retrying later can succeed (overload, a full disk): HTTP 503, not 500.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Overloaded | StoreError::WalFailed(_) | StoreError::Closed
        )
    }
}

#[cfg(test)]
mod tests;
