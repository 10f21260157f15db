//! Issue 4: HTTPS through chacha. Clients CONNECT, chacha terminates their TLS with a leaf
//! it mints from the `tls-interceptor` CA, and the decrypted requests run through the
//! cache pipeline as `https://` URLs; chacha reaches the origin over verified TLS.
//!
//! The origin is the plain in-test origin behind a TLS front ([`TlsFront`]) with its own
//! test CA, which chacha trusts through `SSL_CERT_FILE`; the clients trust only chacha's
//! CA.

mod common;

use common::cached::wait_until;
use common::gen::Verifier;
use common::origin::{self, Request as OReq, Response as OResp};
use common::tls::{get_in_tunnel, send_connect, TestCa, TlsFront, Tunnel, TunnelOpts};
use common::wire::Wire;
use common::{run_to_exit, with_deadline, Chacha, Origin, Response, TempDir};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Deadline for an ordinary test.
const DEADLINE: Duration = Duration::from_secs(60);
/// ETag of every object [`routes`] serves with validators.
const ETAG: &str = "\"tls-v1\"";
/// How long chacha may take to close a tunnel it gave up on.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Origin routes: `/obj/{len}` a generated body with an ETag (304 when it matches),
/// `/slow/{len}` the same streamed slowly; everything else [`origin::standard_routes`].
fn routes(req: &OReq) -> OResp {
    let path = req.path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let len: u64 = parts.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let full = match parts[0] {
        "obj" => OResp::generated(len),
        "slow" => OResp::generated(len).chunk_delay(Duration::from_millis(20)),
        _ => return origin::standard_routes(req),
    };
    let resp = if req.header("if-none-match") == Some(ETAG) {
        OResp::status(304)
    } else {
        full
    };
    resp.header("ETag", ETAG)
}

/// chacha with interception, a trusted TLS origin and an untrusted one.
struct Setup {
    chacha: Chacha,
    origin: Origin,
    /// Presents a certificate from `origin_ca` (trusted by chacha).
    front: TlsFront,
    /// Presents a certificate from a CA chacha does not trust.
    rogue: TlsFront,
    chacha_ca: TestCa,
    dir: TempDir,
}

impl Setup {
    fn start(workers: u32, extra_yaml: &str) -> Setup {
        let dir = TempDir::new("tls");
        let chacha_ca = TestCa::new("chacha interception test CA");
        let origin_ca = TestCa::new("origin test CA");
        let rogue_ca = TestCa::new("untrusted test CA");
        let (ca_cert, ca_key) = chacha_ca.write(dir.path(), "chacha-ca");
        let (origin_ca_cert, _) = origin_ca.write(dir.path(), "origin-ca");
        let origin = Origin::start(routes);
        let names = ["localhost", "127.0.0.1"];
        let front = TlsFront::start(origin.addr(), origin_ca.server_config(&names));
        let rogue = TlsFront::start(origin.addr(), rogue_ca.server_config(&names));
        let yaml = format!(
            "addr: 127.0.0.1:0\nworkers: {workers}\ndisk:\n  dir: \"{}\"\n  limit: 100MB\n\
             tls-interceptor:\n  cert: \"{}\"\n  key: \"{}\"\n  ports: [{}, {}]\n{extra_yaml}",
            common::chacha::DIR_PLACEHOLDER,
            ca_cert.display(),
            ca_key.display(),
            front.port(),
            rogue.port(),
        );
        let chacha = Chacha::start_with_env(
            &yaml,
            "info",
            &[("SSL_CERT_FILE", origin_ca_cert.to_str().unwrap())],
        );
        Setup {
            chacha,
            origin,
            front,
            rogue,
            chacha_ca,
            dir,
        }
    }

    fn tunnel_to(&self, host: &str, port: u16, eager: bool) -> Result<Tunnel, String> {
        Tunnel::open(
            self.chacha.addr(),
            TunnelOpts {
                authority: &format!("{host}:{port}"),
                server_name: host,
                client: self.chacha_ca.client_config(),
                eager,
            },
        )
    }

