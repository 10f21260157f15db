//! Issue 9 (items 1, 5, 6, 9, 10, 11): origins and clients that misbehave must not
//! poison pooled connections, the cache, or other requests; every stall is bounded; every
//! error honours the client's framing. Real chacha process, raw-socket origins.

mod common;

use common::cached::{assert_hit, assert_stored, cache_status, entry_files, fetch};
use common::client::ClientError;
use common::raw_origin::{head_only, mark, response, send, RawOrigin, RawRequest, Step};
use common::wire;
use common::{config, gen, get, with_deadline, Chacha, Conn, Origin};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deadline for an ordinary test.
const DEADLINE: Duration = Duration::from_secs(60);
/// How long a test waits for a signal (event, log line) that should come at once.
const SIGNAL: Duration = Duration::from_secs(5);
/// The short timeouts the timeout tests configure.
const TIMEOUTS: &str = "timeouts:\n  upstream-body: 1s\n  client-body: 1s\n";
const SHORT: Duration = Duration::from_secs(1);
/// Slack allowed on top of a configured timeout before the cut must have happened.
const SLACK: Duration = Duration::from_secs(3);

fn proxy(extra: &str) -> Chacha {
    Chacha::start(&config(extra))
}

fn head_request(authority: &str, path: &str) -> String {
    format!("HEAD http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
}

/// Like `fetch`, for large bodies: a failure names status and length, not every byte.
fn fetch_big(addr: std::net::SocketAddr, raw: String) -> common::Response {
    match common::request(addr, raw) {
        Ok(r) => r,
        Err(ClientError::Truncated { head, body, error }) => panic!(
            "truncated: status {} after {} body bytes: {error}",
            head.status,
            body.len()
        ),
        Err(e) => panic!("no response: {e:?}"),
    }
}

fn conn_of(reqs: &[RawRequest]) -> u64 {
    reqs.first().expect("the origin saw the request").conn
}

// ---- item 1: bytes nobody asked for on pooled connections ----

/// The reproduction from the issue: a HEAD response whose body arrives 50 ms late and is
/// a full HTTP response carrying the victim's ETag must never become the victim's entry.
#[test]
fn head_late_body_never_poisons_another_url() {
    with_deadline(DEADLINE, || {
        let origin = RawOrigin::start(|req| match (req.method.as_str(), req.target.as_str()) {
            ("GET", "/victim") if req.header("if-none-match") == Some("\"victim-v1\"") => {
                vec![send(head_only(
                    "304 Not Modified",
                    &["ETag: \"victim-v1\""],
                ))]
            }
            ("GET", "/victim") => vec![send(response(
                "200 OK",
                &["ETag: \"victim-v1\""],
                b"victim body",
            ))],
            ("HEAD", "/uploads/attacker.txt") => {
                let forged = response("200 OK", &["ETag: \"victim-v1\""], b"attacker body");
                let len = format!("Content-Length: {}", forged.len());
                vec![
                    send(head_only("200 OK", &[len.as_str()])),
                    Step::Pause(Duration::from_millis(50)),
                    send(forged),
                    mark("late body sent"),
                ]
            }
            _ => vec![send(response("404 Not Found", &[], b""))],
        });
        let proxy = proxy("");
        let a = origin.authority();

        let first = fetch(proxy.addr(), get(&a, "/victim"));
        assert_eq!(
            (first.status(), first.body_str().as_str()),
            (200, "victim body")
        );
        assert_stored(&first);

        let head = Conn::connect(proxy.addr())
            .request(head_request(&a, "/uploads/attacker.txt"))
            .expect("HEAD response");
        assert_eq!(head.status(), 200);
        assert!(head.body.is_empty());
        assert!(origin.wait_event("late body sent", SIGNAL));

        for i in 0..2 {
            let r = fetch(proxy.addr(), get(&a, "/victim"));
            assert_eq!(
                (r.status(), r.body_str().as_str()),
                (200, "victim body"),
                "GET /victim #{} after the HEAD (Cache-Status {:?})",
                i + 2,
                cache_status(&r)
            );
            assert_hit(&r);
        }
        // Both later GETs were real conditional requests answered by the origin.
        let victims = origin.requests_for("/victim");
        assert_eq!(victims.len(), 3);
        assert!(victims[1..]
            .iter()
            .all(|r| r.header("if-none-match") == Some("\"victim-v1\"")));
    });
}

/// Bytes an origin sends after a complete body, once the connection sits in the pool,
/// are never read as the next request's response: that request goes on a fresh
/// connection.
#[test]
fn bytes_after_a_complete_body_are_never_the_next_response() {
    with_deadline(DEADLINE, || {
        let origin = RawOrigin::start(|req| match req.target.as_str() {
            "/a" => vec![
                send(response("200 OK", &[], b"hello")),
                Step::Pause(Duration::from_millis(50)),
                send(response("200 OK", &[], b"bogus!")),
                mark("extra sent"),
            ],
            "/b" => vec![send(response("200 OK", &[], b"b-body"))],
            _ => vec![send(response("404 Not Found", &[], b""))],
        });
        let proxy = proxy("");
        let a = origin.authority();
        let r = fetch(proxy.addr(), get(&a, "/a"));
        assert_eq!((r.status(), r.body_str().as_str()), (200, "hello"));
        assert!(origin.wait_event("extra sent", SIGNAL));
        let r = fetch(proxy.addr(), get(&a, "/b"));
        assert_eq!((r.status(), r.body_str().as_str()), (200, "b-body"));
        assert_ne!(
            conn_of(&origin.requests_for("/b")),
            conn_of(&origin.requests_for("/a")),
            "/b was sent on the connection that had unsolicited bytes waiting"
        );
    });
}

/// A 304 stays pooled (every cache hit is one), but bytes arriving after it make the
/// connection unusable: the next revalidation goes on a fresh connection and the entry
/// is untouched.
#[test]
fn bytes_after_a_304_are_never_the_next_response() {
    with_deadline(DEADLINE, || {
        let conditionals = Arc::new(AtomicU64::new(0));
        let c = conditionals.clone();
        let origin = RawOrigin::start(move |req| {
            if req.header("if-none-match") != Some("\"v1\"") {
                return vec![send(response("200 OK", &["ETag: \"v1\""], b"v-body"))];
            }
            let not_modified = send(head_only("304 Not Modified", &["ETag: \"v1\""]));
            if c.fetch_add(1, Ordering::SeqCst) > 0 {
                return vec![not_modified];
            }
            vec![
                not_modified,
                Step::Pause(Duration::from_millis(50)),
                send(response("200 OK", &["ETag: \"v1\""], b"forged")),
                mark("after 304"),
            ]
        });
        let proxy = proxy("");
        let a = origin.authority();
        assert_stored(&fetch(proxy.addr(), get(&a, "/v")));
        let r = fetch(proxy.addr(), get(&a, "/v"));
        assert_eq!(r.body_str(), "v-body");
        assert_hit(&r);
        assert!(origin.wait_event("after 304", SIGNAL));
        for _ in 0..2 {
            let r = fetch(proxy.addr(), get(&a, "/v"));
            assert_eq!(
                (r.status(), r.body_str().as_str()),
                (200, "v-body"),
                "Cache-Status {:?}",
                cache_status(&r)
            );
            assert_hit(&r);
        }
        let reqs = origin.requests_for("/v");
        assert_eq!(reqs.len(), 4);
        assert_ne!(
            reqs[2].conn, reqs[1].conn,
            "reused the connection after the 304"
        );
    });
}

/// An unsolicited `101` (chacha never asks to upgrade) and unknown interim statuses are
/// a 502 and the origin connection is closed; `100` and `103` are still skipped.
#[test]
fn unsolicited_interim_responses_are_502_and_close_the_origin_connection() {
    with_deadline(DEADLINE, || {
        let origin = RawOrigin::start(|req| {
            let then = send(response("200 OK", &[], b"poisoned"));
            match req.target.as_str() {
                "/101" => vec![
                    send(head_only(
                        "101 Switching Protocols",
                        &["Connection: upgrade", "Upgrade: evil"],
                    )),
                    then,
                    Step::Hold,
                ],
                "/102" => vec![send(head_only("102 Processing", &[])), then],
                "/199" => vec![send(head_only("199 Whatever", &[])), then],
                "/100-103" => vec![
                    send(head_only("100 Continue", &[])),
                    send(head_only(
                        "103 Early Hints",
                        &["Link: </s.css>; rel=preload"],
                    )),
                    send(response("200 OK", &[], b"yes")),
                ],
                _ => vec![send(response("404 Not Found", &[], b""))],
            }
        });
        let proxy = proxy("");
        let a = origin.authority();
        for path in ["/101", "/102", "/199"] {
            let r = fetch(proxy.addr(), get(&a, path));
            assert_eq!(r.status(), 502, "{path}: {:?}", r.body_str());
            assert!(!r.body.is_empty(), "{path}: 502 without a reason");
            let conn = conn_of(&origin.requests_for(path));
            assert!(
                origin.wait_event(&format!("closed {conn}"), SIGNAL),
                "{path}: the origin connection stayed open"
            );
        }
        let r = fetch(proxy.addr(), get(&a, "/100-103"));
        assert_eq!((r.status(), r.body_str().as_str()), (200, "yes"));
    });
}

// ---- item 5: origin body stalls ----

fn blob(len: usize) -> Vec<u8> {
    gen::body(len)
}

/// Sends the head of a 200 with `len` body bytes and `extra` fields, then `sent` bytes of
/// it, then nothing (the connection stays open).
fn stalled_body(extra: &[&str], len: usize, sent: usize) -> Vec<Step> {
    let mut head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n");
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&blob(len)[..sent]);
    vec![send(bytes), mark("stalled"), Step::Hold]
}

