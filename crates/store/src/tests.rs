//! Model-based test of the store (in the spirit of sled's fuzz_model): random appends with
//! retried ids, flushes, compactions, erasures and reboots, compared after every step
//! against a plain map of what must be stored.

use std::collections::BTreeMap;

use throughline_model::{Event, EventType};

use crate::testutil::{Rng, TempDir};
use crate::{Encoded, ProjectOptions, ProjectStore};

fn encode(events: &[Event]) -> Vec<Encoded> {
    events.iter().map(Encoded::new).collect()
}

fn event(id: u64, user: u64, device: u64, ts: i64, identify: bool) -> Event {
    Event {
        message_id: format!("m{id}"),
        event_type: if identify {
            EventType::Identify
        } else {
            EventType::Track
        },
        event: (!identify).then(|| format!("e{}", id % 5)),
        user_id: identify.then(|| format!("u{user}")),
        anonymous_id: Some(format!("d{device}")),
        previous_id: None,
        group_id: None,
        email: None,
        timestamp: ts,
        received_at: ts,
        original_timestamp: None,
        sent_at: None,
        page_url: None,
        page_path: None,
        referrer: None,
        utm: Default::default(),
        click_id: None,
        properties: serde_json::json!({"n": id, "s": "ünï €"})
            .as_object()
            .unwrap()
            .clone(),
        context: Default::default(),
        traits: Default::default(),
    }
}

fn options() -> ProjectOptions {
    ProjectOptions {
        flush_bytes: 8 << 10,
        compact_segments_min: 3,
        compact_rows_max: 400,
        ..ProjectOptions::default()
    }
}

fn contents(p: &ProjectStore) -> BTreeMap<String, Event> {
    let mut out = BTreeMap::new();
    p.snapshot()
        .for_each_event(|e, _| {
            assert!(
                out.insert(e.message_id.clone(), e).is_none(),
                "stored twice"
            );
            Ok(())
        })
        .unwrap();
    out
}

#[test]
fn random_operations_match_a_map() {
    for seed in 0..6 {
        let dir = TempDir::new("model");
        let mut rng = Rng::new(seed);
        let mut model: BTreeMap<String, Event> = BTreeMap::new();
        // Ids ever acknowledged: erasure keeps their hashes, so retries stay duplicates.
        let mut ever = std::collections::BTreeSet::new();
        let mut store = ProjectStore::open("p", dir.path(), options()).unwrap();
        let mut next_id = 0u64;
        for step in 0..120 {
            match rng.below(100) {
                0..=69 => {
                    let n = rng.below(40) + 1;
                    let mut batch = Vec::new();
                    for _ in 0..n {
                        // One in five messages retries an id already sent.
                        let id = if next_id > 0 && rng.below(5) == 0 {
                            rng.below(next_id)
                        } else {
                            next_id += 1;
                            next_id - 1
                        };
                        let user = id % 17;
                        batch.push(event(
                            id,
                            user,
                            user * 2 + id % 2,
                            (id as i64) * 1000,
                            id % 7 == 0,
                        ));
                    }
                    let outcome = store.append(encode(&batch)).unwrap();
                    for (e, dup) in batch.into_iter().zip(outcome.duplicate) {
                        assert_eq!(dup, ever.contains(&e.message_id), "seed {seed} step {step}");
                        if ever.insert(e.message_id.clone()) {
                            model.insert(e.message_id.clone(), e);
                        }
                    }
                }
                70..=79 => store.flush().unwrap(),
                80..=84 => {
                    let user = format!("u{}", rng.below(17));
                    let person = store.snapshot().identity().find_person(&user);
                    let erased = store.delete_person(&user).unwrap();
                    if person.is_some() {
                        let before = model.len();
                        // The model knows persons through the graph the store built before.
                        let gone: Vec<String> = model
                            .iter()
                            .filter(|(_, e)| contents_person_gone(&store, e))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in gone {
                            model.remove(&k);
                        }
                        assert_eq!(before - model.len(), erased, "seed {seed} step {step}");
                    }
                }
                _ => {
                    drop(store);
                    store = ProjectStore::open("p", dir.path(), options()).unwrap();
                }
            }
            let got = contents(&store);
            assert_eq!(got.len(), model.len(), "seed {seed} step {step}");
            assert!(got.keys().eq(model.keys()), "seed {seed} step {step}");
        }
        // Erased ids stay recognised as duplicates, so a retry cannot resurrect them.
        let got = contents(&store);
        assert_eq!(got, model);
    }
}

