//! Which message ids a project already stored, for the ClickHouse backend: the hashes of
//! records still in the outbox log in memory, and those already forwarded in sorted run
//! files on disk, each with a sparse index in memory (one hash per 4 KB page), so a lookup
//! is one binary search in memory and one page read.
//!
//! Owns the run files under `DIR/projects/NAME/clickhouse/hashes/`. The outbox log is the
//! truth for records not yet in a run: a run is written (and fsynced) before the log file
//! whose hashes it holds is deleted, so every stored message's hash is in one or the other,
//! also across crashes.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ClickHouseError;

const MAGIC: &[u8; 4] = b"THH1";
/// magic | count: u64 | hashes (16 bytes LE each) | crc32 of everything before
const HEADER_BYTES: u64 = 12;
const HASH_BYTES: u64 = 16;
/// Hashes per page: one sparse-index entry per 4 KB read.
const PAGE_HASHES: usize = 256;
/// Runs kept before they are merged into one: a lookup reads at most this many pages.
pub const RUNS_MAX: usize = 8;

struct Run {
    path: PathBuf,
    file: File,
    count: u64,
    /// The first hash of each page.
    sparse: Vec<u128>,
}

impl Run {
    fn open(path: &Path) -> Result<Run, ClickHouseError> {
        let io = |e| ClickHouseError::io(path, e);
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut r = BufReader::with_capacity(1 << 20, &file);
        let mut head = [0u8; HEADER_BYTES as usize];
        r.read_exact(&mut head).map_err(io)?;
        let corrupt = |why: &str| ClickHouseError::Corrupt {
            file: path.to_path_buf(),
            why: why.to_string(),
        };
        if &head[..4] != MAGIC {
            return Err(corrupt("not a hash run"));
        }
        let count = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
        if len != HEADER_BYTES + count * HASH_BYTES + 4 {
            return Err(corrupt("length does not match its count"));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        let mut sparse = Vec::with_capacity(count as usize / PAGE_HASHES + 1);
        let mut prev: Option<u128> = None;
        let mut buf = [0u8; 16];
        for i in 0..count {
            r.read_exact(&mut buf).map_err(io)?;
            crc.update(&buf);
            let h = u128::from_le_bytes(buf);
            if prev.is_some_and(|p| p >= h) {
                return Err(corrupt("hashes out of order"));
            }
            prev = Some(h);
            if (i as usize).is_multiple_of(PAGE_HASHES) {
                sparse.push(h);
            }
        }
        let mut tail = [0u8; 4];
        r.read_exact(&mut tail).map_err(io)?;
        if u32::from_le_bytes(tail) != crc.finalize() {
            return Err(corrupt("checksum mismatch"));
        }
        drop(r);
        Ok(Run {
            path: path.to_path_buf(),
            file,
            count,
            sparse,
        })
    }

    fn contains(&self, h: u128) -> Result<bool, ClickHouseError> {
        let page = self.sparse.partition_point(|&first| first <= h);
        if page == 0 {
            return Ok(false);
        }
        let page = page - 1;
        let start = (page * PAGE_HASHES) as u64;
        let n = (self.count - start).min(PAGE_HASHES as u64) as usize;
        let mut buf = vec![0u8; n * HASH_BYTES as usize];
        self.file
            .read_exact_at(&mut buf, HEADER_BYTES + start * HASH_BYTES)
            .map_err(|e| ClickHouseError::io(&self.path, e))?;
        let at = |i: usize| u128::from_le_bytes(buf[i * 16..i * 16 + 16].try_into().expect("16"));
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match at(mid).cmp(&h) {
                std::cmp::Ordering::Equal => return Ok(true),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(false)
    }

    /// Every hash, in order (for merging).
    fn iter(
        &self,
    ) -> Result<impl Iterator<Item = Result<u128, ClickHouseError>> + '_, ClickHouseError> {
        let mut r = BufReader::with_capacity(1 << 20, &self.file);
        std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(HEADER_BYTES))
            .map_err(|e| ClickHouseError::io(&self.path, e))?;
        let mut left = self.count;
        Ok(std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            let mut buf = [0u8; 16];
            Some(
                r.read_exact(&mut buf)
                    .map(|_| u128::from_le_bytes(buf))
                    .map_err(|e| ClickHouseError::io(&self.path, e)),
            )
        }))
    }
}

