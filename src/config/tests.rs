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

#[test]
fn minimal_config_gets_defaults() {
    let config = ok("addr: 127.0.0.1:8080\n");
    assert_eq!(config.addr, "127.0.0.1:8080".parse().unwrap());
    assert!(config.workers >= 1);
    assert!(config.disk.is_none());
    assert!(config.tls_interceptor.is_none());
    assert!(config.rules.is_empty());
    assert!(config.cluster.is_none());
}

#[test]
fn addr_forms() {
    let cases: &[(&str, SocketAddr)] = &[
        (":8080", SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080))),
        (
            "127.0.0.1:8080",
            SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        ),
        ("0.0.0.0:0", SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
        (
            "'[::1]:8080'",
            SocketAddr::from((Ipv6Addr::LOCALHOST, 8080)),
        ),
        ("\"[::1]:0\"", SocketAddr::from((Ipv6Addr::LOCALHOST, 0))),
        (
            "localhost:8080",
            SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        ),
    ];
    for (addr, want) in cases {
        let config = ok(&format!("addr: {addr}\n"));
        assert_eq!(config.addr, *want, "addr: {addr}");
    }
}

#[test]
fn good_configs() {
    // (config, check)
    let full_list_form = "\
addr: 127.0.0.1:8081
workers: 3
disk:
  dir: ./cache
  limit: 512MB
tls-interceptor:
  cert: ca.pem
  key: ca-key.pem
  ports: [443, 8443]
rules:
  - pattern: '^https://ghcr\\.io/v2/.*/blobs/'
    ignore-authorization-header: true
  - pattern: \"https:\\/\\/[^\\/]+.r2.cloudflarestorage.com\\/.*\"
    ignore-parameters:
      - X-Amz-Date
      - X-Amz-Signature
    direct-connect: yes
    direct-connect-header: true
cluster:
  secret: \"AV8B._W.@cr7-n3ZcnBkUtXy7natj.KN\"
  nodes:
    - addr: 127.0.0.1:8081
    - addr: 127.0.0.1:8082
    - addr: 127.0.0.1:8081
";
    let config = ok(full_list_form);
    assert_eq!(config.workers, 3);
    assert_eq!(
        config.disk,
        Some(DiskConfig {
            dir: PathBuf::from("./cache"),
            limit: 512_000_000
        })
    );
    assert_eq!(
        config.tls_interceptor,
        Some(TlsConfig {
            cert: PathBuf::from("ca.pem"),
            key: PathBuf::from("ca-key.pem"),
            ports: vec![443, 8443],
            intercept: None,
            passthrough_ports: vec![],
            allow_sni_mismatch: false,
        })
    );
    assert_eq!(config.rules.len(), 2);
    let ghcr = &config.rules[0];
    assert!(ghcr.ignore_authorization_header);
    assert!(ghcr
        .pattern
        .is_match("https://ghcr.io/v2/org/img/blobs/sha256:ab"));
    assert!(!ghcr
        .pattern
        .is_match("https://ghcr.io/v2/org/img/manifests/1"));
    let r2 = &config.rules[1];
    assert!(!r2.ignore_authorization_header);
    assert_eq!(r2.ignore_parameters, ["X-Amz-Date", "X-Amz-Signature"]);
    assert!(r2.direct_connect && r2.direct_connect_header);
    assert!(r2
        .pattern
        .is_match("https://acct.r2.cloudflarestorage.com/bucket/key"));
    let cluster = config.cluster.unwrap();
    assert_eq!(cluster.secret, "AV8B._W.@cr7-n3ZcnBkUtXy7natj.KN");
    // Duplicates collapse, like the original's node set.
    assert_eq!(
        cluster.nodes,
        [
            "127.0.0.1:8081".parse::<SocketAddr>().unwrap(),
            "127.0.0.1:8082".parse().unwrap()
        ]
    );
}

#[test]
fn cluster_addr_needs_explicit_ip_and_port() {
    let config =
        ok("addr: 127.0.0.1:8081\ncluster:\n  secret: s\n  nodes:\n    - addr: 127.0.0.1:8081\n");
    assert!(config.cluster.is_some());
}

