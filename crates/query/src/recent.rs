//! The newest events of a project, for a live feed: who did what, where, from which
//! channel. Reads only the newest events' payloads ([`Snapshot::newest_events`]), so a
//! dashboard can poll it on any store size.

use serde::{Deserialize, Serialize};
use throughline_classify::{Rules, Touch};
use throughline_model::{format_ms, EventType};
use throughline_store::Snapshot;

use crate::sessions::is_visit;
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
    /// The channel of the event's touch, for visit events (page and screen views and
    /// events sent from a page); server-side events have none.
    pub channel: Option<String>,
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

pub fn run(
    snap: &Snapshot,
    rules: &Rules,
    req: &RecentRequest,
) -> Result<RecentResponse, QueryError> {
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
        .map(|(node, e)| {
            let visit = is_visit(e.event_type.code(), e.page_path.is_some());
            // Classified as a session's first event is (the landing URL plays no part).
            let channel = visit.then(|| {
                let touch = Touch {
                    page_url: None,
                    ..Touch::from_event(&e)
                };
                rules.classify(&touch).channel
            });
            RecentEvent {
                timestamp: format_ms(e.timestamp),
                received_at: format_ms(e.received_at),
                event_type: e.event_type,
                person_id: identity
                    .canonical_id(identity.person_of(node))
                    .to_string(),
                sent_as: e.distinct_id().to_string(),
                event: e.event,
                path: e.page_path,
                channel,
                utm_source: e.utm.source,
                utm_medium: e.utm.medium,
                utm_campaign: e.utm.campaign,
                referrer: e.referrer,
                message_id: e.message_id,
            }
        })
        .collect();
    Ok(RecentResponse {
        total_events: snap.event_count() as u64,
        events,
    })
}
