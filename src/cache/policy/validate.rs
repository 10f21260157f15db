//! Validators of a stored response: the conditional request that revalidates it
//! (RFC 9111 §4.3.1) and the evaluation of a client's own conditional against it
//! (RFC 9110 §13.1.1–§13.1.3, §13.2.2).

use super::date::parse_http_date;
use crate::http::Headers;

/// The validators of a stored response (RFC 9110 §8.8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    /// The first `ETag` and `Last-Modified` values, trimmed; empty or non-UTF-8 ones ignored.
    pub fn from_headers(h: &Headers) -> Self {
        let text = |name| {
            h.get_str(name)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        Validators {
            etag: text("etag"),
            last_modified: text("last-modified"),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// The fields that make the revalidation request conditional (RFC 9111 §4.3.1):
/// `If-None-Match` with the entity tag, else `If-Modified-Since` with Last-Modified (an
/// origin ignores If-Modified-Since when If-None-Match is present, RFC 9110 §13.1.3).
/// The caller must remove the client's own conditional fields first: a 304 answering the
/// client's validators says nothing about the stored entry.
pub fn conditional_headers(v: &Validators) -> Vec<(&'static str, String)> {
    match (&v.etag, &v.last_modified) {
        (Some(etag), _) => vec![("If-None-Match", etag.clone())],
        (None, Some(date)) => vec![("If-Modified-Since", date.clone())],
        (None, None) => Vec::new(),
    }
}

/// Whether the client's own conditional request matches the entry being served, so it
/// gets a 304 (RFC 9110 §13.2.2 order: If-None-Match first; If-Modified-Since only
/// without If-None-Match). Only for GET/HEAD, which the caller ensures.
pub fn client_conditional_matches(req: &Headers, v: &Validators) -> bool {
    if req.contains("if-none-match") {
        return req
            .get_all("if-none-match")
            .any(|list| if_none_match_matches(list, v.etag.as_deref()));
    }
    // RFC 9110 §13.1.3: ignore the field unless it is one valid HTTP-date.
    let mut dates = req.get_all("if-modified-since");
    let (Some(since), None) = (dates.next(), dates.next()) else {
        return false;
    };
    let since = std::str::from_utf8(since).ok().and_then(parse_http_date);
    let modified = v.last_modified.as_deref().and_then(parse_http_date);
    match (since, modified) {
        // Not modified when the representation is not newer than the date given.
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// RFC 9110 §13.1.2: `*` matches any current representation; otherwise the list matches
/// when one of its tags equals `etag` under weak comparison (§8.8.3.2: `W/` ignored).
fn if_none_match_matches(list: &[u8], etag: Option<&str>) -> bool {
    let Ok(list) = std::str::from_utf8(list) else {
        return false;
    };
    let stored = etag.map(opaque_tag);
    entity_tags(list).any(|tag| tag == "*" || Some(opaque_tag(tag)) == stored)
}

/// The tag without its weakness indicator.
fn opaque_tag(tag: &str) -> &str {
    tag.trim().strip_prefix("W/").unwrap_or(tag.trim())
}

/// The entity tags of an If-None-Match list, `W/` kept. Quoted tags may contain commas
/// (etagc allows them, RFC 9110 §8.8.3); unquoted junk runs to the next comma.
fn entity_tags(list: &str) -> impl Iterator<Item = &str> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let body_start = if rest.starts_with("W/") { 2 } else { 0 };
        let end = if rest[body_start..].starts_with('"') {
            // Through the closing quote, or everything if it is missing.
            rest[body_start + 1..]
                .find('"')
                .map_or(rest.len(), |i| body_start + i + 2)
        } else {
            rest.find(',').unwrap_or(rest.len())
        };
        let (tag, after) = rest.split_at(end);
        rest = after;
        Some(tag.trim_end())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::tests::{headers, Fields};

    #[test]
    fn validators_and_conditional_headers() {
        const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
        let cases: &[(Fields, Vec<(&str, String)>)] = &[
            (
                &[("ETag", "\"a\""), ("Last-Modified", LM)],
                vec![("If-None-Match", "\"a\"".into())],
            ),
            (
                &[("etag", " W/\"a\" ")],
                vec![("If-None-Match", "W/\"a\"".into())],
            ),
            (
                &[("Last-Modified", LM)],
                vec![("If-Modified-Since", LM.into())],
            ),
            (&[("Content-Type", "text/plain")], vec![]),
        ];
        for (fields, want) in cases {
            let v = Validators::from_headers(&headers(fields));
            assert_eq!(conditional_headers(&v), *want, "{fields:?}");
        }
    }

    #[test]
    fn client_conditional_table() {
        const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
        let both = Validators {
            etag: Some("\"v1\"".into()),
            last_modified: Some(LM.into()),
        };
        let weak = Validators {
            etag: Some("W/\"v1\"".into()),
            last_modified: None,
        };
        let date_only = Validators {
            etag: None,
            last_modified: Some(LM.into()),
        };
        let cases: &[(&str, Fields, &Validators, bool)] = &[
            ("no conditional", &[], &both, false),
            ("exact tag", &[("If-None-Match", "\"v1\"")], &both, true),
            ("other tag", &[("If-None-Match", "\"v2\"")], &both, false),
            (
                "weak request tag",
                &[("If-None-Match", "W/\"v1\"")],
                &both,
                true,
            ),
            (
                "weak stored tag",
                &[("If-None-Match", "\"v1\"")],
                &weak,
                true,
            ),
            ("both weak", &[("If-None-Match", "W/\"v1\"")], &weak, true),
            (
                "list",
                &[("If-None-Match", "\"a\", W/\"v1\" ,\"b\"")],
                &both,
                true,
            ),
            (
                "list without it",
                &[("If-None-Match", "\"a\", \"b\"")],
                &both,
                false,
            ),
            (
                "second field line",
                &[("If-None-Match", "\"a\""), ("if-none-match", "\"v1\"")],
                &both,
                true,
            ),
            (
                "comma inside a tag",
                &[("If-None-Match", "\"v1,x\"")],
                &both,
                false,
            ),
            (
                "tags are case-sensitive",
                &[("If-None-Match", "\"V1\"")],
                &both,
                false,
            ),
            ("star", &[("If-None-Match", "*")], &date_only, true),
            (
                "tag but no stored etag",
                &[("If-None-Match", "\"v1\"")],
                &date_only,
                false,
            ),
            // If-None-Match decides alone, even when If-Modified-Since would match.
            (
                "INM beats IMS",
                &[("If-None-Match", "\"v2\""), ("If-Modified-Since", LM)],
                &both,
                false,
            ),
            ("IMS equal", &[("If-Modified-Since", LM)], &both, true),
            (
                "IMS later",
                &[("If-Modified-Since", "Sun, 06 Nov 1994 08:49:38 GMT")],
                &both,
                true,
            ),
            (
                "IMS earlier",
                &[("If-Modified-Since", "Sun, 06 Nov 1994 08:49:36 GMT")],
                &both,
                false,
            ),
            (
                "IMS RFC 850",
                &[("If-Modified-Since", "Sunday, 06-Nov-94 08:49:37 GMT")],
                &both,
                true,
            ),
            (
                "IMS asctime",
                &[("If-Modified-Since", "Sun Nov  6 08:49:37 1994")],
                &both,
                true,
            ),
            (
                "IMS invalid",
                &[("If-Modified-Since", "yesterday")],
                &both,
                false,
            ),
            (
                "IMS twice",
                &[("If-Modified-Since", LM), ("If-Modified-Since", LM)],
                &both,
                false,
            ),
            (
                "IMS without stored date",
                &[("If-Modified-Since", LM)],
                &weak,
                false,
            ),
        ];
        for (name, req, v, want) in cases {
            assert_eq!(
                client_conditional_matches(&headers(req), v),
                *want,
                "{name}"
            );
        }
    }
}
