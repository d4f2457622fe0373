//! Tracked links, opens and unsubscribes, and the destinations a project registers.
//!
//! - `GET /r/{token}`: a signed click token records `Email Link Clicked` and redirects to
//!   its destination; a vanity slug (`/r/spring-radio`, printed in an offline ad) records
//!   `Vanity Link Visited` for a new anonymous visitor and redirects to the slug's
//!   destination with its UTM parameters.
//! - `GET /o/{token}.gif`: records `Email Opened` (once per send) and answers a 1x1 GIF.
//! - `GET|POST /u/{token}`: records `Unsubscribed` (once per send; RFC 8058 one-click POST
//!   from mail clients, or the link in the email), which suppresses the person from then
//!   on, and answers a plain page, never a redirect.
//!
//! A token that does not verify (forged, altered, another project's secret) or that names
//! a destination the project has not registered gets 404 and records nothing: no open
//! redirect. Registered destinations are the URL prefixes of `destinations` in
//! `DIR/projects/NAME/links.toml`, the vanity links there, and the `destination_url`s of
//! the asset registry (same origin and path).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use throughline_model::format_ms;
use throughline_store::{now_ms, ProjectStore};
use throughline_token::{Claims, Secret};

use crate::AppState;

pub const LINKS_FILE: &str = "links.toml";
/// Bytes of `links.toml` read at most.
pub const LINKS_FILE_BYTES_MAX: u64 = 4 << 20;
/// Vanity links and destination prefixes per project at most.
pub const LINKS_MAX: usize = 10_000;

/// `links.toml`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LinksFile {
    /// URL prefixes tracked links may redirect to, e.g. `https://shop.example/`.
    #[serde(default)]
    pub destinations: Vec<String>,
    #[serde(default)]
    pub vanity: Vec<Vanity>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Vanity {
    pub slug: String,
    pub destination: String,
    #[serde(default)]
    pub utm_source: Option<String>,
    #[serde(default)]
    pub utm_medium: Option<String>,
    #[serde(default)]
    pub utm_campaign: Option<String>,
    #[serde(default)]
    pub utm_content: Option<String>,
}

impl LinksFile {
    pub fn load(project_dir: &std::path::Path) -> Result<LinksFile, String> {
        let path = project_dir.join(LINKS_FILE);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() > LINKS_FILE_BYTES_MAX => {
                return Err(format!(
                    "{} is larger than {LINKS_FILE_BYTES_MAX} bytes",
                    path.display()
                ))
            }
            Ok(_) => {}
            Err(_) => return Ok(LinksFile::default()),
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let f: LinksFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if f.destinations.len() + f.vanity.len() > LINKS_MAX {
            return Err(format!("{}: more than {LINKS_MAX} entries", path.display()));
        }
        Ok(f)
    }
}

/// Where a project's tracked links may go.
pub struct Registered {
    prefixes: Vec<String>,
    exact: Vec<String>,
}

/// A URL without its query and fragment, scheme and host lowercased.
fn bare(url: &str) -> String {
    let u = url.split(['?', '#']).next().unwrap_or(url);
    match u.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            format!(
                "{}://{}{}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase(),
                if path.is_empty() { "/" } else { path }
            )
        }
        None => u.to_string(),
    }
}

impl Registered {
    pub fn load(project_dir: &std::path::Path) -> Registered {
        let links = LinksFile::load(project_dir).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "links.toml unreadable: no destination registered");
            LinksFile::default()
        });
        let mut exact: Vec<String> = links.vanity.iter().map(|v| bare(&v.destination)).collect();
        if let Ok(reg) = throughline_query::assets::Registry::load(project_dir) {
            exact.extend(
                reg.assets
                    .iter()
                    .filter_map(|a| a.destination_url.as_deref())
                    .filter(|u| u.contains("://"))
                    .map(bare),
            );
        }
        Registered {
            prefixes: links.destinations.iter().map(|p| bare(p)).collect(),
            exact,
        }
    }

    pub fn allows(&self, url: &str) -> bool {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return false;
        }
        let b = bare(url);
        // A prefix must match at a path boundary of its host: `https://shop.example/`
        // does not allow `https://shop.example.evil/`.
        self.exact.contains(&b)
            || self.prefixes.iter().any(|p| {
                b.starts_with(p.as_str())
                    && (p.ends_with('/') || b.len() == p.len() || b[p.len()..].starts_with('/'))
            })
    }
}

