//! `query sessions`: sessions (a person's visit events split by 30 minutes of inactivity), their
//! channel, source, medium, campaign and landing page (those of the first event), engaged
//! sessions and bounce rate as GA4 defines them, by any of those or by day.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use throughline_classify::{Rules, Touch};
use throughline_kernels::sessions;
use throughline_model::{EventType, Millis};
use throughline_store::NO_VALUE;

use crate::kept::Kept;
use crate::rows::{load, Load, Rows, Scan};
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
pub(crate) const TOUCH_DIMS: [usize; 8] = [0, 1, 2, 3, 4, 5, 7, 8];
/// The dimensions a touch is classified and cached by, in the order of its key: UTM
/// source, medium, campaign, content, referrer host, click id.
pub(crate) const TOUCH_KEY_DIMS: [usize; 6] = [2, 3, 4, 5, 7, 8];
/// In a scan of [`TOUCH_DIMS`], the positions of a visit's landing path and then its
/// touch's codes in [`TOUCH_KEY_DIMS`] order: what a session start packs.
pub(crate) const VISIT_CODES: [usize; 7] = [1, 2, 3, 4, 5, 6, 7];
/// What a scan of visits reads: the path (whether there is one makes a visit), then the
/// touch's dimensions in [`TOUCH_KEY_DIMS`] order.
const VISIT_SCAN_DIMS: [usize; 7] = [1, 2, 3, 4, 5, 7, 8];
/// The breakdowns of `query sessions` besides the touch's attributes.
const PERIODS_AND_TOTAL: [&str; 3] = ["day", "week", "none"];
/// The attributes of a touch a breakdown or a first touch can read.
pub(crate) const TOUCH_ATTRIBUTES: [&str; 7] = [
    "channel",
    "source",
    "medium",
    "source_medium",
    "campaign",
    "content",
    "landing_page",
];

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
        let key = TOUCH_KEY_DIMS.map(|d| rows.dims[d].as_ref().map_or(NO_VALUE, |c| c.codes[row]));
        self.attribute_codes(key, |d| rows.dims[d].as_ref().and_then(|c| c.get(row)))
    }

    /// [`Attributor::attribute`] of a touch given by its codes, in [`TOUCH_KEY_DIMS`]
    /// order, and the dictionary each indexes (a scan's).
    pub(crate) fn attribute_dicts(&mut self, codes: &[u32], dicts: &[&[String]; 6]) -> usize {
        let key: [u32; 6] = codes[..6].try_into().expect("six touch codes");
        self.attribute_codes(key, |d| {
            let k = TOUCH_KEY_DIMS.iter().position(|&x| x == d)?;
            (key[k] != NO_VALUE).then(|| dicts[k][key[k] as usize].as_str())
        })
    }

    /// [`Attributor::attribute`] of a touch given by its codes (in [`TOUCH_KEY_DIMS`]
    /// order) and the value of a dimension (`DIMS` index), read only the first time the
    /// codes are seen.
    fn attribute_codes<'v>(
        &mut self,
        key: [u32; 6],
        get: impl Fn(usize) -> Option<&'v str>,
    ) -> usize {
        if let Some(&i) = self.cache.get(&key) {
            // The landing page is per session, not per traffic source: keep it separate.
            return i;
        }
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
/// first visit event. Over the embedded store, the answers of the latest few requests are
/// kept by snapshot version ([`RECENT_FIRST_TOUCHES`]).
pub fn first_touch(
    snap: &Source,
    rules: &Rules,
    from: Option<Millis>,
    to: Option<Millis>,
    attribute: &str,
) -> Result<Arc<HashMap<u32, String>>, QueryError> {
    if !TOUCH_ATTRIBUTES.contains(&attribute) {
        return Err(QueryError::invalid(format!(
            "unknown breakdown {attribute:?}: use one of {}",
            TOUCH_ATTRIBUTES.join(", ")
        )));
    }
    let compute = || match first_touch_scan(snap, rules, from, to, attribute)? {
        Some(out) => Ok(out),
        None => first_touch_loaded(snap, rules, from, to, attribute),
    };
    match snap.store() {
        Some(store) => RECENT_FIRST_TOUCHES.get(
            (
                store.version(),
                from,
                to,
                attribute.to_string(),
                rules.clone(),
            ),
            compute,
        ),
        // A remote backend's data changes without a version to tell.
        None => compute().map(Arc::new),
    }
}

/// A dashboard view sends its requests at once, each with the same filter (and a
/// breakdown by channel often), and each would scan for the same first touches: the
/// latest three answers are kept, by (snapshot version, from, to, attribute, rules).
pub static RECENT_FIRST_TOUCHES: Kept<FirstTouchKey, HashMap<u32, String>> = Kept::new(3);

pub type FirstTouchKey = (u64, Option<Millis>, Option<Millis>, String, Rules);

/// [`first_touch`] over the table of every visit.
fn first_touch_loaded(
    snap: &Source,
    rules: &Rules,
    from: Option<Millis>,
    to: Option<Millis>,
    attribute: &str,
) -> Result<HashMap<u32, String>, QueryError> {
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

/// [`first_touch`] as a streaming scan, persons in parallel, where the codes of the touch
/// (and of the landing path, for `landing_page`) fit one scan tag: only each person's
/// first visit is looked at, and no table of every visit is built. `None` when they do
/// not fit 62 bits (dictionaries too large), for the caller to load the visits instead.
fn first_touch_scan(
    snap: &Source,
    rules: &Rules,
    from: Option<Millis>,
    to: Option<Millis>,
    attribute: &str,
) -> Result<Option<HashMap<u32, String>>, QueryError> {
    let scan = Scan::new(snap, from, to, &VISIT_SCAN_DIMS)?;
    let touch_dicts: [&[String]; 6] = std::array::from_fn(|k| scan.dict(k + 1));
    let landing = attribute == "landing_page";
    // The touch's codes (positions 1-6), then the path's for `landing_page`.
    let positions: &[usize] = if landing {
        &[1, 2, 3, 4, 5, 6, 0]
    } else {
        &[1, 2, 3, 4, 5, 6]
    };
    let Some(pack) = CodePack::new(positions, |j| scan.dict(j).len()) else {
        return Ok(None);
    };
    let tag = |kind: u8, codes: &[u32]| -> u64 {
        if is_visit(kind, codes[0] != NO_VALUE) {
            pack.pack(codes)
        } else {
            0
        }
    };
    let parts = scan.run(
        None,
        tag,
        || (Attributor::new(rules), Vec::new()),
        |(attributor, out): &mut (Attributor, Vec<(u32, String)>), r| {
            // Rows come in (time, arrival) order: the first is the first visit.
            let codes = pack.unpack(r.tag[0]);
            let value = if landing {
                match codes[6] {
                    NO_VALUE => "(not set)".to_string(),
                    c => scan.dict(0)[c as usize].clone(),
                }
            } else {
                let i = attributor.attribute_dicts(&codes, &touch_dicts);
                attributor.touch(i).value(attribute)
            };
            out.push((r.person, value));
        },
    )?;
    Ok(Some(parts.into_iter().flat_map(|(_, out)| out).collect()))
}

/// Codes of several scan dimensions packed into one nonzero `u64` tag: bit 0 set, then
/// each code in as many bits as its dictionary needs (all ones for no value).
pub(crate) struct CodePack {
    /// Per packed dimension: its position among the scan's codes, shift and bit width.
    fields: Vec<(usize, u32, u32)>,
}

impl CodePack {
    /// `None` when the codes need more than 62 bits: bit 0 is the mark, and bit 63 is left
    /// to the caller ([`VIEW_BIT`]).
    pub(crate) fn new(positions: &[usize], dict_len: impl Fn(usize) -> usize) -> Option<CodePack> {
        let mut shift = 1u32;
        let mut fields = Vec::with_capacity(positions.len());
        for &j in positions {
            // Codes 0..len and `len` for no value.
            let bits = u64::BITS - (dict_len(j) as u64).leading_zeros();
            let bits = bits.max(1);
            if shift + bits > 63 {
                return None;
            }
            fields.push((j, shift, bits));
            shift += bits;
        }
        Some(CodePack { fields })
    }

    #[inline]
    pub(crate) fn pack(&self, codes: &[u32]) -> u64 {
        self.fields.iter().fold(1u64, |tag, &(j, shift, bits)| {
            let max = (1u64 << bits) - 1;
            let c = match codes[j] {
                NO_VALUE => max,
                c => u64::from(c).min(max),
            };
            tag | (c << shift)
        })
    }

    /// The pack when its codes end at or below `bit`, where the caller's own bits start.
    pub(crate) fn below(self, bit: u32) -> Option<CodePack> {
        (self.width() <= bit).then_some(self)
    }

    /// The bits of the mark and the codes.
    pub(crate) fn mask(&self) -> u64 {
        (1u64 << self.width()) - 1
    }

    /// The first bit above the codes.
    pub(crate) fn width(&self) -> u32 {
        self.fields
            .last()
            .map_or(1, |&(_, shift, bits)| shift + bits)
    }

    /// The codes in the order of `positions`, [`NO_VALUE`] for no value.
    pub(crate) fn unpack(&self, tag: u64) -> Vec<u32> {
        (0..self.fields.len()).map(|k| self.code(tag, k)).collect()
    }

    /// The `k`-th code of `positions`, [`NO_VALUE`] for no value.
    #[inline]
    pub(crate) fn code(&self, tag: u64, k: usize) -> u32 {
        let (_, shift, bits) = self.fields[k];
        let max = (1u64 << bits) - 1;
        match (tag >> shift) & max {
            c if c == max => NO_VALUE,
            c => c as u32,
        }
    }
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
    run_with(snap, rules, req, true)
}

/// [`run`], with `scan: false` over the table of every visit (what the scan must equal).
fn run_with(
    snap: &Source,
    rules: &Rules,
    req: &SessionsRequest,
    scan: bool,
) -> Result<SessionsResponse, QueryError> {
    let timeout = parse_duration(req.timeout.as_deref().unwrap_or("30m"))?;
    let from = req.from.as_deref().map(parse_time_bound).transpose()?;
    let to = req.to.as_deref().map(parse_time_bound).transpose()?;
    let by = req.by.clone().unwrap_or_else(|| "channel".into());
    let valid: Vec<&str> = TOUCH_ATTRIBUTES
        .into_iter()
        .chain(PERIODS_AND_TOTAL)
        .collect();
    if !valid.contains(&by.as_str()) {
        return Err(QueryError::invalid(format!(
            "unknown breakdown {by:?}: use one of {}",
            valid.join(", ")
        )));
    }
    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    let kind = match by.as_str() {
        "day" => By::Interval(Interval::Day),
        "week" => By::Interval(Interval::Week),
        "landing_page" => By::Landing,
        "none" => By::None,
        other => By::Touch(other),
    };
    let scanned = match scan {
        true => tally_scan(snap, rules, (from, to), only.as_ref(), timeout, kind)?,
        false => None,
    };
    let tallies = match scanned {
        Some(tallies) => tallies,
        None => {
            let rows = load_visits(snap, from, to, only.as_ref())?;
            let mut t = Tally::new(rules);
            let (page, screen) = (EventType::Page.code(), EventType::Screen.code());
            for r in rows.persons() {
                let base = r.start;
                t.person(
                    rows.person[base],
                    &rows.ts[r.clone()],
                    timeout,
                    |i| rows.kind[base + i] == page || rows.kind[base + i] == screen,
                    |attributor, a| {
                        let a = base + a;
                        decider(kind, rows.ts[a], rows.dim(1).codes[a], || {
                            attributor.attribute(&rows, a)
                        })
                    },
                    |attributor, d, a| {
                        group_name(kind, d, attributor, || {
                            rows.dim(1).get(base + a).unwrap_or("(not set)").to_string()
                        })
                    },
                );
            }
            vec![t]
        }
    };
    // Persons are split between tallies, never shared: their counts add up.
    let mut accs: HashMap<String, Acc> = HashMap::new();
    let mut total = Acc::default();
    for t in tallies {
        total.merge(&t.total);
        for (name, acc) in t.names.into_iter().zip(&t.accs) {
            accs.entry(name).or_default().merge(acc);
        }
    }
    let (names, accs): (Vec<String>, Vec<Acc>) = accs.into_iter().unzip();
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

/// [`run`]'s tallies from one streaming scan, persons in parallel, where what decides the
/// groups fits the scan tag (the touch's codes for a touch breakdown, the path's for
/// landing pages, nothing for periods): no table of every visit. `None` when it does not.
fn tally_scan<'r>(
    snap: &Source,
    rules: &'r Rules,
    (from, to): (Option<Millis>, Option<Millis>),
    only: Option<&std::collections::HashSet<u32>>,
    timeout: Millis,
    by: By,
) -> Result<Option<Vec<Tally<'r>>>, QueryError> {
    let touch = matches!(by, By::Touch(_));
    let scan = Scan::new(
        snap,
        from,
        to,
        if touch {
            &VISIT_SCAN_DIMS
        } else {
            &VISIT_SCAN_DIMS[..1]
        },
    )?;
    let touch_dicts: [&[String]; 6] =
        std::array::from_fn(|k| if touch { scan.dict(k + 1) } else { &[] });
    let positions: &[usize] = match by {
        By::Touch(_) => &[1, 2, 3, 4, 5, 6],
        By::Landing => &[0],
        By::Interval(_) | By::None => &[],
    };
    let Some(pack) = CodePack::new(positions, |j| scan.dict(j).len()) else {
        return Ok(None);
    };
    let (page, screen) = (EventType::Page.code(), EventType::Screen.code());
    let tag = |kind: u8, codes: &[u32]| -> u64 {
        if !is_visit(kind, codes[0] != NO_VALUE) {
            return 0;
        }
        pack.pack(codes) | (u64::from(kind == page || kind == screen) << VIEW_BIT)
    };
    let tallies = scan.run(
        only,
        tag,
        || Tally::new(rules),
        |t: &mut Tally, r| {
            t.person(
                r.person,
                r.ts,
                timeout,
                |i| r.tag[i] >> VIEW_BIT != 0,
                |attributor, a| {
                    let codes = pack.unpack(r.tag[a]);
                    let path = codes.first().copied().unwrap_or(NO_VALUE);
                    decider(by, r.ts[a], path, || {
                        attributor.attribute_dicts(&codes, &touch_dicts)
                    })
                },
                |attributor, d, _| {
                    group_name(by, d, attributor, || match d as u32 {
                        NO_VALUE => "(not set)".to_string(),
                        c => scan.dict(0)[c as usize].clone(),
                    })
                },
            );
        },
    )?;
    Ok(Some(tallies))
}

/// The bit of a visit's scan tag that marks a page or screen view; [`CodePack`] leaves it.
const VIEW_BIT: u32 = 63;

/// What a session's group is decided by.
#[derive(Clone, Copy)]
enum By<'b> {
    Interval(Interval),
    Landing,
    None,
    /// An attribute of the session's touch (`SessionTouch::value`).
    Touch(&'b str),
}

/// What decides a session's group: a period index, a landing path code or a touch index
/// (`touch` is called for touch breakdowns only).
fn decider(by: By, start: Millis, path_code: u32, touch: impl FnOnce() -> usize) -> i64 {
    match by {
        By::Interval(i) => i64::from(i.index(start)),
        By::Landing => i64::from(path_code),
        By::None => 0,
        By::Touch(_) => touch() as i64,
    }
}

/// The name of the group a decider stands for (`landing` is called for landing pages
/// only).
fn group_name(
    by: By,
    decider: i64,
    attributor: &Attributor,
    landing: impl FnOnce() -> String,
) -> String {
    match by {
        By::Interval(i) => i.label(decider as i32),
        By::Landing => landing(),
        By::None => "all".to_string(),
        By::Touch(attribute) => attributor.touch(decider as usize).value(attribute),
    }
}

#[derive(Default)]
struct Acc {
    sessions: u64,
    engaged: u64,
    duration_ms: i64,
    events: u64,
    persons: u64,
    /// The person last counted: a person's sessions are tallied together, so counting a
    /// person when it differs from the last one counts distinct persons without a set.
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

    /// Adds another tally's counts, of other persons.
    fn merge(&mut self, other: &Acc) {
        self.sessions += other.sessions;
        self.engaged += other.engaged;
        self.duration_ms += other.duration_ms;
        self.events += other.events;
        self.persons += other.persons;
    }
}

/// The sessions of some persons by group. Sessions are many and groups few: a session
/// finds its group through a cache keyed by what decides it (a touch, a landing page
/// code, a day), and the group's name is built once.
struct Tally<'r> {
    attributor: Attributor<'r>,
    names: Vec<String>,
    accs: Vec<Acc>,
    by_name: HashMap<String, usize>,
    group_of: FxHashMap<i64, usize>,
    total: Acc,
}

