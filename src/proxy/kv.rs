//! The KV protocol, server side: how other nodes read and write the entries this node
//! owns (the protocol itself: [`crate::cluster::kv`]). Wire-compatible with the original's (`internal/server/handle_kv.go`,
//! `internal/cache/kv`): origin-form requests to the node's own address,
//!
//! - `GET /` with `X-Chacha-Key: base64(key)` → `200` with
//!   `X-Chacha-Metadata: base64(JSON)` and the body, or `404`;
//! - `PUT /` with `X-Chacha-Key` and `X-Chacha-Metadata`, the body streamed in
//!   (Content-Length or chunked) → `200` once the entry is committed;
//!
//! both with `Authorization: Basic base64(":" + secret)`: `401` for a missing or wrong
//! secret (checked first, before anything touches the disk), `400` for malformed
//! headers. Ours in addition:
//!
//! - a GET of a key that is being filled (locally, or by another node's PUT) streams it
//!   read-while-write (chunked when its length is unknown);
//! - `X-Chacha-Fill: claim` on a GET miss registers a pending fill for the requester
//!   (answered `404` with `X-Chacha-Fill: claimed`): until its PUT arrives, other
//!   requests for the key wait for it instead of fetching the origin themselves;
//! - `DELETE /` drops the entry and any claim on the key (`200`, or `404` if there was
//!   neither);
//! - a PUT of a key that another fill is writing gets `409` (the body is not read; the
//!   connection closes): the entry being written is the same object.
//!
//! A node serves KV requests for any key, not only the keys it owns: while a key's owner
//! is down the next node in rendezvous order stands in for it (`Cluster::serving`), and
//! the other nodes' GETs (with claims) and PUTs for the key arrive there; it stores and
//! single-flights them on its disk as the owner would. When the owner is back, routing
//! returns to it (its own copy is revalidated as usual) and the stand-in's copy is no
//! longer asked for and ages out of its disk by LRU. A node that does not serve a key
//! never forwards its KV request: the requester chose it on its view of the cluster.

use std::rc::Rc;
use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::client_side::WindowedCopy;
use super::head::{answer_expect, build_response_head};
use super::serve::{drop_unreadable, open_fill_file, send_file_range, stream_fill, wait_for_head};
use super::{write_simple, Exchange, Framing, Op, Outcome, Worker};
use crate::cache::fill::{Fill, Phase, Role, StreamInfo};
use crate::cache::key::key_hash;
use crate::cache::open::OpenEntry;
use crate::cache::store::{FillStartError, Store};
use crate::cluster::kv::{self, claim_ttl, FILL_CLAIM, FILL_CLAIMED, FILL_HEADER, METADATA_HEADER};
use crate::cluster::metadata::Metadata;
use crate::cluster::Cluster;
use crate::http::range::{self, RangeAnswer};
use crate::http::{BodyKind, Headers, RequestHead};
use crate::stream::{BodyReader, BufConn};

/// Lookup/join rounds a KV GET makes (a fill it waited for may complete or fail).
const MAX_ROUNDS: usize = 3;

