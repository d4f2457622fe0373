use super::*;
use crate::policy::{Cap, QuietHours};

const H: Millis = 3_600_000;
const D: Millis = 24 * H;
/// 2026-01-15T00:00:00Z.
const T0: Millis = 1_768_435_200_000;

fn machine(journeys: &[&str], policy: Policy) -> Machine {
    let mut m = Machine::new();
    m.step(
        Input::SetPolicy {
            policy: Box::new(policy),
        },
        T0,
    );
    for j in journeys {
        let file = crate::parse_file(j).unwrap();
        m.check_create(&file).unwrap();
        m.step(
            Input::Create {
                file: Box::new(file),
            },
            T0,
        );
    }
    m
}

fn facts(tz: Option<&str>) -> Facts {
    let mut f = Facts::default();
    f.traits.insert("email".into(), json!("ann@example.com"));
    if let Some(tz) = tz {
        f.traits.insert("timezone".into(), json!(tz));
    }
    f
}

fn event(person: &str, name: &str, ts: Millis, f: &Facts) -> Input {
    let mut e: Event = serde_json::from_value(json!({
        "message_id": format!("{person}-{name}-{ts}"), "type": "track", "event": name,
        "user_id": person, "timestamp": ts, "received_at": ts}))
    .unwrap();
    e.properties.insert("plan".into(), json!("pro"));
    Input::Event {
        observed: Box::new(Observed {
            person: person.into(),
            facts: f.clone(),
            event: e,
        }),
    }
}

fn tick(m: &mut Machine, now: Millis, f: &Facts) -> Vec<Effect> {
    let persons = m.due_persons(now, 10_000);
    m.step(
        Input::Tick {
            max: 10_000,
            facts: persons.into_iter().map(|p| (p, f.clone())).collect(),
        },
        now,
    )
}

fn deliveries(fx: &[Effect]) -> Vec<Delivery> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Deliver(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

fn records(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Record(r) => Some(r.name.clone()),
            _ => None,
        })
        .collect()
}

fn ok() -> Outcome {
    Outcome::Delivered {
        detail: String::new(),
    }
}

const DRIP: &str = r#"
name = "drip"
trigger = { event = "Signed Up" }
goal = { event = "Order Completed" }
[[steps]]
id = "hello"
type = "email"
subject = "Hi"
text = "Hello"
[[steps]]
id = "wait"
type = "wait"
duration = "2d"
[[steps]]
id = "reminder"
type = "email"
subject = "Still there?"
text = "Come back"
"#;

#[test]
fn a_person_goes_through_waits_and_sends_once_each() {
    let f = facts(None);
    let mut m = machine(&[DRIP], Policy::default());
    let fx = m.step(event("ann", "Signed Up", T0, &f), T0);
    assert_eq!(records(&fx), ["Journey Entered"]);
    let d = deliveries(&fx);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].key, "drip/ann/hello/1");
    assert!(d[0].id.starts_with("msg_"));
    // A second trigger while in the journey, and the same event again, enter nobody.
    assert!(deliveries(&m.step(event("ann", "Signed Up", T0 + 1, &f), T0 + 1)).is_empty());
    assert!(deliveries(&m.step(event("ann", "Signed Up", T0, &f), T0 + 2)).is_empty());
    let fx = m.step(
        Input::Delivered {
            key: d[0].key.clone(),
            attempt: 1,
            outcome: ok(),
        },
        T0 + 10,
    );
    assert_eq!(records(&fx), ["Email Sent"]);
    assert_eq!(m.at_steps("drip").unwrap(), [0, 1, 0]);
    // Nothing before the wait is over; the reminder right after.
    assert!(tick(&mut m, T0 + 2 * D - 1, &f).is_empty());
    let d = deliveries(&tick(&mut m, T0 + 2 * D + 10, &f));
    assert_eq!(
        d.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
        ["drip/ann/reminder/1"]
    );
    m.step(
        Input::Delivered {
            key: d[0].key.clone(),
            attempt: 1,
            outcome: ok(),
        },
        T0 + 2 * D + 20,
    );
    // Past the last step the person is watched for the goal, which converts them.
    assert_eq!(m.persons_at("drip", None, 10).len(), 1);
    let fx = m.step(event("ann", "Order Completed", T0 + 3 * D, &f), T0 + 3 * D);
    assert_eq!(records(&fx), ["Journey Converted"]);
    let st = &m.journey("drip").unwrap().0.stats;
    assert_eq!((st.entered, st.converted, st.goal_after_end), (1, 1, 1));
    assert_eq!(m.instance_count(), 0);
    // `once`: never again.
    assert!(records(&m.step(event("ann", "Signed Up", T0 + 4 * D, &f), T0 + 4 * D)).is_empty());
}

