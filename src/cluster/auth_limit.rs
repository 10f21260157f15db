//! Rate limit on failed KV authentications, per source address.
//!
//! The secret check is constant-time, but nothing else slowed a guesser: one client on
//! loopback made ~7,700 guesses a second. Each source (an IPv4 address, or an IPv6 /64,
//! the usual smallest allocation) has a token bucket of [`FAILURE_BURST`] failures,
//! refilled at [`REFILL_PER_SEC`]: a source whose bucket is empty gets `429` with
//! `Retry-After` and the connection closed, without its secret being checked at all
//! (a check would tell a right guess from a wrong one), until a token is back. So a
//! guesser gets [`FAILURE_BURST`] tries, then about one per second; a peer with the
//! right secret never spends a token, and other sources are unaffected. One warning per
//! episode (when a source's bucket first runs dry), one line when it ends. An episode
//! ends only once the source's bucket is full again, i.e. after it made no failed
//! attempt for [`FAILURE_BURST`] / [`REFILL_PER_SEC`] seconds: a steady guesser that
//! gets one checked attempt a second stays in one episode (one warning), not one per
//! token.
//!
//! Memory is bounded: at most [`MAX_SOURCES`] sources are tracked (those whose bucket
//! is full again are forgotten first); beyond that, new sources share one bucket, so a
//! guesser spread over many addresses is limited as one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed authentications a source may make at once.
pub const FAILURE_BURST: f64 = 5.0;
/// Failed authentications a source regains per second.
pub const REFILL_PER_SEC: f64 = 1.0;
/// Most sources tracked; further ones share one bucket.
pub const MAX_SOURCES: usize = 4096;

/// Who a bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
    /// Every source beyond [`MAX_SOURCES`].
    Overflow,
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4.into()),
            IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(v) => write!(f, "{}", std::net::Ipv4Addr::from(*v)),
            Source::V6(p) => write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(*p) << 64)),
            Source::Overflow => f.write_str("(sources beyond the tracking limit)"),
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Set while the source is refused: since when, and how many attempts were.
    episode: Option<(Instant, u64)>,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            tokens: FAILURE_BURST,
            at: now,
            episode: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * REFILL_PER_SEC).min(FAILURE_BURST);
        self.at = now;
    }
}

/// What to do with a KV request before its secret is looked at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Check the secret.
    Check,
    /// Answer `429` without checking; a token is back after `retry_after`.
    Refuse { retry_after: Duration },
}

/// Shared by all cores (one per process); a lock only once some source has failed.
#[derive(Debug, Default)]
pub struct AuthLimiter {
    buckets: Mutex<HashMap<Source, Bucket>>,
    /// Sources tracked: zero means nobody failed lately and no lock is taken.
    tracked: AtomicUsize,
    /// Episodes started (each logged once).
    episodes: AtomicUsize,
}

