//! `query trends`: event counts and unique persons per day or week.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_model::{format_ms, Millis};
use throughline_store::Snapshot;

use crate::rows::{load, Load};
use crate::spec::{parse_time_bound, StepMatcher};
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
    /// Split by each person's first touch in range: channel, source, medium,
    /// source_medium, campaign, content or landing_page.
    #[serde(default)]
    pub by: Option<String>,
    /// Only persons whose first touch in range has these values (see [`crate::filter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::filter::Filter>,
}

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

pub fn run(
    snap: &Snapshot,
    rules: &Rules,
    req: &TrendsRequest,
) -> Result<TrendsResponse, QueryError> {
    if req.events.is_empty() {
        return Err(QueryError::invalid("trends need at least one event"));
    }
    let matchers: Vec<StepMatcher> = req
        .events
        .iter()
        .map(|e| StepMatcher::parse(e))
        .collect::<Result<_, _>>()?;
    let from = req.from.as_deref().map(parse_time_bound).transpose()?;
    let to = req.to.as_deref().map(parse_time_bound).transpose()?;
    let need_path = matchers.iter().any(StepMatcher::needs_path);
    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    let rows = load(
        snap,
        &Load {
            from,
            to,
            dims: if need_path { vec![0, 1] } else { vec![0] },
            keep: Some(Box::new(|kind, v| {
                matchers.iter().any(|m| m.matches_event(kind, v[0], v[1]))
            })),
            persons: only.as_ref(),
        },
    )?;
    let names = rows.dim(0);
    let paths = need_path.then(|| rows.dim(1));
    let groups = match req.by.as_deref() {
        None => None,
        Some(by) => Some(crate::sessions::first_touch(snap, rules, from, to, by)?),
    };
    // Keyed by (period, event, group); the group is "" without a breakdown.
    let mut counts: BTreeMap<(i32, usize, &str), (u64, u64)> = BTreeMap::new();
    let mut totals: BTreeMap<(usize, &str), (u64, u64)> = BTreeMap::new();
    let mut seen: HashSet<(i32, usize)> = HashSet::new();
    let mut seen_total: HashSet<usize> = HashSet::new();
    for r in rows.persons() {
        seen.clear();
        seen_total.clear();
        let group = match &groups {
            Some(g) => g
                .get(&rows.person[r.start])
                .map_or("(none)", String::as_str),
            None => "",
        };
        for i in r {
            let bucket = req.interval.index(rows.ts[i]);
            for (e, m) in matchers.iter().enumerate() {
                if m.matches_event(rows.kind[i], names.get(i), paths.and_then(|p| p.get(i))) {
                    let c = counts.entry((bucket, e, group)).or_default();
                    c.0 += 1;
                    let t = totals.entry((e, group)).or_default();
                    t.0 += 1;
                    if seen.insert((bucket, e)) {
                        c.1 += 1;
                    }
                    if seen_total.insert(e) {
                        t.1 += 1;
                    }
                }
            }
        }
    }
    let group_of = |g: &str| groups.is_some().then(|| g.to_string());
    Ok(TrendsResponse {
        interval: req.interval,
        rows: counts
            .into_iter()
            .map(|((b, e, g), (events, persons))| TrendRow {
                date: req.interval.label(b),
                event: matchers[e].label.clone(),
                group: group_of(g),
                events,
                persons,
            })
            .collect(),
        // Every event has a total row, zero when it never happened.
        totals: (0..matchers.len())
            .flat_map(|e| {
                let mut rows: Vec<TrendRow> = totals
                    .iter()
                    .filter(|((te, _), _)| *te == e)
                    .map(|((_, g), &(events, persons))| TrendRow {
                        date: String::new(),
                        event: matchers[e].label.clone(),
                        group: group_of(g),
                        events,
                        persons,
                    })
                    .collect();
                if rows.is_empty() && groups.is_none() {
                    rows.push(TrendRow {
                        date: String::new(),
                        event: matchers[e].label.clone(),
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
