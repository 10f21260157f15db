//! Who may use the proxy (`access:` in the config): the client list checked at
//! accept, proxy authentication, and connection limits. The address ranges
//! ([`cidr`]) are shared with the destination policy.

pub mod auth;
pub mod basic;
pub mod cidr;
pub mod destinations;

pub use cidr::{Cidr, CidrList};

/// `access.clients` when absent: loopback and the private ranges CI runners live on.
/// RFC 1918 (10/8, 172.16/12, 192.168/16), RFC 6598 shared address space (100.64/10,
/// carrier-grade NAT and some cloud VPCs), RFC 4193 unique local IPv6 (fc00::/7), and
/// link-local (169.254/16, fe80::/10; RFC 3927, RFC 4291 §2.5.6), where VMs on a host
/// bridge often sit. Everything else must be listed.
pub const DEFAULT_CLIENTS: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "169.254.0.0/16",
    "fe80::/10",
];

/// `access.limits.connections` when absent (then also capped by the file descriptors
/// the process may open: see the server's startup).
pub const DEFAULT_CONNECTIONS: usize = 10_000;
/// `access.limits.connections-per-client` when absent.
pub const DEFAULT_CONNECTIONS_PER_CLIENT: usize = 500;
/// Sanity bound on either limit.
pub const MAX_CONNECTIONS: usize = 10_000_000;

pub mod limits;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use auth::{AuthCore, Htpasswd, Refusal};
use cidr::normalize;
use limits::{Admitted, Limits};

use crate::http::RequestHead;

/// The access rules of the whole process (one for all cores).
pub struct Access {
    /// `access.clients`.
    pub clients: CidrList,
    /// The addresses of `cluster.nodes`: always admitted (their KV requests carry the
    /// cluster secret) and exempt from the per-client limit (a front-end node brings
    /// many clients' requests over its connections).
    pub peers: Vec<IpAddr>,
    /// `access.proxy-auth`: the users, when configured.
    pub users: Option<Arc<Htpasswd>>,
    pub limits: Arc<Limits>,
}

/// A connection refused at accept: its status, one-line reason, and the field the answer
/// carries.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub reason: String,
    pub header: Option<(&'static str, &'static str)>,
    /// Log it (a limit's refusal is logged once per episode; a client's 403 once per
    /// minute per core, see [`DenyLog`]).
    pub log: bool,
}

impl Access {
    /// The rules of `config`, with `max_connections` the effective total limit.
    pub fn new(
        config: &crate::config::AccessConfig,
        peers: Vec<IpAddr>,
        users: Option<Arc<Htpasswd>>,
        max_connections: usize,
    ) -> Access {
        Access {
            clients: config.clients.clone(),
            peers: peers.into_iter().map(normalize).collect(),
            users,
            limits: Arc::new(Limits::new(
                max_connections,
                config.limits.connections_per_client,
            )),
        }
    }

    /// Decides on a connection from `peer` as it is accepted, before anything is read:
    /// the client list (403), then the limits (503).
    pub fn admit(&self, peer: IpAddr) -> Result<Admitted, Refused> {
        let ip = normalize(peer);
        let is_peer = self.peers.contains(&ip);
        if !is_peer && !self.clients.contains(ip) {
            return Err(Refused {
                status: 403,
                reason: format!("client {ip} is not in access.clients"),
                header: None,
                log: true,
            });
        }
        self.limits.admit(ip, !is_peer).map_err(|over| Refused {
            status: 503,
            reason: over.reason,
            // RFC 9110 §10.2.3: when to try again.
            header: Some(("Retry-After", "1")),
            log: over.first,
        })
    }
}

/// One core's side of the access rules (cloned into each reload's worker, so the
/// credentials cache outlives a reload).
#[derive(Clone)]
pub struct Local {
    pub shared: Arc<Access>,
    auth: AuthCore,
}

impl Local {
    pub fn new(shared: Arc<Access>) -> Local {
        Local {
            shared,
            auth: AuthCore::default(),
        }
    }

