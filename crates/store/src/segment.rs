//! Immutable columnar segment files, rows sorted by (person, timestamp).
//!
//! Layout: `MAGIC | column blobs (8-byte aligned) | footer JSON | footer_len u64 |
//! footer_crc u32 | END_MAGIC`. Fixed-width columns are little-endian arrays read straight
//! into typed vectors without decoding, which is what makes per-person scans fast; every
//! column carries a CRC32 checked when it is read. The footer is self-describing, so later
//! versions add columns without breaking older files. The full event travels in the
//! `payload` column (the same JSON as the WAL record), which export and Parquet use.
//!
//! Footer versions: 1 is the layout above; 2 adds the number columns of
//! [`crate::numbers`] and their list (`numbers` in the footer); 3 adds the copy of the
//! rare event names' records of [`crate::rare`] and their list (`rare`). All are read; a
//! reader of an older version ignores what a newer one adds (unknown footer fields and
//! columns), and a segment of an older version simply lacks them (readers decode the
//! payload instead).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use throughline_model::DIMS;

use crate::bloom::{BlockedBloom, Bloom};
use crate::fsutil::sync_dir;
use crate::numbers::{
    check_number_column, number_column_names, NumberIndex, Numbers, NumbersBuilder, NumbersMeta,
};
use crate::rare::{self, RareWriter};
use crate::StoreError;

/// The footer version this binary writes.
const FOOTER_VERSION: u32 = 3;

const MAGIC: &[u8; 8] = b"TLSEG\0\0\x01";
const END_MAGIC: &[u8; 8] = b"TLSEGEND";
const TRAILER_BYTES: u64 = 8 + 4 + 8;
/// The payload column is checksummed in blocks of about this size, so a reader can verify
/// each piece before decoding it while keeping memory bounded.
const PAYLOAD_BLOCK_BYTES: u64 = 1 << 20;
/// The column of the split-block filter; segments without it carry the classic `bloom`.
const BLOCKED_BLOOM: &str = "bloom_blocked";
/// Payload blocks a [`PayloadReader`] keeps verified in memory per segment.
const READER_BLOCKS_CACHED: usize = 4;
/// The index of `name` in [`DIMS`]: the dimension the rare copy is chosen on.
const NAME_DIM: usize = 0;
/// Marks a row without a value in a `dim:` column.
pub const NO_VALUE: u32 = u32::MAX;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ColumnMeta {
    name: String,
    offset: u64,
    len: u64,
    crc: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Footer {
    version: u32,
    rows: u64,
    min_ts: i64,
    max_ts: i64,
    columns: Vec<ColumnMeta>,
    /// Version 2: the number columns' keys (absent: none were written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    numbers: Option<NumbersMeta>,
    /// Version 3: the event names whose records are all in the rare copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rare: Option<Vec<String>>,
}

/// The scan columns of a segment to [`write`], rows in (person, timestamp) order.
pub struct Columns {
    pub persons: Vec<u32>,
    pub nodes: Vec<u32>,
    pub ts: Vec<i64>,
    pub kinds: Vec<u8>,
    /// The message-id hashes the segment answers for in deduplication.
    pub hashes: Vec<u128>,
    /// Where the number columns come from.
    pub numbers: NumberIndex,
}

/// One dictionary-coded string column: a code per row ([`NO_VALUE`] where absent) into
/// the dictionary beside it.
#[derive(Default)]
pub struct DimColumn<'a> {
    pub codes: Vec<u32>,
    pub dict: Vec<Cow<'a, str>>,
}

impl<'a> DimColumn<'a> {
    /// Codes strings in row order, each distinct string once.
    pub fn coder() -> DimCoder<'a> {
        DimCoder::default()
    }
}

/// Builds a [`DimColumn`] one row at a time.
#[derive(Default)]
pub struct DimCoder<'a> {
    column: DimColumn<'a>,
    ids: HashMap<&'a str, u32, BuildHasherDefault<StrHasher>>,
}

impl<'a> DimCoder<'a> {
    pub fn push(&mut self, value: Option<&'a str>) {
        let code = match value {
            None => NO_VALUE,
            Some(v) => {
                let dict = &mut self.column.dict;
                *self.ids.entry(v).or_insert_with(|| {
                    dict.push(Cow::Borrowed(v));
                    (dict.len() - 1) as u32
                })
            }
        };
        self.column.codes.push(code);
    }

    pub fn finish(self) -> DimColumn<'a> {
        self.column
    }
}

/// xxh3 for dictionary strings: dimension values are short, and SipHash is the slow
/// part of coding them.
#[derive(Default)]
pub struct StrHasher(u64);

impl std::hash::Hasher for StrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
}

