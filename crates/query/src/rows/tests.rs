use super::*;
use throughline_model::Event;
use throughline_store::{EventBatch, ProjectOptions, ProjectStore};

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
        p.append(EventBatch::of(&batch)).unwrap();
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

/// Filling the merged table from several ranges of persons at once (one thread each, as
/// `load` does on a large store) gives the table one range gives, row for row.
#[test]
fn the_merged_table_is_the_same_filled_by_one_range_or_several() {
    let dir = temp_dir("ranges");
    let p = store(&dir, 4);
    let snap = p.snapshot();
    let dims = [0usize];
    let merged = |ranges: Vec<Range<u64>>| {
        let sources = Sources::new(&snap, None, None, &dims, None).unwrap();
        let runs = sources
            .runs(None, true, &[], &|| (), &|_: &mut (), _, _| 1)
            .unwrap();
        assert!(runs.len() >= 3, "rows of several sources");
        merge_rows_in(&runs, &dims, sources.dicts, ranges)
    };
    let one = merged(std::iter::once(0..u64::MAX).collect());
    assert_eq!(one.len(), 800);
    // Ranges that split the 17 persons unevenly, one of them empty.
    let several = merged(vec![0..5, 5..5, 5..11, 11..u64::MAX]);
    assert_eq!(several.person, one.person);
    assert_eq!(several.ts, one.ts);
    assert_eq!(several.seq, one.seq);
    assert_eq!(several.kind, one.kind);
    assert_eq!(several.dim(0).codes, one.dim(0).codes);
    assert_eq!(several.dim(0).dict, one.dim(0).dict);
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

fn tracked(i: u64, anon: &str, user: Option<&str>, kind: &str, ts: i64) -> Event {
    let mut v = serde_json::json!({
        "message_id": format!("x{i}"), "type": kind, "anonymous_id": anon,
        "timestamp": ts, "received_at": ts,
    });
    if kind == "track" {
        v["event"] = format!("e{}", i % 3).into();
    }
    if let Some(u) = user {
        v["user_id"] = u.into();
    }
    serde_json::from_value(v).unwrap()
}

type Seen = Vec<(u32, Vec<(i64, u32, u64)>)>;

/// The tag the tests give a row: by name code (`e1` dropped), or without a dimension read
/// by type of event (identify rows dropped).
fn tag_of(dict: &[String], kind: u8, code: Option<u32>) -> u64 {
    match code {
        None => u64::from(kind != 1) * (u64::from(kind) + 1),
        Some(c) => match dict.get(c as usize).map(String::as_str) {
            Some("e1") => 0,
            Some(_) => c as u64 + 1,
            None => 99,
        },
    }
}

/// Every person's tagged rows as [`Scan::run`] visits them; checks its contract on the
/// way: persons in order and each once, a person's rows in (ts, arrival) order.
fn visited(scan: &Scan, persons: Option<&HashSet<u32>>) -> Seen {
    let dims_empty = match &scan.inner {
        Inner::Store(s) => s.dims.is_empty(),
        Inner::Remote { dims, .. } => dims.is_empty(),
    };
    let dict = if dims_empty {
        Vec::new()
    } else {
        scan.dict(0).to_vec()
    };
    let visit = |got: &mut Seen, r: &PersonRows| {
        assert!(
            r.ts.windows(2)
                .zip(r.seq.windows(2))
                .all(|(t, s)| (t[0], s[0]) < (t[1], s[1])),
            "rows of person {} out of (ts, arrival) order",
            r.person
        );
        let rows = (0..r.ts.len())
            .map(|i| (r.ts[i], r.seq[i], r.tag[i]))
            .collect();
        got.push((r.person, rows));
    };
    let states = scan
        .run(
            persons,
            |kind, codes| tag_of(&dict, kind, codes.first().copied()),
            Vec::new,
            visit,
        )
        .unwrap();
    let all: Seen = states.into_iter().flatten().collect();
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "persons out of order or visited twice"
    );
    all
}

