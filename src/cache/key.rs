//! Rule matching and cache-key construction.
//!
//! The key follows the original chacha (`cacheKey` in `handle_proxy_default.go`): the URL
//! rebuilt from scheme, host[:port] and path, with the rule's ignored parameters deleted
//! from the query and the rest sorted by name (Go's `url.Values.Encode` order: names in
//! byte order, pieces of one name in arrival order). So `?b=2&a=1` and `?a=1&b=2` share
//! one entry, and a presigned URL's rotating `X-Amz-Signature` does not split it.
//!
//! Deviation from Go, to never make two URLs an origin can tell apart share a key: each
//! parameter keeps its bytes as sent (Go re-encodes, merging `?a` with `?a=` and `+` with
//! `%20`, drops pairs with invalid escapes, and drops pairs containing `;`).

use std::fmt::Write as _;

use crate::config::Rule;
use crate::http::uri::Uri;
use crate::http::Headers;

/// First rule whose pattern matches `url` (`scheme://host[:port]/path?query`), as in the
/// original's `Rules.Get`. The regex search is unanchored; patterns anchor themselves.
pub fn match_rule<'a>(rules: &'a [Rule], url: &str) -> Option<&'a Rule> {
    rules.iter().find(|rule| rule.pattern.is_match(url))
}

/// The cache key for `uri` under `rule`: `scheme://host[:port]/path[?query]`, with the
/// query normalised (see the module docs). No `?` when the normalised query is empty.
pub fn cache_key(uri: &Uri, rule: Option<&Rule>) -> String {
    let (path, query) = match uri.path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (uri.path_and_query.as_str(), None),
    };
    // RFC 9110 §4.2.3: an empty path is equivalent to "/".
    let path = if path.is_empty() { "/" } else { path };
    let ignored: &[String] = rule.map_or(&[], |r| r.ignore_parameters.as_slice());

    let mut key = String::with_capacity(uri.host.len() + uri.path_and_query.len() + 16);
    key.push_str(uri.scheme.as_str());
    key.push_str("://");
    // Lowercase host, IPv6 bracketed, the port only when given (RFC 3986 §6.2.2.1).
    let _ = write!(key, "{}", uri.authority_fmt());
    key.push_str(path);
    if let Some(query) = query {
        let query = normalize_query(query, ignored);
        if !query.is_empty() {
            key.push('?');
            key.push_str(&query);
        }
    }
    key
}

/// Whether `key` (from [`cache_key`] for `uri` under `rule`) stands for everything of this
/// request an origin may answer on, so that the origin's answer speaks for every request
/// sharing the entry. False when the key leaves something out:
/// * the query lost pieces (the rule's `ignore-parameters`, empty pieces) or was reordered:
///   an expired or forged presigned signature is not the entry's URL;
/// * the request carries `Authorization` (never part of the key), or the rule has
///   `ignore-authorization-header` (then the entry is shared between clients with other
///   credentials or none): a client without access is not every client.
///
/// Only an exact request's 404/410 says the stored resource is gone (RFC 9111 §4.4 leaves
/// invalidation to the cache; a shared cache must not let one client's view evict what
/// the key shares with others).
pub fn key_is_exact(uri: &Uri, key: &str, rule: Option<&Rule>, req_headers: &Headers) -> bool {
    let query_of = |s: &str| s.split_once('?').map_or("", |(_, q)| q).to_string();
    let sent = query_of(&uri.path_and_query);
    let kept = query_of(key);
    let authorized = req_headers
        .get("authorization")
        .is_some_and(|v| !v.is_empty());
    let shared_credentials = rule.is_some_and(|r| r.ignore_authorization_header);
    sent == kept && !authorized && !shared_credentials
}

/// 64-bit hash of a cache key (xxh3), used for sharding and file names.
pub fn key_hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// One `name[=value]` piece of a query: its decoded name (for sorting and for matching
/// ignored parameters) and the piece exactly as sent.
struct Pair<'q> {
    name: Vec<u8>,
    raw: &'q str,
}