    /// Whether a request may use the proxy: with `access.proxy-auth`, it must carry the
    /// `Proxy-Authorization` of a user (RFC 9110 §11.7.1). The caller asks only for
    /// requests that use the proxy on a client's own connection (absolute-form requests
    /// and CONNECT): chacha's endpoints (`/health`, the KV protocol with its own secret)
    /// and the requests inside an accepted CONNECT tunnel are not checked.
    pub async fn authorize(&self, head: &RequestHead) -> Result<(), Refusal> {
        match &self.shared.users {
            None => Ok(()),
            Some(users) => {
                self.auth
                    .check(users, head.headers.get("proxy-authorization"))
                    .await
            }
        }
    }
}

/// How often a refused client's address is logged (per core).
pub const DENY_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Addresses remembered per core for [`DenyLog`].
const DENY_LOG_ENTRIES: usize = 1024;

/// Logs a refused client once per [`DENY_LOG_INTERVAL`] (per core): a client retrying in
/// a loop does not flood the log.
#[derive(Default)]
pub struct DenyLog {
    last: RefCell<HashMap<IpAddr, Instant>>,
}

impl DenyLog {
    /// Whether to log a refusal of `ip` now.
    pub fn should_log(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut last = self.last.borrow_mut();
        if let Some(at) = last.get(&ip) {
            if now.duration_since(*at) < DENY_LOG_INTERVAL {
                return false;
            }
        }
        if last.len() >= DENY_LOG_ENTRIES {
            last.retain(|_, at| now.duration_since(*at) < DENY_LOG_INTERVAL);
            if last.len() >= DENY_LOG_ENTRIES {
                last.clear();
            }
        }
        last.insert(ip, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(clients: &[&str], peers: &[&str]) -> Access {
        let mut config = crate::config::AccessConfig::default();
        if !clients.is_empty() {
            config.clients = CidrList::of(clients);
        }
        config.limits.connections_per_client = 1;
        Access::new(
            &config,
            peers.iter().map(|p| p.parse().unwrap()).collect(),
            None,
            3,
        )
    }

    #[test]
    fn admits_listed_clients_and_refuses_others_with_403() {
        let a = access(&["127.0.0.1/32"], &[]);
        let held = a.admit("127.0.0.1".parse().unwrap()).unwrap();
        let r = a.admit("::ffff:127.0.0.1".parse().unwrap()).unwrap_err();
        assert_eq!(r.status, 503, "connections-per-client: 1");
        drop(held);
        let r = a.admit("127.0.0.2".parse().unwrap()).unwrap_err();
        assert_eq!(r.status, 403);
        assert_eq!(r.reason, "client 127.0.0.2 is not in access.clients");
        let r = a.admit("::ffff:203.0.113.9".parse().unwrap()).unwrap_err();
        assert_eq!(r.reason, "client 203.0.113.9 is not in access.clients");
    }

    #[test]
    fn default_list_refuses_public_addresses() {
        let a = access(&[], &[]);
        for ok in ["127.0.0.1", "10.9.8.7", "fd00::5", "::1"] {
            assert!(a.admit(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        assert_eq!(a.admit("8.8.8.8".parse().unwrap()).unwrap_err().status, 403);
    }

    #[test]
    fn cluster_peers_are_admitted_without_per_client_limit() {
        let a = access(&["127.0.0.1/32"], &["203.0.113.5"]);
        let _one = a.admit("203.0.113.5".parse().unwrap()).unwrap();
        let _two = a.admit("203.0.113.5".parse().unwrap()).unwrap();
        let _three = a.admit("127.0.0.1".parse().unwrap()).unwrap();
        // The total still applies: 503 with Retry-After, logged once per episode.
        let r = a.admit("203.0.113.5".parse().unwrap()).unwrap_err();
        assert_eq!((r.status, r.header), (503, Some(("Retry-After", "1"))));
        assert!(r.log);
        assert!(!a.admit("127.0.0.1".parse().unwrap()).unwrap_err().log);
    }

    #[test]
    fn deny_log_once_per_address_per_interval() {
        let log = DenyLog::default();
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(log.should_log(a));
        assert!(!log.should_log(a));
        assert!(log.should_log("203.0.113.10".parse().unwrap()));
        for i in 0..(DENY_LOG_ENTRIES as u32 * 2) {
            log.should_log(IpAddr::V4(i.into()));
        }
        assert!(log.last.borrow().len() <= DENY_LOG_ENTRIES, "bounded");
    }
}
