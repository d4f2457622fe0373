//! `query attribution`: which channels, sources, campaigns or assets earn the credit for
//! conversions, under every model of `kernels::attribution`, from stored events or from
//! a path table in ChannelAttribution's format.
//!
//! **A touch is a session** (visits split by inactivity, as `query sessions` splits them),
//! labelled by the `by` attribute of its first event. **A journey** is a person's
//! sessions, across every stitched device, up to and including the session of a
//! conversion and no older than the lookback: the session the conversion happened in (or
//! the latest one started at or before it) and those started after the previous counted
//! conversion. With `conversions: first` each person's first conversion in the range
//! counts; with `all` every one does, so a later campaign never re-credits an earlier
//! purchase. **Null journeys** are the sessions of persons who did not convert in the range
//! (with `all`: also the sessions after a person's last conversion), within the lookback
//! of their last session; only Markov uses them. A conversion with no session within its
//! lookback has no journey: it is counted as unattributed, not credited to anyone.
//!
//! Conversions are counted in `[from, to)`; sessions up to the lookback before `from` are
//! read so the first conversions of the range keep their history.

use std::collections::{HashMap, HashSet};

use rustc_hash::FxHashMap;

use chrono::{DateTime, NaiveDate};
use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_kernels::attribution::{self as kernel, Credit, Heuristic, PathTable, Touch};
use throughline_kernels::sessions;
use throughline_model::Millis;
use throughline_store::NO_VALUE;

use crate::assets::{asset_key, property_path, read_conversions, Registry, RegistryIndex};
use crate::rows::{load, Load, Scan};
use crate::sessions::{is_visit, Attributor, CodePack, SessionTouch, TOUCH_DIMS, TOUCH_KEY_DIMS};
use crate::source::Source;
use crate::spec::{parse_duration, parse_time_bound, MaskTable, StepMatcher};
use crate::spend::Spend;
use crate::QueryError;

/// Every model, in the order `all` lists them.
pub const MODELS: [&str; 8] = [
    "first_touch",
    "last_touch",
    "last_non_direct",
    "linear",
    "time_decay",
    "position_based",
    "markov",
    "shapley",
];
/// What `by` may be.
pub const BY: [&str; 8] = [
    "channel",
    "source",
    "medium",
    "source_medium",
    "campaign",
    "content",
    "landing_page",
    "asset",
];
/// A journey keeps its latest touches up to this many.
pub const JOURNEY_TOUCHES_MAX: usize = 1_000;
/// Rows of the path table returned at most.
pub const PATHS_MAX: usize = 10_000;
/// Distinct paths read from a path table file at most.
pub const PATH_TABLE_ROWS_MAX: usize = 20_000_000;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttributionRequest {
    /// The conversion event: a name, `A|B`, `page:/path`, optionally `where` conditions.
    pub conversion: String,
    /// One of [`MODELS`], a comma-separated list of them, or `all` (the default) for
    /// every model side by side.
    #[serde(default)]
    pub model: Option<String>,
    /// One of [`BY`] (default `channel`).
    #[serde(default)]
    pub by: Option<String>,
    /// How far before a conversion touches still count (default 90d).
    #[serde(default)]
    pub lookback: Option<String>,
    /// A numeric property of the conversion events to credit as value, e.g. `revenue`.
    #[serde(default)]
    pub value: Option<String>,
    /// `first` (default): each person's first conversion in the range; `all`: every one.
    #[serde(default)]
    pub conversions: Option<String>,
    /// Markov order, 1 to 4 (default 1).
    #[serde(default)]
    pub order: Option<usize>,
    /// Time decay half-life (default 7d).
    #[serde(default)]
    pub half_life: Option<String>,
    /// Position-based shares in percent: first, middle, last (default [40, 20, 40]).
    #[serde(default)]
    pub position: Option<Vec<f64>>,
    /// Inactivity that ends a session (default 30m).
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// Also return the top N rows of the path table the models read.
    #[serde(default)]
    pub paths: Option<usize>,
    /// Only persons whose first touch in range has these values (see [`crate::filter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::filter::Filter>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AttributionRow {
    pub key: String,
    pub conversions: f64,
    pub value: f64,
    /// `conversions / total_conversions`.
    pub share: f64,
    /// Spend on this key in the range; null without a spend file naming the dimension.
    pub cost: Option<f64>,
    pub cost_per_conversion: Option<f64>,
    /// Return on ad spend: `value / cost`.
    pub roas: Option<f64>,
    /// Markov only: the share of conversions the chain loses without this key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removal_effect: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelAnswer {
    pub model: String,
    pub by: String,
    pub total_conversions: f64,
    pub total_value: f64,
    pub rows: Vec<AttributionRow>,
    /// Markov only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<usize>,
    /// Markov only: probability that a journey from the start converts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversion_probability: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PathTableRow {
    pub path: Vec<String>,
    pub conversions: f64,
    pub value: f64,
    pub nulls: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AttributionResponse {
    /// The model, or `all`.
    pub model: String,
    pub by: String,
    pub total_conversions: f64,
    pub total_value: f64,
    /// A single model's rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<AttributionRow>>,
    /// With `all`: one answer per model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<ModelAnswer>>,
    /// `first` or `all` (from events), or `table` (from a path table).
    pub conversions: String,
    pub lookback_seconds: Option<f64>,
    /// Conversions without a session in their lookback: in no model's total.
    pub unattributed_conversions: f64,
    pub unattributed_value: f64,
    /// Converting journeys and null journeys read.
    pub journeys: u64,
    pub null_journeys: u64,
    pub distinct_paths: u64,
    /// Spend in the range over every key (also keys without conversions); null without a
    /// spend file naming the dimension.
    pub cost: Option<f64>,
    /// The top rows of the path table, most conversions first, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<PathTableRow>>,
}

/// The models and their settings, parsed once.
#[derive(Clone, Debug)]
pub struct Models {
    pub heuristics: Vec<Heuristic>,
    pub markov_order: Option<usize>,
    pub shapley: bool,
    /// The names in answer order.
    pub names: Vec<&'static str>,
    /// `all` or a list: the answer has one entry per model under `models`.
    pub several: bool,
    /// The request's `model`, echoed in the answer.
    pub label: String,
}

impl Models {
    /// `model` is one of [`MODELS`] or `all`; `table` drops the models a path table
    /// cannot answer from `all` (time decay needs touch times).
    pub fn parse(
        model: Option<&str>,
        order: Option<usize>,
        half_life: Option<&str>,
        position: Option<&[f64]>,
        table: bool,
    ) -> Result<Models, QueryError> {
        let model = model.unwrap_or("all");
        let half_life_ms = parse_duration(half_life.unwrap_or("7d"))?;
        let (first, last) = match position {
            None => (0.4, 0.4),
            Some([f, m, l]) => {
                if [f, m, l].iter().any(|v| !v.is_finite() || **v < 0.0)
                    || ((f + m + l) - 100.0).abs() > 1e-6
                {
                    return Err(QueryError::invalid(
                        "position shares are three non-negative percentages (first, middle, last) adding up to 100, e.g. [40, 20, 40]",
                    ));
                }
                (f / 100.0, l / 100.0)
            }
            Some(_) => {
                return Err(QueryError::invalid(
                    "position takes three percentages: first, middle, last",
                ))
            }
        };
        let order = order.unwrap_or(1);
        if !(1..=kernel::ORDER_MAX).contains(&order) {
            return Err(QueryError::invalid(format!(
                "markov order must be between 1 and {}",
                kernel::ORDER_MAX
            )));
        }
        let names: Vec<&'static str> = if model == "all" {
            MODELS
                .iter()
                .copied()
                .filter(|m| !(table && *m == "time_decay"))
                .collect()
        } else {
            let mut names = Vec::new();
            for m in model.split(',').map(str::trim) {
                match MODELS.iter().find(|x| **x == m) {
                    Some(x) if !names.contains(x) => names.push(*x),
                    Some(_) => {}
                    None => {
                        return Err(QueryError::invalid(format!(
                            "unknown model {m:?}: use one of {}, a comma-separated list of them, or all",
                            MODELS.join(", ")
                        )))
                    }
                }
            }
            names
        };
        if table && names.contains(&"time_decay") {
            return Err(QueryError::invalid(
                "time_decay needs the time of every touch, which a path table does not carry",
            ));
        }
        let heuristics = names
            .iter()
            .filter_map(|n| match *n {
                "first_touch" => Some(Heuristic::FirstTouch),
                "last_touch" => Some(Heuristic::LastTouch),
                "last_non_direct" => Some(Heuristic::LastNonDirect),
                "linear" => Some(Heuristic::Linear),
                "time_decay" => Some(Heuristic::TimeDecay { half_life_ms }),
                "position_based" => Some(Heuristic::PositionBased { first, last }),
                _ => None,
            })
            .collect();
        Ok(Models {
            heuristics,
            markov_order: names.contains(&"markov").then_some(order),
            shapley: names.contains(&"shapley"),
            several: names.len() > 1 || model == "all",
            label: model.to_string(),
            names,
        })
    }
}

