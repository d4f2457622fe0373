//! Signed tokens for the links Throughline puts in messages: the hosted survey page
//! (`/s/{token}`) now, tracked clicks (`/r/`), opens (`/o/`) and unsubscribes (`/u/`)
//! later. A token says who it is for and what it does, and nobody without the project's
//! secret can make or alter one.
//!
//! **Format.** `PAYLOAD.MAC`, both base64url without padding: `PAYLOAD` is the JSON of
//! [`Claims`] (readable by anyone: put nothing secret in it), `MAC` is
//! HMAC-SHA256(secret, `"throughline-token-v1." + PAYLOAD`), 32 bytes. The version prefix
//! keeps a future format from ever verifying as this one. Verification recomputes the MAC
//! and compares in constant time ([`hmac::Mac::verify_slice`]) before the payload is
//! parsed, so a forged or altered token is rejected without looking at its claims.
//!
//! **The secret.** 32 random bytes per project, hex in `DIR/projects/NAME/token-secret`
//! with mode 0600, created on first use ([`Secret::load_or_create`]): written to a temp
//! file, fsynced, then hard-linked into place, so two processes creating it at once agree
//! on one secret and a crash never leaves a half-written one. Rotating it (deleting the
//! file) invalidates every link already sent.
//!
//! **Replays.** A token is a bearer capability until it expires; one-use semantics (one
//! survey answer per token) belong to the caller, which should key what it records by
//! [`Claims::nonce`] (the survey page stores the answer under a messageId made of it, so
//! the store's deduplication refuses a second answer, even across crashes).
//!
//! This crate does IO only to read and create the secret file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The secret's file name in a project directory.
pub const SECRET_FILE: &str = "token-secret";
/// A token longer than this is refused before any work.
pub const TOKEN_BYTES_MAX: usize = 2048;
/// Entries of [`Claims::data`] at most, and bytes per key or value.
pub const DATA_ENTRIES_MAX: usize = 16;
pub const DATA_VALUE_BYTES_MAX: usize = 512;

const DOMAIN: &[u8] = b"throughline-token-v1.";
const SECRET_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a token at all, too long, or not base64/JSON where it should be.
    #[error("malformed token")]
    Malformed,
    /// The MAC does not match: forged, altered, or signed with another secret.
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token claims: {0}")]
    Invalid(String),
    #[error("token secret {path}: {why}")]
    SecretCorrupt { path: PathBuf, why: String },
    #[error("token secret {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a token grants, signed as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// What the token is for: `survey` (the hosted survey page), later `click`, `open`,
    /// `unsubscribe`. Callers check it: a survey token is no unsubscribe link.
    #[serde(rename = "k")]
    pub kind: String,
    /// The project whose secret signs it (links carry no other project context).
    #[serde(rename = "p")]
    pub project: String,
    /// The person it was sent to: the id what it records is sent under (a user id).
    #[serde(rename = "u")]
    pub person: String,
    /// Unique per token: the idempotency key of what it records.
    #[serde(rename = "n")]
    pub nonce: String,
    #[serde(rename = "t")]
    pub issued_ms: i64,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    /// Kind-specific values: the survey, its question and stage; a click's destination.
    #[serde(rename = "d", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

impl Claims {
    /// New claims with a fresh random nonce.
    pub fn new(kind: &str, project: &str, person: &str, issued_ms: i64) -> Claims {
        Claims {
            kind: kind.to_string(),
            project: project.to_string(),
            person: person.to_string(),
            nonce: random_nonce(),
            issued_ms,
            expires_ms: None,
            data: BTreeMap::new(),
        }
    }