/// After an erasure, an event is gone exactly when the id it was sent under is forgotten.
fn contents_person_gone(store: &ProjectStore, e: &Event) -> bool {
    let snap = store.snapshot();
    let g = snap.identity();
    let known = e
        .user_id
        .as_deref()
        .map(|u| g.lookup(throughline_identity::IdKind::User, u).is_some())
        .unwrap_or_else(|| {
            g.lookup(
                throughline_identity::IdKind::Anonymous,
                e.anonymous_id.as_deref().unwrap(),
            )
            .is_some()
        });
    !known
}

#[test]
fn events_in_the_log_survive_reopen_and_are_not_duplicated() {
    let dir = TempDir::new("reopen");
    let batch: Vec<Event> = (0..100)
        .map(|i| event(i, i % 3, i % 5, i as i64, i % 4 == 0))
        .collect();
    {
        let p = ProjectStore::open("p", dir.path(), ProjectOptions::default()).unwrap();
        assert_eq!(p.append(encode(&batch)).unwrap().stored(), 100);
    }
    let p = ProjectStore::open("p", dir.path(), ProjectOptions::default()).unwrap();
    assert_eq!(p.stats().events_in_log, 100);
    assert_eq!(p.append(encode(&batch)).unwrap().duplicates(), 100);
    p.flush().unwrap();
    drop(p);
    let p = ProjectStore::open("p", dir.path(), ProjectOptions::default()).unwrap();
    assert_eq!(p.append(encode(&batch)).unwrap().duplicates(), 100);
    assert_eq!(p.stats().events, 100);
    assert_eq!(p.stats().events_in_log, 0);
}

#[test]
fn unlogged_appends_are_durable_after_flush_only() {
    let dir = TempDir::new("unlogged");
    let batch: Vec<Event> = (0..40)
        .map(|i| event(i, i % 3, i % 5, i as i64, false))
        .collect();
    {
        let p = ProjectStore::open("p", dir.path(), ProjectOptions::default()).unwrap();
        p.append_unlogged(encode(&batch[..20])).unwrap();
        assert_eq!(p.stats().events, 20);
        // Not flushed: gone with the process, as documented.
    }
    {
        let p = ProjectStore::open("p", dir.path(), ProjectOptions::default()).unwrap();
        assert_eq!(p.stats().events, 0);
        p.append_unlogged(encode(&batch)).unwrap();
        p.flush().unwrap();
    }
    let p = ProjectStore::open("p", dir.path(), ProjectOptions::default()).unwrap();
    assert_eq!(p.stats().events, 40);
    assert_eq!(p.append(encode(&batch)).unwrap().duplicates(), 40);
}

#[test]
fn segments_are_sorted_by_person_then_time() {
    let dir = TempDir::new("sorted");
    let p = ProjectStore::open("p", dir.path(), ProjectOptions::default()).unwrap();
    let batch: Vec<Event> = (0..500)
        .rev()
        .map(|i| event(i, i % 13, i % 29, (i * 7 % 101) as i64, i % 9 == 0))
        .collect();
    p.append(encode(&batch)).unwrap();
    p.flush().unwrap();
    let snap = p.snapshot();
    let seg = &snap.segments()[0];
    let persons = seg.read_column::<u32>("person").unwrap();
    let ts = seg.read_column::<i64>("ts").unwrap();
    let keys: Vec<(u32, i64)> = persons.into_iter().zip(ts).collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn a_damaged_segment_is_reported_by_name() {
    let dir = TempDir::new("damaged");
    {
        let p = ProjectStore::open("p", dir.path(), ProjectOptions::default()).unwrap();
        p.append(encode(
            &(0..50)
                .map(|i| event(i, 1, 1, i as i64, false))
                .collect::<Vec<_>>(),
        ))
        .unwrap();
        p.flush().unwrap();
    }
    let seg = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&seg).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let p = ProjectStore::open("p", dir.path(), ProjectOptions::default()).unwrap();
    let err = p
        .snapshot()
        .for_each_event(|_, _| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains(".seg") && err.contains("checksum"), "{err}");
}

#[test]
fn a_second_process_cannot_take_a_held_directory() {
    let dir = TempDir::new("lock");
    let _held = crate::DirLock::acquire(dir.path()).unwrap();
    // flock is per open file description, so a second acquire in-process conflicts too.
    let err = crate::DirLock::acquire(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&std::process::id().to_string()), "{err}");
}

