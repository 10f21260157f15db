//! Direct-connect (issue 14), with real chacha processes: a two-node cluster on
//! loopback addresses and an in-test origin that counts what it sends. A validated hit
//! through a non-owner is a 307 to the owner's `/direct-connect?token=<JWT>` (the
//! original's wire format); the owner serves the entry from its disk (Range → 206), and
//! refuses forged, expired or wrong-audience tokens (401), entries it does not have
//! (404) and entries replaced since the token was minted (410).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64URL, Engine as _};
use common::cluster::{key_of, Cluster, NodeOpts};
use common::origin::static_validated;
use common::{get_with, with_deadline, Chacha, Conn, Origin};

const SECRET: &str = "direct-connect-test-secret";
const DEADLINE: Duration = Duration::from_secs(90);
const BODY_LEN: usize = 256 * 1024;

const RULES: &str = "rules:\n  - pattern: '^http://[^/]+/dc/'\n    direct-connect: true\n    direct-connect-header: true\n";

/// The two-node cluster of these tests, with the direct-connect rule.
fn start_cluster() -> Cluster {
    Cluster::start(
        2,
        NodeOpts {
            extra: RULES,
            ..NodeOpts::new(SECRET)
        },
    )
}

impl Cluster {
    /// A path under `prefix` whose key node 0 owns (so node 1 is the non-owner).
    fn path_owned_by_0(&self, origin: &Origin, prefix: &str) -> String {
        (0..1000)
            .map(|i| format!("{prefix}{i}"))
            .find(|p| self.owner(&origin.url(p)) == 0)
            .expect("some path is owned by node 0")
    }
}

/// The body served for `path` at `version`.
fn body(path: &str, version: u64) -> Vec<u8> {
    let seed = format!("{path}@{version};");
    seed.bytes().cycle().take(BODY_LEN).collect()
}

/// An origin serving [`body`] with a strong ETag naming the current version (bumped by
/// the test to replace an entry), answering If-None-Match with 304.
fn versioned_origin() -> (Origin, Arc<AtomicU64>) {
    let version = Arc::new(AtomicU64::new(1));
    let v = version.clone();
    let origin = Origin::start(move |req| {
        let n = v.load(Ordering::SeqCst);
        let etag = format!("\"v{n}\"");
        static_validated(
            req,
            &body(req.path(), n),
            &etag,
            "Mon, 01 Jan 2024 00:00:00 GMT",
        )
    });
    (origin, version)
}

fn via(node: &Chacha, origin: &Origin, path: &str, extra: &[&str]) -> common::Response {
    Conn::connect(node.addr())
        .request(get_with(&origin.authority(), path, extra))
        .unwrap_or_else(|e| panic!("GET {path} via {}: {e:?}", node.addr()))
}

/// An origin-form GET of `target` on `addr` (a client following the 307 directly).
fn direct(addr: SocketAddr, target: &str, extra: &[&str]) -> common::Response {
    let mut raw = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
    for h in extra {
        raw.push_str(h);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    Conn::connect(addr)
        .request(raw)
        .unwrap_or_else(|e| panic!("GET {target} on {addr}: {e:?}"))
}

/// Waits until `node` has logged `n` request lines holding `needle` (e.g. `"GET URL"`).
/// A request's metrics are counted just before its line is logged, after its response
/// went out: a scrape taken once the line is there holds them; one taken as soon as the
/// client has its response may not.
fn wait_lines(node: &Chacha, needle: &str, n: usize) {
    assert!(
        node.wait_log_count(needle, n, Duration::from_secs(10)),
        "{n} request lines with {needle:?} wanted:\n{}",
        node.log()
    );
}

/// Splits a `Location` of the form `http://<addr>/direct-connect?token=<jwt>`.
fn location(r: &common::Response) -> (SocketAddr, String, String) {
    let loc = r.header("location").expect("a Location").to_string();
    let rest = loc.strip_prefix("http://").expect("an http:// Location");
    let (host, target) = rest.split_at(rest.find('/').expect("a path"));
    let token = target
        .strip_prefix("/direct-connect?token=")
        .unwrap_or_else(|| panic!("not a direct-connect Location: {loc}"))
        .to_string();
    (host.parse().unwrap(), target.to_string(), token)
}

/// The sum of the samples of `name` whose labels contain `labels`, from `GET /metrics`.
fn metric(addr: SocketAddr, name: &str, labels: &str) -> u64 {
    let r = direct(addr, "/metrics", &[]);
    assert_eq!(r.status(), 200);
    r.body_str()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && rest.contains(labels)).then(|| value.parse::<u64>().unwrap())
        })
        .sum()
}

