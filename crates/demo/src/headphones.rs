//! Sonora, the headphones shop: the seeds' worked example from ad to after-sales.
//!
//! Owns the shop's pages and products, the ordering funnel (`Product Viewed` ->
//! `Product Added` -> `Checkout Started` -> `Payment Info Entered` -> `Order Completed`)
//! with its friction (checkout errors, declined cards, worse on phones), and what follows
//! an order: shipping, late deliveries, the companion app, support tickets, returns and
//! refunds, review requests with NPS, and cross-sell e-mail. Step probabilities come from
//! the person's intent and warmth and the touch's close rate and asset lift.

use serde_json::{json, Value};

use crate::catalog::{find, Source};
use crate::clock::{iso_ms, DAY_MS, HOUR_MS, MINUTE_MS};
use crate::journey::{Job as SimJob, Purpose, Sim, Survey, Touch, Via};
use crate::people::DeviceKind;
use crate::Brand;

/// The campaigns the shop triggers by name.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Campaigns {
    welcome: u16,
    abandoned: u16,
    review: u16,
    cross_sell: u16,
}

impl Campaigns {
    pub(crate) fn new(sources: &[Source], brand: Brand) -> Campaigns {
        if brand != Brand::Headphones {
            return Campaigns::default();
        }
        Campaigns {
            welcome: find(sources, "hp_welcome_series", "lifecycle"),
            abandoned: find(sources, "hp_abandoned_cart", "lifecycle"),
            review: find(sources, "hp_review_request", "lifecycle"),
            cross_sell: find(sources, "hp_accessories_cross_sell", "lifecycle"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Job {
    CartReminder(u8),
    Shipped(u8),
    Delivered(u8),
    AppInstall,
    Ticket(Topic),
    Resolved(u8),
    Refund(u8),
    ReviewAsk,
    CrossSell,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Topic {
    WhereIsMyOrder,
    Pairing,
    Defect,
    Return,
}

impl Topic {
    fn name(self) -> &'static str {
        match self {
            Topic::WhereIsMyOrder => "where_is_my_order",
            Topic::Pairing => "pairing",
            Topic::Defect => "defect",
            Topic::Return => "return",
        }
    }
}

struct Product {
    id: &'static str,
    sku: &'static str,
    name: &'static str,
    price: f64,
    category: &'static str,
    path: &'static str,
}

const PRODUCTS: &[Product] = &[
    Product {
        id: "studio-pro",
        sku: "SN-STP-01",
        name: "Sonora Studio Pro",
        price: 349.0,
        category: "Over-Ear",
        path: "/products/studio-pro",
    },
    Product {
        id: "aria",
        sku: "SN-ARA-02",
        name: "Sonora Aria",
        price: 129.0,
        category: "Earbuds",
        path: "/products/aria",
    },
    Product {
        id: "move",
        sku: "SN-MOV-03",
        name: "Sonora Move",
        price: 89.0,
        category: "Sport",
        path: "/products/move",
    },
    Product {
        id: "mini",
        sku: "SN-MIN-04",
        name: "Sonora Mini",
        price: 49.0,
        category: "Kids",
        path: "/products/mini",
    },
    Product {
        id: "travel-case",
        sku: "SN-ACC-10",
        name: "Travel Case",
        price: 29.0,
        category: "Accessories",
        path: "/products/travel-case",
    },
    Product {
        id: "ear-tips",
        sku: "SN-ACC-11",
        name: "Memory-Foam Ear Tips",
        price: 15.0,
        category: "Accessories",
        path: "/products/ear-tips",
    },
];
const PRODUCT_INTEREST: [f64; 6] = [0.30, 0.35, 0.20, 0.10, 0.03, 0.02];

/// Page name and title by path.
pub(crate) fn page_meta(path: &str) -> (&'static str, &'static str) {
    match path {
        "/" => ("Home", "Sonora — Headphones that get out of the way"),
        "/collections/headphones" => ("Collection", "All headphones — Sonora"),
        "/products/studio-pro" => ("Product", "Studio Pro · Wireless ANC headphones — Sonora"),
        "/products/aria" => ("Product", "Aria · True-wireless earbuds — Sonora"),
        "/products/move" => ("Product", "Move · Sport earbuds — Sonora"),
        "/products/mini" => ("Product", "Mini · Volume-safe kids' headphones — Sonora"),
        "/products/travel-case" => ("Product", "Travel Case — Sonora"),
        "/products/ear-tips" => ("Product", "Memory-foam ear tips — Sonora"),
        "/lp/fall-launch" => ("Landing Page", "Meet Studio Pro — the quiet is loud"),
        "/lp/quiet-commute" => ("Landing Page", "Silence your commute — Sonora"),
        "/blog/how-anc-works" => ("Blog Post", "How active noise cancelling really works"),
        "/blog/best-headphones-for-commuting" => {
            ("Blog Post", "The best headphones for commuting in 2026")
        }
        "/radio" => ("Landing Page", "Radio listeners save 20% — Sonora"),
        "/tv" => ("Landing Page", "As seen on TV — Sonora Studio Pro"),
        "/print" => ("Landing Page", "SoundMag readers save 10% — Sonora"),
        "/podcast" => ("Landing Page", "The Gear Pod listeners — 15% off"),
        "/cart" => ("Cart", "Your cart — Sonora"),
        "/checkout/information" => ("Checkout", "Checkout · Information — Sonora"),
        "/checkout/shipping" => ("Checkout", "Checkout · Shipping — Sonora"),
        "/checkout/payment" => ("Checkout", "Checkout · Payment — Sonora"),
        "/checkout/thank-you" => ("Order Confirmation", "Thank you for your order ✓"),
        "/account/login" => ("Login", "Sign in — Sonora"),
        "/account/orders" => ("Orders", "Your orders — Sonora"),
        "/account/returns" => ("Returns", "Start a return — Sonora"),
        "/support" => ("Support", "Help centre — Sonora"),
        "/support/pairing" => ("Support Article", "Pairing your Sonora headphones"),
        "/support/contact" => ("Contact Support", "Contact us — Sonora"),
        _ => ("Page", "Sonora"),
    }
}

const BROWSE: &[&str] = &[
    "/collections/headphones",
    "/products/studio-pro",
    "/products/aria",
    "/products/move",
    "/products/mini",
    "/blog/how-anc-works",
    "/blog/best-headphones-for-commuting",
    "/support",
    "/",
];
const BROWSE_WEIGHTS: [f64; 9] = [3.0, 2.0, 2.0, 1.0, 0.6, 0.8, 0.6, 0.4, 1.0];

struct Order {
    id: String,
    total: f64,
    products: Vec<u8>,
    late: bool,
}

#[derive(Default)]
pub(crate) struct State {
    cart: Vec<u8>,
    cart_id: String,
    reminded: bool,
    promo_used: bool,
    orders: Vec<Order>,
    app: Option<u8>,
    app_sessions: u32,
    firmware_done: bool,
    tickets: Vec<(String, Topic)>,
    pending_tickets: Vec<Topic>,
    pending_return: Option<u8>,
}

fn product_of(path: &str) -> Option<u8> {
    PRODUCTS
        .iter()
        .position(|p| p.path == path)
        .map(|i| i as u8)
}

fn product_json(p: u8, cart_id: Option<&str>) -> Value {
    let p = &PRODUCTS[p as usize];
    let mut v = json!({
        "product_id": p.id,
        "sku": p.sku,
        "name": p.name,
        "category": p.category,
        "brand": "Sonora",
        "price": p.price,
        "quantity": 1,
        "currency": "USD",
    });
    if let Some(c) = cart_id {
        v["cart_id"] = Value::from(c);
    }
    v
}

/// The product list of the collection page, with the fewer fields list events carry.
fn list_json() -> Value {
    let items = PRODUCTS[..4].iter().enumerate().map(
        |(i, p)| json!({"product_id": p.id, "name": p.name, "price": p.price, "position": i + 1}),
    );
    Value::Array(items.collect())
}

fn products_json(items: &[u8]) -> Value {
    Value::Array(items.iter().map(|p| product_json(*p, None)).collect())
}

fn promo_pct(code: &str) -> f64 {
    match code {
        "RADIO20" => 0.20,
        "GEARPOD15" | "TV15" => 0.15,
        _ => 0.10,
    }
}

/// How likely the person keeps coming back on their own: less once they own the product.
pub(crate) fn return_bias(sim: &Sim) -> f64 {
    if sim.hp.orders.is_empty() {
        1.0
    } else {
        0.55
    }
}

pub(crate) fn session(sim: &mut Sim, t0: i64, dev: u8, touch: Touch, purpose: Purpose) -> i64 {
    if sim.devices[dev as usize].kind == DeviceKind::App {
        return app_session(sim, t0, dev);
    }
    match purpose {
        Purpose::Support => return support_visit(sim, t0, dev, touch),
        Purpose::Account => return returns_visit(sim, t0, dev, touch),
        _ => {}
    }
    let src = sim.kit.sources[touch.source as usize];
    let mut t = t0;
    sim.land(t, dev, touch);
    if src.promo_code.is_some() && sim.promo.is_none() {
        sim.promo = src.promo_code;
    }
    t = sim.maybe_junk_identify(t, dev);
    let lift = sim.lift(touch);
    let email = purpose == Purpose::Email;
    let p_engage = (0.42
        + 0.3 * sim.intent
        + 0.15 * (lift - 1.0)
        + 0.04 * sim.warmth.min(5.0)
        + if email { 0.15 } else { 0.0 })
    .clamp(0.08, 0.93);
    let engaged = sim.rng.chance(p_engage);
    sim.absorb(touch, engaged);
    if !engaged {
        return t;
    }
    // Both partners of a household sign up for the newsletter on the shared tablet, so
    // one anonymous id meets two user ids.
    if sim.is_tablet(dev) && !sim.known {
        t = newsletter_signup(sim, t, dev);
    } else if sim.is_tablet(dev) && !sim.device_known(dev) {
        t = sim.after(t, 20.0);
        sim.login(t, dev);
    } else if sim.known && !sim.device_known(dev) && sim.rng.chance(0.2) {
        t = sim.after(t, 10.0);
        sim.page(t, dev, "/account/login", None);
        t = sim.after(t, 20.0);
        sim.login(t, dev);
    }
    let landing = src.landings[touch.landing as usize];
    let mut product = product_of(landing);
    if let Some(p) = product {
        t = product_details(sim, t, dev, p);
    } else if landing == "/collections/headphones" {
        t = collection(sim, t, dev);
    }
    if sim.rng.chance(0.12) {
        t = sim.after(t, 15.0);
        let query = *sim.rng.pick(SEARCHES);
        sim.track(
            t,
            Via::Device(dev),
            "Products Searched",
            json!({"query": query}),
        );
    }
    let pages = sim.rng.below(5) + usize::from(sim.intent > 0.4);
    for _ in 0..pages {
        t = sim.after(t, 25.0);
        let mut path = BROWSE[sim.rng.weighted(&BROWSE_WEIGHTS)];
        if path == sim.current_path() {
            path = "/collections/headphones";
        }
        if let Some(p) = product_of(path) {
            t = open_product(sim, t, dev, p, false);
            product = Some(p);
            continue;
        }
        sim.page(t, dev, path, None);
        if path == "/collections/headphones" {
            t = collection(sim, t, dev);
            if sim.rng.chance(0.5) {
                let p = sim.rng.weighted(&PRODUCT_INTEREST) as u8;
                t = open_product(sim, t, dev, p, true);
                product = Some(p);
            }
        }
    }
    if product.is_none() && sim.rng.chance(0.30 + 0.45 * sim.intent) {
        let p = sim.rng.weighted(&PRODUCT_INTEREST) as u8;
        t = sim.after(t, 30.0);
        t = open_product(sim, t, dev, p, false);
        product = Some(p);
    }
    if product.is_some() {
        sim.retarget = true;
        if sim.rng.chance(0.05) {
            // An on-page "did this help?" pulse: better assets leave people happier.
            t = sim.after(t, 40.0);
            sim.survey(
                t,
                Via::Device(dev),
                Survey::Csat,
                "consideration",
                0.55 + 0.25 * lift,
            );
        }
    }
    if !sim.known && !sim.consent && sim.rng.chance(0.12 + 0.12 * sim.intent) {
        t = newsletter_signup(sim, t, dev);
    }
    let score = sim.score(touch);
    let mut added = false;
    if let Some(p) = product {
        if sim.rng.chance((0.01 + 0.13 * score).min(0.5)) {
            if sim.hp.cart.is_empty() {
                sim.hp.cart_id = format!("cart_{}", sim.rng.hex(12));
                sim.hp.reminded = false;
            }
            sim.hp.cart.push(p);
            t = sim.after(t, 20.0);
            let cart_id = sim.hp.cart_id.clone();
            sim.track(
                t,
                Via::Device(dev),
                "Product Added",
                product_json(p, Some(&cart_id)),
            );
            added = true;
        }
    }
    let resume = landing == "/cart" || (sim.rng.chance(0.15) && !sim.hp.cart.is_empty());
    if sim.hp.cart.is_empty() || !(added || resume) {
        return t;
    }
    checkout(sim, t, dev, score, resume && !added)
}

const SEARCHES: &[&str] = &[
    "noise cancelling",
    "earbuds for running",
    "kids headphones",
    "studio pro vs aria",
    "warranty",
    "ohrhörer",
    "écouteurs sans fil",
];

fn collection(sim: &mut Sim, t: i64, dev: u8) -> i64 {
    let mut t = sim.after(t, 3.0);
    sim.track(
        t,
        Via::Device(dev),
        "Product List Viewed",
        json!({"list_id": "headphones", "category": "Headphones", "products": list_json()}),
    );
    if sim.rng.chance(0.35) {
        t = sim.after(t, 12.0);
        let kind = *sim.rng.pick(&["over-ear", "earbuds", "sport", "kids"]);
        sim.track(
            t,
            Via::Device(dev),
            "Product List Filtered",
            json!({"list_id": "headphones", "filters": [{"type": "type", "value": kind}], "sorts": [{"type": "price", "value": "asc"}]}),
        );
    }
    t
}

/// Goes to a product page, from a product list (a click) or not.
fn open_product(sim: &mut Sim, t: i64, dev: u8, p: u8, clicked: bool) -> i64 {
    let mut t = t;
    if clicked {
        t = sim.after(t, 8.0);
        sim.track(
            t,
            Via::Device(dev),
            "Product Clicked",
            product_json(p, None),
        );
    }
    t = sim.after(t, 1.0);
    sim.page(t, dev, PRODUCTS[p as usize].path, None);
    product_details(sim, t, dev, p)
}

/// What happens on a product page: the view, and the product video for headphones.
fn product_details(sim: &mut Sim, t: i64, dev: u8, p: u8) -> i64 {
    let mut t = sim.after(t, 4.0);
    sim.track(t, Via::Device(dev), "Product Viewed", product_json(p, None));
    if p < 2 && sim.rng.chance(0.3) {
        let video = if p == 0 {
            "studio-pro-launch"
        } else {
            "aria-fit-guide"
        };
        t = sim.after(t, 15.0);
        let props = json!({"video_id": video, "content_asset_id": video, "total_length": 95, "position": 0, "sound": 60});
        sim.track(t, Via::Device(dev), "Video Playback Started", props);
        if sim.rng.chance(0.45) {
            t += 95_000 + sim.rng.range_i(0, 4_000);
            let props = json!({"video_id": video, "content_asset_id": video, "total_length": 95, "position": 95});
            sim.track(t, Via::Device(dev), "Video Playback Completed", props);
        }
    }
    t
}

fn newsletter_signup(sim: &mut Sim, t: i64, dev: u8) -> i64 {
    let t = sim.after(t, 15.0);
    let traits = json!({
        "email": sim.name.email,
        "newsletter": true,
        "lead_source": "popup_10off",
        "created_at": iso_ms(t),
    });
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
        json!({"list_id": "newsletter", "source": "popup_10off"}),
    );
    sim.opt_in(t);
    let welcome = sim.kit.hp.welcome;
    for (k, delay) in [(0u8, 2 * MINUTE_MS), (1, 2 * DAY_MS), (2, 5 * DAY_MS)] {
        sim.schedule(
            t + delay,
            SimJob::Email(Touch {
                source: welcome,
                asset: k,
                landing: 0,
            }),
        );
    }
    if sim.promo.is_none() {
        sim.promo = Some("WELCOME10");
    }
    t
}

fn checkout(sim: &mut Sim, mut t: i64, dev: u8, score: f64, resume: bool) -> i64 {
    let cart_id = sim.hp.cart_id.clone();
    let cart = sim.hp.cart.clone();
    let subtotal: f64 = cart.iter().map(|p| PRODUCTS[*p as usize].price).sum();
    t = sim.after(t, 8.0);
    sim.page(t, dev, "/cart", None);
    t = sim.after(t, 2.0);
    sim.track(
        t,
        Via::Device(dev),
        "Cart Viewed",
        json!({"cart_id": cart_id, "products": products_json(&cart)}),
    );
    let mut coupon = None;
    if let Some(code) = sim.promo {
        if !sim.hp.promo_used && sim.rng.chance(0.65) {
            t = sim.after(t, 20.0);
            sim.hp.promo_used = true;
            coupon = Some(code);
            sim.track(
                t,
                Via::Device(dev),
                "Promo Code Applied",
                json!({"promo_code": code, "cart_id": cart_id, "discount_pct": promo_pct(code)}),
            );
        }
    }
    let p_checkout = (0.2 + 0.35 * score + if resume { 0.1 } else { 0.0 }).min(0.8);
    if !sim.rng.chance(p_checkout) {
        abandoned(sim, t);
        return t;
    }
    let discount = coupon.map_or(0.0, |c| (subtotal * promo_pct(c) * 100.0).round() / 100.0);
    let shipping = if subtotal >= 100.0 { 0.0 } else { 5.99 };
    let tax = ((subtotal - discount) * 0.08 * 100.0).round() / 100.0;
    let total = ((subtotal - discount + shipping + tax) * 100.0).round() / 100.0;
    let order_id = format!("ord_{}", sim.rng.hex(12));
    let checkout_id = format!("chk_{}", sim.rng.hex(12));
    t = sim.after(t, 10.0);
    sim.page(t, dev, "/checkout/information", None);
    t = sim.after(t, 2.0);
    let mut started = json!({
        "checkout_id": checkout_id,
        "order_id": order_id,
        "cart_id": cart_id,
        "value": subtotal,
        "revenue": subtotal - discount,
        "currency": "USD",
        "products": products_json(&cart),
    });
    if let Some(c) = coupon {
        started["coupon"] = Value::from(c);
    }
    sim.track(t, Via::Device(dev), "Checkout Started", started);
    // The e-mail field: a new customer is created, a returning one signs in.
    t = sim.after(t, 35.0);
    if !sim.device_known(dev) {
        if sim.known {
            sim.login(t, dev);
        } else {
            let traits = Value::Object(sim.traits(t));
            sim.identify(t, dev, traits);
            if sim.rng.chance(0.35) {
                let at = if sim.rng.chance(0.5) { t } else { t + 3 };
                sim.track(
                    at,
                    Via::Device(dev),
                    "Signed Up",
                    json!({"method": "checkout"}),
                );
            }
            if sim.rng.chance(0.6) {
                sim.opt_in(t);
            }
        }
    }
    let method = if sim.rng.chance(0.8) {
        "standard"
    } else {
        "express"
    };
    t = sim.after(t, 30.0);
    sim.page(t, dev, "/checkout/shipping", None);
    t = sim.after(t, 25.0);
    sim.track(
        t,
        Via::Device(dev),
        "Checkout Step Completed",
        json!({"checkout_id": checkout_id, "step": 1, "shipping_method": method}),
    );
    let kind = sim.devices[dev as usize].kind;
    let p_error = match kind {
        DeviceKind::Mobile => 0.22,
        DeviceKind::Tablet => 0.14,
        _ => 0.08,
    };
    let mut friction = false;
    while sim.rng.chance(if friction { 0.3 } else { p_error }) {
        let (field, message) = *sim.rng.pick(&[
            ("postcode", "Enter a valid postcode"),
            ("card_number", "Card number is invalid"),
            ("address_line1", "Address could not be verified"),
            ("phone", "Phone number format not recognised"),
        ]);
        t = sim.after(t, 20.0);
        sim.track(
            t,
            Via::Device(dev),
            "Checkout Error",
            json!({"checkout_id": checkout_id, "step": 2, "field": field, "message": message}),
        );
        sim.exp.friction += 1;
        friction = true;
    }
    let mobile = sim.devices[dev as usize].is_mobile();
    let p_pay = (if mobile { 0.5 } else { 0.66 })
        * (if friction { 0.6 } else { 1.0 })
        * (0.75 + 0.35 * sim.intent);
    if !sim.rng.chance(p_pay.min(0.95)) {
        abandoned(sim, t);
        return t;
    }
    let payment = *sim
        .rng
        .pick(&["card", "card", "card", "paypal", "apple_pay"]);
    t = sim.after(t, 40.0);
    sim.page(t, dev, "/checkout/payment", None);
    t = sim.after(t, 30.0);
    let pay_props = json!({"checkout_id": checkout_id, "order_id": order_id, "step": 2, "payment_method": payment});
    sim.track(
        t,
        Via::Device(dev),
        "Payment Info Entered",
        pay_props.clone(),
    );
    if sim.rng.chance(0.06) {
        t = sim.after(t, 6.0);
        sim.track(
            t,
            Via::Device(dev),
            "Payment Failed",
            json!({"checkout_id": checkout_id, "order_id": order_id, "reason": "card_declined"}),
        );
        sim.exp.payment_failed = true;
        if !sim.rng.chance(0.55) {
            abandoned(sim, t);
            return t;
        }
        t = sim.after(t, 45.0);
        sim.track(t, Via::Device(dev), "Payment Info Entered", pay_props);
    }
    if !sim.rng.chance(0.92) {
        abandoned(sim, t);
        return t;
    }
    t = sim.after(t, 4.0);
    let mut done = json!({
        "checkout_id": checkout_id,
        "order_id": order_id,
        "affiliation": "sonora-audio.example",
        "total": total,
        "subtotal": subtotal,
        "revenue": ((subtotal - discount) * 100.0).round() / 100.0,
        "shipping": shipping,
        "tax": tax,
        "discount": discount,
        "currency": "USD",
        "products": products_json(&cart),
    });
    if let Some(c) = coupon {
        done["coupon"] = Value::from(c);
    }
    sim.track(t, Via::Device(dev), "Order Completed", done);
    t = sim.after(t, 2.0);
    sim.page(t, dev, "/checkout/thank-you", None);
    sim.commission(t, subtotal - discount);
    sim.hp.orders.push(Order {
        id: order_id,
        total,
        products: cart,
        late: false,
    });
    sim.hp.cart.clear();
    sim.retarget = false;
    // Intent is spent: a buyer needs a new reason to buy again.
    sim.intent *= 0.4;
    if sim.rng.chance(0.28) {
        t = sim.after(t, 20.0);
        let base = if friction { 0.6 } else { 0.92 };
        sim.survey(t, Via::Device(dev), Survey::Ces, "checkout", base);
    }
    let order = (sim.hp.orders.len() - 1) as u8;
    let ship = t + sim.rng.range_i(18 * HOUR_MS, 40 * HOUR_MS);
    sim.schedule(ship, SimJob::Hp(Job::Shipped(order)));
    t
}

fn abandoned(sim: &mut Sim, t: i64) {
    sim.retarget = true;
    if sim.known && !sim.hp.reminded {
        sim.hp.reminded = true;
        sim.schedule(t + HOUR_MS, SimJob::Hp(Job::CartReminder(0)));
        sim.schedule(t + DAY_MS, SimJob::Hp(Job::CartReminder(1)));
    }
}

pub(crate) fn job(sim: &mut Sim, t: i64, job: Job) {
    let c = sim.kit.hp;
    match job {
        Job::CartReminder(asset) => {
            if !sim.hp.cart.is_empty() {
                let touch = Touch {
                    source: c.abandoned,
                    asset,
                    landing: 0,
                };
                sim.send_email(t, touch);
            }
        }
        Job::Shipped(i) => {
            let late = sim.rng.chance(0.12);
            let order = &mut sim.hp.orders[i as usize];
            order.late = late;
            let id = order.id.clone();
            sim.track(
                t,
                Via::Server,
                "Order Shipped",
                json!({"order_id": id, "carrier": "UPS"}),
            );
            let days = if late {
                sim.rng.range(6.0, 11.0)
            } else {
                sim.rng.range(1.5, 4.5)
            };
            sim.schedule(
                t + (days * DAY_MS as f64) as i64,
                SimJob::Hp(Job::Delivered(i)),
            );
            if late && sim.rng.chance(0.45) {
                let at = t + (5.0 * DAY_MS as f64 + sim.rng.f64() * DAY_MS as f64) as i64;
                sim.schedule(at, SimJob::Hp(Job::Ticket(Topic::WhereIsMyOrder)));
            }
        }
        Job::Delivered(i) => {
            let order = &sim.hp.orders[i as usize];
            let (id, late) = (order.id.clone(), order.late);
            let headphones = order.products.iter().any(|p| *p < 4);
            sim.exp.late_delivery |= late;
            sim.track(
                t,
                Via::Server,
                "Order Delivered",
                json!({"order_id": id, "late": late}),
            );
            if headphones && sim.hp.app.is_none() && sim.rng.chance(0.55) {
                let at = t + sim.rng.range_i(2 * HOUR_MS, 2 * DAY_MS);
                sim.schedule(at, SimJob::Hp(Job::AppInstall));
            }
            let defect = sim.rng.chance(0.04);
            if defect {
                sim.exp.product_issue = true;
                if sim.rng.chance(0.5) {
                    let at = t + sim.rng.range_i(DAY_MS, 6 * DAY_MS);
                    sim.schedule(at, SimJob::Hp(Job::Ticket(Topic::Defect)));
                }
            } else if sim.rng.chance(0.08) {
                // Owners with a question: how to pair, when the rest ships, how returns work.
                let topic = *sim
                    .rng
                    .pick(&[Topic::Pairing, Topic::WhereIsMyOrder, Topic::Return]);
                let at = t + sim.rng.range_i(HOUR_MS, 5 * DAY_MS);
                sim.schedule(at, SimJob::Hp(Job::Ticket(topic)));
            }
            let p_return = 0.05 + if late { 0.12 } else { 0.0 } + if defect { 0.5 } else { 0.0 };
            if sim.rng.chance(p_return) && sim.hp.pending_return.is_none() {
                sim.hp.pending_return = Some(i);
                let at = t + sim.rng.range_i(2 * DAY_MS, 10 * DAY_MS);
                let touch = direct(sim, 0);
                sim.schedule(
                    at,
                    SimJob::Visit {
                        touch,
                        device: None,
                        purpose: Purpose::Account,
                    },
                );
            }
            sim.schedule(t + 10 * DAY_MS, SimJob::Hp(Job::ReviewAsk));
            if headphones {
                sim.schedule(t + 21 * DAY_MS, SimJob::Hp(Job::CrossSell));
            }
        }
        Job::AppInstall => {
            if let Some(app) = sim.install_app() {
                sim.hp.app = Some(app);
                let touch = direct(sim, 0);
                sim.schedule(
                    t,
                    SimJob::Visit {
                        touch,
                        device: Some(app),
                        purpose: Purpose::Usage,
                    },
                );
            }
        }
        Job::Ticket(topic) => {
            sim.hp.pending_tickets.push(topic);
            let touch = direct(sim, 0);
            sim.schedule(
                t,
                SimJob::Visit {
                    touch,
                    device: None,
                    purpose: Purpose::Support,
                },
            );
        }
        Job::Resolved(k) => {
            let (id, topic) = sim.hp.tickets[k as usize].clone();
            let hours = sim.rng.lognormal(8.0, 1.2).min(240.0);
            let slow = hours > 48.0;
            sim.exp.support_slow |= slow;
            let at = t + (hours * HOUR_MS as f64) as i64;
            let first_response = (hours * 60.0 * sim.rng.range(0.05, 0.4)).round();
            sim.track(
                at,
                Via::Server,
                "Support Ticket Resolved",
                json!({
                    "ticket_id": id,
                    "topic": topic.name(),
                    "resolution_hours": (hours * 10.0).round() / 10.0,
                    "first_response_minutes": first_response,
                }),
            );
            if sim.rng.chance(0.45) {
                let when = at + sim.rng.range_i(5 * MINUTE_MS, 2 * HOUR_MS);
                let base = 0.95 - hours / 250.0;
                sim.survey(when, Via::Server, Survey::Csat, "support", base);
            }
        }
        Job::Refund(i) => {
            let order = &sim.hp.orders[i as usize];
            let props = json!({"order_id": order.id, "total": order.total, "currency": "USD"});
            sim.track(t, Via::Server, "Order Refunded", props);
        }
        Job::ReviewAsk => {
            let touch = Touch {
                source: c.review,
                asset: 0,
                landing: 0,
            };
            if sim.send_email(t, touch) && sim.rng.chance(0.65) {
                let at = t + sim.rng.range_i(3 * HOUR_MS, 30 * HOUR_MS);
                sim.survey(at, Via::Server, Survey::Nps, "post_purchase", 0.86);
            }
        }
        Job::CrossSell => {
            if sim.consent {
                let touch = sim.touch(c.cross_sell);
                sim.intent = (sim.intent + 0.3).min(1.0);
                sim.send_email(t, touch);
            }
        }
    }
}

fn direct(sim: &mut Sim, landing: u8) -> Touch {
    Touch {
        source: sim.kit.direct,
        asset: 0,
        landing,
    }
}

/// Help centre, then a ticket; the help desk reports it server side.
fn support_visit(sim: &mut Sim, t0: i64, dev: u8, touch: Touch) -> i64 {
    let Some(topic) = sim.hp.pending_tickets.pop() else {
        return t0;
    };
    let mut t = t0;
    sim.page(t, dev, "/support", Some(touch));
    if topic == Topic::Pairing {
        t = sim.after(t, 30.0);
        sim.page(t, dev, "/support/pairing", None);
    }
    t = sim.after(t, 60.0);
    sim.page(t, dev, "/support/contact", None);
    t = sim.after(t, 90.0);
    let id = format!("tkt_{}", sim.rng.hex(10));
    let order = sim.hp.orders.last().map(|o| o.id.clone());
    let channel = *sim.rng.pick(&["chat", "email", "email", "phone"]);
    let message = crate::text::support_message(topic.name(), sim.rng.below(64));
    sim.track(
        t,
        Via::Server,
        "Support Ticket Opened",
        json!({"ticket_id": id, "topic": topic.name(), "channel": channel, "message": message, "order_id": order, "priority": if topic == Topic::Defect { "high" } else { "normal" }}),
    );
    sim.exp.support_contacts += 1;
    sim.hp.tickets.push((id, topic));
    let k = (sim.hp.tickets.len() - 1) as u8;
    sim.schedule(t + MINUTE_MS, SimJob::Hp(Job::Resolved(k)));
    t
}

fn returns_visit(sim: &mut Sim, t0: i64, dev: u8, touch: Touch) -> i64 {
    let Some(i) = sim.hp.pending_return.take() else {
        return t0;
    };
    let mut t = t0;
    sim.page(t, dev, "/account/orders", Some(touch));
    if !sim.device_known(dev) {
        t = sim.after(t, 20.0);
        sim.login(t, dev);
    }
    t = sim.after(t, 30.0);
    sim.page(t, dev, "/account/returns", None);
    let order = &sim.hp.orders[i as usize];
    let reason = if sim.exp.product_issue {
        "defective"
    } else if order.late {
        "arrived_too_late"
    } else {
        *sim.rng
            .pick(&["fit", "sound_quality", "changed_mind", "fit"])
    };
    let props =
        json!({"order_id": order.id, "reason": reason, "products": products_json(&order.products)});
    t = sim.after(t, 45.0);
    sim.track(t, Via::Device(dev), "Return Requested", props);
    sim.exp.returned = true;
    let at = t + sim.rng.range_i(5 * DAY_MS, 10 * DAY_MS);
    sim.schedule(at, SimJob::Hp(Job::Refund(i)));
    if reason == "defective" && sim.rng.chance(0.3) {
        sim.schedule(t + HOUR_MS, SimJob::Hp(Job::Ticket(Topic::Return)));
    }
    t
}

const EQ_PRESETS: &[&str] = &["bass_boost", "podcast", "flat", "classical", "custom"];

/// The companion app: install, sign in and pair the first time, then EQ tweaks and a
/// firmware update on later opens.
fn app_session(sim: &mut Sim, t0: i64, dev: u8) -> i64 {
    let mut t = t0;
    let model = sim
        .hp
        .orders
        .iter()
        .flat_map(|o| o.products.iter())
        .find(|p| **p < 4)
        .map_or("Sonora Aria", |p| PRODUCTS[*p as usize].name);
    if sim.hp.app_sessions == 0 {
        sim.track(
            t,
            Via::Device(dev),
            "Application Installed",
            json!({"version": "3.4.1", "build": "341"}),
        );
        t = sim.after(t, 2.0);
        sim.track(
            t,
            Via::Device(dev),
            "Application Opened",
            json!({"from_background": false, "version": "3.4.1"}),
        );
        t = sim.after(t, 40.0);
        sim.login(t, dev);
        t = sim.after(t, 10.0);
        sim.screen(t, dev, "Pair Headphones", json!({"model": model}));
        if sim.rng.chance(0.12) {
            t = sim.after(t, 45.0);
            sim.track(
                t,
                Via::Device(dev),
                "Pairing Failed",
                json!({"model": model, "error": "bluetooth_timeout"}),
            );
            sim.exp.pairing_issue = true;
            if sim.rng.chance(0.35) {
                sim.schedule(t + HOUR_MS, SimJob::Hp(Job::Ticket(Topic::Pairing)));
            }
            if !sim.rng.chance(0.8) {
                sim.hp.app_sessions += 1;
                return t;
            }
        }
        t = sim.after(t, 30.0);
        sim.track(
            t,
            Via::Device(dev),
            "Device Paired",
            json!({"model": model, "firmware": "2.1.0"}),
        );
    } else {
        let background = sim.rng.chance(0.6);
        sim.track(
            t,
            Via::Device(dev),
            "Application Opened",
            json!({"from_background": background, "version": "3.4.1"}),
        );
        t = sim.after(t, 3.0);
        sim.screen(t, dev, "Home", json!({"model": model}));
        for _ in 0..1 + sim.rng.below(3) {
            t = sim.after(t, 20.0);
            if !sim.hp.firmware_done && sim.rng.chance(0.3) {
                sim.screen(
                    t,
                    dev,
                    "Firmware Update",
                    json!({"from": "2.1.0", "to": "2.2.0"}),
                );
                t = sim.after(t, 120.0);
                sim.track(
                    t,
                    Via::Device(dev),
                    "Firmware Updated",
                    json!({"model": model, "from": "2.1.0", "to": "2.2.0"}),
                );
                sim.hp.firmware_done = true;
            } else {
                sim.screen(t, dev, "Equalizer", json!({"model": model}));
                t = sim.after(t, 15.0);
                let preset = *sim.rng.pick(EQ_PRESETS);
                sim.track(
                    t,
                    Via::Device(dev),
                    "EQ Preset Changed",
                    json!({"model": model, "preset": preset}),
                );
            }
        }
    }
    if sim.hp.app_sessions == 2 && sim.rng.chance(0.8) {
        // The in-app prompt reaches owners the review e-mail missed.
        t = sim.after(t, 20.0);
        sim.survey(t, Via::Device(dev), Survey::Nps, "post_purchase", 0.86);
    }
    sim.hp.app_sessions += 1;
    if sim.rng.chance(0.8) {
        let next = t + (sim.rng.exp(5.0) * DAY_MS as f64) as i64 + HOUR_MS;
        let touch = direct(sim, 0);
        sim.schedule(
            next,
            SimJob::Visit {
                touch,
                device: Some(dev),
                purpose: Purpose::Usage,
            },
        );
    }
    t
}
