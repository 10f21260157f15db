//! `rules:`: URL patterns and what to cache for them.

use super::*;

impl Checker {
    pub(super) fn rules(&mut self, value: &Value, path: &str) -> Vec<Rule> {
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
}
