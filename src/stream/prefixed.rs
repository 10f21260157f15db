//! A stream that first yields bytes already read from it: a client may send its TLS
//! ClientHello right behind the CONNECT head (without waiting for our 200), so those
//! bytes sit in the connection's read buffer and the TLS acceptor must see them first.

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::BufResult;

pub struct Prefixed<S> {
    io: S,
    /// Bytes to hand out before reading `io`; valid data is `prefix[pos..]`.
    prefix: Vec<u8>,
    pos: usize,
}

impl<S> Prefixed<S> {
    pub fn new(io: S, prefix: Vec<u8>) -> Self {
        Prefixed { io, prefix, pos: 0 }
    }

    fn pending(&self) -> &[u8] {
        &self.prefix[self.pos..]
    }

    /// Copies pending prefix bytes to `dst` (at most `room`); returns how many.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `room` bytes.
    unsafe fn copy_out(&mut self, dst: *mut u8, room: usize) -> usize {
        let n = self.pending().len().min(room);
        std::ptr::copy_nonoverlapping(self.pending().as_ptr(), dst, n);
        self.pos += n;
        if self.pos == self.prefix.len() {
            // Give the memory back: the prefix is read once.
            self.prefix = Vec::new();
            self.pos = 0;
        }
        n
    }
}

impl<S: AsyncReadRent> AsyncReadRent for Prefixed<S> {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        if self.pending().is_empty() {
            return self.io.read(buf).await;
        }
        let room = buf.bytes_total();
        // SAFETY: write_ptr is valid for bytes_total bytes; set_init marks what we wrote.
        unsafe {
            let n = self.copy_out(buf.write_ptr(), room);
            buf.set_init(n);
            (Ok(n), buf)
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        if self.pending().is_empty() {
            return self.io.readv(buf).await;
        }
        // Fill the iovecs in order from the prefix; the socket is read on the next call.
        let mut total = 0;
        // SAFETY: each iovec's base is valid for its len; set_init records the total.
        unsafe {
            let iovs = std::slice::from_raw_parts(buf.write_iovec_ptr(), buf.write_iovec_len());
            for iov in iovs {
                if self.pending().is_empty() {
                    break;
                }
                total += self.copy_out(iov.iov_base as *mut u8, iov.iov_len);
            }
            buf.set_init(total);
        }
        (Ok(total), buf)
    }
}

impl<S: AsyncWriteRent> AsyncWriteRent for Prefixed<S> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.io.write(buf).await
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.io.writev(buf).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.io.flush().await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that yields fixed chunks, then end of stream.
    struct Chunks(Vec<Vec<u8>>);

    impl AsyncReadRent for Chunks {
        async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
            if self.0.is_empty() {
                return (Ok(0), buf);
            }
            let n = self.0[0].len().min(buf.bytes_total());
            let chunk: Vec<u8> = self.0[0].drain(..n).collect();
            if self.0[0].is_empty() {
                self.0.remove(0);
            }
            unsafe {
                std::ptr::copy_nonoverlapping(chunk.as_ptr(), buf.write_ptr(), n);
                buf.set_init(n);
            }
            (Ok(n), buf)
        }

        async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
            (Ok(0), buf)
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn prefix_first_then_stream_with_small_buffers() {
        run(async {
            let mut s = Prefixed::new(Chunks(vec![b"world".to_vec()]), b"hello ".to_vec());
            let mut got = Vec::new();
            loop {
                let (r, b) = s.read(Vec::with_capacity(4)).await;
                let n = r.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&b[..n]);
            }
            assert_eq!(got, b"hello world");
        });
    }

    #[test]
    fn empty_prefix_reads_the_stream() {
        run(async {
            let mut s = Prefixed::new(Chunks(vec![b"abc".to_vec()]), Vec::new());
            let (r, b) = s.read(Vec::with_capacity(16)).await;
            assert_eq!(r.unwrap(), 3);
            assert_eq!(&b[..], b"abc");
        });
    }

    #[test]
    fn readv_fills_iovecs_in_order() {
        run(async {
            let mut s = Prefixed::new(Chunks(vec![]), b"0123456789".to_vec());
            // VecBuf's iovecs span each Vec's length.
            let bufs = monoio::buf::VecBuf::from(vec![vec![0u8; 4], vec![0u8; 4]]);
            let (r, bufs) = s.readv(bufs).await;
            assert_eq!(r.unwrap(), 8);
            let v: Vec<Vec<u8>> = bufs.into();
            assert_eq!(v[0], b"0123");
            assert_eq!(v[1], b"4567");
            let (r, b) = s.read(Vec::with_capacity(16)).await;
            assert_eq!(r.unwrap(), 2);
            assert_eq!(&b[..], b"89");
        });
    }
}
