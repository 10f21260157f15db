//! `tls-interceptor:`: certificate, intercepted ports and host patterns.

use super::*;

impl Checker {
    pub(super) fn tls_interceptor(&mut self, value: &Value, path: &str) -> Option<TlsConfig> {
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
}
