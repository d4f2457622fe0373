//! The forwarder: moves each project's outbox into ClickHouse, exactly once.
//!
//! One thread per project reads records in outbox order, feeds them to the project's
//! identity graph (the same pure graph the embedded store runs, so node numbers and
//! persons come out the same), and inserts one batch as three INSERTs: the ids it saw or
//! relabelled (`identities`), the persons merged away (`person_overrides`), then the events
//! with the person each had when it was observed. Only when all three succeeded does the
//! cursor (`CURSOR`, replaced atomically) move past the batch; until then the batch is
//! retried with capped exponential backoff for as long as the process runs.
//!
//! Why replays are harmless: a record's row is a function of the records before it (its
//! `seq`, its node and person from the deterministic graph), so a batch re-sent after a
//! crash or a lost answer inserts identical rows, which ReplacingMergeTree folds and
//! every read drops by `seq`. The identity graph is checkpointed (`IDENTITY` names a
//! snapshot and the position it holds); a restart loads it and re-observes, without
//! inserting, the records between it and the cursor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use throughline_identity::{IdKeys, IdentityConfig, IdentityGraph};
use throughline_model::Event;
use throughline_store::{message_hash, AppendOutcome};

use crate::outbox::{write_atomic, Outbox, OutboxOptions, Position, Record};
use crate::rowbinary::Writer;
use crate::schema::{event_columns, Target, IDENTITY_COLUMNS, OVERRIDE_COLUMNS};
use crate::ClickHouseError;

#[derive(Clone, Debug)]
pub struct BackendOptions {
    pub outbox: OutboxOptions,
    /// Events per INSERT at most.
    pub batch_events_max: usize,
    /// Payload bytes per INSERT, about.
    pub batch_bytes_max: usize,
    /// Longest wait between two attempts of a failed INSERT.
    pub retry_ms_max: u64,
    /// How long the forwarder sleeps when the outbox has nothing new.
    pub idle_ms: u64,
    /// Checkpoint the identity graph after this many forwarded events.
    pub snapshot_events: u64,
    pub identity: IdentityConfig,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            outbox: OutboxOptions::default(),
            batch_events_max: 20_000,
            batch_bytes_max: 16 << 20,
            retry_ms_max: 2_000,
            idle_ms: 100,
            snapshot_events: 1_000_000,
            identity: IdentityConfig::default(),
        }
    }
}

/// `DIR/projects/NAME/clickhouse/CURSOR`: the first record ClickHouse does not have.
pub const CURSOR_FILE: &str = "CURSOR";
/// `DIR/projects/NAME/clickhouse/IDENTITY`: the identity checkpoint.
pub const IDENTITY_FILE: &str = "IDENTITY";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentityCheckpoint {
    pub position: Position,
    pub snapshot: String,
}

/// What the forwarder of a project is doing, for metrics and tests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ForwardStatus {
    /// Events durable in the outbox (its end's seq).
    pub durable_seq: u64,
    /// Events ClickHouse has acknowledged (the cursor's seq).
    pub forwarded_seq: u64,
    pub backlog_bytes: u64,
    /// INSERT attempts that failed since the start.
    pub failed_inserts: u64,
    pub last_error: Option<String>,
}

/// The ClickHouse backend of a server: the target and one [`Project`] per project.
pub struct Backend {
    target: Arc<Target>,
    data: PathBuf,
    options: BackendOptions,
    projects: Mutex<HashMap<String, Arc<Project>>>,
}

impl Backend {
    /// Checks that the tables exist; projects open on first use. ClickHouse being
    /// unreachable is no reason not to start: events wait in the outbox.
    pub fn open(
        target: Target,
        data: &Path,
        options: BackendOptions,
    ) -> Result<Backend, ClickHouseError> {
        match target.check_shards().and_then(|_| target.check()) {
            Ok(()) => {}
            Err(e @ ClickHouseError::Transport { .. }) => {
                tracing::warn!(error = %e, "ClickHouse is unreachable; events wait in the outbox until it answers");
            }
            Err(e) => return Err(e),
        }
        Ok(Backend {
            target: Arc::new(target),
            data: data.to_path_buf(),
            options,
            projects: Mutex::new(HashMap::new()),
        })
    }

    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    /// The read side of one project: what its queries read.
    pub fn source(&self, project: &str) -> crate::source::Source {
        crate::source::Source::new(self.target.clone(), project, self.options.identity.clone())
    }

