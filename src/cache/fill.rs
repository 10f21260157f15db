//! In-flight fills shared by all cores: the "fill lock" that makes concurrent requests for
//! one key share a single origin fetch, and the progress signal readers follow while the
//! entry is being written (read-while-write).
//!
//! A fill goes `Pending` (the leader claimed the key and asked the origin) → `Streaming`
//! (the temp file exists and grows; `written` body bytes are readable) → `Complete` (renamed
//! into place) or `Failed` (the temp file is gone; readers must abort). Pure
//! synchronisation: no I/O; wakers are woken across cores (monoio's `sync` feature).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::meta::EntryMeta;

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Streaming,
    Complete,
    Failed,
}

/// What readers need to stream an entry that is still being written.
#[derive(Debug)]
pub struct StreamInfo {
    /// Status and stored headers (no Content-Length; see `body_len`).
    pub meta: EntryMeta,
    /// The body length when the origin announced it.
    pub body_len: Option<u64>,
    pub temp_path: PathBuf,
    pub final_path: PathBuf,
    pub body_offset: u64,
}

struct Inner {
    phase: Phase,
    info: Option<Arc<StreamInfo>>,
    wakers: Vec<Waker>,
}

/// One fill, shared by its leader and its readers.
pub struct Fill {
    pub key: String,
    pub hash: u64,
    inner: Mutex<Inner>,
    /// Body bytes that are in the temp file (written before this is raised).
    written: AtomicU64,
    /// Bumped on every change, so a waiter can tell whether it missed one.
    version: AtomicU64,
}

/// A consistent view of a fill.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub phase: Phase,
    pub info: Option<Arc<StreamInfo>>,
    pub written: u64,
    pub version: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Fill {
    pub fn snapshot(&self) -> Snapshot {
        // Version first: a change after this read makes `changed(version)` return at once.
        let version = self.version.load(Ordering::Acquire);
        let inner = lock(&self.inner);
        Snapshot {
            phase: inner.phase,
            info: inner.info.clone(),
            written: self.written.load(Ordering::Acquire),
            version,
        }
    }

    /// Resolves once anything changed after the snapshot with `version` was taken.
    pub fn changed(&self, version: u64) -> Changed<'_> {
        Changed {
            fill: self,
            version,
        }
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        let wakers = {
            let mut inner = lock(&self.inner);
            f(&mut inner);
            self.version.fetch_add(1, Ordering::AcqRel);
            std::mem::take(&mut inner.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }
}

pub struct Changed<'a> {
    fill: &'a Fill,
    version: u64,
}

impl Future for Changed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.fill.version.load(Ordering::Acquire) != self.version {
            return Poll::Ready(());
        }
        let mut inner = lock(&self.fill.inner);
        // Re-check under the lock: `update` bumps the version while holding it.
        if self.fill.version.load(Ordering::Acquire) != self.version {
            return Poll::Ready(());
        }
        if !inner.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            inner.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The registry of in-flight fills, sharded by key hash.
pub struct Fills {
    shards: Vec<Mutex<HashMap<u64, Arc<Fill>>>>,
}

