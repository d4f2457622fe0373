//! Validation and normalization of Segment messages, one at a time or as a batch.
//!
//! The fast path reads a message with [`crate::message`] and returns a [`NewEvent`] that
//! borrows from the request body: `properties`, `context` and `traits` stay the text the
//! client sent. [`normalize`] is the same function for a message already held as a
//! `serde_json::Value` (other file formats, the demo generator, tests).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use throughline_model::{
    parse_timestamp, Event, EventType, Millis, NewEvent, NewUtm, CLICK_ID_PARAMS,
};

use crate::message::{self, Field, Message, Picked, EMAIL_KEY, PAGE_KEYS};
use crate::url::parse_url;
use crate::{BATCH_MESSAGES_MAX, MESSAGE_BYTES_MAX};

/// Why one message was not stored: a sentence for people and the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl Rejection {
    pub(crate) fn of(error: impl Into<String>, field: Option<&'static str>) -> Rejection {
        Rejection {
            error: error.into(),
            field,
        }
    }
}

fn invalid_json(e: impl std::fmt::Display) -> Rejection {
    Rejection::of(format!("invalid JSON: {e}"), None)
}

/// A parsed request body: the write key it carried, if any, and one result per message,
/// borrowing from the body.
#[derive(Debug)]
pub struct Batch<'a> {
    pub write_key: Option<String>,
    pub messages: Vec<Result<NewEvent<'a>, Rejection>>,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(rename = "sentAt")]
    sent_at: Option<Value>,
    #[serde(rename = "writeKey")]
    write_key: Option<Value>,
    context: Option<Map<String, Value>>,
}

impl<'a> Batch<'a> {
    /// Parses the body of `/v1/batch`. Only a body that is not JSON, or has no `batch`
    /// array, fails as a whole; each message is judged on its own.
    pub fn parse(
        body: &'a [u8],
        received_at: Millis,
        ids: &mut IdGen,
    ) -> Result<Batch<'a>, Rejection> {
        let parsed: BatchBody = serde_json::from_slice(body).map_err(invalid_json)?;
        let raw = parsed
            .batch
            .ok_or_else(|| Rejection::of("a batch needs a `batch` array", Some("batch")))?;
        if raw.len() > BATCH_MESSAGES_MAX {
            return Err(Rejection::of(
                format!("a batch holds at most {BATCH_MESSAGES_MAX} messages"),
                Some("batch"),
            ));
        }
        let sent_at = parsed.sent_at.as_ref().and_then(Value::as_str);
        let envelope = Envelope {
            kind: None,
            sent_at,
            context: parsed.context.as_ref(),
            historical: false,
        };
        let messages = raw
            .into_iter()
            .map(|raw| {
                if raw.get().len() > MESSAGE_BYTES_MAX {
                    return Err(too_large());
                }
                normalize_json(raw.get(), &envelope, received_at, ids)
            })
            .collect();
        Ok(Batch {
            write_key: string_of(parsed.write_key.as_ref()),
            messages,
        })
    }

    /// Parses the body of a single-message endpoint such as `/v1/track`: the endpoint
    /// names the type, and a `type` in the body must agree with it if present.
    pub fn parse_single(
        body: &'a [u8],
        kind: EventType,
        received_at: Millis,
        ids: &mut IdGen,
    ) -> Result<Batch<'a>, Rejection> {
        if body.len() > MESSAGE_BYTES_MAX {
            return Err(too_large());
        }
        let text = std::str::from_utf8(body).map_err(invalid_json)?;
        let message = message::parse(text).map_err(invalid_json)?;
        let write_key = match message.as_ref().map(|m| &m.write_key) {
            Some(Field::Str(k)) if !k.is_empty() => Some(k.to_string()),
            _ => None,
        };
        let envelope = Envelope {
            kind: Some(kind),
            sent_at: None,
            context: None,
            historical: false,
        };
        let result = normalize_parsed(message, &envelope, received_at, ids);
        Ok(Batch {
            write_key,
            messages: vec![result],
        })
    }
}

