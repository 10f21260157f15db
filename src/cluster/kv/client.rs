//! The KV protocol, client side: a non-owner's requests to a key's owner, over the same
//! per-core keep-alive pool as origins (`PoolKey { tls: false, host: peer ip, port }`),
//! so steady-state hits set up no connection between nodes. Also the watch task: probes
//! peers with `GET /health`, with hysteresis ([`watch`]), and expires claims that other
//! nodes never completed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::{claim_ttl, FILL_CLAIM, FILL_CLAIMED, FILL_HEADER, KEY_HEADER, METADATA_HEADER};
use crate::cache::meta::EntryMeta;
use crate::cluster::metadata::Metadata;
use crate::cluster::{Cluster, Node};
use crate::http::{BodyKind, ResponseHead};
use crate::server::shutdown::Shutdown;
use crate::stream::{BodyReader, BodyWriter, BufConn};
use crate::upstream::exchange::{exchange_bodiless, read_head_by};
use crate::upstream::Client;
use crate::upstream::{UpStream, UpstreamConn, UpstreamError};
use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};

/// How often the watch task wakes (probes are due by their own backoff).
pub const WATCH_TICK: Duration = Duration::from_millis(200);
/// First and longest wait between two probes of a down peer.
pub const PROBE_BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A probe's connect + answer must fit in this.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of a short answer (404, PUT's 200) read to keep its connection.
const MAX_DRAIN: u64 = 64 * 1024;
/// Read buffer for those short answers.
const DRAIN_BUF: usize = 4096;

/// An entry the owner is sending: its metadata, and the body still to read from `conn`.
pub struct Found {
    pub conn: UpstreamConn,
    pub meta: EntryMeta,
    /// The framing of what the owner sends: the whole body, or the range asked for.
    pub kind: BodyKind,
    /// The body offset of the first byte the owner sends (0 unless it answered a range).
    pub first: u64,
    /// The length of the whole body, when known.
    pub body_len: Option<u64>,
    /// Whether the owner keeps the connection after this response.
    pub keep_alive: bool,
}

/// Why a KV request to a peer failed.
#[derive(Debug)]
pub enum PeerError {
    /// No usable answer (connect, I/O, timeout, garbage): the peer counts as down.
    Unreachable(String),
    /// The peer answered, but not as a KV server of this cluster should (e.g. 401: the
    /// secrets differ). Not a health problem: probing would find it up at once.
    Refused(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Unreachable(e) | PeerError::Refused(e) => f.write_str(e),
        }
    }
}

/// Describes a connection-level failure without the origin-centred wording of
/// [`UpstreamError`]'s messages.
fn unreachable(e: UpstreamError) -> PeerError {
    PeerError::Unreachable(match e {
        UpstreamError::Connect(s) | UpstreamError::Closed(s) | UpstreamError::Protocol(s) => s,
        UpstreamError::ConnectTimeout(d) => format!("connect timed out after {d:?}"),
        UpstreamError::HeadTimeout(d) => format!("no answer within {d:?}"),
        other => other.to_string(),
    })
}

pub enum Lookup {
    Found(Box<Found>),
    /// No entry; `claimed` when the owner made this node the one to fill it.
    Miss {
        claimed: bool,
    },
}

/// `bytes first-last/len` (RFC 9110 §14.4) with `first <= last < len`.
fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, len) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last, len) = (first.parse().ok()?, last.parse().ok()?, len.parse().ok()?);
    (first <= last && last < len).then_some((first, last, len))
}

/// Logs the state change once, however many requests see the failure.
pub fn mark_down(node: &Node, reason: &str) {
    if node.mark_down() {
        log::warn!(
            "cluster: node {} is unreachable ({reason}); its keys go to their stand-ins until it answers /health",
            node.name
        );
    }
}

