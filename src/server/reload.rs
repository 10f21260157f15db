//! Live reload: SIGHUP re-reads the config file given with `-f` (`systemctl reload`,
//! examples/chacha.service).
//!
//! The new file goes through the same checks as `chacha check`; a file with problems
//! is rejected as a whole (each problem logged with its key and line) and the config in
//! force stays. Otherwise what can change live is applied: `rules`, `timeouts`,
//! `tls-interceptor` (a rotated CA: new leaves from the new CA, the old CA's leaf
//! cache dropped, tunnels already open untouched), `cluster` (owners move as
//! rendezvous hashing says; the health watcher follows the node list), `disk.limit`
//! (shrinking evicts down to it at once) and `log-format`. Keys that only take effect
//! at start (`addr`, `workers`, `disk.dir`, a `disk` added or removed, `run-as-root`)
//! are reported as needing a restart and keep their value. One line sums up each
//! reload: what changed, or "reload: no changes".
//!
//! Requests and fills already running are not disturbed: they keep the snapshot they
//! started with ([`super::live`]).

use std::path::PathBuf;
use std::sync::Arc;

use crate::cache::store::Store;
use crate::cluster::Cluster;
use crate::config::{self, Config, Rule, Timeouts};

use super::live::{Live, Snapshot};

/// What SIGHUP re-reads and the config in force.
#[derive(Clone, Debug)]
pub struct Source {
    /// The `-f` file; `None` when chacha runs the built-in example config (a reload
    /// then has nothing to re-read).
    pub path: Option<PathBuf>,
    /// The config in force (the one chacha started with, then each applied reload's).
    pub config: Config,
}

/// Applies reloads; lives on the main thread.
pub struct Reloader {
    source: Source,
    /// The address the listeners are bound to (the port picked when `addr` had port 0).
    bound: std::net::SocketAddr,
    live: Arc<Live>,
    store: Option<Arc<Store>>,
}

impl Reloader {
    pub fn new(
        source: Source,
        bound: std::net::SocketAddr,
        live: Arc<Live>,
        store: Option<Arc<Store>>,
    ) -> Reloader {
        Reloader {
            source,
            bound,
            live,
            store,
        }
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.source.config
    }

