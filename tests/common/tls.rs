//! TLS test infrastructure: CAs made with rcgen, a TLS-terminating front for the in-test
//! origin (so an `https` origin has all of [`super::Origin`]'s behaviours and counters),
//! and a client that opens a CONNECT tunnel through chacha and speaks HTTP/1.1 in it.
//! Everything is blocking std + rustls on 127.0.0.1, with socket timeouts.

use super::client::{parse_head, ClientError, Response};
use super::wire::{self, Wire, DEFAULT_IO_TIMEOUT};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

/// ALPN identifier both sides offer (RFC 7301).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// A relay connection with no traffic either way for this long is closed.
const RELAY_IDLE: Duration = Duration::from_secs(30);
/// Bytes moved per read in the relay.
const RELAY_BUF: usize = 64 * 1024;
/// Longest CONNECT response head the client reads.
const MAX_CONNECT_HEAD: usize = 16 * 1024;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test certificate authority (EC P-256), self-signed, valid from yesterday for a year.
pub struct TestCa {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(common_name: &str) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(86_400)).into();
        params.not_after = (now + Duration::from_secs(365 * 86_400)).into();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes `<stem>.crt` and `<stem>.key` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    /// A server leaf for `names` (DNS names or IP literals) signed by this CA, with its
    /// key, the chain being [leaf, CA].
    pub fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "chacha test origin");
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(30 * 86_400)).into();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone(), self.cert_der.clone()], der)
    }

    /// A server config presenting a leaf for `names`; TLS 1.2 and 1.3, ALPN http/1.1.
    pub fn server_config(&self, names: &[&str]) -> Arc<ServerConfig> {
        let (chain, key) = self.leaf(names);
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Arc::new(cfg)
    }

    /// A client trusting only this CA, with the given protocol versions.
    pub fn client_config_versions(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Arc::new(cfg)
    }

    /// A client trusting only this CA; TLS 1.2 and 1.3, ALPN http/1.1.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config_versions(rustls::DEFAULT_VERSIONS)
    }
}

/// A TLS server on 127.0.0.1:0 that decrypts each connection and relays it to a plain
/// backend (an in-test [`super::Origin`]): one thread per connection.
pub struct TlsFront {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handshakes: Arc<AtomicU64>,
}

impl TlsFront {
    pub fn start(backend: SocketAddr, cfg: Arc<ServerConfig>) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind TLS front");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(AtomicU64::new(0));
        let (s, h) = (stop.clone(), handshakes.clone());
        thread::Builder::new()
            .name("tls-front-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (cfg, h) = (cfg.clone(), h.clone());
                    thread::spawn(move || {
                        let _ = relay(stream, backend, cfg, &h);
                    });
                }
            })
            .unwrap();
        TlsFront {
            addr,
            stop,
            handshakes,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// Completed TLS handshakes so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Flushes everything rustls has to send.
fn flush_tls(tls: &mut ServerConnection, tcp: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(tcp)?;
    }
    Ok(())
}

