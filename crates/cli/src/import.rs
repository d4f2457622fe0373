//! `throughline import`: files of Segment messages into a project, through the same
//! validation and deduplication as the HTTP API.
//!
//! A pipeline bounded at every stage: the reader cuts input into chunks, workers parse and
//! normalize them in parallel, and one appender puts them back in input order before
//! handing them to the store, so identity merges happen in the order of the file.
//! Imported events bypass the write-ahead log and become durable at the closing flush:
//! a crashed import is simply run again, and deduplication skips what it already stored.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;
use throughline_collect::{normalize, Envelope, IdGen};
use throughline_store::{Encoded, ProjectStore};

const CHUNK_MESSAGES: usize = 8192;
const IMPORT_FLUSH_BYTES: usize = 256 << 20;
/// Files hold history: their timestamps are kept, not corrected against the import time.
const HISTORICAL: Envelope = Envelope {
    kind: None,
    sent_at: None,
    context: None,
    historical: true,
};
/// Chunks in flight between stages; with the chunk size this bounds import memory.
const CHUNKS_IN_FLIGHT: usize = 8;
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
    // Bigger in-memory tables for a bulk load: fewer, larger segments and less compaction.
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
    // is printed only after it.
    progress.set_message("writing segments");
    project.flush()?;
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

/// Where messages come from: raw JSONL lines (parsed in the workers, the fast path), or
/// already-parsed values from another format or the demo generator.
pub enum Source {
    Lines {
        name: String,
        reader: Box<dyn BufRead + Send>,
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
                reader: Box::new(BufReader::with_capacity(1 << 20, f)),
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

enum Raw {
    Line(String),
    Value(Result<Value, String>),
}

type Chunk = Vec<(u64, Raw)>;

struct Normalized {
    events: Vec<Encoded>,
    errors: Vec<(u64, String, Option<&'static str>)>,
}

fn work(chunk: Chunk, received_at: i64, ids: &mut IdGen) -> Normalized {
    let mut out = Normalized {
        events: Vec::with_capacity(chunk.len()),
        errors: Vec::new(),
    };
    for (line, raw) in chunk {
        let value = match raw {
            Raw::Line(text) => {
                serde_json::from_str::<Value>(&text).map_err(|e| format!("invalid JSON: {e}"))
            }
            Raw::Value(v) => v,
        };
        let result = value.map_err(|e| (e, None)).and_then(|v| {
            normalize(v, &HISTORICAL, received_at, ids).map_err(|r| (r.error, r.field))
        });
        match result {
            Ok(e) => out.events.push(Encoded::new(&e)),
            Err((error, field)) => out.errors.push((line, error, field)),
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
    type NextChunk = Box<dyn FnMut() -> Result<Option<Chunk>>>;
    let (name, mut next_chunk): (String, NextChunk) = match source {
        Source::Lines { name, mut reader } => {
            let mut line_no = 0u64;
            let n = name.clone();
            (
                name,
                Box::new(move || {
                    let mut chunk = Vec::with_capacity(CHUNK_MESSAGES);
                    while chunk.len() < CHUNK_MESSAGES {
                        let mut line = String::new();
                        let read = reader
                            .read_line(&mut line)
                            .with_context(|| format!("reading {n}"))?;
                        if read == 0 {
                            break;
                        }
                        line_no += 1;
                        if !line.trim().is_empty() {
                            chunk.push((line_no, Raw::Line(line)));
                        }
                    }
                    Ok((!chunk.is_empty()).then_some(chunk))
                }),
            )
        }
        Source::Values { name, mut iter } => (
            name,
            Box::new(move || {
                let chunk: Chunk = iter
                    .by_ref()
                    .take(CHUNK_MESSAGES)
                    .map(|(l, v)| (l, Raw::Value(v)))
                    .collect();
                Ok((!chunk.is_empty()).then_some(chunk))
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
            s.spawn(move || {
                let mut ids = IdGen::new(throughline_store::random_seed() ^ w as u64);
                loop {
                    let next = rx.lock().expect("work queue lock").recv();
                    let Ok((seq, chunk)) = next else { return };
                    if tx.send((seq, work(chunk, received_at, &mut ids))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let appender = s.spawn(|| append_in_order(project, done_rx, progress, &name));
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

fn append_in_order(
    project: &ProjectStore,
    done: Receiver<(u64, Normalized)>,
    progress: &ProgressBar,
    file: &str,
) -> Result<Summary> {
    let mut summary = Summary::default();
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    for (seq, n) in done {
        pending.insert(seq, n);
        while let Some(n) = pending.remove(&next) {
            next += 1;
            let rejected = n.errors.len() as u64;
            summary.rejected += rejected;
            for (line, error, field) in n.errors {
                if summary.errors.len() < ERRORS_LISTED_MAX {
                    summary.errors.push(RowError {
                        file: file.to_string(),
                        line,
                        error,
                        field,
                    });
                }
            }
            let count = n.events.len() as u64;
            if count > 0 {
                let outcome = project.append_unlogged(n.events)?;
                summary.imported += outcome.stored() as u64;
                summary.duplicates += outcome.duplicates() as u64;
            }
            progress.inc(count + rejected);
        }
    }
    Ok(summary)
}
