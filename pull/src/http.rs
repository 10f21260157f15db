//! A small blocking HTTP/1.1 client (RFC 9112) on std sockets, httparse and rustls: keep-alive
//! connections reused per host, Content-Length / chunked / close-delimited bodies streamed
//! (never buffered whole), and an HTTP proxy used the way URLSession and curl use one:
//! absolute-form requests for `http://` URLs (RFC 9112 §3.2.2) and a CONNECT tunnel for
//! `https://` URLs (RFC 9110 §9.3.6).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Socket read/write timeout: a stalled transfer is a failed attempt (then resumed).
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("not an http(s) URL: {s}"));
        };
        let (auth, target) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let auth = auth.rsplit('@').next().unwrap_or(auth);
        let (host, port) = split_host_port(auth, if tls { 443 } else { 80 })?;
        Ok(Url {
            tls,
            host,
            port,
            target,
        })
    }

    /// `host:port` as it goes in `Host` (port left out when it is the default).
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    pub fn to_string_full(&self) -> String {
        format!(
            "{}://{}{}",
            if self.tls { "https" } else { "http" },
            self.authority(),
            self.target
        )
    }

    /// Resolves a `Location` value against this URL (RFC 9110 §10.2.2).
    pub fn join(&self, location: &str) -> Result<Url, String> {
        if location.starts_with("http://") || location.starts_with("https://") {
            Url::parse(location)
        } else if let Some(rest) = location.strip_prefix("//") {
            Url::parse(&format!(
                "{}://{rest}",
                if self.tls { "https" } else { "http" }
            ))
        } else if location.starts_with('/') {
            Ok(Url {
                target: location.to_string(),
                ..self.clone()
            })
        } else {
            let path = self.target.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            Ok(Url {
                target: format!("{dir}{location}"),
                ..self.clone()
            })
        }
    }

    /// Same origin (scheme, host, port): whether credentials may follow a redirect.
    pub fn same_origin(&self, other: &Url) -> bool {
        self.tls == other.tls
            && self.host.eq_ignore_ascii_case(&other.host)
            && self.port == other.port
    }
}

fn split_host_port(auth: &str, default: u16) -> Result<(String, u16), String> {
    if let Some(rest) = auth.strip_prefix('[') {
        let end = rest.find(']').ok_or_else(|| format!("bad host {auth}"))?;
        let host = rest[..end].to_string();
        let port = match rest[end + 1..].strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port in {auth}"))?,
            None => default,
        };
        return Ok((host, port));
    }
    match auth.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.to_string(),
            p.parse().map_err(|_| format!("bad port in {auth}"))?,
        )),
        None if auth.is_empty() => Err("empty host".to_string()),
        None => Ok((auth.to_string(), default)),
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

type Conn = BufReader<Stream>;

/// Where a connection goes: (tls, host, port) of the origin.
type Key = (bool, String, u16);

/// One client: a TLS config, an optional proxy and a pool of idle connections. Not shared
/// between threads (each download thread has its own).
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<Url>,
    /// Hosts (`host` or `host:port`) reached directly, not through `proxy`.
    no_proxy: Arc<Vec<String>>,
    idle: HashMap<Key, Conn>,
}

/// A response whose body is read with [`Response::read`]; give it back with
/// [`Client::recycle`] to reuse the connection once the body is read to its end.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: Body,
    key: Key,
}

enum Framing {
    Length(u64),
    /// Bytes left in the current chunk; `None` before a chunk-size line.
    Chunked(Option<u64>),
    Eof,
    Done,
}

struct Body {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads body bytes; `Ok(0)` only at the body's real end. A connection closed before
    /// the framing says the body ended is an `UnexpectedEof` error (RFC 9112 §8).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }

    /// Reads and drops the rest of the body (small bodies: errors, redirects).
    pub fn drain(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            if out.len() < 1 << 20 {
                out.extend_from_slice(&buf[..n]);
            }
        }
    }

    fn finished(&self) -> bool {
        matches!(self.body.framing, Framing::Done)
    }
}

