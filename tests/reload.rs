//! Issue 11, live reload: SIGHUP re-reads the `-f` config file. Each test runs a real
//! chacha, rewrites its config, sends SIGHUP, waits for the line that ends the reload and
//! then checks the new behaviour (rules, the interception CA, disk.limit, timeouts, the
//! cluster node list, log-format), that a file with errors changes nothing, that keys
//! needing a restart are reported while the rest applies, and that what was in flight
//! during a reload completes.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::cached::{assert_hit, assert_stored, entry_files, fetch, wait_until};
use common::chacha::DIR_PLACEHOLDER;
use common::cluster::{node_config, reserve_addrs, NodeOpts};
use common::gen::Verifier;
use common::origin::{self, Request as OReq, Response as OResp};
use common::reload::{reload, sighup};
use common::tls::{get_in_tunnel, TestCa, TlsFront, Tunnel, TunnelOpts};
use common::{get, with_deadline, Chacha, Conn, Origin, TempDir};

const DEADLINE: Duration = Duration::from_secs(60);
const ETAG: &str = "\"reload-v1\"";

/// `/obj/{len}`: a generated body with an ETag (304 when it matches); `/slow/{len}`: the
/// same, chunked and slow; everything else [`origin::standard_routes`].
fn routes(req: &OReq) -> OResp {
    let path = req.path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let len: u64 = parts.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let full = match parts[0] {
        "obj" => OResp::generated(len),
        "slow" => OResp::generated_chunked(len).chunk_delay(Duration::from_millis(30)),
        _ => return origin::standard_routes(req),
    };
    let resp = if req.header("if-none-match") == Some(ETAG) {
        OResp::status(304)
    } else {
        full
    };
    resp.header("ETag", ETAG)
}

/// One worker, a fresh cache dir of `limit`, and `extra` top-level YAML.
fn config(limit: &str, extra: &str) -> String {
    format!("addr: 127.0.0.1:0\nworkers: 1\ndisk:\n  dir: \"{DIR_PLACEHOLDER}\"\n  limit: {limit}\n{extra}")
}

/// The same config with the port chacha listens on (so that only what the test
/// changes differs).
fn config_at(c: &Chacha, limit: &str, extra: &str) -> String {
    config(limit, extra).replace("127.0.0.1:0", &c.addr().to_string())
}

const SIG_RULE: &str = "rules:\n  - pattern: '/static/'\n    ignore-parameters: [sig]\n";

fn get_path(c: &Chacha, o: &Origin, path: &str) -> common::Response {
    fetch(c.addr(), get(&o.authority(), path))
}

fn assert_generated(body: &[u8], len: u64) {
    let mut v = Verifier::new();
    v.feed(body);
    v.assert_complete(len);
}

#[test]
fn rules_reload_changes_the_cache_key() {
    with_deadline(DEADLINE, || {
        let o = Origin::start(routes);
        let c = Chacha::start(&config("100MB", ""));
        // No rule: `sig` is part of the key, two signatures are two entries.
        assert_stored(&get_path(&c, &o, "/static/a?sig=1"));
        assert_stored(&get_path(&c, &o, "/static/a?sig=2"));
        let line = reload(&c, &config_at(&c, "100MB", SIG_RULE));
        assert!(line.contains("reload: rules 0→1"), "{line}");
        // The rule leaves `sig` out of the key: a new signature fills `/static/a` once,
        // another one hits it.
        assert_stored(&get_path(&c, &o, "/static/a?sig=3"));
        let r = get_path(&c, &o, "/static/a?sig=4");
        assert_hit(&r);
        assert_eq!(r.body, origin::static_body("/static/a"));
        // And back: without the rule a new signature is a new entry again.
        let line = reload(&c, &config_at(&c, "100MB", ""));
        assert!(line.contains("reload: rules 1→0"), "{line}");
        assert_stored(&get_path(&c, &o, "/static/a?sig=5"));
    });
}

#[test]
fn sighup_without_changes_says_so() {
    with_deadline(DEADLINE, || {
        let c = Chacha::start(&config("100MB", SIG_RULE));
        let line = sighup(&c);
        assert!(line.contains("reload: no changes"), "{line}");
    });
}

/// chacha intercepting CONNECT to a TLS front of the in-test origin; the CA files live
/// in `dir`.
struct Tls {
    chacha: Chacha,
    front: TlsFront,
    _origin: Origin,
    dir: TempDir,
}

impl Tls {
    fn yaml(&self, stem: &str) -> String {
        tls_yaml(&self.dir, stem, self.front.port())
            .replace("127.0.0.1:0", &self.chacha.addr().to_string())
    }

