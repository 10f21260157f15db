//! Prometheus metrics: counters kept per core and summed on scrape.
//!
//! Every thread that counts something (each worker core, and the few helper threads)
//! owns one cache-line-aligned [`CoreBlock`] of `AtomicU64`s that only it writes, with a
//! plain single-writer add (`store(load + n)`, Relaxed: no `lock` prefix, no shared
//! cache line, no lock). A block is registered once, the first time its thread counts
//! (a worker does it when it starts), in a global list that only registration and a
//! scrape touch; a scrape sums the blocks (a Relaxed load may miss an add in progress,
//! which the next scrape sees). Histograms are fixed bucket arrays with a sum and a count
//! in the same blocks. Labels are small closed enums indexed into arrays: no string is
//! built per request, and no URL, key, host or credential is ever a label value (peer
//! addresses from the config are).
//!
//! Gauges are read from shared state at scrape: disk use from the store's index, fills
//! from the fill registry, peer health from the cluster's nodes, leaves minted from the
//! certificate cache. Open client connections are per-core opened/closed counters.
//!
//! [`render`] turns a [`Snapshot`] into the text exposition format 0.0.4 (pure, tested);
//! [`admin`] serves it on the optional `metrics.addr`; `proxy::internal` serves it as
//! `GET /metrics` on chacha's own address otherwise.

pub mod admin;
pub mod render;
pub mod scope;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::proxy::op::Op;

pub use scope::{scoped, Metered, RequestScope};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One counter cell, written only by the thread that owns its block.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A plain add: only the owning thread writes this cell, so load + store is exact
    /// and compiles to an ordinary `mov`/`add`/`mov` (no locked read-modify-write).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Sums one block's cells into another's (the scrape's total).
pub trait Merge {
    fn merge_from(&self, other: &Self);
}

impl Merge for Counter {
    fn merge_from(&self, other: &Self) {
        self.add(other.get());
    }
}

impl<T: Merge, const N: usize> Merge for [T; N] {
    fn merge_from(&self, other: &Self) {
        for (a, b) in self.iter().zip(other) {
            a.merge_from(b);
        }
    }
}

/// A histogram with `N` finite upper bounds (`+Inf` is the count): per-bucket (not yet
/// cumulative) counts, the sum in the unit of `bounds`, and the count.
pub struct Histogram<const N: usize> {
    pub buckets: [Counter; N],
    pub sum: Counter,
    pub count: Counter,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| Counter::default()),
            sum: Counter::default(),
            count: Counter::default(),
        }
    }
}

impl<const N: usize> Histogram<N> {
    #[inline]
    pub fn observe(&self, bounds: &[u64; N], v: u64) {
        // `le` is inclusive (Prometheus): the first bound >= v.
        if let Some(i) = bounds.iter().position(|&b| v <= b) {
            self.buckets[i].add(1);
        }
        self.sum.add(v);
        self.count.add(1);
    }
}

impl<const N: usize> Merge for Histogram<N> {
    fn merge_from(&self, other: &Self) {
        self.buckets.merge_from(&other.buckets);
        self.sum.merge_from(&other.sum);
        self.count.merge_from(&other.count);
    }
}

/// Request methods as a label (`method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Other,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Connect,
        Method::Other,
    ];
    pub fn of(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Other => "OTHER",
        }
    }
}

/// `status` label values: the status class.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// Every [`Op`], in label order.
pub const N_OPS: usize = 15;
pub const OPS: [Op; N_OPS] = [
    Op::Hit,
    Op::Collapsed,
    Op::Miss,
    Op::Fill,
    Op::Pass,
    Op::Reject,
    Op::Internal,
    Op::KvGet,
    Op::KvPut,
    Op::KvDelete,
    Op::PeerHit,
    Op::PeerFill,
    Op::Tunnel,
    Op::Redirect,
    Op::DirectConnect,
];

