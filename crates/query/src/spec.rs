//! Parsing of the small languages in query flags: durations, dates, step matchers.

use chrono::{NaiveDate, TimeZone, Utc};
use throughline_model::{EventType, Millis};

use crate::QueryError;

/// `30m`, `7d`, `2h`, `90s`, `1w`: a positive duration in milliseconds.
pub fn parse_duration(text: &str) -> Result<Millis, QueryError> {
    let t = text.trim();
    let bad = || {
        QueryError::invalid(format!(
            "invalid duration {text:?}: use a number and a unit, e.g. 30m, 12h, 7d, 2w"
        ))
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = t.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(bad()),
    };
    if n <= 0 {
        return Err(QueryError::invalid(format!(
            "duration {text:?} must be greater than zero"
        )));
    }
    n.checked_mul(ms).ok_or_else(bad)
}

/// A date (`2026-09-01`, midnight UTC) or an RFC 3339 timestamp.
pub fn parse_time_bound(text: &str) -> Result<Millis, QueryError> {
    if let Ok(d) = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        let t = d.and_hms_opt(0, 0, 0).expect("midnight exists");
        return Ok(Utc.from_utc_datetime(&t).timestamp_millis());
    }
    throughline_model::parse_timestamp(text).ok_or_else(|| {
        QueryError::invalid(format!(
            "invalid date {text:?}: use YYYY-MM-DD or an RFC 3339 timestamp"
        ))
    })
}

/// What one funnel step (or exclusion) matches: event names, or page paths/names with `*`
/// wildcards. `Order Completed|Checkout Started` is an OR-step; `page:/products/*`
/// matches page views by path.
#[derive(Clone, Debug, PartialEq)]
pub struct StepMatcher {
    pub label: String,
    pub alternatives: Vec<Alternative>,
    /// `where` conditions on the event's properties, all of which must hold.
    pub filters: Vec<Filter>,
}

/// One property condition: `revenue > 50`, `plan = 'pro'`, `context.page.path contains
/// '/blog'`. A bare key reads `properties`; `context.`, `traits.` and `properties.` name
/// the object explicitly; dots walk nested objects.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub path: Vec<String>,
    pub op: Op,
    pub value: serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Contains,
}

impl Filter {
    fn parse(text: &str) -> Result<Filter, QueryError> {
        let bad = || {
            QueryError::invalid(format!("invalid condition {text:?}: use e.g. `revenue > 50`, `plan = 'pro'`, `url contains 'sale'`"))
        };
        let ops = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("!=", Op::Ne),
            ("=", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
            (" contains ", Op::Contains),
        ];
        let (at, sym, op) = ops
            .iter()
            .filter_map(|&(sym, op)| text.find(sym).map(|at| (at, sym, op)))
            .min_by_key(|&(at, sym, _)| (at, std::cmp::Reverse(sym.len())))
            .ok_or_else(bad)?;
        let key = text[..at].trim();
        let raw = text[at + sym.len()..].trim();
        if key.is_empty() || raw.is_empty() {
            return Err(bad());
        }
        let mut path: Vec<String> = key.split('.').map(str::to_string).collect();
        if !matches!(path[0].as_str(), "properties" | "context" | "traits") {
            path.insert(0, "properties".into());
        }
        let quoted = (raw.starts_with('\'') && raw.ends_with('\'') && raw.len() >= 2)
            || (raw.starts_with('"') && raw.ends_with('"') && raw.len() >= 2);
        let value = if quoted {
            serde_json::Value::String(raw[1..raw.len() - 1].to_string())
        } else {
            serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_string()))
        };
        if matches!(op, Op::Gt | Op::Ge | Op::Lt | Op::Le) && !value.is_number() {
            return Err(QueryError::invalid(format!(
                "condition {text:?}: `{}` needs a number",
                sym.trim()
            )));
        }
        Ok(Filter { path, op, value })
    }

    /// Whether the event satisfies the condition; a missing property satisfies only `!=`.
    pub fn holds(&self, e: &throughline_model::Event) -> bool {
        let root = match self.path[0].as_str() {
            "context" => &e.context,
            "traits" => &e.traits,
            _ => &e.properties,
        };
        let mut v = root.get(&self.path[1..].first().cloned().unwrap_or_default());
        for k in self.path.iter().skip(2) {
            v = v.and_then(|x| x.get(k));
        }
        let Some(v) = v else { return self.op == Op::Ne };
        let num = |x: &serde_json::Value| {
            x.as_f64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
        };
        match self.op {
            Op::Eq | Op::Ne => {
                let same = match (num(v), num(&self.value)) {
                    (Some(a), Some(b)) if v.is_number() || self.value.is_number() => a == b,
                    _ => text_of(v) == text_of(&self.value),
                };
                same == (self.op == Op::Eq)
            }
            Op::Contains => text_of(v).contains(&text_of(&self.value)),
            _ => match (num(v), num(&self.value)) {
                (Some(a), Some(b)) => match self.op {
                    Op::Gt => a > b,
                    Op::Ge => a >= b,
                    Op::Lt => a < b,
                    _ => a <= b,
                },
                _ => false,
            },
        }
    }
}

fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Alternative {
    Name(String),
    Path(String),
}

