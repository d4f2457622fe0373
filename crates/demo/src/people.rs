//! Who the generated people are: locale, name, e-mail, devices and the ids they carry.
//!
//! Names come in each locale's own script (ü, ł, 花子...) with an ASCII slug for the
//! e-mail address, because real data mixes both and parsers must cope. User ids are a
//! bijection of (seed, person), so two persons never share one by accident; the shared
//! ids in the data (junk user ids, the family tablet) are there on purpose.

use crate::rng::{mix, Rng};
use crate::Brand;

/// User ids that buggy integrations send (`analytics.identify(undefined)`, a template
/// printing `null`). Many unrelated persons carry them; an identity graph must never merge
/// on them. The generator gives a small fraction of persons one of these.
pub const JUNK_USER_IDS: [&str; 8] = [
    "undefined",
    "null",
    "0",
    "guest",
    "anonymous",
    "[object Object]",
    "-1",
    "N/A",
];

/// A locale and the time zone its people live in (offsets as in September/October).
pub(crate) struct Locale {
    pub tag: &'static str,
    pub tz: &'static str,
    pub offset_min: i64,
    pub weight: f64,
    /// (display, ASCII slug) pairs.
    pub first: &'static [(&'static str, &'static str)],
    pub last: &'static [(&'static str, &'static str)],
    /// Family name first, as in Japanese.
    pub family_first: bool,
}

const US_FIRST: &[(&str, &str)] = &[
    ("Emma", "emma"),
    ("Liam", "liam"),
    ("Olivia", "olivia"),
    ("Noah", "noah"),
    ("Ava", "ava"),
    ("Mateo", "mateo"),
    ("Zoë", "zoe"),
    ("DeShawn", "deshawn"),
    ("Mia", "mia"),
    ("Ethan", "ethan"),
];
const US_LAST: &[(&str, &str)] = &[
    ("Smith", "smith"),
    ("Johnson", "johnson"),
    ("Nguyễn", "nguyen"),
    ("Williams", "williams"),
    ("García", "garcia"),
    ("Brown", "brown"),
    ("O'Connor", "oconnor"),
    ("Kim", "kim"),
    ("Davis", "davis"),
    ("Patel", "patel"),
];

