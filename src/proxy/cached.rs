//! The caching path for GET requests: key → entry or in-flight fill → conditional request
//! to the origin (always: RFC 9111 §4.3, the original's "always validating") → decide:
//! 304 with an entry → serve from disk; 304 while another request fills → stream the
//! entry as it is written; storable 200 → fill (origin → cache file at the origin's
//! speed, the client reading the file behind the writer); anything else → relay.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::fs::File;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::forward::{
    build_response_head, pool_key, relay_and_release, send_upstream, write_response_head,
    write_upstream_head,
};
use super::{Exchange, Outcome, ProxyError, Worker};
use crate::cache::digest::{expected_sha256, Verifier};
use crate::cache::fill::{Fill, Phase, Role, StreamInfo};
use crate::cache::key::{cache_key, key_hash, key_is_exact, match_rule};
use crate::cache::meta::EntryMeta;
use crate::cache::open::OpenEntry;
use crate::cache::policy::{
    client_conditional_matches, conditional_headers, request_storable, response_storable,
    served_after_304, should_drop_on_status, stored_headers, NotStorable, Validators,
};
use crate::cache::status::Outcome as CacheOutcome;
use crate::cache::store::{FillStartError, FillWriter};
use crate::cluster::Owner;
use crate::http::range::{self, if_range_matches, RangeAnswer};
use crate::http::uri::Uri;
use crate::http::{BodyKind, Headers, RequestHead, ResponseHead};
use crate::stream::fair::Budget;
use crate::stream::{BodyReader, BodyWriter, BufConn};
use crate::upstream::UpstreamConn;

/// Client request fields replaced by our own validators: a 304 answering the client's
/// validators would say nothing about our entry (we evaluate the client's conditionals
/// ourselves against the validated entry, RFC 9111 §4.3.2).
pub(crate) const CLIENT_CONDITIONALS: &[&str] =
    &["if-none-match", "if-modified-since", "if-range", "range"];

pub(crate) fn not_stored(
    had_entry: bool,
    reason: NotStorable,
) -> impl FnOnce(&ResponseHead) -> Option<String> {
    move |resp| {
        Some(
            CacheOutcome::NotStored {
                had_entry,
                status: resp.status,
                reason,
            }
            .header_value(),
        )
    }
}

