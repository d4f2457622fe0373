//! Loading: the columns a query needs, from every segment and the log, grouped by person
//! in (person, timestamp, arrival) order.
//!
//! Two ways out. [`load`] materializes one table ([`Rows`]) for queries that need several
//! dimensions' strings or look across persons. [`Scan`] streams each person's rows to a
//! visitor instead, in parallel over ranges of persons, each row carrying a `u64` tag the
//! query computed from dictionary codes; no merged table is built, so memory is the kept
//! rows of each segment and one person at a time.
//!
//! Both read each segment on its own (in parallel), keep the rows in range that pass the
//! filter, and translate segment-local dictionary codes into one dictionary per dimension
//! built from the segments' dictionaries before any row is read, so filters are decided
//! once per distinct value, never per row. Columns come from the process's
//! [`ColumnCache`] when `serve` turned it on; otherwise they stream from the file a piece
//! at a time, checksummed on the way, and a segment's rows count only once its columns'
//! checksums matched. Segments are written sorted by person and every person's rows of
//! one segment are contiguous, so rows of several sources meet only per person: the merge
//! is per person, never per row.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use throughline_model::{Millis, DIMS, DIM_COUNT};
use throughline_store::{Segment, Snapshot, StoreError, NO_VALUE};

use crate::cache::{self, ColumnCache};
use crate::source::{RemoteSource, Source};
use crate::QueryError;

/// Rows per piece when a segment's columns stream from its file: a few hundred KB, so a
/// piece stays in the CPU's cache between the read, the checksum and the filter.
const PIECE_ROWS: usize = 32 * 1024;
/// Rows per piece of cached columns: the selection buffers of one stay in the L1/L2 cache.
const CACHED_PIECE_ROWS: usize = 8 * 1024;
/// Filter answers memoized per thread at most (one byte each).
const KEEP_MEMO_MAX: usize = 1 << 24;
/// Loader threads at most.
const THREADS_MAX: usize = 4;

fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, THREADS_MAX)
}

/// A dictionary-coded string column with one dictionary for the whole table.
#[derive(Debug, Default)]
pub struct Column {
    pub codes: Vec<u32>,
    pub dict: Vec<String>,
}

impl Column {
    pub fn get(&self, row: usize) -> Option<&str> {
        let c = self.codes[row];
        (c != NO_VALUE).then(|| self.dict[c as usize].as_str())
    }
}

/// Rows sorted by (person, timestamp, arrival). `dims[d]` is loaded when requested.
#[derive(Debug, Default)]
pub struct Rows {
    pub person: Vec<u32>,
    pub ts: Vec<Millis>,
    /// Arrival number: the row's position in segment order, then log order, which
    /// `Snapshot::for_each_event_named` reports too.
    pub seq: Vec<u32>,
    pub kind: Vec<u8>,
    pub dims: Vec<Option<Column>>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    pub fn dim(&self, d: usize) -> &Column {
        self.dims[d].as_ref().expect("dimension was loaded")
    }

    /// Whether each row is an event `m` names, decided once per distinct (type, name,
    /// path) rather than per row. Needs dimensions 0 and 1.
    pub fn matching(&self, m: &crate::spec::StepMatcher) -> Vec<bool> {
        let (names, paths) = (self.dim(0), self.dim(1));
        let mut memo: rustc_hash::FxHashMap<(u8, u32, u32), bool> = Default::default();
        (0..self.len())
            .map(|i| {
                *memo
                    .entry((self.kind[i], names.codes[i], paths.codes[i]))
                    .or_insert_with(|| m.matches_event(self.kind[i], names.get(i), paths.get(i)))
            })
            .collect()
    }

    /// The row range of each person, in person order.
    pub fn persons(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let mut start = 0;
        std::iter::from_fn(move || {
            if start >= self.person.len() {
                return None;
            }
            let end = block_end(&self.person, start);
            let r = start..end;
            start = end;
            Some(r)
        })
    }
}

/// The end of the block of equal values starting at `start`.
fn block_end(person: &[u32], start: usize) -> usize {
    let p = person[start];
    let mut end = start + 1;
    while end < person.len() && person[end] == p {
        end += 1;
    }
    end
}

/// A row filter seeing the event type and the requested dimensions' values.
pub type Keep<'a> = Box<dyn Fn(u8, &[Option<&str>; DIM_COUNT]) -> bool + Send + Sync + 'a>;

/// What to load: a time range `[from, to)`, the dimensions (indexes into `DIMS`), and an
/// optional row filter seeing the event type and the requested dimensions' values.
#[derive(Default)]
pub struct Load<'a> {
    pub from: Option<Millis>,
    pub to: Option<Millis>,
    pub dims: Vec<usize>,
    pub keep: Option<Keep<'a>>,
    /// The dimensions `keep` reads, when it reads fewer than `dims`: its answers are
    /// memoized per distinct combination of these (default: all of `dims`, memoized when
    /// there are at most two).
    pub keep_reads: Option<Vec<usize>>,
    /// Only these persons' rows, when given (a second pass after a first found them).
    pub persons: Option<&'a HashSet<u32>>,
}

/// Loads the rows in range that pass the filter, sorted by (person, ts, arrival), from the
/// embedded store or a remote backend.
pub fn load<'s, 'a: 's>(src: impl Into<Source<'s, 'a>>, req: &Load) -> Result<Rows, QueryError> {
    match src.into() {
        Source::Store(snap) => Ok(load_store(snap, req)?),
        Source::Remote(r) => r.backend().rows(req),
    }
}

fn load_store(snap: &Snapshot, req: &Load) -> Result<Rows, StoreError> {
    let sources = Sources::new(snap, req.from, req.to, &req.dims, cache::global())?;
    let reads: Vec<usize> = match &req.keep_reads {
        None => (0..req.dims.len()).collect(),
        Some(r) => r
            .iter()
            .map(|d| {
                req.dims
                    .iter()
                    .position(|x| x == d)
                    .expect("keep_reads names loaded dimensions")
            })
            .collect(),
    };
    let persons = req.persons.map(Bitmap::of);
    let decide = KeepMemo::new(&sources.dicts, req.keep.as_ref(), &req.dims, &reads);
    let runs = sources.runs(
        persons.as_ref(),
        true,
        if req.keep.is_some() { &reads } else { &[] },
        &|| decide.clone(),
        &|memo: &mut KeepMemo, kind, codes| u64::from(memo.keep(kind, codes)),
    )?;
    let rows = merge_rows(&runs, &req.dims, sources.dicts);
    recycle(runs);
    recycle_table(sources.table);
    Ok(rows)
}

/// A streaming scan over the persons of one snapshot: [`Scan::new`] gathers the
/// dictionaries of the dimensions the query reads; the query builds its per-code tables
/// from [`Scan::dict`]; [`Scan::run`] then visits every person's tagged rows.
pub struct Scan<'s, 'a> {
    inner: Inner<'s, 'a>,
}

enum Inner<'s, 'a> {
    Store(Sources<'s, 'a>),
    /// A remote backend: its dictionaries are read first (no rows); each run sends the
    /// combinations the tag keeps as the filter, so only kept rows travel.
    Remote {
        backend: &'s dyn RemoteSource,
        from: Option<Millis>,
        to: Option<Millis>,
        dims: Vec<usize>,
        dicts: Vec<Vec<String>>,
        index: Vec<HashMap<String, u32>>,
    },
}