#[test]
fn compaction_merges_segments_of_one_size_tier_only() {
    let dir = TempDir::new("tiers");
    let options = ProjectOptions {
        compact_segments_min: 3,
        compact_rows_max: 1_000_000,
        ..ProjectOptions::default()
    };
    let p = ProjectStore::open("p", dir.path(), options).unwrap();
    let mut id = 0;
    let mut flush_rows = |p: &ProjectStore, n: u64| {
        let batch: Vec<Event> = (id..id + n)
            .map(|i| event(i, i % 7, i % 11, i as i64, false))
            .collect();
        id += n;
        p.append(encode(&batch)).unwrap();
        p.flush().unwrap();
    };
    // Two small segments and a big one: no tier holds three yet.
    flush_rows(&p, 1000);
    flush_rows(&p, 10);
    flush_rows(&p, 10);
    assert_eq!(p.stats().segments, 3);
    // A third small one completes the small tier: those three merge, the big one stays.
    flush_rows(&p, 10);
    let rows: Vec<usize> = p.snapshot().segments().iter().map(|s| s.rows()).collect();
    assert_eq!(rows, [1000, 30]);
    assert_eq!(p.stats().events, 1030);
}

#[test]
fn reopening_leaves_no_trail_of_empty_logs() {
    let dir = TempDir::new("empty-logs");
    for _ in 0..5 {
        drop(ProjectStore::open("p", dir.path(), ProjectOptions::default()).unwrap());
    }
    let logs = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    assert_eq!(logs, 1, "only the current, empty log remains");
}

#[test]
fn a_merge_never_grows_past_the_row_bound() {
    let dir = TempDir::new("tier-bound");
    let options = ProjectOptions {
        compact_segments_min: 3,
        compact_rows_max: 250,
        ..ProjectOptions::default()
    };
    let p = ProjectStore::open("p", dir.path(), options).unwrap();
    for round in 0..9u64 {
        let batch: Vec<Event> = (0..100)
            .map(|k| event(round * 100 + k, k % 5, k % 7, k as i64, false))
            .collect();
        p.append(encode(&batch)).unwrap();
        p.flush().unwrap();
    }
    let rows: Vec<usize> = p.snapshot().segments().iter().map(|s| s.rows()).collect();
    assert!(rows.iter().all(|&r| r <= 250), "{rows:?}");
    assert_eq!(rows.iter().sum::<usize>(), 900);
}

/// The newest events agree with sorting everything by (time, arrival), across segments
/// of several payload blocks, the log, and ties in time.
#[test]
fn newest_events_are_the_latest_by_time_across_segments_and_the_log() {
    let dir = TempDir::new("newest");
    let p = ProjectStore::open("p", dir.path(), ProjectOptions::default()).unwrap();
    let mut all: Vec<(i64, u64)> = Vec::new();
    let mut id = 0u64;
    for round in 0..3u64 {
        let batch: Vec<Event> = (0..700u64)
            .map(|k| {
                id += 1;
                // Times interleave across rounds, with ties, so no segment is all newer.
                let ts = ((k * 7919 + round * 13) % 997) as i64;
                let mut e = event(id, k % 31, k % 47, ts, false);
                // Big payloads: each segment has several checksummed payload blocks.
                e.properties
                    .insert("pad".into(), serde_json::json!("x".repeat(4000)));
                all.push((ts, id));
                e
            })
            .collect();
        p.append(encode(&batch)).unwrap();
        if round < 2 {
            p.flush().unwrap();
        }
    }
    let snap = p.snapshot();
    assert_eq!(snap.segments().len(), 2);
    // Arrival order is id order here, so ties in time break by the larger id.
    all.sort_by_key(|&(ts, id)| std::cmp::Reverse((ts, id)));
    for limit in [0usize, 1, 25, 2100, 5000] {
        let got: Vec<(i64, String)> = snap
            .newest_events(limit)
            .unwrap()
            .into_iter()
            .map(|(_, e)| (e.timestamp, e.message_id))
            .collect();
        let want: Vec<(i64, String)> = all
            .iter()
            .take(limit)
            .map(|&(ts, id)| (ts, format!("m{id}")))
            .collect();
        assert_eq!(got, want, "limit {limit}");
    }
}
