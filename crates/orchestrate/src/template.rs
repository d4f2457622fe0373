//! Message templates (minijinja) and the link rewriting of emails.
//!
//! A template sees `traits` (the person's, as the profile merges them), `event` (the
//! triggering event's properties), `person.id`, `journey`, `step`, `variant` and, in
//! emails, `unsubscribe_url`. HTML bodies escape every value by default (write
//! `{{ x|safe }}` to opt out); webhook bodies escape values as JSON; subjects and text
//! bodies are not escaped. Undefined values render empty: a missing trait must not stop a
//! send.
//!
//! After rendering, every `http(s)://` link of an email (`href` attributes in HTML, bare
//! URLs in text) gets the journey's UTM parameters and is handed to the caller's link
//! tracker, which returns the tracked `/r/{token}` URL (or `None` for a destination the
//! project has not registered: such a link is left as it is and reported).
//!
//! Pure: no IO.

use std::collections::HashSet;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::Value;

/// Rendered output at most; a template that renders more fails the send.
pub const RENDERED_BYTES_MAX: usize = 1 << 20;
/// Links rewritten per message at most.
pub const LINKS_MAX: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Html,
    Json,
}

fn env(kind: Kind) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(move |_| match kind {
        Kind::Text => AutoEscape::None,
        Kind::Html => AutoEscape::Html,
        Kind::Json => AutoEscape::Json,
    });
    env.set_fuel(Some(200_000));
    env
}

/// Whether a template compiles; the error says where it does not.
pub fn check(text: &str, kind: Kind) -> Result<(), String> {
    let env = env(kind);
    env.template_from_str(text)
        .map(|_| ())
        .map_err(|e| describe(&e))
}

fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(l) => format!(
            "template error on line {l}: {}",
            e.detail().unwrap_or(&e.to_string())
        ),
        None => format!("template error: {}", e.detail().unwrap_or(&e.to_string())),
    }
}

/// The `traits.X` keys a template reads.
pub fn trait_keys(text: &str) -> HashSet<String> {
    let env = env(Kind::Text);
    let Ok(t) = env.template_from_str(text) else {
        return HashSet::new();
    };
    t.undeclared_variables(true)
        .into_iter()
        .filter_map(|v| {
            v.strip_prefix("traits.")
                .map(|k| k.split('.').next().unwrap_or(k).to_string())
        })
        .collect()
}

/// Renders one template over a context.
pub fn render(text: &str, kind: Kind, ctx: &Value) -> Result<String, String> {
    let env = env(kind);
    let t = env.template_from_str(text).map_err(|e| describe(&e))?;
    let out = t.render(ctx).map_err(|e| describe(&e))?;
    if out.len() > RENDERED_BYTES_MAX {
        return Err(format!(
            "the rendered template is longer than {RENDERED_BYTES_MAX} bytes"
        ));
    }
    Ok(out)
}

/// UTM parameters every tracked link of a send carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Utm {
    pub source: String,
    pub medium: String,
    pub campaign: String,
    pub content: String,
}

impl Utm {
    /// `destination` with the UTM parameters it does not have yet (before any fragment).
    pub fn apply(&self, destination: &str) -> String {
        let (base, fragment) = match destination.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (destination, None),
        };
        let present: HashSet<&str> = base
            .split_once('?')
            .map(|(_, q)| q.split('&').filter_map(|kv| kv.split('=').next()).collect())
            .unwrap_or_default();
        let mut out = base.to_string();
        for (k, v) in [
            ("utm_source", &self.source),
            ("utm_medium", &self.medium),
            ("utm_campaign", &self.campaign),
            ("utm_content", &self.content),
        ] {
            if present.contains(k) {
                continue;
            }
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(k);
            out.push('=');
            out.push_str(&url_encode(v));
        }
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        out
    }
}

/// Percent-encodes a query value (unreserved characters and `/` stay).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What link rewriting did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub text: String,
    pub tracked: usize,
    /// Destinations left as written: not registered for the project, or past [`LINKS_MAX`].
    pub untracked: Vec<String>,
}

/// Rewrites the `href` links of an HTML body.
pub fn rewrite_html(
    html: &str,
    utm: &Utm,
    track: &mut dyn FnMut(&str) -> Option<String>,
) -> Rewritten {
    let mut out = Rewritten::default();
    let mut rest = html;
    let mut text = String::with_capacity(html.len() + 256);
    loop {
        let Some(at) = find_href(rest) else {
            text.push_str(rest);
            break;
        };
        let (before, after) = rest.split_at(at.value_start);
        text.push_str(before);
        let value = &after[..at.value_len];
        let url = html_unescape(value);
        let is_web = url.starts_with("http://") || url.starts_with("https://");
        if is_web && out.tracked < LINKS_MAX {
            match track(&utm.apply(&url)) {
                Some(t) => {
                    out.tracked += 1;
                    text.push_str(&html_escape(&t));
                }
                None => {
                    out.untracked.push(url.clone());
                    text.push_str(value);
                }
            }
        } else {
            if is_web {
                out.untracked.push(url.clone());
            }
            text.push_str(value);
        }
        rest = &after[at.value_len..];
    }
    out.text = text;
    out
}

struct Href {
    value_start: usize,
    value_len: usize,
}

/// The next quoted `href=` value.
fn find_href(s: &str) -> Option<Href> {
    let lower = s.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("href") {
        let mut j = from + i + 4;
        let b = lower.as_bytes();
        // Only an attribute: preceded by whitespace.
        let attr = from + i > 0 && b[from + i - 1].is_ascii_whitespace();
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if attr && j < b.len() && b[j] == b'=' {
            j += 1;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
                let q = b[j];
                let start = j + 1;
                if let Some(len) = b[start..].iter().position(|&c| c == q) {
                    return Some(Href {
                        value_start: start,
                        value_len: len,
                    });
                }
            }
        }
        from = from + i + 4;
    }
    None
}

