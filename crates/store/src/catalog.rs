//! The project catalog: names and keys, in `DIR/catalog.json`.
//!
//! The catalog may change while a server runs (`projects create` from another shell), so
//! read-modify-write cycles hold `catalog.lock` briefly and the server re-reads the file
//! when it sees a key it does not know.
//!
//! Api keys are secrets: the catalog keeps only their SHA-256, so a copy of the data
//! directory (a backup, a support bundle) does not hand out query access. The key itself
//! is returned once, by [`Catalog::create_project`] and [`Catalog::rotate_keys`]. Write
//! keys are public (they ship inside web pages) and are kept as they are.

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
    /// SHA-256 (hex) of the secret api key, the Bearer token of the query API.
    #[serde(default)]
    pub api_key_sha256: String,
    /// Catalogs written before keys were hashed hold the key itself; it is hashed when
    /// read and never written again.
    #[serde(default, rename = "api_key", skip_serializing)]
    legacy_api_key: Option<String>,
    pub created_at: String,
    /// Origins (`scheme://host[:port]`, or `*`) whose browser pages may post events with
    /// this project's write key; empty means no CORS answer and no Origin check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_origins: Vec<String>,
}

impl ProjectInfo {
    /// Whether a browser page from `origin` may send events to this project.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|o| o == "*" || o == origin)
    }
}

/// The canonical form of an allowed origin as browsers send it in `Origin`:
/// `scheme://host[:port]`, lowercase, no path, no trailing slash; `*` allows every origin.
pub fn normalize_origin(text: &str) -> Result<String, StoreError> {
    let t = text.trim();
    if t == "*" {
        return Ok(t.to_string());
    }
    let bad = || StoreError::BadOrigin(text.to_string());
    let (scheme, rest) = t.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    let rest = rest.strip_suffix('/').unwrap_or(rest).to_ascii_lowercase();
    let host_ok = !rest.is_empty()
        && rest.len() <= 253
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !(scheme == "http" || scheme == "https") || !host_ok {
        return Err(bad());
    }
    Ok(format!("{scheme}://{rest}"))
}

/// At most this many allowed origins per project.
pub const CORS_ORIGINS_MAX: usize = 64;

/// A project's keys as issued: the only time the api key is shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedKeys {
    pub name: String,
    pub write_key: String,
    pub api_key: String,
    pub created_at: String,
}

/// The hex SHA-256 of an api key, as the catalog stores it.
pub fn api_key_hash(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equality that takes as long whatever the inputs share, so response times cannot be
/// used to guess a key's hash byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub projects: Vec<ProjectInfo>,
}

impl Catalog {
    pub fn load(dir: &Path) -> Result<Catalog, StoreError> {
        let path = dir.join("catalog.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut c: Catalog =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        file: path,
                        why: e.to_string(),
                    })?;
                for p in &mut c.projects {
                    if let Some(key) = p.legacy_api_key.take() {
                        p.api_key_sha256 = api_key_hash(&key);
                    }
                }
                Ok(c)
            }
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

    /// The project whose api key this is. Every project's hash is compared, in constant
    /// time, so the time taken says nothing about which projects exist or how close a
    /// guess came.
    pub fn by_api_key(&self, key: &str) -> Option<&ProjectInfo> {
        let hash = api_key_hash(key);
        let mut found = None;
        for p in &self.projects {
            if constant_time_eq(p.api_key_sha256.as_bytes(), hash.as_bytes()) {
                found = Some(p);
            }
        }
        found
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

    pub fn create_project(dir: &Path, name: &str) -> Result<IssuedKeys, StoreError> {
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
            let issued = IssuedKeys {
                name: name.to_string(),
                write_key: new_key("wk_", 16)?,
                api_key: new_key("tl_", 24)?,
                created_at: throughline_model::format_ms(now_ms()),
            };
            c.projects.push(ProjectInfo {
                name: issued.name.clone(),
                write_key: issued.write_key.clone(),
                api_key_sha256: api_key_hash(&issued.api_key),
                legacy_api_key: None,
                created_at: issued.created_at.clone(),
                cors_origins: Vec::new(),
            });
            Ok(issued)
        })
    }

    /// Issues new keys for a project; the old ones stop working at once.
    pub fn rotate_keys(dir: &Path, name: &str) -> Result<IssuedKeys, StoreError> {
        Catalog::update(dir, |c| {
            let p = c
                .projects
                .iter_mut()
                .find(|p| p.name == name)
                .ok_or_else(|| StoreError::NoProject(name.to_string()))?;
            let api_key = new_key("tl_", 24)?;
            p.write_key = new_key("wk_", 16)?;
            p.api_key_sha256 = api_key_hash(&api_key);
            Ok(IssuedKeys {
                name: p.name.clone(),
                write_key: p.write_key.clone(),
                api_key,
                created_at: p.created_at.clone(),
            })
        })
    }
}

