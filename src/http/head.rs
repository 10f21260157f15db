//! Request and response heads: parsing (RFC 9112 §2–§6), framing, hop-by-hop headers
//! (RFC 9110 §7.6.1) and serialisation.
//!
//! CONTRACT (used by the proxy; keep signatures stable):
//! * [`parse_request`] / [`parse_response`]: `Complete(head, head_len)`, `Partial`, or an
//!   error whose [`HeadError::status`] is the answer (431 for limits, 400 otherwise).
//! * [`RequestHead::body_kind`] refuses every ambiguous framing (BadFraming → 400);
//!   [`ResponseHead::body_kind`] takes the request method (HEAD, CONNECT).
//! * `keep_alive()` on either head; on a response it is false whenever the body would
//!   run until close or the framing was doubtful.
//! * [`Headers::strip_hop_by_hop`] before forwarding; `write_to` serialises.

/// Largest request or response head accepted, start line included (→ 431 for requests).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted in one head (→ 431 for requests).
pub const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Header fields in arrival order; names keep their case, lookups ignore it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pub fields: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// As sent: absolute form (`http://h:p/x?q`), origin form (`/x?q`), authority form
    /// (`host:port`, CONNECT) or `*`.
    pub target: String,
    pub version: Version,
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub version: Version,
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
}

/// How the message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body ends when the connection closes.
    UntilClose,
}

impl BodyKind {
    /// The body's length when the framing states it before the body (RFC 9112 §6.3):
    /// `Content-Length`, or no body at all; `None` for chunked and close-delimited bodies.
    pub fn known_len(self) -> Option<u64> {
        match self {
            BodyKind::Length(n) => Some(n),
            BodyKind::None => Some(0),
            BodyKind::Chunked | BodyKind::UntilClose => None,
        }
    }
}

/// Result of a parse attempt on the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The head and how many bytes of the buffer it used (including the final CRLF CRLF).
    Complete(T, usize),
    /// More bytes are needed; the buffer holds a valid prefix.
    Partial,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Head larger than MAX_HEAD_BYTES → 431.
    TooLarge,
    /// More than MAX_HEADERS fields → 431.
    TooManyHeaders,
    /// Malformed start line or header field → 400. The text says what.
    Malformed(String),
    /// Framing that could be used to smuggle (CL+TE, conflicting CLs, unknown coding) → 400.
    BadFraming(String),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::TooLarge => write!(f, "head larger than {MAX_HEAD_BYTES} bytes"),
            HeadError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} header fields"),
            HeadError::Malformed(why) => write!(f, "malformed head: {why}"),
            HeadError::BadFraming(why) => write!(f, "bad message framing: {why}"),
        }
    }
}

impl std::error::Error for HeadError {}

impl HeadError {
    /// The status a server answers with (RFC 6585 §5 for 431, RFC 9112 §3/§6.3 for 400).
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Malformed(_) | HeadError::BadFraming(_) => 400,
        }
    }
}

fn malformed(why: impl Into<String>) -> HeadError {
    HeadError::Malformed(why.into())
}

fn bad_framing(why: impl Into<String>) -> HeadError {
    HeadError::BadFraming(why.into())
}

/// Fields that describe one connection and never travel past it (RFC 9110 §7.6.1), plus the
/// two pseudo-standard ones clients still send (`Proxy-Connection`, `Keep-Alive`).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Optional whitespace (RFC 9110 §5.6.3).
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if !is_ows(*first) {
            break;
        }
        v = rest;
    }
    while let [rest @ .., last] = v {
        if !is_ows(*last) {
            break;
        }
        v = rest;
    }
    v
}

