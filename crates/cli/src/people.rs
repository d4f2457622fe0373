//! `export`, `profile`, `delete-person` and `stats`: reading and erasing what is stored,
//! in the embedded store or (`--backend clickhouse`) in ClickHouse.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use throughline_formats::{ExportFormat, ExportRow, Exporter};

use crate::output::{self, Format};

#[derive(Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub project: String,
    /// jsonl, csv or parquet
    #[arg(long, default_value = "jsonl")]
    pub format: ExportFormat,
    /// Output file; standard output if absent
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub backend: crate::clickhouse::BackendArgs,
}

pub fn export(args: ExportArgs) -> Result<()> {
    let reader = crate::clickhouse::Reader::open(&args.data, &args.project, &args.backend)?;
    let out: Box<dyn Write + Send> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut exporter = Exporter::new(args.format, out)?;
    let mut failed = None;
    reader.with(|src| -> Result<()> {
        let identity = src.identity()?;
        match src.store() {
            Some(snap) => snap
                .for_each_event(|event, node| {
                    let person = identity.canonical_id(identity.person_of(node));
                    if let Err(e) = exporter.write(ExportRow {
                        event: &event,
                        person_id: person,
                    }) {
                        failed = Some(e);
                        return Err(throughline_store::StoreError::Closed);
                    }
                    Ok(())
                })
                // A failed write stopped the scan; report the write's error, not the stop.
                .map_err(|e| match failed.take() {
                    Some(f) => anyhow::Error::from(f),
                    None => e.into(),
                }),
            // ClickHouse: every event once, in arrival order, as the store visits them.
            None => src
                .for_each_event(&Default::default(), |_, node, event| {
                    let person = identity.canonical_id(identity.person_of(node));
                    exporter
                        .write(ExportRow {
                            event: &event,
                            person_id: person,
                        })
                        .map_err(|e| {
                            failed = Some(e);
                            throughline_query::QueryError::Invalid("export stopped".into())
                        })
                })
                .map_err(|e| match failed.take() {
                    Some(f) => anyhow::Error::from(f),
                    None => e.into(),
                }),
        }
    })?;
    let rows = exporter.rows();
    let mut out = exporter.finish()?;
    out.flush()?;
    if args.out.is_some() {
        eprintln!("exported {rows} events");
    }
    Ok(())
}

#[derive(Args)]
pub struct ProfileArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub project: String,
    /// Any id of the person: user id, email or anonymous id
    #[arg(long)]
    pub id: String,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Timeline entries to show, newest first
    #[arg(long, default_value_t = 50)]
    pub timeline: usize,
    #[command(flatten)]
    pub backend: crate::clickhouse::BackendArgs,
}

