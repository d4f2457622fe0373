//! Checks every page header of a Parquet file against the file before the `parquet` crate
//! reads a page, so a corrupt or hostile file is an import error and never an allocation
//! of the size a header claims.
//!
//! The crate trusts page headers: it reserves and zero-fills `uncompressed_page_size`
//! bytes before it decompresses a Snappy page (up to 2 GiB from a header of a few bytes;
//! `crates/fuzz` has the case), sizes a dictionary by
//! the `num_values` of its header, and reads the header's own binary fields by the length
//! they announce. Its Thrift reader is private, so this module carries a small reader of
//! the Thrift compact protocol that walks each column chunk's pages exactly as the crate's
//! page reader does (from the chunk's first page, header after header, until the chunk's
//! `total_compressed_size` is used up) without allocating, and checks each header against
//! the chunk's sizes from the footer, the codec's largest possible expansion and
//! [`PARQUET_PAGE_BYTES_MAX`].
//!
//! Field ids are those of `PageHeader` in apache/parquet-format's `parquet.thrift`:
//! `1: type`, `2: uncompressed_page_size`, `3: compressed_page_size`, `4: crc`,
//! `5: data_page_header`, `6: index_page_header`, `7: dictionary_page_header` (whose
//! `1: num_values` sizes the dictionary), `8: data_page_header_v2`.
//!
//! This module only reads; it never decides what a row means.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use parquet::basic::{Compression, Type as PhysicalType};
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};

use crate::FormatError;

/// Bytes one page may hold once decompressed, at most. Writers cut pages at about 1 MiB
/// (parquet-mr, arrow, DuckDB); a page 64 times larger is taken as damage, not data.
pub const PARQUET_PAGE_BYTES_MAX: u64 = 64 << 20;
/// The most a Snappy block can grow when decompressed: its densest element is a 3-byte
/// copy of 64 bytes (21.3 times), rounded up.
const SNAPPY_EXPANSION_MAX: u64 = 22;
/// Nested structs in a page header, at most (real headers nest three deep).
const HEADER_DEPTH_MAX: u32 = 16;
/// Bytes of one header, at most (statistics with long min/max values stay far below).
const HEADER_BYTES_MAX: u64 = 16 << 20;

/// PageType DICTIONARY_PAGE in `parquet.thrift`.
const DICTIONARY_PAGE: i32 = 2;

/// Checks the page headers of every column chunk of every row group in `file`.
pub(crate) fn check(file: &File, metadata: &ParquetMetaData) -> Result<(), FormatError> {
    let file_bytes = file.metadata()?.len();
    for (row_group, group) in metadata.row_groups().iter().enumerate() {
        for chunk in group.columns() {
            check_chunk(file, file_bytes, chunk).map_err(|problem| problem.at(row_group, chunk))?;
        }
    }
    Ok(())
}

/// What is wrong with one column chunk, before the column and row group are named.
enum Problem {
    Chunk(String),
    Page { offset: u64, reason: String },
    Io(io::Error),
}

impl Problem {
    fn at(self, row_group: usize, chunk: &ColumnChunkMetaData) -> FormatError {
        let column = chunk.column_path().string();
        match self {
            Problem::Chunk(reason) => FormatError::ParquetPage {
                column,
                row_group,
                reason,
            },
            Problem::Page { offset, reason } => FormatError::ParquetPage {
                column,
                row_group,
                reason: format!("page at byte {offset}: {reason}"),
            },
            Problem::Io(e) => FormatError::Io(e),
        }
    }
}