/// Journeys as the models read them: interned labels, the distinct paths, and the
/// heuristic credits, which need each journey's own touch times and Direct flags.
struct Journeys {
    labels: Vec<String>,
    ids: FxHashMap<String, Touch>,
    /// The paths in first-seen order (deterministic: the scan's order).
    table: PathTable,
    /// Journeys from events are merged by path; a path table's rows are kept as read.
    merge: bool,
    heuristic: Vec<Credit>,
    journeys: u64,
    null_journeys: u64,
    unattributed: (f64, f64),
    /// Scratch for weights.
    weights: Vec<f64>,
}

impl Journeys {
    fn new(models: &Models) -> Journeys {
        Journeys {
            labels: Vec::new(),
            ids: FxHashMap::default(),
            table: PathTable::default(),
            merge: true,
            heuristic: vec![Credit::new(0); models.heuristics.len()],
            journeys: 0,
            null_journeys: 0,
            unattributed: (0.0, 0.0),
            weights: Vec::new(),
        }
    }

    fn intern(&mut self, label: &str) -> Result<Touch, QueryError> {
        if let Some(&t) = self.ids.get(label) {
            return Ok(t);
        }
        if self.labels.len() >= kernel::LABELS_MAX {
            return Err(too_many_labels());
        }
        let t = self.labels.len() as Touch;
        self.labels.push(label.to_string());
        self.ids.insert(label.to_string(), t);
        for c in &mut self.heuristic {
            c.conversions.push(0.0);
            c.value.push(0.0);
        }
        Ok(t)
    }

    /// One journey (or a path table row of several) that ended in `conversions`
    /// conversions worth `value`, and in `nulls` non-conversions.
    #[allow(clippy::too_many_arguments)]
    fn journey(
        &mut self,
        models: &Models,
        touches: &[Touch],
        direct: &[bool],
        ages: Option<&[Millis]>,
        conversions: f64,
        value: f64,
        nulls: f64,
    ) -> Result<(), QueryError> {
        if conversions > 0.0 || value > 0.0 {
            for (h, credit) in models.heuristics.iter().zip(&mut self.heuristic) {
                h.weights(touches.len(), direct, ages, &mut self.weights)
                    .map_err(|e| QueryError::invalid(e.to_string()))?;
                credit.add(touches, &self.weights, conversions, value);
            }
            self.journeys += 1;
        }
        if nulls > 0.0 {
            self.null_journeys += 1;
        }
        if self.merge {
            self.table.add(touches, conversions, value, nulls);
        } else {
            self.table.push(touches, conversions, value, nulls);
        }
        Ok(())
    }

