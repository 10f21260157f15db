//! Issue 9 (items 2, 3, 8): fills and hits that hostile or broken parties cannot spoil.
//! - a client that stops reading never stalls the shared fill (item 2);
//! - a blob whose body does not match its digest is never committed, whatever the body's
//!   framing (Content-Length, chunked, close-delimited), and every client is cut before
//!   its last byte (item 3);
//! - an entry file that is shorter than its header says is dropped while chacha runs and
//!   refilled by the next request; a client it was cut under sees an incomplete response
//!   (item 8).
//!
//! Real chacha processes against in-test origins on 127.0.0.1:0.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cached::{
    assert_hit, assert_served, assert_stored, cache_status, entry_files, wait_until,
};
use common::gen::{self, Verifier};
use common::origin::{Request as OReq, Response as OResp};
use common::{get, with_deadline, Chacha, ClientError, Conn, Head, Origin, Response};

/// Deadline for an ordinary test.
const DEADLINE: Duration = Duration::from_secs(60);
/// How long a log line or a commit may take to appear after the response that caused it.
const SETTLE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn start(limit: &str) -> Chacha {
    Chacha::start(&format!(
        "addr: 127.0.0.1:0\nworkers: 1\ndisk:\n  dir: \"{}\"\n  limit: {limit}\n",
        common::chacha::DIR_PLACEHOLDER
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `"nope"`: a blob path naming it never matches a generated body.
fn nope_digest() -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, b"nope").as_ref())
}

fn blob_path(repo: &str) -> String {
    format!("/v2/{repo}/blobs/sha256:{}", nope_digest())
}

/// 304 when `If-None-Match` names `etag`, otherwise `full()`, both with the ETag.
fn validated(req: &OReq, etag: &str, full: impl FnOnce() -> OResp) -> OResp {
    let matches = req
        .header("if-none-match")
        .is_some_and(|inm| inm.split(',').map(str::trim).any(|t| t == etag));
    let resp = if matches { OResp::status(304) } else { full() };
    resp.header("ETag", etag)
}

/// Asserts `body` is a prefix of the generated pattern.
fn assert_generated_prefix(body: &[u8]) {
    if let Some(i) = body
        .iter()
        .enumerate()
        .position(|(i, &b)| b != gen::byte_at(i as u64))
    {
        panic!("wrong byte at body offset {i}");
    }
}

