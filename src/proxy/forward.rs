//! Forwarding one absolute-form request to its origin and relaying the response
//! (RFC 9110 §7.6 intermediaries, RFC 9112 framing).

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::head::answer_expect;
use super::relay::relay_and_release;
use super::{Op, Outcome, Worker};
use crate::http::uri::Uri;
use crate::http::{RequestHead, ResponseHead};
use crate::stream::{BodyReader, BufConn};
use crate::upstream::{pool_key, send_upstream, write_upstream_head};

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
        return Outcome::Aborted {
            status: 100,
            bytes: 0,
            op: Op::Pass,
            reason: e.to_string(),
        };
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
