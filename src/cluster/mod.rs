//! Cluster mode: the nodes of `cluster.nodes` pool their disks. Each cache key belongs to
//! one node, chosen by rendezvous (highest random weight) hashing; any node serves any
//! key by reaching its owner over the KV protocol (`proxy::kv` serves it, `kv::client`
//! speaks it, `proxy::storage::peer` puts it behind the cached flow's storage seam).
//!
//! This module is pure: membership, owner selection, authentication, the metadata
//! codec, the claims of remote fills, and per-node up/down flags shared by all cores.

pub mod auth;
pub mod auth_limit;
pub mod claims;
pub mod kv;
pub mod metadata;
pub mod token;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3;

use crate::config::ClusterConfig;
use crate::upstream::PoolKey;
use claims::Claims;

/// Separates the node address from the key in the hashed bytes, so that no
/// (address, key) pair reads the same as another.
pub const SCORE_SEPARATOR: u8 = 0;

/// The rendezvous score of `node` (its address as `ip:port`, IPv6 as `[ip]:port`) for
/// `key`: `xxh3_64(node ++ 0x00 ++ key)` with seed 0.
pub fn score(node: &str, key: &str) -> u64 {
    let mut h = Xxh3::new();
    h.update(node.as_bytes());
    h.update(&[SCORE_SEPARATOR]);
    h.update(key.as_bytes());
    h.digest()
}

/// Index of the owner of `key` among `nodes`: the highest score; equal scores (not seen
/// in practice) go to the greater address string. `None` without nodes.
pub fn pick<'a>(nodes: impl IntoIterator<Item = &'a str>, key: &str) -> Option<usize> {
    nodes
        .into_iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| (score(a, key), *a).cmp(&(score(b, key), *b)))
        .map(|(i, _)| i)
}

/// One node of the cluster, with its health as seen from this process.
pub struct Node {
    pub addr: SocketAddr,
    /// `addr` as hashed (`SocketAddr`'s display form).
    pub name: String,
    /// Where the per-core keep-alive connections to it are pooled.
    pub pool_key: PoolKey,
    down: AtomicBool,
    /// How often its state changed (up → down or back), for the metrics.
    changes: AtomicU64,
}

