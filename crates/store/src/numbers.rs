//! Number columns of a segment: for each top-level event property that holds numbers
//! (`revenue`, `value`, `total`, ...), the rows that have one and the numbers, so a query
//! reading one numeric property of a few events never decodes their payloads.
//!
//! What counts as a number is `throughline_model::top_level_numbers`' rule (the query
//! layer reads decoded properties by the same rule); the store only keeps the results.
//! Per key, two columns: `num_rows:KEY` (ascending `u32` rows) and `num_values:KEY`
//! (`f64`). The footer lists the keys and says whether the list is **complete**: then a
//! key it does not list has no number in any row. Bounded: at most [`NUMBER_KEYS_MAX`]
//! keys of at most [`NUMBER_KEY_BYTES_MAX`] bytes, and about [`NUMBER_ENTRIES_PER_ROW_MAX`]
//! numbers per row in all; past a bound the densest keys are left out and the list is
//! marked incomplete, so readers decode payloads for the keys it lacks. Segments written
//! before number columns existed have no list at all (the same answer: decode).
//!
//! Flushes derive the columns from the records while writing them; compaction merges its
//! inputs' columns when every input has them (no payload is parsed), else derives them.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::{Segment, StoreError};

/// Keys a segment indexes at most.
pub const NUMBER_KEYS_MAX: usize = 64;
/// Longer keys are not indexed.
pub const NUMBER_KEY_BYTES_MAX: usize = 128;
/// Numbers kept per row on average at most (past [`NUMBER_ENTRIES_SLACK`]).
pub const NUMBER_ENTRIES_PER_ROW_MAX: usize = 2;
const NUMBER_ENTRIES_SLACK: usize = 4096;

/// The column names of key `key`: its rows, its values.
pub fn number_column_names(key: &str) -> (String, String) {
    (format!("num_rows:{key}"), format!("num_values:{key}"))
}

/// What a footer says of its number columns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumbersMeta {
    /// Indexed keys, sorted.
    pub keys: Vec<String>,
    /// Every key with a number in some row is listed.
    pub complete: bool,
}

/// One key's numbers: rows ascending, one value each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NumberColumn {
    pub key: String,
    pub rows: Vec<u32>,
    pub values: Vec<f64>,
}

/// The number columns of a segment to write.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Numbers {
    /// Sorted by key.
    pub columns: Vec<NumberColumn>,
    pub complete: bool,
}

/// How [`crate::segment::write`] gets a segment's number columns.
#[derive(Debug, Default)]
pub enum NumberIndex {
    /// From the records as they are written.
    #[default]
    Derive,
    /// Already computed (a merge of its inputs').
    Given(Numbers),
    /// None at all, as segments written before number columns existed.
    Omit,
}

/// Checks one key's columns as read: as many values as rows, rows ascending and inside
/// the segment.
pub fn check_number_column(
    rows: &[u32],
    values: &[f64],
    segment_rows: usize,
) -> Result<(), String> {
    if rows.len() != values.len() {
        return Err(format!(
            "{} number rows for {} values",
            rows.len(),
            values.len()
        ));
    }
    if rows.windows(2).any(|w| w[0] >= w[1]) {
        return Err("number rows not ascending".into());
    }
    if rows.last().is_some_and(|&r| r as usize >= segment_rows) {
        return Err("number row past the segment's rows".into());
    }
    Ok(())
}

enum Slot {
    Live(NumberColumn),
    /// Left out for the budget: its earlier rows are gone, so it never comes back.
    Dropped,
}

/// Derives the number columns from the records of a segment being written, in row order.
pub(crate) struct NumbersBuilder {
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    complete: bool,
    entries: usize,
    entries_max: usize,
    /// A record that could not be scanned: no number list at all.
    failed: bool,
}

impl NumbersBuilder {
    pub(crate) fn new(rows: usize) -> NumbersBuilder {
        NumbersBuilder {
            slots: Vec::new(),
            index: HashMap::new(),
            complete: true,
            entries: 0,
            entries_max: rows
                .saturating_mul(NUMBER_ENTRIES_PER_ROW_MAX)
                .saturating_add(NUMBER_ENTRIES_SLACK),
            failed: false,
        }
    }

