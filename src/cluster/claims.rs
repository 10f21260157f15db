//! Fills claimed by other nodes. A non-owner that misses on the owner (KV GET with
//! `X-Chacha-Fill: claim`) becomes the one node that fetches the object: the owner
//! registers a pending fill for the key (the same [`FillHandle`] a local request would
//! hold), so that its own requests and other nodes' KV GETs for the key wait for the
//! claimant's PUT and then stream it read-while-write. The claim ends with that PUT
//! (which takes the handle), a `DELETE` from the claimant (nothing to store), or its
//! deadline (the claimant died); dropping the handle fails the pending fill and wakes
//! the waiters, which then go on without it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::cache::fill::FillHandle;

struct Claim {
    key: String,
    handle: FillHandle,
    deadline: Instant,
}

/// Claims by key hash, shared by all cores of the owner.
#[derive(Default)]
pub struct Claims {
    map: Mutex<HashMap<u64, Claim>>,
}

impl Claims {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Claim>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a claim; a previous claim on the same hash (expired or stale) is dropped.
    pub fn insert(&self, hash: u64, key: String, handle: FillHandle, deadline: Instant) {
        let old = self.lock().insert(
            hash,
            Claim {
                key,
                handle,
                deadline,
            },
        );
        drop(old); // fails that fill outside our lock
    }

    /// The claimant's PUT: the handle of its pending fill, if the claim is still valid.
    pub fn take(&self, hash: u64, key: &str, now: Instant) -> Option<FillHandle> {
        let claim = {
            let mut map = self.lock();
            match map.get(&hash) {
                Some(c) if c.key == key => map.remove(&hash),
                _ => None,
            }
        }?;
        (claim.deadline > now).then_some(claim.handle)
    }

    /// Ends the claim on `key` without a fill; true if there was one.
    pub fn release(&self, hash: u64, key: &str) -> bool {
        let claim = {
            let mut map = self.lock();
            match map.get(&hash) {
                Some(c) if c.key == key => map.remove(&hash),
                _ => None,
            }
        };
        claim.is_some()
    }

    /// Drops the claims whose deadline has passed; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let expired: Vec<Claim> = {
            let mut map = self.lock();
            let hashes: Vec<u64> = map
                .iter()
                .filter(|(_, c)| c.deadline <= now)
                .map(|(h, _)| *h)
                .collect();
            hashes.iter().filter_map(|h| map.remove(h)).collect()
        };
        expired.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fill::{Fills, Phase, Role};
    use std::sync::Arc;
    use std::time::Duration;

    fn lead(fills: &Arc<Fills>, hash: u64, key: &str) -> FillHandle {
        match fills.lead_or_join(hash, key) {
            Role::Leader(h) => h,
            _ => panic!("expected to lead"),
        }
    }

    #[test]
    fn a_claim_blocks_other_fills_until_taken() {
        let fills = Arc::new(Fills::default());
        let claims = Claims::default();
        let now = Instant::now();
        claims.insert(
            1,
            "k".into(),
            lead(&fills, 1, "k"),
            now + Duration::from_secs(5),
        );
        assert!(matches!(fills.lead_or_join(1, "k"), Role::Waiter(_)));
        assert!(claims.take(1, "other", now).is_none());
        let h = claims.take(1, "k", now).expect("claim");
        assert!(claims.is_empty());
        assert_eq!(h.fill().snapshot().phase, Phase::Pending);
    }

    #[test]
    fn release_and_expiry_fail_the_pending_fill() {
        let fills = Arc::new(Fills::default());
        let claims = Claims::default();
        let now = Instant::now();
        claims.insert(
            1,
            "a".into(),
            lead(&fills, 1, "a"),
            now + Duration::from_secs(5),
        );
        claims.insert(
            2,
            "b".into(),
            lead(&fills, 2, "b"),
            now + Duration::from_secs(1),
        );
        let (fa, fb) = (fills.get(1).unwrap(), fills.get(2).unwrap());
        assert!(claims.release(1, "a"));
        assert!(!claims.release(1, "a"));
        assert_eq!(fa.snapshot().phase, Phase::Failed);
        assert_eq!(claims.sweep(now), 0);
        assert_eq!(claims.sweep(now + Duration::from_secs(2)), 1);
        assert_eq!(fb.snapshot().phase, Phase::Failed);
        assert!(fills.is_empty() && claims.is_empty());
    }

    #[test]
    fn an_expired_claim_cannot_be_taken() {
        let fills = Arc::new(Fills::default());
        let claims = Claims::default();
        let now = Instant::now();
        claims.insert(1, "k".into(), lead(&fills, 1, "k"), now);
        assert!(claims
            .take(1, "k", now + Duration::from_millis(1))
            .is_none());
        assert!(fills.is_empty());
    }
}
