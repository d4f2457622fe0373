//! Events encoded for the store on the caller's thread (an HTTP handler, an import worker),
//! so that the one writer thread only checks ids, writes bytes and links rows.
//!
//! An [`EventBatch`] holds its events' log records already framed (`len | crc32 |
//! record`, back to back, the write-ahead log's format) in one buffer: the writer hands
//! runs of that buffer to the log with one vectored write, and the in-memory table keeps
//! the buffer itself, so a record is copied once, from the request into the batch. The
//! scan columns (ids, name, page, UTM...) sit in a second buffer the rows point into.

use std::ops::Range;
use std::sync::Mutex;

use throughline_identity::IdRefs;
use throughline_model::{Event, NewEvent, DIM_COUNT};

use crate::wal::{self, RECORD_BYTES_MAX};
use crate::{message_hash, StoreError};

/// A string in [`EventBatch::strings`]; `start == u32::MAX` for none.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

impl Span {
    const NONE: Span = Span {
        start: u32::MAX,
        len: 0,
    };
}

/// One event of a batch: everything the writer and the scans need without the record.
#[derive(Clone, Debug)]
pub(crate) struct BatchRow {
    pub hash: u128,
    pub ts: i64,
    /// Where the event's frame starts in `frames`; the record follows its 8-byte header.
    pub frame: u32,
    pub record_len: u32,
    pub kind: u8,
    pub alias: bool,
    dims: [Span; DIM_COUNT],
    /// user id, anonymous id, email, previous id: what the identity graph reads.
    ids: [Span; 4],
}

/// Batches of flushed tables, emptied, handed out again: the in-memory table's memory is
/// reused instead of going back to the allocator (and the OS) and being faulted in again,
/// page by page, for the next table. Batches are built on the request threads and freed
/// on the flusher's, a pattern thread-caching allocators handle poorly.
#[derive(Default)]
pub(crate) struct BufferPool {
    batches: Mutex<(Vec<EventBatch>, usize)>,
}

/// Bytes of buffers a pool keeps at most.
const POOL_BYTES_MAX: usize = 64 << 20;

impl BufferPool {
    fn take(&self) -> EventBatch {
        let mut pool = self.batches.lock().expect("buffer pool");
        match pool.0.pop() {
            Some(b) => {
                pool.1 -= b.bytes();
                b
            }
            None => EventBatch::default(),
        }
    }

    pub fn give(&self, mut b: EventBatch) {
        b.frames.clear();
        b.strings.clear();
        b.rows.clear();
        let mut pool = self.batches.lock().expect("buffer pool");
        if pool.1 + b.bytes() <= POOL_BYTES_MAX {
            pool.1 += b.bytes();
            pool.0.push(b);
        }
    }
}

/// Events encoded for [`crate::ProjectStore::append`]; see the module documentation.
#[derive(Default)]
pub struct EventBatch {
    frames: Vec<u8>,
    strings: String,
    rows: Vec<BatchRow>,
}

impl EventBatch {
    pub fn new() -> EventBatch {
        EventBatch::default()
    }

    /// A batch sized for about `events` events whose records take `record_bytes` in all.
    pub fn with_capacity(events: usize, record_bytes: usize) -> EventBatch {
        EventBatch {
            frames: Vec::with_capacity(record_bytes + events * wal::HEADER_BYTES),
            strings: String::with_capacity(events * 64),
            rows: Vec::with_capacity(events),
        }
    }

    /// [`EventBatch::with_capacity`], reusing a batch from `pool`.
    pub(crate) fn from_pool(pool: &BufferPool, events: usize, record_bytes: usize) -> EventBatch {
        let mut b = pool.take();
        b.frames.reserve(record_bytes + events * wal::HEADER_BYTES);
        b.strings.reserve(events * 64);
        b.rows.reserve(events);
        b
    }