/// Reads a response the proxy must cut: returns the bytes received and when the cut came.
fn read_cut(proxy: &Chacha, raw: String, full: usize) -> (Vec<u8>, Instant) {
    let mut conn = Conn::connect_timeout(proxy.addr(), Duration::from_secs(15));
    conn.send(raw).unwrap();
    match conn.read_response("GET") {
        Err(ClientError::Truncated { head, body, error }) => {
            let at = Instant::now();
            assert_eq!(head.status, 200);
            assert_eq!(
                error.kind(),
                std::io::ErrorKind::UnexpectedEof,
                "the client was not cut: {error}"
            );
            assert!(body.len() < full);
            assert_eq!(
                body[..],
                blob(full)[..body.len()],
                "wrong bytes before the cut"
            );
            (body, at)
        }
        Ok(r) => panic!(
            "complete response ({} bytes) from a stalled origin",
            r.body.len()
        ),
        Err(e) => panic!("no response head: {e:?}"),
    }
}

#[test]
fn stalled_origin_body_cuts_an_uncached_relay_within_the_timeout() {
    with_deadline(DEADLINE, || {
        let origin = RawOrigin::start(|_| stalled_body(&[], 1_000_000, 500_000));
        let proxy = proxy(TIMEOUTS);
        let a = origin.authority();
        let started = Instant::now();
        let (body, cut) = read_cut(&proxy, get(&a, "/stall"), 1_000_000);
        assert!(body.len() <= 500_000);
        let took = cut - started;
        assert!(
            took >= SHORT && took < SHORT + SLACK,
            "cut after {took:?}, want about {SHORT:?}"
        );
        assert!(proxy.wait_log("origin sent nothing for 1s", SIGNAL));
        let conn = conn_of(&origin.requests_for("/stall"));
        assert!(
            origin.wait_event(&format!("closed {conn}"), SIGNAL),
            "the stalled origin connection was kept"
        );
    });
}

