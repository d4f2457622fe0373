//! Turns a simulated [`Draft`] into the JSON an SDK sends: analytics.js in browsers,
//! analytics-swift or analytics-kotlin in the app, analytics-python on the backends.
//!
//! This is the only place that knows the wire shape: top-level ids and times, the
//! `context` each library fills in (page, campaign from the URL's UTM tags, user agent,
//! IP, locale), and where properties, traits, `previousId` and `groupId` go.

use serde_json::{json, Map, Value};

use crate::clock::iso_ms;
use crate::journey::{Draft, Kind, Kit, PageView, Payload, Person, Via, NO_PAGE};
use crate::people::{DevUser, DeviceKind};
use crate::rng::uuid;
use crate::Brand;

/// The message for `draft` with its `payload` (taken out of the draft, or a copy when a
/// retry will need it again), sent `retry_ms` after the original (0 for the original).
pub(crate) fn render(
    kit: &Kit,
    person: &Person,
    draft: &Draft,
    payload: Payload,
    retry_ms: i64,
) -> Value {
    let mut m = Map::new();
    let kind = match draft.kind {
        Kind::Track => "track",
        Kind::Page => "page",
        Kind::Screen => "screen",
        Kind::Identify => "identify",
        Kind::Alias => "alias",
        Kind::Group => "group",
    };
    m.insert("type".into(), Value::from(kind));
    m.insert(
        "messageId".into(),
        Value::from(uuid(draft.id.0, draft.id.1)),
    );
    m.insert("timestamp".into(), Value::from(iso_ms(draft.ts)));
    m.insert("sentAt".into(), Value::from(iso_ms(draft.sent + retry_ms)));
    let user = match draft.user {
        DevUser::Anonymous => None,
        DevUser::Junk(j) => Some(j),
        DevUser::Known => Some(person.user_id.as_str()),
    };
    if let Some(u) = user {
        m.insert("userId".into(), Value::from(u));
    }
    let page = person
        .pages
        .get(draft.page as usize)
        .filter(|_| draft.page != NO_PAGE);
    match draft.kind {
        Kind::Track => {
            m.insert("event".into(), Value::from(draft.name));
        }
        Kind::Page | Kind::Screen => {
            m.insert("name".into(), Value::from(draft.name));
        }
        _ => {}
    }
    match payload {
        Payload::Properties(p) => {
            m.insert("properties".into(), p);
        }
        Payload::Page => {
            if let Some(p) = page {
                m.insert("properties".into(), page_json(p));
            }
        }
        Payload::Traits(t) => {
            m.insert("traits".into(), t);
        }
        Payload::PreviousId(previous) => {
            m.insert("previousId".into(), Value::from(previous));
        }
        Payload::Group(id, traits) => {
            m.insert("groupId".into(), Value::from(id));
            m.insert("traits".into(), traits);
        }
    }
    let context = match draft.via {
        Via::Server => {
            let mut c = Map::new();
            c.insert("library".into(), kit.lib_python.clone());
            Value::Object(c)
        }
        Via::Device(d) => {
            let dev = &person.devices[d as usize];
            m.insert("anonymousId".into(), Value::from(dev.anon.as_str()));
            if dev.kind == DeviceKind::App {
                app_context(kit.brand, person, dev.ios, draft.ip)
            } else {
                browser_context(kit, person, page, dev.user_agent, draft.ip)
            }
        }
    };
    m.insert("context".into(), context);
    Value::Object(m)
}

fn page_json(p: &PageView) -> Value {
    json!({
        "path": p.path,
        "referrer": p.referrer,
        "search": p.search,
        "title": p.title,
        "url": p.url,
    })
}

fn locale(person: &Person) -> (&'static str, &'static str) {
    person.locale.map_or(("en-US", "UTC"), |l| (l.tag, l.tz))
}

fn browser_context(
    kit: &Kit,
    person: &Person,
    page: Option<&PageView>,
    user_agent: &str,
    ip: u16,
) -> Value {
    let mut c = Map::new();
    c.insert("library".into(), kit.lib_js.clone());
    if let Some(p) = page {
        c.insert("page".into(), page_json(p));
        if let Some(touch) = p.campaign {
            let s = &kit.sources[touch.source as usize];
            let mut camp = Map::new();
            camp.insert("source".into(), Value::from(s.source));
            camp.insert("medium".into(), Value::from(s.medium));
            camp.insert("name".into(), Value::from(s.campaign));
            if let Some(a) = s.assets.get(touch.asset as usize) {
                camp.insert("content".into(), Value::from(a.id));
            }
            if !s.term.is_empty() {
                camp.insert("term".into(), Value::from(s.term));
            }
            c.insert("campaign".into(), Value::Object(camp));
        }
    }
    let (tag, tz) = locale(person);
    c.insert("userAgent".into(), Value::from(user_agent));
    c.insert("ip".into(), Value::from(person.ips[ip as usize].as_str()));
    c.insert("locale".into(), Value::from(tag));
    c.insert("timezone".into(), Value::from(tz));
    Value::Object(c)
}

fn app_context(brand: Brand, person: &Person, ios: bool, ip: u16) -> Value {
    let (app, namespace) = match brand {
        Brand::Headphones => ("Sonora", "com.sonora.companion"),
        Brand::Subscription => ("Fieldnote", "com.fieldnote.app"),
    };
    let (library, device, os) = if ios {
        (
            json!({"name": "analytics-swift", "version": "1.6.1"}),
            json!({"type": "ios", "manufacturer": "Apple", "model": "iPhone15,2"}),
            json!({"name": "iOS", "version": "17.6"}),
        )
    } else {
        (
            json!({"name": "analytics-kotlin", "version": "1.16.3"}),
            json!({"type": "android", "manufacturer": "Google", "model": "Pixel 8"}),
            json!({"name": "Android", "version": "14"}),
        )
    };
    let (tag, tz) = locale(person);
    json!({
        "library": library,
        "app": {"name": app, "version": "3.4.1", "build": "341", "namespace": namespace},
        "device": device,
        "os": os,
        "screen": {"width": 393, "height": 852},
        "network": {"wifi": ip == 0},
        "ip": person.ips[ip as usize],
        "locale": tag,
        "timezone": tz,
    })
}
