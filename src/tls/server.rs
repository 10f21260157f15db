//! The TLS server side of an intercepted CONNECT tunnel.
//!
//! Choice of mechanism: one `ServerConfig` is built once; its certificate
//! resolver maps the ClientHello's SNI to a cached or freshly minted leaf.
//! Clients send no SNI for IP literals (RFC 6066 section 3 forbids literal
//! addresses there) and some never send it, so the CONNECT target is the
//! fallback name. rustls gives the resolver no per-connection context, so
//! [`Interceptor::acceptor_for`] clones the shared config with a resolver that
//! also holds the CONNECT host. The clone copies a handful of `Arc`s and
//! small vectors (the session cache and provider stay shared) and measured
//! ~0.3 µs against ~370 µs for a full loopback TLS 1.3 handshake (both
//! ends), so every connection gets one and there is no separate code path
//! for "SNI missing". Picking a config per connection
//! after reading the ClientHello (`rustls::server::Acceptor`) was rejected
//! because monoio-rustls cannot resume a handshake started that way
//! (shared/design/MONOIO-NOTES.md).
//!
//! SNI, when present, must name the CONNECT host (case and one trailing dot
//! aside): a client that CONNECTs to one host and asks for another in its
//! ClientHello gets no certificate (the handshake is aborted with a
//! `handshake_failure` alert), as Squid's `host_verify_strict` refuses it;
//! otherwise a tunnel opened to an allowed host could be used to obtain (and
//! have chacha fetch as) another one. `tls-interceptor.allow-sni-mismatch:
//! true` restores the old behaviour, where SNI wins over the CONNECT host.

use std::sync::{Arc, OnceLock};

use monoio_rustls::TlsAcceptor;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::{normalize_host, provider, CertCache, ALPN_HTTP11};

#[derive(Debug)]
struct LeafResolver {
    cache: Arc<CertCache>,
    /// The CONNECT target, used when the client sends no SNI.
    fallback: Option<String>,
    /// Refuse a ClientHello whose SNI is not the CONNECT target.
    strict: bool,
    /// Set to the SNI when the handshake was refused for a mismatch (for the
    /// tunnel's log line).
    mismatch: Arc<OnceLock<String>>,
}

/// Whether `sni` names `connect_host` (already normalised): equal after
/// [`normalize_host`] (ASCII case and one trailing dot do not count).
pub fn sni_matches(sni: &str, connect_host: &str) -> bool {
    normalize_host(sni) == connect_host
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let (true, Some(sni), Some(host)) =
            (self.strict, hello.server_name(), self.fallback.as_deref())
        {
            if !sni_matches(sni, host) {
                let _ = self.mismatch.set(sni.to_string());
                return None;
            }
        }
        let Some(host) = hello.server_name().or(self.fallback.as_deref()) else {
            log::debug!("TLS client sent no SNI and no CONNECT host is known: aborting handshake");
            return None;
        };
        match self.cache.get(host) {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                log::warn!("TLS interception: {e}");
                None
            }
        }
    }
}

fn build(resolver: LeafResolver) -> ServerConfig {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // RFC 7301 section 3.2: a client offering only other protocols (e.g.
    // just "h2") gets a no_application_protocol alert; browsers and curl
    // always offer http/1.1 too.
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    cfg
}

/// One shared server config resolving certificates by SNI only (no fallback:
/// a ClientHello without SNI fails). TLS 1.2 and 1.3, ALPN http/1.1.
pub fn server_config(cache: Arc<CertCache>) -> Arc<ServerConfig> {
    Arc::new(build(LeafResolver {
        cache,
        fallback: None,
        strict: false,
        mismatch: Arc::default(),
    }))
}

