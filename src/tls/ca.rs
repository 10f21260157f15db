//! Loading the interception CA (`tls-interceptor: {cert, key}`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{Issuer, KeyPair};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{der, TlsError};

/// The operator's CA: signs every leaf presented to intercepted clients.
pub struct Ca {
    /// rcgen's view: subject DN, key identifier and signing key.
    pub(super) issuer: Issuer<'static, KeyPair>,
    /// Sent after each leaf so clients that hold the CA can build the chain.
    pub(super) cert_der: CertificateDer<'static>,
    /// Leaves never outlive their issuer: RFC 5280 path validation
    /// (section 6.1.3) rejects a chain once any certificate in it expired.
    pub(super) not_after: SystemTime,
    cert_path: PathBuf,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is secret: show only where the CA came from.
        f.debug_struct("Ca")
            .field("cert", &self.cert_path)
            .field("algorithm", &self.issuer.key().algorithm())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads a CA certificate and its private key from PEM files.
    ///
    /// The key may be PKCS#8 ("PRIVATE KEY": EC P-256/P-384, RSA, Ed25519),
    /// SEC1 ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY"). The first
    /// certificate in `cert_path` is the CA; it must carry basicConstraints
    /// CA:TRUE and match the key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, TlsError> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        Self::from_pem(&cert_pem, cert_path, &key_pem, key_path)
    }

    /// [`Ca::load`] on bytes already read; the paths only name errors.
    pub fn from_pem(
        cert_pem: &[u8],
        cert_path: &Path,
        key_pem: &[u8],
        key_path: &Path,
    ) -> Result<Ca, TlsError> {
        let cert_der = first_certificate(cert_pem, cert_path)?;
        let key = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(k) => k,
            Err(pem::Error::NoItemsFound) => {
                return Err(TlsError::NoKey {
                    path: key_path.to_path_buf(),
                })
            }
            Err(e) => {
                return Err(TlsError::UnsupportedKey {
                    path: key_path.to_path_buf(),
                    reason: format!("malformed PEM: {e}"),
                })
            }
        };
        let key_pair = key_pair(&key, key_path)?;

        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der).map_err(|e| {
            TlsError::BadCertificate {
                path: cert_path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;

        // The key must be the certificate's: compare the subjectPublicKey of
        // the SubjectPublicKeyInfo (RFC 5280 section 4.1.2.7) with the public
        // half of the key.
        if x509.public_key().subject_public_key.data.as_ref() != key_pair.public_key_raw() {
            return Err(TlsError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            });
        }
        check_is_ca(&x509, cert_path)?;

        let not_after = x509.validity().not_after.to_datetime();
        let not_after = SystemTime::from(not_after);
        if not_after <= SystemTime::now() {
            log::warn!(
                "{}: CA certificate has expired ({}); clients will reject intercepted connections",
                cert_path.display(),
                x509.validity().not_after
            );
        }

        let issuer = Issuer::from_ca_cert_der(&cert_der, key_pair).map_err(|e| {
            TlsError::BadCertificate {
                path: cert_path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;

        Ok(Ca {
            issuer,
            cert_der,
            not_after,
            cert_path: cert_path.to_path_buf(),
        })
    }

    /// The CA certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn first_certificate(pem_bytes: &[u8], path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    match CertificateDer::pem_slice_iter(pem_bytes).next() {
        Some(Ok(c)) => Ok(c),
        None => Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        }),
        Some(Err(e)) => Err(TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: format!("malformed PEM: {e}"),
        }),
    }
}