#[test]
fn failed_deliveries_are_retried_with_backoff_then_recorded() {
    let f = facts(None);
    let mut m = machine(&[DRIP], Policy::default());
    let d = deliveries(&m.step(event("bo", "Signed Up", T0, &f), T0)).remove(0);
    let fail = |retryable| Outcome::Failed {
        retryable,
        error: "503".into(),
    };
    assert!(m
        .step(
            Input::Delivered {
                key: d.key.clone(),
                attempt: 1,
                outcome: fail(true)
            },
            T0
        )
        .is_empty());
    // The first retry comes 10 s later with the same key and the next attempt number.
    assert!(tick(&mut m, T0 + 9_999, &f).is_empty());
    let again = deliveries(&tick(&mut m, T0 + 10_000, &f));
    assert_eq!(
        (
            again[0].key.as_str(),
            again[0].attempt,
            again[0].id.as_str()
        ),
        (d.key.as_str(), 2, d.id.as_str())
    );
    // A stale outcome of attempt 1 changes nothing; a permanent failure moves on.
    assert!(m
        .step(
            Input::Delivered {
                key: d.key.clone(),
                attempt: 1,
                outcome: ok()
            },
            T0 + 10_001
        )
        .is_empty());
    let fx = m.step(
        Input::Delivered {
            key: d.key.clone(),
            attempt: 2,
            outcome: fail(false),
        },
        T0 + 10_002,
    );
    assert_eq!(records(&fx), ["Email Failed"]);
    assert_eq!(m.at_steps("drip").unwrap(), [0, 1, 0]);
    assert_eq!(m.in_flight_count(), 0);
}

#[test]
fn three_journeys_compete_for_one_cap_and_priority_decides() {
    let j = |name: &str, prio: i32| {
        format!("name = \"{name}\"\npriority = {prio}\ntrigger = {{ event = \"Signed Up\" }}\n[[steps]]\nid = \"mail\"\ntype = \"email\"\nsubject = \"x\"\ntext = \"y\"\n")
    };
    let (a, b, c) = (j("low", 1), j("high", 9), j("mid", 5));
    let policy = Policy {
        caps: vec![
            Cap {
                channel: "email".into(),
                count: 1,
                per: "1d".into(),
            },
            Cap {
                channel: "email".into(),
                count: 2,
                per: "7d".into(),
            },
        ],
        ..Policy::default()
    };
    let mut m = machine(&[&a, &b, &c], policy);
    let f = facts(None);
    let fx = m.step(event("cy", "Signed Up", T0, &f), T0);
    let d = deliveries(&fx);
    assert_eq!(
        d.iter().map(|d| d.journey.as_str()).collect::<Vec<_>>(),
        ["high"]
    );
    assert_eq!(
        records(&fx)
            .iter()
            .filter(|r| *r == "Message Capped")
            .count(),
        2
    );
    for name in ["low", "mid"] {
        assert_eq!(m.journey(name).unwrap().0.stats.steps[0].capped, 1);
    }
}

#[test]
fn caps_count_across_journeys_over_sliding_windows() {
    let j = |name: &str| {
        format!("name = \"{name}\"\nreentry = \"always\"\ntrigger = {{ event = \"Ping\" }}\n[[steps]]\nid = \"mail\"\ntype = \"email\"\nsubject = \"x\"\ntext = \"y\"\n")
    };
    let policy = Policy {
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
        ],
        ..Policy::default()
    };
    let (a, b) = (j("a"), j("b"));
    let mut m = machine(&[&a, &b], policy);
    let f = facts(None);
    let mut sent = Vec::new();
    for day in 0..10 {
        for hour in [1, 13] {
            let now = T0 + day * D + hour * H;
            for d in deliveries(&m.step(event("dee", "Ping", now, &f), now)) {
                sent.push(now);
                m.step(
                    Input::Delivered {
                        key: d.key,
                        attempt: 1,
                        outcome: ok(),
                    },
                    now,
                );
            }
        }
    }
    for (i, &t) in sent.iter().enumerate() {
        assert!(
            sent[..i].iter().filter(|&&s| s > t - D).count() < 1,
            "two within a day at {i}"
        );
        assert!(
            sent[..i].iter().filter(|&&s| s > t - 7 * D).count() < 3,
            "four within a week at {i}"
        );
    }
    // Days 0, 1, 2 send; 3..6 are capped by the week; 7, 8, 9 send again.
    assert_eq!(sent.len(), 6, "{sent:?}");
}