impl StepMatcher {
    pub fn parse(text: &str) -> Result<StepMatcher, QueryError> {
        let label = text.trim().to_string();
        if label.is_empty() {
            return Err(QueryError::invalid("a step needs an event name"));
        }
        let (events, conditions) = match label.split_once(" where ") {
            Some((e, c)) => (e.trim(), Some(c)),
            None => (label.as_str(), None),
        };
        let filters = match conditions {
            Some(c) => c
                .split(" and ")
                .map(|f| Filter::parse(f.trim()))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        if events.is_empty() {
            return Err(QueryError::invalid(format!(
                "step {label:?} needs an event name before `where`"
            )));
        }
        let alternatives = events
            .split('|')
            .map(|a| {
                let a = a.trim();
                match a.strip_prefix("page:") {
                    Some(p) => Alternative::Path(p.trim().to_string()),
                    None => Alternative::Name(a.to_string()),
                }
            })
            .collect();
        Ok(StepMatcher {
            label,
            alternatives,
            filters,
        })
    }

    /// Whether an event matches: by name, or for `page:` alternatives by path, which only
    /// page and screen views have (a track sent from a page carries the page's path in its
    /// context, but it is no page view).
    pub fn matches_event(&self, kind: u8, name: Option<&str>, path: Option<&str>) -> bool {
        let is_view = kind == EventType::Page.code() || kind == EventType::Screen.code();
        self.matches(name, path.filter(|_| is_view))
    }

    /// Whether an event with this name and page path matches.
    pub fn matches(&self, name: Option<&str>, path: Option<&str>) -> bool {
        self.alternatives.iter().any(|a| match a {
            Alternative::Name(n) => {
                name == Some(n.as_str())
                    || (n.contains('*') && name.is_some_and(|v| wildcard(n, v)))
            }
            Alternative::Path(p) => path.is_some_and(|v| wildcard(p, v)),
        })
    }

    pub fn needs_path(&self) -> bool {
        self.alternatives
            .iter()
            .any(|a| matches!(a, Alternative::Path(_)))
    }
}

/// Steps matched by dictionary code instead of by string: each step is a bit, and a row's
/// mask is the bits of the steps its name matches, or'ed (for page and screen views) with
/// those its path matches. A step matches when one of its alternatives does and each
/// alternative reads the name or the path alone, so two tables decide every row, and
/// strings are compared once per distinct value.
pub struct MaskTable {
    by_name: Vec<u64>,
    by_path: Vec<u64>,
}

impl MaskTable {
    /// `steps`: each step with its bit(s). `names`/`paths`: the dictionaries the codes
    /// index (`paths` only when a step matches paths).
    pub fn new(
        steps: &[(u64, &StepMatcher)],
        names: &[String],
        paths: Option<&[String]>,
    ) -> MaskTable {
        let table = |dict: &[String], name_side: bool| -> Vec<u64> {
            dict.iter()
                .map(|v| {
                    steps
                        .iter()
                        .filter(|(_, s)| {
                            if name_side {
                                s.matches(Some(v), None)
                            } else {
                                s.matches(None, Some(v))
                            }
                        })
                        .fold(0, |m, (bit, _)| m | bit)
                })
                // The last slot: no value, which matches nothing.
                .chain([0])
                .collect()
        };
        MaskTable {
            by_name: table(names, true),
            by_path: paths.map_or(Vec::new(), |p| table(p, false)),
        }
    }

    /// The mask of a row: its type and its name code (and path code, second, when the
    /// table has paths); [`throughline_store::NO_VALUE`] for no value.
    #[inline]
    pub fn of(&self, kind: u8, codes: &[u32]) -> u64 {
        let mut m = self.by_name[(codes[0] as usize).min(self.by_name.len() - 1)];
        if !self.by_path.is_empty()
            && (kind == EventType::Page.code() || kind == EventType::Screen.code())
        {
            m |= self.by_path[(codes[1] as usize).min(self.by_path.len() - 1)];
        }
        m
    }
}

/// Glob match with `*` for any run of characters.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 7 * 86_400_000);
        assert_eq!(parse_duration("30m").unwrap(), 1_800_000);
        for bad in ["0d", "7", "d", "7y", "-1d", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matchers() {
        let m = StepMatcher::parse("Order Completed|page:/checkout/*").unwrap();
        assert!(m.matches(Some("Order Completed"), None));
        assert!(m.matches(Some("Checkout"), Some("/checkout/pay")));
        assert!(!m.matches(Some("Checkout"), Some("/cart")));
        assert!(wildcard("/p/*/x*", "/p/a/xyz"));
        assert!(!wildcard("/p/*/x", "/p/a/y"));
        assert!(StepMatcher::parse("A where revenue > cheap").is_err());
        assert!(
            StepMatcher::parse("A where").is_err()
                || StepMatcher::parse("A where").unwrap().filters.is_empty()
        );
    }

    #[test]
    fn property_filters() {
        let m =
            StepMatcher::parse("Order Completed where revenue >= 50 and currency = 'USD'").unwrap();
        assert_eq!(
            m.alternatives,
            [Alternative::Name("Order Completed".into())]
        );
        let event = |props: serde_json::Value| {
            let mut e: throughline_model::Event = serde_json::from_value(serde_json::json!({
                "message_id": "m", "type": "track", "timestamp": 0, "received_at": 0}))
            .unwrap();
            e.properties = props.as_object().unwrap().clone();
            e
        };
        let holds = |e: &throughline_model::Event| m.filters.iter().all(|f| f.holds(e));
        assert!(holds(&event(
            serde_json::json!({"revenue": 50, "currency": "USD"})
        )));
        assert!(holds(&event(
            serde_json::json!({"revenue": "99.5", "currency": "USD"})
        )));
        assert!(!holds(&event(
            serde_json::json!({"revenue": 49.9, "currency": "USD"})
        )));
        assert!(!holds(&event(serde_json::json!({"currency": "USD"}))));
        let nested = StepMatcher::parse("X where context.page.path contains '/blog'").unwrap();
        let mut e = event(serde_json::json!({}));
        e.context = serde_json::json!({"page": {"path": "/blog/post"}})
            .as_object()
            .unwrap()
            .clone();
        assert!(nested.filters[0].holds(&e));
    }
}
