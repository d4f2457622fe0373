//! What counts as a number in an event property, and the top-level numeric properties of
//! a stored event record, read without building the event.
//!
//! One rule for both: a JSON number, or a string holding one (surrounding whitespace
//! allowed), if finite. [`number_of`] applies it to a decoded value (queries reading a
//! property path); [`top_level_numbers`] applies it to every member of a record's
//! `properties` while scanning the record's bytes, which is what segments store as number
//! columns. The two agree by construction: the same serde_json number parser reads both,
//! and a key given twice keeps its last value, as decoding into a map does.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// A decoded value as a number: a number, or a string holding one; anything else (and
/// anything not finite) is no number.
pub fn number_of(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|x: &f64| x.is_finite())
}

/// Calls `visit(key, number)` for every member of the record's `properties`, in the
/// record's order: the member's number by [`number_of`]'s rule, or `None`. A key may come
/// twice; decoding keeps the last, so a caller must let a later call replace an earlier
/// one. `Err` when the record is not a JSON object.
pub fn top_level_numbers(
    record: &[u8],
    visit: &mut dyn FnMut(&str, Option<f64>),
) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(record);
    de.deserialize_map(RecordVisitor { visit })?;
    de.end()
}

struct RecordVisitor<'v> {
    visit: &'v mut dyn FnMut(&str, Option<f64>),
}

impl<'de> Visitor<'de> for RecordVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if key.0 == "properties" {
                map.next_value_seed(PropertiesSeed {
                    visit: &mut *self.visit,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct PropertiesSeed<'v> {
    visit: &'v mut dyn FnMut(&str, Option<f64>),
}

impl<'de> de::DeserializeSeed<'de> for PropertiesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PropertiesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("properties")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value = map.next_value::<Number>()?.0;
            (self.visit)(&key.0, value);
        }
        Ok(())
    }

    // `properties` that is not an object (never written so) has no members.
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// A member's key, borrowed from the record unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// One property value read by [`number_of`]'s rule without building it.
struct Number(Option<f64>);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Number, D::Error> {
        d.deserialize_any(NumberVisitor)
    }
}

struct NumberVisitor;

impl<'de> Visitor<'de> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // `Value::as_f64` of an integer is the integer cast to f64.
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
        Ok(Number(Some(v as f64).filter(|x| x.is_finite())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
        Ok(Number(Some(v as f64).filter(|x| x.is_finite())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
        Ok(Number(Some(v).filter(|x| x.is_finite())))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Number, E> {
        Ok(Number(
            s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        ))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Number, E> {
        Ok(Number(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Number, E> {
        Ok(Number(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Number, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Number(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Number, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Number(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record scan finds exactly the members `number_of` reads as numbers from the
    /// decoded record, with the same bits.
    #[test]
    fn the_scan_agrees_with_decoding() {
        let records = [
            r#"{"type":"track","properties":{"revenue":12.5,"n":3,"neg":-7,"big":18446744073709551615,"s":" 4.25 ","bad":"4x","inf":"inf","nan":"NaN","e":"1e3","nested":{"revenue":9},"list":[1,2],"t":true,"z":null,"\u0072ev":"0.1"},"context":{"revenue":5}}"#,
            r#"{"properties":{"a":1,"a":"2","b":3,"b":"x"}}"#,
            r#"{"event":"x","properties":{}}"#,
            r#"{"event":"x"}"#,
            r#"{"properties":{"f":0.30000000000000004,"g":123456789012345678901234567890,"h":-0.0,"i":"-12e-3"}}"#,
        ];
        // What a reader keeps: the last value of each key.
        let scan = |r: &str| -> Result<Vec<(String, f64)>, serde_json::Error> {
            let mut out: Vec<(String, f64)> = Vec::new();
            top_level_numbers(r.as_bytes(), &mut |k, v| {
                out.retain(|(x, _)| x != k);
                if let Some(v) = v {
                    out.push((k.to_string(), v));
                }
            })?;
            Ok(out)
        };
        for r in records {
            let out = scan(r).unwrap();
            let decoded: serde_json::Map<String, Value> = serde_json::from_str(r).unwrap();
            let mut want: Vec<(String, u64)> = decoded
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| {
                    p.iter()
                        .filter_map(|(k, v)| number_of(v).map(|n| (k.clone(), n.to_bits())))
                        .collect()
                })
                .unwrap_or_default();
            let mut got: Vec<(String, u64)> = out
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{r}");
        }
        // `b` ends as "x": no number.
        assert_eq!(scan(records[1]).unwrap(), [("a".to_string(), 2.0)]);
        assert!(scan("[1]").is_err());
        assert!(scan("{\"properties\":{\"a\":1}").is_err());
    }
}
