//! `throughline`: one binary for collecting, storing and analysing customer journeys.
//!
//! Each subcommand lives in its own module; this file only declares the command line.

mod assets;
mod attribution;
mod bench;
mod clickhouse;
mod cx;
mod demo;
mod import;
mod journeys;
mod ops;
mod output;
mod people;
mod projects;
mod query;
mod spend;

use std::path::PathBuf;

/// Ingestion allocates and frees a JSON tree per message; glibc's malloc spent a quarter
/// of the server's time there (perf, BENCHMARKS.md), mimalloc much less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "throughline",
    version,
    about = "Customer-experience analytics: Segment-compatible collection, an embedded store, identity, journeys.",
    after_help = "Examples:\n  throughline demo                       # realistic data in, server up, answers out\n  throughline projects create shop --data ./data\n  throughline serve --data ./data --listen 127.0.0.1:8080"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list and re-key projects (one per brand or client)
    Projects {
        #[command(subcommand)]
        command: projects::ProjectsCommand,
    },
    /// Run the collection server (Segment HTTP Tracking API) over a data directory
    #[command(
        after_help = "Examples:\n  throughline serve --data ./data --listen 127.0.0.1:8080 --config throughline.toml\n  throughline serve --data ./data --backend clickhouse --clickhouse-url http://127.0.0.1:8123 --clickhouse-cluster two"
    )]
    Serve {
        /// Data directory (created if missing)
        #[arg(long)]
        data: PathBuf,
        /// Address to listen on, HOST:PORT
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// TOML file with limits and identity rules (see README)
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where events live: the data directory's own store, or ClickHouse
        #[arg(long, value_enum, default_value = "embedded")]
        backend: clickhouse::Backend,
        #[command(flatten)]
        clickhouse: clickhouse::ClickHouseArgs,
    },
    /// The ClickHouse backend's tables
    Clickhouse {
        #[command(subcommand)]
        command: clickhouse::ClickHouseCommand,
    },
    /// Move embedded projects into ClickHouse, resumably, verified by counts
    #[command(
        after_help = "Example:\n  throughline migrate --data ./data --to http://127.0.0.1:8123 --project shop\n  throughline serve --data ./data --backend clickhouse --clickhouse-url http://127.0.0.1:8123"
    )]
    Migrate(clickhouse::MigrateArgs),
    /// Import Segment-shaped messages from JSONL, CSV or Parquet files
    #[command(
        after_help = "Example:\n  throughline import --data ./data --project shop events.jsonl more.csv.gz old.parquet\n\nJSONL: one Segment message per line. CSV/Parquet columns: see crates/formats/README.md.\nThe same validation and messageId deduplication as the HTTP API apply."
    )]
    Import(import::ImportArgs),
    /// Export every stored event of a project once, with its stitched person
    #[command(
        after_help = "Example:\n  throughline export --data ./data --project shop --format parquet --out shop.parquet"
    )]
    Export(people::ExportArgs),
    /// Show a person's profile: ids, merged traits, first and last seen, event count
    #[command(
        after_help = "Example:\n  throughline profile --data ./data --project shop --id ann@example.com --format table"
    )]
    Profile(people::ProfileArgs),
    /// Erase every event and id of a person (GDPR right to erasure)
    #[command(
        name = "delete-person",
        after_help = "Example:\n  throughline delete-person --data ./data --project shop --id user-42"
    )]
    DeletePerson(people::DeleteArgs),
    /// Load realistic demo data (a headphones shop, a subscription service) and serve it
    #[command(
        after_help = "Examples:\n  throughline demo                 # load and serve on 127.0.0.1:8080\n  throughline demo --no-serve      # load and print the headline answers"
    )]
    Demo(demo::DemoArgs),
    /// Write the demo generator's messages to a JSONL file (for tests and benchmarks)
    #[command(
        after_help = "Example:\n  throughline generate --brand headphones --persons 20000 --seed 7 --out events.jsonl"
    )]
    Generate(demo::GenerateArgs),
    /// Ask questions: funnels, trends, retention, sessions, paths, assets, attribution
    Query {
        // Boxed: every query kind carries the ClickHouse flags now.
        #[command(subcommand)]
        command: Box<query::QueryCommand>,
    },
    /// Attribution models over a path table in ChannelAttribution's format
    Attribution(attribution::TableArgs),
    /// Marketing cost per day and channel, source, campaign or asset, for cost per conversion and ROAS
    Spend {
        #[command(subcommand)]
        command: spend::SpendCommand,
    },
    /// The asset registry: the ads, creatives, emails, campaigns, pages and posts touches come through
    Assets {
        #[command(subcommand)]
        command: assets::AssetsCommand,
    },
    /// Follow-up journeys: validate, create, list, show, pause, resume, archive, backtest
    Journeys {
        #[command(subcommand)]
        command: journeys::JourneysCommand,
    },
    /// The global suppression list of journeys: import (CSV of ids or emails), list
    Suppressions {
        #[command(subcommand)]
        command: journeys::SuppressionsCommand,
    },
    /// Who created, re-keyed or erased what, when and from where (DIR/audit.jsonl)
    #[command(
        name = "audit-log",
        after_help = "Examples:\n  throughline audit-log --data ./data --format table\n  throughline audit-log --data ./data --project shop --limit 20"
    )]
    AuditLog {
        #[arg(long)]
        data: PathBuf,
        /// Only this project's entries
        #[arg(long)]
        project: Option<String>,
        /// The newest N entries
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value_t)]
        format: output::Format,
    },
    /// Verify every file of the store against its checksums; --repair rebuilds what the log allows
    #[command(after_help = "Examples:
  throughline check --data ./data
  throughline check --data ./data --project shop --repair

