//! The caching path for GET requests: key → entry or in-flight fill → conditional request
//! to the origin (always: RFC 9111 §4.3, the original's "always validating") → decide:
//! 304 with an entry → serve from disk; 304 while another request fills → stream the
//! entry as it is written; storable 200 → fill (to the client and the cache file at
//! once); anything else → relay.

use std::rc::Rc;
use std::sync::Arc;

use monoio::buf::IoBufMut;
use monoio::fs::File;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::forward::{
    build_response_head, pool_key, relay_and_release, send_upstream, upstream_request_head,
    write_response_head,
};
use super::{Exchange, Outcome, ProxyError, Worker};
use crate::cache::fill::{Fill, Phase, Role, StreamInfo};
use crate::cache::key::{cache_key, key_hash, match_rule};
use crate::cache::meta::EntryMeta;
use crate::cache::open::OpenEntry;
use crate::cache::policy::{
    client_conditional_matches, conditional_headers, merge_304, request_storable,
    response_storable, should_drop_on_status, stored_headers, NotStorable, Validators,
};
use crate::cache::status::Outcome as CacheOutcome;
use crate::cache::store::{FillStartError, FillWriter, Store};
use crate::http::uri::Uri;
use crate::http::{BodyKind, Headers, RequestHead, ResponseHead};
use crate::stream::{BodyReader, BodyWriter, BufConn};
use crate::upstream::UpstreamConn;

/// Client request fields replaced by our own validators: a 304 answering the client's
/// validators would say nothing about our entry (we evaluate the client's conditionals
/// ourselves against the validated entry, RFC 9111 §4.3.2).
const CLIENT_CONDITIONALS: &[&str] = &["if-none-match", "if-modified-since", "if-range", "range"];

fn not_stored(
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

/// Entry point for requests when a cache is configured.
pub async fn handle<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: RequestHead,
    uri: Uri,
    w: &Worker,
    store: &Arc<Store>,
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
        (Some(e), _) => Some(Validators::from_headers(&headers_of(&e.entry.meta))),
        (None, Some((_, info))) => Some(Validators::from_headers(&headers_of(&info.meta))),
        _ => None,
    };

    let mut up_head = upstream_request_head(&req, &uri, BodyKind::None);
    for name in CLIENT_CONDITIONALS {
        up_head.headers.remove(name);
    }
    if let Some(v) = &validators {
        for (name, value) in conditional_headers(v) {
            up_head.headers.set(name, value);
        }
    }
    let mut head_bytes = Vec::with_capacity(1024);
    up_head.write_to(&mut head_bytes);
    let mut no_body = BodyReader::new(BodyKind::None);
    let (mut up, resp) =
        match send_upstream(client, &head_bytes, &pool_key(&uri), &mut no_body, w).await {
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
            return relay_and_release(
                client,
                &req,
                &mut up,
                resp.clone(),
                w,
                "pass",
                not_stored(had_entry, reason)(&resp),
            )
            .await;
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
                Ok(writer) => fill(client, &req, up, resp, kind, writer, had_entry, w).await,
                Err(FillStartError::TooLarge) => {
                    let cs = not_stored(had_entry, NotStorable::TooLarge)(&resp);
                    relay_and_release(client, &req, &mut up, resp, w, "pass", cs).await
                }
                Err(FillStartError::Io(e)) => {
                    log::warn!(
                        "cache: cannot create a fill file in {}: {e}",
                        store.dir.display()
                    );
                    let cs =
                        Some("chacha; fwd=miss; fwd-status=200; detail=disk-error".to_string());
                    relay_and_release(client, &req, &mut up, resp, w, "pass", cs).await
                }
            };
        }
        let cs = Some("chacha; fwd=miss; fwd-status=200; detail=fill-in-progress".to_string());
        return relay_and_release(client, &req, &mut up, resp, w, "pass", cs).await;
    }
    if let Some(e) = &entry {
        if should_drop_on_status(resp.status) {
            w.open_entries.forget(hash);
            store.remove(hash, e.entry.generation);
        }
    }
    let cs = not_stored(had_entry, NotStorable::Status)(&resp);
    relay_and_release(client, &req, &mut up, resp, w, "pass", cs).await
}

fn headers_of(meta: &EntryMeta) -> Headers {
    Headers {
        fields: meta.headers.clone(),
    }
}

/// A 304 has no body: its connection can go back to the pool at once.
fn release_bodyless(up: &mut UpstreamConn, resp: &ResponseHead, w: &Worker) {
    if resp.keep_alive() {
        w.upstream.release_ref(up);
    }
}

