//! Message bodies, streamed with bounded memory (RFC 9112 §6–§7).
//!
//! [`BodyReader`] yields the body of one message piece by piece into a caller-owned
//! buffer; [`BodyWriter`] frames pieces toward the other side (Content-Length,
//! chunked or close-delimited), which need not be the framing they arrived in.

use std::io;

use monoio::buf::{IoBufMut, VecBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::BufConn;
use crate::http::chunked::{write_chunk_header, ChunkedDecoder, LAST_CHUNK};
use crate::http::BodyKind;

/// A read at least this large suggests more data is already on its way (16 KiB is the
/// TLS record size, so TLS streams hand us at most this per read).
const COALESCE_AFTER: usize = 16 * 1024;
/// Bulk reads are coalesced up to this many bytes.
const COALESCE: usize = 128 * 1024;

/// Reads one message body.
pub enum BodyReader {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

fn unexpected_eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed inside a body",
    )
}

impl BodyReader {
    pub fn new(kind: BodyKind) -> Self {
        match kind {
            BodyKind::None | BodyKind::Length(0) => BodyReader::Done,
            BodyKind::Length(n) => BodyReader::Length(n),
            BodyKind::Chunked => BodyReader::Chunked(ChunkedDecoder::new()),
            BodyKind::UntilClose => BodyReader::UntilClose,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, BodyReader::Done)
    }

    /// Replaces `out`'s contents with the next piece of the body (at most its capacity
    /// for length-delimited bodies). Returns `Ok(0)` only at the end of the body; a
    /// stream that ends early is an `UnexpectedEof` error (RFC 9112 §8: incomplete).
    pub async fn read<S: AsyncReadRent>(
        &mut self,
        conn: &mut BufConn<S>,
        out: &mut Vec<u8>,
    ) -> io::Result<usize> {
        out.clear();
        let want = match self {
            BodyReader::Done => return Ok(0),
            BodyReader::Length(rem) => (*rem).min(out.capacity() as u64) as usize,
            BodyReader::UntilClose => out.capacity(),
            BodyReader::Chunked(_) => return self.read_chunked(conn, out).await,
        };
        let mut n = if !conn.buffered().is_empty() {
            conn.take_into(out, want)
        } else {
            let buf = std::mem::take(out);
            let (res, slice) = conn.io.read(buf.slice_mut(0..want)).await;
            *out = slice.into_inner();
            res?
        };
        // A read that returned a whole TLS record (or more) means a bulk transfer: keep
        // reading up to COALESCE bytes so that the writes downstream (client, cache
        // file) are large, as long as more is already there (an origin that pauses
        // mid-body must not have what it sent held back until it goes on). A trickle
        // (smaller reads) is passed on at once.
        let mut last = n;
        while last >= COALESCE_AFTER && n < want.min(COALESCE) && conn.input_ready() {
            let buf = std::mem::take(out);
            let (res, slice) = conn.io.read(buf.slice_mut(n..want)).await;
            *out = slice.into_inner();
            last = match res {
                Ok(l) => l,
                // Hand over what we have; a broken stream fails the next read again.
                Err(_) => break,
            };
            if last == 0 {
                break;
            }
            n += last;
        }
        match self {
            BodyReader::Length(rem) => {
                if n == 0 {
                    return Err(unexpected_eof());
                }
                *rem -= n as u64;
                if *rem == 0 {
                    *self = BodyReader::Done;
                }
            }
            _ if n == 0 => *self = BodyReader::Done,
            _ => {}
        }
        Ok(n)
    }

    async fn read_chunked<S: AsyncReadRent>(
        &mut self,
        conn: &mut BufConn<S>,
        out: &mut Vec<u8>,
    ) -> io::Result<usize> {
        let BodyReader::Chunked(dec) = self else {
            unreachable!()
        };
        loop {
            if conn.buffered().is_empty() && conn.fill().await? == 0 {
                return Err(unexpected_eof());
            }
            let consumed = dec
                .decode(conn.buffered(), out)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            conn.consume(consumed);
            if dec.is_done() {
                *self = BodyReader::Done;
                return Ok(out.len());
            }
            if !out.is_empty() {
                return Ok(out.len());
            }
            if consumed == 0 && conn.fill().await? == 0 {
                return Err(unexpected_eof());
            }
        }
    }
}

/// How a body is framed toward the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyWriter {
    /// Content-Length was sent in the head (or the body ends with the connection):
    /// bytes go out as they are.
    Raw,
    /// `Transfer-Encoding: chunked` was sent in the head.
    Chunked,
    /// No body may be sent (HEAD, 204, 304).
    Empty,
}

impl BodyWriter {
    /// Writes one piece; hands the buffer back for reuse.
    pub async fn write<S: AsyncWriteRent>(
        &self,
        io: &mut S,
        data: Vec<u8>,
    ) -> (io::Result<()>, Vec<u8>) {
        if data.is_empty() {
            return (Ok(()), data);
        }
        match self {
            BodyWriter::Empty => (Ok(()), data),
            BodyWriter::Raw => {
                let (res, data) = io.write_all(data).await;
                (res.map(|_| ()), data)
            }
            BodyWriter::Chunked => {
                let mut head = Vec::with_capacity(20);
                write_chunk_header(data.len(), &mut head);
                let vb = VecBuf::from(vec![head, data, b"\r\n".to_vec()]);
                let (res, vb) = io.write_vectored_all(vb).await;
                let mut parts: Vec<Vec<u8>> = vb.into();
                let data = parts.swap_remove(1);
                (res.map(|_| ()), data)
            }
        }
    }

    /// Ends the body (the last chunk for chunked framing).
    pub async fn finish<S: AsyncWriteRent>(&self, io: &mut S) -> io::Result<()> {
        if *self == BodyWriter::Chunked {
            io.write_all(LAST_CHUNK).await.0?;
        }
        Ok(())
    }
}
