//! Parquet laid out by the shared column mapping (see [`crate::mapping`]), written with the
//! low-level column writers and read with the row reader, one row group at a time.
//!
//! Every column is `OPTIONAL BYTE_ARRAY (UTF8)` but `timestamp`, an
//! `INT64 (TIMESTAMP(MILLIS,true))`, so DuckDB, pyarrow and Spark see a real timestamp.
//! Export holds at most one row group in memory; import never reads the whole file.
//!
//! The `parquet` crate panics on some corrupt files (found by `crates/fuzz`: a mutated
//! page makes its bit reader slice out of range), so opening a file and reading each row
//! run under `catch_unwind`, and such a panic becomes the same error a corrupt page gives.
//! It also trusts the sizes in page headers, so those are checked first
//! ([`crate::parquet_pages`]).

use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, TimeUnit, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::reader::RowIter;
use parquet::record::Field;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::Type;
use serde_json::{Map, Number, Value};

use crate::mapping::{export_cells, Cell, Plan, Target, COLUMNS, TIMESTAMP_COLUMN, TIME_FIELDS};
use crate::{ExportRow, FormatError, Messages, RowError};

/// Rows in one exported row group: what the writer holds in memory at most.
pub const ROW_GROUP_ROWS_MAX: usize = 65_536;
/// Bytes of cell text in one exported row group, so wide `properties` also stay bounded.
pub const ROW_GROUP_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The Parquet schema of an export, derived from [`COLUMNS`].
pub fn export_schema() -> String {
    let mut schema = String::from("message segment_event {\n");
    for (index, column) in COLUMNS.iter().enumerate() {
        if index == TIMESTAMP_COLUMN {
            schema.push_str(&format!(
                "  OPTIONAL INT64 {column} (TIMESTAMP(MILLIS,true));\n"
            ));
        } else {
            schema.push_str(&format!("  OPTIONAL BYTE_ARRAY {column} (UTF8);\n"));
        }
    }
    schema.push('}');
    schema
}

/// The buffered values of one column for the row group being built.
enum Buffer {
    Text {
        values: Vec<ByteArray>,
        levels: Vec<i16>,
    },
    Millis {
        values: Vec<i64>,
        levels: Vec<i16>,
    },
}

pub(crate) struct ParquetWriter<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    buffers: Vec<Buffer>,
    rows: usize,
    bytes: usize,
}

