//! Cluster failover with real chacha processes (issue 14, "failure never reaches the
//! client"): an owner killed (SIGKILL) while a non-owner streams its body, a down owner's
//! keys cached on its stand-in, routing back to the owner when it returns, and peer
//! health with hysteresis.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use chacha::cluster::{pick, score};
use common::cached::wait_until;
use common::cluster::{key_of, node_config, reserve_addrs, stored_in, Cluster, NodeOpts};
use common::origin::Response;
use common::{get, with_deadline, Body, Chacha, Conn, Origin, Request};

const SECRET: &str = "cluster-failover-secret";
const DEADLINE: Duration = Duration::from_secs(120);
const ETAG: &str = "\"rep-1\"";

/// The nodes' options: bodies of tens of MiB need a larger disk than the default.
fn opts() -> NodeOpts<'static> {
    NodeOpts {
        limit: "400MB",
        ..NodeOpts::new(SECRET)
    }
}

/// What the failover tests ask of a cluster beyond [`Cluster::owner`].
impl Cluster {
    /// The nodes in rendezvous order for `url`'s key: owner first, then its stand-in.
    fn order(&self, url: &str) -> Vec<usize> {
        let key = key_of(url);
        let mut order: Vec<usize> = (0..self.names.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse((score(&self.names[i], &key), &self.names[i])));
        assert_eq!(
            order[0],
            pick(self.names.iter().map(String::as_str), &key).unwrap()
        );
        order
    }

    /// Paths (`prefix` + n) whose keys node `owner` owns.
    fn paths_owned_by(&self, origin: &Origin, owner: usize, prefix: &str, n: usize) -> Vec<String> {
        (0..10_000)
            .map(|i| format!("{prefix}{i}"))
            .filter(|p| self.order(&origin.url(p))[0] == owner)
            .take(n)
            .collect()
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i].signal(libc::SIGKILL);
        assert!(self.nodes[i].wait_exit(Duration::from_secs(10)).is_some());
    }
}

/// The body of the representation: a pattern in which a shifted window never matches.
fn body_of(len: usize) -> Arc<Vec<u8>> {
    Arc::new(
        (0..len as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i >> 16) as u8)
            .collect(),
    )
}

/// An origin serving `body` at every path with a strong ETag, answering If-None-Match
/// with 304 and, when `ranges`, `Range: bytes=N-` (with a matching or absent If-Range)
/// with a 206 (RFC 9110 §14.2, §13.1.5); without `ranges` it ignores Range (a 200).
/// Counts the 200s per path.
struct TestOrigin {
    origin: Origin,
    full: Arc<Mutex<HashMap<String, u64>>>,
}

