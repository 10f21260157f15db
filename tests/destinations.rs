//! Issue 12: where the proxy may go (the destination policy, every spelling of an
//! address), blind CONNECT tunnels, the SNI check of intercepted tunnels, and the rate
//! limit on failed KV authentications.
//!
//! Only loopback is used: a deny rule for 127.0.0.99 with a counting origin listening
//! there proves that a denied request never connects. Link-local and the other default
//! ranges are unit-tested on the policy function only (src/access/destinations.rs); no
//! test sends traffic to them.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::kv::{go_kv_request, reserve_addr, single_node_config, SECRET};
use common::tls::{send_connect, TestCa, Tunnel, TunnelOpts};
use common::wire::set_timeouts;
use common::{with_deadline, Chacha, Origin, TempDir};

const DEADLINE: Duration = Duration::from_secs(60);

/// A plain HTTP origin on a chosen loopback address that counts the connections it
/// accepted and answers every request `200 ok` (then closes).
struct Counting {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    /// Sentinel connections the test made itself.
    sentinels: AtomicU64,
    stop: Arc<AtomicBool>,
}

impl Counting {
    fn start(ip: &str) -> Counting {
        let listener = TcpListener::bind(format!("{ip}:0")).expect("bind loopback address");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                set_timeouts(&conn, Duration::from_secs(10));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        Counting {
            addr,
            accepted,
            sentinels: AtomicU64::new(0),
            stop,
        }
    }

