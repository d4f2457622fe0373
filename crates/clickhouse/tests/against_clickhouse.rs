//! The row source against real ClickHouse servers (the two-shard pair of
//! `scripts/clickhouse`): the same events, ingested through the outbox and forwarder or
//! migrated from an embedded store, read back exactly as `rows::load` reads the embedded
//! store: same persons (identity merges after the events included), same order, same
//! values, for every filter shape the queries use.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use throughline_clickhouse::forward::{Backend, BackendOptions};
use throughline_clickhouse::outbox::Record;
use throughline_clickhouse::source::{RowRequest, Source};
use throughline_clickhouse::Target;
use throughline_model::{Event, DIMS, DIM_COUNT};
use throughline_query::rows::{load, Load, Rows};
use throughline_store::{EventBatch, ProjectOptions, ProjectStore};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Starts (or finds) the two local servers; their URLs.
fn servers() -> Vec<String> {
    let out = std::process::Command::new("bash")
        .arg(repo().join("scripts/clickhouse"))
        .arg("start")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "scripts/clickhouse start failed (is clickhouse-server installed? see .ci/run): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("THROUGHLINE_CLICKHOUSE_URLS="))
        .expect("urls");
    line.split(',').map(str::to_string).collect()
}

struct Db {
    target: Target,
    name: String,
}

impl Db {
    fn new(tag: &str) -> Db {
        let urls = servers();
        let name = format!("rt_{tag}_{}", std::process::id());
        let target = Target::new(&urls[0], Some(&name), Some("throughline_two"), &urls).unwrap();
        for s in target.shard_clients() {
            s.execute(&format!("DROP DATABASE IF EXISTS {name}"))
                .unwrap();
        }
        target.init().unwrap();
        Db { target, name }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        for s in self.target.shard_clients() {
            let _ = s.execute(&format!("DROP DATABASE IF EXISTS {}", self.name));
        }
    }
}

