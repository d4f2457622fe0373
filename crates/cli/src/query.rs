//! `throughline query ...`: the query engine from the command line, with the same request
//! types and JSON answers as the HTTP API.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use throughline_query::assets::AssetsRequest;
use throughline_query::funnel::FunnelRequest;
use throughline_query::paths::PathsRequest;
use throughline_query::retention::RetentionRequest;
use throughline_query::sessions::SessionsRequest;
use throughline_query::trends::{Interval, TrendsRequest};

use crate::output::{self, Format};

/// `query paths --format`: the usual two, and ChannelAttribution's path table.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum PathsFormat {
    #[default]
    Json,
    Table,
    Channelattribution,
}

#[derive(Args)]
pub struct Target {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub project: String,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Only persons whose first touch in the range is in this channel, e.g. 'Paid Search'
    #[arg(long)]
    pub channel: Option<String>,
    /// Only persons whose first touch in the range is from this campaign
    #[arg(long)]
    pub campaign: Option<String>,
    #[command(flatten)]
    pub backend: crate::clickhouse::BackendArgs,
}

impl Target {
    /// The `filter` of the request, from `--channel` and `--campaign`.
    pub fn filter(&self) -> Option<throughline_query::filter::Filter> {
        filter(&self.channel, &self.campaign)
    }
}

fn filter(
    channel: &Option<String>,
    campaign: &Option<String>,
) -> Option<throughline_query::filter::Filter> {
    (channel.is_some() || campaign.is_some()).then(|| throughline_query::filter::Filter {
        channel: channel.clone(),
        campaign: campaign.clone(),
    })
}

