//! The scan of the cache directory: the index of the entry files when there is no usable
//! snapshot (cache/snapshot.rs), i.e. after a crash. Blocking `std::fs`, on threads of its
//! own: `chacha run` serves while it runs (`Store::scan`).
//!
//! Layout and file format are described in [`super::meta`]. Before serving, the store
//! creates `dir`, `dir/tmp` and the 256 fan-out subdirectories ([`create_layout`]) and
//! empties `dir/tmp` ([`clear_tmp`]: fills interrupted by the last stop or crash). The scan
//! then:
//! 1. reads the prefix of every file in the fan-out subdirectories (up to
//!    [`MAX_SCAN_THREADS`] threads take the directories in turn, each reading a
//!    directory's files in inode order, which is close to their order on disk) and deletes
//!    files that are unreadable, have a bad header, have a length other than
//!    `expected_file_len`, or whose name or subdirectory does not match the hash of the key
//!    they hold;
//! 2. adds each valid entry to the index as soon as it is verified, with recency = file
//!    mtime (the disk layer bumps mtime on access, at most once a minute per entry, so
//!    recency survives a restart approximately). Until then a request for it is a miss: an
//!    entry is never served before the scan read it. An entry a fill committed meanwhile is
//!    newer than any file the scan read for it and is kept ([`Index::insert_scanned`]); a
//!    file is deleted only while no fill of its hash is in flight and only if it is still
//!    the very file found bad (same inode), so a fill's new file is never deleted;
//! 3. at the end sorts the index by recency and evicts the least recently used entries
//!    until the total fits the limit (the disk may hold more than the limit while the scan
//!    runs: files not yet scanned are not counted until they are).
//!
//! Anything else in `dir` (unknown top-level files or directories, subdirectories inside
//! fan-out directories) is left alone with a warning: the cache must never delete data that
//! it did not write just because `dir` was misconfigured.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::fill::Fills;
use super::index::{EntryInfo, Index, Victim};
use super::meta::{self, Decoded};

/// Scan threads. The scan waits on the disk (one header read per file): more reads in
/// flight let a disk serve them faster when the page cache is cold.
pub const MAX_SCAN_THREADS: usize = 16;
/// Fan-out subdirectories: one per first byte of the hash.
const FANOUT: u64 = 256;
/// First read of each entry: one page holds the whole header of typical entries.
const FIRST_READ: usize = meta::BODY_ALIGN as usize;
/// A progress line at most this often.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanReport {
    /// Entries it added to the index (entries filled meanwhile not included).
    pub entries: usize,
    /// Their total size on disk.
    pub bytes: u64,
    /// Files deleted: invalid entries and entries over the limit (and, for [`rebuild`],
    /// temp files).
    pub removed: usize,
    pub elapsed: Duration,
}

/// Progress of a running scan, for its log lines.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub files: usize,
    pub dirs_done: u64,
    pub entries: usize,
    pub removed: usize,
    pub elapsed: Duration,
}

/// A valid entry file found by the scan.
struct Found {
    info: EntryInfo,
    /// Last access (mtime) in unix seconds.
    mtime: u64,
}

/// Why a file must go, and which file it was (device, inode) when it was opened.
struct Bad {
    reason: String,
    id: Option<(u64, u64)>,
}

/// What the scan works on.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub dir: &'a Path,
    pub index: &'a Index,
    /// The fills in flight: a file is never deleted while one of its hash runs.
    pub fills: &'a Fills,
}

#[derive(Default)]
struct Counts {
    files: AtomicUsize,
    dirs_done: AtomicU64,
    entries: AtomicUsize,
    bytes: AtomicU64,
    removed: AtomicUsize,
}

