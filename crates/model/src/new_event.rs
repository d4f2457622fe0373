//! An event on its way into the store, borrowing from the message it came from.
//!
//! Collection produces a [`NewEvent`] instead of an owned [`Event`], so that `properties`,
//! `context` and `traits` (most of a message's bytes) are never built into JSON trees and
//! serialized again: they stay the text the client sent, already validated, and
//! [`NewEvent::write_json`] copies them into the stored record. The record it writes is
//! the serde form of [`Event`], so readers decode it as an `Event` like any other.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::{external_referrer_host, ClickId, Event, EventType, Millis, Utm, DIM_COUNT};

/// The UTM parameters of a [`NewEvent`], in [`Utm`]'s field order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewUtm<'a> {
    pub source: Option<Cow<'a, str>>,
    pub medium: Option<Cow<'a, str>>,
    pub campaign: Option<Cow<'a, str>>,
    pub content: Option<Cow<'a, str>>,
    pub term: Option<Cow<'a, str>>,
}

/// A validated, normalized event: the fields of [`Event`], with `properties`, `context`
/// and `traits` as JSON object text (empty when absent).
///
/// Whoever builds one promises that each of the three texts is empty or a JSON object
/// that decodes as `Map<String, Value>` (collection validates them); the store relies on
/// it, since a record that does not decode makes its segment unreadable.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent<'a> {
    pub message_id: Cow<'a, str>,
    pub event_type: EventType,
    pub event: Option<Cow<'a, str>>,
    pub user_id: Option<Cow<'a, str>>,
    pub anonymous_id: Option<Cow<'a, str>>,
    pub previous_id: Option<Cow<'a, str>>,
    pub group_id: Option<Cow<'a, str>>,
    pub email: Option<Cow<'a, str>>,
    pub timestamp: Millis,
    pub received_at: Millis,
    pub original_timestamp: Option<Cow<'a, str>>,
    pub sent_at: Option<Cow<'a, str>>,
    pub page_url: Option<Cow<'a, str>>,
    pub page_path: Option<Cow<'a, str>>,
    pub referrer: Option<Cow<'a, str>>,
    pub utm: NewUtm<'a>,
    pub click_id: Option<(Cow<'a, str>, Cow<'a, str>)>,
    pub properties: Cow<'a, str>,
    pub context: Cow<'a, str>,
    pub traits: Cow<'a, str>,
}

fn opt<'a>(s: &'a Option<Cow<'_, str>>) -> Option<&'a str> {
    s.as_deref()
}

