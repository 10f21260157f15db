//! Reusable buffers of one core: transfer buffers for bodies, bulk buffers for large
//! fills, and the read buffers of client connections, lent while a request is read and
//! answered.

use std::cell::RefCell;

/// Size of the buffers bodies are moved through.
pub const TRANSFER_BUF: usize = 256 * 1024;
/// Transfer buffers kept for reuse per core (the rest of a burst goes back to the
/// allocator).
pub const MAX_POOLED_BUFS: usize = 16;
/// Size of the pieces a large fill moves (origin → disk → client) when it has the core to
/// itself. A fill copies each byte three times (socket → buffer, buffer → page cache,
/// buffer → client socket) and wakes a kernel worker per disk write: pieces of 2 MiB
/// halved a lone 1 GiB fill's CPU against 256 KiB ones, while 4 MiB ones cost more than
/// 256 KiB, and several fills on one core in 2 MiB pieces cost more too (README, "Fill
/// CPU").
pub const BULK_BUF: usize = 2 * 1024 * 1024;
/// Bulk buffers kept for reuse per core.
pub const MAX_POOLED_BULK: usize = 4;
/// A fill whose body is announced at least this long may move [`BULK_BUF`] pieces
/// ([`BufPool::claim_bulk`]); smaller and unannounced ones move [`TRANSFER_BUF`] pieces,
/// so that many small concurrent fills do not hold megabytes each.
pub const BULK_FILL_MIN: u64 = 16 * 1024 * 1024;
/// Capacity of a client connection's read buffer while a request is read and answered
/// (a connection waiting for its next request holds none, see
/// [`crate::stream::BufConn::pooled`]); a head longer than this grows it, and such a
/// buffer is not pooled.
pub const READ_BUF: usize = 16 * 1024;
/// Read buffers kept for reuse per core: requests in flight on a core at once need one
/// each; beyond this many, returned ones are freed.
pub const MAX_POOLED_READ_BUFS: usize = 64;

/// Spare buffers of one size, at most `max` of them.
struct FreeList {
    size: usize,
    max: usize,
    spare: RefCell<Vec<Vec<u8>>>,
}

impl FreeList {
    const fn new(size: usize, max: usize) -> Self {
        FreeList {
            size,
            max,
            spare: RefCell::new(Vec::new()),
        }
    }

    /// An empty buffer of this list's size: a spare one, else a new one.
    fn get(&self) -> Vec<u8> {
        self.spare
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Keeps `buf` (cleared) when it has this list's size and the list has room; frees
    /// it otherwise.
    fn put(&self, mut buf: Vec<u8>) {
        let mut spare = self.spare.borrow_mut();
        if buf.capacity() == self.size && spare.len() < self.max {
            buf.clear();
            spare.push(buf);
        }
    }

    fn len(&self) -> usize {
        self.spare.borrow().len()
    }
}

/// Reusable buffers of one core (large buffers would otherwise be mmapped and unmapped
/// by the allocator on every request). Every free list is bounded, so a burst of
/// requests leaves at most [`MAX_POOLED_BUFS`] + [`MAX_POOLED_BULK`] +
/// [`MAX_POOLED_READ_BUFS`] buffers behind.
pub struct BufPool {
    transfer: FreeList,
    bulk: FreeList,
    read: FreeList,
    /// Whether a fill of this core holds the bulk claim ([`BufPool::claim_bulk`]).
    bulk_claimed: std::cell::Cell<bool>,
}

impl Default for BufPool {
    fn default() -> Self {
        BufPool {
            transfer: FreeList::new(TRANSFER_BUF, MAX_POOLED_BUFS),
            bulk: FreeList::new(BULK_BUF, MAX_POOLED_BULK),
            read: FreeList::new(READ_BUF, MAX_POOLED_READ_BUFS),
            bulk_claimed: std::cell::Cell::new(false),
        }
    }
}

/// A fill's right to move [`BULK_BUF`] pieces on this core, given back on drop.
pub struct BulkClaim<'a>(&'a BufPool);

impl Drop for BulkClaim<'_> {
    fn drop(&mut self) {
        self.0.bulk_claimed.set(false);
    }
}

