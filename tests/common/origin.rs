//! An in-test HTTP/1.1 origin server on 127.0.0.1:0: one thread per connection,
//! keep-alive, request recording and counters, and responses that can misbehave on
//! purpose (delays, closes, resets, aborted bodies).

use super::gen;
use super::wire::{self, Framing, Wire, DEFAULT_IO_TIMEOUT};
use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Largest request head the origin reads (bigger than the proxy's 64 KiB limit, so the
/// origin never is the component that refuses).
const MAX_REQUEST_HEAD: usize = 256 * 1024;
/// Header fields the origin parses per request.
const MAX_REQUEST_FIELDS: usize = 512;

/// Fixed validators served by [`static_validated`].
pub const STATIC_ETAG: &str = "\"v1\"";
pub const STATIC_LAST_MODIFIED: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Request target exactly as sent (a proxy must send origin form, `/path?q`).
    pub target: String,
    /// Minor HTTP version (1 for HTTP/1.1).
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which accepted connection (0-based) carried it.
    pub conn: u64,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }

    /// Target without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

#[derive(Debug, Clone)]
pub enum Body {
    /// No body and no framing header (for 204/304, or a deliberate empty response).
    Empty,
    /// Sent with Content-Length.
    Full(Vec<u8>),
    /// Sent with Transfer-Encoding: chunked, one chunk per element (empty elements skipped).
    Chunked(Vec<Vec<u8>>),
    /// No Content-Length; the end of the body is the origin closing the connection.
    CloseDelimited(Vec<u8>),
    /// `len` bytes of [`gen`] pattern, streamed block by block, never buffered whole.
    Generated { len: u64, chunked: bool },
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Full(b) | Body::CloseDelimited(b) => b.len() as u64,
            Body::Chunked(c) => c.iter().map(|c| c.len() as u64).sum(),
            Body::Generated { len, .. } => *len,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection (FIN) instead of answering.
    CloseBeforeHead,
    /// Reset the connection (RST, via SO_LINGER 0) instead of answering.
    ResetBeforeHead,
    /// Send the head promising the full body, then only this many body bytes, then close.
    AbortBodyAfter(u64),
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Extra header fields; framing fields are added from `body` unless already present.
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Wait this long before sending the head.
    pub head_delay: Duration,
    /// Wait this long between the head and the body.
    pub body_delay: Duration,
    /// Wait this long between chunks (chunked bodies) or blocks (generated bodies).
    pub chunk_delay: Duration,
    /// Wait this long before the last chunk (`0\r\n\r\n`) of a chunked body.
    pub end_delay: Duration,
    pub fault: Option<Fault>,
}

