//! The caching path for GET requests, top to bottom, written once for every key: a key
//! this node owns lives on its disk, another node's key on its owner (the storage seam,
//! [`super::storage`]). Key → lookup (entry, fill in progress, or the right to fill) →
//! conditional request to the origin (always: RFC 9111 §4.3, the original's "always
//! validating") → decide ([`super::decide`]):
//! - 304 with an entry → serve it from the storage; 304 while another request fills →
//!   stream the entry as it is written;
//! - storable 200 → fill: origin → storage at the origin's speed, the client behind it
//!   ([`super::fill`]);
//! - anything else → relay ([`super::relay`], [`super::client_side`]), dropping the
//!   entry on a 404/410 for exactly its URL.

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::client_side::relay_ranged;
use super::decide::{decide, Action};
use super::fill::{fill, FillTarget};
use super::relay::{forward, relay_and_release};
use super::storage::{Lookup, Storage};
use super::validate::{not_stored, release_bodyless, revalidate};
use super::{Op, Outcome, ProxyError, Worker};
use crate::cache::digest::expected_sha256;
use crate::cache::key::{cache_key, key_is_exact, match_rule};
use crate::cache::meta::EntryMeta;
use crate::cache::policy::{request_storable, response_storable, stored_headers, NotStorable};
use crate::http::uri::Uri;
use crate::http::{BodyKind, RequestHead, ResponseHead};
use crate::stream::BufConn;
use crate::upstream::{UpstreamConn, UpstreamError};

/// Entry point for GET requests when a cache or a cluster is configured.
pub async fn handle<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: RequestHead,
    uri: Uri,
    w: &Worker,
) -> Outcome {
    let url = uri.to_url_string();
    let rule = match_rule(&w.rules, &url);
    if let Err(reason) = request_storable(&req, rule) {
        return forward(client, req, uri, w, not_stored(false, reason)).await;
    }
    match req.body_kind() {
        Ok(BodyKind::None) | Ok(BodyKind::Length(0)) => {}
        // A GET with a body is unusual; relay it untouched.
        _ => return forward(client, req, uri, w, not_stored(false, NotStorable::Method)).await,
    }
    let key = cache_key(&uri, rule);
    // This node's disk, or in cluster mode the key's owner or its stand-in (uncached: no
    // disk, or no node up, or the node gives no usable answer).
    let (storage, found) = match Storage::find(&key, &req, w).await {
        Ok(x) => x,
        Err(uncached) => return forward(client, req, uri, w, uncached).await,
    };
    let had_entry = found.has_entry();
    let validators = found.validators();
    let (mut up, resp) = match revalidate(client, &req, &uri, validators.as_ref(), w).await {
        Ok(x) => x,
        Err(f) => {
            storage.release(found, false, &key, w).await;
            return Outcome::Failed {
                error: f.error.into(),
                close: f.close_client,
                op: Op::Miss,
            };
        }
    };
    let action = decide(
        resp.status,
        found.held(),
        || response_storable(&req, &resp, rule),
        || key_is_exact(&uri, &key, rule, &req.headers),
    );
    match action {
        Action::ServeEntry | Action::ServeFill => {
            release_bodyless(&mut up, &resp, w);
            storage.serve(client, &req, &uri, found, &resp, w).await
        }
        Action::Fill => {
            let target = FillTarget {
                uri: &uri,
                replaced: had_entry,
                digest: expected_sha256(&uri.path_and_query),
            };
            fill_or_relay(client, &req, key, found, up, resp, target, &storage, w).await
        }
        Action::RelayUnstored(reason) => {
            // The held entry is outdated (or absent).
            storage.release(found, false, &key, w).await;
            let cs = not_stored(had_entry, reason)(&resp);
            relay_ranged(client, &req, &mut up, resp, w, cs).await
        }
        Action::Relay { drop_entry } => {
            storage.release(found, drop_entry, &key, w).await;
            let cs = not_stored(had_entry, NotStorable::Status)(&resp);
            relay_and_release(client, &req, &mut up, resp, w, Op::Pass, cs).await
        }
    }
}

/// A storable 200: fill the storage when it takes the body (this node: when this request
/// holds or can take the key's fill lock and the file can be made), else relay it.
#[allow(clippy::too_many_arguments)]
async fn fill_or_relay<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    key: String,
    found: Lookup,
    mut up: UpstreamConn,
    resp: ResponseHead,
    target: FillTarget<'_>,
    storage: &Storage<'_>,
    w: &Worker,
) -> Outcome {
    let kind = match resp.body_kind(&req.method) {
        Ok(k) => k,
        Err(e) => {
            return Outcome::Failed {
                error: ProxyError::Upstream(UpstreamError::Protocol(e.to_string())),
                close: false,
                op: Op::Miss,
            }
        }
    };
    let meta = EntryMeta {
        key,
        status: 200,
        headers: stored_headers(&resp.headers).fields,
        ..Default::default()
    };
    match storage.begin_fill(found, meta, kind.known_len(), w).await {
        Ok((sink, read_back)) => {
            let op = storage.fill_op();
            fill(client, req, up, resp, kind, sink, read_back, target, op, w).await
        }
        Err(cache_status) => relay_ranged(client, req, &mut up, resp, w, Some(cache_status)).await,
    }
}
