//! Issue 15 point 1: merged revalidations that keep "always validating" intact. Requests
//! for the same entry whose conditional request would be byte-identical share one
//! conditional request, but only one sent after each of them arrived; different
//! credentials never share. An in-test origin holds its answers to conditional requests
//! at a gate until the test releases them, so that the concurrency is deterministic; the
//! origin's counters say how many requests chacha sent.

mod common;

use common::cached::{assert_hit, cache_status, fetch};
use common::gate::Gate;
use common::origin::{Request as OReq, Response as OResp};
use common::{get, get_with, with_deadline, Chacha, Origin, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);
/// How long a test waits for a signal (a log line, an origin counter).
const SIGNAL: Duration = Duration::from_secs(10);
const LAST_MODIFIED: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
/// The debug line of a request that waits for the next validation (`proxy::merge`).
const WAITS: &str = "waits for the next validation";

/// One worker (every request on one core, where merging happens), the cache on, the
/// merge module's debug lines on (the signal that a request is waiting), and a rule that
/// stores responses to requests with `Authorization` (so that two credentials share one
/// entry and only their conditional requests differ).
fn start_proxy() -> Chacha {
    let rules = "rules:\n  - pattern: '127\\.0\\.0\\.1'\n    ignore-authorization-header: true\n";
    Chacha::start_with_log(&common::config(rules), "info,chacha::proxy::merge=debug")
}

/// The object at every path: version `v` of it, `ETag: "v{v}"`, 304 to a matching
/// `If-None-Match`.
fn versioned(req: &OReq, v: u64) -> OResp {
    let etag = format!("\"v{v}\"");
    let resp = if req.header("if-none-match") == Some(etag.as_str()) {
        OResp::status(304)
    } else {
        OResp::ok(body_of(v))
    };
    resp.header("ETag", &etag)
        .header("Last-Modified", LAST_MODIFIED)
}

fn body_of(v: u64) -> Vec<u8> {
    format!("object version {v}\n").repeat(64).into_bytes()
}

/// Sends every request of `raws` at once, each on its own connection; the responses in
/// the same order.
fn fetch_all(addr: SocketAddr, raws: &[String]) -> Vec<thread::JoinHandle<Response>> {
    raws.iter()
        .cloned()
        .map(|raw| thread::spawn(move || fetch(addr, raw)))
        .collect()
}

