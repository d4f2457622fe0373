//! Rules files: the shipped defaults, extending them (the README's agency example), replacing
//! them, and the errors a broken file gets.

use throughline_classify::{ga4_default_toml, ClassifyError, Rules, Touch};

/// GA4's default channel group, in the order of its documentation (manual traffic).
const GA4_ORDER: [&str; 19] = [
    "Direct",
    "Cross-network",
    "Paid Shopping",
    "Paid Search",
    "Paid Social",
    "Paid Video",
    "Display",
    "Paid Other",
    "Organic Shopping",
    "Organic Social",
    "Organic Video",
    "Organic Search",
    "Referral",
    "Email",
    "Affiliates",
    "Audio",
    "SMS",
    "Mobile Push Notifications",
    "Unassigned",
];

/// The README's example file, so the documentation cannot drift from what works.
fn readme_agency_toml() -> &'static str {
    let readme = include_str!("../README.md");
    let start = readme
        .find("### Example: an agency")
        .expect("README example heading");
    let block = &readme[start..];
    let open = block.find("```toml\n").expect("toml block") + "```toml\n".len();
    let close = block[open..].find("```").expect("end of block");
    &block[open..open + close]
}

fn page(url: &str) -> Touch<'_> {
    Touch {
        page_url: Some(url),
        ..Touch::default()
    }
}

#[test]
fn shipped_toml_parses_and_is_the_default() {
    let shipped = Rules::from_toml(ga4_default_toml()).unwrap();
    assert_eq!(shipped, Rules::ga4_default());
    // An empty extension file is the defaults too.
    assert_eq!(Rules::from_toml("").unwrap(), shipped);
    let names: Vec<&str> = shipped.channel_names().collect();
    assert_eq!(names, GA4_ORDER);
}

#[test]
fn shipped_source_lists_are_ga4s() {
    let rules = Rules::ga4_default();
    let categories = |source: &str| rules.source_categories(source).collect::<Vec<_>>();
    assert_eq!(categories("google"), ["search"]);
    assert_eq!(categories("l.facebook.com"), ["social"]);
    assert_eq!(categories("YouTube.com"), ["video"]);
    assert_eq!(categories("igshopping"), ["shopping"]);
    assert_eq!(categories("Google Shopping"), ["shopping"]);
    assert_eq!(categories("checkout.stripe.com"), ["shopping"]);
    assert!(categories("example.org").is_empty());
    // 819 sources in Google's sheet: 131 search, 590 social, 46 video, 52 shopping.
    let count = |list: &str| {
        let text = ga4_default_toml();
        let at = text.find(&format!("\n{list} = [")).unwrap();
        let end = at + text[at..].find("\n]").unwrap();
        text[at..end].matches('"').count() / 2
    };
    let counts = ["search", "social", "video", "shopping"].map(count);
    assert_eq!(counts, [131, 590, 46, 52]);
}

