//! Model-based test of the store (in the spirit of sled's fuzz_model): random appends with
//! retried ids, flushes, compactions, erasures and reboots, compared after every step
//! against a plain map of what must be stored.

use std::collections::BTreeMap;

use throughline_model::{Event, EventType};

use crate::testutil::{Rng, TempDir};
use crate::{EventBatch, ProjectOptions, ProjectStore};

pub(crate) fn encode(events: &[Event]) -> EventBatch {
    EventBatch::of(events)
}

pub(crate) fn event(id: u64, user: u64, device: u64, ts: i64, identify: bool) -> Event {
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

pub(crate) fn options() -> ProjectOptions {
    ProjectOptions {
        flush_bytes: 8 << 10,
        compact_segments_min: 3,
        compact_rows_max: 400,
        ..ProjectOptions::default()
    }
}

pub(crate) fn contents(p: &ProjectStore) -> BTreeMap<String, Event> {
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
        let mut indexed = 0;
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
                        let mut e =
                            event(id, user, user * 2 + id % 2, (id as i64) * 1000, id % 7 == 0);
                        // Conversion values of every shape the number rule meets.
                        let revenue = match rng.below(8) {
                            0 => Some(serde_json::json!(rng.below(1000) as f64 / 8.0)),
                            1 => Some(serde_json::json!(format!(" {} ", rng.below(50)))),
                            2 => Some(serde_json::json!({"revenue": 3})),
                            3 => Some(serde_json::json!("n/a")),
                            _ => None,
                        };
                        if let Some(v) = revenue {
                            e.properties.insert("revenue".into(), v);
                        }
                        batch.push(e);
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
                    let segments: Vec<_> = std::fs::read_dir(dir.path().join("segments"))
                        .unwrap()
                        .map(|e| e.unwrap().path())
                        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                        .collect();
                    // Some segments as binaries before number columns wrote them: merges
                    // of old and new inputs derive the columns from the records.
                    for path in segments {
                        if rng.below(3) == 0 {
                            crate::segment::strip_numbers(&path);
                        }
                    }
                    store = ProjectStore::open("p", dir.path(), options()).unwrap();
                }
            }
            indexed += assert_numbers_match_records(&store, &format!("seed {seed} step {step}"));
            let got = contents(&store);
            assert_eq!(got.len(), model.len(), "seed {seed} step {step}");
            assert!(got.keys().eq(model.keys()), "seed {seed} step {step}");
        }
        // Erased ids stay recognised as duplicates, so a retry cannot resurrect them.
        let got = contents(&store);
        assert_eq!(got, model);
        assert!(
            indexed > 0,
            "seed {seed}: no segment with number columns was checked"
        );
    }
}

/// Every segment with number columns holds, for each key it lists, exactly the rows whose
/// decoded record has a number there (by `number_of`) and those numbers' bits; a complete
/// list names every key with a number.
pub(crate) fn assert_numbers_match_records(store: &ProjectStore, at: &str) -> usize {
    let snap = store.snapshot();
    let mut checked = 0;
    for seg in snap.segments() {
        let Some(meta) = seg.numbers_meta().cloned() else {
            continue;
        };
        let mut want: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
        seg.for_each_payload(|row, payload| {
            let e: Event = serde_json::from_slice(payload).unwrap();
            for (k, v) in &e.properties {
                if let Some(n) = throughline_model::number_of(v) {
                    want.entry(k.clone())
                        .or_default()
                        .push((row as u32, n.to_bits()));
                }
            }
            Ok(())
        })
        .unwrap();
        for key in &meta.keys {
            let (rows, values) = seg.number_column(key).unwrap().unwrap();
            let got: Vec<(u32, u64)> = rows
                .into_iter()
                .zip(values.iter().map(|v| v.to_bits()))
                .collect();
            assert_eq!(
                &got,
                want.get(key).unwrap_or(&Vec::new()),
                "{at}: {key} in {:?}",
                seg.path
            );
        }
        if meta.complete {
            for key in want.keys() {
                assert!(
                    meta.keys.contains(key),
                    "{at}: {key} missing from a complete list"
                );
            }
        }
        checked += 1;
    }
    checked
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
        p.settle().unwrap();
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
        p.settle().unwrap();
    }
    let rows: Vec<usize> = p.snapshot().segments().iter().map(|s| s.rows()).collect();
    assert!(rows.iter().all(|&r| r <= 250), "{rows:?}");
    assert_eq!(rows.iter().sum::<usize>(), 900);
}

