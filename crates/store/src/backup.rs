//! `throughline backup` and `restore`: a consistent copy of a data directory, taken while
//! a server writes it, as one tar file any `tar` can list, with a checksum manifest.
//!
//! No lock is taken and nothing of the running server is called: the store's files make a
//! consistent copy possible from outside. Segments, identity snapshots and change logs are
//! immutable once named by a MANIFEST; the MANIFEST changes only by atomic rename; log
//! files only grow, by whole fsynced records, and are deleted only after a MANIFEST that no
//! longer needs them is published. So per project: read the MANIFEST, open every file it
//! names and every log file from its `wal_start`, read the MANIFEST again; if it is the
//! same, the open files are one state of the store (an open file stays readable after the
//! server deletes it), else start over. Log files are copied up to their last whole
//! record. Every event acknowledged before the backup started is in the copy; events
//! acknowledged during it may be.
//!
//! The tar holds the data directory's relative paths (`catalog.json`,
//! `projects/NAME/segments/00000003.seg`, ...) and, last, `BACKUP.json`: the store format
//! version and each file's size and SHA-256. Restore writes into a new directory and
//! verifies every file against it before it reports success; on any mismatch it removes
//! what it wrote.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::Catalog;
use crate::fsutil::sync_dir;
use crate::manifest::{Manifest, MANIFEST_FILE, STORE_FORMAT_VERSION};
use crate::{wal, StoreError};

/// Attempts at a consistent copy of one project before giving up: each retry follows a
/// flush or a merge published during the attempt, seconds apart at the busiest.
const CAPTURE_ATTEMPTS_MAX: usize = 100;
pub const BACKUP_INDEX: &str = "BACKUP.json";
const BACKUP_FORMAT: u32 = 1;
/// Bound on the index read back at restore.
const INDEX_BYTES_MAX: u64 = 256 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupIndex {
    pub backup_format: u32,
    pub store_format: u32,
    pub created: String,
    pub files: Vec<BackupFile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What a backup or restore did.
#[derive(Clone, Debug, Serialize)]
pub struct BackupSummary {
    pub files: usize,
    pub bytes: u64,
    pub projects: Vec<String>,
}

/// One file to copy: an open handle and how many bytes of it belong to the copy, or the
/// bytes themselves.
struct Source {
    path: String,
    file: Option<File>,
    bytes: u64,
    inline: Vec<u8>,
}

/// Writes a consistent copy of `data` to `out` (replaced atomically when complete).
pub fn backup(data: &Path, out: &Path) -> Result<BackupSummary, StoreError> {
    let catalog = Catalog::load(data)?;
    let mut sources = Vec::new();
    for name in [
        "catalog.json",
        crate::audit::AUDIT_FILE_OLD,
        crate::audit::AUDIT_FILE,
    ] {
        if let Some(s) = open_whole(data, name, name == crate::audit::AUDIT_FILE)? {
            sources.push(s);
        }
    }
    let mut projects = Vec::new();
    for p in &catalog.projects {
        sources.extend(capture_project(data, &p.name)?);
        projects.push(p.name.clone());
    }
    let tmp = out.with_extension("partial");
    let result = write_tar(&tmp, &sources);
    let (files, bytes) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out).map_err(|e| StoreError::io(out, e))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).map_err(|e| StoreError::io(parent, e))?;
    }
    Ok(BackupSummary {
        files,
        bytes,
        projects,
    })
}

/// Opens `rel` under `data` if it exists; `lines` cuts a file being appended to at its
/// last newline.
fn open_whole(data: &Path, rel: &str, lines: bool) -> Result<Option<Source>, StoreError> {
    let p = data.join(rel);
    let file = match File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&p, e)),
    };
    let mut bytes = file.metadata().map_err(|e| StoreError::io(&p, e))?.len();
    if lines {
        let mut all = Vec::new();
        (&file)
            .take(bytes)
            .read_to_end(&mut all)
            .map_err(|e| StoreError::io(&p, e))?;
        bytes = all
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i as u64 + 1);
    }
    Ok(Some(Source {
        path: rel.to_string(),
        file: Some(file),
        bytes,
        inline: Vec::new(),
    }))
}

