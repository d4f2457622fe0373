//! Tails: in-process subscribers to newly stored events (the orchestrator reacts to them).
//!
//! A tail names the events it wants by type and name; once an append is durable, the
//! records of its wanted, non-duplicate events are queued on the tail in commit order.
//! The queue is bounded ([`Tail::events_max`]): when it is full, further events are
//! dropped and the tail is marked *lagged*, so the subscriber knows to catch up from the
//! store itself. A tail never slows or fails an append beyond copying the wanted records.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

/// Which events a tail wants: `(event type code, name)`.
pub type TailFilter = Arc<dyn Fn(u8, Option<&str>) -> bool + Send + Sync>;

pub(crate) struct TailInner {
    filter: RwLock<TailFilter>,
    queue: Mutex<VecDeque<Vec<u8>>>,
    ready: Condvar,
    lagged: AtomicBool,
    events_max: usize,
}

impl TailInner {
    pub(crate) fn wants(&self, kind: u8, name: Option<&str>) -> bool {
        (self.filter.read().expect("tail filter"))(kind, name)
    }

    pub(crate) fn push(&self, records: Vec<Vec<u8>>) {
        let mut q = self.queue.lock().expect("tail queue");
        for r in records {
            if q.len() >= self.events_max {
                self.lagged.store(true, Ordering::Relaxed);
                break;
            }
            q.push_back(r);
        }
        drop(q);
        self.ready.notify_all();
    }
}

/// The subscriber's end: stored event records (the event JSON) in commit order.
pub struct Tail {
    pub(crate) inner: Arc<TailInner>,
}

impl Tail {
    pub(crate) fn new(filter: TailFilter, events_max: usize) -> Tail {
        Tail {
            inner: Arc::new(TailInner {
                filter: RwLock::new(filter),
                queue: Mutex::new(VecDeque::new()),
                ready: Condvar::new(),
                lagged: AtomicBool::new(false),
                events_max: events_max.max(1),
            }),
        }
    }

    /// Replaces which events the tail wants (from the next append on).
    pub fn set_filter(&self, filter: TailFilter) {
        *self.inner.filter.write().expect("tail filter") = filter;
    }

    /// Up to `max` queued records, waiting at most `wait` for the first.
    pub fn poll(&self, max: usize, wait: Duration) -> Vec<Vec<u8>> {
        let mut q = self.inner.queue.lock().expect("tail queue");
        if q.is_empty() && !wait.is_zero() {
            q = self
                .inner
                .ready
                .wait_timeout(q, wait)
                .expect("tail queue")
                .0;
        }
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    /// Whether events were dropped since the last call (and clears the mark).
    pub fn take_lagged(&self) -> bool {
        self.inner.lagged.swap(false, Ordering::Relaxed)
    }

    pub fn events_max(&self) -> usize {
        self.inner.events_max
    }
}