#[test]
fn quiet_hours_hold_a_send_until_local_morning() {
    let policy = Policy {
        quiet_hours: Some(QuietHours {
            start: "21:00".into(),
            end: "08:00".into(),
            default_timezone: "UTC".into(),
        }),
        ..Policy::default()
    };
    let mut m = machine(&[DRIP], policy);
    // 03:00 UTC = 22:00 in New York: held until 08:00 EST = 13:00 UTC.
    let ny = facts(Some("America/New_York"));
    let now = T0 + 3 * H;
    assert!(deliveries(&m.step(event("ed", "Signed Up", now, &ny), now)).is_empty());
    assert_eq!(m.next_due(), Some(T0 + 13 * H));
    assert!(deliveries(&tick(&mut m, T0 + 13 * H - 1, &ny)).is_empty());
    assert_eq!(deliveries(&tick(&mut m, T0 + 13 * H, &ny)).len(), 1);
    assert_eq!(m.journey("drip").unwrap().0.stats.steps[0].quiet_delayed, 1);
    // Tokyo is at noon: sent at once.
    let tokyo = facts(Some("Asia/Tokyo"));
    let next_night = T0 + D + 3 * H;
    assert_eq!(
        deliveries(&m.step(event("fu", "Signed Up", next_night, &tokyo), next_night)).len(),
        1
    );
}

#[test]
fn suppressed_persons_get_nothing_and_it_is_recorded() {
    let mut m = machine(&[DRIP], Policy::default());
    let f = facts(None);
    m.step(
        Input::Suppress {
            ids: vec!["ann@example.com".into()],
            reason: "list".into(),
        },
        T0,
    );
    let fx = m.step(event("gus", "Signed Up", T0, &f), T0);
    assert!(deliveries(&fx).is_empty());
    assert_eq!(records(&fx), ["Journey Entered", "Message Suppressed"]);
    // An Unsubscribed event suppresses its sender from then on.
    let mut g = facts(None);
    g.traits.insert("email".into(), json!("hal@example.com"));
    let d = deliveries(&m.step(event("hal", "Signed Up", T0, &g), T0)).remove(0);
    m.step(event("hal", "Unsubscribed", T0 + 1, &g), T0 + 1);
    m.step(
        Input::Delivered {
            key: d.key,
            attempt: 1,
            outcome: ok(),
        },
        T0 + 2,
    );
    let fx = tick(&mut m, T0 + 3 * D, &g);
    // Both reminders (gus's and hal's) are suppressed.
    assert!(deliveries(&fx).is_empty());
    assert_eq!(records(&fx), ["Message Suppressed", "Message Suppressed"]);
}

#[test]
fn pause_parks_at_step_boundaries_and_resume_continues() {
    let mut m = machine(&[DRIP], Policy::default());
    let f = facts(None);
    let d = deliveries(&m.step(event("ivy", "Signed Up", T0, &f), T0)).remove(0);
    m.step(
        Input::Delivered {
            key: d.key,
            attempt: 1,
            outcome: ok(),
        },
        T0,
    );
    m.step(
        Input::SetStatus {
            journey: "drip".into(),
            status: Status::Paused,
        },
        T0 + D,
    );
    // Paused: no entries, and the wait ends into a parked reminder.
    assert!(records(&m.step(event("jo", "Signed Up", T0 + D, &f), T0 + D)).is_empty());
    assert!(deliveries(&tick(&mut m, T0 + 3 * D, &f)).is_empty());
    assert_eq!(m.persons_at("drip", Some(2), 10)[0].at, At::Parked);
    m.step(
        Input::SetStatus {
            journey: "drip".into(),
            status: Status::Active,
        },
        T0 + 4 * D,
    );
    assert_eq!(deliveries(&tick(&mut m, T0 + 4 * D, &f)).len(), 1);
    m.step(
        Input::SetStatus {
            journey: "drip".into(),
            status: Status::Archived,
        },
        T0 + 5 * D,
    );
    assert_eq!(m.instance_count(), 0);
}

