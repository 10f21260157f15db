//! The origin's body of a fill, whatever the sink (this node's disk, or the owner node
//! over the KV protocol): read piece by piece, resumed with `Range`/`If-Range` when the
//! origin cuts it (RFC 9110 §13.1.5, §14.2), hashed when its URL names a digest, and
//! checked at every end of the body (RFC 9112 §6.3: a known length ends with its last
//! piece, a chunked or close-delimited body with an empty read).

use monoio::io::AsyncReadRent;

use super::validate::CLIENT_CONDITIONALS;
use super::Worker;
use crate::cache::digest::Verifier;
use crate::http::range;
use crate::http::uri::Uri;
use crate::http::{BodyKind, RequestHead, ResponseHead};
use crate::stream::{BodyReader, BufConn};
use crate::upstream::{pool_key, send_upstream, write_upstream_head, UpstreamConn};

/// How often one fill may resume a body the origin cut.
const MAX_FILL_RESUMES: u32 = 3;

/// The body of a storable 200 being stored.
pub(crate) struct OriginBody<'a> {
    req: &'a RequestHead,
    uri: &'a Uri,
    resp: &'a ResponseHead,
    kind: BodyKind,
    up: UpstreamConn,
    reader: BodyReader,
    verifier: Option<Verifier>,
    resumes: u32,
    /// Body bytes received so far.
    pos: u64,
}

impl<'a> OriginBody<'a> {
    pub(crate) fn new(
        req: &'a RequestHead,
        uri: &'a Uri,
        resp: &'a ResponseHead,
        kind: BodyKind,
        up: UpstreamConn,
        digest: Option<[u8; 32]>,
    ) -> Self {
        OriginBody {
            req,
            uri,
            resp,
            kind,
            up,
            reader: BodyReader::new(kind),
            verifier: digest.map(Verifier::new),
            resumes: 0,
            pos: 0,
        }
    }

    /// Reads the next piece into `buf`: `Some((offset, len))`, or `None` at the end of a
    /// body that ends with an empty read. A body that ends, either way, has passed its
    /// digest check before its last piece is returned, so that no reader can have that
    /// piece before the verdict. `may_resume`: whether a cut body is worth resuming (it
    /// is being stored); a resume sends no request body, so it needs no client.
    pub(crate) async fn next(
        &mut self,
        buf: &mut Vec<u8>,
        may_resume: bool,
        w: &Worker,
    ) -> Result<Option<(u64, u64)>, String> {
        loop {
            let n = match self.reader.read(&mut self.up.conn, buf).await {
                Ok(0) => {
                    return match digest_ok(&self.verifier, self.req) {
                        true => Ok(None),
                        false => Err("digest mismatch".to_string()),
                    }
                }
                Ok(n) => n as u64,
                Err(e) if self.resumes < MAX_FILL_RESUMES && may_resume => {
                    // The origin cut the body: resume it where it stopped, so the bytes
                    // already stored (and sent) are not fetched again.
                    self.resumes += 1;
                    let mut no_client = BufConn::new(&[][..]);
                    let (req, uri, resp, kind, pos) =
                        (self.req, self.uri, self.resp, self.kind, self.pos);
                    match resume_fill(&mut no_client, req, uri, resp, kind, pos, w).await {
                        Some((conn, rest)) => {
                            log::info!(
                                "cache: origin cut {} at byte {pos} ({e}); resumed",
                                req.target
                            );
                            crate::metrics::fill_resumed();
                            self.up = conn;
                            self.reader = BodyReader::new(rest);
                            continue;
                        }
                        None => {
                            crate::metrics::fill_failure(body_failure(&e));
                            return Err(format!("origin body failed: {e}; resuming failed"));
                        }
                    }
                }
                Err(e) => {
                    crate::metrics::fill_failure(body_failure(&e));
                    return Err(format!("origin body failed: {e}"));
                }
            };
            if let Some(v) = self.verifier.as_mut() {
                v.update(buf);
            }
            if self.reader.is_done() && !digest_ok(&self.verifier, self.req) {
                return Err("digest mismatch".into());
            }
            let at = self.pos;
            self.pos += n;
            return Ok(Some((at, n)));
        }
    }