    /// Re-reads the config file and applies it (see the module doc); everything it does
    /// is logged.
    pub fn reload(&mut self) {
        let Some(path) = self.source.path.clone() else {
            log::warn!(
                "reload: no changes (chacha runs the built-in example config, no -f: nothing to re-read)"
            );
            return;
        };
        log::info!("received SIGHUP: reloading {}", path.display());
        let new = match config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                for problem in &e.problems {
                    log::error!("invalid config (reload): {}", one_problem(&e, problem));
                }
                log::error!(
                    "reload rejected: {} problem(s) in {}; the config in force stays",
                    e.problems.len(),
                    path.display()
                );
                return;
            }
        };
        match self.apply(new) {
            Ok(changes) if changes.is_empty() => log::info!("reload: no changes"),
            Ok(changes) => log::info!("reload: {}", changes.join(", ")),
            Err(e) => log::error!(
                "reload rejected: {e}; the config in force stays ({})",
                path.display()
            ),
        }
    }

    /// Applies `new` (already checked); returns what changed, or why nothing was.
    fn apply(&mut self, mut new: Config) -> Result<Vec<String>, String> {
        let old = &self.source.config;
        // Keys that take effect only at start: report, keep the running value.
        let mut restart = Vec::new();
        // The bound address counts as unchanged too (the file may now name the port
        // that `:0` picked).
        if new.addr != old.addr && new.addr != self.bound {
            restart.push(format!(
                "addr changed: needs a restart; keeping {}",
                self.bound
            ));
            new.addr = old.addr;
        }
        if new.workers != old.workers {
            restart.push(format!(
                "workers changed: needs a restart; keeping {}",
                old.workers
            ));
            new.workers = old.workers;
        }
        match (&old.disk, &mut new.disk) {
            (Some(o), Some(n)) if o.dir != n.dir => {
                restart.push(format!(
                    "disk.dir changed: needs a restart; keeping {}",
                    o.dir.display()
                ));
                n.dir = o.dir.clone();
            }
            (None, Some(_)) => {
                restart.push("disk added: needs a restart; keeping no disk".into());
                new.disk = None;
            }
            (Some(o), None) => {
                restart.push(format!(
                    "disk removed: needs a restart; keeping {}",
                    o.dir.display()
                ));
                new.disk = old.disk.clone();
            }
            _ => {}
        }
        if new.run_as_root != old.run_as_root {
            restart.push(format!(
                "run-as-root changed: needs a restart; keeping {}",
                old.run_as_root
            ));
            new.run_as_root = old.run_as_root;
        }
        if new.metrics != old.metrics {
            let show = |m: &Option<crate::config::MetricsConfig>| match m {
                Some(m) => m.addr.to_string(),
                None => "the proxy address".into(),
            };
            restart.push(format!(
                "metrics.addr changed: needs a restart; keeping {}",
                show(&old.metrics)
            ));
            new.metrics = old.metrics;
        }
        // The access rules (client list, proxy-auth users, limits) are built once at
        // startup (the htpasswd file is read before any privilege drop).
        if new.access != old.access {
            restart.push("access changed: needs a restart; keeping the rules in force".into());
            new.access = old.access.clone();
        }
        // Checked against the kept addr (the new one may not be in force).
        if let Some(c) = &new.cluster {
            if new.addr.ip().is_unspecified() || new.addr.port() == 0 {
                return Err(format!(
                    "cluster mode needs an explicit addr, and the addr in force is {}",
                    new.addr
                ));
            }
            if c.nodes.is_empty() {
                return Err("cluster.nodes is empty".into());
            }
        }
        let snap = self.live.snapshot();
        let mut changes = Vec::new();

        // tls-interceptor: load the CA first, the one step that can still fail.
        let interception = match (&old.tls_interceptor, &new.tls_interceptor) {
            (_, None) => {
                if old.tls_interceptor.is_some() {
                    changes.push("tls-interceptor removed (CONNECT gets 405)".into());
                }
                None
            }
            (before, Some(tls)) => {
                let loaded = match crate::proxy::connect::Interception::load(tls) {
                    Ok(loaded) => loaded,
                    // Unchanged settings whose files cannot be read now (e.g. a key only
                    // root may read, after `--user` dropped root): keep the CA in force.
                    Err(e) if before == &Some(tls.clone()) && snap.interception.is_some() => {
                        log::warn!(
                            "tls-interceptor: cannot re-read the CA ({e}); keeping the CA in force"
                        );
                        let i = snap.interception.clone().expect("checked");
                        crate::proxy::connect::Interception::with(i.interceptor.clone(), tls)
                    }
                    Err(e) => return Err(format!("tls-interceptor: {e}")),
                };
                let same_ca = snap.interception.as_ref().is_some_and(|i| {
                    i.interceptor.cache().ca().cert_der()
                        == loaded.interceptor.cache().ca().cert_der()
                });
                let interception = match &snap.interception {
                    // Same CA and settings: nothing changes.
                    Some(i) if same_ca && before.as_ref() == Some(tls) => i.clone(),
                    // Same CA: keep its minted leaves.
                    Some(i) if same_ca => Arc::new(crate::proxy::connect::Interception::with(
                        i.interceptor.clone(),
                        tls,
                    )),
                    _ => Arc::new(loaded),
                };
                match before {
                    None => changes.push("tls-interceptor added".into()),
                    Some(_) if !same_ca => changes.push("tls-interceptor CA rotated".into()),
                    Some(_) => {}
                }
                if let Some(b) = before {
                    if b.ports != tls.ports {
                        changes.push(format!(
                            "tls-interceptor.ports {:?}→{:?}",
                            b.ports, tls.ports
                        ));
                    }
                }
                Some(interception)
            }
        };

        let rules_changed = !same_rules(&old.rules, &new.rules);
        if rules_changed {
            changes.push(format!("rules {}→{}", old.rules.len(), new.rules.len()));
        }
        changes.extend(timeout_changes(&old.timeouts, &new.timeouts));

        let cluster = match (&old.cluster, &new.cluster) {
            (None, None) => None,
            (Some(_), None) => {
                changes.push("cluster removed".into());
                None
            }
            (before, Some(c)) => {
                match before {
                    None => changes.push(format!("cluster added ({} nodes)", c.nodes.len())),
                    Some(b) => {
                        if b.nodes != c.nodes {
                            let added: Vec<String> = c
                                .nodes
                                .iter()
                                .filter(|n| !b.nodes.contains(n))
                                .map(|n| format!("+{n}"))
                                .collect();
                            let removed: Vec<String> = b
                                .nodes
                                .iter()
                                .filter(|n| !c.nodes.contains(n))
                                .map(|n| format!("-{n}"))
                                .collect();
                            let mut detail: Vec<String> = added;
                            detail.extend(removed);
                            changes.push(format!(
                                "cluster.nodes {}→{} ({})",
                                b.nodes.len(),
                                c.nodes.len(),
                                if detail.is_empty() {
                                    "reordered".to_string()
                                } else {
                                    detail.join(" ")
                                }
                            ));
                        }
                        if b.secret != c.secret {
                            changes.push("cluster.secret changed".into());
                        }
                    }
                }
                if before.as_ref() == Some(c) {
                    snap.cluster.clone()
                } else {
                    Some(Arc::new(Cluster::reloaded(
                        snap.cluster.as_deref(),
                        new.addr,
                        c,
                    )))
                }
            }
        };

        if new.log_format != old.log_format {
            changes.push(format!(
                "log-format {}→{}",
                old.log_format.as_str(),
                new.log_format.as_str()
            ));
            super::accesslog::set_format(new.log_format);
        }

        let snapshot_changed = rules_changed
            || new.timeouts != old.timeouts
            || !opt_arc_eq(&interception, &snap.interception)
            || !opt_arc_eq(&cluster, &snap.cluster);
        if snapshot_changed {
            self.live.publish(Snapshot {
                generation: 0,
                rules: if rules_changed {
                    Arc::new(new.rules.clone())
                } else {
                    snap.rules.clone()
                },
                timeouts: new.timeouts,
                interception,
                cluster,
            });
        }

        // disk.limit last: the store is shared, its limit changes in place.
        if let (Some(o), Some(n), Some(store)) = (&old.disk, &new.disk, &self.store) {
            if o.limit != n.limit {
                let (entries, bytes) = store.set_limit(n.limit);
                let mut line = format!("disk.limit {}→{}", human(o.limit), human(n.limit));
                if entries > 0 {
                    line.push_str(&format!(" (evicted {entries} entries, {bytes} bytes)"));
                }
                changes.push(line);
            }
        }

        for line in &restart {
            log::warn!("{line}");
        }
        if !restart.is_empty() {
            let keys: Vec<&str> = restart.iter().filter_map(|l| l.split(' ').next()).collect();
            changes.push(format!("not applied (needs a restart): {}", keys.join(" ")));
        }
        self.source.config = new;
        Ok(changes)
    }
}

