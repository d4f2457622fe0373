//! The write-ahead log: length-prefixed, checksummed records in numbered files.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload`. A record is acknowledged only
//! after the file holding it was fsynced. Recovery reads whole frames and stops at the
//! first short or mismatching one: that is a torn tail from a crash mid-write (it was never
//! acknowledged), so it is cut off and every whole record before it is kept.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, IoSlice, Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::fsutil::sync_dir;

pub(crate) const HEADER_BYTES: usize = 8;
/// Bound on one record; a length above it can only be a corrupt header.
pub const RECORD_BYTES_MAX: usize = 4 * 1024 * 1024;

pub fn file_name(seq: u64) -> String {
    format!("{seq:012}.wal")
}

/// Sequence numbers of the WAL files in `dir`, ascending.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name.strip_suffix(".wal").and_then(|s| s.parse().ok()) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Appends frames to one WAL file.
pub struct WalWriter {
    file: File,
    pub seq: u64,
    #[cfg_attr(not(test), allow(dead_code))]
    pub path: PathBuf,
    #[cfg(test)]
    buf: Vec<u8>,
    /// File length after the last successful commit: what a failed commit is cut back to.
    durable_len: u64,
}

impl WalWriter {
    /// Creates a new, empty WAL file and makes its existence durable.
    pub fn create(dir: &Path, seq: u64) -> io::Result<WalWriter> {
        let path = dir.join(file_name(seq));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(WalWriter {
            file,
            seq,
            path,
            #[cfg(test)]
            buf: Vec::new(),
            durable_len: 0,
        })
    }

    /// Stages one record; nothing reaches the file until [`WalWriter::commit`].
    #[cfg(test)]
    pub fn stage(&mut self, payload: &[u8]) {
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.buf.extend_from_slice(payload);
    }

    /// Writes the staged records and fsyncs: after `Ok`, they survive a crash.
    #[cfg(test)]
    pub fn commit(&mut self) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        self.commit_frames(&[&buf])
    }

    /// Writes whole frames (built by [`crate::EventBatch`]) with one vectored write and
    /// fsyncs: after `Ok`, they survive a crash. After an error the caller must
    /// [`WalWriter::rollback`] before writing again.
    pub fn commit_frames(&mut self, chunks: &[&[u8]]) -> io::Result<()> {
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        if total == 0 {
            return Ok(());
        }
        let mut slices: Vec<IoSlice> = chunks
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| IoSlice::new(c))
            .collect();
        let result =
            write_all_vectored(&mut self.file, &mut slices).and_then(|_| self.file.sync_data());
        if result.is_ok() {
            self.durable_len += total as u64;
        }
        result
    }

    /// After a failed commit: cuts the file back to its last durable length, so a partial
    /// frame can never sit in front of records acknowledged later.
    pub fn rollback(&mut self) -> io::Result<()> {
        self.file.set_len(self.durable_len)?;
        self.file.seek(io::SeekFrom::Start(self.durable_len))?;
        self.file.sync_all()
    }
}

/// `write_all` for several buffers: one `writev` per call, as many calls as it takes.
fn write_all_vectored(file: &mut File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the log file took no bytes",
                ))
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What recovery found in one file.
pub struct Recovered {
    pub records: Vec<Vec<u8>>,
    /// Bytes after the last whole record, cut off.
    pub torn_bytes: u64,
}

/// Reads every whole record of a WAL file and truncates a torn tail.
pub fn recover(path: &Path) -> io::Result<Recovered> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let (rec, good) = read_records(&file)?;
    if rec.torn_bytes > 0 {
        file.set_len(good)?;
        file.sync_all()?;
    }
    Ok(rec)
}

/// [`recover`] without changing the file: what `throughline check` and backups read.
pub fn scan(path: &Path) -> io::Result<Recovered> {
    Ok(read_records(&File::open(path)?)?.0)
}

