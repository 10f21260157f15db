//! The verifying TLS client used towards origin servers.

use std::net::IpAddr;
use std::sync::Arc;

use monoio_rustls::TlsConnector;
use rustls::pki_types::{DnsName, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};

use super::{normalize_host, provider, TlsError, ALPN_HTTP11};

/// Client config trusting the system roots. rustls-native-certs reads the
/// platform store, or only `SSL_CERT_FILE` / `SSL_CERT_DIR` when set (how
/// tests and operators add private CAs). Verification is always on.
pub fn client_config() -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_roots(root_store_from(rustls_native_certs::load_native_certs()))
}

/// Client config trusting exactly `roots`; TLS 1.2 and 1.3, ALPN http/1.1.
pub fn client_config_with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>, TlsError> {
    build(roots, rustls::DEFAULT_VERSIONS)
}

pub(super) fn build(
    roots: RootCertStore,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(cfg))
}

/// A trust store from what rustls-native-certs found. Unreadable or
/// unparsable certificates are logged and skipped: one bad file in
/// /etc/ssl/certs must not stop the proxy.
pub fn root_store_from(found: rustls_native_certs::CertificateResult) -> RootCertStore {
    for e in &found.errors {
        log::warn!("system trust store: {e}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        log::warn!("system trust store: ignored {ignored} unparsable root certificate(s)");
    }
    if added == 0 {
        log::warn!(
            "system trust store: no usable root certificates; every upstream TLS \
             connection will fail verification (set SSL_CERT_FILE or SSL_CERT_DIR)"
        );
    } else {
        log::debug!("system trust store: {added} root certificate(s)");
    }
    roots
}

/// A monoio-rustls connector for `cfg`; `.connect(server_name(host)?, tcp)`.
pub fn connector(cfg: Arc<ClientConfig>) -> TlsConnector {
    TlsConnector::from(cfg)
}

/// The name to verify the origin's certificate against: an IP address for
/// IP literals (IPv6 with or without brackets), else a DNS name. rustls
/// sends SNI only for DNS names (RFC 6066 section 3).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let h = normalize_host(host);
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    DnsName::try_from(h.clone())
        .map(ServerName::DnsName)
        .map_err(|e| TlsError::InvalidHost {
            host: host.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testutil::{gen_ca, TempDir};

    #[test]
    fn server_names() {
        assert_eq!(
            server_name("Example.com").unwrap(),
            ServerName::try_from("example.com").unwrap()
        );
        for ip in ["127.0.0.1", "::1", "[::1]"] {
            assert!(
                matches!(server_name(ip).unwrap(), ServerName::IpAddress(_)),
                "{ip}"
            );
        }
        assert!(matches!(
            server_name("bad host").unwrap_err(),
            TlsError::InvalidHost { .. }
        ));
    }

    #[test]
    fn config_has_alpn_and_verification() {
        let cfg = client_config_with_roots(RootCertStore::empty()).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![ALPN_HTTP11.to_vec()]);
        assert!(cfg.enable_sni);
    }

    #[test]
    fn native_store_loads() {
        // Reads the machine's store (no network); an empty store only warns.
        let cfg = client_config().unwrap();
        assert_eq!(cfg.alpn_protocols, vec![ALPN_HTTP11.to_vec()]);
    }

    /// The SSL_CERT_FILE path rustls-native-certs uses, without touching
    /// this process's environment (other tests run in parallel).
    #[test]
    fn cert_file_roots_and_bad_entries() {
        let dir = TempDir::new("roots");
        let (a, _) = gen_ca(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (b, _) = gen_ca(&rcgen::PKCS_ED25519);
        let bundle = dir.write("bundle.pem", &format!("{}{}", a.pem(), b.pem()));
        let found = rustls_native_certs::load_certs_from_paths(Some(&bundle), None);
        assert_eq!(root_store_from(found).len(), 2);

        // A missing file is an error entry, not a failure.
        let found =
            rustls_native_certs::load_certs_from_paths(Some(&dir.path("missing.pem")), None);
        assert_eq!(root_store_from(found).len(), 0);

        // Garbage DER is skipped.
        let mut found = rustls_native_certs::CertificateResult::default();
        found.certs.push(vec![0x30, 0x03, 0x01, 0x01, 0xff].into());
        assert_eq!(root_store_from(found).len(), 0);
    }
}
