//! `access:` (ours): client CIDRs, per-destination rules and connection limits.

use super::*;

impl Checker {
    /// `access:` (ours; the original has no access control).
    pub(super) fn access(&mut self, value: &Value, path: &str) -> Option<AccessConfig> {
        let map = self.mapping(value, path, ACCESS_KEYS)?;
        let defaults = AccessConfig::default();
        let clients = match optional(map, "clients") {
            None => Some(defaults.clients),
            Some(value) => {
                let key = join_key(path, "clients");
                let list = self.cidrs(value, &key);
                if list.as_ref().is_some_and(CidrList::is_empty) {
                    self.report(
                        &key,
                        "must list at least one range (0.0.0.0/0 and ::/0 allow every client)",
                    );
                    None
                } else {
                    list
                }
            }
        };
        let proxy_auth = optional(map, "proxy-auth").and_then(|value| {
            let auth_path = join_key(path, "proxy-auth");
            let auth = self.mapping(value, &auth_path, PROXY_AUTH_KEYS)?;
            let htpasswd = self.required(auth, &auth_path, "htpasswd")?;
            let file = self.non_empty_string(
                htpasswd,
                &join_key(&auth_path, "htpasswd"),
                "an htpasswd file path",
            )?;
            Some(ProxyAuthConfig {
                htpasswd: PathBuf::from(file),
            })
        });
        // Only an explicitly broken `proxy-auth` fails here (`None` above also means absent).
        let proxy_auth_ok = optional(map, "proxy-auth").is_none() || proxy_auth.is_some();
        let destinations = match optional(map, "destinations") {
            None => Some(DestinationsConfig::default()),
            Some(value) => {
                let dest_path = join_key(path, "destinations");
                self.mapping(value, &dest_path, DESTINATION_KEYS)
                    .and_then(|dest| {
                        let mut list = |name: &str| match optional(dest, name) {
                            None => Some(CidrList::default()),
                            Some(value) => self.cidrs(value, &join_key(&dest_path, name)),
                        };
                        let allow = list("allow");
                        let deny = list("deny");
                        Some(DestinationsConfig {
                            allow: allow?,
                            deny: deny?,
                        })
                    })
            }
        };
        let limits = match optional(map, "limits") {
            None => Some(LimitsConfig::default()),
            Some(value) => {
                let limits_path = join_key(path, "limits");
                self.mapping(value, &limits_path, LIMIT_KEYS)
                    .and_then(|limits| {
                        let connections = match optional(limits, "connections") {
                            None => Some(None),
                            Some(value) => self
                                .count(value, &join_key(&limits_path, "connections"))
                                .map(Some),
                        };
                        let per_client = match optional(limits, "connections-per-client") {
                            None => Some(crate::access::defaults::DEFAULT_CONNECTIONS_PER_CLIENT),
                            Some(value) => {
                                self.count(value, &join_key(&limits_path, "connections-per-client"))
                            }
                        };
                        Some(LimitsConfig {
                            connections: connections?,
                            connections_per_client: per_client?,
                        })
                    })
            }
        };
        if !proxy_auth_ok {
            return None;
        }
        Some(AccessConfig {
            clients: clients?,
            proxy_auth,
            destinations: destinations?,
            limits: limits?,
        })
    }

    /// A list of address ranges (see [`crate::access::cidr::Cidr`]), each problem at its item.
    fn cidrs(&mut self, value: &Value, path: &str) -> Option<CidrList> {
        let items = self.sequence(value, path, "a list of address ranges such as 10.0.0.0/8")?;
        let mut ranges = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let item_path = join_index(path, index);
            let Some(text) = self.string(item, &item_path, "an address range such as 10.0.0.0/8")
            else {
                continue;
            };
            match text.parse::<crate::access::cidr::Cidr>() {
                Ok(range) => ranges.push(range),
                Err(e) => self.report(&item_path, e.0),
            }
        }
        (ranges.len() == items.len()).then_some(CidrList(ranges))
    }

    /// A positive count up to [`crate::access::defaults::MAX_CONNECTIONS`].
    fn count(&mut self, value: &Value, path: &str) -> Option<usize> {
        let max = crate::access::defaults::MAX_CONNECTIONS;
        let n = match value {
            Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
            _ => None,
        };
        if let Some(n) = n.filter(|n| (1..=max).contains(n)) {
            return Some(n);
        }
        self.report(
            path,
            format!(
                "expected a positive integer up to {max}, found {}",
                describe(value)
            ),
        );
        None
    }
}
