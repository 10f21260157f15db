//! The OCI distribution protocol as Tart pulls an image: `/v2/` → Bearer challenge → token →
//! manifest → blobs, `--concurrency` at a time, each verified against its SHA-256 digest while
//! streaming, a cut download resumed with `Range: bytes=N-` (RFC 9110 §14.2) that must come
//! back as a 206 whose `Content-Range` starts at N (RFC 9110 §14.4), up to 5 retries.

use crate::http::{base64, unbase64, Client, Response, Url};
use crate::stats::Stats;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Retries of one blob after a failed attempt (Tart's limit).
pub const MAX_RETRIES: u32 = 5;
/// Redirect hops followed per request.
const MAX_REDIRECTS: u32 = 10;
/// Manifest types asked for: an OCI image manifest is what Tart pushes (and the Docker v2
/// schema for registries that convert).
pub const MANIFEST_ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// Tart's own layer and config media types, asked for on blob GETs when the manifest does
/// not name one.
pub const TART_BLOB_ACCEPT: &str = "application/vnd.cirruslabs.tart.disk.v2, application/vnd.cirruslabs.tart.disk.v1, application/vnd.cirruslabs.tart.nvram.v1, application/vnd.cirruslabs.tart.config.v1, application/octet-stream";

/// `[http://|https://]registry/repo[:tag|@sha256:…]`.
#[derive(Debug, Clone)]
pub struct Image {
    pub registry: Url,
    pub repo: String,
    /// Tag or digest.
    pub reference: String,
    pub text: String,
}

impl Image {
    pub fn parse(s: &str) -> Result<Image, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            (true, s.strip_prefix("https://").unwrap_or(s))
        };
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{s}: expected registry/repo[:tag|@digest]"))?;
        let (repo, reference) = if let Some((r, d)) = path.split_once('@') {
            (r.to_string(), d.to_string())
        } else {
            let slash = path.rfind('/').map_or(0, |i| i + 1);
            match path[slash..].rfind(':') {
                Some(i) => (
                    path[..slash + i].to_string(),
                    path[slash + i + 1..].to_string(),
                ),
                None => (path.to_string(), "latest".to_string()),
            }
        };
        if repo.is_empty() || reference.is_empty() {
            return Err(format!("{s}: expected registry/repo[:tag|@digest]"));
        }
        let registry = Url::parse(&format!(
            "{}://{host}/v2/",
            if tls { "https" } else { "http" }
        ))?;
        Ok(Image {
            registry,
            repo,
            reference,
            text: s.to_string(),
        })
    }
}

/// What a pull needs besides the image.
pub struct Settings {
    pub tls: Arc<rustls::ClientConfig>,
    pub proxy: Option<Url>,
    /// Basic credentials (user, password) for the token endpoint.
    pub creds: Option<(String, String)>,
    pub concurrency: usize,
    /// Client-side cut of every transfer after this many body bytes (0 = never).
    pub cut_every: u64,
    /// Hosts reached without the proxy (`--no-proxy`).
    pub no_proxy: Arc<Vec<String>>,
    pub out: Option<PathBuf>,
}

/// The registry's Bearer challenge (RFC 6750 §3) and the token it led to.
struct Auth {
    challenge: Option<Vec<(String, String)>>,
    basic: Option<String>,
    header: Option<String>,
}

/// A blob from the manifest.
#[derive(Debug, Clone)]
struct Blob {
    digest: String,
    size: u64,
    media_type: String,
}

