//! Blind CONNECT tunnels (RFC 9110 §9.3.6): for hosts `tls-interceptor.intercept` does
//! not match and ports in `tls-interceptor.passthrough-ports`. chacha connects to the
//! target (an address the destination policy allows), answers `200`, and relays bytes
//! both ways untouched: no certificate is minted, no TLS is terminated, nothing is
//! cached. One log line at the end, op `tunnel`, with the bytes each way.
//!
//! Each direction is its own loop (read into a large buffer, write it all) and both run
//! concurrently; a read is never cancelled while the tunnel lives (a cancelled io_uring
//! read loses the bytes it received: shared/design/MONOIO-NOTES.md), so the idle
//! timeout is a separate watch on the time of the last byte either way, and only ends
//! the tunnel as a whole. An end of stream from one side is passed on as a half-close
//! (`shutdown(SHUT_WR)`) to the other, whose direction goes on until it ends too; an
//! error either way ends both.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split, Splitable};

use super::connect::{Target, ESTABLISHED};
use super::{write_simple, Op, ProxyError, Worker};
use crate::stream::fair::Budget;
use crate::stream::BufConn;

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

/// Copies `r` to `w` (first `early`, bytes the client sent behind its CONNECT head)
/// until `r` ends, then half-closes `w`.
async fn pump<R: AsyncReadRent, W: AsyncWriteRent>(
    mut r: R,
    mut w: W,
    early: Vec<u8>,
    mut buf: Vec<u8>,
    count: impl Fn(u64),
) -> (End, Vec<u8>) {
    if !early.is_empty() {
        let n = early.len() as u64;
        if let Err(e) = w.write_all(early).await.0 {
            return (End::Failed(format!("write: {e}")), buf);
        }
        count(n);
    }
    let mut budget = Budget::default();
    loop {
        buf.clear();
        let (res, b) = r.read(buf).await;
        buf = b;
        let n = match res {
            Ok(0) => {
                let _ = w.shutdown().await;
                return (End::Eof, buf);
            }
            Ok(n) => n,
            Err(e) => return (End::Failed(format!("read: {e}")), buf),
        };
        let (res, b) = w.write_all(buf).await;
        buf = b;
        if let Err(e) = res {
            return (End::Failed(format!("write: {e}")), buf);
        }
        count(n as u64);
        budget.spend(n as u64).await;
    }
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

/// Runs a blind tunnel for `conn`, whose CONNECT head was consumed and accepted.
pub async fn blind<S: AsyncReadRent + AsyncWriteRent + Split>(
    conn: BufConn<S>,
    target: Target,
    peer: SocketAddr,
    w: &Worker,
    line: &str,
    start: Instant,
) {
    // Connect first: a refused destination (403) or an unreachable one (502/504) is
    // answered on the CONNECT itself, and nothing was sent to the client before.
    let origin = match w.upstream.connect_tcp(&target.host, target.port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let error = ProxyError::Upstream(e);
            let mut conn = conn;
            let (status, msg) = (error.status(), error.to_string());
            let bytes = write_simple(&mut conn.io, status, &msg, true, &[]).await;
            let op = if status == 403 {
                Op::Reject
            } else {
                Op::Tunnel
            };
            log::warn!(
                "{peer} \"{line}\" {status} {} {}ms {op}: {msg}",
                bytes.unwrap_or(0),
                start.elapsed().as_millis()
            );
            return;
        }
    };
    let (mut io, early) = conn.into_parts();
    if let Err(e) = io.write_all(ESTABLISHED.to_vec()).await.0 {
        log::info!(
            "{peer} \"{line}\" 200 0 {}ms {}: client gone: {e}",
            start.elapsed().as_millis(),
            Op::Tunnel
        );
        return;
    }
    let (client_r, client_w) = io.into_split();
    let (origin_r, origin_w) = origin.into_split();
    let t = Rc::new(Traffic::default());
    let now = || Some(Instant::now());
    let (tu, td) = (t.clone(), t.clone());
    let up = pump(client_r, origin_w, early, w.bufs.get(), move |n| {
        tu.up.set(tu.up.get() + n);
        tu.last.set(now());
    });
    let down = pump(origin_r, client_w, Vec::new(), w.bufs.get(), move |n| {
        td.down.set(td.down.get() + n);
        td.last.set(now());
    });
    let mut up = std::pin::pin!(up);
    let mut down = std::pin::pin!(down);
    let (mut up_done, mut down_done) = (false, false);
    let established = Instant::now();
    let idle = w.timeouts.idle;
    let mut why: Option<String> = None;
    while !(up_done && down_done) {
        monoio::select! {
            (end, buf) = &mut up, if !up_done => {
                up_done = true;
                w.bufs.put(buf);
                if let End::Failed(e) = end {
                    why = Some(format!("client side {e}"));
                    break;
                }
            }
            (end, buf) = &mut down, if !down_done => {
                down_done = true;
                w.bufs.put(buf);
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
    log::info!(
        "{peer} \"{line}\" 200 {down} {}ms {}: {up} bytes client->origin, {down} bytes origin->client, {how}",
        start.elapsed().as_millis(),
        Op::Tunnel
    );
}
