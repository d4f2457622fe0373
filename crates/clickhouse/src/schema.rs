//! The tables Throughline keeps in ClickHouse and where statements run: one server, or a
//! cluster of shards behind `Distributed` tables.
//!
//! ```text
//! events_local          ReplacingMergeTree, ORDER BY (project, person, ts, seq): a person's
//!                       events sit together in time order. `person` is the identity root
//!                       when the event was forwarded; `seq` its arrival number, unique per
//!                       project, so a replayed insert is the same row again.
//! identities_local      ReplacingMergeTree(version), ORDER BY (project, node): each id's node,
//!                       kind, text, current person, and whether it is that person's user
//!                       id (the one they are named by): the identity mapping
//! person_overrides_local ReplacingMergeTree(version), ORDER BY (project, old_person): a
//!                       person that was merged into another since its events were written
//!                       (PostHog's person_overrides), applied at query time, folded later
//! events, identities, person_overrides
//!                       on a cluster: Distributed tables over the local ones; events and
//!                       overrides sharded by cityHash64(project, person), so a person's
//!                       events live on one shard
//! ```
//!
//! Every statement here runs on ClickHouse 18.16 (Debian's package) and on current
//! releases: no DateTime64, no LowCardinality, no `ON` joins, no window functions.

use throughline_model::DIMS;

use crate::client::{check_identifier, quote, Client};
use crate::ClickHouseError;

/// Where Throughline's tables live: the server queries and inserts go to, the database,
/// and on a cluster its name and the servers of its shards.
#[derive(Clone, Debug)]
pub struct Target {
    pub client: Client,
    pub database: String,
    pub cluster: Option<String>,
    /// Every shard's own server, in shard order, for statements that must run on each
    /// (DDL and mutations) where the cluster has no distributed DDL (ClickHouse without
    /// ZooKeeper or Keeper). Empty: such statements use `ON CLUSTER`.
    pub shards: Vec<Client>,
}

pub const DEFAULT_DATABASE: &str = "throughline";

/// The columns of `events_local`, in insert order.
pub fn event_columns() -> Vec<&'static str> {
    let mut c = vec!["project", "person", "ts", "seq", "node", "kind"];
    c.extend(DIMS);
    c.extend(["payload", "message_hash"]);
    c
}

pub const IDENTITY_COLUMNS: [&str; 7] = [
    "project", "node", "kind", "id", "person", "is_user", "version",
];
pub const OVERRIDE_COLUMNS: [&str; 4] = ["project", "old_person", "override_person", "version"];

