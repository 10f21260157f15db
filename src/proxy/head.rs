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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, Parsed};

    fn request(fields: &str) -> RequestHead {
        let raw = format!("GET http://o/x HTTP/1.1\r\nHost: o\r\n{fields}\r\n");
        match parse_request(raw.as_bytes()) {
            Ok(Parsed::Complete(h, _)) => h,
            other => panic!("{other:?}"),
        }
    }

    fn stored(fields: &[(&str, &str)]) -> Headers {
        let mut h = Headers::default();
        for (n, v) in fields {
            h.set(n, v.to_string());
        }
        h
    }

    /// One row per rule: (request fields, stored validators, length) → range answer.
    #[test]
    fn range_choice() {
        use RangeAnswer::{Full, Partial, Unsatisfiable};
        let etag = [
            ("ETag", "\"v1\""),
            ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ];
        #[rustfmt::skip]
        let rows: &[(&str, Option<u64>, RangeAnswer, &str)] = &[
            ("", Some(10), Full, "no Range: the whole body"),
            ("Range: bytes=2-4\r\n", Some(10), Partial { start: 2, end: 4 }, "RFC 9110 §14.2: a satisfiable range"),
            ("Range: bytes=5-\r\n", Some(10), Partial { start: 5, end: 9 }, "RFC 9110 §14.1.2: open-ended"),
            ("Range: bytes=-3\r\n", Some(10), Partial { start: 7, end: 9 }, "RFC 9110 §14.1.2: suffix"),
            ("Range: bytes=20-\r\n", Some(10), Unsatisfiable, "RFC 9110 §15.5.17: past the end"),
            ("Range: bytes=2-4\r\n", None, Full, "unknown length: the whole body"),
            ("Range: items=2-4\r\n", Some(10), Full, "RFC 9110 §14.2: an unknown unit is ignored"),
            ("Range: bytes=2-4\r\nIf-Range: \"v1\"\r\n", Some(10), Partial { start: 2, end: 4 }, "RFC 9110 §13.1.5: matching strong ETag"),
            ("Range: bytes=2-4\r\nIf-Range: \"v0\"\r\n", Some(10), Full, "RFC 9110 §13.1.5: another ETag: the whole body"),
            ("Range: bytes=2-4\r\nIf-Range: W/\"v1\"\r\n", Some(10), Full, "RFC 9110 §13.1.5: a weak tag never matches"),
            ("Range: bytes=2-4\r\nIf-Range: Mon, 01 Jan 2024 00:00:00 GMT\r\n", Some(10), Partial { start: 2, end: 4 }, "RFC 9110 §13.1.5: the exact Last-Modified"),
        ];
        for (fields, len, want, rule) in rows {
            assert_eq!(
                range_of(&request(fields), &stored(&etag), *len),
                *want,
                "{rule}"
            );
        }
    }

    fn head_of(
        version: &str,
        fields: &str,
        kind: BodyKind,
        keep: bool,
    ) -> (BodyWriter, bool, String) {
        let raw = format!("GET http://o/x HTTP/{version}\r\nHost: o\r\n{fields}\r\n");
        let req = match parse_request(raw.as_bytes()) {
            Ok(Parsed::Complete(h, _)) => h,
            other => panic!("{other:?}"),
        };
        let mut out = Vec::new();
        let keep = keep && req.keep_alive();
        let (writer, keep_alive) =
            build_response_head(&req, 200, "OK", Headers::default(), kind, keep, &mut out);
        (
            writer,
            keep_alive,
            String::from_utf8(out).unwrap().to_ascii_lowercase(),
        )
    }

    /// (client version, its fields, body framing, may keep alive) → (body writer,
    /// keep-alive, a line the head has, a line it must not have), and the rule.
    type HeadRow = (
        &'static str,
        &'static str,
        BodyKind,
        bool,
        BodyWriter,
        bool,
        &'static str,
        &'static str,
        &'static str,
    );

    /// One row per rule.
    #[test]
    fn response_head_assembly() {
        use BodyKind::{Chunked, Length, UntilClose};
        use BodyWriter::{Chunked as ChunkedW, Empty, Raw};
        #[rustfmt::skip]
        let rows: &[HeadRow] = &[
            ("1.1", "", Length(5), true, Raw, true, "content-length: 5\r\n", "connection:", "RFC 9112 §6.3: a known length"),
            ("1.1", "", Chunked, true, ChunkedW, true, "transfer-encoding: chunked\r\n", "content-length", "RFC 9112 §7.1: chunked to a 1.1 client"),
            ("1.1", "", UntilClose, true, ChunkedW, true, "transfer-encoding: chunked\r\n", "connection:", "a close-delimited origin body goes out chunked to 1.1"),
            ("1.0", "", Chunked, true, Raw, false, "connection: close\r\n", "transfer-encoding", "RFC 9112 §6.3: a 1.0 client: the body ends at close"),
            ("1.0", "Connection: keep-alive\r\n", Length(5), true, Raw, true, "connection: keep-alive\r\n", "transfer-encoding", "RFC 9112 §9.3: a 1.0 keep-alive is answered in kind"),
            ("1.1", "Connection: close\r\n", Length(5), true, Raw, false, "connection: close\r\n", "keep-alive", "RFC 9112 §9.6: the client closes"),
            ("1.1", "", Length(5), false, Raw, false, "connection: close\r\n", "keep-alive", "shutting down: close after this response"),
            ("1.1", "", BodyKind::None, true, Empty, true, "http/1.1 200 ok\r\n", "content-length", "no body: no framing"),
        ];
        for (version, fields, kind, keep, writer, keep_alive, has, lacks, rule) in rows {
            let (w, k, head) = head_of(version, fields, *kind, *keep);
            assert_eq!((w, k), (*writer, *keep_alive), "{rule}");
            assert!(head.contains(has), "{rule}: {head:?} lacks {has:?}");
            assert!(!head.contains(lacks), "{rule}: {head:?} has {lacks:?}");
        }
    }
}
