//! `export`, `profile`, `delete-person` and `stats`: reading and erasing what is stored.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Map, Value};
use throughline_formats::{ExportFormat, ExportRow, Exporter};
use throughline_model::{format_ms, EventType};

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
}

pub fn export(args: ExportArgs) -> Result<()> {
    let store = crate::open_store(&args.data)?;
    let project = store.project(&args.project)?;
    let out: Box<dyn Write + Send> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut exporter = Exporter::new(args.format, out)?;
    let snap = project.snapshot();
    let identity = snap.identity();
    let mut failed = None;
    snap.for_each_event(|event, node| {
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
}

pub fn profile(args: ProfileArgs) -> Result<()> {
    let store = crate::open_store(&args.data)?;
    let project = store.project(&args.project)?;
    let snap = project.snapshot();
    let identity = snap.identity();
    let person = identity.find_person(&args.id).with_context(|| {
        format!(
            "no person with id {:?} in project {}",
            args.id, args.project
        )
    })?;
    let nodes: HashSet<u32> = (0..identity.node_count() as u32)
        .filter(|&n| identity.person_of(n) == person)
        .collect();
    let mut traits: BTreeMap<String, (i64, Value)> = BTreeMap::new();
    let (mut first, mut last, mut count) = (i64::MAX, i64::MIN, 0u64);
    let mut by_event: BTreeMap<String, u64> = BTreeMap::new();
    let mut channels_seen: BTreeMap<String, u64> = BTreeMap::new();
    snap.for_each_event(|e, node| {
        if !nodes.contains(&node) {
            return Ok(());
        }
        count += 1;
        first = first.min(e.timestamp);
        last = last.max(e.timestamp);
        let label = e
            .event
            .clone()
            .unwrap_or_else(|| e.event_type.as_str().to_string());
        *by_event.entry(label).or_default() += 1;
        if let Some(src) = &e.utm.source {
            *channels_seen.entry(src.clone()).or_default() += 1;
        }
        // Latest wins, by event time, across identify traits and context.traits.
        let mut merge = |m: &Map<String, Value>| {
            for (k, v) in m {
                let newer = traits.get(k).is_none_or(|(t, _)| e.timestamp >= *t);
                if newer {
                    traits.insert(k.clone(), (e.timestamp, v.clone()));
                }
            }
        };
        if matches!(e.event_type, EventType::Identify | EventType::Group) {
            merge(&e.traits);
        }
        if let Some(Value::Object(t)) = e.context.get("traits") {
            merge(t);
        }
        Ok(())
    })?;
    let ids: Vec<Value> = identity
        .ids_of(person)
        .into_iter()
        .map(|(kind, id)| json!({"kind": kind, "id": id}))
        .collect();
    let traits: Map<String, Value> = traits.into_iter().map(|(k, (_, v))| (k, v)).collect();
    let profile = json!({
        "person_id": identity.canonical_id(person),
        "ids": ids,
        "traits": traits,
        "first_seen": (count > 0).then(|| format_ms(first)),
        "last_seen": (count > 0).then(|| format_ms(last)),
        "event_count": count,
        "events": by_event,
        "utm_sources": channels_seen,
    });
    match args.format {
        Format::Json => output::json(&profile),
        Format::Table => {
            let mut rows = vec![
                vec![
                    "person_id".into(),
                    identity.canonical_id(person).to_string(),
                ],
                vec!["event_count".into(), count.to_string()],
                vec![
                    "first_seen".into(),
                    profile["first_seen"].as_str().unwrap_or("-").to_string(),
                ],
                vec![
                    "last_seen".into(),
                    profile["last_seen"].as_str().unwrap_or("-").to_string(),
                ],
            ];
            for (kind, id) in identity.ids_of(person) {
                rows.push(vec![
                    format!(
                        "id ({})",
                        serde_json::to_value(kind)?.as_str().unwrap_or("")
                    ),
                    id.to_string(),
                ]);
            }
            for (k, v) in &traits {
                rows.push(vec![format!("trait {k}"), v.to_string()]);
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
}

pub fn delete(args: DeleteArgs) -> Result<()> {
    let store = crate::open_store(&args.data)?;
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
    let erased = project.delete_person(&args.id)?;
    output::json(&json!({"erased_events": erased, "id": args.id}));
    store.close();
    Ok(())
}

#[derive(Args)]
pub struct StatsArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub project: String,
}

pub fn stats(args: StatsArgs) -> Result<()> {
    let store = crate::open_store(&args.data)?;
    let project = store.project(&args.project)?;
    output::json(&serde_json::to_value(project.stats())?);
    Ok(())
}
