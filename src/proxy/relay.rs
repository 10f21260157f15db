//! Pass-through: forwarding one absolute-form request to its origin uncached (RFC 9110
//! §7.6 intermediaries), and relaying an origin's response to the client as it arrives,
//! re-framed for the client's version (RFC 9112 §6), pooling the origin connection after.
//! The dispatch's handler for what is not cached, and the cached flow's relays.

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::head::{answer_expect, write_response_head};
use super::{Exchange, Op, Outcome, Worker};
use crate::http::uri::Uri;
use crate::http::{RequestHead, ResponseHead};
use crate::stream::fair::Budget;
use crate::stream::{BodyReader, BufConn};
use crate::upstream::{pool_key, send_upstream, write_upstream_head};
use crate::upstream::{UpstreamConn, UpstreamError};

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
                op: Op::Reject,
            }
        }
    };
    let mut body = BodyReader::new(req_kind);
    if let Err(e) = answer_expect(client, &req, &body).await {
        return Outcome::aborted(100, 0, Op::Pass, e.to_string());
    }
    let mut head_bytes = Vec::with_capacity(512);
    write_upstream_head(&req, &uri, req_kind, &[], &[], &mut head_bytes);
    let (mut up, resp) =
        match send_upstream(client, &head_bytes, &pool_key(&uri), &mut body, w).await {
            Ok(x) => x,
            Err(f) => {
                return Outcome::Failed {
                    error: f.error.into(),
                    close: f.close_client,
                    op: Op::Pass,
                }
            }
        };
    let status = cache_status(&resp);
    relay_and_release(client, &req, &mut up, resp, w, Op::Pass, status).await
}

/// [`relay_response`], then returns the origin connection to the pool when it can carry
/// another request.
pub async fn relay_and_release<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    up: &mut UpstreamConn,
    resp: ResponseHead,
    w: &Worker,
    op: Op,
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
    op: Op,
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
        w.may_keep_alive(req),
    )
    .await;
    let keep_alive = match keep_alive {
        Ok(k) => k,
        Err(e) => return Outcome::aborted(resp.status, 0, op, e.to_string()),
    };
    let mut reader = BodyReader::new(resp_kind);
    let mut bytes = 0u64;
    let mut budget = Budget::default();
    let mut buf = w.bufs.lend();
    while !reader.is_done() {
        match reader.read(&mut up.conn, &mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                bytes += n as u64;
                budget.spend(n as u64).await;
            }
            Err(e) => {
                return Outcome::aborted(
                    resp.status,
                    bytes,
                    op,
                    format!("origin body failed: {e}"),
                );
            }
        }
        let (res, b) = writer.write(&mut client.io, buf.take()).await;
        buf.put_back(b);
        if let Err(e) = res {
            return Outcome::aborted(resp.status, bytes, op, format!("client write failed: {e}"));
        }
    }
    if let Err(e) = writer.finish(&mut client.io).await {
        return Outcome::aborted(resp.status, bytes, op, format!("client write failed: {e}"));
    }
    Outcome::Done(Exchange {
        status: resp.status,
        bytes,
        op,
        keep_alive,
    })
}