/// Builds per-connection TLS acceptors for intercepted CONNECT tunnels.
/// `Send + Sync`: one per process, shared by all cores.
#[derive(Clone, Debug)]
pub struct Interceptor {
    cache: Arc<CertCache>,
    base: Arc<ServerConfig>,
    /// `tls-interceptor.allow-sni-mismatch`: SNI may name another host than the
    /// CONNECT target (and then wins).
    allow_sni_mismatch: bool,
}

/// Set, after a refused handshake, to the SNI that did not match the CONNECT host.
pub type SniMismatch = Arc<OnceLock<String>>;

impl Interceptor {
    pub fn new(cache: Arc<CertCache>) -> Interceptor {
        Interceptor {
            base: server_config(cache.clone()),
            cache,
            allow_sni_mismatch: false,
        }
    }

    /// With `allow`, a ClientHello whose SNI names another host than the CONNECT
    /// target gets a leaf for the SNI instead of being refused.
    pub fn allow_sni_mismatch(mut self, allow: bool) -> Interceptor {
        self.allow_sni_mismatch = allow;
        self
    }

    /// An acceptor for one tunnel to `connect_host` (the CONNECT target's
    /// host without port; IPv6 with or without brackets). Use it with
    /// `.accept(stream).await`.
    pub fn acceptor_for(&self, connect_host: &str) -> TlsAcceptor {
        TlsAcceptor::from(self.config_for(connect_host))
    }

    /// [`Interceptor::acceptor_for`], and where a refused SNI is reported.
    pub fn acceptor_checked(&self, connect_host: &str) -> (TlsAcceptor, SniMismatch) {
        let (cfg, mismatch) = self.config_checked(connect_host);
        (TlsAcceptor::from(cfg), mismatch)
    }

    /// The config behind [`Interceptor::acceptor_for`].
    pub fn config_for(&self, connect_host: &str) -> Arc<ServerConfig> {
        self.config_checked(connect_host).0
    }

    fn config_checked(&self, connect_host: &str) -> (Arc<ServerConfig>, SniMismatch) {
        let mismatch = SniMismatch::default();
        let mut cfg = (*self.base).clone();
        cfg.cert_resolver = Arc::new(LeafResolver {
            cache: self.cache.clone(),
            fallback: Some(normalize_host(connect_host)),
            strict: !self.allow_sni_mismatch,
            mismatch: mismatch.clone(),
        });
        (Arc::new(cfg), mismatch)
    }

    pub fn cache(&self) -> &Arc<CertCache> {
        &self.cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testutil::{client_trusting, handshake, test_ca};
    use rustls::pki_types::ServerName;
    use rustls::ClientConfig;

    fn setup() -> (Interceptor, Arc<ClientConfig>) {
        let (icpt, client, _) = setup_with_ca();
        (icpt, client)
    }

    fn setup_with_ca() -> (
        Interceptor,
        Arc<ClientConfig>,
        rustls::pki_types::CertificateDer<'static>,
    ) {
        let (ca, ca_der) = test_ca();
        let icpt = Interceptor::new(Arc::new(CertCache::new(ca)));
        (icpt, client_trusting(&ca_der), ca_der)
    }

    fn name(s: &str) -> ServerName<'static> {
        crate::tls::server_name(s).unwrap()
    }

    fn no_sni(cfg: &Arc<ClientConfig>) -> Arc<ClientConfig> {
        let mut c = (**cfg).clone();
        c.enable_sni = false;
        Arc::new(c)
    }

