//! One project's store: opening and recovery, the request API, and consistent read
//! snapshots. The threads that change it live in `writer` and `maintenance`.
//!
//! Three threads per project. The writer takes append requests from a bounded queue,
//! logs every new event, fsyncs once for the whole group, applies the group to the
//! in-memory table and the identity graph under a short write lock and answers each
//! request; when the table is full it freezes it and starts a new one. The flusher turns
//! frozen tables into segments and the compactor merges segments, both beside the writer,
//! so neither stalls ingestion. Readers take the read lock and see segments, frozen
//! tables and the active table: events still in the log are visible.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use serde::Serialize;
use throughline_identity::{IdentityConfig, IdentityGraph, NodeId, PersonId};
use throughline_model::{Event, DIM_COUNT};

use crate::batch::{BufferPool, EventBatch};
use crate::maintenance::{self, CompactState, FlushQueue};
pub(crate) use crate::manifest::Manifest;
use crate::memtable::{Frozen, MemTable};
use crate::metrics::StoreMetrics;
use crate::segment::Segment;
use crate::wal::{self, WalWriter};
use crate::writer::{IdentityOnDisk, Request, Writer};
use crate::StoreError;

#[derive(Clone, Debug)]
pub struct ProjectOptions {
    /// Freeze the in-memory table for a flush once it holds this many bytes.
    pub flush_bytes: usize,
    /// Frozen tables waiting for their flush at most; beyond it the writer waits, and
    /// requests queue (then `Overloaded`).
    pub frozen_tables_max: usize,
    /// Append requests waiting for the writer; beyond it callers get `Overloaded`.
    pub queue_requests_max: usize,
    /// Events committed under one fsync at most.
    pub group_events_max: usize,
    /// Merge a size tier once it holds this many segments (below `compact_rows_max`): a
    /// wider tier rewrites each event fewer times, and leaves more segments for reads
    /// and deduplication to visit.
    pub compact_segments_min: usize,
    /// Compaction output rows at most, which bounds its memory.
    pub compact_rows_max: usize,
    pub identity: IdentityConfig,
}

impl Default for ProjectOptions {
    fn default() -> Self {
        ProjectOptions {
            flush_bytes: 64 << 20,
            frozen_tables_max: 2,
            queue_requests_max: 1024,
            group_events_max: 50_000,
            compact_segments_min: 8,
            compact_rows_max: 2_000_000,
            identity: IdentityConfig::default(),
        }
    }
}

/// The answer to one append: for each event, whether it was a duplicate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub duplicate: Vec<bool>,
}