impl Headers {
    /// The first value of `name` (case-insensitive, RFC 9110 §5.1).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` as trimmed text; `None` when absent or not UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        let v = self.get(name)?;
        std::str::from_utf8(trim_ows(v)).ok()
    }

    /// Every value of `name`, in arrival order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.fields
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Removes every field called `name`; returns how many were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.fields.len();
        self.fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        before - self.fields.len()
    }

    /// Replaces every field called `name` by one with `value`, at the first one's position
    /// (appended when absent).
    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        let value = value.into();
        match self
            .fields
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(first) => {
                self.fields[first].1 = value;
                let mut idx = 0;
                self.fields.retain(|(n, _)| {
                    let keep = idx <= first || !n.eq_ignore_ascii_case(name);
                    idx += 1;
                    keep
                });
            }
            None => self.fields.push((name.to_string(), value)),
        }
    }

    pub fn append(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.fields.push((name.to_string(), value.into()));
    }

    /// Whether the comma-separated list formed by all `name` fields (RFC 9110 §5.3, §5.6.1)
    /// holds `token`, ignoring case and optional whitespace.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        list_items(self, name).any(|item| item.eq_ignore_ascii_case(token.as_bytes()))
    }

    /// Removes the connection-specific fields before forwarding (RFC 9110 §7.6.1):
    /// `Connection`, every field it names, and the fixed hop-by-hop set.
    /// Whether the field `name` is hop-by-hop here: a fixed one or one named in
    /// Connection (RFC 9110 §7.6.1). Lets a head be written without cloning its fields.
    pub fn is_hop_by_hop(&self, name: &str) -> bool {
        HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || list_items(self, "connection").any(|c| name.as_bytes().eq_ignore_ascii_case(c))
    }

    pub fn strip_hop_by_hop(&mut self) {
        let named: Vec<Vec<u8>> = list_items(self, "connection")
            .filter(|item| !item.is_empty())
            .map(|item| item.to_vec())
            .collect();
        self.fields.retain(|(n, _)| {
            !HOP_BY_HOP.iter().any(|h| n.eq_ignore_ascii_case(h))
                && !named.iter().any(|c| n.as_bytes().eq_ignore_ascii_case(c))
        });
    }
}

/// The elements of the list formed by all `name` fields, OWS trimmed; empty elements are
/// yielded too (as empty slices) so that framing checks can refuse them.
fn list_items<'a>(headers: &'a Headers, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .flat_map(|v| v.split(|b| *b == b','))
        .map(trim_ows)
}

/// What the Transfer-Encoding fields say, given that we only implement `chunked`.
#[derive(Debug, PartialEq, Eq)]
enum TransferCoding {
    Absent,
    /// Exactly one coding, `chunked`.
    Chunked,
    /// The final coding is not `chunked` (RFC 9112 §6.3 item 4): refused in requests and,
    /// since we cannot undo the coding, in responses too.
    NotChunkedFinal,
    /// `chunked` is final but applied twice, or with another coding we cannot undo.
    Unsupported(String),
}

fn transfer_coding(headers: &Headers) -> TransferCoding {
    if !headers.contains("transfer-encoding") {
        return TransferCoding::Absent;
    }
    // Empty list elements are allowed by RFC 9110 §5.6.1 and carry no coding.
    let codings: Vec<&[u8]> = list_items(headers, "transfer-encoding")
        .filter(|c| !c.is_empty())
        .collect();
    fn is_chunked(c: &&[u8]) -> bool {
        c.eq_ignore_ascii_case(b"chunked")
    }
    match codings.last() {
        None => TransferCoding::Unsupported("empty Transfer-Encoding".into()),
        Some(last) if !is_chunked(last) => TransferCoding::NotChunkedFinal,
        Some(_) if codings.len() == 1 => TransferCoding::Chunked,
        // RFC 9112 §6.1: a sender MUST NOT apply chunked more than once.
        Some(_) if codings.iter().filter(|c| is_chunked(c)).count() > 1 => {
            TransferCoding::Unsupported("chunked applied more than once".into())
        }
        Some(_) => TransferCoding::Unsupported(format!(
            "unsupported transfer coding {:?}",
            String::from_utf8_lossy(codings[0])
        )),
    }
}

