//! A connection with a read buffer: heads are parsed out of it, and body bytes that
//! arrived together with a head are taken from it before reading the socket again.

use std::io;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;

/// Bytes asked of the kernel per read when the buffer has less room than this.
pub const READ_CHUNK: usize = 16 * 1024;
/// Initial buffer capacity of a connection (one head usually fits).
pub const INITIAL_BUF: usize = 8 * 1024;

pub struct BufConn<S> {
    pub io: S,
    /// Valid data is `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
}

impl<S> BufConn<S> {
    pub fn new(io: S) -> Self {
        Self::with_buffer(io, Vec::with_capacity(INITIAL_BUF))
    }

    pub fn with_buffer(io: S, mut buf: Vec<u8>) -> Self {
        buf.clear();
        BufConn { io, buf, pos: 0 }
    }

    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(self.pos + n <= self.buf.len());
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Moves up to `max` buffered bytes to the end of `out`; returns how many.
    pub fn take_into(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        let n = self.buffered().len().min(max);
        out.extend_from_slice(&self.buf[self.pos..self.pos + n]);
        self.consume(n);
        n
    }

    /// Shrinks a buffer that grew for a large head back to its usual size.
    pub fn shrink(&mut self) {
        if self.buf.capacity() > 4 * INITIAL_BUF && self.buffered().len() <= INITIAL_BUF {
            let mut fresh = Vec::with_capacity(INITIAL_BUF);
            fresh.extend_from_slice(self.buffered());
            self.buf = fresh;
            self.pos = 0;
        }
    }

    pub fn into_parts(self) -> (S, Vec<u8>) {
        let mut buf = self.buf;
        buf.drain(..self.pos);
        (self.io, buf)
    }
}

impl<S: AsyncReadRent> BufConn<S> {
    /// Reads more bytes after the buffered ones. `Ok(0)` means end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        if self.buf.capacity() - len < READ_CHUNK {
            self.buf.reserve(READ_CHUNK);
        }
        let cap = self.buf.capacity();
        let buf = std::mem::take(&mut self.buf);
        let (res, slice) = self.io.read(buf.slice_mut(len..cap)).await;
        self.buf = slice.into_inner();
        res
    }
}
