//! The open file formats of import and export: JSON Lines, CSV and Parquet.
//!
//! Export turns stored [`Event`](throughline_model::Event)s, each with the person it was
//! stitched to, into a file any tool reads ([`Exporter`]). Import turns a file into the
//! Segment-shaped messages a client would have sent ([`read_messages`]), so they go through
//! the same validation as live traffic. CSV and Parquet share one column mapping, written
//! down in [`mapping`] and in this crate's README, because users build files by it.
//!
//! This crate does no validation, storage or identity work, and it never loads a whole
//! file: export holds at most one Parquet row group, import reads row by row.

mod csv_rows;
mod error;
mod export;
mod import;
mod jsonl;
pub mod mapping;
mod parquet_pages;
mod parquet_rows;

pub use error::{FormatError, RowError};
pub use export::{ExportFormat, ExportRow, Exporter};
pub use import::{read_messages, read_messages_from, ImportFormat, Messages};
pub use jsonl::LINE_BYTES_MAX;
pub use mapping::{COLUMNS, COLUMNS_MAX};
pub use parquet_pages::PARQUET_PAGE_BYTES_MAX;
pub use parquet_rows::{export_schema, ROW_GROUP_BYTES_MAX, ROW_GROUP_ROWS_MAX};

#[cfg(test)]
mod tests;
