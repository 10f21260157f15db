//! OCI-pull load test (issue 6): M concurrent Tart-like pulls of one VM image, directly
//! from the origins, then through chacha cold (empty cache dir), then warm.
//!
//!   cargo bench --bench oci_pull -- [options]
//!
//! Options (each also read from the environment variable shown; arguments win):
//!   --layers L            OCI_LAYERS            layers in the image (default 8)
//!   --layer-mib S         OCI_LAYER_MIB         MiB per layer, 1..=512 (default 64)
//!   --pulls 1,8           OCI_PULLS             concurrent pulls per run set (default 1,8)
//!   --client-cuts C       OCI_CLIENT_CUTS       cut downloads per pull (default 1)
//!   --origin-cut-every K  OCI_ORIGIN_CUT_EVERY  storage cuts every Kth body (default 0 = off)
//!   --deadline SECS       OCI_DEADLINE          global deadline (default 600)
//!   CHACHA_BIN (env)      the chacha binary (default: the one cargo built for this bench)
//!
//! Everything is on 127.0.0.1, brought up by this program (std threads, keep-alive):
//! - registry: `GET /token` → `{"token": "..."}` (a new token each time); blob GETs
//!   (`/v2/bench/vm/blobs/sha256:<d>`) without `Authorization: Bearer <token>` → 401,
//!   with it → 307 to a presigned URL on the storage origin with a new `X-Amz-Signature`
//!   (and `X-Amz-Date`) every time.
//! - storage: `/ghcr1/blobs/sha256:<d>?X-Amz-...` (ghcr.io's storage path shape, so chacha
//!   also SHA-256-verifies its fills) with `ETag: "<d>"`, 304 on `If-None-Match`, and
//!   single ranges (206) for direct pulls' retries.
//! - layers: deterministic pseudo-random bytes generated on the fly (each 1 MiB block is
//!   a per-(layer, block) rotation of one random 1 MiB pool), never held whole in memory;
//!   their SHA-256 digests (ring) are computed once at startup.
//!
//! A pull behaves like Tart: get a token, then fetch the layers 4 at a time (one thread
//! each, keep-alive connections), each as registry GET → 307 → storage GET, hashing the
//! body as it streams and comparing with the layer's digest. A cut download is retried
//! with `Range: bytes=N-` (registry again, then the new presigned URL) and must come back
//! as a 206 whose Content-Range starts at N (Tart only checks the 206; a wrong range is
//! counted as a failure here). Cuts are injected two ways:
//! - client cuts (default 1 per pull): the pull picks a random layer and offset and closes
//!   its connection there on the first attempt, as a broken network would;
//! - origin cuts (off by default): the storage origin stops every Kth body at a random
//!   offset and closes (through chacha this fails the fill, so the retry refetches).
//!
//! chacha runs as a process with `examples/oci-test.yaml` (the ghcr.yaml rules with the
//! test hosts: `ignore-parameters` for the X-Amz-* parameters), a fresh cache dir under
//! the system temp dir (removed at the end) and a disk limit of twice the image.
//!
//! Printed per run: per-pull p50/p99 seconds (nearest rank), aggregate throughput (client
//! body bytes / wall time), body MiB served by the origins (registry + storage) vs
//! delivered to clients (including the bytes of cut attempts), the storage origin's
//! 200/206/304 responses, retries (of which client cuts), CPU seconds of chacha and of
//! this process (origins + pullers), `cores` = both CPU times / wall time (how close the
//! run came to saturating the machine), and the digest verification result.
//! Exit status 1 when any blob failed verification.
//!
//! Last result, defaults (8 x 64 MiB, M = 1 and 8, 1 client cut per pull, no origin
//! cuts), 2 vCPUs (AMD EPYC, SHA-NI) shared with other builds (load average 7-14, so
//! figures vary by up to 2x from run to run; `cores` < 2 means the run was starved):
//!
//!   run          pulls   p50 s   p99 s    MiB/s origin MiB client MiB   200/206/304   retries chacha s  bench s cores  digests
//!   direct           1    0.23    0.23     2233        517        512         8/1/0    1 (1c)        -      0.4   1.9  OK 8/8
//!   chacha cold      1    0.94    0.94      544        512        512         8/0/1    1 (1c)      0.6      0.4   1.0  OK 8/8
//!   chacha warm      1    0.43    0.43     1185          0        512         0/0/9    1 (1c)      0.1      0.3   1.0  OK 8/8
//!   direct           8    2.58    2.58     1584       4122       4096        64/8/0    8 (8c)        -      3.5   1.4  OK 64/64
//!   chacha cold      8    2.69    2.69     1524        512       4096        8/0/64    8 (8c)      1.4      2.8   1.6  OK 64/64
//!   chacha warm      8    1.91    1.92     2133          0       4096        0/0/72    8 (8c)      0.9      2.7   1.9  OK 64/64
//!
//! A quieter run of the same: direct 2254 / 2274 MiB/s (M=1 / M=8), cold 988 / 2067,
//! warm 1827 / 2145. With 8 x 512 MiB: direct 1743 / 1951, cold 654 / 1561, warm
//! 1812 / 1821 MiB/s; cold M=1 cost chacha 7.5 CPU-s for the 4 GiB fill.
//! Reading: the pullers alone (read + SHA-256) need ~0.65 CPU-s per GiB, so on 2 cores
//! every run is CPU-bound (`cores` ~1.6-1.9 when not starved). Direct and warm move the
//! same bytes for about the same total CPU (the origin's send vs chacha's ~0.25 CPU-s/GiB
//! from the page cache), so they come out even; the cold fill (receive, SHA-256, write,
//! send) is the expensive path, ~1.2-1.8 CPU-s per GiB filled.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::digest::{Context, SHA256};

