//! A bounded cache of verified segment columns, for a process that answers many queries
//! over the same store (`throughline serve`).
//!
//! Segments are immutable, so a column read once stays right for as long as its segment
//! lives: the cache keys each column by its segment (the `Arc` it is opened in, kept as a
//! `Weak` so a compacted-away segment is never kept alive nor confused with a new one)
//! and the column's name. Columns are checksummed when read, once; later queries use
//! them without copying. The least recently used columns leave first once
//! `bytes_max` is reached, and a column larger than the whole budget is not kept.
//!
//! The process-wide cache is off until [`configure`] turns it on, so one-off commands (the
//! CLI) read through the streaming path in `rows` and keep memory to what a query needs.
//! The cache never reads anything but the columns it is asked for and never decides what
//! a query means.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use throughline_store::{Segment, StoreError};

/// One cached column.
#[derive(Clone)]
enum Value {
    U32(Arc<Vec<u32>>),
    I64(Arc<Vec<i64>>),
    U8(Arc<Vec<u8>>),
    U16(Arc<Vec<u16>>),
    F64(Arc<Vec<f64>>),
    Dict(Arc<Vec<String>>),
}

impl Value {
    fn bytes(&self) -> usize {
        match self {
            Value::U32(v) => v.len() * 4,
            Value::I64(v) => v.len() * 8,
            Value::U8(v) => v.len(),
            Value::U16(v) => v.len() * 2,
            Value::F64(v) => v.len() * 8,
            Value::Dict(v) => v.iter().map(|s| s.len() + 24).sum::<usize>() + 24,
        }
    }
}

struct Entry {
    owner: Weak<Segment>,
    value: Value,
    bytes: usize,
    used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(usize, String), Entry>,
    bytes: usize,
    tick: u64,
    hits: u64,
    misses: u64,
}

/// Counters for `/metrics` and the benchmark notes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub bytes: usize,
    pub bytes_max: usize,
    pub columns: usize,
    pub hits: u64,
    pub misses: u64,
}

pub struct ColumnCache {
    bytes_max: usize,
    inner: Mutex<Inner>,
}

static GLOBAL: OnceLock<ColumnCache> = OnceLock::new();

/// Turns on the process-wide cache with a budget of `bytes_max` (the first call wins).
pub fn configure(bytes_max: usize) -> &'static ColumnCache {
    GLOBAL.get_or_init(|| ColumnCache::new(bytes_max))
}

/// The process-wide cache, when [`configure`] turned it on.
pub fn global() -> Option<&'static ColumnCache> {
    GLOBAL.get()
}

