//! Startup with a million cache entries: `cargo bench --bench startup`.
//!
//! Writes N valid entry files (default 1,000,000; `STARTUP_ENTRIES=100000` for fewer) with
//! the crate's own encoder (1 KiB bodies, an ETag, mtimes spread over a day) into a dir
//! under the system temp dir (`STARTUP_DIR=/path` keeps the data set there and reuses it on
//! the next run), starts a tiny origin (304 to a conditional GET, else the body), then runs
//! the real `chacha` binary (`CHACHA_BIN` overrides it, e.g. an older build) on that dir:
//!
//!   1. scan, warm: no snapshot; page cache warm;
//!   2. snapshot, warm: the snapshot the clean stop of run 1 wrote;
//!   3. snapshot, cold: the same after `echo 3 > /proc/sys/vm/drop_caches` (root only);
//!   4. scan, cold: no snapshot, caches dropped.
//!
//! For each: spawn → `listening on`, spawn → the first request answered (a GET of one of
//! the entries through the proxy, and its Cache-Status), spawn → the index complete (the
//! snapshot loaded, or the scan's final line), the process's RSS then, and the time the
//! clean stop took to write the snapshot. The index's memory per entry is measured twice:
//! RSS of chacha with the N entries minus RSS of chacha on an empty dir, divided by N; and
//! in this process, `Index::memory_bytes` (the capacity of its structures) after
//! `Store::open` loads the snapshot. `STARTUP_CLI_ONLY=1` skips the in-process part (to run
//! the binary of an older build whose lib differs).
//!
//! Last measured (2026-11-29, shared 2-core VM, ext4 on virtio, 1M entries): the old
//! binary (synchronous scan) listened after 20-26 s warm and 95-115 s with caches dropped,
//! 222 bytes of RSS per entry; this one answers the first request 0.15 s after the spawn
//! with the snapshot (warm or dropped caches, a hit), 0.04-0.07 s without (a miss until
//! the background scan verifies the entry; the scan takes 12 s warm, 26 s cold), 76 bytes
//! per entry. Table in the README's "Startup" section.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chacha::cache::meta::{self, EntryMeta};

const DEFAULT_ENTRIES: usize = 1_000_000;
const BODY_LEN: usize = 1024;
/// Threads writing the entries (the machine has 2 cores).
const WRITERS: usize = 2;
/// Entry mtimes are spread over this many seconds before now.
const MTIME_SPREAD_SECS: u64 = 86_400;
/// How long one run may take to become ready / complete its index.
const READY_TIMEOUT: Duration = Duration::from_secs(900);
const INDEX_TIMEOUT: Duration = Duration::from_secs(900);
/// What the binary logs when its index is complete: the snapshot loaded, this build's
/// scan done, or an older build's synchronous scan.
const INDEX_DONE: [&str; 3] = [
    "index snapshot loaded",
    "cache scan done",
    "bad or temp files) in",
];
const SNAPSHOT_WRITTEN: &str = "index snapshot written";

fn key(port: u16, i: usize) -> String {
    format!("http://127.0.0.1:{port}/blob/{i:08}")
}

fn etag(i: usize) -> String {
    format!("\"{i:016x}\"")
}

fn entry_bytes(port: u16, i: usize, now: u64) -> Vec<u8> {
    let m = EntryMeta {
        key: key(port, i),
        status: 200,
        headers: vec![
            ("content-type".into(), b"application/octet-stream".to_vec()),
            ("etag".into(), etag(i).into_bytes()),
            (
                "last-modified".into(),
                b"Tue, 01 Oct 2024 12:00:00 GMT".to_vec(),
            ),
        ],
        body_len: BODY_LEN as u64,
        stored_at: now,
    };
    let mut out = m.encode();
    out.extend((0..BODY_LEN).map(|b| (b ^ i) as u8));
    out
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Writes the data set (entries `0..n` for an origin on `port`) into `dir`.
fn write_dataset(dir: &Path, n: usize, port: u16) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join(meta::TMP_DIR)).expect("mkdir");
    for fan in 0..256u64 {
        fs::create_dir_all(dir.join(meta::fanout_dir_name(fan << 56))).expect("mkdir");
    }
    let now = now_secs();
    let t = Instant::now();
    let bytes: u64 = std::thread::scope(|s| {
        let ws: Vec<_> = (0..WRITERS)
            .map(|w| {
                s.spawn(move || {
                    let mut bytes = 0;
                    for i in (w..n).step_by(WRITERS) {
                        let path = meta::entry_path(dir, meta::key_hash(&key(port, i)));
                        let data = entry_bytes(port, i, now);
                        let mut f = File::create(&path).expect("create entry");
                        f.write_all(&data).expect("write entry");
                        let age = (i as u64 * 7919) % MTIME_SPREAD_SECS;
                        f.set_modified(UNIX_EPOCH + Duration::from_secs(now - age))
                            .expect("set mtime");
                        bytes += data.len() as u64;
                    }
                    bytes
                })
            })
            .collect();
        ws.into_iter().map(|w| w.join().expect("writer")).sum()
    });
    fs::write(dir.join("bench-dataset"), format!("{n} {port}\n")).expect("marker");
    println!(
        "wrote {n} entries ({:.1} MiB) in {:.1?}",
        bytes as f64 / (1 << 20) as f64,
        t.elapsed()
    );
}