fn too_large() -> Rejection {
    Rejection::of(
        format!("a message must be at most {MESSAGE_BYTES_MAX} bytes (32 KB)"),
        None,
    )
}

/// What a message inherits from the request that carried it.
#[derive(Default)]
pub struct Envelope<'a> {
    /// The type the endpoint implies (`/v1/track` => track); `None` for batch and import.
    pub kind: Option<EventType>,
    /// The batch's `sentAt`, used when the message has none of its own.
    pub sent_at: Option<&'a str>,
    /// The batch's `context`, merged under the message's own.
    pub context: Option<&'a Map<String, Value>>,
    /// Historical messages (bulk import): they were received long before `received_at`,
    /// so clock-skew correction uses the message's own `receivedAt` when it has one and is
    /// skipped otherwise (the client's timestamp is kept as sent).
    pub historical: bool,
}

/// Generates message ids for messages that arrive without one: a per-process random seed
/// and a counter, so ids are unique without coordination and the function stays pure.
pub struct IdGen {
    seed: u64,
    counter: u64,
}

impl IdGen {
    pub fn new(seed: u64) -> IdGen {
        IdGen { seed, counter: 0 }
    }

    pub(crate) fn next_id(&mut self) -> String {
        self.counter += 1;
        format!("tl-{:016x}-{:x}", self.seed, self.counter)
    }
}

/// Validates one Segment message held as a `Value` and normalizes it into an [`Event`]:
/// the same rules as [`normalize_json`], which does the work.
pub fn normalize(
    message: Value,
    envelope: &Envelope,
    received_at: Millis,
    ids: &mut IdGen,
) -> Result<Event, Rejection> {
    let text = serde_json::to_string(&message).map_err(invalid_json)?;
    normalize_json(&text, envelope, received_at, ids).map(|e| e.to_event())
}

/// Validates one Segment message (JSON text) and normalizes it into a [`NewEvent`] that
/// borrows from `text`.
pub fn normalize_json<'a>(
    text: &'a str,
    envelope: &Envelope,
    received_at: Millis,
    ids: &mut IdGen,
) -> Result<NewEvent<'a>, Rejection> {
    let message = message::parse(text).map_err(invalid_json)?;
    normalize_parsed(message, envelope, received_at, ids)
}

/// The raw text of one of the three objects and what was picked from it; `None` text
/// for absent or null.
struct Part<'a, T> {
    text: Option<Cow<'a, str>>,
    object: bool,
    view: T,
}

fn part<'a, const N: usize>(
    raw: Option<&'a RawValue>,
    keys: [&'static str; N],
) -> Result<Part<'a, Picked<'a, N>>, Rejection> {
    let text = raw.map(RawValue::get).filter(|t| *t != "null");
    let view = match text {
        Some(t) => message::pick(t, keys).map_err(invalid_json)?,
        None => Picked::default(),
    };
    Ok(Part {
        text: text.map(Cow::Borrowed),
        object: view.object,
        view,
    })
}

fn object_check<T>(part: &Part<T>, field: &'static str) -> Result<(), Rejection> {
    if part.text.is_some() && !part.object {
        return Err(Rejection::of(
            format!("`{field}` must be an object"),
            Some(field),
        ));
    }
    Ok(())
}