/// One problem of a rejected file, on one line, as `chacha check` prints it.
fn one_problem(e: &config::ConfigError, p: &config::Problem) -> String {
    config::ConfigError {
        problems: vec![p.clone()],
        file: e.file.clone(),
    }
    .to_string()
}

fn opt_arc_eq<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// Whether two rule lists behave the same (same patterns and options, in order).
fn same_rules(a: &[Rule], b: &[Rule]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.pattern.as_str() == y.pattern.as_str()
                && x.ignore_authorization_header == y.ignore_authorization_header
                && x.ignore_parameters == y.ignore_parameters
                && x.direct_connect == y.direct_connect
                && x.direct_connect_header == y.direct_connect_header
        })
}

fn timeout_changes(a: &Timeouts, b: &Timeouts) -> Vec<String> {
    [
        ("connect", a.connect, b.connect),
        ("upstream-head", a.upstream_head, b.upstream_head),
        ("upstream-body", a.upstream_body, b.upstream_body),
        ("client-head", a.client_head, b.client_head),
        ("client-body", a.client_body, b.client_body),
        ("idle", a.idle, b.idle),
    ]
    .into_iter()
    .filter(|(_, x, y)| x != y)
    .map(|(name, x, y)| format!("timeouts.{name} {x:?}→{y:?}"))
    .collect()
}

/// A byte count the way configs write it when it is a round number (`5GB`, `10MiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: &[(u64, &str)] = &[
        (1 << 40, "TiB"),
        (1_000_000_000_000, "TB"),
        (1 << 30, "GiB"),
        (1_000_000_000, "GB"),
        (1 << 20, "MiB"),
        (1_000_000, "MB"),
        (1 << 10, "KiB"),
        (1_000, "KB"),
    ];
    for &(unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(5_000_000_000), "5GB");
        assert_eq!(human(10 << 20), "10MiB");
        assert_eq!(human(1500), "1500B");
        assert_eq!(human(0), "0B");
    }

    #[test]
    fn timeout_changes_name_each_key() {
        let a = Timeouts::default();
        let mut b = a;
        b.upstream_head = std::time::Duration::from_secs(1);
        assert_eq!(timeout_changes(&a, &b), ["timeouts.upstream-head 60s→1s"]);
        assert!(timeout_changes(&a, &a).is_empty());
    }
}
