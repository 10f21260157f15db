//! Per-core pool of idle keep-alive connections to origins (one pool per worker, so no
//! locks): LIFO reuse, bounded per origin, expired after an idle time, and never reused
//! when the origin sent anything while it sat idle.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use monoio_rustls::TlsConnector;
use rustls::ClientConfig;

use super::dns::Resolver;
use super::{UpStream, UpstreamError};
use crate::stream::BufConn;

/// An idle pooled connection older than this is closed instead of reused (origins
/// commonly close idle connections after 60 s or more).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most idle connections kept per origin per core.
pub const MAX_IDLE_PER_ORIGIN: usize = 64;
/// Default idle bound on body reads from an origin (`timeouts.upstream-body`), like
/// nginx's `proxy_read_timeout`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP keepalive on origin connections: first probe after this much silence, then every
/// `KEEPALIVE_INTERVAL`, giving up after `KEEPALIVE_PROBES` unanswered ones, so that an
/// origin host that vanished is noticed even while its body read waits.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_PROBES: u32 = 6;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

pub struct UpstreamConn {
    pub conn: BufConn<UpStream>,
    pub key: PoolKey,
    /// Taken from the pool: the origin may have closed it meanwhile, so a failure
    /// before any response byte is retried on a fresh connection.
    pub reused: bool,
}

type IdleMap = HashMap<PoolKey, Vec<(BufConn<UpStream>, Instant)>>;

pub struct Upstream {
    idle: RefCell<IdleMap>,
    resolver: Resolver,
    /// `timeouts.connect`; a Cell so that a live reload can change it on this core.
    connect_timeout: Cell<Duration>,
    /// Idle bound on every read after the response head (see [`UpStream`]).
    body_timeout: Cell<Duration>,
    /// Connector for `https` origins (verification always on).
    tls: Option<TlsConnector>,
}

impl Upstream {
    /// An upstream client without TLS: `https` origins fail with [`UpstreamError::Tls`].
    pub fn new(connect_timeout: Duration) -> Self {
        Upstream {
            idle: RefCell::new(HashMap::new()),
            resolver: Resolver::default(),
            connect_timeout: Cell::new(connect_timeout),
            body_timeout: Cell::new(DEFAULT_BODY_TIMEOUT),
            tls: None,
        }
    }

    /// Sets the idle bound on body reads (`timeouts.upstream-body`).
    pub fn with_body_timeout(self, d: Duration) -> Self {
        self.body_timeout.set(d);
        self
    }

    /// The idle bound on body reads every connection handed out carries.
    pub fn body_timeout(&self) -> Duration {
        self.body_timeout.get()
    }

    /// A live reload's new `timeouts.connect` and `timeouts.upstream-body`: they apply
    /// to connections handed out from now on.
    pub fn set_timeouts(&self, connect: Duration, body: Duration) {
        self.connect_timeout.set(connect);
        self.body_timeout.set(body);
    }

    /// An upstream client that reaches `https` origins with `tls` (a verifying rustls
    /// client config, see [`crate::tls::client_config`]).
    pub fn with_tls(connect_timeout: Duration, tls: Arc<ClientConfig>) -> Self {
        Upstream {
            tls: Some(crate::tls::connector(tls)),
            ..Upstream::new(connect_timeout)
        }
    }

