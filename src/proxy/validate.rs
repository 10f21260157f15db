//! Validation against the origin: the conditional request built from an entry's
//! validators (RFC 9111 §4.3.1), what a 304 updates (RFC 9111 §4.3.4), and the answer to
//! the client's own conditionals against the validated entry (RFC 9110 §13.1).

use monoio::io::AsyncWriteRent;

use super::head::write_response_head;
use super::{Exchange, Op, Outcome, Worker};
use crate::cache::meta::EntryMeta;
use crate::cache::policy::{
    client_conditional_matches, conditional_headers, served_after_304, NotStorable, Validators,
};
use crate::cache::status::Outcome as CacheOutcome;
use crate::http::uri::Uri;
use crate::http::{BodyKind, Headers, RequestHead, ResponseHead};
use crate::stream::BufConn;
use crate::upstream::{write_upstream_head, UpstreamConn};

/// Client request fields replaced by our own validators: a 304 answering the client's
/// validators would say nothing about our entry (we evaluate the client's conditionals
/// ourselves against the validated entry, RFC 9111 §4.3.2).
pub(crate) const CLIENT_CONDITIONALS: &[&str] =
    &["if-none-match", "if-modified-since", "if-range", "range"];

pub(crate) fn not_stored(
    had_entry: bool,
    reason: NotStorable,
) -> impl FnOnce(&ResponseHead) -> Option<String> {
    move |resp| {
        Some(
            CacheOutcome::NotStored {
                had_entry,
                status: resp.status,
                reason,
            }
            .header_value(),
        )
    }
}

/// Appends to `out` the head of the GET sent upstream, conditional on our `validators`
/// (the client's own conditionals and Range replaced, see [`CLIENT_CONDITIONALS`]): the
/// very bytes sent, which is what merged revalidations compare (proxy/merge.rs).
pub(crate) fn conditional_head(
    req: &RequestHead,
    uri: &Uri,
    validators: Option<&Validators>,
    mut out: Vec<u8>,
) -> Vec<u8> {
    let conditionals = validators.map(conditional_headers).unwrap_or_default();
    let extra: Vec<(&str, &str)> = conditionals.iter().map(|(n, v)| (*n, v.as_str())).collect();
    write_upstream_head(
        req,
        uri,
        BodyKind::None,
        CLIENT_CONDITIONALS,
        &extra,
        &mut out,
    );
    out
}

/// The validators of a stored response, read without copying its fields.
pub(crate) fn validators_of(meta: &EntryMeta) -> Validators {
    let find = |name: &str| {
        meta.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    Validators {
        etag: find("etag"),
        last_modified: find("last-modified"),
    }
}

/// A 304 has no body: its connection can go back to the pool at once.
pub(crate) fn release_bodyless(up: &mut UpstreamConn, resp: &ResponseHead, w: &Worker) {
    if resp.keep_alive() {
        w.upstream.release_ref(up);
    }
}

/// Headers of a validated entry: stored ones updated by the 304 (RFC 9111 §4.3.4), plus
/// the 304's `Set-Cookie` for this client only (never stored).
pub(crate) fn validated_headers(
    stored: &EntryMeta,
    not_modified: &ResponseHead,
    status: CacheOutcome,
) -> Headers {
    let mut headers = served_after_304(&stored.headers, &not_modified.headers);
    headers.strip_hop_by_hop();
    headers.set("Cache-Status", status.header_value());
    headers
}

/// Answers the client's own conditional request against the validated entry with a 304
/// (RFC 9110 §13.1.2–§13.1.3); `None` when the client wants the body.
pub(crate) async fn answer_client_conditional<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    headers: &Headers,
    w: &Worker,
    op: Op,
) -> Option<Outcome> {
    if !client_conditional_matches(&req.headers, &Validators::from_headers(headers)) {
        return None;
    }
    let mut h = headers.clone();
    h.remove("content-length");
    let (_, res) = write_response_head(
        client,
        req,
        304,
        "Not Modified",
        h,
        BodyKind::None,
        w.may_keep_alive(req),
    )
    .await;
    Some(match res {
        Ok(keep_alive) => Outcome::Done(Exchange {
            status: 304,
            bytes: 0,
            op,
            keep_alive,
        }),
        Err(e) => Outcome::aborted(304, 0, op, e.to_string()),
    })
}