/// The same from the merged table of [`load`].
fn loaded(
    snap: &Snapshot,
    from: Option<i64>,
    to: Option<i64>,
    dims: &[usize],
    persons: Option<&HashSet<u32>>,
) -> Seen {
    let rows = load(
        snap,
        &Load {
            from,
            to,
            dims: dims.to_vec(),
            persons,
            ..Default::default()
        },
    )
    .unwrap();
    let names = (!dims.is_empty()).then(|| rows.dim(0));
    let dict = names.map_or(&[][..], |n| &n.dict[..]);
    let mut out: Seen = Vec::new();
    for r in rows.persons() {
        let person = rows.person[r.start];
        let kept: Vec<(i64, u32, u64)> = r
            .filter_map(|i| {
                let t = tag_of(dict, rows.kind[i], names.map(|n| n.codes[i]));
                (t != 0).then_some((rows.ts[i], rows.seq[i], t))
            })
            .collect();
        if !kept.is_empty() {
            out.push((person, kept));
        }
    }
    out
}

/// The scan, with columns from files and from the cache, visits exactly the rows of the
/// merged table, on a store where devices were stitched after their events were written
/// (one person's rows in several blocks of one segment, blocks of one person apart,
/// persons in several segments and in the log), with and without a time range and a
/// person filter.
#[test]
fn scan_equals_load_on_a_stitched_store() {
    let dir = temp_dir("stitched");
    let _ = std::fs::remove_dir_all(&dir);
    let options = ProjectOptions {
        compact_segments_min: 100,
        ..ProjectOptions::default()
    };
    let p = ProjectStore::open("p", &dir, options).unwrap();
    let mut i = 0u64;
    let mut next = || {
        i += 1;
        i
    };
    // Segment 1: two devices per person, anonymous.
    let mut batch = Vec::new();
    for k in 0..40u64 {
        for t in 0..6i64 {
            let kind = if t % 3 == 0 { "page" } else { "track" };
            batch.push(tracked(
                next(),
                &format!("a{k}-1"),
                None,
                kind,
                (k as i64 * 7 + t * 13) % 50,
            ));
            batch.push(tracked(
                next(),
                &format!("a{k}-2"),
                None,
                "track",
                (k as i64 * 3 + t * 11) % 50,
            ));
        }
    }
    // A third device of some persons, written after everyone else's: once stitched, those
    // persons have two groups of rows apart in this segment.
    for k in (0..40u64).step_by(8) {
        batch.push(tracked(
            next(),
            &format!("b{k}"),
            None,
            "track",
            5 + k as i64,
        ));
    }
    p.append(EventBatch::of(&batch)).unwrap();
    p.flush().unwrap();
    // Segment 2: even persons sign in on their first device; more events.
    let mut batch = Vec::new();
    for k in (0..40u64).step_by(2) {
        let user = format!("u{k}");
        batch.push(tracked(
            next(),
            &format!("a{k}-1"),
            Some(&user),
            "identify",
            60,
        ));
        batch.push(tracked(
            next(),
            &format!("a{k}-1"),
            Some(&user),
            "track",
            61 + k as i64 % 5,
        ));
    }
    p.append(EventBatch::of(&batch)).unwrap();
    p.flush().unwrap();
    // The log: every fourth person signs in on the second device too, which stitches
    // segment 1's two blocks of that person.
    let mut batch = Vec::new();
    for k in (0..40u64).step_by(4) {
        let user = format!("u{k}");
        batch.push(tracked(
            next(),
            &format!("a{k}-2"),
            Some(&user),
            "identify",
            70,
        ));
        batch.push(tracked(
            next(),
            &format!("a{k}-2"),
            Some(&user),
            "track",
            80,
        ));
        if k % 8 == 0 {
            batch.push(tracked(
                next(),
                &format!("b{k}"),
                Some(&user),
                "identify",
                71,
            ));
        }
    }
    p.append(EventBatch::of(&batch)).unwrap();
    let snap = p.snapshot();
    assert_eq!(snap.segments().len(), 2);
    let cache = ColumnCache::new(64 << 20);
    let some: HashSet<u32> = {
        let rows = load(&snap, &Load::default()).unwrap();
        rows.person.iter().copied().filter(|q| q % 2 == 1).collect()
    };
    for (from, to, persons) in [
        (None, None, None),
        (Some(10), Some(62), None),
        // Segment 2 and the log out of range: persons stitched across two devices of
        // segment 1 have two blocks there, merged by time.
        (None, Some(55), None),
        (None, None, Some(&some)),
    ] {
        for dims in [&[0][..], &[0, 1]] {
            let want = loaded(&snap, from, to, dims, persons);
            assert!(want.len() >= 10, "{} persons", want.len());
            for cached in [None, Some(&cache), Some(&cache)] {
                let scan = Scan {
                    inner: Inner::Store(Sources::new(&snap, from, to, dims, cached).unwrap()),
                };
                assert_eq!(visited(&scan, persons), want, "{from:?}..{to:?} {dims:?}");
            }
        }
    }
    drop(snap);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small deterministic generator (xorshift64*), so that a failing seed replays.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) % n
    }
}

