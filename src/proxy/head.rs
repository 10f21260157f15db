//! Response heads toward the client for a cached or filling representation: range
//! choice (RFC 9110 §14.2, If-Range §13.1.5) and head assembly (RFC 9112 §6, §9.3).

use super::forward::build_response_head;
use super::Worker;
use crate::cache::policy::Validators;
use crate::http::range::{self, if_range_matches, RangeAnswer};
use crate::http::{BodyKind, Headers, RequestHead};
use crate::stream::BodyWriter;

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
    w: &Worker,
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
    let (_, keep_alive) =
        build_response_head(req, status, "", headers, BodyKind::Length(count), w, out);
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
    w: &Worker,
    out: &mut Vec<u8>,
) -> (BodyWriter, Window) {
    match body_len {
        Some(len) => {
            let answer = range_of(req, &headers, Some(len));
            let win = cached_head(req, status, headers, len, answer, w, out);
            (BodyWriter::Raw, win)
        }
        None => {
            let (writer, keep_alive) =
                build_response_head(req, status, "", headers, BodyKind::Chunked, w, out);
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