impl<W: Write + Send> ParquetWriter<W> {
    pub(crate) fn new(out: W) -> Result<ParquetWriter<W>, FormatError> {
        let schema = Arc::new(parse_message_type(&export_schema())?);
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("throughline {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = SerializedFileWriter::new(out, schema, Arc::new(properties))?;
        let buffers = (0..COLUMNS.len())
            .map(|index| match index {
                TIMESTAMP_COLUMN => Buffer::Millis {
                    values: Vec::new(),
                    levels: Vec::new(),
                },
                _ => Buffer::Text {
                    values: Vec::new(),
                    levels: Vec::new(),
                },
            })
            .collect();
        Ok(ParquetWriter {
            writer,
            buffers,
            rows: 0,
            bytes: 0,
        })
    }

    pub(crate) fn write(&mut self, row: ExportRow<'_>) -> Result<(), FormatError> {
        let cells = export_cells(&row);
        for (buffer, cell) in self.buffers.iter_mut().zip(cells) {
            match buffer {
                Buffer::Millis { values, levels } => {
                    // Not the text of the cell: the typed time, so readers see a timestamp.
                    values.push(row.event.timestamp);
                    levels.push(1);
                    self.bytes += 8;
                }
                Buffer::Text { values, levels } => match cell {
                    Some(text) => {
                        self.bytes += text.len();
                        values.push(ByteArray::from(text.into_bytes()));
                        levels.push(1);
                    }
                    None => levels.push(0),
                },
            }
        }
        self.rows += 1;
        if self.rows >= ROW_GROUP_ROWS_MAX || self.bytes >= ROW_GROUP_BYTES_MAX {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn flush_row_group(&mut self) -> Result<(), FormatError> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        for buffer in &mut self.buffers {
            let mut column = group
                .next_column()?
                .expect("the schema has one column per buffer");
            match buffer {
                Buffer::Text { values, levels } => {
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(values, Some(levels), None)?;
                    values.clear();
                    levels.clear();
                }
                Buffer::Millis { values, levels } => {
                    column
                        .typed::<Int64Type>()
                        .write_batch(values, Some(levels), None)?;
                    values.clear();
                    levels.clear();
                }
            }
            column.close()?;
        }
        group.close()?;
        self.rows = 0;
        self.bytes = 0;
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<W, FormatError> {
        self.flush_row_group()?;
        let mut out = self.writer.into_inner()?;
        out.flush()?;
        Ok(out)
    }
}

/// Opens a Parquet file for import: reads its footer and schema and checks every page
/// header now (see [`crate::parquet_pages`]), its rows lazily.
pub(crate) fn read(file: File) -> Result<Messages, FormatError> {
    let reader = unpanic(|| SerializedFileReader::new(file.try_clone()?))?;
    crate::parquet_pages::check(&file, reader.metadata())?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let fields = schema.root_schema().get_fields();
    let plan = Plan::new(fields.iter().map(|f| f.name()))?;
    let time_units = fields
        .iter()
        .enumerate()
        .map(|(index, field)| time_unit_ms(field, plan.target(index)))
        .collect();
    Ok(Box::new(ParquetRows {
        rows: RowIter::from_file_into(Box::new(reader)),
        plan,
        time_units,
        row: 0,
        done: false,
    }))
}

/// Runs a call into the `parquet` crate, turning its panic on a corrupt file into an error.
fn unpanic<T>(f: impl FnOnce() -> Result<T, ParquetError>) -> Result<T, ParquetError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| Err(corrupt(panic)))
}

fn corrupt(panic: Box<dyn std::any::Any + Send>) -> ParquetError {
    let why = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    ParquetError::General(format!("corrupt parquet file ({why})"))
}

/// How many units of an `INT64` column make a millisecond, when the column holds a time.
///
/// Timestamps in millis and micros come out of the row reader typed; nanoseconds and
/// plain integers come out as `Long`, so their unit is settled here from the schema.
fn time_unit_ms(field: &Type, target: &Target) -> Option<i64> {
    if !field.is_primitive() || field.get_physical_type() != PhysicalType::INT64 {
        return None;
    }
    match field.get_basic_info().logical_type_ref() {
        Some(LogicalType::Timestamp(t)) => Some(match t.unit {
            TimeUnit::MILLIS => 1,
            TimeUnit::MICROS => 1_000,
            TimeUnit::NANOS => 1_000_000,
        }),
        _ => match target {
            Target::Text(field) if TIME_FIELDS.contains(field) => Some(1),
            _ => None,
        },
    }
}

struct ParquetRows {
    rows: RowIter<'static>,
    plan: Plan,
    time_units: Vec<Option<i64>>,
    row: u64,
    done: bool,
}

impl Iterator for ParquetRows {
    type Item = (u64, Result<Value, RowError>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rows = &mut self.rows;
        let next = match catch_unwind(AssertUnwindSafe(|| rows.next())) {
            Ok(next) => next,
            Err(panic) => Some(Err(corrupt(panic))),
        };
        self.row += 1;
        match next {
            None => {
                self.done = true;
                None
            }
            Some(Ok(row)) => {
                let cells = row
                    .into_columns()
                    .into_iter()
                    .zip(&self.time_units)
                    .map(|((_, field), unit)| cell(field, *unit));
                Some((self.row, self.plan.message(cells)))
            }
            // The row reader cannot skip past a page it failed to decode (it would retry
            // the same row group forever), so this is the last item.
            Some(Err(e)) => {
                self.done = true;
                Some((self.row, Err(RowError::Unreadable(e.to_string()))))
            }
        }
    }
}

fn cell(field: Field, time_unit_ms: Option<i64>) -> Cell<'static> {
    match (field, time_unit_ms) {
        (Field::Null, _) => Cell::Empty,
        (Field::Str(text), _) => Cell::Text(Cow::Owned(text)),
        (Field::TimestampMillis(ms), _) => Cell::Millis(ms),
        (Field::TimestampMicros(us), _) => Cell::Millis(us.div_euclid(1_000)),
        (Field::Long(n), Some(unit)) => Cell::Millis(n.div_euclid(unit)),
        (Field::Date(days), _) => Cell::Millis(i64::from(days) * 86_400_000),
        (field, _) => Cell::Typed(json(field)),
    }
}

