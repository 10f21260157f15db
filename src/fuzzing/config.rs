use std::time::Duration;

use crate::config::{self as loader, Config, ConfigError};

// Config loader

/// `config::parse_offline` (the loader without DNS) on UTF-8 text (a config file is read
/// as UTF-8; other bytes never reach the parser):
/// * deterministic;
/// * an error lists at least one problem, sorted by line, each naming its key or its line
///   (a line within the text), each on one line of the message;
/// * a config that loads satisfies the checks the loader promises (workers, ports, nodes,
///   timeouts) and, written back as YAML, loads to the same config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = loader::parse_offline(text);
    assert_eq!(
        format!("{first:?}"),
        format!("{:?}", loader::parse_offline(text)),
        "deterministic"
    );
    match first {
        Ok(config) => check_config(&config),
        Err(err) => check_config_error(text, &err),
    }
}

fn check_config_error(text: &str, err: &ConfigError) {
    assert!(!err.problems.is_empty());
    // YAML line breaks: CRLF, CR or LF (YAML 1.2 §5.4), and NEL, LS, PS (YAML 1.1,
    // which libyaml counts).
    let breaks = ['\r', '\n', '\u{85}', '\u{2028}', '\u{2029}'];
    let lines = 1 + text.replace("\r\n", "\n").matches(breaks).count();
    let mut previous = None;
    for problem in &err.problems {
        assert!(
            problem.line.is_some() || !problem.key.is_empty(),
            "names neither a key nor a line: {problem:?}"
        );
        if let Some(line) = problem.line {
            assert!((1..=lines).contains(&line), "line {line} of {lines}");
        }
        assert!(previous <= problem.line, "not sorted by line: {err:?}");
        previous = problem.line;
        assert!(!problem.message.is_empty());
    }
    let shown = err.to_string();
    assert_eq!(
        shown.lines().count(),
        err.problems.len(),
        "one line per problem: {shown:?}"
    );
}

fn check_config(config: &Config) {
    assert!((1..=1024).contains(&config.workers));
    if let Some(disk) = &config.disk {
        assert!(!disk.dir.as_os_str().is_empty());
    }
    if let Some(tls) = &config.tls_interceptor {
        assert!(!tls.ports.is_empty() && !tls.ports.contains(&0));
    }
    if let Some(cluster) = &config.cluster {
        assert!(!cluster.secret.is_empty() && !cluster.nodes.is_empty());
        for (i, node) in cluster.nodes.iter().enumerate() {
            assert!(!node.ip().is_unspecified() && node.port() != 0, "{node}");
            assert!(!cluster.nodes[..i].contains(node), "duplicate {node}");
        }
        assert!(!config.addr.ip().is_unspecified() && config.addr.port() != 0);
    }
    let t = config.timeouts;
    for d in [t.connect, t.upstream_head, t.client_head, t.idle] {
        assert!(d > Duration::ZERO, "{d:?}");
    }
    let yaml = config_yaml(config);
    let again = match loader::parse_offline(&yaml) {
        Ok(again) => again,
        Err(err) => panic!("written back as\n{yaml}\nit fails: {err}"),
    };
    assert_eq!(again.addr, config.addr);
    assert_eq!(again.workers, config.workers);
    assert_eq!(again.disk, config.disk);
    assert_eq!(again.tls_interceptor, config.tls_interceptor);
    assert_eq!(again.cluster, config.cluster);
    assert_eq!(again.metrics, config.metrics);
    let rules = |c: &Config| -> Vec<String> {
        c.rules
            .iter()
            .map(|r| {
                format!(
                    "{} {} {:?} {} {}",
                    r.pattern.as_str(),
                    r.ignore_authorization_header,
                    r.ignore_parameters,
                    r.direct_connect,
                    r.direct_connect_header
                )
            })
            .collect()
    };
    assert_eq!(rules(&again), rules(config));
    // Durations travel as decimal seconds: equal to within a microsecond.
    let (a, b) = (again.timeouts, config.timeouts);
    for (x, y) in [
        (a.connect, b.connect),
        (a.upstream_head, b.upstream_head),
        (a.client_head, b.client_head),
        (a.idle, b.idle),
    ] {
        assert!(x.abs_diff(y) <= Duration::from_micros(1), "{x:?} vs {y:?}");
    }
}

