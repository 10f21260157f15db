use std::fmt::Debug;

use crate::http::chunked::{
    write_chunk_header, ChunkError, ChunkedDecoder, CHUNK_TRAILER_CRLF, LAST_CHUNK,
    MAX_CHUNK_SIZE_LINE, MAX_TRAILER_BYTES,
};

use super::Rng;

// Chunked transfer coding (RFC 9112 §7.1)

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
