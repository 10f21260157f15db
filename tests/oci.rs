//! Issue 6: what Tart's OCI pulls need from chacha, tested against the real binary:
//! byte ranges from the cache and from fills (RFC 9110 §14), Tart's retry of a cut
//! download with `Range: bytes=N-`, SHA-256-verified blob fills, and a registry's
//! redirect to presigned storage URLs whose signature changes on every pull.
//!
//! The redirect test runs chacha with `examples/oci-test.yaml` (the rules of
//! `examples/ghcr.yaml` with the registry and storage hosts as placeholders, which the
//! test replaces with its origins' regex-escaped addresses).

mod common;

use common::cached::{
    assert_hit, assert_served, assert_stored, cache_status, entry_files, etag_of, fetch, wait_until,
};

use common::client::parse_head;
use common::gen::{self, Verifier};
use common::origin::{Request as OReq, Response as OResp};
use common::{get, get_with, with_deadline, Chacha, Head, Origin, Response};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Deadline for an ordinary test.
const DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for tests that move tens of MiB or wait for slow fills.
const HEAVY_DEADLINE: Duration = Duration::from_secs(60);
/// Last-Modified of every test object.
const LAST_MODIFIED: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
/// How long to wait for a fill to be committed (or discarded) after its response ended.
const COMMIT_WAIT: Duration = Duration::from_secs(5);
/// Body sizes the warm range tests run on: one kept inline in memory by the open-entry
/// cache (<= 16 KiB), one served from the entry file.
const RANGE_LENS: [u64; 2] = [10_007, 1_000_003];
/// Size and pacing of a slow fill (~260 generated blocks of 64 256 bytes, >= 1 s).
const SLOW_LEN: u64 = 16 << 20;
const SLOW_BLOCK_MS: u64 = 4;
/// Where Tart's first attempt is cut: not a multiple of any buffer size.
const CUT_AT: usize = 1_234_567;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn start_default() -> Chacha {
    Chacha::start(&common::config(""))
}

/// 304 when `If-None-Match` names `etag`, otherwise `full()`; both carry the validators.
fn validated(req: &OReq, etag: &str, full: impl FnOnce() -> OResp) -> OResp {
    let matches = req
        .header("if-none-match")
        .is_some_and(|inm| inm.split(',').map(str::trim).any(|t| t == etag));
    let resp = if matches { OResp::status(304) } else { full() };
    resp.header("ETag", etag)
        .header("Last-Modified", LAST_MODIFIED)
}

/// Cacheable generated objects (query ignored):
/// - `/obj/{name}/{len}`: ETag [`etag_of`] and [`LAST_MODIFIED`];
/// - `/slow/{name}/{len}`: the same, sleeping [`SLOW_BLOCK_MS`] between blocks.
///
/// The origin never answers ranges itself: chacha must not ask it for one.
fn routes(req: &OReq) -> OResp {
    let path = req.path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let name = parts.get(1).copied().unwrap_or("");
    let len: u64 = parts.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
    let etag = etag_of(name, len);
    match parts[0] {
        "obj" => validated(req, &etag, || OResp::generated(len)),
        "slow" => validated(req, &etag, || {
            OResp::generated(len).chunk_delay(Duration::from_millis(SLOW_BLOCK_MS))
        }),
        _ => OResp::status(404),
    }
}

/// An origin serving one OCI blob at `/v2/test/blobs/sha256:{digest}`: `len` generated
/// bytes with ETag `"{digest}"`, paced by `block_ms` per block. The digest need not be
/// the body's (that is the mismatch test).
fn blob_origin(digest: &str, len: u64, block_ms: u64) -> Origin {
    let etag = format!("\"{digest}\"");
    let path = blob_path(digest);
    Origin::start(move |req| {
        if req.path() != path {
            return OResp::status(404);
        }
        validated(req, &etag, || {
            OResp::generated(len).chunk_delay(Duration::from_millis(block_ms))
        })
    })
}

fn blob_path(digest: &str) -> String {
    format!("/v2/test/blobs/sha256:{digest}")
}

