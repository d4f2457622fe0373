//! Events not yet in a segment: the batches they arrived in, kept whole, and one row per
//! stored event pointing into them.
//!
//! The active table takes the writer's group commits. When it reaches its bound the
//! writer freezes it: a [`Frozen`] table is read-only, stays visible to reads and to
//! deduplication, and carries what its flush needs from the moment of freezing (the
//! identity snapshot and where the log continues), so the flush runs on another thread
//! while the writer fills a new table.

use std::sync::Arc;

use throughline_identity::NodeId;
use throughline_model::DIM_COUNT;

use crate::batch::{BufferPool, EventBatch};
use crate::idhash::HashSet128;
use crate::idlog::IdentityLog;

#[derive(Default)]
pub(crate) struct MemTable {
    batches: Vec<EventBatch>,
    pub rows: Vec<MemRow>,
    pub hashes: HashSet128,
    /// Memory held: the batches' buffers and the rows.
    pub bytes: usize,
    /// The events of this table that changed the identity graph.
    pub identity_log: IdentityLog,
    /// Where the batches' buffers go when the table is dropped (after its flush).
    pool: Option<Arc<BufferPool>>,
}

impl Drop for MemTable {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            for b in self.batches.drain(..) {
                pool.give(b);
            }
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct MemRow {
    pub node: NodeId,
    pub ts: i64,
    pub kind: u8,
    batch: u32,
    row: u32,
}

impl MemTable {
    /// An empty table sized for about `events` events, recycling into `pool`.
    pub fn new(pool: Arc<BufferPool>, events: usize) -> MemTable {
        MemTable {
            rows: Vec::with_capacity(events),
            hashes: HashSet128::with_capacity_and_hasher(events, Default::default()),
            pool: Some(pool),
            batches: Vec::new(),
            bytes: 0,
            identity_log: IdentityLog::default(),
        }
    }

    /// Adds a batch whose rows `stored` (with their nodes) are new; the other rows of the
    /// batch were duplicates and stay unreferenced.
    pub fn add(&mut self, batch: EventBatch, stored: impl IntoIterator<Item = (usize, NodeId)>) {
        let b = self.batches.len() as u32;
        let before = self.rows.len();
        for (row, node) in stored {
            let r = &batch.rows()[row];
            self.hashes.insert(r.hash);
            self.rows.push(MemRow {
                node,
                ts: r.ts,
                kind: r.kind,
                batch: b,
                row: row as u32,
            });
        }
        self.bytes += batch.bytes()
            + (self.rows.len() - before)
                * (std::mem::size_of::<MemRow>() + 2 * std::mem::size_of::<u128>());
        self.batches.push(batch);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn record(&self, r: &MemRow) -> &[u8] {
        self.batches[r.batch as usize].record(r.row as usize)
    }

    pub fn dims(&self, r: &MemRow) -> [Option<&str>; DIM_COUNT] {
        self.batches[r.batch as usize].dims(r.row as usize)
    }

    /// Dimension `d` of [`MemTable::dims`] alone.
    pub fn dim(&self, r: &MemRow, d: usize) -> Option<&str> {
        self.batches[r.batch as usize].dim(r.row as usize, d)
    }

    pub fn hash(&self, r: &MemRow) -> u128 {
        self.batches[r.batch as usize].rows()[r.row as usize].hash
    }
}

/// How a flushed table brings the identity graph on disk up to its last event.
pub(crate) enum IdentityUpdate {
    /// A full snapshot of the graph.
    Snapshot(Vec<u8>),
    /// The table's [`IdentityLog`], replayed after the snapshot and earlier logs.
    Log(Vec<u8>),
}

/// A table the writer froze, waiting for (or in) its flush.
pub(crate) struct Frozen {
    pub table: MemTable,
    /// The identity graph as of the table's last event, published with its segment.
    pub identity: IdentityUpdate,
    /// The first log file after the table: every event of the table is in files before
    /// it, so publishing the segment retires them.
    pub wal_end: u64,
    /// Segment number reserved for the table's segment and identity snapshot.
    pub number: u64,
}
