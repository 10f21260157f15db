//! Per-connection request loop and dispatch: chacha's own endpoints, CONNECT, and
//! forwarding of absolute-form requests. The same loop serves the decrypted requests
//! inside an intercepted CONNECT tunnel ([`connect`]).

pub mod cached;
pub mod client_side;
pub mod connect;
pub mod decide;
pub mod direct_connect;
pub mod error;
pub mod fill;
pub mod handoff;
pub mod head;
pub mod internal;
pub mod kv;
pub mod merge;
pub mod op;
pub mod origin_body;
pub mod refresh;
pub mod relay;
pub mod serve;
pub mod storage;
pub mod target;
pub mod tunnel;
pub mod validate;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

pub use error::ProxyError;
pub use op::Op;

use crate::server::accesslog::Detail;

use crate::cache::open::OpenEntries;
use crate::cache::status::Outcome as CacheOutcome;
use crate::cache::store::Store;
use crate::config::Rule;
use crate::http::{parse_request, HeadError, Parsed, RequestHead, MAX_HEAD_BYTES};
use crate::server::shutdown::Shutdown;
use crate::stream::{BufConn, WaitReadable};
use crate::upstream::Upstream;

pub use crate::config::Timeouts;
pub use crate::stream::bufpool::{BufPool, MAX_POOLED_BUFS, TRANSFER_BUF};

/// Everything one worker (core) needs to serve its connections: the per-core state
/// (shared by all generations of a core's worker) and the reloadable settings of one
/// config generation (`server::live`).
pub struct Worker {
    pub id: usize,
    /// The [`crate::server::live::Snapshot`] generation this worker was built from.
    pub generation: u64,
    pub live: Rc<refresh::CoreLive>,
    pub timeouts: Timeouts,
    pub upstream: Rc<Upstream>,
    pub shutdown: Arc<Shutdown>,
    pub bufs: Rc<BufPool>,
    /// Open client connections on this core (for the shutdown drain).
    pub active: Rc<Cell<usize>>,
    /// The disk cache, when `disk` is configured (shared by all cores).
    pub store: Option<Arc<Store>>,
    pub rules: Arc<Vec<Rule>>,
    /// Hot small entries kept open on this core.
    pub open_entries: Rc<OpenEntries>,
    /// `tls-interceptor`, when configured (shared by all cores): CONNECT opens
    /// intercepted tunnels; without it CONNECT gets 405.
    pub interception: Option<Arc<connect::Interception>>,
    /// `cluster`, when configured (shared by all cores): key owners, peer health, claims.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// `access`: this core's side of proxy authentication (and the shared rules).
    pub access: crate::access::Local,
}

impl Worker {
    /// Whether the client's connection may stay open after this response: the client
    /// wants it (RFC 9112 §9.3) and the server is not shutting down.
    pub fn may_keep_alive(&self, req: &RequestHead) -> bool {
        req.keep_alive() && !self.shutdown.is_triggered()
    }
}

impl crate::upstream::Client for Worker {
    fn pool(&self) -> &Upstream {
        &self.upstream
    }
    fn bufs(&self) -> &BufPool {
        &self.bufs
    }
    fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }
}

/// What one request did, for its log line.
#[derive(Debug)]
pub struct Exchange {
    pub status: u16,
    pub bytes: u64,
    pub op: Op,
    pub keep_alive: bool,
}

/// How handling one request ended.
pub enum Outcome {
    Done(Exchange),
    /// Nothing was sent to the client yet: answer with the error's status.
    /// `close` when the connection cannot carry another request (unread body, framing).
    Failed {
        error: ProxyError,
        close: bool,
        op: Op,
    },
    /// The response was under way: the client connection must be cut so that the
    /// client sees an incomplete message, never a truncated one that looks complete.
    Aborted {
        status: u16,
        bytes: u64,
        op: Op,
        reason: String,
    },
}

impl Outcome {
    /// The response was under way when `reason` stopped it after `bytes` body bytes.
    pub fn aborted(status: u16, bytes: u64, op: Op, reason: impl Into<String>) -> Outcome {
        Outcome::Aborted {
            status,
            bytes,
            op,
            reason: reason.into(),
        }
    }
}

enum HeadRead {
    Head(RequestHead),
    /// Closed by the client, idle timeout or shutdown between requests: no answer.
    Quiet,
    Error(u16, String),
}

