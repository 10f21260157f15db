//! Startup of the cache index (issue 15, point 4): the snapshot written at a clean stop and
//! loaded at the next start, its rejection when corrupt or stale, and the background scan
//! after a crash (entries served only once verified, fills during the scan kept).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chacha::cache::meta::{self, EntryMeta};
use common::cached::{assert_hit, assert_stored, cache_status, entry_files, fetch, wait_until};
use common::origin::{static_body, STATIC_ETAG, STATIC_LAST_MODIFIED};
use common::{get, with_deadline, Chacha, Origin};

const DEADLINE: Duration = Duration::from_secs(120);
/// Longest wait for a log line (a scan of the test's entries takes well under a second).
const LOG_WAIT: Duration = Duration::from_secs(60);
/// Entries written straight into the dir so that the scan after a crash takes a while.
const FILLERS: usize = 40_000;

fn config() -> String {
    format!(
        "addr: 127.0.0.1:0\nworkers: 2\ndisk:\n  dir: \"{}\"\n  limit: 1GB\n",
        common::chacha::DIR_PLACEHOLDER
    )
}

fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join("index.snapshot")
}

/// The log of the current run (after the last restart marker).
fn this_run(proxy: &Chacha) -> String {
    let log = proxy.log();
    log.rsplit("---- test harness: restart ----")
        .next()
        .unwrap_or("")
        .to_string()
}

fn wait_run_log(proxy: &Chacha, needle: &str) {
    let runs = proxy
        .log()
        .matches("---- test harness: restart ----")
        .count();
    let ok = wait_until(LOG_WAIT, || {
        let log = proxy.log();
        log.matches("---- test harness: restart ----").count() == runs
            && this_run(proxy).contains(needle)
    });
    assert!(ok, "no `{needle}` in this run's log:\n{}", this_run(proxy));
}

/// SIGTERM, and the clean stop's exit.
fn stop(proxy: &mut Chacha) {
    proxy.sigterm();
    let status = proxy.wait_exit(LOG_WAIT).expect("chacha did not stop");
    assert!(status.success(), "{status:?}");
}

fn kill(proxy: &mut Chacha) {
    proxy.signal(libc::SIGKILL);
    assert!(
        proxy.wait_exit(LOG_WAIT).is_some(),
        "chacha survived SIGKILL"
    );
    assert!(
        common::chacha::wait_port_free(proxy.addr(), LOG_WAIT),
        "the killed process's port stays bound"
    );
}

fn store_static(proxy: &Chacha, origin: &Origin, path: &str) {
    let r = fetch(proxy.addr(), get(&origin.authority(), path));
    assert_stored(&r);
    assert_eq!(r.body, static_body(path));
}

fn assert_hit_static(addr: SocketAddr, origin: &Origin, path: &str) {
    let r = fetch(addr, get(&origin.authority(), path));
    assert_hit(&r);
    assert_eq!(r.body, static_body(path), "{path}");
}

fn full_bodies_for(origin: &Origin, path: &str) -> u64 {
    origin
        .requests()
        .iter()
        .filter(|r| r.path() == path && r.header("if-none-match").is_none())
        .count() as u64
}

/// An entry file for `url` as chacha stores `/static/...` answers, written directly.
fn entry_bytes(url: &str, body: &[u8]) -> Vec<u8> {
    let m = EntryMeta {
        key: url.to_string(),
        status: 200,
        headers: vec![
            ("etag".into(), STATIC_ETAG.as_bytes().to_vec()),
            (
                "last-modified".into(),
                STATIC_LAST_MODIFIED.as_bytes().to_vec(),
            ),
        ],
        body_len: body.len() as u64,
        stored_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    };
    let mut out = m.encode();
    out.extend_from_slice(body);
    out
}

fn write_entry(dir: &Path, url: &str, bytes: &[u8]) -> PathBuf {
    let path = meta::entry_path(dir, meta::key_hash(url));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `name value` of a Prometheus sample from chacha's `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let r = fetch(addr, "GET /metrics HTTP/1.1\r\nHost: chacha\r\n\r\n");
    let text = String::from_utf8_lossy(&r.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}")) as u64
}

#[test]
fn snapshot_is_written_at_a_clean_stop_and_loaded_at_start() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let mut proxy = Chacha::start(&config());
        let paths = ["/static/s1", "/static/s2", "/static/s3"];
        for p in paths {
            store_static(&proxy, &origin, p);
        }
        let dir = proxy.dir().to_path_buf();
        assert!(wait_until(LOG_WAIT, || entry_files(&dir).len() == 3));

        stop(&mut proxy);
        assert!(
            proxy.log().contains("index snapshot written: 3 entries"),
            "{}",
            proxy.log()
        );
        assert!(snapshot_path(&dir).is_file());

        let addr = proxy.restart();
        wait_run_log(&proxy, "index snapshot loaded: 3 entries");
        let run = this_run(&proxy);
        assert!(!run.contains("background scan"), "{run}");
        // Deleted once read: a crash from now on finds none and scans.
        assert!(!snapshot_path(&dir).exists());
        for p in paths {
            assert_hit_static(addr, &origin, p);
        }
        let s = origin.settled();
        assert_eq!((s.full_bodies, s.not_modified), (3, 3));
        // The index is complete: the next clean stop writes a snapshot again.
        stop(&mut proxy);
        assert!(snapshot_path(&dir).is_file());
    });
}

