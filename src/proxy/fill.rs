//! The fill: a storable 200 streamed origin → cache file at the origin's speed, resumed
//! with Range/If-Range when the origin cuts it (RFC 9110 §13.1.5, §14.2), its digest
//! checked at every body end, then committed; the leader's client reads the file behind.

use monoio::fs::File;
use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::client_side::ClientSide;
use super::handoff::Handoff;
use super::origin_body::OriginBody;
use super::serve::stream_fill;
use super::{Op, Outcome, Worker};
use crate::cache::fill::{Fill, StreamInfo};
use crate::cache::status::Outcome as CacheOutcome;
use crate::cache::store::FillWriter;
use crate::http::uri::Uri;
use crate::http::{BodyKind, RequestHead, ResponseHead};
use crate::stream::fair::Budget;
use crate::stream::BufConn;
use crate::upstream::UpstreamConn;

/// Streams a storable 200 into the cache and to the client. The fill belongs to the
/// cache and never waits on any one client: the origin → file loop ([`fill_from_origin`])
/// runs at the origin's speed, and the leader's client is served from the fill's file
/// like any joined reader ([`serve_leader`]), both in this task. If the client goes away
/// or stops reading, the fill goes on. A blob URL's body is checked against its SHA-256
/// before the entry is committed, and no reader gets the last byte before that.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fill<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    up: UpstreamConn,
    resp: ResponseHead,
    kind: BodyKind,
    writer: FillWriter,
    target: FillTarget<'_>,
    w: &Worker,
) -> Outcome {
    let op = Op::Fill;
    let fill = writer.fill().clone();
    let info = fill
        .snapshot()
        .info
        .expect("a started fill has its stream info");
    let handoff = Handoff::default();
    // The leader's client reads the fill through its own descriptor, opened now: the
    // temp file may be renamed or unlinked before the client gets to it.
    let file = match File::open(&info.temp_path).await {
        Ok(f) => Some(f),
        Err(e) => {
            log::warn!(
                "cache: cannot read back the fill file {}: {e}",
                info.temp_path.display()
            );
            None
        }
    };
    let writer = match file {
        Some(_) => Some(writer),
        None => {
            // Nothing can read the file back: store nothing, hand every piece over.
            drop(writer);
            handoff.start(0);
            None
        }
    };
    let stored = CacheOutcome::Stored {
        replaced: target.replaced,
    };
    let (origin_result, mut cs) = monoio::join!(
        fill_from_origin(req, up, &resp, kind, writer, &target, &handoff, w),
        serve_leader(client, req, &resp, kind, stored, &fill, &info, file, &handoff, w, op)
    );
    if let (Err(origin), Some(_)) = (origin_result, &cs.error) {
        // The client was cut because the fill failed: say why.
        cs.error = Some(origin);
    }
    cs.outcome(op)
}

/// The origin → cache file side of a fill: reads the body (resuming a cut one), hashes a
/// blob, writes the file and publishes progress, commits. When the file cannot be
/// written (disk full) the fill fails for its readers and the rest of the body is handed
/// to the leader's client through `handoff`. Returns why the body failed, if it did.
#[allow(clippy::too_many_arguments)]
async fn fill_from_origin(
    req: &RequestHead,
    up: UpstreamConn,
    resp: &ResponseHead,
    kind: BodyKind,
    mut writer: Option<FillWriter>,
    target: &FillTarget<'_>,
    handoff: &Handoff,
    w: &Worker,
) -> Result<(), String> {
    let mut body = OriginBody::new(req, target.uri, resp, kind, up, target.digest);
    let mut buf = w.bufs.lend();
    let mut budget = Budget::default();
    let result = loop {
        // A cut body is resumed while it is being stored.
        let (pos, n) = match body.next(&mut buf, writer.is_some(), w).await {
            Ok(Some(piece)) => piece,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if let Some(fw) = writer.as_mut() {
            let (res, b) = fw.write(buf.take()).await;
            buf.put_back(b);
            if let Err(e) = res {
                log::warn!("cache: fill of {} stopped: {e}", req.target);
                // Fails the fill (its readers abort, the temp file goes); the leader's
                // client gets the rest from memory.
                writer = None;
                handoff.start(pos);
            }
        }
        if writer.is_none() {
            if !handoff.push(pos, buf.take()).await {
                break Err("the client went away".into());
            }
            buf.put_back(w.bufs.get());
        }
        budget.spend(n).await;
        if body.is_done() {
            break Ok(());
        }
    };
    if let Err(e) = result {
        drop(writer); // fails the fill: readers abort, the temp file goes
        handoff.end(Err(e.clone()));
        return Err(e);
    }
    if let Some(fw) = writer {
        let written = fw.written();
        if let Err(e) = fw.commit().await {
            log::warn!("cache: cannot commit {}: {e}", req.target);
            // The file holds the whole body: the leader's client reads it all.
            handoff.start(written);
        }
    }
    handoff.end(Ok(()));
    body.release(w);
    Ok(())
}

/// The leader's client side of a fill: the head, then the body read back from the
/// fill's file as it is written (as a joined reader does), then from `handoff` if the
/// file write failed. Runs at the client's speed without holding the fill back.
#[allow(clippy::too_many_arguments)]
async fn serve_leader<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    resp: &ResponseHead,
    kind: BodyKind,
    stored: CacheOutcome,
    fill: &Fill,
    info: &StreamInfo,
    file: Option<File>,
    handoff: &Handoff,
    w: &Worker,
    op: Op,
) -> ClientSide {
    let mut cs = ClientSide::begin(client, req, resp, kind, stored, w, op).await;
    if cs.wants_body() {
        let (sent, result) = stream_fill(
            client,
            fill,
            info,
            file.as_ref(),
            cs.start,
            cs.end,
            cs.writer,
            Some(handoff),
            w,
        )
        .await;
        cs.sent = sent;
        match result {
            Ok(()) => cs.finish(client).await,
            Err(e) => cs.error = Some(e),
        }
    }
    handoff.client_gone();
    cs
}

/// What a fill is for: its URL (to resume it), whether it replaces an entry, and the
/// digest a blob URL promises.
pub(crate) struct FillTarget<'a> {
    pub(crate) uri: &'a Uri,
    pub(crate) replaced: bool,
    pub(crate) digest: Option<[u8; 32]>,
}
