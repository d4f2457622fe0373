//! GDPR erasure on the ClickHouse backend: what the forwarder records before it erases,
//! and the deletions on every shard.
//!
//! The forwarder runs an erasure in its own order (crates/clickhouse/src/forward.rs):
//!
//! ```text
//! 1. roll the outbox        every record queued before the request lies in files that
//!                           end there; later ones go to a new file
//! 2. forward up to the roll ClickHouse has everything before it, nothing of it waits
//! 3. find the person        in the forwarder's graph, which has seen exactly those
//!                           records: every node they hold (all devices, ids, emails)
//! 4. embedded store         a migrated project's old copy loses the same persons
//! 5. ERASE                  the nodes, the event count and the audit entry, durable:
//!                           from here the erasure finishes, also after a crash
//! 6. graph + checkpoint     the nodes forgotten, a fresh identity-*.bin, older ones gone
//! 7. outbox files retired   every file before the roll (hashes kept for dedupe)
//! 8. ALTER ... DELETE       events, identities, overrides on every shard's local tables;
//!                           wait for system.mutations, then count what is left (zero)
//! 9. audit log, then ERASE removed
//! ```
//!
//! A crash before 5 erased nothing the caller was told about (no answer was sent), and
//! what 4 did is redone as a no-op by the retry. From 5 on each step repeats harmlessly:
//! forgetting an erased node again changes nothing, deleting rows that are gone deletes
//! nothing, and the audit entry is appended only if the log does not hold it yet. The
//! forwarder forwards nothing while an ERASE is pending, so an event for the person that
//! arrives meanwhile is either before the roll (erased) or after it (observed by a graph
//! that forgot the person's ids, so it starts a new person): never half.
//!
//! Why the outbox is rolled rather than rewritten: its records never change once written,
//! so a reader (the forwarder, a backup copying the directory) never sees a record change
//! under it; rolling ends the file the person's payloads may be in, and files behind both
//! the cursor and the identity checkpoint are deleted whole, as forwarding does anyway.
//!
//! What stays: message-id hashes (so an SDK retry of an erased event is a duplicate, not
//! a resurrection, as in the embedded store), node numbers (taken, with no id), and, for
//! ClickHouse's own `old_parts_lifetime` (8 minutes by default), the inactive parts a
//! mutation replaced, which no query reads. The pending record names nodes by number and
//! the person only by the SHA-256 of the id given.

use std::path::Path;

use serde::{Deserialize, Serialize};
use throughline_store::audit::AuditEntry;

use crate::client::quote;
use crate::outbox::{read_json, write_atomic};
use crate::schema::Target;
use crate::ClickHouseError;

/// `DIR/projects/NAME/clickhouse/ERASE`: the erasure being finished, if any.
pub const ERASE_FILE: &str = "ERASE";
/// How long one round waits for ClickHouse's mutations.
const MUTATION_WAIT_MS: u64 = 600_000;
/// How long a round waits for the deleted rows to be gone where the mutations of some
/// shards cannot be watched (distributed DDL without the shards' own URLs).
const GONE_WAIT_MS: u64 = 30_000;
/// Rounds of deletions before an erasure reports that rows keep coming back (something
/// else, such as a concurrent `clickhouse fold`, copied them meanwhile).
const ROUNDS_MAX: usize = 5;

/// An erasure that must finish: written before anything is erased, removed at the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingErasure {
    /// Every identity node of the person (their devices, user id, emails).
    pub nodes: Vec<u32>,
    /// Events ClickHouse held for them when the erasure began: the answer's count.
    pub events: u64,
    /// The audit log's entry, written once at the end.
    pub audit: AuditEntry,
}

pub fn read_pending(dir: &Path) -> Result<Option<PendingErasure>, ClickHouseError> {
    read_json(&dir.join(ERASE_FILE))
}

