//! One project's store: the writer thread (group commit, dedupe, flush, compaction,
//! erasure) and consistent read snapshots.
//!
//! Only the writer thread mutates state. It takes append requests from a bounded queue,
//! stages every new event in the log, fsyncs once for the whole group, then applies the
//! group to the in-memory table and the identity graph under a short write lock and
//! answers each request. Readers take the read lock and see segments plus the in-memory
//! table, so events still in the log are visible.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use throughline_identity::{IdKeys, IdentityConfig, IdentityGraph, NodeId};
use throughline_model::{Event, DIMS, DIM_COUNT};

use crate::fsutil::write_atomic;
use crate::metrics::StoreMetrics;
use crate::segment::{self, RowMeta, Segment};
use crate::wal::{self, WalWriter};
use crate::{message_hash, StoreError};

#[derive(Clone, Debug)]
pub struct ProjectOptions {
    /// Fold the in-memory table into a segment once its events take this many bytes.
    pub flush_bytes: usize,
    /// Append requests waiting for the writer; beyond it callers get `Overloaded`.
    pub queue_requests_max: usize,
    /// Events committed under one fsync at most.
    pub group_events_max: usize,
    /// Compact once this many segments are below `compact_rows_max`.
    pub compact_segments_min: usize,
    /// Compaction output rows at most, which bounds its memory.
    pub compact_rows_max: usize,
    pub identity: IdentityConfig,
}