    /// Connections accepted so far from anyone but the test itself: a sentinel request
    /// made directly is queued behind any connection chacha made before it, so once its
    /// answer is in, every earlier connection has been counted.
    fn others(&self) -> u64 {
        let mut s = TcpStream::connect(self.addr).expect("sentinel connect");
        set_timeouts(&s, Duration::from_secs(10));
        s.write_all(b"GET /sentinel HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(out.starts_with(b"HTTP/1.1 200"), "sentinel answered");
        let sentinels = self.sentinels.fetch_add(1, Ordering::SeqCst) + 1;
        self.accepted.load(Ordering::SeqCst) - sentinels
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// One request on a fresh connection to the proxy; (status, whole response text).
fn ask(proxy: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = TcpStream::connect(proxy).expect("connect to chacha");
    set_timeouts(&s, Duration::from_secs(20));
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    // Answers here are short and close the connection or carry Content-Length; read
    // what arrives until close or until the body is complete.
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| out.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn get(proxy: SocketAddr, url: &str) -> (u16, String) {
    ask(
        proxy,
        &format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

/// A config with interception (CA written into `dir`) and `extra` YAML.
fn with_interceptor(dir: &TempDir, ca: &TestCa, tls_extra: &str, extra: &str) -> String {
    let (cert, key) = ca.write(dir.path(), "ca");
    format!(
        "addr: 127.0.0.1:0\nworkers: 1\ntls-interceptor:\n  cert: \"{}\"\n  key: \"{}\"\n{tls_extra}{extra}",
        cert.display(),
        key.display()
    )
}

#[test]
fn denied_range_gets_403_naming_the_rule_and_no_connection() {
    with_deadline(DEADLINE, || {
        let denied = Counting::start("127.0.0.99");
        let denied_blind = Counting::start("127.0.0.99");
        let allowed = Counting::start("127.0.0.98");
        let dir = TempDir::new("dest-deny");
        let ca = TestCa::new("dest test CA");
        let yaml = with_interceptor(
            &dir,
            &ca,
            &format!(
                "  ports: [{}]\n  passthrough-ports: [{}]\n",
                denied.addr.port(),
                denied_blind.addr.port()
            ),
            "access:\n  destinations:\n    allow: [127.0.0.0/8]\n    deny: [127.0.0.99/32]\n",
        );
        let proxy = Chacha::start(&yaml);
        let want = "destination 127.0.0.99 is in access.destinations.deny (127.0.0.99/32)";

        let (status, text) = get(proxy.addr(), &format!("http://{}/x", denied.addr));
        assert_eq!(status, 403, "{text}");
        assert!(text.contains(want), "{text}");
        // The same address spelled in hex is the same destination.
        let hex = format!("http://0x7f.0.0.0x63:{}/x", denied.addr.port());
        let (status, text) = get(proxy.addr(), &hex);
        assert_eq!(status, 403, "{text}");
        assert!(text.contains(want), "{text}");

        // CONNECT, intercepted port: refused before any leaf or connection.
        let (_, status, text) =
            send_connect(proxy.addr(), &denied.addr.to_string(), b"").expect("CONNECT");
        assert_eq!(status, 403, "{text}");
        assert!(text.contains(want), "{text}");
        // CONNECT, blind (passthrough) port.
        let (_, status, text) =
            send_connect(proxy.addr(), &denied_blind.addr.to_string(), b"").expect("CONNECT");
        assert_eq!(status, 403, "{text}");
        assert!(text.contains(want), "{text}");

        assert_eq!(denied.others(), 0, "chacha connected to a denied address");
        assert_eq!(
            denied_blind.others(),
            0,
            "chacha connected to a denied address"
        );

        // Next door is allowed and reached.
        let (status, text) = get(proxy.addr(), &format!("http://{}/x", allowed.addr));
        assert_eq!(status, 200, "{text}");
        assert_eq!(allowed.others(), 1);
        assert!(
            !proxy.log().contains("minted leaf"),
            "no leaf for refused tunnels"
        );
    });
}

#[test]
fn default_policy_denies_loopback_with_the_line_that_allows_it() {
    with_deadline(DEADLINE, || {
        let origin = Counting::start("127.0.0.1");
        // `destinations: {}` so the harness adds no allow line: the defaults.
        let proxy = Chacha::start("addr: 127.0.0.1:0\nworkers: 1\naccess:\n  destinations: {}\n");
        let (status, text) = get(proxy.addr(), &format!("http://{}/x", origin.addr));
        assert_eq!(status, 403, "{text}");
        assert!(
            text.contains("destination 127.0.0.1 is loopback (denied by default; allow with access.destinations.allow: [127.0.0.0/8])"),
            "{text}"
        );
        // A name is checked on what it resolves to.
        let (status, text) = get(
            proxy.addr(),
            &format!("http://localhost:{}/x", origin.addr.port()),
        );
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("is loopback"), "{text}");
        assert_eq!(origin.others(), 0, "chacha connected to a denied address");
        assert!(
            proxy.wait_log("403", Duration::from_secs(5)),
            "the refusal is logged"
        );
    });
}

/// Decimal, hex, octal, short, IPv4-mapped IPv6 and trailing-dot spellings of
/// 127.0.0.1 get the decision 127.0.0.1 gets: denied by default, allowed when
/// 127.0.0.0/8 is.
#[test]
fn every_spelling_of_loopback_gets_the_same_decision() {
    with_deadline(DEADLINE, || {
        let origin = Counting::start("127.0.0.1");
        let port = origin.addr.port();
        let spellings = [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "0x7f.1",
            "0177.0.0.1",
            "0177.0.0.01",
            "127.1",
            "127.0.1",
            "127.0.0.1.",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "localhost.",
        ];
        let denying = Chacha::start("addr: 127.0.0.1:0\nworkers: 1\naccess:\n  destinations: {}\n");
        for host in spellings {
            let (status, text) = get(denying.addr(), &format!("http://{host}:{port}/x"));
            assert_eq!(status, 403, "{host}: {text}");
            // A name may resolve to ::1 first; both are loopback.
            let want = match host {
                "localhost." => " is loopback (denied by default",
                _ => "destination 127.0.0.1 is loopback (denied by default",
            };
            assert!(text.contains(want), "{host}: {text}");
        }
        assert_eq!(origin.others(), 0, "a spelling got through to loopback");
        drop(denying);

        let allowing = Chacha::start("addr: 127.0.0.1:0\nworkers: 1\n");
        for host in spellings {
            let (status, text) = get(allowing.addr(), &format!("http://{host}:{port}/x"));
            assert_eq!(status, 200, "{host}: {text}");
        }
        assert_eq!(origin.others(), spellings.len() as u64);
    });
}

#[test]
fn own_listening_address_is_denied_even_with_loopback_allowed() {
    with_deadline(DEADLINE, || {
        // The harness allows 127.0.0.0/8.
        let proxy = Chacha::start("addr: 127.0.0.1:0\nworkers: 1\n");
        let port = proxy.addr().port();
        for host in ["127.0.0.1", "127.0.0.2", "0x7f.1", "localhost", "0.0.0.0"] {
            let (status, text) = get(proxy.addr(), &format!("http://{host}:{port}/health"));
            assert_eq!(status, 403, "{host}: {text}");
            assert!(
                text.contains("chacha's own listening address"),
                "{host}: {text}"
            );
        }
        // Nothing came back in: every request logged is a refusal from outside.
        assert!(!proxy.log().contains("\"GET /health"), "{}", proxy.log());
    });
}

/// Deterministic bytes (xorshift64*), different per `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

const TUNNEL_BYTES: usize = 10 * 1024 * 1024;
const TRAILER: &[u8] = b"after-your-fin";

/// A raw TCP server that, per connection, sends [`TUNNEL_BYTES`] of noise while it
/// reads everything the client sends until its FIN, then sends [`TRAILER`] (so the
/// client's half-close must have been passed on, and the way back kept open) and
/// closes. Reports the SHA-256 of what it received.
fn start_raw_peer() -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let tx = tx.clone();
            thread::spawn(move || {
                set_timeouts(&conn, Duration::from_secs(30));
                let mut w = conn.try_clone().unwrap();
                let writer = thread::spawn(move || {
                    w.write_all(&noise(TUNNEL_BYTES, 2)).unwrap();
                    w
                });
                let mut got = Vec::new();
                let mut r = conn;
                r.read_to_end(&mut got).unwrap();
                let mut w = writer.join().unwrap();
                w.write_all(TRAILER).unwrap();
                let _ = w.shutdown(Shutdown::Write);
                let _ = tx.send(sha256(&got));
            });
        }
    });
    (addr, rx)
}

/// Sends [`TUNNEL_BYTES`] of noise up a CONNECT tunnel, half-closes, and reads
/// everything coming back; asserts both directions byte-exact.
fn exchange_through(
    proxy: SocketAddr,
    target: SocketAddr,
    rx: &std::sync::mpsc::Receiver<Vec<u8>>,
) {
    let (tcp, status, text) = send_connect(proxy, &target.to_string(), b"").expect("CONNECT");
    assert_eq!(status, 200, "{text}");
    let mut w = tcp.try_clone().unwrap();
    let up = noise(TUNNEL_BYTES, 1);
    let up_digest = sha256(&up);
    let writer = thread::spawn(move || {
        w.write_all(&up).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut down = Vec::new();
    let mut r = tcp;
    r.read_to_end(&mut down).expect("read the way back");
    writer.join().unwrap();
    let (body, trailer) = down.split_at(down.len().saturating_sub(TRAILER.len()));
    assert_eq!(
        trailer, TRAILER,
        "the answer sent after the client's FIN arrived"
    );
    assert_eq!(body.len(), TUNNEL_BYTES);
    assert!(
        sha256(body) == sha256(&noise(TUNNEL_BYTES, 2)),
        "origin->client bytes differ"
    );
    let received = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("peer digest");
    assert!(received == up_digest, "client->origin bytes differ");
}

#[test]
fn blind_tunnels_are_byte_exact_both_ways_and_mint_nothing() {
    with_deadline(DEADLINE, || {
        let (peer, rx) = start_raw_peer();
        let dir = TempDir::new("dest-blind");
        let ca = TestCa::new("dest test CA");
        let total = TUNNEL_BYTES + TRAILER.len();
        let line = format!(
            "tunnel: {TUNNEL_BYTES} bytes client->origin, {total} bytes origin->client, closed"
        );

        // A passthrough port (not in `ports`, which would have answered 406).
        let yaml = with_interceptor(
            &dir,
            &ca,
            &format!("  passthrough-ports: [{}]\n", peer.port()),
            "",
        );
        let proxy = Chacha::start(&yaml);
        exchange_through(proxy.addr(), peer, &rx);
        assert!(
            proxy.wait_log(&line, Duration::from_secs(10)),
            "{}",
            proxy.log()
        );
        assert!(!proxy.log().contains("minted leaf"), "{}", proxy.log());
        drop(proxy);

        // An intercepted port, but a host no `intercept` pattern matches.
        let yaml = with_interceptor(
            &dir,
            &ca,
            &format!(
                "  ports: [{}]\n  intercept: ['(^|\\.)intercepted\\.test$']\n",
                peer.port()
            ),
            "",
        );
        let proxy = Chacha::start(&yaml);
        exchange_through(proxy.addr(), peer, &rx);
        assert!(
            proxy.wait_log(&line, Duration::from_secs(10)),
            "{}",
            proxy.log()
        );
        assert!(!proxy.log().contains("minted leaf"), "{}", proxy.log());
    });
}

/// A blind tunnel with no byte either way for `timeouts.idle` is closed (and logged).
#[test]
fn idle_blind_tunnel_is_closed() {
    with_deadline(DEADLINE, || {
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = silent.local_addr().unwrap();
        let dir = TempDir::new("dest-idle");
        let ca = TestCa::new("dest test CA");
        let yaml = with_interceptor(
            &dir,
            &ca,
            &format!("  passthrough-ports: [{}]\n", target.port()),
            "timeouts:\n  idle: 1s\n",
        );
        let proxy = Chacha::start(&yaml);
        let (mut tcp, status, text) =
            send_connect(proxy.addr(), &target.to_string(), b"").expect("CONNECT");
        assert_eq!(status, 200, "{text}");
        let (_held, _) = silent.accept().expect("chacha connected");
        let start = Instant::now();
        let mut buf = [0u8; 16];
        assert_eq!(tcp.read(&mut buf).expect("closed, not reset"), 0);
        assert!(
            start.elapsed() >= Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );
        assert!(
            proxy.wait_log(
                "0 bytes origin->client, cut: idle for 1s",
                Duration::from_secs(5)
            ),
            "{}",
            proxy.log()
        );
    });
}

#[test]
fn blind_tunnel_to_a_closed_port_is_502() {
    with_deadline(DEADLINE, || {
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = TempDir::new("dest-closed");
        let ca = TestCa::new("dest test CA");
        let yaml = with_interceptor(
            &dir,
            &ca,
            &format!("  passthrough-ports: [{}]\n", closed.port()),
            "",
        );
        let proxy = Chacha::start(&yaml);
        let (_, status, text) =
            send_connect(proxy.addr(), &closed.to_string(), b"").expect("CONNECT");
        assert_eq!(status, 502, "{text}");
        assert!(text.contains("cannot connect to origin"), "{text}");
    });
}

/// A CONNECT to one host whose ClientHello names another in SNI is refused (no leaf),
/// unless `allow-sni-mismatch: true`.
#[test]
fn sni_naming_another_host_is_refused_unless_allowed() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let dir = TempDir::new("dest-sni");
        let ca = TestCa::new("dest test CA");
        let open = |proxy: &Chacha, sni: &str| {
            Tunnel::open(
                proxy.addr(),
                TunnelOpts {
                    authority: &format!("localhost:{}", origin.addr().port()),
                    server_name: sni,
                    client: ca.client_config(),
                    eager: false,
                },
            )
        };
        let tls = format!("  ports: [{}]\n", origin.addr().port());
        let proxy = Chacha::start(&with_interceptor(&dir, &ca, &tls, ""));
        let err = open(&proxy, "other.test")
            .err()
            .expect("a mismatched SNI is refused");
        assert!(err.contains("TLS handshake"), "{err}");
        assert!(
            proxy.wait_log(
                "TLS SNI \"other.test\" does not match the CONNECT host \"localhost\"",
                Duration::from_secs(5)
            ),
            "{}",
            proxy.log()
        );
        assert!(!proxy.log().contains("minted leaf for other.test"));
        // The same name in another case is no mismatch.
        open(&proxy, "LOCALHOST").expect("same host, other case");
        drop(proxy);

        let tls = format!(
            "  ports: [{}]\n  allow-sni-mismatch: true\n",
            origin.addr().port()
        );
        let proxy = Chacha::start(&with_interceptor(&dir, &ca, &tls, ""));
        let t = open(&proxy, "other.test").expect("allowed by the config");
        assert_eq!(t.peer_chain().len(), 2);
    });
}

