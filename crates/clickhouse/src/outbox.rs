//! The outbox: the ClickHouse backend's local write-ahead log, where a 200 is earned.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload` (the event's JSON), in numbered
//! files under `DIR/projects/NAME/clickhouse/log/`. One writer thread takes append requests
//! from a bounded queue, drops message ids the project already stored ([`HashIndex`]),
//! writes the group's frames, fsyncs once and only then answers. Records never change once
//! written; the forwarder reads them in order behind the durable end and, once ClickHouse
//! has them, retires whole files (their hashes move into a run first).
//!
//! Bounds: the queue (then `Overloaded`), events per group commit, bytes per file, and the
//! backlog: bytes written but not yet in ClickHouse. Past `backlog_bytes_max` an append is
//! refused with `Backlog` (HTTP 503 with Retry-After) instead of growing the disk without
//! end while ClickHouse is away.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use throughline_model::Event;
use throughline_store::{message_hash, AppendOutcome};

use crate::dedupe::HashIndex;
use crate::ClickHouseError;

const HEADER_BYTES: u64 = 8;
/// Bound on one record; a longer length can only be a damaged header.
pub const RECORD_BYTES_MAX: usize = 4 << 20;

/// A message encoded on the caller's thread: its JSON and the hash of its message id.
pub struct Record {
    payload: Vec<u8>,
    hash: u128,
}

impl Record {
    pub fn new(event: &Event) -> Record {
        Record {
            payload: serde_json::to_vec(event).expect("events serialize"),
            hash: message_hash(&event.message_id),
        }
    }

    /// The records of a batch encoded for the embedded store (the same event JSON), so
    /// the request's thread encodes each message once whichever backend keeps it.
    pub fn of_batch(batch: &throughline_store::EventBatch) -> Vec<Record> {
        batch
            .records()
            .map(|(hash, payload)| Record {
                payload: payload.to_vec(),
                hash,
            })
            .collect()
    }
}

/// A place in the log: the record at `seq` starts at `offset` in file `file`. Positions
/// order the same way by (file, offset) and by seq.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub file: u64,
    pub offset: u64,
    pub seq: u64,
}

#[derive(Clone, Debug)]
pub struct OutboxOptions {
    pub queue_requests_max: usize,
    pub group_events_max: usize,
    /// Bytes written but not yet acknowledged by ClickHouse; beyond it appends get 503.
    pub backlog_bytes_max: u64,
    /// A log file is closed at this size and a new one begun.
    pub log_file_bytes_max: u64,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            queue_requests_max: 1024,
            group_events_max: 50_000,
            backlog_bytes_max: 4 << 30,
            log_file_bytes_max: 64 << 20,
        }
    }
}

type Reply = Box<dyn FnOnce(Result<AppendOutcome, ClickHouseError>) + Send>;

struct Request {
    records: Vec<Record>,
    reply: Reply,
}

/// What the writer thread takes, in order: appends, and the roll an erasure asks for.
enum Job {
    Append(Request),
    Roll(Box<dyn FnOnce(Result<Position, ClickHouseError>) + Send>),
}

/// What the writer and the forwarder share.
pub(crate) struct Shared {
    /// The durable end: where the next record will go.
    pub end: Mutex<Position>,
    pub grown: Condvar,
    pub index: RwLock<HashIndex>,
    pub backlog_bytes: AtomicU64,
}

pub struct Outbox {
    log_dir: PathBuf,
    tx: Mutex<Option<SyncSender<Job>>>,
    pub(crate) shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

pub fn file_name(n: u64) -> String {
    format!("{n:012}.log")
}

/// Numbers of the log files in `dir`, ascending.
pub fn list(dir: &Path) -> Result<Vec<u64>, ClickHouseError> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ClickHouseError::io(dir, e))? {
        let entry = entry.map_err(|e| ClickHouseError::io(dir, e))?;
        if let Some(n) = entry
            .file_name()
            .to_string_lossy()
            .strip_suffix(".log")
            .and_then(|s| s.parse().ok())
        {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

pub fn sync_dir(dir: &Path) -> Result<(), ClickHouseError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ClickHouseError::io(dir, e))
}