/// A fill whose origin goes silent resumes with `Range` (like a cut body) and the client
/// gets the whole body, stored.
#[test]
fn stalled_fill_resumes_with_range() {
    const LEN: usize = 1_000_000;
    const SENT: usize = 400_000;
    with_deadline(DEADLINE, || {
        let origin = RawOrigin::start(|req| {
            let etag = "ETag: \"blob-1\"";
            if req.header("if-none-match") == Some("\"blob-1\"") {
                return vec![send(head_only("304 Not Modified", &[etag]))];
            }
            match req.header("range") {
                None => stalled_body(&[etag], LEN, SENT),
                Some(r) if r == format!("bytes={SENT}-") => {
                    let range = format!("Content-Range: bytes {SENT}-{}/{LEN}", LEN - 1);
                    vec![send(response(
                        "206 Partial Content",
                        &[etag, range.as_str()],
                        &blob(LEN)[SENT..],
                    ))]
                }
                Some(_) => vec![send(response("416 Range Not Satisfiable", &[], b""))],
            }
        });
        let proxy = proxy(TIMEOUTS);
        let a = origin.authority();
        let started = Instant::now();
        let r = fetch_big(proxy.addr(), get(&a, "/blob"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.body.len(), LEN);
        assert!(r.body == blob(LEN), "resumed body differs");
        assert_stored(&r);
        assert!(started.elapsed() >= SHORT);
        assert!(proxy.wait_log(
            &format!("at byte {SENT} (origin sent nothing for 1s); resumed"),
            SIGNAL
        ));
        let ranged: Vec<_> = origin
            .requests_for("/blob")
            .into_iter()
            .filter(|q| q.header("range").is_some())
            .collect();
        assert_eq!(ranged.len(), 1);
        assert_eq!(ranged[0].header("if-range"), Some("\"blob-1\""));

        let again = fetch_big(proxy.addr(), get(&a, "/blob"));
        assert_hit(&again);
        assert!(again.body == blob(LEN));
    });
}

/// A fill passes on each piece as soon as it is stored, not when the origin sends the
/// next one: the bytes an origin sent before it went silent reach the client well before
/// the silence is even noticed (the fill reads the next piece while it stores this one).
#[test]
fn a_fill_passes_on_what_the_origin_sent_before_it_stalls() {
    const LEN: usize = 1_000_000;
    const SENT: usize = 100_000;
    with_deadline(DEADLINE, || {
        let origin = RawOrigin::start(|req| match req.header("range") {
            None => stalled_body(&["ETag: \"slow-1\""], LEN, SENT),
            Some(_) => vec![send(response("416 Range Not Satisfiable", &[], b""))],
        });
        let proxy = proxy(TIMEOUTS);
        let a = origin.authority();
        let mut conn = Conn::connect_timeout(proxy.addr(), Duration::from_secs(15));
        let started = Instant::now();
        conn.send(get(&a, "/slow")).unwrap();
        let head = conn.read_head("GET").expect("a response head");
        assert_eq!(head.status, 200);
        // A fill, not an uncached relay: the response is being stored.
        let cs = head
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("cache-status"))
            .map(|(_, v)| v.as_str())
            .unwrap_or("<none>");
        assert!(cs.contains("stored"), "not a fill: Cache-Status {cs:?}");
        let (mut got, mut all_at) = (Vec::new(), None);
        let read = conn.read_body_with(&head, &mut |b: &[u8]| {
            got.extend_from_slice(b);
            if got.len() >= SENT && all_at.is_none() {
                all_at = Some(started.elapsed());
            }
        });
        assert!(
            read.is_err(),
            "a body the origin never finished was not cut"
        );
        assert!(
            got.len() >= SENT,
            "only {} of the {SENT} bytes sent",
            got.len()
        );
        assert_eq!(got[..SENT], blob(LEN)[..SENT], "wrong bytes");
        let t = all_at.expect("all sent bytes arrived");
        assert!(
            t < SHORT,
            "the sent bytes took {t:?}: held back until the stall timed out"
        );
        assert!(proxy.wait_log("origin sent nothing for 1s", SIGNAL));
    });
}

