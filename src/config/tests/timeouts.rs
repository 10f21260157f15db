//! `timeouts:` settings.

use super::*;

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
