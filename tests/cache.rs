//! Issue 3: the disk cache, tested against the real binary. Chacha validates every request
//! with the origin; these tests watch what the origin was asked (conditional or not) and
//! what it served (full bodies, 304s), the `Cache-Status` field (RFC 9211) chacha adds, the
//! cache directory on disk, and chacha's memory.

mod common;

use common::cached::{
    assert_hit, assert_served, assert_stored, cache_status, entry_files, etag_of, fetch, wait_until,
};

use common::gen::Verifier;
use common::origin::{Fault, Request as OReq, Response as OResp};
use common::{get, get_with, request_with, with_deadline, Chacha, Conn, Head, Origin, Response};
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// Deadline for an ordinary test.
const DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for the concurrency tests that move hundreds of MiB.
const HEAVY_DEADLINE: Duration = Duration::from_secs(90);
/// Last-Modified of every test object.
const LAST_MODIFIED: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
/// How often the cache dir size and chacha's RSS are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// How long to wait for a fill to be committed after its response ended.
const COMMIT_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A config with the cache on: ephemeral port, `workers` cores, `limit`, and `extra`
/// top-level YAML appended.
fn cache_config(workers: u32, limit: &str, extra: &str) -> String {
    format!(
        "addr: 127.0.0.1:0\nworkers: {workers}\ndisk:\n  dir: \"{}\"\n  limit: {limit}\n{extra}",
        common::chacha::DIR_PLACEHOLDER
    )
}

fn start_default() -> Chacha {
    Chacha::start(&cache_config(1, "100MB", ""))
}

/// Whether the request's conditionals match the object's validators: If-None-Match
/// against the ETag; If-Modified-Since only without If-None-Match (RFC 9110 §13.2.2), and
/// as the exact stored date (what a cache echoes back).
fn matches_conditional(req: &OReq, etag: Option<&str>, last_modified: Option<&str>) -> bool {
    if let Some(inm) = req.header("if-none-match") {
        let Some(etag) = etag else { return false };
        inm.split(',').map(str::trim).any(|t| t == "*" || t == etag)
    } else if let Some(ims) = req.header("if-modified-since") {
        last_modified.is_some_and(|lm| ims.trim() == lm)
    } else {
        false
    }
}

/// 304 when the conditionals match, otherwise `full()`; both carry the validators
/// (RFC 9110 §15.4.5: a 304 repeats ETag and friends).
fn validated(
    req: &OReq,
    etag: Option<&str>,
    last_modified: Option<&str>,
    full: impl FnOnce() -> OResp,
) -> OResp {
    let mut resp = if matches_conditional(req, etag, last_modified) {
        OResp::status(304)
    } else {
        full()
    };
    if let Some(e) = etag {
        resp = resp.header("ETag", e);
    }
    if let Some(lm) = last_modified {
        resp = resp.header("Last-Modified", lm);
    }
    resp
}

/// Cacheable objects (query ignored):
/// - `/obj/{name}/{len}`: generated body, ETag [`etag_of`] and [`LAST_MODIFIED`];
/// - `/obj-lm/{name}/{len}`: the same with Last-Modified only;
/// - `/slow/{name}/{len}/{ms}`: like `/obj`, sleeping `ms` between 64 KB blocks.
fn routes(req: &OReq) -> OResp {
    let path = req.path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let num = |i: usize| -> u64 { parts.get(i).and_then(|p| p.parse().ok()).unwrap_or(0) };
    let name = parts.get(1).copied().unwrap_or("");
    match parts[0] {
        "obj" => validated(
            req,
            Some(&etag_of(name, num(2))),
            Some(LAST_MODIFIED),
            || OResp::generated(num(2)),
        ),
        "obj-lm" => validated(req, None, Some(LAST_MODIFIED), || OResp::generated(num(2))),
        "slow" => validated(
            req,
            Some(&etag_of(name, num(2))),
            Some(LAST_MODIFIED),
            || OResp::generated(num(2)).chunk_delay(Duration::from_millis(num(3))),
        ),
        _ => OResp::status(404),
    }
}

/// The value of the `detail` parameter of a Cache-Status value, if any.
fn detail(status: &str) -> Option<&str> {
    status
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("detail="))
}

/// Asserts `body` is exactly the first `len` bytes of the generated pattern.
fn assert_generated(body: &[u8], len: u64) {
    let mut v = Verifier::new();
    v.feed(body);
    v.assert_complete(len);
}

/// Asserts the response carries `Content-Length` equal to its body length.
fn assert_content_length(resp: &Response) {
    assert_eq!(
        resp.header("content-length"),
        Some(resp.body.len().to_string().as_str()),
        "Content-Length must equal the body length"
    );
}

/// Whether the origin request carried a conditional header.
fn is_conditional(req: &OReq) -> bool {
    req.header("if-none-match").is_some() || req.header("if-modified-since").is_some()
}

/// Asserts the origin served `full` complete 200 bodies.
fn assert_full_bodies(origin: &Origin, full: u64) {
    assert_eq!(origin.settled().full_bodies, full, "origin full bodies");
}

/// Sizes of the regular files under `dir` by inode (files vanishing mid-walk ignored).
fn file_sizes(dir: &Path, out: &mut std::collections::HashMap<u64, u64>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            file_sizes(&entry.path(), out);
        } else if ft.is_file() {
            if let Ok(m) = entry.metadata() {
                out.insert(m.ino(), m.len());
            }
        }
    }
}

/// Bytes in the files under `dir` at one moment, as far as a directory walk can tell.
/// One walk is not a snapshot: an evicted file seen early plus the fill that replaced it
/// seen later would add up to more than ever existed at once. So the dir is walked twice
/// and only files (by inode, so a rename from `tmp/` counts once) present in both walks
/// are summed, each at its smaller size: those all existed, at least that large, at the
/// end of the first walk.
fn dir_bytes(dir: &Path) -> u64 {
    let (mut first, mut second) = Default::default();
    file_sizes(dir, &mut first);
    file_sizes(dir, &mut second);
    first
        .iter()
        .filter_map(|(ino, a)| second.get(ino).map(|b| (*a).min(*b)))
        .sum()
}

