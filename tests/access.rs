//! Issue 12, clients: who may use the proxy. `access.clients` (403 at accept, nothing
//! forwarded), `access.proxy-auth` (407 with `Proxy-Authenticate` for missing or wrong
//! credentials, over plain requests and once per CONNECT tunnel, the header never
//! forwarded), and `access.limits` (503 with `Retry-After` over the limit, served again
//! once connections close). Two clients in one test are two loopback source addresses
//! (127.0.0.1 and 127.0.0.2).

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::access::{connect_from, htpasswd_line, proxy_authorization};
use common::tls::{get_in_tunnel, send_connect_with, TestCa, TlsFront, Tunnel, TunnelOpts};
use common::{config, get, get_with, with_deadline, Chacha, Conn, Origin, Response, TempDir};

const DEADLINE: Duration = Duration::from_secs(60);
/// How long a log line that must appear may take.
const LOG_WAIT: Duration = Duration::from_secs(10);
const ONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const TWO: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A connection to `chacha` from source address `src`.
fn conn_from(src: Ipv4Addr, chacha: &Chacha) -> Conn {
    Conn::from_stream(
        connect_from(src, chacha.addr()).unwrap_or_else(|e| panic!("connect from {src}: {e}")),
    )
}

fn request_from(src: Ipv4Addr, chacha: &Chacha, raw: &str) -> Response {
    conn_from(src, chacha)
        .request(raw)
        .unwrap_or_else(|e| panic!("request from {src}: {e:?}"))
}

/// chacha with `access.proxy-auth` for user `ci` (password `s3cret`) and `other`.
fn with_users(extra: &str) -> (Chacha, TempDir) {
    let dir = TempDir::new("access-auth");
    let file = dir.path().join("htpasswd");
    let text = format!(
        "# written like htpasswd -B\n{}{}",
        htpasswd_line("ci", "s3cret"),
        htpasswd_line("other", "pa:ss")
    );
    std::fs::write(&file, text).unwrap();
    let yaml = config(&format!(
        "access:\n  proxy-auth:\n    htpasswd: \"{}\"\n{extra}",
        file.display()
    ));
    (Chacha::start(&yaml), dir)
}

#[test]
fn clients_outside_access_clients_get_403_and_nothing_is_forwarded() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let chacha = Chacha::start(&config("access:\n  clients: [127.0.0.1/32]\n"));
        let raw = get(&origin.authority(), "/status/200");

        let denied = request_from(TWO, &chacha, &raw);
        assert_eq!(denied.status(), 403, "{}", denied.body_str());
        assert_eq!(
            denied.body_str().trim(),
            "client 127.0.0.2 is not in access.clients"
        );
        assert!(denied.head.closes(), "a refused connection is closed");
        // The same client again: refused again, logged once (per minute).
        assert_eq!(request_from(TWO, &chacha, &raw).status(), 403);
        assert_eq!(
            origin.requests_total(),
            0,
            "nothing forwarded for a denied client"
        );

        let allowed = request_from(ONE, &chacha, &raw);
        assert_eq!(allowed.status(), 200, "{}", allowed.body_str());
        assert_eq!(origin.requests_total(), 1);
        assert!(chacha.wait_log_count("client 127.0.0.2 is not in access.clients", 1, LOG_WAIT));
        assert_eq!(
            chacha
                .log()
                .matches("client 127.0.0.2 is not in access.clients")
                .count(),
            1,
            "logged once per client per minute:\n{}",
            chacha.log()
        );
        // chacha's own endpoints are behind the same check.
        let health = request_from(TWO, &chacha, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(health.status(), 403);
    });
}

#[test]
fn default_clients_allow_loopback() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let chacha = Chacha::start(&config(""));
        for src in [ONE, TWO] {
            let r = request_from(src, &chacha, &get(&origin.authority(), "/status/200"));
            assert_eq!(r.status(), 200, "from {src}: {}", r.body_str());
        }
        assert_eq!(origin.requests_total(), 2);
        // The limits in force are logged at startup.
        assert!(
            chacha
                .log()
                .contains("access: clients [127.0.0.0/8, ::1/128, 10.0.0.0/8"),
            "{}",
            chacha.log()
        );
        assert!(chacha.log().contains("client connections, 500 per client"));
    });
}