/// Lower-case hex SHA-256 of the first `len` bytes of the generated pattern.
fn generated_sha256(len: u64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    gen::stream(len, |b| {
        ctx.update(b);
        Ok(())
    })
    .unwrap();
    hex(ctx.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asserts `body` is exactly bytes `start..start + body.len()` of the generated pattern
/// and that there are `len` of them.
fn assert_generated_at(body: &[u8], start: u64, len: u64) {
    assert_eq!(body.len() as u64, len, "body length");
    let expected: Vec<u8> = (start..start + len).map(gen::byte_at).collect();
    if let Some(i) = body.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!(
            "wrong byte at body offset {i} (object offset {})",
            start + i as u64
        );
    }
}

/// Asserts a 206 for bytes `start..=end` of an object of `len` bytes, exactly.
fn assert_partial(resp: &Response, start: u64, end: u64, len: u64) {
    assert_eq!(
        resp.status(),
        206,
        "status; Cache-Status {}",
        cache_status(resp)
    );
    assert_eq!(
        resp.header("content-range"),
        Some(format!("bytes {start}-{end}/{len}").as_str()),
        "Content-Range"
    );
    let count = end - start + 1;
    assert_eq!(
        resp.header("content-length"),
        Some(count.to_string().as_str()),
        "Content-Length"
    );
    assert_eq!(resp.header("accept-ranges"), Some("bytes"), "Accept-Ranges");
    assert_generated_at(&resp.body, start, count);
}

/// Asserts a 200 with the whole object of `len` bytes and no Content-Range.
fn assert_whole(resp: &Response, len: u64) {
    assert_eq!(
        resp.status(),
        200,
        "status; Cache-Status {}",
        cache_status(resp)
    );
    assert_eq!(resp.header("content-range"), None, "Content-Range on a 200");
    assert_eq!(
        resp.header("content-length"),
        Some(len.to_string().as_str()),
        "Content-Length"
    );
    assert_eq!(resp.header("accept-ranges"), Some("bytes"), "Accept-Ranges");
    assert_generated_at(&resp.body, 0, len);
}

/// Asserts no request the origin received carried a `Range` (or `If-Range`): a cache
/// fills whole objects.
fn assert_origin_saw_no_range(origin: &Origin) {
    for r in origin.requests() {
        assert_eq!(r.header("range"), None, "origin got a Range: {r:?}");
        assert_eq!(r.header("if-range"), None, "origin got an If-Range: {r:?}");
    }
}

fn tmp_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("tmp"))
        .map(|mut r| r.next().is_none())
        .unwrap_or(true)
}

/// Waits until `dir` holds `n` committed entries and no temp file.
fn wait_committed(dir: &Path, n: usize) {
    assert!(
        wait_until(COMMIT_WAIT, || entry_files(dir).len() == n
            && tmp_empty(dir)),
        "expected {n} committed entries and an empty tmp/, found {:?}",
        entry_files(dir)
    );
}

