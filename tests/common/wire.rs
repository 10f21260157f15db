//! Blocking HTTP/1.1 wire helpers shared by the in-test origin and the raw client:
//! a buffered reader over a `TcpStream` that finds heads and reads bodies with the
//! framing rules of RFC 9112 §6 (Content-Length, chunked §7.1, close-delimited).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Read buffer size; also the largest slice handed to a body sink at once.
const READ_CHUNK: usize = 64 * 1024;
/// Cap on a chunk-size line or trailer line; a sane peer never gets near it.
const MAX_LINE: usize = 8 * 1024;

/// Socket timeout applied to every test socket unless a test sets its own.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (HEAD, 1xx, 204, 304, or a request without CL/TE).
    None,
    Length(u64),
    Chunked,
    /// Response body runs until the peer closes the connection.
    Close,
}

/// Why a body read stopped early.
#[derive(Debug)]
pub struct Truncated {
    /// Body bytes delivered to the sink before the stream ended or failed.
    pub got: u64,
    pub error: io::Error,
}

/// Puts read and write timeouts on a socket so no test can block forever.
pub fn set_timeouts(stream: &TcpStream, timeout: Duration) {
    stream
        .set_read_timeout(Some(timeout))
        .expect("set_read_timeout");
    stream
        .set_write_timeout(Some(timeout))
        .expect("set_write_timeout");
}

/// A stream (a `TcpStream` unless said otherwise; a TLS stream in the TLS tests) with a
/// read-ahead buffer, so head bytes and body bytes (and pipelined messages) can be split
/// exactly where the framing says.
pub struct Wire<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<S: Read + Write> Wire<S> {
    pub fn new(stream: S) -> Wire<S> {
        Wire {
            stream,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        }
    }

    /// Bytes read from the socket but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` means EOF.
    fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grow = self.buf.len();
            self.buf.resize(grow * 2, 0);
        }
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one head, up to and including the empty line. `Ok(None)` on a clean EOF
    /// before any byte of it (the peer closed an idle connection).
    pub fn read_head(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let mut scanned: usize = 0;
        loop {
            let avail = self.buffered();
            if let Some(pos) = find(&avail[scanned.saturating_sub(3)..], b"\r\n\r\n") {
                let len = scanned.saturating_sub(3) + pos + 4;
                let head = avail[..len].to_vec();
                self.consume(len);
                return Ok(Some(head));
            }
            scanned = avail.len();
            if scanned > max {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
            }
            if self.fill()? == 0 {
                if self.buffered().is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a head",
                ));
            }
        }
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = find(self.buffered(), b"\r\n") {
                let line = self.buffered()[..pos].to_vec();
                self.consume(pos + 2);
                return Ok(line);
            }
            if self.buffered().len() > MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a line",
                ));
            }
        }
    }

    /// Hands up to `want` bytes to `sink` (fewer if that is what is buffered).
    /// Returns how many, 0 only at EOF.
    fn pass_some(&mut self, want: u64, sink: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        if self.buffered().is_empty() && self.fill()? == 0 {
            return Ok(0);
        }
        let n = (self.buffered().len() as u64).min(want) as usize;
        sink(&self.buffered()[..n]);
        self.consume(n);
        Ok(n)
    }

    /// Reads a body with the given framing, streaming it into `sink`.
    /// Returns the body length, or how far it got before EOF/error.
    pub fn read_body(
        &mut self,
        framing: Framing,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<u64, Truncated> {
        let mut got = 0u64;
        let eof = |got| Truncated {
            got,
            error: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "EOF before the end of the body",
            ),
        };
        match framing {
            Framing::None => Ok(0),
            Framing::Length(len) => {
                while got < len {
                    match self.pass_some(len - got, sink) {
                        Ok(0) => return Err(eof(got)),
                        Ok(n) => got += n as u64,
                        Err(error) => return Err(Truncated { got, error }),
                    }
                }
                Ok(got)
            }
            Framing::Close => loop {
                match self.pass_some(u64::MAX, sink) {
                    Ok(0) => return Ok(got),
                    Ok(n) => got += n as u64,
                    Err(error) => return Err(Truncated { got, error }),
                }
            },
            Framing::Chunked => {
                // RFC 9112 §7.1: chunk-size [ext] CRLF data CRLF ... 0 CRLF trailers CRLF.
                loop {
                    let line = self.read_line().map_err(|error| Truncated { got, error })?;
                    let size = parse_chunk_size(&line).map_err(|error| Truncated { got, error })?;
                    if size == 0 {
                        loop {
                            let trailer =
                                self.read_line().map_err(|error| Truncated { got, error })?;
                            if trailer.is_empty() {
                                return Ok(got);
                            }
                        }
                    }
                    let mut left = size;
                    while left > 0 {
                        match self.pass_some(left, sink) {
                            Ok(0) => return Err(eof(got)),
                            Ok(n) => {
                                left -= n as u64;
                                got += n as u64;
                            }
                            Err(error) => return Err(Truncated { got, error }),
                        }
                    }
                    let crlf = self.read_line().map_err(|error| Truncated { got, error })?;
                    if !crlf.is_empty() {
                        let error = io::Error::new(
                            io::ErrorKind::InvalidData,
                            "chunk data not followed by CRLF",
                        );
                        return Err(Truncated { got, error });
                    }
                }
            }
        }
    }

    /// Reads a whole body into memory.
    pub fn read_body_vec(&mut self, framing: Framing) -> Result<Vec<u8>, (Vec<u8>, Truncated)> {
        let mut body = Vec::new();
        match self.read_body(framing, &mut |b| body.extend_from_slice(b)) {
            Ok(_) => Ok(body),
            Err(t) => Err((body, t)),
        }
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }
}

impl Wire<TcpStream> {
    /// True when the peer has closed: the next read returns EOF (or a reset) within
    /// `timeout`, with no further bytes. Buffered leftovers count as "not closed".
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        if !self.buffered().is_empty() {
            return false;
        }
        let _ = self.stream.set_read_timeout(Some(timeout));
        let mut byte = [0u8; 1];
        let closed = match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
        };
        let _ = self.stream.set_read_timeout(Some(DEFAULT_IO_TIMEOUT));
        closed
    }
}

fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    let text = std::str::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size not UTF-8"))?;
    let hex = text.split(';').next().unwrap_or("").trim();
    u64::from_str_radix(hex, 16).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad chunk size line {text:?}"),
        )
    })
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Header fields as (name, value) pairs; lookups ignore case (RFC 9110 §5.1).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// All values of a field, in order.
pub fn header_all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Whether a comma-separated field (Connection, Transfer-Encoding) lists `token`.
pub fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    header_all(headers, name)
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

pub fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}