    fn tunnel(&self, ca: &TestCa) -> Result<Tunnel, String> {
        Tunnel::open(
            self.chacha.addr(),
            TunnelOpts {
                authority: &format!("localhost:{}", self.front.port()),
                server_name: "localhost",
                client: ca.client_config(),
                eager: false,
            },
        )
    }
}

fn tls_yaml(dir: &TempDir, stem: &str, port: u16) -> String {
    let p = |ext: &str| dir.path().join(format!("{stem}{ext}"));
    config(
        "100MB",
        &format!(
            "tls-interceptor:\n  cert: \"{}\"\n  key: \"{}\"\n  ports: [{port}]\n",
            p(".crt").display(),
            p(".key").display()
        ),
    )
}

fn tls_get(t: &mut Tunnel, path: &str) -> common::Response {
    t.request(get_in_tunnel("localhost", path))
        .unwrap_or_else(|e| panic!("GET {path} in tunnel: {e:?}"))
}

#[test]
fn ca_rotation_mints_from_the_new_ca_and_keeps_open_tunnels() {
    with_deadline(DEADLINE, || {
        let dir = TempDir::new("reload-ca");
        let old_ca = TestCa::new("reload test CA one");
        let new_ca = TestCa::new("reload test CA two");
        let origin_ca = TestCa::new("reload origin CA");
        old_ca.write(dir.path(), "one");
        new_ca.write(dir.path(), "two");
        let (origin_ca_cert, _) = origin_ca.write(dir.path(), "origin");
        let origin = Origin::start(routes);
        let front = TlsFront::start(
            origin.addr(),
            origin_ca.server_config(&["localhost", "127.0.0.1"]),
        );
        let chacha = Chacha::start_with_env(
            &tls_yaml(&dir, "one", front.port()),
            "info",
            &[("SSL_CERT_FILE", origin_ca_cert.to_str().unwrap())],
        );
        let s = Tls {
            chacha,
            front,
            _origin: origin,
            dir,
        };
        let mut before = s.tunnel(&old_ca).expect("tunnel with the first CA");
        assert_eq!(tls_get(&mut before, "/obj/1000").status(), 200);

        let line = reload(&s.chacha, &s.yaml("two"));
        assert!(line.contains("tls-interceptor CA rotated"), "{line}");

        // A new tunnel gets a leaf from the new CA: it verifies with the new CA only.
        let mut after = s.tunnel(&new_ca).expect("tunnel verified with the new CA");
        let r = tls_get(&mut after, "/obj/1000");
        assert_eq!(r.status(), 200);
        assert_generated(&r.body, 1000);
        let refused = s
            .tunnel(&old_ca)
            .err()
            .expect("the old CA no longer verifies");
        assert!(refused.contains("TLS handshake"), "{refused}");
        // The tunnel opened before the reload keeps working (same TLS session).
        let r = tls_get(&mut before, "/obj/1000");
        assert_eq!(r.status(), 200);
        assert_hit(&r);
        assert_generated(&r.body, 1000);
    });
}

/// Waits until `c`'s cache holds exactly `n` entry files (a fill commits its entry after
/// its client has the whole body); panics with what it holds otherwise.
fn wait_entries(c: &Chacha, n: usize) {
    assert!(
        wait_until(Duration::from_secs(10), || entry_files(c.dir()).len() == n),
        "expected {n} entry files, found {:?}",
        entry_files(c.dir())
    );
}

#[test]
fn disk_limit_shrink_evicts_down_to_the_new_limit() {
    with_deadline(DEADLINE, || {
        let o = Origin::start(routes);
        let c = Chacha::start(&config("100MB", ""));
        let len = 1_000_000u64;
        for i in 0..5 {
            assert_stored(&get_path(&c, &o, &format!("/obj/{len}?n={i}")));
        }
        // The last fill is committed after its client has the body: wait for its file.
        wait_entries(&c, 5);
        // Each entry is its body plus a header of at most a few KiB: 2.5 MB holds two.
        let line = reload(&c, &config_at(&c, "2500KB", ""));
        assert!(
            line.contains("disk.limit 100MB→2500KB (evicted 3 entries"),
            "{line}"
        );
        // Evicted at once, the least recently used first.
        let files = entry_files(c.dir());
        assert_eq!(files.len(), 2, "{files:?}");
        let bytes: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert!(bytes <= 2_500_000, "{bytes} bytes on disk");
        for i in [3, 4] {
            assert_hit(&get_path(&c, &o, &format!("/obj/{len}?n={i}")));
        }
        assert_stored(&get_path(&c, &o, &format!("/obj/{len}?n=0")));
        assert!(entry_files(c.dir()).len() <= 2);
        // Growing just allows more again.
        let line = reload(&c, &config_at(&c, "100MB", ""));
        assert!(line.contains("disk.limit 2500KB→100MB"), "{line}");
        for i in [1, 2] {
            assert_stored(&get_path(&c, &o, &format!("/obj/{len}?n={i}")));
        }
        wait_entries(&c, 4);
    });
}

