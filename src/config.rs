//! The configuration file.
//!
//! Keys are exactly those of the original cirruslabs/chacha
//! (`internal/config/config.go`), so existing configs run unchanged:
//! `addr`, `disk: {dir, limit}`, `tls-interceptor: {cert, key}`,
//! `rules: [{pattern, ignore-authorization-header, ignore-parameters,
//! direct-connect, direct-connect-header}]`, `cluster: {secret, nodes: [{addr}]}`.
//! Additions of ours: `workers`, `run-as-root`, `metrics: {addr}`, `log-format`,
//! `tls-interceptor.ports` (and `intercept`, `passthrough-ports`, `allow-sni-mismatch`),
//! `access`, and the
//! `rules: {paths: [...]}` form that the original's README documents (its code
//! only reads the list form).
//!
//! Unlike the original (yaml.v3 without `KnownFields`), unknown keys are
//! errors: a typo must not silently disable caching. Every problem found is
//! reported, each naming its key path and line, so `chacha check` can list
//! them all at once.

mod check;
mod lines;
mod size;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde_yaml_ng::Value;

use crate::access::cidr::CidrList;
use check::Checker;
use lines::KeyLines;
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
    "metrics",
    "log-format",
    "access",
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
const TLS_KEYS: &[&str] = &[
    "cert",
    "key",
    "ports",
    "intercept",
    "passthrough-ports",
    "allow-sni-mismatch",
];
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
const ACCESS_KEYS: &[&str] = &["clients", "proxy-auth", "destinations", "limits"];
const PROXY_AUTH_KEYS: &[&str] = &["htpasswd"];
const DESTINATION_KEYS: &[&str] = &["allow", "deny"];
const LIMIT_KEYS: &[&str] = &["connections", "connections-per-client"];
const METRICS_KEYS: &[&str] = &["addr"];

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
    /// `metrics` (ours): serve `GET /metrics` on this admin address instead of `addr`.
    pub metrics: Option<MetricsConfig>,
    /// `log-format` (ours): `text` (default) or `json`, one JSON object per line.
    pub log_format: LogFormat,
    /// `access` (ours): who may use the proxy and where it may go.
    pub access: AccessConfig,
}

/// `access`: client list, proxy authentication, destination policy, connection limits.
/// Every part is optional; an absent `access` key means all defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    /// `access.clients`: peers allowed to connect; default
    /// [`crate::access::defaults::DEFAULT_CLIENTS`].
    pub clients: CidrList,
    /// `access.proxy-auth`: when set, every proxied request and CONNECT needs
    /// `Proxy-Authorization: Basic` of a user in the htpasswd file.
    pub proxy_auth: Option<ProxyAuthConfig>,
    /// `access.destinations`.
    pub destinations: DestinationsConfig,
    /// `access.limits`.
    pub limits: LimitsConfig,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            clients: CidrList::of(crate::access::defaults::DEFAULT_CLIENTS),
            proxy_auth: None,
            destinations: DestinationsConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// `log-format`: how log lines are written (`server::accesslog`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// env_logger's line, the request line as `CLIENT "REQUEST" STATUS BYTES MSms OP`.
    #[default]
    Text = 0,
    /// One JSON object per line.
    Json = 1,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `access.proxy-auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAuthConfig {
    /// `htpasswd`: `user:bcrypt-hash` lines, as `htpasswd -B` writes them (read at
    /// startup).
    pub htpasswd: PathBuf,
}

/// `access.destinations`: ranges added to (`deny`) or taken out of (`allow`) the
/// default destination deny list. Both empty when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationsConfig {
    pub allow: CidrList,
    pub deny: CidrList,
}

/// `access.limits`: open client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// `connections`: all clients together. `None` (absent): the default
    /// [`crate::access::defaults::DEFAULT_CONNECTIONS`], capped at startup by what the file
    /// descriptor limit leaves room for.
    pub connections: Option<usize>,
    /// `connections-per-client`: per client IP address.
    pub connections_per_client: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            connections: None,
            connections_per_client: crate::access::defaults::DEFAULT_CONNECTIONS_PER_CLIENT,
        }
    }
}

/// `metrics: {addr}` (ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served (then not on `addr`); port 0 picks one.
    pub addr: SocketAddr,
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
    /// `intercept` (ours): host regexes (unanchored, like `rules`); a CONNECT whose
    /// host matches none is tunnelled blind. `None` (absent): intercept every host.
    pub intercept: Option<Vec<String>>,
    /// `passthrough-ports` (ours): CONNECT to these ports is tunnelled blind, whatever
    /// the host (allowed even when not in `ports`).
    pub passthrough_ports: Vec<u16>,
    /// `allow-sni-mismatch` (ours, default false): accept a ClientHello whose SNI names
    /// another host than the CONNECT target (the leaf is then minted for the SNI).
    pub allow_sni_mismatch: bool,
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

#[cfg(test)]
mod tests;