/// Turns any supported private key encoding into an rcgen signing key.
fn key_pair(key: &PrivateKeyDer<'_>, path: &Path) -> Result<KeyPair, TlsError> {
    let unsupported = |reason: String| TlsError::UnsupportedKey {
        path: path.to_path_buf(),
        reason,
    };
    match key {
        PrivateKeyDer::Pkcs8(k) => KeyPair::try_from(k).map_err(|e| {
            unsupported(format!(
                "PKCS#8 key is not EC P-256/P-384, RSA 2048-8192 bit or Ed25519: {e}"
            ))
        }),
        PrivateKeyDer::Pkcs1(k) => {
            let pkcs8 = PrivatePkcs8KeyDer::from(der::pkcs8_from_pkcs1(k.secret_pkcs1_der()));
            KeyPair::try_from(&pkcs8)
                .map_err(|e| unsupported(format!("RSA key (2048-8192 bit supported): {e}")))
        }
        PrivateKeyDer::Sec1(k) => der::EC_CURVES
            .iter()
            .find_map(|(_, alg)| {
                let pkcs8 =
                    PrivatePkcs8KeyDer::from(der::pkcs8_from_sec1(alg, k.secret_sec1_der()));
                KeyPair::try_from(&pkcs8).ok()
            })
            .ok_or_else(|| unsupported("EC key is not on curve P-256 or P-384".to_string())),
        _ => Err(unsupported("unknown private key encoding".to_string())),
    }
}

