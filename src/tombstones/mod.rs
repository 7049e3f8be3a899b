//! The durable tombstone log: which blobs were deleted and when, so a stale cache entry is never served.
//!
//! Layout: fixed 32-byte slots, so none straddles a 4 KiB sector. Each is 24 bytes of payload followed by the
//! little-endian `xxh3_64` of those 24 bytes. Slot 0 is the header (magic, version, slot size, capacity); slots
//! `1..=capacity` hold records (16-byte key, deletion time in µs since the Unix epoch, little endian). Records are
//! appended in order and an all-zero slot is free, so a scan stops at the first one. The whole file is allocated
//! and zero-filled when it is created, so an ordinary `record` overwrites blocks the file already owns: it needs
//! no free space, which is the point when the disk is full. Times are kept to the microsecond.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use twox_hash::XxHash3_64;

use crate::key::BlobKey;

const SLOT: u64 = 32;
const MAGIC: [u8; 8] = *b"BCTOMBLG";
const VERSION: u32 = 1;
/// Record slots in a new log (2 MiB).
const INITIAL_CAPACITY: u64 = 65_536;
/// Bounds a header's capacity so a damaged one cannot make us size absurd buffers or files.
const MAX_CAPACITY: u64 = 1 << 32;
/// 9999-12-31T23:59:59.999999Z: later times (and garbage) are clamped to it so conversions never overflow.
const MAX_MICROS: u64 = 253_402_300_799_999_999;

/// The tombstone log and its in-memory index. See the module docs for the file format.
pub struct Tombstones {
    path: PathBuf,
    retention: Duration,
    min_capacity: u64,
    /// Mirrors `index.len()` so that `deleted_at` on an empty log is one atomic load.
    len: AtomicUsize,
    /// Key -> deletion time in µs. Only changed after the file change it reflects is durable.
    index: RwLock<HashMap<BlobKey, u64>>,
    /// Serialises writers; always taken before `index`.
    log: Mutex<Log>,
}

struct Log {
    file: File,
    capacity: u64,
    /// The next free slot; `capacity + 1` when full.
    next: u64,
    /// A compaction's rename is not yet known durable; retried before the next append relies on it.
    dir_unsynced: bool,
}

impl Tombstones {
    /// Open (or create) the log at `path` (its parent directory exists). Records older than
    /// `retention` are dropped. Blocking: callers run it off the async threads.
    pub fn open(path: &Path, retention: Duration) -> io::Result<Tombstones> {
        Self::open_with(path, retention, INITIAL_CAPACITY)
    }

