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

use crate::assets::RegistryIndex;
use crate::assets::{asset_key, Registry};
use crate::intern::Names;
use crate::rows::{load, Load, Scan};
use crate::sessions::{is_visit, Attributor, CodePack, TOUCH_DIMS, VISIT_CODES};
use crate::source::Source;
use crate::spec::{parse_duration, parse_time_bound, MaskTable, StepMatcher};
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

/// Sessions and distinct persons of one value. A part sees each person whole, one after
/// another, so distinct persons are counted by the last one seen; only a value whose
/// persons are united with another's (a spelling of a value spelled several ways) keeps
/// the set.
#[derive(Default)]
struct Count {
    sessions: u64,
    persons: u64,
    last: Option<u32>,
    set: Option<FxHashSet<u32>>,
}

impl Count {
    fn with_set() -> Count {
        Count {
            set: Some(FxHashSet::default()),
            ..Count::default()
        }
    }

    fn add(&mut self, person: u32) {
        self.sessions += 1;
        if self.last != Some(person) {
            self.last = Some(person);
            self.persons += 1;
            if let Some(set) = &mut self.set {
                set.insert(person);
            }
        }
    }

    /// `other` counts other persons: a later part's, or the same part's under a value
    /// that names another string.
    fn merge(&mut self, other: Count) {
        self.sessions += other.sessions;
        self.persons += other.persons;
        match (&mut self.set, other.set) {
            (Some(a), Some(b)) => a.extend(b),
            (None, Some(b)) => self.set = Some(b),
            _ => {}
        }
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

impl PairAcc {
    /// Persons are in order across parts, so the first samples stay the first.
    fn merge(&mut self, other: PairAcc) {
        self.count.merge(other.count);
        self.engaged += other.engaged;
        self.converted += other.converted;
        let room = LANDING_SAMPLES_PER_PATH.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
    }
}

/// What `message_match` needs from the scan.
struct Landings<'a> {
    pairs: &'a HashMap<(usize, String), PairAcc>,
    with_conversion: bool,
}

#[derive(Default)]
struct ErrorAcc {
    count: Count,
    errors: u64,
}

impl ErrorAcc {
    fn merge(&mut self, other: ErrorAcc) {
        self.count.merge(other.count);
        self.errors += other.errors;
    }
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
    run_with(snap, rules, registry, req, true)
}

/// [`run`], with `scan: false` over the table of every visit (what the scan must equal).
fn run_with(
    snap: &Source,
    rules: &Rules,
    registry: &Registry,
    req: &AuditRequest,
    scan: bool,
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
    let index = registry.index();
    let unassigned_name = rules.unassigned().to_string();
    let settings = Settings {
        timeout,
        window,
        registry,
        index: &index,
        unassigned: &unassigned_name,
    };
    let pass = Pass {
        snap,
        rules,
        range: (from, to),
        only: only.as_ref(),
        settings: &settings,
        errors: &errors,
        conversion: conversion.as_ref(),
    };
    let scanned = match scan {
        true => pass.scan()?,
        false => None,
    };
    let Tally {
        all,
        sources,
        mediums,
        campaigns,
        campaign_resolved,
        unassigned,
        asset_sessions,
        pairs,
        error_landings,
    } = match scanned {
        Some(tally) => tally,
        None => pass.loaded()?,
    };
    let campaign_resolved: HashSet<&str> = campaign_resolved.iter().map(String::as_str).collect();
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
                    .flat_map(|(_, c)| c.set.iter().flatten().copied())
                    .collect();
                Spelling {
                    canonical: g[0].0.clone(),
                    variants: g
                        .iter()
                        .map(|(v, c)| Variant {
                            value: (*v).clone(),
                            sessions: c.sessions,
                            persons: c.persons,
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
                persons: c.persons,
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
            persons: a.count.persons,
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
        persons: all.persons,
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

/// What a row is to the audit, as [`Part::person`] reads it.
const VISIT: u8 = 1;
const VIEW: u8 = 2;
const ERROR: u8 = 4;
const CONVERSION: u8 = 8;
/// Where a scan's tag keeps the row's flags: above its codes.
const FLAGS_SHIFT: u32 = 60;

fn flags_of(visit: bool, view: bool, error: bool, conversion: bool) -> u8 {
    [
        (visit, VISIT),
        (view, VIEW),
        (error, ERROR),
        (conversion, CONVERSION),
    ]
    .into_iter()
    .filter(|&(on, _)| on)
    .fold(0, |f, (_, flag)| f | flag)
}

/// What the audit reads besides a person's rows.
struct Settings<'q> {
    timeout: Millis,
    window: Millis,
    registry: &'q Registry,
    index: &'q RegistryIndex,
    /// The channel of sessions no rule matches.
    unassigned: &'q str,
}

/// The dimensions of a session's start the audit reads: its landing path, then the
/// touch's in [`crate::sessions::TOUCH_KEY_DIMS`] order (source, medium, campaign,
/// content, referrer host, click id).
const START_DIMS: [usize; 7] = [1, 2, 3, 4, 5, 7, 8];
/// Positions in [`START_DIMS`].
const PATH: usize = 0;
const SOURCE: usize = 1;
const MEDIUM: usize = 2;
const CAMPAIGN: usize = 3;
const CONTENT: usize = 4;
const CLICK_ID: usize = 6;

/// The dictionaries a part's codes index, in [`START_DIMS`] order.
type Dicts<'d> = [&'d [String]; 7];

/// One part of the persons' audit (a scan thread's range, or every person of the table).
/// Sessions are many and their distinct keys few: a part counts by dictionary code, touch
/// or interned name, and [`Tally::of`] puts the strings together once.
struct Part<'r> {
    attributor: Attributor<'r>,
    all: Count,
    /// By the code of the source, the medium and the campaign.
    spellings: [Vec<Count>; 3],
    campaign_resolved: FxHashSet<u32>,
    /// By `source / medium` (of `pair_names`).
    unassigned: FxHashMap<u32, Count>,
    /// The `source / medium` of each unassigned touch (an index of the attributor).
    pair_of_touch: FxHashMap<usize, u32>,
    pair_names: Names,
    asset_sessions: Vec<u64>,
    /// By (registry entry, landing path of `landings`).
    pairs: FxHashMap<(usize, u32), PairAcc>,
    /// By (asset name, landing path of `landings`).
    error_landings: FxHashMap<(u32, u32), ErrorAcc>,
    /// The landing path of each path code, `(not set)` for none.
    landing_of_code: FxHashMap<u32, u32>,
    landings: Names,
    /// By the codes of (content, campaign, path): the asset resolved, and the name an
    /// error landing reports (the registered id, else the key's value).
    assets_by_codes: FxHashMap<[u32; 3], (Option<usize>, u32)>,
    asset_names: Names,
    // Per person, reused: each row's flags, the conversions' times, the visit rows.
    flags: Vec<u8>,
    conversions: Vec<Millis>,
    visits: Vec<usize>,
}

impl<'r> Part<'r> {
    fn new(rules: &'r Rules, assets: usize, dicts: &Dicts) -> Part<'r> {
        // A value keeps its persons' set when the dictionary spells it another way too.
        let counts = |j: usize, aliases: bool| -> Vec<Count> {
            let spelled: Vec<String> = dicts[j]
                .iter()
                .map(|v| normalize_spelling(v, aliases))
                .collect();
            let mut ways: HashMap<&str, usize> = HashMap::new();
            for n in &spelled {
                *ways.entry(n).or_default() += 1;
            }
            spelled
                .iter()
                .map(|n| match ways[n.as_str()] > 1 {
                    true => Count::with_set(),
                    false => Count::default(),
                })
                .collect()
        };
        Part {
            attributor: Attributor::new(rules),
            all: Count::default(),
            spellings: [
                counts(SOURCE, true),
                counts(MEDIUM, false),
                counts(CAMPAIGN, false),
            ],
            campaign_resolved: FxHashSet::default(),
            unassigned: FxHashMap::default(),
            pair_of_touch: FxHashMap::default(),
            pair_names: Names::default(),
            asset_sessions: vec![0; assets],
            pairs: FxHashMap::default(),
            error_landings: FxHashMap::default(),
            landing_of_code: FxHashMap::default(),
            landings: Names::default(),
            assets_by_codes: FxHashMap::default(),
            asset_names: Names::default(),
            flags: Vec::new(),
            conversions: Vec::new(),
            visits: Vec::new(),
        }
    }

    /// One person's sessions from their rows in (time, arrival) order: `flags(i)` says
    /// what row `i` is ([`VISIT`], [`VIEW`], [`ERROR`], [`CONVERSION`]), `codes(i)` its
    /// codes in [`START_DIMS`] order (read at session starts only).
    #[allow(clippy::too_many_arguments)]
    fn person(
        &mut self,
        s: &Settings,
        dicts: &Dicts,
        person: u32,
        ts: &[Millis],
        seq: impl Fn(usize) -> u32,
        flags: impl Fn(usize) -> u8,
        codes: impl Fn(usize) -> [u32; 7],
    ) {
        let Part {
            attributor,
            all,
            spellings,
            campaign_resolved,
            unassigned,
            pair_of_touch,
            pair_names,
            asset_sessions,
            pairs,
            error_landings,
            landing_of_code,
            landings,
            assets_by_codes,
            asset_names,
            flags: row_flags,
            conversions,
            visits,
        } = self;
        let n = ts.len();
        row_flags.clear();
        row_flags.extend((0..n).map(flags));
        let row_flags = &*row_flags;
        conversions.clear();
        conversions.extend(
            (0..n)
                .filter(|&i| row_flags[i] & CONVERSION != 0)
                .map(|i| ts[i]),
        );
        visits.clear();
        visits.extend((0..n).filter(|&i| row_flags[i] & VISIT != 0));
        let is_view = |i: usize| row_flags[i] & VIEW != 0;
        let touch_dicts: [&[String]; 6] = std::array::from_fn(|k| dicts[k + 1]);
        let mut a0 = 0;
        while a0 < visits.len() {
            let mut e = a0 + 1;
            while e < visits.len() && ts[visits[e]] - ts[visits[e - 1]] <= s.timeout {
                e += 1;
            }
            let a = visits[a0];
            let last = visits[e - 1];
            let views = visits[a0..e].iter().filter(|&&i| is_view(i)).count();
            let engaged = ts[last] - ts[a] > ENGAGED_SECONDS || views >= 2;
            let start = ts[a];
            let converted = conversions
                .iter()
                .any(|&t| t >= start && t < start + s.window);
            all.add(person);

            let c = codes(a);
            let get = |j: usize| {
                (c[j] != NO_VALUE)
                    .then(|| dicts[j][c[j] as usize].as_str())
                    .filter(|v| !v.is_empty())
            };
            for (counts, j) in spellings.iter_mut().zip([SOURCE, MEDIUM, CAMPAIGN]) {
                if get(j).is_some() {
                    counts[c[j] as usize].add(person);
                }
            }
            let t = attributor.attribute_dicts(&c[SOURCE..], &touch_dicts);
            if attributor.touch(t).channel == s.unassigned {
                let pair = *pair_of_touch.entry(t).or_insert_with(|| {
                    let touch = attributor.touch(t);
                    pair_names.id(&format!("{} / {}", touch.source, touch.medium))
                });
                unassigned.entry(pair).or_default().add(person);
            }
            let (resolved, asset_name) = *assets_by_codes
                .entry([c[CONTENT], c[CAMPAIGN], c[PATH]])
                .or_insert_with(|| {
                    let key = asset_key(get(CONTENT), get(CAMPAIGN), get(PATH));
                    let resolved = s.index.resolve(&key);
                    let name = match resolved {
                        Some(i) => asset_names.id(&s.registry.assets[i].id),
                        None => asset_names.id(&key.value),
                    };
                    (resolved, name)
                });
            let landing = *landing_of_code.entry(c[PATH]).or_insert_with(|| {
                landings.id(match c[PATH] {
                    NO_VALUE => "(not set)",
                    p => &dicts[PATH][p as usize],
                })
            });
            if let Some(i) = resolved {
                asset_sessions[i] += 1;
                if get(CAMPAIGN).is_some() {
                    campaign_resolved.insert(c[CAMPAIGN]);
                }
                let acc = pairs.entry((i, landing)).or_default();
                acc.count.add(person);
                acc.engaged += u64::from(engaged);
                acc.converted += u64::from(converted);
                if acc.samples.len() < LANDING_SAMPLES_PER_PATH && is_view(a) {
                    acc.samples.push(seq(a));
                }
            }
            // A tracked link: the landing carries UTM tags or a click id.
            if [SOURCE, MEDIUM, CAMPAIGN, CONTENT, CLICK_ID]
                .iter()
                .any(|&j| get(j).is_some())
            {
                // A click the server recorded (`GET /r/{token}`: an `Email Link Clicked`
                // whose page is the destination) starts the session before the browser's
                // page view of the destination: the landing is the session's first page
                // view, and errors count from the click to the page view after it.
                let landing_view = match is_view(a) {
                    true => a,
                    false => visits[a0..e]
                        .iter()
                        .copied()
                        .find(|&i| is_view(i))
                        .unwrap_or(a),
                };
                let next_view = (landing_view + 1..n).find(|&i| is_view(i)).unwrap_or(n);
                let errored = (a..next_view).any(|i| row_flags[i] & ERROR != 0);
                let acc = error_landings.entry((asset_name, landing)).or_default();
                acc.count.add(person);
                acc.errors += u64::from(errored);
            }
            a0 = e;
        }
    }
}

/// The parts' counts merged and named by their strings.
struct Tally {
    all: Count,
    sources: HashMap<String, Count>,
    mediums: HashMap<String, Count>,
    campaigns: HashMap<String, Count>,
    campaign_resolved: HashSet<String>,
    /// Unassigned sessions by `source / medium`.
    unassigned: HashMap<String, Count>,
    asset_sessions: Vec<u64>,
    pairs: HashMap<(usize, String), PairAcc>,
    /// By (asset name, landing path).
    error_landings: HashMap<(String, String), ErrorAcc>,
}

impl Tally {
    /// Parts in person order, their codes indexing `dicts`.
    fn of(parts: Vec<Part>, dicts: &Dicts, assets: usize) -> Tally {
        let mut t = Tally {
            all: Count::default(),
            sources: HashMap::new(),
            mediums: HashMap::new(),
            campaigns: HashMap::new(),
            campaign_resolved: HashSet::new(),
            unassigned: HashMap::new(),
            asset_sessions: vec![0; assets],
            pairs: HashMap::new(),
            error_landings: HashMap::new(),
        };
        for part in parts {
            t.all.merge(part.all);
            let [sources, mediums, campaigns] = part.spellings;
            for (out, counts, j) in [
                (&mut t.sources, sources, SOURCE),
                (&mut t.mediums, mediums, MEDIUM),
                (&mut t.campaigns, campaigns, CAMPAIGN),
            ] {
                for (code, c) in counts.into_iter().enumerate() {
                    if c.sessions > 0 {
                        out.entry(dicts[j][code].clone()).or_default().merge(c);
                    }
                }
            }
            t.campaign_resolved.extend(
                part.campaign_resolved
                    .iter()
                    .map(|&c| dicts[CAMPAIGN][c as usize].clone()),
            );
            for (pair, c) in part.unassigned {
                let pair = part.pair_names.name(pair).to_string();
                t.unassigned.entry(pair).or_default().merge(c);
            }
            for (sum, n) in t.asset_sessions.iter_mut().zip(&part.asset_sessions) {
                *sum += n;
            }
            for ((i, l), acc) in part.pairs {
                let landing = part.landings.name(l).to_string();
                t.pairs.entry((i, landing)).or_default().merge(acc);
            }
            for ((name, l), acc) in part.error_landings {
                let name = part.asset_names.name(name).to_string();
                t.error_landings
                    .entry((name, part.landings.name(l).to_string()))
                    .or_default()
                    .merge(acc);
            }
        }
        t
    }
}

/// The pass from events to the audit's counts, as a scan or over the table.
struct Pass<'q, 's, 'a> {
    snap: &'q Source<'s, 'a>,
    rules: &'q Rules,
    range: (Option<Millis>, Option<Millis>),
    only: Option<&'q HashSet<u32>>,
    settings: &'q Settings<'q>,
    errors: &'q StepMatcher,
    conversion: Option<&'q StepMatcher>,
}

impl Pass<'_, '_, '_> {
    /// The counts over the table of every visit, error and conversion, in one part.
    fn loaded(&self) -> Result<Tally, QueryError> {
        let (errors, conversion) = (self.errors, self.conversion);
        let rows = load(
            self.snap,
            &Load {
                from: self.range.0,
                to: self.range.1,
                persons: self.only,
                dims: TOUCH_DIMS.to_vec(),
                keep: Some(Box::new(|kind, v| {
                    is_visit(kind, v[1].is_some())
                        || errors.matches_event(kind, v[0], v[1])
                        || conversion.is_some_and(|c| c.matches_event(kind, v[0], v[1]))
                })),
                // Decided once per (type, name, path), not per row.
                keep_reads: Some(vec![0, 1]),
            },
        )?;
        let (names, paths) = (rows.dim(0), rows.dim(1));
        let (page, screen) = (EventType::Page.code(), EventType::Screen.code());
        let mut cache: FxHashMap<(u8, u32, u32), u8> = FxHashMap::default();
        let flags: Vec<u8> = (0..rows.len())
            .map(|i| {
                let kind = rows.kind[i];
                *cache
                    .entry((kind, names.codes[i], paths.codes[i]))
                    .or_insert_with(|| {
                        let (n, p) = (names.get(i), paths.get(i));
                        flags_of(
                            is_visit(kind, p.is_some()),
                            kind == page || kind == screen,
                            errors.matches_event(kind, n, p),
                            conversion.is_some_and(|c| c.matches_event(kind, n, p)),
                        )
                    })
            })
            .collect();
        let dicts: Dicts = START_DIMS.map(|d| rows.dim(d).dict.as_slice());
        let assets = self.settings.registry.assets.len();
        let mut part = Part::new(self.rules, assets, &dicts);
        for r in rows.persons() {
            let base = r.start;
            part.person(
                self.settings,
                &dicts,
                rows.person[base],
                &rows.ts[r],
                |i| rows.seq[base + i],
                |i| flags[base + i],
                |i| START_DIMS.map(|d| rows.dim(d).codes[base + i]),
            );
        }
        Ok(Tally::of(vec![part], &dicts, assets))
    }

    /// The counts as one streaming scan, persons in parallel, one part per thread, where
    /// the tag holds what a row is (its flags, from bit [`FLAGS_SHIFT`]) and, for a visit,
    /// its codes ([`CodePack`]). `None` when they do not fit.
    fn scan(&self) -> Result<Option<Tally>, QueryError> {
        let scan = Scan::new(self.snap, self.range.0, self.range.1, &TOUCH_DIMS)?;
        // The scan reads the name too (errors and conversions match it); the packed codes
        // are `START_DIMS`'.
        let Some(pack) =
            CodePack::new(&VISIT_CODES, |j| scan.dict(j).len()).and_then(|p| p.below(FLAGS_SHIFT))
        else {
            return Ok(None);
        };
        let codes_mask = pack.mask();
        let (names, paths) = (scan.dict(0), Some(scan.dict(1)));
        let errors = MaskTable::new(&[(1, self.errors)], names, paths);
        let converts = self
            .conversion
            .map(|c| MaskTable::new(&[(1, c)], names, paths));
        let (page, screen) = (EventType::Page.code(), EventType::Screen.code());
        let tag = |kind: u8, codes: &[u32]| -> u64 {
            let visit = is_visit(kind, codes[1] != NO_VALUE);
            let error = errors.of(kind, codes) != 0;
            let conversion = converts.as_ref().is_some_and(|m| m.of(kind, codes) != 0);
            if !(visit || error || conversion) {
                return 0;
            }
            let flags = u64::from(flags_of(
                visit,
                kind == page || kind == screen,
                error,
                conversion,
            ));
            let codes = match visit {
                true => pack.pack(codes),
                false => 0,
            };
            flags << FLAGS_SHIFT | codes
        };
        let dicts: Dicts = std::array::from_fn(|j| scan.dict(j + 1));
        let assets = self.settings.registry.assets.len();
        let parts = scan.run(
            self.only,
            tag,
            || Part::new(self.rules, assets, &dicts),
            |part, r| {
                part.person(
                    self.settings,
                    &dicts,
                    r.person,
                    r.ts,
                    |i| r.seq[i],
                    |i| (r.tag[i] >> FLAGS_SHIFT) as u8,
                    |i| std::array::from_fn(|k| pack.code(r.tag[i] & codes_mask, k)),
                );
            },
        )?;
        Ok(Some(Tally::of(parts, &dicts, assets)))
    }
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
        // Only the sampled views are decoded, in arrival order.
        let mut seqs: Vec<u32> = wanted.keys().copied().collect();
        seqs.sort_unstable();
        snap.for_each_event_at(&seqs, |seq, e| {
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
        })?;
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
                persons: acc.count.persons,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::tests::journey_store;
    use std::collections::BTreeSet;

    /// The sessions and distinct persons of each spelling of a source, and of the whole
    /// audit, counted the plain way (sessions split by hand, persons in sets), against
    /// the audit's counts: a person with several sessions is one person.
    fn check_source_counts(src: &Source, audit: &AuditResponse) {
        let rows = load(
            src,
            &Load {
                dims: TOUCH_DIMS.to_vec(),
                keep: Some(Box::new(|kind, v| is_visit(kind, v[1].is_some()))),
                ..Default::default()
            },
        )
        .unwrap();
        let mut by_source: BTreeMap<String, (u64, BTreeSet<u32>)> = BTreeMap::new();
        let (mut sessions, mut persons) = (0u64, BTreeSet::new());
        for r in rows.persons() {
            let mut prev: Option<Millis> = None;
            for i in r {
                // The test's timeout: 4s.
                if prev.is_none_or(|p| rows.ts[i] - p > 4000) {
                    sessions += 1;
                    persons.insert(rows.person[i]);
                    if let Some(v) = rows.dim(2).get(i).filter(|v| !v.is_empty()) {
                        let e = by_source.entry(v.to_string()).or_default();
                        e.0 += 1;
                        e.1.insert(rows.person[i]);
                    }
                }
                prev = Some(rows.ts[i]);
            }
        }
        assert_eq!(
            (audit.sessions, audit.persons),
            (sessions, persons.len() as u64)
        );
        assert!(sessions > persons.len() as u64, "persons come back");
        assert!(!audit.utm.sources.is_empty());
        for sp in &audit.utm.sources {
            let mut others: BTreeSet<u32> = BTreeSet::new();
            for (k, v) in sp.variants.iter().enumerate() {
                let (n, who) = &by_source[&v.value];
                assert_eq!((v.sessions, v.persons), (*n, who.len() as u64), "{v:?}");
                if k > 0 {
                    others.extend(who);
                }
            }
            assert_eq!(sp.affected_persons, others.len() as u64, "{sp:?}");
        }
    }

    /// The scan must give the table's answer to the byte, over stores of several segments
    /// and the log, with devices stitched into persons, ties in time, spellings of one
    /// source, unassigned traffic, error landings and landing texts to compare.
    #[test]
    fn the_scanned_audit_equals_the_loaded_one() {
        let registry = Registry::from_toml(
            r#"
[[asset]]
id = "hero-ad"
kind = "ad"
destination_url = "https://shop.example/lp/a?utm_content=hero"
headline = "Hear every note"

[[asset]]
id = "spring-mail"
kind = "email"
destination_url = "https://shop.example/?utm_campaign=spring"
copy = "Autumn clearance on cables"

[[asset]]
id = "products"
kind = "landing_page"
destination_url = "/products/x"

[[asset]]
id = "idle"
kind = "ad"
destination_url = "https://shop.example/?utm_campaign=never"
"#,
            "t.toml",
        )
        .unwrap();
        let rules = Rules::ga4_default();
        for seed in 1..=3u64 {
            let (p, dir) = journey_store("audit-scan", seed);
            let snap = p.snapshot();
            let src = Source::from(&snap);
            for (conversion, errors, range, filter) in [
                (Some("Order"), None, None, None),
                (None, Some("Clicked|page:/lp/*"), Some((5000, 30_000)), None),
                (Some("page:/products/*"), Some("Page Not Found"), None, None),
                (
                    Some("Order"),
                    None,
                    None,
                    Some(crate::filter::Filter {
                        channel: None,
                        campaign: Some("spring".into()),
                    }),
                ),
            ] {
                let req = AuditRequest {
                    conversion: conversion.map(str::to_string),
                    window: Some("9s".into()),
                    timeout: Some("4s".into()),
                    error_events: errors.map(str::to_string),
                    similarity_min: Some(0.2),
                    from: range.map(|r: (i64, i64)| throughline_model::format_ms(r.0)),
                    to: range.map(|r| throughline_model::format_ms(r.1)),
                    filter,
                };
                let scanned = run_with(&src, &rules, &registry, &req, true).unwrap();
                let loaded = run_with(&src, &rules, &registry, &req, false).unwrap();
                assert!(
                    loaded.sessions > 20,
                    "{} sessions: {req:?}",
                    loaded.sessions
                );
                let kinds = &loaded.findings_by_kind;
                for kind in ["source_spelling", "error_landing", "message_mismatch"] {
                    assert!(kinds.get(kind).is_some_and(|&n| n > 0), "{kind}: {req:?}");
                }
                assert!(
                    loaded
                        .message_match
                        .pairs
                        .iter()
                        .any(|p| p.landing_text.contains("Spring sale")),
                    "landing texts are read: {req:?}"
                );
                assert_eq!(
                    serde_json::to_string(&scanned).unwrap(),
                    serde_json::to_string(&loaded).unwrap(),
                    "seed {seed} {req:?}"
                );
                if range.is_none() && req.filter.is_none() {
                    check_source_counts(&src, &loaded);
                }
            }
            drop(snap);
            drop(p);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