/// One person's kept rows in (ts, arrival) order.
pub struct PersonRows<'r> {
    pub person: u32,
    pub ts: &'r [Millis],
    pub seq: &'r [u32],
    pub tag: &'r [u64],
}

impl<'s, 'a> Scan<'s, 'a> {
    pub fn new(
        src: impl Into<Source<'s, 'a>>,
        from: Option<Millis>,
        to: Option<Millis>,
        dims: &[usize],
    ) -> Result<Scan<'s, 'a>, QueryError> {
        let inner = match src.into() {
            Source::Store(snap) => {
                Inner::Store(Sources::new(snap, from, to, dims, cache::global())?)
            }
            Source::Remote(r) => {
                // A filter that keeps nothing: the dictionaries alone come back.
                let mut none = r.backend().rows(&Load {
                    from,
                    to,
                    dims: dims.to_vec(),
                    keep: Some(Box::new(|_, _| false)),
                    ..Default::default()
                })?;
                let dicts: Vec<Vec<String>> = dims
                    .iter()
                    .map(|&d| none.dims[d].take().map_or_else(Vec::new, |c| c.dict))
                    .collect();
                let index = dicts
                    .iter()
                    .map(|d| (0u32..).zip(d).map(|(c, v)| (v.clone(), c)).collect())
                    .collect();
                Inner::Remote {
                    backend: r.backend(),
                    from,
                    to,
                    dims: dims.to_vec(),
                    dicts,
                    index,
                }
            }
        };
        Ok(Scan { inner })
    }

    /// The dictionary of the `j`-th requested dimension: the codes `tag` sees index it,
    /// [`NO_VALUE`] for rows without a value.
    pub fn dict(&self, j: usize) -> &[String] {
        match &self.inner {
            Inner::Store(sources) => &sources.dicts.values[j],
            Inner::Remote { dicts, .. } => &dicts[j],
        }
    }

    /// Visits every person with kept rows, persons split into ranges over the loader
    /// threads: `tag(kind, codes)` (codes of the requested dimensions, in order) gives each
    /// row's tag, 0 to drop it; `visit` sees each person in the state `init` made for its
    /// thread. The states come back in person order (a range's persons all precede the
    /// next range's), for the caller to combine.
    pub fn run<S, T, I, V>(
        &self,
        persons: Option<&HashSet<u32>>,
        tag: T,
        init: I,
        visit: V,
    ) -> Result<Vec<S>, QueryError>
    where
        S: Send,
        T: Fn(u8, &[u32]) -> u64 + Sync,
        I: Fn() -> S + Sync,
        V: Fn(&mut S, &PersonRows) + Sync,
    {
        let sources = match &self.inner {
            Inner::Store(sources) => sources,
            Inner::Remote {
                backend,
                from,
                to,
                dims,
                dicts: _,
                index,
            } => {
                // The scan's code of each value, `None` for one it has not seen (a value
                // stored since `new`: dropped, as the embedded snapshot would not hold it).
                let code = |j: usize, v: Option<&str>| -> Option<u32> {
                    match v {
                        None => Some(NO_VALUE),
                        Some(v) => index[j].get(v).copied(),
                    }
                };
                let codes_of = |v: &[Option<&str>; DIM_COUNT]| -> Option<Vec<u32>> {
                    dims.iter()
                        .enumerate()
                        .map(|(j, &d)| code(j, v[d]))
                        .collect()
                };
                let rows = backend.rows(&Load {
                    from: *from,
                    to: *to,
                    dims: dims.clone(),
                    keep: Some(Box::new(|kind, v| {
                        codes_of(v).is_some_and(|c| tag(kind, &c) != 0)
                    })),
                    persons,
                    ..Default::default()
                })?;
                // The rows' own dictionaries, mapped onto the scan's.
                let remap: Vec<Vec<u32>> = (0..dims.len())
                    .map(|j| {
                        rows.dim(dims[j])
                            .dict
                            .iter()
                            .map(|v| code(j, Some(v)).unwrap_or(NO_VALUE))
                            .collect()
                    })
                    .collect();
                return Ok(vec![run_rows(&rows, dims, &remap, tag, init, visit)]);
            }
        };
        let persons = persons.map(Bitmap::of);
        let all: Vec<usize> = (0..sources.dims.len()).collect();
        let runs = sources.runs(
            persons.as_ref(),
            false,
            &all,
            &|| (),
            &|_: &mut (), kind, codes| tag(kind, codes),
        )?;
        let ranges = split_persons(&runs, threads());
        let visit_range = |range: &Range<u64>| -> S {
            let mut state = init();
            let mut scratch = Scratch::default();
            for_each_person(&runs, range, |person, pieces| {
                let rows = scratch.person(&runs, person, pieces);
                visit(&mut state, &rows);
            });
            state
        };
        let states = if ranges.len() == 1 {
            vec![visit_range(&ranges[0])]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = ranges
                    .iter()
                    .map(|r| s.spawn(move || visit_range(r)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("scan thread"))
                    .collect()
            })
        };
        recycle(runs);
        Ok(states)
    }
}

impl Drop for Scan<'_, '_> {
    fn drop(&mut self) {
        if let Inner::Store(sources) = &mut self.inner {
            recycle_table(std::mem::take(&mut sources.table));
        }
    }
}

/// [`Scan::run`] over a remote backend's rows (codes mapped onto the scan's dictionaries
/// by `remap`): one state, persons in order.
fn run_rows<S, T, I, V>(
    rows: &Rows,
    dims: &[usize],
    remap: &[Vec<u32>],
    tag: T,
    init: I,
    visit: V,
) -> S
where
    T: Fn(u8, &[u32]) -> u64,
    I: Fn() -> S,
    V: Fn(&mut S, &PersonRows),
{
    let columns: Vec<&Column> = dims.iter().map(|&d| rows.dim(d)).collect();
    let mut state = init();
    let mut codes = vec![0u32; dims.len()];
    let (mut ts, mut seq, mut tags) = (Vec::new(), Vec::new(), Vec::new());
    for r in rows.persons() {
        let person = rows.person[r.start];
        ts.clear();
        seq.clear();
        tags.clear();
        for i in r {
            for ((c, col), remap) in codes.iter_mut().zip(&columns).zip(remap) {
                let code = col.codes[i];
                *c = if code == NO_VALUE {
                    NO_VALUE
                } else {
                    remap[code as usize]
                };
            }
            let t = tag(rows.kind[i], &codes);
            if t != 0 {
                ts.push(rows.ts[i]);
                seq.push(rows.seq[i]);
                tags.push(t);
            }
        }
        if !tags.is_empty() {
            visit(
                &mut state,
                &PersonRows {
                    person,
                    ts: &ts,
                    seq: &seq,
                    tag: &tags,
                },
            );
        }
    }
    state
}

/// The global dictionaries of the requested dimensions, and how each source's codes map
/// into them.
struct Dicts {
    values: Vec<Vec<String>>,
    /// `remap[k][j]`: segment `k`'s code -> global code, for dimension `j`.
    remap: Vec<Vec<Vec<u32>>>,
}

/// The events still in the log, with global codes.
#[derive(Default)]
struct LogRows {
    node: Vec<u32>,
    ts: Vec<Millis>,
    kind: Vec<u8>,
    codes: Vec<Vec<u32>>,
    first_seq: u32,
}

