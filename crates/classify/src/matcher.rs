//! The tests a channel rule is made of, compiled, and the host patterns of search engines and
//! referral exclusions.
//!
//! This is the part of a regex engine GA4's channel definitions need: alternations of
//! literals matched whole, as a prefix, a suffix or anywhere, plus one guarded "contains"
//! for GA4's `([^a-df-z]|^)shop`. Matching ignores ASCII case and never allocates: every
//! literal is stored lowercase once, when the rules are built.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::url::{query_pairs, QueryValue};

/// Which value of a touch a text test reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    Source,
    Medium,
    Campaign,
    /// The landing page's path, for vanity URLs (`/radio`).
    Path,
}

/// How a text test compares its literals with the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// The whole value is one of the literals.
    In,
    Prefix,
    Suffix,
    Contains,
}

/// One test of a rule; a rule group holds when any of its tests does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Test {
    Text {
        field: Field,
        op: Op,
        values: Vec<Box<str>>,
    },
    /// One of the literals occurs somewhere not right after one of its `not_after` bytes.
    ContainsNotAfter { field: Field, values: Vec<Guarded> },
    /// The source is in one of the categories of this bit set.
    SourceCategory(u64),
    /// The landing URL's query has one of these parameters (with this value, if given).
    Param(Vec<(Box<str>, Option<Box<str>>)>),
}

/// A literal that counts only where it does not follow one of the `not_after` characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Guarded {
    pub text: Box<str>,
    pub not_after: Box<str>,
}

/// What the tests read: the derived source and medium, the campaign, the landing page.
pub(crate) struct Facts<'x> {
    pub source: &'x str,
    pub medium: &'x str,
    pub campaign: Option<&'x str>,
    pub path: Option<&'x str>,
    pub query: &'x str,
    /// Bit set of the source's categories, looked up once per touch.
    pub categories: u64,
}

impl Facts<'_> {
    fn field(&self, field: Field) -> Option<&str> {
        match field {
            Field::Source => Some(self.source),
            Field::Medium => Some(self.medium),
            Field::Campaign => self.campaign,
            Field::Path => self.path.map(trim_trailing_slash),
        }
    }
}

impl Test {
    pub(crate) fn matches(&self, facts: &Facts<'_>) -> bool {
        match self {
            Test::Text { field, op, values } => {
                // `path_prefix` reads the path as written; `path_in` ignores a trailing slash.
                let value = match (field, op) {
                    (Field::Path, Op::Prefix) => facts.path,
                    _ => facts.field(*field),
                };
                let Some(value) = value.map(str::as_bytes) else {
                    return false;
                };
                values.iter().any(|lit| {
                    let lit = lit.as_bytes();
                    match op {
                        Op::In => eq_ci(value, lit),
                        Op::Prefix => value.len() >= lit.len() && eq_ci(&value[..lit.len()], lit),
                        Op::Suffix => {
                            value.len() >= lit.len()
                                && eq_ci(&value[value.len() - lit.len()..], lit)
                        }
                        Op::Contains => find_ci(value, lit, 0).is_some(),
                    }
                })
            }
            Test::ContainsNotAfter { field, values } => {
                let Some(value) = facts.field(*field) else {
                    return false;
                };
                let value = value.as_bytes();
                values.iter().any(|Guarded { text, not_after }| {
                    let mut from = 0;
                    while let Some(at) = find_ci(value, text.as_bytes(), from) {
                        if at == 0
                            || !not_after
                                .as_bytes()
                                .contains(&value[at - 1].to_ascii_lowercase())
                        {
                            return true;
                        }
                        from = at + 1;
                    }
                    false
                })
            }
            Test::SourceCategory(mask) => facts.categories & mask != 0,
            Test::Param(wanted) => query_pairs(facts.query).any(|(key, value)| {
                wanted.iter().any(|(k, v)| {
                    eq_ci(key.as_bytes(), k.as_bytes())
                        && v.as_deref().is_none_or(|v| QueryValue(value).eq_ci(v))
                })
            }),
        }
    }
}

fn trim_trailing_slash(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    }
}

/// `value` equals `lower` (already lowercase) ignoring ASCII case.
pub(crate) fn eq_ci(value: &[u8], lower: &[u8]) -> bool {
    value.len() == lower.len()
        && value
            .iter()
            .zip(lower)
            .all(|(a, b)| a.to_ascii_lowercase() == *b)
}

