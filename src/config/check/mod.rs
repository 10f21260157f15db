//! Checking a parsed YAML value against the config's schema: every problem found is
//! collected with its key path and line, so `chacha check` lists them all at once.

mod access;
mod addr;
mod cluster;
mod resources;
mod rules;
mod tls;

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
