//! The hand-off queue between the origin side of a fill and its leader's client.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::task::{Poll, Waker};

/// Where the client of a fill takes its body from: the pieces the origin side hands over
/// in memory through a small bounded queue within one task (the buffer just received: no
/// copy through the storage), or read back from the storage (the fill's file on this
/// node's disk, or the owner's fill over a KV GET). The client starts on the queue, which
/// never waits on it while the sink feeds others: a client that falls behind switches, at
/// body offset `from`, to reading the rest back from the storage. A disk fill whose file
/// write fails after that (disk full) hands the pieces from `back` on over the queue
/// again (the file holds everything before `back`), so a client that does not read holds
/// back only its own (uncached) transfer.
#[derive(Default)]
pub(crate) struct Handoff {
    /// Body offset at which the client switched to reading back.
    pub(crate) from: Cell<Option<u64>>,
    /// Body offset from which a client that reads back a disk fill takes the queue again.
    pub(crate) back: Cell<Option<u64>>,
    pub(crate) queue: RefCell<VecDeque<(u64, Vec<u8>)>>,
    /// How the origin side ended: the body is complete (`Ok`) or failed.
    pub(crate) end: RefCell<Option<Result<(), String>>>,
    pub(crate) gone: Cell<bool>,
    pub(crate) version: Cell<u64>,
    pub(crate) waker: RefCell<Option<Waker>>,
}

/// Pieces the hand-off holds at most.
const HANDOFF_PIECES: usize = 4;

impl Handoff {
    /// Whether the client takes its pieces from the queue now.
    pub(crate) fn on_queue(&self) -> bool {
        self.from.get().is_none() || self.back.get().is_some()
    }

    pub(crate) fn bump(&self) {
        self.version.set(self.version.get() + 1);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once anything changed after `version` was read.
    pub(crate) fn changed(&self, version: u64) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.version.get() != version {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    /// Switches the client to the other source at body offset `at`: to reading back, or
    /// (a disk fill whose file stopped taking bytes) from reading back to the queue.
    pub(crate) fn switch(&self, at: u64) {
        match self.from.get() {
            None => self.from.set(Some(at)),
            Some(_) => self.back.set(Some(at)),
        }
        self.bump();
    }

    pub(crate) fn end(&self, result: Result<(), String>) {
        *self.end.borrow_mut() = Some(result);
        self.bump();
    }

    pub(crate) fn client_gone(&self) {
        self.gone.set(true);
        self.bump();
    }

    /// Queues body bytes `pos..` if there is room; hands the buffer back if not.
    pub(crate) fn try_push(&self, pos: u64, buf: Vec<u8>) -> Result<(), Vec<u8>> {
        if self.queue.borrow().len() >= HANDOFF_PIECES {
            return Err(buf);
        }
        self.queue.borrow_mut().push_back((pos, buf));
        self.bump();
        Ok(())
    }

    /// The oldest queued piece and its body offset.
    pub(crate) fn pop(&self) -> Option<(u64, Vec<u8>)> {
        let piece = self.queue.borrow_mut().pop_front();
        if piece.is_some() {
            self.bump();
        }
        piece
    }

    pub(crate) fn from(&self) -> Option<u64> {
        self.from.get()
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.get()
    }

    pub(crate) fn is_gone(&self) -> bool {
        self.gone.get()
    }

    /// How the producing side ended, once it did.
    pub(crate) fn ended(&self) -> Option<Result<(), String>> {
        self.end.borrow().clone()
    }

    /// Queues body bytes `pos..`, waiting for room; false when the client went away.
    pub(crate) async fn push(&self, pos: u64, buf: Vec<u8>) -> bool {
        loop {
            if self.gone.get() {
                return false;
            }
            if self.queue.borrow().len() < HANDOFF_PIECES {
                self.queue.borrow_mut().push_back((pos, buf));
                self.bump();
                return true;
            }
            self.changed(self.version.get()).await;
        }
    }
}