fn check_chunk(file: &File, file_bytes: u64, chunk: &ColumnChunkMetaData) -> Result<(), Problem> {
    // The same start and length as the crate's `ColumnChunkMetaData::byte_range`, which
    // panics on negative values.
    let start = chunk
        .dictionary_page_offset()
        .unwrap_or_else(|| chunk.data_page_offset());
    let compressed = chunk.compressed_size();
    let uncompressed = chunk.uncompressed_size();
    let (Ok(start), Ok(length), Ok(total_uncompressed)) = (
        u64::try_from(start),
        u64::try_from(compressed),
        u64::try_from(uncompressed),
    ) else {
        return Err(Problem::Chunk(format!(
            "negative offset or size in the footer (offset {start}, \
             total_compressed_size {compressed}, total_uncompressed_size {uncompressed})"
        )));
    };
    if start.checked_add(length).is_none_or(|end| end > file_bytes) {
        return Err(Problem::Chunk(format!(
            "the column chunk ({length} bytes at byte {start}) runs past the end of the \
             {file_bytes}-byte file"
        )));
    }
    let expansion_max = match chunk.compression() {
        Compression::SNAPPY => Some(SNAPPY_EXPANSION_MAX),
        // Uncompressed pages are not decompressed, so their stated size reserves nothing;
        // the other codecs are not built in and fail when the column is opened.
        _ => None,
    };
    let value_bytes_min = match chunk.column_type() {
        PhysicalType::BOOLEAN => 0,
        PhysicalType::INT32 | PhysicalType::FLOAT | PhysicalType::BYTE_ARRAY => 4,
        PhysicalType::INT64 | PhysicalType::DOUBLE => 8,
        PhysicalType::INT96 => 12,
        PhysicalType::FIXED_LEN_BYTE_ARRAY => {
            u64::try_from(chunk.column_descr().type_length()).map_or(1, |n| n.max(1))
        }
    };

    let mut handle = file.try_clone().map_err(Problem::Io)?;
    let mut offset = start;
    let mut remaining = length;
    while remaining > 0 {
        handle.seek(SeekFrom::Start(offset)).map_err(Problem::Io)?;
        let mut input = Compact::new(
            BufReader::new((&handle).take(remaining.min(HEADER_BYTES_MAX))),
            remaining,
        );
        let header = match read_page_header(&mut input) {
            Ok(header) => header,
            Err(reason) => return Err(Problem::Page { offset, reason }),
        };
        let page = |reason: String| Problem::Page { offset, reason };
        let header_bytes = input.consumed;
        let body_left = remaining - header_bytes;
        let (Some(kind), Some(uncompressed), Some(compressed)) = (
            header.kind,
            header.uncompressed_page_size,
            header.compressed_page_size,
        ) else {
            return Err(page(
                "the header lacks its type, uncompressed_page_size or \
                 compressed_page_size"
                    .into(),
            ));
        };
        let (Ok(uncompressed), Ok(compressed)) =
            (u64::try_from(uncompressed), u64::try_from(compressed))
        else {
            return Err(page(format!(
                "negative page size (uncompressed_page_size {uncompressed}, \
                 compressed_page_size {compressed})"
            )));
        };
        if compressed > body_left {
            return Err(page(format!(
                "compressed_page_size {compressed} is more than the {body_left} bytes left \
                 in its column chunk"
            )));
        }
        if uncompressed > PARQUET_PAGE_BYTES_MAX {
            return Err(page(format!(
                "uncompressed_page_size {uncompressed} is more than the limit of \
                 {PARQUET_PAGE_BYTES_MAX} bytes per page"
            )));
        }
        if uncompressed > total_uncompressed {
            return Err(page(format!(
                "uncompressed_page_size {uncompressed} is more than the column chunk's \
                 total_uncompressed_size {total_uncompressed}"
            )));
        }
        if let Some(expansion) = expansion_max {
            if uncompressed > compressed.saturating_mul(expansion) {
                return Err(page(format!(
                    "uncompressed_page_size {uncompressed} is more than \
                     {compressed} compressed bytes can hold (at most {expansion} times as \
                     many)"
                )));
            }
        }
        if kind == DICTIONARY_PAGE {
            let values = header.dictionary_values.unwrap_or(0);
            let Ok(values) = u64::try_from(values) else {
                return Err(page(format!("negative dictionary num_values {values}")));
            };
            // PLAIN values take at least this many bytes each (booleans one bit).
            let fits = match value_bytes_min {
                0 => values.div_ceil(8) <= uncompressed,
                n => values.saturating_mul(n) <= uncompressed,
            };
            if !fits {
                return Err(page(format!(
                    "the dictionary claims {values} values in {uncompressed} bytes"
                )));
            }
        }
        offset += header_bytes + compressed;
        remaining = body_left - compressed;
    }
    Ok(())
}