/// Everything a query reads, ready to filter: the segments in range and the log.
struct Sources<'s, 'a> {
    snap: &'s Snapshot<'a>,
    cache: Option<&'s ColumnCache>,
    from: Option<Millis>,
    to: Option<Millis>,
    dims: Vec<usize>,
    /// Indexes into the snapshot's segments, with the arrival number of each one's first row.
    segments: Vec<(usize, u32)>,
    log: LogRows,
    dicts: Dicts,
    table: Vec<u32>,
}

impl<'s, 'a> Sources<'s, 'a> {
    fn new(
        snap: &'s Snapshot<'a>,
        from: Option<Millis>,
        to: Option<Millis>,
        dims: &[usize],
        cache: Option<&'s ColumnCache>,
    ) -> Result<Sources<'s, 'a>, StoreError> {
        let mut segments = Vec::new();
        let mut arrival = 0u32;
        for (k, seg) in snap.segments().iter().enumerate() {
            let (lo, hi) = seg.time_range();
            if !(from.is_some_and(|f| hi < f) || to.is_some_and(|e| lo >= e)) {
                segments.push((k, arrival));
            }
            arrival += seg.rows() as u32;
        }
        let mut values: Vec<Vec<String>> = vec![Vec::new(); dims.len()];
        let mut index: Vec<HashMap<String, u32>> = vec![HashMap::new(); dims.len()];
        let mut intern = |j: usize, v: &str| -> u32 {
            if let Some(&c) = index[j].get(v) {
                return c;
            }
            values[j].push(v.to_string());
            let c = (values[j].len() - 1) as u32;
            index[j].insert(v.to_string(), c);
            c
        };
        let mut remap = Vec::with_capacity(segments.len());
        for &(k, _) in &segments {
            let seg = &snap.segments()[k];
            let mut per_dim = Vec::with_capacity(dims.len());
            for (j, &d) in dims.iter().enumerate() {
                let dict = match cache {
                    Some(c) => c.dict(seg, DIMS[d])?,
                    None => Arc::new(seg.dict(DIMS[d])?),
                };
                per_dim.push(dict.iter().map(|v| intern(j, v)).collect());
            }
            remap.push(per_dim);
        }
        let mut log = LogRows {
            codes: vec![Vec::new(); dims.len()],
            first_seq: arrival,
            ..LogRows::default()
        };
        for row in snap.log_rows() {
            log.node.push(row.node);
            log.ts.push(row.ts);
            log.kind.push(row.kind);
            for (j, &d) in dims.iter().enumerate() {
                log.codes[j].push(row.dims[d].map_or(NO_VALUE, |v| intern(j, v)));
            }
        }
        Ok(Sources {
            snap,
            cache,
            from,
            to,
            dims: dims.to_vec(),
            segments,
            log,
            dicts: Dicts { values, remap },
            table: person_table(snap),
        })
    }

