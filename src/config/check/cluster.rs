//! `cluster:`: the shared secret and the node list.

use super::*;

impl Checker {
    pub(super) fn cluster(&mut self, value: &Value, path: &str) -> Option<ClusterConfig> {
        let map = self.mapping(value, path, CLUSTER_KEYS)?;
        let secret = self.required(map, path, "secret").and_then(|value| {
            self.non_empty_string(
                value,
                &join_key(path, "secret"),
                "a secret string (quote it)",
            )
        });
        let nodes = self
            .required(map, path, "nodes")
            .and_then(|value| self.nodes(value, &join_key(path, "nodes")));
        Some(ClusterConfig {
            secret: secret?,
            nodes: nodes?,
        })
    }

    fn nodes(&mut self, value: &Value, path: &str) -> Option<Vec<SocketAddr>> {
        let items = self.sequence(value, path, "a list of nodes")?;
        if items.is_empty() {
            self.report(path, "must list at least one node");
            return None;
        }
        let mut nodes = Vec::new();
        let mut valid = true;
        for (index, item) in items.iter().enumerate() {
            let item_path = join_index(path, index);
            let node = self.mapping(item, &item_path, NODE_KEYS).and_then(|map| {
                let addr_path = join_key(&item_path, "addr");
                let addr = self.required(map, &item_path, "addr")?;
                let addr = self.addr(addr, &addr_path)?;
                let socket = addr.socket;
                if socket.ip().is_unspecified() || socket.port() == 0 {
                    self.report(
                        &addr_path,
                        format!("{socket} is not reachable: a node needs an explicit IP and port"),
                    );
                    return None;
                }
                Some(socket)
            });
            match node {
                // The original keeps nodes in a set: duplicates collapse.
                Some(node) if !nodes.contains(&node) => nodes.push(node),
                Some(_) => {}
                None => valid = false,
            }
        }
        valid.then_some(nodes)
    }
}
