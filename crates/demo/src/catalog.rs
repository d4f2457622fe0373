//! The marketing catalogue of each demo brand: every traffic source, its campaign and its
//! assets (creatives), with how well each one works and what it costs.
//!
//! This is the ground truth the generator draws touches from, so analyses can be checked
//! against it: an asset with a higher `lift` converts better, a channel with a high
//! `assist` and a low `close` warms people up for later sessions without closing itself
//! (so first-touch, last-touch and data-driven attribution disagree, as they do in life).
//! Nothing here does IO or draws random numbers.

use crate::Brand;

/// The channel a touch belongs to: GA4's default channel group, plus the three offline
/// channels (print, radio, TV) that reach the site through vanity URLs and promo codes.
///
/// GA4's default rules would put print, radio and TV into "Unassigned" (their
/// `utm_medium` is `print`, `radio`, `tv`); a Throughline rule set should name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Direct,
    OrganicSearch,
    PaidSearch,
    PaidShopping,
    OrganicSocial,
    PaidSocial,
    Display,
    Email,
    Affiliates,
    Referral,
    OrganicVideo,
    Audio,
    Print,
    Radio,
    Tv,
}

impl Channel {
    pub const ALL: [Channel; 15] = [
        Channel::Direct,
        Channel::OrganicSearch,
        Channel::PaidSearch,
        Channel::PaidShopping,
        Channel::OrganicSocial,
        Channel::PaidSocial,
        Channel::Display,
        Channel::Email,
        Channel::Affiliates,
        Channel::Referral,
        Channel::OrganicVideo,
        Channel::Audio,
        Channel::Print,
        Channel::Radio,
        Channel::Tv,
    ];

    /// The channel's display name, as GA4 spells its default channel groups.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Direct => "Direct",
            Channel::OrganicSearch => "Organic Search",
            Channel::PaidSearch => "Paid Search",
            Channel::PaidShopping => "Paid Shopping",
            Channel::OrganicSocial => "Organic Social",
            Channel::PaidSocial => "Paid Social",
            Channel::Display => "Display",
            Channel::Email => "Email",
            Channel::Affiliates => "Affiliates",
            Channel::Referral => "Referral",
            Channel::OrganicVideo => "Organic Video",
            Channel::Audio => "Audio",
            Channel::Print => "Print",
            Channel::Radio => "Radio",
            Channel::Tv => "TV",
        }
    }
}

/// How a source is paid for; the spend export turns this into daily cost rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cost {
    /// Owned or earned media: no spend rows.
    Free,
    /// Cost per click (for CPM-bought display and audio: the effective cost per visit), USD.
    PerClick(f64),
    /// A flat cost per day while the flight runs, in USD per 1,000 generated persons so
    /// that return on spend does not depend on the size of the data set.
    PerFlightDay(f64),
    /// A share of the revenue of sales this affiliate referred: its cookie lasts 30 days
    /// and a later paid click takes the credit away, as affiliate networks count it.
    Commission(f64),
}

/// When the generator uses a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reaches anyone: a first touch or a later session.
    Acquisition,
    /// Only reaches people who showed interest and did not convert yet.
    Retargeting,
    /// Sessions from clicks in the recurring newsletter.
    Newsletter,
    /// Sessions from clicks in triggered emails (welcome, abandoned cart, trial ending...).
    Lifecycle,
}

/// A creative or content variant: the ad, email block or spot that `utm_content` names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Asset {
    pub id: &'static str,
    pub label: &'static str,
    /// Effectiveness against its siblings: multiplies engagement and conversion (1 = par).
    pub lift: f64,
}

