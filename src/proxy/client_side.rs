//! The client's side of a response whose body streams from the origin: the ranged relay
//! of an uncached 200, the client's side of a fill, and the one windowed copy
//! ([`WindowedCopy`]) they, the disk's read-while-write and the owner's body all use.

use std::time::Duration;

use monoio::buf::IoBuf;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};

use super::head::build_response_head;
use super::head::{cached_head, range_of};
use super::relay::relay_and_release;
use super::validate::answer_client_conditional;
use super::{Exchange, Op, Outcome, Worker};
use crate::cache::status::Outcome as CacheOutcome;
use crate::http::{BodyKind, RequestHead, ResponseHead};
use crate::stream::{BodyReader, BodyWriter, BufConn};
use crate::upstream::UpstreamConn;

/// Relays an uncached 200 to the client. We did not forward the client's Range (to be
/// able to fill), so a client that asked for one gets its window cut out of the stream
/// as a 206 (RFC 9110 §14.2 lets a cache answer a range from a full representation):
/// a client like Tart that resumes with `Range: bytes=N-` accepts only a 206.
pub(crate) async fn relay_ranged<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    up: &mut UpstreamConn,
    resp: ResponseHead,
    w: &Worker,
    cache_status: Option<String>,
) -> Outcome {
    let op = Op::Pass;
    let mut headers = resp.headers.clone();
    headers.strip_hop_by_hop();
    let answer = match resp.body_kind(&req.method) {
        Ok(BodyKind::Length(len)) if req.headers.contains("range") => {
            range_of(req, &headers, Some(len)).then_len(len)
        }
        _ => None,
    };
    let Some((answer, len)) = answer else {
        return relay_and_release(client, req, up, resp, w, op, cache_status).await;
    };
    if let Some(cs) = cache_status {
        headers.set("Cache-Status", cs);
    }
    let mut head = Vec::with_capacity(512);
    let win = cached_head(
        req,
        200,
        headers,
        len,
        answer,
        w.may_keep_alive(req),
        &mut head,
    );
    let (status, keep_alive) = (win.status, win.keep_alive);
    if let Err(e) = client.io.write_all(head).await.0 {
        return Outcome::aborted(status, 0, op, e.to_string());
    }
    let mut copy = WindowedCopy::new(BodyWriter::Raw, win.start, win.start + win.count, None);
    let mut reader = BodyReader::new(BodyKind::Length(len));
    let mut buf = w.bufs.lend();
    let mut pos = 0u64;
    // Read only up to the end of the window; the origin connection is then dropped
    // rather than drained (it is not reused).
    let result = loop {
        if pos >= copy.end {
            break Ok(());
        }
        let n = match reader.read(&mut up.conn, &mut buf).await {
            Ok(0) => break Err("origin body ended early".to_string()),
            Ok(n) => n as u64,
            Err(e) => break Err(format!("origin body failed: {e}")),
        };
        let (res, b) = copy.write(&mut client.io, buf.take(), pos).await;
        buf.put_back(b);
        if let Err(e) = res {
            break Err(e);
        }
        pos += n;
    };
    let sent = copy.sent;
    if reader.is_done() && resp.keep_alive() {
        w.upstream.release_ref(up);
    }
    match result {
        Ok(()) => Outcome::Done(Exchange {
            status,
            bytes: sent,
            op,
            keep_alive,
        }),
        Err(reason) => Outcome::aborted(status, sent, op, reason),
    }
}

/// The windowed copy to a client, written once: body pieces arrive with their body
/// offsets, and the part of each inside the client's window `[start, end)` goes out
/// (`end` = `u64::MAX`: all of it), framed by `writer`.
/// With `idle`, a client that cannot take a piece within it has stopped reading: it is
/// cut, and holds back nothing but its own connection.
pub(crate) struct WindowedCopy {
    pub(crate) writer: BodyWriter,
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// Window bytes that went out.
    pub(crate) sent: u64,
    idle: Option<Duration>,
}

impl WindowedCopy {
    pub(crate) fn new(writer: BodyWriter, start: u64, end: u64, idle: Option<Duration>) -> Self {
        WindowedCopy {
            writer,
            start,
            end,
            sent: 0,
            idle,
        }
    }

