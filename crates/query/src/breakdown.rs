//! Breakdowns (`--by`): which value each person or event counts under, and which values
//! are listed (the most frequent `limit`, the rest summed as `(other)`).
//!
//! Three kinds of value:
//! - a first-touch attribute (`channel`, `source`, `medium`, `source_medium`, `campaign`,
//!   `content`, `landing_page`): the person's first visit in range (see
//!   [`crate::sessions::first_touch`]);
//! - `property:NAME`, an event property (`properties.NAME`; `context.X` and `traits.X`
//!   name other objects, dots walk nested ones): a funnel counts each person under the
//!   value on their first step-1 event in range, as Amplitude segments a funnel at its
//!   first step; trends count each event under its own value;
//! - `person:NAME`, a person property: the latest value of the trait in the person's
//!   `identify` calls (by event time, ties by arrival), as of now.
//!
//! Event and person properties live in the stored payloads, not in columns, so these
//! breakdowns decode the events they need (and only those, block by block); first-touch
//! breakdowns read columns only.

use std::collections::HashMap;

use serde_json::Value;
use throughline_model::EventType;

use crate::sessions::TOUCH_ATTRIBUTES as TOUCH;
use crate::source::{EventFilter, Source};
use crate::QueryError;

/// The value of persons or events without one (no visit, no such property or trait).
pub const NONE: &str = "(none)";
/// The value the breakdown values beyond the listed ones are summed under.
pub const OTHER: &str = "(other)";
/// Values listed by default, and at most.
pub const LIMIT_DEFAULT: usize = 50;
pub const LIMIT_MAX: usize = 1000;

/// What a breakdown splits by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum By {
    /// A first-touch attribute.
    Touch(String),
    /// An event property: the JSON path from the event's root (`properties`, ...).
    Event(Vec<String>),
    /// A trait: the JSON path inside `traits`.
    Person(Vec<String>),
}

impl By {
    pub fn parse(text: &str) -> Result<By, QueryError> {
        let t = text.trim();
        let path = |rest: &str| -> Result<Vec<String>, QueryError> {
            let parts: Vec<String> = rest.split('.').map(|p| p.trim().to_string()).collect();
            if parts.iter().any(String::is_empty) {
                return Err(QueryError::invalid(format!(
                    "breakdown {text:?} needs a property name, e.g. property:plan or person:country"
                )));
            }
            Ok(parts)
        };
        if let Some(rest) = t.strip_prefix("property:") {
            let mut p = path(rest)?;
            if !matches!(p[0].as_str(), "properties" | "context" | "traits") || p.len() == 1 {
                p.insert(0, "properties".into());
            }
            return Ok(By::Event(p));
        }
        if let Some(rest) = t.strip_prefix("person:") {
            return Ok(By::Person(path(rest)?));
        }
        if TOUCH.contains(&t) {
            return Ok(By::Touch(t.to_string()));
        }
        Err(QueryError::invalid(format!(
            "unknown breakdown {text:?}: use one of {}, property:NAME (an event property) or person:NAME (a trait)",
            TOUCH.join(", ")
        )))
    }
}

/// The `limit` request field, checked.
pub fn limit(requested: Option<usize>) -> Result<usize, QueryError> {
    let n = requested.unwrap_or(LIMIT_DEFAULT);
    if n == 0 || n > LIMIT_MAX {
        return Err(QueryError::invalid(format!(
            "by_limit must be between 1 and {LIMIT_MAX}"
        )));
    }
    Ok(n)
}

