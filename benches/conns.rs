//! Ten thousand idle clients: `cargo bench --bench conns`.
//!
//! Runs the real `chacha` binary (CHACHA_BIN, else the one cargo builds for this bench,
//! target/release/chacha) with `workers: 2`, a disk cache in a temp dir and an in-bench
//! origin (std threads, keep-alive, ETag + 304) serving /small (4 KiB), warmed into the
//! cache. Then, per round (CONNS_ROUNDS, default 2):
//!   open:   CONNS_N (default 10000) keep-alive connections, each after one GET of
//!           /small (a revalidated hit), so each sits idle after a response; plus
//!           CONNS_SILENT (default 1000) connections that never send a byte;
//!   new:    while they are all open, 20 new clients each connect and GET /small, timed;
//!   close:  every connection is closed.
//! chacha's RSS (VmRSS and RssAnon from /proc/PID/status) is sampled before the first
//! round, with all connections open (once chacha's `chacha_client_connections` gauge
//! shows them all), and after they closed (once the gauge is 0 again). The bars (issue
//! 15 point 3): RSS with 10,000 idle connections <= 100 MiB, after they close within 2x
//! of the idle baseline, a new client served within 50 ms while they are open.
//!
//! The bench raises its RLIMIT_NOFILE (hard too, when it may) before starting chacha,
//! which inherits it: chacha honours a configured `access.limits.connections` up to one
//! descriptor per connection (warning past about a third). The config raises `connections` and `connections-per-client` (all
//! clients come from 127.0.0.1) and `timeouts.idle` / `client-head`, so that nothing is
//! closed by chacha during a round.
//!
//! Numbers: see the README, "Performance" ("Idle connections").

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SMALL_LEN: usize = 4096;
const ETAG: &str = "\"small-v1\"";
const NEW_CLIENTS: usize = 20;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the gauge may take to reach a count before the bench fails.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_FIELDS: usize = 64;
const MIB: f64 = 1024.0 * 1024.0;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Origin

/// Starts the origin on 127.0.0.1:0; one thread per connection.
fn start_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("origin bind");
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            thread::spawn(move || {
                let _ = serve_origin_conn(conn);
            });
        }
    });
    addr
}

