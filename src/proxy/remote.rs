//! The request path for a key another node owns (cluster mode). Always validating, as
//! the local path: ask the owner for the entry (KV GET, claiming the fill on a miss),
//! send the conditional request to the origin, then
//! - 304 with an entry → stream the body from the owner's KV response;
//! - storable 200 → stream the origin's body to the owner (KV PUT) and the client,
//!   committed on the owner before the client gets its last byte; the PUT never waits
//!   on the client (one that falls behind gets the rest from the owner);
//! - anything else → relay (dropping the owner's entry on 404/410, releasing a claim).
//!
//! An owner that cannot be reached never fails the client: the request goes to the
//! origin uncached and the owner is marked down until it answers `/health` again
//! (`peer::watch`).

use monoio::buf::IoBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::client_side::{relay_ranged, ClientSide};
use super::decide::{decide, Action, Held};
use super::forward::forward;
use super::handoff::Handoff;
use super::head::stored_head;
use super::origin_body::OriginBody;
use super::relay::relay_and_release;
use super::validate::{
    answer_client_conditional, not_stored, release_bodyless, revalidate, validated_headers,
    validators_of,
};
use super::{Exchange, Op, Outcome, ProxyError, Worker};
use crate::cache::digest::expected_sha256;
use crate::cache::key::key_is_exact;
use crate::cache::meta::EntryMeta;
use crate::cache::policy::{response_storable, stored_headers, NotStorable, Validators};
use crate::cache::status::Outcome as CacheOutcome;
use crate::cluster::kv::client::{self as peer, Found, Lookup, PeerError};
use crate::cluster::metadata::Metadata;
use crate::cluster::{Cluster, Node};
use crate::config::Rule;
use crate::http::uri::Uri;
use crate::http::{BodyKind, RequestHead, ResponseHead};
use crate::stream::fair::Budget;
use crate::stream::{BodyReader, BodyWriter, BufConn};
use crate::upstream::{UpstreamConn, UpstreamError};

/// `Cache-Status` of a request relayed uncached because its owner is unreachable.
fn owner_down(resp: &ResponseHead) -> Option<String> {
    Some(
        CacheOutcome::OwnerUnreachable {
            status: resp.status,
        }
        .header_value(),
    )
}

pub async fn handle<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: RequestHead,
    uri: Uri,
    key: String,
    rule: Option<&Rule>,
    node: &Node,
    w: &Worker,
) -> Outcome {
    let cluster = w
        .cluster
        .as_deref()
        .expect("remote keys exist in cluster mode");
    if node.is_down() {
        return forward(client, req, uri, w, owner_down).await;
    }
    let (found, claimed) = match peer::get(w, cluster, node, &key, true, owner_range(&req)).await {
        Ok(Lookup::Found(f)) => (Some(*f), false),
        Ok(Lookup::Miss { claimed }) => (None, claimed),
        Err(PeerError::Unreachable(e)) => {
            peer::mark_down(node, &e);
            return forward(client, req, uri, w, owner_down).await;
        }
        Err(PeerError::Refused(e)) => {
            log::warn!(
                "cluster: node {} gave no usable KV GET answer ({e}); serving uncached",
                node.name
            );
            return forward(client, req, uri, w, owner_down).await;
        }
    };
    let had_entry = found.is_some();
    let validators = found.as_ref().map(|f| validators_of(&f.meta));
    let sent = revalidate(client, &req, &uri, validators.as_ref(), w).await;
    let (mut up, resp) = match sent {
        Ok(x) => x,
        Err(f) => {
            drop(found);
            if claimed {
                release(w, cluster, node, &key).await;
            }
            return Outcome::Failed {
                error: f.error.into(),
                close: f.close_client,
                op: Op::Miss,
            };
        }
    };
    let held = if found.is_some() {
        Held::Entry
    } else {
        Held::Nothing
    };
    let action = decide(
        resp.status,
        held,
        || response_storable(&req, &resp, rule),
        || key_is_exact(&uri, &key, rule, &req.headers),
    );
    let drop_entry = match action {
        Action::ServeEntry => {
            let found = found.expect("held");
            release_bodyless(&mut up, &resp, w);
            return serve_from_owner(client, &req, found, &resp, w).await;
        }
        // The owner's copy is outdated (or absent): its connection closes unread.
        Action::RelayUnstored(reason) => {
            drop(found);
            if claimed {
                release(w, cluster, node, &key).await;
            }
            let cs = not_stored(had_entry, reason)(&resp);
            return relay_ranged(client, &req, &mut up, resp, w, cs).await;
        }
        Action::Fill => {
            drop(found);
            let digest = expected_sha256(&uri.path_and_query);
            let target = Target {
                uri: &uri,
                cluster,
                node,
                key,
                replaced: had_entry,
                digest,
            };
            return fill_through(client, &req, up, resp, target, w).await;
        }
        // Never decided here: the owner streams a fill as an entry (`Held::Entry`).
        Action::ServeFill => false,
        Action::Relay { drop_entry } => drop_entry,
    };
    drop(found);
    if claimed || drop_entry {
        release(w, cluster, node, &key).await;
    }
    let cs = not_stored(had_entry, NotStorable::Status)(&resp);
    relay_and_release(client, &req, &mut up, resp, w, Op::Pass, cs).await
}

