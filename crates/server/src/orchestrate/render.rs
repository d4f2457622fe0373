//! From a delivery the machine asked for to the bytes a worker sends: templates rendered
//! over the person's traits and the trigger's properties, links rewritten to signed
//! tracked links with UTM parameters, the open pixel and the one-click unsubscribe URL,
//! the idempotency key as `webhook-id` and `Message-ID`.
//!
//! Rendering is a pure function of the journey, the delivery and the project's secret and
//! link registry, so a send handed out again after a crash carries the same content.

use serde_json::{json, Value};
use throughline_orchestrate::journey::{ActionKind, StepKind};
use throughline_orchestrate::machine::{Delivery, Machine};
use throughline_orchestrate::template::{self, Kind, Utm};
use throughline_token::Claims;

use super::deliver::{Email, What};
use super::links::Registered;
use super::{Ctx, ProjectRuntime};

pub fn job(m: &Machine, d: &Delivery, rt: &ProjectRuntime, ctx: &Ctx) -> Result<What, String> {
    let (_, journey) = m
        .journey(&d.journey)
        .ok_or_else(|| format!("journey {:?} is gone", d.journey))?;
    let step = journey
        .steps
        .iter()
        .find(|s| s.id == d.step)
        .ok_or_else(|| format!("step {:?} is gone", d.step))?;
    let StepKind::Action { action, .. } = &step.kind else {
        return Err(format!("step {:?} sends nothing", d.step));
    };
    let sign = |kind: &str, nonce: String, data: &[(&str, &str)]| -> Result<String, String> {
        let mut c = Claims::new(kind, &rt.name, &d.person, d.at);
        c.nonce = nonce;
        for (k, v) in data {
            c.data.insert(k.to_string(), v.to_string());
        }
        throughline_token::sign(&rt.secret, &c).map_err(|e| e.to_string())
    };
    let base = [
        ("j", d.journey.as_str()),
        ("s", d.step.as_str()),
        ("v", d.variant.as_str()),
        ("c", d.channel.as_str()),
    ];
    let unsubscribe_url = format!(
        "{}/u/{}",
        ctx.public_url,
        sign("unsubscribe", d.id.clone(), &base)?
    );
    let context = json!({
        "traits": d.facts.traits,
        "event": d.trigger,
        "person": {"id": d.person},
        "journey": d.journey,
        "step": d.step,
        "variant": d.variant,
        "unsubscribe_url": unsubscribe_url,
    });
    match &action.what {
        ActionKind::Email { to, from, variants } => {
            let v = variants
                .iter()
                .find(|v| v.name == d.variant)
                .or(variants.first())
                .ok_or("an email step without content")?;
            let to = match to {
                Some(t) => template::render(t, Kind::Text, &context)?,
                None => d
                    .facts
                    .traits
                    .get("email")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            };
            if !to.contains('@') {
                return Err("the person has no email address".into());
            }
            let from = from
                .clone()
                .or_else(|| ctx.smtp_from.clone())
                .ok_or("no `from` on the step and no orchestrate.smtp.from")?;
            let domain = from
                .rsplit('@')
                .next()
                .unwrap_or("throughline")
                .trim_end_matches('>')
                .to_string();
            let utm = Utm {
                source: journey.utm_source.clone(),
                medium: "email".into(),
                campaign: d.journey.clone(),
                content: format!("{}/{}/{}", d.journey, d.step, d.variant),
            };
            let registered = Registered::load(rt.store.dir());
            let mut n = 0u32;
            let mut track = |dest: &str| -> Option<String> {
                if !registered.allows(dest) {
                    return None;
                }
                n += 1;
                let mut data = base.to_vec();
                data.push(("d", dest));
                let t = sign("click", format!("{}-{n}", d.id), &data).ok()?;
                Some(format!("{}/r/{t}", ctx.public_url))
            };
            let subject = template::render(&v.subject, Kind::Text, &context)?;
            let html = match &v.html {
                Some(h) => {
                    let body = template::render(h, Kind::Html, &context)?;
                    let r = template::rewrite_html(&body, &utm, &mut track);
                    let open = format!(
                        "{}/o/{}.gif",
                        ctx.public_url,
                        sign("open", d.id.clone(), &base)?
                    );
                    Some(template::add_pixel(&r.text, &open))
                }
                None => None,
            };
            let text = match &v.text {
                Some(t) => {
                    let body = template::render(t, Kind::Text, &context)?;
                    Some(template::rewrite_text(&body, &utm, &mut track).text)
                }
                None => None,
            };
            Ok(What::Email(Email {
                from,
                to,
                subject,
                html,
                text,
                message_id: format!("<{}@{domain}>", d.id),
                unsubscribe_url,
                key: d.key.clone(),
            }))
        }
        ActionKind::Webhook { url, secret, body } => {
            let url = template::render(url, Kind::Text, &context)?;
            let body = match body {
                Some(b) => template::render(b, Kind::Json, &context)?,
                None => default_body(d, "journey.step").to_string(),
            };
            let secret = match secret {
                Some(s) => throughline_orchestrate::webhook::decode_secret(s)?,
                None => rt.webhook_secret.clone(),
            };
            Ok(What::Webhook {
                url,
                id: d.id.clone(),
                body: body.into_bytes(),
                secret,
            })
        }
        ActionKind::Export {
            audience,
            url,
            secret,
        } => match url {
            Some(url) => {
                let mut body = default_body(d, "audience.member.added");
                body["audience"] = json!(audience);
                let secret = match secret {
                    Some(s) => throughline_orchestrate::webhook::decode_secret(s)?,
                    None => rt.webhook_secret.clone(),
                };
                Ok(What::Webhook {
                    url: url.clone(),
                    id: d.id.clone(),
                    body: body.to_string().into_bytes(),
                    secret,
                })
            }
            None => {
                let cell = |s: &str| {
                    if s.contains([',', '"', '\n', '\r']) {
                        format!("\"{}\"", s.replace('"', "\"\""))
                    } else {
                        s.to_string()
                    }
                };
                let email = d
                    .facts
                    .traits
                    .get("email")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let line = format!(
                    "{},{},{},{},{},{}\n",
                    throughline_model::format_ms(throughline_store::now_ms()),
                    cell(&d.key),
                    cell(&d.person),
                    cell(email),
                    cell(&d.facts.ids.join(";")),
                    cell(&d.journey),
                );
                Ok(What::Csv {
                    path: rt
                        .store
                        .dir()
                        .join("exports")
                        .join(format!("{audience}.csv")),
                    header: "exported_at,idempotency_key,person_id,email,ids,journey\n".into(),
                    line,
                    key: d.key.clone(),
                })
            }
        },
    }
}

fn default_body(d: &Delivery, kind: &str) -> Value {
    json!({
        "type": kind,
        "idempotency_key": d.key,
        "journey": d.journey,
        "step": d.step,
        "variant": d.variant,
        "entry": d.entry,
        "channel": d.channel,
        "person": {"id": d.person, "ids": d.facts.ids, "traits": d.facts.traits},
        "trigger": d.trigger,
    })
}
