//! Turns a validated config into running workers.

use crate::config::Config;
use crate::server::{self, Settings};

/// Runs chacha with `config` until stopped; returns the process exit code.
pub fn run(config: Config) -> i32 {
    let settings = Settings {
        addr: config.addr,
        workers: config.workers.max(1),
        timeouts: config.timeouts,
    };
    server::run(settings)
}
