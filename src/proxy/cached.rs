//! The caching path for GET requests: key → entry or in-flight fill → conditional request
//! to the origin (always: RFC 9111 §4.3, the original's "always validating") → decide:
//! 304 with an entry → serve from disk; 304 while another request fills → stream the
//! entry as it is written; storable 200 → fill (origin → cache file at the origin's
//! speed, the client reading the file behind the writer); anything else → relay.

use std::sync::Arc;

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::client_side::relay_ranged;
use super::decide::{decide, Action, Held};
use super::fill::{fill, FillTarget};
use super::relay::relay_and_release;
use super::serve::{serve_entry, serve_fill, wait_for_head};
use super::validate::{not_stored, release_bodyless, revalidate, validators_of};
use super::{Op, Outcome, ProxyError, Worker};
use crate::cache::digest::expected_sha256;
use crate::cache::fill::{Fill, FillHandle, Phase, Role, StreamInfo};
use crate::cache::key::{cache_key, key_hash, key_is_exact, match_rule};
use crate::cache::meta::EntryMeta;
use crate::cache::policy::{request_storable, response_storable, stored_headers, NotStorable};
use crate::cache::status::{NotFilled, Outcome as CacheOutcome};
use crate::cache::store::{FillStartError, Store};
use crate::cluster::Owner;
use crate::http::uri::Uri;
use crate::http::{BodyKind, RequestHead, ResponseHead};
use crate::stream::BufConn;
use crate::upstream::UpstreamConn;

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
        return super::forward::forward(client, req, uri, w, not_stored(false, reason)).await;
    }
    match req.body_kind() {
        Ok(BodyKind::None) | Ok(BodyKind::Length(0)) => {}
        // A GET with a body is unusual; relay it untouched.
        _ => {
            return super::forward::forward(
                client,
                req,
                uri,
                w,
                not_stored(false, NotStorable::Method),
            )
            .await
        }
    }
    let key = cache_key(&uri, rule);
    // Cluster mode: a key another node owns is served through that node.
    if let Some(cluster) = &w.cluster {
        if let Owner::Peer(node) = cluster.owner(&key) {
            return super::remote::handle(client, req, uri, key, rule, node, w).await;
        }
    }
    let Some(store) = &w.store else {
        // A cluster member without a disk: its own keys go uncached.
        return super::forward::forward(client, req, uri, w, |_| None).await;
    };
    let hash = key_hash(&key);

    let mut entry = w.open_entries.lookup(store, hash, &key).await;
    let mut lead = None;
    let mut joined: Option<(Arc<Fill>, Arc<StreamInfo>)> = None;
    if entry.is_none() {
        match store.fills.lead_or_join(hash, &key) {
            Role::Leader(h) => lead = Some(h),
            Role::Waiter(f) => match wait_for_head(&f, w).await {
                Some(info) => joined = Some((f, info)),
                None if f.snapshot().phase == Phase::Complete => {
                    entry = w.open_entries.lookup(store, hash, &key).await
                }
                None => {}
            },
            Role::Collision => {}
        }
    }
    let had_entry = entry.is_some();
    let validators = match (&entry, &joined) {
        (Some(e), _) => Some(validators_of(&e.entry.meta)),
        (None, Some((_, info))) => Some(validators_of(&info.meta)),
        _ => None,
    };
    let (mut up, resp) = match revalidate(client, &req, &uri, validators.as_ref(), w).await {
        Ok(x) => x,
        Err(f) => {
            return Outcome::Failed {
                error: f.error.into(),
                close: f.close_client,
                op: Op::Miss,
            }
        }
    };

    let held = match (&entry, &joined) {
        (Some(_), _) => Held::Entry,
        (None, Some(_)) => Held::Filling,
        (None, None) => Held::Nothing,
    };
    let action = decide(
        resp.status,
        held,
        || response_storable(&req, &resp, rule),
        || key_is_exact(&uri, &key, rule, &req.headers),
    );
    match action {
        Action::ServeEntry => {
            let entry = entry.expect("held");
            release_bodyless(&mut up, &resp, w);
            serve_entry(client, &req, entry, &resp, w).await
        }
        Action::ServeFill => {
            let (fill, info) = joined.expect("held");
            release_bodyless(&mut up, &resp, w);
            serve_fill(client, &req, &fill, &info, &resp, w).await
        }
        Action::RelayUnstored(reason) => {
            let cs = not_stored(had_entry, reason)(&resp);
            relay_ranged(client, &req, &mut up, resp, w, cs).await
        }
        Action::Fill => {
            fill_or_relay(
                client,
                req,
                uri,
                key,
                hash,
                lead,
                joined.is_some(),
                had_entry,
                up,
                resp,
                store,
                w,
            )
            .await
        }
        Action::Relay { drop_entry } => {
            if let (true, Some(e)) = (drop_entry, &entry) {
                w.open_entries.forget(hash);
                store.remove(hash, e.entry.generation);
            }
            let cs = not_stored(had_entry, NotStorable::Status)(&resp);
            relay_and_release(client, &req, &mut up, resp, w, Op::Pass, cs).await
        }
    }
}

/// A storable 200: fill the entry when this request leads (or can become the leader of)
/// its fill; else another request is filling it and this one is relayed.
#[allow(clippy::too_many_arguments)]
async fn fill_or_relay<C: AsyncReadRent + AsyncWriteRent>(
    client: &mut BufConn<C>,
    req: RequestHead,
    uri: Uri,
    key: String,
    hash: u64,
    mut lead: Option<FillHandle>,
    joined: bool,
    had_entry: bool,
    mut up: UpstreamConn,
    resp: ResponseHead,
    store: &Arc<Store>,
    w: &Worker,
) -> Outcome {
    if lead.is_none() && !joined {
        // Replacing an entry (or a waiter whose fill went away): try to become the filler.
        if let Role::Leader(h) = store.fills.lead_or_join(hash, &key) {
            lead = Some(h);
        }
    }
    if let Some(handle) = lead {
        let meta = EntryMeta {
            key,
            status: 200,
            headers: stored_headers(&resp.headers).fields,
            ..Default::default()
        };
        let kind = match resp.body_kind(&req.method) {
            Ok(k) => k,
            Err(e) => {
                return Outcome::Failed {
                    error: ProxyError::Upstream(crate::upstream::UpstreamError::Protocol(
                        e.to_string(),
                    )),
                    close: false,
                    op: Op::Miss,
                }
            }
        };
        let body_len = kind.known_len();
        return match store.start_fill(handle, meta, body_len).await {
            Ok(writer) => {
                let digest = expected_sha256(&uri.path_and_query);
                let target = FillTarget {
                    uri: &uri,
                    replaced: had_entry,
                    digest,
                };
                fill(client, &req, up, resp, kind, writer, target, w).await
            }
            Err(FillStartError::TooLarge) => {
                let cs = not_stored(had_entry, NotStorable::TooLarge)(&resp);
                relay_ranged(client, &req, &mut up, resp, w, cs).await
            }
            Err(FillStartError::Io(e)) => {
                log::warn!(
                    "cache: cannot create a fill file in {}: {e}",
                    store.dir.display()
                );
                let cs = Some(CacheOutcome::NotFilled(NotFilled::DiskError).header_value());
                relay_ranged(client, &req, &mut up, resp, w, cs).await
            }
        };
    }
    let cs = Some(CacheOutcome::NotFilled(NotFilled::FillInProgress).header_value());
    relay_ranged(client, &req, &mut up, resp, w, cs).await
}