fn normalize_parsed<'a>(
    message: Option<Message<'a>>,
    envelope: &Envelope,
    received_at: Millis,
    ids: &mut IdGen,
) -> Result<NewEvent<'a>, Rejection> {
    let Some(m) = message else {
        return Err(Rejection::of("a message must be a JSON object", None));
    };
    // The three objects are validated first: a message whose JSON `serde_json::Value`
    // would refuse is invalid JSON, whatever else is wrong with it.
    let properties = part(m.properties, PAGE_KEYS)?;
    let traits = part(m.traits, EMAIL_KEY)?;
    let context_text = m.context.map(RawValue::get).filter(|t| *t != "null");
    let mut context_view = match context_text {
        Some(t) => message::context_view(t).map_err(invalid_json)?,
        None => message::ContextView::default(),
    };
    let mut context = Part {
        text: context_text.map(Cow::Borrowed),
        object: context_view.object,
        view: (),
    };

    let event_type = match (&m.kind, envelope.kind) {
        (Field::Absent | Field::Null, Some(kind)) => kind,
        (Field::Str(t), kind) => match EventType::parse(t) {
            Some(t) if kind.is_none() || kind == Some(t) => t,
            Some(t) => {
                return Err(Rejection::of(
                    format!("`type` is {t:?} but this endpoint takes {:?}", kind.unwrap()),
                    Some("type"),
                ))
            }
            None => {
                return Err(Rejection::of(
                    format!("unknown message type {t:?}: expected track, identify, page, screen, group or alias"),
                    Some("type"),
                ))
            }
        },
        _ => {
            return Err(Rejection::of(
                "`type` must be one of track, identify, page, screen, group, alias",
                Some("type"),
            ))
        }
    };

    let user_id = id_field(m.user_id, "userId")?;
    let anonymous_id = id_field(m.anonymous_id, "anonymousId")?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(Rejection::of(
            "a message needs a `userId` or an `anonymousId`",
            Some("userId"),
        ));
    }
    let previous_id = id_field(m.previous_id, "previousId")?;
    if event_type == EventType::Alias && previous_id.is_none() {
        return Err(Rejection::of(
            "an alias needs a `previousId`",
            Some("previousId"),
        ));
    }
    let group_id = id_field(m.group_id, "groupId")?;
    if event_type == EventType::Group && group_id.is_none() {
        return Err(Rejection::of(
            "a group call needs a `groupId`",
            Some("groupId"),
        ));
    }
    let event = match event_type {
        EventType::Track => match m.event {
            Field::Str(e) if !e.trim().is_empty() => Some(e),
            Field::Str(_) | Field::Absent | Field::Null => {
                return Err(Rejection::of(
                    "a track needs an `event` name",
                    Some("event"),
                ))
            }
            _ => return Err(Rejection::of("`event` must be a string", Some("event"))),
        },
        EventType::Page | EventType::Screen => match m.name {
            Field::Str(n) => Some(n),
            Field::Absent | Field::Null => None,
            _ => return Err(Rejection::of("`name` must be a string", Some("name"))),
        },
        _ => None,
    };

    object_check(&properties, "properties")?;
    object_check(&traits, "traits")?;
    object_check(&context, "context")?;
    if let Some(outer) = envelope.context.filter(|c| !c.is_empty()) {
        let mut merged: Map<String, Value> = match &context.text {
            Some(t) => serde_json::from_str(t).map_err(invalid_json)?,
            None => Map::new(),
        };
        for (k, v) in outer {
            merged.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let text = serde_json::to_string(&merged).map_err(invalid_json)?;
        // Owned now: the picks are read again from the merged text.
        let view = message::context_view(&text).map_err(invalid_json)?;
        context_view = own_context_view(view);
        context = Part {
            text: Some(Cow::Owned(text)),
            object: true,
            view: (),
        };
    }

    // Segment's clock-skew correction: the client's clock may be wrong, but the interval
    // between the event and its sending is right, so shift it onto the server's clock.
    let (original_text, original_field) =
        match time_text(m.original_timestamp, "originalTimestamp")? {
            Some(t) => (Some(t), "originalTimestamp"),
            None => (time_text(m.timestamp, "timestamp")?, "timestamp"),
        };
    let sent_text = match time_text(m.sent_at, "sentAt")? {
        Some(t) => Some(t),
        None => envelope.sent_at.map(|s| Cow::Owned(s.to_string())),
    };
    let original = parse_time(original_text.as_deref(), original_field)?;
    let mut sent = parse_time(sent_text.as_deref(), "sentAt")?;
    let mut received_at = received_at;
    if envelope.historical {
        match parse_time(
            time_text(m.received_at, "receivedAt")?.as_deref(),
            "receivedAt",
        )? {
            Some(r) => received_at = r,
            None => {
                sent = None;
                received_at = original.unwrap_or(received_at);
            }
        }
    }
    let timestamp = match (original, sent) {
        (Some(o), Some(s)) => received_at - (s - o),
        (Some(o), None) => o,
        (None, _) => received_at,
    };

    let message_id = match id_field(m.message_id, "messageId")? {
        Some(id) => id,
        None => Cow::Owned(ids.next_id()),
    };

    // A page or screen call's own properties win over context.page; an empty string
    // counts as a value (and is then dropped), as it always has.
    let page = &context_view.page;
    let is_page = matches!(event_type, EventType::Page | EventType::Screen);
    let from_page_or_props = |i: usize| -> Option<Cow<'a, str>> {
        let own = is_page
            .then(|| str_of(&properties.view.fields[i]))
            .flatten();
        own.or_else(|| page.object.then(|| str_of(&page.fields[i])).flatten())
            .filter(|s| !s.is_empty())
    };
    let page_url = from_page_or_props(0);
    let referrer = from_page_or_props(1);
    let parsed = page_url.as_deref().map(parse_url);
    let page_path = from_page_or_props(2)
        .or_else(|| parsed.as_ref().map(|u| Cow::Owned(u.path.to_string())))
        .map(cut_query);

    // The URL's query is read once for the UTM and click-id parameters.
    let [utm_source, utm_medium, utm_campaign, utm_content, utm_term, gclid, gbraid, wbraid, dclid, msclkid, fbclid, ttclid, li_fat_id, twclid, yclid] =
        match &parsed {
            Some(u) => u.params(URL_PARAMS),
            None => Default::default(),
        };
    let campaign = &context_view.campaign;
    let utm_field = |i: usize, from_url: Option<String>| -> Option<Cow<'a, str>> {
        campaign
            .object
            .then(|| str_of(&campaign.fields[i]))
            .flatten()
            .or_else(|| from_url.map(Cow::Owned))
            .filter(|s| !s.is_empty())
    };
    let utm = NewUtm {
        source: utm_field(0, utm_source),
        medium: utm_field(1, utm_medium),
        campaign: utm_field(2, utm_campaign),
        content: utm_field(3, utm_content),
        term: utm_field(4, utm_term),
    };
    let click_values = [
        gclid, gbraid, wbraid, dclid, msclkid, fbclid, ttclid, li_fat_id, twclid, yclid,
    ];
    let click_id = CLICK_ID_PARAMS.iter().zip(click_values).find_map(|(p, v)| {
        v.filter(|v| !v.is_empty())
            .map(|value| (Cow::Borrowed(*p), Cow::Owned(value)))
    });
    // `traits.email` when traits has the member at all, else `context.traits.email`.
    let email_field = match &traits.view.fields[0] {
        Field::Absent if context_view.traits.object => &context_view.traits.fields[0],
        f => f,
    };
    let email = str_of(email_field)
        .map(|e| e.trim().to_lowercase())
        .filter(|e| e.contains('@'))
        .map(Cow::Owned);

    Ok(NewEvent {
        message_id,
        event_type,
        event,
        user_id,
        anonymous_id,
        previous_id,
        group_id,
        email,
        timestamp,
        received_at,
        original_timestamp: original_text,
        sent_at: sent_text,
        page_url,
        page_path,
        referrer,
        utm,
        click_id,
        properties: properties.text.unwrap_or_default(),
        context: context.text.unwrap_or_default(),
        traits: traits.text.unwrap_or_default(),
    })
}