impl TestOrigin {
    fn start(body: Arc<Vec<u8>>, ranges: bool) -> TestOrigin {
        let full = Arc::new(Mutex::new(HashMap::new()));
        let counts = full.clone();
        let origin = Origin::start(move |req: &Request| {
            let len = body.len() as u64;
            if req.header("if-none-match") == Some(ETAG) {
                return Response::status(304).header("ETag", ETAG);
            }
            let range = req
                .header("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|&n| n < len);
            let if_range_ok = req.header("if-range").is_none_or(|t| t == ETAG);
            if let (true, Some(n), true) = (ranges, range, if_range_ok) {
                let part = body[n as usize..].to_vec();
                return Response::new(206, Body::Full(part))
                    .header("ETag", ETAG)
                    .header("Content-Range", &format!("bytes {n}-{}/{len}", len - 1));
            }
            *counts
                .lock()
                .unwrap()
                .entry(req.path().to_string())
                .or_insert(0) += 1;
            let r = Response::ok(body.to_vec()).header("ETag", ETAG);
            if ranges {
                r.header("Accept-Ranges", "bytes")
            } else {
                r
            }
        });
        TestOrigin { origin, full }
    }

    fn full_bodies(&self, path: &str) -> u64 {
        self.full.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn ranged_requests(&self) -> usize {
        self.origin
            .requests()
            .iter()
            .filter(|r| r.header("range").is_some())
            .count()
    }
}

/// A GET through `proxy` read by hand: the head, then `first` body bytes, then `between`
/// runs, then the rest until the announced length or the connection's end. Returns the
/// status, the announced length and the body received.
fn stream_get(
    proxy: SocketAddr,
    authority: &str,
    path: &str,
    first: usize,
    between: impl FnOnce(),
) -> (u16, usize, Vec<u8>) {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(get(authority, path).as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).expect("read the head");
        assert!(n > 0, "closed before the head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = raw[head_end..].to_vec();
    while body.len() < first.min(len) {
        let n = s.read(&mut buf).expect("read the first bytes");
        assert!(n > 0, "closed after {} bytes", body.len());
        body.extend_from_slice(&buf[..n]);
    }
    between();
    while body.len() < len {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    (status, len, body)
}

/// Kills the owner while a non-owner streams its entry (a peer hit); `ranges` says
/// whether the origin can resume. Returns what the client got, the test origin, and
/// the non-owner's log once it holds `logged` (the client may see the end of its
/// response before the node logs why).
fn kill_owner_mid_peer_hit(
    ranges: bool,
    logged: &str,
) -> (Vec<u8>, usize, Arc<Vec<u8>>, TestOrigin, String) {
    // Larger than every socket buffer between the owner and the client together, so
    // that the owner still has most of it to send when it dies.
    let body = body_of(48 << 20);
    let to = TestOrigin::start(body.clone(), ranges);
    let mut c = Cluster::start(2, opts());
    let o = to.origin.authority();
    let path = c.paths_owned_by(&to.origin, 0, "/blob/", 1).remove(0);
    // Stored on the owner first.
    let r = Conn::connect(c.nodes[0].addr())
        .request(get(&o, &path))
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.body == *body);
    let owner_dir = c.nodes[0].dir().to_path_buf();
    assert!(wait_until(Duration::from_secs(10), || stored_in(
        &owner_dir,
        &to.origin.url(&path)
    )));
    assert_eq!(to.ranged_requests(), 0);
    // A peer hit through the other node; the owner dies after the first 256 KiB.
    let proxy = c.nodes[1].addr();
    let nodes = &mut c;
    let (status, len, got) = stream_get(proxy, &o, &path, 256 << 10, || nodes.kill(0));
    assert_eq!(status, 200);
    c.nodes[1].wait_log(logged, Duration::from_secs(10));
    let log = c.nodes[1].log();
    (got, len, body, to, log)
}

#[test]
fn owner_killed_mid_peer_hit_the_client_gets_the_whole_body_resumed_from_the_origin() {
    with_deadline(DEADLINE, || {
        let (got, len, body, to, log) =
            kill_owner_mid_peer_hit(true, "the rest comes from the origin");
        assert_eq!(len, body.len());
        assert_eq!(got.len(), body.len(), "the client's body was cut");
        assert!(got == *body, "the body is not byte-exact");
        // The rest came from the origin with one ranged request on the strong ETag.
        assert_eq!(to.ranged_requests(), 1);
        let ranged: Vec<Request> = to
            .origin
            .requests()
            .into_iter()
            .filter(|r| r.header("range").is_some())
            .collect();
        assert_eq!(ranged[0].header("if-range"), Some(ETAG));
        assert!(log.contains("the rest comes from the origin"), "{log}");
        assert_eq!(log.matches("is unreachable").count(), 1, "{log}");
    });
}

#[test]
fn owner_killed_mid_peer_hit_and_origin_without_ranges_cuts_the_client_never_wrong_bytes() {
    with_deadline(DEADLINE, || {
        let (got, len, body, to, log) = kill_owner_mid_peer_hit(false, "did not resume it");
        assert_eq!(len, body.len());
        assert!(got.len() < body.len(), "a complete body from nowhere");
        assert!(
            got[..] == body[..got.len()],
            "a wrong byte reached the client"
        );
        // The origin was asked, answered a 200, and that was not used.
        assert_eq!(to.ranged_requests(), 1);
        assert!(log.contains("did not resume it"), "{log}");
    });
}

#[test]
fn owner_killed_while_a_peer_fills_client_reads_back_the_client_gets_the_whole_body() {
    with_deadline(DEADLINE, || {
        let body = body_of(48 << 20);
        let to = TestOrigin::start(body.clone(), true);
        let mut c = Cluster::start(2, opts());
        let o = to.origin.authority();
        let path = c.paths_owned_by(&to.origin, 0, "/fill/", 1).remove(0);
        let url = to.origin.url(&path);
        let owner_dir = c.nodes[0].dir().to_path_buf();
        // A miss through the non-owner: it fills the owner with a KV PUT at the origin's
        // speed while its client reads 256 KiB and stops; the client falls behind the
        // fill (its hand-off queue holds a few pieces) and reads the rest back from the
        // owner. The owner dies once the entry is committed there.
        let proxy = c.nodes[1].addr();
        let nodes = &mut c;
        let (status, len, got) = stream_get(proxy, &o, &path, 256 << 10, || {
            assert!(
                wait_until(Duration::from_secs(30), || stored_in(&owner_dir, &url)),
                "the fill never committed on the owner"
            );
            nodes.kill(0);
        });
        assert_eq!(status, 200);
        assert_eq!(len, body.len());
        assert_eq!(got.len(), body.len(), "the client's body was cut");
        assert!(got == *body, "the body is not byte-exact");
        assert_eq!(to.full_bodies(&path), 1);
        assert_eq!(to.ranged_requests(), 1);
        let log = c.nodes[1].log();
        assert!(log.contains("the rest comes from the origin"), "{log}");
    });
}

#[test]
fn a_down_owners_keys_are_cached_and_single_flighted_on_its_stand_in() {
    with_deadline(DEADLINE, || {
        let body = body_of(256 << 10);
        let to = TestOrigin::start(body.clone(), true);
        let mut c = Cluster::start(3, opts());
        let o = to.origin.authority();
        let paths = c.paths_owned_by(&to.origin, 0, "/outage/", 3);
        c.kill(0);
        // Several concurrent clients, through both survivors, several rounds each.
        let clients: Vec<_> = (0..6)
            .map(|t| {
                let (paths, o, body) = (paths.clone(), o.clone(), body.clone());
                let proxy = c.nodes[1 + t % 2].addr();
                thread::spawn(move || {
                    for _ in 0..3 {
                        for p in &paths {
                            let r = Conn::connect(proxy).request(get(&o, p)).unwrap();
                            assert_eq!(r.status(), 200, "{p}");
                            assert!(r.body == *body, "{p}: wrong body");
                            // Never relayed uncached (that Cache-Status is not logged).
                            let cs = r.header("cache-status").unwrap_or("");
                            assert!(!cs.contains("owner-unreachable"), "{p}: {cs}");
                        }
                    }
                })
            })
            .collect();
        for t in clients {
            t.join().expect("every response complete and correct");
        }
        for p in &paths {
            let full = to.full_bodies(p);
            assert!(
                (1..=2).contains(&full),
                "{p}: {full} full bodies from the origin"
            );
            let stand_in = c.order(&to.origin.url(p))[1];
            assert!(
                stored_in(c.nodes[stand_in].dir(), &to.origin.url(p)),
                "{p} not cached on its stand-in {stand_in}"
            );
        }
    });
}

#[test]
fn a_restarted_owner_gets_its_keys_back() {
    with_deadline(DEADLINE, || {
        let body = body_of(64 << 10);
        let to = TestOrigin::start(body.clone(), true);
        let mut c = Cluster::start(3, opts());
        let o = to.origin.authority();
        let path = c.paths_owned_by(&to.origin, 0, "/back/", 1).remove(0);
        let url = to.origin.url(&path);
        let stand_in = c.order(&url)[1];
        let front = 3 - stand_in; // the node that is neither owner nor stand-in
        let fetch = |addr| {
            let r = Conn::connect(addr).request(get(&o, &path)).unwrap();
            assert_eq!(r.status(), 200);
            assert!(r.body == *body);
        };
        // Stored on the owner, then the owner dies and the stand-in takes the key.
        fetch(c.nodes[front].addr());
        assert!(wait_until(Duration::from_secs(10), || stored_in(
            c.nodes[0].dir(),
            &url
        )));
        c.kill(0);
        fetch(c.nodes[front].addr());
        assert!(wait_until(Duration::from_secs(10), || stored_in(
            c.nodes[stand_in].dir(),
            &url
        )));
        assert_eq!(to.full_bodies(&path), 2);
        // Back on the same address with the same disk.
        let addr = c.nodes[0].addr();
        assert!(common::chacha::wait_port_free(
            addr,
            Duration::from_secs(10)
        ));
        c.nodes[0].restart();
        assert!(
            c.nodes[front].wait_log("answers /health again", Duration::from_secs(20)),
            "the front node did not see the owner come back"
        );
        let restarted = |c: &Cluster| {
            let log = c.nodes[0].log();
            let after = log
                .split("---- test harness: restart ----")
                .nth(1)
                .unwrap_or("")
                .to_string();
            after.matches(" kv-get").count()
        };
        assert_eq!(restarted(&c), 0);
        let stand_in_gets = c.nodes[stand_in].log().matches(" kv-get").count();
        fetch(c.nodes[front].addr());
        // The key's KV GET went to the owner, whose own copy was revalidated: no new
        // full body.
        assert!(wait_until(Duration::from_secs(10), || restarted(&c) == 1));
        assert_eq!(
            c.nodes[stand_in].log().matches(" kv-get").count(),
            stand_in_gets
        );
        assert_eq!(to.full_bodies(&path), 2);
    });
}

/// A fake cluster node that answers `/health` after `SLOW` (mode 0), closes
/// connections unanswered (mode 1), and counts the probes it got.
struct FakeNode {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    probes: Arc<AtomicU64>,
}

const SLOW: Duration = Duration::from_millis(700);

impl FakeNode {
    fn start(listener: TcpListener) -> FakeNode {
        let addr = listener.local_addr().unwrap();
        let (mode, probes) = (Arc::new(AtomicU8::new(0)), Arc::new(AtomicU64::new(0)));
        let (m, p) = (mode.clone(), probes.clone());
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let (m, p) = (m.clone(), p.clone());
                thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    if !req.starts_with(b"GET /health ") {
                        return;
                    }
                    p.fetch_add(1, Ordering::SeqCst);
                    if m.load(Ordering::SeqCst) == 1 {
                        return; // closed unanswered
                    }
                    thread::sleep(SLOW); // slow, but within the probe's timeout
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK",
                    );
                });
            }
        });
        FakeNode { addr, mode, probes }
    }

    fn wait_probes(&self, more: u64) {
        let want = self.probes.load(Ordering::SeqCst) + more;
        assert!(
            wait_until(Duration::from_secs(30), || self
                .probes
                .load(Ordering::SeqCst)
                >= want),
            "the fake node got {} probes, wanted {want}",
            self.probes.load(Ordering::SeqCst)
        );
    }
}

