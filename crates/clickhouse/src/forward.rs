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
//!
//! Erasures (GDPR) run on this thread too, between two batches, so they happen at one
//! place in the outbox's order: see crates/clickhouse/src/erase.rs. A pending one (its
//! `ERASE` file) is finished before anything else is forwarded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use throughline_identity::{IdKeys, IdentityConfig, IdentityGraph};
use throughline_model::Event;
use throughline_store::audit::AuditEntry;
use throughline_store::{message_hash, AppendOutcome, Erase, ProjectStore, Store};

use crate::erase::{self, PendingErasure};
use crate::outbox::{read_json, write_atomic, Outbox, OutboxOptions, Position, Record};
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
    /// How long [`Project::erase`] waits for an erasure to finish before it answers that
    /// the erasure goes on without it.
    pub erase_wait_ms: u64,
    /// Tests only: the erasure stops (as a crash would) after this step of
    /// crates/clickhouse/src/erase.rs, leaving what is on disk.
    pub erase_stop_after: Option<EraseStep>,
}

/// The durable steps of an erasure, for tests that stop one midway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EraseStep {
    /// The pending record is written.
    Recorded,
    /// The graph forgot the person and its checkpoint is on disk.
    Checkpointed,
    /// The outbox files before the roll are gone.
    Retired,
    /// ClickHouse's rows are deleted.
    Deleted,
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
            erase_wait_ms: 600_000,
            erase_stop_after: None,
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
    /// The data directory's embedded store, when open: an erasure also erases the person
    /// from a migrated project's embedded copy.
    store: Option<Arc<Store>>,
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
            store: None,
        })
    }

    /// The embedded store of the same data directory (it holds the lock): erasures reach
    /// its projects too. Set before the first project opens.
    pub fn with_store(mut self, store: Arc<Store>) -> Backend {
        self.store = Some(store);
        self
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
        let embedded = self.store.as_ref().and_then(|s| s.project(name).ok());
        let p = Arc::new(Project::open(
            name,
            &self.data,
            embedded,
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
    control: Mutex<Option<SyncSender<Control>>>,
    erase_wait_ms: u64,
}

/// Erasure requests waiting for the forwarder, at most.
const CONTROL_QUEUE_MAX: usize = 16;

/// What the forwarder is asked to do between two batches.
enum Control {
    Erase {
        id: String,
        actor: String,
        reply: mpsc::Sender<Result<Option<u64>, ClickHouseError>>,
    },
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
        data: &Path,
        embedded: Option<Arc<ProjectStore>>,
        target: Arc<Target>,
        options: BackendOptions,
    ) -> Result<Project, ClickHouseError> {
        let dir = &project_dir(data, name);
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
        let (control_tx, control) = mpsc::sync_channel(CONTROL_QUEUE_MAX);
        let erase_wait_ms = options.erase_wait_ms;
        let mut f = Forwarder {
            data: data.to_path_buf(),
            embedded,
            control,
            abandoned: false,
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
            control: Mutex::new(Some(control_tx)),
            erase_wait_ms,
        })
    }

    /// GDPR erasure of the person known by `id` (any of their ids), in the forwarder's
    /// order: the number of their events ClickHouse held, or `None` when no person has
    /// that id. `actor` goes into the audit log's entry, which names the person only by
    /// the SHA-256 of `id`. Waits for the erasure up to `erase_wait_ms`; past it the
    /// erasure goes on in the forwarder and this answers [`ClickHouseError::ErasureRunning`].
    pub fn erase(&self, id: &str, actor: &str) -> Result<Option<u64>, ClickHouseError> {
        let (tx, rx) = mpsc::channel();
        {
            let control = self.control.lock().expect("control lock");
            let control = control.as_ref().ok_or(ClickHouseError::Closed)?;
            control
                .try_send(Control::Erase {
                    id: id.to_string(),
                    actor: actor.to_string(),
                    reply: tx,
                })
                .map_err(|e| match e {
                    TrySendError::Full(_) => ClickHouseError::Overloaded,
                    TrySendError::Disconnected(_) => ClickHouseError::Closed,
                })?;
        }
        match rx.recv_timeout(Duration::from_millis(self.erase_wait_ms)) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ClickHouseError::ErasureRunning {
                waited_ms: self.erase_wait_ms,
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ClickHouseError::Closed),
        }
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
        self.control.lock().expect("control lock").take();
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
    data: PathBuf,
    /// The project's embedded store (a migrated project's copy), for erasures.
    embedded: Option<Arc<ProjectStore>>,
    control: Receiver<Control>,
    /// Set when stopping left a batch unsent: the graph ran ahead of the cursor.
    abandoned: bool,
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
        // An erasure a crash interrupted is finished before anything else goes out.
        match erase::read_pending(&self.dir) {
            Ok(None) => {}
            Ok(Some(p)) => {
                tracing::info!(project = %self.project, "finishing an interrupted erasure");
                if let Err(e) = self.finish_erasure(&p) {
                    self.stopped_by(e);
                    return;
                }
            }
            Err(e) => {
                self.stopped_by(e);
                return;
            }
        }
        loop {
            if self.stop.load(Ordering::Acquire) && self.outbox.end().seq <= self.cursor.seq {
                break;
            }
            if let Ok(Control::Erase { id, actor, reply }) = self.control.try_recv() {
                let r = self.erase(&id, &actor);
                // Stopping, or an erasure that was recorded and could not finish (its
                // retries outlast ClickHouse's errors, so a local file failed): nothing
                // may be forwarded before it is done, which the next start sees to.
                let halt = match &r {
                    Err(ClickHouseError::Closed) => true,
                    Err(e) if !matches!(erase::read_pending(&self.dir), Ok(None)) => {
                        self.stopped_by(ClickHouseError::Invalid(format!(
                            "an erasure could not finish ({e}); the next start finishes it"
                        )));
                        true
                    }
                    _ => false,
                };
                let _ = reply.send(r);
                if self.abandoned {
                    return;
                }
                if halt {
                    break;
                }
                continue;
            }
            match self.step(self.options.batch_events_max) {
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

    fn stopped_by(&self, e: ClickHouseError) {
        tracing::error!(project = %self.project, error = %e, "forwarding stopped");
        self.status.lock().expect("status lock").last_error = Some(e.to_string());
    }

    /// Forwards one batch of at most `events_max` events, retrying the INSERTs until they
    /// succeed or the process stops.
    fn step(&mut self, events_max: usize) -> Result<Step, ClickHouseError> {
        let (records, next) = self.outbox.read(
            self.cursor,
            events_max.min(self.options.batch_events_max),
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
            if !self.pause(wait_ms) {
                return Ok(Step::Abandoned);
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

    /// Steps 1-5 of an erasure (crates/clickhouse/src/erase.rs), then the rest. `Closed`
    /// when the process stops first.
    fn erase(&mut self, id: &str, actor: &str) -> Result<Option<u64>, ClickHouseError> {
        // 1-2: everything queued before the request, forwarded; later records wait.
        let roll = self.outbox.roll()?;
        while self.cursor.seq < roll.seq {
            match self.step((roll.seq - self.cursor.seq) as usize)? {
                Step::Forwarded => {}
                Step::Idle if self.stop.load(Ordering::Acquire) => {
                    return Err(ClickHouseError::Closed)
                }
                Step::Idle => std::thread::sleep(Duration::from_millis(10)),
                Step::Abandoned => {
                    self.abandoned = true;
                    return Err(ClickHouseError::Closed);
                }
            }
        }
        if self.cursor != roll {
            // The same place, named by the new file: the files before it can all go.
            write_cursor(&self.dir, roll)?;
            self.cursor = roll;
        }
        // 3: the person as the graph knows them after exactly those records.
        let Some(person) = self.graph.find_person(id) else {
            return Ok(None);
        };
        let nodes: Vec<u32> = (0..self.graph.node_count() as u32)
            .filter(|&n| self.graph.person_of(n) == person)
            .collect();
        let events = self.retry(|f| erase::count_events(&f.target, &f.project, &nodes))?;
        // 4: the embedded copy of a migrated project numbers nodes as the graph does;
        // another embedded store is only reachable by the id.
        if let Some(store) = &self.embedded {
            let who = if crate::migrate::migrated(&self.dir)? {
                Erase::Nodes(nodes.clone())
            } else {
                Erase::Id(id.to_string())
            };
            store.erase(who)?;
        }
        // 5: from here on the erasure finishes, whatever happens.
        let pending = PendingErasure {
            nodes,
            events,
            audit: AuditEntry::new(
                "person.delete",
                Some(&self.project),
                actor,
                format!(
                    "{}: {events} events erased",
                    throughline_store::audit::erased_id(id)
                ),
            ),
        };
        erase::write_pending(&self.dir, &pending)?;
        self.stop_here(EraseStep::Recorded)?;
        self.finish_erasure(&pending)?;
        Ok(Some(events))
    }

    /// Steps 6-9: each repeats harmlessly, so a restart runs them again from the top.
    fn finish_erasure(&mut self, p: &PendingErasure) -> Result<(), ClickHouseError> {
        let count = self.graph.node_count();
        for &n in p.nodes.iter().filter(|&&n| (n as usize) < count) {
            let person = self.graph.person_of(n);
            self.graph.forget_person(person);
        }
        // Erased nodes are in no table any more: no row is written for them.
        self.graph.drain_journal();
        self.checkpoint()?;
        self.stop_here(EraseStep::Checkpointed)?;
        self.outbox
            .forwarded(0, self.cursor, self.checkpoint_file)?;
        self.stop_here(EraseStep::Retired)?;
        self.retry(|f| erase::delete_nodes(&f.target, &f.project, &p.nodes))?;
        self.stop_here(EraseStep::Deleted)?;
        erase::audit_once(&self.data, &p.audit)?;
        erase::clear_pending(&self.dir)
    }

    /// Sleeps `ms` between two attempts, waking early when the process stops: false then.
    fn pause(&self, ms: u64) -> bool {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            if self.stop.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Runs `f` until it succeeds, with the inserts' backoff, while ClickHouse is away or
    /// refuses; `Closed` when the process stops first.
    fn retry<T>(
        &self,
        mut f: impl FnMut(&Self) -> Result<T, ClickHouseError>,
    ) -> Result<T, ClickHouseError> {
        let mut wait_ms = 50u64;
        loop {
            match f(self) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::warn!(project = %self.project, error = %e, retry_ms = wait_ms, "erasure step failed; retrying");
                    self.status.lock().expect("status lock").last_error = Some(e.to_string());
                }
            }
            if !self.pause(wait_ms) {
                return Err(ClickHouseError::Closed);
            }
            wait_ms = (wait_ms * 2).min(self.options.retry_ms_max);
        }
    }

    fn stop_here(&mut self, step: EraseStep) -> Result<(), ClickHouseError> {
        if self.options.erase_stop_after == Some(step) {
            // As a crash there would: nothing after this step happened, and the graph in
            // memory must not become a checkpoint.
            self.abandoned = true;
            return Err(ClickHouseError::Closed);
        }
        Ok(())
    }
}