async fn read_head<S: AsyncReadRent + WaitReadable>(
    conn: &mut BufConn<S>,
    w: &Worker,
    first: bool,
    canceller: &mut Option<monoio::io::Canceller>,
) -> HeadRead {
    let idle_deadline = Instant::now()
        + if first {
            w.timeouts.client_head
        } else {
            w.timeouts.idle
        };
    let mut head_deadline: Option<Instant> = None;
    loop {
        if !conn.buffered().is_empty() {
            match parse_request(conn.buffered()) {
                Ok(Parsed::Complete(head, n)) => {
                    conn.consume(n);
                    return HeadRead::Head(head);
                }
                Ok(Parsed::Partial) if conn.buffered().len() > MAX_HEAD_BYTES => {
                    let e = HeadError::TooLarge;
                    return HeadRead::Error(e.status(), e.to_string());
                }
                Ok(Parsed::Partial) => {}
                Err(e) => return HeadRead::Error(e.status(), e.to_string()),
            }
            head_deadline.get_or_insert_with(|| Instant::now() + w.timeouts.client_head);
        }
        let read = match head_deadline {
            Some(deadline) => monoio::time::timeout_at(deadline.into(), conn.fill()).await,
            None if conn.io.bufferless() => {
                match wait_request(conn, w, idle_deadline, canceller).await {
                    Some(read) => Ok(read),
                    None => return HeadRead::Quiet,
                }
            }
            None => {
                monoio::select! {
                    r = monoio::time::timeout_at(idle_deadline.into(), conn.fill()) => r,
                    _ = w.shutdown.wait() => return HeadRead::Quiet,
                }
            }
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return HeadRead::Quiet,
            Ok(Ok(_)) => {}
            Err(_) if head_deadline.is_some() => {
                return HeadRead::Error(408, "request head not received in time".into())
            }
            Err(_) => return HeadRead::Quiet,
        }
    }
}

/// How long a connection waits for its next request with a read posted (holding a
/// read buffer) before it gives the buffer back and waits without one. A busy
/// keep-alive client's next request comes within this, and then costs one read, as
/// before; waiting without a buffer costs a readiness wait, then the read.
pub const HOT_WAIT: Duration = Duration::from_millis(25);

/// Waits for the first bytes of a request on a connection with nothing buffered, and
/// reads them; `None` when the connection is done (`idle_deadline` passed, shutdown).
/// For [`HOT_WAIT`] a read is posted with a buffer from the core's pool; then it is
/// cancelled (bytes that beat the cancellation are kept), the buffer goes back to the
/// pool, and the connection waits for readiness holding none: thousands of idle
/// connections hold no buffers, only their small tasks.
/// `canceller` is the connection's, kept across requests (a read that completes leaves
/// it as it was, so the hot path allocates nothing for it).
async fn wait_request<S: WaitReadable>(
    conn: &mut BufConn<S>,
    w: &Worker,
    idle_deadline: Instant,
    canceller: &mut Option<monoio::io::Canceller>,
) -> Option<std::io::Result<usize>> {
    let hot_until = (Instant::now() + HOT_WAIT).min(idle_deadline);
    let handle = canceller
        .get_or_insert_with(monoio::io::Canceller::new)
        .handle();
    let first = {
        let mut read = std::pin::pin!(conn.fill_cancelable(handle));
        let hot = monoio::select! {
            r = &mut read => Some(r),
            _ = monoio::time::sleep_until(hot_until.into()) => None,
            _ = w.shutdown.wait() => return None,
        };
        match hot {
            Some(r) => r,
            None => {
                // cancel() consumes the canceller and hands back a fresh one.
                *canceller = canceller.take().map(|c| c.cancel());
                match monoio::time::timeout_at(idle_deadline.into(), &mut read).await {
                    Ok(r) => r,
                    Err(_) => return None,
                }
            }
        }
    };
    match first {
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
        read => return Some(read),
    }
    conn.release();
    monoio::select! {
        r = monoio::time::timeout_at(idle_deadline.into(), conn.io.readable()) => match r {
            Ok(Ok(())) => Some(conn.fill().await),
            Ok(Err(_)) | Err(_) => None,
        },
        _ = w.shutdown.wait() => None,
    }
}

/// Whether the client's connection stays open after a response (RFC 9112 §9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    KeepAlive,
    /// `Connection: close`: the connection ends with this response (RFC 9112 §9.6).
    Close,
}

impl Framing {
    /// [`Framing::Close`] when `close`.
    pub fn close_if(close: bool) -> Framing {
        if close {
            Framing::Close
        } else {
            Framing::KeepAlive
        }
    }
}

