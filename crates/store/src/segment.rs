//! Immutable columnar segment files, rows sorted by (person, timestamp).
//!
//! Layout: `MAGIC | column blobs (8-byte aligned) | footer JSON | footer_len u64 |
//! footer_crc u32 | END_MAGIC`. Fixed-width columns are little-endian arrays read straight
//! into typed vectors without decoding, which is what makes per-person scans fast; every
//! column carries a CRC32 checked when it is read. The footer is self-describing, so later
//! versions add columns without breaking older files. The full event travels in the
//! `payload` column (the same JSON as the WAL record), which export and Parquet use.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use throughline_model::{DIMS, DIM_COUNT};

use crate::bloom::Bloom;
use crate::fsutil::sync_dir;
use crate::StoreError;

const MAGIC: &[u8; 8] = b"TLSEG\0\0\x01";
const END_MAGIC: &[u8; 8] = b"TLSEGEND";
const TRAILER_BYTES: u64 = 8 + 4 + 8;
/// The payload column is checksummed in blocks of about this size, so a reader can verify
/// each piece before decoding it while keeping memory bounded.
const PAYLOAD_BLOCK_BYTES: u64 = 1 << 20;
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
}

/// One row handed to [`write`]: rows must already be in (person, timestamp) order.
pub struct RowMeta<'a> {
    pub person: u32,
    pub node: u32,
    pub ts: i64,
    pub kind: u8,
    /// Values of [`throughline_model::DIMS`], dictionary-coded per segment on write.
    pub dims: [Option<&'a str>; DIM_COUNT],
}

/// Writes a segment durably (temp file, fsync, rename, directory fsync).
/// `payload(i, buf)` fills `buf` with row `i`'s event: payloads stream from their source
/// (the in-memory table, or input segments when compacting) so a segment of any size is
/// written in bounded memory. `hashes` are the message-id hashes the segment answers for
/// in deduplication.
pub fn write(
    path: &Path,
    rows: &[RowMeta],
    mut payload: impl FnMut(usize, &mut Vec<u8>) -> Result<(), StoreError>,
    mut hashes: Vec<u128>,
) -> Result<(), StoreError> {
    write_inner(path, rows, &mut payload, &mut hashes).map_err(|e| match e {
        WriteError::Io(e) => StoreError::io(path, e),
        WriteError::Source(e) => e,
    })
}

