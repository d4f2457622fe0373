//! `query audit`: where the journey breaks. A consistency audit of the traffic against
//! the asset registry, each finding with the sessions and persons it affects:
//!
//! - **UTM hygiene**: one source, medium or campaign in several spellings (`Facebook`,
//!   `facebook`, `face-book`, `fb`: the same after lowercasing, dropping everything but
//!   letters and digits, and expanding the usual abbreviations); sessions the channel rules
//!   leave in Unassigned (an unknown medium, usually), by source and medium; campaigns in
//!   the traffic that no registered asset covers (no entry with that `campaign` or `id`,
//!   and no session of it resolved to an entry); registered assets that received no
//!   session in range.
//! - **Message match**: for each registered asset with a `headline` or `copy` and each
//!   landing page its sessions reached, the TF-IDF cosine similarity of the asset's text
//!   and the page's (its title and the text properties the page view sends, its name and
//!   its path's words), flagged below `similarity_min`; with bounce and conversion rates of
//!   matched and mismatched pairs side by side.
//! - **Error landings**: sessions that came through a tracked link (UTM tags or a click id
//!   on the landing, or a click the server recorded on `/r/{token}` before redirecting)
//!   whose landing page was followed by an error event before any other page view.
//!
//! Sessions and assets follow `query sessions` and `query assets`: a session's asset is
//! its landing's `utm_content`, else `utm_campaign`, else path, named by the registry.
//! Registered destination URLs are checked over HTTP by `audit links` ([`crate::links`]),
//! not here: this module only reads the store.

use std::collections::{BTreeMap, HashMap, HashSet};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_model::{EventType, Millis};
use throughline_store::NO_VALUE;
use throughline_text::tfidf::Corpus;

use crate::assets::{asset_key, Registry};
use crate::intern::Names;
use crate::rows::{load, Load};
use crate::sessions::{is_visit, Attributor};
use crate::source::{EventFilter, Source};
use crate::spec::{parse_duration, parse_time_bound, StepMatcher};
use crate::QueryError;

/// GA4: a session is engaged when it lasts longer than 10 seconds or has 2+ page views
/// (as `query sessions` counts it).
const ENGAGED_SECONDS: Millis = 10_000;
/// Landing page views decoded per landing path, for the page's text.
const LANDING_SAMPLES_PER_PATH: usize = 20;
/// Distinct landing paths whose text is read, at most.
const LANDING_PATHS_MAX: usize = 20_000;
/// Findings of each kind listed at most (most affected first); the rest are counted.
pub const FINDINGS_PER_KIND_MAX: usize = 200;
pub const DEFAULT_ERROR_EVENTS: &str =
    "Page Not Found|404|Not Found|404 Page Viewed|Error Page Viewed|Page Error|page:/404*";