/// Sends `raw` on a fresh connection, reads the head and the first `n` body bytes, then
/// closes the connection: a download cut after `n` bytes. Bytes read past `n` are
/// dropped, as if they had never arrived.
fn get_cut(addr: SocketAddr, raw: &str, n: usize) -> (Head, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut head_end = None;
    loop {
        if let Some(h) = head_end {
            if buf.len() - h >= n {
                break;
            }
        }
        let k = s.read(&mut chunk).expect("read before the cut");
        assert!(k > 0, "EOF before the cut at {n}");
        buf.extend_from_slice(&chunk[..k]);
        if head_end.is_none() {
            head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
    }
    let h = head_end.unwrap();
    let head = parse_head(&buf[..h], "GET").expect("response head");
    let body = buf[h..h + n].to_vec();
    drop(s);
    (head, body)
}

/// A warm chacha with `/obj/{name}/{len}` stored; returns (proxy, origin, path).
fn warm(name: &str, len: u64) -> (Chacha, Origin, String) {
    let proxy = start_default();
    let origin = Origin::start(routes);
    let path = format!("/obj/{name}/{len}");
    let first = fetch(proxy.addr(), get(&origin.authority(), &path));
    assert_stored(&first);
    assert_whole(&first, len);
    wait_committed(proxy.dir(), 1);
    (proxy, origin, path)
}

/// GET `path` through the proxy with extra header lines.
fn get_through(proxy: &Chacha, origin: &Origin, path: &str, extra: &[&str]) -> Response {
    fetch(proxy.addr(), get_with(&origin.authority(), path, extra))
}

// ---------------------------------------------------------------------------------------
// 1. Ranges on a validated entry (RFC 9110 §14)
// ---------------------------------------------------------------------------------------

#[test]
fn warm_range_first_100_bytes_is_206_with_exact_bytes() {
    with_deadline(DEADLINE, || {
        for len in RANGE_LENS {
            let (proxy, origin, path) = warm("first", len);
            let r = get_through(&proxy, &origin, &path, &["Range: bytes=0-99"]);
            assert_hit(&r);
            assert_partial(&r, 0, 99, len);
            assert_origin_saw_no_range(&origin);
            assert_served(&origin, 1, 1);
        }
    });
}

#[test]
fn warm_range_open_ended_is_206_to_the_last_byte() {
    with_deadline(DEADLINE, || {
        for len in RANGE_LENS {
            let (proxy, origin, path) = warm("open", len);
            let r = get_through(&proxy, &origin, &path, &["Range: bytes=100-"]);
            assert_hit(&r);
            assert_partial(&r, 100, len - 1, len);
            assert_origin_saw_no_range(&origin);
        }
    });
}

#[test]
fn warm_range_suffix_is_206_with_the_last_bytes() {
    with_deadline(DEADLINE, || {
        for len in RANGE_LENS {
            let (proxy, origin, path) = warm("suffix", len);
            let r = get_through(&proxy, &origin, &path, &["Range: bytes=-100"]);
            assert_hit(&r);
            assert_partial(&r, len - 100, len - 1, len);
        }
    });
}

#[test]
fn warm_range_end_past_the_length_is_clamped() {
    with_deadline(DEADLINE, || {
        for len in RANGE_LENS {
            let (proxy, origin, path) = warm("clamp", len);
            let range = format!("Range: bytes=50-{}", len * 10);
            let r = get_through(&proxy, &origin, &path, &[&range]);
            assert_hit(&r);
            assert_partial(&r, 50, len - 1, len);
        }
    });
}

#[test]
fn warm_range_starting_at_the_length_is_416_with_the_length() {
    with_deadline(DEADLINE, || {
        for len in RANGE_LENS {
            let (proxy, origin, path) = warm("unsat", len);
            let range = format!("Range: bytes={len}-");
            let r = get_through(&proxy, &origin, &path, &[&range]);
            assert_eq!(r.status(), 416, "Cache-Status {}", cache_status(&r));
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes */{len}").as_str())
            );
            assert!(r.body.is_empty(), "a 416 carried {} bytes", r.body.len());
            // The connection stays usable: the next response is framed right.
            let next = get_through(&proxy, &origin, &path, &["Range: bytes=0-0"]);
            assert_partial(&next, 0, 0, len);
        }
    });
}

#[test]
fn warm_multiple_ranges_get_the_whole_body_as_200() {
    with_deadline(DEADLINE, || {
        for len in RANGE_LENS {
            let (proxy, origin, path) = warm("multi", len);
            let r = get_through(&proxy, &origin, &path, &["Range: bytes=0-9,20-29"]);
            assert_hit(&r);
            assert_whole(&r, len);
        }
    });
}

// ---------------------------------------------------------------------------------------
// 2. If-Range (RFC 9110 §13.1.5)
// ---------------------------------------------------------------------------------------

#[test]
fn if_range_with_the_current_etag_gets_206() {
    with_deadline(DEADLINE, || {
        let len = RANGE_LENS[1];
        let (proxy, origin, path) = warm("ifr", len);
        let if_range = format!("If-Range: {}", etag_of("ifr", len));
        let r = get_through(&proxy, &origin, &path, &["Range: bytes=10-19", &if_range]);
        assert_hit(&r);
        assert_partial(&r, 10, 19, len);
        assert_origin_saw_no_range(&origin);
    });
}