/// The query parameters normalization reads: the UTM ones in `NewUtm` order, then
/// [`CLICK_ID_PARAMS`] in order.
const URL_PARAMS: [&str; 15] = [
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
    CLICK_ID_PARAMS[0],
    CLICK_ID_PARAMS[1],
    CLICK_ID_PARAMS[2],
    CLICK_ID_PARAMS[3],
    CLICK_ID_PARAMS[4],
    CLICK_ID_PARAMS[5],
    CLICK_ID_PARAMS[6],
    CLICK_ID_PARAMS[7],
    CLICK_ID_PARAMS[8],
    CLICK_ID_PARAMS[9],
];

/// A context view read from text this function owns, made independent of it.
fn own_context_view(v: message::ContextView<'_>) -> message::ContextView<'static> {
    fn own<const N: usize>(p: Picked<'_, N>) -> Picked<'static, N> {
        Picked {
            object: p.object,
            fields: p.fields.map(|f| match f {
                Field::Str(s) => Field::Str(Cow::Owned(s.into_owned())),
                Field::Absent => Field::Absent,
                Field::Null => Field::Null,
                Field::Num(n) => Field::Num(n),
                Field::Bool => Field::Bool,
                Field::Array => Field::Array,
                Field::Object => Field::Object,
            }),
        }
    }
    message::ContextView {
        object: v.object,
        page: own(v.page),
        campaign: own(v.campaign),
        traits: own(v.traits),
    }
}

/// A string member, borrowed where the field is.
fn str_of<'a>(f: &Field<'a>) -> Option<Cow<'a, str>> {
    match f {
        Field::Str(s) => Some(s.clone()),
        _ => None,
    }
}

