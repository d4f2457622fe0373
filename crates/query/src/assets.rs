//! Assets: what a touch came through (an ad or creative, an email, a campaign, a landing
//! page, a post), the project's asset registry that names them, and `query assets`, one
//! scorecard row per asset.
//!
//! **The asset of a session** is read from its first visit event, the same event that
//! gives the session its channel:
//!
//! 1. its `utm_content` (the ad, creative or email link), else
//! 2. its `utm_campaign`, else
//! 3. its landing page path, else
//! 4. `(not set)` (a screen view without a path).
//!
//! That key is looked up in the registry: the entry whose `id` equals the key's value, else
//! the entry whose `destination_url`, read by the same rule (its `utm_content` parameter,
//! else `utm_campaign`, else its path), gives the same kind of key with the same value; the
//! first such entry in registry order. Sessions no entry matches still get a row, keyed by
//! their UTM value or landing path, so the scorecard covers every session exactly once.
//!
//! **The registry** is `DIR/projects/NAME/assets.toml` (`[[asset]]` tables), written here
//! atomically and read per query, like `channels.toml`. It is bounded: [`ASSETS_MAX`]
//! entries, [`LINE_BYTES_MAX`] per line, [`REGISTRY_BYTES_MAX`] per file.
//!
//! **Conversion values** (`value`, e.g. `revenue`) come from the segments' number columns
//! for the conversions the query counts ([`crate::values`]), decoded from the stored
//! records only where the columns do not answer. A conversion with `where` conditions
//! decodes the payloads of the conversion events (and of no other event), at most
//! [`VALUED_CONVERSIONS_MAX`] of them per query.
//!
//! This module never writes anything but the registry file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_kernels::funnel::{self, Order, Outcome, Spec, STEPS_MAX};
use throughline_kernels::sessions;
use throughline_model::{EventType, Millis};
use throughline_store::{StoreError, NO_VALUE};

use crate::rows::{load, Load, Scan};
use crate::sessions::{is_visit, Attributor, CodePack, TOUCH_DIMS, VISIT_CODES};
use crate::source::Source;
use crate::spec::{parse_duration, parse_time_bound, Alternative, MaskTable, StepMatcher};
use crate::QueryError;

/// The registry's file name in a project directory.
pub const REGISTRY_FILE: &str = "assets.toml";
pub const ASSETS_MAX: usize = 100_000;
pub const REGISTRY_BYTES_MAX: usize = 64 << 20;
pub const LINE_BYTES_MAX: usize = 1 << 20;
/// Per string field of an asset (id, name, URL, campaign, funnel step).
pub const FIELD_BYTES_MAX: usize = 8 << 10;
/// Errors listed when a registry file is refused; the rest are counted.
const ERRORS_SHOWN_MAX: usize = 20;
/// Scorecard rows returned at most; the rest are summed in `omitted_*`.
pub const LIMIT_MAX: usize = 10_000;
const LIMIT_DEFAULT: usize = 1_000;
/// Conversion events whose payload a query decodes (for `value` or `where` conditions).
pub const VALUED_CONVERSIONS_MAX: usize = 10_000_000;
/// GA4: a session is engaged when it lasts longer than 10 seconds or has 2+ page views
/// (the definition `query sessions` uses; the two must agree).
const ENGAGED_SECONDS: Millis = 10_000;

/// What an asset may be. A closed list, so a typo is an error, not a new kind.
pub const KINDS: [&str; 24] = [
    "ad",
    "creative",
    "campaign",
    "email",
    "landing_page",
    "page",
    "website",
    "microsite",
    "post",
    "social",
    "blog",
    "podcast",
    "video",
    "whitepaper",
    "ebook",
    "search",
    "display",
    "retargeting",
    "print",
    "radio",
    "tv",
    "link",
    "promo_code",
    "other",
];

/// One registry entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// Matched against a session's utm_content, utm_campaign or landing path.
    pub id: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where the asset sends people: a URL (its UTM parameters or path identify the asset's
    /// sessions too) or a bare path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// The asset's own funnel: steps in `query funnel` syntax (event names, `A|B`,
    /// `page:/path/*`), measured from each person's first session on the asset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub funnel: Vec<String>,
    /// The headline an ad or email shows: what `query audit` compares with the landing
    /// page its clicks reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headline: Option<String>,
    /// The asset's body copy, compared like the headline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<String>,
}

/// A project's assets, in registry order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    #[serde(default, rename = "asset")]
    pub assets: Vec<Asset>,
}

/// Which of a session's values names its asset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeySource {
    Content,
    Campaign,
    LandingPage,
    NotSet,
}

impl KeySource {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Content => "utm_content",
            KeySource::Campaign => "utm_campaign",
            KeySource::LandingPage => "landing_page",
            KeySource::NotSet => "none",
        }
    }
}

/// The asset key of a session: the value that names its asset and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AssetKey {
    pub source: KeySource,
    pub value: String,
}

/// Sessions without content, campaign or landing path.
pub const NOT_SET: &str = "(not set)";

/// The asset key rule (see the module docs): utm_content, else utm_campaign, else the
/// landing path; empty values count as missing.
pub fn asset_key(content: Option<&str>, campaign: Option<&str>, path: Option<&str>) -> AssetKey {
    let some = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_string);
    if let Some(v) = some(content) {
        AssetKey {
            source: KeySource::Content,
            value: v,
        }
    } else if let Some(v) = some(campaign) {
        AssetKey {
            source: KeySource::Campaign,
            value: v,
        }
    } else if let Some(v) = some(path) {
        AssetKey {
            source: KeySource::LandingPage,
            value: v,
        }
    } else {
        AssetKey {
            source: KeySource::NotSet,
            value: NOT_SET.to_string(),
        }
    }
}

/// The key a destination URL gives its visits, read as `collect` reads page URLs.
pub fn destination_key(url: &str) -> AssetKey {
    let u = throughline_collect::parse_url(url);
    let content = u.param("utm_content");
    let campaign = u.param("utm_campaign");
    let path = (!u.path.is_empty()).then_some(u.path);
    asset_key(content.as_deref(), campaign.as_deref(), path)
}

/// Registry lookups by id and by destination key.
pub struct RegistryIndex {
    by_id: HashMap<String, usize>,
    by_destination: HashMap<AssetKey, usize>,
}

impl RegistryIndex {
    /// The registry entry a session key names: by id first, then by destination.
    pub fn resolve(&self, key: &AssetKey) -> Option<usize> {
        if key.source == KeySource::NotSet {
            return None;
        }
        self.by_id
            .get(&key.value)
            .or_else(|| self.by_destination.get(key))
            .copied()
    }
}

impl Registry {
    pub fn index(&self) -> RegistryIndex {
        let mut by_id = HashMap::new();
        let mut by_destination = HashMap::new();
        for (i, a) in self.assets.iter().enumerate() {
            by_id.entry(a.id.clone()).or_insert(i);
            if let Some(url) = &a.destination_url {
                let key = destination_key(url);
                if key.source != KeySource::NotSet {
                    by_destination.entry(key).or_insert(i);
                }
            }
        }
        RegistryIndex {
            by_id,
            by_destination,
        }
    }

