//! Startup index rebuild with 100,000 cache entries: `cargo bench --bench startup`.
//!
//! Writes ENTRIES valid entry files (4 KiB bodies, typical stored headers, mtimes spread
//! over a day) into a fresh dir under the system temp dir, then times:
//!   1. `cache::scan::rebuild` into a fresh `Index` (limit above the total), right after
//!      the files were written (page cache warm; writeback of them may still be running);
//!   2. `cache::store::Store::open` on the same dir (what `chacha run` does), warm;
//!   3. `Store::open` again after syncfs + posix_fadvise(DONTNEED) on every entry file:
//!      the entry pages must come from the disk again, while the kernel's inode and dentry
//!      caches stay warm (dropping those needs /proc/sys/vm/drop_caches, which would also
//!      disturb everything else on a shared machine).
//!
//! The dir is deleted at the end.
//!
//! Last measured (2026-11-26, shared 2-core VM, ext4 on virtio, load average ~2-4):
//!   wrote 100000 entries (781.2 MiB) in 5.6s
//!   scan::rebuild, first read after writing: 100000 entries, 781.2 MiB, 695 ms (6.9 µs/entry)
//!   Store::open, warm: 100000 entries, 781.2 MiB, 656 ms (6.6 µs/entry)
//!   Store::open, entry pages cold: 100000 entries, 781.2 MiB, 4027 ms (40.3 µs/entry)
//! An earlier run under heavier load: 4939 ms, 787 ms and 5734 ms. So a
//! restart with 100,000 entries takes well under a second when the entries are cached and
//! ~4-6 s when every header must come from this VM's disk (one 4 KiB read per file).

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chacha::cache::index::Index;
use chacha::cache::meta::{self, EntryMeta};
use chacha::cache::scan::{self, ScanReport};
use chacha::cache::store::Store;

const ENTRIES: usize = 100_000;
const BODY_LEN: usize = 4096;
/// Threads writing the entries (the machine has 2 cores).
const WRITERS: usize = 2;
/// Entry mtimes are spread over this many seconds before now, so the recency sort has
/// real work to do.
const MTIME_SPREAD_SECS: u64 = 86_400;
/// Far above the total, so nothing is evicted during the rebuild.
const LIMIT: u64 = 1 << 40;

/// The dir under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn key(i: usize) -> String {
    format!("https://ghcr.io/v2/cirruslabs/macos-image/blobs/sha256:{i:064x}")
}

fn entry_bytes(i: usize, now: u64) -> Vec<u8> {
    let m = EntryMeta {
        key: key(i),
        status: 200,
        headers: vec![
            ("content-type".into(), b"application/octet-stream".to_vec()),
            ("content-length".into(), BODY_LEN.to_string().into_bytes()),
            ("etag".into(), format!("\"{i:016x}\"").into_bytes()),
            (
                "last-modified".into(),
                b"Tue, 01 Oct 2024 12:00:00 GMT".to_vec(),
            ),
            ("cache-control".into(), b"public, max-age=31536000".to_vec()),
        ],
        body_len: BODY_LEN as u64,
        stored_at: now,
    };
    let mut out = m.encode();
    out.extend((0..BODY_LEN).map(|b| (b ^ i) as u8));
    out
}

/// Writes entries `w, w + WRITERS, ...` with their mtimes; returns bytes written.
fn write_entries(dir: &Path, w: usize, now: u64) -> u64 {
    let mut bytes = 0;
    for i in (w..ENTRIES).step_by(WRITERS) {
        let path = meta::entry_path(dir, meta::key_hash(&key(i)));
        let data = entry_bytes(i, now);
        let mut f = File::create(&path).expect("create entry");
        f.write_all(&data).expect("write entry");
        let age = (i as u64 * 7919) % MTIME_SPREAD_SECS;
        f.set_modified(UNIX_EPOCH + Duration::from_secs(now - age))
            .expect("set mtime");
        bytes += data.len() as u64;
    }
    bytes
}

/// Flushes the dir's filesystem, then drops the page cache of every entry file.
fn evict_entry_pages(dir: &Path) -> Duration {
    let t = Instant::now();
    let d = File::open(dir).expect("open dir");
    // SAFETY: syncfs on an fd we own; dirty pages cannot be dropped, so write them first.
    assert_eq!(unsafe { libc::syncfs(d.as_raw_fd()) }, 0, "syncfs");
    for i in 0..ENTRIES {
        let f = File::open(meta::entry_path(dir, meta::key_hash(&key(i)))).expect("open");
        // SAFETY: fadvise on an fd we own; it only drops clean cached pages of this file.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    t.elapsed()
}

fn print_report(what: &str, r: &ScanReport, elapsed: Duration) {
    assert_eq!((r.entries, r.removed), (ENTRIES, 0), "{what}: {r:?}");
    println!(
        "{what}: {} entries, {:.1} MiB, removed {}, {:.0} ms ({:.1} µs/entry)",
        r.entries,
        r.bytes as f64 / (1 << 20) as f64,
        r.removed,
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / r.entries as f64
    );
}

fn main() {
    let total = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let dir = TempDir(
        std::env::temp_dir().join(format!("chacha-bench-startup-{}-{now}", std::process::id())),
    );
    // An empty rebuild creates the fan-out layout the writers need.
    scan::rebuild(&dir.0, &Index::new(LIMIT)).expect("create layout");

    let t = Instant::now();
    let root: &Path = &dir.0;
    let bytes: u64 = std::thread::scope(|s| {
        let ws: Vec<_> = (0..WRITERS)
            .map(|w| s.spawn(move || write_entries(root, w, now)))
            .collect();
        ws.into_iter().map(|w| w.join().expect("writer")).sum()
    });
    println!(
        "wrote {ENTRIES} entries ({:.1} MiB) in {:.1?}",
        bytes as f64 / (1 << 20) as f64,
        t.elapsed()
    );

    let index = Index::new(LIMIT);
    let t = Instant::now();
    let r = scan::rebuild(&dir.0, &index).expect("rebuild");
    let elapsed = t.elapsed();
    assert_eq!(index.len(), ENTRIES);
    assert_eq!(r.bytes, bytes);
    print_report("scan::rebuild, first read after writing", &r, elapsed);

    let t = Instant::now();
    let (store, r) = Store::open(&dir.0, LIMIT).expect("Store::open");
    let elapsed = t.elapsed();
    assert_eq!(store.index.len(), ENTRIES);
    print_report("Store::open, warm", &r, elapsed);
    drop(store);

    let evict = evict_entry_pages(&dir.0);
    println!("syncfs + fadvise(DONTNEED) on every entry: {evict:.1?}");
    let t = Instant::now();
    let (store, r) = Store::open(&dir.0, LIMIT).expect("Store::open");
    let elapsed = t.elapsed();
    assert_eq!(store.index.len(), ENTRIES);
    print_report("Store::open, entry pages cold", &r, elapsed);

    println!("total {:.1?} (deleting the dir next)", total.elapsed());
}
