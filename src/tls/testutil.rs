//! Test helpers: temp dirs, generated CAs, real handshakes over 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::Ca;

/// Bound on every socket operation in the handshake tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "chacha-tls-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    pub fn write_pair(&self, cert_pem: &str, key_pem: &str) -> (PathBuf, PathBuf) {
        (
            self.write("ca.crt", cert_pem),
            self.write("ca.key", key_pem),
        )
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed CA like an operator would make.
pub fn gen_ca(alg: &'static SignatureAlgorithm) -> (Certificate, KeyPair) {
    // Distinct subjects, so a client trusting another test CA reports
    // UnknownIssuer rather than a signature failure.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("chacha test CA {}", SEQ.fetch_add(1, Ordering::Relaxed)),
    );
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
    (cert, key)
}

/// A loaded P-256 CA and its certificate (for the client's trust store).
pub fn test_ca() -> (Ca, CertificateDer<'static>) {
    let (cert, key) = gen_ca(&rcgen::PKCS_ECDSA_P256_SHA256);
    let ca = Ca::from_pem(
        cert.pem().as_bytes(),
        Path::new("test.crt"),
        key.serialize_pem().as_bytes(),
        Path::new("test.key"),
    )
    .unwrap();
    (ca, cert.der().clone())
}

/// Runs openssl; `None` when it is not installed.
pub fn openssl(args: &[&str]) -> Option<()> {
    match std::process::Command::new("openssl").args(args).output() {
        Ok(out) if out.status.success() => Some(()),
        Ok(out) => panic!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            eprintln!("openssl not available ({e}): skipping");
            None
        }
    }
}

/// `ca.crt` + `ca.key` (PKCS#8) made by `openssl req -x509`, as an operator
/// following the README would; `kind` is "ec" (P-256) or "rsa" (2048 bit).
pub fn openssl_ca(kind: &str) -> Option<TempDir> {
    let dir = TempDir::new(&format!("openssl-{kind}"));
    let (c, k) = (dir.path("ca.crt"), dir.path("ca.key"));
    let mut args = vec![
        "req",
        "-x509",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=chacha openssl CA",
    ];
    match kind {
        "ec" => args.extend(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
        "rsa" => args.extend(["-newkey", "rsa:2048"]),
        _ => panic!("unknown key kind {kind}"),
    }
    args.extend(["-keyout", k.to_str().unwrap(), "-out", c.to_str().unwrap()]);
    openssl(&args)?;
    Some(dir)
}

/// A client trusting only `ca`, TLS 1.2 and 1.3, ALPN http/1.1.
pub fn client_trusting(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    super::client_config_with_roots(roots).unwrap()
}

/// What a successful client handshake saw.
#[derive(Debug)]
pub struct Seen {
    pub chain: Vec<CertificateDer<'static>>,
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
}

/// Full handshake plus one round trip over a 127.0.0.1 TCP pair (std
/// threads, blocking rustls): the client's view or its error.
pub fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<Seen, String> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = std::thread::spawn(move || -> Result<(), String> {
        let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let conn = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
        tls.write_all(b"pong").map_err(|e| e.to_string())?;
        tls.flush().map_err(|e| e.to_string())
    });

    let result = (|| {
        let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let conn = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"pong");
        Ok(Seen {
            chain: tls.conn.peer_certificates().unwrap_or_default().to_vec(),
            alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
            version: tls.conn.protocol_version(),
        })
    })();
    // The server fails too when the client rejects it; only the client's view matters.
    let _ = srv.join().unwrap();
    result
}