    fn only(
        ca: &rustls::pki_types::CertificateDer<'static>,
        v: &'static rustls::SupportedProtocolVersion,
    ) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        crate::tls::client::build(roots, &[v]).unwrap()
    }

    #[test]
    fn handshake_by_sni_tls13_and_tls12() {
        let (icpt, _, ca_der) = setup_with_ca();
        let server = server_config(icpt.cache().clone());
        for (v, want) in [
            (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
            (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        ] {
            let seen =
                handshake(server.clone(), only(&ca_der, v), name("www.example.test")).unwrap();
            assert_eq!(seen.version, Some(want));
            assert_eq!(seen.alpn.as_deref(), Some(ALPN_HTTP11));
            assert_eq!(seen.chain.len(), 2);
        }
        assert_eq!(icpt.cache().mints(), 1, "second handshake reused the leaf");
    }

    #[test]
    fn wrong_name_fails_verification() {
        let (icpt, client) = setup();
        // No SNI, so the server falls back to the CONNECT host a.test while
        // the client expects b.test.
        let acceptor_cfg = icpt.config_for("a.test");
        let err = handshake(acceptor_cfg, no_sni(&client), name("b.test")).unwrap_err();
        assert!(
            err.contains("NotValidForName") || err.contains("not valid"),
            "{err}"
        );
    }

    #[test]
    fn untrusted_ca_fails_verification() {
        let (icpt, _) = setup();
        let (_, other_ca) = test_ca();
        let err = handshake(
            icpt.config_for("a.test"),
            client_trusting(&other_ca),
            name("a.test"),
        )
        .unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[test]
    fn ip_literal_without_sni_uses_connect_host() {
        let (icpt, client) = setup();
        // rustls clients never send SNI for IP addresses.
        let seen = handshake(
            icpt.config_for("127.0.0.1"),
            client.clone(),
            name("127.0.0.1"),
        )
        .unwrap();
        assert_eq!(seen.chain.len(), 2);
        let seen = handshake(icpt.config_for("[::1]"), client.clone(), name("::1")).unwrap();
        assert_eq!(seen.chain.len(), 2);
        // A leaf for 127.0.0.1 does not pass for 127.0.0.2.
        let err = handshake(icpt.config_for("127.0.0.1"), client, name("127.0.0.2")).unwrap_err();
        assert!(
            err.contains("NotValidForName") || err.contains("not valid"),
            "{err}"
        );
    }

    #[test]
    fn dns_name_without_sni_uses_connect_host() {
        let (icpt, client) = setup();
        handshake(
            icpt.config_for("nosni.test"),
            no_sni(&client),
            name("nosni.test"),
        )
        .unwrap();
        // The shared SNI-only config has nothing to go by.
        let shared = server_config(icpt.cache().clone());
        assert!(handshake(shared, no_sni(&client), name("nosni.test")).is_err());
    }

    #[test]
    fn sni_naming_another_host_is_refused() {
        let (icpt, client) = setup();
        let (cfg, mismatch) = icpt.config_checked("a.test");
        let err = handshake(cfg, client.clone(), name("b.test")).unwrap_err();
        assert!(!err.is_empty());
        assert_eq!(mismatch.get().map(String::as_str), Some("b.test"));
        assert_eq!(icpt.cache().mints(), 0, "no leaf minted for either name");
        // An IP literal CONNECT with a name in SNI is a mismatch too.
        assert!(handshake(
            icpt.config_for("203.0.113.9"),
            client.clone(),
            name("sni.test")
        )
        .is_err());
        // Case and a trailing dot do not count.
        let (cfg, mismatch) = icpt.config_checked("A.Test.");
        handshake(cfg, client, name("a.test")).unwrap();
        assert!(mismatch.get().is_none());
        assert!(sni_matches("A.TEST.", "a.test"));
        assert!(!sni_matches("a.test.evil", "a.test"));
    }

    #[test]
    fn sni_wins_over_connect_host_when_allowed() {
        let (icpt, client) = setup();
        let icpt = icpt.allow_sni_mismatch(true);
        handshake(icpt.config_for("203.0.113.9"), client, name("sni.test")).unwrap();
        assert_eq!(icpt.cache().len(), 1);
        assert_eq!(icpt.cache().mints(), 1);
    }

    #[test]
    fn invalid_connect_host_aborts_handshake() {
        let (icpt, client) = setup();
        let err =
            handshake(icpt.config_for("bad host"), no_sni(&client), name("x.test")).unwrap_err();
        assert!(!err.is_empty());
    }

    /// Through monoio-rustls on both ends, as the proxy will use it.
    #[test]
    fn monoio_acceptor_and_connector() {
        let (icpt, client) = setup();
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            use monoio::io::{AsyncReadRentExt, AsyncWriteRent, AsyncWriteRentExt};
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = icpt.acceptor_for("127.0.0.1");
            let server = monoio::spawn(async move {
                let (sock, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(sock).await.unwrap();
                let (r, buf) = tls.read_exact(vec![0u8; 4]).await;
                r.unwrap();
                assert_eq!(buf, b"ping");
                let (r, _) = tls.write_all(b"pong".to_vec()).await;
                r.unwrap();
                tls.flush().await.unwrap();
            });
            let work = async {
                let sock = monoio::net::TcpStream::connect(addr).await.unwrap();
                let conn = crate::tls::connector(client);
                let mut tls = conn.connect(name("127.0.0.1"), sock).await.unwrap();
                assert_eq!(tls.alpn_protocol().as_deref(), Some(ALPN_HTTP11));
                let (r, _) = tls.write_all(b"ping".to_vec()).await;
                r.unwrap();
                tls.flush().await.unwrap();
                let (r, buf) = tls.read_exact(vec![0u8; 4]).await;
                r.unwrap();
                assert_eq!(buf, b"pong");
                server.await;
            };
            monoio::time::timeout(std::time::Duration::from_secs(10), work)
                .await
                .expect("monoio TLS round trip timed out");
        });
    }

    /// Costs the proxy pays per CONNECT. Run with
    /// `cargo test --lib tls::server::tests::timings -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing report, not a check"]
    fn timings() {
        use std::time::Instant;
        fn per_op(n: u32, mut f: impl FnMut(u32)) -> std::time::Duration {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            t.elapsed() / n
        }

        let (icpt, client, _) = setup_with_ca();
        let ca = icpt.cache().ca();
        println!(
            "mint (P-256 CA):   {:?}",
            per_op(300, |_| drop(ca.mint_leaf("m.test").unwrap()))
        );

        let dir = crate::tls::testutil::TempDir::new("timing-ed");
        let (cert, key) = crate::tls::testutil::gen_ca(&rcgen::PKCS_ED25519);
        let (c, k) = dir.write_pair(&cert.pem(), &key.serialize_pem());
        let ed = crate::tls::Ca::load(&c, &k).unwrap();
        println!(
            "mint (Ed25519 CA): {:?}",
            per_op(300, |_| drop(ed.mint_leaf("m.test").unwrap()))
        );
        if let Some(dir) = crate::tls::testutil::openssl_ca("rsa") {
            let rsa = crate::tls::Ca::load(&dir.path("ca.crt"), &dir.path("ca.key")).unwrap();
            println!(
                "mint (RSA-2048 CA): {:?}",
                per_op(50, |_| drop(rsa.mint_leaf("m.test").unwrap()))
            );
        }

        let cache = icpt.cache();
        cache.get("hit.test").unwrap();
        let hits = per_op(200_000, |_| drop(cache.get("hit.test").unwrap()));
        println!("cached lookup:     {hits:?}");
        for i in 0..1000 {
            cache.get(&format!("h{i}.test")).unwrap();
        }
        println!(
            "cached lookup (1000 hosts): {:?}",
            per_op(200_000, |i| drop(
                cache.get(&format!("h{}.test", i % 1000)).unwrap()
            ))
        );
        println!(
            "acceptor_for:      {:?}",
            per_op(200_000, |_| drop(icpt.acceptor_for("hit.test")))
        );

        let cfg = icpt.config_for("hit.test");
        println!(
            "TLS 1.3 handshake over loopback, cached leaf (both ends, wall): {:?}",
            per_op(50, |_| {
                handshake(cfg.clone(), client.clone(), name("hit.test")).unwrap();
            })
        );
    }
}