#[test]
fn if_range_with_the_last_modified_date_gets_206() {
    with_deadline(DEADLINE, || {
        let len = RANGE_LENS[1];
        let (proxy, origin, path) = warm("ifrd", len);
        let if_range = format!("If-Range: {LAST_MODIFIED}");
        let r = get_through(&proxy, &origin, &path, &["Range: bytes=10-19", &if_range]);
        assert_partial(&r, 10, 19, len);
    });
}

#[test]
fn if_range_with_another_etag_gets_the_full_200() {
    with_deadline(DEADLINE, || {
        let len = RANGE_LENS[1];
        let (proxy, origin, path) = warm("ifrx", len);
        let r = get_through(
            &proxy,
            &origin,
            &path,
            &["Range: bytes=10-19", "If-Range: \"some-older-version\""],
        );
        assert_hit(&r);
        assert_whole(&r, len);
        assert_origin_saw_no_range(&origin);
    });
}

// ---------------------------------------------------------------------------------------
// 3. Ranges on a miss
// ---------------------------------------------------------------------------------------

#[test]
fn ranged_request_on_a_cold_miss_gets_206_and_stores_the_whole_object() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        let origin = Origin::start(routes);
        let len = 3_000_017;
        let path = format!("/obj/cold-range/{len}");
        let r = get_through(&proxy, &origin, &path, &["Range: bytes=1000-1999"]);
        assert_stored(&r);
        assert_partial(&r, 1000, 1999, len);

        wait_committed(proxy.dir(), 1);
        let next = fetch(proxy.addr(), get(&origin.authority(), &path));
        assert_hit(&next);
        assert_whole(&next, len);
        assert_origin_saw_no_range(&origin);
        assert_served(&origin, 1, 1);
    });
}

#[test]
fn ranged_request_on_a_slow_cold_miss_is_answered_before_the_fill_ends() {
    with_deadline(HEAVY_DEADLINE, || {
        let proxy = start_default();
        let origin = Origin::start(routes);
        let path = format!("/slow/early/{SLOW_LEN}");
        let r = get_through(&proxy, &origin, &path, &["Range: bytes=0-99"]);
        assert_partial(&r, 0, 99, SLOW_LEN);
        assert_eq!(
            origin.full_bodies(),
            0,
            "the 206 waited for the whole object"
        );
        // The fill still completes and is stored whole.
        assert!(
            wait_until(HEAVY_DEADLINE / 2, || origin.full_bodies() == 1),
            "the fill never completed"
        );
        wait_committed(proxy.dir(), 1);
        let next = get_through(&proxy, &origin, &path, &["Range: bytes=-10"]);
        assert_hit(&next);
        assert_partial(&next, SLOW_LEN - 10, SLOW_LEN - 1, SLOW_LEN);
        assert_origin_saw_no_range(&origin);
    });
}

// ---------------------------------------------------------------------------------------
// 4. Tart's retry: a download cut at N bytes, then `Range: bytes=N-`
// ---------------------------------------------------------------------------------------

/// Asserts the cut prefix and the resumed 206 reassemble to the exact blob.
fn assert_reassembles(first: &[u8], resumed: &Response, len: u64, digest: &str) {
    let n = first.len() as u64;
    assert_partial(resumed, n, len - 1, len);
    let mut v = Verifier::new();
    v.feed(first);
    v.feed(&resumed.body);
    v.assert_complete(len);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(first);
    ctx.update(&resumed.body);
    assert_eq!(hex(ctx.finish().as_ref()), digest, "reassembled sha256");
}

