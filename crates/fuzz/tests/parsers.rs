//! Every parser that reads outside input, fuzzed from valid samples (see the crate's
//! `lib.rs` for the mutations and the allocation meter). Each target asserts no panic, an
//! error value where the input is known to be bad, and a bounded peak of live bytes.
//! `THROUGHLINE_FUZZ_CASES` and `THROUGHLINE_FUZZ_SEED` widen a run by hand.

use std::io::Cursor;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::de::IgnoredAny;
use serde_json::{json, Value};
use sha2::Sha256;
use throughline_collect::{normalize_json, Batch, Envelope, IdGen};
use throughline_formats::{read_messages_from, ExportFormat, ExportRow, Exporter, ImportFormat};
use throughline_fuzz::{fuzz, CountingAlloc};
use throughline_model::EventType;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const NOW_MS: i64 = 1_900_000_000_000;
/// Rows read from one import input, at most (a mutation can multiply lines).
const ROWS_READ_MAX: usize = 100_000;

#[test]
fn the_meter_sees_a_parse_that_allocates_past_its_bound() {
    let (_, peak) = throughline_fuzz::metered(|| vec![1u8; 32 << 20].len());
    assert!(peak >= 32 << 20, "{peak}");
    assert!(peak > throughline_fuzz::bound_bytes(1000));
}

#[test]
#[should_panic(expected = "panicked: found a brace")]
fn the_harness_reports_a_panic_with_its_input() {
    let corpus = vec![b"[1]".to_vec()];
    fuzz("self test", &corpus, |b| {
        assert!(!b.contains(&b'{'), "found a brace");
        Ok(())
    });
}

fn samples(texts: &[&str]) -> Vec<Vec<u8>> {
    texts.iter().map(|t| t.as_bytes().to_vec()).collect()
}

fn messages() -> Vec<Value> {
    vec![
        json!({"type": "track", "event": "Order Completed", "userId": "u1",
               "messageId": "m1", "timestamp": "2026-03-01T10:00:00.123Z",
               "properties": {"revenue": 12.5, "items": [1, 2, {"sku": "a"}], "note": "é\u{1F600}"},
               "context": {"page": {"url": "https://x.example/p?utm_source=google&utm_medium=cpc&gclid=abc",
                                    "referrer": "https://www.google.com/"},
                           "campaign": {"name": "spring"}, "ip": "1.2.3.4"}}),
        json!({"type": "page", "anonymousId": "a1", "name": "Home",
               "properties": {"path": "/", "title": "Accueil"}, "sentAt": "2026-03-01T10:00:01Z",
               "originalTimestamp": "2026-03-01T10:00:00Z"}),
        json!({"type": "identify", "userId": "u1", "anonymousId": "a1",
               "traits": {"email": "x@y.example", "age": 1e300, "tags": []}}),
        json!({"type": "alias", "userId": "u2", "previousId": "u1"}),
        json!({"type": "group", "userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}}),
        json!({"type": "screen", "userId": "u1", "name": "Cart", "timestamp": "2026-03-01T10:00:00+02:00"}),
    ]
}

#[test]
fn segment_batches() {
    let mut corpus = vec![serde_json::to_vec(&json!({
        "batch": messages(), "sentAt": "2026-03-01T10:00:02Z", "writeKey": "wk",
        "context": {"library": {"name": "analytics-python"}}
    }))
    .unwrap()];
    corpus.push(br#"{"batch":[],"writeKey":1}"#.to_vec());
    let mut ids = IdGen::new(1);
    fuzz("segment batches", &corpus, |body| {
        let json_ok = serde_json::from_slice::<IgnoredAny>(body).is_ok();
        if let Ok(batch) = Batch::parse(body, NOW_MS, &mut ids) {
            if !json_ok {
                return Err("a body serde_json rejects was accepted".into());
            }
            for event in batch.messages.into_iter().flatten() {
                stored_record_decodes(&event)?;
            }
        }
        Ok(())
    });
}

#[test]
fn segment_single_messages() {
    let corpus: Vec<Vec<u8>> = messages()
        .iter()
        .map(|m| serde_json::to_vec(m).unwrap())
        .collect();
    let mut ids = IdGen::new(2);
    let kinds = [EventType::Track, EventType::Page, EventType::Identify];
    let mut n = 0;
    fuzz("segment single messages", &corpus, |body| {
        n += 1;
        let json_ok = serde_json::from_slice::<IgnoredAny>(body).is_ok();
        if let Ok(batch) = Batch::parse_single(body, kinds[n % kinds.len()], NOW_MS, &mut ids) {
            for event in batch.messages.into_iter().flatten() {
                if !json_ok {
                    return Err(format!("invalid JSON made an event: {event:?}"));
                }
                stored_record_decodes(&event)?;
            }
        }
        Ok(())
    });
}

#[test]
fn segment_messages_normalized_from_text() {
    let corpus: Vec<Vec<u8>> = messages()
        .iter()
        .map(|m| serde_json::to_vec(m).unwrap())
        .collect();
    let mut ids = IdGen::new(3);
    let envelope = Envelope {
        historical: true,
        ..Envelope::default()
    };
    fuzz("normalize_json", &corpus, |bytes| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Ok(());
        };
        let json_ok = serde_json::from_str::<IgnoredAny>(text).is_ok();
        match normalize_json(text, &envelope, NOW_MS, &mut ids) {
            Ok(_) if !json_ok => Err("invalid JSON was normalized".into()),
            Ok(event) => stored_record_decodes(&event),
            Err(_) => Ok(()),
        }
    });
}

/// The store keeps `write_json`'s text; every accepted event must decode again.
fn stored_record_decodes(event: &throughline_model::NewEvent) -> Result<(), String> {
    let mut out = Vec::new();
    event.write_json(&mut out);
    serde_json::from_slice::<throughline_model::Event>(&out)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "a stored record does not decode ({e}): {}",
                String::from_utf8_lossy(&out)
            )
        })
}

