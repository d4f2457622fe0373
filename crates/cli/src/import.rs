//! `throughline import`: files of Segment messages into a project, through the same
//! validation and deduplication as the HTTP API.
//!
//! A pipeline bounded at every stage: the reader cuts input into chunks of whole lines
//! (a few MiB, read with large reads), workers normalize them in parallel straight into
//! the store's encoded batches, and one appender puts them back in input order before
//! handing them to the store, so identity merges happen in the order of the file.
//! Imported events bypass the write-ahead log and become durable at the closing flush:
//! a crashed import is simply run again, and deduplication skips what it already stored.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;
use throughline_collect::{normalize_json, Envelope, IdGen};
use throughline_store::{AppendOutcome, EventBatch, ProjectStore, StoreError};

/// How input is cut: bytes per chunk (large enough to amortize the hand-offs, small
/// enough that the chunks in flight stay a few tens of MiB) and bytes per line at most
/// (past it the line is skipped and reported, not buffered).
#[derive(Clone, Copy)]
struct Limits {
    chunk_bytes: usize,
    line_bytes_max: usize,
}

const LIMITS: Limits = Limits {
    chunk_bytes: 4 << 20,
    line_bytes_max: throughline_formats::LINE_BYTES_MAX,
};
/// Messages per chunk at most (for sources of already-parsed messages).
const CHUNK_MESSAGES: usize = 8192;
/// A bulk load uses bigger in-memory tables (fewer, larger segments): with the default
/// tier width (eight) and row bound, every imported event is rewritten at most once
/// (eight 256 MiB tables make one full segment), and an import of a million events not
/// at all. Memory: the active table and two frozen ones.
const IMPORT_FLUSH_BYTES: usize = 256 << 20;
/// Files hold history: their timestamps are kept, not corrected against the import time.
const HISTORICAL: Envelope = Envelope {
    kind: None,
    sent_at: None,
    context: None,
    historical: true,
};
/// Chunks in flight between stages; with the chunk size this bounds import memory.
const CHUNKS_IN_FLIGHT: usize = 6;
/// Batches handed to the store and not yet answered.
const APPENDS_IN_FLIGHT: usize = 3;
/// Rejections listed in the summary; the rest are only counted.
const ERRORS_LISTED_MAX: usize = 1000;

#[derive(Args)]
pub struct ImportArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub project: String,
    /// .jsonl/.ndjson/.json (optionally .gz), .csv (optionally .gz) or .parquet
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub imported: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub errors: Vec<RowError>,
}

#[derive(Debug, Serialize)]
pub struct RowError {
    pub file: String,
    pub line: u64,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

pub fn run(args: ImportArgs) -> Result<()> {
    let options = throughline_store::ProjectOptions {
        flush_bytes: IMPORT_FLUSH_BYTES,
        ..Default::default()
    };
    let store = crate::open_store_with(&args.data, options)?;
    let project = store.project(&args.project)?;
    let progress = progress_bar(args.quiet);
    let mut summary = Summary::default();
    let started = Instant::now();
    for file in &args.files {
        let source = Source::open(file)?;
        import(&project, source, &progress, &mut summary)?;
    }
    // Imported events skip the log; this flush is what makes them durable, so the summary
    // is printed only after it. The merges the new segments call for are part of the
    // import too: the store is left as a long-running server would keep it.
    progress.set_message("writing and merging segments");
    project.settle()?;
    progress.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.events_per_second =
        (summary.imported + summary.duplicates) as f64 / summary.seconds.max(1e-9);
    crate::output::json(&serde_json::to_value(&summary)?);
    store.close();
    Ok(())
}

pub fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {human_pos} messages ({per_sec}) {msg}")
            .expect("valid template"),
    );
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

/// Where messages come from: raw JSONL (cut into lines and parsed in the workers, the
/// fast path), or already-parsed values from another format or the demo generator.
pub enum Source {
    Lines {
        name: String,
        reader: Box<dyn Read + Send>,
    },
    Values {
        name: String,
        iter: Box<dyn Iterator<Item = (u64, Result<Value, String>)> + Send>,
    },
}

impl Source {
    pub fn open(path: &Path) -> Result<Source> {
        let name = path.display().to_string();
        let lower = name.to_lowercase();
        if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") || lower.ends_with(".json") {
            let f = File::open(path).with_context(|| format!("cannot open {name}"))?;
            return Ok(Source::Lines {
                name,
                reader: Box::new(f),
            });
        }
        let iter = throughline_formats::read_messages(path)
            .with_context(|| format!("cannot read {name}"))?;
        Ok(Source::Values {
            name,
            iter: Box::new(iter.map(|(line, r)| (line, r.map_err(|e| e.to_string())))),
        })
    }
}