    fn in_range(&self, t: Millis) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|e| t < e)
    }

    /// The kept rows of every source, each run sorted by (person, ts, arrival): segments
    /// in parallel, then the log. `decide(state, kind, global codes)` gives a row's tag (0
    /// drops it), with a per-thread state from `init`; it reads only the codes at the
    /// positions `reads` names, which lets a segment decide each distinct (type, code) once
    /// when there is at most one. `with_codes` keeps the type and codes of each row too.
    fn runs<M, I, D>(
        &self,
        persons: Option<&Bitmap>,
        with_codes: bool,
        reads: &[usize],
        init: &I,
        decide: &D,
    ) -> Result<Vec<Run>, StoreError>
    where
        I: Fn() -> M + Sync,
        D: Fn(&mut M, u8, &[u32]) -> u64 + Sync,
    {
        // With a person filter, the nodes of those persons: a node bitmap is smaller than
        // the node-to-person table, and one lookup instead of two.
        let wanted_nodes: Option<Bitmap> = persons.map(|b| {
            let mut bits = vec![0u64; self.table.len().div_ceil(64)];
            for (n, &person) in self.table.iter().enumerate() {
                if b.contains(person) {
                    bits[n / 64] |= 1 << (n % 64);
                }
            }
            Bitmap(bits)
        });
        let next = std::sync::atomic::AtomicUsize::new(0);
        let n = self.segments.len();
        let mut runs: Vec<(usize, Run)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads().min(n.max(1)))
                .map(|_| {
                    s.spawn(|| -> Result<Vec<(usize, Run)>, StoreError> {
                        let mut mine = Vec::new();
                        let mut state = init();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= n {
                                return Ok(mine);
                            }
                            let run = self.segment_run(
                                i,
                                persons,
                                wanted_nodes.as_ref(),
                                with_codes,
                                reads,
                                &mut |k, c| decide(&mut state, k, c),
                            )?;
                            mine.push((i, run));
                        }
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.join().expect("loader thread")?);
            }
            Ok::<_, StoreError>(all)
        })?;
        runs.sort_by_key(|(i, _)| *i);
        let mut runs: Vec<Run> = runs.into_iter().map(|(_, r)| r).collect();
        let mut state = init();
        let log = &self.log;
        let nd = self.dims.len();
        let mut run = take_run(nd, with_codes, 0);
        let mut codes = [NO_VALUE; DIM_COUNT];
        for i in 0..log.ts.len() {
            if !self.in_range(log.ts[i]) {
                continue;
            }
            for (j, c) in codes.iter_mut().enumerate().take(nd) {
                *c = log.codes[j][i];
            }
            let tag = decide(&mut state, log.kind[i], &codes[..nd]);
            if tag == 0 {
                continue;
            }
            let seq = log.first_seq + i as u32;
            let person =
                *self
                    .table
                    .get(log.node[i] as usize)
                    .ok_or_else(|| StoreError::Corrupt {
                        file: "wal".into(),
                        why: format!(
                            "log row names node {}, which the identity graph lacks",
                            log.node[i]
                        ),
                    })?;
            if persons.is_none_or(|p| p.contains(person)) {
                run.push(person, log.ts[i], seq, tag, log.kind[i], &codes[..nd]);
            }
        }
        run.ensure_sorted();
        runs.push(run);
        runs.retain(|r| !r.ts.is_empty());
        Ok(runs)
    }

    /// One segment's kept rows.
    #[allow(clippy::too_many_arguments)]
    fn segment_run<D: FnMut(u8, &[u32]) -> u64>(
        &self,
        i: usize,
        persons: Option<&Bitmap>,
        wanted_nodes: Option<&Bitmap>,
        with_codes: bool,
        reads: &[usize],
        decide: &mut D,
    ) -> Result<Run, StoreError> {
        let (k, first_seq) = self.segments[i];
        let seg = &self.snap.segments()[k];
        let remap = &self.dicts.remap[i];
        let corrupt = |why: String| StoreError::Corrupt {
            file: seg.path.clone(),
            why,
        };
        let nd = self.dims.len();
        let (lo, hi) = seg.time_range();
        // Most segments lie wholly inside the range: then no row needs the check.
        let whole = self.in_range(lo) && self.in_range(hi);
        let mut run = take_run(nd, with_codes, seg.rows());
        let mut codes = [NO_VALUE; DIM_COUNT];
        // With at most one dimension read, the tag of every (type, local code) is decided
        // up front: the row loop is then a table lookup.
        let table: Option<(usize, usize, Vec<u64>)> = match reads {
            [] => Some((
                usize::MAX,
                1,
                (0..8u8).map(|t| decide(t, &codes[..nd])).collect(),
            )),
            [j] => {
                let n = remap[*j].len() + 1;
                let mut t = Vec::with_capacity(8 * n);
                for kind in 0..8u8 {
                    for c in 0..n {
                        codes[*j] = remap[*j].get(c).copied().unwrap_or(NO_VALUE);
                        t.push(decide(kind, &codes[..nd]));
                    }
                }
                codes[*j] = NO_VALUE;
                Some((*j, n, t))
            }
            _ => None,
        };
        let mut bad_code: Option<usize> = None;
        let mut bad_node: Option<u32> = None;
        // The time range as bounds, so that the check is two comparisons.
        let (from, to) = (
            self.from.unwrap_or(Millis::MIN),
            self.to.unwrap_or(Millis::MAX),
        );
        // Per piece: first the rows to keep and their tags, without a branch on the
        // data (a kept row is written, and the count moves by one only when it is kept),
        // then the kept rows alone are looked up and copied.
        let mut sel: Vec<u32> = Vec::new();
        let mut sel_tag: Vec<u64> = Vec::new();
        let mut cand: Vec<u32> = Vec::new();
        let mut kept_rows: Vec<u32> = Vec::new();
        let kc_dim = match (reads, &table) {
            ([j], Some(_)) => Some(*j),
            _ => None,
        };
        for_each_piece(seg, &self.dims, kc_dim, self.cache, |p| {
            let len = p.ts.len();
            // Written before read, so only grown, never cleared.
            if sel.len() < len + 1 {
                sel.resize(len + 1, 0);
                sel_tag.resize(len + 1, 0);
            }
            let mut kept = 0usize;
            match &table {
                Some((j, n, tags)) => {
                    let range = (!whole).then_some((from, to));
                    let codes = (*j != usize::MAX).then(|| p.codes[*j]);
                    let (k, bad) = match (codes, range, p.kc) {
                        (Some(_), None, Some(kc)) => {
                            (select_kc(kc, tags, &mut sel, &mut sel_tag), false)
                        }
                        (Some(c), None, _) => {
                            select_all_times(c, p.kind, tags, *n, &mut sel, &mut sel_tag)
                        }
                        _ => select(codes, p.kind, p.ts, tags, *n, range, &mut sel, &mut sel_tag),
                    };
                    kept = k;
                    if bad {
                        bad_code = Some(*j);
                    }
                }
                None => {
                    // A second pass over a few persons' rows (paths after their anchor):
                    // their nodes decide first, before the costlier tag.
                    let candidates: &[u32] = match wanted_nodes {
                        Some(w) => {
                            let k = select_nodes(p.node, w, &mut cand);
                            &cand[..k]
                        }
                        None => {
                            if cand.len() != len {
                                cand.clear();
                                cand.extend(0..len as u32);
                            }
                            &cand[..]
                        }
                    };
                    for &r in candidates {
                        let r = r as usize;
                        let t = p.ts[r];
                        if !whole && !((t >= from) & (t < to)) {
                            continue;
                        }
                        for j in 0..nd {
                            let c = p.codes[j][r];
                            codes[j] = match remap[j].get(c as usize) {
                                Some(&g) => g,
                                None => {
                                    if c != NO_VALUE {
                                        bad_code = Some(j);
                                    }
                                    NO_VALUE
                                }
                            };
                        }
                        let tag = decide(p.kind[r], &codes[..nd]);
                        sel[kept] = r as u32;
                        sel_tag[kept] = tag;
                        kept += usize::from(tag != 0);
                    }
                }
            }
            if !with_codes {
                let first = first_seq + p.start as u32;
                if let Some(node) = gather(
                    &sel[..kept],
                    &sel_tag[..kept],
                    p.node,
                    p.ts,
                    &self.table,
                    persons,
                    first,
                    &mut run,
                ) {
                    bad_node = Some(node);
                }
                return Ok(());
            }
            // Row by row only what decides the person's blocks; then each code column
            // on its own, a tight loop over one input and one output instead of a push
            // into every column per row.
            let first = first_seq + p.start as u32;
            let bad = gather_rows(
                &sel[..kept],
                p.node,
                p.ts,
                p.kind,
                &self.table,
                persons,
                first,
                &mut run,
                &mut kept_rows,
            );
            if bad.is_some() {
                bad_node = bad;
            }
            for (j, (out, remap)) in run.codes.iter_mut().zip(remap).enumerate() {
                if remap_codes(&kept_rows, p.codes[j], remap, out) {
                    bad_code = Some(j);
                }
            }
            Ok(())
        })?;
        if let Some(j) = bad_code {
            return Err(corrupt(format!(
                "code out of range in dim:{}",
                DIMS[self.dims[j]]
            )));
        }
        if let Some(node) = bad_node {
            return Err(corrupt(format!(
                "row names node {node}, unknown to the identity graph"
            )));
        }
        run.ensure_sorted();
        Ok(run)
    }
}

/// The rows of a piece to keep, by a table of tags per (type, code) (`n` codes per type,
/// the last for "no value"), and those rows' tags: written to `sel` and `sel_tag` (each
/// at least one longer than the piece) without a branch on the data; returns how many,
/// and whether a code lay outside the dictionary. A function of its own, so that the
/// compiler sees slices that cannot alias and keeps the loop in registers.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn select(
    codes: Option<&[u32]>,
    kinds: &[u8],
    ts: &[Millis],
    tags: &[u64],
    n: usize,
    range: Option<(Millis, Millis)>,
    sel: &mut [u32],
    sel_tag: &mut [u64],
) -> (usize, bool) {
    let last = n - 1;
    let (from, to) = range.unwrap_or((Millis::MIN, Millis::MAX));
    let mut kept = 0usize;
    let mut bad = false;
    match codes {
        Some(codes) => {
            for (r, ((&c, &kind), &t)) in codes.iter().zip(kinds).zip(ts).enumerate() {
                // No value and (damaged) codes past the dictionary both land on the last
                // slot; the damaged ones fail the query.
                bad |= (c != NO_VALUE) & (c as usize >= last);
                let tag = tags[(kind & 7) as usize * n + (c as usize).min(last)];
                let keep = (tag != 0) & (t >= from) & (t < to);
                sel[kept] = r as u32;
                sel_tag[kept] = tag;
                kept += usize::from(keep);
            }
        }
        None => {
            for (r, (&kind, &t)) in kinds.iter().zip(ts).enumerate() {
                let tag = tags[(kind & 7) as usize * n];
                let keep = (tag != 0) & (t >= from) & (t < to);
                sel[kept] = r as u32;
                sel_tag[kept] = tag;
                kept += usize::from(keep);
            }
        }
    }
    (kept, bad)
}

/// The rows of a piece whose node is in `wanted`, into `out` (resized to hold them all).
#[inline(never)]
fn select_nodes(node: &[u32], wanted: &Bitmap, out: &mut Vec<u32>) -> usize {
    if out.len() < node.len() + 1 {
        out.resize(node.len() + 1, 0);
    }
    let mut kept = 0usize;
    for (r, &n) in node.iter().enumerate() {
        out[kept] = r as u32;
        kept += usize::from(wanted.contains(n));
    }
    kept
}