    fn open_with(path: &Path, retention: Duration, min_capacity: u64) -> io::Result<Tombstones> {
        // A leftover of an interrupted compaction holds preallocated space that a full disk may need.
        if let Err(e) = fs::remove_file(tmp_path(path))
            && e.kind() != ErrorKind::NotFound
        {
            return Err(e);
        }
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let file = write_fresh(path, min_capacity, &[])?;
                sync_dir(path)?;
                file
            }
            Err(e) => return Err(e),
        };
        let scan = scan(&file, path, cutoff(retention))?;
        if scan.torn > 0 {
            tracing::warn!(path = %path.display(), torn = scan.torn, "tombstone log: skipped bad checksums");
        }
        let dead = scan.next - 1 - scan.index.len() as u64;
        let this = Tombstones {
            path: path.to_owned(),
            retention,
            min_capacity,
            len: AtomicUsize::new(scan.index.len()),
            index: RwLock::new(scan.index),
            log: Mutex::new(Log {
                file,
                capacity: scan.capacity,
                next: scan.next,
                dir_unsynced: false,
            }),
        };
        if dead > scan.capacity / 2 {
            // Not fatal: the old log is intact and usable, just fuller than it needs to be.
            if let Err(e) = this.compact(&mut this.lock_log()) {
                tracing::warn!(path = %path.display(), error = %e, "tombstone log: compaction at open failed");
            }
        }
        Ok(this)
    }

    /// Durably record that `key` was deleted at `at` (fdatasync before returning). Blocking.
    /// A later record of the same key replaces the earlier time (keep the max).
    /// On error, `key`'s tombstone is as it was (the caller answers 507 having changed nothing).
    pub fn record(&self, key: &BlobKey, at: SystemTime) -> io::Result<()> {
        let micros = to_micros(at);
        let mut log = self.lock_log();
        // The index only holds durable records, so an equal or later one makes this a no-op.
        if self.read_index().get(key).is_some_and(|&t| t >= micros) {
            return Ok(());
        }
        if log.dir_unsynced {
            sync_dir(&self.path)?;
            log.dir_unsynced = false;
        }
        if log.next > log.capacity {
            self.compact(&mut log)?;
        }
        // On failure `next` stays put, so the next record overwrites the slot. Should the failed write reach the
        // disk anyway, the worst case after a restart is a spurious tombstone: the key's cache entries are refetched.
        log.file
            .write_all_at(&seal(&record_payload(key, micros)), log.next * SLOT)?;
        log.file.sync_data()?;
        log.next += 1;
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        index.insert(*key, micros);
        self.len.store(index.len(), Ordering::Release);
        Ok(())
    }

    /// When `key` was deleted, if a tombstone is retained. Cheap: no I/O, no allocation.
    pub fn deleted_at(&self, key: &BlobKey) -> Option<SystemTime> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.read_index().get(key).map(|&t| from_micros(t))
    }

    /// Tombstones recorded at or after `since` (for catching up peers later), any order.
    pub fn since(&self, since: SystemTime) -> Vec<(BlobKey, SystemTime)> {
        let since = to_micros(since);
        let index = self.read_index();
        index
            .iter()
            .filter(|&(_, &t)| t >= since)
            .map(|(k, &t)| (*k, from_micros(t)))
            .collect()
    }

    /// How many tombstones are retained. Expired ones are dropped at open and at compaction only.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether no tombstone is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rewrite the live records into a new file and switch to it. On error before the rename the old log is
    /// untouched and still in use; after it (only the directory fsync can fail) the new one is in use.
    fn compact(&self, log: &mut Log) -> io::Result<()> {
        let cutoff = cutoff(self.retention);
        let live: Vec<(BlobKey, u64)> = self
            .read_index()
            .iter()
            .filter(|&(_, &t)| t >= cutoff)
            .map(|(k, &t)| (*k, t))
            .collect();
        let capacity = self.min_capacity.max(2 * live.len() as u64);
        let file = write_fresh(&self.path, capacity, &live)?;
        *log = Log {
            file,
            capacity,
            next: live.len() as u64 + 1,
            dir_unsynced: true,
        };
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        index.retain(|_, t| *t >= cutoff);
        self.len.store(index.len(), Ordering::Release);
        drop(index);
        tracing::info!(path = %self.path.display(), live = live.len(), capacity, "tombstone log compacted");
        sync_dir(&self.path)?;
        log.dir_unsynced = false;
        Ok(())
    }

    fn lock_log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, HashMap<BlobKey, u64>> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Tombstones {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tombstones")
            .field("path", &self.path)
            .field("retention", &self.retention)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

struct Scan {
    capacity: u64,
    next: u64,
    index: HashMap<BlobKey, u64>,
    torn: usize,
}

/// Read the header and every record up to the first free slot, keeping the newest unexpired time per key.
fn scan(file: &File, path: &Path, cutoff: u64) -> io::Result<Scan> {
    let bad = |why: String| {
        io::Error::new(
            ErrorKind::InvalidData,
            format!("tombstone log {}: {why}", path.display()),
        )
    };
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut slot = [0u8; SLOT as usize];
    reader.read_exact(&mut slot).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => bad("shorter than its header".into()),
        _ => e,
    })?;
    if slot[..8] != MAGIC {
        return Err(bad("not a tombstone log (bad magic)".into()));
    }
    let header = unseal(&slot).ok_or_else(|| bad("header checksum mismatch".into()))?;
    let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
    let slot_size = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
    let capacity = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
    if version != VERSION || u64::from(slot_size) != SLOT {
        return Err(bad(format!(
            "unsupported version {version} (slot size {slot_size}); this build reads {VERSION}"
        )));
    }
    let len = file.metadata()?.len();
    if capacity == 0 || capacity > MAX_CAPACITY || len < (capacity + 1) * SLOT {
        return Err(bad(format!(
            "header says {capacity} records but the file has {len} bytes"
        )));
    }
    let (mut index, mut torn, mut next) = (HashMap::new(), 0, capacity + 1);
    for n in 1..=capacity {
        reader.read_exact(&mut slot)?;
        if slot == [0; SLOT as usize] {
            next = n;
            break;
        }
        let Some(payload) = unseal(&slot) else {
            torn += 1; // A torn write after a crash: that DELETE never returned success.
            continue;
        };
        let key = BlobKey::from_bytes(payload[..16].try_into().unwrap_or_default());
        let micros = u64::from_le_bytes(payload[16..24].try_into().unwrap_or_default()).min(MAX_MICROS);
        if micros >= cutoff {
            let t = index.entry(key).or_insert(micros);
            *t = (*t).max(micros);
        }
    }
    Ok(Scan {
        capacity,
        next,
        index,
        torn,
    })
}