/// Pulls `image` once; returns the body bytes it received.
pub fn pull(image: &Image, set: &Settings, stats: &Stats, tag: &str) -> Result<(), String> {
    let mut client = Client::new(set.tls.clone(), set.proxy.clone(), set.no_proxy.clone());
    let basic = set
        .creds
        .as_ref()
        .map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
    // GET /v2/: 200 (no auth) or 401 with the challenge.
    let mut resp = get(&mut client, &image.registry, &[], stats)?;
    let challenge = if resp.status == 401 {
        let v = resp.header("www-authenticate").unwrap_or("").to_string();
        parse_bearer(&v)
    } else {
        None
    };
    let status = resp.status;
    let _ = resp.drain();
    client.recycle(resp);
    if status != 200 && status != 401 {
        return Err(format!("GET {}: {status}", image.registry.to_string_full()));
    }
    let auth = Mutex::new(Auth {
        challenge,
        basic: basic.clone(),
        header: if status == 401 { None } else { basic },
    });
    refresh_token(&mut client, image, &auth, stats)?;

    // The manifest.
    let murl = image
        .registry
        .join(&format!("/v2/{}/manifests/{}", image.repo, image.reference))?;
    let mut resp = registry_get(
        &mut client,
        image,
        &murl,
        &auth,
        &[("Accept", MANIFEST_ACCEPT.to_string())],
        stats,
    )?;
    let body = resp.drain().map_err(|e| format!("manifest: {e}"))?;
    let status = resp.status;
    client.recycle(resp);
    if status != 200 {
        return Err(format!("GET {}: {status}", murl.to_string_full()));
    }
    let blobs = parse_manifest(&body)?;
    if let Some(dir) = &set.out {
        let name =
            format!("{}_{}.manifest.json", image.repo, image.reference).replace(['/', ':'], "_");
        std::fs::create_dir_all(dir).map_err(|e| format!("--out {}: {e}", dir.display()))?;
        std::fs::write(dir.join(name), &body).map_err(|e| format!("--out: {e}"))?;
    }

    // Blobs, `concurrency` at a time (Tart's default is 4).
    let queue = Mutex::new(blobs.into_iter().rev().collect::<Vec<_>>());
    let failure: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..set.concurrency.max(1) {
            s.spawn(|| {
                let mut client =
                    Client::new(set.tls.clone(), set.proxy.clone(), set.no_proxy.clone());
                loop {
                    if failure.lock().unwrap().is_some() {
                        return;
                    }
                    let Some(blob) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    if let Err(e) = download(&mut client, image, &auth, &blob, set, stats, tag) {
                        let mut f = failure.lock().unwrap();
                        if f.is_none() {
                            *f = Some(format!("{}: {e}", blob.digest));
                        }
                        return;
                    }
                }
            });
        }
    });
    match failure.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `Bearer realm="…",service="…",scope="…"` → its parameters; `None` for other schemes.
fn parse_bearer(v: &str) -> Option<Vec<(String, String)>> {
    let rest = v.trim();
    if rest.len() < 7 || !rest[..7].eq_ignore_ascii_case("bearer ") {
        return None;
    }
    let mut out = Vec::new();
    let mut s = &rest[7..];
    loop {
        s = s.trim_start_matches([' ', ',']);
        let Some(eq) = s.find('=') else { break };
        let name = s[..eq].trim().to_ascii_lowercase();
        s = &s[eq + 1..];
        let value;
        if let Some(q) = s.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            value = q[..end].to_string();
            s = q.get(end + 1..).unwrap_or("");
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_string();
            s = &s[end..];
        }
        out.push((name, value));
    }
    Some(out)
}

/// Percent-encodes a query value (RFC 3986 §2.1).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Gets a (new) token from the challenge's realm: anonymous, or with Basic credentials.
fn refresh_token(
    client: &mut Client,
    image: &Image,
    auth: &Mutex<Auth>,
    stats: &Stats,
) -> Result<(), String> {
    let (challenge, basic) = {
        let a = auth.lock().unwrap();
        (a.challenge.clone(), a.basic.clone())
    };
    let Some(ch) = challenge else { return Ok(()) };
    let param = |n: &str| ch.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let realm = param("realm").ok_or("Bearer challenge without realm")?;
    let mut url = realm.clone();
    let mut sep = if realm.contains('?') { '&' } else { '?' };
    if let Some(service) = param("service") {
        url.push_str(&format!("{sep}service={}", enc(&service)));
        sep = '&';
    }
    let scope = param("scope").unwrap_or_else(|| format!("repository:{}:pull", image.repo));
    url.push_str(&format!("{sep}scope={}", enc(&scope)));
    let url = image.registry.join(&url)?;
    let headers: Vec<(&str, String)> = basic.into_iter().map(|b| ("Authorization", b)).collect();
    // The credentials are for the realm's host (e.g. auth.docker.io for Docker Hub), and
    // follow it no further.
    let mut resp = follow(client, &url, &headers, &url, stats)?;
    let body = resp.drain().map_err(|e| format!("token: {e}"))?;
    let status = resp.status;
    client.recycle(resp);
    if status != 200 {
        return Err(format!("token endpoint {}: {status}", url.to_string_full()));
    }
    #[derive(serde::Deserialize)]
    struct Token {
        token: Option<String>,
        access_token: Option<String>,
    }
    let t: Token =
        serde_json::from_slice(&body).map_err(|e| format!("token endpoint answer: {e}"))?;
    let token = t
        .token
        .or(t.access_token)
        .ok_or("token endpoint answer without token")?;
    auth.lock().unwrap().header = Some(format!("Bearer {token}"));
    stats.add_token();
    Ok(())
}

fn get(
    client: &mut Client,
    url: &Url,
    headers: &[(&str, String)],
    stats: &Stats,
) -> Result<Response, String> {
    let resp = client
        .get(url, headers)
        .map_err(|e| format!("GET {}: {e}", url.to_string_full()))?;
    stats.status(resp.status);
    Ok(resp)
}

