//! GA4's default channel group, one test per channel, each with the parameters GA4's
//! documentation gives for it; then how source and medium are derived from click ids,
//! referrers and landing URLs, and referral exclusions.

use throughline_classify::{Classified, Rules, Touch};

/// Classifies `touch` with the default rules and compares (channel, source, medium).
#[track_caller]
fn check(touch: Touch<'_>, channel: &str, source: &str, medium: &str) -> Classified {
    let rules = Rules::ga4_default();
    let got = rules.classify(&touch);
    assert_eq!(
        (
            got.channel.as_str(),
            got.source.as_str(),
            got.medium.as_str()
        ),
        (channel, source, medium),
        "{touch:?}"
    );
    assert_eq!(
        rules.channel(&touch),
        got.channel,
        "channel() agrees with classify()"
    );
    got
}

fn utm<'a>(source: &'a str, medium: &'a str) -> Touch<'a> {
    Touch {
        utm_source: Some(source),
        utm_medium: Some(medium),
        ..Touch::default()
    }
}

fn utm_campaign<'a>(source: &'a str, medium: &'a str, campaign: &'a str) -> Touch<'a> {
    Touch {
        utm_campaign: Some(campaign),
        ..utm(source, medium)
    }
}

fn referrer(url: &str) -> Touch<'_> {
    Touch {
        referrer: Some(url),
        page_url: Some("https://shop.example/landing"),
        ..Touch::default()
    }
}

fn click(param: &str) -> Touch<'_> {
    Touch {
        click_id: Some(param),
        ..Touch::default()
    }
}

#[test]
fn direct_when_nothing_is_known() {
    let got = check(Touch::default(), "Direct", "(direct)", "(none)");
    assert!(!got.excluded_referral);
    assert_eq!(got.campaign, None);
    check(
        utm("(direct)", "(not set)"),
        "Direct",
        "(direct)",
        "(not set)",
    );
    // Blank values are no values.
    check(utm(" ", ""), "Direct", "(direct)", "(none)");
}

#[test]
fn cross_network_when_the_campaign_says_so() {
    let got = check(
        utm_campaign("google", "cpc", "cross-network"),
        "Cross-network",
        "google",
        "cpc",
    );
    assert_eq!(got.campaign.as_deref(), Some("cross-network"));
    // "contains", any case, and ahead of Paid Search.
    check(
        utm_campaign("google", "cpc", "PMax Cross-Network Q3"),
        "Cross-network",
        "google",
        "cpc",
    );
}

#[test]
fn paid_shopping_for_shopping_campaigns_and_sites() {
    check(
        utm_campaign("google", "cpc", "summer-shopping"),
        "Paid Shopping",
        "google",
        "cpc",
    );
    check(
        utm_campaign("google", "cpc", "eshop_q3"),
        "Paid Shopping",
        "google",
        "cpc",
    );
    check(utm("amazon", "ppc"), "Paid Shopping", "amazon", "ppc");
    check(
        utm("IGShopping", "paid"),
        "Paid Shopping",
        "IGShopping",
        "paid",
    );
    // "workshop" is not a shop: GA4's ([^a-df-z]|^)shop.
    check(
        utm_campaign("google", "cpc", "workshop"),
        "Paid Search",
        "google",
        "cpc",
    );
}

#[test]
fn paid_search() {
    check(utm("google", "cpc"), "Paid Search", "google", "cpc");
    check(utm("bing", "ppc"), "Paid Search", "bing", "ppc");
    check(utm("Google", "CPC"), "Paid Search", "Google", "CPC");
    check(
        utm("duckduckgo", "retargeting"),
        "Paid Search",
        "duckduckgo",
        "retargeting",
    );
    check(
        utm("yahoo", "paidsearch"),
        "Paid Search",
        "yahoo",
        "paidsearch",
    );
    check(click("gclid"), "Paid Search", "google", "cpc");
    check(click("gbraid"), "Paid Search", "google", "cpc");
    check(click("wbraid"), "Paid Search", "google", "cpc");
    check(click("msclkid"), "Paid Search", "bing", "cpc");
}

