//! `query trends`: event counts and unique persons per day or week.

use std::collections::HashMap;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_model::{format_ms, Millis};

use crate::breakdown::{self, By};
use crate::rows::Scan;
use crate::source::Source;
use crate::spec::{parse_time_bound, MaskTable, StepMatcher};
use crate::QueryError;

const DAY_MS: Millis = 86_400_000;

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    #[default]
    Day,
    Week,
    Month,
}

impl Interval {
    pub fn parse(text: &str) -> Result<Interval, QueryError> {
        match text {
            "day" => Ok(Interval::Day),
            "week" => Ok(Interval::Week),
            "month" => Ok(Interval::Month),
            _ => Err(QueryError::invalid(format!(
                "unknown period {text:?}: use day, week or month"
            ))),
        }
    }

    /// The period index of a timestamp: days since the epoch, ISO weeks (Monday first), or
    /// months since year 0.
    pub fn index(self, ts: Millis) -> i32 {
        let day = ts.div_euclid(DAY_MS);
        match self {
            Interval::Day => day as i32,
            // 1970-01-01 was a Thursday: shift so weeks start on Monday.
            Interval::Week => (day + 3).div_euclid(7) as i32,
            Interval::Month => {
                let d = chrono::DateTime::from_timestamp_millis(ts)
                    .unwrap_or_default()
                    .date_naive();
                use chrono::Datelike;
                d.year() * 12 + d.month0() as i32
            }
        }
    }