fn op_index(op: Op) -> usize {
    match op {
        Op::Hit => 0,
        Op::Collapsed => 1,
        Op::Miss => 2,
        Op::Fill => 3,
        Op::Pass => 4,
        Op::Reject => 5,
        Op::Internal => 6,
        Op::KvGet => 7,
        Op::KvPut => 8,
        Op::KvDelete => 9,
        Op::PeerHit => 10,
        Op::PeerFill => 11,
        Op::Tunnel => 12,
        Op::Redirect => 13,
        Op::DirectConnect => 14,
    }
}

/// `chacha_cache_outcomes_total{outcome}`.
pub const OUTCOMES: [&str; 5] = ["hit", "collapsed", "stored", "replaced", "not_stored"];

/// `chacha_cache_not_stored_total{reason}`: the `Cache-Status` `detail` values.
pub const NOT_STORED_REASONS: [&str; 13] = [
    "method",
    "status",
    "request-no-store",
    "no-store",
    "private",
    "pragma",
    "vary",
    "authorization",
    "no-validator",
    "too-large",
    "fill-in-progress",
    "disk-error",
    "owner-unreachable",
];

/// `chacha_origin_responses_total{kind}`: how origins answered chacha's requests.
pub const ORIGIN_RESPONSES: [&str; 4] = ["not_modified", "full", "partial", "other"];

/// Why a fill failed (`chacha_fill_failures_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillFailure {
    /// The origin cut the body (and resuming it failed or was not possible).
    OriginCut = 0,
    /// A blob's body did not match its `sha256:` digest.
    DigestMismatch = 1,
    /// Writing or committing the cache file failed.
    DiskError = 2,
    /// The origin went silent for `timeouts.upstream-body`.
    Timeout = 3,
}
pub const FILL_FAILURES: [&str; 4] = ["origin_cut", "digest_mismatch", "disk_error", "timeout"];

/// `chacha_tls_handshake_failures_total{reason}` (intercepted CONNECTs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    Error = 0,
    Timeout = 1,
}
pub const HANDSHAKE_FAILURES: [&str; 2] = ["error", "timeout"];

/// `chacha_upstream_errors_total{kind}`.
pub const UPSTREAM_ERRORS: [&str; 7] = [
    "dns", "connect", "tls", "timeout", "closed", "protocol", "denied",
];

/// `chacha_kv_requests_total{kind,result}` (KV requests this node served).
pub const KV_KINDS: [&str; 3] = ["get", "put", "delete"];
pub const KV_RESULTS: [&str; 7] = [
    "ok",
    "not_found",
    "conflict",
    "too_large",
    "unauthorized",
    "bad_request",
    "error",
];

fn kv_result(status: u16) -> usize {
    match status {
        200..=299 => 0,
        404 => 1,
        409 => 2,
        413 => 3,
        401 => 4,
        400 => 5,
        _ => 6,
    }
}

/// `chacha_direct_connect_total{result}`: 307s to an owner (`redirect`), and how this
/// node answered `GET /direct-connect`.
pub const DIRECT_CONNECT_RESULTS: [&str; 7] = [
    "redirect",
    "ok",
    "partial",
    "unauthorized",
    "not_found",
    "replaced",
    "other",
];

fn direct_connect_result(op: Op, status: u16) -> Option<usize> {
    match (op, status) {
        (Op::Redirect, _) => Some(0),
        (Op::DirectConnect, 200) => Some(1),
        (Op::DirectConnect, 206) => Some(2),
        (Op::DirectConnect, 401) => Some(3),
        (Op::DirectConnect, 404) => Some(4),
        (Op::DirectConnect, 410) => Some(5),
        (Op::DirectConnect, _) => Some(6),
        _ => None,
    }
}