/// The text a JSON value counts under: strings as they are, other values as JSON.
pub fn label(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => NONE.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The value at `path` of an event (`path[0]` names the root object).
pub fn event_value(e: &throughline_model::Event, path: &[String]) -> String {
    let root = match path[0].as_str() {
        "context" => &e.context,
        "traits" => &e.traits,
        _ => &e.properties,
    };
    let mut v = path.get(1).and_then(|k| root.get(k));
    for k in path.iter().skip(2) {
        v = v.and_then(|x| x.get(k));
    }
    label(v)
}

/// The value at `path` inside one `traits` object, if set.
fn trait_value(traits: &serde_json::Map<String, Value>, path: &[String]) -> Option<String> {
    let mut v = traits.get(&path[0]);
    for k in &path[1..] {
        v = v.and_then(|x| x.get(k));
    }
    v.filter(|x| !x.is_null()).map(|x| label(Some(x)))
}

/// Each person's latest value of a trait in their `identify` calls: by event time, ties
/// by arrival. Persons who never set it are absent.
pub fn person_traits(snap: &Source, path: &[String]) -> Result<HashMap<u32, String>, QueryError> {
    let identity = snap.identity()?;
    // Identify calls carry no event name; only unnamed events are decoded.
    let mut latest: HashMap<u32, (i64, u32, String)> = HashMap::new();
    let unnamed = |name: Option<&str>| name.is_none();
    snap.for_each_event(
        &EventFilter {
            name: Some(&unnamed),
            ..Default::default()
        },
        |seq, node, e| {
            if e.event_type != EventType::Identify {
                return Ok(());
            }
            let Some(v) = trait_value(&e.traits, path) else {
                return Ok(());
            };
            let person = identity.person_of(node);
            let key = (e.timestamp, seq);
            if latest.get(&person).is_none_or(|(t, s, _)| (*t, *s) <= key) {
                latest.insert(person, (e.timestamp, seq, v));
            }
            Ok(())
        },
    )?;
    Ok(latest.into_iter().map(|(p, (_, _, v))| (p, v)).collect())
}

/// The value at `path` of the events with these arrival numbers (ascending).
pub fn event_values(
    snap: &Source,
    seqs: &[u32],
    path: &[String],
) -> Result<HashMap<u32, String>, QueryError> {
    let mut out = HashMap::with_capacity(seqs.len());
    snap.for_each_event_at(seqs, |seq, e| {
        out.insert(seq, event_value(&e, path));
        Ok(())
    })?;
    Ok(out)
}

/// Which values are listed: the `limit` with the largest weight (ties by value), in that
/// order, then `(other)` for the rest when there is a rest. Returns, per value index, its
/// position in the listing (the last position is `(other)`), and the listed names.
pub fn top(values: &[String], weights: &[u64], limit: usize) -> (Vec<usize>, Vec<String>) {
    let mut order: Vec<usize> = (0..values.len()).filter(|&i| weights[i] > 0).collect();
    order.sort_by(|&a, &b| weights[b].cmp(&weights[a]).then(values[a].cmp(&values[b])));
    let mut slot = vec![usize::MAX; values.len()];
    let mut names = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        if rank < limit {
            slot[i] = rank;
            names.push(values[i].clone());
        }
    }
    if order.len() > limit {
        names.push(OTHER.to_string());
        for &i in &order[limit..] {
            slot[i] = limit;
        }
    }
    (slot, names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds() {
        assert_eq!(By::parse("channel").unwrap(), By::Touch("channel".into()));
        assert_eq!(
            By::parse("property:plan").unwrap(),
            By::Event(vec!["properties".into(), "plan".into()])
        );
        assert_eq!(
            By::parse("property:context.page.title").unwrap(),
            By::Event(vec!["context".into(), "page".into(), "title".into()])
        );
        // A property that happens to be called `context` is still a property.
        assert_eq!(
            By::parse("property:context").unwrap(),
            By::Event(vec!["properties".into(), "context".into()])
        );
        assert_eq!(
            By::parse("person:address.city").unwrap(),
            By::Person(vec!["address".into(), "city".into()])
        );
        for bad in ["plan", "property:", "person:a..b", "touch"] {
            assert!(By::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn top_values_and_the_rest() {
        let values: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let (slot, names) = top(&values, &[5, 9, 5, 1], 2);
        assert_eq!(names, ["b", "a", "(other)"]);
        assert_eq!(slot, [1, 0, 2, 2]);
        let (slot, names) = top(&values, &[5, 9, 0, 1], 3);
        assert_eq!(names, ["b", "a", "d"]);
        assert_eq!(slot, [1, 0, usize::MAX, 2]);
    }

    #[test]
    fn labels() {
        assert_eq!(label(None), NONE);
        assert_eq!(label(Some(&serde_json::json!("pro"))), "pro");
        assert_eq!(label(Some(&serde_json::json!(3))), "3");
        assert_eq!(label(Some(&serde_json::json!(true))), "true");
    }
}