/// Options that keep the flusher and the compactor busy: a table per few batches, a
/// merge as soon as two segments exist.
fn busy_options() -> ProjectOptions {
    ProjectOptions {
        flush_bytes: 16 << 10,
        frozen_tables_max: 2,
        compact_segments_min: 2,
        compact_rows_max: 5_000,
        ..ProjectOptions::default()
    }
}

/// Reads while flushes and compactions publish beside the writer: every snapshot holds
/// each acknowledged event exactly once, whichever of the active table, a frozen table or
/// a segment it is in at that moment.
#[test]
fn reads_during_background_flushes_see_every_acknowledged_event_once() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let dir = TempDir::new("concurrent-reads");
    let p = ProjectStore::open("p", dir.path(), busy_options()).unwrap();
    let acked = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let batches = 250u64;
    let per_batch = 20u64;
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut reads = 0;
                while !done.load(Ordering::Relaxed) || reads == 0 {
                    // Acknowledged before the snapshot was taken: must all be in it.
                    let before = acked.load(Ordering::Acquire);
                    let snap = p.snapshot();
                    let mut ids = HashSet::new();
                    snap.for_each_event(|e, _| {
                        assert!(ids.insert(e.message_id.clone()), "{} twice", e.message_id);
                        Ok(())
                    })
                    .unwrap();
                    assert_eq!(ids.len(), snap.event_count());
                    let in_log = snap.log_rows().count();
                    let in_segments: usize = snap.segments().iter().map(|s| s.rows()).sum();
                    assert_eq!(in_log + in_segments, ids.len());
                    for i in 0..before {
                        assert!(ids.contains(&format!("m{i}")), "acknowledged m{i} missing");
                    }
                    reads += 1;
                }
            });
        }
        for b in 0..batches {
            let batch: Vec<Event> = (b * per_batch..(b + 1) * per_batch)
                .map(|i| event(i, i % 23, i % 31, (i * 37 % 1000) as i64, i % 11 == 0))
                .collect();
            // Every tenth batch retries the one before: all duplicates.
            if b % 10 == 9 {
                let retry: Vec<Event> = ((b - 1) * per_batch..b * per_batch)
                    .map(|i| event(i, i % 23, i % 31, (i * 37 % 1000) as i64, i % 11 == 0))
                    .collect();
                assert_eq!(p.append(encode(&retry)).unwrap().duplicates(), retry.len());
            }
            assert_eq!(p.append(encode(&batch)).unwrap().stored(), batch.len());
            acked.store((b + 1) * per_batch, Ordering::Release);
        }
        done.store(true, Ordering::Relaxed);
    });
    p.settle().unwrap();
    assert!(p.metrics.flushes.load(Ordering::Relaxed) > 10);
    assert!(p.metrics.compactions.load(Ordering::Relaxed) > 2);
    assert_eq!(contents(&p).len() as u64, batches * per_batch);
}

/// The child half of [`a_crash_during_background_flushes_and_compactions_loses_nothing`]:
/// appends numbered batches forever, saying on stdout what it is about to send and what
/// was acknowledged, until the parent kills it.
fn crash_child(dir: &std::path::Path, first: u64, retry: Option<(u64, u64)>) -> ! {
    use std::io::Write;
    let p = ProjectStore::open("p", dir, busy_options()).unwrap();
    let mut out = std::io::stdout().lock();
    let make = |a: u64, z: u64| -> Vec<Event> {
        (a..z)
            .map(|i| event(i, i % 41, i % 53, (i * 7 % 5000) as i64, i % 13 == 0))
            .collect()
    };
    // Like an SDK after a crash, it first re-sends the batch that got no answer.
    if let Some((a, z)) = retry {
        p.append(encode(&make(a, z))).unwrap();
        writeln!(out, "acked {a} {z}").unwrap();
    }
    let mut a = first;
    loop {
        let z = a + 1 + a % 37;
        writeln!(out, "sending {a} {z}").unwrap();
        out.flush().unwrap();
        p.append(encode(&make(a, z))).unwrap();
        writeln!(
            out,
            "acked {a} {z} flushes {} compactions {}",
            p.metrics.flushes.load(std::sync::atomic::Ordering::Relaxed),
            p.metrics
                .compactions
                .load(std::sync::atomic::Ordering::Relaxed)
        )
        .unwrap();
        out.flush().unwrap();
        a = z;
    }
}