pub fn write_pending(dir: &Path, p: &PendingErasure) -> Result<(), ClickHouseError> {
    write_atomic(
        &dir.join(ERASE_FILE),
        &serde_json::to_vec(p).expect("erasures serialize"),
    )
}

pub fn clear_pending(dir: &Path) -> Result<(), ClickHouseError> {
    let path = dir.join(ERASE_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => crate::outbox::sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ClickHouseError::io(&path, e)),
    }
}

fn list(nodes: &[u32]) -> String {
    nodes
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each table's rows of the nodes, as a condition on its local table.
fn conditions(nodes: &[u32]) -> [(&'static str, String); 3] {
    let l = list(nodes);
    [
        ("events", format!("node IN ({l})")),
        ("identities", format!("node IN ({l})")),
        (
            "person_overrides",
            format!("old_person IN ({l}) OR override_person IN ({l})"),
        ),
    ]
}

/// Distinct events ClickHouse holds under these nodes.
pub fn count_events(target: &Target, project: &str, nodes: &[u32]) -> Result<u64, ClickHouseError> {
    if nodes.is_empty() {
        return Ok(0);
    }
    target
        .client
        .query_text(&format!(
            "SELECT uniqExact(seq) FROM {} WHERE project = {} AND node IN ({})",
            target.table("events"),
            quote(project),
            list(nodes)
        ))?
        .parse()
        .map_err(|_| ClickHouseError::Decode("an event count".into()))
}

/// Rows of the nodes still readable in any table (`FINAL` or not: a mutation rewrites
/// every part, so plain counts see what `FINAL` would).
pub fn remaining_rows(
    target: &Target,
    project: &str,
    nodes: &[u32],
) -> Result<u64, ClickHouseError> {
    if nodes.is_empty() {
        return Ok(0);
    }
    let p = quote(project);
    let mut total = 0u64;
    let per_shard = !target.shards.is_empty();
    for (table, cond) in conditions(nodes) {
        let name = if per_shard {
            target.local_table(table)
        } else {
            target.table(table)
        };
        let sql = format!("SELECT count() FROM {name} WHERE project = {p} AND ({cond})");
        let clients = if per_shard {
            target.shard_clients()
        } else {
            vec![&target.client]
        };
        for c in clients {
            total += c
                .query_text(&sql)?
                .parse::<u64>()
                .map_err(|_| ClickHouseError::Decode("a row count".into()))?;
        }
    }
    Ok(total)
}

/// Deletes every row of the nodes from the local tables of every shard and waits until
/// none is left. Repeating it is harmless.
pub fn delete_nodes(target: &Target, project: &str, nodes: &[u32]) -> Result<(), ClickHouseError> {
    if nodes.is_empty() {
        return Ok(());
    }
    let p = quote(project);
    for _ in 0..ROUNDS_MAX {
        if remaining_rows(target, project, nodes)? == 0 {
            return Ok(());
        }
        for (table, cond) in conditions(nodes) {
            target.on_every_shard(&format!(
                "ALTER TABLE {}{{on_cluster}} DELETE WHERE project = {p} AND ({cond})",
                target.local_table(table)
            ))?;
        }
        // 18.16 has no mutations_sync: watch system.mutations on every shard we can reach,
        // then the rows themselves.
        target.wait_mutations(MUTATION_WAIT_MS)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(GONE_WAIT_MS);
        loop {
            if remaining_rows(target, project, nodes)? == 0 {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Err(ClickHouseError::Invalid(format!(
        "rows of the erased person keep reappearing in ClickHouse after {ROUNDS_MAX} rounds of deletions (is `clickhouse fold` running?)"
    )))
}

/// Appends the erasure's audit entry unless the log already holds it (a crash after the
/// append and before the pending record was removed).
pub fn audit_once(data: &Path, entry: &AuditEntry) -> Result<(), ClickHouseError> {
    if throughline_store::audit::read(data)?
        .iter()
        .any(|e| e == entry)
    {
        return Ok(());
    }
    Ok(throughline_store::audit::append(data, entry)?)
}