/// Sends `raw` on a fresh connection and expects a 200 whose body is cut: returns its
/// head and the body bytes that arrived (a correct prefix).
fn expect_cut(addr: SocketAddr, raw: &str, what: &str) -> (Head, Vec<u8>) {
    match common::request(addr, raw) {
        Err(ClientError::Truncated { head, body, .. }) => {
            assert_eq!(head.status, 200, "{what}");
            assert_generated_prefix(&body);
            (head, body)
        }
        Ok(r) => panic!(
            "{what}: expected a cut response, got a complete {} with {} body bytes, Cache-Status {:?}",
            r.status(),
            r.body.len(),
            cache_status(&r)
        ),
        Err(e) => panic!("{what}: expected a cut response, got {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Item 3: the digest is checked at every way a body can end
// ---------------------------------------------------------------------------------------

/// Length of the wrong-digest blobs (the 300 kB).
const NOPE_LEN: usize = 300_000;

#[derive(Clone, Copy, Debug)]
enum Framing {
    Length,
    /// Chunked, the last chunk (`0\r\n\r\n`) a moment after the data.
    ChunkedLateEnd,
    /// `Connection: close` and no length.
    Close,
}

fn nope_origin(framing: Framing) -> Origin {
    Origin::start(move |req| {
        let body = gen::body(NOPE_LEN);
        validated(req, "\"nope-v1\"", || match framing {
            Framing::Length => OResp::ok(body),
            Framing::ChunkedLateEnd => {
                OResp::chunked(&[&body]).end_delay(Duration::from_millis(200))
            }
            Framing::Close => OResp::close_delimited(body),
        })
    })
}

/// Two requests for a blob whose body is not what its digest says: each is cut before
/// its last byte (a body shorter than the length, or no chunked terminator), nothing is
/// stored, and the second is again a plain miss (no validators sent, a second full body).
fn assert_wrong_digest_never_stored(framing: Framing) {
    let proxy = start("100MB");
    let origin = nope_origin(framing);
    let raw = get(&origin.authority(), &blob_path("x"));
    for attempt in 1..=2u64 {
        let what = format!("{framing:?}, attempt {attempt}");
        let (head, body) = expect_cut(proxy.addr(), &raw, &what);
        assert!(body.len() <= NOPE_LEN, "{what}: {} bytes", body.len());
        if let Some(cl) = head.header("content-length") {
            assert_eq!(cl, NOPE_LEN.to_string(), "{what}");
            assert!(body.len() < NOPE_LEN, "{what}: the whole body arrived");
        }
        let cs = head.header("cache-status").unwrap_or("");
        assert!(
            cs.contains("fwd=miss"),
            "{what}: Cache-Status {cs:?} (the entry must not have been stored)"
        );
        assert!(
            // This attempt's line, not the one before (each comes after its cut).
            proxy.wait_log_count("does not match its sha256 digest", attempt as usize, SETTLE),
            "{what}: no error logged"
        );
        let last = origin.last_request().unwrap();
        assert_eq!(last.header("if-none-match"), None, "{what}: revalidated");
        assert_served(&origin, attempt, 0);
    }
    assert!(entry_files(proxy.dir()).is_empty(), "an entry was stored");
}

#[test]
fn wrong_digest_with_content_length_is_never_stored() {
    with_deadline(DEADLINE, || {
        assert_wrong_digest_never_stored(Framing::Length)
    });
}

#[test]
fn wrong_digest_with_a_late_last_chunk_is_never_stored() {
    with_deadline(DEADLINE, || {
        assert_wrong_digest_never_stored(Framing::ChunkedLateEnd)
    });
}

#[test]
fn wrong_digest_close_delimited_is_never_stored() {
    with_deadline(DEADLINE, || {
        assert_wrong_digest_never_stored(Framing::Close)
    });
}

/// A reader that joined the fill of a blob with a wrong digest (Content-Length) is cut
/// before its last byte too: it must not get the bytes the leader has not verified yet.
#[test]
fn wrong_digest_cuts_a_joined_reader_before_its_last_byte() {
    const LEN: u64 = 2 << 20;
    with_deadline(DEADLINE, || {
        let proxy = start("100MB");
        let origin = Origin::start(|req| {
            validated(req, "\"nope-slow\"", || {
                // ~32 blocks, 30 ms apart: about a second of fill.
                OResp::generated(LEN).chunk_delay(Duration::from_millis(30))
            })
        });
        let raw = get(&origin.authority(), &blob_path("joined"));
        let mut leader = Conn::connect(proxy.addr());
        leader.send(&raw).unwrap();
        let head = leader.read_head("GET").expect("leader head");
        assert_eq!(head.status, 200);
        let joined = std::thread::spawn({
            let (addr, raw) = (proxy.addr(), raw.clone());
            move || expect_cut(addr, &raw, "joined reader")
        });
        let mut got = Vec::new();
        let lead = leader.read_body_with(&head, &mut |b| got.extend_from_slice(b));
        assert!(lead.is_err(), "the leader got a whole body");
        assert!((got.len() as u64) < LEN);
        assert_generated_prefix(&got);
        let (jhead, jbody) = joined.join().unwrap();
        assert_eq!(
            jhead.header("cache-status"),
            Some("chacha; hit; collapsed"),
            "the second request joined the fill"
        );
        assert!(
            (jbody.len() as u64) < LEN,
            "the joined reader got every byte"
        );
        assert_served(&origin, 1, 1);
        assert!(proxy.wait_log("does not match its sha256 digest", SETTLE));
        assert!(entry_files(proxy.dir()).is_empty(), "an entry was stored");
    });
}

// ---------------------------------------------------------------------------------------
// Item 8: a truncated entry is dropped while chacha runs
// ---------------------------------------------------------------------------------------

/// `/obj/{name}/{len}`: `len` generated bytes, ETag `"{name}-{len}"`, 304 on a match.
fn obj_routes(req: &OReq) -> OResp {
    let path = req.path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let name = parts.get(1).copied().unwrap_or("");
    let len: u64 = parts.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
    match parts[0] {
        "obj" => validated(req, &format!("\"{name}-{len}\""), || OResp::generated(len)),
        _ => OResp::status(404),
    }
}

/// One request on a fresh connection; panics (without dumping the body) unless a whole
/// response arrives.
fn fetch(addr: SocketAddr, raw: &str) -> Response {
    match common::request(addr, raw) {
        Ok(r) => r,
        Err(ClientError::Truncated { head, body, error }) => panic!(
            "cut response: {} with Cache-Status {:?}, {} body bytes: {error}",
            head.status,
            head.header("cache-status"),
            body.len()
        ),
        Err(e) => panic!("no response: {e:?}"),
    }
}

fn assert_generated(resp: &Response, len: u64) {
    assert_eq!(resp.status(), 200);
    let mut v = Verifier::new();
    v.feed(&resp.body);
    v.assert_complete(len);
}

/// Fills `raw` (a stored miss) and returns the path of its committed entry file.
fn fill_one(proxy: &Chacha, raw: &str, len: u64) -> std::path::PathBuf {
    let first = fetch(proxy.addr(), raw);
    assert_generated(&first, len);
    assert_stored(&first);
    let mut files = Vec::new();
    assert!(
        wait_until(SETTLE, || {
            files = entry_files(proxy.dir());
            files.len() == 1
        }),
        "no committed entry: {files:?}"
    );
    files.pop().unwrap()
}

fn truncate(path: &std::path::Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("truncate {}: {e}", path.display()));
}

/// The next request after a truncated entry refills it (a complete, correct body, a
/// second full fetch), and the one after is a hit again (the `hits`-th 304).
fn assert_refilled(proxy: &Chacha, origin: &Origin, raw: &str, len: u64, hits: u64) {
    let refill = fetch(proxy.addr(), raw);
    assert_generated(&refill, len);
    assert_stored(&refill);
    assert_eq!(
        origin.last_request().unwrap().header("if-none-match"),
        None,
        "the truncated entry was revalidated"
    );
    assert!(
        wait_until(SETTLE, || entry_files(proxy.dir()).len() == 1),
        "the refill was not committed"
    );
    let hit = fetch(proxy.addr(), raw);
    assert_hit(&hit);
    assert_generated(&hit, len);
    assert_served(origin, 2, hits);
}

/// An entry file cut short while chacha runs is noticed when it is opened (the file is
/// shorter than its header says): dropped, and the request refills it instead of being
/// cut at the same byte on every hit.
#[test]
fn entry_truncated_at_rest_is_dropped_and_refilled() {
    const LEN: u64 = 4 << 20;
    with_deadline(DEADLINE, || {
        let proxy = start("100MB");
        let origin = Origin::start(obj_routes);
        let raw = get(&origin.authority(), &format!("/obj/rest/{LEN}"));
        let file = fill_one(&proxy, &raw, LEN);
        let hit = fetch(proxy.addr(), &raw);
        assert_hit(&hit);
        truncate(&file, LEN / 2);
        assert_refilled(&proxy, &origin, &raw, LEN, 2);
        assert!(
            proxy.wait_log("cache: dropping", SETTLE),
            "the drop is logged"
        );
    });
}

/// An entry file cut short while a hit is being served: that client is cut (an
/// incomplete response, never a short complete one), the entry is dropped right then
/// (by the failed read, logged), and the next request refills it.
#[test]
fn entry_truncated_while_served_cuts_the_client_and_is_refilled() {
    const LEN: u64 = 32 << 20;
    const READ_FIRST: u64 = 1 << 20;
    with_deadline(DEADLINE, || {
        let proxy = start("200MB");
        let origin = Origin::start(obj_routes);
        let raw = get(&origin.authority(), &format!("/obj/served/{LEN}"));
        let file = fill_one(&proxy, &raw, LEN);

        let mut conn = Conn::connect(proxy.addr());
        set_rcvbuf(conn.stream(), 64 * 1024);
        conn.send(&raw).unwrap();
        let head = conn.read_head("GET").expect("head of the hit");
        assert_eq!(head.header("cache-status"), Some("chacha; hit"));
        // After a little of the body, cut the file under chacha, which is then mid-body
        // (held back by the small socket buffers, far from the end of 32 MiB).
        let mut v = Verifier::new();
        let mut cut = false;
        let rest = conn.read_body_with(&head, &mut |b| {
            v.feed(b);
            if !cut && v.len() >= READ_FIRST {
                truncate(&file, 2 << 20);
                cut = true;
            }
        });
        assert!(cut, "the body never reached {READ_FIRST} bytes");
        assert!(
            rest.is_err(),
            "the client got a complete response from a truncated file"
        );
        assert!(v.len() < LEN);
        assert_eq!(v.first_mismatch(), None, "wrong bytes before the cut");
        assert!(
            proxy.wait_log("cache file read failed", SETTLE),
            "the failed read is not logged"
        );
        assert!(
            proxy.wait_log("cache: dropping", SETTLE),
            "the entry was not dropped by the failed read"
        );
        assert_refilled(&proxy, &origin, &raw, LEN, 2);
    });
}

fn set_rcvbuf(stream: &std::net::TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket fd and an int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_RCVBUF");
}

// ---------------------------------------------------------------------------------------
// Item 2: a client that stops reading never stalls the shared fill
// ---------------------------------------------------------------------------------------

/// The object: 50 MB, paced by the origin so the fill takes a second or two.
const STALL_LEN: u64 = 50_000_000;
const STALL_BLOCK_MS: u64 = 2;
/// How much later than the origin's last byte the normal readers may finish.
const ORIGIN_SPEED_SLACK: Duration = Duration::from_secs(4);

/// The leader's client reads 200 bytes and then holds its socket open without reading;
/// three clients that joined the fill finish with correct bytes about when the origin
/// finishes, and the entry is committed (a hit) while the stalled client still holds on.
#[test]
fn a_stalled_leader_client_does_not_hold_back_the_fill_or_the_other_readers() {
    with_deadline(Duration::from_secs(90), || {
        let proxy = start("200MB");
        let origin = Origin::start(|req| {
            validated(req, "\"stall-v1\"", || {
                OResp::generated(STALL_LEN).chunk_delay(Duration::from_millis(STALL_BLOCK_MS))
            })
        });
        let raw = get(&origin.authority(), "/stall/big");
        let t0 = Instant::now();
        let stalled = Stalled::start(proxy.addr(), &raw);

        let readers: Vec<_> = (0..3)
            .map(|i| {
                let (addr, raw) = (proxy.addr(), raw.clone());
                std::thread::spawn(move || {
                    let mut conn = Conn::connect_timeout(addr, Duration::from_secs(30));
                    conn.send(&raw).unwrap();
                    let head = conn.read_head("GET").expect("reader head");
                    let mut v = Verifier::new();
                    let res = conn.read_body_with(&head, &mut |b| v.feed(b));
                    assert!(res.is_ok(), "reader {i} cut at {}: {res:?}", v.len());
                    v.assert_complete(STALL_LEN);
                    (cache_status_of(&head), Instant::now())
                })
            })
            .collect();
        assert!(
            wait_until(Duration::from_secs(60), || origin.full_bodies() >= 1),
            "the origin never finished the body: the fill stalled"
        );
        let origin_done = Instant::now();
        for r in readers {
            let (cs, finished) = r.join().unwrap();
            assert_eq!(cs, "chacha; hit; collapsed", "the reader joined the fill");
            let late = finished.saturating_duration_since(origin_done);
            assert!(
                late <= ORIGIN_SPEED_SLACK,
                "a reader finished {late:?} after the origin ({:?} after the start)",
                origin_done - t0
            );
        }
        // Committed while the stalled client still holds its socket.
        assert!(
            wait_until(SETTLE, || entry_files(proxy.dir()).len() == 1),
            "the entry was not committed"
        );
        let hit = fetch(proxy.addr(), &raw);
        assert_hit(&hit);
        assert_generated(&hit, STALL_LEN);
        // The readers' identical revalidations may share one sent after they arrived
        // (issue 15: merged revalidations): 1 to 3 of them, and the hit's.
        let settled = origin.settled();
        assert_eq!(settled.full_bodies, 1, "one full body");
        assert!(
            (2..=4).contains(&settled.not_modified),
            "304s: {}",
            settled.not_modified
        );
        // Let the stalled client read on: it gets the rest of the body, correct.
        stalled.finish(STALL_LEN);
    });
}

/// A leader's client that stops reading for longer than `timeouts.idle` is cut once a
/// write to it cannot complete in that time; the fill it led was committed meanwhile.
#[test]
fn a_stalled_leader_client_is_cut_after_the_idle_timeout() {
    const LEN: u64 = 20 << 20;
    with_deadline(DEADLINE, || {
        let proxy = Chacha::start(&format!(
            "addr: 127.0.0.1:0\nworkers: 1\ndisk:\n  dir: \"{}\"\n  limit: 100MB\ntimeouts:\n  idle: 1s\n",
            common::chacha::DIR_PLACEHOLDER
        ));
        let origin = Origin::start(obj_routes);
        let raw = get(&origin.authority(), &format!("/obj/idle/{LEN}"));
        let stalled = Stalled::start(proxy.addr(), &raw);
        assert!(
            wait_until(SETTLE, || entry_files(proxy.dir()).len() == 1),
            "the fill was not committed while its client stalled"
        );
        assert!(
            proxy.wait_log("did not take a piece within 1s", SETTLE),
            "the stalled client was not cut"
        );
        stalled.finish_cut(LEN);
        let hit = fetch(proxy.addr(), &raw);
        assert_hit(&hit);
        assert_generated(&hit, LEN);
    });
}

/// The same on the cluster's non-owner path: the stalled client, detached from the
/// PUT, is cut after `timeouts.idle` without progress; the owner committed the entry.
#[test]
fn a_stalled_client_on_a_non_owner_is_cut_after_the_idle_timeout() {
    const LEN: u64 = 20 << 20;
    with_deadline(DEADLINE, || {
        let origin = Origin::start(obj_routes);
        let pair = Pair::start_with("timeouts:\n  idle: 1s\n");
        let path = pair.path_owned_by_1(&origin, |i| format!("/obj/idle-{i}/{LEN}"));
        let raw = get(&origin.authority(), &path);
        let stalled = Stalled::start(pair.nodes[0].addr(), &raw);
        assert!(
            wait_until(SETTLE, || entry_files(pair.nodes[1].dir()).len() == 1),
            "the owner did not commit the entry while the client stalled"
        );
        assert!(
            pair.nodes[0].wait_log("did not take a piece within 1s", SETTLE),
            "the stalled client was not cut"
        );
        stalled.finish_cut(LEN);
        let hit = fetch(pair.nodes[0].addr(), &raw);
        assert_hit(&hit);
        assert_generated(&hit, LEN);
    });
}

fn cache_status_of(head: &Head) -> String {
    head.header("cache-status").unwrap_or("<none>").to_string()
}

// ---------------------------------------------------------------------------------------
// Cluster mode: the non-owner's fill (origin -> KV PUT to the owner + client)
// ---------------------------------------------------------------------------------------

const SECRET: &str = "hostile-cache-secret";

/// Two loopback addresses with free ports for a two-node cluster (as tests/cluster.rs
/// picks them: a 127.x.y.0/24 of this process and call, ports released just before the
/// nodes start).
fn reserve_pair() -> Vec<SocketAddr> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::SeqCst);
    let net = (
        // Another range than tests/cluster.rs uses (100..200).
        200 + (std::process::id() % 50) as u8,
        (call % 250) as u8 + 1,
    );
    let listeners: Vec<std::net::TcpListener> = (1..=2)
        .map(|i| {
            std::net::TcpListener::bind(format!("127.{}.{}.{i}:0", net.0, net.1))
                .expect("bind a loopback address")
        })
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

struct Pair {
    nodes: Vec<Chacha>,
    names: Vec<String>,
}

impl Pair {
    fn start() -> Pair {
        Pair::start_with("")
    }

    /// With `extra` top-level YAML in both nodes' configs.
    fn start_with(extra: &str) -> Pair {
        let addrs = reserve_pair();
        let mut list = String::new();
        for a in &addrs {
            list.push_str(&format!("    - addr: {a}\n"));
        }
        let nodes = addrs
            .iter()
            .map(|a| {
                Chacha::start(&format!(
                    "addr: {a}\nworkers: 1\ndisk:\n  dir: \"{}\"\n  limit: 200MB\ncluster:\n  secret: {SECRET}\n  nodes:\n{list}{extra}",
                    common::chacha::DIR_PLACEHOLDER
                ))
            })
            .collect();
        Pair {
            nodes,
            names: addrs.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Index of the node owning `url`'s cache key (the README's rendezvous hashing).
    fn owner(&self, url: &str) -> usize {
        let key =
            chacha::cache::key::cache_key(&chacha::http::uri::parse_absolute(url).unwrap(), None);
        chacha::cluster::pick(self.names.iter().map(String::as_str), &key).unwrap()
    }

    /// A path `make(i)` (for the first i that works) whose key node 1 owns: requests
    /// through node 0 then take the non-owner's path.
    fn path_owned_by_1(&self, origin: &Origin, make: impl Fn(u32) -> String) -> String {
        (0..64)
            .map(make)
            .find(|p| self.owner(&origin.url(p)) == 1)
            .expect("some path is owned by node 1")
    }
}

/// The same wrong digests through the cluster's non-owner path: the client is cut
/// before its last byte and the owner never commits the entry.
fn assert_wrong_digest_never_stored_through_a_peer(framing: Framing) {
    let origin = nope_origin(framing);
    let pair = Pair::start();
    let path = pair.path_owned_by_1(&origin, |i| blob_path(&format!("peer{i}")));
    let raw = get(&origin.authority(), &path);
    for attempt in 1..=2u64 {
        let what = format!("{framing:?} through a peer, attempt {attempt}");
        let (head, body) = expect_cut(pair.nodes[0].addr(), &raw, &what);
        if head.header("content-length").is_some() {
            assert!(body.len() < NOPE_LEN, "{what}: the whole body arrived");
        }
        let cs = head.header("cache-status").unwrap_or("");
        assert!(
            cs.contains("fwd=miss"),
            "{what}: Cache-Status {cs:?}\nnode 0:\n{}\nnode 1:\n{}",
            pair.nodes[0].log(),
            pair.nodes[1].log()
        );
        assert!(
            // This attempt's line, not the one before (each comes after its cut).
            pair.nodes[0].wait_log_count(
                "does not match its sha256 digest",
                attempt as usize,
                SETTLE
            ),
            "{what}: no error logged"
        );
        let last = origin.last_request().unwrap();
        assert_eq!(last.header("if-none-match"), None, "{what}: revalidated");
        assert_served(&origin, attempt, 0);
    }
    for node in &pair.nodes {
        assert!(entry_files(node.dir()).is_empty(), "an entry was stored");
    }
}

#[test]
fn wrong_digest_through_a_peer_with_content_length_is_never_stored() {
    with_deadline(DEADLINE, || {
        assert_wrong_digest_never_stored_through_a_peer(Framing::Length)
    });
}

#[test]
fn wrong_digest_through_a_peer_with_a_late_last_chunk_is_never_stored() {
    with_deadline(DEADLINE, || {
        assert_wrong_digest_never_stored_through_a_peer(Framing::ChunkedLateEnd)
    });
}

#[test]
fn wrong_digest_through_a_peer_close_delimited_is_never_stored() {
    with_deadline(DEADLINE, || {
        assert_wrong_digest_never_stored_through_a_peer(Framing::Close)
    });
}

/// Item 2 on the cluster path: the stalled client leads the fill on the non-owner
/// (origin -> KV PUT to the owner + this client); readers on both nodes join the owner's
/// fill and finish about when the origin does, and the owner commits the entry while
/// the stalled client still holds its socket.
#[test]
fn a_stalled_client_on_a_non_owner_does_not_hold_back_the_owners_fill() {
    with_deadline(Duration::from_secs(90), || {
        let origin = Origin::start(|req| {
            validated(req, "\"stall-peer-v1\"", || {
                OResp::generated(STALL_LEN).chunk_delay(Duration::from_millis(STALL_BLOCK_MS))
            })
        });
        let pair = Pair::start();
        let path = pair.path_owned_by_1(&origin, |i| format!("/stall/peer-{i}"));
        let raw = get(&origin.authority(), &path);
        let stalled = Stalled::start(pair.nodes[0].addr(), &raw);

        let readers: Vec<_> = [0usize, 0, 1]
            .into_iter()
            .map(|n| {
                let (addr, raw) = (pair.nodes[n].addr(), raw.clone());
                std::thread::spawn(move || {
                    let mut conn = Conn::connect_timeout(addr, Duration::from_secs(30));
                    conn.send(&raw).unwrap();
                    let head = conn.read_head("GET").expect("reader head");
                    let mut v = Verifier::new();
                    let res = conn.read_body_with(&head, &mut |b| v.feed(b));
                    assert!(
                        res.is_ok(),
                        "reader on node {n} cut at {}: {res:?}",
                        v.len()
                    );
                    v.assert_complete(STALL_LEN);
                    (cache_status_of(&head), Instant::now())
                })
            })
            .collect();
        assert!(
            wait_until(Duration::from_secs(60), || origin.full_bodies() >= 1),
            "the origin never finished the body: the fill stalled"
        );
        let origin_done = Instant::now();
        for r in readers {
            let (cs, finished) = r.join().unwrap();
            assert!(cs.starts_with("chacha; hit"), "a reader: {cs:?}");
            let late = finished.saturating_duration_since(origin_done);
            assert!(
                late <= ORIGIN_SPEED_SLACK,
                "a reader finished {late:?} after the origin"
            );
        }
        assert!(
            wait_until(SETTLE, || entry_files(pair.nodes[1].dir()).len() == 1),
            "the owner did not commit the entry"
        );
        assert!(
            pair.nodes[0].wait_log("fell behind at byte", SETTLE),
            "the stalled client was not detached"
        );
        let hit = fetch(pair.nodes[0].addr(), &raw);
        assert_hit(&hit);
        assert_generated(&hit, STALL_LEN);
        // The readers' identical revalidations may share one sent after they arrived
        // (issue 15: merged revalidations): 1 to 3 of them, and the hit's.
        let settled = origin.settled();
        assert_eq!(settled.full_bodies, 1, "one full body");
        assert!(
            (2..=4).contains(&settled.not_modified),
            "304s: {}",
            settled.not_modified
        );
        // Let the stalled client read on: it gets the rest from the owner, correct.
        stalled.finish(STALL_LEN);
    });
}

/// A client that sends a GET, reads the head and the first bytes of the body, then stops
/// reading (a small receive buffer, so the sender blocks soon) until `finish`.
struct Stalled {
    release: std::sync::mpsc::Sender<()>,
    reader: std::thread::JoinHandle<(Result<u64, String>, Verifier)>,
}

impl Stalled {
    fn start(addr: SocketAddr, raw: &str) -> Stalled {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (head_tx, head_rx) = std::sync::mpsc::channel::<Head>();
        let raw = raw.to_string();
        let reader = std::thread::spawn(move || {
            let mut conn = Conn::connect_timeout(addr, Duration::from_secs(60));
            set_rcvbuf(conn.stream(), 64 * 1024);
            conn.send(&raw).unwrap();
            let head = conn.read_head("GET").expect("head for the stalled client");
            head_tx.send(head.clone()).unwrap();
            let mut v = Verifier::new();
            let mut stalled = false;
            let res = conn.read_body_with(&head, &mut |b| {
                v.feed(b);
                if !stalled && v.len() >= 200 {
                    stalled = true;
                    let _ = released.recv();
                }
            });
            (res.map_err(|t| t.error.to_string()), v)
        });
        let head = head_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("head for the stalled client");
        assert_eq!(head.status, 200);
        assert!(
            cache_status_of(&head).contains("stored"),
            "the stalled client leads the fill: {:?}",
            head.header("cache-status")
        );
        Stalled { release, reader }
    }

    /// Reads on: the body must end early (the connection cut), the bytes before correct.
    fn finish_cut(self, len: u64) {
        let _ = self.release.send(());
        let (res, v) = self.reader.join().unwrap();
        assert!(res.is_err(), "the stalled client got the whole body");
        assert!(v.len() < len);
        assert_eq!(v.first_mismatch(), None, "wrong bytes before the cut");
    }

    /// Reads on: the whole body must arrive, correct.
    fn finish(self, len: u64) {
        let _ = self.release.send(());
        let (res, v) = self.reader.join().unwrap();
        assert!(
            res.is_ok(),
            "the stalled client was cut at {}: {res:?}",
            v.len()
        );
        v.assert_complete(len);
    }
}