/// Writes a run file from hashes in strictly increasing order: temp file, fsync, rename.
fn write_run(
    dir: &Path,
    name: &str,
    count: u64,
    hashes: impl Iterator<Item = Result<u128, ClickHouseError>>,
) -> Result<PathBuf, ClickHouseError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let io = |e| ClickHouseError::io(&tmp, e);
    let f = File::create(&tmp).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, &f);
    let mut crc = crc32fast::Hasher::new();
    let mut head = Vec::with_capacity(12);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&count.to_le_bytes());
    crc.update(&head);
    w.write_all(&head).map_err(io)?;
    let mut written = 0u64;
    for h in hashes {
        let b = h?.to_le_bytes();
        crc.update(&b);
        w.write_all(&b).map_err(io)?;
        written += 1;
    }
    debug_assert_eq!(written, count);
    w.write_all(&crc.finalize().to_le_bytes()).map_err(io)?;
    w.flush().map_err(io)?;
    drop(w);
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    crate::outbox::sync_dir(dir)?;
    Ok(path)
}

/// The dedupe index of one project.
pub struct HashIndex {
    dir: PathBuf,
    runs: Vec<Arc<Run>>,
    next_run: u64,
    /// Hashes of records still in the outbox log.
    recent: HashSet<u128>,
}

