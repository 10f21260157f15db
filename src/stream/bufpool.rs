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
