//! `query retention`: cohorts by the period of each person's first start event, and the
//! share who did the return event in each following period.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use throughline_kernels::retention;
use throughline_store::Snapshot;

use crate::rows::{load, Load};
use crate::spec::{parse_time_bound, StepMatcher};
use crate::trends::Interval;
use crate::QueryError;

/// Periods at most; a daily table of a year is plenty.
pub const PERIODS_MAX: usize = 400;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRequest {
    pub start: String,
    #[serde(rename = "return")]
    pub return_event: String,
    #[serde(default)]
    pub period: Interval,
    #[serde(default = "default_periods")]
    pub periods: usize,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// Only persons whose first touch in range has these values (see [`crate::filter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::filter::Filter>,
}

fn default_periods() -> usize {
    8
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Cohort {
    pub cohort: String,
    pub size: u64,
    /// Persons returning in period 0..periods (period 0 is the cohort itself).
    pub returning: Vec<u64>,
    pub share: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RetentionResponse {
    pub period: Interval,
    pub cohorts: Vec<Cohort>,
}

pub fn run(
    snap: &Snapshot,
    rules: &throughline_classify::Rules,
    req: &RetentionRequest,
) -> Result<RetentionResponse, QueryError> {
    if req.periods == 0 || req.periods > PERIODS_MAX {
        return Err(QueryError::invalid(format!(
            "periods must be between 1 and {PERIODS_MAX}"
        )));
    }
    let start = StepMatcher::parse(&req.start)?;
    let ret = StepMatcher::parse(&req.return_event)?;
    let from = req.from.as_deref().map(parse_time_bound).transpose()?;
    let to = req.to.as_deref().map(parse_time_bound).transpose()?;
    let need_path = start.needs_path() || ret.needs_path();
    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    let rows = load(
        snap,
        &Load {
            from,
            to,
            dims: if need_path { vec![0, 1] } else { vec![0] },
            keep: Some(Box::new(|kind, v| {
                start.matches_event(kind, v[0], v[1]) || ret.matches_event(kind, v[0], v[1])
            })),
            persons: only.as_ref(),
        },
    )?;
    let names = rows.dim(0);
    let paths = need_path.then(|| rows.dim(1));
    let mut cohorts: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    let mut returned = vec![false; req.periods + 1];
    let (mut period, mut is_start, mut is_ret) = (Vec::new(), Vec::new(), Vec::new());
    for r in rows.persons() {
        period.clear();
        is_start.clear();
        is_ret.clear();
        for i in r {
            let (n, p) = (names.get(i), paths.and_then(|p| p.get(i)));
            period.push(req.period.index(rows.ts[i]));
            is_start.push(start.matches_event(rows.kind[i], n, p));
            is_ret.push(ret.matches_event(rows.kind[i], n, p));
        }
        if let Some(c) = retention::person(&period, &is_start, &is_ret, &mut returned) {
            let row = cohorts.entry(c).or_insert_with(|| vec![0; req.periods + 1]);
            for (p, &r) in returned.iter().enumerate() {
                row[p] += u64::from(r);
            }
        }
    }
    Ok(RetentionResponse {
        period: req.period,
        cohorts: cohorts
            .into_iter()
            .map(|(c, returning)| {
                let size = returning[0];
                Cohort {
                    cohort: req.period.label(c),
                    size,
                    share: returning
                        .iter()
                        .map(|&n| {
                            if size == 0 {
                                0.0
                            } else {
                                n as f64 / size as f64
                            }
                        })
                        .collect(),
                    returning,
                }
            })
            .collect(),
    })
}
