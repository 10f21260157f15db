//! Property checks for the fuzz targets (`fuzz/fuzz_targets/*.rs`, run with
//! `cargo +nightly fuzz run TARGET`) and for the replay of their corpora on the stable
//! toolchain (`tests/fuzz_corpus.rs`). Each check takes arbitrary bytes and panics when a
//! property fails, so libFuzzer saves the input as a crash and the replay test fails on it.
//! The checks assert properties (split-invariance, round trips, bounds), not only "no
//! panic". Not used by the proxy itself.

use std::fmt::Debug;
use std::time::Duration;

use crate::cache::meta::EntryMeta;
use crate::cluster::base64;
use crate::cluster::metadata::Metadata;
use crate::config::{self as loader, Config, ConfigError};
use crate::http::chunked::{
    write_chunk_header, ChunkError, ChunkedDecoder, CHUNK_TRAILER_CRLF, LAST_CHUNK,
    MAX_CHUNK_SIZE_LINE, MAX_TRAILER_BYTES,
};
use crate::http::head::{
    parse_request, parse_response, reason_phrase, BodyKind, HeadError, Headers, Parsed,
    RequestHead, ResponseHead, Version, MAX_HEADERS, MAX_HEAD_BYTES,
};
use crate::http::range::{self as ranges, RangeAnswer};

/// A property check: panics when `data` breaks a property.
pub type Check = fn(&[u8]);

/// Every fuzz target: its name (the file `fuzz/fuzz_targets/NAME.rs` and the corpus
/// directory `fuzz/corpus/NAME/`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("request_head", request_head),
    ("response_head", response_head),
    ("chunked", chunked),
    ("range", range),
    ("kv_metadata", kv_metadata),
    ("config", config),
];

/// A small deterministic generator (splitmix64) seeded from the input, so a check does
/// the same thing each time it sees the same bytes (libFuzzer needs reproducible runs).
struct Rng(u64);