/// Upper bounds of `chacha_response_seconds`, in microseconds.
pub const RESPONSE_BOUNDS_US: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Upper bounds of `chacha_transfer_speed_bytes_per_second`: the original's
/// (`org.cirruslabs.chacha.cache.speed_bytes_per_second`, 100 MB/s to 40 GB/s).
pub const SPEED_BOUNDS: [u64; 13] = [
    100_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    7_500_000_000,
    10_000_000_000,
    15_000_000_000,
    20_000_000_000,
    25_000_000_000,
    30_000_000_000,
    35_000_000_000,
    40_000_000_000,
];

/// All counters of one thread. 128-byte aligned (two cache lines, for the adjacent-line
/// prefetcher) so that no two threads' blocks share a line.
#[derive(Default)]
#[repr(C, align(128))]
pub struct CoreBlock {
    pub requests: [[[Counter; N_OPS]; 5]; 7],
    pub response_us: [Histogram<16>; N_OPS],
    pub speed: [Histogram<13>; N_OPS],
    pub client_bytes: [Counter; N_OPS],
    pub origin_bytes: [Counter; N_OPS],
    pub outcomes: [Counter; 5],
    pub not_stored: [Counter; 13],
    pub origin_responses: [Counter; 4],
    pub fill_failures: [Counter; 4],
    pub fill_resumes: Counter,
    pub validations_merged: Counter,
    pub evictions: Counter,
    pub evicted_bytes: Counter,
    pub connections_opened: Counter,
    pub connections_closed: Counter,
    pub handshake_failures: [Counter; 2],
    pub upstream_errors: [Counter; 7],
    pub kv_requests: [[Counter; 7]; 3],
    pub direct_connect: [Counter; 7],
}

impl Merge for CoreBlock {
    fn merge_from(&self, o: &Self) {
        self.requests.merge_from(&o.requests);
        self.response_us.merge_from(&o.response_us);
        self.speed.merge_from(&o.speed);
        self.client_bytes.merge_from(&o.client_bytes);
        self.origin_bytes.merge_from(&o.origin_bytes);
        self.outcomes.merge_from(&o.outcomes);
        self.not_stored.merge_from(&o.not_stored);
        self.origin_responses.merge_from(&o.origin_responses);
        self.fill_failures.merge_from(&o.fill_failures);
        self.fill_resumes.merge_from(&o.fill_resumes);
        self.validations_merged.merge_from(&o.validations_merged);
        self.evictions.merge_from(&o.evictions);
        self.evicted_bytes.merge_from(&o.evicted_bytes);
        self.connections_opened.merge_from(&o.connections_opened);
        self.connections_closed.merge_from(&o.connections_closed);
        self.handshake_failures.merge_from(&o.handshake_failures);
        self.upstream_errors.merge_from(&o.upstream_errors);
        self.kv_requests.merge_from(&o.kv_requests);
        self.direct_connect.merge_from(&o.direct_connect);
    }
}

/// Every thread's block (touched when a thread first counts, and by scrapes).
static BLOCKS: Mutex<Vec<Arc<CoreBlock>>> = Mutex::new(Vec::new());

thread_local! {
    static CORE: Arc<CoreBlock> = {
        let block = Arc::new(CoreBlock::default());
        BLOCKS.lock().unwrap_or_else(PoisonError::into_inner).push(block.clone());
        block
    };
}

/// Runs `f` on this thread's block (registering it on first use). Nothing is counted
/// while the thread is being torn down.
#[inline]
fn with(f: impl FnOnce(&CoreBlock)) {
    let _ = CORE.try_with(|b| f(b));
}

/// Registers this thread's block now (a worker calls it at start, so the registry lock is
/// never taken on a request's path).
pub fn register_core() {
    with(|_| {});
}

// ---- the hot path: one call per event, a few plain adds each ----