/// The project and claims of a genuine token of `kind`; `None` records nothing.
fn open(state: &AppState, token: &str, kind: &str) -> Option<(Arc<ProjectStore>, Claims)> {
    let project = throughline_token::project_of(token)?;
    let store = state.store.project(&project).ok().or_else(|| {
        let _ = state.store.reload_catalog();
        state.store.project(&project).ok()
    })?;
    let secret = Secret::load(store.dir()).ok()??;
    let claims = throughline_token::verify(&secret, token, now_ms()).ok()?;
    (claims.kind == kind && claims.project == project).then_some((store, claims))
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Html("<!doctype html><title>Not found</title><p>This link is not valid.</p>"),
    )
        .into_response()
}

/// Stores one track event through the project's writer; answers once it is durable.
async fn record(
    state: &AppState,
    store: &ProjectStore,
    message: serde_json::Value,
) -> Result<bool, Response> {
    let outcome = crate::ingest::append_one(
        state,
        store,
        &message,
        now_ms(),
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await?;
    Ok(outcome.duplicates() == 0)
}

fn person_field(store: &ProjectStore, person: &str) -> &'static str {
    let snap = store.snapshot();
    if snap
        .identity()
        .lookup(throughline_identity::IdKind::User, person)
        .is_some()
    {
        "userId"
    } else {
        "anonymousId"
    }
}

fn message_props(c: &Claims) -> serde_json::Map<String, serde_json::Value> {
    let mut p = serde_json::Map::new();
    for (k, name) in [
        ("j", "journey"),
        ("s", "step"),
        ("v", "variant"),
        ("c", "channel"),
    ] {
        if let Some(v) = c.data.get(k) {
            p.insert(name.into(), json!(v));
        }
    }
    let key = c.nonce.split('-').next().unwrap_or(&c.nonce);
    p.insert("message_id".into(), json!(key));
    p
}

fn utm_of(url: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    if let Some((_, q)) = url.split('#').next().unwrap_or(url).split_once('?') {
        for kv in q.split('&') {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if let Some(name) = k.strip_prefix("utm_") {
                let name = if name == "campaign" { "name" } else { name };
                m.insert(name.into(), json!(throughline_collect::percent_decode(v)));
            }
        }
    }
    m
}

pub async fn click(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !token.contains('.') {
        return vanity(&state, &token, &headers).await;
    }
    let Some((store, claims)) = open(&state, &token, "click") else {
        return not_found();
    };
    let Some(dest) = claims.data.get("d").cloned() else {
        return not_found();
    };
    if !Registered::load(store.dir()).allows(&dest) {
        return not_found();
    }
    let mut props = message_props(&claims);
    props.insert("url".into(), json!(dest));
    let mut context = json!({"library": {"name": "throughline-links"}, "campaign": utm_of(&dest), "page": {"url": dest}});
    if let Some(ua) = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        context["userAgent"] = json!(ua);
    }
    let now = now_ms();
    let mut m = json!({
        "type": "track", "event": "Email Link Clicked",
        "messageId": format!("click-{}-{now}", claims.nonce),
        "timestamp": format_ms(now), "properties": props, "context": context,
    });
    m[person_field(&store, &claims.person)] = json!(claims.person);
    if let Err(r) = record(&state, &store, m).await {
        return r;
    }
    redirect(&dest)
}

fn redirect(dest: &str) -> Response {
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, dest.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response()
}

