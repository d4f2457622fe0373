//! The audit log: who created, re-keyed or erased what, when and from where, one JSON
//! object per line in `DIR/audit.jsonl`, appended and fsynced before the action's answer.
//!
//! Bounded: past [`AUDIT_FILE_BYTES_MAX`] the file becomes `audit.1.jsonl` (replacing the
//! one before) and a new one starts, so the log keeps at least the last 64 MiB of actions.
//! It records actions, never secrets: no keys, no event contents, and an erased person's
//! id only as its SHA-256 ([`erased_id`]).

use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::StoreError;

pub const AUDIT_FILE: &str = "audit.jsonl";
pub const AUDIT_FILE_OLD: &str = "audit.1.jsonl";
pub const AUDIT_FILE_BYTES_MAX: u64 = 64 << 20;
/// A detail string is cut to this many bytes.
const DETAIL_BYTES_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// RFC 3339, UTC.
    pub at: String,
    /// `project.create`, `project.rotate_key`, `person.delete`, ...
    pub action: String,
    pub project: Option<String>,
    /// Who and from where: `cli user=NAME host=HOST pid=N` or `http 192.0.2.1:5555`.
    pub actor: String,
    /// What was acted on, e.g. the person id given, and the outcome.
    #[serde(default)]
    pub detail: String,
}

/// How an erasure names the person in the log: the SHA-256 of the id given, so the log
/// proves that a given id was erased (hash it and compare) without keeping the id, which
/// an erasure must not leave behind (also not in backups, which copy this log).
pub fn erased_id(id: &str) -> String {
    format!("id sha256:{}", crate::api_key_hash(id))
}

impl AuditEntry {
    pub fn new(
        action: &str,
        project: Option<&str>,
        actor: &str,
        detail: impl Into<String>,
    ) -> AuditEntry {
        let mut detail = detail.into();
        if detail.len() > DETAIL_BYTES_MAX {
            let mut cut = DETAIL_BYTES_MAX;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        AuditEntry {
            at: throughline_model::format_ms(crate::now_ms()),
            action: action.to_string(),
            project: project.map(str::to_string),
            actor: actor.to_string(),
            detail,
        }
    }
}

/// Appends an entry and fsyncs it. Entries are small, and one `write` of a whole line to a
/// file opened for appending keeps concurrent writers' lines whole.
pub fn append(dir: &Path, entry: &AuditEntry) -> Result<(), StoreError> {
    let path = dir.join(AUDIT_FILE);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= AUDIT_FILE_BYTES_MAX) {
        std::fs::rename(&path, dir.join(AUDIT_FILE_OLD)).map_err(|e| StoreError::io(&path, e))?;
    }
    let mut line = serde_json::to_vec(entry).expect("audit entries serialize");
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    f.write_all(&line).map_err(|e| StoreError::io(&path, e))?;
    f.sync_all().map_err(|e| StoreError::io(&path, e))
}

/// The entries, oldest first (the rotated file, then the current one); a line that does
/// not parse (a torn last write) is skipped.
pub fn read(dir: &Path) -> Result<Vec<AuditEntry>, StoreError> {
    let mut out = Vec::new();
    for name in [AUDIT_FILE_OLD, AUDIT_FILE] {
        let path = dir.join(name);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        for line in std::io::BufReader::new(f).lines() {
            let line = line.map_err(|e| StoreError::io(&path, e))?;
            if let Ok(e) = serde_json::from_str(&line) {
                out.push(e);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_in_order_and_torn_lines_are_skipped() {
        let dir = std::env::temp_dir().join(format!("tl-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        append(
            &dir,
            &AuditEntry::new("project.create", Some("shop"), "cli user=ann", ""),
        )
        .unwrap();
        append(
            &dir,
            &AuditEntry::new("person.delete", Some("shop"), "http 127.0.0.1:1", "id u1"),
        )
        .unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(AUDIT_FILE))
            .unwrap();
        f.write_all(b"{\"at\": \"2026").unwrap();
        let got = read(&dir).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].action, "project.create");
        assert_eq!(got[1].detail, "id u1");
        let long = AuditEntry::new("x", None, "a", "é".repeat(2000));
        assert!(long.detail.len() <= DETAIL_BYTES_MAX);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
