//! The orchestrator's runtime: the pure machine of `throughline_orchestrate` wired to the
//! real world. Per project with journeys, one thread owns a [`Driver`] over the journal in
//! `DIR/projects/NAME/orchestrate/`; it takes in stored events from a store tail, ticks
//! the clock, hands deliveries to the worker pool ([`deliver`]) and writes the events the
//! machine records through the store's normal write path.
//!
//! The order that makes "never twice" hold: an input is journaled and fsynced before the
//! machine applies it, so a delivery (with its idempotency key) is attempted only once the
//! key is durable; its outcome is journaled when it comes back. A crash between the attempt
//! and the outcome's commit is the window in which a receiver may see a send again, with
//! the same `webhook-id` / `Message-ID`, and drop it.
//!
//! Events acknowledged by the store but not yet journaled when the process died are found
//! again at start: a catch-up scan reads the wanted events received since the machine's
//! watermark (less the deduplication window), and the machine ignores those it has seen.
//!
//! **Erasure** ([`Orchestrator::erase_person`]) runs between two turns: it takes in what
//! the tail holds (leaving out the person's events), erases the person from the store,
//! takes in the tail again, erases them from the machine, writes a snapshot at once (so no
//! journal file still holds their events or facts) and removes their rows from the
//! audience exports. A delivery worker asks the machine before acting on a job, so a send
//! of the person still queued is dropped.

pub mod api;
pub mod deliver;
pub mod journal;
pub mod links;
mod render;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use throughline_identity::IdKind;
use throughline_model::{Event, EventType, Millis};
use throughline_orchestrate::machine::{
    self, Effect, Facts, Input, Machine, Observed, SEEN_WINDOW_MS,
};
use throughline_orchestrate::policy::{Cap, Policy, QuietHours};
use throughline_orchestrate::Driver;
use throughline_store::{now_ms, ProjectStore, Store, Tail};

use journal::FileJournal;

/// Persons whose timers one tick fires at most.
const TICK_PERSONS_MAX: usize = 2_000;
/// Stored events taken from the tail per loop at most.
const TAIL_BATCH_MAX: usize = 5_000;
/// Persons whose profile facts are kept at most.
pub const PROFILES_MAX: usize = 5_000_000;

/// `[orchestrate]` in the server's config.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestrateConfig {
    /// Runs journeys in `serve` (on by default).
    pub enabled: bool,
    /// The base URL of tracked links, opens and unsubscribes (this server as the world
    /// reaches it).
    pub public_url: String,
    /// Lets `POST /api/v1/admin/clock` move the orchestrator's clock: for tests only.
    pub test_clock: bool,
    pub tick_ms: u64,
    pub workers: usize,
    /// Deliveries in flight at most; ticks wait beyond it.
    pub inflight_max: usize,
    pub tail_events_max: usize,
    /// Write a snapshot and start a new journal once the journal has this many bytes.
    pub snapshot_journal_bytes: u64,
    pub webhook_timeout_ms: u64,
    /// Signs webhooks whose step names no `secret` (`whsec_...`); without it each project
    /// gets one in `DIR/projects/NAME/orchestrate/webhook-secret`.
    pub webhook_secret: Option<String>,
    pub caps: Vec<Cap>,
    pub quiet_hours: Option<QuietHours>,
    pub suppress_on: Option<Vec<String>>,
    pub retry: Option<Vec<String>>,
    pub smtp: Option<SmtpConfig>,
}

impl Default for OrchestrateConfig {
    fn default() -> Self {
        OrchestrateConfig {
            enabled: true,
            public_url: "http://127.0.0.1:8080".into(),
            test_clock: false,
            tick_ms: 1000,
            workers: 8,
            inflight_max: 2_000,
            tail_events_max: 200_000,
            snapshot_journal_bytes: 256 << 20,
            webhook_timeout_ms: 10_000,
            webhook_secret: None,
            caps: Vec::new(),
            quiet_hours: None,
            suppress_on: None,
            retry: None,
            smtp: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default = "smtp_port")]
    pub port: u16,
    /// `none`, `starttls` (default) or `tls` (implicit TLS, port 465).
    #[serde(default = "starttls")]
    pub tls: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sender of emails whose step names no `from`.
    pub from: String,
    #[serde(default = "smtp_timeout")]
    pub timeout_ms: u64,
}

fn smtp_port() -> u16 {
    587
}
fn starttls() -> String {
    "starttls".into()
}
fn smtp_timeout() -> u64 {
    30_000
}

impl OrchestrateConfig {
    pub fn policy(&self) -> Policy {
        let d = Policy::default();
        Policy {
            caps: self.caps.clone(),
            quiet_hours: self.quiet_hours.clone(),
            suppress_on: self.suppress_on.clone().unwrap_or(d.suppress_on),
            retry: self.retry.clone().unwrap_or(d.retry),
        }
    }