pub fn profile(args: ProfileArgs) -> Result<()> {
    let reader = crate::clickhouse::Reader::open(&args.data, &args.project, &args.backend)?;
    let rules = throughline_query::sessions::project_rules(reader.dir())?;
    let p = reader
        .with(|src| throughline_query::profile::run(src, &rules, &args.id, args.timeline))?
        .with_context(|| {
            format!(
                "no person with id {:?} in project {}",
                args.id, args.project
            )
        })?;
    match args.format {
        Format::Json => output::json(&serde_json::to_value(&p)?),
        Format::Table => {
            let mut rows = vec![
                vec!["person_id".into(), p.person_id.clone()],
                vec!["event_count".into(), p.event_count.to_string()],
                vec![
                    "first_seen".into(),
                    p.first_seen.clone().unwrap_or_else(|| "-".into()),
                ],
                vec![
                    "last_seen".into(),
                    p.last_seen.clone().unwrap_or_else(|| "-".into()),
                ],
            ];
            for id in &p.ids {
                let kind = serde_json::to_value(id.kind)?;
                rows.push(vec![
                    format!("id ({})", kind.as_str().unwrap_or("")),
                    id.id.clone(),
                ]);
            }
            for (k, v) in &p.traits {
                rows.push(vec![format!("trait {k}"), v.to_string()]);
            }
            for t in &p.timeline {
                let what = t
                    .event
                    .clone()
                    .unwrap_or_else(|| t.event_type.as_str().to_string());
                let via = [t.utm_source.as_deref(), t.utm_medium.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("/");
                rows.push(vec![
                    t.timestamp.clone(),
                    format!(
                        "{what}  {}  [{}]{}",
                        t.path.as_deref().unwrap_or(""),
                        t.sent_as,
                        if via.is_empty() {
                            String::new()
                        } else {
                            format!(" via {via}")
                        }
                    ),
                ]);
            }
            output::table(&["field", "value"], &rows);
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct DeleteArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub project: String,
    /// Any id of the person: user id, email or anonymous id
    #[arg(long)]
    pub id: String,
    /// The TOML file the server runs with: with ClickHouse, the backlog still in the
    /// outbox is forwarded first, under the same identity rules
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub backend: crate::clickhouse::BackendArgs,
}

pub fn delete(args: DeleteArgs) -> Result<()> {
    let config = crate::load_config(args.config.clone())?;
    if let Some(target) = args.backend.clickhouse_target()? {
        return delete_clickhouse(&args, target, &config);
    }
    let store = crate::open_store_with(&args.data, config.project_options())?;
    let project = store.project(&args.project)?;
    let known = project
        .snapshot()
        .identity()
        .find_person(&args.id)
        .is_some();
    if !known {
        anyhow::bail!(
            "no person with id {:?} in project {}",
            args.id,
            args.project
        );
    }
    // The store, and the journeys' journal, snapshot and audience exports.
    let erased = throughline_server::orchestrate::erase_offline(&project, &args.id)?;
    crate::audit(
        &args.data,
        "person.delete",
        Some(&args.project),
        format!(
            "{}: {erased} events erased",
            throughline_store::audit::erased_id(&args.id)
        ),
    )?;
    output::json(&json!({"erased_events": erased, "id": args.id}));
    store.close();
    Ok(())
}

/// `delete-person --backend clickhouse`: the project's forwarder runs here (the data
/// directory's lock says no server does), forwards what the outbox holds, and erases the
/// person everywhere (crates/clickhouse/src/erase.rs), writing the audit entry itself.
fn delete_clickhouse(
    args: &DeleteArgs,
    target: throughline_clickhouse::Target,
    config: &throughline_server::Config,
) -> Result<()> {
    let store = std::sync::Arc::new(crate::open_store_with(
        &args.data,
        config.project_options(),
    )?);
    store.project(&args.project)?;
    // This process is the forwarder: it waits for the erasure as long as it takes (an
    // interrupted one is finished by the next start, of a server or of this command).
    let options = throughline_clickhouse::BackendOptions {
        erase_wait_ms: u64::MAX,
        ..config.clickhouse_options()
    };
    let backend = throughline_clickhouse::Backend::open(target, &args.data, options)?
        .with_store(store.clone());
    let erased = backend
        .project(&args.project)
        .and_then(|p| p.erase(&args.id, &crate::actor()));
    backend.close();
    store.close();
    match erased? {
        Some(n) => {
            output::json(&json!({"erased_events": n, "id": args.id}));
            Ok(())
        }
        None => anyhow::bail!(
            "no person with id {:?} in project {}",
            args.id,
            args.project
        ),
    }
}

#[derive(Args)]
pub struct StatsArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub project: String,
    #[command(flatten)]
    pub backend: crate::clickhouse::BackendArgs,
}

pub fn stats(args: StatsArgs) -> Result<()> {
    if args.backend.clickhouse_target()?.is_some() {
        return stats_clickhouse(&args);
    }
    let store = crate::open_store(&args.data)?;
    let project = store.project(&args.project)?;
    let mut stats = serde_json::to_value(project.stats())?;
    stats["backend"] = json!("embedded");
    output::json(&stats);
    Ok(())
}

/// The ClickHouse backend's counts: what ClickHouse holds, and what the local outbox
/// holds that ClickHouse does not have yet. Reads without the data directory's lock, so
/// it also runs beside `serve --backend clickhouse`.
fn stats_clickhouse(args: &StatsArgs) -> Result<()> {
    let reader = crate::clickhouse::Reader::open(&args.data, &args.project, &args.backend)?;
    let source = reader
        .remote()
        .expect("a reader opened with --backend clickhouse reads ClickHouse");
    let events = source.event_count()?;
    let (ids, persons) = source.identity_counts()?;
    let dir = throughline_clickhouse::forward::project_dir(&args.data, &args.project);
    let cursor = throughline_clickhouse::forward::read_cursor(&dir)?;
    let (waiting, waiting_bytes) = throughline_clickhouse::outbox::backlog(&dir, cursor)?;
    output::json(&json!({
        "backend": "clickhouse",
        "database": args.backend.clickhouse.database,
        "events": events,
        "persons_ids": ids,
        "persons": persons,
        "events_forwarded": cursor.seq,
        "events_in_outbox": waiting,
        "outbox_bytes": waiting_bytes,
    }));
    Ok(())
}