/// The Content-Length (RFC 9110 §8.6): every element of every field must be 1*DIGIT and
/// all must agree; identical repeats collapse to one.
fn content_length(headers: &Headers) -> Result<Option<u64>, HeadError> {
    let mut found: Option<u64> = None;
    for item in list_items(headers, "content-length") {
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return Err(bad_framing(format!(
                "invalid Content-Length {:?}",
                String::from_utf8_lossy(item)
            )));
        }
        let n = item
            .iter()
            .try_fold(0u64, |acc, d| {
                acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .ok_or_else(|| bad_framing("Content-Length overflows"))?;
        match found {
            Some(prev) if prev != n => {
                return Err(bad_framing(format!(
                    "conflicting Content-Length {prev} and {n}"
                )))
            }
            _ => found = Some(n),
        }
    }
    Ok(found)
}

impl RequestHead {
    /// How the request body is delimited (RFC 9112 §6.3), refusing anything ambiguous since
    /// a proxy that disagrees with the next hop about message boundaries enables smuggling
    /// (RFC 9112 §11.2).
    pub fn body_kind(&self) -> Result<BodyKind, HeadError> {
        let te = transfer_coding(&self.headers);
        if te != TransferCoding::Absent {
            // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means broken framing.
            if self.version == Version::Http10 {
                return Err(bad_framing("Transfer-Encoding in an HTTP/1.0 request"));
            }
            // RFC 9112 §6.3 item 3: "ought to be handled as an error".
            if self.headers.contains("content-length") {
                return Err(bad_framing("both Transfer-Encoding and Content-Length"));
            }
            return match te {
                TransferCoding::Chunked => Ok(BodyKind::Chunked),
                // RFC 9112 §6.3 item 4: a request whose final coding isn't chunked → 400.
                TransferCoding::NotChunkedFinal => {
                    Err(bad_framing("final transfer coding is not chunked"))
                }
                TransferCoding::Unsupported(why) => Err(bad_framing(why)),
                TransferCoding::Absent => unreachable!(),
            };
        }
        // RFC 9112 §6.3 item 7: no framing fields → no body.
        Ok(content_length(&self.headers)?.map_or(BodyKind::None, BodyKind::Length))
    }

    /// Whether the client connection may carry another request (RFC 9112 §9.3).
    pub fn keep_alive(&self) -> bool {
        connection_persists(self.version, &self.headers)
    }

    /// Serialises the head as sent: request line, fields, empty line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.push(b' ');
        out.extend_from_slice(version_str(self.version).as_bytes());
        out.extend_from_slice(b"\r\n");
        write_fields(&self.headers, out);
    }
}

impl ResponseHead {
    /// How the response body is delimited (RFC 9112 §6.3), given the request's method.
    pub fn body_kind(&self, request_method: &str) -> Result<BodyKind, HeadError> {
        // Item 1: never a body after HEAD, 1xx, 204 or 304. Methods are case-sensitive
        // (RFC 9110 §9.1).
        if request_method == "HEAD"
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            return Ok(BodyKind::None);
        }
        // Item 2: a 2xx to CONNECT switches to a tunnel.
        if request_method == "CONNECT" && (200..300).contains(&self.status) {
            return Ok(BodyKind::None);
        }
        match transfer_coding(&self.headers) {
            TransferCoding::Absent => {}
            // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            _ if self.version == Version::Http10 => {
                return Err(bad_framing("Transfer-Encoding in an HTTP/1.0 response"))
            }
            // Item 3: Transfer-Encoding overrides Content-Length (keep_alive() then says no).
            TransferCoding::Chunked => return Ok(BodyKind::Chunked),
            // Item 4 would read a response whose final coding is not chunked until
            // close; but we only undo chunked, and Transfer-Encoding is hop-by-hop and
            // stripped, so relaying or storing such a body would hand out the still-coded
            // bytes as the representation (e.g. gzip bytes without any field saying so).
            // Refused instead (→ 502, nothing stored), like `gzip, chunked` below.
            TransferCoding::NotChunkedFinal => {
                return Err(bad_framing(
                    "response transfer coding is not a final chunked",
                ))
            }
            // We only undo chunked; forwarding a still-coded body after stripping
            // Transfer-Encoding (hop-by-hop) would corrupt it, so refuse (→ 502 upstream).
            TransferCoding::Unsupported(why) => return Err(bad_framing(why)),
        }
        // Items 5–6, then 8: without framing the body runs until close.
        Ok(content_length(&self.headers)?.map_or(BodyKind::UntilClose, BodyKind::Length))
    }

    /// Whether the upstream connection may be reused after this response. Conservative: it
    /// says no when the framing is doubtful (CL+TE, RFC 9112 §6.3 item 3) or the body would
    /// run until close. Not knowing the request method, it assumes one that allows a body,
    /// so a HEAD response without Content-Length also answers no.
    pub fn keep_alive(&self) -> bool {
        if !connection_persists(self.version, &self.headers) {
            return false;
        }
        if self.headers.contains("transfer-encoding") && self.headers.contains("content-length") {
            return false;
        }
        matches!(
            self.body_kind("GET"),
            Ok(BodyKind::None | BodyKind::Length(_) | BodyKind::Chunked)
        )
    }

    /// Serialises the head: status line (canonical reason when ours is empty), fields,
    /// empty line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(version_str(self.version).as_bytes());
        out.push(b' ');
        // Status is always three digits on the wire (RFC 9112 §4).
        let status = self.status.min(999);
        out.extend_from_slice(&[
            b'0' + (status / 100) as u8,
            b'0' + (status / 10 % 10) as u8,
            b'0' + (status % 10) as u8,
            b' ',
        ]);
        let reason = if self.reason.is_empty() {
            reason_phrase(self.status)
        } else {
            &self.reason
        };
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        write_fields(&self.headers, out);
    }
}

