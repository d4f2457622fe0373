//! What a marketer would have configured for the demo brands: the asset registry (every
//! tagged creative of the catalogue, with its headline, copy and destination URL) and the
//! channel rules for the offline channels GA4's defaults leave in Unassigned (print, radio,
//! TV). `throughline demo` writes both into each project, so `query assets` names the
//! assets and `query audit` has a clean baseline to find injected problems against.
//!
//! Pure text generation from the catalogue: no IO.

use crate::catalog::{catalog, Channel, Role};
use crate::{headphones, subscription, Brand};

/// The brand's asset registry as CSV (`id,kind,name,destination_url,campaign,headline,copy`),
/// one row per distinct creative id.
pub fn registry_csv(brand: Brand) -> String {
    let mut out = String::from("id,kind,name,destination_url,campaign,headline,copy\n");
    let mut seen: Vec<&str> = Vec::new();
    for s in catalog(brand).iter().filter(|s| s.tagged) {
        let kind = match (s.channel, s.role) {
            (_, Role::Retargeting) => "retargeting",
            (Channel::Email, _) => "email",
            (Channel::PaidSearch, _) => "search",
            (Channel::PaidSocial | Channel::OrganicSocial, _) => "social",
            (Channel::Display, _) => "display",
            (Channel::OrganicVideo, _) => "video",
            (Channel::Audio, _) if s.medium == "audio" && s.source == "spotify" => "ad",
            (Channel::Audio, _) => "podcast",
            (Channel::Print, _) => "print",
            (Channel::Radio, _) => "radio",
            (Channel::Tv, _) => "tv",
            (Channel::Affiliates, _) => "link",
            _ => "ad",
        };
        // The copy says what its landing pages say: a consistent campaign.
        let titles: Vec<&str> = s.landings.iter().map(|p| page_title(brand, p)).collect();
        for a in s.assets {
            if seen.contains(&a.id) {
                continue;
            }
            seen.push(a.id);
            let headline = a.label.split_once(": ").map_or(a.label, |(_, h)| h);
            let url = format!(
                "{}{}?utm_source={}&utm_medium={}&utm_campaign={}&utm_content={}",
                brand.origin(),
                s.landings[0],
                s.source,
                s.medium,
                s.campaign,
                a.id
            );
            let fields = [
                a.id,
                kind,
                a.label,
                &url,
                s.campaign,
                headline,
                &titles.join(". "),
            ];
            let row: Vec<String> = fields.iter().map(|f| csv_cell(f)).collect();
            out.push_str(&row.join(","));
            out.push('\n');
        }
    }
    out
}

fn page_title(brand: Brand, path: &str) -> &'static str {
    match brand {
        Brand::Headphones => headphones::page_meta(path).1,
        Brand::Subscription => subscription::page_meta(path).1,
    }
}

fn csv_cell(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// Channel rules for the brand's offline media: tagged print, radio and TV links and their
/// vanity paths get their own channels instead of Unassigned, and the brand's own domain
/// is no referral.
pub fn channels_toml(brand: Brand) -> String {
    let host = brand
        .origin()
        .trim_start_matches("https://")
        .trim_start_matches("www.");
    format!(
        r#"# Demo channel rules: GA4's defaults plus the brand's offline channels.
referral_exclusions = ["{host}"]

[[channel]]
name = "Print"
path_in = ["/print"]
medium_in = ["print", "magazine", "newspaper"]

[[channel]]
name = "Radio"
path_in = ["/radio"]
medium_in = ["radio"]

[[channel]]
name = "TV"
path_in = ["/tv"]
medium_in = ["tv", "ctv", "television"]
"#
    )
}
