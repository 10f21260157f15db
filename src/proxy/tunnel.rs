//! Blind CONNECT tunnels (RFC 9110 §9.3.6): for hosts `tls-interceptor.intercept` does
//! not match and ports in `tls-interceptor.passthrough-ports`. chacha connects to the
//! target (an address the destination policy allows), answers `200`, and relays bytes
//! both ways untouched: no certificate is minted, no TLS is terminated, nothing is
//! cached. One log line at the end, op `tunnel`, with the bytes each way.
//!
//! Each direction is its own loop and both run concurrently. The bytes never enter user
//! space: each direction `splice(2)`s from its source socket into a pipe and from the
//! pipe into the other socket (both non-blocking, waiting on readiness when one would
//! block; a readiness wait is an io_uring poll op, so the loop yields to the core's
//! other tasks). Nothing is cancelled while the tunnel lives (a cancelled io_uring read
//! would lose the bytes it received: shared/design/MONOIO-NOTES.md), so the
//! idle timeout is a separate watch on the time of the last byte either way, and only
//! ends the tunnel as a whole. An end of stream from one side is passed on as a
//! half-close (`shutdown(SHUT_WR)`) to the other, whose direction goes on until it ends
//! too; an error either way ends both.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::target::{Target, ESTABLISHED};
use super::{write_simple, Framing, Op, ProxyError, Worker};
use crate::server::accesslog::{Detail, Line};
use crate::stream::fair::Budget;
use crate::stream::BufConn;

/// Answers a CONNECT that gets no tunnel (a refused destination, an unreachable origin,
/// no descriptors) with its status and one-line reason, closes, and logs it once as `op`.
pub(crate) async fn refuse<S: AsyncWriteRent>(
    conn: &mut BufConn<S>,
    error: ProxyError,
    op: Op,
    peer: SocketAddr,
    line: &str,
    start: Instant,
) {
    let (status, msg) = (error.status(), error.to_string());
    let bytes = write_simple(&mut conn.io, status, &msg, Framing::Close, &[]).await;
    Line {
        client: peer,
        request: Some(line),
        status,
        bytes: bytes.unwrap_or(0),
        duration_ms: start.elapsed().as_millis(),
        op: op.as_str(),
        detail: Detail::Error(&msg),
    }
    .log(log::Level::Warn);
}

/// Bytes moved and the time of the last one, shared by both directions.
#[derive(Default)]
struct Traffic {
    up: Cell<u64>,
    down: Cell<u64>,
    last: Cell<Option<Instant>>,
}

/// How a direction ended.
enum End {
    /// The reading side closed (end of stream), passed on as a half-close.
    Eof,
    /// A read or write failed: the tunnel ends.
    Failed(String),
}

/// Bytes a pipe may hold (F_SETPIPE_SZ; the default 64 KiB when the system refuses):
/// how much one splice moves at most.
pub const PIPE_BYTES: usize = 1024 * 1024;

/// Most bytes a direction moves without going through the driver (which lets the
/// core's other tasks run).
pub const YIELD_BYTES: usize = 4 * 1024 * 1024;

/// A pipe for one direction, both ends non-blocking.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> std::io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills two descriptors that we own from here on.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Larger pipes mean fewer splices; refused beyond /proc/sys/fs/pipe-max-size.
        // SAFETY: fcntl on our own descriptor.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES as libc::c_int) };
        Ok(Pipe { r, w })
    }
}

/// One non-blocking splice; `Ok(None)` when it would block.
fn splice(from: RawFd, to: RawFd, len: usize) -> std::io::Result<Option<usize>> {
    // SAFETY: splice(2) between descriptors we hold open, without offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::WouldBlock => Ok(None),
        std::io::ErrorKind::Interrupted => splice(from, to, len),
        _ => Err(e),
    }
}

/// Moves `src` to `dst` through `pipe` until `src` ends, then half-closes `dst`.
async fn splice_pump(src: &TcpStream, dst: &TcpStream, pipe: Pipe, count: impl Fn(u64)) -> End {
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    let mut budget = Budget::default();
    // Bytes moved since this loop last went through the driver.
    let mut unyielded = 0usize;
    loop {
        // Splices are plain syscalls: on io_uring too a loop that always finds data would
        // never let the core's other tasks run, so it waits on the driver (a poll op,
        // which completes at once when data is there) at least every YIELD_BYTES.
        if unyielded >= YIELD_BYTES {
            unyielded = 0;
            if let Err(e) = src.readable(false).await {
                return End::Failed(format!("read: {e}"));
            }
        }
        let mut pending = match splice(src_fd, pipe.w.as_raw_fd(), PIPE_BYTES) {
            Ok(Some(0)) => {
                // SAFETY: shutdown(2) of the write side of a socket we hold.
                unsafe { libc::shutdown(dst_fd, libc::SHUT_WR) };
                return End::Eof;
            }
            Ok(Some(n)) => n,
            Ok(None) => {
                unyielded = 0;
                if let Err(e) = src.readable(false).await {
                    return End::Failed(format!("read: {e}"));
                }
                continue;
            }
            Err(e) => return End::Failed(format!("read: {e}")),
        };
        unyielded += pending;
        let n = pending as u64;
        while pending > 0 {
            match splice(pipe.r.as_raw_fd(), dst_fd, pending) {
                Ok(Some(m)) => pending -= m,
                Ok(None) => {
                    unyielded = 0;
                    if let Err(e) = dst.writable(false).await {
                        return End::Failed(format!("write: {e}"));
                    }
                }
                Err(e) => return End::Failed(format!("write: {e}")),
            }
        }
        count(n);
        budget.spend(n).await;
    }
}