    fn check(&self) -> Result<(), TokenError> {
        let bad = |why: String| Err(TokenError::Invalid(why));
        if self.kind.is_empty() || self.project.is_empty() || self.person.is_empty() {
            return bad("kind, project and person must not be empty".into());
        }
        if self.nonce.is_empty() || self.nonce.len() > 64 {
            return bad("the nonce must have 1 to 64 bytes".into());
        }
        if self.data.len() > DATA_ENTRIES_MAX {
            return bad(format!("more than {DATA_ENTRIES_MAX} data entries"));
        }
        for (k, v) in &self.data {
            if k.len() > DATA_VALUE_BYTES_MAX || v.len() > DATA_VALUE_BYTES_MAX {
                return bad(format!(
                    "data entry {k:?} is longer than {DATA_VALUE_BYTES_MAX} bytes"
                ));
            }
        }
        Ok(())
    }
}

/// A project's signing key.
#[derive(Clone)]
pub struct Secret([u8; SECRET_BYTES]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn from_bytes(bytes: [u8; SECRET_BYTES]) -> Secret {
        Secret(bytes)
    }

    /// The project's secret, or `None` when none was created yet (then no token of the
    /// project can be valid).
    pub fn load(project_dir: &Path) -> Result<Option<Secret>, TokenError> {
        let path = project_dir.join(SECRET_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_secret(&path, &text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TokenError::Io { path, source }),
        }
    }

    /// The project's secret, created (mode 0600) if it does not exist yet.
    pub fn load_or_create(project_dir: &Path) -> Result<Secret, TokenError> {
        if let Some(s) = Secret::load(project_dir)? {
            return Ok(s);
        }
        let mut bytes = [0u8; SECRET_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| TokenError::Io {
            path: project_dir.join(SECRET_FILE),
            source: std::io::Error::other(e.to_string()),
        })?;
        let path = project_dir.join(SECRET_FILE);
        let tmp = project_dir.join(format!(
            ".{SECRET_FILE}.{}.{}.tmp",
            std::process::id(),
            random_nonce()
        ));
        let io = |p: &Path, source: std::io::Error| TokenError::Io {
            path: p.to_path_buf(),
            source,
        };
        let write = || -> Result<(), TokenError> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io(&tmp, e))?;
            f.write_all(format!("{}\n", hex(&bytes)).as_bytes())
                .map_err(|e| io(&tmp, e))?;
            f.sync_all().map_err(|e| io(&tmp, e))
        };
        let linked = write().and_then(|()| match std::fs::hard_link(&tmp, &path) {
            Ok(()) => Ok(true),
            // Another process created it first: theirs is the secret.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(&path, e)),
        });
        let _ = std::fs::remove_file(&tmp);
        if linked? {
            std::fs::File::open(project_dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(project_dir, e))?;
            return Ok(Secret(bytes));
        }
        Secret::load(project_dir)?.ok_or_else(|| TokenError::SecretCorrupt {
            path,
            why: "vanished while being created".into(),
        })
    }
}

fn parse_secret(path: &Path, text: &str) -> Result<Secret, TokenError> {
    let t = text.trim();
    let corrupt = |why: &str| TokenError::SecretCorrupt {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    if t.len() != 2 * SECRET_BYTES || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(corrupt("expected 64 hex digits"));
    }
    let mut bytes = [0u8; SECRET_BYTES];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| corrupt("not hex"))?;
    }
    Ok(Secret(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 96 random bits, base64url: a nonce no two tokens share.
pub fn random_nonce() -> String {
    let mut b = [0u8; 12];
    // Without the OS generator a nonce from the clock and process still differs per call.
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b.copy_from_slice(&t.to_le_bytes()[..12]);
    }
    URL_SAFE_NO_PAD.encode(b)
}

fn mac(secret: &Secret, payload: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(&secret.0).expect("HMAC takes any key length");
    m.update(DOMAIN);
    m.update(payload.as_bytes());
    m
}

/// The token for `claims`.
pub fn sign(secret: &Secret, claims: &Claims) -> Result<String, TokenError> {
    claims.check()?;
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let tag = mac(secret, &payload).finalize().into_bytes();
    let token = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag));
    if token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::Invalid(format!(
            "the token would be longer than {TOKEN_BYTES_MAX} bytes"
        )));
    }
    Ok(token)
}

