//! `check`, `backup` and `restore`: verifying a data directory's files, and copying it
//! consistently while a server runs. The store does the work (`throughline_store::check`,
//! `throughline_store::backup`); this module parses flags and prints answers.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use throughline_store::check::check_project;
use throughline_store::{Catalog, DirLock};

use crate::output;

#[derive(Args)]
pub struct CheckArgs {
    #[arg(long)]
    pub data: PathBuf,
    /// Only this project
    #[arg(long)]
    pub project: Option<String>,
    /// Rebuild what can be rebuilt from the log and the other files
    #[arg(long)]
    pub repair: bool,
}

pub fn check(args: CheckArgs) -> Result<()> {
    if !args.data.join("catalog.json").exists() {
        bail!(
            "{} is not a Throughline data directory (no catalog.json)",
            args.data.display()
        );
    }
    let _lock = DirLock::acquire(&args.data)?;
    let catalog = Catalog::load(&args.data)?;
    let names: Vec<String> = match &args.project {
        Some(p) if catalog.get(p).is_none() => bail!("no project named {p:?}"),
        Some(p) => vec![p.clone()],
        None => catalog.projects.iter().map(|p| p.name.clone()).collect(),
    };
    let mut reports = Vec::new();
    for name in &names {
        let dir = args.data.join("projects").join(name);
        reports.push(check_project(name, &dir, args.repair)?);
    }
    let ok = reports.iter().all(|r| r.ok());
    output::json(&json!({"ok": ok, "projects": reports}));
    if !ok {
        let n: usize = reports.iter().map(|r| r.problems.len()).sum();
        let first = reports
            .iter()
            .flat_map(|r| &r.problems)
            .next()
            .map(|p| format!("{}: {}", p.file.display(), p.error))
            .unwrap_or_default();
        match args.repair {
            false => bail!("{n} damaged files, first {first}; `throughline check --repair` rebuilds what the log allows"),
            true => bail!("{n} damaged files could not be rebuilt, first {first}; see not_repaired"),
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct BackupArgs {
    #[arg(long)]
    pub data: PathBuf,
    /// The backup file to write (a tar with a checksum index)
    #[arg(long)]
    pub out: PathBuf,
}

pub fn backup(args: BackupArgs) -> Result<()> {
    if !args.data.join("catalog.json").exists() {
        bail!(
            "{} is not a Throughline data directory (no catalog.json)",
            args.data.display()
        );
    }
    let summary = throughline_store::backup::backup(&args.data, &args.out)?;
    output::json(&json!({
        "out": args.out,
        "files": summary.files,
        "bytes": summary.bytes,
        "projects": summary.projects,
    }));
    Ok(())
}

#[derive(Args)]
pub struct RestoreArgs {
    /// A file written by `throughline backup`
    #[arg(long)]
    pub from: PathBuf,
    /// A new (or empty) data directory
    #[arg(long)]
    pub data: PathBuf,
}

pub fn restore(args: RestoreArgs) -> Result<()> {
    let summary = throughline_store::backup::restore(&args.from, &args.data)?;
    // Every file matched its checksum; the store's own checks must pass too.
    let _lock = DirLock::acquire(&args.data)?;
    for name in &summary.projects {
        let dir = args.data.join("projects").join(name);
        let r = check_project(name, &dir, false)?;
        if !r.ok() {
            bail!("restored project {name} does not check: {:?}", r.problems);
        }
    }
    output::json(&json!({
        "data": args.data,
        "files": summary.files,
        "bytes": summary.bytes,
        "projects": summary.projects,
    }));
    Ok(())
}