/// The range to ask the owner for: the client's own, unless `If-Range` makes it depend
/// on validators only the validated entry has (RFC 9110 §13.1.5); the owner answers a
/// range it cannot satisfy with the whole body, and the window is cut here as before.
fn owner_range(req: &RequestHead) -> Option<&str> {
    match req.headers.contains("if-range") {
        true => None,
        false => req.headers.get_str("range"),
    }
}

/// Ends our claim on `key` (nothing will be PUT) and drops the owner's entry, so that
/// requests waiting on the owner go on at once.
async fn release(w: &Worker, cluster: &Cluster, node: &Node, key: &str) {
    if let Err(e) = peer::delete(w, cluster, node, key).await {
        log::debug!("cluster: KV DELETE on {} failed: {e}", node.name);
    }
}

/// How long the owner's body may stall (it may itself be streaming a fill).
fn owner_stall(w: &Worker) -> std::time::Duration {
    w.timeouts.upstream_head + crate::cluster::kv::CLAIM_MARGIN
}

/// Serves a validated entry from the owner's KV response.
async fn serve_from_owner<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    found: Found,
    not_modified: &ResponseHead,
    w: &Worker,
) -> Outcome {
    let op = Op::PeerHit;
    let Found {
        mut conn,
        meta,
        kind,
        first,
        body_len,
        keep_alive: owner_keep_alive,
    } = found;
    let headers = validated_headers(&meta, not_modified, CacheOutcome::Revalidated);
    if let Some(o) = answer_client_conditional(client, req, &headers, w, op).await {
        return o; // the owner's connection closes unread
    }
    let mut head = Vec::with_capacity(1024);
    let (writer, win) = stored_head(
        req,
        meta.status,
        headers,
        body_len,
        w.may_keep_alive(req),
        &mut head,
    );
    let (status, keep_alive) = (win.status, win.keep_alive);
    if first > win.start {
        // Both sides evaluate the same Range on the same length: never expected.
        let e = format!(
            "the owner sent the body from byte {first}, not {}",
            win.start
        );
        return Outcome::Failed {
            error: ProxyError::Upstream(UpstreamError::Protocol(e)),
            close: false,
            op,
        };
    }
    if let Err(e) = client.io.write_all(head).await.0 {
        return Outcome::aborted(status, 0, op, e.to_string());
    }
    let (start, end) = (win.start, win.start.saturating_add(win.count));
    let stall = owner_stall(w);
    let mut reader = BodyReader::new(kind);
    let mut buf = w.bufs.lend();
    // The owner sends the body from `first` (the range asked for, or 0).
    let (mut pos, mut sent) = (first, 0u64);
    let result = loop {
        if pos >= end {
            break Ok(());
        }
        let n = match peer::read_body(&mut reader, &mut conn.conn, &mut buf, stall).await {
            Ok(0) => break Ok(()),
            Ok(n) => n as u64,
            Err(e) => break Err(format!("owner's body failed: {e}")),
        };
        let (lo, hi) = (pos.max(start), (pos + n).min(end));
        if lo < hi {
            let res = if lo == pos && hi == pos + n {
                let (res, b) = writer.write(&mut client.io, buf.take()).await;
                buf.put_back(b);
                res
            } else {
                let slice = buf.take().slice((lo - pos) as usize..(hi - pos) as usize);
                let (res, s) = client.io.write_all(slice).await;
                buf.put_back(s.into_inner());
                res.map(|_| ())
            };
            if let Err(e) = res {
                break Err(format!("client write failed: {e}"));
            }
            sent += hi - lo;
        }
        pos += n;
    };
    if reader.is_done() && owner_keep_alive {
        w.upstream.release(conn);
    }
    let result = match result {
        Ok(()) if end == u64::MAX => writer
            .finish(&mut client.io)
            .await
            .map_err(|e| format!("client write failed: {e}")),
        other => other,
    };
    match result {
        Ok(()) => Outcome::Done(Exchange {
            status,
            bytes: sent,
            op,
            keep_alive,
        }),
        Err(reason) => Outcome::aborted(status, sent, op, reason),
    }
}

