//! A raw blocking HTTP/1.1 client: sends bytes exactly as the test wrote them and reads
//! responses with correct framing (RFC 9112 §6.3), one at a time, so keep-alive and
//! pipelining can be tested on a single connection.

use super::wire::{self, Framing, Truncated, Wire, DEFAULT_IO_TIMEOUT};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest response head the client accepts.
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// Header fields parsed per response head.
const MAX_RESPONSE_FIELDS: usize = 512;

#[derive(Debug, Clone)]
pub struct Head {
    /// Minor version (1 for HTTP/1.1).
    pub version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        wire::has_token(&self.headers, name, token)
    }
    /// Whether the server said it will close after this response (RFC 9112 §9.3).
    pub fn closes(&self) -> bool {
        self.has_token("connection", "close") || self.framing == Framing::Close
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// The connection ended (EOF or reset) before any byte of a response.
    Closed(io::Error),
    /// I/O error or timeout while reading the head.
    Head(io::Error),
    /// The head arrived but the body ended early.
    Truncated {
        head: Head,
        body: Vec<u8>,
        error: io::Error,
    },
}

/// One client connection.
pub struct Conn {
    wire: Wire,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn::connect_timeout(addr, DEFAULT_IO_TIMEOUT)
    }

    /// Connects with `timeout` as connect, read and write timeout.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        wire::set_timeouts(&stream, timeout);
        let _ = stream.set_nodelay(true);
        Conn {
            wire: Wire::new(stream),
        }
    }

    /// A connection over an already connected socket (e.g. one bound to a chosen source
    /// address), with [`DEFAULT_IO_TIMEOUT`] as read and write timeout.
    pub fn from_stream(stream: TcpStream) -> Conn {
        wire::set_timeouts(&stream, DEFAULT_IO_TIMEOUT);
        let _ = stream.set_nodelay(true);
        Conn {
            wire: Wire::new(stream),
        }
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        wire::set_timeouts(&self.wire.stream, timeout);
    }

    pub fn stream(&self) -> &TcpStream {
        &self.wire.stream
    }

    /// Writes raw bytes (a request, part of one, or several).
    pub fn send(&mut self, raw: impl AsRef<[u8]>) -> io::Result<()> {
        self.wire.write_all(raw.as_ref())
    }

    /// Reads one response head, skipping 1xx interim responses (RFC 9110 §15.2).
    /// `method` is the request's method: a response to HEAD has no body.
    pub fn read_head(&mut self, method: &str) -> Result<Head, ClientError> {
        loop {
            let raw = match self.wire.read_head(MAX_RESPONSE_HEAD) {
                Ok(Some(raw)) => raw,
                Ok(None) => return Err(ClientError::Closed(io::ErrorKind::UnexpectedEof.into())),
                Err(e) if self.wire.buffered().is_empty() && is_disconnect(&e) => {
                    return Err(ClientError::Closed(e))
                }
                Err(e) => return Err(ClientError::Head(e)),
            };
            let head = parse_head(&raw, method).map_err(ClientError::Head)?;
            if (100..200).contains(&head.status) && head.status != 101 {
                continue;
            }
            return Ok(head);
        }
    }

    /// Streams the body belonging to `head` into `sink`.
    pub fn read_body_with(
        &mut self,
        head: &Head,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<u64, Truncated> {
        self.wire.read_body(head.framing, sink)
    }

    /// Reads one whole response into memory.
    pub fn read_response(&mut self, method: &str) -> Result<Response, ClientError> {
        let head = self.read_head(method)?;
        match self.wire.read_body_vec(head.framing) {
            Ok(body) => Ok(Response { head, body }),
            Err((body, t)) => Err(ClientError::Truncated {
                head,
                body,
                error: t.error,
            }),
        }
    }

    /// Sends `raw` and reads one response (method taken from `raw`'s first word).
    pub fn request(&mut self, raw: impl AsRef<[u8]>) -> Result<Response, ClientError> {
        let raw = raw.as_ref();
        let method = method_of(raw);
        self.send(raw).map_err(ClientError::Head)?;
        self.read_response(&method)
    }

    /// True when the server closed the connection: the next read sees EOF or a reset
    /// within `timeout` and no bytes.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.wire.closed_within(timeout)
    }
}

/// Sends one request on a fresh connection and reads one response.
pub fn request(addr: SocketAddr, raw: impl AsRef<[u8]>) -> Result<Response, ClientError> {
    Conn::connect(addr).request(raw)
}

/// `GET http://{authority}{path} HTTP/1.1` with Host, as a client speaks to a proxy.
pub fn get(authority: &str, path: &str) -> String {
    format!("GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
}

/// Like [`get`] with extra header lines (each without CRLF).
pub fn get_with(authority: &str, path: &str, extra: &[&str]) -> String {
    request_with("GET", authority, path, extra, b"")
}

/// An absolute-form request with extra header lines and a body sent with Content-Length
/// (omitted when the body is empty and the method is not POST/PUT).
pub fn request_with(
    method: &str,
    authority: &str,
    path: &str,
    extra: &[&str],
    body: &[u8],
) -> String {
    let mut s = format!("{method} http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n");
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    s.push_str("\r\n");
    s.push_str(std::str::from_utf8(body).expect("request_with takes text bodies"));
    s
}

pub fn method_of(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == b' ').unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Parses a response head and works out the body framing (RFC 9112 §6.3).
pub fn parse_head(raw: &[u8], method: &str) -> io::Result<Head> {
    let mut fields = vec![httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
    let mut parsed = httparse::Response::new(&mut fields);
    match parsed.parse(raw) {
        Ok(httparse::Status::Complete(_)) => {}
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "bad response head {other:?}: {:?}",
                    String::from_utf8_lossy(raw)
                ),
            ))
        }
    }
    let status = parsed.code.unwrap_or(0);
    let headers = wire::owned_headers(parsed.headers);
    let framing = if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        Framing::None
    } else if wire::has_token(&headers, "transfer-encoding", "chunked") {
        Framing::Chunked
    } else if let Some(cl) = wire::header(&headers, "content-length") {
        let len = cl.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad Content-Length {cl:?}"),
            )
        })?;
        Framing::Length(len)
    } else {
        Framing::Close
    };
    Ok(Head {
        version: parsed.version.unwrap_or(1),
        status,
        reason: parsed.reason.unwrap_or("").to_string(),
        headers,
        framing,
    })
}