/// Waits until `dir` holds `n` committed entries and no temp file: a fill's response can
/// reach the client before its entry is renamed into place.
fn wait_committed(dir: &Path, n: usize) {
    let tmp_empty = || {
        std::fs::read_dir(dir.join("tmp"))
            .map(|mut r| r.next().is_none())
            .unwrap_or(true)
    };
    assert!(
        wait_until(COMMIT_WAIT, || entry_files(dir).len() == n && tmp_empty()),
        "expected {n} committed entries and an empty tmp/, found {:?}",
        entry_files(dir)
    );
}

/// Samples `measure` every [`SAMPLE_EVERY`] on its own thread, keeping the peak.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(measure: impl Fn() -> Option<u64> + Send + 'static) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let handle = {
            let (stop, peak, samples) = (stop.clone(), peak.clone(), samples.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(v) = measure() {
                        peak.fetch_max(v, Ordering::SeqCst);
                        samples.fetch_add(1, Ordering::SeqCst);
                    }
                    // The sampling period, not synchronisation: nothing waits on it.
                    thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Sampler {
            stop,
            peak,
            samples,
            handle: Some(handle),
        }
    }

    /// Stops sampling; returns (peak, number of samples).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        (
            self.peak.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What one client of a concurrent test saw.
#[derive(Debug)]
struct Timed {
    head: Option<Head>,
    /// From sending the request to the first body byte.
    ttfb: Option<Duration>,
    /// Body bytes received and whether they were all correct.
    len: u64,
    mismatch: Option<u64>,
    /// Set when the response did not complete.
    error: Option<String>,
}

impl Timed {
    fn cache_status(&self) -> String {
        self.head
            .as_ref()
            .and_then(|h| h.header("cache-status"))
            .unwrap_or("<none>")
            .to_string()
    }
    fn assert_complete(&self, len: u64) {
        assert!(self.error.is_none(), "client failed: {self:?}");
        assert_eq!(self.head.as_ref().map(|h| h.status), Some(200));
        assert_eq!(self.mismatch, None, "corrupted body: {self:?}");
        assert_eq!(self.len, len, "body length");
    }
}

/// Sends `raw` (a GET for a generated body) and streams the body through a verifier.
fn timed_get(addr: SocketAddr, raw: &str) -> Timed {
    timed_get_counting(addr, raw, &AtomicU64::new(0))
}

/// [`timed_get`], adding 1 to `heads` once the response head arrived (a signal for the
/// test that the client is now reading the body).
fn timed_get_counting(addr: SocketAddr, raw: &str, heads: &AtomicU64) -> Timed {
    let start = Instant::now();
    let mut conn = Conn::connect(addr);
    let mut out = Timed {
        head: None,
        ttfb: None,
        len: 0,
        mismatch: None,
        error: None,
    };
    if let Err(e) = conn.send(raw) {
        out.error = Some(format!("send: {e}"));
        return out;
    }
    let head = match conn.read_head("GET") {
        Ok(h) => h,
        Err(e) => {
            out.error = Some(format!("head: {e:?}"));
            return out;
        }
    };
    heads.fetch_add(1, Ordering::SeqCst);
    let mut v = Verifier::new();
    let mut ttfb = None;
    let result = conn.read_body_with(&head, &mut |b| {
        if ttfb.is_none() && !b.is_empty() {
            ttfb = Some(start.elapsed());
        }
        v.feed(b);
    });
    out.head = Some(head);
    out.ttfb = ttfb;
    out.len = v.len();
    out.mismatch = v.first_mismatch();
    if let Err(t) = result {
        out.error = Some(format!("body: {}", t.error));
    }
    out
}

// ---------------------------------------------------------------------------------------
// 1. Fill, revalidation, hit
// ---------------------------------------------------------------------------------------

#[test]
fn cold_request_is_stored_and_warm_request_revalidates_with_etag_and_hits() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        let origin = Origin::start(routes);
        let (path, len) = ("/obj/a/100003", 100_003);

        let cold = fetch(proxy.addr(), get(&origin.authority(), path));
        assert_eq!(cold.status(), 200);
        assert_generated(&cold.body, len);
        assert_stored(&cold);
        assert!(
            cache_status(&cold).contains("fwd=miss"),
            "cold: {}",
            cache_status(&cold)
        );

        let warm = fetch(proxy.addr(), get(&origin.authority(), path));
        assert_eq!(warm.status(), 200);
        assert_hit(&warm);
        assert!(warm.body == cold.body, "hit body differs from the fill");
        let seen = origin.requests();
        assert_eq!(seen.len(), 2, "every request goes to the origin");
        assert!(!is_conditional(&seen[0]), "cold request was conditional");
        assert_eq!(
            seen[1].header("if-none-match"),
            Some(etag_of("a", len).as_str()),
            "warm request must carry the stored ETag"
        );
        assert_served(&origin, 1, 1);
    });
}

#[test]
fn last_modified_only_entry_revalidates_with_if_modified_since() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        let origin = Origin::start(routes);
        let path = "/obj-lm/b/5000";
        let cold = fetch(proxy.addr(), get(&origin.authority(), path));
        assert_stored(&cold);
        let warm = fetch(proxy.addr(), get(&origin.authority(), path));
        assert_hit(&warm);
        assert_generated(&warm.body, 5000);
        let seen = origin.last_request().unwrap();
        assert_eq!(seen.header("if-modified-since"), Some(LAST_MODIFIED));
        assert_eq!(seen.header("if-none-match"), None);
        assert_served(&origin, 1, 1);
    });
}

#[test]
fn hit_carries_stored_headers_updated_by_304_and_exact_content_length() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        let etag = "\"h1\"";
        let origin = Origin::start(move |req| {
            if matches_conditional(req, Some(etag), None) {
                // RFC 9111 §4.3.4: the 304's fields update the stored ones.
                OResp::status(304)
                    .header("ETag", etag)
                    .header("X-Meta", "second")
            } else {
                OResp::ok(&b"header test body"[..])
                    .header("ETag", etag)
                    .header("Last-Modified", LAST_MODIFIED)
                    .header("Content-Type", "text/x-cached")
                    .header("X-Meta", "first")
            }
        });
        let cold = fetch(proxy.addr(), get(&origin.authority(), "/h"));
        assert_stored(&cold);
        let warm = fetch(proxy.addr(), get(&origin.authority(), "/h"));
        assert_hit(&warm);
        assert_eq!(warm.body, b"header test body");
        assert_content_length(&warm);
        assert_eq!(warm.header("content-type"), Some("text/x-cached"));
        assert_eq!(warm.header("etag"), Some(etag));
        assert_eq!(warm.header("last-modified"), Some(LAST_MODIFIED));
        assert_eq!(
            warm.header("x-meta"),
            Some("second"),
            "stored header not updated by the 304"
        );
    });
}