/// Writes a segment durably (temp file, fsync, rename, directory fsync).
/// `dim(d)` gives the column of [`DIMS`]`[d]`, asked for one at a time so only one is
/// held at once; `payload(i, out)` appends row `i`'s event record to `out`: payloads
/// stream from their source (the in-memory table, or input segments when compacting) so
/// a segment of any size is written in bounded memory.
pub fn write<'a>(
    path: &Path,
    columns: Columns,
    mut dim: impl FnMut(usize) -> Result<DimColumn<'a>, StoreError>,
    mut payload: impl FnMut(usize, &mut Vec<u8>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    write_inner(path, columns, &mut dim, &mut payload).map_err(|e| {
        // A half-written file would hold on to the space a full disk needs back.
        let _ = std::fs::remove_file(path.with_extension("seg.tmp"));
        let _ = std::fs::remove_file(path.with_extension("rare.tmp"));
        match e {
            WriteError::Io(e) => StoreError::io(path, e),
            WriteError::Source(e) => e,
        }
    })
}

/// Gives one dimension column.
type DimSource<'s, 'a> = dyn FnMut(usize) -> Result<DimColumn<'a>, StoreError> + 's;

/// Appends one row's payload to the buffer.
type PayloadSource<'a> = dyn FnMut(usize, &mut Vec<u8>) -> Result<(), StoreError> + 'a;

enum WriteError {
    Io(io::Error),
    Source(StoreError),
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> WriteError {
        WriteError::Io(e)
    }
}

fn write_inner(
    path: &Path,
    columns: Columns,
    dim: &mut DimSource,
    payload: &mut PayloadSource,
) -> Result<(), WriteError> {
    let Columns {
        persons,
        nodes,
        ts,
        kinds,
        mut hashes,
        numbers,
    } = columns;
    let rows = persons.len();
    assert!(
        nodes.len() == rows && ts.len() == rows && kinds.len() == rows,
        "segment columns of unequal length"
    );
    let tmp = path.with_extension("seg.tmp");
    let file = File::create(&tmp)?;
    let mut w = Writer {
        out: BufWriter::with_capacity(1 << 20, file),
        pos: 0,
        columns: Vec::new(),
        synced: 0,
    };
    w.raw(MAGIC)?;

    hashes.sort_unstable();
    hashes.dedup();
    let mut bloom = BlockedBloom::with_keys(hashes.len());
    for &h in hashes.iter() {
        bloom.insert(h);
    }

    w.column("person", bytemuck::cast_slice(&persons))?;
    w.column("node", bytemuck::cast_slice(&nodes))?;
    w.column("ts", bytemuck::cast_slice(&ts))?;
    w.column("type", &kinds)?;
    // Per row, whether its record goes into the rare copy too (decided on the names).
    let mut rare_row: Vec<bool> = Vec::new();
    let mut rare_names = None;
    for (d, name) in DIMS.iter().enumerate() {
        let col = dim(d).map_err(WriteError::Source)?;
        assert_eq!(col.codes.len(), rows, "dimension column of unequal length");
        if d == NAME_DIM {
            if let Some((rare_code, names)) = rare::choose(&col.codes, &col.dict) {
                rare_row = col
                    .codes
                    .iter()
                    .map(|&c| c != NO_VALUE && rare_code[c as usize])
                    .collect();
                rare_names = Some(names);
            }
        }
        w.column(&format!("dim:{name}"), bytemuck::cast_slice(&col.codes))?;
        w.column(
            &format!("dict:{name}"),
            &serde_json::to_vec(&col.dict).expect("dictionary serializes"),
        )?;
    }
    // The payload streams block by block; its offsets and per-block checksums are
    // collected on the way and written after it.
    let mut offsets = Vec::with_capacity(rows + 1);
    offsets.push(0u64);
    // Pairs of (first row, crc32) per block of whole rows.
    let mut blocks: Vec<u64> = Vec::new();
    let mut block_row = 0usize;
    let mut at = 0u64;
    let mut column_crc = crc32fast::Hasher::new();
    w.align()?;
    let payload_offset = w.pos;
    let mut block = Vec::with_capacity(PAYLOAD_BLOCK_BYTES as usize + (64 << 10));
    let (mut builder, mut numbers) = match numbers {
        NumberIndex::Derive => (Some(NumbersBuilder::new(rows)), None),
        NumberIndex::Given(n) => (None, Some(n)),
        NumberIndex::Omit => (None, None),
    };
    let mut rare = match rare_names {
        Some(_) => Some(RareWriter::new(path, PAYLOAD_BLOCK_BYTES as usize)?),
        None => None,
    };
    for i in 0..rows {
        if block.len() as u64 >= PAYLOAD_BLOCK_BYTES {
            blocks.extend([block_row as u64, u64::from(crc32fast::hash(&block))]);
            column_crc.update(&block);
            w.raw(&block)?;
            block.clear();
            block_row = i;
        }
        let before = block.len();
        payload(i, &mut block).map_err(WriteError::Source)?;
        if let Some(b) = &mut builder {
            b.observe(i as u32, &block[before..]);
        }
        at += (block.len() - before) as u64;
        offsets.push(at);
        if let Some(r) = rare.as_mut().filter(|_| rare_row.get(i) == Some(&true)) {
            r.push(i, &block[before..])?;
        }
    }
    if rows > 0 {
        blocks.extend([block_row as u64, u64::from(crc32fast::hash(&block))]);
        column_crc.update(&block);
        w.raw(&block)?;
    }
    w.columns.push(ColumnMeta {
        name: "payload".into(),
        offset: payload_offset,
        len: at,
        crc: column_crc.finalize(),
    });
    w.column("payload_offsets", bytemuck::cast_slice(&offsets))?;
    w.column("payload_blocks", bytemuck::cast_slice(&blocks))?;
    if let Some(r) = rare {
        w.align()?;
        let offset = w.pos;
        let (len, crc, c) = r.finish(|piece| w.raw(piece))?;
        w.columns.push(ColumnMeta {
            name: "rare_payload".into(),
            offset,
            len,
            crc,
        });
        w.column("rare_offsets", bytemuck::cast_slice(&c.offsets))?;
        w.column("rare_rows", bytemuck::cast_slice(&c.rows))?;
        w.column("rare_blocks", bytemuck::cast_slice(&c.blocks))?;
    }
    w.column("msg_hash", bytemuck::cast_slice(&hashes))?;
    w.column(BLOCKED_BLOOM, bytemuck::cast_slice(bloom.words()))?;
    if let Some(b) = builder {
        numbers = b.finish();
    }
    let numbers = numbers.map(|Numbers { columns, complete }| {
        let mut keys = Vec::with_capacity(columns.len());
        for c in columns {
            let (rows_name, values_name) = number_column_names(&c.key);
            keys.push((c.key, rows_name, values_name, c.rows, c.values));
        }
        (keys, complete)
    });
    let mut numbers_meta = None;
    if let Some((keys, complete)) = numbers {
        let mut names = Vec::with_capacity(keys.len());
        for (key, rows_name, values_name, key_rows, values) in keys {
            assert_eq!(
                key_rows.len(),
                values.len(),
                "number column of unequal length"
            );
            w.column(&rows_name, bytemuck::cast_slice(&key_rows))?;
            w.column(&values_name, bytemuck::cast_slice(&values))?;
            names.push(key);
        }
        numbers_meta = Some(NumbersMeta {
            keys: names,
            complete,
        });
    }

    let footer = Footer {
        version: FOOTER_VERSION,
        rows: rows as u64,
        min_ts: ts.iter().copied().min().unwrap_or(0),
        max_ts: ts.iter().copied().max().unwrap_or(0),
        columns: w.columns.clone(),
        numbers: numbers_meta,
        rare: rare_names,
    };
    let footer = serde_json::to_vec(&footer).expect("footer serializes");
    w.raw(&footer)?;
    w.raw(&(footer.len() as u64).to_le_bytes())?;
    w.raw(&crc32fast::hash(&footer).to_le_bytes())?;
    w.raw(END_MAGIC)?;
    let file = w.out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(())
}