fn read_manifest(dir: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let p = dir.join(MANIFEST_FILE);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(&p, e)),
    }
}

/// The files of one project as of one MANIFEST (see the module comment).
fn capture_project(data: &Path, name: &str) -> Result<Vec<Source>, StoreError> {
    let rel = format!("projects/{name}");
    let dir = data.join(&rel);
    if !dir.exists() {
        // Created in the catalog, never opened: nothing stored yet.
        return Ok(Vec::new());
    }
    for _ in 0..CAPTURE_ATTEMPTS_MAX {
        let before = read_manifest(&dir)?;
        let manifest = match &before {
            Some(b) => Manifest::decode(&dir.join(MANIFEST_FILE), b)?.0,
            None => Manifest::empty(),
        };
        let mut sources = Vec::new();
        let mut vanished = false;
        let mut take = |path: String, sources: &mut Vec<Source>| -> Result<(), StoreError> {
            match open_whole(data, &path, false)? {
                Some(s) => sources.push(s),
                None => vanished = true,
            }
            Ok(())
        };
        for s in &manifest.segments {
            take(format!("{rel}/segments/{s}"), &mut sources)?;
        }
        for f in manifest.identity.iter().chain(&manifest.identity_logs) {
            take(format!("{rel}/{f}"), &mut sources)?;
        }
        let wal_dir = dir.join("wal");
        let seqs = match wal::list(&wal_dir) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::io(&wal_dir, e)),
        };
        for seq in seqs.into_iter().filter(|&s| s >= manifest.wal_start) {
            take(format!("{rel}/wal/{}", wal::file_name(seq)), &mut sources)?;
        }
        if vanished || read_manifest(&dir)? != before {
            continue;
        }
        for s in sources.iter_mut().filter(|s| s.path.ends_with(".wal")) {
            if let Some(f) = &s.file {
                s.bytes = wal::whole_records_len(f).map_err(|e| StoreError::io(&dir, e))?;
            }
        }
        if let Some(b) = before {
            // The bytes the files were chosen by, not a later MANIFEST.
            sources.push(Source {
                path: format!("{rel}/{MANIFEST_FILE}"),
                file: None,
                bytes: b.len() as u64,
                inline: b,
            });
        }
        other_files(data, &rel, true, &mut sources)?;
        return Ok(sources);
    }
    Err(StoreError::Corrupt {
        file: dir.join(MANIFEST_FILE),
        why: format!(
            "changed during each of {CAPTURE_ATTEMPTS_MAX} attempts at a consistent copy; retry when the server is less busy"
        ),
    })
}

/// The project's other files (registry, spend, rules, token secret, and any
/// subdirectory but the log and segments), as they are now.
fn other_files(data: &Path, rel: &str, top: bool, out: &mut Vec<Source>) -> Result<(), StoreError> {
    let dir = data.join(rel);
    let mut names: Vec<(String, bool)> = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ty = entry.file_type().map_err(|e| StoreError::io(&dir, e))?;
        names.push((name, ty.is_dir()));
    }
    names.sort();
    for (name, is_dir) in names {
        let store_file = top
            && (name == MANIFEST_FILE
                || name == "wal"
                || name == "segments"
                || name.starts_with("identity-"));
        if store_file || name.ends_with(".tmp") || name.ends_with(".lock") {
            continue;
        }
        let path = format!("{rel}/{name}");
        if is_dir {
            other_files(data, &path, false, out)?;
        } else if let Some(s) = open_whole(data, &path, false)? {
            out.push(s);
        }
    }
    Ok(())
}

