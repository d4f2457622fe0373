//! `throughline journeys validate|create|list|show|pause|resume|archive|backtest` and
//! `throughline suppressions import|list`.
//!
//! With `--data DIR --project NAME` the commands work on the data directory directly
//! (it must not be held by a server); with `--server URL --api-key KEY --project NAME`
//! they go through a running server's HTTP API. Both give the same JSON.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::output::{self, Format};

#[derive(Args, Clone)]
pub struct Target {
    /// Data directory (no server may hold it)
    #[arg(long, conflicts_with = "server")]
    pub data: Option<PathBuf>,
    /// A running server instead, e.g. http://127.0.0.1:8080
    #[arg(long)]
    pub server: Option<String>,
    /// The project's api key (with --server)
    #[arg(long)]
    pub api_key: Option<String>,
    #[arg(long)]
    pub project: String,
    /// The server config, for the caps, quiet hours and suppression rules (with --data)
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
}

#[derive(Subcommand)]
pub enum JourneysCommand {
    /// Check a journey file; errors name the step and the field
    #[command(after_help = "Example:\n  throughline journeys validate welcome.toml")]
    Validate { file: PathBuf },
    /// Create (and start) a journey from a TOML or JSON file
    #[command(
        after_help = "Examples:\n  throughline journeys create welcome.toml --data ./data --project shop\n  throughline journeys create welcome.toml --server http://127.0.0.1:8080 --api-key ak_... --project shop"
    )]
    Create {
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Every journey with its status and counts
    #[command(
        after_help = "Example:\n  throughline journeys list --data ./data --project shop --format table"
    )]
    List {
        #[command(flatten)]
        target: Target,
    },
    /// One journey step by step: persons waiting, sends, caps hit, goal exits, holdout;
    /// with --step, the persons at that step
    #[command(
        after_help = "Examples:\n  throughline journeys show welcome --data ./data --project shop --format table\n  throughline journeys show welcome --step reminder --data ./data --project shop"
    )]
    Show {
        name: String,
        /// List the persons at this step (`end`: past the last step, watching the goal)
        #[arg(long)]
        step: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        target: Target,
    },
    /// Stop entries and sends; persons wait at their next step
    Pause {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Start a paused journey again
    Resume {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// End a journey for good: every person leaves it, its counts stay
    Archive {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Run a journey file over the stored history: entries, sends, caps, conversion of
    /// touched against untouched persons
    #[command(
        after_help = "Example:\n  throughline journeys backtest welcome.toml --from 2026-01-01 --to 2026-03-01 --data ./data --project shop"
    )]
    Backtest {
        file: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum SuppressionsCommand {
    /// Suppress every id of a list: CSV with person_id/email/user_id... columns (the
    /// fatigue audience export works as is) or one id per line
    #[command(
        after_help = "Example:\n  throughline suppressions import fatigued.csv --data ./data --project shop"
    )]
    Import {
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// The suppressed ids and why
    List {
        #[command(flatten)]
        target: Target,
    },
}

fn read(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

fn problems_text(problems: &[throughline_orchestrate::Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A connection to either kind of target.
enum Conn {
    Local {
        o: Arc<throughline_server::orchestrate::Orchestrator>,
        rt: Arc<throughline_server::orchestrate::ProjectRuntime>,
    },
    Remote {
        base: String,
        key: String,
        agent: ureq::Agent,
    },
}

impl Conn {
    fn open(t: &Target) -> Result<Conn> {
        if let Some(server) = &t.server {
            let key = t.api_key.clone().context("--server needs --api-key")?;
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            return Ok(Conn::Remote {
                base: format!(
                    "{}/api/v1/projects/{}",
                    server.trim_end_matches('/'),
                    t.project
                ),
                key,
                agent,
            });
        }
        let data = t
            .data
            .as_ref()
            .context("give --data DIR, or --server URL --api-key KEY")?;
        let config = crate::load_config(t.config.clone())?;
        let store = Arc::new(crate::open_store(data)?);
        let o = throughline_server::orchestrate::Orchestrator::offline(store, config.orchestrate);
        let rt = o.project(&t.project)?;
        Ok(Conn::Local { o, rt })
    }

    fn call(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> Result<Value> {
        let Conn::Remote { base, key, agent } = self else {
            bail!("not a server connection")
        };
        let url = format!("{base}{path}");
        let auth = format!("Bearer {key}");
        let resp = match (method, body) {
            ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
            (_, Some((ctype, b))) => agent
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", ctype)
                .send(&b[..]),
            (_, None) => agent.post(&url).header("authorization", &auth).send_empty(),
        }
        .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(json!({"error": text}));
        if status >= 400 {
            if let Some(p) = v.get("problems").and_then(|p| p.as_array()) {
                let lines: Vec<String> = p
                    .iter()
                    .map(|x| match x.get("step").and_then(Value::as_str) {
                        Some(s) => format!(
                            "  step {s:?}, field {}: {}",
                            x["field"],
                            x["error"].as_str().unwrap_or("")
                        ),
                        None => format!(
                            "  field {}: {}",
                            x["field"],
                            x["error"].as_str().unwrap_or("")
                        ),
                    })
                    .collect();
                bail!("invalid journey:\n{}", lines.join("\n"));
            }
            bail!("{} (HTTP {status})", v["error"].as_str().unwrap_or(&text));
        }
        Ok(v)
    }
}

pub fn run(cmd: JourneysCommand) -> Result<()> {
    match cmd {
        JourneysCommand::Validate { file } => {
            let text = read(&file)?;
            match throughline_orchestrate::validate(&text) {
                Ok((f, j)) => {
                    output::json(
                        &json!({"valid": true, "name": j.name, "steps": throughline_orchestrate::journey::outline(&f)}),
                    );
                    Ok(())
                }
                Err(p) => bail!(
                    "{} is not a valid journey:\n{}",
                    file.display(),
                    problems_text(&p)
                ),
            }
        }
        JourneysCommand::Create { file, target } => {
            let text = read(&file)?;
            let f = throughline_orchestrate::parse_file(&text).map_err(|p| {
                anyhow::anyhow!(
                    "{} is not a valid journey:\n{}",
                    file.display(),
                    problems_text(&p)
                )
            })?;
            match Conn::open(&target)? {
                Conn::Local { o, rt } => {
                    rt.with_machine(|m| m.check_create(&f)).map_err(|p| {
                        anyhow::anyhow!(
                            "{} is not a valid journey:\n{}",
                            file.display(),
                            problems_text(&p)
                        )
                    })?;
                    let name = f.name.clone();
                    throughline_server::orchestrate::api::register_assets(&rt, &f);
                    o.submit(
                        &rt,
                        vec![throughline_orchestrate::Input::Create { file: Box::new(f) }],
                    )?;
                    let v = rt.with_machine(|m| {
                        throughline_server::orchestrate::api::describe(m, &name, false)
                    });
                    output::json(&v.unwrap_or(Value::Null));
                }
                c @ Conn::Remote { .. } => {
                    let v = c.call(
                        "POST",
                        "/journeys",
                        Some(("application/toml", text.into_bytes())),
                    )?;
                    output::json(&v);
                }
            }
            Ok(())
        }
        JourneysCommand::List { target } => {
            let v = match Conn::open(&target)? {
                Conn::Local { rt, .. } => {
                    rt.with_machine(throughline_server::orchestrate::api::list)
                }
                c => c.call("GET", "/journeys", None)?,
            };
            match target.format {
                Format::Json => output::json(&v),
                Format::Table => {
                    let rows: Vec<Vec<String>> = v["journeys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|j| {
                            [
                                "name",
                                "status",
                                "entered",
                                "active",
                                "sends",
                                "capped",
                                "suppressed",
                                "converted",
                            ]
                            .iter()
                            .map(|k| cell(&j[*k]))
                            .collect()
                        })
                        .collect();
                    output::table(
                        &[
                            "journey",
                            "status",
                            "entered",
                            "active",
                            "sends",
                            "capped",
                            "suppressed",
                            "converted",
                        ],
                        &rows,
                    );
                }
            }
            Ok(())
        }
        JourneysCommand::Show {
            name,
            step,
            limit,
            target,
        } => {
            let conn = Conn::open(&target)?;
            let v = match (&conn, &step) {
                (Conn::Local { rt, .. }, None) => rt
                    .with_machine(|m| {
                        throughline_server::orchestrate::api::describe(m, &name, false)
                    })
                    .with_context(|| format!("no journey named {name:?}"))?,
                (Conn::Local { rt, .. }, Some(s)) => rt
                    .with_machine(|m| {
                        throughline_server::orchestrate::api::persons(m, &name, Some(s), limit)
                    })
                    .map_err(anyhow::Error::msg)?,
                (c, None) => c.call("GET", &format!("/journeys/{name}"), None)?,
                (c, Some(s)) => c.call(
                    "GET",
                    &format!("/journeys/{name}/persons?step={s}&limit={limit}"),
                    None,
                )?,
            };
            match (target.format, step) {
                (Format::Table, None) => {
                    println!(
                        "{} ({}): {} entered, {} active, {} converted; treatment {} / holdout {}",
                        v["name"].as_str().unwrap_or(""),
                        v["status"].as_str().unwrap_or(""),
                        cell(&v["entered"]),
                        cell(&v["active"]),
                        cell(&v["converted"]),
                        rate(&v["conversion"]["treatment"]),
                        rate(&v["conversion"]["holdout"]),
                    );
                    let rows: Vec<Vec<String>> = v["steps"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| {
                            [
                                "id",
                                "type",
                                "persons_waiting",
                                "reached",
                                "sends",
                                "delivered",
                                "capped",
                                "suppressed",
                                "quiet_delayed",
                                "goal_exits",
                            ]
                            .iter()
                            .map(|k| cell(&s[*k]))
                            .collect()
                        })
                        .collect();
                    output::table(
                        &[
                            "step",
                            "type",
                            "waiting",
                            "reached",
                            "sends",
                            "delivered",
                            "capped",
                            "suppressed",
                            "quiet",
                            "goal exits",
                        ],
                        &rows,
                    );
                }
                (Format::Table, Some(_)) => {
                    let rows: Vec<Vec<String>> = v["persons"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            ["person", "entry", "state", "since", "due"]
                                .iter()
                                .map(|k| cell(&p[*k]))
                                .collect()
                        })
                        .collect();
                    output::table(&["person", "entry", "state", "since", "due"], &rows);
                }
                _ => output::json(&v),
            }
            Ok(())
        }
        JourneysCommand::Pause { name, target } => status(&name, "pause", &target),
        JourneysCommand::Resume { name, target } => status(&name, "resume", &target),
        JourneysCommand::Archive { name, target } => status(&name, "archive", &target),
        JourneysCommand::Backtest {
            file,
            from,
            to,
            target,
        } => {
            let text = read(&file)?;
            let f = throughline_orchestrate::parse_file(&text)
                .and_then(|f| throughline_orchestrate::compile(&f).map(|_| f))
                .map_err(|p| {
                    anyhow::anyhow!(
                        "{} is not a valid journey:\n{}",
                        file.display(),
                        problems_text(&p)
                    )
                })?;
            let v = match Conn::open(&target)? {
                Conn::Local { o, rt } => {
                    let bound = |t: &str| {
                        throughline_query::parse_time_bound(t).map_err(anyhow::Error::msg)
                    };
                    let (from, to) = (bound(&from)?, bound(&to)?);
                    let suppressed = rt.with_machine(|m| m.suppressed().keys().cloned().collect());
                    let store = o.store().project(&target.project)?;
                    let r = throughline_server::orchestrate::api::backtest(
                        &store.snapshot(),
                        &f,
                        &o.config.policy(),
                        suppressed,
                        from,
                        to,
                    )
                    .map_err(anyhow::Error::msg)?;
                    serde_json::to_value(r)?
                }
                c => c.call(
                    "POST",
                    "/journeys/backtest",
                    Some((
                        "application/json",
                        serde_json::to_vec(&json!({"journey": text, "from": from, "to": to}))?,
                    )),
                )?,
            };
            output::json(&v);
            Ok(())
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn rate(g: &Value) -> String {
    match g["rate"].as_f64() {
        Some(r) => format!("{:.1}% of {}", r * 100.0, cell(&g["persons"])),
        None => format!("- of {}", cell(&g["persons"])),
    }
}

fn status(name: &str, action: &str, target: &Target) -> Result<()> {
    let v = match Conn::open(target)? {
        Conn::Local { o, rt } => {
            let status = match action {
                "pause" => throughline_orchestrate::Status::Paused,
                "resume" => throughline_orchestrate::Status::Active,
                _ => throughline_orchestrate::Status::Archived,
            };
            let current = rt.with_machine(|m| m.journey(name).map(|(s, _)| s.status));
            match current {
                None => bail!("no journey named {name:?}"),
                Some(throughline_orchestrate::Status::Archived) if action != "archive" => {
                    bail!("journey {name:?} is archived")
                }
                _ => {}
            }
            o.submit(
                &rt,
                vec![throughline_orchestrate::Input::SetStatus {
                    journey: name.to_string(),
                    status,
                }],
            )?;
            rt.with_machine(|m| throughline_server::orchestrate::api::describe(m, name, false))
                .unwrap_or(Value::Null)
        }
        c => c.call("POST", &format!("/journeys/{name}/{action}"), None)?,
    };
    output::json(&v);
    Ok(())
}

pub fn suppressions(cmd: SuppressionsCommand) -> Result<()> {
    match cmd {
        SuppressionsCommand::Import { file, target } => {
            let text = read(&file)?;
            let v = match Conn::open(&target)? {
                Conn::Local { o, rt } => {
                    let ids = throughline_server::orchestrate::api::suppression_ids(&text)
                        .map_err(anyhow::Error::msg)?;
                    let n = ids.len();
                    o.submit(
                        &rt,
                        vec![throughline_orchestrate::Input::Suppress {
                            ids,
                            reason: "suppression list".into(),
                        }],
                    )?;
                    json!({"imported": n, "suppressed": rt.with_machine(|m| m.suppressed().len())})
                }
                c => c.call(
                    "POST",
                    "/suppressions",
                    Some(("text/csv", text.into_bytes())),
                )?,
            };
            output::json(&v);
            Ok(())
        }
        SuppressionsCommand::List { target } => {
            let v = match Conn::open(&target)? {
                Conn::Local { rt, .. } => {
                    rt.with_machine(throughline_server::orchestrate::api::suppression_list)
                }
                c => c.call("GET", "/suppressions", None)?,
            };
            output::json(&v);
            Ok(())
        }
    }
}
