//! `throughline spend ...`: marketing cost per day and channel, source, medium, campaign
//! or asset (`DIR/projects/NAME/spend.csv`), which attribution rows turn into cost per
//! conversion and return on ad spend.
//!
//! Like `assets`, these commands touch only the spend file (replaced atomically), never
//! the store, so they work while a server holds the data directory.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;
use throughline_query::spend::{Spend, SPEND_FILE_BYTES_MAX};

use crate::output;

#[derive(Subcommand)]
pub enum SpendCommand {
    /// Add cost rows from a CSV file (a row with the same date and keys replaces the old one)
    #[command(
        after_help = "Example:\n  throughline spend import --data ./data --project shop spend.csv\n\nCSV with a header: date (YYYY-MM-DD), cost, and any of channel, source, medium, campaign,\nasset (or content); currency is ignored. For example:\n  date,channel,source,medium,campaign,cost\n  2026-09-01,Paid Search,google,cpc,brand-search,120.50"
    )]
    Import {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        project: String,
        /// A .csv file of daily cost
        file: PathBuf,
        /// Replace all of the project's spend instead of adding to it
        #[arg(long)]
        replace: bool,
    },
    /// Total cost per channel, source, medium, campaign and asset
    #[command(
        after_help = "Example:\n  throughline spend list --data ./data --project shop --format table"
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

pub fn run(cmd: SpendCommand) -> Result<()> {
    match cmd {
        SpendCommand::Import {
            data,
            project,
            file,
            replace,
        } => {
            let dir = crate::assets::project_dir(&data, &project)?;
            let incoming = read(&file)?;
            let imported = incoming.len();
            let mut spend = if replace {
                Spend::default()
            } else {
                Spend::load(&dir)?
            };
            let (added, replaced) = spend.merge(incoming)?;
            let path = spend.save(&dir)?;
            output::json(&json!({
                "project": project,
                "spend": path.display().to_string(),
                "imported": imported,
                "added": added,
                "replaced": replaced,
                "rows": spend.len(),
            }));
            Ok(())
        }
        SpendCommand::List {
            data,
            project,
            format,
        } => {
            let spend = Spend::load(&crate::assets::project_dir(&data, &project)?)?;
            let totals = spend.totals();
            match format {
                output::Format::Json => output::json(&json!({
                    "rows": spend.len(),
                    "first_day": spend.date_range().map(|r| r.0.to_string()),
                    "last_day": spend.date_range().map(|r| r.1.to_string()),
                    "totals": totals.iter().map(|(d, v, c)| json!({"dimension": d, "key": v, "cost": c})).collect::<Vec<_>>(),
                })),
                output::Format::Table => output::table(
                    &["dimension", "key", "cost"],
                    &totals
                        .iter()
                        .map(|(d, v, c)| vec![d.clone(), v.clone(), format!("{c:.2}")])
                        .collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
    }
}

/// Reads a spend file, refusing oversized ones before reading them.
pub(crate) fn read(file: &std::path::Path) -> Result<Spend> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("{}", file.display()))?
        .len();
    if len > SPEND_FILE_BYTES_MAX as u64 {
        bail!(
            "{}: {len} bytes, more than the {SPEND_FILE_BYTES_MAX} allowed",
            file.display()
        );
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    Ok(Spend::from_csv(&text, &file.display().to_string())?)
}