#[test]
fn htpasswd_with_other_hash_kinds_is_refused_at_startup() {
    with_deadline(DEADLINE, || {
        let dir = TempDir::new("access-htpasswd");
        let file = dir.path().join("htpasswd");
        // What `htpasswd -m` (MD5) writes, after a good bcrypt line.
        let text = format!(
            "{}old:$apr1$Qv0vZDxT$Oq8bN1c0N5gKJ4s0b8JMr/\n",
            htpasswd_line("ci", "s3cret")
        );
        std::fs::write(&file, text).unwrap();
        let yaml = config(&format!(
            "access:\n  proxy-auth:\n    htpasswd: \"{}\"\n",
            file.display()
        ));
        let out = common::run_to_exit("run", &yaml, Duration::from_secs(20));
        assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{}", out.stderr);
        let want = format!(
            "access.proxy-auth.htpasswd: {}:2: user \"old\": an MD5 ($apr1$) hash; only bcrypt is accepted",
            file.display()
        );
        assert!(out.stderr.contains(&want), "{}", out.stderr);
        assert!(!out.stderr.contains("listening on"));
    });
}

#[test]
fn proxy_auth_on_plain_requests() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let (chacha, _dir) = with_users("");
        let authority = origin.authority();

        // Missing: 407 with the challenge, and the connection stays usable.
        let mut conn = Conn::connect(chacha.addr());
        let r = conn.request(get(&authority, "/echo")).unwrap();
        assert_eq!(r.status(), 407, "{}", r.body_str());
        assert_eq!(
            r.header("proxy-authenticate"),
            Some("Basic realm=\"chacha\", charset=\"UTF-8\"")
        );
        assert_eq!(r.body_str().trim(), "proxy authentication required");
        assert!(
            !r.head.closes(),
            "a 407 without a body keeps the connection"
        );
        // Right credentials on the same connection: served, and the origin does not see
        // them (RFC 9110 §11.7.1: Proxy-Authorization is for the proxy).
        let good = proxy_authorization("ci", "s3cret");
        let r = conn
            .request(get_with(&authority, "/echo", &[&good]))
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.body_str());
        let seen = origin.last_request().expect("the origin got the request");
        assert_eq!(seen.header("proxy-authorization"), None);
        // Later requests on a connection are checked too (from the per-core cache).
        let r = conn.request(get(&authority, "/echo")).unwrap();
        assert_eq!(r.status(), 407);

        // Wrong password, unknown user, another scheme, garbage: 407 each, nothing sent.
        for (field, reason) in [
            (
                proxy_authorization("ci", "S3cret"),
                "wrong proxy user name or password",
            ),
            (
                proxy_authorization("nobody", "s3cret"),
                "wrong proxy user name or password",
            ),
            (
                "Proxy-Authorization: Bearer abc".to_owned(),
                "Proxy-Authorization is not a valid Basic credential",
            ),
            (
                "Proxy-Authorization: Basic !!!".to_owned(),
                "Proxy-Authorization is not a valid Basic credential",
            ),
        ] {
            let r =
                common::request(chacha.addr(), get_with(&authority, "/echo", &[&field])).unwrap();
            assert_eq!(r.status(), 407, "{field}");
            assert_eq!(r.body_str().trim(), reason, "{field}");
            assert!(r.header("proxy-authenticate").is_some());
        }
        assert_eq!(origin.requests_total(), 1, "only the authorized request");

        // A password with a colon (RFC 7617: everything after the first colon), another
        // user: served.
        let r = common::request(
            chacha.addr(),
            get_with(
                &authority,
                "/status/200",
                &[&proxy_authorization("other", "pa:ss")],
            ),
        )
        .unwrap();
        assert_eq!(r.status(), 200);

        // A refused request with a body closes the connection (the body is not read).
        let mut conn = Conn::connect(chacha.addr());
        let r = conn
            .request(common::request_with(
                "POST",
                &authority,
                "/echo",
                &[],
                b"data",
            ))
            .unwrap();
        assert_eq!(r.status(), 407);
        assert!(r.head.closes());
        assert!(conn.closed_within(Duration::from_secs(5)));

        // chacha's own endpoint needs no proxy credentials.
        let r = common::request(chacha.addr(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(origin.requests_total(), 2);
    });
}

