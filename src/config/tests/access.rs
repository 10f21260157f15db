//! `access:` settings.

use super::*;

#[test]
fn access_defaults_when_absent() {
    let config = ok("addr: 127.0.0.1:8080\n");
    let access = &config.access;
    assert_eq!(
        access.clients,
        crate::access::cidr::CidrList::of(crate::access::defaults::DEFAULT_CLIENTS)
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
        crate::access::defaults::DEFAULT_CONNECTIONS_PER_CLIENT
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