/// A traffic source: one (channel, utm_source, utm_medium, utm_campaign) combination.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Source {
    pub channel: Channel,
    /// `utm_source` when tagged, else the site GA4 would name as the source.
    pub source: &'static str,
    /// `utm_medium` when tagged, else GA4's implied medium (`organic`, `referral`...).
    pub medium: &'static str,
    /// `utm_campaign`; empty for untagged sources.
    pub campaign: &'static str,
    /// `utm_term`, for search campaigns.
    pub term: &'static str,
    /// Whether landing URLs carry `utm_*` parameters.
    pub tagged: bool,
    /// The click-id parameter the ad platform appends (`gclid`, `fbclid`...).
    pub click_id: Option<&'static str>,
    /// `document.referrer` values of landings; empty means none (typed, app, email client).
    pub referrers: &'static [&'static str],
    pub landings: &'static [&'static str],
    pub assets: &'static [Asset],
    /// The promo code this source hands out (spoken on air, printed, read by a host).
    pub promo_code: Option<&'static str>,
    pub role: Role,
    /// Weight of this source among first touches.
    pub reach: f64,
    /// Weight of this source among later, self-initiated sessions.
    pub recall: f64,
    /// How much `recall` grows with the person's accumulated warmth (brand demand).
    pub demand: f64,
    /// Warmth a visit adds: how much it raises conversion in later sessions.
    pub assist: f64,
    /// How likely a visit from here converts in the same session.
    pub close: f64,
    pub cost: Cost,
    /// Flight as fractions of the generated range: the source runs in [start, end).
    pub flight: (f64, f64),
}

const fn src(channel: Channel, source: &'static str, medium: &'static str) -> Source {
    Source {
        channel,
        source,
        medium,
        campaign: "",
        term: "",
        tagged: false,
        click_id: None,
        referrers: &[],
        landings: &["/"],
        assets: &[],
        promo_code: None,
        role: Role::Acquisition,
        reach: 0.0,
        recall: 0.0,
        demand: 0.0,
        assist: 0.5,
        close: 0.5,
        cost: Cost::Free,
        flight: (0.0, 1.0),
    }
}

const fn a(id: &'static str, label: &'static str, lift: f64) -> Asset {
    Asset { id, label, lift }
}

impl Source {
    const fn utm(mut self, campaign: &'static str) -> Source {
        self.campaign = campaign;
        self.tagged = true;
        self
    }
    const fn term(mut self, term: &'static str) -> Source {
        self.term = term;
        self
    }
    const fn click(mut self, param: &'static str) -> Source {
        self.click_id = Some(param);
        self
    }
    const fn refs(mut self, referrers: &'static [&'static str]) -> Source {
        self.referrers = referrers;
        self
    }
    const fn lands(mut self, landings: &'static [&'static str]) -> Source {
        self.landings = landings;
        self
    }
    const fn assets(mut self, assets: &'static [Asset]) -> Source {
        self.assets = assets;
        self
    }
    const fn promo(mut self, code: &'static str) -> Source {
        self.promo_code = Some(code);
        self
    }
    const fn role(mut self, role: Role) -> Source {
        self.role = role;
        self
    }
    const fn weights(mut self, reach: f64, recall: f64, demand: f64) -> Source {
        self.reach = reach;
        self.recall = recall;
        self.demand = demand;
        self
    }
    const fn effect(mut self, assist: f64, close: f64) -> Source {
        self.assist = assist;
        self.close = close;
        self
    }
    const fn cost(mut self, cost: Cost) -> Source {
        self.cost = cost;
        self
    }
    const fn flight(mut self, start: f64, end: f64) -> Source {
        self.flight = (start, end);
        self
    }

    /// Whether the source runs at `frac` (0 = start of the range, 1 = its end).
    pub fn live_at(&self, frac: f64) -> bool {
        frac >= self.flight.0 && frac < self.flight.1
    }
}

use Channel::*;
use Cost::*;

const GOOGLE: &[&str] = &["https://www.google.com/"];
const FACEBOOK: &[&str] = &["https://l.facebook.com/", "https://m.facebook.com/"];
const INSTAGRAM: &[&str] = &["https://l.instagram.com/"];
const YOUTUBE: &[&str] = &["https://www.youtube.com/"];
const LINKEDIN: &[&str] = &["https://www.linkedin.com/"];
const REDDIT_HP: &[&str] =
    &["https://www.reddit.com/r/headphones/comments/1f3k2x/sonora_studio_pro_after_a_month/"];
const REDDIT_FN: &[&str] =
    &["https://www.reddit.com/r/productivity/comments/1f9q7z/switched_to_fieldnote/"];