#[test]
fn stored_entry_is_one_file_in_a_fanout_dir_and_tmp_is_left_empty() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        let origin = Origin::start(routes);
        let len = 200_000u64;
        let resp = fetch(proxy.addr(), get(&origin.authority(), "/obj/f/200000"));
        assert_stored(&resp);
        let dir = proxy.dir().to_path_buf();
        assert!(
            wait_until(COMMIT_WAIT, || entry_files(&dir).len() == 1),
            "expected one entry file dir/<2 hex>/<16 hex>, found {:?}",
            entry_files(&dir)
        );
        let file = &entry_files(&dir)[0];
        let size = std::fs::metadata(file).unwrap().len();
        assert!(size >= len, "entry file {size} bytes < body {len}");
        let tmp = dir.join("tmp");
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "temp files left behind: {left:?}");
    });
}

// ---------------------------------------------------------------------------------------
// 2. Restart
// ---------------------------------------------------------------------------------------

#[test]
fn entries_survive_a_restart() {
    with_deadline(DEADLINE, || {
        let mut proxy = start_default();
        let origin = Origin::start(routes);
        let path = "/obj/r/300000";
        let cold = fetch(proxy.addr(), get(&origin.authority(), path));
        assert_stored(&cold);
        let dir = proxy.dir().to_path_buf();
        assert!(wait_until(COMMIT_WAIT, || entry_files(&dir).len() == 1));
        let addr = proxy.restart();
        let warm = fetch(addr, get(&origin.authority(), path));
        assert_hit(&warm);
        assert!(warm.body == cold.body, "body after restart differs");
        assert_eq!(
            origin.last_request().unwrap().header("if-none-match"),
            Some(etag_of("r", 300_000).as_str())
        );
        assert_served(&origin, 1, 1);
    });
}

// ---------------------------------------------------------------------------------------
// 3. Not storable (and the two Authorization exceptions)
// ---------------------------------------------------------------------------------------

/// Path used by the storability tests.
const P: &str = "/p";

/// A body with a strong ETag, plus `headers`; answers a matching If-None-Match with 304.
fn etag_origin(headers: &'static [(&'static str, &'static str)]) -> Origin {
    Origin::start(move |req| {
        let mut r = validated(req, Some("\"p1\""), None, || OResp::ok(&b"p-body"[..]));
        for (n, v) in headers {
            r = r.header(n, v);
        }
        r
    })
}

/// Sends `first` (built from the origin authority), then a plain GET for [`P`]. Asserts
/// the first's Cache-Status names `fwd` and `detail` (the second's too when
/// `both_show_detail`), and that the origin saw two unconditional requests, i.e. nothing
/// was stored by the first. Returns the responses.
fn assert_not_stored(
    origin: &Origin,
    first: impl Fn(&str) -> String,
    fwd: &str,
    want_detail: &str,
    both_show_detail: bool,
) -> (Response, Response) {
    let proxy = start_default();
    let auth = origin.authority();
    let r1 = fetch(proxy.addr(), first(&auth));
    let r2 = fetch(proxy.addr(), get(&auth, P));
    let check = |r: &Response| {
        let cs = cache_status(r);
        assert!(
            cs.starts_with("chacha;") && cs.contains(&format!("fwd={fwd}")),
            "Cache-Status {cs:?} lacks fwd={fwd}"
        );
        let d = detail(&cs).unwrap_or("");
        assert!(
            d == want_detail || d.ends_with(&format!("-{want_detail}")),
            "Cache-Status {cs:?}: detail is not {want_detail:?}"
        );
    };
    check(&r1);
    if both_show_detail {
        check(&r2);
    }
    let seen = origin.requests();
    assert_eq!(seen.len(), 2, "both requests reach the origin");
    for (i, req) in seen.iter().enumerate() {
        assert!(
            !is_conditional(req),
            "request {i} was conditional, so something was stored: {req:?}"
        );
    }
    (r1, r2)
}

#[test]
fn authorization_without_public_is_not_stored() {
    with_deadline(DEADLINE, || {
        let origin = etag_origin(&[]);
        assert_not_stored(
            &origin,
            |a| get_with(a, P, &["Authorization: Bearer secret"]),
            "uri-miss",
            "authorization",
            false,
        );
        assert_full_bodies(&origin, 2);
    });
}

#[test]
fn request_no_store_is_not_stored() {
    with_deadline(DEADLINE, || {
        let origin = etag_origin(&[]);
        assert_not_stored(
            &origin,
            |a| get_with(a, P, &["Cache-Control: no-store"]),
            "uri-miss",
            "no-store",
            false,
        );
        assert_full_bodies(&origin, 2);
    });
}

#[test]
fn response_no_store_is_not_stored() {
    with_deadline(DEADLINE, || {
        let origin = etag_origin(&[("Cache-Control", "no-store")]);
        assert_not_stored(&origin, |a| get(a, P), "uri-miss", "no-store", true);
        assert_full_bodies(&origin, 2);
    });
}

#[test]
fn response_private_is_not_stored() {
    with_deadline(DEADLINE, || {
        let origin = etag_origin(&[("Cache-Control", "private, max-age=60")]);
        assert_not_stored(&origin, |a| get(a, P), "uri-miss", "private", true);
        assert_full_bodies(&origin, 2);
    });
}

#[test]
fn request_pragma_no_cache_is_not_stored() {
    with_deadline(DEADLINE, || {
        let origin = etag_origin(&[]);
        assert_not_stored(
            &origin,
            |a| get_with(a, P, &["Pragma: no-cache"]),
            "uri-miss",
            "pragma",
            false,
        );
        assert_full_bodies(&origin, 2);
    });
}

#[test]
fn response_with_vary_is_not_stored() {
    with_deadline(DEADLINE, || {
        let origin = etag_origin(&[("Vary", "Accept-Encoding")]);
        assert_not_stored(&origin, |a| get(a, P), "uri-miss", "vary", true);
        assert_full_bodies(&origin, 2);
    });
}

#[test]
fn response_without_validator_is_not_stored() {
    with_deadline(DEADLINE, || {
        let origin = Origin::start(|_| OResp::ok(&b"no validator"[..]));
        assert_not_stored(&origin, |a| get(a, P), "uri-miss", "no-validator", true);
        assert_full_bodies(&origin, 2);
    });
}

