//! `metrics:` and `log-format:` settings.

use super::*;

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
