//! `chacha ca create`: a fresh interception CA for `tls-interceptor`.
//!
//! The certificate carries what strict verifiers (OpenSSL's `X509_V_FLAG_X509_STRICT`,
//! which Python 3.13 sets by default, and Go's crypto/x509) require of a CA:
//! - basicConstraints CA:TRUE, critical (RFC 5280 section 4.2.1.9);
//! - keyUsage keyCertSign and cRLSign, critical (RFC 5280 section 4.2.1.3), plus
//!   digitalSignature;
//! - subjectKeyIdentifier (RFC 5280 section 4.2.1.2: MUST appear in CA certificates) and
//!   an authorityKeyIdentifier equal to it (section 4.2.1.1), so leaves chain to the
//!   right CA after a rotation with the same subject.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::mint::random_serial;
use super::LEAF_BACKDATE;

/// Default validity of a created CA, in days.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default subject common name of a created CA.
pub const DEFAULT_CA_NAME: &str = "chacha interception CA";
/// File names written into the output directory.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
/// The key is secret: owner read/write only.
pub const KEY_MODE: u32 = 0o600;
/// The certificate is public: clients need it in their trust store.
pub const CERT_MODE: u32 = 0o644;

/// What to create.
#[derive(Debug, Clone)]
pub struct CaOptions {
    pub out: PathBuf,
    pub days: u32,
    pub name: String,
    /// Replace existing files instead of refusing.
    pub force: bool,
}

/// Where the CA went.
#[derive(Debug)]
pub struct CreatedCa {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub not_after: SystemTime,
}

/// Creates a P-256 CA key and self-signed certificate under `opts.out` (created if
/// missing). Refuses to overwrite either file unless `opts.force`. The error is one line.
pub fn create_ca(opts: &CaOptions) -> Result<CreatedCa, String> {
    if opts.days == 0 {
        return Err("--days must be at least 1".to_string());
    }
    if opts.name.trim().is_empty() {
        return Err("--name must not be empty".to_string());
    }
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| format!("cannot create {}: {e}", opts.out.display()))?;
    let cert_path = opts.out.join(CA_CERT_FILE);
    let key_path = opts.out.join(CA_KEY_FILE);
    if !opts.force {
        for p in [&cert_path, &key_path] {
            if p.symlink_metadata().is_ok() {
                return Err(format!(
                    "{} already exists; not overwriting it (use --force to replace the CA)",
                    p.display()
                ));
            }
        }
    }

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate the CA key: {e}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, opts.name.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationName, "chacha");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial().map_err(|e| e.to_string())?);
    let now = SystemTime::now();
    let not_after = now + Duration::from_secs(u64::from(opts.days) * 86_400);
    // Backdated like the leaves, for clients whose clock runs behind ours.
    params.not_before = (now - LEAF_BACKDATE).into();
    params.not_after = not_after.into();
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the CA certificate: {e}"))?;

    // The key first: a certificate without its key is useless, a key without its
    // certificate is simply overwritten by the next --force.
    write_new(
        &key_path,
        key.serialize_pem().as_bytes(),
        KEY_MODE,
        opts.force,
    )?;
    write_new(&cert_path, cert.pem().as_bytes(), CERT_MODE, opts.force)?;
    Ok(CreatedCa {
        cert: cert_path,
        key: key_path,
        not_after,
    })
}

/// Writes `data` to a new file with `mode` (not subject to a looser umask: the mode is
/// set again after creation). With `force`, an existing file is removed first, so the
/// new one never inherits its owner or mode.
fn write_new(path: &Path, data: &[u8], mode: u32, force: bool) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
    }
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Ca;

    #[test]
    fn created_ca_loads_and_refuses_overwrite() {
        let dir = std::env::temp_dir().join(format!("chacha-ca-create-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = CaOptions {
            out: dir.clone(),
            days: 30,
            name: "unit test CA".to_string(),
            force: false,
        };
        let created = create_ca(&opts).unwrap();
        let ca = Ca::load(&created.cert, &created.key).unwrap();
        ca.mint_leaf("example.com").unwrap();
        let again = create_ca(&opts).unwrap_err();
        assert!(again.contains("already exists"), "{again}");
        let forced = create_ca(&CaOptions {
            force: true,
            ..opts
        })
        .unwrap();
        assert!(Ca::load(&forced.cert, &forced.key).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