    /// Parses a CSV registry: a header naming `id`, `kind` and any of `name`,
    /// `destination_url`, `campaign`, `funnel` (steps as `A > B > C` or a JSON array),
    /// `headline`, `copy`.
    /// `source` names the file in errors.
    pub fn from_csv(text: &str, source: &str) -> Result<Registry, QueryError> {
        check_text(text, source)?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let headers = reader
            .headers()
            .map_err(|e| QueryError::invalid(format!("{source} line 1: {e}")))?
            .clone();
        const COLUMNS: [&str; 8] = [
            "id",
            "kind",
            "name",
            "destination_url",
            "campaign",
            "funnel",
            "headline",
            "copy",
        ];
        let mut at = [None::<usize>; 8];
        for (i, h) in headers.iter().enumerate() {
            let h = h.to_ascii_lowercase();
            let Some(c) = COLUMNS.iter().position(|&c| c == h) else {
                return Err(QueryError::invalid(format!(
                    "{source} line 1: unknown column {h:?}; the columns are {}",
                    COLUMNS.join(", ")
                )));
            };
            if at[c].replace(i).is_some() {
                return Err(QueryError::invalid(format!(
                    "{source} line 1: column {h:?} appears twice"
                )));
            }
        }
        if at[0].is_none() || at[1].is_none() {
            return Err(QueryError::invalid(format!(
                "{source} line 1: the header needs at least the columns id and kind (id,kind,name,destination_url,campaign[,funnel,headline,copy])"
            )));
        }
        let mut errors = Errors::new(source);
        let mut parsed = Vec::new();
        for record in reader.records() {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line() as usize);
                    errors.push(line, csv_error(&e));
                    break; // the reader cannot resynchronize after a malformed record
                }
            };
            let line = record.position().map_or(0, |p| p.line() as usize);
            if parsed.len() >= ASSETS_MAX {
                errors.push(line, format!("more than {ASSETS_MAX} assets"));
                break;
            }
            let cell = |c: usize| at[c].and_then(|i| record.get(i)).unwrap_or("");
            let funnel = match parse_funnel_cell(cell(5)) {
                Ok(f) => f,
                Err(e) => {
                    errors.push(line, e);
                    continue;
                }
            };
            let raw = Asset {
                id: cell(0).to_string(),
                kind: cell(1).to_string(),
                name: Some(cell(2).to_string()),
                destination_url: Some(cell(3).to_string()),
                campaign: Some(cell(4).to_string()),
                funnel,
                headline: Some(cell(6).to_string()),
                copy: Some(cell(7).to_string()),
            };
            match validate(raw) {
                Ok(a) => parsed.push((line, a)),
                Err(e) => errors.push(line, e),
            }
        }
        finish(parsed, errors)
    }

    /// Parses a TOML registry: `[[asset]]` tables with `id`, `kind` and optionally `name`,
    /// `destination_url`, `campaign`, `funnel = ["Step A", "Step B"]`, `headline`, `copy`.
    pub fn from_toml(text: &str, source: &str) -> Result<Registry, QueryError> {
        check_text(text, source)?;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            asset: Vec<toml::Spanned<Asset>>,
        }
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| line_of(text, s.start).to_string())
                .unwrap_or_else(|| "?".into());
            QueryError::invalid(format!(
                "{source} line {line}: {}",
                e.message().trim_end_matches('\n')
            ))
        })?;
        if file.asset.len() > ASSETS_MAX {
            return Err(QueryError::invalid(format!(
                "{source}: {} assets, more than the {ASSETS_MAX} allowed",
                file.asset.len()
            )));
        }
        let mut errors = Errors::new(source);
        let mut parsed = Vec::new();
        for a in file.asset {
            let line = line_of(text, a.span().start);
            match validate(a.into_inner()) {
                Ok(a) => parsed.push((line, a)),
                Err(e) => errors.push(line, e),
            }
        }
        finish(parsed, errors)
    }

    /// The registry as the TOML `from_toml` reads.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a registry serializes");
        format!(
            "# Throughline asset registry: one [[asset]] per ad, creative, email, campaign, page or post.\n\
             # Written by `throughline assets import`; edits by hand are read by the next query.\n\n{body}"
        )
    }

    /// Adds `other`'s assets: an id already registered is replaced in place, new ids are
    /// appended in order. Returns (added, updated).
    pub fn merge(&mut self, other: Registry) -> Result<(usize, usize), QueryError> {
        let mut at: HashMap<String, usize> = self
            .assets
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.clone(), i))
            .collect();
        let (mut added, mut updated) = (0, 0);
        for a in other.assets {
            match at.get(&a.id) {
                Some(&i) => {
                    self.assets[i] = a;
                    updated += 1;
                }
                None => {
                    at.insert(a.id.clone(), self.assets.len());
                    self.assets.push(a);
                    added += 1;
                }
            }
        }
        if self.assets.len() > ASSETS_MAX {
            return Err(QueryError::invalid(format!(
                "the registry would hold {} assets, more than the {ASSETS_MAX} allowed",
                self.assets.len()
            )));
        }
        Ok((added, updated))
    }

    /// The registry of a project: `assets.toml` in its directory, or an empty one.
    pub fn load(project_dir: &Path) -> Result<Registry, QueryError> {
        match crate::project_file::read(project_dir, REGISTRY_FILE)? {
            Some(text) => Registry::from_toml(
                &text,
                &project_dir.join(REGISTRY_FILE).display().to_string(),
            ),
            None => Ok(Registry::default()),
        }
    }

    /// Writes `assets.toml` atomically: a temp file, fsync, rename, directory fsync. A
    /// crash leaves the old registry or the new one, never a mix (and the store removes a
    /// leftover `.tmp` at its next open).
    pub fn save(&self, project_dir: &Path) -> Result<PathBuf, QueryError> {
        crate::project_file::write(project_dir, REGISTRY_FILE, self.to_toml().as_bytes())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Size bounds, checked before any parsing.
fn check_text(text: &str, source: &str) -> Result<(), QueryError> {
    if text.len() > REGISTRY_BYTES_MAX {
        return Err(QueryError::invalid(format!(
            "{source}: {} bytes, more than the {REGISTRY_BYTES_MAX} allowed",
            text.len()
        )));
    }
    if let Some(i) = text.split('\n').position(|l| l.len() > LINE_BYTES_MAX) {
        return Err(QueryError::invalid(format!(
            "{source} line {}: longer than {LINE_BYTES_MAX} bytes",
            i + 1
        )));
    }
    Ok(())
}

fn csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields where the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".into(),
        _ => e.to_string(),
    }
}

/// A CSV funnel cell: `A > B > C`, or a JSON array when a step name holds `>`.
fn parse_funnel_cell(cell: &str) -> Result<Vec<String>, String> {
    if cell.is_empty() {
        return Ok(Vec::new());
    }
    if cell.starts_with('[') {
        return serde_json::from_str(cell)
            .map_err(|e| format!("funnel {cell:?} is not a JSON array of step names: {e}"));
    }
    Ok(cell.split('>').map(|s| s.trim().to_string()).collect())
}

/// Trims and checks one asset; empty optional fields become `None`.
fn validate(raw: Asset) -> Result<Asset, String> {
    let text = |field: &str, v: &str| -> Result<Option<String>, String> {
        let v = v.trim();
        if v.len() > FIELD_BYTES_MAX {
            return Err(format!("{field} is longer than {FIELD_BYTES_MAX} bytes"));
        }
        if v.chars().any(char::is_control) {
            return Err(format!("{field} {v:?} holds a control character"));
        }
        Ok((!v.is_empty()).then(|| v.to_string()))
    };
    let opt = |field: &str, v: Option<String>| -> Result<Option<String>, String> {
        v.map_or(Ok(None), |v| text(field, &v))
    };
    let id = text("id", &raw.id)?.ok_or("id is empty")?;
    let kind = text("kind", &raw.kind)?
        .ok_or("kind is empty")?
        .to_ascii_lowercase();
    if !KINDS.contains(&kind.as_str()) {
        return Err(format!(
            "kind {kind:?} is not an asset kind; use one of {}",
            KINDS.join(", ")
        ));
    }
    let destination_url = opt("destination_url", raw.destination_url)?;
    if let Some(u) = &destination_url {
        if !(u.starts_with("https://") || u.starts_with("http://") || u.starts_with('/')) {
            return Err(format!(
                "destination_url {u:?} is neither an http(s) URL nor a path starting with /"
            ));
        }
    }
    if raw.funnel.len() > STEPS_MAX {
        return Err(format!("a funnel has at most {STEPS_MAX} steps"));
    }
    let mut funnel = Vec::with_capacity(raw.funnel.len());
    for step in &raw.funnel {
        let step = text("funnel step", step)?.ok_or("a funnel step is empty")?;
        let m = StepMatcher::parse(&step).map_err(|e| format!("funnel step {step:?}: {e}"))?;
        if !m.filters.is_empty() {
            return Err(format!(
                "funnel step {step:?}: asset funnels match event names and page paths; `where` conditions are not supported"
            ));
        }
        funnel.push(step);
    }
    Ok(Asset {
        id,
        kind,
        name: opt("name", raw.name)?,
        destination_url,
        campaign: opt("campaign", raw.campaign)?,
        funnel,
        headline: opt("headline", raw.headline)?,
        copy: opt("copy", raw.copy)?,
    })
}

