//! Just enough URL handling for classification: the host of a referrer, the path and query
//! of a landing page, query parameters compared or decoded on demand. Analytics URLs are
//! often malformed, so nothing here fails; it returns what it could find, as slices of the
//! input.

/// The parts of a URL classification reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct UrlParts<'a> {
    /// As written: may hold uppercase letters and `www.`.
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
}

pub(crate) fn parse(url: &str) -> UrlParts<'_> {
    // Byte scans rather than `split`/`find`: this runs twice per touch, and the pattern
    // searchers cost more to set up than these short strings cost to scan.
    let url = url.trim();
    let url = &url[..position(url, b'#').unwrap_or(url.len())];
    let (rest, query) = match position(url, b'?') {
        Some(q) => (&url[..q], &url[q + 1..]),
        None => (url, ""),
    };
    let scheme_end = rest.bytes().position(|b| b == b':' || b == b'/');
    let (authority, path) = match scheme_end {
        Some(colon) if rest[colon..].starts_with("://") => split_authority(&rest[colon + 3..]),
        // A path ("/radio") or a bare host ("www.google.com/"), as some referrers are sent.
        _ if rest.starts_with('/') => ("", rest),
        _ => match split_authority(rest) {
            (host, path) if looks_like_host(host) => (host, path),
            // "about:blank", "localhost": not a referrer anyone can be credited for.
            _ => ("", ""),
        },
    };
    let host = match authority.bytes().rposition(|b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    let host = &host[..position(host, b':').unwrap_or(host.len())];
    let host = host.strip_suffix('.').unwrap_or(host);
    UrlParts { host, path, query }
}

fn position(text: &str, byte: u8) -> Option<usize> {
    text.bytes().position(|b| b == byte)
}

fn looks_like_host(text: &str) -> bool {
    text.contains('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
}

fn split_authority(after_scheme: &str) -> (&str, &str) {
    match position(after_scheme, b'/') {
        Some(i) => (&after_scheme[..i], &after_scheme[i..]),
        None => (after_scheme, "/"),
    }
}

/// The `(key, raw value)` pairs of a query string, in order; a key without `=` has value "".
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = query;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let end = position(rest, b'&').unwrap_or(rest.len());
        let pair = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        if !pair.is_empty() {
            return Some(match position(pair, b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, ""),
            });
        }
    })
}

/// The first non-empty value of parameter `name` (ASCII case ignored), percent-decoded.
pub(crate) fn param(query: &str, name: &str) -> Option<String> {
    query_pairs(query)
        .find(|(key, value)| key.eq_ignore_ascii_case(name) && !value.is_empty())
        .map(|(_, value)| QueryValue(value).decode())
        .filter(|value| !value.trim().is_empty())
}

/// A raw (still percent-encoded) query value.
pub(crate) struct QueryValue<'a>(pub &'a str);

impl QueryValue<'_> {
    /// The decoded bytes: `%XX` escapes and `+` as space; a broken escape is kept as written.
    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        let raw = self.0.as_bytes();
        let mut i = 0;
        std::iter::from_fn(move || {
            let b = *raw.get(i)?;
            i += 1;
            Some(match b {
                b'+' => b' ',
                b'%' => match (raw.get(i).and_then(hex), raw.get(i + 1).and_then(hex)) {
                    (Some(h), Some(l)) => {
                        i += 2;
                        h * 16 + l
                    }
                    _ => b'%',
                },
                b => b,
            })
        })
    }

    /// The decoded value equals `lower` (already lowercase), ignoring ASCII case.
    pub(crate) fn eq_ci(&self, lower: &str) -> bool {
        let mut decoded = self.bytes();
        lower
            .bytes()
            .all(|want| decoded.next().map(|b| b.to_ascii_lowercase()) == Some(want))
            && decoded.next().is_none()
    }

    pub(crate) fn decode(&self) -> String {
        String::from_utf8_lossy(&self.bytes().collect::<Vec<u8>>()).into_owned()
    }
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_host_path_query() {
        let u = parse("https://user@WWW.Shop.example:8443/p/x?utm_source=a%20b&gclid=1#top");
        assert_eq!(u.host, "WWW.Shop.example");
        assert_eq!(u.path, "/p/x");
        assert_eq!(u.query, "utm_source=a%20b&gclid=1");
        assert_eq!(parse("https://a.example").path, "/");
        assert_eq!(parse("https://a.example.?q").host, "a.example");
        assert_eq!(
            parse("/radio?x=1"),
            UrlParts {
                host: "",
                path: "/radio",
                query: "x=1"
            }
        );
        assert_eq!(parse("www.google.com/search").host, "www.google.com");
        assert_eq!(
            parse("android-app://com.google.android.gm/").host,
            "com.google.android.gm"
        );
        assert_eq!(parse("about:blank").host, "");
        assert_eq!(parse("").host, "");
    }

    #[test]
    fn params_are_decoded_and_found_without_regard_to_case() {
        let q = "UTM_Source=news%20letter&empty=&utm_medium=e+mail&bad=100%";
        assert_eq!(param(q, "utm_source").as_deref(), Some("news letter"));
        assert_eq!(param(q, "utm_medium").as_deref(), Some("e mail"));
        assert_eq!(param(q, "empty"), None);
        assert_eq!(param(q, "bad").as_deref(), Some("100%"));
        assert_eq!(param(q, "missing"), None);
        assert!(QueryValue("RADIO%2D10").eq_ci("radio-10"));
        assert!(!QueryValue("radio-1").eq_ci("radio-10"));
        assert!(!QueryValue("radio-100").eq_ci("radio-10"));
        assert_eq!(QueryValue("caf%C3%A9").decode(), "café");
    }
}