/// Body bytes a node sent its clients, but for its own endpoints (`/metrics` itself),
/// from one scrape.
fn proxied_bytes(addr: SocketAddr) -> u64 {
    let r = direct(addr, "/metrics", &[]);
    r.body_str()
        .lines()
        .filter(|l| l.starts_with("chacha_client_sent_bytes_total{"))
        .filter(|l| !l.contains("op=\"internal\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT built byte for byte to RFC 7519/7515 as the original mints it (golang-jwt:
/// header `{"alg":"HS256","typ":"JWT"}`, `RegisteredClaims` in field order), signed
/// with HMAC-SHA256 over `secret`.
fn jwt(secret: &str, claims: &str) -> String {
    let input = format!(
        "{}.{}",
        B64URL.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        B64URL.encode(claims)
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let sig = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", B64URL.encode(sig.as_ref()))
}

fn claims(key: &str, aud: &str, nbf: u64, exp: u64) -> String {
    let key = serde_json::to_string(key).unwrap();
    format!(r#"{{"iss":"chacha","sub":{key},"aud":["{aud}"],"exp":{exp},"nbf":{nbf}}}"#)
}

#[test]
fn a_hit_through_a_non_owner_is_a_307_to_the_owner_which_serves_it() {
    with_deadline(DEADLINE, || {
        let (origin, _) = versioned_origin();
        let c = start_cluster();
        let (owner, other) = (&c.nodes[0], &c.nodes[1]);
        let path = c.path_owned_by_0(&origin, "/dc/blob-");
        let want = body(&path, 1);

        // The miss fills the owner through the non-owner.
        let r = via(other, &origin, &path, &[]);
        assert_eq!(r.status(), 200);
        assert_eq!(r.body, want);
        assert_eq!(origin.settled().full_bodies, 1);
        // The miss's bytes are counted before `sent_before` is read.
        let via_line = format!("\"GET {}\" ", origin.url(&path));
        wait_lines(other, &via_line, 1);

        // The validated hit: a 307 to the owner, with the hint header.
        let sent_before = proxied_bytes(other.addr());
        let r = via(other, &origin, &path, &[]);
        assert_eq!(r.status(), 307, "{:?}", r.head);
        wait_lines(other, &via_line, 2);
        assert_eq!(r.header("x-chacha-direct-connect"), Some("1"));
        let (addr, target, token) = location(&r);
        assert_eq!(addr, owner.addr(), "the Location names the owner");
        assert_eq!(
            origin.settled().full_bodies,
            1,
            "the hit was validated with a 304"
        );

        // Our token is the original's format: HS256 over the secret, iss, aud, sub, a
        // ten-minute validity (so the original accepts it).
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "HS256");
        let cl: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(cl["iss"], "chacha");
        assert_eq!(cl["aud"], serde_json::json!(["direct-connect"]));
        assert_eq!(cl["sub"], key_of(&origin.url(&path)));
        assert_eq!(
            cl["exp"].as_u64().unwrap() - cl["nbf"].as_u64().unwrap(),
            600
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let input = format!("{}.{}", parts[0], parts[1]);
        ring::hmac::verify(&key, input.as_bytes(), &B64URL.decode(parts[2]).unwrap())
            .expect("the signature is HMAC-SHA256 under the cluster secret");

        // Following it: the owner sends the whole body, the non-owner none of it.
        let served_before = proxied_bytes(owner.addr());
        let r = direct(addr, &target, &[]);
        assert_eq!(r.status(), 200, "{}", r.body_str());
        assert!(r.body == want, "the owner served the stored body");
        assert_eq!(r.header("etag"), Some("\"v1\""));
        let dc_line = "\"GET /direct-connect?token=";
        wait_lines(owner, dc_line, 1);
        let served = proxied_bytes(owner.addr());
        assert!(
            served - served_before >= BODY_LEN as u64,
            "owner sent {} bytes",
            served - served_before
        );
        let sent = proxied_bytes(other.addr());
        assert!(
            sent - sent_before < 1024,
            "the non-owner sent {} body bytes for the redirect",
            sent - sent_before
        );

        // Range: a 206 with exactly those bytes (Tart resumes here); If-Range with the
        // entry's ETag keeps the range, another validator gets the whole body.
        let r = direct(addr, &target, &["Range: bytes=1000-1999"]);
        assert_eq!(r.status(), 206);
        assert_eq!(r.body, want[1000..2000]);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes 1000-1999/{BODY_LEN}").as_str())
        );
        let r = direct(addr, &target, &["Range: bytes=-10", "If-Range: \"v1\""]);
        assert_eq!(r.status(), 206);
        assert_eq!(r.body, want[BODY_LEN - 10..]);
        let r = direct(addr, &target, &["Range: bytes=0-9", "If-Range: \"v0\""]);
        assert_eq!(r.status(), 200);
        assert!(r.body == want);
        wait_lines(owner, dc_line, 4);

        // Counted by result on both sides.
        let dc = "chacha_direct_connect_total";
        assert_eq!(metric(other.addr(), dc, "result=\"redirect\""), 1);
        assert_eq!(metric(owner.addr(), dc, "result=\"ok\""), 2);
        assert_eq!(metric(owner.addr(), dc, "result=\"partial\""), 2);
        assert_eq!(origin.settled().full_bodies, 1);
    });
}

#[test]
fn a_url_without_direct_connect_is_served_through_the_non_owner() {
    with_deadline(DEADLINE, || {
        let (origin, _) = versioned_origin();
        let c = start_cluster();
        let path = c.path_owned_by_0(&origin, "/plain/blob-");
        for _ in 0..2 {
            let r = via(&c.nodes[1], &origin, &path, &[]);
            assert_eq!(r.status(), 200);
            assert!(r.header("location").is_none());
            assert!(r.body == body(&path, 1));
        }
        assert_eq!(origin.settled().full_bodies, 1, "the second was a hit");
        wait_lines(&c.nodes[1], &format!("\"GET {}\" ", origin.url(&path)), 2);
        let dc = "chacha_direct_connect_total";
        assert_eq!(metric(c.nodes[1].addr(), dc, "result=\"redirect\""), 0);
        // And a direct-connect URL through its owner is served by the owner itself.
        let path = c.path_owned_by_0(&origin, "/dc/own-");
        for _ in 0..2 {
            let r = via(&c.nodes[0], &origin, &path, &[]);
            assert_eq!(r.status(), 200);
            assert!(r.body == body(&path, 1));
        }
        wait_lines(&c.nodes[0], &format!("\"GET {}\" ", origin.url(&path)), 2);
        assert_eq!(metric(c.nodes[0].addr(), dc, "result=\"redirect\""), 0);
    });
}

#[test]
fn tokens_built_to_the_jwt_spec_are_checked_like_the_originals() {
    with_deadline(DEADLINE, || {
        let (origin, _) = versioned_origin();
        let c = start_cluster();
        let owner = c.nodes[0].addr();
        let path = c.path_owned_by_0(&origin, "/dc/spec-");
        let r = via(&c.nodes[1], &origin, &path, &[]);
        assert_eq!(r.status(), 200);
        let key = key_of(&origin.url(&path));
        let t = now();
        let at = |token: String| direct(owner, &format!("/direct-connect?token={token}"), &[]);

        // The original's token (no validator claim): bound to the key, served.
        let r = at(jwt(SECRET, &claims(&key, "direct-connect", t, t + 600)));
        assert_eq!(r.status(), 200, "{}", r.body_str());
        assert!(r.body == body(&path, 1));
        // Within the 10 s leeway either side.
        let r = at(jwt(SECRET, &claims(&key, "direct-connect", t + 5, t + 600)));
        assert_eq!(r.status(), 200, "{}", r.body_str());

        let refused = |token: String, why: &str| {
            let r = at(token);
            assert_eq!(r.status(), 401, "{why}: {}", r.body_str());
            assert_eq!(r.body_str().lines().count(), 1, "a one-line reason");
        };
        refused(
            jwt(
                "another-secret",
                &claims(&key, "direct-connect", t, t + 600),
            ),
            "forged",
        );
        refused(
            jwt(SECRET, &claims(&key, "direct-connect", t - 1200, t - 600)),
            "expired",
        );
        refused(
            jwt(SECRET, &claims(&key, "direct-connect", t + 300, t + 900)),
            "not yet valid",
        );
        refused(
            jwt(SECRET, &claims(&key, "kv", t, t + 600)),
            "wrong audience",
        );
        let wrong_iss = claims(&key, "direct-connect", t, t + 600).replace("chacha", "other");
        refused(jwt(SECRET, &wrong_iss), "wrong issuer");
        let none = format!(
            "{}.{}.",
            B64URL.encode(r#"{"alg":"none","typ":"JWT"}"#),
            B64URL.encode(claims(&key, "direct-connect", t, t + 600))
        );
        refused(none, "alg none");
        let r = direct(owner, "/direct-connect", &[]);
        assert_eq!(r.status(), 401, "missing token");

        // A valid token for a key this node has no entry for.
        let gone = key_of(&origin.url("/dc/never-stored"));
        let r = at(jwt(SECRET, &claims(&gone, "direct-connect", t, t + 600)));
        assert_eq!(r.status(), 404, "{}", r.body_str());

        // 2 served, 7 refused, 1 not found: every line logged, so every result counted.
        wait_lines(&c.nodes[0], "\"GET /direct-connect", 10);
        let dc = "chacha_direct_connect_total";
        assert_eq!(metric(owner, dc, "result=\"unauthorized\""), 7);
        assert_eq!(metric(owner, dc, "result=\"not_found\""), 1);
    });
}

#[test]
fn a_replaced_entry_is_never_served_under_an_old_token() {
    with_deadline(DEADLINE, || {
        let (origin, version) = versioned_origin();
        let c = start_cluster();
        let other = &c.nodes[1];
        let path = c.path_owned_by_0(&origin, "/dc/replaced-");
        assert_eq!(via(other, &origin, &path, &[]).status(), 200);
        let r = via(other, &origin, &path, &[]);
        assert_eq!(r.status(), 307);
        let (addr, old_target, _) = location(&r);
        assert!(direct(addr, &old_target, &[]).body == body(&path, 1));

        // The origin's object changes: the next request through the proxy refills the
        // owner with version 2.
        version.store(2, Ordering::SeqCst);
        let r = via(other, &origin, &path, &[]);
        assert_eq!(r.status(), 200);
        assert!(r.body == body(&path, 2));
        assert_eq!(origin.settled().full_bodies, 2);

        // The old token no longer serves anything (a resume would splice versions).
        let r = direct(addr, &old_target, &["Range: bytes=100-"]);
        assert_eq!(r.status(), 410, "{}", r.body_str());
        let r = direct(addr, &old_target, &[]);
        assert_eq!(r.status(), 410);
        // Back through the proxy: a fresh token for the new entry.
        let r = via(other, &origin, &path, &[]);
        assert_eq!(r.status(), 307);
        let (addr, target, _) = location(&r);
        let r = direct(addr, &target, &[]);
        assert_eq!(r.status(), 200);
        assert!(r.body == body(&path, 2));
        // Its 4 direct requests (200, 410, 410, 200) logged, so counted.
        assert_eq!(addr, c.nodes[0].addr());
        wait_lines(&c.nodes[0], "\"GET /direct-connect", 4);
        let dc = "chacha_direct_connect_total";
        assert_eq!(metric(addr, dc, "result=\"replaced\""), 2);
    });
}

#[test]
fn direct_connect_without_a_cluster_is_404() {
    with_deadline(DEADLINE, || {
        let node = Chacha::start(&common::config(RULES));
        let t = now();
        let token = jwt(
            SECRET,
            &claims("http://x/dc/a", "direct-connect", t, t + 600),
        );
        let r = direct(node.addr(), &format!("/direct-connect?token={token}"), &[]);
        assert_eq!(r.status(), 404, "{}", r.body_str());
    });
}
