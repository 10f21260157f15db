//! Response heads toward the client for a cached or filling representation: range
//! choice (RFC 9110 §14.2, If-Range §13.1.5) and head assembly (RFC 9112 §6, §9.3).

use crate::cache::policy::Validators;
use crate::http::range::{self, if_range_matches, RangeAnswer};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};

use crate::http::{BodyKind, Headers, RequestHead, ResponseHead, Version};
use crate::stream::{BodyReader, BodyWriter, BufConn};

/// Which part of a body of `len` bytes (when known) the client asked for, honouring
/// `If-Range` (RFC 9110 §13.1.5, §14.2).
pub(crate) fn range_of(req: &RequestHead, headers: &Headers, len: Option<u64>) -> RangeAnswer {
    let (Some(len), Some(range)) = (len, req.headers.get_str("range")) else {
        return RangeAnswer::Full;
    };
    if let Some(if_range) = req.headers.get_str("if-range") {
        let v = Validators::from_headers(headers);
        if !if_range_matches(if_range, v.etag.as_deref(), v.last_modified.as_deref()) {
            return RangeAnswer::Full;
        }
    }
    range::evaluate(Some(range), len)
}

/// The part of the body a response carries: `count` bytes from `start`.
pub(crate) struct Window {
    pub status: u16,
    pub start: u64,
    pub count: u64,
    pub keep_alive: bool,
}

/// Serialises the head of a response with a stored body of `len` bytes, for the range
/// answer: 200 whole, 206 with Content-Range, or 416 with `bytes */len` (RFC 9110 §14.4,
/// §15.3.7, §15.5.17).
pub(crate) fn cached_head(
    req: &RequestHead,
    status: u16,
    mut headers: Headers,
    len: u64,
    answer: RangeAnswer,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> Window {
    headers.set("Accept-Ranges", "bytes");
    let (status, start, count) = match answer {
        RangeAnswer::Full => (status, 0, len),
        RangeAnswer::Partial { start, end } => {
            headers.set("Content-Range", range::content_range(start, end, len));
            (206, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            headers.set("Content-Range", range::unsatisfied_range(len));
            (416, 0, 0)
        }
    };
    let (_, keep_alive) = build_response_head(
        req,
        status,
        "",
        headers,
        BodyKind::Length(count),
        keep_alive,
        out,
    );
    Window {
        status,
        start,
        count,
        keep_alive,
    }
}

/// The head of a response whose body is stored (or being stored): ranged when its length
/// is known, chunked otherwise (then the whole body).
pub(crate) fn stored_head(
    req: &RequestHead,
    status: u16,
    headers: Headers,
    body_len: Option<u64>,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> (BodyWriter, Window) {
    match body_len {
        Some(len) => {
            let answer = range_of(req, &headers, Some(len));
            let win = cached_head(req, status, headers, len, answer, keep_alive, out);
            (BodyWriter::Raw, win)
        }
        None => {
            let (writer, keep_alive) =
                build_response_head(req, status, "", headers, BodyKind::Chunked, keep_alive, out);
            let win = Window {
                status,
                start: 0,
                count: u64::MAX,
                keep_alive,
            };
            (writer, win)
        }
    }
}

/// Serialises a response head toward the client into `out`, with framing for a body of
/// `kind` (RFC 9112 §6) and the connection fields (RFC 9112 §9.3); `headers` must already
/// be free of hop-by-hop fields. `keep_alive` is whether the connection may stay open
/// ([`super::Worker::may_keep_alive`]); the framing may still close it. Returns the body
/// writer and whether the connection stays open.
pub fn build_response_head(
    req: &RequestHead,
    status: u16,
    reason: &str,
    mut headers: Headers,
    kind: BodyKind,
    mut keep_alive: bool,
    out: &mut Vec<u8>,
) -> (BodyWriter, bool) {
    let writer = match kind {
        BodyKind::None => BodyWriter::Empty,
        BodyKind::Length(n) => {
            headers.set("Content-Length", n.to_string());
            BodyWriter::Raw
        }
        BodyKind::Chunked | BodyKind::UntilClose => {
            headers.remove("content-length");
            if req.version == Version::Http11 {
                headers.set("Transfer-Encoding", "chunked");
                BodyWriter::Chunked
            } else {
                keep_alive = false; // RFC 9112 §6.3: the body ends when we close
                BodyWriter::Raw
            }
        }
    };
    if !keep_alive {
        headers.set("Connection", "close");
    } else if req.version == Version::Http10 {
        headers.set("Connection", "keep-alive");
    }
    let head = ResponseHead {
        version: Version::Http11,
        status,
        reason: reason.to_string(),
        headers,
    };
    head.write_to(out);
    (writer, keep_alive)
}

/// [`build_response_head`] and write it.
pub async fn write_response_head<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    status: u16,
    reason: &str,
    headers: Headers,
    kind: BodyKind,
    keep_alive: bool,
) -> (BodyWriter, std::io::Result<bool>) {
    let mut head = Vec::with_capacity(1024);
    let (writer, keep_alive) =
        build_response_head(req, status, reason, headers, kind, keep_alive, &mut head);
    match client.io.write_all(head).await.0 {
        Ok(_) => (writer, Ok(keep_alive)),
        Err(e) => (writer, Err(e)),
    }
}

/// Answers `Expect: 100-continue` ourselves (RFC 9110 §10.1.1) so that the body arrives.
pub async fn answer_expect<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    body: &BodyReader,
) -> std::io::Result<()> {
    if req.headers.has_token("expect", "100-continue")
        && !body.is_done()
        && req.version == Version::Http11
    {
        client
            .io
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
            .await
            .0?;
    }
    Ok(())
}
