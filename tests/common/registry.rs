//! An in-test OCI registry that behaves like ghcr.io, and a runner for the `chacha-pull`
//! binary:
//! - the registry answers `GET /v2/` with `401` + `WWW-Authenticate: Bearer realm=…,
//!   service=…` (no scope, like ghcr.io's), issues tokens at `/token`, serves a Tart-style
//!   manifest and answers blob GETs with a `307` to a storage origin whose presigned
//!   parameters change on every redirect;
//! - the storage origin validates (ETag), answers `Range: bytes=N-` with a 206 and can cut
//!   its first response of every blob, or misbehave (ignore ranges).

use super::gen;
use super::origin::{Fault, Origin, Request, Response};
use super::tls::TlsFront;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub const REPO: &str = "cirruslabs/test-image";
/// Presigned parameters, left out of chacha's cache key by `examples/oci-test.yaml`.
pub const PRESIGNED: &str = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=300";

/// How the registry and its storage behave.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Storage cuts the first full response of every blob after this many bytes.
    pub cut_first_at: Option<u64>,
    /// With `cut_first_at`: cut every response (ranged ones too) after that many bytes.
    pub cut_always: bool,
    /// Storage answers ranged requests with the whole blob (200), as a broken server does.
    pub ignore_range: bool,
    /// The manifest names a wrong digest for the first layer.
    pub bad_digest: bool,
    /// The first token expires after its first blob request (the next one gets a 401).
    pub expire_first_token: bool,
    /// Basic credentials the token endpoint requires (anonymous when `None`).
    pub basic: Option<(String, String)>,
    /// Serve the registry and the storage over HTTPS (TLS fronts with this config, for the
    /// name 127.0.0.1); URLs then say `https://`.
    pub https: Option<Arc<rustls::ServerConfig>>,
    /// Storage stalls this long before answering each blob request (a slow origin), so
    /// that [`Registry::storage_peak`] shows how many requests a client keeps in flight.
    pub storage_stall: Option<std::time::Duration>,
    /// The token realm is another (plain HTTP) host, as Docker Hub's auth.docker.io is.
    pub realm_elsewhere: bool,
}

pub struct Blob {
    pub digest: String,
    pub data: Arc<Vec<u8>>,
    pub media_type: &'static str,
}

pub struct Registry {
    pub registry: Origin,
    pub storage: Origin,
    /// The TLS fronts when [`Behaviour::https`] is set.
    pub fronts: Vec<TlsFront>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// host:port clients use for the registry and the storage (the TLS fronts with https).
    pub registry_authority: String,
    pub storage_authority: String,
    pub blobs: Arc<Vec<Blob>>,
    /// Tokens issued.
    pub tokens: Arc<AtomicU64>,
    /// Blob GETs that reached the registry with a valid token.
    pub authorized_blob_gets: Arc<AtomicU64>,
    /// Storage requests that carried an Authorization header (must stay 0).
    pub storage_auth_leaks: Arc<AtomicU64>,
    /// Most storage requests stalled at once (with [`Behaviour::storage_stall`]).
    pub storage_peak: Arc<AtomicU64>,
    /// The token host when [`Behaviour::realm_elsewhere`] is set.
    pub auth: Option<Origin>,
}