/// Line-numbered errors of one file, reported together.
struct Errors {
    source: String,
    lines: Vec<String>,
    count: usize,
}

impl Errors {
    fn new(source: &str) -> Errors {
        Errors {
            source: source.to_string(),
            lines: Vec::new(),
            count: 0,
        }
    }

    fn push(&mut self, line: usize, msg: String) {
        self.count += 1;
        if self.lines.len() < ERRORS_SHOWN_MAX {
            self.lines
                .push(format!("{} line {line}: {msg}", self.source));
        }
    }
}

/// Refuses the file if any row was bad or an id repeats; else the registry, in file order.
fn finish(parsed: Vec<(usize, Asset)>, mut errors: Errors) -> Result<Registry, QueryError> {
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut dupes = Vec::new();
    for (line, a) in &parsed {
        if let Some(&prev) = first.get(a.id.as_str()) {
            dupes.push((
                *line,
                format!("id {:?} is already used on line {prev}", a.id),
            ));
        } else {
            first.insert(&a.id, *line);
        }
    }
    for (line, msg) in dupes {
        errors.push(line, msg);
    }
    if errors.count > 0 {
        let mut msg = errors.lines.join("\n");
        if errors.count > errors.lines.len() {
            msg.push_str(&format!(
                "\n... and {} more errors",
                errors.count - errors.lines.len()
            ));
        }
        return Err(QueryError::invalid(msg));
    }
    Ok(Registry {
        assets: parsed.into_iter().map(|(_, a)| a).collect(),
    })
}

// ---------------------------------------------------------------------------- the query

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssetsRequest {
    /// The conversion event: a name, `A|B`, `page:/path`, optionally `where` conditions.
    pub conversion: String,
    /// How long after a session's start a conversion still counts for its asset.
    #[serde(default = "default_window")]
    pub window: String,
    /// A numeric property of the conversion events to sum per asset, e.g. `revenue`.
    #[serde(default)]
    pub value: Option<String>,
    /// Inactivity that ends a session.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// Rows returned, most sessions first (default 1000, at most 10000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only persons whose first touch in range has these values (see [`crate::filter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::filter::Filter>,
    /// `day`, `week` or `month`: also count each row's `conversions` per period of the
    /// conversion's time (a sparkline per asset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<crate::trends::Interval>,
}

/// Periods of `interval` at most.
pub const INTERVALS_MAX: usize = 400;

fn default_window() -> String {
    "7d".into()
}

/// The measures of one asset, or of all sessions.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Scores {
    /// Distinct persons with a session on the asset.
    pub persons: u64,
    pub sessions: u64,
    pub engaged_sessions: u64,
    /// `1 - engaged/sessions` (GA4); null without sessions.
    pub bounce_rate: Option<f64>,
    /// Time engaged: from each session's first to its last visit event, summed.
    pub engaged_seconds: f64,
    pub avg_engaged_seconds: Option<f64>,
    /// Persons with a session on the asset followed by the conversion within the window.
    pub converted_persons: u64,
    /// Sessions followed by the conversion within the window (from the session's start).
    pub converted_sessions: u64,
    /// `converted_persons / persons`.
    pub conversion_rate: Option<f64>,
    /// Conversion events attributed last-touch: to the latest session that started at
    /// or before the conversion, within the window.
    pub conversions: u64,
    /// Sum of the `value` property over `conversions`; null without `value`.
    pub revenue: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AssetRow {
    /// The registry id, or the session's utm_content, utm_campaign or landing path.
    pub asset: String,
    pub registered: bool,
    /// `registry`, or for unregistered assets: utm_content, utm_campaign, landing_page, none.
    pub keyed_by: String,
    pub kind: Option<String>,
    pub name: Option<String>,
    /// The registry's campaign, else the most frequent utm_campaign of the sessions.
    pub campaign: Option<String>,
    /// The most frequent channel of the asset's sessions.
    pub channel: Option<String>,
    pub destination_url: Option<String>,
    #[serde(flatten)]
    pub scores: Scores,
    /// Drop-off on the asset's own funnel, when the registry defines one.
    pub funnel: Option<Vec<AssetFunnelStep>>,
    /// With `interval`: `conversions` per period, one number per entry of the answer's
    /// `intervals`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversions_by_interval: Option<Vec<u64>>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AssetFunnelStep {
    pub name: String,
    /// Persons reached by the asset who then did this step (and the ones before it, in
    /// order) within the window of their first session on the asset.
    pub persons: u64,
    /// Share of the previous step's persons (for the first step: of persons reached).
    pub conversion_from_previous: Option<f64>,
    pub drop_off: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AssetTotals {
    #[serde(flatten)]
    pub scores: Scores,
    /// Conversion events in range.
    pub conversion_events: u64,
    /// Conversion events with no session within the window before them.
    pub unattributed_conversions: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AssetsResponse {
    pub conversion: String,
    pub window_seconds: f64,
    pub timeout_seconds: f64,
    pub value: Option<String>,
    pub registered_assets: u64,
    pub total: AssetTotals,
    pub rows: Vec<AssetRow>,
    /// Rows beyond `limit`, and their sessions: rows plus these add up to the total.
    pub omitted_rows: u64,
    pub omitted_sessions: u64,
    /// With `interval`: the first day of each period, from the first conversion's period
    /// (or `from`) to the last's (or `to`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intervals: Option<Vec<String>>,
}

/// What one part of the persons accumulates for one asset (or for all sessions).
#[derive(Default)]
struct Acc {
    persons: u64,
    sessions: u64,
    engaged: u64,
    duration_ms: i64,
    converted_persons: u64,
    converted_sessions: u64,
    conversions: u64,
    /// Added once the parts are merged, in person order ([`Part::credited`]).
    revenue: f64,
    /// Sessions per attributed touch (an index into the part's attributor).
    touches: FxHashMap<usize, u64>,
    /// Persons by the depth reached on the asset's funnel.
    funnel_reached: Vec<u64>,
    /// Conversions by period index, with `interval`.
    by_interval: HashMap<i32, u64>,
}

impl Acc {
    /// Adds another part's counts (not its revenue or touches, which merge apart).
    fn merge(&mut self, o: &Acc) {
        self.persons += o.persons;
        self.sessions += o.sessions;
        self.engaged += o.engaged;
        self.duration_ms += o.duration_ms;
        self.converted_persons += o.converted_persons;
        self.converted_sessions += o.converted_sessions;
        self.conversions += o.conversions;
        if self.funnel_reached.len() < o.funnel_reached.len() {
            self.funnel_reached.resize(o.funnel_reached.len(), 0);
        }
        for (a, b) in self.funnel_reached.iter_mut().zip(&o.funnel_reached) {
            *a += b;
        }
        for (&k, &n) in &o.by_interval {
            *self.by_interval.entry(k).or_default() += n;
        }
    }

    fn scores(&self, valued: bool) -> Scores {
        let per = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
        let engaged_seconds = self.duration_ms as f64 / 1000.0;
        Scores {
            persons: self.persons,
            sessions: self.sessions,
            engaged_sessions: self.engaged,
            bounce_rate: per(self.sessions - self.engaged, self.sessions),
            engaged_seconds,
            avg_engaged_seconds: (self.sessions > 0)
                .then(|| engaged_seconds / self.sessions as f64),
            converted_persons: self.converted_persons,
            converted_sessions: self.converted_sessions,
            conversion_rate: per(self.converted_persons, self.persons),
            conversions: self.conversions,
            revenue: valued.then_some(self.revenue),
        }
    }
}

/// A scorecard line: a registry entry (by index) or an unregistered key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SlotKey {
    Registered(usize),
    Unregistered(AssetKey),
}

/// A part's scorecard lines, numbered in first-seen order, and its attributor (whose
/// touch indexes [`Acc::touches`] holds).
struct Slots<'r> {
    attributor: Attributor<'r>,
    keys: Vec<SlotKey>,
    ids: HashMap<SlotKey, usize>,
}