async fn vanity(state: &AppState, slug: &str, headers: &HeaderMap) -> Response {
    if slug.is_empty() || slug.len() > 128 {
        return not_found();
    }
    // Slugs are unique across projects by convention; the first project (by name) wins.
    let mut projects = state.store.projects();
    projects.sort_by(|a, b| a.name().cmp(b.name()));
    for store in projects {
        let Ok(links) = LinksFile::load(store.dir()) else {
            continue;
        };
        let Some(v) = links.vanity.iter().find(|v| v.slug == slug) else {
            continue;
        };
        let utm = throughline_orchestrate::template::Utm {
            source: v.utm_source.clone().unwrap_or_else(|| "offline".into()),
            medium: v.utm_medium.clone().unwrap_or_else(|| "vanity".into()),
            campaign: v.utm_campaign.clone().unwrap_or_else(|| slug.to_string()),
            content: v.utm_content.clone().unwrap_or_else(|| slug.to_string()),
        };
        let dest = utm.apply(&v.destination);
        let now = now_ms();
        let visitor = format!("vanity-{}", throughline_token::random_nonce());
        let mut context = json!({"library": {"name": "throughline-links"}, "campaign": utm_of(&dest),
            "page": {"path": format!("/r/{slug}"), "url": dest}});
        if let Some(ua) = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            context["userAgent"] = json!(ua);
        }
        let m = json!({
            "type": "track", "event": "Vanity Link Visited", "anonymousId": visitor,
            "messageId": format!("vanity-{visitor}"), "timestamp": format_ms(now),
            "properties": {"slug": slug, "url": dest}, "context": context,
        });
        if let Err(r) = record(state, &store, m).await {
            return r;
        }
        return redirect(&dest);
    }
    not_found()
}

/// A transparent 1x1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

pub async fn pixel(State(state): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    let Some(token) = file.strip_suffix(".gif") else {
        return not_found();
    };
    let Some((store, claims)) = open(&state, token, "open") else {
        return not_found();
    };
    let now = now_ms();
    let mut m = json!({
        "type": "track", "event": "Email Opened", "messageId": format!("open-{}", claims.nonce),
        "timestamp": format_ms(now), "properties": message_props(&claims),
        "context": {"library": {"name": "throughline-links"}},
    });
    m[person_field(&store, &claims.person)] = json!(claims.person);
    if let Err(r) = record(&state, &store, m).await {
        return r;
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store, max-age=0"),
        ],
        PIXEL,
    )
        .into_response()
}

pub async fn unsubscribe_get(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
) -> Response {
    unsubscribe(&state, &token, "link").await
}

pub async fn unsubscribe_post(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let one_click = String::from_utf8_lossy(&body[..body.len().min(256)])
        .contains("List-Unsubscribe=One-Click");
    unsubscribe(&state, &token, if one_click { "one_click" } else { "form" }).await
}

async fn unsubscribe(state: &AppState, token: &str, method: &str) -> Response {
    let Some((store, claims)) = open(state, token, "unsubscribe") else {
        return not_found();
    };
    let now = now_ms();
    let mut props = message_props(&claims);
    props.insert("method".into(), json!(method));
    let mut m = json!({
        "type": "track", "event": "Unsubscribed", "messageId": format!("unsubscribe-{}", claims.nonce),
        "timestamp": format_ms(now), "properties": props,
        "context": {"library": {"name": "throughline-links"}},
    });
    m[person_field(&store, &claims.person)] = json!(claims.person);
    if let Err(r) = record(state, &store, m).await {
        return r;
    }
    (
        StatusCode::OK,
        Html("<!doctype html><meta charset=utf-8><title>Unsubscribed</title><p>You are unsubscribed: you will get no more of these messages.</p>"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_registered_destinations_are_allowed() {
        let r = Registered {
            prefixes: vec![
                bare("https://Shop.example/"),
                bare("https://help.example/docs"),
            ],
            exact: vec![bare("https://landing.example/spring?utm_source=x")],
        };
        assert!(r.allows("https://shop.example/p/1?utm_source=throughline"));
        assert!(r.allows("https://help.example/docs/a"));
        assert!(r.allows("https://landing.example/spring?utm_content=j/s/v"));
        for bad in [
            "https://shop.example.evil/",
            "https://help.example/docsx",
            "https://landing.example/spring/other",
            "javascript:alert(1)",
            "//shop.example/",
            "https://evil.example/?u=https://shop.example/",
        ] {
            assert!(!r.allows(bad), "{bad}");
        }
    }
}