    /// Runs the models and shapes the answer.
    fn answer(
        self,
        models: &Models,
        by: &str,
        counting: &str,
        lookback: Option<Millis>,
        cost: Option<(std::collections::BTreeMap<String, f64>, f64)>,
        paths_limit: Option<usize>,
    ) -> Result<AttributionResponse, QueryError> {
        let n = self.labels.len();
        let table = self.table;
        let total_conversions: f64 = table.iter().map(|p| p.conversions).sum();
        let total_value: f64 = table.iter().map(|p| p.value).sum();
        let mut heuristic = models.heuristics.iter().zip(self.heuristic);
        let mut answers = Vec::new();
        for &name in &models.names {
            let (credit, removal, probability) = match name {
                "markov" => {
                    let order = models.markov_order.expect("markov has an order");
                    let m = kernel::markov(&table, n, order)
                        .map_err(|e| QueryError::invalid(e.to_string()))?;
                    (
                        m.credit,
                        Some(m.removal_effects),
                        Some(m.conversion_probability),
                    )
                }
                "shapley" => (kernel::shapley(&table, n), None, None),
                _ => {
                    let (h, c) = heuristic.next().expect("one credit per heuristic");
                    debug_assert_eq!(h.name(), name);
                    (c, None, None)
                }
            };
            let mut rows: Vec<AttributionRow> = (0..n)
                .map(|i| {
                    let key = self.labels[i].clone();
                    let conversions = credit.conversions[i];
                    let value = credit.value[i];
                    let c = cost
                        .as_ref()
                        .map(|(by_key, _)| by_key.get(&key).copied().unwrap_or(0.0));
                    AttributionRow {
                        share: if total_conversions > 0.0 {
                            conversions / total_conversions
                        } else {
                            0.0
                        },
                        cost_per_conversion: c
                            .filter(|_| conversions > 0.0)
                            .map(|c| c / conversions),
                        roas: c.filter(|c| *c > 0.0).map(|c| value / c),
                        cost: c,
                        removal_effect: removal.as_ref().map(|r| r[i]),
                        key,
                        conversions,
                        value,
                    }
                })
                .collect();
            rows.sort_by(|a, b| {
                b.conversions
                    .total_cmp(&a.conversions)
                    .then(b.value.total_cmp(&a.value))
                    .then_with(|| a.key.cmp(&b.key))
            });
            answers.push(ModelAnswer {
                model: name.to_string(),
                by: by.to_string(),
                total_conversions,
                total_value,
                rows,
                order: (name == "markov").then_some(models.markov_order.unwrap_or(1)),
                conversion_probability: probability,
            });
        }
        let paths = paths_limit.map(|limit| {
            // Rank indexes, and name only the rows returned.
            let labels = &self.labels;
            let names = |i: usize| table.path(i).iter().map(|&t| labels[t as usize].as_str());
            let rank = |a: &usize, b: &usize| {
                table.conversions[*b]
                    .total_cmp(&table.conversions[*a])
                    .then(table.nulls[*b].total_cmp(&table.nulls[*a]))
                    .then_with(|| names(*a).cmp(names(*b)))
            };
            let mut order: Vec<usize> = (0..table.len()).collect();
            let keep = limit.min(PATHS_MAX).min(order.len());
            if keep < order.len() && keep > 0 {
                order.select_nth_unstable_by(keep - 1, rank);
            }
            order.truncate(keep);
            order.sort_unstable_by(rank);
            order
                .into_iter()
                .map(|i| PathTableRow {
                    path: names(i).map(str::to_string).collect(),
                    conversions: table.conversions[i],
                    value: table.value[i],
                    nulls: table.nulls[i],
                })
                .collect::<Vec<_>>()
        });
        let single = (!models.several).then(|| answers.pop().expect("one model"));
        Ok(AttributionResponse {
            model: models.label.clone(),
            by: by.to_string(),
            total_conversions,
            total_value,
            rows: single.map(|a| a.rows),
            models: models.several.then_some(answers),
            conversions: counting.to_string(),
            lookback_seconds: lookback.map(|l| l as f64 / 1000.0),
            unattributed_conversions: self.unattributed.0,
            unattributed_value: self.unattributed.1,
            journeys: self.journeys,
            null_journeys: self.null_journeys,
            distinct_paths: table.len() as u64,
            cost: cost.map(|(by_key, unkeyed)| by_key.values().sum::<f64>() + unkeyed),
            paths,
        })
    }
}

/// A session as a touch: when it started, its label, whether its channel is Direct.
#[derive(Clone, Copy)]
struct Session {
    start: Millis,
    label: Touch,
    direct: bool,
}

/// What decides a person's journeys besides their rows.
struct Settings {
    timeout: Millis,
    lookback: Millis,
    all_conversions: bool,
    from: Option<Millis>,
    to: Option<Millis>,
}

impl Settings {
    fn in_range(&self, t: Millis) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|e| t < e)
    }
}

fn too_many_labels() -> QueryError {
    QueryError::invalid(format!(
        "more than {} distinct touch labels: attribute by a coarser dimension",
        kernel::LABELS_MAX
    ))
}

/// Touch labels of one part of the persons, numbered in first-seen order.
#[derive(Default)]
struct Labels {
    names: Vec<String>,
    ids: FxHashMap<String, Touch>,
}

impl Labels {
    fn id(&mut self, name: String) -> Result<Touch, QueryError> {
        if let Some(&t) = self.ids.get(&name) {
            return Ok(t);
        }
        if self.names.len() >= kernel::LABELS_MAX {
            return Err(too_many_labels());
        }
        let t = self.names.len() as Touch;
        self.names.push(name.clone());
        self.ids.insert(name, t);
        Ok(t)
    }
}

/// How a logged journey ends.
#[derive(Clone, Copy)]
enum End {
    /// In the conversion with this arrival number; `touched: false` when no session lay
    /// within its lookback (an unattributed conversion, with no touches).
    Conversion { seq: u32, touched: bool },
    /// In no conversion.
    Null,
}

/// The journeys of one part of the persons (a scan thread's range, or every person of the
/// table), in person order, their touches numbered by the part's [`Labels`]: what the
/// models read once the parts are done and the conversions' values known ([`replay`]).
#[derive(Default)]
struct Part {
    labels: Labels,
    /// Per journey: where its touches end in `touches` (and `direct`, `ages`), its end.
    journeys: Vec<(usize, End)>,
    touches: Vec<Touch>,
    direct: Vec<bool>,
    ages: Vec<Millis>,
    // Per person, reused.
    visits: Vec<usize>,
    visit_ts: Vec<Millis>,
    sessions: Vec<Session>,
    convs: Vec<usize>,
}