fn drain(messages: throughline_formats::Messages) {
    for _ in messages.take(ROWS_READ_MAX) {}
}

#[test]
fn jsonl_import() {
    let lines: Vec<String> = messages().iter().map(|m| m.to_string()).collect();
    let corpus = vec![
        (lines.join("\n") + "\n").into_bytes(),
        (lines.join("\r\n")).into_bytes(),
    ];
    fuzz("jsonl import", &corpus, |bytes| {
        if let Ok(rows) = read_messages_from(Cursor::new(bytes.to_vec()), ImportFormat::Jsonl) {
            drain(rows);
        }
        Ok(())
    });
}

fn exported(format: ExportFormat) -> Vec<u8> {
    let mut ids = IdGen::new(4);
    let events: Vec<throughline_model::Event> = messages()
        .iter()
        .map(|m| {
            normalize_json(&m.to_string(), &Envelope::default(), NOW_MS, &mut ids)
                .unwrap()
                .to_event()
        })
        .collect();
    let mut exporter = Exporter::new(format, Vec::new()).unwrap();
    for e in &events {
        exporter
            .write(ExportRow {
                event: e,
                person_id: "p1",
            })
            .unwrap();
    }
    exporter.finish().unwrap()
}

#[test]
fn csv_import() {
    let corpus = vec![
        exported(ExportFormat::Csv),
        b"type,event,userId,timestamp,properties\ntrack,Signed Up,u1,2026-03-01T00:00:00Z,\"{\"\"a\"\":1}\"\n"
            .to_vec(),
    ];
    fuzz("csv import", &corpus, |bytes| {
        if let Ok(rows) = read_messages_from(Cursor::new(bytes.to_vec()), ImportFormat::Csv) {
            drain(rows);
        }
        Ok(())
    });
}

/// The regression files of `throughline_formats` join the corpus: one of them panics in
/// the `parquet` crate (caught), which with `RUST_BACKTRACE=1` once metered 84 MB.
fn parquet_regressions() -> Vec<Vec<u8>> {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../formats/tests/data");
    [
        "corrupt-page-bit-reader.parquet",
        "caught-panic-under-backtrace.parquet",
    ]
    .iter()
    .map(|name| std::fs::read(data.join(name)).unwrap())
    .collect()
}

