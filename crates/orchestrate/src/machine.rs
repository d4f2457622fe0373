//! The orchestrator's state machine: `step(input, now) -> effects`, deterministic and pure.
//!
//! Everything it knows arrives as an [`Input`] (journeys created or paused, observed
//! events, ticks of the clock with the facts of the persons due, delivery outcomes,
//! acknowledgements of recorded events, suppressions). Everything it wants done leaves as
//! an [`Effect`]: deliver a message (with its idempotency key), or record an event of a
//! person. It never reads a clock, a file or the network, so replaying the same inputs
//! gives the same state and the same effects: that is how the journal recovers it after a
//! crash, and how a simulation seed replays a failure.
//!
//! **Never twice.** A send gets its key (journey, person, step, entry) when the step is
//! reached, and stays *in flight* until a [`Input::Delivered`] outcome arrives; after a
//! restart [`Machine::pending`] hands every in-flight send out again with the same key,
//! which the receiver uses to drop the repeat. Steps form no cycle and entries are
//! numbered, so no two sends share a key. Recorded events sit in an outbox until
//! acknowledged, and carry deterministic message ids, so the store keeps each once.
//!
//! **Respecting the person.** Before a send: suppression (any of the person's ids), quiet
//! hours in the person's timezone (the send waits for the window to open), then the global
//! frequency caps of the channel over every journey. A capped or suppressed send is
//! recorded (`Message Capped`, `Message Suppressed`) and the person moves on. Sends due at
//! the same instant are taken in journey priority order, so a cap keeps the important one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use throughline_model::{Event, EventType, Millis};

use crate::journey::{self, Condition, Journey, JourneyFile, Next, Reentry, StepKind, Trigger};
use crate::policy::{Compiled, Policy};

/// Trigger properties kept per person in a journey at most (bytes of JSON); larger ones are
/// kept as `{}` and the send renders without them.
pub const TRIGGER_BYTES_MAX: usize = 8 * 1024;
/// Event hashes remembered for deduplication at most; older ones are forgotten first.
pub const SEEN_MAX: usize = 4_000_000;
/// Events received this long before the newest one are forgotten by deduplication: a
/// catch-up scan after a restart starts no further back than this.
pub const SEEN_WINDOW_MS: Millis = 3_600_000;
/// Ids of a person compared with the suppression list at most.
pub const IDS_MAX: usize = 32;
const DAY_MS: Millis = 86_400_000;

/// What a person is known by when a decision needs them: every id (for suppression) and
/// the traits journeys read (`email`, `timezone`, those of conditions and templates).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub traits: Map<String, Value>,
}

/// A stored event the runtime saw, with its person.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// The person's key: their canonical id (the user id once they have one).
    pub person: String,
    pub facts: Facts,
    pub event: Event,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The receiver accepted it (2xx, SMTP 250, a written file line).
    Delivered { detail: String },
    /// It did not; `retryable` for timeouts, 5xx, 429 and connection failures.
    Failed { retryable: bool, error: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Paused,
    Archived,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Paused => "paused",
            Status::Archived => "archived",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    SetPolicy {
        policy: Box<Policy>,
    },
    Create {
        file: Box<JourneyFile>,
    },
    SetStatus {
        journey: String,
        status: Status,
    },
    Event {
        observed: Box<Observed>,
    },
    /// Fire at most `max` timers due by now; `facts` for the persons they belong to.
    Tick {
        max: u32,
        facts: Vec<(String, Facts)>,
    },
    Delivered {
        key: String,
        attempt: u32,
        outcome: Outcome,
    },
    /// Recorded events up to this sequence number are durable in the store.
    Recorded {
        upto: u64,
    },
    Suppress {
        ids: Vec<String>,
        reason: String,
    },
    Unsuppress {
        ids: Vec<String>,
    },
}

/// A message to deliver. `id` is the idempotency key as receivers see it (`webhook-id`,
/// the email's `Message-ID`), derived from `key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub key: String,
    pub id: String,
    pub attempt: u32,
    pub journey: String,
    pub step: String,
    pub variant: String,
    pub entry: u32,
    pub person: String,
    pub channel: String,
    pub facts: Facts,
    pub trigger: Value,
    /// When the machine decided to send it (the first attempt).
    pub at: Millis,
}

/// An event to store for a person, through the store's normal write path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub person: String,
    pub name: String,
    pub message_id: String,
    pub timestamp: Millis,
    pub properties: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Deliver(Delivery),
    Record(Record),
}

/// Where a person is within their current step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "at", rename_all = "snake_case")]
pub enum At {
    /// A `wait` step, until `due`.
    Wait { due: Millis },
    /// A `wait_for_event` step; times out at `due`.
    WaitEvent { due: Millis },
    /// Enter the current step again at `due`: quiet hours, or a resumed journey.
    Hold { due: Millis },
    /// A send in flight.
    Deliver { key: String },
    /// A failed send, tried again at `due`.
    Retry { due: Millis, key: String },
    /// Stopped at a step boundary while the journey is paused.
    Parked,
    /// Past the last step, watching for the goal until `due`.
    Watch { due: Millis },
}

impl At {
    pub fn due(&self) -> Option<Millis> {
        match self {
            At::Wait { due }
            | At::WaitEvent { due }
            | At::Hold { due }
            | At::Retry { due, .. }
            | At::Watch { due } => Some(*due),
            At::Deliver { .. } | At::Parked => None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            At::Wait { .. } => "waiting",
            At::WaitEvent { .. } => "waiting_for_event",
            At::Hold { .. } => "quiet_hours",
            At::Deliver { .. } => "sending",
            At::Retry { .. } => "retrying",
            At::Parked => "paused",
            At::Watch { .. } => "watching_goal",
        }
    }
}

