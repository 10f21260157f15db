//! A gate an in-test origin's handler waits at, so that a test holds responses until it
//! releases them (to create concurrency deterministically): `close`, then the requests
//! that reach `pass` wait until `open` (bounded, so a test that forgets to open it fails
//! on its own deadline rather than hanging a handler thread forever). `wait_waiting` tells
//! the test that handlers have reached the gate (so what they did before it is done).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a handler waits at a closed gate before going on anyway.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Gate {
    /// Whether the gate is closed, and how many handlers wait at it.
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Gate {
    pub fn close(&self) {
        self.state.lock().unwrap().0 = true;
    }

    pub fn open(&self) {
        self.state.lock().unwrap().0 = false;
        self.changed.notify_all();
    }

    /// Returns once the gate is open (at once when it is).
    pub fn pass(&self) {
        let deadline = Instant::now() + HOLD_LIMIT;
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        self.changed.notify_all();
        while state.0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
        state.1 -= 1;
    }

    /// Blocks until at least `n` handlers wait at the gate (so whatever they did before
    /// `pass` is done); false on timeout. A request the origin recorded has not
    /// necessarily reached its handler yet: this is the signal that it has.
    pub fn wait_waiting(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        while state.1 < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
        true
    }
}