static HEADPHONES: &[Source] = &[
    src(Direct, "(direct)", "(none)")
        .lands(&["/", "/", "/products/studio-pro", "/collections/headphones"])
        .weights(8.0, 30.0, 0.6)
        .effect(0.25, 1.0),
    src(OrganicSearch, "google", "organic")
        .refs(GOOGLE)
        .lands(&[
            "/",
            "/blog/how-anc-works",
            "/blog/best-headphones-for-commuting",
            "/products/studio-pro",
            "/collections/headphones",
        ])
        .weights(14.0, 12.0, 0.3)
        .effect(0.5, 0.8),
    src(OrganicSearch, "bing", "organic")
        .refs(&["https://www.bing.com/"])
        .lands(&["/", "/blog/how-anc-works", "/products/studio-pro"])
        .weights(2.5, 2.0, 0.3)
        .effect(0.5, 0.8),
    src(OrganicSearch, "duckduckgo", "organic")
        .refs(&["https://duckduckgo.com/"])
        .lands(&["/", "/blog/how-anc-works"])
        .weights(1.2, 1.0, 0.3)
        .effect(0.5, 0.8),
    src(PaidSearch, "google", "cpc")
        .utm("hp_search_brand")
        .term("sonora headphones")
        .click("gclid")
        .refs(GOOGLE)
        .assets(&[
            a("rsa_brand_a", "Brand ad: official store", 1.1),
            a("rsa_brand_b", "Brand ad: free 2-day shipping", 0.9),
        ])
        .weights(2.0, 9.0, 1.0)
        .effect(0.2, 1.6)
        .cost(PerClick(0.45)),
    src(PaidSearch, "google", "cpc")
        .utm("hp_search_generic_anc")
        .term("noise cancelling headphones")
        .click("gclid")
        .refs(GOOGLE)
        .lands(&["/lp/quiet-commute", "/products/studio-pro"])
        .assets(&[
            a("rsa_anc_quiet", "Generic ad: silence your commute", 1.25),
            a("rsa_anc_price", "Generic ad: ANC from $89", 0.8),
        ])
        .weights(7.0, 3.0, 0.0)
        .effect(0.6, 0.9)
        .cost(PerClick(1.85)),
    src(PaidSearch, "bing", "cpc")
        .utm("hp_search_generic_anc")
        .term("noise cancelling headphones")
        .click("msclkid")
        .refs(&["https://www.bing.com/"])
        .lands(&["/lp/quiet-commute", "/products/studio-pro"])
        .assets(&[
            a("rsa_anc_quiet", "Generic ad: silence your commute", 1.25),
            a("rsa_anc_price", "Generic ad: ANC from $89", 0.8),
        ])
        .weights(1.5, 0.6, 0.0)
        .effect(0.6, 0.9)
        .cost(PerClick(1.20)),
    src(PaidShopping, "google", "cpc")
        .utm("hp_shopping_catalog")
        .click("gclid")
        .refs(GOOGLE)
        .lands(&["/products/studio-pro", "/products/aria"])
        .assets(&[
            a("pla_studio_pro", "Shopping listing: Studio Pro", 1.0),
            a("pla_aria", "Shopping listing: Aria", 1.15),
        ])
        .weights(4.0, 2.0, 0.0)
        .effect(0.4, 1.1)
        .cost(PerClick(0.95)),
    src(PaidSocial, "facebook", "paid_social")
        .utm("hp_fall_launch")
        .click("fbclid")
        .refs(FACEBOOK)
        .lands(&["/lp/fall-launch"])
        .assets(&[
            a("fb_video_unboxing", "Facebook video: unboxing (15 s)", 1.5),
            a("fb_carousel_colors", "Facebook carousel: colours", 0.6),
        ])
        .weights(8.0, 4.0, 0.0)
        .effect(1.3, 0.35)
        .cost(PerClick(0.70)),
    src(PaidSocial, "instagram", "paid_social")
        .utm("hp_fall_launch")
        .click("fbclid")
        .refs(INSTAGRAM)
        .lands(&["/lp/fall-launch", "/products/aria"])
        .assets(&[
            a("ig_reel_commute", "Instagram reel: commute", 1.3),
            a("ig_story_quiet", "Instagram story: quiet", 0.8),
        ])
        .weights(7.0, 3.5, 0.0)
        .effect(1.2, 0.3)
        .cost(PerClick(0.65)),
    src(PaidSocial, "tiktok", "cpc")
        .utm("hp_creator_collab")
        .click("ttclid")
        .refs(&["https://www.tiktok.com/"])
        .lands(&["/products/aria", "/products/move"])
        .assets(&[
            a("tt_creator_maya", "TikTok creator: Maya", 1.6),
            a("tt_creator_leo", "TikTok creator: Leo", 0.5),
        ])
        .weights(4.0, 2.0, 0.0)
        .effect(1.0, 0.25)
        .cost(PerClick(0.40)),
    src(PaidSocial, "facebook", "paid_social")
        .utm("hp_retargeting_cart")
        .click("fbclid")
        .refs(FACEBOOK)
        .lands(&["/cart"])
        .assets(&[a("fb_dpa_cart", "Dynamic product ad: your cart", 1.0)])
        .role(Role::Retargeting)
        .weights(0.0, 6.0, 0.0)
        .effect(0.3, 1.6)
        .cost(PerClick(1.10)),
    src(Display, "google", "display")
        .utm("hp_display_prospecting")
        .click("dclid")
        .refs(&[
            "https://tpc.googlesyndication.com/",
            "https://news-daily.example/tech",
        ])
        .lands(&["/lp/quiet-commute"])
        .assets(&[
            a("banner_300x250_quiet", "Banner 300x250: quiet", 1.2),
            a("banner_728x90_sale", "Banner 728x90: sale", 0.7),
        ])
        .weights(6.0, 4.0, 0.0)
        .effect(0.9, 0.15)
        .cost(PerClick(0.60)),
    src(Display, "criteo", "banner")
        .utm("hp_retargeting_display")
        .refs(&["https://gum.criteo.com/"])
        .lands(&["/products/studio-pro", "/products/aria"])
        .assets(&[a("criteo_dynamic", "Criteo dynamic retargeting", 1.0)])
        .role(Role::Retargeting)
        .weights(0.0, 5.0, 0.0)
        .effect(0.5, 0.9)
        .cost(PerClick(0.55)),
    src(Email, "newsletter", "email")
        .utm("hp_newsletter_weekly")
        .lands(&[
            "/collections/headphones",
            "/products/studio-pro",
            "/products/aria",
        ])
        .assets(&[
            a("nl_hero_cta", "Newsletter: hero button", 1.15),
            a("nl_product_grid", "Newsletter: product grid", 0.85),
        ])
        .role(Role::Newsletter)
        .effect(0.5, 1.2),
    src(Email, "lifecycle", "email")
        .utm("hp_welcome_series")
        .lands(&["/collections/headphones"])
        .assets(&[
            a("welcome_1", "Welcome 1: your 10% code", 1.1),
            a("welcome_2", "Welcome 2: find your fit", 0.9),
            a("welcome_3", "Welcome 3: reviews", 0.8),
        ])
        .promo("WELCOME10")
        .role(Role::Lifecycle)
        .effect(0.6, 1.1),
    src(Email, "lifecycle", "email")
        .utm("hp_abandoned_cart")
        .lands(&["/cart"])
        .assets(&[
            a("cart_reminder_1h", "Cart reminder after 1 h", 1.3),
            a("cart_reminder_24h", "Cart reminder after 24 h", 0.9),
        ])
        .role(Role::Lifecycle)
        .effect(0.4, 1.8),
    src(Email, "lifecycle", "email")
        .utm("hp_review_request")
        .lands(&["/account/orders"])
        .assets(&[a("review_ask", "How are your new headphones?", 1.0)])
        .role(Role::Lifecycle)
        .effect(0.1, 0.2),
    src(Email, "lifecycle", "email")
        .utm("hp_accessories_cross_sell")
        .lands(&["/products/travel-case", "/products/ear-tips"])
        .assets(&[
            a("xsell_case", "Cross-sell: travel case", 1.0),
            a("xsell_tips", "Cross-sell: ear tips", 0.8),
        ])
        .role(Role::Lifecycle)
        .effect(0.3, 1.0),
    src(Affiliates, "audiogeek_deals", "affiliate")
        .utm("hp_affiliate_program")
        .refs(&["https://audiogeek-deals.example/best-anc-deals"])
        .lands(&["/products/studio-pro"])
        .assets(&[
            a("aff_1042", "AudioGeek deals post", 1.2),
            a("aff_2077", "Coupon site listing", 0.8),
        ])
        .weights(2.5, 1.0, 0.0)
        .effect(0.4, 1.2)
        .cost(Commission(0.08)),
    src(Referral, "audiophile-weekly.example", "referral")
        .refs(&["https://audiophile-weekly.example/reviews/sonora-studio-pro"])
        .lands(&["/products/studio-pro"])
        .weights(2.5, 0.8, 0.0)
        .effect(0.8, 0.7),
    src(Referral, "forum.head-fi.example", "referral")
        .refs(&["https://forum.head-fi.example/threads/sonora-aria-impressions.98765/"])
        .lands(&["/products/aria"])
        .weights(1.5, 0.6, 0.0)
        .effect(0.7, 0.6),
    src(OrganicSocial, "facebook", "social")
        .refs(FACEBOOK)
        .lands(&["/", "/products/aria"])
        .weights(3.0, 0.6, 0.0)
        .effect(0.7, 0.3),
    src(OrganicSocial, "instagram", "social")
        .refs(INSTAGRAM)
        .lands(&["/products/aria", "/lp/fall-launch"])
        .weights(2.5, 0.5, 0.0)
        .effect(0.7, 0.3),
    src(OrganicSocial, "reddit", "social")
        .refs(REDDIT_HP)
        .lands(&["/products/studio-pro"])
        .weights(2.0, 0.5, 0.0)
        .effect(0.9, 0.4),
    src(OrganicSocial, "t.co", "social")
        .refs(&["https://t.co/"])
        .lands(&["/", "/blog/how-anc-works"])
        .weights(1.0, 0.3, 0.0)
        .effect(0.6, 0.3),
    src(OrganicSocial, "pinterest", "social")
        .refs(&["https://www.pinterest.com/"])
        .lands(&["/products/mini", "/collections/headphones"])
        .weights(0.8, 0.2, 0.0)
        .effect(0.5, 0.3),
    src(OrganicVideo, "youtube", "referral")
        .refs(YOUTUBE)
        .lands(&["/products/studio-pro", "/"])
        .weights(3.0, 1.0, 0.0)
        .effect(1.0, 0.3),
    src(OrganicVideo, "youtube", "video")
        .utm("hp_unboxing_video")
        .refs(YOUTUBE)
        .lands(&["/products/studio-pro"])
        .assets(&[a(
            "yt_review_techtalk",
            "TechTalk review: description link",
            1.3,
        )])
        .weights(1.2, 0.3, 0.0)
        .effect(1.1, 0.4),
    src(Audio, "spotify", "audio")
        .utm("hp_spotify_audio")
        .lands(&["/lp/quiet-commute"])
        .assets(&[
            a("audio_30s_commute", "Spotify audio 30 s: commute", 1.0),
            a("audio_15s_sale", "Spotify audio 15 s: sale", 0.7),
        ])
        .weights(2.0, 0.8, 0.0)
        .effect(0.9, 0.2)
        .cost(PerClick(2.10)),
    src(Audio, "the_gear_pod", "audio")
        .utm("hp_podcast_sponsorship")
        .lands(&["/podcast"])
        .assets(&[a("host_read_ep112", "The Gear Pod ep. 112: host read", 1.2)])
        .promo("GEARPOD15")
        .weights(1.5, 0.3, 0.0)
        .effect(1.1, 0.5)
        .cost(PerFlightDay(1.6))
        .flight(0.1, 0.9),
    src(Print, "soundmag", "print")
        .utm("hp_print_fall")
        .lands(&["/print"])
        .assets(&[a("print_fullpage_oct", "SoundMag October: full page", 1.0)])
        .promo("PRINT10")
        .weights(1.0, 0.2, 0.0)
        .effect(0.8, 0.5)
        .cost(PerFlightDay(9.0))
        .flight(0.15, 0.55),
    src(Radio, "kxrf_fm", "radio")
        .utm("hp_radio_fall")
        .lands(&["/radio"])
        .assets(&[
            a("radio_30s_a", "KXRF 30 s spot A: commute", 1.15),
            a("radio_30s_b", "KXRF 30 s spot B: price", 0.8),
        ])
        .promo("RADIO20")
        .weights(1.5, 0.3, 0.0)
        .effect(0.9, 0.4)
        .cost(PerFlightDay(6.0))
        .flight(0.2, 0.7),
    src(Tv, "streamline_ctv", "tv")
        .utm("hp_tv_spot")
        .lands(&["/tv"])
        .assets(&[a("tv_15s_launch", "Connected TV 15 s: launch", 1.0)])
        .promo("TV15")
        .weights(1.5, 0.4, 0.0)
        .effect(1.2, 0.35)
        .cost(PerFlightDay(14.0))
        .flight(0.4, 0.95),
];