/// The length of the whole records at the start of an open log file, read without keeping
/// them: what a backup copies of a file the writer may be appending to.
pub fn whole_records_len(mut file: &File) -> io::Result<u64> {
    let total = file.metadata()?.len();
    file.seek(io::SeekFrom::Start(0))?;
    let mut reader = BufReader::with_capacity(1 << 20, file.take(total));
    let mut good: u64 = 0;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; HEADER_BYTES];
        if !read_full(&mut reader, &mut header)? {
            return Ok(good);
        }
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        if len > RECORD_BYTES_MAX {
            return Ok(good);
        }
        payload.resize(len, 0);
        if !read_full(&mut reader, &mut payload)? || crc32fast::hash(&payload) != crc {
            return Ok(good);
        }
        good += (HEADER_BYTES + len) as u64;
    }
}

/// The whole records of a log file and the length they end at.
fn read_records(file: &File) -> io::Result<(Recovered, u64)> {
    let total = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut records = Vec::new();
    let mut good: u64 = 0;
    loop {
        let mut header = [0u8; HEADER_BYTES];
        if !read_full(&mut reader, &mut header)? {
            break;
        }
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        if len > RECORD_BYTES_MAX {
            break;
        }
        let mut payload = vec![0u8; len];
        if !read_full(&mut reader, &mut payload)? || crc32fast::hash(&payload) != crc {
            break;
        }
        good += (HEADER_BYTES + len) as u64;
        records.push(payload);
    }
    Ok((
        Recovered {
            records,
            torn_bytes: total - good,
        },
        good,
    ))
}

/// Fills `buf` completely; false on a clean or partial end of file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Rng, TempDir};

    fn write_records(dir: &Path, records: &[Vec<u8>]) -> PathBuf {
        let mut w = WalWriter::create(dir, 1).unwrap();
        for r in records {
            w.stage(r);
        }
        w.commit().unwrap();
        w.path.clone()
    }

    fn random_records(rng: &mut Rng) -> Vec<Vec<u8>> {
        (0..rng.below(40) + 1)
            .map(|i| {
                let len = rng.below(300) as usize;
                (0..len).map(|j| (i * 31 + j as u64) as u8).collect()
            })
            .collect()
    }

    /// Property: cutting the file at any byte keeps exactly the records wholly before the
    /// cut, and the file is left ending at the last whole record.
    #[test]
    fn truncation_anywhere_keeps_every_whole_record() {
        let mut rng = Rng::new(11);
        for _ in 0..60 {
            let dir = TempDir::new("wal-trunc");
            let records = random_records(&mut rng);
            let path = write_records(dir.path(), &records);
            let total = std::fs::metadata(&path).unwrap().len();
            let cut = rng.below(total + 1);
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(cut).unwrap();
            let rec = recover(&path).unwrap();
            let mut end = 0u64;
            let expect: Vec<_> = records
                .iter()
                .take_while(|r| {
                    end += (HEADER_BYTES + r.len()) as u64;
                    end <= cut
                })
                .cloned()
                .collect();
            assert_eq!(rec.records, expect);
            let kept: u64 = expect.iter().map(|r| (HEADER_BYTES + r.len()) as u64).sum();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), kept);
            assert_eq!(rec.torn_bytes, cut - kept);
        }
    }

    /// Property: flipping any byte of the last record drops that record and nothing else.
    #[test]
    fn a_corrupted_tail_record_is_dropped_alone() {
        let mut rng = Rng::new(12);
        for _ in 0..60 {
            let dir = TempDir::new("wal-corrupt");
            let mut records = random_records(&mut rng);
            records.push(b"last record".to_vec());
            let path = write_records(dir.path(), &records);
            let mut bytes = std::fs::read(&path).unwrap();
            let last_len = HEADER_BYTES + records.last().unwrap().len();
            let at = bytes.len() - 1 - rng.below(last_len as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
            std::fs::write(&path, &bytes).unwrap();
            let rec = recover(&path).unwrap();
            assert_eq!(rec.records, records[..records.len() - 1]);
        }
    }
}