/// A path without its query or fragment.
fn cut_query(p: Cow<'_, str>) -> Cow<'_, str> {
    match p.find(['?', '#']) {
        None => p,
        Some(at) => match p {
            Cow::Borrowed(b) => Cow::Borrowed(&b[..at]),
            Cow::Owned(mut o) => {
                o.truncate(at);
                Cow::Owned(o)
            }
        },
    }
}

/// Ids are strings in the spec; SDKs in typed languages send numbers too, which Segment
/// accepts and stringifies. Empty strings mean absent.
fn id_field<'a>(f: Field<'a>, field: &'static str) -> Result<Option<Cow<'a, str>>, Rejection> {
    match f {
        Field::Absent | Field::Null => Ok(None),
        Field::Str(s) if s.trim().is_empty() => Ok(None),
        Field::Str(s) => Ok(Some(s)),
        Field::Num(n) => Ok(Some(Cow::Owned(n.to_string()))),
        _ => Err(Rejection::of(
            format!("`{field}` must be a string"),
            Some(field),
        )),
    }
}

fn time_text<'a>(f: Field<'a>, field: &'static str) -> Result<Option<Cow<'a, str>>, Rejection> {
    match f {
        Field::Absent | Field::Null => Ok(None),
        Field::Str(s) => Ok(Some(s)),
        _ => Err(Rejection::of(
            format!("`{field}` must be an ISO-8601 string"),
            Some(field),
        )),
    }
}

fn parse_time(text: Option<&str>, field: &'static str) -> Result<Option<Millis>, Rejection> {
    match text {
        None => Ok(None),
        Some(t) => parse_timestamp(t).map(Some).ok_or_else(|| {
            Rejection::of(
                format!("`{field}` is not an ISO-8601 timestamp: {t:?}"),
                Some(field),
            )
        }),
    }
}

fn string_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: Millis = 1_760_000_000_000;

    fn one(v: Value, kind: Option<EventType>) -> Result<Event, Rejection> {
        let env = Envelope {
            kind,
            ..Envelope::default()
        };
        normalize(v, &env, NOW, &mut IdGen::new(7))
    }

    fn field_of(v: Value, kind: Option<EventType>) -> Option<&'static str> {
        one(v, kind).unwrap_err().field
    }

    #[test]
    fn each_rule_names_its_field() {
        let t = Some(EventType::Track);
        assert_eq!(field_of(json!({"event": "x"}), t), Some("userId"));
        assert_eq!(field_of(json!({"userId": "u"}), t), Some("event"));
        assert_eq!(
            field_of(json!({"userId": "u", "event": ""}), t),
            Some("event")
        );
        assert_eq!(
            field_of(json!({"type": "alias", "userId": "u"}), None),
            Some("previousId")
        );
        assert_eq!(
            field_of(json!({"userId": "u", "event": "x", "timestamp": "soon"}), t),
            Some("timestamp")
        );
        assert_eq!(
            field_of(json!({"userId": "u", "event": "x", "sentAt": "2024-99"}), t),
            Some("sentAt")
        );
        assert_eq!(
            field_of(json!({"type": "nope", "userId": "u"}), None),
            Some("type")
        );
        assert_eq!(field_of(json!({"userId": "u"}), None), Some("type"));
        assert_eq!(
            field_of(json!({"userId": "u", "event": "x", "properties": [1]}), t),
            Some("properties")
        );
    }

    #[test]
    fn clock_skew_is_corrected_from_sent_at() {
        // The client clock runs 1 hour fast; the event happened 5 s before sending.
        let e = one(
            json!({"userId": "u", "event": "x",
                   "timestamp": "2025-10-09T10:00:00.000Z",
                   "sentAt": "2025-10-09T10:00:05.000Z"}),
            Some(EventType::Track),
        )
        .unwrap();
        assert_eq!(e.timestamp, NOW - 5_000);
        assert_eq!(
            e.original_timestamp.as_deref(),
            Some("2025-10-09T10:00:00.000Z")
        );
        let no_sent = one(
            json!({"userId": "u", "event": "x", "timestamp": "2025-10-09T10:00:00.000Z"}),
            Some(EventType::Track),
        )
        .unwrap();
        assert_eq!(
            no_sent.timestamp,
            parse_timestamp("2025-10-09T10:00:00Z").unwrap()
        );
    }

    #[test]
    fn historical_messages_keep_their_time() {
        let msg = json!({"userId": "u", "event": "x",
                         "timestamp": "2025-01-01T10:00:00.000Z",
                         "sentAt": "2025-01-01T10:00:05.000Z"});
        let env = Envelope {
            kind: Some(EventType::Track),
            historical: true,
            ..Envelope::default()
        };
        let e = normalize(msg.clone(), &env, NOW, &mut IdGen::new(1)).unwrap();
        assert_eq!(
            e.timestamp,
            parse_timestamp("2025-01-01T10:00:00Z").unwrap()
        );
        assert_eq!(e.received_at, e.timestamp);
        // With the receivedAt of an export, the correction is the one the server made.
        let mut with_received = msg;
        with_received["receivedAt"] = json!("2025-01-01T10:00:06.000Z");
        let e = normalize(with_received, &env, NOW, &mut IdGen::new(1)).unwrap();
        assert_eq!(
            e.timestamp,
            parse_timestamp("2025-01-01T10:00:01Z").unwrap()
        );
    }

    #[test]
    fn pulls_page_utm_click_id_and_email_into_columns() {
        let e = one(
            json!({"type": "page", "anonymousId": "a1", "name": "Home",
                   "properties": {"url": "https://shop.example/landing?utm_source=google&utm_medium=cpc&utm_campaign=spring%20sale&gclid=abc",
                                  "referrer": "https://www.google.com/"},
                   "context": {"traits": {"email": " Ann@Example.com "}}}),
            None,
        )
        .unwrap();
        assert_eq!(e.page_path.as_deref(), Some("/landing"));
        assert_eq!(e.utm.source.as_deref(), Some("google"));
        assert_eq!(e.utm.campaign.as_deref(), Some("spring sale"));
        assert_eq!(e.click_id.as_ref().map(|c| c.param.as_str()), Some("gclid"));
        assert_eq!(e.referrer.as_deref(), Some("https://www.google.com/"));
        assert_eq!(e.email.as_deref(), Some("ann@example.com"));
        assert_eq!(e.event.as_deref(), Some("Home"));
        // context.campaign wins over the URL, as analytics.js fills it from the URL anyway.
        let e = one(
            json!({"type": "track", "event": "x", "userId": 42,
                   "context": {"campaign": {"source": "news", "medium": "email"},
                               "page": {"url": "https://s.example/?utm_source=other"}}}),
            None,
        )
        .unwrap();
        assert_eq!(e.utm.source.as_deref(), Some("news"));
        assert_eq!(e.user_id.as_deref(), Some("42"));
    }

    #[test]
    fn a_batch_keeps_good_messages_around_bad_ones() {
        let big = "x".repeat(MESSAGE_BYTES_MAX);
        let body = json!({"batch": [
            {"type": "track", "userId": "u", "event": "a", "messageId": "m1"},
            {"type": "track", "userId": "u"},
            {"type": "track", "userId": "u", "event": "big", "properties": {"p": big}},
            {"type": "identify", "anonymousId": "a", "traits": {"plan": "pro"}}
        ], "sentAt": "2025-10-09T10:00:00Z", "writeKey": "wk"});
        let text = body.to_string();
        let b = Batch::parse(text.as_bytes(), NOW, &mut IdGen::new(1)).unwrap();
        assert_eq!(b.write_key.as_deref(), Some("wk"));
        let ok: Vec<bool> = b.messages.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, false, false, true]);
        assert!(b.messages[2].as_ref().unwrap_err().error.contains("32 KB"));
        let generated = b.messages[3].as_ref().unwrap();
        assert!(generated.message_id.starts_with("tl-"));
        assert!(Batch::parse(b"{not json", NOW, &mut IdGen::new(1)).is_err());
    }

    /// The reference (the Value-based implementation) on JSON text: text it cannot parse
    /// is invalid JSON.
    fn reference(text: &str, env: &Envelope, seed: u64) -> Result<Event, Rejection> {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => crate::reference::normalize_value(v, env, NOW, &mut IdGen::new(seed)),
            Err(e) => Err(invalid_json(e)),
        }
    }

    fn agree(text: &str, env: &Envelope) {
        let want = reference(text, env, 3);
        let got = normalize_json(text, env, NOW, &mut IdGen::new(3)).map(|e| {
            // The stored record decodes as the event it stands for.
            let mut record = Vec::new();
            e.write_json(&mut record);
            let back: Event = serde_json::from_slice(&record).expect("record decodes");
            assert_eq!(back, e.to_event(), "{text}");
            back
        });
        match (&want, &got) {
            (Err(w), Err(g)) if w.error.starts_with("invalid JSON") => {
                assert!(g.error.starts_with("invalid JSON"), "{text}: {g:?}")
            }
            _ => assert_eq!(got, want, "{text}"),
        }
    }

    fn envelopes(outer: &Map<String, Value>) -> Vec<Envelope<'_>> {
        vec![
            Envelope::default(),
            Envelope {
                kind: Some(EventType::Track),
                ..Envelope::default()
            },
            Envelope {
                kind: Some(EventType::Page),
                sent_at: Some("2025-10-09T10:00:03Z"),
                context: Some(outer),
                historical: false,
            },
            Envelope {
                historical: true,
                ..Envelope::default()
            },
        ]
    }

    const CORNERS: &[&str] = &[
        r#"{"type":"track","userId":"u","event":"e","properties":null,"context":null,"traits":null}"#,
        r#"{"type":"track","userId":"u","event":"e","properties":[]}"#,
        r#"{"type":"track","userId":"u","event":"e","context":"x"}"#,
        r#"{"type":"identify","userId":"u","traits":5}"#,
        r#"{"type":"track","userId":"a","userId":"b","event":"e","event":"f"}"#,
        r#"{"type":"track","userId":42,"event":"e"}"#,
        r#"{"type":"track","userId":1.5,"anonymousId":-3,"event":"e"}"#,
        r#"{"type":"track","userId":true,"event":"e"}"#,
        r#"{"type":"track","userId":{"a":1},"event":"e"}"#,
        r#"{"type":"track","userId":"u","anonymousId":"","event":"  "}"#,
        r#"{"type":"track","userId":" ","anonymousId":"a","event":7}"#,
        r#"{"type":"page","anonymousId":"a","properties":{"url":""},"context":{"page":{"url":"https://x.example/p?gclid=9"}}}"#,
        r#"{"type":"page","anonymousId":"a","name":5}"#,
        r#"{"type":"screen","anonymousId":"a","name":"","properties":{"url":3,"path":"/own?q#f"},"context":{"page":{"url":"https://x.example/a/b?utm_medium=m%20x&fbclid=&msclkid=z"}}}"#,
        r#"{"type":"track","anonymousId":"a","event":"e","properties":{"url":"https://ignored.example/"},"context":{"page":"not an object","campaign":{"source":"","medium":5,"name":"n"}}}"#,
        r#"{"type":"track","anonymousId":"a","event":"e","context":{"page":{"url":"https://x.example/?utm_source=s&utm_medium=m"},"campaign":{"source":"","medium":5}}}"#,
        r#"{"type":"identify","userId":"u","traits":{"email":null},"context":{"traits":{"email":"a@b.example"}}}"#,
        r#"{"type":"identify","userId":"u","traits":{"plan":"pro"},"context":{"traits":{"email":" A@B.Example "}}}"#,
        r#"{"type":"identify","userId":"u","context":{"traits":["a@b.example"]}}"#,
        r#"{"type":"identify","userId":"u","traits":{"email":"no-at-sign"}}"#,
        r#"{"type":"track","userId":"u","event":"e","originalTimestamp":5}"#,
        r#"{"type":"track","userId":"u","event":"e","timestamp":"soon"}"#,
        r#"{"type":"track","userId":"u","event":"e","originalTimestamp":"2025-10-09T09:59:00Z","timestamp":"2025-01-01T00:00:00Z","sentAt":"2025-10-09T10:00:00Z"}"#,
        r#"{"type":"track","userId":"u","event":"e","timestamp":"2025-10-09T09:59:00Z","receivedAt":"2025-10-09T10:00:00Z","sentAt":"2025-10-09T09:59:30Z"}"#,
        r#"{"type":"track","userId":"u","event":"e","receivedAt":5}"#,
        r#"{"type":"track","userId":"u","event":"e","messageId":12345}"#,
        r#"{"type":"track","userId":"u","event":"e","messageId":""}"#,
        r#"{"type":"track","userId":"u","event":"a\"b\u00e9\ud83d\ude00","properties":{"k\u00e9y":"v\n"}}"#,
        r#"{"type":"track","userId":"u","event":"e","properties":{"bad":"\ud800"}}"#,
        r#"{"type":"track","userId":"u","event":"e","properties":{"big":1e400}}"#,
        r#"{"type":"track","userId":"u","event":"e","integrations":{"All":false},"version":2,"channel":"server"}"#,
        r#"{"type":"alias","userId":"u"}"#,
        r#"{"type":"alias","userId":"u","previousId":"p"}"#,
        r#"{"type":"group","userId":"u"}"#,
        r#"{"type":"group","userId":"u","groupId":7,"traits":{"name":"Ünïcode"}}"#,
        r#"{"type":"nope","userId":"u"}"#,
        r#"{"type":5,"userId":"u"}"#,
        r#"{"userId":"u","event":"e"}"#,
        r#"{"type":"track","event":"e"}"#,
        r#"[1,2]"#,
        r#""a string""#,
        r#"{"type":"track","userId":"u","event":"e"} trailing"#,
        r#"{"type":"track","userId":"u","event":"e","properties":{"a":{"b":{"c":[1,[2,[3]]]}}}}"#,
        r#"{"type":"page","anonymousId":"a","context":{"page":{"url":"https://x.example/p"},"page":7}}"#,
    ];

    /// The fast path stores what the Value-based normalization stored, or rejects with
    /// the same reason, on every demo message and on the corner cases above.
    #[test]
    fn the_fast_path_agrees_with_the_value_based_reference() {
        let outer = json!({"library": {"name": "batch-lib"},
                           "page": {"url": "https://o.example/x?utm_source=outer"}})
        .as_object()
        .unwrap()
        .clone();
        let envs = envelopes(&outer);
        for text in CORNERS {
            for env in &envs {
                agree(text, env);
            }
        }
        let deep = |n: usize| {
            format!(
                r#"{{"type":"track","userId":"u","event":"e","properties":{{"d":{}{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        for n in [124, 125, 126, 127] {
            agree(&deep(n), &Envelope::default());
        }
        for brand in [
            throughline_demo::Brand::Headphones,
            throughline_demo::Brand::Subscription,
        ] {
            let cfg = throughline_demo::DemoConfig::new(brand, 40, 5);
            for message in throughline_demo::messages(&cfg) {
                let text = message.to_string();
                for env in &envs {
                    agree(&text, env);
                }
            }
        }
    }
}