#[test]
fn paid_social() {
    check(utm("facebook", "cpc"), "Paid Social", "facebook", "cpc");
    check(
        utm("linkedin.com", "paid_social"),
        "Paid Social",
        "linkedin.com",
        "paid_social",
    );
    check(click("fbclid"), "Paid Social", "facebook", "cpc");
    check(click("ttclid"), "Paid Social", "tiktok", "cpc");
    check(click("li_fat_id"), "Paid Social", "linkedin", "cpc");
}

#[test]
fn paid_video() {
    check(utm("youtube", "cpc"), "Paid Video", "youtube", "cpc");
    check(utm("vimeo.com", "cpv"), "Paid Video", "vimeo.com", "cpv");
}

#[test]
fn display() {
    for medium in [
        "display",
        "banner",
        "expandable",
        "interstitial",
        "cpm",
        "Display",
    ] {
        check(utm("adnetwork", medium), "Display", "adnetwork", medium);
    }
    // Campaign Manager / DV360 clicks.
    check(click("dclid"), "Display", "dfa", "cpm");
    // A search site's cpm is Paid Search: GA4's paid pattern (.*cp.*) comes first.
    check(utm("google", "cpm"), "Paid Search", "google", "cpm");
}

#[test]
fn paid_other() {
    for medium in ["cpv", "cpa", "paid_other", "ppc", "retargeting", "ocpm"] {
        check(utm("adnetwork", medium), "Paid Other", "adnetwork", medium);
    }
}

#[test]
fn organic_shopping() {
    check(
        utm("amazon", "referral"),
        "Organic Shopping",
        "amazon",
        "referral",
    );
    check(
        referrer("https://www.etsy.com/listing/1"),
        "Organic Shopping",
        "etsy.com",
        "referral",
    );
    check(
        utm_campaign("partner", "feed", "Shop the Look"),
        "Organic Shopping",
        "partner",
        "feed",
    );
    // Rule order is GA4's: a shop campaign sent by email is Organic Shopping, not Email.
    check(
        utm_campaign("newsletter", "email", "shop-sale"),
        "Organic Shopping",
        "newsletter",
        "email",
    );
}

#[test]
fn organic_social() {
    check(
        referrer("https://l.facebook.com/"),
        "Organic Social",
        "l.facebook.com",
        "referral",
    );
    check(
        referrer("https://t.co/abc"),
        "Organic Social",
        "t.co",
        "referral",
    );
    check(
        referrer("https://www.reddit.com/r/x"),
        "Organic Social",
        "reddit.com",
        "referral",
    );
    check(
        utm("newsletter", "social"),
        "Organic Social",
        "newsletter",
        "social",
    );
    check(
        utm("mastodon", "social network"),
        "Organic Social",
        "mastodon",
        "social network",
    );
    check(
        utm("facebook", "(not set)"),
        "Organic Social",
        "facebook",
        "(not set)",
    );
}

#[test]
fn organic_video() {
    check(
        referrer("https://www.youtube.com/watch?v=1"),
        "Organic Video",
        "youtube.com",
        "referral",
    );
    check(
        referrer("https://m.youtube.com/"),
        "Organic Video",
        "m.youtube.com",
        "referral",
    );
    check(
        utm("partner", "video-review"),
        "Organic Video",
        "partner",
        "video-review",
    );
}

