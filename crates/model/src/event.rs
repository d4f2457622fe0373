//! The stored event and its Segment-shaped rendering.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{format_ms, Millis};

/// The six Segment message types that carry data (`batch` only wraps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Track,
        EventType::Identify,
        EventType::Page,
        EventType::Screen,
        EventType::Group,
        EventType::Alias,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Track => "track",
            EventType::Identify => "identify",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Group => "group",
            EventType::Alias => "alias",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == text)
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<EventType> {
        EventType::ALL.get(code as usize).copied()
    }
}

/// UTM parameters of the touch, from `context.campaign` or the page URL's query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Utm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

impl Utm {
    pub fn is_empty(&self) -> bool {
        *self == Utm::default()
    }
}

/// The string columns kept beside ids and time, dictionary-coded, so that scans never decode
/// whole events. Index 0 is the event name (a track's `event`, a page's or screen's `name`).
pub const DIMS: [&str; DIM_COUNT] = [
    "name",
    "path",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
    "referrer_host",
    "click_id",
];
pub const DIM_COUNT: usize = 9;

/// Click-id query parameters that ad platforms append; any of them marks a paid touch.
pub const CLICK_ID_PARAMS: [&str; 10] = [
    "gclid",
    "gbraid",
    "wbraid",
    "dclid",
    "msclkid",
    "fbclid",
    "ttclid",
    "li_fat_id",
    "twclid",
    "yclid",
];

/// The click id of a touch: which parameter (`gclid`, `fbclid`...) and its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickId {
    pub param: String,
    pub value: String,
}

/// A stored event: a validated Segment message with the fields analyses need pulled out.
///
/// `timestamp` is the clock-skew corrected event time that every analysis uses;
/// `original_timestamp` and `sent_at` are kept as the client sent them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub message_id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// `event` of a track, `name` of a page or screen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// An email the message carries in `traits` or `context.traits`: an identity of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub timestamp: Millis,
    pub received_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    #[serde(default, skip_serializing_if = "Utm::is_empty")]
    pub utm: Utm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_id: Option<ClickId>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub context: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub traits: Map<String, Value>,
}

impl Event {
    /// The id this event was sent under: the user id when known, else the anonymous id.
    /// Validation guarantees one of them is present.
    pub fn distinct_id(&self) -> &str {
        self.user_id
            .as_deref()
            .or(self.anonymous_id.as_deref())
            .unwrap_or_default()
    }

    /// The referrer's host, unless it is the page's own host: a referrer from the site
    /// itself is navigation within it, never where a visit came from (GA4 ignores such
    /// self-referrals too), so the `referrer_host` column keeps only outside referrers.
    pub fn external_referrer_host(&self) -> Option<&str> {
        external_referrer_host(self.referrer.as_deref(), self.page_url.as_deref())
    }

    /// The values of [`DIMS`], in order.
    pub fn dims(&self) -> [Option<&str>; DIM_COUNT] {
        [
            self.event.as_deref(),
            self.page_path.as_deref(),
            self.utm.source.as_deref(),
            self.utm.medium.as_deref(),
            self.utm.campaign.as_deref(),
            self.utm.content.as_deref(),
            self.utm.term.as_deref(),
            self.external_referrer_host(),
            self.click_id.as_ref().map(|c| c.param.as_str()),
        ]
    }

    /// The event as a Segment message, as `export` writes it and any Segment tool reads it.
    pub fn to_segment_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<&str>| {
            if let Some(v) = v {
                m.insert(k.to_string(), Value::String(v.to_string()));
            }
        };
        put("messageId", Some(&self.message_id));
        put("type", Some(self.event_type.as_str()));
        match self.event_type {
            EventType::Track => put("event", self.event.as_deref()),
            _ => put("name", self.event.as_deref()),
        }
        put("userId", self.user_id.as_deref());
        put("anonymousId", self.anonymous_id.as_deref());
        put("previousId", self.previous_id.as_deref());
        put("groupId", self.group_id.as_deref());
        put("timestamp", Some(&format_ms(self.timestamp)));
        put("originalTimestamp", self.original_timestamp.as_deref());
        put("sentAt", self.sent_at.as_deref());
        put("receivedAt", Some(&format_ms(self.received_at)));
        m.insert("properties".into(), Value::Object(self.properties.clone()));
        m.insert("context".into(), Value::Object(self.context.clone()));
        m.insert("traits".into(), Value::Object(self.traits.clone()));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_codes_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::from_code(t.code()), Some(t));
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::from_code(6), None);
    }
}

/// The host of a referrer URL, without a `www.` prefix or port: what channel rules match on.
pub fn referrer_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(':').next().unwrap_or(host);
    host.strip_prefix("www.").unwrap_or(host)
}

/// The referrer's host unless it is the page's own (see [`Event::external_referrer_host`]);
/// one function so that events stored through [`crate::NewEvent`] get the same column.
pub fn external_referrer_host<'a>(
    referrer: Option<&'a str>,
    page_url: Option<&str>,
) -> Option<&'a str> {
    let host = referrer_host(referrer?);
    fn bare(h: &str) -> &str {
        match h.get(..4) {
            Some(w) if w.eq_ignore_ascii_case("www.") => &h[4..],
            _ => h,
        }
    }
    let own = page_url.map(referrer_host);
    (!own.is_some_and(|o| bare(o).eq_ignore_ascii_case(bare(host)))).then_some(host)
}

#[cfg(test)]
mod host_tests {
    #[test]
    fn referrer_hosts() {
        assert_eq!(
            super::referrer_host("https://www.google.com/search?q=x"),
            "google.com"
        );
        assert_eq!(
            super::referrer_host("http://l.facebook.com:443"),
            "l.facebook.com"
        );
        assert_eq!(super::referrer_host("news.example"), "news.example");
    }

    /// Navigation within the site is no referral: the column keeps outside referrers only.
    #[test]
    fn own_host_is_no_referrer() {
        let event = |page: &str, referrer: &str| -> super::Event {
            serde_json::from_value(serde_json::json!({
                "message_id": "m", "type": "page", "timestamp": 0, "received_at": 0,
                "page_url": page, "referrer": referrer,
            }))
            .unwrap()
        };
        let e = event(
            "https://www.shop.example/cart",
            "https://WWW.Shop.example/p/1?utm_source=x",
        );
        assert_eq!(e.external_referrer_host(), None);
        let e = event("https://www.shop.example/cart", "https://www.google.com/");
        assert_eq!(e.external_referrer_host(), Some("google.com"));
        // Another host of the same company is still a referrer (exclude it by rule).
        let e = event(
            "https://shop.example/",
            "https://checkout.shop.example/done",
        );
        assert_eq!(e.external_referrer_host(), Some("checkout.shop.example"));
    }

    /// Events reach the store as `NewEvent`s (HTTP, import) and as `Event`s (tools, logs
    /// replayed): both must give the same dimension columns, self-referrals included.
    #[test]
    fn new_events_give_the_same_dimensions() {
        for (page, referrer) in [
            ("https://www.shop.example/cart", "https://shop.example/p/1"),
            ("https://www.shop.example/cart", "https://www.google.com/"),
            (
                "https://shop.example/",
                "https://checkout.shop.example/done",
            ),
        ] {
            let e: super::Event = serde_json::from_value(serde_json::json!({
                "message_id": "m", "type": "page", "timestamp": 0, "received_at": 0,
                "page_url": page, "referrer": referrer, "event": "Home",
            }))
            .unwrap();
            assert_eq!(e.as_new().dims(), e.dims(), "{page} from {referrer}");
        }
    }
}