const MIB: u64 = 1 << 20;
const DEFAULT_LAYERS: usize = 8;
const DEFAULT_LAYER_MIB: u64 = 64;
/// Tart's VM image layers are at most 512 MiB.
const MAX_LAYER_MIB: u64 = 512;
const DEFAULT_PULLS: [usize; 2] = [1, 8];
const DEFAULT_CLIENT_CUTS: usize = 1;
const DEFAULT_DEADLINE_SECS: u64 = 600;
/// Layers a pull fetches at once (Tart's `--concurrency` default).
const LAYERS_AT_ONCE: usize = 4;
/// Attempts per layer before a pull gives up on it.
const MAX_ATTEMPTS: u32 = 8;
/// Socket timeout on every connection, both sides.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Read/write buffer of clients and origins.
const IO_BUF: usize = 256 << 10;
const MAX_HEAD: usize = 64 << 10;
const MAX_FIELDS: usize = 64;
/// The content generator's random pool (and block) size.
const POOL: usize = 1 << 20;
const REPO: &str = "bench/vm";
/// How long chacha may take to report `listening on`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Warning/error lines of chacha's log kept for the report.
const MAX_LOG_LINES: usize = 1000;

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Opts {
    layers: usize,
    layer_size: u64,
    pulls: Vec<usize>,
    client_cuts: usize,
    origin_cut_every: u64,
    deadline: Duration,
}

fn parse_opts() -> Result<Opts, String> {
    let mut vals: HashMap<&str, String> = HashMap::new();
    let keys = [
        ("--layers", "OCI_LAYERS"),
        ("--layer-mib", "OCI_LAYER_MIB"),
        ("--pulls", "OCI_PULLS"),
        ("--client-cuts", "OCI_CLIENT_CUTS"),
        ("--origin-cut-every", "OCI_ORIGIN_CUT_EVERY"),
        ("--deadline", "OCI_DEADLINE"),
    ];
    for (arg, env) in keys {
        if let Ok(v) = std::env::var(env) {
            vals.insert(arg, v);
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (a, None),
        };
        if let Some((key, _)) = keys.iter().find(|(k, _)| *k == name) {
            let v = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or(format!("{name} needs a value"))?
                }
            };
            vals.insert(key, v);
        } else if a == "-h" || a == "--help" {
            return Err("see the header of benches/oci_pull.rs for the options".into());
        }
        // Anything else (e.g. cargo's `--bench`) is ignored.
        i += 1;
    }
    let num = |k: &str, d: u64| -> Result<u64, String> {
        match vals.get(k) {
            None => Ok(d),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("{k}: bad number {v:?}")),
        }
    };
    let layer_mib = num("--layer-mib", DEFAULT_LAYER_MIB)?;
    if !(1..=MAX_LAYER_MIB).contains(&layer_mib) {
        return Err(format!("--layer-mib must be 1..={MAX_LAYER_MIB}"));
    }
    let layers = num("--layers", DEFAULT_LAYERS as u64)? as usize;
    if layers == 0 {
        return Err("--layers must be at least 1".into());
    }
    let pulls = match vals.get("--pulls") {
        None => DEFAULT_PULLS.to_vec(),
        Some(v) => v
            .split(',')
            .map(|p| p.trim().parse::<usize>().ok().filter(|&n| n > 0))
            .collect::<Option<Vec<_>>>()
            .ok_or(format!("--pulls: bad list {v:?}"))?,
    };
    Ok(Opts {
        layers,
        layer_size: layer_mib * MIB,
        pulls,
        client_cuts: num("--client-cuts", DEFAULT_CLIENT_CUTS as u64)? as usize,
        origin_cut_every: num("--origin-cut-every", 0)?,
        deadline: Duration::from_secs(num("--deadline", DEFAULT_DEADLINE_SECS)?),
    })
}

// ---------------------------------------------------------------------------------------
// Randomness and content
// ---------------------------------------------------------------------------------------

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

static RNG: AtomicU64 = AtomicU64::new(0);

