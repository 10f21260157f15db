//! Tests of config parsing and checking, one file per area.

mod access;
mod errors;
mod files;
mod metrics;
mod parse;
mod timeouts;
mod tls;

use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|err| panic!("config should parse:\n{text}\n--- errors:\n{err}"))
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(config) => panic!("config should fail:\n{text}\n--- parsed: {config:?}"),
        Err(err) => err.problems,
    }
}

/// Asserts that parsing `text` reports a problem at exactly `key` and
/// `line` whose message contains `needle`.
fn assert_problem(text: &str, key: &str, line: Option<usize>, needle: &str) {
    let found = problems(text);
    assert!(
        found
            .iter()
            .any(|p| p.key == key && p.line == line && p.message.contains(needle)),
        "want {key} at {line:?} containing {needle:?}; got:\n{}",
        found.iter().map(|p| format!("  {p}\n")).collect::<String>()
    );
}