#[test]
fn shorter_upstream_head_timeout_applies_to_the_next_request() {
    with_deadline(DEADLINE, || {
        let o = Origin::start(routes);
        let c = Chacha::start(&config("100MB", ""));
        // A keep-alive connection opened before the reload.
        let mut conn = Conn::connect(c.addr());
        let r = conn
            .request(get(&o.authority(), "/delay-head/300"))
            .unwrap();
        assert_eq!(r.status(), 200);
        let line = reload(
            &c,
            &config_at(&c, "100MB", "timeouts:\n  upstream-head: 200ms\n"),
        );
        assert!(line.contains("timeouts.upstream-head 60s→200ms"), "{line}");
        let start = Instant::now();
        let r = conn
            .request(get(&o.authority(), "/delay-head/3000"))
            .unwrap();
        assert_eq!(r.status(), 504, "{}", r.body_str());
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    });
}

#[test]
fn a_fill_in_flight_during_a_reload_completes() {
    with_deadline(DEADLINE, || {
        let o = Origin::start(routes);
        let c = Chacha::start(&config("100MB", ""));
        let len = 200_000u64;
        let (addr, authority) = (c.addr(), o.authority());
        // ~100 chunks 30 ms apart: the reload lands in the middle of it.
        let slow = thread::spawn(move || fetch(addr, get(&authority, &format!("/slow/{len}"))));
        assert!(o.wait_requests(1, Duration::from_secs(10)));
        let line = reload(
            &c,
            &config_at(
                &c,
                "50MB",
                &format!("{SIG_RULE}timeouts:\n  upstream-body: 5s\n  idle: 5s\n"),
            ),
        );
        assert!(line.contains("rules 0→1"), "{line}");
        assert!(line.contains("disk.limit 100MB→50MB"), "{line}");
        let r = slow.join().unwrap();
        assert_eq!(r.status(), 200);
        assert_stored(&r);
        assert_generated(&r.body, len);
        // Stored under the key it started with, served to the next request.
        let r = get_path(&c, &o, &format!("/slow/{len}"));
        assert_hit(&r);
        assert_generated(&r.body, len);
    });
}

#[test]
fn invalid_config_is_rejected_and_the_old_one_stays() {
    with_deadline(DEADLINE, || {
        let o = Origin::start(routes);
        let c = Chacha::start(&config("100MB", SIG_RULE));
        assert_stored(&get_path(&c, &o, "/static/b?sig=1"));
        // Line 5 holds a bad size, line 7 a bad regex.
        let bad = config_at(
            &c,
            "5XB",
            "rules:\n  - pattern: '('\n    ignore-parameters: []\n",
        );
        let line = reload(&c, &bad);
        assert!(
            line.contains("reload rejected: 2 problem(s)")
                && line.contains("the config in force stays"),
            "{line}"
        );
        let log = c.log();
        assert!(log.contains("config.yaml:5: disk.limit: "), "{log}");
        assert!(
            log.contains("config.yaml:7: rules[0].pattern: invalid regular expression"),
            "{log}"
        );
        // Behaviour unchanged: the old rule still leaves `sig` out, the limit is as it was.
        assert_hit(&get_path(&c, &o, "/static/b?sig=2"));
        assert_stored(&get_path(&c, &o, "/obj/100000"));
        // The old config is what a later good reload is compared with.
        let line = reload(&c, &config_at(&c, "100MB", SIG_RULE));
        assert!(line.contains("reload: no changes"), "{line}");
    });
}

#[test]
fn restart_only_keys_are_reported_and_the_rest_applies() {
    with_deadline(DEADLINE, || {
        let o = Origin::start(routes);
        let c = Chacha::start(&config("100MB", ""));
        let old_addr = c.addr();
        let other_dir = TempDir::new("reload-other-dir");
        // Port 1: another address than the one in force (never bound by this test).
        let changed = config("100MB", SIG_RULE)
            .replace("127.0.0.1:0", "127.0.0.1:1")
            .replace("workers: 1", "workers: 2")
            .replace(DIR_PLACEHOLDER, other_dir.path().to_str().unwrap());
        let line = reload(&c, &changed);
        assert!(
            line.contains("rules 0→1")
                && line.contains("not applied (needs a restart): addr workers disk.dir"),
            "{line}"
        );
        let log = c.log();
        assert!(
            log.contains(&format!(
                "addr changed: needs a restart; keeping {old_addr}"
            )),
            "{log}"
        );
        assert!(
            log.contains("workers changed: needs a restart; keeping 1"),
            "{log}"
        );
        assert!(
            log.contains("disk.dir changed: needs a restart; keeping "),
            "{log}"
        );
        // Still on the old address and cache dir, with the new rule.
        assert_stored(&get_path(&c, &o, "/static/c?sig=1"));
        assert_hit(&get_path(&c, &o, "/static/c?sig=2"));
        assert_eq!(entry_files(c.dir()).len(), 1);
        assert!(entry_files(other_dir.path()).is_empty());
    });
}