    /// Row `row`'s record (rows come in ascending order).
    pub(crate) fn observe(&mut self, row: u32, record: &[u8]) {
        if self.failed {
            return;
        }
        let NumbersBuilder {
            slots,
            index,
            complete,
            entries,
            ..
        } = self;
        let scanned = throughline_model::top_level_numbers(record, &mut |key, value| {
            let slot = match index.get(key) {
                Some(&s) => s,
                None if value.is_none() => return,
                None => {
                    if index.len() >= NUMBER_KEYS_MAX || key.len() > NUMBER_KEY_BYTES_MAX {
                        *complete = false;
                        return;
                    }
                    slots.push(Slot::Live(NumberColumn {
                        key: key.to_string(),
                        ..NumberColumn::default()
                    }));
                    index.insert(key.to_string(), slots.len() - 1);
                    slots.len() - 1
                }
            };
            let Slot::Live(c) = &mut slots[slot] else {
                return;
            };
            // A key given twice in one record: the later member replaces the earlier.
            if c.rows.last() == Some(&row) {
                c.rows.pop();
                c.values.pop();
                *entries -= 1;
            }
            if let Some(v) = value {
                c.rows.push(row);
                c.values.push(v);
                *entries += 1;
            }
        });
        if scanned.is_err() {
            self.failed = true;
            return;
        }
        if self.entries > self.entries_max {
            self.drop_densest();
        }
    }

    fn drop_densest(&mut self) {
        while self.entries > self.entries_max {
            let densest = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match s {
                    Slot::Live(c) => Some((c.rows.len(), i)),
                    Slot::Dropped => None,
                })
                .max();
            let Some((n, i)) = densest else { return };
            self.entries -= n;
            self.slots[i] = Slot::Dropped;
            self.complete = false;
        }
    }

    pub(crate) fn finish(self) -> Option<Numbers> {
        if self.failed {
            return None;
        }
        let mut columns: Vec<NumberColumn> = self
            .slots
            .into_iter()
            .filter_map(|s| match s {
                Slot::Live(c) => Some(c),
                Slot::Dropped => None,
            })
            .collect();
        columns.sort_by(|a, b| a.key.cmp(&b.key));
        Some(Numbers {
            columns,
            complete: self.complete,
        })
    }
}