fn temp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("tl-chtest-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Deterministic events: anonymous devices browsing, identifies that stitch devices to
/// users after their first touches (so persons merge across shards), ties in time,
/// missing and present dimensions.
fn events(n: usize) -> Vec<Event> {
    let mut x = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let names = [
        "Product Viewed",
        "Product Added",
        "Order Completed",
        "Signed Up",
    ];
    let paths = ["/", "/p/1", "/p/2", "/checkout", "/blog/x"];
    let mut out = Vec::new();
    for i in 0..n {
        let r = next();
        let device = r % 97;
        let user = device % 31;
        let ts = 1_700_000_000_000i64 + ((next() % 5_000) * 1000) as i64;
        let kind = next() % 10;
        let mut v = serde_json::json!({
            "message_id": format!("m{i}"),
            "timestamp": ts, "received_at": ts,
            "anonymous_id": format!("dev-{device}"),
        });
        if kind < 4 {
            v["type"] = "page".into();
            v["page_path"] = paths[(next() % 5) as usize].into();
            if next() % 3 == 0 {
                let source = ["google", "news"][(next() % 2) as usize];
                v["utm"] = serde_json::json!({"source": source, "campaign": "c1"});
            }
            if next() % 4 == 0 {
                v["referrer"] = "https://www.google.com/".into();
            }
        } else if kind < 9 {
            v["type"] = "track".into();
            v["event"] = names[(next() % 4) as usize].into();
            if next() % 2 == 0 {
                v["page_path"] = paths[(next() % 5) as usize].into();
            }
        } else {
            v["type"] = "identify".into();
            v["user_id"] = format!("user-{user}").into();
        }
        out.push(serde_json::from_value(v).unwrap());
    }
    out
}

/// A row as values: person, time, type, and the requested dimensions' strings.
type Row = (u32, i64, u8, Vec<Option<String>>);

fn values(rows: &Rows, dims: &[usize]) -> Vec<Row> {
    (0..rows.len())
        .map(|i| {
            (
                rows.person[i],
                rows.ts[i],
                rows.kind[i],
                dims.iter()
                    .map(|&d| rows.dim(d).get(i).map(str::to_string))
                    .collect(),
            )
        })
        .collect()
}

type KeepFn = Box<dyn Fn(u8, &[Option<&str>; DIM_COUNT]) -> bool + Send + Sync>;

/// Dimensions, filter, from, to.
type Request = (Vec<usize>, Option<KeepFn>, Option<i64>, Option<i64>);

/// The request shapes the queries use.
fn requests() -> Vec<Request> {
    let all: Vec<usize> = (0..DIMS.len()).filter(|&d| d != 6).collect();
    vec![
        (vec![0], None, None, None),
        (
            vec![0],
            Some(Box::new(|_, v: &[Option<&str>; DIM_COUNT]| {
                matches!(v[0], Some("Product Viewed" | "Order Completed"))
            })),
            None,
            None,
        ),
        (
            vec![0, 1],
            Some(Box::new(|k, v: &[Option<&str>; DIM_COUNT]| {
                v[1].is_some() || k == 2
            })),
            Some(1_700_000_500_000),
            Some(1_700_004_000_000),
        ),
        (all.clone(), None, None, None),
        (
            all,
            Some(Box::new(|_, v: &[Option<&str>; DIM_COUNT]| {
                v[2] == Some("google") || v[0] == Some("Signed Up")
            })),
            None,
            Some(1_700_003_000_000),
        ),
        (
            vec![0],
            Some(Box::new(|_, _: &[Option<&str>; DIM_COUNT]| false)),
            None,
            None,
        ),
    ]
}

fn compare(store: &ProjectStore, source: &Source, with_seq: bool) {
    let snap = store.snapshot();
    for (dims, keep, from, to) in requests() {
        let embedded = load(
            &snap,
            &Load {
                from,
                to,
                dims: dims.clone(),
                keep: keep.as_ref().map(|k| {
                    let k: &(dyn Fn(u8, &[Option<&str>; DIM_COUNT]) -> bool + Send + Sync) =
                        k.as_ref();
                    Box::new(move |a: u8, b: &[Option<&str>; DIM_COUNT]| k(a, b))
                        as Box<dyn Fn(u8, &[Option<&str>; DIM_COUNT]) -> bool + Send + Sync>
                }),
                ..Default::default()
            },
        )
        .unwrap();
        let ch = source
            .rows(&RowRequest {
                from,
                to,
                dims: dims.clone(),
                keep: keep.as_deref(),
                persons: None,
            })
            .unwrap();
        assert_eq!(
            values(&ch, &dims),
            values(&embedded, &dims),
            "dims {dims:?}"
        );
        if with_seq {
            assert_eq!(ch.seq, embedded.seq, "dims {dims:?}");
        }
    }
    // Only some persons' rows.
    let persons: HashSet<u32> = load(
        &snap,
        &Load {
            dims: vec![0],
            ..Default::default()
        },
    )
    .unwrap()
    .person
    .into_iter()
    .filter(|p| p % 3 == 0)
    .collect();
    let a = load(
        &snap,
        &Load {
            dims: vec![0],
            persons: Some(&persons),
            ..Default::default()
        },
    )
    .unwrap();
    let b = source
        .rows(&RowRequest {
            dims: vec![0],
            persons: Some(&persons),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(values(&a, &[0]), values(&b, &[0]));
    // Decoded events by name, and the identity mapping.
    let mut named_a = Vec::new();
    snap.for_each_event_named(
        |n| n.starts_with("Order"),
        |_, e| {
            named_a.push(e.message_id);
            Ok(())
        },
    )
    .unwrap();
    let mut named_b = Vec::new();
    source
        .events_named(&|n| n.starts_with("Order"), &mut |_, _, e| {
            named_b.push(e.message_id);
            Ok(())
        })
        .unwrap();
    named_a.sort();
    named_b.sort();
    assert_eq!(named_a, named_b);
    let g = snap.identity();
    for id in ["user-3", "dev-5", "dev-96", "nobody"] {
        assert_eq!(source.find_person(id).unwrap(), g.find_person(id), "{id}");
    }
    let persons: Vec<u32> = persons.into_iter().collect();
    let names = source.canonical_ids(&persons).unwrap();
    for p in persons {
        assert_eq!(names[&p], g.canonical_id(p), "person {p}");
    }
}

/// Events sent through the outbox and forwarder in small batches (merges land in later
/// batches than the events they re-attribute) read back as the embedded store reads them.
#[test]
fn forwarded_events_read_back_as_the_embedded_store_reads_them() {
    let db = Db::new("fwd");
    let dir = temp("fwd");
    let evs = events(6000);
    let store = ProjectStore::open("p", &dir.join("embedded"), ProjectOptions::default()).unwrap();
    let backend = Backend::open(
        db.target.clone(),
        &dir.join("ch"),
        BackendOptions {
            batch_events_max: 700,
            ..BackendOptions::default()
        },
    )
    .unwrap();
    let project = backend.project("p").unwrap();
    for chunk in evs.chunks(500) {
        store.append(EventBatch::of(chunk)).unwrap();
        project
            .append(chunk.iter().map(Record::new).collect())
            .unwrap();
    }
    assert!(project.wait_forwarded(60_000));
    let source = Source::new(Arc::new(db.target.clone()), "p", Default::default());
    assert_eq!(source.event_count().unwrap(), 6000);
    compare(&store, &source, true);
    // windowFunnel in ClickHouse and the kernel over streamed rows agree (whole-second
    // timestamps: the SQL counts seconds).
    let steps: Vec<String> = ["Product Viewed", "Product Added", "Order Completed"]
        .map(String::from)
        .to_vec();
    let sql =
        throughline_clickhouse::sql::funnel_by_sql(&db.target, "p", &steps, 120_000, None, None)
            .unwrap();
    let stream =
        throughline_clickhouse::sql::funnel_by_stream(&source, &steps, 120_000, None, None)
            .unwrap();
    assert_eq!(sql.persons, stream.persons);
    assert!(
        sql.persons[0] > sql.persons[2] && sql.persons[2] > 0,
        "{:?}",
        sql.persons
    );
    // Folding changes where rows live, not what a read returns.
    let report = throughline_clickhouse::fold::fold(&db.target, "p", Some(6000)).unwrap();
    assert!(report.persons > 0);
    compare(&store, &source, true);
    backend.close();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A migrated store (several segments, persons merged since they were written) reads back
/// identically, arrival numbers included.
#[test]
fn migrated_events_read_back_identically() {
    let db = Db::new("mig");
    let dir = temp("mig");
    let evs = events(5000);
    let store = ProjectStore::open(
        "p",
        &dir.join("projects/p"),
        ProjectOptions {
            compact_segments_min: 100,
            ..ProjectOptions::default()
        },
    )
    .unwrap();
    for (i, chunk) in evs.chunks(1200).enumerate() {
        store.append(EventBatch::of(chunk)).unwrap();
        if i < 3 {
            store.flush().unwrap();
        }
    }
    let report = throughline_clickhouse::migrate::migrate(
        &db.target,
        &dir,
        &store,
        false,
        777,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(report.verified);
    let source = Source::new(Arc::new(db.target.clone()), "p", Default::default());
    compare(&store, &source, true);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every outbox log file's bytes, and whether one holds `needle`.
fn log_holds(ch_dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(ch_dir.join("log"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .any(|b| b.windows(needle.len()).any(|w| w == needle))
}

/// GDPR erasure through the forwarder: a multi-device person (some of whose events still
/// wait in the outbox when it is asked) is gone from ClickHouse, the outbox files, the
/// identity checkpoint and the graph, and every other row reads back as the embedded
/// store reads after its own erasure. Then the same, stopped after each durable step as
/// a crash would stop it: the next start finishes it, and the audit log has one entry.
#[test]
fn erasure_leaves_nothing_and_finishes_after_a_stop_at_any_step() {
    use throughline_clickhouse::erase;
    use throughline_clickhouse::EraseStep;
    let db = Db::new("erase");
    let evs = events(4000);
    let id = "user-3";
    let needles: [&[u8]; 3] = [b"\"user-3\"", b"\"dev-3\"", b"\"dev-34\""];
    let stops = [
        None,
        Some(EraseStep::Recorded),
        Some(EraseStep::Checkpointed),
        Some(EraseStep::Retired),
        Some(EraseStep::Deleted),
    ];
    for (round, stop) in stops.into_iter().enumerate() {
        let name = format!("p{round}");
        let dir = temp(&format!("erase{round}"));
        let reference =
            ProjectStore::open(&name, &dir.join("embedded"), ProjectOptions::default()).unwrap();
        reference.append(EventBatch::of(&evs)).unwrap();
        let data = dir.join("ch");
        let options = |stop| BackendOptions {
            batch_events_max: 500,
            erase_stop_after: stop,
            ..BackendOptions::default()
        };
        let backend = Backend::open(db.target.clone(), &data, options(stop)).unwrap();
        let project = backend.project(&name).unwrap();
        for chunk in evs.chunks(400) {
            project
                .append(chunk.iter().map(Record::new).collect())
                .unwrap();
        }
        let ch_dir = project.dir().to_path_buf();
        assert!(needles.iter().all(|n| log_holds(&ch_dir, n)));
        let nodes: Vec<String> = {
            let snap = reference.snapshot();
            let g = snap.identity();
            let person = g.find_person(id).unwrap();
            (0..g.node_count() as u32)
                .filter(|&n| g.person_of(n) == person)
                .map(|n| n.to_string())
                .collect()
        };
        assert!(nodes.len() >= 4, "{nodes:?}");
        let nodes = nodes.join(", ");
        let expected = reference.delete_person(id).unwrap() as u64;
        assert!(expected > 10, "the person has {expected} events");
        let answer = project.erase(id, "test");
        let source = Source::new(Arc::new(db.target.clone()), &name, Default::default());
        match stop {
            None => {
                assert_eq!(answer.unwrap(), Some(expected));
                backend.close();
            }
            Some(step) => {
                assert!(
                    matches!(answer, Err(throughline_clickhouse::ClickHouseError::Closed)),
                    "{step:?}: {answer:?}"
                );
                assert!(erase::read_pending(&ch_dir).unwrap().is_some());
                backend.close();
                // The next start finishes it before forwarding anything else.
                let backend = Backend::open(db.target.clone(), &data, options(None)).unwrap();
                let project = backend.project(&name).unwrap();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                while erase::read_pending(&ch_dir).unwrap().is_some() {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{step:?}: not finished"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                assert!(project.wait_forwarded(60_000));
                backend.close();
            }
        }
        assert_eq!(source.find_person(id).unwrap(), None);
        assert_eq!(source.find_person("dev-34").unwrap(), None);
        for n in needles {
            assert!(
                !log_holds(&ch_dir, n),
                "{stop:?}: the outbox still holds {n:?}"
            );
        }
        let checkpoints: Vec<_> = std::fs::read_dir(&ch_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("identity-"))
            .collect();
        assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
        let graph = throughline_identity::IdentityGraph::from_snapshot(
            &std::fs::read(ch_dir.join(&checkpoints[0])).unwrap(),
        )
        .unwrap();
        assert_eq!(graph.find_person(id), None);
        assert_eq!(graph.find_person("dev-3"), None);
        // Nothing of them on either shard, FINAL or not; the rest as the embedded store.
        for c in db.target.shard_clients() {
            let n = c
                .query_text(&format!(
                    "SELECT count() FROM {}.person_overrides_local FINAL WHERE project = '{name}' AND (old_person IN ({nodes}) OR override_person IN ({nodes}))",
                    db.name
                ))
                .unwrap();
            assert_eq!(n, "0", "{stop:?}: person_overrides");
            for table in ["events_local", "identities_local"] {
                let n = c
                    .query_text(&format!(
                        "SELECT count() FROM {}.{table} FINAL WHERE project = '{name}' AND node IN ({nodes})",
                        db.name
                    ))
                    .unwrap();
                assert_eq!(n, "0", "{stop:?}: {table}");
            }
            let ids = c
                .query_text(&format!(
                    "SELECT count() FROM {}.identities_local FINAL WHERE project = '{name}' AND id IN ('{id}', 'dev-3', 'dev-34', 'dev-65', 'dev-96')",
                    db.name
                ))
                .unwrap();
            assert_eq!(ids, "0", "{stop:?}");
        }
        compare(&reference, &source, false);
        let audit = throughline_store::audit::read(&data).unwrap();
        let erased: Vec<_> = audit
            .iter()
            .filter(|e| e.action == "person.delete")
            .collect();
        assert_eq!(erased.len(), 1, "{stop:?}: {audit:?}");
        assert_eq!(
            erased[0].detail,
            format!(
                "{}: {expected} events erased",
                throughline_store::audit::erased_id(id)
            )
        );
        if stop.is_none() {
            // An event for the id after the erasure starts a new person.
            let late: Event = serde_json::from_value(serde_json::json!({
                "message_id": "late", "type": "track", "event": "Signed Up",
                "user_id": id, "timestamp": 1_700_009_000_000i64, "received_at": 1_700_009_000_000i64,
            }))
            .unwrap();
            let backend = Backend::open(db.target.clone(), &data, options(None)).unwrap();
            let project = backend.project(&name).unwrap();
            project.append(vec![Record::new(&late)]).unwrap();
            reference.append(EventBatch::of(&[late])).unwrap();
            assert!(project.wait_forwarded(60_000));
            compare(&reference, &source, false);
            let person = source.find_person(id).unwrap().expect("a new person");
            let mut seen = 0;
            source
                .events_of_nodes(
                    &source
                        .identities(Some(&[person]))
                        .unwrap()
                        .iter()
                        .map(|(_, m)| m.node)
                        .collect::<Vec<_>>(),
                    &mut |_, _, _| {
                        seen += 1;
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(seen, 1);
            backend.close();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Events for the person that arrive while the erasure runs are either erased with them
/// or, arriving after its point in the outbox, make a new person: never half. The count
/// answered says which: the old events plus exactly the concurrent ones that are gone.
#[test]
fn events_arriving_during_an_erasure_are_erased_or_start_a_new_person() {
    let db = Db::new("erase_conc");
    let dir = temp("erase-conc");
    let evs = events(3000);
    let id = "user-3";
    let reference =
        ProjectStore::open("p", &dir.join("embedded"), ProjectOptions::default()).unwrap();
    reference.append(EventBatch::of(&evs)).unwrap();
    let old = reference.delete_person(id).unwrap() as u64;
    let backend = Backend::open(
        db.target.clone(),
        &dir.join("ch"),
        BackendOptions {
            batch_events_max: 300,
            ..BackendOptions::default()
        },
    )
    .unwrap();
    let project = backend.project("p").unwrap();
    for chunk in evs.chunks(500) {
        project
            .append(chunk.iter().map(Record::new).collect())
            .unwrap();
    }
    const LATE: usize = 60;
    let sender = {
        let project = project.clone();
        std::thread::spawn(move || {
            for i in 0..LATE {
                let e: Event = serde_json::from_value(serde_json::json!({
                    "message_id": format!("c{i}"), "type": "track", "event": "Product Viewed",
                    "user_id": id, "timestamp": 1_700_010_000_000i64 + i as i64,
                    "received_at": 1_700_010_000_000i64,
                }))
                .unwrap();
                project.append(vec![Record::new(&e)]).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(40));
    let erased = project
        .erase(id, "test")
        .unwrap()
        .expect("the person exists");
    sender.join().unwrap();
    assert!(project.wait_forwarded(60_000));
    let source = Source::new(Arc::new(db.target.clone()), "p", Default::default());
    // Every concurrent event still stored, with the person of its node today.
    let persons: std::collections::HashMap<u32, u32> = source
        .identities(None)
        .unwrap()
        .into_iter()
        .map(|(p, m)| (m.node, p))
        .collect();
    let mut kept: Vec<(String, u32)> = Vec::new();
    let bytes = db
        .target
        .client
        .query_bytes(&format!(
            "SELECT node, payload FROM {}.events WHERE project = 'p' FORMAT RowBinary",
            db.name
        ))
        .unwrap();
    let mut r = throughline_clickhouse::rowbinary::Reader::new(&bytes[..]);
    let mut buf = Vec::new();
    while !r.at_end().unwrap() {
        let node = r.u32().unwrap();
        r.bytes_into(&mut buf).unwrap();
        let e: Event = serde_json::from_slice(&buf).unwrap();
        if e.message_id.starts_with('c') {
            kept.push((e.message_id, persons[&node]));
        }
    }
    assert_eq!(
        erased,
        old + (LATE - kept.len()) as u64,
        "{} kept",
        kept.len()
    );
    match source.find_person(id).unwrap() {
        None => assert!(kept.is_empty(), "{kept:?}"),
        Some(person) => {
            // The new person holds the late events that survived, and nothing older.
            assert!(kept.iter().all(|(_, p)| *p == person), "{kept:?}");
            let nodes: Vec<u32> = source
                .identities(Some(&[person]))
                .unwrap()
                .iter()
                .map(|(_, m)| m.node)
                .collect();
            let mut theirs = Vec::new();
            source
                .events_of_nodes(&nodes, &mut |_, _, e| {
                    theirs.push(e.message_id);
                    Ok(())
                })
                .unwrap();
            theirs.sort();
            let mut want: Vec<String> = kept.iter().map(|(m, _)| m.clone()).collect();
            want.sort();
            assert_eq!(theirs, want);
        }
    }
    backend.close();
    let _ = std::fs::remove_dir_all(&dir);
}