Prints a JSON report per project (files checked, events, problems, what was repaired and
what could not be) and exits 1 while any file is damaged. Needs the directory to itself.")]
    Check(ops::CheckArgs),
    /// Write a consistent copy of a data directory to one file, also while a server runs
    #[command(after_help = "Example:
  throughline backup --data ./data --out ./data-2026-12-01.tar

A tar of every project's live segments, identity files and log, the catalog and the audit
log, with BACKUP.json listing each file's SHA-256. Holds every event acknowledged before
it started.")]
    Backup(ops::BackupArgs),
    /// Restore a backup into a new data directory, verifying every file
    #[command(after_help = "Example:
  throughline restore --from ./data-2026-12-01.tar --data ./data-restored")]
    Restore(ops::RestoreArgs),
    /// Counts of a project's store: events, segments, events still in the log, ids; with
    /// --backend clickhouse: events and ids in ClickHouse, events still in the outbox
    #[command(
        after_help = "Examples:\n  throughline stats --data ./data --project shop\n  throughline stats --data ./data --project shop --backend clickhouse --clickhouse-url http://127.0.0.1:8123"
    )]
    Stats(people::StatsArgs),
    /// Checks beyond the store: registered destination URLs over HTTP (`audit links`)
    Audit {
        #[command(subcommand)]
        command: cx::AuditCommand,
    },
    /// Hosted survey links: a signed link to the one-question survey page
    Survey {
        #[command(subcommand)]
        command: cx::SurveyCommand,
    },
    /// VADER sentiment of texts (arguments, else each line of stdin), as `query emotion` scores them
    #[command(
        after_help = "Example:\n  throughline sentiment 'Delivery was late and nobody told me.'\n  cut -f2 comments.tsv | throughline sentiment > scores.jsonl"
    )]
    Sentiment(cx::SentimentArgs),
    /// Measure ingest speed: an HTTP load generator and this disk's fsync baseline
    #[command(
        after_help = "Examples:\n  throughline bench http --url http://127.0.0.1:8080 --write-key wk_... --clients 16 --batch 100 --file events.jsonl\n  throughline bench disk --dir /tmp --chunk-bytes 65536\n  bash scripts/bench               # the whole benchmark, written to bench-out/ingest.md"
    )]
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

fn main() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(tracing::Level::INFO)
        .init();
    if let Err(e) = run(Cli::parse()) {
        // `throughline export ... | head` closing the pipe early is the reader's choice,
        // not a failure worth a message (the Unix convention).
        if is_broken_pipe(&e) {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.to_string().contains("Broken pipe")
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Projects { command } => projects::run(command),
        Command::Serve {
            data,
            listen,
            config,
            backend,
            clickhouse,
        } => match backend {
            clickhouse::Backend::Embedded => serve(data, &listen, config),
            clickhouse::Backend::Clickhouse => serve_clickhouse(data, &listen, config, &clickhouse),
        },
        Command::Clickhouse { command } => clickhouse::run(command),
        Command::Migrate(args) => clickhouse::migrate(args),
        Command::Import(args) => import::run(args),
        Command::Export(args) => people::export(args),
        Command::Profile(args) => people::profile(args),
        Command::DeletePerson(args) => people::delete(args),
        Command::Demo(args) => demo::run(args),
        Command::Generate(args) => demo::generate(args),
        Command::Stats(args) => people::stats(args),
        Command::Check(args) => ops::check(args),
        Command::Backup(args) => ops::backup(args),
        Command::Restore(args) => ops::restore(args),
        Command::AuditLog {
            data,
            project,
            limit,
            format,
        } => audit_log(&data, project.as_deref(), limit, format),
        Command::Query { command } => query::run(*command),
        Command::Assets { command } => assets::run(command),
        Command::Attribution(args) => attribution::table(args),
        Command::Spend { command } => spend::run(command),
        Command::Bench { command } => bench::run(command),
        Command::Audit { command } => cx::audit_command(command),
        Command::Survey { command } => cx::survey_command(command),
        Command::Sentiment(args) => cx::sentiment(args),
        Command::Journeys { command } => journeys::run(command),
        Command::Suppressions { command } => journeys::suppressions(command),
    }
}

pub fn load_config(path: Option<PathBuf>) -> Result<throughline_server::Config> {
    Ok(match path {
        Some(p) => throughline_server::Config::load(&p)?,
        None => throughline_server::Config::default(),
    })
}