pub fn sha256(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

impl Registry {
    /// A Tart-like image: a config blob and three layers of `layer_lens` bytes.
    pub fn start(layer_lens: &[usize], how: Behaviour) -> Registry {
        let mut blobs = vec![Blob {
            data: Arc::new(br#"{"version":1,"os":"darwin","arch":"arm64"}"#.to_vec()),
            digest: String::new(),
            media_type: "application/vnd.cirruslabs.tart.config.v1",
        }];
        for (i, len) in layer_lens.iter().enumerate() {
            let mut data = gen::body(*len);
            data[0] = i as u8; // distinct contents even for equal lengths
            blobs.push(Blob {
                data: Arc::new(data),
                digest: String::new(),
                media_type: "application/vnd.cirruslabs.tart.disk.v2",
            });
        }
        for b in blobs.iter_mut() {
            b.digest = sha256(&b.data);
        }
        let blobs = Arc::new(blobs);

        let storage_auth_leaks = Arc::new(AtomicU64::new(0));
        let storage_peak = Arc::new(AtomicU64::new(0));
        let storage = {
            let blobs = blobs.clone();
            let leaks = storage_auth_leaks.clone();
            let peak = storage_peak.clone();
            let stalled = AtomicU64::new(0);
            let cut_done = Arc::new(Mutex::new(HashSet::<String>::new()));
            let how = how.clone();
            Origin::start(move |req| {
                if req.header("authorization").is_some() {
                    leaks.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(stall) = how.storage_stall {
                    let now = stalled.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(stall);
                    stalled.fetch_sub(1, Ordering::SeqCst);
                }
                storage_answer(req, &blobs, &how, &cut_done)
            })
        };

        let scheme = if how.https.is_some() { "https" } else { "http" };
        let mut fronts = Vec::new();
        let storage_authority = match &how.https {
            Some(cfg) => {
                let f = TlsFront::start(storage.addr(), cfg.clone());
                let a = format!("127.0.0.1:{}", f.port());
                fronts.push(f);
                a
            }
            None => storage.authority(),
        };
        let tokens = Arc::new(AtomicU64::new(0));
        // The realm's scheme://host:port, set once the serving origin is up.
        let self_addr: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
        let realm_elsewhere = how.realm_elsewhere;
        let authorized = Arc::new(AtomicU64::new(0));
        let registry = {
            let blobs = blobs.clone();
            let tokens = tokens.clone();
            let authorized = authorized.clone();
            let storage = storage_authority.clone();
            let valid = Arc::new(Mutex::new(HashSet::<String>::new()));
            let redirects = AtomicU64::new(0);
            let addr_for_handler = self_addr.clone();
            let handler = Arc::new(move |req: &Request| {
                let me = addr_for_handler.get().cloned().unwrap_or_default();
                let challenge = format!("Bearer realm=\"{me}/token\",service=\"test-registry\"");
                let path = req.path().to_string();
                if path == "/token" {
                    if let Some((u, p)) = &how.basic {
                        let want = format!("Basic {}", base64(format!("{u}:{p}").as_bytes()));
                        if req.header("authorization") != Some(want.as_str()) {
                            return Response::status(401);
                        }
                    }
                    let scope = format!("scope=repository%3A{}%3Apull", REPO.replace('/', "%2F"));
                    if !req.target.contains(&scope) || !req.target.contains("service=test-registry")
                    {
                        return Response::status(400);
                    }
                    let n = tokens.fetch_add(1, Ordering::Relaxed);
                    let token = format!("tok-{n}");
                    valid.lock().unwrap().insert(token.clone());
                    return Response::ok(format!("{{\"token\":\"{token}\"}}"))
                        .header("Content-Type", "application/json");
                }
                let token = req
                    .header("authorization")
                    .and_then(|a| a.strip_prefix("Bearer "))
                    .map(str::to_string);
                let ok = token
                    .as_ref()
                    .is_some_and(|t| valid.lock().unwrap().contains(t));
                if !ok {
                    return Response::status(401).header("WWW-Authenticate", &challenge);
                }
                if path == "/v2/" {
                    return Response::ok("{}");
                }
                if path == format!("/v2/{REPO}/manifests/latest") {
                    return Response::ok(manifest(&blobs, how.bad_digest))
                        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json");
                }
                let prefix = format!("/v2/{REPO}/blobs/");
                if let Some(digest) = path.strip_prefix(&prefix) {
                    // With `bad_digest` the manifest's wrong digest names layer 0's bytes.
                    let wrong = how.bad_digest && digest == sha256(b"not this blob");
                    let found = blobs.iter().position(|b| b.digest == digest);
                    let Some(i) = found.or(wrong.then_some(1)) else {
                        return Response::status(404);
                    };
                    if how.expire_first_token
                        && token.as_deref() == Some("tok-0")
                        && authorized.load(Ordering::Relaxed) > 0
                    {
                        // The first token expires after its first blob request.
                        valid.lock().unwrap().remove("tok-0");
                        return Response::status(401).header("WWW-Authenticate", &challenge);
                    }
                    authorized.fetch_add(1, Ordering::Relaxed);
                    let n = redirects.fetch_add(1, Ordering::Relaxed);
                    // New signature and date on every redirect, as presigned URLs have.
                    let location = format!(
                        "{scheme}://{storage}/blob/{i}?{PRESIGNED}&X-Amz-Date=2024{n:06}&X-Amz-Signature={:016x}",
                        n.wrapping_mul(0x9e3779b97f4a7c15)
                    );
                    return Response::status(307)
                        .header("Location", &location)
                        .header("Cache-Control", "no-store");
                }
                Response::status(404)
            });
            let h = handler.clone();
            let auth = realm_elsewhere.then(|| Origin::start(move |req| h(req)));
            (Origin::start(move |req| handler(req)), auth)
        };
        let (registry, auth) = registry;
        let registry_authority = match &how.https {
            Some(cfg) => {
                let f = TlsFront::start(registry.addr(), cfg.clone());
                let a = format!("127.0.0.1:{}", f.port());
                fronts.push(f);
                a
            }
            None => registry.authority(),
        };
        let realm = match &auth {
            Some(a) => format!("http://{}", a.authority()),
            None => format!("{scheme}://{registry_authority}"),
        };
        self_addr.set(realm).unwrap();
        Registry {
            registry,
            storage,
            fronts,
            scheme,
            registry_authority,
            storage_authority,
            blobs,
            tokens,
            authorized_blob_gets: authorized,
            storage_auth_leaks,
            storage_peak,
            auth,
        }
    }

    /// The image reference for `chacha-pull`.
    pub fn image(&self) -> String {
        let prefix = if self.scheme == "http" { "http://" } else { "" };
        format!("{prefix}{}/{REPO}:latest", self.registry_authority)
    }

    pub fn total_len(&self) -> u64 {
        self.blobs.iter().map(|b| b.data.len() as u64).sum()
    }
}

fn manifest(blobs: &[Blob], bad_digest: bool) -> String {
    let desc = |b: &Blob, bad: bool| {
        let digest = if bad {
            sha256(b"not this blob")
        } else {
            b.digest.clone()
        };
        format!(
            "{{\"mediaType\":\"{}\",\"digest\":\"{digest}\",\"size\":{}}}",
            b.media_type,
            b.data.len()
        )
    };
    let layers: Vec<String> = blobs[1..]
        .iter()
        .enumerate()
        .map(|(i, b)| desc(b, bad_digest && i == 0))
        .collect();
    format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{},\"layers\":[{}]}}",
        desc(&blobs[0], false),
        layers.join(",")
    )
}

fn storage_answer(
    req: &Request,
    blobs: &[Blob],
    how: &Behaviour,
    cut_done: &Mutex<HashSet<String>>,
) -> Response {
    let Some(i) = req
        .path()
        .strip_prefix("/blob/")
        .and_then(|i| i.parse::<usize>().ok())
        .filter(|i| *i < blobs.len())
    else {
        return Response::status(404);
    };
    if !req.target.contains("X-Amz-Signature=") {
        return Response::status(403);
    }
    let blob = &blobs[i];
    let etag = format!("\"{}\"", blob.digest);
    if req.header("if-none-match") == Some(etag.as_str()) {
        return Response::status(304).header("ETag", &etag);
    }
    let len = blob.data.len() as u64;
    let range = req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<u64>().ok());
    let if_range_ok = req.header("if-range").is_none_or(|v| v == etag);
    let resp = match range {
        Some(start) if !how.ignore_range && if_range_ok && start < len => {
            let r = Response::new(
                206,
                super::origin::Body::Full(blob.data[start as usize..].to_vec()),
            )
            .header("Content-Range", &format!("bytes {start}-{}/{len}", len - 1));
            match how.cut_first_at {
                Some(at) if how.cut_always && at < len - start => {
                    r.fault(Fault::AbortBodyAfter(at))
                }
                _ => r,
            }
        }
        _ => {
            let mut r = Response::ok(blob.data.as_ref().clone());
            if let Some(at) = how.cut_first_at {
                if at < len
                    && (how.cut_always || cut_done.lock().unwrap().insert(blob.digest.clone()))
                {
                    r = r.fault(Fault::AbortBodyAfter(at));
                }
            }
            r
        }
    };
    resp.header("ETag", &etag)
        .header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        .header("Accept-Ranges", "bytes")
        .header("Content-Type", "application/octet-stream")
}

/// What a `chacha-pull` run printed and returned.
pub struct PullRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub json: serde_json::Value,
}

