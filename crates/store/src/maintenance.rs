//! The flusher and the compactor: the threads that turn frozen tables into segments and
//! merge segments, beside the writer, and the manifest changes they publish.
//!
//! Every structural change is published the same way: write the new files (temp file,
//! fsync, rename), then the MANIFEST naming them (the commit point), then swap the read
//! state under a short write lock, then delete what the manifest no longer names. One
//! mutex orders the manifest changes, so a flush and a compaction never publish over each
//! other; until the swap, readers and deduplication see the frozen table or the input
//! segments, so every acknowledged event is visible exactly once at every moment.
//!
//! A flush publishes the identity snapshot taken when its table was frozen together with
//! the first log file after the table: recovery loads that graph and replays exactly the
//! events it does not include. A compaction changes neither, and is abandoned when the
//! store closes (its input segments stay, and a later flush retries).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use throughline_identity::NodeId;
use throughline_model::DIMS;

use crate::fsutil::write_atomic;
use crate::memtable::{Frozen, IdentityUpdate};
use crate::numbers::{self, NumberIndex};
use crate::project::{Manifest, Reply, Shared, State};
use crate::segment::{self, Columns, DimColumn, PayloadReader, Segment, StrHasher, NO_VALUE};
use crate::wal;
use crate::StoreError;

/// Longest wait between retries of a failed flush.
const FLUSH_RETRY_MS_MAX: u64 = 5_000;
/// Segments still to be merged (below `compact_rows_max`) at most while the compactor is
/// busy: beyond it the flusher waits for the compactor, frozen tables queue, and then the
/// writer waits, so ingestion can never outrun merging for long.
const COMPACTION_BACKLOG_SEGMENTS: usize = 32;
/// Rows a compaction copies between checks for the store closing.
const ABANDON_CHECK_ROWS: usize = 4096;

/// Work for the flusher, in order.
pub(crate) enum FlushJob {
    Table(Arc<Frozen>),
    /// Answered once every table queued before it is published.
    Barrier(Reply<()>),
}

#[derive(Default)]
pub(crate) struct FlushQueue {
    jobs: VecDeque<FlushJob>,
    /// No more jobs will come: the flusher exits once the queue is empty.
    closed: bool,
    /// Why the last flush failed, until one succeeds.
    failing: Option<String>,
}

impl FlushQueue {
    fn tables(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| matches!(j, FlushJob::Table(_)))
            .count()
    }
}

#[derive(Default)]
pub(crate) struct CompactState {
    /// A flush published a segment since the compactor last looked.
    wanted: bool,
    running: bool,
    closed: bool,
}

pub(crate) fn enqueue(shared: &Shared, job: FlushJob) {
    shared
        .flush
        .lock()
        .expect("flush queue")
        .jobs
        .push_back(job);
    shared.flush_cv.notify_all();
}

pub(crate) fn close_flush_queue(shared: &Shared) {
    shared.flush.lock().expect("flush queue").closed = true;
    shared.flush_cv.notify_all();
}

/// Blocks the writer while `frozen_tables_max` tables wait for the flusher.
pub(crate) fn wait_for_room(shared: &Shared) -> Result<(), StoreError> {
    let mut q = shared.flush.lock().expect("flush queue");
    while q.tables() >= shared.options.frozen_tables_max.max(1) {
        if shared.closing.load(Ordering::Relaxed) {
            if let Some(why) = &q.failing {
                return Err(StoreError::FlushFailed(why.clone()));
            }
        }
        q = shared
            .flush_cv
            .wait_timeout(q, Duration::from_millis(500))
            .expect("flush queue")
            .0;
    }
    Ok(())
}

pub(crate) fn begin_close(shared: &Shared) {
    shared.closing.store(true, Ordering::Relaxed);
    shared.compact.lock().expect("compact state").closed = true;
    shared.compact_cv.notify_all();
    shared.flush_cv.notify_all();
}

fn request_compaction(shared: &Shared) {
    shared.compact.lock().expect("compact state").wanted = true;
    shared.compact_cv.notify_all();
}

/// Returns once the compactor has nothing due (or the store is closing).
pub(crate) fn wait_compactions(shared: &Shared) {
    let mut c = shared.compact.lock().expect("compact state");
    while (c.wanted || c.running) && !c.closed {
        c = shared.compact_cv.wait(c).expect("compact state");
    }
}

