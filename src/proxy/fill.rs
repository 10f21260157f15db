//! The fill, whatever its sink (this node's disk or the key's owner over a KV PUT): a
//! storable 200 streamed origin → sink at the origin's speed, resumed with
//! Range/If-Range when the origin cuts it (RFC 9110 §13.1.5, §14.2), its digest checked
//! at every body end, and committed before the client gets its last byte. The client is
//! fed behind the sink: it reads back what the sink took, or takes the pieces from a
//! small bounded hand-off queue ([`Handoff`]); never does the fill wait on it while the
//! sink feeds other readers.

use monoio::io::AsyncWriteRent;

use super::client_side::ClientSide;
use super::handoff::Handoff;
use super::origin_body::{strong_etag, OriginBody};
use super::serve::stream_fill;
use super::storage::{peer, ReadBack, Sink};
use super::{Op, Outcome, Worker};
use crate::cache::status::Outcome as CacheOutcome;
use crate::http::uri::Uri;
use crate::http::{BodyKind, RequestHead, ResponseHead};
use crate::stream::bufpool::Lent;
use crate::stream::fair::Budget;
use crate::stream::BufConn;
use crate::upstream::UpstreamConn;

/// What a fill is for: its URL (to resume it), whether it replaces an entry, and the
/// digest a blob URL promises.
pub(crate) struct FillTarget<'a> {
    pub(crate) uri: &'a Uri,
    pub(crate) replaced: bool,
    pub(crate) digest: Option<[u8; 32]>,
}

/// Streams a storable 200 into `sink` and to the client, both in this task: the origin
/// side ([`origin_to_sink`]) and the client side ([`client_of_fill`]). If the client
/// goes away or stops reading, the fill goes on. A blob URL's body is checked against
/// its SHA-256 before the entry is committed, and no reader gets the last byte before
/// that.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fill<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    up: UpstreamConn,
    resp: ResponseHead,
    kind: BodyKind,
    sink: Option<Sink<'_>>,
    read_back: ReadBack<'_>,
    target: FillTarget<'_>,
    op: Op,
    w: &Worker,
) -> Outcome {
    // Without a sink nothing can be read back: every piece is handed over.
    let handoff = Handoff::default();
    let owner = match &read_back {
        ReadBack::Peer { owner, .. } => owner.node.name.as_str(),
        ReadBack::Disk { .. } => "",
    };
    let stored = CacheOutcome::Stored {
        replaced: target.replaced,
    };
    let (origin_result, mut cs) = monoio::join!(
        origin_to_sink(req, up, &resp, kind, sink, &target, &handoff, owner, w),
        client_of_fill(client, req, target.uri, &resp, kind, stored, read_back, &handoff, w, op)
    );
    if let (Err(origin), Some(_)) = (origin_result, &cs.error) {
        // The client was cut because the fill failed: say why.
        cs.error = Some(origin);
    }
    cs.outcome(op)
}

/// The origin → sink side of a fill, the one fill loop: reads the body (resuming a cut
/// one while it is stored), hashes a blob, and stores each piece ([`store_piece`]) while
/// the next one is read, so that the origin's socket, the disk and the client are busy
/// at once (a lone 1 GiB fill on loopback: 520-590 MiB/s waiting for each write before
/// reading on, 700-850 overlapped). Returns why the body failed, if it did.
#[allow(clippy::too_many_arguments)]
async fn origin_to_sink(
    req: &RequestHead,
    up: UpstreamConn,
    resp: &ResponseHead,
    kind: BodyKind,
    mut sink: Option<Sink<'_>>,
    target: &FillTarget<'_>,
    handoff: &Handoff,
    owner: &str,
    w: &Worker,
) -> Result<(), String> {
    let mut body = OriginBody::new(req, target.uri, resp, kind, up, target.digest);
    let mut piece = w.bufs.lend();
    let mut next_buf = w.bufs.lend();
    let mut budget = Budget::default();
    let cx = PieceCtx {
        req,
        target,
        handoff,
        owner,
        w,
    };
    let mut read = body.next(&mut piece, sink.is_some(), w).await;
    let result = loop {
        let (pos, n) = match read {
            Ok(Some(p)) => p,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        // The last piece is committed before the client gets it: nothing is read then.
        let last = body.is_done();
        let may_resume = sink.is_some();
        let (stored, following) =
            monoio::join!(store_piece(&mut sink, &mut piece, pos, last, &cx), async {
                match last {
                    true => None,
                    false => Some(body.next(&mut next_buf, may_resume, w).await),
                }
            });
        if let Err(e) = stored {
            break Err(e);
        }
        budget.spend(n).await;
        let Some(following) = following else {
            break Ok(());
        };
        read = following;
        std::mem::swap(&mut piece, &mut next_buf);
        next_buf.clear();
    };
    if let Err(e) = result {
        if let Some(s) = sink {
            s.abort().await; // never committed: the fill fails for its readers
        }
        handoff.end(Err(e.clone()));
        return Err(e);
    }
    commit(sink, handoff, req, target.replaced, w).await;
    handoff.end(Ok(()));
    body.release(w);
    Ok(())
}

/// What [`store_piece`] needs besides the sink and the piece.
struct PieceCtx<'a> {
    req: &'a RequestHead,
    target: &'a FillTarget<'a>,
    handoff: &'a Handoff,
    owner: &'a str,
    w: &'a Worker,
}

