//! Name resolution that never blocks a core thread: `getaddrinfo` runs on the blocking
//! pool; answers are cached per core for a short time. IP literals skip it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::UpstreamError;

/// How long a resolved name is reused (the system resolver gives us no TTL).
pub const DNS_CACHE_TTL: Duration = Duration::from_secs(30);
/// Most names cached per core; the cache is cleared when it is full.
pub const DNS_CACHE_MAX: usize = 4096;

type DnsCache = HashMap<(String, u16), (Vec<SocketAddr>, Instant)>;

#[derive(Default)]
pub struct Resolver {
    cache: RefCell<DnsCache>,
}

impl Resolver {
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, UpstreamError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let key = (host.to_string(), port);
        if let Some((addrs, at)) = self.cache.borrow().get(&key) {
            if at.elapsed() < DNS_CACHE_TTL {
                return Ok(addrs.clone());
            }
        }
        let name = format!("{host}:{port}");
        let res =
            monoio::spawn_blocking(move || name.to_socket_addrs().map(|a| a.collect::<Vec<_>>()))
                .await
                .map_err(|_| UpstreamError::Resolve("resolver thread failed".into()))?;
        let addrs = res.map_err(|e| UpstreamError::Resolve(format!("{host}: {e}")))?;
        if addrs.is_empty() {
            return Err(UpstreamError::Resolve(format!("{host}: no addresses")));
        }
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= DNS_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (addrs.clone(), Instant::now()));
        Ok(addrs)
    }
}
