//! `clickhouse init`, `migrate`, the ClickHouse flags of `serve`, and [`Reader`]: where
//! the reading commands (`query`, `profile`, `export`) find a project's events. Glue over
//! crates/clickhouse.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

/// Where the ClickHouse backend's tables live.
#[derive(Args, Clone, Debug, Default)]
pub struct ClickHouseArgs {
    /// ClickHouse's HTTP interface, e.g. http://127.0.0.1:8123 (user:password@ allowed)
    #[arg(long = "clickhouse-url", value_name = "URL")]
    pub url: Option<String>,
    /// Database holding Throughline's tables
    #[arg(
        long = "clickhouse-database",
        value_name = "DB",
        default_value = "throughline"
    )]
    pub database: String,
    /// Cluster (remote_servers) to shard over: local tables on every shard, Distributed
    /// tables sharded by person
    #[arg(long = "clickhouse-cluster", value_name = "NAME")]
    pub cluster: Option<String>,
    /// Each shard's own HTTP URL, in shard order, where the cluster has no distributed DDL
    /// (no ZooKeeper or Keeper): DDL and deletions run on each. Repeat per shard
    #[arg(long = "clickhouse-shard-url", value_name = "URL")]
    pub shard_urls: Vec<String>,
}

impl ClickHouseArgs {
    pub fn target(&self) -> Result<throughline_clickhouse::Target> {
        let url = self
            .url
            .as_deref()
            .context("--clickhouse-url is required with the ClickHouse backend")?;
        Ok(throughline_clickhouse::Target::new(
            url,
            Some(&self.database),
            self.cluster.as_deref(),
            &self.shard_urls,
        )?)
    }
}

/// `--backend` and the ClickHouse flags of a command that reads a project's events.
#[derive(Args, Clone, Debug, Default)]
pub struct BackendArgs {
    /// Where the events are: the data directory's own store, or ClickHouse (read without
    /// the data directory's lock, so also while `serve --backend clickhouse` runs)
    #[arg(long, value_enum, default_value = "embedded")]
    pub backend: Backend,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
}

impl BackendArgs {
    /// The ClickHouse target with `--backend clickhouse`, else `None`; ClickHouse flags
    /// without it are a mistake worth saying.
    pub fn clickhouse_target(&self) -> Result<Option<throughline_clickhouse::Target>> {
        match self.backend {
            Backend::Clickhouse => Ok(Some(self.clickhouse.target()?)),
            Backend::Embedded if self.clickhouse.url.is_some() => anyhow::bail!(
                "--clickhouse-url reads nothing without --backend clickhouse (the default backend is the embedded store)"
            ),
            Backend::Embedded => Ok(None),
        }
    }
}

/// A project opened for reading: its embedded store (holding the data directory's lock
/// while open), or its events in ClickHouse and its files in the data directory.
pub struct Reader {
    _store: Option<throughline_store::Store>,
    project: Option<Arc<throughline_store::ProjectStore>>,
    remote: Option<throughline_clickhouse::source::Source>,
    dir: PathBuf,
}

impl Reader {
    pub fn open(data: &Path, project: &str, backend: &BackendArgs) -> Result<Reader> {
        match backend.clickhouse_target()? {
            None => {
                let store = crate::open_store(data)?;
                let p = store.project(project)?;
                Ok(Reader {
                    dir: p.dir().to_path_buf(),
                    project: Some(p),
                    _store: Some(store),
                    remote: None,
                })
            }
            Some(target) => {
                // The per-project files (channel rules, registry, spend, stages) are read
                // as a running server reads them: no lock needed.
                let catalog = throughline_store::Catalog::load(data).with_context(|| {
                    format!("{} is not a Throughline data directory", data.display())
                })?;
                if catalog.get(project).is_none() {
                    anyhow::bail!("no project {project:?} in {}", data.display());
                }
                target.check_shards()?;
                target.check()?;
                Ok(Reader {
                    _store: None,
                    project: None,
                    remote: Some(throughline_clickhouse::source::Source::new(
                        Arc::new(target),
                        project,
                        Default::default(),
                    )),
                    dir: data.join("projects").join(project),
                })
            }
        }
    }

    /// The ClickHouse side, when the reader reads ClickHouse.
    pub fn remote(&self) -> Option<&throughline_clickhouse::source::Source> {
        self.remote.as_ref()
    }