impl Target {
    pub fn new(
        url: &str,
        database: Option<&str>,
        cluster: Option<&str>,
        shard_urls: &[String],
    ) -> Result<Target, ClickHouseError> {
        let database = check_identifier(database.unwrap_or(DEFAULT_DATABASE))?.to_string();
        if let Some(c) = cluster {
            check_identifier(c)?;
        }
        if cluster.is_none() && !shard_urls.is_empty() {
            return Err(ClickHouseError::Invalid(
                "--clickhouse-shard-url needs --clickhouse-cluster".into(),
            ));
        }
        Ok(Target {
            client: Client::new(url)?,
            database,
            cluster: cluster.map(str::to_string),
            shards: shard_urls
                .iter()
                .map(|u| Client::new(u))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The table queries read and inserts go to.
    pub fn table(&self, name: &str) -> String {
        match self.cluster {
            Some(_) => format!("{}.{name}", self.database),
            None => format!("{}.{name}_local", self.database),
        }
    }

    pub fn local_table(&self, name: &str) -> String {
        format!("{}.{name}_local", self.database)
    }

    /// Settings for inserts: through a Distributed table, wait until every shard has the
    /// rows, so a successful INSERT means they are stored, not queued on this server.
    pub fn insert_settings(&self) -> &'static [(&'static str, &'static str)] {
        if self.cluster.is_some() {
            &[("insert_distributed_sync", "1")]
        } else {
            &[]
        }
    }

    /// Runs a statement on every server that holds local tables. `{on_cluster}` in the text
    /// becomes ` ON CLUSTER name` when the cluster's own distributed DDL does the fan-out.
    pub fn on_every_shard(&self, sql: &str) -> Result<(), ClickHouseError> {
        match (&self.cluster, self.shards.is_empty()) {
            (Some(cluster), true) => {
                let stmt = sql.replace("{on_cluster}", &format!(" ON CLUSTER {cluster}"));
                self.client.execute(&stmt).map_err(|e| match e {
                    ClickHouseError::Server { ref message, .. }
                        if message.contains("DDL background thread")
                            || message.contains("ZooKeeper") =>
                    {
                        ClickHouseError::Invalid(format!(
                            "cluster {cluster} has no distributed DDL (no ZooKeeper or Keeper): pass every shard's server with --clickhouse-shard-url ({message})"
                        ))
                    }
                    other => other,
                })
            }
            (Some(_), false) => {
                let stmt = sql.replace("{on_cluster}", "");
                for s in &self.shards {
                    s.execute(&stmt)?;
                }
                Ok(())
            }
            (None, _) => self.client.execute(&sql.replace("{on_cluster}", "")),
        }
    }

    /// The servers of every shard, for reads that must see one shard alone (tests of
    /// co-location, waiting for mutations).
    pub fn shard_clients(&self) -> Vec<&Client> {
        if self.shards.is_empty() {
            vec![&self.client]
        } else {
            self.shards.iter().collect()
        }
    }

    /// Checks that the shard servers are the cluster's shards, once each and in order.
    pub fn check_shards(&self) -> Result<(), ClickHouseError> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let count: usize = self
            .client
            .query_text(&format!(
                "SELECT uniqExact(shard_num) FROM system.clusters WHERE cluster = {}",
                quote(cluster)
            ))?
            .parse()
            .map_err(|_| ClickHouseError::Decode("shard count".into()))?;
        if count == 0 {
            return Err(ClickHouseError::Invalid(format!(
                "{} has no cluster named {cluster} in its remote_servers",
                self.client.url()
            )));
        }
        if self.shards.is_empty() {
            return Ok(());
        }
        if self.shards.len() != count {
            return Err(ClickHouseError::Invalid(format!(
                "cluster {cluster} has {count} shards but {} --clickhouse-shard-url were given",
                self.shards.len()
            )));
        }
        for (i, s) in self.shards.iter().enumerate() {
            let num = s.query_text(&format!(
                "SELECT min(shard_num) FROM system.clusters WHERE cluster = {} AND is_local",
                quote(cluster)
            ))?;
            if num != (i + 1).to_string() {
                return Err(ClickHouseError::Invalid(format!(
                    "{} is shard {num} of cluster {cluster}, not shard {} (give the shard servers in shard order)",
                    s.url(),
                    i + 1
                )));
            }
        }
        Ok(())
    }

    /// `throughline clickhouse init`: creates the database and every table if missing.
    pub fn init(&self) -> Result<(), ClickHouseError> {
        self.check_shards()?;
        let db = &self.database;
        self.on_every_shard(&format!("CREATE DATABASE IF NOT EXISTS {db}{{on_cluster}}"))?;
        for stmt in self.local_ddl() {
            self.on_every_shard(&stmt)?;
        }
        if let Some(cluster) = &self.cluster {
            for (name, key) in [
                ("events", "cityHash64(project, person)"),
                ("identities", "cityHash64(project, node)"),
                ("person_overrides", "cityHash64(project, old_person)"),
            ] {
                // The Distributed tables go on every shard too, so any of them can take
                // queries and inserts.
                self.on_every_shard(&format!(
                    "CREATE TABLE IF NOT EXISTS {db}.{name}{{on_cluster}} AS {db}.{name}_local \
                     ENGINE = Distributed({cluster}, {db}, {name}_local, {key})"
                ))?;
            }
        }
        self.check()
    }

    /// The local tables' DDL, with `{on_cluster}` where the cluster clause goes.
    pub fn local_ddl(&self) -> Vec<String> {
        let db = &self.database;
        let dims: String = DIMS
            .iter()
            .map(|d| format!("    {d} Nullable(String),\n"))
            .collect();
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.events_local{{on_cluster}} (\n\
                 \x20   project String,\n\
                 \x20   person UInt32,\n\
                 \x20   ts Int64,\n\
                 \x20   seq UInt64,\n\
                 \x20   node UInt32,\n\
                 \x20   kind UInt8,\n\
                 {dims}\
                 \x20   payload String,\n\
                 \x20   message_hash FixedString(16)\n\
                 ) ENGINE = ReplacingMergeTree()\n\
                 PARTITION BY toYYYYMM(toDateTime(intDiv(ts, 1000)))\n\
                 ORDER BY (project, person, ts, seq)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.identities_local{{on_cluster}} (\n\
                 \x20   project String,\n\
                 \x20   node UInt32,\n\
                 \x20   kind UInt8,\n\
                 \x20   id String,\n\
                 \x20   person UInt32,\n\
                 \x20   is_user UInt8,\n\
                 \x20   version UInt64\n\
                 ) ENGINE = ReplacingMergeTree(version)\n\
                 ORDER BY (project, node)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.person_overrides_local{{on_cluster}} (\n\
                 \x20   project String,\n\
                 \x20   old_person UInt32,\n\
                 \x20   override_person UInt32,\n\
                 \x20   version UInt64\n\
                 ) ENGINE = ReplacingMergeTree(version)\n\
                 ORDER BY (project, old_person)"
            ),
        ]
    }

    /// Checks that the tables exist where queries and inserts go.
    pub fn check(&self) -> Result<(), ClickHouseError> {
        let names: Vec<&str> = if self.cluster.is_some() {
            vec!["events", "identities", "person_overrides"]
        } else {
            vec!["events_local", "identities_local", "person_overrides_local"]
        };
        let list = names
            .iter()
            .map(|n| quote(n))
            .collect::<Vec<_>>()
            .join(", ");
        let found: usize = self
            .client
            .query_text(&format!(
                "SELECT count() FROM system.tables WHERE database = {} AND name IN ({list})",
                quote(&self.database)
            ))?
            .parse()
            .map_err(|_| ClickHouseError::Decode("table count".into()))?;
        if found != names.len() {
            return Err(ClickHouseError::Invalid(format!(
                "database {} on {} lacks Throughline's tables: run `throughline clickhouse init` first",
                self.database,
                self.client.url()
            )));
        }
        Ok(())
    }

    /// Waits until no mutation of Throughline's tables is running on any shard.
    pub fn wait_mutations(&self, timeout_ms: u64) -> Result<(), ClickHouseError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
        for c in self.shard_clients() {
            loop {
                let pending = c.query_text(&format!(
                    "SELECT count() FROM system.mutations WHERE database = {} AND is_done = 0",
                    quote(&self.database)
                ))?;
                if pending == "0" {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(ClickHouseError::Invalid(format!(
                        "{pending} mutations still running on {} after {timeout_ms} ms",
                        c.url()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Ok(())
    }
}
