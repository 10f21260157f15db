//! Writing a request head toward an origin (RFC 9110 §7.6 intermediaries, RFC 9112 §3).

use std::io::Write as _;

use super::PoolKey;
use crate::http::uri::{Scheme, Uri};
use crate::http::{BodyKind, RequestHead};

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
    let _ = write!(out, "{}", uri.authority_fmt());
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

/// The pool key of the origin named by `uri`.
pub fn pool_key(uri: &Uri) -> PoolKey {
    PoolKey {
        tls: uri.scheme == Scheme::Https,
        host: uri.host.clone(),
        port: uri.port_or_default(),
        peer: false,
    }
}
