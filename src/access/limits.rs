//! Connection limits (`access.limits`): open client connections in total and per client
//! address, counted once per connection (at accept and at close), shared by all cores.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::cidr::normalize;

/// Shards of the per-client counts (a lock each), so cores accepting from different
/// clients rarely meet on one lock.
const SHARDS: usize = 16;

/// File descriptors kept out of the client budget: listeners, io_uring rings, the log,
/// the cache index, pooled idle upstream connections.
pub const FD_RESERVE: u64 = 256;
/// File descriptors one client connection may hold at once: its socket, its upstream
/// connection (or CONNECT tunnel) and a cache file it is filled from or served from.
pub const FDS_PER_CONNECTION: u64 = 3;

#[derive(Default)]
struct ClientCount {
    open: usize,
    /// Refused since its count was last below the limit (the episode's first refusal
    /// logs, the others do not).
    refusing: bool,
}

/// The process's connection counts against `access.limits`.
pub struct Limits {
    pub max_total: usize,
    pub max_per_client: usize,
    total: AtomicUsize,
    /// In a refusal episode for the total (logged once per episode).
    total_refusing: AtomicBool,
    /// Connections refused so far (both limits).
    refused: AtomicU64,
    clients: [Mutex<HashMap<IpAddr, ClientCount>>; SHARDS],
}

/// A connection refused by a limit: the one-line reason of its 503, and whether this
/// refusal starts an episode (then it is logged).
#[derive(Debug)]
pub struct OverLimit {
    pub reason: String,
    pub first: bool,
}

/// An admitted connection; dropping it (when the connection closes) frees its place.
pub struct Admitted {
    limits: Arc<Limits>,
    ip: IpAddr,
    /// Counted against the per-client limit (cluster peers are not).
    per_client: bool,
}

impl Limits {
    pub fn new(max_total: usize, max_per_client: usize) -> Limits {
        Limits {
            max_total,
            max_per_client,
            total: AtomicUsize::new(0),
            total_refusing: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            clients: Default::default(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, ClientCount>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(*v4) as u64,
            IpAddr::V6(v6) => {
                let n = u128::from(*v6);
                (n as u64) ^ ((n >> 64) as u64)
            }
        };
        &self.clients[(h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % SHARDS]
    }

    /// Open connections now (all clients).
    pub fn open(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Counts a new connection from `ip`, or refuses it. `per_client: false` exempts it
    /// from the per-client limit (cluster peers).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, per_client: bool) -> Result<Admitted, OverLimit> {
        let ip = normalize(ip);
        let before = self.total.fetch_add(1, Ordering::SeqCst);
        if before >= self.max_total {
            self.total.fetch_sub(1, Ordering::SeqCst);
            self.refused.fetch_add(1, Ordering::SeqCst);
            let first = !self.total_refusing.swap(true, Ordering::SeqCst);
            return Err(OverLimit {
                reason: format!(
                    "too many connections: {} open, the limit (access.limits.connections)",
                    self.max_total
                ),
                first,
            });
        }
        if per_client {
            let mut clients = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
            let count = clients.entry(ip).or_default();
            if count.open >= self.max_per_client {
                let first = !count.refusing;
                count.refusing = true;
                drop(clients);
                self.total.fetch_sub(1, Ordering::SeqCst);
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Err(OverLimit {
                    reason: format!(
                        "too many connections from {ip}: {} open, the limit (access.limits.connections-per-client)",
                        self.max_per_client
                    ),
                    first,
                });
            }
            count.open += 1;
        }
        Ok(Admitted {
            limits: self.clone(),
            ip,
            per_client,
        })
    }

    fn release(&self, ip: IpAddr, per_client: bool) {
        if per_client {
            let mut clients = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = clients.get_mut(&ip) {
                count.open = count.open.saturating_sub(1);
                if count.refusing {
                    count.refusing = false;
                    log::info!(
                        "connections from {ip} below access.limits.connections-per-client ({}) again",
                        self.max_per_client
                    );
                }
                if count.open == 0 {
                    clients.remove(&ip);
                }
            }
        }
        let before = self.total.fetch_sub(1, Ordering::SeqCst);
        if before <= self.max_total && self.total_refusing.swap(false, Ordering::SeqCst) {
            log::info!(
                "open connections below access.limits.connections ({}) again; {} refused so far",
                self.max_total,
                self.refused()
            );
        }
    }
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Admitted({})", self.ip)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.release(self.ip, self.per_client);
    }
}

/// How the effective `access.limits.connections` relates to the file descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdFit {
    /// Every connection can hold all the descriptors it may need at once.
    Fits,
    /// A configured value over what full load needs but within one descriptor per
    /// connection: honoured (idle keep-alive clients hold one descriptor each), with a
    /// warning that under full load a request may find no descriptor left (its origin
    /// connect then fails with 502, and accepting pauses until descriptors are free).
    Tight { full_load: usize },
    /// Lowered to this many: the default over what full load needs, or a configured
    /// value over one descriptor per connection.
    Capped(usize),
}

