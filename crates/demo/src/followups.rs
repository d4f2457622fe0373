//! The follow-up journeys and frequency caps `throughline demo` sets up in each brand's
//! project, so the orchestration has something real to show: journeys that retarget
//! cart abandoners and trial users through audience exports (files for ad platforms: no
//! SMTP server or webhook receiver is needed to run the demo), with holdout groups, goals,
//! and caps that make two journeys compete for one person.
//!
//! The demo's history is older than the moment it runs, so each trigger takes events of
//! any age (`max_age`): when the server starts, the orchestrator's catch-up feeds the
//! journeys the whole history once, in order. Pure data, like the registry and channel
//! rules in [`crate::registry`].

use crate::Brand;

/// The journey files (TOML, as `throughline journeys create` reads them) of a brand.
pub fn journeys_toml(brand: Brand) -> &'static [&'static str] {
    match brand {
        Brand::Headphones => &[CART_RECOVERY, POST_PURCHASE],
        Brand::Subscription => &[TRIAL_CONVERSION, WIN_BACK],
    }
}

/// The `[orchestrate] caps` of the demo: at most 3 e-mails in any 7 days and 1 a day (what
/// `query fatigue` compares its recommendation with), and one audience export per person a
/// day across journeys. As `(channel, count, per)`.
pub const CAPS: [(&str, u32, &str); 3] =
    [("email", 3, "7d"), ("email", 1, "1d"), ("export", 1, "1d")];

const CART_RECOVERY: &str = r#"
name = "cart-recovery"
priority = 5
trigger = { event = "Product Added", max_age = "3650d" }
goal = { event = "Order Completed", within = "7d" }

[[steps]]
id = "holdout"
type = "split"
variants = [{ name = "holdout", weight = 1, holdout = true, next = "end" }, { name = "retarget", weight = 9 }]

[[steps]]
id = "retarget"
type = "export"
audience = "cart-abandoners"

[[steps]]
id = "pause"
type = "wait"
duration = "2d"

[[steps]]
id = "last-call"
type = "export"
audience = "cart-abandoners-last-call"
"#;

const POST_PURCHASE: &str = r#"
name = "post-purchase"
priority = 3
trigger = { event = "Order Completed", max_age = "3650d" }

[[steps]]
id = "lookalike"
type = "export"
audience = "recent-buyers"

[[steps]]
id = "settle"
type = "wait"
duration = "14d"

[[steps]]
id = "accessories"
type = "export"
audience = "accessory-prospects"
"#;

const TRIAL_CONVERSION: &str = r#"
name = "trial-conversion"
priority = 5
trigger = { event = "Trial Started", max_age = "3650d" }
goal = { event = "Subscription Started", within = "14d" }

[[steps]]
id = "holdout"
type = "split"
variants = [{ name = "holdout", weight = 1, holdout = true, next = "end" }, { name = "nudge", weight = 9 }]

[[steps]]
id = "retarget"
type = "export"
audience = "trial-retargeting"

[[steps]]
id = "pause"
type = "wait"
duration = "3d"

[[steps]]
id = "last-call"
type = "export"
audience = "trial-last-call"
"#;

const WIN_BACK: &str = r#"
name = "win-back"
priority = 3
trigger = { event = "Subscription Cancelled", max_age = "3650d" }
goal = { event = "Subscription Started", within = "30d" }

[[steps]]
id = "win-back"
type = "export"
audience = "win-back"

[[steps]]
id = "pause"
type = "wait"
duration = "7d"

[[steps]]
id = "offer"
type = "export"
audience = "win-back-offer"
"#;