/// Copies `file` (up to `bytes`) into `out`, returning its SHA-256.
fn copy_hashed(mut file: &File, bytes: u64, out: &mut impl Write) -> io::Result<String> {
    file.seek(io::SeekFrom::Start(0))?;
    let mut r = BufReader::with_capacity(1 << 20, file.take(bytes));
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than when it was opened",
            ));
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(hex(&hash.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_tar(path: &Path, sources: &[Source]) -> Result<(usize, u64), StoreError> {
    let io_err = |e| StoreError::io(path, e);
    let file = File::create(path).map_err(io_err)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut files = Vec::with_capacity(sources.len());
    let mut total = 0;
    for s in sources {
        tar::header(&mut out, &s.path, s.bytes).map_err(io_err)?;
        let sha256 = match &s.file {
            Some(f) => copy_hashed(f, s.bytes, &mut out)
                .map_err(|e| StoreError::io(Path::new(&s.path), e))?,
            None => {
                out.write_all(&s.inline).map_err(io_err)?;
                hex(&Sha256::digest(&s.inline))
            }
        };
        tar::pad(&mut out, s.bytes).map_err(io_err)?;
        total += s.bytes;
        files.push(BackupFile {
            path: s.path.clone(),
            bytes: s.bytes,
            sha256,
        });
    }
    let index = BackupIndex {
        backup_format: BACKUP_FORMAT,
        store_format: STORE_FORMAT_VERSION,
        created: throughline_model::format_ms(crate::now_ms()),
        files,
    };
    let n = index.files.len();
    let bytes = serde_json::to_vec_pretty(&index).expect("index serializes");
    tar::header(&mut out, BACKUP_INDEX, bytes.len() as u64).map_err(io_err)?;
    out.write_all(&bytes).map_err(io_err)?;
    tar::pad(&mut out, bytes.len() as u64).map_err(io_err)?;
    tar::end(&mut out).map_err(io_err)?;
    let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok((n, total))
}

/// Restores a backup into `data`, which must not exist or be empty. Every file is
/// verified against the backup's index; on any error what was written is removed.
pub fn restore(from: &Path, data: &Path) -> Result<BackupSummary, StoreError> {
    let existed = data.exists();
    if existed {
        let mut entries = std::fs::read_dir(data).map_err(|e| StoreError::io(data, e))?;
        if entries.next().is_some() {
            return Err(StoreError::Corrupt {
                file: data.to_path_buf(),
                why: "is not empty; restore into a new directory".into(),
            });
        }
    }
    std::fs::create_dir_all(data).map_err(|e| StoreError::io(data, e))?;
    let result = restore_into(from, data);
    if result.is_err() {
        if let Ok(entries) = std::fs::read_dir(data) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        if !existed {
            let _ = std::fs::remove_dir(data);
        }
    }
    result
}

fn restore_into(from: &Path, data: &Path) -> Result<BackupSummary, StoreError> {
    let bad = |why: String| StoreError::Corrupt {
        file: from.to_path_buf(),
        why,
    };
    let file = File::open(from).map_err(|e| StoreError::io(from, e))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut written: Vec<BackupFile> = Vec::new();
    let mut index: Option<BackupIndex> = None;
    let mut dirs = std::collections::BTreeSet::new();
    while let Some((path, size)) = tar::next(&mut r).map_err(|e| bad(e.to_string()))? {
        if index.is_some() {
            return Err(bad(format!("{path} after {BACKUP_INDEX}")));
        }
        if path == BACKUP_INDEX {
            if size > INDEX_BYTES_MAX {
                return Err(bad(format!("{BACKUP_INDEX} of {size} bytes")));
            }
            let mut bytes = vec![0u8; size as usize];
            r.read_exact(&mut bytes).map_err(|e| bad(e.to_string()))?;
            tar::skip_pad(&mut r, size).map_err(|e| bad(e.to_string()))?;
            index = Some(
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("{BACKUP_INDEX}: {e}")))?,
            );
            continue;
        }
        let target = safe_join(data, &path).ok_or_else(|| bad(format!("unsafe path {path:?}")))?;
        let parent = target.parent().expect("a joined path has a parent");
        std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        dirs.insert(parent.to_path_buf());
        // Owner-only, as the token secret must be and the rest of a data directory should.
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)
                .map_err(|e| StoreError::io(&target, e))?
        };
        let mut src = (&mut r).take(size);
        let sha256 = {
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = src.read(&mut buf).map_err(|e| bad(e.to_string()))?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                f.write_all(&buf[..n])
                    .map_err(|e| StoreError::io(&target, e))?;
            }
            hex(&hash.finalize())
        };
        f.sync_all().map_err(|e| StoreError::io(&target, e))?;
        tar::skip_pad(&mut r, size).map_err(|e| bad(format!("{path}: {e}")))?;
        written.push(BackupFile {
            path,
            bytes: size,
            sha256,
        });
    }
    let index = index.ok_or_else(|| bad(format!("no {BACKUP_INDEX}: not a complete backup")))?;
    crate::manifest::check_version(Path::new(BACKUP_INDEX), index.store_format)?;
    if written.len() != index.files.len() {
        return Err(bad(format!(
            "{} files, but the index lists {}",
            written.len(),
            index.files.len()
        )));
    }
    for (w, i) in written.iter().zip(&index.files) {
        if w.path != i.path || w.bytes != i.bytes || w.sha256 != i.sha256 {
            return Err(bad(format!("{} does not match its checksum", w.path)));
        }
    }
    for d in dirs {
        sync_dir(&d).map_err(|e| StoreError::io(&d, e))?;
    }
    sync_dir(data).map_err(|e| StoreError::io(data, e))?;
    let catalog = Catalog::load(data)?;
    Ok(BackupSummary {
        files: written.len(),
        bytes: written.iter().map(|w| w.bytes).sum(),
        projects: catalog.projects.iter().map(|p| p.name.clone()).collect(),
    })
}