impl NewEvent<'_> {
    /// The id this event was sent under: the user id when known, else the anonymous id.
    pub fn distinct_id(&self) -> &str {
        opt(&self.user_id)
            .or(opt(&self.anonymous_id))
            .unwrap_or_default()
    }

    /// The values of [`crate::DIMS`], in order: as [`Event::dims`] gives them.
    pub fn dims(&self) -> [Option<&str>; DIM_COUNT] {
        [
            opt(&self.event),
            opt(&self.page_path),
            opt(&self.utm.source),
            opt(&self.utm.medium),
            opt(&self.utm.campaign),
            opt(&self.utm.content),
            opt(&self.utm.term),
            external_referrer_host(opt(&self.referrer), opt(&self.page_url)),
            self.click_id.as_ref().map(|c| c.0.as_ref()),
        ]
    }

    /// Appends the stored record: the JSON that `serde_json::to_vec(&self.to_event())`
    /// would give, up to key order inside the three objects, written without building it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut w = Obj { out, first: true };
        w.str("message_id", &self.message_id);
        w.str("type", self.event_type.as_str());
        w.opt("event", &self.event);
        w.opt("user_id", &self.user_id);
        w.opt("anonymous_id", &self.anonymous_id);
        w.opt("previous_id", &self.previous_id);
        w.opt("group_id", &self.group_id);
        w.opt("email", &self.email);
        w.num("timestamp", self.timestamp);
        w.num("received_at", self.received_at);
        w.opt("original_timestamp", &self.original_timestamp);
        w.opt("sent_at", &self.sent_at);
        w.opt("page_url", &self.page_url);
        w.opt("page_path", &self.page_path);
        w.opt("referrer", &self.referrer);
        let u = &self.utm;
        if *u != NewUtm::default() {
            w.key("utm");
            let mut inner = Obj {
                out: w.out,
                first: true,
            };
            inner.opt("source", &u.source);
            inner.opt("medium", &u.medium);
            inner.opt("campaign", &u.campaign);
            inner.opt("content", &u.content);
            inner.opt("term", &u.term);
            inner.out.push(b'}');
        }
        if let Some((param, value)) = &self.click_id {
            w.key("click_id");
            let mut inner = Obj {
                out: w.out,
                first: true,
            };
            inner.str("param", param);
            inner.str("value", value);
            inner.out.push(b'}');
        }
        for (key, raw) in [
            ("properties", &self.properties),
            ("context", &self.context),
            ("traits", &self.traits),
        ] {
            if !is_empty_object(raw) {
                w.key(key);
                w.out.extend_from_slice(raw.trim().as_bytes());
            }
        }
        if w.first {
            w.out.push(b'{');
        }
        w.out.push(b'}');
    }

    /// The owned event, parsing the three objects (tests and slow paths only).
    pub fn to_event(&self) -> Event {
        let own = |s: &Option<Cow<str>>| s.as_deref().map(str::to_string);
        let map = |raw: &str| -> Map<String, Value> {
            if is_empty_object(raw) {
                return Map::new();
            }
            serde_json::from_str(raw).expect("NewEvent objects are validated JSON objects")
        };
        Event {
            message_id: self.message_id.to_string(),
            event_type: self.event_type,
            event: own(&self.event),
            user_id: own(&self.user_id),
            anonymous_id: own(&self.anonymous_id),
            previous_id: own(&self.previous_id),
            group_id: own(&self.group_id),
            email: own(&self.email),
            timestamp: self.timestamp,
            received_at: self.received_at,
            original_timestamp: own(&self.original_timestamp),
            sent_at: own(&self.sent_at),
            page_url: own(&self.page_url),
            page_path: own(&self.page_path),
            referrer: own(&self.referrer),
            utm: Utm {
                source: own(&self.utm.source),
                medium: own(&self.utm.medium),
                campaign: own(&self.utm.campaign),
                content: own(&self.utm.content),
                term: own(&self.utm.term),
            },
            click_id: self.click_id.as_ref().map(|(param, value)| ClickId {
                param: param.to_string(),
                value: value.to_string(),
            }),
            properties: map(&self.properties),
            context: map(&self.context),
            traits: map(&self.traits),
        }
    }
}

impl Event {
    /// This event as a [`NewEvent`], e.g. to store an event built in code or read back.
    pub fn as_new(&self) -> NewEvent<'_> {
        fn b(s: &Option<String>) -> Option<Cow<'_, str>> {
            s.as_deref().map(Cow::Borrowed)
        }
        let text = |m: &Map<String, Value>| -> Cow<'static, str> {
            if m.is_empty() {
                Cow::Borrowed("")
            } else {
                Cow::Owned(serde_json::to_string(m).expect("a JSON map serializes"))
            }
        };
        NewEvent {
            message_id: Cow::Borrowed(&self.message_id),
            event_type: self.event_type,
            event: b(&self.event),
            user_id: b(&self.user_id),
            anonymous_id: b(&self.anonymous_id),
            previous_id: b(&self.previous_id),
            group_id: b(&self.group_id),
            email: b(&self.email),
            timestamp: self.timestamp,
            received_at: self.received_at,
            original_timestamp: b(&self.original_timestamp),
            sent_at: b(&self.sent_at),
            page_url: b(&self.page_url),
            page_path: b(&self.page_path),
            referrer: b(&self.referrer),
            utm: NewUtm {
                source: b(&self.utm.source),
                medium: b(&self.utm.medium),
                campaign: b(&self.utm.campaign),
                content: b(&self.utm.content),
                term: b(&self.utm.term),
            },
            click_id: self.click_id.as_ref().map(|c| {
                (
                    Cow::Borrowed(c.param.as_str()),
                    Cow::Borrowed(c.value.as_str()),
                )
            }),
            properties: text(&self.properties),
            context: text(&self.context),
            traits: text(&self.traits),
        }
    }
}

/// Absent, or an object without members: skipped, as `Event` skips empty maps.
fn is_empty_object(raw: &str) -> bool {
    let t = raw.trim();
    t.is_empty() || (t.starts_with('{') && t[1..].trim_start() == "}")
}

