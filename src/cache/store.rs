//! The disk side of the cache: looking entries up and opening them, writing fills to temp
//! files through io_uring and renaming them into place, deleting evicted files off the
//! core threads. One `Store` (in an `Arc`) is shared by all cores.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use monoio::buf::IoBufMut;
use monoio::fs::{File, OpenOptions};

use super::fill::{Fill, FillHandle, Fills, StreamInfo};
use super::index::{EntryInfo, Index, Reservation, TooBig, Victim};
use super::meta::{self, Decoded, EntryMeta};
use super::scan::{self, Progress, ScanReport};
use super::snapshot::{self, Unusable};

/// Reservation step for bodies of unknown length.
pub const GROW_STEP: u64 = 8 * 1024 * 1024;

pub struct Store {
    pub dir: PathBuf,
    pub index: Index,
    pub fills: Arc<Fills>,
    next_temp: AtomicU64,
    /// Serialises [`Store::recreate_layout`] across cores.
    layout_lock: Arc<std::sync::Mutex<()>>,
    /// The index holds every entry on disk: loaded from the snapshot, or the background
    /// scan finished. Until then no snapshot may be written (it would lose the entries not
    /// scanned yet).
    complete: AtomicBool,
}

/// How [`Store::open`] got the index.
#[derive(Debug)]
pub enum Opened {
    /// From the snapshot of the last clean stop: complete.
    Snapshot(snapshot::Loaded),
    /// No usable snapshot (why): the index is empty until [`Store::scan`] fills it; entries
    /// are served only once the scan has verified them.
    NeedsScan(Unusable),
}

/// An open, validated entry.
pub struct Entry {
    pub file: File,
    pub meta: EntryMeta,
    pub body_offset: u64,
    pub generation: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens (creating) the cache dir: its layout, its temp dir emptied, and the index
    /// loaded from the snapshot of the last clean stop if there is a usable one
    /// ([`super::snapshot`]); otherwise the index starts empty and the caller runs
    /// [`Store::scan`] (in the background: requests are served meanwhile). Blocking: call
    /// before the workers start.
    pub fn open(dir: &Path, limit: u64) -> io::Result<(Arc<Store>, Opened)> {
        std::fs::create_dir_all(dir)?;
        scan::create_layout(dir)?;
        scan::clear_tmp(&dir.join(meta::TMP_DIR))?;
        let index = Index::new(limit);
        // Accesses of this run rank above entries loaded with their mtime as recency.
        index.raise_tick(now_secs());
        let opened = match snapshot::load(dir, &index) {
            Ok(loaded) => Opened::Snapshot(loaded),
            Err(why) => Opened::NeedsScan(why),
        };
        let store = Arc::new(Store {
            dir: dir.to_path_buf(),
            index,
            fills: Arc::new(Fills::default()),
            next_temp: AtomicU64::new(0),
            layout_lock: Arc::default(),
            complete: AtomicBool::new(matches!(opened, Opened::Snapshot(_))),
        });
        if matches!(opened, Opened::Snapshot(_)) && store.index.used() > limit {
            // `disk.limit` shrank since the snapshot was written.
            store.set_limit(limit);
        }
        Ok((store, opened))
    }

    /// Scans the cache dir into the index ([`super::scan`]), calling `progress` every
    /// [`scan::PROGRESS_EVERY`]; blocking, on threads of its own, while the workers serve.
    /// Then the index is complete.
    pub fn scan(&self, progress: &(dyn Fn(Progress) + Sync)) -> io::Result<ScanReport> {
        let report = scan::scan(
            scan::Target {
                dir: &self.dir,
                index: &self.index,
                fills: &self.fills,
            },
            progress,
        )?;
        self.complete.store(true, Ordering::Release);
        Ok(report)
    }

    /// Whether the index holds every entry on disk (see [`Opened`]).
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Writes the index snapshot for the next start ([`super::snapshot`]); call at a clean
    /// stop, once the workers stopped. `Ok(None)` while the index is not complete (a scan
    /// still running): no snapshot then, the next start scans.
    pub fn write_snapshot(&self) -> io::Result<Option<snapshot::Written>> {
        if !self.is_complete() {
            return Ok(None);
        }
        snapshot::write(&self.dir, &self.index).map(Some)
    }

