//! The chunked transfer coding (RFC 9112 §7.1): a streaming decoder that never holds the
//! body, and the few byte strings an encoder needs.

use super::head::MAX_HEAD_BYTES;

/// Longest chunk-size line we accept, extensions and CRLF included. Extensions are
/// ignored (RFC 9112 §7.1.1), so a long one is only a way to make us buffer.
pub const MAX_CHUNK_SIZE_LINE: usize = 4 * 1024;
/// Largest trailer section accepted, final CRLF included; same bound as a head.
pub const MAX_TRAILER_BYTES: usize = MAX_HEAD_BYTES;

/// Ends each chunk's data.
pub const CHUNK_TRAILER_CRLF: &[u8] = b"\r\n";
/// The last chunk with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes a chunk-size line, `{len:x}\r\n`.
pub fn write_chunk_header(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 2 * std::mem::size_of::<usize>()];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The chunk-size is missing or not followed by `;`, whitespace-then-`;`, or CRLF.
    InvalidSize,
    /// The chunk-size does not fit in 64 bits.
    SizeOverflow,
    /// The chunk-size line exceeds MAX_CHUNK_SIZE_LINE.
    SizeLineTooLong,
    /// A control character (bare LF included) inside a chunk extension.
    InvalidExtension,
    /// A line end other than CRLF: after the size line or after the chunk data.
    MissingCrlf,
    /// A control character (bare LF included) in the trailer section.
    InvalidTrailer,
    /// The trailer section exceeds MAX_TRAILER_BYTES.
    TrailerTooLarge,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkError::InvalidSize => "invalid chunk size",
            ChunkError::SizeOverflow => "chunk size overflows",
            ChunkError::SizeLineTooLong => "chunk size line too long",
            ChunkError::InvalidExtension => "invalid chunk extension",
            ChunkError::MissingCrlf => "missing CRLF in chunked body",
            ChunkError::InvalidTrailer => "invalid chunked trailer",
            ChunkError::TrailerTooLarge => "chunked trailer section too large",
        })
    }
}

impl std::error::Error for ChunkError {}

/// What one [`ChunkedDecoder::step`] did with the front of its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of input used (framing and data).
    pub consumed: usize,
    /// The body data among them, as a range of the input.
    pub data: Option<std::ops::Range<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of the chunk-size.
    Size,
    /// BWS after the size; only `;` may follow (RFC 9112 §7.1.1).
    SizeWhitespace,
    /// Chunk extensions up to CR; ignored.
    Extension,
    /// CR of the size line seen; LF must follow.
    SizeLf,
    /// Chunk data; `remaining` bytes left.
    Data,
    /// CRLF that ends the chunk data.
    DataCr,
    DataLf,
    /// Start of a trailer field line or of the final CRLF (RFC 9112 §7.1.2).
    TrailerStart,
    TrailerLine,
    TrailerLineLf,
    /// CR of the final CRLF seen.
    EndLf,
    Done,
}