/// A request's log line (`log-format`).
pub fn access_line<'a>(
    client: SocketAddr,
    request: Option<&'a str>,
    status: u16,
    bytes: u64,
    duration_ms: u128,
    op: Op,
    detail: Detail<'a>,
) -> crate::server::accesslog::Line<'a> {
    crate::server::accesslog::Line {
        client,
        request,
        status,
        bytes,
        duration_ms,
        op: op.as_str(),
        detail,
    }
}

/// Writes a short plain-text answer chacha makes itself.
pub async fn write_simple<S: AsyncWriteRent>(
    io: &mut S,
    status: u16,
    message: &str,
    framing: Framing,
    extra_headers: &[(&str, &str)],
) -> std::io::Result<u64> {
    let body = format!("{message}\n");
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        crate::http::head::reason_phrase(status),
        body.len()
    );
    for (k, v) in extra_headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if framing == Framing::Close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    io.write_all(out.into_bytes()).await.0?;
    Ok(body.len() as u64)
}

/// Where the requests on a connection come from.
#[derive(Clone, Copy)]
pub enum Channel<'a> {
    /// A client's own connection to chacha: absolute-form requests are proxied,
    /// origin-form ones reach chacha's endpoints, CONNECT may open a tunnel.
    Direct,
    /// Decrypted requests inside an intercepted tunnel to this origin: origin form names
    /// a resource there with scheme https; chacha's endpoints are not reachable.
    Tunnel(&'a connect::Target),
}

/// How a request loop ended.
pub enum LoopEnd {
    /// The connection is finished. `clean` when no response was cut short (only then
    /// may a TLS tunnel send close_notify).
    Closed { clean: bool },
    /// A CONNECT was accepted ([`Channel::Direct`] only); its head is consumed and the
    /// tunnel is opened by the caller, which owns the connection.
    Connect {
        target: connect::Target,
        line: String,
        start: Instant,
    },
}

/// Serves one client connection until it closes, errs, or the worker shuts down.
pub async fn serve_connection<
    S: AsyncReadRent + AsyncWriteRent + WaitReadable + std::os::fd::AsRawFd,
>(
    io: S,
    peer: SocketAddr,
    w: Rc<Worker>,
) {
    w.active.set(w.active.get() + 1);
    crate::server::memory::connection_opened(w.active.get());
    crate::metrics::client_connection(true);
    {
        // The read buffer is the core's, lent while a request is read and answered.
        let mut conn = BufConn::pooled(crate::metrics::Metered(io), w.bufs.clone());
        if let LoopEnd::Connect {
            target,
            line,
            start,
        } = request_loop(&mut conn, peer, &w, Channel::Direct).await
        {
            // The tunnel's handshake uses the interception in force now (live reload).
            let w = w.newer().unwrap_or_else(|| w.clone());
            // Boxed: the tunnel's state is not part of every connection's task.
            Box::pin(connect::tunnel(conn, target, peer, &w, &line, start)).await;
        }
    }
    w.active.set(w.active.get() - 1);
    // Before the gauge drops: a scrape that sees the connections gone sees the memory
    // they held given back.
    crate::server::memory::connection_closed(w.active.get());
    crate::metrics::client_connection(false);
}

