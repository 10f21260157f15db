//! Issue 11: Prometheus metrics, tested against the real binary: `GET /metrics` on the
//! proxy's address and on the `metrics.addr` admin address, the counts after a known
//! sequence of requests (1 fill + 3 hits, failed fills), `promtool check metrics` on the
//! output, a real Prometheus server scraping chacha and answering a query, and the
//! Grafana dashboard's JSON.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cached::{assert_hit, assert_stored, fetch, wait_until};
use common::origin::{static_validated, Fault, Response as OResp};
use common::{get, request, with_deadline, Chacha, Origin, TempDir};

const DEADLINE: Duration = Duration::from_secs(60);
const LAST_MODIFIED: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
/// The object of the known sequence.
const OBJ_LEN: usize = 64 * 1024;

fn obj_body() -> Vec<u8> {
    (0..OBJ_LEN).map(|i| (i % 251) as u8).collect()
}

/// An origin serving `/obj` (validated, 64 KiB), `/v2/r/blobs/sha256:<sha256("nope")>`
/// (a body that never matches its digest), and `/cut` (cut after 1000 bytes, every
/// time, `Range` ignored).
fn origin() -> Origin {
    let body = obj_body();
    Origin::start(move |req| match req.path() {
        "/obj" => static_validated(req, &body, "\"obj-1\"", LAST_MODIFIED),
        "/cut" => OResp::generated(100_000)
            .header("ETag", "\"cut-1\"")
            .header("Last-Modified", LAST_MODIFIED)
            .fault(Fault::AbortBodyAfter(1000)),
        p if p.starts_with("/v2/r/blobs/sha256:") => OResp::generated(10_000)
            .header("ETag", "\"blob-1\"")
            .header("Last-Modified", LAST_MODIFIED),
        _ => OResp::status(404),
    })
}

fn nope_blob_path() -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, b"nope");
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("/v2/r/blobs/sha256:{hex}")
}

fn config(extra: &str) -> String {
    common::config(extra)
}

/// `GET /metrics` (origin form) on `addr`: the status, Content-Type and body.
fn scrape_raw(addr: SocketAddr) -> (u16, String, String) {
    let r = request(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: chacha\r\nConnection: close\r\n\r\n",
    )
    .expect("a response to GET /metrics");
    let ct = r.header("content-type").unwrap_or("").to_string();
    (r.status(), ct, r.body_str())
}

/// The samples of an exposition: `name{labels}` as written -> value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    out
}

fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, ct, body) = scrape_raw(addr);
    assert_eq!(status, 200, "{body}");
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    parse(&body)
}

fn v(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series}"))
}

/// 1 fill and 3 hits of `/obj` through `chacha`, each checked by its Cache-Status;
/// waits until the entry is committed (the scrape's `chacha_cache_entries`) before the
/// hits, and at the end until the 4 request lines are logged: a request is counted just
/// before its line, after the client has the whole response, so a scrape taken as soon
/// as the last hit ends may miss it.
fn fill_and_three_hits(chacha: &Chacha, metrics: SocketAddr, origin: &Origin) {
    let proxy = chacha.addr();
    let r = fetch(proxy, get(&origin.authority(), "/obj"));
    assert_eq!(r.status(), 200);
    assert_stored(&r);
    assert!(
        wait_until(Duration::from_secs(10), || {
            scrape(metrics).get("chacha_cache_entries") == Some(&1.0)
        }),
        "the fill was not committed"
    );
    for _ in 0..3 {
        let r = fetch(proxy, get(&origin.authority(), "/obj"));
        assert_eq!(r.status(), 200);
        assert_hit(&r);
        assert_eq!(r.body.len(), OBJ_LEN);
    }
    let line = format!("\"GET {}\" ", origin.url("/obj"));
    assert!(
        chacha.wait_log_count(&line, 4, Duration::from_secs(10)),
        "4 request lines for /obj wanted:\n{}",
        chacha.log()
    );
}

