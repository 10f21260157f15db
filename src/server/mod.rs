//! The runtime: one OS thread per worker, each with its own monoio runtime (io_uring,
//! or the legacy epoll driver where io_uring is unavailable) and its own SO_REUSEPORT
//! listener; a connection lives and dies on the core that accepted it. The main thread
//! waits for SIGTERM/SIGINT and drains the workers.

pub mod shutdown;
pub mod signals;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// First pause of an accept-failure episode; it doubles up to [`MAX_ACCEPT_PAUSE`].
pub const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(100);
pub const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// Workers currently in an accept-failure episode: the first to enter logs the warning,
/// the last to leave logs the recovery, so an episode is two lines for the whole process.
static WORKERS_FAILING_ACCEPT: AtomicUsize = AtomicUsize::new(0);

/// One worker's accept failures. Transient errors (a client that reset before we
/// accepted it) are retried at once; anything else (EMFILE/ENFILE above all) starts an
/// episode: pauses of [`FIRST_ACCEPT_PAUSE`] doubling to [`MAX_ACCEPT_PAUSE`], one
/// warning when it starts and one line when an accept succeeds again.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// The current episode: when it started, the failures and the last pause.
    episode: Option<(Instant, u64, Duration)>,
}

impl AcceptBackoff {
    /// Records a failed accept; returns how long to pause before the next one.
    fn failed(&mut self, id: usize, e: &std::io::Error) -> Duration {
        if is_transient_accept_error(e) {
            log::debug!("worker {id}: accept failed: {e}");
            return Duration::ZERO;
        }
        let (_, failures, pause) = self.episode.get_or_insert_with(|| {
            if WORKERS_FAILING_ACCEPT.fetch_add(1, Ordering::SeqCst) == 0 {
                let what = match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) => "out of file descriptors",
                    _ => "cannot accept connections",
                };
                log::warn!(
                    "{what} ({e}); pausing accept (up to {MAX_ACCEPT_PAUSE:?} at a time), open connections are still served"
                );
            }
            (Instant::now(), 0, Duration::ZERO)
        });
        *failures += 1;
        *pause = next_pause(*pause);
        *pause
    }

    /// Records a successful accept, ending an episode.
    fn accepted(&mut self, id: usize) {
        if let Some((since, failures, _)) = self.episode.take() {
            if WORKERS_FAILING_ACCEPT.fetch_sub(1, Ordering::SeqCst) == 1 {
                log::info!(
                    "accepting connections again (worker {id}: {failures} failed accepts over {:.1?})",
                    since.elapsed()
                );
            }
        }
    }
}

/// The pause after `last`: [`FIRST_ACCEPT_PAUSE`], then doubling, at most [`MAX_ACCEPT_PAUSE`].
fn next_pause(last: Duration) -> Duration {
    if last.is_zero() {
        FIRST_ACCEPT_PAUSE
    } else {
        (last * 2).min(MAX_ACCEPT_PAUSE)
    }
}

/// Errors of one connection, not of the listener (accept(2): the connection was aborted
/// before it was accepted, or a signal interrupted the call): the next accept may succeed.
fn is_transient_accept_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EPROTO)
    )
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
            monoio::spawn(crate::cluster::kv::client::watch(
                worker.shutdown.clone(),
                cluster.clone(),
            ));
        }
    }
    let mut backoff = AcceptBackoff::default();
    loop {
        monoio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    backoff.accepted(id);
                    let _ = stream.set_nodelay(true);
                    monoio::spawn(serve_connection(stream, peer, worker.clone()));
                }
                Err(e) => {
                    // Out of file descriptors (or memory): pause accepting, keep serving the
                    // open connections, whose closing frees what the next accept needs.
                    let pause = backoff.failed(id, &e);
                    if !pause.is_zero() {
                        monoio::select! {
                            _ = monoio::time::sleep(pause) => {}
                            _ = shutdown.wait() => break,
                        }
                    }
                }
            },
            _ = shutdown.wait() => break,
        }
    }
    backoff.accepted(id); // a worker stopping mid-episode does not keep it open
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_pauses_double_up_to_the_cap() {
        let mut pause = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..6 {
            pause = next_pause(pause);
            seen.push(pause.as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn transient_errors_do_not_pause_and_exhaustion_does() {
        let mut b = AcceptBackoff::default();
        let aborted = std::io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(b.failed(0, &aborted), Duration::ZERO);
        assert!(b.episode.is_none());
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(b.failed(0, &emfile), FIRST_ACCEPT_PAUSE);
        assert_eq!(b.failed(0, &emfile), FIRST_ACCEPT_PAUSE * 2);
        assert_eq!(b.episode.map(|(_, n, _)| n), Some(2));
        b.accepted(0);
        assert!(b.episode.is_none());
        // A new episode starts from the first pause again.
        let enfile = std::io::Error::from_raw_os_error(libc::ENFILE);
        assert_eq!(b.failed(0, &enfile), FIRST_ACCEPT_PAUSE);
        b.accepted(0);
    }
}
