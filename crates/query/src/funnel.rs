//! `query funnel`: how many persons reach each step, conversion between steps, time to
//! convert.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_kernels::funnel::{self, Order, Outcome, Spec, EXCLUSION_BIT, STEPS_MAX};
use throughline_model::Millis;

use crate::breakdown::{self, By};
use crate::rows::Scan;
use crate::source::Source;
use crate::spec::{parse_duration, parse_time_bound, MaskTable, StepMatcher};
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
    /// One funnel per value: of the person's first touch in range (channel, source,
    /// medium, source_medium, campaign, content or landing_page), of an event property on
    /// their first step-1 event (`property:NAME`), or of a trait (`person:NAME`).
    #[serde(default)]
    pub by: Option<String>,
    /// With `by`: the values listed, most persons first; the rest are summed as `(other)`.
    #[serde(default)]
    pub by_limit: Option<usize>,
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
    /// With `by`: the funnel of each value, most persons first, then `(other)`.
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
    snap: &Source,
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
    let by = req.by.as_deref().map(By::parse).transpose()?;
    let by_limit = breakdown::limit(req.by_limit)?;
    let n = steps.len();
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

    let need_path = steps.iter().chain(&exclude).any(StepMatcher::needs_path);
    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    let scan = Scan::new(snap, from, to, if need_path { &[0, 1] } else { &[0] })?;
    let bits: Vec<(u64, &StepMatcher)> = steps
        .iter()
        .enumerate()
        .map(|(k, s)| (1u64 << k, s))
        .chain(exclude.iter().map(|x| (EXCLUSION_BIT, x)))
        .collect();
    let masks = MaskTable::new(&bits, scan.dict(0), need_path.then(|| scan.dict(1)));
    // A strict funnel must see every event: any of them interrupts. `KEPT_BIT` keeps a row
    // that matches no step; the kernel reads it as the interruption it is.
    let strict = order == Order::Strict;
    let tag = |kind: u8, codes: &[u32]| -> u64 {
        let m = masks.of(kind, codes);
        if strict {
            m | KEPT_BIT
        } else {
            m
        }
    };
    let filters = Filters::new(snap, &steps, &exclude)?;

    // Who counts under which value: per person, an index into `values`.
    let mut values: Vec<String> = Vec::new();
    let mut group_of: HashMap<u32, u32> = HashMap::new();
    let mut value_index: HashMap<String, u32> = HashMap::new();
    let mut add_value = |v: String| -> u32 {
        *value_index.entry(v.clone()).or_insert_with(|| {
            values.push(v);
            (values.len() - 1) as u32
        })
    };
    match &by {
        None => {}
        Some(By::Touch(attribute)) => {
            for (&p, v) in crate::sessions::first_touch(snap, rules, from, to, attribute)?.iter() {
                let g = add_value(v.clone());
                group_of.insert(p, g);
            }
        }
        Some(By::Person(path)) => {
            for (p, v) in breakdown::person_traits(snap, path)? {
                let g = add_value(v);
                group_of.insert(p, g);
            }
        }
        Some(By::Event(path)) => {
            // The value on each person's first step-1 event in range: find those events
            // (a scan of the step-1 rows alone), then decode only them.
            let firsts = scan.run(
                only.as_ref(),
                |kind, codes| masks.of(kind, codes) & 1,
                Vec::new,
                |seqs: &mut Vec<(u32, u32)>, r| {
                    if let Some(i) = (0..r.ts.len()).find(|&i| filters.keeps(r.seq[i], 1)) {
                        seqs.push((r.person, r.seq[i]));
                    }
                },
            )?;
            let firsts: Vec<(u32, u32)> = firsts.into_iter().flatten().collect();
            let mut seqs: Vec<u32> = firsts.iter().map(|&(_, s)| s).collect();
            seqs.sort_unstable();
            let decoded = breakdown::event_values(snap, &seqs, path)?;
            for (p, seq) in firsts {
                let v = decoded
                    .get(&seq)
                    .cloned()
                    .unwrap_or_else(|| NO_TOUCH.into());
                let g = add_value(v);
                group_of.insert(p, g);
            }
        }
    }
    let none_group = by.is_some().then(|| add_value(NO_TOUCH.to_string()));
    let groups = values.len();

    struct Part {
        total: Tally,
        by_group: Vec<Option<Tally>>,
        drilled: Vec<u32>,
        drilled_total: u64,
        out: Outcome,
        masks: Vec<u64>,
    }
    let keep_drilled = drill.map_or(0, |p| p.offset.saturating_add(p.limit));
    let init = || Part {
        total: Tally::new(n),
        by_group: (0..groups).map(|_| None).collect(),
        drilled: Vec::new(),
        drilled_total: 0,
        out: Outcome::default(),
        masks: Vec::new(),
    };
    let visit = |part: &mut Part, r: &crate::rows::PersonRows| {
        let tags = if filters.is_empty() {
            r.tag
        } else {
            part.masks.clear();
            part.masks.extend(
                r.tag
                    .iter()
                    .zip(r.seq)
                    .map(|(&m, &seq)| filters.apply(seq, m)),
            );
            &part.masks
        };
        funnel::evaluate(&spec, r.ts, tags, &mut part.out);
        part.total.add(&part.out);
        if let Some(p) = drill {
            let hit = if p.status == "converted" {
                part.out.level >= p.step
            } else {
                part.out.level == p.step
            };
            if hit {
                // Only the requested page is kept: memory stays bounded by the page.
                if part.drilled.len() < keep_drilled {
                    part.drilled.push(r.person);
                }
                part.drilled_total += 1;
            }
        }
        if let Some(none) = none_group {
            let g = group_of.get(&r.person).copied().unwrap_or(none) as usize;
            part.by_group[g]
                .get_or_insert_with(|| Tally::new(n))
                .add(&part.out);
        }
    };
    let parts = scan.run(only.as_ref(), tag, init, visit)?;
    let mut total = Tally::new(n);
    let mut by_group: Vec<Tally> = (0..groups).map(|_| Tally::new(n)).collect();
    let mut drilled: Vec<u32> = Vec::new();
    let mut drilled_total = 0u64;
    for part in parts {
        total.merge(part.total);
        for (g, t) in part.by_group.into_iter().enumerate() {
            if let Some(t) = t {
                by_group[g].merge(t);
            }
        }
        drilled.extend(part.drilled);
        drilled_total += part.drilled_total;
    }
    let breakdown = by.as_ref().map(|_| {
        let weights: Vec<u64> = by_group.iter().map(Tally::entered).collect();
        let (slot, names) = breakdown::top(&values, &weights, by_limit);
        let mut listed: Vec<Tally> = names.iter().map(|_| Tally::new(n)).collect();
        for (g, t) in by_group.into_iter().enumerate() {
            if slot[g] != usize::MAX {
                listed[slot[g]].merge(t);
            }
        }
        names
            .into_iter()
            .zip(listed)
            .map(|(value, t)| Breakdown {
                value,
                steps: t.rows(&steps),
            })
            .collect()
    });
    let identity = drill.is_some().then(|| snap.identity()).transpose()?;
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
                .skip(p.offset)
                .take(p.limit)
                .map(|&q| {
                    identity
                        .expect("read for a drill")
                        .canonical_id(q)
                        .to_string()
                })
                .collect(),
        }),
    })
}