#[derive(Subcommand)]
pub enum QueryCommand {
    /// Persons reaching each step in order within a window (ClickHouse windowFunnel semantics)
    #[command(
        after_help = "Examples:\n  throughline query funnel --data ./data --project shop --step 'Product Viewed' --step 'Product Added' --step 'Order Completed' --window 7d\n  throughline query funnel ... --step 'page:/products/*' --step 'Checkout Started|Cart Viewed' --order strict --exclude 'Support Ticket Opened'"
    )]
    Funnel {
        #[command(flatten)]
        target: Target,
        /// A step: an event name, `A|B` for either, `page:/path/*` for page views by path
        #[arg(long = "step", required = true)]
        steps: Vec<String>,
        /// Conversion window from the first step: 30m, 12h, 7d, 2w
        #[arg(long, default_value = "7d")]
        window: String,
        /// ordered, strict (no other event between steps) or unordered
        #[arg(long, default_value = "ordered")]
        order: String,
        /// An event that abandons an attempt when it happens between two steps
        #[arg(long)]
        exclude: Vec<String>,
        /// Window from the previous step, one per step after the first (`-` for none)
        #[arg(long = "step-window")]
        step_windows: Vec<String>,
        /// Start of the range (YYYY-MM-DD or RFC 3339), inclusive
        #[arg(long)]
        from: Option<String>,
        /// End of the range, exclusive
        #[arg(long)]
        to: Option<String>,
        /// One funnel per value: first-touch channel, source, medium, source_medium, campaign, content,
        /// landing_page; property:NAME (the event property on each person's first step-1 event);
        /// person:NAME (the person's latest identify trait)
        #[arg(long)]
        by: Option<String>,
        /// With --by: the values listed, most persons first; the rest are summed as (other)
        #[arg(long = "by-limit")]
        by_limit: Option<usize>,
        /// Drill-down: list the persons at this step (1-based)
        #[arg(long = "persons-at")]
        persons_step: Option<usize>,
        /// With --persons-at: converted (reached the step) or dropped (reached it, not the next)
        #[arg(long = "persons-status", default_value = "converted")]
        persons_status: String,
        #[arg(long = "persons-offset", default_value_t = 0)]
        persons_offset: usize,
        #[arg(long = "persons-limit", default_value_t = 100)]
        persons_limit: usize,
    },
    /// Event counts and unique persons per day, week or month
    #[command(
        after_help = "Example:\n  throughline query trends --data ./data --project shop --event 'Order Completed' --event 'Signed Up' --interval week"
    )]
    Trends {
        #[command(flatten)]
        target: Target,
        #[arg(long = "event", required = true)]
        events: Vec<String>,
        /// day, week or month
        #[arg(long, default_value = "day")]
        interval: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Split by first-touch channel, source, medium, source_medium, campaign, content or landing_page,
        /// by each event's property:NAME, or by the person's latest identify trait person:NAME
        #[arg(long)]
        by: Option<String>,
        /// With --by: the values listed, most persons first; the rest are summed as (other)
        #[arg(long = "by-limit")]
        by_limit: Option<usize>,
    },
    /// Sessions, engaged sessions and bounce rate by channel, source, campaign, landing page or day
    #[command(
        after_help = "Examples:\n  throughline query sessions --data ./data --project shop --by channel --format table\n  throughline query sessions --data ./data --project shop --by landing_page --timeout 30m\n\nChannels follow GA4's default channel group; put a channels.toml in the project directory to extend them."
    )]
    Sessions {
        #[command(flatten)]
        target: Target,
        /// channel, source, medium, source_medium, campaign, content, landing_page, day, week, none
        #[arg(long, default_value = "channel")]
        by: String,
        /// Inactivity that ends a session
        #[arg(long, default_value = "30m")]
        timeout: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
    },
    /// Top event or page sequences after a start / before an end event, or channel journeys to a conversion
    #[command(
        after_help = "Examples:\n  throughline query paths --data ./data --project shop --start 'page:/' --depth 4 --format table\n  throughline query paths --data ./data --project shop --end 'Order Completed' --depth 5\n  throughline query paths --data ./data --project shop --of channels --conversion 'Order Completed'"
    )]
    Paths {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        project: String,
        /// json, table, or channelattribution (with --of channels: the whole path table as
        /// ChannelAttribution's CSV, the input of `throughline attribution --paths`)
        #[arg(long, value_enum, default_value_t)]
        format: PathsFormat,
        /// events (event names, page views as page:/path) or channels (session channels up to a conversion)
        #[arg(long, default_value = "events")]
        of: String,
        #[arg(long)]
        start: Option<String>,
        #[arg(long)]
        end: Option<String>,
        /// With --of channels: the event that ends a journey
        #[arg(long)]
        conversion: Option<String>,
        #[arg(long, default_value_t = 5)]
        depth: usize,
        /// Paths listed
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// With --format channelattribution: the conversions' property summed as value
        #[arg(long)]
        value: Option<String>,
        /// With --format channelattribution: how far before a conversion touches count
        #[arg(long, default_value = "90d")]
        lookback: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Only persons whose first touch in the range is in this channel
        #[arg(long)]
        channel: Option<String>,
        /// Only persons whose first touch in the range is from this campaign
        #[arg(long)]
        campaign: Option<String>,
        #[command(flatten)]
        backend: crate::clickhouse::BackendArgs,
    },
    /// One scorecard row per asset: reach, sessions, bounce, engaged time, conversions, revenue, funnel drop-off
    #[command(
        after_help = "Examples:\n  throughline query assets --data ./data --project shop --conversion 'Order Completed' --value revenue --format table\n  throughline query assets --data ./data --project shop --conversion 'Signed Up' --window 30d --from 2026-09-01 --to 2026-10-01\n\nA session's asset is its utm_content, else its utm_campaign, else its landing page path, named by the\nregistry (throughline assets import) by id or destination URL; unregistered assets are listed by that value.\nConversions: persons and sessions followed by the event within --window of the session's start, and\nconversion events credited last-touch to the latest session before them within the window."
    )]
    Assets {
        #[command(flatten)]
        target: Target,
        /// The conversion event: a name, `A|B`, `page:/path`, or `NAME where revenue > 50`
        #[arg(long)]
        conversion: String,
        /// How long after a session's start a conversion counts for its asset: 30m, 12h, 7d
        #[arg(long, default_value = "7d")]
        window: String,
        /// A numeric property of the conversion events to sum as revenue, e.g. revenue
        #[arg(long)]
        value: Option<String>,
        /// Inactivity that ends a session
        #[arg(long, default_value = "30m")]
        timeout: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Rows listed, most sessions first (the rest are summed as omitted)
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Also count each asset's conversions per day, week or month (JSON output)
        #[arg(long)]
        interval: Option<String>,
    },
    /// Credit for conversions by channel, source, campaign or asset under every attribution model
    #[command(after_help = format!("{}\n\n{}", crate::attribution::QUERY_AFTER_HELP, "See `throughline attribution --help` for the models."))]
    Attribution(crate::attribution::QueryArgs),
    /// How people feel per journey stage: NPS, CSAT, CES with intervals, comment sentiment, moments of truth
    #[command(
        after_help = "Examples:\n  throughline query emotion --data ./data --project shop --format table\n  throughline query emotion --data ./data --project shop --by channel\n  throughline query emotion --data ./data --project shop --by week --min-responses 50\n\nJourney stages come from DIR/projects/NAME/stages.toml (see README), else the defaults."
    )]
    Emotion(crate::cx::EmotionArgs),
    /// Touch frequency against unsubscribes, complaints and conversions, with a recommended cap per channel
    #[command(
        after_help = "Examples:\n  throughline query fatigue --data ./data --project shop --conversion 'Order Completed' --conversion-value 40 --unsubscribe-cost 15 --format table\n  throughline query fatigue ... --configured-cap Email=3 --audience-out fatigued.csv   # a suppression list"
    )]
    Fatigue(crate::cx::FatigueArgs),
    /// Consistency audit: UTM spellings, Unassigned traffic, campaigns and assets without each other, message match, error landings
    #[command(
        after_help = "Examples:\n  throughline query audit --data ./data --project shop --format table\n  throughline query audit --data ./data --project shop --conversion 'Order Completed' --similarity-min 0.15\n\nRegistered destination URLs are checked over HTTP by `throughline audit links`."
    )]
    Audit(crate::cx::AuditArgs),
    /// Cohorts by first start event and the share returning in each period
    #[command(
        after_help = "Example:\n  throughline query retention --data ./data --project shop --start 'Signed Up' --return 'Order Completed' --period week --periods 8"
    )]
    Retention {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        start: String,
        #[arg(long = "return")]
        return_event: String,
        /// day, week or month
        #[arg(long, default_value = "week")]
        period: String,
        #[arg(long, default_value_t = 8)]
        periods: usize,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
    },
}