struct Writer {
    out: BufWriter<File>,
    pos: u64,
    columns: Vec<ColumnMeta>,
    /// Where the file was last synced.
    synced: u64,
}

/// A segment being written is synced every this many bytes. Background writes then never
/// pile up gigabytes of dirty pages, which the log's next fsync would wait for (ext4
/// commits them with the journal): the cost of a flush or a merge is not passed on to
/// the latency of group commits.
const SYNC_EVERY_BYTES: u64 = 16 << 20;

impl Writer {
    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        if self.pos - self.synced >= SYNC_EVERY_BYTES {
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
            self.synced = self.pos;
        }
        Ok(())
    }

    /// Pads to 8 bytes, so a reader may map fixed-width columns in place.
    fn align(&mut self) -> io::Result<()> {
        let pad = (8 - self.pos % 8) % 8;
        self.raw(&[0u8; 8][..pad as usize])
    }

    fn column(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.align()?;
        let offset = self.pos;
        self.raw(bytes)?;
        self.columns.push(ColumnMeta {
            name: name.to_string(),
            offset,
            len: bytes.len() as u64,
            crc: crc32fast::hash(bytes),
        });
        Ok(())
    }
}

/// Reads one per-row column of a segment in pieces, in order, checksumming on the way
/// (see [`Segment::column_reader`]).
pub struct ColumnReader<'s, T> {
    seg: &'s Segment,
    meta: ColumnMeta,
    done: u64,
    crc: crc32fast::Hasher,
    _values: std::marker::PhantomData<T>,
}