impl Response {
    pub fn new(status: u16, body: Body) -> Response {
        Response {
            status,
            reason: reason(status).to_string(),
            headers: Vec::new(),
            body,
            head_delay: Duration::ZERO,
            body_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            end_delay: Duration::ZERO,
            fault: None,
        }
    }
    pub fn ok(body: impl Into<Vec<u8>>) -> Response {
        Response::new(200, Body::Full(body.into()))
    }
    pub fn status(status: u16) -> Response {
        let body = if status == 204 || status == 304 {
            Body::Empty
        } else {
            Body::Full(Vec::new())
        };
        Response::new(status, body)
    }
    pub fn chunked(chunks: &[&[u8]]) -> Response {
        Response::new(
            200,
            Body::Chunked(chunks.iter().map(|c| c.to_vec()).collect()),
        )
    }
    pub fn close_delimited(body: impl Into<Vec<u8>>) -> Response {
        Response::new(200, Body::CloseDelimited(body.into()))
    }
    pub fn generated(len: u64) -> Response {
        Response::new(
            200,
            Body::Generated {
                len,
                chunked: false,
            },
        )
    }
    pub fn generated_chunked(len: u64) -> Response {
        Response::new(200, Body::Generated { len, chunked: true })
    }
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn head_delay(mut self, d: Duration) -> Response {
        self.head_delay = d;
        self
    }
    pub fn body_delay(mut self, d: Duration) -> Response {
        self.body_delay = d;
        self
    }
    pub fn chunk_delay(mut self, d: Duration) -> Response {
        self.chunk_delay = d;
        self
    }
    pub fn end_delay(mut self, d: Duration) -> Response {
        self.end_delay = d;
        self
    }
    pub fn fault(mut self, f: Fault) -> Response {
        self.fault = Some(f);
        self
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// Counters; a snapshot is returned by [`Origin::stats`].
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub connections: u64,
    pub requests: u64,
    /// Requests per target as received (path plus query).
    pub per_target: HashMap<String, u64>,
    /// 200 responses whose whole body was written (HEAD not counted).
    pub full_bodies: u64,
    pub not_modified: u64,
    /// Body bytes written, all responses.
    pub body_bytes: u64,
    /// Requests whose response is over: written whole, cut by a fault, or failed on a
    /// connection that went away. `answered == requests` means the origin is idle.
    pub answered: u64,
}

/// How long [`Origin::settled`] waits for the responses in progress to end.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

struct Shared {
    handler: Box<Handler>,
    stats: Mutex<Stats>,
    requests: Mutex<Vec<Request>>,
    /// Signalled whenever stats change, for `wait_requests`.
    changed: Condvar,
    /// Live connections by id, so Drop can shut them down. A connection thread removes
    /// its entry before it closes, so the duplicate fd never keeps a socket open.
    conns: Mutex<HashMap<u64, TcpStream>>,
    stop: AtomicBool,
}

pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Origin {
    /// Starts an origin answering every request with `handler`.
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            stats: Mutex::new(Stats::default()),
            requests: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::Builder::new()
            .name("origin-accept".into())
            .spawn(move || accept_loop(listener, s))
            .unwrap();
        Origin { addr, shared }
    }

    /// Starts an origin with [`standard_routes`].
    pub fn standard() -> Origin {
        Origin::start(standard_routes)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, as used in Host and absolute-form targets.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().unwrap().clone()
    }
    pub fn connections(&self) -> u64 {
        self.stats().connections
    }
    pub fn requests_total(&self) -> u64 {
        self.stats().requests
    }
    /// Requests for exactly this target (path plus query, as received).
    pub fn requests_for(&self, target: &str) -> u64 {
        self.stats().per_target.get(target).copied().unwrap_or(0)
    }
    /// Requests whose path (query ignored) is `path`.
    pub fn requests_for_path(&self, path: &str) -> u64 {
        let stats = self.stats();
        stats
            .per_target
            .iter()
            .filter(|(t, _)| t.split('?').next() == Some(path))
            .map(|(_, n)| n)
            .sum()
    }
    pub fn full_bodies(&self) -> u64 {
        self.stats().full_bodies
    }
    pub fn not_modified(&self) -> u64 {
        self.stats().not_modified
    }
    pub fn body_bytes(&self) -> u64 {
        self.stats().body_bytes
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }
    pub fn last_request(&self) -> Option<Request> {
        self.shared.requests.lock().unwrap().last().cloned()
    }

    /// The counters once every request received so far has been answered (each
    /// response's counters are final only after its last write, which can trail the
    /// client by a moment). A client holding a whole response means the requests it
    /// caused have arrived, so this is the one way tests read counters they assert on.
    /// After [`SETTLE_TIMEOUT`] it returns the counters as they are (the assertion on
    /// them then names the mismatch).
    pub fn settled(&self) -> Stats {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut stats = self.shared.stats.lock().unwrap();
        while stats.answered < stats.requests {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            stats = self
                .shared
                .changed
                .wait_timeout(stats, deadline - now)
                .unwrap()
                .0;
        }
        stats.clone()
    }

