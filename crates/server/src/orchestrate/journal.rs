//! The orchestrator's files in `DIR/projects/NAME/orchestrate/`: the journal of inputs and
//! the snapshots of the machine's state.
//!
//! ```text
//! journal-<first seq>.log   frames: len u32 LE | crc32 u32 LE | Entry JSON; fsynced per commit
//! snapshot.json             one header line {"seq", "len", "crc"}, then the State JSON
//! ```
//!
//! A snapshot is written to a temp file, fsynced and renamed over the old one (then the
//! directory is fsynced); only then does a new journal file start and the older ones go.
//! Recovery reads the snapshot (checksum verified), then every journal file in order,
//! keeping each whole frame and cutting a torn tail (never committed, so never acted on).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use throughline_orchestrate::machine::State;
use throughline_orchestrate::{Entry, Journal};

/// A frame longer than this is damage, not an entry.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
const SNAPSHOT: &str = "snapshot.json";

pub struct FileJournal {
    dir: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// Bytes in the current journal file.
    pub bytes: u64,
}

fn io(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

fn journal_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let e = e.map_err(|e| io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("journal-")
            .and_then(|n| n.strip_suffix(".log"))
        {
            if let Ok(seq) = n.parse::<u64>() {
                out.push((seq, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// What recovery found: the snapshot, the entries after it, and cut bytes.
pub struct Recovered {
    pub snapshot: Option<(u64, State)>,
    pub entries: Vec<Entry>,
    pub torn_bytes: u64,
}

pub fn recover(dir: &Path) -> Result<Recovered, String> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let snap_path = dir.join(SNAPSHOT);
    let snapshot = match std::fs::read(&snap_path) {
        Ok(bytes) => Some(read_snapshot(&snap_path, &bytes)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&snap_path, e)),
    };
    let base = snapshot.as_ref().map_or(0, |s| s.0);
    let mut entries = Vec::new();
    let mut torn_bytes = 0;
    let files = journal_files(dir)?;
    for (i, (_, path)) in files.iter().enumerate() {
        let bytes = read_file(path)?;
        let (bodies, at) = frames(&bytes);
        for body in bodies {
            let e: Entry = serde_json::from_slice(body)
                .map_err(|e| format!("{}: entry: {e}", path.display()))?;
            if e.seq > base {
                entries.push(e);
            }
        }
        if at < bytes.len() {
            if i + 1 != files.len() {
                return Err(format!(
                    "{}: damaged at byte {at} and a later journal file exists",
                    path.display()
                ));
            }
            torn_bytes = (bytes.len() - at) as u64;
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io(path, e))?;
            f.set_len(at as u64).map_err(|e| io(path, e))?;
            f.sync_all().map_err(|e| io(path, e))?;
        }
    }
    Ok(Recovered {
        snapshot,
        entries,
        torn_bytes,
    })
}

/// The policy (caps, quiet hours, suppression) the orchestrator last applied to the
/// project, read without recovering or changing anything: the snapshot's, then the last
/// `set_policy` entry of the journal after it. `None` when the project never ran journeys.
/// A torn tail ends the reading (it was never committed).
pub fn last_policy(dir: &Path) -> Result<Option<throughline_orchestrate::Policy>, String> {
    #[derive(serde::Deserialize)]
    struct PolicyOnly {
        policy: Option<throughline_orchestrate::Policy>,
    }
    if !dir.exists() {
        return Ok(None);
    }
    let snap_path = dir.join(SNAPSHOT);
    // The snapshot's checksum is checked, but only its policy is decoded, not the state.
    let mut policy = match std::fs::read(&snap_path) {
        Ok(bytes) => {
            let (_, body) = snapshot_body(&snap_path, &bytes)?;
            serde_json::from_slice::<PolicyOnly>(body)
                .map_err(|e| format!("{}: {e}", snap_path.display()))?
                .policy
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&snap_path, e)),
    };
    // Only policy entries are decoded: the journal is mostly events and sends.
    const NEEDLE: &[u8] = b"\"input\":\"set_policy\"";
    for (_, path) in journal_files(dir)? {
        let bytes = read_file(&path)?;
        for body in frames(&bytes).0 {
            if body.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
                let e: Entry = serde_json::from_slice(body)
                    .map_err(|e| format!("{}: entry: {e}", path.display()))?;
                if let throughline_orchestrate::Input::SetPolicy { policy: p } = e.input {
                    policy = Some(*p);
                }
            }
        }
    }
    Ok(policy)
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io(path, e))?;
    Ok(bytes)
}