#[test]
fn log_format_switches_to_json_on_reload() {
    with_deadline(DEADLINE, || {
        let o = Origin::start(routes);
        let c = Chacha::start(&config("100MB", ""));
        let line = reload(&c, &config_at(&c, "100MB", "log-format: json\n"));
        assert!(line.contains("log-format text→json"), "{line}");
        assert_stored(&get_path(&c, &o, "/obj/100"));
        let url = o.url("/obj/100");
        assert!(
            wait_until(Duration::from_secs(5), || c
                .log()
                .contains(&format!("\"request\":\"GET {url}\""))),
            "{}",
            c.log()
        );
        let log = c.log();
        let json_line = log.lines().find(|l| l.contains("\"request\":")).unwrap();
        let v: serde_json::Value = serde_json::from_str(json_line).unwrap();
        assert_eq!(v["op"], "fill");
        assert_eq!(v["status"], 200);
    });
}

fn cluster_yaml(me: SocketAddr, nodes: &[SocketAddr]) -> String {
    node_config(me, nodes, NodeOpts::new("reload-secret"))
}

#[test]
fn cluster_node_list_reload_moves_keys() {
    with_deadline(Duration::from_secs(90), || {
        let o = Origin::start(routes);
        let addrs = reserve_addrs(2);
        let (a_addr, b_addr) = (addrs[0], addrs[1]);
        // A starts alone; B already knows both.
        let a = Chacha::start(&cluster_yaml(a_addr, &[a_addr]));
        let b = Chacha::start(&cluster_yaml(b_addr, &addrs));
        let names: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let owner = |url: &str| {
            use chacha::cache::key::cache_key;
            use chacha::http::uri::parse_absolute;
            let key = cache_key(&parse_absolute(url).unwrap(), None);
            chacha::cluster::pick(names.iter().map(String::as_str), &key).unwrap()
        };
        // Paths whose key B owns once it is listed.
        let b_paths: Vec<String> = (0..200)
            .map(|i| format!("/obj/1000?k={i}"))
            .filter(|p| owner(&o.url(p)) == 1)
            .take(2)
            .collect();
        let access = |c: &Chacha, path: &str, op: &str| {
            let needle = format!("\"GET {}\" 200 1000 ", o.url(path));
            wait_until(Duration::from_secs(5), || {
                c.log()
                    .lines()
                    .any(|l| l.contains(&needle) && l.ends_with(&format!("ms {op}")))
            })
        };
        // Alone, A owns every key: a local fill.
        assert_stored(&get_path(&a, &o, &b_paths[0]));
        assert!(access(&a, &b_paths[0], "fill"), "{}", a.log());

        let line = reload(&a, &cluster_yaml(a_addr, &addrs));
        assert!(
            line.contains(&format!("cluster.nodes 1→2 (+{b_addr})")),
            "{line}"
        );
        // Now B owns it: A fills it into B (peer-fill), and B takes the KV PUT.
        let r = get_path(&a, &o, &b_paths[1]);
        assert_eq!(r.status(), 200);
        assert_generated(&r.body, 1000);
        assert!(access(&a, &b_paths[1], "peer-fill"), "{}", a.log());
        assert!(
            wait_until(Duration::from_secs(5), || b.log().contains("kv-put")),
            "{}",
            b.log()
        );
        // B serves it to A's next request.
        let r = get_path(&a, &o, &b_paths[1]);
        assert_hit(&r);
        assert!(access(&a, &b_paths[1], "peer-hit"), "{}", a.log());

        // B leaves A's list again: its keys are A's own.
        let line = reload(&a, &cluster_yaml(a_addr, &[a_addr]));
        assert!(
            line.contains(&format!("cluster.nodes 2→1 (-{b_addr})")),
            "{line}"
        );
        let r = get_path(&a, &o, &b_paths[0]);
        assert_hit(&r);
        assert!(access(&a, &b_paths[0], "hit"), "{}", a.log());
    });
}
