//! A gate an in-test origin's handler waits at, so that a test holds responses until it
//! releases them (to create concurrency deterministically): `close`, then the requests
//! that reach `pass` wait until `open` (bounded, so a test that forgets to open it fails
//! on its own deadline rather than hanging a handler thread forever).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a handler waits at a closed gate before going on anyway.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Gate {
    closed: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    pub fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    pub fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.changed.notify_all();
    }

    /// Returns once the gate is open (at once when it is).
    pub fn pass(&self) {
        let deadline = Instant::now() + HOLD_LIMIT;
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            closed = self.changed.wait_timeout(closed, deadline - now).unwrap().0;
        }
    }
}
