//! Fieldnote, the note-taking subscription: the seeds' second example.
//!
//! Owns the marketing site and app pages, the sign-up funnel (`Signup Started` ->
//! `Signed Up` -> `Trial Started` -> `Subscription Started`), onboarding steps, product
//! usage on the web and in the app, team workspaces (`group`), monthly renewals and churn
//! (`Subscription Renewed`, `Subscription Cancelled`), failed payments, support contacts,
//! and the e-mails and surveys around them. Conversion and churn follow activation
//! (onboarding completed), intent, the acquiring touch and bad experiences.

use serde_json::{json, Value};

use crate::catalog::{find, Source};
use crate::clock::{iso_date, DAY_MS, HOUR_MS, MINUTE_MS};
use crate::journey::{Job as SimJob, Purpose, Sim, Survey, Touch, Via};
use crate::people::DeviceKind;
use crate::Brand;

const TRIAL_DAYS: i64 = 14;
const PERIOD_DAYS: i64 = 30;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Campaigns {
    onboarding: u16,
    trial_ending: u16,
    winback: u16,
}

impl Campaigns {
    pub(crate) fn new(sources: &[Source], brand: Brand) -> Campaigns {
        if brand != Brand::Subscription {
            return Campaigns::default();
        }
        Campaigns {
            onboarding: find(sources, "fn_onboarding_series", "lifecycle"),
            trial_ending: find(sources, "fn_trial_ending", "lifecycle"),
            winback: find(sources, "fn_winback", "lifecycle"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Job {
    TrialReminder(u8),
    TrialEnd,
    /// A few days before a renewal: the person decides whether to cancel.
    ChurnCheck,
    Renewal,
    Nps,
    WinBack,
    AppInstall,
    Ticket(Topic),
    Resolved(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Topic {
    Sync,
    Billing,
    Import,
    Login,
}

impl Topic {
    fn name(self) -> &'static str {
        match self {
            Topic::Sync => "sync_issue",
            Topic::Billing => "billing",
            Topic::Import => "import_failed",
            Topic::Login => "login",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Task {
    Upgrade,
    Cancel,
}

struct Plan {
    id: &'static str,
    /// USD per seat and month.
    price: f64,
}

const PLANS: [Plan; 3] = [
    Plan {
        id: "personal",
        price: 8.0,
    },
    Plan {
        id: "pro",
        price: 15.0,
    },
    Plan {
        id: "team",
        price: 12.0,
    },
];
const TEAM: u8 = 2;

pub(crate) fn page_meta(path: &str) -> (&'static str, &'static str) {
    match path {
        "/" => ("Home", "Fieldnote — Notes that think with you"),
        "/features" => ("Features", "Features — Fieldnote"),
        "/pricing" => ("Pricing", "Pricing — Fieldnote"),
        "/templates/meeting-notes" => ("Template", "Meeting notes template — Fieldnote"),
        "/templates/research-journal" => ("Template", "Research journal template — Fieldnote"),
        "/blog/zettelkasten-guide" => ("Blog Post", "A practical guide to Zettelkasten"),
        "/blog/second-brain-for-teams" => ("Blog Post", "A second brain for teams"),
        "/compare/fieldnote-vs-notion" => {
            ("Comparison", "Fieldnote vs Notion — an honest comparison")
        }
        "/lp/teams" => ("Landing Page", "Fieldnote for teams — one source of truth"),
        "/lp/students" => ("Landing Page", "Fieldnote for students — free for 14 days"),
        "/radio" => (
            "Landing Page",
            "Heard us on the radio? Welcome to Fieldnote",
        ),
        "/tv" => ("Landing Page", "As seen on TV — Fieldnote for teams"),
        "/print" => ("Landing Page", "Campus Times readers: 30% off Fieldnote"),
        "/podcast" => ("Landing Page", "Deep Work Pod listeners — welcome"),
        "/signup" => ("Sign Up", "Create your Fieldnote account"),
        "/login" => ("Login", "Log in — Fieldnote"),
        "/app/onboarding" => ("Onboarding", "Welcome — Fieldnote"),
        "/app/notes" => ("Notes", "All notes — Fieldnote"),
        "/app/editor" => ("Editor", "Untitled note — Fieldnote"),
        "/app/search" => ("Search", "Search — Fieldnote"),
        "/app/settings/billing" => ("Billing", "Billing — Fieldnote"),
        "/help" => ("Help Center", "Help — Fieldnote"),
        "/help/contact" => ("Contact Support", "Contact support — Fieldnote"),
        _ => ("Page", "Fieldnote"),
    }
}

const BROWSE: &[&str] = &[
    "/features",
    "/pricing",
    "/templates/meeting-notes",
    "/templates/research-journal",
    "/blog/zettelkasten-guide",
    "/blog/second-brain-for-teams",
    "/compare/fieldnote-vs-notion",
    "/",
];
const BROWSE_WEIGHTS: [f64; 8] = [3.0, 3.0, 1.0, 0.7, 1.0, 0.7, 1.0, 1.0];

#[derive(Default)]
pub(crate) struct State {
    signed_up: bool,
    plan: u8,
    seats: u32,
    annual: bool,
    trial_end: i64,
    paying: bool,
    ended: bool,
    sub_id: String,
    /// Share of onboarding steps completed, 0..1.
    activated: f64,
    usage_per_week: f64,
    trial_decided: bool,
    app: Option<u8>,
    app_opened: bool,
    detractor: bool,
    coupon: Option<&'static str>,
    task: Option<Task>,
    tickets: Vec<(String, Topic)>,
    pending_tickets: Vec<Topic>,
}

impl State {
    fn mrr(&self) -> f64 {
        let base = PLANS[self.plan as usize].price * self.seats.max(1) as f64;
        let annual = if self.annual { 0.8 } else { 1.0 };
        let coupon = if self.coupon.is_some() { 0.8 } else { 1.0 };
        (base * annual * coupon * 100.0).round() / 100.0
    }
}

pub(crate) fn return_bias(sim: &Sim) -> f64 {
    // Users come back through the app, not through marketing pages.
    if sim.sub.signed_up {
        0.35
    } else {
        1.0
    }
}

pub(crate) fn session(sim: &mut Sim, t0: i64, dev: u8, touch: Touch, purpose: Purpose) -> i64 {
    // Only visits with the usage purpose continue the usage rhythm: one chain per person.
    if sim.devices[dev as usize].kind == DeviceKind::App {
        let t = app_usage(sim, t0, dev);
        if purpose == Purpose::Usage {
            plan_usage(sim, t);
        }
        return t;
    }
    match purpose {
        Purpose::Support => return support_visit(sim, t0, dev, touch),
        Purpose::Account => return account_visit(sim, t0, dev, touch),
        Purpose::Usage => {
            let t = web_usage(sim, t0, dev, touch);
            plan_usage(sim, t);
            return t;
        }
        Purpose::Browse | Purpose::Email => {}
    }
    let src = sim.kit.sources[touch.source as usize];
    let landing = src.landings[touch.landing as usize];
    if sim.sub.signed_up && landing.starts_with("/app") {
        let billing = landing == "/app/settings/billing";
        if billing && !sim.sub.paying && !sim.sub.ended {
            let p = 0.5 * conversion(sim);
            if sim.rng.chance(p) {
                sim.land(t0, dev, touch);
                let t = login_if_needed(sim, t0, dev);
                return upgrade(sim, t, dev);
            }
        }
        return web_usage(sim, t0, dev, touch);
    }
    let mut t = t0;
    sim.land(t, dev, touch);
    if src.promo_code.is_some() && sim.promo.is_none() {
        sim.promo = src.promo_code;
    }
    t = sim.maybe_junk_identify(t, dev);
    let lift = sim.lift(touch);
    let p_engage = (0.42
        + 0.3 * sim.intent
        + 0.15 * (lift - 1.0)
        + 0.04 * sim.warmth.min(5.0)
        + if purpose == Purpose::Email { 0.15 } else { 0.0 })
    .clamp(0.08, 0.93);
    let engaged = sim.rng.chance(p_engage);
    sim.absorb(touch, engaged);
    if !engaged {
        return t;
    }
    if sim.is_tablet(dev) && !sim.known {
        t = lead_signup(sim, t, dev);
    } else if sim.is_tablet(dev) && !sim.device_known(dev) {
        t = login_if_needed(sim, t, dev);
    }
    if sim.sub.signed_up {
        // A user who came back through a marketing page goes to the app.
        t = sim.after(t, 15.0);
        sim.page(t, dev, "/login", None);
        t = login_if_needed(sim, t, dev);
        if sim.sub.ended && landing == "/pricing" && sim.rng.chance(0.2) {
            return upgrade(sim, t, dev);
        }
        return web_usage_pages(sim, t, dev);
    }
    let mut pricing = landing == "/pricing";
    t = content(sim, t, dev, landing);
    for _ in 0..sim.rng.below(5) + usize::from(sim.intent > 0.5) {
        t = sim.after(t, 30.0);
        let path = BROWSE[sim.rng.weighted(&BROWSE_WEIGHTS)];
        sim.page(t, dev, path, None);
        pricing |= path == "/pricing";
        t = content(sim, t, dev, path);
    }
    if pricing {
        sim.retarget = true;
    }
    if sim.rng.chance(0.02) {
        t = sim.after(t, 40.0);
        sim.survey(
            t,
            Via::Device(dev),
            Survey::Csat,
            "consideration",
            0.55 + 0.25 * lift,
        );
    }
    if !sim.known && sim.rng.chance(0.06 + 0.06 * sim.intent) {
        t = lead_signup(sim, t, dev);
    }
    let score = sim.score(touch);
    if !sim
        .rng
        .chance((0.005 + 0.1 * score + if pricing { 0.02 } else { 0.0 }).min(0.5))
    {
        return t;
    }
    t = sim.after(t, 12.0);
    let location = if pricing {
        "pricing"
    } else {
        *sim.rng.pick(&["hero", "nav", "footer"])
    };
    sim.track(
        t,
        Via::Device(dev),
        "CTA Clicked",
        json!({"cta": "start_free_trial", "location": location}),
    );
    t = sim.after(t, 3.0);
    sim.page(t, dev, "/signup", None);
    t = sim.after(t, 8.0);
    sim.track(
        t,
        Via::Device(dev),
        "Signup Started",
        json!({"form": "signup"}),
    );
    let p_error = if sim.devices[dev as usize].is_mobile() {
        0.2
    } else {
        0.1
    };
    let mut friction = false;
    while sim.rng.chance(if friction { 0.25 } else { p_error }) {
        let (field, message) = *sim.rng.pick(&[
            ("password", "Password must contain a number"),
            ("email", "This email is already registered"),
            ("captcha", "Please verify you are human"),
        ]);
        t = sim.after(t, 25.0);
        sim.track(
            t,
            Via::Device(dev),
            "Form Error",
            json!({"form": "signup", "field": field, "message": message}),
        );
        sim.exp.friction += 1;
        friction = true;
    }
    if !sim.rng.chance(0.8 * if friction { 0.65 } else { 1.0 }) {
        return t;
    }
    sign_up(sim, t, dev, touch)
}

/// What people do on a marketing page besides reading it.
fn content(sim: &mut Sim, t: i64, dev: u8, path: &'static str) -> i64 {
    let mut t = t;
    if path.starts_with("/templates/") && sim.rng.chance(0.4) {
        t = sim.after(t, 20.0);
        sim.track(
            t,
            Via::Device(dev),
            "Template Previewed",
            json!({"template": &path[11..]}),
        );
    } else if path.starts_with("/blog/") && sim.rng.chance(0.45) {
        t = sim.after(t, 150.0);
        sim.track(
            t,
            Via::Device(dev),
            "Article Completed",
            json!({"article": &path[6..], "read_pct": 100}),
        );
    } else if path == "/features" && sim.rng.chance(0.3) {
        t = sim.after(t, 10.0);
        let props = json!({"video_id": "fieldnote-tour", "content_asset_id": "fieldnote-tour", "total_length": 120, "position": 0});
        sim.track(t, Via::Device(dev), "Video Playback Started", props);
        if sim.rng.chance(0.4) {
            t += 120_000 + sim.rng.range_i(0, 5_000);
            let props = json!({"video_id": "fieldnote-tour", "content_asset_id": "fieldnote-tour", "total_length": 120, "position": 120});
            sim.track(t, Via::Device(dev), "Video Playback Completed", props);
        }
    } else if path == "/pricing" && sim.rng.chance(0.35) {
        t = sim.after(t, 8.0);
        let period = *sim.rng.pick(&["annual", "monthly"]);
        sim.track(
            t,
            Via::Device(dev),
            "Pricing Toggled",
            json!({"billing_period": period}),
        );
    }
    t
}

fn login_if_needed(sim: &mut Sim, t: i64, dev: u8) -> i64 {
    if sim.device_known(dev) {
        return t;
    }
    let t = sim.after(t, 20.0);
    sim.login(t, dev);
    t
}

fn lead_signup(sim: &mut Sim, t: i64, dev: u8) -> i64 {
    let t = sim.after(t, 20.0);
    let traits = json!({"email": sim.name.email, "newsletter": true, "lead_source": "blog_footer"});
    sim.identify(t, dev, traits);
    let t = if sim.rng.chance(0.5) {
        t
    } else {
        t + sim.rng.range_i(1, 60)
    };
    sim.track(
        t,
        Via::Device(dev),
        "Newsletter Subscribed",
        json!({"list_id": "product_updates", "source": "blog_footer"}),
    );
    sim.opt_in(t);
    t
}

fn sign_up(sim: &mut Sim, mut t: i64, dev: u8, touch: Touch) -> i64 {
    let c = sim.kit.sub;
    let src = sim.kit.sources[touch.source as usize];
    let landing = src.landings[touch.landing as usize];
    let team_lean = if landing == "/lp/teams" || landing == "/tv" {
        3.0
    } else {
        1.0
    };
    let plan = sim.rng.weighted(&[0.45, 0.35, 0.2 * team_lean]) as u8;
    let st = &mut sim.sub;
    st.signed_up = true;
    st.plan = plan;
    st.seats = if plan == TEAM {
        3 + (sim.rng.exp(6.0) as u32).min(40)
    } else {
        1
    };
    st.annual = sim.rng.chance(0.22);
    st.trial_end = t + TRIAL_DAYS * DAY_MS;
    let plan_id = PLANS[plan as usize].id;
    t = sim.after(t, 20.0);
    let mut traits = sim.traits(t);
    traits.insert("plan".into(), Value::from("trial"));
    traits.insert("trial_plan".into(), Value::from(plan_id));
    sim.identify(t, dev, Value::Object(traits));
    let at = if sim.rng.chance(0.5) {
        t
    } else {
        t + sim.rng.range_i(1, 40)
    };
    let method = *sim.rng.pick(&["email", "email", "google", "apple"]);
    sim.track(
        at,
        Via::Device(dev),
        "Signed Up",
        json!({"method": method, "plan": plan_id}),
    );
    t = at + sim.rng.range_i(50, 900);
    let trial_end = sim.sub.trial_end;
    sim.track(
        t,
        Via::Device(dev),
        "Trial Started",
        json!({"plan": plan_id, "trial_days": TRIAL_DAYS, "trial_end_date": iso_date(trial_end)}),
    );
    if plan == TEAM {
        t = sim.after(t, 5.0);
        let org = format!("org_{}", sim.rng.hex(10));
        let company = format!(
            "{} {}",
            sim.name.last,
            sim.rng.pick(&[
                "Labs",
                "& Partners",
                "Studio",
                "GmbH",
                "Consulting",
                "株式会社"
            ])
        );
        let industry =
            *sim.rng
                .pick(&["software", "education", "consulting", "healthcare", "media"]);
        let seats = sim.sub.seats;
        sim.group(
            t,
            dev,
            &org,
            json!({"name": company, "industry": industry, "employees": seats * 3, "plan": "team"}),
        );
    }
    if sim.rng.chance(0.6) {
        sim.opt_in(t);
    }
    for (asset, delay) in [(0u8, 10 * MINUTE_MS), (1, 2 * DAY_MS), (2, 5 * DAY_MS)] {
        sim.schedule(
            t + delay,
            SimJob::Email(Touch {
                source: c.onboarding,
                asset,
                landing: 0,
            }),
        );
    }
    sim.schedule(trial_end - 3 * DAY_MS, SimJob::Sub(Job::TrialReminder(0)));
    sim.schedule(trial_end - 10 * HOUR_MS, SimJob::Sub(Job::TrialReminder(1)));
    sim.schedule(trial_end, SimJob::Sub(Job::TrialEnd));
    sim.schedule(t + PERIOD_DAYS * DAY_MS, SimJob::Sub(Job::Nps));
    if sim.rng.chance(0.25) {
        let at = t + (sim.rng.exp(15.0) * DAY_MS as f64) as i64 + HOUR_MS;
        let topic = *sim.rng.pick(&[Topic::Billing, Topic::Login, Topic::Sync]);
        sim.schedule(at, SimJob::Sub(Job::Ticket(topic)));
    }
    sim.retarget = false;
    onboarding(sim, t, dev)
}

fn onboarding(sim: &mut Sim, mut t: i64, dev: u8) -> i64 {
    t = sim.after(t, 4.0);
    sim.page(t, dev, "/app/onboarding", None);
    let team = sim.sub.plan == TEAM;
    let steps = [
        "create_workspace",
        "import_notes",
        if team {
            "invite_teammates"
        } else {
            "choose_template"
        },
        "install_app",
    ];
    let mut p = [0.92, 0.72, 0.65, 0.5];
    let start = t;
    let mut done = 0;
    let mut hard = false;
    for (i, step) in steps.iter().enumerate() {
        if i == 1 && sim.rng.chance(0.15) {
            t = sim.after(t, 60.0);
            let from = *sim.rng.pick(&["evernote", "notion", "markdown"]);
            sim.track(
                t,
                Via::Device(dev),
                "Import Failed",
                json!({"source": from, "error": "timeout"}),
            );
            sim.exp.onboarding_hard = true;
            hard = true;
            if sim.rng.chance(0.4) {
                sim.schedule(t + HOUR_MS, SimJob::Sub(Job::Ticket(Topic::Import)));
            }
            p[1] *= 0.5;
        }
        if !sim.rng.chance(p[i] * (0.8 + 0.3 * sim.intent).min(1.0)) {
            break;
        }
        t = sim.after(t, 40.0);
        sim.track(
            t,
            Via::Device(dev),
            "Onboarding Step Completed",
            json!({"step": i + 1, "step_name": step}),
        );
        if *step == "invite_teammates" {
            t = sim.after(t, 2.0);
            let invited = sim.rng.range_i(1, 6);
            sim.track(
                t,
                Via::Device(dev),
                "Teammate Invited",
                json!({"count": invited}),
            );
        }
        if *step == "install_app" {
            sim.schedule(t + 5 * MINUTE_MS, SimJob::Sub(Job::AppInstall));
        }
        done += 1;
    }
    if done == steps.len() {
        t = sim.after(t, 1.0);
        sim.track(
            t,
            Via::Device(dev),
            "Onboarding Completed",
            json!({"duration_seconds": (t - start) / 1000}),
        );
    }
    sim.sub.activated = done as f64 / steps.len() as f64;
    sim.sub.usage_per_week = (1.0 + 6.0 * sim.sub.activated) * (0.6 + 0.8 * sim.intent);
    if sim.rng.chance(0.35) {
        t = sim.after(t, 10.0);
        let base = 0.9 - if hard { 0.35 } else { 0.0 } - 0.25 * (1.0 - sim.sub.activated);
        sim.survey(t, Via::Device(dev), Survey::Ces, "onboarding", base);
    }
    plan_usage(sim, t);
    t
}

/// Schedules the next time the person opens the product, at their usage rate.
fn plan_usage(sim: &mut Sim, after: i64) {
    if !sim.sub.signed_up {
        return;
    }
    let rate = if sim.sub.ended {
        0.15
    } else {
        sim.sub.usage_per_week.max(0.05)
    };
    let gap = sim.rng.exp(7.0 / rate) * DAY_MS as f64;
    let at = after + (gap as i64).max(2 * HOUR_MS);
    let touch = Touch {
        source: sim.kit.direct,
        asset: 0,
        landing: 0,
    };
    sim.schedule(
        at,
        SimJob::Visit {
            touch,
            device: None,
            purpose: Purpose::Usage,
        },
    );
}

const USAGE: &[(&str, f64)] = &[
    ("Note Created", 0.4),
    ("Note Edited", 0.25),
    ("Search Performed", 0.15),
    ("Note Shared", 0.08),
    ("Template Used", 0.08),
    ("Integration Connected", 0.02),
    ("Tag Added", 0.05),
];

fn usage_event(sim: &mut Sim, t: i64, dev: u8) {
    let w: Vec<f64> = USAGE.iter().map(|u| u.1).collect();
    let (event, _) = USAGE[sim.rng.weighted(&w)];
    let props = match event {
        "Note Created" | "Note Edited" => {
            json!({"note_id": format!("note_{}", sim.rng.hex(8)), "words": sim.rng.range_i(5, 900)})
        }
        "Search Performed" => {
            json!({"query_length": sim.rng.range_i(2, 30), "results": sim.rng.range_i(0, 40)})
        }
        "Note Shared" => json!({"share_type": *sim.rng.pick(&["link", "workspace", "email"])}),
        "Template Used" => {
            json!({"template": *sim.rng.pick(&["meeting-notes", "research-journal", "weekly-review"])})
        }
        "Integration Connected" => {
            json!({"integration": *sim.rng.pick(&["slack", "google_drive", "github", "zapier"])})
        }
        _ => json!({"tag": *sim.rng.pick(&["work", "ideas", "reading", "uni", "日記"])}),
    };
    sim.track(t, Via::Device(dev), event, props);
}

/// After any use: sometimes sync breaks, which users notice and report.
fn sync_trouble(sim: &mut Sim, t: i64, dev: u8) {
    if sim.rng.chance(0.025) {
        let t = sim.after(t, 5.0);
        let notes = sim.rng.range_i(1, 5);
        sim.track(
            t,
            Via::Device(dev),
            "Sync Conflict",
            json!({"notes_affected": notes}),
        );
        sim.exp.sync_issue = true;
        if sim.rng.chance(0.5) {
            sim.schedule(t + 2 * HOUR_MS, SimJob::Sub(Job::Ticket(Topic::Sync)));
        }
    }
}

fn web_usage(sim: &mut Sim, t0: i64, dev: u8, touch: Touch) -> i64 {
    if !sim.sub.signed_up {
        return t0;
    }
    let src = sim.kit.sources[touch.source as usize];
    let path = src.landings[touch.landing as usize];
    let path = if path.starts_with("/app") {
        path
    } else {
        "/app/notes"
    };
    sim.page(t0, dev, path, Some(touch));
    let t = login_if_needed(sim, t0, dev);
    web_usage_pages(sim, t, dev)
}

fn web_usage_pages(sim: &mut Sim, mut t: i64, dev: u8) -> i64 {
    for _ in 0..3 + sim.rng.below(8) {
        t = sim.after(t, 45.0);
        if sim.rng.chance(0.3) {
            let path = *sim.rng.pick(&["/app/editor", "/app/search", "/app/notes"]);
            sim.page(t, dev, path, None);
            t = sim.after(t, 20.0);
        }
        usage_event(sim, t, dev);
    }
    if sim.sub.plan == TEAM && sim.rng.chance(0.05) {
        t = sim.after(t, 10.0);
        sim.track(t, Via::Device(dev), "Teammate Invited", json!({"count": 1}));
    }
    sync_trouble(sim, t, dev);
    t
}

fn app_usage(sim: &mut Sim, t0: i64, dev: u8) -> i64 {
    let mut t = t0;
    if !sim.sub.app_opened {
        sim.sub.app_opened = true;
        sim.track(
            t,
            Via::Device(dev),
            "Application Installed",
            json!({"version": "5.2.0", "build": "520"}),
        );
        t = sim.after(t, 2.0);
    }
    let background = sim.rng.chance(0.5);
    sim.track(
        t,
        Via::Device(dev),
        "Application Opened",
        json!({"from_background": background, "version": "5.2.0"}),
    );
    t = login_if_needed(sim, t, dev);
    t = sim.after(t, 2.0);
    sim.screen(t, dev, "Notes", json!({}));
    for _ in 0..2 + sim.rng.below(6) {
        t = sim.after(t, 30.0);
        if sim.rng.chance(0.4) {
            let name = *sim.rng.pick(&["Editor", "Search", "Notes"]);
            sim.screen(t, dev, name, json!({}));
            t = sim.after(t, 10.0);
        }
        usage_event(sim, t, dev);
    }
    sync_trouble(sim, t, dev);
    t
}

/// The chance a trial converts, from activation, intent and warmth.
fn conversion(sim: &Sim) -> f64 {
    let team = if sim.sub.plan == TEAM { 0.08 } else { 0.0 };
    let warm = 1.0 - (-sim.warmth / 2.0).exp();
    (0.04 + 0.4 * sim.sub.activated + 0.2 * sim.intent + 0.1 * warm + team
        - 0.05 * sim.exp.friction.min(2) as f64
        - if sim.exp.onboarding_hard { 0.1 } else { 0.0 })
    .clamp(0.02, 0.9)
}

fn upgrade(sim: &mut Sim, mut t: i64, dev: u8) -> i64 {
    if sim.sub.paying {
        return t;
    }
    let plan_id = PLANS[sim.sub.plan as usize].id;
    if sim.sub.ended && sim.promo == Some("COMEBACK20") {
        sim.sub.coupon = sim.promo;
    } else if let Some(code) = sim.promo.filter(|_| sim.rng.chance(0.6)) {
        sim.sub.coupon = Some(code);
        t = sim.after(t, 15.0);
        sim.track(
            t,
            Via::Device(dev),
            "Promo Code Applied",
            json!({"promo_code": code, "plan": plan_id, "discount_pct": 0.2}),
        );
    }
    if sim.current_path() != "/app/settings/billing" {
        t = sim.after(t, 10.0);
        sim.page(t, dev, "/app/settings/billing", None);
    }
    let mrr = sim.sub.mrr();
    let period = if sim.sub.annual { "annual" } else { "monthly" };
    t = sim.after(t, 12.0);
    sim.track(
        t,
        Via::Device(dev),
        "Checkout Started",
        json!({"plan": plan_id, "value": mrr, "currency": "USD", "billing_period": period}),
    );
    t = sim.after(t, 50.0);
    let method = *sim.rng.pick(&["card", "card", "paypal"]);
    sim.track(
        t,
        Via::Device(dev),
        "Payment Info Entered",
        json!({"plan": plan_id, "payment_method": method}),
    );
    if sim.rng.chance(0.07) {
        t = sim.after(t, 5.0);
        sim.track(
            t,
            Via::Device(dev),
            "Payment Failed",
            json!({"plan": plan_id, "reason": "card_declined"}),
        );
        sim.exp.payment_failed = true;
        if !sim.rng.chance(0.6) {
            return t;
        }
        t = sim.after(t, 60.0);
        sim.track(
            t,
            Via::Device(dev),
            "Payment Info Entered",
            json!({"plan": plan_id, "payment_method": "card"}),
        );
    }
    let st = &mut sim.sub;
    st.paying = true;
    let converted = !st.ended;
    st.ended = false;
    st.sub_id = format!("sub_{}", sim.rng.hex(14));
    let mut props = json!({
        "subscription_id": sim.sub.sub_id,
        "plan": plan_id,
        "billing_period": period,
        "mrr": mrr,
        "seats": sim.sub.seats,
        "currency": "USD",
        "trial_converted": converted,
    });
    if let Some(c) = sim.sub.coupon {
        props["coupon"] = Value::from(c);
    }
    let at = t + sim.rng.range_i(500, 4_000);
    sim.track(at, Via::Server, "Subscription Started", props);
    let first_payment = mrr * if sim.sub.annual { 12.0 } else { 1.0 };
    sim.commission(at, first_payment);
    if !sim.sub.annual {
        schedule_renewal(sim, at);
    }
    sim.retarget = false;
    t
}

fn schedule_renewal(sim: &mut Sim, from: i64) {
    let due = from + PERIOD_DAYS * DAY_MS;
    // Two looks per period, each with half the monthly hazard: people cancel any time,
    // not only on the eve of a renewal.
    sim.schedule(due - 18 * DAY_MS, SimJob::Sub(Job::ChurnCheck));
    sim.schedule(due - 3 * DAY_MS, SimJob::Sub(Job::ChurnCheck));
    sim.schedule(due, SimJob::Sub(Job::Renewal));
}

fn account_visit(sim: &mut Sim, t0: i64, dev: u8, touch: Touch) -> i64 {
    let Some(task) = sim.sub.task.take() else {
        return t0;
    };
    sim.page(t0, dev, "/app/settings/billing", Some(touch));
    let t = login_if_needed(sim, t0, dev);
    match task {
        Task::Upgrade => upgrade(sim, t, dev),
        Task::Cancel => cancel(sim, t, dev),
    }
}

fn cancel(sim: &mut Sim, mut t: i64, dev: u8) -> i64 {
    let plan_id = PLANS[sim.sub.plan as usize].id;
    let reason = if sim.exp.sync_issue {
        "bugs"
    } else if sim.exp.billing_issue || sim.exp.support_slow {
        "bad_experience"
    } else if sim.sub.activated < 0.5 {
        "not_using"
    } else {
        *sim.rng.pick(&[
            "too_expensive",
            "missing_features",
            "switched_to_competitor",
        ])
    };
    t = sim.after(t, 40.0);
    let props = json!({
        "subscription_id": sim.sub.sub_id,
        "plan": plan_id,
        "mrr": sim.sub.mrr(),
        "reason": reason,
    });
    sim.track(t, Via::Device(dev), "Subscription Cancelled", props);
    sim.sub.paying = false;
    sim.sub.ended = true;
    if sim.rng.chance(0.5) {
        t = sim.after(t, 20.0);
        sim.survey(
            t,
            Via::Device(dev),
            Survey::Csat,
            "cancellation",
            0.55 + 0.3 * sim.sub.activated,
        );
    }
    sim.schedule(t + 10 * DAY_MS, SimJob::Sub(Job::WinBack));
    t
}

fn support_visit(sim: &mut Sim, t0: i64, dev: u8, touch: Touch) -> i64 {
    let Some(topic) = sim.sub.pending_tickets.pop() else {
        return t0;
    };
    let mut t = t0;
    sim.page(t, dev, "/help", Some(touch));
    t = sim.after(t, 60.0);
    sim.page(t, dev, "/help/contact", None);
    t = sim.after(t, 90.0);
    let id = format!("tkt_{}", sim.rng.hex(10));
    let channel = *sim.rng.pick(&["chat", "email", "email"]);
    let message = crate::text::support_message(topic.name(), sim.rng.below(64));
    sim.track(
        t,
        Via::Server,
        "Support Ticket Opened",
        json!({"ticket_id": id, "topic": topic.name(), "channel": channel, "message": message, "priority": if topic == Topic::Billing { "high" } else { "normal" }}),
    );
    sim.exp.support_contacts += 1;
    if topic == Topic::Billing {
        sim.exp.billing_issue = true;
    }
    sim.sub.tickets.push((id, topic));
    let k = (sim.sub.tickets.len() - 1) as u8;
    sim.schedule(t + MINUTE_MS, SimJob::Sub(Job::Resolved(k)));
    t
}

pub(crate) fn job(sim: &mut Sim, t: i64, job: Job) {
    let c = sim.kit.sub;
    let direct = Touch {
        source: sim.kit.direct,
        asset: 0,
        landing: 0,
    };
    match job {
        Job::TrialReminder(asset) => {
            if !sim.sub.paying && !sim.sub.ended {
                let touch = Touch {
                    source: c.trial_ending,
                    asset,
                    landing: 0,
                };
                sim.send_email(t, touch);
            }
        }
        Job::TrialEnd => {
            if sim.sub.paying || sim.sub.ended {
                return;
            }
            if !sim.sub.trial_decided && sim.rng.chance(conversion(sim)) {
                sim.sub.trial_decided = true;
                sim.sub.task = Some(Task::Upgrade);
                let at = t + sim.rng.range_i(0, 10 * HOUR_MS);
                sim.schedule(
                    at,
                    SimJob::Visit {
                        touch: direct,
                        device: None,
                        purpose: Purpose::Account,
                    },
                );
                // Whoever has not paid a day later (a declined card) loses the trial.
                sim.schedule(t + DAY_MS, SimJob::Sub(Job::TrialEnd));
            } else {
                let plan = PLANS[sim.sub.plan as usize].id;
                sim.track(
                    t,
                    Via::Server,
                    "Trial Ended",
                    json!({"plan": plan, "converted": false}),
                );
                sim.sub.ended = true;
                sim.retarget = true;
                sim.schedule(t + 7 * DAY_MS, SimJob::Sub(Job::WinBack));
            }
        }
        Job::ChurnCheck => {
            if !sim.sub.paying {
                return;
            }
            let e = sim.exp;
            let hazard = 0.04
                + 0.12 * (1.0 - sim.sub.activated)
                + if e.support_slow { 0.1 } else { 0.0 }
                + if e.billing_issue { 0.08 } else { 0.0 }
                + if e.sync_issue { 0.08 } else { 0.0 }
                + if sim.sub.detractor { 0.1 } else { 0.0 }
                - if sim.sub.plan == TEAM { 0.03 } else { 0.0 };
            if sim.sub.task.is_none() && sim.rng.chance(hazard / 2.0) {
                sim.sub.task = Some(Task::Cancel);
                let at = t + sim.rng.range_i(HOUR_MS, 2 * DAY_MS);
                sim.schedule(
                    at,
                    SimJob::Visit {
                        touch: direct,
                        device: None,
                        purpose: Purpose::Account,
                    },
                );
            }
        }
        Job::Renewal => {
            if !sim.sub.paying {
                return;
            }
            let plan = PLANS[sim.sub.plan as usize].id;
            let mut at = t;
            if sim.rng.chance(0.04) {
                sim.track(
                    t,
                    Via::Server,
                    "Payment Failed",
                    json!({"subscription_id": sim.sub.sub_id, "plan": plan, "reason": "card_expired"}),
                );
                sim.exp.billing_issue = true;
                at = t + DAY_MS;
            }
            let props = json!({
                "subscription_id": sim.sub.sub_id,
                "plan": plan,
                "mrr": sim.sub.mrr(),
                "currency": "USD",
            });
            sim.track(at, Via::Server, "Subscription Renewed", props);
            schedule_renewal(sim, at);
        }
        Job::Nps => {
            if !sim.sub.signed_up || sim.rng.chance(0.65) {
                return;
            }
            let base = 0.55 + 0.35 * sim.sub.activated + if sim.sub.paying { 0.05 } else { 0.0 };
            let score = sim.survey(t, Via::Server, Survey::Nps, "retention", base);
            sim.sub.detractor = score <= 6;
        }
        Job::WinBack => {
            if sim.sub.ended {
                let touch = sim.touch(c.winback);
                sim.promo = Some("COMEBACK20");
                sim.send_email(t, touch);
            }
        }
        Job::AppInstall => {
            if sim.sub.app.is_none() {
                if let Some(app) = sim.install_app() {
                    sim.sub.app = Some(app);
                    sim.schedule(
                        t,
                        SimJob::Visit {
                            touch: direct,
                            device: Some(app),
                            purpose: Purpose::Account,
                        },
                    );
                }
            }
        }
        Job::Ticket(topic) => {
            sim.sub.pending_tickets.push(topic);
            sim.schedule(
                t,
                SimJob::Visit {
                    touch: direct,
                    device: None,
                    purpose: Purpose::Support,
                },
            );
        }
        Job::Resolved(k) => {
            let (id, topic) = sim.sub.tickets[k as usize].clone();
            let hours = sim.rng.lognormal(10.0, 1.2).min(240.0);
            sim.exp.support_slow |= hours > 48.0;
            let at = t + (hours * HOUR_MS as f64) as i64;
            sim.track(
                at,
                Via::Server,
                "Support Ticket Resolved",
                json!({"ticket_id": id, "topic": topic.name(), "resolution_hours": (hours * 10.0).round() / 10.0}),
            );
            if sim.rng.chance(0.4) {
                let when = at + sim.rng.range_i(5 * MINUTE_MS, 2 * HOUR_MS);
                sim.survey(
                    when,
                    Via::Server,
                    Survey::Csat,
                    "support",
                    0.95 - hours / 250.0,
                );
            }
        }
    }
}
