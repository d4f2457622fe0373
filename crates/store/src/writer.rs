//! The writer thread: the only thread that appends to the log, the in-memory table and
//! the identity graph.
//!
//! Group commit: it takes every append request waiting in its queue (up to
//! `group_events_max` events), checks each event's message id against the group, the
//! tables and the segments, writes the new events' frames with one vectored write and
//! one fsync, then applies them under a short write lock and answers. When the active
//! table is full it freezes it for the flusher (a new log file starts, so the frozen
//! table's events are exactly the older files) and carries on at once.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Instant;

use crate::batch::EventBatch;
use crate::idhash::HashSet128;
use crate::maintenance::{self, FlushJob};
use crate::memtable::{Frozen, IdentityUpdate};
use crate::project::{erased_nodes, in_segments, AppendOutcome, Erase, Reply, Shared};
use crate::wal::WalWriter;
use crate::StoreError;

pub(crate) enum Request {
    Append {
        events: EventBatch,
        /// False for bulk import: the events skip the log and are durable at the next flush.
        logged: bool,
        reply: Reply<AppendOutcome>,
    },
    Flush {
        reply: Reply<()>,
    },
    DeletePerson {
        who: Erase,
        reply: Reply<usize>,
    },
}

type Pending = (EventBatch, bool, Reply<AppendOutcome>);

pub(crate) struct Writer {
    shared: Arc<Shared>,
    wal: WalWriter,
    /// Set when a commit failed and the file could not be cut back: the next commit
    /// starts a fresh file so no acknowledged record ever follows a torn one.
    wal_broken: bool,
    identity: IdentityOnDisk,
}

/// What recovery would read for the identity graph (published or queued for the
/// flusher): decides when a frozen table carries a full snapshot instead of a log.
pub(crate) struct IdentityOnDisk {
    /// Size of the last full snapshot.
    pub snapshot_bytes: usize,
    /// Size and number of the change logs after it.
    pub log_bytes: usize,
    pub logs: usize,
}

/// Change logs after one full snapshot at most (recovery replays them all).
const IDENTITY_LOGS_MAX: usize = 64;

impl Writer {
    pub fn new(shared: Arc<Shared>, wal: WalWriter, identity: IdentityOnDisk) -> Writer {
        Writer {
            shared,
            wal,
            wal_broken: false,
            identity,
        }
    }

