//! The latest few answers of a derived computation over the embedded store, kept for the
//! requests that follow: a dashboard view sends its requests at once, and several of them
//! need the same intermediate answer (the first touches behind one filter, the survey
//! answers of one range). Keys start with `Snapshot::version`, which changes with every
//! append, flush, merge and erasure, so a kept answer is never stale; requests for one key
//! wait for the first one's answer instead of computing it beside it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use crate::QueryError;

/// Filled once; `None` when the computation failed (each request then computes, and
/// reports, its own).
type Slot<V> = Arc<OnceLock<Option<Arc<V>>>>;

pub struct Kept<K, V> {
    entries: Mutex<VecDeque<(K, Slot<V>)>>,
    max: usize,
}

impl<K: PartialEq, V> Kept<K, V> {
    /// At most `max` answers, the oldest leaving first.
    pub const fn new(max: usize) -> Kept<K, V> {
        Kept {
            entries: Mutex::new(VecDeque::new()),
            max,
        }
    }

    /// The answer kept for `key`, else `compute`'s, kept.
    pub fn get(
        &self,
        key: K,
        compute: impl Fn() -> Result<V, QueryError>,
    ) -> Result<Arc<V>, QueryError> {
        let slot = {
            let mut entries = self.entries.lock().expect("kept answers");
            match entries.iter().find(|(k, _)| *k == key) {
                Some((_, slot)) => slot.clone(),
                None => {
                    let slot = Slot::default();
                    entries.push_back((key, slot.clone()));
                    if entries.len() > self.max {
                        entries.pop_front();
                    }
                    slot
                }
            }
        };
        let mut failed = None;
        let kept = slot.get_or_init(|| match compute() {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                failed = Some(e);
                None
            }
        });
        match kept {
            Some(v) => Ok(v.clone()),
            None => {
                self.entries
                    .lock()
                    .expect("kept answers")
                    .retain(|(_, s)| !Arc::ptr_eq(s, &slot));
                match failed {
                    Some(e) => Err(e),
                    None => compute().map(Arc::new),
                }
            }
        }
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("kept answers").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_computation_per_key_and_failures_are_not_kept() {
        let kept: Kept<u32, String> = Kept::new(2);
        let runs = AtomicUsize::new(0);
        let compute = |v: &'static str| {
            let runs = &runs;
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(v.to_string())
            }
        };
        // Eight requests for one key at once: one computes, the others wait for it.
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let c = compute("a");
                    assert_eq!(
                        *kept
                            .get(1, || {
                                std::thread::sleep(std::time::Duration::from_millis(20));
                                c()
                            })
                            .unwrap(),
                        "a"
                    );
                });
            }
        });
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // A failure reaches its caller and leaves nothing behind.
        let err = kept.get(2, || Err(QueryError::invalid("no"))).unwrap_err();
        assert!(err.to_string().contains("no"), "{err}");
        assert_eq!(kept.len(), 1);
        assert_eq!(*kept.get(2, compute("b")).unwrap(), "b");
        // The oldest leaves once a third key comes.
        kept.get(3, compute("c")).unwrap();
        assert_eq!(kept.len(), 2);
        let before = runs.load(Ordering::SeqCst);
        kept.get(1, compute("a")).unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), before + 1, "key 1 was dropped");
    }
}
