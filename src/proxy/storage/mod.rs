//! The storage seam of the cached flow (`cached.rs`): where a key's entry is looked up
//! and served from, and where its fill goes. Two implementations, dispatched statically
//! (no allocation, no reference count, no dynamic call on the hot path):
//! - [`local`]: this node's disk (the store, its in-flight fills, this core's open
//!   entries);
//! - [`peer`]: the key's owner node over the KV protocol (`cluster::kv::client`).
//!
//! In the spirit of the original's `Cache` interface (Get/Put) and of pingora-cache
//! keeping storage and the fill lock apart from the HTTP session: the flow never asks
//! where the bytes are.

pub(crate) mod local;
pub(crate) mod peer;

use std::rc::Rc;
use std::sync::Arc;

use monoio::fs::File;
use monoio::io::AsyncWriteRent;

use super::decide::Held;
use super::serve::{serve_entry, serve_fill};
use super::validate::validators_of;
use super::{Op, Outcome, Worker};
use crate::cache::fill::{Fill, FillHandle, StreamInfo};
use crate::cache::meta::EntryMeta;
use crate::cache::open::OpenEntry;
use crate::cache::policy::Validators;
use crate::cache::store::{FillWriter, Store};
use crate::cluster::kv::client::Found;
use crate::cluster::Owner;
use crate::http::uri::Uri;
use crate::http::{RequestHead, ResponseHead};
use crate::stream::BufConn;

/// Where one request's key is stored.
pub(crate) enum Storage<'a> {
    /// This node's disk; the key's hash.
    Local(&'a Arc<Store>, u64),
    /// The node that owns the key, or its stand-in while the owner is down.
    Peer(peer::OwnerNode<'a>),
}

/// A key that is served uncached: the `Cache-Status` its response gets.
pub(crate) type Uncached = fn(&ResponseHead) -> Option<String>;

/// A complete entry, served once the origin's 304 validated it.
pub(crate) enum Entry {
    Disk(Rc<OpenEntry>),
    Peer(Box<Found>),
}

/// What the storage holds for the key while the conditional request goes out.
pub(crate) enum Holding {
    Entry(Entry),
    /// An entry another request on this node is still writing.
    Filling(Arc<Fill>, Arc<StreamInfo>),
    Nothing,
}

/// This request's right to fill the key, if it has one.
pub(crate) enum Claim {
    /// This node's fill lock.
    Local(FillHandle),
    /// The owner holds the key's other requests until our PUT (or DELETE) arrives.
    Peer,
    None,
}

/// The answer of [`Storage::lookup`].
pub(crate) struct Lookup {
    pub(crate) holding: Holding,
    pub(crate) claim: Claim,
}

impl Lookup {
    /// The validators the conditional request carries (RFC 9111 §4.3.1).
    pub(crate) fn validators(&self) -> Option<Validators> {
        match &self.holding {
            Holding::Entry(Entry::Disk(e)) => Some(validators_of(&e.entry.meta)),
            Holding::Entry(Entry::Peer(f)) => Some(validators_of(&f.meta)),
            Holding::Filling(_, info) => Some(validators_of(&info.meta)),
            Holding::Nothing => None,
        }
    }

    pub(crate) fn held(&self) -> Held {
        match self.holding {
            Holding::Entry(_) => Held::Entry,
            Holding::Filling(..) => Held::Filling,
            Holding::Nothing => Held::Nothing,
        }
    }

    /// The head of the complete entry held, if any.
    pub(crate) fn entry_meta(&self) -> Option<&EntryMeta> {
        match &self.holding {
            Holding::Entry(Entry::Disk(e)) => Some(&e.entry.meta),
            Holding::Entry(Entry::Peer(f)) => Some(&f.meta),
            _ => None,
        }
    }

    pub(crate) fn has_entry(&self) -> bool {
        matches!(self.holding, Holding::Entry(_))
    }
}

/// Where a fill's body goes.
pub(crate) enum Sink<'a> {
    /// This node's fill file.
    Disk(FillWriter),
    /// A KV PUT to the owner.
    Peer(peer::Put<'a>),
}

impl Sink<'_> {
    /// Writes the next piece of the body; hands the buffer back.
    pub(crate) async fn write(&mut self, buf: Vec<u8>) -> (Result<(), String>, Vec<u8>) {
        match self {
            Sink::Disk(fw) => {
                let (res, buf) = fw.write(buf).await;
                (res.map_err(|e| e.to_string()), buf)
            }
            Sink::Peer(put) => put.write(buf).await,
        }
    }

    /// Logs why the sink stopped taking the body.
    pub(crate) fn log_stopped(&self, req: &RequestHead, e: &str) {
        match self {
            Sink::Disk(_) => log::warn!("cache: fill of {} stopped: {e}", req.target),
            Sink::Peer(put) => log::info!("cluster: PUT to {} stopped: {e}", put.node_name()),
        }
    }

    /// Whether what the sink took can still be read back when it stops: the leader's
    /// own descriptor reads a failed fill's file; a cut PUT's fill is gone on the owner.
    pub(crate) fn keeps_what_it_took(&self) -> bool {
        matches!(self, Sink::Disk(_))
    }

    /// Commits the whole body; on failure returns the body bytes the sink holds.
    pub(crate) async fn commit(self, req: &RequestHead, w: &Worker) -> Result<(), u64> {
        match self {
            Sink::Disk(fw) => {
                let written = fw.written();
                fw.commit().await.map_err(|e| {
                    log::warn!("cache: cannot commit {}: {e}", req.target);
                    written
                })
            }
            Sink::Peer(put) => put.finish(req, w).await.map_err(|_| 0),
        }
    }

    /// Abandons the body: the entry is never committed, and the fill's other readers
    /// are cut.
    pub(crate) async fn abort(self) {
        match self {
            // Dropping the writer fails the fill: readers abort, the temp file goes.
            Sink::Disk(fw) => drop(fw),
            Sink::Peer(put) => put.abort().await,
        }
    }
}