/// Splits `query` into its `&`-separated pieces, drops those whose decoded name (`%XX` and
/// `+` decoded, as Go's `ParseQuery`) is in `ignored` (case-sensitive, as Go's
/// `Values.Del`), and joins the rest sorted by decoded name; the sort is stable, so pieces
/// of one name keep their order. Each kept piece keeps its bytes as sent: `a` and `a=`,
/// `+` and `%20`, `%7e` and `~` may mean different things to an origin (RFC 3986 §6.2.2
/// only makes unreserved escapes equivalent for URI comparison, not for an application's
/// query parsing), so re-encoding them could merge URLs the origin tells apart.
fn normalize_query(query: &str, ignored: &[String]) -> String {
    let mut pairs: Vec<Pair> = Vec::new();
    // Empty pieces (`a&&b`, a trailing `&`) carry nothing, as in Go's ParseQuery.
    for raw in query.split('&').filter(|p| !p.is_empty()) {
        let raw_name = raw.split_once('=').map_or(raw, |(name, _)| name);
        // A name with an invalid escape sorts by its bytes as sent.
        let name = form_decode(raw_name).unwrap_or_else(|| raw_name.as_bytes().to_vec());
        if ignored.iter().any(|i| i.as_bytes() == name.as_slice()) {
            continue;
        }
        pairs.push(Pair { name, raw });
    }
    pairs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::with_capacity(query.len());
    for (i, pair) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(pair.raw);
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Form decoding (Go's `QueryUnescape`): `%XX` → byte, `+` → space. `None` on an invalid
/// escape. The result is bytes: escapes need not form UTF-8.
fn form_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value)?;
                let lo = bytes.get(i + 2).copied().and_then(hex_value)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::uri::parse_absolute;

    fn rule(pattern: &str, ignore_parameters: &[&str]) -> Rule {
        let mut rule = Rule::new(regex::Regex::new(pattern).unwrap());
        rule.ignore_parameters = ignore_parameters.iter().map(|p| p.to_string()).collect();
        rule
    }

    fn key(url: &str, rule: Option<&Rule>) -> String {
        cache_key(&parse_absolute(url).unwrap(), rule)
    }

    #[test]
    fn cache_key_table() {
        let s3 = rule(".*", &["X-Amz-Date", "X-Amz-Signature"]);
        let cases: &[(&str, Option<&Rule>, &str)] = &[
            // Scheme, host, path kept; no query → no '?'.
            ("http://example.com/a/b", None, "http://example.com/a/b"),
            ("https://example.com/", None, "https://example.com/"),
            // Empty path normalised (RFC 9110 §4.2.3), host lowercased.
            ("http://EXAMPLE.com", None, "http://example.com/"),
            // The port is kept when given, even the default one.
            (
                "http://example.com:8080/x",
                None,
                "http://example.com:8080/x",
            ),
            ("http://example.com:80/x", None, "http://example.com:80/x"),
            ("http://[::1]:8080/x", None, "http://[::1]:8080/x"),
            // The path is kept as sent, escapes included.
            ("http://h/a%2Fb/%7e", None, "http://h/a%2Fb/%7e"),
            // Parameter order does not matter: sorted by name.
            ("http://h/x?b=2&a=1", None, "http://h/x?a=1&b=2"),
            ("http://h/x?a=1&b=2", None, "http://h/x?a=1&b=2"),
            // Repeated names keep their relative order (stable sort).
            ("http://h/x?b=1&a=2&b=0", None, "http://h/x?a=2&b=1&b=0"),
            // Empty query and empty pieces vanish.
            ("http://h/x?", None, "http://h/x"),
            ("http://h/x?&&", None, "http://h/x"),
            ("http://h/x?a=1&&b=2&", None, "http://h/x?a=1&b=2"),
            // Each parameter keeps its bytes as sent: an origin may tell these apart.
            ("http://h/x?a", None, "http://h/x?a"),
            ("http://h/x?a=", None, "http://h/x?a="),
            ("http://h/x?q=a%20b", None, "http://h/x?q=a%20b"),
            ("http://h/x?q=a+b", None, "http://h/x?q=a+b"),
            ("http://h/x?q=%7e%2d", None, "http://h/x?q=%7e%2d"),
            ("http://h/x?q=%2f%3a", None, "http://h/x?q=%2f%3a"),
            ("http://h/x?q=a/b:c", None, "http://h/x?q=a/b:c"),
            ("http://h/x?q=caf%c3%a9", None, "http://h/x?q=caf%c3%a9"),
            ("http://h/x?q=a=b", None, "http://h/x?q=a=b"),
            ("http://h/x?a=1;b=2", None, "http://h/x?a=1;b=2"),
            // Sorted, yet as sent.
            ("http://h/x?b=%20&a", None, "http://h/x?a&b=%20"),
            ("http://h/x?b=+&a=", None, "http://h/x?a=&b=+"),
            // Encoded names sort by their decoded bytes, and keep their spelling.
            ("http://h/x?%62=1&a=2", None, "http://h/x?a=2&%62=1"),
            // One decoded name in two spellings: arrival order kept (stable sort).
            ("http://h/x?%62=1&b=2&a", None, "http://h/x?a&%62=1&b=2"),
            ("http://h/x?b=2&%62=1&a", None, "http://h/x?a&b=2&%62=1"),
            // Invalid escapes: kept as sent; such a name sorts by its raw bytes.
            ("http://h/x?b=1&a=%zz", None, "http://h/x?a=%zz&b=1"),
            ("http://h/x?a=%25zz", None, "http://h/x?a=%25zz"),
            ("http://h/x?a=%2", None, "http://h/x?a=%2"),
            ("http://h/x?%g1=1", None, "http://h/x?%g1=1"),
            ("http://h/x?c=1&%62=%zz", None, "http://h/x?%62=%zz&c=1"),
            // Ignored parameters are dropped (whatever their value); the rest sorted.
            (
                "https://b.r2.cloudflarestorage.com/o?X-Amz-Signature=abc&X-Amz-Date=1&v=2",
                Some(&s3),
                "https://b.r2.cloudflarestorage.com/o?v=2",
            ),
            ("http://h/x?X-Amz-Signature=abc", Some(&s3), "http://h/x"),
            // Repeated ignored names all go; escaped spellings of the name too.
            (
                "http://h/x?X-Amz-Date=1&X-Amz-Date=2&a=1",
                Some(&s3),
                "http://h/x?a=1",
            ),
            (
                "http://h/x?X%2DAmz%2DDate=1&a=1",
                Some(&s3),
                "http://h/x?a=1",
            ),
            ("http://h/x?X-Amz-Date&a=%20", Some(&s3), "http://h/x?a=%20"),
            // Matching is case-sensitive, as Go's Values.Del.
            (
                "http://h/x?x-amz-date=1",
                Some(&s3),
                "http://h/x?x-amz-date=1",
            ),
            // Without the rule the parameter stays.
            ("http://h/x?X-Amz-Date=1", None, "http://h/x?X-Amz-Date=1"),
        ];
        for (url, rule, want) in cases {
            assert_eq!(key(url, *rule), *want, "url {url}");
        }
    }

    /// (url, rule, request fields, whether the key is exact)
    type ExactCase<'r> = (
        &'static str,
        Option<&'r Rule>,
        &'static [(&'static str, &'static str)],
        bool,
    );

    #[test]
    fn key_is_exact_table() {
        let signed = rule(".*", &["sig", "se"]);
        let mut waiving = rule(".*", &[]);
        waiving.ignore_authorization_header = true;
        let auth: &[(&str, &str)] = &[("Authorization", "Bearer t")];
        let empty_auth: &[(&str, &str)] = &[("Authorization", "")];
        #[rustfmt::skip]
        let cases: &[ExactCase] = &[
            ("http://h/x", None, &[], true),
            ("http://h/x?a=1&b=2", None, &[], true),
            ("http://h/x?", None, &[], true),
            ("http://EXAMPLE.com", None, &[], true),
            // Reordered or emptied pieces: another URL shares the key.
            ("http://h/x?b=2&a=1", None, &[], false),
            ("http://h/x?a=1&&b=2", None, &[], false),
            // An ignored parameter present in the URL, whatever its value.
            ("http://h/x?v=1&sig=bad", Some(&signed), &[], false),
            ("http://h/x?v=1", Some(&signed), &[], true),
            ("http://h/x?sig", Some(&signed), &[], false),
            // Authorization is never in the key.
            ("http://h/x", None, auth, false),
            ("http://h/x", None, empty_auth, true),
            // Under ignore-authorization-header, with credentials or without.
            ("http://h/x", Some(&waiving), auth, false),
            ("http://h/x", Some(&waiving), &[], false),
        ];
        for (url, rule, fields, want) in cases {
            let uri = parse_absolute(url).unwrap();
            let k = cache_key(&uri, *rule);
            let headers = Headers {
                fields: fields
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            };
            assert_eq!(
                key_is_exact(&uri, &k, *rule, &headers),
                *want,
                "{url} {fields:?}"
            );
        }
    }

    #[test]
    fn form_decode_table() {
        let cases: &[(&str, Option<&[u8]>)] = &[
            ("abc", Some(b"abc")),
            ("a+b", Some(b"a b")),
            ("a%20b", Some(b"a b")),
            ("%7e%7E", Some(b"~~")),
            ("%ff", Some(b"\xff")),
            ("%", None),
            ("%2", None),
            ("%zz", None),
        ];
        for (input, want) in cases {
            assert_eq!(form_decode(input).as_deref(), *want, "{input}");
        }
    }

    #[test]
    fn match_rule_first_match_wins() {
        let rules = vec![
            rule(r"https://cirrus-ci\.com/task/[0-9]+", &["X-Granular"]),
            rule(r"https://cirrus-ci\.com/.*", &["X-Coarse"]),
            rule(r"^.*\.good\.com$", &[]),
        ];
        let cases: &[(&str, Option<&str>)] = &[
            ("https://cirrus-ci.com/task/123", Some("X-Granular")),
            ("https://cirrus-ci.com/build/1", Some("X-Coarse")),
            ("http://other.com/", None),
            ("subdomain.good.com", Some("")),
            // Anchors stop the original's newline trick.
            ("evil.com\nsubdomain.good.com", None),
        ];
        for (url, want) in cases {
            let got = match_rule(&rules, url)
                .map(|r| r.ignore_parameters.first().map_or("", String::as_str));
            assert_eq!(got, *want, "url {url:?}");
        }
    }

    #[test]
    fn key_hash_is_xxh3() {
        // Published xxh3_64 of the empty input.
        assert_eq!(key_hash(""), 0x2D06_8005_38D3_94C2);
        assert_eq!(key_hash("http://h/x"), key_hash("http://h/x"));
        assert_ne!(key_hash("http://h/x"), key_hash("http://h/y"));
    }
}