/// The flusher thread: flushes frozen tables oldest first and answers barriers. A failed
/// flush is retried (its events stay in the log and visible); barriers waiting behind it
/// get the error.
pub(crate) fn flusher(shared: &Shared) {
    let mut retry_ms = 100;
    loop {
        let job = {
            let mut q = shared.flush.lock().expect("flush queue");
            loop {
                match q.jobs.front() {
                    Some(FlushJob::Barrier(_)) => match q.jobs.pop_front() {
                        Some(FlushJob::Barrier(reply)) => break Err(reply),
                        _ => unreachable!("the front was a barrier"),
                    },
                    Some(FlushJob::Table(f)) => break Ok(f.clone()),
                    None if q.closed => return,
                    None => q = shared.flush_cv.wait(q).expect("flush queue"),
                }
            }
        };
        let frozen = match job {
            Err(barrier) => {
                barrier(Ok(()));
                continue;
            }
            Ok(f) => f,
        };
        wait_for_compactor(shared);
        let started = Instant::now();
        match flush_table(shared, &frozen) {
            Ok(()) => {
                shared
                    .metrics
                    .flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                shared.metrics.flushes.fetch_add(1, Ordering::Relaxed);
                {
                    let mut q = shared.flush.lock().expect("flush queue");
                    q.jobs.pop_front();
                    q.failing = None;
                }
                shared.flush_cv.notify_all();
                request_compaction(shared);
                retry_ms = 100;
            }
            Err(e) => {
                tracing::error!(error = %e, "flush failed; its events stay in the log, retrying");
                shared
                    .metrics
                    .flush_failures
                    .fetch_add(1, Ordering::Relaxed);
                let (barriers, give_up) = {
                    let mut q = shared.flush.lock().expect("flush queue");
                    q.failing = Some(e.to_string());
                    let (barriers, rest): (Vec<FlushJob>, Vec<FlushJob>) = q
                        .jobs
                        .drain(..)
                        .partition(|j| matches!(j, FlushJob::Barrier(_)));
                    q.jobs = rest.into();
                    (barriers, q.closed && shared.closing.load(Ordering::Relaxed))
                };
                shared.flush_cv.notify_all();
                for b in barriers {
                    if let FlushJob::Barrier(reply) = b {
                        reply(Err(StoreError::FlushFailed(e.to_string())));
                    }
                }
                if give_up {
                    // Closing: logged events are safe in the log and come back at open.
                    return;
                }
                std::thread::sleep(Duration::from_millis(retry_ms));
                retry_ms = (retry_ms * 2).min(FLUSH_RETRY_MS_MAX);
            }
        }
    }
}

/// Waits while [`COMPACTION_BACKLOG_SEGMENTS`] segments wait for a busy compactor.
fn wait_for_compactor(shared: &Shared) {
    loop {
        let backlog = {
            let state = shared.state.read().expect("state lock");
            state
                .segments
                .iter()
                .filter(|s| s.rows() < shared.options.compact_rows_max)
                .count()
        };
        if backlog < COMPACTION_BACKLOG_SEGMENTS || shared.closing.load(Ordering::Relaxed) {
            return;
        }
        let c = shared.compact.lock().expect("compact state");
        if !(c.wanted || c.running) {
            return;
        }
        drop(
            shared
                .compact_cv
                .wait_timeout(c, Duration::from_millis(200))
                .expect("compact state"),
        );
    }
}

