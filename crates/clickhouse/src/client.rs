//! ClickHouse's HTTP interface (port 8123): statements in, bytes out.
//!
//! Owns nothing but a connection pool. Statements go in the POST body, inserts put the
//! statement in the `query` parameter and the RowBinary rows in the body, and answers are
//! read either whole (small ones) or as a stream (row scans). It never interprets rows.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::ClickHouseError;

/// How long a connection attempt may take before the server counts as down.
const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Whole-request bound for statements and inserts; scans stream without one.
const STATEMENT_TIMEOUT_MS: u64 = 120_000;
/// Server error messages kept in an error, at most.
const ERROR_BODY_BYTES_MAX: usize = 2_000;

/// `THROUGHLINE_CLICKHOUSE_SQL_LOG=DIR` appends every statement sent (and each INSERT's
/// rows, as a file) to `DIR/statements.jsonl`, so tests can replay exactly what was sent
/// on another ClickHouse release.
const SQL_LOG_ENV: &str = "THROUGHLINE_CLICKHOUSE_SQL_LOG";

struct SqlLog {
    dir: std::path::PathBuf,
    file: Mutex<std::fs::File>,
    inserts: AtomicU64,
}

fn sql_log() -> Option<&'static SqlLog> {
    static LOG: OnceLock<Option<SqlLog>> = OnceLock::new();
    LOG.get_or_init(|| {
        let dir = std::path::PathBuf::from(std::env::var_os(SQL_LOG_ENV)?);
        std::fs::create_dir_all(&dir).ok()?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("statements.jsonl"))
            .ok()?;
        Some(SqlLog {
            dir,
            file: Mutex::new(file),
            inserts: AtomicU64::new(0),
        })
    })
    .as_ref()
}

fn log_statement(url: &str, sql: &str, settings: &[(&str, &str)], rows: Option<&[u8]>) {
    let Some(log) = sql_log() else {
        return;
    };
    let mut entry = serde_json::json!({
        "url": url,
        "sql": sql,
        "settings": settings.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(rows) = rows {
        let n = log.inserts.fetch_add(1, Ordering::Relaxed);
        let name = format!("insert-{}-{n}.bin", std::process::id());
        if std::fs::write(log.dir.join(&name), rows).is_err() {
            return;
        }
        entry["rows"] = name.into();
    }
    let mut line = entry.to_string();
    line.push('\n');
    let _ = log
        .file
        .lock()
        .expect("log lock")
        .write_all(line.as_bytes());
}

/// One ClickHouse server's HTTP endpoint, e.g. `http://127.0.0.1:8123`, optionally with
/// `user:password@` in it.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    stream_agent: ureq::Agent,
    /// `http://host:port/` without credentials.
    base: String,
    /// `user=...&password=...` when the URL carried them.
    auth: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("url", &self.base).finish()
    }
}