impl Part {
    /// One person's journeys from their rows in (time, arrival) order: `visit(i)` and
    /// `converts(i)` say what row `i` is (a conversion already checked against the range
    /// and the conditions), `label` names the session whose first row is `i`.
    fn person(
        &mut self,
        s: &Settings,
        ts: &[Millis],
        seq: impl Fn(usize) -> u32,
        visit: impl Fn(usize) -> bool,
        converts: impl Fn(usize) -> bool,
        mut label: impl FnMut(&mut Labels, usize) -> Result<(Touch, bool), QueryError>,
    ) -> Result<(), QueryError> {
        let Part {
            labels,
            journeys,
            touches,
            direct,
            ages,
            visits,
            visit_ts,
            sessions: person_sessions,
            convs,
        } = self;
        visits.clear();
        visits.extend((0..ts.len()).filter(|&i| visit(i)));
        visit_ts.clear();
        visit_ts.extend(visits.iter().map(|&i| ts[i]));
        person_sessions.clear();
        let mut failed = None;
        sessions::split(visit_ts, s.timeout, |a, _| {
            if failed.is_some() {
                return;
            }
            let first = visits[a];
            match label(labels, first) {
                Ok((label, direct)) => person_sessions.push(Session {
                    start: ts[first],
                    label,
                    direct,
                }),
                Err(e) => failed = Some(e),
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        convs.clear();
        convs.extend((0..ts.len()).filter(|&i| converts(i)));
        if !s.all_conversions {
            convs.truncate(1);
        }
        let mut previous: Option<Millis> = None;
        for &c in convs.iter() {
            let t = ts[c];
            // Sessions are in start order, so those of a journey are one run of them:
            // started at or before the conversion (the latest is its session), within the
            // lookback and after the previous counted conversion; at least its session.
            let k = person_sessions.partition_point(|x| x.start <= t);
            let oldest = t.saturating_sub(s.lookback);
            let lo = person_sessions[..k]
                .partition_point(|x| x.start < oldest || previous.is_some_and(|p| x.start <= p));
            let chosen = match lo < k {
                true => lo..k,
                false => match k.checked_sub(1) {
                    Some(j) if person_sessions[j].start >= oldest => j..k,
                    _ => k..k,
                },
            };
            previous = Some(t);
            if chosen.is_empty() {
                journeys.push((
                    touches.len(),
                    End::Conversion {
                        seq: seq(c),
                        touched: false,
                    },
                ));
                continue;
            }
            let keep = chosen.len().saturating_sub(JOURNEY_TOUCHES_MAX);
            for x in &person_sessions[chosen.start + keep..chosen.end] {
                touches.push(x.label);
                direct.push(x.direct);
                ages.push(t - x.start);
            }
            journeys.push((
                touches.len(),
                End::Conversion {
                    seq: seq(c),
                    touched: true,
                },
            ));
        }
        // What led nowhere: everything of a person without a counted conversion, or with
        // `all`, what came after their last one; within the lookback of its last session.
        let rest: &[Session] = match (convs.last(), s.all_conversions) {
            (None, _) => person_sessions,
            (Some(&c), true) => {
                &person_sessions[person_sessions.partition_point(|x| x.start <= ts[c])..]
            }
            (Some(_), false) => &[],
        };
        if let Some(last) = rest.last() {
            let oldest = last.start.saturating_sub(s.lookback);
            let start = touches.len();
            for x in rest
                .iter()
                .filter(|x| x.start >= oldest && s.in_range(x.start))
            {
                touches.push(x.label);
                direct.push(x.direct);
                ages.push(0);
            }
            let n = touches.len() - start;
            if n > 0 {
                // The latest touches only, as for a conversion's journey.
                let keep = n.saturating_sub(JOURNEY_TOUCHES_MAX);
                if keep > 0 {
                    touches.drain(start..start + keep);
                    direct.drain(start..start + keep);
                    ages.drain(start..start + keep);
                }
                journeys.push((touches.len(), End::Null));
            }
        }
        Ok(())
    }
}

/// The parts' journeys, in order, as the models' input: labels renumbered by name in
/// first-seen order over the parts (the numbering one pass over every person gives, since
/// a part's persons all precede the next part's), values by arrival number.
fn replay(
    parts: &[Part],
    models: &Models,
    values: &HashMap<u32, f64>,
) -> Result<Journeys, QueryError> {
    let mut journeys = Journeys::new(models);
    let mut buf: Vec<Touch> = Vec::new();
    for part in parts {
        let ids = part
            .labels
            .names
            .iter()
            .map(|l| journeys.intern(l))
            .collect::<Result<Vec<Touch>, QueryError>>()?;
        let mut start = 0;
        for &(end, how) in &part.journeys {
            buf.clear();
            buf.extend(part.touches[start..end].iter().map(|&t| ids[t as usize]));
            match how {
                End::Conversion { seq, touched } => {
                    let value = values.get(&seq).copied().unwrap_or(0.0);
                    if touched {
                        journeys.journey(
                            models,
                            &buf,
                            &part.direct[start..end],
                            Some(&part.ages[start..end]),
                            1.0,
                            value,
                            0.0,
                        )?;
                    } else {
                        journeys.unattributed.0 += 1.0;
                        journeys.unattributed.1 += value;
                    }
                }
                End::Null => journeys.journey(models, &buf, &[], None, 0.0, 0.0, 1.0)?,
            }
            start = end;
        }
    }
    Ok(journeys)
}

/// What names a session's label: `by`, and the registry for assets.
struct Labeller<'r> {
    by: &'r str,
    registry: &'r Registry,
    index: RegistryIndex,
}

impl Labeller<'_> {
    /// The label of a session from its classified touch (for the channel's attributes),
    /// its landing path, or the asset its content, campaign or landing path names.
    fn name(
        &self,
        touch: Option<&SessionTouch>,
        path: Option<&str>,
        campaign: Option<&str>,
        content: Option<&str>,
    ) -> String {
        match self.by {
            "landing_page" => path.unwrap_or("(not set)").to_string(),
            "asset" => {
                let key = asset_key(content, campaign, path);
                match self.index.resolve(&key) {
                    Some(i) => self.registry.assets[i].id.clone(),
                    None => key.value,
                }
            }
            other => touch
                .expect("labels by channel attributes classify")
                .value(other),
        }
    }
}

/// Attribution from the project's events.
pub fn run(
    snap: &Source,
    rules: &Rules,
    registry: &Registry,
    spend: &Spend,
    req: &AttributionRequest,
) -> Result<AttributionResponse, QueryError> {
    run_with(snap, rules, registry, spend, req, true)
}

/// [`run`], with `scan: false` over the table of every visit (what the scan must equal).
fn run_with(
    snap: &Source,
    rules: &Rules,
    registry: &Registry,
    spend: &Spend,
    req: &AttributionRequest,
    scan: bool,
) -> Result<AttributionResponse, QueryError> {
    let models = Models::parse(
        req.model.as_deref(),
        req.order,
        req.half_life.as_deref(),
        req.position.as_deref(),
        false,
    )?;
    let by = req.by.as_deref().unwrap_or("channel");
    if !BY.contains(&by) {
        return Err(QueryError::invalid(format!(
            "unknown attribute {by:?}: use one of {}",
            BY.join(", ")
        )));
    }
    let counting = req.conversions.as_deref().unwrap_or("first");
    if counting != "first" && counting != "all" {
        return Err(QueryError::invalid(format!(
            "conversions must be first or all, not {counting:?}"
        )));
    }
    let lookback = parse_duration(req.lookback.as_deref().unwrap_or("90d"))?;
    let settings = Settings {
        timeout: parse_duration(req.timeout.as_deref().unwrap_or("30m"))?,
        lookback,
        all_conversions: counting == "all",
        from: req.from.as_deref().map(parse_time_bound).transpose()?,
        to: req.to.as_deref().map(parse_time_bound).transpose()?,
    };
    let (from, to) = (settings.from, settings.to);
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(QueryError::invalid("`from` must be before `to`"));
        }
    }
    let conversion = StepMatcher::parse(&req.conversion)?;
    let value_path = req.value.as_deref().map(property_path).transpose()?;

    // The columns a touch needs: its channel's (UTM, referrer, click id) only when the
    // label or GA4's last-non-direct rule reads the channel.
    let classify =
        !matches!(by, "landing_page" | "asset") || models.names.contains(&"last_non_direct");
    let dims: &[usize] = if classify {
        &TOUCH_DIMS
    } else if by == "asset" {
        &[0, 1, 4, 5]
    } else {
        &[0, 1]
    };
    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    // Conditions on the conversion need its decoded event (which then gives the value
    // too); a value alone comes from the number columns, for the counted conversions only.
    let filtered = match conversion.filters.is_empty() {
        true => HashMap::new(),
        false => read_conversions(snap, &conversion, value_path.as_deref(), from, to)?,
    };
    let labeller = Labeller {
        by,
        registry,
        index: registry.index(),
    };
    let journeys = JourneyPass {
        snap,
        rules,
        settings: &settings,
        only: only.as_ref(),
        conversion: &conversion,
        filtered: &filtered,
        classify,
        dims,
        labeller: &labeller,
    };
    let scanned = match scan {
        true => journeys.scan()?,
        false => None,
    };
    let parts = match scanned {
        Some(parts) => parts,
        None => vec![journeys.loaded()?],
    };
    let valued;
    let values = match &value_path {
        Some(path) if conversion.filters.is_empty() => {
            let mut counted: Vec<u32> = parts
                .iter()
                .flat_map(|p| &p.journeys)
                .filter_map(|(_, end)| match end {
                    End::Conversion { seq, .. } => Some(*seq),
                    End::Null => None,
                })
                .collect();
            // Arrival numbers ascend within a person, not across persons: sort them.
            counted.sort_unstable();
            counted.dedup();
            valued = crate::values::values_at(snap, path, &counted)?;
            &valued
        }
        _ => &filtered,
    };
    let journeys = replay(&parts, &models, values)?;

    let day = |t: Option<Millis>| -> Option<NaiveDate> {
        t.and_then(DateTime::from_timestamp_millis)
            .map(|d| d.date_naive())
    };
    // Spend days: those of the range; a `to` mid-day keeps that day's spend.
    let to_day = to.map(|t| t + 86_400_000 - 1);
    let cost = spend.cost_by(by, day(from), day(to_day));
    journeys.answer(&models, by, counting, Some(lookback), cost, req.paths)
}