static SUBSCRIPTION: &[Source] = &[
    src(Direct, "(direct)", "(none)")
        .lands(&["/", "/", "/pricing", "/features"])
        .weights(7.0, 30.0, 0.6)
        .effect(0.25, 1.0),
    src(OrganicSearch, "google", "organic")
        .refs(GOOGLE)
        .lands(&[
            "/",
            "/blog/zettelkasten-guide",
            "/templates/meeting-notes",
            "/compare/fieldnote-vs-notion",
            "/templates/research-journal",
        ])
        .weights(16.0, 12.0, 0.3)
        .effect(0.6, 0.7),
    src(OrganicSearch, "bing", "organic")
        .refs(&["https://www.bing.com/"])
        .lands(&["/", "/blog/zettelkasten-guide"])
        .weights(2.5, 2.0, 0.3)
        .effect(0.6, 0.7),
    src(OrganicSearch, "duckduckgo", "organic")
        .refs(&["https://duckduckgo.com/"])
        .lands(&["/", "/compare/fieldnote-vs-notion"])
        .weights(1.5, 1.0, 0.3)
        .effect(0.6, 0.7),
    src(PaidSearch, "google", "cpc")
        .utm("fn_search_brand")
        .term("fieldnote")
        .click("gclid")
        .refs(GOOGLE)
        .assets(&[a("rsa_brand", "Brand ad: official site", 1.0)])
        .weights(2.0, 8.0, 1.0)
        .effect(0.2, 1.5)
        .cost(PerClick(0.80)),
    src(PaidSearch, "google", "cpc")
        .utm("fn_search_notes_app")
        .term("note taking app")
        .click("gclid")
        .refs(GOOGLE)
        .lands(&["/features", "/pricing"])
        .assets(&[
            a("rsa_notes_sync", "Generic ad: sync everywhere", 1.2),
            a("rsa_notes_free", "Generic ad: free for 14 days", 0.8),
        ])
        .weights(7.0, 3.0, 0.0)
        .effect(0.6, 0.9)
        .cost(PerClick(3.40)),
    src(PaidSearch, "bing", "cpc")
        .utm("fn_search_notes_app")
        .term("note taking app")
        .click("msclkid")
        .refs(&["https://www.bing.com/"])
        .lands(&["/features"])
        .assets(&[
            a("rsa_notes_sync", "Generic ad: sync everywhere", 1.2),
            a("rsa_notes_free", "Generic ad: free for 14 days", 0.8),
        ])
        .weights(1.5, 0.6, 0.0)
        .effect(0.6, 0.9)
        .cost(PerClick(2.10)),
    src(PaidSocial, "linkedin", "paid_social")
        .utm("fn_teams_b2b")
        .click("li_fat_id")
        .refs(LINKEDIN)
        .lands(&["/lp/teams"])
        .assets(&[
            a("li_carousel_teams", "LinkedIn carousel: teams", 1.35),
            a("li_single_image", "LinkedIn single image", 0.7),
        ])
        .weights(6.0, 3.0, 0.0)
        .effect(1.2, 0.4)
        .cost(PerClick(5.50)),
    src(PaidSocial, "facebook", "paid_social")
        .utm("fn_back_to_school")
        .click("fbclid")
        .refs(FACEBOOK)
        .lands(&["/lp/students"])
        .assets(&[
            a("fb_video_study", "Facebook video: study with me", 1.2),
            a("fb_static_free", "Facebook static: free trial", 0.8),
        ])
        .weights(7.0, 3.0, 0.0)
        .effect(1.1, 0.3)
        .cost(PerClick(0.90))
        .flight(0.0, 0.6),
    src(PaidSocial, "reddit", "cpc")
        .utm("fn_reddit_productivity")
        .refs(REDDIT_FN)
        .lands(&["/compare/fieldnote-vs-notion"])
        .assets(&[a("rd_promoted_post", "Reddit promoted post", 1.0)])
        .weights(3.0, 1.0, 0.0)
        .effect(0.9, 0.35)
        .cost(PerClick(0.75)),
    src(PaidSocial, "facebook", "paid_social")
        .utm("fn_retargeting_trial")
        .click("fbclid")
        .refs(FACEBOOK)
        .lands(&["/pricing"])
        .assets(&[a(
            "fb_trial_reminder",
            "Retargeting: your trial is waiting",
            1.0,
        )])
        .role(Role::Retargeting)
        .weights(0.0, 5.0, 0.0)
        .effect(0.3, 1.4)
        .cost(PerClick(1.60)),
    src(Display, "google", "display")
        .utm("fn_display_prospecting")
        .click("dclid")
        .refs(&[
            "https://tpc.googlesyndication.com/",
            "https://news-daily.example/work",
        ])
        .lands(&["/features"])
        .assets(&[
            a("banner_300x250_sync", "Banner 300x250: sync", 1.1),
            a("banner_160x600_free", "Banner 160x600: free", 0.7),
        ])
        .weights(5.0, 3.0, 0.0)
        .effect(0.8, 0.12)
        .cost(PerClick(0.85)),
    src(Email, "newsletter", "email")
        .utm("fn_product_updates")
        .lands(&["/features", "/blog/second-brain-for-teams"])
        .assets(&[
            a("pu_hero", "Product update: hero", 1.0),
            a("pu_tips", "Product update: tips block", 1.1),
        ])
        .role(Role::Newsletter)
        .effect(0.5, 1.0),
    src(Email, "lifecycle", "email")
        .utm("fn_onboarding_series")
        .lands(&["/app/notes"])
        .assets(&[
            a("onb_day0", "Onboarding day 0: first note", 1.2),
            a("onb_day2", "Onboarding day 2: import", 1.0),
            a("onb_day5", "Onboarding day 5: invite", 0.8),
        ])
        .role(Role::Lifecycle)
        .effect(0.7, 1.0),
    src(Email, "lifecycle", "email")
        .utm("fn_trial_ending")
        .lands(&["/app/settings/billing"])
        .assets(&[
            a("trial_3d_left", "Trial: 3 days left", 1.1),
            a("trial_last_day", "Trial: last day", 1.3),
        ])
        .role(Role::Lifecycle)
        .effect(0.4, 1.6),
    src(Email, "lifecycle", "email")
        .utm("fn_winback")
        .lands(&["/pricing"])
        .assets(&[a("winback_20off", "Win-back: 20% off", 1.0)])
        .promo("COMEBACK20")
        .role(Role::Lifecycle)
        .effect(0.5, 0.9),
    src(Affiliates, "partnerstack", "affiliate")
        .utm("fn_partner_program")
        .refs(&["https://ali-notes.example/best-note-apps"])
        .lands(&["/pricing"])
        .assets(&[
            a("ps_ali_notes", "Ali's notes: best apps list", 1.3),
            a("ps_studyhub", "StudyHub resources page", 0.8),
        ])
        .weights(2.5, 1.0, 0.0)
        .effect(0.5, 1.2)
        .cost(Commission(0.20)),
    src(Referral, "producthunt.com", "referral")
        .refs(&["https://www.producthunt.com/products/fieldnote"])
        .lands(&["/"])
        .weights(2.0, 0.5, 0.0)
        .effect(0.8, 0.6),
    src(Referral, "ali-notes.example", "referral")
        .refs(&["https://ali-notes.example/zettelkasten-tools"])
        .lands(&["/blog/zettelkasten-guide"])
        .weights(1.5, 0.5, 0.0)
        .effect(0.7, 0.5),
    src(OrganicSocial, "linkedin", "social")
        .refs(LINKEDIN)
        .lands(&["/", "/blog/second-brain-for-teams"])
        .weights(3.0, 0.8, 0.0)
        .effect(0.8, 0.3),
    src(OrganicSocial, "reddit", "social")
        .refs(REDDIT_FN)
        .lands(&["/compare/fieldnote-vs-notion"])
        .weights(2.5, 0.5, 0.0)
        .effect(0.9, 0.4),
    src(OrganicSocial, "t.co", "social")
        .refs(&["https://t.co/"])
        .lands(&["/", "/features"])
        .weights(2.0, 0.5, 0.0)
        .effect(0.6, 0.3),
    src(OrganicSocial, "facebook", "social")
        .refs(FACEBOOK)
        .lands(&["/lp/students"])
        .weights(1.0, 0.2, 0.0)
        .effect(0.5, 0.3),
    src(OrganicVideo, "youtube", "referral")
        .refs(YOUTUBE)
        .lands(&["/features", "/templates/research-journal"])
        .weights(3.0, 1.0, 0.0)
        .effect(1.0, 0.3),
    src(OrganicVideo, "youtube", "video")
        .utm("fn_tutorial_series")
        .refs(YOUTUBE)
        .lands(&["/templates/meeting-notes"])
        .assets(&[a(
            "yt_tutorial_templates",
            "Tutorial: templates (description link)",
            1.2,
        )])
        .weights(1.5, 0.3, 0.0)
        .effect(1.0, 0.4),
    src(Audio, "spotify", "audio")
        .utm("fn_spotify_focus")
        .lands(&["/"])
        .assets(&[a("audio_focus_30s", "Spotify audio 30 s: focus", 1.0)])
        .weights(1.5, 0.5, 0.0)
        .effect(0.8, 0.2)
        .cost(PerClick(2.40)),
    src(Audio, "deep_work_pod", "audio")
        .utm("fn_podcast_sponsorship")
        .lands(&["/podcast"])
        .assets(&[a("host_read_ep57", "Deep Work Pod ep. 57: host read", 1.3)])
        .promo("DEEPWORK")
        .weights(2.0, 0.3, 0.0)
        .effect(1.2, 0.5)
        .cost(PerFlightDay(2.0))
        .flight(0.0, 0.8),
    src(Print, "campus_times", "print")
        .utm("fn_print_back_to_school")
        .lands(&["/print"])
        .assets(&[a(
            "print_halfpage_sept",
            "Campus Times September: half page",
            1.0,
        )])
        .promo("CAMPUS30")
        .weights(1.0, 0.2, 0.0)
        .effect(0.7, 0.5)
        .cost(PerFlightDay(5.0))
        .flight(0.0, 0.35),
    src(Radio, "public_radio", "radio")
        .utm("fn_radio_sponsor")
        .lands(&["/radio"])
        .assets(&[a("radio_sponsor_read", "Public radio sponsor read", 1.0)])
        .promo("RADIONOTES")
        .weights(1.2, 0.3, 0.0)
        .effect(0.9, 0.4)
        .cost(PerFlightDay(4.0))
        .flight(0.3, 0.8),
    src(Tv, "streamline_ctv", "tv")
        .utm("fn_ctv_spot")
        .lands(&["/tv"])
        .assets(&[a("tv_30s_teams", "Connected TV 30 s: teams", 1.0)])
        .promo("TVNOTES")
        .weights(1.0, 0.3, 0.0)
        .effect(1.1, 0.3)
        .cost(PerFlightDay(12.0))
        .flight(0.5, 1.0),
];