/// The effective `access.limits.connections` for `nofile` (the RLIMIT_NOFILE soft
/// limit). The default is capped so that clients under full load (about
/// FDS_PER_CONNECTION each) never exhaust the process's descriptors; a configured value
/// is the operator's choice and is honoured up to one descriptor per connection (as
/// nginx keeps `worker_connections` above the fd limit with a warning).
pub fn effective_connections(configured: Option<usize>, nofile: u64) -> (usize, FdFit) {
    let fit = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).max(1);
    let spare = nofile.saturating_sub(FD_RESERVE);
    let full_load = fit(spare / FDS_PER_CONNECTION);
    match configured {
        None if super::DEFAULT_CONNECTIONS > full_load => (full_load, FdFit::Capped(full_load)),
        None => (super::DEFAULT_CONNECTIONS, FdFit::Fits),
        Some(wanted) if wanted <= full_load => (wanted, FdFit::Fits),
        Some(wanted) if wanted <= fit(spare) => (wanted, FdFit::Tight { full_load }),
        Some(_) => (fit(spare), FdFit::Capped(fit(spare))),
    }
}

/// Raises the RLIMIT_NOFILE soft limit to the hard limit (as servers do at startup;
/// the soft limit is often 1024 for compatibility with select(2), which chacha does not
/// use); returns the soft limit in force afterwards.
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit(2) with a valid struct; raising soft to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(lim.rlim_max);
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn total_limit_refuses_then_recovers() {
        let limits = Arc::new(Limits::new(2, 10));
        let a = limits.admit(ip("10.0.0.1"), true).unwrap();
        let _b = limits.admit(ip("10.0.0.2"), true).unwrap();
        let over = limits.admit(ip("10.0.0.3"), true).unwrap_err();
        assert!(over.first, "the first refusal of an episode logs");
        assert!(
            over.reason.contains("access.limits.connections"),
            "{}",
            over.reason
        );
        assert!(!limits.admit(ip("10.0.0.3"), true).unwrap_err().first);
        assert_eq!((limits.open(), limits.refused()), (2, 2));
        drop(a);
        assert_eq!(limits.open(), 1);
        let _c = limits.admit(ip("10.0.0.3"), true).unwrap();
        // A new episode logs again.
        assert!(limits.admit(ip("10.0.0.4"), true).unwrap_err().first);
    }

    #[test]
    fn per_client_limit_counts_each_address_and_mapped_forms_as_one() {
        let limits = Arc::new(Limits::new(100, 2));
        let a = limits.admit(ip("10.0.0.1"), true).unwrap();
        let _b = limits.admit(ip("::ffff:10.0.0.1"), true).unwrap();
        let over = limits.admit(ip("10.0.0.1"), true).unwrap_err();
        assert!(over.first);
        assert!(over.reason.contains("from 10.0.0.1"), "{}", over.reason);
        assert!(over.reason.contains("connections-per-client"));
        // Another address is not affected; a peer is exempt.
        let _c = limits.admit(ip("10.0.0.2"), true).unwrap();
        let _peer = limits.admit(ip("10.0.0.1"), false).unwrap();
        assert_eq!(limits.open(), 4, "refused ones are not counted");
        drop(a);
        let _d = limits.admit(ip("10.0.0.1"), true).unwrap();
        assert!(limits.admit(ip("10.0.0.1"), true).unwrap_err().first);
    }

    #[test]
    fn counts_drop_to_nothing() {
        let limits = Arc::new(Limits::new(10, 10));
        let all: Vec<_> = (0..10)
            .map(|i| limits.admit(ip(&format!("10.0.0.{i}")), true).unwrap())
            .collect();
        drop(all);
        assert_eq!(limits.open(), 0);
        assert!(limits.clients.iter().all(|s| s.lock().unwrap().is_empty()));
    }

    #[test]
    fn fd_limit_caps_the_connections() {
        assert_eq!(effective_connections(None, 1 << 20), (10_000, FdFit::Fits));
        assert_eq!(
            effective_connections(Some(20_000), 1 << 20),
            (20_000, FdFit::Fits)
        );
        // The default: (1024 - 256) / 3 = 256 connections under full load.
        assert_eq!(effective_connections(None, 1024), (256, FdFit::Capped(256)));
        assert_eq!(effective_connections(None, 10), (1, FdFit::Capped(1)));
        // Configured: honoured up to one descriptor each (1024 - 256 = 768), with a
        // warning past 256; lowered beyond that.
        assert_eq!(effective_connections(Some(100), 1024), (100, FdFit::Fits));
        assert_eq!(effective_connections(Some(256), 1024), (256, FdFit::Fits));
        assert_eq!(
            effective_connections(Some(300), 1024),
            (300, FdFit::Tight { full_load: 256 })
        );
        assert_eq!(
            effective_connections(Some(768), 1024),
            (768, FdFit::Tight { full_load: 256 })
        );
        assert_eq!(
            effective_connections(Some(769), 1024),
            (768, FdFit::Capped(768))
        );
        // This VM's hard limit: 10,000 configured idle clients fit.
        assert_eq!(
            effective_connections(Some(10_000), 20_000),
            (10_000, FdFit::Tight { full_load: 6_581 })
        );
    }
}
