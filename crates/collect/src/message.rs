//! The parts of a Segment message that normalization reads, parsed without building JSON
//! trees.
//!
//! A message is read in one pass into [`Message`]: the scalar fields normalization looks
//! at, and `properties`, `context` and `traits` as the raw text the client sent. Those
//! three are then checked once more by [`pick`], which accepts exactly the JSON that
//! `serde_json::Value` accepts (numbers in range, valid escapes, bounded nesting), so
//! the stored record always decodes, and picks out the few members normalization needs
//! (page URL and referrer, campaign, email) on the way. Nothing here allocates except
//! for strings with escapes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
use serde_json::value::RawValue;
use serde_json::Number;

/// Containers nested inside `properties`, `context` or `traits` at most, counting the
/// object itself: the stored record adds one level and `serde_json` reads 127 at most,
/// the same bound a whole message had when it was parsed as one `Value`.
pub const NESTING_DEPTH_MAX: usize = 126;

/// One scalar-ish field as the message holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Field<'a> {
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
    Num(Number),
    Bool,
    Array,
    Object,
}

/// A message's top-level fields; `None` for a body that is not a JSON object.
#[derive(Default)]
pub struct Message<'a> {
    pub kind: Field<'a>,
    pub user_id: Field<'a>,
    pub anonymous_id: Field<'a>,
    pub previous_id: Field<'a>,
    pub group_id: Field<'a>,
    pub message_id: Field<'a>,
    pub event: Field<'a>,
    pub name: Field<'a>,
    pub timestamp: Field<'a>,
    pub original_timestamp: Field<'a>,
    pub sent_at: Field<'a>,
    pub received_at: Field<'a>,
    pub write_key: Field<'a>,
    pub properties: Option<&'a RawValue>,
    pub context: Option<&'a RawValue>,
    pub traits: Option<&'a RawValue>,
}

/// Parses one message: `Ok(None)` when it is valid JSON but not an object.
pub fn parse(text: &str) -> Result<Option<Message<'_>>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let message = de.deserialize_any(MessageVisitor)?;
    de.end()?;
    Ok(message)
}

struct MessageVisitor;

impl<'de> Visitor<'de> for MessageVisitor {
    type Value = Option<Message<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut m = Message::default();
        let field = FieldSeed { depth: 1 };
        // Later duplicates win, as they do in a `serde_json::Map`.
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key.0.as_ref() {
                "properties" => {
                    m.properties = Some(map.next_value()?);
                    continue;
                }
                "context" => {
                    m.context = Some(map.next_value()?);
                    continue;
                }
                "traits" => {
                    m.traits = Some(map.next_value()?);
                    continue;
                }
                "type" => &mut m.kind,
                "userId" => &mut m.user_id,
                "anonymousId" => &mut m.anonymous_id,
                "previousId" => &mut m.previous_id,
                "groupId" => &mut m.group_id,
                "messageId" => &mut m.message_id,
                "event" => &mut m.event,
                "name" => &mut m.name,
                "timestamp" => &mut m.timestamp,
                "originalTimestamp" => &mut m.original_timestamp,
                "sentAt" => &mut m.sent_at,
                "receivedAt" => &mut m.received_at,
                "writeKey" => &mut m.write_key,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = map.next_value_seed(field)?;
        }
        Ok(Some(m))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// An object key, borrowed unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Reads a [`Field`], validating containers it skips at `depth`.
#[derive(Clone, Copy)]
struct FieldSeed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Field<'de>, E> {
        Ok(Field::Num(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Field<'de>, E> {
        Ok(Field::Num(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Field<'de>, E> {
        Ok(Number::from_f64(v).map_or(Field::Null, Field::Num))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Field<'de>, E> {
        Ok(Field::Bool)
    }
    fn visit_unit<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }
    fn visit_none<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field<'de>, A::Error> {
        Valid { depth: self.depth }.visit_seq(seq)?;
        Ok(Field::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<'de>, A::Error> {
        Valid { depth: self.depth }.visit_map(map)?;
        Ok(Field::Object)
    }
}

/// Accepts exactly what `serde_json::Value` accepts, within [`NESTING_DEPTH_MAX`]
/// containers counted from depth `depth`, and keeps nothing.
#[derive(Clone, Copy)]
struct Valid {
    depth: usize,
}

impl Valid {
    fn enter<E: de::Error>(self) -> Result<Valid, E> {
        let depth = self.depth + 1;
        if depth > NESTING_DEPTH_MAX {
            return Err(E::custom(format!(
                "nested deeper than {NESTING_DEPTH_MAX} levels"
            )));
        }
        Ok(Valid { depth })
    }
}

impl<'de> DeserializeSeed<'de> for Valid {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Valid {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// What [`Pick`] found in one value: whether it is an object, and its members named by
/// the pick's keys (the last of duplicates, as in a `serde_json::Map`).
#[derive(Debug)]
pub struct Picked<'a, const N: usize> {
    pub object: bool,
    pub fields: [Field<'a>; N],
}

impl<const N: usize> Default for Picked<'_, N> {
    fn default() -> Self {
        Picked {
            object: false,
            fields: std::array::from_fn(|_| Field::Absent),
        }
    }
}

/// Validates a value like [`Valid`] and, when it is an object, keeps the members `keys`.
#[derive(Clone, Copy)]
struct Pick<const N: usize> {
    keys: [&'static str; N],
    depth: usize,
}

impl<'de, const N: usize> DeserializeSeed<'de> for Pick<N> {
    type Value = Picked<'de, N>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, const N: usize> Pick<N> {
    fn not_object<E>(self) -> Result<Picked<'de, N>, E> {
        Ok(Picked::default())
    }
}

impl<'de, const N: usize> Visitor<'de> for Pick<N> {
    type Value = Picked<'de, N>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let inner = Valid { depth: self.depth }.enter()?;
        let mut out = Picked {
            object: true,
            ..Picked::default()
        };
        while let Some(key) = map.next_key::<Key>()? {
            match self.keys.iter().position(|k| *k == key.0) {
                Some(i) => {
                    out.fields[i] = map.next_value_seed(FieldSeed { depth: inner.depth })?;
                }
                None => map.next_value_seed(inner)?,
            }
        }
        Ok(out)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Valid { depth: self.depth }.visit_seq(seq)?;
        self.not_object()
    }
    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
        self.not_object()
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        self.not_object()
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        self.not_object()
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        self.not_object()
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        self.not_object()
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        self.not_object()
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        self.not_object()
    }
}

/// `properties`: the page fields a page or screen call carries there.
pub const PAGE_KEYS: [&str; 3] = ["url", "referrer", "path"];
/// `context.campaign`, in `model::Utm` order (Segment calls the campaign `name`).
pub const CAMPAIGN_KEYS: [&str; 5] = ["source", "medium", "name", "content", "term"];
pub const EMAIL_KEY: [&str; 1] = ["email"];

/// Validates `text` (a value the message carried) and picks `keys` from it.
pub fn pick<'a, const N: usize>(
    text: &'a str,
    keys: [&'static str; N],
) -> Result<Picked<'a, N>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let picked = Pick { keys, depth: 0 }.deserialize(&mut de)?;
    de.end()?;
    Ok(picked)
}