#[test]
fn organic_search() {
    check(
        referrer("https://www.google.com/"),
        "Organic Search",
        "google",
        "organic",
    );
    check(
        referrer("https://www.google.co.uk/search?q=x"),
        "Organic Search",
        "google",
        "organic",
    );
    check(
        referrer("https://www.bing.com/search?q=x"),
        "Organic Search",
        "bing",
        "organic",
    );
    check(
        referrer("https://duckduckgo.com/"),
        "Organic Search",
        "duckduckgo",
        "organic",
    );
    check(
        referrer("https://uk.search.yahoo.com/"),
        "Organic Search",
        "yahoo",
        "organic",
    );
    check(
        referrer("https://www.ecosia.org/search"),
        "Organic Search",
        "ecosia.org",
        "organic",
    );
    check(
        referrer("android-app://com.google.android.googlequicksearchbox/"),
        "Organic Search",
        "google",
        "organic",
    );
    // A source on GA4's search list is Organic Search whatever its medium.
    check(
        referrer("https://news.google.com/"),
        "Organic Search",
        "news.google.com",
        "referral",
    );
    check(
        utm("my-engine", "organic"),
        "Organic Search",
        "my-engine",
        "organic",
    );
}

#[test]
fn referral() {
    check(
        referrer("https://blog.example.org/post"),
        "Referral",
        "blog.example.org",
        "referral",
    );
    // Other Google hosts are sites, not the search engine.
    check(
        referrer("https://docs.google.com/document/d/1"),
        "Referral",
        "docs.google.com",
        "referral",
    );
    check(utm("partner", "link"), "Referral", "partner", "link");
    check(utm("partner", "app"), "Referral", "partner", "app");
}

#[test]
fn email() {
    check(utm("newsletter", "email"), "Email", "newsletter", "email");
    check(utm("newsletter", "E-Mail"), "Email", "newsletter", "E-Mail");
    check(utm("e_mail", "weekly"), "Email", "e_mail", "weekly");
    // GA4 matches the whole value.
    check(
        utm("crm", "newsletter-email"),
        "Unassigned",
        "crm",
        "newsletter-email",
    );
}

#[test]
fn affiliates() {
    check(
        utm("partner", "affiliate"),
        "Affiliates",
        "partner",
        "affiliate",
    );
}

#[test]
fn audio() {
    check(utm("spotify", "audio"), "Audio", "spotify", "audio");
}

#[test]
fn sms() {
    let got = check(
        Touch {
            utm_source: Some("sms"),
            ..Touch::default()
        },
        "SMS",
        "sms",
        "(not set)",
    );
    assert!(!got.excluded_referral);
    check(utm("twilio", "sms"), "SMS", "twilio", "sms");
}

#[test]
fn mobile_push_notifications() {
    for medium in [
        "push",
        "web-push",
        "mobile",
        "in-app-notification",
        "Notification",
    ] {
        check(
            utm("app", medium),
            "Mobile Push Notifications",
            "app",
            medium,
        );
    }
    check(
        utm("firebase", "fcm"),
        "Mobile Push Notifications",
        "firebase",
        "fcm",
    );
}

#[test]
fn unassigned_when_no_rule_matches() {
    check(utm("foo", "bar"), "Unassigned", "foo", "bar");
    check(
        Touch {
            utm_medium: Some("print"),
            ..Touch::default()
        },
        "Unassigned",
        "(not set)",
        "print",
    );
}

#[test]
fn referral_exclusions_are_no_new_touch() {
    for url in [
        "https://checkout.stripe.com/c/pay/cs_test",
        "https://www.paypal.com/checkoutnow?token=1",
        "https://pay.klarna.com/eu/",
    ] {
        let got = check(referrer(url), "Direct", "(direct)", "(none)");
        assert!(got.excluded_referral, "{url}");
    }
    // The landing page's own host, with or without www.
    let own = Touch {
        referrer: Some("https://WWW.shop.example/cart"),
        page_url: Some("https://shop.example/thanks"),
        ..Touch::default()
    };
    assert!(check(own, "Direct", "(direct)", "(none)").excluded_referral);
    // Only subdomains, not look-alikes.
    let lookalike = referrer("https://notpaypal.com/");
    assert!(!check(lookalike, "Referral", "notpaypal.com", "referral").excluded_referral);
    // Tagged links are classified by their tags even after a checkout.
    let tagged = Touch {
        referrer: Some("https://checkout.stripe.com/"),
        ..utm("newsletter", "email")
    };
    assert!(!check(tagged, "Email", "newsletter", "email").excluded_referral);
}