/// The fields of a `PageHeader` this module checks (`None` where the header lacks one).
#[derive(Debug, Default)]
struct PageHeader {
    kind: Option<i32>,
    uncompressed_page_size: Option<i32>,
    compressed_page_size: Option<i32>,
    dictionary_values: Option<i32>,
}

/// Compact-protocol type ids (thrift-compact-protocol.md).
const T_BOOL_TRUE: u8 = 1;
const T_BOOL_FALSE: u8 = 2;
const T_BYTE: u8 = 3;
const T_I16: u8 = 4;
const T_I32: u8 = 5;
const T_I64: u8 = 6;
const T_DOUBLE: u8 = 7;
const T_BINARY: u8 = 8;
const T_LIST: u8 = 9;
const T_SET: u8 = 10;
const T_MAP: u8 = 11;
const T_STRUCT: u8 = 12;

/// The structs of a page header, as `parquet.thrift` (and the crate's copy) define them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Def {
    PageHeader,
    DataPageHeader,
    IndexPageHeader,
    DictionaryPageHeader,
    DataPageHeaderV2,
    Statistics,
}

/// The type a known field must have.
#[derive(Clone, Copy, Debug)]
enum Field {
    I32,
    I64,
    Bool,
    Binary,
    Struct(Def),
}

/// The definition of field `id` of `def`, `None` for ids the definition does not name
/// (skipped by their declared type, as the crate does).
fn field_of(def: Def, id: i16) -> Option<Field> {
    use Field::*;
    Some(match (def, id) {
        (Def::PageHeader, 1..=4) => I32,
        (Def::PageHeader, 5) => Struct(Def::DataPageHeader),
        (Def::PageHeader, 6) => Struct(Def::IndexPageHeader),
        (Def::PageHeader, 7) => Struct(Def::DictionaryPageHeader),
        (Def::PageHeader, 8) => Struct(Def::DataPageHeaderV2),
        (Def::DataPageHeader, 1..=4) => I32,
        (Def::DataPageHeader, 5) => Struct(Def::Statistics),
        (Def::DictionaryPageHeader, 1 | 2) => I32,
        (Def::DictionaryPageHeader, 3) => Bool,
        (Def::DataPageHeaderV2, 1..=6) => I32,
        (Def::DataPageHeaderV2, 7) => Bool,
        (Def::DataPageHeaderV2, 8) => Struct(Def::Statistics),
        (Def::Statistics, 1 | 2 | 5 | 6) => Binary,
        (Def::Statistics, 3 | 4 | 9) => I64,
        (Def::Statistics, 7 | 8) => Bool,
        _ => return None,
    })
}

impl Field {
    fn accepts(self, kind: u8) -> bool {
        match self {
            Field::I32 => kind == T_I32,
            Field::I64 => kind == T_I64,
            Field::Bool => kind == T_BOOL_TRUE || kind == T_BOOL_FALSE,
            Field::Binary => kind == T_BINARY,
            Field::Struct(_) => kind == T_STRUCT,
        }
    }
}

fn read_page_header<R: Read>(input: &mut Compact<R>) -> Result<PageHeader, String> {
    let mut header = PageHeader::default();
    input.read_struct(Def::PageHeader, 1, &mut header)?;
    Ok(header)
}