impl<T: bytemuck::Pod> ColumnReader<'_, T> {
    /// Replaces `out` with the next `n` values (fewer at the end of the column).
    pub fn read(&mut self, out: &mut Vec<T>, n: usize) -> Result<(), StoreError> {
        let width = std::mem::size_of::<T>() as u64;
        let left = (self.meta.len - self.done) / width;
        let n = (n as u64).min(left) as usize;
        out.clear();
        out.resize(n, T::zeroed());
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
        self.seg
            .file
            .read_exact_at(bytes, self.meta.offset + self.done)
            .map_err(|e| StoreError::io(&self.seg.path, e))?;
        self.crc.update(bytes);
        self.done += bytes.len() as u64;
        Ok(())
    }

    /// Checks that the whole column was read and that its checksum matches.
    pub fn finish(self) -> Result<(), StoreError> {
        if self.done != self.meta.len || self.crc.finalize() != self.meta.crc {
            return Err(StoreError::Corrupt {
                file: self.seg.path.clone(),
                why: format!("column {:?} checksum mismatch", self.meta.name),
            });
        }
        Ok(())
    }
}

/// An open segment: its footer and dedupe filter in memory, columns read on demand.
#[derive(Debug)]
pub struct Segment {
    pub path: PathBuf,
    file: File,
    footer: Footer,
    filter: Filter,
    /// Every [`HASH_GROUP`]-th message-id hash and each group's CRC32, built on the first
    /// dedupe lookup (read-only opens never pay for it): a filter hit then costs one small
    /// read, not a binary search over the file.
    fences: std::sync::OnceLock<(Vec<u128>, Vec<u32>)>,
}

/// Sorted message-id hashes per fence: a group is one 4 KiB read.
const HASH_GROUP: usize = 256;

/// A segment's dedupe filter, in the format it was written with.
#[derive(Debug)]
enum Filter {
    Classic(Bloom),
    Blocked(BlockedBloom),
}