    /// Whether the whole body was read.
    pub(crate) fn is_done(&self) -> bool {
        self.reader.is_done()
    }

    /// Returns the origin connection to the pool when the body was read to its end and
    /// the connection can carry another request.
    pub(crate) fn release(self, w: &Worker) {
        if self.resp.keep_alive() && self.reader.is_done() {
            w.upstream.release(self.up);
        }
    }
}

/// A body read that failed: the origin went silent (`timeouts.upstream-body`) or cut it.
fn body_failure(e: &std::io::Error) -> crate::metrics::FillFailure {
    match e.kind() {
        std::io::ErrorKind::TimedOut => crate::metrics::FillFailure::Timeout,
        _ => crate::metrics::FillFailure::OriginCut,
    }
}

/// Whether a blob's body matched its digest (true when it has none); logs a mismatch.
/// Checked at every end of a body, whatever the sink (this node's disk or the owner).
fn digest_ok(verifier: &Option<Verifier>, req: &RequestHead) -> bool {
    if verifier.as_ref().is_some_and(|v| !v.matches()) {
        log::error!(
            "cache: {} does not match its sha256 digest; not stored, client aborted",
            req.target
        );
        crate::metrics::fill_failure(crate::metrics::FillFailure::DigestMismatch);
        return false;
    }
    true
}

/// Asks the origin for the rest of a cut body: `Range: bytes=pos-` with `If-Range` on the
/// response's strong ETag (RFC 9110 §13.1.5: only then is a 206 guaranteed to continue the
/// same representation). Returns the connection and the rest's framing when the origin
/// answered with exactly that range.
async fn resume_fill<C: AsyncReadRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    uri: &Uri,
    resp: &ResponseHead,
    kind: BodyKind,
    pos: u64,
    w: &Worker,
) -> Option<(UpstreamConn, BodyKind)> {
    let BodyKind::Length(len) = kind else {
        return None;
    };
    let etag = strong_etag(&resp.headers)?;
    resume_at(client, req, uri, etag, len, pos, w).await
}

/// The `ETag` of `headers` when it is a strong validator (RFC 9110 §8.8.1: no `W/`).
pub(crate) fn strong_etag(headers: &crate::http::Headers) -> Option<&str> {
    headers.get_str("etag").filter(|e| e.starts_with('"'))
}

/// Asks the origin for the representation tagged `etag` (strong), `len` bytes long, from
/// body offset `pos` on: `Range: bytes=pos-` and `If-Range: etag` (RFC 9110 §13.1.5,
/// §14.2). Only a 206 with exactly `Content-Range: bytes pos-(len-1)/len` (§14.4), the
/// same `ETag` and the rest's length continues it; anything else (a 200: the
/// representation changed or the origin ignores ranges) is `None`.
pub(crate) async fn resume_at<C: AsyncReadRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    uri: &Uri,
    etag: &str,
    len: u64,
    pos: u64,
    w: &Worker,
) -> Option<(UpstreamConn, BodyKind)> {
    if pos >= len {
        return None;
    }
    let range = format!("bytes={pos}-");
    let extra = [("Range", range.as_str()), ("If-Range", etag)];
    let mut head = Vec::with_capacity(512);
    write_upstream_head(
        req,
        uri,
        BodyKind::None,
        CLIENT_CONDITIONALS,
        &extra,
        &mut head,
    );
    let mut no_body = BodyReader::new(BodyKind::None);
    let (up, part) = send_upstream(client, &head, &pool_key(uri), &mut no_body, w)
        .await
        .ok()?;
    let expected = range::content_range(pos, len - 1, len);
    let same = part.headers.get_str("etag") == Some(etag);
    if part.status != 206
        || part.headers.get_str("content-range") != Some(expected.as_str())
        || !same
    {
        log::info!(
            "cache: cannot resume {} at byte {pos}: origin answered {} {:?}",
            req.target,
            part.status,
            part.headers.get_str("content-range")
        );
        return None;
    }
    match part.body_kind(&req.method) {
        Ok(BodyKind::Length(n)) if n == len - pos => Some((up, BodyKind::Length(n))),
        _ => None,
    }
}