/// GET following redirects; `Authorization` is sent only to `origin` (the registry) and
/// dropped on a cross-host hop, as URLSession and skopeo do.
fn follow(
    client: &mut Client,
    url: &Url,
    headers: &[(&str, String)],
    origin: &Url,
    stats: &Stats,
) -> Result<Response, String> {
    let mut url = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        let hs: Vec<(&str, String)> = headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("authorization") || url.same_origin(origin))
            .cloned()
            .collect();
        let mut resp = get(client, &url, &hs, stats)?;
        if matches!(resp.status, 301 | 302 | 303 | 307 | 308) {
            let loc = resp
                .header("location")
                .ok_or_else(|| format!("{} without Location", resp.status))?
                .to_string();
            let _ = resp.drain();
            client.recycle(resp);
            stats.add_redirect();
            url = url.join(&loc)?;
            continue;
        }
        return Ok(resp);
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

/// A registry GET with the token; a 401 gets a fresh token and one more try.
fn registry_get(
    client: &mut Client,
    image: &Image,
    url: &Url,
    auth: &Mutex<Auth>,
    extra: &[(&str, String)],
    stats: &Stats,
) -> Result<Response, String> {
    for attempt in 0..2 {
        let mut headers: Vec<(&str, String)> = extra.to_vec();
        if let Some(h) = auth.lock().unwrap().header.clone() {
            headers.push(("Authorization", h));
        }
        let mut resp = follow(client, url, &headers, &image.registry, stats)?;
        if resp.status == 401 && attempt == 0 && auth.lock().unwrap().challenge.is_some() {
            let _ = resp.drain();
            client.recycle(resp);
            refresh_token(client, image, auth, stats)?;
            continue;
        }
        return Ok(resp);
    }
    unreachable!()
}

#[derive(serde::Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
}

#[derive(serde::Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<serde_json::Value>,
}

fn parse_manifest(body: &[u8]) -> Result<Vec<Blob>, String> {
    let m: Manifest = serde_json::from_slice(body).map_err(|e| format!("manifest: {e}"))?;
    if !m.manifests.is_empty() || m.media_type.contains("index") {
        return Err("the reference names an image index; Tart images are single manifests: pull one by @sha256:".into());
    }
    let mut blobs = Vec::new();
    for d in m.config.into_iter().chain(m.layers) {
        if !d.digest.starts_with("sha256:") || d.digest.len() != 71 {
            return Err(format!("unsupported digest {}", d.digest));
        }
        blobs.push(Blob {
            digest: d.digest,
            size: d.size,
            media_type: d.media_type,
        });
    }
    Ok(blobs)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// One failed attempt: whether it may be retried.
enum AttemptError {
    Retry(String),
    Fatal(String),
}

/// Downloads one blob, resuming cut transfers with `Range: bytes=N-`.
fn download(
    client: &mut Client,
    image: &Image,
    auth: &Mutex<Auth>,
    blob: &Blob,
    set: &Settings,
    stats: &Stats,
    tag: &str,
) -> Result<(), String> {
    let url = image
        .registry
        .join(&format!("/v2/{}/blobs/{}", image.repo, blob.digest))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut file = match &set.out {
        Some(dir) => {
            let d = dir.join("blobs").join("sha256");
            std::fs::create_dir_all(&d).map_err(|e| format!("--out: {e}"))?;
            let part = d.join(format!("{}.{tag}.part", &blob.digest[7..]));
            Some((
                File::create(&part).map_err(|e| format!("--out {}: {e}", part.display()))?,
                part,
                d.join(&blob.digest[7..]),
            ))
        }
        None => None,
    };
    let mut offset = 0u64;
    let mut failures = 0u32;
    let accept = if blob.media_type.is_empty() {
        TART_BLOB_ACCEPT.to_string()
    } else {
        blob.media_type.clone()
    };
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let r = attempt(
            client,
            image,
            auth,
            &url,
            &accept,
            blob,
            set,
            stats,
            &mut offset,
            &mut ctx,
            file.as_mut().map(|f| &mut f.0),
            &mut buf,
        );
        match r {
            Ok(true) => break,
            Ok(false) => stats.add_cut(),
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(AttemptError::Retry(e)) => {
                failures += 1;
                if failures > MAX_RETRIES {
                    return Err(format!("gave up after {MAX_RETRIES} retries: {e}"));
                }
                stats.add_retry();
            }
        }
    }
    let got = format!("sha256:{}", hex(ctx.finish().as_ref()));
    if got != blob.digest {
        stats.add_mismatch();
        return Err(format!("digest mismatch: got {got}"));
    }
    if let Some((f, part, dst)) = file {
        drop(f);
        std::fs::rename(&part, &dst).map_err(|e| format!("--out: {e}"))?;
    }
    stats.blob_done(&blob.digest, blob.size);
    Ok(())
}

