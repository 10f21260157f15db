//! The key's owner node behind the storage seam (cluster mode), over the KV protocol
//! (`cluster::kv::client`): a KV GET looks the entry up (claiming the fill on a miss,
//! asking for just the client's range) and streams it; a KV PUT is a fill's sink; a KV
//! DELETE drops the owner's entry or gives up the claim. An owner that gives no usable
//! answer never fails the client: the request goes to the origin uncached and the owner
//! is marked down until it answers `/health` again (`cluster::kv::client::watch`).

use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};

use super::{Claim, Entry, Holding, Lookup, ReadBack, Sink, Uncached};
use crate::cache::meta::EntryMeta;
use crate::cache::policy::Validators;
use crate::cache::status::Outcome as CacheOutcome;
use crate::cluster::kv::client::{self as kv, Found, PeerError};
use crate::cluster::metadata::Metadata;
use crate::cluster::{Cluster, Node};
use crate::http::{BodyKind, RequestHead, ResponseHead};
use crate::proxy::client_side::{ClientSide, WindowedCopy};
use crate::proxy::head::stored_head;
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

/// Copies the owner's body, whose first byte is body offset `pos`, into `copy`'s window
/// up to its end, then pools the owner's connection if the body was read to its end.
/// Returns the offset reached and whether the body ended.
async fn copy_owner_body<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    mut conn: UpstreamConn,
    kind: BodyKind,
    keep_alive: bool,
    mut pos: u64,
    copy: &mut WindowedCopy,
    w: &Worker,
) -> Result<(u64, bool), String> {
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
            Err(e) => break Err(format!("owner's body failed: {e}")),
        };
        let (res, b) = copy.write(&mut client.io, buf.take(), pos).await;
        buf.put_back(b);
        if let Err(e) = res {
            break Err(e);
        }
        pos += n;
    };
    if reader.is_done() && keep_alive {
        w.upstream.release(conn);
    }
    result.map(|()| (pos, reader.is_done()))
}

/// Serves a validated entry from the owner's KV response.
pub(crate) async fn serve<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    found: Found,
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
    let result = copy_owner_body(client, conn, kind, owner_keep_alive, first, &mut copy, w).await;
    let result = match result {
        Ok(_) if end == u64::MAX => writer
            .finish(&mut client.io)
            .await
            .map_err(|e| format!("client write failed: {e}")),
        other => other.map(|_| ()),
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
/// client instead.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read_back<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    cs: &mut ClientSide,
    next: u64,
    resp: &ResponseHead,
    kind: BodyKind,
    owner: OwnerNode<'_>,
    key: &str,
    w: &Worker,
) {
    let found = match kv::get(w, owner.cluster, owner.node, key, false, None).await {
        Ok(kv::Lookup::Found(f)) => *f,
        Ok(kv::Lookup::Miss { .. }) => {
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
    // Skip what the client already has.
    cs.copy.start = cs.copy.start.max(next);
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
        Err(e) => cs.error = Some(e),
        Ok((pos, done)) if pos < cs.copy.end && !done => {
            cs.error = Some(format!("owner's body ended at byte {pos}"));
        }
        Ok(_) => cs.finish(client).await,
    }
}