/// A random value (not cryptographic: signatures, tokens, cut points).
fn rand_u64() -> u64 {
    splitmix64(RNG.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
}

fn seed_rng() {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    RNG.store(t ^ u64::from(std::process::id()) << 32, Ordering::Relaxed);
}

/// Layer bytes: block `b` (POOL bytes) of layer `l` is the pool rotated by a
/// pseudo-random shift of (l, b). Any offset is computed directly (ranges), at memcpy
/// speed, so the origins are never the bottleneck.
struct Content {
    pool: Vec<u8>,
}

/// Fixed, so digests (and a cache dir) are the same from run to run.
const CONTENT_SEED: u64 = 0x0C1_B10B;

impl Content {
    fn new() -> Content {
        let mut pool = Vec::with_capacity(POOL);
        let mut i = 0u64;
        while pool.len() < POOL {
            pool.extend_from_slice(&splitmix64(CONTENT_SEED ^ i).to_le_bytes());
            i += 1;
        }
        Content { pool }
    }

    fn shift(layer: usize, block: u64) -> usize {
        (splitmix64(CONTENT_SEED ^ ((layer as u64) << 40) ^ block.wrapping_mul(0xA24B_AED4))
            % POOL as u64) as usize
    }

    /// Fills `out` with the layer's bytes from offset `off`.
    fn fill(&self, layer: usize, off: u64, out: &mut [u8]) {
        let mut pos = off;
        let mut i = 0;
        while i < out.len() {
            let block = pos / POOL as u64;
            let r = (pos % POOL as u64) as usize;
            let n = (POOL - r).min(out.len() - i);
            let s = (r + Content::shift(layer, block)) % POOL;
            let first = n.min(POOL - s);
            out[i..i + first].copy_from_slice(&self.pool[s..s + first]);
            out[i + first..i + n].copy_from_slice(&self.pool[..n - first]);
            i += n;
            pos += n as u64;
        }
    }

    fn sha256(&self, layer: usize, size: u64) -> String {
        let mut ctx = Context::new(&SHA256);
        let mut buf = vec![0u8; IO_BUF];
        let mut off = 0;
        while off < size {
            let n = (size - off).min(IO_BUF as u64) as usize;
            self.fill(layer, off, &mut buf[..n]);
            ctx.update(&buf[..n]);
            off += n as u64;
        }
        hex(ctx.finish().as_ref())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Image {
    content: Content,
    size: u64,
    digests: Vec<String>,
    by_digest: HashMap<String, usize>,
}

impl Image {
    /// Generates the layer digests, one thread per layer (at most the CPU count at once).
    fn new(layers: usize, size: u64) -> Image {
        let content = Content::new();
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let next = AtomicUsize::new(0);
        let digests = Mutex::new(vec![String::new(); layers]);
        thread::scope(|s| {
            for _ in 0..cpus.min(layers) {
                s.spawn(|| loop {
                    let l = next.fetch_add(1, Ordering::SeqCst);
                    if l >= layers {
                        return;
                    }
                    let d = content.sha256(l, size);
                    digests.lock().unwrap()[l] = d;
                });
            }
        });
        let digests = digests.into_inner().unwrap();
        let by_digest = digests
            .iter()
            .enumerate()
            .map(|(i, d)| (d.clone(), i))
            .collect();
        Image {
            content,
            size,
            digests,
            by_digest,
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 wire (both sides; Content-Length framing only, which is all these peers use)
// ---------------------------------------------------------------------------------------

struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Wire {
    fn new(s: TcpStream) -> Wire {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
        Wire {
            s,
            buf: vec![0; IO_BUF],
            start: 0,
            end: 0,
        }
    }

    fn connect(addr: SocketAddr) -> io::Result<Wire> {
        Ok(Wire::new(TcpStream::connect_timeout(&addr, IO_TIMEOUT)?))
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.s.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// One head up to the empty line; `None` on EOF before any byte.
    fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(p) = avail.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = avail[..p + 4].to_vec();
                self.start += p + 4;
                return Ok(Some(head));
            }
            if avail.len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
            }
            if self.fill()? == 0 {
                return if self.start == self.end {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Streams up to `want` body bytes into `sink`. Returns how many it delivered, and
    /// the error (a timeout, a reset) when it stopped early for one; fewer bytes without
    /// an error mean the peer closed.
    fn read_body(&mut self, want: u64, sink: &mut dyn FnMut(&[u8])) -> (u64, Option<io::Error>) {
        let mut got = 0;
        while got < want {
            if self.start == self.end {
                match self.fill() {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return (got, Some(e)),
                }
            }
            let n = ((self.end - self.start) as u64).min(want - got) as usize;
            sink(&self.buf[self.start..self.start + n]);
            self.start += n;
            got += n as u64;
        }
        (got, None)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn owned(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------------------

/// What an origin did, in body bytes and responses by status.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    body_bytes: AtomicU64,
    s200: AtomicU64,
    s206: AtomicU64,
    s304: AtomicU64,
    s307: AtomicU64,
    s401: AtomicU64,
    cuts: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Snap {
    requests: u64,
    body_bytes: u64,
    s200: u64,
    s206: u64,
    s304: u64,
    s307: u64,
    s401: u64,
    cuts: u64,
}

impl Counters {
    fn snap(&self) -> Snap {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Snap {
            requests: g(&self.requests),
            body_bytes: g(&self.body_bytes),
            s200: g(&self.s200),
            s206: g(&self.s206),
            s304: g(&self.s304),
            s307: g(&self.s307),
            s401: g(&self.s401),
            cuts: g(&self.cuts),
        }
    }
}

impl Snap {
    fn minus(self, o: Snap) -> Snap {
        Snap {
            requests: self.requests - o.requests,
            body_bytes: self.body_bytes - o.body_bytes,
            s200: self.s200 - o.s200,
            s206: self.s206 - o.s206,
            s304: self.s304 - o.s304,
            s307: self.s307 - o.s307,
            s401: self.s401 - o.s401,
            cuts: self.cuts - o.cuts,
        }
    }
}

struct Req {
    target: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// Bytes `start..start+len` of a layer; `cut_after` stops early and closes.
    Layer {
        layer: usize,
        start: u64,
        len: u64,
        cut_after: Option<u64>,
    },
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

impl Resp {
    fn new(status: u16, body: Body) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body,
        }
    }
    fn header(mut self, n: &str, v: impl Into<String>) -> Resp {
        self.headers.push((n.to_string(), v.into()));
        self
    }
}

type Handler = dyn Fn(&Req) -> Resp + Send + Sync;

/// A thread-per-connection keep-alive HTTP/1.1 server on 127.0.0.1:0.
struct Server {
    addr: SocketAddr,
    counters: Arc<Counters>,
}

fn start_server(name: &str, image: Arc<Image>, handler: Box<Handler>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let handler: Arc<Handler> = Arc::from(handler);
    let c = counters.clone();
    let name = name.to_string();
    thread::Builder::new()
        .name(format!("{name}-accept"))
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let (h, c, image) = (handler.clone(), c.clone(), image.clone());
                let _ = thread::Builder::new()
                    .name(format!("{name}-conn"))
                    .spawn(move || serve_conn(stream, &*h, &c, &image));
            }
        })
        .unwrap();
    Server { addr, counters }
}

fn serve_conn(stream: TcpStream, handler: &Handler, c: &Counters, image: &Image) {
    let mut w = Wire::new(stream);
    let mut out = vec![0u8; IO_BUF];
    loop {
        let Ok(Some(head)) = w.read_head() else {
            return;
        };
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut parsed = httparse::Request::new(&mut fields);
        if !matches!(parsed.parse(&head), Ok(httparse::Status::Complete(_))) {
            return;
        }
        let req = Req {
            target: parsed.path.unwrap_or("").to_string(),
            headers: owned(parsed.headers),
        };
        c.requests.fetch_add(1, Ordering::Relaxed);
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let resp = handler(&req);
        match write_resp(&mut w.s, resp, c, image, &mut out) {
            Ok(true) if !close => continue,
            _ => {
                let _ = w.s.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Writes a response; false when the connection must close (a cut body).
fn write_resp(
    s: &mut TcpStream,
    resp: Resp,
    c: &Counters,
    image: &Image,
    out: &mut [u8],
) -> io::Result<bool> {
    let len = match &resp.body {
        Body::Empty => 0,
        Body::Bytes(b) => b.len() as u64,
        Body::Layer { len, .. } => *len,
    };
    let mut head = format!("HTTP/1.1 {} X\r\n", resp.status);
    for (n, v) in &resp.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if resp.status != 304 {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    head.push_str("\r\n");
    let counter = match resp.status {
        200 => Some(&c.s200),
        206 => Some(&c.s206),
        304 => Some(&c.s304),
        307 => Some(&c.s307),
        401 => Some(&c.s401),
        _ => None,
    };
    if let Some(n) = counter {
        n.fetch_add(1, Ordering::Relaxed);
    }
    match resp.body {
        Body::Empty => s.write_all(head.as_bytes())?,
        Body::Bytes(b) => {
            let mut all = head.into_bytes();
            all.extend_from_slice(&b);
            s.write_all(&all)?;
            c.body_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        Body::Layer {
            layer,
            start,
            len,
            cut_after,
        } => {
            s.write_all(head.as_bytes())?;
            let stop = cut_after.unwrap_or(len).min(len);
            let mut sent = 0;
            while sent < stop {
                let n = (stop - sent).min(out.len() as u64) as usize;
                image.content.fill(layer, start + sent, &mut out[..n]);
                s.write_all(&out[..n])?;
                c.body_bytes.fetch_add(n as u64, Ordering::Relaxed);
                sent += n as u64;
            }
            if stop < len {
                c.cuts.fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn blob_path(digest: &str) -> String {
    format!("/v2/{REPO}/blobs/sha256:{digest}")
}

/// The registry front: tokens, 401 without one, 307 to a fresh presigned URL with one.
fn start_registry(image: Arc<Image>, storage: SocketAddr) -> Server {
    let tokens: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let img = image.clone();
    let registry_addr = Arc::new(Mutex::new(None::<SocketAddr>));
    let ra = registry_addr.clone();
    let server = start_server(
        "registry",
        image,
        Box::new(move |req: &Req| {
            let path = req.path();
            if path == "/token" {
                let token = format!("{:016x}{:016x}", rand_u64(), rand_u64());
                tokens.lock().unwrap().insert(token.clone());
                let body = format!("{{\"token\": \"{token}\", \"expires_in\": 300}}");
                return Resp::new(200, Body::Bytes(body.into_bytes()))
                    .header("Content-Type", "application/json")
                    .header("Cache-Control", "no-store");
            }
            let Some(digest) = path.strip_prefix(&format!("/v2/{REPO}/blobs/sha256:")) else {
                return Resp::new(404, Body::Empty);
            };
            let authorized = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|t| tokens.lock().unwrap().contains(t.trim()));
            if !authorized {
                let realm = ra
                    .lock()
                    .unwrap()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                return Resp::new(401, Body::Empty).header(
                    "WWW-Authenticate",
                    format!(
                        "Bearer realm=\"http://{realm}/token\",service=\"bench\",scope=\"repository:{REPO}:pull\""
                    ),
                );
            }
            if !img.by_digest.contains_key(digest) {
                return Resp::new(404, Body::Empty);
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let location = format!(
                "http://{storage}/ghcr1/blobs/sha256:{digest}?X-Amz-Algorithm=AWS4-HMAC-SHA256\
                 &X-Amz-Credential=BENCH%2F20240101%2Fus-east-1%2Fs3%2Faws4_request\
                 &X-Amz-Date={now}&X-Amz-Expires=300&X-Amz-SignedHeaders=host\
                 &X-Amz-Signature={:016x}{:016x}{:016x}{:016x}",
                rand_u64(),
                rand_u64(),
                rand_u64(),
                rand_u64()
            );
            Resp::new(307, Body::Empty).header("Location", location)
        }),
    );
    *registry_addr.lock().unwrap() = Some(server.addr);
    server
}

/// A single `bytes=a-b` / `bytes=a-` / `bytes=-n` range of a body of `len` bytes;
/// `Err(())` when unsatisfiable, `Ok(None)` when absent or not understood (RFC 9110 §14).
#[allow(clippy::result_unit_err)]
fn parse_range(v: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = v.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let s: u64 = a.parse().map_err(|_| ())?;
        let e = if b.is_empty() {
            len - 1
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(len - 1)
        };
        (s, e)
    };
    if len == 0 || start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// The storage origin: presigned blob URLs, ETag + 304, ranges, optional cuts.
fn start_storage(image: Arc<Image>, cut_every: u64) -> Server {
    let img = image.clone();
    let bodies = AtomicU64::new(0);
    start_server(
        "storage",
        image,
        Box::new(move |req: &Req| {
            let Some(digest) = req.path().strip_prefix("/ghcr1/blobs/sha256:") else {
                return Resp::new(404, Body::Empty);
            };
            let Some(&layer) = img.by_digest.get(digest) else {
                return Resp::new(404, Body::Empty);
            };
            if !req.target.contains("X-Amz-Signature=") {
                return Resp::new(403, Body::Empty);
            }
            let etag = format!("\"{digest}\"");
            if req
                .header("if-none-match")
                .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
            {
                return Resp::new(304, Body::Empty).header("ETag", etag);
            }
            let len = img.size;
            let (status, start, end) = match parse_range(req.header("range"), len) {
                Err(()) => {
                    return Resp::new(416, Body::Empty)
                        .header("Content-Range", format!("bytes */{len}"))
                }
                Ok(Some((s, e))) => (206, s, e),
                Ok(None) => (200, 0, len - 1),
            };
            let count = end - start + 1;
            let n = bodies.fetch_add(1, Ordering::Relaxed);
            let cut_after =
                (cut_every > 0 && n % cut_every == cut_every - 1).then(|| rand_u64() % count);
            let mut resp = Resp::new(
                status,
                Body::Layer {
                    layer,
                    start,
                    len: count,
                    cut_after,
                },
            )
            .header("ETag", etag)
            .header("Accept-Ranges", "bytes")
            .header("Content-Type", "application/octet-stream");
            if status == 206 {
                resp = resp.header("Content-Range", format!("bytes {start}-{end}/{len}"));
            }
            resp
        }),
    )
}

// ---------------------------------------------------------------------------------------
// Client (a Tart-like puller)
// ---------------------------------------------------------------------------------------

struct RespHead {
    status: u16,
    headers: Vec<(String, String)>,
    /// Body length (0 for 304 and bodiless responses).
    len: u64,
    close: bool,
}

/// A puller thread's connections: one to chacha, or one per origin when direct.
struct Net {
    proxy: Option<SocketAddr>,
    conns: HashMap<SocketAddr, Wire>,
}

impl Net {
    fn new(proxy: Option<SocketAddr>) -> Net {
        Net {
            proxy,
            conns: HashMap::new(),
        }
    }

    /// Sends a GET for `http://{host}{pq}` and reads the response head. A reused
    /// keep-alive connection that turns out closed is replaced once.
    fn get(
        &mut self,
        host: SocketAddr,
        pq: &str,
        extra: &[String],
    ) -> io::Result<(SocketAddr, RespHead)> {
        let key = self.proxy.unwrap_or(host);
        let target = match self.proxy {
            Some(_) => format!("http://{host}{pq}"),
            None => pq.to_string(),
        };
        let mut raw =
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: oci-pull-bench\r\n");
        for h in extra {
            raw.push_str(h);
            raw.push_str("\r\n");
        }
        raw.push_str("\r\n");
        for attempt in 0..2 {
            let fresh = !self.conns.contains_key(&key);
            if fresh {
                self.conns.insert(key, Wire::connect(key)?);
            }
            let w = self.conns.get_mut(&key).unwrap();
            let res =
                w.s.write_all(raw.as_bytes())
                    .and_then(|_| read_resp_head(w));
            match res {
                Ok(h) => return Ok((key, h)),
                Err(e) => {
                    self.conns.remove(&key);
                    if fresh || attempt == 1 {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!()
    }

    /// Reads a small body whole.
    fn small_body(&mut self, key: SocketAddr, head: &RespHead) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        let w = self
            .conns
            .get_mut(&key)
            .ok_or(io::ErrorKind::NotConnected)?;
        let (got, err) = w.read_body(head.len, &mut |b| body.extend_from_slice(b));
        if let Some(e) = err {
            self.conns.remove(&key);
            return Err(e);
        }
        if got < head.len {
            self.conns.remove(&key);
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if head.close {
            self.conns.remove(&key);
        }
        Ok(body)
    }

    fn drop_conn(&mut self, key: SocketAddr) {
        self.conns.remove(&key);
    }
}

fn read_resp_head(w: &mut Wire) -> io::Result<RespHead> {
    let head = w.read_head()?.ok_or(io::ErrorKind::UnexpectedEof)?;
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Response::new(&mut fields);
    if !matches!(parsed.parse(&head), Ok(httparse::Status::Complete(_))) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad head"));
    }
    let status = parsed.code.unwrap_or(0);
    let headers = owned(parsed.headers);
    if header(&headers, "transfer-encoding").is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "chunked response (the bench expects Content-Length)",
        ));
    }
    let len = if status == 304 || status == 204 {
        0
    } else {
        match header(&headers, "content-length") {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("status {status} without Content-Length"),
                ))
            }
        }
    };
    let close = header(&headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok(RespHead {
        status,
        headers,
        len,
        close,
    })
}

/// `http://host:port/pq` → (addr, pq).
fn split_url(url: &str) -> Option<(SocketAddr, String)> {
    let rest = url.strip_prefix("http://")?;
    let slash = rest.find('/')?;
    Some((rest[..slash].parse().ok()?, rest[slash..].to_string()))
}

/// Client-side tallies of one run (all pulls).
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    retries: AtomicU64,
    client_cuts: AtomicU64,
    verified: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

struct Env<'a> {
    image: &'a Image,
    registry: SocketAddr,
    proxy: Option<SocketAddr>,
    tally: &'a Tally,
}

/// Fetches one layer like Tart: registry (token) → 307 → storage, hashing as it
/// streams; a cut download resumes with `Range: bytes=N-`, which must be answered 206
/// from N. `cut` closes the connection after that many bytes on the first attempt.
fn pull_layer(env: &Env, net: &mut Net, token: &str, layer: usize, cut: Option<u64>) {
    let size = env.image.size;
    let digest = &env.image.digests[layer];
    let auth = format!("Authorization: Bearer {token}");
    let mut ctx = Context::new(&SHA256);
    let mut got = 0u64;
    let mut cut = cut;
    let mut last_err: Option<String> = None;
    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 {
            env.tally.retries.fetch_add(1, Ordering::Relaxed);
        }
        let range = format!("Range: bytes={got}-");
        let mut extra = vec![auth.clone()];
        if got > 0 {
            extra.push(range.clone());
        }
        // 1. The registry redirects to a presigned URL.
        let (key, head) = match net.get(env.registry, &blob_path(digest), &extra) {
            Ok(x) => x,
            Err(e) => {
                last_err = Some(format!("registry: {e}"));
                continue;
            }
        };
        if net.small_body(key, &head).is_err() || head.status != 307 {
            last_err = Some(format!("registry answered {}", head.status));
            net.drop_conn(key);
            continue;
        }
        let Some((storage, pq)) = header(&head.headers, "location").and_then(split_url) else {
            env.tally
                .fail(format!("layer {layer}: 307 without a usable Location"));
            return;
        };
        // 2. The storage origin (through chacha when there is one).
        let extra = if got > 0 { vec![range.clone()] } else { vec![] };
        let (key, head) = match net.get(storage, &pq, &extra) {
            Ok(x) => x,
            Err(e) => {
                last_err = Some(format!("storage: {e}"));
                continue;
            }
        };
        match (got, head.status) {
            (0, 200) => {}
            (g, 206) if g > 0 => {
                let want = format!("bytes {g}-{}/{size}", size - 1);
                if header(&head.headers, "content-range") != Some(want.as_str()) {
                    env.tally.fail(format!(
                        "layer {layer}: resumed at {g} with Content-Range {:?}",
                        header(&head.headers, "content-range")
                    ));
                    return;
                }
            }
            (g, 200) if g > 0 => {
                // Tart accepts only a 206 here; count it and start over.
                env.tally
                    .fail(format!("layer {layer}: Range bytes={g}- answered 200"));
                ctx = Context::new(&SHA256);
                got = 0;
            }
            (_, s) => {
                last_err = Some(format!("storage answered {s}"));
                let _ = net.small_body(key, &head);
                continue;
            }
        }
        let remaining = head.len;
        if got + remaining != size {
            env.tally.fail(format!(
                "layer {layer}: {remaining} bytes offered at {got} of {size}"
            ));
            net.drop_conn(key);
            return;
        }
        let limit = match cut.take() {
            Some(c) if c > got && c < size => c - got,
            _ => remaining,
        };
        let w = net.conns.get_mut(&key).unwrap();
        let (n, err) = w.read_body(limit, &mut |b| ctx.update(b));
        got += n;
        env.tally.delivered.fetch_add(n, Ordering::Relaxed);
        if let Some(e) = err {
            // A reset or a timeout mid-body: resume from what arrived.
            last_err = Some(format!("storage body: {e}"));
            net.drop_conn(key);
            continue;
        }
        if n < limit {
            // The peer closed early: an origin cut, or chacha aborting a failed fill.
            net.drop_conn(key);
            continue;
        }
        if got < size {
            // Our own cut: close the connection, as a broken network would.
            env.tally.client_cuts.fetch_add(1, Ordering::Relaxed);
            net.drop_conn(key);
            continue;
        }
        if head.close {
            net.drop_conn(key);
        }
        let actual = hex(ctx.finish().as_ref());
        if &actual == digest {
            env.tally.verified.fetch_add(1, Ordering::Relaxed);
        } else {
            env.tally
                .fail(format!("layer {layer}: sha256 {actual}, expected {digest}"));
        }
        return;
    }
    env.tally.fail(format!(
        "layer {layer}: gave up after {MAX_ATTEMPTS} attempts at {got} bytes ({})",
        last_err.unwrap_or_default()
    ));
}

/// One pull: a token, then the layers 4 at a time. Returns its duration.
fn pull(env: &Env, opts: &Opts) -> Duration {
    let start = Instant::now();
    let mut net = Net::new(env.proxy);
    let token = match get_token(&mut net, env.registry) {
        Ok(t) => t,
        Err(e) => {
            env.tally.fail(format!("token: {e}"));
            return start.elapsed();
        }
    };
    drop(net);
    // Where this pull's downloads are cut (client side): random layers and offsets.
    let mut cuts: HashMap<usize, u64> = HashMap::new();
    for _ in 0..opts.client_cuts.min(opts.layers) {
        loop {
            let l = (rand_u64() % opts.layers as u64) as usize;
            if let std::collections::hash_map::Entry::Vacant(e) = cuts.entry(l) {
                e.insert(1 + rand_u64() % (env.image.size - 1).max(1));
                break;
            }
        }
    }
    let next = AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..LAYERS_AT_ONCE.min(opts.layers) {
            s.spawn(|| {
                let mut net = Net::new(env.proxy);
                loop {
                    let l = next.fetch_add(1, Ordering::SeqCst);
                    if l >= opts.layers {
                        return;
                    }
                    pull_layer(env, &mut net, &token, l, cuts.get(&l).copied());
                }
            });
        }
    });
    start.elapsed()
}

fn get_token(net: &mut Net, registry: SocketAddr) -> Result<String, String> {
    let pq = format!("/token?service=bench&scope=repository:{REPO}:pull");
    let (key, head) = net.get(registry, &pq, &[]).map_err(|e| e.to_string())?;
    let body = net.small_body(key, &head).map_err(|e| e.to_string())?;
    if head.status != 200 {
        return Err(format!("status {}", head.status));
    }
    let text = String::from_utf8_lossy(&body);
    let after = text
        .split("\"token\"")
        .nth(1)
        .ok_or("no token field")?
        .trim_start()
        .strip_prefix(':')
        .ok_or("no token value")?
        .trim_start()
        .strip_prefix('"')
        .ok_or("token not a string")?;
    Ok(after.split('"').next().unwrap_or("").to_string())
}

// ---------------------------------------------------------------------------------------
// chacha process
// ---------------------------------------------------------------------------------------

struct ChachaProc {
    child: Child,
    addr: SocketAddr,
    notable: Arc<Mutex<Vec<String>>>,
}

impl ChachaProc {
    fn start(
        bin: &Path,
        root: &Path,
        registry: SocketAddr,
        storage: SocketAddr,
        limit: u64,
    ) -> ChachaProc {
        let cache = root.join("cache");
        let _ = std::fs::remove_dir_all(&cache);
        std::fs::create_dir_all(&cache).expect("create cache dir");
        let escape = |a: SocketAddr| a.to_string().replace('.', "\\.");
        let yaml = include_str!("../examples/oci-test.yaml")
            .replace("@REGISTRY@", &escape(registry))
            .replace("@STORAGE@", &escape(storage))
            .replace("@DIR@", cache.to_str().unwrap())
            .replace("@LIMIT@", &limit.to_string());
        let config = root.join("config.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("-f")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; chacha dies with this process.
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
        let notable = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let n = notable.clone();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                    if let (Some(tx), Some(a)) = (tx.take(), addr) {
                        let _ = tx.send(a);
                    }
                } else if line.contains(" WARN ") || line.contains(" ERROR ") {
                    let mut n = n.lock().unwrap();
                    if n.len() < MAX_LOG_LINES {
                        n.push(line);
                    }
                }
            }
        });
        let addr: SocketAddr = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "chacha did not report `listening on`; log: {:?}",
                    notable.lock().unwrap()
                );
            }
        };
        ChachaProc {
            child,
            addr,
            notable,
        }
    }

    /// User + system CPU seconds so far (/proc/<pid>/stat fields 14 and 15).
    fn cpu_secs(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) else {
            return 0.0;
        };
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // After "pid (comm)", field 3 is at index 0: utime (14) is 11, stime (15) is 12.
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        (ticks(11) + ticks(12)) as f64 / hz
    }
}

impl Drop for ChachaProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Runs and report
// ---------------------------------------------------------------------------------------

struct RunResult {
    name: String,
    pulls: usize,
    times: Vec<f64>,
    wall: f64,
    registry: Snap,
    storage: Snap,
    delivered: u64,
    retries: u64,
    client_cuts: u64,
    verified: u64,
    expected: u64,
    failures: Vec<String>,
    chacha_cpu: Option<f64>,
    /// CPU seconds of this process (origins and pullers together).
    bench_cpu: f64,
}

/// User + system CPU seconds of this process so far.
fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[allow(clippy::too_many_arguments)]
fn run(
    name: &str,
    m: usize,
    opts: &Opts,
    image: &Image,
    registry: &Server,
    storage: &Server,
    proxy: Option<&ChachaProc>,
) -> RunResult {
    let tally = Tally::default();
    let env = Env {
        image,
        registry: registry.addr,
        proxy: proxy.map(|p| p.addr),
        tally: &tally,
    };
    let (r0, s0) = (registry.counters.snap(), storage.counters.snap());
    let cpu0 = proxy.map(|p| p.cpu_secs());
    let bench0 = self_cpu_secs();
    let start = Instant::now();
    let mut times: Vec<f64> = thread::scope(|s| {
        let hs: Vec<_> = (0..m)
            .map(|_| s.spawn(|| pull(&env, opts).as_secs_f64()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let chacha_cpu = proxy.map(|p| p.cpu_secs() - cpu0.unwrap_or(0.0));
    let bench_cpu = self_cpu_secs() - bench0;
    RunResult {
        name: name.to_string(),
        pulls: m,
        times,
        wall,
        registry: registry.counters.snap().minus(r0),
        storage: storage.counters.snap().minus(s0),
        delivered: tally.delivered.load(Ordering::SeqCst),
        retries: tally.retries.load(Ordering::SeqCst),
        client_cuts: tally.client_cuts.load(Ordering::SeqCst),
        verified: tally.verified.load(Ordering::SeqCst),
        expected: (m * opts.layers) as u64,
        failures: tally.failures.into_inner().unwrap(),
        chacha_cpu,
        bench_cpu,
    }
}

fn header_line() -> String {
    format!(
        "{:<12} {:>5} {:>7} {:>7} {:>8} {:>10} {:>10} {:>13} {:>9} {:>8} {:>8} {:>5}  {}",
        "run",
        "pulls",
        "p50 s",
        "p99 s",
        "MiB/s",
        "origin MiB",
        "client MiB",
        "200/206/304",
        "retries",
        "chacha s",
        "bench s",
        "cores",
        "digests"
    )
}

fn row(r: &RunResult) -> String {
    let mib = |b: u64| b as f64 / MIB as f64;
    let origin = r.registry.body_bytes + r.storage.body_bytes;
    let digests = if r.failures.is_empty() && r.verified == r.expected {
        format!("OK {}/{}", r.verified, r.expected)
    } else {
        format!(
            "FAILED {}/{} ({} failures)",
            r.verified,
            r.expected,
            r.failures.len()
        )
    };
    format!(
        "{:<12} {:>5} {:>7.2} {:>7.2} {:>8.0} {:>10.0} {:>10.0} {:>13} {:>9} {:>8} {:>8.1} {:>5.1}  {}",
        r.name,
        r.pulls,
        percentile(&r.times, 0.50),
        percentile(&r.times, 0.99),
        mib(r.delivered) / r.wall,
        mib(origin),
        mib(r.delivered),
        format!("{}/{}/{}", r.storage.s200, r.storage.s206, r.storage.s304),
        format!("{} ({}c)", r.retries, r.client_cuts),
        r.chacha_cpu.map_or("-".to_string(), |c| format!("{c:.1}")),
        r.bench_cpu,
        (r.bench_cpu + r.chacha_cpu.unwrap_or(0.0)) / r.wall,
        digests
    )
}

fn report_failures(r: &RunResult) {
    for f in r.failures.iter().take(10) {
        println!("    {}: {f}", r.name);
    }
    if r.failures.len() > 10 {
        println!("    ... and {} more", r.failures.len() - 10);
    }
    if r.registry.s401 > 0 {
        println!(
            "    {}: registry answered {} x 401",
            r.name, r.registry.s401
        );
    }
    if r.storage.cuts > 0 {
        println!("    {}: storage cut {} bodies", r.name, r.storage.cuts);
    }
}

/// The bench's temp root, removed at the end or by the deadline watchdog.
static ROOT: Mutex<Option<PathBuf>> = Mutex::new(None);

fn main() {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("oci_pull: {e}");
            std::process::exit(2);
        }
    };
    seed_rng();
    let deadline = opts.deadline;
    thread::spawn(move || {
        thread::sleep(deadline);
        eprintln!("oci_pull: global deadline of {deadline:?} exceeded; aborting");
        if let Some(root) = ROOT.lock().unwrap().take() {
            let _ = std::fs::remove_dir_all(root);
        }
        std::process::exit(3);
    });
    let bin = std::env::var_os("CHACHA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_chacha")));

    let t = Instant::now();
    let image = Arc::new(Image::new(opts.layers, opts.layer_size));
    println!(
        "image: {} layers x {} MiB = {} MiB, digests in {:.2}s; pulls {:?}, {} layers at once, \
         client cuts/pull {}, origin cut every {} bodies; chacha {}",
        opts.layers,
        opts.layer_size / MIB,
        opts.layers as u64 * opts.layer_size / MIB,
        t.elapsed().as_secs_f64(),
        opts.pulls,
        LAYERS_AT_ONCE,
        opts.client_cuts,
        if opts.origin_cut_every == 0 {
            "-".to_string()
        } else {
            opts.origin_cut_every.to_string()
        },
        bin.display()
    );
    let storage = start_storage(image.clone(), opts.origin_cut_every);
    let registry = start_registry(image.clone(), storage.addr);
    let root = std::env::temp_dir().join(format!("chacha-oci-pull-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("create bench dir");
    *ROOT.lock().unwrap() = Some(root.clone());
    let limit = 2 * opts.layers as u64 * opts.layer_size + 64 * MIB;

    let mut results = Vec::new();
    println!("{}", header_line());
    let show = |r: RunResult, results: &mut Vec<RunResult>| {
        println!("{}", row(&r));
        report_failures(&r);
        results.push(r);
    };
    for &m in &opts.pulls {
        show(
            run("direct", m, &opts, &image, &registry, &storage, None),
            &mut results,
        );
        let chacha = ChachaProc::start(&bin, &root, registry.addr, storage.addr, limit);
        show(
            run(
                "chacha cold",
                m,
                &opts,
                &image,
                &registry,
                &storage,
                Some(&chacha),
            ),
            &mut results,
        );
        show(
            run(
                "chacha warm",
                m,
                &opts,
                &image,
                &registry,
                &storage,
                Some(&chacha),
            ),
            &mut results,
        );
        // Aborted writes to clients are our own cuts; anything else is worth reading.
        let notable = chacha.notable.lock().unwrap().clone();
        let (cuts, other): (Vec<_>, Vec<_>) = notable
            .iter()
            .partition(|l| l.contains("aborted: client write failed"));
        if !cuts.is_empty() {
            println!("    chacha: {} client-cut warnings (expected)", cuts.len());
        }
        for line in other.iter().take(10) {
            println!("    chacha: {line}");
        }
    }
    if let Some(root) = ROOT.lock().unwrap().take() {
        let _ = std::fs::remove_dir_all(root);
    }

    println!(
        "\nsummary ({} layers x {} MiB):",
        opts.layers,
        opts.layer_size / MIB
    );
    println!("{}", header_line());
    for r in &results {
        println!("{}", row(r));
    }
    for &m in &opts.pulls {
        let tput = |name: &str| {
            results
                .iter()
                .find(|r| r.pulls == m && r.name == name)
                .map(|r| r.delivered as f64 / MIB as f64 / r.wall)
                .unwrap_or(0.0)
        };
        let direct = tput("direct");
        let best = tput("chacha cold").max(tput("chacha warm"));
        println!(
            "M={m}: direct {direct:.0} MiB/s vs best through chacha {best:.0} MiB/s: {}",
            if direct > best {
                "the load generator outruns chacha"
            } else {
                "direct is NOT faster: the generator (or the shared CPUs) may be the limit"
            }
        );
    }
    let failed = results
        .iter()
        .any(|r| !r.failures.is_empty() || r.verified != r.expected);
    if failed {
        std::process::exit(1);
    }
}