    /// The first day of a period, as `YYYY-MM-DD`.
    pub fn label(self, index: i32) -> String {
        let ms = match self {
            Interval::Day => index as i64 * DAY_MS,
            Interval::Week => (index as i64 * 7 - 3) * DAY_MS,
            Interval::Month => {
                let (y, m) = (index.div_euclid(12), index.rem_euclid(12) as u32 + 1);
                let d = chrono::NaiveDate::from_ymd_opt(y, m, 1).unwrap_or_default();
                d.and_hms_opt(0, 0, 0)
                    .unwrap_or_default()
                    .and_utc()
                    .timestamp_millis()
            }
        };
        format_ms(ms)[..10].to_string()
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrendsRequest {
    pub events: Vec<String>,
    #[serde(default)]
    pub interval: Interval,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// Split by each person's first touch in range (channel, source, medium,
    /// source_medium, campaign, content or landing_page), by each event's own property
    /// (`property:NAME`), or by the person's latest trait (`person:NAME`).
    #[serde(default)]
    pub by: Option<String>,
    /// With `by`: the values listed, most persons first; the rest are summed as `(other)`.
    #[serde(default)]
    pub by_limit: Option<usize>,
    /// Only persons whose first touch in range has these values (see [`crate::filter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::filter::Filter>,
}

/// Events asked for at most (each is a bit of a row's tag).
pub const EVENTS_MAX: usize = 64;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TrendRow {
    pub date: String,
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub events: u64,
    pub persons: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TrendsResponse {
    pub interval: Interval,
    pub rows: Vec<TrendRow>,
    /// Unique persons over the whole range, per event.
    pub totals: Vec<TrendRow>,
}

/// How each row finds its breakdown group.
enum Groups {
    None,
    /// Per person (first touch, trait): a group index, or `none` for persons without one.
    Person(FxHashMap<u32, u32>, u32),
    /// Per event (its property), by arrival number.
    Event(FxHashMap<u32, u32>, u32),
}

impl Groups {
    #[inline]
    fn of(&self, person: u32, seq: u32) -> u32 {
        match self {
            Groups::None => 0,
            Groups::Person(m, none) => m.get(&person).copied().unwrap_or(*none),
            Groups::Event(m, none) => m.get(&seq).copied().unwrap_or(*none),
        }
    }
}

/// Counts of one part of the persons: (period, event, group) -> (events, persons), and
/// (event, group) -> (events, persons) over the range. Every row of every event touches
/// these maps, so they hash with FxHash (a few integers: nanoseconds, not SipHash's tens).
#[derive(Default)]
struct Counts {
    rows: FxHashMap<(i32, u32, u32), (u64, u64)>,
    totals: FxHashMap<(u32, u32), (u64, u64)>,
    seen: FxHashSet<(i32, u32, u32)>,
    seen_total: FxHashSet<(u32, u32)>,
}

pub fn run(
    snap: &Source,
    rules: &Rules,
    req: &TrendsRequest,
) -> Result<TrendsResponse, QueryError> {
    if req.events.is_empty() {
        return Err(QueryError::invalid("trends need at least one event"));
    }
    if req.events.len() > EVENTS_MAX {
        return Err(QueryError::invalid(format!(
            "trends take at most {EVENTS_MAX} events"
        )));
    }
    let matchers: Vec<StepMatcher> = req
        .events
        .iter()
        .map(|e| StepMatcher::parse(e))
        .collect::<Result<_, _>>()?;
    let from = req.from.as_deref().map(parse_time_bound).transpose()?;
    let to = req.to.as_deref().map(parse_time_bound).transpose()?;
    let by = req.by.as_deref().map(By::parse).transpose()?;
    let by_limit = breakdown::limit(req.by_limit)?;
    let need_path = matchers.iter().any(StepMatcher::needs_path);
    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    let scan = Scan::new(snap, from, to, if need_path { &[0, 1] } else { &[0] })?;
    let bits: Vec<(u64, &StepMatcher)> = matchers
        .iter()
        .enumerate()
        .map(|(e, m)| (1u64 << e, m))
        .collect();
    let masks = MaskTable::new(&bits, scan.dict(0), need_path.then(|| scan.dict(1)));
    let tag = |kind: u8, codes: &[u32]| masks.of(kind, codes);

    let mut values: Vec<String> = Vec::new();
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut intern = |v: String| -> u32 {
        *index.entry(v.clone()).or_insert_with(|| {
            values.push(v);
            (values.len() - 1) as u32
        })
    };
    let groups = match &by {
        None => Groups::None,
        Some(By::Touch(attribute)) => {
            let g = crate::sessions::first_touch(snap, rules, from, to, attribute)?;
            let map = g.iter().map(|(&p, v)| (p, intern(v.clone()))).collect();
            Groups::Person(map, intern(breakdown::NONE.into()))
        }
        Some(By::Person(path)) => {
            let g = breakdown::person_traits(snap, path)?;
            let map = g.into_iter().map(|(p, v)| (p, intern(v))).collect();
            Groups::Person(map, intern(breakdown::NONE.into()))
        }
        Some(By::Event(path)) => {
            // Every counted event's own value: find them, then decode only them.
            let seqs = scan.run(only.as_ref(), tag, Vec::new, |seqs: &mut Vec<u32>, r| {
                seqs.extend_from_slice(r.seq)
            })?;
            let mut seqs: Vec<u32> = seqs.into_iter().flatten().collect();
            seqs.sort_unstable();
            let decoded = breakdown::event_values(snap, &seqs, path)?;
            let map = decoded.into_iter().map(|(s, v)| (s, intern(v))).collect();
            Groups::Event(map, intern(breakdown::NONE.into()))
        }
    };

    // The listed groups: the values with the most persons, then `(other)`. Counting goes
    // by listed slot, so `(other)` counts each person once however many values it holds.
    let slot: Vec<u32> = if by.is_some() {
        let weights = scan.run(
            only.as_ref(),
            tag,
            || (vec![0u64; values.len()], Vec::<u32>::new()),
            |(w, mine), r| {
                mine.clear();
                mine.extend(r.seq.iter().map(|&s| groups.of(r.person, s)));
                mine.sort_unstable();
                mine.dedup();
                for &g in mine.iter() {
                    w[g as usize] += 1;
                }
            },
        )?;
        let mut total = vec![0u64; values.len()];
        for (w, _) in weights {
            for (t, x) in total.iter_mut().zip(w) {
                *t += x;
            }
        }
        let (slot, names) = breakdown::top(&values, &total, by_limit);
        values = names;
        slot.into_iter().map(|s| s as u32).collect()
    } else {
        vec![0]
    };

    let interval = req.interval;
    let parts = scan.run(only.as_ref(), tag, Counts::default, |c, r| {
        c.seen.clear();
        c.seen_total.clear();
        for i in 0..r.ts.len() {
            let bucket = interval.index(r.ts[i]);
            let g = slot[groups.of(r.person, r.seq[i]) as usize];
            let mut m = r.tag[i];
            while m != 0 {
                let e = m.trailing_zeros();
                m &= m - 1;
                let row = c.rows.entry((bucket, e, g)).or_default();
                row.0 += 1;
                if c.seen.insert((bucket, e, g)) {
                    row.1 += 1;
                }
                let t = c.totals.entry((e, g)).or_default();
                t.0 += 1;
                if c.seen_total.insert((e, g)) {
                    t.1 += 1;
                }
            }
        }
    })?;
    let mut rows: HashMap<(i32, u32, u32), (u64, u64)> = HashMap::new();
    let mut totals: HashMap<(u32, u32), (u64, u64)> = HashMap::new();
    for part in parts {
        for (k, (a, b)) in part.rows {
            let x = rows.entry(k).or_default();
            x.0 += a;
            x.1 += b;
        }
        for (k, (a, b)) in part.totals {
            let x = totals.entry(k).or_default();
            x.0 += a;
            x.1 += b;
        }
    }
    let grouped = by.is_some();
    let group_of = |g: u32| grouped.then(|| values[g as usize].clone());
    type Keyed = ((i32, u32, String), (u64, u64));
    let mut rows: Vec<Keyed> = rows
        .into_iter()
        .map(|((b, e, g), c)| ((b, e, group_of(g).unwrap_or_default()), c))
        .collect();
    rows.sort();
    let mut totals: Vec<((u32, String), (u64, u64))> = totals
        .into_iter()
        .map(|((e, g), c)| ((e, group_of(g).unwrap_or_default()), c))
        .collect();
    totals.sort();
    let label = |e: u32| matchers[e as usize].label.clone();
    Ok(TrendsResponse {
        interval,
        rows: rows
            .into_iter()
            .map(|((b, e, g), (events, persons))| TrendRow {
                date: interval.label(b),
                event: label(e),
                group: grouped.then_some(g),
                events,
                persons,
            })
            .collect(),
        // Every event has a total row, zero when it never happened.
        totals: (0..matchers.len() as u32)
            .flat_map(|e| {
                let mut rows: Vec<TrendRow> = totals
                    .iter()
                    .filter(|((te, _), _)| *te == e)
                    .map(|((_, g), (events, persons))| TrendRow {
                        date: String::new(),
                        event: label(e),
                        group: grouped.then(|| g.clone()),
                        events: *events,
                        persons: *persons,
                    })
                    .collect();
                if rows.is_empty() && !grouped {
                    rows.push(TrendRow {
                        date: String::new(),
                        event: label(e),
                        group: None,
                        events: 0,
                        persons: 0,
                    });
                }
                rows
            })
            .collect(),
    })
}