impl Segment {
    pub fn open(path: &Path) -> Result<Segment, StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt {
            file: path.to_path_buf(),
            why: why.to_string(),
        };
        let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
        let size = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
        if size < MAGIC.len() as u64 + TRAILER_BYTES {
            return Err(corrupt("file too short for a segment"));
        }
        let mut trailer = [0u8; TRAILER_BYTES as usize];
        file.read_exact_at(&mut trailer, size - TRAILER_BYTES)
            .map_err(|e| StoreError::io(path, e))?;
        if &trailer[12..] != END_MAGIC {
            return Err(corrupt("missing end marker (truncated file?)"));
        }
        let footer_len = u64::from_le_bytes(trailer[..8].try_into().unwrap());
        let footer_crc = u32::from_le_bytes(trailer[8..12].try_into().unwrap());
        if footer_len > size - TRAILER_BYTES {
            return Err(corrupt("footer length out of range"));
        }
        let mut footer = vec![0u8; footer_len as usize];
        file.read_exact_at(&mut footer, size - TRAILER_BYTES - footer_len)
            .map_err(|e| StoreError::io(path, e))?;
        if crc32fast::hash(&footer) != footer_crc {
            return Err(corrupt("footer checksum mismatch"));
        }
        let footer: Footer =
            serde_json::from_slice(&footer).map_err(|e| corrupt(&format!("footer: {e}")))?;
        let mut seg = Segment {
            path: path.to_path_buf(),
            file,
            footer,
            filter: Filter::Classic(Bloom::from_words(Vec::new())),
            fences: std::sync::OnceLock::new(),
        };
        seg.filter = if seg.footer.columns.iter().any(|c| c.name == BLOCKED_BLOOM) {
            let words = seg.read_column::<u64>(BLOCKED_BLOOM)?;
            Filter::Blocked(
                BlockedBloom::from_words(words).ok_or_else(|| corrupt("bloom filter length"))?,
            )
        } else {
            Filter::Classic(Bloom::from_words(seg.read_column::<u64>("bloom")?))
        };
        Ok(seg)
    }

    pub fn rows(&self) -> usize {
        self.footer.rows as usize
    }

    pub fn time_range(&self) -> (i64, i64) {
        (self.footer.min_ts, self.footer.max_ts)
    }

    fn meta(&self, name: &str) -> Result<&ColumnMeta, StoreError> {
        self.footer
            .columns
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| StoreError::Corrupt {
                file: self.path.clone(),
                why: format!("no column {name:?}"),
            })
    }

    /// Reads a fixed-width column into a typed vector, verifying its checksum.
    pub fn read_column<T: bytemuck::Pod>(&self, name: &str) -> Result<Vec<T>, StoreError> {
        let meta = self.meta(name)?;
        let width = std::mem::size_of::<T>() as u64;
        if meta.len % width != 0 {
            return Err(StoreError::Corrupt {
                file: self.path.clone(),
                why: format!("column {name:?} length is not a multiple of {width}"),
            });
        }
        let mut out = vec![T::zeroed(); (meta.len / width) as usize];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        self.file
            .read_exact_at(bytes, meta.offset)
            .map_err(|e| StoreError::io(&self.path, e))?;
        if crc32fast::hash(bytes) != meta.crc {
            return Err(StoreError::Corrupt {
                file: self.path.clone(),
                why: format!("column {name:?} checksum mismatch"),
            });
        }
        Ok(out)
    }

    /// Reads a fixed-width column a piece at a time: memory stays bounded by the piece and
    /// nothing is copied twice. The checksum covers the whole column, so it is checked by
    /// [`ColumnReader::finish`]: a caller must not let anything computed from the pieces
    /// out before `finish` succeeded, and must bounds-check values it uses as indexes.
    pub fn column_reader<T: bytemuck::Pod>(
        &self,
        name: &str,
    ) -> Result<ColumnReader<'_, T>, StoreError> {
        let meta = self.meta(name)?.clone();
        let width = std::mem::size_of::<T>() as u64;
        if meta.len % width != 0 || meta.len / width != self.footer.rows {
            return Err(StoreError::Corrupt {
                file: self.path.clone(),
                why: format!("column {name:?} does not hold one {width}-byte value per row"),
            });
        }
        Ok(ColumnReader {
            seg: self,
            meta,
            done: 0,
            crc: crc32fast::Hasher::new(),
            _values: std::marker::PhantomData,
        })
    }

    /// The dictionary of a `dim:` column, verified.
    pub fn dict(&self, dim: &str) -> Result<Vec<String>, StoreError> {
        let bytes = self.read_column::<u8>(&format!("dict:{dim}"))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            file: self.path.clone(),
            why: format!("dictionary of {dim}: {e}"),
        })
    }

    /// The codes of a `dim:` column, one per row ([`NO_VALUE`] where absent), and its
    /// dictionary.
    pub fn dim(&self, dim: &str) -> Result<(Vec<u32>, Vec<String>), StoreError> {
        let codes = self.read_column::<u32>(&format!("dim:{dim}"))?;
        let dict = self.dict(dim)?;
        if codes
            .iter()
            .any(|&c| c != NO_VALUE && c as usize >= dict.len())
        {
            return Err(StoreError::Corrupt {
                file: self.path.clone(),
                why: format!("code out of range in dim:{dim}"),
            });
        }
        Ok((codes, dict))
    }

    /// The keys of the number columns, and whether they are all the keys with numbers;
    /// `None` for a segment written without number columns.
    pub fn numbers_meta(&self) -> Option<&NumbersMeta> {
        self.footer.numbers.as_ref()
    }

    /// The rows with a number at key `key` and the numbers, verified; `None` when the
    /// segment does not index the key (see [`Segment::numbers_meta`] for what that means).
    #[allow(clippy::type_complexity)]
    pub fn number_column(&self, key: &str) -> Result<Option<(Vec<u32>, Vec<f64>)>, StoreError> {
        if !self
            .numbers_meta()
            .is_some_and(|m| m.keys.iter().any(|k| k == key))
        {
            return Ok(None);
        }
        let (rows_name, values_name) = number_column_names(key);
        let rows = self.read_column::<u32>(&rows_name)?;
        let values = self.read_column::<f64>(&values_name)?;
        check_number_column(&rows, &values, self.rows()).map_err(|why| StoreError::Corrupt {
            file: self.path.clone(),
            why: format!("numbers of {key:?}: {why}"),
        })?;
        Ok(Some((rows, values)))
    }

    /// Calls `visit(row, payload)` for every row in order, one checksummed block at a
    /// time: each block is verified before any of its rows is decoded.
    pub fn for_each_payload(
        &self,
        visit: impl FnMut(usize, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.scan_blocks("payload", self.rows(), visit)
    }

    /// The event names whose every record is in the rare copy; `None` for a segment
    /// without one (see [`crate::rare`]).
    pub fn rare_names(&self) -> Option<&[String]> {
        self.footer.rare.as_deref()
    }

    /// Calls `visit(row, payload)` for every record of the rare copy, in row order, each
    /// block verified first: the events of [`Segment::rare_names`] without the payload.
    pub fn for_each_rare_payload(
        &self,
        mut visit: impl FnMut(usize, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let rows = self.read_column::<u32>("rare_rows")?;
        if rows.windows(2).any(|w| w[0] >= w[1])
            || rows.last().is_some_and(|&r| r as usize >= self.rows())
        {
            return Err(StoreError::Corrupt {
                file: self.path.clone(),
                why: "rare copy rows out of order or range".into(),
            });
        }
        self.scan_blocks("rare_payload", rows.len(), |k, p| {
            visit(rows[k] as usize, p)
        })
    }

    /// Visits the `n` records of a blob column checksummed in blocks (`{blob}` beside
    /// `{prefix}_offsets` and `{prefix}_blocks`, prefix = blob without `_payload`).
    fn scan_blocks(
        &self,
        blob: &str,
        n: usize,
        mut visit: impl FnMut(usize, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt {
            file: self.path.clone(),
            why: format!("{blob}: {why}"),
        };
        let prefix = blob.strip_suffix("_payload").unwrap_or(blob);
        let offsets = self.read_column::<u64>(&format!("{prefix}_offsets"))?;
        let blocks = self.read_column::<u64>(&format!("{prefix}_blocks"))?;
        let meta = self.meta(blob)?.clone();
        if offsets.len() != n + 1 || offsets.last().copied().unwrap_or(0) != meta.len {
            return Err(corrupt("offsets do not match the column"));
        }
        let mut buf = Vec::new();
        for (b, pair) in blocks.chunks_exact(2).enumerate() {
            let first = pair[0] as usize;
            let end_row = blocks.get(2 * b + 2).map_or(n, |&r| r as usize);
            if first >= end_row || end_row > n {
                return Err(corrupt("block index out of range"));
            }
            let (start, end) = (offsets[first], offsets[end_row]);
            if start > end {
                return Err(corrupt("offsets out of order"));
            }
            buf.resize((end - start) as usize, 0);
            self.file
                .read_exact_at(&mut buf, meta.offset + start)
                .map_err(|e| StoreError::io(&self.path, e))?;
            if u64::from(crc32fast::hash(&buf)) != pair[1] {
                return Err(corrupt(&format!("block {b} checksum mismatch")));
            }
            for r in first..end_row {
                let (a, z) = (
                    (offsets[r] - start) as usize,
                    (offsets[r + 1] - start) as usize,
                );
                if a > z || z > buf.len() {
                    return Err(corrupt("offsets out of order"));
                }
                visit(r, &buf[a..z])?;
            }
        }
        Ok(())
    }

    /// The dictionary of a `dim:` column alone: the distinct values the segment holds.
    pub fn dictionary(&self, dim: &str) -> Result<Vec<String>, StoreError> {
        let bytes = self.read_column::<u8>(&format!("dict:{dim}"))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            file: self.path.clone(),
            why: format!("dictionary of {dim}: {e}"),
        })
    }

    /// Calls `visit(row, payload)` for the given rows (ascending), reading and verifying
    /// only the payload blocks that hold them: a few events without reading the column.
    pub fn for_each_payload_of(
        &self,
        rows: &[usize],
        mut visit: impl FnMut(usize, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt {
            file: self.path.clone(),
            why: why.to_string(),
        };
        if rows.is_empty() {
            return Ok(());
        }
        let offsets = self.read_column::<u64>("payload_offsets")?;
        let blocks = self.read_column::<u64>("payload_blocks")?;
        let meta = self.meta("payload")?.clone();
        if offsets.len() != self.rows() + 1 || offsets.last().copied().unwrap_or(0) != meta.len {
            return Err(corrupt("payload offsets do not match the payload column"));
        }
        let mut buf = Vec::new();
        let mut next = 0;
        for (b, pair) in blocks.chunks_exact(2).enumerate() {
            let first = pair[0] as usize;
            let end_row = blocks.get(2 * b + 2).map_or(self.rows(), |&r| r as usize);
            if first >= end_row || end_row > self.rows() {
                return Err(corrupt("payload block index out of range"));
            }
            let wanted = rows[next..].iter().take_while(|&&r| r < end_row).count();
            if wanted == 0 {
                continue;
            }
            let (start, end) = (offsets[first], offsets[end_row]);
            if start > end {
                return Err(corrupt("payload offsets out of order"));
            }
            buf.resize((end - start) as usize, 0);
            self.file
                .read_exact_at(&mut buf, meta.offset + start)
                .map_err(|e| StoreError::io(&self.path, e))?;
            if u64::from(crc32fast::hash(&buf)) != pair[1] {
                return Err(corrupt(&format!("payload block {b} checksum mismatch")));
            }
            for &r in &rows[next..next + wanted] {
                if r < first {
                    return Err(corrupt("rows not ascending"));
                }
                let (a, z) = (
                    (offsets[r] - start) as usize,
                    (offsets[r + 1] - start) as usize,
                );
                if a > z || z > buf.len() {
                    return Err(corrupt("payload offsets out of order"));
                }
                visit(r, &buf[a..z])?;
            }
            next += wanted;
            if next == rows.len() {
                break;
            }
        }
        Ok(())
    }

    /// Whether this segment stored a message with this id hash: the Bloom filter first,
    /// then the group of the sorted hash column the in-memory fences point to.
    pub fn contains_hash(&self, hash: u128) -> Result<bool, StoreError> {
        if !self.may_contain(hash) {
            return Ok(false);
        }
        let (fences, group_crcs) = match self.fences.get() {
            Some(f) => f,
            None => {
                // Read once, checksum verified; concurrent first calls build it twice.
                // Each group's CRC is kept beside its fence, so the group read at lookup
                // is verified too: a damaged hash would otherwise make a duplicate look
                // new (stored twice) or a new event look stored (dropped).
                let all = self.hashes()?;
                let f = all.iter().step_by(HASH_GROUP).copied().collect();
                let crcs = all
                    .chunks(HASH_GROUP)
                    .map(|g| crc32fast::hash(bytemuck::cast_slice(g)))
                    .collect();
                self.fences.get_or_init(|| (f, crcs))
            }
        };
        let Some(group) = fences.partition_point(|&f| f <= hash).checked_sub(1) else {
            return Ok(false);
        };
        let meta = self.meta("msg_hash")?;
        let total = (meta.len / 16) as usize;
        let start = group * HASH_GROUP;
        let len = HASH_GROUP.min(total.saturating_sub(start));
        let mut buf = vec![0u128; len];
        self.file
            .read_exact_at(
                bytemuck::cast_slice_mut(&mut buf),
                meta.offset + (start * 16) as u64,
            )
            .map_err(|e| StoreError::io(&self.path, e))?;
        if crc32fast::hash(bytemuck::cast_slice(&buf)) != group_crcs[group] {
            return Err(StoreError::Corrupt {
                file: self.path.clone(),
                why: format!("message-id hash group {group} checksum mismatch"),
            });
        }
        Ok(buf.binary_search(&hash).is_ok())
    }

    /// The Bloom filter's answer alone: false means the hash is certainly not here.
    pub fn may_contain(&self, hash: u128) -> bool {
        match &self.filter {
            Filter::Classic(b) => b.may_contain(hash),
            Filter::Blocked(b) => b.may_contain(hash),
        }
    }

    /// Reads and verifies every column, every payload block and every dictionary, and
    /// that each payload is JSON: what `throughline check` runs on each segment. Memory is
    /// bounded by the largest non-payload column and one payload block.
    pub fn verify(&self) -> Result<(), StoreError> {
        for c in &self.footer.columns {
            if c.name != "payload" && c.name != "rare_payload" {
                self.read_column::<u8>(&c.name)?;
            }
        }
        for d in DIMS {
            self.dim(d)?;
        }
        for key in self.numbers_meta().map_or(&[][..], |m| &m.keys[..]) {
            self.number_column(key)?;
        }
        let persons = self.read_column::<u32>("person")?.len();
        let nodes = self.read_column::<u32>("node")?.len();
        let ts = self.read_column::<i64>("ts")?.len();
        if [persons, nodes, ts] != [self.rows(); 3] {
            return Err(StoreError::Corrupt {
                file: self.path.clone(),
                why: "column lengths differ from the row count".into(),
            });
        }
        let json = |row: usize, payload: &[u8]| {
            serde_json::from_slice::<serde::de::IgnoredAny>(payload).map_err(|e| {
                StoreError::Corrupt {
                    file: self.path.clone(),
                    why: format!("event record of row {row}: {e}"),
                }
            })?;
            Ok(())
        };
        self.for_each_payload(json)?;
        if self.rare_names().is_some() {
            self.for_each_rare_payload(json)?;
        }
        Ok(())
    }

    pub fn hashes(&self) -> Result<Vec<u128>, StoreError> {
        self.read_column::<u128>("msg_hash")
    }
}

/// Reads one segment's payloads in any order, each checksummed block verified before any
/// of its rows is handed out and a few blocks kept: compaction's access is nearly in row
/// order, so each block is read about once, in one `pread`.
pub struct PayloadReader<'s> {
    seg: &'s Segment,
    offsets: Vec<u64>,
    /// First row of each block, and its crc32.
    first_rows: Vec<usize>,
    crcs: Vec<u64>,
    payload_offset: u64,
    cache: Vec<CachedBlock>,
    tick: u64,
    /// Blocks read from disk so far.
    pub blocks_read: u64,
}

