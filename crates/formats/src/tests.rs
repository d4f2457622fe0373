//! Round trips through files: what export writes, import gives back, in every format.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::write::GzEncoder;
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::{json, Map, Value};
use throughline_model::{Event, EventType, Utm};

use crate::*;

/// A directory removed when dropped; the crate keeps to its few dependencies.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "throughline-formats-{}-{name}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn event(id: &str, event_type: EventType, timestamp: i64) -> Event {
    Event {
        message_id: id.to_string(),
        event_type,
        event: None,
        user_id: None,
        anonymous_id: Some(format!("anon-{id}")),
        previous_id: None,
        group_id: None,
        email: None,
        timestamp,
        received_at: timestamp + 1_500,
        original_timestamp: None,
        sent_at: None,
        page_url: None,
        page_path: None,
        referrer: None,
        utm: Utm::default(),
        click_id: None,
        properties: Map::new(),
        context: Map::new(),
        traits: Map::new(),
    }
}

/// Events that exercise every column: unicode, nested objects, absent optionals.
fn events() -> Vec<Event> {
    let t0 = 1_709_294_400_250; // 2024-03-01T12:00:00.250Z
    let mut track = event("m-1", EventType::Track, t0);
    track.event = Some("Order Completed — 注文 ✓".into());
    track.user_id = Some("user-ß-1".into());
    track.original_timestamp = Some("2024-03-01T12:00:00.100+01:00".into());
    track.sent_at = Some("2024-03-01T12:00:00.200Z".into());
    track.properties = object(json!({
        "revenue": 42.5,
        "currency": "EUR",
        "items": [{"sku": "a,b\"c", "qty": 2}, {"sku": "naïve\nline", "qty": 1}],
        "big": 12345678901234567_u64,
        "gift": false,
        "note": null,
        "emoji": "🚀",
    }));
    track.context = object(json!({
        "page": {"url": "https://shop.test/checkout?utm_source=news", "title": "Caisse"},
        "campaign": {"source": "news", "medium": "email"},
        "ip": "203.0.113.9",
    }));

    let mut identify = event("m-2", EventType::Identify, t0 + 60_000);
    identify.user_id = Some("user-ß-1".into());
    identify.anonymous_id = None;
    identify.traits = object(json!({"email": "zoë@example.test", "plan": {"tier": "pro"}}));

    let mut page = event("m-3", EventType::Page, t0 - 86_400_000);
    page.event = Some("Accueil".into());

    let mut alias = event("m-4", EventType::Alias, t0 + 1);
    alias.user_id = Some("user-2".into());
    alias.previous_id = Some("anon-m-4".into());

    let mut group = event("m-5", EventType::Group, 0);
    group.group_id = Some("org,\"quoted\"".into());
    group.traits = object(json!({"name": "Ünïcode Ltd"}));

    let screen = event("m-6", EventType::Screen, -1_000);

    vec![track, identify, page, alias, group, screen]
}

/// What import should give back for an exported event: the Segment message without the
/// fields the server computes.
fn expected(event: &Event) -> Value {
    let mut message = event.to_segment_json();
    message.remove("receivedAt");
    Value::Object(message)
}

fn export_to(path: &Path, format: ExportFormat, events: &[Event]) {
    let mut exporter = Exporter::new(format, BufWriter::new(File::create(path).unwrap())).unwrap();
    for (i, event) in events.iter().enumerate() {
        let person_id = format!("person-{}", i % 2);
        exporter
            .write(ExportRow {
                event,
                person_id: &person_id,
            })
            .unwrap();
    }
    assert_eq!(exporter.rows(), events.len() as u64);
    exporter.finish().unwrap();
}

fn import(path: &Path) -> Vec<(u64, Value)> {
    read_messages(path)
        .unwrap()
        .map(|(n, message)| (n, message.unwrap_or_else(|e| panic!("row {n}: {e}"))))
        .collect()
}

#[test]
fn every_format_round_trips_the_messages() {
    let dir = TempDir::new("round-trip");
    let events = events();
    for format in ExportFormat::ALL {
        let path = dir.path().join(format!("export.{}", format.extension()));
        export_to(&path, format, &events);
        let got = import(&path);
        let want: Vec<Value> = events.iter().map(expected).collect();
        let got_messages: Vec<Value> = got.iter().map(|(_, m)| m.clone()).collect();
        assert_eq!(got_messages, want, "{format}");
        let numbers: Vec<u64> = got.iter().map(|(n, _)| *n).collect();
        let first = match format {
            ExportFormat::Csv => 2, // the header is line 1
            _ => 1,
        };
        assert_eq!(numbers[0], first, "{format}");
    }
}

#[test]
fn gzip_compressed_jsonl_and_csv_round_trip() {
    let dir = TempDir::new("gzip");
    let events = events();
    for (format, name) in [
        (ExportFormat::Jsonl, "export.jsonl.gz"),
        (ExportFormat::Csv, "export.CSV.GZ"),
    ] {
        let path = dir.path().join(name);
        let out = GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::fast());
        let mut exporter = Exporter::new(format, out).unwrap();
        for event in &events {
            exporter
                .write(ExportRow {
                    event,
                    person_id: "p",
                })
                .unwrap();
        }
        exporter.finish().unwrap().finish().unwrap();
        let got: Vec<Value> = import(&path).into_iter().map(|(_, m)| m).collect();
        assert_eq!(
            got,
            events.iter().map(expected).collect::<Vec<_>>(),
            "{name}"
        );
    }
}

