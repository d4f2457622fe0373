//! One person's life with a brand, simulated as a timeline of jobs (a visit, an e-mail
//! send, a delivery, a renewal...), and the messages each job emits, kept as compact
//! drafts that `render` turns into JSON on delivery.
//!
//! This module owns what both brands share: arrival, devices, sessions and the channel
//! each one comes from, identification, e-mail with its fatigue, surveys and affiliate
//! cookies. The brand modules own their funnels and after-sales. Everything a person does
//! depends only on (seed, person index), so a person is simulated alone, in any order,
//! and the same way every time. Nothing here formats JSON or knows about delivery.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use serde_json::{json, Map, Value};

use crate::catalog::{self, Cost, Role, Source};
use crate::clock::{iso_ms, DAY_MS, HOUR_MS, MINUTE_MS};
use crate::people::{self, DevUser, Device, DeviceKind, Locale, Name, JUNK_USER_IDS, LOCALES};
use crate::rng::{hash3, Rng, STREAM_HOUSEHOLD, STREAM_PERSON};
use crate::text::{self, Cause};
use crate::{headphones, subscription, Brand, DemoConfig};

/// Bounds on one person, so a pathological draw cannot blow up memory or time.
pub(crate) const PERSON_MESSAGES_MAX: usize = 4_000;
pub(crate) const PERSON_SESSIONS_MAX: u32 = 400;
/// Chance that a step inside a session lands on the same millisecond as the one before
/// (two SDK calls in one handler); analyses must order ties deterministically.
const TIE_CHANCE: f64 = 0.012;
/// GA4 and Segment's session rule: a gap longer than this starts a new session.
pub(crate) const SESSION_GAP_MS: i64 = 30 * MINUTE_MS;
/// Share of persons whose site once called `identify` with a junk id.
const JUNK_CHANCE: f64 = 0.006;
/// Per-mille of even-numbered persons who share a family tablet with the next person.
const HOUSEHOLD_PER_MILLE: u64 = 12;
/// How long an affiliate's referral earns commission on a sale, as networks set it.
const AFFILIATE_COOKIE_MS: i64 = 30 * DAY_MS;
/// Trailing window for e-mail fatigue.
const FATIGUE_WINDOW_MS: i64 = 7 * DAY_MS;

/// Which sources and special campaigns one brand uses; built once per iterator.
pub(crate) struct Kit {
    pub brand: Brand,
    pub sources: &'static [Source],
    pub reach: Vec<f64>,
    pub direct: u16,
    pub newsletter: u16,
    pub offline: Vec<u16>,
    pub hp: headphones::Campaigns,
    pub sub: subscription::Campaigns,
    /// `context.library` of each SDK, built once and cloned: cloning skips the map
    /// inserts, and these go on every message.
    pub lib_js: Value,
    pub lib_python: Value,
}

impl Kit {
    pub(crate) fn new(brand: Brand) -> Kit {
        let sources = catalog::catalog(brand);
        let direct = sources
            .iter()
            .position(|s| s.channel == catalog::Channel::Direct)
            .expect("direct") as u16;
        let newsletter = sources
            .iter()
            .position(|s| s.role == Role::Newsletter)
            .expect("newsletter") as u16;
        let offline = (0..sources.len() as u16)
            .filter(|i| {
                sources[*i as usize].promo_code.is_some() && sources[*i as usize].reach > 0.0
            })
            .collect();
        Kit {
            brand,
            sources,
            reach: sources.iter().map(|s| s.reach).collect(),
            direct,
            newsletter,
            offline,
            hp: headphones::Campaigns::new(sources, brand),
            sub: subscription::Campaigns::new(sources, brand),
            lib_js: json!({"name": "analytics.js", "version": "npm:next-1.72.0"}),
            lib_python: json!({"name": "analytics-python", "version": "2.3.3"}),
        }
    }

    pub(crate) fn origin(&self) -> &'static str {
        self.brand.origin()
    }

    fn page_meta(&self, path: &str) -> (&'static str, &'static str) {
        match self.brand {
            Brand::Headphones => headphones::page_meta(path),
            Brand::Subscription => subscription::page_meta(path),
        }
    }
}

/// A touch: which source, which of its assets, which of its landing pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Touch {
    pub source: u16,
    pub asset: u8,
    pub landing: u8,
}

/// Why a visit happens; the brand decides what the person does in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Purpose {
    /// Self-initiated or ad-driven browsing; continues the person's chain of returns.
    Browse,
    /// From a click in an e-mail.
    Email,
    /// Looking for help before contacting support.
    Support,
    /// Account work: returns, billing, cancelling.
    Account,
    /// Using the product: the note app, or the headphones' companion app.
    Usage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Job {
    Visit {
        touch: Touch,
        device: Option<u8>,
        purpose: Purpose,
    },
    /// The next self-initiated visit; its source is drawn when it happens.
    Return,
    Newsletter,
    Email(Touch),
    Hp(headphones::Job),
    Sub(subscription::Job),
}

