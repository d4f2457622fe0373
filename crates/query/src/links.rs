//! `audit links`: are the registered destination URLs alive? Each distinct absolute
//! `destination_url` of the registry is requested once, `HEAD` first and `GET` when the
//! server refuses `HEAD` (405, 501), following redirects, with a timeout per request and at
//! most `concurrency` requests at once. A 4xx or 5xx answer, a timeout or a failed
//! connection is a broken destination.
//!
//! The only module of this crate that talks to the network, and only when asked: queries
//! never do. Bounded: [`LINKS_MAX`] URLs, [`CONCURRENCY_MAX`] requests at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::assets::Registry;
use crate::audit::Finding;
use crate::spec::parse_duration;
use crate::QueryError;

pub const LINKS_MAX: usize = 10_000;
pub const CONCURRENCY_MAX: usize = 64;
const REDIRECTS_MAX: u32 = 10;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LinksRequest {
    /// Per request, e.g. `10s` (default).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Requests at once (default 8, at most 64).
    #[serde(default)]
    pub concurrency: Option<usize>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LinkCheck {
    pub url: String,
    /// The registry ids with this destination.
    pub assets: Vec<String>,
    /// The last method tried: HEAD, or GET after a refused HEAD.
    pub method: &'static str,
    pub status: Option<u16>,
    pub ok: bool,
    /// not_found (404, 410), client_error (other 4xx), server_error (5xx), timeout,
    /// unreachable (DNS, refused, TLS...).
    pub problem: Option<&'static str>,
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LinksResponse {
    pub checked: u64,
    pub broken: u64,
    /// Destinations that are paths, not URLs: nothing to request.
    pub skipped: Vec<String>,
    pub timeout_seconds: f64,
    pub concurrency: usize,
    /// Broken first, then by URL.
    pub links: Vec<LinkCheck>,
    /// One `broken_destination` finding per broken URL, as `query audit` lists findings.
    pub findings: Vec<Finding>,
}

pub fn check(registry: &Registry, req: &LinksRequest) -> Result<LinksResponse, QueryError> {
    let timeout = parse_duration(req.timeout.as_deref().unwrap_or("10s"))?;
    let concurrency = req.concurrency.unwrap_or(8);
    if concurrency == 0 || concurrency > CONCURRENCY_MAX {
        return Err(QueryError::invalid(format!(
            "concurrency must be between 1 and {CONCURRENCY_MAX}"
        )));
    }
    let mut by_url: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for a in &registry.assets {
        let Some(url) = &a.destination_url else {
            continue;
        };
        if url.starts_with("http://") || url.starts_with("https://") {
            by_url.entry(url.clone()).or_default().push(a.id.clone());
        } else {
            skipped.push(a.id.clone());
        }
    }
    if by_url.len() > LINKS_MAX {
        return Err(QueryError::invalid(format!(
            "the registry has {} destination URLs, more than the {LINKS_MAX} checked at once",
            by_url.len()
        )));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(timeout as u64)))
        .http_status_as_error(false)
        .max_redirects(REDIRECTS_MAX)
        .user_agent(concat!("throughline-audit/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let urls: Vec<(String, Vec<String>)> = by_url.into_iter().collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<LinkCheck>> = Mutex::new(Vec::with_capacity(urls.len()));
    std::thread::scope(|s| {
        for _ in 0..concurrency.min(urls.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some((url, assets)) = urls.get(k) else {
                    return;
                };
                let c = check_one(&agent, url, assets.clone());
                results.lock().expect("results lock").push(c);
            });
        }
    });
    let mut links = results.into_inner().expect("results lock");
    links.sort_by(|a, b| a.ok.cmp(&b.ok).then(a.url.cmp(&b.url)));
    let findings = links
        .iter()
        .filter(|l| !l.ok)
        .map(|l| Finding {
            kind: "broken_destination",
            severity: "error",
            subject: l.url.clone(),
            detail: format!(
                "{} {} of {}: {}",
                l.method,
                l.url,
                l.assets.join(", "),
                match (l.status, &l.error) {
                    (Some(s), _) => format!("answered {s}"),
                    (None, Some(e)) => e.clone(),
                    (None, None) => "failed".into(),
                }
            ),
            affected_sessions: 0,
            affected_persons: 0,
        })
        .collect();
    Ok(LinksResponse {
        checked: links.len() as u64,
        broken: links.iter().filter(|l| !l.ok).count() as u64,
        skipped,
        timeout_seconds: timeout as f64 / 1000.0,
        concurrency,
        links,
        findings,
    })
}

fn check_one(agent: &ureq::Agent, url: &str, assets: Vec<String>) -> LinkCheck {
    let started = Instant::now();
    let mut method = "HEAD";
    let mut result = agent.head(url).call().map(|r| r.status().as_u16());
    if matches!(result, Ok(405 | 501)) {
        method = "GET";
        result = agent.get(url).call().map(|r| r.status().as_u16());
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(status) => {
            let problem = match status {
                404 | 410 => Some("not_found"),
                400..=499 => Some("client_error"),
                500..=599 => Some("server_error"),
                _ => None,
            };
            LinkCheck {
                url: url.to_string(),
                assets,
                method,
                status: Some(status),
                ok: problem.is_none(),
                problem,
                error: None,
                elapsed_ms,
            }
        }
        Err(e) => {
            let problem = if matches!(e, ureq::Error::Timeout(_)) {
                "timeout"
            } else {
                "unreachable"
            };
            LinkCheck {
                url: url.to_string(),
                assets,
                method,
                status: None,
                ok: false,
                problem: Some(problem),
                error: Some(e.to_string()),
                elapsed_ms,
            }
        }
    }
}