/// A piece of the input for one worker.
enum Chunk {
    /// Whole lines (the last may lack its newline), or one line that was too long to
    /// keep (`bytes` empty).
    Lines { bytes: Vec<u8>, too_long: bool },
    /// Messages numbered by their source.
    Values(Vec<(u64, Result<Value, String>)>),
}

/// Cuts a byte stream into chunks of whole lines with large reads. Lines are numbered
/// later, in order, from the count each chunk reports: the reader only looks for the
/// last newline of each chunk.
struct LineChunks {
    input: Box<dyn Read + Send>,
    name: String,
    /// Bytes read but not yet handed out: the start of an unfinished line.
    carry: Vec<u8>,
    /// Buffers the workers are done with, to read into again.
    spare: Receiver<Vec<u8>>,
    limits: Limits,
    /// Inside a line longer than `limits.line_bytes_max`: skip to its end.
    skipping: bool,
    at_start: bool,
    done: bool,
}

impl LineChunks {
    fn new(
        input: Box<dyn Read + Send>,
        name: String,
        spare: Receiver<Vec<u8>>,
        limits: Limits,
    ) -> LineChunks {
        LineChunks {
            limits,
            input,
            name,
            carry: Vec::new(),
            spare,
            skipping: false,
            at_start: true,
            done: false,
        }
    }

    /// A buffer holding `rest`, reused when a worker gave one back (fresh pages cost a
    /// page fault and zeroing each).
    fn buffer_with(&self, rest: &[u8]) -> Vec<u8> {
        let mut b = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.limits.chunk_bytes + (64 << 10)));
        b.clear();
        b.extend_from_slice(rest);
        b
    }

    fn next(&mut self) -> Result<Option<Chunk>> {
        let mut want = self.limits.chunk_bytes;
        loop {
            // Pipes hand out a little at a time: read until the chunk is full.
            if !self.done && self.carry.len() < want {
                // `read_to_end` fills spare capacity without zeroing it first.
                let room = (want - self.carry.len()) as u64;
                self.carry.reserve(want - self.carry.len());
                let n = (&mut self.input)
                    .take(room)
                    .read_to_end(&mut self.carry)
                    .with_context(|| format!("reading {}", self.name))?;
                self.done = (n as u64) < room;
            }
            if self.at_start {
                self.at_start = false;
                if self.carry.starts_with(b"\xef\xbb\xbf") {
                    self.carry.drain(..3);
                }
            }
            if self.skipping {
                match memchr::memchr(b'\n', &self.carry) {
                    Some(at) => {
                        self.carry.drain(..=at);
                        self.skipping = false;
                    }
                    None => {
                        self.carry.clear();
                        self.skipping = !self.done;
                        if self.skipping {
                            continue;
                        }
                    }
                }
            }
            match memchr::memrchr(b'\n', &self.carry) {
                Some(last) => {
                    let rest = self.buffer_with(&self.carry[last + 1..]);
                    let mut bytes = std::mem::replace(&mut self.carry, rest);
                    bytes.truncate(last + 1);
                    return Ok(Some(Chunk::Lines {
                        bytes,
                        too_long: false,
                    }));
                }
                None if self.done => {
                    if self.carry.is_empty() {
                        return Ok(None);
                    }
                    // The last line, without a newline.
                    let bytes = std::mem::take(&mut self.carry);
                    return Ok(Some(Chunk::Lines {
                        bytes,
                        too_long: false,
                    }));
                }
                None if self.carry.len() > self.limits.line_bytes_max => {
                    self.carry.clear();
                    self.skipping = true;
                    return Ok(Some(Chunk::Lines {
                        bytes: Vec::new(),
                        too_long: true,
                    }));
                }
                // One line longer than a chunk: read on.
                None => want = self.carry.len() + self.limits.chunk_bytes,
            }
        }
    }
}

