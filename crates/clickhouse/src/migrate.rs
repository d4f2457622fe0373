//! `throughline migrate`: moves an embedded project into ClickHouse, resumably, and hands
//! the project over to the ClickHouse backend's outbox.
//!
//! Events keep the embedded store's arrival numbering as `seq` (segments in order, then
//! the log: what `Snapshot::for_each_event` visits), their node, and today's person, so
//! ties break the same way on both backends and no override is needed. Progress is kept
//! in `DIR/projects/NAME/clickhouse/MIGRATE` after every batch: a second run resumes after
//! the last batch ClickHouse acknowledged (a batch sent again is the same rows). The
//! store must not change between runs; it is fingerprinted, and `restart` wipes the
//! project's rows in ClickHouse and begins again. At the end the counts are verified in
//! ClickHouse, and the outbox is set up to continue at the next `seq` with the same
//! identity graph and every message hash, so `serve --backend clickhouse` picks up where
//! the embedded store stopped.

use std::path::Path;

use serde::{Deserialize, Serialize};
use throughline_store::{message_hash, ProjectStore, StoreError};

use crate::client::quote;
use crate::dedupe::HashIndex;
use crate::forward::{event_row, project_dir, read_cursor, write_cursor, write_identity};
use crate::outbox::{read_json, write_atomic, Position};
use crate::rowbinary::Writer;
use crate::schema::{event_columns, Target, IDENTITY_COLUMNS};
use crate::ClickHouseError;

/// Events per INSERT during a migration, by default.
pub const MIGRATE_BATCH_EVENTS: usize = 50_000;
/// Message hashes gathered before they are written as one dedupe run.
const HASH_RUN_MAX: usize = 1 << 20;
/// How long the end of a restart waits for ClickHouse to finish deleting.
const MUTATION_WAIT_MS: u64 = 600_000;