/// The pass from events to journeys, as a scan or over the table.
struct JourneyPass<'q, 's, 'a> {
    snap: &'q Source<'s, 'a>,
    rules: &'q Rules,
    settings: &'q Settings,
    only: Option<&'q HashSet<u32>>,
    conversion: &'q StepMatcher,
    /// The conversions meeting the conversion's conditions, when it has any.
    filtered: &'q HashMap<u32, f64>,
    /// Whether sessions are classified (their channel read).
    classify: bool,
    dims: &'q [usize],
    labeller: &'q Labeller<'q>,
}

impl JourneyPass<'_, '_, '_> {
    /// Sessions up to a lookback before the range, so the range's first conversions keep
    /// their history.
    fn touches_from(&self) -> Option<Millis> {
        self.settings
            .from
            .map(|f| f.saturating_sub(self.settings.lookback))
    }

    fn counts(&self, seq: u32) -> bool {
        self.conversion.filters.is_empty() || self.filtered.contains_key(&seq)
    }

    /// The journeys over the table of every visit and conversion, in one part.
    fn loaded(&self) -> Result<Part, QueryError> {
        let conversion = self.conversion;
        let rows = load(
            self.snap,
            &Load {
                from: self.touches_from(),
                to: self.settings.to,
                dims: self.dims.to_vec(),
                keep: Some(Box::new(|kind, v| {
                    is_visit(kind, v[1].is_some()) || conversion.matches_event(kind, v[0], v[1])
                })),
                // Memoized per distinct (name, path).
                keep_reads: Some(vec![0, 1]),
                persons: self.only,
            },
        )?;
        let paths = rows.dim(1);
        let matching = rows.matching(conversion);
        let mut attributor = Attributor::new(self.rules);
        // Labels by what decides them: the touch, then the path, campaign and content codes.
        let mut cache: FxHashMap<(usize, [u32; 3]), (Touch, bool)> = FxHashMap::default();
        let code = |d: usize, row: usize| rows.dims[d].as_ref().map_or(NO_VALUE, |c| c.codes[row]);
        let get = |d: usize, row: usize| rows.dims[d].as_ref().and_then(|c| c.get(row));
        let mut part = Part::default();
        for r in rows.persons() {
            let base = r.start;
            part.person(
                self.settings,
                &rows.ts[r.clone()],
                |i| rows.seq[base + i],
                |i| is_visit(rows.kind[base + i], paths.codes[base + i] != NO_VALUE),
                |i| {
                    let i = base + i;
                    matching[i] && self.settings.in_range(rows.ts[i]) && self.counts(rows.seq[i])
                },
                |labels, i| {
                    let row = base + i;
                    let t = self.classify.then(|| attributor.attribute(&rows, row));
                    let key = (t.unwrap_or(usize::MAX), [1, 4, 5].map(|d| code(d, row)));
                    if let Some(&l) = cache.get(&key) {
                        return Ok(l);
                    }
                    let touch = t.map(|t| attributor.touch(t));
                    let name = self
                        .labeller
                        .name(touch, get(1, row), get(4, row), get(5, row));
                    let l = (
                        labels.id(name)?,
                        touch.is_some_and(|t| t.channel == "Direct"),
                    );
                    cache.insert(key, l);
                    Ok(l)
                },
            )?;
        }
        Ok(part)
    }

    /// The journeys as one streaming scan, persons in parallel, one part per thread, where
    /// what labels a session fits the scan tag ([`CodePack`]): bit 0 marks a visit (with
    /// the codes of its touch, landing path, campaign and content, as the label reads
    /// them), bit 63 a conversion. `None` when the codes do not fit.
    fn scan(&self) -> Result<Option<Vec<Part>>, QueryError> {
        const CONVERSION_BIT: u64 = 1 << 63;
        let scan = Scan::new(self.snap, self.touches_from(), self.settings.to, self.dims)?;
        let at = |d: usize| self.dims.iter().position(|&x| x == d);
        // What the label reads, by position in `dims`: the touch's codes (in
        // `TOUCH_KEY_DIMS` order), then the path, campaign and content.
        let mut read: Vec<usize> = Vec::new();
        if self.classify {
            read.extend(
                TOUCH_KEY_DIMS
                    .iter()
                    .map(|&d| at(d).expect("a touch dimension")),
            );
        }
        match self.labeller.by {
            "landing_page" => read.push(1),
            "asset" => read.extend([1, at(4).expect("campaign"), at(5).expect("content")]),
            _ => {}
        }
        let Some(pack) = CodePack::new(&read, |j| scan.dict(j).len()) else {
            return Ok(None);
        };
        let touch_dicts: [&[String]; 6] = std::array::from_fn(|k| match self.classify {
            true => scan.dict(k + 2),
            false => &[],
        });
        let converts = MaskTable::new(&[(1, self.conversion)], scan.dict(0), Some(scan.dict(1)));
        let tag = |kind: u8, codes: &[u32]| -> u64 {
            let visit = match is_visit(kind, codes[1] != NO_VALUE) {
                true => pack.pack(codes),
                false => 0,
            };
            visit | (converts.of(kind, codes) << 63)
        };
        /// A thread's state: its part, the label of each visit tag seen, the first error.
        struct State<'r> {
            attributor: Attributor<'r>,
            labels: FxHashMap<u64, (Touch, bool)>,
            part: Part,
            failed: Option<QueryError>,
        }
        let string = |j: usize, c: u32| (c != NO_VALUE).then(|| scan.dict(j)[c as usize].as_str());
        let states = scan.run(
            self.only,
            tag,
            || State {
                attributor: Attributor::new(self.rules),
                labels: FxHashMap::default(),
                part: Part::default(),
                failed: None,
            },
            |state: &mut State, r| {
                if state.failed.is_some() {
                    return;
                }
                let State {
                    attributor,
                    labels: cache,
                    part,
                    failed,
                } = state;
                let done = part.person(
                    self.settings,
                    r.ts,
                    |i| r.seq[i],
                    |i| r.tag[i] & 1 != 0,
                    |i| {
                        r.tag[i] & CONVERSION_BIT != 0
                            && self.settings.in_range(r.ts[i])
                            && self.counts(r.seq[i])
                    },
                    |labels, i| {
                        let key = r.tag[i] & !CONVERSION_BIT;
                        if let Some(&l) = cache.get(&key) {
                            return Ok(l);
                        }
                        let codes = pack.unpack(key);
                        let touch = self
                            .classify
                            .then(|| attributor.attribute_dicts(&codes, &touch_dicts))
                            .map(|t| attributor.touch(t));
                        // The path, campaign and content follow the touch's six codes.
                        let rest = &codes[if self.classify { 6 } else { 0 }..];
                        let (path, campaign, content) = match self.labeller.by {
                            "landing_page" => (string(1, rest[0]), None, None),
                            "asset" => (
                                string(1, rest[0]),
                                string(read[read.len() - 2], rest[1]),
                                string(read[read.len() - 1], rest[2]),
                            ),
                            _ => (None, None, None),
                        };
                        let name = self.labeller.name(touch, path, campaign, content);
                        let l = (
                            labels.id(name)?,
                            touch.is_some_and(|t| t.channel == "Direct"),
                        );
                        cache.insert(key, l);
                        Ok(l)
                    },
                );
                if let Err(e) = done {
                    *failed = Some(e);
                }
            },
        )?;
        let mut parts = Vec::with_capacity(states.len());
        for s in states {
            if let Some(e) = s.failed {
                return Err(e);
            }
            parts.push(s.part);
        }
        Ok(Some(parts))
    }
}

