//! What one request did beyond its log line, without passing anything down the flow: a
//! per-request scope that the request's future installs in a thread-local while it is
//! polled (a task runs on one core thread and polls do not interleave), so code deep in
//! the flow adds to the current request: bytes read from origins (counted by the origin
//! connection's stream) and when the response head went out (the first write to the
//! client after the request head, seen by [`Metered`], the client connection's wrapper).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::BufResult;

/// The current request's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestScope {
    active: bool,
    /// Bytes read from origin connections (heads and bodies).
    pub origin_bytes: u64,
    /// The first write to the client.
    pub head_at: Option<Instant>,
}

thread_local! {
    static CURRENT: Cell<RequestScope> = const {
        Cell::new(RequestScope { active: false, origin_bytes: 0, head_at: None })
    };
}

/// Runs `fut` with its own [`RequestScope`] installed while it is polled; resolves to
/// its output and the scope's figures.
pub fn scoped<F: Future>(fut: F) -> Scoped<F> {
    Scoped {
        fut,
        scope: RequestScope {
            active: true,
            ..Default::default()
        },
    }
}

pub struct Scoped<F> {
    fut: F,
    scope: RequestScope,
}

impl<F: Future> Future for Scoped<F> {
    type Output = (F::Output, RequestScope);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `fut` is never moved out of `self` (structural pinning); `scope` is
        // plain data and not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        let outer = CURRENT.with(|c| c.replace(this.scope));
        let r = fut.poll(cx);
        this.scope = CURRENT.with(|c| c.replace(outer));
        match r {
            Poll::Ready(out) => Poll::Ready((out, this.scope)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Bytes read from an origin (not a peer) connection.
#[inline]
pub fn origin_read(n: usize) {
    let _ = CURRENT.try_with(|c| {
        let mut s = c.get();
        if s.active {
            s.origin_bytes += n as u64;
            c.set(s);
        }
    });
}

#[inline]
fn client_write() {
    let _ = CURRENT.try_with(|c| {
        let mut s = c.get();
        if s.active && s.head_at.is_none() {
            s.head_at = Some(Instant::now());
            c.set(s);
        }
    });
}

/// A client connection that notes when the response head goes out (its first write in
/// a request's scope).
pub struct Metered<S>(pub S);

/// The socket under it (a blind CONNECT tunnel splices on it directly).
impl<S: std::os::fd::AsRawFd> std::os::fd::AsRawFd for Metered<S> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl<S: AsyncReadRent> AsyncReadRent for Metered<S> {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.0.read(buf).await
    }
    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.0.readv(buf).await
    }
}

impl<S: AsyncWriteRent> AsyncWriteRent for Metered<S> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        client_write();
        self.0.write(buf).await
    }
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        client_write();
        self.0.writev(buf).await
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().await
    }
    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.0.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async {
            let ((), outer) = scoped(async {
                origin_read(10);
                let ((), inner) = scoped(async { origin_read(5) }).await;
                assert_eq!(inner.origin_bytes, 5);
                origin_read(1);
            })
            .await;
            assert_eq!(outer.origin_bytes, 11);
            assert!(outer.head_at.is_none());
            // Outside any scope nothing is counted.
            origin_read(7);
            assert!(!CURRENT.with(|c| c.get()).active);
        });
    }
}
