//! `throughline demo` and `throughline generate`: the demo generator's data, loaded and
//! served (with its follow-up journeys and frequency caps), or written to a file.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use throughline_demo::{Brand, DemoConfig};
use throughline_store::{Catalog, ProjectStore};

use crate::import::{self, Source, Summary};

/// Marks a directory `demo` created, so it may wipe and reload it.
const MARKER: &str = ".throughline-demo";

#[derive(Clone, Copy, ValueEnum)]
pub enum BrandArg {
    Headphones,
    Subscription,
}

impl From<BrandArg> for Brand {
    fn from(b: BrandArg) -> Brand {
        match b {
            BrandArg::Headphones => Brand::Headphones,
            BrandArg::Subscription => Brand::Subscription,
        }
    }
}

#[derive(Args)]
pub struct DemoArgs {
    /// Data directory for the demo (re-created on every run)
    #[arg(long, default_value = "throughline-demo")]
    pub data: PathBuf,
    /// Persons per brand
    #[arg(long, default_value_t = 3000)]
    pub persons: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Load the data and print the headline answers, without starting the server
    #[arg(long)]
    pub no_serve: bool,
}

pub fn run(args: DemoArgs) -> Result<()> {
    prepare_dir(&args.data)?;
    let mut keys = Vec::new();
    for brand in [Brand::Headphones, Brand::Subscription] {
        keys.push(Catalog::create_project(&args.data, brand.name())?);
        crate::audit(&args.data, "project.create", Some(brand.name()), "demo")?;
    }
    let addr = throughline_server::parse_listen(&args.listen).map_err(anyhow::Error::msg)?;
    let config = demo_config(addr);
    let store = Arc::new(throughline_store::Store::open(
        &args.data,
        Default::default(),
    )?);
    let mut answers = Vec::new();
    for brand in [Brand::Headphones, Brand::Subscription] {
        let project = store.project(brand.name())?;
        // What the brand's marketer configured: the asset registry and offline channels.
        throughline_query::assets::Registry::from_csv(
            &throughline_demo::registry_csv(brand),
            "demo registry",
        )?
        .save(project.dir())?;
        std::fs::write(
            project.dir().join("channels.toml"),
            throughline_demo::channels_toml(brand),
        )?;
        let cfg = DemoConfig::new(brand, args.persons, args.seed);
        let progress = import::progress_bar(false);
        progress.set_message(format!("loading {}", brand.name()));
        let mut summary = Summary::default();
        let iter = throughline_demo::messages(&cfg)
            .enumerate()
            .map(|(i, v)| (i as u64 + 1, Ok(v)));
        import::import(
            &project,
            Source::Values {
                name: brand.name().to_string(),
                iter: Box::new(iter),
            },
            &progress,
            &mut summary,
        )?;
        progress.finish_and_clear();
        project.flush()?;
        // What the marketing cost, so attribution shows cost per conversion and ROAS.
        let spend = throughline_query::spend::Spend::from_csv(
            &throughline_demo::spend_csv(&cfg),
            "demo spend",
        )?;
        spend.save(project.dir())?;
        answers.push(headlines(&project, &summary)?);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({"projects": answers}))?
    );
    if args.no_serve {
        // The data alone: a reference data set stays as generated, with no journey to
        // write events into it when a server later opens it.
        store.close();
        return Ok(());
    }
    let journeys = create_journeys(&store, &config)?;
    eprintln!("\nDashboard: http://{addr}/  (sign in with a project's api key)");
    for k in &keys {
        eprintln!(
            "  project {:<13} api key {}  write key {}",
            k.name, k.api_key, k.write_key
        );
    }
    // The key rides in the fragment, which browsers never send: the page reads it once
    // and removes it from the address bar and history.
    eprintln!(
        "Open signed in: http://{addr}/#key={}",
        keys.first().map_or("", |k| k.api_key.as_str())
    );
    eprintln!(
        "Follow-up journeys (run over the demo's history as the server starts): {}",
        journeys
            .iter()
            .map(|(p, j)| format!("{p}/{j}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("Query API: http://{addr}/api/v1/openapi.json");
    eprintln!("Send events:  curl -u {}: http://{addr}/v1/track -d '{{\"userId\":\"ann\",\"event\":\"Hello\"}}'", keys[0].write_key);
    eprintln!("Stop with Ctrl-C.");
    crate::serve_store(store, config, addr)
}

/// What the demo's server runs with: the defaults, plus the frequency caps across journeys
/// that `query fatigue` compares its recommendations with, and tracked links on this
/// address.
fn demo_config(addr: std::net::SocketAddr) -> throughline_server::Config {
    let mut config = throughline_server::Config::default();
    config.orchestrate.public_url = format!("http://{addr}");
    config.orchestrate.caps = throughline_demo::CAPS
        .iter()
        .map(
            |&(channel, count, per)| throughline_orchestrate::policy::Cap {
                channel: channel.into(),
                count,
                per: per.into(),
            },
        )
        .collect();
    config
}

/// Journals each brand's follow-up journeys; they run once the server starts, its catch-up
/// feeding them the demo's history. The journeys' sends are audience exports, so they are
/// not registered as assets (they carry no links). Returns (project, journey) pairs.
fn create_journeys(
    store: &Arc<throughline_store::Store>,
    config: &throughline_server::Config,
) -> Result<Vec<(&'static str, String)>> {
    let o = throughline_server::orchestrate::Orchestrator::offline(
        store.clone(),
        config.orchestrate.clone(),
    );
    let mut out = Vec::new();
    for brand in [Brand::Headphones, Brand::Subscription] {
        let rt = o.project(brand.name())?;
        for text in throughline_demo::journeys_toml(brand) {
            let file = throughline_orchestrate::parse_file(text)
                .map_err(|p| anyhow::anyhow!("a demo journey does not parse: {p:?}"))?;
            out.push((brand.name(), file.name.clone()));
            o.submit(
                &rt,
                vec![throughline_orchestrate::Input::Create {
                    file: Box::new(file),
                }],
            )?;
        }
    }
    Ok(out)
}

fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            anyhow::bail!(
                "{} exists and was not created by `throughline demo`; pass another --data",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        b"created by throughline demo; safe to delete\n",
    )?;
    Ok(())
}

/// What a terminal user sees first: volume, persons and stitching, what they did.
fn headlines(project: &ProjectStore, summary: &Summary) -> Result<Value> {
    let snap = project.snapshot();
    let identity = snap.identity();
    let mut persons = HashSet::new();
    let mut identified = HashSet::new();
    let mut devices: BTreeMap<u32, HashSet<u32>> = BTreeMap::new();
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    let mut revenue = 0.0;
    snap.for_each_event(|e, node| {
        let p = identity.person_of(node);
        persons.insert(p);
        if e.user_id.is_some() {
            identified.insert(p);
        }
        if e.anonymous_id.is_some() {
            devices.entry(p).or_default().insert(node);
        }
        let name = e
            .event
            .clone()
            .unwrap_or_else(|| e.event_type.as_str().to_string());
        if e.event.as_deref() == Some("Order Completed") {
            revenue += e
                .properties
                .get("revenue")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
        }
        *events.entry(name).or_default() += 1;
        Ok(())
    })?;
    let mut top: Vec<(String, u64)> = events.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(12);
    Ok(json!({
        "project": project.name(),
        "imported": summary.imported,
        "duplicates_dropped": summary.duplicates,
        "rejected": summary.rejected,
        "events": snap.event_count(),
        "persons": persons.len(),
        "identified_persons": identified.len(),
        "persons_with_several_devices": devices.values().filter(|d| d.len() > 1).count(),
        "revenue": (revenue * 100.0).round() / 100.0,
        "top_events": top.into_iter().map(|(k, v)| json!({"event": k, "count": v})).collect::<Vec<_>>(),
    }))
}

#[derive(Args)]
pub struct GenerateArgs {
    #[arg(long, value_enum, default_value = "headphones")]
    pub brand: BrandArg,
    #[arg(long, default_value_t = 1000)]
    pub persons: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Fraction of messages repeated with the same messageId, as SDK retries do
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Shuffle messages within bounded windows and add timestamp ties
    #[arg(long)]
    pub out_of_order: bool,
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the marketing spend of the same run as CSV (for `throughline spend import`)
    #[arg(long)]
    pub spend: Option<PathBuf>,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let mut cfg = DemoConfig::new(args.brand.into(), args.persons, args.seed);
    cfg.duplicate_rate = args.duplicates;
    cfg.out_of_order = args.out_of_order;
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let progress = import::progress_bar(false);
    let mut n = 0u64;
    for m in throughline_demo::messages(&cfg) {
        serde_json::to_writer(&mut out, &m)?;
        out.write_all(b"\n")?;
        n += 1;
        if n.is_multiple_of(8192) {
            progress.set_position(n);
        }
    }
    out.flush()?;
    progress.finish_and_clear();
    eprintln!("wrote {n} messages to {}", args.out.display());
    if let Some(path) = &args.spend {
        std::fs::write(path, throughline_demo::spend_csv(&cfg))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote the spend to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use throughline_demo::Brand;

    #[test]
    fn every_demo_journey_is_valid_and_its_caps_compile() {
        for brand in Brand::ALL {
            for text in throughline_demo::journeys_toml(brand) {
                let file = throughline_orchestrate::parse_file(text).expect("parses");
                throughline_orchestrate::compile(&file).expect("compiles");
            }
        }
        let config = super::demo_config("127.0.0.1:8080".parse().unwrap());
        config
            .orchestrate
            .check()
            .expect("the demo's orchestration config is valid");
    }
}