    /// The committed entry for `key`, opened and checked, or `None` (a miss is a value).
    /// Entries that turn out missing or corrupt are dropped from the index.
    pub async fn lookup(self: &Arc<Self>, hash: u64, key: &str) -> Option<Entry> {
        let info = self.index.get(hash)?;
        self.open_entry(hash, key, &info).await
    }

    /// Opens the entry file the index described as `info`.
    pub async fn open_entry(
        self: &Arc<Self>,
        hash: u64,
        key: &str,
        info: &EntryInfo,
    ) -> Option<Entry> {
        let path = meta::entry_path(&self.dir, hash);
        let file = match File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("cache: cannot open {}: {e}", path.display());
                }
                self.index.remove_if(hash, info.generation);
                return None;
            }
        };
        let mut want = meta::BODY_ALIGN as usize;
        loop {
            let buf = Vec::with_capacity(want);
            let (res, buf) = file.read_exact_at(buf.slice_mut(0..want), 0).await;
            let buf = buf.into_inner();
            let decoded = match res {
                Ok(()) => meta::decode_prefix(&buf),
                Err(e) => {
                    log::warn!("cache: cannot read {}: {e}", path.display());
                    break;
                }
            };
            match decoded {
                Ok(Decoded::Complete { meta, body_offset }) if meta.key == key => {
                    // A file shorter than its header says (truncated behind our back)
                    // would cut every hit at the same byte: drop it, the request refills.
                    let want = body_offset + meta.body_len;
                    match file_size(&file) {
                        Ok(size) if size >= want => {
                            return Some(Entry {
                                file,
                                meta,
                                body_offset,
                                generation: info.generation,
                            });
                        }
                        Ok(size) => {
                            let why = format!("it has {size} bytes, its header says {want}");
                            self.drop_broken(hash, info.generation, &file, &why).await;
                            return None;
                        }
                        Err(e) => {
                            let why = format!("fstat: {e}");
                            self.drop_broken(hash, info.generation, &file, &why).await;
                            return None;
                        }
                    }
                }
                Ok(Decoded::NeedMore(n)) if n > want => want = n,
                Ok(Decoded::Complete { meta, .. }) if meta::key_hash(&meta.key) == hash => {
                    // Another key with the same 64-bit hash (the index keeps no keys): a
                    // miss for this one; its fill will take the path.
                    log::debug!(
                        "cache: {} holds another key of the same hash",
                        path.display()
                    );
                    return None;
                }
                Ok(_) => {
                    log::warn!("cache: {} holds another key; dropping it", path.display());
                    break;
                }
                Err(e) => {
                    log::warn!("cache: {} is corrupt ({e}); dropping it", path.display());
                    break;
                }
            }
        }
        if self.index.remove_if(hash, info.generation).is_some() {
            self.unlink_later(vec![path]);
        }
        None
    }

    /// Drops an entry whose open `file` turned out short or unreadable (from the index
    /// and the disk), so that the next request refills it; returns once the file is gone.
    /// Only that very file (same inode) is deleted: a refill may already have renamed a
    /// new one into its path. Logged once per entry, by the caller that removed it.
    pub async fn drop_broken(self: &Arc<Self>, hash: u64, generation: u64, file: &File, why: &str) {
        if self.index.remove_if(hash, generation).is_none() {
            return;
        }
        let path = meta::entry_path(&self.dir, hash);
        log::warn!("cache: dropping {}: {why}", path.display());
        let Ok(broken) = file_id(file) else {
            return; // cannot tell it apart: the scan at the next start checks it
        };
        let _ = monoio::spawn_blocking(move || {
            use std::os::unix::fs::MetadataExt;
            if let Ok(m) = std::fs::metadata(&path) {
                if (m.dev(), m.ino()) == broken {
                    let _ = std::fs::remove_file(&path);
                }
            }
        })
        .await;
    }

    /// Drops the entry for `hash` (e.g. the origin answered 404/410).
    pub fn remove(self: &Arc<Self>, hash: u64, generation: u64) {
        if self.index.remove_if(hash, generation).is_some() {
            self.unlink_later(vec![meta::entry_path(&self.dir, hash)]);
        }
    }

    /// Deletes evicted entries' files on the blocking pool, never on a core thread and
    /// never under an index lock, and returns once they are gone (so a fill that made
    /// room writes only after the room exists). A victim whose hash came back with a newer
    /// generation is skipped (a newer file lives at that path).
    pub async fn delete_victims(self: &Arc<Self>, victims: Vec<Victim>) {
        if victims.is_empty() {
            return;
        }
        let store = self.clone();
        let _ = monoio::spawn_blocking(move || {
            for v in victims {
                if store
                    .index
                    .peek(v.hash)
                    .is_some_and(|e| e.generation > v.generation)
                {
                    continue;
                }
                let path = meta::entry_path(&store.dir, v.hash);
                if let Err(e) = std::fs::remove_file(&path) {
                    if e.kind() != io::ErrorKind::NotFound {
                        log::warn!("cache: cannot delete {}: {e}", path.display());
                    }
                }
            }
        })
        .await;
    }

    /// A live reload's new `disk.limit` ([`Index::set_limit`]); the evicted entries'
    /// files are deleted before it returns. Blocking: call it off the cores (the reload
    /// runs on the main thread). Returns the entries evicted and their bytes.
    pub fn set_limit(&self, limit: u64) -> (usize, u64) {
        let (victims, bytes) = self.index.set_limit(limit);
        for v in &victims {
            // As in [`Store::delete_victims`]: a newer file may live at that path.
            if self
                .index
                .peek(v.hash)
                .is_some_and(|e| e.generation > v.generation)
            {
                continue;
            }
            let path = meta::entry_path(&self.dir, v.hash);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("cache: cannot delete {}: {e}", path.display());
                }
            }
        }
        (victims.len(), bytes)
    }

    fn unlink_later(&self, paths: Vec<PathBuf>) {
        drop(monoio::spawn_blocking(move || {
            for p in paths {
                let _ = std::fs::remove_file(p);
            }
        }));
    }

    /// Recreates the cache dir's layout after it vanished (e.g. `rm -rf` of the dir while
    /// chacha runs), with one warning however many cores notice at once: the first to take
    /// the lock recreates it, the others find it back. Entries whose files went with it
    /// leave the index when looked up (a missing file is a miss) or evicted.
    async fn recreate_layout(&self) -> io::Result<()> {
        let dir = self.dir.clone();
        let lock = self.layout_lock.clone();
        monoio::spawn_blocking(move || {
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            if dir.join(meta::TMP_DIR).is_dir() {
                return Ok(());
            }
            log::warn!(
                "cache: {} or its layout vanished; recreating it (entries stored before are gone)",
                dir.display()
            );
            scan::create_layout(&dir)
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::other("layout task cancelled")))
    }

    fn temp_path(&self, hash: u64) -> PathBuf {
        let unique =
            self.next_temp.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u64) << 40;
        meta::temp_path(&self.dir, hash, unique)
    }

    /// Reserves room and creates the temp file of a fill; readers may join once it exists.
    pub async fn start_fill(
        self: &Arc<Self>,
        handle: FillHandle,
        mut meta: EntryMeta,
        body_len: Option<u64>,
    ) -> Result<FillWriter, FillStartError> {
        meta.check_limits().map_err(|_| FillStartError::TooLarge)?;
        meta.body_len = body_len.unwrap_or(0);
        meta.stored_at = now_secs();
        let body_offset = meta.encode().len() as u64;
        let want = body_offset + body_len.unwrap_or(GROW_STEP);
        let (reservation, victims) = match self.index.reserve(want) {
            Ok(r) => r,
            Err(TooBig { victims, .. }) => {
                self.delete_victims(victims).await;
                return Err(FillStartError::TooLarge);
            }
        };
        self.delete_victims(victims).await;
        let temp_path = self.temp_path(handle.fill().hash);
        let mut options = OpenOptions::new();
        options.write(true).read(true).create_new(true);
        let file = match options.open(&temp_path).await {
            // The cache dir (or its layout) was deleted while we run: recreate it, once.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.recreate_layout().await.map_err(FillStartError::Io)?;
                options.open(&temp_path).await
            }
            r => r,
        }
        .map_err(FillStartError::Io)?;
        let final_path = meta::entry_path(&self.dir, handle.fill().hash);
        handle.start(StreamInfo {
            meta: meta.clone(),
            body_len,
            temp_path: temp_path.clone(),
            final_path: final_path.clone(),
            body_offset,
        });
        Ok(FillWriter {
            store: self.clone(),
            file: Some(file),
            handle: Some(handle),
            reservation: Some(reservation),
            meta,
            body_len,
            body_offset,
            written: 0,
            temp_path,
            final_path,
        })
    }
}

