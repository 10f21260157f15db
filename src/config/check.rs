//! Checking a parsed YAML value against the config's schema: every problem found is
//! collected with its key path and line, so `chacha check` lists them all at once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use regex::Regex;
use serde_yaml_ng::{Mapping, Value};

use super::lines::{join_index, join_key, KeyLines};
use super::*;

/// An `addr` as written: a resolved socket address, and whether the host was
/// an IP literal (or implicit) rather than a hostname.
struct ParsedAddr {
    socket: SocketAddr,
    literal_ip: bool,
}

/// Walks the YAML value, collecting every problem.
pub(super) struct Checker {
    pub(super) lines: KeyLines,
    pub(super) problems: Vec<Problem>,
    pub(super) resolve: Resolve,
}

impl Checker {
    fn report(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_owned(),
            line: self.lines.line_of(key),
            message: message.into(),
        });
    }

    pub(super) fn config(&mut self, root: &Value) -> Option<Config> {
        let empty = Mapping::new();
        let map = match root {
            // An empty file: report the missing `addr` below.
            Value::Null => &empty,
            Value::Mapping(map) => map,
            other => {
                self.report(
                    "",
                    format!("expected a mapping of settings, found {}", describe(other)),
                );
                return None;
            }
        };
        self.check_keys(map, "", TOP_KEYS);

        let addr = self
            .required(map, "", "addr")
            .and_then(|value| self.addr(value, "addr"));
        let workers = match optional(map, "workers") {
            Some(value) => self.workers(value, "workers"),
            None => Some(default_workers()),
        };
        let disk = optional(map, "disk").and_then(|value| self.disk(value, "disk"));
        let tls_interceptor = optional(map, "tls-interceptor")
            .and_then(|value| self.tls_interceptor(value, "tls-interceptor"));
        let rules =
            optional(map, "rules").map_or_else(Vec::new, |value| self.rules(value, "rules"));
        let cluster = optional(map, "cluster").and_then(|value| self.cluster(value, "cluster"));
        let timeouts = match optional(map, "timeouts") {
            Some(value) => self.timeouts(value, "timeouts"),
            None => Some(Timeouts::default()),
        };

        let run_as_root = match optional(map, "run-as-root") {
            Some(value) => self.boolean(value, "run-as-root"),
            None => Some(true),
        };
        let metrics = optional(map, "metrics").map(|value| self.metrics(value, "metrics"));
        let log_format = match optional(map, "log-format") {
            Some(value) => self.log_format(value, "log-format"),
            None => Some(LogFormat::Text),
        };
        let access = match optional(map, "access") {
            Some(value) => self.access(value, "access"),
            None => Some(AccessConfig::default()),
        };
        if let (Some(addr), true) = (&addr, optional(map, "cluster").is_some()) {
            self.check_cluster_addr(addr);
        }
        if !self.problems.is_empty() {
            return None;
        }
        Some(Config {
            addr: addr?.socket,
            workers: workers?,
            disk,
            tls_interceptor,
            rules,
            cluster,
            timeouts: timeouts?,
            run_as_root: run_as_root?,
            access: access?,
            metrics: metrics.map(Option::unwrap),
            log_format: log_format?,
        })
    }

    /// `log-format:` (ours): `text` or `json`.
    fn log_format(&mut self, value: &Value, path: &str) -> Option<LogFormat> {
        match value {
            Value::String(text) if text == "text" => Some(LogFormat::Text),
            Value::String(text) if text == "json" => Some(LogFormat::Json),
            other => {
                self.report(
                    path,
                    format!("expected text or json, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// `metrics:` (ours): `{addr: ip:port}`, the admin address of `GET /metrics`.
    fn metrics(&mut self, value: &Value, path: &str) -> Option<MetricsConfig> {
        let map = self.mapping(value, path, METRICS_KEYS)?;
        let addr = self
            .required(map, path, "addr")
            .and_then(|value| self.addr(value, &join_key(path, "addr")))?;
        Some(MetricsConfig { addr: addr.socket })
    }

    /// `access:` (ours; the original has no access control).
    fn access(&mut self, value: &Value, path: &str) -> Option<AccessConfig> {
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
                            None => Some(crate::access::DEFAULT_CONNECTIONS_PER_CLIENT),
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

    /// A list of address ranges (see [`crate::access::Cidr`]), each problem at its item.
    fn cidrs(&mut self, value: &Value, path: &str) -> Option<CidrList> {
        let items = self.sequence(value, path, "a list of address ranges such as 10.0.0.0/8")?;
        let mut ranges = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let item_path = join_index(path, index);
            let Some(text) = self.string(item, &item_path, "an address range such as 10.0.0.0/8")
            else {
                continue;
            };
            match text.parse::<crate::access::Cidr>() {
                Ok(range) => ranges.push(range),
                Err(e) => self.report(&item_path, e.0),
            }
        }
        (ranges.len() == items.len()).then_some(CidrList(ranges))
    }

    /// A positive count up to [`crate::access::MAX_CONNECTIONS`].
    fn count(&mut self, value: &Value, path: &str) -> Option<usize> {
        let max = crate::access::MAX_CONNECTIONS;
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

    /// `timeouts:` (chacha's own key; the original hard-codes its timeouts).
    fn timeouts(&mut self, value: &Value, path: &str) -> Option<Timeouts> {
        let map = self.mapping(value, path, TIMEOUT_KEYS)?;
        let mut t = Timeouts::default();
        let mut ok = true;
        for (name, slot) in [
            ("connect", &mut t.connect),
            ("upstream-head", &mut t.upstream_head),
            ("upstream-body", &mut t.upstream_body),
            ("client-head", &mut t.client_head),
            ("client-body", &mut t.client_body),
            ("idle", &mut t.idle),
        ] {
            if let Some(value) = optional(map, name) {
                let key = join_key(path, name);
                let text = match value {
                    Value::String(text) => text.clone(),
                    Value::Number(n) => format!("{n}s"),
                    other => {
                        self.report(
                            &key,
                            format!("expected a duration such as 30s, found {}", describe(other)),
                        );
                        ok = false;
                        continue;
                    }
                };
                match parse_duration(&text) {
                    Ok(d) => *slot = d,
                    Err(message) => {
                        self.report(&key, message);
                        ok = false;
                    }
                }
            }
        }
        ok.then_some(t)
    }

    /// Other nodes compare and reach this node by its `addr`, so (like the
    /// original's server sanity check) it must be a concrete IP and port.
    fn check_cluster_addr(&mut self, addr: &ParsedAddr) {
        if !addr.literal_ip {
            self.report(
                "addr",
                "must be an IP address (not a hostname) in cluster mode, e.g. 192.168.0.1:8080",
            );
        } else if addr.socket.ip().is_unspecified() {
            self.report(
                "addr",
                format!(
                    "must be an explicit IP address in cluster mode, not {} (e.g. 192.168.0.1:8080)",
                    addr.socket.ip()
                ),
            );
        }
        if addr.socket.port() == 0 {
            self.report("addr", "port must not be 0 in cluster mode");
        }
    }

    fn addr(&mut self, value: &Value, path: &str) -> Option<ParsedAddr> {
        let text = self.string(value, path, "an address such as 127.0.0.1:8080")?;
        match parse_addr(&text, self.resolve) {
            Ok(addr) => Some(addr),
            Err(reason) => {
                self.report(path, format!("invalid address {text:?}: {reason}"));
                None
            }
        }
    }

    fn workers(&mut self, value: &Value, path: &str) -> Option<usize> {
        let count = match value {
            Value::Number(number) => number.as_u64(),
            _ => None,
        };
        match count.and_then(|count| usize::try_from(count).ok()) {
            Some(count @ 1..=MAX_WORKERS) => Some(count),
            _ => {
                self.report(
                    path,
                    format!(
                        "expected a positive integer up to {MAX_WORKERS}, found {}",
                        describe(value)
                    ),
                );
                None
            }
        }
    }

    fn disk(&mut self, value: &Value, path: &str) -> Option<DiskConfig> {
        let map = self.mapping(value, path, DISK_KEYS)?;
        let dir = self
            .required(map, path, "dir")
            .and_then(|value| self.non_empty_string(value, &join_key(path, "dir"), "a directory"));
        let limit = self
            .required(map, path, "limit")
            .and_then(|value| self.size(value, &join_key(path, "limit")));
        Some(DiskConfig {
            dir: PathBuf::from(dir?),
            limit: limit?,
        })
    }

    fn size(&mut self, value: &Value, path: &str) -> Option<u64> {
        // yaml.v3 hands the original a bare number as its text, so `limit:
        // 1000` means 1000 bytes there too.
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            other => {
                self.report(
                    path,
                    format!("expected a size such as 50GB, found {}", describe(other)),
                );
                return None;
            }
        };
        match parse_size(&text) {
            Ok(bytes) => Some(bytes),
            Err(message) => {
                self.report(path, message);
                None
            }
        }
    }

    fn tls_interceptor(&mut self, value: &Value, path: &str) -> Option<TlsConfig> {
        let map = self.mapping(value, path, TLS_KEYS)?;
        let cert = self.required(map, path, "cert").and_then(|value| {
            self.non_empty_string(value, &join_key(path, "cert"), "a PEM file path")
        });
        let key = self.required(map, path, "key").and_then(|value| {
            self.non_empty_string(value, &join_key(path, "key"), "a PEM file path")
        });
        let ports = match optional(map, "ports") {
            None => Some(DEFAULT_TLS_PORTS.to_vec()),
            Some(value) => self.ports(value, &join_key(path, "ports")),
        };
        let intercept = match optional(map, "intercept") {
            None => Some(None),
            Some(value) => self
                .host_patterns(value, &join_key(path, "intercept"))
                .map(Some),
        };
        let passthrough_ports = match optional(map, "passthrough-ports") {
            None => Some(Vec::new()),
            Some(Value::Sequence(items)) if items.is_empty() => Some(Vec::new()),
            Some(value) => self.ports(value, &join_key(path, "passthrough-ports")),
        };
        let allow_sni_mismatch = match optional(map, "allow-sni-mismatch") {
            None => Some(false),
            Some(value) => self.boolean(value, &join_key(path, "allow-sni-mismatch")),
        };
        Some(TlsConfig {
            cert: PathBuf::from(cert?),
            key: PathBuf::from(key?),
            ports: ports?,
            intercept: intercept?,
            passthrough_ports: passthrough_ports?,
            allow_sni_mismatch: allow_sni_mismatch?,
        })
    }

    /// `tls-interceptor.intercept`: host regexes, each checked to compile.
    fn host_patterns(&mut self, value: &Value, path: &str) -> Option<Vec<String>> {
        let items = self.sequence(value, path, "a list of host regexes")?;
        let mut patterns = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let item_path = join_index(path, index);
            let Some(pattern) = self.string(item, &item_path, "a regular expression") else {
                continue;
            };
            match Regex::new(&pattern) {
                Ok(_) => patterns.push(pattern),
                Err(err) => self.report(
                    &item_path,
                    format!(
                        "invalid regular expression {pattern:?}: {}",
                        one_line_regex_error(&err)
                    ),
                ),
            }
        }
        (patterns.len() == items.len()).then_some(patterns)
    }

    fn ports(&mut self, value: &Value, path: &str) -> Option<Vec<u16>> {
        let items = self.sequence(value, path, "a list of ports")?;
        if items.is_empty() {
            self.report(path, "must list at least one port");
            return None;
        }
        let mut ports = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let port = match item {
                Value::Number(number) => number.as_u64().and_then(|n| u16::try_from(n).ok()),
                _ => None,
            };
            match port {
                Some(port @ 1..) => ports.push(port),
                _ => self.report(
                    &join_index(path, index),
                    format!("expected a port 1-65535, found {}", describe(item)),
                ),
            }
        }
        (ports.len() == items.len()).then_some(ports)
    }

    fn rules(&mut self, value: &Value, path: &str) -> Vec<Rule> {
        let (items, items_path) = match value {
            Value::Sequence(items) => (items, path.to_owned()),
            // The README's form: `rules: {paths: [...]}`.
            Value::Mapping(_) => {
                let Some(map) = self.mapping(value, path, RULES_MAPPING_KEYS) else {
                    return Vec::new();
                };
                let paths_path = join_key(path, "paths");
                let Some(paths) = optional(map, "paths") else {
                    return Vec::new();
                };
                let Some(items) = self.sequence(paths, &paths_path, "a list of rules") else {
                    return Vec::new();
                };
                return items
                    .iter()
                    .enumerate()
                    .filter_map(|(index, item)| self.rule(item, &join_index(&paths_path, index)))
                    .collect();
            }
            other => {
                self.report(
                    path,
                    format!(
                        "expected a list of rules (or a mapping with `paths`), found {}",
                        describe(other)
                    ),
                );
                return Vec::new();
            }
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| self.rule(item, &join_index(&items_path, index)))
            .collect()
    }

    fn rule(&mut self, value: &Value, path: &str) -> Option<Rule> {
        let map = self.mapping(value, path, RULE_KEYS)?;
        let pattern_path = join_key(path, "pattern");
        let pattern = self
            .required(map, path, "pattern")
            .and_then(|value| self.string(value, &pattern_path, "a regular expression"))
            .and_then(|pattern| match Regex::new(&pattern) {
                Ok(regex) => Some(regex),
                Err(err) => {
                    self.report(
                        &pattern_path,
                        format!(
                            "invalid regular expression {pattern:?}: {}",
                            one_line_regex_error(&err)
                        ),
                    );
                    None
                }
            });
        let flag = |checker: &mut Checker, name: &str| match optional(map, name) {
            None => Some(false),
            Some(value) => checker.boolean(value, &join_key(path, name)),
        };
        let ignore_authorization_header = flag(self, "ignore-authorization-header");
        let direct_connect = flag(self, "direct-connect");
        let direct_connect_header = flag(self, "direct-connect-header");
        let ignore_parameters = match optional(map, "ignore-parameters") {
            None => Some(Vec::new()),
            Some(value) => self.strings(value, &join_key(path, "ignore-parameters")),
        };
        Some(Rule {
            pattern: pattern?,
            ignore_authorization_header: ignore_authorization_header?,
            ignore_parameters: ignore_parameters?,
            direct_connect: direct_connect?,
            direct_connect_header: direct_connect_header?,
        })
    }

    fn cluster(&mut self, value: &Value, path: &str) -> Option<ClusterConfig> {
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

    // ---- typed accessors ----

    /// `value` as a mapping whose keys are all in `allowed`.
    fn mapping<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Mapping> {
        let Value::Mapping(map) = value else {
            self.report(
                path,
                format!(
                    "expected a mapping with keys {}, found {}",
                    allowed.join(", "),
                    describe(value)
                ),
            );
            return None;
        };
        self.check_keys(map, path, allowed);
        Some(map)
    }

    fn check_keys(&mut self, map: &Mapping, path: &str, allowed: &[&str]) {
        for key in map.keys() {
            match key {
                Value::String(name) if allowed.contains(&name.as_str()) => {}
                Value::String(name) => {
                    let dashed = name.replace('_', "-").to_ascii_lowercase();
                    let hint = if allowed.contains(&dashed.as_str()) {
                        format!("; did you mean {dashed:?}?")
                    } else {
                        String::new()
                    };
                    self.report(
                        &join_key(path, name),
                        format!(
                            "unknown key (expected one of: {}){hint}",
                            allowed.join(", ")
                        ),
                    );
                }
                other => self.report(
                    path,
                    format!("keys must be strings, found {}", describe(other)),
                ),
            }
        }
    }

    /// The value of required key `name` of `map` (at `parent`).
    fn required<'v>(&mut self, map: &'v Mapping, parent: &str, name: &str) -> Option<&'v Value> {
        match map.get(name) {
            None => {
                self.report(&join_key(parent, name), "missing required key");
                None
            }
            Some(Value::Null) => {
                self.report(&join_key(parent, name), "required key has no value");
                None
            }
            Some(value) => Some(value),
        }
    }

    fn string(&mut self, value: &Value, path: &str, what: &str) -> Option<String> {
        match value {
            Value::String(text) => Some(text.clone()),
            other => {
                self.report(path, format!("expected {what}, found {}", describe(other)));
                None
            }
        }
    }

    fn non_empty_string(&mut self, value: &Value, path: &str, what: &str) -> Option<String> {
        let text = self.string(value, path, what)?;
        if text.is_empty() {
            self.report(path, "must not be empty");
            return None;
        }
        Some(text)
    }

    fn strings(&mut self, value: &Value, path: &str) -> Option<Vec<String>> {
        let items = self.sequence(value, path, "a list of strings")?;
        let mut strings = Vec::new();
        for (index, item) in items.iter().enumerate() {
            if let Some(text) = self.string(item, &join_index(path, index), "a string") {
                strings.push(text);
            }
        }
        (strings.len() == items.len()).then_some(strings)
    }

    fn sequence<'v>(&mut self, value: &'v Value, path: &str, what: &str) -> Option<&'v [Value]> {
        match value {
            Value::Sequence(items) => Some(items),
            Value::Null => Some(&[]),
            other => {
                self.report(path, format!("expected {what}, found {}", describe(other)));
                None
            }
        }
    }

    fn boolean(&mut self, value: &Value, path: &str) -> Option<bool> {
        match value {
            Value::Bool(flag) => Some(*flag),
            // yaml.v3 decodes YAML 1.1 booleans into typed bools; keep
            // accepting them so the original's configs run unchanged.
            Value::String(text) => match text.as_str() {
                "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
                "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
                _ => {
                    self.report(
                        path,
                        format!("expected true or false, found {}", describe(value)),
                    );
                    None
                }
            },
            other => {
                self.report(
                    path,
                    format!("expected true or false, found {}", describe(other)),
                );
                None
            }
        }
    }
}

