//! Issue 11, "Service life": `chacha ca create`, `chacha run --user`, and the systemd
//! unit in examples/chacha.service.

mod common;

use common::origin::{self};
use common::tls::{get_in_tunnel, TestCa, TlsFront, Tunnel, TunnelOpts, ALPN_HTTP11};
use common::{with_deadline, Chacha, Origin, TempDir};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::*;

/// Deadline for an ordinary test.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs the chacha binary with `args` to completion.
fn chacha_cmd(args: &[&str]) -> Output {
    Command::new(common::chacha::BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run chacha")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Fails the test unless `tool` runs: a machine without it must not pass the test
/// unrun (.ci/run installs it).
fn require(tool: &str, arg: &str) {
    if let Err(e) = Command::new(tool).arg(arg).output() {
        panic!("this test needs {tool} on PATH: {e}");
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `chacha ca create --out <dir>/ca ...`; returns (cert, key).
fn create_ca(dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let out = dir.join("ca");
    let mut args = vec!["ca", "create", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = chacha_cmd(&args);
    assert!(o.status.success(), "{}", text(&o));
    (out.join("ca.crt"), out.join("ca.key"))
}

fn cert_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("PEM certificate")
}

/// A client trusting only the CA in `ca_cert`; ALPN http/1.1.
fn client_trusting(ca_cert: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der(ca_cert)).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Arc::new(cfg)
}

#[test]
fn ca_create_writes_a_strict_p256_ca_with_private_key_mode() {
    with_deadline(DEADLINE, || {
        let dir = TempDir::new("ca-create");
        let (cert, key) = create_ca(dir.path(), &["--days", "42", "--name", "Test Fleet CA"]);
        assert_eq!(mode(&key), 0o600, "key file mode");
        assert_eq!(mode(&cert), 0o644, "cert file mode");

        let der = cert_der(&cert);
        let (_, x509) = parse_x509_certificate(&der).unwrap();
        // Self-signed, with the chosen name.
        assert_eq!(x509.subject(), x509.issuer());
        let cn: Vec<_> = x509
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cn, ["Test Fleet CA"]);
        // P-256 (RFC 5480: id-ecPublicKey with the prime256v1 curve).
        let spki = x509.public_key();
        assert_eq!(
            spki.algorithm.algorithm.to_id_string(),
            "1.2.840.10045.2.1",
            "id-ecPublicKey"
        );
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap();
        assert_eq!(curve.to_id_string(), "1.2.840.10045.3.1.7", "prime256v1");
        // Valid for the chosen number of days (within the backdating and a minute).
        let v = x509.validity();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let days42 = 42 * 86_400;
        assert!(
            (v.not_after.timestamp() - (now + days42)).abs() < 60,
            "notAfter {}",
            v.not_after
        );
        assert!(v.not_before.timestamp() <= now);

        let mut seen = Vec::new();
        for ext in x509.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => {
                    assert!(ext.critical, "basicConstraints must be critical");
                    assert!(bc.ca, "CA:TRUE");
                    seen.push("bc");
                }
                ParsedExtension::KeyUsage(ku) => {
                    assert!(ext.critical, "keyUsage must be critical");
                    assert!(ku.key_cert_sign(), "keyCertSign");
                    assert!(ku.crl_sign(), "cRLSign");
                    assert!(ku.digital_signature(), "digitalSignature");
                    seen.push("ku");
                }
                ParsedExtension::SubjectKeyIdentifier(ski) => {
                    assert!(!ski.0.is_empty());
                    seen.push("ski");
                }
                ParsedExtension::AuthorityKeyIdentifier(_) => seen.push("aki"),
                _ => {}
            }
        }
        seen.sort();
        assert_eq!(seen, ["aki", "bc", "ku", "ski"]);

        // OpenSSL's strict mode (what Python 3.13 uses by default) accepts it as a root.
        require("openssl", "version");
        let o = Command::new("openssl")
            .args(["verify", "-x509_strict", "-check_ss_sig", "-CAfile"])
            .arg(&cert)
            .arg(&cert)
            .output()
            .unwrap();
        assert!(o.status.success(), "openssl verify: {}", text(&o));
    });
}

