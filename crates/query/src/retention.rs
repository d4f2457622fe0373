//! `query retention`: cohorts by the period of each person's first start event, and the
//! share who did the return event in each following period.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use throughline_kernels::retention;

use crate::rows::Scan;
use crate::source::Source;
use crate::spec::{parse_time_bound, MaskTable, StepMatcher};
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
    snap: &Source,
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
    let scan = Scan::new(snap, from, to, if need_path { &[0, 1] } else { &[0] })?;
    const START: u64 = 1;
    const RETURN: u64 = 2;
    let masks = MaskTable::new(
        &[(START, &start), (RETURN, &ret)],
        scan.dict(0),
        need_path.then(|| scan.dict(1)),
    );
    struct Part {
        cohorts: BTreeMap<i32, Vec<u64>>,
        returned: Vec<bool>,
        period: Vec<i32>,
        is_start: Vec<bool>,
        is_ret: Vec<bool>,
    }
    let parts = scan.run(
        only.as_ref(),
        |kind, codes| masks.of(kind, codes),
        || Part {
            cohorts: BTreeMap::new(),
            returned: vec![false; req.periods + 1],
            period: Vec::new(),
            is_start: Vec::new(),
            is_ret: Vec::new(),
        },
        |part, r| {
            part.period.clear();
            part.is_start.clear();
            part.is_ret.clear();
            for (&t, &m) in r.ts.iter().zip(r.tag) {
                part.period.push(req.period.index(t));
                part.is_start.push(m & START != 0);
                part.is_ret.push(m & RETURN != 0);
            }
            if let Some(c) = retention::person(
                &part.period,
                &part.is_start,
                &part.is_ret,
                &mut part.returned,
            ) {
                let row = part
                    .cohorts
                    .entry(c)
                    .or_insert_with(|| vec![0; req.periods + 1]);
                for (p, &r) in part.returned.iter().enumerate() {
                    row[p] += u64::from(r);
                }
            }
        },
    )?;
    let mut cohorts: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for part in parts {
        for (c, row) in part.cohorts {
            let into = cohorts.entry(c).or_insert_with(|| vec![0; req.periods + 1]);
            for (a, b) in into.iter_mut().zip(row) {
                *a += b;
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
