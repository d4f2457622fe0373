//! The project catalog: names and keys, in `DIR/catalog.json`.
//!
//! The catalog may change while a server runs (`projects create` from another shell), so
//! read-modify-write cycles hold `catalog.lock` briefly and the server re-reads the file
//! when it sees a key it does not know.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::StoreError;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectInfo {
    pub name: String,
    /// Public: ships inside web pages and apps; it can only send events.
    pub write_key: String,
    /// Secret: the Bearer token of the query API.
    pub api_key: String,
    pub created_at: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub projects: Vec<ProjectInfo>,
}

impl Catalog {
    pub fn load(dir: &Path) -> Result<Catalog, StoreError> {
        let path = dir.join("catalog.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                file: path,
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Catalog::default()),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&ProjectInfo> {
        self.projects.iter().find(|p| p.name == name)
    }

    pub fn by_write_key(&self, key: &str) -> Option<&ProjectInfo> {
        self.projects.iter().find(|p| p.write_key == key)
    }

    pub fn by_api_key(&self, key: &str) -> Option<&ProjectInfo> {
        self.projects.iter().find(|p| p.api_key == key)
    }

    /// Applies `change` to the catalog on disk under the catalog lock and returns its result.
    pub fn update<T>(
        dir: &Path,
        change: impl FnOnce(&mut Catalog) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let lock_path = dir.join("catalog.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&lock_path, e))?;
        lock.lock().map_err(|e| StoreError::io(&lock_path, e))?;
        let mut catalog = Catalog::load(dir)?;
        let out = change(&mut catalog)?;
        let path = dir.join("catalog.json");
        let bytes = serde_json::to_vec_pretty(&catalog).expect("catalog serializes");
        write_atomic(&path, &bytes).map_err(|e| StoreError::io(&path, e))?;
        Ok(out)
    }

    pub fn create_project(dir: &Path, name: &str) -> Result<ProjectInfo, StoreError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid {
            return Err(StoreError::BadProjectName(name.to_string()));
        }
        Catalog::update(dir, |c| {
            if c.get(name).is_some() {
                return Err(StoreError::ProjectExists(name.to_string()));
            }
            let info = ProjectInfo {
                name: name.to_string(),
                write_key: new_key("wk_", 16)?,
                api_key: new_key("tl_", 24)?,
                created_at: throughline_model::format_ms(now_ms()),
            };
            c.projects.push(info.clone());
            Ok(info)
        })
    }

    /// Issues new keys for a project; the old ones stop working at once.
    pub fn rotate_keys(dir: &Path, name: &str) -> Result<ProjectInfo, StoreError> {
        Catalog::update(dir, |c| {
            let p = c
                .projects
                .iter_mut()
                .find(|p| p.name == name)
                .ok_or_else(|| StoreError::NoProject(name.to_string()))?;
            p.write_key = new_key("wk_", 16)?;
            p.api_key = new_key("tl_", 24)?;
            Ok(p.clone())
        })
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A key from the OS's cryptographic random source, hex encoded.
fn new_key(prefix: &str, bytes: usize) -> Result<String, StoreError> {
    let path = Path::new("/dev/urandom");
    let mut buf = vec![0u8; bytes];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| StoreError::io(path, e))?;
    Ok(prefix.to_string() + &buf.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A random 64-bit seed from the OS, for message-id generation.
pub fn random_seed() -> u64 {
    let mut buf = [0u8; 8];
    let _ = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    u64::from_le_bytes(buf) ^ now_ms() as u64
}
