//! Cluster mode with real chacha processes: three nodes on 127.0.0.1 and one in-test
//! origin. Keys live on their owners' disks only, every node serves every key, the
//! origin sees one full fetch per key, the KV protocol speaks the original's wire
//! format, and a dead owner never fails a client.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use chacha::cache::key::{cache_key, key_hash};
use chacha::cache::meta::entry_path;
use chacha::http::uri::parse_absolute;
use common::cached::wait_until;
use common::cluster::{node_config, reserve_addrs, stored_in, Cluster, NodeOpts};
use common::kv::go_kv_request as kv_request;
use common::origin::{self, Response};
use common::raw_origin::{head_only, response, send, RawOrigin, Step};
use common::{get, get_with, with_deadline, Chacha, Conn, Origin};

const SECRET: &str = "cluster-test-secret";
const DEADLINE: Duration = Duration::from_secs(90);

/// The nodes' options: [`NodeOpts::new`] with this file's secret.
fn opts() -> NodeOpts<'static> {
    NodeOpts::new(SECRET)
}

fn fetch(addr: SocketAddr, authority: &str, path: &str) -> common::Response {
    Conn::connect(addr)
        .request(get(authority, path))
        .unwrap_or_else(|e| panic!("GET {path} via {addr}: {e:?}"))
}

#[test]
fn keys_live_on_their_owners_and_every_node_serves_every_key() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let c = Cluster::start(3, opts());
        let o = origin.authority();
        // At least 12 keys, and enough that every node owns at least 2 of them (which
        // ones a node owns depends on this run's node addresses).
        let mut paths: Vec<String> = Vec::new();
        let mut owned = [0usize; 3];
        for i in 0..1000 {
            if paths.len() >= 12 && owned.iter().all(|&n| n >= 2) {
                break;
            }
            let path = format!("/static/key-{i}");
            owned[c.owner(&origin.url(&path))] += 1;
            paths.push(path);
        }
        for (i, path) in paths.iter().enumerate() {
            // First request through any node fills the owner.
            let r = fetch(c.nodes[i % 3].addr(), &o, path);
            assert_eq!(r.status(), 200);
            assert_eq!(r.body, origin::static_body(path));
            assert!(
                r.header("cache-status").unwrap().contains("stored"),
                "{:?}",
                r.header("cache-status")
            );
        }
        for path in &paths {
            for node in &c.nodes {
                let r = fetch(node.addr(), &o, path);
                assert_eq!(r.status(), 200);
                assert_eq!(r.body, origin::static_body(path));
                assert_eq!(r.header("cache-status"), Some("chacha; hit"), "{path}");
                assert_eq!(r.header("etag"), Some(origin::STATIC_ETAG));
            }
        }
        let n = paths.len() as u64;
        let served = origin.settled();
        assert_eq!((served.full_bodies, served.not_modified), (n, 3 * n));
        for path in &paths {
            let url = origin.url(path);
            let owner = c.owner(&url);
            for (i, node) in c.nodes.iter().enumerate() {
                assert_eq!(stored_in(node.dir(), &url), i == owner, "{url} on node {i}");
            }
        }
        assert!(
            owned.iter().all(|&n| n >= 2),
            "{} keys over 3 nodes: {owned:?}",
            paths.len()
        );
    });
}

/// An origin whose body trickles, so that requests arriving together overlap.
fn slow_validated(req: &origin::Request) -> Response {
    const ETAG: &str = "\"slow-v1\"";
    if req.header("if-none-match") == Some(ETAG) {
        return Response::status(304).header("ETag", ETAG);
    }
    Response::generated(2 * 1024 * 1024)
        .chunk_delay(Duration::from_millis(20))
        .header("ETag", ETAG)
}

#[test]
fn concurrent_cold_requests_at_every_node_share_one_origin_fetch() {
    with_deadline(DEADLINE, || {
        let origin = Arc::new(Origin::start(slow_validated));
        let c = Cluster::start(3, opts());
        for round in 0..3 {
            let path = format!("/slow/{round}");
            let handles: Vec<_> = (0..6)
                .map(|i| {
                    let addr = c.nodes[i % 3].addr();
                    let (o, path) = (origin.authority(), path.clone());
                    thread::spawn(move || {
                        let mut conn = Conn::connect_timeout(addr, Duration::from_secs(30));
                        let r = conn.request(get(&o, &path)).expect("response");
                        assert_eq!(r.status(), 200);
                        let mut v = common::gen::Verifier::new();
                        v.feed(&r.body);
                        v.assert_complete(2 * 1024 * 1024);
                        r.header("cache-status").unwrap_or("").to_string()
                    })
                })
                .collect();
            let statuses: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert_eq!(
                origin.settled().full_bodies,
                round + 1,
                "round {round}: {statuses:?}"
            );
            let url = origin.url(&path);
            let owner = c.owner(&url);
            // The owner commits the entry after the fill's last byte, which its clients
            // may have read already.
            let dir = c.nodes[owner].dir();
            assert!(
                wait_until(Duration::from_secs(10), || stored_in(dir, &url)),
                "round {round}: {url} not stored on its owner {owner}"
            );
        }
    });
}