#[test]
fn utm_parameters_come_first_then_click_ids_then_the_referrer() {
    let everything = Touch {
        utm_source: Some("newsletter"),
        utm_medium: Some("email"),
        click_id: Some("gclid"),
        referrer: Some("https://www.google.com/"),
        ..Touch::default()
    };
    check(everything, "Email", "newsletter", "email");
    let click_and_referrer = Touch {
        utm_source: None,
        utm_medium: None,
        ..everything
    };
    check(click_and_referrer, "Paid Search", "google", "cpc");
    // A campaign name alone does not replace the source; it is kept.
    let campaign_only = Touch {
        utm_campaign: Some("spring"),
        ..click_and_referrer
    };
    assert_eq!(
        check(campaign_only, "Paid Search", "google", "cpc")
            .campaign
            .as_deref(),
        Some("spring")
    );
    // An unknown click id is no evidence: the referrer decides.
    let unknown = Touch {
        click_id: Some("someclid"),
        ..referrer("https://www.google.com/")
    };
    check(unknown, "Organic Search", "google", "organic");
}

#[test]
fn landing_url_query_fills_in_missing_utm_and_click_ids() {
    let tagged = Touch {
        page_url: Some("https://shop.example/?utm_source=News%20Letter&utm_medium=Email&utm_campaign=spring+sale"),
        ..Touch::default()
    };
    let got = check(tagged, "Email", "News Letter", "Email");
    assert_eq!(got.campaign.as_deref(), Some("spring sale"));
    // context.campaign (the touch's own fields) wins over the URL.
    let both = Touch {
        utm_source: Some("crm"),
        ..tagged
    };
    check(both, "Email", "crm", "Email");
    let clicked = Touch {
        page_url: Some("https://shop.example/p?msclkid=abc&gclid=def"),
        ..Touch::default()
    };
    check(clicked, "Paid Search", "bing", "cpc");
    let empty_click = Touch {
        page_url: Some("https://shop.example/p?gclid="),
        ..Touch::default()
    };
    check(empty_click, "Direct", "(direct)", "(none)");
}

#[test]
fn malformed_referrers_are_direct() {
    for url in [
        "",
        "about:blank",
        "not a url",
        "https:///path",
        "/relative/path",
    ] {
        let got = check(referrer(url), "Direct", "(direct)", "(none)");
        assert!(!got.excluded_referral, "{url:?}");
    }
    // Host case and a port do not matter.
    check(
        referrer("HTTPS://WWW.Google.COM:443/"),
        "Organic Search",
        "google",
        "organic",
    );
    check(
        referrer("https://Blog.Example.org:8080/x"),
        "Referral",
        "blog.example.org",
        "referral",
    );
}

#[test]
fn channel_of_a_known_source_and_medium() {
    let rules = Rules::ga4_default();
    assert_eq!(rules.channel_of("google", "cpc", None), "Paid Search");
    assert_eq!(
        rules.channel_of("google", "cpc", Some("cross-network")),
        "Cross-network"
    );
    assert_eq!(rules.channel_of("(direct)", "(none)", None), "Direct");
    assert_eq!(
        rules.channel_of("m.facebook.com", "referral", None),
        "Organic Social"
    );
    assert_eq!(rules.channel_of("whatever", "whatever", None), "Unassigned");
}

#[test]
fn touch_of_a_stored_event() {
    let event: throughline_model::Event = serde_json::from_value(serde_json::json!({
        "message_id": "m-1", "type": "page", "timestamp": 0, "received_at": 0,
        "page_url": "https://shop.example/landing?gclid=abc",
        "referrer": "https://www.google.com/",
        "utm": {"campaign": "spring"},
        "click_id": {"param": "gclid", "value": "abc"},
    }))
    .unwrap();
    let touch = Touch::from_event(&event);
    assert_eq!(touch.click_id, Some("gclid"));
    assert_eq!(touch.utm_source, None);
    let got = check(touch, "Paid Search", "google", "cpc");
    assert_eq!(got.campaign.as_deref(), Some("spring"));
}
