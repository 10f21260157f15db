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

        // Python's ssl with VERIFY_X509_STRICT through a CONNECT tunnel. From Python 3.13
        // on it is in the default context (checked, not set); older Pythons set it.
        let script = r#"
import http.client, ssl, sys
proxy, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
default_strict = int(ctx.verify_flags & ssl.VERIFY_X509_STRICT != 0)
if sys.version_info < (3, 13):
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
host, pport = proxy.rsplit(":", 1)
c = http.client.HTTPSConnection(host, int(pport), context=ctx, timeout=20)
c.set_tunnel("localhost", port)
c.request("GET", "/static/py")
r = c.getresponse()
body = r.read()
strict = int(ctx.verify_flags & ssl.VERIFY_X509_STRICT != 0)
print("%d.%d" % sys.version_info[:2], default_strict, strict, r.status, len(body))
"#;
        let mut ran = Vec::new();
        for python in ["python3.13", "python3"] {
            let runs = Command::new(python)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !runs {
                continue;
            }
            let o = Command::new(python)
                .arg("-c")
                .arg(script)
                .arg(s.chacha.addr().to_string())
                .arg(s.front.port().to_string())
                .arg(&s.ca_cert)
                .output()
                .unwrap();
            assert!(o.status.success(), "{python} strict client: {}", text(&o));
            let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let f: Vec<&str> = out.split_whitespace().collect();
            assert_eq!(f.len(), 5, "{python} said {out:?}");
            let (major, minor) = f[0].split_once('.').unwrap();
            let v: (u32, u32) = (major.parse().unwrap(), minor.parse().unwrap());
            if v >= (3, 13) {
                assert_eq!(f[1], "1", "Python {} is strict by default", f[0]);
            }
            let len = origin::static_body("/static/py").len().to_string();
            assert_eq!(&f[2..], ["1", "200", len.as_str()], "{python} said {out:?}");
            ran.push(out);
        }
        assert!(!ran.is_empty(), "no python3 ran");
        eprintln!("strict Python clients: {ran:?}");
    });
}

/// The unprivileged user the `--user` tests drop to.
const TEST_USER: &str = "chacha-test";
/// A supplementary group of [`TEST_USER`]: the drop must take it along.
const TEST_GROUP: &str = "chacha-test-extra";

/// (uid, gid, supplementary gid) of [`TEST_USER`], created if missing (system user, no
/// home). These tests need root, as `--user` does; CI runs as root.
fn test_user() -> (u32, u32, u32) {
    // SAFETY: getter without arguments.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the --user tests must run as root"
    );
    let id = |args: &[&str]| -> Option<u32> {
        let o = Command::new("id").args(args).arg(TEST_USER).output().ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    let ensure = |check: &[&str], create: &[&str]| {
        let exists = Command::new("getent")
            .args(check)
            .output()
            .unwrap()
            .status
            .success();
        if !exists {
            let o = Command::new(create[0]).args(&create[1..]).output().unwrap();
            // A parallel test may have created it meanwhile.
            let again = Command::new("getent").args(check).output().unwrap();
            assert!(again.status.success(), "{create:?}: {}", text(&o));
        }
    };
    ensure(
        &["group", TEST_GROUP],
        &["groupadd", "--system", TEST_GROUP],
    );
    ensure(
        &["passwd", TEST_USER],
        &[
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--groups",
            TEST_GROUP,
            TEST_USER,
        ],
    );
    let extra = Command::new("getent")
        .args(["group", TEST_GROUP])
        .output()
        .unwrap();
    let extra = String::from_utf8_lossy(&extra.stdout).to_string();
    let extra_gid: u32 = extra.split(':').nth(2).unwrap().parse().unwrap();
    if !extra
        .trim_end()
        .split(':')
        .nth(3)
        .unwrap_or("")
        .split(',')
        .any(|m| m == TEST_USER)
    {
        let o = Command::new("usermod")
            .args(["-aG", TEST_GROUP, TEST_USER])
            .output()
            .unwrap();
        assert!(o.status.success(), "usermod: {}", text(&o));
    }
    (id(&["-u"]).unwrap(), id(&["-g"]).unwrap(), extra_gid)
}

