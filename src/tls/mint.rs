//! Minting leaf certificates for intercepted hosts.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{DnsName, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::{normalize_host, provider, Ca, TlsError};

/// How long a leaf is valid. Short enough that a leaked leaf key matters
/// little and far below Apple's 825-day limit for TLS server certificates
/// (https://support.apple.com/en-us/103769), long enough that a host is
/// re-minted at most about once a week.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Leaves start this far in the past so clients whose clock runs behind
/// ours do not see a "not yet valid" certificate.
pub const LEAF_BACKDATE: Duration = Duration::from_secs(3600);

/// Serial length: RFC 5280 section 4.1.2.2 allows up to 20 octets, positive;
/// CA/Browser Forum baseline requirements ask for at least 64 random bits.
const SERIAL_LEN: usize = 16;

/// RFC 5280 appendix A: `ub-common-name INTEGER ::= 64`. Longer host names
/// go only in the SAN, which is what clients check (RFC 6125 section 6.4.4).
const MAX_COMMON_NAME: usize = 64;

/// A minted leaf: what rustls presents plus when it stops being valid.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// Chain `[leaf, CA]` and the leaf's own signing key.
    pub certified: Arc<CertifiedKey>,
    pub not_after: SystemTime,
}

impl Ca {
    /// A fresh leaf for `host` (DNS name or IP literal, IPv6 with or without
    /// brackets), valid for [`LEAF_VALIDITY`]. Every call signs: use
    /// [`super::CertCache`] to reuse leaves.
    pub fn mint_leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        Ok(self.mint(host, LEAF_VALIDITY)?.certified)
    }

    /// [`Ca::mint_leaf`] with a chosen validity (tests use short ones).
    pub fn mint(&self, host: &str, validity: Duration) -> Result<Leaf, TlsError> {
        let host = normalize_host(host);
        let invalid = |reason: String| TlsError::InvalidHost {
            host: host.clone(),
            reason,
        };
        let mint_err = |e: rcgen::Error| TlsError::Mint {
            host: host.clone(),
            reason: e.to_string(),
        };

        // RFC 5280 section 4.2.1.6: IP literals go in an iPAddress SAN, names
        // in a dNSName SAN; clients match only the SAN (RFC 6125 / RFC 9110
        // section 4.3.4), never the CN, when a SAN is present.
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                DnsName::try_from(host.as_str()).map_err(|e| invalid(e.to_string()))?;
                SanType::DnsName(host.clone().try_into().map_err(mint_err)?)
            }
        };

        let mut params = CertificateParams::default();
        // Override rcgen's defaults (CN "rcgen self signed cert", 1975-4096).
        params.distinguished_name = DistinguishedName::new();
        if host.len() <= MAX_COMMON_NAME {
            params
                .distinguished_name
                .push(DnType::CommonName, host.as_str());
        }
        params.subject_alt_names = vec![san];
        let now = SystemTime::now();
        let not_after = (now + validity).min(self.not_after);
        params.not_before = (now - LEAF_BACKDATE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // Lets clients pick the right issuer when the operator rotates CAs
        // with the same subject (RFC 5280 section 4.2.1.1).
        params.use_authority_key_identifier_extension = true;

        // A fresh P-256 key per leaf: the CA key never leaves this process's
        // signing role, and P-256 is fast to generate and universally accepted.
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(mint_err)?;
        let cert = params
            .signed_by(&leaf_key, &self.issuer)
            .map_err(mint_err)?;

        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signer = provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| TlsError::Mint {
                host: host.clone(),
                reason: e.to_string(),
            })?;
        let chain = vec![cert.der().clone(), self.cert_der.clone()];
        Ok(Leaf {
            certified: Arc::new(CertifiedKey::new(chain, signer)),
            not_after,
        })
    }
}

