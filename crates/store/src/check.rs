//! `throughline check`: verifies every file of a project against its checksums, and
//! repairs what can be rebuilt from what is left. It runs on a project no process has
//! open (the caller holds the directory lock) and never opens it as a store, so it works
//! on exactly the damage that makes opening fail.
//!
//! What can be rebuilt, and from what:
//! - a damaged or missing MANIFEST, from the files it named: the segments that verify
//!   (newest first, a segment whose message ids a newer one already holds is a merge's or
//!   an erasure's input and is left out), the newest identity snapshot and the change
//!   logs after it, every log file still present;
//! - a damaged segment whose every message id is still in a log file or another segment:
//!   it is dropped and the log is replayed from there.
//!
//! What cannot: a damaged segment holding events nothing else holds, and a damaged
//! identity snapshot or change log (segments store identity nodes, which only that graph
//! maps to persons). These are reported with what they hold, and left in place, so reads
//! keep failing with an error naming the file rather than answering without them: restore
//! from a backup (`throughline restore`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use throughline_identity::{IdentityConfig, IdentityGraph};

use crate::batch::EventBatch;
use crate::idhash::HashSet128;
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::segment::Segment;
use crate::{wal, StoreError};

/// What `check` found in one project, and what `--repair` did about it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub project: String,
    /// Files read and verified.
    pub files_checked: usize,
    /// Events in live segments and whole log records after `wal_start`.
    pub events: usize,
    pub problems: Vec<Problem>,
    /// Things that are not damage: torn log tails (never acknowledged), leftovers of a
    /// crash that the next open deletes.
    pub notes: Vec<String>,
    pub repaired: Vec<String>,
    pub not_repaired: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub file: PathBuf,
    pub error: String,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, file: &Path, error: impl ToString) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            error: error.to_string(),
        });
    }
}

/// Checks one project directory; with `repair`, rebuilds what can be rebuilt and checks
/// again (the report then describes the project as repaired, plus what was done).
pub fn check_project(name: &str, dir: &Path, repair: bool) -> Result<CheckReport, StoreError> {
    let mut report = verify(name, dir)?;
    if !repair || report.ok() {
        return Ok(report);
    }
    let (repaired, not_repaired) = rebuild(dir, &report)?;
    report = verify(name, dir)?;
    report.repaired = repaired;
    report.not_repaired = not_repaired;
    Ok(report)
}

/// A segment file verified end to end: every column, block and record.
fn open_verified(path: &Path) -> Result<Segment, StoreError> {
    let seg = Segment::open(path)?;
    seg.verify()?;
    Ok(seg)
}

fn verify(name: &str, dir: &Path) -> Result<CheckReport, StoreError> {
    let mut r = CheckReport {
        project: name.to_string(),
        ..CheckReport::default()
    };
    let mpath = dir.join(MANIFEST_FILE);
    let manifest = match std::fs::read(&mpath) {
        Ok(bytes) => match Manifest::decode(&mpath, &bytes) {
            Ok((m, _)) => Some(m),
            // Not damage this binary could judge, let alone repair.
            Err(e @ StoreError::NewerFormat { .. }) => return Err(e),
            Err(e) => {
                r.problem(&mpath, e);
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !list(&dir.join("segments"), ".seg")?.is_empty() {
                r.problem(&mpath, "missing, but the project has segment files");
                None
            } else {
                Some(Manifest::empty())
            }
        }
        Err(e) => return Err(StoreError::io(&mpath, e)),
    };
    r.files_checked += 1;
    let Some(m) = manifest else {
        return Ok(r);
    };
    for s in &m.segments {
        let p = dir.join("segments").join(s);
        r.files_checked += 1;
        match open_verified(&p) {
            Ok(seg) => r.events += seg.rows(),
            Err(e) => r.problem(&p, e),
        }
    }
    let mut graph = IdentityGraph::new(IdentityConfig::default());
    let mut graph_ok = true;
    if let Some(snap) = &m.identity {
        let p = dir.join(snap);
        r.files_checked += 1;
        match std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| IdentityGraph::from_snapshot(&b).map_err(|e| e.to_string()))
        {
            Ok(g) => graph = g,
            Err(e) => {
                graph_ok = false;
                r.problem(&p, format!("identity snapshot: {e}"));
            }
        }
    }
    for log in &m.identity_logs {
        let p = dir.join(log);
        r.files_checked += 1;
        let replayed = std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| match graph_ok {
                true => crate::idlog::replay(&b, &mut graph),
                // Without the snapshot the log cannot be replayed; its checksum still can
                // be checked by replaying it into an empty graph.
                false => crate::idlog::replay(&b, &mut IdentityGraph::default()),
            });
        if let Err(e) = replayed {
            graph_ok = false;
            r.problem(&p, format!("identity change log: {e}"));
        }
    }
    let wal_dir = dir.join("wal");
    for seq in wal::list(&wal_dir).map_err(|e| StoreError::io(&wal_dir, e))? {
        let p = wal_dir.join(wal::file_name(seq));
        if seq < m.wal_start {
            r.notes.push(format!(
                "{}: already in segments, deleted at the next open",
                p.display()
            ));
            continue;
        }
        r.files_checked += 1;
        let rec = wal::scan(&p).map_err(|e| StoreError::io(&p, e))?;
        r.events += rec.records.len();
        if rec.torn_bytes > 0 {
            r.notes.push(format!(
                "{}: a torn tail of {} bytes after {} whole records (never acknowledged; cut at the next open)",
                p.display(),
                rec.torn_bytes,
                rec.records.len()
            ));
        }
        let mut batch = EventBatch::new();
        for (i, record) in rec.records.iter().enumerate() {
            if let Err(e) = batch.push_record(record) {
                r.problem(&p, format!("log record {i}: {e}"));
                break;
            }
        }
    }
    for f in list(&dir.join("segments"), ".seg")? {
        if !m.segments.contains(&f) {
            r.notes.push(format!(
                "segments/{f}: not in the manifest (a crash leftover), deleted at the next open"
            ));
        }
    }
    Ok(r)
}

