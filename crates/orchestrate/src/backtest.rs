//! Backtest: run a journey over stored history before launching it. The history's events
//! go through the same machine in time order, the clock following them; every send is
//! taken as delivered at once, caps and quiet hours and suppression decide as they would
//! have. The answer: how many persons would have entered, how many sends the caps (and
//! suppression, and quiet hours) would have stopped or held, and the goal's conversion
//! rate of the persons it would have touched against those it would not have (held out,
//! capped, suppressed, or converted before the first send).
//!
//! Pure: the caller reads the history (`throughline_query`) and passes it in.

use std::collections::HashMap;

use serde::Serialize;
use throughline_model::{format_ms, Millis};

use crate::journey::JourneyFile;
use crate::machine::{Effect, Facts, Input, Machine, Observed, Outcome};
use crate::policy::Policy;
use crate::OrchestrateError;

/// Persons due per simulated tick.
const TICK_MAX: usize = 10_000;

/// One history item, in time order: an event of a person, or new traits of a person.
pub enum Item {
    Event(Box<Observed>),
    Traits {
        person: String,
        at: Millis,
        facts: Facts,
    },
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Group {
    pub persons: u64,
    pub converted: u64,
    pub conversion_rate: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct StepReport {
    pub id: String,
    pub reached: u64,
    pub sends: u64,
    pub capped: u64,
    pub suppressed: u64,
    pub quiet_delayed: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Report {
    pub journey: String,
    pub from: String,
    pub to: String,
    /// Entries (a person entering twice counts twice), and distinct persons.
    pub entries: u64,
    pub persons: u64,
    pub refused_by_limits: u64,
    pub sends: u64,
    pub capped: u64,
    pub suppressed: u64,
    pub quiet_delayed: u64,
    pub steps: Vec<StepReport>,
    /// Entries with at least one send, and the others; converted means the goal happened
    /// within the journey's goal window (and before `to`).
    pub touched: Group,
    pub not_touched: Group,
    pub holdout: Group,
    pub conversion_lift: Option<f64>,
    pub goal: Option<String>,
    pub events_read: u64,
}

/// Runs `file` over `history` (sorted by time) from `from` to `to`.
pub fn run(
    file: &JourneyFile,
    policy: &Policy,
    suppressed: Vec<String>,
    history: impl IntoIterator<Item = Item>,
    from: Millis,
    to: Millis,
) -> Result<Report, OrchestrateError> {
    let journey = crate::journey::compile(file).map_err(OrchestrateError::Invalid)?;
    let mut m = Machine::new();
    let mut effects = Vec::new();
    m.step(
        Input::SetPolicy {
            policy: Box::new(policy.clone()),
        },
        from,
    );
    if !suppressed.is_empty() {
        m.step(
            Input::Suppress {
                ids: suppressed,
                reason: "suppression list".into(),
            },
            from,
        );
    }
    // Backtests see the whole history: no event is too old for its own moment.
    let mut file = file.clone();
    file.trigger.max_age = Some("1d".into());
    m.step(
        Input::Create {
            file: Box::new(file),
        },
        from,
    );
    let mut facts: HashMap<String, Facts> = HashMap::new();
    let mut events_read = 0u64;
    // (person, entry) -> (touched, converted, holdout)
    let mut entries: HashMap<(String, u64), (bool, bool, bool)> = HashMap::new();
    let mut persons = std::collections::HashSet::new();

    let settle = |m: &mut Machine, now: Millis, fx: Vec<Effect>, effects: &mut Vec<Effect>| {
        // Deliveries succeed at once; their outcomes may cause more effects.
        let mut queue = fx;
        while let Some(e) = queue.pop() {
            if let Effect::Deliver(d) = &e {
                let more = m.step(
                    Input::Delivered {
                        key: d.key.clone(),
                        attempt: d.attempt,
                        outcome: Outcome::Delivered {
                            detail: String::new(),
                        },
                    },
                    now,
                );
                queue.extend(more);
            }
            effects.push(e);
        }
    };
    let tick_to =
        |m: &mut Machine, t: Millis, facts: &HashMap<String, Facts>, effects: &mut Vec<Effect>| {
            while let Some(due) = m.next_due() {
                if due > t {
                    break;
                }
                let now = due;
                let persons = m.due_persons(now, TICK_MAX);
                let f = persons
                    .into_iter()
                    .map(|p| {
                        let x = facts.get(&p).cloned().unwrap_or_default();
                        (p, x)
                    })
                    .collect();
                let fx = m.step(
                    Input::Tick {
                        max: TICK_MAX as u32,
                        facts: f,
                    },
                    now,
                );
                settle(m, now, fx, effects);
            }
        };
    for item in history {
        let at = match &item {
            Item::Event(o) => o.event.timestamp,
            Item::Traits { at, .. } => *at,
        };
        if at >= to {
            break;
        }
        tick_to(&mut m, at, &facts, &mut effects);
        match item {
            Item::Traits {
                person, facts: f, ..
            } => {
                let e = facts.entry(person).or_default();
                e.ids = f.ids;
                e.traits.extend(f.traits);
            }
            Item::Event(mut o) => {
                if at < from {
                    // Before the range: only for audiences' memory and suppression.
                    if !m.wants(
                        o.event.event_type.code(),
                        o.event.event.as_deref(),
                        o.event.page_path.as_deref(),
                    ) {
                        continue;
                    }
                }
                events_read += 1;
                if let Some(f) = facts.get(&o.person) {
                    let mut merged = f.clone();
                    merged.traits.extend(o.facts.traits);
                    o.facts = merged;
                }
                // History before `from` must not enter anyone.
                let now = at.max(from);
                if at < from {
                    continue;
                }
                let fx = m.step(Input::Event { observed: o }, now);
                settle(&mut m, now, fx, &mut effects);
            }
        }
    }
    tick_to(&mut m, to, &facts, &mut effects);
    for e in &effects {
        let Effect::Record(r) = e else { continue };
        let entry = r
            .properties
            .get("entry")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let k = (r.person.clone(), entry);
        match r.name.as_str() {
            "Journey Entered" => {
                persons.insert(r.person.clone());
                entries.entry(k).or_default();
            }
            "Email Sent" | "Webhook Delivered" | "Audience Exported" => {
                entries.entry(k).or_default().0 = true
            }
            "Journey Converted" => {
                let x = entries.entry(k).or_default();
                x.1 = true;
                x.2 = r.properties.get("group").and_then(|g| g.as_str()) == Some("holdout");
            }
            _ => {}
        }
    }
    // Holdout membership is known from the machine for persons still in it; for the
    // others, from the split's records: count via stats instead.
    let (js, compiled) = m.journey(&journey.name).expect("created above");
    let st = &js.stats;
    let mut touched = Group::default();
    let mut not_touched = Group::default();
    for &(t, c, _) in entries.values() {
        let g = if t { &mut touched } else { &mut not_touched };
        g.persons += 1;
        g.converted += c as u64;
    }
    let mut holdout = Group {
        persons: st.holdout_entered,
        converted: st.holdout_converted,
        conversion_rate: None,
    };
    for g in [&mut touched, &mut not_touched, &mut holdout] {
        g.conversion_rate = (g.persons > 0).then(|| g.converted as f64 / g.persons as f64);
    }
    let steps: Vec<StepReport> = compiled
        .steps
        .iter()
        .zip(&st.steps)
        .map(|(s, x)| StepReport {
            id: s.id.clone(),
            reached: x.reached,
            sends: x.sends,
            capped: x.capped,
            suppressed: x.suppressed,
            quiet_delayed: x.quiet_delayed,
        })
        .collect();
    let sum = |f: fn(&StepReport) -> u64| steps.iter().map(f).sum::<u64>();
    Ok(Report {
        journey: journey.name.clone(),
        from: format_ms(from),
        to: format_ms(to),
        entries: st.entered,
        persons: persons.len() as u64,
        refused_by_limits: st.refused,
        sends: sum(|s| s.sends),
        capped: sum(|s| s.capped),
        suppressed: sum(|s| s.suppressed),
        quiet_delayed: sum(|s| s.quiet_delayed),
        conversion_lift: match (touched.conversion_rate, not_touched.conversion_rate) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        },
        touched,
        not_touched,
        holdout,
        goal: journey.goal.as_ref().map(|g| g.label.clone()),
        steps,
        events_read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use throughline_model::Event;

    fn ev(person: &str, name: &str, ts: Millis) -> Item {
        let e: Event = serde_json::from_value(json!({
            "message_id": format!("{person}-{name}-{ts}"), "type": "track", "event": name,
            "user_id": person, "timestamp": ts, "received_at": ts}))
        .unwrap();
        Item::Event(Box::new(Observed {
            person: person.into(),
            facts: Facts::default(),
            event: e,
        }))
    }

    #[test]
    fn a_backtest_counts_entries_caps_and_conversion_of_touched_against_untouched() {
        let file = crate::parse_file(
            r#"
name = "bt"
reentry = "always"
trigger = { event = "Signed Up" }
goal = { event = "Order Completed", within = "5d" }
[[steps]]
id = "mail"
type = "email"
subject = "x"
text = "y"
"#,
        )
        .unwrap();
        let policy = Policy {
            caps: vec![crate::policy::Cap {
                channel: "email".into(),
                count: 1,
                per: "7d".into(),
            }],
            ..Policy::default()
        };
        let d = 86_400_000;
        let t0 = 1_700_000_000_000;
        // a: signs up twice (second send capped), converts after the first; b: touched,
        // no conversion; c: suppressed, converts anyway; an event before `from` enters nobody.
        let history = vec![
            ev("z", "Signed Up", t0 - d),
            ev("a", "Signed Up", t0),
            ev("b", "Signed Up", t0 + 1),
            ev("c", "Signed Up", t0 + 2),
            ev("a", "Order Completed", t0 + d),
            ev("a", "Signed Up", t0 + 2 * d),
            ev("c", "Order Completed", t0 + 2 * d),
        ];
        let r = run(&file, &policy, vec!["c".into()], history, t0, t0 + 20 * d).unwrap();
        assert_eq!(
            (r.entries, r.persons, r.sends, r.capped, r.suppressed),
            (4, 3, 2, 1, 1)
        );
        assert_eq!((r.touched.persons, r.touched.converted), (2, 1));
        assert_eq!((r.not_touched.persons, r.not_touched.converted), (2, 1));
        assert_eq!(r.conversion_lift, Some(0.0));
    }
}
