//! One core's side of a live reload: the newest [`Worker`] built on this core from the
//! [`Snapshot`](crate::server::live::Snapshot) in force, rebuilt once per core after a
//! reload (see `server::live`).

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use super::Worker;
use crate::server::live::Live;

/// One core's view of [`Live`]: the newest `Worker` built on this core, so that the
/// core's connections share it after a reload (a cache: it is rebuilt if none holds it).
pub struct CoreLive {
    pub shared: Arc<Live>,
    latest: RefCell<Weak<Worker>>,
}

impl CoreLive {
    pub fn new(shared: Arc<Live>) -> Rc<CoreLive> {
        Rc::new(CoreLive {
            shared,
            latest: RefCell::new(Weak::new()),
        })
    }
}

impl Worker {
    /// A newer generation of this core's worker when a reload happened since this one
    /// was built, else `None` (keep using this one). One Relaxed load when nothing
    /// changed.
    #[inline]
    pub fn newer(&self) -> Option<Rc<Worker>> {
        if self.live.shared.generation() == self.generation {
            return None;
        }
        Some(self.refreshed())
    }

    /// This core's worker for the snapshot in force (built on first use).
    #[cold]
    fn refreshed(&self) -> Rc<Worker> {
        let snap = self.live.shared.snapshot();
        if let Some(w) = self.live.latest.borrow().upgrade() {
            if w.generation == snap.generation {
                return w;
            }
        }
        // Connections handed out from now on get the new timeouts.
        self.upstream
            .set_timeouts(snap.timeouts.connect, snap.timeouts.upstream_body);
        let w = Rc::new(Worker {
            id: self.id,
            generation: snap.generation,
            live: self.live.clone(),
            timeouts: snap.timeouts,
            rules: snap.rules.clone(),
            interception: snap.interception.clone(),
            cluster: snap.cluster.clone(),
            upstream: self.upstream.clone(),
            shutdown: self.shutdown.clone(),
            bufs: self.bufs.clone(),
            active: self.active.clone(),
            store: self.store.clone(),
            open_entries: self.open_entries.clone(),
            access: self.access.clone(),
        });
        *self.live.latest.borrow_mut() = Rc::downgrade(&w);
        w
    }
}