/// The scan equals the merged table on random stores: 2-4 segments and the log,
/// devices whose events land in several of them, devices identified (and so merged into
/// one person) in a later segment or in the log, some identified as a second user too,
/// devices of one segment merged by sign-ins in the log after the range's end (one
/// person's rows in several blocks of one segment),
/// timestamps in a narrow range (many ties within a person), random time ranges and
/// person filters, with zero, one and two dimensions read.
#[test]
fn scan_equals_load_on_random_stores() {
    for seed in 1..=8u64 {
        let dir = temp_dir(&format!("random-{seed}"));
        let _ = std::fs::remove_dir_all(&dir);
        let options = ProjectOptions {
            compact_segments_min: 100,
            ..ProjectOptions::default()
        };
        let p = ProjectStore::open("p", &dir, options).unwrap();
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let devices = 20 + rng.below(40);
        let users = 4 + rng.below(10);
        let segments = 2 + rng.below(3);
        let mut i = 0u64;
        for round in 0..=segments {
            let mut batch = Vec::new();
            for _ in 0..50 + rng.below(150) {
                // Half the events from devices seen in every round, half from devices of
                // this round alone: persons spread over sources and persons in one.
                let d = rng.below(devices);
                let anon = if rng.below(2) == 0 {
                    format!("d{d}")
                } else {
                    format!("r{round}-{d}")
                };
                let ts = rng.below(40) as i64;
                let (kind, user) = match rng.below(10) {
                    0 => ("identify", Some(format!("u{}", d % users))),
                    1 if round > 0 => ("identify", Some(format!("u{}", rng.below(users)))),
                    2..=4 => ("page", None),
                    _ => ("track", None),
                };
                // Names follow the message number (`e{i % 3}`): skip a random few.
                i += 1 + rng.below(3);
                batch.push(tracked(i, &anon, user.as_deref(), kind, ts));
            }
            if round == segments {
                // In the log, after every other event (at 40 and later): devices of one
                // earlier round sign in, which merges devices written apart in that
                // segment into one person. Before 40, that person lies wholly in the
                // segment, its rows in several blocks of it.
                for _ in 0..devices / 2 {
                    let (r, d) = (rng.below(segments), rng.below(devices));
                    i += 1;
                    // Users of their own, so that the person is the devices of round r.
                    let user = format!("v{r}-{}", rng.below(devices / 4 + 1));
                    let ts = 40 + rng.below(8) as i64;
                    batch.push(tracked(
                        i,
                        &format!("r{r}-{d}"),
                        Some(&user),
                        "identify",
                        ts,
                    ));
                }
            }
            p.append(EventBatch::of(&batch)).unwrap();
            if round < segments {
                p.flush().unwrap();
            }
        }
        let snap = p.snapshot();
        assert_eq!(snap.segments().len() as u64, segments, "seed {seed}");
        let cache = ColumnCache::new(64 << 20);
        let everyone: Vec<u32> = {
            let rows = load(&snap, &Load::default()).unwrap();
            let mut p = rows.person.clone();
            p.dedup();
            p
        };
        let some: HashSet<u32> = everyone
            .iter()
            .copied()
            .filter(|_| rng.below(3) == 0)
            .collect();
        let (a, b) = (rng.below(48) as i64, rng.below(48) as i64);
        for (from, to, persons) in [
            (None, None, None),
            (Some(a.min(b)), Some(a.max(b) + 1), None),
            (None, Some(40), None),
            (None, Some(40), Some(&some)),
            (None, None, Some(&some)),
        ] {
            for dims in [&[][..], &[0], &[0, 1]] {
                let want = loaded(&snap, from, to, dims, persons);
                for cached in [None, Some(&cache), Some(&cache)] {
                    let scan = Scan {
                        inner: Inner::Store(Sources::new(&snap, from, to, dims, cached).unwrap()),
                    };
                    assert_eq!(
                        visited(&scan, persons),
                        want,
                        "seed {seed}, range {from:?}..{to:?}, dims {dims:?}, filtered {}, cached {}",
                        persons.is_some(),
                        cached.is_some()
                    );
                }
            }
        }
        drop(snap);
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A store of marketing journeys for comparing a query's scan with its table: three
/// segments and the log, 240 devices of which signed-in ones join in threes into persons,
/// 40 distinct seconds (ties within a person), page views and tracks with and without a
/// path, UTM values (some in two spellings, one medium no channel rule knows), referrers,
/// `Order` tracks (with `revenue` and `tier`) among `Clicked` and `Page Not Found` ones,
/// and a page `title`. The caller removes the directory.
pub(crate) fn journey_store(name: &str, seed: u64) -> (ProjectStore, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tl-{name}-{seed}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let p = ProjectStore::open("p", &dir, ProjectOptions::default()).unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let pick = |rng: &mut Rng, xs: &[&str]| -> Option<String> {
        let k = rng.below(xs.len() as u64 + 1) as usize;
        xs.get(k).map(|s| s.to_string())
    };
    let mut i = 0u64;
    for round in 0..4 {
        let mut batch = Vec::new();
        for _ in 0..400 {
            i += 1;
            let kind = ["page", "track", "track"][rng.below(3) as usize];
            let name =
                ["Order", "Clicked", "Clicked", "Clicked", "Page Not Found"][rng.below(5) as usize];
            let device = rng.below(240);
            let tier = ["gold", "tin"][rng.below(2) as usize];
            let title = ["Spring sale", "Hear every note", ""][rng.below(3) as usize];
            let mut e = serde_json::json!({
                "message_id": format!("m{i}"), "type": kind,
                "event": if kind == "track" { name } else { "Home" },
                "anonymous_id": format!("d{device}"),
                "timestamp": rng.below(40) as i64 * 1000,
                "received_at": 0,
                "properties": {
                    "revenue": rng.below(50),
                    "tier": tier,
                    "title": title,
                },
            });
            if rng.below(3) == 0 {
                e["user_id"] = serde_json::json!(format!("u{}", device / 3));
            }
            if kind == "page" || rng.below(2) == 0 {
                let path = pick(&mut rng, &["/", "/lp/a", "/products/x"]);
                e["page_path"] = serde_json::json!(path.unwrap_or("/".into()));
                e["page_url"] = serde_json::json!("https://shop.example/");
            }
            e["utm"] = serde_json::json!({
                // Spellings of one value (`Google`, `Spring`) and an unknown medium, for
                // the audit's findings.
                "source": pick(&mut rng, &["google", "newsletter", "facebook", "Google"]),
                "medium": pick(&mut rng, &["cpc", "email", "social", "odd"]),
                "campaign": pick(&mut rng, &["spring", "autumn", "Spring"]),
                "content": pick(&mut rng, &["hero", "footer"]),
            });
            if let Some(r) = pick(&mut rng, &["https://www.bing.com/", "https://t.co/x"]) {
                e["referrer"] = serde_json::json!(r);
            }
            batch.push(serde_json::from_value::<Event>(e).unwrap());
        }
        p.append(EventBatch::of(&batch)).unwrap();
        if round < 3 {
            p.flush().unwrap();
        }
    }
    (p, dir)
}
