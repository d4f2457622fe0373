//! A deterministic simulation of the orchestrator, in the spirit of TigerBeetle's VOPR:
//! one seed drives persons' events, the clock, delivery outcomes (successes, failures,
//! answers lost after the receiver acted), snapshots and crashes at any point of a commit.
//! After every crash the machine is rebuilt from the snapshot and the journal, and the
//! invariants are checked:
//!
//! - replay is exact: the recovered state equals the state before the crash;
//! - no idempotency key is acted on twice by the receiver (it dedupes by `id`), and raw
//!   re-deliveries happen only to keys that were in flight at a crash or whose answer was
//!   lost;
//! - no person gets more sends per channel than the caps allow in any window, none in
//!   their quiet hours, none after being suppressed;
//! - every due send happens: after the last crash, with the receiver answering, every
//!   send step reached ends delivered, failed, capped or suppressed, nothing stays in
//!   flight and no record stays unacknowledged.
//!
//! A failing seed prints itself; `SIM_SEED=n cargo test --test simulation` replays it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::json;
use throughline_model::{Event, Millis};
use throughline_orchestrate::machine::{Effect, Facts, Input, Machine, Observed, Outcome, State};
use throughline_orchestrate::policy::{Cap, Policy, QuietHours};
use throughline_orchestrate::quiet::{parse_time, parse_tz, Window};
use throughline_orchestrate::{Driver, Entry, Journal};

const H: Millis = 3_600_000;
/// 2026-03-06T00:00:00Z: the runs cross the US switch to daylight saving time (March 8).
const T0: Millis = 1_772_755_200_000;
const TZS: [&str; 4] = ["America/New_York", "Europe/Paris", "Asia/Tokyo", "UTC"];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Entries survive a crash once committed; appended but uncommitted ones are lost.
#[derive(Default)]
struct SimJournal {
    durable: Vec<Entry>,
    buffered: Vec<Entry>,
    /// Fail (crash) at the next commit.
    crash_at_commit: bool,
}

impl Journal for SimJournal {
    fn append(&mut self, e: &Entry) -> Result<(), String> {
        self.buffered.push(e.clone());
        Ok(())
    }
    fn commit(&mut self) -> Result<(), String> {
        if std::mem::take(&mut self.crash_at_commit) {
            // Part of the group may have reached the disk before the crash.
            let keep = self.buffered.len() / 2;
            self.durable.extend(self.buffered.drain(..).take(keep));
            return Err("crashed during commit".into());
        }
        self.durable.append(&mut self.buffered);
        Ok(())
    }
}

const DRIP: &str = r#"
name = "drip"
priority = 1
reentry = "always"
trigger = { event = "Signed Up" }
goal = { event = "Order Completed", within = "20d" }
[[steps]]
id = "hello"
type = "email"
subject = "Hi {{ traits.first_name }}"
text = "Hello"
variants = [{ name = "a" }, { name = "b" }]
[[steps]]
id = "rest"
type = "wait"
duration = "1d"
[[steps]]
id = "look"
type = "wait_for_event"
event = "Cart Viewed"
timeout = "2d"
on_event = "nudge"
on_timeout = "split"
[[steps]]
id = "split"
type = "split"
variants = [{ name = "holdout", weight = 1, holdout = true, next = "end" }, { name = "go", weight = 3, next = "nudge" }]
[[steps]]
id = "nudge"
type = "webhook"
url = "https://hooks.example/nudge"
channel = "sms"
[[steps]]
id = "last"
type = "email"
subject = "Last call"
text = "Bye"
"#;

const PROMO: &str = r#"
name = "promo"
priority = 9
reentry = "3d"
trigger = { event = "Cart Viewed" }
[[steps]]
id = "offer"
type = "email"
subject = "A coupon"
text = "10% off"
"#;

const WIN_BACK: &str = r#"
name = "winback"
priority = 5
reentry = "once"
trigger = { event = "Signed Up" }
[[steps]]
id = "wait"
type = "wait"
duration = "5h"
[[steps]]
id = "mail"
type = "email"
subject = "Miss us?"
text = "Come back"
"#;

fn policy() -> Policy {
    Policy {
        caps: vec![
            Cap {
                channel: "email".into(),
                count: 1,
                per: "1d".into(),
            },
            Cap {
                channel: "email".into(),
                count: 3,
                per: "7d".into(),
            },
            Cap {
                channel: "sms".into(),
                count: 1,
                per: "2d".into(),
            },
        ],
        quiet_hours: Some(QuietHours {
            start: "21:00".into(),
            end: "08:00".into(),
            default_timezone: "UTC".into(),
        }),
        ..Policy::default()
    }
}