/// The `chacha-pull` binary next to the `chacha` one, (re)built once per test process so a
/// stale binary is never used.
pub fn pull_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let chacha = PathBuf::from(env!("CARGO_BIN_EXE_chacha"));
        let dir = chacha.parent().unwrap().to_path_buf();
        let release = dir.ends_with("release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "chacha-pull", "--bin", "chacha-pull"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        // The variables cargo sets for this test process (CARGO_MANIFEST_DIR, …) would
        // differ from a plain build's and make build scripts (ring's) rerun every time.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_BIN_",
                "CARGO_CRATE_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
                || k == "CARGO_TARGET_TMPDIR"
            {
                cmd.env_remove(k.as_ref());
            }
        }
        let st = cmd.status().expect("running cargo build -p chacha-pull");
        assert!(st.success(), "cargo build -p chacha-pull failed");
        let bin = dir.join("chacha-pull");
        assert!(bin.exists(), "no {}", bin.display());
        bin
    })
    .clone()
}

/// Runs `chacha-pull args… --json FILE` with a clean proxy environment and an empty HOME.
pub fn run_pull(args: &[&str]) -> PullRun {
    run_pull_home(args, |_| {})
}

/// Like [`run_pull`]; `home` prepares the HOME directory first (e.g. ~/.docker/config.json).
pub fn run_pull_home(args: &[&str], home: impl FnOnce(&std::path::Path)) -> PullRun {
    let dir = super::TempDir::new("pull");
    home(dir.path());
    let json_path = dir.path().join("summary.json");
    let out = Command::new(pull_bin())
        .args(args)
        .arg("--json")
        .arg(&json_path)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("SSL_CERT_FILE")
        .env("HOME", dir.path())
        .output()
        .expect("running chacha-pull");
    let json = std::fs::read(&json_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    PullRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
    }
}