impl BufPool {
    /// A client connection's read buffer (empty, capacity [`READ_BUF`]).
    pub fn get_read(&self) -> Vec<u8> {
        self.read.get()
    }

    /// Takes a read buffer back: kept when it has its usual size and the list has room,
    /// else freed.
    pub fn put_read(&self, buf: Vec<u8>) {
        self.read.put(buf)
    }

    /// Read buffers kept for reuse.
    pub fn spare_read(&self) -> usize {
        self.read.len()
    }

    /// A transfer buffer (empty, capacity [`TRANSFER_BUF`]).
    pub fn get(&self) -> Vec<u8> {
        self.transfer.get()
    }

    /// An empty buffer of the same class as `like` (a bulk one for a bulk one): the
    /// next piece of a transfer keeps its size.
    pub fn get_like(&self, like: usize) -> Vec<u8> {
        match like {
            BULK_BUF => self.bulk.get(),
            _ => self.transfer.get(),
        }
    }

    /// Takes any buffer back to the list its size came from (a grown or foreign one is
    /// freed).
    pub fn put(&self, buf: Vec<u8>) {
        match buf.capacity() {
            READ_BUF => self.read.put(buf),
            BULK_BUF => self.bulk.put(buf),
            _ => self.transfer.put(buf),
        }
    }

    /// Lends a transfer buffer that goes back to this pool when the guard drops, on
    /// every path out of a transfer.
    pub fn lend(&self) -> Lent<'_> {
        Lent {
            buf: self.get(),
            pool: self,
        }
    }

    /// Bulk pieces for a fill of a body announced as `len` bytes: granted to a large body
    /// when no other fill of this core has them. One fill's bulk pieces stay in the
    /// core's cache between the socket, the disk write and the client; several fills'
    /// evict each other (measured: 4 concurrent 256 MiB fills with digests, 634-715 MiB/s
    /// in 256 KiB pieces, 399-517 when all moved 2 MiB ones).
    pub fn claim_bulk(&self, len: Option<u64>) -> Option<BulkClaim<'_>> {
        match len {
            Some(n) if n >= BULK_FILL_MIN && !self.bulk_claimed.get() => {
                self.bulk_claimed.set(true);
                Some(BulkClaim(self))
            }
            _ => None,
        }
    }

    /// Lends the first buffer of a fill: a bulk one if it holds the bulk claim, a
    /// transfer one otherwise.
    pub fn lend_for_fill(&self, claim: &Option<BulkClaim<'_>>) -> Lent<'_> {
        let buf = match claim {
            Some(_) => self.bulk.get(),
            None => self.transfer.get(),
        };
        Lent { buf, pool: self }
    }

    /// Lends a read-sized buffer ([`READ_BUF`]) for an answer known to be small (a tiny
    /// entry's head and body), so that small answers do not take the transfer buffers
    /// that large ones need; it goes back to the read list when the guard drops.
    pub fn lend_small(&self) -> Lent<'_> {
        Lent {
            buf: self.get_read(),
            pool: self,
        }
    }

    /// A guard holding no buffer yet (nothing is taken from the pool).
    pub fn lend_none(&self) -> Lent<'_> {
        Lent {
            buf: Vec::new(),
            pool: self,
        }
    }
}

/// A transfer buffer lent by a [`BufPool`], returned to it on drop. Owned-buffer I/O
/// (monoio) moves the vector out with [`Lent::take`] and back with [`Lent::put_back`];
/// a vector lost with a cancelled operation is simply not returned (the guard then
/// holds an empty vector, which the pool does not keep).
pub struct Lent<'a> {
    buf: Vec<u8>,
    pool: &'a BufPool,
}

impl Lent<'_> {
    /// Moves the vector out for an owned-buffer operation.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Puts the vector an owned-buffer operation gave back.
    pub fn put_back(&mut self, buf: Vec<u8>) {
        self.buf = buf;
    }
}