/// `kill -9` at random moments while the writer, the flusher and the compactor all work:
/// after every restart each acknowledged event is stored once, retries included, and
/// nothing that was never sent appears.
#[test]
fn a_crash_during_background_flushes_and_compactions_loses_nothing() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    const CHILD: &str = "THROUGHLINE_STORE_CRASH_CHILD";
    if let Ok(spec) = std::env::var(CHILD) {
        let parts: Vec<String> = spec.split(' ').map(str::to_string).collect();
        let retry =
            (parts.len() == 4).then(|| (parts[2].parse().unwrap(), parts[3].parse().unwrap()));
        crash_child(
            std::path::Path::new(&parts[0]),
            parts[1].parse().unwrap(),
            retry,
        );
    }
    let dir = TempDir::new("crash-child");
    let mut rng = Rng::new(7);
    let mut acked = std::collections::BTreeSet::new();
    let mut sent_max = 0u64;
    let mut pending: Option<(u64, u64)> = None;
    let mut busy_lives = 0;
    for _life in 0..6 {
        let mut spec = format!("{} {}", dir.path().display(), sent_max);
        if let Some((a, z)) = pending {
            spec = format!("{spec} {a} {z}");
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::a_crash_during_background_flushes_and_compactions_loses_nothing",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(std::time::Duration::from_millis(300 + rng.below(700)));
        child.kill().unwrap();
        child.wait().unwrap();
        let mut last_counts = (0u64, 0u64);
        pending = None;
        for line in reader.join().unwrap() {
            let w: Vec<&str> = line.split(' ').collect();
            let (a, z): (u64, u64) = match (w.first(), w.get(1), w.get(2)) {
                (Some(_), Some(a), Some(z)) => match (a.parse(), z.parse()) {
                    (Ok(a), Ok(z)) => (a, z),
                    _ => continue,
                },
                _ => continue,
            };
            match w[0] {
                "sending" => {
                    sent_max = sent_max.max(z);
                    pending = Some((a, z));
                }
                "acked" => {
                    acked.extend(a..z);
                    if pending == Some((a, z)) {
                        pending = None;
                    }
                    if w.len() == 7 {
                        last_counts = (w[4].parse().unwrap(), w[6].parse().unwrap());
                    }
                }
                _ => {}
            }
        }
        if last_counts.0 > 0 && last_counts.1 > 0 {
            busy_lives += 1;
        }
        // Reopening recovers: every acknowledged event once, nothing never sent.
        let p = ProjectStore::open("p", dir.path(), busy_options()).unwrap();
        let got = contents(&p);
        for i in &acked {
            assert!(got.contains_key(&format!("m{i}")), "acknowledged m{i} lost");
        }
        for k in got.keys() {
            let i: u64 = k[1..].parse().unwrap();
            assert!(i < sent_max, "{k} was never sent");
        }
    }
    assert!(acked.len() > 1000, "too little traffic: {}", acked.len());
    assert!(
        busy_lives >= 3,
        "the kills should land among background flushes and compactions"
    );
}

/// Flushes after the first write only what changed in the identity graph; reopening
/// replays those logs onto the last full snapshot and gets the very same graph.
#[test]
fn the_identity_graph_reopens_from_a_snapshot_and_change_logs() {
    let dir = TempDir::new("identity-logs");
    let options = ProjectOptions {
        compact_segments_min: 100,
        ..ProjectOptions::default()
    };
    let p = ProjectStore::open("p", dir.path(), options.clone()).unwrap();
    let base: Vec<Event> = (0..3000)
        .map(|i| event(i, i, 10_000 + i, i as i64, false))
        .collect();
    p.append(encode(&base)).unwrap();
    p.flush().unwrap();
    for round in 0..5u64 {
        // Known devices, a few of them identifying now: merges, and new user ids.
        let batch: Vec<Event> = (0..200)
            .map(|k| {
                let i = 100_000 + round * 1000 + k;
                event(
                    i,
                    5000 + round * 10 + k % 10,
                    10_000 + k * 7,
                    i as i64,
                    k % 20 == 0,
                )
            })
            .collect();
        p.append(encode(&batch)).unwrap();
        p.flush().unwrap();
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("MANIFEST")).unwrap()).unwrap();
    let logs = manifest["identity_logs"].as_array().unwrap().len();
    assert!(
        logs >= 3,
        "flushes should log changes, not snapshot: {manifest}"
    );
    let before = p.snapshot().identity().to_snapshot();
    drop(p);
    let p = ProjectStore::open("p", dir.path(), options).unwrap();
    assert_eq!(p.snapshot().identity().to_snapshot(), before);
    // An erasure publishes a full snapshot again.
    p.delete_person("u5000").unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("MANIFEST")).unwrap()).unwrap();
    assert!(manifest["identity_logs"].as_array().unwrap().is_empty());
}

