//! Runs the real `chacha` binary: writes the test's YAML config into a fresh temp dir,
//! spawns `chacha run`, collects its stderr and waits for the `listening on` line.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const BIN: &str = env!("CARGO_BIN_EXE_chacha");
/// How long a start may take before the test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Placeholder in test configs for the fresh data dir.
pub const DIR_PLACEHOLDER: &str = "@DIR@";
/// How often `wait_exit` polls the child (std has no wait-with-timeout).
const EXIT_POLL: Duration = Duration::from_millis(10);
/// Lines of log shown when a test panics.
const LOG_TAIL_LINES: usize = 200;

/// Logs collected from the process, with a condvar for waiting on a line.
#[derive(Default)]
struct Log {
    text: Mutex<String>,
    grew: Condvar,
}

impl Log {
    fn push(&self, line: &str) {
        if std::env::var_os("CHACHA_TEST_ECHO").is_some() {
            eprintln!("[chacha] {line}");
        }
        let mut t = self.text.lock().unwrap();
        t.push_str(line);
        t.push('\n');
        self.grew.notify_all();
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "chacha-it-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What [`Chacha`] adds to a config that says nothing about destinations: the tests'
/// origins live on loopback, which the destination policy denies by default (the
/// proxy's own port stays denied whatever this says).
pub const ALLOW_LOOPBACK: &str = "access:\n  destinations:\n    allow: [127.0.0.0/8]\n";

/// `yaml` with loopback destinations allowed, unless it mentions `destinations` itself
/// (a test of the policy states it, e.g. `destinations: {}` for the defaults): the
/// [`ALLOW_LOOPBACK`] block appended when there is no top-level `access:` key, else its
/// `destinations:` lines put right under a block-style `access:` line.
pub fn with_loopback_allowed(yaml: &str) -> String {
    if yaml.contains("destinations") {
        return yaml.to_string();
    }
    if let Some(at) = yaml
        .find("\naccess:\n")
        .map(|i| i + 1)
        .or_else(|| yaml.starts_with("access:\n").then_some(0))
    {
        let after = at + "access:\n".len();
        let mut out = yaml[..after].to_string();
        out.push_str(&ALLOW_LOOPBACK["access:\n".len()..]);
        out.push_str(&yaml[after..]);
        return out;
    }
    let mut out = yaml.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(ALLOW_LOOPBACK);
    out
}

/// Writes `yaml` (with `@DIR@` → `<root>/data`, created empty) to `<root>/config.yaml`.
fn write_config(root: &TempDir, yaml: &str) -> (PathBuf, PathBuf) {
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = root.path().join("config.yaml");
    std::fs::write(
        &config,
        yaml.replace(DIR_PLACEHOLDER, data.to_str().unwrap()),
    )
    .unwrap();
    (config, data)
}

fn command(args: &[&str], config: &Path, rust_log: &str, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("-f")
        .arg(config)
        .env("RUST_LOG", rust_log)
        .env_remove("RUST_LOG_STYLE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe. If the spawning thread dies (e.g. a test
    // thread abandoned at its deadline and the harness exits) the proxy dies with it.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// A running `chacha run`; killed and its temp dir removed on drop.
pub struct Chacha {
    child: Child,
    root: TempDir,
    config: PathBuf,
    data: PathBuf,
    log: Arc<Log>,
    addr: SocketAddr,
    rust_log: String,
    /// Extra environment variables, kept for restarts.
    env: Vec<(String, String)>,
    /// Extra `chacha run` arguments (e.g. `--user NAME`), kept for restarts.
    args: Vec<String>,
}

impl Chacha {
    /// Starts with RUST_LOG=info and waits for `listening on`.
    pub fn start(yaml: &str) -> Chacha {
        Chacha::start_with_log(yaml, "info")
    }

    pub fn start_with_log(yaml: &str, rust_log: &str) -> Chacha {
        Chacha::start_with_env(yaml, rust_log, &[])
    }

    /// Like [`Chacha::start_with_log`] with extra environment variables (e.g.
    /// `SSL_CERT_FILE` for a test CA).
    pub fn start_with_env(yaml: &str, rust_log: &str, env: &[(&str, &str)]) -> Chacha {
        Chacha::start_with_args(yaml, rust_log, env, &[])
    }

    /// Like [`Chacha::start_with_env`] with extra `chacha run` arguments.
    pub fn start_with_args(
        yaml: &str,
        rust_log: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Chacha {
        let root = TempDir::new("run");
        let (config, data) = write_config(&root, &with_loopback_allowed(yaml));
        let log = Arc::new(Log::default());
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, addr) = spawn_ready(&config, rust_log, &log, &env, &args);
        Chacha {
            child,
            root,
            config,
            data,
            log,
            addr,
            rust_log: rust_log.to_string(),
            env,
            args,
        }
    }

    /// The address from the `listening on` line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// The directory `@DIR@` stood for.
    pub fn dir(&self) -> &Path {
        &self.data
    }
    pub fn root(&self) -> &Path {
        self.root.path()
    }
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Everything logged so far (stderr and stdout, all runs).
    pub fn log(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`; false on timeout.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut text = self.log.text.lock().unwrap();
        while !text.contains(needle) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            text = self.log.grew.wait_timeout(text, deadline - now).unwrap().0;
        }
        true
    }

    /// Waits until `needle` occurs at least `n` times in the log.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut text = self.log.text.lock().unwrap();
        while text.matches(needle).count() < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            text = self.log.grew.wait_timeout(text, deadline - now).unwrap().0;
        }
        true
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.child.id());
    }
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM)
    }
    pub fn sigint(&self) {
        self.signal(libc::SIGINT)
    }

    /// Waits for the process to exit; None if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(EXIT_POLL);
        }
    }

    /// Resident set size from /proc/<pid>/status (VmRSS), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id())
    }

    /// Stops the process (SIGTERM, then SIGKILL after 30 s) and starts it again with the
    /// same config and data dir. The new process may listen on a different port.
    pub fn restart(&mut self) -> SocketAddr {
        if self.child.try_wait().expect("try_wait").is_none() {
            self.sigterm();
            if self.wait_exit(Duration::from_secs(30)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        self.log.push("---- test harness: restart ----");
        let (child, addr) = spawn_ready(
            &self.config,
            &self.rust_log,
            &self.log,
            &self.env,
            &self.args,
        );
        self.child = child;
        self.addr = addr;
        addr
    }
}

impl Drop for Chacha {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "---- chacha log (last {} lines) ----\n{}\n----",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Spawns `chacha run` and waits for its `listening on <addr>` line.
fn spawn_ready(
    config: &Path,
    rust_log: &str,
    log: &Arc<Log>,
    env: &[(String, String)],
    args: &[String],
) -> (Child, SocketAddr) {
    let mut run = vec!["run"];
    run.extend(args.iter().map(String::as_str));
    let mut child = command(&run, config, rust_log, env)
        .spawn()
        .expect("spawn chacha");
    let (tx, rx) = mpsc::channel::<Option<SocketAddr>>();
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let l = log.clone();
    thread::spawn(move || {
        let mut ready = Some(tx);
        drain_lines(stderr, |line| {
            l.push(line);
            if let Some(addr) = parse_listening(line) {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Some(addr));
                }
            }
        });
        if let Some(tx) = ready {
            let _ = tx.send(None);
        }
    });
    let l = log.clone();
    thread::spawn(move || drain_lines(stdout, |line| l.push(line)));
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Some(addr)) => (child, addr),
        outcome => {
            let _ = child.kill();
            let status = child.wait();
            if outcome.is_err() {
                // The stderr reader reports its end (None) once it stored the last line.
                let _ = rx.recv_timeout(Duration::from_secs(2));
            }
            panic!(
                "chacha did not report `listening on` ({}; exit {status:?}); log:\n{}",
                if outcome.is_err() {
                    "timed out"
                } else {
                    "stderr closed"
                },
                log.text.lock().unwrap()
            );
        }
    }
}

fn drain_lines(r: impl Read, mut each: impl FnMut(&str)) {
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => each(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n'])),
        }
    }
}

/// Waits until `addr` can be bound (std sets SO_REUSEADDR, as a restart needs: only a
/// listener still open on the port refuses it); false on timeout. The port state is the
/// signal that a killed process's listener is gone.
pub fn wait_port_free(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if std::net::TcpListener::bind(addr).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(EXIT_POLL);
    }
}

/// Finds `listening on <ip:port>` in a log line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    rest.split_whitespace()
        .next()?
        .trim_end_matches([',', ';'])
        .parse()
        .ok()
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Result of running chacha to completion.
#[derive(Debug)]
pub struct Outcome {
    /// None when it was still running at the timeout (it was then killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Runs `chacha <subcommand> -f <config>` with `yaml` as the config and waits for exit.
pub fn run_to_exit(subcommand: &str, yaml: &str, timeout: Duration) -> Outcome {
    let root = TempDir::new(subcommand);
    let (config, _data) = write_config(&root, yaml);
    let mut child = command(&[subcommand], &config, "info", &[])
        .spawn()
        .expect("spawn chacha");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(EXIT_POLL);
    };
    Outcome {
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}
