//! Serving from this node's disk: a validated entry (head and first bytes in one write,
//! read-ahead overlapped with writes), and an entry another request is still writing
//! (read-while-write, woken as bytes land). Also used by the KV server.

use std::rc::Rc;
use std::sync::Arc;

use monoio::buf::IoBufMut;
use monoio::fs::File;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};

use super::client_side::WindowedCopy;
use super::handoff::Handoff;
use super::head::{cached_head, range_of, stored_head};
use super::validate::{answer_client_conditional, validated_headers};
use super::{Exchange, Op, Outcome, ProxyError, Worker};
use crate::cache::fill::{Fill, Phase, StreamInfo};
use crate::cache::key::key_hash;
use crate::cache::open::OpenEntry;
use crate::cache::status::Outcome as CacheOutcome;
use crate::http::{RequestHead, ResponseHead};
use crate::stream::bufpool::{Lent, READ_BUF};
use crate::stream::fair::Budget;
use crate::stream::BufConn;

/// Waits (bounded) until the fill we joined has its response head: returns it, or `None`
/// when the fill completed, failed, or took too long.
pub(crate) async fn wait_for_head(fill: &Fill, w: &Worker) -> Option<Arc<StreamInfo>> {
    let deadline = std::time::Instant::now() + w.timeouts.connect + w.timeouts.upstream_head;
    loop {
        let snap = fill.snapshot();
        match snap.phase {
            Phase::Streaming => return snap.info,
            Phase::Complete | Phase::Failed => return None,
            Phase::Pending => {
                if monoio::time::timeout_at(deadline.into(), fill.changed(snap.version))
                    .await
                    .is_err()
                {
                    return None;
                }
            }
        }
    }
}

/// Serves a validated entry from disk: the head and the first part of the body go out in
/// one write; the rest is read ahead into a second buffer while the first is written.
pub(crate) async fn serve_entry<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    open: Rc<OpenEntry>,
    not_modified: &ResponseHead,
    w: &Worker,
) -> Outcome {
    let op = Op::Hit;
    let entry = &open.entry;
    let headers = validated_headers(&entry.meta, not_modified, CacheOutcome::Revalidated);
    open.touch();
    if let Some(o) = answer_client_conditional(client, req, &headers, w, op).await {
        return o;
    }
    let len = entry.meta.body_len;
    let answer = range_of(req, &headers, Some(len));
    // A tiny entry's head and body fit a read-sized buffer: under load the core's few
    // spare transfer buffers then stay for large bodies, and small hits do not make the
    // allocator map and unmap 256 KiB per request (measured: ~1 in 10 4 KiB hits did).
    let mut buf = if open.body.is_some() && len <= (READ_BUF / 2) as u64 {
        w.bufs.lend_small()
    } else {
        w.bufs.lend()
    };
    let win = cached_head(
        req,
        entry.meta.status,
        headers,
        len,
        answer,
        w.may_keep_alive(req),
        &mut buf,
    );
    let (status, keep_alive) = (win.status, win.keep_alive);
    if let Some(body) = &open.body {
        // A tiny entry: head and body in one write, no file read.
        buf.extend_from_slice(&body[win.start as usize..(win.start + win.count) as usize]);
        let (res, b) = client.io.write_all(buf.take()).await;
        buf.put_back(b);
        return match res {
            Ok(_) => Outcome::Done(Exchange {
                status,
                bytes: win.count,
                op,
                keep_alive,
            }),
            Err(e) => Outcome::aborted(status, 0, op, format!("client write failed: {e}")),
        };
    }
    match send_file_range(
        client,
        &entry.file,
        entry.body_offset + win.start,
        win.count,
        buf,
        w,
    )
    .await
    {
        Ok(()) => Outcome::Done(Exchange {
            status,
            bytes: win.count,
            op,
            keep_alive,
        }),
        Err(e) => {
            if e.file_failed {
                drop_unreadable(w, &open, &e.reason).await;
            }
            Outcome::aborted(status, e.sent, op, e.reason)
        }
    }
}

/// A hit whose file read failed (truncated, I/O error): the entry is dropped from the
/// index, the disk and this core's open entries, so the next request refills it; the
/// client being served is cut (an incomplete response, never a short complete one).
pub(crate) async fn drop_unreadable(w: &Worker, open: &OpenEntry, why: &str) {
    let hash = key_hash(&open.entry.meta.key);
    w.open_entries.forget(hash);
    if let Some(store) = &w.store {
        let entry = &open.entry;
        store
            .drop_broken(hash, entry.generation, &entry.file, why)
            .await;
    }
}