#[test]
fn post_is_not_stored() {
    with_deadline(DEADLINE, || {
        let origin = etag_origin(&[]);
        let (r1, _) = assert_not_stored(
            &origin,
            |a| request_with("POST", a, P, &[], b"form=1"),
            "method",
            "method",
            false,
        );
        assert_eq!(r1.status(), 200);
        assert_eq!(origin.requests()[0].method, "POST");
        assert_full_bodies(&origin, 2);
    });
}

#[test]
fn status_404_is_not_stored() {
    with_deadline(DEADLINE, || {
        let origin = Origin::start(|_| {
            // A 404 with a body and validators: only the status makes it unstorable.
            let mut r = OResp::ok(&b"missing"[..])
                .header("ETag", "\"nf\"")
                .header("Last-Modified", LAST_MODIFIED);
            r.status = 404;
            r.reason = "Not Found".into();
            r
        });
        let (r1, r2) = assert_not_stored(&origin, |a| get(a, P), "uri-miss", "status", true);
        assert_eq!((r1.status(), r2.status()), (404, 404));
        assert_eq!(r2.body, b"missing");
        assert!(cache_status(&r1).contains("fwd-status=404"));
    });
}

#[test]
fn authorization_with_cache_control_public_is_stored() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        let origin = etag_origin(&[("Cache-Control", "public")]);
        let raw = get_with(&origin.authority(), P, &["Authorization: Bearer secret"]);
        let cold = fetch(proxy.addr(), &raw);
        assert_stored(&cold);
        let warm = fetch(proxy.addr(), &raw);
        assert_hit(&warm);
        assert_eq!(warm.body, b"p-body");
        assert_eq!(
            origin.last_request().unwrap().header("if-none-match"),
            Some("\"p1\"")
        );
        assert_served(&origin, 1, 1);
    });
}

#[test]
fn authorization_with_rule_ignore_authorization_header_is_stored() {
    with_deadline(DEADLINE, || {
        let rules =
            "rules:\n  - pattern: '127\\.0\\.0\\.1'\n    ignore-authorization-header: true\n";
        let proxy = Chacha::start(&cache_config(1, "100MB", rules));
        let origin = etag_origin(&[]);
        let raw = get_with(&origin.authority(), P, &["Authorization: Bearer secret"]);
        let cold = fetch(proxy.addr(), &raw);
        assert_stored(&cold);
        let warm = fetch(proxy.addr(), &raw);
        assert_hit(&warm);
        assert_eq!(warm.body, b"p-body");
        assert_served(&origin, 1, 1);
    });
}

#[test]
fn object_larger_than_the_limit_is_not_stored() {
    with_deadline(DEADLINE, || {
        let proxy = Chacha::start(&cache_config(1, "1MB", ""));
        let origin = Origin::start(routes);
        let len = 2_000_000;
        for _ in 0..2 {
            let r = fetch(proxy.addr(), get(&origin.authority(), "/obj/big/2000000"));
            assert_generated(&r.body, len);
            let cs = cache_status(&r);
            assert_eq!(detail(&cs), Some("too-large"), "Cache-Status {cs:?}");
        }
        assert!(origin.requests().iter().all(|r| !is_conditional(r)));
        assert_full_bodies(&origin, 2);
        assert!(dir_bytes(proxy.dir()) <= 1_000_000);
    });
}

#[test]
fn without_disk_config_nothing_is_cached() {
    with_deadline(DEADLINE, || {
        let proxy = Chacha::start("addr: 127.0.0.1:0\nworkers: 1\n");
        let origin = Origin::start(routes);
        for _ in 0..2 {
            let r = fetch(proxy.addr(), get(&origin.authority(), "/obj/n/1000"));
            assert_eq!(r.status(), 200);
            assert_generated(&r.body, 1000);
        }
        assert!(origin.requests().iter().all(|r| !is_conditional(r)));
        assert_full_bodies(&origin, 2);
    });
}

// ---------------------------------------------------------------------------------------
// 4. Cache key
// ---------------------------------------------------------------------------------------

#[test]
fn ignored_parameter_does_not_split_the_entry() {
    with_deadline(DEADLINE, || {
        let rules =
            "rules:\n  - pattern: '127\\.0\\.0\\.1'\n    ignore-parameters:\n      - X-Amz-Signature\n";
        let proxy = Chacha::start(&cache_config(1, "100MB", rules));
        let origin = Origin::start(routes);
        let auth = origin.authority();
        let first = fetch(
            proxy.addr(),
            get(&auth, "/obj/s/4000?X-Amz-Expires=60&X-Amz-Signature=aaaa"),
        );
        assert_stored(&first);
        let second = fetch(
            proxy.addr(),
            get(&auth, "/obj/s/4000?X-Amz-Expires=60&X-Amz-Signature=bbbb"),
        );
        assert_hit(&second);
        assert_generated(&second.body, 4000);
        let seen = origin.last_request().unwrap();
        assert_eq!(
            seen.target, "/obj/s/4000?X-Amz-Expires=60&X-Amz-Signature=bbbb",
            "the client's own URL (with its signature) goes to the origin"
        );
        assert_eq!(
            seen.header("if-none-match"),
            Some(etag_of("s", 4000).as_str())
        );
        assert_served(&origin, 1, 1);
    });
}

#[test]
fn parameter_order_does_not_split_the_entry() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        let origin = Origin::start(routes);
        let auth = origin.authority();
        let first = fetch(proxy.addr(), get(&auth, "/obj/o/4000?b=2&a=1"));
        assert_stored(&first);
        let second = fetch(proxy.addr(), get(&auth, "/obj/o/4000?a=1&b=2"));
        assert_hit(&second);
        assert_generated(&second.body, 4000);
        // A different value is a different entry.
        let third = fetch(proxy.addr(), get(&auth, "/obj/o/4000?a=1&b=3"));
        assert_stored(&third);
        assert!(cache_status(&third).contains("fwd=miss"));
        assert_served(&origin, 2, 1);
    });
}

// ---------------------------------------------------------------------------------------
// 5, 6. Validation outcomes other than 304
// ---------------------------------------------------------------------------------------