#[test]
fn a_corrupt_or_stale_snapshot_is_rejected_and_the_files_are_scanned() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let mut proxy = Chacha::start(&config());
        let dir = proxy.dir().to_path_buf();
        store_static(&proxy, &origin, "/static/a");
        assert!(wait_until(LOG_WAIT, || entry_files(&dir).len() == 1));
        stop(&mut proxy);

        // Corrupt: one flipped byte fails the checksum.
        let snap = snapshot_path(&dir);
        let mut bytes = std::fs::read(&snap).expect("a snapshot after the clean stop");
        let last = bytes.len() - 9;
        bytes[last] ^= 0x40;
        std::fs::write(&snap, &bytes).unwrap();
        let addr = proxy.restart();
        wait_run_log(&proxy, "index snapshot rejected: checksum mismatch");
        wait_run_log(&proxy, "cache scan done: 1 entries");
        assert!(!snap.exists(), "a rejected snapshot is deleted");
        assert_hit_static(addr, &origin, "/static/a");

        // Stale: a snapshot of an earlier state of the files. Written at a clean stop,
        // kept aside; the next run (which loads and deletes it) stores /static/b and is
        // killed; the copy put back no longer describes the files.
        stop(&mut proxy);
        let stale = std::fs::read(&snap).expect("snapshot");
        proxy.restart();
        wait_run_log(&proxy, "index snapshot loaded: 1 entries");
        store_static(&proxy, &origin, "/static/b");
        assert!(wait_until(LOG_WAIT, || entry_files(&dir).len() == 2));
        kill(&mut proxy);
        std::fs::write(&snap, &stale).unwrap();
        let addr = proxy.restart();
        wait_run_log(
            &proxy,
            "index snapshot rejected: entry files changed since it was written",
        );
        wait_run_log(&proxy, "cache scan done: 2 entries");
        // Both entries are the files' (a stale index would not know /static/b: a miss).
        assert_hit_static(addr, &origin, "/static/a");
        assert_hit_static(addr, &origin, "/static/b");
        assert_eq!(full_bodies_for(&origin, "/static/b"), 1);
        assert_eq!(full_bodies_for(&origin, "/static/a"), 1);
    });
}

#[test]
fn after_a_crash_a_background_scan_serves_entries_once_verified_and_keeps_fills() {
    with_deadline(DEADLINE, || {
        let origin = Origin::standard();
        let mut proxy = Chacha::start(&config());
        let dir = proxy.dir().to_path_buf();
        let auth = origin.authority();
        store_static(&proxy, &origin, "/static/kept");
        assert!(wait_until(LOG_WAIT, || entry_files(&dir).len() == 1));
        kill(&mut proxy);
        assert!(!snapshot_path(&dir).exists(), "no snapshot after SIGKILL");

        // Many valid entries (empty bodies: one page each), so the scan takes a while.
        for i in 0..FILLERS {
            let url = format!("http://{auth}/static/filler/{i}");
            write_entry(&dir, &url, &entry_bytes(&url, b""));
        }
        // An entry file with bytes past its body: the scan must delete it, and it must
        // never be served, before the scan or after.
        let bad_path = "/static/bad";
        let bad_url = origin.url(bad_path);
        let mut bad = entry_bytes(&bad_url, b"stale body");
        bad.extend_from_slice(b"junk after the body");
        let bad_file = write_entry(&dir, &bad_url, &bad);
        let bad_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&bad_file).unwrap());

        let addr = proxy.restart();
        wait_run_log(&proxy, "no index snapshot");
        wait_run_log(&proxy, "serving now");
        // Served at once, from the origin, while the scan runs; its fill replaces the file.
        let r = fetch(addr, get(&auth, bad_path));
        let scan_done_before = this_run(&proxy).contains("cache scan done");
        assert_eq!(r.body, static_body(bad_path), "{}", cache_status(&r));
        assert_stored(&r);
        assert!(
            !scan_done_before,
            "the first request was answered only after the scan ended:\n{}",
            this_run(&proxy)
        );
        wait_run_log(&proxy, "cache scan done");
        let run = this_run(&proxy);
        assert!(
            run.find("listening on").unwrap() < run.find("cache scan done").unwrap(),
            "chacha listened only after the scan:\n{run}"
        );

        // The fill made during the scan survived it: its file is there and is a hit.
        let file = meta::entry_path(&dir, meta::key_hash(&bad_url));
        let now = std::fs::metadata(&file).expect("the fill's file survived the scan");
        assert_ne!(std::os::unix::fs::MetadataExt::ino(&now), bad_inode);
        assert_hit_static(addr, &origin, bad_path);
        assert_eq!(full_bodies_for(&origin, bad_path), 1);
        // Verified entries are served: the one stored before the crash and the fillers.
        assert_hit_static(addr, &origin, "/static/kept");
        let filler = format!("http://{auth}/static/filler/7");
        let r = fetch(
            addr,
            format!("GET {filler} HTTP/1.1\r\nHost: {auth}\r\n\r\n"),
        );
        assert_hit(&r);
        assert!(r.body.is_empty());
        assert_eq!(full_bodies_for(&origin, "/static/kept"), 1);
        assert_eq!(full_bodies_for(&origin, "/static/filler/7"), 0);

        // The accounting is the disk's once the scan is done.
        let files = entry_files(&dir);
        assert_eq!(files.len(), FILLERS + 2);
        let bytes: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert_eq!(metric(addr, "chacha_cache_entries"), files.len() as u64);
        assert_eq!(metric(addr, "chacha_disk_used_bytes"), bytes);
    });
}