/// What normalization reads from `context`.
#[derive(Debug, Default)]
pub struct ContextView<'a> {
    pub object: bool,
    pub page: Picked<'a, 3>,
    pub campaign: Picked<'a, 5>,
    pub traits: Picked<'a, 1>,
}

/// Validates a `context` value and picks `page`, `campaign` and `traits.email` from it.
pub fn context_view(text: &str) -> Result<ContextView<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let view = de.deserialize_any(ContextVisitor)?;
    de.end()?;
    Ok(view)
}

struct ContextVisitor;

impl<'de> Visitor<'de> for ContextVisitor {
    type Value = ContextView<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let inner = Valid { depth: 0 }.enter()?;
        let depth = inner.depth;
        let mut view = ContextView {
            object: true,
            ..ContextView::default()
        };
        while let Some(key) = map.next_key::<Key>()? {
            match key.0.as_ref() {
                "page" => {
                    view.page = map.next_value_seed(Pick {
                        keys: PAGE_KEYS,
                        depth,
                    })?
                }
                "campaign" => {
                    view.campaign = map.next_value_seed(Pick {
                        keys: CAMPAIGN_KEYS,
                        depth,
                    })?
                }
                "traits" => {
                    view.traits = map.next_value_seed(Pick {
                        keys: EMAIL_KEY,
                        depth,
                    })?
                }
                _ => map.next_value_seed(inner)?,
            }
        }
        Ok(view)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Valid { depth: 0 }.visit_seq(seq)?;
        Ok(ContextView::default())
    }
    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
        Ok(ContextView::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(ContextView::default())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(ContextView::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(ContextView::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(ContextView::default())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(ContextView::default())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(ContextView::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_members_and_keeps_the_last_duplicate() {
        let p = pick(
            r#"{"url": "a", "x": [1, {"y": null}], "url": "b", "path": 3}"#,
            PAGE_KEYS,
        )
        .unwrap();
        assert!(p.object);
        assert_eq!(p.fields[0], Field::Str("b".into()));
        assert_eq!(p.fields[1], Field::Absent);
        assert_eq!(p.fields[2], Field::Num(3.into()));
        let c = context_view(r#"{"page": {"url": "u"}, "campaign": 5, "traits": {"email": "e"}}"#)
            .unwrap();
        assert_eq!(c.page.fields[0], Field::Str("u".into()));
        assert!(!c.campaign.object);
        assert_eq!(c.traits.fields[0], Field::Str("e".into()));
    }

    /// Whatever `pick` accepts, `serde_json::Value` accepts, and the other way round.
    #[test]
    fn accepts_what_value_accepts() {
        let deep_ok = format!("{}{}", "[".repeat(125), "]".repeat(125));
        let deep_bad = format!("{}{}", "[".repeat(126), "]".repeat(126));
        let cases = [
            r#"{"a": 1e400}"#.to_string(),
            r#"{"a": "\ud800"}"#.to_string(),
            r#"{"a": "\ud83d\ude00 ok"}"#.to_string(),
            "{\"a\": \"tab\there\"}".to_string(),
            r#"{"a": -0.0, "b": 18446744073709551615, "c": -9223372036854775808}"#.to_string(),
            r#"{"a": 1} x"#.to_string(),
            format!("{{\"a\": {deep_ok}}}"),
            format!("{{\"a\": {deep_bad}}}"),
        ];
        for case in &cases {
            let value = serde_json::from_str::<serde_json::Value>(case).is_ok();
            let picked = pick(case, PAGE_KEYS).is_ok();
            // Nesting is bounded one level tighter than a whole message: the stored
            // record wraps the object once more.
            let record = format!("{{\"properties\": {case}}}");
            let record_ok = serde_json::from_str::<serde_json::Value>(&record).is_ok();
            assert_eq!(picked, value && record_ok, "{case:.60}");
        }
    }
}