fn serve_origin_conn(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let body = vec![b'x'; SMALL_LEN];
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let (n, inm) = loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let mut req = httparse::Request::new(&mut fields);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let inm = req
                        .headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case("if-none-match"));
                    break (n, inm);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(io::Error::other(e)),
            }
            let got = s.read(&mut chunk)?;
            if got == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..got]);
        };
        buf.drain(..n);
        if inm {
            s.write_all(format!("HTTP/1.1 304 Not Modified\r\nETag: {ETAG}\r\n\r\n").as_bytes())?;
        } else {
            let mut out =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {SMALL_LEN}\r\nETag: {ETAG}\r\n\r\n")
                    .into_bytes();
            out.extend_from_slice(&body);
            s.write_all(&out)?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// chacha

struct Proxy {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    /// The client connections chacha allows (its start log: `up to N client connections`).
    limit: usize,
    root: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Proxy {
    fn start(conns: usize) -> Proxy {
        let bin = std::env::var_os("CHACHA_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_chacha")));
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let root =
            std::env::temp_dir().join(format!("chacha-bench-conns-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&root).expect("temp dir");
        let config = root.join("config.yaml");
        let limit = conns + 1000;
        std::fs::write(
            &config,
            format!(
                "addr: 127.0.0.1:0\nworkers: 2\ndisk:\n  dir: {}\n  limit: 1GiB\n\
                 metrics:\n  addr: 127.0.0.1:0\n\
                 timeouts:\n  idle: 600s\n  client-head: 600s\n\
                 access:\n  destinations:\n    allow: [127.0.0.0/8]\n  limits:\n    \
                 connections: {limit}\n    connections-per-client: {limit}\n",
                root.join("cache").display()
            ),
        )
        .expect("write config");
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "-f"])
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; the proxy dies with the bench.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Drains stderr for the whole run so chacha never blocks on a full pipe.
        thread::spawn(move || {
            let mut tx = Some(tx);
            let (mut addr, mut metrics, mut limit) = (None, None, None);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("up to ").nth(1) {
                    limit = rest.split_whitespace().next().and_then(|n| n.parse().ok());
                }
                if let Some(rest) = line.split("listening on ").nth(1) {
                    addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                } else if let Some(rest) = line.split("served on http://").nth(1) {
                    metrics = rest.split('/').next().and_then(|a| a.parse().ok());
                } else if line.contains("WARN") || line.contains("ERROR") || line.contains("up to ")
                {
                    eprintln!("[chacha] {line}");
                }
                if let (Some(a), Some(m), Some(l)) = (addr, metrics, limit) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((a, m, l));
                    }
                }
            }
        });
        let (addr, metrics, limit) = rx.recv_timeout(READY_TIMEOUT).expect(
            "chacha did not report its connection limit, `listening on` and its metrics address",
        );
        Proxy {
            child,
            addr,
            metrics,
            limit,
            root,
        }
    }

    /// (VmRSS, RssAnon) in bytes.
    fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (field("VmRSS:"), field("RssAnon:"))
    }

    /// chacha's `chacha_client_connections` gauge.
    fn open_connections(&self) -> u64 {
        let mut s = TcpStream::connect(self.metrics).expect("connect to metrics");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
            .expect("metrics request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("metrics response");
        text.lines()
            .find_map(|l| l.strip_prefix("chacha_client_connections "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("chacha_client_connections in /metrics") as u64
    }

    /// Waits until the gauge shows `n` open client connections; how long that took.
    fn wait_connections(&self, n: u64) -> Duration {
        let t = Instant::now();
        loop {
            let open = self.open_connections();
            if open == n {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < SETTLE_TIMEOUT,
                "chacha_client_connections stayed at {open}, expected {n}"
            );
            thread::sleep(Duration::from_millis(20)); // polling interval of the gauge
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients

/// Sends a GET on `s` and reads the whole response; its status.
fn get(s: &mut TcpStream, request: &[u8]) -> io::Result<u16> {
    s.write_all(request)?;
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut fields);
        if let httparse::Status::Complete(head) = resp.parse(&buf).map_err(io::Error::other)? {
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .ok_or_else(|| io::Error::other("response without Content-Length"))?;
            let status = resp.code.unwrap_or(0);
            while buf.len() < head + len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to chacha");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Raises RLIMIT_NOFILE (the hard limit too, when the process may); the soft limit in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let raised = libc::rlimit {
            rlim_cur: want.max(lim.rlim_cur),
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            let soft = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / MIB)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; nothing to run here
    }
    let mut n = env_usize("CONNS_N", 10_000);
    let mut silent = env_usize("CONNS_SILENT", 1_000);
    let rounds = env_usize("CONNS_ROUNDS", 2);
    let nofile = raise_nofile(((n + silent) * 4 + 4096) as u64);
    let origin = start_origin();
    let proxy = Proxy::start(n + silent);
    // chacha allows a configured count up to about one per descriptor: where the hard
    // limit is lower than that needs (and cannot be raised without CAP_SYS_RESOURCE), open fewer.
    let room = proxy.limit.saturating_sub(NEW_CLIENTS + 10);
    if n + silent > room {
        let scaled = room * n / (n + silent);
        println!(
            "note: chacha allows {} client connections here (RLIMIT_NOFILE {nofile}): opening {scaled} + {} instead of {n} + {silent}",
            proxy.limit,
            room - scaled
        );
        (n, silent) = (scaled, room - scaled);
    }
    println!(
        "conns bench: {n} keep-alive + {silent} silent connections, {rounds} round(s), nofile {nofile}"
    );
    let request = format!(
        "GET http://{origin}/small HTTP/1.1\r\nHost: {origin}\r\nUser-Agent: chacha-bench\r\n\r\n"
    )
    .into_bytes();
    // Warm the entry (a fill), then one hit, on connections that close.
    for _ in 0..2 {
        let mut s = connect(proxy.addr);
        assert_eq!(get(&mut s, &request).expect("warm GET"), 200);
    }
    proxy.wait_connections(0);
    let baseline = proxy.rss();
    println!(
        "\n| phase | VmRSS MiB | RssAnon MiB | per connection KiB (anon, over baseline) | notes |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| idle baseline | {} | {} | | |",
        mib(baseline.0),
        mib(baseline.1)
    );
    let total = (n + silent) as u64;
    for round in 1..=rounds {
        let t = Instant::now();
        let mut conns = Vec::with_capacity(n + silent);
        for i in 0..n {
            let mut s = connect(proxy.addr);
            let status = get(&mut s, &request)
                .unwrap_or_else(|e| panic!("GET on connection {i} of round {round}: {e}"));
            assert_eq!(status, 200, "GET on connection {i}");
            conns.push(s);
        }
        for _ in 0..silent {
            conns.push(connect(proxy.addr));
        }
        let opened = t.elapsed();
        proxy.wait_connections(total);
        let open = proxy.rss();
        // New clients while all of them are open.
        let mut lat = Vec::new();
        for _ in 0..NEW_CLIENTS {
            let t = Instant::now();
            let mut s = connect(proxy.addr);
            assert_eq!(get(&mut s, &request).expect("new client's GET"), 200);
            lat.push(t.elapsed());
        }
        lat.sort();
        // One idle connection is still served.
        let t = Instant::now();
        assert_eq!(
            get(&mut conns[0], &request).expect("idle client's GET"),
            200
        );
        let idle_again = t.elapsed();
        proxy.wait_connections(total);
        let open2 = proxy.rss();
        drop(conns);
        let closing = proxy.wait_connections(0);
        let after = proxy.rss();
        let per = |r: (u64, u64)| r.1.saturating_sub(baseline.1) as f64 / total as f64 / 1024.0;
        println!(
            "| round {round}: {total} open | {} | {} | {:.1} | opened in {:.1} s |",
            mib(open.0),
            mib(open.1),
            per(open),
            opened.as_secs_f64()
        );
        println!(
            "| round {round}: after {NEW_CLIENTS} new clients | {} | {} | {:.1} | new client connect+GET: median {:.2} ms, max {:.2} ms; an idle one's next GET {:.2} ms |",
            mib(open2.0),
            mib(open2.1),
            per(open2),
            lat[NEW_CLIENTS / 2].as_secs_f64() * 1e3,
            lat[NEW_CLIENTS - 1].as_secs_f64() * 1e3,
            idle_again.as_secs_f64() * 1e3,
        );
        println!(
            "| round {round}: all closed | {} | {} | | gauge at 0 after {:.2} s; {:.2}x the baseline VmRSS |",
            mib(after.0),
            mib(after.1),
            closing.as_secs_f64(),
            after.0 as f64 / baseline.0 as f64
        );
    }
}
