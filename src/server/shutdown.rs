//! A one-shot signal from the main thread to a worker's tasks: "stop accepting, finish
//! what is in flight". Waiters are woken across threads (monoio's `sync` feature).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Shutdown {
    triggered: AtomicBool,
    next_id: AtomicU64,
    waiters: Mutex<HashMap<u64, Waker>>,
}

impl Shutdown {
    pub fn trigger(&self) {
        self.triggered.store(true, Ordering::SeqCst);
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap());
        for (_, w) in waiters {
            w.wake();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::SeqCst)
    }

    /// Resolves once [`trigger`](Self::trigger) was called.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            shutdown: self,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }
}

pub struct Wait<'a> {
    shutdown: &'a Shutdown,
    id: u64,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        self.shutdown
            .waiters
            .lock()
            .unwrap()
            .insert(self.id, cx.waker().clone());
        // Re-check: trigger() may have run between the first check and the insert.
        if self.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.shutdown.waiters.lock() {
            w.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn trigger_wakes_a_waiter_on_another_thread() {
        let s = Arc::new(Shutdown::default());
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .unwrap();
            rt.block_on(async move { s2.wait().await });
        });
        // The waiter may or may not have registered yet: both orders must complete.
        s.trigger();
        t.join().unwrap();
        assert!(s.is_triggered());
        assert!(s.waiters.lock().unwrap().is_empty());
    }
}
