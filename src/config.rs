//! The configuration file.
//!
//! Keys are exactly those of the original cirruslabs/chacha
//! (`internal/config/config.go`), so existing configs run unchanged:
//! `addr`, `disk: {dir, limit}`, `tls-interceptor: {cert, key}`,
//! `rules: [{pattern, ignore-authorization-header, ignore-parameters,
//! direct-connect, direct-connect-header}]`, `cluster: {secret, nodes: [{addr}]}`.
//! Additions of ours: `workers`, `run-as-root`, `tls-interceptor.ports`, and the
//! `rules: {paths: [...]}` form that the original's README documents (its code
//! only reads the list form).
//!
//! Unlike the original (yaml.v3 without `KnownFields`), unknown keys are
//! errors: a typo must not silently disable caching. Every problem found is
//! reported, each naming its key path and line, so `chacha check` can list
//! them all at once.

mod lines;
mod size;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde_yaml_ng::{Mapping, Value};

use lines::{join_index, join_key, KeyLines};
pub use size::parse_size;

/// A config that runs as-is without root (`chacha run -f examples/config.yaml`).
pub const EXAMPLE_CONFIG: &str = include_str!("../examples/config.yaml");

/// Ports whose `CONNECT` tunnels are intercepted when `tls-interceptor.ports`
/// is not given.
pub const DEFAULT_TLS_PORTS: &[u16] = &[443];

/// Sanity bound on `workers`: one event loop thread each.
const MAX_WORKERS: usize = 1024;

const TOP_KEYS: &[&str] = &[
    "addr",
    "workers",
    "disk",
    "tls-interceptor",
    "rules",
    "cluster",
    "timeouts",
    "run-as-root",
];
const TIMEOUT_KEYS: &[&str] = &[
    "connect",
    "upstream-head",
    "upstream-body",
    "client-head",
    "client-body",
    "idle",
];
const DISK_KEYS: &[&str] = &["dir", "limit"];
const TLS_KEYS: &[&str] = &["cert", "key", "ports"];
const RULES_MAPPING_KEYS: &[&str] = &["paths"];
const RULE_KEYS: &[&str] = &[
    "pattern",
    "ignore-authorization-header",
    "ignore-parameters",
    "direct-connect",
    "direct-connect-header",
];
const CLUSTER_KEYS: &[&str] = &["secret", "nodes"];
const NODE_KEYS: &[&str] = &["addr"];

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen. `:8080` means all IPv4 interfaces (0.0.0.0:8080);
    /// port 0 means "pick a free port" (not allowed in cluster mode).
    pub addr: SocketAddr,
    /// Number of worker threads (event loops); default: available parallelism.
    pub workers: usize,
    pub disk: Option<DiskConfig>,
    pub tls_interceptor: Option<TlsConfig>,
    /// Only URLs matching a rule are cached; the first matching rule wins.
    pub rules: Vec<Rule>,
    pub cluster: Option<ClusterConfig>,
    /// Network timeouts (chacha's own optional key).
    pub timeouts: Timeouts,
    /// `run-as-root` (ours, default true): false makes `chacha run` refuse to keep
    /// running as root, i.e. demands `--user NAME`.
    pub run_as_root: bool,
}

/// `disk`: where cache entries live and when eviction starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// As written; a relative path is relative to the working directory.
    pub dir: PathBuf,
    /// Bytes (see [`parse_size`]).
    pub limit: u64,
}

/// `tls-interceptor`: the CA used to mint certificates for `CONNECT` targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// CA certificate, PEM.
    pub cert: PathBuf,
    /// CA private key, PEM.
    pub key: PathBuf,
    /// `CONNECT` target ports to intercept (ours; default [`DEFAULT_TLS_PORTS`]).
    pub ports: Vec<u16>,
}

/// One entry of `rules`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Matched anywhere in the absolute URL (unanchored, like Go's
    /// `MatchString`); use `^...$` to anchor.
    pub pattern: Regex,
    /// Cache even when the request carries `Authorization`.
    pub ignore_authorization_header: bool,
    /// Query parameters left out of the cache key.
    pub ignore_parameters: Vec<String>,
    /// Cluster mode: on a fresh hit, answer 307 to the node holding the entry.
    pub direct_connect: bool,
    /// With `direct_connect`: add `X-Chacha-Direct-Connect: 1` to that 307.
    pub direct_connect_header: bool,
}

impl Rule {
    /// A rule with only a pattern and every option off.
    pub fn new(pattern: Regex) -> Rule {
        Rule {
            pattern,
            ignore_authorization_header: false,
            ignore_parameters: Vec::new(),
            direct_connect: false,
            direct_connect_header: false,
        }
    }
}

/// `cluster`: shard the cache over nodes by rendezvous hashing of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Shared secret for the KV protocol (HTTP Basic password) and
    /// direct-connect tokens.
    pub secret: String,
    /// Distinct node addresses, in file order.
    pub nodes: Vec<SocketAddr>,
}