    /// A batch of owned events (tests, tools, events read back from the store).
    pub fn of(events: &[Event]) -> EventBatch {
        let mut b = EventBatch::new();
        for e in events {
            b.push(&e.as_new())
                .expect("an event built in code fits in a record");
        }
        b
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Bytes this batch holds in memory, for the in-memory table's bound.
    pub fn bytes(&self) -> usize {
        self.frames.capacity()
            + self.strings.capacity()
            + self.rows.capacity() * std::mem::size_of::<BatchRow>()
    }

    /// Encodes one event. Fails only for a record longer than the log's bound
    /// ([`RECORD_BYTES_MAX`]), which leaves the batch as it was.
    pub fn push(&mut self, e: &NewEvent<'_>) -> Result<(), StoreError> {
        let frame = self.frames.len();
        self.frames.extend_from_slice(&[0u8; wal::HEADER_BYTES]);
        e.write_json(&mut self.frames);
        self.finish_frame(frame, e)
    }

    /// Adds a record read back from the log as it is, without encoding it again.
    pub(crate) fn push_record(&mut self, record: &[u8]) -> Result<(), serde_json::Error> {
        let event: Event = serde_json::from_slice(record)?;
        let frame = self.frames.len();
        self.frames.extend_from_slice(&[0u8; wal::HEADER_BYTES]);
        self.frames.extend_from_slice(record);
        self.finish_frame(frame, &event.as_new())
            .expect("a record read from the log fits in a record");
        Ok(())
    }

    fn finish_frame(&mut self, frame: usize, e: &NewEvent<'_>) -> Result<(), StoreError> {
        let record_len = self.frames.len() - frame - wal::HEADER_BYTES;
        if record_len > RECORD_BYTES_MAX || self.frames.len() > u32::MAX as usize {
            self.frames.truncate(frame);
            return Err(StoreError::RecordTooLarge {
                bytes: record_len,
                max: RECORD_BYTES_MAX,
            });
        }
        let (header, record) = self.frames[frame..].split_at_mut(wal::HEADER_BYTES);
        header[..4].copy_from_slice(&(record_len as u32).to_le_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(record).to_le_bytes());
        let dims = e.dims().map(|d| self.string(d));
        let ids = [
            e.user_id.as_deref(),
            e.anonymous_id.as_deref(),
            e.email.as_deref(),
            e.previous_id.as_deref(),
        ]
        .map(|s| self.string(s));
        self.rows.push(BatchRow {
            hash: message_hash(&e.message_id),
            ts: e.timestamp,
            frame: frame as u32,
            record_len: record_len as u32,
            kind: e.event_type.code(),
            alias: e.event_type == throughline_model::EventType::Alias,
            dims,
            ids,
        });
        Ok(())
    }

    fn string(&mut self, s: Option<&str>) -> Span {
        match s {
            None => Span::NONE,
            Some(s) => {
                let start = self.strings.len() as u32;
                self.strings.push_str(s);
                Span {
                    start,
                    len: s.len() as u32,
                }
            }
        }
    }

    pub(crate) fn rows(&self) -> &[BatchRow] {
        &self.rows
    }

    fn text(&self, s: Span) -> Option<&str> {
        if s.start == u32::MAX {
            return None;
        }
        // Whole strings were pushed, so the span falls on character boundaries.
        Some(&self.strings[s.start as usize..(s.start + s.len) as usize])
    }

    pub(crate) fn dims(&self, row: usize) -> [Option<&str>; DIM_COUNT] {
        self.rows[row].dims.map(|s| self.text(s))
    }

    pub(crate) fn dim(&self, row: usize, d: usize) -> Option<&str> {
        self.text(self.rows[row].dims[d])
    }

    /// The ids of one event, as the identity graph takes them.
    pub(crate) fn ids(&self, row: usize) -> IdRefs<'_> {
        let r = &self.rows[row];
        IdRefs {
            alias: r.alias,
            user_id: self.text(r.ids[0]),
            anonymous_id: self.text(r.ids[1]),
            email: self.text(r.ids[2]),
            previous_id: self.text(r.ids[3]),
        }
    }

    /// The stored record of `row` (the event's JSON).
    pub(crate) fn record(&self, row: usize) -> &[u8] {
        let r = &self.rows[row];
        let start = r.frame as usize + wal::HEADER_BYTES;
        &self.frames[start..start + r.record_len as usize]
    }

    /// Each event's message-id hash and stored record, in batch order (for a backend that
    /// keeps events elsewhere, such as the ClickHouse outbox).
    pub fn records(&self) -> impl Iterator<Item = (u128, &[u8])> {
        (0..self.rows.len()).map(|i| (self.rows[i].hash, self.record(i)))
    }

    /// The bytes of the frames of rows `rows` (consecutive), for the log.
    pub(crate) fn frames_of(&self, rows: Range<usize>) -> &[u8] {
        if rows.is_empty() {
            return &[];
        }
        let start = self.rows[rows.start].frame as usize;
        let last = &self.rows[rows.end - 1];
        let end = last.frame as usize + wal::HEADER_BYTES + last.record_len as usize;
        &self.frames[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use throughline_model::EventType;

    fn event(i: u64) -> Event {
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "message_id": format!("m{i}"), "type": "track", "event": format!("E{i}"),
            "anonymous_id": "a", "timestamp": i, "received_at": i,
            "properties": {"k": "ü"}
        }))
        .unwrap();
        if i.is_multiple_of(2) {
            e.event_type = EventType::Alias;
            e.previous_id = Some("p".into());
        }
        e
    }

    #[test]
    fn frames_are_log_records_and_rows_point_into_them() {
        let events: Vec<Event> = (0..5).map(event).collect();
        let b = EventBatch::of(&events);
        let dir = crate::testutil::TempDir::new("batch-frames");
        let mut w = wal::WalWriter::create(dir.path(), 1).unwrap();
        w.commit_frames(&[b.frames_of(1..4)]).unwrap();
        let rec = wal::recover(&w.path).unwrap();
        assert_eq!(rec.torn_bytes, 0);
        assert_eq!(rec.records.len(), 3);
        for (i, record) in rec.records.iter().enumerate() {
            assert_eq!(record.as_slice(), b.record(i + 1));
            let back: Event = serde_json::from_slice(record).unwrap();
            assert_eq!(back, events[i + 1]);
        }
        assert_eq!(b.dims(3)[0], Some("E3"));
        assert_eq!(b.ids(2).previous_id, Some("p"));
        assert!(b.ids(2).alias && !b.ids(3).alias);
        let mut again = EventBatch::new();
        again.push_record(b.record(4)).unwrap();
        assert_eq!(again.record(0), b.record(4));
        assert_eq!(again.rows()[0].hash, b.rows()[4].hash);
    }
}
