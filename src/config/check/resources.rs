//! `workers`, `disk` and `timeouts`: what the proxy itself may use.

use super::*;

impl Checker {
    /// `timeouts:` (chacha's own key; the original hard-codes its timeouts).
    pub(super) fn timeouts(&mut self, value: &Value, path: &str) -> Option<Timeouts> {
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

    pub(super) fn workers(&mut self, value: &Value, path: &str) -> Option<usize> {
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

    pub(super) fn disk(&mut self, value: &Value, path: &str) -> Option<DiskConfig> {
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
}
