//! Import: a reader of Segment-shaped messages from a file, whatever its format.
//!
//! It only turns bytes into messages, numbered by line or row; validating them, giving
//! them a `receivedAt` and stitching them to a person is the server's work.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use serde_json::Value;

use crate::csv_rows::CsvReader;
use crate::jsonl::{JsonlReader, LINE_BYTES_MAX};
use crate::{parquet_rows, FormatError, RowError};

/// Imported messages, lazily: (line or row number from 1, the message or why it was
/// rejected). A bad row never stops the rows after it; only an unreadable file does, and
/// then [`RowError::Unreadable`] is the last item.
pub type Messages = Box<dyn Iterator<Item = (u64, Result<Value, RowError>)> + Send>;

/// The formats a file can be imported from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImportFormat {
    Jsonl,
    Csv,
    Parquet,
}

impl ImportFormat {
    /// The format a file's extension names: `.jsonl`, `.ndjson` or `.json` (one message per
    /// line), `.csv`, `.parquet`, and the first two gzip-compressed as `.jsonl.gz`,
    /// `.ndjson.gz`, `.json.gz` or `.csv.gz`. Case does not matter.
    pub fn from_path(path: &Path) -> Result<ImportFormat, FormatError> {
        detect(path).map(|(format, _)| format)
    }
}

/// The format and whether the file is gzip-compressed.
fn detect(path: &Path) -> Result<(ImportFormat, bool), FormatError> {
    let unknown = || FormatError::UnknownExtension(path.to_path_buf());
    let name = path
        .file_name()
        .ok_or_else(unknown)?
        .to_string_lossy()
        .to_ascii_lowercase();
    let (stem, gzip) = match name.strip_suffix(".gz") {
        Some(stem) => (stem, true),
        None => (name.as_str(), false),
    };
    let format = match stem.rsplit_once('.').map(|(_, extension)| extension) {
        Some("jsonl" | "ndjson" | "json") => ImportFormat::Jsonl,
        Some("csv") => ImportFormat::Csv,
        // Parquet compresses its pages itself, and its reader must seek.
        Some("parquet") if !gzip => ImportFormat::Parquet,
        _ => return Err(unknown()),
    };
    Ok((format, gzip))
}

/// Opens `path` for import in the format its extension names (see
/// [`ImportFormat::from_path`]). Fails now only if the file cannot be opened or its header
/// or schema does not follow the column mapping; rows are read as the iterator advances.
pub fn read_messages(path: &Path) -> Result<Messages, FormatError> {
    let (format, gzip) = detect(path)?;
    let file = File::open(path).map_err(|source| FormatError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if format == ImportFormat::Parquet {
        return parquet_rows::read(file);
    }
    if gzip {
        read_messages_from(MultiGzDecoder::new(BufReader::new(file)), format)
    } else {
        read_messages_from(file, format)
    }
}

/// Reads messages from a stream (standard input, an upload). JSONL and CSV only: Parquet
/// keeps its schema at the end of the file and needs [`read_messages`] on a file.
pub fn read_messages_from<R: Read + Send + 'static>(
    input: R,
    format: ImportFormat,
) -> Result<Messages, FormatError> {
    match format {
        ImportFormat::Jsonl => Ok(Box::new(JsonlReader::new(
            BufReader::with_capacity(64 * 1024, input),
            LINE_BYTES_MAX,
        ))),
        ImportFormat::Csv => Ok(Box::new(CsvReader::new(input)?)),
        ImportFormat::Parquet => Err(FormatError::ParquetNeedsFile),
    }
}
