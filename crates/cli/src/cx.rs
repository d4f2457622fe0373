//! How the journey feels, when it is too much, where it breaks: `query emotion`, `query
//! fatigue`, `query audit`, plus `audit links` (registered destinations over HTTP),
//! `survey link` (a signed link to the hosted survey page) and `sentiment` (VADER scores of
//! texts). Thin glue over `throughline_query`'s modules and the token crate.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use throughline_query::audit::AuditRequest;
use throughline_query::emotion::{EmotionRequest, Feelings};
use throughline_query::fatigue::{ChannelEvents, FatigueRequest};
use throughline_query::links::LinksRequest;

use crate::output::{self, Format};
use crate::query::Target;

#[derive(Args)]
pub struct EmotionArgs {
    #[command(flatten)]
    pub target: Target,
    /// Also break the scores down by: stage, channel, asset, campaign, day, week or month
    #[arg(long)]
    pub by: Option<String>,
    /// The event survey answers arrive as
    #[arg(long, default_value = "Survey Responded")]
    pub survey_event: String,
    /// An event whose text is feedback (repeat; default: Support Ticket Opened, Support Message Sent)
    #[arg(long = "text-event")]
    pub text_events: Vec<String>,
    /// Fewer answers than this give "not enough data"
    #[arg(long, default_value_t = 30)]
    pub min_responses: u64,
    /// Confidence level of the intervals
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Example comments per polarity and group
    #[arg(long, default_value_t = 3)]
    pub examples: usize,
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Args)]
pub struct FatigueArgs {
    #[command(flatten)]
    pub target: Target,
    /// The conversion event: a name, `A|B` or `page:/path`
    #[arg(long)]
    pub conversion: String,
    /// What one conversion is worth
    #[arg(long, default_value_t = 1.0)]
    pub conversion_value: f64,
    /// What one unsubscribe costs (the future value a lost subscriber takes away)
    #[arg(long, default_value_t = 10.0)]
    pub unsubscribe_cost: f64,
    /// What one complaint costs (default: the unsubscribe cost)
    #[arg(long)]
    pub complaint_cost: Option<f64>,
    /// The frequency window
    #[arg(long, default_value = "7d")]
    pub window: String,
    /// Touch counts with fewer windows do not inform the recommendation
    #[arg(long, default_value_t = 100)]
    pub min_windows: u64,
    /// A configured cap to compare with, CHANNEL=TOUCHES (repeat), e.g. Email=3; without
    /// any, the project's orchestration caps (of --config, else the ones its journeys last
    /// ran with)
    #[arg(long = "configured-cap")]
    pub configured_caps: Vec<String>,
    /// The server config whose `[orchestrate] caps` to compare with
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A JSON file with the channels' events ([{"channel", "touches", "engagements", "unsubscribes", "complaints"}])
    #[arg(long)]
    pub channels: Option<PathBuf>,
    /// "Now" for the audience (default: the end of the data)
    #[arg(long)]
    pub now: Option<String>,
    /// Write the whole fatigue audience to this file: .csv, or .json / .jsonl
    #[arg(long)]
    pub audience_out: Option<PathBuf>,
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub target: Target,
    /// A conversion event, for the conversion rates of message-match pairs
    #[arg(long)]
    pub conversion: Option<String>,
    /// How long after a session's start a conversion counts for it
    #[arg(long, default_value = "7d")]
    pub window: String,
    /// Events that mean "this page is broken" (default: Page Not Found|404|... |page:/404*)
    #[arg(long)]
    pub error_events: Option<String>,
    /// Asset/landing pairs less similar than this are flagged
    #[arg(long, default_value_t = 0.1)]
    pub similarity_min: f64,
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Request every registered destination URL (HEAD, else GET) and list the broken ones
    #[command(
        after_help = "Example:\n  throughline audit links --data ./data --project shop --timeout 5s --concurrency 8\n\nReads only the asset registry, so it also runs while a server holds the data directory.\nExits 0 with the report; broken destinations are in \"findings\"."
    )]
    Links {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        project: String,
        /// Per request
        #[arg(long, default_value = "10s")]
        timeout: String,
        /// Requests at once (at most 64)
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Subcommand)]
pub enum SurveyCommand {
    /// Mint a signed link to the hosted one-question survey page (GET /s/{token})
    #[command(
        after_help = "Example:\n  throughline survey link --data ./data --project shop --person user-42 --survey nps --stage post_purchase --base-url https://cx.example.com\n\nThe answer is stored as a `Survey Responded` event of that person; one answer per link.\nReads the project's token secret (created on first use), so it also runs while a server holds the data directory."
    )]
    Link {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        project: String,
        /// The user id the answer is recorded under
        #[arg(long)]
        person: String,
        /// nps, csat or ces
        #[arg(long)]
        survey: String,
        /// The survey's `stage` property (e.g. post_purchase, support, onboarding)
        #[arg(long)]
        stage: Option<String>,
        /// The question shown (default: a standard wording for the survey)
        #[arg(long)]
        question: Option<String>,
        /// Where the server is reachable from the recipient's browser
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base_url: String,
        /// How long the link works
        #[arg(long, default_value = "90d")]
        expires: String,
    },
}