/// Everything wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Sorted by line; problems without a line come first.
    pub problems: Vec<Problem>,
    /// The file name shown before each problem (set by [`load`]).
    pub file: Option<String>,
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `disk.limit` or `rules[1].pattern`; empty for
    /// problems with the file as a whole (unreadable, invalid YAML).
    pub key: String,
    /// 1-based line of the key (or of its nearest enclosing key when the key
    /// itself is missing).
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    fn write(&self, f: &mut fmt::Formatter<'_>, file: Option<&str>) -> fmt::Result {
        match (file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if !self.key.is_empty() {
            // A quoted YAML key may hold a line break: keep each problem on one line.
            for c in self.key.chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, None)
    }
}

impl fmt::Display for ConfigError {
    /// One line per problem, e.g.
    /// `config.yaml:7: disk.limit: cannot parse size "50XB": ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            problem.write(f, self.file.as_deref())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Network timeouts (`timeouts:`); every field optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connect to an origin.
    pub connect: Duration,
    /// From the request sent upstream to a complete response head (→ 504).
    pub upstream_head: Duration,
    /// Longest silence while reading an origin's response body (then the fill resumes
    /// with Range or fails, a relay is cut), like nginx's `proxy_read_timeout` of 60 s.
    pub upstream_body: Duration,
    /// From a request's first byte to its complete head (→ 408), like the original's
    /// ReadHeaderTimeout of 30 s.
    pub client_head: Duration,
    /// Longest silence while reading a client's request body (→ 408, both connections
    /// closed), like nginx's `client_body_timeout` of 60 s.
    pub client_body: Duration,
    /// How long an idle keep-alive client connection is kept.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            upstream_head: Duration::from_secs(60),
            upstream_body: Duration::from_secs(60),
            client_head: Duration::from_secs(30),
            client_body: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h` (a bare number means seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("cannot parse duration {text:?} (e.g. 500ms, 30s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (ms, s, m, h)"
            ))
        }
    };
    if !(secs > 0.0 && secs < 1e9) {
        return Err(format!("duration {text:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Reads and parses the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = Some(path.display().to_string());
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        problems: vec![Problem {
            key: String::new(),
            line: None,
            message: format!("cannot read config file: {err}"),
        }],
        file: file.clone(),
    })?;
    parse(&text).map_err(|err| ConfigError { file, ..err })
}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, system_resolve)
}

/// Resolves `host` (not an IP literal) and `port` to socket addresses.
type Resolve = fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

fn system_resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// [`parse`] without DNS: `localhost` is 127.0.0.1 and any other hostname fails to
/// resolve, so the result depends on the text alone (for the fuzz targets, `fuzzing`).
#[doc(hidden)]
pub fn parse_offline(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, |host, port| {
        if host.eq_ignore_ascii_case("localhost") {
            Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)])
        } else {
            Err(std::io::Error::other("no DNS in offline parsing"))
        }
    })
}

fn parse_with(text: &str, resolve: Resolve) -> Result<Config, ConfigError> {
    let lines = KeyLines::scan(text);
    let mut root: Value = serde_yaml_ng::from_str(text).map_err(|err| {
        // libyaml places errors at the end of the input on the line after the last one
        // (as if the text ended with a line break): name the last line instead. Errors
        // without a position (a second document, too many alias repetitions) name where
        // the second document or else the first starts.
        let line = err
            .location()
            .map(|location| location.line().min(lines::yaml_lines(text).count()))
            .or_else(|| lines.second_document())
            .or_else(|| lines.line_of(""));
        ConfigError::single(Problem {
            key: String::new(),
            line,
            message: format!("invalid YAML: {err}"),
        })
    })?;
    // yaml.v3 (the original's parser) honours `<<` merge keys.
    root.apply_merge().map_err(|err| {
        // The error does not say which `<<`: name the first one found.
        let (key, line) = lines
            .first_key_named("<<")
            .map_or(("<<".to_owned(), None), |(key, line)| {
                (key.to_owned(), Some(line))
            });
        ConfigError::single(Problem {
            key,
            line,
            message: format!("invalid YAML merge key: {err}"),
        })
    })?;

    let mut checker = Checker {
        lines,
        problems: Vec::new(),
        resolve,
    };
    match checker.config(&root) {
        Some(config) if checker.problems.is_empty() => Ok(config),
        _ => {
            let mut problems = checker.problems;
            problems.sort_by_key(|problem| problem.line);
            Err(ConfigError {
                problems,
                file: None,
            })
        }
    }
}

impl ConfigError {
    fn single(problem: Problem) -> ConfigError {
        ConfigError {
            problems: vec![problem],
            file: None,
        }
    }
}

/// An `addr` as written: a resolved socket address, and whether the host was
/// an IP literal (or implicit) rather than a hostname.
struct ParsedAddr {
    socket: SocketAddr,
    literal_ip: bool,
}

/// Walks the YAML value, collecting every problem.
struct Checker {
    lines: KeyLines,
    problems: Vec<Problem>,
    resolve: Resolve,
}

impl Checker {
    fn report(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_owned(),
            line: self.lines.line_of(key),
            message: message.into(),
        });
    }

    fn config(&mut self, root: &Value) -> Option<Config> {
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
        })
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
        Some(TlsConfig {
            cert: PathBuf::from(cert?),
            key: PathBuf::from(key?),
            ports: ports?,
        })
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

#[cfg(test)]
mod tests;
