//! Per-core pool of idle keep-alive connections to origins (one pool per worker, so no
//! locks): LIFO reuse, bounded per origin, expired after an idle time.

use std::cell::RefCell;
use std::collections::HashMap;
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
    connect_timeout: Duration,
    /// Connector for `https` origins (verification always on).
    tls: Option<TlsConnector>,
}

impl Upstream {
    /// An upstream client without TLS: `https` origins fail with [`UpstreamError::Tls`].
    pub fn new(connect_timeout: Duration) -> Self {
        Upstream {
            idle: RefCell::new(HashMap::new()),
            resolver: Resolver::default(),
            connect_timeout,
            tls: None,
        }
    }

    /// An upstream client that reaches `https` origins with `tls` (a verifying rustls
    /// client config, see [`crate::tls::client_config`]).
    pub fn with_tls(connect_timeout: Duration, tls: Arc<ClientConfig>) -> Self {
        Upstream {
            tls: Some(crate::tls::connector(tls)),
            ..Upstream::new(connect_timeout)
        }
    }

    /// A pooled connection to `key`, if one is idle and fresh.
    pub fn take_idle(&self, key: &PoolKey) -> Option<UpstreamConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < POOL_IDLE_TIMEOUT {
                return Some(UpstreamConn {
                    conn,
                    key: key.clone(),
                    reused: true,
                });
            }
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
            let deadline = Instant::now() + self.connect_timeout;
            let tcp = match monoio::time::timeout_at(deadline.into(), TcpStream::connect_addr(addr))
                .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    last = UpstreamError::Connect(format!("{addr}: {e}"));
                    continue;
                }
                Err(_) => {
                    last = UpstreamError::ConnectTimeout(self.connect_timeout);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let io = match &tls {
                None => UpStream::Tcp(tcp),
                Some((connector, name)) => {
                    let hs = connector.connect(name.clone(), tcp);
                    match monoio::time::timeout_at(deadline.into(), hs).await {
                        Ok(Ok(stream)) => UpStream::Tls(Box::new(stream)),
                        Ok(Err(e)) => {
                            return Err(UpstreamError::Tls(format!(
                                "{addr}: {}",
                                crate::tls::handshake_error_reason(e)
                            )))
                        }
                        Err(_) => {
                            last = UpstreamError::ConnectTimeout(self.connect_timeout);
                            continue;
                        }
                    }
                }
            };
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
            conn: BufConn::new(UpStream::Closed),
            key: c.key.clone(),
            reused: false,
        };
        self.release(std::mem::replace(c, placeholder));
    }

    /// Returns a connection whose last exchange ended cleanly to the pool.
    pub fn release(&self, c: UpstreamConn) {
        if matches!(c.conn.io, UpStream::Closed) {
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