/// A reader of the Thrift compact protocol that allocates nothing: lengths and counts are
/// checked against the bytes left in the column chunk before anything is skipped.
///
/// The crate reads a known field by its id whatever type the field declares, so a known
/// field of another type is refused here: the two readers then always agree on where a
/// header ends, and every header the crate reads is one this module checked.
struct Compact<R> {
    input: R,
    consumed: u64,
    left: u64,
}

impl<R: Read> Compact<R> {
    fn new(input: R, left: u64) -> Compact<R> {
        Compact {
            input,
            consumed: 0,
            left,
        }
    }

    fn byte(&mut self) -> Result<u8, String> {
        let mut b = [0u8; 1];
        self.input
            .read_exact(&mut b)
            .map_err(|_| "the page header runs past its column chunk".to_string())?;
        self.consumed += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint in the page header is longer than 10 bytes".into())
    }

    fn zigzag(&mut self) -> Result<i64, String> {
        let n = self.varint()?;
        Ok((n >> 1) as i64 ^ -((n & 1) as i64))
    }

    fn i32(&mut self) -> Result<i32, String> {
        let n = self.zigzag()?;
        i32::try_from(n).map_err(|_| format!("{n} does not fit the i32 of a page header field"))
    }

    /// The next field's (id, compact type), or `None` at the struct's end (a type of 0,
    /// whatever the delta bits say, as the crate reads it).
    fn field(&mut self, last_id: &mut i16) -> Result<Option<(i16, u8)>, String> {
        let b = self.byte()?;
        let kind = b & 0x0f;
        if kind == 0 {
            return Ok(None);
        }
        let delta = b >> 4;
        let id = if delta == 0 {
            let id = self.zigzag()?;
            i16::try_from(id).map_err(|_| format!("field id {id} in the page header"))?
        } else {
            last_id
                .checked_add(i16::from(delta))
                .ok_or("a field id in the page header overflows")?
        };
        *last_id = id;
        Ok(Some((id, kind)))
    }

    /// Counts or lengths larger than the bytes left cannot be real: each element takes
    /// at least one byte.
    fn bounded(&mut self, n: u64, what: &str) -> Result<u64, String> {
        if n > self.left.saturating_sub(self.consumed) {
            return Err(format!(
                "a {what} of {n} in the page header is longer than its column chunk"
            ));
        }
        Ok(n)
    }

    fn discard(&mut self, n: u64) -> Result<(), String> {
        let copied = io::copy(&mut (&mut self.input).take(n), &mut io::sink())
            .map_err(|e| format!("reading the page header: {e}"))?;
        self.consumed += copied;
        if copied != n {
            return Err("the page header runs past its column chunk".into());
        }
        Ok(())
    }

    fn binary(&mut self) -> Result<(), String> {
        let n = self.varint()?;
        let n = self.bounded(n, "binary length")?;
        self.discard(n)
    }

    fn deeper(depth: u32) -> Result<u32, String> {
        if depth >= HEADER_DEPTH_MAX {
            return Err(format!(
                "the page header nests deeper than {HEADER_DEPTH_MAX} levels"
            ));
        }
        Ok(depth + 1)
    }

    /// Reads a struct of a known definition, noting the fields `out` keeps.
    fn read_struct(&mut self, def: Def, depth: u32, out: &mut PageHeader) -> Result<(), String> {
        let mut last_id = 0i16;
        while let Some((id, kind)) = self.field(&mut last_id)? {
            let Some(field) = field_of(def, id) else {
                self.skip(kind, Self::deeper(depth)?)?;
                continue;
            };
            if !field.accepts(kind) {
                return Err(format!(
                    "field {id} of {def:?} has compact type {kind}, not {field:?}"
                ));
            }
            match field {
                Field::I32 => {
                    let value = self.i32()?;
                    match (def, id) {
                        (Def::PageHeader, 1) => out.kind = Some(value),
                        (Def::PageHeader, 2) => out.uncompressed_page_size = Some(value),
                        (Def::PageHeader, 3) => out.compressed_page_size = Some(value),
                        (Def::DictionaryPageHeader, 1) => out.dictionary_values = Some(value),
                        _ => {}
                    }
                }
                Field::I64 => drop(self.varint()?),
                Field::Bool => {}
                Field::Binary => self.binary()?,
                Field::Struct(inner) => self.read_struct(inner, Self::deeper(depth)?, out)?,
            }
        }
        Ok(())
    }