/// Stores one piece at body offset `pos`: writes the sink, commits it when the piece is
/// the `last`, and hands the piece to a client that takes them from the queue: without
/// waiting while the sink feeds others (a client that falls behind switches to reading
/// back), waiting for room when nobody else needs this body. A sink that fails stops
/// storing; the client then gets the rest from the queue where what the sink took stays
/// readable. Leaves `buf` empty (the piece handed over, or cleared). An error ends the
/// fill.
async fn store_piece(
    sink: &mut Option<Sink<'_>>,
    buf: &mut Lent<'_>,
    pos: u64,
    last: bool,
    cx: &PieceCtx<'_>,
) -> Result<(), String> {
    let (req, handoff, w) = (cx.req, cx.handoff, cx.w);
    if let Some(s) = sink.as_mut() {
        let (res, b) = s.write(buf.take()).await;
        buf.put_back(b);
        if let Err(e) = res {
            s.log_stopped(req, &e);
            let keeps = s.keeps_what_it_took();
            // Fails the fill: its readers abort (a disk fill's temp file goes).
            *sink = None;
            if keeps && !handoff.on_queue() {
                // The client reads what the sink took, then the rest from memory.
                handoff.switch(pos);
            }
        }
    }
    let feeds_others = sink.is_some();
    if last {
        // Committed before the client sees its last byte, so that a request it sends
        // right after finds the entry.
        commit(sink.take(), handoff, req, cx.target.replaced, w).await;
    }
    if !handoff.is_gone() && handoff.on_queue() {
        match handoff.try_push(pos, buf.take()) {
            Ok(()) => buf.put_back(w.bufs.get()),
            Err(b) if feeds_others => {
                // The client fell behind: it reads the rest back from the sink.
                if cx.owner.is_empty() {
                    log::debug!(
                        "cache: the client of {} fell behind at byte {pos}; it reads the rest from the fill file",
                        req.target,
                    );
                } else {
                    log::info!(
                        "cluster: the client of {} fell behind at byte {pos}; it continues from {}",
                        req.target,
                        cx.owner,
                    );
                }
                buf.put_back(b);
                handoff.switch(pos);
            }
            Err(b) => {
                if !handoff.push(pos, b).await {
                    return Err("the client went away".into());
                }
                buf.put_back(w.bufs.get());
            }
        }
    } else if handoff.is_gone() && sink.is_none() && !last {
        // Nobody wants the rest of this body.
        return Err("the client went away".into());
    }
    buf.clear();
    Ok(())
}

/// Commits the sink, if any, and counts the entry as stored (or replaced) only then:
/// a fill that fails later (a digest mismatch, a cut) is never counted as stored. When
/// the commit fails where what the sink took stays readable, the client reads it all
/// back (the body is whole).
async fn commit(
    sink: Option<Sink<'_>>,
    handoff: &Handoff,
    req: &RequestHead,
    replaced: bool,
    w: &Worker,
) {
    let Some(sink) = sink else {
        return;
    };
    let keeps = sink.keeps_what_it_took();
    let committed = sink.commit(req, w).await;
    if committed.is_ok() {
        crate::metrics::entry_stored(replaced);
    }
    if let Err(held) = committed {
        if keeps && !handoff.on_queue() {
            handoff.switch(held);
        }
    }
}

/// The client side of a fill: the head, then the body at the client's speed without
/// holding the fill back: from the queue (the pieces as received, no copy through the
/// storage) while it keeps up; once it fell behind, read back from the fill's file as it
/// is written (as a joined reader does; then from the queue again if the file write
/// failed) or from the owner's fill.
#[allow(clippy::too_many_arguments)]
async fn client_of_fill<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    uri: &Uri,
    resp: &ResponseHead,
    kind: BodyKind,
    stored: CacheOutcome,
    read_back: ReadBack<'_>,
    handoff: &Handoff,
    w: &Worker,
    op: Op,
) -> ClientSide {
    let mut cs = ClientSide::begin(client, req, resp, kind, stored, w, op).await;
    if cs.wants_body() {
        let mut next = 0u64; // the next body byte the client side needs
        while cs.wants_body() && next < cs.copy.end {
            let version = handoff.version();
            if let Some((pos, buf)) = handoff.pop() {
                next = pos + buf.len() as u64;
                w.bufs.put(cs.write_piece(client, buf, pos).await);
                continue;
            }
            match (handoff.ended(), handoff.from(), &read_back) {
                (Some(Err(e)), None, _) => cs.error = Some(e),
                (_, Some(from), ReadBack::Disk { fill, info, file }) => {
                    debug_assert_eq!(from, next);
                    // The rest from the fill's file, as it is written.
                    let copy = &mut cs.copy;
                    let res =
                        stream_fill(client, fill, info, file.as_ref(), copy, Some(handoff), w);
                    match res.await {
                        Ok(()) => cs.finish(client).await,
                        Err(e) => cs.error = Some(e),
                    }
                    break;
                }
                (Some(Err(e)), Some(_), ReadBack::Peer { .. }) => cs.error = Some(e),
                (_, Some(from), ReadBack::Peer { owner, key }) => {
                    debug_assert_eq!(from, next);
                    // Should the owner fail, the origin continues the body.
                    let r = peer::Resume {
                        req,
                        uri,
                        etag: strong_etag(&resp.headers),
                        len: kind.known_len(),
                    };
                    let (k, o) = (key, *owner);
                    peer::read_back(client, &mut cs, next, resp, kind, o, k, &r, w).await;
                    break;
                }
                (Some(Ok(())), None, _) => {
                    cs.finish(client).await;
                    break;
                }
                (None, None, _) => handoff.changed(version).await,
            }
        }
    }
    handoff.client_gone();
    cs
}