impl Rng {
    fn seeded(data: &[u8]) -> Rng {
        // FNV-1a.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------
// Request and response heads (RFC 9112 §2–§6)
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Chunked transfer coding (RFC 9112 §7.1)
// ---------------------------------------------------------------------------------------

/// What decoding an input produced.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    data: Vec<u8>,
    /// Bytes of input used; 0 after an error.
    consumed: usize,
    done: bool,
    error: Option<ChunkError>,
}

/// Feeds `input` to a decoder in pieces of the sizes `piece()` returns, keeping unused
/// bytes for the next call, as the proxy's body reader does.
fn decode_in_pieces(input: &[u8], mut piece: impl FnMut() -> usize) -> Decoded {
    let mut decoder = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut consumed = 0;
    let mut end: usize = 0;
    loop {
        end = end.saturating_add(piece().max(1)).min(input.len());
        match decoder.decode(&input[consumed..end], &mut data) {
            Ok(n) => consumed += n,
            Err(e) => {
                return Decoded {
                    data,
                    consumed: 0,
                    done: false,
                    error: Some(e),
                }
            }
        }
        if decoder.is_done() || end == input.len() {
            return Decoded {
                data,
                consumed,
                done: decoder.is_done(),
                error: None,
            };
        }
    }
}

/// The chunked decoder:
/// * split-invariance: fed whole, byte by byte or in random pieces, it yields the same
///   data, the same end (bytes used, done) or the same error;
/// * bounds: data ≤ bytes used ≤ input; it stops exactly after the final CRLF; at most
///   one chunk-size line (plus a CRLF) of framing between two runs of data, and the
///   trailer section bounded too, whatever the input;
/// * round trip: the decoded data, re-encoded in random chunks with extensions and a
///   trailer, decodes to the same data and ends exactly at the end.
pub fn chunked(data: &[u8]) {
    check_chunked(data, true);
    // The same input with its first chunk-size line padded (with an extension) to within
    // a byte of MAX_CHUNK_SIZE_LINE, so the line-length limit is exercised.
    if let Some(cr) = data.iter().take(64).position(|&b| b == b'\r') {
        let target = MAX_CHUNK_SIZE_LINE - 1 + data.len() % 3;
        // The line is cr + ";" + fill + "\r\n" bytes long.
        if let Some(fill) = target.checked_sub(cr + 3) {
            let mut padded = data[..cr].to_vec();
            padded.push(b';');
            padded.resize(cr + 1 + fill, b'x');
            padded.extend_from_slice(&data[cr..]);
            check_chunked(&padded, false);
        }
    }
}

fn check_chunked(input: &[u8], bytewise: bool) {
    let whole = decode_in_pieces(input, || usize::MAX);
    assert!(whole.data.len() <= input.len());
    if whole.error.is_none() {
        assert!(whole.data.len() <= whole.consumed && whole.consumed <= input.len());
        assert!(!whole.done || whole.consumed > whole.data.len());
        // Not done: every byte was taken (nothing is held back before the end).
        assert!(whole.done || whole.consumed == input.len());
    }
    if bytewise {
        assert_eq!(decode_in_pieces(input, || 1), whole, "byte by byte");
    }
    let mut rng = Rng::seeded(input);
    for _ in 0..2 {
        let got = decode_in_pieces(input, || match rng.below(8) {
            0 => 1 + rng.below(4096),
            _ => 1 + rng.below(16),
        });
        assert_eq!(got, whole, "random pieces");
    }
    check_framing_gaps(input, &whole);
    if whole.done {
        // Stops exactly after the final CRLF: a pipelined next message is left alone.
        let mut next = input[..whole.consumed].to_vec();
        next.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let got = decode_in_pieces(&next, || usize::MAX);
        assert_eq!((got.consumed, got.done), (whole.consumed, true));
        check_reencoded(&whole.data, &mut rng);
    }
}

/// Steps through `input` and checks how much framing lies between runs of data.
fn check_framing_gaps(input: &[u8], whole: &Decoded) {
    let mut decoder = ChunkedDecoder::new();
    let mut at = 0;
    let mut data_end = 0;
    let mut data = Vec::new();
    // Before the first run of data: one chunk-size line; between two runs: the CRLF
    // ending a chunk, then a chunk-size line.
    let mut before = MAX_CHUNK_SIZE_LINE;
    loop {
        let step = match decoder.step(&input[at..]) {
            Ok(step) => step,
            Err(_) => return,
        };
        assert!(step.consumed <= input.len() - at);
        if let Some(range) = step.data {
            assert!(
                range.start < range.end && range.end <= step.consumed,
                "{range:?}"
            );
            let gap = at + range.start - data_end;
            assert!(gap <= before, "{gap} bytes of framing before data");
            data.extend_from_slice(&input[at + range.start..at + range.end]);
            data_end = at + range.end;
            before = CHUNK_TRAILER_CRLF.len() + MAX_CHUNK_SIZE_LINE;
        }
        if step.consumed == 0 {
            break;
        }
        at += step.consumed;
    }
    let gap = at - data_end;
    assert!(
        gap <= before + MAX_TRAILER_BYTES,
        "{gap} bytes of framing at the end"
    );
    assert_eq!((data, at, decoder.is_done()), {
        let w = whole;
        (w.data.clone(), w.consumed, w.done)
    });
}

/// Encodes `data` in random chunks (some with extensions, RFC 9112 §7.1.1) and a random
/// trailer section (§7.1.2); the decoder must give back exactly `data`.
fn check_reencoded(data: &[u8], rng: &mut Rng) {
    let mut encoded = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let n = (1 + rng.below(64)).min(data.len() - at);
        write_chunk_header(n, &mut encoded);
        if rng.below(4) == 0 {
            // Put an extension before the CRLF write_chunk_header ended with.
            encoded.truncate(encoded.len() - 2);
            encoded.extend_from_slice(b" ; name=\"v;x\"\r\n");
        }
        encoded.extend_from_slice(&data[at..at + n]);
        encoded.extend_from_slice(CHUNK_TRAILER_CRLF);
        at += n;
    }
    if rng.below(2) == 0 {
        encoded.extend_from_slice(LAST_CHUNK);
    } else {
        encoded.extend_from_slice(b"0\r\nX-Sum: 1\r\n\r\n");
    }
    let got = decode_in_pieces(&encoded, || 1 + rng.below(32));
    assert_eq!(
        got,
        Decoded {
            data: data.to_vec(),
            consumed: encoded.len(),
            done: true,
            error: None
        },
        "re-encoded"
    );
}