/// Why [`send_file_range`] stopped.
pub(crate) struct SendFileError {
    /// File bytes that went out.
    pub sent: u64,
    pub reason: String,
    /// The file read failed (not the client write).
    pub file_failed: bool,
}

/// Sends `buf` (a head already in it) followed by `count` file bytes from `pos`, filling
/// the rest of `buf` first and then overlapping each write with the next read.
pub(crate) async fn send_file_range<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    file: &File,
    pos: u64,
    count: u64,
    mut buf: Lent<'_>,
    w: &Worker,
) -> Result<(), SendFileError> {
    let fail = |sent, reason, file_failed| SendFileError {
        sent,
        reason,
        file_failed,
    };
    let head_len = buf.len();
    let first = count.min((buf.capacity() - head_len) as u64) as usize;
    if first > 0 {
        let (res, slice) = file
            .read_exact_at(buf.take().slice_mut(head_len..head_len + first), pos)
            .await;
        buf.put_back(slice.into_inner());
        if let Err(e) = res {
            return Err(fail(0, format!("cache file read failed: {e}"), true));
        }
    }
    let mut off = first as u64; // bytes read so far
    let mut spare = if off < count {
        w.bufs.lend()
    } else {
        w.bufs.lend_none()
    };
    let mut result = Ok(());
    let mut budget = Budget::default();
    loop {
        if off >= count {
            let (res, b) = client.io.write_all(buf.take()).await;
            buf.put_back(b);
            if let Err(e) = res {
                result = Err(fail(off, format!("client write failed: {e}"), false));
            }
            break;
        }
        let want = (count - off).min(spare.capacity() as u64) as usize;
        spare.clear();
        let ((wres, b), (rres, slice)) = monoio::join!(
            client.io.write_all(buf.take()),
            file.read_exact_at(spare.take().slice_mut(0..want), pos + off)
        );
        buf.put_back(b);
        spare.put_back(slice.into_inner());
        if let Err(e) = wres {
            result = Err(fail(off, format!("client write failed: {e}"), false));
            break;
        }
        if let Err(e) = rres {
            let reason = format!("cache file read failed at {off} of {count}: {e}");
            result = Err(fail(off, reason, true));
            break;
        }
        off += want as u64;
        budget.spend(want as u64).await;
        std::mem::swap(&mut buf, &mut spare);
    }
    result
}

/// Streams an entry that another request is still writing (read-while-write), woken as
/// bytes land; aborts the client if the fill fails.
pub(crate) async fn serve_fill<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    fill: &Fill,
    info: &StreamInfo,
    not_modified: &ResponseHead,
    w: &Worker,
) -> Outcome {
    let op = Op::Collapsed;
    let headers = validated_headers(&info.meta, not_modified, CacheOutcome::Collapsed);
    if let Some(o) = answer_client_conditional(client, req, &headers, w, op).await {
        return o;
    }
    let Some(file) = open_fill_file(fill, info).await else {
        return Outcome::Failed {
            error: ProxyError::Upstream(crate::upstream::UpstreamError::Closed(
                "the fill this request joined failed".into(),
            )),
            close: false,
            op,
        };
    };
    let mut head = Vec::with_capacity(512);
    let (writer, win) = stored_head(
        req,
        info.meta.status,
        headers,
        info.body_len,
        w.may_keep_alive(req),
        &mut head,
    );
    let (status, keep_alive) = (win.status, win.keep_alive);
    if let Err(e) = client.io.write_all(head).await.0 {
        return Outcome::aborted(status, 0, op, e.to_string());
    }
    let end = win.start.saturating_add(win.count);
    let mut copy = WindowedCopy::new(writer, win.start, end, Some(w.timeouts.idle));
    let result = stream_fill(client, fill, info, Some(&file), &mut copy, None, w).await;
    let bytes = copy.sent;
    if let Err(reason) = result {
        return Outcome::aborted(status, bytes, op, reason);
    }
    if let Err(e) = writer.finish(&mut client.io).await {
        return Outcome::aborted(status, bytes, op, e.to_string());
    }
    Outcome::Done(Exchange {
        status,
        bytes,
        op,
        keep_alive,
    })
}

/// Opens the file of a fill that is streaming or just completed. The temp file is
/// renamed into place when the fill completes; either path works, since the layout is
/// the same.
pub(crate) async fn open_fill_file(fill: &Fill, info: &StreamInfo) -> Option<File> {
    match File::open(&info.temp_path).await {
        Ok(f) => Some(f),
        Err(_) => match File::open(&info.final_path).await {
            Ok(f) if fill.snapshot().phase == Phase::Complete => Some(f),
            _ => None,
        },
    }
}