/// Failed KV authentications: the first few get 401, then the source gets 429 without
/// a check (even with the right secret); another source is unaffected.
#[test]
fn failed_kv_authentications_are_rate_limited_per_source() {
    with_deadline(DEADLINE, || {
        let node = reserve_addr();
        let proxy = Chacha::start(&single_node_config(node, ""));
        let kv = |from: &str, secret: &str| -> (u16, String) {
            let local: SocketAddr = format!("{from}:0").parse().unwrap();
            let sock = connect_from(local, node);
            let mut s = sock;
            set_timeouts(&s, Duration::from_secs(10));
            s.write_all(&go_kv_request(
                "GET",
                node,
                Some(secret),
                "k",
                None,
                None,
                false,
            ))
            .unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while !out.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&out).into_owned();
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (status, text)
        };
        let start = Instant::now();
        let mut statuses = Vec::new();
        for _ in 0..50 {
            statuses.push(kv("127.0.0.1", "wrong-guess").0);
        }
        let elapsed = start.elapsed();
        let unauthorized = statuses.iter().filter(|&&s| s == 401).count();
        let limited = statuses.iter().filter(|&&s| s == 429).count();
        assert_eq!(unauthorized + limited, 50, "{statuses:?}");
        // 5 at once, then about one per second of the time the guesses took.
        assert!(
            unauthorized <= 5 + elapsed.as_secs() as usize + 1,
            "{unauthorized} guesses checked in {elapsed:?}: {statuses:?}"
        );
        // (The rest are refused: at least 44 less one a second, by the bound above.)
        // A token is back about a second after the last checked guess: guess until one
        // is checked, so that the two requests below come well inside that second
        // however long the guesses above took on a loaded machine.
        let primed = Instant::now();
        loop {
            let (status, text) = kv("127.0.0.1", "wrong-guess");
            assert!(status == 401 || status == 429, "{text}");
            if status == 401 {
                break;
            }
            assert!(
                primed.elapsed() < Duration::from_secs(10),
                "no guess checked"
            );
        }
        let (status, text) = kv("127.0.0.1", "wrong-guess");
        assert_eq!(status, 429, "{text}");
        assert!(text.contains("Retry-After: "), "{text}");
        // Even the right secret is not checked for this source now.
        assert_eq!(kv("127.0.0.1", SECRET).0, 429);
        // Another source with the right secret: a KV miss, as usual.
        let (status, text) = kv("127.0.0.2", SECRET);
        assert_eq!(status, 404, "{text}");
        // Logged once per episode, and a steady guesser stays in one episode: the
        // guesses above, the primed one and the refused ones are one warning, and the
        // episode has not ended (it ends only after the source has been quiet long
        // enough for a full bucket). Both lines come before the answer.
        let log = proxy.log();
        assert_eq!(
            log.matches("KV authentication: 5 failed attempts from 127.0.0.1")
                .count(),
            1,
            "{log}"
        );
        assert_eq!(
            log.matches("KV authentication from 127.0.0.1: no longer refused")
                .count(),
            0,
            "{log}"
        );
    });
}