/// One thread's name and its Uid, Gid (real, effective, saved, fs) and Groups lines.
type ThreadIds = (String, Vec<u32>, Vec<u32>, Vec<u32>);

/// [`ThreadIds`] of every thread of `pid`.
fn thread_ids(pid: u32) -> Vec<ThreadIds> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let Ok(status) = std::fs::read_to_string(path.join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |name: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or("")
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect()
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("")
            .trim()
            .to_string();
        let mut groups = field("Groups:");
        groups.sort();
        out.push((name, field("Uid:"), field("Gid:"), groups));
    }
    out
}

/// Every thread runs as (uid, gid) with exactly `groups`, real, effective, saved and fs ids.
fn assert_all_threads_dropped(pid: u32, uid: u32, gid: u32, groups: &[u32]) -> usize {
    let threads = thread_ids(pid);
    for (name, u, g, gs) in &threads {
        assert_eq!(u, &[uid; 4], "thread {name}: Uid");
        assert_eq!(g, &[gid; 4], "thread {name}: Gid");
        assert_eq!(gs, groups, "thread {name}: Groups");
    }
    threads.len()
}

/// Owners of everything under `dir` (the dir itself included).
fn owners(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = vec![(dir.to_path_buf(), std::fs::metadata(dir).unwrap().uid())];
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(owners(&e.path()));
        } else {
            out.push((e.path(), m.uid()));
        }
    }
    out
}

#[test]
fn run_user_drops_root_in_every_thread_and_still_serves_and_caches() {
    with_deadline(DEADLINE, || {
        let (uid, gid, extra_gid) = test_user();
        let mut groups = vec![gid, extra_gid];
        groups.sort();
        let dir = TempDir::new("user");
        // The CA key is root's (0600): only a CA loaded before the drop can mint.
        let (ca_cert, ca_key) = create_ca(dir.path(), &[]);
        let origin_ca = TestCa::new("origin test CA");
        let (origin_ca_cert, _) = origin_ca.write(dir.path(), "origin-ca");
        let origin = Origin::start(origin::standard_routes);
        let front = TlsFront::start(origin.addr(), origin_ca.server_config(&["localhost"]));
        // A cache dir that does not exist yet: chacha creates it and gives it to the user.
        let data = dir.path().join("cache");
        let yaml = format!(
            "addr: 127.0.0.1:0\nworkers: 2\nrun-as-root: false\ndisk:\n  dir: \"{}\"\n  limit: 100MB\n\
             tls-interceptor:\n  cert: \"{}\"\n  key: \"{}\"\n  ports: [{}]\n",
            data.display(),
            ca_cert.display(),
            ca_key.display(),
            front.port()
        );
        let chacha = Chacha::start_with_args(
            &yaml,
            "info",
            &[("SSL_CERT_FILE", origin_ca_cert.to_str().unwrap())],
            &["--user", TEST_USER],
        );
        assert!(chacha
            .log()
            .contains(&format!("dropped root: running as user {TEST_USER}")));
        let n = assert_all_threads_dropped(chacha.pid(), uid, gid, &groups);
        assert!(n >= 3, "main thread and 2 workers, saw {n}");

        // Plain HTTP: a fill, then a hit.
        let authority = origin.addr().to_string();
        for _ in 0..2 {
            let r = common::request(chacha.addr(), common::get(&authority, "/static/user"))
                .expect("GET through chacha");
            assert_eq!(r.status(), 200);
            assert_eq!(r.body, origin::static_body("/static/user"));
        }
        assert_eq!(
            origin.settled().full_bodies,
            1,
            "second GET was served from the cache"
        );
        // HTTPS through the interception CA whose key only root can read.
        let mut t = Tunnel::open(
            chacha.addr(),
            TunnelOpts {
                authority: &format!("localhost:{}", front.port()),
                server_name: "localhost",
                client: client_trusting(&ca_cert),
                eager: false,
            },
        )
        .expect("tunnel");
        let r = t
            .request(get_in_tunnel("localhost", "/static/user-tls"))
            .expect("GET in tunnel");
        assert_eq!(r.status(), 200);
        assert_eq!(r.body, origin::static_body("/static/user-tls"));

        // Threads started since (blocking pool, io_uring helpers) are no more privileged.
        assert_all_threads_dropped(chacha.pid(), uid, gid, &groups);
        // Everything in the cache belongs to the user, entries included.
        let owned = owners(&data);
        assert!(owned.len() > 2, "{owned:?}");
        for (p, owner) in &owned {
            assert_eq!(*owner, uid, "{} is owned by {owner}", p.display());
        }
        use std::os::unix::fs::MetadataExt;
        let key_meta = std::fs::metadata(&ca_key).unwrap();
        assert_eq!(
            (key_meta.uid(), mode(&ca_key)),
            (0, 0o600),
            "the CA key stayed root's"
        );
    });
}