/// One request, at its log point: `head` is the time from the request head to the
/// response head, `total` to the end of the response; `bytes` body bytes sent to the
/// client; `origin_bytes` bytes read from origins on its behalf.
pub fn request(
    method: Method,
    status: u16,
    op: Op,
    bytes: u64,
    head: Duration,
    total: Duration,
    origin_bytes: u64,
) {
    let o = op_index(op);
    with(|b| {
        b.requests[method as usize][status_class(status)][o].add(1);
        b.response_us[o].observe(&RESPONSE_BOUNDS_US, head.as_micros() as u64);
        b.client_bytes[o].add(bytes);
        b.origin_bytes[o].add(origin_bytes);
        if bytes > 0 {
            // Body bytes over the time they took after the head (the whole time when
            // the head and body went out together).
            let t = total.saturating_sub(head);
            let t = if t.is_zero() { total } else { t };
            let speed = (bytes as u128 * 1_000_000_000 / t.as_nanos().max(1)) as u64;
            b.speed[o].observe(&SPEED_BOUNDS, speed);
        }
        let kv = match op {
            Op::KvGet => Some(0),
            Op::KvPut => Some(1),
            Op::KvDelete => Some(2),
            _ => None,
        };
        if let Some(k) = kv {
            b.kv_requests[k][kv_result(status)].add(1);
        }
        if let Some(r) = direct_connect_result(op, status) {
            b.direct_connect[r].add(1);
        }
    });
}

/// What a response's `Cache-Status` says, as metric indices (made by
/// `cache::status::Outcome::header_value`, which maps its outcome here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheCount {
    /// An index into [`OUTCOMES`].
    Outcome(usize),
    /// `not_stored`, with the index of its reason in [`NOT_STORED_REASONS`].
    NotStored(usize),
    /// Nothing counted (an upstream error made no cache decision).
    Nothing,
}

/// A `Cache-Status` value was made for a response.
#[inline]
pub fn cache_outcome(c: CacheCount) {
    with(|b| match c {
        CacheCount::Outcome(i) => b.outcomes[i].add(1),
        CacheCount::NotStored(r) => {
            b.outcomes[4].add(1);
            b.not_stored[r].add(1);
        }
        CacheCount::Nothing => {}
    });
}

/// A fill's entry was committed: `stored`, or `replaced` when it replaced an entry.
#[inline]
pub fn entry_stored(replaced: bool) {
    with(|b| b.outcomes[if replaced { 3 } else { 2 }].add(1));
}

/// An origin's response head to one of chacha's requests.
#[inline]
pub fn origin_response(status: u16) {
    let kind = match status {
        304 => 0,
        200 => 1,
        206 => 2,
        _ => 3,
    };
    with(|b| b.origin_responses[kind].add(1));
}

/// A fill failed (counted once per fill, where its failure is logged).
pub fn fill_failure(why: FillFailure) {
    with(|b| b.fill_failures[why as usize].add(1));
}

/// A fill whose body an origin (or owner) cut resumed with `Range`.
pub fn fill_resumed() {
    with(|b| b.fill_resumes.add(1));
}

/// A request was validated by the `304` to an identical request another one sent after
/// it arrived (`proxy::merge`).
pub fn validation_merged() {
    with(|b| b.validations_merged.add(1));
}

/// An entry of `bytes` was evicted to make room.
#[inline]
pub fn eviction(bytes: u64) {
    with(|b| {
        b.evictions.add(1);
        b.evicted_bytes.add(bytes);
    });
}

/// A client connection was accepted (`opened`) or ended.
#[inline]
pub fn client_connection(opened: bool) {
    with(|b| {
        if opened {
            b.connections_opened.add(1)
        } else {
            b.connections_closed.add(1)
        }
    });
}

/// The TLS handshake of an intercepted CONNECT failed.
pub fn tls_handshake_failure(why: HandshakeFailure) {
    with(|b| b.handshake_failures[why as usize].add(1));
}

/// Talking to an origin failed before a response head.
/// `kind`: an index into [`UPSTREAM_ERRORS`] (see `upstream::UpstreamError::metric_kind`).
pub fn upstream_error(kind: usize) {
    with(|b| b.upstream_errors[kind].add(1));
}

