//! `throughline query attribution` (from a project's events) and `throughline attribution
//! --paths FILE` (from a path table in ChannelAttribution's format): the same models and
//! the same JSON, printed as a table of credited conversions per key and model.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use throughline_query::attribution::{AttributionRequest, AttributionResponse};

use crate::output::{self, Format};
use crate::query::Target;

/// Path table files read at most.
const PATH_TABLE_BYTES_MAX: u64 = 2 << 30;

const MODELS_HELP: &str = "Models: first_touch, last_touch, last_non_direct (GA4: Direct only when nothing else), linear,\ntime_decay (--half-life), position_based (--position first,middle,last percent), markov (exact\nremoval effects, --order 1-4), shapley (Zhao et al. 2018), or all side by side.";

#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub target: Target,
    /// The conversion event: a name, `A|B`, `page:/path`, or `NAME where revenue > 50`
    #[arg(long)]
    pub conversion: String,
    /// A model, or all
    #[arg(long, default_value = "all")]
    pub model: String,
    /// What a touch is labelled by: channel, source, medium, source_medium, campaign, content, landing_page, asset
    #[arg(long, default_value = "channel")]
    pub by: String,
    /// How long before a conversion touches count: 30d, 12w
    #[arg(long, default_value = "90d")]
    pub lookback: String,
    /// A numeric property of the conversion events to credit as value, e.g. revenue
    #[arg(long)]
    pub value: Option<String>,
    /// first (each person's first conversion in the range) or all
    #[arg(long, default_value = "first")]
    pub conversions: String,
    #[command(flatten)]
    pub settings: ModelSettings,
    /// Inactivity that ends a session
    #[arg(long, default_value = "30m")]
    pub timeout: String,
    /// Start of the conversions' range (YYYY-MM-DD or RFC 3339), inclusive
    #[arg(long)]
    pub from: Option<String>,
    /// End of the range, exclusive
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Args)]
pub struct ModelSettings {
    /// Markov chain order, 1 to 4
    #[arg(long, default_value_t = 1)]
    pub order: usize,
    /// Time decay: a touch's credit halves this long before the conversion
    #[arg(long = "half-life", default_value = "7d")]
    pub half_life: String,
    /// Position based: first, middle and last shares in percent
    #[arg(long, default_value = "40,20,40")]
    pub position: String,
    /// Also list the top N paths of the path table behind the answer
    #[arg(long = "top-paths")]
    pub top_paths: Option<usize>,
}

impl ModelSettings {
    fn position(&self) -> Result<Vec<f64>> {
        self.position
            .split(',')
            .map(|v| {
                v.trim()
                    .trim_end_matches('%')
                    .parse::<f64>()
                    .with_context(|| format!("--position {:?}: use e.g. 40,20,40", self.position))
            })
            .collect()
    }
}