const PAGE_TEXT_PROPERTIES: [&str; 7] = [
    "title",
    "headline",
    "h1",
    "description",
    "text",
    "keywords",
    "summary",
];
/// Common abbreviations of traffic sources, folded before comparing spellings.
const SOURCE_ALIASES: [(&str, &str); 8] = [
    ("fb", "facebook"),
    ("ig", "instagram"),
    ("insta", "instagram"),
    ("li", "linkedin"),
    ("yt", "youtube"),
    ("tt", "tiktok"),
    ("tw", "twitter"),
    ("goog", "google"),
];

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRequest {
    /// A conversion event for the conversion rates of message-match pairs (optional).
    #[serde(default)]
    pub conversion: Option<String>,
    /// How long after a session's start a conversion counts for it (default 7d).
    #[serde(default)]
    pub window: Option<String>,
    /// Events that mean "this page is broken" (default: Page Not Found, 404, ... page:/404*).
    #[serde(default)]
    pub error_events: Option<String>,
    /// Asset/landing pairs less similar than this are flagged (default 0.1).
    #[serde(default)]
    pub similarity_min: Option<f64>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// Only persons whose first touch in range has these values (see [`crate::filter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::filter::Filter>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Finding {
    /// source_spelling, medium_spelling, campaign_spelling, unassigned_traffic,
    /// campaign_without_asset, asset_without_traffic, message_mismatch, error_landing.
    pub kind: &'static str,
    /// error (visitors hit a broken page), warning (data is misfiled), info.
    pub severity: &'static str,
    /// What it is about: the canonical spelling, the source / medium, the campaign, the
    /// asset id, or `asset -> landing path`.
    pub subject: String,
    pub detail: String,
    pub affected_sessions: u64,
    pub affected_persons: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Variant {
    pub value: String,
    pub sessions: u64,
    pub persons: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Spelling {
    /// The most used variant.
    pub canonical: String,
    pub variants: Vec<Variant>,
    /// Sessions and persons under the other variants.
    pub affected_sessions: u64,
    pub affected_persons: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Traffic {
    pub key: String,
    pub sessions: u64,
    pub persons: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct UtmHygiene {
    pub sources: Vec<Spelling>,
    pub mediums: Vec<Spelling>,
    pub campaigns: Vec<Spelling>,
    /// Unassigned sessions by `source / medium`.
    pub unassigned: Vec<Traffic>,
    pub campaigns_without_asset: Vec<Traffic>,
    /// Registry ids.
    pub assets_without_traffic: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Pair {
    pub asset: String,
    pub kind: String,
    pub landing_page: String,
    /// The landing page's text as compared (its title and text properties).
    pub landing_text: String,
    pub asset_text: String,
    pub similarity: f64,
    pub shared_terms: Vec<String>,
    pub matched: bool,
    pub sessions: u64,
    pub persons: u64,
    pub bounce_rate: Option<f64>,
    /// Sessions followed by the conversion within the window; null without `conversion`.
    pub conversion_rate: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PairTotals {
    pub pairs: u64,
    pub sessions: u64,
    pub bounce_rate: Option<f64>,
    pub conversion_rate: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MessageMatch {
    pub similarity_min: f64,
    /// Least similar first.
    pub pairs: Vec<Pair>,
    pub matched: PairTotals,
    pub mismatched: PairTotals,
    /// Registered assets with sessions but no headline or copy to compare.
    pub assets_without_copy: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ErrorLanding {
    /// The asset key of the tracked link (registry id, or its utm value).
    pub asset: String,
    pub landing_page: String,
    pub sessions: u64,
    pub error_sessions: u64,
    pub persons: u64,
    pub error_rate: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AuditResponse {
    pub sessions: u64,
    pub persons: u64,
    pub registered_assets: u64,
    /// Every finding, most affected sessions first within each kind, kinds in the order
    /// listed under `Finding::kind`.
    pub findings: Vec<Finding>,
    pub findings_by_kind: BTreeMap<&'static str, u64>,
    pub utm: UtmHygiene,
    pub message_match: MessageMatch,
    pub error_landings: Vec<ErrorLanding>,
    pub methods: BTreeMap<&'static str, &'static str>,
}

/// Sessions and persons of one value.
#[derive(Default)]
struct Count {
    sessions: u64,
    persons: FxHashSet<u32>,
}

impl Count {
    fn add(&mut self, person: u32) {
        self.sessions += 1;
        self.persons.insert(person);
    }

    fn merge(&mut self, other: Count) {
        self.sessions += other.sessions;
        self.persons.extend(other.persons);
    }
}

#[derive(Default)]
struct PairAcc {
    count: Count,
    engaged: u64,
    converted: u64,
    /// Arrival numbers of some landing views, to read the page's text from.
    samples: Vec<u32>,
}

/// What `message_match` needs from the scan.
struct Landings<'a> {
    pairs: &'a HashMap<(usize, String), PairAcc>,
    /// Names of the sampled landing views (`None` for unnamed ones): only events with
    /// these names are decoded.
    names: &'a HashSet<Option<String>>,
    with_conversion: bool,
}

#[derive(Default)]
struct ErrorAcc {
    count: Count,
    errors: u64,
}

/// Lowercase letters and digits only, abbreviations expanded: `Face-Book` and `facebook`
/// are one source.
pub fn normalize_spelling(value: &str, aliases: bool) -> String {
    let n: String = value
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    if aliases {
        if let Some((_, full)) = SOURCE_ALIASES.iter().find(|(a, _)| *a == n) {
            return full.to_string();
        }
    }
    n
}

pub fn run(
    snap: &Source,
    rules: &Rules,
    registry: &Registry,
    req: &AuditRequest,
) -> Result<AuditResponse, QueryError> {
    let from = req.from.as_deref().map(parse_time_bound).transpose()?;
    let to = req.to.as_deref().map(parse_time_bound).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(QueryError::invalid("`from` must be before `to`"));
        }
    }
    let timeout = parse_duration(req.timeout.as_deref().unwrap_or("30m"))?;
    let window = parse_duration(req.window.as_deref().unwrap_or("7d"))?;
    let similarity_min = req.similarity_min.unwrap_or(0.1);
    if !(0.0..=1.0).contains(&similarity_min) {
        return Err(QueryError::invalid(
            "similarity_min must be between 0 and 1",
        ));
    }
    let errors = StepMatcher::parse(req.error_events.as_deref().unwrap_or(DEFAULT_ERROR_EVENTS))?;
    let conversion = req
        .conversion
        .as_deref()
        .map(StepMatcher::parse)
        .transpose()?;
    for m in std::iter::once(&errors).chain(conversion.as_ref()) {
        if !m.filters.is_empty() {
            return Err(QueryError::invalid(format!(
                "{:?}: the audit matches event names and page paths; `where` conditions are not supported",
                m.label
            )));
        }
    }

    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    let rows = load(
        snap,
        &Load {
            from,
            to,
            persons: only.as_ref(),
            dims: vec![0, 1, 2, 3, 4, 5, 7, 8],
            keep: Some(Box::new(|kind, v| {
                is_visit(kind, v[1].is_some())
                    || errors.matches_event(kind, v[0], v[1])
                    || conversion
                        .as_ref()
                        .is_some_and(|c| c.matches_event(kind, v[0], v[1]))
            })),
            // Decided once per (type, name, path), not per row.
            keep_reads: Some(vec![0, 1]),
        },
    )?;
    let index = registry.index();
    let mut attributor = Attributor::new(rules);
    let unassigned_name = rules.unassigned().to_string();
    let page = EventType::Page.code();
    let screen = EventType::Screen.code();

    let mut all = Count::default();
    // Sessions are many and their distinct keys few: the loop counts by dictionary code,
    // touch or interned name, and the strings are put together once, after it.
    let per_code = |d: usize| -> Vec<Count> {
        (0..rows.dim(d).dict.len())
            .map(|_| Count::default())
            .collect()
    };
    let (mut sources, mut mediums, mut campaigns) = (per_code(2), per_code(3), per_code(4));
    let mut campaign_resolved: FxHashSet<u32> = FxHashSet::default();
    let mut unassigned: FxHashMap<usize, Count> = FxHashMap::default();
    let mut asset_sessions = vec![0u64; registry.assets.len()];
    let mut pairs: FxHashMap<(usize, u32), PairAcc> = FxHashMap::default();
    let mut error_landings: FxHashMap<(u32, u32), ErrorAcc> = FxHashMap::default();
    // By the codes of (content, campaign, path): the asset resolved, and the name an error
    // landing reports (the registered id, else the key's value).
    let mut assets_by_codes: FxHashMap<[u32; 3], (Option<usize>, u32)> = FxHashMap::default();
    let mut asset_names = Names::default();
    let mut landing_of_code: FxHashMap<u32, u32> = FxHashMap::default();
    let mut landings_named = Names::default();
    let mut match_cache: FxHashMap<(u8, u32, u32), (bool, bool)> = FxHashMap::default();
    let mut sample_names: HashSet<Option<String>> = HashSet::new();

    for r in rows.persons() {
        let person = rows.person[r.start];
        // The person's conversions, for "converted within the window".
        let mut conversions: Vec<Millis> = Vec::new();
        let mut is_error = Vec::with_capacity(r.len());
        for i in r.clone() {
            let (err, conv) = *match_cache
                .entry((rows.kind[i], rows.dim(0).codes[i], rows.dim(1).codes[i]))
                .or_insert_with(|| {
                    let (k, n, p) = (rows.kind[i], rows.dim(0).get(i), rows.dim(1).get(i));
                    (
                        errors.matches_event(k, n, p),
                        conversion
                            .as_ref()
                            .is_some_and(|c| c.matches_event(k, n, p)),
                    )
                });
            is_error.push(err);
            if conv {
                conversions.push(rows.ts[i]);
            }
        }
        // Sessions over the visit rows.
        let visits: Vec<usize> = r
            .clone()
            .filter(|&i| is_visit(rows.kind[i], rows.dim(1).codes[i] != NO_VALUE))
            .collect();
        let mut s = 0;
        while s < visits.len() {
            let mut e = s + 1;
            while e < visits.len() && rows.ts[visits[e]] - rows.ts[visits[e - 1]] <= timeout {
                e += 1;
            }
            let a = visits[s];
            let last = visits[e - 1];
            let views = visits[s..e]
                .iter()
                .filter(|&&i| rows.kind[i] == page || rows.kind[i] == screen)
                .count();
            let engaged = rows.ts[last] - rows.ts[a] > ENGAGED_SECONDS || views >= 2;
            let start_ts = rows.ts[a];
            let converted = conversions
                .iter()
                .any(|&t| t >= start_ts && t < start_ts + window);
            all.add(person);

            let get = |d: usize| rows.dim(d).get(a).filter(|v| !v.is_empty());
            for (d, counts) in [(2, &mut sources), (3, &mut mediums), (4, &mut campaigns)] {
                if get(d).is_some() {
                    counts[rows.dim(d).codes[a] as usize].add(person);
                }
            }
            let t = attributor.attribute(&rows, a);
            if attributor.touch(t).channel == unassigned_name {
                unassigned.entry(t).or_default().add(person);
            }
            let codes = [5, 4, 1].map(|d| rows.dim(d).codes[a]);
            let (resolved, asset_name) = *assets_by_codes.entry(codes).or_insert_with(|| {
                let key = asset_key(get(5), get(4), get(1));
                let resolved = index.resolve(&key);
                let name = match resolved {
                    Some(i) => asset_names.id(&registry.assets[i].id),
                    None => asset_names.id(&key.value),
                };
                (resolved, name)
            });
            if let Some(i) = resolved {
                asset_sessions[i] += 1;
                if get(4).is_some() {
                    campaign_resolved.insert(rows.dim(4).codes[a]);
                }
            }
            let landing = *landing_of_code
                .entry(rows.dim(1).codes[a])
                .or_insert_with(|| landings_named.id(rows.dim(1).get(a).unwrap_or("(not set)")));
            if let Some(i) = resolved {
                let acc = pairs.entry((i, landing)).or_default();
                acc.count.add(person);
                acc.engaged += u64::from(engaged);
                acc.converted += u64::from(converted);
                if acc.samples.len() < LANDING_SAMPLES_PER_PATH
                    && (rows.kind[a] == page || rows.kind[a] == screen)
                {
                    acc.samples.push(rows.seq[a]);
                    sample_names.insert(rows.dim(0).get(a).map(str::to_string));
                }
            }
            // A tracked link: the landing carries UTM tags or a click id.
            let tracked = [2, 3, 4, 5, 8].iter().any(|&d| get(d).is_some());
            if tracked {
                let is_view = |i: usize| rows.kind[i] == page || rows.kind[i] == screen;
                // A click the server recorded (`GET /r/{token}`: an `Email Link Clicked`
                // whose page is the destination) starts the session before the browser's
                // page view of the destination: the landing is the session's first page
                // view, and errors count from the click to the page view after it.
                let landing_view = if is_view(a) {
                    a
                } else {
                    visits[s..e]
                        .iter()
                        .copied()
                        .find(|&i| is_view(i))
                        .unwrap_or(a)
                };
                let next_view = (landing_view + 1..r.end)
                    .find(|&i| is_view(i))
                    .unwrap_or(r.end);
                let errored = (a..next_view).any(|i| is_error[i - r.start]);
                let acc = error_landings.entry((asset_name, landing)).or_default();
                acc.count.add(person);
                acc.errors += u64::from(errored);
            }
            s = e;
        }
    }

    // The strings behind the codes, names and touches counted above.
    let by_value = |d: usize, counts: Vec<Count>| -> HashMap<String, Count> {
        let dict = &rows.dim(d).dict;
        let mut out: HashMap<String, Count> = HashMap::new();
        for (code, c) in counts.into_iter().enumerate() {
            if c.sessions > 0 {
                out.entry(dict[code].clone()).or_default().merge(c);
            }
        }
        out
    };
    let (sources, mediums, campaigns) = (
        by_value(2, sources),
        by_value(3, mediums),
        by_value(4, campaigns),
    );
    let campaign_resolved: HashSet<&str> = campaign_resolved
        .iter()
        .map(|&c| rows.dim(4).dict[c as usize].as_str())
        .collect();
    let mut unassigned_by_pair: HashMap<String, Count> = HashMap::new();
    for (t, c) in unassigned {
        let touch = attributor.touch(t);
        unassigned_by_pair
            .entry(format!("{} / {}", touch.source, touch.medium))
            .or_default()
            .merge(c);
    }
    let unassigned = unassigned_by_pair;
    let landing_name = |l: u32| landings_named.name(l).to_string();
    let pairs: HashMap<(usize, String), PairAcc> = pairs
        .into_iter()
        .map(|((i, l), acc)| ((i, landing_name(l)), acc))
        .collect();
    let error_landings: HashMap<(String, String), ErrorAcc> = error_landings
        .into_iter()
        .map(|((n, l), acc)| ((asset_names.name(n).to_string(), landing_name(l)), acc))
        .collect();

    let mut findings: Vec<Finding> = Vec::new();
    let spell = |counts: &HashMap<String, Count>, aliases: bool| -> Vec<Spelling> {
        let mut groups: BTreeMap<String, Vec<(&String, &Count)>> = BTreeMap::new();
        for (v, c) in counts {
            groups
                .entry(normalize_spelling(v, aliases))
                .or_default()
                .push((v, c));
        }
        let mut out: Vec<Spelling> = groups
            .into_values()
            .filter(|g| g.len() > 1)
            .map(|mut g| {
                g.sort_by(|a, b| b.1.sessions.cmp(&a.1.sessions).then(a.0.cmp(b.0)));
                let others: Vec<&(&String, &Count)> = g[1..].iter().collect();
                let persons: HashSet<u32> = others
                    .iter()
                    .flat_map(|(_, c)| c.persons.iter().copied())
                    .collect();
                Spelling {
                    canonical: g[0].0.clone(),
                    variants: g
                        .iter()
                        .map(|(v, c)| Variant {
                            value: (*v).clone(),
                            sessions: c.sessions,
                            persons: c.persons.len() as u64,
                        })
                        .collect(),
                    affected_sessions: others.iter().map(|(_, c)| c.sessions).sum(),
                    affected_persons: persons.len() as u64,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            b.affected_sessions
                .cmp(&a.affected_sessions)
                .then(a.canonical.cmp(&b.canonical))
        });
        out
    };
    let source_spellings = spell(&sources, true);
    let medium_spellings = spell(&mediums, false);
    let campaign_spellings = spell(&campaigns, false);
    for (kind, what, list) in [
        ("source_spelling", "utm_source", &source_spellings),
        ("medium_spelling", "utm_medium", &medium_spellings),
        ("campaign_spelling", "utm_campaign", &campaign_spellings),
    ] {
        for sp in list {
            findings.push(Finding {
                kind,
                severity: "warning",
                subject: sp.canonical.clone(),
                detail: format!(
                    "{what} is spelled {}: reports split one {what} into {}",
                    sp.variants
                        .iter()
                        .map(|v| format!("{:?} ({} sessions)", v.value, v.sessions))
                        .collect::<Vec<_>>()
                        .join(", "),
                    sp.variants.len()
                ),
                affected_sessions: sp.affected_sessions,
                affected_persons: sp.affected_persons,
            });
        }
    }
    let traffic = |m: &HashMap<String, Count>, keep: &dyn Fn(&str) -> bool| -> Vec<Traffic> {
        let mut v: Vec<Traffic> = m
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, c)| Traffic {
                key: k.clone(),
                sessions: c.sessions,
                persons: c.persons.len() as u64,
            })
            .collect();
        v.sort_by(|a, b| b.sessions.cmp(&a.sessions).then(a.key.cmp(&b.key)));
        v
    };
    let unassigned_list = traffic(&unassigned, &|_| true);
    for t in &unassigned_list {
        findings.push(Finding {
            kind: "unassigned_traffic",
            severity: "warning",
            subject: t.key.clone(),
            detail: format!(
                "no channel rule matches source / medium {:?}: its sessions fall into {unassigned_name}; fix the tags or add a rule to channels.toml",
                t.key
            ),
            affected_sessions: t.sessions,
            affected_persons: t.persons,
        });
    }
    let covered: HashSet<&str> = registry
        .assets
        .iter()
        .flat_map(|a| [Some(a.id.as_str()), a.campaign.as_deref()])
        .flatten()
        .collect();
    let without_asset = traffic(&campaigns, &|c| {
        !covered.contains(c) && !campaign_resolved.contains(c)
    });
    for t in &without_asset {
        findings.push(Finding {
            kind: "campaign_without_asset",
            severity: "warning",
            subject: t.key.clone(),
            detail: format!(
                "utm_campaign {:?} has traffic but no registered asset: register its ads, emails or pages (throughline assets import)",
                t.key
            ),
            affected_sessions: t.sessions,
            affected_persons: t.persons,
        });
    }
    let idle: Vec<String> = registry
        .assets
        .iter()
        .zip(&asset_sessions)
        .filter(|(_, &n)| n == 0)
        .map(|(a, _)| a.id.clone())
        .collect();
    for id in &idle {
        findings.push(Finding {
            kind: "asset_without_traffic",
            severity: "info",
            subject: id.clone(),
            detail: format!(
                "registered asset {id:?} received no session in range: it is not running, or its links are not tagged as the registry expects"
            ),
            affected_sessions: 0,
            affected_persons: 0,
        });
    }

    let landings = Landings {
        pairs: &pairs,
        names: &sample_names,
        with_conversion: conversion.is_some(),
    };
    let message_match = message_match(snap, registry, &landings, similarity_min)?;
    for p in message_match.pairs.iter().filter(|p| !p.matched) {
        findings.push(Finding {
            kind: "message_mismatch",
            severity: "warning",
            subject: format!("{} -> {}", p.asset, p.landing_page),
            detail: format!(
                "the {} {:?} says {:?}; its landing page {} says {:?} (similarity {:.2}, below {similarity_min})",
                p.kind, p.asset, p.asset_text, p.landing_page, p.landing_text, p.similarity
            ),
            affected_sessions: p.sessions,
            affected_persons: p.persons,
        });
    }

    let mut error_list: Vec<ErrorLanding> = error_landings
        .into_iter()
        .filter(|(_, a)| a.errors > 0)
        .map(|((asset, landing), a)| ErrorLanding {
            asset,
            landing_page: landing,
            sessions: a.count.sessions,
            error_sessions: a.errors,
            persons: a.count.persons.len() as u64,
            error_rate: a.errors as f64 / a.count.sessions as f64,
        })
        .collect();
    error_list.sort_by(|a, b| {
        b.error_sessions
            .cmp(&a.error_sessions)
            .then(a.asset.cmp(&b.asset))
            .then(a.landing_page.cmp(&b.landing_page))
    });
    for e in &error_list {
        findings.push(Finding {
            kind: "error_landing",
            severity: "error",
            subject: format!("{} -> {}", e.asset, e.landing_page),
            detail: format!(
                "{} of {} sessions from the tracked link {:?} landed on {} and hit an error event before any other page",
                e.error_sessions, e.sessions, e.asset, e.landing_page
            ),
            affected_sessions: e.error_sessions,
            affected_persons: e.persons,
        });
    }

    // At most FINDINGS_PER_KIND_MAX per kind; counts keep the whole truth.
    let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    findings.retain(|f| {
        let n = by_kind.entry(f.kind).or_default();
        *n += 1;
        *n as usize <= FINDINGS_PER_KIND_MAX
    });
    Ok(AuditResponse {
        sessions: all.sessions,
        persons: all.persons.len() as u64,
        registered_assets: registry.assets.len() as u64,
        findings,
        findings_by_kind: by_kind,
        utm: UtmHygiene {
            sources: source_spellings,
            mediums: medium_spellings,
            campaigns: campaign_spellings,
            unassigned: unassigned_list,
            campaigns_without_asset: without_asset,
            assets_without_traffic: idle,
        },
        message_match,
        error_landings: error_list,
        methods: BTreeMap::from([
            ("spelling", "utm values equal after lowercasing, keeping letters and digits only and expanding common source abbreviations (fb, ig, li, yt, tt, tw)"),
            ("unassigned", "sessions whose landing no channel rule of the project matches"),
            ("campaign_without_asset", "utm_campaign values with sessions, no registry entry with that campaign or id, and no session of them resolved to an entry"),
            ("similarity", "TF-IDF cosine (sublinear tf, smoothed idf over all asset and landing texts) of the asset's headline and copy against the landing page's title, text properties, name and path words"),
            ("error_landing", "sessions whose landing carries UTM tags or a click id (or that start with a tracked-link click recorded by /r/{token}, landing on the session's first page view) and whose landing page is followed by an error event before the next page view"),
        ]),
    })
}

fn message_match(
    snap: &Source,
    registry: &Registry,
    landings: &Landings,
    similarity_min: f64,
) -> Result<MessageMatch, QueryError> {
    let pairs = landings.pairs;
    let asset_text = |i: usize| -> Option<String> {
        let a = &registry.assets[i];
        let parts: Vec<&str> = [a.headline.as_deref(), a.copy.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        (!parts.is_empty()).then(|| parts.join(" — "))
    };
    let mut without_copy: Vec<String> = Vec::new();
    let mut wanted: HashMap<u32, String> = HashMap::new();
    let mut paths: HashSet<&str> = HashSet::new();
    for ((i, path), acc) in pairs {
        if asset_text(*i).is_none() {
            let kind = registry.assets[*i].kind.as_str();
            if matches!(
                kind,
                "ad" | "creative" | "email" | "display" | "search" | "social" | "retargeting"
            ) {
                without_copy.push(registry.assets[*i].id.clone());
            }
            continue;
        }
        if paths.len() >= LANDING_PATHS_MAX && !paths.contains(path.as_str()) {
            continue;
        }
        paths.insert(path);
        for &seq in &acc.samples {
            wanted.insert(seq, path.clone());
        }
    }
    without_copy.sort();
    without_copy.dedup();
    // The text of each landing path, from sampled page views.
    let mut landing_texts: HashMap<String, Vec<String>> = HashMap::new();
    if !wanted.is_empty() {
        let landing = |name: Option<&str>| landings.names.contains(&name.map(str::to_string));
        snap.for_each_event(
            &EventFilter {
                name: Some(&landing),
                ..Default::default()
            },
            |seq, _, e| {
                let Some(path) = wanted.get(&seq) else {
                    return Ok(());
                };
                let texts = landing_texts.entry(path.clone()).or_default();
                let mut add = |t: &str| {
                    let t = t.trim();
                    if !t.is_empty() && texts.len() < 8 && !texts.iter().any(|x| x == t) {
                        texts.push(t.to_string());
                    }
                };
                for k in PAGE_TEXT_PROPERTIES {
                    if let Some(v) = e.properties.get(k).and_then(|v| v.as_str()) {
                        add(v);
                    }
                }
                if let Some(t) = e
                    .context
                    .get("page")
                    .and_then(|p| p.get("title"))
                    .and_then(|v| v.as_str())
                {
                    add(t);
                }
                if let Some(n) = &e.event {
                    add(n);
                }
                Ok(())
            },
        )?;
    }
    let page_text = |path: &str| -> String {
        let slug: String = path
            .split(['/', '-', '_', '.'])
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let mut parts: Vec<String> = landing_texts.get(path).cloned().unwrap_or_default();
        parts.push(slug);
        parts.join(" — ")
    };
    let mut corpus = Corpus::new();
    let mut docs: HashSet<String> = HashSet::new();
    for (i, path) in pairs.keys() {
        if let Some(t) = asset_text(*i) {
            if docs.insert(format!("a{i}")) {
                corpus.add(&t);
            }
            if docs.insert(format!("p{path}")) {
                corpus.add(&page_text(path));
            }
        }
    }
    let mut out: Vec<(Pair, &PairAcc)> = Vec::new();
    for ((i, path), acc) in pairs {
        let Some(text) = asset_text(*i) else { continue };
        let landing_text = page_text(path);
        let (va, vp) = (corpus.vector(&text), corpus.vector(&landing_text));
        let similarity = va.cosine(&vp);
        let n = acc.count.sessions;
        out.push((
            Pair {
                asset: registry.assets[*i].id.clone(),
                kind: registry.assets[*i].kind.clone(),
                landing_page: path.clone(),
                landing_text,
                asset_text: text,
                similarity,
                shared_terms: va.shared_terms(&vp, 5),
                matched: similarity >= similarity_min,
                sessions: n,
                persons: acc.count.persons.len() as u64,
                bounce_rate: (n > 0).then(|| 1.0 - acc.engaged as f64 / n as f64),
                conversion_rate: (landings.with_conversion && n > 0)
                    .then(|| acc.converted as f64 / n as f64),
            },
            acc,
        ));
    }
    out.sort_by(|(a, _), (b, _)| {
        a.similarity
            .total_cmp(&b.similarity)
            .then(a.asset.cmp(&b.asset))
            .then(a.landing_page.cmp(&b.landing_page))
    });
    let totals = |matched: bool| {
        let ps: Vec<&(Pair, &PairAcc)> = out.iter().filter(|(p, _)| p.matched == matched).collect();
        let sessions: u64 = ps.iter().map(|(p, _)| p.sessions).sum();
        let engaged: u64 = ps.iter().map(|(_, a)| a.engaged).sum();
        let converted: u64 = ps.iter().map(|(_, a)| a.converted).sum();
        PairTotals {
            pairs: ps.len() as u64,
            sessions,
            bounce_rate: (sessions > 0).then(|| 1.0 - engaged as f64 / sessions as f64),
            conversion_rate: (landings.with_conversion && sessions > 0)
                .then(|| converted as f64 / sessions as f64),
        }
    };
    let (matched, mismatched) = (totals(true), totals(false));
    Ok(MessageMatch {
        similarity_min,
        pairs: out.into_iter().map(|(p, _)| p).collect(),
        matched,
        mismatched,
        assets_without_copy: without_copy,
    })
}