/// Decodes a chunked body incrementally; feed it whatever arrived and it hands back
/// ranges of body data. Stops exactly after the final CRLF, so bytes of a pipelined next
/// message are never consumed.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// The chunk-size being read.
    size: u64,
    /// Bytes of the current chunk-size line so far.
    line_len: usize,
    /// Data bytes left in the current chunk.
    remaining: u64,
    /// Bytes of the trailer section so far.
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            line_len: 0,
            remaining: 0,
            trailer_len: 0,
        }
    }

    /// True once the last chunk, trailer section and final CRLF have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from the front of `input` up to and including the next run of
    /// data. `consumed == 0 && data == None` means more input is needed or the body is done.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Done => break,
                State::Data => {
                    let available = (input.len() - at) as u64;
                    let n = self.remaining.min(available) as usize;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Step {
                        consumed: at + n,
                        data: Some(at..at + n),
                    });
                }
                _ => {
                    self.framing_byte(input[at])?;
                    at += 1;
                }
            }
        }
        Ok(Step {
            consumed: at,
            data: None,
        })
    }

    /// Runs [`step`](Self::step) until it stalls, appending the data to `out`; returns the
    /// bytes of `input` consumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut at = 0;
        loop {
            let step = self.step(&input[at..])?;
            if let Some(data) = step.data {
                out.extend_from_slice(&input[at + data.start..at + data.end]);
            }
            if step.consumed == 0 {
                return Ok(at);
            }
            at += step.consumed;
        }
    }

    fn framing_byte(&mut self, b: u8) -> Result<(), ChunkError> {
        match self.state {
            State::Size | State::SizeWhitespace | State::Extension | State::SizeLf => {
                self.line_len += 1;
                if self.line_len > MAX_CHUNK_SIZE_LINE {
                    return Err(ChunkError::SizeLineTooLong);
                }
            }
            State::TrailerStart | State::TrailerLine | State::TrailerLineLf | State::EndLf => {
                self.trailer_len += 1;
                if self.trailer_len > MAX_TRAILER_BYTES {
                    return Err(ChunkError::TrailerTooLarge);
                }
            }
            _ => {}
        }
        self.state = match (self.state, b) {
            // chunk-size = 1*HEXDIG
            (State::Size, _) if b.is_ascii_hexdigit() => {
                let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or(ChunkError::SizeOverflow)?;
                State::Size
            }
            // No digits at all (the line starts here).
            (State::Size, _) if self.line_len == 1 => return Err(ChunkError::InvalidSize),
            (State::Size, b';') | (State::SizeWhitespace, b';') => State::Extension,
            (State::Size, b' ' | b'\t') | (State::SizeWhitespace, b' ' | b'\t') => {
                State::SizeWhitespace
            }
            (State::Size, b'\r') => State::SizeLf,
            (State::Size, b'\n') => return Err(ChunkError::MissingCrlf),
            (State::Size | State::SizeWhitespace, _) => return Err(ChunkError::InvalidSize),
            (State::Extension, b'\r') => State::SizeLf,
            (State::Extension, _) if is_field_byte(b) => State::Extension,
            (State::Extension, _) => return Err(ChunkError::InvalidExtension),
            (State::SizeLf, b'\n') => {
                self.line_len = 0;
                self.remaining = self.size;
                self.size = 0;
                if self.remaining == 0 {
                    State::TrailerStart
                } else {
                    State::Data
                }
            }
            (State::SizeLf, _) => return Err(ChunkError::MissingCrlf),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size,
            (State::DataCr | State::DataLf, _) => return Err(ChunkError::MissingCrlf),
            // Trailer fields are tolerated and discarded (RFC 9112 §7.1.2 lets a recipient
            // drop them); only their line structure is checked.
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerLine, b'\r') => State::TrailerLineLf,
            (State::TrailerStart | State::TrailerLine, _) if is_field_byte(b) => State::TrailerLine,
            (State::TrailerStart | State::TrailerLine, _) => {
                return Err(ChunkError::InvalidTrailer)
            }
            (State::TrailerLineLf, b'\n') => State::TrailerStart,
            (State::EndLf, b'\n') => State::Done,
            (State::TrailerLineLf | State::EndLf, _) => return Err(ChunkError::MissingCrlf),
            (State::Data | State::Done, _) => unreachable!("handled in step"),
        };
        Ok(())
    }
}

