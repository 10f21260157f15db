//! The key's owner node behind the storage seam (cluster mode), over the KV protocol
//! (`cluster::kv::client`): a KV GET looks the entry up (claiming the fill on a miss,
//! asking for just the client's range) and streams it; a KV PUT is a fill's sink; a KV
//! DELETE drops the owner's entry or gives up the claim. An owner that gives no usable
//! answer never fails the client: it is marked down until it answers `/health` again
//! (`cluster::kv::client::watch`) and the key goes to its stand-in (`Cluster::serving`);
//! an owner that stops sending a body mid-stream is marked down too, and the client's
//! response goes on from the origin with `Range`/`If-Range` (RFC 9110 §13.1.5, §14.2),
//! or is cut when the origin cannot continue exactly that representation.

use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};

use super::{Claim, Entry, Holding, Lookup, ReadBack, Sink, Uncached};
use crate::cache::meta::EntryMeta;
use crate::cache::policy::Validators;
use crate::cache::status::Outcome as CacheOutcome;
use crate::cluster::kv::client::{self as kv, Found, PeerError};
use crate::cluster::metadata::Metadata;
use crate::cluster::{Cluster, Node};
use crate::http::uri::Uri;
use crate::http::{BodyKind, RequestHead, ResponseHead};
use crate::proxy::client_side::{ClientSide, WindowedCopy};
use crate::proxy::head::stored_head;
use crate::proxy::origin_body::{resume_at, strong_etag};
use crate::proxy::validate::{answer_client_conditional, validated_headers, validators_of};
use crate::proxy::{Exchange, Op, Outcome, ProxyError, Worker};
use crate::stream::{BodyReader, BodyWriter, BufConn};
use crate::upstream::{UpstreamConn, UpstreamError};

/// `Cache-Status` of a request relayed uncached because its owner is unreachable.
pub(crate) fn owner_down(resp: &ResponseHead) -> Option<String> {
    Some(
        CacheOutcome::OwnerUnreachable {
            status: resp.status,
        }
        .header_value(),
    )
}

/// The node that owns a key.
#[derive(Clone, Copy)]
pub(crate) struct OwnerNode<'a> {
    pub(crate) cluster: &'a Cluster,
    pub(crate) node: &'a Node,
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

/// How long the owner's body may stall (it may itself be streaming a fill).
fn owner_stall(w: &Worker) -> std::time::Duration {
    w.timeouts.upstream_head + crate::cluster::kv::CLAIM_MARGIN
}

impl<'a> OwnerNode<'a> {
    /// KV GET with a claim: the entry (or the range the client asked for), or a miss
    /// that may make this node the key's filler.
    pub(crate) async fn lookup(
        &self,
        key: &str,
        req: &RequestHead,
        w: &Worker,
    ) -> Result<Lookup, Uncached> {
        let node = self.node;
        match kv::get(w, self.cluster, node, key, true, owner_range(req)).await {
            Ok(kv::Lookup::Found(f)) => Ok(Lookup {
                holding: Holding::Entry(Entry::Peer(f)),
                claim: Claim::None,
            }),
            Ok(kv::Lookup::Miss { claimed }) => Ok(Lookup {
                holding: Holding::Nothing,
                claim: if claimed { Claim::Peer } else { Claim::None },
            }),
            Err(PeerError::Unreachable(e)) => {
                kv::mark_down(node, &e);
                Err(owner_down)
            }
            Err(PeerError::Refused(e)) => {
                log::warn!(
                    "cluster: node {} gave no usable KV GET answer ({e}); serving uncached",
                    node.name
                );
                Err(owner_down)
            }
        }
    }

    /// Ends our claim on `key` (nothing will be PUT) and drops the owner's entry when
    /// asked, so that requests waiting on the owner go on at once. The owner's
    /// connection of a held entry closes unread.
    pub(crate) async fn release(&self, lookup: Lookup, drop_entry: bool, key: &str, w: &Worker) {
        let claimed = matches!(lookup.claim, Claim::Peer);
        drop(lookup);
        if claimed || drop_entry {
            if let Err(e) = kv::delete(w, self.cluster, self.node, key).await {
                log::debug!("cluster: KV DELETE on {} failed: {e}", self.node.name);
            }
        }
    }

    /// Starts the KV PUT of a fill. A PUT that cannot start stores nothing; the client
    /// is still served, from the origin's body.
    pub(crate) async fn begin_fill(
        &self,
        meta: EntryMeta,
        body_len: Option<u64>,
        w: &Worker,
    ) -> (Option<Sink<'a>>, ReadBack<'a>) {
        let metadata = Metadata::of_entry(&meta);
        let node = self.node;
        let put = match kv::put_start(w, self.cluster, node, &meta.key, &metadata, body_len).await {
            Ok((conn, writer)) => Some(Sink::Peer(Put { conn, writer, node })),
            Err(PeerError::Unreachable(e)) => {
                kv::mark_down(node, &e);
                None
            }
            Err(PeerError::Refused(e)) => {
                log::warn!("cluster: PUT to {} refused: {e}", node.name);
                None
            }
        };
        let read_back = ReadBack::Peer {
            owner: *self,
            key: meta.key,
        };
        (put, read_back)
    }
}

