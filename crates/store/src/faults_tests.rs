//! Faults: damaged and truncated files of every kind are errors naming the file, never a
//! wrong answer; `check --repair` rebuilds what the log and the other files allow; a
//! backup taken while writing restores to the acknowledged state; format versions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use throughline_model::{Event, DIMS};

use crate::check::check_project;
use crate::tests::{contents, encode, event, options};
use crate::testutil::TempDir;
use crate::{ProjectOptions, ProjectStore, Segment, StoreError};

/// Two users on three devices, flushed into segments, some events left in the log.
fn populated(dir: &Path) -> BTreeMap<String, Event> {
    let p = ProjectStore::open("p", dir, options()).unwrap();
    for round in 0..3u64 {
        let events: Vec<Event> = (0..40)
            .map(|i| {
                let id = round * 100 + i;
                event(id, id % 2, id % 3, id as i64 * 1000, i % 17 == 0)
            })
            .collect();
        p.append(encode(&events)).unwrap();
        if round < 2 {
            p.flush().unwrap();
        }
    }
    let c = contents(&p);
    p.close();
    c
}

/// Every file under `dir` with its bytes, to put a directory back as it was.
fn save(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(save(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn put_back(dir: &Path, saved: &[(PathBuf, Vec<u8>)]) {
    for sub in ["segments", "wal"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
    }
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::remove_file(p).unwrap();
        }
    }
    for (p, b) in saved {
        std::fs::write(p, b).unwrap();
    }
}

fn files_with(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// Everything a query can read of a segment: scan columns, dimensions, payloads and
/// dedupe lookups of every stored id.
fn read_all(seg: &Segment, ids: &[u128]) -> Result<String, StoreError> {
    let mut out = String::new();
    out += &format!("{:?}", seg.read_column::<u32>("person")?);
    out += &format!("{:?}", seg.read_column::<u32>("node")?);
    out += &format!("{:?}", seg.read_column::<i64>("ts")?);
    out += &format!("{:?}", seg.read_column::<u8>("type")?);
    for d in DIMS {
        out += &format!("{:?}", seg.dim(d)?);
    }
    seg.for_each_payload(|row, p| {
        out += &format!("{row}:{}", String::from_utf8_lossy(p));
        Ok(())
    })?;
    for &h in ids {
        out += if seg.contains_hash(h)? { "1" } else { "0" };
    }
    Ok(out)
}

/// Flipping any byte of a segment, or cutting it anywhere, gives either the same answers
/// (a padding byte) or an error that names the file; never different answers.
#[test]
fn a_flipped_or_truncated_segment_is_an_error_naming_it_never_a_wrong_answer() {
    let dir = TempDir::new("flip-seg");
    let stored = populated(dir.path());
    let ids: Vec<u128> = stored
        .keys()
        .map(|k| crate::message_hash(k))
        .chain((0..50).map(|i| crate::message_hash(&format!("absent{i}"))))
        .collect();
    let path = files_with(&dir.path().join("segments"), ".seg")[0].clone();
    let good = std::fs::read(&path).unwrap();
    let expected = read_all(&Segment::open(&path).unwrap(), &ids).unwrap();
    let named = |e: &StoreError| e.to_string().contains(&path.display().to_string());
    let (mut errors, mut same) = (0, 0);
    let step = (good.len() / 600).max(1);
    for at in (0..good.len()).step_by(step) {
        let mut bad = good.clone();
        bad[at] ^= 0x5a;
        std::fs::write(&path, &bad).unwrap();
        match Segment::open(&path).and_then(|s| read_all(&s, &ids)) {
            Ok(answer) => {
                assert_eq!(answer, expected, "a flip at byte {at} changed the answers");
                same += 1;
            }
            Err(e) => {
                assert!(named(&e), "flip at {at}: {e}");
                errors += 1;
            }
        }
    }
    for len in (0..good.len()).step_by(step) {
        std::fs::write(&path, &good[..len]).unwrap();
        let e = Segment::open(&path)
            .and_then(|s| read_all(&s, &ids))
            .expect_err("a truncated segment must not read");
        assert!(named(&e), "cut at {len}: {e}");
    }
    assert!(errors > same, "{errors} errors, {same} harmless flips");
    std::fs::write(&path, &good).unwrap();
}

/// The manifest, identity snapshot and identity change logs: every flipped byte and every
/// truncation either leaves the store's contents as they were or makes open fail naming
/// the file.
#[test]
fn flipped_or_truncated_manifests_and_identity_files_fail_open_naming_them() {
    let dir = TempDir::new("flip-meta");
    let stored = populated(dir.path());
    // Opened once more so that what the open does (freeze a full table replayed from
    // the log) is done before the files are saved.
    ProjectStore::open("p", dir.path(), options())
        .unwrap()
        .close();
    let saved = save(dir.path());
    let mut targets = vec![dir.path().join("MANIFEST")];
    targets.extend(files_with(dir.path(), ".bin"));
    assert!(
        targets.len() >= 3,
        "a snapshot and a change log: {targets:?}"
    );
    for path in targets {
        let good = std::fs::read(&path).unwrap();
        let step = (good.len() / 150).max(1);
        let mut cases: Vec<Vec<u8>> = (0..good.len())
            .step_by(step)
            .map(|at| {
                let mut b = good.clone();
                b[at] ^= 0x5a;
                b
            })
            .collect();
        cases.extend((0..good.len()).step_by(step).map(|l| good[..l].to_vec()));
        for bad in cases {
            std::fs::write(&path, &bad).unwrap();
            match ProjectStore::open("p", dir.path(), options()) {
                Ok(p) => {
                    let c = contents(&p);
                    p.close();
                    assert!(
                        c == stored,
                        "{} damaged, yet opened with other contents",
                        path.display()
                    );
                }
                Err(e) => assert!(e.to_string().contains(&path.display().to_string()), "{e}"),
            }
            put_back(dir.path(), &saved);
        }
    }
}

#[test]
fn check_passes_a_sound_store_and_counts_its_events() {
    let dir = TempDir::new("check-ok");
    let stored = populated(dir.path());
    let r = check_project("p", dir.path(), false).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.events, stored.len());
    assert!(r.files_checked >= 4);

    // A damaged identity snapshot cannot be rebuilt from events: named, and left.
    let snapshot = files_with(dir.path(), ".bin")
        .into_iter()
        .find(|p| !p.to_string_lossy().contains("identity-log-"))
        .unwrap();
    let mut b = std::fs::read(&snapshot).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0xff;
    std::fs::write(&snapshot, b).unwrap();
    let r = check_project("p", dir.path(), true).unwrap();
    assert!(!r.ok() && r.problems[0].file == snapshot, "{r:?}");
    let why = r.not_repaired.join("\n");
    assert!(
        why.contains("identity graph cannot be rebuilt") && why.contains("restore from a backup"),
        "{why}"
    );
    assert!(snapshot.exists());
}

/// A damaged manifest is rebuilt from the files, leaving out a merge's input segment
/// that a crash left behind (its events are in the merge's output).
#[test]
fn check_repair_rebuilds_a_damaged_manifest_from_the_files() {
    let dir = TempDir::new("check-manifest");
    let opts = ProjectOptions {
        compact_segments_min: 2,
        ..options()
    };
    let p = ProjectStore::open("p", dir.path(), opts.clone()).unwrap();
    p.append(encode(
        &(0..30)
            .map(|i| event(i, 1, i % 4, i as i64, i == 3))
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    p.flush().unwrap();
    let first = files_with(&dir.path().join("segments"), ".seg");
    let kept: Vec<(PathBuf, Vec<u8>)> = first
        .iter()
        .map(|f| (f.clone(), std::fs::read(f).unwrap()))
        .collect();
    p.append(encode(
        &(30..60)
            .map(|i| event(i, 2, i % 4, i as i64, i == 33))
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    p.settle().unwrap();
    p.append(encode(
        &(60..70)
            .map(|i| event(i, 1, 9, i as i64, false))
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    let stored = contents(&p);
    p.close();
    // The first segment was merged away; put it back, as a crash before its deletion would.
    for (f, b) in &kept {
        if !f.exists() {
            std::fs::write(f, b).unwrap();
        }
    }
    let manifest = dir.path().join("MANIFEST");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text = text.replacen("seg", "sex", 1);
    std::fs::write(&manifest, text).unwrap();
    let err = ProjectStore::open("p", dir.path(), opts.clone())
        .err()
        .unwrap();
    assert!(err.to_string().contains("MANIFEST is corrupt"), "{err}");

    let r = check_project("p", dir.path(), false).unwrap();
    assert!(!r.ok() && r.problems[0].file == manifest, "{r:?}");
    let r = check_project("p", dir.path(), true).unwrap();
    assert!(r.ok(), "{r:?}");
    assert!(r.repaired.iter().any(|s| s.contains("rebuilt")), "{r:?}");
    assert!(r.not_repaired.is_empty(), "{r:?}");
    let p = ProjectStore::open("p", dir.path(), opts).unwrap();
    assert!(
        contents(&p) == stored,
        "the rebuilt store holds other events"
    );
    let nodes = p.snapshot().identity().node_count();
    assert!(nodes > 0);
}

/// A damaged segment whose events are all still in the log is dropped, and the log is
/// replayed in its place; one whose events are nowhere else is reported and left.
#[test]
fn check_repair_drops_a_damaged_segment_the_log_still_holds_and_reports_one_it_cannot() {
    let dir = TempDir::new("check-seg");
    let p = ProjectStore::open("p", dir.path(), options()).unwrap();
    p.append(encode(
        &(0..20)
            .map(|i| event(i, 1, 1, i as i64, i == 0))
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    p.flush().unwrap();
    p.append(encode(
        &(20..40)
            .map(|i| event(i, 2, 2, i as i64, i == 20))
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    // The log file of the second table, as a crash between publishing its segment and
    // deleting the log would leave it.
    let wal_dir = dir.path().join("wal");
    let logs: Vec<(PathBuf, Vec<u8>)> = files_with(&wal_dir, ".wal")
        .into_iter()
        .map(|f| {
            let b = std::fs::read(&f).unwrap();
            (f, b)
        })
        .filter(|(_, b)| !b.is_empty())
        .collect();
    p.flush().unwrap();
    let stored = contents(&p);
    p.close();
    for (f, b) in &logs {
        std::fs::write(f, b).unwrap();
    }
    let segs = files_with(&dir.path().join("segments"), ".seg");
    assert_eq!(segs.len(), 2);
    let damage = |path: &Path| {
        let mut b = std::fs::read(path).unwrap();
        let at = b.len() / 3;
        b[at] ^= 0xff;
        std::fs::write(path, b).unwrap();
    };
    // The newer segment: its events are in the log file put back.
    damage(&segs[1]);
    let r = check_project("p", dir.path(), true).unwrap();
    assert!(r.ok(), "{r:?}");
    assert!(r.repaired.iter().any(|s| s.contains("dropped")), "{r:?}");
    assert!(!segs[1].exists());
    let p = ProjectStore::open("p", dir.path(), options()).unwrap();
    assert!(
        contents(&p) == stored,
        "events lost or doubled by the repair"
    );
    p.close();

    // The older segment: its log is gone.
    damage(&segs[0]);
    let r = check_project("p", dir.path(), true).unwrap();
    assert!(!r.ok(), "{r:?}");
    let why = r.not_repaired.join("\n");
    assert!(
        why.contains(&segs[0].display().to_string())
            && why.contains("20 events are in no log file")
            && why.contains("restore from a backup"),
        "{why}"
    );
    assert!(segs[0].exists(), "an unrepairable segment is left in place");
    let p = ProjectStore::open("p", dir.path(), options()).unwrap();
    let err = p.snapshot().for_each_event(|_, _| Ok(())).unwrap_err();
    assert!(
        err.to_string().contains(&segs[0].display().to_string()),
        "{err}"
    );
}

#[test]
fn a_store_of_a_newer_format_is_refused_and_an_older_one_migrated() {
    let dir = TempDir::new("version");
    let stored = populated(dir.path());
    let path = dir.path().join("MANIFEST");
    let good = std::fs::read(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();

    v["version"] = serde_json::json!(crate::manifest::STORE_FORMAT_VERSION + 1);
    std::fs::write(&path, v.to_string()).unwrap();
    let err = ProjectStore::open("p", dir.path(), options())
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("newer Throughline") && msg.contains("upgrade") && msg.contains("MANIFEST"),
        "{msg}"
    );
    assert!(
        check_project("p", dir.path(), true).is_err(),
        "check must not touch a newer store"
    );

    // The previous format: version 1, no checksum.
    v["version"] = serde_json::json!(1);
    v.as_object_mut().unwrap().remove("checksum");
    std::fs::write(&path, v.to_string()).unwrap();
    let p = ProjectStore::open("p", dir.path(), options()).unwrap();
    assert!(contents(&p) == stored);
    p.close();
    let after: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(after["version"], crate::manifest::STORE_FORMAT_VERSION);
    assert!(after["checksum"].as_str().unwrap().starts_with("crc32:"));
}

fn data_dir_with_project(dir: &Path) -> PathBuf {
    crate::Catalog::create_project(dir, "p").unwrap();
    dir.join("projects").join("p")
}

/// A backup taken while a writer appends and flushes holds every event acknowledged
/// before it started, each once; the restore opens to exactly the backup's contents, and
/// a damaged backup is refused whole.
#[test]
fn a_backup_during_writes_restores_what_was_acknowledged_before_it() {
    let src = TempDir::new("backup-src");
    let pdir = data_dir_with_project(src.path());
    let p = Arc::new(ProjectStore::open("p", &pdir, options()).unwrap());
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, acked, stop) = (p.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let events: Vec<Event> = (id..id + 20)
                    .map(|i| event(i, i % 7, i % 11, i as i64, i % 13 == 0))
                    .collect();
                p.append(encode(&events)).unwrap();
                id += 20;
                acked.store(id, Ordering::SeqCst);
            }
        })
    };
    while acked.load(Ordering::SeqCst) < 2000 {
        std::thread::yield_now();
    }
    let out = src.path().join("backup.tar");
    let before = acked.load(Ordering::SeqCst);
    let summary = crate::backup::backup(src.path(), &out).unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(summary.files > 3, "{summary:?}");

    let dst = TempDir::new("backup-dst");
    let restored_dir = dst.path().join("data");
    crate::backup::restore(&out, &restored_dir).unwrap();
    let r = ProjectStore::open("p", &restored_dir.join("projects/p"), options()).unwrap();
    let got = contents(&r);
    for i in 0..before {
        assert!(
            got.contains_key(&format!("m{i}")),
            "m{i} acknowledged before the backup, missing"
        );
    }
    let all = contents(&p);
    for (k, e) in &got {
        assert!(all.get(k) == Some(e), "{k} restored but not as stored");
    }
    r.close();

    // One flipped byte anywhere in a file's content: restore refuses and leaves nothing.
    let mut bytes = std::fs::read(&out).unwrap();
    let at = 512 + 10;
    bytes[at] ^= 1;
    std::fs::write(&out, &bytes).unwrap();
    let again = dst.path().join("again");
    let err = crate::backup::restore(&out, &again).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(!again.exists());
    // Restoring over a store is refused.
    let err = crate::backup::restore(&out, src.path()).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}