impl AuthLimiter {
    /// Whether a request from `ip` may have its secret checked.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Verdict {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return Verdict::Check;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let source = match Source::of(ip) {
            s if buckets.contains_key(&s) => s,
            _ if buckets.contains_key(&Source::Overflow) && buckets.len() >= MAX_SOURCES => {
                Source::Overflow
            }
            _ => return Verdict::Check,
        };
        let b = buckets.get_mut(&source).expect("present");
        b.refill(now);
        if b.tokens >= FAILURE_BURST {
            if let Some((since, refused)) = b.episode.take() {
                log::info!(
                    "KV authentication from {source}: no longer refused ({refused} requests refused over {:.1?})",
                    now.saturating_duration_since(since)
                );
            }
        }
        if b.tokens >= 1.0 {
            return Verdict::Check;
        }
        if let Some((_, refused)) = &mut b.episode {
            *refused += 1;
        }
        Verdict::Refuse {
            retry_after: Duration::from_secs_f64((1.0 - b.tokens) / REFILL_PER_SEC),
        }
    }

    /// Records a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut source = Source::of(ip);
        if !buckets.contains_key(&source) && buckets.len() >= MAX_SOURCES {
            // Forget the sources that are back to a full bucket first.
            buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < FAILURE_BURST
            });
            if buckets.len() >= MAX_SOURCES {
                source = Source::Overflow;
            }
        }
        let b = buckets.entry(source).or_insert_with(|| Bucket::new(now));
        b.refill(now);
        b.tokens = (b.tokens - 1.0).max(0.0);
        if b.tokens < 1.0 && b.episode.is_none() {
            b.episode = Some((now, 0));
            self.episodes.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "KV authentication: {FAILURE_BURST} failed attempts from {source}; its KV requests get 429 without a check (about {REFILL_PER_SEC} attempt per second allowed) until it stops"
            );
        }
        self.tracked.store(buckets.len(), Ordering::Relaxed);
    }

    /// Sources tracked (for tests).
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Episodes started so far, each with its one warning (for tests).
    pub fn episodes(&self) -> usize {
        self.episodes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_about_one_per_second() {
        let l = AuthLimiter::default();
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..FAILURE_BURST as usize {
            assert_eq!(l.admit(a, t0), Verdict::Check);
            l.failed(a, t0);
        }
        match l.admit(a, t0) {
            Verdict::Refuse { retry_after } => {
                assert!(retry_after > Duration::from_millis(900), "{retry_after:?}")
            }
            v => panic!("{v:?}"),
        }
        // Another source, and the same one's IPv6 neighbour, are not affected.
        assert_eq!(l.admit(ip("10.0.0.2"), t0), Verdict::Check);
        // A second later one more try.
        let t1 = t0 + Duration::from_millis(1001);
        assert_eq!(l.admit(a, t1), Verdict::Check);
        l.failed(a, t1);
        assert!(matches!(l.admit(a, t1), Verdict::Refuse { .. }));
        // Guesses over a minute: the burst plus about one a second.
        let mut allowed = 0;
        let mut t = t1;
        for _ in 0..60_000 {
            t += Duration::from_millis(1);
            if l.admit(a, t) == Verdict::Check {
                allowed += 1;
                l.failed(a, t);
            }
        }
        assert!((59..=61).contains(&allowed), "{allowed}");
        // All of that was one episode: one warning, not one per returning token.
        assert_eq!(l.episodes(), 1);
        // Quiet until the bucket is full again: the episode ends; the next burst of
        // failures is a new one.
        let t = t + Duration::from_secs_f64(FAILURE_BURST / REFILL_PER_SEC + 0.01);
        assert_eq!(l.admit(a, t), Verdict::Check);
        for _ in 0..FAILURE_BURST as usize {
            l.failed(a, t);
        }
        assert_eq!(l.episodes(), 2);
        assert!(matches!(l.admit(a, t), Verdict::Refuse { .. }));
    }

    /// When an episode ends, by how long the source stayed quiet (table: quiet seconds
    /// after running dry → episodes after one more burst).
    #[test]
    fn an_episode_ends_only_after_a_full_refill() {
        for (quiet_ms, episodes) in [(1_100, 1), (3_000, 1), (4_900, 1), (5_000, 2), (9_000, 2)] {
            let l = AuthLimiter::default();
            let t0 = Instant::now();
            let a = ip("10.9.9.9");
            for _ in 0..FAILURE_BURST as usize {
                l.failed(a, t0);
            }
            let t = t0 + Duration::from_millis(quiet_ms);
            assert_eq!(l.admit(a, t), Verdict::Check, "{quiet_ms}");
            for _ in 0..FAILURE_BURST as usize {
                l.failed(a, t);
            }
            assert_eq!(l.episodes(), episodes, "quiet {quiet_ms} ms");
        }
    }

    #[test]
    fn ipv6_sources_are_their_64_and_mapped_v4_is_v4() {
        let l = AuthLimiter::default();
        let t0 = Instant::now();
        for i in 0..FAILURE_BURST as u32 {
            l.failed(ip(&format!("2001:db8:1:2::{i}")), t0);
        }
        assert!(matches!(
            l.admit(ip("2001:db8:1:2::ffff"), t0),
            Verdict::Refuse { .. }
        ));
        assert_eq!(l.admit(ip("2001:db8:1:3::1"), t0), Verdict::Check);
        for _ in 0..FAILURE_BURST as u32 {
            l.failed(ip("::ffff:10.1.1.1"), t0);
        }
        assert!(matches!(
            l.admit(ip("10.1.1.1"), t0),
            Verdict::Refuse { .. }
        ));
    }

    #[test]
    fn memory_is_bounded_and_overflow_is_limited_as_one() {
        let l = AuthLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            l.failed(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()), t0);
        }
        assert!(l.tracked() <= MAX_SOURCES + 1, "{}", l.tracked());
        // 100 sources beyond the limit share the overflow bucket, which is dry now.
        let beyond = IpAddr::from((0x0b00_0000u32).to_be_bytes());
        assert!(matches!(l.admit(beyond, t0), Verdict::Refuse { .. }));
        // Once the buckets are full again they are forgotten to make room.
        let later = t0 + Duration::from_secs(10);
        l.failed(beyond, later);
        assert!(l.tracked() <= 2, "{}", l.tracked());
        assert_eq!(l.admit(ip("10.0.0.7"), later), Verdict::Check);
    }
}
