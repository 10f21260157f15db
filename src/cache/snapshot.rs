//! The index snapshot: what the [`Index`] held at a clean stop, so that the next start
//! loads it in a fraction of a second instead of reading the header of every entry file.
//!
//! `dir/index.snapshot`, written at a clean stop (after the workers stopped, so no fill
//! changes the files any more) to `dir/index.snapshot.tmp`, fsynced, renamed into place and
//! the dir fsynced: a snapshot is whole or absent. Layout (little-endian):
//!
//! ```text
//! magic "CHACHAIX" | version u32 | 0 u32 | entries u64
//! fingerprint: 256 × (inode u64, mtime seconds i64, mtime nanoseconds i64), one per fan-out dir
//! entries × (hash u64, size u64, recency tick u64), grouped by index shard, each shard from
//!           its least to its most recently used entry
//! xxh3-64 of everything above
//! ```
//!
//! It is the index of the files only while nothing changed them: every creation, rename or
//! deletion of an entry file changes its fan-out directory's mtime, so the snapshot keeps
//! the inode and mtime of the 256 fan-out directories as they were when it was written,
//! and a start whose directories differ (another process, or a run that crashed after
//! loading it, wrote or deleted entries since) rejects it and scans. A start that uses it
//! deletes it (and fsyncs the dir) before serving: a crash afterwards finds no snapshot and
//! scans, whatever the files became. Entries in it are not re-read at load; the same checks
//! as ever run when one is opened (header checksum, key, length), so a file edited in
//! place is dropped on its first use, as while running.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::Xxh3;

use super::index::{EntryInfo, Index, SHARDS};
use super::meta;

pub const FILE_NAME: &str = "index.snapshot";
const TEMP_NAME: &str = "index.snapshot.tmp";
const MAGIC: [u8; 8] = *b"CHACHAIX";
const VERSION: u32 = 1;
const FANOUT: usize = 256;
const HEADER_LEN: usize = 8 + 4 + 4 + 8;
const FINGERPRINT_LEN: usize = FANOUT * 24;
const RECORD_LEN: usize = 24;

/// What [`load`] put into the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub entries: usize,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// What [`write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub entries: usize,
    pub file_bytes: u64,
    pub elapsed: Duration,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The inode and mtime of every fan-out directory, encoded.
fn fingerprint(dir: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(FINGERPRINT_LEN);
    for fan in 0..FANOUT as u64 {
        let md = fs::metadata(dir.join(meta::fanout_dir_name(fan << 56)))?;
        out.extend_from_slice(&md.ino().to_le_bytes());
        out.extend_from_slice(&md.mtime().to_le_bytes());
        out.extend_from_slice(&md.mtime_nsec().to_le_bytes());
    }
    Ok(out)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes the snapshot of `index` for `dir` (see the module docs). Call only when the
/// index is complete (not during a background scan) and no fill runs any more.
pub fn write(dir: &Path, index: &Index) -> io::Result<Written> {
    let start = Instant::now();
    let temp = dir.join(TEMP_NAME);
    let fingerprint = fingerprint(dir)?;
    let mut hasher = Xxh3::new();
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&temp)?);
    let mut put = |bytes: &[u8], out: &mut BufWriter<File>| -> io::Result<()> {
        hasher.update(bytes);
        out.write_all(bytes)
    };
    // The count is known only after the walk: write a placeholder, then the records
    // (the count in the header is checked against the records at load).
    let entries = index.len();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&(entries as u64).to_le_bytes());
    put(&header, &mut out)?;
    put(&fingerprint, &mut out)?;
    let mut written = 0usize;
    let mut failed = None;
    index.for_each_lru(|info, tick| {
        if failed.is_some() || written == entries {
            return;
        }
        let mut rec = [0u8; RECORD_LEN];
        rec[..8].copy_from_slice(&info.hash.to_le_bytes());
        rec[8..16].copy_from_slice(&info.size.to_le_bytes());
        rec[16..].copy_from_slice(&tick.to_le_bytes());
        match put(&rec, &mut out) {
            Ok(()) => written += 1,
            Err(e) => failed = Some(e),
        }
    });
    if let Some(e) = failed {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    if written != entries {
        // Nothing runs any more at a clean stop; if something did, do not write a snapshot
        // that might not be the index.
        let _ = fs::remove_file(&temp);
        return Err(io::Error::other(format!(
            "the index changed while it was written ({entries} entries, then {written})"
        )));
    }
    out.write_all(&hasher.digest().to_le_bytes())?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let file_bytes = file.metadata()?.len();
    drop(file);
    fs::rename(&temp, path(dir))?;
    fsync_dir(dir)?;
    Ok(Written {
        entries,
        file_bytes,
        elapsed: start.elapsed(),
    })
}

/// Why there is no usable snapshot (the start scans instead).
#[derive(Debug)]
pub enum Unusable {
    Absent,
    /// Present but not taken; the reason, for the log. It has been deleted.
    Rejected(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Absent => write!(
                f,
                "no index snapshot (a new cache, or the last stop was not clean)"
            ),
            Unusable::Rejected(why) => write!(f, "index snapshot rejected: {why}"),
        }
    }
}