/// The number columns of a merge whose output rows are `rows_at` (input, row), from the
/// inputs' own columns; `None` when an input has none (the caller derives them instead).
/// Rows of the inputs that are not in the output (erased) leave their numbers behind.
pub(crate) fn merge(
    inputs: &[std::sync::Arc<Segment>],
    rows_at: &[(u32, u32)],
) -> Result<Option<Numbers>, StoreError> {
    let Some(metas) = inputs
        .iter()
        .map(|s| s.numbers_meta().cloned())
        .collect::<Option<Vec<NumbersMeta>>>()
    else {
        return Ok(None);
    };
    let mut complete = metas.iter().all(|m| m.complete);
    let all: BTreeSet<&String> = metas.iter().flat_map(|m| &m.keys).collect();
    // A key an incomplete input does not list may have numbers there the merge cannot
    // see: it is left out (and the output is incomplete, as that input was).
    let mut keys: Vec<&String> = all
        .into_iter()
        .filter(|k| metas.iter().all(|m| m.complete || m.keys.contains(k)))
        .collect();
    if keys.len() > NUMBER_KEYS_MAX {
        keys.truncate(NUMBER_KEYS_MAX);
        complete = false;
    }
    let mut out_row: Vec<Vec<u32>> = inputs.iter().map(|s| vec![u32::MAX; s.rows()]).collect();
    for (o, &(input, row)) in rows_at.iter().enumerate() {
        out_row[input as usize][row as usize] = o as u32;
    }
    let mut columns = Vec::with_capacity(keys.len());
    let mut entries = 0usize;
    for key in keys {
        let mut pairs: Vec<(u32, f64)> = Vec::new();
        for (k, seg) in inputs.iter().enumerate() {
            if let Some((rows, values)) = seg.number_column(key)? {
                pairs.extend(
                    rows.iter()
                        .zip(&values)
                        .map(|(&r, &v)| (out_row[k][r as usize], v))
                        .filter(|&(o, _)| o != u32::MAX),
                );
            }
        }
        pairs.sort_unstable_by_key(|&(o, _)| o);
        entries += pairs.len();
        columns.push(NumberColumn {
            key: key.clone(),
            rows: pairs.iter().map(|p| p.0).collect(),
            values: pairs.iter().map(|p| p.1).collect(),
        });
    }
    let entries_max = rows_at
        .len()
        .saturating_mul(NUMBER_ENTRIES_PER_ROW_MAX)
        .saturating_add(NUMBER_ENTRIES_SLACK);
    while entries > entries_max {
        let (i, _) = columns
            .iter()
            .enumerate()
            .max_by_key(|(_, c)| c.rows.len())
            .expect("entries come from columns");
        entries -= columns.remove(i).rows.len();
        complete = false;
    }
    Ok(Some(Numbers { columns, complete }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(rows: &[&str]) -> Option<Numbers> {
        let mut b = NumbersBuilder::new(rows.len());
        for (i, r) in rows.iter().enumerate() {
            b.observe(i as u32, r.as_bytes());
        }
        b.finish()
    }

    #[test]
    fn keys_are_listed_sorted_with_their_rows_and_a_repeated_key_keeps_its_last_value() {
        let n = build(&[
            r#"{"properties":{"revenue":5,"b":"x"}}"#,
            r#"{"properties":{"b":"2","revenue":"7.5","revenue":"none"}}"#,
            r#"{"event":"no properties"}"#,
            r#"{"properties":{"revenue":1.25,"nested":{"x":1}}}"#,
        ])
        .unwrap();
        assert!(n.complete);
        let keys: Vec<&str> = n.columns.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["b", "revenue"]);
        assert_eq!(
            (n.columns[0].rows.clone(), n.columns[0].values.clone()),
            (vec![1], vec![2.0])
        );
        assert_eq!(
            (n.columns[1].rows.clone(), n.columns[1].values.clone()),
            (vec![0, 3], vec![5.0, 1.25])
        );
        // A record that does not scan leaves the segment without a number list.
        assert!(build(&[r#"{"properties":{"a":1}}"#, "[]"]).is_none());
    }

    #[test]
    fn past_the_bounds_the_list_is_incomplete_and_what_it_keeps_is_exact() {
        // Four numbers on every row is past two per row: the densest keys leave first, the
        // sparse conversion value stays.
        let rows: Vec<String> = (0..10_000)
            .map(|i| {
                let revenue = if i % 40 == 0 {
                    format!(",\"revenue\":{i}")
                } else {
                    String::new()
                };
                format!(r#"{{"properties":{{"a":{i},"b":{i},"c":{i},"d":{i}{revenue}}}}}"#)
            })
            .collect();
        let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
        let n = build(&refs).unwrap();
        assert!(!n.complete);
        let revenue = n.columns.iter().find(|c| c.key == "revenue").unwrap();
        assert_eq!(revenue.rows.len(), 250);
        assert!(revenue
            .rows
            .iter()
            .zip(&revenue.values)
            .all(|(&r, &v)| v == f64::from(r)));
        let total: usize = n.columns.iter().map(|c| c.rows.len()).sum();
        assert!(total <= 10_000 * NUMBER_ENTRIES_PER_ROW_MAX + NUMBER_ENTRIES_SLACK);
        // More keys than the bound: the first ones stay, the list says it lacks some.
        let many: String = (0..NUMBER_KEYS_MAX + 5)
            .map(|k| format!("\"k{k:03}\":1"))
            .collect::<Vec<_>>()
            .join(",");
        let long = "x".repeat(NUMBER_KEY_BYTES_MAX + 1);
        let n = build(&[&format!(r#"{{"properties":{{{many}}}}}"#)]).unwrap();
        assert!(!n.complete);
        assert_eq!(n.columns.len(), NUMBER_KEYS_MAX);
        let n = build(&[&format!(r#"{{"properties":{{"{long}":1}}}}"#)]).unwrap();
        assert!(!n.complete && n.columns.is_empty());
    }
}