/// [`select`] over a cached kind-and-code column ([`Piece::kc`]), for a piece wholly in
/// the time range: one two-byte load and one table lookup per row.
#[inline(never)]
fn select_kc(kc: &[u16], tags: &[u64], sel: &mut [u32], sel_tag: &mut [u64]) -> usize {
    let mut kept = 0usize;
    for (r, &k) in kc.iter().enumerate() {
        let tag = tags[k as usize];
        sel[kept] = r as u32;
        sel_tag[kept] = tag;
        kept += usize::from(tag != 0);
    }
    kept
}

/// [`select`] for a piece that lies wholly in the time range: the time column is not
/// read here at all.
#[inline(never)]
fn select_all_times(
    codes: &[u32],
    kinds: &[u8],
    tags: &[u64],
    n: usize,
    sel: &mut [u32],
    sel_tag: &mut [u64],
) -> (usize, bool) {
    let last = n - 1;
    let mut kept = 0usize;
    let mut bad = false;
    for (r, (&c, &kind)) in codes.iter().zip(kinds).enumerate() {
        bad |= (c != NO_VALUE) & (c as usize >= last);
        let tag = tags[(kind & 7) as usize * n + (c as usize).min(last)];
        sel[kept] = r as u32;
        sel_tag[kept] = tag;
        kept += usize::from(tag != 0);
    }
    (kept, bad)
}

/// Appends the selected rows (indexes into the piece, with their tags) to a tag run:
/// each row's person from the node table, kept when `persons` wants it. Returns a node
/// the table does not know, if one was met (the row is skipped). A function of its own
/// for the same reason as [`select`].
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn gather(
    sel: &[u32],
    tags: &[u64],
    node: &[u32],
    ts: &[Millis],
    table: &[u32],
    persons: Option<&Bitmap>,
    first_seq: u32,
    run: &mut Run,
) -> Option<u32> {
    let mut bad = None;
    for (&r, &tag) in sel.iter().zip(tags) {
        let r = r as usize;
        let n = node[r];
        let Some(&person) = table.get(n as usize) else {
            bad = Some(n);
            continue;
        };
        if persons.is_some_and(|b| !b.contains(person)) {
            continue;
        }
        run.push_tag(person, ts[r], first_seq + r as u32, tag);
    }
    bad
}

/// Appends the selected rows' person, time, arrival number and type to a run with codes,
/// and writes the rows it kept to `kept` (their codes follow through [`remap_codes`]);
/// returns a node the table does not know, if one was met.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn gather_rows(
    sel: &[u32],
    node: &[u32],
    ts: &[Millis],
    kind: &[u8],
    table: &[u32],
    persons: Option<&Bitmap>,
    first_seq: u32,
    run: &mut Run,
    kept: &mut Vec<u32>,
) -> Option<u32> {
    kept.clear();
    let mut bad = None;
    for &r in sel {
        let i = r as usize;
        let n = node[i];
        let Some(&person) = table.get(n as usize) else {
            bad = Some(n);
            continue;
        };
        if persons.is_some_and(|b| !b.contains(person)) {
            continue;
        }
        run.note_person(person, ts[i]);
        run.ts.push(ts[i]);
        run.seq.push(first_seq + r);
        run.kind.push(kind[i]);
        kept.push(r);
    }
    bad
}

/// Appends the global codes of the kept rows of one dimension (`remap`: local code ->
/// global); returns whether a code lay outside the dictionary (it reads as no value).
#[inline(never)]
fn remap_codes(kept: &[u32], local: &[u32], remap: &[u32], out: &mut Vec<u32>) -> bool {
    let mut bad = false;
    out.extend(kept.iter().map(|&r| {
        let c = local[r as usize];
        match remap.get(c as usize) {
            Some(&g) => g,
            None => {
                bad |= c != NO_VALUE;
                NO_VALUE
            }
        }
    }));
    bad
}

/// One piece of a segment's columns: rows `start..start + ts.len()`.
struct Piece<'c> {
    start: usize,
    node: &'c [u32],
    ts: &'c [Millis],
    kind: &'c [u8],
    codes: &'c [&'c [u32]],
    /// With the cache, for the one dimension a filter reads: `(type & 7) * n + code`
    /// per row (`n`: the segment's dictionary size plus one, the last code meaning no
    /// value), so a tag table is indexed by one 2-byte load per row.
    kc: Option<&'c [u16]>,
}

/// Calls `f` with the segment's rows in pieces: slices of the cached columns, or pieces
/// streamed from the file, in which case an error is returned after the last
/// piece unless every column's checksum matched, so callers discard what they computed.
fn for_each_piece(
    seg: &Arc<Segment>,
    dims: &[usize],
    kc_dim: Option<usize>,
    cache: Option<&ColumnCache>,
    mut f: impl FnMut(&Piece) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let rows = seg.rows();
    let bad_length = |name: &str| StoreError::Corrupt {
        file: seg.path.clone(),
        why: format!("column {name:?} does not hold one value per row"),
    };
    let dim_names: Vec<String> = dims.iter().map(|&d| format!("dim:{}", DIMS[d])).collect();
    if let Some(c) = cache {
        let node = c.u32s(seg, "node")?;
        let ts = c.i64s(seg, "ts")?;
        let kind = c.u8s(seg, "type")?;
        let codes = dim_names
            .iter()
            .map(|n| c.u32s(seg, n))
            .collect::<Result<Vec<_>, _>>()?;
        for (name, len) in [("node", node.len()), ("ts", ts.len()), ("type", kind.len())]
            .into_iter()
            .chain(
                dim_names
                    .iter()
                    .map(String::as_str)
                    .zip(codes.iter().map(|c| c.len())),
            )
        {
            if len != rows {
                return Err(bad_length(name));
            }
        }
        let kc = match kc_dim {
            Some(j) => kind_codes(c, seg, dims[j], &kind, &codes[j])?,
            None => None,
        };
        // Pieces of the cached columns too, so that a piece's working set stays in cache.
        let mut start = 0;
        while start < rows {
            let end = (start + CACHED_PIECE_ROWS).min(rows);
            let slices: Vec<&[u32]> = codes.iter().map(|c| &c[start..end]).collect();
            f(&Piece {
                start,
                node: &node[start..end],
                ts: &ts[start..end],
                kind: &kind[start..end],
                codes: &slices,
                kc: kc.as_ref().map(|k| &k[start..end]),
            })?;
            start = end;
        }
        return Ok(());
    }
    let mut node_r = seg.column_reader::<u32>("node")?;
    let mut ts_r = seg.column_reader::<i64>("ts")?;
    let mut kind_r = seg.column_reader::<u8>("type")?;
    let mut code_r = dim_names
        .iter()
        .map(|n| seg.column_reader::<u32>(n))
        .collect::<Result<Vec<_>, _>>()?;
    let (mut node, mut ts, mut kind) = (Vec::new(), Vec::new(), Vec::new());
    let mut codes: Vec<Vec<u32>> = vec![Vec::new(); dims.len()];
    let mut start = 0;
    while start < rows {
        node_r.read(&mut node, PIECE_ROWS)?;
        ts_r.read(&mut ts, PIECE_ROWS)?;
        kind_r.read(&mut kind, PIECE_ROWS)?;
        for (r, c) in code_r.iter_mut().zip(codes.iter_mut()) {
            r.read(c, PIECE_ROWS)?;
        }
        let slices: Vec<&[u32]> = codes.iter().map(Vec::as_slice).collect();
        f(&Piece {
            start,
            node: &node,
            ts: &ts,
            kind: &kind,
            codes: &slices,
            kc: None,
        })?;
        start += node.len();
    }
    node_r.finish()?;
    ts_r.finish()?;
    kind_r.finish()?;
    for r in code_r {
        r.finish()?;
    }
    Ok(())
}