#[derive(Args)]
#[command(after_help = format!(
    "Examples:\n  throughline attribution --paths paths.csv --model markov --order 2 --format table\n  throughline query paths --data ./data --project shop --of channels --conversion 'Order Completed' --format channelattribution > paths.csv\n\nThe file is ChannelAttribution's input: `path;total_conversions;total_conversion_value;total_null`,\ntouches separated by `>`; value and null columns are optional.\n\n{MODELS_HELP}"
))]
pub struct TableArgs {
    /// The path table (CSV, `;`-separated)
    #[arg(long)]
    pub paths: PathBuf,
    /// A model, or all (every model but time_decay, which needs touch times)
    #[arg(long, default_value = "all")]
    pub model: String,
    #[command(flatten)]
    pub settings: ModelSettings,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

pub const QUERY_AFTER_HELP: &str = "Examples:\n  throughline query attribution --data ./data --project shop --conversion 'Order Completed' --model all --value revenue --format table\n  throughline query attribution --data ./data --project shop --conversion 'Signed Up' --model markov --order 2 --by campaign --lookback 30d\n\nA touch is a session; a journey is a person's sessions across their devices up to and including the\nconversion's, within --lookback. Cost comes from `throughline spend import`.";

pub fn query(args: QueryArgs) -> Result<()> {
    let req = AttributionRequest {
        conversion: args.conversion,
        model: Some(args.model),
        by: Some(args.by),
        lookback: Some(args.lookback),
        value: args.value,
        conversions: Some(args.conversions),
        order: Some(args.settings.order),
        half_life: Some(args.settings.half_life.clone()),
        position: Some(args.settings.position()?),
        timeout: Some(args.timeout),
        from: args.from,
        to: args.to,
        paths: args.settings.top_paths,
        filter: args.target.filter(),
    };
    let (reader, rules) = crate::query::open_project(&args.target)?;
    let registry = throughline_query::assets::Registry::load(reader.dir())?;
    let spend = throughline_query::spend::Spend::load(reader.dir())?;
    let r = reader
        .with(|src| throughline_query::attribution::run(src, &rules, &registry, &spend, &req))?;
    print(&r, args.target.format)
}

pub fn table(args: TableArgs) -> Result<()> {
    let len = std::fs::metadata(&args.paths)
        .with_context(|| format!("{}", args.paths.display()))?
        .len();
    if len > PATH_TABLE_BYTES_MAX {
        bail!(
            "{}: {len} bytes, more than the {PATH_TABLE_BYTES_MAX} allowed",
            args.paths.display()
        );
    }
    let file =
        std::fs::File::open(&args.paths).with_context(|| format!("{}", args.paths.display()))?;
    let position = args.settings.position()?;
    let r = throughline_query::attribution::run_table(
        file,
        &args.paths.display().to_string(),
        Some(&args.model),
        Some(args.settings.order),
        Some(&position),
        args.settings.top_paths,
    )?;
    print(&r, args.format)
}

fn print(r: &AttributionResponse, format: Format) -> Result<()> {
    match format {
        Format::Json => output::json(&serde_json::to_value(r)?),
        Format::Table => {
            // One row per key, one column per model: the side-by-side view marketers read.
            let answers: Vec<(&str, &[throughline_query::attribution::AttributionRow])> =
                match (&r.models, &r.rows) {
                    (Some(models), _) => models
                        .iter()
                        .map(|m| (m.model.as_str(), m.rows.as_slice()))
                        .collect(),
                    (None, Some(rows)) => vec![(r.model.as_str(), rows.as_slice())],
                    _ => Vec::new(),
                };
            let mut keys: Vec<String> = Vec::new();
            for (_, rows) in &answers {
                for row in *rows {
                    if !keys.contains(&row.key) {
                        keys.push(row.key.clone());
                    }
                }
            }
            let mut header: Vec<String> = vec![r.by.clone()];
            header.extend(answers.iter().map(|(m, _)| m.to_string()));
            let single = answers.len() == 1;
            if single {
                header.extend(["share", "value", "cost", "cost/conv", "roas"].map(String::from));
            }
            let mut rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    let mut line = vec![k.clone()];
                    for (_, rows) in &answers {
                        let row = rows.iter().find(|x| &x.key == k);
                        line.push(row.map_or("-".into(), |x| format!("{:.2}", x.conversions)));
                        if single {
                            let x = row.expect("single model lists every key");
                            let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
                            line.push(format!("{:.1}%", x.share * 100.0));
                            line.push(format!("{:.2}", x.value));
                            line.push(opt(x.cost));
                            line.push(opt(x.cost_per_conversion));
                            line.push(opt(x.roas));
                        }
                    }
                    line
                })
                .collect();
            let mut total = vec!["total".to_string()];
            total.extend(
                answers
                    .iter()
                    .map(|_| format!("{:.2}", r.total_conversions)),
            );
            rows.push(total);
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            output::table(&header, &rows);
            if r.unattributed_conversions > 0.0 {
                eprintln!(
                    "{} conversions had no session within the lookback and are not credited",
                    r.unattributed_conversions
                );
            }
            if let Some(paths) = &r.paths {
                println!();
                output::table(
                    &["conversions", "value", "nulls", "path"],
                    &paths
                        .iter()
                        .map(|p| {
                            vec![
                                format!("{}", p.conversions),
                                format!("{:.2}", p.value),
                                format!("{}", p.nulls),
                                p.path.join(" > "),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
    }
    Ok(())
}