/// RFC 9112 §9.3: `close` always ends the connection; HTTP/1.1 persists by default,
/// HTTP/1.0 only with `keep-alive` (RFC 9112 Appendix C.2.2).
fn connection_persists(version: Version, headers: &Headers) -> bool {
    if headers.has_token("connection", "close") {
        return false;
    }
    match version {
        Version::Http11 => true,
        Version::Http10 => headers.has_token("connection", "keep-alive"),
    }
}

fn version_str(version: Version) -> &'static str {
    match version {
        Version::Http10 => "HTTP/1.0",
        Version::Http11 => "HTTP/1.1",
    }
}

fn write_fields(headers: &Headers, out: &mut Vec<u8>) {
    for (name, value) in &headers.fields {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The canonical reason phrase of a status code (RFC 9110 §15), "" when unknown.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        508 => "Loop Detected",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Parses a request head from the bytes read so far (RFC 9112 §2–§5).
pub fn parse_request(buf: &[u8]) -> Result<Parsed<RequestHead>, HeadError> {
    // Never look past the limit: a complete head must fit in MAX_HEAD_BYTES, so a longer
    // buffer without one is TooLarge and the parser's work stays bounded.
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    // httparse skips leading empty lines (RFC 9112 §2.2); bare LFs are refused below.
    let len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return partial_or_too_large(buf.len()),
        Err(e) => return Err(from_httparse(e)),
    };
    check_line_endings(&window[..len])?;
    let method = req.method.unwrap_or_default();
    if method.is_empty() {
        return Err(malformed("empty method"));
    }
    let target = req.path.unwrap_or_default();
    // RFC 9112 §3.2: the target has no whitespace or controls (httparse already refuses
    // them; kept so the guarantee does not hinge on a dependency's table).
    if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(malformed("invalid request target"));
    }
    let headers = collect_headers(req.headers);
    // RFC 9112 §3.2: more than one Host field line → 400.
    if headers.get_all("host").nth(1).is_some() {
        return Err(malformed("more than one Host field"));
    }
    Ok(Parsed::Complete(
        RequestHead {
            method: method.to_string(),
            target: target.to_string(),
            version: to_version(req.version)?,
            headers,
        },
        len,
    ))
}

/// Parses a response head from the bytes read so far (RFC 9112 §4–§5).
pub fn parse_response(buf: &[u8]) -> Result<Parsed<ResponseHead>, HeadError> {
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return partial_or_too_large(buf.len()),
        Err(e) => return Err(from_httparse(e)),
    };
    check_line_endings(&window[..len])?;
    let status = res.code.unwrap_or_default();
    // RFC 9110 §15: values outside 100..=599 are invalid.
    if !(100..=599).contains(&status) {
        return Err(malformed(format!("invalid status code {status}")));
    }
    Ok(Parsed::Complete(
        ResponseHead {
            version: to_version(res.version)?,
            status,
            reason: res.reason.unwrap_or_default().to_string(),
            headers: collect_headers(res.headers),
        },
        len,
    ))
}

fn partial_or_too_large<T>(buffered: usize) -> Result<Parsed<T>, HeadError> {
    if buffered > MAX_HEAD_BYTES {
        Err(HeadError::TooLarge)
    } else {
        Ok(Parsed::Partial)
    }
}

/// httparse accepts a bare LF as a line end; we do not (RFC 9112 §2.2 makes it optional),
/// because peers that disagree on line ends disagree on where fields end.
fn check_line_endings(head: &[u8]) -> Result<(), HeadError> {
    let mut prev = 0u8;
    for &b in head {
        if b == b'\n' && prev != b'\r' {
            return Err(malformed("bare LF line ending"));
        }
        prev = b;
    }
    Ok(())
}

fn from_httparse(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        // Also obs-fold (a line starting with whitespace fails as a header name, RFC 9112
        // §5.2) and whitespace before the colon (RFC 9112 §5.1): both → 400.
        other => malformed(other.to_string()),
    }
}

fn to_version(minor: Option<u8>) -> Result<Version, HeadError> {
    match minor {
        Some(0) => Ok(Version::Http10),
        Some(1) => Ok(Version::Http11),
        _ => Err(malformed("unsupported HTTP version")),
    }
}

