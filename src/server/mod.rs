//! The runtime: one OS thread per worker, each with its own monoio runtime (io_uring,
//! or the legacy epoll driver where io_uring is unavailable) and its own SO_REUSEPORT
//! listener; a connection lives and dies on the core that accepted it. The main thread
//! waits for SIGTERM/SIGINT and drains the workers.

pub mod shutdown;
pub mod signals;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::{ListenerOpts, TcpListener};
use rustls::ClientConfig;

use crate::cache::store::Store;
use crate::config::Rule;
use crate::proxy::connect::Interception;
use crate::proxy::{serve_connection, BufPool, Timeouts, Worker};
use crate::upstream::Upstream;
use shutdown::Shutdown;

/// How long in-flight requests may run after a stop signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// io_uring submission queue size per worker.
pub const RING_ENTRIES: u32 = 4096;
/// Listen backlog per worker.
pub const BACKLOG: i32 = 4096;
/// Threads that run blocking work (DNS lookups) for all workers.
pub const BLOCKING_THREADS: usize = 4;

#[derive(Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    pub workers: usize,
    pub timeouts: Timeouts,
    pub store: Option<Arc<Store>>,
    pub rules: Arc<Vec<Rule>>,
    /// `tls-interceptor`: CONNECT tunnels are intercepted only with it.
    pub interception: Option<Arc<Interception>>,
    /// The verifying client config for `https` origins (one for all cores, so the
    /// trust store is read once and TLS sessions resume across cores).
    pub tls_client: Arc<ClientConfig>,
    /// Cluster mode: key owners, peer health and claims (one for all cores).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Runs until SIGTERM/SIGINT and the drain; returns the process exit code.
pub fn run(settings: Settings) -> i32 {
    if let Err(e) = signals::block_stop_signals() {
        log::error!("cannot set up signal handling: {e}");
        return 1;
    }
    if settings.addr.port() != 0 {
        // SO_REUSEPORT would silently share the port with another process already
        // listening there: make sure it is free first.
        if let Err(e) = std::net::TcpListener::bind(settings.addr) {
            log::error!("cannot listen on {}: {e}", settings.addr);
            return 1;
        }
    }
    if !monoio::utils::detect_uring() {
        log::warn!("io_uring is unavailable here; falling back to the epoll driver");
    } else if crate::driver::uses_legacy() {
        log::warn!("CHACHA_DRIVER=legacy: using the epoll driver although io_uring is available");
    }
    let pool = monoio::blocking::DefaultThreadPool::new(BLOCKING_THREADS);
    let mut handles = Vec::new();
    let mut shutdowns = Vec::new();
    let mut addr = settings.addr;
    for id in 0..settings.workers {
        let shutdown = Arc::new(Shutdown::default());
        shutdowns.push(shutdown.clone());
        let (tx, rx) = crossbeam_channel::bounded(1);
        let s = settings.clone();
        let pool = pool.clone();
        let handle = std::thread::Builder::new()
            .name(format!("chacha-w{id}"))
            .spawn(move || worker_main(id, addr, s, pool, shutdown, tx))
            .expect("spawn worker thread");
        handles.push(handle);
        match rx.recv() {
            Ok(Ok(bound)) => addr = bound, // later workers bind the port the first one got
            Ok(Err(e)) => {
                log::error!("worker {id} cannot listen on {addr}: {e}");
                for s in &shutdowns {
                    s.trigger();
                }
                return 1;
            }
            Err(_) => {
                log::error!("worker {id} died during startup");
                return 1;
            }
        }
    }
    log::info!(
        "chacha {} listening on {addr} (driver {}, {} workers)",
        env!("CARGO_PKG_VERSION"),
        crate::driver::name(),
        settings.workers
    );
    let sig = signals::wait_stop_signal();
    log::info!("received {sig}; no longer accepting, draining in-flight requests (up to {DRAIN_TIMEOUT:?})");
    std::thread::spawn(|| {
        let sig = signals::wait_stop_signal();
        log::warn!("received {sig} again; exiting without draining");
        std::process::exit(130);
    });
    for s in &shutdowns {
        s.trigger();
    }
    for h in handles {
        let _ = h.join();
    }
    log::info!("stopped");
    0
}

fn worker_main(
    id: usize,
    addr: SocketAddr,
    settings: Settings,
    pool: monoio::blocking::DefaultThreadPool,
    shutdown: Arc<Shutdown>,
    ready: crossbeam_channel::Sender<std::io::Result<SocketAddr>>,
) {
    if crate::driver::uses_legacy() {
        let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .attach_thread_pool(Box::new(pool))
            .enable_timer()
            .build();
        match rt {
            Ok(mut rt) => rt.block_on(worker_body(id, addr, settings, shutdown, ready)),
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
        return;
    }
    let mut urb = io_uring::IoUring::builder();
    // Without COOP_TASKRUN small responses are ~30 % slower than epoll here
    // (shared/design/MONOIO-NOTES.md).
    urb.setup_coop_taskrun();
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(RING_ENTRIES)
        .uring_builder(urb)
        .attach_thread_pool(Box::new(pool))
        .enable_timer()
        .build();
    match rt {
        Ok(mut rt) => rt.block_on(worker_body(id, addr, settings, shutdown, ready)),
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

async fn worker_body(
    id: usize,
    addr: SocketAddr,
    settings: Settings,
    shutdown: Arc<Shutdown>,
    ready: crossbeam_channel::Sender<std::io::Result<SocketAddr>>,
) {
    let opts = ListenerOpts::new().reuse_port(true).backlog(BACKLOG);
    let listener = match TcpListener::bind_with_config(addr, &opts) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(listener.local_addr());
    let worker = Rc::new(Worker {
        id,
        timeouts: settings.timeouts,
        upstream: Upstream::with_tls(settings.timeouts.connect, settings.tls_client.clone())
            .with_body_timeout(settings.timeouts.upstream_body),
        shutdown: shutdown.clone(),
        bufs: BufPool::default(),
        active: Default::default(),
        store: settings.store.clone(),
        rules: settings.rules.clone(),
        open_entries: Default::default(),
        interception: settings.interception.clone(),
        cluster: settings.cluster.clone(),
    });
    if id == 0 {
        if let Some(cluster) = &settings.cluster {
            // One place probes down peers and expires claims, for the whole process.
            monoio::spawn(crate::proxy::peer::watch(worker.clone(), cluster.clone()));
        }
    }
    loop {
        monoio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    monoio::spawn(serve_connection(stream, peer, worker.clone()));
                }
                Err(e) => {
                    // EMFILE/ENFILE and friends: back off instead of spinning.
                    log::warn!("worker {id}: accept failed: {e}");
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.wait() => break,
        }
    }
    drop(listener);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while worker.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if worker.active.get() > 0 {
        log::warn!(
            "worker {id}: {} connections still open after the drain timeout",
            worker.active.get()
        );
    }
}
