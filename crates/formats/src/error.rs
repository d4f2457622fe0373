//! The crate's errors: [`FormatError`] fails a whole export or import, [`RowError`] is the
//! reason one imported row was rejected while the rows after it still come out.
//!
//! They are two types on purpose: a `RowError` is data handed to the caller next to the
//! rows that did parse (like `collect`'s rejections), never a reason to stop.

use std::path::PathBuf;

/// An export or import that cannot go on: the file cannot be opened, its header does not
/// follow the column mapping, or the output cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("unknown format {0:?}: expected jsonl, csv or parquet")]
    UnknownFormat(String),
    #[error(
        "cannot tell the format of {0} from its extension: expected .jsonl, .ndjson, .json, \
         .csv, .parquet, .jsonl.gz, .ndjson.gz, .json.gz or .csv.gz"
    )]
    UnknownExtension(PathBuf),
    #[error("parquet needs a seekable file to read from, not a stream")]
    ParquetNeedsFile,
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "unknown column {0:?}: the mapping takes messageId, type, event, name, userId, \
         anonymousId, previousId, groupId, timestamp, originalTimestamp, sentAt, receivedAt, \
         person_id, properties, context, traits, properties.X, traits.X and context.X.Y"
    )]
    UnknownColumn(String),
    #[error("more than {0} columns")]
    TooManyColumns(usize),
    #[error("column {0:?} appears twice")]
    DuplicateColumn(String),
    #[error("unreadable csv header: {0}")]
    CsvHeader(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("csv error: {0}")]
    Csv(#[from] csv::Error),
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    /// A page header that does not fit its column chunk (see `parquet_pages`), found
    /// before any page is read.
    #[error("parquet column {column} (row group {row_group}): {reason}")]
    ParquetPage {
        column: String,
        row_group: usize,
        reason: String,
    },
    #[error("parquet error: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// Why one imported line or row did not become a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("invalid json: {0}")]
    Json(String),
    #[error("expected a json object, found {0}")]
    NotObject(&'static str),
    #[error("line is longer than {0} bytes")]
    LineTooLong(usize),
    #[error("expected {expected} cells as in the header, found {found}")]
    CellCount { expected: u64, found: u64 },
    #[error("column {column}: {reason}")]
    Column { column: String, reason: String },
    /// The file itself could not be read further (a truncated gzip stream, a corrupt
    /// Parquet page); the iterator ends after this one.
    #[error("unreadable file from here on: {0}")]
    Unreadable(String),
}

impl RowError {
    pub(crate) fn column(column: &str, reason: impl Into<String>) -> RowError {
        RowError::Column {
            column: column.to_string(),
            reason: reason.into(),
        }
    }
}
