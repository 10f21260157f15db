//! A connection with a read buffer: heads are parsed out of it, and body bytes that
//! arrived together with a head are taken from it before reading the socket again.

use std::future::Future;
use std::io;
use std::rc::Rc;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent};
use monoio::BufResult;

use super::BufPool;

/// Bytes asked of the kernel per read when the buffer has less room than this.
pub const READ_CHUNK: usize = 16 * 1024;
/// Initial buffer capacity of a connection (one head usually fits).
pub const INITIAL_BUF: usize = 8 * 1024;

pub struct BufConn<S> {
    pub io: S,
    /// Valid data is `buf[pos..]`.
    buf: ReadBuf,
    pos: usize,
    /// Tells whether a read of `io` would return at once ([`BufConn::with_probe`]).
    probe: Option<fn(&S) -> bool>,
}

/// A connection's read buffer and the pool it goes back to when the connection is
/// dropped ([`BufConn::pooled`]).
struct ReadBuf {
    vec: Vec<u8>,
    pool: Option<Rc<BufPool>>,
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.put_read(std::mem::take(&mut self.vec));
        }
    }
}

impl<S> BufConn<S> {
    pub fn new(io: S) -> Self {
        Self::with_buffer(io, Vec::with_capacity(INITIAL_BUF))
    }

    pub fn with_buffer(io: S, mut buf: Vec<u8>) -> Self {
        buf.clear();
        BufConn {
            io,
            buf: ReadBuf {
                vec: buf,
                pool: None,
            },
            pos: 0,
            probe: None,
        }
    }

    /// A connection that holds no read buffer until it reads: [`BufConn::fill`] takes
    /// one from `pool`, and [`BufConn::release`] (and dropping the connection) gives it
    /// back. A client connection waiting for its next request so costs no buffer.
    pub fn pooled(io: S, pool: Rc<BufPool>) -> Self {
        BufConn {
            io,
            buf: ReadBuf {
                vec: Vec::new(),
                pool: Some(pool),
            },
            pos: 0,
            probe: None,
        }
    }