/// Scans every fan-out directory into `t.index` (steps 1-3 of the module docs), calling
/// `progress` at most every [`PROGRESS_EVERY`]. Errors only when a directory cannot be
/// listed; bad files are deleted, not reported.
pub fn scan(t: Target<'_>, progress: &(dyn Fn(Progress) + Sync)) -> io::Result<ScanReport> {
    let start = Instant::now();
    let next = AtomicU64::new(0);
    let counts = Counts::default();
    let last_progress = Mutex::new(start);
    let threads = MAX_SCAN_THREADS.min(FANOUT as usize);
    let results: Vec<io::Result<()>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (next, counts, last_progress) = (&next, &counts, &last_progress);
                std::thread::Builder::new()
                    .name("chacha-scan".into())
                    .spawn_scoped(s, move || -> io::Result<()> {
                        loop {
                            let fan = next.fetch_add(1, Ordering::Relaxed);
                            if fan >= FANOUT {
                                return Ok(());
                            }
                            scan_fanout_dir(t, fan, counts)?;
                            counts.dirs_done.fetch_add(1, Ordering::Relaxed);
                            let mut last = last_progress.lock().unwrap_or_else(|p| p.into_inner());
                            if last.elapsed() >= PROGRESS_EVERY {
                                *last = Instant::now();
                                progress(Progress {
                                    files: counts.files.load(Ordering::Relaxed),
                                    dirs_done: counts.dirs_done.load(Ordering::Relaxed),
                                    entries: counts.entries.load(Ordering::Relaxed),
                                    removed: counts.removed.load(Ordering::Relaxed),
                                    elapsed: start.elapsed(),
                                });
                            }
                        }
                    })
                    .expect("spawn a scan thread")
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("scan worker panicked"))
            .collect()
    });
    for r in results {
        r?;
    }
    // Exact recency order again, then the limit: least recently used first, exactly what
    // the index's eviction would do.
    t.index.resort();
    let (victims, bytes) = t.index.set_limit(t.index.limit());
    let over = delete_victims(t.dir, t.index, &victims);
    let added = counts.entries.load(Ordering::Relaxed);
    Ok(ScanReport {
        entries: added.saturating_sub(victims.len()),
        bytes: counts.bytes.load(Ordering::Relaxed).saturating_sub(bytes),
        removed: counts.removed.load(Ordering::Relaxed) + over,
        elapsed: start.elapsed(),
    })
}

/// The whole startup of an index without snapshot, in the caller's thread: the layout,
/// the temp dir emptied, the scan. For tests and tools; `chacha run` uses
/// `Store::open` and a background `Store::scan`.
pub fn rebuild(dir: &Path, index: &Index) -> io::Result<ScanReport> {
    let start = Instant::now();
    create_layout(dir)?;
    let cleared = clear_tmp(&dir.join(meta::TMP_DIR))?;
    let fills = Fills::default();
    let mut report = scan(
        Target {
            dir,
            index,
            fills: &fills,
        },
        &|_| {},
    )?;
    report.removed += cleared;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Deletes the files of entries evicted from the index, skipping a hash that is back with
/// a newer generation (a newer file lives at that path). Returns how many it deleted.
pub(crate) fn delete_victims(dir: &Path, index: &Index, victims: &[Victim]) -> usize {
    let mut n = 0;
    for v in victims {
        if index
            .peek(v.hash)
            .is_some_and(|e| e.generation > v.generation)
        {
            continue;
        }
        n += remove_counted(&meta::entry_path(dir, v.hash), "over the cache limit");
    }
    n
}

/// Creates `dir`, its temp dir and the 256 fan-out dirs (those missing).
pub(crate) fn create_layout(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir.join(meta::TMP_DIR))?;
    for fan in 0..FANOUT {
        fs::create_dir_all(dir.join(meta::fanout_dir_name(fan << 56)))?;
    }
    Ok(())
}

/// Deletes everything in the temp directory; returns how many top-level items went.
pub(crate) fn clear_tmp(tmp: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(tmp)? {
        let entry = entry?;
        let path = entry.path();
        let res = if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match res {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cache scan: cannot remove {}: {e}", path.display()),
        }
    }
    Ok(removed)
}