impl Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-body");
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(0);
            };
            match self.framing {
                Framing::Done => return Ok(0),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(0);
                }
                Framing::Length(left) => {
                    let want = buf.len().min(left.min(usize::MAX as u64) as usize);
                    let n = conn.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(eof());
                    }
                    self.framing = Framing::Length(left - n as u64);
                    return Ok(n);
                }
                Framing::Eof => {
                    let n = conn.read(buf)?;
                    if n == 0 {
                        self.framing = Framing::Done;
                        self.keep_alive = false;
                    }
                    return Ok(n);
                }
                Framing::Chunked(None) => {
                    let line = read_line(conn)?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, "bad chunk size")
                    })?;
                    if size == 0 {
                        // Trailer section, up to the empty line (RFC 9112 §7.1.2).
                        while !read_line(conn)?.is_empty() {}
                        self.framing = Framing::Done;
                        return Ok(0);
                    }
                    self.framing = Framing::Chunked(Some(size));
                }
                Framing::Chunked(Some(0)) => {
                    if !read_line(conn)?.is_empty() {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk end"));
                    }
                    self.framing = Framing::Chunked(None);
                }
                Framing::Chunked(Some(left)) => {
                    let want = buf.len().min(left.min(usize::MAX as u64) as usize);
                    let n = conn.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(eof());
                    }
                    self.framing = Framing::Chunked(Some(left - n as u64));
                    return Ok(n);
                }
            }
        }
    }
}

fn read_line(conn: &mut Conn) -> io::Result<String> {
    let mut line = Vec::new();
    let n = conn.by_ref().take(8192).read_until(b'\n', &mut line)?;
    if n == 0 || !line.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-body",
        ));
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

impl Client {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        proxy: Option<Url>,
        no_proxy: Arc<Vec<String>>,
    ) -> Client {
        Client {
            tls,
            proxy,
            no_proxy,
            idle: HashMap::new(),
        }
    }

    /// The proxy for `url`: none when its host (or host:port) is in the no-proxy list,
    /// e.g. chacha nodes that a direct-connect redirect points at.
    fn proxy_for(&self, url: &Url) -> Option<&Url> {
        let bypass = |h: &String| {
            h.eq_ignore_ascii_case(&url.host)
                || h.eq_ignore_ascii_case(&format!("{}:{}", url.host, url.port))
        };
        self.proxy
            .as_ref()
            .filter(|_| !self.no_proxy.iter().any(bypass))
    }

    /// Puts the connection back in the pool when its body was read to the end.
    pub fn recycle(&mut self, mut resp: Response) {
        if resp.finished() && resp.body.keep_alive {
            if let Some(conn) = resp.body.conn.take() {
                self.idle.insert(resp.key.clone(), conn);
            }
        }
    }

    /// Sends a GET with `headers` and reads the response head. A reused connection that
    /// fails before any response byte is retried once on a new one (it may have been
    /// closed while idle, RFC 9112 §9.3.1).
    pub fn get(&mut self, url: &Url, headers: &[(&str, String)]) -> io::Result<Response> {
        let key: Key = (url.tls, url.host.to_ascii_lowercase(), url.port);
        if let Some(conn) = self.idle.remove(&key) {
            if let Ok(resp) = self.exchange(conn, url, headers, &key) {
                return Ok(resp);
            }
        }
        let conn = self.connect(url)?;
        self.exchange(conn, url, headers, &key)
    }

    fn exchange(
        &self,
        mut conn: Conn,
        url: &Url,
        headers: &[(&str, String)],
        key: &Key,
    ) -> io::Result<Response> {
        // Absolute form to a proxy for http:// (RFC 9112 §3.2.2), origin form otherwise.
        let target = if self.proxy_for(url).is_some() && !url.tls {
            url.to_string_full()
        } else {
            url.target.clone()
        };
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: {}\r\n", url.authority());
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("User-Agent: chacha-pull/0.1\r\n\r\n");
        conn.get_mut().write_all(head.as_bytes())?;
        conn.get_mut().flush()?;
        let (status, headers) = read_head(&mut conn)?;
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let close = value("connection").is_some_and(|v| v.to_ascii_lowercase().contains("close"));
        // RFC 9112 §6.3: no body for 1xx/204/304; chunked wins over Content-Length.
        let framing =
            if status == 204 || status == 304 || (100..200).contains(&status) {
                Framing::Done
            } else if value("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
            {
                Framing::Chunked(None)
            } else if has("content-length") {
                let len = value("content-length").unwrap_or_default();
                Framing::Length(len.trim().parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")
                })?)
            } else {
                Framing::Eof
            };
        let keep_alive = !close && !matches!(framing, Framing::Eof);
        Ok(Response {
            status,
            headers,
            body: Body {
                conn: Some(conn),
                framing,
                keep_alive,
            },
            key: key.clone(),
        })
    }

    fn connect(&self, url: &Url) -> io::Result<Conn> {
        let (host, port) = match self.proxy_for(url) {
            Some(p) => (p.host.as_str(), p.port),
            None => (url.host.as_str(), url.port),
        };
        let tcp = TcpStream::connect((host, port))?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        if !url.tls {
            return Ok(BufReader::with_capacity(64 * 1024, Stream::Plain(tcp)));
        }
        let mut tcp = tcp;
        if self.proxy_for(url).is_some() {
            // CONNECT tunnel for https:// (RFC 9110 §9.3.6).
            let auth = url.authority();
            let auth = if auth.contains(':') {
                auth
            } else {
                format!("{auth}:443")
            };
            write!(tcp, "CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\n\r\n")?;
            let mut r = BufReader::new(tcp.try_clone()?);
            let (status, _) = read_head(&mut r)?;
            if !(200..300).contains(&status) {
                return Err(io::Error::other(format!(
                    "proxy refused CONNECT {auth}: {status}"
                )));
            }
            if !r.buffer().is_empty() {
                return Err(io::Error::other(
                    "proxy sent bytes after its CONNECT answer",
                ));
            }
        }
        let name = rustls_pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn =
            rustls::ClientConnection::new(self.tls.clone(), name).map_err(io::Error::other)?;
        Ok(BufReader::with_capacity(
            64 * 1024,
            Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))),
        ))
    }
}