    /// Skips a value of a field no definition names, by its declared type.
    fn skip(&mut self, kind: u8, depth: u32) -> Result<(), String> {
        match kind {
            T_BOOL_TRUE | T_BOOL_FALSE => Ok(()),
            T_BYTE => self.byte().map(drop),
            T_I16 | T_I32 | T_I64 => self.varint().map(drop),
            T_DOUBLE => self.discard(8),
            T_BINARY => self.binary(),
            T_LIST | T_SET => {
                let b = self.byte()?;
                let element = b & 0x0f;
                let count = match b >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                for _ in 0..self.bounded(count, "list count")? {
                    self.element(element, depth)?;
                }
                Ok(())
            }
            T_MAP => {
                let count = self.varint()?;
                let count = self.bounded(count, "map count")?;
                if count == 0 {
                    return Ok(());
                }
                let kinds = self.byte()?;
                for _ in 0..count {
                    self.element(kinds >> 4, depth)?;
                    self.element(kinds & 0x0f, depth)?;
                }
                Ok(())
            }
            T_STRUCT => {
                let mut last_id = 0i16;
                while let Some((_, kind)) = self.field(&mut last_id)? {
                    self.skip(kind, Self::deeper(depth)?)?;
                }
                Ok(())
            }
            _ => Err(format!("unknown compact type {kind} in the page header")),
        }
    }