pub(crate) static LOCALES: &[Locale] = &[
    Locale {
        tag: "en-US",
        tz: "America/New_York",
        offset_min: -240,
        weight: 26.0,
        first: US_FIRST,
        last: US_LAST,
        family_first: false,
    },
    Locale {
        tag: "en-US",
        tz: "America/Los_Angeles",
        offset_min: -420,
        weight: 14.0,
        first: US_FIRST,
        last: US_LAST,
        family_first: false,
    },
    Locale {
        tag: "en-GB",
        tz: "Europe/London",
        offset_min: 60,
        weight: 10.0,
        first: &[
            ("Oliver", "oliver"),
            ("Amelia", "amelia"),
            ("Harry", "harry"),
            ("Isla", "isla"),
            ("Siobhán", "siobhan"),
        ],
        last: &[
            ("Taylor", "taylor"),
            ("Evans", "evans"),
            ("Wright", "wright"),
            ("Hughes", "hughes"),
            ("Ó Briain", "obriain"),
        ],
        family_first: false,
    },
    Locale {
        tag: "de-DE",
        tz: "Europe/Berlin",
        offset_min: 120,
        weight: 9.0,
        first: &[
            ("Jürgen", "juergen"),
            ("Lena", "lena"),
            ("Günther", "guenther"),
            ("Sophie", "sophie"),
            ("Maximilian", "maximilian"),
        ],
        last: &[
            ("Müller", "mueller"),
            ("Schröder", "schroeder"),
            ("Weiß", "weiss"),
            ("Becker", "becker"),
            ("Groß", "gross"),
        ],
        family_first: false,
    },
    Locale {
        tag: "fr-FR",
        tz: "Europe/Paris",
        offset_min: 120,
        weight: 7.0,
        first: &[
            ("Chloé", "chloe"),
            ("Hélène", "helene"),
            ("François", "francois"),
            ("Zoé", "zoe"),
            ("Mathéo", "matheo"),
        ],
        last: &[
            ("Dubois", "dubois"),
            ("Lefèvre", "lefevre"),
            ("Moreau", "moreau"),
            ("Girard", "girard"),
            ("Fournier", "fournier"),
        ],
        family_first: false,
    },
    Locale {
        tag: "es-ES",
        tz: "Europe/Madrid",
        offset_min: 120,
        weight: 5.0,
        first: &[
            ("José", "jose"),
            ("María", "maria"),
            ("Íñigo", "inigo"),
            ("Lucía", "lucia"),
            ("Álvaro", "alvaro"),
        ],
        last: &[
            ("García", "garcia"),
            ("Martínez", "martinez"),
            ("Núñez", "nunez"),
            ("Ibáñez", "ibanez"),
            ("López", "lopez"),
        ],
        family_first: false,
    },
    Locale {
        tag: "pt-BR",
        tz: "America/Sao_Paulo",
        offset_min: -180,
        weight: 5.0,
        first: &[
            ("João", "joao"),
            ("Ana", "ana"),
            ("Conceição", "conceicao"),
            ("Thiago", "thiago"),
            ("Beatriz", "beatriz"),
        ],
        last: &[
            ("Gonçalves", "goncalves"),
            ("Araújo", "araujo"),
            ("Simões", "simoes"),
            ("Silva", "silva"),
            ("Souza", "souza"),
        ],
        family_first: false,
    },
    Locale {
        tag: "ja-JP",
        tz: "Asia/Tokyo",
        offset_min: 540,
        weight: 4.0,
        first: &[
            ("花子", "hanako"),
            ("翔太", "shota"),
            ("陽菜", "hina"),
            ("蓮", "ren"),
            ("美咲", "misaki"),
        ],
        last: &[
            ("山田", "yamada"),
            ("佐藤", "sato"),
            ("鈴木", "suzuki"),
            ("高橋", "takahashi"),
            ("田中", "tanaka"),
        ],
        family_first: true,
    },
    Locale {
        tag: "sv-SE",
        tz: "Europe/Stockholm",
        offset_min: 120,
        weight: 3.0,
        first: &[
            ("Åsa", "asa"),
            ("Björn", "bjorn"),
            ("Märta", "marta"),
            ("Sören", "soren"),
            ("Linnéa", "linnea"),
        ],
        last: &[
            ("Ångström", "angstrom"),
            ("Lindqvist", "lindqvist"),
            ("Öberg", "oberg"),
            ("Sjöberg", "sjoberg"),
            ("Nyström", "nystrom"),
        ],
        family_first: false,
    },
    Locale {
        tag: "pl-PL",
        tz: "Europe/Warsaw",
        offset_min: 120,
        weight: 3.0,
        first: &[
            ("Łukasz", "lukasz"),
            ("Zofia", "zofia"),
            ("Wojciech", "wojciech"),
            ("Małgorzata", "malgorzata"),
            ("Paweł", "pawel"),
        ],
        last: &[
            ("Nowak", "nowak"),
            ("Wiśniewski", "wisniewski"),
            ("Kowalczyk", "kowalczyk"),
            ("Wróbel", "wrobel"),
            ("Dąbrowski", "dabrowski"),
        ],
        family_first: false,
    },
    Locale {
        tag: "tr-TR",
        tz: "Europe/Istanbul",
        offset_min: 180,
        weight: 2.0,
        first: &[
            ("Ayşe", "ayse"),
            ("Mehmet", "mehmet"),
            ("Çağla", "cagla"),
            ("Gökhan", "gokhan"),
            ("Şeyma", "seyma"),
        ],
        last: &[
            ("Yılmaz", "yilmaz"),
            ("Öztürk", "ozturk"),
            ("Çelik", "celik"),
            ("Şahin", "sahin"),
            ("Doğan", "dogan"),
        ],
        family_first: false,
    },
    Locale {
        tag: "en-IN",
        tz: "Asia/Kolkata",
        offset_min: 330,
        weight: 4.0,
        first: &[
            ("Aarav", "aarav"),
            ("Priya", "priya"),
            ("Rohan", "rohan"),
            ("Ananya", "ananya"),
            ("Vikram", "vikram"),
        ],
        last: &[
            ("Sharma", "sharma"),
            ("Iyer", "iyer"),
            ("Patel", "patel"),
            ("Reddy", "reddy"),
            ("Nair", "nair"),
        ],
        family_first: false,
    },
];

const EMAIL_DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "mail.example",
    "inbox.example",
];

/// A person's name and e-mail address.
pub(crate) struct Name {
    pub first: &'static str,
    pub last: &'static str,
    pub full: String,
    pub email: String,
}