    /// A tunnel to the trusted origin as `localhost`.
    fn tunnel(&self) -> Tunnel {
        self.tunnel_to("localhost", self.front.port(), false)
            .expect("open tunnel")
    }

    fn mints(&self, host: &str) -> usize {
        self.chacha
            .log()
            .matches(&format!("minted leaf for {host}\n"))
            .count()
    }
}

fn get_ok(t: &mut Tunnel, path: &str) -> Response {
    let r = t
        .request(get_in_tunnel("localhost", path))
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
    assert_eq!(r.status(), 200, "GET {path}: {}", r.body_str());
    r
}

fn cache_status(r: &Response) -> String {
    r.header("cache-status").unwrap_or("").to_string()
}

fn assert_generated(body: &[u8], len: u64) {
    let mut v = Verifier::new();
    v.feed(body);
    v.assert_complete(len);
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn cold_fill_then_warm_hit_over_connect() {
    with_deadline(DEADLINE, || {
        let s = Setup::start(1, "");
        let mut t = s.tunnel();
        let r = get_ok(&mut t, "/obj/100000");
        assert_generated(&r.body, 100_000);
        assert_eq!(cache_status(&r), "chacha; fwd=miss; fwd-status=200; stored");
        // Same tunnel, keep-alive: the origin is asked conditionally and answers 304.
        let r = get_ok(&mut t, "/obj/100000");
        assert_generated(&r.body, 100_000);
        assert_eq!(cache_status(&r), "chacha; hit");
        let served = s.origin.settled();
        assert_eq!((served.full_bodies, served.not_modified), (1, 1));
        let last = s.origin.last_request().unwrap();
        assert_eq!(last.header("if-none-match"), Some(ETAG));
        // The origin sees origin form and the tunnel's authority as Host.
        assert_eq!(last.target, "/obj/100000");
        let authority = format!("localhost:{}", s.front.port());
        assert_eq!(last.header("host"), Some(authority.as_str()));
        // The URL chacha worked with is the https one (its access line follows the response).
        assert!(
            s.chacha.wait_log(
                &format!("\"GET https://{authority}/obj/100000\" 200"),
                Duration::from_secs(5)
            ),
            "{}",
            s.chacha.log()
        );
        // A new tunnel to the same host: another hit, and no new signing.
        let mut t2 = s.tunnel();
        let r = get_ok(&mut t2, "/obj/100000");
        assert_eq!(cache_status(&r), "chacha; hit");
        assert_eq!(s.origin.settled().full_bodies, 1);
        assert_eq!(s.mints("localhost"), 1, "{}", s.chacha.log());
        // One verified upstream TLS connection carried all three requests (the pool).
        assert_eq!(s.front.handshakes(), 1);
    });
}

#[test]
fn large_object_fill_and_hit_through_tunnel() {
    with_deadline(DEADLINE, || {
        let s = Setup::start(1, "");
        let len = 20 * 1024 * 1024 + 3;
        for expect in ["chacha; fwd=miss; fwd-status=200; stored", "chacha; hit"] {
            let mut t = s.tunnel();
            let r = get_ok(&mut t, &format!("/obj/{len}"));
            assert_generated(&r.body, len);
            assert_eq!(cache_status(&r), expect);
        }
        assert_eq!(s.origin.settled().full_bodies, 1);
    });
}

#[test]
fn presented_leaf_has_san_chain_and_validity() {
    with_deadline(DEADLINE, || {
        let s = Setup::start(1, "");
        let (_, ca) = x509_parser::parse_x509_certificate(&s.chacha_ca.cert_der).unwrap();
        let tls12 = s
            .chacha_ca
            .client_config_versions(&[&rustls::version::TLS12]);
        let cases = [
            ("localhost", s.chacha_ca.client_config()),
            ("127.0.0.1", s.chacha_ca.client_config()),
            ("localhost", tls12),
        ];
        for (host, client) in cases {
            let t = Tunnel::open(
                s.chacha.addr(),
                TunnelOpts {
                    authority: &format!("{host}:{}", s.front.port()),
                    server_name: host,
                    client,
                    eager: false,
                },
            )
            .unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!(t.conn().alpn_protocol(), Some(&b"http/1.1"[..]));
            let chain = t.peer_chain();
            assert_eq!(chain.len(), 2, "leaf + CA");
            assert_eq!(chain[1], s.chacha_ca.cert_der, "chain ends at chacha's CA");
            let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
            leaf.verify_signature(Some(ca.public_key()))
                .expect("leaf signed by the CA");
            assert_ne!(leaf.public_key().raw, ca.public_key().raw, "fresh key pair");
            assert!(!leaf.is_ca());
            let san = leaf
                .subject_alternative_name()
                .unwrap()
                .expect("SAN present");
            let names: Vec<String> = san
                .value
                .general_names
                .iter()
                .map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => format!("dns:{d}"),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                    other => format!("{other:?}"),
                })
                .collect();
            let want = if host == "127.0.0.1" {
                "ip:[127, 0, 0, 1]".to_string()
            } else {
                format!("dns:{host}")
            };
            assert_eq!(names, vec![want]);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let v = leaf.validity();
            // Back-dated for clock skew, valid well beyond now.
            assert!(v.not_before.timestamp() <= now - 60, "{v:?}");
            assert!(v.not_after.timestamp() >= now + 3600, "{v:?}");
        }
        // localhost was minted once although two tunnels (TLS 1.3 and 1.2) used it.
        assert_eq!(s.mints("localhost"), 1, "{}", s.chacha.log());
        assert_eq!(s.mints("127.0.0.1"), 1, "{}", s.chacha.log());
    });
}

