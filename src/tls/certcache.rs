//! Minted leaves per host, shared by all cores.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;

use super::mint::{Leaf, LEAF_VALIDITY};
use super::{normalize_host, Ca, TlsError};

/// Hosts kept before the oldest entry is evicted: ~1 KiB per leaf (chain +
/// key), so about 10 MiB at most.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// A cached leaf this close to expiry is re-minted, so no client ever gets
/// a leaf that expires during a long connection or under modest clock skew.
pub const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// Leaves by normalized host, bounded, with oldest-inserted eviction.
///
/// The lock guards only map operations; signing happens outside it, so a
/// slow mint on one core never stalls lookups on the others. Two cores that
/// miss the same host at once both mint and the later insert wins: harmless.
pub struct CertCache {
    ca: Ca,
    capacity: usize,
    validity: Duration,
    renew_before: Duration,
    inner: Mutex<Inner>,
    mints: AtomicU64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Insertion order as (sequence, host); entries whose sequence no longer
    /// matches the map were replaced or evicted and are skipped.
    order: VecDeque<(u64, String)>,
    next_seq: u64,
}

struct Entry {
    leaf: Leaf,
    seq: u64,
}

impl fmt::Debug for CertCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertCache")
            .field("ca", &self.ca)
            .field("len", &self.len())
            .field("mints", &self.mints())
            .finish_non_exhaustive()
    }
}

impl CertCache {
    /// A cache with the production policy: [`DEFAULT_CAPACITY`] hosts,
    /// [`LEAF_VALIDITY`], renewal [`RENEW_BEFORE`] expiry.
    pub fn new(ca: Ca) -> CertCache {
        Self::with_policy(ca, DEFAULT_CAPACITY, LEAF_VALIDITY, RENEW_BEFORE)
    }

    /// A cache with an explicit policy. `capacity` is at least 1.
    pub fn with_policy(
        ca: Ca,
        capacity: usize,
        validity: Duration,
        renew_before: Duration,
    ) -> CertCache {
        CertCache {
            ca,
            capacity: capacity.max(1),
            validity,
            renew_before,
            inner: Mutex::new(Inner::default()),
            mints: AtomicU64::new(0),
        }
    }

    /// The leaf for `host`: cached unless it expires within the renewal
    /// window, else freshly minted (and cached).
    pub fn get(&self, host: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let host = normalize_host(host);
        let fresh_until = SystemTime::now() + self.renew_before;
        if let Some(entry) = self.lock().map.get(&host) {
            if entry.leaf.not_after > fresh_until {
                return Ok(entry.leaf.certified.clone());
            }
        }
        // No lock held while signing (tens of µs for P-256, ms for RSA CAs).
        let leaf = self.ca.mint(&host, self.validity)?;
        self.mints.fetch_add(1, Ordering::Relaxed);
        crate::metrics::leaf_minted();
        // One line per signing: operators (and tests) can see that warm hosts never sign.
        log::info!("minted leaf for {host}");
        let certified = leaf.certified.clone();
        self.insert(host, leaf);
        Ok(certified)
    }

    /// Leaves signed so far (cache misses and renewals).
    pub fn mints(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    /// Hosts currently cached.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the map inconsistent in a way that
        // matters (worst case a stale order entry), so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, host: String, leaf: Leaf) {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.order.push_back((seq, host.clone()));
        inner.map.insert(host, Entry { leaf, seq });
        while inner.map.len() > self.capacity {
            let Some((seq, host)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&host).is_some_and(|e| e.seq == seq) {
                inner.map.remove(&host);
            }
        }
        // Renewals leave stale order entries behind: drop them before the
        // queue grows past twice the live entries.
        if inner.order.len() > 2 * self.capacity {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|(seq, host)| map.get(host).is_some_and(|e| e.seq == *seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testutil::test_ca;

    #[test]
    fn second_lookup_does_not_mint() {
        let (ca, _) = test_ca();
        let cache = CertCache::new(ca);
        let a = cache.get("example.test").unwrap();
        assert_eq!(cache.mints(), 1);
        let b = cache.get("EXAMPLE.test.").unwrap();
        assert_eq!(cache.mints(), 1, "normalized host hits the cache");
        assert!(Arc::ptr_eq(&a, &b));
        cache.get("other.test").unwrap();
        assert_eq!(cache.mints(), 2);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn near_expiry_leaf_is_reminted() {
        let (ca, _) = test_ca();
        // Leaves valid 12 h, renewed 1 day before expiry: every lookup re-mints.
        let cache = CertCache::with_policy(
            ca,
            10,
            Duration::from_secs(12 * 3600),
            Duration::from_secs(24 * 3600),
        );
        let a = cache.get("x.test").unwrap();
        let b = cache.get("x.test").unwrap();
        assert_eq!(cache.mints(), 2);
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(cache.len(), 1);

        // Valid 2 days, renewed 1 day before: reused.
        let (ca, _) = test_ca();
        let cache = CertCache::with_policy(
            ca,
            10,
            Duration::from_secs(48 * 3600),
            Duration::from_secs(24 * 3600),
        );
        cache.get("x.test").unwrap();
        cache.get("x.test").unwrap();
        assert_eq!(cache.mints(), 1);
    }

    #[test]
    fn bounded_with_oldest_evicted() {
        let (ca, _) = test_ca();
        let cache = CertCache::with_policy(ca, 3, LEAF_VALIDITY, RENEW_BEFORE);
        for h in ["a.test", "b.test", "c.test", "d.test"] {
            cache.get(h).unwrap();
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.mints(), 4);
        cache.get("b.test").unwrap();
        cache.get("d.test").unwrap();
        assert_eq!(cache.mints(), 4, "b and d still cached");
        cache.get("a.test").unwrap();
        assert_eq!(cache.mints(), 5, "a was the oldest and got evicted");
    }

    #[test]
    fn renewals_do_not_grow_the_order_queue() {
        let (ca, _) = test_ca();
        let cache =
            CertCache::with_policy(ca, 2, Duration::from_secs(3600), Duration::from_secs(7200));
        for _ in 0..20 {
            cache.get("r.test").unwrap();
        }
        assert_eq!(cache.mints(), 20);
        let inner = cache.lock();
        assert_eq!(inner.map.len(), 1);
        assert!(
            inner.order.len() <= 2 * 2 + 1,
            "order len {}",
            inner.order.len()
        );
    }

    #[test]
    fn shared_across_threads() {
        let (ca, _) = test_ca();
        let cache = Arc::new(CertCache::new(ca));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for j in 0..8 {
                        cache.get(&format!("h{}.test", (i + j) % 8)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(cache.len(), 8);
        // Racing first requests may both mint, but never more than once per thread.
        assert!((8..=32).contains(&cache.mints()), "mints {}", cache.mints());
        let before = cache.mints();
        cache.get("h3.test").unwrap();
        assert_eq!(cache.mints(), before);
    }

    #[test]
    fn errors_are_not_cached() {
        let (ca, _) = test_ca();
        let cache = CertCache::new(ca);
        assert!(cache.get("bad host").is_err());
        assert_eq!(cache.mints(), 0);
        assert!(cache.is_empty());
    }
}
