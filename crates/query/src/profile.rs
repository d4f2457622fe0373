//! A person's profile: every id they were seen under, merged traits (latest wins), first
//! and last seen, counts, and the timeline across devices and channels. Only the person's
//! own events are decoded.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value};
use throughline_identity::IdKind;
use throughline_model::{format_ms, EventType};

use crate::sessions::is_visit;
use crate::source::{EventFilter, Source};
use crate::QueryError;
use throughline_classify::{Rules, Touch};

/// Timeline entries returned at most, newest first.
pub const TIMELINE_MAX: usize = 1000;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Profile {
    pub person_id: String,
    pub ids: Vec<PersonId>,
    pub traits: Map<String, Value>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub event_count: u64,
    pub events: BTreeMap<String, u64>,
    pub utm_sources: BTreeMap<String, u64>,
    /// The newest events first, at most the requested number.
    pub timeline: Vec<TimelineEntry>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PersonId {
    pub kind: IdKind,
    pub id: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TimelineEntry {
    pub timestamp: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub event: Option<String>,
    /// The id the event was sent under: which device or login.
    pub sent_as: String,
    pub path: Option<String>,
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub referrer: Option<String>,
    pub message_id: String,
    /// For visit events (page and screen views, events sent from a page): the channel of
    /// the session they belong to, named by its first event as `query sessions` does.
    pub channel: Option<String>,
}

/// Inactivity that ends a session in the timeline (the sessions query's default).
const SESSION_TIMEOUT_MS: i64 = 30 * 60 * 1000;

/// The profile of the person known by `id` (a user id, email or anonymous id), or `None`.
pub fn run(
    snap: &Source,
    rules: &Rules,
    id: &str,
    timeline: usize,
) -> Result<Option<Profile>, QueryError> {
    let identity = snap.identity()?;
    let Some(person) = identity.find_person(id) else {
        return Ok(None);
    };
    let nodes: HashSet<u32> = (0..identity.node_count() as u32)
        .filter(|&n| identity.person_of(n) == person)
        .collect();
    let mut traits: BTreeMap<String, (i64, Value)> = BTreeMap::new();
    let (mut first, mut last, mut count) = (i64::MAX, i64::MIN, 0u64);
    let mut by_event: BTreeMap<String, u64> = BTreeMap::new();
    let mut sources: BTreeMap<String, u64> = BTreeMap::new();
    let mut entries: Vec<(i64, u32, TimelineEntry)> = Vec::new();
    snap.for_each_event(
        &EventFilter {
            nodes: Some(&nodes),
            ..Default::default()
        },
        |seq, _, e| {
            count += 1;
            first = first.min(e.timestamp);
            last = last.max(e.timestamp);
            let label = e
                .event
                .clone()
                .unwrap_or_else(|| e.event_type.as_str().to_string());
            *by_event.entry(label).or_default() += 1;
            if let Some(src) = &e.utm.source {
                *sources.entry(src.clone()).or_default() += 1;
            }
            // Latest wins, by event time, across identify and group traits and context.traits.
            let mut merge = |m: &Map<String, Value>| {
                for (k, v) in m {
                    if traits.get(k).is_none_or(|(t, _)| e.timestamp >= *t) {
                        traits.insert(k.clone(), (e.timestamp, v.clone()));
                    }
                }
            };
            if matches!(e.event_type, EventType::Identify | EventType::Group) {
                merge(&e.traits);
            }
            if let Some(Value::Object(t)) = e.context.get("traits") {
                merge(t);
            }
            // A visit's channel if it starts a session (decided below, oldest first).
            let touch = is_visit(e.event_type.code(), e.page_path.is_some()).then(|| {
                let t = Touch {
                    page_url: None,
                    ..Touch::from_event(&e)
                };
                rules.classify(&t).channel
            });
            entries.push((
                e.timestamp,
                seq,
                TimelineEntry {
                    channel: touch,
                    timestamp: format_ms(e.timestamp),
                    event_type: e.event_type,
                    sent_as: e.distinct_id().to_string(),
                    event: e.event,
                    path: e.page_path,
                    utm_source: e.utm.source,
                    utm_medium: e.utm.medium,
                    utm_campaign: e.utm.campaign,
                    referrer: e.referrer,
                    message_id: e.message_id,
                },
            ));
            // Bound memory for persons with huge histories: keep the newest only.
            if entries.len() >= 2 * timeline.max(1) + 1024 {
                entries.sort_by_key(|e| std::cmp::Reverse((e.0, e.1)));
                entries.truncate(timeline);
            }
            Ok(())
        },
    )?;
    entries.sort_by_key(|e| std::cmp::Reverse((e.0, e.1)));
    entries.truncate(timeline.min(TIMELINE_MAX));
    // Sessions of the visits, oldest first (the sessions kernel): every visit gets the
    // channel of its session's first.
    let visits: Vec<usize> = (0..entries.len())
        .rev()
        .filter(|&i| entries[i].2.channel.is_some())
        .collect();
    let ts: Vec<i64> = visits.iter().map(|&i| entries[i].0).collect();
    throughline_kernels::sessions::split(&ts, SESSION_TIMEOUT_MS, |a, b| {
        let channel = entries[visits[a]].2.channel.clone();
        for &i in &visits[a + 1..b] {
            entries[i].2.channel = channel.clone();
        }
    });
    Ok(Some(Profile {
        person_id: identity.canonical_id(person).to_string(),
        ids: identity
            .ids_of(person)
            .into_iter()
            .map(|(kind, id)| PersonId {
                kind,
                id: id.to_string(),
            })
            .collect(),
        traits: traits.into_iter().map(|(k, (_, v))| (k, v)).collect(),
        first_seen: (count > 0).then(|| format_ms(first)),
        last_seen: (count > 0).then(|| format_ms(last)),
        event_count: count,
        events: by_event,
        utm_sources: sources,
        timeline: entries.into_iter().map(|(_, _, t)| t).collect(),
    }))
}