    pub fn run(&mut self, rx: Receiver<Request>) {
        // The log replayed at open may already fill a table.
        self.freeze_if_full();
        let mut carried: Option<Request> = None;
        loop {
            let first = match carried.take() {
                Some(r) => r,
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            match first {
                Request::Append {
                    events,
                    logged,
                    reply,
                } => {
                    let mut n = events.len();
                    let mut group = vec![(events, logged, reply)];
                    while n < self.shared.options.group_events_max {
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
                Request::Flush { reply } => match self.freeze() {
                    Ok(()) => maintenance::enqueue(&self.shared, FlushJob::Barrier(reply)),
                    Err(e) => reply(Err(e)),
                },
                Request::DeletePerson { who, reply } => reply(self.delete_person(&who)),
            }
            self.freeze_if_full();
        }
        maintenance::close_flush_queue(&self.shared);
    }

    fn freeze_if_full(&mut self) {
        let full = {
            let state = self.shared.state.read().expect("state lock");
            state.mem.bytes >= self.shared.options.flush_bytes
        };
        if full {
            if let Err(e) = self.freeze() {
                tracing::error!(error = %e, "freezing the in-memory table failed; events stay in the log");
            }
        }
    }

    /// Hands the active table to the flusher and starts a new table and log file. Waits
    /// while `frozen_tables_max` tables are already waiting.
    fn freeze(&mut self) -> Result<(), StoreError> {
        let shared = &self.shared;
        if shared.state.read().expect("state lock").mem.is_empty() {
            return Ok(());
        }
        maintenance::wait_for_room(shared)?;
        let next = self.wal.seq + 1;
        let wal = WalWriter::create(&shared.wal_dir(), next)
            .map_err(|e| StoreError::io(&shared.wal_dir(), e))?;
        // Only this thread changes the graph and the active table, so what it reads under
        // the read lock still holds when it takes the write lock below. A full snapshot
        // once the logs since the last one would outweigh half of it: recovery reads at
        // most one and a half snapshots' worth, and snapshots cost O(changes) in all.
        let identity = {
            let state = shared.state.read().expect("state lock");
            let log = &state.mem.identity_log;
            let d = &mut self.identity;
            if d.snapshot_bytes == 0
                || d.logs >= IDENTITY_LOGS_MAX
                || d.log_bytes + log.len_bytes() > d.snapshot_bytes / 2
            {
                let snapshot = state.identity.to_snapshot();
                *d = IdentityOnDisk {
                    snapshot_bytes: snapshot.len(),
                    log_bytes: 0,
                    logs: 0,
                };
                IdentityUpdate::Snapshot(snapshot)
            } else {
                let encoded = log.encode();
                d.log_bytes += encoded.len();
                d.logs += 1;
                IdentityUpdate::Log(encoded)
            }
        };
        let frozen = {
            let mut state = shared.state.write().expect("state lock");
            state.changed();
            let frozen = Arc::new(Frozen {
                table: std::mem::replace(&mut state.mem, shared.new_table()),
                identity,
                wal_end: next,
                number: shared.next_number.fetch_add(1, Ordering::Relaxed),
            });
            state.frozen.push_back(frozen.clone());
            frozen
        };
        self.wal = wal;
        self.wal_broken = false;
        maintenance::enqueue(shared, FlushJob::Table(frozen));
        Ok(())
    }

    fn commit_group(&mut self, group: Vec<Pending>) {
        let mut outcomes = Vec::with_capacity(group.len());
        // Per request: the rows that are new.
        let mut fresh: Vec<Vec<usize>> = Vec::with_capacity(group.len());
        let events: usize = group.iter().map(|(e, _, _)| e.len()).sum();
        let mut seen = HashSet128::with_capacity_and_hasher(events, Default::default());
        let checked = {
            let state = self.shared.state.read().expect("state lock");
            let mut check = || -> Result<(), StoreError> {
                for (events, _, _) in &group {
                    let mut dup = Vec::with_capacity(events.len());
                    let mut rows = Vec::with_capacity(events.len());
                    for (i, r) in events.rows().iter().enumerate() {
                        let is_dup = !seen.insert(r.hash)
                            || state.mem.hashes.contains(&r.hash)
                            || state
                                .frozen
                                .iter()
                                .any(|f| f.table.hashes.contains(&r.hash))
                            || in_segments(&state.segments, r.hash)?;
                        dup.push(is_dup);
                        if !is_dup {
                            rows.push(i);
                        }
                    }
                    outcomes.push(AppendOutcome { duplicate: dup });
                    fresh.push(rows);
                }
                Ok(())
            };
            check()
        };
        let committed = checked.and_then(|_| {
            // Runs of consecutive new rows go to the log as they are in the batch.
            let mut chunks: Vec<&[u8]> = Vec::new();
            for ((events, logged, _), rows) in group.iter().zip(&fresh) {
                if !*logged {
                    continue;
                }
                let mut i = 0;
                while i < rows.len() {
                    let mut j = i + 1;
                    while j < rows.len() && rows[j] == rows[j - 1] + 1 {
                        j += 1;
                    }
                    chunks.push(events.frames_of(rows[i]..rows[j - 1] + 1));
                    i = j;
                }
            }
            self.commit_wal(&chunks)
        });
        if let Err(e) = committed {
            let msg = match e {
                StoreError::WalFailed(why) => why,
                e => e.to_string(),
            };
            for (_, _, reply) in group {
                reply(Err(StoreError::WalFailed(msg.clone())));
            }
            return;
        }
        let stored: usize = fresh.iter().map(Vec::len).sum();
        let mut replies = Vec::with_capacity(group.len());
        {
            let mut state = self.shared.state.write().expect("state lock");
            state.changed();
            let state = &mut *state;
            for ((events, _, reply), rows) in group.into_iter().zip(fresh) {
                let nodes: Vec<(usize, u32)> = rows
                    .into_iter()
                    .map(|i| {
                        let ids = events.ids(i);
                        (i, state.mem.identity_log.observe(&mut state.identity, ids))
                    })
                    .collect();
                state.mem.add(events, nodes);
                replies.push(reply);
            }
        }
        let total: usize = outcomes.iter().map(|o| o.duplicate.len()).sum();
        let m = &self.shared.metrics;
        m.events_stored.fetch_add(stored as u64, Ordering::Relaxed);
        m.duplicates
            .fetch_add((total - stored) as u64, Ordering::Relaxed);
        m.group_commit_events.observe(total as f64);
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            reply(Ok(outcome));
        }
    }

    fn commit_wal(&mut self, chunks: &[&[u8]]) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        if self.wal_broken {
            let next = self.wal.seq + 1;
            self.wal = WalWriter::create(&self.shared.wal_dir(), next)
                .map_err(|e| StoreError::WalFailed(e.to_string()))?;
            self.wal_broken = false;
        }
        let started = Instant::now();
        match self.wal.commit_frames(chunks) {
            Ok(()) => {
                self.shared
                    .metrics
                    .fsync_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(e) => {
                self.shared
                    .metrics
                    .wal_failures
                    .fetch_add(1, Ordering::Relaxed);
                if self.wal.rollback().is_err() {
                    self.wal_broken = true;
                }
                Err(StoreError::WalFailed(e.to_string()))
            }
        }
    }

    /// GDPR erasure. Ingestion waits meanwhile: the log is folded into segments first, so
    /// the person's events exist only in segments, then no compaction may run while the
    /// segments holding them are rewritten without them.
    fn delete_person(&mut self, who: &Erase) -> Result<usize, StoreError> {
        self.freeze()?;
        let (tx, rx) = mpsc::channel();
        maintenance::enqueue(
            &self.shared,
            FlushJob::Barrier(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        );
        rx.recv().map_err(|_| StoreError::Closed)??;
        let shared = &self.shared;
        let _no_compaction = shared.compaction_lock.lock().expect("compaction lock");
        let (persons, nodes, affected) = {
            let state = shared.state.read().expect("state lock");
            debug_assert!(state.frozen.is_empty() && state.mem.is_empty());
            let Some((persons, nodes)) = erased_nodes(&state.identity, who) else {
                return Ok(0);
            };
            let mut affected = Vec::new();
            for s in &state.segments {
                let seg_nodes = s.read_column::<u32>("node")?;
                if seg_nodes.iter().any(|n| nodes.contains(n)) {
                    affected.push(s.clone());
                }
            }
            (persons, nodes, affected)
        };
        let mut erased = 0;
        for seg in affected {
            let rewritten =
                maintenance::rewrite(shared, std::slice::from_ref(&seg), &nodes, false)?
                    .expect("an erasure is never abandoned");
            erased += rewritten.dropped;
            maintenance::publish_merge(shared, &[seg], rewritten.output)?;
        }
        let snapshot = {
            let mut state = shared.state.write().expect("state lock");
            state.changed();
            for &person in &persons {
                state.identity.forget_person(person);
            }
            state.identity.to_snapshot()
        };
        let number = shared.next_number.fetch_add(1, Ordering::Relaxed);
        maintenance::publish_identity(shared, number, &snapshot)?;
        self.identity = IdentityOnDisk {
            snapshot_bytes: snapshot.len(),
            log_bytes: 0,
            logs: 0,
        };
        Ok(erased)
    }
}
