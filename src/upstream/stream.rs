//! The stream type of an origin connection: plain TCP or TLS, with an optional idle
//! bound on every read (the body-read timeout, `timeouts.upstream-body`) and a
//! non-blocking check that an idle connection has nothing unsolicited to read.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use monoio::BufResult;

/// A verified TLS connection to an https origin (boxed: the rustls state is large and
/// pooled connections are moved around).
pub type TlsUpStream = monoio_rustls::ClientTlsStream<TcpStream>;

pub enum Transport {
    Tcp(TcpStream),
    Tls(Box<TlsUpStream>),
    /// A placeholder left behind when a connection went back to the pool.
    Closed,
}

pub struct UpStream {
    pub transport: Transport,
    /// The TCP socket under `transport` (also under TLS), for the idle check; -1 when
    /// closed.
    fd: RawFd,
    /// When set, a read that gets no byte for this long fails with `TimedOut`.
    read_timeout: Option<Duration>,
    /// A read timed out after this long: the connection's state is unknown (a cancelled
    /// read may have consumed bytes), so every further read fails the same way and it is
    /// never pooled.
    broken: Option<Duration>,
    /// An origin's connection (not a peer's): its bytes count as received from origins.
    origin: bool,
}

fn closed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "connection returned to the pool",
    )
}

fn timed_out(d: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("origin sent nothing for {d:?}"),
    )
}

impl UpStream {
    pub fn tcp(s: TcpStream) -> Self {
        let fd = s.as_raw_fd();
        UpStream {
            transport: Transport::Tcp(s),
            fd,
            read_timeout: None,
            broken: None,
            origin: false,
        }
    }

    /// A TLS stream over the TCP socket `fd` (taken before the handshake consumed it).
    pub fn tls(s: Box<TlsUpStream>, fd: RawFd) -> Self {
        UpStream {
            transport: Transport::Tls(s),
            fd,
            read_timeout: None,
            broken: None,
            origin: false,
        }
    }

    pub fn closed() -> Self {
        UpStream {
            transport: Transport::Closed,
            fd: -1,
            read_timeout: None,
            broken: None,
            origin: false,
        }
    }

