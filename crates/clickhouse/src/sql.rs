//! The funnel both ways on ClickHouse, to measure which is faster: compiled to SQL
//! (`windowFunnel`, per person on each shard) or by streaming each person's sorted rows
//! into Throughline's own funnel kernel.
//!
//! The SQL is what 18.16 runs: `windowFunnel(window)` with one parameter (no strict modes
//! there) over UInt32 timestamps: milliseconds since the steps' first event when their
//! span fits (49 days), else whole seconds (then the kernel, which counts milliseconds,
//! can differ for step pairs within a second of the window's edge or of each other). When no
//! person's rows are split across shards (no pending override) each shard answers for its
//! own persons: a person's events are on one shard, so nothing is shuffled.

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

/// The `windowFunnel` statement for simple steps (event names). `table` is the events
/// table to read; `overrides` the overrides table to resolve persons through, if any.
///
/// 18.16's `windowFunnel` depends on the order its rows arrive in (rows of one person from
/// two parts can give a lower level than the same rows in time order; current releases
/// sort inside), so the rows go in sorted by person and time.
#[allow(clippy::too_many_arguments)]
pub fn funnel_sql(
    table: &str,
    overrides: Option<&str>,
    project: &str,
    steps: &[String],
    window_ms: Millis,
    from: Option<Millis>,
    to: Option<Millis>,
    base_ms: Option<Millis>,
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
    // Milliseconds since `base` when the range fits UInt32 (49 days), else seconds.
    let (t, window) = match base_ms {
        Some(b) => (format!("toUInt32(ts - {b})"), window_ms.max(1)),
        None => (
            "toUInt32(intDiv(ts, 1000))".to_string(),
            (window_ms / 1000).max(1),
        ),
    };
    let (person, join) = match overrides {
        Some(o) => (
            "if(o = 1, np, person)",
            format!(
                " GLOBAL ANY LEFT JOIN (\
                   SELECT old_person AS person, argMax(override_person, version) AS np, toUInt8(1) AS o \
                   FROM {o} WHERE project = {p} GROUP BY old_person\
                 ) AS ov USING person"
            ),
        ),
        None => ("person", String::new()),
    };
    format!(
        "SELECT level, count() FROM (\
           SELECT rp, windowFunnel({window})(t, {conds}) AS level FROM (\
             SELECT {person} AS rp, {t} AS t, name FROM {table}{join} \
             WHERE project = {p} AND name IN ({names}){range} ORDER BY rp, ts, seq\
           ) GROUP BY rp\
         ) GROUP BY level ORDER BY level FORMAT RowBinary",
        window = window,
        conds = conds.join(", "),
        names = names.join(", "),
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

fn levels(bytes: &[u8]) -> Result<Vec<(usize, u64)>, ClickHouseError> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while !r.at_end()? {
        let level = r.u8()? as usize;
        let n = r.u64()?;
        out.push((level, n));
    }
    Ok(out)
}

/// Runs the compiled funnel. On a cluster whose persons are all on one shard (no override
/// pending a fold) each shard's server answers for its own persons, in parallel, and the
/// counts add up: no row leaves its shard. Otherwise one statement resolves persons
/// through the overrides and the initiator aggregates.
pub fn funnel_by_sql(
    target: &Target,
    project: &str,
    steps: &[String],
    window_ms: Millis,
    from: Option<Millis>,
    to: Option<Millis>,
) -> Result<FunnelCounts, ClickHouseError> {
    let started = Instant::now();
    let pending: u64 = target
        .client
        .query_text(&format!(
            "SELECT count() FROM {} WHERE project = {}",
            target.table("person_overrides"),
            quote(project)
        ))?
        .parse()
        .map_err(|_| ClickHouseError::Decode("an override count".into()))?;
    // The steps' time span: within UInt32 milliseconds, time is exact to the millisecond
    // (and ties within a second, which releases order differently, cannot happen).
    let mut range = String::new();
    if let Some(f) = from {
        range.push_str(&format!(" AND ts >= {f}"));
    }
    if let Some(t) = to {
        range.push_str(&format!(" AND ts < {t}"));
    }
    let names: Vec<String> = steps.iter().map(|s| quote(s)).collect();
    let span = target.client.query_text(&format!(
        "SELECT min(ts), max(ts) FROM {} WHERE project = {} AND name IN ({}){range} FORMAT TSV",
        target.table("events"),
        quote(project),
        names.join(", ")
    ))?;
    let mut it = span
        .split('\t')
        .map(|v| v.trim().parse::<i64>().unwrap_or(0));
    let (lo, hi) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    let base = (hi - lo < u32::MAX as i64 && window_ms < u32::MAX as i64).then_some(lo);
    let mut all = Vec::new();
    let sql;
    if target.cluster.is_some() && !target.shards.is_empty() && pending == 0 {
        sql = funnel_sql(
            &target.local_table("events"),
            None,
            project,
            steps,
            window_ms,
            from,
            to,
            base,
        );
        let answers: Vec<Result<Vec<u8>, ClickHouseError>> = std::thread::scope(|s| {
            let handles: Vec<_> = target
                .shards
                .iter()
                .map(|c| s.spawn(|| c.query_bytes(&sql)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("shard query thread"))
                .collect()
        });
        for a in answers {
            all.extend(levels(&a?)?);
        }
    } else {
        let overrides = target.table("person_overrides");
        sql = funnel_sql(
            &target.table("events"),
            (pending > 0).then_some(overrides.as_str()),
            project,
            steps,
            window_ms,
            from,
            to,
            base,
        );
        all = levels(&target.client.query_bytes(&sql)?)?;
    }
    Ok(FunnelCounts {
        engine: "sql",
        persons: cumulative(&all, steps.len()),
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