#[test]
fn proxy_auth_once_per_connect_tunnel() {
    with_deadline(DEADLINE, || {
        let dir = TempDir::new("access-connect");
        let chacha_ca = TestCa::new("chacha access test CA");
        let origin_ca = TestCa::new("origin access test CA");
        let (ca_cert, ca_key) = chacha_ca.write(dir.path(), "chacha-ca");
        let (origin_ca_cert, _) = origin_ca.write(dir.path(), "origin-ca");
        let origin = Origin::standard();
        let front = TlsFront::start(
            origin.addr(),
            origin_ca.server_config(&["localhost", "127.0.0.1"]),
        );
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, htpasswd_line("ci", "s3cret")).unwrap();
        let yaml = config(&format!(
            "tls-interceptor:\n  cert: \"{}\"\n  key: \"{}\"\n  ports: [{}]\n\
             access:\n  proxy-auth:\n    htpasswd: \"{}\"\n",
            ca_cert.display(),
            ca_key.display(),
            front.port(),
            htpasswd.display()
        ));
        let chacha = Chacha::start_with_env(
            &yaml,
            "info",
            &[("SSL_CERT_FILE", origin_ca_cert.to_str().unwrap())],
        );
        let authority = format!("localhost:{}", front.port());

        for headers in [vec![], vec![proxy_authorization("ci", "wrong")]] {
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            let (_tcp, status, text) =
                send_connect_with(chacha.addr(), &authority, &headers, b"").unwrap();
            assert_eq!(status, 407, "{text}");
            assert!(
                text.to_ascii_lowercase()
                    .contains("proxy-authenticate: basic realm=\"chacha\""),
                "{text}"
            );
        }
        assert_eq!(
            front.handshakes(),
            0,
            "no tunnel opened without credentials"
        );

        let good = proxy_authorization("ci", "s3cret");
        let mut tunnel = Tunnel::open_with(
            chacha.addr(),
            TunnelOpts {
                authority: &authority,
                server_name: "localhost",
                client: chacha_ca.client_config(),
                eager: false,
            },
            &[&good],
        )
        .expect("CONNECT with credentials");
        // Inside the tunnel no request carries credentials: checked once per tunnel.
        for _ in 0..2 {
            let r = tunnel.request(get_in_tunnel("localhost", "/echo")).unwrap();
            assert_eq!(r.status(), 200, "{}", r.body_str());
        }
        assert_eq!(origin.requests_total(), 2);
        assert!(origin
            .requests()
            .iter()
            .all(|r| r.header("proxy-authorization").is_none()));
    });
}

/// Opens a connection from `src` and proves it is being served (so it is counted).
fn served_conn(src: Ipv4Addr, chacha: &Chacha, origin: &Origin) -> Conn {
    let mut conn = conn_from(src, chacha);
    let r = conn
        .request(get(&origin.authority(), "/status/200"))
        .unwrap();
    assert_eq!(r.status(), 200, "from {src}: {}", r.body_str());
    conn
}

fn assert_over_limit(r: &Response, needle: &str) {
    assert_eq!(r.status(), 503, "{}", r.body_str());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.head.closes());
    assert!(r.body_str().contains(needle), "{}", r.body_str());
}

#[test]
fn connection_limit_reached_and_recovered() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let chacha = Chacha::start(&config("access:\n  limits:\n    connections: 3\n"));
        let mut open: Vec<Conn> = (0..3).map(|_| served_conn(ONE, &chacha, &origin)).collect();
        let raw = get(&origin.authority(), "/status/200");
        for _ in 0..2 {
            let r = request_from(TWO, &chacha, &raw);
            assert_over_limit(&r, "access.limits.connections");
        }
        assert_eq!(
            origin.requests_total(),
            3,
            "nothing forwarded over the limit"
        );
        // The episode's line may follow the answer: wait for it, then count.
        assert!(chacha.wait_log_count("too many connections", 1, LOG_WAIT));
        let log = chacha.log();
        assert_eq!(
            log.matches("too many connections").count(),
            1,
            "logged once per episode:\n{log}"
        );
        // One closes: the count falls below the limit (logged), a new one is served.
        drop(open.pop());
        assert!(
            chacha.wait_log("below access.limits.connections (3) again", LOG_WAIT),
            "{}",
            chacha.log()
        );
        open.push(served_conn(TWO, &chacha, &origin));
        // Full again: a new episode is logged again.
        assert_over_limit(
            &request_from(ONE, &chacha, &raw),
            "(access.limits.connections)",
        );
        assert!(
            chacha.wait_log_count("too many connections", 2, LOG_WAIT),
            "a new episode is logged again:\n{}",
            chacha.log()
        );
    });
}

#[test]
fn per_client_limit_counts_each_address() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let chacha = Chacha::start(&config(
            "access:\n  limits:\n    connections-per-client: 2\n",
        ));
        let mut ones = vec![
            served_conn(ONE, &chacha, &origin),
            served_conn(ONE, &chacha, &origin),
        ];
        let raw = get(&origin.authority(), "/status/200");
        assert_over_limit(
            &request_from(ONE, &chacha, &raw),
            "too many connections from 127.0.0.1",
        );
        // Another address is not affected.
        let _two = served_conn(TWO, &chacha, &origin);
        let _two_more = served_conn(TWO, &chacha, &origin);
        assert_over_limit(
            &request_from(TWO, &chacha, &raw),
            "access.limits.connections-per-client",
        );
        drop(ones.pop());
        assert!(
            chacha.wait_log("connections from 127.0.0.1 below", LOG_WAIT),
            "{}",
            chacha.log()
        );
        ones.push(served_conn(ONE, &chacha, &origin));
        assert_eq!(origin.requests_total(), 5);
    });
}