pub const MIGRATE_FILE: &str = "MIGRATE";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct MigrateState {
    /// The store as it was when the migration began.
    fingerprint: String,
    total: u64,
    identities_done: bool,
    /// Events ClickHouse acknowledged, in seq order.
    events_done: u64,
    finished: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct MigrateReport {
    pub project: String,
    pub events: u64,
    pub identities: u64,
    pub resumed_at: u64,
    pub verified: bool,
}

/// What identifies the store's contents: its segment files and event count.
fn fingerprint(project: &ProjectStore) -> String {
    let snap = project.snapshot();
    let segments: Vec<String> = snap
        .segments()
        .iter()
        .map(|s| {
            s.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    format!("{}|{}", snap.event_count(), segments.join(","))
}

/// Whether a migration of the project in `dir` (its `clickhouse/` directory) finished:
/// then its embedded store numbers identity nodes as the forwarder's graph does.
pub fn migrated(dir: &Path) -> Result<bool, ClickHouseError> {
    Ok(read_json::<MigrateState>(&dir.join(MIGRATE_FILE))?.is_some_and(|s| s.finished))
}

/// Deletes every row of a project on every shard and waits until it is done.
pub fn delete_project(target: &Target, project: &str) -> Result<(), ClickHouseError> {
    for table in ["events", "identities", "person_overrides"] {
        target.on_every_shard(&format!(
            "ALTER TABLE {}{{on_cluster}} DELETE WHERE project = {}",
            target.local_table(table),
            quote(project)
        ))?;
    }
    target.wait_mutations(MUTATION_WAIT_MS)
}

/// Migrates one project in INSERTs of `batch_events` events; `progress(done, total)` is
/// called after every batch.
pub fn migrate(
    target: &Target,
    data: &Path,
    project: &ProjectStore,
    restart: bool,
    batch_events: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MigrateReport, ClickHouseError> {
    let batch_events = batch_events.max(1);
    let name = project.name().to_string();
    let dir = project_dir(data, &name);
    std::fs::create_dir_all(&dir).map_err(|e| ClickHouseError::io(&dir, e))?;
    let state_path = dir.join(MIGRATE_FILE);
    let fp = fingerprint(project);
    let mut state: MigrateState = match std::fs::read(&state_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| ClickHouseError::Corrupt {
            file: state_path.clone(),
            why: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => MigrateState::default(),
        Err(e) => return Err(ClickHouseError::io(&state_path, e)),
    };
    let started = state != MigrateState::default();
    if !started && read_cursor(&dir)?.seq > 0 {
        return Err(ClickHouseError::Invalid(format!(
            "project {name} already sends events to ClickHouse (its outbox is past 0); a migration would number events twice"
        )));
    }
    if started && state.fingerprint != fp {
        if !restart {
            return Err(ClickHouseError::Invalid(format!(
                "project {name} changed since its migration began; run again with --restart to delete what was migrated and begin anew"
            )));
        }
        delete_project(target, &name)?;
        state = MigrateState::default();
    } else if restart && started {
        delete_project(target, &name)?;
        state = MigrateState::default();
    }
    if state.finished {
        return Ok(MigrateReport {
            project: name,
            events: state.total,
            identities: 0,
            resumed_at: state.total,
            verified: verify(target, project.name(), state.total)?,
        });
    }
    let snap = project.snapshot();
    let total = snap.event_count() as u64;
    state.fingerprint = fp;
    state.total = total;
    let save = |s: &MigrateState| {
        write_atomic(
            &state_path,
            &serde_json::to_vec(s).expect("states serialize"),
        )
    };
    save(&state)?;
    let resumed_at = state.events_done;
    let settings = target.insert_settings();

    // The identity mapping: every node with today's person.
    let graph = snap.identity();
    let nodes = graph.node_count() as u32;
    if !state.identities_done {
        let mut w = Writer::default();
        let flush = |w: &mut Writer| -> Result<(), ClickHouseError> {
            if !w.buf.is_empty() {
                target.client.insert(
                    &target.table("identities"),
                    &IDENTITY_COLUMNS,
                    &w.buf,
                    settings,
                )?;
                w.buf.clear();
            }
            Ok(())
        };
        for n in 0..nodes {
            let (kind, id) = graph.node(n);
            w.str(&name);
            w.u32(n);
            w.u8(kind as u8);
            w.str(id);
            let person = graph.person_of(n);
            w.u32(person);
            w.u8(u8::from(graph.user_of(person) == Some(n)));
            w.u64(0);
            if (n as usize + 1).is_multiple_of(batch_events) {
                flush(&mut w)?;
            }
        }
        flush(&mut w)?;
        state.identities_done = true;
        save(&state)?;
    }

    // The events, in arrival order, in batches; every message hash goes to the dedupe
    // index the outbox will use.
    // Rebuilt on every run: nothing else uses it before the migration finishes.
    let hash_dir = dir.join("hashes");
    if hash_dir.exists() {
        std::fs::remove_dir_all(&hash_dir).map_err(|e| ClickHouseError::io(&hash_dir, e))?;
    }
    let mut index = HashIndex::open(&hash_dir)?;
    let mut hashes: Vec<u128> = Vec::new();
    let mut batch = Writer::default();
    let mut in_batch = 0usize;
    let mut seq = 0u64;
    let mut failed: Option<ClickHouseError> = None;
    let scan = snap.for_each_event(|e, node| {
        hashes.push(message_hash(&e.message_id));
        if hashes.len() >= HASH_RUN_MAX {
            if let Err(err) = index.add_run(std::mem::take(&mut hashes)) {
                failed = Some(err);
                return Err(StoreError::Closed);
            }
        }
        if seq >= state.events_done {
            event_row(&mut batch, &name, graph.person_of(node), seq, node, &e);
            in_batch += 1;
        }
        seq += 1;
        if in_batch >= batch_events {
            let r = target
                .client
                .insert(
                    &target.table("events"),
                    &event_columns(),
                    &batch.buf,
                    settings,
                )
                .and_then(|_| {
                    state.events_done = seq;
                    save(&state)
                });
            if let Err(err) = r {
                failed = Some(err);
                return Err(StoreError::Closed);
            }
            batch.buf.clear();
            in_batch = 0;
            progress(seq, total);
        }
        Ok(())
    });
    if let Some(e) = failed {
        return Err(e);
    }
    scan?;
    if in_batch > 0 {
        target.client.insert(
            &target.table("events"),
            &event_columns(),
            &batch.buf,
            settings,
        )?;
    }
    state.events_done = seq;
    save(&state)?;
    progress(seq, total);
    index.add_run(hashes)?;
    let verified = verify(target, &name, total)?;
    if !verified {
        return Err(ClickHouseError::Invalid(format!(
            "ClickHouse does not hold the {total} events of project {name} after the migration; run it again"
        )));
    }
    // The outbox continues numbering after the migrated events, with the same graph.
    let at = Position {
        file: 1,
        offset: 0,
        seq: total,
    };
    write_identity(&dir, graph, at)?;
    write_cursor(&dir, at)?;
    state.finished = true;
    save(&state)?;
    Ok(MigrateReport {
        project: name,
        events: total,
        identities: nodes as u64,
        resumed_at,
        verified,
    })
}

/// Whether ClickHouse holds exactly `total` distinct events of the project, numbered
/// 0..total.
pub fn verify(target: &Target, project: &str, total: u64) -> Result<bool, ClickHouseError> {
    let text = target.client.query_text(&format!(
        "SELECT uniqExact(seq), max(seq) + 1, count() > 0 FROM {} WHERE project = {} FORMAT TSV",
        target.table("events"),
        quote(project)
    ))?;
    let cols: Vec<&str> = text.split('\t').collect();
    if total == 0 {
        return Ok(cols.get(2) == Some(&"0"));
    }
    Ok(cols.first() == Some(&total.to_string().as_str())
        && cols.get(1) == Some(&total.to_string().as_str()))
}