    /// Sets how to tell, without reading, whether a read of the connection would return
    /// at once (bytes, or the end, already there). Reads that only gather more of a
    /// bulk body into one piece ([`crate::stream::BodyReader::read`]) are made only then,
    /// so that bytes that arrived are never held back waiting for more.
    pub fn with_probe(mut self, probe: fn(&S) -> bool) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Whether a read would return at once, as far as the probe can tell (no probe: it
    /// is assumed to).
    pub fn input_ready(&self) -> bool {
        self.probe.is_none_or(|p| p(&self.io))
    }

    /// Gives the read buffer back to the pool when nothing is buffered (the request is
    /// answered and no pipelined bytes wait); otherwise, and without a pool, only
    /// shrinks it ([`BufConn::shrink`]).
    pub fn release(&mut self) {
        match &self.buf.pool {
            Some(pool) if self.buffered().is_empty() => {
                pool.put_read(std::mem::take(&mut self.buf.vec));
                self.pos = 0;
            }
            _ => self.shrink(),
        }
    }

    /// Whether a read buffer is held.
    pub fn holds_buffer(&self) -> bool {
        self.buf.vec.capacity() > 0
    }

    pub fn buffered(&self) -> &[u8] {
        &self.buf.vec[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(self.pos + n <= self.buf.vec.len());
        self.pos += n;
        if self.pos == self.buf.vec.len() {
            self.buf.vec.clear();
            self.pos = 0;
        }
    }

    /// Moves up to `max` buffered bytes to the end of `out`; returns how many.
    pub fn take_into(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        let n = self.buffered().len().min(max);
        out.extend_from_slice(&self.buf.vec[self.pos..self.pos + n]);
        self.consume(n);
        n
    }

    /// Shrinks a buffer that grew for a large head back to its usual size.
    pub fn shrink(&mut self) {
        if self.buf.vec.capacity() > 4 * INITIAL_BUF && self.buffered().len() <= INITIAL_BUF {
            let mut fresh = Vec::with_capacity(INITIAL_BUF);
            fresh.extend_from_slice(self.buffered());
            self.buf.vec = fresh;
            self.pos = 0;
        }
    }

    /// The stream and the bytes read but not consumed (they go on with the stream; the
    /// pool does not get this buffer back).
    pub fn into_parts(mut self) -> (S, Vec<u8>) {
        let mut buf = std::mem::take(&mut self.buf.vec);
        buf.drain(..self.pos);
        (self.io, buf)
    }
}

/// A stream that can wait for input without lending a buffer to the kernel, and whose
/// reads can be cancelled without losing bytes.
pub trait WaitReadable: AsyncReadRent {
    /// Whether [`WaitReadable::readable`] waits without a buffer and
    /// [`WaitReadable::read_cancelable`] can be cancelled; when false, a connection
    /// waiting for input reads with its buffer (a TLS stream: its own buffers may
    /// already hold bytes the socket no longer shows).
    fn bufferless(&self) -> bool {
        false
    }

    /// Resolves when a read would not block (bytes or end of stream arrived, or an
    /// error), or at once when not [`WaitReadable::bufferless`].
    fn readable(&self) -> impl Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }

    /// A read that `cancel` stops: it then ends with `ECANCELED` and the buffer, or
    /// with the bytes that arrived first (never losing them, unlike dropping a read).
    /// Not [`WaitReadable::bufferless`]: a plain read that ignores `cancel`.
    fn read_cancelable<T: IoBufMut>(
        &mut self,
        buf: T,
        cancel: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, T>> {
        let _ = cancel;
        self.read(buf)
    }
}

impl WaitReadable for monoio::net::TcpStream {
    fn bufferless(&self) -> bool {
        true
    }

    /// io_uring: a POLL_ADD; epoll: the readiness, then a poll(2) that rules out a
    /// stale readiness (`relaxed: false`), so no read with a buffer is left pending.
    fn readable(&self) -> impl Future<Output = io::Result<()>> {
        monoio::net::TcpStream::readable(self, false)
    }

    fn read_cancelable<T: IoBufMut>(
        &mut self,
        buf: T,
        cancel: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, T>> {
        CancelableAsyncReadRent::cancelable_read(self, buf, cancel)
    }
}

impl<S: WaitReadable> WaitReadable for crate::metrics::Metered<S> {
    fn bufferless(&self) -> bool {
        self.0.bufferless()
    }
    fn readable(&self) -> impl Future<Output = io::Result<()>> {
        self.0.readable()
    }
    fn read_cancelable<T: IoBufMut>(
        &mut self,
        buf: T,
        cancel: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, T>> {
        self.0.read_cancelable(buf, cancel)
    }
}

impl<S: AsyncReadRent + AsyncWriteRent> WaitReadable for monoio_rustls::ServerTlsStream<S> {}

impl<S: AsyncReadRent> BufConn<S> {
    /// Reads more bytes after the buffered ones. `Ok(0)` means end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        let (buf, len, cap) = self.read_room();
        let (res, slice) = self.io.read(buf.slice_mut(len..cap)).await;
        self.buf.vec = slice.into_inner();
        res
    }

    /// The buffer to read into (taken from the pool when none is held), with room for
    /// [`READ_CHUNK`] bytes after the buffered ones; it is moved out for the read.
    fn read_room(&mut self) -> (Vec<u8>, usize, usize) {
        if self.pos > 0 {
            self.buf.vec.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.vec.capacity() == 0 {
            if let Some(pool) = &self.buf.pool {
                self.buf.vec = pool.get_read();
            }
        }
        let len = self.buf.vec.len();
        if self.buf.vec.capacity() - len < READ_CHUNK {
            self.buf.vec.reserve(READ_CHUNK);
        }
        let cap = self.buf.vec.capacity();
        (std::mem::take(&mut self.buf.vec), len, cap)
    }
}

impl<S: WaitReadable> BufConn<S> {
    /// [`BufConn::fill`] with a read that `cancel` stops ([`WaitReadable::read_cancelable`]):
    /// `ECANCELED` then, with the buffer kept, unless bytes arrived first.
    pub async fn fill_cancelable(&mut self, cancel: CancelHandle) -> io::Result<usize> {
        let (buf, len, cap) = self.read_room();
        let (res, slice) = self
            .io
            .read_cancelable(buf.slice_mut(len..cap), cancel)
            .await;
        self.buf.vec = slice.into_inner();
        res
    }
}
