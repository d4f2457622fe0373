//! What a project's events are, cheaply, for a dashboard: the newest events (a live feed
//! of who did what, on which page, from which source) and the event names in use (for step
//! pickers). Reads only the newest events' payloads ([`Snapshot::newest_events`]) and
//! the segments' name dictionaries, so a dashboard can poll it on any store size.

use serde::{Deserialize, Serialize};
use throughline_model::{format_ms, EventType};
use throughline_store::Snapshot;

use crate::QueryError;

/// Events returned at most.
pub const RECENT_MAX: usize = 200;
/// Events returned without a `limit`.
pub const RECENT_DEFAULT: usize = 20;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecentRequest {
    /// Events returned, newest first (default 20, at most 200).
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RecentEvent {
    pub timestamp: String,
    pub received_at: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub event: Option<String>,
    /// The person's canonical id (`GET .../persons/{id}` shows their profile).
    pub person_id: String,
    /// The id the event was sent under: which device or login.
    pub sent_as: String,
    pub path: Option<String>,
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub referrer: Option<String>,
    pub message_id: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RecentResponse {
    /// Events stored in the project.
    pub total_events: u64,
    /// The newest events by event time, newest first.
    pub events: Vec<RecentEvent>,
}

/// Distinct event names returned at most.
pub const NAMES_MAX: usize = 5000;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NamesResponse {
    /// Every distinct event name (a track's `event`, a page's or screen's `name`),
    /// sorted, at most [`NAMES_MAX`].
    pub names: Vec<String>,
    /// Whether there were more.
    pub truncated: bool,
}

/// The event names in use, from the segments' dictionaries and the log.
pub fn names(snap: &Snapshot) -> Result<NamesResponse, QueryError> {
    let mut all: std::collections::BTreeSet<String> = Default::default();
    for seg in snap.segments() {
        all.extend(seg.dictionary(throughline_model::DIMS[0])?);
    }
    all.extend(
        snap.log_rows()
            .filter_map(|r| r.dims[0].as_deref().map(str::to_string)),
    );
    let truncated = all.len() > NAMES_MAX;
    Ok(NamesResponse {
        names: all.into_iter().take(NAMES_MAX).collect(),
        truncated,
    })
}

pub fn run(snap: &Snapshot, req: &RecentRequest) -> Result<RecentResponse, QueryError> {
    let limit = req.limit.unwrap_or(RECENT_DEFAULT);
    if limit == 0 || limit > RECENT_MAX {
        return Err(QueryError::invalid(format!(
            "limit must be between 1 and {RECENT_MAX}"
        )));
    }
    let identity = snap.identity();
    let events = snap
        .newest_events(limit)?
        .into_iter()
        .map(|(node, e)| RecentEvent {
            timestamp: format_ms(e.timestamp),
            received_at: format_ms(e.received_at),
            event_type: e.event_type,
            person_id: identity.canonical_id(identity.person_of(node)).to_string(),
            sent_as: e.distinct_id().to_string(),
            event: e.event,
            path: e.page_path,
            utm_source: e.utm.source,
            utm_medium: e.utm.medium,
            utm_campaign: e.utm.campaign,
            referrer: e.referrer,
            message_id: e.message_id,
        })
        .collect();
    Ok(RecentResponse {
        total_events: snap.event_count() as u64,
        events,
    })
}