/// Checks every file of one fan-out directory, in inode order; valid entries go into the
/// index, invalid files are deleted.
fn scan_fanout_dir(t: Target<'_>, fan: u64, counts: &Counts) -> io::Result<()> {
    let fan_name = meta::fanout_dir_name(fan << 56);
    let fan_dir = t.dir.join(&fan_name);
    let mut files = Vec::new();
    for entry in fs::read_dir(&fan_dir)? {
        let entry = entry?;
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if file_type.is_dir() {
            log::warn!(
                "cache scan: leaving unexpected directory {}",
                entry.path().display()
            );
            continue;
        }
        files.push((entry.ino(), entry.file_name()));
    }
    files.sort_unstable();
    for (_, name) in files {
        counts.files.fetch_add(1, Ordering::Relaxed);
        let path = fan_dir.join(&name);
        let name = name.to_string_lossy();
        match check_entry(&path, &name, &fan_name) {
            Ok(Some(f)) => {
                let size = f.info.size;
                if t.index.insert_scanned(f.info, f.mtime) {
                    counts.entries.fetch_add(1, Ordering::Relaxed);
                    counts.bytes.fetch_add(size, Ordering::Relaxed);
                }
            }
            Ok(None) => {} // gone meanwhile (evicted or replaced)
            Err(Bad { reason, id: None }) => {
                counts
                    .removed
                    .fetch_add(remove_counted(&path, &reason), Ordering::Relaxed);
            }
            Err(Bad {
                reason,
                id: Some(id),
            }) => {
                // The name is an entry's: a fill may be writing that path. Only while none
                // is in flight (none can start meanwhile), only if the index has nothing
                // for it, and only if the path still is the file found bad.
                let hash = parse_file_name(&name).expect("checked by check_entry");
                let n = t
                    .fills
                    .with_idle(hash, || {
                        if t.index.peek(hash).is_some() {
                            return 0;
                        }
                        match fs::symlink_metadata(&path) {
                            Ok(m) if (m.dev(), m.ino()) == id => remove_counted(&path, &reason),
                            _ => 0,
                        }
                    })
                    .unwrap_or(0);
                counts.removed.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Parses a 16-lowercase-hex-digit file name.
fn parse_file_name(name: &str) -> Option<u64> {
    let hash = u64::from_str_radix(name, 16).ok()?;
    (meta::file_name(hash) == name).then_some(hash)
}

/// Validates one entry file: `Ok(None)` if it vanished, `Err` with why it must be deleted.
fn check_entry(path: &Path, name: &str, fan_name: &str) -> Result<Option<Found>, Bad> {
    let bad = |reason: String| Bad { reason, id: None };
    let hash = parse_file_name(name).ok_or_else(|| bad("not an entry file name".into()))?;
    if meta::fanout_dir_name(hash) != fan_name {
        return Err(bad("in the wrong fan-out directory".into()));
    }
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(format!("open: {e}"))),
    };
    let md = file.metadata().map_err(|e| bad(format!("stat: {e}")))?;
    let bad = |reason: String| Bad {
        reason,
        id: Some((md.dev(), md.ino())),
    };
    if !md.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let len = md.len();
    let mut buf = Vec::with_capacity(FIRST_READ);
    let mut want = FIRST_READ;
    let (meta, body_offset) = loop {
        if buf.len() < want {
            let need = (want - buf.len()) as u64;
            (&mut file)
                .take(need)
                .read_to_end(&mut buf)
                .map_err(|e| bad(format!("read: {e}")))?;
        }
        match meta::decode_prefix(&buf).map_err(|e| bad(format!("bad header: {e}")))? {
            Decoded::Complete { meta, body_offset } => break (meta, body_offset),
            Decoded::NeedMore(n) if n > buf.len() && (buf.len() as u64) < len => want = n,
            Decoded::NeedMore(_) => return Err(bad("truncated header".into())),
        }
    };
    if meta::key_hash(&meta.key) != hash {
        return Err(bad("name does not match the key's hash".into()));
    }
    let expected = meta.expected_file_len(body_offset);
    if len != expected {
        return Err(bad(format!("length {len}, expected {expected}")));
    }
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok(Some(Found {
        info: EntryInfo {
            hash,
            size: len,
            generation: 0,
        },
        mtime,
    }))
}

/// Deletes a file found invalid or over the limit; 1 if it was deleted by us.
fn remove_counted(path: &Path, reason: &str) -> usize {
    log::debug!("cache scan: removing {} ({reason})", path.display());
    match fs::remove_file(path) {
        Ok(()) => 1,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => {
            log::warn!("cache scan: cannot remove {}: {e}", path.display());
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::meta::EntryMeta;
    use std::io::Write;
    use std::path::PathBuf;
    use std::time::SystemTime;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> Self {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let p = std::env::temp_dir()
                .join(format!("chacha-scan-{name}-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn entry_bytes(key: &str, body: &[u8]) -> Vec<u8> {
        let m = EntryMeta {
            key: key.into(),
            status: 200,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body_len: body.len() as u64,
            stored_at: 1_700_000_000,
        };
        let mut out = m.encode();
        out.extend_from_slice(body);
        out
    }

    fn write_at(path: &Path, bytes: &[u8], mtime_secs: u64) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut f = File::create(path).unwrap();
        f.write_all(bytes).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime_secs))
            .unwrap();
    }

    /// Writes a valid entry; returns (hash, file size).
    fn write_entry(dir: &Path, key: &str, body: &[u8], mtime_secs: u64) -> (u64, u64) {
        let hash = meta::key_hash(key);
        let bytes = entry_bytes(key, body);
        write_at(&meta::entry_path(dir, hash), &bytes, mtime_secs);
        (hash, bytes.len() as u64)
    }

    #[test]
    fn rebuild_keeps_good_and_deletes_bad() {
        let tmp = TempDir::new("mixed");
        let dir = &tmp.0;
        let (good1, size1) = write_entry(dir, "http://a/1", b"hello", 1_000);
        let (good2, size2) = write_entry(dir, "http://a/2", &[7u8; 10_000], 2_000);
        // Truncated body.
        let h = meta::key_hash("http://a/trunc");
        let bytes = entry_bytes("http://a/trunc", b"0123456789");
        write_at(&meta::entry_path(dir, h), &bytes[..bytes.len() - 3], 1_500);
        // Truncated header (shorter than the prefix).
        let h = meta::key_hash("http://a/short");
        write_at(
            &meta::entry_path(dir, h),
            &entry_bytes("http://a/short", b"")[..30],
            1_500,
        );
        // Garbage with a valid-looking name; an empty file.
        write_at(
            &meta::entry_path(dir, 0x1234_5678_9abc_def0),
            b"GET / HTTP/1.1\r\n",
            1,
        );
        write_at(&meta::entry_path(dir, 0xab00_0000_0000_0001), b"", 1);
        // A valid entry under another hash's name, and one in the wrong fan-out directory.
        let wrong = meta::entry_path(dir, 0x0101_0101_0101_0101);
        write_at(&wrong, &entry_bytes("http://a/elsewhere", b"x"), 1);
        let k = "http://a/misplaced";
        let misplaced = dir
            .join(meta::fanout_dir_name(!meta::key_hash(k)))
            .join(meta::file_name(meta::key_hash(k)));
        write_at(&misplaced, &entry_bytes(k, b"x"), 1);
        // A stray non-entry name and leftover temp files (one a directory).
        write_at(&dir.join("ab").join("notes.txt"), b"x", 1);
        write_at(&meta::temp_path(dir, good1, 1), b"partial", 1);
        write_at(&dir.join("tmp").join("sub").join("x"), b"partial", 1);
        // Top-level unknown files are left alone.
        write_at(&dir.join("README"), b"mine", 1);

        let ix = Index::new(1 << 30);
        let report = rebuild(dir, &ix).unwrap();
        assert_eq!(report.entries, 2);
        assert_eq!(report.bytes, size1 + size2);
        assert_eq!(report.removed, 7 + 2);
        assert_eq!((ix.len(), ix.used()), (2, size1 + size2));
        let e = ix.get(good2).unwrap();
        assert_eq!(e.size, size2);
        assert!(ix.peek(good1).is_some());
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        assert!(dir.join("README").exists());
        assert!(!wrong.exists() && !misplaced.exists());
        // Every fan-out directory exists; only the two good files remain in them.
        let mut files = 0;
        for fan in 0..FANOUT {
            files += fs::read_dir(dir.join(format!("{fan:02x}")))
                .unwrap()
                .count();
        }
        assert_eq!(files, 2);
        // A second scan finds exactly the same.
        let ix2 = Index::new(1 << 30);
        let again = rebuild(dir, &ix2).unwrap();
        assert_eq!((again.entries, again.removed), (2, 0));
    }

    #[test]
    fn rebuild_creates_layout_in_missing_dir() {
        let tmp = TempDir::new("fresh");
        let dir = tmp.0.join("cache");
        let ix = Index::new(1000);
        let report = rebuild(&dir, &ix).unwrap();
        assert_eq!((report.entries, report.removed, report.bytes), (0, 0, 0));
        assert!(dir.join("tmp").is_dir() && dir.join("00").is_dir() && dir.join("ff").is_dir());
    }

    #[test]
    fn rebuild_over_limit_keeps_most_recent() {
        let tmp = TempDir::new("limit");
        let dir = &tmp.0;
        let mut written = Vec::new();
        for i in 0..10u64 {
            // mtimes deliberately not in key order.
            let mtime = 10_000 + (i * 7 % 10) * 100;
            written.push((
                mtime,
                write_entry(dir, &format!("http://l/{i}"), b"body", mtime),
            ));
        }
        let size = written[0].1 .1;
        let ix = Index::new(size * 4 + size / 2);
        let report = rebuild(dir, &ix).unwrap();
        assert_eq!((report.entries, report.removed), (4, 6));
        written.sort();
        for (n, (_, (hash, _))) in written.iter().enumerate() {
            let kept = n >= 6;
            assert_eq!(ix.peek(*hash).is_some(), kept, "entry {n}");
            assert_eq!(meta::entry_path(dir, *hash).exists(), kept, "file {n}");
        }
        // Recency came from mtime: the oldest survivor is evicted first.
        let (_r, victims) = ix.reserve(ix.limit()).unwrap();
        let got: Vec<u64> = victims.iter().map(|v| v.hash).collect();
        let want: Vec<u64> = written[6..].iter().map(|(_, (h, _))| *h).collect();
        assert_eq!(got, want);
    }

    /// Rebuild time for 100,000 small entries (~400 MB of files on disk).
    /// `cargo test --release --lib cache::scan::tests::bench_rebuild_100k -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_rebuild_100k() {
        const N: usize = 100_000;
        let tmp = TempDir::new("bench");
        let dir = &tmp.0;
        create_layout(dir).unwrap();
        let t = Instant::now();
        for i in 0..N {
            let key = format!("http://bench.example/{i}");
            let hash = meta::key_hash(&key);
            fs::write(
                meta::entry_path(dir, hash),
                entry_bytes(&key, b"small body"),
            )
            .unwrap();
        }
        eprintln!("wrote {N} entries in {:?}", t.elapsed());
        // Cold-ish: caches are not dropped (that needs root), so this measures the warm case.
        let ix = Index::new(u64::MAX / 4);
        let report = rebuild(dir, &ix).unwrap();
        eprintln!("rebuild: {report:?}");
        assert_eq!((report.entries, report.removed), (N, 0));
        assert_eq!(ix.len(), N);
    }
}