fn metadata_of(r: &common::Response) -> serde_json::Value {
    let field = r.header("x-chacha-metadata").expect("X-Chacha-Metadata");
    serde_json::from_slice(&BASE64.decode(field.as_bytes()).unwrap()).unwrap()
}

#[test]
fn kv_protocol_speaks_the_originals_wire_format() {
    with_deadline(DEADLINE, || {
        let addr = reserve_addrs(1)[0];
        let node = Chacha::start(&node_config(
            addr,
            &[addr],
            NodeOpts {
                workers: 1,
                ..opts()
            },
        ));
        let a = node.addr();
        let key = "https://example.com/some/blob?x=1";
        let mut conn = Conn::connect(a);
        // Known bytes of `SetBasicAuth("", secret)`, not just our own encoder.
        assert_eq!(BASE64.encode(b":s3cret"), "OnMzY3JldA==");

        let miss = kv_request("GET", a, Some(SECRET), key, None, None, false);
        assert_eq!(conn.request(&miss).unwrap().status(), 404);

        let put1 = kv_request(
            "PUT",
            a,
            Some(SECRET),
            key,
            Some(r#"{"etag":"first-etag"}"#),
            Some(b"Hello, World!\n"),
            false,
        );
        assert_eq!(conn.request(&put1).unwrap().status(), 200);
        let r = conn.request(&miss).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body, b"Hello, World!\n");
        assert_eq!(metadata_of(&r)["etag"], "first-etag");

        // Overwrite, with the chunked body Go sends for a reader of unknown length.
        let put2 = kv_request(
            "PUT",
            a,
            Some(SECRET),
            key,
            Some(r#"{"etag":"second-etag"}"#),
            Some(b"Goodbye, Cruel World!\n"),
            true,
        );
        assert_eq!(conn.request(&put2).unwrap().status(), 200);
        let r = conn.request(&miss).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body, b"Goodbye, Cruel World!\n");
        assert_eq!(metadata_of(&r)["etag"], "second-etag");

        // Wrong or missing secret: 401 before anything else, and nothing changes.
        for auth in [Some("wrong-secret"), None] {
            let get = kv_request("GET", a, auth, key, None, None, false);
            let r = Conn::connect(a).request(&get).unwrap();
            assert_eq!(r.status(), 401, "GET with {auth:?}");
            assert!(!r.body_str().contains("Goodbye"));
            assert!(r.header("x-chacha-metadata").is_none());
            let put = kv_request(
                "PUT",
                a,
                auth,
                key,
                Some(r#"{"etag":"evil"}"#),
                Some(b"evil"),
                false,
            );
            assert_eq!(Conn::connect(a).request(&put).unwrap().status(), 401);
        }
        let r = conn.request(&miss).unwrap();
        assert_eq!(r.body, b"Goodbye, Cruel World!\n");

        // Malformed headers: 400.
        let no_key = format!(
            "GET / HTTP/1.1\r\nHost: {a}\r\nAuthorization: Basic {}\r\n\r\n",
            BASE64.encode(format!(":{SECRET}").as_bytes())
        );
        assert_eq!(Conn::connect(a).request(&no_key).unwrap().status(), 400);
        let bad_key = no_key.replace("\r\n\r\n", "\r\nX-Chacha-Key: !!notbase64\r\n\r\n");
        assert_eq!(Conn::connect(a).request(&bad_key).unwrap().status(), 400);
        let no_meta = kv_request("PUT", a, Some(SECRET), key, None, Some(b"x"), false);
        assert_eq!(Conn::connect(a).request(&no_meta).unwrap().status(), 400);
        let bad_meta = kv_request("PUT", a, Some(SECRET), key, Some("{"), Some(b"x"), false);
        assert_eq!(Conn::connect(a).request(&bad_meta).unwrap().status(), 400);
        assert_eq!(
            conn.request(&miss).unwrap().body,
            b"Goodbye, Cruel World!\n"
        );

        // Without cluster mode the KV endpoint does not exist (404, as the original).
        let plain = Chacha::start(&common::config(""));
        let r = Conn::connect(plain.addr())
            .request(kv_request(
                "GET",
                plain.addr(),
                Some(SECRET),
                key,
                None,
                None,
                false,
            ))
            .unwrap();
        assert_eq!(r.status(), 404);
    });
}

#[test]
fn a_dead_owner_never_fails_a_client_and_its_disk_serves_again_after_restart() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let mut c = Cluster::start(3, opts());
        let o = origin.authority();
        let paths: Vec<String> = (0..15).map(|i| format!("/static/k{i}")).collect();
        let victim = c.owner(&origin.url(&paths[0]));
        let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
        let victim_paths: Vec<&String> = paths
            .iter()
            .filter(|p| c.owner(&origin.url(p)) == victim)
            .collect();
        for path in &paths {
            assert_eq!(fetch(c.nodes[survivors[0]].addr(), &o, path).status(), 200);
        }
        let n = paths.len() as u64;
        assert_eq!(origin.settled().full_bodies, n);

        // Clients keep asking the survivors while the owner dies under them.
        let stop = Arc::new(AtomicBool::new(false));
        // Correct 200s the load thread got so far: the signal that it is under way.
        let served = Arc::new(AtomicU64::new(0));
        let addrs: Vec<SocketAddr> = survivors.iter().map(|&i| c.nodes[i].addr()).collect();
        let load = {
            let (stop, served, o, paths) = (stop.clone(), served.clone(), o.clone(), paths.clone());
            thread::spawn(move || {
                // Every key through every survivor, so that each survivor asks the dead
                // owner for its keys (and so notices it).
                while !stop.load(Ordering::SeqCst) {
                    for path in &paths {
                        for &addr in &addrs {
                            let r = fetch(addr, &o, path);
                            assert_eq!(r.status(), 200, "{path}");
                            assert_eq!(r.body, origin::static_body(path), "{path}");
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        };
        // A whole round of correct answers (every key through every survivor) after `from`.
        let round = n * survivors.len() as u64;
        let round_after = |from: u64| {
            wait_until(Duration::from_secs(20), || {
                served.load(Ordering::SeqCst) >= from + round || load.is_finished()
            });
            let got = served.load(Ordering::SeqCst);
            assert!(
                got >= from + round,
                "the load got {got} answers, wanted {} (its thread ended: {})",
                from + round,
                load.is_finished()
            );
            served.load(Ordering::SeqCst)
        };
        // The owner dies while a round is in progress.
        let before_kill = round_after(0);
        c.nodes[victim].signal(libc::SIGKILL);
        assert!(c.nodes[victim].wait_exit(Duration::from_secs(5)).is_some());
        for &s in &survivors {
            assert!(
                c.nodes[s].wait_log("is unreachable", Duration::from_secs(10)),
                "node {s} did not notice"
            );
        }
        // A whole round of the load is served while the owner is known down.
        let noticed = served.load(Ordering::SeqCst);
        assert!(noticed >= before_kill);
        round_after(noticed);
        // Its keys are served by their stand-in meanwhile, cached (issue 14: no longer
        // relayed uncached as `owner-unreachable`).
        let r = fetch(c.nodes[survivors[0]].addr(), &o, victim_paths[0]);
        assert_eq!(r.status(), 200);
        assert_eq!(r.body, origin::static_body(victim_paths[0]));
        assert!(
            !r.header("cache-status")
                .unwrap()
                .contains("owner-unreachable"),
            "{:?}",
            r.header("cache-status")
        );

        // Back on the same port with the same disk: the survivors notice and use it. The
        // killed process's listener can outlive it briefly (io_uring releases its files
        // after the exit): wait until the port can be bound, as chacha's own start checks.
        let victim_addr = c.nodes[victim].addr();
        assert!(
            common::chacha::wait_port_free(victim_addr, Duration::from_secs(10)),
            "{victim_addr} still in use after the owner was killed"
        );
        c.nodes[victim].restart();
        for &s in &survivors {
            assert!(
                c.nodes[s].wait_log("answers /health again", Duration::from_secs(15)),
                "node {s} did not see the owner come back"
            );
        }
        stop.store(true, Ordering::SeqCst);
        load.join().expect("every request got a correct 200");
        // The last uncached bodies counted: what follows must add no full body.
        let full = origin.settled().full_bodies;
        for path in &victim_paths {
            for &s in &survivors {
                let r = fetch(c.nodes[s].addr(), &o, path);
                assert_eq!(r.status(), 200);
                assert_eq!(r.body, origin::static_body(path));
                assert_eq!(r.header("cache-status"), Some("chacha; hit"), "{path}");
            }
        }
        assert_eq!(
            origin.settled().full_bodies,
            full,
            "served from the owner's disk"
        );
        // One warning per state change, however many requests saw the owner down.
        for &s in &survivors {
            let log = c.nodes[s].log();
            assert_eq!(log.matches("is unreachable").count(), 1, "node {s}");
            assert_eq!(log.matches("answers /health again").count(), 1, "node {s}");
        }
    });
}

/// A path whose key node `owner` of `c` owns (`url` makes the URL of a path).
fn path_owned_by(c: &Cluster, owner: usize, prefix: &str, url: impl Fn(&str) -> String) -> String {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|p| c.owner(&url(p)) == owner)
        .expect("some key among 1000 belongs to each node")
}

#[test]
fn a_non_owners_fill_that_the_origin_cuts_resumes() {
    const LEN: usize = 1_000_000;
    const SENT: usize = 400_000;
    with_deadline(DEADLINE, || {
        let etag = "ETag: \"blob-1\"";
        // The first GET stalls after SENT bytes; a Range request from there is answered.
        let origin = RawOrigin::start(move |req| {
            if req.header("if-none-match") == Some("\"blob-1\"") {
                return vec![send(head_only("304 Not Modified", &[etag]))];
            }
            match req.header("range") {
                None => {
                    let mut bytes =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n{etag}\r\n\r\n")
                            .into_bytes();
                    bytes.extend_from_slice(&common::gen::body(LEN)[..SENT]);
                    vec![send(bytes), Step::Hold]
                }
                Some(r) if r == format!("bytes={SENT}-") => {
                    let range = format!("Content-Range: bytes {SENT}-{}/{LEN}", LEN - 1);
                    let rest = &common::gen::body(LEN)[SENT..];
                    vec![send(response(
                        "206 Partial Content",
                        &[etag, range.as_str()],
                        rest,
                    ))]
                }
                Some(_) => vec![send(response("416 Range Not Satisfiable", &[], b""))],
            }
        });
        let c = Cluster::start(
            2,
            NodeOpts {
                extra: "timeouts:\n  upstream-body: 1s\n",
                ..opts()
            },
        );
        let a = origin.authority();
        let url = |p: &str| format!("http://{a}{p}");
        let path = path_owned_by(&c, 1, "/blob", url);
        let r = common::request(c.nodes[0].addr(), get(&a, &path)).expect("a whole response");
        assert_eq!(r.status(), 200);
        assert!(r.body == common::gen::body(LEN), "resumed body differs");
        assert!(c.nodes[0].wait_log(&format!("at byte {SENT}"), Duration::from_secs(5)));
        assert!(c.nodes[0].wait_log("resumed", Duration::from_secs(5)));
        let key = cache_key(&parse_absolute(&url(&path)).unwrap(), None);
        let stored = entry_path(c.nodes[1].dir(), key_hash(&key));
        assert!(
            wait_until(Duration::from_secs(5), || stored.exists()),
            "the owner did not commit the resumed body"
        );
    });
}

#[test]
fn a_ranged_request_through_a_non_owner_asks_the_owner_for_that_range() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let c = Cluster::start(2, opts());
        let a = origin.authority();
        let path = path_owned_by(&c, 1, "/static/range-", |p| origin.url(p));
        let body = origin::static_body(&path);
        assert!(body.len() > 120, "{}", body.len());
        let r = Conn::connect(c.nodes[0].addr())
            .request(get(&a, &path))
            .unwrap();
        assert_eq!(r.status(), 200);
        // The owner committed the entry: its KV PUT's line (answered 200 once committed).
        // Not just any " 200 ": the other node's /health probes log those too.
        assert!(
            wait_until(Duration::from_secs(5), || c.nodes[1]
                .log()
                .lines()
                .any(|l| l.contains(" 200 ") && l.ends_with(" kv-put"))),
            "{}",
            c.nodes[1].log()
        );
        let r = Conn::connect(c.nodes[0].addr())
            .request(get_with(&a, &path, &["Range: bytes=100-119"]))
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.body, body[100..120]);
        assert!(
            c.nodes[1].wait_log("\"GET /\" 206 20 ", Duration::from_secs(5)),
            "the owner did not answer just the range: {}",
            c.nodes[1].log()
        );
    });
}