// ---------------------------------------------------------------------------------------
// Range (RFC 9110 §14)
// ---------------------------------------------------------------------------------------

/// `range::evaluate`. The input is `LEN\nFIELD` (or just a field, for a 1000-byte
/// representation); it is also evaluated against other lengths (0, 1, LEN±1, ...):
/// * Partial{start, end} only with start ≤ end < len, and exactly the bytes the single
///   range spec selects (RFC 9110 §14.1.2); evaluating `bytes=start-end` gives it again,
///   and its Content-Range (§14.4) parses back to start, end, len;
/// * Unsatisfiable only when every spec is valid and none overlaps the representation
///   (§14.1.1; 416 with `bytes */len`, which parses back);
/// * Full (ignoring Range, always allowed: §14.2) otherwise, following the documented
///   choices (several ranges, malformed, other unit, field over 1 KiB);
/// * If-Range: a field compared with itself matches unless it is a weak tag (§13.1.5).
pub fn range(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (len, field) = match text.split_once('\n') {
        Some((n, rest)) => match n.trim().parse::<u64>() {
            Ok(n) => (n, rest),
            Err(_) => (1000, &text[..]),
        },
        None => (1000, &text[..]),
    };
    for len in [
        len,
        0,
        1,
        len / 2,
        len.saturating_sub(1),
        len.saturating_add(1),
        u64::MAX,
    ] {
        check_range(field, len);
    }
    let weak = field.trim().starts_with("W/");
    assert_eq!(
        ranges::if_range_matches(field, Some(field), Some(field)),
        !weak,
        "If-Range {field:?} against itself"
    );
}

fn check_range(field: &str, len: u64) {
    let got = ranges::evaluate(Some(field), len);
    assert_eq!(got, reference_range(field, len), "{field:?} len {len}");
    match got {
        RangeAnswer::Partial { start, end } => {
            assert!(start <= end && end < len, "{start}-{end} of {len}");
            let header = ranges::content_range(start, end, len);
            assert_eq!(
                parse_content_range(&header),
                Some((Some((start, end)), len)),
                "{header}"
            );
            let canonical = format!("bytes={start}-{end}");
            assert_eq!(ranges::evaluate(Some(&canonical), len), got, "{canonical}");
        }
        RangeAnswer::Unsatisfiable => {
            let header = ranges::unsatisfied_range(len);
            assert_eq!(parse_content_range(&header), Some((None, len)), "{header}");
        }
        RangeAnswer::Full => {}
    }
    assert_eq!(ranges::evaluate(None, len), RangeAnswer::Full);
}

/// `bytes a-b/len` or `bytes */len` (RFC 9110 §14.4).
fn parse_content_range(value: &str) -> Option<(Option<(u64, u64)>, u64)> {
    let (range, len) = value.strip_prefix("bytes ")?.split_once('/')?;
    let len = len.parse().ok()?;
    if range == "*" {
        return Some((None, len));
    }
    let (a, b) = range.split_once('-')?;
    Some((Some((a.parse().ok()?, b.parse().ok()?)), len))
}

