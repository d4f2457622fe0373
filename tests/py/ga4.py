"""GA4's default channel group, written from Google's documentation for the reference tests.

Sources: "[GA4] Default channel group" (support.google.com/analytics/answer/9756891) for
the rules and their order, and GA4's published list of sources and their categories for the
source lists. Only what the demo data uses is listed: `classify_source` refuses a source it
has no category decision for, so a new source in the generator fails the test instead of
being guessed. Nothing here is read from Throughline's Rust (its rule file included).

Where GA4 needs a decision the issue made instead (GA4 itself knows no click id but its
own): an ad click id without UTM tags means a paid click of that network (gclid, gbraid,
wbraid: google / cpc; msclkid: bing / cpc; dclid: dfa / cpm; fbclid: facebook / cpc;
ttclid: tiktok / cpc; li_fat_id: linkedin / cpc), and explicit UTM tags win over it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

# GA4 "SOURCE_CATEGORY_*" entries for the sources the demo data sends (UTM sources, the
# source names of search engines, referrer hosts without "www.").
SEARCH = {"google", "bing", "duckduckgo", "yahoo", "baidu", "ecosia", "google.com", "bing.com",
          "duckduckgo.com"}
SOCIAL = {"facebook", "instagram", "linkedin", "reddit", "tiktok", "pinterest", "twitter", "t.co",
          "facebook.com", "m.facebook.com", "l.facebook.com", "instagram.com", "l.instagram.com",
          "linkedin.com", "reddit.com", "tiktok.com", "pinterest.com"}
VIDEO = {"youtube", "youtube.com", "vimeo", "vimeo.com", "twitch", "twitch.tv"}
SHOPPING = {"amazon", "amazon.com", "ebay", "ebay.com", "shopify", "etsy"}
# Sources the demo sends that are in none of GA4's categories (ad servers, newsletters,
# podcasts, publishers, partner sites, offline media, and the sites themselves).
UNLISTED = {"(direct)", "criteo", "gum.criteo.com", "tpc.googlesyndication.com", "dfa", "newsletter",
            "lifecycle", "audiogeek_deals", "audiogeek-deals.example", "audiophile-weekly.example",
            "news-daily.example", "forum.head-fi.example", "spotify", "the_gear_pod", "deep_work_pod",
            "streamline_ctv", "kxrf_fm", "public_radio", "soundmag", "campus_times", "partnerstack",
            "ali-notes.example", "producthunt.com", "sonora-audio.example", "fieldnote.example"}

# Referrer hosts of search engines -> GA4's source name (medium "organic").
SEARCH_ENGINE_HOSTS = {"google.com": "google", "bing.com": "bing", "duckduckgo.com": "duckduckgo",
                       "search.yahoo.com": "yahoo", "baidu.com": "baidu", "ecosia.org": "ecosia"}
# Payment providers: a return from checkout is no new referral (GA4's "unwanted referrals",
# which Throughline lists by default).
PAYMENT_HOSTS = {"paypal.com", "checkout.stripe.com", "stripe.com", "klarna.com", "adyen.com"}
CLICK_IDS = {"gclid": ("google", "cpc"), "gbraid": ("google", "cpc"), "wbraid": ("google", "cpc"),
             "msclkid": ("bing", "cpc"), "dclid": ("dfa", "cpm"), "fbclid": ("facebook", "cpc"),
             "ttclid": ("tiktok", "cpc"), "li_fat_id": ("linkedin", "cpc")}

PAID_MEDIUM = re.compile(r"^(.*cp.*|ppc|retargeting|paid.*)$", re.I)
SHOP_CAMPAIGN = re.compile(r"^(.*(([^a-df-z]|^)shop|shopping).*)$", re.I)


def category(source: str) -> str | None:
    """GA4's category of a source: search, social, video, shopping, or None (listed as none)."""
    s = source.lower()
    for name, members in (("search", SEARCH), ("social", SOCIAL), ("video", VIDEO), ("shopping", SHOPPING)):
        if s in members:
            return name
    if s in UNLISTED:
        return None
    raise KeyError(f"source {source!r}: no GA4 category decision in tests/py/ga4.py; look it up in GA4's list")