/// Where a message comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    Device(u8),
    /// A backend integration (orders, billing, e-mail, help desk) using analytics-python.
    Server,
}

/// What went wrong for the person so far; surveys and churn read it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Experience {
    pub friction: u32,
    pub payment_failed: bool,
    pub late_delivery: bool,
    pub support_contacts: u32,
    pub support_slow: bool,
    pub returned: bool,
    pub product_issue: bool,
    pub pairing_issue: bool,
    pub billing_issue: bool,
    pub sync_issue: bool,
    pub onboarding_hard: bool,
}

impl Experience {
    /// The most salient bad experience, which free-text feedback tends to be about.
    pub(crate) fn cause(&self) -> Cause {
        if self.support_slow {
            Cause::Support
        } else if self.late_delivery {
            Cause::Delivery
        } else if self.product_issue || self.returned {
            Cause::Product
        } else if self.pairing_issue {
            Cause::Pairing
        } else if self.billing_issue || self.payment_failed {
            Cause::Billing
        } else if self.sync_issue {
            Cause::Sync
        } else if self.onboarding_hard {
            Cause::Onboarding
        } else if self.friction > 0 {
            Cause::Checkout
        } else {
            Cause::None
        }
    }

    /// How much the bad experiences weigh on satisfaction, 0 (none) to about 0.6.
    pub(crate) fn penalty(&self) -> f64 {
        let mut p = 0.06 * self.friction.min(3) as f64;
        p += if self.payment_failed { 0.05 } else { 0.0 };
        p += if self.late_delivery { 0.18 } else { 0.0 };
        p += 0.05 * self.support_contacts.min(3) as f64;
        p += if self.support_slow { 0.2 } else { 0.0 };
        p += if self.product_issue { 0.2 } else { 0.0 };
        p += if self.returned { 0.1 } else { 0.0 };
        p += if self.pairing_issue { 0.1 } else { 0.0 };
        p += if self.billing_issue { 0.15 } else { 0.0 };
        p += if self.sync_issue { 0.15 } else { 0.0 };
        p += if self.onboarding_hard { 0.1 } else { 0.0 };
        p
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Survey {
    Nps,
    Csat,
    Ces,
}

/// A paid touch or an affiliate order, for the spend export.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Paid {
    pub ts: i64,
    pub source: u16,
    pub revenue: f64,
}

/// A page view: what `context.page` of the messages sent from it says.
#[derive(Clone, Debug, Default)]
pub(crate) struct PageView {
    pub url: String,
    pub path: &'static str,
    pub search: String,
    pub referrer: String,
    pub title: &'static str,
    /// The touch whose UTM tags the URL carries (landings of tagged sources only).
    pub campaign: Option<Touch>,
}

/// The Segment message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Track,
    Page,
    Screen,
    Identify,
    Alias,
    Group,
}

/// What a message carries besides ids, time and context.
#[derive(Clone, Debug)]
pub(crate) enum Payload {
    /// `properties` of a track or screen.
    Properties(Value),
    /// A page's properties are its `context.page`.
    Page,
    Traits(Value),
    PreviousId(String),
    Group(String, Value),
}

/// A message as the simulation decided it, rendered to JSON only when it is delivered.
///
/// Rendering late keeps the JSON of one message alive at a time instead of a whole
/// person's, so the allocator recycles the same few blocks; building every message of a
/// person up front spent most of the run in `malloc` and `free`.
#[derive(Clone, Debug)]
pub(crate) struct Draft {
    pub ts: i64,
    seq: u32,
    pub sent: i64,
    pub id: (u64, u64),
    pub kind: Kind,
    pub via: Via,
    /// The user id the SDK attached (for devices, what it had stored at the time).
    pub user: DevUser,
    /// `event` of a track, `name` of a page or screen.
    pub name: &'static str,
    /// Index into `Person::pages` of the page it was sent from (browser messages).
    pub page: u32,
    /// Index into `Person::ips`.
    pub ip: u16,
    pub payload: Payload,
}

pub(crate) const NO_PAGE: u32 = u32::MAX;

/// Everything one person produced, and what rendering their messages needs.
#[derive(Default)]
pub(crate) struct Person {
    pub devices: Vec<Device>,
    pub user_id: String,
    pub locale: Option<&'static Locale>,
    pub pages: Vec<PageView>,
    /// `ips[0]` is the home network's address.
    pub ips: Vec<String>,
    /// In time order, ties in emission order.
    pub drafts: Vec<Draft>,
    pub paid: Vec<Paid>,
}