    /// Blocks until at least `n` requests have arrived; false on timeout.
    pub fn wait_requests(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut stats = self.shared.stats.lock().unwrap();
        while stats.requests < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stats = self
                .shared
                .changed
                .wait_timeout(stats, deadline - now)
                .unwrap()
                .0;
        }
        true
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, then cut every live connection so no thread lingers.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for (_, c) in self.shared.conns.lock().unwrap().drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for (n, stream) in listener.incoming().enumerate() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        {
            let mut stats = shared.stats.lock().unwrap();
            stats.connections += 1;
            shared.changed.notify_all();
        }
        if let Ok(c) = stream.try_clone() {
            shared.conns.lock().unwrap().insert(n as u64, c);
        }
        let s = shared.clone();
        thread::Builder::new()
            .name(format!("origin-conn-{n}"))
            .spawn(move || {
                let reset = serve(stream, n as u64, &s);
                let dup = s.conns.lock().unwrap().remove(&(n as u64));
                // For a reset the last fd must go without a FIN: drop (close) only.
                if !reset {
                    if let Some(d) = dup {
                        let _ = d.shutdown(Shutdown::Both);
                    }
                }
            })
            .unwrap();
    }
}

/// Serves requests until the connection ends; true when it ended with a reset, in which
/// case the socket was not shut down (the caller must just close the last fd).
fn serve(stream: TcpStream, conn: u64, shared: &Shared) -> bool {
    wire::set_timeouts(&stream, DEFAULT_IO_TIMEOUT);
    let mut w = Wire::new(stream);
    loop {
        let Ok(Some(head)) = w.read_head(MAX_REQUEST_HEAD) else {
            return false;
        };
        let mut fields = vec![httparse::EMPTY_HEADER; MAX_REQUEST_FIELDS];
        let mut parsed = httparse::Request::new(&mut fields);
        if !matches!(parsed.parse(&head), Ok(httparse::Status::Complete(_))) {
            let _ = w.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return false;
        }
        let headers = wire::owned_headers(parsed.headers);
        let framing = if wire::has_token(&headers, "transfer-encoding", "chunked") {
            Framing::Chunked
        } else if let Some(cl) = wire::header(&headers, "content-length") {
            Framing::Length(cl.trim().parse().unwrap_or(0))
        } else {
            Framing::None
        };
        let Ok(body) = w.read_body_vec(framing) else {
            return false;
        };
        let req = Request {
            method: parsed.method.unwrap_or("").to_string(),
            target: parsed.path.unwrap_or("").to_string(),
            version: parsed.version.unwrap_or(1),
            headers,
            body,
            conn,
        };
        {
            let mut stats = shared.stats.lock().unwrap();
            stats.requests += 1;
            *stats.per_target.entry(req.target.clone()).or_default() += 1;
            shared.requests.lock().unwrap().push(req.clone());
            shared.changed.notify_all();
        }
        let resp = (shared.handler)(&req);
        // RFC 9112 §9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive".
        let client_keep = if req.version == 0 {
            wire::has_token(&req.headers, "connection", "keep-alive")
        } else {
            !wire::has_token(&req.headers, "connection", "close")
        };
        let written = write_response(&mut w, &req, resp, client_keep, shared);
        {
            let mut stats = shared.stats.lock().unwrap();
            stats.answered += 1;
            shared.changed.notify_all();
        }
        match written {
            Ok(Next::Keep) => continue,
            Ok(Next::Reset) => return true,
            _ => {
                let _ = w.stream.shutdown(Shutdown::Both);
                return false;
            }
        }
    }
}

/// What happens to the connection after a response.
enum Next {
    Keep,
    Close,
    Reset,
}