impl Slots<'_> {
    /// The line of the asset a session's first event names.
    fn of(&mut self, key: AssetKey, index: &RegistryIndex) -> usize {
        let key = match index.resolve(&key) {
            Some(i) => SlotKey::Registered(i),
            None => SlotKey::Unregistered(key),
        };
        if let Some(&s) = self.ids.get(&key) {
            return s;
        }
        self.keys.push(key.clone());
        self.ids.insert(key, self.keys.len() - 1);
        self.keys.len() - 1
    }
}

/// What the scorecard reads besides a person's rows.
struct Settings<'q> {
    window: Millis,
    timeout: Millis,
    interval: Option<crate::trends::Interval>,
    funnels: &'q [Vec<StepMatcher>],
    funnel_of: &'q [Option<usize>],
}

/// One part of the persons' scorecard (a scan thread's range, or every person of the
/// table), its lines numbered by its [`Slots`].
struct Part<'r> {
    slots: Slots<'r>,
    accs: Vec<Acc>,
    total: Acc,
    conversion_events: u64,
    unattributed: u64,
    /// The periods conversions fell in, with `interval`.
    span: Option<(i32, i32)>,
    /// Attributed conversions in person order, (line, arrival number): their values are
    /// read and summed once the parts are done.
    credited: Vec<(usize, u32)>,
    // Per person, reused: visit rows, sessions (start, line, first row), conversions,
    // (first session's first row, converted) per line, a funnel's step masks.
    visits: Vec<usize>,
    visit_ts: Vec<Millis>,
    sessions: Vec<(Millis, usize, usize)>,
    convs: Vec<usize>,
    conv_ts: Vec<Millis>,
    reached: FxHashMap<usize, (usize, bool)>,
    masks: Vec<u64>,
    outcome: Outcome,
}