pub(crate) fn name(rng: &mut Rng, locale: &Locale, person: usize) -> Name {
    let (first, first_slug) = *rng.pick(locale.first);
    let (last, last_slug) = *rng.pick(locale.last);
    let full = if locale.family_first {
        format!("{last} {first}")
    } else {
        format!("{first} {last}")
    };
    // The person number keeps addresses unique; real lists have the same digits habit.
    let email = format!(
        "{first_slug}.{last_slug}{person}@{}",
        rng.pick(EMAIL_DOMAINS)
    );
    Name {
        first,
        last,
        full,
        email,
    }
}

/// The user id a brand's backend gives the person: unique per (seed, person) because
/// `mix` is a bijection.
pub(crate) fn user_id(brand: Brand, seed: u64, person: usize) -> String {
    let id = mix(mix(seed ^ 0x7573_6572) ^ person as u64);
    match brand {
        Brand::Headphones => format!("cus_{id:016x}"),
        Brand::Subscription => format!("usr_{id:016x}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeviceKind {
    Desktop,
    Mobile,
    Tablet,
    /// The brand's native app (analytics-swift or analytics-kotlin); sends screens.
    App,
}

/// What user id a device's SDK has stored: analytics.js keeps the last identified id and
/// puts it on every later message from that browser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DevUser {
    Anonymous,
    Junk(&'static str),
    Known,
}

pub(crate) struct Device {
    pub kind: DeviceKind,
    pub anon: String,
    pub user_agent: &'static str,
    /// For apps: iOS (true) or Android.
    pub ios: bool,
    /// Whether it sits on the home network (shares the household IP) or roams.
    pub at_home: bool,
    pub user: DevUser,
}

const DESKTOP_UA: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:130.0) Gecko/20100101 Firefox/130.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36 Edg/128.0.0.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
];
const MOBILE_UA: &[&str] = &[
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
];
const TABLET_UA: &[&str] = &[
    "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
];

impl Device {
    pub(crate) fn browser(rng: &mut Rng, kind: DeviceKind) -> Device {
        let user_agent = match kind {
            DeviceKind::Mobile => *rng.pick(MOBILE_UA),
            DeviceKind::Tablet => *rng.pick(TABLET_UA),
            _ => *rng.pick(DESKTOP_UA),
        };
        Device {
            kind,
            anon: rng.uuid(),
            user_agent,
            ios: user_agent.contains("iPhone") || user_agent.contains("iPad"),
            at_home: kind != DeviceKind::Mobile,
            user: DevUser::Anonymous,
        }
    }

    /// The brand's app on the person's phone: a separate anonymous id from the phone's
    /// browser, as on real phones.
    pub(crate) fn app(rng: &mut Rng, ios: bool) -> Device {
        Device {
            kind: DeviceKind::App,
            anon: rng.uuid(),
            user_agent: "",
            ios,
            at_home: false,
            user: DevUser::Anonymous,
        }
    }

    pub(crate) fn is_mobile(&self) -> bool {
        matches!(self.kind, DeviceKind::Mobile | DeviceKind::App)
    }
}

/// A public-looking IPv4 address (no private, loopback, CGNAT or multicast ranges).
pub(crate) fn ip(rng: &mut Rng) -> String {
    loop {
        let v = rng.next_u64() as u32;
        let [a, b, c, d] = v.to_be_bytes();
        let private = a == 0
            || a == 10
            || a == 127
            || a >= 224
            || (a == 100 && (64..128).contains(&b))
            || (a == 169 && b == 254)
            || (a == 172 && (16..32).contains(&b))
            || (a == 192 && b == 168);
        if !private {
            return format!("{a}.{b}.{c}.{d}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_unique_and_never_junk() {
        let mut seen = std::collections::HashSet::new();
        for p in 0..50_000 {
            let id = user_id(Brand::Headphones, 3, p);
            assert!(!JUNK_USER_IDS.contains(&id.as_str()));
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn names_keep_their_script_and_emails_stay_ascii() {
        let mut rng = Rng::new(5);
        let mut non_ascii = 0;
        for (p, _) in (0..500).enumerate() {
            let loc = &LOCALES[p % LOCALES.len()];
            let n = name(&mut rng, loc, p);
            assert!(n.email.is_ascii(), "{}", n.email);
            assert!(n.full.contains(n.first) && n.full.contains(n.last));
            non_ascii += usize::from(!n.full.is_ascii());
        }
        assert!(non_ascii > 50);
    }
}
