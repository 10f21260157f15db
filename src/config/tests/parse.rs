//! Settings that parse: addresses, rules, sizes, YAML forms.

use super::*;

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