#[test]
fn tart_retry_cold_during_the_fill_reassembles_the_blob() {
    with_deadline(HEAVY_DEADLINE, || {
        let proxy = start_default();
        let digest = generated_sha256(SLOW_LEN);
        let origin = blob_origin(&digest, SLOW_LEN, SLOW_BLOCK_MS);
        let raw = get(&origin.authority(), &blob_path(&digest));

        let (head, first) = get_cut(proxy.addr(), &raw, CUT_AT);
        assert_eq!(head.status, 200);
        assert_eq!(origin.full_bodies(), 0, "the fill ended before the retry");
        let range = format!("Range: bytes={CUT_AT}-");
        let resumed = fetch(
            proxy.addr(),
            get_with(&origin.authority(), &blob_path(&digest), &[&range]),
        );
        let cs = cache_status(&resumed);
        assert!(
            cs.contains("collapsed"),
            "retry not served from the fill: {cs:?}"
        );
        assert_reassembles(&first, &resumed, SLOW_LEN, &digest);

        wait_committed(proxy.dir(), 1);
        assert_origin_saw_no_range(&origin);
        assert_served(&origin, 1, 1);
    });
}

#[test]
fn tart_retry_cold_after_the_fill_reassembles_the_blob() {
    with_deadline(HEAVY_DEADLINE, || {
        let proxy = start_default();
        let digest = generated_sha256(SLOW_LEN);
        let origin = blob_origin(&digest, SLOW_LEN, 0);
        let raw = get(&origin.authority(), &blob_path(&digest));

        let (head, first) = get_cut(proxy.addr(), &raw, CUT_AT);
        assert_eq!(head.status, 200);
        // The fill goes on without the client that started it.
        wait_committed(proxy.dir(), 1);
        let range = format!("Range: bytes={CUT_AT}-");
        let resumed = fetch(
            proxy.addr(),
            get_with(&origin.authority(), &blob_path(&digest), &[&range]),
        );
        assert_hit(&resumed);
        assert_reassembles(&first, &resumed, SLOW_LEN, &digest);
        assert_origin_saw_no_range(&origin);
        assert_served(&origin, 1, 1);
    });
}

#[test]
fn tart_retry_warm_reassembles_the_blob() {
    with_deadline(HEAVY_DEADLINE, || {
        let proxy = start_default();
        let digest = generated_sha256(SLOW_LEN);
        let origin = blob_origin(&digest, SLOW_LEN, 0);
        let raw = get(&origin.authority(), &blob_path(&digest));
        let warmup = fetch(proxy.addr(), &raw);
        assert_stored(&warmup);
        wait_committed(proxy.dir(), 1);

        let (head, first) = get_cut(proxy.addr(), &raw, CUT_AT);
        assert_eq!(head.status, 200);
        assert_eq!(head.header("cache-status"), Some("chacha; hit"));
        let range = format!("Range: bytes={CUT_AT}-");
        let resumed = fetch(
            proxy.addr(),
            get_with(&origin.authority(), &blob_path(&digest), &[&range]),
        );
        assert_hit(&resumed);
        assert_reassembles(&first, &resumed, SLOW_LEN, &digest);
        assert_origin_saw_no_range(&origin);
        assert_served(&origin, 1, 2);
    });
}

// ---------------------------------------------------------------------------------------
// 5. SHA-256-verified blob fills
// ---------------------------------------------------------------------------------------

/// Length of the blobs in the digest tests.
const BLOB_LEN: u64 = 2_000_003;

#[test]
fn blob_with_a_wrong_digest_is_not_stored_and_the_client_sees_an_abort() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        // The digest of one byte more than the origin serves.
        let wrong = generated_sha256(BLOB_LEN + 1);
        let origin = blob_origin(&wrong, BLOB_LEN, 0);
        let raw = get(&origin.authority(), &blob_path(&wrong));

        for attempt in 1..=2u64 {
            match common::request(proxy.addr(), &raw) {
                Err(common::ClientError::Truncated { head, body, .. }) => {
                    assert_eq!(head.status, 200, "attempt {attempt}");
                    assert_eq!(
                        head.header("content-length"),
                        Some(BLOB_LEN.to_string().as_str()),
                        "attempt {attempt}"
                    );
                    assert!((body.len() as u64) < BLOB_LEN, "attempt {attempt}");
                    assert_generated_at(&body, 0, body.len() as u64);
                }
                other => panic!("attempt {attempt}: expected an aborted body, got {other:?}"),
            }
            assert!(
                // This attempt's line, not the one before (each comes after its cut).
                proxy.wait_log_count(
                    "does not match its sha256 digest",
                    attempt as usize,
                    COMMIT_WAIT
                ),
                "no error logged"
            );
            assert!(
                wait_until(COMMIT_WAIT, || tmp_empty(proxy.dir())),
                "temp file left behind"
            );
            assert_eq!(entry_files(proxy.dir()), Vec::<PathBuf>::new(), "stored");
            // Each attempt went to the origin without validators: nothing was kept.
            let last = origin.last_request().unwrap();
            assert_eq!(last.header("if-none-match"), None, "attempt {attempt}");
            assert_served(&origin, attempt, 0);
        }
        assert_eq!(origin.requests_total(), 2);
    });
}