/// Attribution from a path table in ChannelAttribution's format: `;`-separated columns
/// `path` (touches separated by `>`), `total_conversions`, and optionally
/// `total_conversion_value` and `total_null`, under a header naming them.
pub fn run_table(
    input: impl std::io::Read,
    source: &str,
    model: Option<&str>,
    order: Option<usize>,
    position: Option<&[f64]>,
    paths: Option<usize>,
) -> Result<AttributionResponse, QueryError> {
    let models = Models::parse(model, order, None, position, true)?;
    let mut journeys = Journeys::new(&models);
    journeys.merge = false;
    // The header line decides the delimiter: ChannelAttribution's files use `;`.
    let mut input = std::io::BufReader::with_capacity(1 << 20, input);
    let mut first = Vec::new();
    std::io::BufRead::read_until(&mut input, b'\n', &mut first)
        .map_err(|e| QueryError::invalid(format!("{source}: {e}")))?;
    let first = first
        .strip_prefix("\u{feff}".as_bytes())
        .unwrap_or(&first)
        .to_vec();
    let delimiter = if first.contains(&b';') { b';' } else { b',' };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .trim(csv::Trim::All)
        .from_reader(std::io::Read::chain(first.as_slice(), input));
    let header = reader
        .headers()
        .map_err(|e| QueryError::invalid(format!("{source}: {e}")))?
        .clone();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(path_col), Some(conv_col)) = (col("path"), col("total_conversions")) else {
        return Err(QueryError::invalid(format!(
            "{source}: the header must name `path` and `total_conversions` (and optionally `total_conversion_value`, `total_null`), separated by `;`"
        )));
    };
    let (value_col, null_col) = (col("total_conversion_value"), col("total_null"));
    let mut touches: Vec<Touch> = Vec::new();
    let mut direct: Vec<bool> = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let line = n + 2;
        if n >= PATH_TABLE_ROWS_MAX {
            return Err(QueryError::invalid(format!(
                "{source}: more than {PATH_TABLE_ROWS_MAX} paths"
            )));
        }
        let record = record.map_err(|e| QueryError::invalid(format!("{source}:{line}: {e}")))?;
        let number = |col: Option<usize>, name: &str| -> Result<f64, QueryError> {
            match col.map(|c| record.get(c).unwrap_or("")) {
                None | Some("") => Ok(0.0),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| {
                        QueryError::invalid(format!(
                            "{source}:{line}: {name} {v:?} is not a non-negative number"
                        ))
                    }),
            }
        };
        let conversions = number(Some(conv_col), "total_conversions")?;
        let value = number(value_col, "total_conversion_value")?;
        let nulls = number(null_col, "total_null")?;
        touches.clear();
        direct.clear();
        for label in record[path_col]
            .split('>')
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            touches.push(journeys.intern(label)?);
            direct.push(label.eq_ignore_ascii_case("direct") || label == "(direct)");
        }
        if touches.is_empty() {
            journeys.unattributed.0 += conversions;
            journeys.unattributed.1 += value;
            continue;
        }
        let keep = touches.len().saturating_sub(JOURNEY_TOUCHES_MAX);
        let (t, d) = (&touches[keep..], &direct[keep..]);
        journeys.journey(&models, t, d, None, conversions, value, nulls)?;
    }
    journeys.answer(&models, "path", "table", None, None, paths)
}