/// The admin address from chacha's `metrics: ... served on http://ADDR/metrics` line.
fn admin_addr(chacha: &Chacha) -> SocketAddr {
    assert!(
        chacha.wait_log("served on http://", Duration::from_secs(10)),
        "no metrics line:\n{}",
        chacha.log()
    );
    let log = chacha.log();
    let rest = &log[log.find("served on http://").unwrap() + "served on http://".len()..];
    rest[..rest.find("/metrics").unwrap()].parse().unwrap()
}

#[test]
fn known_sequence_counts_on_the_proxy_port() {
    with_deadline(DEADLINE, || {
        let origin = origin();
        let chacha = Chacha::start(&config(""));
        let addr = chacha.addr();
        fill_and_three_hits(&chacha, addr, &origin);
        // chacha counts a client connection closed when it reads the client's end,
        // which can trail the client's leaving: scrape once only this scrape's own
        // connection is open.
        let mut m = scrape(addr);
        assert!(
            wait_until(Duration::from_secs(10), || {
                m = scrape(addr);
                v(&m, "chacha_client_connections") == 1.0
            }),
            "open client connections: {}",
            v(&m, "chacha_client_connections")
        );
        let len = OBJ_LEN as f64;
        assert_eq!(v(&m, "chacha_cache_outcomes_total{outcome=\"hit\"}"), 3.0);
        assert_eq!(
            v(&m, "chacha_cache_outcomes_total{outcome=\"stored\"}"),
            1.0
        );
        assert_eq!(
            v(&m, "chacha_cache_outcomes_total{outcome=\"replaced\"}"),
            0.0
        );
        assert_eq!(
            v(&m, "chacha_cache_outcomes_total{outcome=\"not_stored\"}"),
            0.0
        );
        assert_eq!(
            v(
                &m,
                "chacha_requests_total{method=\"GET\",status=\"2xx\",op=\"hit\"}"
            ),
            3.0
        );
        assert_eq!(
            v(
                &m,
                "chacha_requests_total{method=\"GET\",status=\"2xx\",op=\"fill\"}"
            ),
            1.0
        );
        // Bytes: 4 objects to clients, about 1 from the origin (plus 4 heads).
        assert_eq!(
            v(&m, "chacha_client_sent_bytes_total{op=\"hit\"}"),
            3.0 * len
        );
        assert_eq!(v(&m, "chacha_client_sent_bytes_total{op=\"fill\"}"), len);
        let fill_origin = v(&m, "chacha_origin_received_bytes_total{op=\"fill\"}");
        assert!(
            fill_origin >= len && fill_origin < len + 1024.0,
            "fill read {fill_origin} bytes from the origin"
        );
        let hit_origin = v(&m, "chacha_origin_received_bytes_total{op=\"hit\"}");
        assert!(
            hit_origin > 0.0 && hit_origin < 3.0 * 1024.0,
            "3 hits (304 heads) read {hit_origin} bytes from the origin"
        );
        assert_eq!(
            v(&m, "chacha_origin_responses_total{kind=\"not_modified\"}"),
            3.0
        );
        assert_eq!(v(&m, "chacha_origin_responses_total{kind=\"full\"}"), 1.0);
        assert_eq!(v(&m, "chacha_response_seconds_count{op=\"hit\"}"), 3.0);
        assert_eq!(
            v(&m, "chacha_response_seconds_bucket{op=\"hit\",le=\"+Inf\"}"),
            3.0
        );
        assert_eq!(
            v(
                &m,
                "chacha_transfer_speed_bytes_per_second_count{op=\"hit\"}"
            ),
            3.0
        );
        assert_eq!(v(&m, "chacha_cache_entries"), 1.0);
        assert_eq!(v(&m, "chacha_disk_limit_bytes"), 100e6);
        let used = v(&m, "chacha_disk_used_bytes");
        assert!(
            used >= len && used < len + 16.0 * 1024.0,
            "disk used {used}"
        );
        assert_eq!(v(&m, "chacha_evictions_total"), 0.0);
        assert!(m.contains_key("chacha_startup_scan_seconds"));
        assert_eq!(v(&m, "chacha_fills_in_flight"), 0.0);
        // This scrape's own connection is open.
        assert_eq!(v(&m, "chacha_client_connections"), 1.0);
        assert!(v(&m, "chacha_client_connections_total") >= 5.0);
        // Nothing private in a label: no origin address, no URL path.
        let (_, _, text) = scrape_raw(addr);
        assert!(!text.contains(&origin.authority()), "{text}");
        assert!(!text.contains("/obj"), "{text}");
    });
}