/// After flushes and merges, every row's dimension columns still hold what its own
/// event says (names, paths, UTM, referrer host, click id), and nothing is left out.
#[test]
fn merged_segments_keep_each_rows_dimensions() {
    let dir = TempDir::new("merge-dims");
    let p = ProjectStore::open("p", dir.path(), busy_options()).unwrap();
    let mut n = 0;
    for round in 0..40u64 {
        let batch: Vec<Event> = (0..25u64)
            .map(|k| {
                let i = round * 25 + k;
                let mut e = event(i, i % 19, i % 23, (i * 13 % 777) as i64, i % 9 == 0);
                if i % 3 == 0 {
                    e.page_path = Some(format!("/p/{}", i % 7));
                    e.referrer = Some(format!("https://www.site{}.example/x", i % 4));
                    e.utm.source = Some(format!("src{}", i % 5));
                    e.utm.campaign = (i % 2 == 0).then(|| "spring ünï".to_string());
                    e.click_id = (i % 6 == 0).then(|| throughline_model::ClickId {
                        param: "gclid".into(),
                        value: format!("g{i}"),
                    });
                }
                e
            })
            .collect();
        n += batch.len();
        p.append(encode(&batch)).unwrap();
    }
    p.settle().unwrap();
    assert!(
        p.metrics
            .compactions
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    let snap = p.snapshot();
    let mut rows = 0;
    for seg in snap.segments() {
        let dims: Vec<(Vec<u32>, Vec<String>)> = throughline_model::DIMS
            .iter()
            .map(|d| seg.dim(d).unwrap())
            .collect();
        seg.for_each_payload(|row, payload| {
            let e: Event = serde_json::from_slice(payload).unwrap();
            for (d, want) in e.dims().iter().enumerate() {
                let (codes, dict) = &dims[d];
                let got =
                    (codes[row] != crate::NO_VALUE).then(|| dict[codes[row] as usize].as_str());
                assert_eq!(got, *want, "dimension {d} of {}", e.message_id);
            }
            rows += 1;
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(rows + snap.log_rows().count(), n);
}

#[test]
fn a_tail_sees_wanted_stored_events_once_in_commit_order_and_is_bounded() {
    let dir = TempDir::new("tail");
    let p = ProjectStore::open("p", dir.path(), options()).unwrap();
    // Only identify events (no name) and tracks named like `Crash`: none here.
    let tail = p.tail(
        std::sync::Arc::new(|kind, name: Option<&str>| {
            kind == EventType::Identify.code() || name == Some("x")
        }),
        3,
    );
    let evs: Vec<Event> = (0..4)
        .map(|i| event(i, i, i, 1000 + i as i64, i % 2 == 0))
        .collect();
    p.append(encode(&evs)).unwrap();
    // Duplicates are stored once and not tailed again.
    p.append(encode(&evs)).unwrap();
    let got = tail.poll(10, std::time::Duration::ZERO);
    let ids: Vec<String> = got
        .iter()
        .map(|r| serde_json::from_slice::<Event>(r).unwrap().message_id)
        .collect();
    let want: Vec<String> = evs
        .iter()
        .filter(|e| e.event_type == EventType::Identify)
        .map(|e| e.message_id.clone())
        .collect();
    assert_eq!(ids, want);
    assert!(!tail.take_lagged());
    // Past its bound the tail drops and says so.
    let more: Vec<Event> = (10..20)
        .map(|i| event(i, i, i, 2000 + i as i64, true))
        .collect();
    p.append(encode(&more)).unwrap();
    assert_eq!(tail.poll(100, std::time::Duration::ZERO).len(), 3);
    assert!(tail.take_lagged());
    // A dropped tail costs appends nothing.
    drop(tail);
    p.append(encode(&[event(30, 30, 30, 3000, true)])).unwrap();
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

/// Erasure by node numbers (what the ClickHouse backend sends a migrated project's store)
/// removes every person holding one of the nodes, whole, and nothing else; nodes the store
/// never saw and a repeat erase nothing.
#[test]
fn erasure_by_nodes_removes_the_persons_holding_them() {
    let dir = TempDir::new("erase-nodes");
    let p = ProjectStore::open("p", dir.path(), options()).unwrap();
    // Devices d0..d9 identify as u0..u4 (two devices each), then anonymous events.
    let mut batch = Vec::new();
    for d in 0..10u64 {
        batch.push(event(d, d / 2, d, d as i64, true));
    }
    for i in 10..200u64 {
        batch.push(event(i, 0, i % 10, i as i64, false));
    }
    p.append(encode(&batch)).unwrap();
    let (node_of_d2, count) = {
        let snap = p.snapshot();
        let g = snap.identity();
        let n = g
            .lookup(throughline_identity::IdKind::Anonymous, "d2")
            .unwrap();
        (n, g.node_count() as u32)
    };
    // u1 holds d2 and d3: 2 identifies + 2 * 19 tracks.
    let erased = p
        .erase(crate::Erase::Nodes(vec![node_of_d2, count + 5]))
        .unwrap();
    assert_eq!(erased, 40);
    let snap = p.snapshot();
    let g = snap.identity();
    for id in ["u1", "d2", "d3"] {
        assert_eq!(g.find_person(id), None, "{id}");
    }
    assert!(g.find_person("u2").is_some() && g.find_person("d4").is_some());
    assert_eq!(snap.event_count(), 160);
    drop(snap);
    assert_eq!(p.erase(crate::Erase::Nodes(vec![node_of_d2])).unwrap(), 0);
    assert_eq!(p.stats().events, 160);
}

/// Rare names read from the segments' copies give exactly what a scan of every payload
/// gives, through flushes, merges and an erasure; and the copies are byte-equal to the
/// payload rows they stand for.
#[test]
fn rare_names_read_from_the_copy_equal_a_full_scan() {
    let dir = TempDir::new("rare");
    let p = ProjectStore::open("p", dir.path(), busy_options()).unwrap();
    let name_of = |i: u64| match i % 97 {
        0 => "Survey Responded",
        1 | 2 => "Support Ticket Opened",
        _ => "Page Viewed",
    };
    for round in 0..40u64 {
        let batch: Vec<Event> = (0..25u64)
            .map(|k| {
                let i = round * 25 + k;
                let mut e = event(i, i % 19, i % 23, (i * 13 % 777) as i64, i % 11 == 0);
                if e.event.is_some() {
                    e.event = Some(name_of(i).to_string());
                }
                e
            })
            .collect();
        p.append(encode(&batch)).unwrap();
    }
    p.settle().unwrap();
    let wanted = |n: &str| n == "Survey Responded" || n == "Support Ticket Opened";
    let check = |p: &ProjectStore| {
        let snap = p.snapshot();
        let mut copied = 0;
        for seg in snap.segments() {
            let Some(rare) = seg.rare_names() else {
                continue;
            };
            copied += 1;
            assert!(!rare.iter().any(|n| n == "Page Viewed"), "{rare:?}");
            let mut full = BTreeMap::new();
            seg.for_each_payload(|row, b| {
                full.insert(row, b.to_vec());
                Ok(())
            })
            .unwrap();
            seg.for_each_rare_payload(|row, b| {
                assert_eq!(full.get(&row).map(Vec::as_slice), Some(b), "row {row}");
                Ok(())
            })
            .unwrap();
            seg.verify().unwrap();
        }
        assert!(copied > 0, "no segment has a rare copy");
        let mut via_copy = Vec::new();
        snap.for_each_event_named(wanted, |seq, e| {
            via_copy.push((seq, e.message_id));
            Ok(())
        })
        .unwrap();
        let mut via_scan = Vec::new();
        snap.for_each_event_where(
            |_, n| n.is_some_and(wanted),
            |seq, _, e| {
                via_scan.push((seq, e.message_id));
                Ok(())
            },
        )
        .unwrap();
        assert!(via_copy.len() > 20, "{}", via_copy.len());
        assert_eq!(via_copy, via_scan);
    };
    check(&p);
    let node = p
        .snapshot()
        .identity()
        .lookup(throughline_identity::IdKind::Anonymous, "d0")
        .unwrap();
    assert!(p.erase(crate::Erase::Nodes(vec![node])).unwrap() > 0);
    p.settle().unwrap();
    check(&p);
}