#[derive(Debug)]
pub enum FillStartError {
    /// Larger than the cache, or in-flight fills hold all the room.
    TooLarge,
    Io(io::Error),
}

/// The leader's writer of one fill. Dropping it without [`FillWriter::commit`] removes
/// the temp file and fails the fill (its readers abort).
pub struct FillWriter {
    store: Arc<Store>,
    file: Option<File>,
    handle: Option<FillHandle>,
    reservation: Option<Reservation>,
    meta: EntryMeta,
    body_len: Option<u64>,
    body_offset: u64,
    written: u64,
    temp_path: PathBuf,
    final_path: PathBuf,
}

impl FillWriter {
    /// The fill this writer writes (its progress and phase, for readers).
    pub fn fill(&self) -> &Arc<Fill> {
        self.handle.as_ref().expect("handle").fill()
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends body bytes; hands the buffer back.
    pub async fn write(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let n = buf.len() as u64;
        if let Some(len) = self.body_len {
            if self.written + n > len {
                return (
                    Err(io::Error::other("origin sent more than its Content-Length")),
                    buf,
                );
            }
        } else {
            let r = self.reservation.as_mut().expect("reservation");
            let need = self.body_offset + self.written + n;
            if need > r.bytes() {
                let more = (need - r.bytes()).max(GROW_STEP);
                match self.store.index.grow(r, more) {
                    Ok(v) => self.store.delete_victims(v).await,
                    Err(TooBig { victims, .. }) => {
                        self.store.delete_victims(victims).await;
                        return (Err(io::Error::other("object outgrew the cache limit")), buf);
                    }
                }
            }
        }
        let file = self.file.as_ref().expect("file");
        let (res, buf) = file
            .write_all_at(buf, self.body_offset + self.written)
            .await;
        if res.is_ok() {
            self.written += n;
            if let Some(h) = &self.handle {
                h.progress(self.written);
            }
        } else {
            crate::metrics::fill_failure(crate::metrics::FillFailure::DiskError);
        }
        (res, buf)
    }

    /// Writes the header, renames the file into place and indexes it.
    pub async fn commit(mut self) -> io::Result<()> {
        if let Some(len) = self.body_len {
            if self.written != len {
                return Err(io::Error::other(format!(
                    "body has {} bytes, Content-Length said {len}",
                    self.written
                )));
            }
        }
        self.meta.body_len = self.written;
        let prefix = self.meta.encode();
        debug_assert_eq!(prefix.len() as u64, self.body_offset);
        let file = self.file.take().expect("file");
        let (temp, fin) = (&self.temp_path, &self.final_path);
        let written = async move {
            file.write_all_at(prefix, 0).await.0?;
            file.close().await?;
            monoio::fs::rename(temp, fin).await
        };
        if let Err(e) = written.await {
            crate::metrics::fill_failure(crate::metrics::FillFailure::DiskError);
            return Err(e);
        }
        let info = EntryInfo {
            hash: self.handle.as_ref().expect("handle").fill().hash,
            size: self.body_offset + self.written,
            generation: 0,
        };
        let reservation = self.reservation.take().expect("reservation");
        // A replaced entry's file was overwritten by the rename: nothing to delete.
        let _ = self.store.index.commit(reservation, info);
        self.handle.take().expect("handle").complete();
        Ok(())
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        if self.handle.is_some() {
            // Not committed: fail the fill (wakes readers) and remove the temp file.
            self.handle.take();
            self.file.take();
            self.store.unlink_later(vec![self.temp_path.clone()]);
        }
    }
}

fn fstat(file: &File) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid open fd and a buffer of the right type for fstat to fill.
    let rc = unsafe { libc::fstat(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    Ok(unsafe { st.assume_init() })
}

/// The size of an open file (fstat: no I/O beyond the inode).
fn file_size(file: &File) -> io::Result<u64> {
    Ok(fstat(file)?.st_size as u64)
}

/// The device and inode of an open file.
fn file_id(file: &File) -> io::Result<(u64, u64)> {
    let st = fstat(file)?;
    Ok((st.st_dev, st.st_ino))
}

/// Records an access in the entry file's mtime, so recency survives a restart.
pub fn touch(file: &File) {
    // SAFETY: a valid open fd; a null `times` sets both timestamps to now.
    unsafe {
        libc::futimens(file.as_raw_fd(), std::ptr::null());
    }
}
