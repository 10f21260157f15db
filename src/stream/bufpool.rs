//! Reusable transfer buffers of one core.

use std::cell::RefCell;

/// Size of the buffers bodies are moved through.
pub const TRANSFER_BUF: usize = 256 * 1024;
/// Transfer buffers kept for reuse per core.
pub const MAX_POOLED_BUFS: usize = 16;

/// Reusable transfer buffers of one core (large buffers would otherwise be mmapped and
/// unmapped by the allocator on every request).
#[derive(Default)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    pub fn get(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(TRANSFER_BUF))
    }

    pub fn put(&self, mut buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if buf.capacity() == TRANSFER_BUF && free.len() < MAX_POOLED_BUFS {
            buf.clear();
            free.push(buf);
        }
    }
}

impl BufPool {
    /// Lends a transfer buffer that goes back to this pool when the guard drops, on
    /// every path out of a transfer.
    pub fn lend(&self) -> Lent<'_> {
        Lent {
            buf: self.get(),
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
        assert_eq!(pool.free.borrow().len(), 1);
        let b = pool.lend();
        assert!(b.is_empty(), "a returned buffer comes back cleared");
        assert_eq!(b.capacity(), TRANSFER_BUF);
        drop(b);
        assert_eq!(pool.free.borrow().len(), 1);
        {
            let mut b = pool.lend();
            drop(b.take()); // lost, as with a cancelled write
        }
        assert_eq!(pool.free.borrow().len(), 0);
    }
}