/// An independent statement of what `evaluate` answers, in 128-bit arithmetic: RFC 9110
/// §14.1.1–§14.1.2 plus chacha's documented choices (several ranges → whole body, fields
/// over 1 KiB ignored; whitespace around parts tolerated).
fn reference_range(field: &str, len: u64) -> RangeAnswer {
    const MAX_FIELD: usize = 1024;
    enum Spec {
        Satisfiable(u128, u128),
        Unsatisfiable,
    }
    fn number(s: &str) -> Option<u128> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Saturates just past u64::MAX: such a number is not accepted.
        let cap = u128::from(u64::MAX) + 1;
        let n = s
            .bytes()
            .fold(0u128, |n, d| (n * 10 + u128::from(d - b'0')).min(cap));
        (n < cap).then_some(n)
    }
    let len = u128::from(len);
    let spec = |s: &str| -> Option<Spec> {
        let dash = s.find('-')?;
        let (first, last) = (&s[..dash], &s[dash + 1..]);
        if first.trim().is_empty() {
            // suffix-range: the last n bytes.
            let n = number(last)?;
            return Some(if n == 0 || len == 0 {
                Spec::Unsatisfiable
            } else {
                Spec::Satisfiable(len - n.min(len), len - 1)
            });
        }
        let start = number(first)?;
        let end = if last.trim().is_empty() {
            None
        } else {
            Some(number(last).filter(|&e| e >= start)?)
        };
        Some(if start >= len {
            Spec::Unsatisfiable
        } else {
            Spec::Satisfiable(start, end.map_or(len - 1, |e| e.min(len - 1)))
        })
    };
    if field.len() > MAX_FIELD {
        return RangeAnswer::Full;
    }
    let Some(eq) = field.find('=') else {
        return RangeAnswer::Full;
    };
    if !field[..eq].trim().eq_ignore_ascii_case("bytes") {
        return RangeAnswer::Full;
    }
    let parts: Vec<&str> = field[eq + 1..]
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .collect();
    let mut specs = Vec::new();
    for part in &parts {
        match spec(part.trim()) {
            Some(s) => specs.push(s),
            None => return RangeAnswer::Full,
        }
    }
    let satisfiable: Vec<(u128, u128)> = specs
        .iter()
        .filter_map(|s| match s {
            Spec::Satisfiable(a, b) => Some((*a, *b)),
            Spec::Unsatisfiable => None,
        })
        .collect();
    match (specs.len(), satisfiable.as_slice()) {
        (0, _) => RangeAnswer::Full,
        (_, []) => RangeAnswer::Unsatisfiable,
        (1, [(a, b)]) => RangeAnswer::Partial {
            start: *a as u64,
            end: *b as u64,
        },
        _ => RangeAnswer::Full,
    }
}

// ---------------------------------------------------------------------------------------
// KV metadata (X-Chacha-Metadata: base64 of JSON)
// ---------------------------------------------------------------------------------------

/// `Metadata::decode`, on the input as the field value and on base64 of the input (so the
/// fuzzer reaches the JSON decoder with JSON):
/// * base64 is strict: any text it accepts is the canonical encoding of what it decoded;
/// * round trip: decode(encode(m)) == m for every m that decodes;
/// * bounds: the decoded strings together are no longer than the JSON they came from,
///   and there are at most one header per 7 bytes of it (`["",""]`);
/// * the entry a non-owner rebuilds from it is stable: describing that entry again and
///   rebuilding gives the same entry (status, headers byte for byte, ETag);
/// * a stored response described, encoded, decoded and rebuilt is the same response.
pub fn kv_metadata(data: &[u8]) {
    check_base64(data);
    check_metadata_field(data);
    check_metadata_field(base64::encode(data).as_bytes());
    check_entry_round_trip(data);
}

/// A stored response built from the input (fields separated by NUL bytes: name, value,
/// name, value, ...) travels to a non-owner exactly: every header value byte for byte
/// (RFC 9110 §5.5 allows obs-text), the status, the ETag. Fields a stricter decoder may
/// refuse are skipped; valid ones must be accepted.
fn check_entry_round_trip(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0);
    // A final status (200–599): the decoder refuses others (a stored response is never 1xx).
    let status =
        200 + (u16::from(data.first().copied().unwrap_or(0)) + data.len() as u16 % 7) % 400;
    let mut headers = Vec::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        headers.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    let entry = EntryMeta {
        key: "http://o/x".into(),
        status,
        headers,
        ..Default::default()
    };
    let field = Metadata::of_entry(&entry).encode();
    match Metadata::decode(field.as_bytes()) {
        Ok(md) => assert_eq!(md.to_entry(entry.key.clone()), entry),
        Err(why) => assert!(!valid_fields(&entry.headers), "valid fields refused: {why}"),
    }
}

/// Field names are tokens, values field-vchar, SP and HTAB without surrounding
/// whitespace (RFC 9110 §5.1, §5.5).
fn valid_fields(fields: &[(String, Vec<u8>)]) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let vchar = |b: &u8| matches!(b, 0x21..=0x7e | 0x80..=0xff);
    fields.iter().all(|(name, value)| {
        !name.is_empty()
            && name.bytes().all(tchar)
            && value.iter().all(|b| vchar(b) || matches!(b, b' ' | b'\t'))
            && value.first().is_none_or(vchar)
            && value.last().is_none_or(vchar)
    })
}

