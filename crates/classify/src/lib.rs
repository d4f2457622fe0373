//! Marketing channels of sessions: which source, medium and channel ("Paid Search", "Email",
//! "Direct"...) a session's first event came from.
//!
//! Two steps, both pure functions of a [`Touch`] (the UTM parameters, click id, referrer and
//! landing URL of that event) and the project's [`Rules`]:
//!
//! 1. **Source and medium**, as GA4 derives them: `utm_source` / `utm_medium` when the touch
//!    has them; else an ad click id (`gclid` is google / cpc, `msclkid` bing / cpc...); else
//!    the referrer (a search engine is `google` / `organic`, any other site its host /
//!    `referral`); else `(direct)` / `(none)`. A referrer on an excluded domain (the
//!    project's own, a payment provider) is no touch at all: `(direct)` / `(none)` with
//!    [`Classified::excluded_referral`] set, so the sessionizer can keep the attribution of
//!    the session the visitor left for the checkout.
//! 2. **Channel**: the first rule whose conditions hold, in order; GA4's default channel
//!    group unless the project edits it. No rule: `Unassigned`.
//!
//! The rules are data, a TOML file ([`ga4_default_toml`] is the one shipped, README.md
//! describes the format), so a project or an agency can add channels (Print, Radio, TV
//! through vanity paths or utm_medium values), source lists and referral exclusions.
//!
//! No IO, no clocks. Matching is plain string comparison on literals lowercased once when the
//! rules are built (no regex engine), and classifying a touch allocates only its output.

mod file;
mod matcher;
mod rules;
mod url;

use serde::{Deserialize, Serialize};
use throughline_model::Event;

pub use file::{CATEGORIES_MAX, CHANNELS_MAX, RULES_TOML_BYTES_MAX};
pub use rules::Rules;

/// The rules Throughline ships: GA4's default channel group, its source categories, ad click
/// ids, search engines and payment providers, as the TOML a project copies and edits.
pub fn ga4_default_toml() -> &'static str {
    include_str!("ga4_default.toml")
}

/// What is known of how a session started: its first event's traffic parameters.
///
/// Every field is optional and borrowed. UTM values missing here are looked up in the
/// landing page's query, as is a click id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Touch<'a> {
    pub utm_source: Option<&'a str>,
    pub utm_medium: Option<&'a str>,
    pub utm_campaign: Option<&'a str>,
    /// The name of the click-id parameter the landing URL carried (`gclid`, `fbclid`...).
    pub click_id: Option<&'a str>,
    /// The full referrer URL.
    pub referrer: Option<&'a str>,
    /// The full landing page URL (a bare path works too).
    pub page_url: Option<&'a str>,
}

impl<'a> Touch<'a> {
    /// The touch of a stored event: `collect` has already pulled its UTM parameters (from
    /// `context.campaign` or the URL), click id, referrer and page URL into columns.
    pub fn from_event(event: &'a Event) -> Touch<'a> {
        Touch {
            utm_source: event.utm.source.as_deref(),
            utm_medium: event.utm.medium.as_deref(),
            utm_campaign: event.utm.campaign.as_deref(),
            click_id: event.click_id.as_ref().map(|c| c.param.as_str()),
            referrer: event.referrer.as_deref(),
            page_url: event.page_url.as_deref().or(event.page_path.as_deref()),
        }
    }
}

/// The classification of one touch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classified {
    /// The name of the first matching channel rule, or the rules' `unassigned` name.
    pub channel: String,
    /// As given in `utm_source` (case kept), the click id's network, the search engine's
    /// name, the referrer's host without `www.`, `(not set)` or `(direct)`.
    pub source: String,
    /// As given in `utm_medium`, the click id's medium, `organic`, `referral`, `(not set)`
    /// or `(none)`.
    pub medium: String,
    /// `utm_campaign`, if the touch had one.
    pub campaign: Option<String>,
    /// The referrer was on an excluded domain (or the landing page's own host), so this is
    /// no new touch: the caller may keep the previous session's attribution.
    pub excluded_referral: bool,
}

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("rules file is not valid toml: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("rules file has {bytes} bytes, more than the {max_bytes} allowed")]
    TooLarge { bytes: usize, max_bytes: usize },
    #[error("channel `{channel}`: {reason}")]
    Channel { channel: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// Runs the README's Rust example as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