/// The path table the models read, as ChannelAttribution's CSV input
/// (`path;total_conversions;total_conversion_value;total_null`, touches joined by ` > `),
/// most conversions first. A `>` inside a label would split it, so it is written `-`.
pub fn channelattribution_csv(rows: &[PathTableRow]) -> String {
    let mut w = csv::WriterBuilder::new()
        .delimiter(b';')
        .from_writer(Vec::new());
    let _ = w.write_record([
        "path",
        "total_conversions",
        "total_conversion_value",
        "total_null",
    ]);
    let num = |v: f64| {
        if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v}")
        }
    };
    for r in rows {
        let path = r
            .path
            .iter()
            .map(|l| l.replace('>', "-"))
            .collect::<Vec<_>>()
            .join(" > ");
        let _ = w.write_record([path, num(r.conversions), num(r.value), num(r.nulls)]);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::tests::journey_store;

    /// The streaming journeys give the answer the table of every visit gives, to the bit:
    /// by every kind of label, with `first` and `all` conversions, a range, a value and
    /// conditions, on stores of several segments and the log, with devices stitched into
    /// persons, ties in time and conversions that are also visits.
    #[test]
    fn the_scanned_journeys_equal_the_loaded_ones() {
        let registry = Registry::from_toml(
            "[[asset]]\nid = \"hero-ad\"\nkind = \"ad\"\n\
             destination_url = \"https://shop.example/lp/a?utm_content=hero\"\n",
            "t.toml",
        )
        .unwrap();
        for seed in 1..=3u64 {
            let (p, dir) = journey_store("attr-scan", seed);
            let snap = p.snapshot();
            let src = Source::from(&snap);
            let rules = Rules::ga4_default();
            let spend = Spend::default();
            let mut compared = 0;
            for by in BY {
                for (model, conversions, conversion, value, range) in [
                    ("all", "first", "Order", Some("revenue"), None),
                    (
                        "all",
                        "all",
                        "Order",
                        Some("revenue"),
                        Some((12_000, 30_000)),
                    ),
                    (
                        "linear,markov",
                        "all",
                        "Order where tier = 'gold'",
                        Some("revenue"),
                        None,
                    ),
                    (
                        "first_touch",
                        "first",
                        "page:/products/*",
                        None,
                        Some((5000, 40_000)),
                    ),
                ] {
                    let req = AttributionRequest {
                        conversion: conversion.into(),
                        model: Some(model.into()),
                        by: Some(by.into()),
                        lookback: Some("20s".into()),
                        value: value.map(str::to_string),
                        conversions: Some(conversions.into()),
                        timeout: Some("4s".into()),
                        from: range.map(|r: (i64, i64)| throughline_model::format_ms(r.0)),
                        to: range.map(|r| throughline_model::format_ms(r.1)),
                        paths: Some(1000),
                        ..Default::default()
                    };
                    let scanned = run_with(&src, &rules, &registry, &spend, &req, true).unwrap();
                    let loaded = run_with(&src, &rules, &registry, &spend, &req, false).unwrap();
                    assert!(
                        loaded.journeys > 3 && loaded.null_journeys > 3,
                        "{} {} {req:?}",
                        loaded.journeys,
                        loaded.null_journeys
                    );
                    assert_eq!(
                        serde_json::to_string(&scanned).unwrap(),
                        serde_json::to_string(&loaded).unwrap(),
                        "seed {seed} {req:?}"
                    );
                    compared += 1;
                }
            }
            assert_eq!(compared, BY.len() * 4);
            drop(snap);
            drop(p);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    const TABLE: &str = "path;total_conversions;total_conversion_value;total_null\n\
        a > b;3;30;2\n\
        b;1;5;4\n\
        a > c > b;2;100;1\n\
        c;0;0;5\n\
        a > a > c;1;1;1\n";

    fn run_text(
        text: &str,
        source: &str,
        model: Option<&str>,
        order: Option<usize>,
        position: Option<&[f64]>,
        paths: Option<usize>,
    ) -> Result<AttributionResponse, QueryError> {
        run_table(text.as_bytes(), source, model, order, position, paths)
    }

    fn model<'a>(r: &'a AttributionResponse, name: &str) -> &'a ModelAnswer {
        r.models
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.model == name)
            .unwrap()
    }

    fn credit(m: &ModelAnswer, key: &str) -> f64 {
        m.rows
            .iter()
            .find(|r| r.key == key)
            .map_or(0.0, |r| r.conversions)
    }

    #[test]
    fn a_path_table_answers_every_model_but_time_decay() {
        let r = run_text(TABLE, "t", None, None, None, Some(10)).unwrap();
        let names: Vec<&str> = r
            .models
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.model.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "first_touch",
                "last_touch",
                "last_non_direct",
                "linear",
                "position_based",
                "markov",
                "shapley"
            ]
        );
        assert_eq!(r.total_conversions, 7.0);
        assert_eq!(r.total_value, 136.0);
        for m in r.models.as_ref().unwrap() {
            let sum: f64 = m.rows.iter().map(|r| r.conversions).sum();
            assert!((sum - 7.0).abs() < 1e-9, "{} credits {sum}", m.model);
        }
        let first = model(&r, "first_touch");
        assert_eq!(credit(first, "a"), 6.0);
        assert_eq!(credit(first, "b"), 1.0);
        // linear: a > b 3 -> 1.5 each; b 1; a > c > b 2 -> 2/3 each; a > a > c 1 -> 2/3 a.
        let linear = model(&r, "linear");
        assert!((credit(linear, "a") - (1.5 + 2.0 / 3.0 + 2.0 / 3.0)).abs() < 1e-9);
        assert!((credit(linear, "c") - (2.0 / 3.0 + 1.0 / 3.0)).abs() < 1e-9);
        // Markov order 1 on this table, solved by hand elsewhere and checked against
        // ChannelAttribution: removal effects a 1/2, b 6/7, c 31/91.
        let markov = model(&r, "markov");
        let re = |k: &str| {
            markov
                .rows
                .iter()
                .find(|r| r.key == k)
                .unwrap()
                .removal_effect
                .unwrap()
        };
        assert!((re("a") - 0.5).abs() < 1e-9);
        assert!((re("b") - 6.0 / 7.0).abs() < 1e-9);
        assert!((re("c") - 31.0 / 91.0).abs() < 1e-9);
        assert_eq!(r.paths.as_ref().unwrap()[0].path, ["a", "b"]);
        assert_eq!(r.distinct_paths, 5);
    }

    #[test]
    fn the_table_round_trips_through_channelattribution_csv() {
        let r = run_text(TABLE, "t", Some("linear"), None, None, Some(100)).unwrap();
        let csv = channelattribution_csv(r.paths.as_ref().unwrap());
        let again = run_text(&csv, "t2", Some("linear"), None, None, Some(100)).unwrap();
        assert_eq!(r.rows, again.rows);
        assert!(
            csv.starts_with(
                "path;total_conversions;total_conversion_value;total_null\na > b;3;30;2\n"
            ),
            "{csv}"
        );
    }

    #[test]
    fn bad_tables_and_settings_get_clear_errors() {
        let err = |r: Result<AttributionResponse, QueryError>| r.unwrap_err().to_string();
        assert!(err(run_text("p;q\n", "t", None, None, None, None)).contains("must name `path`"));
        assert!(err(run_text(
            "path;total_conversions\na;x\n",
            "t",
            None,
            None,
            None,
            None
        ))
        .contains("t:2"));
        assert!(
            err(run_text(TABLE, "t", Some("time_decay"), None, None, None))
                .contains("time of every touch")
        );
        assert!(
            err(run_text(TABLE, "t", Some("magic"), None, None, None)).contains("unknown model")
        );
        assert!(err(run_text(TABLE, "t", Some("markov"), Some(7), None, None)).contains("order"));
        assert!(err(run_text(
            TABLE,
            "t",
            Some("position_based"),
            None,
            Some(&[50.0, 10.0, 50.0]),
            None
        ))
        .contains("adding up to 100"));
    }

    #[test]
    fn a_list_of_models_answers_each_in_the_order_given() {
        let r = run_text(TABLE, "t", Some("markov, linear,markov"), None, None, None).unwrap();
        assert_eq!(r.model, "markov, linear,markov");
        let names: Vec<&str> = r
            .models
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.model.as_str())
            .collect();
        assert_eq!(names, ["markov", "linear"]);
        assert!(r.rows.is_none());
        let err = run_text(TABLE, "t", Some("linear,nope"), None, None, None).unwrap_err();
        assert!(err.to_string().contains("unknown model \"nope\""), "{err}");
    }

    #[test]
    fn position_shares_are_configurable() {
        let r = run_text(
            "path;total_conversions\na > b > c;10\n",
            "t",
            Some("position_based"),
            None,
            Some(&[30.0, 10.0, 60.0]),
            None,
        )
        .unwrap();
        let rows = r.rows.unwrap();
        let get = |k: &str| rows.iter().find(|r| r.key == k).unwrap().conversions;
        assert!((get("a") - 3.0).abs() < 1e-9);
        assert!((get("b") - 1.0).abs() < 1e-9);
        assert!((get("c") - 6.0).abs() < 1e-9);
    }

    #[test]
    fn last_non_direct_reads_direct_labels_in_a_table() {
        let r = run_text(
            "path;total_conversions\nEmail > Direct;2\nDirect;1\n",
            "t",
            Some("last_non_direct"),
            None,
            None,
            None,
        )
        .unwrap();
        let rows = r.rows.unwrap();
        assert_eq!(rows[0].key, "Email");
        assert_eq!(rows[0].conversions, 2.0);
        assert_eq!(rows[1].key, "Direct");
        assert_eq!(rows[1].conversions, 1.0);
    }
}