pub fn serve(data: PathBuf, listen: &str, config: Option<PathBuf>) -> Result<()> {
    let addr = throughline_server::parse_listen(listen).map_err(anyhow::Error::msg)?;
    let config = load_config(config)?;
    migrate(&data)?;
    let store = throughline_store::Store::open(&data, config.project_options())?;
    serve_store(std::sync::Arc::new(store), config, addr)
}

/// `serve --backend clickhouse`: the store holds the catalog and per-project files; events
/// go through each project's outbox to ClickHouse, and queries read ClickHouse.
fn serve_clickhouse(
    data: PathBuf,
    listen: &str,
    config: Option<PathBuf>,
    ch: &clickhouse::ClickHouseArgs,
) -> Result<()> {
    let addr = throughline_server::parse_listen(listen).map_err(anyhow::Error::msg)?;
    let config = load_config(config)?;
    let target = ch.target()?;
    let store = std::sync::Arc::new(throughline_store::Store::open(
        &data,
        config.project_options(),
    )?);
    let backend =
        throughline_clickhouse::Backend::open(target, &data, config.clickhouse_options())?
            .with_store(store.clone());
    // Resume forwarding whatever an earlier run left in the outboxes.
    for p in &store.catalog().projects {
        backend.project(&p.name)?;
    }
    let state = throughline_server::AppState::with_backend(
        store,
        config,
        Some(std::sync::Arc::new(backend)),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(throughline_server::serve(state, addr))?;
    Ok(())
}

pub fn serve_store(
    store: std::sync::Arc<throughline_store::Store>,
    config: throughline_server::Config,
    addr: std::net::SocketAddr,
) -> Result<()> {
    let state = throughline_server::AppState::new(store, config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(throughline_server::serve(state, addr))?;
    Ok(())
}

/// Opens a data directory for a one-off command: a clear error if a server holds it.
pub fn open_store(data: &std::path::Path) -> Result<throughline_store::Store> {
    open_store_with(data, Default::default())
}

pub fn open_store_with(
    data: &std::path::Path,
    options: throughline_store::ProjectOptions,
) -> Result<throughline_store::Store> {
    if !data.join("catalog.json").exists() {
        anyhow::bail!(
            "{} is not a Throughline data directory (no catalog.json); create a project first: throughline projects create NAME --data {}",
            data.display(),
            data.display()
        );
    }
    migrate(data)?;
    Ok(throughline_store::Store::open(data, options)?)
}

/// Migrates every project whose store an older Throughline wrote, with a progress bar;
/// opening would migrate too, silently. Holds the directory lock meanwhile.
fn migrate(data: &std::path::Path) -> Result<()> {
    use throughline_store::manifest;
    let Ok(catalog) = throughline_store::Catalog::load(data) else {
        return Ok(()); // a new directory, or one Store::open reports on
    };
    let dirs: Vec<_> = catalog
        .projects
        .iter()
        .map(|p| data.join("projects").join(&p.name))
        .collect();
    let mut due = Vec::new();
    for d in &dirs {
        if let Some(from) = manifest::pending_migration(d)? {
            due.push((d, from));
        }
    }
    if due.is_empty() {
        return Ok(());
    }
    let _lock = throughline_store::DirLock::acquire(data)?;
    let bar = indicatif::ProgressBar::new(due.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} projects")
            .expect("template parses"),
    );
    bar.set_message(format!(
        "migrating to store format {}",
        manifest::STORE_FORMAT_VERSION
    ));
    for (d, _) in &due {
        manifest::load(d, &mut |_, _| {})?;
        bar.inc(1);
    }
    bar.finish();
    eprintln!(
        "migrated {} projects from store format {} to {}",
        due.len(),
        due.iter().map(|(_, v)| *v).min().unwrap_or(0),
        manifest::STORE_FORMAT_VERSION
    );
    Ok(())
}

/// Who runs this command, for the audit log: the OS user, the host and the process.
pub fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("cli user={user} host={host} pid={}", std::process::id())
}

/// Records an action of this command in the data directory's audit log.
pub fn audit(
    data: &std::path::Path,
    action: &str,
    project: Option<&str>,
    detail: impl Into<String>,
) -> Result<()> {
    let entry = throughline_store::audit::AuditEntry::new(action, project, &actor(), detail);
    Ok(throughline_store::audit::append(data, &entry)?)
}

fn audit_log(
    data: &std::path::Path,
    project: Option<&str>,
    limit: usize,
    format: output::Format,
) -> Result<()> {
    let mut entries = throughline_store::audit::read(data)?;
    entries.retain(|e| project.is_none_or(|p| e.project.as_deref() == Some(p)));
    let skip = entries.len().saturating_sub(limit);
    let entries = &entries[skip..];
    match format {
        output::Format::Json => output::json(&serde_json::to_value(entries)?),
        output::Format::Table => output::table(
            &["at", "action", "project", "actor", "detail"],
            &entries
                .iter()
                .map(|e| {
                    vec![
                        e.at.clone(),
                        e.action.clone(),
                        e.project.clone().unwrap_or_default(),
                        e.actor.clone(),
                        e.detail.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}
