//! Issue 9 (hostile inputs), items 4, 7, 12, 13, 14 and 15: entries kept when the key
//! leaves part of the request out, KV and entry-file metadata validated, a 304's
//! per-response fields relayed, the cache dir recreated, accept backing off when file
//! descriptors run out, and query normalisation that keeps what an origin can tell apart.

mod common;

use common::cached::{assert_hit, assert_served, assert_stored, cache_status, fetch};
use common::origin::{Request as OReq, Response as OResp};
use common::{get, with_deadline, Chacha, Origin};
use std::time::Duration;

/// Deadline for an ordinary test.
const DEADLINE: Duration = Duration::from_secs(30);

/// A config with the cache on, one worker, and `extra` top-level YAML appended.
fn cache_config(extra: &str) -> String {
    common::config(extra)
}

/// 304 when the request's `If-None-Match` names `etag`, otherwise `full()`; both carry
/// the ETag (RFC 9110 §15.4.5).
fn validated(req: &OReq, etag: &str, full: impl FnOnce() -> OResp) -> OResp {
    let matches = req
        .header("if-none-match")
        .is_some_and(|inm| inm.split(',').any(|t| t.trim() == etag));
    let resp = if matches { OResp::status(304) } else { full() };
    resp.header("ETag", etag)
}

// ---------------------------------------------------------------------------------------
// 15. Query normalisation keeps each parameter's bytes
// ---------------------------------------------------------------------------------------

/// The origin answers with the query it received as the body (ETag per query), so a
/// wrongly shared entry would hand one URL's body to another.
fn echo_query(req: &OReq) -> OResp {
    let query = req
        .target
        .split_once('?')
        .map_or("", |(_, q)| q)
        .to_string();
    let etag = format!("\"{}\"", query.len());
    validated(req, &etag, || OResp::ok(query.clone().into_bytes()))
}

#[test]
fn query_spellings_an_origin_tells_apart_are_separate_entries() {
    with_deadline(DEADLINE, || {
        let proxy = Chacha::start(&cache_config(""));
        let origin = Origin::start(echo_query);
        let auth = origin.authority();
        let mut fulls = 0;
        // Pairs that differ only in spelling: each is its own entry, stored once.
        for (first, second) in [("a", "a="), ("q=a+b", "q=a%20b"), ("q=%7e", "q=~")] {
            for query in [first, second] {
                let resp = fetch(proxy.addr(), get(&auth, &format!("/e?{query}")));
                assert_stored(&resp);
                assert_eq!(resp.body, query.as_bytes(), "body of ?{query}");
                fulls += 1;
                assert_served(&origin, fulls, 0);
            }
        }
        // Both again: hits, each with its own body.
        for query in ["a", "a=", "q=a+b", "q=a%20b", "q=%7e", "q=~"] {
            let resp = fetch(proxy.addr(), get(&auth, &format!("/e?{query}")));
            assert_hit(&resp);
            assert_eq!(resp.body, query.as_bytes(), "hit of ?{query}");
        }
        assert_served(&origin, 6, 6);

        // Parameter order still does not split an entry.
        let resp = fetch(proxy.addr(), get(&auth, "/e?b=1&a=2"));
        assert_stored(&resp);
        let resp = fetch(proxy.addr(), get(&auth, "/e?a=2&b=1"));
        assert_hit(&resp);
        assert_eq!(resp.body, b"b=1&a=2", "the entry stored for ?b=1&a=2");
        assert_served(&origin, 7, 7);
        assert!(cache_status(&resp).starts_with("chacha; hit"));
    });
}
