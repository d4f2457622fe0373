//! `throughline assets ...`: the project's asset registry (`DIR/projects/NAME/assets.toml`),
//! imported from CSV or TOML and listed.
//!
//! These commands touch only the registry file (replaced atomically), never the store, so
//! they work while a server holds the data directory; every query reads the registry anew.
//! Two imports at the same moment: the last rename wins.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;
use throughline_query::assets::{Registry, REGISTRY_BYTES_MAX};
use throughline_store::Catalog;

use crate::output;

const EXAMPLE_CSV: &str = "CSV (header required; name, destination_url, campaign and funnel optional):\n  id,kind,name,destination_url,campaign,funnel\n  banner-a,ad,Spring banner A,https://shop.example/sale?utm_content=banner-a,spring,Product Viewed > Order Completed\n  welcome-1,email,Welcome email 1,https://shop.example/?utm_campaign=welcome,welcome,\n  /pricing,landing_page,Pricing page,https://shop.example/pricing,,\n\nTOML:\n  [[asset]]\n  id = \"banner-a\"\n  kind = \"ad\"\n  name = \"Spring banner A\"\n  destination_url = \"https://shop.example/sale?utm_content=banner-a\"\n  campaign = \"spring\"\n  funnel = [\"Product Viewed\", \"Order Completed\"]\n\nA session's asset is its utm_content, else its utm_campaign, else its landing page path;\nit matches the entry with that id, else the entry whose destination_url gives the same\nvalue by the same rule. Kinds: ad, creative, campaign, email, landing_page, page, website,\nmicrosite, post, social, blog, podcast, video, whitepaper, ebook, search, display,\nretargeting, print, radio, tv, link, promo_code, other.";

#[derive(Subcommand)]
pub enum AssetsCommand {
    /// Add or update assets from a CSV or TOML file (an id already registered is replaced)
    #[command(after_help = format!(
        "Examples:\n  throughline assets import --data ./data --project shop assets.csv\n  throughline assets import --data ./data --project shop assets.toml --replace\n\n{EXAMPLE_CSV}"
    ))]
    Import {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        project: String,
        /// A .csv or .toml file of assets
        file: PathBuf,
        /// Replace the whole registry instead of adding to it
        #[arg(long)]
        replace: bool,
    },
    /// List a project's registered assets
    #[command(
        after_help = "Example:\n  throughline assets list --data ./data --project shop --format table"
    )]
    List {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        project: String,
        #[arg(long, value_enum, default_value_t)]
        format: output::Format,
    },
}

pub fn run(cmd: AssetsCommand) -> Result<()> {
    match cmd {
        AssetsCommand::Import {
            data,
            project,
            file,
            replace,
        } => {
            let dir = project_dir(&data, &project)?;
            let incoming = read_file(&file)?;
            let imported = incoming.assets.len();
            let mut registry = if replace {
                Registry::default()
            } else {
                Registry::load(&dir)?
            };
            let (added, updated) = registry.merge(incoming)?;
            let path = registry.save(&dir)?;
            output::json(&json!({
                "project": project,
                "registry": path.display().to_string(),
                "imported": imported,
                "added": added,
                "updated": updated,
                "assets": registry.assets.len(),
            }));
            Ok(())
        }
        AssetsCommand::List {
            data,
            project,
            format,
        } => {
            let registry = Registry::load(&project_dir(&data, &project)?)?;
            match format {
                output::Format::Json => output::json(&serde_json::to_value(&registry.assets)?),
                output::Format::Table => output::table(
                    &[
                        "id",
                        "kind",
                        "name",
                        "campaign",
                        "destination_url",
                        "funnel",
                    ],
                    &registry
                        .assets
                        .iter()
                        .map(|a| {
                            vec![
                                a.id.clone(),
                                a.kind.clone(),
                                a.name.clone().unwrap_or_default(),
                                a.campaign.clone().unwrap_or_default(),
                                a.destination_url.clone().unwrap_or_default(),
                                a.funnel.join(" > "),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
    }
}

/// The directory of a project in the catalog, without taking the data directory's lock.
pub(crate) fn project_dir(data: &Path, project: &str) -> Result<PathBuf> {
    if !data.join("catalog.json").exists() {
        bail!(
            "{} is not a Throughline data directory (no catalog.json); create a project first: throughline projects create NAME --data {}",
            data.display(),
            data.display()
        );
    }
    let catalog = Catalog::load(data)?;
    if catalog.get(project).is_none() {
        bail!("no project named {project:?} in {}", data.display());
    }
    let dir = data.join("projects").join(project);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    Ok(dir)
}

/// Parses a registry file by its extension, refusing oversized files before reading them.
fn read_file(file: &Path) -> Result<Registry> {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if !matches!(ext.as_deref(), Some("csv" | "toml")) {
        bail!(
            "{}: use a .csv or .toml file (see `throughline assets import --help`)",
            file.display()
        );
    }
    let len = std::fs::metadata(file)
        .with_context(|| format!("{}", file.display()))?
        .len();
    if len > REGISTRY_BYTES_MAX as u64 {
        bail!(
            "{}: {len} bytes, more than the {REGISTRY_BYTES_MAX} allowed",
            file.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("{}", file.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not valid UTF-8 ({e})", file.display()))?;
    let source = file.display().to_string();
    Ok(match ext.as_deref() {
        Some("csv") => Registry::from_csv(&text, &source)?,
        _ => Registry::from_toml(&text, &source)?,
    })
}