    /// Sends the part of `buf` (body bytes `pos..pos + buf.len()`) inside the window;
    /// hands the buffer back (empty when a timed-out write took it).
    pub(crate) async fn write<C: AsyncWriteRent>(
        &mut self,
        io: &mut C,
        buf: Vec<u8>,
        pos: u64,
    ) -> (Result<(), String>, Vec<u8>) {
        let n = buf.len() as u64;
        let (lo, hi) = (pos.max(self.start), (pos + n).min(self.end));
        if lo >= hi {
            return (Ok(()), buf);
        }
        let whole = lo == pos && hi == pos + n;
        let writer = self.writer;
        let write = async move {
            if whole {
                writer.write(io, buf).await
            } else if writer == BodyWriter::Raw {
                let slice = buf.slice((lo - pos) as usize..(hi - pos) as usize);
                let (res, s) = io.write_all(slice).await;
                (res.map(|_| ()), s.into_inner())
            } else {
                // Framed: the part goes out as one piece of the framing.
                let mut buf = buf;
                buf.truncate((hi - pos) as usize);
                buf.drain(..(lo - pos) as usize);
                writer.write(io, buf).await
            }
        };
        let (res, buf) = match self.idle {
            None => write.await,
            Some(limit) => match monoio::time::timeout(limit, write).await {
                Ok(done) => done,
                // The buffer went with the cancelled write.
                Err(_) => (
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the client did not take a piece within {limit:?}"),
                    )),
                    Vec::new(),
                ),
            },
        };
        match res {
            Ok(()) => {
                self.sent += hi - lo;
                (Ok(()), buf)
            }
            Err(e) => (Err(format!("client write failed: {e}")), buf),
        }
    }
}

/// The client's side of a response whose body streams from the origin while it is
/// stored (a fill, to this node's disk or to the owning node): its head is sent first,
/// then the part of each body piece inside the client's window.
pub(crate) struct ClientSide {
    pub status: u16,
    keep_alive: bool,
    /// The window of body bytes the client gets, and what went out of it.
    pub(crate) copy: WindowedCopy,
    pub error: Option<String>,
}

impl ClientSide {
    /// Sends the head: 304 when the client already holds this representation (the body
    /// still streams into the cache), 206/416 for a range of a body of known length
    /// (RFC 9110 §14), 200 otherwise.
    pub(crate) async fn begin<C: AsyncWriteRent>(
        client: &mut BufConn<C>,
        req: &RequestHead,
        resp: &ResponseHead,
        kind: BodyKind,
        cache_status: CacheOutcome,
        w: &Worker,
        op: Op,
    ) -> ClientSide {
        let mut headers = resp.headers.clone();
        headers.strip_hop_by_hop();
        headers.set("Cache-Status", cache_status.header_value());
        // A piece the client cannot take within `timeouts.idle` cuts it.
        let idle = Some(w.timeouts.idle);
        let mut cs = ClientSide {
            status: 200,
            keep_alive: false,
            copy: WindowedCopy::new(BodyWriter::Empty, 0, 0, idle),
            error: None,
        };
        if let Some(o) = answer_client_conditional(client, req, &headers, w, op).await {
            match o {
                Outcome::Done(ex) => cs.keep_alive = ex.keep_alive,
                _ => cs.error = Some("client write failed".into()),
            }
            cs.status = 304;
            return cs;
        }
        let mut head = Vec::with_capacity(512);
        match kind {
            BodyKind::Length(len) => {
                let answer = range_of(req, &headers, Some(len));
                let win = cached_head(
                    req,
                    200,
                    headers,
                    len,
                    answer,
                    w.may_keep_alive(req),
                    &mut head,
                );
                (cs.status, cs.keep_alive) = (win.status, win.keep_alive);
                cs.copy =
                    WindowedCopy::new(BodyWriter::Raw, win.start, win.start + win.count, idle);
            }
            _ => {
                let (bw, ka) = build_response_head(
                    req,
                    200,
                    &resp.reason,
                    headers,
                    kind,
                    w.may_keep_alive(req),
                    &mut head,
                );
                cs.keep_alive = ka;
                cs.copy = WindowedCopy::new(bw, 0, u64::MAX, idle);
            }
        }
        if let Err(e) = client.io.write_all(head).await.0 {
            cs.error = Some(e.to_string());
        }
        cs
    }