pub(crate) struct Sim<'k> {
    pub kit: &'k Kit,
    pub cfg: DemoConfig,
    pub rng: Rng,
    pub start: i64,
    pub end: i64,
    pub locale: &'static Locale,
    pub name: Name,
    pub user_id: String,
    /// The backend knows the person (some identify happened).
    pub known: bool,
    pub devices: Vec<Device>,
    ips: Vec<String>,
    session_ip: u16,
    pages: Vec<PageView>,
    /// Index of the current page in `pages`.
    cur_page: u32,
    drafts: Vec<Draft>,
    seq: u32,
    queue: BinaryHeap<Reverse<(i64, u32, Job)>>,
    queued: u32,
    busy_until: i64,
    pub sessions: u32,
    /// Buying intent, 0..1, fixed per person.
    pub intent: f64,
    /// Accumulated effect of touches so far: raises conversion and brand-demand visits.
    pub warmth: f64,
    /// Showed interest without converting: retargeting campaigns may reach them.
    pub retarget: bool,
    /// A promo code the person holds (heard on air, read in print, got by e-mail).
    pub promo: Option<&'static str>,
    /// Satisfaction offset of this person (some people rate everything lower).
    temper: f64,
    junk: Option<&'static str>,
    /// Index of the shared family tablet in `devices`, when the person has one.
    tablet: Option<u8>,
    pub consent: bool,
    pub unsubscribed: bool,
    /// Newsletter sends per week this person is on (the brand tests frequencies).
    pub cadence: f64,
    sends: VecDeque<i64>,
    pub exp: Experience,
    pub paid: Vec<Paid>,
    /// The affiliate cookie: which affiliate source referred the person, and when.
    affiliate: Option<(u16, i64)>,
    pub hp: headphones::State,
    pub sub: subscription::State,
}

/// Simulates person `person`. `recycled` is a previous person whose buffers are reused:
/// a fresh large allocation per person made glibc's malloc consolidate its free lists
/// every time, which once cost a third of the run.
pub(crate) fn simulate(kit: &Kit, cfg: &DemoConfig, person: usize, recycled: Person) -> Person {
    let mut sim = Sim::new(kit, cfg, person, recycled);
    sim.run();
    sim.drafts.sort_by_key(|d| (d.ts, d.seq));
    Person {
        devices: sim.devices,
        user_id: sim.user_id,
        locale: Some(sim.locale),
        pages: sim.pages,
        ips: sim.ips,
        drafts: sim.drafts,
        paid: sim.paid,
    }
}

/// Whether person `head` (even) shares a tablet with person `head + 1`.
fn household(cfg: &DemoConfig, head: usize) -> bool {
    head.is_multiple_of(2)
        && head + 1 < cfg.persons
        && hash3(cfg.seed, STREAM_HOUSEHOLD, head as u64) % 1000 < HOUSEHOLD_PER_MILLE
}

/// Local hour weights: quiet nights, a lunch bump and an evening peak.
const HOUR_WEIGHTS: [f64; 24] = [
    0.3, 0.2, 0.1, 0.1, 0.1, 0.2, 0.5, 1.0, 1.4, 1.5, 1.5, 1.5, 1.7, 1.6, 1.5, 1.5, 1.5, 1.6, 1.9,
    2.3, 2.5, 2.2, 1.5, 0.8,
];