def channel(source: str, medium: str, campaign: str | None) -> str:
    """The session default channel group, rules in GA4's order (case-insensitive)."""
    src, med, camp = source.lower(), medium.lower(), (campaign or "").lower()
    cat = category(source)
    paid = bool(PAID_MEDIUM.match(med))
    if src == "(direct)" and med in ("(none)", "(not set)"):
        return "Direct"
    if "cross-network" in camp:
        return "Cross-network"
    shopping = cat == "shopping" or bool(SHOP_CAMPAIGN.match(camp))
    if shopping and paid:
        return "Paid Shopping"
    if cat == "search" and paid:
        return "Paid Search"
    if cat == "social" and paid:
        return "Paid Social"
    if cat == "video" and paid:
        return "Paid Video"
    if med in ("display", "banner", "expandable", "interstitial", "cpm"):
        return "Display"
    if paid:
        return "Paid Other"
    if shopping:
        return "Organic Shopping"
    if cat == "social" or med in ("social", "social-network", "social-media", "sm", "social network", "social media"):
        return "Organic Social"
    if cat == "video" or "video" in med:
        return "Organic Video"
    if cat == "search" or med == "organic":
        return "Organic Search"
    if med in ("referral", "app", "link"):
        return "Referral"
    if src in ("email", "e-mail", "e_mail", "e mail") or med in ("email", "e-mail", "e_mail", "e mail"):
        return "Email"
    if med == "affiliate":
        return "Affiliates"
    if med == "audio":
        return "Audio"
    if src == "sms" or med == "sms":
        return "SMS"
    if med.endswith("push") or "mobile" in med or "notification" in med or src == "firebase":
        return "Mobile Push Notifications"
    return "Unassigned"


@dataclass(frozen=True)
class Traffic:
    """What a session's first event says about where it came from."""

    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    click_id: str | None  # the parameter name
    referrer_host: str | None  # without "www."


def _str(v) -> str | None:
    return v if isinstance(v, str) and v else None


def _host(url: str) -> str | None:
    try:
        h = urlsplit(url).hostname
    except ValueError:
        return None
    if not h:
        return None
    return h[4:] if h.startswith("www.") else h


def traffic_of(row: dict) -> Traffic:
    """From an exported event: the Segment spec puts UTM tags in `context.campaign`; else
    they are read from the page URL's query, as GA4 reads its landing page. The page URL and
    referrer of a page/screen call are in its properties, else in `context.page`."""
    kind = row.get("type")
    props = row.get("properties") or {}
    ctx = row.get("context") or {}
    page = ctx.get("page") if isinstance(ctx.get("page"), dict) else {}
    own = kind in ("page", "screen")
    url = (_str(props.get("url")) if own else None) or _str(page.get("url"))
    referrer = (_str(props.get("referrer")) if own else None) or _str(page.get("referrer"))
    query = parse_qs(urlsplit(url).query) if url else {}
    campaign = ctx.get("campaign") if isinstance(ctx.get("campaign"), dict) else {}

    def utm(key: str, param: str) -> str | None:
        return _str(campaign.get(key)) or _str((query.get(param) or [None])[0])

    click = next((p for p in ("gclid", "gbraid", "wbraid", "dclid", "msclkid", "fbclid", "ttclid", "li_fat_id",
                              "twclid", "yclid")
                  if _str((query.get(p) or [None])[0])), None)
    return Traffic(utm("source", "utm_source"), utm("medium", "utm_medium"), utm("name", "utm_campaign"),
                   click, _host(referrer) if referrer else None)


def source_medium(t: Traffic, site_hosts: set[str]) -> tuple[str, str]:
    """GA4's session source / medium: UTM tags, else an ad click id, else the referrer
    (a search engine: its name / organic; the site itself or a payment provider: none, the
    visit is direct; anything else: the host / referral), else (direct) / (none)."""
    if t.utm_source or t.utm_medium:
        return t.utm_source or "(not set)", t.utm_medium or "(not set)"
    if t.click_id:
        if t.click_id not in CLICK_IDS:
            raise KeyError(f"click id {t.click_id!r}: no mapping in tests/py/ga4.py")
        return CLICK_IDS[t.click_id]
    if t.referrer_host:
        h = t.referrer_host
        if h in site_hosts or h in PAYMENT_HOSTS:
            return "(direct)", "(none)"
        if h in SEARCH_ENGINE_HOSTS:
            return SEARCH_ENGINE_HOSTS[h], "organic"
        return h, "referral"
    return "(direct)", "(none)"