/// Writes one response and says whether the connection may carry another request.
/// Its sleeps (`head_delay`, `body_delay`, `chunk_delay`, `end_delay`) are the origin's
/// scripted slowness that a test asks for, not synchronisation: nothing waits on them.
fn write_response(
    w: &mut Wire,
    req: &Request,
    resp: Response,
    client_keep: bool,
    shared: &Shared,
) -> std::io::Result<Next> {
    if !resp.head_delay.is_zero() {
        thread::sleep(resp.head_delay);
    }
    match resp.fault {
        Some(Fault::CloseBeforeHead) => return Ok(Next::Close),
        Some(Fault::ResetBeforeHead) => {
            // Closing the socket now sends RST; shutdown() would send FIN first.
            set_linger_zero(&w.stream);
            return Ok(Next::Reset);
        }
        _ => {}
    }
    let no_body =
        req.method == "HEAD" || resp.status == 204 || resp.status == 304 || resp.status < 200;
    let mut keep = client_keep;
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, resp.reason);
    for (n, v) in &resp.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    let has = |name: &str| wire::header(&resp.headers, name).is_some();
    let chunked = match &resp.body {
        Body::Empty => false,
        Body::Full(_) | Body::Generated { chunked: false, .. } => {
            if !has("content-length") {
                head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
            }
            false
        }
        Body::Chunked(_) | Body::Generated { chunked: true, .. } => {
            if !has("transfer-encoding") {
                head.push_str("Transfer-Encoding: chunked\r\n");
            }
            true
        }
        Body::CloseDelimited(_) => {
            keep = false;
            false
        }
    };
    if !keep && !wire::has_token(&resp.headers, "connection", "close") {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    if resp.status == 304 {
        shared.stats.lock().unwrap().not_modified += 1;
    }
    let next = if keep { Next::Keep } else { Next::Close };
    if no_body {
        return Ok(next);
    }
    if !resp.body_delay.is_zero() {
        thread::sleep(resp.body_delay);
    }

    let limit = match resp.fault {
        Some(Fault::AbortBodyAfter(n)) => n,
        _ => u64::MAX,
    };
    let mut sent = 0u64;
    let mut aborted = false;
    // Writes body bytes, honouring the abort limit; false once the limit is reached.
    let mut put = |stream: &mut TcpStream, data: &[u8], chunked: bool| -> std::io::Result<bool> {
        let room = limit - sent;
        let take = (data.len() as u64).min(room) as usize;
        if chunked && take > 0 {
            stream.write_all(format!("{take:x}\r\n").as_bytes())?;
        }
        stream.write_all(&data[..take])?;
        sent += take as u64;
        shared.stats.lock().unwrap().body_bytes += take as u64;
        if take < data.len() || sent == limit {
            aborted = true;
            return Ok(false);
        }
        if chunked && take > 0 {
            stream.write_all(b"\r\n")?;
        }
        Ok(true)
    };
    let s = &mut w.stream;
    match &resp.body {
        Body::Empty => {}
        Body::Full(b) | Body::CloseDelimited(b) => {
            put(s, b, false)?;
        }
        Body::Chunked(chunks) => {
            for (i, c) in chunks.iter().filter(|c| !c.is_empty()).enumerate() {
                if i > 0 && !resp.chunk_delay.is_zero() {
                    thread::sleep(resp.chunk_delay);
                }
                if !put(s, c, true)? {
                    break;
                }
            }
        }
        Body::Generated { len, chunked } => {
            let pattern = gen::pattern();
            let mut left = *len;
            while left > 0 {
                let n = left.min(gen::BLOCK as u64) as usize;
                if !put(s, &pattern[..n], *chunked)? {
                    break;
                }
                left -= n as u64;
                if left > 0 && !resp.chunk_delay.is_zero() {
                    thread::sleep(resp.chunk_delay);
                }
            }
        }
    }
    if aborted {
        return Ok(Next::Close);
    }
    if chunked {
        if !resp.end_delay.is_zero() {
            s.flush()?;
            thread::sleep(resp.end_delay);
        }
        s.write_all(b"0\r\n\r\n")?;
    }
    if resp.status == 200 {
        shared.stats.lock().unwrap().full_bodies += 1;
    }
    Ok(next)
}

fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd owned by `stream`, and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Static body with an ETag and Last-Modified; answers a matching If-None-Match, or
/// (only without If-None-Match, RFC 9110 §13.1.3) an If-Modified-Since not older than
/// Last-Modified, with 304.
pub fn static_validated(req: &Request, body: &[u8], etag: &str, last_modified: &str) -> Response {
    let not_modified = if let Some(inm) = req.header("if-none-match") {
        inm.split(',')
            .map(str::trim)
            .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
    } else if let Some(ims) = req.header("if-modified-since") {
        // Exact match is what a cache sends back (it echoes the stored Last-Modified).
        ims.trim() == last_modified
    } else {
        false
    };
    let resp = if not_modified {
        Response::status(304)
    } else {
        Response::ok(body.to_vec())
    };
    resp.header("ETag", etag)
        .header("Last-Modified", last_modified)
}

/// Echoes the request body (whatever its framing) with Content-Length.
pub fn echo(req: &Request) -> Response {
    Response::ok(req.body.clone()).header("X-Echo-Method", &req.method)
}

/// Body served at `/static/...` by [`standard_routes`].
pub fn static_body(path: &str) -> Vec<u8> {
    format!("static body for {path}\n").repeat(8).into_bytes()
}

/// Chunks served at `/chunked` by [`standard_routes`].
pub const CHUNKS: [&[u8]; 3] = [b"hello ", b"chunked ", b"world"];
/// Body served at `/close` by [`standard_routes`].
pub const CLOSE_BODY: &[u8] = b"close-delimited body, ends at EOF";

/// Path-routed behaviours (query ignored; numbers are decimal):
/// - `/static/...`: [`static_validated`] with [`static_body`], [`STATIC_ETAG`], [`STATIC_LAST_MODIFIED`]
/// - `/chunked`: [`CHUNKS`] chunked; `/close`: [`CLOSE_BODY`] close-delimited
/// - `/echo`: [`echo`]; `/status/{code}`: empty response with that status
/// - `/delay-head/{ms}`: "delayed" after a delayed head
/// - `/delay-body/{ms}/{len}`: head now, generated body of len after ms
/// - `/close-before-head`, `/reset-before-head`
/// - `/abort/{len}/{after}`: CL len, only `after` bytes then close;
///   `/abort-chunked/{len}/{after}` the same, chunked
/// - `/gen/{len}`, `/gen-chunked/{len}`: generated body
/// - anything else: 404 "not found"
pub fn standard_routes(req: &Request) -> Response {
    let path = req.path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let num = |i: usize| -> u64 { parts.get(i).and_then(|p| p.parse().ok()).unwrap_or(0) };
    let ms = |i: usize| Duration::from_millis(num(i));
    match parts[0] {
        "static" => static_validated(req, &static_body(&path), STATIC_ETAG, STATIC_LAST_MODIFIED),
        "chunked" => Response::chunked(&CHUNKS),
        "close" => Response::close_delimited(CLOSE_BODY),
        "echo" => echo(req),
        "status" => Response::status(num(1) as u16),
        "delay-head" => Response::ok("delayed").head_delay(ms(1)),
        "delay-body" => Response::generated(num(2)).body_delay(ms(1)),
        "close-before-head" => Response::ok("").fault(Fault::CloseBeforeHead),
        "reset-before-head" => Response::ok("").fault(Fault::ResetBeforeHead),
        "abort" => Response::generated(num(1)).fault(Fault::AbortBodyAfter(num(2))),
        "abort-chunked" => Response::generated_chunked(num(1)).fault(Fault::AbortBodyAfter(num(2))),
        "gen" => Response::generated(num(1)),
        "gen-chunked" => Response::generated_chunked(num(1)),
        _ => Response::new(404, Body::Full(b"not found".to_vec())),
    }
}
