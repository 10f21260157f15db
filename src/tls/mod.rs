//! TLS building blocks for CONNECT interception.
//!
//! - [`Ca`] loads the operator's interception CA (`tls-interceptor: {cert, key}`)
//!   and mints short-lived leaf certificates signed by it.
//! - [`CertCache`] keeps minted leaves per host, shared by all cores.
//! - [`Interceptor`] / [`server_config`] build the rustls server side that
//!   presents those leaves to the client of a CONNECT tunnel.
//! - [`client_config`] / [`connector`] / [`server_name`] build the verifying
//!   rustls client used towards the origin.
//!
//! Everything uses the `ring` provider explicitly: with two providers in the
//! dependency graph rustls' `builder()` panics at run time.

mod ca;
mod certcache;
mod client;
mod create;
mod der;
mod mint;
mod server;

#[cfg(test)]
mod testutil;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use ca::Ca;
pub use certcache::CertCache;
pub use client::{
    client_config, client_config_with_roots, connector, root_store_from, server_name,
};
pub use create::{create_ca, CaOptions, CreatedCa, DEFAULT_CA_DAYS, DEFAULT_CA_NAME};
pub use mint::{Leaf, LEAF_BACKDATE, LEAF_VALIDITY};
pub use server::{server_config, Interceptor};

/// ALPN protocol both sides offer: the proxy speaks HTTP/1.1 only
/// (RFC 7301 section 3.1; "http/1.1" is the registered identifier).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The one crypto provider used everywhere in this module.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A host as it names a certificate: IP literals take their canonical form
/// (IPv6 without brackets),
/// DNS names are lower-cased (RFC 4343: DNS names compare case-insensitively)
/// and lose one trailing dot (the absolute form names the same host).
pub fn normalize_host(host: &str) -> String {
    let h = host.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(h);
    if let Ok(ip) = h.parse::<IpAddr>() {
        // Canonical text form, so `2001:DB8::1` and `2001:db8:0::1` share a cache entry.
        return ip.to_string();
    }
    let h = h.strip_suffix('.').unwrap_or(h);
    h.to_ascii_lowercase()
}

/// The useful text of a failed monoio-rustls handshake: the rustls error (e.g.
/// "invalid peer certificate: UnknownIssuer") travels inside an `io::Error` whose
/// kind alone says nothing, and the wrapper's own message is just "io error".
pub fn handshake_error_reason(e: monoio_rustls::TlsError) -> String {
    match e {
        monoio_rustls::TlsError::Io(io) => match io.get_ref() {
            Some(inner) => inner.to_string(),
            None => io.to_string(),
        },
        monoio_rustls::TlsError::Rustls(r) => r.to_string(),
    }
}

/// Everything that can go wrong loading the CA, minting, or building configs.
#[derive(Debug)]
pub enum TlsError {
    /// A file could not be read.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` PEM block.
    NoCertificate { path: PathBuf },
    /// The certificate could not be parsed as X.509.
    BadCertificate { path: PathBuf, reason: String },
    /// The key file holds no private key PEM block.
    NoKey { path: PathBuf },
    /// The key is of a kind or curve we cannot sign with.
    UnsupportedKey { path: PathBuf, reason: String },
    /// The key's public half is not the certificate's public key.
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// The certificate may not issue certificates.
    NotCa { path: PathBuf, reason: String },
    /// The host cannot be put in a certificate or used as a server name.
    InvalidHost { host: String, reason: String },
    /// Certificate generation or signing failed.
    Mint { host: String, reason: String },
    /// rustls refused a configuration.
    Rustls(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Io { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            TlsError::NoCertificate { path } => {
                write!(f, "{}: no PEM \"CERTIFICATE\" block found", path.display())
            }
            TlsError::BadCertificate { path, reason } => {
                write!(f, "{}: invalid certificate: {reason}", path.display())
            }
            TlsError::NoKey { path } => write!(
                f,
                "{}: no private key found (expected a PEM \"PRIVATE KEY\", \
                 \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\" block)",
                path.display()
            ),
            TlsError::UnsupportedKey { path, reason } => write!(
                f,
                "{}: unsupported private key ({reason}); use EC P-256/P-384, RSA or Ed25519",
                path.display()
            ),
            TlsError::KeyMismatch { cert, key } => write!(
                f,
                "{}: private key does not match the public key of certificate {}",
                key.display(),
                cert.display()
            ),
            TlsError::NotCa { path, reason } => write!(
                f,
                "{}: certificate is not a CA ({reason}); \
                 it needs basicConstraints CA:TRUE",
                path.display()
            ),
            TlsError::InvalidHost { host, reason } => {
                write!(f, "invalid TLS host name {host:?}: {reason}")
            }
            TlsError::Mint { host, reason } => {
                write!(f, "cannot mint a certificate for {host:?}: {reason}")
            }
            TlsError::Rustls(e) => write!(f, "TLS configuration: {e}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Io { source, .. } => Some(source),
            TlsError::Rustls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_host_forms() {
        assert_eq!(normalize_host("Example.COM"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]"), "::1");
        assert_eq!(normalize_host("::1"), "::1");
        assert_eq!(normalize_host("127.0.0.1"), "127.0.0.1");
        assert_eq!(normalize_host("[2001:DB8:0::1]"), "2001:db8::1");
    }

    #[test]
    fn shared_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Ca>();
        check::<CertCache>();
        check::<Interceptor>();
        check::<TlsError>();
    }

    #[test]
    fn handshake_error_reason_unwraps_rustls() {
        let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, inner.clone());
        let reason = handshake_error_reason(monoio_rustls::TlsError::Io(wrapped));
        assert_eq!(reason, inner.to_string());
        assert!(reason.contains("UnknownIssuer"), "{reason}");
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls handshake eof");
        let reason = handshake_error_reason(monoio_rustls::TlsError::Io(eof));
        assert_eq!(reason, "tls handshake eof");
    }

    #[test]
    fn errors_name_the_file() {
        let e = TlsError::NoKey {
            path: PathBuf::from("/etc/ca.key"),
        };
        assert!(e.to_string().contains("/etc/ca.key"), "{e}");
        let e = TlsError::KeyMismatch {
            cert: PathBuf::from("/a.crt"),
            key: PathBuf::from("/a.key"),
        };
        let s = e.to_string();
        assert!(s.contains("/a.crt") && s.contains("/a.key"), "{s}");
    }
}
