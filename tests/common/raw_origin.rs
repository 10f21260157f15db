//! A scripted raw-socket origin on 127.0.0.1:0 for hostile-upstream tests: for each
//! request its handler returns the exact bytes to write (and pauses, marks, a close or a
//! stall), so it can misbehave in ways a well-formed origin cannot: a body after a HEAD
//! response, bytes after a complete body, unsolicited 1xx, odd transfer codings. It
//! records every request (with the connection that carried it) and events: `head N`
//! when a request head arrived on connection N, `closed N` when the peer closed
//! connection N, and the handler's own marks; tests wait on them.

use super::wire::{self, Framing, Wire, DEFAULT_IO_TIMEOUT};
use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const MAX_HEAD: usize = 256 * 1024;
const MAX_FIELDS: usize = 256;

/// A request as the raw origin received it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which accepted connection (0-based) carried it.
    pub conn: u64,
}

impl RawRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }
}

/// One step of an answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes as they are.
    Send(Vec<u8>),
    /// Sleep (the misbehaviour itself: a late byte, a stall).
    Pause(Duration),
    /// Record an event (after the steps before it completed).
    Mark(String),
    /// Shut the connection down (FIN both ways) and stop serving it.
    Close,
    /// Send nothing more and wait until the peer closes the connection.
    Hold,
}

pub fn send(bytes: impl Into<Vec<u8>>) -> Step {
    Step::Send(bytes.into())
}

pub fn mark(name: &str) -> Step {
    Step::Mark(name.to_string())
}

type Handler = dyn Fn(&RawRequest) -> Vec<Step> + Send + Sync;

struct Shared {
    handler: Box<Handler>,
    requests: Mutex<Vec<RawRequest>>,
    events: Mutex<Vec<String>>,
    changed: Condvar,
    conns: Mutex<HashMap<u64, TcpStream>>,
    stop: AtomicBool,
}

impl Shared {
    fn event(&self, e: String) {
        self.events.lock().unwrap().push(e);
        self.changed.notify_all();
    }
}

pub struct RawOrigin {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl RawOrigin {
    pub fn start(handler: impl Fn(&RawRequest) -> Vec<Step> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw origin");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            requests: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::Builder::new()
            .name("raw-origin-accept".into())
            .spawn(move || accept_loop(listener, s))
            .unwrap();
        RawOrigin { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<RawRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn requests_for(&self, target: &str) -> Vec<RawRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.target == target)
            .collect()
    }

    pub fn events(&self) -> Vec<String> {
        self.shared.events.lock().unwrap().clone()
    }

    /// Waits until `event` was recorded; false on timeout.
    pub fn wait_event(&self, event: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut events = self.shared.events.lock().unwrap();
        while !events.iter().any(|e| e == event) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            events = self
                .shared
                .changed
                .wait_timeout(events, deadline - now)
                .unwrap()
                .0;
        }
        true
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
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
        let n = n as u64;
        if let Ok(c) = stream.try_clone() {
            shared.conns.lock().unwrap().insert(n, c);
        }
        let s = shared.clone();
        thread::Builder::new()
            .name(format!("raw-origin-conn-{n}"))
            .spawn(move || {
                serve(stream, n, &s);
                if let Some(d) = s.conns.lock().unwrap().remove(&n) {
                    let _ = d.shutdown(Shutdown::Both);
                }
            })
            .unwrap();
    }
}

/// Reads until the peer closes (or the origin is dropped), then records `closed N`.
fn hold(w: &mut Wire, conn: u64, shared: &Shared) {
    let _ = w.stream.set_read_timeout(None);
    let _ = w.read_body_vec(Framing::Close);
    shared.event(format!("closed {conn}"));
}

fn serve(stream: TcpStream, conn: u64, shared: &Shared) {
    wire::set_timeouts(&stream, DEFAULT_IO_TIMEOUT);
    let mut w = Wire::new(stream);
    loop {
        let head = match w.read_head(MAX_HEAD) {
            Ok(Some(h)) => h,
            _ => {
                shared.event(format!("closed {conn}"));
                return;
            }
        };
        shared.event(format!("head {conn}"));
        let mut fields = vec![httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut parsed = httparse::Request::new(&mut fields);
        if !matches!(parsed.parse(&head), Ok(httparse::Status::Complete(_))) {
            return;
        }
        let headers = wire::owned_headers(parsed.headers);
        let framing = if wire::has_token(&headers, "transfer-encoding", "chunked") {
            Framing::Chunked
        } else if let Some(cl) = wire::header(&headers, "content-length") {
            // Lenient on purpose (first element of a list), so that a proxy that forwards
            // an odd Content-Length still gets its request recorded.
            let first = cl.split(',').next().unwrap_or("").trim();
            Framing::Length(first.parse().unwrap_or(0))
        } else {
            Framing::None
        };
        let body = match w.read_body_vec(framing) {
            Ok(b) => b,
            Err(_) => {
                shared.event(format!("closed {conn}"));
                return;
            }
        };
        let req = RawRequest {
            method: parsed.method.unwrap_or("").to_string(),
            target: parsed.path.unwrap_or("").to_string(),
            headers,
            body,
            conn,
        };
        shared.requests.lock().unwrap().push(req.clone());
        shared.changed.notify_all();
        // After a failed write the remaining sends are skipped but marks still recorded,
        // so a test waiting for a mark is not left waiting because the proxy (rightly)
        // closed the connection first.
        let mut dead = false;
        for step in (shared.handler)(&req) {
            match step {
                Step::Send(_) if dead => {}
                Step::Send(bytes) => {
                    if w.write_all(&bytes).is_err() {
                        shared.event(format!("closed {conn}"));
                        dead = true;
                    }
                }
                // A scripted stall of the misbehaving origin, not synchronisation.
                Step::Pause(d) => thread::sleep(d),
                Step::Mark(m) => shared.event(m),
                Step::Close => {
                    let _ = w.stream.shutdown(Shutdown::Both);
                    return;
                }
                Step::Hold if dead => {}
                Step::Hold => {
                    hold(&mut w, conn, shared);
                    return;
                }
            }
        }
        if dead {
            return;
        }
    }
}

/// A complete response with Content-Length, plus extra header lines (each without CRLF).
pub fn response(status: &str, extra: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for h in extra {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A bodiless response head (304, 204, a HEAD answer, 1xx): status line and fields.
pub fn head_only(status: &str, extra: &[&str]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for h in extra {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}