/// Writes a frozen table as a segment sorted by (person, time, arrival) and publishes it
/// with the table's identity snapshot, retiring the log files it came from.
fn flush_table(shared: &Shared, frozen: &Frozen) -> Result<(), StoreError> {
    let t = &frozen.table;
    let persons: Vec<u32> = {
        let state = shared.state.read().expect("state lock");
        t.rows
            .iter()
            .map(|r| state.identity.person_of(r.node))
            .collect()
    };
    // (person, time, arrival) packed in one integer: sorting those is a plain integer
    // sort in cache, not indirect comparisons. Flipping the sign bit orders time as i64.
    let mut keys: Vec<u128> = t
        .rows
        .iter()
        .zip(&persons)
        .enumerate()
        .map(|(i, (r, &p))| {
            let ts = (r.ts as u64) ^ (1 << 63);
            (u128::from(p) << 96) | (u128::from(ts) << 32) | i as u128
        })
        .collect();
    keys.sort_unstable();
    let order: Vec<u32> = keys.into_iter().map(|k| k as u32).collect();
    let mut columns = Columns {
        persons: Vec::with_capacity(order.len()),
        nodes: Vec::with_capacity(order.len()),
        ts: Vec::with_capacity(order.len()),
        kinds: Vec::with_capacity(order.len()),
        hashes: t.rows.iter().map(|r| t.hash(r)).collect(),
        numbers: NumberIndex::Derive,
    };
    for &i in &order {
        let r = &t.rows[i as usize];
        columns.persons.push(persons[i as usize]);
        columns.nodes.push(r.node);
        columns.ts.push(r.ts);
        columns.kinds.push(r.kind);
    }
    let name = format!("{:08}.seg", frozen.number);
    let path = shared.seg_dir().join(&name);
    segment::write(
        &path,
        columns,
        |d| {
            let mut coder = DimColumn::coder();
            for &i in &order {
                coder.push(t.dim(&t.rows[i as usize], d));
            }
            Ok(coder.finish())
        },
        |i, out| {
            out.extend_from_slice(t.record(&t.rows[order[i] as usize]));
            Ok(())
        },
    )?;
    let seg = Arc::new(Segment::open(&path)?);
    let (id_name, bytes, full) = match &frozen.identity {
        IdentityUpdate::Snapshot(b) => (format!("identity-{:08}.bin", frozen.number), b, true),
        IdentityUpdate::Log(b) => (format!("identity-log-{:08}.bin", frozen.number), b, false),
    };
    let id_path = shared.dir.join(&id_name);
    write_atomic(&id_path, bytes).map_err(|e| StoreError::io(&id_path, e))?;
    publish(
        shared,
        |m| {
            m.segments.push(name);
            m.wal_start = frozen.wal_end;
            if full {
                m.identity = Some(id_name);
                m.identity_logs.clear();
            } else {
                m.identity_logs.push(id_name);
            }
        },
        |state| {
            let front = state.frozen.pop_front();
            assert!(
                front.is_some_and(|f| std::ptr::eq(Arc::as_ptr(&f), frozen)),
                "tables are flushed in the order they were frozen"
            );
            state.segments.push(seg);
        },
    )?;
    let wal_dir = shared.wal_dir();
    if let Ok(seqs) = wal::list(&wal_dir) {
        for s in seqs.into_iter().filter(|&s| s < frozen.wal_end) {
            let _ = std::fs::remove_file(wal_dir.join(wal::file_name(s)));
        }
    }
    Ok(())
}

/// Publishes a manifest change: `update` edits the manifest, `apply` makes the same change
/// to the read state once the manifest is durable. Files the new manifest no longer
/// names are deleted afterwards.
fn publish(
    shared: &Shared,
    update: impl FnOnce(&mut Manifest),
    apply: impl FnOnce(&mut State),
) -> Result<(), StoreError> {
    let _order = shared.manifest_lock.lock().expect("manifest lock");
    let old = shared.state.read().expect("state lock").manifest.clone();
    let mut new = old.clone();
    update(&mut new);
    new.next_segment = new
        .next_segment
        .max(shared.next_number.load(Ordering::Relaxed));
    new.write(&shared.dir)?;
    {
        let mut state = shared.state.write().expect("state lock");
        state.changed();
        apply(&mut state);
        state.manifest = new.clone();
    }
    for s in old.segments.iter().filter(|s| !new.segments.contains(s)) {
        let _ = std::fs::remove_file(shared.seg_dir().join(s));
    }
    let named: HashSet<&String> = new.identity.iter().chain(&new.identity_logs).collect();
    for o in old.identity.iter().chain(&old.identity_logs) {
        if !named.contains(o) {
            let _ = std::fs::remove_file(shared.dir.join(o));
        }
    }
    Ok(())
}