/// Marks a kept row of a strict funnel that matches no step (bit 62: steps use 0..62,
/// exclusions bit 63).
const KEPT_BIT: u64 = 1 << 62;

/// The `where` conditions of steps and exclusions: which events (by arrival number) of
/// their names pass. Only events of those names are decoded, once each.
struct Filters {
    /// (the bit of the step, the events that pass its conditions).
    passing: Vec<(u64, HashSet<u32>)>,
}

impl Filters {
    fn new(
        snap: &Source,
        steps: &[StepMatcher],
        exclude: &[StepMatcher],
    ) -> Result<Filters, QueryError> {
        let filtered: Vec<(u64, &StepMatcher)> = steps
            .iter()
            .enumerate()
            .map(|(k, s)| (1u64 << k, s))
            .chain(exclude.iter().map(|x| (EXCLUSION_BIT, x)))
            .filter(|(_, s)| !s.filters.is_empty())
            .collect();
        let mut passing: Vec<(u64, HashSet<u32>)> =
            filtered.iter().map(|&(b, _)| (b, HashSet::new())).collect();
        if filtered.is_empty() {
            return Ok(Filters { passing });
        }
        let wanted = |name: &str| {
            filtered
                .iter()
                .any(|(_, s)| s.needs_path() || s.matches(Some(name), None))
        };
        snap.for_each_event_named(wanted, |seq, e| {
            for (j, (_, s)) in filtered.iter().enumerate() {
                if s.filters.iter().all(|f| f.holds(&e)) {
                    passing[j].1.insert(seq);
                }
            }
            Ok(())
        })?;
        Ok(Filters { passing })
    }

    fn is_empty(&self) -> bool {
        self.passing.is_empty()
    }

    /// The mask without the bits whose conditions this event fails.
    fn apply(&self, seq: u32, mut mask: u64) -> u64 {
        for (bit, pass) in &self.passing {
            if mask & bit != 0 && !pass.contains(&seq) {
                mask &= !bit;
            }
        }
        mask
    }

    /// Whether the event keeps `bit` (one that its name set).
    fn keeps(&self, seq: u32, bit: u64) -> bool {
        self.apply(seq, bit) != 0
    }
}

/// Persons without a visit in range have no first touch.
const NO_TOUCH: &str = breakdown::NONE;

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

    fn merge(&mut self, other: Tally) {
        for (a, b) in self.reached.iter_mut().zip(other.reached) {
            *a += b;
        }
        for (a, b) in self.from_prev.iter_mut().zip(other.from_prev) {
            a.extend(b);
        }
        for (a, b) in self.from_first.iter_mut().zip(other.from_first) {
            a.extend(b);
        }
    }

    /// Persons who reached step 1.
    fn entered(&self) -> u64 {
        self.reached[1..].iter().sum()
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