#[test]
fn agency_rules_add_print_radio_and_tv_ahead_of_the_defaults() {
    let rules = Rules::from_toml(readme_agency_toml()).unwrap();
    let names: Vec<&str> = rules.channel_names().collect();
    assert_eq!(names[..4], ["Radio", "TV", "Print", "Direct"]);
    assert_eq!(names.len(), GA4_ORDER.len() + 4);

    // Vanity paths beat Direct; case and a trailing slash do not matter.
    for url in [
        "https://shop.example/radio",
        "https://shop.example/Radio/",
        "/podcast",
    ] {
        let got = rules.classify(&page(url));
        assert_eq!(got.channel, "Radio", "{url}");
        assert_eq!(
            (got.source.as_str(), got.medium.as_str()),
            ("(direct)", "(none)")
        );
    }
    assert_eq!(
        rules.channel(&page("https://shop.example/radiology")),
        "Direct"
    );
    assert_eq!(rules.channel(&page("https://shop.example/tv")), "TV");
    assert_eq!(
        rules.channel(&page("https://shop.example/print/spring-ad")),
        "Print"
    );
    assert_eq!(
        rules.channel(&page("https://shop.example/printers")),
        "Direct"
    );
    // Promo codes in the landing URL.
    assert_eq!(
        rules.channel(&page("https://shop.example/?promo=TV20")),
        "TV"
    );
    assert_eq!(
        rules.channel(&page("https://shop.example/?promo=tv2")),
        "Direct"
    );
    // utm_medium values.
    let tagged = |medium| Touch {
        utm_source: Some("local-fm"),
        utm_medium: Some(medium),
        ..Touch::default()
    };
    assert_eq!(rules.channel(&tagged("radio")), "Radio");
    assert_eq!(rules.channel(&tagged("Magazine")), "Print");
    assert_eq!(rules.channel(&tagged("ctv")), "TV");
    assert_eq!(Rules::ga4_default().channel(&tagged("radio")), "Unassigned");

    // The defaults still apply to everything else.
    let search = Touch {
        referrer: Some("https://www.google.com/"),
        ..Touch::default()
    };
    assert_eq!(rules.channel(&search), "Organic Search");
    // The new source category, placed before Referral.
    let ai = Touch {
        referrer: Some("https://chatgpt.com/"),
        ..Touch::default()
    };
    assert_eq!(rules.channel(&ai), "AI Assistants");
    assert_eq!(Rules::ga4_default().channel(&ai), "Referral");
    let i = |name| names.iter().position(|n| *n == name).unwrap();
    assert_eq!(i("AI Assistants") + 1, i("Referral"));
    // Own domains are added to the payment providers.
    for host in [
        "https://shop.example/",
        "https://eu.shop-checkout.example/",
        "https://paypal.com/",
    ] {
        let back = Touch {
            referrer: Some(host),
            page_url: Some("https://www.shop.example/thanks"),
            ..Touch::default()
        };
        let got = rules.classify(&back);
        assert!(got.excluded_referral && got.channel == "Direct", "{host}");
    }
}

#[test]
fn extension_positions_and_overrides() {
    let rules = Rules::from_toml(
        r#"
        unassigned = "Other"
        referral_exclusions = ["https://www.MyShop.com/"]

        [click_ids]
        fbclid = { source = "facebook", medium = "referral" }
        partnerclid = { source = "partnernet", medium = "affiliate" }

        [search_engines]
        kagi = ["kagi.com"]

        [sources]
        social = ["mastodon.social"]

        [[channel]]
        name = "Podcast"
        position = "last"
        medium_in = ["podcast"]
        path_in = ["/pod"]

        [[channel]]
        name = "Partner Email"
        after = "Affiliates"
        source_in = ["partner"]
        [[channel.and]]
        medium_in = ["email"]
        "#,
    )
    .unwrap();
    let names: Vec<&str> = rules.channel_names().collect();
    assert_eq!(names.last(), Some(&"Other"));
    assert_eq!(names[names.len() - 2], "Podcast");
    let channel = |touch: Touch<'_>| rules.classify(&touch).channel;

    // "last": reached only when no default matches, so the path rule is shadowed by Direct.
    let medium = |medium| Touch {
        utm_source: Some("show"),
        utm_medium: Some(medium),
        ..Touch::default()
    };
    assert_eq!(channel(medium("podcast")), "Podcast");
    assert_eq!(channel(page("/pod")), "Direct");
    assert_eq!(channel(medium("nothing")), "Other");
    // "after Affiliates" comes after Email, so Email still wins for partner emails.
    let partner = Touch {
        utm_source: Some("partner"),
        ..medium("email")
    };
    assert_eq!(channel(partner), "Email");
    // Click ids: replaced and added.
    let fb = Touch {
        click_id: Some("fbclid"),
        ..Touch::default()
    };
    let got = rules.classify(&fb);
    assert_eq!(
        (got.channel.as_str(), got.medium.as_str()),
        ("Organic Social", "referral")
    );
    assert_eq!(
        channel(page("https://x.example/?partnerclid=1")),
        "Affiliates"
    );
    // Search engines, source lists and exclusions are added to.
    let from = |url| Touch {
        referrer: Some(url),
        ..Touch::default()
    };
    let kagi = rules.classify(&from("https://kagi.com/search?q=x"));
    assert_eq!(
        (kagi.channel.as_str(), kagi.source.as_str()),
        ("Organic Search", "kagi")
    );
    assert_eq!(
        channel(from("https://mastodon.social/@x")),
        "Organic Social"
    );
    assert_eq!(channel(from("https://www.google.de/")), "Organic Search");
    assert!(
        rules
            .classify(&from("https://blog.myshop.com/"))
            .excluded_referral
    );
    assert!(
        rules
            .classify(&from("https://checkout.stripe.com/"))
            .excluded_referral
    );
}