    /// One element of a list, set or map: there a boolean is a byte of its own.
    fn element(&mut self, kind: u8, depth: u32) -> Result<(), String> {
        match kind {
            T_BOOL_TRUE | T_BOOL_FALSE => self.byte().map(drop),
            _ => self.skip(kind, Self::deeper(depth)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use serde_json::json;

    use super::*;
    use crate::read_messages;

    const NOTE_BYTES: usize = 1_500_000;

    /// A Snappy file of one row whose `properties.note` is [`NOTE_BYTES`] of text, so its
    /// one data page states its uncompressed size in a 4-byte varint.
    fn one_big_page(path: &Path) -> String {
        let note: String = (0..NOTE_BYTES)
            .map(|i| char::from(b'a' + ((i * 7 + i / 13) % 26) as u8))
            .collect();
        let schema =
            parse_message_type("message m { OPTIONAL BYTE_ARRAY properties.note (UTF8); }");
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false)
            .build();
        let file = File::create(path).unwrap();
        let mut writer =
            SerializedFileWriter::new(file, Arc::new(schema.unwrap()), Arc::new(props)).unwrap();
        let mut group = writer.next_row_group().unwrap();
        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<ByteArrayType>()
            .write_batch(&[ByteArray::from(note.as_str())], Some(&[1]), None)
            .unwrap();
        column.close().unwrap();
        group.close().unwrap();
        writer.close().unwrap();
        note
    }

    fn zigzag_varint(n: i32) -> Vec<u8> {
        let mut z = ((n << 1) ^ (n >> 31)) as u32;
        let mut out = Vec::new();
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return out;
            }
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }

    /// Rewrites the first page's `uncompressed_page_size` in place (same varint length).
    fn set_uncompressed_page_size(path: &Path, size: i32) {
        let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        let start = reader.metadata().row_group(0).column(0).data_page_offset() as usize;
        let mut bytes = std::fs::read(path).unwrap();
        let old = header(&bytes[start..])
            .unwrap()
            .uncompressed_page_size
            .unwrap();
        // Field 1 (type 0) takes two bytes, then field 2's header byte, then its value.
        let (old, new) = (zigzag_varint(old), zigzag_varint(size));
        assert_eq!(&bytes[start..start + 3], &[0x15, 0x00, 0x15]);
        assert_eq!(&bytes[start + 3..start + 3 + old.len()], old.as_slice());
        assert_eq!(
            old.len(),
            new.len(),
            "the new size needs the same varint length"
        );
        bytes[start + 3..start + 3 + new.len()].copy_from_slice(&new);
        std::fs::write(path, bytes).unwrap();
    }

    fn import_error(path: &Path) -> String {
        match read_messages(path) {
            Ok(_) => panic!("{} imported", path.display()),
            Err(e @ FormatError::ParquetPage { .. }) => e.to_string(),
            Err(e) => panic!("another error: {e}"),
        }
    }

    #[test]
    fn a_page_larger_than_the_limit_is_refused_naming_the_column_and_the_size() {
        let dir = crate::tests::TempDir::new("parquet-inflated");
        let path = dir.path().join("x.parquet");
        let note = one_big_page(&path);
        let rows: Vec<_> = read_messages(&path).unwrap().collect();
        assert_eq!(rows, vec![(1, Ok(json!({"properties": {"note": note}})))]);

        set_uncompressed_page_size(&path, 100_000_000);
        let err = import_error(&path);
        assert_eq!(
            err,
            "parquet column properties.note (row group 0): page at byte 4: \
             uncompressed_page_size 100000000 is more than the limit of 67108864 bytes per page"
        );
    }

    #[test]
    fn a_page_larger_than_its_column_chunk_is_refused() {
        let dir = crate::tests::TempDir::new("parquet-inflated-chunk");
        let path = dir.path().join("x.parquet");
        one_big_page(&path);
        set_uncompressed_page_size(&path, 3_000_000);
        let err = import_error(&path);
        assert!(err.starts_with("parquet column properties.note (row group 0): page at byte 4: uncompressed_page_size 3000000 is more than the column chunk's total_uncompressed_size"), "{err}");
    }

    fn header(bytes: &[u8]) -> Result<PageHeader, String> {
        read_page_header(&mut Compact::new(bytes, bytes.len() as u64))
    }

    #[test]
    fn a_dictionary_page_header_reads_its_sizes_and_values() {
        // type=2, uncompressed=100, compressed=60, dictionary_page_header{num_values=7,
        // encoding=0}, stop.
        let bytes = [
            0x15, 0x04, 0x15, 0xc8, 0x01, 0x15, 0x78, 0x4c, 0x15, 0x0e, 0x15, 0x00, 0x00, 0x00,
        ];
        let h = header(&bytes).unwrap();
        assert_eq!(h.kind, Some(2));
        assert_eq!(h.uncompressed_page_size, Some(100));
        assert_eq!(h.compressed_page_size, Some(60));
        assert_eq!(h.dictionary_values, Some(7));
    }

    #[test]
    fn a_binary_longer_than_the_chunk_is_refused_before_it_is_read() {
        // type=0, then field 5 (data_page_header) holding field 5 (statistics) holding a
        // binary that claims 2^31 bytes.
        let bytes = [0x15, 0x00, 0x4c, 0x5c, 0x18, 0x80, 0x80, 0x80, 0x80, 0x08];
        let err = header(&bytes).unwrap_err();
        assert!(err.contains("binary length of 2147483648"), "{err}");
    }

    #[test]
    fn deep_nesting_and_wrong_types_are_refused() {
        // Field 9 (no definition names it) holding structs in structs.
        let mut deep = vec![0x15, 0x00, 0x8c];
        deep.extend(std::iter::repeat_n(0x1c, 40));
        assert!(header(&deep).unwrap_err().contains("nests deeper"));
        // Field 2 sent as a binary, which the crate would read as a varint.
        let err = header(&[0x15, 0x00, 0x18, 0x01, 0x41]).unwrap_err();
        assert!(err.contains("field 2 of PageHeader"), "{err}");
    }
}
