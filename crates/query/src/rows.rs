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
pub struct Load<'a> {
    pub from: Option<Millis>,
    pub to: Option<Millis>,
    pub dims: Vec<usize>,
    #[allow(clippy::type_complexity)]
    pub keep: Option<Box<dyn Fn(u8, &[Option<&str>; DIM_COUNT]) -> bool + 'a>>,
}

struct Builder {
    dims: Vec<usize>,
    global: Vec<HashMap<String, u32>>,
    out: Rows,
    seq: Vec<u32>,
}

impl Builder {
    fn intern(&mut self, d: usize, value: Option<&str>) -> u32 {
        let Some(v) = value else { return NO_VALUE };
        let map = &mut self.global[d];
        if let Some(&c) = map.get(v) {
            return c;
        }
        let col = self.out.dims[d].as_mut().expect("dimension loaded");
        let c = col.dict.len() as u32;
        col.dict.push(v.to_string());
        map.insert(v.to_string(), c);
        c
    }
}

pub fn load(snap: &Snapshot, req: &Load) -> Result<Rows, StoreError> {
    let table = snap.identity().person_table();
    let mut b = Builder {
        dims: req.dims.clone(),
        global: vec![HashMap::new(); DIM_COUNT],
        out: Rows {
            dims: (0..DIM_COUNT)
                .map(|d| req.dims.contains(&d).then(Column::default))
                .collect(),
            ..Rows::default()
        },
        seq: Vec::new(),
    };
    let in_range = |t: Millis| req.from.is_none_or(|f| t >= f) && req.to.is_none_or(|e| t < e);
    let mut arrival = 0u32;
    for seg in snap.segments() {
        let (lo, hi) = seg.time_range();
        if req.from.is_some_and(|f| hi < f) || req.to.is_some_and(|e| lo >= e) {
            arrival += seg.rows() as u32;
            continue;
        }
        let nodes = seg.read_column::<u32>("node")?;
        let ts = seg.read_column::<i64>("ts")?;
        let kinds = seg.read_column::<u8>("type")?;
        let mut local: Vec<Option<(Vec<u32>, Vec<String>, Vec<u32>)>> =
            (0..DIM_COUNT).map(|_| None).collect();
        for &d in &b.dims.clone() {
            let (codes, dict) = seg.dim(DIMS[d])?;
            // Local code -> table code, decided once per dictionary entry, not per row.
            let remap: Vec<u32> = dict.iter().map(|v| b.intern(d, Some(v))).collect();
            local[d] = Some((codes, dict, remap));
        }
        for i in 0..seg.rows() {
            let seq = arrival + i as u32;
            if !in_range(ts[i]) {
                continue;
            }
            let values: [Option<&str>; DIM_COUNT] = std::array::from_fn(|d| {
                local[d].as_ref().and_then(|(codes, dict, _)| {
                    (codes[i] != NO_VALUE).then(|| dict[codes[i] as usize].as_str())
                })
            });
            if req.keep.as_ref().is_some_and(|k| !k(kinds[i], &values)) {
                continue;
            }
            b.out.person.push(table[nodes[i] as usize]);
            b.out.ts.push(ts[i]);
            b.out.kind.push(kinds[i]);
            b.seq.push(seq);
            for &d in &b.dims {
                let (codes, _, remap) = local[d].as_ref().expect("loaded");
                let c = codes[i];
                let col = b.out.dims[d].as_mut().expect("dimension loaded");
                col.codes.push(if c == NO_VALUE {
                    NO_VALUE
                } else {
                    remap[c as usize]
                });
            }
        }
        arrival += seg.rows() as u32;
    }
    for row in snap.log_rows() {
        let seq = arrival;
        arrival += 1;
        if !in_range(row.ts) {
            continue;
        }
        let values: [Option<&str>; DIM_COUNT] = std::array::from_fn(|d| {
            if b.dims.contains(&d) {
                row.dims[d].as_deref()
            } else {
                None
            }
        });
        if req.keep.as_ref().is_some_and(|k| !k(row.kind, &values)) {
            continue;
        }
        b.out.person.push(table[row.node as usize]);
        b.out.ts.push(row.ts);
        b.out.kind.push(row.kind);
        b.seq.push(seq);
        for d in b.dims.clone() {
            let c = b.intern(d, row.dims[d].as_deref());
            b.out.dims[d]
                .as_mut()
                .expect("dimension loaded")
                .codes
                .push(c);
        }
    }
    Ok(sort(b.out, &b.seq))
}

/// Orders rows by (person, timestamp, arrival) with one permutation applied to every column.
fn sort(rows: Rows, seq: &[u32]) -> Rows {
    let mut order: Vec<u32> = (0..rows.len() as u32).collect();
    order.sort_unstable_by_key(|&i| {
        let i = i as usize;
        (rows.person[i], rows.ts[i], seq[i])
    });
    let gather = |v: &[u32]| order.iter().map(|&i| v[i as usize]).collect::<Vec<u32>>();
    Rows {
        person: gather(&rows.person),
        ts: order.iter().map(|&i| rows.ts[i as usize]).collect(),
        kind: order.iter().map(|&i| rows.kind[i as usize]).collect(),
        dims: rows
            .dims
            .iter()
            .map(|c| {
                c.as_ref().map(|c| Column {
                    codes: gather(&c.codes),
                    dict: c.dict.clone(),
                })
            })
            .collect(),
    }
}
