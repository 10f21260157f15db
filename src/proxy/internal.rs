//! chacha's own endpoints, reached with origin-form requests to its own address:
//! `GET /health` (in cluster mode the dispatch sends the KV protocol's requests to
//! `kv.rs` first); anything else gets 404, as a KV request without a cluster does from
//! the original.

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::{write_simple, Exchange, Framing, Op, Outcome, ProxyError, Worker};
use crate::http::{BodyKind, RequestHead};
use crate::stream::BufConn;

pub async fn handle<S: AsyncReadRent + AsyncWriteRent>(
    conn: &mut BufConn<S>,
    head: RequestHead,
    w: &Worker,
) -> Outcome {
    // Internal endpoints take no body; one we would have to skip closes the connection.
    let has_body = !matches!(
        head.body_kind(),
        Ok(BodyKind::None) | Ok(BodyKind::Length(0))
    );
    let keep_alive = head.keep_alive() && !has_body && !w.shutdown.is_triggered();
    let path = head.target.split('?').next().unwrap_or("");
    match (head.method.as_str(), path) {
        ("GET", "/health") => {
            match write_simple(&mut conn.io, 200, "OK", Framing::close_if(!keep_alive), &[]).await {
                Ok(bytes) => Outcome::Done(Exchange {
                    status: 200,
                    bytes,
                    op: Op::Internal,
                    keep_alive,
                }),
                Err(e) => Outcome::Aborted {
                    status: 200,
                    bytes: 0,
                    op: Op::Internal,
                    reason: e.to_string(),
                },
            }
        }
        _ => Outcome::Failed {
            error: ProxyError::NotFound,
            close: !keep_alive,
            op: Op::Internal,
        },
    }
}