/// The cached kind-and-code column of dimension `dim` (see [`Piece::kc`]), when its
/// dictionary is small enough for two bytes; built once per segment from verified columns.
fn kind_codes(
    cache: &ColumnCache,
    seg: &Arc<Segment>,
    dim: usize,
    kind: &[u8],
    codes: &[u32],
) -> Result<Option<Arc<Vec<u16>>>, StoreError> {
    let n = cache.dict(seg, DIMS[dim])?.len() + 1;
    if 8 * n > u16::MAX as usize + 1 {
        return Ok(None);
    }
    let name = format!("kind+dim:{}", DIMS[dim]);
    cache
        .derived_u16(seg, &name, |s| {
            let mut out = Vec::with_capacity(codes.len());
            for (&k, &c) in kind.iter().zip(codes) {
                if c != NO_VALUE && c as usize >= n - 1 {
                    return Err(StoreError::Corrupt {
                        file: s.path.clone(),
                        why: format!("code out of range in dim:{}", DIMS[dim]),
                    });
                }
                out.push(((k & 7) as usize * n + (c as usize).min(n - 1)) as u16);
            }
            Ok(out)
        })
        .map(Some)
}

/// The rows one source contributes, in (person, ts, seq) order: the type and global codes
/// for [`load`], or the tag for [`Scan`]. Persons are stored once per block of rows, not
/// once per row.
struct Run {
    with_codes: bool,
    /// (person, end row) of each block of one person's rows, in row order.
    blocks: Vec<(u32, u32)>,
    /// Whether rows arrived in (person, ts, seq) order so far (persons merged since a
    /// segment was written break it; then [`Run::ensure_sorted`] sorts).
    sorted: bool,
    ts: Vec<Millis>,
    seq: Vec<u32>,
    kind: Vec<u8>,
    codes: Vec<Vec<u32>>,
    tag: Vec<u64>,
}

impl Run {
    /// `rows` bounds what the run can hold: reserving it up front costs address space
    /// only (untouched pages are never backed) and saves copying while the run grows.
    fn new(dims: usize, with_codes: bool, rows: usize) -> Run {
        Run {
            with_codes,
            blocks: Vec::new(),
            sorted: true,
            ts: Vec::with_capacity(rows),
            seq: Vec::with_capacity(rows),
            kind: if with_codes {
                Vec::with_capacity(rows)
            } else {
                Vec::new()
            },
            codes: (0..if with_codes { dims } else { 0 })
                .map(|_| Vec::with_capacity(rows))
                .collect(),
            tag: if with_codes {
                Vec::new()
            } else {
                Vec::with_capacity(rows)
            },
        }
    }

    fn rows(&self) -> usize {
        self.ts.len()
    }

    fn capacity_bytes(&self) -> usize {
        self.blocks.capacity() * 8
            + self.ts.capacity() * 8
            + self.seq.capacity() * 4
            + self.kind.capacity()
            + self.codes.iter().map(|c| c.capacity() * 4).sum::<usize>()
            + self.tag.capacity() * 8
    }

    fn clear(&mut self) {
        self.blocks.clear();
        self.sorted = true;
        self.ts.clear();
        self.seq.clear();
        self.kind.clear();
        for c in &mut self.codes {
            c.clear();
        }
        self.tag.clear();
    }

    /// Room for `rows` rows in the columns this run keeps.
    fn reserve(&mut self, rows: usize) {
        self.ts.reserve(rows);
        self.seq.reserve(rows);
        if self.with_codes {
            self.kind.reserve(rows);
            for c in &mut self.codes {
                c.reserve(rows);
            }
        } else {
            self.tag.reserve(rows);
        }
    }

    /// Opens or extends the person's block for the row about to be pushed, noting when
    /// the order breaks. Rows of one source come in arrival order, so within a person
    /// only time can go backwards.
    #[inline]
    fn note_person(&mut self, person: u32, ts: Millis) {
        let row = self.ts.len() as u32;
        match self.blocks.last_mut() {
            Some((p, end)) if *p == person => {
                if self.ts.last().is_some_and(|&t| t > ts) {
                    self.sorted = false;
                }
                *end = row + 1;
            }
            last => {
                if last.is_some_and(|(p, _)| *p > person) {
                    self.sorted = false;
                }
                self.blocks.push((person, row + 1));
            }
        }
    }

    #[inline]
    fn push_tag(&mut self, person: u32, ts: Millis, seq: u32, tag: u64) {
        self.note_person(person, ts);
        self.ts.push(ts);
        self.seq.push(seq);
        self.tag.push(tag);
    }

    #[inline]
    fn push(&mut self, person: u32, ts: Millis, seq: u32, tag: u64, kind: u8, codes: &[u32]) {
        if !self.with_codes {
            return self.push_tag(person, ts, seq, tag);
        }
        self.note_person(person, ts);
        self.ts.push(ts);
        self.seq.push(seq);
        self.kind.push(kind);
        for (c, &v) in self.codes.iter_mut().zip(codes) {
            c.push(v);
        }
    }

    /// Sorts the rows by (person, ts, seq) when they did not arrive so (a person merged
    /// since the segment was written), merging each person's blocks into one.
    fn ensure_sorted(&mut self) {
        if self.sorted {
            return;
        }
        let mut person = Vec::with_capacity(self.rows());
        let mut start = 0;
        for &(p, end) in &self.blocks {
            person.extend(std::iter::repeat_n(p, end as usize - start));
            start = end as usize;
        }
        let mut order: Vec<u32> = (0..self.rows() as u32).collect();
        order.sort_unstable_by_key(|&i| {
            let i = i as usize;
            (person[i], self.ts[i], self.seq[i])
        });
        fn gather<T: Copy>(v: &mut Vec<T>, order: &[u32]) {
            if !v.is_empty() {
                *v = order.iter().map(|&i| v[i as usize]).collect();
            }
        }
        gather(&mut person, &order);
        gather(&mut self.ts, &order);
        gather(&mut self.seq, &order);
        gather(&mut self.kind, &order);
        gather(&mut self.tag, &order);
        for c in &mut self.codes {
            gather(c, &order);
        }
        self.blocks.clear();
        for (i, &p) in person.iter().enumerate() {
            match self.blocks.last_mut() {
                Some((q, end)) if *q == p => *end = i as u32 + 1,
                _ => self.blocks.push((p, i as u32 + 1)),
            }
        }
        self.sorted = true;
    }
}

/// Memory of finished scans, kept for the next query while a column cache is on (a
/// server): fresh memory costs the kernel zeroing every page of it on each query, which
/// was a fifth of a funnel's time. Bounded by `POOL_BYTES_MAX` of capacity.
static POOL: std::sync::Mutex<Pool> = std::sync::Mutex::new(Pool {
    runs: Vec::new(),
    tables: Vec::new(),
});
const POOL_BYTES_MAX: usize = 512 << 20;

struct Pool {
    runs: Vec<Run>,
    tables: Vec<Vec<u32>>,
}