/// Without Range support at the origin a stalled fill fails cleanly: the client is cut
/// within the timeout, nothing is stored, and the next request fills again.
#[test]
fn stalled_fill_without_range_support_fails_cleanly_and_refills() {
    const LEN: usize = 600_000;
    with_deadline(DEADLINE, || {
        let plain = Arc::new(AtomicU64::new(0));
        let p = plain.clone();
        let origin = RawOrigin::start(move |req| {
            let etag = "ETag: \"b2\"";
            if req.header("if-none-match") == Some("\"b2\"") {
                return vec![send(head_only("304 Not Modified", &[etag]))];
            }
            // Range ignored: the whole body again (RFC 9110 §14.2 allows it).
            if req.header("range").is_none() && p.fetch_add(1, Ordering::SeqCst) == 0 {
                return stalled_body(&[etag], LEN, 200_000);
            }
            vec![send(response("200 OK", &[etag], &blob(LEN)))]
        });
        let proxy = proxy(TIMEOUTS);
        let a = origin.authority();
        let started = Instant::now();
        let (_, cut) = read_cut(&proxy, get(&a, "/blob2"), LEN);
        let took = cut - started;
        assert!(
            took >= SHORT && took < SHORT + SLACK,
            "cut after {took:?}, want about {SHORT:?}"
        );
        assert!(proxy.wait_log("resuming failed", SIGNAL));
        assert!(entry_files(proxy.dir()).is_empty(), "a cut fill was stored");

        let r = fetch_big(proxy.addr(), get(&a, "/blob2"));
        assert_eq!(r.status(), 200);
        assert!(r.body == blob(LEN));
        assert_stored(&r);
        let r = fetch_big(proxy.addr(), get(&a, "/blob2"));
        assert_hit(&r);
        assert!(r.body == blob(LEN));
    });
}

