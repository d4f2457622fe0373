//! Export: streams stored events, each with its person, to a writer in one of the formats.
//! It owns no policy about which events go out; the caller chooses and orders them.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use throughline_model::Event;

use crate::csv_rows::CsvWriter;
use crate::jsonl::JsonlWriter;
use crate::parquet_rows::ParquetWriter;
use crate::FormatError;

/// One exported row: the event plus the stitched person it belongs to.
#[derive(Clone, Copy, Debug)]
pub struct ExportRow<'a> {
    pub event: &'a Event,
    pub person_id: &'a str,
}

/// The formats an export can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    Jsonl,
    Csv,
    Parquet,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 3] = [
        ExportFormat::Jsonl,
        ExportFormat::Csv,
        ExportFormat::Parquet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
            ExportFormat::Parquet => "parquet",
        }
    }

    /// The file extension to name an export by, which import recognises again.
    pub fn extension(self) -> &'static str {
        self.as_str()
    }
}

impl FromStr for ExportFormat {
    type Err = FormatError;

    fn from_str(text: &str) -> Result<ExportFormat, FormatError> {
        ExportFormat::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| FormatError::UnknownFormat(text.to_string()))
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Streams rows to `out` in the format. JSONL and CSV write as they go; Parquet buffers
/// row groups of at most [`ROW_GROUP_ROWS_MAX`](crate::ROW_GROUP_ROWS_MAX) rows (and
/// [`ROW_GROUP_BYTES_MAX`](crate::ROW_GROUP_BYTES_MAX) bytes of text), so memory stays
/// bounded for any export size. Nothing is complete until [`Exporter::finish`]: Parquet
/// writes its footer there.
pub struct Exporter<W: Write + Send> {
    sink: Sink<W>,
    rows: u64,
}

// Boxed: the CSV and Parquet writers hold buffers far larger than the JSONL one.
enum Sink<W: Write + Send> {
    Jsonl(JsonlWriter<W>),
    Csv(Box<CsvWriter<W>>),
    Parquet(Box<ParquetWriter<W>>),
}

impl<W: Write + Send> Exporter<W> {
    pub fn new(format: ExportFormat, out: W) -> Result<Self, FormatError> {
        let sink = match format {
            ExportFormat::Jsonl => Sink::Jsonl(JsonlWriter::new(out)),
            ExportFormat::Csv => Sink::Csv(Box::new(CsvWriter::new(out)?)),
            ExportFormat::Parquet => Sink::Parquet(Box::new(ParquetWriter::new(out)?)),
        };
        Ok(Exporter { sink, rows: 0 })
    }

    pub fn write(&mut self, row: ExportRow) -> Result<(), FormatError> {
        match &mut self.sink {
            Sink::Jsonl(w) => w.write(row)?,
            Sink::Csv(w) => w.write(row)?,
            Sink::Parquet(w) => w.write(row)?,
        }
        self.rows += 1;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Completes the file (flushes buffers, writes the Parquet footer) and hands back `out`.
    pub fn finish(self) -> Result<W, FormatError> {
        let mut out = match self.sink {
            Sink::Jsonl(w) => w.finish()?,
            Sink::Csv(w) => w.finish()?,
            Sink::Parquet(w) => w.finish()?,
        };
        out.flush()?;
        Ok(out)
    }
}