impl Node {
    fn new(addr: SocketAddr) -> Node {
        Node {
            addr,
            name: addr.to_string(),
            pool_key: PoolKey {
                tls: false,
                host: addr.ip().to_string(),
                port: addr.port(),
                // A node from `cluster.nodes`: exempt from the destination policy.
                peer: true,
            },
            down: AtomicBool::new(false),
            changes: AtomicU64::new(0),
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Marks the node unreachable; true when this changed its state (log it then).
    pub fn mark_down(&self) -> bool {
        let changed = !self.down.swap(true, Ordering::AcqRel);
        if changed {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        changed
    }

    /// Marks the node reachable again; true when this changed its state.
    pub fn mark_up(&self) -> bool {
        let changed = self.down.swap(false, Ordering::AcqRel);
        if changed {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        changed
    }

    /// How many times its state changed since this process started.
    pub fn state_changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

/// Who serves a key.
pub enum Owner<'a> {
    /// This node: its own disk cache.
    Local,
    Peer(&'a Node),
}

/// The cluster as this process sees it; one per process, shared by all cores.
pub struct Cluster {
    /// This node's `addr`.
    pub me: SocketAddr,
    /// Shared with the cluster of the next live reload while the node stays listed, so
    /// its health carries over.
    pub nodes: Vec<Arc<Node>>,
    pub secret: String,
    /// This node's index in `nodes`; `None` for a pure front end (owns no key).
    pub local: Option<usize>,
    /// The `Authorization` value sent to peers.
    pub authorization: String,
    /// Fills that other nodes claimed on this node (kept across live reloads).
    pub claims: Arc<Claims>,
    /// Failed KV authentications per source address (429 once too many; kept across
    /// live reloads).
    pub auth_limit: Arc<auth_limit::AuthLimiter>,
}

impl Cluster {
    pub fn new(me: SocketAddr, config: &ClusterConfig) -> Cluster {
        Cluster::reloaded(None, me, config)
    }

    /// The cluster of a live reload's `config`: nodes still listed keep their `Node`
    /// (health) from `old`, and the claims other nodes hold here stay.
    pub fn reloaded(old: Option<&Cluster>, me: SocketAddr, config: &ClusterConfig) -> Cluster {
        let nodes: Vec<Arc<Node>> = config
            .nodes
            .iter()
            .map(|&a| {
                old.and_then(|o| o.nodes.iter().find(|n| n.addr == a).cloned())
                    .unwrap_or_else(|| Arc::new(Node::new(a)))
            })
            .collect();
        let local = nodes.iter().position(|n| n.addr == me);
        Cluster {
            me,
            nodes,
            secret: config.secret.clone(),
            local,
            authorization: auth::header_value(&config.secret),
            claims: old.map_or_else(Arc::default, |o| o.claims.clone()),
            auth_limit: old.map_or_else(Arc::default, |o| o.auth_limit.clone()),
        }
    }

    pub fn owner_index(&self, key: &str) -> usize {
        pick(self.nodes.iter().map(|n| n.name.as_str()), key).expect("a cluster has nodes")
    }

    pub fn owner(&self, key: &str) -> Owner<'_> {
        let i = self.owner_index(key);
        if Some(i) == self.local {
            Owner::Local
        } else {
            Owner::Peer(&self.nodes[i])
        }
    }

    /// The node that serves `key` now: the highest score among the nodes this node
    /// believes up (itself always counts as up). That is the owner while it is up, and
    /// while it is down the next node in rendezvous order, its *stand-in*, which caches
    /// and single-flights the key as the owner would. Every node applies the same rule
    /// to the same health, so they agree on the stand-in once they agree the owner is
    /// down; while they disagree (a moment after a failure or a recovery) a key may be
    /// filled twice, never more. `Owner::Peer` of a down node only when no node is up (a
    /// front end whose every node is down).
    pub fn serving(&self, key: &str) -> Owner<'_> {
        let up = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| Some(*i) == self.local || !n.is_down());
        let best = up
            .max_by(|(_, a), (_, b)| {
                (score(&a.name, key), &a.name).cmp(&(score(&b.name, key), &b.name))
            })
            .map_or_else(|| self.owner_index(key), |(i, _)| i);
        if Some(best) == self.local {
            Owner::Local
        } else {
            Owner::Peer(&self.nodes[best])
        }
    }

    /// Whether a KV request's `Authorization` field carries the secret.
    pub fn authorized(&self, field: Option<&[u8]>) -> bool {
        auth::authorized(field, &self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: usize = 100_000;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn owners(nodes: &[String]) -> Vec<String> {
        (0..KEYS)
            .map(|k| {
                let key = format!("https://example.com/blobs/{k}?v=1");
                nodes[pick(nodes.iter().map(String::as_str), &key).unwrap()].clone()
            })
            .collect()
    }

    #[test]
    fn the_formula_is_pinned() {
        // Nodes of every version must agree: changing the formula reshuffles every cluster.
        let mut bytes = b"10.0.0.1:8080".to_vec();
        bytes.push(0);
        bytes.extend_from_slice(b"http://example.com/");
        assert_eq!(
            score("10.0.0.1:8080", "http://example.com/"),
            xxhash_rust::xxh3::xxh3_64(&bytes)
        );
        assert_eq!(
            score("10.0.0.1:8080", "http://example.com/"),
            0x1402_81f8_72b4_21ad
        );
    }

    #[test]
    fn owner_does_not_depend_on_node_order() {
        let a = names(5);
        let mut b = a.clone();
        b.reverse();
        b.rotate_left(2);
        assert_eq!(owners(&a), owners(&b));
    }

    #[test]
    fn keys_spread_evenly() {
        let nodes = names(3);
        let owned = owners(&nodes);
        for n in &nodes {
            let count = owned.iter().filter(|o| *o == n).count();
            // Expected 33,333; a binomial's sd here is ~150: allow ±3 %.
            assert!(
                (KEYS / 3 - 1000..=KEYS / 3 + 1000).contains(&count),
                "{n} owns {count} of {KEYS}"
            );
        }
    }

    #[test]
    fn adding_a_node_moves_only_the_keys_it_gains() {
        let before = owners(&names(3));
        let after = owners(&names(4));
        let new = &names(4)[3];
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(a, new, "a key moved between old nodes");
                moved += 1;
            }
        }
        assert!(
            (KEYS / 4 - 1000..=KEYS / 4 + 1000).contains(&moved),
            "{moved} keys moved to the new node"
        );
    }

    #[test]
    fn removing_a_node_moves_only_the_keys_it_loses() {
        let all = names(4);
        let before = owners(&all);
        let rest: Vec<String> = all.iter().filter(|n| *n != &all[1]).cloned().collect();
        let after = owners(&rest);
        for (b, a) in before.iter().zip(&after) {
            if b != &all[1] {
                assert_eq!(a, b, "a key of a remaining node moved");
            } else {
                assert_ne!(a, &all[1]);
            }
        }
    }

    #[test]
    fn local_node_and_front_end() {
        let config = ClusterConfig {
            secret: "s".into(),
            nodes: vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
        };
        let member = Cluster::new("127.0.0.1:2".parse().unwrap(), &config);
        assert_eq!(member.local, Some(1));
        let front = Cluster::new("127.0.0.1:3".parse().unwrap(), &config);
        assert_eq!(front.local, None);
        let mut local = 0;
        for k in 0..1000 {
            let key = format!("k{k}");
            assert!(matches!(front.owner(&key), Owner::Peer(_)));
            if matches!(member.owner(&key), Owner::Local) {
                local += 1;
                assert_eq!(member.owner_index(&key), 1);
            }
        }
        assert!((400..=600).contains(&local), "{local}");
    }

    #[test]
    fn health_changes_are_reported_once() {
        let n = Node::new("127.0.0.1:9".parse().unwrap());
        assert!(!n.is_down());
        assert!(n.mark_down());
        assert!(!n.mark_down());
        assert!(n.is_down());
        assert!(n.mark_up());
        assert!(!n.mark_up());
        assert_eq!(n.state_changes(), 2);
        assert_eq!(n.pool_key.host, "127.0.0.1");
    }

    #[test]
    fn a_down_owner_has_the_next_node_in_rendezvous_order_stand_in() {
        let config = ClusterConfig {
            secret: "s".into(),
            nodes: (1..=4)
                .map(|i| format!("127.0.0.1:{i}").parse().unwrap())
                .collect(),
        };
        let c = Cluster::new("127.0.0.1:9".parse().unwrap(), &config);
        for k in 0..200 {
            let key = format!("k{k}");
            let mut order: Vec<usize> = (0..4).collect();
            order.sort_by_key(|&i| std::cmp::Reverse(score(&c.nodes[i].name, &key)));
            let name = |o: Owner<'_>| match o {
                Owner::Peer(n) => n.name.clone(),
                Owner::Local => unreachable!("a front end owns nothing"),
            };
            assert_eq!(name(c.serving(&key)), c.nodes[order[0]].name);
            c.nodes[order[0]].mark_down();
            assert_eq!(name(c.serving(&key)), c.nodes[order[1]].name);
            c.nodes[order[1]].mark_down();
            assert_eq!(name(c.serving(&key)), c.nodes[order[2]].name);
            for n in &c.nodes {
                n.mark_up();
            }
            assert_eq!(name(c.serving(&key)), c.nodes[order[0]].name);
        }
        // A member is its own stand-in when it comes next, and always counts as up.
        let member = Cluster::new("127.0.0.1:2".parse().unwrap(), &config);
        let key = (0..1000)
            .map(|k| format!("k{k}"))
            .find(|k| {
                let mut order: Vec<usize> = (0..4).collect();
                order.sort_by_key(|&i| std::cmp::Reverse(score(&member.nodes[i].name, k)));
                order[1] == 1
            })
            .unwrap();
        assert!(matches!(member.serving(&key), Owner::Peer(_)));
        let owner = member.owner_index(&key);
        member.nodes[owner].mark_down();
        assert!(matches!(member.serving(&key), Owner::Local));
        member.nodes[1].mark_down();
        assert!(matches!(member.serving(&key), Owner::Local));
    }
}