/// `rel` under `base` if it is a plain relative path (no `..`, no root).
fn safe_join(base: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(base.join(p))
}

/// The little of POSIX ustar a backup needs: regular files, paths split over `prefix`
/// and `name`.
mod tar {
    use std::io::{self, Read, Write};

    const BLOCK: u64 = 512;

    fn octal(field: &mut [u8], value: u64) {
        let s = format!("{:0width$o}\0", value, width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    }

    pub fn header(out: &mut impl Write, path: &str, size: u64) -> io::Result<()> {
        let mut h = [0u8; BLOCK as usize];
        let (prefix, name) = if path.len() <= 100 {
            ("", path)
        } else {
            let cut = path[..path.len().min(156)]
                .rfind('/')
                .filter(|&i| path.len() - i - 1 <= 100)
                .ok_or_else(|| io::Error::other(format!("path too long for tar: {path}")))?;
            (&path[..cut], &path[cut + 1..])
        };
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], 0o600);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 0);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.write_all(&h)
    }

    pub fn pad(out: &mut impl Write, size: u64) -> io::Result<()> {
        let pad = (BLOCK - size % BLOCK) % BLOCK;
        out.write_all(&[0u8; BLOCK as usize][..pad as usize])
    }

    pub fn end(out: &mut impl Write) -> io::Result<()> {
        out.write_all(&[0u8; 2 * BLOCK as usize])
    }

    pub fn skip_pad(r: &mut impl Read, size: u64) -> io::Result<()> {
        let pad = (BLOCK - size % BLOCK) % BLOCK;
        let mut buf = [0u8; BLOCK as usize];
        r.read_exact(&mut buf[..pad as usize])
    }

    fn field(bytes: &[u8]) -> &str {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or("")
    }

    /// The next entry's path and size, or `None` at the end marker.
    pub fn next(r: &mut impl Read) -> io::Result<Option<(String, u64)>> {
        let mut h = [0u8; BLOCK as usize];
        r.read_exact(&mut h)?;
        if h.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let stored: u32 = u32::from_str_radix(field(&h[148..156]).trim(), 8)
            .map_err(|_| io::Error::other("bad tar header checksum field"))?;
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        if sum != stored {
            return Err(io::Error::other("tar header checksum mismatch"));
        }
        if h[156] != b'0' && h[156] != 0 {
            return Err(io::Error::other("unexpected tar entry type"));
        }
        let size = u64::from_str_radix(field(&h[124..136]).trim(), 8)
            .map_err(|_| io::Error::other("bad tar size field"))?;
        let (name, prefix) = (field(&h[..100]), field(&h[345..500]));
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        Ok(Some((path, size)))
    }
}