/// The `tr` (timer) column of chacha's sockets toward `port` in /proc/<pid>/net/tcp, for
/// established connections (`02` = the keepalive timer is armed).
fn timers_toward(pid: u32, port: u16) -> Vec<String> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 5 && f[2].ends_with(&want) && f[3] == "01")
                .then(|| f[5].split(':').next().unwrap_or("").to_string())
        })
        .collect()
}

/// Origin connections carry TCP keepalive (a vanished origin host is noticed).
#[test]
fn origin_connections_have_tcp_keepalive() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let proxy = proxy("");
        let r = fetch(proxy.addr(), get(&origin.authority(), "/static/a"));
        assert_eq!(r.status(), 200);
        // The connection now sits in chacha's pool.
        let timers = timers_toward(proxy.pid(), origin.addr().port());
        assert!(
            !timers.is_empty(),
            "no pooled connection to the origin found"
        );
        assert!(
            timers.iter().all(|t| t == "02"),
            "keepalive timer not armed on origin connections: {timers:?}"
        );
    });
}

// ---- item 6: client body stalls ----

#[test]
fn stalled_client_body_gets_408_and_both_connections_close() {
    with_deadline(DEADLINE, || {
        let origin = RawOrigin::start(|_| vec![send(response("200 OK", &[], b"got it"))]);
        let proxy = proxy(TIMEOUTS);
        let a = origin.authority();
        let mut conn = Conn::connect_timeout(proxy.addr(), Duration::from_secs(15));
        let started = Instant::now();
        conn.send(format!(
            "POST http://{a}/upload HTTP/1.1\r\nHost: {a}\r\nContent-Length: 100\r\n\r\n0123456789"
        ))
        .unwrap();
        let r = conn.read_response("POST").expect("an answer");
        let took = started.elapsed();
        assert_eq!(r.status(), 408, "{}", r.body_str());
        assert!(r.head.closes(), "408 without Connection: close");
        assert!(
            took >= SHORT && took < SHORT + SLACK,
            "408 after {took:?}, want about {SHORT:?}"
        );
        assert!(conn.closed_within(SIGNAL), "client connection left open");
        assert!(
            origin.wait_event("head 0", SIGNAL),
            "request never reached the origin"
        );
        assert!(
            origin.wait_event("closed 0", SIGNAL),
            "origin connection left open"
        );
        assert!(
            origin.requests().is_empty(),
            "the origin got a complete request"
        );
    });
}

// ---- item 9: transfer codings we cannot undo ----

#[test]
fn transfer_encoding_gzip_response_is_502_and_not_stored() {
    with_deadline(DEADLINE, || {
        let origin = RawOrigin::start(|_| {
            let mut bytes = head_only(
                "200 OK",
                &[
                    "ETag: \"gz1\"",
                    "Transfer-Encoding: gzip",
                    "Connection: close",
                ],
            );
            bytes.extend_from_slice(b"\x1f\x8b\x08\x00compressed-bytes");
            vec![send(bytes), Step::Close]
        });
        let proxy = proxy("");
        let a = origin.authority();
        for _ in 0..2 {
            let r = fetch(proxy.addr(), get(&a, "/gz"));
            assert_eq!(r.status(), 502, "{:?}", r.body_str());
            assert!(!r.body.is_empty());
        }
        let reqs = origin.requests_for("/gz");
        assert_eq!(reqs.len(), 2);
        assert!(
            reqs.iter().all(|r| r.header("if-none-match").is_none()),
            "the second request revalidated a stored entry"
        );
        assert!(entry_files(proxy.dir()).is_empty());
    });
}

// ---- item 10: error responses honour the client's framing ----

fn assert_error_closes(proxy: &Chacha, raw: String, what: &str) {
    let mut conn = Conn::connect(proxy.addr());
    conn.send(raw).unwrap();
    let r = conn.read_response("GET").expect("an error response");
    assert_eq!(r.status(), 502, "{what}: {}", r.body_str());
    assert!(
        r.head.has_token("connection", "close"),
        "{what}: no Connection: close"
    );
    assert!(conn.closed_within(SIGNAL), "{what}: socket left open");
}