#[test]
fn client_hello_sent_with_the_connect_head_is_not_lost() {
    with_deadline(DEADLINE, || {
        let s = Setup::start(1, "");
        let mut t = s
            .tunnel_to("localhost", s.front.port(), true)
            .expect("eager tunnel");
        let r = get_ok(&mut t, "/static/eager");
        assert_eq!(r.body, origin::static_body("/static/eager"));
    });
}

#[test]
fn untrusted_origin_certificate_gives_502_with_reason() {
    with_deadline(DEADLINE, || {
        let s = Setup::start(1, "");
        let mut t = s
            .tunnel_to("localhost", s.rogue.port(), false)
            .expect("tunnel to the rogue origin opens (chacha's own cert is fine)");
        let r = t
            .request(get_in_tunnel("localhost", "/static/x"))
            .expect("a response");
        assert_eq!(r.status(), 502, "{}", r.body_str());
        assert!(
            r.body_str().contains("UnknownIssuer"),
            "reason in the body: {}",
            r.body_str()
        );
        // Never downgraded: the origin saw no request at all.
        assert_eq!(s.origin.requests_total(), 0);
    });
}

#[test]
fn connect_to_a_port_not_listed_gets_406() {
    with_deadline(DEADLINE, || {
        let s = Setup::start(1, "");
        let (_, status, text) = send_connect(s.chacha.addr(), "localhost:1", b"").unwrap();
        assert_eq!(status, 406, "{text}");
    });
}

#[test]
fn connect_without_interceptor_gets_405() {
    with_deadline(DEADLINE, || {
        let chacha = Chacha::start(&common::config(""));
        let (_, status, text) = send_connect(chacha.addr(), "localhost:443", b"").unwrap();
        assert_eq!(status, 405, "{text}");
    });
}

#[test]
fn bad_interception_ca_exits_2_naming_the_file() {
    with_deadline(DEADLINE, || {
        let dir = TempDir::new("badca");
        let a = TestCa::new("CA a");
        let b = TestCa::new("CA b");
        let (a_cert, _) = a.write(dir.path(), "a");
        let (_, b_key) = b.write(dir.path(), "b");
        let missing = dir.path().join("missing.crt");
        for (cert, key, named) in [
            (&a_cert, &b_key, &b_key), // key of another CA
            (&missing, &b_key, &missing),
        ] {
            let yaml = format!(
                "addr: 127.0.0.1:0\ntls-interceptor:\n  cert: \"{}\"\n  key: \"{}\"\n",
                cert.display(),
                key.display()
            );
            let out = run_to_exit("run", &yaml, Duration::from_secs(20));
            assert_eq!(out.code(), Some(2), "{out:?}");
            assert!(
                out.stderr.contains(named.to_str().unwrap()),
                "names {}: {}",
                named.display(),
                out.stderr
            );
            assert!(!out.stderr.contains("listening on"), "{}", out.stderr);
        }
    });
}