struct CachedBlock {
    block: usize,
    start: u64,
    bytes: Vec<u8>,
    used: u64,
}

impl<'s> PayloadReader<'s> {
    pub fn new(seg: &'s Segment) -> Result<PayloadReader<'s>, StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt {
            file: seg.path.clone(),
            why: why.to_string(),
        };
        let offsets = seg.read_column::<u64>("payload_offsets")?;
        let blocks = seg.read_column::<u64>("payload_blocks")?;
        let meta = seg.meta("payload")?.clone();
        let rows = seg.rows();
        if offsets.len() != rows + 1 || offsets.last().copied().unwrap_or(0) != meta.len {
            return Err(corrupt("payload offsets do not match the payload column"));
        }
        if offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(corrupt("payload offsets out of order"));
        }
        let first_rows: Vec<usize> = blocks.chunks_exact(2).map(|p| p[0] as usize).collect();
        let crcs: Vec<u64> = blocks.chunks_exact(2).map(|p| p[1]).collect();
        let ordered = first_rows.windows(2).all(|w| w[0] < w[1]);
        if rows > 0
            && (first_rows.first() != Some(&0)
                || !ordered
                || first_rows[first_rows.len() - 1] >= rows)
        {
            return Err(corrupt("payload block index out of range"));
        }
        Ok(PayloadReader {
            seg,
            offsets,
            first_rows,
            crcs,
            payload_offset: meta.offset,
            cache: Vec::with_capacity(READER_BLOCKS_CACHED),
            tick: 0,
            blocks_read: 0,
        })
    }

    /// Appends row `row`'s payload to `out`.
    pub fn append(&mut self, row: usize, out: &mut Vec<u8>) -> Result<(), StoreError> {
        let block = self.first_rows.partition_point(|&f| f <= row) - 1;
        self.tick += 1;
        let slot = match self.cache.iter().position(|c| c.block == block) {
            Some(slot) => slot,
            None => self.load(block)?,
        };
        let cached = &mut self.cache[slot];
        cached.used = self.tick;
        let a = (self.offsets[row] - cached.start) as usize;
        let z = (self.offsets[row + 1] - cached.start) as usize;
        out.extend_from_slice(&cached.bytes[a..z]);
        Ok(())
    }

    fn load(&mut self, block: usize) -> Result<usize, StoreError> {
        let end_row = self
            .first_rows
            .get(block + 1)
            .copied()
            .unwrap_or(self.seg.rows());
        let (start, end) = (self.offsets[self.first_rows[block]], self.offsets[end_row]);
        let slot = if self.cache.len() < READER_BLOCKS_CACHED {
            self.cache.push(CachedBlock {
                block,
                start,
                bytes: Vec::new(),
                used: 0,
            });
            self.cache.len() - 1
        } else {
            let (slot, _) = self
                .cache
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.used)
                .expect("a full cache has blocks");
            slot
        };
        let c = &mut self.cache[slot];
        c.block = block;
        c.start = start;
        c.bytes.resize((end - start) as usize, 0);
        self.seg
            .file
            .read_exact_at(&mut c.bytes, self.payload_offset + start)
            .map_err(|e| StoreError::io(&self.seg.path, e))?;
        self.blocks_read += 1;
        if u64::from(crc32fast::hash(&c.bytes)) != self.crcs[block] {
            c.block = usize::MAX;
            return Err(StoreError::Corrupt {
                file: self.seg.path.clone(),
                why: format!("payload block {block} checksum mismatch"),
            });
        }
        Ok(slot)
    }
}