#[test]
fn failed_fills_count_by_reason() {
    with_deadline(DEADLINE, || {
        let origin = origin();
        let chacha = Chacha::start(&config(""));
        let addr = chacha.addr();
        // A blob whose body does not match its digest: the client is cut.
        let mut conn = common::Conn::connect(addr);
        conn.send(get(&origin.authority(), &nope_blob_path()))
            .unwrap();
        assert!(
            conn.read_response("GET").is_err(),
            "the mismatch was served whole"
        );
        // A body the origin cuts every time, without Range support: resuming fails.
        let mut conn = common::Conn::connect(addr);
        conn.send(get(&origin.authority(), "/cut")).unwrap();
        assert!(
            conn.read_response("GET").is_err(),
            "the cut body looked complete"
        );
        let counted = || {
            let m = scrape(addr);
            (
                v(&m, "chacha_fill_failures_total{reason=\"digest_mismatch\"}"),
                v(&m, "chacha_fill_failures_total{reason=\"origin_cut\"}"),
            )
        };
        assert!(
            wait_until(Duration::from_secs(10), || counted() == (1.0, 1.0)),
            "fill failures {:?}\n{}",
            counted(),
            chacha.log()
        );
        let m = scrape(addr);
        assert_eq!(
            v(&m, "chacha_fill_failures_total{reason=\"disk_error\"}"),
            0.0
        );
        assert_eq!(v(&m, "chacha_fill_failures_total{reason=\"timeout\"}"), 0.0);
        assert_eq!(v(&m, "chacha_cache_entries"), 0.0);
        // Neither failed fill is counted as stored (only a committed entry is).
        assert_eq!(
            v(&m, "chacha_cache_outcomes_total{outcome=\"stored\"}"),
            0.0
        );
        // The cut fill tried to resume (the origin answered 200, not 206).
        assert_eq!(
            v(&m, "chacha_origin_responses_total{kind=\"full\"}"),
            3.0,
            "blob, cut, and the refused resume of cut"
        );
    });
}