impl ColumnCache {
    pub fn new(bytes_max: usize) -> ColumnCache {
        ColumnCache {
            bytes_max,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.inner.lock().expect("cache lock");
        CacheStats {
            bytes: inner.bytes,
            bytes_max: self.bytes_max,
            columns: inner.entries.len(),
            hits: inner.hits,
            misses: inner.misses,
        }
    }

    pub fn u32s(&self, seg: &Arc<Segment>, name: &str) -> Result<Arc<Vec<u32>>, StoreError> {
        match self.get(seg, name, |s| {
            Ok(Value::U32(Arc::new(s.read_column(name)?)))
        })? {
            Value::U32(v) => Ok(v),
            _ => Err(mismatch(seg, name)),
        }
    }

    pub fn i64s(&self, seg: &Arc<Segment>, name: &str) -> Result<Arc<Vec<i64>>, StoreError> {
        match self.get(seg, name, |s| {
            Ok(Value::I64(Arc::new(s.read_column(name)?)))
        })? {
            Value::I64(v) => Ok(v),
            _ => Err(mismatch(seg, name)),
        }
    }

    pub fn f64s(&self, seg: &Arc<Segment>, name: &str) -> Result<Arc<Vec<f64>>, StoreError> {
        match self.get(seg, name, |s| {
            Ok(Value::F64(Arc::new(s.read_column(name)?)))
        })? {
            Value::F64(v) => Ok(v),
            _ => Err(mismatch(seg, name)),
        }
    }

    pub fn u8s(&self, seg: &Arc<Segment>, name: &str) -> Result<Arc<Vec<u8>>, StoreError> {
        match self.get(seg, name, |s| Ok(Value::U8(Arc::new(s.read_column(name)?))))? {
            Value::U8(v) => Ok(v),
            _ => Err(mismatch(seg, name)),
        }
    }

    /// A column derived from verified columns of the segment (by `build`, once), kept
    /// like the others; `name` must say what it is derived from.
    pub fn derived_u16(
        &self,
        seg: &Arc<Segment>,
        name: &str,
        build: impl FnOnce(&Segment) -> Result<Vec<u16>, StoreError>,
    ) -> Result<Arc<Vec<u16>>, StoreError> {
        match self.get(seg, name, |s| Ok(Value::U16(Arc::new(build(s)?))))? {
            Value::U16(v) => Ok(v),
            _ => Err(mismatch(seg, name)),
        }
    }

    /// The dictionary of dimension `dim`.
    pub fn dict(&self, seg: &Arc<Segment>, dim: &str) -> Result<Arc<Vec<String>>, StoreError> {
        let key = format!("dict:{dim}");
        match self.get(seg, &key, |s| Ok(Value::Dict(Arc::new(s.dict(dim)?))))? {
            Value::Dict(v) => Ok(v),
            _ => Err(mismatch(seg, &key)),
        }
    }

    fn get(
        &self,
        seg: &Arc<Segment>,
        name: &str,
        read: impl FnOnce(&Segment) -> Result<Value, StoreError>,
    ) -> Result<Value, StoreError> {
        let key = (Arc::as_ptr(seg) as usize, name.to_string());
        {
            let mut inner = self.inner.lock().expect("cache lock");
            inner.tick += 1;
            let tick = inner.tick;
            if let Some(e) = inner.entries.get_mut(&key) {
                // The key is the segment's address; the `Weak` keeps that address from being
                // reused while the entry exists, so a live owner means the same segment.
                if e.owner.strong_count() > 0 {
                    e.used = tick;
                    let v = e.value.clone();
                    inner.hits += 1;
                    return Ok(v);
                }
            }
            inner.misses += 1;
        }
        // Read (and verify) outside the lock: two queries may both read a missing column,
        // which costs time once, never correctness.
        let value = read(seg)?;
        let bytes = value.bytes();
        if bytes > self.bytes_max {
            return Ok(value);
        }
        let mut inner = self.inner.lock().expect("cache lock");
        inner.entries.retain(|_, e| e.owner.strong_count() > 0);
        inner.bytes = inner.entries.values().map(|e| e.bytes).sum();
        while inner.bytes + bytes > self.bytes_max {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let gone = inner.entries.remove(&oldest).expect("entry exists");
            inner.bytes -= gone.bytes;
        }
        let used = inner.tick;
        if let Some(old) = inner.entries.insert(
            key,
            Entry {
                owner: Arc::downgrade(seg),
                value: value.clone(),
                bytes,
                used,
            },
        ) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        Ok(value)
    }
}

fn mismatch(seg: &Segment, name: &str) -> StoreError {
    StoreError::Corrupt {
        file: seg.path.clone(),
        why: format!("column {name:?} asked for with two different types"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use throughline_model::Event;
    use throughline_store::{EventBatch, ProjectOptions, ProjectStore};

    fn store(dir: &std::path::Path, segments: u64) -> ProjectStore {
        let _ = std::fs::remove_dir_all(dir);
        let options = ProjectOptions {
            compact_segments_min: 100,
            ..ProjectOptions::default()
        };
        let p = ProjectStore::open("p", dir, options).unwrap();
        for s in 0..segments {
            let batch: Vec<Event> = (0..100u64)
                .map(|k| {
                    serde_json::from_value(serde_json::json!({
                        "message_id": format!("m{s}-{k}"), "type": "track", "event": "e",
                        "user_id": format!("u{k}"), "timestamp": k as i64, "received_at": k as i64,
                    }))
                    .unwrap()
                })
                .collect();
            p.append(EventBatch::of(&batch)).unwrap();
            p.flush().unwrap();
        }
        p
    }

    /// A column is read once and then served from memory; the budget evicts the least
    /// recently used column; a segment that is gone is never served.
    #[test]
    fn columns_are_read_once_within_the_budget() {
        let dir = std::env::temp_dir().join(format!("tl-cache-{}", std::process::id()));
        let p = store(&dir, 3);
        let snap = p.snapshot();
        let segs = snap.segments().to_vec();
        // Room for two 100-row ts columns (800 bytes each), not three.
        let cache = ColumnCache::new(2000);
        let a = cache.i64s(&segs[0], "ts").unwrap();
        let again = cache.i64s(&segs[0], "ts").unwrap();
        assert!(Arc::ptr_eq(&a, &again), "second read not from the cache");
        assert_eq!(a.len(), 100);
        cache.i64s(&segs[1], "ts").unwrap();
        cache.i64s(&segs[0], "ts").unwrap(); // segs[1] is now the least recently used
        cache.i64s(&segs[2], "ts").unwrap();
        let s = cache.stats();
        assert_eq!((s.columns, s.bytes, s.hits, s.misses), (2, 1600, 2, 3));
        let b = cache.i64s(&segs[0], "ts").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the recently used column was evicted");
        // Asking for a column as another type is an error, not a reinterpretation.
        assert!(cache.u32s(&segs[0], "ts").is_err());
        // Larger than the whole budget: answered, not kept.
        let small = ColumnCache::new(100);
        assert_eq!(small.i64s(&segs[0], "ts").unwrap().len(), 100);
        assert_eq!(small.stats().columns, 0);
        drop(snap);
        drop(segs);
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