/// Where a fill through this node goes.
struct Target<'a> {
    /// The URL, to resume a body the origin cuts.
    uri: &'a Uri,
    cluster: &'a Cluster,
    node: &'a Node,
    key: String,
    replaced: bool,
    digest: Option<[u8; 32]>,
}

/// Streams a storable 200 to the owner (KV PUT) and to the client. The PUT feeds the
/// owner's fill, which other nodes' readers join, so it never waits on this node's
/// client: the origin loop ([`origin_to_owner`]) hands the pieces to the client side
/// ([`client_behind`]) through a small bounded lag queue, both in this task. A client
/// that falls further behind than the queue holds is detached and served the rest from
/// the owner's fill (a KV GET, skipping what it already has). A digest mismatch (OCI
/// blobs) or an origin failure cuts the PUT short, so the owner never commits it; the
/// owner's 200 arrives before the client's last byte is sent.
async fn fill_through<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    up: UpstreamConn,
    resp: ResponseHead,
    target: Target<'_>,
    w: &Worker,
) -> Outcome {
    let op = Op::PeerFill;
    let kind = match resp.body_kind(&req.method) {
        Ok(k) => k,
        Err(e) => {
            return Outcome::Failed {
                error: ProxyError::Upstream(UpstreamError::Protocol(e.to_string())),
                close: false,
                op,
            }
        }
    };
    let body_len = kind.known_len();
    let meta = EntryMeta {
        key: target.key.clone(),
        status: 200,
        headers: stored_headers(&resp.headers).fields,
        ..Default::default()
    };
    let metadata = Metadata::of_entry(&meta);
    let (cluster, node) = (target.cluster, target.node);
    let put = match peer::put_start(w, cluster, node, &target.key, &metadata, body_len).await {
        Ok(p) => Some(p),
        Err(PeerError::Unreachable(e)) => {
            peer::mark_down(node, &e);
            None
        }
        Err(PeerError::Refused(e)) => {
            log::warn!("cluster: PUT to {} refused: {e}", node.name);
            None
        }
    };
    let stored = CacheOutcome::Stored {
        replaced: target.replaced,
    };
    let lag = Handoff::default();
    let (origin_result, mut cs) = monoio::join!(
        origin_to_owner(req, up, &resp, kind, put, &target, &lag, w),
        client_behind(client, req, &resp, kind, stored, &target, &lag, w, op)
    );
    if let (Err(origin), Some(_)) = (origin_result, &cs.error) {
        cs.error = Some(origin);
    }
    cs.outcome(op)
}