impl<'k> Sim<'k> {
    fn new(kit: &'k Kit, cfg: &DemoConfig, person: usize, recycled: Person) -> Sim<'k> {
        let Person {
            mut pages,
            mut ips,
            mut drafts,
            mut paid,
            ..
        } = recycled;
        pages.clear();
        ips.clear();
        drafts.clear();
        paid.clear();
        let mut rng = Rng::derive(cfg.seed, STREAM_PERSON, person as u64);
        let weights: Vec<f64> = LOCALES.iter().map(|l| l.weight).collect();
        let locale = &LOCALES[rng.weighted(&weights)];
        let name = people::name(&mut rng, locale, person);
        let user_id = people::user_id(kit.brand, cfg.seed, person);
        let n_devices = 1 + rng.weighted(&[0.40, 0.40, 0.20]);
        let mut devices = Vec::with_capacity(4);
        let first = match rng.weighted(&[0.45, 0.50, 0.05]) {
            0 => DeviceKind::Desktop,
            1 => DeviceKind::Mobile,
            _ => DeviceKind::Tablet,
        };
        devices.push(Device::browser(&mut rng, first));
        while devices.len() < n_devices {
            let has = |k: DeviceKind| devices.iter().any(|d| d.kind == k);
            let w = [
                if has(DeviceKind::Desktop) { 0.15 } else { 1.0 },
                if has(DeviceKind::Mobile) { 0.1 } else { 1.0 },
                if has(DeviceKind::Tablet) { 0.05 } else { 0.35 },
            ];
            let kind =
                [DeviceKind::Desktop, DeviceKind::Mobile, DeviceKind::Tablet][rng.weighted(&w)];
            devices.push(Device::browser(&mut rng, kind));
        }
        // The family tablet: the head of a household mints its id, the partner reuses it.
        let head = if household(cfg, person) {
            Some(person)
        } else if person > 0 && household(cfg, person - 1) {
            Some(person - 1)
        } else {
            None
        };
        let tablet = head.map(|h| {
            let mut t = Device::browser(
                &mut Rng::derive(cfg.seed, STREAM_HOUSEHOLD, h as u64),
                DeviceKind::Tablet,
            );
            t.at_home = true;
            devices.push(t);
            (devices.len() - 1) as u8
        });
        ips.push(people::ip(&mut rng));
        let intent = rng.f64().powf(1.5);
        let temper = 0.07 * rng.normal();
        let junk = rng.chance(JUNK_CHANCE).then(|| *rng.pick(&JUNK_USER_IDS));
        let cadence = [1.0, 2.0, 3.0, 5.0, 7.0][rng.weighted(&[0.25, 0.30, 0.20, 0.15, 0.10])];
        let start = cfg.start_ms;
        let end = cfg.end_ms();
        Sim {
            kit,
            cfg: *cfg,
            rng,
            start,
            end,
            locale,
            name,
            user_id,
            known: false,
            devices,
            ips,
            session_ip: 0,
            pages,
            cur_page: NO_PAGE,
            drafts,
            seq: 0,
            queue: BinaryHeap::new(),
            queued: 0,
            busy_until: i64::MIN / 2,
            sessions: 0,
            intent,
            warmth: 0.0,
            retarget: false,
            promo: None,
            temper,
            junk,
            tablet,
            consent: false,
            unsubscribed: false,
            cadence,
            sends: VecDeque::new(),
            exp: Experience::default(),
            paid,
            affiliate: None,
            hp: headphones::State::default(),
            sub: subscription::State::default(),
        }
    }

    fn run(&mut self) {
        if self.cfg.days == 0 {
            return;
        }
        let day = self.rng.below(self.cfg.days as usize) as i64;
        let arrival = self.local_time(self.start + day * DAY_MS);
        // Some people heard an offline ad (radio, TV, print, podcast) and remember the
        // code without ever using the vanity URL: promo codes are their only trace.
        if self.rng.chance(0.07) && !self.kit.offline.is_empty() {
            let s = self.kit.sources[*self.rng.pick(&self.kit.offline) as usize];
            if s.live_at(self.frac(arrival)) {
                self.promo = s.promo_code;
                self.warmth += 0.5 * s.assist;
            }
        }
        let touch = self.first_touch(arrival);
        let device = self.tablet.or(Some(0));
        self.schedule(
            arrival,
            Job::Visit {
                touch,
                device,
                purpose: Purpose::Browse,
            },
        );
        while let Some(Reverse((t, _, job))) = self.queue.pop() {
            if t >= self.end
                || self.drafts.len() >= PERSON_MESSAGES_MAX
                || self.sessions >= PERSON_SESSIONS_MAX
            {
                break;
            }
            match job {
                Job::Visit {
                    touch,
                    device,
                    purpose,
                } => self.visit(t, touch, device, purpose),
                Job::Return => {
                    let touch = self.return_touch(t);
                    self.visit(t, touch, None, Purpose::Browse);
                }
                Job::Newsletter => self.newsletter(t),
                Job::Email(touch) => {
                    self.send_email(t, touch);
                }
                Job::Hp(job) => headphones::job(self, t, job),
                Job::Sub(job) => subscription::job(self, t, job),
            }
        }
    }

    pub(crate) fn schedule(&mut self, t: i64, job: Job) {
        if t < self.end {
            self.queued += 1;
            self.queue.push(Reverse((t, self.queued, job)));
        }
    }

    /// Where `t` falls in the generated range, 0..1.
    pub(crate) fn frac(&self, t: i64) -> f64 {
        (t - self.start) as f64 / (self.end - self.start).max(1) as f64
    }

    /// A time on the UTC day starting at `day_start`, at a local hour people are online.
    pub(crate) fn local_time(&mut self, day_start: i64) -> i64 {
        let hour = self.rng.weighted(&HOUR_WEIGHTS) as i64;
        let minute = self.rng.range_i(0, 60 * 60_000);
        let t = day_start + hour * HOUR_MS + minute - self.locale.offset_min * MINUTE_MS;
        // Keep the local day, but never before the range opens.
        if t < self.start {
            t + DAY_MS
        } else {
            t
        }
    }

    /// The next step of a session: seconds to minutes later, sometimes the same millisecond.
    pub(crate) fn after(&mut self, t: i64, median_s: f64) -> i64 {
        if self.rng.chance(TIE_CHANCE) {
            return t;
        }
        t + (self.rng.lognormal(median_s, 0.6) * 1000.0) as i64 + 1
    }

    pub(crate) fn touch(&mut self, source: u16) -> Touch {
        let s = &self.kit.sources[source as usize];
        Touch {
            source,
            asset: if s.assets.is_empty() {
                0
            } else {
                self.rng.below(s.assets.len()) as u8
            },
            landing: self.rng.below(s.landings.len()) as u8,
        }
    }

    pub(crate) fn lift(&self, touch: Touch) -> f64 {
        let s = &self.kit.sources[touch.source as usize];
        s.assets.get(touch.asset as usize).map_or(1.0, |a| a.lift)
    }

    fn first_touch(&mut self, t: i64) -> Touch {
        let frac = self.frac(t);
        let w: Vec<f64> = self
            .kit
            .sources
            .iter()
            .zip(&self.kit.reach)
            .map(|(s, r)| if s.live_at(frac) { *r } else { 0.0 })
            .collect();
        let i = self.rng.weighted(&w) as u16;
        self.touch(i)
    }

    fn return_touch(&mut self, t: i64) -> Touch {
        let frac = self.frac(t);
        let warmth = self.warmth.min(6.0);
        let offline_boost = if self.promo.is_some() { 1.4 } else { 1.0 };
        let w: Vec<f64> = self
            .kit
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if !s.live_at(frac) {
                    return 0.0;
                }
                let eligible = match s.role {
                    Role::Acquisition => 1.0,
                    Role::Retargeting => f64::from(u8::from(self.retarget)),
                    Role::Newsletter | Role::Lifecycle => 0.0,
                };
                let direct = if i as u16 == self.kit.direct {
                    offline_boost
                } else {
                    1.0
                };
                s.recall * eligible * direct * (1.0 + s.demand * warmth)
            })
            .collect();
        let i = self.rng.weighted(&w) as u16;
        self.touch(i)
    }

    fn visit(&mut self, t: i64, touch: Touch, device: Option<u8>, purpose: Purpose) {
        // Sessions of one person never overlap: a click during the last one waits.
        let t = if t < self.busy_until + SESSION_GAP_MS {
            self.busy_until + SESSION_GAP_MS + self.rng.range_i(MINUTE_MS, 90 * MINUTE_MS)
        } else {
            t
        };
        if t >= self.end {
            return;
        }
        let dev = match device {
            Some(d) => d,
            None => self.pick_device(touch, purpose),
        };
        let device = &self.devices[dev as usize];
        let home = device.at_home || (device.kind == DeviceKind::App && self.rng.chance(0.6));
        self.session_ip = if home {
            0
        } else {
            let ip = people::ip(&mut self.rng);
            self.ips.push(ip);
            (self.ips.len() - 1) as u16
        };
        let s = self.kit.sources[touch.source as usize];
        match s.cost {
            Cost::PerClick(_) => {
                self.paid.push(Paid {
                    ts: t,
                    source: touch.source,
                    revenue: 0.0,
                });
                // Networks de-duplicate: a later paid click takes the credit.
                self.affiliate = None;
            }
            Cost::Commission(_) => self.affiliate = Some((touch.source, t)),
            Cost::Free | Cost::PerFlightDay(_) => {}
        }
        let end = match self.kit.brand {
            Brand::Headphones => headphones::session(self, t, dev, touch, purpose),
            Brand::Subscription => subscription::session(self, t, dev, touch, purpose),
        };
        self.busy_until = end.max(t);
        self.sessions += 1;
        if purpose == Purpose::Browse {
            self.plan_return(end);
        }
    }

    fn pick_device(&mut self, touch: Touch, purpose: Purpose) -> u8 {
        let s = self.kit.sources[touch.source as usize];
        let social = matches!(
            s.channel,
            catalog::Channel::PaidSocial
                | catalog::Channel::OrganicSocial
                | catalog::Channel::Email
        );
        let w: Vec<f64> = self
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| match d.kind {
                DeviceKind::App => {
                    if purpose == Purpose::Usage {
                        2.0
                    } else {
                        0.0
                    }
                }
                DeviceKind::Mobile if social => 2.0,
                DeviceKind::Desktop if purpose == Purpose::Account => 1.6,
                _ if i == 0 => 1.2,
                _ => 0.8,
            })
            .collect();
        self.rng.weighted(&w) as u8
    }

    fn plan_return(&mut self, after: i64) {
        let bias = match self.kit.brand {
            Brand::Headphones => headphones::return_bias(self),
            Brand::Subscription => subscription::return_bias(self),
        };
        let p = (0.72 + 0.2 * self.intent + 0.02 * self.warmth.min(4.0)) * bias;
        if !self.rng.chance(p.min(0.92)) {
            return;
        }
        let gap = if self.rng.chance(0.25) {
            SESSION_GAP_MS + (self.rng.exp(3.0) * HOUR_MS as f64) as i64
        } else {
            SESSION_GAP_MS + (self.rng.exp(3.0) * DAY_MS as f64) as i64
        };
        self.schedule(after + gap, Job::Return);
    }

    /// A sale worth `revenue`: the affiliate whose cookie is still fresh earns commission.
    pub(crate) fn commission(&mut self, t: i64, revenue: f64) {
        if let Some((source, at)) = self.affiliate {
            if t - at <= AFFILIATE_COOKIE_MS {
                self.paid.push(Paid {
                    ts: t,
                    source,
                    revenue,
                });
            }
        }
    }

    /// Warmth a visit leaves behind; bounced visits count for less.
    pub(crate) fn absorb(&mut self, touch: Touch, engaged: bool) {
        let s = self.kit.sources[touch.source as usize];
        let w = s.assist * self.lift(touch) * if engaged { 1.0 } else { 0.35 };
        self.warmth += w;
    }

    /// The conversion score of the running session: who the person is, how warm, and how
    /// good the source and asset are at closing.
    pub(crate) fn score(&self, touch: Touch) -> f64 {
        let s = self.kit.sources[touch.source as usize];
        let warm = 0.35 + 0.65 * (1.0 - (-self.warmth / 1.6).exp());
        let promo = if self.promo.is_some() { 1.15 } else { 1.0 };
        self.intent.powf(0.7) * s.close * self.lift(touch) * warm * promo
    }

    // ---- messages -------------------------------------------------------------------

    fn latency(&mut self, via: Via) -> i64 {
        match via {
            Via::Server => self.rng.range_i(200, 5_000),
            Via::Device(d) if self.devices[d as usize].kind == DeviceKind::App => {
                if self.rng.chance(0.03) {
                    // Offline on the train: the queue flushes much later.
                    self.rng.range_i(10 * MINUTE_MS, 6 * HOUR_MS)
                } else {
                    self.rng.range_i(1_000, 30_000)
                }
            }
            Via::Device(_) => self.rng.range_i(20, 900),
        }
    }

    fn emit(&mut self, ts: i64, via: Via, kind: Kind, name: &'static str, payload: Payload) {
        // Follow-ups computed past the end of the range have not happened yet.
        if ts >= self.end {
            return;
        }
        let sent = ts + self.latency(via);
        let id = (self.rng.next_u64(), self.rng.next_u64());
        let (user, page) = match via {
            Via::Server => (DevUser::Known, NO_PAGE),
            Via::Device(d) => {
                let dev = &self.devices[d as usize];
                let page = if dev.kind == DeviceKind::App {
                    NO_PAGE
                } else {
                    self.cur_page
                };
                (dev.user, page)
            }
        };
        self.seq += 1;
        self.drafts.push(Draft {
            ts,
            seq: self.seq,
            sent,
            id,
            kind,
            via,
            user,
            name,
            page,
            ip: self.session_ip,
            payload,
        });
    }

    pub(crate) fn track(&mut self, ts: i64, via: Via, event: &'static str, properties: Value) {
        self.emit(ts, via, Kind::Track, event, Payload::Properties(properties));
    }

    pub(crate) fn screen(&mut self, ts: i64, dev: u8, name: &'static str, properties: Value) {
        self.emit(
            ts,
            Via::Device(dev),
            Kind::Screen,
            name,
            Payload::Properties(properties),
        );
    }

    /// The path of the page the running browser session is on.
    pub(crate) fn current_path(&self) -> &'static str {
        self.pages
            .get(self.cur_page as usize)
            .map_or("", |p| p.path)
    }

    /// A page view; with a touch it is a landing, whose URL carries the touch's UTM tags
    /// and click id and whose referrer is the source's site.
    pub(crate) fn page(&mut self, ts: i64, dev: u8, path: &'static str, touch: Option<Touch>) {
        let origin = self.kit.origin();
        let (name, title) = self.kit.page_meta(path);
        let (search, referrer) = match touch {
            Some(t) => {
                let s = self.kit.sources[t.source as usize];
                let search = if s.tagged {
                    self.utm_query(t, true)
                } else {
                    String::new()
                };
                let referrer = if s.referrers.is_empty() {
                    String::new()
                } else {
                    (*self.rng.pick(s.referrers)).to_string()
                };
                (search, referrer)
            }
            None => (
                String::new(),
                self.pages
                    .get(self.cur_page as usize)
                    .map_or(String::new(), |p| p.url.clone()),
            ),
        };
        let campaign = touch.filter(|t| self.kit.sources[t.source as usize].tagged);
        self.pages.push(PageView {
            url: format!("{origin}{path}{search}"),
            path,
            search,
            referrer,
            title,
            campaign,
        });
        self.cur_page = (self.pages.len() - 1) as u32;
        self.emit(ts, Via::Device(dev), Kind::Page, name, Payload::Page);
    }

    /// The landing page of a touch.
    pub(crate) fn land(&mut self, ts: i64, dev: u8, touch: Touch) {
        let s = self.kit.sources[touch.source as usize];
        self.page(ts, dev, s.landings[touch.landing as usize], Some(touch));
    }

    /// `?utm_source=...` for a touch, with the platform's click id when asked.
    pub(crate) fn utm_query(&mut self, t: Touch, click: bool) -> String {
        let s = self.kit.sources[t.source as usize];
        let mut q = format!(
            "?utm_source={}&utm_medium={}&utm_campaign={}",
            s.source, s.medium, s.campaign
        );
        if let Some(a) = s.assets.get(t.asset as usize) {
            q.push_str("&utm_content=");
            q.push_str(a.id);
        }
        if !s.term.is_empty() {
            q.push_str("&utm_term=");
            q.push_str(&s.term.replace(' ', "%20"));
        }
        if let (true, Some(param)) = (click, s.click_id) {
            let value = match param {
                "gclid" => format!("Cj0KCQjw{}", self.rng.b64(72)),
                "fbclid" => format!("IwAR{}", self.rng.b64(56)),
                "msclkid" => self.rng.hex(32),
                "ttclid" => format!("E.C.P.{}", self.rng.b64(40)),
                "dclid" => format!("CJ{}", self.rng.b64(30)),
                _ => self.rng.uuid(),
            };
            q.push('&');
            q.push_str(param);
            q.push('=');
            q.push_str(&value);
        }
        q
    }

    /// Tags the device with the person's user id and tells Segment. The first identify
    /// makes the person known; it sometimes comes with an old-style `alias` call.
    pub(crate) fn identify(&mut self, ts: i64, dev: u8, traits: Value) {
        let first = !self.known;
        self.known = true;
        self.devices[dev as usize].user = DevUser::Known;
        self.emit(
            ts,
            Via::Device(dev),
            Kind::Identify,
            "",
            Payload::Traits(traits),
        );
        if first && self.rng.chance(0.03) {
            let previous = self.devices[dev as usize].anon.clone();
            self.emit(
                ts + 1,
                Via::Device(dev),
                Kind::Alias,
                "",
                Payload::PreviousId(previous),
            );
        }
    }

    /// Logs in on a device that does not carry the user id yet.
    pub(crate) fn login(&mut self, ts: i64, dev: u8) {
        let traits = json!({"email": self.name.email});
        self.identify(ts, dev, traits);
    }

    pub(crate) fn device_known(&self, dev: u8) -> bool {
        self.devices[dev as usize].user == DevUser::Known
    }

    /// The person's full traits, as a sign-up form sends them.
    pub(crate) fn traits(&self, ts: i64) -> Map<String, Value> {
        let mut t = Map::new();
        t.insert("email".into(), Value::from(self.name.email.as_str()));
        t.insert("name".into(), Value::from(self.name.full.as_str()));
        t.insert("first_name".into(), Value::from(self.name.first));
        t.insert("last_name".into(), Value::from(self.name.last));
        t.insert("created_at".into(), Value::from(iso_ms(ts)));
        t.insert("locale".into(), Value::from(self.locale.tag));
        t
    }

    pub(crate) fn group(&mut self, ts: i64, dev: u8, group_id: &str, traits: Value) {
        let payload = Payload::Group(group_id.to_string(), traits);
        self.emit(ts, Via::Device(dev), Kind::Group, "", payload);
    }

    /// The site bug some persons meet: `identify()` with a junk id on an anonymous device,
    /// after which analytics.js sends that id with everything from the device.
    pub(crate) fn maybe_junk_identify(&mut self, ts: i64, dev: u8) -> i64 {
        let Some(junk) = self.junk else {
            return ts;
        };
        if self.devices[dev as usize].user != DevUser::Anonymous {
            return ts;
        }
        self.junk = None;
        let ts = self.after(ts, 2.0);
        self.devices[dev as usize].user = DevUser::Junk(junk);
        self.emit(
            ts,
            Via::Device(dev),
            Kind::Identify,
            "",
            Payload::Traits(json!({})),
        );
        ts
    }

    /// Whether this device is the shared family tablet.
    pub(crate) fn is_tablet(&self, dev: u8) -> bool {
        self.tablet == Some(dev)
    }

    /// Adds the brand app on the person's phone (its own anonymous id); None without a phone.
    pub(crate) fn install_app(&mut self) -> Option<u8> {
        let phone = self
            .devices
            .iter()
            .find(|d| d.kind == DeviceKind::Mobile)
            .map(|d| d.ios)?;
        let app = Device::app(&mut self.rng, phone);
        self.devices.push(app);
        Some((self.devices.len() - 1) as u8)
    }

    // ---- e-mail ---------------------------------------------------------------------

    /// Marketing consent given: the newsletter starts at the person's cadence.
    pub(crate) fn opt_in(&mut self, t: i64) {
        if self.consent || !self.known {
            return;
        }
        self.consent = true;
        let first = t + (7.0 / self.cadence * self.rng.f64() * DAY_MS as f64) as i64;
        let at = self.local_send_time(first);
        self.schedule(at, Job::Newsletter);
    }

    /// A send slot: the local morning of the day `t` falls on.
    fn local_send_time(&mut self, t: i64) -> i64 {
        let offset = self.locale.offset_min * MINUTE_MS;
        let local_day = (t + offset).div_euclid(DAY_MS) * DAY_MS;
        let slot = local_day - offset + 9 * HOUR_MS + self.rng.range_i(0, 2 * HOUR_MS);
        slot.max(t)
    }

    fn newsletter(&mut self, t: i64) {
        if self.unsubscribed {
            return;
        }
        let source = self.kit.newsletter;
        let touch = self.touch(source);
        self.send_email(t, touch);
        let gap = 7.0 / self.cadence * DAY_MS as f64 * self.rng.range(0.85, 1.15);
        let next = self.local_send_time(t + gap as i64);
        self.schedule(next.max(t + HOUR_MS), Job::Newsletter);
    }

    /// Sends one e-mail (server side, by the e-mail tool) and plays out what the person
    /// does with it. Frequency within the trailing week drives opens down and
    /// unsubscribes and spam reports up. Returns whether it was opened.
    pub(crate) fn send_email(&mut self, t: i64, touch: Touch) -> bool {
        let s = self.kit.sources[touch.source as usize];
        if !self.known || (self.unsubscribed && s.role == Role::Newsletter) {
            return false;
        }
        while self
            .sends
            .front()
            .is_some_and(|x| *x <= t - FATIGUE_WINDOW_MS)
        {
            self.sends.pop_front();
        }
        self.sends.push_back(t);
        let recent = self.sends.len() as f64;
        let asset = s.assets.get(touch.asset as usize).map_or("", |a| a.id);
        let email_id = format!("em_{}", self.rng.hex(16));
        let subject = text::subject(self.kit.brand, asset, self.rng.below(64));
        let props = json!({
            "email_id": email_id,
            "email_subject": subject,
            "campaign_id": s.campaign,
            "campaign_name": s.campaign,
            "asset": asset,
            "list_id": if s.role == Role::Newsletter { "newsletter" } else { "lifecycle" },
            "sends_last_7_days": recent as u64,
        });
        self.track(t, Via::Server, "Email Sent", props.clone());
        let fatigue = 1.0 / (1.0 + 0.09 * (recent - 1.0));
        let lifecycle = if s.role == Role::Lifecycle { 1.35 } else { 1.0 };
        let p_open = 0.40 * fatigue * (0.55 + 0.9 * self.intent) * lifecycle;
        let p_unsub = 0.0012 * recent.powf(1.7);
        let p_spam = 0.22 * p_unsub * if recent >= 5.0 { 2.0 } else { 1.0 };
        if self.rng.chance(p_spam.min(0.5)) {
            let at = t + (self.rng.lognormal(3.0, 1.0) * HOUR_MS as f64) as i64;
            self.track(at, Via::Server, "Spam Reported", props);
            self.unsubscribed = true;
            return false;
        }
        if !self.rng.chance(p_open.min(0.9)) {
            return false;
        }
        let opened =
            t + (self.rng.lognormal(2.0, 1.2).min(96.0) * HOUR_MS as f64) as i64 + MINUTE_MS;
        self.track(opened, Via::Server, "Email Opened", props.clone());
        if s.role == Role::Newsletter && self.rng.chance((p_unsub / 0.4).min(0.6)) {
            let at = opened + self.rng.range_i(20_000, 3 * MINUTE_MS);
            self.track(at, Via::Server, "Unsubscribed", props);
            self.unsubscribed = true;
            return true;
        }
        let p_click = 0.11 * self.lift(touch) * lifecycle * (0.6 + 0.8 * self.intent);
        if self.rng.chance(p_click.min(0.8)) {
            let at = opened + self.rng.range_i(5_000, 4 * MINUTE_MS);
            let link = format!(
                "{}{}{}",
                self.kit.origin(),
                s.landings[touch.landing as usize],
                self.utm_query(touch, false)
            );
            let mut props = props;
            props["link_url"] = Value::from(link);
            self.track(at, Via::Server, "Email Link Clicked", props);
            self.schedule(
                at + 2_000,
                Job::Visit {
                    touch,
                    device: None,
                    purpose: Purpose::Email,
                },
            );
        }
        true
    }

    // ---- surveys --------------------------------------------------------------------

    /// `Survey Responded` with a score that follows the person's satisfaction (`base`
    /// minus their bad experiences) and, sometimes, a comment about the worst of them.
    /// Returns the score.
    pub(crate) fn survey(
        &mut self,
        ts: i64,
        via: Via,
        survey: Survey,
        stage: &'static str,
        base: f64,
    ) -> i64 {
        let sat = (base + self.temper - self.exp.penalty()).clamp(0.0, 1.0);
        let (name, max, lo, spread) = match survey {
            Survey::Nps => ("nps", 10.0, 0.0, 1.1),
            Survey::Csat => ("csat", 5.0, 1.0, 0.5),
            Survey::Ces => ("ces", 7.0, 1.0, 0.7),
        };
        let score = (lo + sat * (max - lo) + spread * self.rng.normal())
            .round()
            .clamp(lo, max) as i64;
        let norm = (score as f64 - lo) / (max - lo);
        let mut props = Map::new();
        props.insert("survey".into(), Value::from(name));
        props.insert("score".into(), Value::from(score));
        props.insert("stage".into(), Value::from(stage));
        props.insert(
            "question".into(),
            Value::from(text::question(self.kit.brand, survey, stage)),
        );
        let p_comment = if norm < 0.6 {
            0.55
        } else if norm < 0.8 {
            0.25
        } else {
            0.35
        };
        if self.rng.chance(p_comment) {
            let cause = if norm < 0.6 {
                self.exp.cause()
            } else {
                Cause::None
            };
            let pick = self.rng.below(1024);
            props.insert(
                "comment".into(),
                Value::from(text::comment(self.kit.brand, norm, cause, pick)),
            );
        }
        self.track(ts, via, "Survey Responded", Value::Object(props));
        score
    }
}