pub async fn handle<S: AsyncReadRent + AsyncWriteRent>(
    conn: &mut BufConn<S>,
    head: RequestHead,
    w: &Worker,
    cluster: &Cluster,
    peer: std::net::SocketAddr,
) -> Outcome {
    let op = match head.method.as_str() {
        "GET" => Op::KvGet,
        "PUT" => Op::KvPut,
        _ => Op::KvDelete,
    };
    // A body we do not read closes the connection.
    let unread_body = !matches!(
        head.body_kind(),
        Ok(BodyKind::None) | Ok(BodyKind::Length(0))
    );
    // A source that failed too often lately is refused without a check (a check would
    // tell its right guess from a wrong one): RFC 6585 §4, 429 with Retry-After, and
    // the connection closed, so each further guess costs a new connection.
    let now = Instant::now();
    if let crate::cluster::auth_limit::Verdict::Refuse { retry_after } =
        cluster.auth_limit.admit(peer.ip(), now)
    {
        let secs = retry_after.as_secs().max(1).to_string();
        let extra = [("Retry-After", secs.as_str())];
        let msg = "too many failed KV authentications from this address";
        return reply(conn, &head, w, 429, msg, true, op, &extra).await;
    }
    // First of all: nothing about keys or the disk for a caller without the secret.
    if !cluster.authorized(head.headers.get("authorization")) {
        cluster.auth_limit.failed(peer.ip(), now);
        let msg = if head.headers.contains("authorization") {
            "invalid secret"
        } else {
            "failed to get basic auth"
        };
        let extra = [("WWW-Authenticate", "Basic realm=\"chacha\"")];
        return reply(conn, &head, w, 401, msg, unread_body, op, &extra).await;
    }
    let key = match kv::key_of(&head) {
        Ok(k) => k,
        Err(msg) => return reply(conn, &head, w, 400, &msg, unread_body, op, &[]).await,
    };
    let Some(store) = &w.store else {
        let msg = "no disk is configured on this node";
        return reply(conn, &head, w, 404, msg, unread_body, op, &[]).await;
    };
    match head.method.as_str() {
        "GET" => get(conn, &head, w, cluster, store, key, op).await,
        "PUT" => put(conn, &head, w, cluster, store, key, op).await,
        _ => delete(conn, &head, w, cluster, store, key, op).await,
    }
}

/// A short text answer; `close` when the request's body was not read.
#[allow(clippy::too_many_arguments)]
async fn reply<S: AsyncWriteRent>(
    conn: &mut BufConn<S>,
    head: &RequestHead,
    w: &Worker,
    status: u16,
    msg: &str,
    close: bool,
    op: Op,
    extra: &[(&str, &str)],
) -> Outcome {
    let keep_alive = !close && head.keep_alive() && !w.shutdown.is_triggered();
    match write_simple(
        &mut conn.io,
        status,
        msg,
        Framing::close_if(!keep_alive),
        extra,
    )
    .await
    {
        Ok(bytes) => Outcome::Done(Exchange {
            status,
            bytes,
            op,
            keep_alive,
        }),
        Err(e) => Outcome::aborted(status, 0, op, e.to_string()),
    }
}

async fn get<S: AsyncWriteRent>(
    conn: &mut BufConn<S>,
    head: &RequestHead,
    w: &Worker,
    cluster: &Cluster,
    store: &std::sync::Arc<Store>,
    key: String,
    op: Op,
) -> Outcome {
    let hash = key_hash(&key);
    let claim = head
        .headers
        .get_str(FILL_HEADER)
        .is_some_and(|v| v.eq_ignore_ascii_case(FILL_CLAIM));
    for _ in 0..MAX_ROUNDS {
        if let Some(open) = w.open_entries.lookup(store, hash, &key).await {
            return send_entry(conn, head, open, w, op).await;
        }
        let fill = if claim {
            match store.fills.lead_or_join(hash, &key) {
                Role::Leader(handle) => {
                    // A fill may have completed between the lookup and the claim.
                    if let Some(open) = w.open_entries.lookup(store, hash, &key).await {
                        drop(handle);
                        return send_entry(conn, head, open, w, op).await;
                    }
                    let deadline = Instant::now() + claim_ttl(&w.timeouts);
                    cluster.claims.insert(hash, key, handle, deadline);
                    let extra = [(FILL_HEADER, FILL_CLAIMED)];
                    let msg = "no cache entry found; the fill is yours";
                    return reply(conn, head, w, 404, msg, false, op, &extra).await;
                }
                Role::Waiter(f) => f,
                Role::Collision => break,
            }
        } else {
            match store.fills.get(hash) {
                Some(f) if f.key == key => f,
                _ => break,
            }
        };
        match wait_for_head(&fill, w).await {
            Some(info) => return send_fill(conn, head, &fill, &info, w, op).await,
            None => match fill.snapshot().phase {
                // Still pending after the wait: the requester goes on without it.
                Phase::Pending | Phase::Streaming => break,
                Phase::Complete | Phase::Failed => continue,
            },
        }
    }
    let msg = format!("no cache entry found for key {key}");
    reply(conn, head, w, 404, &msg, false, op, &[]).await
}