impl std::ops::Deref for Lent<'_> {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        // Back to the list its size came from (a grown or lost one is not kept).
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_buffer_returns_on_drop_and_a_lost_one_is_not_kept() {
        let pool = BufPool::default();
        {
            let mut b = pool.lend();
            b.extend_from_slice(b"x");
        }
        assert_eq!(pool.transfer.len(), 1);
        let b = pool.lend();
        assert!(b.is_empty(), "a returned buffer comes back cleared");
        assert_eq!(b.capacity(), TRANSFER_BUF);
        drop(b);
        assert_eq!(pool.transfer.len(), 1);
        {
            let mut b = pool.lend();
            drop(b.take()); // lost, as with a cancelled write
        }
        assert_eq!(pool.transfer.len(), 0);
    }

    #[test]
    fn a_small_loan_returns_to_the_read_list() {
        let pool = BufPool::default();
        {
            let mut b = pool.lend_small();
            assert_eq!(b.capacity(), READ_BUF);
            b.extend_from_slice(b"head and a tiny body");
        }
        assert_eq!(pool.spare_read(), 1);
        assert_eq!(pool.transfer.len(), 0, "no transfer buffer was taken");
        {
            let mut b = pool.lend_small();
            b.extend_from_slice(&[0; READ_BUF + 1]); // grown past its size: not kept
        }
        assert_eq!(pool.spare_read(), 0);
    }

    #[test]
    fn read_buffers_are_reused_and_the_spares_are_bounded() {
        let pool = BufPool::default();
        let b = pool.get_read();
        assert_eq!(b.capacity(), READ_BUF);
        let ptr = b.as_ptr();
        pool.put_read(b);
        let again = pool.get_read();
        assert_eq!(again.as_ptr(), ptr, "the same buffer comes back");
        pool.put_read(again);
        let burst: Vec<_> = (0..MAX_POOLED_READ_BUFS + 10)
            .map(|_| pool.get_read())
            .collect();
        for b in burst {
            pool.put_read(b);
        }
        assert_eq!(pool.spare_read(), MAX_POOLED_READ_BUFS);
        // A buffer that grew for a long head is freed, not kept.
        let mut big = pool.get_read();
        big.reserve(4 * READ_BUF);
        pool.put_read(big);
        assert_eq!(pool.spare_read(), MAX_POOLED_READ_BUFS - 1);
    }

    #[test]
    fn a_fill_takes_a_bulk_buffer_only_for_a_large_announced_body() {
        let pool = BufPool::default();
        let cases: &[(Option<u64>, usize)] = &[
            (None, TRANSFER_BUF),
            (Some(0), TRANSFER_BUF),
            (Some(BULK_FILL_MIN - 1), TRANSFER_BUF),
            (Some(BULK_FILL_MIN), BULK_BUF),
            (Some(40 << 30), BULK_BUF),
        ];
        for &(len, size) in cases {
            let claim = pool.claim_bulk(len);
            let b = pool.lend_for_fill(&claim);
            assert_eq!(b.capacity(), size, "{len:?}");
            // The next piece of the same transfer keeps the class.
            let next = pool.get_like(b.capacity());
            assert_eq!(next.capacity(), size, "{len:?}");
            pool.put(next);
        }
        // Each went back to its own list (two of a class were out at once).
        assert_eq!(pool.bulk.len(), 2);
        assert_eq!(pool.transfer.len(), 2);
        let burst: Vec<_> = (0..MAX_POOLED_BULK + 3)
            .map(|_| pool.get_like(BULK_BUF))
            .collect();
        for b in burst {
            pool.put(b);
        }
        assert_eq!(pool.bulk.len(), MAX_POOLED_BULK);
        assert_eq!(
            pool.transfer.len(),
            2,
            "bulk buffers never land on the transfer list"
        );
    }

    #[test]
    fn one_fill_per_core_holds_the_bulk_claim_at_a_time() {
        let pool = BufPool::default();
        let large = Some(BULK_FILL_MIN);
        let first = pool.claim_bulk(large);
        assert!(first.is_some());
        // A second large fill on this core moves transfer pieces.
        let second = pool.claim_bulk(large);
        assert!(second.is_none());
        assert_eq!(pool.lend_for_fill(&second).capacity(), TRANSFER_BUF);
        assert_eq!(pool.lend_for_fill(&first).capacity(), BULK_BUF);
        // Once the first ends, the next large fill gets it.
        drop(first);
        assert!(pool.claim_bulk(large).is_some());
        // A small body never takes it.
        assert!(pool.claim_bulk(Some(BULK_FILL_MIN - 1)).is_none());
    }
}
