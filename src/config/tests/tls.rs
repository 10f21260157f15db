//! `tls-interceptor:` settings.

use super::*;

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