/// File names in `dir` ending with `suffix`, sorted.
fn list(dir: &Path, suffix: &str) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(suffix) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The number in a file name such as `00000012.seg` or `identity-log-00000012.bin`.
fn number_of(name: &str) -> Option<u64> {
    let stem = name.rsplit_once('.')?.0;
    stem.rsplit('-').next()?.parse().ok()
}

/// Message-id hashes of every whole record in the log files present, by file number.
fn log_hashes(wal_dir: &Path) -> Result<BTreeMap<u64, HashSet128>, StoreError> {
    let mut out = BTreeMap::new();
    for seq in wal::list(wal_dir).map_err(|e| StoreError::io(wal_dir, e))? {
        let p = wal_dir.join(wal::file_name(seq));
        let rec = wal::scan(&p).map_err(|e| StoreError::io(&p, e))?;
        let mut batch = EventBatch::new();
        let mut set = HashSet128::default();
        for record in &rec.records {
            if batch.push_record(record).is_err() {
                break;
            }
        }
        for row in batch.rows() {
            set.insert(row.hash);
        }
        out.insert(seq, set);
    }
    Ok(out)
}

/// Repairs what the report's problems allow; returns (done, not done).
fn rebuild(dir: &Path, report: &CheckReport) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let mut done = Vec::new();
    let mut not_done = Vec::new();
    let mpath = dir.join(MANIFEST_FILE);
    let seg_dir = dir.join("segments");
    let wal_dir = dir.join("wal");
    let logs = log_hashes(&wal_dir)?;
    let manifest_damaged = report.problems.iter().any(|p| p.file == mpath);

    let mut m = if manifest_damaged {
        let m = rebuild_manifest(dir, &mut done, &mut not_done)?;
        done.push(format!(
            "rebuilt {} from the files present: {} segments, identity {}, {} change logs, log from file {}",
            mpath.display(),
            m.segments.len(),
            m.identity.as_deref().unwrap_or("(none)"),
            m.identity_logs.len(),
            m.wal_start
        ));
        m
    } else {
        Manifest::decode(
            &mpath,
            &std::fs::read(&mpath).map_err(|e| StoreError::io(&mpath, e))?,
        )?
        .0
    };

    // Damaged segments the manifest names: dropped if every event is held elsewhere.
    let damaged: Vec<String> = m
        .segments
        .iter()
        .filter(|s| open_verified(&seg_dir.join(s)).is_err())
        .cloned()
        .collect();
    for s in damaged {
        let p = seg_dir.join(&s);
        let hashes = Segment::open(&p).and_then(|seg| Ok((seg.rows(), seg.hashes()?)));
        let Ok((rows, hashes)) = hashes else {
            not_done.push(format!(
                "{}: damaged beyond reading its message ids, so whether its events are elsewhere cannot be known; left in place (reads fail naming it): restore from a backup",
                p.display()
            ));
            continue;
        };
        let mut others = HashSet128::default();
        for o in m.segments.iter().filter(|o| **o != s) {
            if let Ok(seg) = open_verified(&seg_dir.join(o)) {
                others.extend(seg.hashes()?);
            }
        }
        let mut from_log = None;
        let covered = hashes.iter().all(|h| {
            if others.contains(h) {
                return true;
            }
            match logs.iter().find(|(_, set)| set.contains(h)) {
                Some((&seq, _)) => {
                    from_log = Some(from_log.map_or(seq, |f: u64| f.min(seq)));
                    true
                }
                None => false,
            }
        });
        if !covered {
            let missing = hashes
                .iter()
                .filter(|h| !others.contains(h) && !logs.values().any(|set| set.contains(h)))
                .count();
            not_done.push(format!(
                "{}: {missing} of its {rows} events are in no log file and no other segment; left in place (reads fail naming it): restore from a backup",
                p.display()
            ));
            continue;
        }
        m.segments.retain(|o| *o != s);
        if let Some(seq) = from_log {
            m.wal_start = m.wal_start.min(seq);
        }
        m.write(dir)?;
        std::fs::remove_file(&p).map_err(|e| StoreError::io(&p, e))?;
        done.push(format!(
            "dropped {}: its {rows} events are still in the log or another segment{}",
            p.display(),
            from_log.map_or(String::new(), |s| format!(
                " (the log is replayed from file {s})"
            ))
        ));
    }
    for p in &report.problems {
        let name = p.file.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with("identity-")) {
            not_done.push(format!(
                "{}: the identity graph cannot be rebuilt from events (segments store its node numbers); restore from a backup",
                p.file.display()
            ));
        }
        if p.file.starts_with(&wal_dir) {
            not_done.push(format!(
                "{}: a log record that passed its checksum does not decode; restore from a backup",
                p.file.display()
            ));
        }
    }
    Ok((done, not_done))
}