#[test]
fn parquet_import() {
    let mut corpus = vec![exported(ExportFormat::Parquet)];
    corpus.extend(parquet_regressions());
    let dir = std::env::temp_dir().join(format!("tl-fuzz-parquet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("in.parquet");
    fuzz("parquet import", &corpus, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        if let Ok(rows) = throughline_formats::read_messages(&path) {
            drain(rows);
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: the `parquet` crate zero-fills the `uncompressed_page_size` a page header
/// states before it decompresses a Snappy page, so a small file could claim 60 MB. The
/// import must refuse the file within the allocation bound.
#[test]
fn an_inflated_parquet_page_size_is_refused_within_the_bound() {
    let mut ids = IdGen::new(6);
    let big = json!({"type": "track", "event": "Big", "userId": "u1",
                     "properties": {"note": "a".repeat(1_500_000)}});
    let event = normalize_json(&big.to_string(), &Envelope::default(), NOW_MS, &mut ids)
        .unwrap()
        .to_event();
    let mut exporter = Exporter::new(ExportFormat::Parquet, Vec::new()).unwrap();
    exporter
        .write(ExportRow {
            event: &event,
            person_id: "p1",
        })
        .unwrap();
    let mut bytes = exporter.finish().unwrap();
    // The page of the big note: a header `type, uncompressed_page_size (4-byte varint)`.
    let at = (0..bytes.len() - 7)
        .find(|&i| {
            let h = &bytes[i..i + 7];
            h[0] == 0x15
                && (h[1] == 0x00 || h[1] == 0x04)
                && h[2] == 0x15
                && h[3..6].iter().all(|b| b & 0x80 != 0)
                && h[6] & 0x80 == 0
                && h[6] > 0
        })
        .expect("a page header with a 4-byte size");
    // zigzag(60_000_000) = 120_000_000, as a 4-byte varint.
    let mut z: u32 = 120_000_000;
    for b in &mut bytes[at + 3..at + 7] {
        *b = (z as u8 & 0x7f) | 0x80;
        z >>= 7;
    }
    bytes[at + 6] &= 0x7f;
    let dir = std::env::temp_dir().join(format!("tl-fuzz-inflated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("in.parquet");
    std::fs::write(&path, &bytes).unwrap();
    let (outcome, peak) = throughline_fuzz::metered(|| {
        throughline_formats::read_messages(&path).map(|rows| rows.take(10).count())
    });
    let _ = std::fs::remove_dir_all(&dir);
    let bound = throughline_fuzz::bound_bytes(bytes.len());
    assert!(
        peak <= bound,
        "{peak} live bytes for {} (bound {bound})",
        bytes.len()
    );
    let err = outcome.expect_err("the inflated page was read");
    assert!(
        err.to_string().contains("uncompressed_page_size 60000000"),
        "{err}"
    );
}

#[test]
fn journey_files() {
    let corpus = samples(&[
        r#"
name = "drip"
priority = 1
reentry = "always"
trigger = { event = "Signed Up", where = { plan = "pro" } }
goal = { event = "Order Completed", within = "20d" }
quiet_hours = { start = "21:00", end = "08:00", timezone = "Europe/Paris" }
[[steps]]
id = "hello"
type = "email"
subject = "Hi {{ traits.first_name }}"
text = "Hello {% for x in traits.items %}{{ x }}{% endfor %} https://x.example/a"
variants = [{ name = "a" }, { name = "b" }]
[[steps]]
id = "rest"
type = "wait"
duration = "1d"
[[steps]]
id = "look"
type = "wait_for_event"
event = "Cart Viewed"
timeout = "2d"
on_event = "nudge"
on_timeout = "split"
[[steps]]
id = "split"
type = "split"
variants = [{ name = "holdout", weight = 1, holdout = true, next = "end" }, { name = "go", weight = 3, next = "nudge" }]
[[steps]]
id = "nudge"
type = "webhook"
url = "https://hooks.example/nudge"
channel = "sms"
"#,
        r#"{"name":"promo","priority":9,"reentry":"3d","trigger":{"event":"Cart Viewed"},
"steps":[{"id":"offer","type":"email","subject":"A coupon","text":"10% off"},
{"id":"b","type":"branch","if":{"trait":"plan","equals":"pro"},"then":"offer","else":"end"}]}"#,
    ]);
    fuzz("journey files", &corpus, |bytes| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Ok(());
        };
        let _ = throughline_orchestrate::validate(text);
        Ok(())
    });
}

#[test]
fn tokens() {
    use throughline_token::{project_of, sign, verify, Claims, Secret};
    let secret = Secret::from_bytes([7; 32]);
    let mut claims = Claims::new("survey", "shop", "person-1", NOW_MS);
    claims.expires_ms = Some(NOW_MS + 86_400_000);
    claims.data.insert("question".into(), "nps".into());
    let token = sign(&secret, &claims).unwrap();
    let payload = token.split('.').next().unwrap().to_string();
    let decoded = URL_SAFE_NO_PAD.decode(&payload).unwrap();
    let corpus = vec![token.into_bytes(), decoded];
    fuzz("tokens", &corpus, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        // The token as sent (its MAC no longer matches once mutated) ...
        let tampered = verify(&secret, &text, NOW_MS);
        if text != String::from_utf8_lossy(&corpus[0]) && tampered.is_ok() {
            return Err("a changed token verified".into());
        }
        let _ = project_of(&text);
        // ... and mutated claims under a valid MAC, so the payload reader runs too.
        let payload = URL_SAFE_NO_PAD.encode(bytes);
        let mut mac = Hmac::<Sha256>::new_from_slice(&[7; 32]).unwrap();
        mac.update(b"throughline-token-v1.");
        mac.update(payload.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let signed = format!("{payload}.{tag}");
        if let Ok(c) = verify(&secret, &signed, NOW_MS) {
            if serde_json::from_slice::<IgnoredAny>(bytes).is_err() {
                return Err(format!("claims that are not JSON verified: {c:?}"));
            }
        }
        let _ = project_of(&signed);
        Ok(())
    });
}

#[test]
fn spend_csv() {
    use throughline_query::spend::Spend;
    let corpus = samples(&[
        "date,channel,source,medium,campaign,cost\n\
         2026-09-01,Paid Search,google,cpc,brand,10\n\
         2026-09-02,Paid Social,facebook,paid_social,launch,7.25\n",
        "\u{feff}date,content,currency,cost\n2026-09-01,hero-banner,EUR,1e3\n",
    ]);
    fuzz("spend csv", &corpus, |bytes| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Ok(());
        };
        if let Ok(spend) = Spend::from_csv(text, "fuzz.csv") {
            let _ = spend.totals();
            let _ = spend.date_range();
        }
        Ok(())
    });
}

#[test]
fn asset_registries() {
    use throughline_query::assets::Registry;
    let corpus = samples(&[
        "id,name,kind,campaign,content,url\nhero,Hero banner,banner,spring,hero,https://x.example/p?a=1\n",
        "[[asset]]\nid = \"hero\"\nname = \"Hero\"\nurl = \"https://x.example/\"\n",
    ]);
    fuzz("asset registries", &corpus, |bytes| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Ok(());
        };
        let _ = Registry::from_csv(text, "fuzz.csv").map(|r| r.index());
        let _ = Registry::from_toml(text, "fuzz.toml").map(|r| r.index());
        Ok(())
    });
}