impl<'r> Part<'r> {
    fn new(rules: &'r Rules) -> Part<'r> {
        Part {
            slots: Slots {
                attributor: Attributor::new(rules),
                keys: Vec::new(),
                ids: HashMap::new(),
            },
            accs: Vec::new(),
            total: Acc::default(),
            conversion_events: 0,
            unattributed: 0,
            span: None,
            credited: Vec::new(),
            visits: Vec::new(),
            visit_ts: Vec::new(),
            sessions: Vec::new(),
            convs: Vec::new(),
            conv_ts: Vec::new(),
            reached: FxHashMap::default(),
            masks: Vec::new(),
            outcome: Outcome::default(),
        }
    }

    /// One person's sessions and conversions from their rows in (time, arrival) order:
    /// `visit`, `view` and `converts` say what row `i` is (a conversion already checked
    /// against its conditions), `locate` gives the line and touch of the session whose
    /// first row is `i`, `mask(f, i)` row `i`'s steps of funnel `f`.
    #[allow(clippy::too_many_arguments)]
    fn person(
        &mut self,
        s: &Settings,
        ts: &[Millis],
        seq: impl Fn(usize) -> u32,
        visit: impl Fn(usize) -> bool,
        view: impl Fn(usize) -> bool,
        converts: impl Fn(usize) -> bool,
        mut locate: impl FnMut(&mut Slots, usize) -> (usize, usize),
        mask: impl Fn(usize, usize) -> u64,
    ) {
        let Part {
            slots,
            accs,
            total,
            conversion_events,
            unattributed,
            span,
            credited,
            visits,
            visit_ts,
            sessions: person_sessions,
            convs,
            conv_ts,
            reached,
            masks,
            outcome,
        } = self;
        visits.clear();
        visits.extend((0..ts.len()).filter(|&i| visit(i)));
        visit_ts.clear();
        visit_ts.extend(visits.iter().map(|&i| ts[i]));
        convs.clear();
        convs.extend((0..ts.len()).filter(|&i| converts(i)));
        conv_ts.clear();
        conv_ts.extend(convs.iter().map(|&i| ts[i]));
        *conversion_events += convs.len() as u64;
        person_sessions.clear();
        reached.clear();
        let mut any_converted = false;
        sessions::split(visit_ts, s.timeout, |a, b| {
            let (first, last) = (visits[a], visits[b - 1]);
            let start = ts[first];
            let duration = ts[last] - start;
            let views = visits[a..b].iter().filter(|&&i| view(i)).count();
            let engaged = duration > ENGAGED_SECONDS || views >= 2;
            let next = conv_ts.partition_point(|&t| t < start);
            let converted = conv_ts
                .get(next)
                .is_some_and(|&t| t <= start.saturating_add(s.window));
            let (slot, touch) = locate(slots, first);
            while accs.len() < slots.keys.len() {
                let funnel = match slots.keys[accs.len()] {
                    SlotKey::Registered(i) => s.funnel_of[i],
                    SlotKey::Unregistered(_) => None,
                };
                accs.push(Acc {
                    funnel_reached: funnel.map_or(Vec::new(), |f| vec![0; s.funnels[f].len() + 1]),
                    ..Acc::default()
                });
            }
            for acc in [&mut accs[slot], &mut *total] {
                acc.sessions += 1;
                acc.engaged += u64::from(engaged);
                acc.duration_ms += duration;
                acc.converted_sessions += u64::from(converted);
            }
            *accs[slot].touches.entry(touch).or_default() += 1;
            let seen = reached.entry(slot).or_insert((first, false));
            seen.1 |= converted;
            any_converted |= converted;
            person_sessions.push((start, slot, first));
        });
        if person_sessions.is_empty() && convs.is_empty() {
            return;
        }
        if !person_sessions.is_empty() {
            total.persons += 1;
            total.converted_persons += u64::from(any_converted);
        }
        for (&slot, &(first, converted)) in reached.iter() {
            let acc = &mut accs[slot];
            acc.persons += 1;
            acc.converted_persons += u64::from(converted);
            let funnel = match slots.keys[slot] {
                SlotKey::Registered(i) => s.funnel_of[i],
                SlotKey::Unregistered(_) => None,
            };
            if let Some(f) = funnel {
                masks.clear();
                masks.extend((first..ts.len()).map(|i| mask(f, i)));
                let spec = Spec::new(s.funnels[f].len(), s.window, Order::Ordered);
                funnel::evaluate(&spec, &ts[first..], masks, outcome);
                acc.funnel_reached[outcome.level] += 1;
            }
        }
        // Last touch: each conversion goes to the latest session started at or before it,
        // if that start lies within the window.
        for &c in convs.iter() {
            let t = ts[c];
            let k = person_sessions.partition_point(|x| x.0 <= t);
            let last = k
                .checked_sub(1)
                .map(|k| person_sessions[k])
                .filter(|x| x.0 >= t.saturating_sub(s.window));
            match last {
                Some((_, slot, _)) => {
                    credited.push((slot, seq(c)));
                    accs[slot].conversions += 1;
                    total.conversions += 1;
                    if let Some(iv) = s.interval {
                        let k = iv.index(t);
                        *accs[slot].by_interval.entry(k).or_default() += 1;
                        *span = Some(span.map_or((k, k), |(a, b)| (a.min(k), b.max(k))));
                    }
                }
                None => *unattributed += 1,
            }
        }
    }
}

/// A merged scorecard line.
struct Slot {
    key: SlotKey,
    acc: Acc,
    /// Sessions by channel and by campaign, for the most frequent of each.
    channels: HashMap<String, u64>,
    campaigns: HashMap<String, u64>,
}

pub fn run(
    snap: &Source,
    rules: &Rules,
    registry: &Registry,
    req: &AssetsRequest,
) -> Result<AssetsResponse, QueryError> {
    run_with(snap, rules, registry, req, true)
}

/// [`run`], with `scan: false` over the table of every visit (what the scan must equal).
fn run_with(
    snap: &Source,
    rules: &Rules,
    registry: &Registry,
    req: &AssetsRequest,
    scan: bool,
) -> Result<AssetsResponse, QueryError> {
    let conversion = StepMatcher::parse(&req.conversion)?;
    let window = parse_duration(&req.window)?;
    let timeout = parse_duration(req.timeout.as_deref().unwrap_or("30m"))?;
    let from = req.from.as_deref().map(parse_time_bound).transpose()?;
    let to = req.to.as_deref().map(parse_time_bound).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(QueryError::invalid("`from` must be before `to`"));
        }
    }
    let limit = req.limit.unwrap_or(LIMIT_DEFAULT);
    if limit == 0 || limit > LIMIT_MAX {
        return Err(QueryError::invalid(format!(
            "limit must be between 1 and {LIMIT_MAX}"
        )));
    }
    let value_path = req.value.as_deref().map(property_path).transpose()?;
    let (funnels, funnel_of) = asset_funnels(registry)?;
    let settings = Settings {
        window,
        timeout,
        interval: req.interval,
        funnels: &funnels,
        funnel_of: &funnel_of,
    };
    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    // Conditions on the conversion need its decoded event (which then gives the value
    // too); a value alone comes from the number columns, for the credited conversions only.
    let filtered = match conversion.filters.is_empty() {
        true => HashMap::new(),
        false => read_conversions(snap, &conversion, value_path.as_deref(), from, to)?,
    };
    let index = registry.index();
    let pass = Pass {
        snap,
        rules,
        range: (from, to),
        settings: &settings,
        only: only.as_ref(),
        conversion: &conversion,
        filtered: &filtered,
        index: &index,
    };
    let scanned = match scan {
        true => pass.scan()?,
        false => None,
    };
    let parts = match scanned {
        Some(parts) => parts,
        None => vec![pass.loaded()?],
    };

    // The parts' lines merged by key: registry entries first, then the unregistered in
    // first-seen order (parts hold persons in order, so as one pass would number them).
    let mut slots: Vec<Slot> = (0..registry.assets.len())
        .map(|i| Slot {
            key: SlotKey::Registered(i),
            acc: Acc {
                funnel_reached: funnel_of[i].map_or(Vec::new(), |f| vec![0; funnels[f].len() + 1]),
                ..Acc::default()
            },
            channels: HashMap::new(),
            campaigns: HashMap::new(),
        })
        .collect();
    let mut unregistered: HashMap<AssetKey, usize> = HashMap::new();
    let mut total = Acc::default();
    let (mut conversion_events, mut unattributed) = (0u64, 0u64);
    let mut span: Option<(i32, i32)> = None;
    let mut homes: Vec<Vec<usize>> = Vec::with_capacity(parts.len());
    for part in &parts {
        let home: Vec<usize> = part
            .slots
            .keys
            .iter()
            .map(|key| match key {
                SlotKey::Registered(i) => *i,
                SlotKey::Unregistered(k) => *unregistered.entry(k.clone()).or_insert_with(|| {
                    slots.push(Slot {
                        key: key.clone(),
                        acc: Acc::default(),
                        channels: HashMap::new(),
                        campaigns: HashMap::new(),
                    });
                    slots.len() - 1
                }),
            })
            .collect();
        for (acc, &h) in part.accs.iter().zip(&home) {
            let slot = &mut slots[h];
            slot.acc.merge(acc);
            for (&t, &n) in &acc.touches {
                let touch = part.slots.attributor.touch(t);
                *slot.channels.entry(touch.channel.clone()).or_default() += n;
                if let Some(c) = &touch.campaign {
                    *slot.campaigns.entry(c.clone()).or_default() += n;
                }
            }
        }
        total.merge(&part.total);
        conversion_events += part.conversion_events;
        unattributed += part.unattributed;
        if let Some((a, b)) = part.span {
            span = Some(span.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
        }
        homes.push(home);
    }
    // Values, summed in person order as one pass would.
    let valued;
    let values = match &value_path {
        Some(path) if conversion.filters.is_empty() => {
            let mut counted: Vec<u32> = parts
                .iter()
                .flat_map(|p| p.credited.iter().map(|c| c.1))
                .collect();
            // Arrival numbers ascend within a person, not across persons: sort them.
            counted.sort_unstable();
            counted.dedup();
            valued = crate::values::values_at(snap, path, &counted)?;
            &valued
        }
        _ => &filtered,
    };
    for (part, home) in parts.iter().zip(&homes) {
        for &(slot, seq) in &part.credited {
            let v = values.get(&seq).copied().unwrap_or(0.0);
            slots[home[slot]].acc.revenue += v;
            total.revenue += v;
        }
    }

    let valued = value_path.is_some();
    // The periods listed: the range's when given, else those the conversions span.
    let periods = match req.interval {
        None => None,
        Some(iv) => {
            let lo = from.map(|f| iv.index(f)).or(span.map(|s| s.0));
            let hi = to.map(|t| iv.index(t - 1)).or(span.map(|s| s.1));
            let (lo, hi) = match (lo, hi) {
                (Some(lo), Some(hi)) if lo <= hi => (lo, hi),
                _ => (0, -1),
            };
            if i64::from(hi) - i64::from(lo) + 1 > INTERVALS_MAX as i64 {
                return Err(QueryError::invalid(format!(
                    "the range holds more than {INTERVALS_MAX} periods of {}: narrow it or use a longer interval",
                    serde_json::to_value(iv).unwrap_or_default().as_str().unwrap_or("")
                )));
            }
            Some((iv, (lo..=hi).collect::<Vec<i32>>()))
        }
    };
    let series = |acc: &Acc| {
        periods.as_ref().map(|(_, ks)| {
            ks.iter()
                .map(|k| acc.by_interval.get(k).copied().unwrap_or(0))
                .collect()
        })
    };
    // The most frequent value, ties to the first by name.
    let most = |counts: &HashMap<String, u64>| {
        counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(v, _)| v.clone())
    };
    let mut out: Vec<AssetRow> = slots
        .iter()
        .map(|s| match &s.key {
            SlotKey::Registered(i) => {
                let a = &registry.assets[*i];
                AssetRow {
                    asset: a.id.clone(),
                    registered: true,
                    keyed_by: "registry".into(),
                    kind: Some(a.kind.clone()),
                    name: a.name.clone(),
                    campaign: a.campaign.clone().or_else(|| most(&s.campaigns)),
                    channel: most(&s.channels),
                    destination_url: a.destination_url.clone(),
                    scores: s.acc.scores(valued),
                    funnel: funnel_of[*i]
                        .map(|f| funnel_steps(&funnels[f], &s.acc.funnel_reached, s.acc.persons)),
                    conversions_by_interval: series(&s.acc),
                }
            }
            SlotKey::Unregistered(key) => AssetRow {
                asset: key.value.clone(),
                registered: false,
                keyed_by: key.source.as_str().into(),
                kind: None,
                name: None,
                campaign: most(&s.campaigns),
                channel: most(&s.channels),
                destination_url: None,
                scores: s.acc.scores(valued),
                funnel: None,
                conversions_by_interval: series(&s.acc),
            },
        })
        .collect();
    out.sort_by(|a, b| {
        b.scores
            .sessions
            .cmp(&a.scores.sessions)
            .then(b.scores.conversions.cmp(&a.scores.conversions))
            .then(a.asset.cmp(&b.asset))
            .then(a.keyed_by.cmp(&b.keyed_by))
    });
    let omitted: Vec<AssetRow> = out.split_off(limit.min(out.len()));
    Ok(AssetsResponse {
        conversion: conversion.label.clone(),
        window_seconds: window as f64 / 1000.0,
        timeout_seconds: timeout as f64 / 1000.0,
        value: req.value.clone(),
        registered_assets: registry.assets.len() as u64,
        total: AssetTotals {
            scores: total.scores(valued),
            conversion_events,
            unattributed_conversions: unattributed,
        },
        rows: out,
        omitted_rows: omitted.len() as u64,
        omitted_sessions: omitted.iter().map(|r| r.scores.sessions).sum(),
        intervals: periods.map(|(iv, ks)| ks.into_iter().map(|k| iv.label(k)).collect()),
    })
}

/// The pass from events to scorecard parts, as a scan or over the table.
struct Pass<'q, 's, 'a> {
    snap: &'q Source<'s, 'a>,
    rules: &'q Rules,
    range: (Option<Millis>, Option<Millis>),
    settings: &'q Settings<'q>,
    only: Option<&'q HashSet<u32>>,
    conversion: &'q StepMatcher,
    /// The conversions meeting the conversion's conditions, when it has any.
    filtered: &'q HashMap<u32, f64>,
    index: &'q RegistryIndex,
}