/// Where the client of a fill reads back what the sink took.
pub(crate) enum ReadBack<'a> {
    /// The fill's file, through the leader's own descriptor (`None`: not readable).
    Disk {
        fill: Arc<Fill>,
        info: Arc<StreamInfo>,
        file: Option<File>,
    },
    /// The owner's fill, over a KV GET.
    Peer {
        owner: peer::OwnerNode<'a>,
        key: String,
    },
}

/// Why a storable response is relayed instead of filled: its `Cache-Status`.
pub(crate) type NoFill = String;

// The peer arms below are boxed: a KV exchange's future is ~4 KiB, and unboxed it would
// size every request's future (a local hit included), which is moved into its box on
// each request.
impl<'a> Storage<'a> {
    /// The storage of `key` and what it holds: [`Storage::of`], then
    /// [`Storage::lookup`] (with the request `probe` makes for that storage, if any:
    /// direct-connect asks for one byte). A peer found unreachable on the way is marked down and the
    /// key goes, once, to its stand-in (`Cluster::serving`), so that a node dying does
    /// not send its keys to the origin uncached.
    pub(crate) async fn find(
        key: &str,
        req: &RequestHead,
        probe: impl Fn(&Storage<'a>) -> Option<RequestHead>,
        w: &'a Worker,
    ) -> Result<(Storage<'a>, Lookup), Uncached> {
        let storage = Storage::of(key, w)?;
        let asked = probe(&storage);
        match storage.lookup(key, asked.as_ref().unwrap_or(req), w).await {
            Ok(found) => Ok((storage, found)),
            Err(uncached) => {
                let Storage::Peer(owner) = &storage else {
                    return Err(uncached);
                };
                if !owner.node.is_down() {
                    return Err(uncached); // it answered, uselessly: not a health matter
                }
                let stand_in = Storage::of(key, w)?;
                let asked = probe(&stand_in);
                let found = stand_in
                    .lookup(key, asked.as_ref().unwrap_or(req), w)
                    .await?;
                Ok((stand_in, found))
            }
        }
    }

    /// The storage of `key`: in cluster mode the node that serves it (its owner, or the
    /// owner's stand-in while the owner is down: `Cluster::serving`), else this node's
    /// disk; or how the request is served uncached (no disk, or no node up).
    pub(crate) fn of(key: &str, w: &'a Worker) -> Result<Storage<'a>, Uncached> {
        if let Some(cluster) = &w.cluster {
            if let Owner::Peer(node) = cluster.serving(key) {
                if node.is_down() {
                    return Err(peer::owner_down);
                }
                return Ok(Storage::Peer(peer::OwnerNode { cluster, node }));
            }
        }
        match &w.store {
            Some(store) => Ok(Storage::Local(store, crate::cache::key::key_hash(key))),
            // A cluster member without a disk: its own keys go uncached.
            None => Err(|_| None),
        }
    }

    /// What the storage holds for `key`, and this request's claim to fill it; `Err`
    /// when the owner gave no usable answer (the request goes uncached).
    pub(crate) async fn lookup(
        &self,
        key: &str,
        req: &RequestHead,
        w: &Worker,
    ) -> Result<Lookup, Uncached> {
        match self {
            Storage::Local(store, hash) => Ok(local::lookup(store, *hash, key, w).await),
            Storage::Peer(owner) => Box::pin(owner.lookup(key, req, w)).await,
        }
    }

    /// Ends a lookup that leads to no fill: gives up the claim, and with `drop_entry`
    /// drops the held entry (a 404/410 for exactly its URL).
    pub(crate) async fn release(&self, lookup: Lookup, drop_entry: bool, key: &str, w: &Worker) {
        match self {
            Storage::Local(store, hash) => local::release(store, *hash, lookup, drop_entry, w),
            Storage::Peer(owner) => Box::pin(owner.release(lookup, drop_entry, key, w)).await,
        }
    }

    /// Serves the entry (or the fill) a 304 validated.
    pub(crate) async fn serve<C: AsyncWriteRent>(
        &self,
        client: &mut BufConn<C>,
        req: &RequestHead,
        uri: &Uri,
        lookup: Lookup,
        not_modified: &ResponseHead,
        w: &Worker,
    ) -> Outcome {
        match lookup.holding {
            Holding::Entry(Entry::Disk(open)) => {
                serve_entry(client, req, open, not_modified, w).await
            }
            Holding::Entry(Entry::Peer(found)) => {
                let Storage::Peer(owner) = self else {
                    unreachable!("a peer's entry comes from a peer")
                };
                Box::pin(peer::serve(
                    client,
                    req,
                    uri,
                    *found,
                    *owner,
                    not_modified,
                    w,
                ))
                .await
            }
            Holding::Filling(fill, info) => {
                serve_fill(client, req, &fill, &info, not_modified, w).await
            }
            Holding::Nothing => unreachable!("a 304 is served only on something held"),
        }
    }

    /// Starts storing a storable 200 described by `meta`: its sink (`None`: served as a
    /// fill but stored nowhere, the owner's PUT failed) and where the client reads back.
    /// `Err`: relayed, not stored, with this `Cache-Status`.
    pub(crate) async fn begin_fill(
        &self,
        lookup: Lookup,
        meta: EntryMeta,
        body_len: Option<u64>,
        w: &Worker,
    ) -> Result<(Option<Sink<'a>>, ReadBack<'a>), NoFill> {
        match self {
            Storage::Local(store, hash) => {
                local::begin_fill(store, *hash, lookup, meta, body_len).await
            }
            Storage::Peer(owner) => {
                // The owner's outdated copy (its connection closes unread); the PUT
                // completes our claim, if we hold one.
                drop(lookup);
                Ok(Box::pin(owner.begin_fill(meta, body_len, w)).await)
            }
        }
    }

    /// What a fill is logged as.
    pub(crate) fn fill_op(&self) -> Op {
        match self {
            Storage::Local(..) => Op::Fill,
            Storage::Peer(_) => Op::PeerFill,
        }
    }
}
