use super::*;
use throughline_model::Event;
use throughline_store::{Encoded, ProjectOptions, ProjectStore};

fn event(i: u64, person: u64, ts: i64) -> Event {
    serde_json::from_value(serde_json::json!({
        "message_id": format!("m{i}"), "type": "track", "event": format!("e{}", i % 3),
        "user_id": format!("u{person}"), "timestamp": ts, "received_at": ts,
    }))
    .unwrap()
}

/// A store of three segments and a log, persons interleaved across all of them, with
/// ties in time within a person.
fn store(dir: &std::path::Path, rounds: u64) -> ProjectStore {
    let _ = std::fs::remove_dir_all(dir);
    let options = ProjectOptions {
        compact_segments_min: 100,
        ..ProjectOptions::default()
    };
    let p = ProjectStore::open("p", dir, options).unwrap();
    for round in 0..rounds {
        let batch: Vec<Event> = (0..200u64)
            .map(|k| {
                let i = round * 1000 + k;
                event(i, k % 17, ((k * 7919) % 50) as i64)
            })
            .collect();
        p.append(batch.iter().map(Encoded::new).collect()).unwrap();
        if round + 1 < rounds {
            p.flush().unwrap();
        }
    }
    p
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tl-rows-{name}-{}", std::process::id()))
}

/// Rows from several segments and the log, persons interleaved across all of them,
/// come out in (person, time, arrival) order with every row once.
#[test]
fn runs_from_segments_and_the_log_merge_in_order() {
    let dir = temp_dir("merge");
    let p = store(&dir, 4);
    let snap = p.snapshot();
    assert_eq!(snap.segments().len(), 3);
    let rows = load(
        &snap,
        &Load {
            dims: vec![0],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(rows.len(), 800);
    let keys: Vec<(u32, i64, u32)> = (0..rows.len())
        .map(|i| (rows.person[i], rows.ts[i], rows.seq[i]))
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "not in (person, ts, arrival) order"
    );
    let mut seqs: Vec<u32> = rows.seq.clone();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..800).collect::<Vec<u32>>());
    let persons: HashSet<u32> = rows.person.iter().copied().collect();
    assert_eq!(persons.len(), 17);
    // Every row's name came through: as many of each as were sent.
    let names = rows.dim(0);
    let mut counts = HashMap::new();
    for i in 0..rows.len() {
        *counts.entry(names.get(i).unwrap().to_string()).or_insert(0) += 1;
    }
    let mut sent = HashMap::new();
    for round in 0..4u64 {
        for k in 0..200u64 {
            *sent
                .entry(format!("e{}", (round * 1000 + k) % 3))
                .or_insert(0) += 1;
        }
    }
    assert_eq!(counts, sent);
    drop(snap);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The streaming scan sees exactly the rows `load` keeps, per person and in order, with
/// the tag computed from their codes, whether columns stream from files or come from
/// the cache (twice: filled, then hit), and with the range and person filters applied.
#[test]
fn scan_sees_what_load_keeps() {
    let dir = temp_dir("scan");
    let p = store(&dir, 4);
    let snap = p.snapshot();
    let rows = load(
        &snap,
        &Load {
            dims: vec![0],
            keep: Some(Box::new(|_, v| v[0] != Some("e1"))),
            ..Default::default()
        },
    )
    .unwrap();
    type Seen = Vec<(u32, i64, u32, String)>;
    let want: Seen = (0..rows.len())
        .map(|i| {
            let name = rows.dim(0).get(i).unwrap().to_string();
            (rows.person[i], rows.ts[i], rows.seq[i], name)
        })
        .collect();
    let cache = ColumnCache::new(1 << 20);
    for cached in [None, Some(&cache), Some(&cache)] {
        let scan = Scan {
            inner: Inner::Store(Sources::new(&snap, None, None, &[0], cached).unwrap()),
        };
        let dict = scan.dict(0).to_vec();
        let skip = dict.iter().position(|d| d == "e1").unwrap() as u32;
        let seen = scan
            .run(
                None,
                |_, codes| {
                    if codes[0] == skip {
                        0
                    } else {
                        codes[0] as u64 + 1
                    }
                },
                Vec::new,
                |got: &mut Seen, r| {
                    for i in 0..r.ts.len() {
                        let name = dict[(r.tag[i] - 1) as usize].clone();
                        got.push((r.person, r.ts[i], r.seq[i], name));
                    }
                },
            )
            .unwrap();
        assert_eq!(seen.into_iter().flatten().collect::<Seen>(), want);
    }
    assert!(cache.stats().hits > 0 && cache.stats().columns > 0);

    let some: HashSet<u32> = rows.person.iter().copied().filter(|p| p % 3 == 0).collect();
    let every = load(
        &snap,
        &Load {
            to: Some(30),
            persons: Some(&some),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!every.is_empty() && every.len() < 800);
    let want: Vec<(u32, i64, u32)> = (0..every.len())
        .map(|i| (every.person[i], every.ts[i], every.seq[i]))
        .collect();
    assert!(want.iter().all(|w| some.contains(&w.0) && w.1 < 30));
    let scan = Scan::new(&snap, None, Some(30), &[]).unwrap();
    let seen = scan
        .run(
            Some(&some),
            |_, _| 1,
            Vec::new,
            |got: &mut Vec<(u32, i64, u32)>, r| {
                got.extend((0..r.ts.len()).map(|i| (r.person, r.ts[i], r.seq[i])));
            },
        )
        .unwrap();
    assert_eq!(seen.into_iter().flatten().collect::<Vec<_>>(), want);
    drop(scan);
    drop(snap);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A damaged column is an error, never an answer: the streamed path checks each
/// column's checksum before its rows count.
#[test]
fn a_damaged_column_fails_the_query() {
    let dir = temp_dir("damage");
    let p = store(&dir, 2);
    let path = {
        let snap = p.snapshot();
        snap.segments()[0].path.clone()
    };
    drop(p);
    // Flip one byte inside the ts column: 200 rows, after the MAGIC and the person and
    // node columns (8 + 800 + 800 bytes).
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8 + 800 + 800 + 3] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let p = ProjectStore::open("p", &dir, ProjectOptions::default()).unwrap();
    let snap = p.snapshot();
    let err = load(&snap, &Load::default()).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");
    let scan = Scan::new(&snap, None, None, &[]).unwrap();
    let err = scan
        .run(None, |_, _| 1, || 0, |n: &mut usize, r| *n += r.ts.len())
        .expect_err("a damaged column answers nothing")
        .to_string();
    assert!(err.contains("checksum"), "{err}");
    drop(scan);
    drop(snap);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}