/// Loads the snapshot of `dir` into the (empty) `index` if it is whole and its fan-out
/// directories are as it recorded them; deletes it in every case, before the first
/// entry is taken (see the module docs).
pub fn load(dir: &Path, index: &Index) -> Result<Loaded, Unusable> {
    let start = Instant::now();
    let file = path(dir);
    let data = match fs::read(&file) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Unusable::Absent),
        Err(e) => return Err(reject(dir, format!("cannot read it: {e}"))),
    };
    let records = match check(dir, &data) {
        Ok(r) => r,
        Err(why) => return Err(reject(dir, why)),
    };
    // Gone before anything is served from it: from here on the files may change.
    if let Err(e) = fs::remove_file(&file).and_then(|()| fsync_dir(dir)) {
        return Err(reject(dir, format!("cannot delete it after reading: {e}")));
    }
    let mut per_shard = vec![0usize; SHARDS];
    for rec in records.chunks_exact(RECORD_LEN) {
        per_shard[Index::shard_of(u64_at(rec, 0))] += 1;
    }
    index.reserve_entries(&per_shard);
    // Records come grouped by shard: one lock per run of a shard's records.
    let mut bytes = 0u64;
    let mut batch: Vec<(EntryInfo, u64)> = Vec::with_capacity(64 * 1024);
    for rec in records.chunks_exact(RECORD_LEN) {
        let info = EntryInfo {
            hash: u64_at(rec, 0),
            size: u64_at(rec, 8),
            generation: 0,
        };
        if batch
            .first()
            .is_some_and(|(f, _)| Index::shard_of(f.hash) != Index::shard_of(info.hash))
        {
            index.insert_loaded_batch(&batch);
            batch.clear();
        }
        bytes += info.size;
        batch.push((info, u64_at(rec, 16)));
    }
    index.insert_loaded_batch(&batch);
    Ok(Loaded {
        entries: index.len(),
        bytes,
        elapsed: start.elapsed(),
    })
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks magic, version, length, checksum and fingerprint; returns the records.
fn check<'a>(dir: &Path, data: &'a [u8]) -> Result<&'a [u8], String> {
    let min = HEADER_LEN + FINGERPRINT_LEN + 8;
    if data.len() < min || data[..8] != MAGIC {
        return Err("not a snapshot (bad magic or too short)".into());
    }
    let version = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("version {version}, this build reads {VERSION}"));
    }
    let entries = u64_at(data, 16);
    let want = (entries as usize)
        .checked_mul(RECORD_LEN)
        .and_then(|r| r.checked_add(min));
    if want != Some(data.len()) {
        return Err(format!(
            "{} bytes for {entries} entries (truncated or corrupt)",
            data.len()
        ));
    }
    let (content, sum) = data.split_at(data.len() - 8);
    if xxhash_rust::xxh3::xxh3_64(content) != u64_at(sum, 0) {
        return Err("checksum mismatch".into());
    }
    let recorded = &content[HEADER_LEN..HEADER_LEN + FINGERPRINT_LEN];
    let now = fingerprint(dir).map_err(|e| format!("cannot stat the fan-out dirs: {e}"))?;
    if recorded != now.as_slice() {
        return Err("entry files changed since it was written".into());
    }
    Ok(&content[HEADER_LEN + FINGERPRINT_LEN..])
}

/// Deletes a snapshot not taken (so that it is never looked at again) and says why.
fn reject(dir: &Path, why: String) -> Unusable {
    if let Err(e) = fs::remove_file(path(dir)) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("cache: cannot delete the rejected index snapshot: {e}");
        }
    }
    Unusable::Rejected(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::scan::create_layout;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn temp_dir(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("chacha-snap-{name}-{}-{nanos}", std::process::id()));
        create_layout(&p).unwrap();
        TempDir(p)
    }

    fn filled(n: u64) -> Index {
        let ix = Index::new(1 << 30);
        for i in 0..n {
            let hash = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ix.insert_loaded(
                EntryInfo {
                    hash,
                    size: 100 + i,
                    generation: 0,
                },
                1_000 + (i * 7919) % 500,
            );
        }
        ix
    }

    #[test]
    fn round_trip_keeps_entries_sizes_and_lru_order() {
        let tmp = temp_dir("rt");
        let ix = filled(1000);
        let w = write(&tmp.0, &ix).unwrap();
        assert_eq!(w.entries, 1000);
        let back = Index::new(1 << 30);
        let l = load(&tmp.0, &back).unwrap();
        assert_eq!((l.entries, l.bytes), (1000, ix.used()));
        assert!(!path(&tmp.0).exists(), "deleted once loaded");
        let order = |ix: &Index| {
            let mut v = Vec::new();
            ix.for_each_lru(|i, t| v.push((i.hash, i.size, t)));
            v
        };
        assert_eq!(order(&ix), order(&back));
        // Loaded once only.
        assert!(matches!(
            load(&tmp.0, &Index::new(1)),
            Err(Unusable::Absent)
        ));
    }

    #[test]
    fn corrupt_truncated_or_stale_snapshots_are_rejected_and_deleted() {
        let tmp = temp_dir("bad");
        let ix = filled(10);
        write(&tmp.0, &ix).unwrap();
        let good = fs::read(path(&tmp.0)).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut b = good.clone();
                    b[HEADER_LEN + FINGERPRINT_LEN + 3] ^= 1;
                    b
                },
                "checksum",
            ),
            (good[..good.len() - 1].to_vec(), "truncated"),
            (b"nonsense".to_vec(), "magic"),
        ];
        for (bytes, what) in cases {
            fs::write(path(&tmp.0), &bytes).unwrap();
            let e = load(&tmp.0, &Index::new(1 << 30)).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
            assert!(!path(&tmp.0).exists());
        }
        // A file created in a fan-out dir after the snapshot: stale.
        fs::write(path(&tmp.0), &good).unwrap();
        std::thread::sleep(Duration::from_millis(20)); // the directory mtime must move
        fs::write(tmp.0.join("7f").join("7f00000000000000"), b"x").unwrap();
        let e = load(&tmp.0, &Index::new(1 << 30)).unwrap_err();
        assert!(e.to_string().contains("changed since"), "{e}");
    }
}
