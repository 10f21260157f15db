//! Counters shared by every runner, the live progress line and the summary / `--json`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct Stats {
    pub bytes: AtomicU64,
    pub retries: AtomicU64,
    pub cuts: AtomicU64,
    pub redirects: AtomicU64,
    pub tokens: AtomicU64,
    pub mismatches: AtomicU64,
    pub running: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub statuses: Mutex<BTreeMap<u16, u64>>,
    /// `Cache-Status` outcomes of blob responses: hit / collapsed / miss / other.
    pub cache: Mutex<BTreeMap<String, u64>>,
    /// Digest → (size, verified downloads).
    pub blobs: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Seconds of every successful pull.
    pub pulls: Mutex<Vec<f64>>,
    pub failures: Mutex<Vec<String>>,
}

impl Stats {
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Relaxed);
    }
    pub fn add_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }
    pub fn add_cut(&self) {
        self.cuts.fetch_add(1, Relaxed);
    }
    pub fn add_redirect(&self) {
        self.redirects.fetch_add(1, Relaxed);
    }
    pub fn add_token(&self) {
        self.tokens.fetch_add(1, Relaxed);
    }
    pub fn add_mismatch(&self) {
        self.mismatches.fetch_add(1, Relaxed);
    }
    pub fn status(&self, s: u16) {
        *self.statuses.lock().unwrap().entry(s).or_default() += 1;
    }
    /// Classifies chacha's `Cache-Status` (RFC 9211): `hit; collapsed` (read-while-write
    /// from another request's fill), `hit` (validated entry), `fwd=…` (miss).
    pub fn cache_status(&self, v: &str) {
        let params: Vec<String> = v
            .split(';')
            .skip(1)
            .map(|p| p.trim().to_ascii_lowercase())
            .collect();
        let has = |p: &str| params.iter().any(|x| x == p);
        let kind = if has("collapsed") {
            "collapsed"
        } else if has("hit") {
            "hit"
        } else if params.iter().any(|p| p.starts_with("fwd=")) {
            "miss"
        } else {
            "other"
        };
        *self.cache.lock().unwrap().entry(kind.into()).or_default() += 1;
    }
    pub fn blob_done(&self, digest: &str, size: u64) {
        let mut b = self.blobs.lock().unwrap();
        let e = b.entry(digest.to_string()).or_insert((size, 0));
        e.1 += 1;
    }
    pub fn pull_done(&self, d: Duration) {
        self.pulls.lock().unwrap().push(d.as_secs_f64());
        self.done.fetch_add(1, Relaxed);
    }
    pub fn pull_failed(&self, what: String) {
        self.failures.lock().unwrap().push(what);
        self.failed.fetch_add(1, Relaxed);
    }
}

/// Nearest-rank percentile of sorted `v` (0 when empty).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}