/// Runs `chacha run -f <yaml file> <args>` until it exits (killed after `limit`).
fn run_expecting_exit(yaml: &str, args: &[&str], limit: Duration) -> Output {
    let dir = TempDir::new("user-err");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut child = Command::new(common::chacha::BIN)
        .arg("run")
        .args(args)
        .arg("-f")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// The ERROR lines of a run's log.
fn error_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.contains("ERROR"))
        .map(str::to_string)
        .collect()
}

#[test]
fn run_user_errors_are_one_clear_line() {
    with_deadline(DEADLINE, || {
        let (_, _, _) = test_user();
        let limit = Duration::from_secs(20);
        let dir = TempDir::new("user-errors");

        // No such user: exit 2 before anything listens.
        let yaml = "addr: 127.0.0.1:0\nworkers: 1\n";
        let o = run_expecting_exit(yaml, &["--user", "no-such-user-chacha"], limit);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let errs = error_lines(&o);
        assert_eq!(errs.len(), 1, "{}", text(&o));
        assert!(
            errs[0].contains("--user no-such-user-chacha: no such user"),
            "{errs:?}"
        );
        assert!(!text(&o).contains("listening on"));

        // A cache dir the user cannot write: exit 1, naming the dir and the user.
        let data = dir.path().join("root-only");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let yaml = format!(
            "addr: 127.0.0.1:0\nworkers: 1\ndisk:\n  dir: \"{}\"\n  limit: 10MB\n",
            data.display()
        );
        let o = run_expecting_exit(&yaml, &["--user", TEST_USER], limit);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let errs = error_lines(&o);
        assert_eq!(errs.len(), 1, "{}", text(&o));
        assert!(
            errs[0].contains(&format!(
                "{} is not writable by user {TEST_USER}",
                data.display()
            )),
            "{errs:?}"
        );
        assert!(!text(&o).contains("listening on"));
        assert_eq!(
            std::fs::read_dir(&data).unwrap().count(),
            0,
            "nothing created in it"
        );

        // A cache dir that is the user's but holds a directory a root run created
        // (e.g. the store's temp dir): also refused (fills would fail later), naming it.
        let mixed = dir.path().join("mixed");
        std::fs::create_dir(&mixed).unwrap();
        let chown = Command::new("chown")
            .arg(format!("{TEST_USER}:"))
            .arg(&mixed)
            .output()
            .unwrap();
        assert!(chown.status.success(), "{}", text(&chown));
        std::fs::create_dir(mixed.join("tmp")).unwrap();
        std::fs::set_permissions(mixed.join("tmp"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let o = run_expecting_exit(
            &format!(
                "addr: 127.0.0.1:0\nworkers: 1\ndisk:\n  dir: \"{}\"\n  limit: 10MB\n",
                mixed.display()
            ),
            &["--user", TEST_USER],
            limit,
        );
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let errs = error_lines(&o);
        assert_eq!(errs.len(), 1, "{}", text(&o));
        assert!(
            errs[0].contains(&format!(
                "{} is not writable by user {TEST_USER}",
                mixed.join("tmp").display()
            )) && errs[0].contains(&format!("chown -R {TEST_USER}")),
            "{errs:?}"
        );

        // run-as-root must be a boolean; `chacha check` names the key.
        let o = common::run_to_exit("check", "addr: 127.0.0.1:0\nrun-as-root: maybe\n", limit);
        assert_eq!(o.code(), Some(2), "{o:?}");
        assert!(o.stderr.contains("run-as-root"), "{o:?}");

        // run-as-root: false without --user: refused, exit 2.
        let o = run_expecting_exit("addr: 127.0.0.1:0\nrun-as-root: false\n", &[], limit);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let errs = error_lines(&o);
        assert_eq!(errs.len(), 1, "{}", text(&o));
        assert!(errs[0].contains("refusing to run as root"), "{errs:?}");
        assert!(!text(&o).contains("listening on"));
    });
}

/// The unit as shipped.
const UNIT: &str = include_str!("../examples/chacha.service");
/// Where the shipped unit expects the binary.
const UNIT_BIN: &str = "/usr/local/bin/chacha";

/// `systemd-analyze verify` on `unit` written as `<dir>/chacha.service`; (success,
/// everything it printed).
fn analyze_verify(dir: &Path, unit: &str) -> (bool, String) {
    let path = dir.join("chacha.service");
    std::fs::write(&path, unit).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        // Only this unit: not the host's default.target and its dependencies.
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), said)
}