pub fn run(cmd: QueryCommand) -> Result<()> {
    match cmd {
        QueryCommand::Emotion(a) => crate::cx::emotion(a),
        QueryCommand::Fatigue(a) => crate::cx::fatigue(a),
        QueryCommand::Audit(a) => crate::cx::audit(a),
        QueryCommand::Funnel {
            target,
            steps,
            window,
            order,
            exclude,
            step_windows,
            from,
            to,
            by,
            by_limit,
            persons_step,
            persons_status,
            persons_offset,
            persons_limit,
        } => {
            let req = FunnelRequest {
                steps,
                window,
                order: Some(order),
                exclude,
                step_windows: step_windows
                    .into_iter()
                    .map(|w| (w != "-").then_some(w))
                    .collect(),
                from,
                to,
                by,
                by_limit,
                persons: persons_step.map(|step| throughline_query::funnel::PersonsRequest {
                    step,
                    status: persons_status,
                    offset: persons_offset,
                    limit: persons_limit,
                }),
                filter: target.filter(),
            };
            let (reader, rules) = open_project(&target)?;
            let r = reader.with(|src| throughline_query::funnel::run(src, &rules, &req))?;
            match target.format {
                Format::Json => output::json(&serde_json::to_value(&r)?),
                Format::Table => {
                    let mut groups = vec![(String::new(), &r.steps)];
                    if let Some(b) = &r.breakdown {
                        groups.extend(b.iter().map(|g| (g.value.clone(), &g.steps)));
                    }
                    let rows: Vec<Vec<String>> = groups
                        .iter()
                        .flat_map(|(value, steps)| {
                            steps.iter().map(move |s| {
                                vec![
                                    if value.is_empty() {
                                        "all".to_string()
                                    } else {
                                        value.clone()
                                    },
                                    s.name.clone(),
                                    s.persons.to_string(),
                                    pct(s.conversion_from_previous),
                                    pct(s.conversion_from_first),
                                    s.median_seconds_to_convert
                                        .map_or("-".into(), human_seconds),
                                ]
                            })
                        })
                        .collect();
                    output::table(
                        &[
                            "group",
                            "step",
                            "persons",
                            "from previous",
                            "from first",
                            "median time",
                        ],
                        &rows,
                    );
                }
            }
            Ok(())
        }
        QueryCommand::Trends {
            target,
            events,
            interval,
            from,
            to,
            by,
            by_limit,
        } => {
            let req = TrendsRequest {
                events,
                interval: Interval::parse(&interval)?,
                from,
                to,
                by,
                by_limit,
                filter: target.filter(),
            };
            let (reader, rules) = open_project(&target)?;
            let r = reader.with(|src| throughline_query::trends::run(src, &rules, &req))?;
            match target.format {
                Format::Json => output::json(&serde_json::to_value(&r)?),
                Format::Table => output::table(
                    &["date", "event", "group", "events", "persons"],
                    &r.rows
                        .iter()
                        .map(|t| {
                            vec![
                                t.date.clone(),
                                t.event.clone(),
                                t.group.clone().unwrap_or_default(),
                                t.events.to_string(),
                                t.persons.to_string(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
        QueryCommand::Sessions {
            target,
            by,
            timeout,
            from,
            to,
        } => {
            let req = SessionsRequest {
                by: Some(by),
                timeout: Some(timeout),
                from,
                to,
                filter: target.filter(),
            };
            let (reader, rules) = open_project(&target)?;
            let r = reader.with(|src| throughline_query::sessions::run(src, &rules, &req))?;
            match target.format {
                Format::Json => output::json(&serde_json::to_value(&r)?),
                Format::Table => output::table(
                    &[
                        "key",
                        "sessions",
                        "engaged",
                        "bounce rate",
                        "avg duration",
                        "persons",
                    ],
                    &r.rows
                        .iter()
                        .chain(std::iter::once(&r.total))
                        .map(|s| {
                            vec![
                                s.key.clone(),
                                s.sessions.to_string(),
                                s.engaged_sessions.to_string(),
                                pct(Some(s.bounce_rate)),
                                human_seconds(s.avg_duration_seconds),
                                s.persons.to_string(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
        QueryCommand::Paths {
            data,
            project,
            format,
            of,
            start,
            end,
            conversion,
            depth,
            limit,
            value,
            lookback,
            from,
            to,
            channel,
            campaign,
            backend,
        } => {
            let target = Target {
                data,
                project,
                format: match format {
                    PathsFormat::Table => Format::Table,
                    _ => Format::Json,
                },
                channel,
                campaign,
                backend,
            };
            if let PathsFormat::Channelattribution = format {
                if of != "channels" {
                    anyhow::bail!("--format channelattribution needs --of channels");
                }
                let conversion = conversion
                    .ok_or_else(|| anyhow::anyhow!("--of channels needs --conversion EVENT"))?;
                let req = throughline_query::attribution::AttributionRequest {
                    conversion,
                    model: Some("first_touch".into()),
                    value,
                    lookback: Some(lookback),
                    from,
                    to,
                    paths: Some(throughline_query::attribution::PATHS_MAX),
                    filter: target.filter(),
                    ..Default::default()
                };
                let (reader, rules) = open_project(&target)?;
                let registry = throughline_query::assets::Registry::load(reader.dir())?;
                let r = reader.with(|src| {
                    throughline_query::attribution::run(
                        src,
                        &rules,
                        &registry,
                        &Default::default(),
                        &req,
                    )
                })?;
                if r.distinct_paths as usize > throughline_query::attribution::PATHS_MAX {
                    eprintln!(
                        "{} distinct paths: the {} with the most conversions are written",
                        r.distinct_paths,
                        throughline_query::attribution::PATHS_MAX
                    );
                }
                print!(
                    "{}",
                    throughline_query::attribution::channelattribution_csv(
                        r.paths.as_deref().unwrap_or_default()
                    )
                );
                return Ok(());
            }
            let req = PathsRequest {
                of: Some(of),
                start,
                end,
                conversion,
                depth: Some(depth),
                limit: Some(limit),
                timeout: None,
                from,
                to,
                filter: target.filter(),
            };
            let (reader, rules) = open_project(&target)?;
            let r = reader.with(|src| throughline_query::paths::run(src, &rules, &req))?;
            match target.format {
                Format::Json => output::json(&serde_json::to_value(&r)?),
                Format::Table => output::table(
                    &["persons", "conversions", "path"],
                    &r.paths
                        .iter()
                        .map(|p| {
                            vec![
                                p.persons.to_string(),
                                p.conversions.map_or("-".into(), |c| c.to_string()),
                                p.path.join(" > "),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
        QueryCommand::Assets {
            target,
            conversion,
            window,
            value,
            timeout,
            from,
            to,
            limit,
            interval,
        } => {
            let req = AssetsRequest {
                conversion,
                window,
                value,
                timeout: Some(timeout),
                from,
                to,
                limit: Some(limit),
                filter: target.filter(),
                interval: interval.as_deref().map(Interval::parse).transpose()?,
            };
            let (reader, rules) = open_project(&target)?;
            let registry = throughline_query::assets::Registry::load(reader.dir())?;
            let r =
                reader.with(|src| throughline_query::assets::run(src, &rules, &registry, &req))?;
            match target.format {
                Format::Json => output::json(&serde_json::to_value(&r)?),
                Format::Table => {
                    let line = |asset: String,
                                kind: String,
                                s: &throughline_query::assets::Scores,
                                funnel: String| {
                        vec![
                            asset,
                            kind,
                            s.sessions.to_string(),
                            s.persons.to_string(),
                            pct(s.bounce_rate),
                            s.avg_engaged_seconds.map_or("-".into(), human_seconds),
                            s.converted_persons.to_string(),
                            pct(s.conversion_rate),
                            s.conversions.to_string(),
                            s.revenue.map_or("-".into(), |v| format!("{v:.2}")),
                            funnel,
                        ]
                    };
                    let mut rows: Vec<Vec<String>> = r
                        .rows
                        .iter()
                        .map(|a| {
                            let funnel = a.funnel.as_ref().map_or(String::new(), |steps| {
                                steps
                                    .iter()
                                    .map(|f| {
                                        format!("{} {}", f.name, pct(f.conversion_from_previous))
                                    })
                                    .collect::<Vec<_>>()
                                    .join(" > ")
                            });
                            let kind = a
                                .kind
                                .clone()
                                .unwrap_or_else(|| format!("({})", a.keyed_by));
                            line(a.asset.clone(), kind, &a.scores, funnel)
                        })
                        .collect();
                    rows.push(line(
                        "all".into(),
                        String::new(),
                        &r.total.scores,
                        String::new(),
                    ));
                    output::table(
                        &[
                            "asset",
                            "kind",
                            "sessions",
                            "persons",
                            "bounce rate",
                            "avg engaged",
                            "converted",
                            "conv rate",
                            "last-touch conv",
                            "revenue",
                            "funnel",
                        ],
                        &rows,
                    );
                }
            }
            Ok(())
        }
        QueryCommand::Attribution(args) => crate::attribution::query(args),
        QueryCommand::Retention {
            target,
            start,
            return_event,
            period,
            periods,
            from,
            to,
        } => {
            let req = RetentionRequest {
                start,
                return_event,
                period: Interval::parse(&period)?,
                periods,
                from,
                to,
                filter: target.filter(),
            };
            let (reader, rules) = open_project(&target)?;
            {
                let r = reader.with(|src| throughline_query::retention::run(src, &rules, &req))?;
                match target.format {
                    Format::Json => output::json(&serde_json::to_value(&r)?),
                    Format::Table => {
                        let mut header = vec!["cohort".to_string(), "size".to_string()];
                        header.extend((0..=periods).map(|p| format!("p{p}")));
                        let header: Vec<&str> = header.iter().map(String::as_str).collect();
                        output::table(
                            &header,
                            &r.cohorts
                                .iter()
                                .map(|c| {
                                    let mut row = vec![c.cohort.clone(), c.size.to_string()];
                                    row.extend(c.share.iter().map(|s| pct(Some(*s))));
                                    row
                                })
                                .collect::<Vec<_>>(),
                        )
                    }
                }
                Ok(())
            }
        }
    }
}

/// The project's events (the embedded store, kept open while used, or ClickHouse) and
/// its channel rules.
pub(crate) fn open_project(
    target: &Target,
) -> Result<(crate::clickhouse::Reader, throughline_classify::Rules)> {
    let reader = crate::clickhouse::Reader::open(&target.data, &target.project, &target.backend)?;
    let rules = throughline_query::sessions::project_rules(reader.dir())?;
    Ok((reader, rules))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn human_seconds(s: f64) -> String {
    match s {
        s if s < 120.0 => format!("{s:.0}s"),
        s if s < 7200.0 => format!("{:.0}m", s / 60.0),
        s if s < 172_800.0 => format!("{:.1}h", s / 3600.0),
        s => format!("{:.1}d", s / 86_400.0),
    }
}