/// HTAB, SP, VCHAR and obs-text: what may appear inside a field line or extension
/// (RFC 9110 §5.5); every other control, bare LF included, is refused.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` in order the way a connection would: bytes a step leaves unconsumed
    /// stay buffered in front of the next piece. Returns (data, bytes consumed, done).
    fn feed(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut dec = ChunkedDecoder::new();
        let mut pending = Vec::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        for piece in pieces {
            pending.extend_from_slice(piece);
            let n = dec.decode(&pending, &mut out)?;
            consumed += n;
            pending.drain(..n);
        }
        Ok((out, consumed, dec.is_done()))
    }

    fn bytewise(raw: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let pieces: Vec<&[u8]> = raw.chunks(1).collect();
        feed(&pieces)
    }

    /// (body, decoded data, bytes that belong to the body; the rest is the next message).
    const VALID: &[(&[u8], &[u8], usize)] = &[
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello", 15),
        (b"0\r\n\r\n", b"", 5),
        (
            b"A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n",
            b"0123456789abcdefghij",
            35,
        ),
        (b"0005\r\nhello\r\n0000\r\n\r\n", b"hello", 21),
        // Extensions are ignored (RFC 9112 §7.1.1), BWS before ';' allowed.
        (
            b"5;foo=bar\r\nhello\r\n6 ; q=\"a;b\"\t\r\n world\r\n0;last\r\n\r\n",
            b"hello world",
            50,
        ),
        // Trailers are discarded (RFC 9112 §7.1.2).
        (
            b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nY: two words\r\n\r\n",
            b"abc",
            37,
        ),
        // A pipelined next message is left alone.
        (b"2\r\nok\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n", b"ok", 12),
        // Data may hold CRLF and digits.
        (b"4\r\n\r\n0\r\r\n0\r\n\r\n", b"\r\n0\r", 14),
    ];

    #[test]
    fn valid_bodies_whole_bytewise_and_split_everywhere() {
        for &(raw, data, body_len) in VALID {
            let expected = Ok((data.to_vec(), body_len, true));
            let name = String::from_utf8_lossy(raw);
            assert_eq!(feed(&[raw]), expected, "whole {name:?}");
            assert_eq!(bytewise(raw), expected, "bytewise {name:?}");
            for cut in 0..=raw.len() {
                assert_eq!(
                    feed(&[&raw[..cut], &raw[cut..]]),
                    expected,
                    "cut {cut} {name:?}"
                );
            }
            // Before the end the decoder is not done.
            let (_, _, done) = feed(&[&raw[..body_len - 1]]).unwrap();
            assert!(!done, "{name:?}");
        }
    }

    #[test]
    fn step_reports_framing_and_data_ranges() {
        let raw = b"5\r\nhello\r\n0\r\n\r\nrest";
        let mut dec = ChunkedDecoder::new();
        let s = dec.step(raw).unwrap();
        assert_eq!(
            s,
            Step {
                consumed: 8,
                data: Some(3..8)
            }
        );
        let s = dec.step(&raw[8..]).unwrap();
        assert_eq!(
            s,
            Step {
                consumed: 7,
                data: None
            }
        );
        assert!(dec.is_done());
        assert_eq!(
            dec.step(&raw[15..]).unwrap(),
            Step {
                consumed: 0,
                data: None
            }
        );
        // Needing more input: nothing consumed.
        let mut dec = ChunkedDecoder::new();
        assert_eq!(
            dec.step(b"").unwrap(),
            Step {
                consumed: 0,
                data: None
            }
        );
        assert_eq!(
            dec.step(b"1").unwrap(),
            Step {
                consumed: 1,
                data: None
            }
        );
        assert!(!dec.is_done());
    }

    #[test]
    fn a_big_chunk_streams_without_buffering() {
        let mut dec = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert_eq!(dec.decode(b"100000\r\n", &mut out), Ok(8));
        let piece = [7u8; 4096];
        for _ in 0..256 {
            let s = dec.step(&piece).unwrap();
            assert_eq!(
                s,
                Step {
                    consumed: 4096,
                    data: Some(0..4096)
                }
            );
        }
        assert_eq!(dec.decode(b"\r\n0\r\n\r\n", &mut out), Ok(7));
        assert!(dec.is_done() && out.is_empty());
    }

    fn long_extension() -> Vec<u8> {
        let mut raw = b"1;x=".to_vec();
        raw.resize(MAX_CHUNK_SIZE_LINE + 1, b'a');
        raw
    }

    fn long_trailer() -> Vec<u8> {
        let mut raw = b"0\r\nX: ".to_vec();
        raw.resize(MAX_TRAILER_BYTES + 8, b'a');
        raw
    }

    #[test]
    fn malformed_bodies_fail_with_one_exact_error() {
        let cases: Vec<(Vec<u8>, ChunkError)> = vec![
            (b"x\r\n".to_vec(), ChunkError::InvalidSize),
            (b"\r\n".to_vec(), ChunkError::InvalidSize),
            (b";ext\r\n".to_vec(), ChunkError::InvalidSize),
            (b"-1\r\n".to_vec(), ChunkError::InvalidSize),
            (b"+5\r\n".to_vec(), ChunkError::InvalidSize),
            (b"0x5\r\n".to_vec(), ChunkError::InvalidSize),
            (b"5 \r\nhello".to_vec(), ChunkError::InvalidSize),
            (b"5 5\r\n".to_vec(), ChunkError::InvalidSize),
            (b"5\nhello\r\n".to_vec(), ChunkError::MissingCrlf),
            (b"5\r\rhello".to_vec(), ChunkError::MissingCrlf),
            (b"5\r\nhelloX\r\n".to_vec(), ChunkError::MissingCrlf),
            (b"5\r\nhello\n0\r\n\r\n".to_vec(), ChunkError::MissingCrlf),
            (b"5\r\nhello\r0\r\n\r\n".to_vec(), ChunkError::MissingCrlf),
            (b"3\r\nhello\r\n".to_vec(), ChunkError::MissingCrlf),
            (b"0\r\n\rx".to_vec(), ChunkError::MissingCrlf),
            (b"0\r\nX: 1\rx".to_vec(), ChunkError::MissingCrlf),
            (b"5;a\nb\r\n".to_vec(), ChunkError::InvalidExtension),
            (b"5;a\0\r\n".to_vec(), ChunkError::InvalidExtension),
            (b"10000000000000000\r\n".to_vec(), ChunkError::SizeOverflow),
            (b"0\r\nX: a\n\r\n".to_vec(), ChunkError::InvalidTrailer),
            (b"0\r\n\n".to_vec(), ChunkError::InvalidTrailer),
            (b"0\r\nX: \x01\r\n\r\n".to_vec(), ChunkError::InvalidTrailer),
            (long_extension(), ChunkError::SizeLineTooLong),
            (long_trailer(), ChunkError::TrailerTooLarge),
        ];
        for (raw, err) in cases {
            let name = String::from_utf8_lossy(&raw[..raw.len().min(40)]).into_owned();
            assert_eq!(feed(&[&raw]), Err(err), "whole {name:?}");
            assert_eq!(bytewise(&raw), Err(err), "bytewise {name:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn largest_size_is_accepted() {
        let mut dec = ChunkedDecoder::new();
        assert_eq!(
            dec.step(b"ffffffffffffffff\r\nab").unwrap(),
            Step {
                consumed: 20,
                data: Some(18..20)
            }
        );
    }

    #[test]
    fn encoder_output_decodes() {
        let mut head = Vec::new();
        write_chunk_header(0, &mut head);
        write_chunk_header(255, &mut head);
        write_chunk_header(usize::MAX, &mut head);
        assert_eq!(head, b"0\r\nff\r\nffffffffffffffff\r\n");

        let big = b"x".repeat(70_000);
        let pieces: [&[u8]; 3] = [b"first", b"", &big];
        let mut body = Vec::new();
        for p in pieces.iter().filter(|p| !p.is_empty()) {
            write_chunk_header(p.len(), &mut body);
            body.extend_from_slice(p);
            body.extend_from_slice(CHUNK_TRAILER_CRLF);
        }
        body.extend_from_slice(LAST_CHUNK);
        let (data, used, done) = feed(&[&body]).unwrap();
        assert_eq!((data, used, done), (pieces.concat(), body.len(), true));
    }
}