/// A small JSON state file, or `None` when it does not exist yet.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
) -> Result<Option<T>, ClickHouseError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ClickHouseError::Corrupt {
                file: path.to_path_buf(),
                why: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ClickHouseError::io(path, e)),
    }
}

/// Writes a small file atomically: temp file, fsync, rename, directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ClickHouseError> {
    let tmp = path.with_extension("tmp");
    let io = |e| ClickHouseError::io(&tmp, e);
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    sync_dir(path.parent().expect("a file in a directory"))
}

/// Reads whole frames from `offset` until `end` (or the file's end); returns them with
/// the offset after the last one. A short or mismatching frame stops the read.
fn read_frames(
    path: &Path,
    offset: u64,
    end: Option<u64>,
    events_max: usize,
    bytes_max: usize,
    mut visit: impl FnMut(Vec<u8>),
) -> Result<(u64, usize, bool), ClickHouseError> {
    let io = |e| ClickHouseError::io(path, e);
    let mut f = File::open(path).map_err(io)?;
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut at = offset;
    let (mut n, mut bytes) = (0usize, 0usize);
    let mut head = [0u8; HEADER_BYTES as usize];
    let mut torn = false;
    while n < events_max && bytes < bytes_max && end.is_none_or(|e| at < e) {
        match read_full(&mut r, &mut head).map_err(io)? {
            0 => break,
            k if k < head.len() => {
                torn = true;
                break;
            }
            _ => {}
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4"));
        if len > RECORD_BYTES_MAX {
            torn = true;
            break;
        }
        let mut payload = vec![0u8; len];
        if read_full(&mut r, &mut payload).map_err(io)? < len || crc32fast::hash(&payload) != crc {
            torn = true;
            break;
        }
        at += HEADER_BYTES + len as u64;
        n += 1;
        bytes += len;
        visit(payload);
    }
    Ok((at, n, torn))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            k => got += k,
        }
    }
    Ok(got)
}

/// What lies in a project's outbox after `cursor`: records written but not yet in
/// ClickHouse, and their bytes. Reads only, so it can run beside a server that is writing:
/// a frame still being appended is not counted.
pub fn backlog(dir: &Path, cursor: Position) -> Result<(u64, u64), ClickHouseError> {
    let log_dir = dir.join("log");
    if !log_dir.exists() {
        return Ok((0, 0));
    }
    let (mut events, mut bytes) = (0u64, 0u64);
    for n in list(&log_dir)? {
        if n < cursor.file {
            continue;
        }
        let from = if n == cursor.file { cursor.offset } else { 0 };
        let path = log_dir.join(file_name(n));
        let (len, count, _) = match read_frames(&path, from, None, usize::MAX, usize::MAX, |_| {}) {
            Ok(read) => read,
            // Forwarded whole and removed by the server since the listing.
            Err(_) if !path.exists() => continue,
            Err(e) => return Err(e),
        };
        events += count as u64;
        bytes += len.saturating_sub(from);
    }
    Ok((events, bytes))
}