/// Fills the buffer with one row's payload.
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
    rows: &[RowMeta],
    payload: &mut PayloadSource,
    hashes: &mut Vec<u128>,
) -> Result<(), WriteError> {
    let tmp = path.with_extension("seg.tmp");
    let file = File::create(&tmp)?;
    let mut w = Writer {
        out: BufWriter::with_capacity(1 << 20, file),
        pos: 0,
        columns: Vec::new(),
    };
    w.raw(MAGIC)?;

    let persons: Vec<u32> = rows.iter().map(|r| r.person).collect();
    let nodes: Vec<u32> = rows.iter().map(|r| r.node).collect();
    let ts: Vec<i64> = rows.iter().map(|r| r.ts).collect();
    let kinds: Vec<u8> = rows.iter().map(|r| r.kind).collect();
    hashes.sort_unstable();
    hashes.dedup();
    let mut bloom = Bloom::with_keys(hashes.len());
    for &h in hashes.iter() {
        bloom.insert(h);
    }

    w.column("person", bytemuck::cast_slice(&persons))?;
    w.column("node", bytemuck::cast_slice(&nodes))?;
    w.column("ts", bytemuck::cast_slice(&ts))?;
    w.column("type", &kinds)?;
    for (d, dim) in DIMS.iter().enumerate() {
        let mut dict: Vec<&str> = Vec::new();
        let mut ids: HashMap<&str, u32> = HashMap::new();
        let codes: Vec<u32> = rows
            .iter()
            .map(|r| match r.dims[d] {
                None => NO_VALUE,
                Some(v) => *ids.entry(v).or_insert_with(|| {
                    dict.push(v);
                    (dict.len() - 1) as u32
                }),
            })
            .collect();
        w.column(&format!("dim:{dim}"), bytemuck::cast_slice(&codes))?;
        w.column(
            &format!("dict:{dim}"),
            &serde_json::to_vec(&dict).expect("dictionary serializes"),
        )?;
    }
    // The payload streams row by row; its offsets and per-block checksums are collected on
    // the way and written after it.
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0u64);
    // Pairs of (first row, crc32) per block of whole rows.
    let mut blocks: Vec<u64> = Vec::new();
    let (mut block_row, mut block_start, mut at) = (0usize, 0u64, 0u64);
    let mut block_crc = crc32fast::Hasher::new();
    let mut column_crc = crc32fast::Hasher::new();
    w.align()?;
    let payload_offset = w.pos;
    let mut buf = Vec::new();
    for i in 0..rows.len() {
        buf.clear();
        payload(i, &mut buf).map_err(WriteError::Source)?;
        if at - block_start >= PAYLOAD_BLOCK_BYTES {
            blocks.extend([block_row as u64, u64::from(block_crc.clone().finalize())]);
            (block_row, block_start) = (i, at);
            block_crc = crc32fast::Hasher::new();
        }
        block_crc.update(&buf);
        column_crc.update(&buf);
        w.raw(&buf)?;
        at += buf.len() as u64;
        offsets.push(at);
    }
    if !rows.is_empty() {
        blocks.extend([block_row as u64, u64::from(block_crc.finalize())]);
    }
    w.columns.push(ColumnMeta {
        name: "payload".into(),
        offset: payload_offset,
        len: at,
        crc: column_crc.finalize(),
    });
    w.column("payload_offsets", bytemuck::cast_slice(&offsets))?;
    w.column("payload_blocks", bytemuck::cast_slice(&blocks))?;
    w.column("msg_hash", bytemuck::cast_slice(hashes))?;
    w.column("bloom", bytemuck::cast_slice(bloom.words()))?;

    let footer = Footer {
        version: 1,
        rows: rows.len() as u64,
        min_ts: ts.iter().copied().min().unwrap_or(0),
        max_ts: ts.iter().copied().max().unwrap_or(0),
        columns: w.columns.clone(),
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
}