/// A KV PUT under way: the sink of a fill through the owner.
pub(crate) struct Put<'a> {
    conn: UpstreamConn,
    writer: BodyWriter,
    node: &'a Node,
}

/// How long a cut PUT waits for the owner to notice.
const PUT_ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Put<'_> {
    pub(crate) fn node_name(&self) -> &str {
        &self.node.name
    }

    pub(crate) async fn write(&mut self, buf: Vec<u8>) -> (Result<(), String>, Vec<u8>) {
        let (res, buf) = self.writer.write(&mut self.conn.conn.io, buf).await;
        (res.map_err(|e| e.to_string()), buf)
    }

    /// Ends the body and waits for the owner's commit (its 200).
    pub(crate) async fn finish(self, req: &RequestHead, w: &Worker) -> Result<(), String> {
        let name = &self.node.name;
        kv::put_finish(w, self.conn, self.writer)
            .await
            .inspect_err(|e| log::info!("cluster: {} not stored on {name}: {e}", req.target))
    }

    /// Cuts the PUT short: ends our side of its connection (an incomplete body, RFC 9112
    /// §8) and waits, bounded, until the owner has answered and closed it. Its fill has
    /// failed then, before our client sees the cut: a request the client sends right
    /// after cannot join that doomed fill.
    pub(crate) async fn abort(self) {
        let mut up = self.conn;
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
}

/// Why copying the owner's body stopped before the window's end.
enum Stop {
    /// The owner's body failed (the owner died, cut it, or stalled); `unreachable` when
    /// the KV request itself got no answer. The rest may come from the origin.
    Owner(String),
    /// Writing to the client failed: nothing to continue.
    Client(String),
}

/// Copies the owner's body, whose first byte is body offset `pos`, into `copy`'s window
/// up to its end, then pools the owner's connection if the body was read to its end.
/// Returns the offset reached and whether the body ended; or where it stopped and why.
async fn copy_owner_body<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    mut conn: UpstreamConn,
    kind: BodyKind,
    keep_alive: bool,
    mut pos: u64,
    copy: &mut WindowedCopy,
    w: &Worker,
) -> Result<(u64, bool), (u64, Stop)> {
    let stall = owner_stall(w);
    let mut reader = BodyReader::new(kind);
    let mut buf = w.bufs.lend();
    let result = loop {
        if pos >= copy.end {
            break Ok(());
        }
        let n = match kv::read_body(&mut reader, &mut conn.conn, &mut buf, stall).await {
            Ok(0) => break Ok(()),
            Ok(n) => n as u64,
            Err(e) => break Err(Stop::Owner(format!("owner's body failed: {e}"))),
        };
        let (res, b) = copy.write(&mut client.io, buf.take(), pos).await;
        buf.put_back(b);
        if let Err(e) = res {
            break Err(Stop::Client(e));
        }
        pos += n;
    };
    if reader.is_done() && keep_alive {
        w.upstream.release(conn);
    }
    match result {
        Ok(()) => Ok((pos, reader.is_done())),
        Err(stop) => Err((pos, stop)),
    }
}

/// What lets the origin continue a body the owner stopped sending: the client's
/// request, and the representation's strong `ETag` and length (without both, a resumed
/// body could not be proven to be the same representation: the client is cut instead).
pub(crate) struct Resume<'r> {
    pub(crate) req: &'r RequestHead,
    pub(crate) uri: &'r Uri,
    pub(crate) etag: Option<&'r str>,
    pub(crate) len: Option<u64>,
}

/// Continues the client's response from the origin after the owner stopped at body
/// offset `pos` (`why`): `Range: bytes=pos-` with `If-Range` on the strong ETag (RFC
/// 9110 §13.1.5, §14.2); only a 206 continuing exactly that representation is copied
/// into `copy`'s window, up to its end. `Err`: the client is cut (never a wrong byte).
async fn continue_from_origin<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    copy: &mut WindowedCopy,
    mut pos: u64,
    why: &str,
    r: &Resume<'_>,
    w: &Worker,
) -> Result<(), String> {
    let (Some(etag), Some(len)) = (r.etag, r.len) else {
        return Err(format!(
            "{why}; not resumable from the origin (no strong ETag or known length)"
        ));
    };
    let end = copy.end.min(len);
    if pos >= end {
        return Ok(());
    }
    let mut no_client = BufConn::new(&[][..]);
    let Some((mut up, kind)) = resume_at(&mut no_client, r.req, r.uri, etag, len, pos, w).await
    else {
        return Err(format!("{why}; the origin did not resume it at byte {pos}"));
    };
    log::info!(
        "cluster: {} stopped at byte {pos} ({why}); the rest comes from the origin",
        r.req.target
    );
    let mut reader = BodyReader::new(kind);
    let mut buf = w.bufs.lend();
    while pos < end {
        let read = kv::read_body(
            &mut reader,
            &mut up.conn,
            &mut buf,
            w.timeouts.upstream_body,
        );
        let n = match read.await {
            Ok(0) => return Err(format!("the origin's rest ended at byte {pos}")),
            Ok(n) => n as u64,
            Err(e) => return Err(format!("the origin's rest failed at byte {pos}: {e}")),
        };
        let (res, b) = copy.write(&mut client.io, buf.take(), pos).await;
        buf.put_back(b);
        res?;
        pos += n;
    }
    // The connection closes unless the whole rest was read (a client's range may end
    // before the body does).
    if reader.is_done() {
        w.upstream.release(up);
    }
    Ok(())
}

