//! Which response fields an entry stores (RFC 9111 §3.1) and how a 304 updates them
//! (RFC 9111 §3.2, §4.3.4).

use crate::http::Headers;

/// Fields a 304 must not change in the stored response: framing and content coding
/// describe the stored body, not the 304 (RFC 9111 §3.2: Content-Length is never updated,
/// and fields describing how the stored content was processed may be kept).
const NOT_UPDATED_BY_304: [&str; 4] = [
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
];

/// Fields not stored, besides the hop-by-hop ones (RFC 9110 §7.6.1, RFC 9111 §3.1):
/// * `Set-Cookie`: one client's cookie must not be replayed to others;
/// * `Content-Length`: the body is served framed from the stored size, one source of truth;
/// * `Age`: chacha validates every hit, so the served response is fresh;
/// * `X-Chacha-Direct-Connect`: chacha's own hint, removed by the original too.
const NOT_STORED: [&str; 5] = [
    "set-cookie",
    "set-cookie2",
    "content-length",
    "age",
    "x-chacha-direct-connect",
];

fn named_in(name: &str, list: &[&str]) -> bool {
    list.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// The response fields worth storing, in order: all but hop-by-hop fields (and those named
/// by `Connection`) and [`NOT_STORED`].
pub fn stored_headers(resp: &Headers) -> Headers {
    let mut out = resp.clone();
    out.strip_hop_by_hop();
    out.fields.retain(|(name, _)| !named_in(name, &NOT_STORED));
    out
}

/// Whether a field of a 304 updates the stored entry: a field [`stored_headers`] keeps
/// (not hop-by-hop, not named by the 304's `Connection`, not [`NOT_STORED`]) and not one of
/// [`NOT_UPDATED_BY_304`].
fn updates_entry(not_modified: &Headers, name: &str) -> bool {
    !not_modified.is_hop_by_hop(name)
        && !named_in(name, &NOT_STORED)
        && !named_in(name, &NOT_UPDATED_BY_304)
}

fn has(fields: &[(String, Vec<u8>)], name: &str) -> bool {
    fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// The stored fields updated by a 304 (RFC 9111 §4.3.4, §3.2): each field of the 304
/// replaces all stored fields of that name, at the first one's position; fields new to
/// the entry are appended in the 304's order. Fields that are not stored, hop-by-hop
/// fields and [`NOT_UPDATED_BY_304`] are not taken from the 304. Runs on every hit, so
/// only the result is allocated (neither input is copied first).
pub fn merge_304(stored: &[(String, Vec<u8>)], not_modified: &Headers) -> Headers {
    let updates =
        |name: &str, n: &str| n.eq_ignore_ascii_case(name) && updates_entry(not_modified, n);
    let updated = |name: &str| not_modified.fields.iter().any(|(n, _)| updates(name, n));
    let mut out = Headers {
        fields: Vec::with_capacity(stored.len() + not_modified.fields.len()),
    };
    for (name, value) in stored {
        if !updated(name) {
            out.fields.push((name.clone(), value.clone()));
        } else if !out.contains(name) {
            // First stored field of a replaced name: all of the 304's values go here.
            let replacements = not_modified.fields.iter().filter(|(n, _)| updates(name, n));
            out.fields.extend(replacements.cloned());
        }
    }
    for (name, value) in &not_modified.fields {
        if updates_entry(not_modified, name) && !has(stored, name) {
            out.fields.push((name.clone(), value.clone()));
        }
    }
    out
}

/// Fields never stored but meant for the client of this very response (RFC 9111 §3.1:
/// a cache must not replay one client's `Set-Cookie` to others; RFC 6265 §3 and §4.1: a
/// cookie set by the origin in a 304 is still that client's).
const FOR_THIS_RESPONSE_ONLY: [&str; 2] = ["set-cookie", "set-cookie2"];

/// The headers of a hit served after `not_modified` (RFC 9111 §4.3.4): the stored ones
/// updated by [`merge_304`], plus the 304's per-response fields ([`FOR_THIS_RESPONSE_ONLY`])
/// for this client only; the stored entry never sees them.
pub fn served_after_304(stored: &[(String, Vec<u8>)], not_modified: &Headers) -> Headers {
    let mut out = merge_304(stored, not_modified);
    let for_this = not_modified
        .fields
        .iter()
        .filter(|(name, _)| named_in(name, &FOR_THIS_RESPONSE_ONLY));
    out.fields.extend(for_this.cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::tests::{headers, Fields};

    #[test]
    fn stored_headers_drop_hop_by_hop_and_private_fields() {
        let resp = headers(&[
            ("Content-Type", "text/plain"),
            ("Connection", "keep-alive, X-Conn"),
            ("X-Conn", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
            ("Set-Cookie", "session=1"),
            ("Age", "10"),
            ("ETag", "\"a\""),
            ("X-Chacha-Direct-Connect", "1"),
            ("Cache-Control", "public"),
        ]);
        let want = headers(&[
            ("Content-Type", "text/plain"),
            ("ETag", "\"a\""),
            ("Cache-Control", "public"),
        ]);
        assert_eq!(stored_headers(&resp), want);
    }

    #[test]
    fn merge_304_table() {
        let cases: &[(&str, Fields, Fields, Fields)] = &[
            (
                "same-name fields replaced in place, order kept",
                &[
                    ("Content-Type", "text/plain"),
                    ("ETag", "\"a\""),
                    ("Cache-Control", "max-age=1"),
                ],
                &[("Cache-Control", "max-age=60"), ("ETag", "\"b\"")],
                &[
                    ("Content-Type", "text/plain"),
                    ("ETag", "\"b\""),
                    ("Cache-Control", "max-age=60"),
                ],
            ),
            (
                "new fields appended in the 304's order",
                &[("ETag", "\"a\"")],
                &[("Expires", "x"), ("Date", "y")],
                &[("ETag", "\"a\""), ("Expires", "x"), ("Date", "y")],
            ),
            (
                "names match case-insensitively; repeated stored lines collapse",
                &[("X-A", "1"), ("Link", "<a>"), ("x-b", "2"), ("link", "<b>")],
                &[("LINK", "<c>"), ("LINK", "<d>")],
                &[("X-A", "1"), ("LINK", "<c>"), ("LINK", "<d>"), ("x-b", "2")],
            ),
            (
                "framing and coding are not changed by a 304",
                &[("Content-Encoding", "gzip"), ("ETag", "\"a\"")],
                &[
                    ("Content-Length", "0"),
                    ("Content-Encoding", "br"),
                    ("Transfer-Encoding", "chunked"),
                    ("Content-Range", "bytes 0-1/2"),
                ],
                &[("Content-Encoding", "gzip"), ("ETag", "\"a\"")],
            ),
            (
                "hop-by-hop and unstored fields of the 304 are not taken",
                &[("ETag", "\"a\"")],
                &[
                    ("Connection", "close, X-Hop"),
                    ("X-Hop", "1"),
                    ("Keep-Alive", "timeout=5"),
                    ("Set-Cookie", "s=1"),
                    ("Age", "3"),
                ],
                &[("ETag", "\"a\"")],
            ),
            ("empty 304", &[("ETag", "\"a\"")], &[], &[("ETag", "\"a\"")]),
        ];
        for (name, stored, not_modified, want) in cases {
            assert_eq!(
                merge_304(&headers(stored).fields, &headers(not_modified)),
                headers(want),
                "{name}"
            );
        }
    }

    #[test]
    fn served_after_304_adds_the_304s_cookies_for_this_client() {
        let cases: &[(&str, Fields, Fields, Fields)] = &[
            (
                "cookies of the 304 reach this client, after the merged fields",
                &[("ETag", "\"a\""), ("Content-Type", "text/plain")],
                &[
                    ("Set-Cookie", "s=1"),
                    ("Cache-Control", "max-age=5"),
                    ("set-cookie", "t=2; Path=/"),
                    ("Set-Cookie2", "u=3"),
                ],
                &[
                    ("ETag", "\"a\""),
                    ("Content-Type", "text/plain"),
                    ("Cache-Control", "max-age=5"),
                    ("Set-Cookie", "s=1"),
                    ("set-cookie", "t=2; Path=/"),
                    ("Set-Cookie2", "u=3"),
                ],
            ),
            (
                "other unstored fields still stay out",
                &[("ETag", "\"a\"")],
                &[
                    ("Age", "3"),
                    ("Connection", "close"),
                    ("Content-Length", "0"),
                ],
                &[("ETag", "\"a\"")],
            ),
            (
                "no cookie, no change",
                &[("ETag", "\"a\"")],
                &[],
                &[("ETag", "\"a\"")],
            ),
        ];
        for (name, stored, not_modified, want) in cases {
            let (stored, not_modified) = (headers(stored), headers(not_modified));
            assert_eq!(
                served_after_304(&stored.fields, &not_modified),
                headers(want),
                "{name}"
            );
            // What is stored (and what a later hit starts from) never holds them.
            assert!(
                !merge_304(&stored.fields, &not_modified).contains("set-cookie"),
                "{name}"
            );
        }
    }
}