fn file_name(seg: &Segment) -> String {
    seg.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Publishes `output` in place of `inputs`.
pub(crate) fn publish_merge(
    shared: &Shared,
    inputs: &[Arc<Segment>],
    output: Arc<Segment>,
) -> Result<(), StoreError> {
    let gone: HashSet<String> = inputs.iter().map(|s| file_name(s)).collect();
    let name = file_name(&output);
    publish(
        shared,
        |m| {
            m.segments.retain(|s| !gone.contains(s));
            m.segments.push(name);
        },
        |state| {
            state
                .segments
                .retain(|s| !inputs.iter().any(|i| Arc::ptr_eq(i, s)));
            state.segments.push(output);
        },
    )
}

/// Publishes a new identity snapshot (after an erasure changed the graph).
pub(crate) fn publish_identity(
    shared: &Shared,
    number: u64,
    snapshot: &[u8],
) -> Result<(), StoreError> {
    let name = format!("identity-{number:08}.bin");
    let path = shared.dir.join(&name);
    write_atomic(&path, snapshot).map_err(|e| StoreError::io(&path, e))?;
    publish(
        shared,
        |m| {
            m.identity = Some(name);
            m.identity_logs.clear();
        },
        |_| {},
    )
}

/// The compactor thread: after each flush, merges size tiers until none is due.
pub(crate) fn compactor(shared: &Shared) {
    loop {
        {
            let mut c = shared.compact.lock().expect("compact state");
            while !c.wanted && !c.closed {
                c = shared.compact_cv.wait(c).expect("compact state");
            }
            if c.closed {
                c.running = false;
                shared.compact_cv.notify_all();
                return;
            }
            c.wanted = false;
            c.running = true;
        }
        while !shared.closing.load(Ordering::Relaxed) {
            let _merging = shared.compaction_lock.lock().expect("compaction lock");
            let picked = {
                let state = shared.state.read().expect("state lock");
                pick_tier(
                    &state.segments,
                    shared.options.compact_segments_min,
                    shared.options.compact_rows_max,
                )
            };
            let Some(picked) = picked else { break };
            let started = Instant::now();
            let merged = rewrite(shared, &picked, &HashSet::new(), true).and_then(|r| {
                r.map(|r| publish_merge(shared, &picked, r.output))
                    .transpose()
            });
            match merged {
                Ok(Some(())) => {
                    shared.metrics.compactions.fetch_add(1, Ordering::Relaxed);
                    shared
                        .metrics
                        .compaction_seconds
                        .observe(started.elapsed().as_secs_f64());
                    shared.compact_cv.notify_all();
                }
                // Abandoned: the store is closing.
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "compaction failed; its inputs stay as they are");
                    shared
                        .metrics
                        .compaction_failures
                        .fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        shared.compact.lock().expect("compact state").running = false;
        shared.compact_cv.notify_all();
    }
}

/// The segments to merge next, if some size tier holds `min` of them: the tier of a
/// segment is how many times `min` fits between the smallest segment and it, so merging a
/// full tier yields one segment of the next tier. Each event is rewritten about
/// log(total / flush) times, not at every flush; segments that reached `rows_max` are
/// left alone.
pub(crate) fn pick_tier(
    segments: &[Arc<Segment>],
    min: usize,
    rows_max: usize,
) -> Option<Vec<Arc<Segment>>> {
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
    let mut tiers: BTreeMap<usize, Vec<Arc<Segment>>> = Default::default();
    for s in small {
        tiers.entry(tier(s.rows())).or_default().push(s.clone());
    }
    // The merged segment stays within `rows_max`, which bounds compaction's memory and
    // how long one merge takes.
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

/// A segment written by [`rewrite`], not yet published.
pub(crate) struct Rewritten {
    pub output: Arc<Segment>,
    /// Rows left out (erasure).
    pub dropped: usize,
}

/// One input of a merge: its scan columns (dimensions are read one at a time).
struct Input {
    nodes: Vec<u32>,
    ts: Vec<i64>,
    kinds: Vec<u8>,
}

/// Not yet given an output code (distinct from [`NO_VALUE`]).
const UNCODED: u32 = u32::MAX - 1;

/// Writes one segment holding the rows of `inputs` minus those of `drop_nodes`, sorted by
/// current person and time (stable, so equal keys keep their order: arrival order within
/// a person). Message-id hashes are all kept, so a retry of an erased or compacted
/// message is still recognised as a duplicate. Only scan columns are held in memory;
/// payloads stream from the inputs through verified blocks. `Ok(None)` when `abandonable`
/// and the store began closing.
pub(crate) fn rewrite(
    shared: &Shared,
    inputs: &[Arc<Segment>],
    drop_nodes: &HashSet<NodeId>,
    abandonable: bool,
) -> Result<Option<Rewritten>, StoreError> {
    struct Row {
        person: u32,
        ts: i64,
        input: u32,
        row: u32,
    }
    let mut ins = Vec::with_capacity(inputs.len());
    let mut hashes: Vec<u128> = Vec::new();
    for seg in inputs {
        hashes.extend(seg.hashes()?);
        ins.push(Input {
            nodes: seg.read_column::<u32>("node")?,
            ts: seg.read_column::<i64>("ts")?,
            kinds: seg.read_column::<u8>("type")?,
        });
    }
    let mut readers = inputs
        .iter()
        .map(|s| PayloadReader::new(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows: Vec<Row> = Vec::with_capacity(ins.iter().map(|i| i.nodes.len()).sum());
    let mut dropped = 0;
    {
        let state = shared.state.read().expect("state lock");
        for (k, input) in ins.iter().enumerate() {
            for (i, &node) in input.nodes.iter().enumerate() {
                if !drop_nodes.is_empty() && drop_nodes.contains(&node) {
                    dropped += 1;
                    continue;
                }
                rows.push(Row {
                    person: state.identity.person_of(node),
                    ts: input.ts[i],
                    input: k as u32,
                    row: i as u32,
                });
            }
        }
    }
    rows.sort_by_key(|r| (r.person, r.ts));
    let rows_at: Vec<(u32, u32)> = rows.iter().map(|r| (r.input, r.row)).collect();

    let columns = Columns {
        persons: rows.iter().map(|r| r.person).collect(),
        nodes: rows
            .iter()
            .map(|r| ins[r.input as usize].nodes[r.row as usize])
            .collect(),
        ts: rows.iter().map(|r| r.ts).collect(),
        kinds: rows
            .iter()
            .map(|r| ins[r.input as usize].kinds[r.row as usize])
            .collect(),
        hashes,
        // The inputs' number columns moved to the output rows; derived from the records
        // being written when an input has none (written before they existed).
        numbers: match numbers::merge(inputs, &rows_at)? {
            Some(n) => NumberIndex::Given(n),
            None => NumberIndex::Derive,
        },
    };
    drop(ins);
    let number = shared.next_number.fetch_add(1, Ordering::Relaxed);
    let path = shared.seg_dir().join(format!("{number:08}.seg"));
    let written = segment::write(
        &path,
        columns,
        |d| merge_dim(inputs, &rows_at, d),
        |i, out| {
            if abandonable && i % ABANDON_CHECK_ROWS == 0 && shared.closing.load(Ordering::Relaxed)
            {
                return Err(StoreError::Closed);
            }
            let r = &rows[i];
            readers[r.input as usize].append(r.row as usize, out)
        },
    );
    match written {
        Ok(()) => Ok(Some(Rewritten {
            output: Arc::new(Segment::open(&path)?),
            dropped,
        })),
        Err(e) => {
            let _ = std::fs::remove_file(tmp_of(&path));
            match e {
                StoreError::Closed if abandonable => Ok(None),
                e => Err(e),
            }
        }
    }
}

/// Output column `d` of a merge whose output rows are `rows_at` (input, row): input codes
/// map to output codes once per distinct (input, code), not per row, and each string
/// moves into the output dictionary the first time a row uses it (unused ones, of erased
/// rows, are left out).
fn merge_dim(
    inputs: &[Arc<Segment>],
    rows_at: &[(u32, u32)],
    d: usize,
) -> Result<DimColumn<'static>, StoreError> {
    let mut ins: Vec<(Vec<u32>, Vec<String>)> = Vec::with_capacity(inputs.len());
    for seg in inputs {
        ins.push(seg.dim(DIMS[d])?);
    }
    let mut remap: Vec<Vec<u32>> = ins.iter().map(|i| vec![UNCODED; i.1.len()]).collect();
    let mut ids: HashMap<String, u32, BuildHasherDefault<StrHasher>> = HashMap::default();
    let mut dict: Vec<Cow<'static, str>> = Vec::new();
    let codes = rows_at
        .iter()
        .map(|&(input, row)| {
            let (codes, strings) = &mut ins[input as usize];
            let c = codes[row as usize];
            if c == NO_VALUE {
                return NO_VALUE;
            }
            let slot = &mut remap[input as usize][c as usize];
            if *slot == UNCODED {
                let s = std::mem::take(&mut strings[c as usize]);
                *slot = match ids.get(&s) {
                    Some(&code) => code,
                    None => {
                        let code = dict.len() as u32;
                        ids.insert(s.clone(), code);
                        dict.push(Cow::Owned(s));
                        code
                    }
                };
            }
            *slot
        })
        .collect();
    Ok(DimColumn { codes, dict })
}

fn tmp_of(path: &Path) -> std::path::PathBuf {
    path.with_extension("seg.tmp")
}