/// The whole, checked frames (len | crc32 | body) at the start of a journal file, and the
/// offset where they end: anything after it is a torn or damaged tail.
fn frames(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut bodies = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len > FRAME_BYTES_MAX || at + 8 + len > bytes.len() {
            break;
        }
        let body = &bytes[at + 8..at + 8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        bodies.push(body);
        at += 8 + len;
    }
    (bodies, at)
}

fn read_snapshot(path: &Path, bytes: &[u8]) -> Result<(u64, State), String> {
    let (seq, body) = snapshot_body(path, bytes)?;
    let state: State =
        serde_json::from_slice(body).map_err(|e| format!("{} is corrupt: {e}", path.display()))?;
    Ok((seq, state))
}

/// A snapshot's sequence number and its body (the state's JSON), length and checksum
/// checked against the header line.
fn snapshot_body<'b>(path: &Path, bytes: &'b [u8]) -> Result<(u64, &'b [u8]), String> {
    let corrupt = |why: &str| format!("{} is corrupt: {why}", path.display());
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[..nl]).map_err(|_| corrupt("bad header"))?;
    let body = &bytes[nl + 1..];
    let len = header["len"].as_u64().ok_or_else(|| corrupt("no length"))?;
    let crc = header["crc"]
        .as_u64()
        .ok_or_else(|| corrupt("no checksum"))?;
    let seq = header["seq"].as_u64().ok_or_else(|| corrupt("no seq"))?;
    if body.len() as u64 != len || crc32fast::hash(body) as u64 != crc {
        return Err(corrupt("checksum or length mismatch"));
    }
    Ok((seq, body))
}

impl FileJournal {
    /// Opens a fresh journal file after `seq` (the last entry recovered).
    pub fn open(dir: &Path, seq: u64) -> Result<FileJournal, String> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join(format!("journal-{:020}.log", seq + 1));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        sync_dir(dir)?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(FileJournal {
            dir: dir.to_path_buf(),
            file,
            buf: Vec::new(),
            bytes,
        })
    }

    /// Writes a snapshot of the state after entry `seq`, then starts a new journal file
    /// and removes the ones the snapshot covers.
    pub fn snapshot(&mut self, seq: u64, state: &State) -> Result<(), String> {
        let body = serde_json::to_vec(state).map_err(|e| e.to_string())?;
        let header =
            serde_json::json!({"seq": seq, "len": body.len(), "crc": crc32fast::hash(&body)});
        let tmp = self.dir.join("snapshot.json.tmp");
        let path = self.dir.join(SNAPSHOT);
        {
            let mut f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
            f.write_all(header.to_string().as_bytes())
                .map_err(|e| io(&tmp, e))?;
            f.write_all(b"\n").map_err(|e| io(&tmp, e))?;
            f.write_all(&body).map_err(|e| io(&tmp, e))?;
            f.sync_all().map_err(|e| io(&tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        sync_dir(&self.dir)?;
        let old = journal_files(&self.dir)?;
        *self = FileJournal::open(&self.dir, seq)?;
        for (first, p) in old {
            if first <= seq {
                std::fs::remove_file(&p).map_err(|e| io(&p, e))?;
            }
        }
        Ok(())
    }
}

impl Journal for FileJournal {
    fn append(&mut self, e: &Entry) -> Result<(), String> {
        let body = serde_json::to_vec(e).map_err(|e| e.to_string())?;
        if body.len() > FRAME_BYTES_MAX {
            return Err(format!(
                "a journal entry of {} bytes is over the limit",
                body.len()
            ));
        }
        self.buf
            .extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        self.buf.extend_from_slice(&body);
        Ok(())
    }

    fn commit(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        self.bytes += self.buf.len() as u64;
        self.buf.clear();
        r.map_err(|e| io(&self.dir, e))
    }
}