/// Waits (bounded) until the fill we joined has its response head: returns it, or `None`
/// when the fill completed, failed, or took too long.
async fn wait_for_head(fill: &Fill, w: &Worker) -> Option<Arc<StreamInfo>> {
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

/// Headers of a validated entry: stored ones updated by the 304 (RFC 9111 §4.3.4).
fn validated_headers(
    stored: &EntryMeta,
    not_modified: &ResponseHead,
    status: CacheOutcome,
) -> Headers {
    let mut headers = merge_304(&headers_of(stored), &not_modified.headers);
    headers.strip_hop_by_hop();
    headers.set("Cache-Status", status.header_value());
    headers
}

/// Answers the client's own conditional request against the validated entry with a 304
/// (RFC 9110 §13.1.2–§13.1.3); `None` when the client wants the body.
async fn answer_client_conditional<C: AsyncWriteRent>(
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
    let mut buf = w.bufs.get();
    let (_, keep_alive) = build_response_head(
        req,
        entry.meta.status,
        "",
        headers,
        BodyKind::Length(len),
        w,
        &mut buf,
    );
    let head_len = buf.len();
    let first = (len.min((buf.capacity() - head_len) as u64)) as usize;
    let file = &entry.file;
    let (res, slice) = file
        .read_exact_at(buf.slice_mut(head_len..head_len + first), entry.body_offset)
        .await;
    buf = slice.into_inner();
    if let Err(e) = res {
        w.bufs.put(buf);
        let reason = format!("cache file read failed: {e}");
        return Outcome::Aborted {
            status: 200,
            bytes: 0,
            op,
            reason,
        };
    }
    let mut off = first as u64; // body bytes read so far
    let mut spare = w.bufs.get();
    let mut result: Result<(), String> = Ok(());
    loop {
        if off >= len {
            let (res, b) = client.io.write_all(buf).await;
            buf = b;
            if let Err(e) = res {
                result = Err(format!("client write failed: {e}"));
            }
            break;
        }
        // Write what we have while reading the next part (RFC-free: just overlap I/O).
        let want = (len - off).min(spare.capacity() as u64) as usize;
        spare.clear();
        let pos = entry.body_offset + off;
        let ((wres, b), (rres, slice)) = monoio::join!(
            client.io.write_all(buf),
            file.read_exact_at(spare.slice_mut(0..want), pos)
        );
        buf = b;
        spare = slice.into_inner();
        if let Err(e) = wres {
            result = Err(format!("client write failed: {e}"));
            break;
        }
        if let Err(e) = rres {
            result = Err(format!("cache file read failed at {off} of {len}: {e}"));
            break;
        }
        off += want as u64;
        std::mem::swap(&mut buf, &mut spare);
    }
    w.bufs.put(buf);
    w.bufs.put(spare);
    match result {
        Ok(()) => Outcome::Done(Exchange {
            status: 200,
            bytes: len,
            op,
            keep_alive,
        }),
        Err(reason) => Outcome::Aborted {
            status: 200,
            bytes: off,
            op,
            reason,
        },
    }
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
    // The temp file is renamed into place when the fill completes; either path works,
    // since the layout is the same.
    let file = match File::open(&info.temp_path).await {
        Ok(f) => f,
        Err(_) => match File::open(&info.final_path).await {
            Ok(f) if fill.snapshot().phase == Phase::Complete => f,
            _ => {
                return Outcome::Failed {
                    error: ProxyError::Upstream(crate::upstream::UpstreamError::Closed(
                        "the fill this request joined failed".into(),
                    )),
                    close: false,
                    op,
                }
            }
        },
    };
    let kind = match info.body_len {
        Some(n) => BodyKind::Length(n),
        None => BodyKind::Chunked,
    };
    let (writer, res) =
        write_response_head(client, req, info.meta.status, "", headers, kind, w).await;
    let keep_alive = match res {
        Ok(k) => k,
        Err(e) => {
            return Outcome::Aborted {
                status: 200,
                bytes: 0,
                op,
                reason: e.to_string(),
            }
        }
    };
    let stall = w.timeouts.upstream_head;
    let mut buf = w.bufs.get();
    let mut off = 0u64;
    let result = loop {
        let snap = fill.snapshot();
        if off < snap.written {
            let want = (snap.written - off).min(buf.capacity() as u64) as usize;
            buf.clear();
            let (res, slice) = file
                .read_at(buf.slice_mut(0..want), info.body_offset + off)
                .await;
            buf = slice.into_inner();
            match res {
                Ok(n) if n > 0 => off += n as u64,
                other => break Err(format!("reading the fill failed at {off}: {other:?}")),
            }
            let (res, b) = writer.write(&mut client.io, buf).await;
            buf = b;
            if let Err(e) = res {
                break Err(format!("client write failed: {e}"));
            }
            continue;
        }
        match snap.phase {
            Phase::Complete => break Ok(()),
            Phase::Failed => break Err("the fill failed".to_string()),
            _ => {
                if monoio::time::timeout(stall, fill.changed(snap.version))
                    .await
                    .is_err()
                {
                    break Err(format!("the fill made no progress for {stall:?}"));
                }
            }
        }
    };
    w.bufs.put(buf);
    if let Err(reason) = result {
        return Outcome::Aborted {
            status: 200,
            bytes: off,
            op,
            reason,
        };
    }
    if let Err(e) = writer.finish(&mut client.io).await {
        return Outcome::Aborted {
            status: 200,
            bytes: off,
            op,
            reason: e.to_string(),
        };
    }
    Outcome::Done(Exchange {
        status: 200,
        bytes: off,
        op,
        keep_alive,
    })
}

/// Streams a storable 200 to the client and into the cache at once, from the same
/// buffers. The fill belongs to the cache: if the client goes away the fill goes on.
#[allow(clippy::too_many_arguments)]
async fn fill<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    mut up: UpstreamConn,
    resp: ResponseHead,
    kind: BodyKind,
    writer: FillWriter,
    replaced: bool,
    w: &Worker,
) -> Outcome {
    let op = "fill";
    let mut writer = Some(writer);
    let mut headers = resp.headers.clone();
    headers.strip_hop_by_hop();
    headers.set(
        "Cache-Status",
        CacheOutcome::Stored { replaced }.header_value(),
    );
    // The client may already hold this representation: it gets a 304 while we fill.
    let mut client_error: Option<String> = None;
    let mut keep_alive = false;
    let mut body_writer = BodyWriter::Empty;
    let mut client_wants_body = true;
    if let Some(o) = answer_client_conditional(client, req, &headers, w, op).await {
        match o {
            Outcome::Done(ex) => keep_alive = ex.keep_alive,
            _ => client_error = Some("client write failed".into()),
        }
        client_wants_body = false;
    } else {
        let (bw, res) = write_response_head(client, req, 200, &resp.reason, headers, kind, w).await;
        body_writer = bw;
        match res {
            Ok(k) => keep_alive = k,
            Err(e) => client_error = Some(e.to_string()),
        }
    }
    let mut reader = BodyReader::new(kind);
    let mut buf = w.bufs.get();
    let mut bytes = 0u64;
    loop {
        match reader.read(&mut up.conn, &mut buf).await {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) => {
                w.bufs.put(buf);
                drop(writer); // fails the fill: readers abort, the temp file goes
                return Outcome::Aborted {
                    status: 200,
                    bytes,
                    op,
                    reason: format!("origin body failed: {e}"),
                };
            }
        }
        if let Some(fw) = writer.as_mut() {
            let (res, b) = fw.write(buf).await;
            buf = b;
            if let Err(e) = res {
                log::warn!("cache: fill of {} stopped: {e}", req.target);
                writer = None;
            }
        }
        if reader.is_done() {
            // Commit before the client sees its last byte, so that a request it sends
            // right after finds the entry (not a fill that is about to end).
            commit(writer.take(), req).await;
        }
        if client_wants_body && client_error.is_none() {
            let (res, b) = body_writer.write(&mut client.io, buf).await;
            buf = b;
            if let Err(e) = res {
                client_error = Some(format!("client write failed: {e}"));
            }
        }
        if writer.is_none() && client_error.is_some() {
            w.bufs.put(buf);
            return Outcome::Aborted {
                status: 200,
                bytes,
                op,
                reason: client_error.unwrap_or_default(),
            };
        }
    }
    w.bufs.put(buf);
    commit(writer, req).await;
    if resp.keep_alive() {
        w.upstream.release(up);
    }
    if client_error.is_none() && client_wants_body {
        if let Err(e) = body_writer.finish(&mut client.io).await {
            client_error = Some(e.to_string());
        }
    }
    if let Some(reason) = client_error {
        return Outcome::Aborted {
            status: 200,
            bytes,
            op,
            reason,
        };
    }
    Outcome::Done(Exchange {
        status: if client_wants_body { 200 } else { 304 },
        bytes,
        op,
        keep_alive,
    })
}

async fn commit(writer: Option<FillWriter>, req: &RequestHead) {
    if let Some(fw) = writer {
        if let Err(e) = fw.commit().await {
            log::warn!("cache: cannot commit {}: {e}", req.target);
        }
    }
}