// ---- shared state read at scrape ----

/// What the shared state holds at a scrape (read by the function the server registers
/// with [`set_gauges`]: the metrics depend on nothing above them).
#[derive(Default)]
pub struct Gauges {
    pub disk: Option<Disk>,
    /// Cluster mode: each node (its configured address) and whether it is up.
    pub peers: Option<Vec<(String, bool)>>,
    /// Cluster mode: each node and how often its state changed (up ↔ down).
    pub peer_changes: Option<Vec<(String, u64)>>,
    /// Whether `tls-interceptor` is in force.
    pub interception: bool,
}

type GaugeFn = Box<dyn Fn() -> Gauges + Send>;

/// What the gauges are read from (set once at startup).
#[derive(Default)]
struct Sources {
    gauges: Option<GaugeFn>,
    scan: Option<Duration>,
}

/// Leaves signed since start, across CA rotations (a mint is rare: one shared counter).
static LEAVES_MINTED: AtomicU64 = AtomicU64::new(0);

/// An interception leaf was signed.
pub fn leaf_minted() {
    LEAVES_MINTED.fetch_add(1, Relaxed);
}

static SOURCES: Mutex<Option<Sources>> = Mutex::new(None);

fn sources<R>(f: impl FnOnce(&mut Sources) -> R) -> R {
    let mut s = SOURCES.lock().unwrap_or_else(PoisonError::into_inner);
    f(s.get_or_insert_with(Sources::default))
}

/// Registers how the gauges are read from the shared state at each scrape.
pub fn set_gauges(read: impl Fn() -> Gauges + Send + 'static) {
    sources(|s| s.gauges = Some(Box::new(read)));
}

/// How long the startup scan of the cache dir took.
pub fn set_scan_duration(d: Duration) {
    sources(|s| s.scan = Some(d));
}

/// Whether `GET /metrics` is served on the proxy's own address (false when
/// `metrics.addr` moves it to an admin address).
static ON_PROXY_PORT: AtomicBool = AtomicBool::new(true);

pub fn served_on_proxy_port() -> bool {
    ON_PROXY_PORT.load(Relaxed)
}

pub fn set_served_on_proxy_port(yes: bool) {
    ON_PROXY_PORT.store(yes, Relaxed);
}

/// Disk gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    pub used: u64,
    pub limit: u64,
    pub entries: u64,
    pub fills_in_flight: u64,
    pub readers_waiting: u64,
}

/// Everything one scrape renders.
#[derive(Default)]
pub struct Snapshot {
    /// The sum of every thread's block.
    pub totals: CoreBlock,
    pub disk: Option<Disk>,
    pub scan: Option<Duration>,
    /// Cluster mode: each node (its configured address) and whether it is up.
    pub peers: Option<Vec<(String, bool)>>,
    /// Cluster mode: each node and how often its state changed (up ↔ down).
    pub peer_changes: Option<Vec<(String, u64)>>,
    /// With `tls-interceptor`: leaves signed so far.
    pub leaves_minted: Option<u64>,
}

/// Reads every block and the shared state.
pub fn snapshot() -> Snapshot {
    let snap = Snapshot::default();
    let blocks: Vec<Arc<CoreBlock>> = BLOCKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for b in &blocks {
        snap.totals.merge_from(b);
    }
    sources(|s| {
        let g = s.gauges.as_ref().map(|read| read()).unwrap_or_default();
        Snapshot {
            disk: g.disk,
            scan: s.scan,
            peers: g.peers,
            peer_changes: g.peer_changes,
            leaves_minted: g.interception.then(|| LEAVES_MINTED.load(Relaxed)),
            ..snap
        }
    })
}

/// The exposition of the current state.
pub fn scrape() -> String {
    render::render(&snapshot())
}
