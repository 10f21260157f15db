//! What the network-namespace tests (tests/fleet.rs, tests/tunnel_bench.rs) share: running
//! a tool, the namespaces and links they leave (or must not leave) behind, and their
//! preconditions, checked loudly (CI runs as root with iproute2; a test never passes
//! silently without them).

use std::collections::BTreeSet;
use std::process::Command;

/// `cmd args`' standard output when it ran and succeeded.
pub fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of the network namespaces that start with `prefix`.
pub fn namespaces(prefix: &str) -> Vec<String> {
    output("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Names of the links in this (the default) namespace.
pub fn links() -> BTreeSet<String> {
    output("ip", &["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        // "3: name@peer: <...>"
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect()
}

/// Fails `test` (its file name) unless it runs as root with iproute2 (`ip netns`, `tc`)
/// and each of `tools` (name, what the test uses it for) answers `--version`.
pub fn require(test: &str, tools: &[(&str, &str)]) {
    let uid = output("id", &["-u"]).unwrap_or_default();
    assert_eq!(
        uid.trim(),
        "0",
        "{test} needs root (network namespaces); CI runs as root"
    );
    assert!(
        output("ip", &["netns", "list"]).is_some() && output("tc", &["-V"]).is_some(),
        "{test} needs iproute2 (`ip netns`, `tc`): apt-get install iproute2"
    );
    for (tool, why) in tools {
        assert!(
            output(tool, &["--version"]).is_some(),
            "{test} needs {tool} ({why})"
        );
    }
}