/// Sets O_NONBLOCK on `fd` (sockets the io_uring driver accepted are blocking).
fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we hold.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A second handle on the client socket, registered with this core's driver, for the
/// readiness waits of the splice loops (the connection itself is generic).
fn driver_handle(fd: RawFd) -> std::io::Result<TcpStream> {
    // SAFETY: dup(2) of a socket we hold; the copy is owned by the std stream.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    TcpStream::from_std(unsafe { std::net::TcpStream::from_raw_fd(dup) })
}

/// Waits until nothing moved either way for `idle`.
async fn idle_watch(t: &Traffic, idle: Duration, since: Instant) {
    loop {
        let last = t.last.get().unwrap_or(since);
        let deadline = last + idle;
        if Instant::now() >= deadline {
            return;
        }
        monoio::time::sleep_until(deadline.into()).await;
    }
}

/// The log line of a blind tunnel (`log-format`).
fn tunnel_line<'a>(
    peer: SocketAddr,
    line: &'a str,
    bytes: u64,
    start: Instant,
    detail: Detail<'a>,
) -> Line<'a> {
    Line {
        client: peer,
        request: Some(line),
        status: 200,
        bytes,
        duration_ms: start.elapsed().as_millis(),
        op: Op::Tunnel.as_str(),
        detail,
    }
}

/// Runs a blind tunnel for `conn`, whose CONNECT head was consumed and accepted.
pub async fn blind<S: AsyncReadRent + AsyncWriteRent + AsRawFd>(
    conn: BufConn<S>,
    target: Target,
    peer: SocketAddr,
    w: &Worker,
    line: &str,
    start: Instant,
) {
    // Pipes and the origin connection first: a refused destination (403), an
    // unreachable one (502/504), or no descriptors for the pipes (503) is answered on
    // the CONNECT itself, before anything else was sent to the client.
    let prepared = match (Pipe::new(), Pipe::new()) {
        (Ok(up), Ok(down)) => w
            .upstream
            .connect_tcp(&target.host, target.port)
            .await
            .map(|origin| (origin, up, down))
            .map_err(ProxyError::Upstream),
        (Err(e), _) | (_, Err(e)) => Err(ProxyError::Unavailable(format!(
            "cannot create a pipe for the tunnel: {e}"
        ))),
    };
    let (mut origin, p_up, p_down) = match prepared {
        Ok(p) => p,
        Err(error) => {
            let mut conn = conn;
            let op = if error.status() == 403 {
                Op::Reject
            } else {
                Op::Tunnel
            };
            return refuse(&mut conn, error, op, peer, line, start).await;
        }
    };
    let (mut io, early) = conn.into_parts();
    let early_len = early.len() as u64;
    // Through the driver while the sockets are as it made them: the 200, and the bytes
    // the client sent right behind its CONNECT head. Then both sockets go non-blocking
    // for the splices, with a driver handle on the client's for readiness.
    let opened = async {
        io.write_all(ESTABLISHED.to_vec()).await.0?;
        if !early.is_empty() {
            origin.write_all(early).await.0?;
        }
        set_nonblocking(io.as_raw_fd())?;
        set_nonblocking(origin.as_raw_fd())?;
        driver_handle(io.as_raw_fd())
    }
    .await;
    let client = match opened {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cut before any byte: {e}");
            tunnel_line(peer, line, 0, start, Detail::Closed(&why)).log(log::Level::Info);
            return;
        }
    };
    let t = Traffic::default();
    t.up.set(early_len);
    let mark = |c: &Cell<u64>, n: u64| {
        c.set(c.get() + n);
        t.last.set(Some(Instant::now()));
    };
    let up = splice_pump(&client, &origin, p_up, |n| mark(&t.up, n));
    let down = splice_pump(&origin, &client, p_down, |n| mark(&t.down, n));
    let mut up = std::pin::pin!(up);
    let mut down = std::pin::pin!(down);
    let (mut up_done, mut down_done) = (false, false);
    let established = Instant::now();
    let idle = w.timeouts.idle;
    let mut why: Option<String> = None;
    while !(up_done && down_done) {
        monoio::select! {
            end = &mut up, if !up_done => {
                up_done = true;
                if let End::Failed(e) = end {
                    why = Some(format!("client side {e}"));
                    break;
                }
            }
            end = &mut down, if !down_done => {
                down_done = true;
                if let End::Failed(e) = end {
                    why = Some(format!("origin side {e}"));
                    break;
                }
            }
            _ = idle_watch(&t, idle, established) => {
                why = Some(format!("idle for {idle:?}"));
                break;
            }
            _ = w.shutdown.wait() => {
                why = Some("shutting down".into());
                break;
            }
        }
    }
    let (up, down) = (t.up.get(), t.down.get());
    let how = why.map_or_else(|| "closed".to_string(), |w| format!("cut: {w}"));
    let summary = format!("{up} bytes client->origin, {down} bytes origin->client, {how}");
    tunnel_line(peer, line, down, start, Detail::Summary(&summary)).log(log::Level::Info);
    // `io` (the client connection) and the handles close here.
    drop(io);
}