/// Rewrites a segment's footer as a binary before number columns wrote it (version 1, no
/// number list; the columns' bytes stay, unnamed): what stores written before hold.
#[cfg(test)]
pub(crate) fn strip_numbers(path: &Path) {
    let seg = Segment::open(path).unwrap();
    let mut footer = seg.footer.clone();
    let size = seg.file.metadata().unwrap().len();
    drop(seg);
    footer.version = 1;
    footer.numbers = None;
    footer.columns.retain(|c| !c.name.starts_with("num_"));
    let footer = serde_json::to_vec(&footer).unwrap();
    // Cut where the trailer says the stored footer starts.
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(
        bytes[(size - TRAILER_BYTES) as usize..][..8]
            .try_into()
            .unwrap(),
    );
    let start = (size - TRAILER_BYTES - len) as usize;
    let mut out = bytes[..start].to_vec();
    out.extend_from_slice(&footer);
    out.extend_from_slice(&(footer.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&footer).to_le_bytes());
    out.extend_from_slice(END_MAGIC);
    std::fs::write(path, out).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(hashes: Vec<u128>) -> Columns {
        let rows = 3;
        Columns {
            persons: vec![0; rows],
            nodes: vec![0; rows],
            ts: vec![1, 2, 3],
            kinds: vec![0; rows],
            hashes,
            numbers: NumberIndex::Derive,
        }
    }

    fn no_dims(_: usize) -> Result<DimColumn<'static>, StoreError> {
        Ok(DimColumn {
            codes: vec![NO_VALUE; 3],
            dict: Vec::new(),
        })
    }

    /// Every stored hash is found, in the first, a middle and the last (partial) group of
    /// the fence index, and hashes around them are not.
    #[test]
    fn stored_hashes_are_found_through_the_fences() {
        let dir = crate::testutil::TempDir::new("fences");
        let path = dir.path().join("1.seg");
        let stored: Vec<u128> = (0..1000u128).map(|i| i * 10 + 5).collect();
        write(&path, columns(stored.clone()), no_dims, |_, out| {
            out.extend_from_slice(b"{}");
            Ok(())
        })
        .unwrap();
        let seg = Segment::open(&path).unwrap();
        for &h in &stored {
            assert!(seg.contains_hash(h).unwrap(), "{h} not found");
            for other in [h - 1, h + 1] {
                // A filter false positive must still come back false.
                assert!(!seg.contains_hash(other).unwrap(), "{other} found");
            }
        }
        assert!(!seg.contains_hash(0).unwrap());
        assert!(!seg.contains_hash(u128::MAX).unwrap());
    }
}