/// The data set's (entries, origin port) if `dir` holds one.
fn dataset_marker(dir: &Path) -> Option<(usize, u16)> {
    let text = fs::read_to_string(dir.join("bench-dataset")).ok()?;
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The origin: 304 to a GET with If-None-Match, else 200 with a body; keep-alive.
fn start_origin(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || serve_origin(conn));
        }
    });
}

fn serve_origin(conn: TcpStream) {
    let mut r = BufReader::new(conn.try_clone().expect("clone"));
    let mut w = conn;
    loop {
        let mut path = String::new();
        let mut conditional = false;
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if path.is_empty() {
                path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            } else if line.to_ascii_lowercase().starts_with("if-none-match:") {
                conditional = true;
            }
        }
        let i: usize = path
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let resp = if conditional {
            format!("HTTP/1.1 304 Not Modified\r\nETag: {}\r\n\r\n", etag(i)).into_bytes()
        } else {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nETag: {}\r\nContent-Length: {BODY_LEN}\r\n\r\n",
                etag(i)
            )
            .into_bytes();
            r.extend((0..BODY_LEN).map(|b| (b ^ i) as u8));
            r
        };
        if w.write_all(&resp).is_err() {
            return;
        }
    }
}

/// A running chacha whose log lines arrive with their arrival time.
struct Proc {
    child: Child,
    started: Instant,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: VecDeque<(Instant, String)>,
}

impl Proc {
    fn spawn(bin: &str, config: &Path) -> Proc {
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(["run", "-f"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chacha");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if std::env::var_os("STARTUP_ECHO").is_some() {
                    eprintln!("[chacha] {line}");
                }
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            started,
            lines,
            seen: VecDeque::new(),
        }
    }

    /// The first line (since the start) containing one of `needles`, and when it came.
    fn wait_line(&mut self, needles: &[&str], timeout: Duration) -> Option<(Duration, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((at, line)) = self
                .seen
                .iter()
                .find(|(_, l)| needles.iter().any(|n| l.contains(n)))
            {
                return Some((*at - self.started, line.clone()));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push_back(l),
                Err(_) => return None,
            }
        }
    }

    fn rss_kib(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// SIGTERM; returns when the process exited.
    fn stop(mut self) -> Self {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait().expect("wait");
        // Collect what it logged on the way out.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push_back(l);
        }
        self
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A run that failed half-way must not leave its chacha scanning the data set.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One GET through the proxy; (status line, Cache-Status).
fn get_through(proxy: SocketAddr, origin_port: u16, i: usize) -> (String, String) {
    let mut s = TcpStream::connect(proxy).expect("connect to chacha");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\nConnection: close\r\n\r\n",
        key(origin_port, i)
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let status = text.lines().next().unwrap_or("").to_string();
    let cache_status = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("cache-status:")
                .then(|| l["cache-status:".len()..].trim().to_string())
        })
        .unwrap_or_default();
    (status, cache_status)
}

fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Drops the page, dentry and inode caches (root only); false if it could not.
fn drop_caches() -> bool {
    // SAFETY: sync(2) has no arguments.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

struct Row {
    what: String,
    listening: Duration,
    first: Duration,
    first_status: String,
    index_done: Option<Duration>,
    rss_kib: u64,
    snapshot_write: Option<String>,
}

fn run(bin: &str, config: &Path, what: &str, origin_port: u16, probe: usize) -> Row {
    let mut p = Proc::spawn(bin, config);
    let (listening, line) = p
        .wait_line(&["listening on"], READY_TIMEOUT)
        .unwrap_or_else(|| panic!("{what}: no `listening on`: {:?}", p.seen));
    let addr = parse_listening(&line).expect("address");
    let (status, cache_status) = get_through(addr, origin_port, probe);
    let first = p.started.elapsed();
    let index_done = p.wait_line(&INDEX_DONE, INDEX_TIMEOUT).map(|(t, _)| t);
    let rss_kib = p.rss_kib();
    let p = p.stop();
    let snapshot_write = p
        .seen
        .iter()
        .find(|(_, l)| l.contains(SNAPSHOT_WRITTEN))
        .map(|(_, l)| l[l.find(SNAPSHOT_WRITTEN).expect("found")..].to_string());
    let progress: Vec<&str> = p
        .seen
        .iter()
        .filter(|(_, l)| l.contains("cache scan:"))
        .map(|(_, l)| l.as_str())
        .collect();
    if !progress.is_empty() {
        println!(
            "  {what}: {} progress lines, last: {}",
            progress.len(),
            progress[progress.len() - 1]
        );
    }
    let row = Row {
        what: what.to_string(),
        listening,
        first,
        first_status: format!(
            "{} / {cache_status}",
            status.trim_start_matches("HTTP/1.1 ")
        ),
        index_done,
        rss_kib,
        snapshot_write,
    };
    println!("  {}", row.line());
    row
}

impl Row {
    fn line(&self) -> String {
        format!(
            "| {} | {:.0} ms | {:.0} ms | {} | {} | {:.1} MiB | {} |",
            self.what,
            self.listening.as_secs_f64() * 1e3,
            self.first.as_secs_f64() * 1e3,
            self.first_status,
            self.index_done
                .map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
            self.rss_kib as f64 / 1024.0,
            self.snapshot_write.as_deref().unwrap_or("-"),
        )
    }
}

fn main() {
    let n: usize = std::env::var("STARTUP_ENTRIES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_ENTRIES);
    let bin = std::env::var("CHACHA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_chacha").into());
    let keep = std::env::var_os("STARTUP_DIR").map(PathBuf::from);
    let root = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("chacha-bench-startup-{}", std::process::id()))
    });
    let data = root.join("data");
    fs::create_dir_all(&root).expect("mkdir root");

    // Reuse a kept data set if its origin port can be bound again.
    let reuse = dataset_marker(&data)
        .filter(|&(m, _)| m == n)
        .and_then(|(_, port)| TcpListener::bind(("127.0.0.1", port)).ok());
    let listener = match reuse {
        Some(l) => {
            println!("reusing the {n} entries in {}", data.display());
            l
        }
        None => {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind origin");
            write_dataset(&data, n, l.local_addr().expect("addr").port());
            l
        }
    };
    let origin_port = listener.local_addr().expect("addr").port();
    start_origin(listener);

    let write_config = |name: &str, dir: &Path| {
        let path = root.join(name);
        fs::write(
            &path,
            format!(
                "addr: 127.0.0.1:0\nworkers: 2\ndisk:\n  dir: {}\n  limit: 1TB\naccess:\n  destinations:\n    allow: [127.0.0.0/8]\n",
                dir.display()
            ),
        )
        .expect("config");
        path
    };
    let config = write_config("config.yaml", &data);
    let empty_dir = root.join("empty");
    let _ = fs::remove_dir_all(&empty_dir);
    let empty_config = write_config("empty.yaml", &empty_dir);
    let snapshot = data.join("index.snapshot");
    let probe = n / 2;

    let empty = run(&bin, &empty_config, "empty cache dir", origin_port, probe);
    let mut rows = Vec::new();
    let _ = fs::remove_file(&snapshot);
    rows.push(run(&bin, &config, "scan, warm", origin_port, probe));
    rows.push(run(&bin, &config, "snapshot, warm", origin_port, probe));
    let dropped = drop_caches();
    let cold = if dropped {
        "cold (drop_caches)"
    } else {
        "NOT cold (not root)"
    };
    rows.push(run(
        &bin,
        &config,
        &format!("snapshot, {cold}"),
        origin_port,
        probe,
    ));
    let _ = fs::remove_file(&snapshot);
    drop_caches();
    rows.push(run(
        &bin,
        &config,
        &format!("scan, {cold}"),
        origin_port,
        probe,
    ));

    println!("\n{n} entries, binary {bin}");
    println!(
        "| run | listening | first response | its status / Cache-Status | index complete | RSS | snapshot at stop |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in std::iter::once(&empty).chain(&rows) {
        println!("{}", r.line());
    }
    for r in &rows {
        println!(
            "{}: RSS minus the empty dir's: {:.0} bytes per entry",
            r.what,
            (r.rss_kib.saturating_sub(empty.rss_kib) * 1024) as f64 / n as f64
        );
    }

    if std::env::var_os("STARTUP_CLI_ONLY").is_none() {
        in_process(&data, n);
    }
    if keep.is_none() {
        println!("deleting {}", root.display());
        let _ = fs::remove_dir_all(&root);
    }
}

/// `Store::open` in this process (loads the snapshot the last run wrote): the index's
/// own count of its bytes, and this process's RSS growth.
fn in_process(data: &Path, n: usize) {
    use chacha::cache::store::Store;
    let rss = || -> u64 {
        let s = fs::read_to_string("/proc/self/status").expect("status");
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    };
    let before = rss();
    let t = Instant::now();
    let (store, opened) = Store::open(data, 1 << 40).expect("Store::open");
    let elapsed = t.elapsed();
    let after = rss();
    let len = store.index.len();
    println!(
        "\nin-process Store::open: {opened:?} in {elapsed:.1?}; {len} entries; Index::memory_bytes {:.0} bytes per entry; RSS growth {:.0} bytes per entry",
        store.index.memory_bytes() as f64 / len.max(1) as f64,
        ((after.saturating_sub(before)) * 1024) as f64 / len.max(1) as f64
    );
    assert_eq!(len, n, "the snapshot holds every entry");
    // Leave a snapshot behind for the next run of a kept data set.
    store.write_snapshot().expect("write snapshot");
}
