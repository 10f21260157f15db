//! The stream type of an origin connection.

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;

/// A verified TLS connection to an https origin (boxed: the rustls state is large and
/// pooled connections are moved around).
pub type TlsUpStream = monoio_rustls::ClientTlsStream<TcpStream>;

pub enum UpStream {
    Tcp(TcpStream),
    Tls(Box<TlsUpStream>),
    /// A placeholder left behind when a connection went back to the pool.
    Closed,
}

fn closed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "connection returned to the pool",
    )
}

impl AsyncReadRent for UpStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Tcp(s) => s.read(buf).await,
            UpStream::Tls(s) => s.read(buf).await,
            UpStream::Closed => (Err(closed()), buf),
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Tcp(s) => s.readv(buf).await,
            UpStream::Tls(s) => s.readv(buf).await,
            UpStream::Closed => (Err(closed()), buf),
        }
    }
}

impl AsyncWriteRent for UpStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Tcp(s) => s.write(buf).await,
            UpStream::Tls(s) => s.write(buf).await,
            UpStream::Closed => (Err(closed()), buf),
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpStream::Tcp(s) => s.writev(buf).await,
            UpStream::Tls(s) => s.writev(buf).await,
            UpStream::Closed => (Err(closed()), buf),
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            UpStream::Tcp(s) => s.flush().await,
            UpStream::Tls(s) => s.flush().await,
            UpStream::Closed => Ok(()),
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            UpStream::Tcp(s) => s.shutdown().await,
            UpStream::Tls(s) => s.shutdown().await,
            UpStream::Closed => Ok(()),
        }
    }
}