#[test]
fn ca_create_refuses_to_overwrite_without_force() {
    with_deadline(DEADLINE, || {
        let dir = TempDir::new("ca-force");
        let (cert, key) = create_ca(dir.path(), &[]);
        let before = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
        let out = dir.path().join("ca");
        let o = chacha_cmd(&["ca", "create", "--out", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("already exists") && err.contains("--force"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        let after = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
        assert_eq!(before, after, "files untouched");

        // --force replaces both, with the same modes even if the old ones were loosened.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let o = chacha_cmd(&["ca", "create", "--out", out.to_str().unwrap(), "--force"]);
        assert!(o.status.success(), "{}", text(&o));
        assert_ne!(std::fs::read(&key).unwrap(), before.1, "new key");
        assert_ne!(std::fs::read(&cert).unwrap(), before.0, "new cert");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
    });
}

/// chacha intercepting with a CA from `chacha ca create`, an https origin behind a TLS
/// front with its own CA that chacha trusts (SSL_CERT_FILE).
struct Intercepting {
    chacha: Chacha,
    origin: Origin,
    front: TlsFront,
    ca_cert: PathBuf,
    dir: TempDir,
}

fn start_intercepting() -> Intercepting {
    let dir = TempDir::new("ca-run");
    let (ca_cert, ca_key) = create_ca(dir.path(), &[]);
    let origin_ca = TestCa::new("origin test CA");
    let (origin_ca_cert, _) = origin_ca.write(dir.path(), "origin-ca");
    let origin = Origin::start(origin::standard_routes);
    let front = TlsFront::start(
        origin.addr(),
        origin_ca.server_config(&["localhost", "127.0.0.1"]),
    );
    let yaml = common::config(&format!(
        "tls-interceptor:\n  cert: \"{}\"\n  key: \"{}\"\n  ports: [{}]\n",
        ca_cert.display(),
        ca_key.display(),
        front.port()
    ));
    let chacha = Chacha::start_with_env(
        &yaml,
        "info",
        &[("SSL_CERT_FILE", origin_ca_cert.to_str().unwrap())],
    );
    Intercepting {
        chacha,
        origin,
        front,
        ca_cert,
        dir,
    }
}

#[test]
fn created_ca_intercepts_and_its_leaves_pass_strict_verification() {
    require("openssl", "version");
    require("python3", "--version");
    with_deadline(DEADLINE, || {
        let s = start_intercepting();
        // A rustls client trusting only the created CA fills and hits through a tunnel.
        let mut t = Tunnel::open(
            s.chacha.addr(),
            TunnelOpts {
                authority: &format!("localhost:{}", s.front.port()),
                server_name: "localhost",
                client: client_trusting(&s.ca_cert),
                eager: false,
            },
        )
        .expect("tunnel through chacha with the created CA");
        for _ in 0..2 {
            let r = t
                .request(get_in_tunnel("localhost", "/static/ca"))
                .expect("GET in tunnel");
            assert_eq!(r.status(), 200);
            assert_eq!(r.body, origin::static_body("/static/ca"));
        }
        assert_eq!(s.origin.settled().full_bodies, 1, "second GET was a hit");

        // The leaf chacha minted passes OpenSSL's strict checks against the created CA.
        let chain = t.peer_chain();
        assert_eq!(chain.len(), 2, "[leaf, CA]");
        assert_eq!(
            chain[1],
            cert_der(&s.ca_cert),
            "chain ends in the created CA"
        );
        let leaf_der = s.dir.path().join("leaf.der");
        let leaf_pem = s.dir.path().join("leaf.pem");
        std::fs::write(&leaf_der, chain[0].as_ref()).unwrap();
        let o = Command::new("openssl")
            .args(["x509", "-inform", "DER", "-in"])
            .arg(&leaf_der)
            .arg("-out")
            .arg(&leaf_pem)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let o = Command::new("openssl")
            .args(["verify", "-x509_strict", "-purpose", "sslserver"])
            .args(["-verify_hostname", "localhost", "-CAfile"])
            .arg(&s.ca_cert)
            .arg(&leaf_pem)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "openssl verify -x509_strict: {}",
            text(&o)
        );

        // Python's ssl with VERIFY_X509_STRICT (the default from Python 3.13 on; set
        // explicitly so older Pythons check the same) through a CONNECT tunnel.
        let script = r#"
import http.client, ssl, sys
proxy, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
ctx.verify_flags |= ssl.VERIFY_X509_STRICT
host, pport = proxy.rsplit(":", 1)
c = http.client.HTTPSConnection(host, int(pport), context=ctx, timeout=20)
c.set_tunnel("localhost", port)
c.request("GET", "/static/py")
r = c.getresponse()
body = r.read()
print(sys.version_info[:2], r.status, len(body), int(ctx.verify_flags & ssl.VERIFY_X509_STRICT != 0))
"#;
        let o = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(s.chacha.addr().to_string())
            .arg(s.front.port().to_string())
            .arg(&s.ca_cert)
            .env_remove("NO_PROXY")
            .output()
            .unwrap();
        assert!(o.status.success(), "python strict client: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let want = format!(" 200 {} 1", origin::static_body("/static/py").len());
        assert!(out.trim_end().ends_with(&want), "python said {out:?}");
    });
}