/// The value of `Key=` in the unit (the last one, as systemd reads it).
fn directive<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_and_is_hardened() {
    require("systemd-analyze", "--version");
    with_deadline(DEADLINE, || {
        // What the issue asks of the unit.
        let exec = directive(UNIT, "ExecStart").expect("ExecStart");
        assert!(
            exec.starts_with(UNIT_BIN) && exec.contains(" run "),
            "{exec}"
        );
        assert!(exec.contains("--user "), "drops root: {exec}");
        assert_eq!(
            directive(UNIT, "ExecReload"),
            Some("/bin/kill -HUP $MAINPID")
        );
        assert_eq!(directive(UNIT, "ProtectSystem"), Some("strict"));
        assert_eq!(directive(UNIT, "NoNewPrivileges"), Some("yes"));
        assert_eq!(directive(UNIT, "ReadWritePaths"), Some("/var/cache/chacha"));
        let nofile: u64 = directive(UNIT, "LimitNOFILE").unwrap().parse().unwrap();
        assert!(
            nofile >= 65_536,
            "LimitNOFILE={nofile} is too low for thousands of clients"
        );

        // systemd-analyze checks that ExecStart's binary exists: point the unit at the
        // binary under test, the rest unchanged.
        let dir = TempDir::new("unit");
        let unit = UNIT.replace(UNIT_BIN, common::chacha::BIN);
        let (ok, said) = analyze_verify(dir.path(), &unit);
        // It exits 0 even on unknown keys or bad values: it must say nothing at all.
        assert!(
            ok && said.trim().is_empty(),
            "systemd-analyze verify:\n{said}"
        );

        // The check can fail: a typo in a key and a bad value are reported.
        let broken = unit.replace(
            "ProtectSystem=strict",
            "ProtectSystem=bogus\nProtectSytem=yes",
        );
        let (_, said) = analyze_verify(dir.path(), &broken);
        assert!(
            said.contains("ProtectSytem") && said.contains("bogus"),
            "{said}"
        );
    });
}

/// `systemctl reload` (the unit's ExecReload) sends SIGHUP. It runs the live reload
/// (tests/reload.rs) and must not stop the proxy (SIGHUP's default action would).
#[test]
fn sighup_is_logged_and_ignored_not_fatal() {
    with_deadline(DEADLINE, || {
        let mut proxy = Chacha::start(&common::config(""));
        proxy.signal(libc::SIGHUP);
        assert!(
            proxy.wait_log("received SIGHUP", Duration::from_secs(10)),
            "no SIGHUP log line:\n{}",
            proxy.log()
        );
        let resp = common::request(proxy.addr(), "GET /health HTTP/1.1\r\nHost: chacha\r\n\r\n")
            .expect("chacha still answers after SIGHUP");
        assert_eq!(resp.status(), 200);
        assert!(proxy.wait_exit(Duration::from_millis(1)).is_none());
        proxy.sigterm();
        let status = proxy
            .wait_exit(Duration::from_secs(10))
            .expect("exits on SIGTERM");
        assert_eq!(status.code(), Some(0));
    });
}