/// The first position at or after `from` where `lower` occurs in `value`, ignoring ASCII case.
fn find_ci(value: &[u8], lower: &[u8], from: usize) -> Option<usize> {
    if lower.is_empty() || value.len() < lower.len() {
        return None;
    }
    (from..=value.len() - lower.len()).find(|&at| eq_ci(&value[at..at + lower.len()], lower))
}

/// A host pattern: `name`, `*.name` (and its subdomains), `name.*` (any country suffix), or
/// both. Hosts are lowercase and without `www.` when they get here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostPattern {
    core: Box<str>,
    subdomains: bool,
    any_suffix: bool,
}

impl HostPattern {
    /// Parses a pattern; `None` if it is not of one of the four forms.
    pub(crate) fn parse(pattern: &str) -> Option<HostPattern> {
        let lower = pattern.trim().to_ascii_lowercase();
        let (subdomains, rest) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let (any_suffix, core) = match rest.strip_suffix(".*") {
            Some(core) => (true, core),
            None => (false, rest),
        };
        let valid = !core.is_empty()
            && !core.starts_with('.')
            && !core.ends_with('.')
            && !core.contains(['*', '/', ':', ' ']);
        valid.then(|| HostPattern {
            core: core.into(),
            subdomains,
            any_suffix,
        })
    }

    /// A domain and its subdomains (a referral exclusion).
    pub(crate) fn domain(domain: &str) -> HostPattern {
        HostPattern {
            core: domain.into(),
            subdomains: true,
            any_suffix: false,
        }
    }
}

/// Host patterns indexed by their core, so that matching a host costs a few hash lookups
/// (each label suffix of the host, with and without a country suffix) instead of a scan of
/// every pattern.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HostIndex {
    cores: FastMap<Box<str>, Vec<HostEntry>>,
    /// Some pattern ends in `.*`: only then are country suffixes cut off and looked up.
    any_suffix: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HostEntry {
    value: u32,
    subdomains: bool,
    any_suffix: bool,
}

impl HostIndex {
    pub(crate) fn insert(&mut self, pattern: HostPattern, value: u32) {
        let entry = HostEntry {
            value,
            subdomains: pattern.subdomains,
            any_suffix: pattern.any_suffix,
        };
        self.any_suffix |= pattern.any_suffix;
        let entries = self.cores.entry(pattern.core).or_default();
        if !entries.contains(&entry) {
            entries.push(entry);
        }
    }

    /// The smallest value of a pattern that matches `host` (lowercase, without `www.`).
    pub(crate) fn find(&self, host: &str) -> Option<u32> {
        let mut best: Option<u32> = None;
        let mut start = 0;
        loop {
            let suffix = &host[start..];
            let whole = start == 0;
            let mut consider = |core: &str, any_suffix: bool| {
                for e in self.cores.get(core).into_iter().flatten() {
                    if e.any_suffix == any_suffix && (whole || e.subdomains) {
                        best = Some(best.map_or(e.value, |b| b.min(e.value)));
                    }
                }
            };
            consider(suffix, false);
            // `name.*`: the same with one or two country labels cut off the end.
            let last = last_dot(suffix).filter(|&d| is_country_label(&suffix[d + 1..]));
            if let Some(last) = last.filter(|_| self.any_suffix) {
                consider(&suffix[..last], true);
                let second = last_dot(&suffix[..last]);
                if let Some(second) = second.filter(|&d| is_country_label(&suffix[d + 1..last])) {
                    consider(&suffix[..second], true);
                }
            }
            match suffix.bytes().position(|b| b == b'.') {
                Some(dot) => start += dot + 1,
                None => return best,
            }
        }
    }
}

fn last_dot(text: &str) -> Option<usize> {
    text.bytes().rposition(|b| b == b'.')
}

/// Two or three ASCII letters: `com`, `de`, `co`, `uk`. Public suffixes are more varied, but
/// search engines live under these.
fn is_country_label(label: &str) -> bool {
    (2..=3).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_lowercase())
}

/// A `HashMap` with FNV-1a hashing: keys are short strings hashed on every touch, where
/// SipHash's flood resistance buys nothing (the keys come from the rules file).
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv1a>>;