impl Pool {
    fn bytes(&self) -> usize {
        self.runs.iter().map(Run::capacity_bytes).sum::<usize>()
            + self.tables.iter().map(|t| t.capacity() * 4).sum::<usize>()
    }
}

/// Whether finished scans keep their memory for the next: only in a process that
/// answers many queries (one that turned the column cache on).
fn pooling() -> bool {
    cache::global().is_some()
}

/// A run able to hold `rows` rows, from the pool when one is there.
fn take_run(dims: usize, with_codes: bool, rows: usize) -> Run {
    if pooling() {
        let mut pool = POOL.lock().expect("pool lock");
        if let Some(i) = pool.runs.iter().position(|r| {
            r.with_codes == with_codes && r.codes.len() == if with_codes { dims } else { 0 }
        }) {
            let mut run = pool.runs.swap_remove(i);
            drop(pool);
            run.reserve(rows);
            return run;
        }
    }
    Run::new(dims, with_codes, rows)
}

/// Gives the runs' memory back to the pool (emptied), as far as the bound allows.
fn recycle(runs: Vec<Run>) {
    if !pooling() {
        return;
    }
    let mut pool = POOL.lock().expect("pool lock");
    for mut run in runs {
        run.clear();
        if pool.bytes() + run.capacity_bytes() <= POOL_BYTES_MAX {
            pool.runs.push(run);
        }
    }
}

/// The node-to-person table of the snapshot, in pooled memory when pooling.
fn person_table(snap: &Snapshot) -> Vec<u32> {
    let identity = snap.identity();
    let mut table = if pooling() {
        POOL.lock()
            .expect("pool lock")
            .tables
            .pop()
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    table.clear();
    table.extend((0..identity.node_count() as u32).map(|n| identity.person_of(n)));
    table
}

fn recycle_table(table: Vec<u32>) {
    if pooling() {
        let mut pool = POOL.lock().expect("pool lock");
        if pool.bytes() + table.capacity() * 4 <= POOL_BYTES_MAX {
            pool.tables.push(table);
        }
    }
}

/// A set of person ids as bits.
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn of(set: &HashSet<u32>) -> Bitmap {
        let max = set.iter().copied().max().map_or(0, |m| m as usize + 1);
        let mut bits = vec![0u64; max.div_ceil(64)];
        for &p in set {
            bits[p as usize / 64] |= 1 << (p % 64);
        }
        Bitmap(bits)
    }

    fn contains(&self, p: u32) -> bool {
        self.0
            .get(p as usize / 64)
            .is_some_and(|w| w & (1 << (p % 64)) != 0)
    }
}

/// `Load::keep` memoized per (type, codes of the dimensions it reads), in global codes.
#[derive(Clone)]
struct KeepMemo<'k> {
    keep: Option<&'k Keep<'k>>,
    dicts: &'k [Vec<String>],
    /// The `DIMS` index of each loaded position: where the filter finds its value.
    dims: &'k [usize],
    /// Positions (into the loaded dimensions) the filter reads.
    reads: &'k [usize],
    /// Per slot: 0 unknown, 1 keep, 2 drop; empty when the combinations are too many.
    memo: Vec<u8>,
    sizes: Vec<usize>,
}

impl<'k> KeepMemo<'k> {
    fn new(
        dicts: &'k Dicts,
        keep: Option<&'k Keep<'k>>,
        dims: &'k [usize],
        reads: &'k [usize],
    ) -> KeepMemo<'k> {
        let sizes: Vec<usize> = reads.iter().map(|&j| dicts.values[j].len() + 1).collect();
        let slots = sizes
            .iter()
            .try_fold(8usize, |acc, &s| acc.checked_mul(s))
            .filter(|&n| n <= KEEP_MEMO_MAX && reads.len() <= 2);
        KeepMemo {
            keep,
            dicts: &dicts.values,
            dims,
            reads,
            memo: slots.map_or(Vec::new(), |n| vec![0; n]),
            sizes,
        }
    }

    fn keep(&mut self, kind: u8, codes: &[u32]) -> bool {
        let Some(keep) = self.keep else { return true };
        let slot = (!self.memo.is_empty()).then(|| {
            self.reads
                .iter()
                .zip(&self.sizes)
                .fold(kind as usize % 8, |acc, (&j, &size)| {
                    acc * size + (codes[j] as usize).min(size - 1)
                })
        });
        if let Some(s) = slot {
            match self.memo[s] {
                1 => return true,
                2 => return false,
                _ => {}
            }
        }
        let mut values: [Option<&str>; DIM_COUNT] = [None; DIM_COUNT];
        for (j, &c) in codes.iter().enumerate() {
            if c != NO_VALUE {
                values[self.dims[j]] = Some(self.dicts[j][c as usize].as_str());
            }
        }
        let k = keep(kind, &values);
        if let Some(s) = slot {
            self.memo[s] = if k { 1 } else { 2 };
        }
        k
    }
}

/// Per-thread buffers for persons whose rows come from several runs.
#[derive(Default)]
struct Scratch {
    order: Vec<(Millis, u32, u32, u32)>,
    ts: Vec<Millis>,
    seq: Vec<u32>,
    tag: Vec<u64>,
}

impl Scratch {
    /// One person's rows: borrowed from the run when one run holds them all, else merged
    /// by (ts, arrival) into the scratch buffers.
    fn person<'r>(
        &'r mut self,
        runs: &'r [Run],
        person: u32,
        pieces: &[(usize, Range<usize>)],
    ) -> PersonRows<'r> {
        if let [(r, range)] = pieces {
            let run = &runs[*r];
            return PersonRows {
                person,
                ts: &run.ts[range.clone()],
                seq: &run.seq[range.clone()],
                tag: &run.tag[range.clone()],
            };
        }
        self.order.clear();
        for (r, range) in pieces {
            let run = &runs[*r];
            for i in range.clone() {
                self.order
                    .push((run.ts[i], run.seq[i], *r as u32, i as u32));
            }
        }
        self.order.sort_unstable();
        self.ts.clear();
        self.seq.clear();
        self.tag.clear();
        for &(t, s, r, i) in &self.order {
            self.ts.push(t);
            self.seq.push(s);
            self.tag.push(runs[r as usize].tag[i as usize]);
        }
        PersonRows {
            person,
            ts: &self.ts,
            seq: &self.seq,
            tag: &self.tag,
        }
    }
}

