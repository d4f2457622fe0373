//! Just enough URL parsing to pull path, query parameters and host out of page URLs and
//! referrers. Analytics URLs are often malformed, so this never fails: it returns what it
//! could find.

/// The parts of a URL that analyses use.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ParsedUrl<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
}

impl<'a> ParsedUrl<'a> {
    /// The first value of query parameter `name`, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        self.pairs()
            .find_map(|(k, v)| (k == name).then(|| percent_decode(v)))
    }

    /// The query's `(name, raw value)` pairs in order, not decoded.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.query
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
    }

    /// [`ParsedUrl::param`] for each of `names` at once, in one pass over the query.
    pub fn params<const N: usize>(&self, names: [&str; N]) -> [Option<String>; N] {
        let mut raw: [Option<&str>; N] = [None; N];
        let mut left = N;
        for (k, v) in self.pairs() {
            if let Some(i) = names.iter().position(|n| *n == k) {
                if raw[i].is_none() {
                    raw[i] = Some(v);
                    left -= 1;
                    if left == 0 {
                        break;
                    }
                }
            }
        }
        raw.map(|v| v.map(percent_decode))
    }
}

pub fn parse_url(url: &str) -> ParsedUrl<'_> {
    let url = url.split('#').next().unwrap_or_default();
    let (rest, query) = url.split_once('?').unwrap_or((url, ""));
    let (host, path) = match rest.split_once("://") {
        Some((_, after)) => match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, "/"),
        },
        None => ("", rest),
    };
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(':').next().unwrap_or(host);
    ParsedUrl { host, path, query }
}

/// Decodes `%XX` escapes and `+` as space; invalid escapes are kept as written.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_host_path_query() {
        let u = parse_url("https://user@shop.example:8443/p/x?utm_source=a%20b&gclid=1#top");
        assert_eq!(u.host, "shop.example");
        assert_eq!(u.path, "/p/x");
        assert_eq!(u.param("utm_source").as_deref(), Some("a b"));
        assert_eq!(u.param("gclid").as_deref(), Some("1"));
        assert_eq!(u.param("missing"), None);
        let [source, gclid, missing] = u.params(["utm_source", "gclid", "missing"]);
        assert_eq!(source.as_deref(), Some("a b"));
        assert_eq!(gclid.as_deref(), Some("1"));
        assert_eq!(missing, None);
        let twice = parse_url("https://x.example/?a=1&a=2&b");
        assert_eq!(
            twice.params(["a", "b"]),
            [Some("1".into()), Some(String::new())]
        );
        assert_eq!(parse_url("https://a.example").path, "/");
        assert_eq!(parse_url("/only/path?x=1").path, "/only/path");
    }

    #[test]
    fn decoding_keeps_broken_escapes() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz+x"), "%zz x");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }
}
