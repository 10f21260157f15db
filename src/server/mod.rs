//! The runtime: one OS thread per worker, each with its own monoio runtime (io_uring,
//! or the legacy epoll driver where io_uring is unavailable) and its own SO_REUSEPORT
//! listener; a connection lives and dies on the core that accepted it. The main thread
//! binds the listeners (so `--user` can drop root before any worker starts), then waits
//! for SIGTERM/SIGINT and drains the workers.

pub mod accesslog;
pub mod live;
pub mod memory;
pub mod privileges;
pub mod reload;
pub mod shutdown;
pub mod signals;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;
use rustls::ClientConfig;

use crate::access::destinations::{local_addresses, Destinations};
use crate::cache::store::Store;
use crate::proxy::refresh::CoreLive;
use crate::proxy::{serve_connection, Worker};
use crate::upstream::Upstream;
use live::Live;
use shutdown::Shutdown;

/// How long in-flight requests may run after a stop signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// io_uring submission queue size per worker.
pub const RING_ENTRIES: u32 = 4096;
/// Listen backlog per worker.
pub const BACKLOG: i32 = 4096;
pub use crate::driver::BLOCKING_THREADS;

#[derive(Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    pub workers: usize,
    pub store: Option<Arc<Store>>,
    /// The reloadable settings (rules, timeouts, `tls-interceptor`, cluster), one
    /// snapshot per config generation.
    pub live: Arc<Live>,
    /// What SIGHUP re-reads (the config file and the config in force); `None` for
    /// embedders that start workers without a config.
    pub reload: Option<reload::Source>,
    /// The verifying client config for `https` origins (one for all cores, so the
    /// trust store is read once and TLS sessions resume across cores).
    pub tls_client: Arc<ClientConfig>,
    /// `access.destinations`; [`serve`] adds the bound listening address to it.
    pub destinations: Arc<Destinations>,
    /// `access`: client list, proxy authentication, connection limits (one for all cores).
    pub access: Arc<crate::access::Access>,
}

/// Runs until SIGTERM/SIGINT and the drain; returns the process exit code.
pub fn run(settings: Settings) -> i32 {
    match bind(settings.addr, settings.workers) {
        Ok(listeners) => serve(settings, listeners),
        Err(e) => {
            log::error!("cannot listen on {}: {e}", settings.addr);
            1
        }
    }
}

/// The workers' listeners, bound but not yet accepting (one SO_REUSEPORT socket each).
pub struct Listeners {
    sockets: Vec<std::net::TcpListener>,
    /// The bound address (the port the kernel picked when `addr` had port 0).
    pub addr: SocketAddr,
}

/// Binds one SO_REUSEPORT listener per worker on `addr` (the first one picks the
/// port when it is 0; the others bind that port).
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Listeners> {
    if addr.port() != 0 {
        // SO_REUSEPORT would silently share the port with another process already
        // listening there: make sure it is free first.
        std::net::TcpListener::bind(addr)?;
    }
    let mut sockets = Vec::with_capacity(workers.max(1));
    let mut bound = addr;
    for _ in 0..workers.max(1) {
        let l = bind_reuseport(bound)?;
        bound = l.local_addr()?;
        sockets.push(l);
    }
    Ok(Listeners {
        sockets,
        addr: bound,
    })
}

/// A non-blocking, close-on-exec TCP listener with SO_REUSEPORT and SO_REUSEADDR, as
/// monoio's `bind_with_config` makes them, bound to `addr` and listening.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let last = std::io::Error::last_os_error;
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket(2); the descriptor is owned right away.
    let raw = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    if raw < 0 {
        return Err(last());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    for opt in [libc::SO_REUSEPORT, libc::SO_REUSEADDR] {
        // SAFETY: a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last());
        }
    }
    // SAFETY: sockaddr_in/sockaddr_in6 are plain old data, filled before bind(2) reads
    // them with their own size.
    let rc = unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_port = a.port().to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            SocketAddr::V6(a) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_port = a.port().to_be();
                sa.sin6_flowinfo = a.flowinfo();
                sa.sin6_addr.s6_addr = a.ip().octets();
                sa.sin6_scope_id = a.scope_id();
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        return Err(last());
    }
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } != 0 {
        return Err(last());
    }
    Ok(std::net::TcpListener::from(fd))
}