impl AppendOutcome {
    pub fn stored(&self) -> usize {
        self.duplicate.iter().filter(|d| !**d).count()
    }
    pub fn duplicates(&self) -> usize {
        self.duplicate.len() - self.stored()
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreStats {
    pub events: usize,
    pub segments: usize,
    pub events_in_log: usize,
    pub persons_ids: usize,
}

pub(crate) type Reply<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;

/// A tail and the records of one append it wants, by index in the append.
type TailCopy = (Arc<crate::tail::TailInner>, Vec<(usize, Vec<u8>)>);

/// What readers see, changed only under the write lock.
pub(crate) struct State {
    pub identity: IdentityGraph,
    pub segments: Vec<Arc<Segment>>,
    /// Oldest first; each leaves when its segment is published.
    pub frozen: VecDeque<Arc<Frozen>>,
    pub mem: MemTable,
    pub manifest: Manifest,
    /// A number no other state of any project has had: see [`State::changed`].
    pub version: u64,
}

/// Where state versions come from: one counter for the process, so that two projects'
/// snapshots never share a version either.
static VERSIONS: AtomicU64 = AtomicU64::new(1);

impl State {
    /// Called under the write lock by whatever changes the events or the identities a
    /// snapshot sees, so that a cache keyed by [`Snapshot::version`] is never stale.
    pub(crate) fn changed(&mut self) {
        self.version = VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What the writer, the flusher and the compactor share.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub state: RwLock<State>,
    pub metrics: Arc<StoreMetrics>,
    pub options: ProjectOptions,
    /// Serializes every manifest change (flush, compaction, erasure). Taken before the
    /// state lock, never while holding it.
    pub manifest_lock: Mutex<()>,
    /// Held for a whole compaction; erasure takes it so no merge runs beside it.
    pub compaction_lock: Mutex<()>,
    pub flush: Mutex<FlushQueue>,
    pub flush_cv: Condvar,
    pub compact: Mutex<CompactState>,
    pub compact_cv: Condvar,
    /// Numbers for segment and identity snapshot files.
    pub next_number: AtomicU64,
    /// Set by `close`: a compaction in progress abandons its output.
    pub closing: AtomicBool,
    /// Frame buffers of flushed tables, for new batches.
    pub pool: Arc<BufferPool>,
}

impl Shared {
    /// A new, empty active table.
    pub fn new_table(&self) -> MemTable {
        MemTable::new(self.pool.clone(), events_per_table(&self.options))
    }

    pub fn seg_dir(&self) -> PathBuf {
        self.dir.join("segments")
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.dir.join("wal")
    }
}

/// About how many events fill a table: what tables and their hash sets are sized for.
fn events_per_table(options: &ProjectOptions) -> usize {
    (options.flush_bytes / 1024).clamp(1024, 1 << 20)
}

pub struct ProjectStore {
    name: String,
    dir: PathBuf,
    tx: Mutex<Option<SyncSender<Request>>>,
    shared: Arc<Shared>,
    pub metrics: Arc<StoreMetrics>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    tails: Arc<Mutex<Vec<std::sync::Weak<crate::tail::TailInner>>>>,
}

impl ProjectStore {
    /// Opens (or creates) a project directory: loads the manifest, the identity snapshot
    /// and the segments, replays the log, and starts the writer, flusher and compactor.
    pub fn open(
        name: &str,
        dir: &Path,
        options: ProjectOptions,
    ) -> Result<ProjectStore, StoreError> {
        let wal_dir = dir.join("wal");
        let seg_dir = dir.join("segments");
        for d in [dir, &wal_dir, &seg_dir] {
            std::fs::create_dir_all(d).map_err(|e| StoreError::io(d, e))?;
        }
        let manifest = crate::manifest::load(dir, &mut |_, _| {})?;
        let mut snapshot_bytes = 0;
        let mut identity = match &manifest.identity {
            Some(file) => {
                let p = dir.join(file);
                let bytes = std::fs::read(&p).map_err(|e| StoreError::io(&p, e))?;
                snapshot_bytes = bytes.len();
                let mut g =
                    IdentityGraph::from_snapshot(&bytes).map_err(|e| StoreError::Corrupt {
                        file: p.clone(),
                        why: e.to_string(),
                    })?;
                g.set_config(options.identity.clone());
                g
            }
            None => IdentityGraph::new(options.identity.clone()),
        };
        let mut log_bytes = 0;
        for file in &manifest.identity_logs {
            let p = dir.join(file);
            let bytes = std::fs::read(&p).map_err(|e| StoreError::io(&p, e))?;
            log_bytes += bytes.len();
            crate::idlog::replay(&bytes, &mut identity).map_err(|why| StoreError::Corrupt {
                file: p.clone(),
                why,
            })?;
        }
        let segments = manifest
            .segments
            .iter()
            .map(|f| Segment::open(&seg_dir.join(f)).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        remove_unlisted(dir, &seg_dir, &manifest)?;

        let pool = Arc::new(BufferPool::default());
        let mut state = State {
            identity,
            segments,
            frozen: VecDeque::new(),
            mem: MemTable::new(pool.clone(), events_per_table(&options)),
            manifest,
            version: 0,
        };
        let last_seq = replay_log(&wal_dir, &mut state)?;
        state.changed();
        let wal =
            WalWriter::create(&wal_dir, last_seq + 1).map_err(|e| StoreError::io(&wal_dir, e))?;

        let metrics = Arc::new(StoreMetrics::default());
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            next_number: AtomicU64::new(state.manifest.next_segment),
            state: RwLock::new(state),
            metrics: metrics.clone(),
            options,
            manifest_lock: Mutex::new(()),
            compaction_lock: Mutex::new(()),
            flush: Mutex::new(FlushQueue::default()),
            flush_cv: Condvar::new(),
            compact: Mutex::new(CompactState::default()),
            compact_cv: Condvar::new(),
            closing: AtomicBool::new(false),
            pool,
        });
        let (tx, rx) = mpsc::sync_channel(shared.options.queue_requests_max);
        let spawn = |role: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("{role}-{name}"))
                .spawn(f)
                .map_err(|e| StoreError::io(dir, e))
        };
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(spawn(
            "flusher",
            Box::new(move || maintenance::flusher(&s)),
        )?);
        let s = shared.clone();
        threads.push(spawn(
            "compactor",
            Box::new(move || maintenance::compactor(&s)),
        )?);
        let mut writer = Writer::new(
            shared.clone(),
            wal,
            IdentityOnDisk {
                snapshot_bytes,
                log_bytes,
                logs: shared
                    .state
                    .read()
                    .expect("state lock")
                    .manifest
                    .identity_logs
                    .len(),
            },
        );
        threads.push(spawn("writer", Box::new(move || writer.run(rx)))?);
        Ok(ProjectStore {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            tx: Mutex::new(Some(tx)),
            shared,
            metrics,
            threads: Mutex::new(threads),
            tails: Arc::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// An empty batch for about `events` events whose records take about `record_bytes`,
    /// reusing the memory of flushed tables.
    pub fn new_batch(&self, events: usize, record_bytes: usize) -> EventBatch {
        EventBatch::from_pool(&self.shared.pool, events, record_bytes)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn send(&self, req: Request, wait: bool) -> Result<(), StoreError> {
        let tx = self.tx.lock().expect("sender lock");
        let tx = tx.as_ref().ok_or(StoreError::Closed)?;
        if wait {
            tx.send(req).map_err(|_| StoreError::Closed)
        } else {
            tx.try_send(req).map_err(|e| match e {
                TrySendError::Full(_) => StoreError::Overloaded,
                TrySendError::Disconnected(_) => StoreError::Closed,
            })
        }
    }

    /// Queues events for the writer without blocking; `done` runs once they are durable
    /// (or failed). A full queue answers `Overloaded` at once: the caller sheds load.
    pub fn submit(
        &self,
        events: EventBatch,
        done: impl FnOnce(Result<AppendOutcome, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let done = self.tailed(&events, done);
        self.send(
            Request::Append {
                events,
                logged: true,
                reply: done,
            },
            false,
        )
    }

    /// A tail of the events stored from now on that `filter` wants, at most `events_max`
    /// queued (see [`crate::Tail`]).
    pub fn tail(&self, filter: crate::TailFilter, events_max: usize) -> crate::Tail {
        let t = crate::Tail::new(filter, events_max);
        let mut tails = self.tails.lock().expect("tails");
        tails.retain(|w| w.strong_count() > 0);
        tails.push(Arc::downgrade(&t.inner));
        t
    }

    /// Wraps an append's reply so that, once durable, the wanted records of its stored
    /// (non-duplicate) events go to the tails.
    fn tailed(
        &self,
        events: &EventBatch,
        done: impl FnOnce(Result<AppendOutcome, StoreError>) + Send + 'static,
    ) -> Reply<AppendOutcome> {
        let tails: Vec<Arc<crate::tail::TailInner>> = {
            let t = self.tails.lock().expect("tails");
            t.iter().filter_map(|w| w.upgrade()).collect()
        };
        if tails.is_empty() {
            return Box::new(done);
        }
        // Copy what each tail wants now, on the caller's thread.
        let wanted: Vec<(usize, Vec<usize>)> = tails
            .iter()
            .enumerate()
            .map(|(ti, t)| {
                let idx = (0..events.len())
                    .filter(|&i| t.wants(events.rows()[i].kind, events.dim(i, 0)))
                    .collect();
                (ti, idx)
            })
            .filter(|(_, idx): &(usize, Vec<usize>)| !idx.is_empty())
            .collect();
        if wanted.is_empty() {
            return Box::new(done);
        }
        let copies: Vec<TailCopy> = wanted
            .into_iter()
            .map(|(ti, idx)| {
                (
                    tails[ti].clone(),
                    idx.into_iter()
                        .map(|i| (i, events.record(i).to_vec()))
                        .collect(),
                )
            })
            .collect();
        Box::new(move |r: Result<AppendOutcome, StoreError>| {
            if let Ok(outcome) = &r {
                for (tail, records) in copies {
                    let fresh = records
                        .into_iter()
                        .filter(|(i, _)| !outcome.duplicate.get(*i).copied().unwrap_or(true))
                        .map(|(_, p)| p)
                        .collect();
                    tail.push(fresh);
                }
            }
            done(r)
        })
    }

    /// Appends events and blocks until they are durable.
    pub fn append(&self, events: EventBatch) -> Result<AppendOutcome, StoreError> {
        self.append_inner(events, true)
    }

    /// Appends events without writing them to the log: they become durable at the next
    /// [`ProjectStore::flush`], which a bulk import calls before it reports success. A
    /// crash before that loses them, and re-running the import stores them (deduplication
    /// makes the re-run idempotent). Writes each byte once instead of twice.
    pub fn append_unlogged(&self, events: EventBatch) -> Result<AppendOutcome, StoreError> {
        self.append_inner(events, false)
    }

    /// [`ProjectStore::append_unlogged`] without waiting: blocks only while the queue is
    /// full, and `done` runs once the events are in the in-memory table.
    pub fn submit_unlogged(
        &self,
        events: EventBatch,
        done: impl FnOnce(Result<AppendOutcome, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let done = self.tailed(&events, done);
        self.send(
            Request::Append {
                events,
                logged: false,
                reply: done,
            },
            true,
        )
    }

    fn append_inner(&self, events: EventBatch, logged: bool) -> Result<AppendOutcome, StoreError> {
        let (tx, rx) = mpsc::channel();
        let reply = self.tailed(&events, move |r| {
            let _ = tx.send(r);
        });
        self.send(
            Request::Append {
                events,
                logged,
                reply,
            },
            true,
        )?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Writes every event appended so far into segments, and returns once they are
    /// published.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(
            Request::Flush {
                reply: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            },
            true,
        )?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// [`ProjectStore::flush`], then waits until no compaction is due: the store as a
    /// long-running server would leave it. A bulk import ends with this.
    pub fn settle(&self) -> Result<(), StoreError> {
        self.flush()?;
        maintenance::wait_compactions(&self.shared);
        Ok(())
    }

    /// Erases every event and id of the person known by `id` (any of their ids).
    /// Returns the number of events erased.
    pub fn delete_person(&self, id: &str) -> Result<usize, StoreError> {
        self.erase(Erase::Id(id.to_string()))
    }

    /// Erases every event and id of the persons an [`Erase`] names; repeating it erases
    /// nothing more (erased nodes stay their own, empty persons). Returns the number of
    /// events erased.
    pub fn erase(&self, who: Erase) -> Result<usize, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(
            Request::DeletePerson {
                who,
                reply: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            },
            true,
        )?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// A consistent view for reading. Holding it delays the writer's next apply step and
    /// the publishing of flushes and compactions, so keep it for one query, not longer.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            state: self.shared.state.read().expect("state lock"),
        }
    }

    pub fn stats(&self) -> StoreStats {
        let s = self.snapshot();
        StoreStats {
            events: s.event_count(),
            segments: s.state.segments.len(),
            events_in_log: s.log_len(),
            persons_ids: s.state.identity.node_count(),
        }
    }

    /// Stops the writer after it has answered everything queued, lets the flusher write
    /// the tables it holds, and abandons a compaction in progress (it is redone later).
    pub fn close(&self) {
        self.tx.lock().expect("sender lock").take();
        maintenance::begin_close(&self.shared);
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for ProjectStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Replays every log file from the manifest's `wal_start` into the active table,
/// skipping what segments hold; returns the last file's number.
fn replay_log(wal_dir: &Path, state: &mut State) -> Result<u64, StoreError> {
    let seqs = wal::list(wal_dir).map_err(|e| StoreError::io(wal_dir, e))?;
    let mut last_seq = state.manifest.wal_start.saturating_sub(1);
    for seq in seqs {
        let path = wal_dir.join(wal::file_name(seq));
        if seq < state.manifest.wal_start {
            // Folded into segments before a crash cut the cleanup short.
            std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
            continue;
        }
        let rec = wal::recover(&path).map_err(|e| StoreError::io(&path, e))?;
        if rec.torn_bytes > 0 {
            tracing::warn!(file = %path.display(), bytes = rec.torn_bytes, "cut a torn log tail (never acknowledged)");
        }
        last_seq = seq;
        // Every open starts a fresh log file; one that never got a record holds nothing
        // to keep, so read-only commands do not leave a trail of empty files.
        if rec.records.is_empty() {
            std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
            continue;
        }
        let mut batch = EventBatch::new();
        for record in &rec.records {
            batch.push_record(record).map_err(|e| StoreError::Corrupt {
                file: path.clone(),
                why: format!("log record: {e}"),
            })?;
        }
        let mut stored = Vec::new();
        let mut seen = crate::idhash::HashSet128::default();
        for (i, row) in batch.rows().iter().enumerate() {
            if !seen.insert(row.hash)
                || state.mem.hashes.contains(&row.hash)
                || in_segments(&state.segments, row.hash)?
            {
                continue;
            }
            let node = state
                .mem
                .identity_log
                .observe(&mut state.identity, batch.ids(i));
            stored.push((i, node));
        }
        state.mem.add(batch, stored);
    }
    Ok(last_seq)
}

/// One event still in the log, as scans see it.
pub struct LogRow<'a> {
    pub node: NodeId,
    pub ts: i64,
    pub kind: u8,
    pub dims: [Option<&'a str>; DIM_COUNT],
}

/// A read view: the identity graph, the segments and the events still in the log.
pub struct Snapshot<'a> {
    state: RwLockReadGuard<'a, State>,
}

impl Snapshot<'_> {
    /// Equal for two snapshots only when they see the same events and identities (of
    /// the same project): what caches of derived answers key by.
    pub fn version(&self) -> u64 {
        self.state.version
    }

    pub fn identity(&self) -> &IdentityGraph {
        &self.state.identity
    }

    pub fn segments(&self) -> &[Arc<Segment>] {
        &self.state.segments
    }

    pub fn event_count(&self) -> usize {
        self.state.segments.iter().map(|s| s.rows()).sum::<usize>() + self.log_len()
    }

    /// The tables of events not yet in a published segment, in arrival order: frozen
    /// tables oldest first, then the active one.
    fn tables(&self) -> impl Iterator<Item = &MemTable> {
        self.state
            .frozen
            .iter()
            .map(|f| &f.table)
            .chain(std::iter::once(&self.state.mem))
    }

    fn log_len(&self) -> usize {
        self.tables().map(MemTable::len).sum()
    }

    /// Visits every stored event once, with the identity node it was sent under:
    /// segments in order, then the log's events in arrival order.
    pub fn for_each_event(
        &self,
        mut visit: impl FnMut(Event, NodeId) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for seg in &self.state.segments {
            let nodes = seg.read_column::<u32>("node")?;
            seg.for_each_payload(|row, payload| {
                let event = decode(&seg.path, payload)?;
                visit(event, nodes[row])
            })?;
        }
        for t in self.tables() {
            for r in &t.rows {
                visit(decode(Path::new("wal"), t.record(r))?, r.node)?;
            }
        }
        Ok(())
    }

    /// Visits the events whose name passes `wanted`, decoding only those, with their
    /// arrival number (segment rows in order, then the log: the numbering query loaders
    /// use to join back to scan columns).
    pub fn for_each_event_named(
        &self,
        wanted: impl Fn(&str) -> bool,
        mut visit: impl FnMut(u32, Event) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.for_each_event_of(
            |name| name.is_some_and(&wanted),
            |_, _| true,
            |seq, _, e| visit(seq, e),
        )
    }

    /// Visits the events for which `keep(node, name)` holds, decoding only those, with
    /// their arrival number and node: a person's timeline or one event's properties
    /// without decoding the whole store.
    pub fn for_each_event_where(
        &self,
        keep: impl Fn(NodeId, Option<&str>) -> bool,
        visit: impl FnMut(u32, NodeId, Event) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.for_each_event_of(|_| true, keep, visit)
    }

    /// Visits the events whose name (`None`: none) passes `names` and for which
    /// `keep(node, name)` holds, decoding only those, with arrival number and node. A
    /// segment whose rare copy holds every name it has that `names` wants (and `names`
    /// wants no unnamed event) is read from the copy alone: a few percent of its payload
    /// (see `rare`).
    pub fn for_each_event_of(
        &self,
        names: impl Fn(Option<&str>) -> bool,
        keep: impl Fn(NodeId, Option<&str>) -> bool,
        mut visit: impl FnMut(u32, NodeId, Event) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut first = 0u32;
        for seg in &self.state.segments {
            let (codes, dict) = seg.dim("name")?;
            let want: Vec<bool> = dict.iter().map(|n| names(Some(n))).collect();
            let want_unnamed = names(None);
            let name = |row: usize| {
                (codes[row] != crate::segment::NO_VALUE).then(|| dict[codes[row] as usize].as_str())
            };
            let wanted = |row: usize| match codes[row] {
                crate::segment::NO_VALUE => want_unnamed,
                c => want[c as usize],
            };
            let from_copy = !want_unnamed
                && seg.rare_names().is_some_and(|rare| {
                    dict.iter()
                        .zip(&want)
                        .all(|(n, &w)| !w || rare.iter().any(|r| r == n))
                });
            if want_unnamed || want.iter().any(|&w| w) {
                let nodes = seg.read_column::<u32>("node")?;
                let chosen = |row: usize| wanted(row) && keep(nodes[row], name(row));
                let mut each = |row: usize, payload: &[u8]| {
                    if chosen(row) {
                        visit(first + row as u32, nodes[row], decode(&seg.path, payload)?)?;
                    }
                    Ok(())
                };
                if from_copy {
                    seg.for_each_rare_payload(&mut each)?;
                } else if (0..seg.rows()).any(&chosen) {
                    seg.for_each_payload(&mut each)?;
                }
            }
            first += seg.rows() as u32;
        }
        for t in self.tables() {
            for r in &t.rows {
                let name = t.dims(r)[0];
                if names(name) && keep(r.node, name) {
                    visit(first, r.node, decode(Path::new("wal"), t.record(r))?)?;
                }
                first += 1;
            }
        }
        Ok(())
    }

    /// Visits the events with these arrival numbers (ascending; the numbering of
    /// [`Snapshot::for_each_event_named`]), decoding only them and reading only the
    /// payload blocks that hold them: the properties of a few events without decoding all.
    pub fn for_each_event_at(
        &self,
        seqs: &[u32],
        mut visit: impl FnMut(u32, Event) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut at = 0;
        let mut first = 0u32;
        let mut rows = Vec::new();
        for seg in &self.state.segments {
            let end = first + seg.rows() as u32;
            rows.clear();
            while at < seqs.len() && seqs[at] < end {
                if seqs[at] < first {
                    return Err(StoreError::Corrupt {
                        file: seg.path.clone(),
                        why: "arrival numbers asked for out of order".into(),
                    });
                }
                rows.push((seqs[at] - first) as usize);
                at += 1;
            }
            seg.for_each_payload_of(&rows, |row, payload| {
                visit(first + row as u32, decode(&seg.path, payload)?)
            })?;
            first = end;
        }
        // The log: frozen tables, then the active one, in arrival order.
        let log: Vec<(&MemTable, &crate::memtable::MemRow)> = self
            .tables()
            .flat_map(|t| t.rows.iter().map(move |r| (t, r)))
            .collect();
        for &seq in &seqs[at..] {
            let (t, r) = seq
                .checked_sub(first)
                .and_then(|i| log.get(i as usize).copied())
                .ok_or_else(|| StoreError::Corrupt {
                    file: "wal".into(),
                    why: format!("no event with arrival number {seq}"),
                })?;
            visit(seq, decode(Path::new("wal"), t.record(r))?)?;
        }
        Ok(())
    }

    /// The `limit` newest events by timestamp (ties: the later arrival first), newest
    /// first, with the node each was sent under. Reads the log, and of the segments only
    /// the time column of those whose range can still hold one and the payload blocks of
    /// the rows chosen.
    pub fn newest_events(&self, limit: usize) -> Result<Vec<(NodeId, Event)>, StoreError> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Min-heap of the best `limit` so far, keyed (ts, arrival); the source is a
        // segment index or `usize::MAX` for the log, with its row.
        let mut best: BinaryHeap<Reverse<(i64, u32, usize, usize)>> = BinaryHeap::new();
        let offer = |best: &mut BinaryHeap<Reverse<(i64, u32, usize, usize)>>,
                     key: (i64, u32, usize, usize)| {
            if best.len() < limit {
                best.push(Reverse(key));
            } else if best.peek().is_some_and(|Reverse(low)| key > *low) {
                best.pop();
                best.push(Reverse(key));
            }
        };
        let segments = &self.state.segments;
        let mut first = Vec::with_capacity(segments.len());
        let mut arrival = 0u32;
        for seg in segments {
            first.push(arrival);
            arrival += seg.rows() as u32;
        }
        // The log: frozen tables, then the active one, in arrival order.
        let log: Vec<(&MemTable, &crate::memtable::MemRow)> = self
            .tables()
            .flat_map(|t| t.rows.iter().map(move |r| (t, r)))
            .collect();
        for (i, (_, r)) in log.iter().enumerate() {
            offer(&mut best, (r.ts, arrival + i as u32, usize::MAX, i));
        }
        let mut order: Vec<usize> = (0..segments.len()).collect();
        order.sort_by_key(|&k| Reverse(segments[k].time_range().1));
        for k in order {
            let floor = (best.len() == limit).then(|| best.peek().map(|Reverse(b)| b.0));
            if floor
                .flatten()
                .is_some_and(|f| segments[k].time_range().1 < f)
            {
                break;
            }
            let ts = segments[k].read_column::<i64>("ts")?;
            for (row, &t) in ts.iter().enumerate() {
                offer(&mut best, (t, first[k] + row as u32, k, row));
            }
        }
        let chosen: Vec<(i64, u32, usize, usize)> =
            best.into_iter().map(|Reverse(key)| key).collect();
        let mut out: Vec<((i64, u32), NodeId, Event)> = Vec::with_capacity(chosen.len());
        for &(t, seq, src, row) in &chosen {
            if src == usize::MAX {
                let (table, r) = log[row];
                out.push(((t, seq), r.node, decode(Path::new("wal"), table.record(r))?));
            }
        }
        let mut by_segment: std::collections::BTreeMap<usize, Vec<(usize, i64, u32)>> =
            Default::default();
        for &(t, seq, src, row) in &chosen {
            if src != usize::MAX {
                by_segment.entry(src).or_default().push((row, t, seq));
            }
        }
        for (k, mut rows) in by_segment {
            rows.sort_unstable();
            let seg = &segments[k];
            let nodes = seg.read_column::<u32>("node")?;
            let wanted: Vec<usize> = rows.iter().map(|r| r.0).collect();
            let mut at = 0;
            seg.for_each_payload_of(&wanted, |row, payload| {
                let (_, t, seq) = rows[at];
                at += 1;
                out.push(((t, seq), nodes[row], decode(&seg.path, payload)?));
                Ok(())
            })?;
        }
        out.sort_by_key(|(key, _, _)| Reverse(*key));
        Ok(out.into_iter().map(|(_, node, e)| (node, e)).collect())
    }

    /// Scan columns of the events still in the log, in arrival order.
    pub fn log_rows(&self) -> impl Iterator<Item = LogRow<'_>> {
        self.tables().flat_map(|t| {
            t.rows.iter().map(move |r| LogRow {
                node: r.node,
                ts: r.ts,
                kind: r.kind,
                dims: t.dims(r),
            })
        })
    }
}

fn decode(file: &Path, payload: &[u8]) -> Result<Event, StoreError> {
    serde_json::from_slice(payload).map_err(|e| StoreError::Corrupt {
        file: file.to_path_buf(),
        why: format!("event record: {e}"),
    })
}

/// Whether any segment stored a message with this id hash.
pub(crate) fn in_segments(segments: &[Arc<Segment>], hash: u128) -> Result<bool, StoreError> {
    for s in segments {
        if s.may_contain(hash) && s.contains_hash(hash)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deletes segment and snapshot files the manifest does not name: leftovers of a crash
/// between writing a file and publishing the manifest that would have named it.
fn remove_unlisted(dir: &Path, seg_dir: &Path, m: &Manifest) -> Result<(), StoreError> {
    let identity: Vec<String> = m.identity.iter().chain(&m.identity_logs).cloned().collect();
    for (d, keep) in [(seg_dir, m.segments.clone()), (dir, identity)] {
        for entry in std::fs::read_dir(d).map_err(|e| StoreError::io(d, e))? {
            let entry = entry.map_err(|e| StoreError::io(d, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.ends_with(".seg")
                || name.ends_with(".tmp")
                || (name.starts_with("identity-")
                    && (name.ends_with(".bin") || name.ends_with(".json")));
            if ours && !keep.contains(&name) {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(|e| StoreError::io(&p, e))?;
            }
        }
    }
    Ok(())
}

/// Whom an erasure removes: the person known by an id, or every person holding one of
/// some identity nodes (a backend that kept the same node numbering names them so).
#[derive(Clone, Debug)]
pub enum Erase {
    Id(String),
    Nodes(Vec<NodeId>),
}

/// The persons an erasure removes and all their nodes; `None` when it names nobody.
pub(crate) fn erased_nodes(
    identity: &IdentityGraph,
    who: &Erase,
) -> Option<(HashSet<PersonId>, HashSet<NodeId>)> {
    let persons: HashSet<PersonId> = match who {
        Erase::Id(id) => identity.find_person(id).into_iter().collect(),
        Erase::Nodes(nodes) => nodes
            .iter()
            .filter(|&&n| (n as usize) < identity.node_count())
            .map(|&n| identity.person_of(n))
            .collect(),
    };
    if persons.is_empty() {
        return None;
    }
    let nodes = (0..identity.node_count() as NodeId)
        .filter(|&n| persons.contains(&identity.person_of(n)))
        .collect();
    Some((persons, nodes))
}