/// Every source of a brand, in a fixed order (the spend export keeps it).
pub fn catalog(brand: Brand) -> &'static [Source] {
    match brand {
        Brand::Headphones => HEADPHONES,
        Brand::Subscription => SUBSCRIPTION,
    }
}

/// Index of a tagged source by campaign and utm_source; the brand modules look up the
/// email streams and retargeting campaigns they trigger by name once per iterator.
pub(crate) fn find(sources: &[Source], campaign: &str, source: &str) -> u16 {
    sources
        .iter()
        .position(|s| s.campaign == campaign && s.source == source)
        .unwrap_or_else(|| panic!("catalogue has no campaign {campaign} from {source}")) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_consistent() {
        for brand in Brand::ALL {
            let sources = catalog(brand);
            for s in sources {
                assert!(!s.landings.is_empty(), "{s:?}");
                assert_eq!(s.tagged, !s.campaign.is_empty(), "{s:?}");
                assert_eq!(
                    s.tagged,
                    !s.assets.is_empty(),
                    "tagged sources name their assets: {s:?}"
                );
                if s.click_id.is_some() || s.channel == Channel::PaidSearch {
                    assert!(s.tagged, "{s:?}");
                    assert!(
                        matches!(s.medium, "cpc" | "paid_social" | "display"),
                        "{s:?}"
                    );
                }
                assert!(s.flight.0 < s.flight.1);
                let email = matches!(s.role, Role::Newsletter | Role::Lifecycle);
                assert_eq!(email, s.channel == Channel::Email);
                if s.role != Role::Acquisition {
                    assert_eq!(
                        s.reach, 0.0,
                        "only acquisition sources start journeys: {s:?}"
                    );
                }
            }
            // Asset ids are unique within a campaign.
            for s in sources {
                for (i, x) in s.assets.iter().enumerate() {
                    assert!(s.assets[i + 1..].iter().all(|y| y.id != x.id));
                }
            }
            let channels: std::collections::BTreeSet<Channel> =
                sources.iter().map(|s| s.channel).collect();
            let expected = Channel::ALL.len() - usize::from(brand == Brand::Subscription);
            assert_eq!(channels.len(), expected, "{brand:?} covers the channels");
        }
    }
}
