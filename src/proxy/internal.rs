//! chacha's own endpoints, reached with origin-form requests to its own address:
//! `GET /health`, `GET /metrics` (see [`crate::metrics`]; in cluster mode the dispatch
//! sends the KV protocol's requests to `kv.rs` first), `GET /direct-connect`
//! (`direct_connect.rs`); anything else gets 404, as a KV request without a cluster does
//! from the original.

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

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
        // Direct-connect's other end (cluster mode; 404 without a cluster).
        ("GET", crate::cluster::token::PATH) if !has_body => {
            super::direct_connect::handle(conn, head, w).await
        }
        // The Prometheus exposition, unless `metrics.addr` serves it elsewhere.
        ("GET", "/metrics") if crate::metrics::served_on_proxy_port() => {
            metrics(conn, keep_alive).await
        }
        _ => Outcome::Failed {
            error: ProxyError::NotFound,
            close: !keep_alive,
            op: Op::Internal,
        },
    }
}

/// `GET /metrics`: the text exposition format 0.0.4.
async fn metrics<S: AsyncWriteRent>(conn: &mut BufConn<S>, keep_alive: bool) -> Outcome {
    let body = crate::metrics::scrape();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n",
        crate::metrics::CONTENT_TYPE,
        body.len(),
        if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        }
    )
    .into_bytes();
    let bytes = body.len() as u64;
    out.extend_from_slice(body.as_bytes());
    match conn.io.write_all(out).await.0 {
        Ok(_) => Outcome::Done(Exchange {
            status: 200,
            bytes,
            op: Op::Internal,
            keep_alive,
        }),
        Err(e) => Outcome::aborted(200, 0, Op::Internal, e.to_string()),
    }
}