pub(crate) struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'x>(source: &'x str, medium: &'x str, campaign: Option<&'x str>) -> Facts<'x> {
        Facts {
            source,
            medium,
            campaign,
            path: None,
            query: "",
            categories: 0,
        }
    }

    fn text(field: Field, op: Op, values: &[&str]) -> Test {
        Test::Text {
            field,
            op,
            values: values.iter().map(|v| (*v).into()).collect(),
        }
    }

    #[test]
    fn text_tests_ignore_ascii_case() {
        let paid = [
            text(Field::Medium, Op::Contains, &["cp"]),
            text(Field::Medium, Op::In, &["ppc", "retargeting"]),
            text(Field::Medium, Op::Prefix, &["paid"]),
        ];
        let is_paid = |medium: &str| paid.iter().any(|t| t.matches(&facts("x", medium, None)));
        for medium in [
            "cpc",
            "CPC",
            "cpm",
            "ocpm",
            "PPC",
            "retargeting",
            "paid_social",
            "Paid",
        ] {
            assert!(is_paid(medium), "{medium}");
        }
        for medium in ["ppc2", "pc", "unpaid", "retargeting-x", "organic", ""] {
            assert!(!is_paid(medium), "{medium}");
        }
        let push = text(Field::Medium, Op::Suffix, &["push"]);
        assert!(push.matches(&facts("x", "web-PUSH", None)));
        assert!(!push.matches(&facts("x", "pushed", None)));
    }

    #[test]
    fn ga4_shop_campaign_pattern() {
        // ^(.*(([^a-df-z]|^)shop|shopping).*)$
        let shop = [
            text(Field::Campaign, Op::Contains, &["shopping"]),
            Test::ContainsNotAfter {
                field: Field::Campaign,
                values: vec![Guarded {
                    text: "shop".into(),
                    not_after: "abcdfghijklmnopqrstuvwxyz".into(),
                }],
            },
        ];
        let is_shop = |c: &str| shop.iter().any(|t| t.matches(&facts("x", "y", Some(c))));
        for c in [
            "shop",
            "Shop-Sale",
            "summer-shop",
            "eshop",
            "2024shop",
            "workshop shop",
        ] {
            assert!(is_shop(c), "{c}");
        }
        for c in ["workshop", "bishop", "WORKSHOP", "sho", "spring"] {
            assert!(!is_shop(c), "{c}");
        }
        assert!(is_shop("workshopping"), "shopping anywhere");
        assert!(!shop.iter().any(|t| t.matches(&facts("x", "y", None))));
    }

    fn index(patterns: &[&str]) -> HostIndex {
        let mut index = HostIndex::default();
        for (value, p) in patterns.iter().enumerate() {
            index.insert(HostPattern::parse(p).unwrap(), value as u32);
        }
        index
    }

    #[test]
    fn host_patterns() {
        let google = index(&["google.*"]);
        for host in ["google.com", "google.co.uk", "google.de", "google.com.au"] {
            assert_eq!(google.find(host), Some(0), "{host}");
        }
        for host in [
            "docs.google.com",
            "google.evil.com",
            "google",
            "google.com.evil.net",
        ] {
            assert_eq!(google.find(host), None, "{host}");
        }
        let yahoo = index(&["*.search.yahoo.*"]);
        assert_eq!(yahoo.find("uk.search.yahoo.com"), Some(0));
        assert_eq!(yahoo.find("search.yahoo.co.jp"), Some(0));
        assert_eq!(yahoo.find("news.yahoo.com"), None);
        let bing = index(&["bing.com", "*.bing.com"]);
        assert_eq!(bing.find("bing.com"), Some(0));
        assert_eq!(bing.find("cn.bing.com"), Some(1));
        assert_eq!(bing.find("notbing.com"), None);
        // Overlapping patterns: the first wins.
        assert_eq!(
            index(&["*.a.example", "b.a.example"]).find("b.a.example"),
            Some(0)
        );
        assert_eq!(
            index(&["b.a.example", "*.a.example"]).find("b.a.example"),
            Some(0)
        );
        for bad in ["", "*.", ".*", "a*b.com", "https://x.com", ".x.com"] {
            assert_eq!(HostPattern::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn domains_cover_their_subdomains_only() {
        let mut stripe = HostIndex::default();
        stripe.insert(HostPattern::domain("stripe.com"), 0);
        assert_eq!(stripe.find("checkout.stripe.com"), Some(0));
        assert_eq!(stripe.find("stripe.com"), Some(0));
        assert_eq!(stripe.find("notstripe.com"), None);
        assert_eq!(stripe.find("stripe.com.evil.net"), None);
        assert_eq!(stripe.find(""), None);
    }
}
