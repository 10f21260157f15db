//! One request/response exchange with an origin or a peer: the request head (and body)
//! written on a pooled connection, one retry when a reused connection turns out stale,
//! and the final response head read within a deadline ([`super::head`]'s 1xx rules).

use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

use super::{read_final_head, PoolKey, UpStream, Upstream, UpstreamConn, UpstreamError};
use crate::config::Timeouts;
use crate::http::ResponseHead;
use crate::stream::{BodyReader, BodyWriter, BufConn, BufPool};

/// What an exchange needs from the core it runs on: the connection pool, the transfer
/// buffers and the timeouts. Implemented by the proxy's worker; generic (no `dyn`), so
/// nothing is added per request.
pub trait Client {
    fn pool(&self) -> &Upstream;
    fn bufs(&self) -> &BufPool;
    fn timeouts(&self) -> &Timeouts;
}

/// Why an exchange failed, from the client's point of view: the origin's side, or the
/// client's own request body.
#[derive(Debug)]
pub enum ExchangeError {
    Upstream(UpstreamError),
    /// Reading the client's request body failed.
    Client(std::io::Error),
    /// The client sent no body byte within `timeouts.client-body`.
    ClientBodyTimeout(std::time::Duration),
}

/// A failed [`send_upstream`]: the error, and whether the client connection must close
/// (its request body was not read to the end, or it failed).
#[derive(Debug)]
pub struct SendFailure {
    pub error: ExchangeError,
    pub close_client: bool,
}

impl SendFailure {
    fn upstream(e: UpstreamError, body: &BodyReader) -> Self {
        SendFailure {
            error: ExchangeError::Upstream(e),
            close_client: !body.is_done(),
        }
    }
}

/// Reads a final response head from the origin within `timeouts.upstream-head`
/// (interim responses per [`crate::upstream::head::check_interim`]). `received` tells
/// whether any byte arrived (a reused connection that closes before any byte is retried
/// by the caller).
pub async fn read_response_head(
    up: &mut BufConn<UpStream>,
    x: &impl Client,
    received: &mut bool,
) -> Result<ResponseHead, UpstreamError> {
    let limit = x.timeouts().upstream_head;
    read_final_head(up, Instant::now() + limit, limit, received).await
}

/// Why [`send_request`] failed.
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
    x: &impl Client,
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
        let mut buf = x.bufs().lend();
        loop {
            // An idle bound on the client's body, so that a client that stops sending
            // does not hold its connection and the origin's forever. On expiry the
            // dropped read may have lost bytes: both connections are closed anyway.
            match monoio::time::timeout(x.timeouts().client_body, body.read(client, &mut buf)).await
            {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(SendError::Client(e));
                }
                Err(_) => {
                    return Err(SendError::ClientTimeout);
                }
            }
            let (res, b) = body_writer.write(&mut up.conn.io, buf.take()).await;
            buf.put_back(b);
            if let Err(e) = res {
                return Err(SendError::Upstream(UpstreamError::Closed(e.to_string())));
            }
        }
        if let Err(e) = body_writer.finish(&mut up.conn.io).await {
            return Err(SendError::Upstream(UpstreamError::Closed(e.to_string())));
        }
    }
    let mut received = false;
    read_response_head(&mut up.conn, x, &mut received)
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
/// turns out stale) and reads the final response head.
pub async fn send_upstream<C: AsyncReadRent>(
    client: &mut BufConn<C>,
    head_bytes: &[u8],
    key: &PoolKey,
    body: &mut BodyReader,
    x: &impl Client,
) -> Result<(UpstreamConn, ResponseHead), SendFailure> {
    loop {
        let mut up = match x.pool().take_idle(key) {
            Some(c) => c,
            None => match x.pool().connect_new(key).await {
                Ok(c) => c,
                Err(e) => {
                    crate::metrics::upstream_error(e.metric_kind());
                    return Err(SendFailure::upstream(e, body));
                }
            },
        };
        up.conn.io.set_origin();
        match send_request(&mut up, head_bytes, client, body, x).await {
            Ok(resp) => {
                crate::metrics::origin_response(resp.status);
                return Ok((up, resp));
            }
            Err(SendError::Stale(e)) => {
                log::debug!(
                    "pooled connection to {}:{} was stale ({e}); retrying",
                    key.host,
                    key.port
                );
            }
            Err(SendError::Upstream(e)) => {
                crate::metrics::upstream_error(e.metric_kind());
                return Err(SendFailure::upstream(e, body));
            }
            Err(SendError::Client(e)) => {
                return Err(SendFailure {
                    error: ExchangeError::Client(e),
                    close_client: true,
                })
            }
            // 408 and close (RFC 9110 §15.5.9); `up` is dropped here, which closes the
            // origin connection mid-body so the origin never takes a partial request.
            Err(SendError::ClientTimeout) => {
                return Err(SendFailure {
                    error: ExchangeError::ClientBodyTimeout(x.timeouts().client_body),
                    close_client: true,
                })
            }
        }
    }
}

/// Sends a bodiless request on a pooled connection to `key` (retrying once per stale
/// pooled connection: a write failure or a close before any response byte) and reads the
/// final response head before `deadline`. The KV client's exchange with a peer.
pub async fn exchange_bodiless(
    pool: &Upstream,
    key: &PoolKey,
    head: &[u8],
    deadline: Instant,
) -> Result<(UpstreamConn, ResponseHead), UpstreamError> {
    loop {
        let mut up = match pool.take_idle(key) {
            Some(c) => c,
            None => pool.connect_new(key).await?,
        };
        let reused = up.reused;
        if let Err(e) = up.conn.io.write_all(head.to_vec()).await.0 {
            if reused {
                continue;
            }
            return Err(UpstreamError::Closed(e.to_string()));
        }
        let mut received = false;
        match read_head_by(&mut up.conn, deadline, &mut received).await {
            Ok(resp) => return Ok((up, resp)),
            Err(UpstreamError::Closed(_)) if reused && !received => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads a final response head before `deadline` (same interim rules as
/// [`read_response_head`]).
pub async fn read_head_by(
    up: &mut BufConn<UpStream>,
    deadline: Instant,
    received: &mut bool,
) -> Result<ResponseHead, UpstreamError> {
    let limit = deadline.saturating_duration_since(Instant::now());
    read_final_head(up, deadline, limit, received).await
}