/// The origin → owner side of [`fill_through`]: reads and hashes the body, writes it to
/// the PUT, completes the PUT before the last piece goes to the client side, and hands
/// each piece to the client side unless its queue is full (then the client is detached:
/// `lag.start(pos)`). Without a PUT nobody else waits on this body, so a slow client
/// only slows it down. Returns why the body failed, if it did.
#[allow(clippy::too_many_arguments)]
async fn origin_to_owner(
    req: &RequestHead,
    up: UpstreamConn,
    resp: &ResponseHead,
    kind: BodyKind,
    mut put: Option<(UpstreamConn, BodyWriter)>,
    target: &Target<'_>,
    lag: &Handoff,
    w: &Worker,
) -> Result<(), String> {
    let node = target.node;
    let mut body = OriginBody::new(req, target.uri, resp, kind, up, target.digest);
    let mut buf = w.bufs.lend();
    let mut budget = Budget::default();
    let result = loop {
        // A cut body is resumed while the owner stores it, as a local fill does.
        let (pos, n) = match body.next(&mut buf, put.is_some(), w).await {
            Ok(Some(piece)) => piece,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if let Some((conn, writer)) = put.as_mut() {
            let (res, b) = writer.write(&mut conn.conn.io, buf.take()).await;
            buf.put_back(b);
            if let Err(e) = res {
                log::info!("cluster: PUT to {} stopped: {e}", node.name);
                put = None;
            }
        }
        let feeds_others = put.is_some();
        if body.is_done() {
            // Committed on the owner before the client sees its last byte, so that a
            // request it sends right after finds the entry.
            finish_put(w, node, put.take(), req).await;
        }
        if !lag.is_gone() && lag.from().is_none() {
            match lag.try_push(pos, buf.take()) {
                Ok(()) => buf.put_back(w.bufs.get()),
                Err(b) if feeds_others => {
                    // The client fell behind: it continues from the owner's fill.
                    log::info!(
                        "cluster: the client of {} fell behind at byte {pos}; it continues from {}",
                        req.target,
                        node.name
                    );
                    buf.put_back(b);
                    lag.start(pos);
                }
                Err(b) => {
                    if !lag.push(pos, b).await {
                        if put.is_none() {
                            break Err("the client went away".into());
                        }
                    } else {
                        buf.put_back(w.bufs.get());
                    }
                }
            }
        } else if lag.is_gone() && put.is_none() && !body.is_done() {
            // Nobody wants the rest of this body.
            break Err("the client went away".into());
        }
        buf.clear();
        budget.spend(n).await;
        if body.is_done() {
            break Ok(());
        }
    };
    if let Err(e) = result {
        abort_put(put).await; // the owner drops its fill
        lag.end(Err(e.clone()));
        return Err(e);
    }
    finish_put(w, node, put.take(), req).await;
    lag.end(Ok(()));
    body.release(w);
    Ok(())
}

/// The client side of [`fill_through`]: the head, then the pieces from the lag queue;
/// once detached, the rest from the owner.
#[allow(clippy::too_many_arguments)]
async fn client_behind<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    resp: &ResponseHead,
    kind: BodyKind,
    stored: CacheOutcome,
    target: &Target<'_>,
    lag: &Handoff,
    w: &Worker,
    op: Op,
) -> ClientSide {
    let mut cs = ClientSide::begin(client, req, resp, kind, stored, w, op).await;
    let mut next = 0u64; // the next body byte the client side needs
    while cs.wants_body() && next < cs.end {
        let version = lag.version();
        if let Some((pos, buf)) = lag.pop() {
            next = pos + buf.len() as u64;
            w.bufs.put(cs.write_piece(client, buf, pos).await);
            continue;
        }
        match (lag.ended(), lag.from()) {
            (Some(Err(e)), _) => cs.error = Some(e),
            (_, Some(from)) => {
                debug_assert_eq!(from, next);
                rest_from_owner(client, &mut cs, next, resp, kind, target, w).await;
                break;
            }
            (Some(Ok(())), None) => {
                cs.finish(client).await;
                break;
            }
            (None, None) => lag.changed(version).await,
        }
    }
    lag.client_gone();
    cs
}