/// Sends the body bytes of a fill inside `copy`'s window to `client`, waiting for bytes
/// as they land. Returns whether the whole window went out (not `writer.finish`); the
/// bytes sent are `copy.sent`. The leader's client passes its `handoff`: it reads back
/// from where it left the queue (`from`), and takes the queue again where the file write
/// failed (`back`).
pub(crate) async fn stream_fill<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    fill: &Fill,
    info: &StreamInfo,
    file: Option<&File>,
    copy: &mut WindowedCopy,
    handoff: Option<&Handoff>,
    w: &Worker,
) -> Result<(), String> {
    let stall = w.timeouts.upstream_head;
    let end = copy.end;
    let mut buf = w.bufs.lend();
    let left_queue = handoff.and_then(|h| h.from.get()).unwrap_or(0);
    let mut off = copy.start.max(left_queue);
    let mut budget = Budget::default();
    loop {
        if off >= end {
            return Ok(());
        }
        let snap = fill.snapshot();
        let handed = handoff.and_then(|h| h.back.get());
        // The last byte of a body of known length is held back until the fill is
        // committed (its length and digest checked): a fill that fails at its end must
        // leave every reader with an incomplete message (RFC 9112 §8), never a whole one.
        // Bytes in the file before a hand-off are final (a failed digest hands nothing).
        let avail = match (handed, info.body_len) {
            (Some(from), _) => from,
            (None, Some(len)) if snap.phase != Phase::Complete => {
                snap.written.min(len.saturating_sub(1))
            }
            _ => snap.written,
        }
        .min(end);
        if off < avail {
            let Some(file) = file else {
                return Err("the fill file is not readable".to_string());
            };
            let want = (avail - off).min(buf.capacity() as u64) as usize;
            buf.clear();
            let (res, slice) = file
                .read_at(buf.take().slice_mut(0..want), info.body_offset + off)
                .await;
            buf.put_back(slice.into_inner());
            let at = off;
            match res {
                Ok(n) if n > 0 => {
                    off += n as u64;
                    budget.spend(n as u64).await;
                }
                other => return Err(format!("reading the fill failed at {off}: {other:?}")),
            }
            let (res, b) = copy.write(&mut client.io, buf.take(), at).await;
            buf.put_back(b);
            res?;
            continue;
        }
        if let (Some(h), Some(_)) = (handoff, handed) {
            // Past the file: the pieces handed over in memory.
            let version = h.version.get();
            let piece = h.queue.borrow_mut().pop_front();
            if let Some((pos, piece)) = piece {
                h.bump(); // room for the origin side
                let hi = (pos + piece.len() as u64).min(end);
                let (res, piece) = copy.write(&mut client.io, piece, pos).await;
                w.bufs.put(piece);
                res?;
                off = off.max(hi);
                continue;
            }
            match &*h.end.borrow() {
                Some(Ok(())) if info.body_len.is_none() => return Ok(()),
                Some(Ok(())) => return Err(format!("the body ended at {off} before byte {end}")),
                Some(Err(e)) => return Err(e.clone()),
                None => {}
            }
            h.changed(version).await;
            continue;
        }
        match snap.phase {
            // Complete: every byte is in `written`; a known length was checked at commit.
            Phase::Complete if info.body_len.is_none() => return Ok(()),
            Phase::Complete => {
                return Err(format!("fill ended at {} before byte {end}", snap.written))
            }
            Phase::Failed => match handoff {
                // The origin side says next whether the rest is handed over or why the
                // fill failed.
                Some(h) if h.end.borrow().is_none() && h.back.get().is_none() => {
                    h.changed(h.version.get()).await;
                }
                Some(h) if h.back.get().is_none() => {
                    let why = match &*h.end.borrow() {
                        Some(Err(e)) => e.clone(),
                        _ => "the fill failed".to_string(),
                    };
                    return Err(why);
                }
                Some(_) => {}
                None => return Err("the fill failed".to_string()),
            },
            _ => {
                let version = handoff.map(|h| h.version.get());
                let changed = async {
                    match (handoff, version) {
                        (Some(h), Some(v)) => {
                            monoio::select! {
                                _ = fill.changed(snap.version) => {},
                                _ = h.changed(v) => {},
                            }
                        }
                        _ => fill.changed(snap.version).await,
                    }
                };
                if monoio::time::timeout(stall, changed).await.is_err() {
                    return Err(format!("the fill made no progress for {stall:?}"));
                }
            }
        }
    }
}
