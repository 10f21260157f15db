//! Problems: each names its key and line, all are reported, in order, one line each.

use super::*;

#[test]
fn bad_configs_name_key_and_line() {
    // (text, key, line, message fragment)
    let cases: &[(&str, &str, Option<usize>, &str)] = &[
        (
            "addr: :8080\nlisten: :80\n",
            "listen",
            Some(2),
            "unknown key",
        ),
        (
            "addr: :8080\ndisk:\n  dir: d\n  limit: 1GB\n  max: 3\n",
            "disk.max",
            Some(5),
            "unknown key (expected one of: dir, limit)",
        ),
        (
            "addr: :8080\ndisk:\n  dir: d\n  limit: 50XB\n",
            "disk.limit",
            Some(4),
            "cannot parse size \"50XB\"",
        ),
        (
            "addr: :8080\nrules:\n  - pattern: ok\n  - pattern: '(unclosed'\n",
            "rules[1].pattern",
            Some(4),
            "invalid regular expression \"(unclosed\"",
        ),
        (
            "addr: :8080\nrules:\n  paths:\n    - pattern: a\n    - pattern: '['\n",
            "rules.paths[1].pattern",
            Some(5),
            "invalid regular expression",
        ),
        ("workers: 2\n", "addr", None, "missing required key"),
        ("", "addr", None, "missing required key"),
        (
            "addr: :8080\nworkers: many\n",
            "workers",
            Some(2),
            "expected a positive integer",
        ),
        ("addr: :8080\nworkers: 0\n", "workers", Some(2), "positive"),
        (
            "addr: 0.0.0.0:8080\ncluster:\n  secret: s\n  nodes:\n    - addr: 10.0.0.1:8080\n",
            "addr",
            Some(1),
            "explicit IP address in cluster mode",
        ),
        (
            "addr: :8080\ncluster:\n  secret: s\n  nodes:\n    - addr: 10.0.0.1:8080\n",
            "addr",
            Some(1),
            "explicit IP address in cluster mode",
        ),
        (
            "addr: 10.0.0.1:0\ncluster:\n  secret: s\n  nodes:\n    - addr: 10.0.0.1:8080\n",
            "addr",
            Some(1),
            "port must not be 0",
        ),
        (
            "addr: 10.0.0.1:1\ncluster:\n  secret: ''\n  nodes:\n    - addr: 10.0.0.1:1\n",
            "cluster.secret",
            Some(3),
            "must not be empty",
        ),
        (
            "addr: 10.0.0.1:1\ncluster:\n  secret: s\n  nodes:\n    - addr: 10.0.0.1:1\n    - adr: 10.0.0.2:1\n",
            "cluster.nodes[1].adr",
            Some(6),
            "unknown key",
        ),
        (
            "addr: 10.0.0.1:1\ncluster:\n  secret: s\n  nodes:\n    - addr: 10.0.0.1:1\n    - adr: 10.0.0.2:1\n",
            "cluster.nodes[1].addr",
            Some(6),
            "missing required key",
        ),
        (
            "addr: 10.0.0.1:1\ncluster:\n  secret: s\n  nodes: []\n",
            "cluster.nodes",
            Some(4),
            "at least one node",
        ),
        (
            "addr: 10.0.0.1:1\ncluster:\n  secret: s\n",
            "cluster.nodes",
            Some(2),
            "missing required key",
        ),
        ("addr: 8080\n", "addr", Some(1), "found number 8080"),
        ("addr: 127.0.0.1\n", "addr", Some(1), "expected host:port"),
        ("addr: 127.0.0.1:70000\n", "addr", Some(1), "invalid port"),
        ("addr: '::1:80'\n", "addr", Some(1), "brackets"),
        (
            "addr: :1\ndisk:\n  dir: d\n",
            "disk.limit",
            Some(2),
            "missing required key",
        ),
        (
            "addr: :1\ndisk: {dir: d, limit: 1GB, size: 2}\n",
            "disk.size",
            Some(2),
            "unknown key",
        ),
        (
            "addr: :1\nrules:\n  - pattern: a\n    ignore_parameters: [x]\n",
            "rules[0].ignore_parameters",
            Some(4),
            "did you mean \"ignore-parameters\"",
        ),
        (
            "addr: :1\nrules:\n  - pattern: a\n    ignore-authorization-header: maybe\n",
            "rules[0].ignore-authorization-header",
            Some(4),
            "expected true or false",
        ),
        (
            "addr: :1\nrules:\n  - pattern: a\n    ignore-parameters: X-Amz-Date\n",
            "rules[0].ignore-parameters",
            Some(4),
            "expected a list of strings",
        ),
        (
            "addr: :1\nrules:\n  - ignore-authorization-header: true\n",
            "rules[0].pattern",
            Some(3),
            "missing required key",
        ),
        (
            "addr: :1\nrules:\n  path: []\n",
            "rules.path",
            Some(3),
            "unknown key",
        ),
        ("addr: :1\nrules: yes\n", "rules", Some(2), "expected a list of rules"),
        (
            "addr: :1\ntls-interceptor:\n  cert: c\n  key: k\n  ports: [443, 0]\n",
            "tls-interceptor.ports[1]",
            Some(5),
            "expected a port 1-65535",
        ),
        (
            "addr: :1\ntls-interceptor:\n  cert: c\n",
            "tls-interceptor.key",
            Some(2),
            "missing required key",
        ),
        ("addr: :1\ndisk: /tmp\n", "disk", Some(2), "expected a mapping"),
        ("- addr: :1\n", "", Some(1), "expected a mapping of settings"),
    ];
    for &(text, key, line, needle) in cases {
        assert_problem(text, key, line, needle);
    }
}

#[test]
fn every_problem_is_reported_in_line_order() {
    let text = "\
addr: 127.0.0.1:99999
workers: -1
disk:
  dir: d
  limit: 50XB
bogus: 1
rules:
  - pattern: '('
";
    let found = problems(text);
    let keys: Vec<(&str, Option<usize>)> = found.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert_eq!(
        keys,
        [
            ("addr", Some(1)),
            ("workers", Some(2)),
            ("disk.limit", Some(5)),
            ("bogus", Some(6)),
            ("rules[0].pattern", Some(8)),
        ]
    );
}

#[test]
fn yaml_syntax_errors_carry_a_line() {
    let found = problems("addr: :1\ndisk:\n  dir: [unclosed\nrules: []\n");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].key, "");
    assert!(found[0].line.is_some());
    assert!(found[0].message.starts_with("invalid YAML"), "{}", found[0]);

    let found = problems("addr: :1\naddr: :2\n");
    assert!(found[0].message.contains("duplicate"), "{}", found[0]);
}

#[test]
fn display_is_one_line_per_problem_with_file_and_line() {
    let err = ConfigError {
        problems: problems("addr: :1\ndisk:\n  dir: d\n  limit: 50XB\nrules:\n  - pattern: '('\n"),
        file: Some("config.yaml".to_owned()),
    };
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("config.yaml:4: disk.limit: cannot parse size \"50XB\""),
        "{text}"
    );
    assert!(
        lines[1].starts_with("config.yaml:6: rules[0].pattern: invalid regular expression"),
        "{text}"
    );

    let bare = Problem {
        key: "addr".to_owned(),
        line: None,
        message: "missing required key".to_owned(),
    };
    assert_eq!(bare.to_string(), "addr: missing required key");
}
