//! Forwarding one absolute-form request to its origin and relaying the response
//! (RFC 9110 §7.6 intermediaries, RFC 9112 framing).

use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::{Exchange, Outcome, ProxyError, Worker};
use crate::http::uri::{Scheme, Uri};
use crate::http::{BodyKind, Headers, RequestHead, ResponseHead, Version};
use crate::stream::fair::Budget;
use crate::stream::{BodyReader, BodyWriter, BufConn};
use crate::upstream::{read_final_head, PoolKey, UpStream, UpstreamConn, UpstreamError};

/// This process's name in `Via` (RFC 9110 §7.6.3): unique per process, so a request that
/// comes back to the same chacha (e.g. an absolute URL naming chacha itself) is refused
/// instead of looping.
pub fn via_pseudonym() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("chacha-{:x}{:08x}", std::process::id(), nanos)
    })
}

/// Whether this request already passed through this process.
pub fn is_loop(req: &RequestHead) -> bool {
    let me = via_pseudonym().as_bytes();
    req.headers
        .get_all("via")
        .any(|v| v.windows(me.len()).any(|w| w == me))
}

/// Writes the request head sent to the origin into `out`: origin-form target, our own
/// HTTP version, hop-by-hop fields removed (RFC 9110 §7.6.1), Host set from the target
/// (RFC 9112 §3.2.2), `Expect` dropped (we answer `100-continue` ourselves, RFC 9110
/// §10.1.1), fields named in `skip` dropped and `extra` appended. The framing is ours:
/// `kind` decides, so the client's `Content-Length` (possibly a list of identical values,
/// repeated fields or leading zeros, all of which the request parser accepted as one
/// length) goes out as one normalised `Content-Length: N` (RFC 9110 §8.6), and nothing
/// for a request sent without a body. Written straight from the client's head, without
/// copying its fields first.
pub fn write_upstream_head(
    req: &RequestHead,
    uri: &Uri,
    kind: BodyKind,
    skip: &[&str],
    extra: &[(&str, &str)],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(uri.authority().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &req.headers.fields {
        if name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("content-length")
            || skip.iter().any(|s| name.eq_ignore_ascii_case(s))
            || req.headers.is_hop_by_hop(name)
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    match kind {
        BodyKind::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyKind::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::None | BodyKind::UntilClose => {}
    }
    // RFC 9110 §7.6.3: a proxy adds itself to Via (also how we detect loops).
    out.extend_from_slice(b"Via: 1.1 ");
    out.extend_from_slice(via_pseudonym().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in extra {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads a final response head from the origin within `timeouts.upstream-head`
/// (interim responses per [`crate::upstream::head::check_interim`]). `received` tells
/// whether any byte arrived (a reused connection that closes before any byte is retried
/// by the caller).
pub async fn read_response_head(
    up: &mut BufConn<UpStream>,
    w: &Worker,
    received: &mut bool,
) -> Result<ResponseHead, UpstreamError> {
    let limit = w.timeouts.upstream_head;
    read_final_head(up, Instant::now() + limit, limit, received).await
}

/// Sends head and body upstream, then reads the response head.
enum SendError {
    /// Failed before any response byte on a reused connection, with no body sent.
    Stale(UpstreamError),
    Upstream(UpstreamError),
    Client(std::io::Error),
    /// The client sent no body byte within `timeouts.client-body`.
    ClientTimeout,
}

async fn send_request<C: AsyncReadRent>(
    up: &mut UpstreamConn,
    head_bytes: &[u8],
    client: &mut BufConn<C>,
    body: &mut BodyReader,
    w: &Worker,
) -> Result<ResponseHead, SendError> {
    let body_writer = if body.is_done() {
        BodyWriter::Raw
    } else if matches!(body, BodyReader::Chunked(_)) {
        BodyWriter::Chunked
    } else {
        BodyWriter::Raw
    };
    let has_body = !body.is_done();
    let stale = |e: UpstreamError, reused: bool| {
        if reused && !has_body {
            SendError::Stale(e)
        } else {
            SendError::Upstream(e)
        }
    };
    if let Err(e) = up.conn.io.write_all(head_bytes.to_vec()).await.0 {
        return Err(stale(UpstreamError::Closed(e.to_string()), up.reused));
    }
    if has_body {
        let mut buf = w.bufs.get();
        loop {
            // An idle bound on the client's body, so that a client that stops sending
            // does not hold its connection and the origin's forever. On expiry the
            // dropped read may have lost bytes: both connections are closed anyway.
            match monoio::time::timeout(w.timeouts.client_body, body.read(client, &mut buf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    w.bufs.put(buf);
                    return Err(SendError::Client(e));
                }
                Err(_) => {
                    w.bufs.put(buf); // emptied by the dropped read: the pool skips it
                    return Err(SendError::ClientTimeout);
                }
            }
            let (res, b) = body_writer.write(&mut up.conn.io, buf).await;
            buf = b;
            if let Err(e) = res {
                w.bufs.put(buf);
                return Err(SendError::Upstream(UpstreamError::Closed(e.to_string())));
            }
        }
        w.bufs.put(buf);
        if let Err(e) = body_writer.finish(&mut up.conn.io).await {
            return Err(SendError::Upstream(UpstreamError::Closed(e.to_string())));
        }
    }
    let mut received = false;
    read_response_head(&mut up.conn, w, &mut received)
        .await
        .map_err(|e| {
            if received {
                SendError::Upstream(e)
            } else {
                stale(e, up.reused)
            }
        })
}

/// Sends a request upstream (pooled connection, one retry when a reused connection
/// turns out stale) and reads the final response head. On failure returns the error to
/// answer with and whether the client connection must close.
pub async fn send_upstream<C: AsyncReadRent>(
    client: &mut BufConn<C>,
    head_bytes: &[u8],
    key: &PoolKey,
    body: &mut BodyReader,
    w: &Worker,
) -> Result<(UpstreamConn, ResponseHead), (ProxyError, bool)> {
    loop {
        let mut up = match w.upstream.take_idle(key) {
            Some(c) => c,
            None => match w.upstream.connect_new(key).await {
                Ok(c) => c,
                Err(e) => return Err((e.into(), !body.is_done())),
            },
        };
        match send_request(&mut up, head_bytes, client, body, w).await {
            Ok(resp) => return Ok((up, resp)),
            Err(SendError::Stale(e)) => {
                log::debug!(
                    "pooled connection to {}:{} was stale ({e}); retrying",
                    key.host,
                    key.port
                );
            }
            Err(SendError::Upstream(e)) => return Err((e.into(), !body.is_done())),
            Err(SendError::Client(e)) => return Err((ProxyError::ClientIo(e), true)),
            // 408 and close (RFC 9110 §15.5.9); `up` is dropped here, which closes the
            // origin connection mid-body so the origin never takes a partial request.
            Err(SendError::ClientTimeout) => {
                return Err((ProxyError::ClientBodyTimeout(w.timeouts.client_body), true))
            }
        }
    }
}

pub fn pool_key(uri: &Uri) -> PoolKey {
    PoolKey {
        tls: uri.scheme == Scheme::Https,
        host: uri.host.clone(),
        port: uri.port_or_default(),
    }
}

/// Answers `Expect: 100-continue` ourselves (RFC 9110 §10.1.1) so that the body arrives.
pub async fn answer_expect<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    body: &BodyReader,
) -> std::io::Result<()> {
    if req.headers.has_token("expect", "100-continue")
        && !body.is_done()
        && req.version == Version::Http11
    {
        client
            .io
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
            .await
            .0?;
    }
    Ok(())
}

/// Forwards a request and relays the response, uncached. `cache_status` (if any) is
/// computed from the origin's response head and added to the client's response.
pub async fn forward<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: RequestHead,
    uri: Uri,
    w: &Worker,
    cache_status: impl FnOnce(&ResponseHead) -> Option<String>,
) -> Outcome {
    let req_kind = match req.body_kind() {
        Ok(k) => k,
        Err(e) => {
            return Outcome::Failed {
                error: e.into(),
                close: true,
                op: "reject",
            }
        }
    };
    let mut body = BodyReader::new(req_kind);
    if let Err(e) = answer_expect(client, &req, &body).await {
        return Outcome::Aborted {
            status: 100,
            bytes: 0,
            op: "pass",
            reason: e.to_string(),
        };
    }
    let mut head_bytes = Vec::with_capacity(512);
    write_upstream_head(&req, &uri, req_kind, &[], &[], &mut head_bytes);
    let (mut up, resp) =
        match send_upstream(client, &head_bytes, &pool_key(&uri), &mut body, w).await {
            Ok(x) => x,
            Err((error, close)) => {
                return Outcome::Failed {
                    error,
                    close,
                    op: "pass",
                }
            }
        };
    let status = cache_status(&resp);
    relay_and_release(client, &req, &mut up, resp, w, "pass", status).await
}

/// [`relay_response`], then returns the origin connection to the pool when it can carry
/// another request.
pub async fn relay_and_release<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    up: &mut UpstreamConn,
    resp: ResponseHead,
    w: &Worker,
    op: &'static str,
    cache_status: Option<String>,
) -> Outcome {
    // Never pool after HEAD: origins commonly send a body on HEAD responses anyway, and
    // if it arrives late (after the idle check in `take_idle`) it would be read as the
    // next request's response (RFC 9110 §9.3.2: no content follows a HEAD response).
    // HEAD is rare, so the cost is nil.
    let origin_keep_alive = resp.keep_alive() && req.method != "HEAD";
    let outcome = relay_response(client, req, up, resp, w, op, cache_status).await;
    if origin_keep_alive && matches!(outcome, Outcome::Done(_)) {
        w.upstream.release_ref(up);
    }
    outcome
}

/// Streams the origin's response to the client, re-framed for the client's version.
async fn relay_response<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    up: &mut UpstreamConn,
    resp: ResponseHead,
    w: &Worker,
    op: &'static str,
    cache_status: Option<String>,
) -> Outcome {
    let resp_kind = match resp.body_kind(&req.method) {
        Ok(k) => k,
        Err(e) => {
            return Outcome::Failed {
                error: UpstreamError::Protocol(e.to_string()).into(),
                close: false,
                op,
            }
        }
    };
    let mut headers = resp.headers.clone();
    headers.strip_hop_by_hop();
    if let Some(cs) = cache_status {
        headers.set("Cache-Status", cs);
    }
    let (writer, keep_alive) = write_response_head(
        client,
        req,
        resp.status,
        &resp.reason,
        headers,
        resp_kind,
        w,
    )
    .await;
    let keep_alive = match keep_alive {
        Ok(k) => k,
        Err(e) => {
            return Outcome::Aborted {
                status: resp.status,
                bytes: 0,
                op,
                reason: e.to_string(),
            }
        }
    };
    let mut reader = BodyReader::new(resp_kind);
    let mut bytes = 0u64;
    let mut budget = Budget::default();
    let mut buf = w.bufs.get();
    while !reader.is_done() {
        match reader.read(&mut up.conn, &mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                bytes += n as u64;
                budget.spend(n as u64).await;
            }
            Err(e) => {
                w.bufs.put(buf);
                return Outcome::Aborted {
                    status: resp.status,
                    bytes,
                    op,
                    reason: format!("origin body failed: {e}"),
                };
            }
        }
        let (res, b) = writer.write(&mut client.io, buf).await;
        buf = b;
        if let Err(e) = res {
            w.bufs.put(buf);
            return Outcome::Aborted {
                status: resp.status,
                bytes,
                op,
                reason: format!("client write failed: {e}"),
            };
        }
    }
    w.bufs.put(buf);
    if let Err(e) = writer.finish(&mut client.io).await {
        return Outcome::Aborted {
            status: resp.status,
            bytes,
            op,
            reason: format!("client write failed: {e}"),
        };
    }
    Outcome::Done(Exchange {
        status: resp.status,
        bytes,
        op,
        keep_alive,
    })
}