struct World {
    rng: Rng,
    now: Millis,
    persons: Vec<Facts>,
    driver: Driver<SimJournal>,
    snapshot: Option<(u64, State)>,
    /// Deliveries the sender holds: dispatched, no outcome reported yet.
    wire: Vec<throughline_orchestrate::Delivery>,
    /// Records not yet acknowledged by the "store".
    unacked: Vec<u64>,
    /// Receiver: id -> raw deliveries; and what it acted on.
    raw: HashMap<String, u32>,
    acted: BTreeMap<String, (String, String, Millis)>,
    /// Keys whose re-delivery is excused: in flight at a crash, or their answer was lost.
    excused: HashSet<String>,
    /// First dispatch time per key, with person and channel.
    dispatched: HashMap<String, (String, String, Millis)>,
    suppressed_at: HashMap<String, Millis>,
    event_seq: u64,
    crashes: u32,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let persons = (0..40)
            .map(|n| {
                let mut f = Facts {
                    ids: vec![format!("p{n}"), format!("p{n}@example.com")],
                    ..Default::default()
                };
                f.traits
                    .insert("email".into(), json!(format!("p{n}@example.com")));
                f.traits.insert("first_name".into(), json!(format!("P{n}")));
                f.traits.insert(
                    "timezone".into(),
                    json!(TZS[rng.below(TZS.len() as u64) as usize]),
                );
                f
            })
            .collect();
        let mut w = World {
            rng,
            now: T0,
            persons,
            driver: Driver::new(Machine::new(), SimJournal::default(), 0),
            snapshot: None,
            wire: Vec::new(),
            unacked: Vec::new(),
            raw: HashMap::new(),
            acted: BTreeMap::new(),
            excused: HashSet::new(),
            dispatched: HashMap::new(),
            suppressed_at: HashMap::new(),
            event_seq: 0,
            crashes: 0,
        };
        let mut setup = vec![Input::SetPolicy {
            policy: Box::new(policy()),
        }];
        for j in [DRIP, PROMO, WIN_BACK] {
            setup.push(Input::Create {
                file: Box::new(throughline_orchestrate::parse_file(j).unwrap()),
            });
        }
        w.submit(setup);
        w
    }

    fn person_of(&self, key: &str) -> usize {
        key.split('/').nth(1).unwrap()[1..].parse().unwrap()
    }

    /// Journal, step, carry out effects; a crash injected at commit restarts the world.
    fn submit(&mut self, inputs: Vec<Input>) {
        match self.driver.submit(inputs, self.now) {
            Ok(fx) => self.carry_out(fx),
            Err(_) => self.restart(false),
        }
    }

    fn carry_out(&mut self, fx: Vec<Effect>) {
        for e in fx {
            match e {
                Effect::Deliver(d) => {
                    let person = self.person_of(&d.key);
                    self.dispatched.entry(d.key.clone()).or_insert((
                        format!("p{person}"),
                        d.channel.clone(),
                        self.now,
                    ));
                    self.wire.push(d);
                }
                Effect::Record(r) => self.unacked.push(r.seq),
            }
        }
    }

    fn facts_for(&self, persons: Vec<String>) -> Vec<(String, Facts)> {
        persons
            .into_iter()
            .map(|p| {
                let n: usize = p[1..].parse().unwrap();
                (p, self.persons[n].clone())
            })
            .collect()
    }

    fn event(&mut self, person: usize, name: &str) {
        self.event_seq += 1;
        let mut e: Event = serde_json::from_value(json!({
            "message_id": format!("e{}", self.event_seq), "type": "track", "event": name,
            "user_id": format!("p{person}"), "timestamp": self.now, "received_at": self.now}))
        .unwrap();
        // Now and then the same event arrives twice (an SDK retry).
        let dup = self.rng.chance(5);
        if name == "Unsubscribed" {
            self.suppressed_at
                .entry(format!("p{person}"))
                .or_insert(self.now);
        }
        e.properties.insert("n".into(), json!(self.event_seq));
        let input = Input::Event {
            observed: Box::new(Observed {
                person: format!("p{person}"),
                facts: self.persons[person].clone(),
                event: e,
            }),
        };
        if dup {
            self.submit(vec![input.clone(), input]);
        } else {
            self.submit(vec![input]);
        }
    }

    fn tick_all(&mut self) {
        for _ in 0..1000 {
            let due = self.driver.machine.due_persons(self.now, 25);
            if due.is_empty() {
                return;
            }
            let facts = self.facts_for(due);
            self.submit(vec![Input::Tick { max: 25, facts }]);
        }
        panic!("timers keep firing at one instant");
    }

    /// The receiver answers some deliveries.
    fn answer(&mut self, all: bool) {
        let mut results = Vec::new();
        let mut keep = Vec::new();
        for d in std::mem::take(&mut self.wire) {
            if !all && self.rng.chance(40) {
                keep.push(d);
                continue;
            }
            let roll = if all { 0 } else { self.rng.below(100) };
            let reached = roll < 85;
            if reached {
                *self.raw.entry(d.id.clone()).or_default() += 1;
                let person = self.person_of(&d.key);
                self.acted.entry(d.id.clone()).or_insert((
                    format!("p{person}"),
                    d.channel.clone(),
                    self.now,
                ));
            }
            let outcome = if roll < 75 {
                Outcome::Delivered {
                    detail: "202".into(),
                }
            } else if roll < 85 {
                // Acted on, but the answer was lost: the sender sees a timeout.
                self.excused.insert(d.id.clone());
                Outcome::Failed {
                    retryable: true,
                    error: "timeout".into(),
                }
            } else if roll < 97 {
                Outcome::Failed {
                    retryable: true,
                    error: "503".into(),
                }
            } else {
                Outcome::Failed {
                    retryable: false,
                    error: "410".into(),
                }
            };
            results.push(Input::Delivered {
                key: d.key,
                attempt: d.attempt,
                outcome,
            });
        }
        self.wire = keep;
        if !results.is_empty() {
            // A crash before these outcomes are journaled leaves the sends in flight: the
            // crash window, re-delivered after the restart.
            let ids: Vec<String> = results
                .iter()
                .filter_map(|r| match r {
                    Input::Delivered { key, .. } => Some(format!(
                        "msg_{:032x}",
                        xxhash_rust::xxh3::xxh3_128(key.as_bytes())
                    )),
                    _ => None,
                })
                .collect();
            let crashes = self.crashes;
            self.submit(results);
            if self.crashes != crashes {
                self.excused.extend(ids);
            }
        }
        if !self.unacked.is_empty() && (all || self.rng.chance(70)) {
            let upto = *self.unacked.iter().max().unwrap();
            self.unacked.clear();
            self.submit(vec![Input::Recorded { upto }]);
        }
    }

    fn take_snapshot(&mut self) {
        let seq = self.driver.seq;
        self.snapshot = Some((seq, self.driver.machine.state().clone()));
        self.driver.journal.durable.retain(|e| e.seq > seq);
    }

    /// Kills the process: what was on the wire may or may not have reached the receiver,
    /// nothing uncommitted survives; then recovers and hands out what is owed.
    fn restart(&mut self, clean_commit: bool) {
        self.crashes += 1;
        let before = self.driver.machine.state().clone();
        let durable_seq = self.driver.journal.durable.last().map_or(0, |e| e.seq);
        for d in std::mem::take(&mut self.wire) {
            self.excused.insert(d.id.clone());
            if self.rng.chance(50) {
                *self.raw.entry(d.id.clone()).or_default() += 1;
                let person = self.person_of(&d.key);
                self.acted.entry(d.id.clone()).or_insert((
                    format!("p{person}"),
                    d.channel.clone(),
                    self.now,
                ));
            }
        }
        self.unacked.clear();
        let journal = SimJournal {
            durable: std::mem::take(&mut self.driver.journal.durable),
            ..Default::default()
        };
        let entries = journal.durable.clone();
        let driver = Driver::recover(self.snapshot.clone(), entries, journal).expect("recovery");
        if clean_commit || durable_seq == self.driver.seq {
            assert_eq!(
                driver.machine.state(),
                &before,
                "replay must rebuild the state exactly"
            );
        }
        self.driver = driver;
        let owed = self.driver.machine.pending();
        self.carry_out(owed);
    }

    fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            match self.rng.below(100) {
                0..=29 => {
                    let p = self.rng.below(self.persons.len() as u64) as usize;
                    let name = match self.rng.below(20) {
                        0..=8 => "Signed Up",
                        9..=14 => "Cart Viewed",
                        15..=17 => "Order Completed",
                        18 => "Unsubscribed",
                        _ => "Page Viewed",
                    };
                    self.event(p, name);
                }
                30..=54 => {
                    self.now += self.rng.below(7 * H as u64) as Millis;
                    self.tick_all();
                }
                55..=89 => self.answer(false),
                90..=93 => self.take_snapshot(),
                94..=96 => self.restart(true),
                _ => {
                    self.driver.journal.crash_at_commit = true;
                    self.now += H;
                    self.tick_all();
                    self.answer(false);
                    self.driver.journal.crash_at_commit = false;
                }
            }
        }
    }

    /// No more crashes: answer everything until the journeys are done.
    fn drain(&mut self) {
        for _ in 0..400 {
            self.answer(true);
            self.now += 6 * H;
            self.tick_all();
            let m = &self.driver.machine;
            if m.instance_count() == 0
                && m.in_flight_count() == 0
                && self.wire.is_empty()
                && m.outbox_len() == 0
            {
                return;
            }
        }
        panic!(
            "journeys did not finish: {} persons, {} in flight",
            self.driver.machine.instance_count(),
            self.driver.machine.in_flight_count()
        );
    }

    fn check(&self, seed: u64) {
        // Acted on once each; raw repeats only where excused.
        for (id, &n) in &self.raw {
            assert!(
                n == 1 || self.excused.contains(id),
                "seed {seed}: {id} delivered {n} times without a crash or lost answer"
            );
        }
        // Caps over the times the machine decided to send.
        let mut by: HashMap<(String, String), Vec<Millis>> = HashMap::new();
        for (person, channel, t) in self.dispatched.values() {
            by.entry((person.clone(), channel.clone()))
                .or_default()
                .push(*t);
        }
        for ((person, channel), mut times) in by {
            times.sort_unstable();
            for cap in &policy().caps {
                if cap.channel != channel {
                    continue;
                }
                let per = throughline_query::parse_duration(&cap.per).unwrap();
                for (i, &t) in times.iter().enumerate() {
                    let within = times[..=i].iter().filter(|&&s| s > t - per).count();
                    assert!(
                        within <= cap.count as usize,
                        "seed {seed}: {person} got {within} {channel} within {} at {t}",
                        cap.per
                    );
                }
            }
            // Quiet hours in the person's timezone; nothing after suppression.
            let n: usize = person[1..].parse().unwrap();
            let tz = parse_tz(self.persons[n].traits["timezone"].as_str().unwrap()).unwrap();
            let w = Window {
                start: parse_time("21:00").unwrap(),
                end: parse_time("08:00").unwrap(),
            };
            for &t in &times {
                assert!(
                    !w.contains(t, tz),
                    "seed {seed}: {person} ({tz}) got {channel} at {t}, in quiet hours"
                );
                if let Some(&s) = self.suppressed_at.get(&person) {
                    assert!(
                        t <= s,
                        "seed {seed}: {person} got {channel} at {t} after unsubscribing at {s}"
                    );
                }
            }
        }
        // Every due send happened: each action step's arrivals are accounted for.
        let m = &self.driver.machine;
        let mut delivered = 0;
        for (js, j) in m.journeys() {
            for (si, s) in j.steps.iter().enumerate() {
                let st = &js.stats.steps[si];
                if let throughline_orchestrate::journey::StepKind::Action { .. } = s.kind {
                    assert_eq!(
                        st.sends,
                        st.delivered + st.failed,
                        "seed {seed}: {}/{} sends unresolved",
                        j.name,
                        s.id
                    );
                    // Arrivals end in a send, a cap or a suppression, or the person reached
                    // the goal while the send waited for quiet hours to end.
                    let ended = st.sends + st.capped + st.suppressed;
                    assert!(
                        st.reached >= ended && st.reached - ended <= st.goal_exits,
                        "seed {seed}: {}/{} arrivals unaccounted: {st:?}",
                        j.name,
                        s.id
                    );
                    delivered += st.delivered;
                }
            }
        }
        // What the machine counts as delivered, the receiver acted on (plus those whose
        // answer was lost and whose retries then failed for good).
        assert!(
            self.acted.len() as u64 >= delivered,
            "seed {seed}: receiver acted on {} < {delivered} delivered",
            self.acted.len()
        );
        assert!(m.pending().is_empty(), "seed {seed}: effects still owed");
    }
}