#[derive(Args)]
pub struct SentimentArgs {
    /// Texts to score; without any, each line of standard input is one text
    pub texts: Vec<String>,
}

fn open(target: &Target) -> Result<crate::clickhouse::Reader> {
    crate::clickhouse::Reader::open(&target.data, &target.project, &target.backend)
}

pub fn emotion(a: EmotionArgs) -> Result<()> {
    let req = EmotionRequest {
        by: a.by,
        survey_event: Some(a.survey_event),
        text_events: (!a.text_events.is_empty()).then_some(a.text_events),
        min_responses: Some(a.min_responses),
        confidence: Some(a.confidence),
        timeout: None,
        examples: Some(a.examples),
        terms: None,
        from: a.from,
        to: a.to,
        filter: a.target.filter(),
    };
    let reader = open(&a.target)?;
    let rules = throughline_query::sessions::project_rules(reader.dir())?;
    let registry = throughline_query::assets::Registry::load(reader.dir())?;
    let stages = throughline_query::stages::Stages::load(reader.dir())?;
    let r = reader
        .with(|src| throughline_query::emotion::run(src, &rules, &registry, &stages, &req))?;
    match a.target.format {
        Format::Json => output::json(&serde_json::to_value(&r)?),
        Format::Table => {
            let line = |key: &str, extra: Vec<String>, f: &Feelings| {
                let mut row = vec![key.to_string()];
                row.extend(extra);
                row.extend([
                    score(f.nps.score, f.nps.ci_low, f.nps.ci_high, f.nps.responses, 0),
                    score(
                        f.csat.score.map(|v| v * 100.0),
                        f.csat.ci_low.map(|v| v * 100.0),
                        f.csat.ci_high.map(|v| v * 100.0),
                        f.csat.responses,
                        0,
                    ),
                    score(f.ces.score, f.ces.ci_low, f.ces.ci_high, f.ces.responses, 2),
                    score(
                        f.sentiment.mean_compound,
                        f.sentiment.ci_low,
                        f.sentiment.ci_high,
                        f.sentiment.texts,
                        2,
                    ),
                    f.sentiment
                        .negative_terms
                        .iter()
                        .take(4)
                        .map(|t| t.term.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                ]);
                row
            };
            let mut rows: Vec<Vec<String>> = r
                .stages
                .iter()
                .map(|s| {
                    let mut key = s.stage.clone();
                    if s.moment_of_truth {
                        key.push_str(" *");
                    }
                    line(
                        &key,
                        vec![
                            s.persons.to_string(),
                            s.drop_off
                                .map_or("-".into(), |d| format!("{:.1}%", d * 100.0)),
                        ],
                        &s.feelings,
                    )
                })
                .collect();
            rows.push(line("(no stage)", vec!["".into(), "".into()], &r.unstaged));
            rows.push(line("all", vec!["".into(), "".into()], &r.total));
            output::table(
                &[
                    "stage",
                    "persons",
                    "drop-off",
                    "NPS",
                    "CSAT %",
                    "CES",
                    "sentiment",
                    "negative terms",
                ],
                &rows,
            );
            if !r.groups.is_empty() {
                println!();
                let rows: Vec<Vec<String>> = r
                    .groups
                    .iter()
                    .map(|g| line(&g.key, vec![], &g.feelings))
                    .collect();
                let by = r.by.clone().unwrap_or_default();
                output::table(
                    &[
                        by.as_str(),
                        "NPS",
                        "CSAT %",
                        "CES",
                        "sentiment",
                        "negative terms",
                    ],
                    &rows,
                );
            }
            println!("\n* moment of truth. Scores: value [interval] (answers); - is not enough data (fewer than {} answers).", r.min_responses);
        }
    }
    Ok(())
}

fn score(v: Option<f64>, lo: Option<f64>, hi: Option<f64>, n: u64, digits: usize) -> String {
    match (v, lo, hi) {
        (Some(v), Some(lo), Some(hi)) => {
            format!("{v:.digits$} [{lo:.digits$}, {hi:.digits$}] ({n})")
        }
        (Some(v), _, _) => format!("{v:.digits$} ({n})"),
        _ if n == 0 => "".into(),
        _ => format!("- ({n})"),
    }
}

pub fn fatigue(a: FatigueArgs) -> Result<()> {
    let mut caps = BTreeMap::new();
    for c in &a.configured_caps {
        let (ch, n) = c.rsplit_once('=').with_context(|| {
            format!("--configured-cap {c:?}: use CHANNEL=TOUCHES, e.g. Email=3")
        })?;
        let n: u32 = n
            .trim()
            .parse()
            .with_context(|| format!("--configured-cap {c:?}: {n:?} is not a number of touches"))?;
        caps.insert(ch.trim().to_string(), n);
    }
    let channels: Option<Vec<ChannelEvents>> = match &a.channels {
        Some(p) => Some(
            serde_json::from_str(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            )
            .with_context(|| format!("{}: not a JSON list of channels", p.display()))?,
        ),
        None => None,
    };
    let mut req = FatigueRequest {
        conversion: a.conversion,
        channels,
        conversion_value: Some(a.conversion_value),
        unsubscribe_cost: Some(a.unsubscribe_cost),
        complaint_cost: a.complaint_cost,
        window: Some(a.window),
        min_windows: Some(a.min_windows),
        confidence: Some(a.confidence),
        configured_caps: (!caps.is_empty()).then_some(caps),
        now: a.now,
        audience_limit: Some(if a.audience_out.is_some() {
            throughline_query::fatigue::AUDIENCE_MAX
        } else {
            100
        }),
        from: a.from,
        to: a.to,
        filter: a.target.filter(),
        configured_cap_sources: BTreeMap::new(),
    };
    let reader = open(&a.target)?;
    if req.configured_caps.is_none() {
        let (caps, origin) = match &a.config {
            Some(p) => (
                crate::load_config(Some(p.clone()))?
                    .orchestrate
                    .fatigue_caps(),
                format!("the [orchestrate] caps of {}", p.display()),
            ),
            None => {
                let dir = reader.dir().join("orchestrate");
                let policy = throughline_server::orchestrate::journal::last_policy(&dir)
                    .map_err(anyhow::Error::msg)?;
                (
                    policy.map_or_else(Vec::new, |p| {
                        throughline_server::orchestrate::fatigue_caps(&p.caps)
                    }),
                    "the caps the project's journeys last ran with (its orchestrator journal)"
                        .to_string(),
                )
            }
        };
        throughline_query::fatigue::fill_from_orchestration(&mut req, &caps, &origin)?;
    }
    let rules = throughline_query::sessions::project_rules(reader.dir())?;
    let mut r = reader.with(|src| throughline_query::fatigue::run(src, &rules, &req))?;
    if let Some(path) = &a.audience_out {
        write_audience(path, &r.audience.rows)?;
        eprintln!(
            "wrote {} audience rows ({} persons) to {}",
            r.audience.rows.len(),
            r.audience.persons,
            path.display()
        );
        // The report on stdout stays short; the file has them all.
        let shown = r.audience.rows.len().min(100);
        r.audience.omitted_rows += (r.audience.rows.len() - shown) as u64;
        r.audience.rows.truncate(shown);
    }
    match a.target.format {
        Format::Json => output::json(&serde_json::to_value(&r)?),
        Format::Table => {
            for ch in &r.channels {
                println!(
                    "{}: {} persons, {} windows of {}, recommended cap {}, configured {}{} — {}",
                    ch.channel,
                    ch.persons,
                    ch.windows,
                    human_window(r.window_seconds),
                    ch.recommended_cap.map_or("-".into(), |c| c.to_string()),
                    ch.configured_cap.map_or("-".into(), |c| c.to_string()),
                    ch.configured_cap_source
                        .as_ref()
                        .map_or(String::new(), |s| format!(" ({})", s.detail)),
                    ch.cap_advice
                );
                let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}%", v * 100.0));
                let rows: Vec<Vec<String>> = ch
                    .curve
                    .iter()
                    .filter(|p| p.windows > 0)
                    .map(|p| {
                        vec![
                            p.touches.to_string(),
                            p.windows.to_string(),
                            pct(p.opt_out.rate),
                            pct(p.conversion.rate),
                            p.engagement_per_touch
                                .map_or("-".into(), |v| format!("{v:.2}")),
                            p.net_value.map_or("-".into(), |v| format!("{v:.4}")),
                            if Some(p.touches) == ch.recommended_cap {
                                "<- cap".into()
                            } else {
                                String::new()
                            },
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "touches",
                        "windows",
                        "opt-out",
                        "conversion",
                        "engaged/touch",
                        "net value",
                        "",
                    ],
                    &rows,
                );
                println!();
            }
            println!(
                "fatigue audience now ({}): {} persons{}",
                r.now,
                r.audience.persons,
                a.audience_out
                    .as_ref()
                    .map_or(String::new(), |p| format!(", written to {}", p.display()))
            );
        }
    }
    Ok(())
}

fn human_window(s: f64) -> String {
    if (s / 86_400.0).fract() == 0.0 {
        format!("{}d", s / 86_400.0)
    } else {
        format!("{s}s")
    }
}

/// The audience as a suppression list: CSV (`person_id,user_id,email,channel,...`, the ids
/// of several values joined by `;`) or JSON lines.
fn write_audience(path: &Path, rows: &[throughline_query::fatigue::AudienceRow]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "csv" => {
            writeln!(out, "person_id,user_ids,emails,anonymous_ids,channel,touches_last_window,cap,engagement_recent,engagement_before")?;
            let cell = |s: &str| {
                if s.contains([',', '"', '\n', '\r']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s.to_string()
                }
            };
            for r in rows {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{:.4},{:.4}",
                    cell(&r.person_id),
                    cell(&r.user_ids.join(";")),
                    cell(&r.emails.join(";")),
                    cell(&r.anonymous_ids.join(";")),
                    cell(&r.channel),
                    r.touches_last_window,
                    r.cap,
                    r.engagement_recent,
                    r.engagement_before
                )?;
            }
        }
        "json" | "jsonl" => {
            for r in rows {
                serde_json::to_writer(&mut out, r)?;
                out.write_all(b"\n")?;
            }
        }
        _ => bail!(
            "--audience-out {}: use a .csv, .json or .jsonl file",
            path.display()
        ),
    }
    out.flush()?;
    Ok(())
}