/// A TCP connection to `to` from the local address `from` (std cannot bind before
/// connecting).
fn connect_from(from: SocketAddr, to: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
        panic!("IPv4 only")
    };
    let sa = |a: std::net::SocketAddrV4| {
        // SAFETY: plain old data, every field set below.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = a.port().to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
        sa
    };
    // SAFETY: socket, bind and connect on a fresh descriptor owned by the TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let stream = TcpStream::from_raw_fd(fd);
        let f = sa(from);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&f as *const libc::sockaddr_in).cast(), len),
            0,
            "bind {from}"
        );
        let t = sa(to);
        assert_eq!(
            libc::connect(fd, (&t as *const libc::sockaddr_in).cast(), len),
            0,
            "connect {to}"
        );
        stream
    }
}

/// Blind-tunnel throughput against a direct connection on loopback: 1 GiB from a
/// server to a client, three runs each, alternating. A report, not a check (timings on
/// a shared machine). Run with
/// `cargo test --release --test destinations tunnel_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "throughput report, not a check"]
fn tunnel_throughput() {
    const GIB: u64 = 1 << 30;
    const CHUNK: usize = 1 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            thread::spawn(move || {
                let buf = noise(CHUNK, 3);
                let mut sent = 0;
                while sent < GIB {
                    if conn.write_all(&buf).is_err() {
                        return;
                    }
                    sent += CHUNK as u64;
                }
            });
        }
    });
    let drain = |mut s: TcpStream| -> (u64, Duration) {
        let start = Instant::now();
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) => panic!("read: {e}"),
            }
        }
        (got, start.elapsed())
    };
    let dir = TempDir::new("dest-tput");
    let ca = TestCa::new("dest test CA");
    let yaml = with_interceptor(
        &dir,
        &ca,
        &format!("  passthrough-ports: [{}]\n", server.port()),
        "",
    );
    let proxy = Chacha::start(&yaml);
    let mib_s = |(n, d): (u64, Duration)| n as f64 / (1 << 20) as f64 / d.as_secs_f64();
    // utime + stime of the chacha process, in clock ticks (/proc/PID/stat fields 14, 15).
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", proxy.pid())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    // SAFETY: sysconf without side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (mut direct, mut tunnel, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let (n, d) = drain(TcpStream::connect(server).unwrap());
        assert_eq!(n, GIB);
        direct.push(mib_s((n, d)));
        let (tcp, status, _) = send_connect(proxy.addr(), &server.to_string(), b"").unwrap();
        assert_eq!(status, 200);
        let before = cpu_ticks();
        let (n, d) = drain(tcp);
        assert_eq!(n, GIB);
        tunnel.push(mib_s((n, d)));
        cpu.push((cpu_ticks() - before) as f64 * 1000.0 / hz);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (d, t) = (median(&mut direct), median(&mut tunnel));
    let c = median(&mut cpu);
    println!(
        "1 GiB origin->client, loopback, medians of 3: direct {d:.0} MiB/s, blind tunnel {t:.0} MiB/s ({:.2}x), chacha CPU {c:.0} ms per GiB; runs direct {direct:.0?}, tunnel {tunnel:.0?}, CPU ms {cpu:.0?}",
        t / d
    );
}