    /// The project's directory (channel rules, asset registry, spend, stages).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` over the project's events: a snapshot of the store, or ClickHouse.
    pub fn with<T>(&self, f: impl FnOnce(&throughline_query::source::Source) -> T) -> T {
        use throughline_query::source::{Remote, Source};
        match (&self.remote, &self.project) {
            (Some(r), _) => f(&Source::Remote(&Remote::new(r))),
            (None, Some(p)) => f(&Source::Store(&p.snapshot())),
            (None, None) => unreachable!("a reader has a store or ClickHouse"),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Events in the data directory's own store
    #[default]
    Embedded,
    /// Events, identities and profiles in ClickHouse; the local outbox makes a 200 durable
    Clickhouse,
}

#[derive(Subcommand)]
pub enum ClickHouseCommand {
    /// Create Throughline's database and tables (idempotent)
    #[command(
        after_help = "Examples:\n  throughline clickhouse init --clickhouse-url http://127.0.0.1:8123\n  throughline clickhouse init --clickhouse-url http://ch1:8123 --clickhouse-cluster analytics\n  throughline clickhouse init --clickhouse-url http://127.0.0.1:8123 --clickhouse-cluster two \\\n      --clickhouse-shard-url http://127.0.0.1:8123 --clickhouse-shard-url http://127.0.0.1:8124"
    )]
    Init(ClickHouseArgs),
    /// Print the statements `init` runs, without running them
    Schema(ClickHouseArgs),
    /// Fold identity overrides into the events: merged persons' rows move to the person
    /// (and shard) they were merged into, then the overrides go
    #[command(
        after_help = "Example:\n  throughline clickhouse fold --project shop --clickhouse-url http://127.0.0.1:8123"
    )]
    Fold {
        /// The project whose overrides to fold
        #[arg(long)]
        project: String,
        /// The data directory of the server forwarding this project, if one runs: only
        /// overrides ClickHouse acknowledged (behind its cursor) are folded
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
    },
    /// An ordered funnel over event names, compiled to `windowFunnel` SQL or streamed into
    /// Throughline's funnel kernel: persons per step and the time taken (benchmarks)
    #[command(
        after_help = "Example:\n  throughline clickhouse funnel --project shop --step 'Product Viewed' --step 'Order Completed' --window 7d --engine sql --clickhouse-url http://127.0.0.1:8123"
    )]
    Funnel {
        #[arg(long)]
        project: String,
        /// An event name; repeat per step
        #[arg(long = "step", required = true)]
        steps: Vec<String>,
        #[arg(long, default_value = "7d")]
        window: String,
        /// sql (windowFunnel in ClickHouse) or stream (rows into the kernel)
        #[arg(long, default_value = "sql")]
        engine: String,
        #[command(flatten)]
        clickhouse: ClickHouseArgs,
    },
}

pub fn run(command: ClickHouseCommand) -> Result<()> {
    match command {
        ClickHouseCommand::Init(args) => {
            let target = args.target()?;
            target.init()?;
            println!(
                "{}",
                serde_json::json!({
                    "database": target.database,
                    "cluster": target.cluster,
                    "tables": ["events", "identities", "person_overrides"],
                })
            );
            Ok(())
        }
        ClickHouseCommand::Fold {
            project,
            data,
            clickhouse,
        } => {
            let target = clickhouse.target()?;
            target.check_shards()?;
            target.check()?;
            let horizon = match data {
                Some(d) => Some(
                    throughline_clickhouse::forward::read_cursor(
                        &throughline_clickhouse::forward::project_dir(&d, &project),
                    )?
                    .seq,
                ),
                None => None,
            };
            let report = throughline_clickhouse::fold::fold(&target, &project, horizon)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        ClickHouseCommand::Funnel {
            project,
            steps,
            window,
            engine,
            clickhouse,
        } => {
            let target = clickhouse.target()?;
            let window = throughline_query::parse_duration(&window)?;
            let counts = match engine.as_str() {
                "sql" => throughline_clickhouse::sql::funnel_by_sql(
                    &target, &project, &steps, window, None, None,
                )?,
                "stream" => {
                    let source = throughline_clickhouse::source::Source::new(
                        std::sync::Arc::new(target),
                        &project,
                        Default::default(),
                    );
                    throughline_clickhouse::sql::funnel_by_stream(
                        &source, &steps, window, None, None,
                    )?
                }
                other => anyhow::bail!("unknown engine {other:?}: use sql or stream"),
            };
            println!("{}", serde_json::to_string(&counts)?);
            Ok(())
        }
        ClickHouseCommand::Schema(mut args) => {
            if args.url.is_none() {
                args.url = Some("http://127.0.0.1:8123".into());
            }
            for stmt in args.target()?.local_ddl() {
                println!("{};\n", stmt.replace("{on_cluster}", ""));
            }
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct MigrateArgs {
    /// Data directory of the embedded store
    #[arg(long)]
    pub data: PathBuf,
    /// ClickHouse's HTTP interface (the same as --clickhouse-url)
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Only this project (default: every project)
    #[arg(long)]
    pub project: Option<String>,
    /// Delete what an interrupted migration left in ClickHouse and begin again
    #[arg(long)]
    pub restart: bool,
    /// Events per INSERT
    #[arg(long, default_value_t = throughline_clickhouse::migrate::MIGRATE_BATCH_EVENTS)]
    pub batch_events: usize,
    #[arg(long, hide = true)]
    pub quiet: bool,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
}

pub fn migrate(args: MigrateArgs) -> Result<()> {
    let mut ch = args.clickhouse.clone();
    ch.url = Some(args.to.clone());
    let target = ch.target()?;
    target.check_shards()?;
    target.check()?;
    let store = crate::open_store(&args.data)?;
    let names: Vec<String> = match &args.project {
        Some(p) => vec![p.clone()],
        None => store
            .catalog()
            .projects
            .iter()
            .map(|p| p.name.clone())
            .collect(),
    };
    for name in names {
        let project = store.project(&name)?;
        let bar = if args.quiet {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::new(project.stats().events as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} {bar:40} {human_pos}/{human_len} events ({per_sec}, {eta} left)",
                )
                .expect("template"),
            );
            b.set_message(name.clone());
            b
        };
        let report = throughline_clickhouse::migrate::migrate(
            &target,
            &args.data,
            &project,
            args.restart,
            args.batch_events,
            &mut |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            },
        )
        .with_context(|| format!("migrating project {name}"))?;
        bar.finish_and_clear();
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