/// Reads and answers requests on `conn` until it closes, errs, the worker shuts down,
/// or (on a direct connection) a CONNECT is accepted.
pub async fn request_loop<S: AsyncReadRent + AsyncWriteRent + WaitReadable>(
    conn: &mut BufConn<S>,
    peer: SocketAddr,
    w: &Worker,
    channel: Channel<'_>,
) -> LoopEnd {
    let mut first = true;
    // Cancels the read posted while waiting for a request ([`wait_request`]).
    let mut canceller = None;
    // This connection's worker of a newer config generation, after a live reload.
    let mut fresher: Option<Rc<Worker>> = None;
    loop {
        let current = fresher.as_deref().unwrap_or(w);
        let head = match read_head(conn, current, first, &mut canceller).await {
            HeadRead::Head(h) => h,
            HeadRead::Quiet => return LoopEnd::Closed { clean: true },
            HeadRead::Error(status, msg) => {
                let (m, now) = (crate::metrics::Method::Other, Instant::now());
                count(m, status, Op::Reject, 0, now, &Default::default());
                access_line(peer, None, status, 0, 0, Op::Reject, Detail::Error(&msg))
                    .log(log::Level::Info);
                let _ = write_simple(&mut conn.io, status, &msg, Framing::Close, &[]).await;
                return LoopEnd::Closed { clean: true };
            }
        };
        first = false;
        // A request runs to its end with the config in force when its head arrived.
        if let Some(newer) = current.newer() {
            fresher = Some(newer);
        }
        let w = fresher.as_deref().unwrap_or(w);
        let start = Instant::now();
        // RFC 9112 §9.3: after `Connection: close` (or HTTP/1.0 without keep-alive) the
        // client expects the connection to end with this response, errors included.
        let client_keep_alive = head.keep_alive();
        let line = match channel {
            Channel::Tunnel(t) if head.target.starts_with('/') => {
                format!("{} https://{}{}", head.method, t.authority(), head.target)
            }
            _ => format!("{} {}", head.method, head.target),
        };
        // RFC 9110 §11.7.1: using the proxy (CONNECT, absolute form) may need credentials;
        // chacha's own endpoints and the requests inside a tunnel do not.
        if matches!(channel, Channel::Direct)
            && (head.method == "CONNECT" || !head.target.starts_with('/'))
        {
            if let Err(refusal) = w.access.authorize(&head).await {
                if refuse_request(conn, &head, refusal, peer, &line, start, w).await {
                    conn.release();
                    continue;
                }
                return LoopEnd::Closed { clean: true };
            }
        }
        let method = crate::metrics::Method::of(&head.method);
        let (outcome, scope) = match channel {
            Channel::Direct if head.method == "CONNECT" => match connect::check(&head, w) {
                Ok(target) => {
                    return LoopEnd::Connect {
                        target,
                        line,
                        start,
                    }
                }
                Err(error) => (
                    Outcome::Failed {
                        error,
                        close: true,
                        op: Op::Reject,
                    },
                    Default::default(),
                ),
            },
            // Boxed: the state of a request in flight (tens of KiB across all its paths)
            // lives only while it runs, not in the task of every open connection.
            _ => crate::metrics::scoped(Box::pin(dispatch(conn, head, w, channel, peer))).await,
        };
        let keep = match outcome {
            Outcome::Done(ex) => {
                count(method, ex.status, ex.op, ex.bytes, start, &scope);
                let ms = start.elapsed().as_millis();
                access_line(
                    peer,
                    Some(&line),
                    ex.status,
                    ex.bytes,
                    ms,
                    ex.op,
                    Detail::None,
                )
                .log(log::Level::Info);
                ex.keep_alive
            }
            Outcome::Failed { error, close, op } => {
                let close = close || !client_keep_alive || w.shutdown.is_triggered();
                let status = error.status();
                let msg = error.to_string();
                let bytes =
                    write_simple(&mut conn.io, status, &msg, Framing::close_if(close), &[]).await;
                let sent = bytes.as_ref().copied().unwrap_or(0);
                count(method, status, op, sent, start, &scope);
                let ms = start.elapsed().as_millis();
                access_line(peer, Some(&line), status, sent, ms, op, Detail::Error(&msg))
                    .log(log::Level::Warn);
                bytes.is_ok() && !close
            }
            Outcome::Aborted {
                status,
                bytes,
                op,
                reason,
            } => {
                count(method, status, op, bytes, start, &scope);
                let ms = start.elapsed().as_millis();
                access_line(
                    peer,
                    Some(&line),
                    status,
                    bytes,
                    ms,
                    op,
                    Detail::Aborted(&reason),
                )
                .log(log::Level::Warn);
                return LoopEnd::Closed { clean: false };
            }
        };
        if !keep || w.shutdown.is_triggered() {
            return LoopEnd::Closed { clean: true };
        }
        // The response is done: the read buffer goes back to the pool (kept only while
        // pipelined bytes wait in it).
        conn.release();
    }
}

/// Answers a request that `access.proxy-auth` refused (407 with `Proxy-Authenticate`, or
/// 503 with `Retry-After`); whether the connection may carry another request (not when
/// the request has a body, which is left unread).
async fn refuse_request<S: AsyncReadRent + AsyncWriteRent>(
    conn: &mut BufConn<S>,
    head: &RequestHead,
    refusal: crate::access::auth::Refusal,
    peer: SocketAddr,
    line: &str,
    start: Instant,
    w: &Worker,
) -> bool {
    let no_body = matches!(
        head.body_kind(),
        Ok(crate::http::BodyKind::None) | Ok(crate::http::BodyKind::Length(0))
    );
    let keep = no_body && w.may_keep_alive(head);
    let (status, msg) = (refusal.status(), refusal.message());
    let framing = Framing::close_if(!keep);
    let bytes = write_simple(&mut conn.io, status, msg, framing, &[refusal.header()]).await;
    let sent = bytes.as_ref().copied().unwrap_or(0);
    let method = crate::metrics::Method::of(&head.method);
    count(method, status, Op::Reject, sent, start, &Default::default());
    let ms = start.elapsed().as_millis();
    access_line(
        peer,
        Some(line),
        status,
        sent,
        ms,
        Op::Reject,
        Detail::Error(msg),
    )
    .log(log::Level::Info);
    bytes.is_ok() && keep
}

