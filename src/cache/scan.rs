//! Startup rebuild of the [`Index`] from the cache directory. Blocking `std::fs`: it runs
//! once, before the per-core workers start.
//!
//! Layout and file format are described in [`super::meta`]. The scan:
//! 1. creates `dir`, `dir/tmp` and the 256 fan-out subdirectories (so fills never mkdir);
//! 2. empties `dir/tmp` (fills interrupted by the last shutdown or crash);
//! 3. reads the prefix of every file in the fan-out subdirectories (in parallel, one scoped
//!    thread per core, at most [`MAX_SCAN_THREADS`]) and deletes files that are unreadable,
//!    have a bad header, have a length other than `expected_file_len`, or whose name or
//!    subdirectory does not match the hash of the key they hold;
//! 4. loads the survivors with recency = file mtime (the disk layer bumps mtime on access, at
//!    most once a minute per entry, so recency survives a restart approximately), keeping the
//!    most recent ones that fit the limit and deleting the rest (least recently used first,
//!    exactly what the index's eviction would do).
//!
//! Anything else in `dir` (unknown top-level files or directories, subdirectories inside
//! fan-out directories) is left alone with a warning: the cache must never delete data that
//! it did not write just because `dir` was misconfigured.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::index::{EntryInfo, Index};
use super::meta::{self, Decoded, EntryMeta};

/// Upper bound on scan threads (the scan is syscall-bound; more threads stop helping).
pub const MAX_SCAN_THREADS: usize = 8;
/// Fan-out subdirectories: one per first byte of the hash.
const FANOUT: u64 = 256;
/// First read of each entry: one page holds the whole header of typical entries.
const FIRST_READ: usize = meta::BODY_ALIGN as usize;

/// What [`rebuild`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Entries loaded into the index.
    pub entries: usize,
    /// Their total size on disk.
    pub bytes: u64,
    /// Files deleted: temp files, invalid entries and entries over the limit.
    pub removed: usize,
    pub elapsed: Duration,
}

/// A valid entry file found by the scan.
struct Found {
    info: EntryInfo,
    path: PathBuf,
    /// Last access (mtime) in unix seconds.
    mtime: u64,
}

/// Rebuilds `index` from `dir` (see the module docs). Errors only when the layout cannot be
/// created or a directory of it cannot be listed; bad files are deleted, not reported.
pub fn rebuild(dir: &Path, index: &Index) -> io::Result<ScanReport> {
    let start = Instant::now();
    create_layout(dir)?;
    let mut removed = clear_tmp(&dir.join(meta::TMP_DIR))?;

    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_SCAN_THREADS) as u64;
    let results: Vec<io::Result<(Vec<Found>, usize)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|w| {
                s.spawn(move || {
                    let mut found = Vec::new();
                    let mut removed = 0;
                    for fan in (w..FANOUT).step_by(threads as usize) {
                        removed += scan_fanout_dir(dir, fan, &mut found)?;
                    }
                    Ok((found, removed))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("scan worker panicked"))
            .collect()
    });
    let mut found = Vec::new();
    for r in results {
        let (f, n) = r?;
        found.extend(f);
        removed += n;
    }

    // Most recent first; keep the longest prefix that fits, as LRU eviction would.
    found.sort_unstable_by(|a, b| b.mtime.cmp(&a.mtime).then(a.info.hash.cmp(&b.info.hash)));
    let budget = index
        .limit()
        .saturating_sub(index.used().saturating_add(index.reserved()));
    let mut bytes = 0u64;
    let mut entries = 0;
    let mut full = false;
    for f in found {
        if !full && bytes + f.info.size <= budget {
            bytes += f.info.size;
            entries += 1;
            // Descending order: each insert lands at its shard's tail, O(1).
            index.insert_loaded(f.info, f.mtime);
        } else {
            full = true;
            removed += remove_counted(&f.path, "over the cache limit");
        }
    }
    Ok(ScanReport {
        entries,
        bytes,
        removed,
        elapsed: start.elapsed(),
    })
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
fn clear_tmp(tmp: &Path) -> io::Result<usize> {
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

/// Checks every file of one fan-out directory; valid entries go to `found`. Returns the
/// number of files deleted.
fn scan_fanout_dir(dir: &Path, fan: u64, found: &mut Vec<Found>) -> io::Result<usize> {
    let fan_name = meta::fanout_dir_name(fan << 56);
    let mut removed = 0;
    for entry in fs::read_dir(dir.join(&fan_name))? {
        let entry = entry?;
        let path = entry.path();
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if file_type.is_dir() {
            log::warn!(
                "cache scan: leaving unexpected directory {}",
                path.display()
            );
            continue;
        }
        match check_entry(&path, &entry.file_name().to_string_lossy(), &fan_name) {
            Ok(f) => found.push(f),
            Err(reason) => removed += remove_counted(&path, &reason),
        }
    }
    Ok(removed)
}

/// Parses a 16-lowercase-hex-digit file name.
fn parse_file_name(name: &str) -> Option<u64> {
    let hash = u64::from_str_radix(name, 16).ok()?;
    (meta::file_name(hash) == name).then_some(hash)
}

/// Validates one entry file; `Err` carries why it must be deleted.
fn check_entry(path: &Path, name: &str, fan_name: &str) -> Result<Found, String> {
    let hash = parse_file_name(name).ok_or("not an entry file name")?;
    if meta::fanout_dir_name(hash) != fan_name {
        return Err("in the wrong fan-out directory".into());
    }
    let mut file = File::open(path).map_err(|e| format!("open: {e}"))?;
    let md = file.metadata().map_err(|e| format!("stat: {e}"))?;
    if !md.is_file() {
        return Err("not a regular file".into());
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
                .map_err(|e| format!("read: {e}"))?;
        }
        match meta::decode_prefix(&buf).map_err(|e| format!("bad header: {e}"))? {
            Decoded::Complete { meta, body_offset } => break (meta, body_offset),
            Decoded::NeedMore(n) if n > buf.len() && (buf.len() as u64) < len => want = n,
            Decoded::NeedMore(_) => return Err("truncated header".into()),
        }
    };
    let EntryMeta { key, body_len, .. } = &meta;
    if meta::key_hash(key) != hash {
        return Err("name does not match the key's hash".into());
    }
    let expected = meta.expected_file_len(body_offset);
    if len != expected {
        return Err(format!("length {len}, expected {expected}"));
    }
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok(Found {
        info: EntryInfo {
            hash,
            key: meta.key.clone(),
            size: len,
            body_len: *body_len,
            generation: 0,
        },
        path: path.to_path_buf(),
        mtime,
    })
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
    use std::io::Write;
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
        let e = ix.get(good2, "http://a/2").unwrap();
        assert_eq!((e.size, e.body_len), (size2, 10_000));
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
