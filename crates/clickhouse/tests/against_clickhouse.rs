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