#[test]
fn admin_address_serves_metrics_and_the_proxy_port_does_not() {
    with_deadline(DEADLINE, || {
        let origin = origin();
        let chacha = Chacha::start(&config("metrics:\n  addr: 127.0.0.1:0\n"));
        let admin = admin_addr(&chacha);
        assert_ne!(admin, chacha.addr());
        fill_and_three_hits(&chacha, admin, &origin);
        let m = scrape(admin);
        assert_eq!(v(&m, "chacha_cache_outcomes_total{outcome=\"hit\"}"), 3.0);
        let (status, _, _) = scrape_raw(chacha.addr());
        assert_eq!(
            status, 404,
            "/metrics on the proxy port with metrics.addr set"
        );
        let health = request(
            chacha.addr(),
            "GET /health HTTP/1.1\r\nHost: chacha\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(health.status(), 200);
        // Only GET /metrics on the admin address.
        let other = request(
            admin,
            "GET /health HTTP/1.1\r\nHost: chacha\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(other.status(), 404);
    });
}

/// Runs `promtool check metrics` on `text`; panics if promtool is missing.
fn promtool_check(text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required (Debian package `prometheus`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn promtool_check_metrics_reports_nothing() {
    with_deadline(DEADLINE, || {
        // The checker itself flags a bad exposition (so its silence below means something).
        let (ok, said) = promtool_check("# TYPE bad_total counter\nbad_total{a=\"1\"} x\n");
        assert!(!ok || !said.trim().is_empty(), "promtool accepted garbage");
        let origin = origin();
        // Cluster mode (a one-node cluster: this node owns every key) for the peer
        // and KV families too.
        let port = free_port();
        let yaml = config(&format!(
            "cluster:\n  secret: s\n  nodes:\n    - addr: 127.0.0.1:{port}\n"
        ))
        .replace("addr: 127.0.0.1:0", &format!("addr: 127.0.0.1:{port}"));
        let chacha = Chacha::start(&yaml);
        let addr = chacha.addr();
        fill_and_three_hits(&chacha, addr, &origin);
        let (_, _, text) = scrape_raw(addr);
        let up = format!("chacha_peer_up{{peer=\"127.0.0.1:{port}\"}} 1");
        assert!(text.contains(&up), "{text}");
        let (ok, said) = promtool_check(&text);
        assert!(
            ok && said.trim().is_empty(),
            "promtool: {said}\non:\n{text}"
        );
    });
}

/// A TCP port that was free a moment ago (bound to port 0, read, closed).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server scraping `target` every second, its data in `dir`; killed on drop.
struct Prometheus {
    child: Child,
    api: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts it on a free port, retrying with another port when that one was taken
    /// meanwhile (it then exits at once).
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let yml = dir.join("prometheus.yml");
        std::fs::write(
            &yml,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: chacha\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        for attempt in 0..5 {
            let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let log = std::fs::File::create(dir.join(format!("prometheus-{attempt}.log"))).unwrap();
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", yml.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("data-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address={api}"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("prometheus is required (Debian package `prometheus`)");
            // Ready when its API answers; gone when the port was taken.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    eprintln!("prometheus exited ({status}) on {api}; retrying");
                    break;
                }
                let listening = std::net::TcpStream::connect(api).is_ok();
                if let Some(Ok(r)) = listening.then(|| {
                    request(
                        api,
                        "GET /-/ready HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
                    )
                }) {
                    if r.status() == 200 {
                        return Prometheus { child, api };
                    }
                }
                assert!(Instant::now() < deadline, "prometheus never became ready");
                std::thread::sleep(Duration::from_millis(50)); // poll interval
            }
        }
        panic!("prometheus could not start on a free port");
    }

    /// The value of an instant query's single result, if it has one.
    fn query(&self, q: &str) -> Option<f64> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let r = request(
            self.api,
            format!(
                "GET /api/v1/query?query={enc} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
            ),
        )
        .ok()?;
        let json: serde_json::Value = serde_json::from_str(&r.body_str()).ok()?;
        assert_eq!(json["status"], "success", "{json}");
        let result = json["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }
}

#[test]
fn prometheus_scrapes_chacha_and_its_query_returns_the_hits() {
    with_deadline(Duration::from_secs(120), || {
        let origin = origin();
        let chacha = Chacha::start(&config("metrics:\n  addr: 127.0.0.1:0\n"));
        let admin = admin_addr(&chacha);
        fill_and_three_hits(&chacha, admin, &origin);
        let dir = TempDir::new("prometheus");
        let prom = Prometheus::start(dir.path(), admin);
        let q = "chacha_cache_outcomes_total{outcome=\"hit\"}";
        let mut last = None;
        let got = wait_until(Duration::from_secs(60), || {
            last = prom.query(q);
            last == Some(3.0)
        });
        assert!(got, "{q} = {last:?}");
        assert_eq!(
            prom.query("chacha_cache_outcomes_total{outcome=\"stored\"}"),
            Some(1.0)
        );
        assert_eq!(prom.query("up{job=\"chacha\"}"), Some(1.0));
        drop(prom);
    });
}

#[test]
fn grafana_dashboard_is_valid_json_over_chacha_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana-dashboard.json");
    let out = Command::new("python3")
        .args(["-m", "json.tool"])
        .arg(&path)
        .stdout(Stdio::null())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let titles: Vec<String> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap_or("").to_lowercase())
        .collect();
    for want in [
        "hit ratio",
        "bytes saved",
        "throughput",
        "fill failures",
        "disk",
        "peer",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no {want} panel in {titles:?}"
        );
    }
    for metric in [
        "chacha_cache_outcomes_total",
        "chacha_origin_received_bytes_total",
        "chacha_client_sent_bytes_total",
        "chacha_fill_failures_total",
        "chacha_disk_used_bytes",
        "chacha_peer_up",
    ] {
        assert!(text.contains(metric), "dashboard does not use {metric}");
    }
}