/// Entry point for GET requests when a cache or a cluster is configured.
pub async fn handle<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: RequestHead,
    uri: Uri,
    w: &Worker,
) -> Outcome {
    let url = uri.to_url_string();
    let rule = match_rule(&w.rules, &url);
    if let Err(reason) = request_storable(&req, rule) {
        return super::forward::forward(client, req, uri, w, not_stored(false, reason)).await;
    }
    match req.body_kind() {
        Ok(BodyKind::None) | Ok(BodyKind::Length(0)) => {}
        // A GET with a body is unusual; relay it untouched.
        _ => {
            return super::forward::forward(
                client,
                req,
                uri,
                w,
                not_stored(false, NotStorable::Method),
            )
            .await
        }
    }
    let key = cache_key(&uri, rule);
    // Cluster mode: a key another node owns is served through that node.
    if let Some(cluster) = &w.cluster {
        if let Owner::Peer(node) = cluster.owner(&key) {
            return super::remote::handle(client, req, uri, key, rule, node, w).await;
        }
    }
    let Some(store) = &w.store else {
        // A cluster member without a disk: its own keys go uncached.
        return super::forward::forward(client, req, uri, w, |_| None).await;
    };
    let hash = key_hash(&key);

    let mut entry = w.open_entries.lookup(store, hash, &key).await;
    let mut lead = None;
    let mut joined: Option<(Arc<Fill>, Arc<StreamInfo>)> = None;
    if entry.is_none() {
        match store.fills.lead_or_join(hash, &key) {
            Role::Leader(h) => lead = Some(h),
            Role::Waiter(f) => match wait_for_head(&f, w).await {
                Some(info) => joined = Some((f, info)),
                None if f.snapshot().phase == Phase::Complete => {
                    entry = w.open_entries.lookup(store, hash, &key).await
                }
                None => {}
            },
            Role::Collision => {}
        }
    }
    let had_entry = entry.is_some();
    let validators = match (&entry, &joined) {
        (Some(e), _) => Some(validators_of(&e.entry.meta)),
        (None, Some((_, info))) => Some(validators_of(&info.meta)),
        _ => None,
    };
    let (mut up, resp) = match revalidate(client, &req, &uri, validators.as_ref(), w).await {
        Ok(x) => x,
        Err((error, close)) => {
            return Outcome::Failed {
                error,
                close,
                op: "miss",
            }
        }
    };

    if resp.status == 304 {
        if let Some(entry) = entry {
            release_bodyless(&mut up, &resp, w);
            return serve_entry(client, &req, entry, &resp, w).await;
        }
        if let Some((fill, info)) = joined {
            release_bodyless(&mut up, &resp, w);
            return serve_fill(client, &req, &fill, &info, &resp, w).await;
        }
    }
    if resp.status == 200 {
        if let Err(reason) = response_storable(&req, &resp, rule) {
            let cs = not_stored(had_entry, reason)(&resp);
            return relay_ranged(client, &req, &mut up, resp, w, cs).await;
        }
        if lead.is_none() && joined.is_none() {
            // Replacing an entry (or a waiter whose fill went away): try to become the filler.
            if let Role::Leader(h) = store.fills.lead_or_join(hash, &key) {
                lead = Some(h);
            }
        }
        if let Some(handle) = lead {
            let meta = EntryMeta {
                key,
                status: 200,
                headers: stored_headers(&resp.headers).fields,
                ..Default::default()
            };
            let kind = match resp.body_kind(&req.method) {
                Ok(k) => k,
                Err(e) => {
                    return Outcome::Failed {
                        error: ProxyError::Upstream(crate::upstream::UpstreamError::Protocol(
                            e.to_string(),
                        )),
                        close: false,
                        op: "miss",
                    }
                }
            };
            let body_len = match kind {
                BodyKind::Length(n) => Some(n),
                BodyKind::None => Some(0),
                _ => None,
            };
            return match store.start_fill(handle, meta, body_len).await {
                Ok(writer) => {
                    let digest = expected_sha256(&uri.path_and_query);
                    let target = FillTarget {
                        uri: &uri,
                        replaced: had_entry,
                        digest,
                    };
                    fill(client, &req, up, resp, kind, writer, target, w).await
                }
                Err(FillStartError::TooLarge) => {
                    let cs = not_stored(had_entry, NotStorable::TooLarge)(&resp);
                    relay_ranged(client, &req, &mut up, resp, w, cs).await
                }
                Err(FillStartError::Io(e)) => {
                    log::warn!(
                        "cache: cannot create a fill file in {}: {e}",
                        store.dir.display()
                    );
                    let cs =
                        Some("chacha; fwd=miss; fwd-status=200; detail=disk-error".to_string());
                    relay_ranged(client, &req, &mut up, resp, w, cs).await
                }
            };
        }
        let cs = Some("chacha; fwd=miss; fwd-status=200; detail=fill-in-progress".to_string());
        return relay_ranged(client, &req, &mut up, resp, w, cs).await;
    }
    if let Some(e) = &entry {
        // Issue 9 item 4: only when the key covers the whole request.
        if should_drop_on_status(resp.status, key_is_exact(&uri, &key, rule, &req.headers)) {
            w.open_entries.forget(hash);
            store.remove(hash, e.entry.generation);
        }
    }
    let cs = not_stored(had_entry, NotStorable::Status)(&resp);
    relay_and_release(client, &req, &mut up, resp, w, "pass", cs).await
}

/// Sends the GET upstream conditional on our `validators` (the client's own
/// conditionals and Range replaced, see [`CLIENT_CONDITIONALS`]) and reads the head.
pub(crate) async fn revalidate<C: AsyncReadRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    uri: &Uri,
    validators: Option<&Validators>,
    w: &Worker,
) -> Result<(UpstreamConn, ResponseHead), (ProxyError, bool)> {
    let conditionals = validators.map(conditional_headers).unwrap_or_default();
    let extra: Vec<(&str, &str)> = conditionals.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut head_bytes = Vec::with_capacity(512);
    write_upstream_head(
        req,
        uri,
        BodyKind::None,
        CLIENT_CONDITIONALS,
        &extra,
        &mut head_bytes,
    );
    let mut no_body = BodyReader::new(BodyKind::None);
    send_upstream(client, &head_bytes, &pool_key(uri), &mut no_body, w).await
}

