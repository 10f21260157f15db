//! Turns a validated config into running workers.

use std::sync::Arc;

use crate::cache::store::Store;
use crate::config::{Config, TlsConfig};
use crate::proxy::connect::Interception;
use crate::server::{self, Settings};
use crate::tls::{Ca, CertCache, Interceptor};

/// Exit code for an unusable configuration (before anything listens), as for config
/// errors in `main`.
pub const EXIT_CONFIG: i32 = 2;

/// Loads the `tls-interceptor` CA and builds the shared leaf cache and acceptor side.
/// The error names the offending file.
pub fn load_interception(tls: &TlsConfig) -> Result<Interception, crate::tls::TlsError> {
    let ca = Ca::load(&tls.cert, &tls.key)?;
    Ok(Interception {
        interceptor: Interceptor::new(Arc::new(CertCache::new(ca))),
        ports: tls.ports.clone(),
    })
}

/// Runs chacha with `config` until stopped; returns the process exit code.
pub fn run(config: Config) -> i32 {
    let interception = match &config.tls_interceptor {
        Some(tls) => match load_interception(tls) {
            Ok(i) => {
                log::info!(
                    "tls-interceptor: CA {} loaded; intercepting CONNECT to ports {:?}",
                    tls.cert.display(),
                    tls.ports
                );
                Some(Arc::new(i))
            }
            Err(e) => {
                log::error!("tls-interceptor: {e}");
                return EXIT_CONFIG;
            }
        },
        None => None,
    };
    let tls_client = match crate::tls::client_config() {
        Ok(c) => c,
        Err(e) => {
            log::error!("cannot build the TLS client for https origins: {e}");
            return 1;
        }
    };
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
    let cluster = config.cluster.as_ref().map(|c| {
        let cluster = crate::cluster::Cluster::new(config.addr, c);
        match cluster.local {
            Some(_) if config.disk.is_none() => log::warn!(
                "cluster: this node ({}) is listed in cluster.nodes but has no disk: its keys go uncached",
                config.addr
            ),
            Some(_) => log::info!(
                "cluster: node {} of {} ({})",
                config.addr,
                cluster.nodes.len(),
                cluster.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
            None => log::info!(
                "cluster: {} is not in cluster.nodes: a front end for {} nodes, storing nothing itself",
                config.addr,
                cluster.nodes.len()
            ),
        }
        Arc::new(cluster)
    });
    let settings = Settings {
        addr: config.addr,
        workers: config.workers.max(1),
        timeouts: config.timeouts,
        store,
        rules: Arc::new(config.rules),
        interception,
        tls_client,
        cluster,
    };
    server::run(settings)
}
