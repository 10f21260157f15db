//! CONNECT with TLS interception (RFC 9110 §9.3.6): answer 200, terminate the client's
//! TLS with a leaf minted for the requested host, and run the decrypted requests through
//! the same request loop as plain ones, with scheme `https`. Hosts that
//! `tls-interceptor.intercept` does not match, and ports in
//! `tls-interceptor.passthrough-ports`, get a blind tunnel instead ([`super::tunnel`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

pub use super::target::{Target, ESTABLISHED};
use super::{request_loop, Channel, LoopEnd, Op, ProxyError, Worker};
use crate::config::TlsConfig;
use crate::http::uri::parse_authority;
use crate::http::RequestHead;
use crate::server::accesslog::{Detail, Line};
use crate::stream::{BufConn, Prefixed};
use crate::tls::{Ca, CertCache, Interceptor};

/// How long our TLS close_notify may take to go out before the tunnel is just dropped.
pub const CLOSE_NOTIFY_TIMEOUT: Duration = Duration::from_secs(1);

/// `tls-interceptor` as the workers use it: the leaf minting side and the ports whose
/// tunnels are intercepted. Shared by all cores.
pub struct Interception {
    pub interceptor: Interceptor,
    pub ports: Vec<u16>,
    /// `tls-interceptor.intercept`: hosts to intercept; `None` = every host.
    pub intercept: Option<regex::RegexSet>,
    /// `tls-interceptor.passthrough-ports`: always tunnelled blind.
    pub passthrough_ports: Vec<u16>,
}

impl Interception {
    /// Loads the `tls-interceptor` CA and builds the shared leaf cache and acceptor side.
    /// The error names the offending file.
    pub fn load(tls: &TlsConfig) -> Result<Interception, crate::tls::TlsError> {
        let ca = Ca::load(&tls.cert, &tls.key)?;
        Ok(Interception::with(
            Interceptor::new(Arc::new(CertCache::new(ca))),
            tls,
        ))
    }

    /// `tls-interceptor`'s choices (ports, what is intercepted, the SNI check) around an
    /// interceptor (a freshly loaded CA, or the one in force on a reload).
    pub fn with(interceptor: Interceptor, tls: &TlsConfig) -> Interception {
        Interception {
            interceptor: interceptor.allow_sni_mismatch(tls.allow_sni_mismatch),
            ports: tls.ports.clone(),
            // Each pattern compiled when the config was checked.
            intercept: tls.intercept.as_ref().map(|patterns| {
                regex::RegexSet::new(patterns).expect("patterns checked by the config loader")
            }),
            passthrough_ports: tls.passthrough_ports.clone(),
        }
    }

    /// Whether a CONNECT to `target` is tunnelled blind rather than intercepted: its
    /// port is a passthrough port, or `intercept` is given and matches no host.
    pub fn is_blind(&self, target: &Target) -> bool {
        self.passthrough_ports.contains(&target.port)
            || self
                .intercept
                .as_ref()
                .is_some_and(|set| !set.is_match(&target.host))
    }
}

/// The log line of a tunnel's CONNECT (`log-format`).
fn tunnel_line<'a>(peer: SocketAddr, line: &'a str, ms: u128, detail: Detail<'a>) -> Line<'a> {
    Line {
        client: peer,
        request: Some(line),
        status: 200,
        bytes: 0,
        duration_ms: ms,
        op: "tunnel",
        detail,
    }
}

/// Decides whether a CONNECT may open a tunnel: 405 without `tls-interceptor`, 406
/// for a port neither in `tls-interceptor.ports` (as the original does) nor in
/// `passthrough-ports`, 400 for a malformed authority (RFC 9112 §3.2.3; every spelling
/// of an IPv4 address is normalised by the parser, see [`parse_authority`]).
pub fn check(head: &RequestHead, w: &Worker) -> Result<Target, ProxyError> {
    let Some(icpt) = &w.interception else {
        return Err(ProxyError::MethodNotAllowed("CONNECT".into()));
    };
    let (host, port) =
        parse_authority(&head.target).map_err(|_| ProxyError::BadTarget(head.target.clone()))?;
    if !icpt.ports.contains(&port) && !icpt.passthrough_ports.contains(&port) {
        return Err(ProxyError::PortNotAllowed(port));
    }
    Ok(Target { host, port })
}

