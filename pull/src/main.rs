//! chacha-pull: pulls OCI/Tart images the way Tart does, from many simulated runners at once,
//! directly or through a proxy, and reports what an operator needs (README: "Load testing a
//! deployment").

mod http;
mod oci;
mod stats;

use clap::Parser;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "chacha-pull",
    about = "Pull OCI/Tart images like Tart does, from many runners at once, and report"
)]
struct Args {
    /// HTTP proxy, e.g. http://chacha:8080 (default: HTTPS_PROXY, then HTTP_PROXY).
    #[arg(long)]
    proxy: Option<String>,
    /// Extra root CA (PEM), e.g. chacha's interception CA (default: SSL_CERT_FILE).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Registry user (default: ~/.docker/config.json auths, else anonymous).
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    password: Option<String>,
    /// Simulated runners pulling in parallel.
    #[arg(long, default_value_t = 1)]
    runners: usize,
    /// Pulls of the image(s) per runner, one after the other.
    #[arg(long, default_value_t = 1)]
    pulls: usize,
    /// Blobs downloaded at a time per pull (Tart's default is 4).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Hosts (host or host:port, comma-separated) reached directly, not through the proxy,
    /// e.g. the chacha nodes that direct-connect redirects point at.
    #[arg(long, value_delimiter = ',')]
    no_proxy: Vec<String>,
    /// Cut every transfer client-side after this many bytes (e.g. 64MiB) and resume it.
    #[arg(long, value_parser = parse_size)]
    cut_every: Option<u64>,
    /// Stagger runner starts evenly over this duration (e.g. 10s, 500ms).
    #[arg(long, value_parser = parse_duration)]
    ramp: Option<Duration>,
    /// Write verified blobs (and manifests) to this directory instead of discarding them.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Images: [http://]registry/repo:tag or registry/repo@sha256:…
    #[arg(required = true)]
    images: Vec<String>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().map_err(|_| format!("bad size {s}"))?;
    let mult: u64 = match s[split..].trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        u => return Err(format!("bad size unit {u}")),
    };
    Ok(n * mult)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let n: f64 = s[..split]
        .parse()
        .map_err(|_| format!("bad duration {s}"))?;
    let secs = match &s[split..] {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        u => return Err(format!("bad duration unit {u}")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

fn main() {
    let args = Args::parse();
    match run(args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("chacha-pull: {e}");
            std::process::exit(2);
        }
    }
}

fn run(args: Args) -> Result<bool, String> {
    let images = args
        .images
        .iter()
        .map(|i| oci::Image::parse(i))
        .collect::<Result<Vec<_>, _>>()?;
    let proxy = args
        .proxy
        .clone()
        .or_else(|| env(&["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]))
        .map(|p| {
            if p.contains("://") {
                p
            } else {
                format!("http://{p}")
            }
        })
        .map(|p| http::Url::parse(&p))
        .transpose()?;
    if proxy.as_ref().is_some_and(|p| p.tls) {
        return Err("--proxy: only http:// proxies are supported".into());
    }
    let ca = args
        .ca
        .clone()
        .or_else(|| env(&["SSL_CERT_FILE"]).map(PathBuf::from));
    let tls = http::tls_config(ca.as_deref())?;
    let creds = match (&args.user, &args.password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (Some(_), None) | (None, Some(_)) => return Err("--user and --password go together".into()),
        (None, None) => env(&["HOME"]).and_then(|h| {
            oci::docker_creds(&images[0].registry.authority(), std::path::Path::new(&h))
        }),
    };
    let set = Arc::new(oci::Settings {
        tls,
        proxy,
        creds,
        concurrency: args.concurrency.max(1),
        cut_every: args.cut_every.unwrap_or(0),
        no_proxy: Arc::new(args.no_proxy.clone()),
        out: args.out.clone(),
    });
    let stats = Arc::new(stats::Stats::default());
    let images = Arc::new(images);
    let start = Instant::now();
    let runners = args.runners.max(1);

    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = std::io::stdout().is_terminal().then(|| {
        let (stats, finished) = (stats.clone(), finished.clone());
        std::thread::spawn(move || {
            while !finished.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let secs = start.elapsed().as_secs_f64();
                let mib = stats.bytes.load(Relaxed) as f64 / 1048576.0;
                print!(
                    "\r{mib:10.1} MiB  {:8.1} MiB/s  pulls done {} running {} failed {}  retries {}   ",
                    mib / secs.max(1e-9),
                    stats.done.load(Relaxed),
                    stats.running.load(Relaxed),
                    stats.failed.load(Relaxed),
                    stats.retries.load(Relaxed),
                );
                let _ = std::io::stdout().flush();
            }
            println!();
        })
    });

    let mut handles = Vec::new();
    for r in 0..runners {
        let (set, stats, images) = (set.clone(), stats.clone(), images.clone());
        let delay = args
            .ramp
            .map(|d| d.mul_f64(r as f64 / runners as f64))
            .unwrap_or_default();
        let pulls = args.pulls;
        handles.push(std::thread::spawn(move || {
            // The ramp is the load's shape (runners arriving), not synchronisation.
            std::thread::sleep(delay);
            for k in 0..pulls {
                for image in images.iter() {
                    stats.running.fetch_add(1, Relaxed);
                    let t = Instant::now();
                    let tag = format!("r{r}p{k}");
                    match oci::pull(image, &set, &stats, &tag) {
                        Ok(()) => stats.pull_done(t.elapsed()),
                        Err(e) => {
                            eprintln!("chacha-pull: runner {r} pull {k} of {}: {e}", image.text);
                            stats.pull_failed(format!("runner {r} pull {k} {}: {e}", image.text));
                        }
                    }
                    stats.running.fetch_sub(1, Relaxed);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    let wall = start.elapsed().as_secs_f64();
    finished.store(true, Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let summary = summary(&stats, wall, runners, args.pulls, &images);
    print!("{}", text(&summary));
    if let Some(path) = &args.json {
        let s = serde_json::to_string_pretty(&summary).unwrap();
        std::fs::write(path, s + "\n").map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    Ok(stats.failed.load(Relaxed) == 0 && stats.mismatches.load(Relaxed) == 0)
}

fn summary(
    stats: &stats::Stats,
    wall: f64,
    runners: usize,
    pulls: usize,
    images: &[oci::Image],
) -> serde_json::Value {
    let mut secs = stats.pulls.lock().unwrap().clone();
    secs.sort_by(|a, b| a.total_cmp(b));
    let bytes = stats.bytes.load(Relaxed);
    let blobs: serde_json::Map<String, serde_json::Value> = stats
        .blobs
        .lock()
        .unwrap()
        .iter()
        .map(|(d, (size, n))| (d.clone(), serde_json::json!({"size": size, "verified": n})))
        .collect();
    let statuses: serde_json::Map<String, serde_json::Value> = stats
        .statuses
        .lock()
        .unwrap()
        .iter()
        .map(|(s, n)| (s.to_string(), (*n).into()))
        .collect();
    let cache: serde_json::Map<String, serde_json::Value> = stats
        .cache
        .lock()
        .unwrap()
        .iter()
        .map(|(s, n)| (s.clone(), (*n).into()))
        .collect();
    serde_json::json!({
        "images": images.iter().map(|i| i.text.clone()).collect::<Vec<_>>(),
        "runners": runners,
        "pulls_per_runner": pulls,
        "pulls_ok": stats.done.load(Relaxed),
        "pulls_failed": stats.failed.load(Relaxed),
        "pull_seconds": {
            "p50": stats::percentile(&secs, 50.0),
            "p95": stats::percentile(&secs, 95.0),
            "p99": stats::percentile(&secs, 99.0),
            "max": secs.last().copied().unwrap_or(0.0),
        },
        "wall_seconds": wall,
        "bytes": bytes,
        "mib_per_s": bytes as f64 / 1048576.0 / wall.max(1e-9),
        "blobs": blobs,
        "retries": stats.retries.load(Relaxed),
        "client_cuts": stats.cuts.load(Relaxed),
        "redirects": stats.redirects.load(Relaxed),
        "tokens": stats.tokens.load(Relaxed),
        "digest_mismatches": stats.mismatches.load(Relaxed),
        "http_statuses": statuses,
        "cache_status": cache,
        "failures": stats.failures.lock().unwrap().clone(),
    })
}

fn text(s: &serde_json::Value) -> String {
    let mut o = String::new();
    let p = &s["pull_seconds"];
    let map = |v: &serde_json::Value| {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    o.push_str(&format!(
        "pulls: {} ok, {} failed ({} runners x {} pulls of {})\n",
        s["pulls_ok"],
        s["pulls_failed"],
        s["runners"],
        s["pulls_per_runner"],
        s["images"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    ));
    o.push_str(&format!(
        "pull seconds: p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}\n",
        p["p50"].as_f64().unwrap_or(0.0),
        p["p95"].as_f64().unwrap_or(0.0),
        p["p99"].as_f64().unwrap_or(0.0),
        p["max"].as_f64().unwrap_or(0.0)
    ));
    o.push_str(&format!(
        "throughput: {} bytes in {:.3} s = {:.1} MiB/s aggregate\n",
        s["bytes"],
        s["wall_seconds"].as_f64().unwrap_or(0.0),
        s["mib_per_s"].as_f64().unwrap_or(0.0)
    ));
    if let Some(b) = s["blobs"].as_object() {
        for (d, v) in b {
            o.push_str(&format!(
                "blob {d}: {} bytes, verified {} times\n",
                v["size"], v["verified"]
            ));
        }
    }
    o.push_str(&format!(
        "retries: {}  client cuts: {}  redirects: {}  tokens: {}  digest mismatches: {}\n",
        s["retries"], s["client_cuts"], s["redirects"], s["tokens"], s["digest_mismatches"]
    ));
    o.push_str(&format!("http statuses: {}\n", map(&s["http_statuses"])));
    o.push_str(&format!("cache-status: {}\n", map(&s["cache_status"])));
    if let Some(f) = s["failures"].as_array() {
        for e in f {
            o.push_str(&format!("FAILED: {}\n", e.as_str().unwrap_or("")));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_size("3 furlongs").is_err());
    }
}