pub(super) fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut serial = [0u8; SERIAL_LEN];
    provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| TlsError::Mint {
            host: String::new(),
            reason: "system random number generator failed".to_string(),
        })?;
    // Positive INTEGER (RFC 5280 section 4.1.2.2) and never zero.
    serial[0] = (serial[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&serial))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testutil::test_ca;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::*;

    fn secs(t: x509_parser::time::ASN1Time) -> i64 {
        t.timestamp()
    }

    fn now_secs() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn leaf_fields() {
        let (ca, ca_der) = test_ca();
        let ck = ca.mint_leaf("Example.TEST").unwrap();
        assert_eq!(ck.cert.len(), 2, "chain is [leaf, CA]");
        assert_eq!(ck.cert[1], ca_der);
        ck.keys_match().expect("leaf key matches leaf cert");

        let (_, leaf) = parse_x509_certificate(&ck.cert[0]).unwrap();
        let (_, ca_x) = parse_x509_certificate(&ca_der).unwrap();

        // Subject CN = host, issuer = CA subject.
        let cn: Vec<_> = leaf
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["example.test"]);
        assert_eq!(leaf.issuer(), ca_x.subject());

        // SAN is the DNS name.
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            [GeneralName::DNSName("example.test")]
        );

        // Validity: now - 1h .. now + 7d.
        let nb = secs(leaf.validity().not_before);
        let na = secs(leaf.validity().not_after);
        let now = now_secs();
        assert!(
            (nb - (now - 3600)).abs() < 60,
            "not_before {nb} vs now {now}"
        );
        assert!(
            (na - (now + 7 * 86_400)).abs() < 60,
            "not_after {na} vs now {now}"
        );

        // EKU serverAuth, not a CA, AKI = CA's SKI.
        let eku = leaf.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth);
        let bc = leaf.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca);
        let ca_ski = ca_x
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .expect("CA has an SKI");
        let aki = leaf
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .expect("leaf has an AKI");
        assert_eq!(aki, ca_ski);

        // Own key, not the CA's; signed by the CA.
        assert_ne!(leaf.public_key().raw, ca_x.public_key().raw);
        leaf.verify_signature(Some(ca_x.public_key()))
            .expect("CA signature verifies");
    }

    #[test]
    fn serials_and_keys_differ_between_mints() {
        let (ca, _) = test_ca();
        let a = ca.mint_leaf("a.test").unwrap();
        let b = ca.mint_leaf("a.test").unwrap();
        let (_, xa) = parse_x509_certificate(&a.cert[0]).unwrap();
        let (_, xb) = parse_x509_certificate(&b.cert[0]).unwrap();
        assert_ne!(xa.raw_serial(), xb.raw_serial());
        assert!(xa.raw_serial().len() <= 20);
        assert_ne!(xa.public_key().raw, xb.public_key().raw);
    }

    #[test]
    fn ip_literals_get_ip_sans() {
        let (ca, _) = test_ca();
        for (host, want) in [
            ("127.0.0.1", vec![127u8, 0, 0, 1]),
            ("[::1]", {
                let mut v = vec![0u8; 16];
                v[15] = 1;
                v
            }),
            ("::1", {
                let mut v = vec![0u8; 16];
                v[15] = 1;
                v
            }),
        ] {
            let ck = ca.mint_leaf(host).unwrap();
            let (_, leaf) = parse_x509_certificate(&ck.cert[0]).unwrap();
            let san = leaf.subject_alternative_name().unwrap().unwrap();
            assert_eq!(
                san.value.general_names,
                [GeneralName::IPAddress(&want)],
                "{host}"
            );
        }
    }

    #[test]
    fn long_names_skip_the_common_name() {
        let (ca, _) = test_ca();
        let host = format!("{}.example.test", "a".repeat(60));
        let ck = ca.mint_leaf(&host).unwrap();
        let (_, leaf) = parse_x509_certificate(&ck.cert[0]).unwrap();
        assert_eq!(leaf.subject().iter_common_name().count(), 0);
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        // RFC 5280 section 4.2.1.6: SAN is critical when the subject is empty.
        assert!(san.critical);
    }

    #[test]
    fn invalid_hosts_are_rejected() {
        let (ca, _) = test_ca();
        for host in ["", "exa mple.test", "bücher.test", "a..b"] {
            let err = ca.mint_leaf(host).unwrap_err();
            assert!(
                matches!(err, TlsError::InvalidHost { .. }),
                "{host:?}: {err:?}"
            );
        }
    }

    #[test]
    fn leaf_never_outlives_the_ca() {
        let (mut ca, _) = test_ca();
        let soon = SystemTime::now() + Duration::from_secs(3600);
        ca.not_after = soon;
        let leaf = ca.mint("x.test", LEAF_VALIDITY).unwrap();
        assert_eq!(leaf.not_after, soon);
    }

    #[test]
    fn rsa_and_ed25519_cas_sign_leaves() {
        use crate::tls::testutil::{gen_ca, TempDir};
        let dir = TempDir::new("mint-ed");
        let (cert, key) = gen_ca(&rcgen::PKCS_ED25519);
        let (c, k) = dir.write_pair(&cert.pem(), &key.serialize_pem());
        let ca = Ca::load(&c, &k).unwrap();
        let ck = ca.mint_leaf("ed.test").unwrap();
        let (_, leaf) = parse_x509_certificate(&ck.cert[0]).unwrap();
        let (_, ca_x) = parse_x509_certificate(cert.der()).unwrap();
        leaf.verify_signature(Some(ca_x.public_key())).unwrap();

        if let Some(dir) = crate::tls::testutil::openssl_ca("rsa") {
            let ca = Ca::load(&dir.path("ca.crt"), &dir.path("ca.key")).unwrap();
            let ck = ca.mint_leaf("rsa.test").unwrap();
            let (_, leaf) = parse_x509_certificate(&ck.cert[0]).unwrap();
            let (_, ca_x) = parse_x509_certificate(ca.cert_der()).unwrap();
            leaf.verify_signature(Some(ca_x.public_key())).unwrap();
        }
    }
}