impl Outbox {
    /// Opens the log under `dir`, cutting a torn tail (never acknowledged), rebuilding the
    /// dedupe set from the records still in it, and starts the writer. `cursor` is the
    /// first record ClickHouse does not have yet: the backlog is what lies after it.
    pub fn open(
        dir: &Path,
        cursor: Position,
        options: OutboxOptions,
    ) -> Result<Outbox, ClickHouseError> {
        let log_dir = dir.join("log");
        std::fs::create_dir_all(&log_dir).map_err(|e| ClickHouseError::io(&log_dir, e))?;
        let mut index = HashIndex::open(&dir.join("hashes"))?;
        let files = list(&log_dir)?;
        let mut end = cursor;
        let mut backlog = 0u64;
        for &n in &files {
            let path = log_dir.join(file_name(n));
            let (len, count, torn) = read_frames(&path, 0, None, usize::MAX, usize::MAX, |p| {
                if let Ok(e) = serde_json::from_slice::<Event>(&p) {
                    index.insert_recent(message_hash(&e.message_id));
                }
            })?;
            if torn {
                tracing::warn!(file = %path.display(), "cut a torn outbox tail (never acknowledged)");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| ClickHouseError::io(&path, e))?;
                f.set_len(len).map_err(|e| ClickHouseError::io(&path, e))?;
                f.sync_all().map_err(|e| ClickHouseError::io(&path, e))?;
            }
            if n < cursor.file {
                continue;
            }
            // Records at or after the cursor: count them to learn the end's seq.
            let from = if n == cursor.file { cursor.offset } else { 0 };
            if n == cursor.file && len < cursor.offset {
                return Err(ClickHouseError::Corrupt {
                    file: path,
                    why: format!("shorter ({len} bytes) than the cursor ({})", cursor.offset),
                });
            }
            let after = if from == 0 {
                count as u64
            } else {
                read_frames(&path, from, None, usize::MAX, usize::MAX, |_| {})?.1 as u64
            };
            backlog += len - from;
            end = Position {
                file: n,
                offset: len,
                seq: end.seq + after,
            };
        }
        if files.last().is_none_or(|&last| last < cursor.file) {
            // No file holds the cursor yet: the next records start one.
            end = Position {
                file: cursor.file.max(1),
                offset: 0,
                seq: cursor.seq,
            };
        }
        let path = log_dir.join(file_name(end.file));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ClickHouseError::io(&path, e))?;
        file.sync_all().map_err(|e| ClickHouseError::io(&path, e))?;
        sync_dir(&log_dir)?;

        let shared = Arc::new(Shared {
            end: Mutex::new(end),
            grown: Condvar::new(),
            index: RwLock::new(index),
            backlog_bytes: AtomicU64::new(backlog),
        });
        let (tx, rx) = mpsc::sync_channel(options.queue_requests_max);
        let mut writer = Writer {
            log_dir: log_dir.clone(),
            file,
            end,
            shared: shared.clone(),
            options,
        };
        let handle = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| ClickHouseError::io(dir, e))?;
        Ok(Outbox {
            log_dir,
            tx: Mutex::new(Some(tx)),
            shared,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Queues records without blocking; `done` runs once they are durable (or refused).
    pub fn submit(
        &self,
        records: Vec<Record>,
        done: impl FnOnce(Result<AppendOutcome, ClickHouseError>) + Send + 'static,
    ) -> Result<(), ClickHouseError> {
        let tx = self.tx.lock().expect("sender lock");
        let tx = tx.as_ref().ok_or(ClickHouseError::Closed)?;
        tx.try_send(Job::Append(Request {
            records,
            reply: Box::new(done),
        }))
        .map_err(|e| match e {
            TrySendError::Full(_) => ClickHouseError::Overloaded,
            TrySendError::Disconnected(_) => ClickHouseError::Closed,
        })
    }

    /// Appends records and blocks until they are durable.
    pub fn append(&self, records: Vec<Record>) -> Result<AppendOutcome, ClickHouseError> {
        let (tx, rx) = mpsc::channel();
        {
            let sender = self.tx.lock().expect("sender lock");
            let sender = sender.as_ref().ok_or(ClickHouseError::Closed)?;
            sender
                .send(Job::Append(Request {
                    records,
                    reply: Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                }))
                .map_err(|_| ClickHouseError::Closed)?;
        }
        rx.recv().map_err(|_| ClickHouseError::Closed)?
    }

    /// Ends the current log file after every append queued before this call, and returns
    /// where the next record goes: the start of a new file, so every record before it lies
    /// in files that can be retired whole once forwarded (an erasure's way of leaving no
    /// payload of the person behind, without rewriting a file a reader may hold). An
    /// empty current file is kept as it is.
    pub fn roll(&self) -> Result<Position, ClickHouseError> {
        let (tx, rx) = mpsc::channel();
        {
            let sender = self.tx.lock().expect("sender lock");
            let sender = sender.as_ref().ok_or(ClickHouseError::Closed)?;
            sender
                .send(Job::Roll(Box::new(move |r| {
                    let _ = tx.send(r);
                })))
                .map_err(|_| ClickHouseError::Closed)?;
        }
        rx.recv().map_err(|_| ClickHouseError::Closed)?
    }

    /// The durable end now.
    pub fn end(&self) -> Position {
        *self.shared.end.lock().expect("end lock")
    }

    pub fn backlog_bytes(&self) -> u64 {
        self.shared.backlog_bytes.load(Ordering::Relaxed)
    }

    /// Reads records from `from` towards the durable end, at most `events_max` of them and
    /// about `bytes_max` bytes; returns them and the position after the last.
    pub fn read(
        &self,
        from: Position,
        events_max: usize,
        bytes_max: usize,
    ) -> Result<(Vec<Vec<u8>>, Position), ClickHouseError> {
        let end = self.end();
        let mut at = from;
        let mut out = Vec::new();
        while at.seq < end.seq && out.len() < events_max {
            let path = self.log_dir.join(file_name(at.file));
            let limit = (at.file == end.file).then_some(end.offset);
            let before = out.len();
            let (offset, n, torn) = read_frames(
                &path,
                at.offset,
                limit,
                events_max - out.len(),
                bytes_max.saturating_sub(out.iter().map(Vec::len).sum()),
                |p| out.push(p),
            )?;
            if torn {
                return Err(ClickHouseError::Corrupt {
                    file: path,
                    why: format!("a damaged record at offset {offset}, behind the durable end"),
                });
            }
            at = Position {
                file: at.file,
                offset,
                seq: at.seq + n as u64,
            };
            if at.seq < end.seq && at.file < end.file && out.len() == before {
                // This file is done (the writer moved on): continue in the next one.
                at = Position {
                    file: at.file + 1,
                    offset: 0,
                    seq: at.seq,
                };
            } else if out.len() == before || bytes_max <= out.iter().map(Vec::len).sum() {
                break;
            }
        }
        Ok((out, at))
    }

    /// Blocks until the durable end passes `seq` or `timeout_ms` passes.
    pub fn wait_past(&self, seq: u64, timeout_ms: u64) {
        let end = self.shared.end.lock().expect("end lock");
        let _ = self.shared.grown.wait_timeout_while(
            end,
            std::time::Duration::from_millis(timeout_ms),
            |e| e.seq <= seq,
        );
    }

    /// Called once ClickHouse has everything before `cursor`: the backlog shrinks, and
    /// whole files before both `cursor` and `keep_from` are retired (hashes into a run,
    /// then the file deleted).
    pub fn forwarded(
        &self,
        bytes: u64,
        cursor: Position,
        keep_from: u64,
    ) -> Result<(), ClickHouseError> {
        self.shared.backlog_bytes.fetch_sub(
            bytes.min(self.shared.backlog_bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        let below = cursor.file.min(keep_from);
        for n in list(&self.log_dir)? {
            if n >= below {
                break;
            }
            let path = self.log_dir.join(file_name(n));
            let mut hashes = Vec::new();
            read_frames(&path, 0, None, usize::MAX, usize::MAX, |p| {
                if let Ok(e) = serde_json::from_slice::<Event>(&p) {
                    hashes.push(message_hash(&e.message_id));
                }
            })?;
            self.shared
                .index
                .write()
                .expect("index lock")
                .add_run(hashes)?;
            std::fs::remove_file(&path).map_err(|e| ClickHouseError::io(&path, e))?;
        }
        Ok(())
    }

    /// Stops the writer after it has answered everything queued.
    pub fn close(&self) {
        self.tx.lock().expect("sender lock").take();
        if let Some(h) = self.writer.lock().expect("writer lock").take() {
            let _ = h.join();
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.close();
    }
}

struct Writer {
    log_dir: PathBuf,
    file: File,
    end: Position,
    shared: Arc<Shared>,
    options: OutboxOptions,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let first = match first {
                Job::Append(r) => r,
                Job::Roll(reply) => {
                    reply(self.roll_now());
                    continue;
                }
            };
            let mut events: usize = first.records.len();
            let mut group = vec![first];
            let mut roll = None;
            while events < self.options.group_events_max {
                match rx.try_recv() {
                    Ok(Job::Append(r)) => {
                        events += r.records.len();
                        group.push(r);
                    }
                    // A roll ends the group: appends queued after it go to the new file.
                    Ok(Job::Roll(reply)) => {
                        roll = Some(reply);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit(group);
            if let Some(reply) = roll {
                reply(self.roll_now());
            }
        }
    }

    fn roll_now(&mut self) -> Result<Position, ClickHouseError> {
        if self.end.offset > 0 {
            self.roll()?;
        }
        Ok(self.end)
    }

    fn commit(&mut self, group: Vec<Request>) {
        let mut frames = Vec::new();
        let mut accepted: Vec<(Reply, AppendOutcome)> = Vec::new();
        let mut hashes = Vec::new();
        let mut in_group = std::collections::HashSet::new();
        let mut backlog = self.shared.backlog_bytes.load(Ordering::Relaxed);
        let index = self.shared.index.read().expect("index lock");
        for req in group {
            let bytes: u64 = req
                .records
                .iter()
                .map(|r| HEADER_BYTES + r.payload.len() as u64)
                .sum();
            if backlog + bytes > self.options.backlog_bytes_max {
                (req.reply)(Err(ClickHouseError::Backlog {
                    backlog_bytes: backlog,
                }));
                continue;
            }
            let mut outcome = AppendOutcome::default();
            let mut failed = None;
            for r in &req.records {
                let dup = match index.contains(r.hash) {
                    Ok(d) => d || !in_group.insert(r.hash),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                outcome.duplicate.push(dup);
                if !dup {
                    frames.extend_from_slice(&(r.payload.len() as u32).to_le_bytes());
                    frames.extend_from_slice(&crc32fast::hash(&r.payload).to_le_bytes());
                    frames.extend_from_slice(&r.payload);
                    hashes.push(r.hash);
                    backlog += HEADER_BYTES + r.payload.len() as u64;
                }
            }
            match failed {
                Some(e) => (req.reply)(Err(e)),
                None => accepted.push((req.reply, outcome)),
            }
        }
        drop(index);
        if frames.is_empty() {
            for (reply, outcome) in accepted {
                reply(Ok(outcome));
            }
            return;
        }
        let records = hashes.len() as u64;
        if let Err(e) = self.write(&frames) {
            tracing::error!(error = %e, "outbox write failed; nothing of this group is acknowledged");
            for (reply, _) in accepted {
                reply(Err(ClickHouseError::WalFailed(e.to_string())));
            }
            return;
        }
        {
            let mut index = self.shared.index.write().expect("index lock");
            for h in hashes {
                index.insert_recent(h);
            }
        }
        self.shared
            .backlog_bytes
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        self.end.offset += frames.len() as u64;
        self.end.seq += records;
        *self.shared.end.lock().expect("end lock") = self.end;
        self.shared.grown.notify_all();
        for (reply, outcome) in accepted {
            reply(Ok(outcome));
        }
        if self.end.offset >= self.options.log_file_bytes_max {
            if let Err(e) = self.roll() {
                tracing::error!(error = %e, "could not start a new outbox file; keeping the current one");
            }
        }
    }

    /// Writes and fsyncs; on failure cuts the file back so no acknowledged record ever
    /// follows a torn one.
    fn write(&mut self, frames: &[u8]) -> std::io::Result<()> {
        let r = self
            .file
            .write_all(frames)
            .and_then(|_| self.file.sync_data());
        if r.is_err() {
            let _ = self.file.set_len(self.end.offset);
            let _ = self.file.sync_all();
        }
        r
    }

    fn roll(&mut self) -> Result<(), ClickHouseError> {
        let next = self.end.file + 1;
        let path = self.log_dir.join(file_name(next));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ClickHouseError::io(&path, e))?;
        file.sync_all().map_err(|e| ClickHouseError::io(&path, e))?;
        sync_dir(&self.log_dir)?;
        self.file = file;
        self.end = Position {
            file: next,
            offset: 0,
            seq: self.end.seq,
        };
        *self.shared.end.lock().expect("end lock") = self.end;
        Ok(())
    }
}