    /// A pooled connection to `key`, if one is idle, fresh and clean. A connection on
    /// which the origin sent anything while idle (bytes: the late body of a HEAD
    /// response, bytes after a complete body, an unsolicited response; or its FIN) is
    /// closed instead: those bytes would otherwise be taken as the next request's
    /// response (RFC 9112 §9.3: a response is only ever the answer to a request; nginx
    /// checks its keepalive connections the same way).
    pub fn take_idle(&self, key: &PoolKey) -> Option<UpstreamConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some((mut conn, since)) = list.pop() {
            if since.elapsed() >= POOL_IDLE_TIMEOUT {
                continue;
            }
            if !conn.buffered().is_empty() || conn.io.has_unsolicited_input() {
                log::debug!(
                    "pooled connection to {}:{} closed: the origin sent data or closed it while idle",
                    key.host,
                    key.port
                );
                continue;
            }
            conn.io.set_read_timeout(Some(self.body_timeout.get()));
            return Some(UpstreamConn {
                conn,
                key: key.clone(),
                reused: true,
            });
        }
        None
    }

    /// A new connection to `key` (each resolved address in turn). For `key.tls` the TLS
    /// handshake (SNI = host, certificate verified against the trust store, ALPN
    /// http/1.1) completes within the same connect timeout as the TCP connect; a
    /// failed verification is final (never retried in plain text or elsewhere).
    pub async fn connect_new(&self, key: &PoolKey) -> Result<UpstreamConn, UpstreamError> {
        let tls = match (key.tls, &self.tls) {
            (false, _) => None,
            (true, Some(connector)) => {
                let name = crate::tls::server_name(&key.host)
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                Some((connector, name))
            }
            (true, None) => {
                return Err(UpstreamError::Tls(
                    "no TLS client configured for https origins".into(),
                ))
            }
        };
        let addrs = self.resolver.resolve(&key.host, key.port).await?;
        let mut last = UpstreamError::Connect("no address".into());
        for addr in addrs {
            let deadline = Instant::now() + self.connect_timeout.get();
            let tcp = match monoio::time::timeout_at(deadline.into(), TcpStream::connect_addr(addr))
                .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    last = UpstreamError::Connect(format!("{addr}: {e}"));
                    continue;
                }
                Err(_) => {
                    last = UpstreamError::ConnectTimeout(self.connect_timeout.get());
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            set_keepalive(&tcp);
            let fd = tcp.as_raw_fd();
            let mut io = match &tls {
                None => UpStream::tcp(tcp),
                Some((connector, name)) => {
                    let hs = connector.connect(name.clone(), tcp);
                    match monoio::time::timeout_at(deadline.into(), hs).await {
                        Ok(Ok(stream)) => UpStream::tls(Box::new(stream), fd),
                        Ok(Err(e)) => {
                            return Err(UpstreamError::Tls(format!(
                                "{addr}: {}",
                                crate::tls::handshake_error_reason(e)
                            )))
                        }
                        Err(_) => {
                            last = UpstreamError::ConnectTimeout(self.connect_timeout.get());
                            continue;
                        }
                    }
                }
            };
            io.set_read_timeout(Some(self.body_timeout.get()));
            return Ok(UpstreamConn {
                conn: BufConn::new(io),
                key: key.clone(),
                reused: false,
            });
        }
        Err(last)
    }

    /// Returns a connection whose last exchange ended cleanly to the pool, leaving a
    /// closed placeholder behind in `c` (for callers that only hold a reference).
    pub fn release_ref(&self, c: &mut UpstreamConn) {
        let placeholder = UpstreamConn {
            conn: BufConn::new(UpStream::closed()),
            key: c.key.clone(),
            reused: false,
        };
        self.release(std::mem::replace(c, placeholder));
    }

    /// Returns a connection whose last exchange ended cleanly to the pool.
    pub fn release(&self, c: UpstreamConn) {
        if c.conn.io.is_closed() || c.conn.io.is_broken() {
            return;
        }
        if !c.conn.buffered().is_empty() {
            return; // unexpected extra bytes: the connection's state is unknown
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(c.key).or_default();
        if list.len() >= MAX_IDLE_PER_ORIGIN {
            list.remove(0);
        }
        list.push((c.conn, Instant::now()));
    }
}

/// Turns on TCP keepalive with [`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`] and
/// [`KEEPALIVE_PROBES`]; failures are ignored (the connection still works without).
fn set_keepalive(tcp: &TcpStream) {
    let fd = tcp.as_raw_fd();
    let opts: [(libc::c_int, libc::c_int, libc::c_int); 4] = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            KEEPALIVE_IDLE.as_secs() as libc::c_int,
        ),
        (
            libc::IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            KEEPALIVE_INTERVAL.as_secs() as libc::c_int,
        ),
        (
            libc::IPPROTO_TCP,
            libc::TCP_KEEPCNT,
            KEEPALIVE_PROBES as libc::c_int,
        ),
    ];
    for (level, name, value) in opts {
        // SAFETY: a valid socket fd owned by `tcp`; an int option value that outlives
        // the call, with its exact size.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}
