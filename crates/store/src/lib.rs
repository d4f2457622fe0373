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
//!                               the first log file not yet folded into segments; the
//!                               store format version and a checksum (`manifest`)
//! ```
//!
//! What "acknowledged" promises: [`ProjectStore::append`] reports success only after the
//! events' log records are fsynced, so they survive `kill -9` and power loss; a message id
//! the project already stored is reported as a duplicate and not stored again, before and
//! after a crash, because deduplication state is rebuilt from what is on disk. Flushes
//! and compactions run on their own threads and publish through the manifest, so they
//! never hold up a group commit and a crash during either loses and duplicates nothing. The store
//! never interprets events beyond ids, time and name: channels, sessions and funnels live
//! in the query layer.

pub mod audit;
pub mod backup;
mod batch;
mod bloom;
mod catalog;
pub mod check;
mod fsutil;
mod idhash;
mod idlog;
mod lock;
mod maintenance;
pub mod manifest;
mod memtable;
pub mod metrics;
pub mod numbers;
mod project;
mod rare;
mod segment;
mod tail;
mod wal;
mod writer;

#[cfg(test)]
mod testutil;

use std::path::{Path, PathBuf};

pub use batch::EventBatch;
pub use catalog::{
    api_key_hash, normalize_origin, now_ms, random_seed, Catalog, IssuedKeys, ProjectInfo,
    CORS_ORIGINS_MAX,
};
pub use lock::DirLock;
pub use project::{
    AppendOutcome, Erase, LogRow, ProjectOptions, ProjectStore, Snapshot, StoreStats,
};
pub use segment::{ColumnReader, Segment, NO_VALUE};
pub use store::Store;
pub use tail::{Tail, TailFilter};

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
    #[error("{} was written by a newer Throughline (store format {found}; this binary reads up to {supported}): upgrade throughline to open it", file.display())]
    NewerFormat {
        file: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("no project named {0:?}")]
    NoProject(String),
    #[error("a project named {0:?} already exists")]
    ProjectExists(String),
    #[error("invalid project name {0:?}: use 1-64 characters a-z, 0-9, '-' or '_'")]
    BadProjectName(String),
    #[error("invalid origin {0:?}: use scheme://host[:port] (http or https, no path) or *")]
    BadOrigin(String),
    #[error("the write queue is full; retry later")]
    Overloaded,
    #[error("the store is shutting down")]
    Closed,
    #[error("the log could not be made durable: {0}")]
    WalFailed(String),
    #[error("writing a segment failed: {0}")]
    FlushFailed(String),
    #[error("an event record of {bytes} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { bytes: usize, max: usize },
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
            StoreError::Overloaded
                | StoreError::WalFailed(_)
                | StoreError::FlushFailed(_)
                | StoreError::Closed
        )
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod faults_tests;