fn check_base64(text: &[u8]) {
    if let Ok(bytes) = base64::decode(text) {
        assert_eq!(base64::encode(&bytes).as_bytes(), text, "not canonical");
    }
}

fn check_metadata_field(field: &[u8]) {
    let md = match Metadata::decode(field) {
        Ok(md) => md,
        Err(why) => {
            assert!(
                why.starts_with("X-Chacha-Metadata: ") && !why.contains('\n'),
                "{why:?}"
            );
            return;
        }
    };
    let json = base64::decode(field.trim_ascii()).expect("decoded from valid base64");
    let text: usize = md.etag.len()
        + md.headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>();
    assert!(
        text <= json.len(),
        "{text} bytes of text from {}",
        json.len()
    );
    assert!(
        md.headers.len() * 7 <= json.len(),
        "{} headers",
        md.headers.len()
    );
    let encoded = md.encode();
    assert_eq!(Metadata::decode(encoded.as_bytes()), Ok(md.clone()));
    let entry = md.to_entry("k".into());
    assert_eq!(entry.status, md.status.unwrap_or(200));
    if !md.etag.is_empty() {
        assert!(
            entry
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("etag")),
            "ETag lost"
        );
    }
    assert_eq!(Metadata::of_entry(&entry).to_entry("k".into()), entry);
}

// ---------------------------------------------------------------------------------------
// Config loader
// ---------------------------------------------------------------------------------------

/// `config::parse_offline` (the loader without DNS) on UTF-8 text (a config file is read
/// as UTF-8; other bytes never reach the parser):
/// * deterministic;
/// * an error lists at least one problem, sorted by line, each naming its key or its line
///   (a line within the text), each on one line of the message;
/// * a config that loads satisfies the checks the loader promises (workers, ports, nodes,
///   timeouts) and, written back as YAML, loads to the same config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = loader::parse_offline(text);
    assert_eq!(
        format!("{first:?}"),
        format!("{:?}", loader::parse_offline(text)),
        "deterministic"
    );
    match first {
        Ok(config) => check_config(&config),
        Err(err) => check_config_error(text, &err),
    }
}

fn check_config_error(text: &str, err: &ConfigError) {
    assert!(!err.problems.is_empty());
    // YAML line breaks: CRLF, CR or LF (YAML 1.2 §5.4), and NEL, LS, PS (YAML 1.1,
    // which libyaml counts).
    let breaks = ['\r', '\n', '\u{85}', '\u{2028}', '\u{2029}'];
    let lines = 1 + text.replace("\r\n", "\n").matches(breaks).count();
    let mut previous = None;
    for problem in &err.problems {
        assert!(
            problem.line.is_some() || !problem.key.is_empty(),
            "names neither a key nor a line: {problem:?}"
        );
        if let Some(line) = problem.line {
            assert!((1..=lines).contains(&line), "line {line} of {lines}");
        }
        assert!(previous <= problem.line, "not sorted by line: {err:?}");
        previous = problem.line;
        assert!(!problem.message.is_empty());
    }
    let shown = err.to_string();
    assert_eq!(
        shown.lines().count(),
        err.problems.len(),
        "one line per problem: {shown:?}"
    );
}

