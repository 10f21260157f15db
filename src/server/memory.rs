//! Giving memory back after a burst of client connections.
//!
//! A connection waiting for a request holds only its task (about 2 KiB; its read buffer
//! is lent by the core's pool while a request is read and answered, see
//! [`crate::stream::BufConn::pooled`]), but the allocator keeps what thousands of them
//! freed: glibc returns freed memory to the kernel only from the top of a heap, so a
//! burst that closed leaves its pages resident, scattered between live blocks. After a
//! large drop in a core's open connections, `malloc_trim(0)` gives the free pages of
//! every arena back (`madvise(MADV_DONTNEED)`); measured in `benches/conns.rs`.

use std::cell::Cell;
use std::time::Instant;

/// How far a core's open connections must fall below their peak (and to at most half
/// of it) before memory is trimmed; a drop of this size freed a few MiB.
pub const TRIM_AFTER_CLOSED: usize = 1024;
/// A core whose last connection closed trims when it had at least this many open.
pub const TRIM_WHEN_EMPTY_AFTER: usize = 256;

thread_local! {
    /// This core's most open client connections since the last trim.
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// A client connection opened on this core; `open`: this core's count now.
pub fn connection_opened(open: usize) {
    PEAK.with(|p| p.set(p.get().max(open)));
}

/// A client connection closed on this core; `open`: this core's count now. Trims
/// when the count fell by [`TRIM_AFTER_CLOSED`] or more and to half its peak or less
/// (a drop from N connections trims about log2(N / 1024) + 1 times on the way down),
/// and when the last connection closed after a peak of [`TRIM_WHEN_EMPTY_AFTER`] or
/// more (what the halvings left). Churn below that never trims.
pub fn connection_closed(open: usize) {
    let peak = PEAK.with(|p| {
        let peak = p.get();
        let due = (peak.saturating_sub(open) >= TRIM_AFTER_CLOSED && open <= peak / 2)
            || (open == 0 && peak >= TRIM_WHEN_EMPTY_AFTER);
        if due {
            p.set(open);
        }
        due.then_some(peak)
    });
    if let Some(peak) = peak {
        let start = Instant::now();
        let released = trim_heap();
        log::debug!(
            "client connections on this core down from {peak} to {open}: memory trimmed in {:?}{}",
            start.elapsed(),
            if released {
                ""
            } else {
                " (nothing to release)"
            }
        );
    }
}

/// Returns the allocator's free pages to the kernel; whether any were.
fn trim_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim has no preconditions; it takes each arena's lock itself.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trims a sequence of open counts causes (on a fresh thread: its own peak).
    fn trims(counts: &[(bool, usize)]) -> usize {
        let counts = counts.to_vec();
        std::thread::spawn(move || {
            let mut n = 0;
            for (opened, open) in counts {
                if opened {
                    connection_opened(open);
                } else {
                    let before = PEAK.with(|p| p.get());
                    connection_closed(open);
                    n += usize::from(PEAK.with(|p| p.get()) != before);
                }
            }
            n
        })
        .join()
        .unwrap()
    }

    #[test]
    fn a_large_drop_trims_a_few_times_and_churn_never() {
        // 10,000 open, then all close one by one: trims at 5000, 2500, 1250 and 226
        // (not at 0: fewer than 256 closed since).
        let mut seq: Vec<(bool, usize)> = (1..=10_000).map(|n| (true, n)).collect();
        seq.extend((0..10_000).rev().map(|n| (false, n)));
        assert_eq!(trims(&seq), 4);
        // 300 open, all closed: once, when the last one closes.
        let mut seq: Vec<(bool, usize)> = (1..=300).map(|n| (true, n)).collect();
        seq.extend((0..300).rev().map(|n| (false, n)));
        assert_eq!(trims(&seq), 1);
        // 1000 connections opening and closing over and over, never all closed: never.
        let mut churn = Vec::new();
        for _ in 0..20 {
            churn.extend((2..=1000).map(|n| (true, n)));
            churn.extend((1..1000).rev().map(|n| (false, n)));
        }
        assert_eq!(trims(&churn), 0);
        // Up to 200 and back to none, over and over: never.
        let mut churn = Vec::new();
        for _ in 0..20 {
            churn.extend((1..=200).map(|n| (true, n)));
            churn.extend((0..200).rev().map(|n| (false, n)));
        }
        assert_eq!(trims(&churn), 0);
    }
}