struct Normalized {
    events: EventBatch,
    /// Messages the chunk held (stored or rejected).
    messages: u64,
    /// Lines the chunk held, for numbering the chunks after it (0 for parsed values).
    lines: u64,
    /// (line, why, field): for line chunks, the line counts from 1 within the chunk.
    errors: Vec<(u64, String, Option<&'static str>)>,
}

fn work(
    project: &ProjectStore,
    chunk: Chunk,
    received_at: i64,
    ids: &mut IdGen,
    spare: &SyncSender<Vec<u8>>,
    line_bytes_max: usize,
) -> Normalized {
    let too_long = format!("line longer than {line_bytes_max} bytes");
    let mut out = Normalized {
        events: EventBatch::new(),
        messages: 0,
        lines: 0,
        errors: Vec::new(),
    };
    let mut one = |out: &mut Normalized, line: u64, text: &str| {
        out.messages += 1;
        let stored = normalize_json(text, &HISTORICAL, received_at, ids)
            .map_err(|r| (r.error, r.field))
            .and_then(|e| out.events.push(&e).map_err(|e| (e.to_string(), None)));
        if let Err((error, field)) = stored {
            out.errors.push((line, error, field));
        }
    };
    match chunk {
        Chunk::Lines { too_long: true, .. } => {
            out.lines = 1;
            out.messages = 1;
            out.errors.push((1, too_long, None));
        }
        Chunk::Lines { bytes, .. } => {
            // Stored records run about a fifth longer than the messages they come from.
            out.events = project.new_batch(bytes.len() / 512 + 1, bytes.len() / 4 * 5);
            let mut start = 0;
            let ends = memchr::memchr_iter(b'\n', &bytes)
                .chain((bytes.last() != Some(&b'\n') && !bytes.is_empty()).then_some(bytes.len()));
            for end in ends {
                out.lines += 1;
                let line = &bytes[start..end];
                start = end + 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let line_no = out.lines;
                if line.len() > line_bytes_max {
                    out.messages += 1;
                    out.errors.push((line_no, too_long.clone(), None));
                    continue;
                }
                match std::str::from_utf8(line) {
                    Ok(text) => one(&mut out, line_no, text),
                    Err(e) => {
                        out.messages += 1;
                        out.errors
                            .push((line_no, format!("invalid UTF-8: {e}"), None));
                    }
                }
            }
            let _ = spare.try_send(bytes);
        }
        Chunk::Values(values) => {
            for (line, value) in values {
                match value.and_then(|v| serde_json::to_string(&v).map_err(|e| e.to_string())) {
                    Ok(text) => one(&mut out, line, &text),
                    Err(error) => {
                        out.messages += 1;
                        out.errors.push((line, error, None));
                    }
                }
            }
        }
    }
    out
}

/// Runs one source through the pipeline into `project`, adding to `summary`.
pub fn import(
    project: &ProjectStore,
    source: Source,
    progress: &ProgressBar,
    summary: &mut Summary,
) -> Result<()> {
    import_with(project, source, progress, summary, LIMITS)
}

fn import_with(
    project: &ProjectStore,
    source: Source,
    progress: &ProgressBar,
    summary: &mut Summary,
    limits: Limits,
) -> Result<()> {
    type NextChunk = Box<dyn FnMut() -> Result<Option<Chunk>>>;
    // Chunk buffers travel back from the workers to the reader.
    let (spare_tx, spare_rx) = sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT + 8);
    let numbered_by_line = matches!(source, Source::Lines { .. });
    let (name, mut next_chunk): (String, NextChunk) = match source {
        Source::Lines { name, reader } => {
            let mut lines = LineChunks::new(reader, name.clone(), spare_rx, limits);
            (name, Box::new(move || lines.next()))
        }
        Source::Values { name, mut iter } => (
            name,
            Box::new(move || {
                let chunk: Vec<_> = iter.by_ref().take(CHUNK_MESSAGES).collect();
                Ok((!chunk.is_empty()).then_some(Chunk::Values(chunk)))
            }),
        ),
    };

