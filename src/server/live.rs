//! The part of the config that a live reload (SIGHUP, `server::reload`) changes, as the
//! workers see it.
//!
//! The main thread publishes a new [`Snapshot`] and bumps a generation counter. Each
//! worker (core) keeps a [`Worker`] built from the snapshot of one generation; a request
//! compares that generation with the counter once, when its head has arrived (a Relaxed
//! load of a rarely written atomic: no lock, no read-modify-write, no reference count on
//! the hot path), and only after a reload builds (once per core) a new `Worker` from
//! the new snapshot. A request keeps the `Worker` it started with to its end, so its
//! rules, timeouts, interception and cluster never change under it; the per-core state
//! (upstream connection pool, buffers, open entries, connection count) is shared by all
//! generations of a core's `Worker`.
//!
//! Reloadable keys of other parts go into [`Snapshot`] and `Worker::refreshed`
//! (`proxy/refresh.rs`, with this core's `CoreLive`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::cluster::Cluster;
use crate::config::{Rule, Timeouts};
use crate::proxy::connect::Interception;

/// The reloadable settings in force, shared by all cores.
#[derive(Clone)]
pub struct Snapshot {
    /// Set by [`Live::publish`].
    pub generation: u64,
    pub rules: Arc<Vec<Rule>>,
    pub timeouts: Timeouts,
    /// `tls-interceptor`: a rotated CA comes with a new leaf cache (the old CA's leaves
    /// go with the old snapshot); open tunnels keep the TLS session they have.
    pub interception: Option<Arc<Interception>>,
    /// `cluster`: owners follow the new node list at once (rendezvous hashing).
    pub cluster: Option<Arc<Cluster>>,
    // More reloadable keys (of other parts) go here, and into `Worker::refreshed`.
}

/// The published snapshot and its generation.
pub struct Live {
    generation: AtomicU64,
    current: Mutex<Arc<Snapshot>>,
}

impl Live {
    /// Generation 0: the config chacha started with.
    pub fn new(mut first: Snapshot) -> Arc<Live> {
        first.generation = 0;
        Arc::new(Live {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(first)),
        })
    }

    /// The generation of the snapshot in force. Relaxed: a worker that reads an older
    /// value a moment longer just keeps the previous config for one more request.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `next` in force as the next generation (workers pick it up with their next
    /// request); returns that generation.
    pub fn publish(&self, mut next: Snapshot) -> u64 {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        next.generation = current.generation + 1;
        let generation = next.generation;
        *current = Arc::new(next);
        // Stored under the lock, after the snapshot: a worker that sees the new number
        // finds (at least) that snapshot.
        self.generation.store(generation, Ordering::Release);
        generation
    }
}
