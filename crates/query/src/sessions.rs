//! `query sessions`: sessions (a person's visit events split by 30 minutes of inactivity), their
//! channel, source, medium, campaign and landing page (those of the first event), engaged
//! sessions and bounce rate as GA4 defines them, by any of those or by day.

use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use throughline_classify::{Rules, Touch};
use throughline_kernels::sessions;
use throughline_model::{EventType, Millis};
use throughline_store::NO_VALUE;

use crate::rows::{load, Load, Rows};
use crate::source::Source;
use crate::spec::{parse_duration, parse_time_bound};
use crate::trends::Interval;
use crate::QueryError;

/// GA4: a session is engaged when it lasts longer than 10 seconds or has 2+ page views.
const ENGAGED_SECONDS: Millis = 10_000;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsRequest {
    /// channel (default), source, medium, source_medium, campaign, content, landing_page,
    /// day, week, or none for one total row.
    #[serde(default)]
    pub by: Option<String>,
    /// Inactivity that ends a session.
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
pub struct SessionRow {
    pub key: String,
    pub sessions: u64,
    pub engaged_sessions: u64,
    pub engagement_rate: f64,
    pub bounce_rate: f64,
    pub avg_duration_seconds: f64,
    pub events: u64,
    pub persons: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SessionsResponse {
    pub by: String,
    pub timeout_seconds: f64,
    pub total: SessionRow,
    pub rows: Vec<SessionRow>,
}

/// The dimensions a session's touch reads: name, path, UTM source/medium/campaign/content,
/// referrer host, click id.
const TOUCH_DIMS: [usize; 8] = [0, 1, 2, 3, 4, 5, 7, 8];

/// One session's attribution, as `attribute` returns it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionTouch {
    pub channel: String,
    pub source: String,
    pub medium: String,
    pub campaign: Option<String>,
    pub content: Option<String>,
    pub landing_page: Option<String>,
}

impl SessionTouch {
    /// The value of one attribute: channel, source, medium, source_medium, campaign or
    /// content (anything else reads as content).
    pub fn value(&self, attribute: &str) -> String {
        let or_not_set = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not set)".into());
        match attribute {
            "channel" => self.channel.clone(),
            "source" => self.source.clone(),
            "medium" => self.medium.clone(),
            "source_medium" => format!("{} / {}", self.source, self.medium),
            "campaign" => or_not_set(&self.campaign),
            _ => or_not_set(&self.content),
        }
    }
}

/// Classifies a session by its first event, caching by the distinct combination of
/// traffic parameters (there are few), so classification is not per session.
pub struct Attributor<'r> {
    rules: &'r Rules,
    cache: FxHashMap<[u32; 6], usize>,
    touches: Vec<SessionTouch>,
}