    let received_at = throughline_store::now_ms();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let (work_tx, work_rx) = sync_channel::<(u64, Chunk)>(CHUNKS_IN_FLIGHT);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = sync_channel::<(u64, Normalized)>(CHUNKS_IN_FLIGHT);
    std::thread::scope(|s| -> Result<()> {
        for w in 0..workers {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            let spare = spare_tx.clone();
            s.spawn(move || {
                let mut ids = IdGen::new(throughline_store::random_seed() ^ w as u64);
                loop {
                    let next = rx.lock().expect("work queue lock").recv();
                    let Ok((seq, chunk)) = next else { return };
                    let normalized = work(
                        project,
                        chunk,
                        received_at,
                        &mut ids,
                        &spare,
                        limits.line_bytes_max,
                    );
                    if tx.send((seq, normalized)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        drop(spare_tx);
        let appender =
            s.spawn(|| append_in_order(project, done_rx, progress, &name, numbered_by_line));
        let mut seq = 0;
        let mut read_result = Ok(());
        loop {
            match next_chunk() {
                Ok(Some(chunk)) => {
                    if work_tx.send((seq, chunk)).is_err() {
                        break;
                    }
                    seq += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    read_result = Err(e);
                    break;
                }
            }
        }
        drop(work_tx);
        let part = appender.join().expect("appender thread")?;
        summary.imported += part.imported;
        summary.duplicates += part.duplicates;
        summary.rejected += part.rejected;
        for e in part.errors {
            if summary.errors.len() < ERRORS_LISTED_MAX {
                summary.errors.push(e);
            }
        }
        read_result
    })
}

type Answer = Receiver<Result<AppendOutcome, StoreError>>;

fn append_in_order(
    project: &ProjectStore,
    done: Receiver<(u64, Normalized)>,
    progress: &ProgressBar,
    file: &str,
    numbered_by_line: bool,
) -> Result<Summary> {
    let mut summary = Summary::default();
    let mut pending = BTreeMap::new();
    let mut answers: VecDeque<Answer> = VecDeque::new();
    let mut next = 0u64;
    // Lines before the chunk at hand.
    let mut lines_before = 0u64;
    let take = |summary: &mut Summary, answer: Answer| -> Result<()> {
        let outcome = answer.recv().map_err(|_| StoreError::Closed)??;
        summary.imported += outcome.stored() as u64;
        summary.duplicates += outcome.duplicates() as u64;
        Ok(())
    };
    for (seq, n) in done {
        pending.insert(seq, n);
        while let Some(n) = pending.remove(&next) {
            next += 1;
            summary.rejected += n.errors.len() as u64;
            let base = if numbered_by_line { lines_before } else { 0 };
            lines_before += n.lines;
            for (line, error, field) in n.errors {
                if summary.errors.len() < ERRORS_LISTED_MAX {
                    summary.errors.push(RowError {
                        file: file.to_string(),
                        line: base + line,
                        error,
                        field,
                    });
                }
            }
            if !n.events.is_empty() {
                let (tx, rx) = mpsc::channel();
                project.submit_unlogged(n.events, move |r| {
                    let _ = tx.send(r);
                })?;
                answers.push_back(rx);
                if answers.len() > APPENDS_IN_FLIGHT {
                    let oldest = answers.pop_front().expect("an answer");
                    take(&mut summary, oldest)?;
                }
            }
            progress.inc(n.messages);
        }
    }
    for answer in answers {
        take(&mut summary, answer)?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out a few bytes per call, as a pipe does.
    struct Trickle(Vec<u8>, usize);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(5).min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    fn track(id: &str) -> String {
        format!(
            r#"{{"type":"track","userId":"u","event":"E","messageId":"{id}","timestamp":"2025-01-01T00:00:00Z"}}"#
        )
    }

    /// Chunks cut lines anywhere and the reader trickles: every line keeps its number, and
    /// each bad one is reported alone.
    #[test]
    fn lines_keep_their_numbers_across_chunks_and_bad_lines_stand_alone() {
        let mut input = Vec::new();
        input.extend_from_slice(b"\xef\xbb\xbf");
        input.extend_from_slice(track("m1").as_bytes()); // line 1, after a byte order mark
        input.extend_from_slice(b"\n   \n"); // line 2: blank
        input.extend_from_slice(track("m3").as_bytes()); // line 3, CRLF
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(format!("{{\"pad\":\"{}\"}}\n", "x".repeat(300)).as_bytes()); // 4: too long
        input.extend_from_slice(b"{\"type\":\"track\",\n"); // line 5: broken JSON
        input.extend_from_slice(b"{\"event\":\"\xff\xfe\"}\n"); // line 6: not UTF-8
        input.extend_from_slice(track("m7").as_bytes()); // line 7, long enough to span chunks
        input.extend_from_slice(b"\n");
        input.extend_from_slice(track("m8").as_bytes()); // line 8, no final newline
        let dir = std::env::temp_dir().join(format!("tl-import-lines-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let project = ProjectStore::open("p", &dir, Default::default()).unwrap();
        let mut summary = Summary::default();
        let source = Source::Lines {
            name: "t.jsonl".into(),
            reader: Box::new(Trickle(input, 0)),
        };
        let limits = Limits {
            chunk_bytes: 64,
            line_bytes_max: 200,
        };
        import_with(
            &project,
            source,
            &ProgressBar::hidden(),
            &mut summary,
            limits,
        )
        .unwrap();
        project.settle().unwrap();
        let lines: Vec<u64> = summary.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [4, 5, 6], "{:?}", summary.errors);
        assert!(summary.errors[0].error.contains("longer than 200"));
        assert!(summary.errors[1].error.contains("invalid JSON"));
        assert!(summary.errors[2].error.contains("UTF-8"));
        assert_eq!((summary.imported, summary.rejected), (4, 3));
        let mut ids = Vec::new();
        project
            .snapshot()
            .for_each_event(|e, _| {
                ids.push(e.message_id);
                Ok(())
            })
            .unwrap();
        ids.sort();
        assert_eq!(ids, ["m1", "m3", "m7", "m8"]);
        drop(project);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
