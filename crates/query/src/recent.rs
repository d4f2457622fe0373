//! What a project's events are, cheaply, for a dashboard: the newest events (a live feed
//! of who did what, on which page, from which source) and the catalog of event names,
//! campaigns and channels (for step pickers and filters). Reads only the newest events'
//! payloads ([`Source::newest_events`]) and the dimensions' distinct values (segment
//! dictionaries, or ClickHouse's columns), never a column of every row, so a dashboard can
//! ask on any store size.

use crate::source::Source;
use crate::QueryError;
use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_model::{format_ms, EventType};

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

/// Distinct values of each list returned at most.
pub const CATALOG_VALUES_MAX: usize = 5000;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CatalogResponse {
    /// Every distinct event name (a track's `event`, a page's or screen's `name`), sorted.
    pub names: Vec<String>,
    /// Every distinct `utm_campaign`, sorted.
    pub campaigns: Vec<String>,
    /// The channel names of the project's rules, in rule order (channels a session can
    /// get, whether or not one has).
    pub channels: Vec<String>,
    /// Whether a list was cut at [`CATALOG_VALUES_MAX`].
    pub truncated: bool,
}

/// The event names and campaigns in use (the segments' dictionaries and the log) and the
/// channels the rules name.
pub fn catalog<'s, 'a: 's>(
    src: impl Into<Source<'s, 'a>>,
    rules: &Rules,
) -> Result<CatalogResponse, QueryError> {
    let src = src.into();
    // One more than is returned, to tell a cut list from a full one.
    let mut names = src.distinct(0, CATALOG_VALUES_MAX + 1)?;
    let mut campaigns = src.distinct(4, CATALOG_VALUES_MAX + 1)?;
    let mut channels: Vec<String> = Vec::new();
    for c in rules.channel_names() {
        if !channels.iter().any(|x| x == c) {
            channels.push(c.to_string());
        }
    }
    let truncated = names.len() > CATALOG_VALUES_MAX || campaigns.len() > CATALOG_VALUES_MAX;
    names.truncate(CATALOG_VALUES_MAX);
    campaigns.truncate(CATALOG_VALUES_MAX);
    Ok(CatalogResponse {
        names,
        campaigns,
        channels,
        truncated,
    })
}

pub fn run<'s, 'a: 's>(
    src: impl Into<Source<'s, 'a>>,
    req: &RecentRequest,
) -> Result<RecentResponse, QueryError> {
    let src = src.into();
    let limit = req.limit.unwrap_or(RECENT_DEFAULT);
    if limit == 0 || limit > RECENT_MAX {
        return Err(QueryError::invalid(format!(
            "limit must be between 1 and {RECENT_MAX}"
        )));
    }
    let identity = src.identity()?;
    let events = src
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
        total_events: src.event_count()?,
        events,
    })
}