/// The validators of a stored response, read without copying its fields.
pub(crate) fn validators_of(meta: &EntryMeta) -> Validators {
    let find = |name: &str| {
        meta.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    Validators {
        etag: find("etag"),
        last_modified: find("last-modified"),
    }
}

pub(crate) fn headers_of(meta: &EntryMeta) -> Headers {
    Headers {
        fields: meta.headers.clone(),
    }
}

/// A 304 has no body: its connection can go back to the pool at once.
pub(crate) fn release_bodyless(up: &mut UpstreamConn, resp: &ResponseHead, w: &Worker) {
    if resp.keep_alive() {
        w.upstream.release_ref(up);
    }
}

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

/// Headers of a validated entry: stored ones updated by the 304 (RFC 9111 §4.3.4), plus
/// the 304's `Set-Cookie` for this client only (never stored).
pub(crate) fn validated_headers(
    stored: &EntryMeta,
    not_modified: &ResponseHead,
    status: CacheOutcome,
) -> Headers {
    let mut headers = served_after_304(&headers_of(stored), &not_modified.headers);
    headers.strip_hop_by_hop();
    headers.set("Cache-Status", status.header_value());
    headers
}

/// Answers the client's own conditional request against the validated entry with a 304
/// (RFC 9110 §13.1.2–§13.1.3); `None` when the client wants the body.
pub(crate) async fn answer_client_conditional<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    headers: &Headers,
    w: &Worker,
    op: &'static str,
) -> Option<Outcome> {
    if !client_conditional_matches(&req.headers, &Validators::from_headers(headers)) {
        return None;
    }
    let mut h = headers.clone();
    h.remove("content-length");
    let (_, res) =
        write_response_head(client, req, 304, "Not Modified", h, BodyKind::None, w).await;
    Some(match res {
        Ok(keep_alive) => Outcome::Done(Exchange {
            status: 304,
            bytes: 0,
            op,
            keep_alive,
        }),
        Err(e) => Outcome::Aborted {
            status: 304,
            bytes: 0,
            op,
            reason: e.to_string(),
        },
    })
}

/// Relays an uncached 200 to the client. We did not forward the client's Range (to be
/// able to fill), so a client that asked for one gets its window cut out of the stream
/// as a 206 (RFC 9110 §14.2 lets a cache answer a range from a full representation):
/// a client like Tart that resumes with `Range: bytes=N-` accepts only a 206.
pub(crate) async fn relay_ranged<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    up: &mut UpstreamConn,
    resp: ResponseHead,
    w: &Worker,
    cache_status: Option<String>,
) -> Outcome {
    let op = "pass";
    let mut headers = resp.headers.clone();
    headers.strip_hop_by_hop();
    let answer = match resp.body_kind(&req.method) {
        Ok(BodyKind::Length(len)) if req.headers.contains("range") => {
            range_of(req, &headers, Some(len)).then_len(len)
        }
        _ => None,
    };
    let Some((answer, len)) = answer else {
        return relay_and_release(client, req, up, resp, w, op, cache_status).await;
    };
    if let Some(cs) = cache_status {
        headers.set("Cache-Status", cs);
    }
    let mut head = Vec::with_capacity(512);
    let win = cached_head(req, 200, headers, len, answer, w, &mut head);
    let (status, keep_alive) = (win.status, win.keep_alive);
    if let Err(e) = client.io.write_all(head).await.0 {
        return Outcome::Aborted {
            status,
            bytes: 0,
            op,
            reason: e.to_string(),
        };
    }
    let (start, end) = (win.start, win.start + win.count);
    let mut reader = BodyReader::new(BodyKind::Length(len));
    let mut buf = w.bufs.get();
    let (mut pos, mut sent) = (0u64, 0u64);
    // Read only up to the end of the window; the origin connection is then dropped
    // rather than drained (it is not reused).
    let result = loop {
        if pos >= end {
            break Ok(());
        }
        let n = match reader.read(&mut up.conn, &mut buf).await {
            Ok(0) => break Err("origin body ended early".to_string()),
            Ok(n) => n as u64,
            Err(e) => break Err(format!("origin body failed: {e}")),
        };
        let (lo, hi) = (pos.max(start), (pos + n).min(end));
        if lo < hi {
            let slice = buf.slice((lo - pos) as usize..(hi - pos) as usize);
            let (res, s) = client.io.write_all(slice).await;
            buf = s.into_inner();
            if let Err(e) = res {
                break Err(format!("client write failed: {e}"));
            }
            sent += hi - lo;
        }
        pos += n;
    };
    w.bufs.put(buf);
    if reader.is_done() && resp.keep_alive() {
        w.upstream.release_ref(up);
    }
    match result {
        Ok(()) => Outcome::Done(Exchange {
            status,
            bytes: sent,
            op,
            keep_alive,
        }),
        Err(reason) => Outcome::Aborted {
            status,
            bytes: sent,
            op,
            reason,
        },
    }
}

/// Which part of a body of `len` bytes (when known) the client asked for, honouring
/// `If-Range` (RFC 9110 §13.1.5, §14.2).
pub(crate) fn range_of(req: &RequestHead, headers: &Headers, len: Option<u64>) -> RangeAnswer {
    let (Some(len), Some(range)) = (len, req.headers.get_str("range")) else {
        return RangeAnswer::Full;
    };
    if let Some(if_range) = req.headers.get_str("if-range") {
        let v = Validators::from_headers(headers);
        if !if_range_matches(if_range, v.etag.as_deref(), v.last_modified.as_deref()) {
            return RangeAnswer::Full;
        }
    }
    range::evaluate(Some(range), len)
}

/// The part of the body a response carries: `count` bytes from `start`.
pub(crate) struct Window {
    pub status: u16,
    pub start: u64,
    pub count: u64,
    pub keep_alive: bool,
}

