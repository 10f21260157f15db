//! Fairness for long transfers. monoio has no cooperative budget: on the legacy (epoll)
//! driver an I/O op that can complete at once returns without yielding, so one fast
//! transfer could starve the other connections of its core (MONOIO-NOTES). Long loops
//! pass their bytes through a [`Budget`], which yields after every [`SLICE`] bytes with a
//! zero sleep (a timer, so the task goes to the back of the queue; a self-wake would be
//! re-queued at the front). On io_uring every op goes through the ring and yields, so the
//! budget does nothing there (measured: `benches/fairness.rs`).

use std::time::Duration;

/// Bytes a transfer may move between forced yields on the legacy driver.
pub const SLICE: u64 = 16 * 1024 * 1024;

fn yields_needed() -> bool {
    crate::driver::uses_legacy()
}

#[derive(Default)]
pub struct Budget {
    since_yield: u64,
}

impl Budget {
    /// Accounts `n` transferred bytes; yields to the other tasks of this core when the
    /// slice is used up (legacy driver only).
    pub async fn spend(&mut self, n: u64) {
        if !yields_needed() {
            return;
        }
        self.since_yield += n;
        if self.since_yield >= SLICE {
            self.since_yield = 0;
            monoio::time::sleep(Duration::ZERO).await;
        }
    }
}
