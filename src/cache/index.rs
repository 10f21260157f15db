//! The shared in-memory index of cache entries: which hashes are on disk, their sizes, their
//! recency, and the global byte budget. One `Index` (in an `Arc`) is shared by every core.
//!
//! # Structure
//!
//! [`SHARDS`] shards selected by bits of the key hash, each a `Mutex` over a hash map from key
//! hash to a slab slot plus an intrusive doubly linked LRU list threaded through the slab by
//! `u32` indices (O(1) touch, insert and remove, no per-entry allocation beyond the key).
//! Recency is a global `AtomicU64` tick, taken while the shard lock is held so every shard's
//! list is sorted by tick (head = most recent). Each shard publishes its tail's tick in an
//! atomic, so eviction finds the globally least recently used entry by reading [`SHARDS`]
//! atomics, then locks only that shard and re-checks (the tail may have been touched in the
//! meantime; after a few lost races it evicts that shard's tail anyway). No code path ever
//! holds two shard locks, and nothing here does I/O: evictions come back as [`Victim`]s for
//! the caller to unlink outside any lock.
//!
//! # Byte budget
//!
//! `used` (committed entries) + `reserved` (in-flight fills) never exceeds `limit`. The sum is
//! kept in one atomic (`charged`) that is only increased by compare-and-swap below the limit,
//! so the bound holds under any interleaving. A fill reserves bytes up front ([`Index::reserve`],
//! [`Index::grow`] for bodies of unknown length), evicting LRU entries to make room; committing
//! converts the reservation into `used`; dropping a [`Reservation`] (abandoned fill) releases it.
//!
//! # Generations and deleting files safely
//!
//! Every commit gets a fresh, globally increasing generation. Files are named by hash only, so
//! an eviction victim and a newer fill of the same hash share a path. Protocol for the disk
//! layer:
//!
//! * A victim returned by [`Index::commit`] (the entry it replaced) must NOT be unlinked: the
//!   rename that preceded the commit already replaced that file with the new one.
//! * Before unlinking the path of a victim from [`Index::reserve`]/[`Index::grow`] (or
//!   [`TooBig::victims`]), check [`Index::peek`]: if the hash is present again with a newer
//!   generation, a newer file lives at the path; skip the unlink.
//! * The remaining window (a fill renames its file between that check and the unlink) leaves
//!   an index entry without a file. Readers treat `ENOENT` on an indexed entry as a miss and
//!   call [`Index::remove_if`] with the generation they looked up, which heals the index
//!   without touching a newer entry.
//!
//! Mutex poisoning is ignored: no code under a shard lock can leave a shard inconsistent
//! before panicking, and one panicking core must not take the others down.

mod shard;

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use shard::{Shard, ShardSlot};

/// Number of shards (a power of two). 64 keeps lock contention negligible with tens of cores
/// while an eviction scan reads only 64 atomics.
pub const SHARDS: usize = 64;
/// Hash bits 32..38 select the shard: the std hash map's bucket index uses the low bits and
/// its control bytes the top 7, so the shard choice does not correlate with either.
const SHARD_SHIFT: u32 = 32;
/// Slab index meaning "no node".
const NIL: u32 = u32::MAX;
/// Published tail tick of an empty shard.
const EMPTY: u64 = u64::MAX;
/// Lost re-check races before eviction settles for the chosen shard's current tail.
const EVICT_EXACT_RETRIES: usize = 8;

/// One committed entry as the index knows it: 24 bytes. The key is not kept here (it would
/// cost a heap string per entry): the entry file's header holds it, and every open checks
/// it against the request's key (`Store::open_entry`), so a 64-bit
/// hash collision is a miss, never another key's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryInfo {
    pub hash: u64,
    /// Bytes the entry file takes on disk (its length: prefix + body); what the budget counts.
    pub size: u64,
    /// Assigned by the index on commit/insert_loaded; the value passed in is ignored.
    pub generation: u64,
}

/// An entry removed from the index whose file the caller deletes outside any lock (see the
/// module docs for when not to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Victim {
    pub hash: u64,
    pub generation: u64,
}

/// A reservation could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooBig {
    pub requested: u64,
    pub limit: u64,
    /// Entries evicted before the attempt failed (only on a transient failure). The caller
    /// must still delete their files, exactly as for a successful reservation.
    pub victims: Vec<Victim>,
}

impl TooBig {
    /// True when the request fits the limit but in-flight reservations hold the space right
    /// now (nothing left to evict); false when it can never fit.
    pub fn is_transient(&self) -> bool {
        self.requested <= self.limit
    }
}