/// Serialises the head of a response with a stored body of `len` bytes, for the range
/// answer: 200 whole, 206 with Content-Range, or 416 with `bytes */len` (RFC 9110 §14.4,
/// §15.3.7, §15.5.17).
pub(crate) fn cached_head(
    req: &RequestHead,
    status: u16,
    mut headers: Headers,
    len: u64,
    answer: RangeAnswer,
    w: &Worker,
    out: &mut Vec<u8>,
) -> Window {
    headers.set("Accept-Ranges", "bytes");
    let (status, start, count) = match answer {
        RangeAnswer::Full => (status, 0, len),
        RangeAnswer::Partial { start, end } => {
            headers.set("Content-Range", range::content_range(start, end, len));
            (206, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            headers.set("Content-Range", range::unsatisfied_range(len));
            (416, 0, 0)
        }
    };
    let (_, keep_alive) =
        build_response_head(req, status, "", headers, BodyKind::Length(count), w, out);
    Window {
        status,
        start,
        count,
        keep_alive,
    }
}

/// The head of a response whose body is stored (or being stored): ranged when its length
/// is known, chunked otherwise (then the whole body).
pub(crate) fn stored_head(
    req: &RequestHead,
    status: u16,
    headers: Headers,
    body_len: Option<u64>,
    w: &Worker,
    out: &mut Vec<u8>,
) -> (BodyWriter, Window) {
    match body_len {
        Some(len) => {
            let answer = range_of(req, &headers, Some(len));
            let win = cached_head(req, status, headers, len, answer, w, out);
            (BodyWriter::Raw, win)
        }
        None => {
            let (writer, keep_alive) =
                build_response_head(req, status, "", headers, BodyKind::Chunked, w, out);
            let win = Window {
                status,
                start: 0,
                count: u64::MAX,
                keep_alive,
            };
            (writer, win)
        }
    }
}

/// Serves a validated entry from disk: the head and the first part of the body go out in
/// one write; the rest is read ahead into a second buffer while the first is written.
async fn serve_entry<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    open: Rc<OpenEntry>,
    not_modified: &ResponseHead,
    w: &Worker,
) -> Outcome {
    let op = "hit";
    let entry = &open.entry;
    let headers = validated_headers(&entry.meta, not_modified, CacheOutcome::Revalidated);
    open.touch();
    if let Some(o) = answer_client_conditional(client, req, &headers, w, op).await {
        return o;
    }
    let len = entry.meta.body_len;
    let answer = range_of(req, &headers, Some(len));
    let mut buf = w.bufs.get();
    let win = cached_head(req, entry.meta.status, headers, len, answer, w, &mut buf);
    let (status, keep_alive) = (win.status, win.keep_alive);
    if let Some(body) = &open.body {
        // A tiny entry: head and body in one write, no file read.
        buf.extend_from_slice(&body[win.start as usize..(win.start + win.count) as usize]);
        let (res, b) = client.io.write_all(buf).await;
        w.bufs.put(b);
        return match res {
            Ok(_) => Outcome::Done(Exchange {
                status,
                bytes: win.count,
                op,
                keep_alive,
            }),
            Err(e) => Outcome::Aborted {
                status,
                bytes: 0,
                op,
                reason: format!("client write failed: {e}"),
            },
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
            Outcome::Aborted {
                status,
                bytes: e.sent,
                op,
                reason: e.reason,
            }
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
    mut buf: Vec<u8>,
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
            .read_exact_at(buf.slice_mut(head_len..head_len + first), pos)
            .await;
        buf = slice.into_inner();
        if let Err(e) = res {
            w.bufs.put(buf);
            return Err(fail(0, format!("cache file read failed: {e}"), true));
        }
    }
    let mut off = first as u64; // bytes read so far
    let mut spare = if off < count {
        w.bufs.get()
    } else {
        Vec::new()
    };
    let mut result = Ok(());
    let mut budget = Budget::default();
    loop {
        if off >= count {
            let (res, b) = client.io.write_all(buf).await;
            buf = b;
            if let Err(e) = res {
                result = Err(fail(off, format!("client write failed: {e}"), false));
            }
            break;
        }
        let want = (count - off).min(spare.capacity() as u64) as usize;
        spare.clear();
        let ((wres, b), (rres, slice)) = monoio::join!(
            client.io.write_all(buf),
            file.read_exact_at(spare.slice_mut(0..want), pos + off)
        );
        buf = b;
        spare = slice.into_inner();
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
    w.bufs.put(buf);
    w.bufs.put(spare);
    result
}

/// Streams an entry that another request is still writing (read-while-write), woken as
/// bytes land; aborts the client if the fill fails.
async fn serve_fill<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    fill: &Fill,
    info: &StreamInfo,
    not_modified: &ResponseHead,
    w: &Worker,
) -> Outcome {
    let op = "collapsed";
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
    let (writer, win) = stored_head(req, info.meta.status, headers, info.body_len, w, &mut head);
    let (status, keep_alive) = (win.status, win.keep_alive);
    if let Err(e) = client.io.write_all(head).await.0 {
        return Outcome::Aborted {
            status,
            bytes: 0,
            op,
            reason: e.to_string(),
        };
    }
    let end = win.start.saturating_add(win.count);
    let (bytes, result) = stream_fill(
        client,
        fill,
        info,
        Some(&file),
        win.start,
        end,
        writer,
        None,
        w,
    )
    .await;
    if let Err(reason) = result {
        return Outcome::Aborted {
            status,
            bytes,
            op,
            reason,
        };
    }
    if let Err(e) = writer.finish(&mut client.io).await {
        return Outcome::Aborted {
            status,
            bytes,
            op,
            reason: e.to_string(),
        };
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

/// Sends body bytes `[start, end)` of a fill (`end` may be `u64::MAX` for "all") to
/// `client` framed by `writer`, waiting for bytes as they land. Returns the bytes sent
/// and whether the whole window went out (not `writer.finish`). The leader's client
/// passes its `handoff`: the pieces that follow the file when the file write failed.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn stream_fill<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    fill: &Fill,
    info: &StreamInfo,
    file: Option<&File>,
    start: u64,
    end: u64,
    writer: BodyWriter,
    handoff: Option<&Handoff>,
    w: &Worker,
) -> (u64, Result<(), String>) {
    let stall = w.timeouts.upstream_head;
    let mut buf = w.bufs.get();
    let mut off = start;
    let mut budget = Budget::default();
    let result = loop {
        if off >= end {
            break Ok(());
        }
        let snap = fill.snapshot();
        let handed = handoff.and_then(|h| h.from.get());
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
                break Err("the fill file is not readable".to_string());
            };
            let want = (avail - off).min(buf.capacity() as u64) as usize;
            buf.clear();
            let (res, slice) = file
                .read_at(buf.slice_mut(0..want), info.body_offset + off)
                .await;
            buf = slice.into_inner();
            match res {
                Ok(n) if n > 0 => {
                    off += n as u64;
                    budget.spend(n as u64).await;
                }
                other => break Err(format!("reading the fill failed at {off}: {other:?}")),
            }
            let (res, b) = write_within(writer, &mut client.io, buf, w).await;
            buf = b;
            if let Err(e) = res {
                break Err(format!("client write failed: {e}"));
            }
            continue;
        }
        if let (Some(h), Some(_)) = (handoff, handed) {
            // Past the file: the pieces handed over in memory.
            let version = h.version.get();
            let piece = h.queue.borrow_mut().pop_front();
            if let Some((pos, piece)) = piece {
                h.bump(); // room for the origin side
                let n = piece.len() as u64;
                let (lo, hi) = (pos.max(off), (pos + n).min(end));
                let (res, piece) = if lo >= hi {
                    (Ok(()), piece)
                } else if lo == pos && hi == pos + n {
                    write_within(writer, &mut client.io, piece, w).await
                } else {
                    // A window of a body of known length: no framing around the bytes.
                    let mut piece = piece;
                    piece.truncate((hi - pos) as usize);
                    piece.drain(..(lo - pos) as usize);
                    write_within(writer, &mut client.io, piece, w).await
                };
                w.bufs.put(piece);
                if let Err(e) = res {
                    break Err(format!("client write failed: {e}"));
                }
                off = off.max(hi);
                continue;
            }
            match &*h.end.borrow() {
                Some(Ok(())) if info.body_len.is_none() => break Ok(()),
                Some(Ok(())) => break Err(format!("the body ended at {off} before byte {end}")),
                Some(Err(e)) => break Err(e.clone()),
                None => {}
            }
            h.changed(version).await;
            continue;
        }
        match snap.phase {
            // Complete: every byte is in `written`; a known length was checked at commit.
            Phase::Complete if info.body_len.is_none() => break Ok(()),
            Phase::Complete => {
                break Err(format!("fill ended at {} before byte {end}", snap.written))
            }
            Phase::Failed => match handoff {
                // The origin side says next whether the rest is handed over or why the
                // fill failed.
                Some(h) if h.end.borrow().is_none() && h.from.get().is_none() => {
                    h.changed(h.version.get()).await;
                }
                Some(h) if h.from.get().is_none() => {
                    let why = match &*h.end.borrow() {
                        Some(Err(e)) => e.clone(),
                        _ => "the fill failed".to_string(),
                    };
                    break Err(why);
                }
                Some(_) => {}
                None => break Err("the fill failed".to_string()),
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
                    break Err(format!("the fill made no progress for {stall:?}"));
                }
            }
        }
    };
    w.bufs.put(buf);
    (off - start, result)
}