impl<'r> Attributor<'r> {
    pub fn new(rules: &'r Rules) -> Attributor<'r> {
        Attributor {
            rules,
            cache: FxHashMap::default(),
            touches: Vec::new(),
        }
    }

    /// The index (into [`Attributor::touch`]) of the touch of the session starting at `row`.
    pub fn attribute(&mut self, rows: &Rows, row: usize) -> usize {
        let code = |d: usize| rows.dims[d].as_ref().map_or(NO_VALUE, |c| c.codes[row]);
        let key = [code(2), code(3), code(4), code(5), code(7), code(8)];
        if let Some(&i) = self.cache.get(&key) {
            // The landing page is per session, not per traffic source: keep it separate.
            return i;
        }
        let get = |d: usize| rows.dims[d].as_ref().and_then(|c| c.get(row));
        let referrer = get(7).map(|h| format!("https://{h}/"));
        let touch = Touch {
            utm_source: get(2),
            utm_medium: get(3),
            utm_campaign: get(4),
            click_id: get(8),
            referrer: referrer.as_deref(),
            page_url: None,
        };
        let c = self.rules.classify(&touch);
        self.touches.push(SessionTouch {
            channel: c.channel,
            source: c.source,
            medium: c.medium,
            campaign: c.campaign,
            content: get(5).map(str::to_string),
            landing_page: None,
        });
        self.cache.insert(key, self.touches.len() - 1);
        self.touches.len() - 1
    }

    pub fn touch(&self, i: usize) -> &SessionTouch {
        &self.touches[i]
    }
}

/// The first touch of every person with a visit in `[from, to)`: an attribute (`channel`,
/// `source`, `medium`, `source_medium`, `campaign`, `content` or `landing_page`) of their
/// first visit event.
pub fn first_touch(
    snap: &Source,
    rules: &Rules,
    from: Option<Millis>,
    to: Option<Millis>,
    attribute: &str,
) -> Result<HashMap<u32, String>, QueryError> {
    let valid = [
        "channel",
        "source",
        "medium",
        "source_medium",
        "campaign",
        "content",
        "landing_page",
    ];
    if !valid.contains(&attribute) {
        return Err(QueryError::invalid(format!(
            "unknown breakdown {attribute:?}: use one of {}",
            valid.join(", ")
        )));
    }
    let rows = load_visits(snap, from, to, None)?;
    let mut attributor = Attributor::new(rules);
    let mut out = HashMap::new();
    for r in rows.persons() {
        let first = r.start;
        let value = if attribute == "landing_page" {
            rows.dim(1).get(first).unwrap_or("(not set)").to_string()
        } else {
            let i = attributor.attribute(&rows, first);
            attributor.touch(i).value(attribute)
        };
        out.insert(rows.person[first], value);
    }
    Ok(out)
}

/// Every visit event in `[from, to)` with the dimensions a touch reads. Sessions are
/// visits: page and screen views and events sent from a page. Server-side events (an
/// email sent, a ticket closed) happen to a person without them visiting, so they neither
/// start nor extend a session.
fn load_visits(
    snap: &Source,
    from: Option<Millis>,
    to: Option<Millis>,
    persons: Option<&std::collections::HashSet<u32>>,
) -> Result<Rows, QueryError> {
    load(
        snap,
        &Load {
            from,
            to,
            dims: TOUCH_DIMS.to_vec(),
            keep: Some(Box::new(|kind, v| is_visit(kind, v[1].is_some()))),
            keep_reads: Some(vec![1]),
            persons,
        },
    )
}

/// Whether an event is part of a visit: a page or screen view, or any event with a page.
pub fn is_visit(kind: u8, has_path: bool) -> bool {
    has_path || kind == EventType::Page.code() || kind == EventType::Screen.code()
}

pub fn run(
    snap: &Source,
    rules: &Rules,
    req: &SessionsRequest,
) -> Result<SessionsResponse, QueryError> {
    let timeout = parse_duration(req.timeout.as_deref().unwrap_or("30m"))?;
    let from = req.from.as_deref().map(parse_time_bound).transpose()?;
    let to = req.to.as_deref().map(parse_time_bound).transpose()?;
    let by = req.by.clone().unwrap_or_else(|| "channel".into());
    let valid = [
        "channel",
        "source",
        "medium",
        "source_medium",
        "campaign",
        "content",
        "landing_page",
        "day",
        "week",
        "none",
    ];
    if !valid.contains(&by.as_str()) {
        return Err(QueryError::invalid(format!(
            "unknown breakdown {by:?}: use one of {}",
            valid.join(", ")
        )));
    }
    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    let rows = load_visits(snap, from, to, only.as_ref())?;
    let mut attributor = Attributor::new(rules);
    #[derive(Default)]
    struct Acc {
        sessions: u64,
        engaged: u64,
        duration_ms: i64,
        events: u64,
        persons: u64,
        /// The person last counted: a person's rows are contiguous, so counting a person
        /// when it differs from the last one counts distinct persons without a set.
        last_person: Option<u32>,
    }
    impl Acc {
        fn add(&mut self, person: u32, engaged: bool, duration: i64, events: usize) {
            self.sessions += 1;
            self.engaged += u64::from(engaged);
            self.duration_ms += duration;
            self.events += events as u64;
            if self.last_person != Some(person) {
                self.last_person = Some(person);
                self.persons += 1;
            }
        }
    }
    // Sessions are many and groups few: a session finds its group through a cache keyed
    // by what decides the key (a touch, a landing page code, a day), and the group's name
    // is built once.
    let mut names: Vec<String> = Vec::new();
    let mut accs: Vec<Acc> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut group_of: FxHashMap<i64, usize> = FxHashMap::default();
    let mut total = Acc::default();
    let page = EventType::Page.code();
    let screen = EventType::Screen.code();
    for r in rows.persons() {
        let base = r.start;
        let person = rows.person[base];
        sessions::split(&rows.ts[r.clone()], timeout, |a, b| {
            let (a, b) = (base + a, base + b);
            let duration = rows.ts[b - 1] - rows.ts[a];
            let views = rows.kind[a..b]
                .iter()
                .filter(|&&k| k == page || k == screen)
                .count();
            let engaged = duration > ENGAGED_SECONDS || views >= 2;
            let (decider, interval) = match by.as_str() {
                "day" => (
                    i64::from(Interval::Day.index(rows.ts[a])),
                    Some(Interval::Day),
                ),
                "week" => (
                    i64::from(Interval::Week.index(rows.ts[a])),
                    Some(Interval::Week),
                ),
                "landing_page" => (i64::from(rows.dim(1).codes[a]), None),
                "none" => (0, None),
                _ => (attributor.attribute(&rows, a) as i64, None),
            };
            let g = *group_of.entry(decider).or_insert_with(|| {
                let key = match (interval, by.as_str()) {
                    (Some(i), _) => i.label(decider as i32),
                    (None, "landing_page") => rows.dim(1).get(a).unwrap_or("(not set)").to_string(),
                    (None, "none") => "all".to_string(),
                    (None, other) => attributor.touch(decider as usize).value(other),
                };
                *by_name.entry(key.clone()).or_insert_with(|| {
                    names.push(key);
                    accs.push(Acc::default());
                    accs.len() - 1
                })
            });
            accs[g].add(person, engaged, duration, b - a);
            total.add(person, engaged, duration, b - a);
        });
    }
    let groups: BTreeMap<&String, &Acc> = names.iter().zip(&accs).collect();
    let row = |key: String, a: &Acc| {
        let s = a.sessions.max(1) as f64;
        SessionRow {
            key,
            sessions: a.sessions,
            engaged_sessions: a.engaged,
            engagement_rate: a.engaged as f64 / s,
            bounce_rate: 1.0 - a.engaged as f64 / s,
            avg_duration_seconds: a.duration_ms as f64 / 1000.0 / s,
            events: a.events,
            persons: a.persons,
        }
    };
    let mut out: Vec<SessionRow> = groups.iter().map(|(k, a)| row((*k).clone(), a)).collect();
    if !matches!(by.as_str(), "day" | "week") {
        out.sort_by(|a, b| b.sessions.cmp(&a.sessions).then(a.key.cmp(&b.key)));
    }
    Ok(SessionsResponse {
        by,
        timeout_seconds: timeout as f64 / 1000.0,
        total: row("all".into(), &total),
        rows: out,
    })
}

/// The channel rules of a project: `channels.toml` in its directory when present (GA4's
/// defaults extended or replaced, see the classify crate), else GA4's defaults.
pub fn project_rules(project_dir: &std::path::Path) -> Result<Rules, QueryError> {
    let path = project_dir.join("channels.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => Rules::from_toml(&text)
            .map_err(|e| QueryError::invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Rules::ga4_default()),
        Err(e) => Err(QueryError::Store(throughline_store::StoreError::io(
            &path, e,
        ))),
    }
}
