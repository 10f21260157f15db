//! Reusable buffers of one core: transfer buffers for bodies, and the read buffers of
//! client connections, lent while a request is read and answered.

use std::cell::RefCell;

/// Size of the buffers bodies are moved through.
pub const TRANSFER_BUF: usize = 256 * 1024;
/// Transfer buffers kept for reuse per core (the rest of a burst goes back to the
/// allocator).
pub const MAX_POOLED_BUFS: usize = 16;
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
/// by the allocator on every request). Both free lists are bounded, so a burst of
/// requests leaves at most [`MAX_POOLED_BUFS`] + [`MAX_POOLED_READ_BUFS`] buffers behind.
pub struct BufPool {
    transfer: FreeList,
    read: FreeList,
}

impl Default for BufPool {
    fn default() -> Self {
        BufPool {
            transfer: FreeList::new(TRANSFER_BUF, MAX_POOLED_BUFS),
            read: FreeList::new(READ_BUF, MAX_POOLED_READ_BUFS),
        }
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

    /// Takes any buffer back to the list its size came from (a grown or foreign one is
    /// freed).
    pub fn put(&self, buf: Vec<u8>) {
        match buf.capacity() {
            READ_BUF => self.read.put(buf),
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
}