/// Reads a response head (skipping 1xx interim responses).
fn read_head<R: BufRead>(r: &mut R) -> io::Result<(u16, Vec<(String, String)>)> {
    loop {
        let mut buf = Vec::new();
        loop {
            let n = r.by_ref().take(8192).read_until(b'\n', &mut buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            }
            if buf.ends_with(b"\r\n\r\n") || buf.ends_with(b"\n\n") {
                break;
            }
            if buf.len() > MAX_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too big",
                ));
            }
        }
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut fields);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad response head",
                ))
            }
        }
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) {
            continue;
        }
        let headers = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).trim().to_string(),
                )
            })
            .collect();
        return Ok((status, headers));
    }
}

/// A rustls config with the system's roots plus those in `ca` (PEM file).
pub fn tls_config(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--ca {}: {e}", path.display()))?;
        let mut n = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("--ca {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("--ca {}: no certificate in it", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Standard base64 (RFC 4648 §4), for Basic credentials.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Decodes base64 leniently (for `auth` in ~/.docker/config.json, which tools write by
/// hand too): whitespace is skipped, padding optional, and the URL-safe alphabet
/// (RFC 4648 §5) accepted as well as the standard one.
pub fn unbase64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
    use base64::{alphabet, Engine as _};
    let lenient = general_purpose::GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    let text: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    GeneralPurpose::new(&alphabet::STANDARD, lenient)
        .decode(&text)
        .or_else(|_| GeneralPurpose::new(&alphabet::URL_SAFE, lenient).decode(&text))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_hosts_bypass_the_proxy() {
        let proxy = Url::parse("http://198.18.0.10:8080").unwrap();
        let list = Arc::new(vec!["198.18.0.11".to_string(), "node:8080".to_string()]);
        let c = Client::new(tls_config(None).unwrap(), Some(proxy), list);
        let via = |u: &str| c.proxy_for(&Url::parse(u).unwrap()).is_some();
        assert!(!via("http://198.18.0.11:8080/direct-connect?token=x"));
        assert!(!via("http://NODE:8080/x"));
        assert!(via("http://node:8081/x"));
        assert!(via("http://198.18.0.2:5001/blob"));
    }

    #[test]
    fn base64_round_trip() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(unbase64("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(unbase64("YWI").unwrap(), b"ab", "padding optional");
        assert_eq!(unbase64(" YW\nI= ").unwrap(), b"ab", "whitespace skipped");
        assert_eq!(unbase64("-_8=").unwrap(), [0xfb, 0xff], "URL-safe alphabet");
        assert_eq!(unbase64("+/8=").unwrap(), [0xfb, 0xff]);
        assert!(unbase64("a!b=").is_none());
    }

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:8080/v2/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("127.0.0.1", 8080, "/v2/")
        );
        let r = u.join("/token?x=1").unwrap();
        assert!(r.same_origin(&u));
        let o = u.join("http://127.0.0.1:9/blob?sig=2").unwrap();
        assert!(!o.same_origin(&u));
        assert_eq!(
            Url::parse("https://ghcr.io").unwrap().authority(),
            "ghcr.io"
        );
    }
}