/// `config` written as a config file.
fn config_yaml(config: &Config) -> String {
    use serde_yaml_ng::{Mapping, Value};
    fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
        let mut m = Mapping::new();
        for (k, v) in pairs {
            m.insert(Value::String(k.to_string()), v);
        }
        Value::Mapping(m)
    }
    let s = |text: &str| Value::String(text.to_string());
    let secs = |d: Duration| Value::String(format!("{}s", d.as_secs_f64()));
    let mut root = match map([
        ("addr", s(&config.addr.to_string())),
        ("workers", Value::Number(config.workers.into())),
        (
            "timeouts",
            map([
                ("connect", secs(config.timeouts.connect)),
                ("upstream-head", secs(config.timeouts.upstream_head)),
                ("client-head", secs(config.timeouts.client_head)),
                ("idle", secs(config.timeouts.idle)),
            ]),
        ),
    ]) {
        Value::Mapping(m) => m,
        _ => unreachable!(),
    };
    if let Some(disk) = &config.disk {
        let dir = disk.dir.to_str().expect("read from UTF-8 text");
        root.insert(
            s("disk"),
            map([("dir", s(dir)), ("limit", Value::Number(disk.limit.into()))]),
        );
    }
    if let Some(tls) = &config.tls_interceptor {
        let path = |p: &std::path::Path| s(p.to_str().expect("read from UTF-8 text"));
        let ports = tls.ports.iter().map(|&p| Value::Number(p.into())).collect();
        let passthrough = tls
            .passthrough_ports
            .iter()
            .map(|&p| Value::Number(p.into()))
            .collect();
        let mut t = map([
            ("cert", path(&tls.cert)),
            ("key", path(&tls.key)),
            ("ports", Value::Sequence(ports)),
            ("passthrough-ports", Value::Sequence(passthrough)),
            ("allow-sni-mismatch", Value::Bool(tls.allow_sni_mismatch)),
        ]);
        if let (Some(intercept), Value::Mapping(m)) = (&tls.intercept, &mut t) {
            m.insert(
                s("intercept"),
                Value::Sequence(intercept.iter().map(|p| s(p)).collect()),
            );
        }
        root.insert(s("tls-interceptor"), t);
    }
    let rules = config
        .rules
        .iter()
        .map(|r| {
            map([
                ("pattern", s(r.pattern.as_str())),
                (
                    "ignore-authorization-header",
                    Value::Bool(r.ignore_authorization_header),
                ),
                (
                    "ignore-parameters",
                    Value::Sequence(r.ignore_parameters.iter().map(|p| s(p)).collect()),
                ),
                ("direct-connect", Value::Bool(r.direct_connect)),
                (
                    "direct-connect-header",
                    Value::Bool(r.direct_connect_header),
                ),
            ])
        })
        .collect();
    root.insert(s("rules"), Value::Sequence(rules));
    if let Some(cluster) = &config.cluster {
        let nodes = cluster
            .nodes
            .iter()
            .map(|n| map([("addr", s(&n.to_string()))]))
            .collect();
        root.insert(
            s("cluster"),
            map([
                ("secret", s(&cluster.secret)),
                ("nodes", Value::Sequence(nodes)),
            ]),
        );
    }
    if let Some(m) = &config.metrics {
        root.insert(s("metrics"), map([("addr", s(&m.addr.to_string()))]));
    }
    serde_yaml_ng::to_string(&Value::Mapping(root)).expect("a mapping of plain values")
}