/// One person in one journey.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub journey: u32,
    pub person: String,
    pub entry: u32,
    pub entered: Millis,
    /// The current step; `None` past the last one.
    pub step: Option<u16>,
    pub at: At,
    pub since: Millis,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holdout: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub touched: bool,
    /// The triggering event's properties, as JSON text.
    pub trigger: String,
    /// For event branches: the last time each such step's event happened since entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marks: Vec<(u16, Millis)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct InFlight {
    instance: u64,
    attempt: u32,
    delivery: Delivery,
}

/// Counters of one step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    pub reached: u64,
    pub sends: u64,
    pub delivered: u64,
    pub failed: u64,
    pub retries: u64,
    pub capped: u64,
    pub suppressed: u64,
    pub quiet_delayed: u64,
    pub goal_exits: u64,
    /// Sends by variant name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JourneyStats {
    pub entered: u64,
    /// Entries refused by the journey's limits.
    pub refused: u64,
    pub completed: u64,
    pub converted: u64,
    pub holdout_entered: u64,
    pub holdout_converted: u64,
    /// Goals reached after the last step, while watching.
    pub goal_after_end: u64,
    pub steps: Vec<StepStats>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JourneyState {
    pub file: JourneyFile,
    pub status: Status,
    pub created: Millis,
    pub stats: JourneyStats,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct EntryLog {
    count: u32,
    last: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Suppression {
    pub reason: String,
    pub since: Millis,
}

/// An audience journey's memory of one person: when each `did` and `not_did` step last
/// happened, and whether they are a member.
type Membership = (Vec<Option<Millis>>, bool);

/// The durable part: what snapshots hold. Everything else is rebuilt from it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub now: Millis,
    pub policy: Option<Policy>,
    pub journeys: Vec<JourneyState>,
    instances: BTreeMap<u64, Instance>,
    next_instance: u64,
    /// (journey, person) -> entries so far.
    entries: HashMap<u32, HashMap<String, EntryLog>>,
    /// Sends per person and channel, newest last, as far back as the longest cap.
    history: HashMap<String, Vec<(String, Millis)>>,
    suppressed: HashMap<String, Suppression>,
    in_flight: BTreeMap<String, InFlight>,
    outbox: BTreeMap<u64, Record>,
    next_record: u64,
    /// Audience journeys: per journey and person, the last time each `did` and `not_did`
    /// step happened, and whether the person is a member.
    audience: HashMap<u32, HashMap<String, Membership>>,
    /// Hashes of the events already taken in, with their receipt time.
    seen: HashMap<u64, Millis>,
    /// The newest receipt time taken in: where a catch-up scan starts.
    pub received_watermark: Millis,
    /// (journey, UTC day, entries that day).
    day_entries: HashMap<u32, (i64, u64)>,
}

pub struct Machine {
    st: State,
    policy: Compiled,
    compiled: Vec<Journey>,
    by_name: HashMap<String, u32>,
    active: HashMap<(u32, String), u64>,
    by_person: HashMap<String, Vec<u64>>,
    timers: BTreeSet<(Millis, std::cmp::Reverse<i32>, u64)>,
    /// Per journey, per step, persons there now.
    at_step: Vec<Vec<u64>>,
}

fn key_id(key: &str) -> String {
    format!("msg_{:032x}", xxhash_rust::xxh3::xxh3_128(key.as_bytes()))
}

/// The idempotency key of a send.
pub fn send_key(journey: &str, person: &str, step: &str, entry: u32) -> String {
    format!("{journey}/{person}/{step}/{entry}")
}

fn event_hash(e: &Event) -> u64 {
    xxhash_rust::xxh3::xxh3_64(e.message_id.as_bytes())
}

/// A uniform number in [0, 1) from a string: the deterministic "random" of splits.
fn unit(seed: &str) -> f64 {
    (xxhash_rust::xxh3::xxh3_64(seed.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64
}

fn pick(weights: &[u32], seed: &str) -> usize {
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    let mut x = (unit(seed) * total as f64) as u64;
    for (i, &w) in weights.iter().enumerate() {
        if x < w as u64 {
            return i;
        }
        x -= w as u64;
    }
    weights.len() - 1
}

fn traits_event(facts: &Facts) -> Event {
    let mut e: Event = serde_json::from_value(json!({
        "message_id": "", "type": "identify", "timestamp": 0, "received_at": 0}))
    .expect("a minimal event");
    e.properties = facts.traits.clone();
    e
}

fn matches(m: &throughline_query::StepMatcher, e: &Event) -> bool {
    m.matches_event(
        e.event_type.code(),
        e.event.as_deref(),
        e.page_path.as_deref(),
    ) && m.filters.iter().all(|f| f.holds(e))
}

impl Default for Machine {
    fn default() -> Self {
        Machine::new()
    }
}

impl Machine {
    pub fn new() -> Machine {
        Machine::from_state(State::default()).expect("the empty state is valid")
    }

    /// Rebuilds the machine around a state (a snapshot).
    pub fn from_state(st: State) -> Result<Machine, String> {
        let policy = st.policy.clone().unwrap_or_default().compile()?;
        let mut m = Machine {
            st,
            policy,
            compiled: Vec::new(),
            by_name: HashMap::new(),
            active: HashMap::new(),
            by_person: HashMap::new(),
            timers: BTreeSet::new(),
            at_step: Vec::new(),
        };
        for (i, j) in m.st.journeys.iter().enumerate() {
            let c = journey::compile(&j.file)
                .map_err(|p| format!("journey {}: {}", j.file.name, p[0]))?;
            m.at_step.push(vec![0; c.steps.len()]);
            m.by_name.insert(c.name.clone(), i as u32);
            m.compiled.push(c);
        }
        let ids: Vec<u64> = m.st.instances.keys().copied().collect();
        for id in ids {
            m.index(id);
        }
        Ok(m)
    }

    pub fn state(&self) -> &State {
        &self.st
    }

    pub fn journeys(&self) -> impl Iterator<Item = (&JourneyState, &Journey)> {
        self.st.journeys.iter().zip(&self.compiled)
    }

    pub fn journey(&self, name: &str) -> Option<(&JourneyState, &Journey)> {
        let i = *self.by_name.get(name)? as usize;
        Some((&self.st.journeys[i], &self.compiled[i]))
    }

    /// Persons at each step of a journey now.
    pub fn at_steps(&self, name: &str) -> Option<&[u64]> {
        self.by_name
            .get(name)
            .map(|&i| self.at_step[i as usize].as_slice())
    }

    /// Persons of a journey at a step (or past the last step with `None`), with where they
    /// are, in entry order, at most `limit`.
    pub fn persons_at(&self, name: &str, step: Option<u16>, limit: usize) -> Vec<&Instance> {
        let Some(&j) = self.by_name.get(name) else {
            return Vec::new();
        };
        self.st
            .instances
            .values()
            .filter(|i| i.journey == j && i.step == step)
            .take(limit)
            .collect()
    }

    /// Persons in journeys now (any step, watching included).
    pub fn instance_count(&self) -> usize {
        self.st.instances.len()
    }

    pub fn in_flight_count(&self) -> usize {
        self.st.in_flight.len()
    }

    pub fn outbox_len(&self) -> usize {
        self.st.outbox.len()
    }

    pub fn suppressed(&self) -> &HashMap<String, Suppression> {
        &self.st.suppressed
    }

    pub fn instances_of(&self, person: &str) -> Vec<&Instance> {
        self.by_person
            .get(person)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| self.st.instances.get(id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether an event could matter to some journey or to suppression: what the runtime
    /// feeds in.
    pub fn wants(&self, kind: u8, name: Option<&str>, path: Option<&str>) -> bool {
        if kind == EventType::Track.code()
            && name.is_some_and(|n| self.policy.suppress_on.iter().any(|s| s == n))
        {
            return true;
        }
        self.st.journeys.iter().zip(&self.compiled).any(|(s, j)| {
            s.status != Status::Archived
                && j.matchers()
                    .iter()
                    .any(|m| m.matches_event(kind, name, path))
        })
    }

    /// The next timer, if any.
    pub fn next_due(&self) -> Option<Millis> {
        self.timers.iter().next().map(|t| t.0)
    }

    /// The persons of the first `max` timers due by `now`: whose facts a tick needs.
    pub fn due_persons(&self, now: Millis, max: usize) -> Vec<String> {
        let mut out: Vec<String> = self
            .timers
            .iter()
            .take_while(|t| t.0 <= now)
            .take(max)
            .filter_map(|t| self.st.instances.get(&t.2).map(|i| i.person.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The effects still owed after a restart: every send in flight (not waiting for a
    /// retry) and every record not yet acknowledged.
    pub fn pending(&self) -> Vec<Effect> {
        let mut out: Vec<Effect> =
            self.st
                .in_flight
                .values()
                .filter(|f| {
                    self.st.instances.get(&f.instance).is_none_or(
                        |i| matches!(&i.at, At::Deliver { key } if *key == f.delivery.key),
                    )
                })
                .map(|f| Effect::Deliver(f.delivery.clone()))
                .collect();
        out.extend(self.st.outbox.values().cloned().map(Effect::Record));
        out
    }

    /// Checks that a journey can be created: valid and a new name.
    pub fn check_create(&self, file: &JourneyFile) -> Result<Journey, Vec<journey::Problem>> {
        let j = journey::compile(file)?;
        if self.by_name.contains_key(&j.name) {
            return Err(vec![journey::Problem {
                step: None,
                field: "name".into(),
                error: format!("a journey named {:?} exists already", j.name),
            }]);
        }
        Ok(j)
    }

    /// Applies one input at `now` (never earlier than any input before it).
    pub fn step(&mut self, input: Input, now: Millis) -> Vec<Effect> {
        let now = now.max(self.st.now);
        self.st.now = now;
        let mut fx = Vec::new();
        match input {
            Input::SetPolicy { policy } => {
                if let Ok(c) = policy.compile() {
                    self.policy = c;
                    self.st.policy = Some(*policy);
                }
            }
            Input::Create { file } => {
                let file = *file;
                if let Ok(j) = self.check_create(&file) {
                    let i = self.st.journeys.len() as u32;
                    self.st.journeys.push(JourneyState {
                        file,
                        status: Status::Active,
                        created: now,
                        stats: JourneyStats {
                            steps: vec![StepStats::default(); j.steps.len()],
                            ..Default::default()
                        },
                    });
                    self.at_step.push(vec![0; j.steps.len()]);
                    self.by_name.insert(j.name.clone(), i);
                    self.compiled.push(j);
                }
            }
            Input::SetStatus { journey, status } => self.set_status(&journey, status, now),
            Input::Event { observed } => self.observe(*observed, now, &mut fx),
            Input::Tick { max, facts } => self.tick(max as usize, facts, now, &mut fx),
            Input::Delivered {
                key,
                attempt,
                outcome,
            } => self.delivered(&key, attempt, outcome, now, &mut fx),
            Input::Recorded { upto } => {
                let keep = self.st.outbox.split_off(&(upto + 1));
                self.st.outbox = keep;
            }
            Input::Suppress { ids, reason } => {
                for id in ids {
                    self.st.suppressed.entry(id).or_insert(Suppression {
                        reason: reason.clone(),
                        since: now,
                    });
                }
            }
            Input::Unsuppress { ids } => {
                for id in ids {
                    self.st.suppressed.remove(&id);
                }
            }
        }
        fx
    }

    // ------------------------------------------------------------ bookkeeping

    fn index(&mut self, id: u64) {
        let Some(i) = self.st.instances.get(&id) else {
            return;
        };
        self.active.insert((i.journey, i.person.clone()), id);
        self.by_person.entry(i.person.clone()).or_default().push(id);
        if let Some(s) = i.step {
            self.at_step[i.journey as usize][s as usize] += 1;
        }
        if let Some(due) = i.at.due() {
            let p = self.compiled[i.journey as usize].priority;
            self.timers.insert((due, std::cmp::Reverse(p), id));
        }
    }

    fn unindex(&mut self, id: u64) {
        let Some(i) = self.st.instances.get(&id) else {
            return;
        };
        if let Some(s) = i.step {
            self.at_step[i.journey as usize][s as usize] -= 1;
        }
        if let Some(due) = i.at.due() {
            let p = self.compiled[i.journey as usize].priority;
            self.timers.remove(&(due, std::cmp::Reverse(p), id));
        }
    }

    /// Changes an instance's step and position, keeping the indexes true.
    fn place(&mut self, id: u64, step: Option<u16>, at: At, now: Millis) {
        self.unindex(id);
        let i = self.st.instances.get_mut(&id).expect("a live instance");
        if i.step != step {
            i.since = now;
        }
        i.step = step;
        i.at = at;
        let (j, p) = (
            i.journey as usize,
            self.compiled[i.journey as usize].priority,
        );
        if let Some(s) = step {
            self.at_step[j][s as usize] += 1;
        }
        if let Some(due) = self.st.instances[&id].at.due() {
            self.timers.insert((due, std::cmp::Reverse(p), id));
        }
    }

    fn remove(&mut self, id: u64) {
        self.unindex(id);
        if let Some(i) = self.st.instances.remove(&id) {
            self.active.remove(&(i.journey, i.person.clone()));
            if let Some(v) = self.by_person.get_mut(&i.person) {
                v.retain(|&x| x != id);
                if v.is_empty() {
                    self.by_person.remove(&i.person);
                }
            }
        }
    }

    fn record(
        &mut self,
        person: &str,
        name: &str,
        message_id: String,
        now: Millis,
        properties: Map<String, Value>,
        fx: &mut Vec<Effect>,
    ) {
        self.st.next_record += 1;
        let r = Record {
            seq: self.st.next_record,
            person: person.to_string(),
            name: name.to_string(),
            message_id,
            timestamp: now,
            properties,
        };
        self.st.outbox.insert(r.seq, r.clone());
        fx.push(Effect::Record(r));
    }

    fn stats(&mut self, j: u32) -> &mut JourneyStats {
        &mut self.st.journeys[j as usize].stats
    }

    // ------------------------------------------------------------ inputs

    fn set_status(&mut self, name: &str, status: Status, now: Millis) {
        let Some(&j) = self.by_name.get(name) else {
            return;
        };
        let old = self.st.journeys[j as usize].status;
        if old == Status::Archived || old == status {
            return;
        }
        self.st.journeys[j as usize].status = status;
        let ids: Vec<u64> = self
            .st
            .instances
            .iter()
            .filter(|(_, i)| i.journey == j)
            .map(|(&id, _)| id)
            .collect();
        match status {
            Status::Archived => {
                for id in ids {
                    self.remove(id);
                }
            }
            Status::Active => {
                // Parked persons enter their step again at the next tick.
                for id in ids {
                    if self.st.instances[&id].at == At::Parked {
                        let step = self.st.instances[&id].step;
                        self.place(id, step, At::Hold { due: now }, now);
                    }
                }
            }
            Status::Paused => {}
        }
    }

    fn observe(&mut self, o: Observed, now: Millis, fx: &mut Vec<Effect>) {
        let h = event_hash(&o.event);
        if self.st.seen.contains_key(&h) {
            return;
        }
        self.st.seen.insert(h, o.event.received_at);
        self.st.received_watermark = self.st.received_watermark.max(o.event.received_at);
        self.prune_seen();
        let e = &o.event;
        if e.event_type == EventType::Track
            && e.event
                .as_deref()
                .is_some_and(|n| self.policy.suppress_on.iter().any(|s| s == n))
        {
            let mut ids = o.facts.ids.clone();
            ids.push(o.person.clone());
            ids.extend(e.email.clone());
            ids.extend(
                o.facts
                    .traits
                    .get("email")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            );
            ids.truncate(IDS_MAX);
            let reason = e.event.clone().unwrap_or_default();
            for id in ids {
                self.st.suppressed.entry(id).or_insert(Suppression {
                    reason: reason.clone(),
                    since: now,
                });
            }
        }
        // Persons already in journeys: goals, waits, event branches.
        let ids: Vec<u64> = self.by_person.get(&o.person).cloned().unwrap_or_default();
        for id in ids {
            let Some(inst) = self.st.instances.get(&id) else {
                continue;
            };
            let j = inst.journey as usize;
            let journey = &self.compiled[j];
            if journey.goal.as_ref().is_some_and(|g| matches(g, e)) {
                self.convert(id, now, fx);
                continue;
            }
            let mut marks = Vec::new();
            for (si, s) in journey.steps.iter().enumerate() {
                if let StepKind::Branch {
                    condition: Condition::Event { matcher, .. },
                    ..
                } = &s.kind
                {
                    if matches(matcher, e) {
                        marks.push(si as u16);
                    }
                }
            }
            let waiting_match = match (inst.step, &inst.at) {
                (Some(s), At::WaitEvent { .. }) => match &journey.steps[s as usize].kind {
                    StepKind::WaitForEvent {
                        matcher, on_event, ..
                    } if matches(matcher, e) => Some(*on_event),
                    _ => None,
                },
                _ => None,
            };
            let inst = self.st.instances.get_mut(&id).expect("live");
            for s in marks {
                match inst.marks.iter_mut().find(|m| m.0 == s) {
                    Some(m) => m.1 = now,
                    None => inst.marks.push((s, now)),
                }
            }
            if let Some(next) = waiting_match {
                self.goto(id, next, now, &o.facts, fx);
            }
        }
        // Entries, in priority order.
        let mut order: Vec<u32> = (0..self.compiled.len() as u32).collect();
        order.sort_by_key(|&j| (std::cmp::Reverse(self.compiled[j as usize].priority), j));
        for j in order {
            if self.st.journeys[j as usize].status != Status::Active {
                continue;
            }
            let enter = match &self.compiled[j as usize].trigger {
                Trigger::Event(m) => {
                    matches(m, e)
                        && e.timestamp >= now - self.compiled[j as usize].trigger_max_age_ms
                }
                Trigger::Audience(a) => {
                    let a = a.clone();
                    self.audience_update(j, &a, &o, now)
                }
            };
            if enter {
                self.try_enter(j, &o.person, &o.facts, &e.properties, now, fx);
            }
        }
    }

    fn prune_seen(&mut self) {
        if self.st.seen.len() < 1024 {
            return;
        }
        let floor = self.st.received_watermark - SEEN_WINDOW_MS;
        if self.st.seen.len() > SEEN_MAX || self.st.seen.len().is_multiple_of(4096) {
            self.st.seen.retain(|_, &mut r| r >= floor);
            if self.st.seen.len() > SEEN_MAX {
                // Still too many within the window: forget the oldest half.
                let mut times: Vec<Millis> = self.st.seen.values().copied().collect();
                times.sort_unstable();
                let cut = times[times.len() / 2];
                self.st.seen.retain(|_, &mut r| r > cut);
            }
        }
    }

    /// Whether the person just became a member of an audience.
    fn audience_update(
        &mut self,
        j: u32,
        a: &journey::Audience,
        o: &Observed,
        now: Millis,
    ) -> bool {
        let e = &o.event;
        let n = a.did.len() + a.not_did.len();
        let hit: Vec<usize> = a
            .did
            .iter()
            .chain(&a.not_did)
            .enumerate()
            .filter(|(_, m)| matches(m, e))
            .map(|(i, _)| i)
            .collect();
        let map = self.st.audience.entry(j).or_default();
        if hit.is_empty() && !map.contains_key(&o.person) {
            return false;
        }
        let entry = map
            .entry(o.person.clone())
            .or_insert_with(|| (vec![None; n], false));
        for i in hit {
            entry.0[i] = Some(e.timestamp.min(now));
        }
        let floor = now - a.within_ms;
        let did = a
            .did
            .iter()
            .enumerate()
            .all(|(i, _)| entry.0[i].is_some_and(|t| t >= floor));
        let not = (0..a.not_did.len()).all(|k| entry.0[a.did.len() + k].is_none_or(|t| t < floor));
        let te = traits_event(&o.facts);
        let traits = a.traits.iter().all(|f| f.holds(&te));
        let member = did && not && traits;
        let was = std::mem::replace(&mut entry.1, member);
        member && !was
    }

    fn try_enter(
        &mut self,
        j: u32,
        person: &str,
        facts: &Facts,
        props: &Map<String, Value>,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let journey = &self.compiled[j as usize];
        let reentry = journey.reentry;
        if let Some(&id) = self.active.get(&(j, person.to_string())) {
            let watching = matches!(self.st.instances[&id].at, At::Watch { .. });
            if !(watching && reentry != Reentry::Once) {
                return;
            }
        }
        let log = self
            .st
            .entries
            .get(&j)
            .and_then(|m| m.get(person))
            .cloned()
            .unwrap_or_default();
        let allowed = match reentry {
            Reentry::Once => log.count == 0,
            Reentry::Always => true,
            Reentry::Every(ms) => log.count == 0 || now >= log.last + ms,
        };
        if !allowed {
            return;
        }
        let active_max = journey.active_max;
        let per_day = journey.entries_per_day_max;
        let active_now: u64 = self.at_step[j as usize].iter().sum::<u64>();
        let day = now.div_euclid(DAY_MS);
        let today = match self.st.day_entries.get(&j) {
            Some(&(d, n)) if d == day => n,
            _ => 0,
        };
        if active_max.is_some_and(|m| active_now >= m) || per_day.is_some_and(|m| today >= m) {
            self.stats(j).refused += 1;
            return;
        }
        if let Some(&old) = self.active.get(&(j, person.to_string())) {
            // A watcher making way for a new entry: that entry did not convert.
            self.remove(old);
        }
        self.st.day_entries.insert(j, (day, today + 1));
        let entry = log.count + 1;
        self.st.entries.entry(j).or_default().insert(
            person.to_string(),
            EntryLog {
                count: entry,
                last: now,
            },
        );
        let mut trigger = serde_json::to_string(props).unwrap_or_else(|_| "{}".into());
        if trigger.len() > TRIGGER_BYTES_MAX {
            trigger = "{}".into();
        }
        self.st.next_instance += 1;
        let id = self.st.next_instance;
        self.st.instances.insert(
            id,
            Instance {
                journey: j,
                person: person.to_string(),
                entry,
                entered: now,
                step: None,
                at: At::Parked,
                since: now,
                holdout: false,
                touched: false,
                trigger,
                marks: Vec::new(),
            },
        );
        self.active.insert((j, person.to_string()), id);
        self.by_person
            .entry(person.to_string())
            .or_default()
            .push(id);
        self.stats(j).entered += 1;
        let name = self.compiled[j as usize].name.clone();
        let mut p = Map::new();
        p.insert("journey".into(), json!(name));
        p.insert("entry".into(), json!(entry));
        let mid = format!(
            "tl-{}-entered",
            &key_id(&format!("{name}/{person}/{entry}"))[4..]
        );
        self.record(person, "Journey Entered", mid, now, p, fx);
        let first = (!self.compiled[j as usize].steps.is_empty()).then_some(0);
        self.goto(id, first, now, facts, fx);
    }

    fn convert(&mut self, id: u64, now: Millis, fx: &mut Vec<Effect>) {
        let i = self.st.instances[&id].clone();
        if let At::Retry { key, .. } = &i.at {
            // The send waiting for its retry is given up: the goal made it moot.
            if let Some(f) = self.st.in_flight.remove(key) {
                let j = i.journey as usize;
                if let Some(s) = i.step {
                    self.st.journeys[j].stats.steps[s as usize].failed += 1;
                }
                let fail = match i.step.map(|s| &self.compiled[j].steps[s as usize].kind) {
                    Some(StepKind::Action { action, .. }) => action.event_names().1,
                    _ => "Message Failed",
                };
                let mut p = Map::new();
                p.insert("journey".into(), json!(f.delivery.journey));
                p.insert("step".into(), json!(f.delivery.step));
                p.insert("idempotency_key".into(), json!(f.delivery.key));
                p.insert(
                    "error".into(),
                    json!("the person reached the goal before the retry"),
                );
                let mid = format!("tl-{}-failed", &f.delivery.id[4..]);
                self.record(&i.person, fail, mid, now, p, fx);
            }
        }
        let holdout = i.holdout;
        let st = self.stats(i.journey);
        st.converted += 1;
        if holdout {
            st.holdout_converted += 1;
        }
        match i.step {
            Some(s) => st.steps[s as usize].goal_exits += 1,
            None => st.goal_after_end += 1,
        }
        let name = self.compiled[i.journey as usize].name.clone();
        let mut p = Map::new();
        p.insert("journey".into(), json!(name));
        p.insert("entry".into(), json!(i.entry));
        p.insert(
            "group".into(),
            json!(if holdout { "holdout" } else { "treatment" }),
        );
        if let Some(s) = i.step {
            p.insert(
                "step".into(),
                json!(self.compiled[i.journey as usize].steps[s as usize].id),
            );
        }
        let mid = format!(
            "tl-{}-converted",
            &key_id(&format!("{name}/{}/{}", i.person, i.entry))[4..]
        );
        self.record(&i.person, "Journey Converted", mid, now, p, fx);
        self.remove(id);
    }

    fn tick(&mut self, max: usize, facts: Vec<(String, Facts)>, now: Millis, fx: &mut Vec<Effect>) {
        let facts: HashMap<String, Facts> = facts.into_iter().collect();
        let empty = Facts::default();
        for _ in 0..max {
            let Some(&t) = self.timers.iter().next() else {
                break;
            };
            if t.0 > now {
                break;
            }
            let id = t.2;
            let Some(inst) = self.st.instances.get(&id) else {
                self.timers.remove(&t);
                continue;
            };
            let f = facts.get(&inst.person).unwrap_or(&empty).clone();
            self.fire(id, now, &f, fx);
        }
    }

    fn fire(&mut self, id: u64, now: Millis, facts: &Facts, fx: &mut Vec<Effect>) {
        let inst = self.st.instances[&id].clone();
        let journey = &self.compiled[inst.journey as usize];
        match (&inst.at, inst.step) {
            (At::Wait { .. }, Some(s)) => {
                let next = match &journey.steps[s as usize].kind {
                    StepKind::Wait { next, .. } => *next,
                    _ => None,
                };
                self.goto(id, next, now, facts, fx);
            }
            (At::WaitEvent { .. }, Some(s)) => {
                let next = match &journey.steps[s as usize].kind {
                    StepKind::WaitForEvent { on_timeout, .. } => *on_timeout,
                    _ => None,
                };
                self.goto(id, next, now, facts, fx);
            }
            (At::Hold { .. }, _) => self.arrive(id, now, facts, fx),
            (At::Retry { key, .. }, _) => {
                let key = key.clone();
                let Some(f) = self.st.in_flight.get_mut(&key) else {
                    // Lost track of the send: move on rather than wait forever.
                    let next = self.next_of(&inst);
                    self.goto(id, next, now, facts, fx);
                    return;
                };
                f.attempt += 1;
                f.delivery.attempt = f.attempt;
                let d = f.delivery.clone();
                self.place(id, inst.step, At::Deliver { key }, now);
                fx.push(Effect::Deliver(d));
            }
            (At::Watch { .. }, _) => {
                self.remove(id);
            }
            _ => {
                self.remove(id);
            }
        }
    }

    fn next_of(&self, inst: &Instance) -> Next {
        match inst
            .step
            .map(|s| &self.compiled[inst.journey as usize].steps[s as usize].kind)
        {
            Some(StepKind::Action { next, .. }) => *next,
            _ => None,
        }
    }

    /// Moves to a step and runs it until the person has to wait.
    fn goto(&mut self, id: u64, next: Next, now: Millis, facts: &Facts, fx: &mut Vec<Effect>) {
        let j = self.st.instances[&id].journey;
        if let Some(s) = next {
            self.stats(j).steps[s].reached += 1;
        }
        self.place(id, next.map(|s| s as u16), At::Parked, now);
        self.arrive(id, now, facts, fx);
    }

    fn arrive(&mut self, id: u64, now: Millis, facts: &Facts, fx: &mut Vec<Effect>) {
        let inst = self.st.instances[&id].clone();
        let j = inst.journey as usize;
        let Some(s) = inst.step else {
            // Past the last step.
            self.st.journeys[j].stats.completed += 1;
            let goal = self.compiled[j].goal.is_some();
            let due = inst.entered + self.compiled[j].goal_within_ms;
            if goal && due > now {
                self.place(id, None, At::Watch { due }, now);
            } else {
                self.remove(id);
            }
            return;
        };
        if self.st.journeys[j].status == Status::Paused {
            self.place(id, Some(s), At::Parked, now);
            return;
        }
        let step = self.compiled[j].steps[s as usize].clone();
        match &step.kind {
            StepKind::Wait { ms, .. } => self.place(id, Some(s), At::Wait { due: now + ms }, now),
            StepKind::WaitForEvent { timeout_ms, .. } => self.place(
                id,
                Some(s),
                At::WaitEvent {
                    due: now + timeout_ms,
                },
                now,
            ),
            StepKind::Branch {
                condition,
                then,
                otherwise,
            } => {
                let yes = match condition {
                    Condition::Traits(fs) => {
                        let te = traits_event(facts);
                        fs.iter().all(|f| f.holds(&te))
                    }
                    Condition::Event { within_ms, .. } => inst
                        .marks
                        .iter()
                        .find(|m| m.0 == s)
                        .is_some_and(|m| within_ms.is_none_or(|w| m.1 >= now - w)),
                };
                self.goto(id, if yes { *then } else { *otherwise }, now, facts, fx);
            }
            StepKind::Split { variants } => {
                let name = &self.compiled[j].name;
                let seed = format!("split/{name}/{}/{}/{}", inst.person, inst.entry, step.id);
                let weights: Vec<u32> = variants.iter().map(|v| v.weight).collect();
                let v = &variants[pick(&weights, &seed)];
                let next = v.next;
                if v.holdout {
                    self.st.instances.get_mut(&id).expect("live").holdout = true;
                    self.st.journeys[j].stats.holdout_entered += 1;
                }
                let vname = v.name.clone();
                let st = &mut self.st.journeys[j].stats.steps[s as usize];
                *st.variants.entry(vname).or_default() += 1;
                self.goto(id, next, now, facts, fx);
            }
            StepKind::Exit => {
                let goal = self.compiled[j].goal.is_some();
                let due = inst.entered + self.compiled[j].goal_within_ms;
                self.st.journeys[j].stats.completed += 1;
                if goal && due > now {
                    self.place(id, None, At::Watch { due }, now);
                } else {
                    self.remove(id);
                }
            }
            StepKind::Action { action, next } => {
                self.send(id, &inst, s, action, *next, now, facts, fx)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        id: u64,
        inst: &Instance,
        s: u16,
        action: &journey::Action,
        next: Next,
        now: Millis,
        facts: &Facts,
        fx: &mut Vec<Effect>,
    ) {
        let j = inst.journey as usize;
        let name = self.compiled[j].name.clone();
        let step_id = self.compiled[j].steps[s as usize].id.clone();
        let key = send_key(&name, &inst.person, &step_id, inst.entry);
        let mut props = Map::new();
        props.insert("journey".into(), json!(name));
        props.insert("step".into(), json!(step_id));
        props.insert("entry".into(), json!(inst.entry));
        props.insert("channel".into(), json!(action.channel));
        props.insert("idempotency_key".into(), json!(key));
        // Suppression: any id of the person, or the address the message would go to.
        let suppressed = std::iter::once(inst.person.as_str())
            .chain(facts.ids.iter().map(String::as_str))
            .chain(facts.traits.get("email").and_then(Value::as_str))
            .find_map(|i| self.st.suppressed.get(i).map(|s| s.reason.clone()));
        if let Some(reason) = suppressed {
            self.st.journeys[j].stats.steps[s as usize].suppressed += 1;
            props.insert("reason".into(), json!(reason));
            let mid = format!("tl-{}-suppressed", &key_id(&key)[4..]);
            self.record(&inst.person, "Message Suppressed", mid, now, props, fx);
            self.goto(id, next, now, facts, fx);
            return;
        }
        if action.quiet_hours {
            if let Some((window, default_tz)) = &self.policy.quiet {
                let tz = facts
                    .traits
                    .get("timezone")
                    .and_then(Value::as_str)
                    .and_then(crate::quiet::parse_tz)
                    .unwrap_or(*default_tz);
                let open = window.next_allowed(now, tz);
                if open > now {
                    if !matches!(inst.at, At::Hold { .. }) || inst.step != Some(s) {
                        self.st.journeys[j].stats.steps[s as usize].quiet_delayed += 1;
                    }
                    self.place(id, Some(s), At::Hold { due: open }, now);
                    return;
                }
            }
        }
        // Frequency caps over every journey.
        let floor_all = now - self.policy.history_ms;
        let hist = self.st.history.entry(inst.person.clone()).or_default();
        hist.retain(|h| h.1 > floor_all);
        let hit = self.policy.caps.iter().find(|(ch, count, per)| {
            *ch == action.channel
                && hist
                    .iter()
                    .filter(|h| h.0 == action.channel && h.1 > now - per)
                    .count()
                    >= *count as usize
        });
        if let Some((ch, count, per)) = hit.cloned() {
            if hist.is_empty() {
                self.st.history.remove(&inst.person);
            }
            self.st.journeys[j].stats.steps[s as usize].capped += 1;
            props.insert(
                "cap".into(),
                json!(format!("{count} per {}", human_ms(per))),
            );
            props.insert("cap_channel".into(), json!(ch));
            let mid = format!("tl-{}-capped", &key_id(&key)[4..]);
            self.record(&inst.person, "Message Capped", mid, now, props, fx);
            self.goto(id, next, now, facts, fx);
            return;
        }
        if self.policy.history_ms > 0 {
            hist.push((action.channel.clone(), now));
        } else if hist.is_empty() {
            self.st.history.remove(&inst.person);
        }
        let names = action.variant_names();
        let vi = if names.len() > 1 {
            pick(&action.variant_weights(), &format!("variant/{key}"))
        } else {
            0
        };
        let variant = names[vi].to_string();
        let st = &mut self.st.journeys[j].stats.steps[s as usize];
        st.sends += 1;
        *st.variants.entry(variant.clone()).or_default() += 1;
        let delivery = Delivery {
            id: key_id(&key),
            key: key.clone(),
            attempt: 1,
            journey: name,
            step: step_id,
            variant,
            entry: inst.entry,
            person: inst.person.clone(),
            channel: action.channel.clone(),
            facts: facts.clone(),
            trigger: serde_json::from_str(&inst.trigger).unwrap_or(json!({})),
            at: now,
        };
        self.st.in_flight.insert(
            key.clone(),
            InFlight {
                instance: id,
                attempt: 1,
                delivery: delivery.clone(),
            },
        );
        self.place(id, Some(s), At::Deliver { key }, now);
        fx.push(Effect::Deliver(delivery));
    }

    fn delivered(
        &mut self,
        key: &str,
        attempt: u32,
        outcome: Outcome,
        now: Millis,
        fx: &mut Vec<Effect>,
    ) {
        let Some(f) = self.st.in_flight.get(key) else {
            return;
        };
        if f.attempt != attempt {
            return;
        }
        let f = f.clone();
        let inst = self.st.instances.get(&f.instance).cloned();
        let journey_idx = self.by_name.get(&f.delivery.journey).copied();
        let step_idx =
            journey_idx.and_then(|j| self.compiled[j as usize].step_index(&f.delivery.step));
        let action = journey_idx.zip(step_idx).and_then(|(j, s)| {
            match &self.compiled[j as usize].steps[s].kind {
                StepKind::Action { action, next } => Some((action.clone(), *next)),
                _ => None,
            }
        });
        let (ok_name, fail_name) = action
            .as_ref()
            .map_or(("Message Sent", "Message Failed"), |a| a.0.event_names());
        let mut props = Map::new();
        props.insert("journey".into(), json!(f.delivery.journey));
        props.insert("step".into(), json!(f.delivery.step));
        props.insert("variant".into(), json!(f.delivery.variant));
        props.insert("entry".into(), json!(f.delivery.entry));
        props.insert("channel".into(), json!(f.delivery.channel));
        props.insert("idempotency_key".into(), json!(f.delivery.key));
        props.insert("attempts".into(), json!(attempt));
        let at = journey_idx.zip(step_idx);
        match outcome {
            Outcome::Failed {
                retryable: true, ..
            } if (attempt as usize) <= self.policy.retry_ms.len()
                && inst
                    .as_ref()
                    .is_some_and(|i| matches!(&i.at, At::Deliver { key: k } if k == key)) =>
            {
                let delay = self.policy.retry_ms[attempt as usize - 1];
                if let Some(st) = self.step_stats(at) {
                    st.retries += 1;
                }
                let step = inst.as_ref().and_then(|i| i.step);
                self.place(
                    f.instance,
                    step,
                    At::Retry {
                        due: now + delay,
                        key: key.to_string(),
                    },
                    now,
                );
            }
            Outcome::Failed { error, .. } => {
                self.st.in_flight.remove(key);
                if let Some(st) = self.step_stats(at) {
                    st.failed += 1;
                }
                props.insert("error".into(), json!(error));
                let mid = format!("tl-{}-failed", &f.delivery.id[4..]);
                self.record(&f.delivery.person, fail_name, mid, now, props, fx);
                self.after_send(
                    f.instance,
                    key,
                    action.and_then(|a| a.1),
                    now,
                    &f.delivery.facts,
                    fx,
                );
            }
            Outcome::Delivered { detail } => {
                self.st.in_flight.remove(key);
                if let Some(st) = self.step_stats(at) {
                    st.delivered += 1;
                }
                if !detail.is_empty() {
                    props.insert("detail".into(), json!(detail));
                }
                if let Some(i) = self.st.instances.get_mut(&f.instance) {
                    i.touched = true;
                }
                let mid = format!("tl-{}-sent", &f.delivery.id[4..]);
                self.record(&f.delivery.person, ok_name, mid, now, props, fx);
                self.after_send(
                    f.instance,
                    key,
                    action.and_then(|a| a.1),
                    now,
                    &f.delivery.facts,
                    fx,
                );
            }
        }
    }

    fn step_stats(&mut self, at: Option<(u32, usize)>) -> Option<&mut StepStats> {
        at.map(|(j, s)| &mut self.st.journeys[j as usize].stats.steps[s])
    }

    fn after_send(
        &mut self,
        id: u64,
        key: &str,
        next: Next,
        now: Millis,
        facts: &Facts,
        fx: &mut Vec<Effect>,
    ) {
        let Some(i) = self.st.instances.get(&id) else {
            return;
        };
        if !matches!(&i.at, At::Deliver { key: k } if k == key) {
            return;
        }
        self.goto(id, next, now, facts, fx);
    }

    /// Everything the machine holds, for checks: sends in flight by key.
    pub fn in_flight_keys(&self) -> Vec<&str> {
        self.st.in_flight.keys().map(String::as_str).collect()
    }

    /// Whether a person is suppressed by any of these ids.
    pub fn is_suppressed<'a>(&self, mut ids: impl Iterator<Item = &'a str>) -> bool {
        ids.any(|i| self.st.suppressed.contains_key(i))
    }

    /// The send times of a person on a channel still remembered for caps.
    pub fn history_of(&self, person: &str, channel: &str) -> Vec<Millis> {
        self.st
            .history
            .get(person)
            .map(|h| h.iter().filter(|x| x.0 == channel).map(|x| x.1).collect())
            .unwrap_or_default()
    }
}

fn human_ms(ms: Millis) -> String {
    for (unit, n) in [("d", DAY_MS), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms % n == 0 {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests;