#[test]
fn blob_with_the_right_digest_is_stored() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        let digest = generated_sha256(BLOB_LEN);
        let origin = blob_origin(&digest, BLOB_LEN, 0);
        let raw = get(&origin.authority(), &blob_path(&digest));
        let first = fetch(proxy.addr(), &raw);
        assert_stored(&first);
        assert_whole(&first, BLOB_LEN);
        wait_committed(proxy.dir(), 1);
        let second = fetch(proxy.addr(), &raw);
        assert_hit(&second);
        assert_whole(&second, BLOB_LEN);
        assert_served(&origin, 1, 1);
        assert!(!proxy.log().contains("does not match its sha256 digest"));
    });
}

// ---------------------------------------------------------------------------------------
// 6. Registry redirect to presigned storage URLs
// ---------------------------------------------------------------------------------------

/// Size of the layer in the redirect test.
const LAYER_LEN: u64 = 4_000_037;
/// The bearer token the test registry accepts.
const TOKEN: &str = "test-token";

/// `examples/oci-test.yaml` with its placeholders replaced (the harness fills `@DIR@`).
fn oci_config(registry: &Origin, storage: &Origin, limit: &str) -> String {
    let escape = |a: String| a.replace('.', "\\.");
    include_str!("../examples/oci-test.yaml")
        .replace("@REGISTRY@", &escape(registry.authority()))
        .replace("@STORAGE@", &escape(storage.authority()))
        .replace("@LIMIT@", limit)
}

/// A fresh 64-bit random value (std's per-instance random hash keys).
fn random_u64() -> u64 {
    RandomState::new().hash_one(0u8)
}

/// A presigned URL on `storage` for blob `digest`, with a new date and signature.
fn presigned(storage: &str, digest: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "http://{storage}/blob/{digest}?X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=AKIA%2F20240101%2Fus-east-1%2Fs3%2Faws4_request\
         &X-Amz-Date={now}&X-Amz-Expires=300&X-Amz-SignedHeaders=host\
         &X-Amz-Signature={:016x}{:016x}",
        random_u64(),
        random_u64()
    )
}