#[test]
fn error_responses_honour_connection_close_and_http10() {
    with_deadline(DEADLINE, || {
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        // An origin that closes after reading the request: the error comes after the
        // request was sent.
        let closing = RawOrigin::start(|_| vec![Step::Close]);
        let proxy = proxy("");
        for target in [dead.clone(), closing.authority()] {
            assert_error_closes(
                &proxy,
                format!(
                    "GET http://{target}/x HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
                ),
                &format!("Connection: close to {target}"),
            );
            assert_error_closes(
                &proxy,
                format!("GET http://{target}/x HTTP/1.0\r\nHost: {target}\r\n\r\n"),
                &format!("HTTP/1.0 to {target}"),
            );
        }
        // Control: a keep-alive HTTP/1.1 client keeps its connection after a 502.
        let mut conn = Conn::connect(proxy.addr());
        let r = conn.request(get(&dead, "/x")).unwrap();
        assert_eq!(r.status(), 502);
        assert!(!r.head.closes());
        let r = conn.request(get(&dead, "/y")).unwrap();
        assert_eq!(r.status(), 502);
    });
}

// ---- item 11: one normalised Content-Length upstream ----

#[test]
fn content_length_reaches_the_origin_normalised() {
    with_deadline(DEADLINE, || {
        let origin = RawOrigin::start(|_| vec![send(response("200 OK", &[], b"ok"))]);
        let proxy = proxy("");
        let a = origin.authority();
        let cases = [
            ("list", "Content-Length: 5, 5\r\n"),
            ("repeated", "Content-Length: 5\r\nContent-Length: 5\r\n"),
            ("zeros", "Content-Length: 005\r\n"),
        ];
        for (name, fields) in cases {
            let path = format!("/cl-{name}");
            let r = fetch(
                proxy.addr(),
                format!("POST http://{a}{path} HTTP/1.1\r\nHost: {a}\r\n{fields}\r\nhello"),
            );
            assert_eq!((r.status(), r.body_str().as_str()), (200, "ok"), "{name}");
            let reqs = origin.requests_for(&path);
            assert_eq!(reqs.len(), 1, "{name}");
            assert_eq!(
                wire::header_all(&reqs[0].headers, "content-length"),
                ["5"],
                "{name}: Content-Length as forwarded"
            );
            assert_eq!(reqs[0].body, b"hello", "{name}");
        }
    });
}

/// The same bound on an https origin (its reads go through rustls): the intercepted
/// client's response is cut within the timeout.
#[test]
fn stalled_tls_origin_body_is_cut_within_the_timeout() {
    use common::tls::{get_in_tunnel, TestCa, TlsFront, Tunnel, TunnelOpts};
    with_deadline(DEADLINE, || {
        let dir = common::TempDir::new("hostile-tls");
        let chacha_ca = TestCa::new("chacha interception test CA");
        let origin_ca = TestCa::new("origin test CA");
        let (ca_cert, ca_key) = chacha_ca.write(dir.path(), "chacha-ca");
        let (origin_ca_cert, _) = origin_ca.write(dir.path(), "origin-ca");
        let origin = RawOrigin::start(|_| stalled_body(&[], 1_000_000, 300_000));
        let front = TlsFront::start(origin.addr(), origin_ca.server_config(&["localhost"]));
        let yaml = config(&format!(
            "{TIMEOUTS}tls-interceptor:\n  cert: \"{}\"\n  key: \"{}\"\n  ports: [{}]\n",
            ca_cert.display(),
            ca_key.display(),
            front.port()
        ));
        let proxy = Chacha::start_with_env(
            &yaml,
            "info",
            &[("SSL_CERT_FILE", origin_ca_cert.to_str().unwrap())],
        );
        let mut tunnel = Tunnel::open(
            proxy.addr(),
            TunnelOpts {
                authority: &format!("localhost:{}", front.port()),
                server_name: "localhost",
                client: chacha_ca.client_config(),
                eager: false,
            },
        )
        .expect("tunnel");
        let started = Instant::now();
        match tunnel.request(get_in_tunnel("localhost", "/stall")) {
            Err(ClientError::Truncated { head, body, .. }) => {
                let took = started.elapsed();
                assert_eq!(head.status, 200);
                assert_eq!(body.len(), 300_000);
                assert!(body[..] == blob(1_000_000)[..300_000], "wrong bytes");
                assert!(
                    took >= SHORT && took < SHORT + SLACK,
                    "cut after {took:?}, want about {SHORT:?}"
                );
            }
            Ok(r) => panic!("complete response ({} bytes)", r.body.len()),
            Err(e) => panic!("no response head: {e:?}"),
        }
        assert!(proxy.wait_log("origin sent nothing for 1s", SIGNAL));
    });
}
