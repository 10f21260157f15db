//! Per-core pool of idle keep-alive connections to origins (one pool per worker, so no
//! locks): LIFO reuse, bounded per origin, expired after an idle time, and never reused
//! when the origin sent anything while it sat idle.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use monoio_rustls::TlsConnector;
use rustls::ClientConfig;

use super::dns::Resolver;
use super::{UpStream, UpstreamError};
use crate::access::destinations::Destinations;
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
    /// A cluster peer (its address comes from the config, not from a client): exempt
    /// from the destination policy. Pooled apart from client-named origins.
    pub peer: bool,
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
    /// Where client-named origins may be (checked on every resolved address before
    /// connecting; cluster peers are exempt).
    destinations: Arc<Destinations>,
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
            destinations: Arc::new(Destinations::allow_all()),
        }
    }

    /// Sets the destination policy (`access.destinations`); without it every address
    /// is allowed.
    pub fn with_destinations(mut self, d: Arc<Destinations>) -> Self {
        self.destinations = d;
        self
    }

    /// The addresses of `host:port` that the destination policy allows, in resolver
    /// order (DNS off the core thread; IP literals as they are). A name resolving to
    /// both denied and allowed addresses connects only to the allowed ones; when none
    /// is allowed the first refusal is the error, and nothing was connected to.
    pub async fn resolve_allowed(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, UpstreamError> {
        let addrs = self.resolver.resolve(host, port).await?;
        let mut first_denial = None;
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.destinations.check(*a) {
                Ok(()) => true,
                Err(d) => {
                    first_denial.get_or_insert(d);
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), first_denial) {
            (true, Some(d)) => Err(UpstreamError::Denied(d.to_string())),
            _ => Ok(allowed),
        }
    }

    /// A plain TCP connection to an allowed address of `host:port` (each in turn,
    /// each within the connect timeout): the far end of a blind tunnel.
    pub async fn connect_tcp(&self, host: &str, port: u16) -> Result<TcpStream, UpstreamError> {
        let addrs = self.resolve_allowed(host, port).await?;
        let mut last = UpstreamError::Connect("no address".into());
        for addr in addrs {
            match monoio::time::timeout(self.connect_timeout.get(), TcpStream::connect_addr(addr))
                .await
            {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    set_keepalive(&tcp);
                    return Ok(tcp);
                }
                Ok(Err(e)) => last = UpstreamError::Connect(format!("{addr}: {e}")),
                Err(_) => last = UpstreamError::ConnectTimeout(self.connect_timeout.get()),
            }
        }
        Err(last)
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
        // Checked on the resolved addresses, so that no spelling of a name or an
        // address, and no DNS answer, reaches a denied one (peers are config).
        let addrs = if key.peer {
            self.resolver.resolve(&key.host, key.port).await?
        } else {
            self.resolve_allowed(&key.host, key.port).await?
        };
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
                conn: BufConn::new(io).with_probe(UpStream::input_ready),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::CidrList;

    fn key(port: u16, peer: bool) -> PoolKey {
        PoolKey {
            tls: false,
            host: "127.0.0.1".into(),
            port,
            peer,
        }
    }

    /// Client-named origins are checked on the resolved address and never connected to
    /// when denied; cluster peers (config) are exempt.
    #[test]
    fn denied_destinations_are_not_connected_and_peers_are_exempt() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(1)))
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let up = Upstream::new(Duration::from_secs(5)).with_destinations(Arc::new(
                Destinations::new(CidrList::default(), CidrList::default()),
            ));
            match up.connect_new(&key(port, false)).await {
                Err(UpstreamError::Denied(why)) => assert_eq!(
                    why,
                    "destination 127.0.0.1 is loopback (denied by default; allow with access.destinations.allow: [127.0.0.0/8])"
                ),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("connected to a denied destination"),
            }
            // A spelling that reached the resolver unnormalised (getaddrinfo reads it
            // as inet_aton does) is still checked on what it resolves to.
            assert!(
                matches!(
                    up.connect_tcp("0x7f.1", port).await,
                    Err(UpstreamError::Denied(_))
                ),
                "a raw spelling never reaches loopback"
            );
            assert!(listener.accept().is_err(), "nothing connected");
            up.connect_new(&key(port, true)).await.expect("a peer is exempt");
        });
        assert!(listener.accept().is_ok(), "the peer connection arrived");
    }
}
