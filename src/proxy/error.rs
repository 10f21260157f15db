//! Every way a proxied exchange can fail, mapped to a status in one place.

use std::fmt;

use crate::http::HeadError;
use crate::upstream::{ExchangeError, UpstreamError};

#[derive(Debug)]
pub enum ProxyError {
    /// The client's request head or framing is unacceptable (400/431).
    BadRequest(HeadError),
    /// The request target cannot be proxied (400).
    BadTarget(String),
    /// The request already went through this chacha (its Via names us): 508.
    LoopDetected,
    /// A method chacha does not handle here (405).
    MethodNotAllowed(String),
    /// CONNECT to a port that is not intercepted (406, as the original answers).
    PortNotAllowed(u16),
    /// No internal endpoint at this path (404).
    NotFound,
    Upstream(UpstreamError),
    /// The client closed or failed while we were reading its request body.
    ClientIo(std::io::Error),
    /// The client's request body stalled for `timeouts.client-body` (408).
    ClientBodyTimeout(std::time::Duration),
    /// chacha lacks a resource for the request right now, e.g. descriptors (503).
    Unavailable(String),
    /// `GET /direct-connect` refused: 401 (token), 404 (no entry), 410 (entry replaced).
    DirectConnect(u16, String),
}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadRequest(e) => e.status(),
            ProxyError::BadTarget(_) => 400,
            ProxyError::MethodNotAllowed(_) => 405,
            ProxyError::LoopDetected => 508,
            ProxyError::PortNotAllowed(_) => 406,
            ProxyError::NotFound => 404,
            ProxyError::Upstream(UpstreamError::Denied(_)) => 403,
            ProxyError::Upstream(UpstreamError::HeadTimeout(_))
            | ProxyError::Upstream(UpstreamError::ConnectTimeout(_)) => 504,
            ProxyError::Upstream(_) => 502,
            ProxyError::ClientIo(_) => 400,
            ProxyError::ClientBodyTimeout(_) => 408,
            ProxyError::Unavailable(_) => 503,
            ProxyError::DirectConnect(status, _) => *status,
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::BadRequest(e) => write!(f, "{e}"),
            ProxyError::BadTarget(t) => write!(f, "cannot proxy request target: {t}"),
            ProxyError::MethodNotAllowed(m) => write!(f, "method {m} is not allowed here"),
            ProxyError::PortNotAllowed(p) => write!(
                f,
                "CONNECT to port {p} is not allowed (see tls-interceptor.ports)"
            ),
            ProxyError::NotFound => write!(f, "not found"),
            ProxyError::LoopDetected => write!(
                f,
                "request loop: this request already passed through this proxy"
            ),
            ProxyError::Upstream(e) => write!(f, "{e}"),
            ProxyError::ClientIo(e) => write!(f, "reading the request body failed: {e}"),
            ProxyError::ClientBodyTimeout(d) => {
                write!(f, "request body: no bytes received for {d:?}")
            }
            ProxyError::Unavailable(why) => f.write_str(why),
            ProxyError::DirectConnect(_, reason) => f.write_str(reason),
        }
    }
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        ProxyError::Upstream(e)
    }
}

impl From<HeadError> for ProxyError {
    fn from(e: HeadError) -> Self {
        ProxyError::BadRequest(e)
    }
}

impl From<ExchangeError> for ProxyError {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::Upstream(e) => ProxyError::Upstream(e),
            ExchangeError::Client(e) => ProxyError::ClientIo(e),
            ExchangeError::ClientBodyTimeout(d) => ProxyError::ClientBodyTimeout(d),
        }
    }
}
