//! The value of one numeric property for a few events named by arrival number (a
//! conversion's `revenue`), read from the segments' number columns where they answer and
//! decoded from the stored records only where they do not.
//!
//! A top-level property (`revenue`, `properties.total`) of a segment row is answered by
//! the segment's `num_rows:`/`num_values:` columns when the segment lists the key, or as
//! "no number" when its list is complete without it. Everything else is decoded and read
//! with `model::number_of`, the rule the columns were built with, so both ways give the
//! same bits: nested paths (`order.total`), `context.`/`traits.` paths, segments written
//! before number columns (or whose list is incomplete and lacks the key), and the events
//! still in the log. Columns are verified when read and, in `serve`, kept in the
//! [`crate::cache`] like the scan columns. Never decides which events are conversions.

use std::collections::HashMap;
use std::sync::Arc;

use throughline_store::numbers::{check_number_column, number_column_names};
use throughline_store::{Segment, Snapshot, StoreError};

use crate::cache;
use crate::source::Source;
use crate::QueryError;

/// The number at `path` (as [`crate::assets::property_path`] gives it) of each event in
/// `seqs` (arrival numbers, ascending, distinct); 0 where there is none. A remote source
/// has no segments: its events are decoded.
pub(crate) fn values_at(
    src: &Source,
    path: &[String],
    seqs: &[u32],
) -> Result<HashMap<u32, f64>, QueryError> {
    match src.store() {
        Some(snap) => values_at_with(snap, path, seqs, true),
        None => {
            let mut out: HashMap<u32, f64> = seqs.iter().map(|&s| (s, 0.0)).collect();
            src.for_each_event_at(seqs, |seq, e| {
                out.insert(seq, crate::assets::number_at(&e, path).unwrap_or(0.0));
                Ok(())
            })?;
            Ok(out)
        }
    }
}

/// [`values_at`], with `columns: false` decoding every event (the way the columns must
/// agree with).
fn values_at_with(
    snap: &Snapshot,
    path: &[String],
    seqs: &[u32],
    columns: bool,
) -> Result<HashMap<u32, f64>, QueryError> {
    let mut out: HashMap<u32, f64> = HashMap::with_capacity(seqs.len());
    let key = match path {
        [root, key] if columns && root == "properties" => Some(key.as_str()),
        _ => None,
    };
    let mut decode: Vec<u32> = Vec::new();
    let mut at = 0usize;
    let mut first = 0u32;
    for seg in snap.segments() {
        let end = first + seg.rows() as u32;
        let start = at;
        while at < seqs.len() && seqs[at] < end {
            at += 1;
        }
        let mine = &seqs[start..at];
        if !mine.is_empty() {
            match key.map(|k| numbers_of(seg, k)).transpose()? {
                Some(Some(Some((rows, values)))) => {
                    // Both ascending: one walk.
                    let mut j = 0usize;
                    for &seq in mine {
                        let row = seq - first;
                        j += rows[j..].partition_point(|&r| r < row);
                        let v = match rows.get(j) {
                            Some(&r) if r == row => values[j],
                            _ => 0.0,
                        };
                        out.insert(seq, v);
                    }
                }
                // A complete list without the key: none of these events has a number.
                Some(Some(None)) => out.extend(mine.iter().map(|&s| (s, 0.0))),
                _ => decode.extend_from_slice(mine),
            }
        }
        first = end;
    }
    decode.extend_from_slice(&seqs[at..]);
    snap.for_each_event_at(&decode, |seq, e| {
        out.insert(seq, crate::assets::number_at(&e, path).unwrap_or(0.0));
        Ok(())
    })?;
    Ok(out)
}

/// A segment's numbers for `key`: `None` when its columns cannot say (decode instead),
/// `Some(None)` when its complete list says no row has one.
#[allow(clippy::type_complexity)]
fn numbers_of(
    seg: &Arc<Segment>,
    key: &str,
) -> Result<Option<Option<(Arc<Vec<u32>>, Arc<Vec<f64>>)>>, StoreError> {
    let Some(meta) = seg.numbers_meta() else {
        return Ok(None);
    };
    if !meta.keys.iter().any(|k| k == key) {
        return Ok(meta.complete.then_some(None));
    }
    let (rows, values) = match cache::global() {
        Some(c) => {
            let (rows_name, values_name) = number_column_names(key);
            (c.u32s(seg, &rows_name)?, c.f64s(seg, &values_name)?)
        }
        None => {
            let (rows, values) = seg.number_column(key)?.expect("a listed key has columns");
            (Arc::new(rows), Arc::new(values))
        }
    };
    check_number_column(&rows, &values, seg.rows()).map_err(|why| StoreError::Corrupt {
        file: seg.path.clone(),
        why: format!("numbers of {key:?}: {why}"),
    })?;
    Ok(Some(Some((rows, values))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use throughline_model::Event;
    use throughline_store::{EventBatch, ProjectOptions, ProjectStore};

    fn event(i: u64, properties: serde_json::Value) -> Event {
        serde_json::from_value(serde_json::json!({
            "message_id": format!("m{i}"), "type": "track", "event": "Order Completed",
            "user_id": format!("u{}", i % 13), "timestamp": i as i64, "received_at": i as i64,
            "properties": properties, "context": {"revenue": i},
        }))
        .unwrap()
    }

    /// Values from the columns equal values decoded from the records, bit for bit, for
    /// top-level, nested, context and missing properties, across segments of several
    /// flushes, a compaction and the log.
    #[test]
    fn columns_answer_what_decoding_answers() {
        let dir = std::env::temp_dir().join(format!("tl-values-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = ProjectOptions {
            compact_segments_min: 3,
            ..ProjectOptions::default()
        };
        let p = ProjectStore::open("p", &dir, options).unwrap();
        let mut i = 0u64;
        for batch in 0..5 {
            let events: Vec<Event> = (0..200)
                .map(|_| {
                    i += 1;
                    let revenue = match i % 6 {
                        0 => serde_json::json!(i as f64 / 7.0),
                        1 => serde_json::json!(format!("{}.5", i)),
                        2 => serde_json::json!({"deep": 1}),
                        3 => serde_json::json!(i),
                        _ => serde_json::json!(null),
                    };
                    event(
                        i,
                        serde_json::json!({"revenue": revenue, "order": {"total": i}}),
                    )
                })
                .collect();
            p.append(EventBatch::of(&events)).unwrap();
            if batch < 4 {
                p.settle().unwrap();
            }
        }
        let snap = p.snapshot();
        assert!(snap.segments().len() >= 2, "a merged and a flushed segment");
        let all: Vec<u32> = (0..snap.event_count() as u32).collect();
        let some: Vec<u32> = all.iter().copied().filter(|s| s % 3 == 1).collect();
        for path in ["revenue", "order.total", "context.revenue", "missing"] {
            let path = crate::assets::property_path(path).unwrap();
            for seqs in [&all, &some] {
                let fast = values_at(&Source::Store(&snap), &path, seqs).unwrap();
                let slow = values_at_with(&snap, &path, seqs, false).unwrap();
                assert_eq!(fast.len(), seqs.len());
                for s in seqs.iter() {
                    assert_eq!(fast[s].to_bits(), slow[s].to_bits(), "{path:?} at {s}");
                }
            }
        }
        let revenue = values_at(
            &Source::Store(&snap),
            &["properties".into(), "revenue".into()],
            &all,
        )
        .unwrap();
        assert!(revenue.values().any(|v| *v != 0.0));
        drop(snap);
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
