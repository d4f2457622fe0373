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
        self.attribute_codes(key, |d| rows.dims[d].as_ref().and_then(|c| c.get(row)))
    }

    /// [`Attributor::attribute`] of a touch given by the codes of its dimensions (UTM
    /// source, medium, campaign, content, referrer host, click id, in that order) and the
    /// value of a dimension (`DIMS` index), read only the first time the codes are seen.
    pub fn attribute_codes<'v>(
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
    match first_touch_scan(snap, rules, from, to, attribute)? {
        Some(out) => Ok(out),
        None => first_touch_loaded(snap, rules, from, to, attribute),
    }
}

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
/// not fit (dictionaries too large), for the caller to load the visits instead.
fn first_touch_scan(
    snap: &Source,
    rules: &Rules,
    from: Option<Millis>,
    to: Option<Millis>,
    attribute: &str,
) -> Result<Option<HashMap<u32, String>>, QueryError> {
    // The path (whether there is one makes a visit), then the touch's dimensions.
    const SCAN_DIMS: [usize; 7] = [1, 2, 3, 4, 5, 7, 8];
    let scan = Scan::new(snap, from, to, &SCAN_DIMS)?;
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
                let key: [u32; 6] = codes[..6].try_into().expect("six touch codes");
                let i = attributor.attribute_codes(key, |d| {
                    // `d` is a `DIMS` index; codes[k] is SCAN_DIMS[k + 1]'s.
                    let k = SCAN_DIMS[1..].iter().position(|&t| t == d)?;
                    (codes[k] != NO_VALUE).then(|| scan.dict(k + 1)[codes[k] as usize].as_str())
                });
                attributor.touch(i).value(attribute)
            };
            out.push((r.person, value));
        },
    )?;
    Ok(Some(parts.into_iter().flat_map(|(_, out)| out).collect()))
}

/// Codes of several scan dimensions packed into one nonzero `u64` tag: bit 0 set, then
/// each code in as many bits as its dictionary needs (no value as the dictionary's size).
struct CodePack {
    /// Per packed dimension: its position among the scan's codes, shift and bit width.
    fields: Vec<(usize, u32, u32)>,
}

impl CodePack {
    /// `None` when the codes need more than 63 bits.
    fn new(positions: &[usize], dict_len: impl Fn(usize) -> usize) -> Option<CodePack> {
        let mut shift = 1u32;
        let mut fields = Vec::with_capacity(positions.len());
        for &j in positions {
            // Codes 0..len and `len` for no value.
            let bits = u64::BITS - (dict_len(j) as u64).leading_zeros();
            let bits = bits.max(1);
            if shift + bits > 64 {
                return None;
            }
            fields.push((j, shift, bits));
            shift += bits;
        }
        Some(CodePack { fields })
    }

    #[inline]
    fn pack(&self, codes: &[u32]) -> u64 {
        self.fields.iter().fold(1u64, |tag, &(j, shift, bits)| {
            let max = (1u64 << bits) - 1;
            let c = match codes[j] {
                NO_VALUE => max,
                c => u64::from(c).min(max),
            };
            tag | (c << shift)
        })
    }

    /// The codes in the order of `positions`, [`NO_VALUE`] for no value.
    fn unpack(&self, tag: u64) -> Vec<u32> {
        self.fields
            .iter()
            .map(|&(_, shift, bits)| {
                let max = (1u64 << bits) - 1;
                match (tag >> shift) & max {
                    c if c == max => NO_VALUE,
                    c => c as u32,
                }
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
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
        // 7 dictionaries of 2^10 values need 7 * 11 bits.
        assert!(CodePack::new(&[0, 1, 2, 3, 4, 5, 6], |_| 1 << 10).is_none());
    }

    /// A small deterministic generator (xorshift64*), so that a failing seed replays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) % n
        }
    }

    /// The streaming first touch equals the one read from the table of every visit, for
    /// every attribute, on stores of several segments and the log with ties in time,
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
            for attribute in [
                "channel",
                "source",
                "medium",
                "source_medium",
                "campaign",
                "content",
                "landing_page",
            ] {
                for (from, to) in [(None, None), (Some(5000), Some(20_000))] {
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