#[test]
fn replace_defaults_uses_only_the_file() {
    let rules = Rules::from_toml(
        r#"
        replace_defaults = true

        [[channel]]
        name = "Paid"
        medium_prefix = ["paid"]
        medium_in = ["cpc"]
        "#,
    )
    .unwrap();
    assert_eq!(
        rules.channel_names().collect::<Vec<_>>(),
        ["Paid", "Unassigned"]
    );
    let got = rules.classify(&Touch {
        click_id: Some("gclid"),
        referrer: Some("https://www.google.com/"),
        ..Touch::default()
    });
    // No click ids, no search engines, no Direct rule: only what the file says.
    assert_eq!(
        (
            got.channel.as_str(),
            got.source.as_str(),
            got.medium.as_str()
        ),
        ("Unassigned", "google.com", "referral")
    );
    let got = rules.classify(&Touch {
        referrer: Some("https://checkout.stripe.com/"),
        ..Touch::default()
    });
    assert!(!got.excluded_referral, "no exclusions either");
    assert_eq!(rules.channel_of("x", "PAID_social", None), "Paid");
}

#[track_caller]
fn refused(toml: &str, needle: &str) -> ClassifyError {
    match Rules::from_toml(toml) {
        Ok(_) => panic!("accepted: {toml}"),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains(needle),
                "`{text}` does not mention `{needle}`"
            );
            e
        }
    }
}

#[test]
fn broken_files_are_refused_with_a_reason() {
    refused(
        "[[channel]]\nname = \"A\"\nmedium_inn = [\"x\"]",
        "unknown condition `medium_inn`",
    );
    refused(
        "[[channel]]\nname = \"A\"\nsource_category = [\"ai\"]",
        "source_category `ai`",
    );
    refused(
        "[[channel]]\nname = \"A\"\nbefore = \"Nope\"\nmedium_in = [\"x\"]",
        "`Nope`",
    );
    refused(
        "[[channel]]\nname = \"A\"\nposition = \"middle\"\nmedium_in = [\"x\"]",
        "middle",
    );
    refused(
        "[[channel]]\nname = \"A\"",
        "channel `A`: has no conditions",
    );
    refused("[[channel]]\nmedium_in = [\"x\"]", "channel `#1`");
    refused("[[channel]]\nname = \"A\"\nmedium_in = []", "empty list");
    refused(
        "[[channel]]\nname = \"A\"\nmedium_in = \"x\"",
        "list of strings",
    );
    refused(
        "[[channel]]\nname = \"A\"\npath_in = [\"radio\"]",
        "not a path",
    );
    refused(
        "[[channel]]\nname = \"A\"\npath_contains_not_after = [\"x\"]",
        "unknown condition",
    );
    refused(
        "[[channel]]\nname = \"A\"\ncampaign_contains_not_after = [{ text = \"x\" }]",
        "not_after",
    );
    refused(
        "replace_defaults = true\n[[channel]]\nname = \"A\"\nposition = \"first\"\nmedium_in = [\"x\"]",
        "no meaning",
    );
    refused("referral_exclusions = [\"not a domain\"]", "not a domain");
    refused("[search_engines]\nx = [\"*\"]", "not a host pattern");
    refused(
        "[click_ids]\nx = { source = \"\", medium = \"cpc\" }",
        "click_ids.x",
    );
    refused("unknown_top_level = 1", "unknown field");
    refused("unassigned = \"\"", "empty");
    assert!(matches!(
        refused("[[channel]\n", "toml"),
        ClassifyError::Toml(_)
    ));
    let huge = format!(
        "# {}",
        "x".repeat(throughline_classify::RULES_TOML_BYTES_MAX)
    );
    assert!(matches!(
        refused(&huge, "bytes"),
        ClassifyError::TooLarge { .. }
    ));
    let many: String = (0..=throughline_classify::CHANNELS_MAX)
        .map(|i| format!("[[channel]]\nname = \"C{i}\"\nmedium_in = [\"m{i}\"]\n"))
        .collect();
    refused(&many, "channels, more than");
}
