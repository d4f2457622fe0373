//! The words in the data: e-mail subjects, survey questions and free-text comments.
//!
//! Comments are picked by score and by the person's worst experience, so text analysis
//! finds what the numbers say ("checkout kept rejecting my postcode" comes from people who
//! hit checkout errors). Several languages and a few emoji appear on purpose.

use crate::journey::Survey;
use crate::Brand;

/// What a negative comment is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    None,
    Checkout,
    Delivery,
    Support,
    Product,
    Pairing,
    Billing,
    Sync,
    Onboarding,
}

const HP_POSITIVE: &[&str] = &[
    "Sound is amazing for the price 🎧",
    "Checkout was quick and painless.",
    "Love them — the noise cancelling is magic on the train.",
    "Super fast delivery, great packaging.",
    "Très bon son, livraison rapide.",
    "Klang ist top, sehr zufrieden 👍",
    "Exactly what I was looking for, really happy.",
    "The app made pairing easy, love it.",
    "Comfortable enough to wear all day.",
    "音質がとても良いです！",
];
const HP_NEUTRAL: &[&str] = &[
    "Good headphones, a bit pricey.",
    "Fine overall, the app could be clearer.",
    "Does the job. Case feels cheap.",
    "Battery life is okay, not amazing.",
    "It's okay.",
];
const HP_NEGATIVE: &[&str] = &[
    "Not worth the money.",
    "Disappointed, expected more from the reviews.",
    "Meh. Disappointing, would not buy again.",
];
const SUB_POSITIVE: &[&str] = &[
    "Fieldnote replaced three apps for me ✨",
    "Search is lightning fast, love it.",
    "Onboarding was clear and short.",
    "My whole team loves it now.",
    "Synchronisierung funktioniert einfach super.",
    "Sencillo y rápido, me encanta.",
    "Templates saved me hours this week.",
];
const SUB_NEUTRAL: &[&str] = &[
    "Useful, but the mobile app lags behind the web.",
    "Good, a bit expensive for a notes app.",
    "Fine. Missing a proper offline mode.",
    "It's okay.",
];
const SUB_NEGATIVE: &[&str] = &[
    "Too expensive for what it does, disappointed.",
    "Not sure it's worth it anymore.",
    "Missing features I need every day.",
];

const CHECKOUT: &[&str] = &[
    "Checkout kept rejecting my postcode.",
    "The payment form reset twice — so frustrating, almost gave up.",
    "Way too many steps to pay, annoying.",
    "El formulario de pago dio error dos veces.",
];
const DELIVERY: &[&str] = &[
    "Delivery was a week late and nobody told me. Terrible.",
    "Paket kam viel zu spät.",
    "Tracking said delivered, it wasn't. Arrived days later, really annoyed.",
];
const SUPPORT: &[&str] = &[
    "Took three emails to get an answer. Awful support.",
    "Support closed my ticket without fixing anything, useless 😠",
    "Waited days for a reply, very disappointed.",
    "J'ai attendu une semaine une réponse du support.",
];
const PRODUCT: &[&str] = &[
    "Left earbud stopped charging after a week.",
    "Had to return them, the fit was awful.",
    "Crackling in the right ear from day one, poor quality.",
];
const PAIRING: &[&str] = &[
    "Pairing with my laptop is a nightmare, so frustrating.",
    "アプリの接続が不安定です。",
    "Keeps dropping the Bluetooth connection. Annoying.",
];
const BILLING: &[&str] = &[
    "Charged twice this month.",
    "My card was declined for no reason, then charged anyway.",
    "Billing page is confusing.",
];
const SYNC: &[&str] = &[
    "Sync lost my notes — unacceptable.",
    "Conflicts every time I edit on my phone.",
    "Notes don't show up on my laptop for minutes, frustrating.",
];
const ONBOARDING: &[&str] = &[
    "Import from Evernote failed halfway.",
    "Setup took forever, too many steps, confusing.",
    "Couldn't figure out how to invite my team. Confusing.",
];

/// A comment for a response with normalized score `norm` (0 worst, 1 best).
pub(crate) fn comment(brand: Brand, norm: f64, cause: Cause, pick: usize) -> &'static str {
    let (pos, neu, neg) = match brand {
        Brand::Headphones => (HP_POSITIVE, HP_NEUTRAL, HP_NEGATIVE),
        Brand::Subscription => (SUB_POSITIVE, SUB_NEUTRAL, SUB_NEGATIVE),
    };
    let pool = if norm >= 0.8 {
        pos
    } else if norm >= 0.6 {
        neu
    } else {
        match cause {
            Cause::None => neg,
            Cause::Checkout => CHECKOUT,
            Cause::Delivery => DELIVERY,
            Cause::Support => SUPPORT,
            Cause::Product => PRODUCT,
            Cause::Pairing => PAIRING,
            Cause::Billing => BILLING,
            Cause::Sync => SYNC,
            Cause::Onboarding => ONBOARDING,
        }
    };
    pool[pick % pool.len()]
}