/// One GET of the blob from `offset`; `Ok(true)` when the blob is complete, `Ok(false)`
/// after a client-side cut (`--cut-every`).
#[allow(clippy::too_many_arguments)]
fn attempt(
    client: &mut Client,
    image: &Image,
    auth: &Mutex<Auth>,
    url: &Url,
    accept: &str,
    blob: &Blob,
    set: &Settings,
    stats: &Stats,
    offset: &mut u64,
    ctx: &mut ring::digest::Context,
    mut file: Option<&mut File>,
    buf: &mut [u8],
) -> Result<bool, AttemptError> {
    let mut extra = vec![("Accept", accept.to_string())];
    if *offset > 0 {
        extra.push(("Range", format!("bytes={offset}-")));
    }
    let mut resp =
        registry_get(client, image, url, auth, &extra, stats).map_err(AttemptError::Retry)?;
    if let Some(cs) = resp.header("cache-status") {
        stats.cache_status(cs);
    }
    match (resp.status, *offset) {
        (200, 0) => {}
        (206, n) if n > 0 => {
            // RFC 9110 §14.4: the range must start where the cut left off.
            let cr = resp.header("content-range").unwrap_or("").to_string();
            let ok = cr
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<u64>().ok())
                == Some(n);
            if !ok {
                return Err(AttemptError::Fatal(format!(
                    "resume at {n}: 206 with Content-Range {cr:?}"
                )));
            }
        }
        (200 | 206, n) => {
            return Err(AttemptError::Fatal(format!(
                "resume at {n}: answered {} instead of 206 from {n}",
                resp.status
            )))
        }
        (s @ (404 | 401 | 403), _) => {
            return Err(AttemptError::Fatal(format!("GET blob: {s}")));
        }
        (s, _) => {
            let _ = resp.drain();
            client.recycle(resp);
            return Err(AttemptError::Retry(format!("GET blob: {s}")));
        }
    }
    let mut this = 0u64;
    loop {
        let mut want = buf.len();
        if set.cut_every > 0 {
            want = want.min((set.cut_every - this) as usize);
        }
        let n = match resp.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) => return Err(AttemptError::Retry(format!("at byte {offset}: {e}"))),
        };
        if n == 0 {
            break;
        }
        if *offset + n as u64 > blob.size {
            return Err(AttemptError::Fatal(format!(
                "more than the manifest's {} bytes",
                blob.size
            )));
        }
        ctx.update(&buf[..n]);
        if let Some(f) = file.as_deref_mut() {
            f.write_all(&buf[..n])
                .map_err(|e| AttemptError::Fatal(format!("--out: {e}")))?;
        }
        *offset += n as u64;
        this += n as u64;
        stats.add_bytes(n as u64);
        if set.cut_every > 0 && this >= set.cut_every && *offset < blob.size {
            // Injected cut: drop the connection mid-body (not recycled).
            return Ok(false);
        }
    }
    client.recycle(resp);
    if *offset != blob.size {
        return Err(AttemptError::Retry(format!(
            "body ended at {offset} of {}",
            blob.size
        )));
    }
    Ok(true)
}

/// Basic credentials for `registry` from ~/.docker/config.json (`auths`).
pub fn docker_creds(registry: &str, home: &Path) -> Option<(String, String)> {
    let text = std::fs::read(home.join(".docker").join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let entry = auths.iter().find_map(|(k, v)| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let k = k.split('/').next().unwrap_or(k);
        (k == registry).then_some(v)
    })?;
    if let Some(a) = entry.get("auth").and_then(|a| a.as_str()) {
        let dec = String::from_utf8(unbase64(a)?).ok()?;
        let (u, p) = dec.split_once(':')?;
        return Some((u.to_string(), p.to_string()));
    }
    let u = entry.get("username")?.as_str()?;
    let p = entry.get("password")?.as_str()?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images() {
        let i = Image::parse("ghcr.io/cirruslabs/macos-sequoia-base:latest").unwrap();
        assert_eq!(i.registry.to_string_full(), "https://ghcr.io/v2/");
        assert_eq!(
            (i.repo.as_str(), i.reference.as_str()),
            ("cirruslabs/macos-sequoia-base", "latest")
        );
        let i = Image::parse("http://127.0.0.1:5000/a/b@sha256:00").unwrap();
        assert_eq!(i.registry.to_string_full(), "http://127.0.0.1:5000/v2/");
        assert_eq!(
            (i.repo.as_str(), i.reference.as_str()),
            ("a/b", "sha256:00")
        );
        let i = Image::parse("127.0.0.1:5000/a").unwrap();
        assert_eq!(i.reference, "latest");
        assert!(Image::parse("nothing").is_err());
    }

    #[test]
    fn bearer() {
        let c = parse_bearer(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(c[0], ("realm".into(), "https://ghcr.io/token".into()));
        assert_eq!(c[2], ("scope".into(), "repository:a/b:pull".into()));
        assert!(parse_bearer("Basic realm=x").is_none());
    }
}
