//! Turns a validated config into running workers.

use std::sync::Arc;

use crate::cache::store::Store;
use crate::config::{Config, DiskConfig};
use crate::proxy::connect::Interception;
use crate::server::live::{Live, Snapshot};
use crate::server::privileges::{self, User};
use crate::server::{self, reload, Settings};

/// Exit code for an unusable configuration (before anything listens), as for config
/// errors in `main`.
pub const EXIT_CONFIG: i32 = 2;

/// How `chacha run` was started, beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--user NAME`: drop root to this user once the listeners are bound and the CA
    /// is loaded.
    pub user: Option<String>,
    /// `-f FILE`: what SIGHUP re-reads (live reload); `None` for the built-in example
    /// config, which a reload cannot change.
    pub config_path: Option<std::path::PathBuf>,
}

/// Runs chacha with `config` until stopped; returns the process exit code.
pub fn run(config: Config) -> i32 {
    run_with(config, &RunOptions::default())
}

/// [`run`] with command-line options.
pub fn run_with(config: Config, opts: &RunOptions) -> i32 {
    // Before any thread starts (the background cache scan, the metrics listener):
    // threads inherit the mask, so SIGTERM/SIGINT/SIGHUP reach only the main thread's
    // sigwait; a thread with them unblocked would take a SIGHUP's default action (exit).
    if let Err(e) = crate::server::signals::block_stop_signals() {
        log::error!("cannot set up signal handling: {e}");
        return 1;
    }
    // First, so that every line of this run is in the configured format.
    crate::server::accesslog::set_format(config.log_format);
    let mut user = match &opts.user {
        Some(name) => match User::lookup(name) {
            Ok(u) => Some(u),
            Err(e) => {
                log::error!("{e}");
                return EXIT_CONFIG;
            }
        },
        None => None,
    };
    if let Some(u) = &user {
        if !privileges::is_root() {
            // SAFETY: getter without arguments.
            let euid = unsafe { libc::geteuid() };
            if euid != u.uid {
                log::error!(
                    "--user {}: only root can switch users (running as uid {euid})",
                    u.name
                );
                return 1;
            }
            log::info!("--user {}: already running as that user", u.name);
            user = None;
        }
    }
    let stays_root = match &user {
        Some(u) => u.uid == 0,
        None => privileges::is_root(),
    };
    if stays_root && !config.run_as_root {
        log::error!(
            "refusing to run as root: the config sets run-as-root: false; start with --user NAME"
        );
        return EXIT_CONFIG;
    }
    let interception = match &config.tls_interceptor {
        Some(tls) => match Interception::load(tls) {
            Ok(i) => {
                log::info!(
                    "tls-interceptor: CA {} loaded; intercepting CONNECT to ports {:?} ({}){}",
                    tls.cert.display(),
                    tls.ports,
                    match &tls.intercept {
                        None => "every host".to_string(),
                        Some(p) => format!("hosts matching {p:?}, others tunnelled blind"),
                    },
                    match tls.passthrough_ports.is_empty() {
                        true => String::new(),
                        false => format!("; ports {:?} tunnelled blind", tls.passthrough_ports),
                    }
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
    // Read before any privilege drop: the htpasswd file may be readable by root only.
    let access = match build_access(&config) {
        Ok(access) => Arc::new(access),
        Err(e) => {
            log::error!("{e}");
            return EXIT_CONFIG;
        }
    };
    let tls_client = match crate::tls::client_config() {
        Ok(c) => c,
        Err(e) => {
            log::error!("cannot build the TLS client for https origins: {e}");
            return 1;
        }
    };
    // With --user the cache dir is opened after the drop, as that user: everything the
    // store creates in it (fan-out dirs, temp files, entries) must be the user's.
    let store = match &user {
        Some(_) => None,
        None => match open_store(config.disk.as_ref()) {
            Ok(store) => store,
            Err(code) => return code,
        },
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
    // Bound now, as root with --user (any port); served once the workers start.
    let metrics = match config.metrics {
        Some(m) => match crate::metrics::admin::bind(m.addr) {
            Ok(l) => Some(l),
            Err(e) => {
                log::error!("metrics: cannot listen on {}: {e}", m.addr);
                return 1;
            }
        },
        None => None,
    };
    let disk = config.disk.clone();
    // `access.destinations` (read at start; [`server::serve`] adds the bound listening
    // addresses to it).
    let mut destinations = crate::access::destinations::Destinations::new(
        config.access.destinations.allow.clone(),
        config.access.destinations.deny.clone(),
    );
    // The admin listener is chacha's own address too (loop protection).
    if let Some(admin) = metrics.as_ref().and_then(|l| l.local_addr().ok()) {
        destinations =
            destinations.with_own(&[admin], crate::access::destinations::local_addresses());
    }
    let destinations = Arc::new(destinations);
    let live = Live::new(Snapshot {
        generation: 0,
        rules: Arc::new(config.rules.clone()),
        timeouts: config.timeouts,
        interception,
        cluster,
    });
    let mut settings = Settings {
        addr: config.addr,
        workers: config.workers.max(1),
        store,
        live,
        reload: Some(reload::Source {
            path: opts.config_path.clone(),
            config,
        }),
        tls_client,
        destinations,
        access,
    };
    let Some(user) = user else {
        if let Err(code) = serve_metrics(metrics) {
            return code;
        }
        let store = settings.store.clone();
        let code = server::run(settings);
        write_snapshot(store.as_deref());
        return code;
    };
    // --user: bind as root (ports below 1024), drop, then open the cache as the user.
    let listeners = match server::bind(settings.addr, settings.workers) {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot listen on {}: {e}", settings.addr);
            return 1;
        }
    };
    if let Some(disk) = &disk {
        if let Err(e) = create_cache_dir_for(&disk.dir, &user) {
            log::error!("cannot create the cache dir {}: {e}", disk.dir.display());
            return 1;
        }
    }
    if let Err(e) = privileges::drop_to(&user) {
        log::error!("{e}");
        return 1;
    }
    log::info!(
        "dropped root: running as user {} (uid {}, gid {}, groups {:?})",
        user.name,
        user.uid,
        user.gid,
        user.groups
    );
    if let Some(disk) = &disk {
        if let Err((path, e)) = privileges::check_writable_tree(&disk.dir) {
            log::error!(
                "cache dir {}: {} is not writable by user {} (uid {}): {e}; give it to that user (chown -R {} {})",
                disk.dir.display(),
                path.display(),
                user.name,
                user.uid,
                user.name,
                disk.dir.display()
            );
            return 1;
        }
    }
    settings.store = match open_store(disk.as_ref()) {
        Ok(store) => store,
        Err(code) => return code,
    };
    if let Err(code) = serve_metrics(metrics) {
        return code;
    }
    let store = settings.store.clone();
    let code = server::serve(settings, listeners);
    write_snapshot(store.as_deref());
    code
}

/// At a clean stop (the workers have stopped: no fill changes the files any more), the
/// index snapshot that makes the next start quick (`cache::snapshot`).
fn write_snapshot(store: Option<&Store>) {
    let Some(store) = store else { return };
    match store.write_snapshot() {
        Ok(Some(w)) => log::info!(
            "cache {}: index snapshot written: {} entries, {} bytes in {:?}",
            store.dir.display(),
            w.entries,
            w.file_bytes,
            w.elapsed
        ),
        Ok(None) => log::info!(
            "cache {}: no index snapshot written: the scan had not finished; the next start scans again",
            store.dir.display()
        ),
        Err(e) => log::warn!(
            "cache {}: cannot write the index snapshot ({e}); the next start scans the entries",
            store.dir.display()
        ),
    }
}

/// The `access` rules: the htpasswd users loaded, the file descriptor soft limit raised
/// to the hard limit and the connection limit sized to it, each logged once.
pub fn build_access(config: &Config) -> Result<crate::access::Access, String> {
    use crate::access::{auth::Htpasswd, limits};
    let access = &config.access;
    let users = match &access.proxy_auth {
        Some(auth) => {
            let users = Htpasswd::load(&auth.htpasswd)
                .map_err(|e| format!("access.proxy-auth.htpasswd: {e}"))?;
            log::info!(
                "access.proxy-auth: {} users from {}; proxied requests and CONNECT need Proxy-Authorization",
                users.len(),
                auth.htpasswd.display()
            );
            Some(Arc::new(users))
        }
        None => None,
    };
    let nofile = match limits::raise_nofile() {
        Ok(n) => n,
        Err(e) => {
            log::warn!("cannot read the file descriptor limit: {e}; assuming 1024");
            1024
        }
    };
    let (max, fit) = limits::effective_connections(access.limits.connections, nofile);
    match fit {
        limits::FdFit::Fits => {}
        limits::FdFit::Tight { full_load } => log::warn!(
            "access.limits.connections {max} exceeds what the file descriptor limit {nofile} allows under full load ({full_load}: about {} per connection plus {} reserved); idle clients fit, but busy ones may fail (502, accepting paused) when descriptors run out; raise `ulimit -n` (LimitNOFILE=)",
            limits::FDS_PER_CONNECTION,
            limits::FD_RESERVE
        ),
        limits::FdFit::Capped(cap) => log::warn!(
            "access.limits.connections {} does not fit the file descriptor limit {nofile}: using {cap}; raise `ulimit -n` (LimitNOFILE=) to allow more",
            access
                .limits
                .connections
                .map_or_else(|| "(default)".to_string(), |n| n.to_string())
        ),
    }
    log::info!(
        "access: clients {}; up to {max} client connections, {} per client (file descriptor limit {nofile})",
        access.clients,
        access.limits.connections_per_client
    );
    let peers = config
        .cluster
        .as_ref()
        .map(|c| c.nodes.iter().map(|n| n.ip()).collect())
        .unwrap_or_default();
    Ok(crate::access::Access::new(access, peers, users, max))
}

/// Starts the `metrics.addr` listener's thread, if configured.
fn serve_metrics(listener: Option<std::net::TcpListener>) -> Result<(), i32> {
    match listener.map(crate::metrics::admin::spawn) {
        Some(Err(e)) => {
            log::error!("metrics: cannot start the admin listener: {e}");
            Err(1)
        }
        _ => Ok(()),
    }
}

/// A missing cache dir is created (as root, before the drop) and given to `user`,
/// as systemd's `CacheDirectory=` would; an existing one is left as it is.
fn create_cache_dir_for(dir: &std::path::Path, user: &User) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
}

/// Opens `disk.dir` when configured; the error is logged and becomes the exit code.
/// Without a usable index snapshot, the scan of the entries starts on a thread of its own:
/// requests are served meanwhile, an entry once the scan has verified it.
fn open_store(disk: Option<&DiskConfig>) -> Result<Option<Arc<Store>>, i32> {
    use crate::cache::store::Opened;
    let Some(disk) = disk else {
        log::info!("no disk configured: proxying without a cache");
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let (store, opened) = match Store::open(&disk.dir, disk.limit) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot open the cache dir {}: {e}", disk.dir.display());
            return Err(1);
        }
    };
    crate::metrics::set_scan_duration(started.elapsed());
    match opened {
        Opened::Snapshot(l) => log::info!(
            "cache {}: index snapshot loaded: {} entries, {} bytes of {} in {:?}",
            disk.dir.display(),
            l.entries,
            l.bytes,
            disk.limit,
            l.elapsed
        ),
        Opened::NeedsScan(why) => {
            log::info!(
                "cache {}: {why}; serving now, entries become hits as a background scan verifies them",
                disk.dir.display()
            );
            let scanning = store.clone();
            let limit = disk.limit;
            let spawned = std::thread::Builder::new()
                .name("chacha-scan".into())
                .spawn(move || background_scan(&scanning, limit));
            if let Err(e) = spawned {
                log::error!("cannot start the cache scan: {e}");
                return Err(1);
            }
        }
    }
    Ok(Some(store))
}

/// The background scan of the cache dir, with its progress and final lines.
fn background_scan(store: &Store, limit: u64) {
    let progress = |p: crate::cache::scan::Progress| {
        log::info!(
            "cache scan: {} files checked ({} of 256 directories), {} entries, {} removed, {:?}",
            p.files,
            p.dirs_done,
            p.entries,
            p.removed,
            p.elapsed
        )
    };
    match store.scan(&progress) {
        Ok(report) => {
            crate::metrics::set_scan_duration(report.elapsed);
            log::info!(
                "cache scan done: {} entries, {} bytes; the cache holds {} entries, {} bytes of {limit} (removed {} bad or over-limit files) in {:?}",
                report.entries,
                report.bytes,
                store.index.len(),
                store.index.used(),
                report.removed,
                report.elapsed
            );
        }
        Err(e) => log::error!(
            "cache scan of {} failed: {e}; entries not scanned are not served (they are filled again), and no index snapshot is written",
            store.dir.display()
        ),
    }
}