impl Default for Fills {
    fn default() -> Self {
        Fills {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// What a request is to a key's fill.
pub enum Role {
    /// Nobody fills this key: this request does (drop the handle to give up).
    Leader(FillHandle),
    /// Another request is filling it.
    Waiter(Arc<Fill>),
    /// A different key with the same hash is being filled: go uncached.
    Collision,
}

impl Fills {
    fn shard(&self, hash: u64) -> &Mutex<HashMap<u64, Arc<Fill>>> {
        &self.shards[(hash as usize) % SHARDS]
    }

    pub fn lead_or_join(self: &Arc<Self>, hash: u64, key: &str) -> Role {
        let mut map = lock(self.shard(hash));
        if let Some(f) = map.get(&hash) {
            return if f.key == key {
                Role::Waiter(f.clone())
            } else {
                Role::Collision
            };
        }
        let fill = Arc::new(Fill {
            key: key.to_string(),
            hash,
            inner: Mutex::new(Inner {
                phase: Phase::Pending,
                info: None,
                wakers: Vec::new(),
            }),
            written: AtomicU64::new(0),
            version: AtomicU64::new(0),
        });
        map.insert(hash, fill.clone());
        Role::Leader(FillHandle {
            fill,
            fills: self.clone(),
            done: false,
        })
    }

    /// The fill in progress for `hash`, if any.
    pub fn get(&self, hash: u64) -> Option<Arc<Fill>> {
        lock(self.shard(hash)).get(&hash).cloned()
    }

    /// Runs `f` if no fill of `hash` is in flight, holding the registry lock of `hash`
    /// meanwhile so that none can start: the scan deletes a bad file this way, knowing that
    /// no fill renames a new file into its path in between (only a registered fill writes
    /// an entry path, and it leaves the registry only once its entry is in the index).
    /// `None` if a fill is in flight. `f` must be short (a stat and an unlink).
    pub fn with_idle<T>(&self, hash: u64, f: impl FnOnce() -> T) -> Option<T> {
        let map = lock(self.shard(hash));
        if map.contains_key(&hash) {
            return None;
        }
        let out = f();
        drop(map);
        Some(out)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Readers waiting for a change of a fill in flight (for the metrics; takes every
    /// lock, so only a scrape calls it). A waiter that gave up stays counted until the
    /// fill's next change.
    pub fn waiting(&self) -> usize {
        let fills: Vec<Arc<Fill>> = self
            .shards
            .iter()
            .flat_map(|s| lock(s).values().cloned().collect::<Vec<_>>())
            .collect();
        fills.iter().map(|f| lock(&f.inner).wakers.len()).sum()
    }

    fn remove(&self, fill: &Arc<Fill>) {
        let mut map = lock(self.shard(fill.hash));
        if map.get(&fill.hash).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            map.remove(&fill.hash);
        }
    }
}

/// The leader's side of a fill. Dropping it before [`FillHandle::complete`] marks the fill
/// failed and wakes every reader (a guard makes abandonment safe on every path).
pub struct FillHandle {
    fill: Arc<Fill>,
    fills: Arc<Fills>,
    done: bool,
}

impl FillHandle {
    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// The temp file exists: readers may start.
    pub fn start(&self, info: StreamInfo) {
        let info = Arc::new(info);
        self.fill.update(|i| {
            i.phase = Phase::Streaming;
            i.info = Some(info);
        });
    }

    /// `total` body bytes are now in the temp file.
    pub fn progress(&self, total: u64) {
        self.fill.written.store(total, Ordering::Release);
        self.fill.update(|_| {});
    }

    /// The entry was renamed into place.
    pub fn complete(mut self) {
        self.done = true;
        self.fills.remove(&self.fill);
        self.fill.update(|i| i.phase = Phase::Complete);
    }
}

impl Drop for FillHandle {
    fn drop(&mut self) {
        if !self.done {
            self.fills.remove(&self.fill);
            self.fill.update(|i| i.phase = Phase::Failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> StreamInfo {
        StreamInfo {
            meta: EntryMeta::default(),
            body_len: Some(10),
            temp_path: PathBuf::from("/nonexistent/t"),
            final_path: PathBuf::from("/nonexistent/f"),
            body_offset: 4096,
        }
    }

    #[test]
    fn second_request_joins_the_first() {
        let fills = Arc::new(Fills::default());
        let Role::Leader(h) = fills.lead_or_join(7, "k") else {
            panic!("first must lead")
        };
        let Role::Waiter(f) = fills.lead_or_join(7, "k") else {
            panic!("second must wait")
        };
        assert!(matches!(fills.lead_or_join(7, "other"), Role::Collision));
        assert_eq!(f.snapshot().phase, Phase::Pending);
        h.start(info());
        h.progress(5);
        let s = f.snapshot();
        assert_eq!((s.phase, s.written), (Phase::Streaming, 5));
        h.complete();
        assert_eq!(f.snapshot().phase, Phase::Complete);
        assert!(fills.is_empty());
        assert!(matches!(fills.lead_or_join(7, "k"), Role::Leader(_)));
    }

    #[test]
    fn dropping_the_leader_fails_the_fill() {
        let fills = Arc::new(Fills::default());
        let Role::Leader(h) = fills.lead_or_join(1, "k") else {
            panic!()
        };
        let f = fills.get(1).unwrap();
        drop(h);
        assert_eq!(f.snapshot().phase, Phase::Failed);
        assert!(fills.get(1).is_none());
    }

    #[test]
    fn changed_wakes_a_waiter_on_another_thread() {
        let fills = Arc::new(Fills::default());
        let Role::Leader(h) = fills.lead_or_join(3, "k") else {
            panic!()
        };
        let f = fills.get(3).unwrap();
        let v = f.snapshot().version;
        let t = std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .unwrap();
            rt.block_on(async move { f.changed(v).await });
        });
        h.progress(1);
        t.join().unwrap();
    }
}
