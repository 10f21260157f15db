//! A small per-core cache of open, decoded tiny entries (body ≤ `MAX_INLINE_BODY`, kept in
//! memory), so that a hot small object's hit does not pay open + header read + decode +
//! read + close every time; larger entries are opened per request (their transfer dwarfs
//! that cost). Entries are re-checked against the shared index (generation) on every use
//! and purged when the index dropped them. An evicted entry whose file is still open here
//! keeps its blocks until it is dropped: at most `MAX_OPEN × (MAX_INLINE_BODY + 4 KiB)`
//! (about 5 MiB) per core beyond the configured limit, for at most `PURGE_EVERY` lookups.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;

use super::store::{touch, Entry, Store};

/// Most entries kept open per core.
pub const MAX_OPEN: usize = 256;
/// Access times are written to the file at most this often per entry.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// Bodies up to this size are kept in memory with their open entry.
pub const MAX_INLINE_BODY: u64 = 16 * 1024;
/// Every this many lookups, entries the index no longer knows are dropped.
const PURGE_EVERY: u64 = 1024;

pub struct OpenEntry {
    pub entry: Entry,
    /// The whole body of a tiny entry, read once when it was opened.
    pub body: Option<Vec<u8>>,
    last_touch: Cell<Option<Instant>>,
    last_use: Cell<u64>,
}

impl OpenEntry {
    /// Records the access in the file's mtime (survives a restart), rate-limited.
    pub fn touch(&self) {
        let now = Instant::now();
        if self
            .last_touch
            .get()
            .is_none_or(|t| now - t >= TOUCH_INTERVAL)
        {
            self.last_touch.set(Some(now));
            touch(&self.entry.file);
        }
    }
}

#[derive(Default)]
pub struct OpenEntries {
    map: RefCell<HashMap<u64, Rc<OpenEntry>>>,
    clock: Cell<u64>,
}

impl OpenEntries {
    /// The committed entry for `key` (cached open file, or opened now).
    pub async fn lookup(&self, store: &Arc<Store>, hash: u64, key: &str) -> Option<Rc<OpenEntry>> {
        let now = self.clock.get() + 1;
        self.clock.set(now);
        if now.is_multiple_of(PURGE_EVERY) {
            self.purge(store);
        }
        let generation = store.index.get_generation(hash)?;
        if let Some(e) = self.map.borrow().get(&hash) {
            if e.entry.generation == generation && e.entry.meta.key == key {
                e.last_use.set(now);
                return Some(e.clone());
            }
        }
        let info = store.index.peek(hash)?;
        self.map.borrow_mut().remove(&hash);
        let entry = store.open_entry(hash, key, &info).await?;
        let small = entry.meta.body_len <= MAX_INLINE_BODY;
        let mut body = None;
        if entry.meta.body_len <= MAX_INLINE_BODY {
            let len = entry.meta.body_len as usize;
            let (res, buf) = entry
                .file
                .read_exact_at(Vec::with_capacity(len).slice_mut(0..len), entry.body_offset)
                .await;
            match res {
                Ok(()) => body = Some(buf.into_inner()),
                Err(e) => {
                    // Short or unreadable: never serve it; the request refills it.
                    let why = format!("reading its body failed: {e}");
                    store
                        .drop_broken(hash, entry.generation, &entry.file, &why)
                        .await;
                    return None;
                }
            }
        }
        let open = Rc::new(OpenEntry {
            entry,
            body,
            last_touch: Cell::new(None),
            last_use: Cell::new(now),
        });
        if small && open.body.is_some() {
            let mut map = self.map.borrow_mut();
            if map.len() >= MAX_OPEN {
                // Drop the least recently used half: O(n) but only every MAX_OPEN/2 inserts.
                let mut uses: Vec<u64> = map.values().map(|e| e.last_use.get()).collect();
                uses.sort_unstable();
                let cut = uses[uses.len() / 2];
                map.retain(|_, e| e.last_use.get() > cut);
            }
            map.insert(hash, open.clone());
        }
        Some(open)
    }

    /// Forgets the open entry of `hash` (it was replaced or dropped).
    pub fn forget(&self, hash: u64) {
        self.map.borrow_mut().remove(&hash);
    }

    fn purge(&self, store: &Store) {
        self.map.borrow_mut().retain(|&hash, e| {
            store
                .index
                .peek(hash)
                .is_some_and(|i| i.generation == e.entry.generation)
        });
    }

    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
