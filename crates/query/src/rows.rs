//! Loading: the columns a query needs, from every segment and the log, as one table
//! sorted by (person, timestamp, arrival).

use std::collections::HashMap;
use std::ops::Range;

use throughline_model::{Millis, DIMS, DIM_COUNT};
use throughline_store::{Snapshot, StoreError, NO_VALUE};

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

    /// The row range of each person, in person order.
    pub fn persons(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let mut start = 0;
        std::iter::from_fn(move || {
            if start >= self.person.len() {
                return None;
            }
            let p = self.person[start];
            let end = start
                + self.person[start..]
                    .iter()
                    .position(|&q| q != p)
                    .unwrap_or(self.person.len() - start);
            let r = start..end;
            start = end;
            Some(r)
        })
    }
}

/// What to load: a time range `[from, to)`, the dimensions (indexes into `DIMS`), and an
/// optional row filter seeing the event type and the requested dimensions' values.
#[derive(Default)]
pub struct Load<'a> {
    pub from: Option<Millis>,
    pub to: Option<Millis>,
    pub dims: Vec<usize>,
    #[allow(clippy::type_complexity)]
    pub keep: Option<Box<dyn Fn(u8, &[Option<&str>; DIM_COUNT]) -> bool + Send + Sync + 'a>>,
    /// Only these persons' rows, when given (a second pass after a first found them).
    pub persons: Option<&'a std::collections::HashSet<u32>>,
}

/// The rows one source (a segment, or the log) contributes, in (person, ts, seq) order,
/// with dimension codes into the source's own dictionaries.
struct Run {
    person: Vec<u32>,
    ts: Vec<Millis>,
    seq: Vec<u32>,
    kind: Vec<u8>,
    codes: Vec<Vec<u32>>,
    dicts: Vec<Vec<String>>,
}

impl Run {
    fn new(dims: usize) -> Run {
        Run {
            person: Vec::new(),
            ts: Vec::new(),
            seq: Vec::new(),
            kind: Vec::new(),
            codes: vec![Vec::new(); dims],
            dicts: vec![Vec::new(); dims],
        }
    }

    fn key(&self, i: usize) -> (u32, Millis, u32) {
        (self.person[i], self.ts[i], self.seq[i])
    }

    /// Segments are written sorted by (person, ts); a person merged since then breaks that
    /// order, and only then is the run sorted again.
    fn ensure_sorted(&mut self) {
        if (1..self.ts.len()).all(|i| self.key(i - 1) <= self.key(i)) {
            return;
        }
        let mut order: Vec<u32> = (0..self.ts.len() as u32).collect();
        order.sort_unstable_by_key(|&i| self.key(i as usize));
        let g32 = |v: &[u32]| order.iter().map(|&i| v[i as usize]).collect::<Vec<u32>>();
        self.person = g32(&self.person);
        self.seq = g32(&self.seq);
        self.ts = order.iter().map(|&i| self.ts[i as usize]).collect();
        self.kind = order.iter().map(|&i| self.kind[i as usize]).collect();
        for c in &mut self.codes {
            *c = g32(c);
        }
    }
}

