//! The caching path for GET requests, top to bottom, written once for every key: a key
//! this node owns lives on its disk, another node's key on its owner (the storage seam,
//! [`super::storage`]). Key → lookup (entry, fill in progress, or the right to fill) →
//! conditional request to the origin (always: RFC 9111 §4.3, the original's "always
//! validating") → decide ([`super::decide`]):
//! - 304 with an entry → serve it from the storage, or, for another node's key under a
//!   `direct-connect` rule, a 307 to the owner's `/direct-connect` (see [`redirect`]);
//!   304 while another request fills → stream the entry as it is written;
//! - storable 200 → fill: origin → storage at the origin's speed, the client behind it
//!   ([`super::fill`]);
//! - anything else → relay ([`super::relay`], [`super::client_side`]), dropping the
//!   entry on a 404/410 for exactly its URL.

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::client_side::relay_ranged;
use super::decide::{decide, Action};
use super::fill::{fill, FillTarget};
use super::merge::{revalidate, Validated};
use super::relay::{forward, relay_and_release};
use super::storage::{Lookup, Storage};
use super::validate::{not_stored, release_bodyless};
use super::{write_simple, Exchange, Framing, Op, Outcome, ProxyError, Worker};
use crate::cache::digest::expected_sha256;
use crate::cache::key::{cache_key, key_is_exact, match_rule};
use crate::cache::meta::EntryMeta;
use crate::cache::policy::{request_storable, response_storable, stored_headers, NotStorable};
use crate::cluster::Cluster;
use crate::config::Rule;
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
    // disk, or no node up, or the node gives no usable answer). Direct-connect: a
    // validated hit is a 307, so the owner need only say whether it has the entry (and
    // its head): ask it for one byte.
    let probe = |s: &Storage<'_>| direct_connect_owner(rule, &req, s).map(|_| one_byte(&req));
    let (storage, found) = match Storage::find(&key, &req, probe, w).await {
        Ok(x) => x,
        Err(uncached) => return forward(client, req, uri, w, uncached).await,
    };
    let had_entry = found.has_entry();
    let validators = found.validators();
    // Merged with the identical requests that arrive before it is sent (`merge`).
    let validated = revalidate(client, &req, &uri, validators.as_ref(), &key, w).await;
    let (mut up, resp) = match validated {
        Ok(Validated::Own(up, resp)) => (up, resp),
        // A 304 to the identical request sent after this one arrived: it validates the
        // entry this request holds (RFC 9111 §4.3.4).
        Ok(Validated::Shared(not_modified)) => {
            return serve_validated(
                client,
                &req,
                &uri,
                rule,
                &key,
                found,
                &storage,
                &not_modified,
                w,
            )
            .await;
        }
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
            serve_validated(client, &req, &uri, rule, &key, found, &storage, &resp, w).await
        }
        Action::Fill => {
            let target = FillTarget {
                uri: &uri,
                replaced: had_entry,
                digest: expected_sha256(&uri.path_and_query),
            };
            // Boxed: a fill's future is ~16 KiB, and unboxed it would size (and make every
            // request move) the future of each hit too.
            Box::pin(fill_or_relay(
                client, &req, key, found, up, resp, target, &storage, w,
            ))
            .await
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

/// Serves the entry (or the fill) a 304 validated: from the storage, or, for another
/// node's key under a `direct-connect` rule, as a 307 to its owner.
#[allow(clippy::too_many_arguments)]
async fn serve_validated<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    uri: &Uri,
    rule: Option<&Rule>,
    key: &str,
    found: Lookup,
    storage: &Storage<'_>,
    not_modified: &ResponseHead,
    w: &Worker,
) -> Outcome {
    match (direct_connect_owner(rule, req, storage), found.entry_meta()) {
        (Some((cluster, owner)), Some(meta)) => {
            let validator = crate::cluster::token::validator_of(meta);
            // The owner's connection closes with its one byte unread.
            drop(found);
            redirect(client, req, cluster, owner, key, &validator, rule, w).await
        }
        _ => {
            storage
                .serve(client, req, uri, found, not_modified, w)
                .await
        }
    }
}

/// The cluster and the owner's address when a validated hit of this request is answered
/// with a 307 to its owner's `/direct-connect`: the URL's rule has `direct-connect`, the
/// key is another node's (from the owner itself the redirect would only cost the client
/// a round trip: the owner serves its disk either way), and the client sent no
/// validators of its own (a 304 answers those in fewer bytes than a 307).
fn direct_connect_owner<'a>(
    rule: Option<&Rule>,
    req: &RequestHead,
    storage: &Storage<'a>,
) -> Option<(&'a Cluster, &'a str)> {
    let Storage::Peer(owner) = storage else {
        return None;
    };
    let conditional =
        req.headers.contains("if-none-match") || req.headers.contains("if-modified-since");
    (rule?.direct_connect && !conditional).then_some((owner.cluster, owner.node.name.as_str()))
}

/// The request as the owner's KV GET sees it when only the entry's head is needed: the
/// first byte of its body (RFC 9110 §14.1.2).
fn one_byte(req: &RequestHead) -> RequestHead {
    let mut probe = req.clone();
    probe.headers.remove("if-range");
    probe.headers.set("Range", "bytes=0-0");
    probe
}

/// Answers a validated hit on another node's key with the original's direct-connect
/// redirect: `307` (RFC 9110 §15.4.8: the client repeats the same GET, `Range`
/// included) to `http://<owner>/direct-connect?token=<JWT>`, the token bound to the
/// validated entry ([`crate::cluster::token`]); `X-Chacha-Direct-Connect: 1` with
/// `direct-connect-header`, the hint to fetch it without the proxy.
#[allow(clippy::too_many_arguments)]
async fn redirect<C: AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: &RequestHead,
    cluster: &Cluster,
    owner: &str,
    key: &str,
    validator: &str,
    rule: Option<&Rule>,
    w: &Worker,
) -> Outcome {
    use crate::cluster::token;
    let tok = token::mint(&cluster.secret, key, validator);
    let location = format!("http://{owner}{}?{}={tok}", token::PATH, token::QUERY_PARAM);
    let mut extra = vec![("Location", location.as_str())];
    if rule.is_some_and(|r| r.direct_connect_header) {
        extra.push(("X-Chacha-Direct-Connect", "1"));
    }
    let keep_alive = w.may_keep_alive(req);
    let msg = "redirected with a direct connect hint";
    match write_simple(
        &mut client.io,
        307,
        msg,
        Framing::close_if(!keep_alive),
        &extra,
    )
    .await
    {
        Ok(bytes) => Outcome::Done(Exchange {
            status: 307,
            bytes,
            op: Op::Redirect,
            keep_alive,
        }),
        Err(e) => Outcome::aborted(307, 0, Op::Redirect, e.to_string()),
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