/// Runs the workers on `listeners` until SIGTERM/SIGINT and the drain; returns the
/// process exit code.
pub fn serve(mut settings: Settings, listeners: Listeners) -> i32 {
    // Loop protection: the proxy's own address (the bound one: port 0 resolved) is
    // never a destination, whatever `access.destinations.allow` says.
    settings.destinations = Arc::new(
        (*settings.destinations)
            .clone()
            .with_own(&[listeners.addr], local_addresses()),
    );
    if let Err(e) = signals::block_stop_signals() {
        log::error!("cannot set up signal handling: {e}");
        return 1;
    }
    if !monoio::utils::detect_uring() {
        log::warn!("io_uring is unavailable here; falling back to the epoll driver");
    } else if crate::driver::uses_legacy() {
        log::warn!("CHACHA_DRIVER=legacy: using the epoll driver although io_uring is available");
    }
    set_gauges(settings.store.clone(), settings.live.clone());
    let pool = monoio::blocking::DefaultThreadPool::new(BLOCKING_THREADS);
    let mut handles = Vec::new();
    let mut shutdowns = Vec::new();
    let addr = listeners.addr;
    for (id, listener) in listeners.sockets.into_iter().enumerate() {
        let shutdown = Arc::new(Shutdown::default());
        shutdowns.push(shutdown.clone());
        let (tx, rx) = crossbeam_channel::bounded(1);
        let s = settings.clone();
        let pool = pool.clone();
        let handle = std::thread::Builder::new()
            .name(format!("chacha-w{id}"))
            .spawn(move || worker_main(id, listener, s, pool, shutdown, tx))
            .expect("spawn worker thread");
        handles.push(handle);
        match rx.recv() {
            Ok(Ok(_)) => {}
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
    let mut reloader = settings.reload.clone().map(|source| {
        reload::Reloader::new(source, addr, settings.live.clone(), settings.store.clone())
    });
    let sig = signals::wait_stop_signal(&mut || match &mut reloader {
        Some(r) => r.reload(),
        None => log::warn!("received SIGHUP: nothing to reload; ignored"),
    });
    log::info!("received {sig}; no longer accepting, draining in-flight requests (up to {DRAIN_TIMEOUT:?})");
    std::thread::spawn(|| {
        let sig = signals::wait_stop_signal(&mut || {
            log::warn!("received SIGHUP while stopping: ignored")
        });
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
    listener: std::net::TcpListener,
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
            Ok(mut rt) => rt.block_on(worker_body(id, listener, settings, shutdown, ready)),
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
        Ok(mut rt) => rt.block_on(worker_body(id, listener, settings, shutdown, ready)),
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
    listener: std::net::TcpListener,
    settings: Settings,
    shutdown: Arc<Shutdown>,
    ready: crossbeam_channel::Sender<std::io::Result<SocketAddr>>,
) {
    // Bound by the main thread ([`bind`]); registered with this core's driver here.
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(listener.local_addr());
    crate::metrics::register_core();
    let snap = settings.live.snapshot();
    let upstream = Upstream::with_tls(snap.timeouts.connect, settings.tls_client.clone())
        .with_body_timeout(snap.timeouts.upstream_body)
        .with_destinations(settings.destinations.clone());
    let mut worker = Rc::new(Worker {
        id,
        generation: snap.generation,
        live: CoreLive::new(settings.live.clone()),
        timeouts: snap.timeouts,
        upstream: Rc::new(upstream),
        shutdown: shutdown.clone(),
        bufs: Default::default(),
        active: Default::default(),
        store: settings.store.clone(),
        rules: snap.rules.clone(),
        open_entries: Default::default(),
        interception: snap.interception.clone(),
        cluster: snap.cluster.clone(),
        access: crate::access::Local::new(settings.access.clone()),
    });
    drop(snap);
    if id == 0 {
        // One place probes down peers and expires claims, for the whole process; it
        // follows the cluster of each live reload (none, one, or another node list).
        monoio::spawn(crate::cluster::kv::client::watch(
            worker.shutdown.clone(),
            settings.live.clone(),
        ));
    }
    let mut backoff = AcceptBackoff::default();
    let deny_log = crate::access::DenyLog::default();
    let lingering = Rc::new(Cell::new(0usize));
    loop {
        monoio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    backoff.accepted(id);
                    if let Some(newer) = worker.newer() {
                        worker = newer; // a live reload happened
                    }
                    // Once per connection, before anything is read (no TLS, no CONNECT,
                    // no endpoint): access.clients, then access.limits.
                    match settings.access.admit(peer.ip()) {
                        Ok(admitted) => {
                            let _ = stream.set_nodelay(true);
                            let worker = worker.clone();
                            monoio::spawn(async move {
                                serve_connection(stream, peer, worker).await;
                                drop(admitted);
                            });
                        }
                        Err(refused) => refuse(stream, peer, refused, &deny_log, &lingering),
                    }
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

/// Refused connections whose answer is being lingered on per core (see [`refuse`]);
/// past this many, a refused connection is closed right after its answer.
const MAX_LINGERING: usize = 64;
/// How long a refused connection's input is read and dropped after its answer, and how
/// much of it at most.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Answers a connection refused at accept (403 for `access.clients`, 503 with
/// `Retry-After` for `access.limits`) and closes it, never looking at the request. The
/// answer goes first; then, like nginx's lingering close, whatever the client already
/// sent is read and dropped for a moment, since closing a socket with unread input
/// resets the connection (RFC 9112 §9.6), which can destroy the answer before the
/// client reads it. Logged as `refused.log` says (once per client per minute, once
/// per limit episode).
fn refuse(
    stream: monoio::net::TcpStream,
    peer: SocketAddr,
    refused: crate::access::Refused,
    deny_log: &crate::access::DenyLog,
    lingering: &Rc<Cell<usize>>,
) {
    let log = match refused.status {
        403 => deny_log.should_log(peer.ip()),
        _ => refused.log,
    };
    if log {
        let again = match refused.status {
            403 => format!(
                " (not logged again for {:?})",
                crate::access::DENY_LOG_INTERVAL
            ),
            _ => " (not logged again until below the limit)".to_owned(),
        };
        let detail = format!("{}{again}", refused.reason);
        crate::proxy::access_line(
            peer,
            None,
            refused.status,
            0,
            0,
            crate::proxy::Op::Reject,
            crate::server::accesslog::Detail::Error(&detail),
        )
        .log(log::Level::Warn);
    }
    let linger = lingering.get() < MAX_LINGERING;
    if linger {
        lingering.set(lingering.get() + 1);
    }
    let lingering = lingering.clone();
    monoio::spawn(async move {
        use monoio::io::{AsyncReadRent, AsyncWriteRent};
        let mut stream = stream;
        let headers: Vec<(&str, &str)> = refused.header.into_iter().collect();
        let written = crate::proxy::write_simple(
            &mut stream,
            refused.status,
            &refused.reason,
            crate::proxy::Framing::Close,
            &headers,
        )
        .await;
        if linger {
            if written.is_ok() {
                let _ = stream.shutdown().await;
                let deadline = Instant::now() + LINGER_TIME;
                let mut buf = vec![0u8; 16 * 1024];
                let mut drained = 0;
                while drained < LINGER_BYTES {
                    match monoio::time::timeout_at(deadline.into(), stream.read(buf)).await {
                        Ok((Ok(n), b)) if n > 0 => {
                            drained += n;
                            buf = b;
                        }
                        _ => break,
                    }
                }
            }
            lingering.set(lingering.get() - 1);
        }
    });
}

/// Registers what the metrics' gauges read at each scrape: the disk, and the cluster
/// and interception in force (they follow live reloads).
fn set_gauges(store: Option<Arc<Store>>, live: Arc<live::Live>) {
    use crate::metrics::{Disk, Gauges};
    crate::metrics::set_gauges(move || {
        let snap = live.snapshot();
        let cluster = snap.cluster.as_ref();
        Gauges {
            disk: store.as_ref().map(|store| Disk {
                used: store.index.used(),
                limit: store.index.limit(),
                entries: store.index.len() as u64,
                fills_in_flight: store.fills.len() as u64,
                readers_waiting: store.fills.waiting() as u64,
            }),
            peers: cluster.map(|c| {
                c.nodes
                    .iter()
                    .map(|n| (n.name.clone(), !n.is_down()))
                    .collect()
            }),
            peer_changes: cluster.map(|c| {
                c.nodes
                    .iter()
                    .map(|n| (n.name.clone(), n.state_changes()))
                    .collect()
            }),
            interception: snap.interception.is_some(),
        }
    });
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
