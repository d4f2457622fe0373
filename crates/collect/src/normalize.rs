//! Validation and normalization of Segment messages, one at a time or as a batch.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use throughline_model::{parse_timestamp, ClickId, Event, EventType, Millis, Utm, CLICK_ID_PARAMS};

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
    fn new(error: impl Into<String>, field: Option<&'static str>) -> Rejection {
        Rejection {
            error: error.into(),
            field,
        }
    }
}

/// A parsed request body: the write key it carried, if any, and one result per message.
#[derive(Debug)]
pub struct Batch {
    pub write_key: Option<String>,
    pub messages: Vec<Result<Event, Rejection>>,
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

impl Batch {
    /// Parses the body of `/v1/batch`. Only a body that is not JSON, or has no `batch`
    /// array, fails as a whole; each message is judged on its own.
    pub fn parse(body: &[u8], received_at: Millis, ids: &mut IdGen) -> Result<Batch, Rejection> {
        let parsed: BatchBody = serde_json::from_slice(body)
            .map_err(|e| Rejection::new(format!("invalid JSON: {e}"), None))?;
        let raw = parsed
            .batch
            .ok_or_else(|| Rejection::new("a batch needs a `batch` array", Some("batch")))?;
        if raw.len() > BATCH_MESSAGES_MAX {
            return Err(Rejection::new(
                format!("a batch holds at most {BATCH_MESSAGES_MAX} messages"),
                Some("batch"),
            ));
        }
        let sent_at = parsed.sent_at.as_ref().and_then(Value::as_str);
        let messages = raw
            .into_iter()
            .map(|raw| {
                if raw.get().len() > MESSAGE_BYTES_MAX {
                    return Err(too_large());
                }
                let message: Value = serde_json::from_str(raw.get())
                    .map_err(|e| Rejection::new(format!("invalid JSON: {e}"), None))?;
                let envelope = Envelope {
                    kind: None,
                    sent_at,
                    context: parsed.context.as_ref(),
                    historical: false,
                };
                normalize(message, &envelope, received_at, ids)
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
        body: &[u8],
        kind: EventType,
        received_at: Millis,
        ids: &mut IdGen,
    ) -> Result<Batch, Rejection> {
        if body.len() > MESSAGE_BYTES_MAX {
            return Err(too_large());
        }
        let message: Value = serde_json::from_slice(body)
            .map_err(|e| Rejection::new(format!("invalid JSON: {e}"), None))?;
        let write_key = string_of(message.get("writeKey"));
        let envelope = Envelope {
            kind: Some(kind),
            sent_at: None,
            context: None,
            historical: false,
        };
        let result = normalize(message, &envelope, received_at, ids);
        Ok(Batch {
            write_key,
            messages: vec![result],
        })
    }
}

fn too_large() -> Rejection {
    Rejection::new(
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

    fn next(&mut self) -> String {
        self.counter += 1;
        format!("tl-{:016x}-{:x}", self.seed, self.counter)
    }
}

/// Validates one Segment message and normalizes it into an [`Event`].
pub fn normalize(
    message: Value,
    envelope: &Envelope,
    received_at: Millis,
    ids: &mut IdGen,
) -> Result<Event, Rejection> {
    let Value::Object(mut m) = message else {
        return Err(Rejection::new("a message must be a JSON object", None));
    };
    let event_type = match (m.get("type"), envelope.kind) {
        (None | Some(Value::Null), Some(kind)) => kind,
        (Some(Value::String(t)), kind) => match EventType::parse(t) {
            Some(t) if kind.is_none() || kind == Some(t) => t,
            Some(t) => {
                return Err(Rejection::new(
                    format!("`type` is {t:?} but this endpoint takes {:?}", kind.unwrap()),
                    Some("type"),
                ))
            }
            None => {
                return Err(Rejection::new(
                    format!("unknown message type {t:?}: expected track, identify, page, screen, group or alias"),
                    Some("type"),
                ))
            }
        },
        _ => {
            return Err(Rejection::new(
                "`type` must be one of track, identify, page, screen, group, alias",
                Some("type"),
            ))
        }
    };

    let user_id = id_field(&m, "userId")?;
    let anonymous_id = id_field(&m, "anonymousId")?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(Rejection::new(
            "a message needs a `userId` or an `anonymousId`",
            Some("userId"),
        ));
    }
    let previous_id = id_field(&m, "previousId")?;
    if event_type == EventType::Alias && previous_id.is_none() {
        return Err(Rejection::new(
            "an alias needs a `previousId`",
            Some("previousId"),
        ));
    }
    let group_id = id_field(&m, "groupId")?;
    if event_type == EventType::Group && group_id.is_none() {
        return Err(Rejection::new(
            "a group call needs a `groupId`",
            Some("groupId"),
        ));
    }
    let event = match event_type {
        EventType::Track => match m.get("event") {
            Some(Value::String(e)) if !e.trim().is_empty() => Some(e.clone()),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(Rejection::new(
                    "a track needs an `event` name",
                    Some("event"),
                ))
            }
            Some(_) => return Err(Rejection::new("`event` must be a string", Some("event"))),
        },
        EventType::Page | EventType::Screen => match m.get("name") {
            Some(Value::String(n)) => Some(n.clone()),
            None | Some(Value::Null) => None,
            Some(_) => return Err(Rejection::new("`name` must be a string", Some("name"))),
        },
        _ => None,
    };

    let properties = object_field(&mut m, "properties")?;
    let traits = object_field(&mut m, "traits")?;
    let mut context = object_field(&mut m, "context")?;
    if let Some(outer) = envelope.context {
        for (k, v) in outer {
            context.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    // Segment's clock-skew correction: the client's clock may be wrong, but the interval
    // between the event and its sending is right, so shift it onto the server's clock.
    let (original_text, original_field) = match time_text(&m, "originalTimestamp")? {
        Some(t) => (Some(t), "originalTimestamp"),
        None => (time_text(&m, "timestamp")?, "timestamp"),
    };
    let sent_text = match time_text(&m, "sentAt")? {
        Some(t) => Some(t),
        None => envelope.sent_at.map(str::to_string),
    };
    let original = parse_time(original_text.as_deref(), original_field)?;
    let mut sent = parse_time(sent_text.as_deref(), "sentAt")?;
    let mut received_at = received_at;
    if envelope.historical {
        match parse_time(time_text(&m, "receivedAt")?.as_deref(), "receivedAt")? {
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

    let message_id = match id_field(&m, "messageId")? {
        Some(id) => id,
        None => ids.next(),
    };

    let page = context.get("page").and_then(Value::as_object);
    let from_page_or_props = |key: &str| -> Option<String> {
        let own = matches!(event_type, EventType::Page | EventType::Screen)
            .then(|| properties.get(key).and_then(Value::as_str))
            .flatten();
        own.or_else(|| page.and_then(|p| p.get(key)).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let page_url = from_page_or_props("url");
    let referrer = from_page_or_props("referrer");
    let parsed = page_url.as_deref().map(parse_url);
    let page_path = from_page_or_props("path")
        .or_else(|| parsed.as_ref().map(|u| u.path.to_string()))
        .map(|p| p.split(['?', '#']).next().unwrap_or_default().to_string());

    let campaign = context.get("campaign").and_then(Value::as_object);
    let utm_field = |ctx_key: &str, param: &str| -> Option<String> {
        campaign
            .and_then(|c| c.get(ctx_key))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| parsed.as_ref().and_then(|u| u.param(param)))
            .filter(|s| !s.is_empty())
    };
    let utm = Utm {
        source: utm_field("source", "utm_source"),
        medium: utm_field("medium", "utm_medium"),
        campaign: utm_field("name", "utm_campaign"),
        content: utm_field("content", "utm_content"),
        term: utm_field("term", "utm_term"),
    };
    let click_id = parsed.as_ref().and_then(|u| {
        CLICK_ID_PARAMS.iter().find_map(|p| {
            u.param(p).filter(|v| !v.is_empty()).map(|value| ClickId {
                param: p.to_string(),
                value,
            })
        })
    });
    let email = traits
        .get("email")
        .or_else(|| {
            context
                .get("traits")
                .and_then(Value::as_object)
                .and_then(|t| t.get("email"))
        })
        .and_then(Value::as_str)
        .map(|e| e.trim().to_lowercase())
        .filter(|e| e.contains('@'));

    Ok(Event {
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
        properties,
        context,
        traits,
    })
}

/// Ids are strings in the spec; SDKs in typed languages send numbers too, which Segment
/// accepts and stringifies. Empty strings mean absent.
fn id_field(m: &Map<String, Value>, field: &'static str) -> Result<Option<String>, Rejection> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(Rejection::new(
            format!("`{field}` must be a string"),
            Some(field),
        )),
    }
}

fn object_field(
    m: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Map<String, Value>, Rejection> {
    match m.remove(field) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(Rejection::new(
            format!("`{field}` must be an object"),
            Some(field),
        )),
    }
}

fn time_text(m: &Map<String, Value>, field: &'static str) -> Result<Option<String>, Rejection> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::new(
            format!("`{field}` must be an ISO-8601 string"),
            Some(field),
        )),
    }
}

fn parse_time(text: Option<&str>, field: &'static str) -> Result<Option<Millis>, Rejection> {
    match text {
        None => Ok(None),
        Some(t) => parse_timestamp(t).map(Some).ok_or_else(|| {
            Rejection::new(
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
        let b = Batch::parse(body.to_string().as_bytes(), NOW, &mut IdGen::new(1)).unwrap();
        assert_eq!(b.write_key.as_deref(), Some("wk"));
        let ok: Vec<bool> = b.messages.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, false, false, true]);
        assert!(b.messages[2].as_ref().unwrap_err().error.contains("32 KB"));
        let generated = b.messages[3].as_ref().unwrap();
        assert!(generated.message_id.starts_with("tl-"));
        assert!(Batch::parse(b"{not json", NOW, &mut IdGen::new(1)).is_err());
    }
}
