use std::fmt::Debug;

use crate::http::head::{
    parse_request, parse_response, reason_phrase, BodyKind, HeadError, Headers, Parsed,
    RequestHead, ResponseHead, Version, MAX_HEADERS, MAX_HEAD_BYTES,
};

use super::Rng;

// Request and response heads (RFC 9112 §2–§6)

type HeadResult<T> = Result<Parsed<T>, HeadError>;

/// What the head checks need of a request or response head.
trait Head: Clone + PartialEq + Debug {
    fn parse(buf: &[u8]) -> HeadResult<Self>;
    fn headers(&self) -> &Headers;
    fn headers_mut(&mut self) -> &mut Headers;
    fn write(&self) -> Vec<u8>;
}

impl Head for RequestHead {
    fn parse(buf: &[u8]) -> HeadResult<Self> {
        parse_request(buf)
    }
    fn headers(&self) -> &Headers {
        &self.headers
    }
    fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }
    fn write(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl Head for ResponseHead {
    fn parse(buf: &[u8]) -> HeadResult<Self> {
        parse_response(buf)
    }
    fn headers(&self) -> &Headers {
        &self.headers
    }
    fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }
    fn write(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

/// `parse_request` on the bytes and on a copy padded to the 64 KiB limit:
/// * split-invariance: every prefix parses as `Partial` until the head is complete, then
///   as the same `Complete`; an input that fails gives `Partial` or that same error on
///   every prefix (the proxy re-parses its buffer as bytes arrive, so where TCP splits a
///   head must not change the outcome);
/// * limits: the head used is at most the input and [`MAX_HEAD_BYTES`], holds at most
///   [`MAX_HEADERS`] fields, and 431 errors happen only past those limits; padded to
///   within two bytes of the limit, a head parses with the padding field when it fits
///   and gets 431 when it does not;
/// * round trip: a complete head, serialised by `write_to` (also after
///   `strip_hop_by_hop`, as it is forwarded), parses back to the same head;
/// * framing (RFC 9112 §6.3): `body_kind` never accepts Transfer-Encoding together with
///   Content-Length, Length(n) only when every Content-Length says n, never UntilClose.
pub fn request_head(data: &[u8]) {
    if let Some(head) = check_head::<RequestHead>(data, |h| h.clone()) {
        check_request_framing(&head);
    }
}

/// `parse_response`, with the same split-invariance, limit and round-trip properties as
/// [`request_head`] (an empty reason phrase is written as the canonical one), and:
/// * framing (RFC 9112 §6.3) for GET, HEAD, POST and CONNECT: deterministic; never a body
///   after HEAD, 1xx, 204, 304; Length(n) only without Transfer-Encoding and when every
///   Content-Length says n; Chunked only for HTTP/1.1 with Transfer-Encoding;
/// * `keep_alive` only when the body's end is known and the framing is not doubtful
///   (never with both Transfer-Encoding and Content-Length).
pub fn response_head(data: &[u8]) {
    let written = |h: &ResponseHead| {
        let mut h = h.clone();
        if h.reason.is_empty() {
            h.reason = reason_phrase(h.status).to_string();
        }
        h
    };
    if let Some(head) = check_head::<ResponseHead>(data, written) {
        check_response_framing(&head);
    }
}

/// The checks common to both heads; returns the head when `data` holds a complete one.
/// `written` is what a head reads back as after `write_to`.
fn check_head<T: Head>(data: &[u8], written: fn(&T) -> T) -> Option<T> {
    let Ok(Parsed::Complete(head, len)) = check_splits::<T>(data, &[]) else {
        return None;
    };
    let expected = written(&head);
    check_reparse(&head.write(), &expected);
    let mut forwarded = expected.clone();
    forwarded.headers_mut().strip_hop_by_hop();
    check_stripped(head.headers(), forwarded.headers());
    check_reparse(&forwarded.write(), &forwarded);
    check_padded(data, &head, len);
    Some(head)
}

/// Parses `buf` whole and at cut points, checking limits and split-invariance; returns
/// the whole result.
fn check_splits<T: Head>(buf: &[u8], around: &[usize]) -> HeadResult<T> {
    let whole = T::parse(buf);
    check_head_limits(buf, &whole);
    let mut around = around.to_vec();
    if let Ok(Parsed::Complete(_, len)) = &whole {
        around.push(*len);
    }
    let mut rng = Rng::seeded(buf);
    let mut errored = false;
    for cut in cut_points(buf.len(), &around, &mut rng) {
        let got = T::parse(&buf[..cut]);
        check_head_limits(&buf[..cut], &got);
        match (&whole, &got) {
            (Ok(Parsed::Complete(_, len)), _) if cut >= *len => {
                assert_eq!(got, whole, "prefix of {cut} bytes, whole head is {len}")
            }
            (Ok(_), _) => assert_eq!(got, Ok(Parsed::Partial), "prefix of {cut} bytes"),
            (Err(_), Ok(Parsed::Partial)) => {
                assert!(!errored, "prefix of {cut} bytes is Partial after an error")
            }
            (Err(e), Err(got)) => {
                assert_eq!(got, e, "prefix of {cut} bytes");
                errored = true;
            }
            (Err(e), Ok(Parsed::Complete(..))) => {
                panic!("prefix of {cut} bytes is complete, the whole input fails: {e}")
            }
        }
    }
    whole
}

/// Where to cut an input of `n` bytes: everywhere when it is small, else both ends,
/// around `around` and the limit, and a few random places (in increasing order).
fn cut_points(n: usize, around: &[usize], rng: &mut Rng) -> Vec<usize> {
    if n <= 1024 {
        return (0..=n).collect();
    }
    let mut cuts: Vec<usize> = (0..=16).chain(n - 16..=n).collect();
    for &a in around.iter().chain(&[MAX_HEAD_BYTES]) {
        cuts.extend((a.saturating_sub(2)..=a + 2).map(|c| c.min(n)));
    }
    cuts.extend((0..16).map(|_| rng.below(n + 1)));
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

fn check_head_limits<T: Head>(buf: &[u8], got: &HeadResult<T>) {
    match got {
        Ok(Parsed::Complete(head, len)) => {
            assert!(*len <= buf.len(), "head of {len} bytes in {}", buf.len());
            assert!(*len <= MAX_HEAD_BYTES, "head of {len} bytes accepted");
            let fields = head.headers().fields.len();
            assert!(fields <= MAX_HEADERS, "{fields} fields accepted");
        }
        Ok(Parsed::Partial) => assert!(
            buf.len() <= MAX_HEAD_BYTES,
            "Partial after {} bytes without a head",
            buf.len()
        ),
        Err(HeadError::TooLarge) => assert!(buf.len() > MAX_HEAD_BYTES, "TooLarge"),
        Err(HeadError::TooManyHeaders) => {
            // The start line and MAX_HEADERS fields end before another field is seen.
            let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
            let lines = window.iter().filter(|&&b| b == b'\n').count();
            assert!(lines > MAX_HEADERS, "TooManyHeaders after {lines} lines");
        }
        Err(HeadError::Malformed(why) | HeadError::BadFraming(why)) => {
            assert!(!why.is_empty() && !why.contains('\n'), "reason {why:?}")
        }
    }
    if let Err(e) = got {
        // A one-line reason for the answer (RFC 6585 §5 → 431, RFC 9112 → 400).
        assert!(matches!(e.status(), 400 | 431), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

/// The serialisation `out` parses back to `head` (or is refused as too large).
fn check_reparse<T: Head>(out: &[u8], head: &T) {
    let again = T::parse(out);
    if out.len() <= MAX_HEAD_BYTES {
        assert_eq!(
            again,
            Ok(Parsed::Complete(head.clone(), out.len())),
            "re-parse of {:?}",
            String::from_utf8_lossy(out)
        );
    } else {
        assert_eq!(again, Err(HeadError::TooLarge));
    }
}

/// `strip_hop_by_hop` (RFC 9110 §7.6.1) keeps exactly the end-to-end fields, in order.
fn check_stripped(before: &Headers, after: &Headers) {
    let kept: Vec<_> = before
        .fields
        .iter()
        .filter(|(n, _)| !before.is_hop_by_hop(n))
        .collect();
    assert_eq!(after.fields.iter().collect::<Vec<_>>(), kept);
    for name in ["connection", "transfer-encoding", "te", "upgrade"] {
        assert!(!after.contains(name), "{name} forwarded");
    }
}

/// The same input with a field inserted before its first field, so that the head (of
/// `len` bytes) ends within two bytes of [`MAX_HEAD_BYTES`]: it parses as the same head
/// plus that field when it fits, and is refused with 431 when it does not.
fn check_padded<T: Head>(data: &[u8], head: &T, len: usize) {
    // The start line ends at the first CRLF after the empty lines a parser skips
    // (RFC 9112 §2.2).
    let mut start = 0;
    while let Some(rest) = data.get(start..) {
        match rest {
            [b'\r', b'\n', ..] => start += 2,
            [b'\n', ..] => start += 1,
            _ => break,
        }
    }
    let Some(line_end) = data[start..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| start + p + 2)
    else {
        return;
    };
    const NAME: &str = "X-Pad";
    let overhead = NAME.len() + b": \r\n".len();
    // Head length lands in MAX-2 ..= MAX+2.
    let target = MAX_HEAD_BYTES - 2 + data.len() % 5;
    let Some(fill) = target.checked_sub(len + overhead) else {
        return;
    };
    let mut padded = Vec::with_capacity(data.len() + overhead + fill);
    padded.extend_from_slice(&data[..line_end]);
    padded.extend_from_slice(NAME.as_bytes());
    padded.extend_from_slice(b": ");
    padded.resize(padded.len() + fill, b'a');
    padded.extend_from_slice(b"\r\n");
    padded.extend_from_slice(&data[line_end..]);
    let new_len = len + overhead + fill;
    let got = check_splits::<T>(&padded, &[new_len]);
    let mut expected = head.clone();
    let fields = &mut expected.headers_mut().fields;
    fields.insert(0, (NAME.to_string(), vec![b'a'; fill]));
    if fields.len() > MAX_HEADERS {
        assert!(
            matches!(got, Err(HeadError::TooManyHeaders | HeadError::TooLarge)),
            "{got:?}"
        );
    } else if new_len > MAX_HEAD_BYTES {
        assert_eq!(got, Err(HeadError::TooLarge), "head of {new_len} bytes");
    } else {
        assert_eq!(got, Ok(Parsed::Complete(expected, new_len)));
    }
}

/// Every element of every Content-Length field, as a number (None when not 1*DIGIT or
/// too big).
fn content_lengths(headers: &Headers) -> Vec<Option<u64>> {
    headers
        .get_all("content-length")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|item| {
            let item = item.trim_ascii();
            let digits = !item.is_empty() && item.iter().all(u8::is_ascii_digit);
            digits
                .then(|| std::str::from_utf8(item).ok()?.parse().ok())
                .flatten()
        })
        .collect()
}

fn check_request_framing(head: &RequestHead) {
    let te = head.headers.contains("transfer-encoding");
    let cl = head.headers.contains("content-length");
    let kind = head.body_kind();
    assert_eq!(kind, head.body_kind(), "deterministic");
    match &kind {
        Ok(BodyKind::None) => assert!(!te && !cl),
        Ok(BodyKind::Length(n)) => {
            assert!(!te, "Length with Transfer-Encoding");
            let all = content_lengths(&head.headers);
            assert!(
                !all.is_empty() && all.iter().all(|v| *v == Some(*n)),
                "{all:?}"
            );
        }
        Ok(BodyKind::Chunked) => assert!(te && !cl && head.version == Version::Http11),
        Ok(BodyKind::UntilClose) => panic!("a request body never runs until close"),
        Err(e) => assert!(matches!(e, HeadError::BadFraming(_)), "{e:?}"),
    }
    if head.keep_alive() {
        assert!(!head.headers.has_token("connection", "close"));
    }
}

fn check_response_framing(head: &ResponseHead) {
    let te = head.headers.contains("transfer-encoding");
    let cl = head.headers.contains("content-length");
    let no_body_status = (100..200).contains(&head.status) || matches!(head.status, 204 | 304);
    for method in ["GET", "HEAD", "POST", "CONNECT"] {
        let kind = head.body_kind(method);
        assert_eq!(kind, head.body_kind(method), "deterministic");
        let tunnel = method == "CONNECT" && (200..300).contains(&head.status);
        if no_body_status || method == "HEAD" || tunnel {
            assert!(
                matches!(kind, Ok(BodyKind::None) | Err(_)),
                "{method}: {kind:?}"
            );
        }
        match &kind {
            Ok(BodyKind::None) => assert!(no_body_status || method == "HEAD" || tunnel),
            Ok(BodyKind::Length(n)) => {
                assert!(!te, "{method}: Length with Transfer-Encoding");
                let all = content_lengths(&head.headers);
                assert!(all.iter().all(|v| *v == Some(*n)), "{all:?} vs {n}");
            }
            Ok(BodyKind::Chunked) => assert!(te && head.version == Version::Http11),
            // Either a final coding other than chunked, or no framing at all.
            Ok(BodyKind::UntilClose) => assert!(te || !cl),
            Err(e) => assert!(matches!(e, HeadError::BadFraming(_)), "{e:?}"),
        }
    }
    if head.keep_alive() {
        assert!(
            !(te && cl),
            "keep-alive with Transfer-Encoding and Content-Length"
        );
        assert!(!head.headers.has_token("connection", "close"));
        let kind = head.body_kind("GET");
        assert!(
            matches!(
                kind,
                Ok(BodyKind::None | BodyKind::Length(_) | BodyKind::Chunked)
            ),
            "keep-alive with {kind:?}"
        );
    }
}