/// Serialises a response head toward the client into `out`, with framing for a body of
/// `kind` (RFC 9112 §6) and the connection fields (RFC 9112 §9.3); `headers` must already
/// be free of hop-by-hop fields. Returns the body writer and whether the connection stays
/// open.
pub fn build_response_head(
    req: &RequestHead,
    status: u16,
    reason: &str,
    mut headers: Headers,
    kind: BodyKind,
    w: &Worker,
    out: &mut Vec<u8>,
) -> (BodyWriter, bool) {
    let mut keep_alive = req.keep_alive() && !w.shutdown.is_triggered();
    let writer = match kind {
        BodyKind::None => BodyWriter::Empty,
        BodyKind::Length(n) => {
            headers.set("Content-Length", n.to_string());
            BodyWriter::Raw
        }
        BodyKind::Chunked | BodyKind::UntilClose => {
            headers.remove("content-length");
            if req.version == Version::Http11 {
                headers.set("Transfer-Encoding", "chunked");
                BodyWriter::Chunked
            } else {
                keep_alive = false; // RFC 9112 §6.3: the body ends when we close
                BodyWriter::Raw
            }
        }
    };
    if !keep_alive {
        headers.set("Connection", "close");
    } else if req.version == Version::Http10 {
        headers.set("Connection", "keep-alive");
    }
    let head = ResponseHead {
        version: Version::Http11,
        status,
        reason: reason.to_string(),
        headers,
    };
    head.write_to(out);
    (writer, keep_alive)
}

/// [`build_response_head`] and write it.
pub async fn write_response_head<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    status: u16,
    reason: &str,
    headers: Headers,
    kind: BodyKind,
    w: &Worker,
) -> (BodyWriter, std::io::Result<bool>) {
    let mut head = Vec::with_capacity(1024);
    let (writer, keep_alive) =
        build_response_head(req, status, reason, headers, kind, w, &mut head);
    match client.io.write_all(head).await.0 {
        Ok(_) => (writer, Ok(keep_alive)),
        Err(e) => (writer, Err(e)),
    }
}
