//! This node's disk behind the storage seam: lookups in this core's open entries and the
//! store, joining a fill in progress (read-while-write), the fill lock, and fills into a
//! cache file (`cache::store`, `cache::fill`). Serving the bytes is `proxy::serve`.

use std::sync::Arc;

use monoio::fs::File;

use super::{Claim, Entry, Holding, Lookup, NoFill, ReadBack, Sink};
use crate::cache::fill::{Phase, Role};
use crate::cache::meta::EntryMeta;
use crate::cache::policy::NotStorable;
use crate::cache::status::{NotFilled, Outcome as CacheOutcome};
use crate::cache::store::{FillStartError, Store};
use crate::proxy::serve::wait_for_head;
use crate::proxy::Worker;

/// The entry of `key`, else the fill that is writing it (once its head is known), else
/// the fill lock for this request.
pub(crate) async fn lookup(store: &Arc<Store>, hash: u64, key: &str, w: &Worker) -> Lookup {
    if let Some(open) = w.open_entries.lookup(store, hash, key).await {
        return Lookup {
            holding: Holding::Entry(Entry::Disk(open)),
            claim: Claim::None,
        };
    }
    let mut found = Lookup {
        holding: Holding::Nothing,
        claim: Claim::None,
    };
    match store.fills.lead_or_join(hash, key) {
        Role::Leader(h) => found.claim = Claim::Local(h),
        Role::Waiter(f) => match wait_for_head(&f, w).await {
            Some(info) => found.holding = Holding::Filling(f, info),
            None if f.snapshot().phase == Phase::Complete => {
                if let Some(open) = w.open_entries.lookup(store, hash, key).await {
                    found.holding = Holding::Entry(Entry::Disk(open));
                }
            }
            None => {}
        },
        Role::Collision => {}
    }
    found
}

/// Drops the held entry when asked; the fill lock goes with the lookup.
pub(crate) fn release(store: &Arc<Store>, hash: u64, lookup: Lookup, drop_entry: bool, w: &Worker) {
    if let (true, Holding::Entry(Entry::Disk(e))) = (drop_entry, &lookup.holding) {
        w.open_entries.forget(hash);
        store.remove(hash, e.entry.generation);
    }
}

/// Starts a fill file for `meta` when this request holds (or can take) the key's fill
/// lock; another request filling the key, a body too large for the cache or a fill file
/// that cannot be created relay the response instead.
pub(crate) async fn begin_fill<'a>(
    store: &Arc<Store>,
    hash: u64,
    lookup: Lookup,
    meta: EntryMeta,
    body_len: Option<u64>,
) -> Result<(Option<Sink<'a>>, ReadBack<'a>), NoFill> {
    let had_entry = lookup.has_entry();
    let handle = match lookup.claim {
        Claim::Local(h) => Some(h),
        // A 200 newer than the fill this request joined: that fill stores it.
        _ if matches!(lookup.holding, Holding::Filling(..)) => None,
        // Replacing an entry (or a waiter whose fill went away): try to become the filler.
        _ => match store.fills.lead_or_join(hash, &meta.key) {
            Role::Leader(h) => Some(h),
            _ => None,
        },
    };
    let Some(handle) = handle else {
        return Err(CacheOutcome::NotFilled(NotFilled::FillInProgress).header_value());
    };
    let writer = match store.start_fill(handle, meta, body_len).await {
        Ok(writer) => writer,
        Err(FillStartError::TooLarge) => {
            let cs = CacheOutcome::NotStored {
                had_entry,
                status: 200,
                reason: NotStorable::TooLarge,
            };
            return Err(cs.header_value());
        }
        Err(FillStartError::Io(e)) => {
            log::warn!(
                "cache: cannot create a fill file in {}: {e}",
                store.dir.display()
            );
            return Err(CacheOutcome::NotFilled(NotFilled::DiskError).header_value());
        }
    };
    let fill = writer.fill().clone();
    let info = fill
        .snapshot()
        .info
        .expect("a started fill has its stream info");
    // The leader's client reads the fill through its own descriptor, opened now: the
    // temp file may be renamed or unlinked before the client gets to it.
    let file = match File::open(&info.temp_path).await {
        Ok(f) => Some(f),
        Err(e) => {
            log::warn!(
                "cache: cannot read back the fill file {}: {e}",
                info.temp_path.display()
            );
            None
        }
    };
    // Nothing can read the file back: store nothing, hand every piece over.
    let sink = file.as_ref().map(|_| Sink::Disk(writer));
    Ok((sink, ReadBack::Disk { fill, info, file }))
}