#[test]
fn jsonl_export_is_the_segment_message_plus_person_id() {
    let events = events();
    let mut exporter = Exporter::new(ExportFormat::Jsonl, Vec::new()).unwrap();
    exporter
        .write(ExportRow {
            event: &events[0],
            person_id: "person-9",
        })
        .unwrap();
    let bytes = exporter.finish().unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert_eq!(text.lines().count(), 1);
    let mut want = events[0].to_segment_json();
    want.insert("person_id".into(), json!("person-9"));
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        Value::Object(want)
    );
}

#[test]
fn csv_export_has_the_documented_header_and_iso_timestamps() {
    let events = events();
    let mut exporter = Exporter::new(ExportFormat::Csv, Vec::new()).unwrap();
    exporter
        .write(ExportRow {
            event: &events[2],
            person_id: "person-1",
        })
        .unwrap();
    let text = String::from_utf8(exporter.finish().unwrap()).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), COLUMNS.join(","));
    assert_eq!(
        lines.next().unwrap(),
        "m-3,page,,Accueil,,anon-m-3,,,2024-02-29T12:00:00.250Z,,,\
         2024-02-29T12:00:01.750Z,person-1,{},{},{}"
    );
}

#[test]
fn parquet_export_splits_row_groups_at_the_bound_and_reads_back_in_order() {
    let dir = TempDir::new("row-groups");
    let path = dir.path().join("big.parquet");
    let rows = ROW_GROUP_ROWS_MAX + 3;
    let mut exporter = Exporter::new(ExportFormat::Parquet, File::create(&path).unwrap()).unwrap();
    let mut e = event("m", EventType::Track, 0);
    e.event = Some("Tick".into());
    for i in 0..rows {
        e.message_id = format!("m-{i}");
        e.timestamp = i as i64;
        exporter
            .write(ExportRow {
                event: &e,
                person_id: "p",
            })
            .unwrap();
    }
    exporter.finish().unwrap();

    let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
    let groups: Vec<i64> = reader
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect();
    assert_eq!(groups, vec![ROW_GROUP_ROWS_MAX as i64, 3]);

    let mut count = 0;
    for (n, message) in read_messages(&path).unwrap() {
        let message = message.unwrap();
        assert_eq!(message["messageId"], json!(format!("m-{}", n - 1)));
        count += 1;
    }
    assert_eq!(count, rows);
}

#[test]
fn an_empty_parquet_export_is_a_valid_file_of_no_rows() {
    let dir = TempDir::new("empty");
    let path = dir.path().join("empty.parquet");
    let exporter = Exporter::new(ExportFormat::Parquet, File::create(&path).unwrap()).unwrap();
    exporter.finish().unwrap();
    assert_eq!(read_messages(&path).unwrap().count(), 0);
}

#[test]
fn the_format_comes_from_the_extension() {
    let cases = [
        ("a.jsonl", Some(ImportFormat::Jsonl)),
        ("a.NDJSON", Some(ImportFormat::Jsonl)),
        ("dir.csv/a.json.gz", Some(ImportFormat::Jsonl)),
        ("a.csv.gz", Some(ImportFormat::Csv)),
        ("a.parquet", Some(ImportFormat::Parquet)),
        ("a.parquet.gz", None),
        ("a.txt", None),
        ("csv", None),
    ];
    for (path, want) in cases {
        assert_eq!(
            ImportFormat::from_path(Path::new(path)).ok(),
            want,
            "{path}"
        );
    }
    assert_eq!(
        "Parquet".parse::<ExportFormat>().unwrap(),
        ExportFormat::Parquet
    );
    assert!("xlsx".parse::<ExportFormat>().is_err());
}

#[test]
fn a_missing_file_names_its_path() {
    let err = read_messages(Path::new("/nonexistent/x.csv"))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .starts_with("cannot open /nonexistent/x.csv"),
        "{err}"
    );
}

#[test]
fn parquet_cannot_be_read_from_a_stream() {
    let err = read_messages_from(std::io::empty(), ImportFormat::Parquet).err();
    assert!(matches!(err, Some(FormatError::ParquetNeedsFile)));
}

#[test]
fn an_exporter_can_move_to_a_blocking_thread() {
    fn send<T: Send>() {}
    send::<Exporter<File>>();
    send::<Messages>();
}

#[test]
fn the_readme_example_imports_as_documented() {
    let csv = "type,event,userId,timestamp,properties.plan,properties.seats,context.page.url\n\
               track,Signed Up,u-1,2024-03-01T12:00:00Z,pro,3,https://example.test/signup\n";
    let rows: Vec<_> = read_messages_from(std::io::Cursor::new(csv), ImportFormat::Csv)
        .unwrap()
        .collect();
    assert_eq!(
        rows,
        vec![(
            2,
            Ok(json!({
                "type": "track", "event": "Signed Up", "userId": "u-1",
                "timestamp": "2024-03-01T12:00:00Z",
                "properties": {"plan": "pro", "seats": 3},
                "context": {"page": {"url": "https://example.test/signup"}},
            }))
        )]
    );
}

/// Regression (found by `crates/fuzz`): mutated pages made the `parquet` crate's bit
/// reader slice out of range and panic; the import must end with an error instead. (The
/// second file also showed that a caught panic's hook allocates, see `crates/fuzz`.)
#[test]
fn a_corrupt_parquet_page_is_an_error_not_a_panic() {
    for name in [
        "corrupt-page-bit-reader.parquet",
        "caught-panic-under-backtrace.parquet",
    ] {
        corrupt_file_ends_in_an_error(name);
    }
}

fn corrupt_file_ends_in_an_error(name: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    match read_messages(&path) {
        Err(e) => assert!(e.to_string().contains("parquet"), "{e}"),
        Ok(rows) => {
            let last = rows.last().expect("a row or an error");
            assert!(
                matches!(last.1, Err(crate::RowError::Unreadable(_))),
                "{last:?}"
            );
        }
    }
}
