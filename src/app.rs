//! Turns a validated config into running workers.

use std::sync::Arc;

use crate::cache::store::Store;
use crate::config::Config;
use crate::server::{self, Settings};

/// Runs chacha with `config` until stopped; returns the process exit code.
pub fn run(config: Config) -> i32 {
    let store = match &config.disk {
        Some(disk) => match Store::open(&disk.dir, disk.limit) {
            Ok((store, report)) => {
                log::info!(
                    "cache {}: {} entries, {} bytes of {} (removed {} bad or temp files) in {:?}",
                    disk.dir.display(),
                    report.entries,
                    report.bytes,
                    disk.limit,
                    report.removed,
                    report.elapsed
                );
                Some(store)
            }
            Err(e) => {
                log::error!("cannot open the cache dir {}: {e}", disk.dir.display());
                return 1;
            }
        },
        None => {
            log::info!("no disk configured: proxying without a cache");
            None
        }
    };
    let settings = Settings {
        addr: config.addr,
        workers: config.workers.max(1),
        timeouts: config.timeouts,
        store,
        rules: Arc::new(config.rules),
    };
    server::run(settings)
}