/// Origin whose one object switches between states set by the test.
struct Switch {
    /// 0: 200 with ETag "v1"; 1: `gone_status`; 2: 200 with ETag "v2" and another body.
    state: Arc<AtomicU64>,
    origin: Origin,
}

const V1_BODY: &[u8] = b"version one of the object";
const V2_BODY: &[u8] = b"version TWO of the object, longer";

fn switch_origin(gone_status: u16) -> Switch {
    let state = Arc::new(AtomicU64::new(0));
    let s = state.clone();
    let origin = Origin::start(move |req| match s.load(Ordering::SeqCst) {
        0 => validated(req, Some("\"v1\""), None, || OResp::ok(V1_BODY)),
        1 => {
            let mut r = OResp::ok(&b"gone"[..]);
            r.status = gone_status;
            r.reason = "Gone".into();
            r
        }
        _ => validated(req, Some("\"v2\""), None, || OResp::ok(V2_BODY)),
    });
    Switch { state, origin }
}

fn assert_error_status_drops_entry(gone_status: u16) {
    let proxy = start_default();
    let sw = switch_origin(gone_status);
    let auth = sw.origin.authority();
    assert_stored(&fetch(proxy.addr(), get(&auth, "/x")));
    wait_committed(proxy.dir(), 1);
    assert_hit(&fetch(proxy.addr(), get(&auth, "/x")));

    sw.state.store(1, Ordering::SeqCst);
    let gone = fetch(proxy.addr(), get(&auth, "/x"));
    assert_eq!(gone.status(), gone_status);
    assert_eq!(gone.body, b"gone", "the origin's error is relayed");
    assert_eq!(
        sw.origin.last_request().unwrap().header("if-none-match"),
        Some("\"v1\""),
        "the entry was validated"
    );

    sw.state.store(0, Ordering::SeqCst);
    let again = fetch(proxy.addr(), get(&auth, "/x"));
    assert_eq!(again.body, V1_BODY);
    let cs = cache_status(&again);
    assert!(
        cs.contains("fwd=miss") && cs.contains("stored"),
        "after a {gone_status} the entry must be gone, Cache-Status {cs:?}"
    );
    assert!(
        !is_conditional(&sw.origin.last_request().unwrap()),
        "a dropped entry must not be revalidated"
    );
    assert_full_bodies(&sw.origin, 2);
}

#[test]
fn status_404_drops_the_entry() {
    with_deadline(DEADLINE, || assert_error_status_drops_entry(404));
}

#[test]
fn status_410_drops_the_entry() {
    with_deadline(DEADLINE, || assert_error_status_drops_entry(410));
}

#[test]
fn new_etag_replaces_the_entry() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        let sw = switch_origin(404);
        let auth = sw.origin.authority();
        assert_stored(&fetch(proxy.addr(), get(&auth, "/x")));
        // The race of a request right behind the fill is tested separately below.
        wait_committed(proxy.dir(), 1);

        sw.state.store(2, Ordering::SeqCst);
        let replaced = fetch(proxy.addr(), get(&auth, "/x"));
        assert_eq!(replaced.body, V2_BODY);
        let cs = cache_status(&replaced);
        assert!(
            cs.contains("fwd=stale") && cs.contains("stored"),
            "Cache-Status {cs:?}"
        );
        assert_eq!(
            sw.origin.last_request().unwrap().header("if-none-match"),
            Some("\"v1\"")
        );

        let hit = fetch(proxy.addr(), get(&auth, "/x"));
        assert_hit(&hit);
        assert_eq!(hit.body, V2_BODY);
        assert_content_length(&hit);
        assert_eq!(hit.header("etag"), Some("\"v2\""));
        assert_eq!(
            sw.origin.last_request().unwrap().header("if-none-match"),
            Some("\"v2\"")
        );
        assert_served(&sw.origin, 2, 1);
    });
}

/// Objects the race test fills and replaces, one after the other.
const RACE_ROUNDS: usize = 20;

#[test]
fn replacement_right_after_a_completed_fill_is_stored() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        // One object per round: version 1 until its first request completed, then 2.
        let version: Arc<std::sync::Mutex<std::collections::HashMap<String, u8>>> =
            Default::default();
        let origin = {
            let version = version.clone();
            Origin::start(move |req| {
                let v = *version.lock().unwrap().get(req.path()).unwrap_or(&1);
                let etag = format!("\"v{v}\"");
                validated(req, Some(&etag), None, || {
                    OResp::ok(format!("version {v} of {}", req.path()))
                })
            })
        };
        let auth = origin.authority();
        let mut failures = Vec::new();
        for round in 0..RACE_ROUNDS {
            let path = format!("/race/{round}");
            assert_stored(&fetch(proxy.addr(), get(&auth, &path)));
            // The client has the whole first response; the origin now has version 2.
            version.lock().unwrap().insert(path.clone(), 2);
            let second = fetch(proxy.addr(), get(&auth, &path));
            assert_eq!(second.body_str(), format!("version 2 of {path}"));
            let cs = cache_status(&second);
            if !(cs.contains("fwd=stale") && cs.contains("stored")) {
                failures.push(format!("round {round}: {cs}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {RACE_ROUNDS} replacements right after a completed fill were not stored: {failures:?}",
            failures.len()
        );
    });
}

// ---------------------------------------------------------------------------------------
// 7. The client's own conditionals
// ---------------------------------------------------------------------------------------

#[test]
fn client_if_none_match_equal_to_entry_gets_304_without_body() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        let origin = Origin::start(routes);
        let auth = origin.authority();
        let etag = etag_of("c", 7000);
        assert_stored(&fetch(proxy.addr(), get(&auth, "/obj/c/7000")));
        let inm = format!("If-None-Match: {etag}");
        let mut conn = Conn::connect(proxy.addr());
        let resp = conn
            .request(get_with(&auth, "/obj/c/7000", &[&inm]))
            .expect("response");
        assert_eq!(resp.status(), 304);
        assert!(resp.body.is_empty());
        assert_hit(&resp);
        assert_eq!(resp.header("etag"), Some(etag.as_str()));
        // No body bytes may follow a 304: the next response on the connection parses.
        let next = conn
            .request(get(&auth, "/obj/c/7000"))
            .expect("second response on the connection");
        assert_generated(&next.body, 7000);
        assert_full_bodies(&origin, 1);
    });
}