/// Create a complete log at a temporary path, make it durable and rename it over `path`. The caller syncs the
/// directory. On error the temporary file is removed and `path` is untouched.
fn write_fresh(path: &Path, capacity: u64, records: &[(BlobKey, u64)]) -> io::Result<File> {
    let tmp = tmp_path(path);
    let result = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        // The whole image, free slots included. Writing the zeros (not only fallocating) turns ext4/XFS "unwritten"
        // extents into ordinary ones now, so a later record is a pure overwrite needing no metadata change.
        let mut image = vec![0u8; ((capacity + 1) * SLOT) as usize];
        let mut header = [0u8; 24];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(SLOT as u32).to_le_bytes());
        header[16..24].copy_from_slice(&capacity.to_le_bytes());
        image[..32].copy_from_slice(&seal(&header));
        for (slot, (k, t)) in image[32..].chunks_exact_mut(32).zip(records) {
            slot.copy_from_slice(&seal(&record_payload(k, *t)));
        }
        crate::fsutil::allocate(&file, image.len() as u64)?;
        file.write_all_at(&image, 0)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(file)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync the directory holding `path`, so a rename inside it survives a crash.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::fsutil::sync_dir(dir)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".compact");
    PathBuf::from(name)
}

fn record_payload(key: &BlobKey, micros: u64) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[..16].copy_from_slice(key.as_bytes());
    p[16..].copy_from_slice(&micros.to_le_bytes());
    p
}

fn seal(payload: &[u8; 24]) -> [u8; SLOT as usize] {
    let mut slot = [0u8; SLOT as usize];
    slot[..24].copy_from_slice(payload);
    slot[24..].copy_from_slice(&XxHash3_64::oneshot(payload).to_le_bytes());
    slot
}

fn unseal(slot: &[u8; SLOT as usize]) -> Option<[u8; 24]> {
    let payload: [u8; 24] = slot[..24].try_into().ok()?;
    (slot[24..] == XxHash3_64::oneshot(&payload).to_le_bytes()).then_some(payload)
}

fn to_micros(t: SystemTime) -> u64 {
    // Before the epoch clamps to it; far future clamps to MAX_MICROS.
    t.duration_since(UNIX_EPOCH).map_or(0, |d| {
        u64::try_from(d.as_micros()).unwrap_or(MAX_MICROS).min(MAX_MICROS)
    })
}

fn from_micros(micros: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros.min(MAX_MICROS))
}

/// Records before this many µs since the epoch have outlived `retention`.
fn cutoff(retention: Duration) -> u64 {
    to_micros(SystemTime::now()).saturating_sub(u64::try_from(retention.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