fn request_head(
    method: &str,
    node: &Node,
    cluster: &Cluster,
    key: &str,
    extra: &[(&str, &str)],
    body: Option<Option<u64>>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + key.len() * 2);
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b" / HTTP/1.1\r\nHost: ");
    out.extend_from_slice(node.name.as_bytes());
    out.extend_from_slice(b"\r\nAuthorization: ");
    out.extend_from_slice(cluster.authorization.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(KEY_HEADER.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(BASE64.encode(key.as_bytes()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in extra {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match body {
        None => {}
        Some(Some(len)) => out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes()),
        Some(None) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads the rest of a short response and pools its connection when it can carry
/// another request; a long or broken one is dropped (closed).
async fn drain_and_release(
    w: &impl Client,
    mut up: UpstreamConn,
    resp: &ResponseHead,
    method: &str,
) {
    let Ok(kind) = resp.body_kind(method) else {
        return;
    };
    if matches!(kind, BodyKind::Length(n) if n > MAX_DRAIN) || kind == BodyKind::UntilClose {
        return;
    }
    let mut reader = BodyReader::new(kind);
    let mut buf = Vec::with_capacity(DRAIN_BUF);
    let mut total = 0u64;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while !reader.is_done() {
        match monoio::time::timeout_at(deadline.into(), reader.read(&mut up.conn, &mut buf)).await {
            Ok(Ok(n)) if n > 0 && total + (n as u64) <= MAX_DRAIN => total += n as u64,
            Ok(Ok(0)) => break,
            _ => return,
        }
    }
    if reader.is_done() && resp.keep_alive() {
        w.pool().release(up);
    }
}

/// KV GET of `key` on its owner. With `claim`, a miss makes this node the key's filler
/// (see [`super`]). The owner may hold the answer while a fill it knows of starts,
/// up to the claim time-to-live.
pub async fn get(
    w: &impl Client,
    cluster: &Cluster,
    node: &Node,
    key: &str,
    claim: bool,
    range: Option<&str>,
) -> Result<Lookup, PeerError> {
    let mut extra: [(&str, &str); 2] = [("", ""); 2];
    let mut n = 0;
    if claim {
        extra[n] = (FILL_HEADER, FILL_CLAIM);
        n += 1;
    }
    if let Some(r) = range {
        extra[n] = ("Range", r);
        n += 1;
    }
    let head = request_head("GET", node, cluster, key, &extra[..n], None);
    let deadline = Instant::now() + claim_ttl(w.timeouts());
    let (up, resp) = exchange_bodiless(w.pool(), &node.pool_key, &head, deadline)
        .await
        .map_err(unreachable)?;
    match resp.status {
        200 | 206 => {
            let field = resp
                .headers
                .get(METADATA_HEADER)
                .ok_or_else(|| PeerError::Refused(format!("a KV 200 without {METADATA_HEADER}")))?;
            let meta = Metadata::decode(field)
                .map_err(PeerError::Refused)?
                .to_entry(key.to_string());
            let kind = resp
                .body_kind("GET")
                .map_err(|e| PeerError::Refused(format!("KV GET answer: {e}")))?;
            let (first, body_len) = match resp.status {
                // RFC 9110 §14.4: `Content-Range: bytes first-last/complete-length`.
                206 => resp
                    .headers
                    .get_str("content-range")
                    .and_then(parse_content_range)
                    .filter(|&(first, last, _)| kind == BodyKind::Length(last - first + 1))
                    .map(|(first, _, len)| (first, Some(len)))
                    .ok_or_else(|| {
                        PeerError::Refused("a KV 206 without a matching Content-Range".into())
                    })?,
                _ => (0, kind.known_len()),
            };
            Ok(Lookup::Found(Box::new(Found {
                conn: up,
                meta,
                kind,
                first,
                body_len,
                keep_alive: resp.keep_alive(),
            })))
        }
        404 => {
            let claimed = resp
                .headers
                .get_str(FILL_HEADER)
                .is_some_and(|v| v.eq_ignore_ascii_case(FILL_CLAIMED));
            drain_and_release(w, up, &resp, "GET").await;
            Ok(Lookup::Miss { claimed })
        }
        401 => Err(PeerError::Refused(
            "answered 401 to a KV GET: is its cluster secret the same?".into(),
        )),
        s => Err(PeerError::Refused(format!("answered {s} to a KV GET"))),
    }
}

/// Starts a KV PUT of `key` to its owner: sends the head; the caller streams the body
/// through the returned writer and ends with [`put_finish`].
pub async fn put_start(
    w: &impl Client,
    cluster: &Cluster,
    node: &Node,
    key: &str,
    metadata: &Metadata,
    body_len: Option<u64>,
) -> Result<(UpstreamConn, BodyWriter), PeerError> {
    let md = metadata.encode();
    let head = request_head(
        "PUT",
        node,
        cluster,
        key,
        &[(METADATA_HEADER, &md)],
        Some(body_len),
    );
    // take_idle never hands out a connection the peer closed or wrote to while it sat
    // idle, which matters here: a PUT cannot be retried once its body streamed.
    let mut up = match w.pool().take_idle(&node.pool_key) {
        Some(c) => c,
        None => w
            .pool()
            .connect_new(&node.pool_key)
            .await
            .map_err(unreachable)?,
    };
    if let Err(e) = up.conn.io.write_all(head).await.0 {
        return Err(PeerError::Unreachable(e.to_string()));
    }
    let writer = match body_len {
        Some(_) => BodyWriter::Raw,
        None => BodyWriter::Chunked,
    };
    Ok((up, writer))
}

/// Ends a KV PUT's body and waits for the owner to commit it (its 200).
pub async fn put_finish(
    w: &impl Client,
    mut up: UpstreamConn,
    writer: BodyWriter,
) -> Result<(), String> {
    writer
        .finish(&mut up.conn.io)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + w.timeouts().upstream_head;
    let mut received = false;
    let resp = read_head_by(&mut up.conn, deadline, &mut received)
        .await
        .map_err(|e| unreachable(e).to_string())?;
    let status = resp.status;
    drain_and_release(w, up, &resp, "PUT").await;
    match status {
        200 => Ok(()),
        s => Err(format!("answered {s} to a KV PUT")),
    }
}

/// KV DELETE of `key`: drops the owner's entry and any claim on the key.
pub async fn delete(
    w: &impl Client,
    cluster: &Cluster,
    node: &Node,
    key: &str,
) -> Result<(), String> {
    let head = request_head("DELETE", node, cluster, key, &[], None);
    let deadline = Instant::now() + w.timeouts().upstream_head;
    let (up, resp) = exchange_bodiless(w.pool(), &node.pool_key, &head, deadline)
        .await
        .map_err(|e| unreachable(e).to_string())?;
    let status = resp.status;
    drain_and_release(w, up, &resp, "DELETE").await;
    match status {
        200 | 404 => Ok(()),
        s => Err(format!("answered {s} to a KV DELETE")),
    }
}

/// `GET /health` on a fresh connection: Ok when the node answers 200 in time.
async fn probe(node: &Node) -> Result<(), String> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let tcp = monoio::time::timeout_at(deadline.into(), TcpStream::connect_addr(node.addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let mut conn = BufConn::new(UpStream::tcp(tcp));
    let req = format!(
        "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        node.name
    );
    conn.io
        .write_all(req.into_bytes())
        .await
        .0
        .map_err(|e| e.to_string())?;
    let mut received = false;
    let resp = read_head_by(&mut conn, deadline, &mut received)
        .await
        .map_err(|e| unreachable(e).to_string())?;
    match resp.status {
        200 => Ok(()),
        s => Err(format!("/health answered {s}")),
    }
}

/// Runs on one core for the whole process (worker 0): probes every peer with
/// `GET /health`, with hysteresis so that a slow node is not flapped:
/// - an up peer every [`HEALTH_INTERVAL`]; it goes down after [`DOWN_AFTER`] failed
///   probes in a row (no answer, or none within [`PROBE_TIMEOUT`]: a slow answer in time
///   counts as up). A KV request that cannot reach it marks it down at once
///   ([`mark_down`]): a refused connection is not slowness;
/// - a down peer backing off from [`PROBE_BACKOFF_MIN`] to [`PROBE_BACKOFF_MAX`]; it
///   comes back up after [`UP_AFTER`] good probes in a row.
///
/// Every state change is logged once and counted (`chacha_peer_state_changes_total`).
/// Also expires claims whose claimant never came back. Each tick it takes the cluster in
/// force (a live reload may add or remove nodes, or the whole cluster): nodes that were
/// added are watched from then on, removed ones no longer.
pub async fn watch(shutdown: Arc<Shutdown>, live: Arc<crate::server::live::Live>) {
    let mut probes: HashMap<std::net::SocketAddr, Probes> = HashMap::new();
    let mut cluster: Option<Arc<Cluster>> = None;
    let mut generation = None;
    loop {
        monoio::select! {
            _ = monoio::time::sleep(WATCH_TICK) => {}
            _ = shutdown.wait() => return,
        }
        if generation != Some(live.generation()) {
            let snap = live.snapshot();
            generation = Some(snap.generation);
            cluster = snap.cluster.clone();
            let nodes: Vec<_> = cluster
                .iter()
                .flat_map(|c| c.nodes.iter().map(|n| n.addr))
                .collect();
            probes.retain(|addr, _| nodes.contains(addr));
        }
        let Some(cluster) = &cluster else {
            continue;
        };
        let now = Instant::now();
        let expired = cluster.claims.sweep(now);
        if expired > 0 {
            log::warn!("cluster: {expired} fill claims expired (their nodes never sent the body)");
        }
        for (i, node) in cluster.nodes.iter().enumerate() {
            if Some(i) == cluster.local {
                continue;
            }
            let p = probes.entry(node.addr).or_insert_with(|| Probes::new(now));
            let down = node.is_down();
            if down != p.down {
                // Marked down by a request (or up by a reload): start over from there.
                *p = Probes {
                    down,
                    ..Probes::new(now)
                };
            }
            if now < p.next {
                continue;
            }
            let result = probe(node).await;
            p.observe(node, result);
        }
    }
}

/// How often an up peer is probed.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Failed probes in a row that take an up peer down.
pub const DOWN_AFTER: u32 = 3;
/// Good probes in a row that bring a down peer back up.
pub const UP_AFTER: u32 = 2;

/// The watch's view of one peer.
struct Probes {
    /// The state the counts below are about.
    down: bool,
    /// Probes in a row that disagreed with `down` (failures while up, answers while
    /// down).
    streak: u32,
    backoff: Duration,
    next: Instant,
}

impl Probes {
    fn new(now: Instant) -> Probes {
        Probes {
            down: false,
            streak: 0,
            backoff: PROBE_BACKOFF_MIN,
            next: now,
        }
    }

    /// Takes a probe's result; changes the node's state after enough in a row.
    fn observe(&mut self, node: &Node, result: Result<(), String>) {
        let now = Instant::now();
        match (self.down, result) {
            (false, Ok(())) => {
                self.streak = 0;
                self.next = now + HEALTH_INTERVAL;
            }
            (false, Err(e)) => {
                self.streak += 1;
                log::debug!(
                    "cluster: probe {} of {} failed: {e}",
                    self.streak,
                    node.name
                );
                self.next = now + HEALTH_INTERVAL.min(self.backoff * 2);
                if self.streak >= DOWN_AFTER {
                    mark_down(
                        node,
                        &format!("{DOWN_AFTER} health probes failed, the last: {e}"),
                    );
                    *self = Probes {
                        down: true,
                        ..Probes::new(now + PROBE_BACKOFF_MIN)
                    };
                }
            }
            (true, Ok(())) => {
                self.streak += 1;
                self.next = now + PROBE_BACKOFF_MIN;
                if self.streak >= UP_AFTER {
                    if node.mark_up() {
                        log::warn!(
                            "cluster: node {} answers /health again ({UP_AFTER} probes in a row); its keys are served through it again",
                            node.name
                        );
                    }
                    *self = Probes {
                        next: now + HEALTH_INTERVAL,
                        ..Probes::new(now)
                    };
                }
            }
            (true, Err(e)) => {
                log::debug!("cluster: probe of down node {} failed: {e}", node.name);
                self.streak = 0;
                self.next = now + self.backoff;
                self.backoff = (self.backoff * 2).min(PROBE_BACKOFF_MAX);
            }
        }
    }
}

/// Reads a piece of a body from a peer connection with a stall bound.
pub async fn read_body<S: AsyncReadRent>(
    reader: &mut BodyReader,
    conn: &mut BufConn<S>,
    buf: &mut Vec<u8>,
    stall: Duration,
) -> Result<usize, String> {
    match monoio::time::timeout(stall, reader.read(conn, buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no body bytes for {stall:?}")),
    }
}
