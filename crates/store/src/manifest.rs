//! The MANIFEST of a project: which segments, identity snapshot and change logs are live,
//! and the first log file not yet folded into segments. It owns the store's format
//! version and the manifest's checksum; it never decides what goes in it (`maintenance`
//! does, under the manifest lock).
//!
//! The file is JSON so that anyone can read it, with two fields of its own: `version`, the
//! store format the project was written in, and `checksum`, the CRC32 of the manifest's
//! canonical JSON with `checksum` empty. A reader checks the version first (a store written
//! by a newer binary is refused with a message saying so, whatever else it holds), then
//! the checksum (a damaged manifest is an error naming the file, never a wrong list of
//! segments).
//!
//! Format versions: 1 had no checksum; 2 adds it. Opening a version-1 store migrates it:
//! the manifest is rewritten as version 2 (the segments, logs and identity files are the
//! same in both), so the migration is one atomic file replacement.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::StoreError;

/// The store format this binary writes, and the newest it opens.
pub const STORE_FORMAT_VERSION: u32 = 2;
/// The oldest store format this binary migrates from.
pub const STORE_FORMAT_VERSION_MIN: u32 = 1;
pub const MANIFEST_FILE: &str = "MANIFEST";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    #[serde(default)]
    pub checksum: String,
    pub segments: Vec<String>,
    pub next_segment: u64,
    /// First log file whose records are not in any segment.
    pub wal_start: u64,
    /// The identity graph as of `wal_start`: this snapshot, then these change logs in order.
    pub identity: Option<String>,
    #[serde(default)]
    pub identity_logs: Vec<String>,
}

impl Manifest {
    /// The manifest of a new, empty project.
    pub fn empty() -> Manifest {
        Manifest {
            version: STORE_FORMAT_VERSION,
            wal_start: 1,
            ..Manifest::default()
        }
    }

    fn crc(&self) -> String {
        let mut plain = self.clone();
        plain.checksum.clear();
        let bytes = serde_json::to_vec(&plain).expect("manifest serializes");
        format!("crc32:{:08x}", crc32fast::hash(&bytes))
    }