    /// The frequency caps this config enforces, as `query fatigue` compares them with its
    /// recommendations (none when journeys are off).
    pub fn fatigue_caps(&self) -> Vec<throughline_query::fatigue::OrchestrationCap> {
        if self.enabled {
            fatigue_caps(&self.caps)
        } else {
            Vec::new()
        }
    }

    /// Checks what `serve` would refuse at start.
    pub fn check(&self) -> Result<(), String> {
        self.policy().compile()?;
        if let Some(s) = &self.webhook_secret {
            throughline_orchestrate::webhook::decode_secret(s)
                .map_err(|e| format!("orchestrate.webhook_secret: {e}"))?;
        }
        if let Some(s) = &self.smtp {
            if !matches!(s.tls.as_str(), "none" | "starttls" | "tls") {
                return Err("orchestrate.smtp.tls: use none, starttls or tls".into());
            }
        }
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return Err("orchestrate.public_url: an http:// or https:// URL".into());
        }
        Ok(())
    }
}

/// Frequency caps as `query fatigue` reads them.
pub fn fatigue_caps(caps: &[Cap]) -> Vec<throughline_query::fatigue::OrchestrationCap> {
    caps.iter()
        .map(|c| throughline_query::fatigue::OrchestrationCap {
            channel: c.channel.clone(),
            count: c.count,
            per: c.per.clone(),
        })
        .collect()
}

/// The orchestrator's clock: the real one, or with `test_clock` one tests move forward.
pub struct Clock {
    test: bool,
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn new(test: bool) -> Clock {
        Clock {
            test,
            offset_ms: AtomicI64::new(0),
        }
    }