impl Pass<'_, '_, '_> {
    fn counts(&self, seq: u32) -> bool {
        self.conversion.filters.is_empty() || self.filtered.contains_key(&seq)
    }

    /// The scorecard over the table of every visit, conversion and funnel step, in one part.
    fn loaded(&self) -> Result<Part<'_>, QueryError> {
        let (funnels, conversion) = (self.settings.funnels, self.conversion);
        // Which non-visit events a funnel step can match: by name only (page steps match
        // page views, which are visits and loaded anyway).
        let mut step_names: HashSet<&str> = HashSet::new();
        let mut step_patterns: Vec<&str> = Vec::new();
        for a in funnels.iter().flatten().flat_map(|s| &s.alternatives) {
            if let Alternative::Name(n) = a {
                if n.contains('*') {
                    step_patterns.push(n);
                } else {
                    step_names.insert(n);
                }
            }
        }
        let rows = load(
            self.snap,
            &Load {
                from: self.range.0,
                to: self.range.1,
                dims: TOUCH_DIMS.to_vec(),
                keep: Some(Box::new(|kind, v| {
                    is_visit(kind, v[1].is_some())
                        || conversion.matches_event(kind, v[0], v[1])
                        || v[0].is_some_and(|n| {
                            step_names.contains(n)
                                || step_patterns.iter().any(|p| crate::spec::wildcard(p, n))
                        })
                })),
                keep_reads: Some(vec![0, 1]),
                persons: self.only,
            },
        )?;
        let (names, paths) = (rows.dim(0), rows.dim(1));
        let matching = rows.matching(conversion);
        let (page, screen) = (EventType::Page.code(), EventType::Screen.code());
        // Lines by the code of what keys them; masks by (funnel, type, name, path).
        let mut line_of: FxHashMap<(KeySource, u32), usize> = FxHashMap::default();
        let mask_cache: std::cell::RefCell<HashMap<(usize, u8, u32, u32), u64>> =
            Default::default();
        let mut part = Part::new(self.rules);
        for r in rows.persons() {
            let base = r.start;
            part.person(
                self.settings,
                &rows.ts[r.clone()],
                |i| rows.seq[base + i],
                |i| is_visit(rows.kind[base + i], paths.codes[base + i] != NO_VALUE),
                |i| rows.kind[base + i] == page || rows.kind[base + i] == screen,
                |i| matching[base + i] && self.counts(rows.seq[base + i]),
                |slots, i| {
                    let row = base + i;
                    let key = asset_key(rows.dim(5).get(row), rows.dim(4).get(row), paths.get(row));
                    let code = match key.source {
                        KeySource::Content => rows.dim(5).codes[row],
                        KeySource::Campaign => rows.dim(4).codes[row],
                        KeySource::LandingPage => paths.codes[row],
                        KeySource::NotSet => NO_VALUE,
                    };
                    let line = match line_of.get(&(key.source, code)) {
                        Some(&l) => l,
                        None => {
                            let source = key.source;
                            let l = slots.of(key, self.index);
                            line_of.insert((source, code), l);
                            l
                        }
                    };
                    (line, slots.attributor.attribute(&rows, row))
                },
                |f, i| {
                    let i = base + i;
                    *mask_cache
                        .borrow_mut()
                        .entry((f, rows.kind[i], names.codes[i], paths.codes[i]))
                        .or_insert_with(|| {
                            let mut m = 0u64;
                            for (k, s) in funnels[f].iter().enumerate() {
                                if s.matches_event(rows.kind[i], names.get(i), paths.get(i)) {
                                    m |= 1 << k;
                                }
                            }
                            m
                        })
                },
            );
        }
        Ok(part)
    }

    /// The scorecard as one streaming scan, persons in parallel, one part per thread,
    /// where the tag holds what a row means to it: bit 0 marks a visit, whose landing path
    /// and touch codes follow ([`CodePack`]), then each funnel's step bits, the conversion
    /// (bit 62) and a page or screen view (bit 63). `None` when they do not fit.
    fn scan(&self) -> Result<Option<Vec<Part<'_>>>, QueryError> {
        const CONVERSION_BIT: u32 = 62;
        const VIEW_BIT: u32 = 63;
        let funnels = self.settings.funnels;
        let scan = Scan::new(self.snap, self.range.0, self.range.1, &TOUCH_DIMS)?;
        let Some(pack) = CodePack::new(&VISIT_CODES, |j| scan.dict(j).len())
            .and_then(|p| p.below(CONVERSION_BIT))
        else {
            return Ok(None);
        };
        let codes_mask = pack.mask();
        // Each funnel's steps, one bit each, after the codes.
        let mut offsets = Vec::with_capacity(funnels.len());
        let mut steps: Vec<(u64, &StepMatcher)> = Vec::new();
        let mut next = pack.width();
        for f in funnels {
            offsets.push(next);
            for s in f {
                if next >= CONVERSION_BIT {
                    return Ok(None);
                }
                steps.push((1 << next, s));
                next += 1;
            }
        }
        let step_masks = MaskTable::new(&steps, scan.dict(0), Some(scan.dict(1)));
        let converts = MaskTable::new(&[(1, self.conversion)], scan.dict(0), Some(scan.dict(1)));
        let (page, screen) = (EventType::Page.code(), EventType::Screen.code());
        let tag = |kind: u8, codes: &[u32]| -> u64 {
            let visit = match is_visit(kind, codes[1] != NO_VALUE) {
                true => pack.pack(codes) | (u64::from(kind == page || kind == screen) << VIEW_BIT),
                false => 0,
            };
            visit | step_masks.of(kind, codes) | (converts.of(kind, codes) << CONVERSION_BIT)
        };
        let touch_dicts: [&[String]; 6] = std::array::from_fn(|k| scan.dict(k + 2));
        let string = |j: usize, c: u32| (c != NO_VALUE).then(|| scan.dict(j)[c as usize].as_str());
        let parts = scan.run(
            self.only,
            tag,
            || {
                (
                    Part::new(self.rules),
                    FxHashMap::<u64, (usize, usize)>::default(),
                )
            },
            |(part, lines): &mut (Part, FxHashMap<u64, (usize, usize)>), r| {
                part.person(
                    self.settings,
                    r.ts,
                    |i| r.seq[i],
                    |i| r.tag[i] & 1 != 0,
                    |i| r.tag[i] >> VIEW_BIT != 0,
                    |i| r.tag[i] >> CONVERSION_BIT & 1 != 0 && self.counts(r.seq[i]),
                    |slots, i| {
                        let key = r.tag[i] & codes_mask;
                        if let Some(&l) = lines.get(&key) {
                            return l;
                        }
                        let codes = pack.unpack(key);
                        // Path, then source, medium, campaign, content, referrer, click id.
                        let asset = asset_key(
                            string(5, codes[4]),
                            string(4, codes[3]),
                            string(1, codes[0]),
                        );
                        let l = (
                            slots.of(asset, self.index),
                            slots.attributor.attribute_dicts(&codes[1..], &touch_dicts),
                        );
                        lines.insert(key, l);
                        l
                    },
                    |f, i| {
                        let n = funnels[f].len() as u32;
                        (r.tag[i] >> offsets[f]) & ((1u64 << n) - 1)
                    },
                );
            },
        )?;
        Ok(Some(parts.into_iter().map(|(p, _)| p).collect()))
    }
}