impl<'r> Tally<'r> {
    fn new(rules: &'r Rules) -> Tally<'r> {
        Tally {
            attributor: Attributor::new(rules),
            names: Vec::new(),
            accs: Vec::new(),
            by_name: HashMap::new(),
            group_of: FxHashMap::default(),
            total: Acc::default(),
        }
    }

    /// One person's visits (`ts` in order; `view(i)`: a page or screen view), split into
    /// sessions by `timeout`. `decide(attributor, first row)` gives what decides a
    /// session's group, `name(attributor, decider, first row)` the group's name, asked
    /// once per decider.
    fn person(
        &mut self,
        person: u32,
        ts: &[Millis],
        timeout: Millis,
        view: impl Fn(usize) -> bool,
        mut decide: impl FnMut(&mut Attributor<'r>, usize) -> i64,
        name: impl Fn(&Attributor<'r>, i64, usize) -> String,
    ) {
        sessions::split(ts, timeout, |a, b| {
            let duration = ts[b - 1] - ts[a];
            let views = (a..b).filter(|&i| view(i)).count();
            let engaged = duration > ENGAGED_SECONDS || views >= 2;
            let d = decide(&mut self.attributor, a);
            let g = match self.group_of.get(&d) {
                Some(&g) => g,
                None => {
                    let key = name(&self.attributor, d, a);
                    let g = *self.by_name.entry(key.clone()).or_insert_with(|| {
                        self.names.push(key);
                        self.accs.push(Acc::default());
                        self.accs.len() - 1
                    });
                    self.group_of.insert(d, g);
                    g
                }
            };
            self.accs[g].add(person, engaged, duration, b - a);
            self.total.add(person, engaged, duration, b - a);
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::tests::Rng;
    use throughline_model::Event;
    use throughline_store::{EventBatch, ProjectOptions, ProjectStore};

    #[test]
    fn packed_codes_come_back_with_no_value_and_too_wide_packs_are_refused() {
        let lens = [0usize, 1, 3, 4, 1000];
        let pack = CodePack::new(&[0, 1, 2, 3, 4], |j| lens[j]).unwrap();
        for codes in [
            [NO_VALUE, 0, 2, 3, 999],
            [NO_VALUE, NO_VALUE, NO_VALUE, NO_VALUE, NO_VALUE],
            [NO_VALUE, 0, 0, 0, 0],
        ] {
            let tag = pack.pack(&codes);
            assert_ne!(tag, 0, "a kept row's tag is never 0");
            assert_eq!(pack.unpack(tag), codes.to_vec());
        }
        // 7 dictionaries of 2^10 values need 7 * 11 bits; 6 of 2^9 values 60, which fit.
        assert!(CodePack::new(&[0, 1, 2, 3, 4, 5, 6], |_| 1 << 10).is_none());
        let wide = CodePack::new(&[0, 1, 2, 3, 4, 5], |_| 1 << 9).unwrap();
        let codes = [511, 0, NO_VALUE, 7, 300, NO_VALUE];
        let tag = wide.pack(&codes);
        assert_eq!(tag >> VIEW_BIT, 0, "the view bit stays free");
        assert_eq!(wide.unpack(tag | 1 << VIEW_BIT), codes.to_vec());
    }

    /// The streaming first touch, sessions and channel journeys equal those read from the
    /// table of every visit, for every attribute, on stores of several segments and the log with ties in time,
    /// server-side events that are no visits, and touches of every kind.
    #[test]
    fn the_scanned_first_touch_equals_the_loaded_one() {
        for seed in 1..=4u64 {
            let dir =
                std::env::temp_dir().join(format!("tl-first-touch-{seed}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let p = ProjectStore::open("p", &dir, ProjectOptions::default()).unwrap();
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let pick = |rng: &mut Rng, xs: &[&str]| -> Option<String> {
                let k = rng.below(xs.len() as u64 + 1) as usize;
                xs.get(k).map(|s| s.to_string())
            };
            let mut i = 0u64;
            for round in 0..4 {
                let mut batch = Vec::new();
                for _ in 0..300 {
                    i += 1;
                    let kind = ["page", "track", "track"][rng.below(3) as usize];
                    let path = pick(&mut rng, &["/", "/lp/a", "/products/x"]);
                    let mut e = serde_json::json!({
                        "message_id": format!("m{i}"), "type": kind,
                        "event": if kind == "track" { "Clicked" } else { "Home" },
                        "anonymous_id": format!("d{}", rng.below(40)),
                        "timestamp": rng.below(30) as i64 * 1000,
                        "received_at": 0,
                    });
                    if kind == "page" || rng.below(2) == 0 {
                        e["page_path"] = serde_json::json!(path.unwrap_or("/".into()));
                        e["page_url"] = serde_json::json!("https://shop.example/");
                    }
                    e["utm"] = serde_json::json!({
                        "source": pick(&mut rng, &["google", "newsletter", "facebook"]),
                        "medium": pick(&mut rng, &["cpc", "email", "social"]),
                        "campaign": pick(&mut rng, &["spring", "autumn"]),
                        "content": pick(&mut rng, &["hero", "footer"]),
                    });
                    if let Some(r) = pick(&mut rng, &["https://www.bing.com/", "https://t.co/x"]) {
                        e["referrer"] = serde_json::json!(r);
                    }
                    if rng.below(5) == 0 {
                        e["click_id"] = serde_json::json!({"param": "gclid", "value": "x"});
                    }
                    batch.push(serde_json::from_value::<Event>(e).unwrap());
                }
                p.append(EventBatch::of(&batch)).unwrap();
                if round < 3 {
                    p.flush().unwrap();
                }
            }
            let snap = p.snapshot();
            let src = Source::from(&snap);
            let rules = Rules::ga4_default();
            for conversion in ["Clicked", "page:/products/*"] {
                let req = crate::paths::PathsRequest {
                    of: Some("channels".into()),
                    conversion: Some(conversion.into()),
                    depth: Some(3),
                    timeout: Some("4s".into()),
                    limit: Some(1000),
                    ..Default::default()
                };
                let scanned = crate::paths::run_with(&src, &rules, &req, true).unwrap();
                let loaded = crate::paths::run_with(&src, &rules, &req, false).unwrap();
                assert!(loaded.paths.len() > 3, "{:?}", loaded.paths);
                assert_eq!(
                    serde_json::to_value(scanned).unwrap(),
                    serde_json::to_value(loaded).unwrap(),
                    "seed {seed} journeys to {conversion}"
                );
            }
            for attribute in TOUCH_ATTRIBUTES.into_iter().chain(PERIODS_AND_TOTAL) {
                for (from, to) in [(None, None), (Some(5000), Some(20_000))] {
                    let req = SessionsRequest {
                        by: Some(attribute.to_string()),
                        timeout: Some("4s".into()),
                        from: from.map(throughline_model::format_ms),
                        to: to.map(throughline_model::format_ms),
                        filter: None,
                    };
                    let scanned = serde_json::to_value(run_with(&src, &rules, &req, true).unwrap());
                    let loaded = serde_json::to_value(run_with(&src, &rules, &req, false).unwrap());
                    assert_eq!(
                        scanned.unwrap(),
                        loaded.unwrap(),
                        "seed {seed} sessions by {attribute}"
                    );
                    if PERIODS_AND_TOTAL.contains(&attribute) {
                        continue;
                    }
                    let scanned = first_touch_scan(&src, &rules, from, to, attribute)
                        .unwrap()
                        .expect("small dictionaries fit a tag");
                    let loaded = first_touch_loaded(&src, &rules, from, to, attribute).unwrap();
                    let distinct: std::collections::HashSet<&String> = loaded.values().collect();
                    assert!(distinct.len() > 2, "{attribute}: {distinct:?}");
                    assert_eq!(scanned, loaded, "seed {seed} {attribute} {from:?}..{to:?}");
                }
            }
            drop(snap);
            drop(p);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