fn simulate(seed: u64, steps: usize) -> (u32, usize, u64) {
    let mut w = World::new(seed);
    w.run(steps);
    w.drain();
    w.check(seed);
    let raw_repeats = w.raw.values().map(|&n| n as u64 - 1).sum();
    (w.crashes, w.acted.len(), raw_repeats)
}

#[test]
fn random_runs_with_crashes_keep_every_invariant() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => (1..=40).collect(),
    };
    let (mut crashes, mut acted, mut repeats) = (0, 0, 0);
    for seed in seeds {
        let r = std::panic::catch_unwind(|| simulate(seed, 1500));
        match r {
            Ok((c, a, rr)) => {
                crashes += c;
                acted += a;
                repeats += rr;
            }
            Err(e) => {
                eprintln!("simulation failed; replay with SIM_SEED={seed}");
                std::panic::resume_unwind(e);
            }
        }
    }
    // The runs did exercise what they check.
    assert!(
        crashes > 50 && acted > 200 && repeats > 0,
        "crashes {crashes}, acted {acted}, raw repeats {repeats}"
    );
    eprintln!("simulated {crashes} crashes, {acted} keys acted on, {repeats} raw re-deliveries");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = {
        let mut w = World::new(7);
        w.run(800);
        serde_json::to_string(w.driver.machine.state()).unwrap()
    };
    let b = {
        let mut w = World::new(7);
        w.run(800);
        serde_json::to_string(w.driver.machine.state()).unwrap()
    };
    assert_eq!(a.len(), b.len());
    let sa: serde_json::Value = serde_json::from_str(&a).unwrap();
    let sb: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(sa, sb);
}
