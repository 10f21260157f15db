//! Per-core pool of idle keep-alive connections to origins (one pool per worker, so no
//! locks): LIFO reuse, bounded per origin, expired after an idle time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

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
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        Upstream {
            idle: RefCell::new(HashMap::new()),
            resolver: Resolver::default(),
            connect_timeout,
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

    /// A new connection to `key` (each resolved address in turn).
    pub async fn connect_new(&self, key: &PoolKey) -> Result<UpstreamConn, UpstreamError> {
        let addrs = self.resolver.resolve(&key.host, key.port).await?;
        let mut last = UpstreamError::Connect("no address".into());
        for addr in addrs {
            match monoio::time::timeout(self.connect_timeout, TcpStream::connect_addr(addr)).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    if key.tls {
                        return Err(UpstreamError::Tls(
                            "https origins are not supported yet".into(),
                        ));
                    }
                    return Ok(UpstreamConn {
                        conn: BufConn::new(UpStream::Tcp(tcp)),
                        key: key.clone(),
                        reused: false,
                    });
                }
                Ok(Err(e)) => last = UpstreamError::Connect(format!("{addr}: {e}")),
                Err(_) => last = UpstreamError::ConnectTimeout(self.connect_timeout),
            }
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