/// Serves a detached client the body from byte `next` on from the owner's fill (which
/// this node's PUT is writing; the KV GET joins it), then ends the body. The owner's
/// copy must be the representation the client started (same validators and length):
/// an older entry the fill has not replaced yet cuts the client instead.
#[allow(clippy::too_many_arguments)]
async fn rest_from_owner<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    cs: &mut ClientSide,
    next: u64,
    resp: &ResponseHead,
    kind: BodyKind,
    target: &Target<'_>,
    w: &Worker,
) {
    let found = match peer::get(w, target.cluster, target.node, &target.key, false, None).await {
        Ok(Lookup::Found(f)) => *f,
        Ok(Lookup::Miss { .. }) => {
            cs.error = Some("fell behind the fill, and the owner has no entry".into());
            return;
        }
        Err(e) => {
            cs.error = Some(format!("fell behind the fill, and the owner failed: {e:?}"));
            return;
        }
    };
    let same_length = match (kind, found.kind) {
        (BodyKind::Length(a), BodyKind::Length(b)) => a == b,
        (BodyKind::Length(_), _) => false,
        _ => true,
    };
    if validators_of(&found.meta) != Validators::from_headers(&resp.headers) || !same_length {
        cs.error = Some("fell behind the fill, and the owner still holds an older copy".into());
        return;
    }
    let Found {
        mut conn,
        kind,
        keep_alive,
        ..
    } = found;
    let stall = owner_stall(w);
    let mut reader = BodyReader::new(kind);
    let mut buf = w.bufs.lend();
    let mut pos = 0u64; // position in the owner's body
    let result = loop {
        if pos >= cs.end {
            break Ok(());
        }
        let n = match peer::read_body(&mut reader, &mut conn.conn, &mut buf, stall).await {
            Ok(0) => break Ok(()),
            Ok(n) => n as u64,
            Err(e) => break Err(format!("owner's body failed: {e}")),
        };
        if pos + n > next {
            // Skip what the client already has (once, at the switch).
            let skip = next.saturating_sub(pos) as usize;
            if skip > 0 {
                buf.drain(..skip);
            }
            let piece = cs.write_piece(client, buf.take(), pos + skip as u64).await;
            buf.put_back(piece);
            if cs.error.is_some() {
                break Ok(());
            }
        }
        pos += n;
    };
    if reader.is_done() && keep_alive {
        w.upstream.release(conn);
    }
    match result {
        Err(e) => cs.error = Some(e),
        Ok(()) if cs.error.is_none() && pos < cs.end && !reader.is_done() => {
            cs.error = Some(format!("owner's body ended at byte {pos}"));
        }
        Ok(()) => cs.finish(client).await,
    }
}

/// How long a cut PUT waits for the owner to notice.
const PUT_ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Cuts a PUT short: ends our side of its connection (an incomplete body, RFC 9112 §8)
/// and waits, bounded, until the owner has answered and closed it. Its fill has failed
/// then, before our client sees the cut: a request the client sends right after cannot
/// join that doomed fill.
async fn abort_put(put: Option<(UpstreamConn, BodyWriter)>) {
    let Some((mut up, _)) = put else {
        return;
    };
    let _ = up.conn.io.shutdown().await;
    let drained = async {
        while let Ok(n) = up.conn.fill().await {
            if n == 0 {
                break;
            }
            let all = up.conn.buffered().len();
            up.conn.consume(all);
        }
    };
    let _ = monoio::time::timeout(PUT_ABORT_WAIT, drained).await;
}

async fn finish_put(
    w: &Worker,
    node: &Node,
    put: Option<(UpstreamConn, BodyWriter)>,
    req: &RequestHead,
) {
    if let Some((conn, writer)) = put {
        if let Err(e) = peer::put_finish(w, conn, writer).await {
            log::info!("cluster: {} not stored on {}: {e}", req.target, node.name);
        }
    }
}
