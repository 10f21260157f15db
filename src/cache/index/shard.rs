//! One shard of the [`Index`](super::Index): a hash map from key hash to a slab slot, and
//! the intrusive LRU list threaded through the slab (head = most recent), with the atomic
//! that publishes its tail's tick to eviction.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{EntryInfo, EMPTY, NIL};

/// The map's keys are already xxh3 hashes: pass them through instead of re-hashing.
#[derive(Default)]
pub(super) struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used for u64 keys; a simple fold keeps it correct for anything else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(super) struct Node {
    pub(super) info: EntryInfo,
    pub(super) tick: u64,
    pub(super) prev: u32,
    pub(super) next: u32,
}

/// One shard: map + slab + LRU list (head = most recent).
pub(super) struct Shard {
    pub(super) map: HashMap<u64, u32, BuildHasherDefault<PassThroughHasher>>,
    pub(super) nodes: Vec<Node>,
    pub(super) free: Vec<u32>,
    pub(super) head: u32,
    pub(super) tail: u32,
}

impl Shard {
    pub(super) fn new() -> Self {
        Shard {
            map: HashMap::default(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    pub(super) fn node(&self, i: u32) -> &Node {
        &self.nodes[i as usize]
    }

    pub(super) fn node_mut(&mut self, i: u32) -> &mut Node {
        &mut self.nodes[i as usize]
    }

    pub(super) fn tail_tick(&self) -> u64 {
        if self.tail == NIL {
            EMPTY
        } else {
            self.node(self.tail).tick
        }
    }

    pub(super) fn unlink(&mut self, i: u32) {
        let (prev, next) = (self.node(i).prev, self.node(i).next);
        if prev == NIL {
            self.head = next;
        } else {
            self.node_mut(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.node_mut(next).prev = prev;
        }
    }

    /// Links node `i` just before `at` (`at == NIL` appends at the tail).
    pub(super) fn link_before(&mut self, i: u32, at: u32) {
        let prev = if at == NIL {
            self.tail
        } else {
            self.node(at).prev
        };
        {
            let n = self.node_mut(i);
            n.prev = prev;
            n.next = at;
        }
        if prev == NIL {
            self.head = i;
        } else {
            self.node_mut(prev).next = i;
        }
        if at == NIL {
            self.tail = i;
        } else {
            self.node_mut(at).prev = i;
        }
    }

    /// Links `i` (whose tick is set) where its tick belongs: O(1) at either end, which is
    /// every case except startup loading out of order.
    pub(super) fn link_sorted(&mut self, i: u32) {
        let tick = self.node(i).tick;
        if self.head == NIL || tick >= self.node(self.head).tick {
            self.link_before(i, self.head);
        } else if tick <= self.tail_tick() {
            self.link_before(i, NIL);
        } else {
            let mut at = self.head;
            while at != NIL && self.node(at).tick > tick {
                at = self.node(at).next;
            }
            self.link_before(i, at);
        }
    }

    /// Links `i` at the head or the tail where its tick belongs there, else at the tail
    /// (the background scan; [`Shard::resort`] restores the order afterwards). O(1).
    pub(super) fn link_sorted_or_tail(&mut self, i: u32) {
        let tick = self.node(i).tick;
        if self.head != NIL && tick >= self.node(self.head).tick {
            self.link_before(i, self.head);
        } else {
            self.link_before(i, NIL);
        }
    }

    /// Relinks the whole list in tick order (head = highest tick).
    pub(super) fn resort(&mut self) {
        let mut order = Vec::with_capacity(self.map.len());
        let mut i = self.head;
        while i != NIL {
            order.push(i);
            i = self.node(i).next;
        }
        order.sort_unstable_by_key(|&i| std::cmp::Reverse(self.node(i).tick));
        self.head = NIL;
        self.tail = NIL;
        for i in order {
            self.link_before(i, NIL);
        }
    }

    /// Room for `n` more entries without regrowing.
    pub(super) fn reserve(&mut self, n: usize) {
        self.map.reserve(n);
        self.nodes.reserve_exact(n.saturating_sub(self.free.len()));
    }

    /// Bytes held by this shard's structures: the slab and free list by capacity, the
    /// hash map by its buckets (a power of two holding 8/7 of its capacity, each a
    /// `(u64, u32)` slot plus one control byte).
    pub(super) fn memory_bytes(&self) -> usize {
        let buckets = match self.map.capacity() {
            0 => 0,
            c if c < 8 => (c + 1).next_power_of_two(),
            c => (c * 8 / 7).next_power_of_two(),
        };
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + buckets * (std::mem::size_of::<(u64, u32)>() + 1)
    }

    pub(super) fn touch(&mut self, i: u32, tick: u64) {
        self.node_mut(i).tick = tick;
        if self.head != i {
            self.unlink(i);
            self.link_before(i, self.head);
        }
    }

    /// Allocates a slab slot (unlinked) and maps `info.hash` to it.
    pub(super) fn alloc(&mut self, info: EntryInfo, tick: u64) -> u32 {
        let hash = info.hash;
        let node = Node {
            info,
            tick,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                let i = u32::try_from(self.nodes.len()).expect("under 2^32 entries per shard");
                assert!(i != NIL, "under 2^32 entries per shard");
                self.nodes.push(node);
                i
            }
        };
        self.map.insert(hash, i);
        i
    }

    /// Unmaps, unlinks and frees node `i`, returning its info.
    pub(super) fn remove_node(&mut self, i: u32) -> EntryInfo {
        self.unlink(i);
        let info = std::mem::take(&mut self.node_mut(i).info);
        self.map.remove(&info.hash);
        self.free.push(i);
        info
    }
}

#[repr(align(64))] // one cache line per shard header: no false sharing between shards
pub(super) struct ShardSlot {
    pub(super) shard: Mutex<Shard>,
    /// The tick of this shard's LRU tail ([`EMPTY`] if none); written under the lock.
    pub(super) tail_tick: AtomicU64,
}

impl ShardSlot {
    pub(super) fn lock(&self) -> MutexGuard<'_, Shard> {
        self.shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn publish_tail(&self, shard: &Shard) {
        self.tail_tick.store(shard.tail_tick(), Ordering::Release);
    }
}