/// Decrypts `tcp` into a connection to `backend` and encrypts the answers, until either
/// side closes, fails, or both stay silent for [`RELAY_IDLE`].
fn relay(
    mut tcp: TcpStream,
    backend: SocketAddr,
    cfg: Arc<ServerConfig>,
    handshakes: &AtomicU64,
) -> io::Result<()> {
    wire::set_timeouts(&tcp, DEFAULT_IO_TIMEOUT);
    let mut tls = ServerConnection::new(cfg).map_err(tls_err)?;
    // Plaintext from the backend is queued whole; the socket writes drain it.
    tls.set_buffer_limit(None);
    let mut plain = TcpStream::connect_timeout(&backend, DEFAULT_IO_TIMEOUT)?;
    wire::set_timeouts(&plain, DEFAULT_IO_TIMEOUT);
    let mut buf = vec![0u8; RELAY_BUF];
    let mut counted = false;
    loop {
        flush_tls(&mut tls, &mut tcp)?;
        if !counted && !tls.is_handshaking() {
            counted = true;
            handshakes.fetch_add(1, Ordering::SeqCst);
        }
        let mut fds = [
            libc::pollfd {
                fd: tcp.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: plain.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds for fds owned by this function.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, RELAY_IDLE.as_millis() as i32) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Ok(());
        }
        let ready = libc::POLLIN | libc::POLLHUP | libc::POLLERR;
        if fds[0].revents & ready != 0 {
            if tls.read_tls(&mut tcp)? == 0 {
                return Ok(());
            }
            if let Err(e) = tls.process_new_packets() {
                // Send our alert (e.g. bad_certificate from the client's side) and stop.
                let _ = flush_tls(&mut tls, &mut tcp);
                return Err(tls_err(e));
            }
            loop {
                match tls.reader().read(&mut buf) {
                    Ok(0) => return Ok(()), // close_notify
                    Ok(n) => plain.write_all(&buf[..n])?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        if fds[1].revents & ready != 0 {
            let n = plain.read(&mut buf)?;
            if n == 0 {
                tls.send_close_notify();
                let _ = flush_tls(&mut tls, &mut tcp);
                return Ok(());
            }
            tls.writer().write_all(&buf[..n])?;
        }
    }
}

/// `CONNECT authority` on a fresh connection to the proxy; returns the socket and the
/// status of the proxy's answer, whose head is read byte by byte so that nothing after
/// it is consumed. `after_head` is sent in the same write as the CONNECT head.
pub fn send_connect(
    proxy: SocketAddr,
    authority: &str,
    after_head: &[u8],
) -> io::Result<(TcpStream, u16, String)> {
    send_connect_with(proxy, authority, &[], after_head)
}

/// [`send_connect`] with extra header lines (each without CRLF) in the CONNECT head.
pub fn send_connect_with(
    proxy: SocketAddr,
    authority: &str,
    headers: &[&str],
    after_head: &[u8],
) -> io::Result<(TcpStream, u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&proxy, DEFAULT_IO_TIMEOUT)?;
    wire::set_timeouts(&tcp, DEFAULT_IO_TIMEOUT);
    let _ = tcp.set_nodelay(true);
    let mut out = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(after_head);
    tcp.write_all(&out)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > MAX_CONNECT_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        if tcp.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let parsed = parse_head(&head, "CONNECT")?;
    let status = parsed.status;
    // A refusal carries a body (write_simple's text); read it so callers can show it.
    let mut text = String::from_utf8_lossy(&head).into_owned();
    if status != 200 {
        if let wire::Framing::Length(n) = parsed.framing {
            let mut body = vec![0u8; n as usize];
            tcp.read_exact(&mut body)?;
            text.push_str(&String::from_utf8_lossy(&body));
        }
    }
    Ok((tcp, status, text))
}

/// A TLS session inside a CONNECT tunnel through chacha.
pub struct Tunnel {
    pub wire: Wire<rustls::StreamOwned<ClientConnection, TcpStream>>,
}

/// How to open a tunnel.
pub struct TunnelOpts<'a> {
    /// The CONNECT target, `host:port`.
    pub authority: &'a str,
    /// The name the client verifies (and sends as SNI when it is a DNS name).
    pub server_name: &'a str,
    pub client: Arc<ClientConfig>,
    /// Send the ClientHello in the same write as the CONNECT head, before the 200.
    pub eager: bool,
}

impl Tunnel {
    /// Opens a tunnel and completes the TLS handshake. `Err` describes a refused
    /// CONNECT (with the status) or a failed handshake.
    pub fn open(proxy: SocketAddr, opts: TunnelOpts<'_>) -> Result<Tunnel, String> {
        Tunnel::open_with(proxy, opts, &[])
    }

    /// [`Tunnel::open`] with extra header lines in the CONNECT head.
    pub fn open_with(
        proxy: SocketAddr,
        opts: TunnelOpts<'_>,
        headers: &[&str],
    ) -> Result<Tunnel, String> {
        let name = ServerName::try_from(opts.server_name.to_string()).map_err(|e| e.to_string())?;
        let mut conn = ClientConnection::new(opts.client, name).map_err(|e| e.to_string())?;
        let mut hello = Vec::new();
        if opts.eager {
            conn.write_tls(&mut hello).map_err(|e| e.to_string())?;
        }
        let (mut tcp, status, text) = send_connect_with(proxy, opts.authority, headers, &hello)
            .map_err(|e| format!("CONNECT: {e}"))?;
        if status != 200 {
            return Err(format!("CONNECT refused with {status}: {text}"));
        }
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .map_err(|e| format!("TLS handshake: {e}"))?;
        }
        Ok(Tunnel {
            wire: Wire::new(rustls::StreamOwned::new(conn, tcp)),
        })
    }

    pub fn conn(&self) -> &ClientConnection {
        &self.wire.stream.conn
    }

    /// The certificate chain chacha presented.
    pub fn peer_chain(&self) -> Vec<CertificateDer<'static>> {
        self.conn()
            .peer_certificates()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    /// Sends `raw` and reads one whole response (method taken from `raw`).
    pub fn request(&mut self, raw: impl AsRef<[u8]>) -> Result<Response, ClientError> {
        let raw = raw.as_ref();
        let method = super::client::method_of(raw);
        self.wire.write_all(raw).map_err(ClientError::Head)?;
        self.wire.stream.flush().map_err(ClientError::Head)?;
        let head = loop {
            let bytes = match self.wire.read_head(MAX_CONNECT_HEAD) {
                Ok(Some(b)) => b,
                Ok(None) => return Err(ClientError::Closed(io::ErrorKind::UnexpectedEof.into())),
                Err(e) => return Err(ClientError::Head(e)),
            };
            let head = parse_head(&bytes, &method).map_err(ClientError::Head)?;
            if !(100..200).contains(&head.status) {
                break head;
            }
        };
        match self.wire.read_body_vec(head.framing) {
            Ok(body) => Ok(Response { head, body }),
            Err((body, t)) => Err(ClientError::Truncated {
                head,
                body,
                error: t.error,
            }),
        }
    }
}

/// An origin-form GET as sent inside a tunnel.
pub fn get_in_tunnel(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}
