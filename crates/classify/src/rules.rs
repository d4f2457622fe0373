//! Compiled rules and the classification of one touch: source and medium first, then the
//! first channel whose conditions hold.
//!
//! This is the hot path (once per session, millions of sessions): it borrows from the touch
//! and the rules throughout and allocates only the strings of its answer.

use std::borrow::Cow;
use std::sync::OnceLock;

use crate::matcher::{eq_ci, Facts, FastMap, HostIndex, Test};
use crate::url::{self, query_pairs};
use crate::{ga4_default_toml, Classified, Touch};

/// Channel rules, source categories, click ids, search engines and referral exclusions,
/// compiled from a rules file. Build once per project, share, classify many touches.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub(crate) channels: Vec<Channel>,
    pub(crate) unassigned: String,
    /// Category names; a category's bit is its index.
    pub(crate) categories: Vec<String>,
    /// Lowercase source -> bit set of its categories.
    pub(crate) source_categories: FastMap<Box<str>, u64>,
    /// Search engine source names, and their referrer host patterns (value: the name's index).
    pub(crate) search_engines: Vec<String>,
    pub(crate) search_engine_hosts: HostIndex,
    pub(crate) click_ids: Vec<ClickIdRule>,
    /// Excluded domains and their subdomains.
    pub(crate) referral_exclusions: HostIndex,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Channel {
    pub name: String,
    /// Every group must hold; a group holds when any of its tests does.
    pub groups: Vec<Vec<Test>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClickIdRule {
    /// Lowercase parameter name.
    pub param: String,
    pub source: String,
    pub medium: String,
}

/// Source, medium and campaign of a touch, borrowed where possible.
struct Derived<'x> {
    source: Cow<'x, str>,
    medium: Cow<'x, str>,
    campaign: Option<Cow<'x, str>>,
    excluded_referral: bool,
}

const DIRECT: &str = "(direct)";
const NONE: &str = "(none)";
const NOT_SET: &str = "(not set)";