#[test]
fn presigned_redirects_share_one_storage_entry() {
    const PULLS: u64 = 3;
    with_deadline(HEAVY_DEADLINE, || {
        let digest = generated_sha256(LAYER_LEN);
        let storage = {
            let etag = format!("\"{digest}\"");
            let path = format!("/blob/{digest}");
            Origin::start(move |req| {
                if req.path() != path {
                    return OResp::status(404);
                }
                validated(req, &etag, || OResp::generated(LAYER_LEN))
            })
        };
        let locations = Arc::new(Mutex::new(Vec::<String>::new()));
        let registry = {
            let (storage, digest) = (storage.authority(), digest.clone());
            let locations = locations.clone();
            Origin::start(move |req| {
                if req.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
                    return OResp::status(401)
                        .header("WWW-Authenticate", "Bearer realm=\"/token\"");
                }
                if req.path() != blob_path(&digest) {
                    return OResp::status(404);
                }
                let location = presigned(&storage, &digest);
                locations.lock().unwrap().push(location.clone());
                OResp::status(307)
                    .header("Location", &location)
                    .header("Cache-Control", "no-store")
            })
        };
        let proxy = Chacha::start(&oci_config(&registry, &storage, "100MB"));
        let auth = format!("Authorization: Bearer {TOKEN}");

        for pull in 1..=PULLS {
            let redirect = fetch(
                proxy.addr(),
                get_with(&registry.authority(), &blob_path(&digest), &[&auth]),
            );
            assert_eq!(redirect.status(), 307, "pull {pull}");
            let sent = locations.lock().unwrap().last().cloned().unwrap();
            assert_eq!(
                redirect.header("location"),
                Some(sent.as_str()),
                "pull {pull}: Location changed on the way"
            );
            let cs = cache_status(&redirect);
            assert!(
                cs.contains("fwd-status=307") && !cs.contains("stored"),
                "pull {pull}: redirect Cache-Status {cs:?}"
            );

            // The client follows the redirect through the proxy, as Tart does.
            let target = sent.strip_prefix("http://").unwrap();
            let path = &target[target.find('/').unwrap()..];
            let blob = fetch(proxy.addr(), get(&storage.authority(), path));
            assert_whole(&blob, LAYER_LEN);
            if pull == 1 {
                assert_stored(&blob);
                wait_committed(proxy.dir(), 1);
            } else {
                assert_hit(&blob);
            }
        }

        assert_eq!(
            registry.requests_total(),
            PULLS,
            "redirects are never cached"
        );
        // Every signature reached the storage origin, which served one body and 304s.
        let seen: Vec<String> = storage
            .requests()
            .iter()
            .map(|r| r.target.clone())
            .collect();
        let sent: Vec<String> = locations
            .lock()
            .unwrap()
            .iter()
            .map(|l| l[l.find("/blob/").unwrap()..].to_string())
            .collect();
        assert_eq!(
            seen, sent,
            "storage requests carry the presigned URLs as sent"
        );
        assert_served(&storage, 1, PULLS - 1);
        wait_committed(proxy.dir(), 1);
    });
}

/// An origin that cuts its first full response of `/cut/{len}` after `at` bytes and
/// answers `Range: bytes=N-` + a matching `If-Range` with the exact 206.
fn cutting_origin(at: u64) -> Origin {
    Origin::start(move |req| {
        let len: u64 = req.path().rsplit('/').next().unwrap().parse().unwrap();
        let etag = etag_of("cut", len);
        let body = gen::body(len as usize);
        if let (Some(range), Some(if_range)) = (req.header("range"), req.header("if-range")) {
            if if_range == etag {
                let start: u64 = range
                    .trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse()
                    .unwrap();
                return OResp::new(
                    206,
                    common::origin::Body::Full(body[start as usize..].to_vec()),
                )
                .header("ETag", &etag)
                .header("Content-Range", &format!("bytes {start}-{}/{len}", len - 1));
            }
        }
        validated(req, &etag, || {
            OResp::ok(body)
                .header("ETag", &etag)
                .fault(common::origin::Fault::AbortBodyAfter(at))
        })
    })
}

#[test]
fn a_fill_cut_by_the_origin_resumes_with_a_range_and_the_client_gets_every_byte() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        let at = 1_000_003u64;
        let origin = cutting_origin(at);
        let len = 3u64 << 20;
        let path = format!("/cut/{len}");
        let first = fetch(proxy.addr(), get(&origin.authority(), &path));
        assert_eq!(first.status(), 200);
        assert_eq!(
            first.body.len() as u64,
            len,
            "the client got the whole body"
        );
        assert_eq!(first.body, gen::body(len as usize));
        let reqs = origin.requests();
        assert_eq!(reqs.len(), 2, "one cut request and one resume");
        assert_eq!(
            reqs[1].header("range"),
            Some(format!("bytes={at}-").as_str())
        );
        assert_eq!(
            reqs[1].header("if-range"),
            Some(etag_of("cut", len).as_str())
        );
        // Stored whole: the next request is a hit.
        let second = fetch(proxy.addr(), get(&origin.authority(), &path));
        assert_hit(&second);
        assert_eq!(second.body, gen::body(len as usize));
    });
}
