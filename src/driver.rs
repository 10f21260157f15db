//! Which monoio driver the workers run: io_uring, or the legacy epoll driver where
//! io_uring is unavailable (e.g. blocked by a seccomp profile) or where
//! `CHACHA_DRIVER=legacy` asks for it (troubleshooting, and so the tests cover both).

use std::sync::OnceLock;

/// True when the workers use the legacy (epoll) driver.
pub fn uses_legacy() -> bool {
    static LEGACY: OnceLock<bool> = OnceLock::new();
    *LEGACY.get_or_init(|| {
        std::env::var("CHACHA_DRIVER").is_ok_and(|v| v.eq_ignore_ascii_case("legacy"))
            || !monoio::utils::detect_uring()
    })
}

pub fn name() -> &'static str {
    if uses_legacy() {
        "epoll (legacy)"
    } else {
        "io_uring"
    }
}

/// Threads that run blocking work (DNS lookups, bcrypt) for all workers.
pub const BLOCKING_THREADS: usize = 4;