    /// Marks an origin's connection, whose reads count in the metrics.
    pub fn set_origin(&mut self) {
        self.origin = true;
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.transport, Transport::Closed)
    }

    /// Whether a read timed out (the connection must not carry another request).
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    pub fn read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    /// Bounds every following read by `d` of silence (`None`: unbounded).
    pub fn set_read_timeout(&mut self, d: Option<Duration>) {
        self.read_timeout = d;
    }

    /// Whether a read would return at once: bytes (or the peer's FIN or RST) are waiting
    /// on the TCP socket, or the connection is closed or broken (the read fails at once).
    /// The probe of an upstream [`crate::stream::BufConn`]. Under TLS the records rustls
    /// already took off the socket cannot be seen from here (monoio-rustls does not
    /// expose its session), so a TLS read is assumed to return at once: bulk TLS reads
    /// are gathered as before, and only a plain-TCP origin's pause is seen.
    pub fn input_ready(&self) -> bool {
        match self.transport {
            Transport::Tls(_) => true,
            _ => self.has_unsolicited_input(),
        }
    }

    /// Whether the peer sent anything (bytes, FIN, RST) on a connection where it must
    /// not have: checked with a non-blocking `MSG_PEEK` on the TCP socket, also under
    /// TLS (an idle TLS connection has nothing legitimate to send either). Bytes that
    /// rustls already took off the socket are not seen here.
    pub fn has_unsolicited_input(&self) -> bool {
        if self.fd < 0 || self.broken.is_some() {
            return true;
        }
        let mut byte = 0u8;
        // SAFETY: `fd` is the socket owned by `transport` (alive as long as `self`); the
        // one-byte buffer outlives the call. MSG_DONTWAIT makes it non-blocking even on
        // a blocking socket.
        let n = unsafe {
            libc::recv(
                self.fd,
                &mut byte as *mut u8 as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return true; // a byte, or 0 = the peer closed
        }
        let e = std::io::Error::last_os_error();
        !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        )
    }

    async fn read_timed<T: IoBufMut>(&mut self, buf: T, d: Duration) -> BufResult<usize, T> {
        match &mut self.transport {
            Transport::Tcp(s) => {
                // A cancellable read, so that on expiry the kernel op is cancelled and
                // the buffer comes back (monoio-notes: a dropped read loses its buffer).
                let canceller = Canceller::new();
                let read = s.cancelable_read(buf, canceller.handle());
                let mut read = std::pin::pin!(read);
                match monoio::time::timeout(d, read.as_mut()).await {
                    Ok(r) => r,
                    Err(_) => {
                        canceller.cancel();
                        let (res, buf) = read.await;
                        match res {
                            // The read completed as the timer fired: its result stands.
                            Ok(n) => (Ok(n), buf),
                            Err(_) => {
                                self.broken = Some(d);
                                (Err(timed_out(d)), buf)
                            }
                        }
                    }
                }
            }
            Transport::Tls(s) => {
                let mut buf = buf;
                // monoio-rustls (without its `unsafe_io` feature) reads the socket into
                // its own buffer and only copies plaintext into ours synchronously, so a
                // dropped read never writes into `buf` afterwards.
                // SAFETY: the pointer and length come from `buf`, which we keep and
                // which outlives the read future (dropped or completed below).
                let raw = unsafe { RawBuf::new(buf.write_ptr(), buf.bytes_total()) };
                match monoio::time::timeout(d, s.read(raw)).await {
                    Ok((Ok(n), _)) => {
                        // SAFETY: the TLS read initialised `n` bytes of `buf`.
                        unsafe { buf.set_init(n) };
                        (Ok(n), buf)
                    }
                    Ok((Err(e), _)) => (Err(e), buf),
                    Err(_) => {
                        self.broken = Some(d);
                        (Err(timed_out(d)), buf)
                    }
                }
            }
            Transport::Closed => (Err(closed()), buf),
        }
    }
}

impl AsyncReadRent for UpStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        let r = self.read_bounded(buf).await;
        if let (true, Ok(n)) = (self.origin, &r.0) {
            crate::metrics::scope::origin_read(*n);
        }
        r
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        // Not used on origin connections (no timeout applied here).
        if let Some(d) = self.broken {
            return (Err(timed_out(d)), buf);
        }
        match &mut self.transport {
            Transport::Tcp(s) => s.readv(buf).await,
            Transport::Tls(s) => s.readv(buf).await,
            Transport::Closed => (Err(closed()), buf),
        }
    }
}

impl UpStream {
    async fn read_bounded<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        if let Some(d) = self.broken {
            return (Err(timed_out(d)), buf);
        }
        if let Some(d) = self.read_timeout {
            return self.read_timed(buf, d).await;
        }
        match &mut self.transport {
            Transport::Tcp(s) => s.read(buf).await,
            Transport::Tls(s) => s.read(buf).await,
            Transport::Closed => (Err(closed()), buf),
        }
    }
}

impl AsyncWriteRent for UpStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match &mut self.transport {
            Transport::Tcp(s) => s.write(buf).await,
            Transport::Tls(s) => s.write(buf).await,
            Transport::Closed => (Err(closed()), buf),
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match &mut self.transport {
            Transport::Tcp(s) => s.writev(buf).await,
            Transport::Tls(s) => s.writev(buf).await,
            Transport::Closed => (Err(closed()), buf),
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.transport {
            Transport::Tcp(s) => s.flush().await,
            Transport::Tls(s) => s.flush().await,
            Transport::Closed => Ok(()),
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match &mut self.transport {
            Transport::Tcp(s) => s.shutdown().await,
            Transport::Tls(s) => s.shutdown().await,
            Transport::Closed => Ok(()),
        }
    }
}