impl fmt::Display for TooBig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_transient() {
            write!(
                f,
                "{} bytes do not fit now: in-flight fills hold the cache",
                self.requested
            )
        } else {
            write!(
                f,
                "{} bytes exceed the cache limit of {}",
                self.requested, self.limit
            )
        }
    }
}

impl std::error::Error for TooBig {}

#[derive(Debug)]
struct Counters {
    /// `disk.limit`; changed by a live reload ([`Index::set_limit`]).
    limit: AtomicU64,
    /// used + reserved; the only counter the limit is enforced on.
    charged: AtomicU64,
    used: AtomicU64,
    reserved: AtomicU64,
}

impl Counters {
    /// Adds `bytes` to `charged` if the result stays within the limit.
    fn try_charge(&self, bytes: u64) -> bool {
        self.charged
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                c.checked_add(bytes)
                    .filter(|&n| n <= self.limit.load(Ordering::Relaxed))
            })
            .is_ok()
    }

    fn uncharge_used(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.charged.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes set aside for one in-flight fill. Dropping it (from any thread) releases them.
#[derive(Debug)]
pub struct Reservation {
    bytes: u64,
    counters: Arc<Counters>,
}

impl Reservation {
    /// Bytes currently reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.counters
                .reserved
                .fetch_sub(self.bytes, Ordering::AcqRel);
            self.counters
                .charged
                .fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// The shared entry index. `Send + Sync`; share it with `Arc`.
pub struct Index {
    shards: Box<[ShardSlot]>,
    counters: Arc<Counters>,
    tick: AtomicU64,
    generation: AtomicU64,
    len: AtomicUsize,
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("limit", &self.limit())
            .field("used", &self.used())
            .field("reserved", &self.reserved())
            .field("len", &self.len())
            .finish()
    }
}

impl Index {
    /// An empty index holding at most `limit` bytes (entries + in-flight fills).
    pub fn new(limit: u64) -> Self {
        Index {
            shards: (0..SHARDS)
                .map(|_| ShardSlot {
                    shard: Mutex::new(Shard::new()),
                    tail_tick: AtomicU64::new(EMPTY),
                })
                .collect(),
            counters: Arc::new(Counters {
                limit: AtomicU64::new(limit),
                charged: AtomicU64::new(0),
                used: AtomicU64::new(0),
                reserved: AtomicU64::new(0),
            }),
            tick: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            len: AtomicUsize::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.counters.limit.load(Ordering::Relaxed)
    }

    /// A live reload's new `disk.limit`. Growing just allows more; shrinking evicts the
    /// least recently used entries at once until entries + in-flight fills fit (fills
    /// in flight are not cut: when they alone exceed the new limit, eviction stops at
    /// an empty index and their commits bring the total back under it). Returns the
    /// victims (the caller deletes their files) and the bytes they held.
    pub fn set_limit(&self, limit: u64) -> (Vec<Victim>, u64) {
        self.counters.limit.store(limit, Ordering::Relaxed);
        let mut victims = Vec::new();
        let mut bytes = 0;
        while self.counters.charged.load(Ordering::Acquire) > limit {
            match self.evict_one_sized() {
                Some((v, size)) => {
                    victims.push(v);
                    bytes += size;
                }
                None => break,
            }
        }
        (victims, bytes)
    }

    /// Bytes of committed entries.
    pub fn used(&self) -> u64 {
        self.counters.used.load(Ordering::Acquire)
    }

    /// Bytes held by in-flight fills.
    pub fn reserved(&self) -> u64 {
        self.counters.reserved.load(Ordering::Acquire)
    }

    /// Number of committed entries.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, hash: u64) -> &ShardSlot {
        &self.shards[(hash >> SHARD_SHIFT) as usize & (SHARDS - 1)]
    }

    /// Takes the next recency tick; call with the shard lock held so per-shard lists stay
    /// sorted by tick.
    fn next_tick(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Looks up `hash` and marks it most recently used. The caller checks the key in the
    /// entry file's header (a hash collision is a miss there).
    pub fn get(&self, hash: u64) -> Option<EntryInfo> {
        let slot = self.slot(hash);
        let mut shard = slot.lock();
        let i = *shard.map.get(&hash)?;
        let tick = self.next_tick();
        shard.touch(i, tick);
        slot.publish_tail(&shard);
        Some(shard.node(i).info)
    }

    /// Like [`Index::get`] (touches recency) but returns only the generation.
    pub fn get_generation(&self, hash: u64) -> Option<u64> {
        self.get(hash).map(|info| info.generation)
    }

    /// Looks up `hash` without touching recency.
    pub fn peek(&self, hash: u64) -> Option<EntryInfo> {
        let shard = self.slot(hash).lock();
        let i = *shard.map.get(&hash)?;
        Some(shard.node(i).info)
    }

    /// Raises the recency clock to at least `tick`: the store sets it to the current unix
    /// time at startup, so that every access of this run ranks above entries loaded with
    /// their file's mtime (seconds) as recency.
    pub fn raise_tick(&self, tick: u64) {
        self.tick
            .fetch_max(tick.min(u64::MAX / 2), Ordering::AcqRel);
    }

    /// Bytes the index's structures hold (capacities, not lengths: what the allocator
    /// gave them), for the memory-per-entry figure.
    pub fn memory_bytes(&self) -> usize {
        let mut bytes =
            std::mem::size_of::<Self>() + self.shards.len() * std::mem::size_of::<ShardSlot>();
        for slot in self.shards.iter() {
            bytes += slot.lock().memory_bytes();
        }
        bytes
    }

    /// Sets aside `bytes` for a fill, evicting least recently used entries (removed from the
    /// index; the caller deletes their files) until `used + reserved + bytes <= limit`.
    /// `TooBig` if `bytes > limit`, or (transiently) if in-flight fills hold the space.
    pub fn reserve(&self, bytes: u64) -> Result<(Reservation, Vec<Victim>), TooBig> {
        let victims = self.make_room(bytes)?;
        self.counters.reserved.fetch_add(bytes, Ordering::AcqRel);
        Ok((
            Reservation {
                bytes,
                counters: Arc::clone(&self.counters),
            },
            victims,
        ))
    }

    /// Adds `more` bytes to a reservation (bodies of unknown length reserve in steps), evicting
    /// like [`Index::reserve`]. On error the reservation keeps its previous size.
    pub fn grow(&self, r: &mut Reservation, more: u64) -> Result<Vec<Victim>, TooBig> {
        assert!(
            Arc::ptr_eq(&r.counters, &self.counters),
            "reservation from another index"
        );
        let total = r.bytes.saturating_add(more);
        if total > self.limit() {
            return Err(TooBig {
                requested: total,
                limit: self.limit(),
                victims: Vec::new(),
            });
        }
        let victims = self.make_room(more)?;
        self.counters.reserved.fetch_add(more, Ordering::AcqRel);
        r.bytes += more;
        Ok(victims)
    }

    /// Charges `bytes` to `charged`, evicting until it fits.
    fn make_room(&self, bytes: u64) -> Result<Vec<Victim>, TooBig> {
        let limit = self.limit();
        let too_big = |victims| TooBig {
            requested: bytes,
            limit,
            victims,
        };
        if bytes > limit {
            return Err(too_big(Vec::new()));
        }
        // Fail fast, before evicting anything, when in-flight fills alone leave no room.
        if bytes > limit - self.reserved().min(limit) {
            return Err(too_big(Vec::new()));
        }
        let mut victims = Vec::new();
        loop {
            if self.counters.try_charge(bytes) {
                return Ok(victims);
            }
            match self.evict_one() {
                Some(v) => victims.push(v),
                None => return Err(too_big(victims)),
            }
        }
    }

    /// Removes the globally least recently used entry. `None` if the index is empty.
    fn evict_one(&self) -> Option<Victim> {
        self.evict_one_sized().map(|(v, _)| v)
    }

    /// [`Index::evict_one`], with the size of the entry removed.
    fn evict_one_sized(&self) -> Option<(Victim, u64)> {
        let mut attempt = 0;
        loop {
            let (want_tick, s) = self
                .shards
                .iter()
                .enumerate()
                .map(|(s, slot)| (slot.tail_tick.load(Ordering::Acquire), s))
                .filter(|&(t, _)| t != EMPTY)
                .min()?;
            let slot = &self.shards[s];
            let mut shard = slot.lock();
            attempt += 1;
            if shard.tail == NIL
                || (shard.tail_tick() != want_tick && attempt <= EVICT_EXACT_RETRIES)
            {
                // Touched or removed since the scan: look again.
                continue;
            }
            let tail = shard.tail;
            let info = shard.remove_node(tail);
            slot.publish_tail(&shard);
            drop(shard);
            self.len.fetch_sub(1, Ordering::AcqRel);
            self.counters.uncharge_used(info.size);
            crate::metrics::eviction(info.size);
            return Some((
                Victim {
                    hash: info.hash,
                    generation: info.generation,
                },
                info.size,
            ));
        }
    }

    /// Turns a reservation into a committed entry (most recently used), with a fresh
    /// generation. Unused reserved bytes are released. Requires `info.size <= r.bytes()`
    /// (call [`Index::grow`] first; panics otherwise).
    ///
    /// Returns the entry this one replaced (same hash), for information only: its file was
    /// already replaced by the rename, so the caller must NOT delete the path.
    pub fn commit(&self, mut r: Reservation, mut info: EntryInfo) -> Option<Victim> {
        assert!(
            Arc::ptr_eq(&r.counters, &self.counters),
            "reservation from another index"
        );
        assert!(
            info.size <= r.bytes,
            "commit of {} bytes with only {} reserved",
            info.size,
            r.bytes
        );
        let reserved = std::mem::take(&mut r.bytes);
        drop(r);
        let c = &self.counters;
        c.used.fetch_add(info.size, Ordering::AcqRel);
        c.reserved.fetch_sub(reserved, Ordering::AcqRel);
        c.charged.fetch_sub(reserved - info.size, Ordering::AcqRel);

        let hash = info.hash;
        let slot = self.slot(hash);
        let mut shard = slot.lock();
        info.generation = self.next_generation();
        let tick = self.next_tick();
        let old = match shard.map.get(&hash) {
            Some(&i) => {
                let old = std::mem::replace(&mut shard.node_mut(i).info, info);
                shard.touch(i, tick);
                Some(old)
            }
            None => {
                let i = shard.alloc(info, tick);
                let head = shard.head;
                shard.link_before(i, head);
                self.len.fetch_add(1, Ordering::AcqRel);
                None
            }
        };
        slot.publish_tail(&shard);
        drop(shard);
        let old = old?;
        c.uncharge_used(old.size);
        Some(Victim {
            hash,
            generation: old.generation,
        })
    }

    /// Removes `hash` (e.g. after deleting or failing to read its file).
    pub fn remove(&self, hash: u64) -> Option<EntryInfo> {
        self.remove_matching(hash, None)
    }

    /// Removes `hash` only if it still has `generation`: a reader that found the file missing
    /// must not remove a newer entry committed meanwhile.
    pub fn remove_if(&self, hash: u64, generation: u64) -> Option<EntryInfo> {
        self.remove_matching(hash, Some(generation))
    }

    fn remove_matching(&self, hash: u64, generation: Option<u64>) -> Option<EntryInfo> {
        let slot = self.slot(hash);
        let mut shard = slot.lock();
        let i = *shard.map.get(&hash)?;
        if generation.is_some_and(|g| shard.node(i).info.generation != g) {
            return None;
        }
        let info = shard.remove_node(i);
        slot.publish_tail(&shard);
        drop(shard);
        self.len.fetch_sub(1, Ordering::AcqRel);
        self.counters.uncharge_used(info.size);
        Some(info)
    }

    /// Startup only: adds an entry found on disk, with recency `last_access` (e.g. the file's
    /// mtime in unix seconds; only the order matters). O(1) when called in ascending or
    /// descending `last_access` order. Later accesses rank above every loaded entry. The
    /// caller keeps the total within the limit (the scan does); any excess would be evicted
    /// by the next reservation. Replaces (without reporting) an entry of the same hash.
    pub fn insert_loaded(&self, mut info: EntryInfo, last_access: u64) {
        let slot = self.slot(info.hash);
        let mut shard = slot.lock();
        // Keep future ticks above every loaded one (the EMPTY sentinel stays unreachable).
        let tick = last_access.min(u64::MAX / 2);
        self.tick.fetch_max(tick, Ordering::AcqRel);
        info.generation = self.next_generation();
        let size = info.size;
        let old = shard
            .map
            .get(&info.hash)
            .copied()
            .map(|i| shard.remove_node(i));
        let i = shard.alloc(info, tick);
        shard.link_sorted(i);
        slot.publish_tail(&shard);
        drop(shard);
        let c = &self.counters;
        c.used.fetch_add(size, Ordering::AcqRel);
        c.charged.fetch_add(size, Ordering::AcqRel);
        match old {
            Some(old) => c.uncharge_used(old.size),
            None => {
                self.len.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    /// Startup, from the snapshot: [`Index::insert_loaded`] for many entries of one shard
    /// (in ascending `last_access` order for O(1) each), under one lock and one update of
    /// the counters. Panics if they are not all of one shard.
    pub fn insert_loaded_batch(&self, entries: &[(EntryInfo, u64)]) {
        let Some((first, _)) = entries.first() else {
            return;
        };
        let slot = self.slot(first.hash);
        let max_tick = entries.iter().map(|&(_, t)| t).max().unwrap_or(0);
        self.tick
            .fetch_max(max_tick.min(u64::MAX / 2), Ordering::AcqRel);
        let first_generation = self
            .generation
            .fetch_add(entries.len() as u64, Ordering::AcqRel)
            + 1;
        let (mut added, mut bytes, mut replaced) = (0usize, 0u64, 0u64);
        let mut shard = slot.lock();
        for (n, &(mut info, tick)) in entries.iter().enumerate() {
            assert_eq!(
                Self::shard_of(info.hash),
                Self::shard_of(first.hash),
                "one shard per batch"
            );
            info.generation = first_generation + n as u64;
            bytes += info.size;
            match shard.map.get(&info.hash).copied() {
                Some(i) => replaced += shard.remove_node(i).size,
                None => added += 1,
            }
            let i = shard.alloc(info, tick.min(u64::MAX / 2));
            shard.link_sorted(i);
        }
        slot.publish_tail(&shard);
        drop(shard);
        let c = &self.counters;
        c.used.fetch_add(bytes - replaced, Ordering::AcqRel);
        c.charged.fetch_add(bytes - replaced, Ordering::AcqRel);
        self.len.fetch_add(added, Ordering::AcqRel);
    }

    /// Background scan: adds an entry found on disk with recency `last_access` (its mtime),
    /// unless `hash` is already indexed (a fill committed during the scan is newer than any
    /// file the scan read: it wins). Returns whether it was added. O(1): where the entry
    /// does not belong at either end of its shard's list it is appended at the tail, and the
    /// list is sorted again by [`Index::resort`] when the scan ends (until then, eviction
    /// among scanned entries follows recency only approximately).
    pub fn insert_scanned(&self, mut info: EntryInfo, last_access: u64) -> bool {
        let slot = self.slot(info.hash);
        let mut shard = slot.lock();
        if shard.map.contains_key(&info.hash) {
            return false;
        }
        let tick = last_access.min(u64::MAX / 2);
        info.generation = self.next_generation();
        let size = info.size;
        let i = shard.alloc(info, tick);
        shard.link_sorted_or_tail(i);
        slot.publish_tail(&shard);
        drop(shard);
        let c = &self.counters;
        c.used.fetch_add(size, Ordering::AcqRel);
        c.charged.fetch_add(size, Ordering::AcqRel);
        self.len.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Sorts every shard's list by recency again (after [`Index::insert_scanned`]); one
    /// shard lock at a time, O(n log n) per shard.
    pub fn resort(&self) {
        for slot in self.shards.iter() {
            let mut shard = slot.lock();
            shard.resort();
            slot.publish_tail(&shard);
        }
    }

    /// Makes room for `extra` more entries in each shard's structures (the snapshot loader
    /// knows the counts: no regrowth while loading, no slack beyond the hash map's).
    pub fn reserve_entries(&self, per_shard: &[usize]) {
        for (slot, &n) in self.shards.iter().zip(per_shard) {
            slot.lock().reserve(n);
        }
    }

    /// The shard `hash` belongs to (the snapshot groups its records by it).
    pub fn shard_of(hash: u64) -> usize {
        (hash >> SHARD_SHIFT) as usize & (SHARDS - 1)
    }

    /// Calls `f(info, tick)` for every entry, shard by shard, each shard from its least to
    /// its most recently used entry (the order [`Index::insert_loaded`] takes in O(1)).
    /// Holds one shard lock at a time.
    pub fn for_each_lru(&self, mut f: impl FnMut(&EntryInfo, u64)) {
        for slot in self.shards.iter() {
            let shard = slot.lock();
            let mut i = shard.tail;
            while i != NIL {
                let node = shard.node(i);
                f(&node.info, node.tick);
                i = node.prev;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    /// A hash that lands in shard `shard` (to spread test entries deliberately).
    fn hash_in(shard: u64, n: u64) -> u64 {
        (n << 40) | (shard << SHARD_SHIFT) | n
    }

    fn info(hash: u64, size: u64) -> EntryInfo {
        EntryInfo {
            hash,
            size,
            generation: 0,
        }
    }

    fn put(ix: &Index, hash: u64, size: u64) -> Vec<Victim> {
        let (r, victims) = ix.reserve(size).unwrap();
        ix.commit(r, info(hash, size));
        victims
    }

    /// Walks every shard, checking list/map agreement and tick order, and returns
    /// (entries, bytes).
    fn audit(ix: &Index) -> (usize, u64) {
        let (mut n, mut bytes) = (0, 0);
        for slot in ix.shards.iter() {
            let shard = slot.lock();
            let mut i = shard.head;
            let mut prev = NIL;
            let mut last_tick = u64::MAX;
            let mut count = 0;
            while i != NIL {
                let node = shard.node(i);
                assert_eq!(node.prev, prev);
                assert!(node.tick <= last_tick, "list not sorted by tick");
                assert_eq!(shard.map.get(&node.info.hash), Some(&i));
                last_tick = node.tick;
                bytes += node.info.size;
                count += 1;
                prev = i;
                i = node.next;
            }
            assert_eq!(shard.tail, prev);
            assert_eq!(count, shard.map.len());
            assert_eq!(slot.tail_tick.load(Ordering::Acquire), shard.tail_tick());
            n += count;
        }
        assert_eq!(n, ix.len());
        assert_eq!(bytes, ix.used());
        assert_eq!(
            ix.counters.charged.load(Ordering::Acquire),
            ix.used() + ix.reserved()
        );
        (n, bytes)
    }

    #[test]
    fn index_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Index>();
        check::<Reservation>();
    }

    #[test]
    fn lru_order_across_shards() {
        let ix = Index::new(1000);
        let hashes: Vec<u64> = (0..10)
            .map(|i| hash_in(i * 7 % SHARDS as u64, i + 1))
            .collect();
        for &h in &hashes {
            assert!(put(&ix, h, 100).is_empty());
        }
        assert_eq!((ix.used(), ix.len()), (1000, 10));
        // Touch the three oldest: the LRU order is now 3..10, 0, 2, 1.
        for i in [0, 2, 1] {
            assert!(ix.get(hashes[i]).is_some());
        }
        // peek does not touch.
        assert!(ix.peek(hashes[3]).is_some());
        let (r, victims) = ix.reserve(250).unwrap();
        let got: Vec<u64> = victims.iter().map(|v| v.hash).collect();
        assert_eq!(got, vec![hashes[3], hashes[4], hashes[5]]);
        assert_eq!(ix.used() + ix.reserved(), 950);
        drop(r);
        let (_r, victims) = ix.reserve(1000).unwrap();
        let got: Vec<u64> = victims.iter().map(|v| v.hash).collect();
        let want: Vec<u64> = [6, 7, 8, 9, 0, 2, 1].iter().map(|&i| hashes[i]).collect();
        assert_eq!(got, want);
        assert_eq!(audit(&ix), (0, 0));
    }

    #[test]
    fn too_big_and_transient() {
        let ix = Index::new(100);
        put(&ix, hash_in(1, 1), 40);
        let e = ix.reserve(101).unwrap_err();
        assert!(!e.is_transient() && e.victims.is_empty());
        assert_eq!(ix.len(), 1, "a hopeless request evicts nothing");
        let (mut r, _) = ix.reserve(50).unwrap();
        let e = ix.grow(&mut r, 51).unwrap_err();
        assert!(!e.is_transient());
        assert_eq!(r.bytes(), 50);
        let v = ix.grow(&mut r, 20).unwrap();
        assert_eq!(v.len(), 1, "the 40-byte entry made room");
        // Reservations hold 70 + 30; nothing evictable is left for another byte.
        let (_r2, _) = ix.reserve(30).unwrap();
        let e = ix.reserve(1).unwrap_err();
        assert!(e.is_transient() && e.victims.is_empty());
        assert_eq!(ix.used() + ix.reserved(), 100);
    }

    #[test]
    fn drop_releases_from_any_thread() {
        let ix = Index::new(100);
        let (r, _) = ix.reserve(70).unwrap();
        assert_eq!(ix.reserved(), 70);
        std::thread::spawn(move || drop(r)).join().unwrap();
        assert_eq!(ix.reserved(), 0);
        let (r, _) = ix.reserve(100).unwrap();
        drop(r);
        audit(&ix);
    }

    #[test]
    fn commit_releases_surplus_and_replaces() {
        let ix = Index::new(1000);
        let h = hash_in(5, 1);
        let (r, _) = ix.reserve(300).unwrap();
        assert!(ix.commit(r, info(h, 120)).is_none());
        assert_eq!((ix.used(), ix.reserved()), (120, 0));
        let g1 = ix.peek(h).unwrap().generation;
        let (r, _) = ix.reserve(200).unwrap();
        let replaced = ix.commit(r, info(h, 200)).unwrap();
        assert_eq!(
            replaced,
            Victim {
                hash: h,
                generation: g1
            }
        );
        let now = ix.peek(h).unwrap();
        assert!(now.generation > g1);
        assert_eq!((ix.used(), ix.len(), now.size), (200, 1, 200));
        // remove_if with a stale generation leaves the newer entry alone.
        assert!(ix.remove_if(h, g1).is_none());
        assert!(ix.remove_if(h, now.generation).is_some());
        assert!(ix.remove(h).is_none());
        assert_eq!(audit(&ix), (0, 0));
    }

    #[test]
    #[should_panic(expected = "reserved")]
    fn commit_larger_than_reservation_panics() {
        let ix = Index::new(1000);
        let (r, _) = ix.reserve(10).unwrap();
        ix.commit(r, info(1, 11));
    }

    #[test]
    fn insert_loaded_orders_by_last_access() {
        let ix = Index::new(10_000);
        // Out of order, several per shard, mixed shards.
        let times = [50u64, 10, 40, 30, 20, 60, 15, 45];
        for (n, &t) in times.iter().enumerate() {
            ix.insert_loaded(
                info(hash_in(n as u64 % 3, n as u64 + 1), 100),
                1_700_000_000 + t,
            );
        }
        audit(&ix);
        // An access after loading outranks every loaded entry.
        let newest_loaded = hash_in(5 % 3, 6);
        let oldest = hash_in(1, 2);
        assert!(ix.get(oldest).is_some());
        let (_r, victims) = ix.reserve(10_000).unwrap();
        let got: Vec<u64> = victims.iter().map(|v| v.hash).collect();
        let mut want: Vec<(u64, u64)> = times
            .iter()
            .enumerate()
            .map(|(n, &t)| (t, hash_in(n as u64 % 3, n as u64 + 1)))
            .filter(|&(_, h)| h != oldest)
            .collect();
        want.sort();
        let mut want: Vec<u64> = want.into_iter().map(|(_, h)| h).collect();
        want.push(oldest);
        assert_eq!(got, want);
        assert_eq!(got[got.len() - 2], newest_loaded);
    }

    #[test]
    fn insert_scanned_keeps_newer_entries_and_resort_restores_lru() {
        let ix = Index::new(100_000);
        ix.raise_tick(10_000);
        // A fill committed during the scan: the scan's file of the same hash is older.
        let filled = hash_in(3, 1);
        put(&ix, filled, 500);
        assert!(!ix.insert_scanned(info(filled, 100), 5_000));
        assert_eq!(ix.peek(filled).unwrap().size, 500);
        // Scanned entries in no particular order, all older than the fill.
        let mtimes = [50u64, 10, 40, 30, 20, 60];
        for (n, &t) in mtimes.iter().enumerate() {
            assert!(ix.insert_scanned(info(hash_in(3, n as u64 + 2), 10), t));
        }
        ix.resort();
        audit(&ix);
        let (_r, victims) = ix.reserve(100_000).unwrap();
        let got: Vec<u64> = victims.iter().map(|v| v.hash).collect();
        let mut want: Vec<(u64, u64)> = mtimes
            .iter()
            .enumerate()
            .map(|(n, &t)| (t, hash_in(3, n as u64 + 2)))
            .collect();
        want.sort();
        let mut want: Vec<u64> = want.into_iter().map(|(_, h)| h).collect();
        want.push(filled);
        assert_eq!(got, want);
    }

    #[test]
    fn entries_are_small() {
        assert!(std::mem::size_of::<shard::Node>() <= 40);
        let ix = Index::new(u64::MAX / 4);
        let n = 100_000u64;
        for i in 0..n {
            ix.insert_loaded(info(Rng(i).next(), 1), i);
        }
        let per_entry = ix.memory_bytes() as f64 / n as f64;
        assert!(per_entry <= 128.0, "{per_entry} bytes per entry");
    }

    /// Deterministic PRNG (splitmix64) for the property tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random reserve/grow/commit/get/remove/drop against a model of recency; checks the
    /// budget after every step and that every eviction took the model's least recent entry.
    #[test]
    fn property_limit_and_lru() {
        const LIMIT: u64 = 10_000;
        let ix = Index::new(LIMIT);
        let mut rng = Rng(42);
        // Model: hash -> (size, order) and order -> hash; order grows on commit/touch.
        let mut entries: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut by_order: BTreeMap<u64, u64> = BTreeMap::new();
        let mut order = 0u64;
        let mut held: Vec<Reservation> = Vec::new();
        let mut evictions = 0;
        let ids: Vec<u64> = (0..200).map(|i| Rng(i).next()).collect();

        let mut check_victims =
            |victims: &[Victim],
             entries: &mut HashMap<u64, (u64, u64)>,
             by_order: &mut BTreeMap<u64, u64>| {
                for v in victims {
                    let (&oldest_order, &oldest) = by_order.iter().next().expect("model not empty");
                    assert_eq!(
                        v.hash, oldest,
                        "evicted entry was not the least recently used"
                    );
                    by_order.remove(&oldest_order);
                    entries.remove(&oldest);
                    evictions += 1;
                }
            };

        for _ in 0..20_000 {
            match rng.below(10) {
                0..=2 => match ix.reserve(rng.below(LIMIT / 4) + 1) {
                    Ok((r, v)) => {
                        check_victims(&v, &mut entries, &mut by_order);
                        held.push(r);
                    }
                    Err(e) => check_victims(&e.victims, &mut entries, &mut by_order),
                },
                3 if !held.is_empty() => {
                    let k = rng.below(held.len() as u64) as usize;
                    match ix.grow(&mut held[k], rng.below(LIMIT / 8)) {
                        Ok(v) => check_victims(&v, &mut entries, &mut by_order),
                        Err(e) => check_victims(&e.victims, &mut entries, &mut by_order),
                    }
                }
                4 | 5 if !held.is_empty() => {
                    let r = held.swap_remove(rng.below(held.len() as u64) as usize);
                    let size = rng.below(r.bytes() + 1);
                    let h = ids[rng.below(ids.len() as u64) as usize];
                    let replaced = ix.commit(r, info(h, size));
                    if let Some((_, o)) = entries.remove(&h) {
                        by_order.remove(&o);
                        assert_eq!(replaced.map(|v| v.hash), Some(h));
                    } else {
                        assert!(replaced.is_none());
                    }
                    order += 1;
                    entries.insert(h, (size, order));
                    by_order.insert(order, h);
                }
                6 | 7 => {
                    let h = ids[rng.below(ids.len() as u64) as usize];
                    let got = ix.get(h);
                    assert_eq!(got.is_some(), entries.contains_key(&h));
                    if let Some(e) = entries.get_mut(&h) {
                        by_order.remove(&e.1);
                        order += 1;
                        e.1 = order;
                        by_order.insert(order, h);
                    }
                }
                8 => {
                    let h = ids[rng.below(ids.len() as u64) as usize];
                    let got = ix.remove(h);
                    assert_eq!(got.is_some(), entries.contains_key(&h));
                    if let Some((_, o)) = entries.remove(&h) {
                        by_order.remove(&o);
                    }
                }
                _ if !held.is_empty() => {
                    held.swap_remove(rng.below(held.len() as u64) as usize);
                }
                _ => {}
            }
            assert!(ix.used() + ix.reserved() <= LIMIT);
            assert_eq!(ix.reserved(), held.iter().map(|r| r.bytes()).sum::<u64>());
            assert_eq!(ix.used(), entries.values().map(|e| e.0).sum::<u64>());
            assert_eq!(ix.len(), entries.len());
        }
        assert!(
            evictions > 100,
            "the test must exercise eviction ({evictions})"
        );
        held.clear();
        audit(&ix);
        assert_eq!(ix.reserved(), 0);
    }

    #[test]
    fn concurrent_hammer() {
        const LIMIT: u64 = 50_000;
        const THREADS: u64 = 4;
        const OPS: usize = 20_000;
        let ix = Arc::new(Index::new(LIMIT));
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let ix = Arc::clone(&ix);
                std::thread::spawn(move || {
                    let mut rng = Rng(t + 1);
                    let mut held: Vec<Reservation> = Vec::new();
                    let mut hits = 0;
                    for _ in 0..OPS {
                        let h = Rng(rng.below(500)).next();
                        match rng.below(8) {
                            0 | 1 => {
                                if let Ok((r, _)) = ix.reserve(rng.below(2_000) + 1) {
                                    held.push(r);
                                }
                            }
                            2 if !held.is_empty() => {
                                let _ = ix.grow(&mut held[0], rng.below(500));
                            }
                            3 | 4 if !held.is_empty() => {
                                let r = held.pop().unwrap();
                                let size = rng.below(r.bytes() + 1);
                                ix.commit(r, info(h, size));
                            }
                            5 | 6 => hits += ix.get(h).is_some() as usize,
                            7 => {
                                ix.remove(h);
                            }
                            _ => held.clear(),
                        }
                        let charged = ix.counters.charged.load(Ordering::Acquire);
                        assert!(charged <= LIMIT);
                        if held.len() > 4 {
                            held.clear();
                        }
                    }
                    hits
                })
            })
            .collect();
        let hits: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(hits > 0);
        assert_eq!(ix.reserved(), 0);
        let (_, bytes) = audit(&ix);
        assert!(bytes <= LIMIT);
    }
}