impl Writer {
    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
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
    bloom: Bloom,
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
            bloom: Bloom::with_keys(0),
        };
        seg.bloom = Bloom::from_words(seg.read_column::<u64>("bloom")?);
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

    /// Calls `visit(row, payload)` for every row in order, one checksummed block at a
    /// time: each block is verified before any of its rows is decoded.
    pub fn for_each_payload(
        &self,
        mut visit: impl FnMut(usize, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt {
            file: self.path.clone(),
            why: why.to_string(),
        };
        let offsets = self.read_column::<u64>("payload_offsets")?;
        let blocks = self.read_column::<u64>("payload_blocks")?;
        let meta = self.meta("payload")?.clone();
        if offsets.len() != self.rows() + 1 || offsets.last().copied().unwrap_or(0) != meta.len {
            return Err(corrupt("payload offsets do not match the payload column"));
        }
        let mut buf = Vec::new();
        for (b, pair) in blocks.chunks_exact(2).enumerate() {
            let first = pair[0] as usize;
            let end_row = blocks.get(2 * b + 2).map_or(self.rows(), |&r| r as usize);
            if first >= end_row || end_row > self.rows() {
                return Err(corrupt("payload block index out of range"));
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
            for r in first..end_row {
                let (a, z) = (
                    (offsets[r] - start) as usize,
                    (offsets[r + 1] - start) as usize,
                );
                if a > z || z > buf.len() {
                    return Err(corrupt("payload offsets out of order"));
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

    /// Calls `visit(row, payload)` for the given rows only (ascending), reading and
    /// verifying just the checksummed blocks that hold them.
    pub fn for_each_payload_at(
        &self,
        rows: &[usize],
        mut visit: impl FnMut(usize, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let corrupt = |why: &str| StoreError::Corrupt {
            file: self.path.clone(),
            why: why.to_string(),
        };
        let offsets = self.read_column::<u64>("payload_offsets")?;
        let blocks = self.read_column::<u64>("payload_blocks")?;
        let meta = self.meta("payload")?.clone();
        if offsets.len() != self.rows() + 1 || offsets.last().copied().unwrap_or(0) != meta.len {
            return Err(corrupt("payload offsets do not match the payload column"));
        }
        let firsts: Vec<usize> = blocks.chunks_exact(2).map(|p| p[0] as usize).collect();
        let mut buf = Vec::new();
        let mut at = 0;
        while at < rows.len() {
            let row = rows[at];
            if row >= self.rows() || (at > 0 && row <= rows[at - 1]) {
                return Err(corrupt("rows asked for out of range or out of order"));
            }
            let b = firsts.partition_point(|&f| f <= row).saturating_sub(1);
            let first = firsts.get(b).copied().unwrap_or(0);
            let end_row = firsts.get(b + 1).copied().unwrap_or(self.rows());
            if first > row || end_row > self.rows() || first >= end_row {
                return Err(corrupt("payload block index out of range"));
            }
            let (start, end) = (offsets[first], offsets[end_row]);
            if start > end {
                return Err(corrupt("payload offsets out of order"));
            }
            buf.resize((end - start) as usize, 0);
            self.file
                .read_exact_at(&mut buf, meta.offset + start)
                .map_err(|e| StoreError::io(&self.path, e))?;
            if u64::from(crc32fast::hash(&buf)) != blocks[2 * b + 1] {
                return Err(corrupt(&format!("payload block {b} checksum mismatch")));
            }
            while at < rows.len() && rows[at] < end_row {
                let r = rows[at];
                let (a, z) = (
                    (offsets[r] - start) as usize,
                    (offsets[r + 1] - start) as usize,
                );
                if a > z || z > buf.len() {
                    return Err(corrupt("payload offsets out of order"));
                }
                visit(r, &buf[a..z])?;
                at += 1;
            }
        }
        Ok(())
    }

    /// Whether this segment stored a message with this id hash: the Bloom filter first,
    /// then a binary search of the sorted hash column on disk.
    pub fn contains_hash(&self, hash: u128) -> Result<bool, StoreError> {
        if !self.bloom.may_contain(hash) {
            return Ok(false);
        }
        let meta = self.meta("msg_hash")?;
        let (mut lo, mut hi) = (0u64, meta.len / 16);
        let mut buf = [0u8; 16];
        while lo < hi {
            let mid = (lo + hi) / 2;
            self.file
                .read_exact_at(&mut buf, meta.offset + mid * 16)
                .map_err(|e| StoreError::io(&self.path, e))?;
            let h = u128::from_le_bytes(buf);
            match h.cmp(&hash) {
                std::cmp::Ordering::Equal => return Ok(true),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(false)
    }

    /// Reads one row's payload with the offsets from `payload_offsets`, unverified: callers
    /// verify the column first with [`Segment::verify_payload`].
    pub fn read_payload(
        &self,
        offsets: &[u64],
        row: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let meta = self.meta("payload")?;
        let (a, z) = (offsets[row], offsets[row + 1]);
        if a > z || z > meta.len {
            return Err(StoreError::Corrupt {
                file: self.path.clone(),
                why: "payload offsets out of range".into(),
            });
        }
        buf.resize((z - a) as usize, 0);
        self.file
            .read_exact_at(buf, meta.offset + a)
            .map_err(|e| StoreError::io(&self.path, e))
    }

    /// Checks every payload block's checksum, streaming.
    pub fn verify_payload(&self) -> Result<(), StoreError> {
        self.for_each_payload(|_, _| Ok(()))
    }

    pub fn hashes(&self) -> Result<Vec<u128>, StoreError> {
        self.read_column::<u128>("msg_hash")
    }
}