/// Whether a JSON string needs escapes: a control character, a quote or a backslash.
/// Eight bytes at a time (the classic "has byte less than / equal to" bit tricks).
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let less_than = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let x = u64::from_le_bytes(c.try_into().expect("chunks of eight"));
        let hit = less_than(x, 0x20)
            | zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')));
        if hit != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Writes one JSON object's members.
struct Obj<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl Obj<'_> {
    fn key(&mut self, key: &str) {
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        // Most strings need no escape at all: copied as they are, the rest as serde does.
        if !needs_escape(value.as_bytes()) {
            self.out.push(b'"');
            self.out.extend_from_slice(value.as_bytes());
            self.out.push(b'"');
        } else {
            serde_json::to_writer(&mut *self.out, value).expect("writing to a Vec cannot fail");
        }
    }

    fn opt(&mut self, key: &str, value: &Option<Cow<str>>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }

    fn num(&mut self, key: &str, value: i64) {
        self.key(key);
        // serde_json writes integers with itoa, as `Display` does, without allocating.
        serde_json::to_writer(&mut *self.out, &value).expect("writing to a Vec cannot fail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Event {
        Event {
            message_id: "m-1 \"quoted\" ünï".into(),
            event_type: EventType::Page,
            event: Some("Home\n\u{7f}\\ \u{1}".into()),
            user_id: Some("u1".into()),
            anonymous_id: Some("a1".into()),
            previous_id: None,
            group_id: Some("g".into()),
            email: Some("ann@example.com".into()),
            timestamp: -5,
            received_at: 1_760_000_000_000,
            original_timestamp: Some("2025-01-01T00:00:00Z".into()),
            sent_at: None,
            page_url: Some("https://s.example/p?gclid=1".into()),
            page_path: Some("/p".into()),
            referrer: Some("https://www.google.com/".into()),
            utm: Utm {
                source: Some("google".into()),
                campaign: Some("spring sale".into()),
                ..Utm::default()
            },
            click_id: Some(ClickId {
                param: "gclid".into(),
                value: "1".into(),
            }),
            properties: json!({"n": 1.5, "nested": {"k": [1, "二", null]}, "e": "\u{1F600}"})
                .as_object()
                .unwrap()
                .clone(),
            context: json!({"page": {"url": "x"}}).as_object().unwrap().clone(),
            traits: Map::new(),
        }
    }

    #[test]
    fn the_record_decodes_as_the_event_it_stands_for() {
        let mut events = vec![sample()];
        let mut bare = sample();
        bare.utm = Utm::default();
        bare.click_id = None;
        bare.properties = Map::new();
        bare.context = Map::new();
        bare.email = None;
        events.push(bare);
        for e in events {
            let new = e.as_new();
            let mut out = Vec::new();
            new.write_json(&mut out);
            let back: Event = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, e);
            assert_eq!(new.to_event(), e);
            assert_eq!(new.dims(), e.dims());
            // Byte for byte what serde writes for the owned event.
            assert_eq!(out, serde_json::to_vec(&e).unwrap());
        }
    }

    #[test]
    fn escapes_are_found_in_any_position() {
        let plain = "abcdefghijklmnopqrstuvwxyz0123456789-üé€😀";
        assert!(!needs_escape(plain.as_bytes()));
        for special in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
            for at in 0..plain.len() {
                if !plain.is_char_boundary(at) {
                    continue;
                }
                let s = format!("{}{special}{}", &plain[..at], &plain[at..]);
                assert!(needs_escape(s.as_bytes()), "{s:?}");
            }
        }
        assert!(!needs_escape("\u{7f} \u{20}".as_bytes()));
    }

    #[test]
    fn raw_objects_are_copied_as_sent() {
        let event = sample();
        let mut new = event.as_new();
        new.properties = Cow::Borrowed(" {\"b\": 2, \"a\": [1,\n2]} ");
        new.traits = Cow::Borrowed("{ }");
        let mut out = Vec::new();
        new.write_json(&mut out);
        let back: Event = serde_json::from_slice(&out).unwrap();
        assert_eq!(Value::Object(back.properties), json!({"a": [1, 2], "b": 2}));
        assert!(back.traits.is_empty());
        assert!(!String::from_utf8(out).unwrap().contains("traits"));
    }
}