#[test]
fn client_conditional_is_replaced_by_the_entry_validator() {
    with_deadline(DEADLINE, || {
        let proxy = start_default();
        let origin = Origin::start(routes);
        let auth = origin.authority();
        assert_stored(&fetch(proxy.addr(), get(&auth, "/obj/d/7000")));
        let resp = fetch(
            proxy.addr(),
            get_with(
                &auth,
                "/obj/d/7000",
                &[
                    "If-None-Match: \"something-else\"",
                    "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT",
                ],
            ),
        );
        assert_eq!(resp.status(), 200);
        assert_hit(&resp);
        assert_generated(&resp.body, 7000);
        let seen = origin.last_request().unwrap();
        assert_eq!(
            seen.header("if-none-match"),
            Some(etag_of("d", 7000).as_str()),
            "the origin must see the entry's ETag, not the client's"
        );
        assert_served(&origin, 1, 1);
    });
}

// ---------------------------------------------------------------------------------------
// 8. Size limit and LRU eviction
// ---------------------------------------------------------------------------------------

/// `disk.limit` of the eviction test, as configured and in bytes (SI: 10 × 1000²).
const EVICT_LIMIT: &str = "10MB";
const EVICT_LIMIT_BYTES: u64 = 10_000_000;
const EVICT_OBJECTS: usize = 30;
const EVICT_OBJECT_LEN: u64 = 1 << 20;

#[test]
fn eviction_keeps_dir_under_limit_and_drops_least_recently_used() {
    with_deadline(DEADLINE, || {
        let proxy = Chacha::start(&cache_config(1, EVICT_LIMIT, ""));
        let origin = Origin::start(routes);
        let auth = origin.authority();
        let path = |i: usize| format!("/obj/e{i}/{EVICT_OBJECT_LEN}");
        let dir = proxy.dir().to_path_buf();
        let sampler = {
            let dir = dir.clone();
            Sampler::start(move || Some(dir_bytes(&dir)))
        };
        let mut peak_sync = 0;
        // (object just stored, dir bytes) whenever a sample right after a response was over.
        let mut over = Vec::new();
        for i in 0..EVICT_OBJECTS {
            let r = fetch(proxy.addr(), get(&auth, &path(i)));
            assert_stored(&r);
            assert_generated(&r.body, EVICT_OBJECT_LEN);
            let now = dir_bytes(&dir);
            peak_sync = peak_sync.max(now);
            if now > EVICT_LIMIT_BYTES {
                over.push((i, now));
            }
            // Keep object 0 recently used: LRU must keep it, FIFO would not.
            if i % 3 == 2 {
                let touch = fetch(proxy.addr(), get(&auth, &path(0)));
                assert_hit(&touch);
            }
        }
        let (peak, samples) = sampler.finish();
        eprintln!("cache dir peak {peak} bytes over {samples} samples (limit {EVICT_LIMIT_BYTES})");
        assert!(samples > 0, "no dir size sample taken");
        assert!(
            peak.max(peak_sync) <= EVICT_LIMIT_BYTES,
            "cache dir reached {} bytes > limit {EVICT_LIMIT_BYTES}; over the limit right after \
             storing objects (index, bytes): {over:?}",
            peak.max(peak_sync)
        );
        assert!(
            peak_sync > EVICT_LIMIT_BYTES / 2,
            "cache dir only {peak_sync} bytes: is it filling at all?"
        );

        for i in [EVICT_OBJECTS - 1, EVICT_OBJECTS - 2, EVICT_OBJECTS - 3, 0] {
            let r = fetch(proxy.addr(), get(&auth, &path(i)));
            assert_hit(&r);
            assert_generated(&r.body, EVICT_OBJECT_LEN);
        }
        for i in 1..4 {
            let before = origin.full_bodies();
            let r = fetch(proxy.addr(), get(&auth, &path(i)));
            let cs = cache_status(&r);
            assert!(
                cs.contains("fwd=miss") && cs.contains("stored"),
                "object {i} should have been evicted, Cache-Status {cs:?}"
            );
            assert!(!is_conditional(&origin.last_request().unwrap()));
            assert_full_bodies(&origin, before + 1);
            assert_generated(&r.body, EVICT_OBJECT_LEN);
        }
        assert!(dir_bytes(&dir) <= EVICT_LIMIT_BYTES);
    });
}

// ---------------------------------------------------------------------------------------
// 9-11. One origin fetch per object
// ---------------------------------------------------------------------------------------

/// Concurrent cold clients of the herd test.
const HERD: usize = 32;
/// Size of the herd object and the origin's pause between 64 KB blocks: ~1045 blocks at
/// >= 3 ms, so the fill takes at least ~3 s.
const HERD_LEN: u64 = 64 << 20;
const HERD_BLOCK_MS: u64 = 3;

#[test]
fn herd_of_cold_requests_makes_one_origin_fetch_and_streams_to_all() {
    with_deadline(HEAVY_DEADLINE, || {
        // Two workers: the herd spreads over both cores and must still share one fill.
        let proxy = Chacha::start(&cache_config(2, "1GB", ""));
        let origin = Origin::start(routes);
        let raw = get(
            &origin.authority(),
            &format!("/slow/herd/{HERD_LEN}/{HERD_BLOCK_MS}"),
        );
        let barrier = Barrier::new(HERD + 1);
        let (results, fill) = thread::scope(|s| {
            let clients: Vec<_> = (0..HERD)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        timed_get(proxy.addr(), &raw)
                    })
                })
                .collect();
            barrier.wait();
            let t0 = Instant::now();
            let filled = wait_until(Duration::from_secs(60), || origin.full_bodies() >= 1);
            let fill = t0.elapsed();
            let results: Vec<Timed> = clients.into_iter().map(|c| c.join().unwrap()).collect();
            assert!(filled, "the origin never finished the body");
            (results, fill)
        });
        for r in &results {
            r.assert_complete(HERD_LEN);
        }
        let statuses: Vec<String> = results.iter().map(Timed::cache_status).collect();
        let stored = statuses.iter().filter(|c| c.contains("stored")).count();
        let mut waiter_ttfb: Vec<Duration> = results
            .iter()
            .filter(|r| r.cache_status().starts_with("chacha; hit"))
            .map(|r| r.ttfb.unwrap())
            .collect();
        waiter_ttfb.sort();
        eprintln!(
            "fill took {fill:?}; origin: {} requests, {} full, {} 304; waiter TTFB min {:?} median {:?} max {:?}",
            origin.requests_total(),
            origin.full_bodies(),
            origin.not_modified(),
            waiter_ttfb.first(),
            waiter_ttfb.get(waiter_ttfb.len() / 2),
            waiter_ttfb.last()
        );
        // One full body; the waiters revalidated with the in-flight entry's ETag,
        // identical requests sharing one sent after they arrived (issue 15: merged
        // revalidations), so at least one 304 and at most one per waiter.
        let settled = origin.settled();
        assert_eq!(settled.full_bodies, 1, "one full body");
        assert!(
            (1..HERD as u64).contains(&settled.not_modified),
            "the waiters' 304s: {}",
            settled.not_modified
        );
        assert_eq!(stored, 1, "exactly one response is the fill: {statuses:?}");
        assert_eq!(
            waiter_ttfb.len(),
            HERD - 1,
            "every other response is served from the fill: {statuses:?}"
        );
        let median = waiter_ttfb[waiter_ttfb.len() / 2];
        assert!(
            median < fill / 4,
            "waiters wait for the fill: median TTFB {median:?}, fill {fill:?}"
        );
    });
}