    pub fn now(&self) -> Millis {
        now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    pub fn is_test(&self) -> bool {
        self.test
    }

    /// Moves a test clock to `to` (never backwards).
    pub fn set(&self, to: Millis) -> Result<Millis, String> {
        if !self.test {
            return Err(
                "the clock is the real one (set orchestrate.test_clock = true to move it)".into(),
            );
        }
        let now = self.now();
        if to > now {
            self.offset_ms.fetch_add(to - now, Ordering::Relaxed);
        }
        Ok(self.now())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Store(#[from] throughline_store::StoreError),
    #[error("{0}")]
    Orchestrate(#[from] throughline_orchestrate::OrchestrateError),
    #[error("{0}")]
    Other(String),
}

/// Traits kept per person: what journeys read.
#[derive(Default)]
struct Profiles {
    keys: HashSet<String>,
    by_person: HashMap<String, Map<String, Value>>,
}

impl Profiles {
    fn update(&mut self, person: &str, e: &Event) {
        if self.by_person.len() >= PROFILES_MAX && !self.by_person.contains_key(person) {
            return;
        }
        let mut found: Vec<(&str, Value)> = Vec::new();
        if let Some(Value::String(tz)) = e.context.get("timezone") {
            found.push(("timezone", Value::String(tz.clone())));
        }
        if let Some(Value::Object(t)) = e.context.get("traits") {
            found.extend(t.iter().map(|(k, v)| (k.as_str(), v.clone())));
        }
        if e.event_type == EventType::Identify {
            found.extend(e.traits.iter().map(|(k, v)| (k.as_str(), v.clone())));
        }
        let has_email = self
            .by_person
            .get(person)
            .is_some_and(|m| m.contains_key("email"));
        if let Some(email) = &e.email {
            if !has_email && !found.iter().any(|(k, _)| *k == "email") {
                found.push(("email", Value::String(email.clone())));
            }
        }
        for (k, v) in found {
            if k == "email" || k == "timezone" || self.keys.contains(k) {
                self.by_person
                    .entry(person.to_string())
                    .or_default()
                    .insert(k.to_string(), v);
            }
        }
    }
}

/// One project's orchestrator.
pub struct ProjectRuntime {
    pub name: String,
    pub(crate) store: Arc<ProjectStore>,
    dir: PathBuf,
    driver: Mutex<Driver<FileJournal>>,
    tail: Option<Tail>,
    /// Outcomes from the delivery workers, waiting to be journaled.
    results: Mutex<Vec<Input>>,
    profiles: Mutex<Profiles>,
    /// Records whose store write failed, tried again.
    unwritten: Mutex<Vec<throughline_orchestrate::Record>>,
    pub(crate) secret: throughline_token::Secret,
    webhook_secret: Vec<u8>,
    wanted: Mutex<Arc<Wanted>>,
    /// Held by a turn of the project's loop, by API commands and by an erasure, so an
    /// erasure never interleaves with taking in events or writing records.
    work: Mutex<()>,
    pub stats: RuntimeStats,
}

#[derive(Default)]
pub struct RuntimeStats {
    pub deliveries: AtomicU64,
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub records_written: AtomicU64,
    pub events_observed: AtomicU64,
    pub catch_up_scans: AtomicU64,
}

/// Which stored events the machine wants, by (type, name), for the tail and catch-up.
struct Wanted {
    matchers: Vec<throughline_query::StepMatcher>,
    names: Vec<String>,
    paths: bool,
}

impl Wanted {
    fn of(m: &Machine) -> Wanted {
        let mut matchers = Vec::new();
        for (s, j) in m.journeys() {
            if s.status == throughline_orchestrate::Status::Archived {
                continue;
            }
            matchers.extend(j.matchers().into_iter().cloned());
        }
        let paths = matchers.iter().any(|x| x.needs_path());
        let names = m.state().policy.clone().unwrap_or_default().suppress_on;
        Wanted {
            matchers,
            names,
            paths,
        }
    }

    fn by_name(&self, kind: u8, name: Option<&str>) -> bool {
        if kind == EventType::Identify.code() {
            return true;
        }
        let view = kind == EventType::Page.code() || kind == EventType::Screen.code();
        if view && self.paths {
            return true;
        }
        name.is_some_and(|n| self.names.iter().any(|x| x == n))
            || self
                .matchers
                .iter()
                .any(|m| m.matches(name, None) || (view && m.needs_path()))
    }
}

impl ProjectRuntime {
    fn open(
        store: Arc<ProjectStore>,
        config: &OrchestrateConfig,
        live: bool,
    ) -> Result<ProjectRuntime, RuntimeError> {
        let dir = store.dir().join("orchestrate");
        let rec = journal::recover(&dir).map_err(RuntimeError::Other)?;
        if rec.torn_bytes > 0 {
            tracing::warn!(
                project = store.name(),
                bytes = rec.torn_bytes,
                "cut a torn journal tail (never committed)"
            );
        }
        let last = rec
            .entries
            .last()
            .map(|e| e.seq)
            .or(rec.snapshot.as_ref().map(|s| s.0))
            .unwrap_or(0);
        let journal = FileJournal::open(&dir, last).map_err(RuntimeError::Other)?;
        let erased = rec
            .entries
            .iter()
            .any(|e| matches!(e.input, Input::Erase { .. }));
        let mut driver = Driver::recover(rec.snapshot, rec.entries, journal)?;
        if erased {
            // An erasure journaled but not yet covered by a snapshot (a crash in between):
            // the journal before it still holds the person.
            snapshot_now(&mut driver)?;
        }
        let policy = config.policy();
        if driver.machine.state().policy.as_ref() != Some(&policy) {
            driver.submit(
                vec![Input::SetPolicy {
                    policy: Box::new(policy),
                }],
                now_ms(),
            )?;
        }
        let secret = throughline_token::Secret::load_or_create(store.dir())
            .map_err(|e| RuntimeError::Other(e.to_string()))?;
        let webhook_secret = match &config.webhook_secret {
            Some(s) => {
                throughline_orchestrate::webhook::decode_secret(s).map_err(RuntimeError::Other)?
            }
            None => project_webhook_secret(&dir)?,
        };
        let wanted = Arc::new(Wanted::of(&driver.machine));
        let tail = live.then(|| {
            let w = wanted.clone();
            store.tail(
                Arc::new(move |k, n| w.by_name(k, n)),
                config.tail_events_max,
            )
        });
        let rt = ProjectRuntime {
            name: store.name().to_string(),
            store,
            dir,
            driver: Mutex::new(driver),
            tail,
            results: Mutex::new(Vec::new()),
            profiles: Mutex::new(Profiles::default()),
            unwritten: Mutex::new(Vec::new()),
            secret,
            webhook_secret,
            wanted: Mutex::new(wanted),
            work: Mutex::new(()),
            stats: RuntimeStats::default(),
        };
        if live {
            let keys =
                rt.with_machine(|m| m.journeys().flat_map(|(_, j)| j.trait_keys()).collect());
            rt.load_profiles(keys)?;
        }
        Ok(rt)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` with the machine (read-only views for the API).
    pub fn with_machine<T>(&self, f: impl FnOnce(&Machine) -> T) -> T {
        f(&self.driver.lock().expect("driver").machine)
    }

    /// Journals and applies inputs now; carries out their effects when `pool` is given.
    pub fn submit(
        &self,
        inputs: Vec<Input>,
        now: Millis,
        pool: Option<&deliver::Pool>,
        ctx: &Ctx,
    ) -> Result<(), RuntimeError> {
        let fx = {
            let mut d = self.driver.lock().expect("driver");
            let fx = d.submit(inputs, now)?;
            self.refresh_wanted(&d.machine);
            fx
        };
        self.carry_out(fx, pool, ctx)
    }

    fn refresh_wanted(&self, m: &Machine) {
        let w = Arc::new(Wanted::of(m));
        let mut keys = HashSet::new();
        for (_, j) in m.journeys() {
            keys.extend(j.trait_keys());
        }
        {
            let mut p = self.profiles.lock().expect("profiles");
            let new_keys = !keys.is_subset(&p.keys);
            p.keys = keys.clone();
            if new_keys && self.tail.is_some() {
                drop(p);
                if let Err(e) = self.load_profiles(keys) {
                    tracing::warn!(project = %self.name, error = %e, "reloading profiles failed");
                }
            }
        }
        if let Some(t) = &self.tail {
            let w2 = w.clone();
            t.set_filter(Arc::new(move |k, n| w2.by_name(k, n)));
        }
        *self.wanted.lock().expect("wanted") = w;
    }

    /// The traits journeys read, for every person, from identify events in the store.
    fn load_profiles(&self, keys: HashSet<String>) -> Result<(), RuntimeError> {
        let snap = self.store.snapshot();
        let identity = snap.identity();
        let mut p = Profiles {
            keys,
            by_person: HashMap::new(),
        };
        let mut events: Vec<(Millis, String, Event)> = Vec::new();
        snap.for_each_event_where(
            |_, name| name.is_none(),
            |_, node, e| {
                if e.event_type == EventType::Identify || e.context.contains_key("traits") {
                    let person = identity.canonical_id(identity.person_of(node)).to_string();
                    events.push((e.timestamp, person, e));
                }
                Ok(())
            },
        )?;
        events.sort_by_key(|e| e.0);
        for (_, person, e) in &events {
            p.update(person, e);
        }
        *self.profiles.lock().expect("profiles") = p;
        Ok(())
    }

    fn facts(&self, person: &str, snap: &throughline_store::Snapshot) -> Facts {
        let identity = snap.identity();
        let mut f = Facts::default();
        if let Some(pid) = identity.find_person(person) {
            f.ids = identity
                .ids_of(pid)
                .into_iter()
                .take(throughline_orchestrate::machine::IDS_MAX)
                .map(|(_, id)| id.to_string())
                .collect();
            if let Some(email) = identity
                .ids_of(pid)
                .into_iter()
                .find(|(k, _)| *k == IdKind::Email)
                .map(|(_, id)| id.to_string())
            {
                f.traits.insert("email".into(), json!(email));
            }
        }
        if let Some(t) = self
            .profiles
            .lock()
            .expect("profiles")
            .by_person
            .get(person)
        {
            for (k, v) in t {
                f.traits.insert(k.clone(), v.clone());
            }
        }
        f
    }

    /// An observed event: its person and their facts.
    fn observe(&self, e: Event, snap: &throughline_store::Snapshot) -> Option<Observed> {
        let identity = snap.identity();
        let id = e.user_id.as_deref().or(e.anonymous_id.as_deref())?;
        let person = identity
            .find_person(id)
            .map(|p| identity.canonical_id(p).to_string())
            .unwrap_or_else(|| id.to_string());
        self.profiles.lock().expect("profiles").update(&person, &e);
        let facts = self.facts(&person, snap);
        Some(Observed {
            person,
            facts,
            event: e,
        })
    }

    /// Events received since the watermark (less the dedupe window), for after a crash or
    /// a lagging tail.
    fn catch_up(&self) -> Result<Vec<Input>, RuntimeError> {
        self.stats.catch_up_scans.fetch_add(1, Ordering::Relaxed);
        let (since, machine_wants) = {
            let d = self.driver.lock().expect("driver");
            (
                d.machine.state().received_watermark - SEEN_WINDOW_MS,
                self.wanted.lock().expect("wanted").clone(),
            )
        };
        let snap = self.store.snapshot();
        let mut found: Vec<Event> = Vec::new();
        snap.for_each_event_where(
            |_, name| {
                machine_wants.by_name(EventType::Track.code(), name)
                    || (name.is_none() && machine_wants.paths)
                    || name.is_some_and(|_| machine_wants.by_name(EventType::Page.code(), name))
            },
            |_, _, e| {
                if e.received_at >= since && e.event_type != EventType::Identify {
                    found.push(e);
                }
                Ok(())
            },
        )?;
        found.sort_by_key(|e| (e.received_at, e.timestamp));
        let d = self.driver.lock().expect("driver");
        let wants: Vec<Event> = found
            .into_iter()
            .filter(|e| {
                d.machine.wants(
                    e.event_type.code(),
                    e.event.as_deref(),
                    e.page_path.as_deref(),
                )
            })
            .collect();
        drop(d);
        Ok(wants
            .into_iter()
            .filter_map(|e| self.observe(e, &snap))
            .map(|o| Input::Event {
                observed: Box::new(o),
            })
            .collect())
    }

    /// Carries out effects: deliveries to the pool, records to the store.
    fn carry_out(
        &self,
        fx: Vec<Effect>,
        pool: Option<&deliver::Pool>,
        ctx: &Ctx,
    ) -> Result<(), RuntimeError> {
        let mut records = std::mem::take(&mut *self.unwritten.lock().expect("unwritten"));
        let mut failures = Vec::new();
        for e in fx {
            match e {
                Effect::Record(r) => records.push(r),
                Effect::Deliver(d) => {
                    let Some(pool) = pool else { continue };
                    self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
                    let job = {
                        let drv = self.driver.lock().expect("driver");
                        render::job(&drv.machine, &d, self, ctx)
                    };
                    match job {
                        Ok(job) => pool.send(deliver::Job {
                            project: self.name.clone(),
                            key: d.key.clone(),
                            attempt: d.attempt,
                            what: job,
                        }),
                        Err(error) => failures.push(Input::Delivered {
                            key: d.key,
                            attempt: d.attempt,
                            outcome: throughline_orchestrate::Outcome::Failed {
                                retryable: false,
                                error,
                            },
                        }),
                    }
                }
            }
        }
        if !failures.is_empty() {
            self.results.lock().expect("results").extend(failures);
        }
        if !records.is_empty() && pool.is_some() {
            self.write_records(records);
        }
        Ok(())
    }

    fn write_records(&self, records: Vec<throughline_orchestrate::Record>) {
        let snap = self.store.snapshot();
        let identity = snap.identity();
        let mut events = self.store.new_batch(records.len(), records.len() * 512);
        let mut ids = throughline_collect::IdGen::new(throughline_store::random_seed());
        let upto = records.iter().map(|r| r.seq).max().unwrap_or(0);
        for r in &records {
            let as_user = identity.lookup(IdKind::User, &r.person).is_some();
            let mut m = json!({
                "type": "track",
                "event": r.name,
                "messageId": r.message_id,
                "timestamp": throughline_model::format_ms(r.timestamp),
                "properties": r.properties,
                "context": {"library": {"name": "throughline-orchestrate", "version": env!("CARGO_PKG_VERSION")}},
            });
            m[if as_user { "userId" } else { "anonymousId" }] = json!(r.person);
            let bytes = serde_json::to_vec(&m).expect("a message serializes");
            match throughline_collect::Batch::parse_single(
                &bytes,
                EventType::Track,
                now_ms(),
                &mut ids,
            ) {
                Ok(b) => {
                    for e in b.messages.into_iter().flatten() {
                        if let Err(e) = events.push(&e) {
                            tracing::warn!(project = %self.name, error = %e, "a recorded event was refused")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(project = %self.name, error = %e.error, "a recorded event was refused")
                }
            }
        }
        drop(snap);
        match self.store.append(events) {
            Ok(_) => {
                self.stats
                    .records_written
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                self.results
                    .lock()
                    .expect("results")
                    .push(Input::Recorded { upto });
            }
            Err(e) => {
                tracing::warn!(project = %self.name, error = %e, "recording events failed; retrying");
                self.unwritten.lock().expect("unwritten").extend(records);
            }
        }
    }

    /// Tail records as inputs (and profile updates), leaving out the events of `erased`
    /// ids.
    fn take_in(&self, records: Vec<Vec<u8>>, erased: &HashSet<String>) -> Vec<Input> {
        if records.is_empty() {
            return Vec::new();
        }
        let snap = self.store.snapshot();
        let d = self.driver.lock().expect("driver");
        let mut observed = Vec::new();
        for r in records {
            let Ok(e) = serde_json::from_slice::<Event>(&r) else {
                continue;
            };
            let of_erased = [&e.user_id, &e.anonymous_id, &e.email]
                .into_iter()
                .flatten()
                .any(|id| erased.contains(id));
            if of_erased {
                continue;
            }
            let wanted = d.machine.wants(
                e.event_type.code(),
                e.event.as_deref(),
                e.page_path.as_deref(),
            );
            if !wanted {
                // Identify events only update profiles.
                if let Some(id) = e.user_id.as_deref().or(e.anonymous_id.as_deref()) {
                    let identity = snap.identity();
                    let person = identity
                        .find_person(id)
                        .map(|p| identity.canonical_id(p).to_string())
                        .unwrap_or_else(|| id.to_string());
                    self.profiles.lock().expect("profiles").update(&person, &e);
                }
                continue;
            }
            observed.push(e);
        }
        drop(d);
        let mut inputs = Vec::new();
        for e in observed {
            if let Some(o) = self.observe(e, &snap) {
                self.stats.events_observed.fetch_add(1, Ordering::Relaxed);
                inputs.push(Input::Event {
                    observed: Box::new(o),
                });
            }
        }
        inputs
    }

    /// The delivery outcomes that came back, less those of sends the machine no longer
    /// holds (an erased person's): journaling them would write the person's key again.
    fn outcomes(&self) -> Vec<Input> {
        let results = std::mem::take(&mut *self.results.lock().expect("results"));
        if results.is_empty() {
            return results;
        }
        let d = self.driver.lock().expect("driver");
        results
            .into_iter()
            .filter(|i| match i {
                Input::Delivered { key, attempt, .. } => d.machine.is_in_flight(key, *attempt),
                _ => true,
            })
            .collect()
    }

    /// GDPR erasure of the person known by `id` (see the module's header); the number of
    /// events the store erased. The caller holds `work`.
    fn erase(
        &self,
        id: &str,
        pool: Option<&deliver::Pool>,
        ctx: &Ctx,
        now: Millis,
    ) -> Result<usize, RuntimeError> {
        let ids = person_ids(&self.store, id)?;
        let drained = |rt: &ProjectRuntime| match &rt.tail {
            Some(t) => rt.take_in(t.poll(usize::MAX, Duration::ZERO), &ids),
            None => Vec::new(),
        };
        let before = drained(self);
        self.submit(before, now, pool, ctx)?;
        let erased = self.store.delete_person(id)?;
        // Records of the person not yet written must not reach the store from here on.
        self.unwritten
            .lock()
            .expect("unwritten")
            .retain(|r| !ids.contains(&r.person));
        let after = drained(self);
        self.submit(after, now, pool, ctx)?;
        self.submit(
            vec![Input::Erase {
                id_hashes: ids.iter().map(|i| machine::id_hash(i)).collect(),
            }],
            now,
            pool,
            ctx,
        )?;
        snapshot_now(&mut self.driver.lock().expect("driver"))?;
        self.profiles
            .lock()
            .expect("profiles")
            .by_person
            .retain(|person, _| !ids.contains(person));
        let exports = self.store.dir().join("exports");
        match pool {
            Some(pool) => pool.erase_from_exports(&exports, &ids),
            None => deliver::erase_from_exports(&exports, &ids).map(drop),
        }
        .map_err(RuntimeError::Other)?;
        Ok(erased)
    }

    /// One turn of the project's loop; returns how long it may sleep.
    fn turn(
        &self,
        clock: &Clock,
        pool: &deliver::Pool,
        ctx: &Ctx,
        config: &OrchestrateConfig,
    ) -> Result<(), RuntimeError> {
        let Some(tail) = &self.tail else {
            return Ok(());
        };
        let (in_flight, next_due) = self.with_machine(|m| (m.in_flight_count(), m.next_due()));
        let now = clock.now();
        let pending_results = !self.results.lock().expect("results").is_empty();
        let wait_ms = if pending_results || (in_flight > 0 && pool.busy()) {
            5
        } else {
            let until_due = next_due.map_or(config.tick_ms as i64, |d| (d - now).max(0));
            (config.tick_ms as i64).min(until_due).max(1)
        };
        let records = tail.poll(TAIL_BATCH_MAX, Duration::from_millis(wait_ms as u64));
        let mut inputs = Vec::new();
        if tail.take_lagged() {
            tracing::warn!(project = %self.name, "event tail overflowed; catching up from the store");
            inputs.extend(self.catch_up()?);
        }
        inputs.extend(self.take_in(records, &HashSet::new()));
        inputs.extend(self.outcomes());
        let now = clock.now();
        let (in_flight, next_due) = self.with_machine(|m| (m.in_flight_count(), m.next_due()));
        if next_due.is_some_and(|d| d <= now) && in_flight < config.inflight_max {
            let persons = self.with_machine(|m| m.due_persons(now, TICK_PERSONS_MAX));
            let snap = self.store.snapshot();
            let facts = persons
                .into_iter()
                .map(|p| {
                    let f = self.facts(&p, &snap);
                    (p, f)
                })
                .collect();
            inputs.push(Input::Tick {
                max: TICK_PERSONS_MAX as u32,
                facts,
            });
        }
        if inputs.is_empty() {
            let unwritten = !self.unwritten.lock().expect("unwritten").is_empty();
            if unwritten {
                self.carry_out(Vec::new(), Some(pool), ctx)?;
            }
            return Ok(());
        }
        self.submit(inputs, now, Some(pool), ctx)?;
        let mut d = self.driver.lock().expect("driver");
        if d.journal.bytes > config.snapshot_journal_bytes {
            snapshot_now(&mut d)?;
            tracing::info!(project = %self.name, seq = d.seq, "orchestrator snapshot written");
        }
        Ok(())
    }
}

/// Writes a snapshot of the machine now, which retires every journal file before it.
/// Borrowed, not cloned: a snapshot of a million persons must not double them.
fn snapshot_now(d: &mut Driver<FileJournal>) -> Result<(), RuntimeError> {
    let Driver {
        machine,
        journal,
        seq,
    } = d;
    journal
        .snapshot(*seq, machine.state())
        .map_err(RuntimeError::Other)
}

/// Every id of the person `id` names (and `id` itself), as the identity graph knows them
/// before the erasure.
fn person_ids(store: &ProjectStore, id: &str) -> Result<HashSet<String>, RuntimeError> {
    let snap = store.snapshot();
    let identity = snap.identity();
    let pid = identity
        .find_person(id)
        .ok_or_else(|| RuntimeError::Other(format!("no person with id {id:?}")))?;
    let mut ids: HashSet<String> = identity
        .ids_of(pid)
        .into_iter()
        .map(|(_, i)| i.to_string())
        .collect();
    ids.insert(id.to_string());
    Ok(ids)
}

/// GDPR erasure of a person from a project no server runs (`throughline delete-person`):
/// the store, then the orchestrator's journal and snapshot (an `Erase` input and a
/// snapshot at once) and the audience exports. Returns the events the store erased.
pub fn erase_offline(store: &ProjectStore, id: &str) -> Result<usize, RuntimeError> {
    let ids = person_ids(store, id)?;
    let erased = store.delete_person(id)?;
    let dir = store.dir().join("orchestrate");
    if dir.exists() {
        let rec = journal::recover(&dir).map_err(RuntimeError::Other)?;
        let last = rec
            .entries
            .last()
            .map(|e| e.seq)
            .or(rec.snapshot.as_ref().map(|s| s.0))
            .unwrap_or(0);
        let journal = FileJournal::open(&dir, last).map_err(RuntimeError::Other)?;
        let mut driver = Driver::recover(rec.snapshot, rec.entries, journal)?;
        let id_hashes = ids.iter().map(|i| machine::id_hash(i)).collect();
        driver.submit(vec![Input::Erase { id_hashes }], now_ms())?;
        snapshot_now(&mut driver)?;
    }
    deliver::erase_from_exports(&store.dir().join("exports"), &ids).map_err(RuntimeError::Other)?;
    Ok(erased)
}

fn project_webhook_secret(dir: &Path) -> Result<Vec<u8>, RuntimeError> {
    use base64::Engine;
    let path = dir.join("webhook-secret");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return throughline_orchestrate::webhook::decode_secret(text.trim())
            .map_err(|e| RuntimeError::Other(format!("{}: {e}", path.display())));
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| RuntimeError::Other(e.to_string()))?;
    let text = format!(
        "whsec_{}\n",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let tmp = dir.join("webhook-secret.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| RuntimeError::Other(format!("{}: {e}", tmp.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| RuntimeError::Other(e.to_string()))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| RuntimeError::Other(e.to_string()))?;
    Ok(key.to_vec())
}

/// What rendering needs besides the machine and the project.
pub struct Ctx {
    pub public_url: String,
    pub smtp_from: Option<String>,
}

/// Every project's orchestrator, and the workers they share.
pub struct Orchestrator {
    store: Arc<Store>,
    pub config: OrchestrateConfig,
    pub clock: Arc<Clock>,
    projects: Mutex<HashMap<String, Arc<ProjectRuntime>>>,
    pool: Option<Arc<deliver::Pool>>,
    ctx: Arc<Ctx>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Orchestrator {
    /// The server's orchestrator: opens every project that has journeys and runs them.
    pub fn start(
        store: Arc<Store>,
        config: OrchestrateConfig,
    ) -> Result<Arc<Orchestrator>, RuntimeError> {
        config.check().map_err(RuntimeError::Other)?;
        let o = Arc::new(Orchestrator {
            pool: Some(Arc::new(deliver::Pool::start(&config, store.dir()))),
            ctx: Arc::new(Ctx {
                public_url: config.public_url.trim_end_matches('/').to_string(),
                smtp_from: config.smtp.as_ref().map(|s| s.from.clone()),
            }),
            clock: Arc::new(Clock::new(config.test_clock)),
            config,
            store,
            projects: Mutex::new(HashMap::new()),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
        });
        for p in o.store.projects() {
            if p.dir().join("orchestrate").exists() {
                o.project(p.name())?;
            }
        }
        Ok(o)
    }

    /// An orchestrator for one-off commands: journals inputs, runs nothing.
    pub fn offline(store: Arc<Store>, config: OrchestrateConfig) -> Arc<Orchestrator> {
        Arc::new(Orchestrator {
            pool: None,
            ctx: Arc::new(Ctx {
                public_url: config.public_url.trim_end_matches('/').to_string(),
                smtp_from: None,
            }),
            clock: Arc::new(Clock::new(false)),
            config,
            store,
            projects: Mutex::new(HashMap::new()),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn is_live(&self) -> bool {
        self.pool.is_some()
    }

    /// A project's runtime, opened (and started) on first use.
    pub fn project(self: &Arc<Self>, name: &str) -> Result<Arc<ProjectRuntime>, RuntimeError> {
        let mut projects = self.projects.lock().expect("projects");
        if let Some(p) = projects.get(name) {
            return Ok(p.clone());
        }
        let store = self.store.project(name)?;
        let live = self.pool.is_some();
        let rt = Arc::new(ProjectRuntime::open(store, &self.config, live)?);
        projects.insert(name.to_string(), rt.clone());
        drop(projects);
        if live {
            // What was acknowledged but not journaled before a crash, and what is owed.
            // The pool must know the project first, or outcomes would find no one.
            let pool = self.pool.clone().expect("live");
            pool.register(rt.clone());
            let caught = rt.catch_up()?;
            rt.submit(caught, self.clock.now(), Some(&pool), &self.ctx)?;
            let owed = rt.with_machine(|m| m.pending());
            if !owed.is_empty() {
                tracing::info!(
                    project = name,
                    effects = owed.len(),
                    "handing out effects owed since the last run"
                );
            }
            rt.carry_out(owed, Some(&pool), &self.ctx)?;
            let (me, rt2) = (self.clone(), rt.clone());
            let h = std::thread::Builder::new()
                .name(format!("orchestrate-{name}"))
                .spawn(move || me.run(rt2))
                .map_err(|e| RuntimeError::Other(e.to_string()))?;
            self.threads.lock().expect("threads").push(h);
        }
        Ok(rt)
    }

    /// The projects opened so far.
    pub fn projects(&self) -> Vec<Arc<ProjectRuntime>> {
        self.projects
            .lock()
            .expect("projects")
            .values()
            .cloned()
            .collect()
    }

    fn run(self: Arc<Self>, rt: Arc<ProjectRuntime>) {
        let pool = self.pool.clone().expect("live");
        while !self.stop.load(Ordering::Relaxed) {
            let turn = {
                let _work = rt.work.lock().expect("work");
                rt.turn(&self.clock, &pool, &self.ctx, &self.config)
            };
            if let Err(e) = turn {
                tracing::error!(project = %rt.name, error = %e, "orchestrator turn failed; retrying in a second");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    /// Journals inputs for a project (API commands).
    pub fn submit(
        self: &Arc<Self>,
        rt: &ProjectRuntime,
        inputs: Vec<Input>,
    ) -> Result<(), RuntimeError> {
        let _work = rt.work.lock().expect("work");
        rt.submit(inputs, self.clock.now(), self.pool.as_deref(), &self.ctx)
    }

    /// GDPR erasure of a person of `project`: through its running orchestrator when it
    /// has one, else on the files ([`erase_offline`]). Returns the events the store erased.
    pub fn erase_person(
        self: &Arc<Self>,
        store: &ProjectStore,
        id: &str,
    ) -> Result<usize, RuntimeError> {
        let rt = self
            .projects
            .lock()
            .expect("projects")
            .get(store.name())
            .cloned();
        match rt {
            Some(rt) => {
                let _work = rt.work.lock().expect("work");
                rt.erase(id, self.pool.as_deref(), &self.ctx, self.clock.now())
            }
            None => erase_offline(store, id),
        }
    }

    /// Stops the project threads and the workers (deliveries in progress finish; their
    /// outcomes are journaled on the next start as re-deliveries if they were not).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.lock().expect("threads").drain(..) {
            let _ = h.join();
        }
        if let Some(p) = &self.pool {
            p.shutdown();
        }
        // Journal what came back while stopping.
        for rt in self.projects() {
            let results = rt.outcomes();
            if !results.is_empty() {
                let _ = rt
                    .driver
                    .lock()
                    .expect("driver")
                    .submit(results, self.clock.now());
            }
        }
    }
}

#[cfg(test)]
mod tests;
