//! Helpers shared by the cache-level test files (tests/cache.rs, tests/oci.rs): one-shot
//! fetches, `Cache-Status` assertions, origin counters once settled, and the entry files
//! of a cache dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{Origin, Response};

/// One request on a fresh connection; panics unless a whole response arrives.
pub fn fetch(addr: SocketAddr, raw: impl AsRef<[u8]>) -> Response {
    super::request(addr, raw).unwrap_or_else(|e| panic!("no complete response: {e:?}"))
}

pub fn cache_status(resp: &Response) -> String {
    resp.header("cache-status").unwrap_or("<none>").to_string()
}

pub fn assert_hit(resp: &Response) {
    let cs = cache_status(resp);
    assert!(
        cs.starts_with("chacha; hit"),
        "expected a hit, Cache-Status {cs:?}"
    );
}

pub fn assert_stored(resp: &Response) {
    let cs = cache_status(resp);
    assert!(
        cs.starts_with("chacha;") && cs.contains("stored") && cs.contains("fwd-status=200"),
        "expected a stored response, Cache-Status {cs:?}"
    );
}

/// ETag of `/obj/{name}/{len}`.
pub fn etag_of(name: &str, len: u64) -> String {
    format!("\"{name}-{len}\"")
}

/// Polls `f` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        // The poll interval of a wait on `f`, the signal; not a wait of its own.
        thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts the origin served exactly `full` bodies and `not_modified` 304s, once its
/// counters settled ([`Origin::settled`]).
pub fn assert_served(origin: &Origin, full: u64, not_modified: u64) {
    let s = origin.settled();
    assert_eq!(
        (s.full_bodies, s.not_modified),
        (full, not_modified),
        "origin served (full bodies, 304s)"
    );
}

/// Committed entry files: `dir/<2 hex>/<16 hex>`.
pub fn entry_files(dir: &Path) -> Vec<PathBuf> {
    let is_hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut found = Vec::new();
    for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = sub.file_name().to_string_lossy().into_owned();
        if !is_hex(&name, 2) || !sub.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let fname = f.file_name().to_string_lossy().into_owned();
            if is_hex(&fname, 16) && fname.starts_with(&name) {
                found.push(f.path());
            }
        }
    }
    found
}