/// Size and pacing of the leader-disconnect and crash objects (~256 blocks, >= 1 s).
const SLOW_LEN: u64 = 16 << 20;
const SLOW_BLOCK_MS: u64 = 4;
/// Body bytes a client reads before it (or chacha) goes away mid-fill.
const PARTIAL_READ: usize = 1 << 20;

/// Reads up to `n` body bytes straight from the socket after the head.
fn read_some(conn: &Conn, n: usize) -> usize {
    let mut stream: &std::net::TcpStream = conn.stream();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < n {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    got
}

#[test]
fn leader_disconnecting_mid_fill_does_not_break_the_others() {
    const WAITERS: usize = 3;
    with_deadline(HEAVY_DEADLINE, || {
        let proxy = start_default();
        let origin = Origin::start(routes);
        let path = format!("/slow/lead/{SLOW_LEN}/{SLOW_BLOCK_MS}");
        let raw = get(&origin.authority(), &path);

        let mut leader = Conn::connect(proxy.addr());
        leader.send(&raw).unwrap();
        let head = leader.read_head("GET").expect("leader head");
        assert_eq!(head.status, 200);
        assert!(read_some(&leader, PARTIAL_READ) >= PARTIAL_READ);

        let heads = AtomicU64::new(0);
        let results: Vec<Timed> = thread::scope(|s| {
            let waiters: Vec<_> = (0..WAITERS)
                .map(|_| s.spawn(|| timed_get_counting(proxy.addr(), &raw, &heads)))
                .collect();
            // Once every waiter has its head (it joined the fill), vanish mid-fill.
            assert!(
                wait_until(Duration::from_secs(10), || {
                    heads.load(Ordering::SeqCst) == WAITERS as u64
                }),
                "{} of {WAITERS} waiters got a head",
                heads.load(Ordering::SeqCst)
            );
            assert_eq!(origin.full_bodies(), 0, "fill ended before the disconnect");
            drop(leader);
            waiters.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for r in &results {
            r.assert_complete(SLOW_LEN);
        }
        let next = fetch(proxy.addr(), &raw);
        assert_hit(&next);
        assert_generated(&next.body, SLOW_LEN);
        assert_eq!(
            origin.last_request().unwrap().header("if-none-match"),
            Some(etag_of("lead", SLOW_LEN).as_str())
        );
        // The waiters' identical revalidations may share one sent after they arrived
        // (issue 15: merged revalidations): at least one 304 for them, one for `next`.
        let settled = origin.settled();
        assert_eq!(settled.full_bodies, 1, "one full body");
        assert!(
            (2..=WAITERS as u64 + 1).contains(&settled.not_modified),
            "304s: {}",
            settled.not_modified
        );
    });
}

#[test]
fn failed_fill_aborts_every_reader_and_is_not_stored() {
    const CLIENTS: usize = 4;
    with_deadline(HEAVY_DEADLINE, || {
        let proxy = start_default();
        let etag = "\"abort-1\"";
        let unconditional = Arc::new(AtomicU64::new(0));
        let origin = {
            let unconditional = unconditional.clone();
            Origin::start(move |req| {
                // chacha tries to resume the cut body with a Range; this origin ignores
                // Range (a full 200), so the resume is refused and the fill fails.
                if req.header("range").is_some() {
                    return OResp::generated(SLOW_LEN).header("ETag", etag);
                }
                validated(req, Some(etag), None, || {
                    // The first full fetch dies at half the body; later ones are fine.
                    if unconditional.fetch_add(1, Ordering::SeqCst) == 0 {
                        OResp::generated(SLOW_LEN)
                            .chunk_delay(Duration::from_millis(SLOW_BLOCK_MS))
                            .fault(Fault::AbortBodyAfter(SLOW_LEN / 2))
                    } else {
                        OResp::generated(SLOW_LEN)
                    }
                })
            })
        };
        let raw = get(&origin.authority(), "/fails-once");
        let barrier = Barrier::new(CLIENTS);
        let results: Vec<Timed> = thread::scope(|s| {
            let clients: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        timed_get(proxy.addr(), &raw)
                    })
                })
                .collect();
            clients.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for r in &results {
            assert!(
                r.error.is_some(),
                "a client got a complete-looking response from a failed fill: {r:?}"
            );
            let head = r.head.as_ref().unwrap_or_else(|| panic!("no head: {r:?}"));
            assert_eq!(head.status, 200);
            assert!(r.len < SLOW_LEN, "{r:?}");
            assert_eq!(r.mismatch, None, "bytes before the abort are wrong: {r:?}");
        }
        assert_eq!(
            unconditional.load(Ordering::SeqCst),
            1,
            "the failed fill was fetched once"
        );
        let resumes = origin
            .requests()
            .iter()
            .filter(|r| r.header("range").is_some())
            .count();
        assert_eq!(resumes, 1, "one attempt to resume the cut body");

        let next = fetch(proxy.addr(), &raw);
        assert_eq!(next.status(), 200);
        assert_generated(&next.body, SLOW_LEN);
        assert!(
            !is_conditional(&origin.last_request().unwrap()),
            "the failed fill left an entry that was revalidated"
        );
        assert_stored(&next);
        assert_full_bodies(&origin, 1);
    });
}

// ---------------------------------------------------------------------------------------
// 12. Crash safety
// ---------------------------------------------------------------------------------------

#[test]
fn sigkill_during_fill_leaves_no_partial_entry() {
    with_deadline(HEAVY_DEADLINE, || {
        let mut proxy = start_default();
        let etag = "\"crash-1\"";
        let unconditional = Arc::new(AtomicU64::new(0));
        let origin = {
            let unconditional = unconditional.clone();
            Origin::start(move |req| {
                validated(req, Some(etag), Some(LAST_MODIFIED), || {
                    // Slow the first time, so chacha dies mid-fill; quick afterwards.
                    if unconditional.fetch_add(1, Ordering::SeqCst) == 0 {
                        OResp::generated(SLOW_LEN).chunk_delay(Duration::from_millis(SLOW_BLOCK_MS))
                    } else {
                        OResp::generated(SLOW_LEN)
                    }
                })
            })
        };
        let raw = get(&origin.authority(), "/crash");
        let mut conn = Conn::connect(proxy.addr());
        conn.send(&raw).unwrap();
        assert_eq!(conn.read_head("GET").expect("head").status, 200);
        assert!(read_some(&conn, PARTIAL_READ) >= PARTIAL_READ);
        assert_eq!(origin.full_bodies(), 0, "fill ended before the kill");
        proxy.signal(libc::SIGKILL);
        assert!(
            proxy.wait_exit(Duration::from_secs(10)).is_some(),
            "chacha survived SIGKILL"
        );
        drop(conn);

        let addr = proxy.restart();
        let resp = fetch(addr, &raw);
        assert_eq!(resp.status(), 200);
        assert_generated(&resp.body, SLOW_LEN);
        let last = origin.last_request().unwrap();
        assert!(
            !is_conditional(&last),
            "after the crash chacha revalidated a partial entry: {last:?}"
        );
        // The first fetch never completed (chacha died), the second is a full body.
        assert_served(&origin, 1, 0);
    });
}

// ---------------------------------------------------------------------------------------
// 13. Memory
// ---------------------------------------------------------------------------------------

/// Peak RSS allowed while filling and serving a huge object.
const MAX_RSS_KIB: u64 = 64 * 1024;
/// Size of the huge object; CHACHA_TEST_CACHE_BYTES overrides it.
const HUGE_BYTES: u64 = 1 << 30;

/// GETs a generated body, verifying it as it streams; returns the head.
fn stream_get(addr: SocketAddr, raw: &str, len: u64) -> Head {
    let mut conn = Conn::connect(addr);
    conn.send(raw).unwrap();
    let head = conn.read_head("GET").expect("head");
    assert_eq!(head.status, 200);
    let mut v = Verifier::new();
    let got = conn.read_body_with(&head, &mut |b| v.feed(b));
    assert!(
        got.is_ok(),
        "body truncated at {} bytes: {:?}",
        v.len(),
        got.err().map(|t| t.error)
    );
    v.assert_complete(len);
    head
}

#[test]
fn huge_object_cold_then_warm_keeps_rss_flat() {
    let len: u64 = std::env::var("CHACHA_TEST_CACHE_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(HUGE_BYTES);
    with_deadline(Duration::from_secs(300), move || {
        let proxy = Chacha::start(&cache_config(1, "3GB", ""));
        let origin = Origin::start(routes);
        let pid = proxy.pid();
        let sampler = Sampler::start(move || common::chacha::rss_kib(pid));
        let raw = get(&origin.authority(), &format!("/obj/huge/{len}"));
        let t = Instant::now();
        let cold = stream_get(proxy.addr(), &raw, len);
        let cold_time = t.elapsed();
        let t = Instant::now();
        let warm = stream_get(proxy.addr(), &raw, len);
        let warm_time = t.elapsed();
        let (peak, samples) = sampler.finish();
        eprintln!("{len} bytes cold in {cold_time:?}, warm in {warm_time:?}; chacha peak RSS {peak} KiB ({samples} samples)");
        let cold_cs = cold.header("cache-status").unwrap_or("");
        let warm_cs = warm.header("cache-status").unwrap_or("");
        assert!(cold_cs.contains("stored"), "cold Cache-Status {cold_cs:?}");
        assert!(
            warm_cs.starts_with("chacha; hit"),
            "warm Cache-Status {warm_cs:?}"
        );
        assert_served(&origin, 1, 1);
        assert!(samples > 0, "no RSS sample taken");
        assert!(
            peak < MAX_RSS_KIB,
            "peak RSS {peak} KiB >= {MAX_RSS_KIB} KiB"
        );
    });
}

/// A tmpfs mounted for one test (needs root, as CI has); unmounted on drop.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    /// Mounts it, or says why it could not (no `mount`, not root, ...).
    fn mount(size: &str) -> Result<SmallDisk, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "chacha-small-disk-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Ok(SmallDisk { dir }),
            Ok(o) => format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("cannot run mount: {e}"),
        };
        let _ = std::fs::remove_dir(&dir);
        Err(why)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn full_disk_stops_caching_the_object_and_still_serves_the_client() {
    with_deadline(DEADLINE, || {
        // A machine that cannot mount one fails this test rather than passing it unrun;
        // deselect it there explicitly (`cargo test --test cache -- --skip full_disk`).
        let disk = SmallDisk::mount("2m").unwrap_or_else(|why| {
            panic!("this test needs a 2 MiB tmpfs (mount -t tmpfs, as root): {why}")
        });
        // The limit is far above what the 2 MiB filesystem holds: writes hit ENOSPC.
        let config = format!(
            "addr: 127.0.0.1:0\nworkers: 1\ndisk:\n  dir: \"{}\"\n  limit: 100MB\n",
            disk.dir.join("cache").display()
        );
        let proxy = Chacha::start(&config);
        let origin = Origin::start(routes);
        let auth = origin.authority();
        let len = 8 << 20;
        let path = format!("/obj/full/{len}");
        for _ in 0..2 {
            let r = fetch(proxy.addr(), get(&auth, &path));
            assert_eq!(r.status(), 200);
            assert_generated(&r.body, len);
        }
        // Not stored: the second request was a full fetch too, not a 304.
        assert_served(&origin, 2, 0);
        assert!(
            proxy.wait_log("fill of", Duration::from_secs(5)),
            "the disk error is logged"
        );
        let health = fetch(proxy.addr(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(health.status(), 200, "chacha is still up");
        drop(proxy);
    });
}