/// RFC 5280 section 4.2.1.9: only certificates with basicConstraints cA
/// TRUE may issue; section 4.2.1.3: if keyUsage is present it must allow
/// keyCertSign. Clients enforce both, so fail at start-up instead.
fn check_is_ca(
    x509: &x509_parser::certificate::X509Certificate<'_>,
    path: &Path,
) -> Result<(), TlsError> {
    let not_ca = |reason: &str| TlsError::NotCa {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let bad = |e: x509_parser::error::X509Error| TlsError::BadCertificate {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    match x509.basic_constraints().map_err(bad)? {
        None => return Err(not_ca("no basicConstraints extension")),
        Some(bc) if !bc.value.ca => return Err(not_ca("basicConstraints has CA:FALSE")),
        Some(_) => {}
    }
    if let Some(ku) = x509.key_usage().map_err(bad)? {
        if !ku.value.key_cert_sign() {
            return Err(not_ca("keyUsage lacks keyCertSign"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testutil::{self, TempDir};

    fn load_generated(alg: &'static rcgen::SignatureAlgorithm) -> Ca {
        let dir = TempDir::new("ca-load");
        let (cert, key) = testutil::gen_ca(alg);
        let (c, k) = dir.write_pair(&cert.pem(), &key.serialize_pem());
        Ca::load(&c, &k).unwrap_or_else(|e| panic!("load {alg:?}: {e}"))
    }

    #[test]
    fn loads_p256_pkcs8() {
        let ca = load_generated(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(ca.issuer.key().algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(ca.not_after > SystemTime::now());
    }

    #[test]
    fn loads_p384_pkcs8() {
        let ca = load_generated(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(ca.issuer.key().algorithm(), &rcgen::PKCS_ECDSA_P384_SHA384);
    }

    #[test]
    fn loads_ed25519() {
        let ca = load_generated(&rcgen::PKCS_ED25519);
        assert_eq!(ca.issuer.key().algorithm(), &rcgen::PKCS_ED25519);
    }

    /// What the README's `openssl req -x509 -newkey ec ...` line produces,
    /// in its PKCS#8 form and converted to SEC1 "EC PRIVATE KEY".
    #[test]
    fn loads_openssl_ec_pkcs8_and_sec1() {
        let Some(dir) = testutil::openssl_ca("ec") else {
            return;
        };
        let (c, k) = (dir.path("ca.crt"), dir.path("ca.key"));
        assert!(std::fs::read_to_string(&k)
            .unwrap()
            .contains("BEGIN PRIVATE KEY"));
        let ca = Ca::load(&c, &k).unwrap();
        assert_eq!(ca.issuer.key().algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);

        let sec1 = dir.path("sec1.key");
        testutil::openssl(&["pkey", "-in", s(&k), "-traditional", "-out", s(&sec1)]).unwrap();
        assert!(std::fs::read_to_string(&sec1)
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY"));
        let ca = Ca::load(&c, &sec1).unwrap();
        assert_eq!(ca.issuer.key().algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn loads_openssl_rsa_pkcs8_and_pkcs1() {
        let Some(dir) = testutil::openssl_ca("rsa") else {
            return;
        };
        let (c, k) = (dir.path("ca.crt"), dir.path("ca.key"));
        let ca = Ca::load(&c, &k).unwrap();
        assert_eq!(ca.issuer.key().algorithm(), &rcgen::PKCS_RSA_SHA256);

        let pkcs1 = dir.path("pkcs1.key");
        testutil::openssl(&["pkey", "-in", s(&k), "-traditional", "-out", s(&pkcs1)]).unwrap();
        assert!(std::fs::read_to_string(&pkcs1)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY"));
        let ca = Ca::load(&c, &pkcs1).unwrap();
        assert_eq!(ca.issuer.key().algorithm(), &rcgen::PKCS_RSA_SHA256);
    }

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let dir = TempDir::new("ca-missing");
        let missing = dir.path("nope.crt");
        let err = Ca::load(&missing, &missing).unwrap_err();
        assert!(matches!(err, TlsError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.crt"), "{err}");
    }

    #[test]
    fn no_certificate_and_no_key() {
        let dir = TempDir::new("ca-empty");
        let (cert, key) = testutil::gen_ca(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (c, k) = dir.write_pair(&cert.pem(), &key.serialize_pem());
        let junk = dir.write("junk.pem", "hello\n");

        let err = Ca::load(&junk, &k).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("junk.pem"));

        let err = Ca::load(&c, &junk).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");

        // A certificate where the key should be is "no key", not a crash.
        let err = Ca::load(&c, &c).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let dir = TempDir::new("ca-mismatch");
        let (cert, _) = testutil::gen_ca(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, other_key) = testutil::gen_ca(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (c, k) = dir.write_pair(&cert.pem(), &other_key.serialize_pem());
        let err = Ca::load(&c, &k).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("ca.key") && msg.contains("ca.crt"), "{msg}");

        // Different algorithm altogether.
        let (_, ed) = testutil::gen_ca(&rcgen::PKCS_ED25519);
        let k2 = dir.write("ed.key", &ed.serialize_pem());
        let err = Ca::load(&c, &k2).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn non_ca_certificate_is_rejected() {
        let dir = TempDir::new("ca-notca");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["leaf.test".to_string()]).unwrap();

        // No basicConstraints at all.
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = dir.write_pair(&cert.pem(), &key.serialize_pem());
        let err = Ca::load(&c, &k).unwrap_err();
        assert!(matches!(err, TlsError::NotCa { .. }), "{err:?}");
        assert!(err.to_string().contains("basicConstraints"), "{err}");

        // Explicit CA:FALSE.
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = dir.write_pair(&cert.pem(), &key.serialize_pem());
        let err = Ca::load(&c, &k).unwrap_err();
        assert!(matches!(err, TlsError::NotCa { .. }), "{err:?}");

        // CA:TRUE but keyUsage forbids signing certificates.
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = dir.write_pair(&cert.pem(), &key.serialize_pem());
        let err = Ca::load(&c, &k).unwrap_err();
        assert!(err.to_string().contains("keyCertSign"), "{err}");
    }

    #[test]
    fn pem_with_leading_sections_is_fine() {
        // openssl `ecparam -genkey` writes an "EC PARAMETERS" block before the key.
        let dir = TempDir::new("ca-params");
        let (cert, key) = testutil::gen_ca(&rcgen::PKCS_ECDSA_P256_SHA256);
        let key_pem = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            key.serialize_pem()
        );
        let cert_pem = format!("subject=CN = test\n{}", cert.pem());
        let (c, k) = dir.write_pair(&cert_pem, &key_pem);
        Ca::load(&c, &k).unwrap();
    }
}