/// A manifest from the files present (see the module comment).
fn rebuild_manifest(
    dir: &Path,
    done: &mut Vec<String>,
    not_done: &mut Vec<String>,
) -> Result<Manifest, StoreError> {
    let seg_dir = dir.join("segments");
    let mut m = Manifest::empty();
    let mut names = list(&seg_dir, ".seg")?;
    names.sort_by_key(|n| std::cmp::Reverse(number_of(n).unwrap_or(0)));
    let mut held = HashSet128::default();
    let mut max_number = 0;
    for name in names {
        let p = seg_dir.join(&name);
        max_number = max_number.max(number_of(&name).unwrap_or(0));
        let seg = match open_verified(&p) {
            Ok(s) => s,
            Err(e) => {
                not_done.push(format!(
                    "{}: damaged ({e}); not named in the rebuilt manifest: restore from a backup if its events are nowhere else",
                    p.display()
                ));
                continue;
            }
        };
        let hashes = seg.hashes()?;
        if hashes.iter().any(|h| held.contains(h)) {
            done.push(format!(
                "left out {}: a newer segment holds its events (an input of a merge or an erasure)",
                p.display()
            ));
            continue;
        }
        held.extend(hashes);
        m.segments.push(name);
    }
    m.segments.reverse();
    let snapshots: Vec<String> = list(dir, ".bin")?
        .into_iter()
        .filter(|n| n.starts_with("identity-") && !n.starts_with("identity-log-"))
        .collect();
    let newest = snapshots
        .iter()
        .filter(|n| {
            std::fs::read(dir.join(n))
                .ok()
                .is_some_and(|b| IdentityGraph::from_snapshot(&b).is_ok())
        })
        .max_by_key(|n| number_of(n));
    let floor = newest.and_then(|n| number_of(n)).unwrap_or(0);
    m.identity = newest.cloned();
    let mut logs: Vec<String> = list(dir, ".bin")?
        .into_iter()
        .filter(|n| n.starts_with("identity-log-") && number_of(n).is_some_and(|k| k > floor))
        .collect();
    logs.sort_by_key(|n| number_of(n));
    m.identity_logs = logs;
    for n in snapshots.iter().chain(&m.identity_logs) {
        max_number = max_number.max(number_of(n).unwrap_or(0));
    }
    let seqs = wal::list(&dir.join("wal")).map_err(|e| StoreError::io(dir, e))?;
    m.wal_start = seqs.first().copied().unwrap_or(1);
    m.next_segment = max_number + 1;
    m.write(dir)?;
    Ok(m)
}