impl Client {
    pub fn new(url: &str) -> Result<Client, ClickHouseError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            ClickHouseError::Invalid(format!(
                "ClickHouse URL {url:?} must start with http:// (its HTTP interface, e.g. http://127.0.0.1:8123)"
            ))
        })?;
        let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(ClickHouseError::Invalid(format!(
                "ClickHouse URL {url:?} names no host"
            )));
        }
        let auth = match userinfo {
            Some(u) => {
                let (user, password) = u.split_once(':').unwrap_or((u, ""));
                format!("user={}&password={}", encode(user), encode(password))
            }
            None => String::new(),
        };
        let agent = |global: Option<Duration>| -> ureq::Agent {
            ureq::Agent::config_builder()
                .timeout_connect(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
                .timeout_global(global)
                .http_status_as_error(false)
                .build()
                .into()
        };
        Ok(Client {
            agent: agent(Some(Duration::from_millis(STATEMENT_TIMEOUT_MS))),
            stream_agent: agent(None),
            base: format!("http://{host}/"),
            auth,
        })
    }

    /// The endpoint without credentials, for messages.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn endpoint(&self, params: &[(&str, &str)]) -> String {
        let mut url = self.base.clone();
        url.push('?');
        url.push_str(&self.auth);
        for (k, v) in params {
            if !url.ends_with('?') {
                url.push('&');
            }
            url.push_str(k);
            url.push('=');
            url.push_str(&encode(v));
        }
        url
    }

    /// Runs a statement that returns nothing worth reading (DDL, ALTER, OPTIMIZE).
    pub fn execute(&self, sql: &str) -> Result<(), ClickHouseError> {
        self.query_bytes(sql).map(|_| ())
    }

    /// Runs a query and returns its whole answer (bounded by the statement timeout).
    pub fn query_bytes(&self, sql: &str) -> Result<Vec<u8>, ClickHouseError> {
        self.query_bytes_with(sql, &[])
    }

    /// [`Client::query_bytes`] with query-level settings as URL parameters.
    pub fn query_bytes_with(
        &self,
        sql: &str,
        settings: &[(&str, &str)],
    ) -> Result<Vec<u8>, ClickHouseError> {
        log_statement(&self.base, sql, settings, None);
        let resp = self
            .agent
            .post(&self.endpoint(settings))
            .send(sql.as_bytes())
            .map_err(|e| self.transport(e))?;
        let mut out = Vec::new();
        let status = resp.status().as_u16();
        resp.into_body()
            .into_reader()
            .read_to_end(&mut out)
            .map_err(|e| ClickHouseError::Transport {
                url: self.base.clone(),
                error: e.to_string(),
            })?;
        if status != 200 {
            return Err(self.server_error(status, &out));
        }
        Ok(out)
    }

    /// A query's answer as text, trimmed.
    pub fn query_text(&self, sql: &str) -> Result<String, ClickHouseError> {
        let bytes = self.query_bytes(sql)?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_string())
    }

    /// Runs a query and streams its answer: for scans too large to hold twice. The error of
    /// a query that fails midway arrives as text in the stream, which the RowBinary reader
    /// reports as a decoding error naming it.
    pub fn query_stream(
        &self,
        sql: &str,
        settings: &[(&str, &str)],
    ) -> Result<impl Read + Send + 'static, ClickHouseError> {
        log_statement(&self.base, sql, settings, None);
        let resp = self
            .stream_agent
            .post(&self.endpoint(settings))
            .send(sql.as_bytes())
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let mut reader = resp.into_body().into_reader();
        if status != 200 {
            let mut body = Vec::new();
            let _ = (&mut reader)
                .take(ERROR_BODY_BYTES_MAX as u64)
                .read_to_end(&mut body);
            return Err(self.server_error(status, &body));
        }
        Ok(reader)
    }

    /// `INSERT INTO table (columns) FORMAT RowBinary` with `rows` as the body.
    pub fn insert(
        &self,
        table: &str,
        columns: &[&str],
        rows: &[u8],
        settings: &[(&str, &str)],
    ) -> Result<(), ClickHouseError> {
        let sql = format!(
            "INSERT INTO {table} ({}) FORMAT RowBinary",
            columns.join(", ")
        );
        log_statement(&self.base, &sql, settings, Some(rows));
        let mut params = vec![("query", sql.as_str())];
        params.extend_from_slice(settings);
        let resp = self
            .agent
            .post(&self.endpoint(&params))
            .send(rows)
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let mut body = Vec::new();
            let _ = resp
                .into_body()
                .into_reader()
                .take(ERROR_BODY_BYTES_MAX as u64)
                .read_to_end(&mut body);
            return Err(self.server_error(status, &body));
        }
        Ok(())
    }

    fn transport(&self, e: ureq::Error) -> ClickHouseError {
        ClickHouseError::Transport {
            url: self.base.clone(),
            error: e.to_string(),
        }
    }

    fn server_error(&self, status: u16, body: &[u8]) -> ClickHouseError {
        let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_BYTES_MAX)]);
        // "Code: 60, e.displayText() = DB::Exception: ..." (18.16) or "Code: 60. DB::Exception: ..." (newer).
        let code = text
            .strip_prefix("Code: ")
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        ClickHouseError::Server {
            url: self.base.clone(),
            status,
            code,
            message: text.trim().to_string(),
        }
    }
}

/// Percent-encoding for URL parameters: everything but unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A string literal for SQL: quoted, with backslashes and quotes escaped.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// An identifier (database name) checked to need no quoting anywhere.
pub fn check_identifier(name: &str) -> Result<&str, ClickHouseError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(name)
    } else {
        Err(ClickHouseError::Invalid(format!(
            "{name:?} is not a plain identifier: use 1-64 characters a-z, 0-9 or '_', not starting with a digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_credentials_out_of_the_base() {
        let c = Client::new("http://ann:s%cret@127.0.0.1:8123").unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:8123/");
        assert_eq!(c.auth, "user=ann&password=s%25cret");
        assert!(Client::new("https://x").is_err());
        assert!(Client::new("127.0.0.1:8123").is_err());
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(quote(r"it's a \ test"), r"'it\'s a \\ test'");
        assert!(check_identifier("throughline_1").is_ok());
        assert!(check_identifier("x; DROP").is_err());
    }
}
