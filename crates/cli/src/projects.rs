//! `throughline projects ...`: the catalog of projects and their keys.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use throughline_store::Catalog;

use crate::output;

#[derive(Subcommand)]
pub enum ProjectsCommand {
    /// Create a project and print its keys as JSON
    #[command(
        after_help = "Example:\n  throughline projects create shop --data ./data\n\nThe write key is public (it ships in pages and apps); the api key is secret (Bearer token of the query API)\nand shown only here: the catalog keeps its SHA-256. Lost it? `projects rotate-key` issues new keys."
    )]
    Create {
        /// Project name: 1-64 of a-z, 0-9, '-', '_'
        name: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// List projects and their write keys
    #[command(after_help = "Example:\n  throughline projects list --data ./data --format table")]
    List {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: output::Format,
    },
    /// Issue new write and api keys; the old ones stop working at once
    #[command(
        name = "rotate-key",
        after_help = "Example:\n  throughline projects rotate-key shop --data ./data"
    )]
    RotateKey {
        name: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Set the origins whose web pages may send events with the project's write key (CORS)
    #[command(
        name = "set-cors",
        after_help = "Examples:\n  throughline projects set-cors shop --data ./data --origin https://shop.example --origin https://www.shop.example\n  throughline projects set-cors shop --data ./data            # no --origin: CORS off again\n\nOrigins are scheme://host[:port] as browsers send them, or '*' for any. The list replaces the previous one\nand takes effect at once, also on a running server: browsers on listed origins get CORS answers from /v1/*,\nrequests from other origins are refused (403); requests without an Origin (server SDKs) are unaffected."
    )]
    SetCors {
        name: String,
        #[arg(long)]
        data: PathBuf,
        /// An allowed origin, e.g. https://shop.example (repeat for more)
        #[arg(long = "origin")]
        origins: Vec<String>,
    },
}

// The catalog has its own short lock, so these work while a server runs; the server picks
// up changes the first time it sees an unknown key.
pub fn run(cmd: ProjectsCommand) -> Result<()> {
    match cmd {
        ProjectsCommand::Create { name, data } => {
            let p = Catalog::create_project(&data, &name)?;
            crate::audit(&data, "project.create", Some(&name), "")?;
            output::json(
                &json!({"name": p.name, "write_key": p.write_key, "api_key": p.api_key, "created_at": p.created_at}),
            );
        }
        ProjectsCommand::List { data, format } => {
            let c = Catalog::load(&data)?;
            match format {
                output::Format::Json => output::json(&json!(c
                    .projects
                    .iter()
                    .map(|p| json!({"name": p.name, "write_key": p.write_key, "created_at": p.created_at, "cors_origins": p.cors_origins}))
                    .collect::<Vec<_>>())),
                output::Format::Table => output::table(
                    &["name", "write_key", "created_at"],
                    &c.projects
                        .iter()
                        .map(|p| vec![p.name.clone(), p.write_key.clone(), p.created_at.clone()])
                        .collect::<Vec<_>>(),
                ),
            }
        }
        ProjectsCommand::RotateKey { name, data } => {
            let p = Catalog::rotate_keys(&data, &name)?;
            crate::audit(
                &data,
                "project.rotate_key",
                Some(&name),
                "write and api keys replaced",
            )?;
            output::json(&json!({"name": p.name, "write_key": p.write_key, "api_key": p.api_key}));
        }
        ProjectsCommand::SetCors {
            name,
            data,
            origins,
        } => {
            let p = Catalog::set_cors_origins(&data, &name, &origins)?;
            let detail = if p.cors_origins.is_empty() {
                "cors off".to_string()
            } else {
                format!("cors origins: {}", p.cors_origins.join(" "))
            };
            crate::audit(&data, "project.set_cors", Some(&name), &detail)?;
            output::json(&json!({"name": p.name, "cors_origins": p.cors_origins}));
        }
    }
    Ok(())
}