    /// The file's bytes: this manifest at the current version, with its checksum.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.version = STORE_FORMAT_VERSION;
        m.checksum = m.crc();
        let mut bytes = serde_json::to_vec_pretty(&m).expect("manifest serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parses and verifies a manifest file's bytes. Returns the manifest and the format
    /// version it was written in (older than [`STORE_FORMAT_VERSION`] means it needs
    /// [`migrate`]).
    pub fn decode(file: &Path, bytes: &[u8]) -> Result<(Manifest, u32), StoreError> {
        let corrupt = |why: String| StoreError::Corrupt {
            file: file.to_path_buf(),
            why,
        };
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        // The version alone first: a newer store may have changed everything else.
        let v: VersionOnly =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not a manifest ({e})")))?;
        check_version(file, v.version)?;
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if v.version >= 2 && m.checksum != m.crc() {
            return Err(corrupt(format!(
                "checksum mismatch (stored {:?}, computed {:?})",
                m.checksum,
                m.crc()
            )));
        }
        Ok((m, v.version))
    }

    /// Writes the manifest durably (temp file, fsync, rename, directory fsync).
    pub fn write(&self, project_dir: &Path) -> Result<(), StoreError> {
        let path = project_dir.join(MANIFEST_FILE);
        write_atomic(&path, &self.encode()).map_err(|e| StoreError::io(&path, e))
    }
}

/// Refuses a store format this binary cannot read.
pub fn check_version(file: &Path, version: u32) -> Result<(), StoreError> {
    if version > STORE_FORMAT_VERSION {
        return Err(StoreError::NewerFormat {
            file: file.to_path_buf(),
            found: version,
            supported: STORE_FORMAT_VERSION,
        });
    }
    if version < STORE_FORMAT_VERSION_MIN {
        return Err(StoreError::Corrupt {
            file: file.to_path_buf(),
            why: format!("unknown store format version {version}"),
        });
    }
    Ok(())
}

/// Reads a project's manifest (an empty one if the project is new), migrating an older
/// format in place. `progress(done, total)` is told about each migration step.
pub fn load(
    project_dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Manifest, StoreError> {
    let path = project_dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::empty()),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    let (m, version) = Manifest::decode(&path, &bytes)?;
    if version < STORE_FORMAT_VERSION {
        migrate(project_dir, m.clone(), version, progress)?;
        tracing::info!(project = %project_dir.display(), from = version, to = STORE_FORMAT_VERSION, "migrated the store format");
    }
    Ok(Manifest {
        version: STORE_FORMAT_VERSION,
        ..m
    })
}

/// The format version of a project's store if it is older than this binary's (a migration
/// is due), without changing anything.
pub fn pending_migration(project_dir: &Path) -> Result<Option<u32>, StoreError> {
    let path = project_dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    let (_, version) = Manifest::decode(&path, &bytes)?;
    Ok((version < STORE_FORMAT_VERSION).then_some(version))
}

/// Brings a project from format `from` to [`STORE_FORMAT_VERSION`], one step per
/// version. Each step is atomic (it ends with a manifest rename), so a crash mid-way
/// leaves a store the next open migrates again from where it stopped.
fn migrate(
    project_dir: &Path,
    manifest: Manifest,
    from: u32,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), StoreError> {
    let total = u64::from(STORE_FORMAT_VERSION - from);
    for (done, step) in (from..STORE_FORMAT_VERSION).enumerate() {
        progress(done as u64, total);
        match step {
            // 1 -> 2: the same files; the manifest gains its checksum.
            1 => manifest.write(project_dir)?,
            _ => unreachable!("every older version has a migration step"),
        }
    }
    progress(total, total);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            segments: vec!["00000001.seg".into(), "00000004.seg".into()],
            next_segment: 5,
            wal_start: 3,
            identity: Some("identity-00000004.bin".into()),
            ..Manifest::empty()
        }
    }

    #[test]
    fn encoded_manifests_decode_to_themselves() {
        let m = sample();
        let (back, version) = Manifest::decode(Path::new("MANIFEST"), &m.encode()).unwrap();
        assert_eq!(version, STORE_FORMAT_VERSION);
        assert_eq!(back.segments, m.segments);
        assert_eq!(back.wal_start, 3);
    }

    /// A damaged manifest that is still valid JSON (one digit changed) is detected: it
    /// would otherwise name the wrong segments or the wrong first log file.
    #[test]
    fn a_changed_digit_fails_the_checksum() {
        let text = String::from_utf8(sample().encode()).unwrap();
        let damaged = text.replace("\"wal_start\": 3", "\"wal_start\": 4");
        assert_ne!(text, damaged);
        let err = Manifest::decode(Path::new("p/MANIFEST"), damaged.as_bytes()).unwrap_err();
        assert!(
            err.to_string()
                .contains("p/MANIFEST is corrupt: checksum mismatch"),
            "{err}"
        );
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().encode()).unwrap();
        v["version"] = serde_json::json!(STORE_FORMAT_VERSION + 1);
        v["segments"] = serde_json::json!({"changed": "shape"});
        let err = Manifest::decode(Path::new("p/MANIFEST"), v.to_string().as_bytes()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::NewerFormat { .. }), "{msg}");
        assert!(msg.contains("p/MANIFEST") && msg.contains("newer"), "{msg}");
    }

    /// A version-1 manifest (no checksum) is read and rewritten as the current version.
    #[test]
    fn a_version_1_manifest_is_migrated() {
        let dir = crate::testutil::TempDir::new("migrate");
        let v1 = serde_json::json!({
            "version": 1, "segments": ["00000001.seg"], "next_segment": 2,
            "wal_start": 2, "identity": "identity-00000001.bin", "identity_logs": []
        });
        std::fs::write(dir.path().join(MANIFEST_FILE), v1.to_string()).unwrap();
        let mut steps = Vec::new();
        let m = load(dir.path(), &mut |d, t| steps.push((d, t))).unwrap();
        assert_eq!(m.segments, vec!["00000001.seg".to_string()]);
        assert_eq!(steps.last(), Some(&(1, 1)));
        let bytes = std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap();
        let (again, version) = Manifest::decode(Path::new("MANIFEST"), &bytes).unwrap();
        assert_eq!(version, STORE_FORMAT_VERSION);
        assert_eq!((again.wal_start, again.next_segment), (2, 2));
    }
}
