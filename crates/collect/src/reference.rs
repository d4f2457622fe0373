//! The Value-based normalization this crate shipped before the borrowed fast path, kept
//! as the oracle the fast path is tested against: both must store the same event, or
//! reject with the same reason, for every message.

use serde_json::{Map, Value};
use throughline_model::{parse_timestamp, ClickId, Event, EventType, Millis, Utm, CLICK_ID_PARAMS};

use crate::url::parse_url;
use crate::{Envelope, IdGen, Rejection};

/// Validates one Segment message and normalizes it into an [`Event`].
pub fn normalize_value(
    message: Value,
    envelope: &Envelope,
    received_at: Millis,
    ids: &mut IdGen,
) -> Result<Event, Rejection> {
    let Value::Object(mut m) = message else {
        return Err(Rejection::of("a message must be a JSON object", None));
    };
    let event_type = match (m.get("type"), envelope.kind) {
        (None | Some(Value::Null), Some(kind)) => kind,
        (Some(Value::String(t)), kind) => match EventType::parse(t) {
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

    let user_id = id_field(&m, "userId")?;
    let anonymous_id = id_field(&m, "anonymousId")?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(Rejection::of(
            "a message needs a `userId` or an `anonymousId`",
            Some("userId"),
        ));
    }
    let previous_id = id_field(&m, "previousId")?;
    if event_type == EventType::Alias && previous_id.is_none() {
        return Err(Rejection::of(
            "an alias needs a `previousId`",
            Some("previousId"),
        ));
    }
    let group_id = id_field(&m, "groupId")?;
    if event_type == EventType::Group && group_id.is_none() {
        return Err(Rejection::of(
            "a group call needs a `groupId`",
            Some("groupId"),
        ));
    }
    let event = match event_type {
        EventType::Track => match m.get("event") {
            Some(Value::String(e)) if !e.trim().is_empty() => Some(e.clone()),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(Rejection::of(
                    "a track needs an `event` name",
                    Some("event"),
                ))
            }
            Some(_) => return Err(Rejection::of("`event` must be a string", Some("event"))),
        },
        EventType::Page | EventType::Screen => match m.get("name") {
            Some(Value::String(n)) => Some(n.clone()),
            None | Some(Value::Null) => None,
            Some(_) => return Err(Rejection::of("`name` must be a string", Some("name"))),
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
        None => ids.next_id(),
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
        Some(_) => Err(Rejection::of(
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
        Some(_) => Err(Rejection::of(
            format!("`{field}` must be an object"),
            Some(field),
        )),
    }
}

fn time_text(m: &Map<String, Value>, field: &'static str) -> Result<Option<String>, Rejection> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::of(
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
