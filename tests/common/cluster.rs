//! Cluster-mode test helpers: node addresses, node configs, and a started cluster of
//! real chacha processes (one per node) whose key owners the tests can compute.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha::cache::key::{cache_key, key_hash};
use chacha::cache::meta::entry_path;
use chacha::cluster::pick;
use chacha::http::uri::parse_absolute;

use super::chacha::{Chacha, DIR_PLACEHOLDER};

/// Addresses for `n` nodes, chosen now: cluster mode needs explicit ones in the config
/// (every node must know every other's). Each node gets its own loopback address in a
/// 127.x.y.0/24 picked from this process and call, and a port found by binding it with
/// port 0 and released just before the node starts. Another process could take a port
/// in between; that small race is kept away from ordinary sockets (which use 127.0.0.1
/// or 0.0.0.0) and from concurrent test runs (other addresses).
pub fn reserve_addrs(n: usize) -> Vec<SocketAddr> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::SeqCst);
    let net = (
        100 + (std::process::id() % 100) as u8,
        (call % 250) as u8 + 1,
    );
    let listeners: Vec<TcpListener> = (1..=n)
        .map(|i| {
            TcpListener::bind(format!("127.{}.{}.{i}:0", net.0, net.1))
                .expect("bind a loopback address")
        })
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// How the nodes of a test cluster are configured beyond their addresses.
#[derive(Clone, Copy)]
pub struct NodeOpts<'a> {
    pub secret: &'a str,
    pub workers: usize,
    /// `disk.limit`.
    pub limit: &'a str,
    /// Top-level YAML appended verbatim.
    pub extra: &'a str,
}

impl NodeOpts<'_> {
    pub fn new(secret: &str) -> NodeOpts<'_> {
        NodeOpts {
            secret,
            workers: 2,
            limit: "100MB",
            extra: "",
        }
    }
}

/// The config of the node at `addr` in a cluster of `nodes`.
pub fn node_config(addr: SocketAddr, nodes: &[SocketAddr], o: NodeOpts<'_>) -> String {
    let mut list = String::new();
    for n in nodes {
        list.push_str(&format!("    - addr: {n}\n"));
    }
    format!(
        "addr: {addr}\nworkers: {}\ndisk:\n  dir: \"{DIR_PLACEHOLDER}\"\n  limit: {}\ncluster:\n  secret: {}\n  nodes:\n{list}{}",
        o.workers, o.limit, o.secret, o.extra
    )
}

/// The cache key of `url` (no rule).
pub fn key_of(url: &str) -> String {
    cache_key(&parse_absolute(url).unwrap(), None)
}

/// Whether the node with data dir `dir` holds a committed entry for `url`.
pub fn stored_in(dir: &Path, url: &str) -> bool {
    entry_path(dir, key_hash(&key_of(url))).exists()
}

/// Running nodes, each configured with every node's address.
pub struct Cluster {
    pub nodes: Vec<Chacha>,
    /// Each node's address as the config names it (what rendezvous hashing weighs).
    pub names: Vec<String>,
}

impl Cluster {
    pub fn start(n: usize, o: NodeOpts<'_>) -> Cluster {
        let addrs = reserve_addrs(n);
        let nodes = addrs
            .iter()
            .map(|&a| Chacha::start(&node_config(a, &addrs, o)))
            .collect();
        let names = addrs.iter().map(|a| a.to_string()).collect();
        Cluster { nodes, names }
    }

    /// Index of the node that owns `url`'s cache key (the README's formula).
    pub fn owner(&self, url: &str) -> usize {
        pick(self.names.iter().map(String::as_str), &key_of(url)).unwrap()
    }
}