impl Rules {
    /// GA4's default channel group: [`ga4_default_toml`] compiled (once per process).
    pub fn ga4_default() -> Rules {
        static DEFAULT: OnceLock<Rules> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                Rules::from_toml(ga4_default_toml()).expect("the shipped rules are valid (tested)")
            })
            .clone()
    }

    /// Source, medium, campaign and channel of a touch.
    pub fn classify(&self, touch: &Touch<'_>) -> Classified {
        let page = touch.page_url.map(url::parse).unwrap_or_default();
        let derived = self.derive(touch, &page);
        let channel = self.channel_for(&derived, &page);
        Classified {
            channel: channel.to_string(),
            source: derived.source.into_owned(),
            medium: derived.medium.into_owned(),
            campaign: derived.campaign.map(Cow::into_owned),
            excluded_referral: derived.excluded_referral,
        }
    }

    /// Only the channel of a touch, without allocating (unless the touch's UTM values or
    /// click id have to be percent-decoded out of the landing URL).
    pub fn channel<'r>(&'r self, touch: &Touch<'_>) -> &'r str {
        let page = touch.page_url.map(url::parse).unwrap_or_default();
        let derived = self.derive(touch, &page);
        self.channel_for(&derived, &page)
    }

    /// The channel of a source / medium pair known already (imported from another tool,
    /// say). Rules that test the landing page do not match.
    pub fn channel_of<'r>(&'r self, source: &str, medium: &str, campaign: Option<&str>) -> &'r str {
        let derived = Derived {
            source: Cow::Borrowed(source.trim()),
            medium: Cow::Borrowed(medium.trim()),
            campaign: given(campaign).map(Cow::Borrowed),
            excluded_referral: false,
        };
        self.channel_for(&derived, &url::UrlParts::default())
    }

    /// The channel names in rule order (a name can appear more than once), then the
    /// unassigned name.
    pub fn channel_names(&self) -> impl Iterator<Item = &str> {
        let rules = self.channels.iter().map(|c| c.name.as_str());
        rules.chain(std::iter::once(self.unassigned.as_str()))
    }

    /// The channel of a touch no rule matches.
    pub fn unassigned(&self) -> &str {
        &self.unassigned
    }

    /// The categories (`search`, `social`...) a source is listed in.
    pub fn source_categories<'r>(&'r self, source: &str) -> impl Iterator<Item = &'r str> {
        let bits = self.category_bits(source.trim());
        let names = self.categories.iter().enumerate();
        names
            .filter(move |(bit, _)| bits & (1 << bit) != 0)
            .map(|(_, name)| name.as_str())
    }

    fn channel_for<'r>(&'r self, derived: &Derived<'_>, page: &url::UrlParts<'_>) -> &'r str {
        let facts = Facts {
            source: &derived.source,
            medium: &derived.medium,
            campaign: derived.campaign.as_deref(),
            path: (!page.path.is_empty()).then_some(page.path),
            query: page.query,
            categories: self.category_bits(&derived.source),
        };
        self.channels
            .iter()
            .find(|c| c.groups.iter().all(|g| g.iter().any(|t| t.matches(&facts))))
            .map_or(self.unassigned.as_str(), |c| c.name.as_str())
    }

    /// GA4's order: UTM parameters, then an ad click id, then the referrer, then direct.
    fn derive<'x>(&'x self, touch: &Touch<'x>, page: &url::UrlParts<'x>) -> Derived<'x> {
        let utm = |given_value: Option<&'x str>, param: &str| -> Option<Cow<'x, str>> {
            given(given_value)
                .map(Cow::Borrowed)
                .or_else(|| url::param(page.query, param).map(Cow::Owned))
        };
        let campaign = utm(touch.utm_campaign, "utm_campaign");
        let source = utm(touch.utm_source, "utm_source");
        let medium = utm(touch.utm_medium, "utm_medium");
        let make = |source: Cow<'x, str>, medium: Cow<'x, str>, excluded_referral| Derived {
            source,
            medium,
            campaign: campaign.clone(),
            excluded_referral,
        };

        if source.is_some() || medium.is_some() {
            let source = source.unwrap_or(Cow::Borrowed(NOT_SET));
            let medium = medium.unwrap_or(Cow::Borrowed(NOT_SET));
            return make(source, medium, false);
        }
        if let Some(click) = self.click_id(touch.click_id, page.query) {
            return make(
                Cow::Borrowed(&click.source),
                Cow::Borrowed(&click.medium),
                false,
            );
        }
        let Some(host) = given(touch.referrer).map(|r| without_www(url::parse(r).host)) else {
            return make(Cow::Borrowed(DIRECT), Cow::Borrowed(NONE), false);
        };
        if host.is_empty() {
            return make(Cow::Borrowed(DIRECT), Cow::Borrowed(NONE), false);
        }
        let host = lowercase(host);
        let own_host = without_www(page.host).eq_ignore_ascii_case(&host);
        if own_host || self.referral_exclusions.find(&host).is_some() {
            return make(Cow::Borrowed(DIRECT), Cow::Borrowed(NONE), true);
        }
        let engine = self.search_engine_hosts.find(&host);
        match engine.and_then(|i| self.search_engines.get(i as usize)) {
            Some(name) => make(Cow::Borrowed(name), Cow::Borrowed("organic"), false),
            None => make(host, Cow::Borrowed("referral"), false),
        }
    }

    /// The rule of the touch's click id, or of the first click-id parameter in the landing
    /// URL's query when the touch names none.
    fn click_id(&self, named: Option<&str>, query: &str) -> Option<&ClickIdRule> {
        let rule = |param: &str| {
            self.click_ids
                .iter()
                .find(|c| eq_ci(param.as_bytes(), c.param.as_bytes()))
        };
        match given(named) {
            Some(param) => rule(param),
            None => query_pairs(query)
                .filter(|(_, value)| !value.is_empty())
                .find_map(|(param, _)| rule(param)),
        }
    }

    fn category_bits(&self, source: &str) -> u64 {
        let lookup = |key: &str| self.source_categories.get(key).copied().unwrap_or(0);
        if !source.bytes().any(|b| b.is_ascii_uppercase()) {
            return lookup(source);
        }
        // Lowercase on the stack: sources are short, and this runs once per touch.
        let mut buf = [0u8; 128];
        match buf.get_mut(..source.len()) {
            Some(lower) => {
                lower.copy_from_slice(source.as_bytes());
                lower.make_ascii_lowercase();
                std::str::from_utf8(lower).map_or(0, lookup)
            }
            None => lookup(&source.to_ascii_lowercase()),
        }
    }
}

/// A value that is present and not blank, trimmed.
fn given(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn without_www(host: &str) -> &str {
    match host.get(..4) {
        Some(www) if www.eq_ignore_ascii_case("www.") => &host[4..],
        _ => host,
    }
}

fn lowercase(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}