/// Rewrites the bare `http(s)://` URLs of a text body.
pub fn rewrite_text(
    text: &str,
    utm: &Utm,
    track: &mut dyn FnMut(&str) -> Option<String>,
) -> Rewritten {
    let mut out = Rewritten::default();
    let mut result = String::with_capacity(text.len() + 256);
    let mut rest = text;
    loop {
        let next = [rest.find("http://"), rest.find("https://")]
            .into_iter()
            .flatten()
            .min();
        let Some(at) = next else {
            result.push_str(rest);
            break;
        };
        result.push_str(&rest[..at]);
        let tail = &rest[at..];
        let mut end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\'' | ')' | ']'))
            .unwrap_or(tail.len());
        // A sentence's full stop or comma is no part of the URL.
        while end > 0
            && matches!(
                tail.as_bytes()[end - 1],
                b'.' | b',' | b';' | b':' | b'!' | b'?'
            )
        {
            end -= 1;
        }
        let url = &tail[..end];
        if out.tracked < LINKS_MAX {
            match track(&utm.apply(url)) {
                Some(t) => {
                    out.tracked += 1;
                    result.push_str(&t);
                }
                None => {
                    out.untracked.push(url.to_string());
                    result.push_str(url);
                }
            }
        } else {
            out.untracked.push(url.to_string());
            result.push_str(url);
        }
        rest = &tail[end..];
    }
    out.text = result;
    out
}

/// The open pixel, before `</body>` when there is one.
pub fn add_pixel(html: &str, pixel_url: &str) -> String {
    let img = format!(
        "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:none\">",
        html_escape(pixel_url)
    );
    match html.to_ascii_lowercase().rfind("</body>") {
        Some(i) => format!("{}{img}{}", &html[..i], &html[i..]),
        None => format!("{html}{img}"),
    }
}

pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#x2f;", "/")
        .replace("&#x2F;", "/")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn utm() -> Utm {
        Utm {
            source: "throughline".into(),
            medium: "email".into(),
            campaign: "welcome".into(),
            content: "welcome/hello/a".into(),
        }
    }

    #[test]
    fn html_values_are_escaped_and_json_bodies_stay_json() {
        let ctx = json!({"traits": {"name": "<b>Ann & \"Bo\"</b>"}, "event": {"plan": "pro"}});
        assert_eq!(
            render("Hi {{ traits.name }}", Kind::Html, &ctx).unwrap(),
            "Hi &lt;b&gt;Ann &amp; &quot;Bo&quot;&lt;&#x2f;b&gt;"
        );
        assert_eq!(
            render("Hi {{ traits.name }}", Kind::Text, &ctx).unwrap(),
            "Hi <b>Ann & \"Bo\"</b>"
        );
        let body = render(
            "{\"name\": {{ traits.name }}, \"x\": {{ traits.missing }}}",
            Kind::Json,
            &ctx,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["name"], "<b>Ann & \"Bo\"</b>");
        // Missing values render empty rather than failing the send.
        assert_eq!(
            render("[{{ traits.nope }}]", Kind::Text, &ctx).unwrap(),
            "[]"
        );
        assert!(check("{% if %}", Kind::Html)
            .unwrap_err()
            .contains("line 1"));
        assert_eq!(
            trait_keys(
                "{{ traits.first_name }} {{ event.x }} {% if traits.plan == 'pro' %}{% endif %}"
            ),
            ["first_name".to_string(), "plan".to_string()]
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn every_link_gets_utm_and_a_tracked_url_unless_unregistered() {
        let html = r#"<a class="x" href="https://shop.example/p?id=1&amp;c=2#top">A</a> <a href='https://evil.example/'>B</a> <a href="mailto:x@y">C</a> data-href="https://no""#;
        let mut seen = Vec::new();
        let r = rewrite_html(html, &utm(), &mut |u| {
            seen.push(u.to_string());
            u.starts_with("https://shop.example/")
                .then(|| format!("https://t.example/r/{}", seen.len()))
        });
        assert_eq!(
            seen,
            [
                "https://shop.example/p?id=1&c=2&utm_source=throughline&utm_medium=email&utm_campaign=welcome&utm_content=welcome/hello/a#top",
                "https://evil.example/?utm_source=throughline&utm_medium=email&utm_campaign=welcome&utm_content=welcome/hello/a"
            ]
        );
        assert_eq!(r.tracked, 1);
        assert_eq!(r.untracked, ["https://evil.example/"]);
        assert!(
            r.text
                .starts_with(r#"<a class="x" href="https://t.example/r/1">A</a>"#),
            "{}",
            r.text
        );
        assert!(
            r.text.contains("href=\"mailto:x@y\"") && r.text.contains("data-href=\"https://no\"")
        );

        let t = rewrite_text(
            "See https://shop.example/a?utm_source=news. Or (https://shop.example/b)",
            &utm(),
            &mut |u| Some(format!("<{u}>")),
        );
        assert_eq!(
            t.text,
            "See <https://shop.example/a?utm_source=news&utm_medium=email&utm_campaign=welcome&utm_content=welcome/hello/a>. Or (<https://shop.example/b?utm_source=throughline&utm_medium=email&utm_campaign=welcome&utm_content=welcome/hello/a>)"
        );
        assert_eq!(
            add_pixel("<html><body>x</BODY></html>", "https://t/o/a.gif"),
            "<html><body>x<img src=\"https://t/o/a.gif\" width=\"1\" height=\"1\" alt=\"\" style=\"display:none\"></BODY></html>"
        );
    }
}
