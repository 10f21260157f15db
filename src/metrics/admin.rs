//! The admin listener of `metrics.addr`: `GET /metrics` only, one connection at a time on
//! one small std thread with blocking sockets (scrapes come every few seconds), each
//! bounded by a timeout so a stalled client cannot hold it. Bound by the main thread
//! before any privilege drop; the thread starts with the workers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Longest a scraper may take to send its request head or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Binds the admin address (before privileges are dropped).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves `/metrics` on `listener` from a thread of its own, for the life of the process.
pub fn spawn(listener: TcpListener) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    super::set_served_on_proxy_port(false);
    std::thread::Builder::new()
        .name("chacha-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => {
                        if let Err(e) = answer(conn) {
                            log::debug!("metrics: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("metrics: accept on {addr} failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    log::info!("metrics: GET /metrics served on http://{addr}/metrics");
    Ok(())
}

fn answer(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(
                &mut conn,
                431,
                "text/plain; charset=utf-8",
                b"head too large\n",
            );
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let (method, path) = match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => (
            req.method.unwrap_or(""),
            req.path.unwrap_or("").split('?').next().unwrap_or(""),
        ),
        _ => {
            return respond(
                &mut conn,
                400,
                "text/plain; charset=utf-8",
                b"bad request\n",
            )
        }
    };
    match (method, path) {
        ("GET", "/metrics") => {
            let body = super::scrape();
            respond(&mut conn, 200, super::CONTENT_TYPE, body.as_bytes())
        }
        ("GET", _) => respond(&mut conn, 404, "text/plain; charset=utf-8", b"not found\n"),
        // RFC 9110 §15.5.6: 405 names the allowed methods.
        _ => respond(&mut conn, 405, "text/plain; charset=utf-8", b"GET only\n"),
    }
}

fn respond(conn: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        crate::http::head::reason_phrase(status),
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}