/// Opens the tunnel on `conn` (whose CONNECT head was consumed and accepted by
/// [`check`]), terminates TLS and serves the requests inside. Failures close the
/// tunnel; they are logged, never answered (there is no HTTP channel to answer on).
pub async fn tunnel<S: AsyncReadRent + AsyncWriteRent + std::os::fd::AsRawFd>(
    mut conn: BufConn<S>,
    target: Target,
    peer: SocketAddr,
    w: &Worker,
    line: &str,
    start: Instant,
) {
    let Some(icpt) = &w.interception else {
        return; // check() let it through only with an interceptor
    };
    if icpt.is_blind(&target) {
        return super::tunnel::blind(conn, target, peer, w, line, start).await;
    }
    // A target whose every address the destination policy refuses gets its 403 here,
    // before a leaf is minted (each request inside is checked again when it connects,
    // on the addresses it resolves then). A name that does not resolve now is left to
    // the requests inside, which answer 502 as before.
    if let Err(e @ crate::upstream::UpstreamError::Denied(_)) =
        w.upstream.resolve_allowed(&target.host, target.port).await
    {
        let error = ProxyError::Upstream(e);
        return super::tunnel::refuse(&mut conn, error, Op::Reject, peer, line, start).await;
    }
    if let Err(e) = conn.io.write_all(ESTABLISHED.to_vec()).await.0 {
        let why = format!("client gone: {e}");
        let ms = start.elapsed().as_millis();
        tunnel_line(peer, line, ms, Detail::Error(&why)).log(log::Level::Info);
        return;
    }
    // Bytes the client sent right behind the CONNECT head (an eager ClientHello) are in
    // the read buffer: the acceptor reads them first.
    let (io, early) = conn.into_parts();
    let (acceptor, sni_mismatch) = icpt.interceptor.acceptor_checked(&target.host);
    // Bounded like a request head: a client that never completes the handshake cannot
    // hold the connection open.
    let handshake = monoio::time::timeout(
        w.timeouts.client_head,
        acceptor.accept(Prefixed::new(io, early)),
    )
    .await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            crate::metrics::tls_handshake_failure(crate::metrics::HandshakeFailure::Error);
            let ms = start.elapsed().as_millis();
            match sni_mismatch.get() {
                // Refused by the leaf resolver (see crate::tls::server).
                Some(sni) => {
                    let why = format!(
                        "TLS SNI {sni:?} does not match the CONNECT host {:?} (tls-interceptor.allow-sni-mismatch: true allows it)",
                        target.host
                    );
                    tunnel_line(peer, line, ms, Detail::Closed(&why)).log(log::Level::Warn);
                }
                None => {
                    let why = format!(
                        "client TLS handshake failed: {}",
                        crate::tls::handshake_error_reason(e)
                    );
                    tunnel_line(peer, line, ms, Detail::Closed(&why)).log(log::Level::Info);
                }
            }
            return;
        }
        Err(_) => {
            crate::metrics::tls_handshake_failure(crate::metrics::HandshakeFailure::Timeout);
            let why = format!("no TLS handshake within {:?}", w.timeouts.client_head);
            let ms = start.elapsed().as_millis();
            tunnel_line(peer, line, ms, Detail::Closed(&why)).log(log::Level::Info);
            return;
        }
    };
    let ms = start.elapsed().as_millis();
    tunnel_line(peer, line, ms, Detail::Established).log(log::Level::Debug);
    let mut conn = BufConn::new(tls);
    let end = request_loop(&mut conn, peer, w, Channel::Tunnel(&target)).await;
    if matches!(end, LoopEnd::Closed { clean: true }) {
        // close_notify (RFC 8446 §6.1) only after complete responses: after an aborted
        // one it would make a close-delimited body look complete.
        let _ = monoio::time::timeout(CLOSE_NOTIFY_TIMEOUT, conn.io.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16) -> Target {
        Target {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn authority_omits_default_port() {
        assert_eq!(t("example.com", 443).authority(), "example.com");
        assert_eq!(t("example.com", 8443).authority(), "example.com:8443");
        assert_eq!(t("::1", 443).authority(), "[::1]");
        assert_eq!(t("::1", 8443).authority(), "[::1]:8443");
    }

    #[test]
    fn origin_form_becomes_https_url() {
        let uri = t("example.com", 443).uri_for("/a/b?x=1#frag").unwrap();
        assert_eq!(uri.to_url_string(), "https://example.com/a/b?x=1");
        let uri = t("127.0.0.1", 8443).uri_for("/").unwrap();
        assert_eq!(uri.to_url_string(), "https://127.0.0.1:8443/");
        assert_eq!(uri.port_or_default(), 8443);
    }

    #[test]
    fn origin_form_cannot_change_the_host() {
        // The authority ends at the first '/', so this is a path on example.com.
        let uri = t("example.com", 443).uri_for("//evil.com/x").unwrap();
        assert_eq!(uri.host, "example.com");
        assert_eq!(uri.path_and_query, "//evil.com/x");
    }

    #[test]
    fn absolute_form_must_name_the_tunnel_origin() {
        let tun = t("example.com", 443);
        let uri = tun.uri_for("https://EXAMPLE.com:443/p").unwrap();
        assert_eq!(uri.to_url_string(), "https://example.com/p");
        for bad in [
            "https://other.com/p",
            "http://example.com/p",
            "https://example.com:8443/p",
            "*",
            "example.com:443",
        ] {
            assert!(
                matches!(tun.uri_for(bad), Err(ProxyError::BadTarget(_))),
                "{bad}"
            );
        }
    }
}