#[test]
fn waits_for_events_branches_and_holdouts() {
    let j = r#"
name = "cart"
trigger = { event = "Cart Abandoned" }
goal = { event = "Order Completed", within = "10d" }
[[steps]]
id = "split"
type = "split"
variants = [{ name = "holdout", weight = 1, holdout = true, next = "end" }, { name = "go", weight = 1 }]
[[steps]]
id = "look"
type = "wait_for_event"
event = "Cart Viewed"
timeout = "1d"
on_event = "viewed"
on_timeout = "pro"
[[steps]]
id = "pro"
type = "branch"
trait = "plan = 'pro'"
then = "hook"
else = "end"
[[steps]]
id = "viewed"
type = "branch"
event = "Coupon Viewed"
then = "hook"
else = "end"
[[steps]]
id = "hook"
type = "webhook"
url = "https://hooks.example/x"
"#;
    let mut m = machine(&[j], Policy::default());
    let mut pro = facts(None);
    pro.traits.insert("plan".into(), json!("pro"));
    let free = facts(None);
    let (mut holdout, mut hooked) = (0, 0);
    for n in 0..200usize {
        let p = format!("p{n}");
        let f = if n.is_multiple_of(2) { &pro } else { &free };
        m.step(event(&p, "Cart Abandoned", T0, f), T0);
        if n.is_multiple_of(3) {
            m.step(event(&p, "Coupon Viewed", T0 + H, f), T0 + H);
            m.step(event(&p, "Cart Viewed", T0 + 2 * H, f), T0 + 2 * H);
        }
    }
    let at = T0 + D + 3 * H;
    let persons = m.due_persons(at, 10_000);
    let fx = m.step(
        Input::Tick {
            max: 10_000,
            facts: persons
                .into_iter()
                .map(|p| {
                    let n: usize = p[1..].parse().unwrap();
                    (
                        p,
                        if n.is_multiple_of(2) {
                            pro.clone()
                        } else {
                            free.clone()
                        },
                    )
                })
                .collect(),
        },
        at,
    );
    for n in 0..200usize {
        let p = format!("p{n}");
        let inst = m.instances_of(&p);
        if inst.first().is_some_and(|i| i.holdout) {
            holdout += 1;
            continue;
        }
        let expect_hook = n.is_multiple_of(3) || n.is_multiple_of(2);
        let got = inst
            .first()
            .is_some_and(|i| matches!(i.at, At::Deliver { .. }));
        assert_eq!(got, expect_hook, "person {p}: {inst:?}");
        hooked += got as usize;
    }
    assert!((70..130).contains(&holdout), "{holdout} of 200 held out");
    assert_eq!(
        deliveries(&fx).len() + m.in_flight_count() - deliveries(&fx).len(),
        hooked
    );
    let st = &m.journey("cart").unwrap().0.stats;
    assert_eq!(st.holdout_entered, holdout as u64);
}

#[test]
fn an_audience_is_entered_once_on_becoming_a_member() {
    let j = r#"
name = "browsers"
reentry = "always"
[trigger.audience]
did = ["Product Viewed", "Pricing Viewed"]
not_did = ["Order Completed"]
within = "7d"
[[steps]]
id = "x"
type = "export"
audience = "retarget"
"#;
    let mut m = machine(&[j], Policy::default());
    let f = facts(None);
    assert!(records(&m.step(event("kim", "Product Viewed", T0, &f), T0)).is_empty());
    let fx = m.step(event("kim", "Pricing Viewed", T0 + H, &f), T0 + H);
    assert_eq!(records(&fx), ["Journey Entered"]);
    let d = deliveries(&fx).remove(0);
    m.step(
        Input::Delivered {
            key: d.key,
            attempt: 1,
            outcome: ok(),
        },
        T0 + H,
    );
    // Still a member: no second entry; a purchase leaves, then views qualify again later.
    assert!(
        records(&m.step(event("kim", "Pricing Viewed", T0 + 2 * H, &f), T0 + 2 * H)).is_empty()
    );
    m.step(event("kim", "Order Completed", T0 + 3 * H, &f), T0 + 3 * H);
    assert!(
        records(&m.step(event("kim", "Product Viewed", T0 + 4 * H, &f), T0 + 4 * H)).is_empty()
    );
    let later = T0 + 8 * D;
    m.step(event("kim", "Product Viewed", later, &f), later);
    assert!(
        records(&m.step(event("kim", "Pricing Viewed", later + 1, &f), later + 1))
            .contains(&"Journey Entered".to_string())
    );
}

#[test]
fn snapshots_rebuild_the_same_machine() {
    let mut m = machine(&[DRIP], Policy::default());
    let f = facts(None);
    for n in 0..50 {
        m.step(event(&format!("q{n}"), "Signed Up", T0 + n, &f), T0 + n);
    }
    let json = serde_json::to_string(m.state()).unwrap();
    let back = Machine::from_state(serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(back.state(), m.state());
    assert_eq!(back.pending(), m.pending());
    assert_eq!(back.at_steps("drip"), m.at_steps("drip"));
    assert_eq!(
        back.pending().len(),
        100,
        "50 sends in flight and 50 records owed"
    );
}