    pub(crate) fn wants_body(&self) -> bool {
        self.status != 304 && self.status != 416 && self.error.is_none()
    }

    /// Sends the part of `buf` (body bytes `pos..pos + buf.len()`) inside the window.
    pub(crate) async fn write_piece<C: AsyncWriteRent>(
        &mut self,
        client: &mut BufConn<C>,
        buf: Vec<u8>,
        pos: u64,
    ) -> Vec<u8> {
        if !self.wants_body() {
            return buf;
        }
        let (res, buf) = self.copy.write(&mut client.io, buf, pos).await;
        if let Err(e) = res {
            self.error = Some(e);
        }
        buf
    }

    /// Ends the body (the last chunk of a chunked one).
    pub(crate) async fn finish<C: AsyncWriteRent>(&mut self, client: &mut BufConn<C>) {
        if self.wants_body() {
            if let Err(e) = self.copy.writer.finish(&mut client.io).await {
                self.error = Some(e.to_string());
            }
        }
    }

    pub(crate) fn outcome(&mut self, op: Op) -> Outcome {
        let bytes = self.copy.sent;
        match self.error.take() {
            Some(reason) => Outcome::aborted(self.status, bytes, op, reason),
            None => Outcome::Done(Exchange {
                status: self.status,
                bytes,
                op,
                keep_alive: self.keep_alive,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::buf::IoVecBuf;
    use monoio::BufResult;

    /// Collects what is written to it.
    #[derive(Default)]
    struct Collect(Vec<u8>);

    impl AsyncWriteRent for Collect {
        async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
            // SAFETY: an IoBuf's first `bytes_init` bytes are initialised.
            let s = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
            self.0.extend_from_slice(s);
            (Ok(s.len()), buf)
        }

        async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
            let mut n = 0;
            // SAFETY: an IoVecBuf's iovecs are valid for their lengths.
            unsafe {
                let iovs = std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len());
                for iov in iovs {
                    let s = std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len);
                    self.0.extend_from_slice(s);
                    n += iov.iov_len;
                }
            }
            (Ok(n), buf)
        }

        async fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }

        async fn shutdown(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Copies a 100-byte body in pieces of 30 (offsets 0, 30, 60, 90) through a window.
    fn copy(writer: BodyWriter, start: u64, end: u64) -> (Vec<u8>, u64) {
        let body: Vec<u8> = (0..100u8).collect();
        let idle = Some(Duration::from_secs(5));
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(async {
                let mut out = Collect::default();
                let mut copy = WindowedCopy::new(writer, start, end, idle);
                for piece in body.chunks(30) {
                    let pos = piece[0] as u64;
                    let (res, _) = copy.write(&mut out, piece.to_vec(), pos).await;
                    res.unwrap();
                }
                (out.0, copy.sent)
            })
    }

    fn chunked(parts: &[std::ops::Range<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in parts {
            out.extend_from_slice(format!("{:x}\r\n", r.len()).as_bytes());
            out.extend(r.clone());
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// (writer, window) → bytes on the wire: the window's bytes, framed as whole pieces.
    #[test]
    fn the_windowed_copy_sends_exactly_the_window() {
        use BodyWriter::{Chunked, Raw};
        let all = u64::MAX;
        #[rustfmt::skip]
        let rows: Vec<(BodyWriter, u64, u64, Vec<u8>, &str)> = vec![
            (Raw, 0, all, (0..100).collect(), "the whole body"),
            (Raw, 10, 75, (10..75).collect(), "RFC 9110 §14.1.2: a range across pieces"),
            (Raw, 40, 50, (40..50).collect(), "a range inside one piece"),
            (Raw, 99, 100, vec![99], "the last byte"),
            (Chunked, 0, all, chunked(&[0..30, 30..60, 60..90, 90..100]), "RFC 9112 §7.1: one chunk per piece"),
            (Chunked, 45, all, chunked(&[45..60, 60..90, 90..100]), "resuming mid-piece: the part is one chunk"),
        ];
        for (writer, start, end, want, what) in rows {
            let (got, sent) = copy(writer, start, end);
            assert_eq!(got, want, "{what}");
            let expected = end.min(100) - start;
            assert_eq!(sent, expected, "{what}: bytes counted");
        }
    }
}