#[test]
fn readme_paths_form_of_rules() {
    // The original README's example, verbatim under `rules:`.
    let config = ok("\
addr: :8080
rules:
  paths:
    - pattern: \"https:\\/\\/ghcr.io\\/v2\\/.*\\/blobs\\/sha256:[^\\/]+\"
      ignore-authorization-header: true

    - pattern: \"https:\\/\\/[^\\/]+.r2.cloudflarestorage.com\\/.*\"
      ignore-parameters:
        - \"X-Amz-Date\"
        - \"X-Amz-Signature\"
");
    assert_eq!(config.rules.len(), 2);
    assert!(config.rules[0].ignore_authorization_header);
    assert_eq!(
        config.rules[1].ignore_parameters,
        ["X-Amz-Date", "X-Amz-Signature"]
    );
}

#[test]
fn flow_style_and_empty_sections() {
    let config = ok("\
addr: '127.0.0.1:8080'
disk: {dir: /var/cache/chacha, limit: 10GiB}
rules: {paths: [{pattern: a}, {pattern: b, ignore-parameters: [x]}]}
tls-interceptor:
cluster: ~
");
    assert_eq!(config.disk.unwrap().limit, 10 << 30);
    assert_eq!(config.rules.len(), 2);
    assert!(config.tls_interceptor.is_none());
    assert!(config.cluster.is_none());

    let config = ok("addr: :1\nrules: []\n");
    assert!(config.rules.is_empty());
    let config = ok("addr: :1\nrules:\n");
    assert!(config.rules.is_empty());
}

#[test]
fn sizes_in_config() {
    for (limit, want) in [
        ("50GB", 50_000_000_000u64),
        ("1.5TB", 1_500_000_000_000),
        ("10GiB", 10 << 30),
        ("'100'", 100),
        ("100", 100),
        ("1KiB", 1024),
        ("50gb", 50_000_000_000),
    ] {
        let config = ok(&format!("addr: :1\ndisk:\n  dir: d\n  limit: {limit}\n"));
        assert_eq!(config.disk.unwrap().limit, want, "limit: {limit}");
    }
}

#[test]
fn tls_ports_default_to_443() {
    let config = ok("addr: :1\ntls-interceptor:\n  cert: c.pem\n  key: k.pem\n");
    assert_eq!(config.tls_interceptor.unwrap().ports, DEFAULT_TLS_PORTS);
}

#[test]
fn tls_interception_choices() {
    let tls = ok("addr: :1\ntls-interceptor:\n  cert: c.pem\n  key: k.pem\n")
        .tls_interceptor
        .unwrap();
    assert_eq!(tls.intercept, None, "absent: intercept every host");
    assert!(tls.passthrough_ports.is_empty());
    assert!(!tls.allow_sni_mismatch);
    let tls = ok("addr: :1\ntls-interceptor:\n  cert: c.pem\n  key: k.pem\n  intercept: ['(^|\\.)ghcr\\.io$']\n  passthrough-ports: [8443, 22]\n  allow-sni-mismatch: true\n")
        .tls_interceptor
        .unwrap();
    assert_eq!(tls.intercept, Some(vec![r"(^|\.)ghcr\.io$".to_string()]));
    assert_eq!(tls.passthrough_ports, [8443, 22]);
    assert!(tls.allow_sni_mismatch);
    let tls = ok("addr: :1\ntls-interceptor:\n  cert: c\n  key: k\n  intercept: []\n  passthrough-ports: []\n")
        .tls_interceptor
        .unwrap();
    assert_eq!(
        tls.intercept,
        Some(vec![]),
        "an empty list intercepts nothing"
    );
    assert!(tls.passthrough_ports.is_empty());
    for (text, key, line, needle) in [
        (
            "addr: :1\ntls-interceptor:\n  cert: c\n  key: k\n  intercept: ['ok', '(']\n",
            "tls-interceptor.intercept[1]",
            Some(5),
            "invalid regular expression",
        ),
        (
            "addr: :1\ntls-interceptor:\n  cert: c\n  key: k\n  passthrough-ports: [0]\n",
            "tls-interceptor.passthrough-ports[0]",
            Some(5),
            "expected a port 1-65535",
        ),
        (
            "addr: :1\ntls-interceptor:\n  cert: c\n  key: k\n  allow-sni-mismatch: maybe\n",
            "tls-interceptor.allow-sni-mismatch",
            Some(5),
            "",
        ),
    ] {
        assert_problem(text, key, line, needle);
    }
}

#[test]
fn yaml_merge_keys_work() {
    let config = ok("\
addr: :1
rules:
  - &base
    pattern: a
    ignore-authorization-header: true
  - <<: *base
    pattern: b
");
    assert_eq!(config.rules.len(), 2);
    assert!(config.rules[1].ignore_authorization_header);
    assert_eq!(config.rules[1].pattern.as_str(), "b");
}

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

#[test]
fn load_reads_files_and_names_them() {
    let dir = std::env::temp_dir().join(format!("chacha-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(&good, "addr: 127.0.0.1:8080\n").unwrap();
    assert_eq!(load(&good).unwrap().addr.port(), 8080);

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "addr: 127.0.0.1:8080\nworkers: x\n").unwrap();
    let message = load(&bad).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "{}:2: workers: expected a positive integer up to {MAX_WORKERS}, found string \"x\"",
            bad.display()
        )
    );

    let missing = dir.join("missing.yaml");
    let message = load(&missing).unwrap_err().to_string();
    assert!(message.starts_with(&format!("{}: cannot read config file", missing.display())));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn example_config_parses_and_runs_without_root() {
    let config = parse(EXAMPLE_CONFIG).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(config.addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(
        config.disk,
        Some(DiskConfig {
            dir: PathBuf::from("./chacha-cache"),
            limit: 1_000_000_000
        })
    );
    assert!(config.cluster.is_none() && config.tls_interceptor.is_none());
}

#[test]
fn example_config_commented_settings_parse_when_enabled() {
    // Lines starting with "# " are optional settings; "##" lines are prose.
    let enabled: String = EXAMPLE_CONFIG
        .lines()
        .map(|line| line.strip_prefix("# ").unwrap_or(line))
        .map(|line| format!("{line}\n"))
        .collect();
    let config = parse(&enabled).unwrap_or_else(|err| panic!("{err}\n{enabled}"));
    assert_eq!(config.workers, 2);
    assert_eq!(config.rules.len(), 3);
    assert!(config.rules[0]
        .pattern
        .is_match("https://ghcr.io/v2/a/b/blobs/sha256:0"));
    assert!(config.rules[2].direct_connect && config.rules[2].direct_connect_header);
    assert_eq!(config.tls_interceptor.unwrap().ports, [443]);
    assert_eq!(config.cluster.unwrap().nodes.len(), 2);
}

#[test]
fn ghcr_example_parses() {
    let config =
        parse(include_str!("../../examples/ghcr.yaml")).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(config.rules.len(), 2);
    assert!(config.rules[0].ignore_authorization_header);
    assert!(config.rules[0]
        .pattern
        .is_match("https://ghcr.io/v2/homebrew/core/sccache/blobs/sha256:4a1c"));
    let storage = &config.rules[1];
    assert!(storage.pattern.is_match(
        "https://pkg-containers.githubusercontent.com/ghcr1/blobs/sha256:4a1c?se=1&sig=2"
    ));
    for param in ["X-Amz-Signature", "X-Amz-Date", "sig", "se"] {
        assert!(
            storage.ignore_parameters.iter().any(|p| p == param),
            "{param}"
        );
    }
    assert!(config.tls_interceptor.is_some());
}

#[test]
fn timeouts_default_and_parse() {
    let t = ok("addr: 127.0.0.1:8080\n").timeouts;
    assert_eq!(t, Timeouts::default());
    assert_eq!(t.upstream_body, Duration::from_secs(60));
    assert_eq!(t.client_body, Duration::from_secs(60));
    let t = ok(
        "addr: 127.0.0.1:8080\ntimeouts:\n  connect: 2s\n  upstream-head: 500ms\n  \
         upstream-body: 1m\n  client-head: 3\n  client-body: 1500ms\n  idle: 1h\n",
    )
    .timeouts;
    assert_eq!(
        t,
        Timeouts {
            connect: Duration::from_secs(2),
            upstream_head: Duration::from_millis(500),
            upstream_body: Duration::from_secs(60),
            client_head: Duration::from_secs(3),
            client_body: Duration::from_millis(1500),
            idle: Duration::from_secs(3600),
        }
    );
    // Only the keys given change.
    let t = ok("addr: 127.0.0.1:8080\ntimeouts:\n  upstream-body: 5s\n").timeouts;
    assert_eq!(
        t,
        Timeouts {
            upstream_body: Duration::from_secs(5),
            ..Timeouts::default()
        }
    );
}

#[test]
fn bad_timeouts_name_key_and_line() {
    assert_problem(
        "addr: 127.0.0.1:8080\ntimeouts:\n  upstream-body: soon\n",
        "timeouts.upstream-body",
        Some(3),
        "cannot parse duration",
    );
    assert_problem(
        "addr: 127.0.0.1:8080\ntimeouts:\n  idle: 1s\n  client-body: 0s\n",
        "timeouts.client-body",
        Some(4),
        "must be positive",
    );
    assert_problem(
        "addr: 127.0.0.1:8080\ntimeouts:\n  client-body: [1]\n",
        "timeouts.client-body",
        Some(3),
        "expected a duration",
    );
    assert_problem(
        "addr: 127.0.0.1:8080\ntimeouts:\n  body: 1s\n",
        "timeouts.body",
        Some(3),
        "",
    );
}

#[test]
fn access_defaults_when_absent() {
    let config = ok("addr: 127.0.0.1:8080\n");
    let access = &config.access;
    assert_eq!(
        access.clients,
        crate::access::CidrList::of(crate::access::DEFAULT_CLIENTS)
    );
    for (addr, allowed) in [
        ("127.0.0.1", true),
        ("::1", true),
        ("::ffff:10.1.2.3", true),
        ("172.20.0.5", true),
        ("192.168.1.1", true),
        ("100.100.0.1", true),
        ("fd00::1", true),
        ("169.254.1.1", true),
        ("fe80::1", true),
        ("203.0.113.9", false),
        ("8.8.8.8", false),
        ("2001:db8::1", false),
        ("172.32.0.1", false),
    ] {
        assert_eq!(
            access.clients.contains(addr.parse().unwrap()),
            allowed,
            "{addr}"
        );
    }
    assert!(access.proxy_auth.is_none());
    assert!(access.destinations.allow.is_empty() && access.destinations.deny.is_empty());
    assert_eq!(access.limits.connections, None);
    assert_eq!(
        access.limits.connections_per_client,
        crate::access::DEFAULT_CONNECTIONS_PER_CLIENT
    );
    // An empty `access:` is all defaults too.
    assert_eq!(ok("addr: :8080\naccess:\n").access, *access);
}

#[test]
fn access_block_of_the_issue_parses() {
    let config = ok("addr: :8080
access:
  clients: [127.0.0.0/8, 10.0.0.0/8]
  proxy-auth:
    htpasswd: /etc/chacha/htpasswd
  destinations:
    allow: [127.0.0.0/8]
    deny: [192.168.7.0/24, '::ffff:192.168.8.0/120']
  limits:
    connections: 20000
    connections-per-client: 1000
");
    let a = &config.access;
    assert_eq!(a.clients.to_string(), "[127.0.0.0/8, 10.0.0.0/8]");
    assert_eq!(
        a.proxy_auth.as_ref().unwrap().htpasswd,
        PathBuf::from("/etc/chacha/htpasswd")
    );
    assert_eq!(a.destinations.allow.to_string(), "[127.0.0.0/8]");
    assert_eq!(
        a.destinations.deny.to_string(),
        "[192.168.7.0/24, 192.168.8.0/24]"
    );
    assert_eq!(a.limits.connections, Some(20000));
    assert_eq!(a.limits.connections_per_client, 1000);
    // Only some keys: the others keep their defaults.
    let config = ok("addr: :8080\naccess:\n  clients: ['0.0.0.0/0', '::/0']\n");
    assert!(config
        .access
        .clients
        .contains("203.0.113.9".parse().unwrap()));
    assert_eq!(
        config.access.limits,
        LimitsConfig::default(),
        "limits default"
    );
}

#[test]
fn access_problems_name_key_and_line() {
    let text = "addr: :8080
access:
  clients:
    - 10.0.0.0/8
    - 10.1.0.0/8
    - 300.0.0.0/8
    - 42
  destinations:
    allow: [fe80::/129]
    deny: nope
    block: []
  proxy-auth: {}
  limits:
    connections: 0
    connections-per-client: -3
  client: []
";
    assert_problem(text, "access.clients[1]", Some(5), "write 10.0.0.0/8");
    assert_problem(text, "access.clients[2]", Some(6), "invalid address range");
    assert_problem(
        text,
        "access.clients[3]",
        Some(7),
        "expected an address range",
    );
    assert_problem(
        text,
        "access.destinations.allow[0]",
        Some(9),
        "expected 0-128",
    );
    assert_problem(
        text,
        "access.destinations.deny",
        Some(10),
        "expected a list",
    );
    assert_problem(text, "access.destinations.block", Some(11), "unknown key");
    assert_problem(
        text,
        "access.proxy-auth.htpasswd",
        Some(12),
        "missing required key",
    );
    assert_problem(
        text,
        "access.limits.connections",
        Some(14),
        "positive integer",
    );
    assert_problem(
        text,
        "access.limits.connections-per-client",
        Some(15),
        "positive integer",
    );
    assert_problem(text, "access.client", Some(16), "unknown key");
    assert_problem(
        "addr: :8080\naccess:\n  clients: []\n",
        "access.clients",
        Some(3),
        "at least one range",
    );
    assert_problem(
        "addr: :8080\naccess: [1]\n",
        "access",
        Some(2),
        "expected a mapping",
    );
}

#[test]
fn metrics_admin_address() {
    assert!(ok("addr: 127.0.0.1:8080\n").metrics.is_none());
    let config = ok("addr: 127.0.0.1:8080\nmetrics:\n  addr: 127.0.0.1:9090\n");
    assert_eq!(
        config.metrics,
        Some(MetricsConfig {
            addr: "127.0.0.1:9090".parse().unwrap()
        })
    );
    let config = ok("addr: 127.0.0.1:8080\nmetrics: {addr: \":0\"}\n");
    assert_eq!(config.metrics.unwrap().addr.port(), 0);
}

#[test]
fn metrics_errors_name_key_and_line() {
    assert_problem(
        "addr: 127.0.0.1:8080\nmetrics:\n  addr: nope:x\n",
        "metrics.addr",
        Some(3),
        "invalid address",
    );
    assert_problem(
        "addr: 127.0.0.1:8080\nmetrics:\n  port: 9090\n",
        "metrics.port",
        Some(3),
        "unknown key",
    );
    assert_problem(
        "addr: 127.0.0.1:8080\nmetrics: {}\n",
        "metrics.addr",
        Some(2),
        "missing required key",
    );
    assert_problem(
        "addr: 127.0.0.1:8080\nmetrics: 9090\n",
        "metrics",
        Some(2),
        "",
    );
}

#[test]
fn log_format_text_json_and_errors() {
    assert_eq!(ok("addr: :1\n").log_format, LogFormat::Text);
    assert_eq!(
        ok("addr: :1\nlog-format: text\n").log_format,
        LogFormat::Text
    );
    assert_eq!(
        ok("addr: :1\nlog-format: json\n").log_format,
        LogFormat::Json
    );
    assert_problem(
        "addr: :1\nlog-format: JSON\n",
        "log-format",
        Some(2),
        "expected text or json",
    );
    assert_problem(
        "addr: :1\nlog-format: [json]\n",
        "log-format",
        Some(2),
        "expected text or json, found a list",
    );
    assert_problem(
        "addr: :1\nlog_format: json\n",
        "log_format",
        Some(2),
        "did you mean \"log-format\"?",
    );
}