impl HashIndex {
    pub fn open(dir: &Path) -> Result<HashIndex, ClickHouseError> {
        std::fs::create_dir_all(dir).map_err(|e| ClickHouseError::io(dir, e))?;
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| ClickHouseError::io(dir, e))? {
            let entry = entry.map_err(|e| ClickHouseError::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A run that never got renamed: its log file still holds its hashes.
                let _ = std::fs::remove_file(entry.path());
            } else if let Some(n) = name
                .strip_prefix("run-")
                .and_then(|r| r.strip_suffix(".bin"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let runs = numbers
            .iter()
            .map(|n| Run::open(&dir.join(run_name(*n))).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HashIndex {
            dir: dir.to_path_buf(),
            runs,
            next_run: numbers.last().map_or(1, |n| n + 1),
            recent: HashSet::new(),
        })
    }

    pub fn contains(&self, h: u128) -> Result<bool, ClickHouseError> {
        if self.recent.contains(&h) {
            return Ok(true);
        }
        for r in &self.runs {
            if r.contains(h)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn insert_recent(&mut self, h: u128) {
        self.recent.insert(h);
    }

    /// Hashes known, in runs and in the log (a hash repeated in two runs counts twice).
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|r| r.count).sum::<u64>() + self.recent.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves hashes of records leaving the log into a new run on disk (durable when this
    /// returns); the caller deletes the log file afterwards.
    pub fn add_run(&mut self, mut hashes: Vec<u128>) -> Result<(), ClickHouseError> {
        hashes.sort_unstable();
        hashes.dedup();
        if hashes.is_empty() {
            return Ok(());
        }
        let name = run_name(self.next_run);
        self.next_run += 1;
        let path = write_run(
            &self.dir,
            &name,
            hashes.len() as u64,
            hashes.iter().map(|h| Ok(*h)),
        )?;
        self.runs.push(Arc::new(Run::open(&path)?));
        for h in &hashes {
            self.recent.remove(h);
        }
        if self.runs.len() > RUNS_MAX {
            self.merge_runs()?;
        }
        Ok(())
    }

    /// Merges every run into one: a k-way merge read twice (once to count, once to
    /// write), so memory stays at one buffer per run whatever the index holds.
    fn merge_runs(&mut self) -> Result<(), ClickHouseError> {
        let runs = std::mem::take(&mut self.runs);
        let mut count = 0u64;
        for h in Merged::new(&runs)? {
            h?;
            count += 1;
        }
        let name = run_name(self.next_run);
        self.next_run += 1;
        let path = write_run(&self.dir, &name, count, Merged::new(&runs)?)?;
        self.runs = vec![Arc::new(Run::open(&path)?)];
        for r in runs {
            std::fs::remove_file(&r.path).map_err(|e| ClickHouseError::io(&r.path, e))?;
        }
        Ok(())
    }
}

type HashIter<'a> = Box<dyn Iterator<Item = Result<u128, ClickHouseError>> + 'a>;

/// The distinct hashes of several runs in order (runs can overlap after a crash between
/// writing a run and deleting its log file).
struct Merged<'a> {
    iters: Vec<HashIter<'a>>,
    heads: Vec<Option<u128>>,
    last: Option<u128>,
}

impl<'a> Merged<'a> {
    fn new(runs: &'a [Arc<Run>]) -> Result<Merged<'a>, ClickHouseError> {
        let mut iters: Vec<HashIter<'a>> = Vec::new();
        let mut heads = Vec::new();
        for r in runs {
            let mut it: HashIter<'a> = Box::new(r.iter()?);
            heads.push(it.next().transpose()?);
            iters.push(it);
        }
        Ok(Merged {
            iters,
            heads,
            last: None,
        })
    }
}

impl Iterator for Merged<'_> {
    type Item = Result<u128, ClickHouseError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (k, h) = self
                .heads
                .iter()
                .enumerate()
                .filter_map(|(k, h)| h.map(|h| (k, h)))
                .min_by_key(|(_, h)| *h)?;
            self.heads[k] = match self.iters[k].next().transpose() {
                Ok(next) => next,
                Err(e) => return Some(Err(e)),
            };
            if self.last != Some(h) {
                self.last = Some(h);
                return Some(Ok(h));
            }
        }
    }
}

fn run_name(n: u64) -> String {
    format!("run-{n:09}.bin")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tl-dedupe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Hashes moved into runs are still found, after many runs merge and after a reopen.
    #[test]
    fn runs_answer_like_a_set_across_merges_and_reopen() {
        let d = dir("runs");
        let mut idx = HashIndex::open(&d).unwrap();
        let mut truth = HashSet::new();
        let mut x = 0x9e3779b97f4a7c15u128;
        for round in 0..(RUNS_MAX + 3) {
            let mut batch = Vec::new();
            for _ in 0..(700 + round * 13) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                batch.push(x);
                truth.insert(x);
            }
            // A crash mid-retire can repeat a hash in two runs.
            batch.push(*truth.iter().next().unwrap());
            idx.add_run(batch).unwrap();
        }
        assert!(idx.runs.len() <= RUNS_MAX);
        idx.insert_recent(7);
        for h in &truth {
            assert!(idx.contains(*h).unwrap());
        }
        assert!(idx.contains(7).unwrap());
        assert!(!idx.contains(8).unwrap());
        // Runs written since the last merge may repeat a hash: `len` counts it twice.
        assert!(idx.len() > truth.len() as u64);
        drop(idx);
        let idx = HashIndex::open(&d).unwrap();
        assert!(truth.iter().all(|h| idx.contains(*h).unwrap()));
        assert!(!idx.contains(u128::MAX).unwrap() || truth.contains(&u128::MAX));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A damaged run is an error at open, not a silently smaller index.
    #[test]
    fn a_damaged_run_is_reported() {
        let d = dir("damaged");
        let mut idx = HashIndex::open(&d).unwrap();
        idx.add_run((1..1000u128).collect()).unwrap();
        drop(idx);
        let path = d.join(run_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            HashIndex::open(&d),
            Err(ClickHouseError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&d);
    }
}