fn metadata_headers(meta: &crate::cache::meta::EntryMeta) -> Headers {
    Headers {
        fields: vec![(
            METADATA_HEADER.to_string(),
            Metadata::of_entry(meta).encode().into_bytes(),
        )],
    }
}

async fn send_entry<S: AsyncWriteRent>(
    conn: &mut BufConn<S>,
    head: &RequestHead,
    open: Rc<OpenEntry>,
    w: &Worker,
    op: Op,
) -> Outcome {
    let entry = &open.entry;
    open.touch();
    let mut headers = metadata_headers(&entry.meta);
    // Ours: a non-owner asks for just the range its client wants (RFC 9110 §14.2); any
    // other answer than one satisfiable range is the whole body, as the original sends.
    let (status, reason, start, len) =
        match range::evaluate(head.headers.get_str("range"), entry.meta.body_len) {
            RangeAnswer::Partial { start, end } => {
                let total = entry.meta.body_len;
                headers.set("Content-Range", range::content_range(start, end, total));
                (206, "Partial Content", start, end - start + 1)
            }
            _ => (200, "OK", 0, entry.meta.body_len),
        };
    let mut buf = w.bufs.lend();
    let (_, keep_alive) = build_response_head(
        head,
        status,
        reason,
        headers,
        BodyKind::Length(len),
        w.may_keep_alive(head),
        &mut buf,
    );
    let result = match &open.body {
        Some(body) => {
            buf.extend_from_slice(&body[start as usize..(start + len) as usize]);
            let (res, b) = conn.io.write_all(buf.take()).await;
            buf.put_back(b);
            res.map(|_| ())
                .map_err(|e| (0, format!("write failed: {e}")))
        }
        None => {
            match send_file_range(conn, &entry.file, entry.body_offset + start, len, buf, w).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    if e.file_failed {
                        drop_unreadable(w, &open, &e.reason).await;
                    }
                    Err((e.sent, e.reason))
                }
            }
        }
    };
    match result {
        Ok(()) => Outcome::Done(Exchange {
            status,
            bytes: len,
            op,
            keep_alive,
        }),
        Err((bytes, reason)) => Outcome::aborted(status, bytes, op, reason),
    }
}

async fn send_fill<S: AsyncWriteRent>(
    conn: &mut BufConn<S>,
    head: &RequestHead,
    fill: &Fill,
    info: &StreamInfo,
    w: &Worker,
    op: Op,
) -> Outcome {
    let Some(file) = open_fill_file(fill, info).await else {
        let msg = "the fill of this key failed";
        return reply(conn, head, w, 404, msg, false, op, &[]).await;
    };
    let kind = info.body_len.map_or(BodyKind::Chunked, BodyKind::Length);
    let mut out = Vec::with_capacity(1024);
    let headers = metadata_headers(&info.meta);
    let (writer, keep_alive) = build_response_head(
        head,
        200,
        "OK",
        headers,
        kind,
        w.may_keep_alive(head),
        &mut out,
    );
    if let Err(e) = conn.io.write_all(out).await.0 {
        return Outcome::aborted(200, 0, op, e.to_string());
    }
    let end = info.body_len.unwrap_or(u64::MAX);
    let mut copy = WindowedCopy::new(writer, 0, end, Some(w.timeouts.idle));
    let result = stream_fill(conn, fill, info, Some(&file), &mut copy, None, w).await;
    let bytes = copy.sent;
    let result = match result {
        Ok(()) => writer.finish(&mut conn.io).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Outcome::Done(Exchange {
            status: 200,
            bytes,
            op,
            keep_alive,
        }),
        Err(reason) => Outcome::aborted(200, bytes, op, reason),
    }
}