/// Counts one request in the metrics at its log point (`bytes`: body bytes sent).
fn count(
    method: crate::metrics::Method,
    status: u16,
    op: Op,
    bytes: u64,
    start: Instant,
    scope: &crate::metrics::RequestScope,
) {
    let total = start.elapsed();
    // Time to the response head: the first write to the client (an error answer
    // written here after the fact: the whole time).
    let head = scope
        .head_at
        .map_or(total, |t| t.saturating_duration_since(start));
    crate::metrics::request(method, status, op, bytes, head, total, scope.origin_bytes);
}

async fn dispatch<S: AsyncReadRent + AsyncWriteRent>(
    conn: &mut BufConn<S>,
    head: RequestHead,
    w: &Worker,
    channel: Channel<'_>,
    peer: SocketAddr,
) -> Outcome {
    if head.method == "CONNECT" {
        // RFC 9110 §9.3.6. Direct CONNECTs are handled by the loop; a CONNECT inside a
        // tunnel would nest tunnels, which we do not do.
        return Outcome::Failed {
            error: ProxyError::MethodNotAllowed("CONNECT".into()),
            close: true,
            op: Op::Reject,
        };
    }
    if crate::upstream::request::is_loop(&head) {
        return Outcome::Failed {
            error: ProxyError::LoopDetected,
            close: true,
            op: Op::Reject,
        };
    }
    let uri = match channel {
        Channel::Direct if head.target.starts_with('/') => {
            // chacha's own address: the KV protocol in cluster mode, else its endpoints.
            return match &w.cluster {
                Some(c) if crate::cluster::kv::is_kv_request(&head) => {
                    kv::handle(conn, head, w, c, peer).await
                }
                // Direct-connect's other end (cluster mode; 404 without a cluster). A
                // GET with a body goes to `internal` (404, body read or closed).
                _ if head.method == "GET"
                    && head.target.split('?').next() == Some(crate::cluster::token::PATH)
                    && matches!(
                        head.body_kind(),
                        Ok(crate::http::BodyKind::None) | Ok(crate::http::BodyKind::Length(0))
                    ) =>
                {
                    direct_connect::handle(conn, head, w).await
                }
                _ => internal::handle(conn, head, w).await,
            };
        }
        Channel::Direct => crate::http::uri::parse_absolute(&head.target)
            .map_err(|_| ProxyError::BadTarget(head.target.clone())),
        Channel::Tunnel(target) => target.uri_for(&head.target),
    };
    match uri {
        Ok(uri) => match &w.store {
            _ if head.method == "GET" && (w.store.is_some() || w.cluster.is_some()) => {
                cached::handle(conn, head, uri, w).await
            }
            Some(_) => {
                relay::forward(conn, head, uri, w, |resp| {
                    Some(
                        CacheOutcome::NotStored {
                            had_entry: false,
                            status: resp.status,
                            reason: crate::cache::policy::NotStorable::Method,
                        }
                        .header_value(),
                    )
                })
                .await
            }
            None => relay::forward(conn, head, uri, w, |_| None).await,
        },
        Err(error) => Outcome::Failed {
            error,
            close: true,
            op: Op::Reject,
        },
    }
}

#[cfg(test)]
mod tests {
    /// The task of every open connection is `serve_connection`'s future. The state of a
    /// request in flight (all its paths: fills, cluster, tunnels) is boxed while it runs,
    /// so a connection waiting for a request costs a small task (22,016 bytes in this
    /// build before the boxing, 1,920 right after it).
    #[test]
    fn a_connections_task_is_small() {
        fn size_of_output<A, B, C, R>(_: impl Fn(A, B, C) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let n = size_of_output(super::serve_connection::<monoio::net::TcpStream>);
        assert!(n <= 4096, "serve_connection's future is {n} bytes");
    }
}