/// The registry's funnels, each parsed once however many assets share it, and the funnel
/// of each registry entry.
#[allow(clippy::type_complexity)]
fn asset_funnels(
    registry: &Registry,
) -> Result<(Vec<Vec<StepMatcher>>, Vec<Option<usize>>), QueryError> {
    let mut funnels: Vec<Vec<StepMatcher>> = Vec::new();
    let mut funnel_of: Vec<Option<usize>> = Vec::with_capacity(registry.assets.len());
    let mut seen: HashMap<&[String], usize> = HashMap::new();
    for a in &registry.assets {
        if a.funnel.is_empty() {
            funnel_of.push(None);
            continue;
        }
        if let Some(&f) = seen.get(a.funnel.as_slice()) {
            funnel_of.push(Some(f));
            continue;
        }
        let steps = a
            .funnel
            .iter()
            .take(STEPS_MAX)
            .map(|s| StepMatcher::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        seen.insert(&a.funnel, funnels.len());
        funnel_of.push(Some(funnels.len()));
        funnels.push(steps);
    }
    Ok((funnels, funnel_of))
}

/// The conversion events in range that pass the conversion's `where` conditions, by arrival
/// number, with their value (0 when missing or not a number). Decodes the payloads of
/// events named like the conversion and no others, and only when a value or a condition
/// needs them: otherwise the map is empty.
pub(crate) fn read_conversions(
    snap: &Source,
    conversion: &StepMatcher,
    value: Option<&[String]>,
    from: Option<Millis>,
    to: Option<Millis>,
) -> Result<HashMap<u32, f64>, QueryError> {
    let mut decoded: HashMap<u32, f64> = HashMap::new();
    if value.is_none() && conversion.filters.is_empty() {
        return Ok(decoded);
    }
    let wanted = |name: &str| conversion.needs_path() || conversion.matches(Some(name), None);
    let in_range = |t: Millis| from.is_none_or(|f| t >= f) && to.is_none_or(|e| t < e);
    let mut too_many = false;
    let scan = snap.for_each_event_named(wanted, |seq, e| {
        let kind = e.event_type.code();
        if !in_range(e.timestamp)
            || !conversion.matches_event(kind, e.event.as_deref(), e.page_path.as_deref())
            || !conversion.filters.iter().all(|f| f.holds(&e))
        {
            return Ok(());
        }
        if decoded.len() >= VALUED_CONVERSIONS_MAX {
            // Stops the scan; the error itself is replaced below.
            too_many = true;
            return Err(StoreError::Closed.into());
        }
        let v = value.and_then(|p| number_at(&e, p));
        decoded.insert(seq, v.unwrap_or(0.0));
        Ok(())
    });
    if too_many {
        return Err(QueryError::invalid(format!(
            "more than {VALUED_CONVERSIONS_MAX} conversion events to read values from: narrow the range with from/to"
        )));
    }
    scan?;
    Ok(decoded)
}

fn funnel_steps(steps: &[StepMatcher], reached: &[u64], entered: u64) -> Vec<AssetFunnelStep> {
    let n = steps.len();
    // persons[k]: reached at least k + 1 steps.
    let mut persons = vec![0u64; n];
    let mut acc = 0;
    for k in (0..n).rev() {
        acc += reached[k + 1];
        persons[k] = acc;
    }
    (0..n)
        .map(|k| {
            let prev = if k == 0 { entered } else { persons[k - 1] };
            let rate = (prev > 0).then(|| persons[k] as f64 / prev as f64);
            AssetFunnelStep {
                name: steps[k].label.clone(),
                persons: persons[k],
                conversion_from_previous: rate,
                drop_off: rate.map(|r| 1.0 - r),
            }
        })
        .collect()
}

/// `revenue`, `order.total` (both in `properties`), `context.x`, `traits.y`.
pub(crate) fn property_path(text: &str) -> Result<Vec<String>, QueryError> {
    let t = text.trim();
    if t.is_empty() || t.split('.').any(str::is_empty) {
        return Err(QueryError::invalid(format!(
            "invalid value property {text:?}: use a property name such as revenue or order.total"
        )));
    }
    let mut path: Vec<String> = t.split('.').map(str::to_string).collect();
    if !matches!(path[0].as_str(), "properties" | "context" | "traits") {
        path.insert(0, "properties".into());
    }
    if path.len() < 2 {
        return Err(QueryError::invalid(format!(
            "invalid value property {text:?}: name a property inside {}",
            path[0]
        )));
    }
    Ok(path)
}

/// A number, or a string holding one; anything else is no value.
pub(crate) fn number_at(e: &throughline_model::Event, path: &[String]) -> Option<f64> {
    let root = match path[0].as_str() {
        "context" => &e.context,
        "traits" => &e.traits,
        _ => &e.properties,
    };
    let mut v = root.get(&path[1])?;
    for k in &path[2..] {
        v = v.get(k)?;
    }
    throughline_model::number_of(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::tests::journey_store;

    /// The streaming scorecard gives the answer the table gives, to the bit: with
    /// registered assets and their funnels (by name, by page, with a wildcard), a value, a
    /// conversion with conditions, a page conversion, a range and weekly intervals, on
    /// stores of several segments and the log, with devices stitched into persons, ties in
    /// time and conversions that are also visits.
    #[test]
    fn the_scanned_scorecard_equals_the_loaded_one() {
        let registry = Registry::from_toml(
            r#"
[[asset]]
id = "hero-ad"
kind = "ad"
destination_url = "https://shop.example/lp/a?utm_content=hero"
funnel = ["page:/lp/a", "Clicked", "Order"]

[[asset]]
id = "spring-mail"
kind = "email"
destination_url = "https://shop.example/?utm_campaign=spring"
funnel = ["Clicked", "page:/products/*", "Ord*"]

[[asset]]
id = "products"
kind = "landing_page"
destination_url = "/products/x"
funnel = ["Clicked", "page:/products/*", "Ord*"]
"#,
            "t.toml",
        )
        .unwrap();
        for seed in 1..=3u64 {
            let (p, dir) = journey_store("assets-scan", seed);
            let snap = p.snapshot();
            let src = Source::from(&snap);
            let rules = Rules::ga4_default();
            for registry in [&registry, &Registry::default()] {
                for (conversion, value, range, interval) in [
                    ("Order", Some("revenue"), None, None),
                    (
                        "Order",
                        Some("revenue"),
                        Some((12_000, 30_000)),
                        Some("day"),
                    ),
                    (
                        "Order where tier = 'gold'",
                        Some("revenue"),
                        None,
                        Some("week"),
                    ),
                    ("page:/products/*", None, Some((5000, 40_000)), None),
                ] {
                    let req = AssetsRequest {
                        conversion: conversion.into(),
                        window: "9s".into(),
                        value: value.map(str::to_string),
                        timeout: Some("4s".into()),
                        from: range.map(|r: (i64, i64)| throughline_model::format_ms(r.0)),
                        to: range.map(|r| throughline_model::format_ms(r.1)),
                        interval: interval
                            .map(|i| serde_json::from_value(serde_json::json!(i)).unwrap()),
                        ..Default::default()
                    };
                    let scanned = run_with(&src, &rules, registry, &req, true).unwrap();
                    let loaded = run_with(&src, &rules, registry, &req, false).unwrap();
                    assert!(
                        loaded.rows.len() > 3 && loaded.total.scores.conversions > 3,
                        "{req:?}"
                    );
                    if !registry.assets.is_empty() {
                        let reached: u64 = loaded
                            .rows
                            .iter()
                            .filter_map(|r| r.funnel.as_ref())
                            .map(|f| f.last().map_or(0, |s| s.persons))
                            .sum();
                        assert!(reached > 0, "some persons finish a funnel: {req:?}");
                    }
                    assert_eq!(
                        serde_json::to_string(&scanned).unwrap(),
                        serde_json::to_string(&loaded).unwrap(),
                        "seed {seed} {req:?}"
                    );
                }
            }
            drop(snap);
            drop(p);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    fn key(source: KeySource, value: &str) -> AssetKey {
        AssetKey {
            source,
            value: value.into(),
        }
    }

    #[test]
    fn the_asset_key_is_content_else_campaign_else_landing_path() {
        use KeySource::*;
        let cases = [
            (
                (Some("banner-a"), Some("spring"), Some("/sale")),
                key(Content, "banner-a"),
            ),
            (
                (None, Some("spring"), Some("/sale")),
                key(Campaign, "spring"),
            ),
            ((Some(""), Some("spring"), None), key(Campaign, "spring")),
            ((None, None, Some("/sale")), key(LandingPage, "/sale")),
            ((None, None, None), key(NotSet, NOT_SET)),
            ((Some(""), Some(""), Some("")), key(NotSet, NOT_SET)),
        ];
        for ((c, k, p), want) in cases {
            assert_eq!(asset_key(c, k, p), want, "{c:?} {k:?} {p:?}");
        }
        assert_eq!(
            destination_key(
                "https://shop.example/sale?utm_campaign=spring%20sale&utm_content=b-1#x"
            ),
            key(Content, "b-1")
        );
        assert_eq!(
            destination_key("https://shop.example/sale?utm_campaign=spring%20sale"),
            key(Campaign, "spring sale")
        );
        assert_eq!(
            destination_key("https://shop.example"),
            key(LandingPage, "/")
        );
        assert_eq!(
            destination_key("/pricing?ref=x"),
            key(LandingPage, "/pricing")
        );
    }

    #[test]
    fn registry_entries_match_by_id_then_destination_first_entry_wins() {
        let reg = Registry::from_toml(
            r#"
[[asset]]
id = "banner-a"
kind = "ad"
destination_url = "https://shop.example/sale?utm_content=banner-a"

[[asset]]
id = "spring-email"
kind = "email"
destination_url = "https://shop.example/sale?utm_campaign=spring"

[[asset]]
id = "sale-page"
kind = "landing_page"
destination_url = "https://shop.example/sale"

[[asset]]
id = "sale-page-copy"
kind = "landing_page"
destination_url = "/sale"

[[asset]]
id = "/pricing"
kind = "page"
"#,
            "t.toml",
        )
        .unwrap();
        let idx = reg.index();
        use KeySource::*;
        assert_eq!(idx.resolve(&key(Content, "banner-a")), Some(0));
        assert_eq!(idx.resolve(&key(Campaign, "spring")), Some(1));
        // An id matches whichever value named the session.
        assert_eq!(idx.resolve(&key(Campaign, "spring-email")), Some(1));
        assert_eq!(idx.resolve(&key(LandingPage, "/sale")), Some(2));
        assert_eq!(idx.resolve(&key(LandingPage, "/pricing")), Some(4));
        assert_eq!(idx.resolve(&key(Content, "banner-b")), None);
        assert_eq!(idx.resolve(&key(NotSet, NOT_SET)), None);
    }

    #[test]
    fn csv_registry_parses_with_any_column_order_and_funnels() {
        let text = "\u{feff}kind,id,name,destination_url,campaign,funnel\n\
                    ad,banner-a,Spring banner A,https://shop.example/sale?utm_content=banner-a,spring,Product Viewed > Order Completed\n\
                    Email, welcome-1 ,\"Welcome, part 1\",,,\"[\"\"Signed Up\"\", \"\"A > B\"\"]\"\n\
                    page,/pricing,,,,\n";
        let reg = Registry::from_csv(text, "a.csv").unwrap();
        assert_eq!(reg.assets.len(), 3);
        assert_eq!(
            reg.assets[0],
            Asset {
                id: "banner-a".into(),
                kind: "ad".into(),
                name: Some("Spring banner A".into()),
                destination_url: Some("https://shop.example/sale?utm_content=banner-a".into()),
                campaign: Some("spring".into()),
                funnel: vec!["Product Viewed".into(), "Order Completed".into()],
                ..Asset::default()
            }
        );
        assert_eq!(reg.assets[1].id, "welcome-1");
        assert_eq!(reg.assets[1].kind, "email");
        assert_eq!(reg.assets[1].name.as_deref(), Some("Welcome, part 1"));
        assert_eq!(reg.assets[1].funnel, ["Signed Up", "A > B"]);
        assert_eq!(reg.assets[2].destination_url, None);
        // TOML round trip of what CSV gave.
        assert_eq!(Registry::from_toml(&reg.to_toml(), "x").unwrap(), reg);
    }

    #[test]
    fn bad_csv_rows_are_reported_with_their_line_numbers() {
        let text = "id,kind,name,destination_url,campaign\n\
                    ok,ad,,,\n\
                    ,ad,,,\n\
                    x,banana,,,\n\
                    y,ad,,ftp://nope,\n\
                    ok,email,,,\n";
        let err = Registry::from_csv(text, "a.csv").unwrap_err().to_string();
        for want in [
            "a.csv line 3: id is empty",
            "a.csv line 4: kind \"banana\" is not an asset kind",
            "a.csv line 5: destination_url \"ftp://nope\"",
            "a.csv line 6: id \"ok\" is already used on line 2",
        ] {
            assert!(err.contains(want), "{want:?} missing in:\n{err}");
        }
        let err = Registry::from_csv("id,kind\na,ad,extra\n", "a.csv")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.csv line 2: 3 fields where the header has 2"),
            "{err}"
        );
        let err = Registry::from_csv("id,type\n", "a.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1: unknown column \"type\""), "{err}");
        let err = Registry::from_csv("name\n", "a.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least the columns id and kind"), "{err}");
        let err = Registry::from_csv("id,kind,funnel\na,ad,A where x > 1 > B\n", "a.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2: funnel step \"A where x\""), "{err}");
        let long = format!("id,kind\n{},ad\n", "x".repeat(LINE_BYTES_MAX + 1));
        let err = Registry::from_csv(&long, "a.csv").unwrap_err().to_string();
        assert!(err.contains("a.csv line 2: longer than"), "{err}");
        let many: String = std::iter::once("id,kind\n".to_string())
            .chain((0..=ASSETS_MAX).map(|i| format!("a{i},ad\n")))
            .collect();
        let err = Registry::from_csv(&many, "a.csv").unwrap_err().to_string();
        assert!(err.contains("more than 100000 assets"), "{err}");
    }

    #[test]
    fn bad_toml_is_reported_with_line_numbers() {
        let err = Registry::from_toml(
            "[[asset]]\nid = \"a\"\nkind = \"ad\"\n\n[[asset]]\nid = \"b\"\nkind = \"ad\"\ncolour = \"red\"\n",
            "r.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("r.toml line 8") && err.contains("colour"),
            "{err}"
        );
        let err = Registry::from_toml("[[asset]]\nid = \"a\"\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("r.toml line 1") && err.contains("kind"),
            "{err}"
        );
        let err = Registry::from_toml(
            "[[asset]]\nid = \"a\"\nkind = \"ad\"\n[[asset]]\nid = \"a\"\nkind = \"tv\"\n[[asset]]\nid = \"c\"\nkind = \"ad\"\nfunnel = [\"\"]\n",
            "r.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("r.toml line 4: id \"a\" is already used on line 1"),
            "{err}"
        );
        assert!(
            err.contains("r.toml line 7: a funnel step is empty"),
            "{err}"
        );
        assert!(Registry::from_toml("", "r.toml").unwrap().assets.is_empty());
    }

    #[test]
    fn merging_replaces_known_ids_in_place_and_appends_new_ones() {
        let a = |id: &str, kind: &str| Asset {
            id: id.into(),
            kind: kind.into(),
            ..Asset::default()
        };
        let mut reg = Registry {
            assets: vec![a("x", "ad"), a("y", "ad")],
        };
        let (added, updated) = reg
            .merge(Registry {
                assets: vec![a("z", "post"), a("x", "email")],
            })
            .unwrap();
        assert_eq!((added, updated), (1, 1));
        assert_eq!(reg.assets, [a("x", "email"), a("y", "ad"), a("z", "post")]);
    }

    #[test]
    fn saving_is_atomic_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("tl-assets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Registry::load(&dir).unwrap(), Registry::default());
        let reg = Registry::from_csv("id,kind,funnel\na,ad,X > page:/y/*\n", "a.csv").unwrap();
        let path = reg.save(&dir).unwrap();
        assert_eq!(path, dir.join(REGISTRY_FILE));
        assert_eq!(Registry::load(&dir).unwrap(), reg);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != REGISTRY_FILE)
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn value_properties_read_numbers_and_numeric_strings() {
        let mut e: throughline_model::Event = serde_json::from_value(serde_json::json!({
            "message_id": "m", "type": "track", "timestamp": 0, "received_at": 0}))
        .unwrap();
        e.properties = serde_json::json!({"revenue": "12.5", "order": {"total": 3}, "bad": "x"})
            .as_object()
            .unwrap()
            .clone();
        let at = |p: &str| number_at(&e, &property_path(p).unwrap());
        assert_eq!(at("revenue"), Some(12.5));
        assert_eq!(at("properties.revenue"), Some(12.5));
        assert_eq!(at("order.total"), Some(3.0));
        assert_eq!(at("bad"), None);
        assert_eq!(at("missing"), None);
        assert!(property_path("a..b").is_err());
        assert!(property_path("context").is_err());
    }
}
