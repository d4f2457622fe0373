//! The funnel both ways on ClickHouse, to measure which is faster: compiled to SQL
//! (`windowFunnel`, per person on each shard) or by streaming each person's sorted rows
//! into Throughline's own funnel kernel.
//!
//! The SQL is what 18.16 runs: `windowFunnel(window)` with one parameter (no strict modes
//! there), UInt32 timestamps, so time is in whole seconds (the kernel uses milliseconds:
//! they agree whenever no step pair is within a second of the window's edge). When no
//! person's rows are split across shards (no pending override) the per-person aggregation
//! runs on each shard alone (`distributed_group_by_no_merge`): a person's events are on
//! one shard, so nothing is shuffled; otherwise partial states merge on the initiator.

use std::time::Instant;

use throughline_kernels::funnel::{evaluate, Order, Outcome, Spec};
use throughline_model::{Millis, DIM_COUNT};

use crate::client::quote;
use crate::rowbinary::Reader;
use crate::schema::Target;
use crate::source::{RowRequest, Source};
use crate::ClickHouseError;

/// Persons who reached each step (step k: at least k+1 steps in order within the window),
/// and how long the answer took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FunnelCounts {
    pub engine: &'static str,
    pub persons: Vec<u64>,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

/// The `windowFunnel` statement for simple steps (event names).
pub fn funnel_sql(
    target: &Target,
    project: &str,
    steps: &[String],
    window_ms: Millis,
    from: Option<Millis>,
    to: Option<Millis>,
) -> String {
    let p = quote(project);
    let conds: Vec<String> = steps
        .iter()
        .map(|s| format!("assumeNotNull(name) = {}", quote(s)))
        .collect();
    let names: Vec<String> = steps.iter().map(|s| quote(s)).collect();
    let mut range = String::new();
    if let Some(f) = from {
        range.push_str(&format!(" AND ts >= {f}"));
    }
    if let Some(t) = to {
        range.push_str(&format!(" AND ts < {t}"));
    }
    format!(
        "SELECT level, count() FROM (\
           SELECT if(o = 1, np, person) AS rp, \
                  windowFunnel({window})(toUInt32(intDiv(ts, 1000)), {conds}) AS level \
           FROM {events} GLOBAL ANY LEFT JOIN (\
             SELECT old_person AS person, argMax(override_person, version) AS np, toUInt8(1) AS o \
             FROM {overrides} WHERE project = {p} GROUP BY old_person\
           ) USING person \
           WHERE project = {p} AND name IN ({names}){range} GROUP BY rp\
         ) GROUP BY level ORDER BY level FORMAT RowBinary",
        window = (window_ms / 1000).max(1),
        conds = conds.join(", "),
        names = names.join(", "),
        events = target.table("events"),
        overrides = target.table("person_overrides"),
    )
}

/// Levels to "persons who reached step k" (cumulative from the deepest step).
fn cumulative(levels: &[(usize, u64)], steps: usize) -> Vec<u64> {
    let mut at = vec![0u64; steps + 1];
    for &(l, n) in levels {
        at[l.min(steps)] += n;
    }
    let mut out = vec![0u64; steps];
    let mut acc = 0;
    for k in (1..=steps).rev() {
        acc += at[k];
        out[k - 1] = acc;
    }
    out
}

/// Runs the compiled funnel.
pub fn funnel_by_sql(
    target: &Target,
    project: &str,
    steps: &[String],
    window_ms: Millis,
    from: Option<Millis>,
    to: Option<Millis>,
) -> Result<FunnelCounts, ClickHouseError> {
    let started = Instant::now();
    let sql = funnel_sql(target, project, steps, window_ms, from, to);
    let colocated = target.cluster.is_some()
        && target.client.query_text(&format!(
            "SELECT count() FROM {} WHERE project = {}",
            target.table("person_overrides"),
            quote(project)
        ))? == "0";
    let settings: &[(&str, &str)] = if colocated {
        &[("distributed_group_by_no_merge", "1")]
    } else {
        &[]
    };
    let bytes = target.client.query_bytes_with(&sql, settings)?;
    let mut r = Reader::new(&bytes[..]);
    let mut levels = Vec::new();
    while !r.at_end()? {
        let level = r.u8()? as usize;
        let n = r.u64()?;
        levels.push((level, n));
    }
    Ok(FunnelCounts {
        engine: "sql",
        persons: cumulative(&levels, steps.len()),
        seconds: started.elapsed().as_secs_f64(),
        sql: Some(sql),
    })
}

/// Streams the steps' rows sorted by person and runs the kernel on each person.
pub fn funnel_by_stream(
    source: &Source,
    steps: &[String],
    window_ms: Millis,
    from: Option<Millis>,
    to: Option<Millis>,
) -> Result<FunnelCounts, ClickHouseError> {
    let started = Instant::now();
    let keep =
        |_: u8, v: &[Option<&str>; DIM_COUNT]| v[0].is_some_and(|n| steps.iter().any(|s| s == n));
    let rows = source.rows(&RowRequest {
        from,
        to,
        dims: vec![0],
        keep: Some(&keep),
        persons: None,
    })?;
    let names = rows.dim(0);
    let mask_of: Vec<u64> = names
        .dict
        .iter()
        .map(|n| {
            steps
                .iter()
                .enumerate()
                .filter(|(_, s)| *s == n)
                .fold(0u64, |m, (k, _)| m | 1 << k)
        })
        .collect();
    let spec = Spec::new(steps.len(), window_ms, Order::Ordered);
    let mut reached = vec![0u64; steps.len()];
    let mut out = Outcome::default();
    let mut masks = Vec::new();
    for r in rows.persons() {
        masks.clear();
        masks.extend(r.clone().map(|i| {
            let c = names.codes[i];
            mask_of.get(c as usize).copied().unwrap_or(0)
        }));
        evaluate(&spec, &rows.ts[r], &masks, &mut out);
        for slot in reached.iter_mut().take(out.level) {
            *slot += 1;
        }
    }
    Ok(FunnelCounts {
        engine: "stream",
        persons: reached,
        seconds: started.elapsed().as_secs_f64(),
        sql: None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn levels_become_persons_per_step() {
        assert_eq!(
            super::cumulative(&[(0, 5), (1, 3), (3, 2)], 3),
            vec![5, 2, 2]
        );
    }
}