pub fn audit(a: AuditArgs) -> Result<()> {
    let req = AuditRequest {
        conversion: a.conversion,
        window: Some(a.window),
        error_events: a.error_events,
        similarity_min: Some(a.similarity_min),
        timeout: None,
        from: a.from,
        to: a.to,
        filter: a.target.filter(),
    };
    let reader = open(&a.target)?;
    let rules = throughline_query::sessions::project_rules(reader.dir())?;
    let registry = throughline_query::assets::Registry::load(reader.dir())?;
    let r = reader.with(|src| throughline_query::audit::run(src, &rules, &registry, &req))?;
    match a.target.format {
        Format::Json => output::json(&serde_json::to_value(&r)?),
        Format::Table => {
            output::table(
                &[
                    "kind", "severity", "subject", "sessions", "persons", "detail",
                ],
                &r.findings
                    .iter()
                    .map(|f| {
                        vec![
                            f.kind.to_string(),
                            f.severity.to_string(),
                            f.subject.clone(),
                            f.affected_sessions.to_string(),
                            f.affected_persons.to_string(),
                            f.detail.clone(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            let mm = &r.message_match;
            let rate = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0));
            println!(
                "\n{} sessions audited. Message match: {} matched pairs (bounce {}, conversion {}), {} mismatched (bounce {}, conversion {}).",
                r.sessions,
                mm.matched.pairs,
                rate(mm.matched.bounce_rate),
                rate(mm.matched.conversion_rate),
                mm.mismatched.pairs,
                rate(mm.mismatched.bounce_rate),
                rate(mm.mismatched.conversion_rate)
            );
        }
    }
    Ok(())
}

/// A project's directory without opening the store (no lock): `audit links` and `survey
/// link` only read files a running server does not write.
fn project_dir(data: &Path, project: &str) -> Result<PathBuf> {
    let catalog = throughline_store::Catalog::load(data)
        .with_context(|| format!("{} is not a Throughline data directory", data.display()))?;
    if catalog.get(project).is_none() {
        bail!("no project {project:?} in {}", data.display());
    }
    Ok(data.join("projects").join(project))
}

pub fn audit_command(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Links {
            data,
            project,
            timeout,
            concurrency,
            format,
        } => {
            let dir = project_dir(&data, &project)?;
            let registry = throughline_query::assets::Registry::load(&dir)?;
            let r = throughline_query::links::check(
                &registry,
                &LinksRequest {
                    timeout: Some(timeout),
                    concurrency: Some(concurrency),
                },
            )?;
            match format {
                Format::Json => output::json(&serde_json::to_value(&r)?),
                Format::Table => output::table(
                    &["ok", "status", "problem", "method", "ms", "url", "assets"],
                    &r.links
                        .iter()
                        .map(|l| {
                            vec![
                                if l.ok { "ok" } else { "BROKEN" }.to_string(),
                                l.status.map_or("-".into(), |s| s.to_string()),
                                l.problem.unwrap_or("").to_string(),
                                l.method.to_string(),
                                l.elapsed_ms.to_string(),
                                l.url.clone(),
                                l.assets.join(", "),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
    }
}

pub fn survey_command(cmd: SurveyCommand) -> Result<()> {
    match cmd {
        SurveyCommand::Link {
            data,
            project,
            person,
            survey,
            stage,
            question,
            base_url,
            expires,
        } => {
            let survey = survey.to_ascii_lowercase();
            if !["nps", "csat", "ces"].contains(&survey.as_str()) {
                bail!("--survey {survey:?}: use nps, csat or ces");
            }
            let dir = project_dir(&data, &project)?;
            let ttl = throughline_query::parse_duration(&expires)?;
            let secret = throughline_token::Secret::load_or_create(&dir)?;
            let now = throughline_store::now_ms();
            let mut claims = throughline_token::Claims::new("survey", &project, &person, now);
            claims.expires_ms = Some(now + ttl);
            claims.data.insert("survey".into(), survey.clone());
            if let Some(s) = stage {
                claims.data.insert("stage".into(), s);
            }
            if let Some(q) = question {
                claims.data.insert("question".into(), q);
            }
            let token = throughline_token::sign(&secret, &claims)?;
            let url = format!("{}/s/{token}", base_url.trim_end_matches('/'));
            output::json(&json!({
                "url": url,
                "token": token,
                "project": project,
                "person": person,
                "survey": survey,
                "expires_at": throughline_model::format_ms(now + ttl),
            }));
            Ok(())
        }
    }
}

pub fn sentiment(a: SentimentArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut score = |text: &str| -> Result<()> {
        let s = throughline_text::vader::polarity_scores(text);
        serde_json::to_writer(
            &mut out,
            &json!({"text": text, "compound": s.compound, "pos": s.pos, "neu": s.neu, "neg": s.neg}),
        )?;
        out.write_all(b"\n")?;
        Ok(())
    };
    if a.texts.is_empty() {
        for line in std::io::stdin().lock().lines() {
            score(&line?)?;
        }
    } else {
        for t in &a.texts {
            score(t)?;
        }
    }
    Ok(())
}