#[test]
fn channelattribution_path_tables() {
    use throughline_query::attribution::run_table;
    let corpus = samples(&[
        "path;total_conversions;total_conversion_value;total_null\n\
         Paid Search > Email > Direct;3;30.5;10\n\
         Email;1;5;2\n\
         Direct > Direct;0;0;4\n",
        "path,total_conversions\nA > B,2\nB,1\n",
    ]);
    let models = [None, Some("markov"), Some("shapley"), Some("linear")];
    let mut n = 0;
    fuzz("path tables", &corpus, |bytes| {
        n += 1;
        let _ = run_table(
            bytes,
            "fuzz.csv",
            models[n % models.len()],
            None,
            None,
            Some(10),
        );
        Ok(())
    });
}

/// Query request bodies as the HTTP API reads them (`serde_json::from_slice` into each
/// request type), then run against a small real store, so validation runs too.
#[test]
fn query_requests() {
    use throughline_classify::Rules;
    use throughline_query as q;
    use throughline_store::{EventBatch, ProjectOptions, ProjectStore};

    let dir = std::env::temp_dir().join(format!("tl-fuzz-query-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let project = ProjectStore::open("p", &dir, ProjectOptions::default()).unwrap();
    let mut ids = IdGen::new(5);
    let envelope = Envelope {
        historical: true,
        ..Envelope::default()
    };
    let events: Vec<_> = messages()
        .iter()
        .map(|m| {
            normalize_json(&m.to_string(), &envelope, NOW_MS, &mut ids)
                .unwrap()
                .to_event()
        })
        .collect();
    project.append(EventBatch::of(&events)).unwrap();
    project.flush().unwrap();
    let snapshot = project.snapshot();
    let snap = q::source::Source::from(&snapshot);
    let rules = Rules::ga4_default();
    let registry = q::assets::Registry::default();
    let spend = q::spend::Spend::default();

    let range = json!({"from": "2026-02-01", "to": "2026-04-01",
                       "filter": {"channel": "Paid Search", "campaign": "spring"}});
    let with = |mut v: Value| {
        v.as_object_mut()
            .unwrap()
            .extend(range.as_object().unwrap().clone());
        serde_json::to_vec(&v).unwrap()
    };
    let corpus = vec![
        with(
            json!({"steps": ["Home", "Order Completed"], "window": "30d", "order": "strict",
                    "exclude": ["Cart"], "step_windows": [null, "1h"], "by": "channel"}),
        ),
        with(json!({"events": ["Order Completed"], "interval": "day", "by": "utm_source"})),
        with(json!({"start": "Home", "return": "Order Completed", "periods": 4, "period": "week"})),
        with(json!({"timeout": "30m", "by": "channel"})),
        with(
            json!({"end": "Order Completed", "depth": 4, "of": "channels", "limit": 5,
                    "conversion": "Order Completed", "timeout": "30m"}),
        ),
        with(
            json!({"conversion": "Order Completed", "model": "markov", "by": "channel",
                    "lookback": "30d", "order": 2, "half_life": "7d",
                    "position": [0.4, 0.2, 0.4], "paths": 10}),
        ),
    ];
    // Every body is tried as every kind; returns how many kinds parsed it.
    let try_all = |body: &[u8]| -> usize {
        let mut parsed = 0;
        if let Ok(r) = serde_json::from_slice::<q::funnel::FunnelRequest>(body) {
            parsed += 1;
            let _ = q::funnel::run(&snap, &rules, &r);
        }
        if let Ok(r) = serde_json::from_slice::<q::trends::TrendsRequest>(body) {
            parsed += 1;
            let _ = q::trends::run(&snap, &rules, &r);
        }
        if let Ok(r) = serde_json::from_slice::<q::retention::RetentionRequest>(body) {
            parsed += 1;
            let _ = q::retention::run(&snap, &rules, &r);
        }
        if let Ok(r) = serde_json::from_slice::<q::sessions::SessionsRequest>(body) {
            parsed += 1;
            let _ = q::sessions::run(&snap, &rules, &r);
        }
        if let Ok(r) = serde_json::from_slice::<q::paths::PathsRequest>(body) {
            parsed += 1;
            let _ = q::paths::run(&snap, &rules, &r);
        }
        if let Ok(r) = serde_json::from_slice::<q::attribution::AttributionRequest>(body) {
            parsed += 1;
            let _ = q::attribution::run(&snap, &rules, &registry, &spend, &r);
        }
        parsed
    };
    for (i, body) in corpus.iter().enumerate() {
        assert!(try_all(body) >= 1, "seed {i} is no valid request");
    }
    let mut ran = 0;
    fuzz("query requests", &corpus, |body| {
        ran += usize::from(try_all(body) > 0);
        Ok(())
    });
    // The mutations must still reach the queries, not only the JSON parser.
    let (cases, _) = throughline_fuzz::settings();
    assert!(
        ran as u64 >= cases / 50,
        "only {ran} of {cases} cases ran a query"
    );
    eprintln!("query requests: {ran} of {cases} cases ran a query");
    drop(snapshot);
    drop(project);
    let _ = std::fs::remove_dir_all(&dir);
}