/// `access` is read at start: a reload that changes it says it needs a restart, and the
/// destination policy in force stays.
#[test]
fn reload_keeps_the_destination_policy_in_force() {
    with_deadline(DEADLINE, || {
        let origin = Counting::start("127.0.0.1");
        let yaml = "addr: 127.0.0.1:0\nworkers: 1\naccess:\n  destinations: {}\n";
        let proxy = Chacha::start(yaml);
        let url = format!("http://{}/x", origin.addr);
        assert_eq!(get(proxy.addr(), &url).0, 403);
        std::fs::write(
            proxy.config_path(),
            "addr: 127.0.0.1:0\nworkers: 1\naccess:\n  destinations:\n    allow: [127.0.0.0/8]\n",
        )
        .unwrap();
        proxy.signal(libc::SIGHUP);
        assert!(
            proxy.wait_log("access changed: needs a restart", Duration::from_secs(10)),
            "{}",
            proxy.log()
        );
        assert_eq!(get(proxy.addr(), &url).0, 403);
        assert_eq!(origin.others(), 0);
    });
}

/// The metrics admin listener is chacha's own address too: never a destination, even
/// with loopback allowed.
#[test]
fn metrics_admin_address_is_denied_as_a_destination() {
    with_deadline(DEADLINE, || {
        let proxy = Chacha::start("addr: 127.0.0.1:0\nworkers: 1\nmetrics:\n  addr: 127.0.0.1:0\n");
        let needle = "GET /metrics served on http://";
        assert!(
            proxy.wait_log(needle, Duration::from_secs(5)),
            "{}",
            proxy.log()
        );
        let log = proxy.log();
        let rest = &log[log.find(needle).unwrap() + needle.len()..];
        let admin: SocketAddr = rest[..rest.find('/').unwrap()].parse().unwrap();
        let (status, text) = get(proxy.addr(), &format!("http://{admin}/metrics"));
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("chacha's own listening address"), "{text}");
    });
}