/// The first message of a support ticket about `topic` (the help desk's topic names).
/// People write to support when something is wrong, so most are negative; some are
/// plain questions.
pub(crate) fn support_message(topic: &str, pick: usize) -> &'static str {
    let pool: &[&str] = match topic {
        "where_is_my_order" => &[
            "Where is my order? It's been a week and the tracking hasn't moved.",
            "My order still hasn't arrived, this is really frustrating.",
            "Hi, can you tell me when my order will ship? Thanks!",
        ],
        "pairing" => &[
            "My headphones won't pair with my laptop, I've tried everything.",
            "Bluetooth keeps disconnecting, very annoying.",
            "How do I pair the Studio Pro with two devices? Thanks.",
        ],
        "defect" => &[
            "The left earbud stopped working after a week. Really disappointed.",
            "There is a horrible crackling noise in the right ear.",
            "The charging case is broken, please help.",
        ],
        "return" => &[
            "I'd like to return my headphones, they don't fit well.",
            "How do I start a return? The fit is uncomfortable.",
            "Please refund me, the product is defective and I'm unhappy.",
        ],
        "sync_issue" => &[
            "My notes are not syncing between my phone and laptop. Frustrating!",
            "Sync lost an entire notebook, this is unacceptable.",
            "Sync conflicts every day, please fix this.",
        ],
        "billing" => &[
            "I was charged twice this month, please refund the extra charge.",
            "Why was my card charged after I cancelled? Not happy.",
            "Can you send me an invoice for last month? Thanks.",
        ],
        "import_failed" => &[
            "The Evernote import failed halfway, lost a lot of notes.",
            "Import keeps failing with an error, annoying.",
            "How do I import my notes from Notion? Thanks!",
        ],
        _ => &[
            "I can't log in, the password reset email never arrives.",
            "Locked out of my account, please help urgently.",
            "Login with Google isn't working for me.",
        ],
    };
    pool[pick % pool.len()]
}

/// Every comment that [`comment`] calls positive, for tests and sentiment fixtures.
#[cfg(test)]
pub(crate) fn is_positive(comment: &str) -> bool {
    HP_POSITIVE.contains(&comment) || SUB_POSITIVE.contains(&comment)
}

#[cfg(test)]
pub(crate) fn is_negative(comment: &str) -> bool {
    [
        HP_NEGATIVE,
        SUB_NEGATIVE,
        CHECKOUT,
        DELIVERY,
        SUPPORT,
        PRODUCT,
        PAIRING,
        BILLING,
        SYNC,
        ONBOARDING,
    ]
    .iter()
    .any(|pool| pool.contains(&comment))
}

pub(crate) fn question(brand: Brand, survey: Survey, stage: &str) -> &'static str {
    match (brand, survey, stage) {
        (Brand::Headphones, Survey::Nps, _) => {
            "How likely are you to recommend Sonora to a friend or colleague?"
        }
        (Brand::Subscription, Survey::Nps, _) => {
            "How likely are you to recommend Fieldnote to a friend or colleague?"
        }
        (_, Survey::Csat, "support") => "How satisfied are you with the help you received?",
        (_, Survey::Csat, "cancellation") => "How satisfied were you with Fieldnote overall?",
        (_, Survey::Csat, _) => "Did this page give you what you were looking for?",
        (Brand::Headphones, Survey::Ces, _) => "Sonora made it easy to place my order.",
        (Brand::Subscription, Survey::Ces, _) => "Fieldnote made it easy to get set up.",
    }
}

const HP_NEWSLETTER: &[&str] = &[
    "New: Studio Pro in Sage Green 🌿",
    "Quiet commute, happy you",
    "Last chance: 15% off Aria",
    "Which Sonora is right for you?",
    "Our sound engineers' favourite playlists 🎶",
    "Kids' headphones that protect little ears",
    "Why ANC works better with a good fit",
];
const SUB_NEWSLETTER: &[&str] = &[
    "What's new in Fieldnote: backlinks ✨",
    "5 templates for a calmer week",
    "How teams run meetings in Fieldnote",
    "Offline mode is here (finally)",
    "Your second brain, now on Android widgets",
];

/// The subject line of an e-mail carrying `asset`.
pub(crate) fn subject(brand: Brand, asset: &str, pick: usize) -> &'static str {
    match asset {
        "welcome_1" => "Welcome to Sonora — here's 10% off",
        "welcome_2" => "Find your perfect fit",
        "welcome_3" => "What 12,000 listeners say about us",
        "cart_reminder_1h" => "You left something behind 🎧",
        "cart_reminder_24h" => "Still thinking it over?",
        "review_ask" => "How are your new headphones?",
        "xsell_case" => "Protect them on the go",
        "xsell_tips" => "A better fit in 30 seconds",
        "onb_day0" => "Welcome to Fieldnote — write your first note",
        "onb_day2" => "Bring your notes with you",
        "onb_day5" => "Fieldnote is better together",
        "trial_3d_left" => "3 days left in your trial",
        "trial_last_day" => "Your trial ends today",
        "winback_20off" => "We saved your notes — 20% off to come back",
        _ => {
            let pool = match brand {
                Brand::Headphones => HP_NEWSLETTER,
                Brand::Subscription => SUB_NEWSLETTER,
            };
            pool[pick % pool.len()]
        }
    }
}