fn join_all(handles: Vec<thread::JoinHandle<Response>>) -> Vec<Response> {
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Conditional requests the origin received for `path`.
fn conditionals(origin: &Origin, path: &str) -> usize {
    origin
        .requests()
        .iter()
        .filter(|r| r.path() == path && r.header("if-none-match").is_some())
        .count()
}

fn assert_hit_of(resp: &Response, v: u64) {
    assert_eq!(resp.status(), 200, "{:?}", cache_status(resp));
    assert_hit(resp);
    assert_eq!(resp.body, body_of(v), "the body of version {v}");
}

/// `/obj` (version 1) stored through a fresh proxy, then one client's revalidation of it
/// sent and held at the origin (the gate closed): the in-flight round the tests queue
/// others behind. Returns the gate, the origin, the proxy, the request and that client.
fn first_validation_held() -> (
    Arc<Gate>,
    Origin,
    Chacha,
    String,
    Vec<thread::JoinHandle<Response>>,
) {
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let origin = Origin::start(move |req| {
        if req.header("if-none-match").is_some() {
            g.pass();
        }
        versioned(req, 1)
    });
    let proxy = start_proxy();
    let raw = get(&origin.authority(), "/obj");
    assert_eq!(
        fetch(proxy.addr(), &raw).status(),
        200,
        "the entry is stored"
    );
    gate.close();
    // The first validation goes out at once and is held at the origin.
    let first = fetch_all(proxy.addr(), std::slice::from_ref(&raw));
    assert!(
        origin.wait_requests(2, SIGNAL),
        "the first validation was sent"
    );
    (gate, origin, proxy, raw, first)
}

#[test]
fn identical_concurrent_requests_share_one_conditional_request() {
    with_deadline(DEADLINE, || {
        let (gate, origin, proxy, raw, first) = first_validation_held();
        // Eight more identical requests arrive while it is in flight: one queued round.
        const MORE: usize = 8;
        let more = fetch_all(proxy.addr(), &vec![raw.clone(); MORE]);
        let waiting = proxy.wait_log_count(WAITS, MORE, SIGNAL);
        gate.open();
        let first = join_all(first);
        let more = join_all(more);
        origin.settled();
        // One in flight, one queued: the eight shared one request, sent after they all
        // arrived (before: one conditional request per client request, 9).
        assert_eq!(
            conditionals(&origin, "/obj"),
            2,
            "conditional requests for 9 concurrent identical client requests"
        );
        assert!(waiting, "the eight requests waited for the next validation");
        for r in first.iter().chain(&more) {
            assert_hit_of(r, 1);
        }
        let merged = metric(&proxy, "chacha_validations_merged_total");
        assert_eq!(
            merged,
            MORE as u64 - 1,
            "requests answered by a leader's 304"
        );
    });
}

#[test]
fn different_authorization_never_shares_a_validation() {
    with_deadline(DEADLINE, || {
        let gate = Arc::new(Gate::default());
        let g = gate.clone();
        let origin = Origin::start(move |req| {
            if req.header("if-none-match").is_some() {
                g.pass();
            }
            versioned(req, 1)
        });
        let proxy = start_proxy();
        let a = get_with(
            &origin.authority(),
            "/obj",
            &["Authorization: Bearer alice"],
        );
        let b = get_with(&origin.authority(), "/obj", &["Authorization: Bearer bob"]);
        assert_eq!(fetch(proxy.addr(), &a).status(), 200, "the entry is stored");
        gate.close();
        let first_a = fetch_all(proxy.addr(), std::slice::from_ref(&a));
        assert!(
            origin.wait_requests(2, SIGNAL),
            "alice's validation was sent"
        );
        // Three of each while alice's is in flight. Bob's first finds nothing of his
        // own in flight and goes out at once; his other two queue behind it; alice's
        // three queue behind hers.
        let mut raws = vec![a.clone(); 3];
        raws.extend(vec![b.clone(); 3]);
        let more = fetch_all(proxy.addr(), &raws);
        let sent = origin.wait_requests(3, SIGNAL);
        let waiting = proxy.wait_log_count(WAITS, 5, SIGNAL);
        gate.open();
        let responses: Vec<Response> = join_all(first_a)
            .into_iter()
            .chain(join_all(more))
            .collect();
        origin.settled();
        let by = |cred: &str| {
            origin
                .requests()
                .iter()
                .filter(|r| r.header("if-none-match").is_some())
                .filter(|r| r.header("authorization") == Some(cred))
                .count()
        };
        // Each credential's requests went out with that credential only, merged among
        // themselves (before: one per client request, 4 and 3).
        assert_eq!(
            (by("Bearer alice"), by("Bearer bob")),
            (2, 2),
            "conditional requests per credential"
        );
        assert_eq!(
            conditionals(&origin, "/obj"),
            4,
            "no request without a credential"
        );
        assert!(
            sent && waiting,
            "bob's first went out; five requests waited"
        );
        for r in &responses {
            assert_hit_of(r, 1);
        }
    });
}

#[test]
fn a_request_arriving_during_a_validation_waits_for_the_next_one() {
    with_deadline(DEADLINE, || {
        let gate = Arc::new(Gate::default());
        let version = Arc::new(AtomicU64::new(1));
        let (g, v) = (gate.clone(), version.clone());
        let origin = Origin::start(move |req| {
            // The object as it is when the request arrives, answered when the gate opens.
            let now = v.load(Ordering::SeqCst);
            if req.header("if-none-match").is_some() {
                g.pass();
            }
            versioned(req, now)
        });
        let proxy = start_proxy();
        let raw = get(&origin.authority(), "/obj");
        assert_eq!(
            fetch(proxy.addr(), &raw).body,
            body_of(1),
            "version 1 stored"
        );
        gate.close();
        // The first validation reaches the origin while the object is version 1: its
        // handler has read the version once it waits at the gate (the origin records a
        // request before its handler runs, so the request count alone is not enough).
        let first = fetch_all(proxy.addr(), std::slice::from_ref(&raw));
        assert!(
            origin.wait_requests(2, SIGNAL) && gate.wait_waiting(1, SIGNAL),
            "the first validation was sent"
        );
        // A second request arrives while it is in flight.
        let second = fetch_all(proxy.addr(), std::slice::from_ref(&raw));
        let waiting = proxy.wait_log_count(WAITS, 1, SIGNAL);
        // The object changes at the origin; then the held 304 is released.
        version.store(2, Ordering::SeqCst);
        gate.open();
        let first = join_all(first).remove(0);
        let second = join_all(second).remove(0);
        // The first request was validated as of its arrival: version 1 is current.
        assert_hit_of(&first, 1);
        // The second must not take the answer of a validation sent before it arrived
        // (version 1): its own went out after it arrived and found version 2.
        assert_eq!(
            String::from_utf8_lossy(&second.body),
            String::from_utf8_lossy(&body_of(2)),
            "the second request's body; Cache-Status {:?}",
            cache_status(&second)
        );
        assert!(waiting, "the second request waited for the next validation");
        origin.settled();
        assert_eq!(conditionals(&origin, "/obj"), 2, "one validation each");
    });
}

#[test]
fn a_401_for_one_credential_reaches_only_its_requests() {
    with_deadline(DEADLINE, || {
        let gate = Arc::new(Gate::default());
        let g = gate.clone();
        let origin = Origin::start(move |req| {
            if req.header("if-none-match").is_some() {
                g.pass();
            }
            match req.header("authorization") {
                Some("Bearer good") => versioned(req, 1),
                _ => OResp::new(401, common::Body::Full(b"who are you?".to_vec()))
                    .header("WWW-Authenticate", "Bearer"),
            }
        });
        let proxy = start_proxy();
        let good = get_with(&origin.authority(), "/obj", &["Authorization: Bearer good"]);
        let bad = get_with(
            &origin.authority(),
            "/obj",
            &["Authorization: Bearer revoked"],
        );
        assert_eq!(
            fetch(proxy.addr(), &good).status(),
            200,
            "the entry is stored"
        );
        gate.close();
        // One validation of each credential in flight, three more of each behind them.
        let first = fetch_all(proxy.addr(), &[good.clone(), bad.clone()]);
        assert!(
            origin.wait_requests(3, SIGNAL),
            "both validations were sent"
        );
        let mut raws = vec![good.clone(); 3];
        raws.extend(vec![bad.clone(); 3]);
        let more = fetch_all(proxy.addr(), &raws);
        let waiting = proxy.wait_log_count(WAITS, 6, SIGNAL);
        gate.open();
        let mut responses = join_all(first);
        responses.extend(join_all(more));
        let (goods, bads): (Vec<_>, Vec<_>) = responses
            .iter()
            .enumerate()
            .partition(|(i, _)| *i == 0 || (2..5).contains(i));
        for (_, r) in &goods {
            assert_hit_of(r, 1);
        }
        for (_, r) in &bads {
            assert_eq!(
                r.status(),
                401,
                "the revoked credential gets the origin's 401"
            );
            assert_eq!(r.body, b"who are you?");
        }
        origin.settled();
        let good_sent = origin
            .requests()
            .iter()
            .filter(|r| r.header("if-none-match").is_some())
            .filter(|r| r.header("authorization") == Some("Bearer good"))
            .count();
        assert_eq!(good_sent, 2, "the good credential's requests merged");
        assert!(waiting, "six requests waited for the next validation");
        // The entry is still there for the good credential.
        assert_hit_of(&fetch(proxy.addr(), &good), 1);
    });
}

/// A `/metrics` counter without labels.
fn metric(proxy: &Chacha, name: &str) -> u64 {
    let resp = fetch(
        proxy.addr(),
        format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            proxy.addr()
        ),
    );
    let text = resp.body_str();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

#[test]
fn a_queued_leader_whose_client_leaves_still_validates_for_the_others() {
    with_deadline(DEADLINE, || {
        let (gate, origin, proxy, raw, first) = first_validation_held();
        // The queued round's leader arrives first, then two members join it.
        let mut leader = common::Conn::connect(proxy.addr());
        leader.send(&raw).unwrap();
        assert!(proxy.wait_log_count(WAITS, 1, SIGNAL), "the leader queued");
        let members = fetch_all(proxy.addr(), &[raw.clone(), raw.clone()]);
        let waiting = proxy.wait_log_count(WAITS, 3, SIGNAL);
        // The leader's client goes away before its round is sent.
        drop(leader);
        gate.open();
        assert_hit_of(&join_all(first)[0], 1);
        for r in join_all(members) {
            assert_hit_of(&r, 1);
        }
        assert!(waiting, "two members joined the queued round");
        origin.settled();
        assert_eq!(conditionals(&origin, "/obj"), 2, "in flight + queued");
    });
}

#[test]
fn a_non_owner_merges_the_validations_of_another_nodes_key() {
    use common::cluster::{node_config, reserve_addrs, Cluster, NodeOpts};
    with_deadline(DEADLINE, || {
        let gate = Arc::new(Gate::default());
        let g = gate.clone();
        let origin = Origin::start(move |req| {
            if req.header("if-none-match").is_some() {
                g.pass();
            }
            versioned(req, 1)
        });
        let addrs = reserve_addrs(2);
        let opts = NodeOpts {
            workers: 1,
            ..NodeOpts::new("merge-secret")
        };
        let nodes = addrs
            .iter()
            .map(|&a| {
                Chacha::start_with_log(
                    &node_config(a, &addrs, opts),
                    "info,chacha::proxy::merge=debug",
                )
            })
            .collect();
        let cluster = Cluster {
            nodes,
            names: addrs.iter().map(|a| a.to_string()).collect(),
        };
        // A path node 1 owns, asked through node 0: the non-owner's (peer) storage.
        let path = (0..)
            .map(|i| format!("/obj{i}"))
            .find(|p| cluster.owner(&origin.url(p)) == 1)
            .unwrap();
        let front = cluster.nodes[0].addr();
        let raw = get(&origin.authority(), &path);
        assert_eq!(fetch(front, &raw).status(), 200, "stored on the owner");
        assert_hit_of(&fetch(front, &raw), 1);
        gate.close();
        let first = fetch_all(front, std::slice::from_ref(&raw));
        assert!(
            origin.wait_requests(3, SIGNAL),
            "the first validation was sent"
        );
        let more = fetch_all(front, &vec![raw.clone(); 4]);
        let waiting = cluster.nodes[0].wait_log_count(WAITS, 4, SIGNAL);
        gate.open();
        for r in join_all(first).iter().chain(&join_all(more)) {
            assert_hit_of(r, 1);
        }
        origin.settled();
        // The priming hit's validation, then in flight + queued (before: 1 + 5).
        assert_eq!(conditionals(&origin, &path), 3, "conditional requests");
        assert!(waiting, "four requests waited for the next validation");
    });
}

#[test]
fn a_304_that_sets_a_cookie_is_not_shared() {
    with_deadline(DEADLINE, || {
        let gate = Arc::new(Gate::default());
        let minted = Arc::new(AtomicU64::new(0));
        let (g, m) = (gate.clone(), minted.clone());
        let origin = Origin::start(move |req| {
            if req.header("if-none-match").is_some() {
                g.pass();
            }
            // A session id minted per response, as an origin does for a new visitor.
            let id = m.fetch_add(1, Ordering::SeqCst);
            versioned(req, 1).header("Set-Cookie", &format!("session={id}"))
        });
        let proxy = start_proxy();
        let raw = get(&origin.authority(), "/obj");
        assert_eq!(
            fetch(proxy.addr(), &raw).status(),
            200,
            "the entry is stored"
        );
        gate.close();
        let first = fetch_all(proxy.addr(), std::slice::from_ref(&raw));
        assert!(
            origin.wait_requests(2, SIGNAL),
            "the first validation was sent"
        );
        let more = fetch_all(proxy.addr(), &vec![raw.clone(); 4]);
        let waiting = proxy.wait_log_count(WAITS, 4, SIGNAL);
        gate.open();
        let responses: Vec<Response> = join_all(first).into_iter().chain(join_all(more)).collect();
        let mut cookies: Vec<String> = responses
            .iter()
            .map(|r| {
                assert_hit_of(r, 1);
                r.header("set-cookie")
                    .expect("each gets a cookie")
                    .to_string()
            })
            .collect();
        cookies.sort();
        cookies.dedup();
        // Each client its own session: the queued round's 304 went to its sender only,
        // the members sent their own requests.
        assert_eq!(cookies.len(), 5, "distinct cookies: {cookies:?}");
        assert!(waiting, "four requests waited for the next validation");
    });
}