/// Person-id ranges `[lo, hi)` covering every run, about equal in rows, one per thread.
fn split_persons(runs: &[Run], parts: usize) -> Vec<Range<u64>> {
    let total: usize = runs.iter().map(Run::rows).sum();
    if parts <= 1 || total < 4096 {
        return std::iter::once(0..u64::MAX).collect();
    }
    // A person every `step` rows of every run: a sample in proportion to rows.
    let step = (total / 4096).max(1);
    let mut sample: Vec<u32> = Vec::new();
    for run in runs {
        let mut next = 0usize;
        for &(p, end) in &run.blocks {
            while next < end as usize {
                sample.push(p);
                next += step;
            }
        }
    }
    sample.sort_unstable();
    let mut bounds = vec![0u64];
    for k in 1..parts {
        let b = sample[k * sample.len() / parts] as u64;
        if b > *bounds.last().expect("a bound") {
            bounds.push(b);
        }
    }
    bounds.push(u64::MAX);
    bounds.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Calls `visit(person, pieces)` for every person in `range`, in person order, with the
/// row range of each run that holds the person's rows.
fn for_each_person(
    runs: &[Run],
    range: &Range<u64>,
    mut visit: impl FnMut(u32, &[(usize, Range<usize>)]),
) {
    // Per run: the next block, and the block bound of the range.
    let mut pos: Vec<usize> = runs
        .iter()
        .map(|r| r.blocks.partition_point(|&(p, _)| (p as u64) < range.start))
        .collect();
    let ends: Vec<usize> = runs
        .iter()
        .map(|r| r.blocks.partition_point(|&(p, _)| (p as u64) < range.end))
        .collect();
    let start_of = |r: &Run, b: usize| {
        if b == 0 {
            0
        } else {
            r.blocks[b - 1].1 as usize
        }
    };
    let mut pieces: Vec<(usize, Range<usize>)> = Vec::with_capacity(runs.len());
    if runs.len() == 1 {
        let run = &runs[0];
        for b in pos[0]..ends[0] {
            let (p, end) = run.blocks[b];
            pieces.clear();
            pieces.push((0, start_of(run, b)..end as usize));
            visit(p, &pieces);
        }
        return;
    }
    loop {
        let mut next: Option<u32> = None;
        for (r, run) in runs.iter().enumerate() {
            if pos[r] < ends[r] {
                let p = run.blocks[pos[r]].0;
                next = Some(next.map_or(p, |n| n.min(p)));
            }
        }
        let Some(person) = next else { return };
        pieces.clear();
        for (r, run) in runs.iter().enumerate() {
            if pos[r] < ends[r] && run.blocks[pos[r]].0 == person {
                let b = pos[r];
                pieces.push((r, start_of(run, b)..run.blocks[b].1 as usize));
                pos[r] += 1;
            }
        }
        visit(person, &pieces);
    }
}

/// The merged table of [`load`]: every run's rows in (person, ts, arrival) order.
fn merge_rows(runs: &[Run], dims: &[usize], dicts: Dicts) -> Rows {
    merge_rows_in(runs, dims, dicts, split_persons(runs, threads()))
}

/// [`merge_rows`] with the ranges of persons given, one thread each.
fn merge_rows_in(runs: &[Run], dims: &[usize], dicts: Dicts, ranges: Vec<Range<u64>>) -> Rows {
    let total: usize = runs.iter().map(Run::rows).sum();
    let nd = dims.len();
    let mut person = vec![0u32; total];
    let mut ts = vec![0 as Millis; total];
    let mut seq = vec![0u32; total];
    let mut kind = vec![0u8; total];
    let mut codes: Vec<Vec<u32>> = (0..nd).map(|_| vec![0u32; total]).collect();
    // Each range of persons fills its own stretch of the table.
    let sizes: Vec<usize> = ranges.iter().map(|r| rows_in(runs, r)).collect();
    let mut chunks: Vec<Chunk> = Vec::with_capacity(ranges.len());
    {
        let (mut p, mut t, mut q, mut k) =
            (&mut person[..], &mut ts[..], &mut seq[..], &mut kind[..]);
        let mut c: Vec<&mut [u32]> = codes.iter_mut().map(|c| &mut c[..]).collect();
        for &n in &sizes {
            let (p0, p1) = std::mem::take(&mut p).split_at_mut(n);
            let (t0, t1) = std::mem::take(&mut t).split_at_mut(n);
            let (q0, q1) = std::mem::take(&mut q).split_at_mut(n);
            let (k0, k1) = std::mem::take(&mut k).split_at_mut(n);
            let mut cs = Vec::with_capacity(nd);
            for col in c.iter_mut() {
                let (c0, c1) = std::mem::take(col).split_at_mut(n);
                cs.push(c0);
                *col = c1;
            }
            chunks.push(Chunk {
                person: p0,
                ts: t0,
                seq: q0,
                kind: k0,
                codes: cs,
            });
            (p, t, q, k) = (p1, t1, q1, k1);
        }
    }
    if chunks.len() == 1 {
        fill(runs, &ranges[0], &mut chunks[0]);
    } else {
        std::thread::scope(|s| {
            for (range, chunk) in ranges.iter().zip(chunks.iter_mut()) {
                s.spawn(move || fill(runs, range, chunk));
            }
        });
    }
    let mut out = Rows {
        person,
        ts,
        seq,
        kind,
        dims: (0..DIM_COUNT).map(|_| None).collect(),
    };
    for ((&d, codes), dict) in dims.iter().zip(codes).zip(dicts.values) {
        out.dims[d] = Some(Column { codes, dict });
    }
    out
}

/// The rows the runs hold of persons in `range`.
fn rows_in(runs: &[Run], range: &Range<u64>) -> usize {
    runs.iter()
        .map(|r| {
            let at = |bound: u64| {
                let b = r.blocks.partition_point(|&(p, _)| (p as u64) < bound);
                if b == 0 {
                    0
                } else {
                    r.blocks[b - 1].1 as usize
                }
            };
            at(range.end) - at(range.start)
        })
        .sum()
}

/// One stretch of the merged table: the rows of one range of persons.
struct Chunk<'o> {
    person: &'o mut [u32],
    ts: &'o mut [Millis],
    seq: &'o mut [u32],
    kind: &'o mut [u8],
    codes: Vec<&'o mut [u32]>,
}

/// Fills `out` with the rows of the persons in `range`, column by column per person: a
/// copy of a slice when one run holds the person's rows, else a gather in (ts, arrival)
/// order.
fn fill(runs: &[Run], range: &Range<u64>, out: &mut Chunk) {
    let mut at = 0usize;
    let mut order: Vec<(Millis, u32, u32, u32)> = Vec::new();
    for_each_person(runs, range, |person, pieces| {
        if let [(r, range)] = pieces {
            let run = &runs[*r];
            let end = at + range.len();
            out.person[at..end].fill(person);
            out.ts[at..end].copy_from_slice(&run.ts[range.clone()]);
            out.seq[at..end].copy_from_slice(&run.seq[range.clone()]);
            out.kind[at..end].copy_from_slice(&run.kind[range.clone()]);
            for (o, c) in out.codes.iter_mut().zip(&run.codes) {
                o[at..end].copy_from_slice(&c[range.clone()]);
            }
            at = end;
            return;
        }
        order.clear();
        for (r, range) in pieces {
            let run = &runs[*r];
            order.extend(
                range
                    .clone()
                    .map(|i| (run.ts[i], run.seq[i], *r as u32, i as u32)),
            );
        }
        order.sort_unstable();
        let end = at + order.len();
        out.person[at..end].fill(person);
        for (o, &(t, _, _, _)) in out.ts[at..end].iter_mut().zip(&order) {
            *o = t;
        }
        for (o, &(_, q, _, _)) in out.seq[at..end].iter_mut().zip(&order) {
            *o = q;
        }
        for (o, &(_, _, r, i)) in out.kind[at..end].iter_mut().zip(&order) {
            *o = runs[r as usize].kind[i as usize];
        }
        for (j, col) in out.codes.iter_mut().enumerate() {
            for (o, &(_, _, r, i)) in col[at..end].iter_mut().zip(&order) {
                *o = runs[r as usize].codes[j][i as usize];
            }
        }
        at = end;
    });
    debug_assert_eq!(at, out.ts.len(), "a range's rows fill its stretch");
}

#[cfg(test)]
pub(crate) mod tests;