/// Writes one piece to a reader of a fill; a client that cannot take it within the idle
/// timeout has stopped reading: it is cut, it holds back nothing but its own connection.
async fn write_within<C: AsyncWriteRent>(
    writer: BodyWriter,
    io: &mut C,
    buf: Vec<u8>,
    w: &Worker,
) -> (std::io::Result<()>, Vec<u8>) {
    let limit = w.timeouts.idle;
    match monoio::time::timeout(limit, writer.write(io, buf)).await {
        Ok(done) => done,
        // The buffer went with the cancelled write.
        Err(_) => (
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client did not take a piece within {limit:?}"),
            )),
            Vec::new(),
        ),
    }
}

/// Streams a storable 200 into the cache and to the client. The fill belongs to the
/// cache and never waits on any one client: the origin → file loop ([`fill_from_origin`])
/// runs at the origin's speed, and the leader's client is served from the fill's file
/// like any joined reader ([`serve_leader`]), both in this task. If the client goes away
/// or stops reading, the fill goes on. A blob URL's body is checked against its SHA-256
/// before the entry is committed, and no reader gets the last byte before that.
#[allow(clippy::too_many_arguments)]
async fn fill<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    up: UpstreamConn,
    resp: ResponseHead,
    kind: BodyKind,
    writer: FillWriter,
    target: FillTarget<'_>,
    w: &Worker,
) -> Outcome {
    let op = "fill";
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
    mut up: UpstreamConn,
    resp: &ResponseHead,
    kind: BodyKind,
    mut writer: Option<FillWriter>,
    target: &FillTarget<'_>,
    handoff: &Handoff,
    w: &Worker,
) -> Result<(), String> {
    let mut verifier = target.digest.map(Verifier::new);
    let mut resumes = 0;
    let mut reader = BodyReader::new(kind);
    let mut buf = w.bufs.get();
    let mut pos = 0u64; // body bytes received from the origin
    let mut budget = Budget::default();
    // A resume sends no request body: it needs no client.
    let mut no_client = BufConn::new(&[][..]);
    let result = loop {
        let n = match reader.read(&mut up.conn, &mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => n as u64,
            Err(e) if resumes < MAX_FILL_RESUMES && writer.is_some() => {
                // The origin cut the body: resume it where it stopped, so the bytes already
                // in the cache (and sent) are not fetched again.
                resumes += 1;
                match resume_fill(&mut no_client, req, target, resp, kind, pos, w).await {
                    Some((conn, rest)) => {
                        log::info!(
                            "cache: origin cut {} at byte {pos} ({e}); resumed",
                            req.target
                        );
                        up = conn;
                        reader = BodyReader::new(rest);
                        continue;
                    }
                    None => break Err(format!("origin body failed: {e}; resuming failed")),
                }
            }
            Err(e) => break Err(format!("origin body failed: {e}")),
        };
        if let Some(v) = verifier.as_mut() {
            v.update(&buf);
        }
        // The end of a body of known length: checked before its last piece is written,
        // so that no reader can have it before the verdict.
        if reader.is_done() && !digest_ok(&verifier, req) {
            break Err("digest mismatch".into());
        }
        if let Some(fw) = writer.as_mut() {
            let (res, b) = fw.write(buf).await;
            buf = b;
            if let Err(e) = res {
                log::warn!("cache: fill of {} stopped: {e}", req.target);
                // Fails the fill (its readers abort, the temp file goes); the leader's
                // client gets the rest from memory.
                writer = None;
                handoff.start(pos);
            }
        }
        if writer.is_none() {
            if !handoff.push(pos, buf).await {
                buf = Vec::new();
                break Err("the client went away".into());
            }
            buf = w.bufs.get();
        }
        pos += n;
        budget.spend(n).await;
        if reader.is_done() {
            break Ok(());
        }
    };
    w.bufs.put(buf);
    // A chunked or close-delimited body ends with an empty read (RFC 9112 §6.3, §7.1):
    // its digest is checked here, before the commit and before the client's last chunk.
    let result = result.and_then(|()| match digest_ok(&verifier, req) {
        true => Ok(()),
        false => Err("digest mismatch".to_string()),
    });
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
    if resp.keep_alive() && reader.is_done() {
        w.upstream.release(up);
    }
    Ok(())
}

