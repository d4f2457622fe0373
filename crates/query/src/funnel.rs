//! `query funnel`: how many persons reach each step, conversion between steps, time to
//! convert.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_kernels::funnel::{self, Order, Outcome, Spec, EXCLUSION_BIT, STEPS_MAX};
use throughline_model::Millis;
use throughline_store::Snapshot;

use crate::rows::{load, Load};
use crate::spec::{parse_duration, parse_time_bound, StepMatcher};
use crate::QueryError;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelRequest {
    /// Event names; `A|B` for either; `page:/path/*` for page views by path.
    pub steps: Vec<String>,
    /// Conversion window from the first step, e.g. `7d`.
    #[serde(default = "default_window")]
    pub window: String,
    /// `ordered` (default), `strict` or `unordered`.
    #[serde(default)]
    pub order: Option<String>,
    /// Events that abandon an attempt when they happen between two steps.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Per step (from the second), a window from the previous step, e.g. `["1h", null]`.
    #[serde(default)]
    pub step_windows: Vec<Option<String>>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// One funnel per value of the person's first touch in range: channel, source,
    /// medium, source_medium, campaign, content or landing_page.
    #[serde(default)]
    pub by: Option<String>,
    /// Drill-down: list the persons who converted at a step or dropped after it.
    #[serde(default)]
    pub persons: Option<PersonsRequest>,
    /// Only persons whose first touch in range has these values (see [`crate::filter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::filter::Filter>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PersonsRequest {
    /// 1-based step.
    pub step: usize,
    /// `converted` (reached at least this step) or `dropped` (reached it, not the next).
    #[serde(default = "default_status")]
    pub status: String,
    #[serde(default)]
    pub offset: usize,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_status() -> String {
    "converted".into()
}

fn default_limit() -> usize {
    100
}

/// Persons listed per page at most.
pub const PERSONS_PAGE_MAX: usize = 1000;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PersonsPage {
    pub step: usize,
    pub status: String,
    pub total: u64,
    pub offset: usize,
    /// Each person's id; `GET /api/v1/projects/{project}/persons/{id}` (or `throughline
    /// profile --id`) shows their timeline.
    pub person_ids: Vec<String>,
}

fn default_window() -> String {
    "7d".into()
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FunnelResponse {
    pub order: String,
    pub window_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub steps: Vec<StepRow>,
    /// With `by`: the funnel of each value, most persons first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<Vec<Breakdown>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persons: Option<PersonsPage>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Breakdown {
    pub value: String,
    pub steps: Vec<StepRow>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StepRow {
    pub name: String,
    /// Persons who reached at least this step.
    pub persons: u64,
    pub conversion_from_previous: Option<f64>,
    pub conversion_from_first: Option<f64>,
    /// Median time from the previous step, for persons who reached this one.
    pub median_seconds_to_convert: Option<f64>,
    /// Median time from the first step.
    pub median_seconds_from_first: Option<f64>,
    pub time_to_convert_histogram: Vec<Bucket>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bucket {
    /// Upper bound in seconds; `null` for the last, open bucket.
    pub le_seconds: Option<u64>,
    pub persons: u64,
}

const HISTOGRAM_SECONDS: [u64; 9] = [
    60, 300, 900, 3600, 21_600, 86_400, 259_200, 604_800, 2_592_000,
];

pub fn run(
    snap: &Snapshot,
    rules: &Rules,
    req: &FunnelRequest,
) -> Result<FunnelResponse, QueryError> {
    if req.steps.is_empty() {
        return Err(QueryError::invalid("a funnel needs at least one step"));
    }
    if req.steps.len() > STEPS_MAX {
        return Err(QueryError::invalid(format!(
            "a funnel has at most {STEPS_MAX} steps"
        )));
    }
    let order = match req.order.as_deref().unwrap_or("ordered") {
        "ordered" => Order::Ordered,
        "strict" => Order::Strict,
        "unordered" => Order::Unordered,
        other => {
            return Err(QueryError::invalid(format!(
                "unknown order {other:?}: use ordered, strict or unordered"
            )))
        }
    };
    let window = parse_duration(&req.window)?;
    let from = req.from.as_deref().map(parse_time_bound).transpose()?;
    let to = req.to.as_deref().map(parse_time_bound).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(QueryError::invalid("`from` must be before `to`"));
        }
    }
    let steps: Vec<StepMatcher> = req
        .steps
        .iter()
        .map(|s| StepMatcher::parse(s))
        .collect::<Result<_, _>>()?;
    let exclude: Vec<StepMatcher> = req
        .exclude
        .iter()
        .map(|s| StepMatcher::parse(s))
        .collect::<Result<_, _>>()?;
    let mut spec = Spec::new(steps.len(), window, order);
    if req.step_windows.len() >= steps.len() {
        return Err(QueryError::invalid(
            "step_windows has one entry per step after the first",
        ));
    }
    for (k, w) in req.step_windows.iter().enumerate() {
        spec.step_windows[k + 1] = w.as_deref().map(parse_duration).transpose()?;
    }

    let need_path = steps.iter().chain(&exclude).any(StepMatcher::needs_path);
    let mask_of = |kind: u8, name: Option<&str>, path: Option<&str>| -> u64 {
        let mut m = 0u64;
        for (k, s) in steps.iter().enumerate() {
            if s.matches_event(kind, name, path) {
                m |= 1 << k;
            }
        }
        if exclude.iter().any(|x| x.matches_event(kind, name, path)) {
            m |= EXCLUSION_BIT;
        }
        m
    };
    let strict = order == Order::Strict;
    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    let rows = load(
        snap,
        &Load {
            from,
            to,
            dims: if need_path { vec![0, 1] } else { vec![0] },
            // A strict funnel must see every event: any of them interrupts.
            keep: (!strict).then(|| {
                Box::new(
                    move |kind: u8, v: &[Option<&str>; throughline_model::DIM_COUNT]| {
                        mask_of(kind, v[0], v[1]) != 0
                    },
                )
                    as Box<
                        dyn Fn(u8, &[Option<&str>; throughline_model::DIM_COUNT]) -> bool
                            + Send
                            + Sync,
                    >
            }),
            persons: only.as_ref(),
        },
    )?;
    // Masks per distinct (type, name, path): matching strings once, not once per row.
    let names = rows.dim(0);
    let paths = need_path.then(|| rows.dim(1));
    // Without path steps the mask depends on (type, name) only: a dense table by name code.
    let mut dense: Vec<Option<u64>> = if paths.is_none() {
        vec![None; 8 * (names.dict.len() + 1)]
    } else {
        Vec::new()
    };
    let mut cache: HashMap<(u8, u32, u32), u64> = HashMap::new();
    let mut masks: Vec<u64> = (0..rows.len())
        .map(|i| {
            let compute = || mask_of(rows.kind[i], names.get(i), paths.and_then(|p| p.get(i)));
            if paths.is_none() {
                let code = if names.codes[i] == throughline_store::NO_VALUE {
                    names.dict.len()
                } else {
                    names.codes[i] as usize
                };
                let slot = (rows.kind[i] as usize % 8) * (names.dict.len() + 1) + code;
                *dense[slot].get_or_insert_with(compute)
            } else {
                let key = (
                    rows.kind[i],
                    names.codes[i],
                    paths.map_or(0, |p| p.codes[i]),
                );
                *cache.entry(key).or_insert_with(compute)
            }
        })
        .collect();

    apply_filters(snap, &rows, &steps, &exclude, &mut masks)?;

    let n = steps.len();
    let groups = match req.by.as_deref() {
        None => None,
        Some(by) => Some(crate::sessions::first_touch(snap, rules, from, to, by)?),
    };
    let drill = match &req.persons {
        None => None,
        Some(p) => {
            if p.step == 0 || p.step > n {
                return Err(QueryError::invalid(format!(
                    "persons.step must be between 1 and {n}"
                )));
            }
            if !matches!(p.status.as_str(), "converted" | "dropped") {
                return Err(QueryError::invalid(
                    "persons.status is `converted` or `dropped`",
                ));
            }
            if p.limit > PERSONS_PAGE_MAX {
                return Err(QueryError::invalid(format!(
                    "persons.limit is at most {PERSONS_PAGE_MAX}"
                )));
            }
            Some(p)
        }
    };
    let mut drilled: Vec<u32> = Vec::new();
    let mut drilled_total = 0u64;
    let mut total = Tally::new(n);
    let mut by_group: HashMap<&str, Tally> = HashMap::new();
    let mut out = Outcome::default();
    for r in rows.persons() {
        funnel::evaluate(&spec, &rows.ts[r.clone()], &masks[r.clone()], &mut out);
        total.add(&out);
        if let Some(p) = drill {
            let hit = if p.status == "converted" {
                out.level >= p.step
            } else {
                out.level == p.step
            };
            if hit {
                // Only the requested page is kept: memory stays bounded by the page size.
                if drilled_total as usize >= p.offset && drilled.len() < p.limit {
                    drilled.push(rows.person[r.start]);
                }
                drilled_total += 1;
            }
        }
        if let Some(g) = &groups {
            let value = g
                .get(&rows.person[r.start])
                .map_or(NO_TOUCH, String::as_str);
            by_group
                .entry(value)
                .or_insert_with(|| Tally::new(n))
                .add(&out);
        }
    }
    let breakdown = groups.as_ref().map(|_| {
        let mut rows: Vec<Breakdown> = by_group
            .into_iter()
            .map(|(value, t)| Breakdown {
                value: value.to_string(),
                steps: t.rows(&steps),
            })
            .filter(|b| b.steps[0].persons > 0)
            .collect();
        rows.sort_by(|a, b| {
            b.steps[0]
                .persons
                .cmp(&a.steps[0].persons)
                .then(a.value.cmp(&b.value))
        });
        rows.truncate(BREAKDOWN_VALUES_MAX);
        rows
    });
    Ok(FunnelResponse {
        order: req.order.clone().unwrap_or_else(|| "ordered".into()),
        window_seconds: window as f64 / 1000.0,
        by: req.by.clone(),
        steps: total.rows(&steps),
        breakdown,
        persons: drill.map(|p| PersonsPage {
            step: p.step,
            status: p.status.clone(),
            total: drilled_total,
            offset: p.offset,
            person_ids: drilled
                .iter()
                .map(|&q| snap.identity().canonical_id(q).to_string())
                .collect(),
        }),
    })
}

/// Clears the step bits of events that match a step's name but fail its `where`
/// conditions. Only events of those steps' names are decoded, once each.
fn apply_filters(
    snap: &Snapshot,
    rows: &crate::rows::Rows,
    steps: &[StepMatcher],
    exclude: &[StepMatcher],
    masks: &mut [u64],
) -> Result<(), QueryError> {
    let filtered: Vec<(u64, &StepMatcher)> = steps
        .iter()
        .enumerate()
        .map(|(k, s)| (1u64 << k, s))
        .chain(exclude.iter().map(|x| (EXCLUSION_BIT, x)))
        .filter(|(_, s)| !s.filters.is_empty())
        .collect();
    if filtered.is_empty() {
        return Ok(());
    }
    let mut passing: Vec<std::collections::HashSet<u32>> = vec![Default::default(); filtered.len()];
    let wanted = |name: &str| {
        filtered
            .iter()
            .any(|(_, s)| s.needs_path() || s.matches(Some(name), None))
    };
    snap.for_each_event_named(wanted, |seq, e| {
        for (j, (_, s)) in filtered.iter().enumerate() {
            if s.filters.iter().all(|f| f.holds(&e)) {
                passing[j].insert(seq);
            }
        }
        Ok(())
    })?;
    for (i, m) in masks.iter_mut().enumerate() {
        for (j, (bit, _)) in filtered.iter().enumerate() {
            if *m & bit != 0 && !passing[j].contains(&rows.seq[i]) {
                *m &= !bit;
            }
        }
    }
    Ok(())
}

/// Persons without a visit in range have no first touch.
const NO_TOUCH: &str = "(none)";
/// Breakdown values listed, most persons first.
pub const BREAKDOWN_VALUES_MAX: usize = 50;

/// The per-step counts and conversion times of a set of persons.
struct Tally {
    reached: Vec<u64>,
    from_prev: Vec<Vec<u32>>,
    from_first: Vec<Vec<u32>>,
}

impl Tally {
    fn new(n: usize) -> Tally {
        Tally {
            reached: vec![0; n + 1],
            from_prev: vec![Vec::new(); n],
            from_first: vec![Vec::new(); n],
        }
    }

    fn add(&mut self, out: &Outcome) {
        self.reached[out.level] += 1;
        for (k, &(start, prev, at)) in out.at.iter().enumerate().skip(1) {
            self.from_prev[k].push(secs(at - prev));
            self.from_first[k].push(secs(at - start));
        }
    }

    fn rows(mut self, steps: &[StepMatcher]) -> Vec<StepRow> {
        let n = steps.len();
        // persons[k] = reached at least k + 1 steps.
        let mut persons = vec![0u64; n];
        let mut acc = 0;
        for k in (0..n).rev() {
            acc += self.reached[k + 1];
            persons[k] = acc;
        }
        (0..n)
            .map(|k| StepRow {
                name: steps[k].label.clone(),
                persons: persons[k],
                conversion_from_previous: (k > 0)
                    .then(|| ratio(persons[k], persons[k - 1]))
                    .flatten(),
                conversion_from_first: ratio(persons[k], persons[0]),
                median_seconds_to_convert: median(&mut self.from_prev[k]),
                median_seconds_from_first: median(&mut self.from_first[k]),
                time_to_convert_histogram: if k == 0 {
                    Vec::new()
                } else {
                    histogram(&self.from_prev[k])
                },
            })
            .collect()
    }
}

fn secs(ms: Millis) -> u32 {
    (ms.max(0) / 1000).min(u32::MAX as i64) as u32
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn median(v: &mut [u32]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m] as f64
    } else {
        (v[m - 1] as f64 + v[m] as f64) / 2.0
    })
}

fn histogram(v: &[u32]) -> Vec<Bucket> {
    let mut counts = vec![0u64; HISTOGRAM_SECONDS.len() + 1];
    for &s in v {
        let b = HISTOGRAM_SECONDS
            .iter()
            .position(|&le| s as u64 <= le)
            .unwrap_or(HISTOGRAM_SECONDS.len());
        counts[b] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, persons)| Bucket {
            le_seconds: HISTOGRAM_SECONDS.get(i).copied(),
            persons,
        })
        .collect()
}