    /// The project's outbox and forwarder, opened (and its backlog resumed) on first use.
    pub fn project(&self, name: &str) -> Result<Arc<Project>, ClickHouseError> {
        let mut projects = self.projects.lock().expect("projects lock");
        if let Some(p) = projects.get(name) {
            return Ok(p.clone());
        }
        let dir = project_dir(&self.data, name);
        let p = Arc::new(Project::open(
            name,
            &dir,
            self.target.clone(),
            self.options.clone(),
        )?);
        projects.insert(name.to_string(), p.clone());
        Ok(p)
    }

    pub fn projects(&self) -> Vec<Arc<Project>> {
        let mut v: Vec<_> = self
            .projects
            .lock()
            .expect("projects lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Stops every writer after it answered what is queued, then every forwarder.
    pub fn close(&self) {
        for p in self.projects() {
            p.close();
        }
    }
}

/// Where a project's ClickHouse-side local state lives.
pub fn project_dir(data: &Path, name: &str) -> PathBuf {
    data.join("projects").join(name).join("clickhouse")
}

pub struct Project {
    pub name: String,
    dir: PathBuf,
    outbox: Arc<Outbox>,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<ForwardStatus>>,
    forwarded: Arc<AtomicU64>,
    forwarder: Mutex<Option<JoinHandle<()>>>,
}

pub fn read_cursor(dir: &Path) -> Result<Position, ClickHouseError> {
    read_json(&dir.join(CURSOR_FILE)).map(|c| {
        c.unwrap_or(Position {
            file: 1,
            offset: 0,
            seq: 0,
        })
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ClickHouseError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ClickHouseError::Corrupt {
                file: path.to_path_buf(),
                why: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ClickHouseError::io(path, e)),
    }
}

pub fn write_cursor(dir: &Path, p: Position) -> Result<(), ClickHouseError> {
    write_atomic(
        &dir.join(CURSOR_FILE),
        &serde_json::to_vec(&p).expect("positions serialize"),
    )
}

/// Writes an identity checkpoint: the snapshot file, then the pointer to it.
pub fn write_identity(
    dir: &Path,
    graph: &IdentityGraph,
    at: Position,
) -> Result<(), ClickHouseError> {
    let name = format!("identity-{:012}.bin", at.seq);
    write_atomic(&dir.join(&name), &graph.to_snapshot())?;
    let cp = IdentityCheckpoint {
        position: at,
        snapshot: name.clone(),
    };
    write_atomic(
        &dir.join(IDENTITY_FILE),
        &serde_json::to_vec(&cp).expect("checkpoints serialize"),
    )?;
    // Older checkpoints are no longer needed.
    for entry in std::fs::read_dir(dir).map_err(|e| ClickHouseError::io(dir, e))? {
        let entry = entry.map_err(|e| ClickHouseError::io(dir, e))?;
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with("identity-") && n != name {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn load_identity(
    dir: &Path,
    config: &IdentityConfig,
) -> Result<(IdentityGraph, Position), ClickHouseError> {
    match read_json::<IdentityCheckpoint>(&dir.join(IDENTITY_FILE))? {
        Some(cp) => {
            let path = dir.join(&cp.snapshot);
            let bytes = std::fs::read(&path).map_err(|e| ClickHouseError::io(&path, e))?;
            let mut g =
                IdentityGraph::from_snapshot(&bytes).map_err(|e| ClickHouseError::Corrupt {
                    file: path.clone(),
                    why: e.to_string(),
                })?;
            g.set_config(config.clone());
            Ok((g, cp.position))
        }
        None => Ok((
            IdentityGraph::new(config.clone()),
            Position {
                file: 1,
                offset: 0,
                seq: 0,
            },
        )),
    }
}

impl Project {
    fn open(
        name: &str,
        dir: &Path,
        target: Arc<Target>,
        options: BackendOptions,
    ) -> Result<Project, ClickHouseError> {
        std::fs::create_dir_all(dir).map_err(|e| ClickHouseError::io(dir, e))?;
        let cursor = read_cursor(dir)?;
        let outbox = Arc::new(Outbox::open(dir, cursor, options.outbox.clone())?);
        let (mut graph, mut at) = load_identity(dir, &options.identity)?;
        graph.start_journal();
        // Re-observe what ClickHouse already has since the checkpoint.
        while at.seq < cursor.seq {
            let (records, next) = outbox.read(
                at,
                (cursor.seq - at.seq).min(options.batch_events_max as u64) as usize,
                usize::MAX,
            )?;
            if records.is_empty() {
                return Err(ClickHouseError::Corrupt {
                    file: dir.join("log"),
                    why: format!(
                        "the identity checkpoint is at {} but the log ends before the cursor {}",
                        at.seq, cursor.seq
                    ),
                });
            }
            for p in &records {
                graph.observe_keys(&IdKeys::of(&decode(dir, p)?));
            }
            at = next;
        }
        graph.drain_journal();
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(ForwardStatus {
            forwarded_seq: cursor.seq,
            ..ForwardStatus::default()
        }));
        let forwarded = Arc::new(AtomicU64::new(cursor.seq));
        let mut f = Forwarder {
            project: name.to_string(),
            dir: dir.to_path_buf(),
            target,
            outbox: outbox.clone(),
            graph,
            cursor,
            checkpoint_seq: at.seq,
            checkpoint_file: load_checkpoint_file(dir)?,
            options,
            stop: stop.clone(),
            status: status.clone(),
            forwarded: forwarded.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("forward-{name}"))
            .spawn(move || f.run())
            .map_err(|e| ClickHouseError::io(dir, e))?;
        Ok(Project {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            outbox,
            stop,
            status,
            forwarded,
            forwarder: Mutex::new(Some(handle)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues events for the outbox; `done` runs once they are durable locally.
    pub fn submit(
        &self,
        records: Vec<Record>,
        done: impl FnOnce(Result<AppendOutcome, ClickHouseError>) + Send + 'static,
    ) -> Result<(), ClickHouseError> {
        self.outbox.submit(records, done)
    }

    pub fn append(&self, records: Vec<Record>) -> Result<AppendOutcome, ClickHouseError> {
        self.outbox.append(records)
    }

    pub fn status(&self) -> ForwardStatus {
        let mut s = self.status.lock().expect("status lock").clone();
        s.durable_seq = self.outbox.end().seq;
        s.backlog_bytes = self.outbox.backlog_bytes();
        s
    }

    /// Waits until ClickHouse has every event durable now; false on timeout.
    pub fn wait_forwarded(&self, timeout_ms: u64) -> bool {
        let target = self.outbox.end().seq;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        while self.forwarded.load(Ordering::Acquire) < target {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    pub fn close(&self) {
        self.outbox.close();
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.forwarder.lock().expect("forwarder lock").take() {
            let _ = h.join();
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        self.close();
    }
}

fn load_checkpoint_file(dir: &Path) -> Result<u64, ClickHouseError> {
    Ok(read_json::<IdentityCheckpoint>(&dir.join(IDENTITY_FILE))?.map_or(1, |c| c.position.file))
}

fn decode(dir: &Path, payload: &[u8]) -> Result<Event, ClickHouseError> {
    serde_json::from_slice(payload).map_err(|e| ClickHouseError::Corrupt {
        file: dir.join("log"),
        why: format!("outbox record: {e}"),
    })
}

/// One batch as the three INSERTs' bodies.
#[derive(Default)]
pub struct Batch {
    pub identities: Writer,
    pub overrides: Writer,
    pub events: Writer,
    pub identity_rows: usize,
    pub override_rows: usize,
    pub event_rows: usize,
}

impl Batch {
    /// Adds one event observed by `graph` at `seq`: its row, the ids it created and the
    /// nodes its merges relabelled.
    pub fn add(&mut self, project: &str, graph: &mut IdentityGraph, seq: u64, e: &Event) {
        let before = graph.node_count() as u32;
        let node = graph.observe_keys(&IdKeys::of(e));
        let moved = graph.drain_journal();
        let mut touched: Vec<u32> = (before..graph.node_count() as u32).collect();
        touched.extend(moved.iter().copied().filter(|&n| n < before));
        touched.sort_unstable();
        touched.dedup();
        for &n in &touched {
            let (kind, id) = graph.node(n);
            let w = &mut self.identities;
            w.str(project);
            w.u32(n);
            w.u8(kind as u8);
            w.str(id);
            let person = graph.person_of(n);
            w.u32(person);
            w.u8(u8::from(graph.user_of(person) == Some(n)));
            w.u64(seq);
            self.identity_rows += 1;
        }
        let mut moved = moved;
        moved.sort_unstable();
        moved.dedup();
        for n in moved {
            let w = &mut self.overrides;
            w.str(project);
            w.u32(n);
            w.u32(graph.person_of(n));
            w.u64(seq);
            self.override_rows += 1;
        }
        event_row(
            &mut self.events,
            project,
            graph.person_of(node),
            seq,
            node,
            e,
        );
        self.event_rows += 1;
    }

    /// Sends the batch: ids and overrides before the events that need them.
    pub fn insert(&self, target: &Target) -> Result<(), ClickHouseError> {
        let settings = target.insert_settings();
        if self.identity_rows > 0 {
            target.client.insert(
                &target.table("identities"),
                &IDENTITY_COLUMNS,
                &self.identities.buf,
                settings,
            )?;
        }
        if self.override_rows > 0 {
            target.client.insert(
                &target.table("person_overrides"),
                &OVERRIDE_COLUMNS,
                &self.overrides.buf,
                settings,
            )?;
        }
        if self.event_rows > 0 {
            target.client.insert(
                &target.table("events"),
                &event_columns(),
                &self.events.buf,
                settings,
            )?;
        }
        Ok(())
    }
}

/// One `events_local` row, in [`event_columns`] order.
pub fn event_row(w: &mut Writer, project: &str, person: u32, seq: u64, node: u32, e: &Event) {
    w.str(project);
    w.u32(person);
    w.i64(e.timestamp);
    w.u64(seq);
    w.u32(node);
    w.u8(e.event_type.code());
    for d in e.dims() {
        w.opt_str(d);
    }
    w.bytes(&serde_json::to_vec(e).expect("events serialize"));
    w.fixed(&message_hash(&e.message_id).to_le_bytes());
}

struct Forwarder {
    project: String,
    dir: PathBuf,
    target: Arc<Target>,
    outbox: Arc<Outbox>,
    graph: IdentityGraph,
    cursor: Position,
    checkpoint_seq: u64,
    checkpoint_file: u64,
    options: BackendOptions,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<ForwardStatus>>,
    forwarded: Arc<AtomicU64>,
}

enum Step {
    Forwarded,
    Idle,
    /// Stopping while ClickHouse refused the batch: the graph ran ahead of the cursor.
    Abandoned,
}

impl Forwarder {
    fn run(&mut self) {
        loop {
            if self.stop.load(Ordering::Acquire) && self.outbox.end().seq <= self.cursor.seq {
                break;
            }
            match self.step() {
                Ok(Step::Forwarded) => {}
                Ok(Step::Idle) => {
                    if self.stop.load(Ordering::Acquire) {
                        break;
                    }
                    self.outbox.wait_past(self.cursor.seq, self.options.idle_ms);
                }
                // The next start re-observes from the checkpoint: nothing is lost, and the
                // graph that saw the unsent batch must not become a checkpoint.
                Ok(Step::Abandoned) => return,
                Err(e) => {
                    // The outbox itself is damaged: nothing later can go out in order.
                    tracing::error!(project = %self.project, error = %e, "forwarding stopped");
                    self.status.lock().expect("status lock").last_error = Some(e.to_string());
                    return;
                }
            }
        }
        if self.checkpoint_seq < self.cursor.seq {
            if let Err(e) = self.checkpoint() {
                tracing::warn!(project = %self.project, error = %e, "identity checkpoint at shutdown failed");
            }
        }
    }

    /// Forwards one batch, retrying the INSERTs until they succeed or the process stops.
    fn step(&mut self) -> Result<Step, ClickHouseError> {
        let (records, next) = self.outbox.read(
            self.cursor,
            self.options.batch_events_max,
            self.options.batch_bytes_max,
        )?;
        if records.is_empty() {
            return Ok(Step::Idle);
        }
        let bytes: u64 = records.iter().map(|r| 8 + r.len() as u64).sum();
        let mut batch = Batch::default();
        for (i, p) in records.iter().enumerate() {
            let e = decode(&self.dir, p)?;
            batch.add(
                &self.project,
                &mut self.graph,
                self.cursor.seq + i as u64,
                &e,
            );
        }
        let mut wait_ms = 50u64;
        while let Err(e) = batch.insert(&self.target) {
            {
                let mut s = self.status.lock().expect("status lock");
                s.failed_inserts += 1;
                s.last_error = Some(e.to_string());
            }
            tracing::warn!(project = %self.project, error = %e, retry_ms = wait_ms, "insert failed; retrying");
            let until = Instant::now() + Duration::from_millis(wait_ms);
            while Instant::now() < until {
                if self.stop.load(Ordering::Acquire) {
                    return Ok(Step::Abandoned);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            wait_ms = (wait_ms * 2).min(self.options.retry_ms_max);
        }
        write_cursor(&self.dir, next)?;
        self.cursor = next;
        self.forwarded.store(next.seq, Ordering::Release);
        {
            let mut s = self.status.lock().expect("status lock");
            s.forwarded_seq = next.seq;
            s.last_error = None;
        }
        if self.cursor.seq - self.checkpoint_seq >= self.options.snapshot_events {
            self.checkpoint()?;
        }
        self.outbox
            .forwarded(bytes, self.cursor, self.checkpoint_file)?;
        Ok(Step::Forwarded)
    }

    fn checkpoint(&mut self) -> Result<(), ClickHouseError> {
        write_identity(&self.dir, &self.graph, self.cursor)?;
        self.checkpoint_seq = self.cursor.seq;
        self.checkpoint_file = self.cursor.file;
        Ok(())
    }
}