impl Default for ProjectOptions {
    fn default() -> Self {
        ProjectOptions {
            flush_bytes: 64 << 20,
            queue_requests_max: 1024,
            group_events_max: 50_000,
            compact_segments_min: 4,
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

/// An event encoded for the log on the caller's thread (HTTP handler, import worker), so
/// the one writer thread only checks ids and copies bytes.
pub struct Encoded {
    payload: Vec<u8>,
    hash: u128,
    keys: IdKeys,
    ts: i64,
    kind: u8,
    dims: Dims,
}

/// Owned values of [`DIMS`] for one event.
type Dims = [Option<Box<str>>; DIM_COUNT];

impl Encoded {
    pub fn new(event: &Event) -> Encoded {
        let payload = serde_json::to_vec(event).expect("event serializes");
        Encoded::with_payload(event, payload)
    }

    fn with_payload(event: &Event, payload: Vec<u8>) -> Encoded {
        Encoded {
            payload,
            hash: message_hash(&event.message_id),
            keys: IdKeys::of(event),
            ts: event.timestamp,
            kind: event.event_type.code(),
            dims: event.dims().map(|d| d.map(Into::into)),
        }
    }
}

type Reply<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;

enum Request {
    Append {
        events: Vec<Encoded>,
        /// False for bulk import: the events skip the log and are durable at the next flush.
        logged: bool,
        reply: Reply<AppendOutcome>,
    },
    Flush {
        reply: Reply<()>,
    },
    DeletePerson {
        id: String,
        reply: Reply<usize>,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    segments: Vec<String>,
    next_segment: u64,
    /// First log file whose records are not in any segment.
    wal_start: u64,
    identity: Option<String>,
}

/// Arena blocks: big enough to amortize allocation, small enough that growing never
/// copies megabytes.
const ARENA_BLOCK_BYTES: usize = 1 << 20;

/// Events not yet in a segment: their WAL payloads in an arena plus the scan columns.
#[derive(Default)]
struct MemTable {
    rows: Vec<MemRow>,
    blocks: Vec<Vec<u8>>,
    bytes: usize,
    hashes: HashSet<u128>,
}

struct MemRow {
    node: NodeId,
    ts: i64,
    kind: u8,
    dims: Dims,
    block: u32,
    start: u32,
    end: u32,
}

impl MemTable {
    fn push(&mut self, node: NodeId, e: Encoded) {
        let fits = self
            .blocks
            .last()
            .is_some_and(|b| b.capacity() - b.len() >= e.payload.len());
        if !fits {
            self.blocks
                .push(Vec::with_capacity(ARENA_BLOCK_BYTES.max(e.payload.len())));
        }
        let block_index = (self.blocks.len() - 1) as u32;
        let block = self.blocks.last_mut().expect("a block");
        let start = block.len();
        block.extend_from_slice(&e.payload);
        self.bytes += e.payload.len();
        self.rows.push(MemRow {
            node,
            ts: e.ts,
            kind: e.kind,
            dims: e.dims,
            block: block_index,
            start: start as u32,
            end: block.len() as u32,
        });
        self.hashes.insert(e.hash);
    }

    fn payload(&self, r: &MemRow) -> &[u8] {
        &self.blocks[r.block as usize][r.start as usize..r.end as usize]
    }
}

struct State {
    identity: IdentityGraph,
    segments: Vec<Arc<Segment>>,
    mem: MemTable,
    manifest: Manifest,
}

pub struct ProjectStore {
    name: String,
    dir: PathBuf,
    tx: Mutex<Option<SyncSender<Request>>>,
    state: Arc<RwLock<State>>,
    pub metrics: Arc<StoreMetrics>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl ProjectStore {
    /// Opens (or creates) a project directory: loads the manifest, the identity snapshot
    /// and the segments, replays the log, and starts the writer thread.
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
        let manifest_path = dir.join("MANIFEST");
        let manifest: Manifest = match std::fs::read(&manifest_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                file: manifest_path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest {
                version: 1,
                wal_start: 1,
                ..Manifest::default()
            },
            Err(e) => return Err(StoreError::io(&manifest_path, e)),
        };
        let identity = match &manifest.identity {
            Some(file) => {
                let p = dir.join(file);
                let bytes = std::fs::read(&p).map_err(|e| StoreError::io(&p, e))?;
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
        let segments = manifest
            .segments
            .iter()
            .map(|f| Segment::open(&seg_dir.join(f)).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        remove_unlisted(dir, &seg_dir, &manifest)?;

        let mut state = State {
            identity,
            segments,
            mem: MemTable::default(),
            manifest,
        };
        let seqs = wal::list(&wal_dir).map_err(|e| StoreError::io(&wal_dir, e))?;
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
            for payload in rec.records {
                let event: Event =
                    serde_json::from_slice(&payload).map_err(|e| StoreError::Corrupt {
                        file: path.clone(),
                        why: format!("log record: {e}"),
                    })?;
                let encoded = Encoded::with_payload(&event, payload);
                if state.mem.hashes.contains(&encoded.hash)
                    || in_segments(&state.segments, encoded.hash)?
                {
                    continue;
                }
                let node = state.identity.observe_keys(&encoded.keys);
                state.mem.push(node, encoded);
            }
        }
        let wal =
            WalWriter::create(&wal_dir, last_seq + 1).map_err(|e| StoreError::io(&wal_dir, e))?;

        let state = Arc::new(RwLock::new(state));
        let metrics = Arc::new(StoreMetrics::default());
        let (tx, rx) = mpsc::sync_channel(options.queue_requests_max);
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            wal,
            state: state.clone(),
            metrics: metrics.clone(),
            options,
            wal_broken: false,
        };
        let handle = std::thread::Builder::new()
            .name(format!("writer-{name}"))
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::io(dir, e))?;
        Ok(ProjectStore {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            tx: Mutex::new(Some(tx)),
            state,
            metrics,
            writer: Mutex::new(Some(handle)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
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
        events: Vec<Encoded>,
        done: impl FnOnce(Result<AppendOutcome, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.send(
            Request::Append {
                events,
                logged: true,
                reply: Box::new(done),
            },
            false,
        )
    }

    /// Appends events and blocks until they are durable.
    pub fn append(&self, events: Vec<Encoded>) -> Result<AppendOutcome, StoreError> {
        self.append_inner(events, true)
    }

    /// Appends events without writing them to the log: they become durable at the next
    /// [`ProjectStore::flush`], which a bulk import calls before it reports success. A
    /// crash before that loses them, and re-running the import stores them (deduplication
    /// makes the re-run idempotent). Writes each byte once instead of twice.
    pub fn append_unlogged(&self, events: Vec<Encoded>) -> Result<AppendOutcome, StoreError> {
        self.append_inner(events, false)
    }

    fn append_inner(
        &self,
        events: Vec<Encoded>,
        logged: bool,
    ) -> Result<AppendOutcome, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(
            Request::Append {
                events,
                logged,
                reply: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            },
            true,
        )?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Folds the log into a segment now.
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

    /// Erases every event and id of the person known by `id` (any of their ids).
    /// Returns the number of events erased.
    pub fn delete_person(&self, id: &str) -> Result<usize, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(
            Request::DeletePerson {
                id: id.to_string(),
                reply: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            },
            true,
        )?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// A consistent view for reading. Holding it delays the writer's next apply step, so
    /// keep it for one query, not longer.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            state: self.state.read().expect("state lock"),
        }
    }

    pub fn stats(&self) -> StoreStats {
        let s = self.snapshot();
        StoreStats {
            events: s.event_count(),
            segments: s.state.segments.len(),
            events_in_log: s.state.mem.rows.len(),
            persons_ids: s.state.identity.node_count(),
        }
    }

    /// Stops the writer after it has answered everything queued.
    pub fn close(&self) {
        self.tx.lock().expect("sender lock").take();
        if let Some(h) = self.writer.lock().expect("writer lock").take() {
            let _ = h.join();
        }
    }
}

impl Drop for ProjectStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// One event still in the log, as scans see it.
pub struct LogRow<'a> {
    pub node: NodeId,
    pub ts: i64,
    pub kind: u8,
    pub dims: &'a [Option<Box<str>>; DIM_COUNT],
}

/// A read view: the identity graph, the segments and the events still in the log.
pub struct Snapshot<'a> {
    state: RwLockReadGuard<'a, State>,
}

impl Snapshot<'_> {
    pub fn identity(&self) -> &IdentityGraph {
        &self.state.identity
    }

    pub fn segments(&self) -> &[Arc<Segment>] {
        &self.state.segments
    }

    pub fn event_count(&self) -> usize {
        self.state.segments.iter().map(|s| s.rows()).sum::<usize>() + self.state.mem.rows.len()
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
        let mem = &self.state.mem;
        for r in &mem.rows {
            visit(decode(Path::new("wal"), mem.payload(r))?, r.node)?;
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
        self.for_each_event_where(
            |_, name| name.is_some_and(&wanted),
            |seq, _, e| visit(seq, e),
        )
    }

    /// Visits the events for which `keep(node, name)` holds, decoding only those, with
    /// their arrival number and node: a person's timeline or one event's properties
    /// without decoding the whole store.
    pub fn for_each_event_where(
        &self,
        keep: impl Fn(NodeId, Option<&str>) -> bool,
        mut visit: impl FnMut(u32, NodeId, Event) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut first = 0u32;
        for seg in &self.state.segments {
            let nodes = seg.read_column::<u32>("node")?;
            let (codes, dict) = seg.dim("name")?;
            let name = |row: usize| {
                (codes[row] != crate::segment::NO_VALUE).then(|| dict[codes[row] as usize].as_str())
            };
            if (0..seg.rows()).any(|row| keep(nodes[row], name(row))) {
                seg.for_each_payload(|row, payload| {
                    if keep(nodes[row], name(row)) {
                        visit(first + row as u32, nodes[row], decode(&seg.path, payload)?)?;
                    }
                    Ok(())
                })?;
            }
            first += seg.rows() as u32;
        }
        let mem = &self.state.mem;
        for (i, r) in mem.rows.iter().enumerate() {
            if keep(r.node, r.dims[0].as_deref()) {
                visit(
                    first + i as u32,
                    r.node,
                    decode(Path::new("wal"), mem.payload(r))?,
                )?;
            }
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
        for (i, r) in self.state.mem.rows.iter().enumerate() {
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
        let mem = &self.state.mem;
        for &(t, seq, src, row) in &chosen {
            if src == usize::MAX {
                let r = &mem.rows[row];
                out.push(((t, seq), r.node, decode(Path::new("wal"), mem.payload(r))?));
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
            seg.for_each_payload_at(&wanted, |row, payload| {
                let (_, t, seq) = rows[at];
                at += 1;
                out.push(((t, seq), nodes[row], decode(&seg.path, payload)?));
                Ok(())
            })?;
        }
        out.sort_by_key(|(key, _, _)| Reverse(*key));
        Ok(out.into_iter().map(|(_, node, e)| (node, e)).collect())
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
            seg.for_each_payload_at(&rows, |row, payload| {
                visit(first + row as u32, decode(&seg.path, payload)?)
            })?;
            first = end;
        }
        let mem = &self.state.mem;
        for &seq in &seqs[at..] {
            let r = seq
                .checked_sub(first)
                .and_then(|i| mem.rows.get(i as usize))
                .ok_or_else(|| StoreError::Corrupt {
                    file: "wal".into(),
                    why: format!("no event with arrival number {seq}"),
                })?;
            visit(seq, decode(Path::new("wal"), mem.payload(r))?)?;
        }
        Ok(())
    }

    /// Scan columns of the events still in the log, in arrival order.
    pub fn log_rows(&self) -> impl Iterator<Item = LogRow<'_>> {
        self.state.mem.rows.iter().map(|r| LogRow {
            node: r.node,
            ts: r.ts,
            kind: r.kind,
            dims: &r.dims,
        })
    }
}

fn decode(file: &Path, payload: &[u8]) -> Result<Event, StoreError> {
    serde_json::from_slice(payload).map_err(|e| StoreError::Corrupt {
        file: file.to_path_buf(),
        why: format!("event record: {e}"),
    })
}

fn in_segments(segments: &[Arc<Segment>], hash: u128) -> Result<bool, StoreError> {
    for s in segments {
        if s.contains_hash(hash)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The segments to merge next, if some size tier holds `min` of them: the tier of a
/// segment is how many times `min` fits between the smallest segment and it, so merging a
/// full tier yields one segment of the next tier.
fn pick_tier(segments: &[Arc<Segment>], min: usize, rows_max: usize) -> Option<Vec<Arc<Segment>>> {
    let min = min.max(2);
    let small: Vec<&Arc<Segment>> = segments.iter().filter(|s| s.rows() < rows_max).collect();
    let base = small.iter().map(|s| s.rows().max(1)).min()?;
    let tier = |rows: usize| {
        let mut t = 0;
        let mut bound = base * min;
        while rows.max(1) >= bound {
            t += 1;
            bound = bound.saturating_mul(min);
        }
        t
    };
    let mut tiers: std::collections::BTreeMap<usize, Vec<Arc<Segment>>> = Default::default();
    for s in small {
        tiers.entry(tier(s.rows())).or_default().push(s.clone());
    }
    // The merged segment stays within `rows_max`, which bounds compaction's memory and
    // the time the writer spends on one merge.
    tiers
        .into_values()
        .filter(|t| t.len() >= min)
        .find_map(|mut t| {
            t.sort_by_key(|s| s.rows());
            let mut total = 0;
            let picked: Vec<Arc<Segment>> = t
                .into_iter()
                .take(min)
                .take_while(|s| {
                    total += s.rows();
                    total <= rows_max
                })
                .collect();
            (picked.len() >= 2).then_some(picked)
        })
}

/// Deletes segment and snapshot files the manifest does not name: leftovers of a crash
/// between writing a file and publishing the manifest that would have named it.
fn remove_unlisted(dir: &Path, seg_dir: &Path, m: &Manifest) -> Result<(), StoreError> {
    for (d, keep) in [
        (seg_dir, m.segments.clone()),
        (dir, m.identity.iter().cloned().collect::<Vec<_>>()),
    ] {
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

struct Writer {
    dir: PathBuf,
    wal: WalWriter,
    state: Arc<RwLock<State>>,
    metrics: Arc<StoreMetrics>,
    options: ProjectOptions,
    /// Set when a commit failed and the file could not be cut back: the next commit
    /// starts a fresh file so no acknowledged record ever follows a torn one.
    wal_broken: bool,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Request>) {
        let mut carried: Option<Request> = None;
        loop {
            let first = match carried.take() {
                Some(r) => r,
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return,
                },
            };
            match first {
                Request::Append {
                    events,
                    logged,
                    reply,
                } => {
                    let mut group = vec![(events, logged, reply)];
                    let mut n = group[0].0.len();
                    while n < self.options.group_events_max {
                        match rx.try_recv() {
                            Ok(Request::Append {
                                events,
                                logged,
                                reply,
                            }) => {
                                n += events.len();
                                group.push((events, logged, reply));
                            }
                            Ok(other) => {
                                carried = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_group(group);
                }
                Request::Flush { reply } => reply(self.flush()),
                Request::DeletePerson { id, reply } => reply(self.delete_person(&id)),
            }
            if self.mem_bytes() >= self.options.flush_bytes {
                if let Err(e) = self.flush() {
                    tracing::error!(error = %e, "flush failed; events stay in the log");
                }
            }
        }
    }

    fn mem_bytes(&self) -> usize {
        self.state.read().expect("state lock").mem.bytes
    }

    fn commit_group(&mut self, mut group: Vec<(Vec<Encoded>, bool, Reply<AppendOutcome>)>) {
        let mut outcomes = Vec::with_capacity(group.len());
        let mut fresh: Vec<Encoded> = Vec::new();
        let mut seen = HashSet::new();
        let check = {
            let state = self.state.read().expect("state lock");
            let mut check = || -> Result<(), StoreError> {
                for (events, logged, _) in &mut group {
                    let mut dup = Vec::with_capacity(events.len());
                    for e in std::mem::take(events) {
                        let is_dup = seen.contains(&e.hash)
                            || state.mem.hashes.contains(&e.hash)
                            || in_segments(&state.segments, e.hash)?;
                        dup.push(is_dup);
                        if !is_dup {
                            seen.insert(e.hash);
                            if *logged {
                                self.wal.stage(&e.payload);
                            }
                            fresh.push(e);
                        }
                    }
                    outcomes.push(AppendOutcome { duplicate: dup });
                }
                Ok(())
            };
            check()
        };
        let committed = check.and_then(|_| self.commit_wal());
        if let Err(e) = committed {
            let msg = e.to_string();
            for (_, _, reply) in group {
                reply(Err(StoreError::WalFailed(msg.clone())));
            }
            return;
        }
        let stored = fresh.len() as u64;
        {
            let mut state = self.state.write().expect("state lock");
            for e in fresh {
                let node = state.identity.observe_keys(&e.keys);
                state.mem.push(node, e);
            }
        }
        let total: usize = outcomes.iter().map(|o| o.duplicate.len()).sum();
        self.metrics
            .events_stored
            .fetch_add(stored, Ordering::Relaxed);
        self.metrics
            .duplicates
            .fetch_add(total as u64 - stored, Ordering::Relaxed);
        self.metrics.group_commit_events.observe(total as f64);
        for ((_, _, reply), outcome) in group.into_iter().zip(outcomes) {
            reply(Ok(outcome));
        }
    }

    fn commit_wal(&mut self) -> Result<(), StoreError> {
        if self.wal_broken {
            let next = self.wal.seq + 1;
            let staged = self.wal.take_staged();
            self.wal = WalWriter::create(&self.dir.join("wal"), next)
                .map_err(|e| StoreError::WalFailed(e.to_string()))?;
            self.wal.restage(staged);
            self.wal_broken = false;
        }
        let started = Instant::now();
        match self.wal.commit() {
            Ok(()) => {
                self.metrics
                    .fsync_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(e) => {
                self.metrics.wal_failures.fetch_add(1, Ordering::Relaxed);
                if self.wal.rollback().is_err() {
                    self.wal_broken = true;
                }
                Err(StoreError::WalFailed(e.to_string()))
            }
        }
    }

    /// Writes the in-memory table as a segment, publishes it in the manifest with a new
    /// identity snapshot, and retires the log files it came from.
    fn flush(&mut self) -> Result<(), StoreError> {
        let seg_dir = self.dir.join("segments");
        let (seg_name, seg) = {
            let state = self.state.read().expect("state lock");
            if state.mem.rows.is_empty() {
                return Ok(());
            }
            let mem = &state.mem;
            let mut order: Vec<usize> = (0..mem.rows.len()).collect();
            let person = |i: usize| state.identity.person_of(mem.rows[i].node);
            order.sort_by_key(|&i| (person(i), mem.rows[i].ts, i));
            let rows: Vec<RowMeta> = order
                .iter()
                .map(|&i| {
                    let r = &mem.rows[i];
                    RowMeta {
                        person: person(i),
                        node: r.node,
                        ts: r.ts,
                        kind: r.kind,
                        dims: r.dims.each_ref().map(|d| d.as_deref()),
                    }
                })
                .collect();
            let name = format!("{:08}.seg", state.manifest.next_segment);
            let path = seg_dir.join(&name);
            segment::write(
                &path,
                &rows,
                |i, buf| {
                    buf.extend_from_slice(mem.payload(&mem.rows[order[i]]));
                    Ok(())
                },
                mem.hashes.iter().copied().collect(),
            )?;
            (name, Segment::open(&path)?)
        };
        let next_wal = self.wal.seq + 1;
        let new_wal = WalWriter::create(&self.dir.join("wal"), next_wal)
            .map_err(|e| StoreError::io(&self.dir, e))?;
        {
            let mut state = self.state.write().expect("state lock");
            let mut manifest = state.manifest.clone();
            manifest.segments.push(seg_name);
            manifest.next_segment += 1;
            manifest.wal_start = next_wal;
            self.publish(&mut state, manifest)?;
            state.segments.push(Arc::new(seg));
            state.mem = MemTable::default();
        }
        let old = std::mem::replace(&mut self.wal, new_wal);
        self.retire_wal_before(old.seq + 1);
        self.metrics.flushes.fetch_add(1, Ordering::Relaxed);
        self.maybe_compact()
    }

    /// Writes a new identity snapshot and the manifest naming it; the commit point of
    /// every structural change.
    fn publish(&self, state: &mut State, mut manifest: Manifest) -> Result<(), StoreError> {
        let snap_name = format!("identity-{:08}.bin", manifest.next_segment);
        let snap_path = self.dir.join(&snap_name);
        write_atomic(&snap_path, &state.identity.to_snapshot())
            .map_err(|e| StoreError::io(&snap_path, e))?;
        let old_snap = manifest.identity.replace(snap_name.clone());
        let path = self.dir.join("MANIFEST");
        write_atomic(
            &path,
            &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        )
        .map_err(|e| StoreError::io(&path, e))?;
        let dropped: Vec<String> = state
            .manifest
            .segments
            .iter()
            .filter(|s| !manifest.segments.contains(s))
            .cloned()
            .collect();
        state.manifest = manifest;
        if let Some(old) = old_snap.filter(|o| *o != snap_name) {
            let _ = std::fs::remove_file(self.dir.join(old));
        }
        for d in dropped {
            let _ = std::fs::remove_file(self.dir.join("segments").join(d));
        }
        Ok(())
    }

    fn retire_wal_before(&self, seq: u64) {
        let wal_dir = self.dir.join("wal");
        if let Ok(seqs) = wal::list(&wal_dir) {
            for s in seqs.into_iter().filter(|&s| s < seq) {
                let _ = std::fs::remove_file(wal_dir.join(wal::file_name(s)));
            }
        }
    }

    /// Size-tiered compaction: once `compact_segments_min` segments share a size tier
    /// (tiers grow by that factor), they are merged into one re-sorted by today's persons,
    /// so persons stitched since they were written become contiguous again. Each event is
    /// rewritten about log(total / flush) times, not at every flush; segments that reached
    /// `compact_rows_max` are left alone.
    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let picked: Vec<Arc<Segment>> = {
            let state = self.state.read().expect("state lock");
            match pick_tier(
                &state.segments,
                self.options.compact_segments_min,
                self.options.compact_rows_max,
            ) {
                Some(p) => p,
                None => return Ok(()),
            }
        };
        self.rewrite(&picked, &HashSet::new())?;
        self.metrics.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Replaces `inputs` by one segment holding their rows minus those of `drop_nodes`,
    /// sorted by current person. Message-id hashes are all kept, so a retry of an erased
    /// or compacted message is still recognised as a duplicate.
    fn rewrite(
        &mut self,
        inputs: &[Arc<Segment>],
        drop_nodes: &HashSet<NodeId>,
    ) -> Result<usize, StoreError> {
        // Only the scan columns are held in memory (about 24 bytes a row); payloads stream
        // from the inputs, verified block by block first, so compaction memory stays flat.
        struct Row {
            node: NodeId,
            ts: i64,
            kind: u8,
            /// Codes into `dicts`, offset per input; NO_VALUE where absent.
            dims: [u32; DIM_COUNT],
            input: u32,
            row: u32,
        }
        let mut dicts: Vec<Vec<String>> = vec![Vec::new(); DIM_COUNT];
        let mut rows: Vec<Row> = Vec::new();
        let mut offsets: Vec<Vec<u64>> = Vec::new();
        let mut hashes: Vec<u128> = Vec::new();
        let mut dropped = 0;
        for (input, seg) in inputs.iter().enumerate() {
            seg.verify_payload()?;
            let nodes = seg.read_column::<u32>("node")?;
            let ts = seg.read_column::<i64>("ts")?;
            let kinds = seg.read_column::<u8>("type")?;
            let mut codes = Vec::with_capacity(DIM_COUNT);
            for (d, dim) in DIMS.iter().enumerate() {
                let (c, dict) = seg.dim(dim)?;
                let base = dicts[d].len() as u32;
                dicts[d].extend(dict);
                codes.push((c, base));
            }
            hashes.extend(seg.hashes()?);
            offsets.push(seg.read_column::<u64>("payload_offsets")?);
            for i in 0..seg.rows() {
                if drop_nodes.contains(&nodes[i]) {
                    dropped += 1;
                    continue;
                }
                rows.push(Row {
                    node: nodes[i],
                    ts: ts[i],
                    kind: kinds[i],
                    dims: std::array::from_fn(|d| {
                        let (c, base) = &codes[d];
                        if c[i] == segment::NO_VALUE {
                            segment::NO_VALUE
                        } else {
                            base + c[i]
                        }
                    }),
                    input: input as u32,
                    row: i as u32,
                });
            }
        }
        let seg_dir = self.dir.join("segments");
        let (name, seg) = {
            let state = self.state.read().expect("state lock");
            let id = &state.identity;
            // Stable: equal keys keep input order, which is arrival order within a person.
            rows.sort_by_key(|r| (id.person_of(r.node), r.ts));
            let metas: Vec<RowMeta> = rows
                .iter()
                .map(|r| RowMeta {
                    person: id.person_of(r.node),
                    node: r.node,
                    ts: r.ts,
                    kind: r.kind,
                    dims: std::array::from_fn(|d| {
                        (r.dims[d] != segment::NO_VALUE)
                            .then(|| dicts[d][r.dims[d] as usize].as_str())
                    }),
                })
                .collect();
            let name = format!("{:08}.seg", state.manifest.next_segment);
            let path = seg_dir.join(&name);
            segment::write(
                &path,
                &metas,
                |i, buf| {
                    let r = &rows[i];
                    inputs[r.input as usize].read_payload(
                        &offsets[r.input as usize],
                        r.row as usize,
                        buf,
                    )
                },
                hashes,
            )?;
            (name, Arc::new(Segment::open(&path)?))
        };
        let mut state = self.state.write().expect("state lock");
        let gone: HashSet<&Path> = inputs.iter().map(|s| s.path.as_path()).collect();
        let mut manifest = state.manifest.clone();
        let keep: Vec<(String, Arc<Segment>)> = manifest
            .segments
            .iter()
            .cloned()
            .zip(state.segments.iter().cloned())
            .filter(|(_, s)| !gone.contains(s.path.as_path()))
            .collect();
        manifest.segments = keep.iter().map(|(n, _)| n.clone()).collect();
        manifest.segments.push(name);
        manifest.next_segment += 1;
        self.publish(&mut state, manifest)?;
        state.segments = keep.into_iter().map(|(_, s)| s).collect();
        state.segments.push(seg);
        Ok(dropped)
    }

    fn delete_person(&mut self, id: &str) -> Result<usize, StoreError> {
        // Fold the log first so the person's events exist only in segments, which are
        // rewritten below; the retired log files go with the flush.
        self.flush()?;
        let (person_nodes, affected) = {
            let state = self.state.read().expect("state lock");
            let Some(person) = state.identity.find_person(id) else {
                return Ok(0);
            };
            let nodes: HashSet<NodeId> = (0..state.identity.node_count() as NodeId)
                .filter(|&n| state.identity.person_of(n) == person)
                .collect();
            let mut affected = Vec::new();
            for s in &state.segments {
                let seg_nodes = s.read_column::<u32>("node")?;
                if seg_nodes.iter().any(|n| nodes.contains(n)) {
                    affected.push(s.clone());
                }
            }
            (nodes, affected)
        };
        let mut erased = 0;
        for seg in affected {
            erased += self.rewrite(&[seg], &person_nodes)?;
        }
        let mut state = self.state.write().expect("state lock");
        let person = state
            .identity
            .person_of(*person_nodes.iter().next().expect("a node"));
        state.identity.forget_person(person);
        let manifest = state.manifest.clone();
        self.publish(&mut state, manifest)?;
        Ok(erased)
    }
}