/// Whether a blob's body matched its digest (true when it has none); logs a mismatch.
fn digest_ok(verifier: &Option<Verifier>, req: &RequestHead) -> bool {
    if verifier.as_ref().is_some_and(|v| !v.matches()) {
        log::error!(
            "cache: {} does not match its sha256 digest; discarded, client aborted",
            req.target
        );
        return false;
    }
    true
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
    op: &'static str,
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

/// Body pieces the origin side hands to the leader's client after the fill stopped
/// writing its file (disk full): a small bounded queue within one task, so a client that
/// does not read holds back only its own (uncached) transfer.
#[derive(Default)]
pub(crate) struct Handoff {
    /// Body offset the handed-over pieces start at; the file holds the bytes before it.
    from: Cell<Option<u64>>,
    queue: RefCell<VecDeque<(u64, Vec<u8>)>>,
    /// How the origin side ended: the body is complete (`Ok`) or failed.
    end: RefCell<Option<Result<(), String>>>,
    gone: Cell<bool>,
    version: Cell<u64>,
    waker: RefCell<Option<Waker>>,
}

/// Pieces the hand-off holds at most.
const HANDOFF_PIECES: usize = 4;

impl Handoff {
    fn bump(&self) {
        self.version.set(self.version.get() + 1);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once anything changed after `version` was read.
    pub(crate) fn changed(&self, version: u64) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.version.get() != version {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    pub(crate) fn start(&self, from: u64) {
        self.from.set(Some(from));
        self.bump();
    }

    pub(crate) fn end(&self, result: Result<(), String>) {
        *self.end.borrow_mut() = Some(result);
        self.bump();
    }

    pub(crate) fn client_gone(&self) {
        self.gone.set(true);
        self.bump();
    }

    /// Queues body bytes `pos..` if there is room; hands the buffer back if not.
    pub(crate) fn try_push(&self, pos: u64, buf: Vec<u8>) -> Result<(), Vec<u8>> {
        if self.queue.borrow().len() >= HANDOFF_PIECES {
            return Err(buf);
        }
        self.queue.borrow_mut().push_back((pos, buf));
        self.bump();
        Ok(())
    }

    /// The oldest queued piece and its body offset.
    pub(crate) fn pop(&self) -> Option<(u64, Vec<u8>)> {
        let piece = self.queue.borrow_mut().pop_front();
        if piece.is_some() {
            self.bump();
        }
        piece
    }

    pub(crate) fn from(&self) -> Option<u64> {
        self.from.get()
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.get()
    }

    pub(crate) fn is_gone(&self) -> bool {
        self.gone.get()
    }

    /// How the producing side ended, once it did.
    pub(crate) fn ended(&self) -> Option<Result<(), String>> {
        self.end.borrow().clone()
    }

    /// Queues body bytes `pos..`, waiting for room; false when the client went away.
    pub(crate) async fn push(&self, pos: u64, buf: Vec<u8>) -> bool {
        loop {
            if self.gone.get() {
                return false;
            }
            if self.queue.borrow().len() < HANDOFF_PIECES {
                self.queue.borrow_mut().push_back((pos, buf));
                self.bump();
                return true;
            }
            self.changed(self.version.get()).await;
        }
    }
}

/// How often one fill may resume a body the origin cut.
const MAX_FILL_RESUMES: u32 = 3;

/// What a fill is for: its URL (to resume it), whether it replaces an entry, and the
/// digest a blob URL promises.
struct FillTarget<'a> {
    uri: &'a Uri,
    replaced: bool,
    digest: Option<[u8; 32]>,
}

/// Asks the origin for the rest of a cut body: `Range: bytes=pos-` with `If-Range` on the
/// response's strong ETag (RFC 9110 §13.1.5: only then is a 206 guaranteed to continue the
/// same representation). Returns the connection and the rest's framing when the origin
/// answered with exactly that range.
async fn resume_fill<C: AsyncReadRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    target: &FillTarget<'_>,
    resp: &ResponseHead,
    kind: BodyKind,
    pos: u64,
    w: &Worker,
) -> Option<(UpstreamConn, BodyKind)> {
    let BodyKind::Length(len) = kind else {
        return None;
    };
    let etag = resp
        .headers
        .get_str("etag")
        .filter(|e| e.starts_with('"'))?;
    let range = format!("bytes={pos}-");
    let extra = [("Range", range.as_str()), ("If-Range", etag)];
    let mut head = Vec::with_capacity(512);
    write_upstream_head(
        req,
        target.uri,
        BodyKind::None,
        CLIENT_CONDITIONALS,
        &extra,
        &mut head,
    );
    let mut no_body = BodyReader::new(BodyKind::None);
    let (up, part) = send_upstream(client, &head, &pool_key(target.uri), &mut no_body, w)
        .await
        .ok()?;
    let expected = range::content_range(pos, len - 1, len);
    let same = part.headers.get_str("etag") == Some(etag);
    if part.status != 206
        || part.headers.get_str("content-range") != Some(expected.as_str())
        || !same
    {
        log::info!(
            "cache: cannot resume {} at byte {pos}: origin answered {} {:?}",
            req.target,
            part.status,
            part.headers.get_str("content-range")
        );
        return None;
    }
    match part.body_kind(&req.method) {
        Ok(BodyKind::Length(n)) if n == len - pos => Some((up, BodyKind::Length(n))),
        _ => None,
    }
}

/// The client's side of a response whose body streams from the origin while it is
/// stored (a fill here, or a PUT to the owning node): its head is sent first, then the
/// part of each body piece inside the client's window.
pub(crate) struct ClientSide {
    pub status: u16,
    keep_alive: bool,
    writer: BodyWriter,
    /// The window of body bytes the client gets: `[start, end)`.
    start: u64,
    pub(crate) end: u64,
    pub sent: u64,
    pub error: Option<String>,
    /// A piece the client cannot take within this long cuts it (`timeouts.idle`).
    idle: std::time::Duration,
}

impl ClientSide {
    /// Sends the head: 304 when the client already holds this representation (the body
    /// still streams into the cache), 206/416 for a range of a body of known length
    /// (RFC 9110 §14), 200 otherwise.
    pub(crate) async fn begin<C: AsyncWriteRent>(
        client: &mut BufConn<C>,
        req: &RequestHead,
        resp: &ResponseHead,
        kind: BodyKind,
        cache_status: CacheOutcome,
        w: &Worker,
        op: &'static str,
    ) -> ClientSide {
        let mut headers = resp.headers.clone();
        headers.strip_hop_by_hop();
        headers.set("Cache-Status", cache_status.header_value());
        let mut cs = ClientSide {
            status: 200,
            keep_alive: false,
            writer: BodyWriter::Empty,
            start: 0,
            end: 0,
            sent: 0,
            error: None,
            idle: w.timeouts.idle,
        };
        if let Some(o) = answer_client_conditional(client, req, &headers, w, op).await {
            match o {
                Outcome::Done(ex) => cs.keep_alive = ex.keep_alive,
                _ => cs.error = Some("client write failed".into()),
            }
            cs.status = 304;
            return cs;
        }
        let mut head = Vec::with_capacity(512);
        match kind {
            BodyKind::Length(len) => {
                let answer = range_of(req, &headers, Some(len));
                let win = cached_head(req, 200, headers, len, answer, w, &mut head);
                (cs.status, cs.keep_alive) = (win.status, win.keep_alive);
                (cs.start, cs.end) = (win.start, win.start + win.count);
                cs.writer = BodyWriter::Raw;
            }
            _ => {
                let (bw, ka) =
                    build_response_head(req, 200, &resp.reason, headers, kind, w, &mut head);
                (cs.writer, cs.keep_alive, cs.end) = (bw, ka, u64::MAX);
            }
        }
        if let Err(e) = client.io.write_all(head).await.0 {
            cs.error = Some(e.to_string());
        }
        cs
    }

    pub(crate) fn wants_body(&self) -> bool {
        self.status != 304 && self.status != 416 && self.error.is_none()
    }

    /// Sends the part of `buf` (body bytes `pos..pos + buf.len()`) inside the window.
    pub(crate) async fn write_piece<C: AsyncWriteRent>(
        &mut self,
        client: &mut BufConn<C>,
        mut buf: Vec<u8>,
        pos: u64,
    ) -> Vec<u8> {
        let n = buf.len() as u64;
        let (lo, hi) = (pos.max(self.start), (pos + n).min(self.end));
        if !self.wants_body() || lo >= hi {
            return buf;
        }
        let whole = lo == pos && hi == pos + n;
        let write = async {
            if whole {
                self.writer.write(&mut client.io, buf).await
            } else {
                let slice = buf.slice((lo - pos) as usize..(hi - pos) as usize);
                let (res, s) = client.io.write_all(slice).await;
                (res.map(|_| ()), s.into_inner())
            }
        };
        let res = match monoio::time::timeout(self.idle, write).await {
            Ok((res, b)) => {
                buf = b;
                res
            }
            Err(_) => {
                // The buffer went with the cancelled write.
                buf = Vec::new();
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client did not take a piece within {:?}", self.idle),
                ))
            }
        };
        match res {
            Ok(()) => self.sent += hi - lo,
            Err(e) => self.error = Some(format!("client write failed: {e}")),
        }
        buf
    }

    /// Ends the body (the last chunk of a chunked one).
    pub(crate) async fn finish<C: AsyncWriteRent>(&mut self, client: &mut BufConn<C>) {
        if self.wants_body() {
            if let Err(e) = self.writer.finish(&mut client.io).await {
                self.error = Some(e.to_string());
            }
        }
    }

    pub(crate) fn outcome(&mut self, op: &'static str) -> Outcome {
        match self.error.take() {
            Some(reason) => Outcome::Aborted {
                status: self.status,
                bytes: self.sent,
                op,
                reason,
            },
            None => Outcome::Done(Exchange {
                status: self.status,
                bytes: self.sent,
                op,
                keep_alive: self.keep_alive,
            }),
        }
    }
}