/// The project a token names, unverified: which secret to verify it with. Never act on
/// it before [`verify`] succeeds.
pub fn project_of(token: &str) -> Option<String> {
    let (payload, _) = split(token).ok()?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    Some(claims.project)
}

fn split(token: &str) -> Result<(&str, &str), TokenError> {
    if token.is_empty() || token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::Malformed);
    }
    let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
    if payload.is_empty() || tag.is_empty() || tag.contains('.') {
        return Err(TokenError::Malformed);
    }
    Ok((payload, tag))
}

/// The claims of a genuine, unexpired token.
pub fn verify(secret: &Secret, token: &str, now_ms: i64) -> Result<Claims, TokenError> {
    let (payload, tag) = split(token)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| TokenError::Malformed)?;
    mac(secret, payload)
        .verify_slice(&tag)
        .map_err(|_| TokenError::BadSignature)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    claims.check()?;
    if claims.expires_ms.is_some_and(|e| now_ms >= e) {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        let mut c = Claims::new("survey", "shop", "user-1", 1_000);
        c.expires_ms = Some(10_000);
        c.data.insert("survey".into(), "nps".into());
        c
    }

    #[test]
    fn a_signed_token_verifies_and_every_alteration_is_refused() {
        let s = Secret::from_bytes([7; 32]);
        let c = claims();
        let t = sign(&s, &c).unwrap();
        assert_eq!(verify(&s, &t, 5_000).unwrap(), c);
        assert_eq!(project_of(&t).as_deref(), Some("shop"));
        // Another secret, an expired clock, and every one-character change.
        assert!(matches!(
            verify(&Secret::from_bytes([8; 32]), &t, 5_000),
            Err(TokenError::BadSignature)
        ));
        assert!(matches!(verify(&s, &t, 10_000), Err(TokenError::Expired)));
        let bytes = t.as_bytes();
        for i in 0..bytes.len() {
            for b in [b'A', b'z', b'0', b'-', b'.'] {
                if bytes[i] == b {
                    continue;
                }
                let mut forged = bytes.to_vec();
                forged[i] = b;
                let forged = String::from_utf8(forged).unwrap();
                assert!(verify(&s, &forged, 5_000).is_err(), "accepted {forged}");
            }
        }
        // A payload re-signed by nobody: swap in other claims with the old MAC.
        let mut other = c.clone();
        other.person = "user-2".into();
        let t2 = sign(&s, &other).unwrap();
        let spliced = format!(
            "{}.{}",
            t2.split('.').next().unwrap(),
            t.split('.').nth(1).unwrap()
        );
        assert!(matches!(
            verify(&s, &spliced, 5_000),
            Err(TokenError::BadSignature)
        ));
        for junk in ["", ".", "abc", "a.b.c", &"x".repeat(TOKEN_BYTES_MAX + 1)] {
            assert!(verify(&s, junk, 5_000).is_err(), "{junk}");
        }
    }

    #[test]
    fn claims_are_bounded() {
        let s = Secret::from_bytes([1; 32]);
        let mut c = claims();
        c.data
            .insert("comment".into(), "x".repeat(DATA_VALUE_BYTES_MAX + 1));
        assert!(sign(&s, &c).is_err());
        let mut c = claims();
        c.person = String::new();
        assert!(sign(&s, &c).is_err());
    }

    #[test]
    fn the_secret_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tl-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Secret::load(&dir).unwrap().is_none());
        let a = Secret::load_or_create(&dir).unwrap();
        let b = Secret::load_or_create(&dir).unwrap();
        assert_eq!(a.0, b.0);
        let meta = std::fs::metadata(dir.join(SECRET_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Concurrent creators agree on one secret.
        let _ = std::fs::remove_file(dir.join(SECRET_FILE));
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Secret::load_or_create(&dir).unwrap().0))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != SECRET_FILE)
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::write(dir.join(SECRET_FILE), "nothex\n").unwrap();
        assert!(matches!(
            Secret::load(&dir),
            Err(TokenError::SecretCorrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
