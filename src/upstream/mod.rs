//! The HTTP/1.1 client toward origins and peers: request heads ([`request`]), the
//! exchange with retry on a stale pooled connection ([`exchange`]), one response-head
//! reader with a deadline and one set of 1xx rules ([`head`]), DNS off the core thread,
//! a per-core pool of idle keep-alive connections, connect timeouts.

pub mod dns;
pub mod exchange;
pub mod head;
pub mod pool;
pub mod request;
pub mod stream;

use std::fmt;
use std::time::Duration;

pub use exchange::{send_upstream, Client, ExchangeError, SendFailure};
pub use head::read_final_head;
pub use pool::{PoolKey, Upstream, UpstreamConn};
pub use request::{pool_key, write_upstream_head};
pub use stream::UpStream;

/// Why talking to an origin failed; mapped to a status in `proxy::error`.
#[derive(Debug)]
pub enum UpstreamError {
    Resolve(String),
    Connect(String),
    ConnectTimeout(Duration),
    HeadTimeout(Duration),
    /// The origin closed or reset the connection before a complete response head.
    Closed(String),
    /// The origin sent something that is not HTTP/1.x.
    Protocol(String),
    Tls(String),
    /// The destination policy refuses every address of the origin (403); nothing was
    /// connected to. The text names the rule and how to allow it.
    Denied(String),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Resolve(e) => write!(f, "cannot resolve origin: {e}"),
            UpstreamError::Connect(e) => write!(f, "cannot connect to origin: {e}"),
            UpstreamError::ConnectTimeout(d) => {
                write!(f, "connecting to origin timed out after {d:?}")
            }
            UpstreamError::HeadTimeout(d) => write!(f, "origin sent no response head within {d:?}"),
            UpstreamError::Closed(e) => {
                write!(f, "origin closed the connection before a response: {e}")
            }
            UpstreamError::Protocol(e) => write!(f, "origin sent an invalid response: {e}"),
            UpstreamError::Tls(e) => write!(f, "TLS with origin failed: {e}"),
            UpstreamError::Denied(e) => f.write_str(e),
        }
    }
}