async fn put<S: AsyncReadRent + AsyncWriteRent>(
    conn: &mut BufConn<S>,
    head: &RequestHead,
    w: &Worker,
    cluster: &Cluster,
    store: &std::sync::Arc<Store>,
    key: String,
    op: Op,
) -> Outcome {
    let kind = match head.body_kind() {
        Ok(k) => k,
        Err(e) => return reply(conn, head, w, 400, &e.to_string(), true, op, &[]).await,
    };
    let unread = !matches!(kind, BodyKind::None | BodyKind::Length(0));
    let metadata = match head.headers.get(METADATA_HEADER).map(Metadata::decode) {
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            let msg = format!("failed to determine the metadata: {e}");
            return reply(conn, head, w, 400, &msg, unread, op, &[]).await;
        }
        None => {
            let msg = format!("failed to determine the metadata: no {METADATA_HEADER} header");
            return reply(conn, head, w, 400, &msg, unread, op, &[]).await;
        }
    };
    let hash = key_hash(&key);
    let handle = match cluster.claims.take(hash, &key, Instant::now()) {
        Some(h) => h,
        None => match store.fills.lead_or_join(hash, &key) {
            Role::Leader(h) => h,
            Role::Waiter(_) | Role::Collision => {
                let msg = "this key is being filled; its entry will be the same object";
                return reply(conn, head, w, 409, msg, unread, op, &[]).await;
            }
        },
    };
    let body_len = kind.known_len();
    let mut body = BodyReader::new(kind);
    let mut writer = match store
        .start_fill(handle, metadata.to_entry(key), body_len)
        .await
    {
        Ok(writer) => writer,
        Err(FillStartError::TooLarge) => {
            let msg = "the object does not fit in this node's cache";
            return reply(conn, head, w, 413, msg, unread, op, &[]).await;
        }
        Err(FillStartError::Io(e)) => {
            let msg = format!("unable to put cache entry: {e}");
            return reply(conn, head, w, 500, &msg, unread, op, &[]).await;
        }
    };
    if let Err(e) = answer_expect(conn, head, &body).await {
        return Outcome::aborted(100, 0, op, e.to_string());
    }
    // A sender that stalls this long is gone (its fill fails, readers abort).
    let stall = w.timeouts.idle;
    let mut buf = w.bufs.lend();
    let failure = loop {
        let n = match monoio::time::timeout(stall, body.read(conn, &mut buf)).await {
            Ok(Ok(0)) => break None,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => break Some((400, format!("reading the body failed: {e}"))),
            Err(_) => break Some((408, format!("no body bytes for {stall:?}"))),
        };
        let (res, b) = writer.write(buf.take()).await;
        buf.put_back(b);
        if let Err(e) = res {
            break Some((500, format!("unable to put cache entry: {e}")));
        }
        debug_assert!(n > 0);
    };
    if let Some((status, msg)) = failure {
        drop(writer); // fails the fill: readers abort, the temp file goes
        return reply(conn, head, w, status, &msg, true, op, &[]).await;
    }
    let written = writer.written();
    match writer.commit().await {
        Ok(()) => {
            let outcome = reply(
                conn,
                head,
                w,
                200,
                "cache entry written successfully",
                false,
                op,
                &[],
            )
            .await;
            match outcome {
                Outcome::Done(ex) => Outcome::Done(Exchange {
                    bytes: written,
                    ..ex
                }),
                other => other,
            }
        }
        Err(e) => {
            let msg = format!("unable to put cache entry: {e}");
            reply(conn, head, w, 500, &msg, false, op, &[]).await
        }
    }
}

async fn delete<S: AsyncWriteRent>(
    conn: &mut BufConn<S>,
    head: &RequestHead,
    w: &Worker,
    cluster: &Cluster,
    store: &std::sync::Arc<Store>,
    key: String,
    op: Op,
) -> Outcome {
    let hash = key_hash(&key);
    let released = cluster.claims.release(hash, &key);
    let removed = match store.index.get_generation(hash) {
        Some(generation) => {
            w.open_entries.forget(hash);
            store.remove(hash, generation);
            true
        }
        None => false,
    };
    if removed || released {
        reply(conn, head, w, 200, "cache entry removed", false, op, &[]).await
    } else {
        let msg = format!("no cache entry found for key {key}");
        reply(conn, head, w, 404, &msg, false, op, &[]).await
    }
}