fn check_config(config: &Config) {
    assert!((1..=1024).contains(&config.workers));
    if let Some(disk) = &config.disk {
        assert!(!disk.dir.as_os_str().is_empty());
    }
    if let Some(tls) = &config.tls_interceptor {
        assert!(!tls.ports.is_empty() && !tls.ports.contains(&0));
    }
    if let Some(cluster) = &config.cluster {
        assert!(!cluster.secret.is_empty() && !cluster.nodes.is_empty());
        for (i, node) in cluster.nodes.iter().enumerate() {
            assert!(!node.ip().is_unspecified() && node.port() != 0, "{node}");
            assert!(!cluster.nodes[..i].contains(node), "duplicate {node}");
        }
        assert!(!config.addr.ip().is_unspecified() && config.addr.port() != 0);
    }
    let t = config.timeouts;
    for d in [t.connect, t.upstream_head, t.client_head, t.idle] {
        assert!(d > Duration::ZERO, "{d:?}");
    }
    let yaml = config_yaml(config);
    let again = match loader::parse_offline(&yaml) {
        Ok(again) => again,
        Err(err) => panic!("written back as\n{yaml}\nit fails: {err}"),
    };
    assert_eq!(again.addr, config.addr);
    assert_eq!(again.workers, config.workers);
    assert_eq!(again.disk, config.disk);
    assert_eq!(again.tls_interceptor, config.tls_interceptor);
    assert_eq!(again.cluster, config.cluster);
    let rules = |c: &Config| -> Vec<String> {
        c.rules
            .iter()
            .map(|r| {
                format!(
                    "{} {} {:?} {} {}",
                    r.pattern.as_str(),
                    r.ignore_authorization_header,
                    r.ignore_parameters,
                    r.direct_connect,
                    r.direct_connect_header
                )
            })
            .collect()
    };
    assert_eq!(rules(&again), rules(config));
    // Durations travel as decimal seconds: equal to within a microsecond.
    let (a, b) = (again.timeouts, config.timeouts);
    for (x, y) in [
        (a.connect, b.connect),
        (a.upstream_head, b.upstream_head),
        (a.client_head, b.client_head),
        (a.idle, b.idle),
    ] {
        assert!(x.abs_diff(y) <= Duration::from_micros(1), "{x:?} vs {y:?}");
    }
}

/// `config` written as a config file.
fn config_yaml(config: &Config) -> String {
    use serde_yaml_ng::{Mapping, Value};
    fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
        let mut m = Mapping::new();
        for (k, v) in pairs {
            m.insert(Value::String(k.to_string()), v);
        }
        Value::Mapping(m)
    }
    let s = |text: &str| Value::String(text.to_string());
    let secs = |d: Duration| Value::String(format!("{}s", d.as_secs_f64()));
    let mut root = match map([
        ("addr", s(&config.addr.to_string())),
        ("workers", Value::Number(config.workers.into())),
        (
            "timeouts",
            map([
                ("connect", secs(config.timeouts.connect)),
                ("upstream-head", secs(config.timeouts.upstream_head)),
                ("client-head", secs(config.timeouts.client_head)),
                ("idle", secs(config.timeouts.idle)),
            ]),
        ),
    ]) {
        Value::Mapping(m) => m,
        _ => unreachable!(),
    };
    if let Some(disk) = &config.disk {
        let dir = disk.dir.to_str().expect("read from UTF-8 text");
        root.insert(
            s("disk"),
            map([("dir", s(dir)), ("limit", Value::Number(disk.limit.into()))]),
        );
    }
    if let Some(tls) = &config.tls_interceptor {
        let path = |p: &std::path::Path| s(p.to_str().expect("read from UTF-8 text"));
        let ports = tls.ports.iter().map(|&p| Value::Number(p.into())).collect();
        root.insert(
            s("tls-interceptor"),
            map([
                ("cert", path(&tls.cert)),
                ("key", path(&tls.key)),
                ("ports", Value::Sequence(ports)),
            ]),
        );
    }
    let rules = config
        .rules
        .iter()
        .map(|r| {
            map([
                ("pattern", s(r.pattern.as_str())),
                (
                    "ignore-authorization-header",
                    Value::Bool(r.ignore_authorization_header),
                ),
                (
                    "ignore-parameters",
                    Value::Sequence(r.ignore_parameters.iter().map(|p| s(p)).collect()),
                ),
                ("direct-connect", Value::Bool(r.direct_connect)),
                (
                    "direct-connect-header",
                    Value::Bool(r.direct_connect_header),
                ),
            ])
        })
        .collect();
    root.insert(s("rules"), Value::Sequence(rules));
    if let Some(cluster) = &config.cluster {
        let nodes = cluster
            .nodes
            .iter()
            .map(|n| map([("addr", s(&n.to_string()))]))
            .collect();
        root.insert(
            s("cluster"),
            map([
                ("secret", s(&cluster.secret)),
                ("nodes", Value::Sequence(nodes)),
            ]),
        );
    }
    serde_yaml_ng::to_string(&Value::Mapping(root)).expect("a mapping of plain values")
}
