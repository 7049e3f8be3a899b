//! The spool: uploads land in `tmp/` while they stream and are hashed; a
//! verified blob is fsynced and renamed to `pending/<md5>`, with the digest of
//! each of its chunks beside it in `pending/<md5>.sums`, and only then
//! acknowledged. `pending/` is the durable write-back queue: plain files, never
//! the cache (which may evict). Every read of a pending blob, for a client or
//! for the upload, is checked against those digests; a blob that fails (bit
//! rot, a bad disk) is moved to `damaged/` and never served or uploaded.
//! `deletes/<md5>` records a DELETE acknowledged while the store could not
//! take it (the file holds the deletion time in µs): the queued delete.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use md5::{Digest, Md5};

use super::writer::SpoolWriter;
use crate::chunks::{self, Digests};
use crate::fsutil;
use crate::key::BlobKey;

const SUMS_MAGIC: &[u8; 8] = b"BCSUMS01";
const SUMS_HEADER: usize = 8 + 8 + 8;

/// Errors reading a pending blob.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool's copy of {key} is damaged: {what}")]
    Damaged { key: BlobKey, what: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The spool directories.
#[derive(Debug)]
pub struct Spool {
    tmp: PathBuf,
    pending: PathBuf,
    damaged: PathBuf,
    deletes: PathBuf,
    chunk_size: u64,
}

/// A blob found in `pending/` at start-up.
#[derive(Debug, Clone, Copy)]
pub struct PendingFile {
    pub key: BlobKey,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

/// A pending blob opened for reading: its file and the digests its reads are checked against.
#[derive(Debug)]
pub struct SpoolBlob {
    pub key: BlobKey,
    pub size: u64,
    file: File,
    digests: Digests,
    chunk_size: u64,
}

impl Spool {
    /// Open the spool; half-written uploads (never acknowledged) are removed.
    /// Returns the pending blobs found, to be replayed. `chunk_size` is the
    /// granularity of the digests recorded for each blob.
    pub async fn open(dir: &Path, chunk_size: u64) -> io::Result<(Spool, Vec<PendingFile>)> {
        let tmp = dir.join("tmp");
        let pending = dir.join("pending");
        let damaged = dir.join("damaged");
        let deletes = dir.join("deletes");
        for d in [&tmp, &pending, &damaged, &deletes] {
            tokio::fs::create_dir_all(d).await?;
        }
        let removed = fsutil::clear_dir(&tmp).await?;
        if removed > 0 {
            tracing::info!(removed, "removed half-written uploads from the spool");
        }
        let mut found = Vec::new();
        let mut sums = Vec::new();
        let mut entries = tokio::fs::read_dir(&pending).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".sums") {
                sums.push(stem.to_string());
                continue;
            }
            let meta = entry.metadata().await?;
            match name.parse::<BlobKey>() {
                Ok(key) if meta.is_file() => found.push(PendingFile {
                    key,
                    size: meta.len(),
                    modified: meta.modified()?,
                }),
                _ => tracing::warn!(file = ?entry.path(), "ignoring a stray file in the pending spool"),
            }
        }
        // Digests whose blob never made it into pending/ (a crash between the two renames).
        for stem in sums {
            if !found.iter().any(|p| p.key.to_string() == stem) {
                let _ = tokio::fs::remove_file(pending.join(format!("{stem}.sums"))).await;
            }
        }
        found.sort_by_key(|p| p.modified);
        Ok((
            Spool {
                tmp,
                pending,
                damaged,
                deletes,
                chunk_size,
            },
            found,
        ))
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// A writer for a new temporary upload file; the file is removed when the
    /// guard drops unless the upload is committed.
    pub fn temp_file(&self) -> io::Result<(SpoolWriter, TempGuard)> {
        let path = self.tmp.join(format!("{:016x}", rand::random::<u64>()));
        let (file, direct) = super::writer::create(&path)?;
        Ok((SpoolWriter::new(file, direct), TempGuard { path: Some(path) }))
    }

    pub fn pending_path(&self, key: &BlobKey) -> PathBuf {
        self.pending.join(key.to_string())
    }

    fn sums_path(&self, key: &BlobKey) -> PathBuf {
        self.pending.join(format!("{key}.sums"))
    }

    /// Make a verified upload durable: fsync the data, write its chunk digests,
    /// rename both into `pending/`, fsync the directory; return the blob opened
    /// for reading (the digests are in hand, nothing is read back). Blocking;
    /// call off the async threads.
    pub fn commit(&self, mut guard: TempGuard, file: &File, key: &BlobKey, digests: Digests) -> io::Result<SpoolBlob> {
        file.sync_all()?;
        let size = file.metadata()?.len();
        let sums_tmp = self.tmp.join(format!("{:016x}.sums", rand::random::<u64>()));
        let result = (|| {
            // A good copy supersedes one found damaged earlier.
            let _ = std::fs::remove_file(self.damaged.join(key.to_string()));
            write_sums(&sums_tmp, size, self.chunk_size, &digests)?;
            std::fs::rename(&sums_tmp, self.sums_path(key))?;
            let from = guard.path.take().expect("an armed guard");
            if let Err(e) = std::fs::rename(&from, self.pending_path(key)) {
                let _ = std::fs::remove_file(&from);
                return Err(e);
            }
            fsutil::sync_dir(&self.pending)
        })();
        let _ = std::fs::remove_file(&sums_tmp);
        result?;
        // The upload was written with O_DIRECT; reads go through a plain handle.
        Ok(SpoolBlob {
            key: *key,
            size,
            file: File::open(self.pending_path(key))?,
            digests,
            chunk_size: self.chunk_size,
        })
    }

    /// Open a pending blob for reading, with its digests. Blocking. A blob whose
    /// digests are missing (a crash between the renames, or a spool from an
    /// older version) is checked whole against its key, and its digests written.
    pub fn open_blob(&self, key: &BlobKey) -> Result<Option<SpoolBlob>, SpoolError> {
        let file = match File::open(self.pending_path(key)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata()?.len();
        let digests = match read_sums(&self.sums_path(key), size, self.chunk_size) {
            Some(d) => d,
            None => {
                let digests = digest_whole(&file, key, size, self.chunk_size)?;
                write_sums(&self.sums_path(key), size, self.chunk_size, &digests)?;
                digests
            }
        };
        Ok(Some(SpoolBlob {
            key: *key,
            size,
            file,
            digests,
            chunk_size: self.chunk_size,
        }))
    }

    /// Move a damaged pending blob out of the queue, into `damaged/` for an
    /// operator to look at. Blocking.
    pub fn quarantine(&self, key: &BlobKey) -> io::Result<()> {
        let _ = std::fs::remove_file(self.sums_path(key));
        match std::fs::rename(self.pending_path(key), self.damaged.join(key.to_string())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fsutil::sync_dir(&self.pending)?;
        fsutil::sync_dir(&self.damaged)
    }

    /// Remove a pending blob (it reached the store, or was deleted). Blocking.
    pub fn remove_pending(&self, key: &BlobKey) -> io::Result<bool> {
        let _ = std::fs::remove_file(self.sums_path(key));
        match std::fs::remove_file(self.pending_path(key)) {
            Ok(()) => {
                fsutil::sync_dir(&self.pending)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Remove a damaged copy kept aside, if any (the blob was deleted). Blocking.
    pub fn forget_damaged(&self, key: &BlobKey) -> io::Result<()> {
        match std::fs::remove_file(self.damaged.join(key.to_string())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Durably record a DELETE the store has yet to take. Blocking.
    pub fn record_delete(&self, key: &BlobKey, at: SystemTime) -> io::Result<()> {
        let micros = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let tmp = self.tmp.join(format!("{:016x}.delete", rand::random::<u64>()));
        let result = (|| {
            std::fs::write(&tmp, micros.to_string())?;
            File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, self.deletes.join(key.to_string()))?;
            fsutil::sync_dir(&self.deletes)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Forget a queued delete (the store took it, or a later PUT superseded it). Blocking.
    pub fn remove_delete(&self, key: &BlobKey) -> io::Result<()> {
        match std::fs::remove_file(self.deletes.join(key.to_string())) {
            Ok(()) => fsutil::sync_dir(&self.deletes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The queued deletes, to be replayed at start. Blocking.
    pub fn queued_deletes(&self) -> io::Result<Vec<(BlobKey, SystemTime)>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.deletes)? {
            let entry = entry?;
            let key = entry.file_name().to_string_lossy().parse::<BlobKey>();
            let at = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok());
            match (key, at) {
                (Ok(key), Some(at)) => found.push((key, SystemTime::UNIX_EPOCH + Duration::from_micros(at))),
                _ => tracing::warn!(file = ?entry.path(), "ignoring a stray file among the queued deletes"),
            }
        }
        Ok(found)
    }

    /// Whether a copy of the blob was found damaged and moved aside. Blocking.
    pub fn is_damaged(&self, key: &BlobKey) -> bool {
        self.damaged.join(key.to_string()).exists()
    }
}

impl SpoolBlob {
    pub fn digests(&self) -> &Digests {
        &self.digests
    }

    /// Chunk `index`, checked against its digest. Blocking.
    pub fn read_chunk(&self, index: u32) -> Result<Bytes, SpoolError> {
        let range = chunks::bounds(index, self.size, self.chunk_size);
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        self.file.read_exact_at(&mut buf, range.start)?;
        if chunks::digest(&buf) != self.digests[index as usize] {
            return Err(SpoolError::Damaged {
                key: self.key,
                what: format!("chunk {index} does not match the digest recorded when it was written"),
            });
        }
        Ok(Bytes::from(buf))
    }

    /// Check every chunk, and take the MD5 of each part of the upload from the
    /// checked bytes (`part_size` as the store cuts it; one part when `None`,
    /// whose MD5 is the key itself). Blocking.
    pub fn part_md5s(&self, part_size: Option<u64>) -> Result<Vec<[u8; 16]>, SpoolError> {
        let Some(part_size) = part_size else {
            for i in 0..chunks::count(self.size, self.chunk_size) {
                self.read_chunk(i)?;
            }
            return Ok(vec![*self.key.as_bytes()]);
        };
        let mut parts = Vec::new();
        let mut hasher = Md5::new();
        let mut in_part = 0u64;
        for i in 0..chunks::count(self.size, self.chunk_size) {
            let chunk = self.read_chunk(i)?;
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = rest.len().min((part_size - in_part) as usize);
                hasher.update(&rest[..take]);
                rest = &rest[take..];
                in_part += take as u64;
                if in_part == part_size {
                    parts.push(std::mem::take(&mut hasher).finalize().into());
                    in_part = 0;
                }
            }
        }
        if in_part > 0 || parts.is_empty() {
            parts.push(hasher.finalize().into());
        }
        Ok(parts)
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }
}

fn write_sums(path: &Path, size: u64, chunk_size: u64, digests: &[u64]) -> io::Result<()> {
    let mut v = Vec::with_capacity(SUMS_HEADER + 8 * (digests.len() + 1));
    v.extend_from_slice(SUMS_MAGIC);
    v.extend_from_slice(&size.to_le_bytes());
    v.extend_from_slice(&chunk_size.to_le_bytes());
    for d in digests {
        v.extend_from_slice(&d.to_le_bytes());
    }
    let check = chunks::digest(&v);
    v.extend_from_slice(&check.to_le_bytes());
    let f = File::create(path)?;
    f.write_all_at(&v, 0)?;
    f.sync_all()
}

/// The digests recorded for a blob of `size` bytes, if the file is whole and matches.
fn read_sums(path: &Path, size: u64, chunk_size: u64) -> Option<Digests> {
    let b = std::fs::read(path).ok()?;
    let count = chunks::count(size, chunk_size) as usize;
    if b.len() != SUMS_HEADER + 8 * (count + 1) || &b[..8] != SUMS_MAGIC {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let body = b.len() - 8;
    if word(8) != size || word(16) != chunk_size || word(body) != chunks::digest(&b[..body]) {
        return None;
    }
    Some((0..count).map(|i| word(SUMS_HEADER + 8 * i)).collect::<Vec<_>>().into())
}

/// Digest every chunk of a pending file, after checking the whole against its key.
fn digest_whole(file: &File, key: &BlobKey, size: u64, chunk_size: u64) -> Result<Digests, SpoolError> {
    let mut hasher = Md5::new();
    let mut digests = Vec::new();
    for i in 0..chunks::count(size, chunk_size) {
        let range = chunks::bounds(i, size, chunk_size);
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        file.read_exact_at(&mut buf, range.start)?;
        hasher.update(&buf);
        digests.push(chunks::digest(&buf));
    }
    let actual = BlobKey::from_digest(hasher);
    if actual != *key {
        return Err(SpoolError::Damaged {
            key: *key,
            what: format!("its bytes have MD5 {actual}"),
        });
    }
    Ok(Arc::from(digests))
}

/// Removes an uncommitted temporary upload file when dropped (a failed
/// upload, a digest mismatch, a client that went away).
#[derive(Debug)]
pub struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("an armed guard")
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = ?path, error = %e, "could not remove an abandoned upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u64 = 4096;

    fn commit(spool: &Spool, data: &[u8]) -> BlobKey {
        let (mut w, guard) = spool.temp_file().unwrap();
        w.write(data).unwrap();
        let f = w.finish().unwrap();
        let key = BlobKey::of(data);
        let digests: Vec<u64> = data.chunks(CS as usize).map(chunks::digest).collect();
        spool.commit(guard, &f, &key, digests.into()).unwrap();
        key
    }

    #[tokio::test]
    async fn commit_moves_to_pending_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, found) = Spool::open(dir.path(), CS).await.unwrap();
        assert!(found.is_empty());

        let (mut w, guard) = spool.temp_file().unwrap();
        let tmp_path = guard.path().to_path_buf();
        w.write(b"abc").unwrap();
        drop(guard);
        assert!(!tmp_path.exists(), "an abandoned upload is removed");

        let key = commit(&spool, b"abc");
        assert_eq!(std::fs::read(spool.pending_path(&key)).unwrap(), b"abc");
        let blob = spool.open_blob(&key).unwrap().unwrap();
        assert_eq!(blob.size, 3);
        assert_eq!(&blob.read_chunk(0).unwrap()[..], b"abc");

        // A leftover temp file is cleaned at the next open; the pending blob is found.
        let (_f, guard) = spool.temp_file().unwrap();
        std::mem::forget(guard);
        let (spool, found) = Spool::open(dir.path(), CS).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key, key);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(spool.remove_pending(&key).unwrap());
        assert!(!spool.remove_pending(&key).unwrap());
        assert_eq!(std::fs::read_dir(dir.path().join("pending")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn damaged_bytes_are_found_and_parts_hash_checked_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), CS).await.unwrap();
        let data: Vec<u8> = (0..3 * CS as usize + 100).map(|i| (i * 7 % 251) as u8).collect();
        let key = commit(&spool, &data);
        let blob = spool.open_blob(&key).unwrap().unwrap();
        assert_eq!(blob.part_md5s(None).unwrap(), vec![*key.as_bytes()]);
        // Parts that do not line up with chunks.
        let parts = blob.part_md5s(Some(5000)).unwrap();
        let want: Vec<[u8; 16]> = data.chunks(5000).map(|p| *BlobKey::of(p).as_bytes()).collect();
        assert_eq!(parts, want);

        // Flip a byte in chunk 2: its reads fail, the others still pass.
        let path = spool.pending_path(&key);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[2 * CS as usize + 5] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let blob = spool.open_blob(&key).unwrap().unwrap();
        assert!(blob.read_chunk(1).is_ok());
        assert!(matches!(blob.read_chunk(2), Err(SpoolError::Damaged { .. })));
        assert!(matches!(blob.part_md5s(None), Err(SpoolError::Damaged { .. })));

        // Without its digests, the blob is checked whole against its key.
        std::fs::remove_file(dir.path().join(format!("pending/{key}.sums"))).unwrap();
        assert!(matches!(spool.open_blob(&key), Err(SpoolError::Damaged { .. })));
        spool.quarantine(&key).unwrap();
        assert!(spool.open_blob(&key).unwrap().is_none());
        assert!(spool.is_damaged(&key));

        // A good blob without digests gets them back.
        let key = commit(&spool, b"fine");
        std::fs::remove_file(dir.path().join(format!("pending/{key}.sums"))).unwrap();
        assert!(spool.open_blob(&key).unwrap().is_some());
        assert!(dir.path().join(format!("pending/{key}.sums")).exists());
    }
}
