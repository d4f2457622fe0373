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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepMatcher {
    pub label: String,
    pub alternatives: Vec<Alternative>,
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
        if label.contains(" where ") {
            return Err(QueryError::invalid(format!(
                "step {label:?}: property filters (`where`) are not supported yet; use the event name"
            )));
        }
        let alternatives = label
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
        assert!(StepMatcher::parse("A where revenue > 5").is_err());
    }
}