/// Serves a validated entry from the owner's KV response; if the owner stops sending
/// it, the same response goes on from the origin ([`continue_from_origin`]) and the
/// owner is marked down.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    uri: &Uri,
    found: Found,
    owner: OwnerNode<'_>,
    not_modified: &ResponseHead,
    w: &Worker,
) -> Outcome {
    let op = Op::PeerHit;
    let Found {
        conn,
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
    // The representation the client gets, should the origin have to continue it.
    let etag = strong_etag(&headers).map(str::to_owned);
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
    let end = win.start.saturating_add(win.count);
    let mut copy = WindowedCopy::new(writer, win.start, end, None);
    // The owner sends the body from `first` (the range asked for, or 0).
    let result =
        match copy_owner_body(client, conn, kind, owner_keep_alive, first, &mut copy, w).await {
            Ok(_) => Ok(()),
            Err((_, Stop::Client(e))) => Err(e),
            Err((pos, Stop::Owner(e))) => {
                kv::mark_down(owner.node, &e);
                let r = Resume {
                    req,
                    uri,
                    etag: etag.as_deref(),
                    len: body_len,
                };
                continue_from_origin(client, &mut copy, pos, &e, &r, w).await
            }
        };
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
            bytes: copy.sent,
            op,
            keep_alive,
        }),
        Err(reason) => Outcome::aborted(status, copy.sent, op, reason),
    }
}

/// Serves a client that fell behind a fill through the owner the body from byte `next`
/// on, from the owner's fill (which this node's PUT is writing; the KV GET joins it),
/// then ends the body. The owner's copy must be the representation the client started
/// (same validators and length): an older entry the fill has not replaced yet cuts the
/// client instead. An owner that is unreachable, has no entry, or stops sending it: the
/// rest comes from the origin ([`continue_from_origin`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read_back<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    cs: &mut ClientSide,
    next: u64,
    resp: &ResponseHead,
    kind: BodyKind,
    owner: OwnerNode<'_>,
    key: &str,
    r: &Resume<'_>,
    w: &Worker,
) {
    // Skip what the client already has.
    cs.copy.start = cs.copy.start.max(next);
    let stopped = match kv::get(w, owner.cluster, owner.node, key, false, None).await {
        Ok(kv::Lookup::Found(f)) => {
            let found = *f;
            let same_length = match (kind, found.kind) {
                (BodyKind::Length(a), BodyKind::Length(b)) => a == b,
                (BodyKind::Length(_), _) => false,
                _ => true,
            };
            if validators_of(&found.meta) != Validators::from_headers(&resp.headers) || !same_length
            {
                cs.error =
                    Some("fell behind the fill, and the owner still holds an older copy".into());
                return;
            }
            let copied = copy_owner_body(
                client,
                found.conn,
                found.kind,
                found.keep_alive,
                0,
                &mut cs.copy,
                w,
            )
            .await;
            match copied {
                Err((_, Stop::Client(e))) => {
                    cs.error = Some(e);
                    return;
                }
                Err((pos, Stop::Owner(e))) => {
                    kv::mark_down(owner.node, &e);
                    (pos, e)
                }
                Ok((pos, done)) if pos < cs.copy.end && !done => {
                    (pos, format!("owner's body ended at byte {pos}"))
                }
                Ok(_) => return cs.finish(client).await,
            }
        }
        Ok(kv::Lookup::Miss { .. }) => (
            next,
            "fell behind the fill, and the owner has no entry".into(),
        ),
        Err(PeerError::Unreachable(e)) => {
            kv::mark_down(owner.node, &e);
            (
                next,
                format!("fell behind the fill, and the owner failed: {e}"),
            )
        }
        Err(PeerError::Refused(e)) => (
            next,
            format!("fell behind the fill, and the owner refused: {e}"),
        ),
    };
    let (pos, why) = stopped;
    match continue_from_origin(client, &mut cs.copy, pos, &why, r, w).await {
        Ok(()) => cs.finish(client).await,
        Err(e) => cs.error = Some(e),
    }
}
