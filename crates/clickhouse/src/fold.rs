//! Folding identity overrides into the events, as PostHog squashes person_overrides: the
//! rows of each merged-away person are rewritten under the person they were merged into,
//! which puts them on that person's shard, and the override is then deleted.
//!
//! Why this keeps a person on one shard: events are sharded by their stored person; a
//! merge can join two persons whose events sit on different shards, and until the fold
//! queries resolve the stored person through `person_overrides` (the answers are right,
//! the rows just live apart). After the fold every row's stored person is its person
//! today, so a person's rows share one shard again. A merged-away person never receives
//! new events (new events carry the person of their node at forwarding time), so the set
//! of rows to move is closed and the fold can run while ingestion goes on.
//!
//! Each step is safe to repeat: (1) copy the rows under the new person (a second copy is
//! the same row again, deduplicated by `seq`), (2) delete the old rows on every shard and
//! wait, (3) delete the overrides. Between (1) and (2) queries see both copies resolve to
//! one person and drop the repeat; an interrupted fold is finished by the next one. Only
//! overrides behind the forwarder's cursor are folded: a batch not yet acknowledged may
//! be sent again, overrides first, and must find its overrides still there.

use crate::client::quote;
use crate::rowbinary::Reader;
use crate::schema::{event_columns, Target};
use crate::ClickHouseError;

/// Merged-away persons folded per round, which bounds each statement's size.
pub const FOLD_PERSONS_MAX: usize = 50_000;
/// How long one round waits for the deletions to finish.
const MUTATION_WAIT_MS: u64 = 600_000;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FoldReport {
    pub persons: u64,
    pub rounds: u64,
}

/// Folds every override of `project` written before arrival number `horizon` (the
/// forwarder's cursor: overrides of a batch not yet acknowledged may be re-sent with its
/// events, so they wait for the next fold), or every override when `None` (nothing is
/// being forwarded).
pub fn fold(
    target: &Target,
    project: &str,
    horizon: Option<u64>,
) -> Result<FoldReport, ClickHouseError> {
    let mut report = FoldReport::default();
    loop {
        let pairs = overridden(target, project, horizon)?;
        if pairs.is_empty() {
            return Ok(report);
        }
        report.rounds += 1;
        report.persons += pairs.len() as u64;
        let list = pairs
            .iter()
            .map(|(p, _)| p.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let targets = pairs
            .iter()
            .map(|(_, n)| n.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let p = quote(project);
        let columns = event_columns();
        // The new person as a literal mapping: no join, whose ANY semantics changed
        // between 18.16 and current releases.
        let new_person = format!("transform(person, [{list}], [{targets}], person)");
        let select: Vec<&str> = columns
            .iter()
            .map(|c| {
                if *c == "person" {
                    new_person.as_str()
                } else {
                    c
                }
            })
            .collect();
        // (1) Copies under the person of today, through the Distributed table: each lands
        // on its new person's shard.
        let settings: Vec<(&str, &str)> = target
            .insert_settings()
            .iter()
            .copied()
            .chain([("max_query_size", "268435456")])
            .collect();
        target.client.query_bytes_with(
            &format!(
                "INSERT INTO {events} ({cols}) SELECT {select} FROM {events} \
                 WHERE project = {p} AND person IN ({list})",
                events = target.table("events"),
                cols = columns.join(", "),
                select = select.join(", "),
            ),
            &settings,
        )?;
        // (2) The old rows, on every shard.
        target.on_every_shard(&format!(
            "ALTER TABLE {}{{on_cluster}} DELETE WHERE project = {p} AND person IN ({list})",
            target.local_table("events")
        ))?;
        target.wait_mutations(MUTATION_WAIT_MS)?;
        // (3) The overrides: no row carries those persons any more.
        target.on_every_shard(&format!(
            "ALTER TABLE {}{{on_cluster}} DELETE WHERE project = {p} AND old_person IN ({list})",
            target.local_table("person_overrides")
        ))?;
        target.wait_mutations(MUTATION_WAIT_MS)?;
    }
}

/// Up to [`FOLD_PERSONS_MAX`] persons that have an override, with the person each now is.
fn overridden(
    target: &Target,
    project: &str,
    horizon: Option<u64>,
) -> Result<Vec<(u32, u32)>, ClickHouseError> {
    let before = horizon.map_or(String::new(), |h| format!(" AND max(version) < {h}"));
    let bytes = target.client.query_bytes(&format!(
        // An override to itself (a person erased back into separate nodes) moves nothing.
        "SELECT old_person, argMax(override_person, version) AS np FROM {} WHERE project = {} \
         GROUP BY old_person HAVING np != old_person{before} \
         ORDER BY old_person LIMIT {FOLD_PERSONS_MAX} FORMAT RowBinary",
        target.table("person_overrides"),
        quote(project)
    ))?;
    let mut r = Reader::new(&bytes[..]);
    let mut out = Vec::new();
    while !r.at_end()? {
        let old = r.u32()?;
        out.push((old, r.u32()?));
    }
    Ok(out)
}