impl Catalog {
    /// Replaces a project's allowed CORS origins (validated and normalized); an empty list
    /// turns CORS off for it. A running server sees the change with its next request.
    pub fn set_cors_origins(
        dir: &Path,
        name: &str,
        origins: &[String],
    ) -> Result<ProjectInfo, StoreError> {
        let mut list = Vec::new();
        for o in origins {
            let o = normalize_origin(o)?;
            if !list.contains(&o) {
                list.push(o);
            }
        }
        if list.len() > CORS_ORIGINS_MAX {
            return Err(StoreError::BadOrigin(format!(
                "{} origins (at most {CORS_ORIGINS_MAX})",
                list.len()
            )));
        }
        Catalog::update(dir, |c| {
            let p = c
                .projects
                .iter_mut()
                .find(|p| p.name == name)
                .ok_or_else(|| StoreError::NoProject(name.to_string()))?;
            p.cors_origins = list;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_stored_hashed_and_found_by_the_key() {
        let dir = std::env::temp_dir().join(format!("tl-catalog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let issued = Catalog::create_project(&dir, "shop").unwrap();
        let other = Catalog::create_project(&dir, "other").unwrap();
        let text = std::fs::read_to_string(dir.join("catalog.json")).unwrap();
        assert!(
            !text.contains(&issued.api_key),
            "the key itself is never written"
        );
        assert!(text.contains(&api_key_hash(&issued.api_key)));
        let c = Catalog::load(&dir).unwrap();
        assert_eq!(c.by_api_key(&issued.api_key).unwrap().name, "shop");
        assert_eq!(c.by_api_key(&other.api_key).unwrap().name, "other");
        assert!(c.by_api_key("tl_guess").is_none());
        assert!(
            c.by_api_key(&api_key_hash(&issued.api_key)).is_none(),
            "the hash is not a key"
        );
        let rotated = Catalog::rotate_keys(&dir, "shop").unwrap();
        let c = Catalog::load(&dir).unwrap();
        assert!(
            c.by_api_key(&issued.api_key).is_none(),
            "the old key stops working"
        );
        assert_eq!(c.by_api_key(&rotated.api_key).unwrap().name, "shop");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cors_origins_are_normalized_and_matched_exactly() {
        assert_eq!(
            normalize_origin("HTTPS://Shop.Example/").unwrap(),
            "https://shop.example"
        );
        assert_eq!(
            normalize_origin("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(normalize_origin("*").unwrap(), "*");
        for bad in [
            "shop.example",
            "ftp://a.example",
            "https://a.example/path",
            "https://",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
        let dir = std::env::temp_dir().join(format!("tl-catalog-cors-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Catalog::create_project(&dir, "shop").unwrap();
        let p = Catalog::set_cors_origins(
            &dir,
            "shop",
            &["https://a.example/".into(), "https://a.example".into()],
        )
        .unwrap();
        assert_eq!(p.cors_origins, vec!["https://a.example"]);
        let c = Catalog::load(&dir).unwrap();
        let shop = c.get("shop").unwrap();
        assert!(shop.allows_origin("https://a.example"));
        assert!(!shop.allows_origin("https://a.example.evil"));
        assert!(!shop.allows_origin("http://a.example"));
        assert!(Catalog::set_cors_origins(&dir, "nope", &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_catalog_with_plain_keys_is_read_and_rewritten_hashed() {
        let dir = std::env::temp_dir().join(format!("tl-catalog-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("catalog.json"),
            r#"{"projects":[{"name":"shop","write_key":"wk_1","api_key":"tl_old","created_at":"2026-01-01T00:00:00.000Z"}]}"#,
        )
        .unwrap();
        let c = Catalog::load(&dir).unwrap();
        assert_eq!(c.by_api_key("tl_old").unwrap().name, "shop");
        Catalog::create_project(&dir, "next").unwrap();
        let text = std::fs::read_to_string(dir.join("catalog.json")).unwrap();
        assert!(!text.contains("tl_old"), "{text}");
        assert_eq!(
            Catalog::load(&dir)
                .unwrap()
                .by_api_key("tl_old")
                .unwrap()
                .name,
            "shop"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