/// Loads the rows in range that pass the filter, sorted by (person, ts, arrival).
///
/// Each segment is read and filtered on its own (two at a time: this machine class has
/// two cores), giving runs already in order because segments are written sorted by
/// person; the runs are then merged, so no query sorts the whole table.
pub fn load(snap: &Snapshot, req: &Load) -> Result<Rows, StoreError> {
    let table = snap.identity().person_table();
    let dims = &req.dims;
    let in_range = |t: Millis| req.from.is_none_or(|f| t >= f) && req.to.is_none_or(|e| t < e);
    let mut firsts = Vec::new();
    let mut arrival = 0u32;
    for seg in snap.segments() {
        firsts.push(arrival);
        arrival += seg.rows() as u32;
    }
    let segments = snap.segments();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let mut runs: Vec<(usize, Run)> =
        std::thread::scope(|s| -> Result<Vec<(usize, Run)>, StoreError> {
            let handles: Vec<_> = (0..workers.min(segments.len().max(1)))
                .map(|_| {
                    s.spawn(|| -> Result<Vec<(usize, Run)>, StoreError> {
                        let mut mine = Vec::new();
                        loop {
                            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(seg) = segments.get(k) else {
                                return Ok(mine);
                            };
                            let (lo, hi) = seg.time_range();
                            if req.from.is_some_and(|f| hi < f) || req.to.is_some_and(|e| lo >= e) {
                                continue;
                            }
                            mine.push((
                                k,
                                segment_run(seg, firsts[k], &table, dims, &in_range, req)?,
                            ));
                        }
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.join().expect("loader thread")?);
            }
            Ok(all)
        })?;
    runs.sort_by_key(|(k, _)| *k);
    let mut runs: Vec<Run> = runs.into_iter().map(|(_, r)| r).collect();

    // The log: arrival order, its strings interned into a run-local dictionary.
    let mut log = Run::new(dims.len());
    let mut local: Vec<HashMap<&str, u32>> = vec![HashMap::new(); dims.len()];
    for row in snap.log_rows() {
        let seq = arrival;
        arrival += 1;
        if !in_range(row.ts)
            || req
                .persons
                .is_some_and(|p| !p.contains(&table[row.node as usize]))
        {
            continue;
        }
        let values: [Option<&str>; DIM_COUNT] =
            std::array::from_fn(|d| if dims.contains(&d) { row.dims[d] } else { None });
        if req.keep.as_ref().is_some_and(|k| !k(row.kind, &values)) {
            continue;
        }
        log.person.push(table[row.node as usize]);
        log.ts.push(row.ts);
        log.seq.push(seq);
        log.kind.push(row.kind);
        for (j, &d) in dims.iter().enumerate() {
            let code = match values[d] {
                None => NO_VALUE,
                Some(v) => *local[j].entry(v).or_insert_with(|| {
                    log.dicts[j].push(v.to_string());
                    (log.dicts[j].len() - 1) as u32
                }),
            };
            log.codes[j].push(code);
        }
    }
    log.ensure_sorted();
    runs.push(log);
    Ok(merge(runs, dims))
}

fn segment_run(
    seg: &throughline_store::Segment,
    first_seq: u32,
    table: &[u32],
    dims: &[usize],
    in_range: &(dyn Fn(Millis) -> bool + Sync),
    req: &Load,
) -> Result<Run, StoreError> {
    let nodes = seg.read_column::<u32>("node")?;
    let ts = seg.read_column::<i64>("ts")?;
    let kinds = seg.read_column::<u8>("type")?;
    let mut cols = Vec::with_capacity(dims.len());
    for &d in dims {
        cols.push(seg.dim(DIMS[d])?);
    }
    let mut run = Run::new(dims.len());
    for (j, (_, dict)) in cols.iter().enumerate() {
        run.dicts[j] = dict.clone();
    }
    // The filter sees only the event type and the requested dimensions, so with one or two
    // dimensions its answer is memoized per (type, code, code): strings are compared once
    // per distinct combination, not once per row.
    let sizes: Vec<usize> = cols.iter().map(|(_, dict)| dict.len() + 1).collect();
    let memo_len = sizes.iter().product::<usize>() * 8;
    let mut memo: Vec<u8> = if dims.len() <= 2 && memo_len <= KEEP_MEMO_MAX {
        vec![0; memo_len]
    } else {
        Vec::new()
    };
    for i in 0..seg.rows() {
        if !in_range(ts[i]) {
            continue;
        }
        if req
            .persons
            .is_some_and(|p| !p.contains(&table[nodes[i] as usize]))
        {
            continue;
        }
        if let Some(keep) = &req.keep {
            let slot = (!memo.is_empty()).then(|| {
                cols.iter().zip(&sizes).fold(
                    kinds[i] as usize % 8,
                    |acc, ((codes, dict), &size)| {
                        let c = if codes[i] == NO_VALUE {
                            dict.len()
                        } else {
                            codes[i] as usize
                        };
                        acc * size + c
                    },
                )
            });
            let known = slot.map_or(0, |s| memo[s]);
            let kept = if known != 0 {
                known == 1
            } else {
                let mut values: [Option<&str>; DIM_COUNT] = [None; DIM_COUNT];
                for (j, &d) in dims.iter().enumerate() {
                    let (codes, dict) = &cols[j];
                    values[d] = (codes[i] != NO_VALUE).then(|| dict[codes[i] as usize].as_str());
                }
                let k = keep(kinds[i], &values);
                if let Some(s) = slot {
                    memo[s] = if k { 1 } else { 2 };
                }
                k
            };
            if !kept {
                continue;
            }
        }
        run.person.push(table[nodes[i] as usize]);
        run.ts.push(ts[i]);
        run.seq.push(first_seq + i as u32);
        run.kind.push(kinds[i]);
        for (j, (codes, _)) in cols.iter().enumerate() {
            run.codes[j].push(codes[i]);
        }
    }
    run.ensure_sorted();
    Ok(run)
}

/// Filter answers memoized per segment at most (one byte each).
const KEEP_MEMO_MAX: usize = 1 << 24;

/// Merges sorted runs into one table, translating each run's dictionary codes into one
/// dictionary per dimension.
fn merge(runs: Vec<Run>, dims: &[usize]) -> Rows {
    let total: usize = runs.iter().map(|r| r.ts.len()).sum();
    let mut out = Rows {
        person: Vec::with_capacity(total),
        ts: Vec::with_capacity(total),
        seq: Vec::with_capacity(total),
        kind: Vec::with_capacity(total),
        dims: (0..DIM_COUNT)
            .map(|d| dims.contains(&d).then(Column::default))
            .collect(),
    };
    // Per run and dimension: local code -> table code.
    let mut global: Vec<HashMap<String, u32>> = vec![HashMap::new(); dims.len()];
    let remaps: Vec<Vec<Vec<u32>>> = runs
        .iter()
        .map(|run| {
            dims.iter()
                .enumerate()
                .map(|(j, &d)| {
                    run.dicts[j]
                        .iter()
                        .map(|v| {
                            let col = out.dims[d].as_mut().expect("dimension loaded");
                            *global[j].entry(v.clone()).or_insert_with(|| {
                                col.dict.push(v.clone());
                                (col.dict.len() - 1) as u32
                            })
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    for &d in dims {
        out.dims[d]
            .as_mut()
            .expect("dimension loaded")
            .codes
            .reserve(total);
    }
    let push = |out: &mut Rows, r: usize, i: usize| {
        let run = &runs[r];
        out.person.push(run.person[i]);
        out.ts.push(run.ts[i]);
        out.seq.push(run.seq[i]);
        out.kind.push(run.kind[i]);
        for (j, &d) in dims.iter().enumerate() {
            let c = run.codes[j][i];
            let col = out.dims[d].as_mut().expect("dimension loaded");
            col.codes.push(if c == NO_VALUE {
                NO_VALUE
            } else {
                remaps[r][j][c as usize]
            });
        }
    };
    let live: Vec<usize> = (0..runs.len())
        .filter(|&r| !runs[r].ts.is_empty())
        .collect();
    if live.len() == 1 {
        for i in 0..runs[live[0]].ts.len() {
            push(&mut out, live[0], i);
        }
        return out;
    }
    let mut heap = std::collections::BinaryHeap::new();
    for &r in &live {
        heap.push(std::cmp::Reverse((runs[r].key(0), r, 0usize)));
    }
    while let Some(std::cmp::Reverse((_, r, mut i))) = heap.pop() {
        // Copy from this run for as long as it stays below every other run's next key:
        // a person's rows usually sit together, so most rows skip the heap.
        let bound = heap.peek().map(|std::cmp::Reverse((k, _, _))| *k);
        loop {
            push(&mut out, r, i);
            i += 1;
            if i >= runs[r].ts.len() {
                break;
            }
            let k = runs[r].key(i);
            if bound.is_some_and(|b| k > b) {
                heap.push(std::cmp::Reverse((k, r, i)));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use throughline_model::Event;
    use throughline_store::{EventBatch, ProjectOptions, ProjectStore};

    fn event(i: u64, person: u64, ts: i64) -> Event {
        serde_json::from_value(serde_json::json!({
            "message_id": format!("m{i}"), "type": "track", "event": format!("e{}", i % 3),
            "user_id": format!("u{person}"), "timestamp": ts, "received_at": ts,
        }))
        .unwrap()
    }

    /// Rows from several segments and the log, persons interleaved across all of them,
    /// come out in (person, time, arrival) order with every row once.
    #[test]
    fn runs_from_segments_and_the_log_merge_in_order() {
        let dir = std::env::temp_dir().join(format!("tl-rows-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = ProjectOptions {
            compact_segments_min: 100,
            ..ProjectOptions::default()
        };
        let p = ProjectStore::open("p", &dir, options).unwrap();
        for round in 0..4u64 {
            let batch: Vec<Event> = (0..200u64)
                .map(|k| {
                    let i = round * 1000 + k;
                    // Ties in time within a person, and persons in every round.
                    event(i, k % 17, ((k * 7919) % 50) as i64)
                })
                .collect();
            p.append(EventBatch::of(&batch)).unwrap();
            if round < 3 {
                p.flush().unwrap();
            }
        }
        let snap = p.snapshot();
        assert_eq!(snap.segments().len(), 3);
        let rows = load(
            &snap,
            &Load {
                dims: vec![0],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(rows.len(), 800);
        let keys: Vec<(u32, i64, u32)> = (0..rows.len())
            .map(|i| (rows.person[i], rows.ts[i], rows.seq[i]))
            .collect();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "not in (person, ts, arrival) order"
        );
        let mut seqs: Vec<u32> = rows.seq.clone();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..800).collect::<Vec<u32>>());
        let persons: std::collections::HashSet<u32> = rows.person.iter().copied().collect();
        assert_eq!(persons.len(), 17);
        drop(snap);
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
