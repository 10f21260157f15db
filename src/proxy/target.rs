//! A CONNECT's target, and the answer that opens its tunnel (intercepted or blind).

use super::ProxyError;
use crate::http::uri::{parse_absolute, Scheme, Uri};

/// The answer that opens a tunnel (RFC 9110 §9.3.6: any 2xx; this is the customary one).
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// The origin a tunnel leads to: the CONNECT target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Lower-case name, or an IP literal without brackets.
    pub host: String,
    pub port: u16,
}

impl Target {
    /// `host[:port]` as it appears in `https://` URLs: the port only when it is not
    /// the https default (RFC 9110 §4.2.2), IPv6 literals bracketed.
    pub fn authority(&self) -> String {
        Uri {
            scheme: Scheme::Https,
            host: self.host.clone(),
            port: (self.port != Scheme::Https.default_port()).then_some(self.port),
            path_and_query: String::new(),
        }
        .authority()
    }

    /// The URL a request inside the tunnel names. Origin form (`/path?q`, the usual
    /// case, RFC 9112 §3.2.1) is resolved against the tunnel's origin; absolute form
    /// (which servers must accept, RFC 9112 §3.2.2) must name that same origin, so a
    /// tunnel can never be used to reach another host.
    pub fn uri_for(&self, target: &str) -> Result<Uri, ProxyError> {
        let bad = || ProxyError::BadTarget(target.to_string());
        if target.starts_with('/') {
            return parse_absolute(&format!("https://{}{target}", self.authority()))
                .map_err(|_| bad());
        }
        let uri = parse_absolute(target).map_err(|_| bad())?;
        if uri.scheme == Scheme::Https
            && uri.host == self.host
            && uri.port_or_default() == self.port
        {
            // Normalise to the tunnel's spelling so rules and cache keys agree.
            return Ok(Uri {
                port: (self.port != Scheme::Https.default_port()).then_some(self.port),
                ..uri
            });
        }
        Err(bad())
    }
}