fn metric(addr: SocketAddr, name: &str, peer: &str) -> Option<String> {
    let r = Conn::connect(addr)
        .request("GET /metrics HTTP/1.1\r\nHost: chacha\r\n\r\n")
        .unwrap();
    let text = r.body_str();
    let prefix = format!("{name}{{peer=\"{peer}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

#[test]
fn a_slow_node_is_not_flapped_and_state_changes_are_logged_once() {
    with_deadline(DEADLINE, || {
        let addrs = reserve_addrs(2);
        let fake_listener = TcpListener::bind(addrs[1]).expect("rebind the fake node's address");
        let fake = FakeNode::start(fake_listener);
        let node = Chacha::start(&node_config(addrs[0], &addrs, opts()));
        let peer = fake.addr.to_string();
        let changes = || metric(node.addr(), "chacha_peer_state_changes_total", &peer);
        let up = || metric(node.addr(), "chacha_peer_up", &peer);
        // Slow answers: probed again and again, never marked down.
        fake.wait_probes(4);
        assert!(!node.log().contains("is unreachable"), "{}", node.log());
        assert_eq!(up().as_deref(), Some("1"));
        assert_eq!(changes().as_deref(), Some("0"));
        // No answers: down, logged once, however many probes fail.
        fake.mode.store(1, Ordering::SeqCst);
        assert!(node.wait_log("is unreachable", Duration::from_secs(20)));
        fake.wait_probes(3);
        assert_eq!(node.log().matches("is unreachable").count(), 1);
        assert_eq!(up().as_deref(), Some("0"));
        // Slow answers again: up, logged once.
        fake.mode.store(0, Ordering::SeqCst);
        assert!(node.wait_log("answers /health again", Duration::from_secs(30)));
        fake.wait_probes(3);
        let log = node.log();
        assert_eq!(log.matches("is unreachable").count(), 1, "{log}");
        assert_eq!(log.matches("answers /health again").count(), 1, "{log}");
        assert_eq!(up().as_deref(), Some("1"));
        assert_eq!(changes().as_deref(), Some("2"));
    });
}
