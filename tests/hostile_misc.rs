//! Issue 9 (hostile inputs), items 4, 7, 12, 13, 14 and 15: entries kept when the key
//! leaves part of the request out, KV and entry-file metadata validated, a 304's
//! per-response fields relayed, the cache dir recreated, accept backing off when file
//! descriptors run out, and query normalisation that keeps what an origin can tell apart.

mod common;

use common::cached::{
    assert_hit, assert_served, assert_stored, cache_status, entry_files, fetch, wait_until,
    COUNTER_LAG,
};
use common::gen::Verifier;
use common::origin::{Request as OReq, Response as OResp};
use common::{get, get_with, with_deadline, Chacha, Origin};
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

/// How long a fill may take to be committed after its response ended.
const COMMIT_WAIT: Duration = Duration::from_secs(5);

/// Waits until the cache dir holds `n` committed entry files.
fn wait_entries(proxy: &Chacha, n: usize) {
    assert!(
        wait_until(COMMIT_WAIT, || entry_files(proxy.dir()).len() == n),
        "expected {n} entry files, found {:?}",
        entry_files(proxy.dir())
    );
}

fn assert_generated(body: &[u8], len: u64) {
    let mut v = Verifier::new();
    v.feed(body);
    v.assert_complete(len);
}

/// Waits until the origin has written exactly `bytes` body bytes in all, then asserts it.
fn assert_body_bytes(origin: &Origin, bytes: u64) {
    wait_until(COUNTER_LAG, || origin.body_bytes() == bytes);
    assert_eq!(origin.body_bytes(), bytes, "body bytes the origin sent");
}

// ---------------------------------------------------------------------------------------
// 4. A failure for a reason the key leaves out keeps the entry
// ---------------------------------------------------------------------------------------

/// Size of the stored blob.
const BLOB: u64 = 1 << 20;
const BLOB_ETAG: &str = "\"blob-v1\"";

/// A presigned-URL storage origin: `sig` must start with `good` (else 403), `se` (expiry)
/// must be 9999 (else 410), no `sig` at all is 404. Error bodies name the reason.
fn storage(req: &OReq) -> OResp {
    let query = req.target.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
    };
    let error = |status: u16, body: &str| {
        let mut r = OResp::ok(body.as_bytes().to_vec());
        r.status = status;
        r.reason = "Denied".into();
        r
    };
    match (param("sig"), param("se")) {
        (None, _) => error(404, "no signature"),
        (Some(sig), _) if !sig.starts_with("good") => error(403, "bad signature"),
        (_, Some(se)) if se != "9999" => error(410, "expired"),
        _ => validated(req, BLOB_ETAG, || OResp::generated(BLOB)),
    }
}

#[test]
fn failed_signatures_are_relayed_and_keep_the_entry_for_valid_ones() {
    with_deadline(DEADLINE, || {
        let rules = "rules:\n  - pattern: '127\\.0\\.0\\.1'\n    ignore-parameters: [sig, se]\n";
        let proxy = Chacha::start(&cache_config(rules));
        let origin = Origin::start(storage);
        let auth = origin.authority();
        let stored = fetch(proxy.addr(), get(&auth, "/blob?v=1&se=9999&sig=good1"));
        assert_stored(&stored);
        assert_generated(&stored.body, BLOB);
        wait_entries(&proxy, 1);
        let mut sent = BLOB;
        assert_body_bytes(&origin, sent);

        for (query, status, body) in [
            ("v=1&se=9999&sig=forged", 403, "bad signature"),
            ("v=1&se=1&sig=good2", 410, "expired"),
            ("v=1&se=9999", 404, "no signature"),
        ] {
            let resp = fetch(proxy.addr(), get(&auth, &format!("/blob?{query}")));
            assert_eq!(
                resp.status(),
                status,
                "?{query}: the origin's answer is relayed"
            );
            assert_eq!(resp.body, body.as_bytes(), "?{query}");
            let seen = origin.last_request().unwrap();
            assert_eq!(
                seen.target,
                format!("/blob?{query}"),
                "sent as the client sent it"
            );
            assert_eq!(
                seen.header("if-none-match"),
                Some(BLOB_ETAG),
                "?{query} validated"
            );
            sent += body.len() as u64;
            assert_body_bytes(&origin, sent);
            wait_entries(&proxy, 1);
        }

        let hit = fetch(proxy.addr(), get(&auth, "/blob?sig=good3&v=1&se=9999"));
        assert_hit(&hit);
        assert_generated(&hit.body, BLOB);
        assert_body_bytes(&origin, sent);
        assert_served(&origin, 1, 1);
    });
}

/// An origin that serves the blob to `Authorization: Bearer ok` only, 404 to others (as
/// registries hide what a client may not see).
fn private_blob(req: &OReq) -> OResp {
    if req.header("authorization") == Some("Bearer ok") {
        validated(req, BLOB_ETAG, || OResp::generated(BLOB))
    } else {
        let mut r = OResp::ok(&b"no access"[..]);
        r.status = 404;
        r
    }
}

#[test]
fn client_without_access_does_not_evict_a_shared_authorized_entry() {
    with_deadline(DEADLINE, || {
        let rules =
            "rules:\n  - pattern: '127\\.0\\.0\\.1'\n    ignore-authorization-header: true\n";
        let proxy = Chacha::start(&cache_config(rules));
        let origin = Origin::start(private_blob);
        let auth = origin.authority();
        let ok = ["Authorization: Bearer ok"];
        let stored = fetch(proxy.addr(), get_with(&auth, "/blob", &ok));
        assert_stored(&stored);
        wait_entries(&proxy, 1);
        let mut sent = BLOB;
        for extra in [&["Authorization: Bearer nope"][..], &[][..]] {
            let resp = fetch(proxy.addr(), get_with(&auth, "/blob", extra));
            assert_eq!(resp.status(), 404, "{extra:?}: relayed");
            assert_eq!(resp.body, b"no access");
            sent += 9;
            assert_body_bytes(&origin, sent);
            wait_entries(&proxy, 1);
        }
        let hit = fetch(proxy.addr(), get_with(&auth, "/blob", &ok));
        assert_hit(&hit);
        assert_generated(&hit.body, BLOB);
        assert_body_bytes(&origin, sent);
        assert_served(&origin, 1, 1);
    });
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