/// A typed Parquet value as JSON, for numbers, booleans and nested columns.
fn json(field: Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(b),
        Field::Byte(n) => n.into(),
        Field::Short(n) => n.into(),
        Field::Int(n) => n.into(),
        Field::Long(n) => n.into(),
        Field::UByte(n) => n.into(),
        Field::UShort(n) => n.into(),
        Field::UInt(n) => n.into(),
        Field::ULong(n) => n.into(),
        Field::Float(x) => Number::from_f64(f64::from(x)).map_or(Value::Null, Value::Number),
        Field::Double(x) => Number::from_f64(x).map_or(Value::Null, Value::Number),
        Field::Str(text) => Value::String(text),
        Field::Bytes(bytes) => Value::String(String::from_utf8_lossy(bytes.data()).into_owned()),
        Field::TimestampMillis(ms) => Value::String(throughline_model::format_ms(ms)),
        Field::TimestampMicros(us) => {
            Value::String(throughline_model::format_ms(us.div_euclid(1_000)))
        }
        Field::Group(row) => Value::Object(
            row.into_columns()
                .into_iter()
                .map(|(name, field)| (name, json(field)))
                .collect::<Map<_, _>>(),
        ),
        Field::ListInternal(list) => {
            Value::Array(list.elements().iter().cloned().map(json).collect())
        }
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .cloned()
                .map(|(key, value)| {
                    let key = match json(key) {
                        Value::String(text) => text,
                        other => other.to_string(),
                    };
                    (key, json(value))
                })
                .collect(),
        ),
        // Decimals, times of day, half floats: their text is the faithful rendering.
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use parquet::file::properties::WriterProperties;
    use serde_json::json;

    use super::*;

    /// Writes a Parquet file of one row group from (column, values) with `schema`.
    fn write_file(path: &std::path::Path, schema: &str, rows: &[Vec<Option<&str>>]) {
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let file = File::create(path).unwrap();
        let props = Arc::new(WriterProperties::builder().build());
        let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
        let mut group = writer.next_row_group().unwrap();
        let mut index = 0;
        while let Some(mut column) = group.next_column().unwrap() {
            let cells: Vec<Option<&str>> = rows.iter().map(|r| r[index]).collect();
            let levels: Vec<i16> = cells.iter().map(|c| i16::from(c.is_some())).collect();
            match column.untyped() {
                parquet::column::writer::ColumnWriter::Int64ColumnWriter(w) => {
                    let values: Vec<i64> =
                        cells.iter().flatten().map(|c| c.parse().unwrap()).collect();
                    w.write_batch(&values, Some(&levels), None).unwrap();
                }
                parquet::column::writer::ColumnWriter::DoubleColumnWriter(w) => {
                    let values: Vec<f64> =
                        cells.iter().flatten().map(|c| c.parse().unwrap()).collect();
                    w.write_batch(&values, Some(&levels), None).unwrap();
                }
                parquet::column::writer::ColumnWriter::ByteArrayColumnWriter(w) => {
                    let values: Vec<ByteArray> = cells
                        .iter()
                        .flatten()
                        .map(|c| ByteArray::from(*c))
                        .collect();
                    w.write_batch(&values, Some(&levels), None).unwrap();
                }
                _ => unreachable!("the tests use int64, double and text columns"),
            }
            column.close().unwrap();
            index += 1;
        }
        group.close().unwrap();
        writer.close().unwrap();
    }

    fn read_path(path: &std::path::Path) -> Vec<(u64, Result<Value, RowError>)> {
        read(File::open(path).unwrap()).unwrap().collect()
    }

    #[test]
    fn foreign_files_with_typed_columns_and_nanosecond_times_import() {
        let dir = crate::tests::TempDir::new("parquet-foreign");
        let path = dir.path().join("x.parquet");
        write_file(
            &path,
            "message m {
                OPTIONAL BYTE_ARRAY type (UTF8);
                OPTIONAL INT64 timestamp (TIMESTAMP(NANOS,true));
                OPTIONAL INT64 sentAt;
                OPTIONAL DOUBLE properties.revenue;
                OPTIONAL BYTE_ARRAY properties.plan (UTF8);
                OPTIONAL BYTE_ARRAY context.page.url (UTF8);
            }",
            &[
                vec![
                    Some("track"),
                    Some("1709294400250000000"),
                    Some("1709294400000"),
                    Some("9.5"),
                    Some("42"),
                    Some("https://x.test/"),
                ],
                vec![Some("page"), None, None, None, None, None],
            ],
        );
        let rows = read_path(&path);
        assert_eq!(
            rows,
            vec![
                (
                    1,
                    Ok(json!({
                        "type": "track",
                        "timestamp": "2024-03-01T12:00:00.250Z",
                        "sentAt": "2024-03-01T12:00:00.000Z",
                        "properties": {"revenue": 9.5, "plan": 42},
                        "context": {"page": {"url": "https://x.test/"}},
                    }))
                ),
                (2, Ok(json!({"type": "page"}))),
            ]
        );
    }

    #[test]
    fn a_text_timestamp_is_passed_through_for_the_server_to_parse() {
        let dir = crate::tests::TempDir::new("parquet-text-time");
        let path = dir.path().join("x.parquet");
        write_file(
            &path,
            "message m { OPTIONAL BYTE_ARRAY timestamp (UTF8); OPTIONAL BYTE_ARRAY properties (UTF8); }",
            &[
                vec![Some("2024-03-01 12:00:00"), Some("{\"a\":")],
                vec![Some("2024-03-01 12:00:01"), Some("{\"a\":1}")],
            ],
        );
        let rows = read_path(&path);
        assert!(
            matches!(&rows[0], (1, Err(RowError::Column { column, .. })) if column == "properties"),
            "{rows:?}"
        );
        assert_eq!(
            rows[1],
            (
                2,
                Ok(json!({"timestamp": "2024-03-01 12:00:01", "properties": {"a": 1}}))
            )
        );
    }

    #[test]
    fn the_export_schema_parses() {
        let schema = parse_message_type(&export_schema()).unwrap();
        assert_eq!(schema.get_fields().len(), COLUMNS.len());
    }
}