/// Reads until the server closes the connection; true when it did within `timeout`.
fn closed_within(stream: std::net::TcpStream, timeout: Duration) -> bool {
    let mut w = Wire::new(stream);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if w.closed_within(Duration::from_millis(200)) {
            return true;
        }
    }
    false
}

#[test]
fn failed_tunnels_close_cleanly_and_leak_nothing() {
    with_deadline(DEADLINE, || {
        let s = Setup::start(1, "timeouts:\n  client-head: 1s\n");
        let authority = format!("localhost:{}", s.front.port());
        // Warm up: one good exchange, so the pooled origin connection and the leaf exist.
        let mut t = s.tunnel();
        get_ok(&mut t, "/static/warm");
        // The baseline is taken once chacha closed the warm-up tunnel's client socket.
        let open = fd_count(s.chacha.pid());
        drop(t);
        assert!(
            wait_until(CLOSE_WAIT, || fd_count(s.chacha.pid()) < open),
            "the warm-up tunnel's socket is still open ({open} fds)"
        );
        let baseline = fd_count(s.chacha.pid());

        let mut workers = Vec::new();
        for i in 0..4 {
            let (addr, authority) = (s.chacha.addr(), authority.clone());
            workers.push(thread::spawn(move || {
                // Garbage instead of a ClientHello.
                let (tcp, status, _) =
                    send_connect(addr, &authority, b"this is not TLS\r\n\r\n").unwrap();
                assert_eq!(status, 200);
                assert!(closed_within(tcp, CLOSE_WAIT), "garbage {i}: still open");
                // A client that never starts the handshake: closed at client-head (1 s).
                let (tcp, status, _) = send_connect(addr, &authority, b"").unwrap();
                assert_eq!(status, 200);
                assert!(closed_within(tcp, CLOSE_WAIT), "silent {i}: still open");
                // A client that stops in the middle of its ClientHello.
                let (tcp, status, _) =
                    send_connect(addr, &authority, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
                assert_eq!(status, 200);
                assert!(closed_within(tcp, CLOSE_WAIT), "partial {i}: still open");
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
        // A client that rejects our certificate (it trusts another CA).
        let other = TestCa::new("not chacha");
        let err = Tunnel::open(
            s.chacha.addr(),
            TunnelOpts {
                authority: &authority,
                server_name: "localhost",
                client: other.client_config(),
                eager: false,
            },
        )
        .err()
        .expect("the client rejects chacha's certificate");
        assert!(err.contains("TLS handshake"), "{err}");

        // chacha keeps serving, and every failed tunnel's descriptors are gone.
        let mut t = s.tunnel();
        get_ok(&mut t, "/static/after");
        drop(t);
        wait_until(CLOSE_WAIT, || fd_count(s.chacha.pid()) <= baseline);
        assert!(
            fd_count(s.chacha.pid()) <= baseline,
            "fds {} > baseline {baseline}",
            fd_count(s.chacha.pid())
        );
        for line in ["client TLS handshake failed", "no TLS handshake within"] {
            assert!(s.chacha.wait_log(line, CLOSE_WAIT), "{}", s.chacha.log());
        }
    });
}

#[test]
fn requests_inside_a_tunnel_never_reach_internal_endpoints_or_nest() {
    with_deadline(DEADLINE, || {
        let s = Setup::start(1, "");
        let mut t = s.tunnel();
        // Origin form inside the tunnel is the origin's /health, not chacha's.
        let r = t.request(get_in_tunnel("localhost", "/health")).unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.body_str(), "not found");
        assert_eq!(s.origin.requests_for("/health"), 1);
        // Absolute form naming another host is refused.
        let r = t
            .request("GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .unwrap();
        assert_eq!(r.status(), 400);
        // No CONNECT inside a tunnel.
        let mut t = s.tunnel();
        let r = t
            .request("CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n")
            .unwrap();
        assert_eq!(r.status(), 405);
    });
}

#[test]
fn concurrent_tunnels_share_one_fill() {
    with_deadline(DEADLINE, || {
        let s = Setup::start(2, "");
        let len: u64 = 2 * 1024 * 1024;
        let path = format!("/slow/{len}");
        let mut first = s.tunnel();
        // Opened now, so that its request goes out as soon as the fill is under way.
        let mut second = s.tunnel();
        let p = path.clone();
        let filler = thread::spawn(move || {
            let r = get_ok(&mut first, &p);
            (r, first)
        });
        // The leader registers its fill before it asks the origin (src/proxy/cached.rs,
        // `lead_or_join` before `revalidate`): once the request arrived, a second one joins.
        assert!(s.origin.wait_requests(1, Duration::from_secs(10)));
        let r = get_ok(&mut second, &path);
        assert_generated(&r.body, len);
        assert_eq!(cache_status(&r), "chacha; hit; collapsed");
        let (r, _) = filler.join().unwrap();
        assert_generated(&r.body, len);
        assert_eq!(cache_status(&r), "chacha; fwd=miss; fwd-status=200; stored");
        assert_eq!(s.origin.settled().full_bodies, 1);
    });
}

/// Fails the test unless curl runs: a machine without it must not pass the test unrun
/// (deselect it there explicitly: `cargo test --test tls -- --skip curl_end_to_end`).
fn require_curl() {
    if let Err(e) = Command::new("curl").arg("--version").output() {
        panic!("this test needs curl on PATH: {e}");
    }
}

/// curl through chacha: `--proxy` and `--cacert chacha-ca.crt`; returns (headers, body).
fn curl(proxy: SocketAddr, cacert: &Path, url: &str, dir: &Path) -> (String, Vec<u8>) {
    let headers = dir.join("curl-headers");
    let body = dir.join("curl-body");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--proxy"])
        .arg(format!("http://{proxy}"))
        .arg("--cacert")
        .arg(cacert)
        .arg("-D")
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .arg(url)
        // A NO_PROXY listing localhost would make curl bypass --proxy.
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(headers).unwrap(),
        std::fs::read(body).unwrap(),
    )
}

#[test]
fn curl_end_to_end() {
    require_curl();
    with_deadline(DEADLINE, || {
        let s = Setup::start(1, "");
        let cacert = s.dir.path().join("chacha-ca.crt");
        let url = format!("https://localhost:{}/static/curl", s.front.port());
        let (headers, body) = curl(s.chacha.addr(), &cacert, &url, s.dir.path());
        assert_eq!(body, origin::static_body("/static/curl"));
        let lower = headers.to_ascii_lowercase();
        assert!(lower.contains("200 connection established"), "{headers}");
        assert!(
            lower.contains("cache-status: chacha; fwd=miss; fwd-status=200; stored"),
            "{headers}"
        );
        let (headers, body) = curl(s.chacha.addr(), &cacert, &url, s.dir.path());
        assert_eq!(body, origin::static_body("/static/curl"));
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("cache-status: chacha; hit"),
            "{headers}"
        );
        assert_eq!(s.origin.settled().full_bodies, 1);
    });
}

#[test]
fn tunnel_errors_from_a_broken_client_do_not_affect_others() {
    with_deadline(DEADLINE, || {
        let s = Setup::start(1, "");
        let mut t = s.tunnel();
        // A request head that never completes inside a tunnel does not stop others.
        t.wire.write_all(b"GET /static/a HTTP/1.1\r\nHo").unwrap();
        let mut t2 = s.tunnel();
        let r = get_ok(&mut t2, "/static/b");
        assert_eq!(r.body, origin::static_body("/static/b"));
        drop(t);
    });
}