/// The value of optional key `name`; an explicit null counts as absent
/// (yaml.v3 leaves the original's pointer fields nil for it).
fn optional<'v>(map: &'v Mapping, name: &str) -> Option<&'v Value> {
    map.get(name).filter(|value| !value.is_null())
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |count| count.get())
}

/// Parses `:port`, `ip:port`, `[ipv6]:port` or `host:port` (resolved now,
/// preferring IPv4).
fn parse_addr(text: &str, resolve: Resolve) -> Result<ParsedAddr, String> {
    if let Some(port) = text.strip_prefix(':').filter(|port| !port.contains(':')) {
        // Go's `net.Listen(":8080")`: every interface.
        return Ok(ParsedAddr {
            socket: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), parse_port(port)?),
            literal_ip: true,
        });
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Ok(ParsedAddr {
            socket,
            literal_ip: true,
        });
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("expected host:port, e.g. 127.0.0.1:8080 or :8080".to_owned());
    };
    let port = parse_port(port)?;
    if host.contains(':') || host.starts_with('[') {
        return Err("expected an IPv6 address in brackets, e.g. [::1]:8080".to_owned());
    }
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("expected host:port, e.g. 127.0.0.1:8080 or :8080".to_owned());
    }
    let candidates =
        resolve(host, port).map_err(|err| format!("cannot resolve host {host:?}: {err}"))?;
    let socket = candidates
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| candidates.first())
        .copied()
        .ok_or_else(|| format!("host {host:?} has no addresses"))?;
    Ok(ParsedAddr {
        socket,
        literal_ip: false,
    })
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse()
        .map_err(|_| format!("invalid port {text:?} (expected 0-65535)"))
}

/// regex syntax errors span several lines (pattern, caret, message); keep
/// the `error: ...` line so each problem stays on one line.
fn one_line_regex_error(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .find_map(|line| line.strip_prefix("error: "))
        .map_or_else(
            || text.split_whitespace().collect::<Vec<_>>().join(" "),
            str::to_owned,
        )
}

/// A short description of a YAML value for "expected X, found Y" messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(flag) => format!("boolean {flag}"),
        Value::Number(number) => format!("number {number}"),
        Value::String(text) => format!("string {text:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}