fn collect_headers(raw: &[httparse::Header<'_>]) -> Headers {
    Headers {
        fields: raw
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One exact expected outcome of parsing a request head and framing its body.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        Body(BodyKind),
        Malformed,
        BadFraming,
        TooLarge,
        TooManyHeaders,
    }

    fn classify(e: &HeadError) -> Outcome {
        match e {
            HeadError::TooLarge => Outcome::TooLarge,
            HeadError::TooManyHeaders => Outcome::TooManyHeaders,
            HeadError::Malformed(_) => Outcome::Malformed,
            HeadError::BadFraming(_) => Outcome::BadFraming,
        }
    }

    fn request(raw: &[u8]) -> RequestHead {
        match parse_request(raw) {
            Ok(Parsed::Complete(head, _)) => head,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn response(raw: &[u8]) -> ResponseHead {
        match parse_response(raw) {
            Ok(Parsed::Complete(head, _)) => head,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn request_outcome(raw: &[u8]) -> Outcome {
        match parse_request(raw) {
            Ok(Parsed::Complete(head, _)) => match head.body_kind() {
                Ok(kind) => Outcome::Body(kind),
                Err(e) => classify(&e),
            },
            Ok(Parsed::Partial) => panic!("partial: {:?}", String::from_utf8_lossy(raw)),
            Err(e) => classify(&e),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        Headers {
            fields: pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// Valid requests: raw bytes (head then possibly body bytes), head length, method,
    /// target, version, number of fields, body kind, keep-alive.
    #[allow(clippy::type_complexity)]
    const VALID_REQUESTS: &[(&[u8], usize, &str, &str, Version, usize, BodyKind, bool)] = &[
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            27,
            "GET",
            "/",
            Version::Http11,
            1,
            BodyKind::None,
            true,
        ),
        (
            b"GET http://example.com:8080/a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: curl/8\r\nAccept: */*\r\nProxy-Connection: Keep-Alive\r\n\r\n",
            135,
            "GET",
            "http://example.com:8080/a/b?c=d",
            Version::Http11,
            4,
            BodyKind::None,
            true,
        ),
        (
            b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            53,
            "POST",
            "/upload",
            Version::Http11,
            2,
            BodyKind::Length(5),
            true,
        ),
        (
            b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            75,
            "PUT",
            "/x",
            Version::Http11,
            3,
            BodyKind::Chunked,
            false,
        ),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            59,
            "CONNECT",
            "example.com:443",
            Version::Http11,
            1,
            BodyKind::None,
            true,
        ),
        (
            b"GET /old HTTP/1.0\r\n\r\n",
            21,
            "GET",
            "/old",
            Version::Http10,
            0,
            BodyKind::None,
            false,
        ),
        (
            b"GET /old HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            45,
            "GET",
            "/old",
            Version::Http10,
            1,
            BodyKind::None,
            true,
        ),
        // RFC 9112 §2.2: leading empty lines are ignored.
        (
            b"\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            35,
            "OPTIONS",
            "*",
            Version::Http11,
            1,
            BodyKind::None,
            true,
        ),
        (
            b"DELETE /r HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Tab:\tv\t\r\nContent-Length: 0\r\n\r\n",
            71,
            "DELETE",
            "/r",
            Version::Http11,
            4,
            BodyKind::Length(0),
            true,
        ),
    ];

    #[test]
    fn valid_requests_parse_at_every_split() {
        for &(raw, head_len, method, target, version, nfields, kind, keep) in VALID_REQUESTS {
            let (head, used) = match parse_request(raw) {
                Ok(Parsed::Complete(head, used)) => (head, used),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
            };
            assert_eq!(used, head_len, "{:?}", String::from_utf8_lossy(raw));
            assert_eq!(head.method, method);
            assert_eq!(head.target, target);
            assert_eq!(head.version, version);
            assert_eq!(head.headers.fields.len(), nfields);
            assert_eq!(head.body_kind(), Ok(kind), "{method} {target}");
            assert_eq!(head.keep_alive(), keep, "{method} {target}");
            for cut in 0..raw.len() {
                let got = parse_request(&raw[..cut]).unwrap();
                if cut < head_len {
                    assert_eq!(got, Parsed::Partial, "cut {cut} of {target}");
                } else {
                    assert_eq!(got, Parsed::Complete(head.clone(), used), "cut {cut}");
                }
            }
        }
    }

    #[test]
    fn parsed_fields_keep_case_and_order() {
        let head = request(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a:  2  \r\n\r\n");
        assert_eq!(
            head.headers,
            headers(&[("Host", "a"), ("X-A", "1"), ("x-a", "2")])
        );
    }

    /// Framing and smuggling cases (RFC 9112 §6.3, §11.2): each with one exact outcome.
    const REQUEST_OUTCOMES: &[(&[u8], Outcome)] = &[
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n",
            Outcome::Body(BodyKind::Chunked),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked\r\n\r\n",
            Outcome::Body(BodyKind::Chunked),
        ),
        // RFC 9112 §5.1: no whitespace between field name and colon → 400.
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            Outcome::Malformed,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n",
            Outcome::Malformed,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            Outcome::Body(BodyKind::Length(5)),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            Outcome::Body(BodyKind::Length(5)),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n",
            Outcome::Body(BodyKind::Length(u64::MAX)),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
            Outcome::BadFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n",
            Outcome::Body(BodyKind::Length(7)),
        ),
        // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            Outcome::BadFraming,
        ),
        // RFC 9112 §5.2: obs-fold in a request → 400.
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
            Outcome::Malformed,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n\ttwo\r\n\r\n",
            Outcome::Malformed,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\nX-Foo: b\r\n\r\n",
            Outcome::Malformed,
        ),
        (b"GET / HTTP/1.1\nHost: a\n\n", Outcome::Malformed),
        (b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Outcome::Malformed),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Foo: a\rb\r\n\r\n",
            Outcome::Malformed,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Foo: a\0b\r\n\r\n",
            Outcome::Malformed,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Foo: a\x7fb\r\n\r\n",
            Outcome::Malformed,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX Foo: b\r\n\r\n",
            Outcome::Malformed,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n",
            Outcome::Malformed,
        ),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", Outcome::Malformed),
        (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", Outcome::Malformed),
        (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", Outcome::Malformed),
        (b"GET /\r\n\r\n", Outcome::Malformed),
        (b" / HTTP/1.1\r\nHost: a\r\n\r\n", Outcome::Malformed),
        (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", Outcome::Malformed),
        (b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", Outcome::Malformed),
        (b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", Outcome::Malformed),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", Outcome::Malformed),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", Outcome::Malformed),
        // RFC 9112 §3.2: more than one Host → 400.
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            Outcome::Malformed,
        ),
    ];

    #[test]
    fn request_framing_and_smuggling_cases() {
        for (raw, expected) in REQUEST_OUTCOMES {
            assert_eq!(
                &request_outcome(raw),
                expected,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn error_cases_at_every_split_are_partial_or_the_same_error() {
        for (raw, expected) in REQUEST_OUTCOMES {
            if matches!(expected, Outcome::Body(_) | Outcome::BadFraming) {
                continue;
            }
            for cut in 0..raw.len() {
                match parse_request(&raw[..cut]) {
                    Ok(Parsed::Partial) => {}
                    Err(e) => assert_eq!(&classify(&e), expected, "cut {cut}"),
                    Ok(Parsed::Complete(..)) => panic!("complete at cut {cut}"),
                }
            }
        }
    }

    fn head_of_len(total: usize) -> Vec<u8> {
        let fixed = b"GET / HTTP/1.1\r\nX: \r\n\r\n".len();
        let mut raw = b"GET / HTTP/1.1\r\nX: ".to_vec();
        raw.resize(total - 4, b'a');
        raw.extend_from_slice(b"\r\n\r\n");
        assert!(total > fixed && raw.len() == total);
        raw
    }

    #[test]
    fn head_size_limit() {
        let at_limit = head_of_len(MAX_HEAD_BYTES);
        assert!(matches!(
            parse_request(&at_limit),
            Ok(Parsed::Complete(_, n)) if n == MAX_HEAD_BYTES
        ));
        let over = head_of_len(MAX_HEAD_BYTES + 1);
        assert_eq!(parse_request(&over), Err(HeadError::TooLarge));
        // Incomplete: Partial up to the limit, TooLarge one byte past it.
        assert_eq!(parse_request(&over[..MAX_HEAD_BYTES]), Ok(Parsed::Partial));
        assert_eq!(
            parse_request(&over[..MAX_HEAD_BYTES + 1]),
            Err(HeadError::TooLarge)
        );
        let mut resp = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        resp.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(parse_response(&resp), Err(HeadError::TooLarge));
        assert_eq!(HeadError::TooLarge.status(), 431);
    }

    fn head_with_fields(n: usize) -> Vec<u8> {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    }

    #[test]
    fn header_count_limit() {
        let head = request(&head_with_fields(MAX_HEADERS));
        assert_eq!(head.headers.fields.len(), MAX_HEADERS);
        let err = parse_request(&head_with_fields(MAX_HEADERS + 1)).unwrap_err();
        assert_eq!(err, HeadError::TooManyHeaders);
        assert_eq!(err.status(), 431);
    }

    #[test]
    fn error_statuses_and_messages() {
        let e = parse_request(b"GET / HTTP/2.0\r\n\r\n").unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().starts_with("malformed head"), "{e}");
        let e = HeadError::BadFraming("x".into());
        assert_eq!(
            (e.status(), e.to_string()),
            (400, "bad message framing: x".into())
        );
        assert_eq!(
            HeadError::TooManyHeaders.to_string(),
            "more than 128 header fields"
        );
    }

    #[test]
    fn request_keep_alive() {
        let cases: &[(&[u8], bool)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (
                b"GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
                false,
            ),
        ];
        for (raw, keep) in cases {
            assert_eq!(
                request(raw).keep_alive(),
                *keep,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn responses_parse_at_every_split() {
        let cases: &[(&[u8], usize, u16, &str, Version)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
                38,
                200,
                "OK",
                Version::Http11,
            ),
            (
                b"HTTP/1.0 404 Not Found\r\n\r\n",
                26,
                404,
                "Not Found",
                Version::Http10,
            ),
            (
                b"HTTP/1.1 204\r\nDate: x\r\n\r\n",
                25,
                204,
                "",
                Version::Http11,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
                25,
                100,
                "Continue",
                Version::Http11,
            ),
        ];
        for &(raw, head_len, status, reason, version) in cases {
            let head = response(raw);
            assert_eq!(
                (head.status, head.reason.as_str(), head.version),
                (status, reason, version)
            );
            for cut in 0..raw.len() {
                let got = parse_response(&raw[..cut]).unwrap();
                if cut < head_len {
                    assert_eq!(got, Parsed::Partial, "cut {cut}");
                } else {
                    assert_eq!(got, Parsed::Complete(head.clone(), head_len), "cut {cut}");
                }
            }
        }
    }

    #[test]
    fn malformed_responses() {
        let cases: &[&[u8]] = &[
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 600 High\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 5\n\n",
            b"HTTP/1.1 200 OK\r\nX: \0\r\n\r\n",
        ];
        for raw in cases {
            assert!(
                matches!(parse_response(raw), Err(HeadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn response_body_kind() {
        type Case = (&'static [u8], &'static str, Result<BodyKind, Outcome>, bool);
        let cases: &[Case] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                "GET",
                Ok(BodyKind::Length(10)),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                "HEAD",
                Ok(BodyKind::None),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "HEAD",
                Ok(BodyKind::None),
                true,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
                "GET",
                Ok(BodyKind::None),
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
                "GET",
                Ok(BodyKind::None),
                true,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
                "GET",
                Ok(BodyKind::None),
                true,
            ),
            (
                b"HTTP/1.1 200 Connection established\r\n\r\n",
                "CONNECT",
                Ok(BodyKind::None),
                false,
            ),
            (
                b"HTTP/1.1 407 Auth\r\nContent-Length: 4\r\n\r\n",
                "CONNECT",
                Ok(BodyKind::Length(4)),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "GET",
                Ok(BodyKind::Chunked),
                true,
            ),
            // RFC 9112 §6.3 item 3: TE overrides CL; the connection must not be reused.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                "GET",
                Ok(BodyKind::Chunked),
                false,
            ),
            // Item 4: final coding not chunked → refused (we cannot undo it, see
            // body_kind), with or without a Content-Length, and never kept alive.
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                "GET",
                Err(Outcome::BadFraming),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                "GET",
                Err(Outcome::BadFraming),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n",
                "GET",
                Err(Outcome::BadFraming),
                false,
            ),
            // Bodiless responses never read a body, whatever their framing says.
            (
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip\r\n\r\n",
                "GET",
                Ok(BodyKind::None),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "GET",
                Err(Outcome::BadFraming),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                "GET",
                Err(Outcome::BadFraming),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
                "GET",
                Err(Outcome::BadFraming),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                "GET",
                Err(Outcome::BadFraming),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
                "GET",
                Ok(BodyKind::Length(3)),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "GET",
                Err(Outcome::BadFraming),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                "GET",
                Ok(BodyKind::UntilClose),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                "GET",
                Ok(BodyKind::Length(0)),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                "GET",
                Ok(BodyKind::Length(1)),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
                "GET",
                Ok(BodyKind::Length(1)),
                true,
            ),
        ];
        for (raw, method, kind, keep) in cases {
            let head = response(raw);
            let got = head.body_kind(method).map_err(|e| classify(&e));
            assert_eq!(&got, kind, "{method} {:?}", String::from_utf8_lossy(raw));
            assert_eq!(
                head.keep_alive(),
                *keep,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn write_to_round_trips() {
        let raw: &[u8] =
            b"GET http://a.example/x?y HTTP/1.1\r\nHost: a.example\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n";
        let mut out = Vec::new();
        request(raw).write_to(&mut out);
        assert_eq!(out, raw);
        let raw: &[u8] = b"HTTP/1.0 404 Gone Fishing\r\nContent-Length: 0\r\n\r\n";
        let mut out = Vec::new();
        response(raw).write_to(&mut out);
        assert_eq!(out, raw);
    }

    #[test]
    fn write_to_fills_missing_reason() {
        let mut out = Vec::new();
        ResponseHead {
            version: Version::Http11,
            status: 204,
            reason: String::new(),
            headers: headers(&[("Date", "x")]),
        }
        .write_to(&mut out);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n");
        let mut out = Vec::new();
        ResponseHead {
            version: Version::Http11,
            status: 599,
            reason: String::new(),
            headers: Headers::default(),
        }
        .write_to(&mut out);
        assert_eq!(out, b"HTTP/1.1 599 \r\n\r\n");
        assert_eq!(reason_phrase(502), "Bad Gateway");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
    }

    #[test]
    fn header_lookups() {
        let h = headers(&[
            ("Host", "a"),
            ("Accept", " text/html "),
            ("accept", "*/*"),
            ("X-Bin", "\u{ff}"),
        ]);
        assert_eq!(h.get("ACCEPT"), Some(&b" text/html "[..]));
        assert_eq!(h.get_str("accept"), Some("text/html"));
        assert_eq!(h.get("missing"), None);
        assert_eq!(h.get_str("missing"), None);
        let all: Vec<&[u8]> = h.get_all("Accept").collect();
        assert_eq!(all, vec![&b" text/html "[..], &b"*/*"[..]]);
        assert!(h.contains("host") && !h.contains("hostx"));
        let mut raw = h.clone();
        raw.fields[3].1 = vec![0xff];
        assert_eq!(raw.get_str("x-bin"), None);
    }

    #[test]
    fn header_mutation() {
        let mut h = headers(&[("A", "1"), ("B", "2"), ("a", "3"), ("C", "4")]);
        h.set("a", "x");
        assert_eq!(h, headers(&[("A", "x"), ("B", "2"), ("C", "4")]));
        h.set("D", b"5".to_vec());
        h.append("b", "6");
        assert_eq!(
            h,
            headers(&[("A", "x"), ("B", "2"), ("C", "4"), ("D", "5"), ("b", "6")])
        );
        assert_eq!(h.remove("B"), 2);
        assert_eq!(h.remove("B"), 0);
        assert_eq!(h, headers(&[("A", "x"), ("C", "4"), ("D", "5")]));
    }

    #[test]
    fn has_token_reads_lists_across_fields() {
        let h = headers(&[
            ("Connection", "keep-alive ,\tUpgrade"),
            ("connection", ",X-Foo"),
        ]);
        assert!(h.has_token("connection", "upgrade"));
        assert!(h.has_token("Connection", "KEEP-ALIVE"));
        assert!(h.has_token("connection", "x-foo"));
        assert!(!h.has_token("connection", "close"));
        assert!(!h.has_token("connection", "keep"));
        assert!(!h.has_token("upgrade", "upgrade"));
    }

    #[test]
    fn strip_hop_by_hop_removes_connection_fields_and_named_ones() {
        let mut h = headers(&[
            ("Host", "a"),
            ("Connection", "close, X-Foo"),
            ("X-Foo", "secret"),
            ("x-foo", "again"),
            ("X-Bar", "kept"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authenticate", "Basic"),
            ("Proxy-Authorization", "Basic Zm9v"),
            ("TE", "trailers"),
            ("Trailer", "X-Sum"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "websocket"),
            ("Content-Length", "3"),
        ]);
        h.strip_hop_by_hop();
        assert_eq!(
            h,
            headers(&[("Host", "a"), ("X-Bar", "kept"), ("Content-Length", "3")])
        );
    }
}
